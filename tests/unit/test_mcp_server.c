#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"
#include "core/alloc.h"
#include "core/buf.h"
#include "core/clock.h"
#include "core/error.h"
#include "core/log.h"
#include "core/metrics.h"
#include "mcp/server.h"
#include "mcp/server_internal.h"
#include "tools/tool.h"

/* The MCP server core driven with JSON frames: lifecycle and version negotiation, tools/list
 * pages, agent tool calls through fake turn ops (progress, cancellation, results and errors),
 * exported registry tools, logging/setLevel with redaction, batches per protocol version, the
 * JSON-RPC errors, and mcp_server.yaml. */

/* ---- fake turns ---- */

struct fake_turn {
    struct nx_turn_opts o;
    char agent[32];
    char session[128];
    char message[256];
    bool is_live;
    int cancels;
    uint64_t log_ctx; /* what turn.c takes from the caller: its callbacks' log context */
};

static struct fake_turn ft;

static struct nx_turn *fake_start(struct nx_agents *a, const struct nx_turn_opts *o)
{
    (void)a;
    memset(&ft, 0, sizeof ft);
    ft.o = *o;
    snprintf(ft.agent, sizeof ft.agent, "%s", o->agent_id);
    snprintf(ft.session, sizeof ft.session, "%s", o->session_key ? o->session_key : "");
    const json_t *msg = json_array_get(o->messages, 0);
    const json_t *t = json_object_get(json_array_get(json_object_get(msg, "content"), 0), "text");
    snprintf(ft.message, sizeof ft.message, "%s", json_string_value(t) ? json_string_value(t) : "");
    ft.is_live = true;
    ft.log_ctx = nx_log_context_current();
    return (struct nx_turn *)&ft;
}

static void fake_done(int rc, const char *text)
{
    struct nx_turn_result r;
    memset(&r, 0, sizeof r);
    r.text = text;
    if (rc < 0) {
        r.error_type = "api_error";
        r.error_message = text;
    }
    ft.is_live = false;
    ft.o.on_done(rc, &r, ft.o.udata);
}

static void fake_cancel(struct nx_turn *t)
{
    assert_ptr_equal(t, &ft);
    ft.cancels++;
    fake_done(NX_ECANCELED, "cancelled");
}

static const struct nx_mcp_turn_ops ops = {fake_start, fake_cancel};

/* ---- a session whose sends are collected ---- */

struct sent {
    json_t *msgs;   /* every message, in order */
    int finals;
    int null_finals;
    void *last_origin;
};

static void on_send(void *udata, void *origin, const json_t *msg, bool is_final)
{
    struct sent *s = udata;
    if (msg)
        json_array_append(s->msgs, (json_t *)msg);
    if (is_final) {
        s->finals++;
        if (!msg)
            s->null_finals++;
    }
    s->last_origin = origin;
}

struct fx {
    struct nx_config *cfg;
    struct nx_mcp_srv_conf conf;
    struct nx_mcp_server *srv;
    struct nx_mcp_session *s;
    struct sent sent;
    char ws[256];
};

static const char agents_yaml[] =
    "agents:\n"
    "  - {id: kate, description: the helpful one, model: {provider: anthropic, model: m},\n"
    "     allowed_tools: [time_now, probe_*]}\n"
    "  - {id: bob, model: {provider: anthropic, model: m}}\n";

static void fx_open(struct fx *f, const char *server_yaml)
{
    memset(f, 0, sizeof *f);
    assert_int_equal(nx_config_load_mem(NULL, "agents.yaml", agents_yaml, strlen(agents_yaml), &f->cfg,
                                        NULL), 0);
    assert_int_equal(nx_mcp_srv_conf_parse(server_yaml, strlen(server_yaml), &f->conf, NULL), 0);
    struct nx_mcp_server_deps deps = {.cfg = f->cfg, .ops = &ops};
    assert_int_equal(nx_mcp_server_new(&deps, &f->conf, &f->srv), 0);
    f->sent.msgs = json_array();
    struct nx_mcp_session_io io = {.send = on_send, .udata = &f->sent};
    f->s = nx_mcp_session_new(f->srv, &io);
}

static void fx_close(struct fx *f)
{
    nx_mcp_session_free(f->s);
    nx_mcp_server_free(f->srv);
    nx_mcp_srv_conf_cleanup(&f->conf);
    nx_config_unref(f->cfg);
    json_decref(f->sent.msgs);
}

/* Feeds text; returns the last message sent (borrowed) or NULL. */
static const json_t *feed(struct fx *f, const char *text, size_t *n)
{
    size_t before = json_array_size(f->sent.msgs);
    size_t k = nx_mcp_session_feed(f->s, text, strlen(text), (void *)0x1);
    if (n)
        *n = k;
    size_t after = json_array_size(f->sent.msgs);
    return after > before ? json_array_get(f->sent.msgs, after - 1) : NULL;
}

static long long err_code(const json_t *m)
{
    return json_integer_value(json_object_get(json_object_get(m, "error"), "code"));
}

static void init(struct fx *f, const char *version)
{
    char buf[256];
    snprintf(buf, sizeof buf, "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"initialize\",\"params\":"
             "{\"protocolVersion\":\"%s\",\"capabilities\":{},\"clientInfo\":{\"name\":\"t\",\"version\""
                 ":\"1\"}}}",
             version);
    const json_t *r = feed(f, buf, NULL);
    assert_non_null(json_object_get(r, "result"));
    feed(f, "{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}", NULL);
}

