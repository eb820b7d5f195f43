#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <time.h>

#include "core/breaker.h"
#include "core/metrics.h"
#include "llm_fake.h"

/* Retries, failover and circuit breakers (llm/chain.c) against tests/fakes/fake_llm.py. */

#define KEY "test-key"

static const struct nx_llm_retry_conf fast_retry = {3, 10, 2000, 2.0, 0};

static bool unstreamed; /* run_chain's caller takes no text (a channel's, a stream-false API's) */

static void run_chain(struct env *e, const struct nx_llm_target *t, size_t n,
                      const struct nx_llm_retry_conf *rc, struct nx_llm_request *req, struct outcome *o)
{
    struct nx_llm_callbacks cb = *callbacks(o);
    if (unstreamed)
        cb.on_text = NULL;
    o->call = nx_llm_chain_start(t, n, rc, req, &cb);
    assert_non_null(o->call);
    assert_int_equal(o->ndone, 0);
    run_until(&e->loop, &o->ndone, 1, 15000);
    assert_int_equal(o->ndone, 1);
    run_until(&e->loop, NULL, 0, 20); /* let the chain's timer close */
}

static bool metric_has(const char *line)
{
    struct nx_buf out = NX_BUF_INIT;
    bool found;

    nx_metrics_render(&out);
    found = strstr(nx_buf_cstr(&out), line) != NULL;
    if (!found)
        fprintf(stderr, "metrics lack: %s\n", line);
    nx_buf_cleanup(&out);
    return found;
}

/* 429 with retry-after 0.3 s, then success: two attempts, at least 0.3 s apart. */
static void test_chain_retries_429_honouring_retry_after(void **state)
{
    struct one f;
    struct outcome o = {0};
    json_t *all;
    struct nx_llm_request req = {.model = "claude-test", .temperature = -1};
    struct nx_llm_target t[1];
    double t0, t1;

    (void)state;
    one_open(&f, "retry-a", "anthropic", KEY, 0,
             "[{\"error\": {\"status\": 429, \"type\": \"rate_limit_error\", \"message\": \"slow\","
             " \"retry_after\": 0.3}}]", "hi");
    req.messages = f.msgs;
    t[0] = (struct nx_llm_target){f.p, "claude-test"};
    run_chain(&f.e, t, 1, &fast_retry, &req, &o);
    assert_int_equal(o.rc, 0);
    assert_string_equal(message_text(o.message), "hello from fake");
    all = fake_requests();
    assert_int_equal(json_array_size(all), 2);
    t0 = json_real_value(json_object_get(json_array_get(all, 0), "t"));
    t1 = json_real_value(json_object_get(json_array_get(all, 1), "t"));
    assert_true(t1 - t0 >= 0.29);
    json_decref(all);
    assert_true(metric_has("nexo_llm_requests_total{provider=\"retry-a\",model=\"claude-test\","
                           "outcome=\"retry\"} 1"));
    assert_true(metric_has("nexo_llm_requests_total{provider=\"retry-a\",model=\"claude-test\","
                           "outcome=\"ok\"} 1"));
    assert_int_equal(nx_llm_provider_breaker(f.p)->state, NX_BREAKER_CLOSED);
    outcome_cleanup(&o);
    one_close(&f);
}

/* retry.deadline: 429s asking for 0.3 s each; with a 0.5 s deadline the second wait would end
 * past it, so the chain gives up after two attempts, as a timeout naming the deadline. */
static void test_chain_stops_at_its_deadline(void **state)
{
    static const struct nx_llm_retry_conf rc = {10, 10, 2000, 2.0, 500};
    struct one f;
    struct outcome o = {0};
    struct nx_llm_request req = {.model = "claude-test", .temperature = -1};
    struct nx_llm_target t[1];
    static const char slow[] = "{\"error\": {\"status\": 429, \"type\": \"rate_limit_error\", "
                               "\"message\": \"slow\", \"retry_after\": 0.3}}";
    char script[sizeof slow * 4 + 8];

    (void)state;
    snprintf(script, sizeof script, "[%s, %s, %s, %s]", slow, slow, slow, slow);
    one_open(&f, "deadline-a", "anthropic", KEY, 0, script, "hi");
    req.messages = f.msgs;
    t[0] = (struct nx_llm_target){f.p, "claude-test"};
    run_chain(&f.e, t, 1, &rc, &req, &o);
    assert_int_equal(o.rc, NX_ETIMEDOUT);
    assert_int_equal(nrequests(), 2);
    assert_non_null(strstr(o.error_message, "retry.deadline"));
    assert_non_null(strstr(o.error_message, "slow"));
    outcome_cleanup(&o);
    one_close(&f);
}

