/* tools/call on the server side: an agent tool runs a real agent turn (progress notifications
 * carry the streamed text's length and name the agent's tool calls when the request has
 * _meta.progressToken), an exported registry tool runs in the sandbox of mcp_server.yaml's
 * tools_agent under its allowed_tools.
 * notifications/cancelled cancels the turn or the tool; no response follows (the transport is
 * told with a final NULL). Metrics: nexo_mcp_server_calls_total{tool,outcome},
 * nexo_mcp_server_call_seconds{tool}. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/clock.h"
#include "core/error.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/redact.h"
#include "mcp/jsonrpc.h"
#include "mcp/server_internal.h"

#define PROGRESS_EVERY_NS (200ull * 1000 * 1000)
#define SESSION_NAME_MAX 128

static const double buckets[] = {0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300};

static void count(const char *tool, const char *outcome, double secs)
{
    static const char *const labels[] = {"tool", "outcome", NULL};
    static const char *const hlabels[] = {"tool", NULL};
    const char *values[] = {tool, outcome};

    nx_counter_add(nx_metric_counter("nexo_mcp_server_calls_total",
                                     "tools/call answered by nexo's MCP server, by tool and outcome.",
                                     labels),
                   values, 1);
    if (secs >= 0)
        nx_histogram_observe(nx_metric_histogram("nexo_mcp_server_call_seconds",
                                                 "Time from a tools/call to its answer (nexo's MCP server).",
                                                 hlabels, buckets, NX_ARRAY_LEN(buckets)),
                             values, secs);
}

static double elapsed(const struct srv_call *c)
{
    return (double)(nx_mono_ns() - c->start_ns) / 1e9;
}

static void unlink_call(struct srv_call *c)
{
    struct nx_mcp_session *s = c->s;
    if (!s)
        return;
    if (c->prev)
        c->prev->next = c->next;
    else
        s->calls = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->next = c->prev = NULL;
    s->n_calls--;
    c->s = NULL;
}

static void call_free(struct srv_call *c)
{
    json_decref(c->id);
    json_decref(c->progress_token);
    free(c->tool);
    free(c);
}

/* The answer: result stolen. */
static void finish(struct srv_call *c, json_t *result, const char *outcome)
{
    struct nx_mcp_session *s = c->s;
    double secs = elapsed(c);
    count(c->tool, outcome, secs);
    if (!s) {
        json_decref(result);
        return;
    }
    mcp_logs_flush(s->srv); /* the call's log lines come before its answer */
    mcp_session_log(s, c->origin, strcmp(outcome, "ok") == 0 ? MCP_LOG_INFO : MCP_LOG_WARNING,
                    "tools/call %s: %s in %.3f s", c->tool, outcome, secs);
    unlink_call(c);
    mcp_send(s, c->origin, nx_jsonrpc_result_new(c->id, result), true);
}

static json_t *text_result(const char *text, size_t len, bool is_error)
{
    return json_pack("{s:[{s:s, s:s%}], s:b}", "content", "type", "text", "text", text ? text : "",
                     text ? len : 0, "isError", is_error);
}

