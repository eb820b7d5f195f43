#ifndef NX_STORE_READER_H
#define NX_STORE_READER_H

#include "store/store_internal.h"

/* Reads beside the writer (store.c only): a thread with a read-only connection of its own that
 * runs read jobs in the order given, at once, instead of after the store thread's open batch.
 * A job sees what had committed when it started. */
struct nx_reader;

/* Called on the reader's thread with each job once it ran (j->rc set), or with
 * j->is_handed_back set when the reader has no connection (it could not open one): the job did
 * not run and belongs to the caller again. */
typedef void (*nx_reader_ran_fn)(struct job *j, void *ctx);

/* Starts the thread; the connection to `path` (which the store has created and migrated) opens
 * on its first job. NULL when the thread cannot start. */
struct nx_reader *nx_reader_start(const char *path, nx_reader_ran_fn ran, void *ctx);
/* Any thread; not after stop has begun. */
void nx_reader_submit(struct nx_reader *r, struct job *j);
/* Runs the jobs still queued, closes the connection on the reader's thread, joins it and frees
 * the reader. NULL is fine. */
void nx_reader_stop(struct nx_reader *r);

#endif
