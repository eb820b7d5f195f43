#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/clock.h"
#include "core/error.h"
#include "http/client.h"
#include "http/sse.h"

/* The client against real local peers: tests/tools/http_peer.py (scripted endpoints, also a
 * forward proxy for absolute-form requests) and tests/tools/socks5_proxy.py, started once for
 * the group and killed in the group teardown (and by PR_SET_PDEATHSIG if we crash). */

struct peer {
    pid_t pid;
    int out_fd;
    int port;
};

static struct peer g_http = {-1, -1, 0};
static struct peer g_socks = {-1, -1, 0};

/* Reads one line from the peer's stdout, waiting at most timeout_ms. */
static int peer_read_line(struct peer *p, char *line, size_t cap, int timeout_ms)
{
    uint64_t deadline = nx_mono_ms() + (uint64_t)timeout_ms;
    size_t n = 0;

    while (n + 1 < cap) {
        struct pollfd pfd = {p->out_fd, POLLIN, 0};
        int64_t left = (int64_t)(deadline - nx_mono_ms());
        char ch;

        if (left <= 0 || poll(&pfd, 1, (int)left) <= 0)
            return -1;
        if (read(p->out_fd, &ch, 1) != 1)
            return -1;
        if (ch == '\n')
            break;
        line[n++] = ch;
    }
    line[n] = '\0';
    return 0;
}