/* The deadline cuts an attempt in flight whose answer has not begun (the model hangs 3 s):
 * the chain ends as a timeout near the deadline, not at the attempt's own timeout. */
static void test_chain_deadline_cuts_the_attempt_in_flight(void **state)
{
    static const struct nx_llm_retry_conf rc = {3, 10, 2000, 2.0, 400};
    struct one f;
    struct outcome o = {0};
    struct nx_llm_request req = {.model = "claude-test", .temperature = -1};
    struct nx_llm_target t[1];

    (void)state;
    one_open(&f, "deadline-cut", "anthropic", KEY, 0, "[{\"hang_ms\": 3000, \"text\": \"late\"}]", "hi");
    req.messages = f.msgs;
    t[0] = (struct nx_llm_target){f.p, "claude-test"};
    uint64_t t0 = nx_mono_ms();
    run_chain(&f.e, t, 1, &rc, &req, &o);
    assert_int_equal(o.rc, NX_ETIMEDOUT);
    assert_true(o.done_ms - t0 < 2500);
    assert_int_equal(nrequests(), 1);
    assert_string_equal(o.error_type, "timeout_error");
    assert_non_null(strstr(o.error_message, "retry.deadline 0.4 s"));
    assert_non_null(strstr(o.error_message, "had not answered"));
    outcome_cleanup(&o);
    one_close(&f);
}

/* ... but not one whose text is arriving: that one is answered in full, whether the caller
 * streams or not. */
static void test_chain_deadline_spares_a_stream_under_way(void **state)
{
    static const struct nx_llm_retry_conf rc = {3, 10, 2000, 2.0, 300};
    struct one f;
    struct outcome o = {0};
    struct nx_llm_request req = {.model = "m", .temperature = -1, .stream = true};
    struct nx_llm_target t[1];

    (void)state;
    for (int i = 0; i < 2; i++) {
        unstreamed = i == 1;
        memset(&o, 0, sizeof o);
        one_open(&f, "deadline-stream", "anthropic", KEY, 0,
                 "[{\"text\": \"one two three\", \"chunks\": 3, \"delay_ms\": 250}]", "hi");
        req.messages = f.msgs;
        t[0] = (struct nx_llm_target){f.p, "m"};
        run_chain(&f.e, t, 1, &rc, &req, &o);
        assert_int_equal(o.rc, 0);
        assert_string_equal(nx_buf_cstr(&o.text), unstreamed ? "" : "one two three");
        assert_string_equal(message_text(o.message), "one two three");
        outcome_cleanup(&o);
        one_close(&f);
    }
    unstreamed = false;

    /* nor one whose answer (a tool call, no text) came whole, and whose body is held open */
    memset(&o, 0, sizeof o);
    one_open(&f, "deadline-held", "anthropic", KEY, 0,
             "[{\"tool_use\": {\"name\": \"f\", \"input\": {}}, \"hold_open_ms\": 900}]", "hi");
    req.messages = f.msgs;
    t[0] = (struct nx_llm_target){f.p, "m"};
    run_chain(&f.e, t, 1, &rc, &req, &o);
    assert_int_equal(o.rc, 0);
    assert_int_equal(o.stop, NX_LLM_STOP_TOOL_USE);
    outcome_cleanup(&o);
    one_close(&f);
}

/* A server that refuses stream_options (Mistral's 422 for a field its schema does not have) is
 * asked again at once without them, and from then on; a model of it that also refuses to stream
 * is asked again whole, still for free: two refusals in one call, one attempt allowed, answered. */