static const char *result_text(const json_t *m)
{
    const json_t *c = json_array_get(json_object_get(json_object_get(m, "result"), "content"), 0);
    return json_string_value(json_object_get(c, "text"));
}

/* ---- tests ---- */

static void test_initialize_negotiates_the_version(void **state)
{
    struct fx f;
    size_t n;
    (void)state;
    fx_open(&f, "");
    const json_t *r = feed(&f, "{\"jsonrpc\":\"2.0\",\"id\":\"p\",\"method\":\"ping\"}", &n);
    assert_int_equal(n, 1);
    assert_int_equal(json_object_size(json_object_get(r, "result")), 0);
    r = feed(&f, "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/list\"}", NULL);
    assert_int_equal(err_code(r), -32600);
    r = feed(&f, "{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"initialize\",\"params\":{}}", NULL);
    assert_int_equal(err_code(r), -32602);
    assert_null(nx_mcp_session_protocol(f.s));
    r = feed(&f, "{\"jsonrpc\":\"2.0\",\"id\":4,\"method\":\"initialize\",\"params\":{\"protocolVersion\":"
             "\"2025-03-26\",\"capabilities\":{}}}", NULL);
    const json_t *res = json_object_get(r, "result");
    assert_string_equal(json_string_value(json_object_get(res, "protocolVersion")), "2025-03-26");
    assert_non_null(json_object_get(json_object_get(res, "capabilities"), "tools"));
    assert_non_null(json_object_get(json_object_get(res, "capabilities"), "logging"));
    assert_string_equal(json_string_value(json_object_get(json_object_get(res, "serverInfo"), "name")),
                        "nexo");
    r = feed(&f, "{\"jsonrpc\":\"2.0\",\"id\":5,\"method\":\"initialize\",\"params\":{\"protocolVersion\":"
             "\"2025-03-26\"}}", NULL);
    assert_int_equal(err_code(r), -32600);
    fx_close(&f);

    fx_open(&f, "name: gw\n");
    r = feed(&f, "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"initialize\",\"params\":{\"protocolVersion\":"
             "\"1999-01-01\"}}", NULL);
    res = json_object_get(r, "result");
    assert_string_equal(json_string_value(json_object_get(res, "protocolVersion")), "2025-11-25");
    assert_string_equal(json_string_value(json_object_get(json_object_get(res, "serverInfo"), "name")), "gw");
    fx_close(&f);
}

static void test_errors_follow_json_rpc(void **state)
{
    struct fx f;
    size_t n;
    (void)state;
    fx_open(&f, "");
    init(&f, "2025-11-25");
    const json_t *r = feed(&f, "{not json", &n);
    assert_int_equal(n, 1);
    assert_int_equal(err_code(r), -32700);
    assert_true(json_is_null(json_object_get(r, "id")));
    r = feed(&f, "{\"id\":7,\"method\":\"ping\"}", NULL);
    assert_int_equal(err_code(r), -32600);
    assert_int_equal(json_integer_value(json_object_get(r, "id")), 7);
    r = feed(&f, "{\"jsonrpc\":\"2.0\",\"id\":8,\"method\":\"no/such\"}", NULL);
    assert_int_equal(err_code(r), -32601);
    r = feed(&f, "{\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"tools/call\",\"params\":{\"name\":\"nope\"}"
        "}", NULL);
    assert_int_equal(err_code(r), -32602);
    r = feed(&f, "{\"jsonrpc\":\"2.0\",\"id\":10,\"method\":\"tools/call\",\"params\":{\"arguments\":{}}"
        "}", NULL);
    assert_int_equal(err_code(r), -32602);
    r = feed(&f, "{\"jsonrpc\":\"2.0\",\"id\":11,\"method\":\"logging/setLevel\",\"params\":{\"level\""
        ":\"loud\"}}",
             NULL);
    assert_int_equal(err_code(r), -32602);
    r = feed(&f, "{\"jsonrpc\":\"2.0\",\"id\":12,\"method\":\"resources/read\",\"params\":{\"uri\":\"x:/"
        "/y\"}}", NULL);
    assert_int_equal(err_code(r), -32002);
    /* A missing message is the tool's error, not the protocol's. */
    r = feed(&f, "{\"jsonrpc\":\"2.0\",\"id\":13,\"method\":\"tools/call\",\"params\":{\"name\":\"ask_kate\","
             "\"arguments\":{}}}", NULL);
    assert_true(json_is_true(json_object_get(json_object_get(r, "result"), "isError")));
    assert_non_null(strstr(result_text(r), "message"));
    /* Responses and unknown notifications are taken silently. */
    size_t before = json_array_size(f.sent.msgs);
    feed(&f, "{\"jsonrpc\":\"2.0\",\"id\":99,\"result\":{}}", &n);
    assert_int_equal(n, 0);
    feed(&f, "{\"jsonrpc\":\"2.0\",\"method\":\"notifications/whatever\"}", &n);
    assert_int_equal(n, 0);
    assert_int_equal(json_array_size(f.sent.msgs), before);
    fx_close(&f);
}

