/* The HTTP/1.1 server: libh2o (libuv build) on the caller's loop, behind http/server.h.
 *
 * What h2o 2.2 does for us: parsing (picohttpparser), the request deadline (http1.req_timeout,
 * which also bounds the idle time of a keep-alive connection), the body cap
 * (max_request_entity_size -> 413), chunked request bodies and responses. What it does not, and
 * this file adds: a connection cap at accept, 400 for duplicate or conflicting Content-Length and
 * for HTTP/1.1 without Host, a header-size cap tighter than h2o's fixed 408 KiB, a keep-alive idle
 * timeout shorter than the request deadline, noticing a client that left while its request waits
 * for an answer, and a graceful shutdown that closes idle keep-alive connections.
 *
 * h2o's per-connection state is private, so we act on a connection in two ways only: through the
 * request (answer it, clear http1_is_persistent) and through the socket (shutdown(2) makes h2o's
 * next read see EOF and its next write fail, after which h2o closes the connection itself and our
 * close callback runs). A periodic "sweep" timer looks at every connection for idleness, oversized
 * header blocks and vanished peers. */

#include "http/server.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/error.h"
#include "core/log.h"
#include "core/metrics.h"
#include "http/server_internal.h"

#define DEF_MAX_CONNECTIONS 1024
#define DEF_MAX_HEADER_BYTES 16384
#define DEF_MAX_BODY_BYTES (8u * 1024 * 1024)
#define DEF_REQUEST_TIMEOUT_MS 10000
#define DEF_KEEPALIVE_TIMEOUT_MS 5000
#define FORCE_GRACE_MS 1000 /* after the deadline, how long we wait for shut-down sockets to close */

struct srv_handler {
    h2o_handler_t super;
    struct nx_http_server *srv;
};

struct srv_logger {
    h2o_logger_t super;
    struct nx_http_server *srv;
};

static struct nx_metric *m_requests, *m_duration, *m_connections;

static void register_metrics(void)
{
    static const char *const by_listener_code[] = {"listener", "code", NULL};
    static const char *const by_listener[] = {"listener", NULL};
    static const double buckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                     0.5,    1,     2.5,    5,     10,   30,    60,   120, 300};

    m_requests = nx_metric_counter("nexo_http_requests_total", "HTTP requests answered, by status code.",
                                   by_listener_code);
    m_duration = nx_metric_histogram("nexo_http_request_duration_seconds",
                                     "Time from the first byte of a request to the end of its response.",
                                     by_listener, buckets, NX_ARRAY_LEN(buckets));
    m_connections = nx_metric_gauge("nexo_http_connections", "Open HTTP connections.", by_listener);
}

static void ignore_sigpipe(void)
{
    /* A client that goes away makes our next write fail with EPIPE; the default action of the
     * signal that comes with it would end the process. Only replaced when nobody set it. */
    struct sigaction sa;
    if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL) {
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = SIG_IGN;
        sigaction(SIGPIPE, &sa, NULL);
    }
}

/* --- connections --- */

static void update_conn_gauge(struct nx_http_server *srv)
{
    nx_gauge_set(m_connections, srv->label, (double)srv->nconns);
}

static struct nx_http_conn *conn_of(struct nx_http_server *srv, h2o_req_t *req)
{
    h2o_socket_t *sock;
    int fd;

    if (!req->conn->callbacks->get_socket || !(sock = req->conn->callbacks->get_socket(req->conn)))
        return NULL;
    fd = h2o_socket_get_fd(sock);
    if (fd < 0 || (size_t)fd >= srv->by_fd_cap)
        return NULL;
    struct nx_http_conn *c = srv->by_fd[fd];
    return c && c->sock == sock ? c : NULL;
}

/* Makes h2o close the connection: its next read sees EOF, its next write fails. A request still
 * waiting for its answer is finished here (on_abort, then a 503 or the final chunk). */
