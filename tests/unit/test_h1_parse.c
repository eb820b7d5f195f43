#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/error.h"
#include "http/h1_parse.h"

/* What a response parsed to: every case is fed whole and one byte at a time, which must agree. */
struct parsed {
    struct nx_buf head, body;
    int rc;          /* of the last feed, or of nx_h1_eof when the input ran out */
    long status;
    bool is_keep_alive;
    size_t used;     /* bytes of the input that were part of the response */
    int heads;
    int stop_after;  /* body callback returns non-zero after this many bytes, 0 = never */
    const char *err;
};

static int on_head(struct nx_h1_parser *p, void *ud)
{
    struct parsed *r = ud;
    r->heads++;
    r->status = p->status;
    return 0;
}

static int on_body(const char *d, size_t n, void *ud)
{
    struct parsed *r = ud;
    nx_buf_append(&r->body, d, n);
    return r->stop_after && r->body.len >= (size_t)r->stop_after;
}

static void parse_step(struct parsed *r, const char *in, size_t step, bool is_head, bool eof, int stop_after)
{
    struct nx_h1_parser p;
    size_t len = strlen(in), off = 0;

    memset(r, 0, sizeof *r);
    r->stop_after = stop_after;
    nx_buf_init(&r->head);
    nx_buf_init(&r->body);
    nx_h1_parser_init(&p, &r->head, 1024, is_head);
    r->rc = NX_H1_MORE;
    while (off < len && r->rc == NX_H1_MORE) {
        size_t n = step && len - off > step ? step : len - off, used;
        r->rc = nx_h1_feed(&p, in + off, n, &used, on_head, on_body, r);
        off += used;
    }
    if (r->rc == NX_H1_MORE && eof)
        r->rc = nx_h1_eof(&p);
    r->used = off;
    r->is_keep_alive = p.is_keep_alive;
    r->err = p.err;
}

static void cleanup(struct parsed *r)
{
    nx_buf_cleanup(&r->head);
    nx_buf_cleanup(&r->body);
}

/* Parses whole and byte by byte; checks both agree and returns the whole run in *r. */
static void parse(struct parsed *r, const char *in, bool is_head, bool eof)
{
    struct parsed b;

    parse_step(r, in, 0, is_head, eof, 0);
    parse_step(&b, in, 1, is_head, eof, 0);
    assert_int_equal(r->rc, b.rc);
    assert_int_equal(r->status, b.status);
    if (r->rc >= 0)
        assert_int_equal(r->used, b.used);
    assert_int_equal(r->body.len, b.body.len);
    if (r->body.len)
        assert_memory_equal(r->body.data, b.body.data, r->body.len);
    cleanup(&b);
}

