/* NX_TEST_LABELS: threaded */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/redact.h"
#include "core/buf.h"
#include "core/error.h"
#include "core/log.h"
#include "store/history.h"
#include "store/history_internal.h"
#include "store/store.h"
#include "store_fixture.h"

/* 40 characters after the prefix: the redactor's sk- rule takes 16 or more. */
#define SECRET_KEY "sk-ant-api03-Zq8xW2vB7nK4mP9rT3yL6hJ1cF5dG0sA8eQ2wR4t"
#define BEARER_TOKEN "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.s3cr3tSignatureXYZ"

/* ---- fixture: a temp data dir, a loop and a store ---- */

struct fx {
    char tmp[64];
    char dir[128];
    uv_loop_t loop;
    struct nx_store *s;
    pthread_t loop_thread;
    int calls;
    int rc;
    json_t *rows;
    int wrong_thread;
};

/* Runs the loop until f->calls >= target. */
static void run_until(struct fx *f, int target)
{
    sfx_run_until(&f->loop, &f->calls, target);
}

static void on_done(int rc, void *arg)
{
    struct fx *f = arg;

    if (!pthread_equal(pthread_self(), f->loop_thread))
        f->wrong_thread++;
    f->rc = rc;
    f->calls++;
}

static void on_rows(int rc, json_t *rows, void *arg)
{
    struct fx *f = arg;

    json_decref(f->rows);
    f->rows = rows;
    on_done(rc, arg);
}

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof *f);

    assert_non_null(f);
    assert_int_equal(ts_mkdtemp(f->tmp, sizeof f->tmp, "nx-hist-"), 0);
    snprintf(f->dir, sizeof f->dir, "%s/data", f->tmp);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    f->loop_thread = pthread_self();
    assert_int_equal(sfx_open(&f->loop, f->dir, NULL, &f->s), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;

    if (f->s)
        sfx_close(&f->loop, &f->s);
    json_decref(f->rows);
    assert_int_equal(f->wrong_thread, 0);
    sfx_finish(&f->loop, f->tmp);
    free(f);
    return 0;
}

/* ---- helpers ---- */

static int append(struct fx *f, const char *key, const char *agent, const char *json,
                  uint64_t in, uint64_t out)
{
    json_t *msgs = json_loads(json, 0, NULL);
    struct nx_history_append a = {
        .session_key = key, .agent_id = agent, .source = NULL, .messages = msgs,
        .input_tokens = in, .output_tokens = out,
    };
    int target = f->calls + 1;

    assert_non_null(msgs);
    nx_history_append(f->s, f->dir, &a, on_done, f);
    json_decref(msgs); /* borrowed: the append made its own copy */
    run_until(f, target);
    return f->rc;
}

static json_t *load(struct fx *f, const char *key, size_t max)
{
    int target = f->calls + 1;
    json_t *rows;

    nx_history_load(f->s, key, max, on_rows, f);
    run_until(f, target);
    assert_int_equal(f->rc, 0);
    rows = f->rows;
    f->rows = NULL;
    assert_true(json_is_array(rows));
    return rows;
}

static int search(struct fx *f, const char *query, const char *agent)
{
    int target = f->calls + 1;

    nx_transcripts_search(f->s, query, agent, 0, on_rows, f);
    run_until(f, target);
    return f->rc;
}

struct one_int {
    struct fx *f;
    const char *sql;
    long long n;
};

