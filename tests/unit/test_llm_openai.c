#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "llm_cases.h"
#include "llm_fake.h"

/* The OpenAI-compatible provider against tests/fakes/fake_llm.py: Chat Completions whole and
 * streamed, translation of the canonical conversation both ways (tool_calls, tool messages),
 * usage, errors, mid-stream errors, cancel, deadline. */

#define KEY "test-key"

static json_t *weather_tools(void)
{
    return json_pack("[{s:s, s:s, s:{s:s, s:{s:{s:s}}}}]", "name", "get_weather", "description",
                     "Weather for a city", "input_schema", "type", "object", "properties", "city", "type",
                     "string");
}

static void test_openai_answers_text_whole(void **state)
{
    struct one t;
    struct outcome o = {0};
    json_t *r, *b, *h;
    struct nx_llm_request req = {.model = "gpt-test", .system = "Be brief.", .temperature = -1,
                                 .user = "u1"};

    (void)state;
    one_open(&t, "openai", "openai", KEY, 0,
             "[{\"usage\": {\"prompt_tokens\": 50, \"completion_tokens\": 5,"
             " \"prompt_tokens_details\": {\"cached_tokens\": 20}}}]",
             "hi");
    req.messages = t.msgs;
    run_call(&t.e, t.p, &req, &o);
    assert_int_equal(o.rc, 0);
    assert_string_equal(message_text(o.message), "hello from fake");
    assert_int_equal(o.stop, NX_LLM_STOP_END_TURN);
    assert_string_equal(o.model, "gpt-test");
    assert_int_equal(o.usage.input_tokens, 30);
    assert_int_equal(o.usage.cache_read_tokens, 20);
    assert_int_equal(o.usage.output_tokens, 5);
    r = last_request();
    h = json_object_get(r, "headers");
    b = json_object_get(r, "body");
    assert_string_equal(nx_json_str(r, "path"), "/v1/chat/completions");
    assert_string_equal(nx_json_str(h, "authorization"), "Bearer " KEY);
    assert_null(json_object_get(h, "x-api-key"));
    assert_string_equal(nx_json_str(h, "content-type"), "application/json");
    assert_null(json_object_get(b, "stream"));
    assert_null(json_object_get(b, "stream_options"));
    assert_null(json_object_get(b, "temperature"));
    assert_string_equal(nx_json_str(b, "user"), "u1");
    assert_int_equal(json_integer_value(json_object_get(b, "max_tokens")), 4096);
    assert_string_equal(nx_json_str(json_array_get(json_object_get(b, "messages"), 0), "role"), "system");
    assert_string_equal(nx_json_str(json_array_get(json_object_get(b, "messages"), 0), "content"),
                        "Be brief.");
    assert_string_equal(nx_json_str(json_array_get(json_object_get(b, "messages"), 1), "content"), "hi");
    json_decref(r);
    outcome_cleanup(&o);
    one_close(&t);
}

static void test_openai_streams_deltas_and_usage(void **state)
{
    struct one t;
    struct outcome o = {0};
    json_t *r, *b;
    struct nx_llm_request req = {.model = "gpt-test", .temperature = 0.2, .stream = true};

    (void)state;
    one_open(&t, "openai", "openai", KEY, 0,
             "[{\"text\": \"The quick brown fox jumps over the lazy dog\", \"chunks\": 7,"
             " \"usage\": {\"prompt_tokens\": 12, \"completion_tokens\": 9}}]",
             "tell me");
    req.messages = t.msgs;
    run_call(&t.e, t.p, &req, &o);
    assert_int_equal(o.rc, 0);
    assert_true(o.ndeltas >= 7);
    assert_string_equal(nx_buf_cstr(&o.text), "The quick brown fox jumps over the lazy dog");
    assert_string_equal(message_text(o.message), nx_buf_cstr(&o.text));
    assert_int_equal(o.stop, NX_LLM_STOP_END_TURN);
    assert_int_equal(o.usage.input_tokens, 12);
    assert_int_equal(o.usage.output_tokens, 9);
    r = last_request();
    b = json_object_get(r, "body");
    assert_true(json_is_true(json_object_get(b, "stream")));
    assert_true(json_is_true(json_object_get(json_object_get(b, "stream_options"), "include_usage")));
    assert_true(json_real_value(json_object_get(b, "temperature")) == 0.2);
    assert_string_equal(nx_json_str(json_object_get(r, "headers"), "accept"), "text/event-stream");
    json_decref(r);
    outcome_cleanup(&o);
    one_close(&t);
}

/* Streamed tool_calls deltas become a tool_use block; the next request carries the assistant
 * tool_calls and a tool message in the exact wire shape (the fake checks they pair up). */
