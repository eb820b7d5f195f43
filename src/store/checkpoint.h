#ifndef NX_STORE_CHECKPOINT_H
#define NX_STORE_CHECKPOINT_H

/* The store's WAL checkpoints, run on a thread and connection of their own (checkpoint.c).
 * Used by the store thread only. */
struct nx_checkpointer;

/* Opens a second connection to the database at `path` and starts the thread; NULL (logged) when
 * that fails, and the caller keeps SQLite's checkpoints inside its commits. */
struct nx_checkpointer *nx_checkpointer_start(const char *path);
/* Asks for a PASSIVE checkpoint soon; returns at once. Requests made while one is pending or
 * running fold into one. */
void nx_checkpointer_request(struct nx_checkpointer *c);
/* Lets a running checkpoint finish, stops the thread and closes its connection. */
void nx_checkpointer_stop(struct nx_checkpointer *c);

#endif
