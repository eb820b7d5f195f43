#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/error.h"
#include "core/log.h"
#include "store/ledger.h"
#include "store/stmt_cache.h"

/* The ledger's jobs on the store thread. Statements are prepared once per connection (the store
 * thread owns exactly one, so the cache is thread-local) and reset after each use, so none is
 * left running when the batch commits; the store finalizes leftovers before it closes. */

enum stmt_id {
    S_IN_RECORD,
    S_IN_CLAIM,
    S_IN_INSERT_ROUTED,
    S_IN_ANSWER,
    S_IN_FAIL,
    S_IN_ATTEMPTS,
    S_IN_DEAD_LETTER,
    S_OUT_INSERT,
    S_OUT_ANSWERS,
    S_OUT_CLAIM,
    S_OUT_UNCLAIM,
    S_OUT_SENT,
    S_OUT_STATUS,
    S_OUT_EARLY,
    S_OUT_EARLY_TAKE,
    S_OUT_EARLY_DROP,
    S_OUT_HAS_PID,
    S_OUT_STEPS,
    S_COUNT,
};

#define K NX_STORE_KEEP_SQL
static const char *const stmt_sql[S_COUNT] = {
    [S_IN_RECORD] = K "INSERT OR IGNORE INTO ledger_inbound(channel, instance, event_key, id, "
        "subject, envelope, state, received_at, updated_at, seq) "
        "VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'received', ?7, ?7, ?7)",
    [S_IN_CLAIM] = K "UPDATE ledger_inbound SET state = 'routed', agent_id = ?2, updated_at = ?3, "
        "attempts = CASE state WHEN 'dead' THEN 0 ELSE attempts END "
        "WHERE id = ?1 AND state IN ('received', 'dead')",
    [S_IN_INSERT_ROUTED] = K "INSERT OR IGNORE INTO ledger_inbound(channel, instance, event_key, id, "
        "subject, envelope, state, agent_id, received_at, updated_at, seq) "
        "VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'routed', ?7, ?8, ?8, ?8)",
    [S_IN_ANSWER] = K "UPDATE ledger_inbound SET state = ?2, updated_at = ?3 WHERE id = ?1",
    [S_IN_FAIL] = K "UPDATE ledger_inbound SET attempts = attempts + 1, last_error = ?2, "
        "updated_at = ?3, "
        "state = CASE WHEN ?4 > 0 AND attempts + 1 >= ?4 THEN 'dead' ELSE 'received' END "
        "WHERE id = ?1 AND state IN ('received', 'routed')",
    [S_IN_ATTEMPTS] = K "SELECT attempts, subject, envelope, state FROM ledger_inbound WHERE id = ?1",
    [S_IN_DEAD_LETTER] = K "INSERT OR REPLACE INTO dead_letters(id, consumer, subject, envelope, "
        "attempts, last_error, failed_at, state) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'dead')",
    [S_OUT_INSERT] = K "INSERT OR IGNORE INTO ledger_outbound(key, channel, instance, subject, "
        "inbound_id, envelope, state, created_at, updated_at, seq) "
        "VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', ?7, ?7, ?7)",
    /* a reply seen by the channel answers its event here too (routed by another process) */
    [S_OUT_ANSWERS] = K "UPDATE ledger_inbound SET state = 'answered', updated_at = ?2 "
        "WHERE id = ?1 AND state IN ('received', 'routed')",
    [S_OUT_CLAIM] = K "UPDATE ledger_outbound SET claim = ?2, attempts = attempts + 1, updated_at = ?3 "
        "WHERE key = ?1 AND state = 'pending' AND claim != ?2",
    [S_OUT_UNCLAIM] = K "UPDATE ledger_outbound SET claim = 0, updated_at = ?2 "
        "WHERE key = ?1 AND state = 'pending'",
    /* a reply sent in steps is known by its first step's id, recorded with the progress */
    [S_OUT_SENT] = K "UPDATE ledger_outbound SET state = ?2, "
        "provider_id = coalesce(progress_id, ?3, provider_id), "
        "last_error = ?4, updated_at = ?5, sent_at = CASE WHEN ?2 = 'sent' THEN ?5 "
        "ELSE sent_at END WHERE key = ?1 AND state IN ('pending', 'sent', 'failed')",
    /* a delivery state only moves forward: pending < sent < delivered < read; failed last */
    [S_OUT_STATUS] = K "UPDATE ledger_outbound SET state = ?4, last_error = ?5, updated_at = ?6 "
        "WHERE channel = ?1 AND instance = ?2 AND provider_id = ?3 AND "
        "(CASE state WHEN 'pending' THEN 0 WHEN 'sent' THEN 1 WHEN 'delivered' THEN 2 "
        "WHEN 'read' THEN 3 ELSE 4 END) < "
        "(CASE ?4 WHEN 'delivered' THEN 2 WHEN 'read' THEN 3 ELSE 4 END)",
    /* a status for a provider id no reply has yet: kept under a key of its own until the send
     * is recorded (nx_ledger_outbound_sent merges it), a later status moving it forward */
    [S_OUT_EARLY] = K "INSERT INTO ledger_outbound(key, channel, instance, subject, envelope, state, "
        "provider_id, last_error, created_at, updated_at) VALUES ('early:' || ?1 || ':' || ?2 || ':' || ?3, "
        "?1, ?2, '', '', ?4, ?3, ?5, ?6, ?6) ON CONFLICT(key) DO UPDATE SET state = excluded.state, "
        "last_error = excluded.last_error, updated_at = excluded.updated_at WHERE "
        "(CASE state WHEN 'delivered' THEN 2 WHEN 'read' THEN 3 ELSE 4 END) < "
        "(CASE excluded.state WHEN 'delivered' THEN 2 WHEN 'read' THEN 3 ELSE 4 END)",
    [S_OUT_EARLY_TAKE] = K "SELECT e.state, e.last_error, o.channel, o.instance FROM ledger_outbound o "
        "JOIN ledger_outbound e ON e.key = 'early:' || o.channel || ':' || o.instance || ':' || ?2 "
        "WHERE o.key = ?1",
    [S_OUT_HAS_PID] = K "SELECT 1 FROM ledger_outbound WHERE channel = ?1 AND instance = ?2 AND "
        "provider_id = ?3 AND key NOT LIKE 'early:%' LIMIT 1",
    [S_OUT_EARLY_DROP] = K "DELETE FROM ledger_outbound WHERE key = 'early:' || ?1 || ':' || ?2 || ':' || ?3",
    [S_OUT_STEPS] = K "SELECT steps_sent FROM ledger_outbound WHERE key = ?1",
};
#undef K

