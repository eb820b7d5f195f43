#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/error.h"
#include "http/sse.h"

/* Events seen by the reader, serialised one per line as "event|data|id" (data with '\n' shown
 * as "\\n") so whole sequences compare with one string compare. */
struct seen {
    struct nx_buf log;
    int count;
    int stop_at; /* return non-zero on this event number (1-based); 0 = never */
};

static int on_event(const struct nx_sse_event *ev, void *udata)
{
    struct seen *s = udata;

    assert_int_equal(strlen(ev->data), ev->data_len);
    nx_buf_printf(&s->log, "%s|", ev->event);
    for (size_t i = 0; i < ev->data_len; i++) {
        if (ev->data[i] == '\n')
            nx_buf_puts(&s->log, "\\n");
        else
            nx_buf_putc(&s->log, ev->data[i]);
    }
    nx_buf_printf(&s->log, "|%s\n", ev->id);
    s->count++;
    return s->stop_at && s->count == s->stop_at ? 42 : 0;
}

/* Feeds `in` in pieces of `step` bytes (0 = all at once); returns the last feed's rc. */
static int feed(struct nx_sse_reader *r, const char *in, size_t len, size_t step)
{
    int rc = 0;

    if (step == 0)
        return nx_sse_feed(r, in, len);
    for (size_t i = 0; i < len && rc == 0; i += step)
        rc = nx_sse_feed(r, in + i, len - i < step ? len - i : step);
    return rc;
}

/* Reads `in` (split every `step` bytes) and checks the event log equals `want`. */
static void expect_events(const char *in, size_t len, size_t step, const char *want)
{
    struct seen s = {NX_BUF_INIT, 0, 0};
    struct nx_sse_reader r;

    nx_sse_reader_init(&r, 0, on_event, &s);
    assert_int_equal(feed(&r, in, len, step), 0);
    assert_string_equal(nx_buf_cstr(&s.log), want);
    nx_sse_reader_cleanup(&r);
    nx_buf_cleanup(&s.log);
}

static void expect_all_splits(const char *in, const char *want)
{
    size_t len = strlen(in);
    for (size_t step = 0; step <= 7; step++)
        expect_events(in, len, step, want);
}

static void test_sse_spec_example_ids_and_leading_space(void **state)
{
    (void)state;
    expect_all_splits(": test stream\n\n"
                      "data: first event\nid: 1\n\n"
                      "data:second event\nid\n\n"
                      "data:  third event\n\n",
                      "message|first event|1\n"
                      "message|second event|\n"
                      "message| third event|\n");
}

static void test_sse_spec_example_empty_data_and_unterminated_block(void **state)
{
    (void)state;
    expect_all_splits("data\n\ndata\ndata\n\ndata:", "message||\nmessage|\\n|\n");
}

static void test_sse_spec_example_space_after_colon_is_optional(void **state)
{
    (void)state;
    expect_all_splits("data:test\n\ndata: test\n\n", "message|test|\nmessage|test|\n");
}

static void test_sse_spec_example_multiline_data(void **state)
{
    (void)state;
    expect_all_splits("data: YHOO\ndata: +2\ndata: 10\n\n", "message|YHOO\\n+2\\n10|\n");
}

static void test_sse_every_line_ending_style(void **state)
{
    (void)state;
    const char *want = "add|73857293|\nremove|2153|\nadd|113411|\n";
    expect_all_splits("event: add\ndata: 73857293\n\nevent: remove\ndata: 2153\n\n"
                      "event: add\ndata: 113411\n\n", want);
    expect_all_splits("event: add\r\ndata: 73857293\r\n\r\nevent: remove\r\ndata: 2153\r\n\r\n"
                      "event: add\r\ndata: 113411\r\n\r\n", want);
    expect_all_splits("event: add\rdata: 73857293\r\revent: remove\rdata: 2153\r\r"
                      "event: add\rdata: 113411\r\r", want);
    /* mixed in one stream */
    expect_all_splits("event: add\rdata: 73857293\n\r\nevent: remove\r\ndata: 2153\r\r"
                      "event: add\ndata: 113411\r\n\n", want);
}

static void test_sse_crlf_split_across_chunks_is_one_line_end(void **state)
{
    (void)state;
    struct seen s = {NX_BUF_INIT, 0, 0};
    struct nx_sse_reader r;

    nx_sse_reader_init(&r, 0, on_event, &s);
    /* were the LF taken as a second line end, "a" would be dispatched alone */
    assert_int_equal(nx_sse_feed(&r, "data: a\r", 8), 0);
    assert_int_equal(nx_sse_feed(&r, "", 0), 0); /* an empty chunk changes nothing */
    assert_int_equal(nx_sse_feed(&r, "\ndata: b\r", 9), 0);
    assert_int_equal(s.count, 0);
    /* the CR alone ends the blank line: dispatch now; the LF that follows adds nothing */
    assert_int_equal(nx_sse_feed(&r, "\n\r", 2), 0);
    assert_int_equal(s.count, 1);
    assert_int_equal(nx_sse_feed(&r, "\n", 1), 0);
    assert_int_equal(s.count, 1);
    assert_string_equal(nx_buf_cstr(&s.log), "message|a\\nb|\n");
    /* a CR ending a chunk followed by a non-LF: the CR alone ended the line */
    assert_int_equal(nx_sse_feed(&r, "data: c\r", 8), 0);
    assert_int_equal(nx_sse_feed(&r, "\r", 1), 0);
    assert_string_equal(nx_buf_cstr(&s.log), "message|a\\nb|\nmessage|c|\n");
    nx_sse_reader_cleanup(&r);
    nx_buf_cleanup(&s.log);
}

