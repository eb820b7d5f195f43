/* NX_TEST_LABELS: threaded */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/buf.h"
#include "core/clock.h"
#include "core/error.h"
#include "core/metrics.h"
#include "store/checkpoint.h"
#include "store/migrations.h"
#include "store/store.h"
#include "store_fixture.h"

#define NJOBS 1000

/* ---- fixture: a temp dir, a loop and a store ---- */

struct fx {
    char tmp[64];
    char dir[128];
    char db[160];
    uv_loop_t loop;
    struct nx_store *s;
    pthread_t loop_thread;
    int ready_calls;
    int ready_rc;
    uint64_t ready_us;
    uint64_t open_call_ns;
};

static struct fx *fx_new(void)
{
    struct fx *f = calloc(1, sizeof *f);

    assert_non_null(f);
    assert_int_equal(ts_mkdtemp(f->tmp, sizeof f->tmp, "nx-store-"), 0);
    snprintf(f->dir, sizeof f->dir, "%s/var/data", f->tmp);
    snprintf(f->db, sizeof f->db, "%s/nexo.db", f->dir);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    f->loop_thread = pthread_self();
    return f;
}

static void fx_free(struct fx *f)
{
    sfx_finish(&f->loop, f->tmp); /* nothing of the store left on the loop */
    free(f);
}

/* Runs the loop until *count >= target. */
static void run_until(struct fx *f, const int *count, int target)
{
    sfx_run_until(&f->loop, count, target);
}

static void on_ready(int rc, void *arg)
{
    struct fx *f = arg;

    assert_true(pthread_equal(pthread_self(), f->loop_thread));
    f->ready_rc = rc;
    f->ready_calls++;
}

/* Opens and waits for ready; returns its rc. */
static int fx_open(struct fx *f, const struct nx_store_opts *opts)
{
    uint64_t t0 = nx_mono_ns();

    f->ready_calls = 0;
    assert_int_equal(nx_store_open(&f->loop, f->dir, opts, on_ready, f, &f->s), 0);
    f->open_call_ns = nx_mono_ns() - t0;
    run_until(f, &f->ready_calls, 1);
    assert_int_equal(f->ready_calls, 1);
    f->ready_us = (nx_mono_ns() - t0) / 1000;
    return f->ready_rc;
}

/* Closes and lets the loop release the store's handle. */
static void fx_close(struct fx *f)
{
    sfx_close(&f->loop, &f->s);
}

/* ---- jobs ---- */

struct tally {
    struct fx *f;
    int calls;
    int ok;
    int failed;
    int wrong_thread;
    int order; /* sequence number given to each completion */
};

struct put {
    struct tally *t;
    char key[32];
    const char *value;
    bool is_bad;  /* insert, then run broken SQL and fail */
    const char *sql; /* run this instead of the insert */
    int calls;    /* how many times done ran for this job */
    int rc;
    int seq;      /* when done ran, in t->order */
};

static int put_job(sqlite3 *db, void *arg)
{
    struct put *p = arg;
    sqlite3_stmt *st = NULL;
    int rc = NX_EDB;

    if (p->sql)
        return sqlite3_exec(db, p->sql, NULL, NULL, NULL) == SQLITE_OK ? 0 : NX_EDB;
    if (sqlite3_prepare_v2(db, "INSERT OR REPLACE INTO kv(key, value, updated_at) VALUES (?1, ?2, 1)",
                           -1, &st, NULL) != SQLITE_OK)
        goto out;
    sqlite3_bind_text(st, 1, p->key, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, p->value ? p->value : "v", -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE)
        goto out;
    if (p->is_bad && sqlite3_exec(db, "INSERT INTO no_such_table VALUES (1)", NULL, NULL, NULL) != SQLITE_OK)
        goto out;
    rc = 0;
out:
    sqlite3_finalize(st);
    return rc;
}

static void put_done(int rc, void *arg)
{
    struct put *p = arg;
    struct tally *t = p->t;

    if (!pthread_equal(pthread_self(), t->f->loop_thread))
        t->wrong_thread++;
    p->calls++;
    p->rc = rc;
    p->seq = t->order++;
    t->calls++;
    if (rc == 0)
        t->ok++;
    else
        t->failed++;
}

static struct put *puts_new(struct tally *t, int n, const char *prefix)
{
    struct put *p = calloc((size_t)n, sizeof *p);

    assert_non_null(p);
    for (int i = 0; i < n; i++) {
        p[i].t = t;
        snprintf(p[i].key, sizeof p[i].key, "%s%d", prefix, i);
    }
    return p;
}

struct get {
    struct tally *t;
    const char *key;    /* NULL: count rows */
    const char *sql;    /* or a single-integer query */
    char value[64];
    bool is_found;
    long long n;
    int calls;
    int rc;
    int seq;
};