static _Thread_local struct nx_stmt_cache cache;

/* The cached statement, reset and unbound; NULL when it cannot be prepared. */
static sqlite3_stmt *stmt(sqlite3 *db, enum stmt_id id)
{
    return nx_stmt_cached(&cache, db, stmt_sql, id, "ledger");
}

/* Binds text, NULL as SQL NULL. */
static void bind_text(sqlite3_stmt *st, int i, const char *s)
{
    if (s)
        sqlite3_bind_text(st, i, s, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, i);
}

/* Runs a statement that returns no row; *changes gets the rows changed. */
static int step_done(sqlite3 *db, sqlite3_stmt *st, int *changes)
{
    int rc = sqlite3_step(st) == SQLITE_DONE ? 0 : NX_EDB;
    if (rc < 0)
        nx_error("ledger", "%s", sqlite3_errmsg(db));
    if (changes)
        *changes = rc == 0 ? sqlite3_changes(db) : 0;
    nx_stmt_release(st);
    return rc;
}

/* ---- jobs ---- */

struct ljob {
    char *s[8];                /* copied strings, meaning per job */
    struct nx_ledger_reply *replies;
    size_t nreplies;
    int64_t num;               /* max_attempts, status, limit */
    uint64_t boot;
    int64_t since;             /* unanswered: received_at cut-off (unix ms) */
    bool flag;
    int64_t result;
    struct nx_ledger_row *rows;
    size_t nrows;
    nx_ledger_done_fn done;
    nx_ledger_rows_fn rows_done;
    void *arg;
};

static char *dup_or_null(const char *s)
{
    return s ? nx_strdup(s) : NULL;
}