static void test_chain_server_that_refuses_stream_options(void **state)
{
    static const struct nx_llm_retry_conf one_attempt = {1, 10, 2000, 2.0, 0};
    struct one f;
    struct outcome o = {0};
    struct nx_llm_request req = {.model = "mistral-large", .temperature = -1, .stream = true};
    struct nx_llm_target t[1];
    json_t *reqs, *body;

    (void)state;
    one_open(&f, "no-options", "openai", KEY, 0,
             "[{\"refuse_stream_options\": true}, {\"text\": \"no usage asked\", \"chunks\": 2,"
             " \"refuse_stream_options\": true}, {\"text\": \"again\", \"refuse_stream_options\": true},"
             " {\"refuse_stream\": true}, {\"text\": \"whole\", \"refuse_stream\": true}]", "hi");
    req.messages = f.msgs;
    t[0] = (struct nx_llm_target){f.p, "mistral-large"};
    run_chain(&f.e, t, 1, &one_attempt, &req, &o);
    assert_int_equal(o.rc, 0);
    assert_string_equal(nx_buf_cstr(&o.text), "no usage asked");
    assert_int_equal(o.ndeltas, 2); /* streamed */
    assert_int_equal(nrequests(), 2);
    assert_int_equal(nx_llm_provider_breaker(f.p)->failures, 0);
    outcome_cleanup(&o);
    memset(&o, 0, sizeof o);
    run_chain(&f.e, t, 1, &one_attempt, &req, &o); /* remembered: one request, streamed bare */
    assert_int_equal(o.rc, 0);
    assert_string_equal(nx_buf_cstr(&o.text), "again");
    assert_int_equal(nrequests(), 3);
    reqs = fake_requests();
    body = json_object_get(json_array_get(reqs, 2), "body");
    assert_true(json_is_true(json_object_get(body, "stream")));
    assert_null(json_object_get(body, "stream_options"));
    json_decref(reqs);
    outcome_cleanup(&o);
    memset(&o, 0, sizeof o);
    one_close(&f);

    /* both refusals in one call, one attempt allowed: still answered */
    one_open(&f, "no-options-2", "openai", KEY, 0,
             "[{\"refuse_stream_options\": true}, {\"refuse_stream\": true},"
             " {\"text\": \"whole\", \"refuse_stream\": true}]", "hi");
    req.messages = f.msgs;
    req.model = "o3";
    t[0] = (struct nx_llm_target){f.p, "o3"};
    run_chain(&f.e, t, 1, &one_attempt, &req, &o);
    assert_int_equal(o.rc, 0);
    assert_string_equal(nx_buf_cstr(&o.text), "whole");
    assert_int_equal(nrequests(), 3);
    assert_int_equal(nx_llm_provider_breaker(f.p)->failures, 0);
    outcome_cleanup(&o);
    memset(&o, 0, sizeof o);

    /* a reload's provider of the same name, URL and key keeps what was learnt: one request, whole
     * and without stream_options; one of another name, or with another key, learns it again */
    for (int same = 2; same >= 0; same--) {
        struct nx_llm_provider *p2 = provider(&f.e, same ? "no-options-2" : "other", "openai",
                                              same == 1 ? "test-key-2" : KEY, 0, NULL);
        nx_llm_provider_inherit(p2, f.p);
        fake_reset();
        if (same == 1)
            fake_post("/_config", "{\"key\": \"test-key-2\"}");
        fake_script("[{\"text\": \"kept\", \"refuse_stream\": true, \"refuse_stream_options\": true},"
                    " {\"text\": \"kept\"}]");
        t[0] = (struct nx_llm_target){p2, "o3"};
        run_chain(&f.e, t, 1, &one_attempt, &req, &o);
        assert_int_equal(o.rc, 0);
        assert_int_equal(nrequests(), same == 2 ? 1 : 2);
        assert_string_equal(nx_buf_cstr(&o.text), "kept");
        outcome_cleanup(&o);
        memset(&o, 0, sizeof o);
        nx_llm_provider_free(p2);
    }
    one_close(&f);
}

/* A 422 about something else that echoes the request (stream_options included) in pydantic's
 * "input" is no refusal of stream_options: failed as it is, nothing learnt. */
static void test_chain_error_echoing_stream_options(void **state)
{
    static const struct nx_llm_retry_conf one_attempt = {1, 10, 2000, 2.0, 0};
    struct one f;
    struct outcome o = {0};
    struct nx_llm_request req = {.model = "served", .temperature = -1, .stream = true};
    struct nx_llm_target t[1];

    (void)state;
    one_open(&f, "echo", "openai", KEY, 0, "[{\"reject_echo\": true}, {\"text\": \"fine\"}]", "hi");
    req.messages = f.msgs;
    t[0] = (struct nx_llm_target){f.p, "served"};
    run_chain(&f.e, t, 1, &one_attempt, &req, &o);
    assert_int_equal(o.http_status, 422);
    assert_int_equal(nrequests(), 1);
    outcome_cleanup(&o);
    memset(&o, 0, sizeof o);
    run_chain(&f.e, t, 1, &one_attempt, &req, &o);
    assert_int_equal(o.rc, 0);
    json_t *reqs = fake_requests();
    assert_non_null(json_object_get(json_object_get(json_array_get(reqs, 1), "body"), "stream_options"));
    json_decref(reqs);
    outcome_cleanup(&o);
    one_close(&f);
}

/* A model that refuses to stream (400, param "stream": OpenAI's o3 for an organization not
 * verified) is asked again at once for a whole answer, whose text reaches the streaming caller
 * in one piece; from then on its answers are asked for whole straight away. The refusal is
 * neither an attempt (one attempt allowed: still answered) nor a failure of the provider. */
