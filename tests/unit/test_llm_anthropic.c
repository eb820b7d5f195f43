#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "llm_cases.h"
#include "llm_fake.h"

/* The Anthropic provider against tests/fakes/fake_llm.py: answers whole and streamed, tool use
 * round trips, the exact request it sends, error mapping, mid-stream errors, cancel, deadline. */

#define KEY "test-key"

static json_t *weather_tools(void)
{
    return json_pack("[{s:s, s:s, s:{s:s, s:{s:{s:s}}}}, {s:s, s:s, s:{s:s}}]", "name", "get_weather",
                     "description", "Weather for a city", "input_schema", "type", "object", "properties",
                     "city", "type", "string", "name", "time_now", "description", "The time",
                     "input_schema", "type", "object");
}

static void test_anthropic_answers_text_whole(void **state)
{
    struct one t;
    struct outcome o = {0};
    struct nx_llm_request req = {.model = "claude-test", .temperature = -1};

    (void)state;
    one_open(&t, "anthropic", "anthropic", KEY, 0, NULL, "hi");
    req.messages = t.msgs;
    run_call(&t.e, t.p, &req, &o);
    assert_int_equal(o.rc, 0);
    assert_string_equal(message_text(o.message), "hello from fake");
    assert_string_equal(nx_json_str(o.message, "role"), "assistant");
    assert_int_equal(o.stop, NX_LLM_STOP_END_TURN);
    assert_string_equal(o.model, "claude-test");
    assert_true(o.usage.input_tokens > 0 && o.usage.output_tokens > 0);
    assert_int_equal(o.ndeltas, 0);
    outcome_cleanup(&o);
    one_close(&t);
}

static void test_anthropic_streams_deltas_in_order(void **state)
{
    struct one t;
    struct outcome o = {0};
    struct nx_llm_request req = {.model = "claude-test", .temperature = -1, .stream = true};
    json_t *r;

    (void)state;
    one_open(&t, "anthropic", "anthropic", KEY, 0,
             "[{\"text\": \"The quick brown fox jumps over the lazy dog\", \"chunks\": 6,"
             " \"usage\": {\"cache_read_input_tokens\": 7, \"cache_creation_input_tokens\": 3}}]",
             "tell me");
    req.messages = t.msgs;
    run_call(&t.e, t.p, &req, &o);
    assert_int_equal(o.rc, 0);
    assert_true(o.ndeltas >= 6);
    assert_string_equal(nx_buf_cstr(&o.text), "The quick brown fox jumps over the lazy dog");
    assert_string_equal(message_text(o.message), nx_buf_cstr(&o.text));
    assert_int_equal(o.stop, NX_LLM_STOP_END_TURN);
    assert_int_equal(o.usage.cache_read_tokens, 7);
    assert_int_equal(o.usage.cache_write_tokens, 3);
    assert_true(o.usage.output_tokens > 1); /* message_delta's total replaced message_start's 1 */
    r = last_request();
    assert_string_equal(nx_json_str(json_object_get(r, "headers"), "accept"), "text/event-stream");
    assert_true(json_is_true(json_object_get(json_object_get(r, "body"), "stream")));
    json_decref(r);
    outcome_cleanup(&o);
    one_close(&t);
}

