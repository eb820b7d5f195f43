#ifndef NX_STORE_CHECKPOINT_H
#define NX_STORE_CHECKPOINT_H

#include <sqlite3.h>

/* The store's WAL checkpoints, run on a thread and connection of their own (checkpoint.c).
 * Used by the store thread only. */
struct nx_checkpointer;

/* Opens a second connection to the database at `path`, starts the thread, and makes `db` (the
 * store's connection, in WAL mode) ask it for a PASSIVE checkpoint after each commit that leaves
 * 1,000 WAL pages or more, instead of checkpointing inside the commit. NULL (logged) when that
 * fails: `db` keeps SQLite's own checkpoints. */
struct nx_checkpointer *nx_checkpointer_attach(sqlite3 *db, const char *path);
/* Undoes attach: lets a running checkpoint finish, stops the thread, closes its connection.
 * NULL is fine. */
void nx_checkpointer_detach(sqlite3 *db, struct nx_checkpointer *c);

#endif
