#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bus/internal.h"
#include "core/alloc.h"
#include "core/clock.h"
#include "core/error.h"
#include "core/log.h"
#include "core/metrics.h"

/* The disk queue (bus_queue) and the dead letters (dead_letters) on the store thread; schema in
 * store/migrations.c (migration 3). Writes go through nx_store_write, so they share the group
 * commit with everything else. */

static struct nx_metric *m_dead;

struct dlq_row {
    char *id, *consumer, *subject, *envelope, *error;
    uint32_t attempts;
};

/* ---- bus-owned jobs: the bus waits for their completions before it frees itself ---- */

struct bjob {
    struct nx_bus *bus;
    void (*finish)(struct bjob *j, int rc);
    void (*cleanup)(struct bjob *j);
    size_t n;
    struct nx_qrow *rows;
    char **names;     /* poll: consumers this bus has; delete: id and consumer */
    struct dlq_row *dead;
    size_t n_names;
    nx_queue_loaded_fn loaded;
};

static void bjob_done(int rc, void *arg)
{
    struct bjob *j = arg;
    struct nx_bus *bus = j->bus;

    bus->store_ops--;
    if (j->finish && !bus->is_closing)
        j->finish(j, rc);
    if (j->cleanup)
        j->cleanup(j);
    free(j);
    nx_bus_maybe_finish_close(bus);
}

static struct bjob *bjob_new(struct nx_bus *bus)
{
    struct bjob *j = nx_calloc(1, sizeof *j);

    j->bus = bus;
    return j;
}

static void submit_write(struct nx_bus *bus, nx_store_job_fn fn, struct bjob *j)
{
    bus->store_ops++;
    nx_store_write(bus->opts.store, fn, bjob_done, j);
}

void nx_qrows_free(struct nx_qrow *rows, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(rows[i].id);
        free(rows[i].subject);
        free(rows[i].envelope);
        free(rows[i].local);
    }
    free(rows);
}

static void rows_cleanup(struct bjob *j)
{
    nx_qrows_free(j->rows, j->n);
    j->rows = NULL;
    for (size_t i = 0; i < j->n_names; i++)
        free(j->names[i]);
    free(j->names);
}

static char *col_dup(sqlite3_stmt *st, int i)
{
    const unsigned char *t = sqlite3_column_text(st, i);

    return t ? nx_strdup((const char *)t) : NULL;
}

/* ---- bus_queue ---- */