static int peer_start(struct peer *p, const char *script)
{
    char path[4096], line[128];
    const char *src = getenv("NEXO_SOURCE_DIR");
    int fds[2];

    if (src) {
        snprintf(path, sizeof path, "%s/tests/tools/%s", src, script);
    } else {
        /* run by hand: find the tools next to this source file */
        const char *slash = strrchr(__FILE__, '/');
        int dirlen = slash ? (int)(slash - __FILE__) : 1;
        snprintf(path, sizeof path, "%.*s/../tools/%s", dirlen, slash ? __FILE__ : ".", script);
    }
    if (pipe(fds) != 0)
        return -1;
    p->pid = fork();
    if (p->pid < 0)
        return -1;
    if (p->pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        dup2(fds[1], 1);
        close(fds[0]);
        close(fds[1]);
        execl("/usr/bin/python3", "python3", "-B", path, (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    p->out_fd = fds[0];
    if (peer_read_line(p, line, sizeof line, 15000) != 0 || sscanf(line, "READY %d", &p->port) != 1)
        return -1;
    return 0;
}

static void peer_stop(struct peer *p)
{
    if (p->pid > 0) {
        kill(p->pid, SIGKILL);
        waitpid(p->pid, NULL, 0);
        p->pid = -1;
    }
    if (p->out_fd >= 0) {
        close(p->out_fd);
        p->out_fd = -1;
    }
}

static int group_setup(void **state)
{
    (void)state;
    signal(SIGPIPE, SIG_IGN);
    if (peer_start(&g_http, "http_peer.py") != 0)
        return -1;
    if (peer_start(&g_socks, "socks5_proxy.py") != 0)
        return -1;
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    peer_stop(&g_http);
    peer_stop(&g_socks);
    return 0;
}

/* ---- helpers --------------------------------------------------------------------------- */

struct result {
    int ndone;
    int rc;
    long status;
    struct nx_buf headers;
    struct nx_buf body;
    struct nx_buf err;
    char header_val[256];
    int header_len;
    const char *want_header;
};

static int g_in_request; /* on_done must never run inside nx_http_client_request */

static void result_cleanup(struct result *r)
{
    nx_buf_cleanup(&r->headers);
    nx_buf_cleanup(&r->body);
    nx_buf_cleanup(&r->err);
}

static void on_done(int rc, const struct nx_http_response *res, const char *err, void *udata)
{
    struct result *r = udata;

    assert_int_equal(g_in_request, 0);
    assert_non_null(res);
    r->ndone++;
    r->rc = rc;
    r->status = res->status;
    nx_buf_reset(&r->headers);
    nx_buf_append(&r->headers, res->headers, res->headers_len);
    nx_buf_reset(&r->body);
    nx_buf_append(&r->body, res->body, res->body_len);
    nx_buf_reset(&r->err);
    if (rc == 0)
        assert_null(err);
    else
        nx_buf_puts(&r->err, err ? err : "(null)");
    if (r->want_header)
        r->header_len = nx_http_response_header(res, r->want_header, r->header_val,
                                                sizeof r->header_val);
}

static struct nx_http_call *start(struct nx_http_client *c, struct nx_http_call_opts *o)
{
    struct nx_http_call *call;

    g_in_request = 1;
    call = nx_http_client_request(c, o);
    g_in_request = 0;
    return call;
}

static void url(char *out, size_t n, const char *path)
{
    snprintf(out, n, "http://127.0.0.1:%d%s", g_http.port, path);
}

static void guard_tick(uv_timer_t *t)
{
    (void)t;
}

/* Runs the loop until *count reaches want or timeout_ms passes. */
static void run_until(uv_loop_t *loop, const int *count, int want, uint64_t timeout_ms)
{
    uint64_t deadline = nx_mono_ms() + timeout_ms;
    uv_timer_t guard;

    uv_timer_init(loop, &guard);
    uv_timer_start(&guard, guard_tick, 10, 10);
    while ((!count || *count < want) && nx_mono_ms() < deadline)
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&guard, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
}

static void run_for(uv_loop_t *loop, uint64_t ms)
{
    run_until(loop, NULL, 0, ms);
}

/* Frees the client, lets the loop close its handles, and checks none is left. */
static void finish(uv_loop_t *loop, struct nx_http_client *c)
{
    nx_http_client_free(c);
    for (int i = 0; i < 100 && uv_run(loop, UV_RUN_NOWAIT); i++)
        ;
    assert_int_equal(uv_loop_close(loop), 0);
}

static struct nx_http_client *client_new(uv_loop_t *loop, const struct nx_http_client_opts *o)
{
    struct nx_http_client *c = NULL;

    assert_int_equal(uv_loop_init(loop), 0);
    assert_int_equal(nx_http_client_new(loop, o, &c), 0);
    assert_non_null(c);
    return c;
}

/* ---- tests ----------------------------------------------------------------------------- */

static void test_http_get_reads_status_headers_and_body(void **state)
{
    (void)state;
    uv_loop_t loop;
    struct nx_http_client *c = client_new(&loop, NULL);
    struct result r = {0};
    char u[128];
    struct nx_http_call_opts o = {0};

    url(u, sizeof u, "/json");
    o.url = u;
    o.on_done = on_done;
    o.udata = &r;
    r.want_header = "CONTENT-type";
    assert_non_null(start(c, &o));
    assert_int_equal(r.ndone, 0);
    assert_int_equal(nx_http_client_inflight(c), 1);
    run_until(&loop, &r.ndone, 1, 5000);
    assert_int_equal(r.ndone, 1);
    assert_int_equal(r.rc, 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body.data, "{\"ok\":true,\"n\":1}");
    assert_int_equal(r.header_len, (int)strlen("application/json"));
    assert_string_equal(r.header_val, "application/json");
    assert_true(strncmp(r.headers.data, "HTTP/1.1 200", 12) == 0);
    assert_int_equal(nx_http_client_inflight(c), 0);
    result_cleanup(&r);
    finish(&loop, c);
}

static void test_http_post_and_put_round_trip_through_echo(void **state)
{
    (void)state;
    uv_loop_t loop;
    struct nx_http_client *c = client_new(&loop, NULL);
    struct result r = {0};
    char u[128];
    static const char body[] = "{\"q\":\"h\\u00e9llo\"}\nsecond line";
    const struct nx_http_header hdrs[] = {
        {"X-Test", "abc def"}, {"Content-Type", "application/json"}, {"X-Empty", ""}};
    struct nx_http_call_opts o = {0};
    json_t *doc;

    url(u, sizeof u, "/echo?x=1");
    o.url = u;
    o.headers = hdrs;
    o.nheaders = NX_ARRAY_LEN(hdrs);
    o.body = body;
    o.body_len = sizeof body - 1;
    o.on_done = on_done;
    o.udata = &r;
    assert_non_null(start(c, &o));
    run_until(&loop, &r.ndone, 1, 5000);
    assert_int_equal(r.rc, 0);
    assert_int_equal(r.status, 200);
    doc = json_loads(r.body.data, 0, NULL);
    assert_non_null(doc);
    assert_string_equal(json_string_value(json_object_get(doc, "method")), "POST");
    assert_string_equal(json_string_value(json_object_get(doc, "path")), "/echo?x=1");
    assert_string_equal(json_string_value(json_object_get(doc, "body")), body);
    json_t *h = json_object_get(doc, "headers");
    assert_string_equal(json_string_value(json_object_get(h, "x-test")), "abc def");
    assert_string_equal(json_string_value(json_object_get(h, "x-empty")), "");
    assert_string_equal(json_string_value(json_object_get(h, "content-type")), "application/json");
    assert_string_equal(json_string_value(json_object_get(h, "user-agent")), "nexo/" NEXO_VERSION);
    assert_null(json_object_get(h, "expect"));
    json_decref(doc);

    /* another method with a body, and one without */
    o.method = "PUT";
    o.headers = NULL;
    o.nheaders = 0;
    assert_non_null(start(c, &o));
    run_until(&loop, &r.ndone, 2, 5000);
    assert_int_equal(r.rc, 0);
    doc = json_loads(r.body.data, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(doc, "method")), "PUT");
    assert_string_equal(json_string_value(json_object_get(doc, "body")), body);
    json_decref(doc);
    o.method = "DELETE";
    o.body = NULL;
    o.body_len = 0;
    assert_non_null(start(c, &o));
    run_until(&loop, &r.ndone, 3, 5000);
    assert_int_equal(r.rc, 0);
    doc = json_loads(r.body.data, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(doc, "method")), "DELETE");
    assert_string_equal(json_string_value(json_object_get(doc, "body")), "");
    json_decref(doc);
    result_cleanup(&r);
    finish(&loop, c);
}

static void test_http_status_503_is_a_response_not_an_error(void **state)
{
    (void)state;
    uv_loop_t loop;
    struct nx_http_client *c = client_new(&loop, NULL);
    struct result r = {0};
    char u[128];
    struct nx_http_call_opts o = {0};

    url(u, sizeof u, "/status/503");
    o.url = u;
    o.on_done = on_done;
    o.udata = &r;
    r.want_header = "retry-after";
    assert_non_null(start(c, &o));
    run_until(&loop, &r.ndone, 1, 5000);
    assert_int_equal(r.rc, 0);
    assert_int_equal(r.status, 503);
    assert_string_equal(r.header_val, "7");
    assert_string_equal(r.body.data, "status 503");
    result_cleanup(&r);
    finish(&loop, c);
}

/* Each call starts the next from its on_done: the peer reports the client port each time. */
struct chain {
    struct nx_http_client *c;
    struct nx_http_call_opts o;
    int n;
    int ok;
    long ports[8];
};

static void chain_done(int rc, const struct nx_http_response *res, const char *err, void *udata)
{
    struct chain *ch = udata;

    (void)err;
    if (rc == 0 && res->status == 200)
        ch->ok++;
    ch->ports[ch->n++] = strtol(res->body, NULL, 10);
    if (ch->n < (int)NX_ARRAY_LEN(ch->ports))
        assert_non_null(nx_http_client_request(ch->c, &ch->o));
}

static void test_http_keepalive_reuses_one_connection(void **state)
{
    (void)state;
    uv_loop_t loop;
    struct chain ch = {0};
    char u[128];

    ch.c = client_new(&loop, NULL);
    url(u, sizeof u, "/conn");
    ch.o.url = u;
    ch.o.on_done = chain_done;
    ch.o.udata = &ch;
    assert_non_null(start(ch.c, &ch.o));
    run_until(&loop, &ch.n, (int)NX_ARRAY_LEN(ch.ports), 10000);
    assert_int_equal(ch.ok, (int)NX_ARRAY_LEN(ch.ports));
    assert_true(ch.ports[0] > 0);
    for (size_t i = 1; i < NX_ARRAY_LEN(ch.ports); i++)
        assert_int_equal(ch.ports[i], ch.ports[0]);
    finish(&loop, ch.c);
}

static void count_tick(uv_timer_t *t)
{
    (*(int *)t->data)++;
}

static void test_http_deadline_fires_while_loop_keeps_running(void **state)
{
    (void)state;
    uv_loop_t loop;
    struct nx_http_client *c = client_new(&loop, NULL);
    struct result r = {0};
    char u[128];
    struct nx_http_call_opts o = {0};
    uv_timer_t ticker;
    int ticks = 0;

    url(u, sizeof u, "/slow?ms=4000");
    o.url = u;
    o.timeout_ms = 400;
    o.on_done = on_done;
    o.udata = &r;
    uv_timer_init(&loop, &ticker);
    ticker.data = &ticks;
    uv_timer_start(&ticker, count_tick, 20, 20);
    assert_non_null(start(c, &o));
    run_until(&loop, &r.ndone, 1, 5000);
    uv_close((uv_handle_t *)&ticker, NULL);
    assert_int_equal(r.ndone, 1);
    assert_int_equal(r.rc, NX_ETIMEDOUT);
    assert_int_equal(r.status, 0);
    assert_true(r.err.len > 0);
    /* the loop was never blocked: the 20 ms ticker ran many times during the 400 ms call */
    assert_true(ticks >= 8);
    result_cleanup(&r);
    finish(&loop, c);
}

static void test_http_size_cap_gives_etoobig(void **state)
{
    (void)state;
    uv_loop_t loop;
    struct nx_http_client_opts co = {0};
    struct nx_http_client *c;
    struct result r = {0};
    char u[128];
    struct nx_http_call_opts o = {0};

    co.max_response_bytes = 1000;
    c = client_new(&loop, &co);
    o.on_done = on_done;
    o.udata = &r;
    o.url = u;
    /* rejected on its Content-Length */
    url(u, sizeof u, "/big?bytes=100000");
    assert_non_null(start(c, &o));
    run_until(&loop, &r.ndone, 1, 5000);
    assert_int_equal(r.rc, NX_ETOOBIG);
    /* chunked: no Content-Length, stopped in the write callback */
    url(u, sizeof u, "/big?bytes=100000&chunked=1");
    assert_non_null(start(c, &o));
    run_until(&loop, &r.ndone, 2, 5000);
    assert_int_equal(r.rc, NX_ETOOBIG);
    assert_true(r.body.len <= 1000);
    /* exactly at the cap is fine, streamed or not */
    url(u, sizeof u, "/big?bytes=1000&chunked=1");
    assert_non_null(start(c, &o));
    run_until(&loop, &r.ndone, 3, 5000);
    assert_int_equal(r.rc, 0);
    assert_int_equal(r.body.len, 1000);
    /* a per-call cap overrides the client's */
    url(u, sizeof u, "/big?bytes=5000");
    o.max_response_bytes = 10000;
    assert_non_null(start(c, &o));
    run_until(&loop, &r.ndone, 4, 5000);
    assert_int_equal(r.rc, 0);
    assert_int_equal(r.body.len, 5000);
    result_cleanup(&r);
    finish(&loop, c);
}

/* Streaming: on_data feeds an SSE reader; events are logged as "event|data|id". */
struct streamer {
    struct nx_sse_reader sse;
    struct nx_buf log;
    struct nx_http_call *call;
    struct result r;
    int nchunks;
    int nevents;
    int sse_rc;
    long status;
    int cancel_at_event; /* cancel the call from inside the event callback */
    int abort_at_chunk;  /* return non-zero from on_data */
};

static int stream_event(const struct nx_sse_event *ev, void *udata)
{
    struct streamer *s = udata;

    nx_buf_printf(&s->log, "%s|%s|%s\n", ev->event, ev->data, ev->id);
    s->nevents++;
    if (s->cancel_at_event && s->nevents == s->cancel_at_event) {
        nx_http_call_cancel(s->call);
        assert_int_equal(s->r.ndone, 1); /* synchronous */
        assert_int_equal(s->r.rc, NX_ECANCELED);
        return 1; /* stop reading this chunk */
    }
    return 0;
}

static int stream_data(const char *data, size_t len, long status, void *udata)
{
    struct streamer *s = udata;

    assert_int_equal(s->r.ndone, 0); /* nothing after on_done */
    s->status = status;
    s->nchunks++;
    if (s->abort_at_chunk && s->nchunks == s->abort_at_chunk)
        return 1;
    if (s->sse_rc == 0)
        s->sse_rc = nx_sse_feed(&s->sse, data, len);
    return 0;
}

static void stream_done(int rc, const struct nx_http_response *res, const char *err, void *udata)
{
    struct streamer *s = udata;
    on_done(rc, res, err, &s->r);
}

static void streamer_start(struct streamer *s, struct nx_http_client *c, const char *path)
{
    char u[128];
    struct nx_http_call_opts o = {0};

    nx_sse_reader_init(&s->sse, 0, stream_event, s);
    url(u, sizeof u, path);
    o.url = u;
    o.headers = &(struct nx_http_header){"Accept", "text/event-stream"};
    o.nheaders = 1;
    o.on_data = stream_data;
    o.on_done = stream_done;
    o.udata = s;
    s->call = start(c, &o);
    assert_non_null(s->call);
}

static void streamer_cleanup(struct streamer *s)
{
    nx_sse_reader_cleanup(&s->sse);
    nx_buf_cleanup(&s->log);
    result_cleanup(&s->r);
}

static void test_http_streams_sse_events_in_order(void **state)
{
    (void)state;
    uv_loop_t loop;
    struct nx_http_client *c = client_new(&loop, NULL);
    struct streamer s = {0};

    streamer_start(&s, c, "/stream");
    run_until(&loop, &s.r.ndone, 1, 10000);
    assert_int_equal(s.r.ndone, 1);
    assert_int_equal(s.r.rc, 0);
    assert_int_equal(s.r.status, 200);
    assert_int_equal(s.status, 200);
    assert_int_equal(s.r.body.len, 0); /* streamed, not buffered */
    assert_int_equal(s.sse_rc, 0);
    assert_true(s.nchunks > 4); /* the peer's pieces really arrived apart */
    assert_string_equal(nx_buf_cstr(&s.log), "greeting|hello|\n"
                                             "message|line1\n line2|1\n"
                                             "message|{\"a\":1}|1\n"
                                             "end||1\n");
    assert_int_equal(s.sse.retry_ms, 1500);
    streamer_cleanup(&s);
    finish(&loop, c);
}

static void test_http_cancel_mid_stream_stops_all_callbacks(void **state)
{
    (void)state;
    uv_loop_t loop;
    struct nx_http_client *c = client_new(&loop, NULL);
    struct streamer s = {0};
    int chunks;

    s.cancel_at_event = 2;
    streamer_start(&s, c, "/stream?n=40&ms=20");
    run_until(&loop, &s.r.ndone, 1, 10000);
    assert_int_equal(s.r.ndone, 1);
    assert_int_equal(s.r.rc, NX_ECANCELED);
    assert_int_equal(nx_http_client_inflight(c), 0);
    chunks = s.nchunks;
    run_for(&loop, 300); /* the peer goes on sending; nothing may reach us */
    assert_int_equal(s.r.ndone, 1);
    assert_int_equal(s.nchunks, chunks);
    assert_int_equal(s.nevents, 2);
    streamer_cleanup(&s);
    finish(&loop, c);
}

static void test_http_on_data_nonzero_aborts_with_ecanceled(void **state)
{
    (void)state;
    uv_loop_t loop;
    struct nx_http_client *c = client_new(&loop, NULL);
    struct streamer s = {0};

    s.abort_at_chunk = 2;
    streamer_start(&s, c, "/stream?n=40&ms=20");
    run_until(&loop, &s.r.ndone, 1, 10000);
    assert_int_equal(s.r.rc, NX_ECANCELED);
    run_for(&loop, 200);
    assert_int_equal(s.r.ndone, 1);
    assert_int_equal(s.nchunks, 2);
    streamer_cleanup(&s);
    finish(&loop, c);
}

struct canceller {
    struct nx_http_call *call;
    struct result *r;
};

static void cancel_tick(uv_timer_t *t)
{
    struct canceller *k = t->data;
    nx_http_call_cancel(k->call);
    assert_int_equal(k->r->ndone, 1);
    assert_int_equal(k->r->rc, NX_ECANCELED);
    nx_http_call_cancel(NULL);
}

static void test_http_cancel_from_timer_completes_synchronously(void **state)
{
    (void)state;
    uv_loop_t loop;
    struct nx_http_client *c = client_new(&loop, NULL);
    struct result r = {0};
    char u[128];
    struct nx_http_call_opts o = {0};
    struct canceller k = {NULL, &r};
    uv_timer_t t;

    url(u, sizeof u, "/slow?ms=3000");
    o.url = u;
    o.on_done = on_done;
    o.udata = &r;
    k.call = start(c, &o);
    uv_timer_init(&loop, &t);
    t.data = &k;
    uv_timer_start(&t, cancel_tick, 100, 0);
    run_until(&loop, &r.ndone, 1, 5000);
    uv_close((uv_handle_t *)&t, NULL);
    run_for(&loop, 100);
    assert_int_equal(r.ndone, 1);
    assert_int_equal(r.rc, NX_ECANCELED);
    result_cleanup(&r);
    finish(&loop, c);
}

static void test_http_parallel_calls_all_complete(void **state)
{
    (void)state;
    uv_loop_t loop;
    struct nx_http_client *c = client_new(&loop, NULL);
    struct result r[10];
    char u[128];
    struct nx_http_call_opts o = {0};
    int done = 0;
    uv_timer_t ticker;
    int ticks = 0;

    memset(r, 0, sizeof r);
    for (size_t i = 0; i < NX_ARRAY_LEN(r); i++) {
        url(u, sizeof u, i % 3 == 0 ? "/json" : i % 3 == 1 ? "/slow?ms=300" : "/big?bytes=70000");
        o.url = u;
        o.on_done = on_done;
        o.udata = &r[i];
        assert_non_null(start(c, &o));
    }
    assert_int_equal(nx_http_client_inflight(c), NX_ARRAY_LEN(r));
    uv_timer_init(&loop, &ticker);
    ticker.data = &ticks;
    uv_timer_start(&ticker, count_tick, 1, 1);
    for (uint64_t deadline = nx_mono_ms() + 10000; nx_mono_ms() < deadline;) {
        done = 0;
        for (size_t i = 0; i < NX_ARRAY_LEN(r); i++)
            done += r[i].ndone;
        if (done == (int)NX_ARRAY_LEN(r))
            break;
        uv_run(&loop, UV_RUN_ONCE);
    }
    uv_close((uv_handle_t *)&ticker, NULL);
    assert_int_equal(done, (int)NX_ARRAY_LEN(r));
    for (size_t i = 0; i < NX_ARRAY_LEN(r); i++) {
        assert_int_equal(r[i].ndone, 1);
        assert_int_equal(r[i].rc, 0);
        assert_int_equal(r[i].status, 200);
        if (i % 3 == 2)
            assert_int_equal(r[i].body.len, 70000);
        result_cleanup(&r[i]);
    }
    assert_int_equal(nx_http_client_inflight(c), 0);
    finish(&loop, c);
}

static void test_http_connection_refused_is_ehttp_with_message(void **state)
{
    (void)state;
    uv_loop_t loop;
    struct nx_http_client *c = client_new(&loop, NULL);
    struct result r = {0};
    char u[128];
    struct nx_http_call_opts o = {0};
    struct sockaddr_in sa = {0};
    socklen_t slen = sizeof sa;
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    /* a port that was just free: bind, read it back, close */
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &slen), 0);
    close(fd);
    snprintf(u, sizeof u, "http://127.0.0.1:%d/json", ntohs(sa.sin_port));
    o.url = u;
    o.on_done = on_done;
    o.udata = &r;
    assert_non_null(start(c, &o));
    run_until(&loop, &r.ndone, 1, 5000);
    assert_int_equal(r.rc, NX_EHTTP);
    assert_int_equal(r.status, 0);
    assert_non_null(strstr(r.err.data, "onnect"));
    result_cleanup(&r);
    finish(&loop, c);
}