static void test_chain_model_that_refuses_to_stream(void **state)
{
    static const struct nx_llm_retry_conf one_attempt = {1, 10, 2000, 2.0, 0};
    struct one f;
    struct outcome o = {0};
    struct nx_llm_request req = {.model = "o3", .temperature = -1, .stream = true};
    struct nx_llm_target t[1];

    (void)state;
    one_open(&f, "no-stream", "openai", KEY, 0,
             "[{\"refuse_stream\": true}, {\"text\": \"all at once\", \"refuse_stream\": true},"
             " {\"text\": \"again\", \"refuse_stream\": true}]", "hi");
    req.messages = f.msgs;
    t[0] = (struct nx_llm_target){f.p, "o3"};
    run_chain(&f.e, t, 1, &one_attempt, &req, &o);
    assert_int_equal(o.rc, 0);
    assert_string_equal(nx_buf_cstr(&o.text), "all at once");
    assert_int_equal(o.ndeltas, 1);
    assert_int_equal(nrequests(), 2);
    assert_int_equal(nx_llm_provider_breaker(f.p)->failures, 0);
    outcome_cleanup(&o);
    memset(&o, 0, sizeof o);
    run_chain(&f.e, t, 1, &fast_retry, &req, &o); /* remembered: one request, whole */
    assert_int_equal(o.rc, 0);
    assert_string_equal(nx_buf_cstr(&o.text), "again");
    assert_int_equal(nrequests(), 3);
    json_t *reqs = fake_requests();
    assert_true(json_is_false(json_object_get(json_object_get(json_array_get(reqs, 2), "body"), "stream")) ||
                !json_object_get(json_object_get(json_array_get(reqs, 2), "body"), "stream"));
    json_decref(reqs);
    outcome_cleanup(&o);
    one_close(&f);

    /* a fallback model that refuses too is asked again as freely (one attempt each) */
    struct nx_llm_target two[2];
    memset(&o, 0, sizeof o);
    one_open(&f, "no-stream-2", "openai", KEY, 0,
             "[{\"refuse_stream\": true}, {\"error\": {\"status\": 500, \"type\": \"api_error\"}},"
             " {\"refuse_stream\": true}, {\"text\": \"from the fallback\"}]", "hi");
    req.messages = f.msgs;
    req.model = "o1";
    two[0] = (struct nx_llm_target){f.p, "o1"};
    two[1] = (struct nx_llm_target){f.p, "gpt-5"};
    run_chain(&f.e, two, 2, &one_attempt, &req, &o);
    assert_int_equal(o.rc, 0);
    assert_string_equal(nx_buf_cstr(&o.text), "from the fallback");
    assert_int_equal(nrequests(), 4);
    outcome_cleanup(&o);
    one_close(&f);
}

/* A dropped connection is a connection error: retried. */
static void test_chain_retries_dropped_connection(void **state)
{
    struct one f;
    struct outcome o = {0};
    struct nx_llm_request req = {.model = "gpt-test", .temperature = -1, .stream = true};
    struct nx_llm_target t[1];

    (void)state;
    one_open(&f, "drop-o", "openai", KEY, 0, "[{\"drop\": true}]", "hi");
    req.messages = f.msgs;
    t[0] = (struct nx_llm_target){f.p, "gpt-test"};
    run_chain(&f.e, t, 1, &fast_retry, &req, &o);
    assert_int_equal(o.rc, 0);
    assert_string_equal(nx_buf_cstr(&o.text), "hello from fake");
    assert_int_equal(nrequests(), 2);
    outcome_cleanup(&o);
    one_close(&f);
}

/* The primary keeps failing: after its attempts the fallback (another provider and wire format)
 * answers. */
static void test_chain_fails_over_to_fallback(void **state)
{
    struct env e;
    struct outcome o = {0};
    json_t *msgs = user_messages("hi"), *all;
    struct nx_llm_request req = {.model = "ignored", .system = "sys", .messages = msgs, .temperature = -1};
    struct nx_llm_provider *a, *b;
    struct nx_llm_target t[2];
    struct nx_llm_retry_conf rc = {2, 10, 50, 2.0, 0};

    (void)state;
    fake_reset();
    fake_script("[{\"error\": {\"status\": 500, \"type\": \"api_error\"}},"
                " {\"error\": {\"status\": 503, \"type\": \"api_error\"}},"
                " {\"text\": \"from backup\"}]");
    env_init(&e);
    a = provider(&e, "primary", "anthropic", KEY, 0, NULL);
    b = provider(&e, "backup", "openai", KEY, 0, NULL);
    t[0] = (struct nx_llm_target){a, "claude-main"};
    t[1] = (struct nx_llm_target){b, "gpt-backup"};
    run_chain(&e, t, 2, &rc, &req, &o);
    assert_int_equal(o.rc, 0);
    assert_string_equal(message_text(o.message), "from backup");
    assert_string_equal(o.model, "gpt-backup");
    all = fake_requests();
    assert_int_equal(json_array_size(all), 3);
    assert_string_equal(nx_json_str(json_array_get(all, 0), "endpoint"), "anthropic");
    assert_string_equal(nx_json_str(json_array_get(all, 1), "endpoint"), "anthropic");
    assert_string_equal(nx_json_str(json_array_get(all, 2), "endpoint"), "openai");
    assert_string_equal(nx_json_str(json_object_get(json_array_get(all, 0), "body"), "model"), "claude-main");
    assert_string_equal(nx_json_str(json_object_get(json_array_get(all, 2), "body"), "model"), "gpt-backup");
    json_decref(all);
    assert_true(metric_has("nexo_llm_requests_total{provider=\"primary\",model=\"claude-main\","
                           "outcome=\"error\"} 1"));
    outcome_cleanup(&o);
    json_decref(msgs);
    nx_llm_provider_free(a);
    nx_llm_provider_free(b);
    env_cleanup(&e);
}