static void test_openai_tool_use_round_trip(void **state)
{
    struct one t;
    struct outcome o1 = {0}, o2 = {0};
    json_t *tools = weather_tools(), *tu, *r, *m, *want;
    struct nx_llm_request req = {.model = "gpt-test", .tools = tools, .temperature = -1, .stream = true};
    char id[128];

    (void)state;
    one_open(&t, "openai", "openai", KEY, 0,
             "[{\"tool_use\": {\"name\": \"get_weather\", \"input\": {\"city\": \"Paris\"}}}]", "weather?");
    req.messages = t.msgs;
    run_call(&t.e, t.p, &req, &o1);
    assert_int_equal(o1.rc, 0);
    assert_int_equal(o1.stop, NX_LLM_STOP_TOOL_USE);
    assert_int_equal(json_array_size(json_object_get(o1.message, "content")), 1);
    tu = json_array_get(json_object_get(o1.message, "content"), 0);
    assert_string_equal(nx_json_str(tu, "type"), "tool_use");
    assert_string_equal(nx_json_str(tu, "name"), "get_weather");
    assert_true(strncmp(nx_json_str(tu, "id"), "call_", 5) == 0);
    assert_string_equal(nx_json_str(json_object_get(tu, "input"), "city"), "Paris");
    assert_null(json_object_get(tu, "input_error"));
    snprintf(id, sizeof id, "%s", nx_json_str(tu, "id"));
    r = last_request();
    want = json_pack("[{s:s, s:{s:s, s:s, s:{s:s, s:{s:{s:s}}}}}]", "type", "function", "function", "name",
                     "get_weather", "description", "Weather for a city", "parameters", "type", "object",
                     "properties", "city", "type", "string");
    assert_true(json_equal(json_object_get(json_object_get(r, "body"), "tools"), want));
    json_decref(want);
    json_decref(r);

    json_array_append(t.msgs, o1.message);
    json_array_append_new(t.msgs, json_pack("{s:s, s:[{s:s, s:s, s:s}, {s:s, s:s}]}", "role", "user",
                                            "content", "type", "tool_result", "tool_use_id", id, "content",
                                            "sunny", "type", "text", "text", "and tomorrow?"));
    run_call(&t.e, t.p, &req, &o2);
    assert_int_equal(o2.rc, 0);
    r = last_request();
    m = json_object_get(json_object_get(r, "body"), "messages");
    assert_int_equal(json_array_size(m), 4);
    want = json_pack("{s:s, s:n, s:[{s:s, s:s, s:{s:s, s:s}}]}", "role", "assistant", "content", "tool_calls",
                     "id", id, "type", "function", "function", "name", "get_weather", "arguments",
                     "{\"city\":\"Paris\"}");
    assert_true(json_equal(json_array_get(m, 1), want));
    json_decref(want);
    want = json_pack("{s:s, s:s, s:s}", "role", "tool", "tool_call_id", id, "content", "sunny");
    assert_true(json_equal(json_array_get(m, 2), want));
    json_decref(want);
    want = json_pack("{s:s, s:s}", "role", "user", "content", "and tomorrow?");
    assert_true(json_equal(json_array_get(m, 3), want));
    json_decref(want);
    json_decref(r);
    outcome_cleanup(&o1);
    outcome_cleanup(&o2);
    json_decref(tools);
    one_close(&t);
}

/* Arguments that are not JSON reach the agent as an error on the block, and go back as sent. */
static void test_openai_unparsable_arguments_are_kept(void **state)
{
    struct one t;
    struct outcome o1 = {0}, o2 = {0};
    json_t *tu, *r, *call, *wire;
    struct nx_llm_request req = {.model = "gpt-test", .temperature = -1};

    (void)state;
    one_open(&t, "openai", "openai", KEY, 0,
             "[{\"raw_arguments\": \"{\\\"city\\\": Par\", \"raw_name\": \"get_weather\"}]", "go");
    req.messages = t.msgs;
    run_call(&t.e, t.p, &req, &o1);
    assert_int_equal(o1.rc, 0);
    assert_int_equal(o1.stop, NX_LLM_STOP_TOOL_USE);
    tu = json_array_get(json_object_get(o1.message, "content"), 0);
    assert_string_equal(nx_json_str(tu, "type"), "tool_use");
    assert_non_null(nx_json_str(tu, "input_error"));
    assert_string_equal(nx_json_str(tu, "input_raw"), "{\"city\": Par");
    assert_int_equal(json_object_size(json_object_get(tu, "input")), 0);

    json_array_append(t.msgs, o1.message);
    json_array_append_new(t.msgs, json_pack("{s:s, s:[{s:s, s:s, s:s, s:b}]}", "role", "user", "content",
                                            "type", "tool_result", "tool_use_id", nx_json_str(tu, "id"),
                                            "content", "bad arguments", "is_error", 1));
    run_call(&t.e, t.p, &req, &o2);
    assert_int_equal(o2.rc, 0);
    r = last_request();
    wire = json_object_get(json_object_get(r, "body"), "messages");
    call = json_array_get(json_object_get(json_array_get(wire, 1), "tool_calls"), 0);
    assert_string_equal(nx_json_str(json_object_get(call, "function"), "arguments"), "{\"city\": Par");
    assert_string_equal(nx_json_str(json_array_get(wire, 2), "content"), "Error: bad arguments");
    json_decref(r);
    outcome_cleanup(&o1);
    outcome_cleanup(&o2);
    one_close(&t);
}

