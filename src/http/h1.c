/* nexo's own HTTP/1.1 engine for plain http:// calls without a proxy, redirects or a pinned
 * address: a local model server (Ollama, vLLM, llama.cpp), a sidecar, the test fakes. libcurl
 * holds ~11 KB per call in flight (its easy handle is 5 KB, its connection ~3 KB more, its
 * receive buffer 1 KB at least); this engine holds ~1 KB: the call, a uv_tcp_t, the request head
 * until it is sent. Reads land in one buffer per client, parsed at once (http/h1_parse.c), so
 * thousands of streams waiting for their next event hold no read buffer. Everything else (TLS,
 * proxies, redirects, pinned addresses, Expect) stays with libcurl (http/client.c), and so does
 * the call's bookkeeping: deadlines, idle and stall clocks, size caps, callbacks.
 *
 * Connections are kept alive per host:port (max_host_connections each; beyond, calls wait in
 * order), with at most the client's idle pool of them idle. An idle connection keeps reading, so
 * one the server closes goes at once. A reused connection that ends before the first byte of its
 * answer is retried once on a fresh one, as curl does: the server may have closed it as the
 * request left. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/alloc.h"
#include "core/error.h"
#include "core/log.h"
#include "http/client_internal.h"
#include "http/h1_parse.h"

#define READ_BUF_BYTES (64 * 1024)
#define TCP_KEEPALIVE_S 60

struct h1_host {
    struct h1_host *next;
    struct h1_conn *idle; /* a stack */
    size_t nconns;        /* open or opening, idle ones included */
    char key[];           /* "host:port", as in the Host header */
};

struct h1_conn {
    uv_tcp_t tcp;
    union {
        uv_connect_t connect;
        uv_write_t write;
    } req;
    struct nx_http_client *client;
    struct h1_host *host;
    struct nx_http_call *call; /* NULL while idle */
    struct h1_conn *next_idle;
    struct h1_dns *dns;        /* the lookup in flight */
    struct addrinfo *ai, *ai_next;
    uint64_t t_first;          /* loop time the first attempt (or the name's lookup) began */
    uint64_t t_give_up;        /* loop time this address's attempt fails by */
    bool is_connected, is_reused, is_closing, is_idle, is_writing;
    bool is_broken; /* its write failed after the answer's head came: not to be reused */
};

struct h1_dns {
    uv_getaddrinfo_t req;
    struct h1_conn *conn; /* NULL once the connection went: the answer is dropped */
    struct nx_http_client *client;
};

struct nx_h1_call {
    struct nx_h1_parser parser;
    struct h1_conn *conn;
    struct nx_buf head;      /* the request head, until sent */
    char *host;              /* the name or address to connect to (no brackets) */
    int port;
    char *key;               /* "host:port", the Host header */
    uint64_t deadline_ms;    /* loop time of the whole-call deadline, 0 = none (idle clock) */
    uint32_t timeout_ms;
    bool is_waiting;         /* for a connection slot */
    bool is_complete;        /* the answer ended by its framing, nothing after it */
    bool got_bytes;
    bool is_retried;
    bool got_head;           /* the answer's head came: the request is never sent again */
};

struct nx_h1_pool {
    struct h1_host *hosts;
    size_t nidle;
    size_t nwaiting;
    char rbuf[READ_BUF_BYTES];
};

/* ---- preparing a call ---------------------------------------------------------------- */

static bool has_header(const struct nx_http_call_opts *o, const char *name)
{
    for (size_t i = 0; i < o->nheaders; i++)
        if (o->headers[i].name && strcasecmp(o->headers[i].name, name) == 0)
            return true;
    return false;
}

struct url_parts {
    const char *auth, *auth_end; /* host[:port] */
    const char *host, *host_end; /* without an IPv6 address's brackets */
    const char *path;            /* up to a '#' or the end */
    size_t path_len;
    int port;
    bool has_port;
};

/* http://host[:port][/path][?query][#frag], nothing more: user info, an empty or bad port, an
 * empty host are libcurl's to handle (or refuse). */