static int get_job(sqlite3 *db, void *arg)
{
    struct get *g = arg;
    sqlite3_stmt *st = NULL;
    const char *sql = g->sql ? g->sql
                    : g->key ? "SELECT value FROM kv WHERE key = ?1"
                             : "SELECT count(*) FROM kv";
    int rc = NX_EDB;
    int step;

    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        goto out;
    if (g->key && !g->sql)
        sqlite3_bind_text(st, 1, g->key, -1, SQLITE_STATIC);
    step = sqlite3_step(st);
    if (step == SQLITE_ROW) {
        g->is_found = true;
        g->n = sqlite3_column_int64(st, 0);
        snprintf(g->value, sizeof g->value, "%s", (const char *)sqlite3_column_text(st, 0));
    } else if (step != SQLITE_DONE) {
        goto out;
    }
    rc = 0;
out:
    sqlite3_finalize(st);
    return rc;
}

static void get_done(int rc, void *arg)
{
    struct get *g = arg;

    if (!pthread_equal(pthread_self(), g->t->f->loop_thread))
        g->t->wrong_thread++;
    g->calls++;
    g->rc = rc;
    g->seq = g->t->order++;
    g->t->calls++;
}

/* Reads one integer on the store thread. */
static long long read_int(struct fx *f, const char *sql)
{
    struct tally t = {.f = f};
    struct get g = {.t = &t, .sql = sql};

    nx_store_read(f->s, get_job, get_done, &g);
    run_until(f, &t.calls, 1);
    assert_int_equal(g.rc, 0);
    assert_true(g.is_found);
    return g.n;
}

static mode_t mode_of(const char *path)
{
    struct stat st;

    assert_int_equal(stat(path, &st), 0);
    return st.st_mode & 07777;
}

/* ---- tests ---- */

static void test_store_open_makes_private_dir_and_files_under_umask_0(void **state)
{
    (void)state;
    struct fx *f = fx_new();
    char path[256];
    mode_t old = umask(0);

    assert_int_equal(fx_open(f, NULL), 0);
    umask(old);
    assert_true(nx_store_is_open(f->s));
    assert_string_equal(nx_store_last_error(f->s), "");
    assert_int_equal(mode_of(f->dir), 0700);
    snprintf(path, sizeof path, "%s/var", f->tmp);
    assert_int_equal(mode_of(path), 0700);
    assert_int_equal(mode_of(f->db), 0600);
    snprintf(path, sizeof path, "%s-wal", f->db);
    assert_int_equal(mode_of(path), 0600);
    snprintf(path, sizeof path, "%s-shm", f->db);
    assert_int_equal(mode_of(path), 0600);
    print_message("fresh open: %.3f ms on the loop thread, ready after %.2f ms\n",
                  (double)f->open_call_ns / 1e6, (double)f->ready_us / 1e3);
    fx_close(f);
    fx_free(f);
}

static void test_store_open_leaves_wider_existing_dir_alone(void **state)
{
    (void)state;
    struct fx *f = fx_new();
    char parent[128];

    snprintf(parent, sizeof parent, "%s/var", f->tmp);
    assert_int_equal(mkdir(parent, 0755), 0);
    assert_int_equal(mkdir(f->dir, 0755), 0);
    assert_int_equal(chmod(f->dir, 0755), 0);
    assert_int_equal(fx_open(f, NULL), 0);
    assert_int_equal(mode_of(f->dir), 0755); /* warned, not changed */
    assert_int_equal(mode_of(f->db), 0600);
    fx_close(f);
    fx_free(f);
}

static void test_store_pragmas_and_schema_version(void **state)
{
    (void)state;
    struct fx *f = fx_new();
    struct nx_store_opts full = {.synchronous_full = true};
    size_t count;

    nx_migrations(&count);
    assert_int_equal(fx_open(f, NULL), 0);
    assert_int_equal(nx_store_schema_version(f->s), nx_migrations_latest());
    assert_int_equal(read_int(f, "SELECT count(*) FROM schema_migrations"), (long long)count);
    assert_int_equal(read_int(f, "SELECT max(version) FROM schema_migrations"), nx_migrations_latest());
    assert_int_equal(read_int(f, "SELECT count(*) FROM sqlite_master WHERE name = 'kv'"), 1);
    assert_int_equal(read_int(f, "PRAGMA synchronous"), 1); /* NORMAL */
    assert_int_equal(read_int(f, "PRAGMA foreign_keys"), 1);
    assert_int_equal(read_int(f, "SELECT journal_mode = 'wal' FROM pragma_journal_mode"), 1);
    fx_close(f);
    assert_int_equal(fx_open(f, &full), 0);
    assert_int_equal(read_int(f, "PRAGMA synchronous"), 2); /* FULL */
    fx_close(f);
    fx_free(f);
}