static void test_anthropic_request_has_cache_control_and_headers(void **state)
{
    struct one f;
    struct outcome o = {0};
    json_t *tools = weather_tools(), *r, *h, *b, *sys, *t;
    struct nx_llm_request req = {.model = "claude-test", .system = "You are terse.", .tools = tools,
                                 .temperature = 0.5, .user = "user-42", .max_tokens = 77};

    (void)state;
    one_open(&f, "anthropic", "anthropic", KEY, 0, NULL, "hi");
    req.messages = f.msgs;
    run_call(&f.e, f.p, &req, &o);
    assert_int_equal(o.rc, 0);
    r = last_request();
    h = json_object_get(r, "headers");
    b = json_object_get(r, "body");
    assert_string_equal(nx_json_str(r, "path"), "/v1/messages");
    assert_string_equal(nx_json_str(h, "x-api-key"), KEY);
    assert_string_equal(nx_json_str(h, "anthropic-version"), "2023-06-01");
    assert_string_equal(nx_json_str(h, "content-type"), "application/json");
    assert_string_equal(nx_json_str(h, "accept"), "application/json");
    assert_null(json_object_get(h, "authorization"));
    assert_string_equal(nx_json_str(b, "model"), "claude-test");
    assert_int_equal(json_integer_value(json_object_get(b, "max_tokens")), 77);
    assert_true(json_real_value(json_object_get(b, "temperature")) == 0.5);
    assert_string_equal(nx_json_str(json_object_get(b, "metadata"), "user_id"), "user-42");
    assert_null(json_object_get(b, "stream"));
    sys = json_object_get(b, "system");
    assert_int_equal(json_array_size(sys), 1);
    assert_string_equal(nx_json_str(json_array_get(sys, 0), "type"), "text");
    assert_string_equal(nx_json_str(json_array_get(sys, 0), "text"), "You are terse.");
    assert_string_equal(nx_json_str(json_object_get(json_array_get(sys, 0), "cache_control"), "type"),
                        "ephemeral");
    t = json_object_get(b, "tools");
    assert_int_equal(json_array_size(t), 2);
    assert_null(json_object_get(json_array_get(t, 0), "cache_control"));
    assert_string_equal(nx_json_str(json_object_get(json_array_get(t, 1), "cache_control"), "type"),
                        "ephemeral");
    assert_string_equal(nx_json_str(json_array_get(t, 0), "name"), "get_weather");
    assert_non_null(json_object_get(json_object_get(json_array_get(t, 0), "input_schema"), "properties"));
    assert_true(json_equal(json_object_get(b, "messages"), f.msgs));
    json_decref(r);
    outcome_cleanup(&o);

    /* an OpenAI client's 1.5 (its range is 0..2) is the Messages API's most random, 1 */
    memset(&o, 0, sizeof o);
    req.temperature = 1.5;
    run_call(&f.e, f.p, &req, &o);
    assert_int_equal(o.rc, 0);
    r = last_request();
    assert_true(json_real_value(json_object_get(json_object_get(r, "body"), "temperature")) == 1.0);
    json_decref(r);
    outcome_cleanup(&o);
    json_decref(tools);
    one_close(&f);
}

/* Tool use round trip, streamed: the model asks for a tool, the next request carries the
 * assistant's tool_use and the user's tool_result (the fake checks they pair up). */
static void test_anthropic_tool_use_round_trip(void **state)
{
    struct one t;
    struct outcome o1 = {0}, o2 = {0};
    json_t *tools = weather_tools(), *tu = NULL, *b, *r, *m;
    struct nx_llm_request req = {.model = "claude-test", .tools = tools, .temperature = -1, .stream = true};
    char id[128];
    size_t i;

    (void)state;
    one_open(&t, "anthropic", "anthropic", KEY, 0,
             "[{\"text\": \"Let me check.\", \"tool_use\": {\"name\": \"get_weather\","
             " \"input\": {\"city\": \"Paris\", \"days\": [1, 2]}}}]",
             "weather in Paris?");
    req.messages = t.msgs;
    run_call(&t.e, t.p, &req, &o1);
    assert_int_equal(o1.rc, 0);
    assert_int_equal(o1.stop, NX_LLM_STOP_TOOL_USE);
    assert_string_equal(nx_buf_cstr(&o1.text), "Let me check.");
    json_array_foreach(json_object_get(o1.message, "content"), i, b) {
        if (!strcmp(nx_json_str(b, "type"), "tool_use"))
            tu = b;
    }
    assert_non_null(tu);
    assert_string_equal(nx_json_str(tu, "name"), "get_weather");
    assert_true(strncmp(nx_json_str(tu, "id"), "toolu_", 6) == 0);
    assert_string_equal(nx_json_str(json_object_get(tu, "input"), "city"), "Paris");
    assert_int_equal(json_array_size(json_object_get(json_object_get(tu, "input"), "days")), 2);
    snprintf(id, sizeof id, "%s", nx_json_str(tu, "id"));

    json_array_append(t.msgs, o1.message);
    json_array_append_new(t.msgs, json_pack("{s:s, s:[{s:s, s:s, s:s}]}", "role", "user", "content", "type",
                                          "tool_result", "tool_use_id", id, "content", "sunny, 21C"));
    run_call(&t.e, t.p, &req, &o2);
    assert_int_equal(o2.rc, 0);
    assert_string_equal(message_text(o2.message), "hello from fake");
    r = last_request();
    m = json_object_get(json_object_get(r, "body"), "messages");
    assert_int_equal(json_array_size(m), 3);
    b = json_array_get(json_object_get(json_array_get(m, 2), "content"), 0);
    tu = json_pack("{s:s, s:s, s:s}", "type", "tool_result", "tool_use_id", id, "content", "sunny, 21C");
    assert_true(json_equal(b, tu));
    json_decref(tu);
    b = json_array_get(json_object_get(json_array_get(m, 1), "content"), 1);
    assert_string_equal(nx_json_str(b, "type"), "tool_use");
    assert_string_equal(nx_json_str(b, "id"), id);
    assert_string_equal(nx_json_str(json_object_get(b, "input"), "city"), "Paris");
    json_decref(r);
    outcome_cleanup(&o1);
    outcome_cleanup(&o2);
    json_decref(tools);
    one_close(&t);
}

