#ifndef NX_STORE_CHECKPOINT_H
#define NX_STORE_CHECKPOINT_H

#include <sqlite3.h>

/* The store's WAL checkpoints, run on a thread and connection of their own (checkpoint.c).
 * Used by the store thread only. */
struct nx_checkpointer;

/* Opens a second connection to the database at `path`, starts the thread, and makes `db` (the
 * store's connection, in WAL mode) ask it for a PASSIVE checkpoint after each commit that adds
 * the 1,000th WAL page since the last request, instead of checkpointing inside the commit. NULL
 * (logged) when that fails: `db` keeps SQLite's own checkpoints. */
struct nx_checkpointer *nx_checkpointer_attach(sqlite3 *db, const char *path);
/* Undoes attach: lets a running checkpoint finish, stops the thread, closes its connection.
 * NULL is fine. */
void nx_checkpointer_detach(sqlite3 *db, struct nx_checkpointer *c);

enum nx_checkpoint_due {
    NX_CHECKPOINT_NONE,
    NX_CHECKPOINT_REQUEST,  /* ask the checkpoint thread */
    NX_CHECKPOINT_BACKSTOP, /* it fell behind: the store thread checkpoints itself */
};
/* What a commit that left `wal_pages` in the WAL calls for. `*mark` (0 at first) is the WAL's
 * size at the last request, kept by the caller. Under steady load the WAL only restarts once
 * everything in it was copied back, which a checkpoint running beside the writer never reaches:
 * counting from the WAL's start would ask for a checkpoint, two fsyncs, after every commit. */
enum nx_checkpoint_due nx_checkpoint_due(int *mark, int wal_pages);

#endif
