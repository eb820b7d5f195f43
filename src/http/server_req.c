/* The request handle of http/server.h: accessors, whole responses, streaming with one h2o_send
 * in flight and a second buffer that coalesces what the producer writes meanwhile. */

#include <arpa/inet.h>
#include <jansson.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/clock.h"
#include "core/log.h"
#include "http/server.h"
#include "http/server_internal.h"

#define KEEP_BUF_BYTES (64 * 1024) /* larger stream buffers are released when a record is reused */
#define MAX_FREE_RECS 256

const char *nx_httpsrv_reason(int status)
{
    switch (status) {
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 413: return "Payload Too Large";
    case 415: return "Unsupported Media Type";
    case 422: return "Unprocessable Entity";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 499: return "Client Closed Request";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return status < 300 ? "OK" : status < 400 ? "Redirect" : status < 500 ? "Client Error" : "Error";
    }
}

static bool is_head(const h2o_req_t *req)
{
    return h2o_memis(req->method.base, req->method.len, H2O_STRLIT("HEAD"));
}

static void set_status(h2o_req_t *req, int status, const char *content_type)
{
    if (status < 100 || status > 999)
        status = 500;
    req->res.status = status;
    req->res.reason = nx_httpsrv_reason(status);
    if (content_type) {
        size_t n = strlen(content_type);
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL,
                       h2o_strdup(&req->pool, content_type, n).base, n);
    }
}

void nx_httpsrv_send(h2o_req_t *req, int status, const char *content_type, const char *body, size_t len)
{
    static h2o_generator_t gen = {NULL, NULL};
    h2o_iovec_t buf = {NULL, 0};

    set_status(req, status, content_type);
    req->res.content_length = len;
    if (len && !is_head(req))
        buf = h2o_strdup(&req->pool, body, len);
    h2o_start_response(req, &gen);
    h2o_send(req, &buf, buf.len ? 1 : 0, H2O_SEND_STATE_FINAL);
}

void nx_httpsrv_send_error(h2o_req_t *req, int status, const char *type, const char *message)
{
    /* The union of OpenAI's {"error":{message,type,param,code}} and Anthropic's
     * {"type":"error","error":{type,message}}: either official SDK reads it as its own. */
    json_t *o = json_pack("{s:s, s:{s:s, s:s, s:n, s:n}}", "type", "error", "error", "message",
                          message ? message : "", "type", type ? type : "error", "param", "code");
    if (!o) /* not UTF-8 */
        o = json_pack("{s:s, s:{s:s, s:s, s:n, s:n}}", "type", "error", "error", "message",
                      "(error message not valid UTF-8)", "type", "error", "param", "code");
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    if (s)
        nx_httpsrv_send(req, status, "application/json", s, strlen(s));
    else
        nx_httpsrv_send(req, status, "text/plain; charset=utf-8", "error", 5);
    free(s);
    json_decref(o);
}

/* --- h2o's own error answers, as JSON --- */

struct errfix_ostream {
    h2o_ostream_t super;
    const char *type;
};

static void errfix_send(h2o_ostream_t *self, h2o_req_t *req, h2o_iovec_t *bufs, size_t n,
                        h2o_send_state_t state)
{
    struct errfix_ostream *o = (struct errfix_ostream *)self;
    struct nx_buf text = NX_BUF_INIT;
    h2o_iovec_t out = {NULL, 0};

    if (o->type) { /* the whole answer comes in this one call (h2o_send_inline) */
        if (req->res.status == 413)
            nx_buf_printf(&text, "the request body is larger than the limit of %zu bytes "
                                 "(gateway.yaml limits.max_body_bytes)",
                          req->conn->ctx->globalconf->max_request_entity_size);
        else
            for (size_t i = 0; i < n; i++)
                nx_buf_append(&text, bufs[i].base, bufs[i].len);
        json_t *e = json_pack("{s:s, s:{s:s%, s:s, s:n, s:n}}", "type", "error", "error", "message",
                              text.len ? text.data : "", text.len, "type", o->type, "param", "code");
        char *s = e ? json_dumps(e, JSON_COMPACT) : NULL;
        if (s) {
            out = h2o_strdup(&req->pool, s, strlen(s));
            req->res.content_length = out.len; /* (headers go out with the first send) */
        }
        free(s);
        json_decref(e);
        nx_buf_cleanup(&text);
        o->type = NULL;
        if (out.base) {
            h2o_ostream_send_next(&o->super, req, is_head(req) ? NULL : &out, is_head(req) ? 0 : 1,
                                  state);
            return;
        }
    }
    h2o_ostream_send_next(&o->super, req, bufs, n, state);
}