static void test_anthropic_maps_errors(void **state)
{
    static const struct err_case cases[] = {
        {"[{\"error\": {\"status\": 400, \"type\": \"invalid_request_error\", \"message\": \"bad\"}}]", KEY,
         NX_EINVAL, 400, "invalid_request_error", -1, false},
        {"[]", "wrong-key-sk-ant-secret", NX_EPERM, 401, "authentication_error", -1, false},
        {"[{\"error\": {\"status\": 429, \"type\": \"rate_limit_error\", \"message\": \"slow down\","
         " \"retry_after\": 2}}]", KEY, NX_EAGAIN, 429, "rate_limit_error", 2000, true},
        {"[{\"error\": {\"status\": 500, \"type\": \"api_error\", \"message\": \"boom\"}}]", KEY, NX_EAGAIN,
         500, "api_error", -1, true},
        {"[{\"error\": {\"status\": 529, \"type\": \"overloaded_error\", \"message\": \"Overloaded\","
         " \"retry_after_ms\": 150}}]", KEY, NX_EAGAIN, 529, "overloaded_error", 150, true},
    };
    (void)state;
    check_err_cases("anthropic", "claude-test", cases, NX_ARRAY_LEN(cases), "secret");
}

static void test_anthropic_error_event_mid_stream(void **state)
{
    (void)state;
    check_error_mid_stream("anthropic", KEY, "claude-test",
                           "[{\"text\": \"partial answer here\", \"chunks\": 3,"
                           " \"error_midstream\": \"overloaded_error\"}]",
                           "overloaded_error");
}

static void test_anthropic_cancel_mid_stream(void **state)
{
    struct one t;
    struct outcome o = {0};
    struct nx_llm_request req = {.model = "claude-test", .temperature = -1, .stream = true};

    (void)state;
    check_cancel_in_on_text("anthropic", KEY, "claude-test",
                            "[{\"text\": \"one two three four five six seven eight nine ten\","
                            " \"chunks\": 10, \"delay_ms\": 200}]",
                            2, 1500);

    /* and from outside, between deltas */
    one_open(&t, "anthropic", "anthropic", KEY, 0,
             "[{\"text\": \"one two three four five six\", \"chunks\": 6, \"delay_ms\": 200}]", "hi");
    req.messages = t.msgs;
    o.call = nx_llm_start(t.p, &req, callbacks(&o));
    run_until(&t.e.loop, &o.ndeltas, 1, 5000);
    assert_int_equal(o.ndone, 0);
    nx_llm_cancel(o.call);
    run_until(&t.e.loop, &o.ndone, 1, 2000);
    assert_int_equal(o.ndone, 1);
    assert_int_equal(o.rc, NX_ECANCELED);
    run_until(&t.e.loop, NULL, 0, 200);
    assert_int_equal(o.ndone, 1);
    outcome_cleanup(&o);
    one_close(&t);
}

static void test_anthropic_stream_answered_whole(void **state)
{
    (void)state;
    check_stream_answered_whole("anthropic", KEY, "claude-test");
}

static void test_anthropic_stream_ended_then_cut(void **state)
{
    (void)state;
    check_stream_ended_then_cut("anthropic", KEY, "claude-test");
}

static void test_anthropic_request_deadline(void **state)
{
    (void)state;
    check_request_deadline("anthropic", KEY, "claude-test", 300, false);
}

static void test_anthropic_bad_request_fails_later_not_inside_start(void **state)
{
    struct env e;
    struct outcome o = {0};
    struct nx_llm_request req = {.model = "claude-test", .messages = NULL, .temperature = -1};
    struct nx_llm_provider *p;

    (void)state;
    env_init(&e);
    p = provider(&e, "anthropic", "anthropic", KEY, 0, NULL);
    run_call(&e, p, &req, &o);
    assert_int_equal(o.rc, NX_EINVAL);
    assert_string_equal(o.error_type, "invalid_request");
    outcome_cleanup(&o);
    nx_llm_provider_free(p);
    env_cleanup(&e);
}

static void nop_text(const char *d, size_t n, void *u)
{
    struct nx_buf *b = u;
    nx_buf_append(b, d, n);
}

/* The stream parser alone: thinking blocks are kept, bytes may arrive one at a time, and a
 * stream that stops before message_stop is an error. */
