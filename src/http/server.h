#ifndef NX_HTTP_SERVER_H
#define NX_HTTP_SERVER_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* Our own small HTTP/1.1 server API. It runs on the loop thread (libh2o, libuv build, behind
 * this header so it can be replaced). Handlers run on the loop thread; a handler may answer at
 * once or later (the request stays valid until it is answered or the client goes away). */

struct nx_http_server;
struct nx_http_req;

struct nx_http_limits {
    uint32_t max_connections;      /* further connections are closed at accept */
    uint32_t max_header_bytes;     /* request line + headers; 431/400 beyond */
    uint64_t max_body_bytes;       /* 413 beyond */
    uint32_t request_timeout_ms;   /* to read a whole request (slowloris) */
    uint32_t keepalive_timeout_ms; /* idle connection between requests */
};

typedef void (*nx_http_handler_fn)(struct nx_http_req *req, void *udata);

/* Requests from web pages (http/origin.c): which origins may use the listener (CORS), and
 * whether it is open (no auth token: it then answers only to loopback names in Host). */
struct nx_http_origin_policy {
    char **allowed_origins; /* "scheme://host[:port]" or "*", NULL-terminated; NULL = none */
    uint32_t max_age_s;     /* how long a browser may keep a preflight's answer */
    bool is_open;
};

/* A listener and its routes. `name` (e.g. "gateway", "metrics", "admin") labels metrics and
 * logs. */
int nx_http_server_new(uv_loop_t *loop, const char *name, const struct nx_http_limits *limits,
                       struct nx_http_server **out);
/* Exact path match; a path ending in '*' matches that prefix. method NULL = any method (the
 * handler checks). Routes are tried in the order added. */
void nx_http_server_route(struct nx_http_server *srv, const char *method, const char *path,
                          nx_http_handler_fn fn, void *udata);
/* What a route tells the web-page checks (http/origin.c) about itself. */
struct nx_http_route_opts {
    /* it authenticates every request itself (a webhook's signature or secret): an open listener's
     * loopback-only Host check does not apply to it */
    bool is_self_authenticated;
    /* origins it allows besides cors.allowed_origins (MCP's http.allowed_origins), read at each
     * request; NULL = none */
    bool (*origin_ok)(void *udata, const char *origin, size_t len);
};
void nx_http_server_route_ex(struct nx_http_server *srv, const char *method, const char *path,
                             nx_http_handler_fn fn, void *udata, const struct nx_http_route_opts *opts);
/* Binds and listens. On failure returns NX_EADDR with a readable reason in err. */
int nx_http_server_listen(struct nx_http_server *srv, const char *host, int port, char *err,
                          size_t errlen);
/* Applies `p` (read on every request, so its owner may change it; NULL = no checks). */
/* An authority (host[:port], [v6][:port]) that names this machine: localhost, *.localhost,
 * 127.0.0.0/8, ::1 (http/origin.c; what a listener without a token answers to). */
bool nx_http_authority_is_loopback(const char *authority, size_t len);
void nx_http_server_set_origin_policy(struct nx_http_server *srv, const struct nx_http_origin_policy *p);
/* The bound port (useful after listening on port 0). */
int nx_http_server_port(const struct nx_http_server *srv);
/* Graceful stop: stop accepting, let requests in flight finish, close idle keep-alive
 * connections. `done` runs (on the loop) once every connection is closed or after deadline_ms,
 * when the rest are closed by force. */
void nx_http_server_shutdown(struct nx_http_server *srv, uint32_t deadline_ms,
                             void (*done)(void *arg), void *arg);
/* Open connections / requests not yet answered. */
size_t nx_http_server_connections(const struct nx_http_server *srv);
size_t nx_http_server_inflight(const struct nx_http_server *srv);
/* Frees the request records kept for reuse, so those a burst left stop pinning the memory it
 * freed; for the daemon's trim before malloc_trim. Accepts NULL. */
void nx_http_server_trim(struct nx_http_server *srv);
/* Closes everything at once and frees. Accepts NULL. */
void nx_http_server_free(struct nx_http_server *srv);

/* --- the request --- */
const char *nx_http_req_method(const struct nx_http_req *req, size_t *len);
/* Path without the query string, percent-decoding not applied. */
const char *nx_http_req_path(const struct nx_http_req *req, size_t *len);
/* The query string after '?', or NULL. */
const char *nx_http_req_query(const struct nx_http_req *req, size_t *len);
/* Case-insensitive; the first value, or NULL. */
const char *nx_http_req_header(const struct nx_http_req *req, const char *name, size_t *len);
const char *nx_http_req_body(const struct nx_http_req *req, size_t *len);
/* "ip:port" of the peer. */
void nx_http_req_peer(const struct nx_http_req *req, char *out, size_t outlen);
/* Called if the client goes away before the response is complete (cancel upstream work).
 * After it runs the request must not be touched. */
void nx_http_req_on_abort(struct nx_http_req *req, void (*fn)(void *arg), void *arg);
/* The loop the request is served on (for a handler's own timers). */
uv_loop_t *nx_http_req_loop(const struct nx_http_req *req);

/* --- answering: exactly one of respond / stream_begin per request --- */
/* Adds a response header (copied). Before respond/stream_begin. */
void nx_http_req_add_header(struct nx_http_req *req, const char *name, const char *value);
/* A random id: prefix and 24 characters of [A-Za-z0-9] ("req_…", "chatcmpl-…", "msg_…"),
 * cut to outlen. */
void nx_http_random_id(char *out, size_t outlen, const char *prefix);
/* Whole response; the body is copied. */
void nx_http_respond(struct nx_http_req *req, int status, const char *content_type,
                     const char *body, size_t len);
/* A JSON value as the whole response (application/json, compact); the value stays the
 * caller's. */
void nx_http_respond_json(struct nx_http_req *req, int status, const json_t *body);
/* {"error":{"message":..., "type":...}} with the given status. */
void nx_http_respond_error(struct nx_http_req *req, int status, const char *type,
                           const char *message);

/* Streaming (SSE and friends): chunks are copied and queued; returns the bytes queued but
 * not yet sent, so a producer can slow down (backpressure). */
void nx_http_stream_begin(struct nx_http_req *req, int status, const char *content_type);
size_t nx_http_stream_write(struct nx_http_req *req, const char *data, size_t len);
void nx_http_stream_end(struct nx_http_req *req);
/* Bytes written but not yet sent (the same figure stream_write returns). */
size_t nx_http_stream_pending(const struct nx_http_req *req);
/* Called (on the loop) each time everything written so far has been handed to the socket, so a
 * producer that paused on backpressure can resume. */
void nx_http_stream_on_drain(struct nx_http_req *req, void (*fn)(void *arg), void *arg);

#endif
