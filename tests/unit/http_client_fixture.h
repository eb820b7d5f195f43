/* Shared by tests/unit/test_http_client.c and test_http_client_stream.c (included after
 * <cmocka.h>): the client against tests/tools/http_peer.py (scripted endpoints, also a forward
 * proxy for absolute-form requests), started once per program and killed in the group teardown
 * (and by PR_SET_PDEATHSIG if we crash); a call's result, and a loop + client + call fixture. */
#ifndef NX_TEST_HTTP_CLIENT_FIXTURE_H
#define NX_TEST_HTTP_CLIENT_FIXTURE_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/clock.h"
#include "core/error.h"
#include "http/client.h"
#include "test_support.h"

static struct ts_child g_http = TS_CHILD_INIT;

/* "http://127.0.0.1:<peer port><path>" */
static inline void url(char *out, size_t n, const char *path)
{
    ts_url(out, n, "127.0.0.1", g_http.port, path);
}

/* ---- one call's result ------------------------------------------------------------------- */

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

static inline void result_cleanup(struct result *r)
{
    nx_buf_cleanup(&r->headers);
    nx_buf_cleanup(&r->body);
    nx_buf_cleanup(&r->err);
}

static inline void on_done(int rc, const struct nx_http_response *res, const char *err, void *udata)
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

static inline struct nx_http_call *start(struct nx_http_client *c, struct nx_http_call_opts *o)
{
    struct nx_http_call *call;

    g_in_request = 1;
    call = nx_http_client_request(c, o);
    g_in_request = 0;
    return call;
}

/* ---- the loop ---------------------------------------------------------------------------- */

/* Runs the loop until *count reaches want or timeout_ms passes (count NULL: for timeout_ms). */
static inline void run_until(uv_loop_t *loop, const int *count, int want, uint64_t timeout_ms)
{
    ts_run_until_count(loop, count, want, timeout_ms);
}

static inline void run_for(uv_loop_t *loop, uint64_t ms)
{
    ts_run_for(loop, ms);
}

static inline void count_tick(uv_timer_t *t)
{
    (*(int *)t->data)++;
}

/* Frees the client, lets the loop close its handles, and checks none is left. */
static inline void finish(uv_loop_t *loop, struct nx_http_client *c)
{
    nx_http_client_free(c);
    assert_int_equal(ts_loop_finish(loop), 0);
}

/* Each program runs its tests twice: plain http:// calls by nexo's own HTTP/1.1 engine, then with
 * every call by libcurl (which real providers, over TLS, always use). */
static bool g_curl_only;

static inline int run_on_both_engines(const struct CMUnitTest *tests, size_t n, CMFixtureFunction setup,
                                      CMFixtureFunction teardown)
{
    return ts_run_twice(&g_curl_only, tests, n, setup, teardown);
}

static inline struct nx_http_client *client_new(uv_loop_t *loop, const struct nx_http_client_opts *o)
{
    struct nx_http_client *c = NULL;
    struct nx_http_client_opts co = {0};

    if (o)
        co = *o;
    co.is_curl_only = g_curl_only;
    assert_int_equal(uv_loop_init(loop), 0);
    assert_int_equal(nx_http_client_new(loop, &co, &c), 0);
    assert_non_null(c);
    return c;
}

/* ---- a loop, a client and one call's options, reused call after call ---------------------- */

struct hc {
    uv_loop_t loop;
    struct nx_http_client *c;
    struct nx_http_call_opts o; /* url = u, on_done = on_done, udata = &r */
    struct result r;
    char u[128];
};

static inline void hc_open(struct hc *h, const struct nx_http_client_opts *co)
{
    memset(h, 0, sizeof *h);
    h->c = client_new(&h->loop, co);
    h->o.url = h->u;
    h->o.on_done = on_done;
    h->o.udata = &h->r;
}

static inline void hc_path(struct hc *h, const char *path)
{
    url(h->u, sizeof h->u, path);
}

/* Starts h->o (it never completes inside the request) and runs the loop until it did (5 s). */
static inline void hc_call(struct hc *h)
{
    int want = h->r.ndone + 1;

    assert_non_null(start(h->c, &h->o));
    assert_int_equal(h->r.ndone, want - 1);
    run_until(&h->loop, &h->r.ndone, want, 5000);
    assert_int_equal(h->r.ndone, want);
}

static inline void hc_get(struct hc *h, const char *path)
{
    hc_path(h, path);
    hc_call(h);
}

static inline void hc_close(struct hc *h)
{
    result_cleanup(&h->r);
    finish(&h->loop, h->c);
}

#endif