static void rows_free(struct nx_ledger_row *v, size_t n)
{
    for (size_t i = 0; v && i < n; i++) {
        free(v[i].key);
        free(v[i].channel);
        free(v[i].instance);
        free(v[i].subject);
        free(v[i].envelope);
        free(v[i].state);
        free(v[i].provider_id);
        free(v[i].last_error);
    }
    free(v);
}

static void ljob_free(struct ljob *j)
{
    for (size_t i = 0; i < NX_ARRAY_LEN(j->s); i++)
        free(j->s[i]);
    for (size_t i = 0; i < j->nreplies; i++) {
        free((char *)j->replies[i].key);
        free((char *)j->replies[i].channel);
        free((char *)j->replies[i].instance);
        free((char *)j->replies[i].subject);
        free((char *)j->replies[i].envelope);
    }
    free(j->replies);
    rows_free(j->rows, j->nrows);
    free(j);
}

static void on_job_done(int rc, void *arg)
{
    struct ljob *j = arg;
    if (j->done)
        j->done(rc, rc < 0 ? 0 : j->result, j->arg);
    else if (j->rows_done)
        j->rows_done(rc, rc < 0 ? NULL : j->rows, rc < 0 ? 0 : j->nrows, j->arg);
    ljob_free(j);
}

static struct ljob *ljob_new(nx_ledger_done_fn done, void *arg)
{
    struct ljob *j = nx_calloc(1, sizeof *j);
    j->done = done;
    j->arg = arg;
    return j;
}

static int64_t now_ms(void)
{
    return (int64_t)nx_wall_ms();
}

static char *col_dup(sqlite3_stmt *st, int i)
{
    const unsigned char *t = sqlite3_column_text(st, i);
    return t ? nx_strdup((const char *)t) : NULL;
}

/* ---- inbound ---- */

static void event_copy(struct ljob *j, const struct nx_ledger_event *ev)
{
    j->s[0] = dup_or_null(ev->channel);
    j->s[1] = dup_or_null(ev->instance);
    j->s[2] = dup_or_null(ev->event_key ? ev->event_key : ev->id);
    j->s[3] = dup_or_null(ev->id);
    j->s[4] = dup_or_null(ev->subject);
    j->s[5] = dup_or_null(ev->envelope);
}

static void bind_event(sqlite3_stmt *st, struct ljob *j)
{
    bind_text(st, 1, j->s[0] ? j->s[0] : "");
    bind_text(st, 2, j->s[1] ? j->s[1] : "");
    bind_text(st, 3, j->s[2]);
    bind_text(st, 4, j->s[3]);
    bind_text(st, 5, j->s[4] ? j->s[4] : "");
    bind_text(st, 6, j->s[5] ? j->s[5] : "{}");
}

static int record_job(sqlite3 *db, void *arg)
{
    struct ljob *j = arg;
    sqlite3_stmt *st = stmt(db, S_IN_RECORD);
    int changes = 0, rc;
    if (!st)
        return NX_EDB;
    bind_event(st, j);
    sqlite3_bind_int64(st, 7, now_ms());
    rc = step_done(db, st, &changes);
    j->result = changes > 0;
    return rc;
}

void nx_ledger_inbound_record(struct nx_store *s, const struct nx_ledger_event *ev,
                              nx_ledger_done_fn done, void *arg)
{
    struct ljob *j = ljob_new(done, arg);
    NX_ASSERT(ev->id);
    event_copy(j, ev);
    nx_store_write(s, record_job, on_job_done, j);
}

static int claim_job(sqlite3 *db, void *arg)
{
    struct ljob *j = arg;
    sqlite3_stmt *st = stmt(db, S_IN_CLAIM);
    int changes = 0, rc;
    if (!st)
        return NX_EDB;
    bind_text(st, 1, j->s[3]);
    bind_text(st, 2, j->s[6] ? j->s[6] : "");
    sqlite3_bind_int64(st, 3, now_ms());
    if ((rc = step_done(db, st, &changes)) < 0 || changes > 0) {
        j->result = changes > 0;
        return rc;
    }
    /* unknown to the ledger: record it as routed now */
    if (!(st = stmt(db, S_IN_INSERT_ROUTED)))
        return NX_EDB;
    bind_event(st, j);
    bind_text(st, 7, j->s[6] ? j->s[6] : "");
    sqlite3_bind_int64(st, 8, now_ms());
    rc = step_done(db, st, &changes);
    j->result = changes > 0;
    return rc;
}