/* 400 is the request's fault: not retried, no failover. */
static void test_chain_does_not_retry_400(void **state)
{
    struct env e;
    struct outcome o = {0};
    json_t *msgs = user_messages("hi");
    struct nx_llm_request req = {.model = "m", .messages = msgs, .temperature = -1};
    struct nx_llm_provider *a, *b;
    struct nx_llm_target t[2];

    (void)state;
    fake_reset();
    fake_script("[{\"error\": {\"status\": 400, \"type\": \"invalid_request_error\","
                " \"message\": \"nope\"}}]");
    env_init(&e);
    a = provider(&e, "four-a", "anthropic", KEY, 0, NULL);
    b = provider(&e, "four-b", "anthropic", KEY, 0, NULL);
    t[0] = (struct nx_llm_target){a, "m"};
    t[1] = (struct nx_llm_target){b, "m"};
    run_chain(&e, t, 2, &fast_retry, &req, &o);
    assert_int_equal(o.rc, NX_EINVAL);
    assert_int_equal(o.http_status, 400);
    assert_string_equal(o.error_message, "nope");
    assert_false(o.is_retryable);
    assert_int_equal(nrequests(), 1);
    outcome_cleanup(&o);
    json_decref(msgs);
    nx_llm_provider_free(a);
    nx_llm_provider_free(b);
    env_cleanup(&e);
}

/* Once text reached the caller, a failure is reported, not retried behind its back. */
static void test_chain_does_not_retry_after_streamed_text(void **state)
{
    struct one f;
    struct outcome o = {0};
    struct nx_llm_request req = {.model = "m", .temperature = -1, .stream = true};
    struct nx_llm_target t[1];

    (void)state;
    one_open(&f, "mid", "anthropic", KEY, 0,
             "[{\"text\": \"partial answer\", \"chunks\": 2, \"error_midstream\": \"overloaded_error\"}]",
             "hi");
    req.messages = f.msgs;
    t[0] = (struct nx_llm_target){f.p, "m"};
    run_chain(&f.e, t, 1, &fast_retry, &req, &o);
    assert_int_equal(o.rc, NX_EAGAIN);
    assert_string_equal(o.error_type, "overloaded_error");
    assert_non_null(strstr(o.error_message, "not retried"));
    assert_false(o.is_retryable);
    assert_true(o.ndeltas >= 1);
    assert_int_equal(nrequests(), 1);
    outcome_cleanup(&o);
    one_close(&f);
}

/* Cancel while the chain sleeps in its backoff: on_done at once, no further attempt. */
static void test_chain_cancel_during_backoff(void **state)
{
    struct one f;
    struct outcome o = {0};
    struct nx_llm_request req = {.model = "m", .temperature = -1};
    struct nx_llm_target t[1];
    uint64_t t0;

    (void)state;
    one_open(&f, "cancel-b", "anthropic", KEY, 0,
             "[{\"error\": {\"status\": 429, \"type\": \"rate_limit_error\", \"retry_after\": 1}}]", "hi");
    req.messages = f.msgs;
    t[0] = (struct nx_llm_target){f.p, "m"};
    o.call = nx_llm_chain_start(t, 1, &fast_retry, &req, callbacks(&o));
    assert_non_null(o.call);
    /* wait until the first attempt was answered and the chain is sleeping */
    for (int i = 0; i < 100 && nrequests() < 1; i++)
        run_until(&f.e.loop, NULL, 0, 20);
    run_until(&f.e.loop, NULL, 0, 100);
    assert_int_equal(o.ndone, 0);
    t0 = nx_mono_ms();
    nx_llm_cancel(o.call);
    assert_int_equal(o.ndone, 1);
    assert_int_equal(o.rc, NX_ECANCELED);
    assert_true(nx_mono_ms() - t0 < 100);
    run_until(&f.e.loop, NULL, 0, 100);
    assert_int_equal(o.ndone, 1);
    assert_int_equal(nrequests(), 1);
    outcome_cleanup(&o);
    one_close(&f);
}