static void test_http_bad_request_fails_on_a_later_iteration(void **state)
{
    (void)state;
    uv_loop_t loop;
    struct nx_http_client *c = client_new(&loop, NULL);
    struct result r = {0};
    char u[128];
    struct nx_http_call_opts o = {0};
    const struct nx_http_header evil = {"X-A", "b\r\nX-Injected: 1"};

    url(u, sizeof u, "/json");
    o.url = u;
    o.on_done = on_done;
    o.udata = &r;
    o.headers = &evil;
    o.nheaders = 1;
    assert_non_null(start(c, &o));
    assert_int_equal(r.ndone, 0);
    run_until(&loop, &r.ndone, 1, 5000);
    assert_int_equal(r.rc, NX_EINVAL);
    o.headers = NULL;
    o.nheaders = 0;
    o.proxy = "ftp://127.0.0.1:1";
    assert_non_null(start(c, &o));
    assert_int_equal(r.ndone, 1);
    run_until(&loop, &r.ndone, 2, 5000);
    assert_int_equal(r.rc, NX_EINVAL);
    o.proxy = NULL;
    o.url = "not a url";
    assert_non_null(start(c, &o));
    run_until(&loop, &r.ndone, 3, 5000);
    assert_int_equal(r.rc, NX_EHTTP);
    o.on_done = NULL;
    assert_null(nx_http_client_request(c, &o));
    result_cleanup(&r);
    finish(&loop, c);
}