void nx_ledger_inbound_claim(struct nx_store *s, const struct nx_ledger_event *ev,
                             const char *agent_id, nx_ledger_done_fn done, void *arg)
{
    struct ljob *j = ljob_new(done, arg);
    NX_ASSERT(ev->id);
    event_copy(j, ev);
    j->s[6] = dup_or_null(agent_id);
    nx_store_write(s, claim_job, on_job_done, j);
}

static int answer_job(sqlite3 *db, void *arg)
{
    struct ljob *j = arg;
    sqlite3_stmt *st;
    int64_t now = now_ms();
    int changes = 0, rc = 0;

    for (size_t i = 0; i < j->nreplies && rc == 0; i++) {
        const struct nx_ledger_reply *r = &j->replies[i];
        if (!(st = stmt(db, S_OUT_INSERT)))
            return NX_EDB;
        bind_text(st, 1, r->key);
        bind_text(st, 2, r->channel ? r->channel : "");
        bind_text(st, 3, r->instance ? r->instance : "");
        bind_text(st, 4, r->subject ? r->subject : "");
        bind_text(st, 5, j->s[0]);
        bind_text(st, 6, r->envelope ? r->envelope : "{}");
        sqlite3_bind_int64(st, 7, now);
        rc = step_done(db, st, &changes);
        j->result += changes;
    }
    if (rc < 0 || !(st = stmt(db, S_IN_ANSWER)))
        return NX_EDB;
    bind_text(st, 1, j->s[0]);
    bind_text(st, 2, j->flag ? "failed" : "answered");
    sqlite3_bind_int64(st, 3, now);
    return step_done(db, st, NULL);
}

static void reply_copy(struct nx_ledger_reply *dst, const struct nx_ledger_reply *r)
{
    dst->key = dup_or_null(r->key);
    dst->channel = dup_or_null(r->channel);
    dst->instance = dup_or_null(r->instance);
    dst->subject = dup_or_null(r->subject);
    dst->envelope = dup_or_null(r->envelope);
}

void nx_ledger_inbound_answer(struct nx_store *s, const char *id, const struct nx_ledger_reply *v,
                              size_t n, bool is_failed, nx_ledger_done_fn done, void *arg)
{
    struct ljob *j = ljob_new(done, arg);
    j->s[0] = nx_strdup(id);
    j->flag = is_failed;
    if (n) {
        j->replies = nx_calloc(n, sizeof *j->replies);
        for (size_t i = 0; i < n; i++) {
            NX_ASSERT(v[i].key);
            reply_copy(&j->replies[i], &v[i]);
        }
        j->nreplies = n;
    }
    nx_store_write(s, answer_job, on_job_done, j);
}

static int fail_job(sqlite3 *db, void *arg)
{
    struct ljob *j = arg;
    sqlite3_stmt *st = stmt(db, S_IN_FAIL);
    int64_t now = now_ms();
    int rc;
    if (!st)
        return NX_EDB;
    bind_text(st, 1, j->s[0]);
    bind_text(st, 2, j->s[1] ? j->s[1] : "");
    sqlite3_bind_int64(st, 3, now);
    sqlite3_bind_int64(st, 4, j->num);
    if ((rc = step_done(db, st, NULL)) < 0 || !(st = stmt(db, S_IN_ATTEMPTS)))
        return NX_EDB;
    bind_text(st, 1, j->s[0]);
    if (sqlite3_step(st) != SQLITE_ROW) {
        nx_stmt_release(st);
        return NX_ENOENT;
    }
    j->result = sqlite3_column_int64(st, 0);
    char *subject = col_dup(st, 1), *envelope = col_dup(st, 2), *state = col_dup(st, 3);
    nx_stmt_release(st);
    if (state && strcmp(state, "dead") == 0 && j->s[2]) {
        if ((st = stmt(db, S_IN_DEAD_LETTER))) {
            bind_text(st, 1, j->s[0]);
            bind_text(st, 2, j->s[2]);
            bind_text(st, 3, subject ? subject : "");
            bind_text(st, 4, envelope ? envelope : "{}");
            sqlite3_bind_int64(st, 5, j->result);
            bind_text(st, 6, j->s[1] ? j->s[1] : "");
            sqlite3_bind_int64(st, 7, now);
            rc = step_done(db, st, NULL);
        } else {
            rc = NX_EDB;
        }
    }
    free(subject);
    free(envelope);
    free(state);
    return rc;
}

