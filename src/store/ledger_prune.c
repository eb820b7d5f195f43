#include <stdlib.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/error.h"
#include "core/log.h"
#include "runtime/runtime.h"
#include "store/ledger.h"

/* Ledger housekeeping: the progress of replies sent in steps, settling turns that ended without
 * an answer of their own, and retention:
 * finished rows older than the retention are deleted, a small batch per
 * store job so a pass never holds the write transaction long (other writes queue between the
 * batches). The deletes run on the store thread; the pass is started by a loop timer. */

#define PRUNE_BATCH 500
#define PRUNE_FIRST_MS 30000
#define PRUNE_MAX_BATCHES 2000 /* per pass: 1M rows; the next pass goes on */

struct prune_job {
    int64_t before_ms;
    uint32_t batch;
    int64_t deleted;
    nx_ledger_done_fn done;
    void *arg;
};

static int delete_some(sqlite3 *db, const char *sql, int64_t before, uint32_t limit, int64_t *n)
{
    sqlite3_stmt *st = NULL;
    int rc = NX_EDB;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        goto out;
    sqlite3_bind_int64(st, 1, before);
    sqlite3_bind_int64(st, 2, limit);
    if (sqlite3_step(st) != SQLITE_DONE)
        goto out;
    *n += sqlite3_changes(db);
    rc = 0;
out:
    if (rc < 0)
        nx_error("ledger", "prune: %s", sqlite3_errmsg(db));
    sqlite3_finalize(st);
    return rc;
}

static int prune_job(sqlite3 *db, void *arg)
{
    struct prune_job *j = arg;
    int64_t in = 0;
    int rc = delete_some(db, "DELETE FROM ledger_inbound WHERE rowid IN (SELECT rowid FROM ledger_inbound "
                             "WHERE state IN ('answered', 'failed', 'cancelled', 'dead', 'dropped', "
                             "'received') AND updated_at < ?1 "
                             "LIMIT ?2)", j->before_ms, j->batch, &in);
    j->deleted = in;
    if (rc == 0 && in < j->batch)
        rc = delete_some(db, "DELETE FROM ledger_outbound WHERE rowid IN (SELECT rowid FROM ledger_outbound "
                             "WHERE state IN ('sent', 'delivered', 'read', 'failed') AND updated_at < ?1 "
                             "LIMIT ?2)",
                         j->before_ms, j->batch - (uint32_t)in, &j->deleted);
    return rc;
}

static void on_pruned(int rc, void *arg)
{
    struct prune_job *j = arg;
    if (j->done)
        j->done(rc, rc < 0 ? 0 : j->deleted, j->arg);
    free(j);
}

void nx_ledger_prune(struct nx_store *s, int64_t before_ms, uint32_t batch, nx_ledger_done_fn done,
                     void *arg)
{
    struct prune_job *j = nx_calloc(1, sizeof *j);
    j->before_ms = before_ms;
    j->batch = batch ? batch : PRUNE_BATCH;
    j->done = done;
    j->arg = arg;
    nx_store_write(s, prune_job, on_pruned, j);
}

/* Runs a prepared one-shot UPDATE (NULL: it did not prepare) and finalizes it: its changed
 * rows in *changes, or NX_EDB logged as `what`. */
static int run_update(sqlite3 *db, sqlite3_stmt *st, const char *what, int64_t *changes)
{
    int rc = NX_EDB;
    if (st && sqlite3_step(st) == SQLITE_DONE) {
        *changes = sqlite3_changes(db);
        rc = 0;
    }
    if (rc < 0)
        nx_error("ledger", "%s: %s", what, sqlite3_errmsg(db));
    sqlite3_finalize(st);
    return rc;
}

/* ---- the progress of a reply sent in steps (a few per long reply: no cached statement) ---- */

struct progress_job {
    char *key, *provider_id;
    uint32_t steps;
    int64_t changes;
    nx_ledger_done_fn done;
    void *arg;
};

static int progress_job(sqlite3 *db, void *arg)
{
    struct progress_job *j = arg;
    sqlite3_stmt *st = NULL;
    /* only forward, and only while the reply is pending */
    static const char sql[] = "UPDATE ledger_outbound SET steps_sent = ?2, progress_id = "
                              "coalesce(progress_id, ?3), updated_at = ?4 "
                              "WHERE key = ?1 AND state = 'pending' AND steps_sent < ?2";
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_text(st, 1, j->key, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, j->steps);
        if (j->provider_id)
            sqlite3_bind_text(st, 3, j->provider_id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 4, (int64_t)nx_wall_ms());
    }
    return run_update(db, st, "progress", &j->changes);
}

static void on_progress(int rc, void *arg)
{
    struct progress_job *j = arg;
    if (j->done)
        j->done(rc, rc < 0 ? 0 : j->changes, j->arg);
    free(j->key);
    free(j->provider_id);
    free(j);
}