static void test_store_migrations_table_is_ascending(void **state)
{
    (void)state;
    size_t count;
    const struct nx_migration *m = nx_migrations(&count);

    assert_true(count >= 1);
    assert_int_equal(m[0].version, 1);
    for (size_t i = 1; i < count; i++)
        assert_true(m[i].version > m[i - 1].version);
    assert_int_equal(nx_migrations_latest(), m[count - 1].version);
}

static void test_store_reopen_does_not_reapply_migrations(void **state)
{
    (void)state;
    struct fx *f = fx_new();
    struct nx_store_stats st;
    size_t count;
    long long applied_at_sum;

    nx_migrations(&count);
    assert_int_equal(fx_open(f, NULL), 0);
    nx_store_stats(f->s, &st);
    assert_int_equal(st.migrations_applied, count);
    applied_at_sum = read_int(f, "SELECT sum(applied_at) FROM schema_migrations");
    fx_close(f);

    assert_int_equal(fx_open(f, NULL), 0);
    nx_store_stats(f->s, &st);
    assert_int_equal(st.migrations_applied, 0);
    assert_int_equal(nx_store_schema_version(f->s), nx_migrations_latest());
    assert_int_equal(read_int(f, "SELECT count(*) FROM schema_migrations"), (long long)count);
    assert_int_equal(read_int(f, "SELECT sum(applied_at) FROM schema_migrations"), applied_at_sum);
    print_message("reopen: %.3f ms on the loop thread, ready after %.2f ms\n",
                  (double)f->open_call_ns / 1e6, (double)f->ready_us / 1e3);
    assert_true(f->open_call_ns < 50 * 1000000ULL);
    fx_close(f);
    fx_free(f);
}

static void test_store_group_commit_batches_1000_writes(void **state)
{
    (void)state;
    struct fx *f = fx_new();
    struct tally t = {.f = f};
    struct put *p = puts_new(&t, NJOBS, "k");
    struct nx_store_stats st;

    assert_int_equal(fx_open(f, NULL), 0);
    for (int i = 0; i < NJOBS; i++)
        nx_store_write(f->s, put_job, put_done, &p[i]);
    run_until(f, &t.calls, NJOBS);
    assert_int_equal(t.calls, NJOBS);
    assert_int_equal(t.ok, NJOBS);
    assert_int_equal(t.wrong_thread, 0);
    for (int i = 0; i < NJOBS; i++) {
        assert_int_equal(p[i].calls, 1);
        assert_int_equal(p[i].rc, 0);
        assert_int_equal(p[i].seq, i); /* completions in submission order */
    }
    nx_store_stats(f->s, &st);
    print_message("%d writes: %llu commits, max batch %llu\n", NJOBS,
                  (unsigned long long)st.commits, (unsigned long long)st.max_batch);
    assert_int_equal(st.writes, NJOBS);
    assert_int_equal(st.failed_jobs, 0);
    assert_true(st.commits >= 1);
    assert_true(st.commits <= NJOBS / 10);
    assert_true(st.max_batch >= 10);
    assert_int_equal(read_int(f, "SELECT count(*) FROM kv"), NJOBS);

    struct nx_buf m = NX_BUF_INIT;
    nx_metrics_render(&m);
    assert_non_null(strstr(nx_buf_cstr(&m), "nexo_store_commits_total"));
    assert_non_null(strstr(nx_buf_cstr(&m), "nexo_store_jobs_total{kind=\"write\",result=\"ok\"}"));
    assert_non_null(strstr(nx_buf_cstr(&m), "nexo_store_batch_size_bucket"));
    assert_non_null(strstr(nx_buf_cstr(&m), "nexo_store_commit_seconds_count"));
    nx_buf_cleanup(&m);

    fx_close(f);
    free(p);
    fx_free(f);
}

/* The WAL is copied back into the database by the checkpoint thread once it passes 1,000 pages,
 * while the store thread goes on committing: the database file holds the data before close. */
static bool checkpoint_seen(void *arg)
{
    struct nx_buf m = NX_BUF_INIT;
    nx_metrics_render(&m);
    const char *c = strstr(nx_buf_cstr(&m), "nexo_store_checkpoint_seconds_count ");
    bool is_seen = c && strtoull(c + strlen("nexo_store_checkpoint_seconds_count "), NULL, 10) >
                            *(unsigned long long *)arg;
    nx_buf_cleanup(&m);
    return is_seen;
}

