/* WAL checkpoints on their own thread and connection. SQLite's automatic checkpoint runs inside
 * the COMMIT that crosses the threshold, on the store thread: it copies the WAL into the
 * database and fsyncs both, tens of milliseconds during which every queued job waits (a new
 * session's history read among them). Here the store thread only signals; this thread runs a
 * PASSIVE checkpoint, which never blocks the writer or readers, on a connection of its own. */
#include <pthread.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdlib.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/log.h"
#include "core/metrics.h"
#include "store/checkpoint.h"

#define BUSY_TIMEOUT_MS 5000
/* New WAL pages after which a checkpoint is asked for (SQLite's own default threshold), and the
 * WAL size after which the store thread checkpoints itself: the checkpoint thread fell behind,
 * or steady load kept the WAL from restarting (a checkpoint on the writer's thread copies it all
 * back, so the next transaction starts the WAL over). */
#define CHECKPOINT_PAGES 1000
#define CHECKPOINT_BACKSTOP_PAGES (16 * CHECKPOINT_PAGES)

struct nx_checkpointer {
    pthread_t thread;
    pthread_mutex_t lock; /* guards is_wanted and is_stopping */
    pthread_cond_t cond;
    bool is_wanted;
    bool is_stopping;
    int mark;    /* WAL pages at the last request (store thread only) */
    sqlite3 *db; /* this thread's connection */
    struct nx_metric *m_seconds;
};

static void checkpoint(struct nx_checkpointer *c)
{
    int nlog = 0, nckpt = 0;
    uint64_t t0 = nx_mono_ns();
    int rc = sqlite3_wal_checkpoint_v2(c->db, "main", SQLITE_CHECKPOINT_PASSIVE, &nlog, &nckpt);

    if (rc != SQLITE_OK && rc != SQLITE_BUSY) /* busy: another checkpoint ran; the next will do */
        nx_warn("store", "WAL checkpoint: %s", sqlite3_errmsg(c->db));
    nx_histogram_observe(c->m_seconds, NULL, (double)(nx_mono_ns() - t0) / 1e9);
}

static void *checkpointer_main(void *arg)
{
    struct nx_checkpointer *c = arg;

    pthread_setname_np(pthread_self(), "nexo-ckpt");
    pthread_mutex_lock(&c->lock);
    for (;;) {
        while (!c->is_wanted && !c->is_stopping)
            pthread_cond_wait(&c->cond, &c->lock);
        if (c->is_stopping)
            break;
        c->is_wanted = false;
        pthread_mutex_unlock(&c->lock);
        checkpoint(c);
        pthread_mutex_lock(&c->lock);
    }
    pthread_mutex_unlock(&c->lock);
    return NULL;
}

static struct nx_checkpointer *checkpointer_start(const char *path)
{
    static const double buckets[] = {0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5};
    struct nx_checkpointer *c = nx_calloc(1, sizeof *c);

    /* A connection opens the WAL on its first read; until then a checkpoint does nothing. */
    if (sqlite3_open_v2(path, &c->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) !=
            SQLITE_OK ||
        sqlite3_exec(c->db, "SELECT count(*) FROM sqlite_master", NULL, NULL, NULL) != SQLITE_OK) {
        nx_warn("store", "checkpoint connection to %s: %s; checkpoints stay in the commits", path,
                c->db ? sqlite3_errmsg(c->db) : "out of memory");
        goto fail;
    }
    sqlite3_busy_timeout(c->db, BUSY_TIMEOUT_MS);
    c->m_seconds = nx_metric_histogram("nexo_store_checkpoint_seconds",
                                       "WAL checkpoints (copy into the database and fsync), run "
                                       "off the store thread.",
                                       NULL, buckets, NX_ARRAY_LEN(buckets));
    pthread_mutex_init(&c->lock, NULL);
    pthread_cond_init(&c->cond, NULL);
    if (pthread_create(&c->thread, NULL, checkpointer_main, c) != 0) {
        nx_warn("store", "cannot start the checkpoint thread; checkpoints stay in the commits");
        pthread_cond_destroy(&c->cond);
        pthread_mutex_destroy(&c->lock);
        goto fail;
    }
    return c;
fail:
    sqlite3_close_v2(c->db);
    free(c);
    return NULL;
}

static void checkpointer_request(struct nx_checkpointer *c)
{
    pthread_mutex_lock(&c->lock);
    if (!c->is_wanted) {
        c->is_wanted = true;
        pthread_cond_signal(&c->cond);
    }
    pthread_mutex_unlock(&c->lock);
}

enum nx_checkpoint_due nx_checkpoint_due(int *mark, int wal_pages)
{
    if (wal_pages < *mark) /* the WAL started over */
        *mark = 0;
    if (wal_pages >= CHECKPOINT_BACKSTOP_PAGES)
        return NX_CHECKPOINT_BACKSTOP;
    if (wal_pages - *mark < CHECKPOINT_PAGES)
        return NX_CHECKPOINT_NONE;
    *mark = wal_pages;
    return NX_CHECKPOINT_REQUEST;
}

/* After each commit (store thread): every 1,000 new pages the checkpoint thread copies the WAL
 * back; past the backstop, this thread does (a PASSIVE checkpoint, as SQLite would). */
static int on_wal_commit(void *arg, sqlite3 *db, const char *name, int pages)
{
    struct nx_checkpointer *c = arg;

    switch (nx_checkpoint_due(&c->mark, pages)) {
    case NX_CHECKPOINT_BACKSTOP:
        sqlite3_wal_checkpoint_v2(db, name, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
        break;
    case NX_CHECKPOINT_REQUEST:
        checkpointer_request(c);
        break;
    case NX_CHECKPOINT_NONE:
        break;
    }
    return SQLITE_OK;
}

struct nx_checkpointer *nx_checkpointer_attach(sqlite3 *db, const char *path)
{
    struct nx_checkpointer *c = checkpointer_start(path);
    if (c) {
        sqlite3_wal_autocheckpoint(db, 0); /* (this clears SQLite's own WAL hook) */
        sqlite3_wal_hook(db, on_wal_commit, c);
    }
    return c;
}

void nx_checkpointer_detach(sqlite3 *db, struct nx_checkpointer *c)
{
    if (!c)
        return;
    sqlite3_wal_hook(db, NULL, NULL);
    pthread_mutex_lock(&c->lock);
    c->is_stopping = true;
    pthread_cond_signal(&c->cond);
    pthread_mutex_unlock(&c->lock);
    pthread_join(c->thread, NULL);
    pthread_cond_destroy(&c->cond);
    pthread_mutex_destroy(&c->lock);
    if (sqlite3_close(c->db) != SQLITE_OK)
        sqlite3_close_v2(c->db);
    free(c);
}
