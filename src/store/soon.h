#ifndef NX_STORE_SOON_H
#define NX_STORE_SOON_H

#include <sqlite3.h>
#include <stdbool.h>
#include <stdint.h>

#include "store/store.h"

/* The store's work asked for later (nx_store_soon): a few slots, store thread only. */
#define NX_SOON_SLOTS 4
struct nx_soon {
    nx_store_job_fn fn; /* NULL: an empty slot */
    void *arg;
    uint64_t due_ns;    /* monotonic */
};

/* Keeps a request in `set` (NX_SOON_SLOTS slots): asking again for (fn, arg) keeps the earlier
 * time. 0, or NX_EINVAL when every slot holds another request. */
int nx_soon_add(struct nx_soon *set, uint64_t due_ns, nx_store_job_fn fn, void *arg);
/* The earliest time asked for, or 0 when nothing waits. */
uint64_t nx_soon_next(const struct nx_soon *set);
/* Moves every request to `due_ns` at the earliest (the transaction could not begin). */
void nx_soon_postpone(struct nx_soon *set, uint64_t due_ns);
/* Inside an open transaction on db: runs the work that is due (all of it when `is_all`), each in
 * a savepoint of its own, so that a failure undoes its own changes only. The slots are emptied
 * first: work that asks again runs the next time. False when the transaction itself is gone. */
bool nx_soon_run(struct nx_soon *set, sqlite3 *db, bool is_all);

#endif