static int int_job(sqlite3 *db, void *arg)
{
    struct one_int *q = arg;
    sqlite3_stmt *st = NULL;
    int rc = NX_EDB;

    if (sqlite3_prepare_v2(db, q->sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW) {
        q->n = sqlite3_column_int64(st, 0);
        rc = 0;
    }
    sqlite3_finalize(st);
    return rc;
}

static void int_done(int rc, void *arg)
{
    on_done(rc, ((struct one_int *)arg)->f);
}

static long long read_int(struct fx *f, const char *sql)
{
    struct one_int q = {f, sql, -1};
    int target = f->calls + 1;

    nx_store_read(f->s, int_job, int_done, &q);
    run_until(f, target);
    assert_int_equal(f->rc, 0);
    return q.n;
}

static char *slurp(const char *path)
{
    struct nx_buf b = NX_BUF_INIT;
    char chunk[4096];
    FILE *fp = fopen(path, "rb");
    size_t n;

    if (!fp)
        return NULL;
    while ((n = fread(chunk, 1, sizeof chunk, fp)) > 0)
        nx_buf_append(&b, chunk, n);
    fclose(fp);
    return nx_buf_steal(&b);
}

static char *transcript_path(struct fx *f, const char *agent, const char *key)
{
    struct nx_buf b = NX_BUF_INIT;

    nx_transcript_path(f->dir, agent, key, &b);
    return nx_buf_steal(&b);
}

static mode_t mode_of(const char *path)
{
    struct stat st;

    assert_int_equal(lstat(path, &st), 0);
    return st.st_mode & 07777;
}

static const char conversation[] =
    "[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"what is the weather in Lisbon\"}]},"
    " {\"role\":\"assistant\",\"content\":[{\"type\":\"text\",\"text\":\"let me check\"},"
    "   {\"type\":\"tool_use\",\"id\":\"t1\",\"name\":\"weather_lookup\",\"input\":{\"city\":\"Lisbon\"}}]},"
    " {\"role\":\"user\",\"content\":[{\"type\":\"tool_result\",\"tool_use_id\":\"t1\","
    "   \"content\":\"sunny with a gentle breeze\",\"is_error\":false}]}]";

/* ---- session keys ---- */

static void test_session_key_parse_and_make(void **state)
{
    struct nx_session_key_parts p;
    char *k;

    (void)state;
    assert_int_equal(nx_session_key_parse("agent:main:telegram:12345:extra", &p), 0);
    assert_int_equal(p.agent_len, 4);
    assert_memory_equal(p.agent_id, "main", 4);
    assert_int_equal(p.channel_len, 8);
    assert_memory_equal(p.channel, "telegram", 8);
    assert_string_equal(p.peer, "12345:extra");
    assert_int_equal(nx_session_key_parse("agent:main:http:", &p), 0);
    assert_int_equal(p.peer_len, 0);
    assert_int_equal(nx_session_key_parse("agent::http:x", &p), NX_EINVAL);
    assert_int_equal(nx_session_key_parse("agent:main::x", &p), NX_EINVAL);
    assert_int_equal(nx_session_key_parse("agent:main", &p), NX_EINVAL);
    assert_int_equal(nx_session_key_parse("session:main:http:x", &p), NX_EINVAL);
    assert_int_equal(nx_session_key_parse(NULL, &p), NX_EINVAL);
    k = nx_session_key_make("main", "http", "a:b");
    assert_string_equal(k, "agent:main:http:a:b");
    free(k);
}

/* ---- history ---- */

static void test_history_append_then_load_returns_messages_in_order(void **state)
{
    struct fx *f = *state;
    json_t *want = json_loads(conversation, 0, NULL);
    json_t *got;

    assert_int_equal(append(f, "agent:main:http:alice", "main", conversation, 10, 20), 0);
    got = load(f, "agent:main:http:alice", 0);
    assert_true(json_equal(got, want));
    json_decref(got);
    got = load(f, "agent:main:http:nobody", 0);
    assert_int_equal(json_array_size(got), 0);
    json_decref(got);
    json_decref(want);
}

/* cache_control marks an older nexo stored with a client's message go as the history is read
 * (the agent sets its own; more than 4 in all and the Messages API refuses every turn) */
static void test_history_load_drops_stored_cache_marks(void **state)
{
    struct fx *f = *state;
    static const char stored[] =
        "[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"q\","
        "\"cache_control\":{\"type\":\"ephemeral\"}}]},"
        "{\"role\":\"assistant\",\"content\":[{\"type\":\"tool_use\",\"id\":\"t1\",\"name\":\"f\","
        "\"input\":{}}]},"
        "{\"role\":\"user\",\"content\":[{\"type\":\"tool_result\",\"tool_use_id\":\"t1\",\"content\":"
        "[{\"type\":\"text\",\"text\":\"r\",\"cache_control\":{\"type\":\"ephemeral\"}}]}]}]";

    assert_int_equal(append(f, "agent:main:http:marks", "main", stored, 1, 1), 0);
    json_t *got = load(f, "agent:main:http:marks", 0);
    char *text = json_dumps(got, JSON_COMPACT);
    assert_int_equal(json_array_size(got), 3);
    assert_null(strstr(text, "cache_control"));
    assert_non_null(strstr(text, "\"text\":\"r\""));
    free(text);
    json_decref(got);
}

struct loaded {
    int calls;
    int rc;
    json_t *rows;
};

static void on_loaded(int rc, json_t *rows, void *arg)
{
    struct loaded *l = arg;

    l->calls++;
    l->rc = rc;
    l->rows = rows;
}

/* A load waits only for its own session's appends: a new session's load completes while
 * another session's append sits in an open batch (a 5 s window); a load queued right after an
 * append of its session sees that append. */
static void test_history_load_waits_only_for_its_own_session(void **state)
{
    struct fx *f = *state;
    struct nx_store_opts opts = {.batch_window_ms = 5000};
    json_t *msgs = json_loads(conversation, 0, NULL);
    struct nx_history_append a = {
        .session_key = "agent:main:http:bob", .agent_id = "main", .messages = msgs,
    };
    struct loaded fresh = {0};
    struct loaded own = {0};

    sfx_close(&f->loop, &f->s);
    assert_int_equal(sfx_open(&f->loop, f->dir, &opts, &f->s), 0);
    nx_history_append(f->s, f->dir, &a, on_done, f);
    nx_history_load(f->s, "agent:main:http:carol", 0, on_loaded, &fresh);
    sfx_run_until(&f->loop, &fresh.calls, 1);
    assert_int_equal(fresh.rc, 0);
    assert_int_equal(json_array_size(fresh.rows), 0);
    assert_int_equal(f->calls, 0); /* bob's append is still in its batch */

    nx_history_load(f->s, "agent:main:http:bob", 0, on_loaded, &own);
    sfx_run_until(&f->loop, &own.calls, 1);
    assert_int_equal(f->calls, 1);
    assert_int_equal(f->rc, 0);
    assert_int_equal(own.rc, 0);
    assert_true(json_equal(own.rows, msgs));
    json_decref(fresh.rows);
    json_decref(own.rows);
    json_decref(msgs);
}

/* A window of the last rows with no place a conversation can begin (one long tool exchange)
 * reaches back to the nearest one instead of coming back empty. */
static void test_history_load_reaches_back_to_a_clean_start(void **state)
{
    struct fx *f = *state;
    const char *key = "agent:main:http:tooly";
    static const char chain[] =
        "[{\"role\":\"user\",\"content\":\"go\"},"
        " {\"role\":\"assistant\",\"content\":[{\"type\":\"tool_use\",\"id\":\"a\","
        "   \"name\":\"t\",\"input\":{}}]},"
        " {\"role\":\"user\",\"content\":[{\"type\":\"tool_result\",\"tool_use_id\":\"a\","
        "   \"content\":\"1\"}]},"
        " {\"role\":\"assistant\",\"content\":[{\"type\":\"tool_use\",\"id\":\"b\","
        "   \"name\":\"t\",\"input\":{}}]},"
        " {\"role\":\"user\",\"content\":[{\"type\":\"tool_result\",\"tool_use_id\":\"b\","
        "   \"content\":\"2\"}]},"
        " {\"role\":\"assistant\",\"content\":[{\"type\":\"text\",\"text\":\"done\"}]}]";
    json_t *got;

    assert_int_equal(append(f, key, "main", chain, 0, 0), 0);
    got = load(f, key, 2);
    assert_int_equal(json_array_size(got), 6);
    assert_string_equal(json_string_value(json_object_get(json_array_get(got, 0), "content")), "go");
    json_decref(got);
}

static void test_history_second_append_continues_seq_and_load_max(void **state)
{
    struct fx *f = *state;
    const char *key = "agent:main:telegram:42";
    json_t *got;

    assert_int_equal(append(f, key, NULL, conversation, 0, 0), 0);
    assert_int_equal(append(f, key, "main",
                            "[{\"role\":\"assistant\",\"content\":[{\"type\":\"text\",\"text\":\"four\"}]},"
                            " {\"role\":\"user\",\"content\":\"five\"}]",
                            0, 0),
                     0);
    assert_int_equal(read_int(f, "SELECT count(*) FROM messages"), 5);
    assert_int_equal(read_int(f, "SELECT group_concat(seq, '') FROM (SELECT seq FROM messages "
                                 "ORDER BY id)"),
                     12345);
    got = load(f, key, 0);
    assert_int_equal(json_array_size(got), 5);
    json_decref(got);

    /* the last 2 rows, from the first that can begin a conversation: the assistant's "four"
     * cannot (the APIs want a user message first) */
    got = load(f, key, 2);
    assert_int_equal(json_array_size(got), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(got, 0), "content")),
                        "five");
    json_decref(got);
    /* nor can the tool result: a window never starts inside a tool exchange */
    got = load(f, key, 3);
    assert_int_equal(json_array_size(got), 1);
    json_decref(got);
    got = load(f, key, 5);
    assert_int_equal(json_array_size(got), 5);
    json_decref(got);
    got = load(f, key, 100);
    assert_int_equal(json_array_size(got), 5);
    json_decref(got);
}

/* Statements are cached per store thread: the store must still close cleanly, and a store
 * reopened (a new thread) must prepare its own. */
static const char *exec_sql; /* what exec_job runs (one at a time) */

static int exec_job(sqlite3 *db, void *arg)
{
    (void)arg;
    return sqlite3_exec(db, exec_sql, NULL, NULL, NULL) == SQLITE_OK ? 0 : NX_EDB;
}

static int exec_write(struct fx *f, const char *sql)
{
    int target = f->calls + 1;

    exec_sql = sql;
    nx_store_write(f->s, exec_job, on_done, f);
    run_until(f, target);
    return f->rc;
}

static int index_now(struct fx *f)
{
    int target = f->calls + 1;

    nx_transcripts_index(f->s, on_done, f);
    run_until(f, target);
    return f->rc;
}

/* The full-text index follows the history behind a watermark: an append asks for it later, a
 * close (or a search) catches it up, and the index only ever covers each message once. */
static void test_transcripts_index_follows_the_history(void **state)
{
    struct fx *f = *state;

    assert_int_equal(append(f, "agent:main:http:alice", "main", conversation, 0, 0), 0);
    sfx_close(&f->loop, &f->s); /* what was asked for later runs before the last commit */
    assert_int_equal(sfx_open(&f->loop, f->dir, NULL, &f->s), 0);
    assert_int_equal(read_int(f, "SELECT count(*) FROM transcripts_fts"), 3);
    assert_int_equal(read_int(f, "SELECT max(rowid) FROM transcripts_fts"),
                     read_int(f, "SELECT max(id) FROM messages"));
    assert_int_equal(index_now(f), 0); /* nothing new: nothing indexed twice */
    assert_int_equal(read_int(f, "SELECT count(*) FROM transcripts_fts"), 3);
    assert_int_equal(search(f, "breeze", "main"), 0);
    assert_int_equal(json_array_size(f->rows), 1);
}