static void kill_conn(struct nx_http_conn *c, int status)
{
    if (c->killed || uv_is_closing((uv_handle_t *)&c->tcp))
        return;
    c->killed = true;
    if (c->rec)
        nx_httpsrv_rec_end(c->rec, status);
    if (shutdown(c->fd, SHUT_RDWR) < 0 && errno != ENOTCONN)
        nx_debug("http", "%s: shutdown(fd %d): %s", c->srv->name, c->fd, strerror(errno));
}

static void maybe_finish(struct nx_http_server *srv);

static void on_conn_closed(uv_handle_t *h)
{
    struct nx_http_conn *c = nx_container_of(h, struct nx_http_conn, tcp);
    struct nx_http_server *srv = c->srv;

    if (c->rec) /* h2o disposes of the request before it closes the socket; this is a safety net */
        nx_httpsrv_rec_detach(c->rec);
    if (c->prev)
        c->prev->next = c->next;
    else
        srv->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    if (c->fd >= 0 && (size_t)c->fd < srv->by_fd_cap && srv->by_fd[c->fd] == c)
        srv->by_fd[c->fd] = NULL;
    srv->nconns--;
    update_conn_gauge(srv);
    free(c);
    maybe_finish(srv);
}

static void free_handle(uv_handle_t *h)
{
    free(h);
}

static void warn_refused(struct nx_http_server *srv)
{
    uint64_t now = uv_now(srv->loop);
    srv->refused_since_warn++;
    if (srv->last_cap_warn_ms && now - srv->last_cap_warn_ms < 1000)
        return;
    nx_warn("http", "%s: connection refused: %u connections open (max_connections); %zu refused since "
            "the last warning", srv->name, (unsigned)srv->nconns, srv->refused_since_warn);
    srv->last_cap_warn_ms = now;
    srv->refused_since_warn = 0;
}

static void on_accept(uv_stream_t *ls, int status)
{
    struct nx_http_server *srv = ls->data;
    struct nx_http_conn *c;
    uv_os_fd_t fd;

    if (status < 0) {
        nx_warn("http", "%s: accept: %s", srv->name, uv_strerror(status));
        return;
    }
    c = nx_calloc(1, sizeof *c);
    c->srv = srv;
    c->fd = -1;
    uv_tcp_init(srv->loop, &c->tcp);
    if (uv_accept(ls, (uv_stream_t *)&c->tcp) != 0 || uv_fileno((uv_handle_t *)&c->tcp, &fd) != 0) {
        uv_close((uv_handle_t *)&c->tcp, free_handle);
        return;
    }
    if (srv->sd != NX_HTTP_SD_NONE || srv->freeing || srv->nconns >= srv->lim.max_connections) {
        if (srv->sd == NX_HTTP_SD_NONE && !srv->freeing)
            warn_refused(srv);
        uv_close((uv_handle_t *)&c->tcp, free_handle); /* the struct starts with the handle */
        return;
    }
    c->fd = fd;
    if ((size_t)fd >= srv->by_fd_cap) {
        size_t cap = srv->by_fd_cap ? srv->by_fd_cap : 64;
        while (cap <= (size_t)fd)
            cap *= 2;
        srv->by_fd = nx_realloc(srv->by_fd, cap * sizeof *srv->by_fd);
        memset(srv->by_fd + srv->by_fd_cap, 0, (cap - srv->by_fd_cap) * sizeof *srv->by_fd);
        srv->by_fd_cap = cap;
    }
    srv->by_fd[fd] = c;
    uv_tcp_nodelay(&c->tcp, 1);
    c->idle_since = uv_now(srv->loop);
    c->next = srv->conns;
    if (srv->conns)
        srv->conns->prev = c;
    srv->conns = c;
    srv->nconns++;
    update_conn_gauge(srv);
    c->sock = h2o_uv_socket_create((uv_stream_t *)&c->tcp, on_conn_closed);
    h2o_accept(&srv->accept_ctx, c->sock);
}

/* --- the sweep: idle keep-alive connections, oversized header blocks, vanished peers --- */

static bool peer_gone(int fd)
{
    char ch;
    ssize_t n = recv(fd, &ch, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n == 0)
        return true;
    return n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR;
}

