#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"
#include "core/alloc.h"
#include "core/error.h"
#include "core/log.h"
#include "mcp/jsonrpc.h"
#include "mcp/server.h"

/* nexo's MCP server fed by a client we do not trust. The first byte chooses the set-up (an
 * initialize with 2025-03-26 first, so batches are taken; logging/setLevel debug; frames parsed
 * here and fed as JSON; the session freed with calls still running); the next four seed the
 * driver; the rest is split into lines, each one frame (a message or a batch). After each
 * frame the driver acts on every agent turn in flight through the fake turn ops: streamed
 * text, the agent's tool calls, log lines (one with a key in it), success or failure. Every
 * message sent must serialize, carry no unredacted key, and each frame must end with exactly
 * the number of final sends nx_mcp_session_feed promised for it. */

#define MAX_LINES 64
#define MAX_TURNS (MAX_LINES * 2)
#define SECRET "sk-ant-api03-fuzzfuzzfuzzfuzzfuzzfuzzfuzz"

struct fturn {
    void (*on_text)(const char *delta, size_t len, void *udata);
    void (*on_tool)(const char *name, bool is_end, bool is_error, void *udata);
    void (*on_done)(int rc, const struct nx_turn_result *res, void *udata);
    void *udata;
    bool is_live;
};

static struct fturn turns[MAX_TURNS];
static struct nx_config *cfg;
static struct nx_mcp_server *srv;
static size_t expected[MAX_LINES + 1], finals[MAX_LINES + 1];
static uint32_t rng;

static uint32_t next_rand(void)
{
    rng = rng * 1103515245u + 12345u;
    return rng >> 8;
}

static void end_turn(struct fturn *t, int rc, const char *text)
{
    struct nx_turn_result r;
    memset(&r, 0, sizeof r);
    r.text = text;
    if (rc < 0) {
        r.error_type = "api_error";
        r.error_message = text;
    }
    t->is_live = false;
    t->on_done(rc, &r, t->udata);
}

static struct nx_turn *fake_start(struct nx_agents *a, const struct nx_turn_opts *o)
{
    (void)a;
    for (size_t i = 0; i < MAX_TURNS; i++) {
        if (turns[i].is_live)
            continue;
        turns[i] = (struct fturn){o->on_text, o->on_tool, o->on_done, o->udata, true};
        if (!o->agent_id || !o->messages || !o->on_done)
            abort();
        return (struct nx_turn *)&turns[i];
    }
    abort(); /* more calls than frames: impossible */
}

static void fake_cancel(struct nx_turn *t)
{
    struct fturn *ft = (struct fturn *)t;
    if (!ft->is_live)
        abort(); /* cancelled after on_done */
    end_turn(ft, NX_ECANCELED, "cancelled");
}

static const struct nx_mcp_turn_ops ops = {fake_start, fake_cancel};

static void on_send(void *udata, void *origin, const json_t *msg, bool is_final)
{
    (void)udata;
    uintptr_t line = (uintptr_t)origin;
    if (msg) {
        /* Errors may echo the client's own input; results and log messages carry our text. */
        const char *m = json_string_value(json_object_get(msg, "method"));
        bool is_ours = json_object_get(msg, "result") || (m && strcmp(m, "notifications/message") == 0);
        char *s = json_dumps(msg, JSON_COMPACT);
        if (!s || (is_ours && strstr(s, SECRET)))
            abort(); /* unserializable, or a key that was not redacted */
        free(s);
    }
    if (line > MAX_LINES)
        abort();
    if (is_final)
        finals[line]++;
}

static void drive(void)
{
    for (size_t i = 0; i < MAX_TURNS; i++) {
        struct fturn *t = &turns[i];
        if (!t->is_live)
            continue;
        switch (next_rand() % 8) {
        case 0:
            if (t->on_text)
                t->on_text("some text", 9, t->udata);
            break;
        case 1:
            if (t->on_tool)
                t->on_tool("http_fetch", false, false, t->udata);
            break;
        case 2:
            if (t->on_tool)
                t->on_tool("http_fetch", true, next_rand() & 1, t->udata);
            break;
        case 3:
            nx_warn("tools", "agent kate: call to tool \"" SECRET "\" refused");
            break;
        case 4:
            end_turn(t, 0, "the answer");
            break;
        case 5:
            end_turn(t, NX_EHTTP, "upstream said no " SECRET);
            break;
        default:
            break;
        }
    }
}