/* An index that fails (here its table is gone) never fails an append: the history commits, the
 * failure is logged, and the rows are indexed once the index works again. */
static void test_transcripts_index_failure_keeps_history_and_recovers(void **state)
{
    struct fx *f = *state;
    json_t *got;

    assert_int_equal(exec_write(f, "ALTER TABLE transcripts_fts RENAME TO fts_away"), 0);
    assert_int_equal(append(f, "agent:main:http:bob", "main",
                            "[{\"role\":\"user\",\"content\":\"kumquat season\"}]", 0, 0),
                     0);
    assert_int_equal(index_now(f), NX_EDB);
    got = load(f, "agent:main:http:bob", 0);
    assert_int_equal(json_array_size(got), 1);
    json_decref(got);
    assert_int_equal(read_int(f, "SELECT count(*) FROM fts_away"), 0);

    assert_int_equal(exec_write(f, "ALTER TABLE fts_away RENAME TO transcripts_fts"), 0);
    assert_int_equal(search(f, "kumquat", NULL), 0);
    assert_int_equal(json_array_size(f->rows), 1);
}

/* Messages without text get no row; the index still moves past them (300 of them: more than
 * one catch-up reads), and the next message with text is found. */
static void test_transcripts_index_moves_past_messages_without_text(void **state)
{
    struct fx *f = *state;
    struct nx_buf many = NX_BUF_INIT;

    nx_buf_putc(&many, '[');
    for (int i = 0; i < 300; i++)
        nx_buf_printf(&many, "%s{\"role\":\"assistant\",\"content\":\"\"}", i ? "," : "");
    nx_buf_putc(&many, ']');
    assert_int_equal(append(f, "agent:main:http:carol", "main", nx_buf_cstr(&many), 0, 0), 0);
    nx_buf_cleanup(&many);
    assert_int_equal(index_now(f), 0);
    assert_int_equal(read_int(f, "SELECT count(*) FROM transcripts_fts"), 0);
    assert_int_equal(read_int(f, "SELECT scanned_upto FROM transcripts_index"), 300);
    assert_int_equal(append(f, "agent:main:http:carol", "main",
                            "[{\"role\":\"user\",\"content\":\"quince jam\"}]", 0, 0),
                     0);
    assert_int_equal(search(f, "quince", NULL), 0);
    assert_int_equal(json_array_size(f->rows), 1);
    assert_int_equal(read_int(f, "SELECT max(rowid) FROM transcripts_fts"), 301);
}

static void test_history_store_closes_cleanly_and_reopens(void **state)
{
    struct fx *f = *state;
    char log_path[PATH_MAX];
    char *log;
    json_t *got;
    int fd;

    assert_int_equal(append(f, "agent:main:http:alice", "main", conversation, 0, 0), 0);
    json_decref(load(f, "agent:main:http:alice", 0));
    assert_int_equal(search(f, "breeze", NULL), 0);

    snprintf(log_path, sizeof log_path, "%s/close.log", f->tmp);
    fd = open(log_path, O_CREAT | O_TRUNC | O_WRONLY, 0600);
    assert_true(fd >= 0);
    nx_log_set_fd(fd);
    sfx_close(&f->loop, &f->s);
    nx_log_set_fd(2);
    close(fd);
    log = slurp(log_path);
    assert_non_null(log);
    assert_string_equal(log, ""); /* no "closing ...: unable to close due to unfinalized statements" */
    free(log);

    assert_int_equal(sfx_open(&f->loop, f->dir, NULL, &f->s), 0);
    assert_int_equal(append(f, "agent:main:http:alice", "main", "[{\"role\":\"user\",\"content\":\"4\"}]",
                            0, 0),
                     0);
    got = load(f, "agent:main:http:alice", 0);
    assert_int_equal(json_array_size(got), 4);
    json_decref(got);
}

static void test_history_session_totals_add_up(void **state)
{
    struct fx *f = *state;
    const char *key = "agent:main:whatsapp:+351:9";

    assert_int_equal(append(f, key, "main", conversation, 100, 7), 0);
    assert_int_equal(append(f, key, "main", "[{\"role\":\"user\",\"content\":\"x\"}]", 50, 3), 0);
    assert_int_equal(append(f, "agent:other:http:z", "other", "[{\"role\":\"user\",\"content\":\"y\"}]",
                            1, 1),
                     0);
    assert_int_equal(read_int(f, "SELECT message_count FROM sessions WHERE key='agent:main:whatsapp:+351:9'"),
                     4);
    assert_int_equal(read_int(f, "SELECT input_tokens FROM sessions WHERE key='agent:main:whatsapp:+351:9'"),
                     150);
    assert_int_equal(read_int(f, "SELECT output_tokens FROM sessions WHERE key='agent:main:whatsapp:+351:9'"),
                     10);
    assert_int_equal(read_int(f, "SELECT count(*) FROM sessions WHERE agent_id='main' AND "
                                 "channel='whatsapp' AND peer='+351:9' AND created_at <= updated_at "
                                 "AND created_at > 1600000000000"),
                     1);
    assert_int_equal(read_int(f, "SELECT count(*) FROM sessions"), 2);
}

static void test_history_append_refuses_bad_input_and_stores_nothing(void **state)
{
    struct fx *f = *state;

    /* second message has no content: the whole append is refused */
    assert_int_equal(append(f, "agent:main:http:a", "main",
                            "[{\"role\":\"user\",\"content\":\"ok\"}, {\"role\":\"user\"}]", 1, 1),
                     NX_EINVAL);
    /* the key names another agent */
    assert_int_equal(append(f, "agent:main:http:a", "other", "[{\"role\":\"user\",\"content\":\"x\"}]",
                            1, 1),
                     NX_EINVAL);
    /* not a key, and no agent to file it under */
    assert_int_equal(append(f, "freeform", NULL, "[{\"role\":\"user\",\"content\":\"x\"}]", 1, 1),
                     NX_EINVAL);
    assert_int_equal(read_int(f, "SELECT count(*) FROM sessions"), 0);
    assert_int_equal(read_int(f, "SELECT count(*) FROM messages"), 0);
    assert_int_equal(read_int(f, "SELECT count(*) FROM transcripts_fts"), 0);
    /* a free-form key is fine with an agent id */
    assert_int_equal(append(f, "freeform", "main", "[{\"role\":\"user\",\"content\":\"x\"}]", 1, 1), 0);
    assert_int_equal(read_int(f, "SELECT count(*) FROM sessions WHERE agent_id='main'"), 1);
}

/* ---- transcripts ---- */

static bool rows_have_session(const json_t *rows, const char *key)
{
    size_t i;
    const json_t *r;

    json_array_foreach(rows, i, r) {
        if (strcmp(json_string_value(json_object_get(r, "session_key")), key) == 0)
            return true;
    }
    return false;
}

