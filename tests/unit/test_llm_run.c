/* A session's encoded history run (src/llm/run.c): a request body built with the run is the
 * same, byte for byte, as one built from scratch, whatever the history did since the last
 * request (grew, lost its start, took another turn, held a message too long to copy), and the
 * run stays the size of the history it last sent. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "llm/internal.h"
#include "llm/llm.h"


typedef int (*build_fn)(const struct nx_llm_request *req, struct nx_buf *out, const char **why);

static json_t *message(unsigned i)
{
    char text[48];
    snprintf(text, sizeof text, "message %u \"quoted\" é", i);
    if (i % 2 == 0)
        return json_pack("{s:s, s:s}", "role", "user", "content", text);
    return json_pack("{s:s, s:[{s:s, s:s}]}", "role", "assistant", "content", "type", "text", "text", text);
}

/* Builds with the run and from scratch, and asserts they are the same body. */
static void assert_same_body(build_fn build, struct nx_llm_run *run, const json_t *messages)
{
    struct nx_llm_request req = {.model = "m", .system = "be brief", .messages = messages,
                                 .max_tokens = 10, .temperature = -1, .is_history_stable = true,
                                 .run = run};
    struct nx_buf with = NX_BUF_INIT, without = NX_BUF_INIT;
    const char *why = NULL;

    assert_int_equal(build(&req, &with, &why), 0);
    req.is_history_stable = false;
    req.run = NULL;
    assert_int_equal(build(&req, &without, &why), 0);
    assert_int_equal(with.len, without.len);
    assert_memory_equal(with.data, without.data, with.len);
    json_t *parsed = json_loadb(with.data, with.len, 0, NULL);
    assert_non_null(parsed); /* (and valid JSON: no comma left before the closing bracket) */
    json_decref(parsed);
    nx_buf_cleanup(&with);
    nx_buf_cleanup(&without);
}

/* A session's window: it grows by a turn (two messages) until it holds `keep`, then loses its
 * two oldest each turn. */
static void slide(build_fn build)
{
    enum { TURNS = 400, KEEP = 100 };
    struct nx_llm_run *run = nx_llm_run_new();
    json_t *history = json_array();
    size_t most = 0;

    for (unsigned turn = 0; turn < TURNS; turn++) {
        json_array_append_new(history, message(2 * turn));
        assert_same_body(build, run, history);
        json_array_append_new(history, message(2 * turn + 1));
        while (json_array_size(history) > KEEP)
            json_array_remove(history, 0);
        if (turn > TURNS / 2 && nx_llm_run_bytes(run) > most)
            most = nx_llm_run_bytes(run);
    }
    /* the run holds about the window, not every message that went through it */
    print_message("run bytes at most %zu for %d messages\n", most, KEEP);
    assert_true(most < 4 * KEEP * 64); /* (all 800 would take 60 KB) */
    nx_llm_run_unref(run);
    json_decref(history);
}

static void test_a_sliding_window_openai(void **state)
{
    (void)state;
    slide(nx_openai_build_body);
}

static void test_a_sliding_window_anthropic(void **state)
{
    (void)state;
    slide(nx_anthropic_build_body);
}

/* The request after a failed turn, or a retry with another history: the run's tail is not in
 * it, and what the run held of it is not sent. */
static void test_a_history_that_took_another_way(void **state)
{
    (void)state;
    struct nx_llm_run *run = nx_llm_run_new();
    json_t *history = json_array(), *other;

    for (unsigned i = 0; i < 10; i++)
        json_array_append_new(history, message(i));
    assert_same_body(nx_openai_build_body, run, history);
    other = json_array();
    for (unsigned i = 0; i < 6; i++)
        json_array_append(other, json_array_get(history, i));
    json_array_append_new(other, message(100)); /* a new 7th */
    assert_same_body(nx_openai_build_body, run, other);
    assert_same_body(nx_openai_build_body, run, history); /* and back */
    /* a history whose start is one the run never had: started over */
    json_array_insert_new(history, 0, message(200));
    assert_same_body(nx_openai_build_body, run, history);
    json_array_remove(history, 0);
    json_array_remove(history, 0);
    assert_same_body(nx_openai_build_body, run, history);
    nx_llm_run_unref(run);
    json_decref(history);
    json_decref(other);
}

/* A message too long to copy into the run (an image): the run stops before it, and the
 * messages after it still go, through the fragment cache, in order. The run stays small. */
static void test_a_message_too_long_for_the_run(void **state)
{
    (void)state;
    struct nx_llm_run *run = nx_llm_run_new();
    json_t *history = json_array();
    size_t big = 64 * 1024 + 100; /* (an image as base64 is larger) */
    char *text = malloc(big + 1);

    memset(text, 'x', big);
    text[big] = '\0';
    for (unsigned i = 0; i < 4; i++)
        json_array_append_new(history, message(i));
    json_array_append_new(history, json_pack("{s:s, s:s}", "role", "user", "content", text));
    json_array_append_new(history, message(5));
    for (unsigned turn = 0; turn < 3; turn++) {
        assert_same_body(nx_openai_build_body, run, history);
        assert_true(nx_llm_run_bytes(run) < big); /* not copied */
        json_array_append_new(history, message(6 + 2 * turn));
        json_array_append_new(history, message(7 + 2 * turn));
    }
    /* once the long one is cut from the history, the run takes the rest again */
    while (json_array_size(history) > 5)
        json_array_remove(history, 0);
    assert_same_body(nx_openai_build_body, run, history);
    assert_same_body(nx_openai_build_body, run, history);
    nx_llm_run_unref(run);
    json_decref(history);
    free(text);
}

/* Many idle sessions with long messages: the runs together stay within their budget (64 MB),
 * the rest goes through the fragment cache, and every body is still right. */