/* "null" arguments are no arguments, as "" is ({}); a JSON value that is not an object is
 * still an error on the block. */
static void test_openai_null_arguments_are_none(void **state)
{
    static const struct {
        const char *args;
        bool is_error;
        const char *why; /* in input_error */
    } cases[] = {{"null", false, NULL}, {" null ", false, NULL}, {"[1]", true, "not a JSON object"},
                 {"42", true, "not a JSON object"},
                 /* a NUL (a path cut short at it would name another file): refused in plain words */
                 {"{\\\"path\\\": \\\"a\\\\u0000b\\\"}", true, "a NUL character"}};

    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct one t;
        struct outcome o = {0};
        struct nx_llm_request req = {.model = "gpt-test", .temperature = -1};
        char script[160];
        snprintf(script, sizeof script, "[{\"raw_arguments\": \"%s\", \"raw_name\": \"get_weather\"}]",
                 cases[i].args);
        one_open(&t, "openai", "openai", KEY, 0, script, "go");
        req.messages = t.msgs;
        run_call(&t.e, t.p, &req, &o);
        assert_int_equal(o.rc, 0);
        json_t *tu = json_array_get(json_object_get(o.message, "content"), 0);
        assert_true(json_is_object(json_object_get(tu, "input")));
        assert_int_equal(json_object_size(json_object_get(tu, "input")), 0);
        if (cases[i].is_error)
            assert_non_null(strstr(nx_json_str(tu, "input_error"), cases[i].why));
        else
            assert_null(json_object_get(tu, "input_error"));
        outcome_cleanup(&o);
        one_close(&t);
    }
}

/* No key (Ollama, vLLM): no Authorization header at all. */
static void test_openai_empty_key_sends_no_authorization(void **state)
{
    struct one t;
    struct outcome o = {0};
    json_t *r;
    struct nx_llm_request req = {.model = "llama3", .temperature = -1};

    (void)state;
    one_open(&t, "ollama", "openai", "", 0, NULL, "hi");
    req.messages = t.msgs;
    run_call(&t.e, t.p, &req, &o);
    /* the fake checks auth like OpenAI does */
    assert_int_equal(o.rc, NX_EPERM);
    assert_int_equal(o.http_status, 401);
    assert_true(strstr(o.error_message, "You didn't provide an API key") != NULL);
    r = last_request();
    assert_null(json_object_get(json_object_get(r, "headers"), "authorization"));
    json_decref(r);
    outcome_cleanup(&o);

    fake_post("/_config", "{\"auth\": false}");
    memset(&o, 0, sizeof o);
    run_call(&t.e, t.p, &req, &o);
    assert_int_equal(o.rc, 0);
    outcome_cleanup(&o);
    one_close(&t);
}

static void test_openai_maps_errors(void **state)
{
    static const struct err_case cases[] = {
        {"[{\"error\": {\"status\": 400, \"type\": \"invalid_request_error\", \"message\": \"bad\"}}]", KEY,
         NX_EINVAL, 400, "invalid_request_error", -1, false},
        {"[]", "sk-wrong-secret-key-123456", NX_EPERM, 401, "invalid_request_error", -1, false},
        {"[{\"error\": {\"status\": 429, \"type\": \"rate_limit_error\", \"message\": \"slow down\","
         " \"retry_after\": 1, \"retry_after_ms\": 250}}]", KEY, NX_EAGAIN, 429, "requests", 250, true},
        {"[{\"error\": {\"status\": 429, \"type\": \"rate_limit_error\","
         " \"openai_type\": \"insufficient_quota\", \"code\": \"insufficient_quota\","
         " \"message\": \"quota\"}}]", KEY, NX_EPERM, 429, "insufficient_quota", -1, false},
        {"[{\"error\": {\"status\": 500, \"type\": \"api_error\", \"message\": \"boom\"}}]", KEY, NX_EAGAIN,
         500, "server_error", -1, true},
        {"[{\"error\": {\"status\": 503, \"type\": \"overloaded_error\", \"message\": \"busy\"}}]", KEY,
         NX_EAGAIN, 503, "server_error", -1, true},
    };
    (void)state;
    check_err_cases("openai", "gpt-test", cases, NX_ARRAY_LEN(cases), "secret-key");
}

