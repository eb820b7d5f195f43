#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/error.h"
#include "core/log.h"
#include "http/sse.h"
#include "mcp/asks.h"
#include "mcp/client.h"
#include "mcp/jsonrpc.h"
#include "mcp/mcp.h"
#include "mcp/oauth.h"
#include "mcp/oauth_internal.h"
#include "mcp/stderr_log.h"

/* MCP framing from a server we do not trust: the input is split into lines (stdio) or read as an
 * SSE stream (Streamable HTTP), both with a small frame cap, and every frame goes to a live
 * client session through a fake transport, so parsing, classification, the answers to server
 * requests (elicitation/create with the defaults policy, sampling/createMessage's message
 * conversion), progress and responses to unknown ids all run. The line splitter must give the
 * same lines whole and byte at a time, and so must the stderr log (cut and rate-limited lines).
 * The input, as a string, also goes through the OAuth parsers (WWW-Authenticate, redirect query,
 * URLs). */

#define FUZZ_CAP 512

static uv_loop_t *loop;
static struct nx_mcp_asks *asks;

static int fz_on_request(struct nx_mcp_client *c, const char *method, const json_t *id, const json_t *params,
                         void *udata)
{
    (void)udata;
    return nx_mcp_asks_handle(asks, c, method, id, params);
}

static void fuzz_oauth_parsers(const uint8_t *data, size_t size)
{
    char *s = nx_malloc(size + 1), out[256], **urls;
    char *q;

    memcpy(s, data, size);
    s[size] = '\0';
    nx_mcp_oauth_www_param(s, "scope", out, sizeof out);
    nx_mcp_oauth_www_param(s, "resource_metadata", out, sizeof out);
    free(nx_oauth_query_param(s, "code"));
    if ((q = nx_oauth_query_param(s, "state")) && strlen(q) > size)
        abort();
    free(q);
    nx_mcp_oauth_resource_matches(s, "http://127.0.0.1:1/mcp");
    urls = nx_mcp_oauth_discovery_urls(s, data[0] & 2);
    for (size_t i = 0; urls[i]; i++)
        free(urls[i]);
    free(urls);
    free(s);
}

/* A transport that records what the client sends and never fails. */
static int fl_start(struct nx_mcp_link *t)
{
    (void)t;
    return 0;
}

static int fl_send(struct nx_mcp_link *t, const json_t *msg, uint32_t timeout_ms)
{
    char *s = json_dumps(msg, JSON_COMPACT);

    (void)t;
    (void)timeout_ms;
    if (!s)
        abort(); /* the client only sends what it built */
    free(s);
    return 0;
}

static void fl_forget(struct nx_mcp_link *t, long long id)
{
    (void)t;
    (void)id;
}

static void fl_version(struct nx_mcp_link *t, const char *v)
{
    (void)t;
    (void)v;
}

static void fl_close(struct nx_mcp_link *t)
{
    free(t->name);
    free(t);
}

static const struct nx_mcp_link_vt fake_vt = {"fake", fl_start, fl_send, fl_forget, fl_version, fl_close};

static int on_line(const char *line, size_t len, void *udata)
{
    struct nx_mcp_link *t = udata;
    char err[160];
    json_t *v = nx_jsonrpc_load(line, len, err, sizeof err);

    if (v) {
        struct nx_jsonrpc_msg m;

        if (json_is_object(v) && nx_jsonrpc_classify(v, &m, err, sizeof err) == 0 &&
            m.kind == NX_JSONRPC_RESULT) {
            char *text = nx_mcp_result_text(m.result);
            free(text);
        }
        json_decref(v);
    }
    if (t)
        nx_mcp_link_deliver(t, line, len);
    return 0;
}

static int on_event(const struct nx_sse_event *ev, void *udata)
{
    return on_line(ev->data, ev->data_len, udata);
}

static int count_line(const char *line, size_t len, void *udata)
{
    struct nx_buf *log = udata;

    nx_buf_append(log, &len, sizeof len);
    nx_buf_append(log, line, len);
    return 0;
}

static void on_result(int rc, const json_t *result, const char *err, void *udata)
{
    (void)rc;
    (void)result;
    (void)err;
    (void)udata;
}

static void on_progress(double p, double total, const char *msg, void *udata)
{
    (void)p;
    (void)total;
    (void)msg;
    (void)udata;
}

