#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "channels/channels.h"
#include "core/alloc.h"
#include "core/buf.h"

/* UTF-16 code units in s[0..n), the way the splitter counts. */
static size_t units(const char *s, size_t n)
{
    size_t u = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c & 0xC0) != 0x80)
            u += c >= 0xF0 ? 2 : 1;
    }
    return u;
}

static int is_ws(char c)
{
    return c == ' ' || c == '\n' || c == '\t' || c == '\r' || c == '\f' || c == '\v';
}

static char *squeeze(const char *s, size_t n)
{
    struct nx_buf b = NX_BUF_INIT;
    for (size_t i = 0; i < n; i++)
        if (!is_ws(s[i]))
            nx_buf_putc(&b, s[i]);
    return nx_buf_steal(&b);
}

/* Every chunk fits, is non-empty, has no whitespace at either end and starts on a character;
 * the chunks in order are the text minus whitespace. */
static size_t check_split(const char *text, size_t limit, struct nx_text_chunk **out)
{
    size_t len = strlen(text);
    struct nx_text_chunk *v = NULL;
    size_t n = nx_text_split(text, len, limit, &v);
    struct nx_buf all = NX_BUF_INIT;
    for (size_t i = 0; i < n; i++) {
        const char *c = text + v[i].off;
        assert_true(v[i].len > 0);
        assert_true(v[i].off + v[i].len <= len);
        assert_true(units(c, v[i].len) <= limit || v[i].len <= 4);
        assert_false(is_ws(c[0]));
        assert_false(is_ws(c[v[i].len - 1]));
        assert_true(((unsigned char)c[0] & 0xC0) != 0x80);
        if (i > 0)
            assert_true(v[i].off >= v[i - 1].off + v[i - 1].len);
        nx_buf_append(&all, c, v[i].len);
    }
    char *a = squeeze(nx_buf_cstr(&all), all.len);
    char *b = squeeze(text, len);
    assert_string_equal(a, b);
    free(a);
    free(b);
    nx_buf_cleanup(&all);
    if (out)
        *out = v;
    else
        free(v);
    return n;
}

static char *repeat(const char *unit, size_t times)
{
    struct nx_buf b = NX_BUF_INIT;
    for (size_t i = 0; i < times; i++)
        nx_buf_puts(&b, unit);
    return nx_buf_steal(&b);
}

static void test_split_short_text_is_one_trimmed_chunk(void **state)
{
    (void)state;
    struct nx_text_chunk *v;
    const char *t = "  \n hello world.\n\n";
    assert_int_equal(nx_text_split(t, strlen(t), 4096, &v), 1);
    assert_int_equal(v[0].off, 4);
    assert_int_equal(v[0].len, strlen("hello world."));
    free(v);
    assert_int_equal(nx_text_split(" \n\t ", 4, 10, &v), 0);
    assert_null(v);
    assert_int_equal(nx_text_split("", 0, 10, &v), 0);
}

static void test_split_prefers_paragraphs(void **state)
{
    (void)state;
    /* Two paragraphs of 3000 characters made of sentences: the cut is the blank line even
     * though a sentence end lies later in the window. */
    char *p1 = repeat("Some words here. ", 176); /* 2992 */
    char *p2 = repeat("More words here. ", 176);
    struct nx_buf b = NX_BUF_INIT;
    nx_buf_printf(&b, "%s\n\n%s", p1, p2);
    struct nx_text_chunk *v;
    assert_int_equal(check_split(nx_buf_cstr(&b), 4096, &v), 2);
    assert_int_equal(v[0].len, strlen(p1) - 1); /* the trailing space is left out */
    assert_memory_equal(b.data + v[1].off, "More", 4);
    free(v);
    free(p1);
    free(p2);
    nx_buf_cleanup(&b);
}