static void test_store_checkpoints_off_the_store_thread(void **state)
{
    (void)state;
    struct fx *f = fx_new();
    struct tally t = {.f = f};
    enum { N = 400 }; /* 16 KiB each: about 1,600 WAL pages */
    struct put *p = puts_new(&t, N + 1, "c");
    unsigned long long before = 0;
    struct nx_buf m = NX_BUF_INIT;
    struct stat st;

    nx_metrics_render(&m);
    const char *c = strstr(nx_buf_cstr(&m), "nexo_store_checkpoint_seconds_count ");
    if (c)
        before = strtoull(c + strlen("nexo_store_checkpoint_seconds_count "), NULL, 10);
    nx_buf_cleanup(&m);
    assert_int_equal(fx_open(f, NULL), 0);
    p[0].sql = "CREATE TABLE big(b BLOB)";
    for (int i = 1; i <= N; i++)
        p[i].sql = "INSERT INTO big(b) VALUES (randomblob(16384))";
    for (int i = 0; i <= N; i++)
        nx_store_write(f->s, put_job, put_done, &p[i]);
    run_until(f, &t.calls, N + 1);
    assert_int_equal(t.ok, N + 1);
    assert_true(ts_run_until(&f->loop, checkpoint_seen, &before, SFX_WAIT_MS));
    assert_int_equal(stat(f->db, &st), 0);
    assert_true(st.st_size >= 4 * 1024 * 1024); /* the pages are in the database file */
    assert_int_equal(read_int(f, "SELECT count(*) FROM big"), N);
    fx_close(f);
    free(p);
    fx_free(f);
}

/* Under steady load the WAL never starts over (a checkpoint beside the writer never catches up
 * with it), so its size stays past the threshold: a checkpoint is asked for every 1,000 new
 * pages, not after every commit; past the backstop the store thread checkpoints itself, and once
 * the WAL restarted the count begins again. */
static void test_store_checkpoint_due_counts_new_pages(void **state)
{
    (void)state;
    int mark = 0;

    assert_int_equal(nx_checkpoint_due(&mark, 10), NX_CHECKPOINT_NONE);
    assert_int_equal(nx_checkpoint_due(&mark, 999), NX_CHECKPOINT_NONE);
    assert_int_equal(nx_checkpoint_due(&mark, 1000), NX_CHECKPOINT_REQUEST);
    for (int pages = 1001; pages < 2000; pages += 7) /* commits of a few pages each */
        assert_int_equal(nx_checkpoint_due(&mark, pages), NX_CHECKPOINT_NONE);
    assert_int_equal(nx_checkpoint_due(&mark, 2003), NX_CHECKPOINT_REQUEST);
    assert_int_equal(nx_checkpoint_due(&mark, 2010), NX_CHECKPOINT_NONE);
    assert_int_equal(nx_checkpoint_due(&mark, 16000), NX_CHECKPOINT_BACKSTOP);
    assert_int_equal(nx_checkpoint_due(&mark, 16004), NX_CHECKPOINT_BACKSTOP);
    /* the WAL started over */
    assert_int_equal(nx_checkpoint_due(&mark, 5), NX_CHECKPOINT_NONE);
    assert_int_equal(nx_checkpoint_due(&mark, 1004), NX_CHECKPOINT_REQUEST);
}

static void test_store_failing_job_rolls_back_alone(void **state)
{
    (void)state;
    struct fx *f = fx_new();
    struct tally t = {.f = f};
    struct put *p = puts_new(&t, 3, "j");
    struct nx_store_opts opts = {.batch_window_ms = 5000}; /* the flush closes the batch */
    struct nx_store_stats st;

    assert_int_equal(fx_open(f, &opts), 0);
    p[1].is_bad = true;
    for (int i = 0; i < 3; i++)
        nx_store_write(f->s, put_job, put_done, &p[i]);
    struct put fl = {.t = &t};
    nx_store_flush(f->s, put_done, &fl);
    run_until(f, &t.calls, 4);
    assert_int_equal(p[0].rc, 0);
    assert_int_equal(p[1].rc, NX_EDB);
    assert_int_equal(p[2].rc, 0);
    assert_int_equal(fl.rc, 0);
    nx_store_stats(f->s, &st);
    assert_int_equal(st.commits, 1); /* all three shared one transaction */
    assert_int_equal(st.failed_jobs, 1);
    assert_int_equal(read_int(f, "SELECT count(*) FROM kv WHERE key IN ('j0', 'j2')"), 2);
    assert_int_equal(read_int(f, "SELECT count(*) FROM kv WHERE key = 'j1'"), 0);
    fx_close(f);
    free(p);
    fx_free(f);
}

