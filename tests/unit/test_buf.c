#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <jansson.h>
#include <string.h>

#include "core/buf.h"

static void test_buf_appends_and_terminates(void **state)
{
    (void)state;
    struct nx_buf b = NX_BUF_INIT;
    assert_string_equal(nx_buf_cstr(&b), "");
    nx_buf_puts(&b, "hello");
    nx_buf_putc(&b, ' ');
    nx_buf_printf(&b, "%s %d", "world", 42);
    assert_int_equal(b.len, strlen("hello world 42"));
    assert_string_equal(b.data, "hello world 42");
    nx_buf_consume(&b, 6);
    assert_string_equal(b.data, "world 42");
    char *s = nx_buf_steal(&b);
    assert_string_equal(s, "world 42");
    assert_null(b.data);
    free(s);
}

static void test_buf_grows_past_many_doublings(void **state)
{
    (void)state;
    struct nx_buf b = NX_BUF_INIT;
    for (int i = 0; i < 100000; i++)
        nx_buf_putc(&b, (char)('a' + i % 26));
    assert_int_equal(b.len, 100000);
    assert_int_equal(b.data[99999], 'a' + 99999 % 26);
    assert_int_equal(b.data[100000], '\0');
    nx_buf_cleanup(&b);
}

static void test_printf_longer_than_the_room(void **state)
{
    (void)state;
    struct nx_buf b = NX_BUF_INIT;
    char big[300];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    nx_buf_puts(&b, "head:");
    for (int i = 0; i < 3; i++) /* room left varies: fits, then needs a second vsnprintf */
        nx_buf_printf(&b, "[%d:%s]", i, i == 1 ? big : "short");
    assert_int_equal(b.len, strlen(b.data));
    assert_int_equal(b.len, 5 + 9 + (3 + sizeof big - 1 + 1) + 9);
    assert_memory_equal(b.data + 5 + 9 + 3, big, sizeof big - 1);
    assert_string_equal(b.data + b.len - 9, "[2:short]");
    nx_buf_cleanup(&b);
}

static char *put_json(const char *s, size_t len)
{
    struct nx_buf b = NX_BUF_INIT;
    nx_buf_put_json_str(&b, s, len);
    return nx_buf_steal(&b);
}

static void test_json_str_escapes_like_jansson(void **state)
{
    (void)state;
    static const char *const cases[] = {
        "", "hi", "quote \" backslash \\ slash /", "line\nfeed\rtab\tbell\a\b\f\x01\x1f\x7f",
        "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", "\xed\x9f\xbf \xef\xbf\xbf \xf4\x8f\xbf\xbf",
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        json_t *v = json_string(cases[i]);
        assert_non_null(v);
        char *want = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
        char *got = put_json(cases[i], strlen(cases[i]));
        assert_string_equal(got, want);
        free(got);
        free(want);
        json_decref(v);
    }
}

static void test_json_str_replaces_invalid_utf8(void **state)
{
    (void)state;
    /* a lone continuation, an overlong '/', a surrogate, past U+10FFFF, a cut sequence, and NUL */
    static const char in[] = "a\x80" "b\xc0\xaf" "c\xed\xa0\x80" "d\xf4\x90\x80\x80" "e\xe2\x82";
    char *got = put_json(in, sizeof in - 1);
    json_error_t err;
    json_t *v = json_loads(got, JSON_DECODE_ANY, &err);
    assert_non_null(v); /* always valid JSON */
    assert_string_equal(got, "\"a\\ufffdb\\ufffd\\ufffdc\\ufffd\\ufffd\\ufffdd\\ufffd\\ufffd\\ufffd"
                             "\\ufffde\\ufffd\\ufffd\"");
    json_decref(v);
    free(got);
    got = put_json("x\0y", 3);
    assert_string_equal(got, "\"x\\u0000y\"");
    free(got);
}

static void test_json_str_random_bytes_stay_valid_json(void **state)
{
    (void)state;
    unsigned seed = 12345;
    char in[64];
    for (int round = 0; round < 20000; round++) {
        size_t len = (size_t)(seed % sizeof in);
        for (size_t i = 0; i < len; i++) {
            seed = seed * 1103515245u + 12345u;
            in[i] = (char)(seed >> 16);
        }
        seed = seed * 1103515245u + 12345u;
        char *got = put_json(in, len);
        json_error_t err;
        json_t *v = json_loads(got, JSON_DECODE_ANY | JSON_ALLOW_NUL, &err);
        assert_non_null(v);
        assert_true(json_is_string(v));
        json_decref(v);
        free(got);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_buf_appends_and_terminates),
        cmocka_unit_test(test_buf_grows_past_many_doublings),
        cmocka_unit_test(test_printf_longer_than_the_room),
        cmocka_unit_test(test_json_str_escapes_like_jansson),
        cmocka_unit_test(test_json_str_replaces_invalid_utf8),
        cmocka_unit_test(test_json_str_random_bytes_stay_valid_json),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