/* Ids (x-request-id, a completion's id) must not repeat, and are no secret: xoshiro256** per
 * thread, seeded once from the system's generator, 24 characters of 62 (about 143 bits) each.
 * A turn makes three; OpenSSL's generator took 2 % of the loop thread for them. */
static _Thread_local uint64_t id_rng[4];
static _Thread_local bool is_id_rng_seeded;

static uint64_t rotl64(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t id_rng_next(void)
{
    uint64_t *s = id_rng, out = rotl64(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl64(s[3], 45);
    return out;
}

void nx_http_random_id(char *out, size_t outlen, const char *prefix)
{
    static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    if (!is_id_rng_seeded) {
        if (RAND_bytes((unsigned char *)id_rng, sizeof id_rng) != 1 || !(id_rng[0] | id_rng[1])) {
            id_rng[0] = (uint64_t)nx_mono_ns() | 1; /* (never all zero) */
            id_rng[1] = (uint64_t)(uintptr_t)&id_rng;
        }
        is_id_rng_seeded = true;
    }
    size_t n = (size_t)snprintf(out, outlen, "%s", prefix);
    for (size_t i = 0; i < 24 && n + 1 < outlen; i++)
        out[n++] = alphabet[(id_rng_next() >> 11) % (sizeof alphabet - 1)];
    out[n < outlen ? n : outlen - 1] = '\0';
}

static void errfix_setup(h2o_filter_t *self, h2o_req_t *req, h2o_ostream_t **slot)
{
    static const char plain[] = "text/plain; charset=utf-8";
    ssize_t ct = h2o_find_header(&req->res.headers, H2O_TOKEN_CONTENT_TYPE, -1);
    int status = req->res.status;

    (void)self;
    if ((status == 400 || status == 413) && ct >= 0 &&
        h2o_memis(req->res.headers.entries[ct].value.base, req->res.headers.entries[ct].value.len,
                  plain, sizeof plain - 1)) {
        struct errfix_ostream *o = (struct errfix_ostream *)h2o_add_ostream(req, sizeof *o, slot);
        o->super.do_send = errfix_send;
        o->type = status == 413 ? "request_too_large" : "invalid_request_error";
        h2o_delete_header(&req->res.headers, ct);
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL,
                       H2O_STRLIT("application/json"));
        h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-should-retry"), 0, NULL,
                              H2O_STRLIT("false")); /* as the API's own 400 and 413 */
        /* and an id, as every answer of the APIs has (Anthropic's name for /v1/messages) */
        char *id = h2o_mem_alloc_pool(&req->pool, 32);
        nx_http_random_id(id, 32, "req_");
        bool is_messages = h2o_memis(req->path_normalized.base, req->path_normalized.len < 12 ? 0 : 12,
                                     H2O_STRLIT("/v1/messages"));
        h2o_add_header_by_str(&req->pool, &req->res.headers, is_messages ? "request-id" : "x-request-id",
                              is_messages ? 10 : 12, 0, NULL, id, strlen(id));
        slot = &o->super.next;
    }
    h2o_setup_next_ostream(req, slot);
}

void nx_httpsrv_add_error_filter(h2o_pathconf_t *pc)
{
    h2o_filter_t *f = h2o_create_filter(pc, sizeof *f);
    f->on_setup_ostream = errfix_setup;
}

/* --- records --- */

static void zombie_remove(struct nx_http_req *rec)
{
    if (rec->prev)
        rec->prev->next = rec->next;
    else
        rec->srv->zombies = rec->next;
    if (rec->next)
        rec->next->prev = rec->prev;
    rec->prev = rec->next = NULL;
    rec->zombie = false;
}

static void recycle(struct nx_http_req *rec)
{
    struct nx_http_server *srv = rec->srv;

    for (int i = 0; i < 2; i++) {
        if (rec->out[i].cap > KEEP_BUF_BYTES || srv->nfree_recs >= MAX_FREE_RECS)
            nx_buf_cleanup(&rec->out[i]);
        else
            nx_buf_reset(&rec->out[i]);
    }
    if (srv->nfree_recs >= MAX_FREE_RECS) {
        free(rec);
        return;
    }
    rec->h2o = NULL;
    rec->next = srv->free_recs;
    srv->free_recs = rec;
    srv->nfree_recs++;
}