/* Bytes the kernel has received that h2o has not read yet: a request already on its way. */
static bool has_unread(int fd)
{
    char ch;
    return recv(fd, &ch, 1, MSG_PEEK | MSG_DONTWAIT) > 0;
}

static bool head_complete_within(const h2o_buffer_t *in, size_t cap)
{
    size_t n = in->size < cap + 4 ? in->size : cap + 4;
    return memmem(in->bytes, n, "\r\n\r\n", 4) || memmem(in->bytes, n, "\n\n", 2);
}

static void sweep_conn(struct nx_http_server *srv, struct nx_http_conn *c, uint64_t now)
{
    if (c->killed || uv_is_closing((uv_handle_t *)&c->tcp))
        return;
    if (c->rec) {
        /* h2o does not read while a request waits for its answer, so it would not notice a
         * client that left until the next write. */
        if (!c->rec->caller_done && !c->rec->server_ended && peer_gone(c->fd)) {
            nx_debug("http", "%s: client went away before the response was complete", srv->name);
            kill_conn(c, 499);
        }
        return;
    }
    size_t in = c->sock->input ? c->sock->input->size : 0;
    if (in == 0) { /* nothing buffered: between requests (a request's bytes stay until answered) */
        if (srv->sd != NX_HTTP_SD_NONE) {
            if (!has_unread(c->fd))
                kill_conn(c, 503);
        } else if (!c->idle_since) {
            c->idle_since = now;
        } else if (now - c->idle_since >= srv->lim.keepalive_timeout_ms) {
            kill_conn(c, 503);
        }
        return;
    }
    c->idle_since = 0;
    if (in > srv->lim.max_header_bytes && !head_complete_within(c->sock->input, srv->lim.max_header_bytes)) {
        nx_debug("http", "%s: request header block over %u bytes, closing", srv->name,
                 (unsigned)srv->lim.max_header_bytes);
        kill_conn(c, 503);
    }
}

static void on_sweep(uv_timer_t *t)
{
    struct nx_http_server *srv = t->data;
    uint64_t now = uv_now(srv->loop);
    struct nx_http_conn *c, *next;

    for (c = srv->conns; c; c = next) {
        next = c->next; /* kill_conn never frees synchronously, but stay safe */
        sweep_conn(srv, c, now);
    }
}

/* --- dispatch --- */

struct head_scan {
    size_t head_bytes;
    unsigned n_content_length, n_transfer_encoding, n_host;
};

static bool name_is(const char *s, size_t len, const char *lit, size_t litlen)
{
    return len == litlen && strncasecmp(s, lit, len) == 0;
}

/* Walks the raw request head (already validated by h2o's parser) for what h2o folds away:
 * repeated Content-Length, Content-Length with Transfer-Encoding, Host count, head size. */
static int scan_head(const char *p, size_t len, struct head_scan *out)
{
    const char *s = p, *end = p + len, *nl;

    memset(out, 0, sizeof *out);
    while (s < end && (*s == '\r' || *s == '\n'))
        s++;
    if (!(nl = memchr(s, '\n', (size_t)(end - s))))
        return -1;
    s = nl + 1;
    for (;;) {
        if (!(nl = memchr(s, '\n', (size_t)(end - s))))
            return -1;
        size_t ll = (size_t)(nl - s);
        if (ll && s[ll - 1] == '\r')
            ll--;
        if (ll == 0) {
            out->head_bytes = (size_t)(nl + 1 - p);
            return 0;
        }
        const char *colon = (*s != ' ' && *s != '\t') ? memchr(s, ':', ll) : NULL;
        if (colon) {
            size_t nlen = (size_t)(colon - s);
            if (name_is(s, nlen, "content-length", 14))
                out->n_content_length++;
            else if (name_is(s, nlen, "transfer-encoding", 17))
                out->n_transfer_encoding++;
            else if (name_is(s, nlen, "host", 4))
                out->n_host++;
        }
        s = nl + 1;
    }
}

