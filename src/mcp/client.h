#ifndef NX_MCP_CLIENT_H
#define NX_MCP_CLIENT_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "mcp/transport.h"

/* One MCP client session over a transport: the initialize handshake with version negotiation,
 * requests with ids, per-request timeouts, progress and cancellation, and the answers to what the
 * server asks of us (ping, roots/list; sampling, elicitation and anything else get JSON-RPC
 * -32601). Loop thread only. */

struct nx_mcp_client;
struct nx_mcp_request;

/* Called exactly once per request unless it was cancelled, never from inside the call that
 * started it. rc 0: result is the server's result object. Otherwise NX_ETIMEDOUT, NX_ECLOSED,
 * NX_EPROTO (a JSON-RPC error from the server: err is "code N: message", or "the server's error
 * reply is malformed: ..." when its "error" is not a proper error object), NX_EHTTP, ... */
typedef void (*nx_mcp_result_fn)(int rc, const json_t *result, const char *err, void *udata);
/* notifications/progress for a request: total < 0 when the server gave none. */
typedef void (*nx_mcp_progress_fn)(double progress, double total, const char *message, void *udata);

struct nx_mcp_client_cb {
    /* The handshake finished (rc 0) or failed. */
    void (*on_ready)(struct nx_mcp_client *c, int rc, const char *err, void *udata);
    /* notifications/tools/list_changed after the handshake. */
    void (*on_tools_changed)(struct nx_mcp_client *c, void *udata);
    /* The transport is gone; pending requests have failed with NX_ECLOSED. */
    void (*on_closed)(struct nx_mcp_client *c, int rc, const char *why, void *udata);
    /* notifications/prompts/list_changed or notifications/resources/list_changed after the
     * handshake: what is "prompts" or "resources". May be NULL. */
    void (*on_list_changed)(struct nx_mcp_client *c, const char *what, void *udata);
    /* A request from the server other than ping and roots/list (sampling/createMessage,
     * elicitation/create, ...). Return 0 when it will be answered (now or later) with
     * nx_mcp_client_reply / nx_mcp_client_reply_error; NX_ENOTSUP makes the client answer
     * -32601. May be NULL (everything else gets -32601). */
    int (*on_request)(struct nx_mcp_client *c, const char *method, const json_t *id,
                      const json_t *params, void *udata);
    /* notifications/cancelled for a request of the server's (requestId). May be NULL. */
    void (*on_request_cancelled)(struct nx_mcp_client *c, const json_t *id, void *udata);
};

struct nx_mcp_client_opts {
    const char *name;               /* the server's name, for logs */
    uint32_t initialize_timeout_ms; /* 0 = 10 s */
    const json_t *roots;            /* answered to roots/list ([{uri, name?}]); NULL = [] */
    /* The capabilities declared in initialize; NULL = {"roots": {"listChanged": false}}. */
    const json_t *capabilities;
};

/* Protocol versions this client speaks, newest first (the first is offered). NULL-terminated. */
extern const char *const nx_mcp_protocol_versions[];

/* Takes ownership of t (its callbacks are replaced), starts it and sends initialize. */
int nx_mcp_client_new(uv_loop_t *loop, struct nx_mcp_link *t,
                      const struct nx_mcp_client_opts *opts, const struct nx_mcp_client_cb *cb,
                      void *udata, struct nx_mcp_client **out);
/* Pending requests get NX_ECLOSED; the transport is closed. Safe from inside any callback.
 * Accepts NULL. */
void nx_mcp_client_free(struct nx_mcp_client *c);

/* Sends a request (params stolen, may be NULL). With progress set, a progressToken is added to
 * params._meta. timeout_ms 0 = none. Never NULL. */
struct nx_mcp_request *nx_mcp_client_request(struct nx_mcp_client *c, const char *method,
                                             json_t *params, uint32_t timeout_ms,
                                             nx_mcp_progress_fn progress, nx_mcp_result_fn done,
                                             void *udata);
/* Gives up on a request: notifications/cancelled goes to the server; done is not called. */
void nx_mcp_request_cancel(struct nx_mcp_request *r, const char *reason);
int nx_mcp_client_notify(struct nx_mcp_client *c, const char *method, json_t *params);
/* Answers a request of the server's (id as it came; result stolen). Ignored once the client is
 * closed. */
void nx_mcp_client_reply(struct nx_mcp_client *c, const json_t *id, json_t *result);
void nx_mcp_client_reply_error(struct nx_mcp_client *c, const json_t *id, int code, const char *message);

/* tools/list, following nextCursor (at most 100 pages); done's result is {"tools": [...]}. */
void nx_mcp_client_list_tools(struct nx_mcp_client *c, uint32_t timeout_ms, nx_mcp_result_fn done,
                              void *udata);

/* Any paginated list ("tools/list", "resources/list", "resources/templates/list",
 * "prompts/list"), following nextCursor (at most 100 pages); done's result is {key: [...]}, key
 * being the array member of each page ("tools", "resources", "resourceTemplates", "prompts"). */
void nx_mcp_client_list(struct nx_mcp_client *c, const char *method, const char *key,
                        uint32_t timeout_ms, nx_mcp_result_fn done, void *udata);
/* resources/read {uri}: done's result is {"contents": [...]}. */
struct nx_mcp_request *nx_mcp_client_read_resource(struct nx_mcp_client *c, const char *uri,
                                                   uint32_t timeout_ms, nx_mcp_result_fn done,
                                                   void *udata);
/* prompts/get {name, arguments} (arguments: an object of strings, borrowed, may be NULL). */
struct nx_mcp_request *nx_mcp_client_get_prompt(struct nx_mcp_client *c, const char *name,
                                                const json_t *arguments, uint32_t timeout_ms,
                                                nx_mcp_result_fn done, void *udata);

/* Replaces the roots answered to roots/list (copied). Accepts a NULL client. */
void nx_mcp_client_set_roots(struct nx_mcp_client *c, const json_t *roots);

bool nx_mcp_client_is_ready(const struct nx_mcp_client *c);
/* The negotiated version ("" before the handshake). */
const char *nx_mcp_client_protocol_version(const struct nx_mcp_client *c);
/* serverInfo and capabilities from the initialize result, or NULL. */
const json_t *nx_mcp_client_server_info(const struct nx_mcp_client *c);
const json_t *nx_mcp_client_capabilities(const struct nx_mcp_client *c);

/* Counters for tests and the status page. */
struct nx_mcp_client_stats {
    uint64_t malformed;       /* messages that were not JSON-RPC */
    uint64_t unknown_replies; /* responses to ids we were not waiting for */
    uint64_t progress;        /* notifications/progress received */
    uint64_t server_requests; /* requests the server made of us */
    uint64_t cancels_sent;    /* notifications/cancelled sent */
};
void nx_mcp_client_stats(const struct nx_mcp_client *c, struct nx_mcp_client_stats *out);

#endif