static void setup(void)
{
    static const char agents[] =
        "agents:\n"
        "  - {id: kate, model: {provider: anthropic, model: m}}\n"
        "  - {id: bob, model: {provider: anthropic, model: m}}\n";
    struct nx_mcp_srv_conf conf;
    nx_log_set_level(NX_LOG_OFF);
    if (nx_config_load_mem(NULL, "agents.yaml", agents, sizeof agents - 1, &cfg, NULL) < 0)
        abort();
    if (nx_mcp_srv_conf_parse("max_frame: 4096\npage_size: 1\n", 29, &conf, NULL) < 0)
        abort();
    struct nx_mcp_server_deps deps = {.cfg = cfg, .ops = &ops};
    if (nx_mcp_server_new(&deps, &conf, &srv) < 0)
        abort();
    nx_mcp_srv_conf_cleanup(&conf);
}

static void feed_line(struct nx_mcp_session *s, const char *p, size_t len, uintptr_t line, bool as_json)
{
    void *origin = (void *)line;
    if (len > 4096) {
        nx_mcp_session_reject_oversize(s, origin);
        expected[line] += 1;
        return;
    }
    if (!as_json) {
        expected[line] += nx_mcp_session_feed(s, p, len, origin);
        return;
    }
    char err[200];
    json_t *v = nx_jsonrpc_load(p, len, err, sizeof err);
    if (!v)
        return;
    expected[line] += nx_mcp_session_feed_json(s, v, origin);
    json_decref(v);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char init[] = "{\"jsonrpc\":\"2.0\",\"id\":0,\"method\":\"initialize\",\"params\":"
                               "{\"protocolVersion\":\"2025-03-26\",\"capabilities\":{}}}";
    static const char level[] = "{\"jsonrpc\":\"2.0\",\"id\":-1,\"method\":\"logging/setLevel\","
                                "\"params\":{\"level\":\"debug\"}}";
    if (!srv)
        setup();
    if (size < 5)
        return 0;
    uint8_t flags = data[0];
    rng = (uint32_t)data[1] | (uint32_t)data[2] << 8 | (uint32_t)data[3] << 16 | (uint32_t)data[4] << 24;
    data += 5;
    size -= 5;
    memset(expected, 0, sizeof expected);
    memset(finals, 0, sizeof finals);

    struct nx_mcp_session_io io = {.send = on_send};
    struct nx_mcp_session *s = nx_mcp_session_new(srv, &io);
    if (flags & 1)
        expected[0] += nx_mcp_session_feed(s, init, sizeof init - 1, (void *)0);
    if (flags & 2)
        expected[0] += nx_mcp_session_feed(s, level, sizeof level - 1, (void *)0);

    const char *p = (const char *)data, *end = p + size;
    uintptr_t line = 1;
    while (p < end && line <= MAX_LINES) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t len = nl ? (size_t)(nl - p) : (size_t)(end - p);
        feed_line(s, p, len, line++, flags & 4);
        drive();
        p += len + (nl ? 1 : 0);
    }

    if (flags & 8) {
        /* Gone with calls running: they are cancelled and nothing more is sent. */
        nx_mcp_session_free(s);
        for (size_t i = 0; i < MAX_TURNS; i++) {
            if (turns[i].is_live)
                abort();
        }
        return 0;
    }
    for (size_t i = 0; i < MAX_TURNS; i++) {
        if (turns[i].is_live)
            end_turn(&turns[i], 0, "late answer");
    }
    if (nx_mcp_session_in_flight(s) != 0)
        abort();
    for (size_t i = 0; i <= MAX_LINES; i++) {
        if (finals[i] != expected[i])
            abort(); /* a request answered twice, or never */
    }
    nx_mcp_session_free(s);
    return 0;
}