static void test_transcripts_search_finds_text_and_tool_results_by_agent(void **state)
{
    struct fx *f = *state;
    const json_t *row;

    assert_int_equal(append(f, "agent:main:http:alice", "main", conversation, 0, 0), 0);
    assert_int_equal(append(f, "agent:ops:http:bob", "ops",
                            "[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":"
                            "\"Lisbon deployment is sunny too\"}]}]",
                            0, 0),
                     0);

    assert_int_equal(search(f, "weather Lisbon", NULL), 0);
    assert_int_equal(json_array_size(f->rows), 1);
    row = json_array_get(f->rows, 0);
    assert_string_equal(json_string_value(json_object_get(row, "agent_id")), "main");
    assert_string_equal(json_string_value(json_object_get(row, "session_key")), "agent:main:http:alice");
    assert_string_equal(json_string_value(json_object_get(row, "role")), "user");
    assert_non_null(strstr(json_string_value(json_object_get(row, "snippet")), "[weather]"));
    assert_int_equal(strlen(json_string_value(json_object_get(row, "timestamp"))), 24);

    /* a tool result and a tool name */
    assert_int_equal(search(f, "breeze", NULL), 0);
    assert_int_equal(json_array_size(f->rows), 1);
    assert_int_equal(search(f, "weather_lookup", NULL), 0);
    assert_int_equal(json_array_size(f->rows), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(f->rows, 0), "role")),
                        "assistant");

    /* both agents, then filtered; accents do not matter */
    assert_int_equal(search(f, "sunny", NULL), 0);
    assert_int_equal(json_array_size(f->rows), 2);
    assert_int_equal(search(f, "sunny", "ops"), 0);
    assert_int_equal(json_array_size(f->rows), 1);
    assert_true(rows_have_session(f->rows, "agent:ops:http:bob"));
    assert_int_equal(search(f, "lisbón", "main"), 0);
    assert_int_equal(json_array_size(f->rows), 1);
    assert_int_equal(search(f, "sunny", "nobody"), 0);
    assert_int_equal(json_array_size(f->rows), 0);
    /* FTS5 syntax works */
    assert_int_equal(search(f, "sunny NOT deployment", NULL), 0);
    assert_int_equal(json_array_size(f->rows), 1);
    assert_int_equal(search(f, "weath*", NULL), 0);
    assert_int_equal(json_array_size(f->rows), 2);
}

static void test_transcripts_secrets_never_reach_jsonl_or_fts(void **state)
{
    struct fx *f = *state;
    const char *key = "agent:main:http:carol";
    char *path;
    char *text;
    json_t *got;
    char msg[1024];

    snprintf(msg, sizeof msg,
             "[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"my key is %s please "
             "remember pineapple\"}]},"
             " {\"role\":\"assistant\",\"content\":[{\"type\":\"tool_use\",\"id\":\"t\",\"name\":"
             "\"http_fetch\",\"input\":{\"headers\":\"Authorization: Bearer %s\"}}]},"
             " {\"role\":\"user\",\"content\":[{\"type\":\"tool_result\",\"tool_use_id\":\"t\","
             "\"content\":[{\"type\":\"text\",\"text\":\"echo Bearer %s mango\"}]}]}]",
             SECRET_KEY, BEARER_TOKEN, BEARER_TOKEN);
    assert_int_equal(append(f, key, "main", msg, 0, 0), 0);

    path = transcript_path(f, "main", key);
    text = slurp(path);
    assert_non_null(text);
    assert_null(strstr(text, "Zq8xW2vB7nK4mP9rT3yL6hJ1cF5dG0sA8eQ2wR4t"));
    assert_null(strstr(text, "s3cr3tSignatureXYZ"));
    assert_non_null(strstr(text, "pineapple"));
    assert_non_null(strstr(text, "mango"));
    assert_non_null(strstr(text, "[REDACTED]"));
    free(text);
    free(path);

    assert_int_equal(search(f, "pineapple", NULL), 0);
    assert_int_equal(json_array_size(f->rows), 1);
    assert_int_equal(search(f, "mango", NULL), 0);
    assert_int_equal(json_array_size(f->rows), 1);
    assert_int_equal(search(f, "Zq8xW2vB7nK4mP9rT3yL6hJ1cF5dG0sA8eQ2wR4t", NULL), 0);
    assert_int_equal(json_array_size(f->rows), 0);
    assert_int_equal(search(f, "s3cr3tSignatureXYZ", NULL), 0);
    assert_int_equal(json_array_size(f->rows), 0);
    assert_int_equal(search(f, "\"" SECRET_KEY "\"", NULL), 0);
    assert_int_equal(json_array_size(f->rows), 0);
    assert_int_equal(read_int(f, "SELECT count(*) FROM transcripts_fts WHERE content LIKE '%Zq8xW2vB%' "
                                 "OR content LIKE '%s3cr3tSignature%'"),
                     0);
    assert_int_equal(read_int(f, "SELECT count(*) FROM transcripts_fts WHERE content LIKE '%[REDACTED]%'"),
                     2);

    /* the history itself is kept as it was: the model needs it */
    got = load(f, key, 0);
    text = json_dumps(got, 0);
    assert_non_null(strstr(text, "s3cr3tSignatureXYZ"));
    free(text);
    json_decref(got);
}

static void test_transcripts_jsonl_lines_parse_and_files_are_private(void **state)
{
    struct fx *f = *state;
    const char *key = "agent:main:http:dave";
    char *path;
    char *text;
    char *line;
    char *save = NULL;
    char agent_dir[PATH_MAX];
    char tr_dir[PATH_MAX];
    int n = 0;

    umask(0);
    assert_int_equal(append(f, key, "main", conversation, 0, 0), 0);
    umask(022);
    assert_int_equal(append(f, key, "main", "[{\"role\":\"user\",\"content\":\"line\\nbreak \\u2028\"}]",
                            0, 0),
                     0);
    path = transcript_path(f, "main", key);
    text = slurp(path);
    assert_non_null(text);
    for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        json_error_t err;
        json_t *v = json_loads(line, 0, &err);
        assert_non_null(v);
        assert_string_equal(json_string_value(json_object_get(v, "session")), key);
        assert_string_equal(json_string_value(json_object_get(v, "agent")), "main");
        assert_string_equal(json_string_value(json_object_get(v, "source")), "http");
        assert_non_null(json_string_value(json_object_get(v, "role")));
        assert_non_null(json_object_get(v, "content"));
        assert_int_equal(strlen(json_string_value(json_object_get(v, "ts"))), 24);
        json_decref(v);
        n++;
    }
    assert_int_equal(n, 4);
    free(text);

    snprintf(tr_dir, sizeof tr_dir, "%s/transcripts", f->dir);
    snprintf(agent_dir, sizeof agent_dir, "%s/transcripts/main", f->dir);
    assert_int_equal(mode_of(tr_dir), 0700);
    assert_int_equal(mode_of(agent_dir), 0700);
    assert_int_equal(mode_of(path), 0600);

    /* removed by an operator: made again, still private */
    assert_int_equal(unlink(path), 0);
    assert_int_equal(rmdir(agent_dir), 0);
    umask(0);
    assert_int_equal(append(f, key, "main", "[{\"role\":\"user\",\"content\":\"again\"}]", 0, 0), 0);
    umask(022);
    assert_int_equal(mode_of(agent_dir), 0700);
    assert_int_equal(mode_of(path), 0600);
    text = slurp(path);
    assert_non_null(strstr(text, "again"));
    free(text);
    free(path);
}

/* An image's base64 bytes stay in the history (the model needs them) but not in the
 * transcript, which says how many there were. */