struct nx_http_req *nx_httpsrv_rec_attach(struct nx_http_server *srv, struct nx_http_conn *conn,
                                          h2o_req_t *req)
{
    struct nx_http_req *rec = srv->free_recs;
    struct nx_buf out0 = NX_BUF_INIT, out1 = NX_BUF_INIT;

    if (rec) {
        srv->free_recs = rec->next;
        srv->nfree_recs--;
        out0 = rec->out[0];
        out1 = rec->out[1];
    } else {
        rec = nx_malloc(sizeof *rec);
    }
    memset(rec, 0, sizeof *rec);
    rec->out[0] = out0;
    rec->out[1] = out1;
    rec->srv = srv;
    rec->h2o = req;
    rec->conn = conn;
    conn->rec = rec;
    srv->inflight++;
    return rec;
}

static void notify_abort(struct nx_http_req *rec)
{
    if (rec->abort_called || !rec->abort_fn)
        return;
    rec->abort_called = true;
    rec->abort_fn(rec->abort_arg);
}

void nx_httpsrv_rec_detach(struct nx_http_req *rec)
{
    struct nx_http_server *srv = rec->srv;

    if (rec->conn && rec->conn->rec == rec)
        rec->conn->rec = NULL;
    rec->conn = NULL;
    rec->h2o = NULL;
    rec->in_flight = false;
    srv->inflight--;
    if (!rec->caller_done)
        notify_abort(rec);
    if (rec->caller_done || rec->abort_fn) {
        recycle(rec);
        return;
    }
    /* nobody to tell: keep the handle until the owner answers into the void */
    rec->zombie = true;
    rec->prev = NULL;
    rec->next = srv->zombies;
    if (srv->zombies)
        srv->zombies->prev = rec;
    srv->zombies = rec;
}

static void send_current(struct nx_http_req *rec, bool final)
{
    struct nx_buf *b = &rec->out[rec->cur];
    h2o_iovec_t v = h2o_iovec_init(b->data, b->len);

    if (final)
        rec->final_sent = true;
    else
        rec->in_flight = true;
    h2o_send(rec->h2o, &v, v.len ? 1 : 0, final ? H2O_SEND_STATE_FINAL : H2O_SEND_STATE_IN_PROGRESS);
}

void nx_httpsrv_rec_end(struct nx_http_req *rec, int status)
{
    h2o_req_t *req = rec->h2o;

    if (!req || rec->server_ended)
        return;
    rec->server_ended = true;
    req->http1_is_persistent = 0;
    if (!rec->caller_done)
        notify_abort(rec);
    if (!rec->started) {
        rec->started = true;
        nx_httpsrv_send_error(req, status, "server_error",
                              status == 503 ? "the server is shutting down" : "client closed request");
    } else if (rec->streaming && !rec->final_sent) {
        if (rec->in_flight) {
            rec->end_requested = true;
        } else {
            nx_buf_reset(&rec->out[rec->cur]);
            send_current(rec, true);
        }
    }
}

static void rec_free_list(struct nx_http_req *r)
{
    for (struct nx_http_req *next; r; r = next) {
        next = r->next;
        nx_buf_cleanup(&r->out[0]);
        nx_buf_cleanup(&r->out[1]);
        free(r);
    }
}

void nx_httpsrv_rec_free_all(struct nx_http_server *srv)
{
    nx_httpsrv_rec_trim(srv);
    rec_free_list(srv->zombies);
    srv->zombies = NULL;
}

void nx_httpsrv_rec_trim(struct nx_http_server *srv)
{
    rec_free_list(srv->free_recs);
    srv->free_recs = NULL;
    srv->nfree_recs = 0;
}

/* True when the request can no longer be answered: the client left or the server finished it.
 * `finishing`: the owner's last call (respond, stream_end), which releases a zombie. */
static bool is_late(struct nx_http_req *rec, bool finishing)
{
    if (rec->h2o && !rec->server_ended)
        return false;
    if (finishing && !rec->caller_done) {
        rec->caller_done = true;
        if (rec->zombie) {
            zombie_remove(rec);
            recycle(rec);
        }
    }
    return true;
}

/* --- accessors --- */

const char *nx_http_req_method(const struct nx_http_req *req, size_t *len)
{
    if (!req->h2o) {
        *len = 0;
        return NULL;
    }
    *len = req->h2o->method.len;
    return req->h2o->method.base;
}