static void test_anthropic_stream_parser_edges(void **state)
{
    static const char sse[] =
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":"
        "\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-x\",\"stop_reason\":null,"
        "\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n"
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":"
        "{\"type\":\"thinking\",\"thinking\":\"\"}}\n\n"
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":"
        "{\"type\":\"thinking_delta\",\"thinking\":\"hmm\"}}\n\n"
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":"
        "{\"type\":\"signature_delta\",\"signature\":\"sig\"}}\n\n"
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n"
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":"
        "{\"type\":\"text\",\"text\":\"\"}}\n\n"
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":"
        "{\"type\":\"text_delta\",\"text\":\"h\\u00e9llo\"}}\n\n"
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n"
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"max_tokens\"},"
        "\"usage\":{\"output_tokens\":9}}\n\n"
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
    struct nx_buf text = NX_BUF_INIT;
    struct nx_anthropic_stream *s = nx_anthropic_stream_new(nop_text, &text);
    struct nx_llm_resp r;
    json_t *b0;

    (void)state;
    memset(&r, 0, sizeof r);
    for (size_t i = 0; i < sizeof sse - 1; i++) /* 1 once message_stop has come */
        assert_int_equal(nx_anthropic_stream_feed(s, sse + i, 1), i + 1 < sizeof sse - 1 ? 0 : 1);
    assert_int_equal(nx_anthropic_stream_finish(s, &r), 0);
    assert_int_equal(r.stop, NX_LLM_STOP_MAX_TOKENS);
    assert_int_equal(r.usage.output_tokens, 9);
    assert_int_equal(r.usage.input_tokens, 5);
    b0 = json_array_get(json_object_get(r.message, "content"), 0);
    assert_string_equal(nx_json_str(b0, "type"), "thinking");
    assert_string_equal(nx_json_str(b0, "thinking"), "hmm");
    assert_string_equal(nx_json_str(b0, "signature"), "sig");
    assert_string_equal(nx_buf_cstr(&text), "h\xc3\xa9llo");
    nx_llm_resp_cleanup(&r);
    nx_anthropic_stream_free(s);

    /* cut short */
    nx_buf_reset(&text);
    s = nx_anthropic_stream_new(nop_text, &text);
    assert_int_equal(nx_anthropic_stream_feed(s, sse, 400), 0);
    assert_int_equal(nx_anthropic_stream_finish(s, &r), NX_EPROTO);
    assert_string_equal(r.error_type, "invalid_response");
    assert_null(r.message);
    nx_llm_resp_cleanup(&r);
    nx_anthropic_stream_free(s);
    nx_buf_cleanup(&text);
}

/* A session's history is encoded once per message and reused (llm/frag_cache.c). */
static void test_anthropic_body_same_with_fragment_cache(void **state)
{
    (void)state;
    check_body_same_with_fragment_cache(nx_anthropic_build_body);
}

static void test_anthropic_long_stream_is_not_cut(void **state)
{
    (void)state;
    check_long_stream_is_not_cut("anthropic", KEY, "claude-test");
}

/* Stop reasons by name; one that cut the answer short for want of room counts as max_tokens
 * (OpenAI's "length"), and unknown or newer ones as other. */
static void test_anthropic_stop_reasons(void **state)
{
    (void)state;
    assert_int_equal(nx_llm_stop_from_anthropic("end_turn"), NX_LLM_STOP_END_TURN);
    assert_int_equal(nx_llm_stop_from_anthropic("tool_use"), NX_LLM_STOP_TOOL_USE);
    assert_int_equal(nx_llm_stop_from_anthropic("max_tokens"), NX_LLM_STOP_MAX_TOKENS);
    assert_int_equal(nx_llm_stop_from_anthropic("model_context_window_exceeded"), NX_LLM_STOP_MAX_TOKENS);
    assert_int_equal(nx_llm_stop_from_anthropic("stop_sequence"), NX_LLM_STOP_STOP_SEQUENCE);
    assert_int_equal(nx_llm_stop_from_anthropic("refusal"), NX_LLM_STOP_REFUSAL);
    assert_int_equal(nx_llm_stop_from_anthropic("pause_turn"), NX_LLM_STOP_OTHER);
    assert_int_equal(nx_llm_stop_from_anthropic(NULL), NX_LLM_STOP_OTHER);
}

static void test_anthropic_stream_ended_but_body_held_open(void **state)
{
    (void)state;
    check_stream_ended_but_body_held_open("anthropic", KEY, "claude-test");
    check_stream_stalled_behind_keepalives("anthropic", KEY, "claude-test");
}