static void test_transcripts_leave_image_bytes_out(void **state)
{
    struct fx *f = *state;
    const char *key = "agent:main:http:erin";
    struct nx_buf msg = NX_BUF_INIT;
    char *path, *text;
    json_t *got;

    nx_buf_puts(&msg, "[{\"role\":\"user\",\"content\":[{\"type\":\"image\",\"source\":{\"type\":"
                      "\"base64\",\"media_type\":\"image/png\",\"data\":\"");
    for (int i = 0; i < 1000; i++)
        nx_buf_putc(&msg, 'A');
    nx_buf_puts(&msg, "\"}},{\"type\":\"text\",\"text\":\"look\"}]}]");
    assert_int_equal(append(f, key, "main", nx_buf_cstr(&msg), 0, 0), 0);
    path = transcript_path(f, "main", key);
    text = slurp(path);
    assert_non_null(text);
    assert_null(strstr(text, "AAAAAAAAAAAAAAAA"));
    assert_non_null(strstr(text, "[base64, 1000 bytes not kept in the transcript]"));
    assert_non_null(strstr(text, "\"media_type\":\"image/png\""));
    free(text);
    free(path);
    got = load(f, key, 0);
    text = json_dumps(got, JSON_COMPACT);
    assert_non_null(strstr(text, "AAAAAAAAAAAAAAAAAAAA"));
    free(text);
    json_decref(got);
    nx_buf_cleanup(&msg);
}

/* The JSONL writer's redacted dump: jansson's compact form, every string and key redacted. */
static void test_transcripts_redacted_dump_is_jansson_form_without_secrets(void **state)
{
    (void)state;
    json_t *v = json_loads("[{\"type\":\"text\",\"text\":\"key sk-abcdefghijklmnop0123 used\"},"
                           "{\"n\":-42,\"r\":0.5,\"whole\":2.0,\"t\":true,\"f\":false,\"z\":null,"
                           "\"esc\":\"tab\\t \\\"q\\\" \\u0001 caf\\u00e9\",\"sk-abcdefghijklmnop0123\":[]}]",
                           0, NULL);
    struct nx_buf b = NX_BUF_INIT;

    assert_non_null(v);
    nx_json_dump_redacted(v, &b);
    assert_string_equal(nx_buf_cstr(&b),
                        "[{\"type\":\"text\",\"text\":\"key [REDACTED] used\"},{\"n\":-42,\"r\":0.5,"
                        "\"whole\":2.0,\"t\":true,\"f\":false,\"z\":null,"
                        "\"esc\":\"tab\\t \\\"q\\\" \\u0001 caf\xc3\xa9\",\"[REDACTED]\":[]}]");
    json_decref(v);
    /* a tool call's arguments: values under secret-named keys go, whatever they look like */
    v = json_loads("{\"url\":\"https://x/bot7123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw9/getMe\","
                   "\"headers\":{\"X-Api-Key\":\"xk-live-Zq81\",\"Authorization\":\"token ghp_16C7\","
                   "\"Accept\":\"text/plain\"},\"password\":\"hunter2\",\"pin_token\":1234,"
                   "\"token\":\"t0k\",\"eos_token\":\"</s>\"}", 0, NULL);
    assert_non_null(v);
    nx_buf_reset(&b);
    nx_json_dump_redacted(v, &b);
    assert_string_equal(nx_buf_cstr(&b),
                        "{\"url\":\"https://x/bot[REDACTED]/getMe\","
                        "\"headers\":{\"X-Api-Key\":\"[REDACTED]\","
                        "\"Authorization\":\"[REDACTED]\",\"Accept\":\"text/plain\"},"
                        "\"password\":\"[REDACTED]\",\"pin_token\":\"[REDACTED]\","
                        "\"token\":\"[REDACTED]\",\"eos_token\":\"</s>\"}");
    nx_buf_reset(&b);
    nx_json_put_redacted(&b, "bad \xff utf-8", 11);
    assert_string_equal(nx_buf_cstr(&b), "\"bad \\ufffd utf-8\"");
    nx_buf_cleanup(&b);
    json_decref(v);
}

static void test_transcripts_file_names_cannot_escape(void **state)
{
    static const char *const evil[] = {
        "../../etc", "a/b", "x:y", "..", ".", "", ".hidden", "%2e%2e", "a\nb", "/abs/path",
    };
    struct nx_buf b = NX_BUF_INIT;
    char longname[600];

    (void)state;
    for (size_t i = 0; i < sizeof evil / sizeof evil[0]; i++) {
        nx_buf_reset(&b);
        nx_transcript_name(evil[i], &b);
        assert_true(b.len > 0);
        assert_null(strchr(b.data, '/'));
        assert_true(b.data[0] != '.');
        for (size_t k = 0; k < b.len; k++)
            assert_non_null(strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-%",
                                   b.data[k]));
    }
    nx_buf_reset(&b);
    nx_transcript_name("agent:main:http:a/b c", &b);
    assert_string_equal(b.data, "agent%3Amain%3Ahttp%3Aa%2Fb%20c");
    nx_buf_reset(&b);
    nx_transcript_name("main.v2_x-y", &b);
    assert_string_equal(b.data, "main.v2_x-y");

    /* long names are cut and hashed; two that share the prefix stay apart */
    memset(longname, '/', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    nx_buf_reset(&b);
    nx_transcript_name(longname, &b);
    assert_true(b.len <= 96 + 1 + 32);
    assert_non_null(strchr(b.data, '~'));
    char *first = nx_strdup(b.data);
    longname[sizeof longname - 2] = 'x';
    nx_buf_reset(&b);
    nx_transcript_name(longname, &b);
    assert_string_not_equal(first, b.data);
    free(first);

    /* a secret as a name: its redacted form and a digest, never the secret */
    static const char *const keyed[] = {"agent:main:http:sk-ant-api03-Q7vR2mX9kL4pW8nB3cT6yH1jF5dG0sA2",
                                        "agent:main:http:sk-ant-api03-Q7vR2mX9kL4pW8nB3cT6yH1jF5dG0sA3"};
    char *names[2];
    for (size_t i = 0; i < 2; i++) {
        nx_buf_reset(&b);
        nx_transcript_name(keyed[i], &b);
        assert_null(strstr(b.data, "Q7vR2mX9"));
        assert_true(strncmp(b.data, "agent%3Amain%3Ahttp%3A%5BREDACTED%5D~", 37) == 0);
        assert_int_equal(b.len, 37 + 32);
        names[i] = nx_strdup(b.data);
    }
    assert_string_not_equal(names[0], names[1]);
    free(names[0]);
    free(names[1]);

    /* a secret beside a [REDACTED] already there is still found */
    nx_buf_reset(&b);
    nx_transcript_name("agent:main:http:password=[REDACTED]hunter2secret", &b);
    assert_null(strstr(b.data, "hunter2"));

    /* configured patterns (a reload may change them) do not rename a session's file */
    char err[128];
    nx_buf_reset(&b);
    nx_transcript_name("agent:main:whatsapp:+15551234567", &b);
    char *before = nx_strdup(b.data);
    assert_int_equal(nx_redact_add_pattern("\\+[0-9]{11}", err, sizeof err), 0);
    nx_buf_reset(&b);
    nx_transcript_name("agent:main:whatsapp:+15551234567", &b);
    nx_redact_clear_patterns();
    assert_string_equal(b.data, before);
    free(before);
    nx_buf_cleanup(&b);
}