static void test_lists_are_paged_and_empty_lists_are_valid(void **state)
{
    struct fx f;
    (void)state;
    fx_open(&f, "page_size: 1\n");
    init(&f, "2025-06-18");
    const json_t *r = feed(&f, "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/list\"}", NULL);
    const json_t *res = json_object_get(r, "result");
    assert_int_equal(json_array_size(json_object_get(res, "tools")), 1);
    const json_t *t = json_array_get(json_object_get(res, "tools"), 0);
    assert_string_equal(json_string_value(json_object_get(t, "name")), "ask_kate");
    assert_non_null(strstr(json_string_value(json_object_get(t, "description")), "the helpful one"));
    assert_string_equal(json_string_value(json_object_get(json_object_get(t, "inputSchema"), "type")),
                        "object");
    assert_string_equal(json_string_value(json_object_get(res, "nextCursor")), "o1");
    r = feed(&f, "{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"tools/list\",\"params\":{\"cursor\":\"o1\"}"
        "}", NULL);
    res = json_object_get(r, "result");
    t = json_array_get(json_object_get(res, "tools"), 0);
    assert_string_equal(json_string_value(json_object_get(t, "name")), "ask_bob");
    assert_null(json_object_get(res, "nextCursor"));
    r = feed(&f, "{\"jsonrpc\":\"2.0\",\"id\":4,\"method\":\"tools/list\",\"params\":{\"cursor\":\"zz\"}"
        "}", NULL);
    assert_int_equal(err_code(r), -32602);
    r = feed(&f, "{\"jsonrpc\":\"2.0\",\"id\":5,\"method\":\"resources/list\"}", NULL);
    assert_int_equal(json_array_size(json_object_get(json_object_get(r, "result"), "resources")), 0);
    r = feed(&f, "{\"jsonrpc\":\"2.0\",\"id\":6,\"method\":\"prompts/list\"}", NULL);
    assert_true(json_is_array(json_object_get(json_object_get(r, "result"), "prompts")));
    r = feed(&f, "{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"completion/complete\",\"params\":{\"ref\":"
             "{\"type\":\"ref/prompt\",\"name\":\"p\"},\"argument\":{\"name\":\"a\",\"value\":\"b\"}}"
                 "}", NULL);
    assert_true(json_is_array(json_object_get(json_object_get(json_object_get(r, "result"), "completion"),
                                              "values")));
    fx_close(&f);
}

static void test_agent_call_runs_a_turn_with_progress(void **state)
{
    struct fx f;
    size_t n;
    (void)state;
    nx_metrics_reset();
    fx_open(&f, "");
    init(&f, "2025-11-25");
    const json_t *r = feed(&f, "{\"jsonrpc\":\"2.0\",\"id\":\"c1\",\"method\":\"tools/call\",\"params\":"
        "{\"name\":"
                           "\"ask_kate\",\"arguments\":{\"message\":\"hello\",\"session\":\"s1\"},"
                           "\"_meta\":{\"progressToken\":42}}}", &n);
    assert_int_equal(n, 1);
    assert_true(ft.is_live);
    assert_string_equal(ft.agent, "kate");
    assert_string_equal(ft.session, "agent:kate:mcp:s1");
    assert_string_equal(ft.message, "hello");
    assert_string_equal(ft.o.channel, "mcp");
    assert_non_null(ft.o.on_text); /* progress: the text streams */
    assert_int_equal(nx_mcp_session_in_flight(f.s), 1);
    /* the "thinking" report, then the streamed length */
    assert_string_equal(json_string_value(json_object_get(r, "method")), "notifications/progress");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(r, "params"), "progressToken")), 42);
    ft.o.on_text("Hel", 3, ft.o.udata);
    r = json_array_get(f.sent.msgs, json_array_size(f.sent.msgs) - 1);
    assert_string_equal(json_string_value(json_object_get(r, "method")), "notifications/progress");
    assert_true(json_number_value(json_object_get(json_object_get(r, "params"), "progress")) == 3.0);
    int finals = f.sent.finals;
    fake_done(0, "Hello there");
    assert_int_equal(f.sent.finals, finals + 1);
    r = json_array_get(f.sent.msgs, json_array_size(f.sent.msgs) - 1);
    assert_string_equal(json_string_value(json_object_get(r, "id")), "c1");
    assert_string_equal(result_text(r), "Hello there");
    assert_true(json_is_false(json_object_get(json_object_get(r, "result"), "isError")));
    assert_int_equal(nx_mcp_session_in_flight(f.s), 0);

    /* An upstream failure is a tool error result. */
    feed(&f, "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/call\",\"params\":{\"name\":\"ask_bob\","
         "\"arguments\":{\"message\":\"x\"}}}", NULL);
    assert_null(ft.o.on_text);
    assert_string_equal(ft.session, "");
    fake_done(NX_EHTTP, "upstream said no");
    r = json_array_get(f.sent.msgs, json_array_size(f.sent.msgs) - 1);
    assert_true(json_is_true(json_object_get(json_object_get(r, "result"), "isError")));
    assert_non_null(strstr(result_text(r), "upstream said no"));

    struct nx_buf m = NX_BUF_INIT;
    nx_metrics_render(&m);
    const char *text = nx_buf_cstr(&m);
    assert_non_null(strstr(text, "nexo_mcp_server_calls_total{tool=\"ask_kate\",outcome=\"ok\"} 1"));
    assert_non_null(strstr(text, "nexo_mcp_server_calls_total{tool=\"ask_bob\",outcome=\"tool_error\"} 1"));
    assert_non_null(strstr(text, "nexo_mcp_server_call_seconds_count{tool=\"ask_kate\"} 1"));
    nx_buf_cleanup(&m);

    /* a NUL in the session name would cut it to another session's ("alice"): refused */
    feed(&f, "{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"tools/call\",\"params\":{\"name\":\"ask_kate\","
         "\"arguments\":{\"message\":\"x\",\"session\":\"alice\\u0000mallory\"}}}", NULL);
    r = json_array_get(f.sent.msgs, json_array_size(f.sent.msgs) - 1);
    assert_true(json_is_true(json_object_get(json_object_get(r, "result"), "isError")));
    assert_non_null(strstr(result_text(r), "no NUL character"));
    fx_close(&f);
}