static void no_text(const char *delta, size_t len, void *udata)
{
    (void)delta;
    (void)len;
    (void)udata;
}

/* The Messages API wants a user message's tool_result blocks first, no blank text, and no
 * other provider's reasoning; a usage count given as null is not a zero. */
static void test_anthropic_body_as_the_api_wants_it(void **state)
{
    (void)state;
    json_t *msgs = json_pack("[{s:s, s:s}, {s:s, s:[{s:s, s:s}, {s:s, s:s}, {s:s, s:s, s:s, s:o}]},"
                             " {s:s, s:[{s:s, s:s}, {s:s, s:s}, {s:s, s:s, s:s}]}]",
                             "role", "user", "content", "hi",
                             "role", "assistant", "content", "type", "reasoning", "text", "hmm", "type",
                             "text", "text", " \n", "type", "tool_use", "id", "t1", "name", "f", "input",
                             json_object(), "role", "user", "content", "type", "text", "text", "also this",
                             "type", "text", "text", "", "type", "tool_result", "tool_use_id", "t1",
                             "content", "ok");
    struct nx_llm_request req = {.model = "claude-test", .temperature = -1, .messages = msgs};
    struct nx_buf body = NX_BUF_INIT;
    const char *why = NULL;
    assert_int_equal(nx_anthropic_build_body(&req, &body, &why), 0);
    json_t *b = json_loads(nx_buf_cstr(&body), 0, NULL);
    json_t *sent = json_object_get(b, "messages");
    json_t *call = json_object_get(json_array_get(sent, 1), "content");
    assert_int_equal(json_array_size(call), 1);
    assert_string_equal(nx_json_str(json_array_get(call, 0), "type"), "tool_use");
    json_t *res = json_object_get(json_array_get(sent, 2), "content");
    assert_int_equal(json_array_size(res), 2);
    assert_string_equal(nx_json_str(json_array_get(res, 0), "type"), "tool_result");
    assert_string_equal(nx_json_str(json_array_get(res, 1), "text"), "also this");
    json_decref(b);
    json_decref(msgs);
    nx_buf_cleanup(&body);

    /* usage: message_delta's null counts leave message_start's as they were */
    struct nx_anthropic_stream *st = nx_anthropic_stream_new(no_text, NULL);
    static const char sse[] =
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"role\":"
        "\"assistant\",\"content\":[],\"model\":\"c\",\"usage\":{\"input_tokens\":25,"
        "\"output_tokens\":1}}}\n\n"
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,"
        "\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n"
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":"
        "{\"type\":\"text_delta\",\"text\":\"hi\"}}\n\n"
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n"
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":"
        "\"end_turn\"},\"usage\":{\"input_tokens\":null,\"output_tokens\":7}}\n\n"
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
    struct nx_llm_resp r;
    memset(&r, 0, sizeof r);
    assert_int_equal(nx_anthropic_stream_feed(st, sse, sizeof sse - 1), 1);
    assert_int_equal(nx_anthropic_stream_finish(st, &r), 0);
    assert_int_equal(r.usage.input_tokens, 25);
    assert_int_equal(r.usage.output_tokens, 7);
    nx_llm_resp_cleanup(&r);
    nx_anthropic_stream_free(st);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_anthropic_body_same_with_fragment_cache),
        cmocka_unit_test(test_anthropic_answers_text_whole),
        cmocka_unit_test(test_anthropic_streams_deltas_in_order),
        cmocka_unit_test(test_anthropic_request_has_cache_control_and_headers),
        cmocka_unit_test(test_anthropic_tool_use_round_trip),
        cmocka_unit_test(test_anthropic_maps_errors),
        cmocka_unit_test(test_anthropic_error_event_mid_stream),
        cmocka_unit_test(test_anthropic_cancel_mid_stream),
        cmocka_unit_test(test_anthropic_request_deadline),
        cmocka_unit_test(test_anthropic_stream_ended_then_cut),
        cmocka_unit_test(test_anthropic_stream_answered_whole),
        cmocka_unit_test(test_anthropic_body_as_the_api_wants_it),

        cmocka_unit_test(test_anthropic_long_stream_is_not_cut),
        cmocka_unit_test(test_anthropic_stream_ended_but_body_held_open),
        cmocka_unit_test(test_anthropic_stop_reasons),
        cmocka_unit_test(test_anthropic_bad_request_fails_later_not_inside_start),
        cmocka_unit_test(test_anthropic_stream_parser_edges),
    };
    return run_on_both_engines(tests, sizeof tests / sizeof *tests, fake_group_setup, fake_group_teardown);
}
