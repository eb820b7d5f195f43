/* The history cache (src/agent/history_cache.c): what a session's next turn starts from keeps the
 * last `keep` messages, starting where a conversation can begin, as a read from the store does. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <jansson.h>
#include <string.h>

#include "agent/agent_internal.h"

static json_t *text_msg(const char *role, const char *text)
{
    return json_pack("{s:s, s:[{s:s, s:s}]}", "role", role, "content", "type", "text", "text", text);
}

static json_t *call_msg(const char *id)
{
    return json_pack("{s:s, s:[{s:s, s:s, s:s, s:{}}]}", "role", "assistant", "content", "type",
                     "tool_use", "id", id, "name", "time_now", "input");
}

static json_t *result_msg(const char *id)
{
    return json_pack("{s:s, s:[{s:s, s:s, s:s}]}", "role", "user", "content", "type", "tool_result",
                     "tool_use_id", id, "content", "12:00");
}

static const char *first_text(const json_t *list)
{
    const json_t *b = json_array_get(json_object_get(json_array_get(list, 0), "content"), 0);
    return json_string_value(json_object_get(b, "text"));
}

/* A copy of what the cache holds for key (NULL: nothing), left in the cache as it was. */
static json_t *hcache_get(struct hcache *c, const char *key)
{
    uint64_t tokens;
    json_t *taken = hcache_take_tokens(c, key, &tokens);
    json_t *copy = taken ? json_copy(taken) : NULL;
    if (taken)
        hcache_put_owned(c, key, taken, 0, tokens);
    return copy;
}

/* A turn of more tool rounds than the window keeps: the window holds no clean start, so the
 * cache reaches back to the turn's own user message instead of dropping the whole history. */
static void test_a_window_without_a_clean_start_reaches_back(void **state)
{
    struct hcache *c = hcache_new(8);
    json_t *msgs = json_array(), *got;

    (void)state;
    json_array_append_new(msgs, text_msg("user", "remember 42"));
    json_array_append_new(msgs, text_msg("assistant", "ok"));
    json_array_append_new(msgs, text_msg("user", "what time is it, three times?"));
    for (int i = 0; i < 3; i++) {
        char id[8];
        snprintf(id, sizeof id, "t%d", i);
        json_array_append_new(msgs, call_msg(id));
        json_array_append_new(msgs, result_msg(id));
    }
    json_array_append_new(msgs, text_msg("assistant", "noon"));
    hcache_put(c, "s", msgs, 4); /* the last 4: a call, results and the answer */
    got = hcache_get(c, "s");
    assert_non_null(got);
    assert_int_equal(json_array_size(got), 8); /* from "what time is it", not empty */
    assert_string_equal(first_text(got), "what time is it, three times?");
    json_decref(got);

    hcache_put(c, "s", msgs, 9); /* a window that starts on a clean user message: kept as is */
    got = hcache_get(c, "s");
    assert_int_equal(json_array_size(got), 8);
    json_decref(got);
    hcache_put(c, "s", msgs, 0); /* all */
    got = hcache_get(c, "s");
    assert_int_equal(json_array_size(got), json_array_size(msgs));
    assert_string_equal(first_text(got), "remember 42");
    json_decref(got);
    json_decref(msgs);
    hcache_free(c);
}

/* A turn takes the cached array itself: nobody else gets it meanwhile (a second take finds
 * none), and it comes back with what the turn added, cut to the window in place, the token sum
 * less the messages cut. */
static void test_a_turn_takes_the_array_and_puts_it_back(void **state)
{
    struct hcache *c = hcache_new(8);
    json_t *msgs = json_array(), *taken;
    uint64_t tokens;

    (void)state;
    json_array_append_new(msgs, text_msg("user", "one"));
    json_array_append_new(msgs, text_msg("assistant", "two"));
    hcache_put(c, "s", msgs, 0);
    json_decref(msgs);
    taken = hcache_take_tokens(c, "s", &tokens);
    assert_non_null(taken);
    assert_true(tokens == HCACHE_NO_TOKENS); /* (hcache_put knows no sum) */
    assert_null(hcache_take_tokens(c, "s", &tokens));
    assert_null(hcache_get(c, "s"));
    json_array_append_new(taken, text_msg("user", "three"));
    json_array_append_new(taken, text_msg("assistant", "four"));
    uint64_t sum = 0;
    for (size_t i = 0; i < json_array_size(taken); i++)
        sum += nx_llm_message_tokens(json_array_get(taken, i));
    uint64_t first_two = nx_llm_message_tokens(json_array_get(taken, 0)) +
                         nx_llm_message_tokens(json_array_get(taken, 1));
    json_t *same = taken;
    hcache_put_owned(c, "s", taken, 2, sum);
    taken = hcache_take_tokens(c, "s", &tokens);
    assert_ptr_equal(taken, same); /* not a copy */
    assert_int_equal(json_array_size(taken), 2);
    assert_string_equal(first_text(taken), "three");
    assert_true(tokens == sum - first_two);
    hcache_put_owned(c, "s", taken, 0, tokens);
    hcache_forget(c, "s");
    assert_null(hcache_take_tokens(c, "s", &tokens));
    hcache_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_a_window_without_a_clean_start_reaches_back),
        cmocka_unit_test(test_a_turn_takes_the_array_and_puts_it_back),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
