#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/clock.h"
#include "core/error.h"
#include "core/log.h"
#include "core/metrics.h"
#include "store/history.h"
#include "store/history_internal.h"
#include "store/stmt_cache.h"

/* Sessions and their messages in SQLite; each append also goes to the session's transcript
 * (JSONL file, and the FTS5 index at the end of the batch: transcript_index.c), redacted. The
 * database keeps the history unredacted (the model needs it as it was); the transcript copies
 * are redacted. See docs/transcripts.md. */

/* ---- session keys ---- */

int nx_session_key_parse(const char *key, struct nx_session_key_parts *out)
{
    const char *agent, *channel, *peer;

    memset(out, 0, sizeof *out);
    if (!key || strncmp(key, "agent:", 6) != 0)
        return NX_EINVAL;
    agent = key + 6;
    if (!(channel = strchr(agent, ':')) || channel == agent)
        return NX_EINVAL;
    channel++;
    if (!(peer = strchr(channel, ':')) || peer == channel)
        return NX_EINVAL;
    peer++;
    out->agent_id = agent;
    out->agent_len = (size_t)(channel - 1 - agent);
    out->channel = channel;
    out->channel_len = (size_t)(peer - 1 - channel);
    out->peer = peer;
    out->peer_len = strlen(peer);
    return 0;
}

char *nx_session_key_make(const char *agent_id, const char *channel, const char *peer)
{
    struct nx_buf b = NX_BUF_INIT;

    nx_buf_printf(&b, "agent:%s:%s:%s", agent_id ? agent_id : "", channel ? channel : "",
                  peer ? peer : "");
    return nx_buf_steal(&b);
}

/* ---- append (store thread) ---- */

struct append_job {
    char *data_dir;
    char *key;
    char *agent;
    char *channel;
    char *peer;
    char *source;
    json_t *messages; /* our own deep copy */
    uint64_t input_tokens;
    uint64_t output_tokens;
    uint64_t now_ms;
    nx_store_done_fn done;
    void *arg;
};

static void append_free(struct append_job *j)
{
    free(j->data_dir);
    free(j->key);
    free(j->agent);
    free(j->channel);
    free(j->peer);
    free(j->source);
    json_decref(j->messages);
    free(j);
}

static bool is_valid_message(const json_t *m)
{
    const json_t *content = json_object_get(m, "content");

    return json_is_string(json_object_get(m, "role")) &&
           (json_is_array(content) || json_is_string(content));
}

/* ---- prepared statements, kept per store thread ---- */

enum {
    ST_UPSERT,
    ST_NEXT_SEQ,
    ST_INSERT,
    ST_LOAD,
    ST_COUNT,
};

#define K NX_STORE_KEEP_SQL
static const char *const stmt_sql[ST_COUNT] = {
    [ST_UPSERT] = K "INSERT INTO sessions(key, agent_id, channel, peer, created_at, updated_at,"
                  "                     message_count, input_tokens, output_tokens) "
                  "VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6, ?7, ?8) "
                  "ON CONFLICT(key) DO UPDATE SET updated_at = excluded.updated_at, "
                  "  message_count = message_count + excluded.message_count, "
                  "  input_tokens = input_tokens + excluded.input_tokens, "
                  "  output_tokens = output_tokens + excluded.output_tokens",
    [ST_NEXT_SEQ] = K "SELECT coalesce(max(seq), 0) + 1 FROM messages WHERE session_key = ?1",
    [ST_INSERT] = K "INSERT INTO messages(session_key, seq, role, content, created_at) "
                  "VALUES (?1, ?2, ?3, ?4, ?5)",
    [ST_LOAD] = K "SELECT role, content FROM ("
                "  SELECT seq, role, content FROM messages WHERE session_key = ?1 "
                "  ORDER BY seq DESC LIMIT ?2) ORDER BY seq",
};
#undef K

/* Prepared once per connection (store thread, reader thread), reset after every use. */
static _Thread_local struct nx_stmt_cache cache;

static sqlite3_stmt *stmt_get(sqlite3 *db, int which)
{
    return nx_stmt_cached(&cache, db, stmt_sql, which, "history");
}

static int exec_stmt(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st) == SQLITE_DONE ? 0 : NX_EDB;

    nx_stmt_release(st);
    return rc;
}

