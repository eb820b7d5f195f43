/* Reads beside the writer. The store thread runs a read between batches, so a read queued while
 * a batch collects waits for its jobs (another session's first transcript file, the index
 * catch-up) and its COMMIT. A read that need not see those (nx_store_read_keyed, when no write
 * of its key is pending) runs here instead, on a connection of its own: WAL lets it read the
 * last commit while the writer goes on. */
#include <pthread.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/error.h"
#include "core/log.h"
#include "store/reader.h"

/* Its page cache, at most (KiB): it reads a session's last messages, not whole tables. */
#define CACHE_KIB 1024

struct nx_reader {
    pthread_t thread;
    pthread_mutex_t lock; /* guards the queue and is_stopping */
    pthread_cond_t cond;
    struct job_queue q;
    bool is_stopping;
    char *path;
    sqlite3 *db;       /* reader thread only */
    bool is_broken;    /* the connection could not open (reader thread only) */
    nx_reader_ran_fn ran;
    void *ctx;
};

static bool connect_db(struct nx_reader *r)
{
    char sql[64];

    if (r->db || r->is_broken)
        return r->db != NULL;
    snprintf(sql, sizeof sql, "PRAGMA query_only=ON; PRAGMA cache_size=-%d", CACHE_KIB);
    if (sqlite3_open_v2(r->path, &r->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) !=
            SQLITE_OK ||
        sqlite3_exec(r->db, sql, NULL, NULL, NULL) != SQLITE_OK) {
        nx_warn("store", "reader connection to %s: %s; reads wait for the store thread", r->path,
                r->db ? sqlite3_errmsg(r->db) : "out of memory");
        sqlite3_close_v2(r->db);
        r->db = NULL;
        r->is_broken = true;
        return false;
    }
    sqlite3_busy_timeout(r->db, NX_STORE_BUSY_TIMEOUT_MS);
    return true;
}

/* A statement left running would hold its read snapshot open: every later read would miss what
 * commits meanwhile. */
static void end_snapshot(sqlite3 *db)
{
    for (sqlite3_stmt *st = sqlite3_next_stmt(db, NULL); st; st = sqlite3_next_stmt(db, st)) {
        if (sqlite3_stmt_busy(st)) {
            nx_warn("store", "a read job left a statement running; resetting it");
            sqlite3_reset(st);
        }
    }
    if (!sqlite3_get_autocommit(db)) {
        nx_warn("store", "a read job left a transaction open; rolling it back");
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    }
}

static void run(struct nx_reader *r, struct job *j)
{
    if (!connect_db(r)) {
        j->is_handed_back = true;
    } else {
        int rc = j->fn(r->db, j->arg);
        end_snapshot(r->db);
        j->rc = rc < 0 ? rc : 0;
    }
    r->ran(j, r->ctx);
}

static void *reader_main(void *arg)
{
    struct nx_reader *r = arg;

    pthread_setname_np(pthread_self(), "nexo-read");
    pthread_mutex_lock(&r->lock);
    for (;;) {
        while (!r->q.head && !r->is_stopping)
            pthread_cond_wait(&r->cond, &r->lock);
        struct job *j = job_queue_pop(&r->q);
        if (!j)
            break; /* stopping, and nothing left */
        pthread_mutex_unlock(&r->lock);
        run(r, j);
        pthread_mutex_lock(&r->lock);
    }
    pthread_mutex_unlock(&r->lock);
    nx_store_db_close(r->db, r->path); /* here: statements jobs cached are this thread's */
    r->db = NULL;
    return NULL;
}

struct nx_reader *nx_reader_start(const char *path, nx_reader_ran_fn ran, void *ctx)
{
    struct nx_reader *r = nx_calloc(1, sizeof *r);
    int rc;

    r->path = nx_strdup(path);
    r->ran = ran;
    r->ctx = ctx;
    pthread_mutex_init(&r->lock, NULL);
    pthread_cond_init(&r->cond, NULL);
    if ((rc = pthread_create(&r->thread, NULL, reader_main, r)) != 0) {
        nx_warn("store", "cannot start the reader thread (%s); reads wait for the store thread",
                strerror(rc));
        pthread_cond_destroy(&r->cond);
        pthread_mutex_destroy(&r->lock);
        free(r->path);
        free(r);
        return NULL;
    }
    return r;
}

void nx_reader_submit(struct nx_reader *r, struct job *j)
{
    pthread_mutex_lock(&r->lock);
    NX_ASSERT(!r->is_stopping);
    job_queue_push(&r->q, j);
    pthread_cond_signal(&r->cond);
    pthread_mutex_unlock(&r->lock);
}

void nx_reader_stop(struct nx_reader *r)
{
    if (!r)
        return;
    pthread_mutex_lock(&r->lock);
    r->is_stopping = true;
    pthread_cond_signal(&r->cond);
    pthread_mutex_unlock(&r->lock);
    pthread_join(r->thread, NULL);
    pthread_cond_destroy(&r->cond);
    pthread_mutex_destroy(&r->lock);
    free(r->path);
    free(r);
}