static void test_openai_error_mid_stream(void **state)
{
    (void)state;
    check_error_mid_stream("openai", KEY, "gpt-test",
                           "[{\"text\": \"partial answer\", \"chunks\": 2,"
                           " \"error_midstream\": \"api_error\"}]",
                           "server_error");
}

static void test_openai_cancel_mid_stream(void **state)
{
    (void)state;
    check_cancel_in_on_text("openai", KEY, "gpt-test",
                            "[{\"text\": \"one two three four five six seven eight\", \"chunks\": 8,"
                            " \"delay_ms\": 200}]",
                            1, 1000);
}

static void test_openai_request_deadline(void **state)
{
    (void)state;
    check_request_deadline("openai", KEY, "gpt-test", 250, true);
}

static void count_text(const char *d, size_t n, void *u)
{
    (void)d;
    *(size_t *)u += n;
}

/* The stream parser alone: parallel tool calls by index, a usage-only last chunk, a stream that
 * ends without [DONE] or finish_reason. */
static void test_openai_stream_parser_edges(void **state)
{
    static const char sse[] =
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"tool_calls\":[{\"index\":0,"
        "\"id\":\"call_a\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"\"}},"
        "{\"index\":1,\"id\":\"call_b\",\"type\":\"function\",\"function\":{\"name\":\"g\","
        "\"arguments\":\"{\\\"x\\\"\"}}]},"
        "\"finish_reason\":null}],\"model\":\"m1\"}\n\n"
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"function\":"
        "{\"arguments\":"
        "\":2}\"}}]},\"finish_reason\":null}]}\n\n"
        "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n"
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\n"
        "data: [DONE]\n\n";
    size_t ntext = 0;
    struct nx_openai_stream *s = nx_openai_stream_new(count_text, &ntext);
    struct nx_llm_resp r;
    json_t *c;

    (void)state;
    memset(&r, 0, sizeof r);
    for (size_t i = 0; i < sizeof sse - 1; i += 7) { /* 1 once [DONE] has come */
        size_t n = sizeof sse - 1 - i < 7 ? sizeof sse - 1 - i : 7;
        assert_int_equal(nx_openai_stream_feed(s, sse + i, n), i + n < sizeof sse - 1 ? 0 : 1);
    }
    assert_int_equal(nx_openai_stream_finish(s, &r), 0);
    assert_int_equal(r.stop, NX_LLM_STOP_TOOL_USE);
    assert_int_equal(r.usage.input_tokens, 3);
    assert_int_equal(r.usage.output_tokens, 4);
    assert_string_equal(r.model, "m1");
    c = json_object_get(r.message, "content");
    assert_int_equal(json_array_size(c), 2);
    assert_string_equal(nx_json_str(json_array_get(c, 0), "id"), "call_a");
    assert_int_equal(json_object_size(json_object_get(json_array_get(c, 0), "input")), 0);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(json_array_get(c, 1), "input"),
                                                        "x")), 2);
    assert_int_equal(ntext, 0);
    nx_llm_resp_cleanup(&r);
    nx_openai_stream_free(s);

    s = nx_openai_stream_new(count_text, &ntext);
    assert_int_equal(nx_openai_stream_feed(s, sse, 200), 0);
    assert_int_equal(nx_openai_stream_finish(s, &r), NX_EPROTO);
    assert_null(r.message);
    nx_llm_resp_cleanup(&r);
    nx_openai_stream_free(s);
}

/* The fast reader of common chunks takes exactly those (and decodes their escapes as jansson
 * does); anything else is left to jansson, and both readers give the same answer. */
static void collect_text(const char *d, size_t n, void *u)
{
    nx_buf_append(u, d, n);
}