const char *nx_http_req_path(const struct nx_http_req *req, size_t *len)
{
    if (!req->h2o) {
        *len = 0;
        return NULL;
    }
    const char *p = req->h2o->path.base, *q = memchr(p, '?', req->h2o->path.len);
    *len = q ? (size_t)(q - p) : req->h2o->path.len;
    return p;
}

const char *nx_http_req_query(const struct nx_http_req *req, size_t *len)
{
    const char *p, *q;

    *len = 0;
    if (!req->h2o)
        return NULL;
    p = req->h2o->path.base;
    if (!(q = memchr(p, '?', req->h2o->path.len)))
        return NULL;
    *len = req->h2o->path.len - (size_t)(q + 1 - p);
    return q + 1;
}

const char *nx_http_req_header(const struct nx_http_req *req, const char *name, size_t *len)
{
    const h2o_req_t *r = req->h2o;
    size_t nlen = strlen(name);

    *len = 0;
    if (!r)
        return NULL;
    /* h2o keeps Host out of the header list (and fills in a default when it was absent) */
    if (h2o_lcstris(name, nlen, H2O_STRLIT("host"))) {
        const h2o_hostconf_t *hc = r->hostconf;
        if (!r->input.authority.base || (hc && r->input.authority.base == hc->authority.hostport.base))
            return NULL;
        *len = r->input.authority.len;
        return r->input.authority.base;
    }
    for (size_t i = 0; i < r->headers.size; i++) {
        const h2o_header_t *h = &r->headers.entries[i];
        if (h2o_lcstris(name, nlen, h->name->base, h->name->len)) {
            *len = h->value.len;
            return h->value.base;
        }
    }
    return NULL;
}

const char *nx_http_req_body(const struct nx_http_req *req, size_t *len)
{
    struct nx_http_req *rec = (struct nx_http_req *)req; /* the lazy copy is a cache */

    *len = 0;
    if (!rec->h2o || !rec->h2o->entity.base)
        return NULL;
    if (!rec->body) /* the entity lives in the socket buffer, unterminated */
        rec->body = h2o_strdup(&rec->h2o->pool, rec->h2o->entity.base, rec->h2o->entity.len).base;
    *len = rec->h2o->entity.len;
    return rec->body;
}

void nx_http_req_peer(const struct nx_http_req *req, char *out, size_t outlen)
{
    struct sockaddr_storage ss;
    char ip[INET6_ADDRSTRLEN];
    socklen_t sl;

    if (!outlen)
        return;
    out[0] = '\0';
    if (!req->h2o || !req->h2o->conn->callbacks->get_peername)
        return;
    sl = req->h2o->conn->callbacks->get_peername(req->h2o->conn, (struct sockaddr *)&ss);
    if (!sl)
        return;
    if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        if (inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof ip))
            snprintf(out, outlen, "[%s]:%u", ip, (unsigned)ntohs(a->sin6_port));
    } else if (ss.ss_family == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        if (inet_ntop(AF_INET, &a->sin_addr, ip, sizeof ip))
            snprintf(out, outlen, "%s:%u", ip, (unsigned)ntohs(a->sin_port));
    }
}

uv_loop_t *nx_http_req_loop(const struct nx_http_req *req)
{
    return req->srv->loop;
}

void nx_http_req_on_abort(struct nx_http_req *req, void (*fn)(void *arg), void *arg)
{
    req->abort_fn = fn;
    req->abort_arg = arg;
    if (!fn)
        return;
    if (req->zombie) { /* already gone: tell now, and the handle is released */
        req->caller_done = true;
        zombie_remove(req);
        req->abort_called = true;
        fn(arg);
        recycle(req);
    } else if (req->server_ended && !req->caller_done) {
        notify_abort(req);
    }
}

/* --- answering --- */

void nx_http_req_add_header(struct nx_http_req *req, const char *name, const char *value)
{
    if (!req || is_late(req, false))
        return;
    if (req->started) {
        nx_warn("http", "%s: header %s added after the response started; ignored", req->srv->name, name);
        return;
    }
    if (!*name || strpbrk(name, "\r\n: \t") || strpbrk(value, "\r\n")) {
        nx_warn("http", "%s: invalid response header name or value; ignored", req->srv->name);
        return;
    }
    h2o_mem_pool_t *pool = &req->h2o->pool;
    h2o_iovec_t n = h2o_strdup(pool, name, strlen(name));
    h2o_iovec_t v = h2o_strdup(pool, value, strlen(value));
    h2o_strtolower(n.base, n.len);
    h2o_add_header_by_str(pool, &req->h2o->res.headers, n.base, n.len, 1, NULL, v.base, v.len);
}