/* The stderr log, whole and byte at a time at one instant: the same lines kept, cut and
 * suppressed, and never more than its cap buffered. */
static void fuzz_stderr_log(const uint8_t *data, size_t size)
{
    struct nx_mcp_stderr_log ea, eb;

    nx_mcp_stderr_log_init(&ea, "fuzz");
    nx_mcp_stderr_log_init(&eb, "fuzz");
    nx_mcp_stderr_log_feed(&ea, (const char *)data, size, 1000);
    for (size_t i = 0; i < size; i++)
        nx_mcp_stderr_log_feed(&eb, (const char *)data + i, 1, 1000);
    if (ea.lines != eb.lines || ea.suppressed != eb.suppressed || ea.len != eb.len || ea.cut != eb.cut ||
        ea.len > sizeof ea.line || memcmp(ea.line, eb.line, ea.len) != 0)
        abort();
    nx_mcp_stderr_log_flush(&ea, 1000, true);
    nx_mcp_stderr_log_flush(&eb, 1000, true);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct nx_jsonrpc_lines a, b;
    struct nx_buf la = NX_BUF_INIT, lb = NX_BUF_INIT;
    struct nx_mcp_link *t;
    struct nx_mcp_client *c = NULL;
    struct nx_mcp_client_opts co = {.name = "fuzz"};
    struct nx_mcp_client_cb cb = {.on_request = fz_on_request};
    json_t *caps;
    int ra, rb = 0;

    if (!loop) {
        json_t *extra = json_loads("{\"elicitation\":\"defaults\",\"sampling\":{\"enabled\":true,"
                                   "\"rate_limit_per_minute\":100000}}", 0, NULL);

        loop = nx_calloc(1, sizeof *loop);
        uv_loop_init(loop);
        nx_log_set_level(NX_LOG_OFF);
        asks = nx_mcp_asks_new("fuzz", extra, NULL); /* no agents: sampling answers an error */
        json_decref(extra);
    }
    if (size == 0)
        return 0;
    fuzz_oauth_parsers(data, size);

    /* the splitter alone: whole input vs byte at a time */
    nx_jsonrpc_lines_init(&a, FUZZ_CAP);
    nx_jsonrpc_lines_init(&b, FUZZ_CAP);
    ra = nx_jsonrpc_lines_feed(&a, (const char *)data, size, count_line, &la);
    for (size_t i = 0; i < size; i++) {
        if (nx_jsonrpc_lines_feed(&b, (const char *)data + i, 1, count_line, &lb) == NX_ETOOBIG)
            rb = NX_ETOOBIG;
    }
    if (la.len != lb.len || (la.len && memcmp(la.data, lb.data, la.len) != 0) || ra != rb ||
        a.dropped != b.dropped || a.buf.len > FUZZ_CAP + 1)
        abort();
    nx_jsonrpc_lines_cleanup(&a);
    nx_jsonrpc_lines_cleanup(&b);
    nx_buf_cleanup(&la);
    nx_buf_cleanup(&lb);
    fuzz_stderr_log(data, size);

    /* a client session fed the frames: ids 1 (initialize) and 2 (a call with progress) pend */
    t = nx_calloc(1, sizeof *t);
    t->vt = &fake_vt;
    t->name = nx_strdup("fuzz");
    t->max_frame = FUZZ_CAP;
    caps = json_object();
    nx_mcp_asks_declare(asks, caps);
    co.capabilities = caps;
    nx_mcp_client_new(loop, t, &co, &cb, NULL, &c);
    json_decref(caps);
    nx_mcp_client_request(c, "tools/call", json_pack("{s:s}", "name", "x"), 0, on_progress, on_result, NULL);
    if (data[0] & 1) {
        struct nx_sse_reader r;

        nx_sse_reader_init(&r, FUZZ_CAP, on_event, t);
        nx_sse_feed(&r, (const char *)data + 1, size - 1);
        nx_sse_reader_cleanup(&r);
    } else {
        nx_jsonrpc_lines_init(&a, FUZZ_CAP);
        nx_jsonrpc_lines_feed(&a, (const char *)data + 1, size - 1, on_line, t);
        nx_jsonrpc_lines_cleanup(&a);
    }
    nx_mcp_client_free(c);
    for (int i = 0; i < 16 && uv_run(loop, UV_RUN_NOWAIT); i++)
        ;
    return 0;
}