static void test_sse_byte_at_a_time_equals_whole(void **state)
{
    (void)state;
    const char *in = "\xEF\xBB\xBF: hi\r\nretry: 10\nevent: a\r\ndata: 1\r\ndata:2\r\r"
                     "id: 9\ndata:  x \n\n:c\rfoo: bar\ndata\n\nid\ndata: z\r\n\r\nevent: q\n";
    struct seen whole = {NX_BUF_INIT, 0, 0}, bytes = {NX_BUF_INIT, 0, 0};
    struct nx_sse_reader r1, r2;

    nx_sse_reader_init(&r1, 0, on_event, &whole);
    nx_sse_reader_init(&r2, 0, on_event, &bytes);
    assert_int_equal(feed(&r1, in, strlen(in), 0), 0);
    assert_int_equal(feed(&r2, in, strlen(in), 1), 0);
    assert_string_equal(nx_buf_cstr(&whole.log), nx_buf_cstr(&bytes.log));
    assert_string_equal(nx_buf_cstr(&whole.log), "a|1\\n2|\nmessage| x |9\nmessage||9\nmessage|z|\n");
    assert_int_equal(r1.retry_ms, 10);
    assert_int_equal(r2.retry_ms, 10);
    nx_sse_reader_cleanup(&r1);
    nx_sse_reader_cleanup(&r2);
    nx_buf_cleanup(&whole.log);
    nx_buf_cleanup(&bytes.log);
}

static void test_sse_bom_is_ignored_only_at_start(void **state)
{
    (void)state;
    expect_all_splits("\xEF\xBB\xBF" "data: x\n\n", "message|x|\n");
    /* a second BOM is part of the field name, which is then unknown */
    expect_all_splits("\xEF\xBB\xBF\xEF\xBB\xBF" "data: x\n\ndata: y\n\n", "message|y|\n");
    /* something that only starts like a BOM is kept */
    expect_all_splits("\xEF\xBB" "data: x\n\ndata: y\n\n", "message|y|\n");
    expect_all_splits("\n" "data: y\n\n", "message|y|\n");
}

static void test_sse_comments_and_unknown_fields_are_ignored(void **state)
{
    (void)state;
    expect_all_splits(":\n: comment\n:data: no\nfoo: bar\nDATA: no\ndata : no\ndata: yes\n\n",
                      "message|yes|\n");
    /* a comment-only block dispatches nothing */
    expect_all_splits(": ping\n\n: ping\n\n", "");
}

static void test_sse_retry_accepts_digits_only(void **state)
{
    (void)state;
    struct nx_sse_reader r;
    const char *in;

    nx_sse_reader_init(&r, 0, NULL, NULL);
    assert_int_equal(r.retry_ms, -1);
    in = "retry: 3000\n";
    assert_int_equal(nx_sse_feed(&r, in, strlen(in)), 0);
    assert_int_equal(r.retry_ms, 3000);
    in = "retry: 3x\nretry:\nretry: -5\nretry: 1 \n";
    assert_int_equal(nx_sse_feed(&r, in, strlen(in)), 0);
    assert_int_equal(r.retry_ms, 3000);
    in = "retry:0\n";
    assert_int_equal(nx_sse_feed(&r, in, strlen(in)), 0);
    assert_int_equal(r.retry_ms, 0);
    nx_sse_reader_cleanup(&r);
}

static void test_sse_id_persists_and_nul_ids_are_ignored(void **state)
{
    (void)state;
    static const char in[] = "id: 7\ndata: a\n\ndata: b\n\nid: x\0y\ndata: c\n\nid:\ndata: d\n\n";
    expect_events(in, sizeof in - 1, 0, "message|a|7\nmessage|b|7\nmessage|c|7\nmessage|d|\n");
    expect_events(in, sizeof in - 1, 1, "message|a|7\nmessage|b|7\nmessage|c|7\nmessage|d|\n");
    /* the event name does not persist */
    expect_all_splits("event: x\ndata: 1\n\ndata: 2\n\nevent: y\n\ndata: 3\n\n",
                      "x|1|\nmessage|2|\nmessage|3|\n");
}