/* Reads the proxy's next RELAY line and checks its target. */
static void expect_relay(const char *host, int port)
{
    char line[256], want[160];
    int n;

    assert_int_equal(peer_read_line(&g_socks, line, sizeof line, 5000), 0);
    snprintf(want, sizeof want, "%s:%d", host, port);
    assert_int_equal(sscanf(line, "RELAY %d", &n), 1);
    assert_non_null(strstr(line, want));
}

static void test_http_socks5_proxy_relays_the_request(void **state)
{
    (void)state;
    uv_loop_t loop;
    struct nx_http_client_opts co = {0};
    struct nx_http_client *c;
    struct result r = {0};
    char u[128], proxy[64];
    struct nx_http_call_opts o = {0};

    snprintf(proxy, sizeof proxy, "socks5://127.0.0.1:%d", g_socks.port);
    co.proxy = proxy;
    c = client_new(&loop, &co);
    url(u, sizeof u, "/json");
    o.url = u;
    o.on_done = on_done;
    o.udata = &r;
    assert_non_null(start(c, &o));
    run_until(&loop, &r.ndone, 1, 5000);
    assert_int_equal(r.rc, 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body.data, "{\"ok\":true,\"n\":1}");
    expect_relay("127.0.0.1", g_http.port);

    /* socks5h: the proxy resolves the name */
    snprintf(proxy, sizeof proxy, "socks5h://127.0.0.1:%d", g_socks.port);
    snprintf(u, sizeof u, "http://localhost:%d/json", g_http.port);
    o.proxy = proxy;
    assert_non_null(start(c, &o));
    run_until(&loop, &r.ndone, 2, 5000);
    assert_int_equal(r.rc, 0);
    assert_int_equal(r.status, 200);
    expect_relay("localhost", g_http.port);
    result_cleanup(&r);
    finish(&loop, c);
}