/* Cancel while an attempt streams. */
static void test_chain_cancel_mid_stream(void **state)
{
    struct one f;
    struct outcome o = {0};
    struct nx_llm_request req = {.model = "m", .temperature = -1, .stream = true};
    struct nx_llm_target t[1];

    (void)state;
    one_open(&f, "cancel-s", "openai", KEY, 0,
             "[{\"text\": \"a b c d e f g h\", \"chunks\": 8, \"delay_ms\": 150}]", "hi");
    req.messages = f.msgs;
    t[0] = (struct nx_llm_target){f.p, "m"};
    o.cancel_after_deltas = 2;
    run_chain(&f.e, t, 1, &fast_retry, &req, &o);
    assert_int_equal(o.rc, NX_ECANCELED);
    assert_int_equal(o.ndeltas, 2);
    run_until(&f.e.loop, NULL, 0, 200);
    assert_int_equal(o.ndone, 1);
    assert_int_equal(nx_llm_provider_breaker(f.p)->state, NX_BREAKER_CLOSED);
    outcome_cleanup(&o);
    one_close(&f);
}

/* Two failures open the breaker (short timings): the next chain fails fast without a request;
 * after the backoff one probe goes through, succeeds, and the breaker closes. */
static void test_chain_breaker_opens_half_opens_and_closes(void **state)
{
    static const struct nx_breaker_conf bc = {2, 1, 300, 1000};
    struct nx_llm_retry_conf once = {1, 10, 10, 2.0, 0};
    struct env e;
    struct outcome o = {0};
    json_t *msgs = user_messages("hi");
    struct nx_llm_request req = {.model = "m", .messages = msgs, .temperature = -1};
    struct nx_llm_provider *p;
    struct nx_llm_target t[1];
    uint64_t t0;

    (void)state;
    fake_reset();
    fake_script("[{\"error\": {\"status\": 500, \"type\": \"api_error\"}},"
                " {\"error\": {\"status\": 500, \"type\": \"api_error\"}}]");
    env_init(&e);
    p = provider(&e, "brk", "anthropic", KEY, 0, &bc);
    t[0] = (struct nx_llm_target){p, "m"};
    for (int i = 0; i < 2; i++) {
        memset(&o, 0, sizeof o);
        run_chain(&e, t, 1, &once, &req, &o);
        assert_int_equal(o.rc, NX_EAGAIN);
        outcome_cleanup(&o);
    }
    assert_int_equal(nx_llm_provider_breaker(p)->state, NX_BREAKER_OPEN);
    assert_true(metric_has("nexo_llm_breaker_state{provider=\"brk\"} 1"));

    memset(&o, 0, sizeof o);
    t0 = nx_mono_ms();
    run_chain(&e, t, 1, &once, &req, &o);
    assert_int_equal(o.rc, NX_EAGAIN);
    assert_string_equal(o.error_type, "circuit_open");
    assert_true(o.retry_after_ms > 0 && o.retry_after_ms <= 300);
    assert_true(nx_mono_ms() - t0 < 100);
    assert_int_equal(nrequests(), 2);
    outcome_cleanup(&o);

    run_until(&e.loop, NULL, 0, 350);
    memset(&o, 0, sizeof o);
    run_chain(&e, t, 1, &once, &req, &o);
    assert_int_equal(o.rc, 0);
    assert_int_equal(nrequests(), 3);
    assert_int_equal(nx_llm_provider_breaker(p)->state, NX_BREAKER_CLOSED);
    assert_true(metric_has("nexo_llm_breaker_state{provider=\"brk\"} 0"));
    outcome_cleanup(&o);
    json_decref(msgs);
    nx_llm_provider_free(p);
    env_cleanup(&e);
}