void nx_ledger_inbound_fail(struct nx_store *s, const char *id, const char *error,
                            uint32_t max_attempts, const char *consumer, nx_ledger_done_fn done,
                            void *arg)
{
    struct ljob *j = ljob_new(done, arg);
    j->s[0] = nx_strdup(id);
    j->s[1] = dup_or_null(error);
    j->s[2] = dup_or_null(consumer);
    j->num = max_attempts;
    nx_store_write(s, fail_job, on_job_done, j);
}

/* ---- listing ---- */

/* Appends every row of a SELECT of (key, channel, instance, subject, envelope, state,
 * provider_id, last_error, attempts[, steps_sent]). */
static int collect(sqlite3 *db, sqlite3_stmt *st, struct ljob *j)
{
    size_t cap = j->nrows;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (j->nrows == cap) {
            cap = cap ? cap * 2 : 16;
            j->rows = nx_realloc(j->rows, cap * sizeof *j->rows);
        }
        struct nx_ledger_row *r = &j->rows[j->nrows++];
        r->key = col_dup(st, 0);
        r->channel = col_dup(st, 1);
        r->instance = col_dup(st, 2);
        r->subject = col_dup(st, 3);
        r->envelope = col_dup(st, 4);
        r->state = col_dup(st, 5);
        r->provider_id = col_dup(st, 6);
        r->last_error = col_dup(st, 7);
        r->attempts = (uint32_t)sqlite3_column_int64(st, 8);
        r->steps_sent = sqlite3_column_count(st) > 9 ? (uint32_t)sqlite3_column_int64(st, 9) : 0;
    }
    if (rc != SQLITE_DONE)
        nx_error("ledger", "%s", sqlite3_errmsg(db));
    return rc == SQLITE_DONE ? 0 : NX_EDB;
}

static struct ljob *rows_job_new(nx_ledger_rows_fn done, void *arg)
{
    struct ljob *j = nx_calloc(1, sizeof *j);
    j->rows_done = done;
    j->arg = arg;
    return j;
}

static int unanswered_job(sqlite3 *db, void *arg)
{
    struct ljob *j = arg;
    sqlite3_stmt *st = NULL;
    int rc = NX_EDB;
    if (sqlite3_exec(db, "UPDATE ledger_inbound SET state = 'received' WHERE state = 'routed'", NULL,
                     NULL, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(db, "SELECT id, channel, instance, subject, envelope, state, NULL, "
                               "last_error, attempts FROM ledger_inbound WHERE state = 'received' "
                               "AND received_at >= ?2 ORDER BY seq, rowid LIMIT ?1", -1, &st,
                           NULL) != SQLITE_OK) {
        nx_error("ledger", "%s", sqlite3_errmsg(db));
        goto out;
    }
    sqlite3_bind_int64(st, 1, j->num > 0 ? j->num : -1);
    sqlite3_bind_int64(st, 2, j->since);
    rc = collect(db, st, j);
out:
    sqlite3_finalize(st);
    return rc;
}

void nx_ledger_inbound_unanswered(struct nx_store *s, size_t limit, nx_ledger_rows_fn done,
                                  void *arg)
{
    nx_ledger_inbound_unanswered_since(s, 0, limit, done, arg);
}

void nx_ledger_inbound_unanswered_since(struct nx_store *s, int64_t since_ms, size_t limit,
                                        nx_ledger_rows_fn done, void *arg)
{
    struct ljob *j = rows_job_new(done, arg);
    j->num = (int64_t)limit;
    j->since = since_ms;
    nx_store_write(s, unanswered_job, on_job_done, j);
}

static int get_job(sqlite3 *db, void *arg)
{
    struct ljob *j = arg;
    sqlite3_stmt *st = NULL;
    int rc = NX_EDB;
    const char *sql = j->flag
        ? "SELECT key, channel, instance, subject, envelope, state, provider_id, last_error, "
          "attempts, steps_sent FROM ledger_outbound WHERE key = ?1"
        : "SELECT id, channel, instance, subject, envelope, state, NULL, last_error, attempts "
          "FROM ledger_inbound WHERE id = ?1";
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK) {
        bind_text(st, 1, j->s[0]);
        rc = collect(db, st, j);
    }
    sqlite3_finalize(st);
    return rc;
}