static void test_cancel_and_duplicate_ids(void **state)
{
    struct fx f;
    (void)state;
    fx_open(&f, "");
    init(&f, "2025-06-18");
    feed(&f, "{\"jsonrpc\":\"2.0\",\"id\":5,\"method\":\"tools/call\",\"params\":{\"name\":\"ask_kate\","
         "\"arguments\":{\"message\":\"long\"}}}", NULL);
    /* the same id while the first is running */
    const json_t *r = feed(&f, "{\"jsonrpc\":\"2.0\",\"id\":5,\"method\":\"tools/call\",\"params\":{\"name\":"
                           "\"ask_bob\",\"arguments\":{\"message\":\"again\"}}}", NULL);
    assert_int_equal(err_code(r), -32600);
    assert_true(ft.is_live);
    int finals = f.sent.finals, nulls = f.sent.null_finals;
    size_t msgs = json_array_size(f.sent.msgs);
    size_t n;
    feed(&f, "{\"jsonrpc\":\"2.0\",\"method\":\"notifications/cancelled\",\"params\":{\"requestId\":5,"
         "\"reason\":\"user\"}}", &n);
    assert_int_equal(n, 0);
    assert_int_equal(ft.cancels, 1);
    assert_false(ft.is_live);
    assert_int_equal(f.sent.finals, finals + 1);
    assert_int_equal(f.sent.null_finals, nulls + 1);
    assert_int_equal(json_array_size(f.sent.msgs), msgs); /* no response */
    assert_int_equal(nx_mcp_session_in_flight(f.s), 0);
    /* unknown request ids are ignored */
    feed(&f, "{\"jsonrpc\":\"2.0\",\"method\":\"notifications/cancelled\",\"params\":{\"requestId\":77}"
        "}", NULL);
    assert_int_equal(f.sent.finals, finals + 1);
    /* a session freed with a call running cancels it and sends nothing */
    feed(&f, "{\"jsonrpc\":\"2.0\",\"id\":8,\"method\":\"tools/call\",\"params\":{\"name\":\"ask_kate\","
         "\"arguments\":{\"message\":\"bye\"}}}", NULL);
    msgs = json_array_size(f.sent.msgs);
    nx_mcp_session_free(f.s);
    f.s = NULL;
    assert_int_equal(ft.cancels, 1);
    assert_int_equal(json_array_size(f.sent.msgs), msgs);
    fx_close(&f);
}

static void test_logging_sends_redacted_messages_at_the_level(void **state)
{
    struct fx f;
    (void)state;
    fx_open(&f, "");
    init(&f, "2025-11-25");
    size_t before = json_array_size(f.sent.msgs);
    feed(&f, "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/call\",\"params\":{\"name\":\"ask_kate\","
         "\"arguments\":{\"message\":\"m\"}}}", NULL);
    fake_done(0, "ok");
    assert_int_equal(json_array_size(f.sent.msgs), before + 1); /* no log messages before setLevel */
    const json_t *r = feed(&f, "{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"logging/setLevel\",\"params\":"
                           "{\"level\":\"debug\"}}", NULL);
    assert_int_equal(json_object_size(json_object_get(r, "result")), 0);
    before = json_array_size(f.sent.msgs);
    feed(&f, "{\"jsonrpc\":\"2.0\",\"id\":4,\"method\":\"tools/call\",\"params\":{\"name\":\"ask_kate\","
         "\"arguments\":{\"message\":\"m\",\"session\":\"sk-ant-api03-abcdefghijklmnopqrstuvwxyz0123\"}}"
             "}", NULL);
    fake_done(0, "ok");
    bool saw_debug = false, saw_info = false;
    for (size_t i = before; i < json_array_size(f.sent.msgs); i++) {
        const json_t *m = json_array_get(f.sent.msgs, i);
        const char *meth = json_string_value(json_object_get(m, "method"));
        if (!meth || strcmp(meth, "notifications/message") != 0)
            continue;
        const char *lv = json_string_value(json_object_get(json_object_get(m, "params"), "level"));
        const char *data = json_string_value(json_object_get(json_object_get(m, "params"), "data"));
        assert_null(strstr(data, "abcdefghijklmnop"));
        saw_debug |= strcmp(lv, "debug") == 0;
        saw_info |= strcmp(lv, "info") == 0;
    }
    assert_true(saw_debug);
    assert_true(saw_info);
    feed(&f, "{\"jsonrpc\":\"2.0\",\"id\":5,\"method\":\"logging/setLevel\",\"params\":{\"level\":\"erro"
        "r\"}}", NULL);
    before = json_array_size(f.sent.msgs);
    feed(&f, "{\"jsonrpc\":\"2.0\",\"id\":6,\"method\":\"tools/call\",\"params\":{\"name\":\"ask_kate\","
         "\"arguments\":{\"message\":\"m\"}}}", NULL);
    fake_done(0, "ok");
    assert_int_equal(json_array_size(f.sent.msgs), before + 1);
    fx_close(&f);
}