static void test_store_deferred_fk_violation_fails_only_its_job(void **state)
{
    (void)state;
    struct fx *f = fx_new();
    struct tally t = {.f = f};
    struct put *p = puts_new(&t, 4, "d");
    struct nx_store_opts opts = {.batch_window_ms = 5000};
    struct nx_store_stats st;

    assert_int_equal(fx_open(f, &opts), 0);
    p[0].sql = "CREATE TABLE parent(id INTEGER PRIMARY KEY);"
               "CREATE TABLE child(pid INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)";
    nx_store_write(f->s, put_job, put_done, &p[0]);
    nx_store_flush(f->s, NULL, NULL);
    p[2].sql = "INSERT INTO child VALUES (42)"; /* no parent 42: only COMMIT would notice */
    for (int i = 1; i < 4; i++)
        nx_store_write(f->s, put_job, put_done, &p[i]);
    nx_store_flush(f->s, NULL, NULL);
    run_until(f, &t.calls, 4);
    assert_int_equal(p[0].rc, 0);
    assert_int_equal(p[1].rc, 0);
    assert_int_equal(p[2].rc, NX_EDB);
    assert_int_equal(p[3].rc, 0);
    nx_store_stats(f->s, &st);
    assert_int_equal(st.commits, 2);
    assert_int_equal(st.failed_commits, 0);
    assert_int_equal(read_int(f, "SELECT count(*) FROM child"), 0);
    assert_int_equal(read_int(f, "SELECT count(*) FROM kv WHERE key IN ('d1', 'd3')"), 2);
    fx_close(f);
    free(p);
    fx_free(f);
}

static int commits_to_fail; /* store thread only, once set */

static int failing_commit_hook(void *arg)
{
    (void)arg;
    if (commits_to_fail > 0) {
        commits_to_fail--;
        return 1; /* turns the COMMIT into a ROLLBACK */
    }
    return 0;
}

static int hook_job(sqlite3 *db, void *arg)
{
    sqlite3_commit_hook(db, failing_commit_hook, NULL);
    return put_job(db, arg);
}

static int unhook_job(sqlite3 *db, void *arg)
{
    sqlite3_commit_hook(db, NULL, NULL);
    return put_job(db, arg);
}

static void test_store_failed_commit_fails_every_job_of_the_batch(void **state)
{
    (void)state;
    struct fx *f = fx_new();
    struct tally t = {.f = f};
    struct put *p = puts_new(&t, 4, "h");
    struct nx_store_opts opts = {.batch_window_ms = 5000};
    struct nx_store_stats st;

    assert_int_equal(fx_open(f, &opts), 0);
    commits_to_fail = 1;
    nx_store_write(f->s, hook_job, put_done, &p[0]);
    nx_store_write(f->s, put_job, put_done, &p[1]);
    nx_store_write(f->s, put_job, put_done, &p[2]);
    nx_store_flush(f->s, NULL, NULL);
    nx_store_write(f->s, unhook_job, put_done, &p[3]);
    nx_store_flush(f->s, NULL, NULL);
    run_until(f, &t.calls, 4);
    for (int i = 0; i < 3; i++)
        assert_int_equal(p[i].rc, NX_EDB);
    assert_int_equal(p[3].rc, 0);
    nx_store_stats(f->s, &st);
    assert_int_equal(st.failed_commits, 1);
    assert_int_equal(st.commits, 1);
    assert_int_equal(st.failed_jobs, 3);
    assert_int_equal(read_int(f, "SELECT count(*) FROM kv"), 1);
    fx_close(f);
    free(p);
    fx_free(f);
}

static void test_store_read_sees_writes_queued_before_it(void **state)
{
    (void)state;
    struct fx *f = fx_new();
    struct tally t = {.f = f};
    struct put *p = puts_new(&t, 2, "r");
    struct get g = {.t = &t, .key = "r0"};
    struct get g2 = {.t = &t, .key = "r1"};

    assert_int_equal(fx_open(f, NULL), 0);
    p[0].value = "first";
    p[1].value = "second";
    nx_store_write(f->s, put_job, put_done, &p[0]);
    nx_store_read(f->s, get_job, get_done, &g);
    nx_store_read(f->s, get_job, get_done, &g2);
    nx_store_write(f->s, put_job, put_done, &p[1]);
    run_until(f, &t.calls, 4);
    assert_int_equal(g.rc, 0);
    assert_true(g.is_found);
    assert_string_equal(g.value, "first");
    assert_false(g2.is_found); /* queued before the second write: does not see it */
    assert_true(p[0].seq < g.seq);
    assert_true(g2.seq < p[1].seq);
    assert_int_equal(t.wrong_thread, 0);
    fx_close(f);
    free(p);
    fx_free(f);
}

/* A keyed read whose key has no write pending runs beside the store thread: it completes while
 * a batch is still open (a 5 s window), sees what had committed and not the open batch. A keyed
 * read of the pending write's key waits for it, and sees it. */