static void test_transcripts_evil_peer_stays_inside_agent_dir(void **state)
{
    struct fx *f = *state;
    static const char *const keys[] = {
        "agent:main:http:../../etc", "agent:main:http:a/b", "agent:main:http:x:y",
        "agent:main:http:/etc/passwd", "agent:main:http:..",
    };
    char agent_dir[PATH_MAX];
    char real_agent[PATH_MAX];
    char real_file[PATH_MAX];

    snprintf(agent_dir, sizeof agent_dir, "%s/transcripts/main", f->dir);
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        char *path;
        assert_int_equal(append(f, keys[i], "main", "[{\"role\":\"user\",\"content\":\"hi\"}]", 0, 0), 0);
        path = transcript_path(f, "main", keys[i]);
        assert_non_null(realpath(agent_dir, real_agent));
        assert_non_null(realpath(path, real_file));
        /* directly inside the agent's directory */
        assert_int_equal(strncmp(real_file, real_agent, strlen(real_agent)), 0);
        assert_int_equal(real_file[strlen(real_agent)], '/');
        assert_null(strchr(real_file + strlen(real_agent) + 1, '/'));
        free(path);
    }
    /* a key that is not UTF-8 (a peer cut inside a character) still gives valid JSON */
    assert_int_equal(append(f, "agent:main:http:caf\xc3", "main",
                            "[{\"role\":\"user\",\"content\":\"croissant\"}]", 0, 0), 0);
    char *p8 = transcript_path(f, "main", "agent:main:http:caf\xc3");
    char *t8 = slurp(p8);
    assert_non_null(t8);
    json_t *v8 = json_loads(t8, 0, NULL);
    assert_non_null(v8);
    assert_string_equal(json_string_value(json_object_get(v8, "session")), "agent:main:http:caf?");
    json_decref(v8);
    free(t8);
    free(p8);
    assert_int_equal(search(f, "croissant", NULL), 0);
    assert_int_equal(json_array_size(f->rows), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(f->rows, 0), "session_key")),
                        "agent:main:http:caf?");
    /* an agent id cannot climb out either */
    assert_int_equal(append(f, "agent:..:http:x", NULL, "[{\"role\":\"user\",\"content\":\"hi\"}]", 0, 0), 0);
    char *path = transcript_path(f, "..", "agent:..:http:x");
    assert_non_null(strstr(path, "/transcripts/%2E./"));
    assert_int_equal(access(path, F_OK), 0);
    free(path);
}

static void test_transcripts_write_failure_keeps_history(void **state)
{
    struct fx *f = *state;
    char tr[PATH_MAX];
    int fd;
    json_t *got;

    /* a file where the transcripts directory should be */
    snprintf(tr, sizeof tr, "%s/transcripts", f->dir);
    fd = open(tr, O_CREAT | O_WRONLY, 0600);
    assert_true(fd >= 0);
    close(fd);
    nx_log_set_level(NX_LOG_OFF);
    assert_int_equal(append(f, "agent:main:http:eve", "main", conversation, 0, 0), 0);
    nx_log_set_level(NX_LOG_INFO);
    got = load(f, "agent:main:http:eve", 0);
    assert_int_equal(json_array_size(got), 3);
    json_decref(got);
    assert_int_equal(search(f, "breeze", NULL), 0);
    assert_int_equal(json_array_size(f->rows), 1);
}

static void test_transcripts_malformed_query_is_an_error_not_a_crash(void **state)
{
    struct fx *f = *state;
    static const char *const odd[] = {
        "\"unterminated", "AND", "foo OR", "(", "NEAR(", "nosuchcol:x", "*", "^", "a:b:c",
        "\"\"\"", "weather)", "'; DROP TABLE messages; --",
    };

    assert_int_equal(append(f, "agent:main:http:alice", "main", conversation, 0, 0), 0);
    for (size_t i = 0; i < sizeof odd / sizeof odd[0]; i++) {
        int rc = search(f, odd[i], NULL);
        assert_true(rc == 0 || rc == NX_EINVAL);
        if (rc == 0)
            assert_true(json_is_array(f->rows));
        else
            assert_null(f->rows);
    }
    /* a broken query is searched as a phrase of its words */
    assert_int_equal(search(f, "gentle breeze)", NULL), 0);
    assert_int_equal(json_array_size(f->rows), 1);
    assert_int_equal(search(f, "", NULL), NX_EINVAL);
    assert_null(f->rows);
    assert_int_equal(search(f, "   ", NULL), NX_EINVAL);
    assert_int_equal(search(f, NULL, NULL), NX_EINVAL);
    assert_int_equal(read_int(f, "SELECT count(*) FROM messages"), 3);
}

/* ---- trimming ---- */

static void test_history_trim_keeps_newest_within_budget_and_tool_pairs(void **state)
{
    json_t *m = json_loads(conversation, 0, NULL);
    json_t *big;
    uint64_t last;
    char text[2100];

    (void)state;
    /* everything fits */
    assert_int_equal(nx_history_trim(m, 100000), 0);
    assert_int_equal(json_array_size(m), 3);
    /* the last message is a tool result: its call must stay, so the start goes back to the
     * first user message */
    last = nx_history_estimate_tokens(json_array_get(m, 2));
    assert_true(last > 4);
    assert_int_equal(nx_history_trim(m, last), 0);
    assert_int_equal(json_array_size(m), 3);
    json_decref(m);

    memset(text, 'a', sizeof text - 1);
    text[sizeof text - 1] = '\0';
    m = json_array();
    for (int i = 0; i < 6; i++) {
        json_array_append_new(m, json_pack("{s:s, s:[{s:s, s:s}]}", "role", i % 2 ? "assistant" : "user",
                                           "content", "type", "text", "text", text));
    }
    big = json_array_get(m, 0);
    assert_int_equal(nx_history_estimate_tokens(big), 4 + 525);
    /* room for three: drops three, then one more to start on a user message */
    assert_int_equal(nx_history_trim(m, 3 * 529), 4);
    assert_int_equal(json_array_size(m), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(m, 0), "role")), "user");
    /* [user, assistant] over budget: the assistant message cannot start, so the user stays */
    assert_int_equal(nx_history_trim(m, 1), 0);
    assert_int_equal(json_array_size(m), 2);
    /* one user message over budget on its own: it stays, the rest goes */
    json_array_append_new(m, json_pack("{s:s, s:s}", "role", "user", "content", text));
    assert_int_equal(nx_history_trim(m, 1), 2);
    assert_int_equal(json_array_size(m), 1);
    json_decref(m);
}

/* The estimate goes by the character outside ASCII: CJK text is about a token a character,
 * not three bytes' worth of a quarter each. */
static void test_history_estimate_counts_characters_of_other_scripts(void **state)
{
    (void)state;
    assert_int_equal(nx_history_text_tokens("", 0), 0);
    assert_int_equal(nx_history_text_tokens("hello world", 11), 3);      /* 11 bytes / 4 */
    assert_int_equal(nx_history_text_tokens("\xe4\xbd\xa0\xe5\xa5\xbd", 6), 2); /* 你好 */
    assert_int_equal(nx_history_text_tokens("\xd0\xbf\xd1\x80\xd0\xb8", 6), 2); /* при: 1.5 */
    assert_int_equal(nx_history_text_tokens("\xf0\x9f\x98\x80", 4), 2); /* one emoji */
    /* 700 CJK characters in one message: 700 tokens and the message's own 4 (bytes/4 said 525) */
    struct nx_buf text = NX_BUF_INIT;
    for (int i = 0; i < 700; i++)
        nx_buf_puts(&text, "\xe5\xad\x97");
    json_t *m = json_pack("{s:s, s:s}", "role", "user", "content", nx_buf_cstr(&text));
    assert_int_equal(nx_history_estimate_tokens(m), 4 + 700);
    json_decref(m);
    nx_buf_cleanup(&text);
}