/* Messages sent from index `from` with this method (borrowed array, caller decrefs). */
static json_t *sent_with(const struct fx *f, size_t from, const char *method)
{
    json_t *out = json_array();
    for (size_t i = from; i < json_array_size(f->sent.msgs); i++) {
        const json_t *m = json_array_get(f->sent.msgs, i);
        const char *meth = json_string_value(json_object_get(m, "method"));
        if (meth && strcmp(meth, method) == 0)
            json_array_append(out, (json_t *)m);
    }
    return out;
}

static const char *param_str(const json_t *m, const char *key)
{
    return json_string_value(json_object_get(json_object_get(m, "params"), key));
}

/* A line written from a callback of the turn whose log context is ctx. */
static void turn_warn(uint64_t ctx, const char *component, const char *msg)
{
    uint64_t prev = nx_log_context_swap(ctx);
    nx_warn(component, "%s", msg);
    nx_log_context_swap(prev);
}

static void *log_from_other_thread(void *arg)
{
    (void)arg;
    nx_warn("agent", "a line from another thread");
    return NULL;
}

static void test_turn_log_lines_are_forwarded_redacted_and_rate_limited(void **state)
{
    struct fx f;
    (void)state;
    enum nx_log_level old = nx_log_level();
    nx_log_set_level(NX_LOG_OFF);
    fx_open(&f, "");
    init(&f, "2025-11-25");
    /* Before setLevel nothing is forwarded, and no sink lowers the log gate. */
    feed(&f, "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"ask_kate\","
         "\"arguments\":{\"message\":\"m\"}}}", NULL);
    size_t before = json_array_size(f.sent.msgs);
    nx_warn("llm", "attempt 1 failed");
    fake_done(0, "ok");
    json_t *got = sent_with(&f, before, "notifications/message");
    assert_int_equal(json_array_size(got), 0);
    json_decref(got);
    assert_int_equal(nx_log_gate(), NX_LOG_OFF);

    feed(&f, "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"logging/setLevel\",\"params\":{\"level\":\"info\"}}",
         NULL);
    assert_int_equal(nx_log_gate(), NX_LOG_INFO);
    /* No call in flight: turn lines are not this session's. */
    before = json_array_size(f.sent.msgs);
    nx_warn("tools", "nobody's line");
    feed(&f, "{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"tools/call\",\"params\":{\"name\":\"ask_kate\","
         "\"arguments\":{\"message\":\"m\"}}}", NULL);
    assert_int_not_equal(ft.log_ctx, 0);
    uint64_t prev = nx_log_context_swap(ft.log_ctx);
    nx_warn("tools", "agent kate: call to tool \"%s\" refused",
            "sk-ant-api03-abcdefghijklmnopqrstuvwxyz0123456789");
    nx_debug("llm", "below the session's level");
    nx_warn("gateway", "the call's line from any component");
    nx_log_context_swap(prev);
    nx_warn("http", "not a turn component");
    nx_warn("agent", "a line without context");
    nx_log_set_context("kate", NULL);
    nx_warn("agent", "the same agent's line, no context");
    nx_log_set_context(NULL, NULL);
    turn_warn(nx_log_context_new(), "agent", "another turn's line");
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, log_from_other_thread, NULL), 0);
    pthread_join(th, NULL);
    fake_done(0, "ok");
    got = sent_with(&f, before, "notifications/message");
    size_t n_turn = 0, n_ctx = 0;
    size_t i;
    json_t *m;
    json_array_foreach(got, i, m) {
        const char *data = param_str(m, "data");
        assert_null(strstr(data, "abcdefghijklmnop"));
        assert_null(strstr(data, "nobody"));
        assert_null(strstr(data, "below"));
        assert_null(strstr(data, "not a turn"));
        assert_null(strstr(data, "without context"));
        assert_null(strstr(data, "no context"));
        assert_null(strstr(data, "another turn"));
        assert_null(strstr(data, "another thread"));
        if (strcmp(param_str(m, "logger"), "tools") == 0) {
            assert_string_equal(param_str(m, "level"), "warning");
            assert_non_null(strstr(data, "[REDACTED]"));
            n_turn++;
        }
        n_ctx += strcmp(param_str(m, "logger"), "gateway") == 0;
    }
    assert_int_equal(n_turn, 1);
    assert_int_equal(n_ctx, 1);
    /* the call's lines come before its answer */
    const json_t *last = json_array_get(f.sent.msgs, json_array_size(f.sent.msgs) - 1);
    assert_int_equal(json_integer_value(json_object_get(last, "id")), 3);
    json_decref(got);

    /* A flood is cut to the burst, and the drop is reported with the next line sent. */
    feed(&f, "{\"jsonrpc\":\"2.0\",\"id\":4,\"method\":\"tools/call\",\"params\":{\"name\":\"ask_kate\","
         "\"arguments\":{\"message\":\"m\"}}}", NULL);
    before = json_array_size(f.sent.msgs);
    prev = nx_log_context_swap(ft.log_ctx);
    for (int k = 0; k < 200; k++)
        nx_info("agent", "line %d", k);
    nx_log_context_swap(prev);
    fake_done(0, "ok");
    got = sent_with(&f, before, "notifications/message");
    size_t n_lines = 0;
    json_array_foreach(got, i, m) n_lines += strcmp(param_str(m, "logger"), "agent") == 0;
    assert_true(n_lines >= 10 && n_lines < 100);
    json_decref(got);
    f.s->log_tokens = 40; /* as if time passed */
    feed(&f, "{\"jsonrpc\":\"2.0\",\"id\":5,\"method\":\"tools/call\",\"params\":{\"name\":\"ask_kate\","
         "\"arguments\":{\"message\":\"m\"}}}", NULL);
    before = json_array_size(f.sent.msgs);
    turn_warn(ft.log_ctx, "agent", "after the flood");
    fake_done(0, "ok");
    got = sent_with(&f, before, "notifications/message");
    assert_true(json_array_size(got) >= 2);
    assert_non_null(strstr(param_str(json_array_get(got, 0), "data"), "log lines not sent"));
    assert_string_equal(param_str(json_array_get(got, 1), "data"), "after the flood");
    json_decref(got);

    fx_close(&f);
    assert_int_equal(nx_log_gate(), NX_LOG_OFF); /* the sink went with the session */
    nx_log_set_level(old);
}

