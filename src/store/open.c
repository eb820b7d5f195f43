/* Opening the database (store thread): the data directory and nexo.db with their modes, WAL,
 * the pragmas, then the migrations. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/error.h"
#include "core/log.h"
#include "store/migrations.h"
#include "store/store_internal.h"

/* mkdir -p, each directory it creates 0700 whatever the umask. An existing data directory that
 * others can read is left alone, with a warning. */
static int make_dir(struct nx_db_open *o, const char *dir)
{
    char *p = nx_strdup(dir);
    size_t len = strlen(p);
    struct stat st;
    int rc = 0;

    while (len > 1 && p[len - 1] == '/')
        p[--len] = '\0';
    for (size_t i = 1; i <= len; i++) {
        if (p[i] != '/' && p[i] != '\0')
            continue;
        char c = p[i];
        p[i] = '\0';
        if (mkdir(p, 0700) == 0) {
            if (chmod(p, 0700) < 0) {
                snprintf(o->err, o->err_size, "chmod %s: %s", p, strerror(errno));
                rc = NX_EIO;
                goto out;
            }
        } else if (errno != EEXIST || stat(p, &st) < 0 || !S_ISDIR(st.st_mode)) {
            snprintf(o->err, o->err_size, "cannot create data directory %s: %s", p,
                     errno == EEXIST ? "exists and is not a directory" : strerror(errno));
            rc = NX_EIO;
            goto out;
        }
        p[i] = c;
    }
    if (stat(p, &st) == 0 && (st.st_mode & 077))
        nx_warn("store", "data directory %s has mode %04o; 0700 is recommended (chmod 700 %s)", p,
                (unsigned)(st.st_mode & 07777), p);
out:
    free(p);
    return rc;
}

/* The database file is created here, not by SQLite, so that it is 0600 whatever the umask.
 * SQLite then creates -wal and -shm with the database's mode. */
static int make_db_file(struct nx_db_open *o)
{
    struct stat st;
    int fd = open(o->path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    int rc = NX_EIO;

    if (fd < 0) {
        snprintf(o->err, o->err_size, "cannot open %s: %s", o->path, strerror(errno));
        return NX_EIO;
    }
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        snprintf(o->err, o->err_size, "%s is not a regular file", o->path);
        goto out;
    }
    if ((st.st_mode & 07777) != 0600) {
        if (st.st_size)
            nx_info("store", "%s had mode %04o; setting 0600", o->path,
                    (unsigned)(st.st_mode & 07777));
        if (fchmod(fd, 0600) < 0) {
            snprintf(o->err, o->err_size, "chmod %s: %s", o->path, strerror(errno));
            goto out;
        }
    }
    rc = 0;
out:
    close(fd);
    return rc;
}

/* -wal and -shm left behind with another mode (a copy, an older tool) are set back to 0600. */
static void fix_side_file(const char *path, const char *suffix)
{
    char name[4096];
    struct stat st;

    if (snprintf(name, sizeof name, "%s%s", path, suffix) >= (int)sizeof name)
        return;
    if (stat(name, &st) == 0 && (st.st_mode & 07777) != 0600 && chmod(name, 0600) < 0)
        nx_warn("store", "chmod 0600 %s: %s", name, strerror(errno));
}

static int set_pragmas(struct nx_db_open *o)
{
    sqlite3_stmt *st = NULL;
    const char *mode;
    int rc = NX_EDB;

    if (sqlite3_prepare_v2(o->db, "PRAGMA journal_mode=WAL", -1, &st, NULL) != SQLITE_OK ||
        sqlite3_step(st) != SQLITE_ROW)
        goto fail;
    mode = (const char *)sqlite3_column_text(st, 0);
    if (!mode || strcmp(mode, "wal") != 0) {
        snprintf(o->err, o->err_size, "%s: cannot enable WAL (journal_mode is %s)", o->path,
                 mode ? mode : "unknown");
        goto out;
    }
    if (sqlite3_exec(o->db,
                     o->synchronous_full ? "PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON"
                                         : "PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON",
                     NULL, NULL, NULL) != SQLITE_OK)
        goto fail;
    rc = 0;
    goto out;
fail:
    snprintf(o->err, o->err_size, "%s: %s", o->path, sqlite3_errmsg(o->db));
out:
    sqlite3_finalize(st);
    return rc;
}