static int upsert_session(sqlite3 *db, const struct append_job *j, size_t n)
{
    sqlite3_stmt *st = stmt_get(db, ST_UPSERT);

    if (!st)
        return NX_EDB;
    sqlite3_bind_text(st, 1, j->key, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, j->agent, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, j->channel, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, j->peer, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 5, (sqlite3_int64)j->now_ms);
    sqlite3_bind_int64(st, 6, (sqlite3_int64)n);
    sqlite3_bind_int64(st, 7, (sqlite3_int64)j->input_tokens);
    sqlite3_bind_int64(st, 8, (sqlite3_int64)j->output_tokens);
    return exec_stmt(st);
}

static int next_seq(sqlite3 *db, const char *key, int64_t *out)
{
    sqlite3_stmt *st = stmt_get(db, ST_NEXT_SEQ);
    int rc = NX_EDB;

    if (!st)
        return NX_EDB;
    sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    if (sqlite3_step(st) == SQLITE_ROW) {
        *out = sqlite3_column_int64(st, 0);
        rc = 0;
    }
    nx_stmt_release(st);
    return rc;
}

/* One JSONL line, written straight from the message: every string redacted. The messages may
 * be shared with the loop thread (is_immutable): only read here, never referenced (a reference
 * count is no place for two threads). */
static void jsonl_line(const struct append_job *j, const char *ts, const json_t *m,
                       struct nx_buf *out)
{
    const char *const head[][2] = {
        {"{\"ts\":", ts},
        {",\"session\":", j->key},
        {",\"agent\":", j->agent},
        {",\"source\":", j->source},
        {",\"role\":", json_string_value(json_object_get(m, "role"))},
    };
    for (size_t i = 0; i < NX_ARRAY_LEN(head); i++) {
        const char *v = head[i][1] ? head[i][1] : "";
        size_t len = strlen(v);
        nx_buf_puts(out, head[i][0]);
        if (nx_utf8_is_valid(v, len)) {
            nx_json_put_redacted(out, v, len);
            continue;
        }
        char *lossy = nx_strdup(v); /* as nx_json_string_lossy: what is not ASCII becomes '?' */
        for (char *p = lossy; *p; p++)
            if ((unsigned char)*p >= 0x80)
                *p = '?';
        nx_json_put_redacted(out, lossy, len);
        free(lossy);
    }
    nx_buf_puts(out, ",\"content\":");
    nx_json_dump_redacted(json_object_get(m, "content"), out);
    nx_buf_puts(out, "}\n");
}

static int append_job_run(sqlite3 *db, void *arg)
{
    struct append_job *j = arg;
    sqlite3_stmt *ins;
    struct nx_buf lines = NX_BUF_INIT;
    size_t n = json_array_size(j->messages);
    char ts[40];
    int64_t seq = 0;
    size_t i;
    json_t *m;
    int rc = NX_EINVAL;

    json_array_foreach(j->messages, i, m) {
        if (!is_valid_message(m)) {
            nx_warn("history", "append to %s: message %zu has no role or content; nothing stored",
                    j->key, i);
            goto out;
        }
    }
    rc = NX_EDB;
    if ((rc = upsert_session(db, j, n)) < 0 || (rc = next_seq(db, j->key, &seq)) < 0)
        goto out;
    rc = NX_EDB;
    if (!(ins = stmt_get(db, ST_INSERT)))
        goto out;

    nx_rfc3339(j->now_ms, ts, sizeof ts);
    json_array_foreach(j->messages, i, m) {
        const char *role = json_string_value(json_object_get(m, "role"));
        char *content = json_dumps(json_object_get(m, "content"),
                                   JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_ENCODE_ANY);

        NX_ASSERT(content);
        sqlite3_bind_text(ins, 1, j->key, -1, SQLITE_STATIC);
        sqlite3_bind_int64(ins, 2, seq + (int64_t)i);
        sqlite3_bind_text(ins, 3, role, -1, SQLITE_STATIC);
        sqlite3_bind_text(ins, 4, content, -1, free);
        sqlite3_bind_int64(ins, 5, (sqlite3_int64)j->now_ms);
        if ((rc = exec_stmt(ins)) < 0)
            goto out;
        rc = NX_EDB;
        jsonl_line(j, ts, m, &lines);
    }
    nx_transcript_index_soon(db); /* the FTS rows, at the batch's end (transcript_index.c) */

    /* The database is the record; the JSONL file is an export of it. A failed file write is
     * logged and counted, and the history still commits (docs/transcripts.md). */
    if (lines.len && nx_transcript_write(j->data_dir, j->agent, j->key, lines.data, lines.len) < 0)
        nx_counter_add(nx_metric_counter("nexo_transcript_write_errors_total",
                                         "JSONL transcript appends that failed (the database part "
                                         "was kept).",
                                         NULL),
                       NULL, 1);
    rc = 0;
out:
    if (rc < 0 && rc != NX_EINVAL)
        nx_error("history", "append to %s failed: %s", j->key, sqlite3_errmsg(db));
    nx_buf_cleanup(&lines);
    return rc;
}

