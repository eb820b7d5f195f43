/* NX_TEST_LABELS: threaded */
/* nx_store_soon: write work asked for later, for data that may lag (store.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/clock.h"
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

static const struct nx_store_opts opts = {.batch_window_ms = 5000}; /* a flush closes a batch */

static void run_until(struct fx *f, const int *count, int target)
{
    sfx_run_until(&f->loop, count, target);
}

static struct fx *fx_open(void)
{
    struct fx *f = calloc(1, sizeof *f);

    assert_non_null(f);
    assert_int_equal(ts_mkdtemp(f->tmp, sizeof f->tmp, "nx-soon-"), 0);
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

/* ---- jobs: each inserts its key and asks for "<key>-late" to be inserted later ---- */

struct late {
    char key[16];
    bool is_failing;     /* puts its row, then fails */
    bool is_ending;      /* ends the transaction itself the first time (as an I/O error would) */
    _Atomic uint64_t ran_ns[2]; /* when it ran first and second */
    atomic_int runs;
    atomic_int ran_at;   /* order (store thread) it ran at */
};

struct job {
    struct fx *f;
    char key[16];
    struct late *late;   /* what it asks for (shared by jobs that ask for the same) */
    uint32_t within_ms;
    int rc;
    int ran_at;
    int soon_rc;
};

static atomic_int order;

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
    struct late *l = arg;

    int run = atomic_fetch_add(&l->runs, 1);

    atomic_store(&l->ran_at, ++order);
    if (run < 2)
        atomic_store(&l->ran_ns[run], nx_mono_ns());
    if (l->is_ending && run == 0) {
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
        return NX_EIO;
    }
    if (put(db, l->key) < 0)
        return NX_EDB;
    return l->is_failing ? NX_EIO : 0;
}

static int job_run(sqlite3 *db, void *arg)
{
    struct job *j = arg;

    j->ran_at = ++order;
    if (put(db, j->key) < 0)
        return NX_EDB;
    j->soon_rc = nx_store_soon(db, j->within_ms, late_run, j->late); /* (checked on the loop) */
    return 0;
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

static void late_init(struct late *l, const char *key)
{
    memset(l, 0, sizeof *l);
    snprintf(l->key, sizeof l->key, "%s", key);
}

/* Queues the jobs as one batch (a flush ends it) and waits for them. */
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
}

static void test_work_due_now_runs_after_the_last_job_in_the_same_commit(void **state)
{
    (void)state;
    struct fx *f = fx_open();
    struct late late[3];
    struct job jobs[3] = {{0}};
    struct nx_store_stats st;

    for (int i = 0; i < 3; i++) {
        char key[16];
        snprintf(key, sizeof key, "k%d-late", i);
        late_init(&late[i], key);
        jobs[i].late = &late[i];
    }
    run_batch(f, jobs, 3);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(jobs[i].rc, 0);
        assert_int_equal(jobs[i].soon_rc, 0);
        assert_int_equal(jobs[i].ran_at, i + 1);
        assert_int_equal(atomic_load(&late[i].runs), 1); /* done: it is in the commit */
        assert_true(atomic_load(&late[i].ran_at) > 3);   /* after every job */
    }
    nx_store_stats(f->s, &st);
    assert_int_equal(st.commits, 1);
    assert_int_equal(count_rows(f, "SELECT count(*) FROM kv WHERE key LIKE 'k%-late'"), 3);
    fx_close(f);
}

static void test_asked_twice_runs_once_at_the_earlier_time(void **state)
{
    (void)state;
    struct fx *f = fx_open();
    struct late late;
    struct job jobs[2] = {{.within_ms = 60000}, {.within_ms = 0}};

    late_init(&late, "shared-late");
    jobs[0].late = jobs[1].late = &late;
    run_batch(f, jobs, 2);
    assert_int_equal(jobs[0].soon_rc, 0);
    assert_int_equal(jobs[1].soon_rc, 0);
    assert_int_equal(atomic_load(&late.runs), 1);
    assert_int_equal(count_rows(f, "SELECT count(*) FROM kv WHERE key = 'shared-late'"), 1);
    fx_close(f);
}

static void test_failed_work_undoes_only_its_own_changes(void **state)
{
    (void)state;
    struct fx *f = fx_open();
    struct late late;
    struct job jobs[2] = {{0}};
    struct nx_store_stats st;

    late_init(&late, "bad-late");
    late.is_failing = true;
    jobs[0].late = jobs[1].late = &late;
    run_batch(f, jobs, 2);
    assert_int_equal(jobs[0].rc, 0); /* the batch committed */
    assert_int_equal(jobs[1].rc, 0);
    assert_int_equal(atomic_load(&late.runs), 1);
    assert_int_equal(count_rows(f, "SELECT count(*) FROM kv WHERE key IN ('k0', 'k1')"), 2);
    assert_int_equal(count_rows(f, "SELECT count(*) FROM kv WHERE key = 'bad-late'"), 0);
    nx_store_stats(f->s, &st);
    assert_int_equal(st.failed_commits, 0);
    fx_close(f);
}

