/* The transcripts' full-text index (FTS5 table transcripts_fts, rowid = the message's id) is
 * derived data, kept on the store thread: the messages table is the record. The index covers
 * every message up to its highest rowid, and a catch-up indexes the messages after it, in id
 * order, at most 256 a run, each run all or nothing. An append asks for one at the end of its
 * batch (nx_store_soon, in a savepoint of its own), so:
 * - an index that fails (disk full, a corrupt FTS table) undoes only the catch-up: the history
 *   commits, the failure is logged and counted, and the rows are indexed once the index works
 *   again (the next appends ask, at most once a second, backing off to a minute);
 * - FTS5 still writes one segment per batch, as when the rows went in inside each job.
 * The daemon catches up at start, and nx_transcripts_search first (4,096 messages at most), so
 * it never misses what was appended. `nexo transcripts search` only reads: only the process that
 * appends has the configured redaction patterns. Inserts replace a row already there, so a
 * second catch-up of the same messages only repeats work. */
#include <jansson.h>
#include <stdbool.h>
#include <string.h>

#include "core/buf.h"
#include "core/clock.h"
#include "core/error.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/redact.h"
#include "store/history_internal.h"
#include "store/stmt_cache.h"
#include "store/store.h"

#define INDEX_ROWS_PER_RUN 256
#define INDEX_BACKOFF_MAX_MS 60000
#define INDEX_RUNS_PER_SEARCH 16 /* 4,096 messages: a search never holds the store long */

enum {
    S_LAST_ROW,
    S_SCANNED_GET,
    S_SCANNED_SET,
    S_UNINDEXED,
    S_INSERT,
    S_COUNT,
};

#define K NX_STORE_KEEP_SQL
static const char *const stmt_sql[S_COUNT] = {
    [S_LAST_ROW] = K "SELECT rowid FROM transcripts_fts ORDER BY rowid DESC LIMIT 1",
    [S_SCANNED_GET] = K "SELECT scanned_upto FROM transcripts_index WHERE id = 1",
    [S_SCANNED_SET] = K "INSERT INTO transcripts_index(id, scanned_upto) VALUES (1, ?1) "
                        "ON CONFLICT(id) DO UPDATE SET scanned_upto = excluded.scanned_upto",
    [S_UNINDEXED] = K "SELECT m.id, m.session_key, m.role, m.content, m.created_at, s.agent_id "
                      "FROM messages m LEFT JOIN sessions s ON s.key = m.session_key "
                      "WHERE m.id > ?1 ORDER BY m.id LIMIT ?2",
    [S_INSERT] = K "INSERT OR REPLACE INTO transcripts_fts(rowid, content, agent_id, session_key, role, ts) "
                   "VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
};
#undef K

static _Thread_local struct nx_stmt_cache cache;
/* After a failed catch-up, appends wait this much longer to ask (for the connection the cache
 * is of). */
static _Thread_local uint32_t backoff_ms;

static sqlite3_stmt *stmt(sqlite3 *db, int id)
{
    return nx_stmt_cached(&cache, db, stmt_sql, id, "transcripts");
}

static const char *col_text(sqlite3_stmt *st, int i)
{
    const char *s = (const char *)sqlite3_column_text(st, i);
    return s ? s : "";
}

/* 1 when the message got a row, 0 when it has no text, or NX_EDB. */
static int index_row(sqlite3 *db, sqlite3_stmt *row, struct nx_buf *text, struct nx_buf *red)
{
    const char *content = col_text(row, 3);
    json_t *c = json_loadb(content, (size_t)sqlite3_column_bytes(row, 3), JSON_DECODE_ANY, NULL);
    sqlite3_stmt *ins;
    int rc;

    if (!c) { /* not written by nexo; nothing to index rather than a stuck index */
        nx_warn("history", "message %lld of %s is not JSON; not indexed",
                (long long)sqlite3_column_int64(row, 0), col_text(row, 1));
        return 0;
    }
    nx_buf_reset(text);
    nx_buf_reset(red);
    nx_transcript_text(c, text);
    json_decref(c);
    if (!text->len)
        return 0;
    if (!(ins = stmt(db, S_INSERT)))
        return NX_EDB;
    nx_redact_append(red, text->data, text->len);
    sqlite3_bind_int64(ins, 1, sqlite3_column_int64(row, 0));
    sqlite3_bind_text(ins, 2, red->data, (int)red->len, SQLITE_STATIC);
    sqlite3_bind_text(ins, 3, col_text(row, 5), -1, SQLITE_STATIC);
    sqlite3_bind_text(ins, 4, col_text(row, 1), -1, SQLITE_STATIC);
    sqlite3_bind_text(ins, 5, col_text(row, 2), -1, SQLITE_STATIC);
    sqlite3_bind_int64(ins, 6, sqlite3_column_int64(row, 4));
    rc = sqlite3_step(ins) == SQLITE_DONE ? 1 : NX_EDB;
    nx_stmt_release(ins);
    return rc;
}

