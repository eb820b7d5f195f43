#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/error.h"
#include "core/log.h"
#include "core/redact.h"
#include "runtime/runtime.h"
#include "store/history.h"
#include "store/history_internal.h"

/* Transcripts: the searchable text of a message, FTS5 search and `nexo transcripts` (file names
 * and the JSONL writer: transcript_file.c; redaction of JSON values: transcript_json.c). See
 * docs/transcripts.md. */

#define SEARCH_DEFAULT_LIMIT 20
#define SEARCH_MAX_LIMIT 1000
#define CLI_TIMEOUT_MS 120000

/* ---- searchable text ---- */

static void put_part(struct nx_buf *out, const char *s, size_t len)
{
    if (!s || !len)
        return;
    if (out->len)
        nx_buf_putc(out, '\n');
    nx_buf_append(out, s, len);
}

static void put_string(struct nx_buf *out, const json_t *v)
{
    if (json_is_string(v))
        put_part(out, json_string_value(v), json_string_length(v));
}

void nx_transcript_text(const json_t *content, struct nx_buf *out)
{
    size_t i;
    const json_t *block;

    if (json_is_string(content)) {
        put_string(out, content);
        return;
    }
    if (!json_is_array(content))
        return;
    json_array_foreach(content, i, block) {
        const char *type = json_string_value(json_object_get(block, "type"));
        if (!type)
            continue;
        if (strcmp(type, "text") == 0) {
            put_string(out, json_object_get(block, "text"));
        } else if (strcmp(type, "tool_use") == 0) {
            put_string(out, json_object_get(block, "name"));
        } else if (strcmp(type, "tool_result") == 0) {
            const json_t *c = json_object_get(block, "content");
            if (json_is_array(c))
                nx_transcript_text(c, out); /* blocks inside a tool result */
            else
                put_string(out, c);
        }
    }
}

/* ---- search (store thread) ---- */

struct search {
    char *query;
    char *agent;       /* NULL = every agent */
    int64_t limit;
    json_t *rows;      /* on success */
    bool is_phrase;    /* the query did not parse and was searched as a phrase */
    char err[256];     /* why the query failed, or why it was rewritten */
    json_t *agents;    /* nothing found for `agent`, which has no sessions: the agents that do */
    void (*finish)(int rc, struct search *q);
    nx_transcripts_found_fn done;
    void *arg;
};

static void search_free(struct search *q)
{
    if (!q)
        return;
    free(q->query);
    free(q->agent);
    json_decref(q->rows);
    json_decref(q->agents);
    free(q);
}

static const char search_sql[] =
    "SELECT agent_id, session_key, role, ts, "
    "       snippet(transcripts_fts, 0, '[', ']', '...', 16) "
    "FROM transcripts_fts WHERE transcripts_fts MATCH ?1 AND (?2 IS NULL OR agent_id = ?2) "
    "ORDER BY rank LIMIT ?3";

static const char *col_text(sqlite3_stmt *st, int i)
{
    const char *s = (const char *)sqlite3_column_text(st, i);
    return s ? s : "";
}