static void test_openai_fast_chunks_read_as_jansson_does(void **state)
{
    static const char *const taken[] = {
        "{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"m\","
        "\"system_fingerprint\":null,\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\","
        "\"content\":\"\",\"refusal\":null},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}",
        " { \"choices\" : [ { \"delta\" : { \"content\" : \"a\\n\\\"b\\\\ \\/ \\t\" } } ] } \r\n",
        "{\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":null,\"content\":\"x\"},"
        "\"finish_reason\":\"\"}]}",
        "{\"choices\":[]}",
        "{}",
        "{\"choices\":[],\"usage\":{\"prompt_tokens\":120,\"completion_tokens\":7,\"total_tokens\":127,"
        "\"prompt_tokens_details\":{\"cached_tokens\":100,\"audio_tokens\":0},"
        "\"completion_tokens_details\":{\"reasoning_tokens\":0}}}",
    };
    static const char *const left[] = {
        "{\"choices\":[{\"delta\":{\"content\":\"caf\\u00e9\"}}]}",            /* \u escape */
        "{\"choices\":[{\"delta\":{\"tool_calls\":[]}}]}",                        /* a tool call */
        "{\"choices\":[],\"usage\":{\"prompt_tokens\":1.0}}",                        /* a real count */
        "{\"usage\":{\"prompt_tokens\":1,\"x\":[1]}}",                                  /* an array */
        "{\"usage\":{\"prompt_tokens\":1,\"prompt_tokens\":2}}",                       /* repeated */
        "{\"choices\":[{\"index\":1,\"delta\":{\"content\":\"x\"}}]}",            /* choice 1 */
        "{\"choices\":[{\"delta\":{}},{\"delta\":{}}]}",                             /* two */
        "{\"created\":1.5,\"choices\":[]}",                                         /* a real */
        "{\"error\":{\"message\":\"x\"}}",
        "{\"choices\":[{\"delta\":{\"content\":\"a\",\"content\":\"b\"}}]}",     /* repeated */
        "{\"choices\":[]} x", "{\"choices\":[]", "[]", "{\"a\":01}", "{\"a\":\"\x01\"}",
    };
    struct nx_openai_fast f;
    (void)state;
    for (size_t i = 0; i < sizeof taken / sizeof *taken; i++)
        assert_true(nx_openai_fast_chunk(taken[i], strlen(taken[i]), &f));
    assert_true(nx_openai_fast_chunk(taken[1], strlen(taken[1]), &f));
    assert_true(f.content_esc && f.has_choice && !f.model);
    const char *u = taken[sizeof taken / sizeof *taken - 1];
    assert_true(nx_openai_fast_chunk(u, strlen(u), &f));
    assert_true(f.has_usage && f.prompt_tokens == 120 && f.cached_tokens == 100 && f.completion_tokens == 7);
    for (size_t i = 0; i < sizeof left / sizeof *left; i++)
        assert_false(nx_openai_fast_chunk(left[i], strlen(left[i]), &f));

    /* a whole stream both ways: the same text, model, stop reason and message */
    struct nx_buf sse = NX_BUF_INIT;
    for (size_t i = 0; i < sizeof taken / sizeof *taken; i++)
        nx_buf_printf(&sse, "data: %s\n\n", taken[i]);
    nx_buf_puts(&sse, "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}]}\n\n"
                      "data: [DONE]\n\n");
    struct nx_buf text[2] = {NX_BUF_INIT, NX_BUF_INIT};
    struct nx_llm_resp r[2];
    for (int k = 0; k < 2; k++) {
        nx_openai_fast_enabled = k == 0;
        struct nx_openai_stream *s = nx_openai_stream_new(collect_text, &text[k]);
        memset(&r[k], 0, sizeof r[k]);
        assert_int_equal(nx_openai_stream_feed(s, sse.data, sse.len), 1);
        assert_int_equal(nx_openai_stream_finish(s, &r[k]), 0);
        nx_openai_stream_free(s);
    }
    nx_openai_fast_enabled = true;
    assert_string_equal(nx_buf_cstr(&text[0]), "a\n\"b\\ / \tx");
    assert_string_equal(nx_buf_cstr(&text[0]), nx_buf_cstr(&text[1]));
    assert_string_equal(r[0].model, "m");
    assert_string_equal(r[1].model, "m");
    assert_int_equal(r[0].stop, NX_LLM_STOP_MAX_TOKENS);
    assert_int_equal(r[1].stop, NX_LLM_STOP_MAX_TOKENS);
    assert_true(json_equal(r[0].message, r[1].message));
    for (int k = 0; k < 2; k++) {
        nx_llm_resp_cleanup(&r[k]);
        nx_buf_cleanup(&text[k]);
    }
    nx_buf_cleanup(&sse);
}

/* Tool call deltas without an index (Gemini's OpenAI-compatible endpoint) and two calls that
 * share index 0 (providers that number every call 0) become separate calls, in order. */
static json_t *parse_calls(const char *sse)
{
    size_t ntext = 0;
    struct nx_openai_stream *s = nx_openai_stream_new(count_text, &ntext);
    struct nx_llm_resp r;
    json_t *c;

    memset(&r, 0, sizeof r);
    assert_int_equal(nx_openai_stream_feed(s, sse, strlen(sse)), 1);
    assert_int_equal(nx_openai_stream_finish(s, &r), 0);
    assert_int_equal(r.stop, NX_LLM_STOP_TOOL_USE);
    c = json_incref(json_object_get(r.message, "content"));
    nx_llm_resp_cleanup(&r);
    nx_openai_stream_free(s);
    return c;
}

