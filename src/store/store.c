#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/error.h"
#include "core/log.h"
#include "core/metrics.h"
#include "runtime/mailbox.h"
#include "store/checkpoint.h"
#include "store/reader.h"
#include "store/soon.h"
#include "store/history_internal.h"
#include "store/store.h"
#include "store/store_internal.h"

#define DEFAULT_WINDOW_MS 2
#define DEFAULT_MAX_BATCH 1024
/* Keyed writes pending, counted per slot of the key's hash: a slot at zero means no write of
 * any key hashing there is queued or uncommitted. Another key sharing a slot only sends a read
 * the slow way. */
#define KEY_SLOTS 1024

enum sp_stmt {
    SP_BEGIN,
    SP_RELEASE,
    SP_ROLLBACK_TO,
    SP_COUNT,
};

struct nx_store {
    struct nx_mailbox mb; /* completions into the loop; freed with the store when it closes */
    pthread_t thread;
    bool has_thread;

    pthread_mutex_t lock; /* guards the queue and is_closing */
    pthread_cond_t cond;
    struct job_queue q;
    bool is_closing;
    uint32_t key_pending[KEY_SLOTS]; /* keyed writes not yet committed, by slot */
    struct nx_reader *reader;        /* reads beside the writer, started by the first */
    bool is_reader_off;              /* it could not start, or the store is closing */

    char *dir;
    char *path;
    uint32_t window_ms;
    uint32_t max_batch;
    bool synchronous_full;
    bool is_read_only;

    nx_store_done_fn ready;
    void *ready_arg;
    int ready_rc;
    char err[512]; /* written by the store thread before `ready` is posted */

    sqlite3 *db; /* store thread only */
    struct nx_checkpointer *ckpt; /* WAL checkpoints, if their thread started (store thread) */
    sqlite3_stmt *sp[SP_COUNT]; /* the per-job savepoint statements, prepared once */
    struct nx_soon soon[NX_SOON_SLOTS]; /* work asked for later (store thread only) */

    atomic_bool is_open;
    atomic_int version;
    _Atomic uint64_t commits;
    _Atomic uint64_t failed_commits;
    _Atomic uint64_t jobs;
    _Atomic uint64_t writes;
    _Atomic uint64_t reads;
    _Atomic uint64_t failed_jobs;
    _Atomic uint64_t max_batch_seen;
    _Atomic uint64_t migrations_applied;

    struct nx_metric *m_commits;
    struct nx_metric *m_jobs;
    struct nx_metric *m_batch;
    struct nx_metric *m_commit_seconds;
};

/* The store whose thread this is (nx_store_soon finds it by it). */
static _Thread_local struct nx_store *tl_store;

/* ---- completions (run on the loop thread) ---- */

static void run_done(void *arg)
{
    struct job *j = arg;

    j->done(j->rc, j->arg);
    free(j);
}

static void post_done(struct nx_store *s, struct job *j)
{
    if (j->key_slot) { /* committed (or failed): keyed reads of that key may go beside it now */
        pthread_mutex_lock(&s->lock);
        s->key_pending[j->key_slot - 1]--;
        pthread_mutex_unlock(&s->lock);
    }
    if (j->done)
        nx_mailbox_post(&s->mb, run_done, j);
    else
        free(j);
}

static void run_ready(void *arg)
{
    struct nx_store *s = arg;

    if (s->ready)
        s->ready(s->ready_rc, s->ready_arg);
}

static int open_db(struct nx_store *s)
{
    struct nx_db_open o = {.dir = s->dir, .path = s->path, .synchronous_full = s->synchronous_full,
                           .is_read_only = s->is_read_only, .err = s->err, .err_size = sizeof s->err};
    int rc = nx_db_open(&o);

    s->db = o.db;
    if (rc == 0) {
        atomic_store(&s->version, o.version);
        atomic_store(&s->migrations_applied, (uint64_t)o.applied);
    }
    return rc;
}

/* ---- running jobs (store thread) ---- */