/* Reads only: the database as it is, no file created, no mode set, no migration. On a disk that
 * is read-only itself WAL's -shm cannot be made: then it is read as immutable (nothing writes it
 * meanwhile, as nothing can). */
static int open_read_only(struct nx_db_open *o)
{
    char uri[4200];

    for (int pass = 0; pass < 2; pass++) {
        sqlite3_stmt *st = NULL;
        snprintf(uri, sizeof uri, "file:%s%s", o->path, pass ? "?immutable=1" : "?mode=ro");
        if (sqlite3_open_v2(uri, &o->db, SQLITE_OPEN_READONLY | SQLITE_OPEN_URI | SQLITE_OPEN_NOMUTEX,
                            NULL) == SQLITE_OK &&
            sqlite3_prepare_v2(o->db, "SELECT count(*) FROM sqlite_master", -1, &st, NULL) == SQLITE_OK &&
            sqlite3_step(st) == SQLITE_ROW) { /* (a read that needs the WAL index) */
            sqlite3_finalize(st);
            sqlite3_busy_timeout(o->db, NX_STORE_BUSY_TIMEOUT_MS);
            return 0;
        }
        snprintf(o->err, o->err_size, "cannot open %s: %s", o->path,
                 o->db ? sqlite3_errmsg(o->db) : "out of memory");
        sqlite3_finalize(st);
        sqlite3_close_v2(o->db);
        o->db = NULL;
    }
    nx_error("store", "%s", o->err);
    return NX_EDB;
}

int nx_db_open(struct nx_db_open *o)
{
    size_t count;
    const struct nx_migration *list = nx_migrations(&count);
    int version = 0;
    int applied = 0;
    char msg[256];
    int rc;

    if (o->is_read_only)
        return open_read_only(o);
    if ((rc = make_dir(o, o->dir)) < 0 || (rc = make_db_file(o)) < 0)
        goto out;
    if (sqlite3_open_v2(o->path, &o->db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                        NULL) != SQLITE_OK) {
        snprintf(o->err, o->err_size, "cannot open %s: %s", o->path,
                 o->db ? sqlite3_errmsg(o->db) : "out of memory");
        rc = NX_EDB;
        goto out;
    }
    sqlite3_busy_timeout(o->db, NX_STORE_BUSY_TIMEOUT_MS);
    if ((rc = set_pragmas(o)) < 0)
        goto out;
    rc = nx_migrations_apply(o->db, list, count, &version, &applied, msg, sizeof msg);
    if (rc < 0) {
        snprintf(o->err, o->err_size, "%s: %s", o->path, msg);
        goto out;
    }
    fix_side_file(o->path, "-wal");
    fix_side_file(o->path, "-shm");
    o->version = version;
    o->applied = applied;
out:
    if (rc < 0) {
        nx_error("store", "%s", o->err);
        if (o->db)
            sqlite3_close_v2(o->db);
        o->db = NULL;
    }
    return rc;
}

bool nx_store_cli_has_data(const char *data_dir, const char *cmd)
{
    char path[4096];
    struct stat st;

    snprintf(path, sizeof path, "%s/nexo.db", data_dir);
    int rc = stat(path, &st);
    if (!(rc < 0 && errno == ENOENT) && !(rc == 0 && S_ISREG(st.st_mode) && st.st_size == 0))
        return true; /* (or it cannot be read: opening it says why) */
    if (cmd)
        fprintf(stderr, "nexo %s: nothing is recorded under %s (no nexo.db there): is --data right?\n",
                cmd, data_dir);
    return false;
}
