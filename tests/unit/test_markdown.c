#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "channels/markdown.h"
#include "core/buf.h"

static char *render(const struct nx_md_style *st, const char *text)
{
    struct nx_buf b = NX_BUF_INIT;
    nx_md_render(st, text, strlen(text), &b);
    nx_buf_putc(&b, '\0');
    return nx_buf_steal(&b);
}

static void expect(const struct nx_md_style *st, const char *in, const char *want)
{
    char *got = render(st, in);
    if (strcmp(got, want) != 0)
        print_error("input  %s\nwanted %s\ngot    %s\n", in, want, got);
    assert_string_equal(got, want);
    free(got);
}

static void test_markdown_inline_to_telegram_html(void **state)
{
    (void)state;
    const struct nx_md_style *t = &nx_md_telegram;
    expect(t, "plain text", "plain text");
    expect(t, "a < b && c > d", "a &lt; b &amp;&amp; c &gt; d");
    expect(t, "**bold** and __also__", "<b>bold</b> and <b>also</b>");
    expect(t, "*it* and _it_", "<i>it</i> and <i>it</i>");
    expect(t, "***both***", "<b><i>both</i></b>");
    expect(t, "~~gone~~", "<s>gone</s>");
    expect(t, "use `a<b>` here", "use <code>a&lt;b&gt;</code> here");
    expect(t, "``x ` y``", "<code>x ` y</code>");
    expect(t, "snake_case_name stays", "snake_case_name stays");
    expect(t, "2 * 3 * 4", "2 * 3 * 4");
    expect(t, "**not closed", "**not closed");
    expect(t, "\\*literal\\*", "*literal*");
    expect(t, "[site](https://x.org/?a=1&b=\"2\")",
           "<a href=\"https://x.org/?a=1&amp;b=&quot;2&quot;\">site</a>");
    expect(t, "[bad](javascript:alert(1))", "[bad](javascript:alert(1))");
    expect(t, "**bold `code**` x**", "<b>bold <code>code**</code> x</b>");
}

static void test_markdown_blocks_to_telegram_html(void **state)
{
    (void)state;
    const struct nx_md_style *t = &nx_md_telegram;
    expect(t, "# Title\n\ntext", "<b>Title</b>\n\ntext");
    expect(t, "## Sub ##", "<b>Sub</b>");
    expect(t, "#hashtag", "#hashtag");
    expect(t, "- one\n- **two**\n  * nested",
           "\xe2\x80\xa2 one\n\xe2\x80\xa2 <b>two</b>\n  \xe2\x80\xa2 nested");
    expect(t, "1. first\n2. second", "1. first\n2. second");
    expect(t, "```c\nint x = a < b;\n```\nafter",
           "<pre><code class=\"language-c\">int x = a &lt; b;</code></pre>\nafter");
    expect(t, "```\n**raw**\n```", "<pre>**raw**</pre>");
    expect(t, "```\nunclosed <x>", "<pre>unclosed &lt;x&gt;</pre>");
    expect(t, "> quoted\n> more\nout", "<blockquote>quoted\nmore</blockquote>\nout");
    expect(t, "---", "\xe2\x80\x94\xe2\x80\x94\xe2\x80\x94");
    expect(t, "ends with newline\n", "ends with newline\n");
    expect(t, "", "");
}

static void test_markdown_to_whatsapp(void **state)
{
    (void)state;
    const struct nx_md_style *w = &nx_md_whatsapp;
    expect(w, "**bold** *it* ~~s~~ `c` <x> & y", "*bold* _it_ ~s~ `c` <x> & y");
    expect(w, "# Head", "*Head*");
    expect(w, "[site](https://x.org)", "site (https://x.org)");
    expect(w, "[https://x.org](https://x.org)", "https://x.org");
    expect(w, "```py\nprint(1)\n```", "```\nprint(1)\n```");
    expect(w, "> q", "> q");
}

/* Visible length of a chunk's HTML (tags dropped, entities one char). */
static size_t visible(const char *h)
{
    size_t n = 0;
    while (*h) {
        if (*h == '<') {
            h = strchr(h, '>') + 1;
            continue;
        }
        if (*h == '&')
            h = strchr(h, ';');
        n++;
        h++;
    }
    return n;
}

static void test_markdown_split_keeps_tags_balanced(void **state)
{
    (void)state;
    struct nx_buf md = NX_BUF_INIT, html = NX_BUF_INIT;
    nx_buf_puts(&md, "intro\n\n**");
    for (int i = 0; i < 300; i++)
        nx_buf_printf(&md, "word%d & ", i);
    nx_buf_puts(&md, "end**\n\n```\n");
    for (int i = 0; i < 200; i++)
        nx_buf_printf(&md, "code line %d <x>\n", i);
    nx_buf_puts(&md, "```\ntail");
    nx_md_render(&nx_md_telegram, md.data, md.len, &html);
    struct nx_md_chunk *v = NULL;
    size_t n = nx_md_split_html(html.data, html.len, 1000, &v);
    assert_true(n >= 4);
    struct nx_buf plain = NX_BUF_INIT;
    for (size_t i = 0; i < n; i++) {
        assert_true(visible(v[i].html) <= 1000);
        assert_int_equal(visible(v[i].html), strlen(v[i].plain));
        /* every opened tag closes in the same chunk */
        int b = 0, pre = 0;
        for (const char *p = v[i].html; (p = strchr(p, '<')); p++) {
            if (strncmp(p, "<b>", 3) == 0) b++;
            if (strncmp(p, "</b>", 4) == 0) b--;
            if (strncmp(p, "<pre>", 5) == 0) pre++;
            if (strncmp(p, "</pre>", 6) == 0) pre--;
            assert_true(b >= 0 && pre >= 0);
        }
        assert_int_equal(b, 0);
        assert_int_equal(pre, 0);
        nx_buf_printf(&plain, "%s ", v[i].plain);
    }
    assert_non_null(strstr(v[0].html, "<b>word0 &amp; "));
    assert_non_null(strstr(v[1].html, "<b>")); /* reopened */
    assert_non_null(strstr(v[n - 1].html, "tail"));
    assert_non_null(strstr(plain.data, "code line 199 <x>"));
    assert_non_null(strstr(plain.data, "word299 & end"));
    nx_md_chunks_free(v, n);
    assert_int_equal(nx_md_split_html("<b></b>", 7, 10, &v), 0);
    assert_null(v);
    /* broken HTML is split all the same */
    n = nx_md_split_html("a < b &amp c </i> <u", 20, 3, &v);
    assert_true(n > 0);
    nx_md_chunks_free(v, n);
    nx_buf_cleanup(&plain);
    nx_buf_cleanup(&md);
    nx_buf_cleanup(&html);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_markdown_inline_to_telegram_html),
        cmocka_unit_test(test_markdown_blocks_to_telegram_html),
        cmocka_unit_test(test_markdown_to_whatsapp),
        cmocka_unit_test(test_markdown_split_keeps_tags_balanced),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