static void test_http_http_proxy_and_per_call_override(void **state)
{
    (void)state;
    uv_loop_t loop;
    struct nx_http_client_opts co = {0};
    struct nx_http_client *c;
    struct result r = {0};
    char u[128], proxy[64];
    struct nx_http_call_opts o = {0};

    snprintf(proxy, sizeof proxy, "http://127.0.0.1:%d", g_http.port);
    co.proxy = proxy;
    c = client_new(&loop, &co);
    url(u, sizeof u, "/json");
    o.url = u;
    o.on_done = on_done;
    o.udata = &r;
    r.want_header = "X-Via-Proxy";
    assert_non_null(start(c, &o));
    run_until(&loop, &r.ndone, 1, 5000);
    assert_int_equal(r.rc, 0);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.header_len, 1);
    /* "" turns the client's proxy off for one call */
    o.proxy = "";
    assert_non_null(start(c, &o));
    run_until(&loop, &r.ndone, 2, 5000);
    assert_int_equal(r.rc, 0);
    assert_int_equal(r.header_len, -1);
    result_cleanup(&r);
    finish(&loop, c);
}

static void test_http_redirects_only_when_asked(void **state)
{
    (void)state;
    uv_loop_t loop;
    struct nx_http_client *c = client_new(&loop, NULL);
    struct result r = {0};
    char u[128];
    struct nx_http_call_opts o = {0};

    url(u, sizeof u, "/redirect?to=/json");
    o.url = u;
    o.on_done = on_done;
    o.udata = &r;
    r.want_header = "location";
    assert_non_null(start(c, &o));
    run_until(&loop, &r.ndone, 1, 5000);
    assert_int_equal(r.rc, 0);
    assert_int_equal(r.status, 302);
    assert_string_equal(r.header_val, "/json");
    o.follow_redirects = 3;
    assert_non_null(start(c, &o));
    run_until(&loop, &r.ndone, 2, 5000);
    assert_int_equal(r.rc, 0);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.header_len, -1); /* only the final response's block is kept */
    assert_true(strncmp(r.headers.data, "HTTP/1.1 200", 12) == 0);
    assert_null(strstr(r.headers.data, "302"));
    assert_string_equal(r.body.data, "{\"ok\":true,\"n\":1}");
    result_cleanup(&r);
    finish(&loop, c);
}