static int split_url(const char *url, struct url_parts *u)
{
    const char *a = url + 7, *e = a + strcspn(a, "/?#"), *ps = NULL;

    memset(u, 0, sizeof *u);
    u->auth = u->host = a;
    u->auth_end = e;
    if (memchr(a, '@', (size_t)(e - a)) || e == a)
        return NX_EINVAL;
    if (*a == '[') {
        const char *rb = memchr(a, ']', (size_t)(e - a));
        if (!rb)
            return NX_EINVAL;
        u->host = a + 1;
        u->host_end = rb;
        if (rb + 1 < e && rb[1] == ':')
            ps = rb + 2;
        else if (rb + 1 != e)
            return NX_EINVAL;
    } else {
        const char *colon = memchr(a, ':', (size_t)(e - a));
        u->host_end = colon ? colon : e;
        ps = colon ? colon + 1 : NULL;
    }
    if (u->host_end == u->host)
        return NX_EINVAL;
    u->port = 80;
    if (ps) {
        long port = 0;
        if (ps == e || e - ps > 5)
            return NX_EINVAL;
        for (const char *q = ps; q < e; q++) {
            if (*q < '0' || *q > '9')
                return NX_EINVAL;
            port = port * 10 + (*q - '0');
        }
        if (port == 0 || port > 65535)
            return NX_EINVAL;
        u->port = (int)port;
        u->has_port = true;
    }
    u->path = e;
    u->path_len = strcspn(e, "#");
    return 0;
}

bool nx_h1_wants(const struct nx_http_client *c, const struct nx_http_call_opts *o)
{
    const char *proxy = o->proxy ? o->proxy : c->proxy;
    struct url_parts u;

    if (c->is_curl_only || !o->url || strncasecmp(o->url, "http://", 7) != 0 || (proxy && proxy[0]) ||
        o->follow_redirects || o->resolve || has_header(o, "Expect") || has_header(o, "Transfer-Encoding"))
        return false;
    for (const char *s = o->url; *s; s++)
        if ((unsigned char)*s <= ' ' || (unsigned char)*s >= 0x7f)
            return false; /* curl's URL rules decide those */
    return split_url(o->url, &u) == 0;
}

