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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_a_window_without_a_clean_start_reaches_back),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
