#ifndef NX_MCP_SERVER_H
#define NX_MCP_SERVER_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "agent/agent.h"
#include "config/config.h"
#include "http/client.h"
#include "http/server.h"

/* nexo as an MCP server: each permitted agent is a tool (ask_<agent>, input {message, session?},
 * the call runs a real agent turn) and the registry tools mcp_server.yaml exports run in the
 * sandbox of one agent. The core (server.c, server_call.c) knows no transport: a session is fed
 * JSON-RPC frames and sends messages through a callback. Transports: stdio (server_stdio.c,
 * `nexo mcp-server`) and Streamable HTTP (server_http.c, /mcp on the gateway listener). Loop
 * thread only. See docs/mcp.md. */

#define NX_MCP_SERVER_PROTOCOL_LATEST "2025-11-25"

/* ---- mcp_server.yaml ---- */

struct nx_mcp_srv_conf {
    bool enabled;              /* default false: /mcp is not served (stdio works regardless) */
    char *name;                /* serverInfo.name; default "nexo" */
    char **agents;             /* agents offered as tools; empty = every agent */
    char *tools_agent;         /* whose sandbox runs exported tools; default the first offered */
    char **expose_tools;       /* registry tools to export (globs); empty = none */
    char *auth_token_env;      /* HTTP: env var holding the bearer token; default the gateway's */
    uint64_t max_frame;        /* one JSON-RPC message; default 4MiB */
    uint32_t page_size;        /* tools/list page; default 100 */
    struct {
        bool enabled;          /* default true (when `enabled`) */
        char *bind;            /* accepted for nexo-rs compatibility; /mcp is on the gateway listener */
        char **allowed_origins; /* Origin values accepted besides localhost ones ("https://app.example") */
        uint32_t max_sessions; /* default 64 */
        uint32_t session_idle_timeout_ms; /* default 30m */
        uint32_t sse_retry_ms; /* the SSE retry: field; default 1000 */
    } http;
};

/* Reads <config dir>/mcp_server.yaml (absent: defaults). Problems go to diags as
 * file:line:col; returns 0 or NX_ECONFIG. *out must be cleaned up either way. */
int nx_mcp_srv_conf_load(const struct nx_config *cfg, struct nx_mcp_srv_conf *out,
                            struct nx_diags *diags);
/* From YAML text (tests). */
int nx_mcp_srv_conf_parse(const char *yaml, size_t len, struct nx_mcp_srv_conf *out,
                             struct nx_diags *diags);
void nx_mcp_srv_conf_cleanup(struct nx_mcp_srv_conf *c);

/* ---- the server (tables shared by sessions) ---- */

struct nx_mcp_server;
struct nx_mcp_session;

/* How a call reaches an agent; the defaults are nx_turn_start / nx_turn_cancel (tests replace
 * them). */
struct nx_mcp_turn_ops {
    struct nx_turn *(*start)(struct nx_agents *a, const struct nx_turn_opts *o);
    void (*cancel)(struct nx_turn *t);
};

struct nx_mcp_server_deps {
    uv_loop_t *loop;
    struct nx_http_client *http;   /* for exported tools (http_fetch...); may be NULL */
    struct nx_agents *agents;
    struct nx_config *cfg;         /* agents' descriptions, sandboxes; a reference is taken */
    const char *only_agent;        /* stdio --agent: offer this agent only (overrides conf) */
    const struct nx_mcp_turn_ops *ops; /* NULL = the real ones */
};

/* conf is copied. Fails with NX_ENOENT when an agent named in the conf (or only_agent) does not
 * exist. */
int nx_mcp_server_new(const struct nx_mcp_server_deps *deps, const struct nx_mcp_srv_conf *conf,
                      struct nx_mcp_server **out);