/* ---- nexo transcripts ---- */

/* Runs nx_cmd_transcripts with stdout captured into *out. */
static int run_cmd(struct fx *f, char **out, int argc, char **argv)
{
    char path[PATH_MAX];
    int saved;
    int fd;
    int rc;

    char err_path[PATH_MAX];
    int saved_err;

    snprintf(path, sizeof path, "%s/stdout.txt", f->tmp);
    snprintf(err_path, sizeof err_path, "%s/stderr.txt", f->tmp); /* (last_stderr reads it) */
    fflush(stdout);
    fflush(stderr);
    saved = dup(STDOUT_FILENO);
    saved_err = dup(STDERR_FILENO);
    fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0600);
    assert_true(saved >= 0 && saved_err >= 0 && fd >= 0);
    dup2(fd, STDOUT_FILENO);
    close(fd);
    fd = open(err_path, O_CREAT | O_TRUNC | O_WRONLY, 0600);
    assert_true(fd >= 0);
    dup2(fd, STDERR_FILENO);
    close(fd);
    rc = nx_cmd_transcripts(argc, argv, f->dir);
    fflush(stdout);
    fflush(stderr);
    dup2(saved, STDOUT_FILENO);
    dup2(saved_err, STDERR_FILENO);
    close(saved);
    close(saved_err);
    *out = slurp(path);
    assert_non_null(*out);
    return rc;
}

/* What the last run_cmd wrote to stderr (free it). */
static char *last_stderr(struct fx *f)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/stderr.txt", f->tmp);
    return slurp(path);
}

static void test_cmd_transcripts_prints_hits(void **state)
{
    struct fx *f = *state;
    char *out;
    char *argv[8];
    json_t *rows;

    assert_int_equal(append(f, "agent:main:http:alice", "main", conversation, 0, 0), 0);
    assert_int_equal(append(f, "agent:ops:telegram:99", "ops",
                            "[{\"role\":\"assistant\",\"content\":\"sunny\\nin Porto\"}]", 0, 0),
                     0);
    sfx_close(&f->loop, &f->s); /* the command opens the store itself */

    nx_log_set_level(NX_LOG_WARN);
    argv[0] = "search";
    argv[1] = "breeze";
    assert_int_equal(run_cmd(f, &out, 2, argv), 0);
    /* <ts> <agent> <session> <role>: <snippet> */
    assert_int_equal(strlen(out) > 25, 1);
    assert_int_equal(out[4], '-');
    assert_int_equal(out[23], 'Z');
    assert_string_equal(out + 24, " main agent:main:http:alice user: sunny with a gentle [breeze]\n");
    free(out);

    argv[0] = "transcripts";
    argv[1] = "search";
    argv[2] = "sunny";
    argv[3] = "--agent";
    argv[4] = "ops";
    assert_int_equal(run_cmd(f, &out, 5, argv), 0);
    assert_non_null(strstr(out, " ops agent:ops:telegram:99 assistant: [sunny] in Porto\n"));
    assert_null(strstr(out, "alice"));
    free(out);

    argv[0] = "search";
    argv[1] = "sunny";
    argv[2] = "--json";
    argv[3] = "--limit=1";
    assert_int_equal(run_cmd(f, &out, 4, argv), 0);
    rows = json_loads(out, 0, NULL);
    assert_true(json_is_array(rows));
    assert_int_equal(json_array_size(rows), 1);
    json_decref(rows);
    free(out);

    argv[0] = "search";
    argv[1] = "zebra";
    assert_int_equal(run_cmd(f, &out, 2, argv), 0);
    assert_string_equal(out, "no matches\n");
    free(out);

    /* an --agent with no sessions at all (a typo?) is said so, with those that have some;
     * one that has sessions but no match gets no such note */
    char *err;
    argv[0] = "search";
    argv[1] = "sunny";
    argv[2] = "--agent";
    argv[3] = "opz";
    assert_int_equal(run_cmd(f, &out, 4, argv), 0);
    assert_string_equal(out, "no matches\n");
    free(out);
    err = last_stderr(f);
    assert_string_equal(err, "nexo: transcripts: no sessions of agent \"opz\" here; agents with "
                             "sessions: main, ops\n");
    free(err);
    argv[1] = "Porto"; /* (only ops said it) */
    argv[3] = "main";
    assert_int_equal(run_cmd(f, &out, 4, argv), 0);
    assert_string_equal(out, "no matches\n");
    free(out);
    err = last_stderr(f);
    assert_string_equal(err, "");
    free(err);

    /* usage errors */
    argv[0] = "search";
    assert_int_equal(run_cmd(f, &out, 1, argv), 2);
    free(out);
    argv[1] = "x";
    argv[2] = "--limit";
    argv[3] = "0";
    assert_int_equal(run_cmd(f, &out, 4, argv), 2);
    free(out);
    argv[2] = "--agent";
    assert_int_equal(run_cmd(f, &out, 3, argv), 2);
    free(out);
    argv[2] = "--bogus";
    assert_int_equal(run_cmd(f, &out, 3, argv), 2);
    free(out);
    argv[0] = "frobnicate";
    assert_int_equal(run_cmd(f, &out, 1, argv), 2);
    free(out);
    assert_int_equal(run_cmd(f, &out, 0, argv), 2);
    free(out);
    nx_log_set_level(NX_LOG_INFO);
    assert_int_equal(sfx_open(&f->loop, f->dir, NULL, &f->s), 0);
}

static void test_cmd_transcripts_without_database_says_no_matches(void **state)
{
    struct fx *f = *state;
    char *out;
    char *argv[] = {"search", "anything"};
    char db[PATH_MAX];
    char saved[sizeof f->dir];

    snprintf(saved, sizeof saved, "%s", f->dir);
    snprintf(f->dir, sizeof f->dir, "%s/nowhere", f->tmp);
    assert_int_equal(run_cmd(f, &out, 2, argv), 0);
    assert_string_equal(out, "no matches\n");
    free(out);
    snprintf(db, sizeof db, "%s/nexo.db", f->dir);
    assert_int_not_equal(access(db, F_OK), 0); /* nothing created */
    snprintf(f->dir, sizeof f->dir, "%s", saved);
}

/* Removes dir/transcripts/a, dir/transcripts and dir, once their files are gone. */
static void remove_tree(const char *dir)
{
    char path[512];
    snprintf(path, sizeof path, "%s/transcripts/a", dir);
    rmdir(path);
    snprintf(path, sizeof path, "%s/transcripts", dir);
    rmdir(path);
    rmdir(dir);
}

/* A write the disk cuts short (here the file-size limit) leaves no half line behind: the next
 * append starts a line of its own. */
