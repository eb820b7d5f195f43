#ifndef NX_STORE_STMT_CACHE_H
#define NX_STORE_STMT_CACHE_H

#include <sqlite3.h>

/* Statements a store module prepares once per connection and keeps (parsing SQL was most of a
 * small job's cost). A module keeps one cache per thread (_Thread_local): a connection is used
 * by one thread only. Each SQL text must start with NX_STORE_KEEP_SQL, so that the connection's
 * close (nx_store_db_close) finalizes the statements; reset each one after use
 * (nx_stmt_release) so that none is left running when a transaction ends. */
#define NX_STMT_CACHE_MAX 32

struct nx_stmt_cache {
    sqlite3 *db; /* the connection the statements belong to */
    sqlite3_stmt *st[NX_STMT_CACHE_MAX];
};

/* Statement `id` of `sql` (an array of at least id + 1 texts) on db, prepared on first use;
 * NULL (logged, with `who`) when it cannot be prepared. A connection the cache has not seen
 * starts it over: the old statements went with their connection. */
sqlite3_stmt *nx_stmt_cached(struct nx_stmt_cache *c, sqlite3 *db, const char *const *sql,
                             int id, const char *who);
/* Resets and unbinds a cached statement after use. NULL is fine. */
void nx_stmt_release(sqlite3_stmt *st);

#endif