/* NX_EINVAL when SQLite rejects the query itself (FTS5 syntax, unknown column), NX_EDB else. */
static int query_rows(sqlite3 *db, struct search *q, const char *match)
{
    sqlite3_stmt *st = NULL;
    json_t *rows = json_array();
    int src;
    int rc = NX_EDB;

    if (sqlite3_prepare_v2(db, search_sql, -1, &st, NULL) != SQLITE_OK) {
        snprintf(q->err, sizeof q->err, "%s", sqlite3_errmsg(db));
        goto out;
    }
    sqlite3_bind_text(st, 1, match, -1, SQLITE_STATIC);
    if (q->agent)
        sqlite3_bind_text(st, 2, q->agent, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, q->limit);
    while ((src = sqlite3_step(st)) == SQLITE_ROW) {
        char ts[40];
        int64_t ms = sqlite3_column_int64(st, 3);
        nx_rfc3339((uint64_t)(ms > 0 ? ms : 0), ts, sizeof ts);
        json_t *row = json_object();
        json_object_set_new(row, "agent_id", nx_json_string_lossy(col_text(st, 0)));
        /* redacted as in the JSONL files' "session": a secret typed as a peer or session name */
        struct nx_buf key = NX_BUF_INIT;
        const char *raw_key = col_text(st, 1);
        nx_redact_append(&key, raw_key, strlen(raw_key));
        json_object_set_new(row, "session_key", nx_json_string_lossy(nx_buf_cstr(&key)));
        nx_buf_cleanup(&key);
        json_object_set_new(row, "role", nx_json_string_lossy(col_text(st, 2)));
        json_object_set_new(row, "timestamp", json_string(ts));
        json_object_set_new(row, "ts_ms", json_integer((json_int_t)ms));
        json_object_set_new(row, "snippet", nx_json_string_lossy(col_text(st, 4)));
        json_array_append_new(rows, row);
    }
    if (src != SQLITE_DONE) {
        snprintf(q->err, sizeof q->err, "%s", sqlite3_errmsg(db));
        rc = src == SQLITE_ERROR ? NX_EINVAL : NX_EDB;
        goto out;
    }
    json_decref(q->rows);
    q->rows = rows;
    rows = NULL;
    rc = 0;
out:
    json_decref(rows);
    sqlite3_finalize(st);
    return rc;
}

/* The user's query as one FTS5 string: "..." with inner quotes doubled. */
static char *as_phrase(const char *query)
{
    struct nx_buf b = NX_BUF_INIT;

    nx_buf_putc(&b, '"');
    for (const char *p = query; *p; p++) {
        if (*p == '"')
            nx_buf_putc(&b, '"');
        nx_buf_putc(&b, *p);
    }
    nx_buf_putc(&b, '"');
    return nx_buf_steal(&b);
}

/* Nothing found for an --agent: is it an agent with no sessions here (a typo, most likely)?
 * Then q->agents lists those that have some, for the user to pick from. */
static int check_agent(sqlite3 *db, struct search *q)
{
    sqlite3_stmt *st = NULL;
    bool is_known = false;

    if (!q->agent || json_array_size(q->rows))
        return 0;
    if (sqlite3_prepare_v2(db, "SELECT DISTINCT agent_id FROM sessions ORDER BY 1 LIMIT 50", -1, &st,
                           NULL) != SQLITE_OK)
        return 0; /* (only a hint) */
    json_t *agents = json_array();
    while (sqlite3_step(st) == SQLITE_ROW) {
        is_known = is_known || strcmp(col_text(st, 0), q->agent) == 0;
        json_array_append_new(agents, nx_json_string_lossy(col_text(st, 0)));
    }
    sqlite3_finalize(st);
    if (is_known)
        json_decref(agents);
    else
        q->agents = agents;
    return 0;
}

static int search_job(sqlite3 *db, void *arg)
{
    struct search *q = arg;
    char first_err[256];
    char *phrase;
    int rc;

    rc = query_rows(db, q, q->query);
    if (rc == 0)
        return check_agent(db, q);
    if (rc != NX_EINVAL)
        return rc;
    /* Not valid FTS5 syntax: search for the words as they were typed. */
    snprintf(first_err, sizeof first_err, "%s", q->err);
    phrase = as_phrase(q->query);
    rc = query_rows(db, q, phrase);
    free(phrase);
    snprintf(q->err, sizeof q->err, "%s", first_err);
    q->is_phrase = rc == 0;
    return rc == 0 ? check_agent(db, q) : rc;
}

static void search_done(int rc, void *arg)
{
    struct search *q = arg;

    q->finish(rc, q);
}

static int index_job(sqlite3 *db, void *arg)
{
    (void)arg;
    return nx_transcript_index_all(db);
}

void nx_transcripts_index(struct nx_store *s, nx_store_done_fn done, void *arg)
{
    nx_store_write(s, index_job, done, arg);
}

