/* NX_TEST_LABELS: threaded */
/* The HTTP server driven by raw sockets from a client thread. The loop runs on the test's main
 * thread; the client thread only records what it saw (cmocka asserts are not thread-safe), and the
 * main thread asserts after joining it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "core/clock.h"
#include "core/error.h"
#include "http/server.h"

#define NRES 16

enum { CMD_NONE, CMD_SHUTDOWN, CMD_SHUTDOWN_WHEN_INFLIGHT };

struct fx {
    uv_loop_t loop;
    struct nx_http_server *srv;
    int port;
    uv_async_t wake;
    uv_timer_t tick;
    pthread_t th;
    void (*client)(struct fx *);
    atomic_int cmd;
    atomic_int client_done;
    uint32_t shutdown_deadline_ms;
    uint64_t run_deadline;
    /* loop side */
    int aborts;
    int done_called;
    size_t max_inflight;
    bool timed_out;
    bool (*pred)(struct fx *);
    /* client side, read after join */
    int res[NRES];
    char str[4][1024];
};

/* ---------------- client helpers (client thread) ---------------- */

struct cl {
    int fd;
    size_t len;
    char buf[1 << 17];
};

struct resp {
    int status;
    char head[4096]; /* lower-cased */
    char body[1 << 16];
    size_t body_len;
};

static struct cl *cl_open(int port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    struct timeval tv = {.tv_sec = 5};
    struct cl *c = calloc(1, sizeof *c);

    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(c->fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(c->fd);
        c->fd = -1;
    }
    return c;
}

static void cl_close(struct cl *c)
{
    if (c->fd >= 0)
        close(c->fd);
    free(c);
}

static int cl_sendn(struct cl *c, const char *s, size_t n)
{
    while (n) {
        ssize_t k = send(c->fd, s, n, MSG_NOSIGNAL);
        if (k <= 0)
            return -1;
        s += k;
        n -= (size_t)k;
    }
    return 0;
}

static int cl_send(struct cl *c, const char *s)
{
    return cl_sendn(c, s, strlen(s));
}

static int cl_fill(struct cl *c)
{
    if (c->len == sizeof c->buf)
        return -1;
    ssize_t n = recv(c->fd, c->buf + c->len, sizeof c->buf - c->len, 0);
    if (n > 0)
        c->len += (size_t)n;
    return n > 0 ? 1 : n == 0 ? 0 : -1;
}

static void cl_consume(struct cl *c, size_t n)
{
    memmove(c->buf, c->buf + n, c->len - n);
    c->len -= n;
}

static const char *find_header(const struct resp *r, const char *name)
{
    static __thread char val[256];
    char pat[64];
    snprintf(pat, sizeof pat, "\n%s:", name);
    const char *p = strstr(r->head, pat);
    if (!p)
        return NULL;
    p += strlen(pat);
    while (*p == ' ')
        p++;
    size_t n = strcspn(p, "\r\n");
    snprintf(val, sizeof val, "%.*s", (int)n, p);
    return val;
}

/* One response (Content-Length, chunked, or until EOF). 0, or -1 when the connection ended or
 * timed out first. */
static int cl_response(struct cl *c, struct resp *r)
{
    char *e;
    memset(r, 0, sizeof *r);
    while (!(e = memmem(c->buf, c->len, "\r\n\r\n", 4)))
        if (cl_fill(c) <= 0)
            return -1;
    size_t hlen = (size_t)(e + 4 - c->buf);
    if (hlen >= sizeof r->head || strncmp(c->buf, "HTTP/1.", 7) != 0)
        return -1;
    for (size_t i = 0; i < hlen; i++)
        r->head[i] = (char)((c->buf[i] >= 'A' && c->buf[i] <= 'Z') ? c->buf[i] + 32 : c->buf[i]);
    r->status = (int)strtol(c->buf + 9, NULL, 10);
    cl_consume(c, hlen);
    const char *cl = find_header(r, "content-length");
    const char *te = find_header(r, "transfer-encoding");
    if (cl) {
        size_t n = strtoul(cl, NULL, 10);
        if (n > sizeof r->body)
            return -1;
        while (c->len < n)
            if (cl_fill(c) <= 0)
                return -1;
        memcpy(r->body, c->buf, n);
        r->body_len = n;
        cl_consume(c, n);
        return 0;
    }
    if (te && strstr(te, "chunked")) {
        for (;;) {
            while (!(e = memmem(c->buf, c->len, "\r\n", 2)))
                if (cl_fill(c) <= 0)
                    return -1;
            size_t sz = strtoul(c->buf, NULL, 16), line = (size_t)(e + 2 - c->buf);
            while (c->len < line + sz + 2)
                if (cl_fill(c) <= 0)
                    return -1;
            if (r->body_len + sz > sizeof r->body)
                return -1;
            memcpy(r->body + r->body_len, c->buf + line, sz);
            r->body_len += sz;
            cl_consume(c, line + sz + 2);
            if (sz == 0)
                return 0;
        }
    }
    while (cl_fill(c) > 0)
        ;
    r->body_len = c->len < sizeof r->body ? c->len : sizeof r->body;
    memcpy(r->body, c->buf, r->body_len);
    c->len = 0;
    return 0;
}