static void glue_error(struct nx_http_server *srv, h2o_req_t *req, int status, const char *msg)
{
    nx_debug("http", "%s: %d: %s", srv->name, status, msg);
    req->http1_is_persistent = 0; /* the framing of what follows cannot be trusted */
    nx_httpsrv_send_error(req, status, "invalid_request_error", msg);
}

static int on_req(h2o_handler_t *self, h2o_req_t *req)
{
    struct nx_http_server *srv = ((struct srv_handler *)self)->srv;
    struct nx_http_conn *c = conn_of(srv, req);
    struct head_scan hs;

    if (srv->sd != NX_HTTP_SD_NONE || srv->freeing)
        req->http1_is_persistent = 0;
    if (!c || c->rec) {
        glue_error(srv, req, 500, "internal error: unknown connection");
        return 0;
    }
    if (scan_head(c->sock->input->bytes, c->sock->input->size, &hs) < 0) {
        glue_error(srv, req, 400, "malformed request head");
        return 0;
    }
    if (hs.n_content_length > 1 || (hs.n_content_length && hs.n_transfer_encoding)) {
        glue_error(srv, req, 400, "duplicate or conflicting Content-Length");
        return 0;
    }
    if (hs.n_transfer_encoding > 1) {
        glue_error(srv, req, 400, "repeated Transfer-Encoding");
        return 0;
    }
    if (hs.n_host > 1 || (hs.n_host == 0 && req->version >= 0x101)) {
        glue_error(srv, req, 400, hs.n_host ? "more than one Host header" : "missing Host header");
        return 0;
    }
    if (hs.head_bytes > srv->lim.max_header_bytes) {
        nx_debug("http", "%s: 431: request head of %zu bytes", srv->name, hs.head_bytes);
        req->http1_is_persistent = 0;
        nx_httpsrv_send_error(req, 431, "invalid_request_error", "request header fields too large");
        return 0;
    }

    const char *path = req->path.base;
    const char *q = memchr(path, '?', req->path.len);
    size_t plen = q ? (size_t)(q - path) : req->path.len;
    if (nx_httpsrv_origin_gate(srv, req, hs.n_host == 1, nx_httpsrv_route_for(srv, path, plen)))
        return 0;

    bool path_seen = false;
    for (size_t i = 0; i < srv->nroutes; i++) {
        struct nx_http_route *r = &srv->routes[i];
        if (!nx_httpsrv_path_matches(r, path, plen))
            continue;
        path_seen = true;
        if (!nx_httpsrv_method_matches(r, req->method))
            continue;
        r->fn(nx_httpsrv_rec_attach(srv, c, req), r->udata);
        return 0;
    }
    if (plen >= 4 && memcmp(path, "/v1/", 4) == 0) { /* the APIs' ids, as their own answers have */
        char id[40];
        nx_http_random_id(id, sizeof id, "req_");
        h2o_iovec_t v = h2o_strdup(&req->pool, id, SIZE_MAX);
        h2o_headers_t *h = &req->res.headers;
        h2o_add_header_by_str(&req->pool, h, H2O_STRLIT("x-request-id"), 0, NULL, v.base, v.len);
        h2o_add_header_by_str(&req->pool, h, H2O_STRLIT("request-id"), 0, NULL, v.base, v.len);
    }
    if (path_seen) {
        /* Allow: the methods of the routes on this path */
        char allow[128];
        size_t n = 0;
        for (size_t i = 0; i < srv->nroutes && n < sizeof allow - 16; i++) {
            struct nx_http_route *r = &srv->routes[i];
            if (!r->method || !nx_httpsrv_path_matches(r, path, plen))
                continue;
            int k = snprintf(allow + n, sizeof allow - n, "%s%s", n ? ", " : "", r->method);
            if (k < 0 || (size_t)k >= sizeof allow - n)
                break;
            n += (size_t)k;
        }
        if (n) {
            h2o_iovec_t v = h2o_strdup(&req->pool, allow, n);
            h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_ALLOW, NULL, v.base, v.len);
        }
        nx_httpsrv_send_error(req, 405, "invalid_request_error", "method not allowed");
        return 0;
    }
    nx_httpsrv_send_error(req, 404, "not_found_error", "not found");
    return 0;
}

