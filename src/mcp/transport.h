#ifndef NX_MCP_TRANSPORT_H
#define NX_MCP_TRANSPORT_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "config/config.h"
#include "http/client.h"

/* How JSON-RPC messages reach an MCP server: a table of functions per kind (stdio child process,
 * Streamable HTTP), used by mcp/client.c. Loop thread only. Callbacks never run inside a
 * transport function called by the owner, and never after close. */

struct nx_mcp_link;
struct nx_mcp_oauth;

struct nx_mcp_link_cb {
    /* One message from the server (an object; batches are split). */
    void (*on_message)(const json_t *msg, void *udata);
    /* The request with this id could not be delivered or its answer was lost (HTTP status,
     * transport error, a stream that ended without the answer). */
    void (*on_request_failed)(long long id, int rc, const char *why, void *udata);
    /* The server is gone (process exited, session expired). Called at most once. */
    void (*on_closed)(int rc, const char *why, void *udata);
};

struct nx_mcp_link_vt {
    const char *kind; /* "stdio", "streamable_http" */
    int (*start)(struct nx_mcp_link *t);
    /* Sends one message. timeout_ms bounds the exchange it opens (HTTP), 0 = none. */
    int (*send)(struct nx_mcp_link *t, const json_t *msg, uint32_t timeout_ms);
    /* The client gave up on request id (cancelled, timed out): drop what carries its answer. */
    void (*forget)(struct nx_mcp_link *t, long long id);
    void (*set_protocol_version)(struct nx_mcp_link *t, const char *version);
    /* Ends the connection (stdio: EOF, then SIGTERM and SIGKILL after grace; HTTP: DELETE the
     * session) and frees the transport once that is over. No callback runs afterwards. */
    void (*close)(struct nx_mcp_link *t);
};

struct nx_mcp_link {
    const struct nx_mcp_link_vt *vt;
    struct nx_mcp_link_cb cb;
    void *udata;
    char *name;       /* the server's name, for logs */
    size_t max_frame; /* one message at most (stdio line, SSE event, JSON body) */
    int pid;          /* stdio: the child's pid once started, else 0 */
};

struct nx_mcp_link_opts {
    const char *name;
    size_t max_frame;       /* 0 = 4 MiB */
    uint32_t grace_ms;      /* stdio: wait after EOF and after SIGTERM */
    struct nx_mcp_oauth *oauth; /* HTTP: answers 401/403 challenges (borrowed), or NULL */
    struct nx_mcp_link_cb cb;
    void *udata;
};

/* A child process speaking newline-delimited JSON-RPC on stdin/stdout; its stderr lines go to
 * the log at info, cut and rate-limited (stderr_log.h). Not started until vt->start. */
int nx_mcp_stdio_new(uv_loop_t *loop, const struct nx_mcp_server_conf *conf,
                     const struct nx_mcp_link_opts *opts, struct nx_mcp_link **out);
/* Streamable HTTP (MCP 2025-03-26 and later) through the shared HTTP client. */
int nx_mcp_http_new(struct nx_http_client *http, const struct nx_mcp_server_conf *conf,
                    const struct nx_mcp_link_opts *opts, struct nx_mcp_link **out);

/* Shared by the transports: parses one frame and hands each message in it to on_message.
 * Returns 0 or NX_EPROTO (logged) for a frame that is not JSON. */
int nx_mcp_link_deliver(struct nx_mcp_link *t, const char *text, size_t len);

#endif