static void test_the_runs_together_stay_within_their_budget(void **state)
{
    (void)state;
    enum { SESSIONS = 1300, TEXT = 60 * 1024 };
    struct nx_llm_run *runs[SESSIONS];
    json_t *histories[SESSIONS];
    char *text = malloc(TEXT + 1);
    size_t most = 0;

    memset(text, 'y', TEXT);
    text[TEXT] = '\0';
    for (size_t i = 0; i < SESSIONS; i++) {
        runs[i] = nx_llm_run_new();
        histories[i] = json_array();
        text[i % TEXT] = 'z'; /* (each session's message its own) */
        json_array_append_new(histories[i], json_pack("{s:s, s:s}", "role", "user", "content", text));
        json_array_append_new(histories[i], message(1));
        assert_same_body(nx_openai_build_body, runs[i], histories[i]);
        if (nx_llm_run_total_bytes() > most)
            most = nx_llm_run_total_bytes();
    }
    print_message("runs hold %zu bytes at most for %d sessions of %d KB\n", most, SESSIONS, TEXT / 1024);
    assert_true(most <= 64u * 1024 * 1024);
    assert_true(most > 32u * 1024 * 1024); /* (and the runs were used) */
    for (size_t i = 0; i < SESSIONS; i++) {
        assert_same_body(nx_openai_build_body, runs[i], histories[i]); /* again: from run or fragments */
        nx_llm_run_unref(runs[i]);
        json_decref(histories[i]);
    }
    assert_int_equal(nx_llm_run_total_bytes(), 0);
    nx_llm_frag_clear();
    free(text);
}

/* A run outlives the messages its caller lets go: it holds its own references (ASan checks). */
static void test_the_run_holds_its_messages(void **state)
{
    (void)state;
    struct nx_llm_run *run = nx_llm_run_new();
    json_t *history = json_array();

    for (unsigned i = 0; i < 8; i++)
        json_array_append_new(history, message(i));
    assert_same_body(nx_anthropic_build_body, run, history);
    json_decref(history);
    history = json_array();
    for (unsigned i = 0; i < 8; i++) /* new messages, perhaps at the old addresses */
        json_array_append_new(history, message(i + 50));
    assert_same_body(nx_anthropic_build_body, run, history);
    nx_llm_run_unref(run);
    json_decref(history);
}

/* The common messages are written without a jansson tree (openai_body.c encode_plain): the
 * same bytes as through jansson, for every shape and every kind of character. */
static void test_plain_messages_encode_as_jansson_would(void **state)
{
    (void)state;
    static const char *const texts[] = {"hi", "", "quote \" back\\slash / slash", "tab\tnl\ncr\r\x01\x1f\x7f",
                                        "é ü 日本 🙂 \xe2\x80\xa8", "line1\nline2"};
    json_t *history = json_array();
    for (size_t i = 0; i < sizeof texts / sizeof *texts; i++) {
        const char *t = texts[i], *u = texts[(i + 1) % (sizeof texts / sizeof *texts)];
        json_array_append_new(history, json_pack("{s:s, s:s}", "role", "user", "content", t));
        json_array_append_new(history, json_pack("{s:s, s:s}", "role", "assistant", "content", t));
        json_array_append_new(history, json_pack("{s:s, s:[{s:s, s:s}]}", "role", "user", "content",
                                                 "type", "text", "text", t));
        json_array_append_new(history, json_pack("{s:s, s:[{s:s, s:s}, {s:s, s:s, s:{s:s}}]}", "role",
                                                 "user", "content", "type", "text", "text", t, "type",
                                                 "text", "text", u, "cache_control", "type", "ephemeral"));
        json_array_append_new(history, json_pack("{s:s, s:[{s:s, s:s}, {s:s, s:s}, {s:s, s:s}]}", "role",
                                                 "assistant", "content", "type", "reasoning", "text", u,
                                                 "type", "text", "text", t, "type", "text", "text", u));
        json_array_append_new(history, json_pack("{s:s, s:[]}", "role", "assistant", "content"));
        json_array_append_new(history, json_pack("{s:s, s:[]}", "role", "user", "content"));
    }
    json_array_append_new(history, json_pack("{s:s, s:s%}", "role", "user", "content", "a\0b", (size_t)3));
    json_array_append_new(history, json_pack("{s:s, s:[{s:s, s:s%}]}", "role", "assistant", "content",
                                             "type", "text", "text", "a\0b", (size_t)3));
    struct nx_llm_request req = {.model = "m", .messages = history, .max_tokens = 10, .temperature = -1};
    struct nx_buf fast = NX_BUF_INIT, slow = NX_BUF_INIT;
    const char *why = NULL;
    assert_int_equal(nx_openai_build_body(&req, &fast, &why), 0);
    nx_openai_fast_enabled = false;
    assert_int_equal(nx_openai_build_body(&req, &slow, &why), 0);
    nx_openai_fast_enabled = true;
    assert_int_equal(fast.len, slow.len);
    assert_memory_equal(fast.data, slow.data, fast.len);
    nx_buf_cleanup(&fast);
    nx_buf_cleanup(&slow);
    json_decref(history);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_a_sliding_window_openai),
        cmocka_unit_test(test_a_sliding_window_anthropic),
        cmocka_unit_test(test_a_history_that_took_another_way),
        cmocka_unit_test(test_a_message_too_long_for_the_run),
        cmocka_unit_test(test_the_run_holds_its_messages),
        cmocka_unit_test(test_plain_messages_encode_as_jansson_would),
        cmocka_unit_test(test_the_runs_together_stay_within_their_budget),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    nx_llm_frag_clear();
    return rc;
}
