#ifndef NX_HTTP_SERVER_INTERNAL_H
#define NX_HTTP_SERVER_INTERNAL_H

/* Shared between server.c (listener, connections, dispatch, shutdown) and server_req.c (the
 * request handle, responses, streaming). Not for other modules. */

#include <h2o.h>
#include <stdbool.h>

#include "core/buf.h"
#include "http/server.h"

struct nx_http_conn;

/* Our handle for one request. Recycled through a per-server free list, so a request costs no
 * malloc in the steady state. It is attached to the h2o request from dispatch until h2o disposes
 * of that request (response written, or connection gone). If the client goes away before the
 * caller finished answering and no on_abort was registered, the handle is kept as a "zombie"
 * until the caller's respond/stream_end, which then is a safe no-op. */
struct nx_http_req {
    struct nx_http_server *srv;
    h2o_req_t *h2o; /* NULL once h2o disposed of the request */
    struct nx_http_conn *conn;
    struct nx_http_req *prev, *next; /* free list (next only) or zombie list */
    h2o_generator_t gen;             /* streaming responses */
    void (*abort_fn)(void *arg);
    void *abort_arg;
    void (*drain_fn)(void *arg);
    void *drain_arg;
    const char *body; /* NUL-terminated copy in the request pool, made on first use */
    struct nx_buf out[2]; /* out[cur]: handed to h2o; out[cur ^ 1]: queued meanwhile */
    int cur;
    bool started;      /* respond or stream_begin done */
    bool streaming;    /* stream_begin done */
    bool in_flight;    /* an h2o_send waits for its proceed callback */
    bool end_requested;/* send the final chunk once the buffer drains */
    bool final_sent;   /* h2o_send(FINAL) done */
    bool caller_done;  /* respond or stream_end called by the owner */
    bool server_ended; /* the server finished the response itself (deadline, peer gone) */
    bool abort_called;
    bool zombie;
};

struct nx_http_conn {
    uv_tcp_t tcp; /* first: the close callback gets this handle */
    struct nx_http_server *srv;
    h2o_socket_t *sock;
    struct nx_http_conn *prev, *next;
    struct nx_http_req *rec; /* the request being answered, if any */
    uint64_t idle_since;     /* uv_now when last seen idle; 0 while busy */
    int fd;
    bool killed;             /* shutdown(2) called: h2o closes it on its next read or write */
};

struct nx_http_route {
    char *method; /* NULL: any */
    char *path;
    size_t path_len;
    bool is_prefix;
    nx_http_handler_fn fn;
    void *udata;
    struct nx_http_route_opts opts;
};

/* routes.c */
bool nx_httpsrv_path_matches(const struct nx_http_route *r, const char *p, size_t len);
bool nx_httpsrv_method_matches(const struct nx_http_route *r, h2o_iovec_t m);
/* The first route for this path, whatever its method, or NULL. */
const struct nx_http_route *nx_httpsrv_route_for(const struct nx_http_server *srv, const char *p, size_t len);

enum nx_http_sd_state {
    NX_HTTP_SD_NONE,
    NX_HTTP_SD_DRAINING, /* waiting for requests in flight, deadline armed */
    NX_HTTP_SD_FORCED,   /* deadline passed, connections shut down, waiting for them to close */
    NX_HTTP_SD_DONE_DUE, /* done scheduled on the next loop turn */
    NX_HTTP_SD_DONE,
};

struct nx_http_server {
    uv_loop_t *loop;
    char *name;
    const char *label[2]; /* {name, NULL}: metric label values */
    struct nx_http_limits lim;
    h2o_globalconf_t conf;
    h2o_context_t ctx;
    h2o_accept_ctx_t accept_ctx;
    uv_tcp_t listener;
    uv_timer_t sweep;
    uv_timer_t deadline;
    struct nx_http_route *routes;
    size_t nroutes;
    struct nx_http_conn *conns;
    size_t nconns;
    struct nx_http_conn **by_fd;
    size_t by_fd_cap;
    struct nx_http_req *free_recs;
    size_t nfree_recs;
    struct nx_http_req *zombies;
    size_t inflight;
    int port;
    int pending_closes;
    bool listener_inited;
    bool listener_open;
    bool freeing;
    bool torn_down;
    enum nx_http_sd_state sd;
    void (*done)(void *arg);
    void *done_arg;
    uint64_t last_cap_warn_ms;
    size_t refused_since_warn;
    const struct nx_http_origin_policy *origin; /* NULL: none */
};

/* origin.c: true when it answered the request (refused, or a CORS preflight); adds the CORS
 * headers to an allowed page's. */
bool nx_httpsrv_origin_gate(struct nx_http_server *srv, h2o_req_t *req, bool has_host,
                            const struct nx_http_route *route);

/* server_req.c */
struct nx_http_req *nx_httpsrv_rec_attach(struct nx_http_server *srv, struct nx_http_conn *conn,
                                          h2o_req_t *req);
/* h2o is done with the request: counts it out, runs on_abort if the owner had not answered. */
void nx_httpsrv_rec_detach(struct nx_http_req *rec);
/* The server finishes the response itself (shutdown deadline, free, peer gone): on_abort runs,
 * an unanswered request gets `status` (503, or 499 when the peer is gone), a stream gets its final
 * chunk. */
void nx_httpsrv_rec_end(struct nx_http_req *rec, int status);
/* Frees the free list and the zombies (server teardown). */
void nx_httpsrv_rec_free_all(struct nx_http_server *srv);
/* Frees the free list only (nx_http_server_trim). */
void nx_httpsrv_rec_trim(struct nx_http_server *srv);
/* A whole response written straight to the h2o request (also used for our own 4xx). */
void nx_httpsrv_send(h2o_req_t *req, int status, const char *content_type, const char *body,
                     size_t len);
/* {"error":{"message":..,"type":..}} straight to the h2o request. */
void nx_httpsrv_send_error(h2o_req_t *req, int status, const char *type, const char *message);
/* h2o answers some requests itself, before any handler, in text/plain: a body over
 * max_request_entity_size (413) and a broken one (400). This filter on pc rewrites those answers
 * as the JSON error body of nx_httpsrv_send_error, which the SDKs read. */
void nx_httpsrv_add_error_filter(h2o_pathconf_t *pc);
const char *nx_httpsrv_reason(int status);

#endif
