#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bus/bus.h"
#include "core/alloc.h"
#include "core/clock.h"
#include "core/error.h"
#include "runtime/runtime.h"

/* Dead letters for operators: list, retry, purge, and the `nexo dlq` command. */

void nx_dead_letters_free(struct nx_dead_letter *v, size_t n)
{
    for (size_t i = 0; v && i < n; i++) {
        free(v[i].id);
        free(v[i].consumer);
        free(v[i].subject);
        free(v[i].envelope);
        free(v[i].last_error);
        free(v[i].state);
    }
    free(v);
}

struct dlq_op {
    size_t limit;
    char *id;
    struct nx_dead_letter *v;
    size_t n;
    size_t count;
    nx_dlq_list_cb list_done;
    nx_dlq_count_cb count_done;
    void *arg;
};

static char *col(sqlite3_stmt *st, int i)
{
    const unsigned char *t = sqlite3_column_text(st, i);

    return nx_strdup(t ? (const char *)t : "");
}

static int list_job(sqlite3 *db, void *arg)
{
    struct dlq_op *op = arg;
    sqlite3_stmt *st = NULL;
    size_t cap = 0;
    int rc = NX_EDB;

    if (sqlite3_prepare_v2(db, "SELECT id, consumer, subject, envelope, last_error, attempts, "
                               "failed_at, state FROM dead_letters ORDER BY failed_at, id LIMIT ?1",
                           -1, &st, NULL) != SQLITE_OK)
        goto out;
    sqlite3_bind_int64(st, 1, (sqlite3_int64)op->limit);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct nx_dead_letter *d;

        if (op->n == cap) {
            cap = cap ? cap * 2 : 16;
            op->v = nx_realloc(op->v, cap * sizeof *op->v);
        }
        d = &op->v[op->n++];
        d->id = col(st, 0);
        d->consumer = col(st, 1);
        d->subject = col(st, 2);
        d->envelope = col(st, 3);
        d->last_error = col(st, 4);
        d->attempts = (uint32_t)sqlite3_column_int(st, 5);
        d->failed_at_ms = sqlite3_column_int64(st, 6);
        d->state = col(st, 7);
    }
    rc = rc == SQLITE_DONE ? 0 : NX_EDB;
out:
    sqlite3_finalize(st);
    return rc;
}

static void list_done(int rc, void *arg)
{
    struct dlq_op *op = arg;

    op->list_done(rc, rc < 0 ? NULL : op->v, rc < 0 ? 0 : op->n, op->arg);
    nx_dead_letters_free(op->v, op->n);
    free(op);
}

void nx_dlq_list(struct nx_store *s, size_t limit, nx_dlq_list_cb done, void *arg)
{
    struct dlq_op *op = nx_calloc(1, sizeof *op);

    op->limit = limit ? limit : 1000;
    op->list_done = done;
    op->arg = arg;
    nx_store_read(s, list_job, list_done, op);
}

static int retry_job(sqlite3 *db, void *arg)
{
    struct dlq_op *op = arg;
    sqlite3_stmt *st = NULL;
    int rc = NX_EDB;

    if (sqlite3_prepare_v2(db, op->id ? "UPDATE dead_letters SET state = 'retry', attempts = 0 "
                                        "WHERE state = 'dead' AND id = ?1"
                                      : "UPDATE dead_letters SET state = 'retry', attempts = 0 "
                                        "WHERE state = 'dead'",
                           -1, &st, NULL) != SQLITE_OK)
        goto out;
    if (op->id)
        sqlite3_bind_text(st, 1, op->id, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE)
        goto out;
    op->count = (size_t)sqlite3_changes(db);
    rc = op->id && !op->count ? NX_ENOENT : 0;
out:
    sqlite3_finalize(st);
    return rc;
}

static int purge_job(sqlite3 *db, void *arg)
{
    struct dlq_op *op = arg;

    if (sqlite3_exec(db, "DELETE FROM dead_letters", NULL, NULL, NULL) != SQLITE_OK)
        return NX_EDB;
    op->count = (size_t)sqlite3_changes(db);
    return 0;
}

static void count_done(int rc, void *arg)
{
    struct dlq_op *op = arg;

    if (op->count_done)
        op->count_done(rc, rc < 0 ? 0 : op->count, op->arg);
    free(op->id);
    free(op);
}

void nx_dlq_retry(struct nx_store *s, const char *id, nx_dlq_count_cb done, void *arg)
{
    struct dlq_op *op = nx_calloc(1, sizeof *op);

    op->id = id ? nx_strdup(id) : NULL;
    op->count_done = done;
    op->arg = arg;
    nx_store_write(s, retry_job, count_done, op);
}

void nx_dlq_purge(struct nx_store *s, nx_dlq_count_cb done, void *arg)
{
    struct dlq_op *op = nx_calloc(1, sizeof *op);

    op->count_done = done;
    op->arg = arg;
    nx_store_write(s, purge_job, count_done, op);
}

