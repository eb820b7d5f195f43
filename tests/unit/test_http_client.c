#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "http_client_fixture.h"

/* The client against real local peers, whole responses: methods, bodies and headers, status
 * codes, keep-alive, the deadline, the size cap, bad requests, SOCKS5 and HTTP proxies,
 * redirects, 100-continue and the header lookup. Streaming, cancel, parallel calls and freeing
 * with calls in flight are in test_http_client_stream.c. */

static struct ts_child g_socks = TS_CHILD_INIT;

static int group_setup(void **state)
{
    (void)state;
    if (ts_spawn_py(&g_http, "tools/http_peer.py") != 0)
        return -1;
    if (ts_spawn_py(&g_socks, "tools/socks5_proxy.py") != 0)
        return -1;
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    ts_kill(&g_http);
    ts_kill(&g_socks);
    return 0;
}

/* The peer's /echo answer: the request it saw, as JSON (caller decrefs). */
static json_t *echo_doc(const struct result *r)
{
    json_t *doc = json_loads(r->body.data, 0, NULL);

    assert_non_null(doc);
    return doc;
}

static const char *jstr(const json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

/* ---- tests ----------------------------------------------------------------------------- */

static void test_http_get_reads_status_headers_and_body(void **state)
{
    struct hc h;

    (void)state;
    hc_open(&h, NULL);
    hc_path(&h, "/json");
    h.r.want_header = "CONTENT-type";
    assert_non_null(start(h.c, &h.o));
    assert_int_equal(h.r.ndone, 0);
    assert_int_equal(nx_http_client_inflight(h.c), 1);
    run_until(&h.loop, &h.r.ndone, 1, 5000);
    assert_int_equal(h.r.ndone, 1);
    assert_int_equal(h.r.rc, 0);
    assert_int_equal(h.r.status, 200);
    assert_string_equal(h.r.body.data, "{\"ok\":true,\"n\":1}");
    assert_int_equal(h.r.header_len, (int)strlen("application/json"));
    assert_string_equal(h.r.header_val, "application/json");
    assert_true(strncmp(h.r.headers.data, "HTTP/1.1 200", 12) == 0);
    assert_int_equal(nx_http_client_inflight(h.c), 0);
    hc_close(&h);
}

static void test_http_post_and_put_round_trip_through_echo(void **state)
{
    static const char body[] = "{\"q\":\"h\\u00e9llo\"}\nsecond line";
    const struct nx_http_header hdrs[] = {
        {"X-Test", "abc def"}, {"Content-Type", "application/json"}, {"X-Empty", ""}};
    /* POST with headers (the default method with a body), another method with a body, one without */
    static const struct {
        const char *method;
        bool with_headers;
        bool with_body;
        const char *want_method;
    } steps[] = {{NULL, true, true, "POST"}, {"PUT", false, true, "PUT"}, {"DELETE", false, false, "DELETE"}};
    struct hc h;

    (void)state;
    hc_open(&h, NULL);
    hc_path(&h, "/echo?x=1");
    for (size_t i = 0; i < NX_ARRAY_LEN(steps); i++) {
        json_t *doc, *hd;

        h.o.method = steps[i].method;
        h.o.headers = steps[i].with_headers ? hdrs : NULL;
        h.o.nheaders = steps[i].with_headers ? NX_ARRAY_LEN(hdrs) : 0;
        h.o.body = steps[i].with_body ? body : NULL;
        h.o.body_len = steps[i].with_body ? sizeof body - 1 : 0;
        hc_call(&h);
        assert_int_equal(h.r.rc, 0);
        assert_int_equal(h.r.status, 200);
        doc = echo_doc(&h.r);
        assert_string_equal(jstr(doc, "method"), steps[i].want_method);
        assert_string_equal(jstr(doc, "body"), steps[i].with_body ? body : "");
        if (steps[i].with_headers) {
            assert_string_equal(jstr(doc, "path"), "/echo?x=1");
            hd = json_object_get(doc, "headers");
            assert_string_equal(jstr(hd, "x-test"), "abc def");
            assert_string_equal(jstr(hd, "x-empty"), "");
            assert_string_equal(jstr(hd, "content-type"), "application/json");
            assert_string_equal(jstr(hd, "user-agent"), "nexo/" NEXO_VERSION);
            assert_null(json_object_get(hd, "expect"));
        }
        json_decref(doc);
    }
    hc_close(&h);
}

static void test_http_status_503_is_a_response_not_an_error(void **state)
{
    struct hc h;

    (void)state;
    hc_open(&h, NULL);
    h.r.want_header = "retry-after";
    hc_get(&h, "/status/503");
    assert_int_equal(h.r.rc, 0);
    assert_int_equal(h.r.status, 503);
    assert_string_equal(h.r.header_val, "7");
    assert_string_equal(h.r.body.data, "status 503");
    hc_close(&h);
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

/* The pool outlives quiet moments after ordinary traffic, but not a burst of more calls at once
 * than it keeps: then trim closes it (never while a call runs) and the next call connects anew. */
static void test_http_trim_closes_the_pool_after_a_burst_only(void **state)
{
    struct nx_http_client_opts co = {.max_host_connections = 1}; /* the pool keeps 2 */
    struct result burst[3] = {0};
    struct hc h;
    int ndone = 0;
    long port;

    (void)state;
    hc_open(&h, &co);
    hc_get(&h, "/conn");
    port = strtol(h.r.body.data, NULL, 10);
    assert_int_equal(nx_http_client_trim(h.c), 0);
    hc_call(&h);
    assert_int_equal(strtol(h.r.body.data, NULL, 10), port); /* still pooled */

    for (size_t i = 0; i < NX_ARRAY_LEN(burst); i++) {
        h.o.udata = &burst[i];
        assert_non_null(start(h.c, &h.o));
    }
    assert_int_equal(nx_http_client_trim(h.c), 0); /* calls in flight */
    for (size_t i = 0; i < NX_ARRAY_LEN(burst); i++) {
        run_until(&h.loop, &burst[i].ndone, 1, 5000);
        assert_int_equal(burst[i].rc, 0);
        ndone += burst[i].ndone;
        result_cleanup(&burst[i]);
    }
    assert_int_equal(ndone, 3);
    assert_int_equal(nx_http_client_trim(h.c), 1);
    assert_int_equal(nx_http_client_trim(h.c), 0); /* nothing left to close */
    h.o.udata = &h.r;
    hc_call(&h);
    assert_int_equal(h.r.rc, 0);
    assert_int_equal(h.r.status, 200);
    assert_int_not_equal(strtol(h.r.body.data, NULL, 10), port); /* a new connection */
    hc_close(&h);
}

static void test_http_deadline_fires_while_loop_keeps_running(void **state)
{
    struct hc h;
    uv_timer_t ticker;
    int ticks = 0;

    (void)state;
    hc_open(&h, NULL);
    hc_path(&h, "/slow?ms=4000");
    h.o.timeout_ms = 400;
    uv_timer_init(&h.loop, &ticker);
    ticker.data = &ticks;
    uv_timer_start(&ticker, count_tick, 20, 20);
    hc_call(&h);
    uv_close((uv_handle_t *)&ticker, NULL);
    assert_int_equal(h.r.rc, NX_ETIMEDOUT);
    assert_int_equal(h.r.status, 0);
    assert_true(h.r.err.len > 0);
    /* the loop was never blocked: the 20 ms ticker ran many times during the 400 ms call */
    assert_true(ticks >= 8);
    hc_close(&h);
}

static void test_http_size_cap_gives_etoobig(void **state)
{
    static const struct {
        const char *path;
        uint64_t call_cap; /* 0: the client's 1000 */
        int rc;
        long len;          /* the body's length; -1: not checked */
        bool at_most;      /* len is an upper bound */
    } steps[] = {
        {"/big?bytes=100000", 0, NX_ETOOBIG, -1, false},           /* rejected on its Content-Length */
        {"/big?bytes=100000&chunked=1", 0, NX_ETOOBIG, 1000, true}, /* no Content-Length: cut short */
        {"/big?bytes=1000&chunked=1", 0, 0, 1000, false},          /* exactly at the cap is fine */
        {"/big?bytes=5000", 10000, 0, 5000, false},                /* a per-call cap overrides */
    };
    struct nx_http_client_opts co = {0};
    struct hc h;

    (void)state;
    co.max_response_bytes = 1000;
    hc_open(&h, &co);
    for (size_t i = 0; i < NX_ARRAY_LEN(steps); i++) {
        h.o.max_response_bytes = steps[i].call_cap;
        hc_get(&h, steps[i].path);
        assert_int_equal(h.r.rc, steps[i].rc);
        if (steps[i].len >= 0 && steps[i].at_most)
            assert_true(h.r.body.len <= (size_t)steps[i].len);
        else if (steps[i].len >= 0)
            assert_int_equal(h.r.body.len, steps[i].len);
    }
    hc_close(&h);
}

static void test_http_connection_refused_is_ehttp_with_message(void **state)
{
    struct hc h;

    (void)state;
    hc_open(&h, NULL);
    snprintf(h.u, sizeof h.u, "http://127.0.0.1:%d/json", ts_free_port());
    hc_call(&h);
    assert_int_equal(h.r.rc, NX_EHTTP);
    assert_int_equal(h.r.status, 0);
    assert_non_null(strstr(h.r.err.data, "onnect"));
    hc_close(&h);
}

static void test_http_bad_request_fails_on_a_later_iteration(void **state)
{
    const struct nx_http_header evil = {"X-A", "b\r\nX-Injected: 1"};
    struct hc h;

    (void)state;
    hc_open(&h, NULL);
    hc_path(&h, "/json");
    h.o.headers = &evil;
    h.o.nheaders = 1;
    hc_call(&h); /* hc_call checks it did not fail inside the request */
    assert_int_equal(h.r.rc, NX_EINVAL);
    h.o.headers = NULL;
    h.o.nheaders = 0;
    h.o.proxy = "ftp://127.0.0.1:1";
    hc_call(&h);
    assert_int_equal(h.r.rc, NX_EINVAL);
    h.o.proxy = NULL;
    h.o.url = "not a url";
    hc_call(&h);
    assert_int_equal(h.r.rc, NX_EHTTP);
    h.o.on_done = NULL;
    assert_null(nx_http_client_request(h.c, &h.o));
    hc_close(&h);
}

/* Reads the proxy's next RELAY line and checks its target. */
static void expect_relay(const char *host, int port)
{
    char line[256], want[160];
    int n;

    assert_int_equal(ts_read_line(g_socks.out_fd, line, sizeof line, 5000), 0);
    snprintf(want, sizeof want, "%s:%d", host, port);
    assert_int_equal(sscanf(line, "RELAY %d", &n), 1);
    assert_non_null(strstr(line, want));
}

static void test_http_socks5_proxy_relays_the_request(void **state)
{
    struct nx_http_client_opts co = {0};
    struct hc h;
    char proxy[64];

    (void)state;
    snprintf(proxy, sizeof proxy, "socks5://127.0.0.1:%d", g_socks.port);
    co.proxy = proxy;
    hc_open(&h, &co);
    hc_get(&h, "/json");
    assert_int_equal(h.r.rc, 0);
    assert_int_equal(h.r.status, 200);
    assert_string_equal(h.r.body.data, "{\"ok\":true,\"n\":1}");
    expect_relay("127.0.0.1", g_http.port);

    /* socks5h: the proxy resolves the name */
    snprintf(proxy, sizeof proxy, "socks5h://127.0.0.1:%d", g_socks.port);
    ts_url(h.u, sizeof h.u, "localhost", g_http.port, "/json");
    h.o.proxy = proxy;
    hc_call(&h);
    assert_int_equal(h.r.rc, 0);
    assert_int_equal(h.r.status, 200);
    expect_relay("localhost", g_http.port);
    hc_close(&h);
}

static void test_http_http_proxy_and_per_call_override(void **state)
{
    struct nx_http_client_opts co = {0};
    struct hc h;
    char proxy[64];

    (void)state;
    ts_url(proxy, sizeof proxy, "127.0.0.1", g_http.port, "");
    co.proxy = proxy;
    hc_open(&h, &co);
    h.r.want_header = "X-Via-Proxy";
    hc_get(&h, "/json");
    assert_int_equal(h.r.rc, 0);
    assert_int_equal(h.r.status, 200);
    assert_int_equal(h.r.header_len, 1);
    /* "" turns the client's proxy off for one call */
    h.o.proxy = "";
    hc_call(&h);
    assert_int_equal(h.r.rc, 0);
    assert_int_equal(h.r.header_len, -1);
    hc_close(&h);
}

static void test_http_redirects_only_when_asked(void **state)
{
    struct hc h;

    (void)state;
    hc_open(&h, NULL);
    h.r.want_header = "location";
    hc_get(&h, "/redirect?to=/json");
    assert_int_equal(h.r.rc, 0);
    assert_int_equal(h.r.status, 302);
    assert_string_equal(h.r.header_val, "/json");
    h.o.follow_redirects = 3;
    hc_call(&h);
    assert_int_equal(h.r.rc, 0);
    assert_int_equal(h.r.status, 200);
    assert_int_equal(h.r.header_len, -1); /* only the final response's block is kept */
    assert_true(strncmp(h.r.headers.data, "HTTP/1.1 200", 12) == 0);
    assert_null(strstr(h.r.headers.data, "302"));
    assert_string_equal(h.r.body.data, "{\"ok\":true,\"n\":1}");
    hc_close(&h);
}

static void test_http_100_continue_keeps_only_final_header_block(void **state)
{
    const struct nx_http_header expect = {"Expect", "100-continue"};
    struct hc h;

    (void)state;
    hc_open(&h, NULL);
    h.o.headers = &expect;
    h.o.nheaders = 1;
    h.o.body = "payload";
    h.o.body_len = 7;
    hc_get(&h, "/echo");
    assert_int_equal(h.r.rc, 0);
    assert_int_equal(h.r.status, 200);
    assert_true(strncmp(h.r.headers.data, "HTTP/1.1 200", 12) == 0);
    assert_null(strstr(h.r.headers.data, "100 Continue"));
    assert_non_null(strstr(h.r.body.data, "\"body\": \"payload\""));
    hc_close(&h);
}

static void test_http_response_header_lookup(void **state)
{
    static const char raw[] = "HTTP/1.1 200 OK\r\nContent-Type:  text/plain ; x \r\nX-A:1\r\n"
                              "X-Long: 0123456789\r\nX-Empty:\r\n\r\n";
    static const struct {
        const char *name;
        bool no_buffer; /* ask for the length only */
        int len;
        const char *want; /* what lands in the 8-byte buffer; NULL: not checked */
    } cases[] = {
        {"content-type", false, 14, "text/pl"}, /* truncated, NUL-terminated */
        {"x-a", false, 1, "1"},
        {"X-Empty", false, 0, ""},
        {"X-Long", true, 10, NULL},
        {"X", false, -1, NULL},
        {"HTTP/1.1 200 OK", false, -1, NULL},
        {"Missing", false, -1, NULL},
    };
    struct nx_http_response res = {200, raw, sizeof raw - 1, "", 0};
    char out[8];

    (void)state;
    for (size_t i = 0; i < NX_ARRAY_LEN(cases); i++) {
        int n = cases[i].no_buffer ? nx_http_response_header(&res, cases[i].name, NULL, 0)
                                   : nx_http_response_header(&res, cases[i].name, out, sizeof out);

        if (n != cases[i].len)
            fail_msg("%s: %d, want %d", cases[i].name, n, cases[i].len);
        if (cases[i].want)
            assert_string_equal(out, cases[i].want);
    }
}

static int on_data_nothing(const char *d, size_t n, long status, void *u)
{
    (void)d, (void)n, (void)status, (void)u;
    return 0;
}

/* A call that waited for a connection (all max_host_connections busy) and was cancelled leaves
 * curl's receive buffer in its easy handle; the handle is not reused with it (curl would read
 * 16 KiB into the 1 KiB buffer of a stream: ASan). The next call gets its whole answer. */
static void test_http_a_cancelled_waiting_call_leaves_no_buffer_behind(void **state)
{
    struct nx_http_client_opts co = {.max_host_connections = 1};
    struct result ra = {0}, rb = {0}, rc = {0};
    struct nx_http_call_opts oa = {0}, ob = {0}, oc = {0};
    char ua[128], ub[128], uc[128];
    uv_loop_t loop;

    (void)state;
    struct nx_http_client *c = client_new(&loop, &co);
    url(ua, sizeof ua, "/slow?ms=800");
    url(ub, sizeof ub, "/stream");
    url(uc, sizeof uc, "/big?bytes=200000");
    oa = (struct nx_http_call_opts){.url = ua, .on_done = on_done, .udata = &ra};
    ob = (struct nx_http_call_opts){.url = ub, .on_done = on_done, .udata = &rb, .on_data = on_data_nothing,
                                    .idle_timeout_ms = 10000};
    oc = (struct nx_http_call_opts){.url = uc, .on_done = on_done, .udata = &rc};
    assert_non_null(start(c, &oa));
    run_for(&loop, 100);
    struct nx_http_call *b = start(c, &ob);
    run_for(&loop, 200); /* b waits for the only connection */
    nx_http_call_cancel(b);
    run_for(&loop, 20);
    assert_non_null(start(c, &oc)); /* (b's handle, were it reused) */
    run_until(&loop, &rc.ndone, 1, 5000);
    assert_int_equal(rc.rc, 0);
    assert_int_equal(rc.status, 200);
    assert_int_equal(rc.body.len, 200000);
    run_until(&loop, &ra.ndone, 1, 5000);
    assert_int_equal(rb.rc, NX_ECANCELED);
    result_cleanup(&ra);
    result_cleanup(&rb);
    result_cleanup(&rc);
    finish(&loop, c);
}

/* A keep-alive connection the server gave up on as the next request left: the call is sent again
 * on a fresh connection, once, and gets its answer (curl does the same). */
static void test_http_a_reused_connection_the_server_dropped_is_retried(void **state)
{
    struct hc h;
    long first;

    (void)state;
    hc_open(&h, NULL);
    hc_get(&h, "/drop_if_reused");
    assert_int_equal(h.r.rc, 0);
    first = strtol(h.r.body.data, NULL, 10);
    assert_true(first > 0);
    hc_get(&h, "/drop_if_reused"); /* on the pooled connection: dropped, then sent anew */
    assert_int_equal(h.r.rc, 0);
    assert_int_equal(h.r.status, 200);
    assert_true(strtol(h.r.body.data, NULL, 10) != first);
    /* several pooled connections, all dropped by the server: the retry takes a fresh one */
    {
        struct result rs[3] = {0};
        struct nx_http_call_opts os[3];
        char us[128];
        url(us, sizeof us, "/slow?ms=150");
        for (int i = 0; i < 3; i++) {
            os[i] = (struct nx_http_call_opts){.url = us, .on_done = on_done, .udata = &rs[i]};
            assert_non_null(start(h.c, &os[i]));
        }
        for (int i = 0; i < 3; i++) {
            run_until(&h.loop, &rs[i].ndone, 1, 5000);
            assert_int_equal(rs[i].rc, 0);
            result_cleanup(&rs[i]);
        }
    }
    hc_get(&h, "/drop_if_reused");
    assert_int_equal(h.r.rc, 0);
    assert_int_equal(h.r.status, 200);
    h.o.method = "POST"; /* a body goes again too */
    h.o.body = "payload";
    h.o.body_len = 7;
    hc_get(&h, "/drop_if_reused");
    assert_int_equal(h.r.rc, 0);
    assert_int_equal(h.r.status, 200);
    hc_close(&h);
}

/* The server answers before it has read the body (as with a 413): the body still being sent is
 * not let go under the write (ASan would see it), and the answer is the call's. */
static void test_http_an_answer_before_the_whole_body_was_sent(void **state)
{
    struct hc h;
    size_t n = 32u << 20; /* more than loopback sockets hold: the write is still going on */
    char *big = nx_malloc(n);

    (void)state;
    memset(big, 'b', n);
    hc_open(&h, NULL);
    h.o.body = big;
    h.o.body_len = n;
    hc_get(&h, "/early");
    assert_int_equal(h.r.rc, 0);
    assert_int_equal(h.r.status, 200);
    assert_string_equal(h.r.body.data, "early");
    h.o.body = NULL;
    h.o.body_len = 0;
    hc_get(&h, "/json"); /* and the client goes on */
    assert_int_equal(h.r.status, 200);
    free(big);
    hc_close(&h);
}

/* What the engine does not do goes to libcurl, not to an error: user info in the URL. */
static void test_http_user_info_in_the_url_is_sent_by_curl(void **state)
{
    struct hc h;
    char u[160];

    (void)state;
    hc_open(&h, NULL);
    snprintf(u, sizeof u, "http://user:secret@127.0.0.1:%d/echo", g_http.port);
    h.o.url = u;
    hc_call(&h);
    assert_int_equal(h.r.rc, 0);
    assert_int_equal(h.r.status, 200);
    assert_non_null(strstr(h.r.body.data, "\"authorization\": \"Basic dXNlcjpzZWNyZXQ=\""));
    hc_close(&h);
}

/* A name, not an address: looked up off the loop, and each of its addresses tried in turn
 * ("localhost" may give ::1 first, where the peer does not listen). */
static void test_http_a_name_is_looked_up_and_its_addresses_tried(void **state)
{
    struct hc h;

    (void)state;
    hc_open(&h, NULL);
    ts_url(h.u, sizeof h.u, "localhost", g_http.port, "/json");
    hc_call(&h);
    assert_int_equal(h.r.rc, 0);
    assert_int_equal(h.r.status, 200);
    assert_string_equal(h.r.body.data, "{\"ok\":true,\"n\":1}");
    hc_close(&h);
}

/* Beyond max_host_connections calls wait for a connection to come free; each gets its own
 * answer. */
static void test_http_calls_beyond_the_host_cap_wait_their_turn(void **state)
{
    struct nx_http_client_opts co = {.max_host_connections = 2};
    struct result r[6] = {0};
    struct nx_http_call_opts o[6];
    char u[6][128];
    uv_loop_t loop;
    int done = 0;

    (void)state;
    struct nx_http_client *c = client_new(&loop, &co);
    for (int i = 0; i < 6; i++) {
        url(u[i], sizeof u[i], i % 2 ? "/slow?ms=150" : "/conn");
        o[i] = (struct nx_http_call_opts){.url = u[i], .on_done = on_done, .udata = &r[i]};
        assert_non_null(start(c, &o[i]));
    }
    for (uint64_t deadline = nx_mono_ms() + 10000; done < 6 && nx_mono_ms() < deadline;) {
        run_for(&loop, 20);
        done = 0;
        for (int i = 0; i < 6; i++)
            done += r[i].ndone;
    }
    assert_int_equal(done, 6);
    for (int i = 0; i < 6; i++) {
        assert_int_equal(r[i].rc, 0);
        assert_int_equal(r[i].status, 200);
        if (i % 2)
            assert_string_equal(r[i].body.data, "slow done");
        result_cleanup(&r[i]);
    }
    finish(&loop, c);
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
        cmocka_unit_test(test_http_trim_closes_the_pool_after_a_burst_only),
        cmocka_unit_test(test_http_deadline_fires_while_loop_keeps_running),
        cmocka_unit_test(test_http_size_cap_gives_etoobig),
        cmocka_unit_test(test_http_connection_refused_is_ehttp_with_message),
        cmocka_unit_test(test_http_bad_request_fails_on_a_later_iteration),
        cmocka_unit_test(test_http_socks5_proxy_relays_the_request),
        cmocka_unit_test(test_http_http_proxy_and_per_call_override),
        cmocka_unit_test(test_http_redirects_only_when_asked),
        cmocka_unit_test(test_http_100_continue_keeps_only_final_header_block),
        cmocka_unit_test(test_http_response_header_lookup),
        cmocka_unit_test(test_http_client_new_rejects_unknown_proxy_scheme),
        cmocka_unit_test(test_http_a_cancelled_waiting_call_leaves_no_buffer_behind),
        cmocka_unit_test(test_http_a_reused_connection_the_server_dropped_is_retried),
        cmocka_unit_test(test_http_calls_beyond_the_host_cap_wait_their_turn),
        cmocka_unit_test(test_http_a_name_is_looked_up_and_its_addresses_tried),
        cmocka_unit_test(test_http_an_answer_before_the_whole_body_was_sent),
        cmocka_unit_test(test_http_user_info_in_the_url_is_sent_by_curl),
    };
    return run_on_both_engines(tests, sizeof tests / sizeof *tests, group_setup, group_teardown);
}