/* Two sessions call the same agent at once, both at level debug: each gets the lines of its own
 * turn, never the other's, and lines whose turn is unknown go to neither. */
static void test_log_lines_go_to_the_session_whose_turn_wrote_them(void **state)
{
    struct fx f;
    struct sent sent2 = {.msgs = json_array()};
    struct nx_mcp_session_io io2 = {.send = on_send, .udata = &sent2};
    static const char call[] = "{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"tools/call\",\"params\":"
                               "{\"name\":\"ask_kate\",\"arguments\":{\"message\":\"m\"}}}";
    static const char debug[] = "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"logging/setLevel\","
                                "\"params\":{\"level\":\"debug\"}}";
    (void)state;
    fx_open(&f, "");
    init(&f, "2025-11-25");
    struct nx_mcp_session *s2 = nx_mcp_session_new(f.srv, &io2);
    struct fx f2 = f; /* the same server, seen from the second session */
    f2.s = s2;
    f2.sent.msgs = sent2.msgs;
    init(&f2, "2025-11-25");
    feed(&f, debug, NULL);
    nx_mcp_session_feed(s2, debug, strlen(debug), (void *)0x2);

    feed(&f, call, NULL);
    struct fake_turn one = ft;
    nx_mcp_session_feed(s2, call, strlen(call), (void *)0x2);
    struct fake_turn two = ft;
    assert_int_not_equal(one.log_ctx, two.log_ctx);
    size_t before1 = json_array_size(f.sent.msgs), before2 = json_array_size(sent2.msgs);
    turn_warn(one.log_ctx, "llm", "turn one: attempt 1 failed");
    turn_warn(two.log_ctx, "tools", "turn two: unknown tool");
    turn_warn(one.log_ctx, "agent", "turn one: done");
    nx_warn("agent", "whose? no context");
    struct nx_turn_result r = {.text = "ok"};
    one.o.on_done(0, &r, one.o.udata);
    two.o.on_done(0, &r, two.o.udata);

    json_t *got1 = sent_with(&f, before1, "notifications/message");
    json_t *got2 = sent_with(&f2, before2, "notifications/message");
    size_t i, n1 = 0, n2 = 0;
    json_t *m;
    json_array_foreach(got1, i, m) {
        assert_null(strstr(param_str(m, "data"), "turn two"));
        assert_null(strstr(param_str(m, "data"), "no context"));
        n1 += strncmp(param_str(m, "data"), "turn one", 8) == 0;
    }
    json_array_foreach(got2, i, m) {
        assert_null(strstr(param_str(m, "data"), "turn one"));
        assert_null(strstr(param_str(m, "data"), "no context"));
        n2 += strncmp(param_str(m, "data"), "turn two", 8) == 0;
    }
    assert_int_equal(n1, 2);
    assert_int_equal(n2, 1);
    json_decref(got1);
    json_decref(got2);
    nx_mcp_session_free(s2);
    json_decref(sent2.msgs);
    fx_close(&f);
}

static void test_progress_names_the_agents_tool_calls(void **state)
{
    struct fx f;
    (void)state;
    fx_open(&f, "");
    init(&f, "2025-11-25");
    feed(&f, "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"ask_kate\","
         "\"arguments\":{\"message\":\"m\"},\"_meta\":{\"progressToken\":\"p\"}}}", NULL);
    assert_non_null(ft.o.on_tool);
    size_t before = json_array_size(f.sent.msgs);
    ft.o.on_tool("http_fetch", false, false, ft.o.udata);
    ft.o.on_tool("http_fetch", true, true, ft.o.udata);
    ft.o.on_text("ab", 2, ft.o.udata); /* not past the tool steps: no report */
    json_t *got = sent_with(&f, before, "notifications/progress");
    assert_int_equal(json_array_size(got), 2);
    assert_string_equal(param_str(json_array_get(got, 0), "message"), "calling tool http_fetch");
    assert_string_equal(param_str(json_array_get(got, 1), "message"), "finished tool http_fetch (it failed)");
    double p0 = json_number_value(json_object_get(json_object_get(json_array_get(got, 0), "params"),
                                                  "progress"));
    double p1 = json_number_value(json_object_get(json_object_get(json_array_get(got, 1), "params"),
                                                  "progress"));
    assert_true(p1 > p0 && p0 > 0);
    json_decref(got);
    fake_done(0, "ok");
    /* Without a progress token the turn gets no tool callback. */
    feed(&f, "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/call\",\"params\":{\"name\":\"ask_kate\","
         "\"arguments\":{\"message\":\"m\"}}}", NULL);
    assert_null(ft.o.on_tool);
    fake_done(0, "ok");
    fx_close(&f);
}

