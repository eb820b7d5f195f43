/* Work asked for later (nx_store_soon): kept in a few slots on the store thread, run at the end
 * of a batch or in a transaction of its own (store.c decides when), done once that commits. */
#include "store/soon.h"

#include "core/clock.h"
#include "core/error.h"
#include "core/log.h"

#define RETRY_NS 1000000000u

int nx_soon_add(struct nx_soon *set, uint64_t due_ns, nx_store_job_fn fn, void *arg)
{
    struct nx_soon *free_slot = NULL;

    for (size_t i = 0; i < NX_SOON_SLOTS; i++) {
        struct nx_soon *w = &set[i];
        if (w->fn == fn && w->arg == arg) {
            if (w->has_run || due_ns < w->due_ns)
                w->due_ns = due_ns;
            w->has_run = false;
            return 0;
        }
        if (!w->fn && !free_slot)
            free_slot = w;
    }
    if (!free_slot)
        return NX_EINVAL;
    *free_slot = (struct nx_soon){.fn = fn, .arg = arg, .due_ns = due_ns};
    return 0;
}

uint64_t nx_soon_next(const struct nx_soon *set)
{
    uint64_t next = 0;

    for (size_t i = 0; i < NX_SOON_SLOTS; i++)
        if (set[i].fn && !set[i].has_run && (!next || set[i].due_ns < next))
            next = set[i].due_ns;
    return next;
}

static int exec(sqlite3 *db, const char *sql)
{
    return sqlite3_exec(db, sql, NULL, NULL, NULL) == SQLITE_OK ? 0 : NX_EDB;
}

bool nx_soon_run(struct nx_soon *set, sqlite3 *db, bool is_all)
{
    size_t due[NX_SOON_SLOTS];
    uint64_t now = nx_mono_ns();
    size_t n = 0;

    for (size_t i = 0; i < NX_SOON_SLOTS; i++) /* the work due now; what it asks for waits */
        if (set[i].fn && !set[i].has_run && (is_all || set[i].due_ns <= now))
            due[n++] = i;
    for (size_t k = 0; k < n; k++) {
        struct nx_soon w = set[due[k]];
        int rc;

        if (exec(db, "SAVEPOINT nx_soon") < 0) { /* this and the rest wait a second */
            for (size_t r = k; r < n; r++)
                set[due[r]].due_ns = now + RETRY_NS;
            return !sqlite3_get_autocommit(db);
        }
        set[due[k]].has_run = true;
        rc = w.fn(db, w.arg);
        if (sqlite3_get_autocommit(db)) {
            nx_error("store", "the transaction ended inside later work (%s)", sqlite3_errmsg(db));
            return false;
        }
        if (rc < 0) {
            nx_warn("store", "later write work failed (%s); its own changes are undone",
                    sqlite3_errcode(db) != SQLITE_OK ? sqlite3_errmsg(db) : "its own error");
            if (exec(db, "ROLLBACK TO nx_soon") < 0)
                return false;
        }
        if (exec(db, "RELEASE nx_soon") < 0)
            return false;
    }
    return true;
}

void nx_soon_end(struct nx_soon *set, bool is_committed, uint64_t now_ns)
{
    for (size_t i = 0; i < NX_SOON_SLOTS; i++) {
        struct nx_soon *w = &set[i];
        if (!w->fn)
            continue;
        if (w->has_run && is_committed) {
            w->fn = NULL;
            continue;
        }
        w->has_run = false;
        if (!is_committed && w->due_ns < now_ns + RETRY_NS)
            w->due_ns = now_ns + RETRY_NS;
    }
}
