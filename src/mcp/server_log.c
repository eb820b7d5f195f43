/* nexo's own log lines forwarded to MCP sessions. A session that sent logging/setLevel gets, as
 * notifications/message {level, logger: <component>, data}, the lines at or above its level that
 * were written for one of its calls in flight: each call has a log context id (core/log.h), set
 * while its turn's callbacks run (the turn inherits it from the call) or its tool starts, and a
 * line goes to the session whose running call has the line's context, to no other. On a gateway
 * other sessions, channels and API clients run turns of the same agents at the same time: a line
 * without context may be any of theirs, so it goes nowhere, unless the session cannot be
 * confused with anyone (the stdio server: the only session there ever was, and every turn of
 * the process was its), where lines without context from the components that run a turn
 * (agent, agents, llm, tools, mcp) go to it while it has a call running. The sink only copies
 * loop-thread lines into a queue; a zero-delay timer (or a call's answer, which comes after its
 * lines) sends them, so nothing is sent from inside whatever code logged. At most LOG_RATE lines
 * a second per session (bursts of LOG_BURST); what is dropped is counted and reported in the next
 * line sent. The messages were redacted by nx_log before the sink saw them. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "agent/agent.h"
#include "core/log.h"
#include "mcp/jsonrpc.h"
#include "mcp/server_internal.h"
#include "runtime/runtime.h"

#define LOG_QUEUE_MAX 256
#define LOG_RATE 20.0
#define LOG_BURST 40.0
#define LOG_MSG_MAX 4096

static const char *const mcp_levels[] = {"debug", "info", "notice", "warning", "error", "critical",
                                         "alert", "emergency"};
static const char *const turn_components[] = {"agent", "agents", "llm", "tools", "mcp"};

struct fwd_line {
    struct fwd_line *next;
    int level;      /* MCP_LOG_* */
    char *logger;
    uint64_t ctx;   /* the line's log context, 0 = none */
    char *msg;
};

static int mcp_level_of(enum nx_log_level l)
{
    return l <= NX_LOG_DEBUG ? MCP_LOG_DEBUG
           : l == NX_LOG_INFO ? MCP_LOG_INFO
           : l == NX_LOG_WARN ? MCP_LOG_WARNING
                              : MCP_LOG_ERROR;
}

static enum nx_log_level nx_level_of(int mcp)
{
    return mcp <= MCP_LOG_DEBUG ? NX_LOG_DEBUG
           : mcp <= MCP_LOG_NOTICE ? NX_LOG_INFO
           : mcp == MCP_LOG_WARNING ? NX_LOG_WARN
                                    : NX_LOG_ERROR;
}

static bool is_turn_component(const char *c)
{
    for (size_t i = 0; i < NX_ARRAY_LEN(turn_components); i++) {
        if (strcmp(c, turn_components[i]) == 0)
            return true;
    }
    return false;
}

/* No one but this session can have written a line without context: the server never had
 * another, and no turn of the process was started by anything else. */
static bool is_sole_tenant(const struct nx_mcp_session *s)
{
    const struct nx_mcp_server *srv = s->srv;

    return srv->sessions_opened == 1 && srv->agents &&
           nx_agents_turns_started(srv->agents) == srv->turns_started;
}

/* The call a line was written for: the one whose log context it has; a line without context
 * (from a turn component) belongs to the sole tenant's first call. */
static struct srv_call *call_for(const struct nx_mcp_session *s, uint64_t ctx)
{
    if (!ctx)
        return is_sole_tenant(s) ? s->calls : NULL;
    for (struct srv_call *c = s->calls; c; c = c->next) {
        if (c->log_ctx == ctx)
            return c;
    }
    return NULL;
}

static bool anyone_listening(const struct nx_mcp_server *srv, int level, uint64_t ctx)
{
    for (const struct nx_mcp_session *s = srv->sessions; s; s = s->next) {
        if (s->log_level != MCP_LOG_NONE && level >= s->log_level && call_for(s, ctx))
            return true;
    }
    return false;
}

static void line_free(struct fwd_line *l)
{
    free(l->logger);
    free(l->msg);
    free(l);
}

static void on_flush(void *arg)
{
    struct nx_mcp_server *srv = arg;
    srv->log_flush = NULL;
    mcp_logs_flush(srv);
}