/* h2o calls loggers from h2o_dispose_request, for every request it parsed: after the response
 * was written, or when the connection went away first. That makes it our per-request "done" hook
 * (no allocation needed) as well as the place for metrics. */
static void on_log_access(h2o_logger_t *self, h2o_req_t *req)
{
    struct nx_http_server *srv = ((struct srv_logger *)self)->srv;
    struct nx_http_conn *c = conn_of(srv, req);
    char code[16];
    int status = req->res.status ? req->res.status : 499; /* nginx's "client closed request" */

    snprintf(code, sizeof code, "%d", status);
    const char *lv[] = {srv->name, code, NULL};
    nx_counter_add(m_requests, lv, 1);
    struct timeval *now = h2o_get_timestamp(&srv->ctx, NULL, NULL);
    double dur = 0;
    if (req->timestamps.request_begin_at.tv_sec)
        dur = (double)(now->tv_sec - req->timestamps.request_begin_at.tv_sec) +
              (double)(now->tv_usec - req->timestamps.request_begin_at.tv_usec) / 1e6;
    nx_histogram_observe(m_duration, srv->label, dur > 0 ? dur : 0);

    if (!c)
        return;
    c->idle_since = uv_now(srv->loop);
    if (c->rec && c->rec->h2o == req)
        nx_httpsrv_rec_detach(c->rec);
}

/* --- lifecycle --- */

static void on_handle_closed(uv_handle_t *h)
{
    struct nx_http_server *srv = h->data;
    srv->pending_closes--;
    maybe_finish(srv);
}

static void close_handle(struct nx_http_server *srv, uv_handle_t *h)
{
    if (uv_is_closing(h))
        return;
    h->data = srv;
    srv->pending_closes++;
    uv_close(h, on_handle_closed);
}

static void on_listener_closed(uv_handle_t *h)
{
    struct nx_http_server *srv = h->data;
    srv->listener_open = false;
    srv->pending_closes--;
    maybe_finish(srv);
}

static void close_listener(struct nx_http_server *srv)
{
    if (!srv->listener_inited || uv_is_closing((uv_handle_t *)&srv->listener))
        return;
    srv->listener.data = srv;
    srv->pending_closes++;
    uv_close((uv_handle_t *)&srv->listener, on_listener_closed);
}

/* Everything h2o_context_dispose does, except its nested uv_run (libuv is not reentrant and we
 * may be inside a callback): the timers are closed with our counting callback instead. */
/* h2o's timers (libuv binding) stay armed after their last entry is gone, until they expire. */
static void h2o_timeouts(struct nx_http_server *srv, h2o_timeout_t **out)
{
    h2o_context_t *ctx = &srv->ctx;
    h2o_timeout_t *t[] = {&ctx->zero_timeout,          &ctx->one_sec_timeout,
                          &ctx->hundred_ms_timeout,    &ctx->handshake_timeout,
                          &ctx->http1.req_timeout,     &ctx->http2.idle_timeout,
                          &ctx->http2.graceful_shutdown_timeout, &ctx->proxy.io_timeout};
    memcpy(out, t, sizeof t);
}

#define N_H2O_TIMEOUTS 8

static void stop_idle_h2o_timers(struct nx_http_server *srv)
{
    h2o_timeout_t *timeouts[N_H2O_TIMEOUTS];
    h2o_timeouts(srv, timeouts);
    for (size_t i = 0; i < N_H2O_TIMEOUTS; i++)
        if (h2o_linklist_is_empty(&timeouts[i]->_entries)) /* a new entry re-arms it */
            uv_timer_stop(&timeouts[i]->_backend.timer);
}

/* Everything h2o_context_dispose does, except its nested uv_run (libuv is not reentrant and we
 * may be inside a callback): the timers are closed with our counting callback instead. */