static void test_openai_tool_calls_without_or_sharing_an_index(void **state)
{
    static const char no_index[] =
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"tool_calls\":[{"
        "\"id\":\"g1\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"a\\\":\"}},"
        "{\"id\":\"g2\",\"type\":\"function\",\"function\":{\"name\":\"g\",\"arguments\":\"{}\"}}]}}]}\n\n"
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"id\":\"g1\",\"function\":"
        "{\"arguments\":\"1}\"}}]},\"finish_reason\":\"tool_calls\"}]}\n\n"
        "data: [DONE]\n\n";
    static const char same_index[] =
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"c1\","
        "\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"x\\\":1}\"}}]}}]}\n\n"
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"c2\","
        "\"function\":{\"name\":\"g\",\"arguments\":\"{\\\"y\\\"\"}}]}}]}\n\n"
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,"
        "\"function\":{\"arguments\":\":2}\"}}]},\"finish_reason\":\"tool_calls\"}]}\n\n"
        "data: [DONE]\n\n";
    json_t *c;

    (void)state;
    c = parse_calls(no_index);
    assert_int_equal(json_array_size(c), 2);
    assert_string_equal(nx_json_str(json_array_get(c, 0), "id"), "g1");
    assert_string_equal(nx_json_str(json_array_get(c, 0), "name"), "f");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(json_array_get(c, 0), "input"),
                                                        "a")), 1);
    assert_string_equal(nx_json_str(json_array_get(c, 1), "name"), "g");
    json_decref(c);

    /* neither index nor id (Gemini behind some proxies): a delta naming a function starts a call */
    c = parse_calls("data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"id\":\"\","
                    "\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}},{\"id\":\"\",\"function\":"
                    "{\"name\":\"g\",\"arguments\":\"{\\\"z\\\":\"}}]}}]}\n\n"
                    "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"function\":"
                    "{\"arguments\":\"3}\"}}]},\"finish_reason\":\"tool_calls\"}]}\n\ndata: [DONE]\n\n");
    assert_int_equal(json_array_size(c), 2);
    assert_string_equal(nx_json_str(json_array_get(c, 0), "name"), "f");
    assert_string_equal(nx_json_str(json_array_get(c, 1), "name"), "g");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(json_array_get(c, 1), "input"),
                                                        "z")), 3);
    json_decref(c);

    c = parse_calls(same_index);
    assert_int_equal(json_array_size(c), 2);
    assert_string_equal(nx_json_str(json_array_get(c, 0), "id"), "c1");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(json_array_get(c, 0), "input"),
                                                        "x")), 1);
    assert_string_equal(nx_json_str(json_array_get(c, 1), "id"), "c2");
    assert_string_equal(nx_json_str(json_array_get(c, 1), "name"), "g");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(json_array_get(c, 1), "input"),
                                                        "y")), 2);
    json_decref(c);
}

/* Feeds a whole stream; the response (finish's rc in *rc). */
static struct nx_llm_resp parse_stream(const char *sse, int *rc)
{
    size_t ntext = 0;
    struct nx_openai_stream *s = nx_openai_stream_new(count_text, &ntext);
    struct nx_llm_resp r;

    memset(&r, 0, sizeof r);
    nx_openai_stream_feed(s, sse, strlen(sse));
    *rc = nx_openai_stream_finish(s, &r);
    nx_openai_stream_free(s);
    return r;
}

/* What OpenAI-compatible servers other than OpenAI send: DeepSeek's reasoning_content, kept
 * with a tool call and sent back with it (its thinking mode refuses the next request without);
 * arguments as an object; "" as finish_reason in every chunk (older Ollama), which ends
 * nothing; an error with a numeric code in a stream that began as 200 (OpenRouter, vLLM). */