static int64_t read_id(sqlite3 *db, int which)
{
    sqlite3_stmt *st = stmt(db, which);
    int64_t id = 0;

    int rc;

    if (!st)
        return -1;
    if ((rc = sqlite3_step(st)) == SQLITE_ROW)
        id = sqlite3_column_int64(st, 0);
    else if (rc != SQLITE_DONE)
        id = -1; /* (not 0: that would read every message again) */
    nx_stmt_release(st);
    return id;
}

/* Indexes up to `limit` messages after the last one the index has read; *is_more when there may
 * be more. That is the index's last row, or, when the messages read after it have no text (a
 * tool call alone, an empty reply), the id kept in transcripts_index, which rolls back with the
 * batch as the rows do. */
static int index_some(sqlite3 *db, int limit, bool *is_more)
{
    sqlite3_stmt *rows = stmt(db, S_UNINDEXED);
    struct nx_buf text = NX_BUF_INIT;
    struct nx_buf red = NX_BUF_INIT;
    int64_t last_row = read_id(db, S_LAST_ROW);
    int64_t scanned = read_id(db, S_SCANNED_GET);
    int64_t last;
    int n = 0, src, rc = NX_EDB;

    *is_more = false;
    if (!rows || last_row < 0 || scanned < 0)
        return NX_EDB;
    last = last_row > scanned ? last_row : scanned;
    sqlite3_bind_int64(rows, 1, last);
    sqlite3_bind_int(rows, 2, limit);
    while ((src = sqlite3_step(rows)) == SQLITE_ROW) {
        int got = index_row(db, rows, &text, &red);
        if (got < 0)
            goto out;
        last = sqlite3_column_int64(rows, 0);
        if (got)
            last_row = last;
        n++;
    }
    if (src != SQLITE_DONE)
        goto out;
    nx_stmt_release(rows);
    if (last > last_row && last > scanned) {
        sqlite3_stmt *set = stmt(db, S_SCANNED_SET);
        if (!set)
            goto out;
        sqlite3_bind_int64(set, 1, last);
        src = sqlite3_step(set);
        nx_stmt_release(set);
        if (src != SQLITE_DONE)
            goto out;
    }
    *is_more = n == limit;
    rc = 0;
out:
    nx_stmt_release(rows);
    nx_buf_cleanup(&text);
    nx_buf_cleanup(&red);
    return rc;
}

static void count_failure(sqlite3 *db)
{
    nx_error("history", "transcript index: %s; the history is kept, and indexed once this works",
             sqlite3_errmsg(db));
    nx_counter_add(nx_metric_counter("nexo_transcript_index_errors_total",
                                     "Transcript index catch-ups that failed (the messages stay "
                                     "stored and are indexed by a later one).",
                                     NULL),
                   NULL, 1);
    backoff_ms = backoff_ms ? backoff_ms * 2 : 1000;
    if (backoff_ms > INDEX_BACKOFF_MAX_MS)
        backoff_ms = INDEX_BACKOFF_MAX_MS;
}

/* Work asked for later (nx_store_soon): one run, and another soon if more is left. */
static int index_run(sqlite3 *db, void *arg)
{
    bool is_more;
    int rc = index_some(db, INDEX_ROWS_PER_RUN, &is_more);

    (void)arg;
    if (rc < 0) {
        count_failure(db);
        return rc;
    }
    backoff_ms = 0;
    if (is_more)
        nx_store_soon(db, 0, index_run, NULL);
    return 0;
}

void nx_transcript_index_soon(sqlite3 *db)
{
    if (nx_store_soon(db, cache.db == db ? backoff_ms : 0, index_run, NULL) < 0)
        nx_warn("history", "transcript index: cannot ask for a catch-up; the next append will");
}

int nx_transcript_index_all(sqlite3 *db)
{
    bool is_more = true;

    for (int runs = 0; is_more; runs++) {
        if (runs == INDEX_RUNS_PER_SEARCH) { /* a long backlog: the rest in later batches */
            nx_transcript_index_soon(db);
            break;
        }
        if (index_some(db, INDEX_ROWS_PER_RUN, &is_more) < 0) {
            count_failure(db);
            return NX_EDB;
        }
    }
    backoff_ms = 0;
    return 0;
}