static int insert_job(sqlite3 *db, void *arg)
{
    struct bjob *j = arg;
    sqlite3_stmt *st = NULL;
    int rc = NX_EDB;

    if (sqlite3_prepare_v2(db, "INSERT OR IGNORE INTO bus_queue(id, subject, seq, envelope, local, "
                               "enqueued_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                           -1, &st, NULL) != SQLITE_OK)
        goto out;
    for (size_t i = 0; i < j->n; i++) {
        struct nx_qrow *r = &j->rows[i];

        sqlite3_reset(st);
        sqlite3_bind_text(st, 1, r->id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, r->subject, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 3, r->seq);
        sqlite3_bind_text(st, 4, r->envelope, -1, SQLITE_STATIC);
        if (r->local)
            sqlite3_bind_text(st, 5, r->local, -1, SQLITE_STATIC);
        else
            sqlite3_bind_null(st, 5);
        sqlite3_bind_int64(st, 6, (sqlite3_int64)nx_wall_ms());
        if (sqlite3_step(st) != SQLITE_DONE)
            goto out;
    }
    rc = 0;
out:
    if (rc < 0)
        nx_error("bus", "disk queue write failed: %s", sqlite3_errmsg(db));
    sqlite3_finalize(st);
    return rc;
}

static int delete_job(sqlite3 *db, void *arg)
{
    struct bjob *j = arg;
    sqlite3_stmt *st = NULL;
    int rc = NX_EDB;

    if (sqlite3_prepare_v2(db, "DELETE FROM bus_queue WHERE id = ?1 AND subject = ?2", -1, &st,
                           NULL) != SQLITE_OK)
        goto out;
    for (size_t i = 0; i < j->n; i++) {
        sqlite3_reset(st);
        sqlite3_bind_text(st, 1, j->rows[i].id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, j->rows[i].subject, -1, SQLITE_STATIC);
        if (sqlite3_step(st) != SQLITE_DONE)
            goto out;
    }
    rc = 0;
out:
    sqlite3_finalize(st);
    return rc;
}

static void finish_insert(struct bjob *j, int rc)
{
    if (rc < 0)
        nx_error("bus", "%zu queued events were not written to disk (%s); they are kept in memory",
                 j->n, nx_strerror(rc));
}

static struct bjob *rows_job(struct nx_bus *bus, struct nx_qent **v, size_t n, bool full)
{
    struct bjob *j = bjob_new(bus);

    j->rows = nx_calloc(n, sizeof *j->rows);
    j->n = n;
    j->cleanup = rows_cleanup;
    for (size_t i = 0; i < n; i++) {
        j->rows[i].id = nx_strdup(v[i]->item->env->id);
        j->rows[i].subject = nx_strdup(v[i]->item->subject);
        j->rows[i].seq = v[i]->seq;
        if (full) {
            j->rows[i].envelope = nx_strdup(v[i]->item->data);
            j->rows[i].local = v[i]->local ? nx_strdup(v[i]->local) : NULL;
        }
    }
    return j;
}

void nx_queue_insert(struct nx_bus *bus, struct nx_qent **v, size_t n)
{
    struct bjob *j;

    if (!bus->opts.store || !n)
        return;
    j = rows_job(bus, v, n, true);
    j->finish = finish_insert;
    submit_write(bus, insert_job, j);
}

void nx_queue_delete(struct nx_bus *bus, struct nx_qent **v, size_t n)
{
    if (!bus->opts.store || !n)
        return;
    submit_write(bus, delete_job, rows_job(bus, v, n, false));
}

static int load_job(sqlite3 *db, void *arg)
{
    struct bjob *j = arg;
    sqlite3_stmt *st = NULL;
    size_t cap = 0;
    int rc = NX_EDB;

    /* a dead letter being redelivered by a process that stopped: offer it again */
    sqlite3_exec(db, "UPDATE dead_letters SET state = 'retry' WHERE state = 'redelivering'", NULL,
                 NULL, NULL);
    if (sqlite3_prepare_v2(db, "SELECT id, subject, seq, envelope, local FROM bus_queue "
                               "ORDER BY seq",
                           -1, &st, NULL) != SQLITE_OK)
        goto out;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct nx_qrow *r;

        if (j->n == cap) {
            cap = cap ? cap * 2 : 64;
            j->rows = nx_realloc(j->rows, cap * sizeof *j->rows);
        }
        r = &j->rows[j->n++];
        r->id = col_dup(st, 0);
        r->subject = col_dup(st, 1);
        r->seq = sqlite3_column_int64(st, 2);
        r->envelope = col_dup(st, 3);
        r->local = col_dup(st, 4);
        if (!r->id || !r->subject || !r->envelope) {
            j->n--;
            free(r->id);
            free(r->subject);
            free(r->envelope);
            free(r->local);
        }
    }
    rc = rc == SQLITE_DONE ? 0 : NX_EDB;
out:
    sqlite3_finalize(st);
    return rc;
}

static void finish_load(struct bjob *j, int rc)
{
    struct nx_qrow *rows = j->rows;
    size_t n = j->n;

    j->rows = NULL; /* handed over */
    j->n = 0;
    j->loaded(j->bus, rc, rows, n);
}

void nx_queue_load(struct nx_bus *bus, nx_queue_loaded_fn done)
{
    struct bjob *j = bjob_new(bus);

    j->loaded = done;
    j->finish = finish_load;
    j->cleanup = rows_cleanup;
    /* a write job: the reset above needs the write lock, and it orders before later inserts */
    submit_write(bus, load_job, j);
}

/* ---- dead letters from a live bus ---- */

static int put_job(sqlite3 *db, void *arg)
{
    struct bjob *j = arg;
    struct dlq_row *d = j->dead;
    sqlite3_stmt *st = NULL;
    int rc = NX_EDB;

    if (sqlite3_prepare_v2(db, "INSERT OR REPLACE INTO dead_letters(id, consumer, subject, envelope, "
                               "attempts, last_error, failed_at, state) "
                               "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'dead')",
                           -1, &st, NULL) != SQLITE_OK)
        goto out;
    sqlite3_bind_text(st, 1, d->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, d->consumer, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, d->subject, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, d->envelope, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 5, (int)d->attempts);
    sqlite3_bind_text(st, 6, d->error ? d->error : "", -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 7, (sqlite3_int64)nx_wall_ms());
    if (sqlite3_step(st) == SQLITE_DONE)
        rc = 0;
out:
    if (rc < 0)
        nx_error("bus", "cannot record dead letter %s: %s", d->id, sqlite3_errmsg(db));
    sqlite3_finalize(st);
    return rc;
}

static void dlq_row_cleanup(struct bjob *j)
{
    struct dlq_row *d = j->dead;

    free(d->id);
    free(d->consumer);
    free(d->subject);
    free(d->envelope);
    free(d->error);
    free(d);
    j->dead = NULL;
}

void nx_dlq_put(struct nx_bus *bus, struct nx_bus_sub *sub, struct nx_delivery *d)
{
    nx_dlq_put_item(bus, sub->name, d->item, d->last_error, d->attempts);
}

/* The dead letter's row for item, counted; NULL (logged) when there is no store to keep it. */
static struct dlq_row *dead_row(struct nx_bus *bus, const char *consumer,
                                const struct nx_bus_item *item, const char *error, uint32_t attempts)
{
    struct dlq_row *r;

    if (!m_dead)
        m_dead = nx_metric_counter("nexo_bus_dead_letters_total",
                                   "Events moved to the dead-letter queue.", NULL);
    bus->stats.dead_letters++;
    nx_counter_add(m_dead, NULL, 1);
    if (!bus->opts.store) {
        nx_error("bus", "dead letter %s for %s (no store, not kept): %s", item->env->id, consumer,
                 error ? error : "");
        return NULL;
    }
    r = nx_calloc(1, sizeof *r);
    r->id = nx_strdup(item->env->id);
    r->consumer = nx_strdup(consumer);
    r->subject = nx_strdup(item->subject);
    r->envelope = nx_strdup(item->data);
    r->error = error ? nx_strdup(error) : NULL;
    r->attempts = attempts;
    return r;
}

void nx_dlq_put_item(struct nx_bus *bus, const char *consumer, const struct nx_bus_item *item,
                     const char *error, uint32_t attempts)
{
    struct dlq_row *r = dead_row(bus, consumer, item, error, attempts);
    struct bjob *j;

    if (!r)
        return;
    j = bjob_new(bus);
    j->dead = r;
    j->cleanup = dlq_row_cleanup;
    submit_write(bus, put_job, j);
}

/* Into the dead letters and out of the disk queue in one write: never in neither. */
static int move_job(sqlite3 *db, void *arg)
{
    int rc = put_job(db, arg);

    return rc < 0 ? rc : delete_job(db, arg);
}

static void move_cleanup(struct bjob *j)
{
    dlq_row_cleanup(j);
    rows_cleanup(j);
}

void nx_dlq_move(struct nx_bus *bus, struct nx_qent *q, const char *consumer, const char *error)
{
    struct dlq_row *r = dead_row(bus, consumer, q->item, error, 1);
    struct bjob *j;

    if (!r)
        return;
    j = rows_job(bus, &q, q->is_durable ? 1 : 0, false);
    j->dead = r;
    j->cleanup = move_cleanup;
    submit_write(bus, move_job, j);
}

static int delete_dead_job(sqlite3 *db, void *arg)
{
    struct bjob *j = arg;
    sqlite3_stmt *st = NULL;
    int rc = NX_EDB;

    if (sqlite3_prepare_v2(db, "DELETE FROM dead_letters WHERE id = ?1 AND consumer = ?2", -1, &st,
                           NULL) != SQLITE_OK)
        goto out;
    sqlite3_bind_text(st, 1, j->names[0], -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, j->names[1], -1, SQLITE_STATIC);
    if (sqlite3_step(st) == SQLITE_DONE)
        rc = 0;
out:
    sqlite3_finalize(st);
    return rc;
}

void nx_dlq_delete(struct nx_bus *bus, const char *id, const char *consumer)
{
    struct bjob *j;

    if (!bus->opts.store)
        return;
    j = bjob_new(bus);
    j->names = nx_calloc(2, sizeof(char *));
    j->names[0] = nx_strdup(id);
    j->names[1] = nx_strdup(consumer);
    j->n_names = 2;
    j->cleanup = rows_cleanup;
    submit_write(bus, delete_dead_job, j);
}

/* Claims dead letters marked for retry whose consumer this bus has. */
static int poll_job(sqlite3 *db, void *arg)
{
    struct bjob *j = arg;
    sqlite3_stmt *st = NULL;
    sqlite3_stmt *up = NULL;
    size_t cap = 0;
    int rc = NX_EDB;

    if (sqlite3_prepare_v2(db, "SELECT id, consumer, envelope, subject FROM dead_letters "
                               "WHERE state = 'retry' ORDER BY failed_at LIMIT 1000",
                           -1, &st, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(db, "UPDATE dead_letters SET state = 'redelivering' "
                               "WHERE id = ?1 AND consumer = ?2",
                           -1, &up, NULL) != SQLITE_OK)
        goto out;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *consumer = (const char *)sqlite3_column_text(st, 1);
        bool is_ours = false;
        struct nx_qrow *r;

        for (size_t i = 0; consumer && i < j->n_names && !is_ours; i++)
            is_ours = !strcmp(j->names[i], consumer);
        if (!is_ours)
            continue;
        if (j->n == cap) {
            cap = cap ? cap * 2 : 16;
            j->rows = nx_realloc(j->rows, cap * sizeof *j->rows);
        }
        r = &j->rows[j->n++];
        memset(r, 0, sizeof *r);
        r->id = col_dup(st, 0);
        r->local = col_dup(st, 1); /* the consumer */
        r->envelope = col_dup(st, 2);
        r->subject = col_dup(st, 3);
        sqlite3_reset(up);
        sqlite3_bind_text(up, 1, r->id, -1, SQLITE_STATIC);
        sqlite3_bind_text(up, 2, r->local, -1, SQLITE_STATIC);
        if (sqlite3_step(up) != SQLITE_DONE) {
            rc = SQLITE_ERROR;
            break;
        }
    }
    rc = rc == SQLITE_DONE ? 0 : NX_EDB;
out:
    sqlite3_finalize(st);
    sqlite3_finalize(up);
    return rc;
}

static void finish_poll(struct bjob *j, int rc)
{
    struct nx_bus *bus = j->bus;

    bus->is_polling = false;
    if (rc < 0)
        return;
    for (size_t i = 0; i < j->n; i++) {
        struct nx_qrow *r = &j->rows[i];
        struct nx_envelope *env = NULL;
        struct nx_bus_sub *sub = bus->subs;
        struct nx_bus_item *it;
        char err[256];

        while (sub && (sub->is_dead || strcmp(sub->name, r->local)))
            sub = sub->next;
        if (!r->envelope || nx_envelope_parse(r->envelope, strlen(r->envelope), 0, &env, err,
                                              sizeof err) < 0) {
            nx_error("bus", "dead letter %s cannot be retried: unreadable envelope", r->id);
            continue;
        }
        if (!strcmp(r->local, DLQ_PUBLISH)) { /* (after the server's max_payload was raised) */
            int prc = nx_bus_publish(bus, r->subject, env);
            nx_info("bus", "publishing dead letter %s again: %s", r->id, prc ? nx_strerror(prc) : "ok");
            if (prc == 0) {
                nx_dlq_delete(bus, r->id, DLQ_PUBLISH);
            } else {
                it = nx_bus_item_new(r->subject, NULL, r->envelope, strlen(r->envelope), env);
                env = NULL;
                nx_dlq_put_item(bus, DLQ_PUBLISH, it, nx_strerror(prc), 1);
                nx_bus_item_unref(it);
            }
            nx_envelope_free(env);
            continue;
        }
        if (!sub) { /* unsubscribed meanwhile: the next start offers it again */
            nx_envelope_free(env);
            continue;
        }
        nx_info("bus", "redelivering dead letter %s to %s", r->id, sub->name);
        it = nx_bus_item_new(r->subject, NULL, r->envelope, strlen(r->envelope), env);
        it->is_redelivery = true;
        nx_local_enqueue(sub, it);
        nx_bus_item_unref(it);
    }
}

void nx_dlq_poll(struct nx_bus *bus)
{
    struct bjob *j;
    size_t n = 0;

    if (!bus->opts.store || bus->is_polling || bus->is_closing)
        return;
    j = bjob_new(bus);
    j->names = nx_calloc(bus->n_subs + 2, sizeof(char *));
    for (struct nx_bus_sub *s = bus->subs; s; s = s->next)
        if (!s->is_dead && !s->is_internal)
            j->names[n++] = nx_strdup(s->name);
    j->names[n++] = nx_strdup(DLQ_PUBLISH); /* events NATS never took: published again */
    j->n_names = n;
    j->finish = finish_poll;
    j->cleanup = rows_cleanup;
    bus->is_polling = true;
    submit_write(bus, poll_job, j);
}
