#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_buf_appends_and_terminates),
        cmocka_unit_test(test_buf_grows_past_many_doublings),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