void nx_ledger_inbound_get(struct nx_store *s, const char *id, nx_ledger_rows_fn done, void *arg)
{
    struct ljob *j = rows_job_new(done, arg);
    j->s[0] = nx_strdup(id);
    nx_store_read(s, get_job, on_job_done, j);
}

void nx_ledger_outbound_get(struct nx_store *s, const char *key, nx_ledger_rows_fn done, void *arg)
{
    struct ljob *j = rows_job_new(done, arg);
    j->s[0] = nx_strdup(key);
    j->flag = true;
    nx_store_read(s, get_job, on_job_done, j);
}

static int count_job(sqlite3 *db, void *arg)
{
    struct ljob *j = arg;
    sqlite3_stmt *st = NULL;
    int rc = NX_EDB;
    const char *sql = j->flag ? "SELECT count(*) FROM ledger_outbound WHERE state = ?1"
                              : "SELECT count(*) FROM ledger_inbound WHERE state = ?1";
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK) {
        bind_text(st, 1, j->s[0]);
        if (sqlite3_step(st) == SQLITE_ROW) {
            j->result = sqlite3_column_int64(st, 0);
            rc = 0;
        }
    }
    sqlite3_finalize(st);
    return rc;
}

void nx_ledger_count(struct nx_store *s, const char *table, const char *state,
                     nx_ledger_done_fn done, void *arg)
{
    struct ljob *j = ljob_new(done, arg);
    j->s[0] = nx_strdup(state);
    j->flag = strcmp(table, "outbound") == 0;
    nx_store_read(s, count_job, on_job_done, j);
}

/* ---- outbound ---- */

static int out_claim_job(sqlite3 *db, void *arg)
{
    struct ljob *j = arg;
    const struct nx_ledger_reply *r = &j->replies[0];
    sqlite3_stmt *st = stmt(db, S_OUT_INSERT);
    int changes = 0, rc;
    if (!st)
        return NX_EDB;
    bind_text(st, 1, r->key);
    bind_text(st, 2, r->channel ? r->channel : "");
    bind_text(st, 3, r->instance ? r->instance : "");
    bind_text(st, 4, r->subject ? r->subject : "");
    bind_text(st, 5, "");
    bind_text(st, 6, r->envelope ? r->envelope : "{}");
    sqlite3_bind_int64(st, 7, now_ms());
    if ((rc = step_done(db, st, NULL)) < 0)
        return NX_EDB;
    const char *colon = strrchr(r->key, ':'); /* "<inbound id>:<n>" */
    if (colon && colon > r->key) {
        if (!(st = stmt(db, S_OUT_ANSWERS)))
            return NX_EDB;
        sqlite3_bind_text(st, 1, r->key, (int)(colon - r->key), SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, now_ms());
        if ((rc = step_done(db, st, NULL)) < 0)
            return rc;
    }
    if (!(st = stmt(db, S_OUT_CLAIM)))
        return NX_EDB;
    bind_text(st, 1, r->key);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)j->boot);
    sqlite3_bind_int64(st, 3, now_ms());
    if ((rc = step_done(db, st, &changes)) < 0 || changes == 0)
        return rc; /* result 0: not claimed */
    if (!(st = stmt(db, S_OUT_STEPS)))
        return NX_EDB;
    bind_text(st, 1, r->key);
    j->result = 1 + (sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0);
    nx_stmt_release(st);
    return 0;
}