void nx_ledger_outbound_progress(struct nx_store *s, const char *key, uint32_t steps,
                                 const char *provider_id, nx_ledger_done_fn done, void *arg)
{
    struct progress_job *j = nx_calloc(1, sizeof *j);
    j->key = nx_strdup(key);
    j->provider_id = provider_id ? nx_strdup(provider_id) : NULL;
    j->steps = steps;
    j->done = done;
    j->arg = arg;
    nx_store_write(s, progress_job, on_progress, j);
}

/* ---- settling a turn that ended without its own answer (rare: no cached statement) ---- */

struct settle_job {
    char *id, *state, *note;
    int64_t changes;
    nx_ledger_done_fn done;
    void *arg;
};

static int settle_job(sqlite3 *db, void *arg)
{
    struct settle_job *j = arg;
    sqlite3_stmt *st = NULL;
    static const char sql[] = "UPDATE ledger_inbound SET state = ?2, last_error = ?3, updated_at = ?4 "
                              "WHERE id = ?1 AND state IN ('received', 'routed')";
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_text(st, 1, j->id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, j->state, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, j->note, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 4, (int64_t)nx_wall_ms());
    }
    return run_update(db, st, "settle", &j->changes);
}

static void on_settled(int rc, void *arg)
{
    struct settle_job *j = arg;
    if (j->done)
        j->done(rc, rc < 0 ? 0 : j->changes, j->arg);
    free(j->id);
    free(j->state);
    free(j->note);
    free(j);
}

void nx_ledger_inbound_settle(struct nx_store *s, const char *id, const char *state, const char *note,
                              nx_ledger_done_fn done, void *arg)
{
    struct settle_job *j = nx_calloc(1, sizeof *j);
    j->id = nx_strdup(id);
    j->state = nx_strdup(state);
    j->note = nx_strdup(note ? note : "");
    j->done = done;
    j->arg = arg;
    nx_store_write(s, settle_job, on_settled, j);
}

/* ---- the timer ---- */

struct nx_ledger_pruner {
    uv_loop_t *loop;
    struct nx_store *store;
    uint64_t retention_ms;
    uint64_t interval_ms;
    struct nx_timer *timer;
    bool is_running;       /* a batch is in the store's queue */
    bool is_freed;         /* freed while a batch ran: that batch frees it */
    int64_t before_ms;     /* this pass's cut-off */
    uint32_t batches;
    uint64_t deleted, pass_deleted;
};

static void pass_batch(struct nx_ledger_pruner *p);

static void on_tick(void *arg)
{
    struct nx_ledger_pruner *p = arg;
    p->timer = NULL;
    p->before_ms = (int64_t)nx_wall_ms() - (int64_t)p->retention_ms;
    p->batches = 0;
    p->pass_deleted = 0;
    pass_batch(p);
}

static void on_batch(int rc, int64_t n, void *arg)
{
    struct nx_ledger_pruner *p = arg;
    p->is_running = false;
    if (p->is_freed) {
        free(p);
        return;
    }
    if (rc == 0) {
        p->deleted += (uint64_t)n;
        p->pass_deleted += (uint64_t)n;
    }
    if (rc == 0 && n == PRUNE_BATCH && ++p->batches < PRUNE_MAX_BATCHES) {
        pass_batch(p); /* more: the next batch after whatever queued meanwhile */
        return;
    }
    if (rc < 0 && rc != NX_ECLOSED)
        nx_warn("ledger", "pruning old ledger rows failed (%s): trying again later", nx_strerror(rc));
    else if (p->pass_deleted)
        nx_info("ledger", "deleted %llu finished ledger row%s older than %llu s",
                (unsigned long long)p->pass_deleted, p->pass_deleted == 1 ? "" : "s",
                (unsigned long long)(p->retention_ms / 1000));
    if (rc != NX_ECLOSED)
        p->timer = nx_timer_once(p->loop, p->interval_ms, on_tick, p);
}

static void pass_batch(struct nx_ledger_pruner *p)
{
    p->is_running = true;
    nx_ledger_prune(p->store, p->before_ms, PRUNE_BATCH, on_batch, p);
}

struct nx_ledger_pruner *nx_ledger_pruner_new(uv_loop_t *loop, struct nx_store *s, uint64_t retention_ms,
                                              uint64_t interval_ms)
{
    struct nx_ledger_pruner *p = nx_calloc(1, sizeof *p);
    p->loop = loop;
    p->store = s;
    p->retention_ms = retention_ms;
    p->interval_ms = interval_ms ? interval_ms : 600000;
    p->timer = nx_timer_once(loop, p->interval_ms < PRUNE_FIRST_MS ? p->interval_ms : PRUNE_FIRST_MS,
                             on_tick, p);
    return p;
}

void nx_ledger_pruner_set_retention(struct nx_ledger_pruner *p, uint64_t retention_ms)
{
    if (p)
        p->retention_ms = retention_ms;
}

uint64_t nx_ledger_pruner_deleted(const struct nx_ledger_pruner *p)
{
    return p ? p->deleted : 0;
}

void nx_ledger_pruner_free(struct nx_ledger_pruner *p)
{
    if (!p)
        return;
    if (p->timer)
        nx_timer_cancel(p->timer);
    if (p->is_running)
        p->is_freed = true;
    else
        free(p);
}