static void teardown(struct nx_http_server *srv)
{
    h2o_context_t *ctx = &srv->ctx;
    h2o_timeout_t *timeouts[N_H2O_TIMEOUTS];

    h2o_timeouts(srv, timeouts);
    srv->torn_down = true;
    close_listener(srv);
    close_handle(srv, (uv_handle_t *)&srv->sweep);
    close_handle(srv, (uv_handle_t *)&srv->deadline);
    for (size_t i = 0; srv->conf.hosts[i]; i++) {
        h2o_hostconf_t *hc = srv->conf.hosts[i];
        for (size_t j = 0; j < hc->paths.size; j++)
            h2o_context_dispose_pathconf_context(ctx, hc->paths.entries + j);
        h2o_context_dispose_pathconf_context(ctx, &hc->fallback_path);
    }
    free(ctx->_pathconfs_inited.entries);
    free(ctx->_module_configs);
    for (size_t i = 0; i < N_H2O_TIMEOUTS; i++) {
        NX_ASSERT(h2o_linklist_is_empty(&timeouts[i]->_entries));
        close_handle(srv, (uv_handle_t *)&timeouts[i]->_backend.timer);
    }
    h2o_filecache_destroy(ctx->filecache);
    ctx->filecache = NULL;
    for (size_t i = 0; i < ctx->storage.size; i++)
        if (ctx->storage.entries[i].dispose)
            ctx->storage.entries[i].dispose(ctx->storage.entries[i].data);
    free(ctx->storage.entries);
    h2o_multithread_unregister_receiver(ctx->queue, &ctx->receivers.hostinfo_getaddr);
    h2o_multithread_destroy_queue(ctx->queue); /* closes its uv_async_t, which frees itself */
    if (ctx->_timestamp_cache.value)
        h2o_mem_release_shared(ctx->_timestamp_cache.value);
    h2o_config_dispose(&srv->conf);
}

static void final_free(struct nx_http_server *srv)
{
    nx_httpsrv_rec_free_all(srv);
    for (size_t i = 0; i < srv->nroutes; i++) {
        free(srv->routes[i].method);
        free(srv->routes[i].path);
    }
    free(srv->routes);
    free(srv->by_fd);
    free(srv->name);
    free(srv);
}

static void on_deadline(uv_timer_t *t);

static void maybe_finish(struct nx_http_server *srv)
{
    if (srv->freeing) {
        if (srv->nconns == 0 && !srv->torn_down)
            teardown(srv);
        if (srv->torn_down && srv->pending_closes == 0)
            final_free(srv);
        return;
    }
    if ((srv->sd == NX_HTTP_SD_DRAINING || srv->sd == NX_HTTP_SD_FORCED) && srv->nconns == 0 &&
        !srv->listener_open) {
        /* done runs from a timer callback of its own, never from inside h2o or a close callback */
        srv->sd = NX_HTTP_SD_DONE_DUE;
        uv_timer_start(&srv->deadline, on_deadline, 0, 0);
    }
}

static void on_deadline(uv_timer_t *t)
{
    struct nx_http_server *srv = t->data;
    struct nx_http_conn *c;

    switch (srv->sd) {
    case NX_HTTP_SD_DRAINING:
        nx_info("http", "%s: shutdown deadline passed, closing %zu connection(s)", srv->name, srv->nconns);
        srv->sd = NX_HTTP_SD_FORCED;
        for (c = srv->conns; c; c = c->next)
            kill_conn(c, 503);
        uv_timer_start(&srv->deadline, on_deadline, FORCE_GRACE_MS, 0);
        return;
    case NX_HTTP_SD_FORCED:
        nx_warn("http", "%s: %zu connection(s) still closing after the shutdown deadline", srv->name,
                srv->nconns);
        break;
    case NX_HTTP_SD_DONE_DUE:
        break;
    default:
        return;
    }
    srv->sd = NX_HTTP_SD_DONE;
    uv_timer_stop(&srv->sweep);
    stop_idle_h2o_timers(srv);
    if (srv->done)
        srv->done(srv->done_arg);
}

