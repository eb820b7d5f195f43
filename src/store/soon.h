#ifndef NX_STORE_SOON_H
#define NX_STORE_SOON_H

#include <sqlite3.h>
#include <stdbool.h>
#include <stdint.h>

#include "store/store.h"

/* The store's work asked for later (nx_store_soon): a few slots, store thread only. A request
 * waits until its time, runs inside a transaction, and is done only once that transaction
 * commits: if it does not, the request waits again, a second at least (no busy loop on a disk
 * that keeps failing). */
#define NX_SOON_SLOTS 4
struct nx_soon {
    nx_store_job_fn fn; /* NULL: an empty slot */
    void *arg;
    uint64_t due_ns;    /* monotonic */
    bool has_run;       /* ran in the open transaction; done when it commits */
};

/* Keeps a request in `set` (NX_SOON_SLOTS slots): asking again for (fn, arg) keeps the earlier
 * time (and makes work that ran in the open transaction wait again). 0, or NX_EINVAL when every
 * slot holds another request. */
int nx_soon_add(struct nx_soon *set, uint64_t due_ns, nx_store_job_fn fn, void *arg);
/* The earliest time a waiting request asked for, or 0 when none waits. */
uint64_t nx_soon_next(const struct nx_soon *set);
/* Inside an open transaction on db: runs the waiting work that is due (all of it when `is_all`),
 * each once, in a savepoint of its own, so that a failure undoes its own changes only. False when
 * the transaction itself is gone. */
bool nx_soon_run(struct nx_soon *set, sqlite3 *db, bool is_all);
/* After the transaction: work that ran is done if it committed, else it waits again; when it
 * did not commit (or could not begin), every request waits until `now_ns` + 1 s at least. */
void nx_soon_end(struct nx_soon *set, bool is_committed, uint64_t now_ns);

#endif
