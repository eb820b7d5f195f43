/* NX_TEST_LABELS: threaded */
/* nx_store_defer: work a write job leaves for the end of its batch (store.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "store/store.h"
#include "store_fixture.h"

struct fx {
    char tmp[64];
    char dir[128];
    uv_loop_t loop;
    struct nx_store *s;
    int calls;
};

static void run_until(struct fx *f, const int *count, int target)
{
    sfx_run_until(&f->loop, count, target);
}

static struct fx *fx_open(void)
{
    struct fx *f = calloc(1, sizeof *f);
    struct nx_store_opts opts = {.batch_window_ms = 5000}; /* a flush closes each batch */

    assert_non_null(f);
    assert_int_equal(ts_mkdtemp(f->tmp, sizeof f->tmp, "nx-defer-"), 0);
    snprintf(f->dir, sizeof f->dir, "%s/data", f->tmp);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    assert_int_equal(sfx_open(&f->loop, f->dir, &opts, &f->s), 0);
    return f;
}

static void fx_close(struct fx *f)
{
    sfx_close(&f->loop, &f->s);
    sfx_finish(&f->loop, f->tmp);
    free(f);
}

/* ---- jobs: each inserts its key and defers inserting "<key>-late" ---- */

struct job {
    struct fx *f;
    char key[16];
    bool is_failing;       /* the job fails after deferring */
    bool is_late_failing;  /* its deferred work fails */
    int rc;
    int ran_at;            /* order (store thread) the job and its deferred work ran at */
    int late_ran_at;
    int drops;
    int defer_rc;
};

static int order; /* store thread only while a batch runs */

static int put(sqlite3 *db, const char *key)
{
    sqlite3_stmt *st = NULL;
    int rc = NX_EDB;

    if (sqlite3_prepare_v2(db, "INSERT INTO kv(key, value, updated_at) VALUES (?1, 'v', 1)", -1,
                           &st, NULL) == SQLITE_OK) {
        sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
        rc = sqlite3_step(st) == SQLITE_DONE ? 0 : NX_EDB;
    }
    sqlite3_finalize(st);
    return rc;
}

static int late_run(sqlite3 *db, void *arg)
{
    struct job *j = arg;
    char key[32];

    j->late_ran_at = ++order;
    if (j->is_late_failing)
        return NX_EDB;
    snprintf(key, sizeof key, "%s-late", j->key);
    return put(db, key);
}

static void late_drop(void *arg)
{
    ((struct job *)arg)->drops++;
}

static int job_run(sqlite3 *db, void *arg)
{
    struct job *j = arg;

    j->ran_at = ++order;
    if (put(db, j->key) < 0)
        return NX_EDB;
    j->defer_rc = nx_store_defer(db, late_run, late_drop, j); /* (checked on the loop thread) */
    return j->is_failing ? NX_EIO : 0;
}

static void job_done(int rc, void *arg)
{
    struct job *j = arg;

    j->rc = rc;
    j->f->calls++;
}

struct count {
    struct fx *f;
    const char *sql;
    long long n;
};

static int count_run(sqlite3 *db, void *arg)
{
    struct count *c = arg;
    sqlite3_stmt *st = NULL;
    int rc = NX_EDB;

    if (sqlite3_prepare_v2(db, c->sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW) {
        c->n = sqlite3_column_int64(st, 0);
        rc = 0;
    }
    sqlite3_finalize(st);
    return rc;
}

static void count_done(int rc, void *arg)
{
    struct count *c = arg;

    assert_int_equal(rc, 0);
    c->f->calls++;
}

static long long count_rows(struct fx *f, const char *sql)
{
    struct count c = {.f = f, .sql = sql};

    f->calls = 0;
    nx_store_read(f->s, count_run, count_done, &c);
    run_until(f, &f->calls, 1);
    return c.n;
}

static void run_batch(struct fx *f, struct job *jobs, int n)
{
    order = 0;
    f->calls = 0;
    for (int i = 0; i < n; i++) {
        jobs[i].f = f;
        snprintf(jobs[i].key, sizeof jobs[i].key, "k%d", i);
        nx_store_write(f->s, job_run, job_done, &jobs[i]);
    }
    nx_store_flush(f->s, NULL, NULL);
    run_until(f, &f->calls, n);
    for (int i = 0; i < n; i++)
        assert_int_equal(jobs[i].defer_rc, 0);
}

static void test_deferred_work_runs_after_the_last_job_in_the_same_commit(void **state)
{
    (void)state;
    struct fx *f = fx_open();
    struct job jobs[3] = {{0}};
    struct nx_store_stats st;

    run_batch(f, jobs, 3);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(jobs[i].rc, 0);
        assert_int_equal(jobs[i].ran_at, i + 1);
        assert_int_equal(jobs[i].late_ran_at, 4 + i); /* after every job, in the order deferred */
        assert_int_equal(jobs[i].drops, 1);
    }
    nx_store_stats(f->s, &st);
    assert_int_equal(st.commits, 1);
    assert_int_equal(count_rows(f, "SELECT count(*) FROM kv WHERE key LIKE 'k%-late'"), 3);
    fx_close(f);
}

static void test_a_failed_job_drops_its_deferred_work(void **state)
{
    (void)state;
    struct fx *f = fx_open();
    struct job jobs[3] = {{0}};

    jobs[1].is_failing = true;
    run_batch(f, jobs, 3);
    assert_int_equal(jobs[0].rc, 0);
    assert_int_equal(jobs[1].rc, NX_EIO);
    assert_int_equal(jobs[2].rc, 0);
    assert_int_equal(jobs[1].late_ran_at, 0); /* never ran */
    for (int i = 0; i < 3; i++)
        assert_int_equal(jobs[i].drops, 1);
    assert_int_equal(count_rows(f, "SELECT count(*) FROM kv WHERE key IN ('k0', 'k2', 'k0-late', "
                                   "'k2-late')"),
                     4);
    assert_int_equal(count_rows(f, "SELECT count(*) FROM kv WHERE key LIKE 'k1%'"), 0);
    fx_close(f);
}

static void test_failed_deferred_work_fails_the_whole_batch(void **state)
{
    (void)state;
    struct fx *f = fx_open();
    struct job jobs[3] = {{0}};
    struct job next[1] = {{0}};
    struct nx_store_stats st;

    jobs[2].is_late_failing = true;
    run_batch(f, jobs, 3);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(jobs[i].rc, NX_EDB);
        assert_int_equal(jobs[i].drops, 1);
    }
    assert_int_equal(count_rows(f, "SELECT count(*) FROM kv"), 0);
    nx_store_stats(f->s, &st);
    assert_int_equal(st.failed_commits, 1);
    run_batch(f, next, 1); /* the store goes on */
    assert_int_equal(next[0].rc, 0);
    assert_int_equal(count_rows(f, "SELECT count(*) FROM kv"), 2);
    fx_close(f);
}

static void test_defer_outside_a_write_job_is_refused(void **state)
{
    (void)state;
    assert_int_equal(nx_store_defer(NULL, late_run, NULL, NULL), NX_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_deferred_work_runs_after_the_last_job_in_the_same_commit),
        cmocka_unit_test(test_a_failed_job_drops_its_deferred_work),
        cmocka_unit_test(test_failed_deferred_work_fails_the_whole_batch),
        cmocka_unit_test(test_defer_outside_a_write_job_is_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