/* True when the server closed the connection (EOF or reset) within timeout_ms. Data that arrives
 * first is read and dropped. */
static bool cl_wait_closed(struct cl *c, int timeout_ms)
{
    uint64_t end = nx_mono_ms() + (uint64_t)timeout_ms;
    for (;;) {
        uint64_t now = nx_mono_ms();
        if (now >= end)
            return false;
        struct pollfd p = {.fd = c->fd, .events = POLLIN};
        if (poll(&p, 1, (int)(end - now)) <= 0)
            continue;
        char tmp[4096];
        ssize_t n = recv(c->fd, tmp, sizeof tmp, MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK))
            return true;
    }
}

static int cl_get(int port, const char *req, struct resp *r)
{
    struct cl *c = cl_open(port);
    int rc = c->fd < 0 || cl_send(c, req) < 0 ? -1 : cl_response(c, r);
    cl_close(c);
    return rc;
}

/* A normal request on a new connection: the status, or -1. */
static int cl_healthy(int port)
{
    static __thread struct resp r;
    if (cl_get(port, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n", &r) < 0)
        return -1;
    return r.status == 200 && r.body_len == 5 && memcmp(r.body, "hello", 5) == 0 ? 200 : r.status;
}

static void cl_cmd(struct fx *fx, int cmd)
{
    atomic_store(&fx->cmd, cmd);
    uv_async_send(&fx->wake);
}

/* ---------------- handlers (loop thread) ---------------- */

struct job {
    uv_timer_t t; /* first: freed from the close callback */
    struct fx *fx;
    struct nx_http_req *req;
    int n;
};

static void job_closed(uv_handle_t *h)
{
    free(h);
}

static void job_finish(struct job *j)
{
    uv_timer_stop(&j->t);
    uv_close((uv_handle_t *)&j->t, job_closed);
}

static struct job *job_new(struct fx *fx, struct nx_http_req *req)
{
    struct job *j = calloc(1, sizeof *j);
    j->fx = fx;
    j->req = req;
    uv_timer_init(&fx->loop, &j->t);
    j->t.data = j;
    return j;
}

static void note_inflight(struct fx *fx)
{
    size_t n = nx_http_server_inflight(fx->srv);
    if (n > fx->max_inflight)
        fx->max_inflight = n;
}

static void h_hello(struct nx_http_req *req, void *ud)
{
    struct fx *fx = ud;
    size_t qn = 0, xn = 0, pn = 0;
    const char *q = nx_http_req_query(req, &qn), *x = nx_http_req_header(req, "X-Test", &xn);
    const char *p = nx_http_req_path(req, &pn);
    char body[512];

    note_inflight(fx);
    if (!q && !x) {
        nx_http_respond(req, 200, "text/plain", "hello", 5);
        return;
    }
    int n = snprintf(body, sizeof body, "hello path=%.*s q=%.*s x=%.*s", (int)pn, p, (int)qn, q ? q : "",
                     (int)xn, x ? x : "");
    nx_http_req_add_header(req, "X-Reply", "yes");
    nx_http_respond(req, 200, "text/plain; charset=utf-8", body, (size_t)n);
}

static void h_err(struct nx_http_req *req, void *ud)
{
    (void)ud;
    nx_http_respond_error(req, 400, "invalid_request_error", "bad \"thing\"\n");
}

static void h_echo(struct nx_http_req *req, void *ud)
{
    size_t n;
    const char *b = nx_http_req_body(req, &n);
    (void)ud;
    nx_http_respond(req, 200, "application/octet-stream", b ? b : "", n);
}

static void async_fire(uv_timer_t *t)
{
    struct job *j = t->data;
    note_inflight(j->fx);
    nx_http_respond(j->req, 200, "text/plain", "late", 4);
    job_finish(j);
}

static void h_async(struct nx_http_req *req, void *ud)
{
    struct job *j = job_new(ud, req);
    uv_timer_start(&j->t, async_fire, 30, 0);
}

static void stream_tick(uv_timer_t *t)
{
    struct job *j = t->data;
    char chunk[32];
    int n = snprintf(chunk, sizeof chunk, "data: %d\n\n", ++j->n);
    nx_http_stream_write(j->req, chunk, (size_t)n);
    if (j->n == 3) {
        nx_http_stream_end(j->req);
        job_finish(j);
    }
}

static void h_stream(struct nx_http_req *req, void *ud)
{
    struct job *j = job_new(ud, req);
    nx_http_stream_begin(req, 200, "text/event-stream");
    uv_timer_start(&j->t, stream_tick, 20, 20);
}

static void forever_abort(void *arg)
{
    struct job *j = arg;
    j->fx->aborts++;
    job_finish(j);
}

static void forever_tick(uv_timer_t *t)
{
    struct job *j = t->data;
    nx_http_stream_write(j->req, "data: x\n\n", 9);
}

static void h_forever(struct nx_http_req *req, void *ud)
{
    struct job *j = job_new(ud, req);
    nx_http_req_on_abort(req, forever_abort, j);
    nx_http_stream_begin(req, 200, "text/event-stream");
    nx_http_stream_write(req, ": ok\n\n", 6);
    uv_timer_start(&j->t, forever_tick, 20, 20);
}

static void stuck_abort(void *arg)
{
    ((struct fx *)arg)->aborts++;
}

static void h_stuck(struct nx_http_req *req, void *ud)
{
    note_inflight(ud);
    nx_http_req_on_abort(req, stuck_abort, ud);
}

/* ---------------- fixture ---------------- */

static void on_done(void *arg)
{
    ((struct fx *)arg)->done_called++;
}

static void on_wake(uv_async_t *a)
{
    struct fx *fx = a->data;
    if (atomic_load(&fx->cmd) == CMD_SHUTDOWN) {
        atomic_store(&fx->cmd, CMD_NONE);
        nx_http_server_shutdown(fx->srv, fx->shutdown_deadline_ms, on_done, fx);
    }
}

static void on_tick(uv_timer_t *t)
{
    struct fx *fx = t->data;
    if (atomic_load(&fx->cmd) == CMD_SHUTDOWN_WHEN_INFLIGHT && nx_http_server_inflight(fx->srv) > 0) {
        atomic_store(&fx->cmd, CMD_NONE);
        nx_http_server_shutdown(fx->srv, fx->shutdown_deadline_ms, on_done, fx);
    }
    if (atomic_load(&fx->client_done) && (!fx->pred || fx->pred(fx)))
        uv_stop(&fx->loop);
    else if (nx_mono_ms() > fx->run_deadline) {
        fx->timed_out = true;
        uv_stop(&fx->loop);
    }
}

static void *client_main(void *arg)
{
    struct fx *fx = arg;
    fx->client(fx);
    atomic_store(&fx->client_done, 1);
    uv_async_send(&fx->wake);
    return NULL;
}

static void fx_start(struct fx *fx, const struct nx_http_limits *lim)
{
    char err[256];
    memset(fx, 0, sizeof *fx);
    assert_int_equal(uv_loop_init(&fx->loop), 0);
    assert_int_equal(nx_http_server_new(&fx->loop, "test", lim, &fx->srv), 0);
    nx_http_server_route(fx->srv, "GET", "/hello", h_hello, fx);
    nx_http_server_route(fx->srv, "GET", "/err", h_err, fx);
    nx_http_server_route(fx->srv, "POST", "/echo", h_echo, fx);
    nx_http_server_route(fx->srv, "POST", "/upload", h_echo, fx);
    nx_http_server_route(fx->srv, "GET", "/async", h_async, fx);
    nx_http_server_route(fx->srv, "GET", "/stream", h_stream, fx);
    nx_http_server_route(fx->srv, "GET", "/forever", h_forever, fx);
    nx_http_server_route(fx->srv, "GET", "/stuck", h_stuck, fx);
    nx_http_server_route(fx->srv, NULL, "/any/*", h_echo, fx);
    assert_int_equal(nx_http_server_listen(fx->srv, "127.0.0.1", 0, err, sizeof err), 0);
    fx->port = nx_http_server_port(fx->srv);
    assert_true(fx->port > 0);
    uv_async_init(&fx->loop, &fx->wake, on_wake);
    fx->wake.data = fx;
    uv_timer_init(&fx->loop, &fx->tick);
    fx->tick.data = fx;
}

/* Runs the client script against the server until it is done and pred holds. */
static void fx_run(struct fx *fx, void (*client)(struct fx *), bool (*pred)(struct fx *))
{
    fx->client = client;
    fx->pred = pred;
    fx->run_deadline = nx_mono_ms() + 20000;
    uv_timer_start(&fx->tick, on_tick, 5, 5);
    assert_int_equal(pthread_create(&fx->th, NULL, client_main, fx), 0);
    uv_run(&fx->loop, UV_RUN_DEFAULT);
    pthread_join(fx->th, NULL);
    assert_false(fx->timed_out);
}

static void close_test_handles(struct fx *fx)
{
    uv_close((uv_handle_t *)&fx->wake, NULL);
    uv_close((uv_handle_t *)&fx->tick, NULL);
}

/* Frees the server and checks that nothing is left on the loop. */
static void fx_end(struct fx *fx)
{
    if (!uv_is_closing((uv_handle_t *)&fx->wake))
        close_test_handles(fx);
    nx_http_server_free(fx->srv);
    uint64_t end = nx_mono_ms() + 5000;
    while (uv_run(&fx->loop, UV_RUN_NOWAIT) != 0 && nx_mono_ms() < end)
        usleep(1000);
    assert_int_equal(uv_loop_close(&fx->loop), 0);
}

static const char *res_str(struct fx *fx, int i)
{
    return fx->str[i];
}

/* ---------------- tests ---------------- */

static void c_basic(struct fx *fx)
{
    struct resp r;
    fx->res[0] = cl_get(fx->port, "GET /hello?a=1&b=2 HTTP/1.1\r\nHost: t\r\nX-Test: abc\r\n\r\n", &r);
    fx->res[1] = r.status;
    snprintf(fx->str[0], sizeof fx->str[0], "%.*s", (int)r.body_len, r.body);
    const char *h = find_header(&r, "content-type");
    snprintf(fx->str[1], sizeof fx->str[1], "%s|", h ? h : "");
    h = find_header(&r, "x-reply");
    snprintf(fx->str[1] + strlen(fx->str[1]), sizeof fx->str[1] - strlen(fx->str[1]), "%s", h ? h : "");
    cl_get(fx->port, "GET /nope HTTP/1.1\r\nHost: t\r\n\r\n", &r);
    fx->res[2] = r.status;
    snprintf(fx->str[2], sizeof fx->str[2], "%.*s", (int)r.body_len, r.body);
    cl_get(fx->port, "GET /echo HTTP/1.1\r\nHost: t\r\n\r\n", &r); /* POST-only route */
    fx->res[3] = r.status;
    snprintf(fx->str[3], sizeof fx->str[3], "%s", find_header(&r, "allow") ? find_header(&r, "allow") : "");
    cl_get(fx->port, "GET /err HTTP/1.1\r\nHost: t\r\n\r\n", &r);
    fx->res[4] = r.status;
    static const char want[] =
        "{\"type\":\"error\",\"error\":{\"message\":\"bad \\\"thing\\\"\\n\",\"type\":"
        "\"invalid_request_error\",\"param\":null,\"code\":null}}";
    fx->res[5] = r.body_len == strlen(want) && memcmp(r.body, want, r.body_len) == 0;
    cl_get(fx->port, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nabcde", &r);
    fx->res[6] = r.status == 200 && r.body_len == 5 && memcmp(r.body, "abcde", 5) == 0;
    cl_get(fx->port,
           "PUT /any/thing HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
           "3\r\nxyz\r\n0\r\n\r\n",
           &r);
    fx->res[7] = r.status == 200 && r.body_len == 3 && memcmp(r.body, "xyz", 3) == 0;
    /* HEAD: GET's headers, Content-Length included, and no body */
    struct cl *c = cl_open(fx->port);
    cl_send(c, "HEAD /hello HTTP/1.1\r\nHost: t\r\n\r\n");
    char *e = NULL;
    while (!(e = memmem(c->buf, c->len, "\r\n\r\n", 4)) && cl_fill(c) > 0)
        ;
    struct pollfd p = {.fd = c->fd, .events = POLLIN};
    fx->res[8] = e && strncmp(c->buf, "HTTP/1.1 200", 12) == 0 &&
                 memmem(c->buf, c->len, "Content-Length: 5", 17) &&
                 (size_t)(e + 4 - c->buf) == c->len && poll(&p, 1, 100) == 0;
    cl_close(c);
}

static void test_http_server_routes_and_answers(void **state)
{
    struct fx fx;
    (void)state;
    fx_start(&fx, NULL);
    fx_run(&fx, c_basic, NULL);
    assert_int_equal(fx.res[0], 0);
    assert_int_equal(fx.res[1], 200);
    assert_string_equal(res_str(&fx, 0), "hello path=/hello q=a=1&b=2 x=abc");
    assert_string_equal(res_str(&fx, 1), "text/plain; charset=utf-8|yes");
    assert_int_equal(fx.res[2], 404);
    assert_non_null(strstr(res_str(&fx, 2), "\"error\""));
    assert_int_equal(fx.res[3], 405);
    assert_string_equal(res_str(&fx, 3), "post");
    assert_int_equal(fx.res[4], 400);
    assert_true(fx.res[5]);
    assert_true(fx.res[6]);
    assert_true(fx.res[7]);
    assert_true(fx.res[8]);
    assert_int_equal(nx_http_server_inflight(fx.srv), 0);
    fx_end(&fx);
}

static void c_keepalive(struct fx *fx)
{
    struct resp r;
    struct cl *c = cl_open(fx->port);
    cl_send(c, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
    fx->res[0] = cl_response(c, &r) == 0 ? r.status : -1;
    cl_send(c, "GET /async HTTP/1.1\r\nHost: t\r\n\r\n");
    fx->res[1] = cl_response(c, &r) == 0 ? r.status : -1;
    snprintf(fx->str[0], sizeof fx->str[0], "%.*s", (int)r.body_len, r.body);
    /* two pipelined requests */
    cl_send(c, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\nGET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
    fx->res[2] = cl_response(c, &r) == 0 ? r.status : -1;
    fx->res[3] = cl_response(c, &r) == 0 ? r.status : -1;
    cl_close(c);
}

static bool inflight_zero(struct fx *fx)
{
    return nx_http_server_inflight(fx->srv) == 0;
}

static void test_http_server_keepalive_and_async_answer(void **state)
{
    struct fx fx;
    (void)state;
    fx_start(&fx, NULL);
    fx_run(&fx, c_keepalive, inflight_zero);
    assert_int_equal(fx.res[0], 200);
    assert_int_equal(fx.res[1], 200);
    assert_string_equal(res_str(&fx, 0), "late");
    assert_int_equal(fx.res[2], 200);
    assert_int_equal(fx.res[3], 200);
    assert_int_equal(fx.max_inflight, 1);
    fx_end(&fx);
}

static void c_stream(struct fx *fx)
{
    struct resp r;
    struct cl *c = cl_open(fx->port);
    cl_send(c, "GET /stream HTTP/1.1\r\nHost: t\r\n\r\n");
    fx->res[0] = cl_response(c, &r);
    fx->res[1] = r.status;
    snprintf(fx->str[0], sizeof fx->str[0], "%.*s", (int)r.body_len, r.body);
    const char *ct = find_header(&r, "content-type");
    snprintf(fx->str[1], sizeof fx->str[1], "%s", ct ? ct : "");
    /* the connection is still usable after the stream ended */
    cl_send(c, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
    fx->res[2] = cl_response(c, &r) == 0 ? r.status : -1;
    cl_close(c);
}

static void test_http_server_streams_chunks_in_order(void **state)
{
    struct fx fx;
    (void)state;
    fx_start(&fx, NULL);
    fx_run(&fx, c_stream, inflight_zero);
    assert_int_equal(fx.res[0], 0);
    assert_int_equal(fx.res[1], 200);
    assert_string_equal(res_str(&fx, 0), "data: 1\n\ndata: 2\n\ndata: 3\n\n");
    assert_string_equal(res_str(&fx, 1), "text/event-stream");
    assert_int_equal(fx.res[2], 200);
    fx_end(&fx);
}

/* Records kept for reuse are freed by a trim; the server goes on answering with new ones. */
static void test_http_server_trim_then_serves_again(void **state)
{
    struct fx fx;
    (void)state;
    fx_start(&fx, NULL);
    fx_run(&fx, c_stream, inflight_zero);
    assert_int_equal(fx.res[1], 200);
    nx_http_server_trim(fx.srv);
    atomic_store(&fx.client_done, 0);
    memset(fx.res, 0, sizeof fx.res);
    fx_run(&fx, c_stream, inflight_zero);
    assert_int_equal(fx.res[0], 0);
    assert_int_equal(fx.res[1], 200);
    assert_string_equal(res_str(&fx, 0), "data: 1\n\ndata: 2\n\ndata: 3\n\n");
    assert_int_equal(fx.res[2], 200);
    nx_http_server_trim(fx.srv);
    fx_end(&fx);
}

static void c_abort(struct fx *fx)
{
    struct cl *c = cl_open(fx->port);
    cl_send(c, "GET /forever HTTP/1.1\r\nHost: t\r\n\r\n");
    uint64_t end = nx_mono_ms() + 5000;
    while (!memmem(c->buf, c->len, "data: x", 7) && nx_mono_ms() < end)
        if (cl_fill(c) <= 0)
            break;
    fx->res[0] = memmem(c->buf, c->len, ": ok", 4) != NULL && memmem(c->buf, c->len, "data: x", 7) != NULL;
    cl_close(c);
    fx->res[1] = cl_healthy(fx->port);
}

static bool aborted_once(struct fx *fx)
{
    return fx->aborts == 1 && nx_http_server_inflight(fx->srv) == 0;
}

static void test_http_server_client_leaving_mid_stream_aborts(void **state)
{
    struct fx fx;
    (void)state;
    fx_start(&fx, NULL);
    fx_run(&fx, c_abort, aborted_once);
    assert_true(fx.res[0]);
    assert_int_equal(fx.res[1], 200);
    assert_int_equal(fx.aborts, 1);
    fx_end(&fx);
}

static void c_stuck_client_leaves(struct fx *fx)
{
    struct cl *c = cl_open(fx->port);
    cl_send(c, "GET /stuck HTTP/1.1\r\nHost: t\r\n\r\n");
    /* wait until the loop saw the request, then leave */
    uint64_t end = nx_mono_ms() + 5000;
    while (atomic_load(&fx->cmd) != 7 && nx_mono_ms() < end)
        usleep(2000);
    cl_close(c);
    fx->res[0] = cl_healthy(fx->port);
}

static bool stuck_seen(struct fx *fx)
{
    return fx->aborts == 1 && nx_http_server_inflight(fx->srv) == 0;
}

static void on_tick_mark_inflight(uv_check_t *h)
{
    struct fx *fx = h->data;
    if (nx_http_server_inflight(fx->srv) > 0)
        atomic_store(&fx->cmd, 7);
}

static void test_http_server_client_leaving_unanswered_request_aborts(void **state)
{
    struct fx fx;
    uv_check_t chk;
    (void)state;
    fx_start(&fx, NULL);
    uv_check_init(&fx.loop, &chk);
    chk.data = &fx;
    uv_check_start(&chk, on_tick_mark_inflight);
    fx_run(&fx, c_stuck_client_leaves, stuck_seen);
    uv_close((uv_handle_t *)&chk, NULL);
    assert_int_equal(fx.res[0], 200);
    assert_int_equal(fx.aborts, 1);
    fx_end(&fx);
}

static void c_too_big(struct fx *fx)
{
    struct resp r;
    struct cl *c = cl_open(fx->port);
    static char junk[65536];
    cl_send(c, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100000000\r\n\r\n");
    cl_sendn(c, junk, sizeof junk); /* may fail once the server closed: fine */
    fx->res[0] = cl_response(c, &r) == 0 ? r.status : -1;
    cl_close(c);
    /* chunked over the cap */
    c = cl_open(fx->port);
    cl_send(c, "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    for (int i = 0; i < 40; i++) {
        if (cl_send(c, "400\r\n") < 0 || cl_sendn(c, junk, 1024) < 0 || cl_send(c, "\r\n") < 0)
            break;
    }
    fx->res[1] = cl_response(c, &r) == 0 ? r.status : -1;
    cl_close(c);
    fx->res[2] = cl_healthy(fx->port);
}

static void test_http_server_rejects_oversized_body_with_413(void **state)
{
    struct fx fx;
    struct nx_http_limits lim = {.max_body_bytes = 16384};
    (void)state;
    fx_start(&fx, &lim);
    fx_run(&fx, c_too_big, NULL);
    assert_int_equal(fx.res[0], 413);
    assert_int_equal(fx.res[1], 413);
    assert_int_equal(fx.res[2], 200);
    fx_end(&fx);
}

static void c_bad_requests(struct fx *fx)
{
    struct resp r;
    int i = 0;
    const char *reqs[] = {
        "GARBAGE\r\n\r\n",
        "GET /hello HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nabcde",
        "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        "3\r\nabc\r\n0\r\n\r\n",
        "GET /hello HTTP/1.1\r\n\r\n",
        "GET /hello HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "GET /hello HTTP/1.1\r\nHost: t\r\nNoColonHere\r\n\r\n",
        "GET /hello HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n",
    };
    for (size_t k = 0; k < sizeof reqs / sizeof reqs[0]; k++) {
        struct cl *c = cl_open(fx->port);
        cl_send(c, reqs[k]);
        int st = cl_response(c, &r) == 0 ? r.status : -1;
        /* 400 then close (or a plain close) */
        fx->res[i++] = (st == 400 || st == -1) && cl_wait_closed(c, 2000) ? 1 : st;
        cl_close(c);
    }
    /* HTTP/1.0 needs no Host */
    fx->res[i++] = cl_get(fx->port, "GET /hello HTTP/1.0\r\n\r\n", &r) == 0 ? r.status : -1;
    fx->res[i++] = cl_healthy(fx->port);
}

static void test_http_server_rejects_malformed_requests(void **state)
{
    struct fx fx;
    (void)state;
    fx_start(&fx, NULL);
    fx_run(&fx, c_bad_requests, NULL);
    for (int i = 0; i < 7; i++) {
        print_message("bad request %d -> %d\n", i, fx.res[i]);
        assert_int_equal(fx.res[i], 1);
    }
    assert_int_equal(fx.res[7], 200);
    assert_int_equal(fx.res[8], 200);
    fx_end(&fx);
}

static void c_headers(struct fx *fx)
{
    struct resp r;
    char big[4096];
    struct cl *c;

    /* complete but larger than max_header_bytes (1024) -> 431 */
    memset(big, 'a', 2000);
    big[2000] = '\0';
    char req[8192];
    snprintf(req, sizeof req, "GET /hello HTTP/1.1\r\nHost: t\r\nX-Big: %s\r\n\r\n", big);
    c = cl_open(fx->port);
    cl_send(c, req);
    fx->res[0] = cl_response(c, &r) == 0 ? r.status : -1;
    fx->res[1] = cl_wait_closed(c, 2000);
    cl_close(c);
    /* a header block that keeps growing without an end -> closed */
    c = cl_open(fx->port);
    cl_send(c, "GET /hello HTTP/1.1\r\nHost: t\r\n");
    uint64_t t0 = nx_mono_ms();
    bool closed = false;
    for (int i = 0; i < 200 && !closed; i++) {
        if (cl_send(c, "X-More: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n") < 0)
            closed = true;
        else
            closed = cl_wait_closed(c, 5);
    }
    if (!closed)
        closed = cl_wait_closed(c, 1000);
    fx->res[2] = closed;
    fx->res[3] = (int)(nx_mono_ms() - t0);
    cl_close(c);
    fx->res[4] = cl_healthy(fx->port);
}

static void test_http_server_caps_header_block(void **state)
{
    struct fx fx;
    struct nx_http_limits lim = {.max_header_bytes = 1024};
    (void)state;
    fx_start(&fx, &lim);
    fx_run(&fx, c_headers, NULL);
    assert_int_equal(fx.res[0], 431);
    assert_true(fx.res[1]);
    assert_true(fx.res[2]);
    assert_int_equal(fx.res[4], 200);
    fx_end(&fx);
}

static void c_slowloris(struct fx *fx)
{
    const char *req =
        "GET /hello HTTP/1.1\r\nHost: t\r\nX-Slow: 0123456789012345678901234567890123456789\r\n\r\n";
    struct cl *c = cl_open(fx->port);
    uint64_t t0 = nx_mono_ms();
    bool closed = false;
    for (size_t i = 0; req[i] && !closed; i++) {
        if (cl_sendn(c, req + i, 1) < 0)
            closed = true;
        else
            closed = cl_wait_closed(c, 50);
    }
    fx->res[0] = closed;
    fx->res[1] = (int)(nx_mono_ms() - t0);
    cl_close(c);
    fx->res[2] = cl_healthy(fx->port);
}

static void test_http_server_disconnects_slowloris(void **state)
{
    struct fx fx;
    struct nx_http_limits lim = {.request_timeout_ms = 300, .keepalive_timeout_ms = 5000};
    (void)state;
    fx_start(&fx, &lim);
    fx_run(&fx, c_slowloris, NULL);
    print_message("slowloris closed after %d ms\n", fx.res[1]);
    assert_true(fx.res[0]);
    assert_in_range(fx.res[1], 250, 1500);
    assert_int_equal(fx.res[2], 200);
    fx_end(&fx);
}

static void c_idle(struct fx *fx)
{
    struct resp r;
    struct cl *c = cl_open(fx->port);
    cl_send(c, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
    fx->res[0] = cl_response(c, &r) == 0 ? r.status : -1;
    uint64_t t0 = nx_mono_ms();
    fx->res[1] = cl_wait_closed(c, 3000);
    fx->res[2] = (int)(nx_mono_ms() - t0);
    cl_close(c);
}

static void test_http_server_closes_idle_keepalive(void **state)
{
    struct fx fx;
    struct nx_http_limits lim = {.request_timeout_ms = 10000, .keepalive_timeout_ms = 200};
    (void)state;
    fx_start(&fx, &lim);
    fx_run(&fx, c_idle, NULL);
    print_message("idle connection closed after %d ms\n", fx.res[2]);
    assert_int_equal(fx.res[0], 200);
    assert_true(fx.res[1]);
    assert_in_range(fx.res[2], 150, 1000);
    fx_end(&fx);
}

static void c_cap(struct fx *fx)
{
    struct resp r;
    struct cl *a = cl_open(fx->port), *b = cl_open(fx->port);
    cl_send(a, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
    cl_send(b, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
    fx->res[0] = cl_response(a, &r) == 0 ? r.status : -1;
    fx->res[1] = cl_response(b, &r) == 0 ? r.status : -1;
    struct cl *c = cl_open(fx->port);
    cl_send(c, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
    fx->res[2] = cl_response(c, &r) < 0 && cl_wait_closed(c, 2000);
    cl_close(c);
    cl_close(a);
    /* once the server saw a close, a new connection is served */
    int st = -1;
    for (int i = 0; i < 100 && st != 200; i++) {
        st = cl_healthy(fx->port);
        if (st != 200)
            usleep(20000);
    }
    fx->res[3] = st;
    cl_close(b);
}

static void test_http_server_enforces_connection_cap(void **state)
{
    struct fx fx;
    struct nx_http_limits lim = {.max_connections = 2};
    (void)state;
    fx_start(&fx, &lim);
    fx_run(&fx, c_cap, NULL);
    assert_int_equal(fx.res[0], 200);
    assert_int_equal(fx.res[1], 200);
    assert_true(fx.res[2]);
    assert_int_equal(fx.res[3], 200);
    fx_end(&fx);
}

static void c_graceful(struct fx *fx)
{
    struct resp r;
    struct cl *idle = cl_open(fx->port), *up = cl_open(fx->port);

    cl_send(idle, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
    fx->res[0] = cl_response(idle, &r) == 0 ? r.status : -1;
    /* the upload: headers, part of the body; 100 Continue proves the server has the headers */
    cl_send(up, "POST /upload HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n");
    fx->res[1] = cl_response(up, &r) == 0 ? r.status : -1;
    cl_send(up, "12345");
    cl_cmd(fx, CMD_SHUTDOWN);
    fx->res[2] = cl_wait_closed(idle, 3000); /* the idle keep-alive connection is closed */
    cl_send(up, "67890");
    fx->res[3] = cl_response(up, &r) == 0 ? r.status : -1;
    snprintf(fx->str[0], sizeof fx->str[0], "%.*s|%s", (int)r.body_len, r.body,
             find_header(&r, "connection") ? find_header(&r, "connection") : "");
    fx->res[4] = cl_wait_closed(up, 3000);
    /* no new connections */
    struct cl *late = cl_open(fx->port);
    fx->res[5] = late->fd < 0 || cl_wait_closed(late, 1000);
    cl_close(late);
    cl_close(idle);
    cl_close(up);
}

static void dump_handle(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (uv_is_active(h) && uv_has_ref(h))
        print_message("alive handle: %s %p\n", uv_handle_type_name(h->type), (void *)h);
}

static bool done_once(struct fx *fx)
{
    return fx->done_called == 1;
}

static void test_http_server_graceful_shutdown(void **state)
{
    struct fx fx;
    (void)state;
    fx_start(&fx, NULL);
    fx.shutdown_deadline_ms = 5000;
    fx_run(&fx, c_graceful, done_once);
    assert_int_equal(fx.res[0], 200);
    assert_int_equal(fx.res[1], 100);
    assert_true(fx.res[2]);
    assert_int_equal(fx.res[3], 200);
    assert_string_equal(res_str(&fx, 0), "1234567890|close");
    assert_true(fx.res[4]);
    assert_true(fx.res[5]);
    assert_int_equal(fx.done_called, 1);
    assert_int_equal(nx_http_server_connections(fx.srv), 0);
    /* after done, the server keeps nothing alive on the loop */
    close_test_handles(&fx);
    uv_run(&fx.loop, UV_RUN_NOWAIT);
    uv_walk(&fx.loop, dump_handle, NULL);
    assert_int_equal(uv_loop_alive(&fx.loop), 0);
    fx_end(&fx);
}

static void c_deadline(struct fx *fx)
{
    struct resp r;
    struct cl *c = cl_open(fx->port);
    cl_send(c, "GET /stuck HTTP/1.1\r\nHost: t\r\n\r\n");
    cl_cmd(fx, CMD_SHUTDOWN_WHEN_INFLIGHT);
    uint64_t t0 = nx_mono_ms();
    int st = cl_response(c, &r) == 0 ? r.status : -1;
    fx->res[0] = (st == 503 || st == -1) && cl_wait_closed(c, 2000);
    fx->res[1] = (int)(nx_mono_ms() - t0);
    cl_close(c);
}

static void test_http_server_shutdown_deadline_forces_close(void **state)
{
    struct fx fx;
    (void)state;
    fx_start(&fx, NULL);
    fx.shutdown_deadline_ms = 200;
    fx_run(&fx, c_deadline, done_once);
    assert_true(fx.res[0]);
    assert_in_range(fx.res[1], 150, 2000);
    assert_int_equal(fx.aborts, 1);
    assert_int_equal(fx.done_called, 1);
    assert_int_equal(nx_http_server_inflight(fx.srv), 0);
    fx_end(&fx);
}

static void test_http_server_listen_reports_address_in_use(void **state)
{
    uv_loop_t loop;
    struct nx_http_server *a, *b;
    char err[256];
    (void)state;
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(nx_http_server_new(&loop, "a", NULL, &a), 0);
    assert_int_equal(nx_http_server_new(&loop, "b", NULL, &b), 0);
    assert_int_equal(nx_http_server_listen(a, "127.0.0.1", 0, err, sizeof err), 0);
    int pa = nx_http_server_port(a);
    assert_int_equal(nx_http_server_listen(b, "127.0.0.1", pa, err, sizeof err), NX_EADDR);
    assert_non_null(strstr(err, "address already in use"));
    assert_int_equal(nx_http_server_listen(b, "not-an-ip", 1, err, sizeof err), NX_EADDR);
    nx_http_server_free(a);
    nx_http_server_free(b);
    nx_http_server_free(NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void c_leave_open(struct fx *fx)
{
    struct cl *a = cl_open(fx->port), *b = cl_open(fx->port);
    cl_send(a, "GET /stuck HTTP/1.1\r\nHost: t\r\n\r\n");
    cl_send(b, "GET /forever HTTP/1.1\r\nHost: t\r\n\r\n");
    /* the sockets stay open; the main thread closes them after freeing the server */
    fx->res[0] = a->fd;
    fx->res[1] = b->fd;
    free(a);
    free(b);
}

static bool two_inflight(struct fx *fx)
{
    return nx_http_server_inflight(fx->srv) == 2;
}

static void test_http_server_free_with_open_requests(void **state)
{
    struct fx fx;
    (void)state;
    fx_start(&fx, NULL);
    fx_run(&fx, c_leave_open, two_inflight);
    fx_end(&fx); /* free with a stuck request and a live stream: both see on_abort */
    assert_int_equal(fx.aborts, 2);
    close(fx.res[0]);
    close(fx.res[1]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_http_server_routes_and_answers),
        cmocka_unit_test(test_http_server_keepalive_and_async_answer),
        cmocka_unit_test(test_http_server_streams_chunks_in_order),
        cmocka_unit_test(test_http_server_trim_then_serves_again),
        cmocka_unit_test(test_http_server_client_leaving_mid_stream_aborts),
        cmocka_unit_test(test_http_server_client_leaving_unanswered_request_aborts),
        cmocka_unit_test(test_http_server_rejects_oversized_body_with_413),
        cmocka_unit_test(test_http_server_rejects_malformed_requests),
        cmocka_unit_test(test_http_server_caps_header_block),
        cmocka_unit_test(test_http_server_disconnects_slowloris),
        cmocka_unit_test(test_http_server_closes_idle_keepalive),
        cmocka_unit_test(test_http_server_enforces_connection_cap),
        cmocka_unit_test(test_http_server_graceful_shutdown),
        cmocka_unit_test(test_http_server_shutdown_deadline_forces_close),
        cmocka_unit_test(test_http_server_listen_reports_address_in_use),
        cmocka_unit_test(test_http_server_free_with_open_requests),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