/* `is_catching_up`: what was appended and not indexed yet goes in first (a failure there is
 * logged; the search runs on what is indexed). Only the process that appends does: it has the
 * configured redaction patterns (`nexo transcripts search` only reads, as the daemon it runs
 * beside indexes at the end of each batch). */
static void search_submit(struct nx_store *s, struct search *q, bool is_catching_up)
{
    if (nx_str_is_blank(q->query)) {
        snprintf(q->err, sizeof q->err, "empty query");
        q->finish(NX_EINVAL, q);
        return;
    }
    if (is_catching_up)
        nx_transcripts_index(s, NULL, NULL);
    nx_store_read(s, search_job, search_done, q);
}

static void public_finish(int rc, struct search *q)
{
    json_t *rows = NULL;

    if (rc >= 0) {
        rows = q->rows;
        q->rows = NULL;
    } else {
        nx_debug("transcripts", "search \"%s\" failed: %s (%s)", q->query, nx_strerror(rc), q->err);
    }
    if (q->done)
        q->done(rc, rows, q->arg);
    else
        json_decref(rows);
    search_free(q);
}

static struct search *search_new(const char *query, const char *agent_id, size_t limit)
{
    struct search *q = nx_calloc(1, sizeof *q);

    q->query = nx_strdup(query ? query : "");
    q->agent = agent_id && *agent_id ? nx_strdup(agent_id) : NULL;
    q->limit = limit == 0 ? SEARCH_DEFAULT_LIMIT
                          : (int64_t)(limit > SEARCH_MAX_LIMIT ? SEARCH_MAX_LIMIT : limit);
    return q;
}

void nx_transcripts_search(struct nx_store *s, const char *query, const char *agent_id,
                           size_t limit, nx_transcripts_found_fn done, void *arg)
{
    struct search *q = search_new(query, agent_id, limit);

    q->finish = public_finish;
    q->done = done;
    q->arg = arg;
    search_submit(s, q, true);
}

/* ---- nexo transcripts ---- */

static const char cli_usage[] =
    "Usage: nexo transcripts search QUERY [--agent ID] [--limit N] [--json]\n"
    "\n"
    "Searches the recorded conversations (redacted) with SQLite FTS5. QUERY uses FTS5 syntax\n"
    "(words, \"phrases\", AND/OR/NOT, prefix*); a query that does not parse is searched as a\n"
    "phrase. Prints one hit per line, best first: <time> <agent> <session> <role>: <snippet>.\n"
    "\n"
    "  --agent ID   only this agent's transcripts\n"
    "  --limit N    at most N hits (1-1000, default 20)\n"
    "  --json       print a JSON array of {agent_id, session_key, role, timestamp, ts_ms, snippet}\n"
    "\n"
    "Exit status: 0 hits or none (\"no matches\"), 1 failure, 2 bad usage.\n";

struct cli_wait {
    int rc;
    bool is_done;
};

static void cli_ready(int rc, void *arg)
{
    struct cli_wait *w = arg;

    w->rc = rc;
    w->is_done = true;
}

static void cli_finish(int rc, struct search *q)
{
    cli_ready(rc, q->arg);
}

static void cli_on_timeout(uv_timer_t *t)
{
    *(bool *)t->data = true;
}

/* Runs the loop until w->is_done; false on timeout. */
static bool cli_wait_for(uv_loop_t *loop, struct cli_wait *w)
{
    uv_timer_t timer;
    bool is_timed_out = false;

    uv_timer_init(loop, &timer);
    timer.data = &is_timed_out;
    uv_timer_start(&timer, cli_on_timeout, CLI_TIMEOUT_MS, 0);
    while (!w->is_done && !is_timed_out)
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&timer, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    return w->is_done;
}

static int cli_usage_error(const char *msg, const char *arg)
{
    fprintf(stderr, "nexo: transcripts: %s%s%s\nRun 'nexo transcripts --help' for usage.\n", msg,
            arg ? " " : "", arg ? arg : "");
    return NX_EXIT_USAGE;
}