void nx_http_respond_json(struct nx_http_req *req, int status, const json_t *body)
{
    char *s = json_dumps(body, JSON_COMPACT);
    nx_http_respond(req, status, "application/json", s ? s : "null", s ? strlen(s) : 4);
    free(s);
}

void nx_http_respond(struct nx_http_req *req, int status, const char *content_type, const char *body,
                     size_t len)
{
    if (!req || is_late(req, true))
        return;
    if (req->started) {
        nx_warn("http", "%s: a response was already started; respond ignored", req->srv->name);
        return;
    }
    req->started = req->caller_done = true;
    nx_httpsrv_send(req->h2o, status, content_type, body, len);
}

void nx_http_respond_error(struct nx_http_req *req, int status, const char *type, const char *message)
{
    if (!req || is_late(req, true))
        return;
    if (req->started) {
        nx_warn("http", "%s: a response was already started; respond_error ignored", req->srv->name);
        return;
    }
    req->started = req->caller_done = true;
    nx_httpsrv_send_error(req->h2o, status, type, message);
}

static void on_proceed(h2o_generator_t *gen, h2o_req_t *h2o)
{
    struct nx_http_req *rec = nx_container_of(gen, struct nx_http_req, gen);

    NX_UNUSED(h2o);
    rec->in_flight = false;
    nx_buf_reset(&rec->out[rec->cur]);
    if (rec->out[rec->cur ^ 1].len) { /* coalesced while the last chunk was being written */
        rec->cur ^= 1;
        send_current(rec, rec->end_requested);
        return;
    }
    if (rec->end_requested) {
        send_current(rec, true);
        return;
    }
    if (rec->drain_fn && !rec->caller_done && !rec->server_ended)
        rec->drain_fn(rec->drain_arg);
}

static void on_stop(h2o_generator_t *gen, h2o_req_t *h2o)
{
    struct nx_http_req *rec = nx_container_of(gen, struct nx_http_req, gen);

    NX_UNUSED(h2o);
    rec->in_flight = false; /* the logger hook that follows detaches the record */
}

void nx_http_stream_begin(struct nx_http_req *req, int status, const char *content_type)
{
    if (!req || is_late(req, false))
        return;
    if (req->started) {
        nx_warn("http", "%s: a response was already started; stream_begin ignored", req->srv->name);
        return;
    }
    req->started = req->streaming = true;
    set_status(req->h2o, status, content_type);
    req->h2o->res.content_length = SIZE_MAX; /* chunked on HTTP/1.1, until close on 1.0 */
    req->gen.proceed = on_proceed;
    req->gen.stop = on_stop;
    h2o_start_response(req->h2o, &req->gen);
}

static size_t unsent(const struct nx_http_req *rec)
{
    return (rec->in_flight ? rec->out[rec->cur].len : 0) + rec->out[rec->cur ^ 1].len;
}

size_t nx_http_stream_write(struct nx_http_req *req, const char *data, size_t len)
{
    if (!req || is_late(req, false) || !req->streaming || req->caller_done || req->final_sent)
        return 0;
    if (len) {
        if (!req->in_flight) {
            nx_buf_reset(&req->out[req->cur]);
            nx_buf_append(&req->out[req->cur], data, len);
            send_current(req, false);
        } else {
            nx_buf_append(&req->out[req->cur ^ 1], data, len);
        }
    }
    return unsent(req);
}

size_t nx_http_stream_pending(const struct nx_http_req *req)
{
    return req && req->h2o && req->streaming ? unsent(req) : 0;
}

void nx_http_stream_on_drain(struct nx_http_req *req, void (*fn)(void *arg), void *arg)
{
    req->drain_fn = fn;
    req->drain_arg = arg;
}

void nx_http_stream_end(struct nx_http_req *req)
{
    if (!req || is_late(req, true))
        return;
    if (!req->started) {
        nx_http_respond_error(req, 500, "server_error", "stream ended before it began");
        return;
    }
    req->caller_done = true;
    if (!req->streaming || req->final_sent)
        return;
    if (req->in_flight) {
        req->end_requested = true;
    } else {
        nx_buf_reset(&req->out[req->cur]);
        send_current(req, true);
    }
}
