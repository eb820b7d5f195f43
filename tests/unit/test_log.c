/* NX_TEST_LABELS: threaded */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <jansson.h>
#include <pthread.h>
#include <regex.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/log.h"

static int log_fd = -1;

static int open_log(void **state)
{
    (void)state;
    char path[] = "/tmp/nx_test_log_XXXXXX";
    log_fd = mkstemp(path);
    if (log_fd < 0)
        return -1;
    unlink(path);
    nx_log_set_fd(log_fd);
    nx_log_set_level(NX_LOG_INFO);
    nx_log_set_json(false);
    nx_log_set_context(NULL, NULL);
    return 0;
}

static int close_log(void **state)
{
    (void)state;
    nx_log_set_fd(2);
    nx_log_set_json(false);
    nx_log_set_context(NULL, NULL);
    close(log_fd);
    log_fd = -1;
    return 0;
}

/* Everything written so far. */
static char *log_contents(void)
{
    off_t end = lseek(log_fd, 0, SEEK_END);
    assert_true(end >= 0);
    char *s = malloc((size_t)end + 1);
    assert_non_null(s);
    ssize_t n = pread(log_fd, s, (size_t)end, 0);
    assert_int_equal(n, end);
    s[n] = '\0';
    return s;
}

static size_t count_lines(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

static void assert_matches(const char *text, const char *ere)
{
    regex_t re;
    assert_int_equal(regcomp(&re, ere, REG_EXTENDED | REG_NOSUB), 0);
    int rc = regexec(&re, text, 0, NULL, 0);
    regfree(&re);
    if (rc != 0)
        fail_msg("%s\ndoes not match\n%s", text, ere);
}

static int evaluated;

static const char *side_effect(void)
{
    evaluated++;
    return "expensive";
}

static void test_log_level_filters_before_formatting(void **state)
{
    (void)state;
    evaluated = 0;
    nx_debug("test", "debug %s", side_effect());
    nx_trace("test", "trace %s", side_effect());
    assert_int_equal(evaluated, 0);
    nx_info("test", "info %s", side_effect());
    nx_error("test", "error");
    assert_int_equal(evaluated, 1);

    nx_log_set_level(NX_LOG_ERROR);
    nx_warn("test", "warn hidden");
    nx_log_set_level(NX_LOG_OFF);
    nx_error("test", "error hidden");

    char *s = log_contents();
    assert_null(strstr(s, "debug"));
    assert_null(strstr(s, "hidden"));
    assert_non_null(strstr(s, "test: info expensive\n"));
    assert_int_equal(count_lines(s), 2);
    free(s);

    enum nx_log_level lvl;
    assert_int_equal(nx_log_parse_level("warning", &lvl), 0);
    assert_int_equal(lvl, NX_LOG_WARN);
    assert_int_not_equal(nx_log_parse_level("loud", &lvl), 0);
}

static void test_log_human_line_shape(void **state)
{
    (void)state;
    nx_info("gateway", "listening on %s:%d", "127.0.0.1", 8080);
    nx_warn("store", "slow");
    nx_log_set_context("coder", "s-42");
    nx_error("agent", "failed");
    char *s = log_contents();
    const char *ts = "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]+)?Z";
    char re[512];
    snprintf(re, sizeof re,
             "^%s info +gateway: listening on 127\\.0\\.0\\.1:8080\n"
             "%s warn +store: slow\n"
             "%s error +agent agent=coder session=s-42: failed\n$",
             ts, ts, ts);
    assert_matches(s, re);
    free(s);
}

static void test_log_newline_does_not_split_human_line(void **state)
{
    (void)state;
    nx_info("test", "first\nFAKE 2020-01-01T00:00:00Z error admin: forged\r\nend");
    char *s = log_contents();
    assert_int_equal(count_lines(s), 1);
    assert_non_null(strstr(s, "first FAKE"));
    assert_non_null(strstr(s, "end\n"));
    free(s);
}

/* Nor can a terminal's escape sequences in a message (a tool name a model chose) erase the line
 * and print a fake one: control characters and DEL are shown as \xNN, a tab stays. */
static void test_log_control_characters_are_shown_not_acted_on(void **state)
{
    (void)state;
    nx_log_set_context("a\x1b[2Kb", NULL);
    nx_warn("tools", "evil\x1b[2K\x1b[1Ginfo  fake: all good\b\x7f\x0b\x0c\tend");
    nx_log_set_context(NULL, NULL);
    char *s = log_contents();
    assert_int_equal(count_lines(s), 1);
    for (const char *p = s; *p; p++)
        assert_true(*p == '\n' || *p == '\t' || ((unsigned char)*p >= 0x20 && *p != 0x7f));
    assert_non_null(strstr(s, "agent=a\\x1b[2Kb: evil\\x1b[2K\\x1b[1Ginfo  fake: all good"
                              "\\x08\\x7f\\x0b\\x0c\tend"));
    free(s);
    /* C1 (CSI is U+009B): UTF-8 encoded or a stray byte; other UTF-8 (é, €, 😀) stays whole */
    nx_warn("tools", "a\xc2\x9b" "2Kb\x9b" "2Kc \xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80 \xe2\x80\x9b");
    s = log_contents();
    assert_non_null(strstr(s, "a\\xc2\\x9b2Kb\\x9b2Kc \xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80 \xe2\x80\x9b\n"));
    free(s);
}

static void test_log_json_lines_parse(void **state)
{
    (void)state;
    nx_log_set_json(true);
    nx_info("http", "GET \"/v1\"\nstatus=%d", 200);
    nx_log_set_context("coder", "s-42");
    nx_warn("agent", "tab\there");
    char *s = log_contents();
    assert_int_equal(count_lines(s), 2);

    char *second = strchr(s, '\n') + 1;
    second[-1] = '\0';
    json_error_t err;
    json_t *a = json_loads(s, 0, &err);
    if (!a)
        fail_msg("line 1 is not JSON (%s): %s", err.text, s);
    json_t *b = json_loads(second, JSON_DISABLE_EOF_CHECK, &err);
    if (!b)
        fail_msg("line 2 is not JSON (%s): %s", err.text, second);

    assert_string_equal(json_string_value(json_object_get(a, "level")), "info");
    assert_string_equal(json_string_value(json_object_get(a, "component")), "http");
    assert_string_equal(json_string_value(json_object_get(a, "msg")), "GET \"/v1\"\nstatus=200");
    assert_non_null(json_string_value(json_object_get(a, "ts")));
    assert_matches(json_string_value(json_object_get(a, "ts")),
                   "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]+)?Z$");
    assert_null(json_object_get(a, "agent"));
    assert_null(json_object_get(a, "session"));

    assert_string_equal(json_string_value(json_object_get(b, "level")), "warn");
    assert_string_equal(json_string_value(json_object_get(b, "agent")), "coder");
    assert_string_equal(json_string_value(json_object_get(b, "session")), "s-42");
    assert_string_equal(json_string_value(json_object_get(b, "msg")), "tab\there");
    json_decref(a);
    json_decref(b);
    free(s);
}

static void write_secrets(void)
{
    nx_info("llm", "calling with Authorization: Bearer abcdefgh12345678 key sk-ant-api03-%s",
            "ZZZZZZZZZZZZZZZZZZZZZZZZ");
    nx_info("llm", "aws AKIAIOSFODNN7EXAMPLE hex 0123456789abcdef0123456789abcdef");
}

static void assert_no_secrets(const char *s)
{
    assert_null(strstr(s, "abcdefgh12345678"));
    assert_null(strstr(s, "ZZZZZZZZ"));
    assert_null(strstr(s, "AKIAIOSFODNN7EXAMPLE"));
    assert_null(strstr(s, "0123456789abcdef0123456789abcdef"));
    assert_non_null(strstr(s, "Bearer [REDACTED]"));
}

static void test_log_redacts_human_and_json(void **state)
{
    (void)state;
    write_secrets();
    char *s = log_contents();
    assert_int_equal(count_lines(s), 2);
    assert_no_secrets(s);
    assert_non_null(strstr(s, "aws [REDACTED] hex [REDACTED]\n"));
    free(s);

    assert_int_equal(ftruncate(log_fd, 0), 0);
    assert_int_equal(lseek(log_fd, 0, SEEK_SET), 0);
    nx_log_set_json(true);
    write_secrets();
    s = log_contents();
    assert_int_equal(count_lines(s), 2);
    assert_no_secrets(s);
    json_error_t err;
    json_t *j = json_loads(s, JSON_DISABLE_EOF_CHECK, &err);
    assert_non_null(j);
    assert_non_null(strstr(json_string_value(json_object_get(j, "msg")), "key [REDACTED]"));
    json_decref(j);
    free(s);
}

static void *other_thread(void *arg)
{
    (void)arg;
    nx_info("other", "from another thread");
    return NULL;
}

static void test_log_context_is_per_thread(void **state)
{
    (void)state;
    pthread_t t;
    nx_log_set_context("coder", "s-1");
    assert_int_equal(pthread_create(&t, NULL, other_thread, NULL), 0);
    pthread_join(t, NULL);
    nx_info("mine", "here");
    char *s = log_contents();
    assert_non_null(strstr(s, "other: from another thread\n"));
    assert_non_null(strstr(s, "mine agent=coder session=s-1: here\n"));
    free(s);
}

/* ---- sinks ---- */

struct seen {
    int lines;
    int recursed;
    enum nx_log_level last_level;
    char component[32];
    char agent[32];
    char msg[256];
};

static void sink_collect(const struct nx_log_line *l, void *udata)
{
    struct seen *s = udata;
    s->lines++;
    s->last_level = l->level;
    snprintf(s->component, sizeof s->component, "%s", l->component);
    snprintf(s->agent, sizeof s->agent, "%s", l->agent ? l->agent : "");
    snprintf(s->msg, sizeof s->msg, "%s", l->msg);
    assert_int_equal(strlen(l->msg), l->len);
}

/* Logs from inside the sink: must reach the fd only, never this sink again. */
static void sink_that_logs(const struct nx_log_line *l, void *udata)
{
    struct seen *s = udata;
    s->lines++;
    if (strcmp(l->component, "inner") == 0)
        s->recursed++;
    nx_error("inner", "from the sink");
}

static void test_log_sink_gets_redacted_lines_at_its_level(void **state)
{
    struct seen a, b;
    (void)state;
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    evaluated = 0;
    assert_int_equal(nx_log_gate(), NX_LOG_INFO);
    assert_int_equal(nx_log_sink_add(sink_collect, &a, NX_LOG_DEBUG), 0);
    assert_int_equal(nx_log_gate(), NX_LOG_DEBUG);
    assert_int_equal(nx_log_level(), NX_LOG_INFO);
    assert_int_equal(nx_log_sink_add(sink_collect, &b, NX_LOG_WARN), 0);
    nx_log_set_context("coder", NULL);
    nx_debug("turn", "debug %s key sk-ant-api03-abcdefghijklmnopqrstuvwxyz0123456789", side_effect());
    nx_trace("turn", "trace %s", side_effect());
    assert_int_equal(evaluated, 1); /* trace is below every sink: not formatted */
    assert_int_equal(a.lines, 1);
    assert_int_equal(b.lines, 0);
    assert_int_equal(a.last_level, NX_LOG_DEBUG);
    assert_string_equal(a.component, "turn");
    assert_string_equal(a.agent, "coder");
    assert_null(strstr(a.msg, "abcdefghijklmnop"));
    assert_non_null(strstr(a.msg, "[REDACTED]"));
    nx_warn("turn", "warned");
    assert_int_equal(a.lines, 2);
    assert_int_equal(b.lines, 1);
    assert_string_equal(b.msg, "warned");

    /* The debug line went to the sink only; the fd still has its level. */
    char *s = log_contents();
    assert_null(strstr(s, "debug expensive"));
    assert_non_null(strstr(s, "turn agent=coder: warned\n"));
    free(s);

    /* Adding the same pair again changes its level; removing restores the gate. */
    assert_int_equal(nx_log_sink_add(sink_collect, &a, NX_LOG_ERROR), 0);
    assert_int_equal(nx_log_gate(), NX_LOG_INFO);
    nx_log_sink_remove(sink_collect, &a);
    nx_log_sink_remove(sink_collect, &b);
    nx_log_sink_remove(sink_collect, &b);
    assert_int_equal(nx_log_gate(), NX_LOG_INFO);
    nx_warn("turn", "after");
    assert_int_equal(a.lines, 2);
    assert_int_equal(b.lines, 1);
}

static void test_log_sink_is_never_reentered_and_slots_are_capped(void **state)
{
    struct seen a, many[NX_LOG_MAX_SINKS];
    (void)state;
    memset(&a, 0, sizeof a);
    assert_int_equal(nx_log_sink_add(sink_that_logs, &a, NX_LOG_INFO), 0);
    nx_info("outer", "one");
    assert_int_equal(a.lines, 1);
    assert_int_equal(a.recursed, 0);
    char *s = log_contents();
    assert_non_null(strstr(s, "inner: from the sink\n"));
    free(s);
    for (size_t i = 0; i < NX_LOG_MAX_SINKS - 1; i++)
        assert_int_equal(nx_log_sink_add(sink_collect, &many[i], NX_LOG_ERROR), 0);
    assert_int_not_equal(nx_log_sink_add(sink_collect, &many[NX_LOG_MAX_SINKS - 1], NX_LOG_ERROR), 0);
    for (size_t i = 0; i < NX_LOG_MAX_SINKS; i++)
        nx_log_sink_remove(sink_collect, &many[i]);
    nx_log_sink_remove(sink_that_logs, &a);
    assert_int_equal(nx_log_gate(), NX_LOG_INFO);
}

struct sink_race {
    _Atomic int lines;
    _Atomic bool stop;
};

static void sink_count(const struct nx_log_line *l, void *udata)
{
    struct sink_race *r = udata;
    (void)l;
    atomic_fetch_add(&r->lines, 1);
}

static void *logger_thread(void *arg)
{
    struct sink_race *r = arg;
    for (int i = 0; i < 20000 && !atomic_load(&r->stop); i++)
        nx_debug("race", "line %d", i);
    return NULL;
}

/* Sinks come and go while another thread logs (TSan checks the locking). */
static void test_log_sink_add_remove_while_logging(void **state)
{
    struct sink_race r;
    pthread_t t;
    (void)state;
    atomic_init(&r.lines, 0);
    atomic_init(&r.stop, false);
    assert_int_equal(pthread_create(&t, NULL, logger_thread, &r), 0);
    for (int i = 0; i < 200; i++) {
        assert_int_equal(nx_log_sink_add(sink_count, &r, NX_LOG_DEBUG), 0);
        nx_log_sink_remove(sink_count, &r);
    }
    atomic_store(&r.stop, true);
    pthread_join(t, NULL);
    int seen = atomic_load(&r.lines);
    nx_debug("race", "after");
    assert_int_equal(atomic_load(&r.lines), seen);
    assert_int_equal(nx_log_gate(), NX_LOG_INFO);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_log_level_filters_before_formatting, open_log, close_log),
        cmocka_unit_test_setup_teardown(test_log_human_line_shape, open_log, close_log),
        cmocka_unit_test_setup_teardown(test_log_newline_does_not_split_human_line, open_log, close_log),
        cmocka_unit_test_setup_teardown(test_log_control_characters_are_shown_not_acted_on, open_log,
                                        close_log),
        cmocka_unit_test_setup_teardown(test_log_json_lines_parse, open_log, close_log),
        cmocka_unit_test_setup_teardown(test_log_redacts_human_and_json, open_log, close_log),
        cmocka_unit_test_setup_teardown(test_log_context_is_per_thread, open_log, close_log),
        cmocka_unit_test_setup_teardown(test_log_sink_gets_redacted_lines_at_its_level, open_log, close_log),
        cmocka_unit_test_setup_teardown(test_log_sink_is_never_reentered_and_slots_are_capped, open_log,
                                        close_log),
        cmocka_unit_test_setup_teardown(test_log_sink_add_remove_while_logging, open_log, close_log),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
