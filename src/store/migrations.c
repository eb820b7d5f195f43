#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "core/clock.h"
#include "core/error.h"
#include "core/log.h"
#include "store/migrations.h"

/* The schema, one step at a time. Append only: a shipped migration never changes, because
 * databases in the field have already run it. Later issues add the ledger, queues, sessions,
 * FTS5 transcripts, memories... as new entries at the end. */
static const struct nx_migration migrations[] = {
    {1, "kv",
     "CREATE TABLE kv (\n"
     "    key TEXT PRIMARY KEY,\n"
     "    value BLOB,\n"
     "    updated_at INTEGER NOT NULL DEFAULT 0\n"
     ");"},
    {2, "sessions_transcripts",
     "CREATE TABLE sessions (\n"
     "    key TEXT PRIMARY KEY,\n"
     "    agent_id TEXT NOT NULL,\n"
     "    channel TEXT NOT NULL DEFAULT '',\n"
     "    peer TEXT NOT NULL DEFAULT '',\n"
     "    created_at INTEGER NOT NULL,\n"
     "    updated_at INTEGER NOT NULL,\n"
     "    message_count INTEGER NOT NULL DEFAULT 0,\n"
     "    input_tokens INTEGER NOT NULL DEFAULT 0,\n"
     "    output_tokens INTEGER NOT NULL DEFAULT 0\n"
     ");\n"
     "CREATE INDEX sessions_agent ON sessions(agent_id);\n"
     "CREATE TABLE messages (\n"
     "    id INTEGER PRIMARY KEY AUTOINCREMENT,\n"
     "    session_key TEXT NOT NULL REFERENCES sessions(key) ON DELETE CASCADE,\n"
     "    seq INTEGER NOT NULL,\n"
     "    role TEXT NOT NULL,\n"
     "    content TEXT NOT NULL,\n"
     "    created_at INTEGER NOT NULL,\n"
     "    UNIQUE(session_key, seq)\n"
     ");\n"
     "CREATE VIRTUAL TABLE transcripts_fts USING fts5(\n"
     "    content, agent_id UNINDEXED, session_key UNINDEXED, role UNINDEXED, ts UNINDEXED,\n"
     "    tokenize='unicode61 remove_diacritics 2'\n"
     ");"},
    {3, "bus_queue_dead_letters",
     "CREATE TABLE bus_queue (\n"
     "    id TEXT NOT NULL,\n"
     "    subject TEXT NOT NULL,\n"
     "    seq INTEGER NOT NULL,\n"
     "    envelope TEXT NOT NULL,\n"
     "    local TEXT,\n"
     "    enqueued_at INTEGER NOT NULL,\n"
     "    PRIMARY KEY (id, subject)\n"
     ");\n"
     "CREATE INDEX bus_queue_seq ON bus_queue(seq);\n"
     "CREATE TABLE dead_letters (\n"
     "    id TEXT NOT NULL,\n"
     "    consumer TEXT NOT NULL,\n"
     "    subject TEXT NOT NULL,\n"
     "    envelope TEXT NOT NULL,\n"
     "    attempts INTEGER NOT NULL,\n"
     "    last_error TEXT NOT NULL DEFAULT '',\n"
     "    failed_at INTEGER NOT NULL,\n"
     "    state TEXT NOT NULL DEFAULT 'dead',\n"
     "    PRIMARY KEY (id, consumer)\n"
     ");"},
    {4, "ledger",
     "CREATE TABLE ledger_inbound (\n"
     "    channel TEXT NOT NULL,\n"
     "    instance TEXT NOT NULL,\n"
     "    event_key TEXT NOT NULL,\n"
     "    id TEXT NOT NULL UNIQUE,\n"
     "    subject TEXT NOT NULL,\n"
     "    envelope TEXT NOT NULL,\n"
     "    state TEXT NOT NULL DEFAULT 'received',\n"
     "    agent_id TEXT NOT NULL DEFAULT '',\n"
     "    attempts INTEGER NOT NULL DEFAULT 0,\n"
     "    last_error TEXT NOT NULL DEFAULT '',\n"
     "    received_at INTEGER NOT NULL,\n"
     "    updated_at INTEGER NOT NULL,\n"
     "    seq INTEGER NOT NULL DEFAULT 0,\n"
     "    PRIMARY KEY (channel, instance, event_key)\n"
     ");\n"
     "CREATE INDEX ledger_inbound_state ON ledger_inbound(state, seq);\n"
     "CREATE TABLE ledger_outbound (\n"
     "    key TEXT PRIMARY KEY,\n"
     "    channel TEXT NOT NULL,\n"
     "    instance TEXT NOT NULL,\n"
     "    subject TEXT NOT NULL,\n"
     "    inbound_id TEXT NOT NULL DEFAULT '',\n"
     "    envelope TEXT NOT NULL,\n"
     "    state TEXT NOT NULL DEFAULT 'pending',\n"
     "    provider_id TEXT,\n"
     "    attempts INTEGER NOT NULL DEFAULT 0,\n"
     "    last_error TEXT NOT NULL DEFAULT '',\n"
     "    created_at INTEGER NOT NULL,\n"
     "    updated_at INTEGER NOT NULL,\n"
     "    sent_at INTEGER,\n"
     "    claim INTEGER NOT NULL DEFAULT 0,\n"
     "    seq INTEGER NOT NULL DEFAULT 0\n"
     ");\n"
     "CREATE INDEX ledger_outbound_state ON ledger_outbound(state, channel, instance, seq);\n"
     "CREATE INDEX ledger_outbound_provider ON ledger_outbound(channel, instance, provider_id);\n"
     "CREATE INDEX ledger_outbound_inbound ON ledger_outbound(inbound_id);"},
    {5, "channel_pairing",
     "CREATE TABLE channel_pairing (\n"
     "    channel TEXT NOT NULL,\n"
     "    instance TEXT NOT NULL,\n"
     "    sender TEXT NOT NULL,\n"
     "    chat TEXT NOT NULL DEFAULT '',\n"
     "    code TEXT,\n"
     "    state TEXT NOT NULL DEFAULT 'pending',\n"
     "    created_at INTEGER NOT NULL,\n"
     "    expires_at INTEGER NOT NULL DEFAULT 0,\n"
     "    approved_at INTEGER,\n"
     "    PRIMARY KEY (channel, instance, sender)\n"
     ");\n"
     "CREATE UNIQUE INDEX channel_pairing_code ON channel_pairing(code) WHERE code IS NOT NULL;"},
    /* a reply sent in several steps (chunks): how many were delivered, and the first one's id,
     * so a send resumed after a crash starts at the first step not delivered */
    {6, "ledger_outbound_progress",
     "ALTER TABLE ledger_outbound ADD COLUMN steps_sent INTEGER NOT NULL DEFAULT 0;\n"
     "ALTER TABLE ledger_outbound ADD COLUMN progress_id TEXT;"},
    /* the transcript index catches up with the messages (transcript_index.c): the last message
     * it read when those after its last row had no text */
    {7, "transcripts_index",
     "CREATE TABLE transcripts_index (\n"
     "    id INTEGER PRIMARY KEY CHECK (id = 1),\n"
     "    scanned_upto INTEGER NOT NULL\n"
     ");"},
};