static void test_http_100_continue_keeps_only_final_header_block(void **state)
{
    (void)state;
    uv_loop_t loop;
    struct nx_http_client *c = client_new(&loop, NULL);
    struct result r = {0};
    char u[128];
    struct nx_http_call_opts o = {0};
    const struct nx_http_header h = {"Expect", "100-continue"};

    url(u, sizeof u, "/echo");
    o.url = u;
    o.headers = &h;
    o.nheaders = 1;
    o.body = "payload";
    o.body_len = 7;
    o.on_done = on_done;
    o.udata = &r;
    assert_non_null(start(c, &o));
    run_until(&loop, &r.ndone, 1, 5000);
    assert_int_equal(r.rc, 0);
    assert_int_equal(r.status, 200);
    assert_true(strncmp(r.headers.data, "HTTP/1.1 200", 12) == 0);
    assert_null(strstr(r.headers.data, "100 Continue"));
    assert_non_null(strstr(r.body.data, "\"body\": \"payload\""));
    result_cleanup(&r);
    finish(&loop, c);
}

static void test_http_free_with_calls_in_flight_cancels_each_once(void **state)
{
    (void)state;
    uv_loop_t loop;
    struct nx_http_client *c = client_new(&loop, NULL);
    struct result r[4];
    struct streamer s = {0};
    char u[128];
    struct nx_http_call_opts o = {0};

    memset(r, 0, sizeof r);
    for (size_t i = 0; i < NX_ARRAY_LEN(r); i++) {
        url(u, sizeof u, "/slow?ms=3000");
        o.url = u;
        o.on_done = on_done;
        o.udata = &r[i];
        assert_non_null(start(c, &o));
    }
    streamer_start(&s, c, "/stream?n=100&ms=10");
    run_until(&loop, &s.nevents, 2, 5000); /* the stream is flowing; the slow calls wait */
    assert_true(s.nevents >= 2);
    assert_int_equal(nx_http_client_inflight(c), NX_ARRAY_LEN(r) + 1);
    nx_http_client_free(c);
    for (size_t i = 0; i < NX_ARRAY_LEN(r); i++) {
        assert_int_equal(r[i].ndone, 1);
        assert_int_equal(r[i].rc, NX_ECANCELED);
        result_cleanup(&r[i]);
    }
    assert_int_equal(s.r.ndone, 1);
    assert_int_equal(s.r.rc, NX_ECANCELED);
    /* no handle is left: the loop ends by itself and closes */
    for (int i = 0; i < 100 && uv_run(&loop, UV_RUN_NOWAIT); i++)
        ;
    assert_int_equal(uv_loop_close(&loop), 0);
    streamer_cleanup(&s);
}