static void test_sse_caps_line_and_event(void **state)
{
    (void)state;
    struct nx_sse_reader r;
    struct seen s = {NX_BUF_INIT, 0, 0};
    char big[200];

    /* exactly at the cap is fine */
    nx_sse_reader_init(&r, 16, on_event, &s);
    assert_int_equal(nx_sse_feed(&r, "data: 0123456789\n\n", 18), 0);
    assert_int_equal(s.count, 1);
    nx_sse_reader_cleanup(&r);

    /* one line over the cap, fed whole or in pieces, with no terminator yet */
    memset(big, 'a', sizeof big);
    nx_sse_reader_init(&r, 100, on_event, &s);
    assert_int_equal(nx_sse_feed(&r, big, sizeof big), NX_ETOOBIG);
    nx_sse_reader_cleanup(&r);
    nx_sse_reader_init(&r, 100, on_event, &s);
    assert_int_equal(feed(&r, big, sizeof big, 7), NX_ETOOBIG);
    nx_sse_reader_cleanup(&r);
    /* a comment line counts too */
    nx_sse_reader_init(&r, 10, on_event, &s);
    assert_int_equal(nx_sse_feed(&r, ": 0123456789abc\n", 16), NX_ETOOBIG);
    nx_sse_reader_cleanup(&r);

    /* short lines adding up to an event over the cap */
    nx_sse_reader_init(&r, 15, on_event, &s);
    s.count = 0;
    assert_int_equal(nx_sse_feed(&r, "data: 12345\ndata: 12345\n", 24), 0);
    assert_int_equal(nx_sse_feed(&r, "data: 12345\n", 12), NX_ETOOBIG);
    assert_int_equal(s.count, 0);
    nx_sse_reader_cleanup(&r);
    nx_buf_cleanup(&s.log);
}

static void test_sse_callback_stop_value_is_returned(void **state)
{
    (void)state;
    struct nx_sse_reader r;
    struct seen s = {NX_BUF_INIT, 0, 2};
    const char *in = "data: 1\n\ndata: 2\n\ndata: 3\n\n";

    nx_sse_reader_init(&r, 0, on_event, &s);
    assert_int_equal(nx_sse_feed(&r, in, strlen(in)), 42);
    assert_int_equal(s.count, 2);
    nx_sse_reader_cleanup(&r);
    nx_buf_cleanup(&s.log);
}

static void test_sse_unterminated_event_at_eof_is_dropped(void **state)
{
    (void)state;
    expect_all_splits("data: done\n\ndata: partial\n", "message|done|\n");
    expect_all_splits("data: done\n\nevent: x\ndata: partial", "message|done|\n");
}

static void roundtrip(const char *event, const char *data, const char *want)
{
    struct nx_buf out = NX_BUF_INIT;

    nx_sse_write(&out, event, data, strlen(data));
    expect_all_splits(out.data, want);
    nx_buf_cleanup(&out);
}

static void test_sse_writer_round_trips_through_reader(void **state)
{
    (void)state;
    struct nx_buf out = NX_BUF_INIT;

    nx_sse_write(&out, "delta", "a\nb", 3);
    assert_string_equal(out.data, "event: delta\ndata: a\ndata: b\n\n");
    nx_buf_reset(&out);
    nx_sse_write(&out, NULL, "x", 1);
    assert_string_equal(out.data, "data: x\n\n");
    nx_buf_cleanup(&out);

    roundtrip("delta", "{\"text\":\"hi\"}", "delta|{\"text\":\"hi\"}|\n");
    roundtrip(NULL, "", "message||\n");
    roundtrip(NULL, "a\nb\n", "message|a\\nb\\n|\n");
    roundtrip(NULL, "\n", "message|\\n|\n");
    roundtrip(NULL, " lead: x", "message| lead: x|\n");
    roundtrip(NULL, "data: inner\n\nmore", "message|data: inner\\n\\nmore|\n");
    /* CR and CRLF inside data come back as LF */
    roundtrip("e", "a\r\nb\rc", "e|a\\nb\\nc|\n");
    /* an event name cannot inject lines */
    roundtrip("x\ndata: evil", "ok", "x|ok|\n");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sse_spec_example_ids_and_leading_space),
        cmocka_unit_test(test_sse_spec_example_empty_data_and_unterminated_block),
        cmocka_unit_test(test_sse_spec_example_space_after_colon_is_optional),
        cmocka_unit_test(test_sse_spec_example_multiline_data),
        cmocka_unit_test(test_sse_every_line_ending_style),
        cmocka_unit_test(test_sse_crlf_split_across_chunks_is_one_line_end),
        cmocka_unit_test(test_sse_byte_at_a_time_equals_whole),
        cmocka_unit_test(test_sse_bom_is_ignored_only_at_start),
        cmocka_unit_test(test_sse_comments_and_unknown_fields_are_ignored),
        cmocka_unit_test(test_sse_retry_accepts_digits_only),
        cmocka_unit_test(test_sse_id_persists_and_nul_ids_are_ignored),
        cmocka_unit_test(test_sse_caps_line_and_event),
        cmocka_unit_test(test_sse_callback_stop_value_is_returned),
        cmocka_unit_test(test_sse_unterminated_event_at_eof_is_dropped),
        cmocka_unit_test(test_sse_writer_round_trips_through_reader),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