void nx_ledger_outbound_claim(struct nx_store *s, const struct nx_ledger_reply *r, uint64_t boot,
                              nx_ledger_done_fn done, void *arg)
{
    struct ljob *j = ljob_new(done, arg);
    NX_ASSERT(r->key && boot);
    j->replies = nx_calloc(1, sizeof *j->replies);
    reply_copy(&j->replies[0], r);
    j->nreplies = 1;
    j->boot = boot;
    nx_store_write(s, out_claim_job, on_job_done, j);
}

static int unclaim_job(sqlite3 *db, void *arg)
{
    struct ljob *j = arg;
    sqlite3_stmt *st = stmt(db, S_OUT_UNCLAIM);
    int changes = 0, rc;
    if (!st)
        return NX_EDB;
    bind_text(st, 1, j->s[0]);
    sqlite3_bind_int64(st, 2, now_ms());
    rc = step_done(db, st, &changes);
    j->result = changes;
    return rc;
}

void nx_ledger_outbound_unclaim(struct nx_store *s, const char *key, nx_ledger_done_fn done,
                                void *arg)
{
    struct ljob *j = ljob_new(done, arg);
    j->s[0] = nx_strdup(key);
    nx_store_write(s, unclaim_job, on_job_done, j);
}

static int take_job(sqlite3 *db, void *arg)
{
    struct ljob *j = arg;
    sqlite3_stmt *st = NULL;
    int rc = NX_EDB;
    if (sqlite3_prepare_v2(db, "SELECT key, channel, instance, subject, envelope, state, provider_id, "
                               "last_error, attempts + 1, steps_sent FROM ledger_outbound "
                               "WHERE state = 'pending' AND channel = ?1 AND instance = ?2 AND claim != ?3 "
                               "ORDER BY seq, rowid LIMIT ?4", -1, &st, NULL) != SQLITE_OK) {
        nx_error("ledger", "%s", sqlite3_errmsg(db));
        goto out;
    }
    bind_text(st, 1, j->s[0]);
    bind_text(st, 2, j->s[1]);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)j->boot);
    sqlite3_bind_int64(st, 4, j->num > 0 ? j->num : 1000);
    if ((rc = collect(db, st, j)) < 0)
        goto out;
    for (size_t i = 0; i < j->nrows; i++) {
        sqlite3_stmt *up = stmt(db, S_OUT_CLAIM);
        if (!up) {
            rc = NX_EDB;
            goto out;
        }
        bind_text(up, 1, j->rows[i].key);
        sqlite3_bind_int64(up, 2, (sqlite3_int64)j->boot);
        sqlite3_bind_int64(up, 3, now_ms());
        if ((rc = step_done(db, up, NULL)) < 0)
            goto out;
    }
out:
    sqlite3_finalize(st);
    return rc;
}

void nx_ledger_outbound_take(struct nx_store *s, const char *channel, const char *instance,
                             uint64_t boot, size_t limit, nx_ledger_rows_fn done, void *arg)
{
    struct ljob *j = rows_job_new(done, arg);
    NX_ASSERT(boot);
    j->s[0] = nx_strdup(channel);
    j->s[1] = nx_strdup(instance);
    j->boot = boot;
    j->num = (int64_t)limit;
    nx_store_write(s, take_job, on_job_done, j);
}

static int status_apply(sqlite3 *db, const char *channel, const char *instance, const char *pid,
                        const char *state, const char *error, int *changes);

/* A status that came before the send was recorded (S_OUT_EARLY) now applies to the reply. */
static int merge_early(sqlite3 *db, const char *key, const char *provider_id)
{
    sqlite3_stmt *st = stmt(db, S_OUT_EARLY_TAKE);
    char *state = NULL, *error = NULL, *channel = NULL, *instance = NULL;
    int rc = 0;
    if (!st)
        return NX_EDB;
    bind_text(st, 1, key);
    bind_text(st, 2, provider_id);
    if (sqlite3_step(st) == SQLITE_ROW) {
        state = col_dup(st, 0);
        error = col_dup(st, 1);
        channel = col_dup(st, 2);
        instance = col_dup(st, 3);
    }
    nx_stmt_release(st);
    if (state && channel && instance) {
        if ((rc = status_apply(db, channel, instance, provider_id, state, error, NULL)) == 0 &&
            (st = stmt(db, S_OUT_EARLY_DROP))) {
            bind_text(st, 1, channel);
            bind_text(st, 2, instance);
            bind_text(st, 3, provider_id);
            rc = step_done(db, st, NULL);
        }
    }
    free(state);
    free(error);
    free(channel);
    free(instance);
    return rc;
}