static void test_content_length_body_then_the_next_bytes_are_left(void **state)
{
    static const char in[] = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\ncontent-length: 5\r\n\r\n"
                             "helloHTTP/1.1";
    struct parsed r;

    (void)state;
    parse(&r, in, false, false);
    assert_int_equal(r.rc, NX_H1_COMPLETE);
    assert_int_equal(r.status, 200);
    assert_true(r.is_keep_alive);
    assert_int_equal(r.heads, 1);
    assert_string_equal(nx_buf_cstr(&r.body), "hello");
    assert_int_equal(r.used, strlen(in) - strlen("HTTP/1.1"));
    assert_string_equal(nx_buf_cstr(&r.head),
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\ncontent-length: 5\r\n\r\n");
    cleanup(&r);
}

static void test_chunked_body_with_extensions_and_trailers(void **state)
{
    static const char in[] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n"
                             "\r\n"
                             "5;name=\"v\"\r\nhello\r\nA\r\n, world!!!\r\n0\r\nX-Trailer: yes\r\n\r\n";
    struct parsed r;

    (void)state;
    parse(&r, in, false, false);
    assert_int_equal(r.rc, NX_H1_COMPLETE); /* chunked wins over Content-Length */
    assert_string_equal(nx_buf_cstr(&r.body), "hello, world!!!");
    assert_int_equal(r.used, strlen(in));
    cleanup(&r);
}

static void test_interim_heads_are_dropped(void **state)
{
    static const char in[] = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
                             "HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok";
    struct parsed r;

    (void)state;
    parse(&r, in, false, false);
    assert_int_equal(r.rc, NX_H1_COMPLETE);
    assert_int_equal(r.status, 201);
    assert_int_equal(r.heads, 1);
    assert_string_equal(nx_buf_cstr(&r.head), "HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n");
    cleanup(&r);
}

static void test_bodies_that_are_not_there(void **state)
{
    struct parsed r;

    (void)state;
    parse(&r, "HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n", true, false); /* answer to HEAD */
    assert_int_equal(r.rc, NX_H1_COMPLETE);
    cleanup(&r);
    parse(&r, "HTTP/1.1 204 No Content\n\n", false, false); /* bare LF line ends too */
    assert_int_equal(r.rc, NX_H1_COMPLETE);
    assert_int_equal(r.status, 204);
    cleanup(&r);
    parse(&r, "HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n", false, false);
    assert_int_equal(r.rc, NX_H1_COMPLETE);
    cleanup(&r);
    parse(&r, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", false, false);
    assert_int_equal(r.rc, NX_H1_COMPLETE);
    assert_int_equal(r.body.len, 0);
    cleanup(&r);
}

static void test_body_to_the_end_and_keep_alive_rules(void **state)
{
    struct parsed r;

    (void)state;
    parse(&r, "HTTP/1.0 200 OK\r\n\r\nall of it", false, true);
    assert_int_equal(r.rc, NX_H1_COMPLETE);
    assert_false(r.is_keep_alive);
    assert_string_equal(nx_buf_cstr(&r.body), "all of it");
    cleanup(&r);
    parse(&r, "HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 1\r\n\r\nx", false, false);
    assert_true(r.is_keep_alive);
    cleanup(&r);
    parse(&r, "HTTP/1.1 200 OK\r\nConnection: upgrade, close\r\nContent-Length: 1\r\n\r\nx", false, false);
    assert_false(r.is_keep_alive);
    cleanup(&r);
    /* a coding other than chunked last: the body runs to the end, the connection with it */
    parse(&r, "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nzz", false, true);
    assert_int_equal(r.rc, NX_H1_COMPLETE);
    assert_false(r.is_keep_alive);
    cleanup(&r);
}

static void test_a_short_answer_is_an_error_at_the_end(void **state)
{
    struct parsed r;

    (void)state;
    parse(&r, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", false, true);
    assert_int_equal(r.rc, NX_EHTTP);
    assert_non_null(strstr(r.err, "before the end"));
    cleanup(&r);
    parse(&r, "", false, true);
    assert_int_equal(r.rc, NX_EHTTP);
    assert_string_equal(r.err, "Empty reply from server");
    cleanup(&r);
    parse(&r, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", false, true);
    assert_int_equal(r.rc, NX_EHTTP);
    cleanup(&r);
}

static void test_malformed_answers_are_refused(void **state)
{
    static const char *const bad[] = {
        "HTTP/2 200 OK\r\n\r\n",
        "HTTP/1.1 20 OK\r\n\r\n",
        "HTTP/1.1 2000 OK\r\n\r\n",
        "ICY 200 OK\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        "HTTP/1.1 101 Switching Protocols\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip,\r\n chunked\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\t2\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1234567890abcdef0\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n",
    };
    struct parsed r;

    (void)state;
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        parse(&r, bad[i], false, false);
        if (r.rc != NX_EHTTP)
            fail_msg("accepted: %s", bad[i]);
        assert_non_null(r.err);
        cleanup(&r);
    }
}

/* Lines a client may pass over (curl does), and whitespace before a colon. */
static void test_odd_header_lines_are_passed_over(void **state)
{
    struct parsed r;

    (void)state;
    parse(&r, "HTTP/1.1 200 OK\r\nNo colon here\r\nBad Name: x\r\nA: 1\r\n folded\r\n"
              "Content-Length: 2\r\n\r\nokHTTP", false, false);
    assert_int_equal(r.rc, NX_H1_COMPLETE);
    assert_string_equal(nx_buf_cstr(&r.body), "ok");
    assert_true(r.is_keep_alive);
    cleanup(&r);
    /* "Name :" is not that field (as for curl): no length here, so the body runs to the end */
    parse(&r, "HTTP/1.1 200 OK\r\nContent-Length : 2\r\nTransfer-Encoding : chunked\r\n\r\nokEXTRA",
          false, true);
    assert_int_equal(r.rc, NX_H1_COMPLETE);
    assert_string_equal(nx_buf_cstr(&r.body), "okEXTRA");
    assert_false(r.is_keep_alive);
    cleanup(&r);
}

static void test_size_caps_on_head_and_trailers(void **state)
{
    struct nx_buf in = NX_BUF_INIT;
    struct parsed r;

    (void)state;
    nx_buf_puts(&in, "HTTP/1.1 200 OK\r\n");
    while (in.len < 1100)
        nx_buf_puts(&in, "X-Filler: 0123456789\r\n");
    nx_buf_puts(&in, "\r\n");
    parse(&r, in.data, false, false);
    assert_int_equal(r.rc, NX_ETOOBIG);
    cleanup(&r);
    nx_buf_reset(&in);
    nx_buf_puts(&in, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n");
    while (in.len < 1200)
        nx_buf_puts(&in, "X-Trailer: 0123456789\r\n");
    parse(&r, in.data, false, false);
    assert_int_equal(r.rc, NX_ETOOBIG);
    cleanup(&r);
    nx_buf_cleanup(&in);
}

static void test_a_callback_stops_the_feed(void **state)
{
    static const char in[] = "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789";
    struct parsed r;

    (void)state;
    parse_step(&r, in, 0, false, false, 4);
    assert_int_equal(r.rc, NX_H1_STOPPED);
    assert_int_equal(r.body.len, 10); /* the piece that went over, whole */
    cleanup(&r);
    parse_step(&r, in, 1, false, false, 4);
    assert_int_equal(r.rc, NX_H1_STOPPED);
    assert_int_equal(r.body.len, 4);
    cleanup(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_content_length_body_then_the_next_bytes_are_left),
        cmocka_unit_test(test_chunked_body_with_extensions_and_trailers),
        cmocka_unit_test(test_interim_heads_are_dropped),
        cmocka_unit_test(test_bodies_that_are_not_there),
        cmocka_unit_test(test_body_to_the_end_and_keep_alive_rules),
        cmocka_unit_test(test_a_short_answer_is_an_error_at_the_end),
        cmocka_unit_test(test_malformed_answers_are_refused),
        cmocka_unit_test(test_odd_header_lines_are_passed_over),
        cmocka_unit_test(test_size_caps_on_head_and_trailers),
        cmocka_unit_test(test_a_callback_stops_the_feed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