/* Text for the terminal: control characters (newlines, escape sequences a remote user could put
 * in a session name or a message) become spaces: C0, DEL, and C1 (U+0080..U+009F, which some
 * terminals obey as ESC sequences; CSI is U+009B), UTF-8 encoded or as stray bytes. Other
 * characters are copied whole. */
static void put_printable_str(struct nx_buf *b, const char *v)
{
    const unsigned char *p = (const unsigned char *)(v ? v : "");
    while (*p) {
        size_t n = nx_utf8_valid_prefix((const char *)p, strnlen((const char *)p, 4));
        n = n == 0 ? 0 : p[0] < 0x80 ? 1 : p[0] < 0xe0 ? 2 : p[0] < 0xf0 ? 3 : 4; /* its first one */
        if (n == 0 || (n == 1 && (p[0] < 0x20 || p[0] == 0x7f)) || (n == 2 && p[0] == 0xc2 && p[1] <= 0x9f)) {
            nx_buf_putc(b, ' ');
            p += n ? n : 1;
        } else {
            nx_buf_append(b, p, n);
            p += n;
        }
    }
}

/* A field of a hit, as put_printable_str. */
static void put_printable(struct nx_buf *b, const json_t *row, const char *key)
{
    put_printable_str(b, json_string_value(json_object_get(row, key)));
}

/* One line per hit. */
static void print_hit(const json_t *row)
{
    static const char *const fields[] = {"timestamp", "agent_id", "session_key", "role", "snippet"};
    static const char *const after[] = {" ", " ", " ", ": ", "\n"};
    struct nx_buf b = NX_BUF_INIT;

    for (size_t i = 0; i < NX_ARRAY_LEN(fields); i++) {
        put_printable(&b, row, fields[i]);
        nx_buf_puts(&b, after[i]);
    }
    fputs(nx_buf_cstr(&b), stdout);
    nx_buf_cleanup(&b);
}

static void agent_note(const struct search *q)
{
    struct nx_buf b = NX_BUF_INIT;
    size_t i;
    const json_t *a;

    nx_buf_puts(&b, "nexo: transcripts: no sessions of agent \"");
    put_printable_str(&b, q->agent); /* (typed by the user, but printed as any field is) */
    nx_buf_puts(&b, json_array_size(q->agents) ? "\" here; agents with sessions: " : "\" here");
    json_array_foreach(q->agents, i, a) {
        if (i)
            nx_buf_puts(&b, ", ");
        put_printable_str(&b, json_string_value(a));
    }
    fprintf(stderr, "%s\n", nx_buf_cstr(&b));
    nx_buf_cleanup(&b);
}

static int cli_search(const char *data_dir, struct search *q, bool is_json)
{
    uv_loop_t loop;
    struct nx_store *s = NULL;
    struct cli_wait w = {0, false};
    int rc = NX_EXIT_FAILURE;

    if (!nx_store_cli_has_data(data_dir, NULL)) { /* nothing recorded yet: nothing to search */
        puts(is_json ? "[]" : "no matches");
        return NX_EXIT_OK;
    }
    if (uv_loop_init(&loop) != 0) {
        fprintf(stderr, "nexo: transcripts: cannot start an event loop\n");
        return NX_EXIT_FAILURE;
    }
    const struct nx_store_opts ro = {.is_read_only = true}; /* it only reads */
    if (nx_store_open(&loop, data_dir, &ro, cli_ready, &w, &s) < 0) {
        fprintf(stderr, "nexo: transcripts: cannot open the store under %s\n", data_dir);
        goto out;
    }
    if (!cli_wait_for(&loop, &w) || w.rc < 0) {
        fprintf(stderr, "nexo: transcripts: %s\n", w.is_done ? nx_store_last_error(s) : "timed out");
        goto out;
    }
    w.is_done = false;
    q->finish = cli_finish;
    q->arg = &w;
    search_submit(s, q, false);
    if (!cli_wait_for(&loop, &w)) {
        fprintf(stderr, "nexo: transcripts: the search timed out\n");
        goto out;
    }
    if (w.rc < 0) {
        fprintf(stderr, "nexo: transcripts: search failed: %s%s%s\n",
                w.rc == NX_EINVAL ? "bad query" : nx_strerror(w.rc), q->err[0] ? ": " : "", q->err);
        goto out;
    }
    if (q->is_phrase)
        fprintf(stderr, "nexo: transcripts: the query is not FTS5 syntax (%s); searched it as a phrase\n",
                q->err);
    if (q->agents)
        agent_note(q);
    if (is_json) {
        char *text = json_dumps(q->rows, JSON_INDENT(2));
        puts(text ? text : "[]");
        free(text);
    } else if (json_array_size(q->rows) == 0) {
        puts("no matches");
    } else {
        size_t i;
        const json_t *row;
        json_array_foreach(q->rows, i, row)
            print_hit(row);
    }
    rc = NX_EXIT_OK;
out:
    fflush(stdout);
    nx_store_close(s);
    for (int i = 0; i < 100 && uv_loop_alive(&loop); i++)
        uv_run(&loop, UV_RUN_NOWAIT);
    if (uv_loop_close(&loop) != 0)
        nx_warn("transcripts", "event loop still had handles at exit");
    return rc;
}