/* Every session must be freed first. Accepts NULL. */
void nx_mcp_server_free(struct nx_mcp_server *srv);
const struct nx_mcp_srv_conf *nx_mcp_server_get_conf(const struct nx_mcp_server *srv);
/* A new snapshot for later calls (agents' descriptions and sandboxes). */
void nx_mcp_server_set_config(struct nx_mcp_server *srv, struct nx_config *cfg);

/* ---- a session ---- */

/* Every message the session produces goes through send: `origin` is what was given to feed with
 * the request it answers or reports on (NULL for session-wide messages); `is_final` marks the
 * last message for one request of that feed (its response; msg is NULL when a cancelled
 * request ends without one). msg is borrowed. */
struct nx_mcp_session_io {
    void (*send)(void *udata, void *origin, const json_t *msg, bool is_final);
    void *udata;
};

struct nx_mcp_session *nx_mcp_session_new(struct nx_mcp_server *srv, const struct nx_mcp_session_io *io);
/* Cancels calls in flight (nothing more is sent). Accepts NULL. */
void nx_mcp_session_free(struct nx_mcp_session *s);

/* One frame of text: parse errors get a -32700 answer. Returns how many is_final sends this
 * frame will produce for origin (0 for notifications and responses), some of which may already
 * have happened inside this call. */
size_t nx_mcp_session_feed(struct nx_mcp_session *s, const char *text, size_t len, void *origin);
/* The same for a parsed message or batch (borrowed). */
size_t nx_mcp_session_feed_json(struct nx_mcp_session *s, const json_t *v, void *origin);
/* Answers a frame that was too large to read (-32600, id null). Counts as one final send. */
void nx_mcp_session_reject_oversize(struct nx_mcp_session *s, void *origin);

/* The negotiated protocol version, NULL before initialize. */
const char *nx_mcp_session_protocol(const struct nx_mcp_session *s);
/* True when a JSON-RPC batch would be processed (2025-03-26 and earlier), not rejected. */
bool nx_mcp_session_accepts_batch(const struct nx_mcp_session *s);
/* Requests still being worked on. */
size_t nx_mcp_session_in_flight(const struct nx_mcp_session *s);

/* ---- helpers ---- */
/* True for a protocol version this server speaks. */
bool nx_mcp_server_version_supported(const char *v);
/* True when v (a message or a batch) holds an initialize request. */
bool nx_mcp_is_initialize(const json_t *v);

/* ---- transports ---- */

struct nx_mcp_stdio_opts {
    const char *config_dir;   /* NULL = embedded defaults */
    const char *data_dir;
    const char *agent_id;     /* NULL = the agents of mcp_server.yaml (or all) */
};
/* `nexo mcp-server`: newline-delimited JSON-RPC on stdin/stdout (logs on stderr) until stdin
 * ends or a stop signal. Returns a process exit code. */
int nx_mcp_stdio_run(const struct nx_mcp_stdio_opts *o);

struct nx_mcp_httpd;
typedef bool (*nx_mcp_authorize_fn)(const struct nx_http_req *req, const char *token);

struct nx_mcp_httpd_opts {
    struct nx_mcp_server *server;
    const char *const *token_ptr;  /* the gateway's auth_token (*token_ptr NULL = none) */
    nx_mcp_authorize_fn authorize; /* constant-time bearer check (api/admin.h) */
    bool is_loopback;              /* the listener binds loopback: Host must be local too */
};
/* Serves POST/GET/DELETE /mcp on srv. Sessions are capped and expire when idle. */
int nx_mcp_httpd_new(uv_loop_t *loop, struct nx_http_server *srv, const struct nx_mcp_httpd_opts *o,
                    struct nx_mcp_httpd **out);
/* Ends every stream (for a graceful stop); requests still arriving get 503. */
void nx_mcp_httpd_shutdown(struct nx_mcp_httpd *h);
/* Frees sessions (cancelling their calls) and the handle. Accepts NULL. */
void nx_mcp_httpd_free(struct nx_mcp_httpd *h);
size_t nx_mcp_httpd_sessions(const struct nx_mcp_httpd *h);

#endif
