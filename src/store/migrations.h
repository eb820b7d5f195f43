#ifndef NX_STORE_MIGRATIONS_H
#define NX_STORE_MIGRATIONS_H

#include <stddef.h>
#include <sqlite3.h>

/* Numbered schema migrations. Each one runs once, in its own transaction, and is recorded in
 * schema_migrations(version, name, applied_at). Append new ones to the table in migrations.c;
 * never edit or renumber one that has shipped. */
struct nx_migration {
    int version;      /* strictly ascending, from 1 */
    const char *name; /* short, for logs and schema_migrations.name */
    const char *sql;  /* one or more statements */
};

/* The built-in table and its length. */
const struct nx_migration *nx_migrations(size_t *count);
/* Highest version this binary knows. */
int nx_migrations_latest(void);

/* Creates schema_migrations if missing, refuses a database newer than `list` knows, then applies
 * the missing migrations of `list` in order. *version: the schema version afterwards; *applied:
 * how many ran now (either may be NULL). On error, a message goes into err (may be NULL). Returns
 * 0, NX_ENOTSUP (database newer than this binary) or NX_EDB. */
int nx_migrations_apply(sqlite3 *db, const struct nx_migration *list, size_t count, int *version,
                        int *applied, char *err, size_t errlen);

/* The recorded schema version (0 for a database without migrations), or NX_EDB. */
int nx_migrations_current(sqlite3 *db, int *version);

#endif