static void test_store_keyed_read_runs_beside_an_open_batch(void **state)
{
    (void)state;
    struct fx *f = fx_new();
    struct tally t = {.f = f};
    struct put *p = puts_new(&t, 2, "k");
    struct nx_store_opts opts = {.batch_window_ms = 5000};
    struct get other = {.t = &t};            /* counts rows */
    struct get same = {.t = &t, .key = "k1"};
    struct nx_store_stats st;

    assert_int_equal(fx_open(f, &opts), 0);
    nx_store_write_keyed(f->s, "session-a", put_job, put_done, &p[0]);
    nx_store_flush(f->s, NULL, NULL); /* ends that batch: k0 commits */
    run_until(f, &t.calls, 1);
    assert_int_equal(p[0].rc, 0);

    nx_store_write_keyed(f->s, "session-b", put_job, put_done, &p[1]); /* opens a 5 s batch */
    nx_store_read_keyed(f->s, "session-a", get_job, get_done, &other);
    run_until(f, &other.calls, 1);
    assert_int_equal(other.rc, 0);
    assert_int_equal(p[1].calls, 0); /* the batch is still open */
    assert_int_equal(other.n, 1);    /* k0 committed; k1 not yet */

    nx_store_read_keyed(f->s, "session-b", get_job, get_done, &same);
    run_until(f, &same.calls, 1);
    assert_int_equal(p[1].calls, 1); /* it ended the batch */
    assert_int_equal(p[1].rc, 0);
    assert_true(same.is_found);
    assert_string_equal(same.value, "v");
    assert_true(p[1].seq < same.seq);
    assert_int_equal(t.wrong_thread, 0);
    nx_store_stats(f->s, &st);
    assert_int_equal(st.reads, 2);
    fx_close(f);
    free(p);
    fx_free(f);
}

/* A keyed read that fails on the reader runs once more, on the store thread; its done runs
 * once, with the second result. */
struct flaky {
    int runs;
    int calls;
    int rc;
};

static int flaky_job(sqlite3 *db, void *arg)
{
    struct flaky *k = arg;
    (void)db;
    return ++k->runs == 1 ? NX_EDB : 0;
}

static void flaky_done(int rc, void *arg)
{
    struct flaky *k = arg;
    k->calls++;
    k->rc = rc;
}

/* Leaves its statement stepped and not reset (a careless job), kept so that close finalizes it. */
static int careless_job(sqlite3 *db, void *arg)
{
    static _Thread_local sqlite3_stmt *st;
    (void)arg;
    if (!st && sqlite3_prepare_v2(db, NX_STORE_KEEP_SQL "SELECT key FROM kv", -1, &st, NULL) != SQLITE_OK)
        return NX_EDB;
    return sqlite3_step(st) == SQLITE_ROW ? 0 : NX_EDB;
}

static void test_store_keyed_read_retries_and_ends_its_snapshot(void **state)
{
    (void)state;
    struct fx *f = fx_new();
    struct tally t = {.f = f};
    struct put *p = puts_new(&t, 3, "s");
    struct flaky k = {0};
    struct get g = {.t = &t};
    struct flaky careless = {0};

    assert_int_equal(fx_open(f, NULL), 0);
    nx_store_read_keyed(f->s, "a", flaky_job, flaky_done, &k);
    sfx_run_until(&f->loop, &k.calls, 1);
    assert_int_equal(k.runs, 2);
    assert_int_equal(k.rc, 0);

    /* a job that leaves a statement running must not pin the reader's snapshot */
    nx_store_write_keyed(f->s, "a", put_job, put_done, &p[0]);
    nx_store_write_keyed(f->s, "a", put_job, put_done, &p[1]);
    run_until(f, &t.calls, 2);
    nx_store_read_keyed(f->s, "a", careless_job, flaky_done, &careless);
    sfx_run_until(&f->loop, &careless.calls, 1);
    assert_int_equal(careless.rc, 0);
    nx_store_write_keyed(f->s, "b", put_job, put_done, &p[2]);
    run_until(f, &t.calls, 3);
    nx_store_read_keyed(f->s, "b", get_job, get_done, &g);
    run_until(f, &g.calls, 1);
    assert_int_equal(g.rc, 0);
    assert_int_equal(g.n, 3); /* the row committed after the careless read */
    fx_close(f);
    free(p);
    fx_free(f);
}

/* Keyed reads queued beside the store thread when it closes all run and complete, once each,
 * before close returns. */
static void test_store_close_completes_keyed_reads(void **state)
{
    (void)state;
    struct fx *f = fx_new();
    struct tally t = {.f = f};
    struct put *p = puts_new(&t, 1, "c");
    struct get g[100];
    char keys[100][16];

    assert_int_equal(fx_open(f, NULL), 0);
    nx_store_write_keyed(f->s, "w", put_job, put_done, &p[0]);
    run_until(f, &t.calls, 1);
    for (int i = 0; i < 100; i++) {
        g[i] = (struct get){.t = &t};
        snprintf(keys[i], sizeof keys[i], "r%d", i);
        nx_store_read_keyed(f->s, keys[i], get_job, get_done, &g[i]);
    }
    fx_close(f);
    assert_int_equal(t.calls, 101);
    for (int i = 0; i < 100; i++) {
        assert_int_equal(g[i].calls, 1);
        assert_int_equal(g[i].rc, 0);
        assert_int_equal(g[i].n, 1);
    }
    assert_int_equal(t.wrong_thread, 0);
    free(p);
    fx_free(f);
}

