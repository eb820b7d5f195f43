/* Statements kept per connection (stmt_cache.h). */
#include <string.h>

#include "core/alloc.h"
#include "core/log.h"
#include "store/stmt_cache.h"
#include "store/store.h"

sqlite3_stmt *nx_stmt_cached(struct nx_stmt_cache *c, sqlite3 *db, const char *const *sql,
                             int id, const char *who)
{
    NX_ASSERT(id >= 0 && id < NX_STMT_CACHE_MAX);
    NX_ASSERT(strncmp(sql[id], NX_STORE_KEEP_SQL, sizeof NX_STORE_KEEP_SQL - 1) == 0);
    if (c->db != db) {
        memset(c, 0, sizeof *c);
        c->db = db;
    }
    if (!c->st[id] && sqlite3_prepare_v3(db, sql[id], -1, SQLITE_PREPARE_PERSISTENT, &c->st[id],
                                         NULL) != SQLITE_OK) {
        nx_error(who, "prepare: %s", sqlite3_errmsg(db));
        c->st[id] = NULL;
    }
    return c->st[id];
}

void nx_stmt_release(sqlite3_stmt *st)
{
    if (st) {
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
    }
}