/* The method as sent: the usual ones in capitals whatever the caller's case, as curl does. */
static const char *method_name(const char *m)
{
    static const char *const known[] = {"GET", "POST", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS"};

    for (size_t i = 0; i < sizeof known / sizeof *known; i++)
        if (strcasecmp(m, known[i]) == 0)
            return known[i];
    return m;
}

int nx_h1_prepare(struct nx_http_call *call, const struct nx_http_call_opts *o, const char *method,
                  const char **err)
{
    struct nx_h1_call *h = nx_calloc(1, sizeof *h);
    struct nx_buf *b = &h->head;
    struct url_parts u;

    call->h1 = h;
    nx_buf_init(b);
    method = method_name(method);
    nx_h1_parser_init(&h->parser, &call->resp_hdrs, 0, strcmp(method, "HEAD") == 0);
    if (split_url(o->url, &u) != 0) { /* (nx_h1_wants checked it) */
        *err = "URL is not http://host[:port][/path]";
        return NX_EINVAL;
    }
    h->port = u.port;
    h->host = nx_strndup(u.host, (size_t)(u.host_end - u.host));
    /* the Host header: the port only when not the default, an IPv6 address in its brackets */
    size_t key_len = u.has_port && u.port != 80 ? (size_t)(u.auth_end - u.auth)
                                                : (size_t)(u.host_end - u.auth) + (*u.auth == '[');
    h->key = nx_strndup(u.auth, key_len);
    nx_buf_printf(b, "%s %s%.*s HTTP/1.1\r\n", method, *u.path == '/' ? "" : "/", (int)u.path_len, u.path);
    for (size_t i = 0; i < o->nheaders; i++) {
        const struct nx_http_header *hd = &o->headers[i];
        if (nx_http_bad_header(hd)) {
            *err = "header name or value is empty or contains CR, LF or ':'";
            return NX_EINVAL;
        }
        nx_buf_printf(b, "%s:%s%s\r\n", hd->name, hd->value[0] ? " " : "", hd->value);
    }
    /* what curl sends unless the caller gave its own */
    if (!has_header(o, "Host"))
        nx_buf_printf(b, "Host: %s\r\n", h->key);
    if (!has_header(o, "User-Agent"))
        nx_buf_printf(b, "User-Agent: %s\r\n", call->client->user_agent);
    if (!has_header(o, "Accept"))
        nx_buf_puts(b, "Accept: */*\r\n");
    if (o->body || strcasecmp(method, "POST") == 0) {
        if (!o->is_body_given)
            call->body = nx_memdup(o->body ? o->body : "", o->body ? o->body_len : 0);
        call->body_len = o->body ? o->body_len : 0;
        if (!has_header(o, "Content-Type") && o->body)
            nx_buf_puts(b, "Content-Type: application/x-www-form-urlencoded\r\n");
        if (!has_header(o, "Content-Length"))
            nx_buf_printf(b, "Content-Length: %zu\r\n", call->body_len);
    }
    nx_buf_puts(b, "\r\n");
    h->timeout_ms = o->idle_timeout_ms ? 0 : o->timeout_ms ? o->timeout_ms : call->client->timeout_ms;
    if (h->timeout_ms)
        h->deadline_ms = uv_now(call->client->loop) + h->timeout_ms;
    return 0;
}

/* ---- hosts and connections ------------------------------------------------------------ */

static struct nx_h1_pool *pool_of(struct nx_http_client *c)
{
    if (!c->h1)
        c->h1 = nx_calloc(1, sizeof *c->h1);
    return c->h1;
}

static struct h1_host *host_get(struct nx_http_client *c, const char *key)
{
    struct nx_h1_pool *pl = pool_of(c);
    struct h1_host *hs;
    size_t n = strlen(key);

    for (hs = pl->hosts; hs; hs = hs->next)
        if (strcasecmp(hs->key, key) == 0)
            return hs;
    hs = nx_calloc(1, sizeof *hs + n + 1);
    memcpy(hs->key, key, n + 1);
    hs->next = pl->hosts;
    pl->hosts = hs;
    return hs;
}

/* A host with no connection left goes (a client that calls many hosts does not keep them all). */
static void host_drop_if_unused(struct nx_http_client *c, struct h1_host *hs)
{
    struct h1_host **pp = &c->h1->hosts;

    if (hs->nconns)
        return;
    while (*pp && *pp != hs)
        pp = &(*pp)->next;
    if (*pp)
        *pp = hs->next;
    free(hs);
}

static void idle_remove(struct h1_conn *k)
{
    struct h1_conn **pp = &k->host->idle;

    while (*pp && *pp != k)
        pp = &(*pp)->next_idle;
    if (*pp)
        *pp = k->next_idle;
    k->is_idle = false;
    k->client->h1->nidle--;
}

static void conn_closed(uv_handle_t *hd)
{
    struct h1_conn *k = hd->data;
    struct nx_http_client *c = k->client;

    if (k->ai)
        uv_freeaddrinfo(k->ai);
    free(k);
    nx_http_handle_closed(c);
}

/* A slot at the host may have come free: waiting calls are started from the kick timer. */
static void wake_waiting(struct nx_http_client *c)
{
    if (c->h1 && c->h1->nwaiting && !c->is_freeing)
        uv_timer_start(&c->kick, nx_http_on_kick, 0, 0);
}

static void conn_close(struct h1_conn *k)
{
    if (k->is_closing)
        return;
    k->is_closing = true;
    if (k->is_idle)
        idle_remove(k);
    if (k->dns) {
        k->dns->conn = NULL;
        uv_cancel((uv_req_t *)&k->dns->req); /* (its callback still runs, and frees it) */
    }
    k->host->nconns--;
    uv_close((uv_handle_t *)&k->tcp, conn_closed);
    wake_waiting(k->client);
}

static struct h1_conn *conn_new(struct nx_http_client *c, struct h1_host *hs)
{
    struct h1_conn *k = nx_calloc(1, sizeof *k);

    uv_tcp_init(c->loop, &k->tcp);
    k->tcp.data = k;
    k->client = c;
    k->host = hs;
    k->t_first = uv_now(c->loop);
    k->t_give_up = k->t_first + c->connect_timeout_ms;
    hs->nconns++;
    c->open_handles++;
    return k;
}

/* ---- the exchange --------------------------------------------------------------------- */

static void start(struct nx_http_call *call, bool is_fresh);

static void fail(struct nx_http_call *call, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void fail(struct nx_http_call *call, int rc, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(call->errbuf, sizeof call->errbuf, fmt, ap);
    va_end(ap);
    nx_http_call_finish(call, rc, call->errbuf);
}

/* The connection ended or broke before the answer did. A reused one that brought nothing is
 * tried again on a fresh connection, once. */
static void conn_lost(struct nx_http_call *call, const char *why)
{
    struct nx_h1_call *h = call->h1;
    struct h1_conn *k = h->conn;

    if (k->is_reused && !h->got_bytes && !h->is_retried && h->head.len) {
        h->is_retried = true;
        k->call = NULL;
        h->conn = NULL;
        conn_close(k);
        call->in_multi = 0;
        start(call, true); /* not on another pooled one: the server may have dropped them all */
        return;
    }
    fail(call, NX_EHTTP, "%s", why);
}

/* The request will not be sent again: its head and body go. */
static void release_request(struct nx_http_call *call)
{
    nx_buf_cleanup(&call->h1->head);
    free(call->body);
    call->body = NULL;
}

static int on_head(struct nx_h1_parser *p, void *udata)
{
    struct nx_http_call *call = udata;

    call->last_progress_ms = uv_now(call->client->loop);
    if (p->content_length != UINT64_MAX && p->content_length > call->max_bytes) {
        call->fail_rc = NX_ETOOBIG;
        snprintf(call->errbuf, sizeof call->errbuf, "response Content-Length exceeds the size cap");
        return 1;
    }
    call->h1->got_head = true; /* the server answered: the request goes once all of it is sent */
    if (!call->h1->conn->is_writing)
        release_request(call);
    return 0;
}

static int on_body(const char *data, size_t n, void *udata)
{
    struct nx_http_call *call = udata;

    if (call->received + n > call->max_bytes) {
        call->fail_rc = NX_ETOOBIG;
        return 1;
    }
    call->received += n;
    call->body_started = 1;
    if (call->on_data) {
        uint64_t prev = nx_log_context_swap(call->log_ctx);
        int stop = call->on_data(data, n, call->h1->parser.status, call->udata);
        nx_log_context_swap(prev);
        if (stop != 0)
            call->fail_rc = NX_ECANCELED;
        return stop != 0 || call->is_done;
    }
    nx_buf_append(&call->resp_body, data, n);
    return 0;
}

static void on_alloc(uv_handle_t *hd, size_t suggested, uv_buf_t *buf)
{
    struct h1_conn *k = hd->data;

    (void)suggested;
    *buf = uv_buf_init(k->client->h1->rbuf, READ_BUF_BYTES);
}

static void got_bytes(struct nx_http_call *call, struct h1_conn *k, const char *data, size_t n)
{
    struct nx_h1_call *h = call->h1;
    size_t used;
    int rc;

    h->got_bytes = true;
    call->last_data_ms = uv_now(call->client->loop);
    rc = nx_h1_feed(&h->parser, data, n, &used, on_head, on_body, call);
    if (call->is_done)
        return; /* a callback cancelled it */
    if (rc == NX_H1_COMPLETE) {
        h->is_complete = used == n && h->parser.is_keep_alive && !k->is_closing;
        nx_http_call_finish(call, 0, NULL);
    } else if (rc == NX_H1_STOPPED) {
        nx_http_call_finish(call, call->fail_rc ? call->fail_rc : NX_ECANCELED,
                            call->errbuf[0]                ? call->errbuf
                            : call->fail_rc == NX_ETOOBIG ? "response exceeds the size cap"
                                                          : "aborted by the data callback");
    } else if (rc < 0) {
        fail(call, rc, "%s", h->parser.err);
    }
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    struct h1_conn *k = st->data;
    struct nx_http_client *c = k->client;
    struct nx_http_call *call = k->call;

    if (nread == 0 || k->is_closing)
        return;
    if (!call) { /* idle: the server closed it, or sent what nothing asked for */
        struct h1_host *hs = k->host;
        conn_close(k);
        host_drop_if_unused(c, hs);
        return;
    }
    nx_http_enter(c);
    if (nread > 0) {
        got_bytes(call, k, buf->base, (size_t)nread);
    } else if (nread == UV_EOF && nx_h1_eof(&call->h1->parser) == NX_H1_COMPLETE) {
        call->h1->is_complete = false; /* (the connection is gone) */
        nx_http_call_finish(call, 0, NULL);
    } else if (nread == UV_EOF && !call->h1->got_bytes) {
        conn_lost(call, "Empty reply from server");
    } else if (nread == UV_EOF) {
        conn_lost(call, call->h1->parser.err);
    } else {
        char why[96];
        snprintf(why, sizeof why, "Recv failure: %s", uv_strerror((int)nread));
        conn_lost(call, why);
    }
    nx_http_leave(c);
}

static void on_written(uv_write_t *req, int status)
{
    struct h1_conn *k = req->data;
    struct nx_http_call *call = k->call;
    struct nx_http_client *c = k->client;

    k->is_writing = false;
    if (status == UV_ECANCELED || !call || k->is_closing)
        return;
    if (status < 0 && call->h1->got_head) {
        k->is_broken = true; /* the answer is coming: the read side ends the call */
        return;
    }
    if (status < 0) {
        nx_http_enter(c);
        char why[96];
        snprintf(why, sizeof why, "Send failure: %s", uv_strerror(status));
        conn_lost(call, why);
        nx_http_leave(c);
        return;
    }
    if (!k->is_reused || call->h1->got_head) /* nothing sends it again */
        release_request(call);
}

static void send_request(struct nx_http_call *call, struct h1_conn *k)
{
    struct nx_h1_call *h = call->h1;
    uv_buf_t bufs[2];
    unsigned n = 0;
    int rc;

    call->is_connected = true;
    call->last_data_ms = call->last_progress_ms = uv_now(call->client->loop);
    bufs[n++] = uv_buf_init(h->head.data, (unsigned)h->head.len);
    if (call->body_len)
        bufs[n++] = uv_buf_init(call->body, (unsigned)call->body_len);
    k->req.write.data = k;
    k->is_writing = true;
    if ((rc = uv_write(&k->req.write, (uv_stream_t *)&k->tcp, bufs, n, on_written)) != 0) {
        k->is_writing = false;
        char why[96];
        snprintf(why, sizeof why, "Send failure: %s", uv_strerror(rc));
        conn_lost(call, why);
    }
}

static void connect_next(struct h1_conn *k);

/* The connection to this address failed or took too long: the name's next address, if it has
 * one, on a new handle (a failed connect leaves its socket unusable). Returns 0 when none is left. */
static int next_address(struct h1_conn *k)
{
    struct nx_http_client *c = k->client;
    struct nx_http_call *call = k->call;
    struct h1_conn *k2;

    if (!call || !k->ai_next || !k->ai_next->ai_next)
        return 0;
    k2 = conn_new(c, k->host);
    k2->t_first = k->t_first;
    k2->ai = k->ai;
    k2->ai_next = k->ai_next->ai_next;
    k->ai = k->ai_next = NULL;
    k2->call = call;
    call->h1->conn = k2;
    k->call = NULL;
    conn_close(k);
    connect_next(k2);
    return 1;
}

static void on_connected(uv_connect_t *req, int status)
{
    struct h1_conn *k = req->data;
    struct nx_http_client *c = k->client;
    struct nx_http_call *call = k->call;

    if (status == UV_ECANCELED || k->is_closing)
        return;
    if (!call) { /* its call ended while it connected */
        conn_close(k);
        return;
    }
    nx_http_enter(c);
    if (status < 0 && next_address(k)) {
        /* the name's next address is being tried */
    } else if (status < 0) {
        fail(call, NX_EHTTP, "Failed to connect to %s port %d: %s", call->h1->host, call->h1->port,
             uv_strerror(status));
    } else {
        if (k->ai)
            uv_freeaddrinfo(k->ai);
        k->ai = k->ai_next = NULL;
        k->is_connected = true;
        uv_tcp_nodelay(&k->tcp, 1);
        uv_tcp_keepalive(&k->tcp, 1, TCP_KEEPALIVE_S);
        uv_read_start((uv_stream_t *)&k->tcp, on_alloc, on_read);
        send_request(call, k);
    }
    nx_http_leave(c);
}

static void connect_to(struct h1_conn *k, const struct sockaddr *sa)
{
    int rc;

    k->req.connect.data = k;
    if ((rc = uv_tcp_connect(&k->req.connect, &k->tcp, sa, on_connected)) != 0 && !next_address(k)) {
        fail(k->call, NX_EHTTP, "Failed to connect to %s port %d: %s", k->call->h1->host, k->call->h1->port,
             uv_strerror(rc));
    }
}

/* Connects to k->ai_next. The connect timeout is shared among the addresses left, as curl does:
 * a name whose first address drops packets still reaches its second in time. */
static void connect_next(struct h1_conn *k)
{
    uint64_t now = uv_now(k->client->loop), end = k->t_first + k->client->connect_timeout_ms;
    unsigned n = 0;

    for (const struct addrinfo *a = k->ai_next; a; a = a->ai_next)
        n++;
    k->t_give_up = n > 1 && end > now ? now + (end - now) / n : end;
    connect_to(k, k->ai_next->ai_addr);
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct h1_dns *d = req->data;
    struct h1_conn *k = d->conn;
    struct nx_http_client *c = d->client;

    if (!k || !k->call) {
        if (res)
            uv_freeaddrinfo(res);
        if (k) {
            k->dns = NULL;
            conn_close(k);
        }
    } else {
        struct nx_http_call *call = k->call;
        k->dns = NULL;
        nx_http_enter(c);
        if (status < 0 || !res) {
            fail(call, NX_EHTTP, "Could not resolve host: %s", call->h1->host);
        } else {
            k->ai = k->ai_next = res;
            connect_next(k);
        }
        nx_http_leave(c);
    }
    free(d);
    nx_http_handle_closed(c);
}

static void open_conn(struct nx_http_call *call, struct h1_host *hs)
{
    struct nx_http_client *c = call->client;
    struct nx_h1_call *h = call->h1;
    struct h1_conn *k = conn_new(c, hs);
    struct sockaddr_storage ss;
    struct addrinfo hints;

    k->call = call;
    h->conn = k;
    char service[8];

    if (uv_ip4_addr(h->host, h->port, (struct sockaddr_in *)&ss) == 0 ||
        uv_ip6_addr(h->host, h->port, (struct sockaddr_in6 *)&ss) == 0) {
        connect_to(k, (struct sockaddr *)&ss);
        return;
    }
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM; /* (no AI_ADDRCONFIG: with only loopback up it finds nothing) */
    k->dns = nx_calloc(1, sizeof *k->dns);
    k->dns->conn = k;
    k->dns->client = c;
    k->dns->req.data = k->dns;
    c->open_handles++;
    snprintf(service, sizeof service, "%d", h->port);
    if (uv_getaddrinfo(c->loop, &k->dns->req, on_resolved, h->host, service, &hints) != 0) {
        free(k->dns);
        k->dns = NULL;
        nx_http_handle_closed(c);
        fail(call, NX_EHTTP, "Could not resolve host: %s", h->host);
    }
}

static void start(struct nx_http_call *call, bool is_fresh)
{
    struct nx_http_client *c = call->client;
    struct nx_h1_call *h = call->h1;
    struct h1_host *hs = host_get(c, h->key);

    if (hs->idle && !is_fresh) {
        struct h1_conn *k = hs->idle;
        idle_remove(k);
        k->call = call;
        k->is_reused = true;
        h->conn = k;
        call->in_multi = 1;
        send_request(call, k);
    } else if (hs->nconns < (size_t)c->host_conns || is_fresh) { /* (a retry: its slot just came free) */
        call->in_multi = 1;
        open_conn(call, hs);
    } else if (!h->is_waiting) {
        h->is_waiting = true;
        c->h1->nwaiting++;
    }
}

void nx_h1_start(struct nx_http_call *call)
{
    struct nx_h1_call *h = call->h1;

    if (h->is_waiting) {
        h->is_waiting = false;
        call->client->h1->nwaiting--;
    }
    start(call, false);
}

void nx_h1_detach(struct nx_http_call *call)
{
    struct nx_http_client *c = call->client;
    struct nx_h1_call *h = call->h1;
    struct h1_conn *k = h->conn;

    if (h->is_waiting) {
        h->is_waiting = false;
        c->h1->nwaiting--;
    }
    if (k) {
        k->call = NULL;
        if (h->is_complete && !c->is_freeing && !k->is_closing && !k->is_writing && !k->is_broken &&
            c->h1->nidle < nx_http_max_idle(c)) {
            k->is_idle = true;
            k->next_idle = k->host->idle;
            k->host->idle = k;
            c->h1->nidle++;
            wake_waiting(c);
        } else {
            struct h1_host *hs = k->host;
            conn_close(k); /* (a write in flight is cancelled before the body goes) */
            host_drop_if_unused(c, hs);
        }
    }
    nx_buf_cleanup(&h->head);
    free(h->host);
    free(h->key);
    free(h);
    call->h1 = NULL;
}

int nx_h1_tick(struct nx_http_call *call, uint64_t now)
{
    struct nx_h1_call *h = call->h1;
    struct h1_conn *k = h->conn;

    uint64_t end = k ? k->t_first + call->client->connect_timeout_ms : 0;
    if (k && !k->is_connected && now >= k->t_give_up && now < end && next_address(k))
        return 0;
    if (k && !k->is_connected && (now >= k->t_give_up || now >= end)) {
        fail(call, NX_ETIMEDOUT, "Connection timed out after %u milliseconds",
             (unsigned)call->client->connect_timeout_ms);
        return 1;
    }
    if (h->deadline_ms && now >= h->deadline_ms) {
        fail(call, NX_ETIMEDOUT, "Operation timed out after %u milliseconds with %llu bytes received",
             (unsigned)h->timeout_ms, (unsigned long long)call->received);
        return 1;
    }
    return 0;
}

long nx_h1_status(const struct nx_http_call *call)
{
    return call->h1 ? call->h1->parser.status : 0;
}

static void pool_free(struct nx_http_client *c)
{
    while (c->h1->hosts) {
        struct h1_host *hs = c->h1->hosts;
        c->h1->hosts = hs->next;
        free(hs);
    }
    free(c->h1);
    c->h1 = NULL;
}

size_t nx_h1_trim(struct nx_http_client *c)
{
    size_t n = 0;

    if (!c->h1)
        return 0;
    for (struct h1_host *hs = c->h1->hosts, *next; hs; hs = next) {
        next = hs->next;
        while (hs->idle) {
            conn_close(hs->idle);
            n++;
        }
        host_drop_if_unused(c, hs);
    }
    /* no host left (closing connections touch none) and no call waiting: the read buffer too */
    if (!c->h1->hosts && !c->h1->nwaiting)
        pool_free(c);
    return n;
}

void nx_h1_free(struct nx_http_client *c)
{
    if (c->h1)
        nx_h1_trim(c);
    if (c->h1)
        pool_free(c);
}