static void test_openai_servers_other_than_openai(void **state)
{
    int rc;
    struct nx_llm_resp r;
    (void)state;

    r = parse_stream("data: {\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":\"Let me \"}}]}\n\n"
                     "data: {\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":\"check.\","
                     "\"tool_calls\":[{\"index\":0,\"id\":\"c1\",\"function\":{\"name\":\"f\","
                     "\"arguments\":{\"a\":1}}}]}}]}\n\n"
                     "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n"
                     "data: [DONE]\n\n", &rc);
    assert_int_equal(rc, 0);
    json_t *content = json_object_get(r.message, "content");
    assert_string_equal(nx_json_str(json_array_get(content, 0), "type"), "reasoning");
    assert_string_equal(nx_json_str(json_array_get(content, 0), "text"), "Let me check.");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(json_array_get(content, 1), "input"),
                                                        "a")), 1);
    /* sent back with the call */
    json_t *msgs = json_pack("[{s:s, s:s}, O, {s:s, s:[{s:s, s:s, s:s}]}]", "role", "user", "content", "hi",
                             r.message, "role", "user", "content", "type", "tool_result", "tool_use_id", "c1",
                             "content", "ok");
    struct nx_llm_request req = {.model = "deepseek-chat", .temperature = -1, .messages = msgs};
    struct nx_buf body = NX_BUF_INIT;
    const char *why = NULL;
    assert_int_equal(nx_openai_build_body(&req, &body, &why), 0);
    json_t *sent = json_loads(nx_buf_cstr(&body), 0, NULL);
    json_t *call_msg = json_array_get(json_object_get(sent, "messages"), 1);
    assert_string_equal(nx_json_str(call_msg, "reasoning_content"), "Let me check.");
    json_decref(sent);
    /* ... and to DeepSeek only (Groq, Cerebras refuse the field) */
    req.model = "llama-3.3-70b-versatile";
    nx_buf_reset(&body);
    assert_int_equal(nx_openai_build_body(&req, &body, &why), 0);
    assert_null(strstr(nx_buf_cstr(&body), "reasoning_content"));
    json_decref(msgs);
    nx_buf_cleanup(&body);
    nx_llm_resp_cleanup(&r);

    /* Groq's `reasoning` is not DeepSeek's: not kept (sent back, Groq would refuse it) */
    r = parse_stream("data: {\"choices\":[{\"index\":0,\"delta\":{\"reasoning\":\"hm\",\"tool_calls\":"
                     "[{\"index\":0,\"id\":\"c1\",\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}]},"
                     "\"finish_reason\":\"tool_calls\"}]}\n\ndata: [DONE]\n\n", &rc);
    assert_int_equal(rc, 0);
    content = json_object_get(r.message, "content");
    assert_string_equal(nx_json_str(json_array_get(content, 0), "type"), "tool_use");
    nx_llm_resp_cleanup(&r);

    /* without a tool call the reasoning is not kept */
    r = parse_stream("data: {\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":\"hm\",\"content\":"
                     "\"hi\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n", &rc);
    assert_int_equal(rc, 0);
    assert_int_equal(json_array_size(json_object_get(r.message, "content")), 1);
    nx_llm_resp_cleanup(&r);

    /* tool calls that end on another reason than tool_calls (TGI's eos_token) are tool calls */
    r = parse_stream("data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":"
                     "\"c1\",\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}]},"
                     "\"finish_reason\":\"eos_token\"}]}\n\ndata: [DONE]\n\n", &rc);
    assert_int_equal(rc, 0);
    assert_int_equal(r.stop, NX_LLM_STOP_TOOL_USE);
    nx_llm_resp_cleanup(&r);

    /* "" is no finish: a stream cut after it is not a whole answer */
    r = parse_stream("data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"par\"},"
                     "\"finish_reason\":\"\"}]}\n\n", &rc);
    assert_int_not_equal(rc, 0);
    nx_llm_resp_cleanup(&r);

    /* a numeric code in a 200 stream decides: 500 is the server's (retried), 403 is not */
    r = parse_stream("data: {\"error\":{\"type\":\"InternalServerError\",\"message\":\"boom\","
                     "\"code\":500}}\n\n", &rc);
    bool retry = false;
    assert_int_equal(nx_llm_classify(0, r.error_type, &retry), NX_EAGAIN);
    assert_true(retry);
    nx_llm_resp_cleanup(&r);
    r = parse_stream("data: {\"error\":{\"message\":\"flagged by moderation\",\"code\":403}}\n\n", &rc);
    assert_int_equal(nx_llm_classify(0, r.error_type, &retry), NX_EPERM);
    assert_false(retry);
    nx_llm_resp_cleanup(&r);

    /* Gemini's error body is an array; DeepSeek names its cached tokens apart */
    memset(&r, 0, sizeof r);
    static const char gem[] = "[{\"error\":{\"code\":400,\"message\":\"bad thing\",\"status\":"
                              "\"INVALID_ARGUMENT\"}}]";
    nx_openai_parse_error(400, gem, sizeof gem - 1, &r);
    assert_non_null(strstr(r.error_message, "bad thing"));
    nx_llm_resp_cleanup(&r);
    static const char ds[] = "{\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\","
                             "\"content\":\"x\"},\"finish_reason\":\"stop\"}],\"usage\":{"
                             "\"prompt_tokens\":2006,\"completion_tokens\":3,"
                             "\"prompt_cache_hit_tokens\":1920,\"prompt_cache_miss_tokens\":86}}";
    memset(&r, 0, sizeof r);
    assert_int_equal(nx_openai_parse_response(ds, sizeof ds - 1, &r), 0);
    assert_int_equal(r.usage.input_tokens, 86);
    assert_int_equal(r.usage.cache_read_tokens, 1920);
    nx_llm_resp_cleanup(&r);
    assert_int_equal(nx_llm_classify(402, "unknown_error", &retry), NX_EPERM); /* unpaid: the next target */
}

/* OpenAI's reasoning models take max_completion_tokens and no temperature; others max_tokens.
 * gpt-5-chat takes max_completion_tokens and a temperature. */