struct flush_check {
    struct tally *t;
    const char *db;
    int calls_before;
    long long rows; /* seen by a separate connection when flush completed */
    int calls;
};

static void flush_done(int rc, void *arg)
{
    struct flush_check *c = arg;
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;

    assert_int_equal(rc, 0);
    c->calls++;
    c->calls_before = c->t->calls;
    assert_int_equal(sqlite3_open_v2(c->db, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, "SELECT count(*) FROM kv", -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    c->rows = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    c->t->calls++;
}

static void test_store_flush_completes_after_prior_writes_commit(void **state)
{
    (void)state;
    struct fx *f = fx_new();
    struct tally t = {.f = f};
    struct put *p = puts_new(&t, 50, "f");
    struct flush_check c = {.t = &t, .db = f->db};

    assert_int_equal(fx_open(f, NULL), 0);
    for (int i = 0; i < 50; i++)
        nx_store_write(f->s, put_job, put_done, &p[i]);
    nx_store_flush(f->s, flush_done, &c);
    run_until(f, &t.calls, 51);
    assert_int_equal(c.calls, 1);
    assert_int_equal(c.calls_before, 50); /* every write's done ran first */
    assert_int_equal(c.rows, 50);         /* and they are committed, visible to others */
    fx_close(f);
    free(p);
    fx_free(f);
}

struct poster {
    struct nx_store *s;
    struct put *p;
    int n;
};

static void *poster_main(void *arg)
{
    struct poster *ps = arg;

    for (int i = 0; i < ps->n; i++)
        nx_store_write(ps->s, put_job, put_done, &ps->p[i]);
    return NULL;
}

static void test_store_writes_from_two_threads_all_land(void **state)
{
    (void)state;
    struct fx *f = fx_new();
    struct tally t = {.f = f};
    struct put *a = puts_new(&t, 500, "a");
    struct put *b = puts_new(&t, 500, "b");
    struct poster pa, pb;
    pthread_t ta, tb;

    assert_int_equal(fx_open(f, NULL), 0);
    pa = (struct poster){.s = f->s, .p = a, .n = 500};
    pb = (struct poster){.s = f->s, .p = b, .n = 500};
    assert_int_equal(pthread_create(&ta, NULL, poster_main, &pa), 0);
    assert_int_equal(pthread_create(&tb, NULL, poster_main, &pb), 0);
    run_until(f, &t.calls, 1000);
    assert_int_equal(pthread_join(ta, NULL), 0);
    assert_int_equal(pthread_join(tb, NULL), 0);
    assert_int_equal(t.ok, 1000);
    assert_int_equal(t.wrong_thread, 0);
    for (int i = 0; i < 500; i++) {
        assert_int_equal(a[i].calls, 1);
        assert_int_equal(b[i].calls, 1);
    }
    assert_int_equal(read_int(f, "SELECT count(*) FROM kv"), 1000);
    fx_close(f);
    free(a);
    free(b);
    fx_free(f);
}

struct late {
    struct nx_store *s;
    struct tally *t;
    struct put *p;
    struct put extra;
};

static void late_done(int rc, void *arg)
{
    struct late *l = arg;

    put_done(rc, l->p);
    /* a job submitted while the store closes: rejected, yet its done still runs */
    nx_store_write(l->s, put_job, put_done, &l->extra);
}

static void test_store_close_completes_queued_jobs(void **state)
{
    (void)state;
    struct fx *f = fx_new();
    struct tally t = {.f = f};
    struct put *p = puts_new(&t, 200, "c");
    struct nx_store_opts opts = {.batch_window_ms = 5000};
    struct late l = {.t = &t};
    uint64_t t0;

    assert_int_equal(fx_open(f, &opts), 0);
    l.s = f->s;
    l.p = &p[199];
    l.extra.t = &t;
    snprintf(l.extra.key, sizeof l.extra.key, "late");
    for (int i = 0; i < 199; i++)
        nx_store_write(f->s, put_job, put_done, &p[i]);
    nx_store_write(f->s, put_job, late_done, &l);
    t0 = nx_mono_ns();
    fx_close(f); /* must not wait out the 5 s window */
    assert_true(nx_mono_ns() - t0 < 2000ULL * 1000000);
    assert_int_equal(t.ok, 200);
    for (int i = 0; i < 200; i++)
        assert_int_equal(p[i].calls, 1);
    assert_int_equal(l.extra.calls, 1);
    assert_int_equal(l.extra.rc, NX_ECLOSED);
    assert_int_equal(t.wrong_thread, 0);

    /* everything landed */
    assert_int_equal(fx_open(f, NULL), 0);
    assert_int_equal(read_int(f, "SELECT count(*) FROM kv"), 200);
    fx_close(f);
    free(p);
    fx_free(f);
}

static void test_store_data_survives_close_and_reopen(void **state)
{
    (void)state;
    struct fx *f = fx_new();
    struct tally t = {.f = f};
    struct put *p = puts_new(&t, 1, "keep");
    struct get g = {.t = &t, .key = "keep0"};
    char side[256];

    assert_int_equal(fx_open(f, NULL), 0);
    p[0].value = "durable";
    nx_store_write(f->s, put_job, put_done, &p[0]);
    run_until(f, &t.calls, 1);
    assert_int_equal(p[0].rc, 0);
    fx_close(f);
    snprintf(side, sizeof side, "%s-wal", f->db);
    assert_int_not_equal(access(side, F_OK), 0); /* checkpointed and removed on close */
    snprintf(side, sizeof side, "%s-shm", f->db);
    assert_int_not_equal(access(side, F_OK), 0);

    assert_int_equal(fx_open(f, NULL), 0);
    nx_store_read(f->s, get_job, get_done, &g);
    run_until(f, &t.calls, 2);
    assert_true(g.is_found);
    assert_string_equal(g.value, "durable");
    fx_close(f);
    free(p);
    fx_free(f);
}

static void test_store_refuses_newer_schema(void **state)
{
    (void)state;
    struct fx *f = fx_new();
    struct tally t = {.f = f};
    struct put *p = puts_new(&t, 1, "x");
    sqlite3 *db = NULL;
    char sql[128];

    assert_int_equal(fx_open(f, NULL), 0);
    fx_close(f);
    assert_int_equal(sqlite3_open(f->db, &db), SQLITE_OK);
    snprintf(sql, sizeof sql, "INSERT INTO schema_migrations VALUES (%d, 'future', 0)",
             nx_migrations_latest() + 1);
    assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);

    assert_int_equal(fx_open(f, NULL), NX_ENOTSUP);
    assert_false(nx_store_is_open(f->s));
    print_message("error: %s\n", nx_store_last_error(f->s));
    assert_non_null(strstr(nx_store_last_error(f->s), "newer than this nexo knows"));
    assert_non_null(strstr(nx_store_last_error(f->s), "nexo.db"));
    nx_store_write(f->s, put_job, put_done, &p[0]);
    run_until(f, &t.calls, 1);
    assert_int_equal(p[0].rc, NX_ECLOSED);
    fx_close(f);
    free(p);
    fx_free(f);
}

static void test_store_open_rejects_bad_arguments(void **state)
{
    (void)state;
    uv_loop_t loop;
    struct nx_store *s = NULL;

    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(nx_store_open(&loop, "", NULL, NULL, NULL, &s), NX_EINVAL);
    assert_int_equal(nx_store_open(NULL, "/tmp", NULL, NULL, NULL, &s), NX_EINVAL);
    assert_null(s);
    nx_store_close(NULL);
    assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_store_open_makes_private_dir_and_files_under_umask_0),
        cmocka_unit_test(test_store_open_leaves_wider_existing_dir_alone),
        cmocka_unit_test(test_store_pragmas_and_schema_version),
        cmocka_unit_test(test_store_migrations_table_is_ascending),
        cmocka_unit_test(test_store_reopen_does_not_reapply_migrations),
        cmocka_unit_test(test_store_group_commit_batches_1000_writes),
        cmocka_unit_test(test_store_checkpoints_off_the_store_thread),
        cmocka_unit_test(test_store_checkpoint_due_counts_new_pages),
        cmocka_unit_test(test_store_failing_job_rolls_back_alone),
        cmocka_unit_test(test_store_deferred_fk_violation_fails_only_its_job),
        cmocka_unit_test(test_store_failed_commit_fails_every_job_of_the_batch),
        cmocka_unit_test(test_store_read_sees_writes_queued_before_it),
        cmocka_unit_test(test_store_keyed_read_runs_beside_an_open_batch),
        cmocka_unit_test(test_store_close_completes_keyed_reads),
        cmocka_unit_test(test_store_keyed_read_retries_and_ends_its_snapshot),
        cmocka_unit_test(test_store_flush_completes_after_prior_writes_commit),
        cmocka_unit_test(test_store_writes_from_two_threads_all_land),
        cmocka_unit_test(test_store_close_completes_queued_jobs),
        cmocka_unit_test(test_store_data_survives_close_and_reopen),
        cmocka_unit_test(test_store_refuses_newer_schema),
        cmocka_unit_test(test_store_open_rejects_bad_arguments),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
