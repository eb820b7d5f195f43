/* Cases the Anthropic and OpenAI provider tests share (included by tests/unit/test_llm_*.c after
 * llm_fake.h): what a caller sees when a stream fails half-way, when it cancels from inside
 * on_text, and when the request deadline passes. Each opens a provider of `kind` (named after
 * it) against the fake, with the fake answering `script`. */
#ifndef NX_TEST_LLM_CASES_H
#define NX_TEST_LLM_CASES_H

#include "llm_fake.h"

/* An error event after some deltas: the call fails retryably with the stream's status (200) and
 * error_type, the deltas already delivered, and no message. */
static inline void check_error_mid_stream(const char *kind, const char *key, const char *model,
                                          const char *script, const char *error_type)
{
    struct one t;
    struct outcome o = {0};
    struct nx_llm_request req = {.model = model, .temperature = -1, .stream = true};

    one_open(&t, kind, kind, key, 0, script, "hi");
    req.messages = t.msgs;
    run_call(&t.e, t.p, &req, &o);
    assert_int_equal(o.rc, NX_EAGAIN);
    assert_int_equal(o.http_status, 200);
    assert_string_equal(o.error_type, error_type);
    assert_true(o.is_retryable);
    assert_true(o.ndeltas >= 1);
    assert_null(o.message);
    outcome_cleanup(&o);
    one_close(&t);
}

/* A slow stream cancelled from inside on_text after `after` deltas: on_done runs once, with
 * NX_ECANCELED, within max_ms (not after the whole answer), and never again. */
static inline void check_cancel_in_on_text(const char *kind, const char *key, const char *model,
                                           const char *script, int after, uint64_t max_ms)
{
    struct one t;
    struct outcome o = {0};
    struct nx_llm_request req = {.model = model, .temperature = -1, .stream = true};
    uint64_t t0;

    one_open(&t, kind, kind, key, 0, script, "hi");
    req.messages = t.msgs;
    o.cancel_after_deltas = after;
    t0 = nx_mono_ms();
    run_call(&t.e, t.p, &req, &o);
    assert_int_equal(o.rc, NX_ECANCELED);
    assert_int_equal(o.ndeltas, after);
    assert_true(o.done_ms - t0 < max_ms);
    run_until(&t.e.loop, NULL, 0, 300);
    assert_int_equal(o.ndone, 1);
    outcome_cleanup(&o);
    one_close(&t);
}

/* A stream that lasts longer than the provider's timeout_ms (1 s) but never goes quiet for
 * that long: timeout_ms is the longest silence a stream may have, not its length, so a long
 * answer is not cut (and retried) half-way. */
static inline void check_long_stream_is_not_cut(const char *kind, const char *key, const char *model)
{
    struct one t;
    struct outcome o = {0};
    struct nx_llm_request req = {.model = model, .temperature = -1, .stream = true};
    uint64_t t0;

    one_open(&t, kind, kind, key, 1000, "[{\"text\": \"one two three four five\", \"chunks\": 5, "
                                         "\"delay_ms\": 500}]", "hi");
    req.messages = t.msgs;
    t0 = nx_mono_ms();
    run_call(&t.e, t.p, &req, &o);
    assert_int_equal(o.rc, 0);
    assert_string_equal(nx_buf_cstr(&o.text), "one two three four five");
    assert_true(o.done_ms - t0 >= 2000); /* longer than timeout_ms, whole */
    outcome_cleanup(&o);
    one_close(&t);
}

/* A stream that sends its first words, then only keep-alives (Anthropic's ping events, SSE
 * comments) for 3 s, with a provider stall_timeout of 1 s (and timeout 2 s): keep-alives are
 * not progress, so the call fails as a timeout that says so, about a second after the words,
 * not once the model goes on. With the default stall_timeout (10 minutes) it is answered. */
