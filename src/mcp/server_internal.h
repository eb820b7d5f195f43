#ifndef NX_MCP_SERVER_INTERNAL_H
#define NX_MCP_SERVER_INTERNAL_H

/* Shared by server.c (sessions, lifecycle, lists) and server_call.c (tools/call). */

#include <pthread.h>
#include <stdarg.h>

#include "mcp/server.h"
#include "tools/tool.h"

enum { MCP_LOG_NONE = -1, MCP_LOG_DEBUG = 0, MCP_LOG_INFO, MCP_LOG_NOTICE, MCP_LOG_WARNING,
       MCP_LOG_ERROR, MCP_LOG_CRITICAL, MCP_LOG_ALERT, MCP_LOG_EMERGENCY };

/* One tool offered: an agent or an exported registry tool. */
struct srv_tool {
    char *name;       /* as offered */
    char *agent_id;   /* agent tools */
    const char *reg;  /* exported registry tools: the registry name */
};

struct nx_mcp_server {
    uv_loop_t *loop;
    struct nx_http_client *http;
    struct nx_agents *agents;
    struct nx_config *cfg;
    struct nx_mcp_turn_ops ops;
    struct nx_mcp_srv_conf conf;
    struct srv_tool *agent_tools;
    size_t n_agent_tools;
    char *tools_agent;           /* sandbox for exported tools, or NULL */
    struct nx_mcp_session *sessions;
    struct nx_timer *watch;      /* exported tools: notices registry changes (list_changed) */
    uint64_t tools_hash;
    /* Log forwarding (server_log.c): lines from nx_log's sink wait here for the loop. */
    pthread_t loop_thread;       /* the thread that created the server: lines from others are not sent */
    int sink_level;              /* MCP_LOG_* the sink is set at, MCP_LOG_NONE = no sink */
    struct fwd_line *log_head, *log_tail;
    size_t n_log_queued;
    struct nx_timer *log_flush;
    /* Lines without a log context go to a session only when nothing else could have written
     * them: it is the only session there ever was, and every turn of the process was its. */
    size_t sessions_opened;
    uint64_t turns_started;      /* agent turns started for calls */
};

struct srv_call;

struct nx_mcp_session {
    struct nx_mcp_server *srv;
    struct nx_mcp_session_io io;
    char *protocol;              /* negotiated, or NULL */
    bool is_initialized;         /* notifications/initialized seen */
    int log_level;               /* MCP_LOG_*, NONE until logging/setLevel */
    double log_tokens;           /* forwarded lines: a token bucket */
    uint64_t log_refill_ns;
    unsigned log_dropped;        /* lines over the rate, not yet reported */
    struct srv_call *calls;      /* in flight */
    size_t n_calls;
    struct nx_mcp_session *next, *prev;
};

/* A tools/call in flight. Outlives its session when the turn's on_done is still due. */
struct srv_call {
    struct nx_mcp_session *s;    /* NULL once the session is gone */
    json_t *id;
    void *origin;
    json_t *progress_token;      /* NULL = no progress asked */
    char *tool;                  /* for metrics */
    const char *agent;           /* whose turn or sandbox runs it (borrowed from the server) */
    uint64_t log_ctx;            /* core/log.h context of its turn or tool: its lines carry it */
    uint64_t start_ns;
    uint64_t last_progress_ns;
    size_t text_len;
    double progress;
    struct nx_turn *turn;
    struct nx_tool_call *tcall;
    bool in_start;               /* inside nx_turn_start / nx_tool_invoke */
    bool is_done;                /* answered while in_start */
    bool is_cancelled;
    struct srv_call *next, *prev;
};

/* Sends msg (stolen) for origin. */
void mcp_send(struct nx_mcp_session *s, void *origin, json_t *msg, bool is_final);
void mcp_send_error(struct nx_mcp_session *s, void *origin, const json_t *id, int code, const char *fmt,
                    ...) __attribute__((format(printf, 5, 6)));
/* notifications/message when level >= the session's (after logging/setLevel); also nx_log. */
void mcp_session_log(struct nx_mcp_session *s, void *origin, int level, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* An offered tool by name (agent tool or exported registry tool); out borrows from srv. */
bool mcp_find_tool(const struct nx_mcp_server *srv, const char *name, struct srv_tool *out);
/* tools/list entries in order (agent tools, then exported); new reference. */
json_t *mcp_tool_list(const struct nx_mcp_server *srv);

/* server_log.c: nexo's own log lines forwarded to the session whose call they were written for
 * (their log context is the call's), when it set a level, as notifications/message {level,
 * logger: component}. */
/* After logging/setLevel or a session's end: sets, changes or removes the log sink. */
void mcp_logs_update(struct nx_mcp_server *srv);
/* Sends the lines waiting (before a call's answer, so its lines come first). */
void mcp_logs_flush(struct nx_mcp_server *srv);
/* At server free: drops the lines waiting, removes the sink. */
void mcp_logs_stop(struct nx_mcp_server *srv);

/* server_call.c */
void mcp_call_start(struct nx_mcp_session *s, const json_t *id, const json_t *params, void *origin);
/* notifications/cancelled: true when a call was found and cancelled. */
bool mcp_call_cancel(struct nx_mcp_session *s, const json_t *request_id, const char *reason);
/* At session free: cancels everything, answering nothing. */
void mcp_calls_abandon(struct nx_mcp_session *s);

#endif