static void test_openai_reasoning_models_get_max_completion_tokens(void **state)
{
    static const char *const models[] = {"o3-mini", "gpt-5", "gpt-5-chat-latest", "gpt-4o", "llama3"};
    json_t *msgs = json_pack("[{s:s, s:s}]", "role", "user", "content", "hi");
    (void)state;
    for (size_t i = 0; i < 5; i++) {
        struct nx_llm_request req = {.model = models[i], .temperature = 0.5, .messages = msgs,
                                     .max_tokens = 99};
        struct nx_buf body = NX_BUF_INIT;
        const char *why = NULL;
        assert_int_equal(nx_openai_build_body(&req, &body, &why), 0);
        json_t *b = json_loads(nx_buf_cstr(&body), 0, NULL);
        bool is_reasoner = i < 3;
        const char *field = is_reasoner ? "max_completion_tokens" : "max_tokens";
        assert_int_equal(json_integer_value(json_object_get(b, field)), 99);
        assert_null(json_object_get(b, is_reasoner ? "max_tokens" : "max_completion_tokens"));
        assert_int_equal(json_object_get(b, "temperature") != NULL, i >= 2);
        json_decref(b);
        nx_buf_cleanup(&body);
    }
    json_decref(msgs);
}

/* A whole answer's end is found byte by byte, however it is cut: braces and quotes inside its
 * strings (escaped ones too) are text, and only the outermost close ends it. */
static void test_json_end_found_as_bytes_come(void **state)
{
    static const char text[] = " {\"a\":\"}\\\"{]\",\"b\":[1,{\"c\":\"\\\\\"}],\"d\":{}} ";
    size_t end = strrchr(text, '}') - text;

    (void)state;
    for (size_t cut = 1; cut <= 4; cut++) { /* fed 1, 2, 3, 4 bytes at a time */
        struct nx_json_end e = {0};
        size_t i;
        for (i = 0; i < sizeof text - 1; i += cut) {
            size_t n = i + cut > sizeof text - 1 ? sizeof text - 1 - i : cut;
            if (nx_llm_json_end_feed(&e, text + i, n))
                break;
        }
        assert_true(e.is_closed);
        assert_int_equal(i / cut, end / cut); /* not before the chunk holding the last brace */
    }
    assert_true(nx_llm_is_whole_json(text, sizeof text - 1));
    struct nx_json_end open = {0};
    assert_false(nx_llm_json_end_feed(&open, text, end)); /* all but the last brace */
}

static void test_openai_stream_answered_whole(void **state)
{
    (void)state;
    check_stream_answered_whole("openai", KEY, "gpt-test");
}

static void test_openai_stream_ended_then_cut(void **state)
{
    (void)state;
    check_stream_ended_then_cut("openai", KEY, "gpt-test");
}

/* A session's history is encoded once per message and reused (llm/frag_cache.c). */
static void test_openai_body_same_with_fragment_cache(void **state)
{
    (void)state;
    check_body_same_with_fragment_cache(nx_openai_build_body);
}

static void test_openai_long_stream_is_not_cut(void **state)
{
    (void)state;
    check_long_stream_is_not_cut("openai", KEY, "gpt-test");
}

static void test_openai_queued_stream_waits_for_a_connection(void **state)
{
    (void)state;
    check_queued_stream_waits_for_a_connection("openai", KEY, "gpt-test");
}

static void test_openai_stream_ended_but_body_held_open(void **state)
{
    (void)state;
    check_stream_ended_but_body_held_open("openai", KEY, "gpt-test");
    check_stream_stalled_behind_keepalives("openai", KEY, "gpt-test");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_openai_tool_calls_without_or_sharing_an_index),
        cmocka_unit_test(test_openai_fast_chunks_read_as_jansson_does),
        cmocka_unit_test(test_openai_servers_other_than_openai),
        cmocka_unit_test(test_openai_reasoning_models_get_max_completion_tokens),
        cmocka_unit_test(test_openai_stream_ended_then_cut),
        cmocka_unit_test(test_json_end_found_as_bytes_come),
        cmocka_unit_test(test_openai_stream_answered_whole),
        cmocka_unit_test(test_openai_body_same_with_fragment_cache),
        cmocka_unit_test(test_openai_answers_text_whole),
        cmocka_unit_test(test_openai_streams_deltas_and_usage),
        cmocka_unit_test(test_openai_tool_use_round_trip),
        cmocka_unit_test(test_openai_unparsable_arguments_are_kept),
        cmocka_unit_test(test_openai_null_arguments_are_none),
        cmocka_unit_test(test_openai_empty_key_sends_no_authorization),
        cmocka_unit_test(test_openai_maps_errors),
        cmocka_unit_test(test_openai_error_mid_stream),
        cmocka_unit_test(test_openai_cancel_mid_stream),
        cmocka_unit_test(test_openai_request_deadline),

        cmocka_unit_test(test_openai_long_stream_is_not_cut),
        cmocka_unit_test(test_openai_stream_ended_but_body_held_open),
        cmocka_unit_test(test_openai_queued_stream_waits_for_a_connection),
        cmocka_unit_test(test_openai_stream_parser_edges),
    };
    return run_on_both_engines(tests, sizeof tests / sizeof *tests, fake_group_setup, fake_group_teardown);
}