static inline void check_stream_stalled_behind_keepalives(const char *kind, const char *key,
                                                          const char *model)
{
    struct one t;
    struct outcome o = {0};
    struct nx_llm_request req = {.model = model, .temperature = -1, .stream = true};
    uint64_t t0;

    for (int stall = 1; stall >= 0; stall--) {
        provider_stall_ms = stall ? 1000 : 0;
        one_open(&t, kind, kind, key, 2000,
                 "[{\"text\": \"first words\", \"chunks\": 2, \"delay_ms\": 1, \"stall_pings_ms\": 3000}]",
                 "hi");
        provider_stall_ms = 0;
        req.messages = t.msgs;
        t0 = nx_mono_ms();
        run_call(&t.e, t.p, &req, &o);
        if (stall) {
            assert_int_equal(o.rc, NX_ETIMEDOUT);
            assert_string_equal(o.error_type, "timeout");
            assert_non_null(strstr(o.error_message, "only keep-alives received for 1000 ms"));
            assert_string_equal(nx_buf_cstr(&o.text), "first ");
            assert_true(o.done_ms - t0 < 2000);
        } else {
            assert_int_equal(o.rc, 0);
            assert_string_equal(nx_buf_cstr(&o.text), "first words");
        }
        outcome_cleanup(&o);
        memset(&o, 0, sizeof o);
        one_close(&t);
    }
}

/* An upstream (or a proxy) that keeps the body open 3 s after the stream's last event, silent,
 * then sending keep-alive comments, with a provider timeout of 2 s: the answer is whole, so the
 * call succeeds about a second after it, not as a silence timeout at 2 s, nor does it wait the
 * 3 s. */
static inline void check_stream_ended_but_body_held_open(const char *kind, const char *key,
                                                         const char *model)
{
    struct one t;
    struct outcome o = {0};
    struct nx_llm_request req = {.model = model, .temperature = -1, .stream = true};
    uint64_t t0;

    for (int pings = 0; pings < 2; pings++) {
        one_open(&t, kind, kind, key, 2000,
                 pings ? "[{\"text\": \"all of it\", \"hold_open_ms\": 3000, \"hold_pings\": true}]"
                       : "[{\"text\": \"all of it\", \"hold_open_ms\": 3000}]", "hi");
        req.messages = t.msgs;
        t0 = nx_mono_ms();
        run_call(&t.e, t.p, &req, &o);
        assert_int_equal(o.rc, 0);
        assert_string_equal(message_text(o.message), "all of it");
        assert_true(o.done_ms - t0 < 2000);
        outcome_cleanup(&o);
        memset(&o, 0, sizeof o);
        one_close(&t);
    }
}

/* The stream's last event came, then the connection broke before the body's last chunk: the
 * answer is whole, and is answered (a tool call too: not asked for again). */
static inline void check_stream_ended_then_cut(const char *kind, const char *key, const char *model)
{
    struct one t;
    struct outcome o = {0};
    struct nx_llm_request req = {.model = model, .temperature = -1, .stream = true};

    one_open(&t, kind, kind, key, 2000,
             "[{\"tool_use\": {\"name\": \"f\", \"input\": {\"a\": 1}}, \"cut_after_end\": true}]", "hi");
    req.messages = t.msgs;
    run_call(&t.e, t.p, &req, &o);
    assert_int_equal(o.rc, 0);
    assert_int_equal(o.stop, NX_LLM_STOP_TOOL_USE);
    assert_int_equal(nrequests(), 1);
    outcome_cleanup(&o);
    one_close(&t);
}

/* A server that ignores "stream": true and answers with the whole JSON object: the answer is
 * read as one (its text passed on as one delta), not failed as a broken stream and asked for
 * again; a tool call in it too. */
static inline void check_stream_answered_whole(const char *kind, const char *key, const char *model)
{
    struct one t;
    struct outcome o = {0};
    struct nx_llm_request req = {.model = model, .temperature = -1, .stream = true};

    one_open(&t, kind, kind, key, 2000, "[{\"text\": \"all at once\", \"ignore_stream\": true}]", "hi");
    req.messages = t.msgs;
    run_call(&t.e, t.p, &req, &o);
    assert_int_equal(o.rc, 0);
    assert_string_equal(nx_buf_cstr(&o.text), "all at once");
    assert_int_equal(o.ndeltas, 1);
    assert_string_equal(message_text(o.message), "all at once");
    assert_int_equal(nrequests(), 1);
    outcome_cleanup(&o);
    memset(&o, 0, sizeof o);
    one_close(&t);

    one_open(&t, kind, kind, key, 2000,
             "[{\"tool_use\": {\"name\": \"f\", \"input\": {\"a\": 1}}, \"ignore_stream\": true}]", "hi");
    req.messages = t.msgs;
    run_call(&t.e, t.p, &req, &o);
    assert_int_equal(o.rc, 0);
    assert_int_equal(o.stop, NX_LLM_STOP_TOOL_USE);
    assert_int_equal(o.ndeltas, 0);
    assert_int_equal(nrequests(), 1);
    outcome_cleanup(&o);
    memset(&o, 0, sizeof o);
    one_close(&t);

    /* its chunked body left open 3 s after the JSON, timeout 2 s: answered within a second or so */
    one_open(&t, kind, kind, key, 2000,
             "[{\"text\": \"held\", \"ignore_stream\": true, \"hold_open_ms\": 3000}]", "hi");
    req.messages = t.msgs;
    uint64_t t0 = nx_mono_ms();
    run_call(&t.e, t.p, &req, &o);
    assert_int_equal(o.rc, 0);
    assert_string_equal(nx_buf_cstr(&o.text), "held");
    assert_true(o.done_ms - t0 < 2000);
    outcome_cleanup(&o);
    one_close(&t);
}