/* Frees the client from inside on_done, with another call still in flight. */
struct freer {
    struct nx_http_client *c;
    struct result first, second;
};

static void free_in_done(int rc, const struct nx_http_response *res, const char *err, void *udata)
{
    struct freer *f = udata;

    on_done(rc, res, err, &f->first);
    nx_http_client_free(f->c);
    assert_int_equal(f->second.ndone, 1);
    assert_int_equal(f->second.rc, NX_ECANCELED);
    nx_http_client_free(f->c); /* a second free while the first is under way is harmless */
}

static void test_http_free_from_inside_on_done(void **state)
{
    (void)state;
    uv_loop_t loop;
    struct freer f;
    char u[128];
    struct nx_http_call_opts o = {0};

    memset(&f, 0, sizeof f);
    f.c = client_new(&loop, NULL);
    url(u, sizeof u, "/slow?ms=3000");
    o.url = u;
    o.on_done = on_done;
    o.udata = &f.second;
    assert_non_null(start(f.c, &o));
    url(u, sizeof u, "/json");
    o.on_done = free_in_done;
    o.udata = &f;
    assert_non_null(start(f.c, &o));
    run_until(&loop, &f.first.ndone, 1, 5000);
    assert_int_equal(f.first.rc, 0);
    for (int i = 0; i < 100 && uv_run(&loop, UV_RUN_NOWAIT); i++)
        ;
    assert_int_equal(uv_loop_close(&loop), 0);
    assert_int_equal(f.second.ndone, 1);
    result_cleanup(&f.first);
    result_cleanup(&f.second);
}