/* The sink: runs inside nx_log on whatever thread logged; never sends. */
static void on_line(const struct nx_log_line *line, void *udata)
{
    struct nx_mcp_server *srv = udata;
    int level = mcp_level_of(line->level);

    if (!pthread_equal(pthread_self(), srv->loop_thread))
        return; /* sessions belong to the loop thread */
    if (strcmp(line->component, "mcp-server") == 0)
        return; /* the server's own lines about a call are sent by mcp_session_log */
    if (!line->context && !is_turn_component(line->component))
        return;
    if (srv->n_log_queued >= LOG_QUEUE_MAX || !anyone_listening(srv, level, line->context))
        return;
    struct fwd_line *l = nx_calloc(1, sizeof *l);
    l->level = level;
    l->logger = nx_strdup(line->component);
    l->ctx = line->context;
    l->msg = nx_strndup(line->msg, line->len < LOG_MSG_MAX ? line->len : LOG_MSG_MAX);
    if (srv->log_tail)
        srv->log_tail->next = l;
    else
        srv->log_head = l;
    srv->log_tail = l;
    srv->n_log_queued++;
    if (srv->loop && !srv->log_flush)
        srv->log_flush = nx_timer_once(srv->loop, 0, on_flush, srv);
}

static void send_line(struct nx_mcp_session *s, void *origin, int level, const char *logger, const char *msg)
{
    json_t *p = json_pack("{s:s, s:s, s:s}", "level", mcp_levels[level], "logger", logger, "data", msg);
    mcp_send(s, origin, nx_jsonrpc_notification_new("notifications/message", p), false);
}

/* One token per line; LOG_RATE tokens a second up to LOG_BURST. */
static bool take_token(struct nx_mcp_session *s)
{
    uint64_t now = nx_mono_ns();
    if (!s->log_refill_ns) {
        s->log_tokens = LOG_BURST;
    } else {
        s->log_tokens += (double)(now - s->log_refill_ns) / 1e9 * LOG_RATE;
        if (s->log_tokens > LOG_BURST)
            s->log_tokens = LOG_BURST;
    }
    s->log_refill_ns = now;
    if (s->log_tokens < 1.0)
        return false;
    s->log_tokens -= 1.0;
    return true;
}

static void deliver(struct nx_mcp_session *s, const struct fwd_line *l)
{
    if (s->log_level == MCP_LOG_NONE || l->level < s->log_level)
        return;
    struct srv_call *c = call_for(s, l->ctx);
    if (!c)
        return;
    if (!take_token(s)) {
        s->log_dropped++;
        return;
    }
    if (s->log_dropped) {
        char note[96];
        snprintf(note, sizeof note, "%u log lines not sent (more than %.0f a second)", s->log_dropped,
                 LOG_RATE);
        s->log_dropped = 0;
        send_line(s, c->origin, MCP_LOG_WARNING, "mcp-server", note);
    }
    send_line(s, c->origin, l->level, l->logger, l->msg);
}

void mcp_logs_flush(struct nx_mcp_server *srv)
{
    struct fwd_line *l;
    nx_timer_cancel(srv->log_flush);
    srv->log_flush = NULL;
    /* Lines logged while sending join the queue and go out in this loop too. */
    while ((l = srv->log_head)) {
        srv->log_head = l->next;
        if (!srv->log_head)
            srv->log_tail = NULL;
        srv->n_log_queued--;
        for (struct nx_mcp_session *s = srv->sessions; s; s = s->next)
            deliver(s, l);
        line_free(l);
    }
}

void mcp_logs_update(struct nx_mcp_server *srv)
{
    int min = MCP_LOG_NONE;
    for (const struct nx_mcp_session *s = srv->sessions; s; s = s->next) {
        if (s->log_level != MCP_LOG_NONE && (min == MCP_LOG_NONE || s->log_level < min))
            min = s->log_level;
    }
    if (min == srv->sink_level)
        return;
    if (min == MCP_LOG_NONE) {
        nx_log_sink_remove(on_line, srv);
    } else if (nx_log_sink_add(on_line, srv, nx_level_of(min)) < 0) {
        nx_warn("mcp-server", "too many log sinks: nexo's log lines are not forwarded to MCP clients");
        min = MCP_LOG_NONE;
    }
    srv->sink_level = min;
}

void mcp_logs_stop(struct nx_mcp_server *srv)
{
    nx_log_sink_remove(on_line, srv);
    srv->sink_level = MCP_LOG_NONE;
    nx_timer_cancel(srv->log_flush);
    srv->log_flush = NULL;
    while (srv->log_head) {
        struct fwd_line *l = srv->log_head;
        srv->log_head = l->next;
        line_free(l);
    }
    srv->log_tail = NULL;
    srv->n_log_queued = 0;
}
