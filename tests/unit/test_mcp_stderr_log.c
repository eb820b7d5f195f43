#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "mcp/stderr_log.h"

/* A stdio server's stderr in our log, on a clock of our own: lines cut at a bound, at most
 * NX_MCP_STDERR_LINES_PER_SEC a second, the rest counted and said when their second is over. */

struct seen {
    int lines;
    char last[4096];
    size_t longest;
};

static void on_line(const struct nx_log_line *line, void *udata)
{
    struct seen *s = udata;

    if (!strstr(line->msg, "server flood"))
        return;
    s->lines++;
    snprintf(s->last, sizeof s->last, "%s", line->msg);
    if (line->len > s->longest)
        s->longest = line->len;
}

static void feed_lines(struct nx_mcp_stderr_log *l, int n, uint64_t now, uint64_t *due)
{
    char line[32];

    for (int i = 0; i < n; i++) {
        int len = snprintf(line, sizeof line, "line %d\n", i);

        *due = nx_mcp_stderr_log_feed(l, line, (size_t)len, now);
    }
}

static void test_mcp_stderr_lines_over_the_rate_are_counted(void **state)
{
    struct nx_mcp_stderr_log l;
    struct seen s = {0};
    uint64_t due = 0;

    (void)state;
    nx_mcp_stderr_log_init(&l, "flood");
    assert_int_equal(nx_log_sink_add(on_line, &s, NX_LOG_INFO), 0);
    /* a second's worth and one line more, split across chunks, with a CR and a blank line */
    assert_int_equal(nx_mcp_stderr_log_feed(&l, "first pa", 8, 5000), 0);
    assert_int_equal(nx_mcp_stderr_log_feed(&l, "rt\r\n\n", 5, 5000), 0);
    assert_string_equal(s.last + strlen(s.last) - strlen("stderr: first part"), "stderr: first part");
    feed_lines(&l, NX_MCP_STDERR_LINES_PER_SEC - 1, 5100, &due);
    assert_int_equal(due, 0);
    assert_int_equal(s.lines, NX_MCP_STDERR_LINES_PER_SEC);
    feed_lines(&l, 30, 5400, &due);
    assert_int_equal(s.lines, NX_MCP_STDERR_LINES_PER_SEC);
    assert_int_equal(due, 600); /* the second began at 5000 */
    /* not before the second is over */
    assert_int_equal(nx_mcp_stderr_log_flush(&l, 5999, false), 1);
    assert_int_equal(s.lines, NX_MCP_STDERR_LINES_PER_SEC);
    assert_int_equal(nx_mcp_stderr_log_flush(&l, 6000, false), 0);
    assert_int_equal(s.lines, NX_MCP_STDERR_LINES_PER_SEC + 1);
    assert_non_null(strstr(s.last, "server flood: ... 30 lines of stderr suppressed (more than 20 a "
                                   "second)"));
    /* a new second, new lines; one over the rate is said when the next line comes late */
    feed_lines(&l, NX_MCP_STDERR_LINES_PER_SEC + 1, 7000, &due);
    assert_int_equal(due, 1000);
    feed_lines(&l, 1, 9000, &due);
    assert_int_equal(due, 0);
    assert_int_equal(s.lines, 2 * NX_MCP_STDERR_LINES_PER_SEC + 3); /* + the summary, the late line */
    assert_non_null(strstr(s.last, "stderr: line 0"));
    /* the end of the stream says the partial line and what was suppressed */
    nx_mcp_stderr_log_feed(&l, "no newline", 10, 9001);
    nx_mcp_stderr_log_flush(&l, 9002, true);
    assert_non_null(strstr(s.last, "stderr: no newline"));
    nx_log_sink_remove(on_line, &s);
}

static void test_mcp_stderr_long_line_is_cut_on_a_character(void **state)
{
    struct nx_mcp_stderr_log l;
    struct seen s = {0};
    char *big = malloc(100000);
    char want[64];

    (void)state;
    nx_mcp_stderr_log_init(&l, "flood");
    assert_int_equal(nx_log_sink_add(on_line, &s, NX_LOG_INFO), 0);
    /* "é" (2 bytes) over and over, from an odd offset: the cap falls inside one */
    big[0] = 'a';
    for (size_t i = 1; i + 1 < 100000; i += 2) {
        big[i] = (char)0xC3;
        big[i + 1] = (char)0xA9;
    }
    big[99999] = '\n';
    for (size_t off = 0; off < 99999; off += 7000)
        nx_mcp_stderr_log_feed(&l, big + off, off + 7000 < 99999 ? 7000 : 99999 - off, 100);
    assert_int_equal(s.lines, 0);
    nx_mcp_stderr_log_feed(&l, "\n", 1, 100);
    assert_int_equal(s.lines, 1);
    /* 1 + 511 characters of 2 bytes kept (1023 bytes), the 99,999 - 1023 others counted */
    snprintf(want, sizeof want, "%c%c [... %d more bytes]", 0xC3, 0xA9, 99999 - 1023);
    assert_string_equal(s.last + strlen(s.last) - strlen(want), want);
    assert_true(s.longest < NX_MCP_STDERR_LINE_MAX + 100);
    nx_log_sink_remove(on_line, &s);
    free(big);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mcp_stderr_lines_over_the_rate_are_counted),
        cmocka_unit_test(test_mcp_stderr_long_line_is_cut_on_a_character),
    };

    nx_log_set_level(NX_LOG_OFF);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