static void append_done(int rc, void *arg)
{
    struct append_job *j = arg;
    nx_store_done_fn done = j->done;
    void *done_arg = j->arg;

    append_free(j);
    if (done)
        done(rc, done_arg);
}

/* The job of a request that was refused before it reached the database. */
static int invalid_job(sqlite3 *db, void *arg)
{
    (void)db;
    (void)arg;
    return NX_EINVAL;
}

void nx_history_append(struct nx_store *s, const char *data_dir,
                       const struct nx_history_append *a, nx_store_done_fn done, void *arg)
{
    struct append_job *j = nx_calloc(1, sizeof *j);
    struct nx_session_key_parts parts;
    bool is_parsed;
    bool is_ok;

    NX_ASSERT(s && a);
    j->done = done;
    j->arg = arg;
    is_parsed = nx_session_key_parse(a->session_key, &parts) == 0;
    is_ok = a->session_key && *a->session_key && data_dir && *data_dir &&
            (is_parsed || (a->agent_id && *a->agent_id)) && json_is_array(a->messages);
    if (is_ok && is_parsed && a->agent_id && *a->agent_id &&
        (strlen(a->agent_id) != parts.agent_len ||
         memcmp(a->agent_id, parts.agent_id, parts.agent_len) != 0)) {
        nx_warn("history", "session %s does not belong to agent %s; not stored", a->session_key,
                a->agent_id);
        is_ok = false;
    }
    if (!is_ok) {
        /* Still through the store, so that done runs on the loop like every completion. */
        nx_store_write(s, invalid_job, append_done, j);
        return;
    }
    j->data_dir = nx_strdup(data_dir);
    j->key = nx_strdup(a->session_key);
    if (is_parsed) {
        j->agent = nx_strndup(parts.agent_id, parts.agent_len);
        j->channel = nx_strndup(parts.channel, parts.channel_len);
        j->peer = nx_strndup(parts.peer, parts.peer_len);
    } else {
        j->agent = nx_strdup(a->agent_id);
        j->channel = nx_strdup(a->source ? a->source : "");
        j->peer = nx_strdup("");
    }
    j->source = nx_strdup(a->source && *a->source ? a->source : j->channel);
    /* (released in append_done, on the submitting thread) */
    j->messages = a->is_immutable ? json_incref((json_t *)a->messages) : json_deep_copy(a->messages);
    NX_ASSERT(j->messages);
    j->input_tokens = a->input_tokens;
    j->output_tokens = a->output_tokens;
    j->now_ms = nx_wall_ms();
    nx_store_write_keyed(s, j->key, append_job_run, append_done, j);
}

/* ---- load (store thread) ---- */


/* Whether message m has a block of `type` whose `key` is id. */
static bool has_block(const json_t *m, const char *type, const char *key, const char *id)
{
    size_t i;
    const json_t *b;

    json_array_foreach(json_object_get(m, "content"), i, b) {
        const char *t = json_string_value(json_object_get(b, "type"));
        const char *v = json_string_value(json_object_get(b, key));
        if (t && v && strcmp(t, type) == 0 && strcmp(v, id) == 0)
            return true;
    }
    return false;
}

/* After rows were left out: a tool call whose result went with them, or a result whose call
 * did, would have every later request refused. Such blocks go too, and a message left empty. */