/* ---- nexo dlq ---- */

struct cmd {
    int rc;
    bool is_done;
    const char *verb;
    const char *id;
};

static void print_list(int rc, const struct nx_dead_letter *v, size_t n, void *arg)
{
    struct cmd *c = arg;

    c->is_done = true;
    if (rc < 0) {
        fprintf(stderr, "nexo dlq list: cannot read dead letters: %s\n", nx_strerror(rc));
        c->rc = NX_EXIT_FAILURE;
        return;
    }
    if (!n)
        printf("no dead letters\n");
    for (size_t i = 0; i < n; i++) {
        char ts[40];

        nx_rfc3339((uint64_t)v[i].failed_at_ms, ts, sizeof ts);
        printf("%s  %s  %s  consumer=%s  attempts=%u  state=%s\n    error: %s\n", v[i].id, ts,
               v[i].subject, v[i].consumer, v[i].attempts, v[i].state, v[i].last_error);
    }
    c->rc = NX_EXIT_OK;
}

static void print_count(int rc, size_t count, void *arg)
{
    struct cmd *c = arg;

    c->is_done = true;
    if (rc == NX_ENOENT) {
        fprintf(stderr, "nexo dlq retry: no dead letter with id %s (see `nexo dlq list`)\n", c->id);
        c->rc = NX_EXIT_FAILURE;
    } else if (rc < 0) {
        fprintf(stderr, "nexo dlq %s: %s\n", c->verb, nx_strerror(rc));
        c->rc = NX_EXIT_FAILURE;
    } else {
        printf(!strcmp(c->verb, "purge") ? "purged %zu dead letters\n"
                                         : "%zu dead letters queued for redelivery (a running nexo "
                                           "picks them up)\n",
               count);
        c->rc = NX_EXIT_OK;
    }
}

static void on_ready(int rc, void *arg)
{
    struct cmd *c = arg;

    if (rc < 0) {
        c->rc = NX_EXIT_FAILURE;
        c->is_done = true;
    }
}

int nx_cmd_dlq(int argc, char **argv, const char *data_dir)
{
    static const char *usage = "usage: nexo dlq list | retry ID | retry --all | purge\n";
    struct cmd c = {.rc = NX_EXIT_FAILURE};
    struct nx_store *s = NULL;
    uv_loop_t loop;
    int rc;

    if (argc < 2 || (!strcmp(argv[1], "retry") && argc != 3) ||
        (strcmp(argv[1], "retry") && argc != 2) ||
        (strcmp(argv[1], "list") && strcmp(argv[1], "retry") && strcmp(argv[1], "purge"))) {
        fputs(usage, stderr);
        return NX_EXIT_USAGE;
    }
    c.verb = argv[1];
    c.id = argc == 3 ? argv[2] : NULL;
    if (c.id && !strcmp(c.id, "--all"))
        c.id = NULL;
    else if (c.id && !nx_uuid_is_valid(c.id)) {
        fprintf(stderr, "nexo dlq retry: \"%s\" is not an event id (a UUID) or --all\n%s", c.id,
                usage);
        return NX_EXIT_USAGE;
    }
    if (!nx_store_cli_has_data(data_dir ? data_dir : "./data", "dlq")) {
        if (strcmp(c.verb, "list"))
            return NX_EXIT_FAILURE;
        printf("no dead letters\n");
        return NX_EXIT_OK;
    }
    if (uv_loop_init(&loop) != 0)
        return NX_EXIT_FAILURE;
    if ((rc = nx_store_open(&loop, data_dir ? data_dir : "./data", NULL, on_ready, &c, &s)) < 0) {
        fprintf(stderr, "nexo dlq: cannot open the store under %s: %s\n",
                data_dir ? data_dir : "./data", nx_strerror(rc));
        uv_loop_close(&loop);
        return NX_EXIT_FAILURE;
    }
    if (!strcmp(c.verb, "list"))
        nx_dlq_list(s, 0, print_list, &c);
    else if (!strcmp(c.verb, "retry"))
        nx_dlq_retry(s, c.id, print_count, &c);
    else
        nx_dlq_purge(s, print_count, &c);
    while (!c.is_done && uv_run(&loop, UV_RUN_ONCE))
        ;
    if (!nx_store_is_open(s) && c.rc == NX_EXIT_FAILURE && !c.is_done)
        fprintf(stderr, "nexo dlq: store did not open: %s\n", nx_store_last_error(s));
    else if (!nx_store_is_open(s) && c.is_done && c.rc == NX_EXIT_FAILURE)
        fprintf(stderr, "nexo dlq: %s\n", nx_store_last_error(s));
    nx_store_close(s);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    fflush(stdout);
    return c.rc;
}