/* An open breaker on the primary sends the request straight to the fallback. */
static void test_chain_skips_open_breaker(void **state)
{
    static const struct nx_breaker_conf bc = {1, 1, 60000, 60000};
    struct env e;
    struct outcome o = {0};
    json_t *msgs = user_messages("hi"), *all;
    struct nx_llm_request req = {.model = "m", .messages = msgs, .temperature = -1};
    struct nx_llm_provider *a, *b;
    struct nx_llm_target t[2];

    (void)state;
    fake_reset();
    env_init(&e);
    a = provider(&e, "skip-a", "anthropic", KEY, 0, &bc);
    b = provider(&e, "skip-b", "openai", KEY, 0, NULL);
    nx_breaker_failure(nx_llm_provider_breaker(a), nx_mono_ms());
    assert_int_equal(nx_llm_provider_breaker(a)->state, NX_BREAKER_OPEN);
    t[0] = (struct nx_llm_target){a, "m"};
    t[1] = (struct nx_llm_target){b, "m2"};
    run_chain(&e, t, 2, &fast_retry, &req, &o);
    assert_int_equal(o.rc, 0);
    all = fake_requests();
    assert_int_equal(json_array_size(all), 1);
    assert_string_equal(nx_json_str(json_array_get(all, 0), "endpoint"), "openai");
    json_decref(all);
    outcome_cleanup(&o);
    json_decref(msgs);
    nx_llm_provider_free(a);
    nx_llm_provider_free(b);
    env_cleanup(&e);
}

/* Jittered backoff stays within [0, cap]: with no retry-after and a 40 ms initial backoff, two
 * retries take at most 40 + 80 ms of sleep. */
static void test_chain_backoff_is_bounded(void **state)
{
    struct nx_llm_retry_conf rc = {3, 40, 1000, 2.0, 0};
    struct one f;
    struct outcome o = {0};
    json_t *all;
    struct nx_llm_request req = {.model = "m", .temperature = -1};
    struct nx_llm_target t[1];
    double span;

    (void)state;
    one_open(&f, "jit", "anthropic", KEY, 0,
             "[{\"error\": {\"status\": 529, \"type\": \"overloaded_error\"}},"
             " {\"error\": {\"status\": 502, \"type\": \"api_error\"}}]", "hi");
    req.messages = f.msgs;
    t[0] = (struct nx_llm_target){f.p, "m"};
    run_chain(&f.e, t, 1, &rc, &req, &o);
    assert_int_equal(o.rc, 0);
    all = fake_requests();
    assert_int_equal(json_array_size(all), 3);
    span = json_real_value(json_object_get(json_array_get(all, 2), "t")) -
           json_real_value(json_object_get(json_array_get(all, 0), "t"));
    assert_true(span < 0.12 + 0.6); /* sleeps plus two round trips to the fake, with slack */
    json_decref(all);
    outcome_cleanup(&o);
    one_close(&f);
}

/* Context windows by model name: the families, OpenRouter and Bedrock names, case, and 0 for a
 * name nobody knows (the agent then says what it assumes). */
static void test_context_windows_by_model_name(void **state)
{
    (void)state;
    assert_int_equal(nx_llm_context_window("claude-haiku-4-5"), 200000);
    assert_int_equal(nx_llm_context_window("us.anthropic.claude-sonnet-4-5-v1:0"), 200000);
    assert_int_equal(nx_llm_context_window("anthropic/claude-3.5-sonnet"), 200000);
    assert_int_equal(nx_llm_context_window("gpt-4o-mini"), 128000);
    assert_int_equal(nx_llm_context_window("openai/gpt-4.1-mini"), 1047576);
    assert_int_equal(nx_llm_context_window("gpt-4"), 8192);
    assert_int_equal(nx_llm_context_window("gpt-4.5-preview"), 128000);
    assert_int_equal(nx_llm_context_window("gpt-4-vision-preview"), 128000);
    assert_int_equal(nx_llm_context_window("gpt-5-mini"), 272000);
    assert_int_equal(nx_llm_context_window("gpt-5-chat-latest"), 128000);
    assert_int_equal(nx_llm_context_window("o1-preview"), 128000);
    assert_int_equal(nx_llm_context_window("gpt-4-turbo-2024-04-09"), 128000);
    assert_int_equal(nx_llm_context_window("o1-mini"), 128000);
    assert_int_equal(nx_llm_context_window("o3"), 200000);
    assert_int_equal(nx_llm_context_window("MiniMax-M2"), 200000);
    assert_int_equal(nx_llm_context_window("deepseek-chat"), 128000);
    assert_int_equal(nx_llm_context_window("gemini-2.5-flash"), 1048576);
    assert_int_equal(nx_llm_context_window("llama3"), 0);
    assert_int_equal(nx_llm_context_window(""), 0);
    assert_int_equal(nx_llm_context_window(NULL), 0);
}

/* A call that began while the breaker was closed and fails while its half-open probe is out
 * is not the probe's verdict: the breaker stays half-open, and the probe's success closes it. */