/* One connection to the upstream (max_host_connections 1) and a provider timeout_ms of 1 s: a
 * second stream waits for the first (0.8 s), then its upstream is silent for 0.6 s. The wait
 * is not silence: both complete, where counting from the start cut the second at 1 s as
 * "nothing received". A wait longer than timeout_ms fails, and says it found no connection. */
static inline void check_queued_stream_waits_for_a_connection(const char *kind, const char *key,
                                                              const char *model)
{
    const struct nx_http_client_opts one_conn = {.max_host_connections = 1};
    const char *const scripts[] = {
        "[{\"text\": \"a b c d\", \"chunks\": 4, \"delay_ms\": 200}, {\"hang_ms\": 600, \"text\": \"two\"}]",
        "[{\"text\": \"a b c d e f g\", \"chunks\": 7, \"delay_ms\": 200}, {\"text\": \"late\"}]",
    };

    for (size_t i = 0; i < 2; i++) {
        struct one t;
        struct outcome a = {0}, b = {0};
        struct nx_llm_request req = {.model = model, .temperature = -1, .stream = true};
        int ndone = 0;

        fake_reset();
        fake_script(scripts[i]);
        if (uv_loop_init(&t.e.loop) != 0 || llm_client_new(&t.e.loop, &one_conn, &t.e.http) != 0)
            abort();
        t.p = provider(&t.e, kind, kind, key, 1000, NULL);
        t.msgs = user_messages("hi");
        req.messages = t.msgs;
        a.call = nx_llm_start(t.p, &req, callbacks(&a));
        b.call = nx_llm_start(t.p, &req, callbacks(&b));
        while (a.ndone + b.ndone < 2 && ndone++ < 200)
            run_until(&t.e.loop, NULL, 0, 50);
        assert_int_equal(a.ndone + b.ndone, 2);
        assert_int_equal(a.rc, 0);
        if (i == 0) {
            assert_int_equal(b.rc, 0);
            assert_string_equal(nx_buf_cstr(&b.text), "two");
        } else { /* 1.4 s behind the first: no connection within the second */
            assert_int_equal(b.rc, NX_ETIMEDOUT);
            assert_non_null(strstr(b.error_message, "no connection"));
        }
        outcome_cleanup(&a);
        outcome_cleanup(&b);
        one_close(&t);
    }
}

/* An upstream that hangs past the provider's timeout_ms: the call fails retryably with
 * NX_ETIMEDOUT ("timeout"), well before the upstream would have answered (3 s). */
static inline void check_request_deadline(const char *kind, const char *key, const char *model,
                                          uint32_t timeout_ms, bool is_stream)
{
    struct one t;
    struct outcome o = {0};
    struct nx_llm_request req = {.model = model, .temperature = -1, .stream = is_stream};
    uint64_t t0;

    one_open(&t, kind, kind, key, timeout_ms, "[{\"hang_ms\": 3000}]", "hi");
    req.messages = t.msgs;
    t0 = nx_mono_ms();
    run_call(&t.e, t.p, &req, &o);
    assert_int_equal(o.rc, NX_ETIMEDOUT);
    assert_string_equal(o.error_type, "timeout");
    assert_true(o.is_retryable);
    assert_true(o.done_ms - t0 < 2000);
    outcome_cleanup(&o);
    one_close(&t);
}

#endif