const struct nx_migration *nx_migrations(size_t *count)
{
    *count = sizeof migrations / sizeof migrations[0];
    return migrations;
}

int nx_migrations_latest(void)
{
    size_t n = sizeof migrations / sizeof migrations[0];
    return n ? migrations[n - 1].version : 0;
}

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (!err || !errlen)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

int nx_migrations_current(sqlite3 *db, int *version)
{
    sqlite3_stmt *st = NULL;
    int rc = NX_EDB;

    if (sqlite3_prepare_v2(db, "SELECT coalesce(max(version), 0) FROM schema_migrations", -1, &st,
                           NULL) != SQLITE_OK)
        goto out;
    if (sqlite3_step(st) != SQLITE_ROW)
        goto out;
    *version = sqlite3_column_int(st, 0);
    rc = 0;
out:
    sqlite3_finalize(st);
    return rc;
}

static int record(sqlite3 *db, const struct nx_migration *m)
{
    sqlite3_stmt *st = NULL;
    int rc = NX_EDB;

    if (sqlite3_prepare_v2(db, "INSERT INTO schema_migrations(version, name, applied_at) "
                               "VALUES (?1, ?2, ?3)",
                           -1, &st, NULL) != SQLITE_OK)
        goto out;
    sqlite3_bind_int(st, 1, m->version);
    sqlite3_bind_text(st, 2, m->name, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)(nx_wall_ms() / 1000));
    if (sqlite3_step(st) == SQLITE_DONE)
        rc = 0;
out:
    sqlite3_finalize(st);
    return rc;
}

/* One migration in its own transaction. The version is checked again under the write lock so
 * that two processes opening the same fresh database do not both apply it. */
static int apply_one(sqlite3 *db, const struct nx_migration *m, bool *ran, char *err,
                     size_t errlen)
{
    int cur = 0;
    int rc = NX_EDB;
    bool in_tx = false;

    *ran = false;
    if (sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
        goto fail;
    in_tx = true;
    if (nx_migrations_current(db, &cur) < 0)
        goto fail;
    if (cur < m->version) {
        if (sqlite3_exec(db, m->sql, NULL, NULL, NULL) != SQLITE_OK || record(db, m) < 0)
            goto fail;
        *ran = true;
    }
    if (sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        goto fail;
    return 0;
fail:
    set_err(err, errlen, "migration %d (%s) failed: %s", m->version, m->name, sqlite3_errmsg(db));
    if (in_tx && !sqlite3_get_autocommit(db))
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    *ran = false;
    return rc;
}

int nx_migrations_apply(sqlite3 *db, const struct nx_migration *list, size_t count, int *version,
                        int *applied, char *err, size_t errlen)
{
    int cur = 0;
    int n = 0;
    int latest = count ? list[count - 1].version : 0;
    int rc;

    if (sqlite3_exec(db,
                     "CREATE TABLE IF NOT EXISTS schema_migrations (\n"
                     "    version INTEGER PRIMARY KEY,\n"
                     "    name TEXT,\n"
                     "    applied_at INTEGER\n"
                     ")",
                     NULL, NULL, NULL) != SQLITE_OK) {
        set_err(err, errlen, "cannot create schema_migrations: %s", sqlite3_errmsg(db));
        rc = NX_EDB;
        goto out;
    }
    if ((rc = nx_migrations_current(db, &cur)) < 0) {
        set_err(err, errlen, "cannot read schema version: %s", sqlite3_errmsg(db));
        goto out;
    }
    if (cur > latest) {
        set_err(err, errlen,
                "database schema version %d is newer than this nexo knows (%d): upgrade nexo, "
                "or restore a backup made by this version",
                cur, latest);
        rc = NX_ENOTSUP;
        goto out;
    }
    for (size_t i = 0; i < count; i++) {
        bool ran;

        if (list[i].version <= cur)
            continue;
        if ((rc = apply_one(db, &list[i], &ran, err, errlen)) < 0)
            goto out;
        if (ran) {
            n++;
            nx_info("store", "applied migration %d (%s)", list[i].version, list[i].name);
        }
        cur = list[i].version;
    }
    rc = 0;
out:
    if (version)
        *version = cur;
    if (applied)
        *applied = n;
    return rc;
}