static bool has_run(void *arg)
{
    return atomic_load(&((struct late *)arg)->runs) > 0;
}

static void test_work_runs_in_its_own_commit_when_no_write_comes(void **state)
{
    (void)state;
    struct fx *f = fx_open();
    struct late late;
    struct job jobs[1] = {{.within_ms = 1000}};
    struct nx_store_stats st;

    late_init(&late, "idle-late");
    jobs[0].late = &late;
    run_batch(f, jobs, 1);
    assert_int_equal(jobs[0].rc, 0);
    assert_int_equal(atomic_load(&late.runs), 0); /* not yet: it may lag a second */
    assert_true(ts_run_until(&f->loop, has_run, &late, SFX_WAIT_MS));
    assert_int_equal(count_rows(f, "SELECT count(*) FROM kv WHERE key = 'idle-late'"), 1);
    nx_store_stats(f->s, &st);
    assert_int_equal(st.commits, 2);
    fx_close(f);
}

static bool ran_twice(void *arg)
{
    return atomic_load(&((struct late *)arg)->runs) >= 2;
}

/* Work whose transaction did not commit (here it ends it, as an I/O error would) is not lost and
 * not retried in a busy loop: it runs again a second later. */
static void test_work_that_did_not_commit_runs_again_a_second_later(void **state)
{
    (void)state;
    struct fx *f = fx_open();
    struct late late;
    struct job jobs[1] = {{.within_ms = 0}};

    late_init(&late, "again-late");
    late.is_ending = true;
    jobs[0].late = &late;
    run_batch(f, jobs, 1);
    assert_int_equal(jobs[0].rc, NX_EDB); /* the batch it ended with it */
    assert_int_equal(atomic_load(&late.runs), 1);
    assert_true(ts_run_until(&f->loop, ran_twice, &late, SFX_WAIT_MS));
    assert_true(atomic_load(&late.ran_ns[1]) - atomic_load(&late.ran_ns[0]) >= 900000000u);
    assert_int_equal(count_rows(f, "SELECT count(*) FROM kv WHERE key = 'again-late'"), 1);
    fx_close(f);
}

static void test_close_runs_the_work_still_waiting(void **state)
{
    (void)state;
    struct fx *f = fx_open();
    struct late late;
    struct job jobs[1] = {{.within_ms = 600000}};

    late_init(&late, "close-late");
    jobs[0].late = &late;
    run_batch(f, jobs, 1);
    assert_int_equal(atomic_load(&late.runs), 0);
    sfx_close(&f->loop, &f->s);
    assert_int_equal(atomic_load(&late.runs), 1);
    assert_int_equal(sfx_open(&f->loop, f->dir, &opts, &f->s), 0);
    assert_int_equal(count_rows(f, "SELECT count(*) FROM kv WHERE key = 'close-late'"), 1);
    fx_close(f);
}

static void test_only_four_requests_wait_at_once(void **state)
{
    (void)state;
    struct fx *f = fx_open();
    struct late late[5];
    struct job jobs[5] = {{0}};

    for (int i = 0; i < 5; i++) {
        char key[16];
        snprintf(key, sizeof key, "l%d", i);
        late_init(&late[i], key);
        jobs[i].late = &late[i];
        jobs[i].within_ms = 60000;
    }
    run_batch(f, jobs, 5);
    for (int i = 0; i < 4; i++)
        assert_int_equal(jobs[i].soon_rc, 0);
    assert_int_equal(jobs[4].soon_rc, NX_EINVAL);
    assert_int_equal(jobs[4].rc, 0);
    fx_close(f);
}

static void test_soon_outside_the_store_thread_is_refused(void **state)
{
    (void)state;
    struct late late;

    late_init(&late, "x");
    assert_int_equal(nx_store_soon(NULL, 0, late_run, &late), NX_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_work_due_now_runs_after_the_last_job_in_the_same_commit),
        cmocka_unit_test(test_asked_twice_runs_once_at_the_earlier_time),
        cmocka_unit_test(test_failed_work_undoes_only_its_own_changes),
        cmocka_unit_test(test_work_runs_in_its_own_commit_when_no_write_comes),
        cmocka_unit_test(test_work_that_did_not_commit_runs_again_a_second_later),
        cmocka_unit_test(test_close_runs_the_work_still_waiting),
        cmocka_unit_test(test_only_four_requests_wait_at_once),
        cmocka_unit_test(test_soon_outside_the_store_thread_is_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