int nx_http_server_new(uv_loop_t *loop, const char *name, const struct nx_http_limits *limits,
                       struct nx_http_server **out)
{
    struct nx_http_server *srv;
    h2o_hostconf_t *hc;
    struct srv_handler *h;
    struct srv_logger *lg;

    if (!loop || !out)
        return NX_EINVAL;
    ignore_sigpipe();
    register_metrics();
    srv = nx_calloc(1, sizeof *srv);
    srv->loop = loop;
    srv->name = nx_strdup(name && *name ? name : "http");
    srv->label[0] = srv->name;
    if (limits)
        srv->lim = *limits;
    if (!srv->lim.max_connections)
        srv->lim.max_connections = DEF_MAX_CONNECTIONS;
    if (!srv->lim.max_header_bytes)
        srv->lim.max_header_bytes = DEF_MAX_HEADER_BYTES;
    if (!srv->lim.max_body_bytes)
        srv->lim.max_body_bytes = DEF_MAX_BODY_BYTES;
    if (!srv->lim.request_timeout_ms)
        srv->lim.request_timeout_ms = DEF_REQUEST_TIMEOUT_MS;
    if (!srv->lim.keepalive_timeout_ms)
        srv->lim.keepalive_timeout_ms = DEF_KEEPALIVE_TIMEOUT_MS;

    /* Every connection holds a read buffer of at least this size while it lives (h2o's default,
     * 8 KiB, is most of what an idle or waiting connection costs); a request that needs more
     * grows it. Only ever lowered: h2o recycles these buffers at the size in force. */
    if (h2o_socket_buffer_prototype._initial_buf.capacity > H2O_SOCKET_INITIAL_INPUT_BUFFER_SIZE)
        h2o_socket_buffer_prototype._initial_buf.capacity = H2O_SOCKET_INITIAL_INPUT_BUFFER_SIZE;
    h2o_config_init(&srv->conf);
    srv->conf.server_name = h2o_iovec_init(H2O_STRLIT("")); /* no Server header */
    srv->conf.max_request_entity_size =
        srv->lim.max_body_bytes < SIZE_MAX ? (size_t)srv->lim.max_body_bytes : SIZE_MAX - 1;
    srv->conf.http1.req_timeout = srv->lim.request_timeout_ms;
    srv->conf.http1.upgrade_to_http2 = 0;
    hc = h2o_config_register_host(&srv->conf, h2o_iovec_init(H2O_STRLIT("default")), 65535);
    /* no paths: every request lands on the fallback path, where our one handler routes it */
    h = (struct srv_handler *)h2o_create_handler(&hc->fallback_path, sizeof *h);
    h->super.on_req = on_req;
    h->srv = srv;
    nx_httpsrv_add_error_filter(&hc->fallback_path);
    lg = (struct srv_logger *)h2o_create_logger(&hc->fallback_path, sizeof *lg);
    lg->super.log_access = on_log_access;
    lg->srv = srv;
    h2o_context_init(&srv->ctx, loop, &srv->conf);
    /* h2o's cross-thread queue (an uv_async_t, its first member) must not keep the loop alive */
    uv_unref((uv_handle_t *)srv->ctx.queue);
    srv->accept_ctx.ctx = &srv->ctx;
    srv->accept_ctx.hosts = srv->conf.hosts;

    uv_timer_init(loop, &srv->sweep);
    srv->sweep.data = srv;
    uint64_t iv = srv->lim.keepalive_timeout_ms < srv->lim.request_timeout_ms ? srv->lim.keepalive_timeout_ms
                                                                              : srv->lim.request_timeout_ms;
    iv /= 4;
    iv = iv < 20 ? 20 : iv > 100 ? 100 : iv;
    uv_timer_start(&srv->sweep, on_sweep, iv, iv);
    uv_unref((uv_handle_t *)&srv->sweep);
    uv_timer_init(loop, &srv->deadline);
    srv->deadline.data = srv;
    update_conn_gauge(srv);
    *out = srv;
    return 0;
}