/* Accepts argv starting at "search" (or at "transcripts", which is skipped). */
int nx_cmd_transcripts(int argc, char **argv, const char *data_dir)
{
    struct nx_buf query = NX_BUF_INIT;
    const char *agent = NULL;
    unsigned long limit = 0;
    bool is_json = false;
    bool is_opts_done = false;
    struct search *q;
    int i = 0;
    int rc;

    if (i < argc && strcmp(argv[i], "transcripts") == 0)
        i++;
    if (i >= argc)
        return cli_usage_error("missing command (search)", NULL);
    if (strcmp(argv[i], "help") == 0 || strcmp(argv[i], "-h") == 0 ||
        strcmp(argv[i], "--help") == 0) {
        fputs(cli_usage, stdout);
        return NX_EXIT_OK;
    }
    if (strcmp(argv[i], "search") != 0)
        return cli_usage_error("unknown command", argv[i]);
    for (i++; i < argc; i++) {
        const char *a = argv[i];
        const char *v = NULL;
        if (!is_opts_done && strcmp(a, "--") == 0) {
            is_opts_done = true;
            continue;
        }
        if (!is_opts_done && (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0)) {
            nx_buf_cleanup(&query);
            fputs(cli_usage, stdout);
            return NX_EXIT_OK;
        }
        if (!is_opts_done && strcmp(a, "--json") == 0) {
            is_json = true;
            continue;
        }
        if (!is_opts_done && (strncmp(a, "--agent", 7) == 0 || strncmp(a, "--limit", 7) == 0) &&
            (a[7] == '\0' || a[7] == '=')) {
            if (a[7] == '=')
                v = a + 8;
            else if (i + 1 < argc)
                v = argv[++i];
            if (!v || !*v) {
                nx_buf_cleanup(&query);
                return cli_usage_error("a value is missing after", a);
            }
            if (a[2] == 'a') {
                agent = v;
                continue;
            }
            char *end = NULL;
            errno = 0;
            limit = strtoul(v, &end, 10);
            if (errno || !end || *end || v[0] == '-' || limit < 1 || limit > SEARCH_MAX_LIMIT) {
                nx_buf_cleanup(&query);
                return cli_usage_error("--limit needs a number from 1 to 1000, not", v);
            }
            continue;
        }
        if (!is_opts_done && a[0] == '-' && a[1] == '-') {
            nx_buf_cleanup(&query);
            return cli_usage_error("unknown option", a);
        }
        if (query.len)
            nx_buf_putc(&query, ' ');
        nx_buf_puts(&query, a);
    }
    if (nx_str_is_blank(nx_buf_cstr(&query))) {
        nx_buf_cleanup(&query);
        return cli_usage_error("search needs a QUERY", NULL);
    }
    q = search_new(nx_buf_cstr(&query), agent, limit);
    nx_buf_cleanup(&query);
    rc = cli_search(data_dir && *data_dir ? data_dir : "./data", q, is_json);
    search_free(q);
    return rc;
}