static void count_job(struct nx_store *s, const struct job *j)
{
    static const char *const labels[2][2] = {{"write", "ok"}, {"write", "error"}};
    static const char *const rlabels[2][2] = {{"read", "ok"}, {"read", "error"}};
    bool is_failed = j->rc < 0;

    atomic_fetch_add_explicit(&s->jobs, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(j->kind == JOB_WRITE ? &s->writes : &s->reads, 1,
                              memory_order_relaxed);
    if (is_failed)
        atomic_fetch_add_explicit(&s->failed_jobs, 1, memory_order_relaxed);
    nx_counter_add(s->m_jobs, j->kind == JOB_WRITE ? labels[is_failed] : rlabels[is_failed], 1);
}

static int sql_exec(struct nx_store *s, const char *sql)
{
    return sqlite3_exec(s->db, sql, NULL, NULL, NULL) == SQLITE_OK ? 0 : NX_EDB;
}

/* The savepoint statements run twice per write job: prepared once, not parsed each time. */
static int sp_exec(struct nx_store *s, enum sp_stmt which)
{
    static const char *const sql[SP_COUNT] = {
        [SP_BEGIN] = "SAVEPOINT nx_job",
        [SP_RELEASE] = "RELEASE nx_job",
        [SP_ROLLBACK_TO] = "ROLLBACK TO nx_job",
    };
    sqlite3_stmt *st = s->sp[which];
    int rc;

    if (!st && sqlite3_prepare_v3(s->db, sql[which], -1, SQLITE_PREPARE_PERSISTENT, &s->sp[which],
                                  NULL) != SQLITE_OK)
        return sql_exec(s, sql[which]);
    st = s->sp[which];
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : NX_EDB;
}

int nx_store_soon(sqlite3 *db, uint32_t within_ms, nx_store_job_fn fn, void *arg)
{
    struct nx_store *s = tl_store;

    if (!s || !fn || s->db != db)
        return NX_EINVAL;
    return nx_soon_add(s->soon, nx_mono_ns() + (uint64_t)within_ms * 1000000u, fn, arg);
}

static bool has_deferred_violation(sqlite3 *db)
{
    int cur = 0;
    int hi = 0;

    return sqlite3_db_status(db, SQLITE_DBSTATUS_DEFERRED_FKS, &cur, &hi, 0) == SQLITE_OK && cur > 0;
}

/* One write job inside the open transaction, fenced by a savepoint so that its failure undoes
 * only its own changes. Returns false when the transaction itself is gone (a job that ran
 * COMMIT or ROLLBACK, or a savepoint that could not be rolled back): the batch must end. */
static bool run_write(struct nx_store *s, struct job *j)
{
    int rc;

    if (sp_exec(s, SP_BEGIN) < 0) {
        j->rc = NX_EDB;
        return !sqlite3_get_autocommit(s->db);
    }
    rc = j->fn(s->db, j->arg);
    if (rc >= 0 && has_deferred_violation(s->db)) {
        /* would make COMMIT fail for the whole batch: fail this job alone instead */
        nx_warn("store", "a write job left a deferred foreign key violation; rolling it back");
        rc = NX_EDB;
    }
    if (sqlite3_get_autocommit(s->db)) {
        /* the job ran COMMIT or ROLLBACK, or SQLite rolled back after an I/O error */
        nx_error("store", "the batch transaction ended inside a write job (%s); failing the batch",
                 sqlite3_errmsg(s->db));
        j->rc = rc < 0 ? rc : NX_EDB;
        return false;
    }
    if (rc < 0) {
        j->rc = rc;
        if (sp_exec(s, SP_ROLLBACK_TO) < 0 || sp_exec(s, SP_RELEASE) < 0)
            return false;
        return true;
    }
    j->rc = 0;
    if (sp_exec(s, SP_RELEASE) < 0) {
        j->rc = NX_EDB;
        return false;
    }
    return true;
}

static void deadline_after(struct timespec *ts, uint32_t ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

/* Under s->lock: waits (until `deadline`) for a write at the head of the queue and takes up to
 * `room` consecutive writes. Stops at once on a read or flush (they see this batch committed),
 * or when the store is closing and nothing is queued. */
static struct job *take_writes(struct nx_store *s, const struct timespec *deadline, size_t room)
{
    struct job *first;
    struct job *last;
    size_t n = 1;

    while (!s->q.head && !s->is_closing) {
        if (pthread_cond_timedwait(&s->cond, &s->lock, deadline) == ETIMEDOUT)
            break;
    }
    if (!s->q.head || s->q.head->kind != JOB_WRITE)
        return NULL;
    first = last = s->q.head;
    while (n < room && last->next && last->next->kind == JOB_WRITE) {
        last = last->next;
        n++;
    }
    s->q.head = last->next;
    if (!s->q.head)
        s->q.tail = NULL;
    last->next = NULL;
    return first;
}

/* Group commit: the first write opens the transaction; writes that arrive within the window
 * join it (each run as it arrives, in its own savepoint); one COMMIT, then every completion. */
static void run_batch(struct nx_store *s, struct job *first)
{
    struct job *batch = first;
    struct job *last = first;
    struct timespec deadline;
    size_t n = 1;
    bool is_ok = sql_exec(s, "BEGIN IMMEDIATE") == 0;
    uint64_t t0;

    first->next = NULL;
    if (!is_ok) {
        nx_error("store", "BEGIN: %s", sqlite3_errmsg(s->db));
        goto finish;
    }
    deadline_after(&deadline, s->window_ms);
    if (!run_write(s, first)) {
        is_ok = false;
        goto finish;
    }
    while (n < s->max_batch) {
        pthread_mutex_lock(&s->lock);
        struct job *more = take_writes(s, &deadline, s->max_batch - n);
        pthread_mutex_unlock(&s->lock);
        if (!more)
            break;
        last->next = more;
        for (struct job *j = more; j; j = j->next) {
            last = j;
            n++;
            if (is_ok && !run_write(s, j))
                is_ok = false;
            else if (!is_ok)
                j->rc = NX_EDB;
        }
        if (!is_ok)
            break;
    }
    if (is_ok && !nx_soon_run(s->soon, s->db, false))
        is_ok = false;
    t0 = nx_mono_ns();
    if (is_ok && sql_exec(s, "COMMIT") < 0) {
        nx_error("store", "COMMIT of %zu jobs failed: %s", n, sqlite3_errmsg(s->db));
        is_ok = false;
    }
    if (is_ok) {
        nx_histogram_observe(s->m_commit_seconds, NULL, (double)(nx_mono_ns() - t0) / 1e9);
        atomic_fetch_add_explicit(&s->commits, 1, memory_order_relaxed);
        nx_counter_add(s->m_commits, NULL, 1);
    }
finish:
    if (!is_ok) {
        if (!sqlite3_get_autocommit(s->db))
            sql_exec(s, "ROLLBACK");
        atomic_fetch_add_explicit(&s->failed_commits, 1, memory_order_relaxed);
    }
    nx_soon_end(s->soon, is_ok, nx_mono_ns());
    nx_transcripts_batch_end(is_ok);
    nx_histogram_observe(s->m_batch, NULL, (double)n);
    if (n > atomic_load_explicit(&s->max_batch_seen, memory_order_relaxed))
        atomic_store_explicit(&s->max_batch_seen, n, memory_order_relaxed);
    while (batch) {
        struct job *j = batch;

        batch = j->next;
        if (!is_ok)
            j->rc = NX_EDB;
        count_job(s, j);
        post_done(s, j);
    }
}

/* Work asked for later whose time came while no write did, in a transaction of its own. When
 * that cannot begin or commit, the work waits a second more (no busy loop on a failing disk). */
static void run_soon_alone(struct nx_store *s, bool is_all)
{
    bool is_ok = sql_exec(s, "BEGIN IMMEDIATE") == 0;

    if (!is_ok)
        nx_error("store", "BEGIN: %s", sqlite3_errmsg(s->db));
    is_ok = is_ok && nx_soon_run(s->soon, s->db, is_all);
    if (is_ok && sql_exec(s, "COMMIT") < 0) {
        nx_error("store", "COMMIT of later work failed: %s", sqlite3_errmsg(s->db));
        is_ok = false;
    }
    if (is_ok) {
        atomic_fetch_add_explicit(&s->commits, 1, memory_order_relaxed);
        nx_counter_add(s->m_commits, NULL, 1);
    } else {
        atomic_fetch_add_explicit(&s->failed_commits, 1, memory_order_relaxed);
        if (!sqlite3_get_autocommit(s->db))
            sql_exec(s, "ROLLBACK");
    }
    nx_soon_end(s->soon, is_ok, nx_mono_ns());
    nx_transcripts_batch_end(is_ok);
}

/* A read runs between batches, outside any write transaction: it sees every write queued
 * before it. */
static void run_read(struct nx_store *s, struct job *j)
{
    int rc = j->fn(s->db, j->arg);

    if (!sqlite3_get_autocommit(s->db)) {
        nx_warn("store", "a read job left a transaction open; rolling it back");
        sql_exec(s, "ROLLBACK");
    }
    j->rc = rc < 0 ? rc : 0;
    count_job(s, j);
    post_done(s, j);
}

void nx_store_db_close(sqlite3 *db, const char *path)
{
    /* statements jobs prepare once and keep (their SQL starts with the marker NX_STORE_KEEP_SQL,
     * e.g. the ledger's) end with the connection; SQLite's own (FTS5's) are left to it */
    for (sqlite3_stmt *st = db ? sqlite3_next_stmt(db, NULL) : NULL, *next; st; st = next) {
        const char *sql = sqlite3_sql(st);
        next = sqlite3_next_stmt(db, st);
        if (sql && strncmp(sql, NX_STORE_KEEP_SQL, sizeof NX_STORE_KEEP_SQL - 1) == 0)
            sqlite3_finalize(st);
    }
    if (db && sqlite3_close(db) != SQLITE_OK) {
        nx_warn("store", "closing %s: %s", path, sqlite3_errmsg(db));
        sqlite3_close_v2(db);
    }
}

static void *store_main(void *arg)
{
    struct nx_store *s = arg;

    tl_store = s;
    s->ready_rc = open_db(s);
    if (s->ready_rc == 0) {
        if (!s->is_read_only)
            s->ckpt = nx_checkpointer_attach(s->db, s->path);
        atomic_store(&s->is_open, true);
    }
    nx_mailbox_post(&s->mb, run_ready, s);

    for (;;) {
        bool is_closing;
        pthread_mutex_lock(&s->lock);
        while (!s->q.head && !s->is_closing) {
            uint64_t due = nx_soon_next(s->soon); /* idle: wait for a job or for work asked for later */
            if (!due) {
                pthread_cond_wait(&s->cond, &s->lock);
                continue;
            }
            if (due <= nx_mono_ns())
                break;
            struct timespec ts = {.tv_sec = (time_t)(due / 1000000000u),
                                  .tv_nsec = (long)(due % 1000000000u)};
            pthread_cond_timedwait(&s->cond, &s->lock, &ts);
        }
        struct job *j = job_queue_pop(&s->q);
        is_closing = s->is_closing;
        pthread_mutex_unlock(&s->lock);
        if (!j) {
            if (s->db && nx_soon_next(s->soon))
                run_soon_alone(s, is_closing); /* at close: all of it, whatever its time */
            if (is_closing)
                break; /* closing, and nothing left */
            continue;
        }

        if (!s->db) {
            j->rc = NX_ECLOSED;
            post_done(s, j);
        } else if (j->kind == JOB_WRITE) {
            run_batch(s, j);
        } else if (j->kind == JOB_READ) {
            run_read(s, j);
        } else {
            j->rc = 0; /* flush: every write before it has committed by now */
            post_done(s, j);
        }
    }

    nx_transcripts_thread_end();
    nx_checkpointer_detach(s->db, s->ckpt); /* before the last close, which removes the WAL */
    for (size_t i = 0; i < SP_COUNT; i++)
        sqlite3_finalize(s->sp[i]);
    nx_store_db_close(s->db, s->path);
    s->db = NULL;
    return NULL;
}

/* ---- public API ---- */

static void register_metrics(struct nx_store *s)
{
    static const char *const job_labels[] = {"kind", "result", NULL};
    static const double batch_buckets[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024};
    static const double secs_buckets[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                          0.01,   0.025,   0.05,   0.1,   0.25,   1};

    s->m_commits = nx_metric_counter("nexo_store_commits_total",
                                     "Group-commit transactions committed by the store thread.", NULL);
    s->m_jobs = nx_metric_counter("nexo_store_jobs_total", "Store jobs run, by kind and result.",
                                  job_labels);
    s->m_batch = nx_metric_histogram("nexo_store_batch_size", "Write jobs per transaction.", NULL,
                                     batch_buckets, NX_ARRAY_LEN(batch_buckets));
    s->m_commit_seconds = nx_metric_histogram("nexo_store_commit_seconds",
                                              "Time spent in COMMIT (the fsync of a batch).", NULL,
                                              secs_buckets, NX_ARRAY_LEN(secs_buckets));
}

static void store_free(struct nx_store *s)
{
    struct job *j = s->q.head;

    while (j) { /* only if the thread never started */
        struct job *next = j->next;
        free(j);
        j = next;
    }
    pthread_cond_destroy(&s->cond);
    pthread_mutex_destroy(&s->lock);
    free(s->dir);
    free(s->path);
    free(s);
}

static void on_mailbox_closed(struct nx_mailbox *mb)
{
    store_free(nx_container_of(mb, struct nx_store, mb));
}

int nx_store_open(uv_loop_t *loop, const char *data_dir, const struct nx_store_opts *opts,
                  nx_store_done_fn ready, void *arg, struct nx_store **out)
{
    struct nx_store *s;
    pthread_condattr_t ca;
    size_t len;
    int rc;

    if (!loop || !data_dir || !*data_dir || !out)
        return NX_EINVAL;
    s = nx_calloc(1, sizeof *s);
    s->dir = nx_strdup(data_dir);
    len = strlen(data_dir) + sizeof "/nexo.db";
    s->path = nx_malloc(len);
    snprintf(s->path, len, "%s/nexo.db", data_dir);
    s->window_ms = opts && opts->batch_window_ms ? opts->batch_window_ms : DEFAULT_WINDOW_MS;
    s->max_batch = opts && opts->max_batch ? opts->max_batch : DEFAULT_MAX_BATCH;
    s->synchronous_full = opts && opts->synchronous_full;
    s->is_read_only = opts && opts->is_read_only;
    s->ready = ready;
    s->ready_arg = arg;
    pthread_mutex_init(&s->lock, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->cond, &ca);
    pthread_condattr_destroy(&ca);
    register_metrics(s);

    if ((rc = nx_mailbox_init(&s->mb, loop)) < 0) {
        nx_error("store", "mailbox: %s", uv_strerror(rc));
        store_free(s);
        return NX_EIO;
    }
    if ((rc = pthread_create(&s->thread, NULL, store_main, s)) != 0) {
        nx_error("store", "cannot start the store thread: %s", strerror(rc));
        nx_mailbox_close(&s->mb, on_mailbox_closed);
        return NX_EIO;
    }
    s->has_thread = true;
    *out = s;
    return 0;
}

bool nx_store_is_open(const struct nx_store *s)
{
    return s && atomic_load(&s->is_open);
}

/* Under s->lock: appends j to the store thread's queue. */
static void enqueue(struct nx_store *s, struct job *j)
{
    job_queue_push(&s->q, j);
    pthread_cond_signal(&s->cond);
}

static struct job *job_new(enum job_kind kind, nx_store_job_fn fn, nx_store_done_fn done,
                           void *arg)
{
    struct job *j = nx_calloc(1, sizeof *j);

    NX_ASSERT(fn || kind == JOB_FLUSH);
    j->kind = kind;
    j->fn = fn;
    j->done = done;
    j->arg = arg;
    return j;
}

static void submit(struct nx_store *s, struct job *j)
{
    NX_ASSERT(s);
    pthread_mutex_lock(&s->lock);
    if (s->is_closing) {
        pthread_mutex_unlock(&s->lock);
        j->key_slot = 0;
        j->rc = NX_ECLOSED;
        post_done(s, j);
        return;
    }
    if (j->key_slot)
        s->key_pending[j->key_slot - 1]++;
    enqueue(s, j);
    pthread_mutex_unlock(&s->lock);
}

static uint32_t key_slot(const char *key)
{
    uint32_t h = 2166136261u;
    for (; *key; key++)
        h = (h ^ (unsigned char)*key) * 16777619u;
    return h % KEY_SLOTS + 1;
}

/* A read the reader ran (reader thread), or handed back: it has no connection (then later keyed
 * reads queue for the store thread at once). One that failed there runs once more on the store
 * thread, whose connection may well succeed (a busy or broken second connection). */
static void on_reader_ran(struct job *j, void *ctx)
{
    struct nx_store *s = ctx;

    if (j->is_handed_back || j->rc < 0) {
        pthread_mutex_lock(&s->lock);
        if (j->is_handed_back)
            s->is_reader_off = true;
        pthread_mutex_unlock(&s->lock);
        j->is_handed_back = false;
        j->rc = 0;
        submit(s, j);
        return;
    }
    count_job(s, j);
    post_done(s, j);
}

void nx_store_write_keyed(struct nx_store *s, const char *key, nx_store_job_fn job,
                          nx_store_done_fn done, void *arg)
{
    struct job *j = job_new(JOB_WRITE, job, done, arg);

    j->key_slot = key_slot(key);
    submit(s, j);
}

void nx_store_read_keyed(struct nx_store *s, const char *key, nx_store_job_fn job,
                         nx_store_done_fn done, void *arg)
{
    struct job *j = job_new(JOB_READ, job, done, arg);
    struct nx_reader *r = NULL;

    NX_ASSERT(s);
    pthread_mutex_lock(&s->lock);
    if (!s->is_closing && !s->is_reader_off && atomic_load(&s->is_open) &&
        s->key_pending[key_slot(key) - 1] == 0) {
        if (!s->reader && !(s->reader = nx_reader_start(s->path, on_reader_ran, s)))
            s->is_reader_off = true;
        r = s->reader;
    }
    if (r)
        nx_reader_submit(r, j); /* under s->lock: close cannot have stopped r */
    pthread_mutex_unlock(&s->lock);
    if (!r)
        submit(s, j);
}

void nx_store_write(struct nx_store *s, nx_store_job_fn job, nx_store_done_fn done, void *arg)
{
    submit(s, job_new(JOB_WRITE, job, done, arg));
}

void nx_store_read(struct nx_store *s, nx_store_job_fn job, nx_store_done_fn done, void *arg)
{
    submit(s, job_new(JOB_READ, job, done, arg));
}

void nx_store_flush(struct nx_store *s, nx_store_done_fn done, void *arg)
{
    submit(s, job_new(JOB_FLUSH, NULL, done, arg));
}

int nx_store_schema_version(const struct nx_store *s)
{
    return s ? atomic_load(&s->version) : 0;
}

const char *nx_store_last_error(const struct nx_store *s)
{
    return s ? s->err : "";
}

const char *nx_store_dir(const struct nx_store *s)
{
    return s->dir;
}

void nx_store_stats(const struct nx_store *s, struct nx_store_stats *out)
{
    memset(out, 0, sizeof *out);
    if (!s)
        return;
    out->commits = atomic_load(&s->commits);
    out->failed_commits = atomic_load(&s->failed_commits);
    out->jobs = atomic_load(&s->jobs);
    out->writes = atomic_load(&s->writes);
    out->reads = atomic_load(&s->reads);
    out->failed_jobs = atomic_load(&s->failed_jobs);
    out->max_batch = atomic_load(&s->max_batch_seen);
    out->migrations_applied = atomic_load(&s->migrations_applied);
}

/* Close order: refuse new jobs, let the thread finish the queue (last batch commits, the
 * database closes), join it, then close the mailbox, which runs every completion still queued
 * right here on the loop thread, exactly once. The memory goes when the handle's close
 * callback runs. */
void nx_store_close(struct nx_store *s)
{
    struct nx_reader *r;

    if (!s)
        return;
    pthread_mutex_lock(&s->lock); /* the reader first: a read it hands back still runs */
    r = s->reader;
    s->reader = NULL;
    s->is_reader_off = true;
    pthread_mutex_unlock(&s->lock);
    nx_reader_stop(r);
    atomic_store(&s->is_open, false);
    pthread_mutex_lock(&s->lock);
    s->is_closing = true;
    pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->lock);
    if (s->has_thread)
        pthread_join(s->thread, NULL);
    s->has_thread = false;
    nx_mailbox_close(&s->mb, on_mailbox_closed);
}
