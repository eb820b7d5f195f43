#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "http/sse.h"
#include "http_client_fixture.h"

/* The client against tests/tools/http_peer.py, calls that stream or end early: SSE events in
 * order through on_data, cancel mid-stream and from a timer, on_data aborting, many calls at
 * once, and freeing the client with calls in flight or from inside on_done. */

static int group_setup(void **state)
{
    (void)state;
    return ts_spawn_py(&g_http, "tools/http_peer.py");
}

static int group_teardown(void **state)
{
    (void)state;
    ts_kill(&g_http);
    return 0;
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
    size_t body_held_at_first_chunk;
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
    if (!s->nchunks++)
        s->body_held_at_first_chunk = nx_http_call_body_held(s->call);
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

/* A streamed call's request body (a long conversation) is not held for the whole answer: it goes
 * once sent, by the first chunk of the answer. */
static void test_http_stream_lets_its_sent_body_go(void **state)
{
    (void)state;
    uv_loop_t loop;
    struct nx_http_client *c = client_new(&loop, NULL);
    struct streamer s = {0};
    struct nx_http_call_opts o = {0};
    enum { BODY = 256 * 1024 };
    char *body = malloc(BODY);
    char u[128];

    assert_non_null(body);
    memset(body, 'b', BODY);
    nx_sse_reader_init(&s.sse, 0, stream_event, &s);
    url(u, sizeof u, "/stream?n=3&ms=20");
    o.url = u;
    o.body = body;
    o.body_len = BODY;
    o.on_data = stream_data;
    o.on_done = stream_done;
    o.udata = &s;
    s.call = start(c, &o);
    free(body); /* copied */
    assert_int_equal(nx_http_call_body_held(s.call), BODY);
    run_until(&loop, &s.r.ndone, 1, 10000);
    assert_int_equal(s.r.rc, 0);
    assert_int_equal(s.r.status, 200);
    assert_int_equal(s.nevents, 3);
    assert_int_equal(s.body_held_at_first_chunk, 0);
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
    struct hc h;
    struct canceller k = {NULL, NULL};
    uv_timer_t t;

    (void)state;
    hc_open(&h, NULL);
    hc_path(&h, "/slow?ms=3000");
    k.r = &h.r;
    k.call = start(h.c, &h.o);
    uv_timer_init(&h.loop, &t);
    t.data = &k;
    uv_timer_start(&t, cancel_tick, 100, 0);
    run_until(&h.loop, &h.r.ndone, 1, 5000);
    uv_close((uv_handle_t *)&t, NULL);
    run_for(&h.loop, 100);
    assert_int_equal(h.r.ndone, 1);
    assert_int_equal(h.r.rc, NX_ECANCELED);
    hc_close(&h);
}

struct all_done {
    const struct result *r;
    size_t n;
};

static bool all_done(void *arg)
{
    const struct all_done *w = arg;
    int done = 0;

    for (size_t i = 0; i < w->n; i++)
        done += w->r[i].ndone;
    return done == (int)w->n;
}

static void test_http_parallel_calls_all_complete(void **state)
{
    (void)state;
    uv_loop_t loop;
    struct nx_http_client *c = client_new(&loop, NULL);
    struct result r[10];
    char u[128];
    struct nx_http_call_opts o = {0};
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
    assert_true(ts_run_until(&loop, all_done, &(struct all_done){r, NX_ARRAY_LEN(r)}, 10000));
    uv_close((uv_handle_t *)&ticker, NULL);
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
    assert_int_equal(ts_loop_finish(&loop), 0);
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
    assert_int_equal(ts_loop_finish(&loop), 0);
    assert_int_equal(f.second.ndone, 1);
    result_cleanup(&f.first);
    result_cleanup(&f.second);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_http_streams_sse_events_in_order),
        cmocka_unit_test(test_http_cancel_mid_stream_stops_all_callbacks),
        cmocka_unit_test(test_http_on_data_nonzero_aborts_with_ecanceled),
        cmocka_unit_test(test_http_stream_lets_its_sent_body_go),
        cmocka_unit_test(test_http_cancel_from_timer_completes_synchronously),
        cmocka_unit_test(test_http_parallel_calls_all_complete),
        cmocka_unit_test(test_http_free_with_calls_in_flight_cancels_each_once),
        cmocka_unit_test(test_http_free_from_inside_on_done),
    };
    return run_on_both_engines(tests, sizeof tests / sizeof *tests, group_setup, group_teardown);
}
