#ifndef NX_STORE_STORE_INTERNAL_H
#define NX_STORE_STORE_INTERNAL_H

#include <sqlite3.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store/store.h"

/* The store's own declarations (store.c, open.c, reader.c). */

#define NX_STORE_BUSY_TIMEOUT_MS 5000

/* Opening the database on the store thread (open.c): the data directory (0700) and nexo.db
 * (0600) made whatever the umask, WAL, the pragmas, then the migrations. 0, or < 0 with `err`
 * filled (and logged) and no connection. */
struct nx_db_open {
    const char *dir;
    const char *path;
    bool synchronous_full;
    bool is_read_only;
    sqlite3 *db;       /* out */
    int version;       /* out: schema version after the migrations */
    int applied;       /* out: migrations this open applied */
    char *err;         /* out: why it failed */
    size_t err_size;
};
int nx_db_open(struct nx_db_open *o);

/* A queued request. It travels: submitter -> queue -> a store connection's thread -> mailbox
 * -> loop. */
enum job_kind {
    JOB_WRITE,
    JOB_READ,
    JOB_FLUSH,
};

struct job {
    struct job *next;
    enum job_kind kind;
    nx_store_job_fn fn;
    nx_store_done_fn done;
    void *arg;
    int rc;
    uint32_t key_slot; /* a keyed write: its key's slot + 1 (see nx_store_write_keyed); else 0 */
    bool is_handed_back; /* a keyed read the reader did not run (it has no connection) */
};

/* A FIFO of jobs, guarded by its owner's lock (the store thread's queue, the reader's). */
struct job_queue {
    struct job *head;
    struct job *tail;
};

static inline void job_queue_push(struct job_queue *q, struct job *j)
{
    j->next = NULL;
    if (q->tail)
        q->tail->next = j;
    else
        q->head = j;
    q->tail = j;
}

/* The oldest job, or NULL. */
static inline struct job *job_queue_pop(struct job_queue *q)
{
    struct job *j = q->head;

    if (j) {
        q->head = j->next;
        if (!q->head)
            q->tail = NULL;
        j->next = NULL;
    }
    return j;
}

/* Finalizes the statements jobs prepared once and kept (NX_STORE_KEEP_SQL) and closes db.
 * Call on the thread whose jobs used it. NULL is fine. */
void nx_store_db_close(sqlite3 *db, const char *path);

#endif