int nx_http_server_listen(struct nx_http_server *srv, const char *host, int port, char *err,
                          size_t errlen)
{
    struct sockaddr_storage ss;
    int r, len = sizeof ss;
    const char *h = host && *host ? host : "127.0.0.1";

    if (err && errlen)
        err[0] = '\0';
    if (srv->listener_inited || srv->freeing || srv->sd != NX_HTTP_SD_NONE) {
        if (err)
            snprintf(err, errlen, "%s:%d: this server is already listening or stopping", h, port);
        return NX_EADDR;
    }
    if (port < 0 || port > 65535) {
        if (err)
            snprintf(err, errlen, "%s:%d: port out of range", h, port);
        return NX_EADDR;
    }
    if (strcmp(h, "localhost") == 0)
        h = "127.0.0.1";
    if (uv_ip4_addr(h, port, (struct sockaddr_in *)&ss) != 0 &&
        uv_ip6_addr(h, port, (struct sockaddr_in6 *)&ss) != 0) {
        if (err)
            snprintf(err, errlen, "%s:%d: not a numeric IPv4 or IPv6 address", h, port);
        return NX_EADDR;
    }
    uv_tcp_init(srv->loop, &srv->listener);
    srv->listener.data = srv;
    srv->listener_inited = true;
    srv->listener_open = true;
    if ((r = uv_tcp_bind(&srv->listener, (struct sockaddr *)&ss, 0)) != 0 ||
        (r = uv_listen((uv_stream_t *)&srv->listener, 1024, on_accept)) != 0 ||
        (r = uv_tcp_getsockname(&srv->listener, (struct sockaddr *)&ss, &len)) != 0) {
        if (err)
            snprintf(err, errlen, "%s:%d: %s", h, port, uv_strerror(r));
        close_listener(srv);
        return NX_EADDR;
    }
    srv->port = ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                                         : ntohs(((struct sockaddr_in *)&ss)->sin_port);
    nx_debug("http", "%s: listening on %s:%d", srv->name, h, srv->port);
    return 0;
}

int nx_http_server_port(const struct nx_http_server *srv)
{
    return srv ? srv->port : 0;
}

size_t nx_http_server_connections(const struct nx_http_server *srv)
{
    return srv ? srv->nconns : 0;
}

size_t nx_http_server_inflight(const struct nx_http_server *srv)
{
    return srv ? srv->inflight : 0;
}

void nx_http_server_trim(struct nx_http_server *srv)
{
    if (!srv)
        return;
    nx_httpsrv_rec_trim(srv);
}

void nx_http_server_shutdown(struct nx_http_server *srv, uint32_t deadline_ms, void (*done)(void *arg),
                             void *arg)
{
    struct nx_http_conn *c;

    if (!srv || srv->freeing || srv->sd != NX_HTTP_SD_NONE)
        return;
    srv->sd = NX_HTTP_SD_DRAINING;
    srv->done = done;
    srv->done_arg = arg;
    /* what h2o_context_request_shutdown does for HTTP/1 (requests parsed from now on are not kept
     * alive), without its HTTP/2 part, which arms a GOAWAY timer we have no use for */
    srv->ctx.shutdown_requested = 1;
    close_listener(srv);
    for (c = srv->conns; c; c = c->next) {
        if (c->rec) {
            if (c->rec->h2o)
                c->rec->h2o->http1_is_persistent = 0;
        } else if (c->sock->input && c->sock->input->size == 0 && !has_unread(c->fd)) {
            kill_conn(c, 503); /* idle keep-alive connection */
        }
        /* else: a request is being read; h2o answers it with "Connection: close" */
    }
    uv_timer_start(&srv->deadline, on_deadline, deadline_ms, 0);
    maybe_finish(srv);
}

void nx_http_server_free(struct nx_http_server *srv)
{
    struct nx_http_conn *c;

    if (!srv || srv->freeing)
        return;
    srv->freeing = true;
    srv->done = NULL;
    uv_timer_stop(&srv->deadline);
    close_listener(srv);
    for (c = srv->conns; c; c = c->next)
        kill_conn(c, 503);
    maybe_finish(srv);
}