static int sent_job(sqlite3 *db, void *arg)
{
    struct ljob *j = arg;
    sqlite3_stmt *st = stmt(db, S_OUT_SENT);
    int changes = 0, rc;
    if (!st)
        return NX_EDB;
    bind_text(st, 1, j->s[0]);
    bind_text(st, 2, j->num < 0 ? "failed" : "sent");
    bind_text(st, 3, j->s[1]);
    bind_text(st, 4, j->s[2] ? j->s[2] : "");
    sqlite3_bind_int64(st, 5, now_ms());
    rc = step_done(db, st, &changes);
    j->result = changes;
    if (rc == 0 && changes && j->num >= 0 && j->s[1])
        rc = merge_early(db, j->s[0], j->s[1]);
    return rc;
}

void nx_ledger_outbound_sent(struct nx_store *s, const char *key, const char *provider_id,
                             int status, const char *error, nx_ledger_done_fn done, void *arg)
{
    struct ljob *j = ljob_new(done, arg);
    j->s[0] = nx_strdup(key);
    j->s[1] = dup_or_null(provider_id);
    j->s[2] = status < 0 ? nx_strdup(error ? error : nx_strerror(status)) : NULL;
    j->num = status;
    nx_store_write(s, sent_job, on_job_done, j);
}

static int status_apply(sqlite3 *db, const char *channel, const char *instance, const char *pid,
                        const char *state, const char *error, int *changes)
{
    sqlite3_stmt *st = stmt(db, S_OUT_STATUS);
    if (!st)
        return NX_EDB;
    bind_text(st, 1, channel);
    bind_text(st, 2, instance);
    bind_text(st, 3, pid);
    bind_text(st, 4, state);
    bind_text(st, 5, error ? error : "");
    sqlite3_bind_int64(st, 6, now_ms());
    return step_done(db, st, changes);
}

static int status_job(sqlite3 *db, void *arg)
{
    struct ljob *j = arg;
    sqlite3_stmt *st;
    int changes = 0, rc;

    rc = status_apply(db, j->s[0], j->s[1], j->s[2], j->s[3], j->s[4], &changes);
    j->result = changes;
    if (rc < 0 || changes)
        return rc;
    /* no row moved: either the state is not newer, or no reply has this provider id yet */
    if (!(st = stmt(db, S_OUT_HAS_PID)))
        return NX_EDB;
    bind_text(st, 1, j->s[0]);
    bind_text(st, 2, j->s[1]);
    bind_text(st, 3, j->s[2]);
    bool is_known = sqlite3_step(st) == SQLITE_ROW;
    nx_stmt_release(st);
    if (is_known || (strcmp(j->s[3], "delivered") != 0 && strcmp(j->s[3], "read") != 0 &&
                     strcmp(j->s[3], "failed") != 0))
        return 0;
    if (!(st = stmt(db, S_OUT_EARLY)))
        return NX_EDB;
    for (int i = 0; i < 4; i++)
        bind_text(st, i + 1, j->s[i]);
    bind_text(st, 5, j->s[4] ? j->s[4] : "");
    sqlite3_bind_int64(st, 6, now_ms());
    rc = step_done(db, st, &changes);
    j->result = changes;
    return rc;
}


void nx_ledger_outbound_status(struct nx_store *s, const char *channel, const char *instance,
                               const char *provider_id, const char *state, const char *error,
                               nx_ledger_done_fn done, void *arg)
{
    struct ljob *j = ljob_new(done, arg);
    j->s[0] = nx_strdup(channel);
    j->s[1] = nx_strdup(instance);
    j->s[2] = nx_strdup(provider_id);
    j->s[3] = nx_strdup(state);
    j->s[4] = dup_or_null(error);
    nx_store_write(s, status_job, on_job_done, j);
}