static void test_batches_depend_on_the_protocol_version(void **state)
{
    struct fx f;
    size_t n;
    (void)state;
    static const char batch[] = "[{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"},"
                                "{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"},"
                                "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/list\"}]";
    fx_open(&f, "");
    init(&f, "2025-06-18");
    const json_t *r = feed(&f, batch, &n);
    assert_int_equal(n, 1);
    assert_int_equal(err_code(r), -32600);
    assert_false(nx_mcp_session_accepts_batch(f.s));
    fx_close(&f);
    fx_open(&f, "");
    init(&f, "2025-03-26");
    assert_true(nx_mcp_session_accepts_batch(f.s));
    size_t before = json_array_size(f.sent.msgs);
    feed(&f, batch, &n);
    assert_int_equal(n, 2);
    assert_int_equal(json_array_size(f.sent.msgs), before + 2);
    r = feed(&f, "[]", &n);
    assert_int_equal(n, 1);
    assert_int_equal(err_code(r), -32600);
    fx_close(&f);
}

/* A registry tool that answers later and can be cancelled. */
static nx_tool_done_fn probe_done;
static void *probe_udata;
static int probe_cancels;

static struct nx_tool_call *probe_run(const struct nx_tool_ctx *ctx, const json_t *args, nx_tool_done_fn done,
                                      void *udata)
{
    (void)args;
    assert_string_equal(ctx->agent_id, "kate");
    probe_done = done;
    probe_udata = udata;
    return (struct nx_tool_call *)&probe_done;
}

static void probe_cancel(struct nx_tool_call *call)
{
    (void)call;
    probe_cancels++;
    probe_done = NULL;
}

static const struct nx_tool probe_tool = {
    .name = "probe_wait",
    .description = "waits",
    .input_schema = "{\"type\":\"object\"}",
    .run = probe_run,
    .cancel = probe_cancel,
};

static void test_exported_tools_run_in_the_agents_sandbox(void **state)
{
    struct fx f;
    (void)state;
    nx_tool_register(&probe_tool);
    fx_open(&f, "agents: [bob]\ntools_agent: kate\nexpose_tools: [time_now, probe_*, file_*]\n");
    init(&f, "2025-11-25");
    const json_t *r = feed(&f, "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/list\"}", NULL);
    const json_t *tools = json_object_get(json_object_get(r, "result"), "tools");
    /* ask_bob, then time_now and probe_wait; file_* is exported but not allowed for kate */
    assert_int_equal(json_array_size(tools), 3);
    assert_string_equal(json_string_value(json_object_get(json_array_get(tools, 0), "name")), "ask_bob");
    for (size_t i = 0; i < json_array_size(tools); i++)
        assert_null(strstr(json_string_value(json_object_get(json_array_get(tools, i), "name")), "file_"));
    r = feed(&f, "{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"tools/call\",\"params\":{\"name\":\"time_now\","
             "\"arguments\":{}}}", NULL);
    assert_non_null(strstr(result_text(r), "\"utc\""));
    r = feed(&f, "{\"jsonrpc\":\"2.0\",\"id\":4,\"method\":\"tools/call\",\"params\":{\"name\":\"file_read\","
             "\"arguments\":{\"path\":\"x\"}}}", NULL);
    assert_int_equal(err_code(r), -32602);
    r = feed(&f, "{\"jsonrpc\":\"2.0\",\"id\":5,\"method\":\"tools/call\",\"params\":{\"name\":\"ask_kate\","
             "\"arguments\":{\"message\":\"x\"}}}", NULL);
    assert_int_equal(err_code(r), -32602);
    /* an asynchronous tool: answered later, or cancelled */
    feed(&f, "{\"jsonrpc\":\"2.0\",\"id\":6,\"method\":\"tools/call\",\"params\":{\"name\":\"probe_wai"
        "t\"}}", NULL);
    assert_non_null(probe_done);
    probe_done("waited", 6, false, probe_udata);
    r = json_array_get(f.sent.msgs, json_array_size(f.sent.msgs) - 1);
    assert_string_equal(result_text(r), "waited");
    feed(&f, "{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"tools/call\",\"params\":{\"name\":\"probe_wai"
        "t\"}}", NULL);
    feed(&f, "{\"jsonrpc\":\"2.0\",\"method\":\"notifications/cancelled\",\"params\":{\"requestId\":7}"
        "}", NULL);
    assert_int_equal(probe_cancels, 1);
    assert_int_equal(nx_mcp_session_in_flight(f.s), 0);
    fx_close(&f);
    nx_tool_unregister("probe_wait");
}

static const struct nx_tool probe_late = {
    .name = "probe_late",
    .description = "appears later",
    .input_schema = "{\"type\":\"object\"}",
    .run = probe_run,
};

static bool saw_list_changed(const struct sent *st)
{
    for (size_t i = 0; i < json_array_size(st->msgs); i++) {
        const char *m = json_string_value(json_object_get(json_array_get(st->msgs, i), "method"));
        if (m && strcmp(m, "notifications/tools/list_changed") == 0)
            return true;
    }
    return false;
}