static void test_breaker_ignores_a_late_outcome_while_its_probe_runs(void **state)
{
    const struct nx_breaker_conf bc = {1, 1, 200, 10000};
    static const struct nx_llm_retry_conf once = {1, 10, 100, 2.0, 0};
    struct env e;
    struct outcome a = {0}, b = {0}, c = {0};
    json_t *msgs = user_messages("hi");
    struct nx_llm_request req = {.model = "claude-test", .temperature = -1, .messages = msgs};

    (void)state;
    fake_reset();
    fake_script("[{\"hang_ms\": 700, \"error\": {\"status\": 500, \"type\": \"api_error\"}},"
                " {\"error\": {\"status\": 500, \"type\": \"api_error\"}},"
                " {\"hang_ms\": 900, \"text\": \"probe ok\"}]");
    env_init(&e);
    struct nx_llm_provider *p = provider(&e, "stale", "anthropic", KEY, 0, &bc);
    struct nx_llm_target t[1] = {{p, "claude-test"}};
    struct nx_breaker *br = nx_llm_provider_breaker(p);

    a.call = nx_llm_chain_start(t, 1, &once, &req, callbacks(&a)); /* slow; fails late */
    run_until(&e.loop, NULL, 0, 150);
    b.call = nx_llm_chain_start(t, 1, &once, &req, callbacks(&b)); /* fails: opens */
    run_until(&e.loop, &b.ndone, 1, 5000);
    assert_int_equal(br->state, NX_BREAKER_OPEN);
    run_until(&e.loop, NULL, 0, 250); /* the backoff is over */
    c.call = nx_llm_chain_start(t, 1, &once, &req, callbacks(&c)); /* the probe */
    run_until(&e.loop, &a.ndone, 1, 5000);
    assert_int_not_equal(a.rc, 0);
    assert_int_equal(br->state, NX_BREAKER_HALF_OPEN); /* not opened again by A */
    assert_int_equal(br->backoff_ms, 200);
    run_until(&e.loop, &c.ndone, 1, 5000);
    assert_int_equal(c.rc, 0);
    assert_int_equal(br->state, NX_BREAKER_CLOSED);
    outcome_cleanup(&a);
    outcome_cleanup(&b);
    outcome_cleanup(&c);
    json_decref(msgs);
    nx_llm_provider_free(p);
    env_cleanup(&e);
}

/* retry-after in seconds, in milliseconds (retry-after-ms first), or as an HTTP date */
static void test_retry_after_forms(void **state)
{
    char date[64];
    time_t soon = time(NULL) + 3;
    struct tm tm;

    (void)state;
    assert_int_equal(nx_llm_parse_retry_after(NULL, "2"), 2000);
    assert_int_equal(nx_llm_parse_retry_after("250", "2"), 250);
    assert_int_equal(nx_llm_parse_retry_after(NULL, "0.3"), 300);
    assert_int_equal(nx_llm_parse_retry_after(NULL, "999999999"), 86400000);
    gmtime_r(&soon, &tm);
    strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    int64_t ms = nx_llm_parse_retry_after(NULL, date);
    assert_true(ms >= 1000 && ms <= 3000);
    assert_int_equal(nx_llm_parse_retry_after(NULL, "Sun, 06 Nov 1994 08:49:37 GMT"), 0); /* past */
    assert_int_equal(nx_llm_parse_retry_after(NULL, "soon"), -1);
    assert_int_equal(nx_llm_parse_retry_after(NULL, "Sun, 06 Nov 1994 08:49:37 PST"), -1);
    assert_int_equal(nx_llm_parse_retry_after(NULL, NULL), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_context_windows_by_model_name),
        cmocka_unit_test(test_retry_after_forms),
        cmocka_unit_test(test_breaker_ignores_a_late_outcome_while_its_probe_runs),
        cmocka_unit_test(test_chain_retries_429_honouring_retry_after),
        cmocka_unit_test(test_chain_deadline_cuts_the_attempt_in_flight),
        cmocka_unit_test(test_chain_deadline_spares_a_stream_under_way),
        cmocka_unit_test(test_chain_retries_dropped_connection),
        cmocka_unit_test(test_chain_server_that_refuses_stream_options),
        cmocka_unit_test(test_chain_error_echoing_stream_options),
        cmocka_unit_test(test_chain_model_that_refuses_to_stream),
        cmocka_unit_test(test_chain_stops_at_its_deadline),
        cmocka_unit_test(test_chain_fails_over_to_fallback),
        cmocka_unit_test(test_chain_does_not_retry_400),
        cmocka_unit_test(test_chain_does_not_retry_after_streamed_text),
        cmocka_unit_test(test_chain_cancel_during_backoff),
        cmocka_unit_test(test_chain_cancel_mid_stream),
        cmocka_unit_test(test_chain_breaker_opens_half_opens_and_closes),
        cmocka_unit_test(test_chain_skips_open_breaker),
        cmocka_unit_test(test_chain_backoff_is_bounded),
    };
    return run_on_both_engines(tests, sizeof tests / sizeof *tests, fake_group_setup, fake_group_teardown);
}