static void test_transcript_failed_write_leaves_no_half_line(void **state)
{
    char dir[] = "/tmp/nx-tw-XXXXXX", path[512];
    struct rlimit old, lim;
    char big[300];
    struct nx_buf got = NX_BUF_INIT;

    (void)state;
    assert_non_null(mkdtemp(dir));
    assert_int_equal(nx_transcript_write(dir, "a", "s", "{\"n\":1}\n", 8), 0);
    memset(big, 'x', sizeof big);
    big[sizeof big - 1] = '\n';
    signal(SIGXFSZ, SIG_IGN);
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    lim = old;
    lim.rlim_cur = 108; /* 100 bytes of the 300 fit */
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    int rc = nx_transcript_write(dir, "a", "s", big, sizeof big);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, SIG_DFL);
    assert_int_equal(rc, NX_EIO);
    assert_int_equal(nx_transcript_write(dir, "a", "s", "{\"n\":3}\n", 8), 0);
    snprintf(path, sizeof path, "%s/transcripts/a/s.jsonl", dir);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char buf[1024];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    nx_buf_append(&got, buf, n);
    assert_string_equal(nx_buf_cstr(&got), "{\"n\":1}\n{\"n\":3}\n");
    nx_buf_cleanup(&got);
    /* a batch that did not commit takes its lines back */
    nx_transcripts_batch_end(true); /* (the writes above: committed) */
    assert_int_equal(nx_transcript_write(dir, "a", "s", "{\"n\":4}\n", 8), 0);
    nx_transcripts_batch_end(false);
    f = fopen(path, "r");
    assert_non_null(f);
    n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    assert_int_equal(n, 16);
    nx_transcripts_batch_end(true);
    unlink(path);
    remove_tree(dir);
}

static void read_file(const char *path, char *buf, size_t size)
{
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    size_t n = fread(buf, 1, size - 1, f);
    buf[n] = '\0';
    fclose(f);
}

/* A transcript file stays open between appends; one moved or removed meanwhile (log rotation,
 * an operator) is not written through the old descriptor: the next lines go to a new file at
 * its path, and a symlink put there is refused as at the first open. */
static void test_transcript_file_moved_away_is_opened_anew(void **state)
{
    char dir[] = "/tmp/nexo-tr-XXXXXX", path[512], moved[512], other[512], buf[256];

    (void)state;
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/transcripts/a/s.jsonl", dir);
    snprintf(moved, sizeof moved, "%s/transcripts/a/s.jsonl.1", dir);
    snprintf(other, sizeof other, "%s/elsewhere", dir);
    assert_int_equal(nx_transcript_write(dir, "a", "s", "{\"n\":1}\n", 8), 0);
    assert_int_equal(nx_transcript_write(dir, "a", "s", "{\"n\":2}\n", 8), 0);
    assert_int_equal(rename(path, moved), 0);
    assert_int_equal(nx_transcript_write(dir, "a", "s", "{\"n\":3}\n", 8), 0);
    read_file(moved, buf, sizeof buf);
    assert_string_equal(buf, "{\"n\":1}\n{\"n\":2}\n");
    read_file(path, buf, sizeof buf);
    assert_string_equal(buf, "{\"n\":3}\n");
    assert_int_equal(unlink(path), 0);
    assert_int_equal(nx_transcript_write(dir, "a", "s", "{\"n\":4}\n", 8), 0);
    read_file(path, buf, sizeof buf);
    assert_string_equal(buf, "{\"n\":4}\n");
    /* a symlink in its place: refused, the file it points to untouched */
    FILE *f = fopen(other, "w");
    assert_non_null(f);
    fclose(f);
    assert_int_equal(unlink(path), 0);
    assert_int_equal(symlink(other, path), 0);
    assert_int_equal(nx_transcript_write(dir, "a", "s", "{\"n\":5}\n", 8), NX_EIO);
    read_file(other, buf, sizeof buf);
    assert_string_equal(buf, "");
    nx_transcripts_batch_end(true);
    nx_transcripts_thread_end();
    unlink(path);
    unlink(moved);
    unlink(other);
    remove_tree(dir);
}

/* More sessions than files kept open, written in turn: each append still lands once, in its
 * own file, whichever files were closed to make room (the kept set is 64 at least). */
static void test_transcript_files_beyond_the_kept_ones(void **state)
{
    enum { SESSIONS = 300, ROUNDS = 3 };
    char dir[] = "/tmp/nexo-tk-XXXXXX", path[512], name[32], line[64], buf[512];

    struct rlimit old, lim;
    (void)state;
    assert_non_null(mkdtemp(dir));
    nx_transcripts_thread_end(); /* the kept set is sized at its first use: 64 for 4,096 files */
    assert_int_equal(getrlimit(RLIMIT_NOFILE, &old), 0);
    lim = old;
    lim.rlim_cur = old.rlim_cur < 4096 ? old.rlim_cur : 4096;
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &lim), 0);
    for (int r = 0; r < ROUNDS; r++) {
        for (int i = 0; i < SESSIONS; i++) {
            snprintf(name, sizeof name, "s%d", i);
            int n = snprintf(line, sizeof line, "{\"s\":%d,\"r\":%d}\n", i, r);
            assert_int_equal(nx_transcript_write(dir, "a", name, line, (size_t)n), 0);
        }
        nx_transcripts_batch_end(true);
    }
    for (int i = 0; i < SESSIONS; i++) {
        snprintf(path, sizeof path, "%s/transcripts/a/s%d.jsonl", dir, i);
        read_file(path, buf, sizeof buf);
        char want[256] = "";
        for (int r = 0; r < ROUNDS; r++)
            snprintf(want + strlen(want), sizeof want - strlen(want), "{\"s\":%d,\"r\":%d}\n", i, r);
        assert_string_equal(buf, want);
        unlink(path);
    }
    nx_transcripts_thread_end();
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &old), 0);
    remove_tree(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_session_key_parse_and_make),
        cmocka_unit_test_setup_teardown(test_history_load_drops_stored_cache_marks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_history_append_then_load_returns_messages_in_order, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_history_load_reaches_back_to_a_clean_start, setup, teardown),
        cmocka_unit_test_setup_teardown(test_history_load_waits_only_for_its_own_session, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_history_second_append_continues_seq_and_load_max, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_history_store_closes_cleanly_and_reopens, setup, teardown),
        cmocka_unit_test_setup_teardown(test_transcripts_index_follows_the_history, setup, teardown),
        cmocka_unit_test_setup_teardown(test_transcripts_index_moves_past_messages_without_text,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_transcripts_index_failure_keeps_history_and_recovers,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_history_session_totals_add_up, setup, teardown),
        cmocka_unit_test_setup_teardown(test_history_append_refuses_bad_input_and_stores_nothing, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_transcripts_search_finds_text_and_tool_results_by_agent,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_transcripts_secrets_never_reach_jsonl_or_fts, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_transcripts_leave_image_bytes_out, setup, teardown),
        cmocka_unit_test_setup_teardown(test_transcripts_jsonl_lines_parse_and_files_are_private, setup,
                                        teardown),
        cmocka_unit_test(test_transcripts_redacted_dump_is_jansson_form_without_secrets),
        cmocka_unit_test(test_transcripts_file_names_cannot_escape),
        cmocka_unit_test_setup_teardown(test_transcripts_evil_peer_stays_inside_agent_dir, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_transcripts_write_failure_keeps_history, setup, teardown),
        cmocka_unit_test_setup_teardown(test_transcripts_malformed_query_is_an_error_not_a_crash, setup,
                                        teardown),
        cmocka_unit_test(test_history_trim_keeps_newest_within_budget_and_tool_pairs),
        cmocka_unit_test(test_history_estimate_counts_characters_of_other_scripts),
        cmocka_unit_test(test_transcript_failed_write_leaves_no_half_line),
        cmocka_unit_test(test_transcript_file_moved_away_is_opened_anew),
        cmocka_unit_test(test_transcript_files_beyond_the_kept_ones),
        cmocka_unit_test_setup_teardown(test_cmd_transcripts_prints_hits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cmd_transcripts_without_database_says_no_matches, setup,
                                        teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