static void drop_orphan_calls(json_t *list)
{
    for (size_t i = 0; i < json_array_size(list);) {
        json_t *m = json_array_get(list, i), *content = json_object_get(m, "content"), *b;
        const json_t *prev = i ? json_array_get(list, i - 1) : NULL, *next = json_array_get(list, i + 1);
        json_t *keep = json_array();
        size_t k;
        json_array_foreach(content, k, b) {
            const char *t = json_string_value(json_object_get(b, "type"));
            const char *call = json_string_value(json_object_get(b, "id"));
            const char *answered = json_string_value(json_object_get(b, "tool_use_id"));
            bool is_call = t && strcmp(t, "tool_use") == 0, is_result = t && strcmp(t, "tool_result") == 0;
            if ((is_call && (!call || !has_block(next, "tool_result", "tool_use_id", call))) ||
                (is_result && (!answered || !has_block(prev, "tool_use", "id", answered))))
                continue;
            json_array_append(keep, b);
        }
        if (!json_is_array(content) || json_array_size(keep) == json_array_size(content)) {
            json_decref(keep);
            i++;
        } else if (json_array_size(keep) == 0) {
            json_decref(keep);
            json_array_remove(list, i);
        } else {
            json_object_set_new(m, "content", keep);
            i++;
        }
    }
}

struct load_job {
    char *key;
    int64_t max;
    json_t *messages;
    nx_history_loaded_fn done;
    void *arg;
};

/* A client's cache_control marks that an older nexo stored go as the history is read: the agent
 * sets its own, and with these the Messages API's limit of 4 would refuse every turn. */
static void drop_cache_marks(json_t *blocks)
{
    size_t i;
    json_t *b;

    json_array_foreach(blocks, i, b) {
        json_object_del(b, "cache_control");
        drop_cache_marks(json_object_get(b, "content")); /* (a tool_result's) */
    }
}

static int load_job_run(sqlite3 *db, void *arg)
{
    struct load_job *j = arg;
    sqlite3_stmt *st = stmt_get(db, ST_LOAD);
    json_t *list = json_array();
    int src;
    int rc = NX_EDB;

    if (!st)
        goto out;
    sqlite3_bind_text(st, 1, j->key, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, j->max);
    size_t nbad = 0;
    while ((src = sqlite3_step(st)) == SQLITE_ROW) {
        const char *role = (const char *)sqlite3_column_text(st, 0);
        const char *text = (const char *)sqlite3_column_text(st, 1);
        json_t *content = text ? json_loads(text, JSON_DECODE_ANY, NULL) : NULL;
        json_t *m = json_object();
        drop_cache_marks(content);
        json_object_set_new(m, "role", nx_json_string_lossy(role));
        json_object_set_new(m, "content", content ? content : json_null());
        /* a row nexo did not write (edited, damaged): left out, not the whole history with it,
         * and not sent on for the provider to refuse every turn */
        if (!content || !role || (strcmp(role, "user") != 0 && strcmp(role, "assistant") != 0) ||
            !is_valid_message(m)) {
            json_decref(m);
            nbad++;
            continue;
        }
        json_array_append_new(list, m);
    }
    if (nbad) {
        nx_error("history", "session %s: %zu stored message%s left out: not a message nexo wrote (role "
                 "user or assistant, content JSON text or blocks)", j->key, nbad, nbad == 1 ? "" : "s");
        drop_orphan_calls(list);
    }
    if (src != SQLITE_DONE)
        goto out;
    /* the last N rows may begin inside a tool exchange: start where a conversation can, or,
     * when none of them can, at the nearest earlier place that can (over the count) */
    size_t from = 0, n = json_array_size(list);
    while (from < n && !nx_history_is_clean_start(json_array_get(list, from)))
        from++;
    if (from == n && n > 0 && j->max > 0 && (int64_t)n == j->max && j->max < INT64_MAX / 4) {
        json_decref(list);
        list = NULL;
        nx_stmt_release(st);
        j->max *= 4;
        return load_job_run(db, arg);
    }
    if (from > 0) {
        json_t *rest = json_array();
        for (size_t k = from; k < n; k++)
            json_array_append(rest, json_array_get(list, k));
        json_decref(list);
        list = rest;
    }
    j->messages = list;
    list = NULL;
    rc = 0;
out:
    if (rc < 0 && sqlite3_errcode(db) != SQLITE_OK)
        nx_error("history", "load %s failed: %s", j->key, sqlite3_errmsg(db));
    json_decref(list);
    nx_stmt_release(st);
    return rc;
}

static void load_done(int rc, void *arg)
{
    struct load_job *j = arg;
    json_t *messages = rc < 0 ? NULL : j->messages;

    if (rc < 0)
        json_decref(j->messages);
    if (j->done)
        j->done(rc, messages, j->arg);
    else
        json_decref(messages);
    free(j->key);
    free(j);
}