static void test_http_response_header_lookup(void **state)
{
    (void)state;
    static const char raw[] = "HTTP/1.1 200 OK\r\nContent-Type:  text/plain ; x \r\nX-A:1\r\n"
                              "X-Long: 0123456789\r\nX-Empty:\r\n\r\n";
    struct nx_http_response res = {200, raw, sizeof raw - 1, "", 0};
    char out[8];

    assert_int_equal(nx_http_response_header(&res, "content-type", out, sizeof out), 14);
    assert_string_equal(out, "text/pl"); /* truncated, NUL-terminated */
    assert_int_equal(nx_http_response_header(&res, "x-a", out, sizeof out), 1);
    assert_string_equal(out, "1");
    assert_int_equal(nx_http_response_header(&res, "X-Empty", out, sizeof out), 0);
    assert_string_equal(out, "");
    assert_int_equal(nx_http_response_header(&res, "X-Long", NULL, 0), 10);
    assert_int_equal(nx_http_response_header(&res, "X", out, sizeof out), -1);
    assert_int_equal(nx_http_response_header(&res, "HTTP/1.1 200 OK", out, sizeof out), -1);
    assert_int_equal(nx_http_response_header(&res, "Missing", out, sizeof out), -1);
}

static void test_http_client_new_rejects_unknown_proxy_scheme(void **state)
{
    (void)state;
    uv_loop_t loop;
    struct nx_http_client_opts co = {0};
    struct nx_http_client *c = NULL;

    assert_int_equal(uv_loop_init(&loop), 0);
    co.proxy = "socks4://127.0.0.1:1";
    assert_int_equal(nx_http_client_new(&loop, &co, &c), NX_EINVAL);
    assert_null(c);
    nx_http_client_free(NULL);
    assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_http_get_reads_status_headers_and_body),
        cmocka_unit_test(test_http_post_and_put_round_trip_through_echo),
        cmocka_unit_test(test_http_status_503_is_a_response_not_an_error),
        cmocka_unit_test(test_http_keepalive_reuses_one_connection),
        cmocka_unit_test(test_http_deadline_fires_while_loop_keeps_running),
        cmocka_unit_test(test_http_size_cap_gives_etoobig),
        cmocka_unit_test(test_http_streams_sse_events_in_order),
        cmocka_unit_test(test_http_cancel_mid_stream_stops_all_callbacks),
        cmocka_unit_test(test_http_on_data_nonzero_aborts_with_ecanceled),
        cmocka_unit_test(test_http_cancel_from_timer_completes_synchronously),
        cmocka_unit_test(test_http_parallel_calls_all_complete),
        cmocka_unit_test(test_http_connection_refused_is_ehttp_with_message),
        cmocka_unit_test(test_http_bad_request_fails_on_a_later_iteration),
        cmocka_unit_test(test_http_socks5_proxy_relays_the_request),
        cmocka_unit_test(test_http_http_proxy_and_per_call_override),
        cmocka_unit_test(test_http_redirects_only_when_asked),
        cmocka_unit_test(test_http_100_continue_keeps_only_final_header_block),
        cmocka_unit_test(test_http_free_with_calls_in_flight_cancels_each_once),
        cmocka_unit_test(test_http_free_from_inside_on_done),
        cmocka_unit_test(test_http_response_header_lookup),
        cmocka_unit_test(test_http_client_new_rejects_unknown_proxy_scheme),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