static void test_split_then_sentences_then_words(void **state)
{
    (void)state;
    struct nx_text_chunk *v;
    /* No paragraph: the last sentence end in the window. */
    char *s = repeat("one two three four five six. ", 300);
    assert_int_equal(check_split(s, 4096, &v), 3);
    assert_int_equal(s[v[0].off + v[0].len - 1], '.');
    assert_int_equal(s[v[1].off + v[1].len - 1], '.');
    free(v);
    free(s);
    /* No sentence end: a word boundary, never inside a word. */
    s = repeat("abcdefg ", 1500);
    assert_int_equal(check_split(s, 4096, &v), 3);
    assert_int_equal(v[0].len % 8, 7);
    assert_int_equal(s[v[0].off + v[0].len], ' ');
    free(v);
    free(s);
    /* A sentence end early in the window loses to a later word boundary. */
    struct nx_buf b = NX_BUF_INIT;
    nx_buf_puts(&b, "Short. ");
    for (int i = 0; i < 1000; i++)
        nx_buf_puts(&b, "word ");
    assert_int_equal(check_split(nx_buf_cstr(&b), 100, &v) > 2, 1);
    assert_true(v[0].len > 90);
    free(v);
    nx_buf_cleanup(&b);
}

static void test_split_hard_cuts_a_long_word(void **state)
{
    (void)state;
    struct nx_text_chunk *v;
    char *s = repeat("x", 10000);
    assert_int_equal(check_split(s, 4096, &v), 3);
    assert_int_equal(v[0].len, 4096);
    assert_int_equal(v[1].len, 4096);
    assert_int_equal(v[2].len, 10000 - 8192);
    free(v);
    free(s);
}

static void test_split_counts_utf16_units(void **state)
{
    (void)state;
    struct nx_text_chunk *v;
    /* U+00E9: 2 bytes, 1 unit. */
    char *s = repeat("\xc3\xa9", 5000);
    assert_int_equal(check_split(s, 4096, &v), 2);
    assert_int_equal(v[0].len, 2 * 4096);
    free(v);
    free(s);
    /* U+1F600: 4 bytes, 2 units (a surrogate pair): 2048 per chunk, never split inside. */
    s = repeat("\xf0\x9f\x98\x80", 3000);
    assert_int_equal(check_split(s, 4096, &v), 2);
    assert_int_equal(v[0].len, 4 * 2048);
    assert_int_equal(v[1].len, 4 * (3000 - 2048));
    free(v);
    free(s);
    /* A limit below one character still makes progress, one character per chunk. */
    s = repeat("\xf0\x9f\x98\x80", 3);
    assert_int_equal(check_split(s, 1, &v), 3);
    assert_int_equal(v[0].len, 4);
    free(v);
    free(s);
}

static void test_split_survives_invalid_utf8(void **state)
{
    (void)state;
    const char t[] = "\xff\xfe abc \xc3 \xe2\x82 \xf0\x9f\x98 tail \x80\x80";
    struct nx_text_chunk *v = NULL;
    size_t n = nx_text_split(t, sizeof t - 1, 3, &v);
    assert_true(n >= 4);
    for (size_t i = 0; i < n; i++)
        assert_true(v[i].len > 0 && v[i].off + v[i].len <= sizeof t - 1);
    free(v);
}

static void test_split_random_texts_keep_every_word(void **state)
{
    (void)state;
    static const char *const words[] = {"a", "bb", "ccc.", "dddd!", "\n", "\n\n", "  ", "\xc3\xa9t\xc3\xa9",
                                        "\xf0\x9f\x98\x80", "long-long-long-word", "end?", "\t"};
    uint32_t seed = 12345;
    for (int round = 0; round < 200; round++) {
        struct nx_buf b = NX_BUF_INIT;
        seed = seed * 1103515245u + 12345u;
        size_t nwords = (seed >> 8) % 3000;
        for (size_t i = 0; i < nwords; i++) {
            seed = seed * 1103515245u + 12345u;
            nx_buf_puts(&b, words[(seed >> 16) % (sizeof words / sizeof *words)]);
            if ((seed >> 4) % 3)
                nx_buf_putc(&b, ' ');
        }
        seed = seed * 1103515245u + 12345u;
        size_t limit = 1 + (seed >> 12) % 500;
        check_split(nx_buf_cstr(&b), limit, NULL);
        nx_buf_cleanup(&b);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_split_short_text_is_one_trimmed_chunk),
        cmocka_unit_test(test_split_prefers_paragraphs),
        cmocka_unit_test(test_split_then_sentences_then_words),
        cmocka_unit_test(test_split_hard_cuts_a_long_word),
        cmocka_unit_test(test_split_counts_utf16_units),
        cmocka_unit_test(test_split_survives_invalid_utf8),
        cmocka_unit_test(test_split_random_texts_keep_every_word),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