void nx_history_load(struct nx_store *s, const char *session_key, size_t max_messages,
                     nx_history_loaded_fn done, void *arg)
{
    struct load_job *j = nx_calloc(1, sizeof *j);

    NX_ASSERT(s);
    j->done = done;
    j->arg = arg;
    if (!session_key || !*session_key) {
        nx_store_read(s, invalid_job, load_done, j);
        return;
    }
    j->key = nx_strdup(session_key);
    j->max = max_messages == 0 || max_messages > INT64_MAX ? -1 : (int64_t)max_messages;
    nx_store_read_keyed(s, j->key, load_job_run, load_done, j);
}

/* ---- trimming to a token budget ---- */

/* About 4 bytes of English, code or JSON per token; other scripts by the character: a CJK or
 * Indic character (3 bytes in UTF-8) is about a token, a Cyrillic, Greek, Arabic or accented
 * one (2 bytes) half of one, an emoji (4 bytes) two. Images a flat guess. */
#define MESSAGE_OVERHEAD_TOKENS 4
#define IMAGE_TOKENS 1600

uint64_t nx_history_text_tokens(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    uint64_t quarters = 0; /* quarter tokens */
    for (size_t i = 0; i < n; i++) {
        unsigned char c = p[i];
        if (c < 0x80)
            quarters += 1;
        else if (c >= 0xf0)
            quarters += 8;
        else if (c >= 0xe0)
            quarters += 4;
        else if (c >= 0xc0)
            quarters += 2;
        /* continuation bytes: counted with their lead */
    }
    return (quarters + 3) / 4;
}


static uint64_t json_tokens(const json_t *v)
{
    char *s;
    uint64_t n;

    if (!v)
        return 0;
    if (json_is_string(v))
        return nx_history_text_tokens(json_string_value(v), json_string_length(v));
    s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    n = s ? nx_history_text_tokens(s, strlen(s)) : 0;
    free(s);
    return n;
}

uint64_t nx_history_estimate_tokens(const json_t *message)
{
    const json_t *content = json_object_get(message, "content");
    uint64_t n = MESSAGE_OVERHEAD_TOKENS;
    size_t i;
    const json_t *b;

    if (!json_is_array(content))
        return n + json_tokens(content);
    json_array_foreach(content, i, b) {
        const char *type = json_string_value(json_object_get(b, "type"));
        if (type && strcmp(type, "text") == 0)
            n += json_tokens(json_object_get(b, "text"));
        else if (type && strcmp(type, "tool_use") == 0)
            n += json_tokens(json_object_get(b, "name")) + json_tokens(json_object_get(b, "input"));
        else if (type && strcmp(type, "tool_result") == 0)
            n += json_tokens(json_object_get(b, "content"));
        else if (type && strcmp(type, "image") == 0)
            n += IMAGE_TOKENS;
        else
            n += json_tokens(b);
    }
    return n;
}

bool nx_history_is_clean_start(const json_t *m)
{
    const json_t *content = json_object_get(m, "content");
    const char *role = json_string_value(json_object_get(m, "role"));
    size_t i;
    const json_t *b;

    if (!role || strcmp(role, "user") != 0)
        return false;
    json_array_foreach(content, i, b) {
        const char *type = json_string_value(json_object_get(b, "type"));
        if (type && strcmp(type, "tool_result") == 0)
            return false;
    }
    return true;
}

size_t nx_history_trim(json_t *messages, uint64_t max_tokens)
{
    size_t n = json_array_size(messages);
    size_t cut = n;
    uint64_t total = 0;

    if (n == 0)
        return 0;
    /* Smallest cut whose tail fits; the last message is always kept. */
    while (cut > 0) {
        uint64_t t = nx_history_estimate_tokens(json_array_get(messages, cut - 1));
        if (cut < n && total + t > max_tokens)
            break;
        total += t;
        cut--;
    }
    if (cut > 0) {
        size_t c = cut;
        while (c < n && !nx_history_is_clean_start(json_array_get(messages, c)))
            c++;
        if (c == n) {
            /* No clean start inside the budget: go back to the nearest one, over budget,
             * rather than send a tool result without its call. */
            c = cut;
            while (c > 0 && !nx_history_is_clean_start(json_array_get(messages, c)))
                c--;
        }
        cut = c;
    }
    for (size_t i = 0; i < cut; i++)
        json_array_remove(messages, 0);
    return cut;
}