static void test_list_changed_when_exported_tools_change(void **state)
{
    struct fx f;
    uv_loop_t loop;
    (void)state;
    uv_loop_init(&loop);
    memset(&f, 0, sizeof f);
    static const char yaml[] = "tools_agent: kate\nexpose_tools: [probe_*]\n";
    assert_int_equal(nx_config_load_mem(NULL, "agents.yaml", agents_yaml, strlen(agents_yaml), &f.cfg,
                                        NULL), 0);
    assert_int_equal(nx_mcp_srv_conf_parse(yaml, strlen(yaml), &f.conf, NULL), 0);
    struct nx_mcp_server_deps deps = {.loop = &loop, .cfg = f.cfg, .ops = &ops};
    assert_int_equal(nx_mcp_server_new(&deps, &f.conf, &f.srv), 0);
    f.sent.msgs = json_array();
    struct nx_mcp_session_io io = {.send = on_send, .udata = &f.sent};
    f.s = nx_mcp_session_new(f.srv, &io);
    init(&f, "2025-11-25");
    const json_t *caps = json_object_get(json_object_get(json_array_get(f.sent.msgs, 0), "result"),
                                         "capabilities");
    assert_true(json_is_true(json_object_get(json_object_get(caps, "tools"), "listChanged")));
    assert_int_equal(nx_tool_register(&probe_late), 0);
    uint64_t deadline = nx_mono_ms() + 10000;
    while (!saw_list_changed(&f.sent) && nx_mono_ms() < deadline)
        uv_run(&loop, UV_RUN_ONCE);
    assert_true(saw_list_changed(&f.sent));
    nx_tool_unregister("probe_late");
    fx_close(&f);
    uv_run(&loop, UV_RUN_DEFAULT); /* the watch timer's close */
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_conf_file_is_checked(void **state)
{
    struct nx_mcp_srv_conf c;
    struct nx_diags d;
    (void)state;
    nx_diags_init(&d);
    static const char ok[] = "enabled: true\nagents: [kate]\nhttp:\n  allowed_origins: [\"https://a.exam"
        "ple\"]\n"
                             "  max_sessions: 3\n  session_idle_timeout: 90s\n";
    assert_int_equal(nx_mcp_srv_conf_parse(ok, strlen(ok), &c, &d), 0);
    assert_true(c.enabled);
    assert_true(c.http.enabled);
    assert_int_equal(c.http.max_sessions, 3);
    assert_int_equal(c.http.session_idle_timeout_ms, 90000);
    assert_string_equal(c.http.allowed_origins[0], "https://a.example");
    assert_string_equal(c.name, "nexo");
    nx_mcp_srv_conf_cleanup(&c);
    static const char bad[] = "enabled: true\nexpose_tool: [x]\n";
    assert_int_equal(nx_mcp_srv_conf_parse(bad, strlen(bad), &c, &d), NX_ECONFIG);
    assert_true(d.n >= 1);
    assert_non_null(strstr(d.v[0].msg, "expose_tool"));
    nx_mcp_srv_conf_cleanup(&c);
    nx_diags_cleanup(&d);

    /* origins as the gateway's cors list takes them, but no "*" (the gateway's to give) */
    nx_diags_init(&d);
    static const char origins[] = "http:\n  allowed_origins: [\"*\", \"https://a.example:443\", "
                                  "\"a.example\"]\n";
    assert_int_equal(nx_mcp_srv_conf_parse(origins, strlen(origins), &c, &d), NX_ECONFIG);
    assert_int_equal(d.n, 3);
    bool seen_star = false, seen_port = false, seen_shape = false;
    for (size_t i = 0; i < d.n; i++) {
        seen_star |= strstr(d.v[i].msg, "\"*\" is not taken here") != NULL;
        seen_port |= strstr(d.v[i].msg, "default port") != NULL;
        seen_shape |= strstr(d.v[i].msg, "invalid origin") != NULL;
    }
    assert_true(seen_star && seen_port && seen_shape);
    nx_mcp_srv_conf_cleanup(&c);
    nx_diags_cleanup(&d);

    /* an agent that does not exist */
    struct nx_config *cfg = NULL;
    assert_int_equal(nx_config_load_mem(NULL, "agents.yaml", agents_yaml, strlen(agents_yaml), &cfg,
                                        NULL), 0);
    static const char ghost[] = "agents: [ghost]\n";
    assert_int_equal(nx_mcp_srv_conf_parse(ghost, strlen(ghost), &c, NULL), 0);
    struct nx_mcp_server *srv = NULL;
    struct nx_mcp_server_deps deps = {.cfg = cfg, .ops = &ops};
    assert_int_equal(nx_mcp_server_new(&deps, &c, &srv), NX_ENOENT);
    deps.only_agent = "bob";
    assert_int_equal(nx_mcp_server_new(&deps, &c, &srv), 0);
    nx_mcp_server_free(srv);
    nx_mcp_srv_conf_cleanup(&c);
    nx_config_unref(cfg);
}

int main(void)
{
    nx_log_set_level(NX_LOG_OFF);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_initialize_negotiates_the_version),
        cmocka_unit_test(test_errors_follow_json_rpc),
        cmocka_unit_test(test_lists_are_paged_and_empty_lists_are_valid),
        cmocka_unit_test(test_agent_call_runs_a_turn_with_progress),
        cmocka_unit_test(test_cancel_and_duplicate_ids),
        cmocka_unit_test(test_logging_sends_redacted_messages_at_the_level),
        cmocka_unit_test(test_turn_log_lines_are_forwarded_redacted_and_rate_limited),
        cmocka_unit_test(test_log_lines_go_to_the_session_whose_turn_wrote_them),
        cmocka_unit_test(test_progress_names_the_agents_tool_calls),
        cmocka_unit_test(test_batches_depend_on_the_protocol_version),
        cmocka_unit_test(test_exported_tools_run_in_the_agents_sandbox),
        cmocka_unit_test(test_list_changed_when_exported_tools_change),
        cmocka_unit_test(test_conf_file_is_checked),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
