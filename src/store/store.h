#ifndef NX_STORE_STORE_H
#define NX_STORE_STORE_H

#include <stdbool.h>
#include <sqlite3.h>
#include <stdint.h>
#include <uv.h>

/* The store thread owns the SQLite connection (data/nexo.db, WAL). Writes are batched: every
 * write job queued within a few milliseconds runs inside one transaction, so durability costs
 * one fsync per batch (group commit). Completions are posted back to the loop thread. */

struct nx_store;

/* Runs on the store thread with the connection (a keyed read may run on the reader thread with
 * its connection instead). Return 0 or a negative NX_E* code. A write job that fails is rolled
 * back to a savepoint taken just before it; the rest of the batch commits. */
typedef int (*nx_store_job_fn)(sqlite3 *db, void *arg);
/* Runs on the loop thread with the job's result (or NX_EDB if the batch failed to commit,
 * NX_ECLOSED if the store was closed first). */
typedef void (*nx_store_done_fn)(int rc, void *arg);

struct nx_store_opts {
    uint32_t batch_window_ms; /* how long a batch collects writes; 0 = 2 ms */
    uint32_t max_batch;       /* jobs per transaction at most; 0 = 1024 */
    bool synchronous_full;    /* PRAGMA synchronous=FULL (default NORMAL... see docs) */
    bool is_read_only;        /* reads only (the CLI's search): nothing is created, set up,
                               * migrated or checkpointed; a read-only disk is fine */
};

/* Creates data_dir (0700) if missing, opens data_dir/nexo.db (0600) in WAL mode on a new store
 * thread and applies the numbered migrations. `ready` runs on the loop when that is done (rc 0)
 * or failed (rc < 0, see nx_store_last_error; NX_ENOTSUP for a schema newer than this binary;
 * jobs then complete with NX_ECLOSED, and the store must still be closed). Returns at once: 0,
 * or NX_EINVAL / NX_EIO (no store, `ready` never runs). Jobs may be queued before `ready`. */
int nx_store_open(uv_loop_t *loop, const char *data_dir, const struct nx_store_opts *opts,
                  nx_store_done_fn ready, void *arg, struct nx_store **out);
bool nx_store_is_open(const struct nx_store *s);
/* For the commands that read or change what a gateway recorded (nexo dlq, nexo pairing, nexo
 * transcripts): false when data_dir has no nexo.db (or an empty one), so that the command creates
 * no database to report on; with cmd, it says so on stderr (a mistyped --data). */
bool nx_store_cli_has_data(const char *data_dir, const char *cmd);

/* Queue a write (batched, in a transaction) or a read (outside the write transaction). Any
 * thread; done may be NULL. Jobs run in the order queued: consecutive writes share a
 * transaction, and a read or flush ends the batch, so a read sees every write queued before it
 * and none queued after it. Jobs must not COMMIT or ROLLBACK the batch themselves. */
void nx_store_write(struct nx_store *s, nx_store_job_fn job, nx_store_done_fn done, void *arg);
void nx_store_read(struct nx_store *s, nx_store_job_fn job, nx_store_done_fn done, void *arg);
/* done runs after every write queued before it has committed. */
void nx_store_flush(struct nx_store *s, nx_store_done_fn done, void *arg);

/* Jobs about one key (a session's history): a keyed read sees every keyed write of its key
 * queued before it, and need not wait for other writes. When no write of its key (or of a key
 * sharing its hash slot) is queued or uncommitted, it runs at once on the reader thread, on a
 * connection of its own that only reads (query_only), and sees what has committed, instead of
 * waiting for the open batch to commit; it may then also see writes queued after it. Otherwise,
 * or when that connection cannot open, it queues as nx_store_read does. A keyed read that fails
 * on the reader runs once more on the store thread, so it must be safe to run twice (a read).
 * Every write that changes what a keyed read reads must be keyed. Any thread. */
void nx_store_write_keyed(struct nx_store *s, const char *key, nx_store_job_fn job,
                          nx_store_done_fn done, void *arg);
void nx_store_read_keyed(struct nx_store *s, const char *key, nx_store_job_fn job,
                         nx_store_done_fn done, void *arg);

/* A job may prepare a statement once and keep it for later jobs on the same connection (one
 * thread each) when its SQL text starts with this comment: the store finalizes those before it
 * closes the connection. Reset each one after use so that none is left running when the batch
 * commits. store/stmt_cache.h keeps them per thread. */
#define NX_STORE_KEEP_SQL "/* nx:keep */ "

/* Write work asked for later, for data that may lag behind the jobs that make it (the transcript
 * index): fn(db, arg) runs within `within_ms` of the request (0: at the end of this batch), in
 * a write transaction: after the last job of the first batch that ends past that time, or in a
 * transaction of its own when no write comes; at close, before the last commit, whatever the
 * time. It runs in a savepoint of its own: if it fails, its changes are undone, the batch still
 * commits (unless the failure ended the transaction), and fn must be able to redo the work when
 * asked again. A request is done once its transaction commits; if that fails, it runs again a
 * second later. One request per (fn, arg) is
 * kept (asking again keeps the earlier time); fn may ask again itself (it then runs in a later
 * batch). Requests outlive the job that made them, whatever that job's result. Store thread
 * only (from a job or from such work); 0, or NX_EINVAL elsewhere or when 4 different requests
 * are pending already. */
int nx_store_soon(sqlite3 *db, uint32_t within_ms, nx_store_job_fn fn, void *arg);

/* Schema version after migrations (on the store thread's data; safe after ready). */
int nx_store_schema_version(const struct nx_store *s);

/* Why the open failed, in words ("" when it did not); safe in and after `ready`. */
const char *nx_store_last_error(const struct nx_store *s);

/* The data directory the store was opened in (e.g. for files kept beside the database). */
const char *nx_store_dir(const struct nx_store *s);

/* Counters since open, for tests and metrics; any thread. */
struct nx_store_stats {
    uint64_t commits;            /* group-commit transactions committed */
    uint64_t failed_commits;     /* batches whose BEGIN or COMMIT failed (their jobs got NX_EDB) */
    uint64_t jobs;               /* write and read jobs run */
    uint64_t writes;             /* write jobs run */
    uint64_t reads;              /* read jobs run */
    uint64_t failed_jobs;        /* jobs that completed with rc < 0 (own error or failed commit) */
    uint64_t max_batch;          /* most write jobs seen in one transaction */
    uint64_t migrations_applied; /* migrations this open applied */
};
void nx_store_stats(const struct nx_store *s, struct nx_store_stats *out);

/* Flushes, stops the thread and closes the database; blocks the caller until done. Jobs still
 * queued run first. Accepts NULL. Call on the loop thread during shutdown.
 * Every done callback still pending (including `ready` if it had not run yet) runs on the
 * calling thread before close returns, exactly once; jobs submitted from those callbacks (or
 * on the loop thread once close has begun) complete with NX_ECLOSED, also before close returns;
 * other threads must have stopped submitting before close is called.
 * The store's mailbox handle is then closed; its memory is freed when the loop next runs
 * (uv_run), after which uv_run can return. Do not use `s` after close. */
void nx_store_close(struct nx_store *s);

#endif