static void finish_text(struct srv_call *c, bool is_error, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void finish_text(struct srv_call *c, bool is_error, const char *fmt, ...)
{
    struct nx_buf b = NX_BUF_INIT;
    va_list ap;
    va_start(ap, fmt);
    nx_buf_vprintf(&b, fmt, ap);
    va_end(ap);
    finish(c, text_result(b.data, b.len, is_error), is_error ? "tool_error" : "ok");
    nx_buf_cleanup(&b);
}

static void progress(struct srv_call *c, const char *message)
{
    if (!c->s || !c->progress_token)
        return;
    json_t *p = json_pack("{s:O, s:f, s:s}", "progressToken", c->progress_token, "progress", c->progress,
                          "message", message);
    mcp_send(c->s, c->origin, nx_jsonrpc_notification_new("notifications/progress", p), false);
    if (c->progress > 0) /* the first text report is never held back by the "thinking" one */
        c->last_progress_ns = nx_mono_ns();
}

/* ---- agent turns ---- */

static void on_text(const char *delta, size_t len, void *udata)
{
    struct srv_call *c = udata;
    (void)delta;
    c->text_len += len;
    if (!c->progress_token || !c->s || (double)c->text_len <= c->progress)
        return;
    if (c->last_progress_ns && nx_mono_ns() - c->last_progress_ns < PROGRESS_EVERY_NS)
        return;
    char msg[64];
    c->progress = (double)c->text_len;
    snprintf(msg, sizeof msg, "answering: %zu characters so far", c->text_len);
    progress(c, msg);
}

/* The agent's own tool calls: a progress step each (progress stays increasing: one more than the
 * last report; the streamed text's length takes over again once it is larger). */
static void on_tool(const char *name, bool is_end, bool is_error, void *udata)
{
    struct srv_call *c = udata;
    struct nx_buf msg = NX_BUF_INIT, red = NX_BUF_INIT;
    if (!c->progress_token || !c->s)
        return;
    c->progress += 1;
    /* The name is the model's: redacted like a log line. */
    nx_buf_printf(&msg, "%s tool %.100s%s", is_end ? "finished" : "calling", name,
                  is_end && is_error ? " (it failed)" : "");
    nx_redact_append(&red, msg.data, msg.len);
    progress(c, nx_buf_cstr(&red));
    nx_buf_cleanup(&msg);
    nx_buf_cleanup(&red);
}

static void on_turn_done(int rc, const struct nx_turn_result *res, void *udata)
{
    struct srv_call *c = udata;
    c->turn = NULL;
    if (c->is_cancelled || !c->s) { /* answered (or abandoned) already */
        call_free(c);
        return;
    }
    if (rc == 0) {
        const char *text = res && res->text ? res->text : "";
        finish(c, text_result(text, strlen(text), false), "ok");
    } else {
        const char *msg = res && res->error_message ? res->error_message : nx_strerror(rc);
        const char *type = res && res->error_type ? res->error_type
                           : rc == NX_ECANCELED ? "cancelled"
                                                : "error";
        /* Upstream errors can echo a key ("Incorrect API key provided: sk-..."). */
        struct nx_buf red = NX_BUF_INIT;
        nx_redact_append(&red, msg, strlen(msg));
        finish_text(c, true, "the agent could not answer (%s): %s", type, nx_buf_cstr(&red));
        nx_buf_cleanup(&red);
    }
    call_free(c);
}

static void start_agent(struct srv_call *c, const char *agent_id, const json_t *args)
{
    struct nx_mcp_session *s = c->s;
    const char *message = json_string_value(json_object_get(args, "message"));
    const json_t *sess = json_object_get(args, "session");
    char *key = NULL;

    if (!message || !*message || strlen(message) != json_string_length(json_object_get(args, "message"))) {
        finish_text(c, true, "\"message\" is required: a non-empty string (with no NUL character)");
        call_free(c);
        return;
    }
    if (sess && !json_is_null(sess)) {
        const char *sv = json_string_value(sess);
        /* (a NUL would cut the name short: another session, someone else's) */
        if (!sv || !*sv || strlen(sv) > SESSION_NAME_MAX || strlen(sv) != json_string_length(sess)) {
            finish_text(c, true, "\"session\" must be a non-empty string of at most %d characters, with "
                                 "no NUL character", SESSION_NAME_MAX);
            call_free(c);
            return;
        }
        struct nx_buf b = NX_BUF_INIT;
        nx_buf_printf(&b, "agent:%s:mcp:%s", agent_id, sv);
        key = nx_buf_steal(&b);
    }
    json_t *msgs = json_pack("[{s:s, s:[{s:s, s:s}]}]", "role", "user", "content", "type", "text", "text",
                             message);
    struct nx_turn_opts o = {
        .agent_id = agent_id,
        .session_key = key,
        .channel = "mcp",
        .messages = msgs,
        .temperature = -1,
        .on_text = c->progress_token ? on_text : NULL,
        .on_tool = c->progress_token ? on_tool : NULL,
        .on_done = on_turn_done,
        .udata = c,
    };
    mcp_session_log(s, c->origin, MCP_LOG_DEBUG, "tools/call %s: asking agent %s%s%s", c->tool, agent_id,
                    key ? " in session " : "", key ? key : "");
    progress(c, "the agent is thinking");
    /* The turn takes the current log context as its own (core/log.h): its lines are this call's. */
    uint64_t prev = nx_log_context_swap(c->log_ctx);
    c->turn = s->srv->ops.start(s->srv->agents, &o);
    nx_log_context_swap(prev);
    s->srv->turns_started++;
    json_decref(msgs);
    free(key);
}

/* ---- exported registry tools ---- */

static void on_tool_done(const char *output, size_t len, bool is_error, void *udata)
{
    struct srv_call *c = udata;
    c->tcall = NULL;
    if (!c->is_cancelled && c->s)
        finish(c, text_result(output, len, is_error), is_error ? "tool_error" : "ok");
    if (c->in_start)
        c->is_done = true;
    else
        call_free(c);
}

static void start_tool(struct srv_call *c, const char *name, const json_t *args)
{
    struct nx_mcp_server *srv = c->s->srv;
    const struct nx_agent_conf *ac = nx_config_agent(srv->cfg, srv->tools_agent);
    if (!ac) {
        finish_text(c, true, "the sandbox agent \"%s\" is no longer configured", srv->tools_agent);
        call_free(c);
        return;
    }
    /* the agent's own file-tool workspace: none when it holds the configuration or data */
    char *ws = nx_agents_workspace(srv->agents, ac->id);
    struct nx_buf key = NX_BUF_INIT;
    nx_buf_printf(&key, "agent:%s:mcp:tools", ac->id);
    struct nx_tool_ctx ctx = {
        .loop = srv->loop,
        .http = srv->http,
        .agent_id = ac->id,
        .session_key = nx_buf_cstr(&key),
        .workspace = ws,
        .outbound_allowlist = (const char *const *)nx_strlistmap_get(&ac->outbound_allowlist, "http"),
        .allow_private_addresses = false,
    };
    json_t *empty = args ? NULL : json_object();
    mcp_session_log(c->s, c->origin, MCP_LOG_DEBUG, "tools/call %s in the sandbox of agent %s", name, ac->id);
    c->in_start = true;
    uint64_t prev = nx_log_context_swap(c->log_ctx);
    struct nx_tool_call *tc = nx_tool_invoke(&ctx, (const char *const *)ac->allowed_tools, name,
                                             args ? args : empty, on_tool_done, c);
    nx_log_context_swap(prev);
    c->in_start = false;
    json_decref(empty);
    free(ws);
    nx_buf_cleanup(&key);
    if (c->is_done) {
        call_free(c);
        return;
    }
    c->tcall = tc;
}

/* ---- entry points ---- */

void mcp_call_start(struct nx_mcp_session *s, const json_t *id, const json_t *params, void *origin)
{
    const char *name = json_string_value(json_object_get(params, "name"));
    const json_t *args = json_object_get(params, "arguments");
    struct srv_tool t;

    if (!name) {
        mcp_send_error(s, origin, id, NX_JSONRPC_INVALID_PARAMS, "tools/call needs params.name (a string)");
        return;
    }
    if (args && !json_is_null(args) && !json_is_object(args)) {
        mcp_send_error(s, origin, id, NX_JSONRPC_INVALID_PARAMS, "params.arguments must be an object");
        return;
    }
    if (json_is_null(args))
        args = NULL;
    if (!mcp_find_tool(s->srv, name, &t)) {
        count("(unknown)", "error", -1);
        mcp_send_error(s, origin, id, NX_JSONRPC_INVALID_PARAMS, "Unknown tool: %.200s", name);
        return;
    }
    for (struct srv_call *o = s->calls; o; o = o->next) {
        if (json_equal(o->id, (json_t *)id)) {
            mcp_send_error(s, origin, id, NX_JSONRPC_INVALID_REQUEST, "request id already in use");
            return;
        }
    }
    struct srv_call *c = nx_calloc(1, sizeof *c);
    c->s = s;
    c->id = json_deep_copy(id);
    c->origin = origin;
    c->tool = nx_strdup(t.name);
    c->agent = t.agent_id ? t.agent_id : s->srv->tools_agent;
    c->log_ctx = nx_log_context_new();
    c->start_ns = nx_mono_ns();
    const json_t *tok = json_object_get(json_object_get(params, "_meta"), "progressToken");
    if (json_is_string(tok) || json_is_integer(tok))
        c->progress_token = json_deep_copy(tok);
    c->next = s->calls;
    if (s->calls)
        s->calls->prev = c;
    s->calls = c;
    s->n_calls++;
    if (t.agent_id)
        start_agent(c, t.agent_id, args);
    else
        start_tool(c, t.reg, args);
}

bool mcp_call_cancel(struct nx_mcp_session *s, const json_t *request_id, const char *reason)
{
    for (struct srv_call *c = s->calls; c; c = c->next) {
        if (!json_equal(c->id, (json_t *)request_id))
            continue;
        void *origin = c->origin;
        mcp_session_log(s, origin, MCP_LOG_INFO, "tools/call %s cancelled by the client%s%.200s", c->tool,
                        reason ? ": " : "", reason ? reason : "");
        count(c->tool, "cancelled", elapsed(c));
        bool had_turn = c->turn != NULL;
        struct nx_turn *turn = c->turn;
        c->is_cancelled = true;
        if (had_turn) {
            unlink_call(c);
            s->srv->ops.cancel(turn); /* on_turn_done frees, now or soon */
        } else {
            unlink_call(c);
            if (c->tcall) {
                struct nx_tool_call *tc = c->tcall;
                c->tcall = NULL;
                nx_tool_cancel(tc);
                call_free(c);
            }
        }
        /* No response for a cancelled request; the transport still learns it ended. */
        if (s->io.send)
            s->io.send(s->io.udata, origin, NULL, true);
        return true;
    }
    return false;
}

void mcp_calls_abandon(struct nx_mcp_session *s)
{
    while (s->calls) {
        struct srv_call *c = s->calls;
        struct nx_mcp_server *srv = s->srv;
        struct nx_turn *turn = c->turn;
        unlink_call(c);
        c->is_cancelled = true;
        if (turn) {
            srv->ops.cancel(turn);
        } else if (c->tcall) {
            struct nx_tool_call *tc = c->tcall;
            c->tcall = NULL;
            nx_tool_cancel(tc);
            call_free(c);
        }
    }
}
