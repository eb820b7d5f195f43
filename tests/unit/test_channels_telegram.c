#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "channels/channels.h"
#include "channels/telegram.h"
#include "config/config.h"
#include "core/error.h"

static void test_telegram_parses_updates(void **state)
{
    (void)state;
    const char *body =
        "{\"ok\":true,\"result\":["
        "{\"update_id\":7,\"message\":{\"message_id\":3,\"date\":1700000000,\"text\":\"hi\","
        "\"from\":{\"id\":42,\"is_bot\":false},\"chat\":{\"id\":42,\"type\":\"private\"}}},"
        "{\"update_id\":8,\"message\":{\"message_id\":4,\"date\":1,\"sticker\":{},"
        "\"from\":{\"id\":42},\"chat\":{\"id\":42,\"type\":\"private\"}}},"
        "{\"no_id\":true},"
        "{\"update_id\":9,\"message\":{\"message_id\":5,\"text\":\"all\","
        "\"from\":{\"id\":43},\"chat\":{\"id\":-1001,\"type\":\"supergroup\"}}},"
        "{\"update_id\":10,\"channel_post\":{\"message_id\":1,\"text\":\"x\",\"chat\":{\"id\":5}}}"
        "]}";
    struct nx_tg_update *v;
    size_t n;
    char err[128];
    assert_int_equal(nx_tg_parse_updates(body, strlen(body), &v, &n, err, sizeof err), 0);
    assert_int_equal(n, 4);
    assert_int_equal(v[0].update_id, 7);
    assert_true(v[0].has_message);
    assert_string_equal(v[0].text, "hi");
    assert_int_equal(v[0].chat_id, 42);
    assert_int_equal(v[0].from_id, 42);
    assert_int_equal(v[0].message_id, 3);
    assert_int_equal(v[0].date, 1700000000);
    assert_false(v[0].is_group);
    assert_int_equal(v[1].update_id, 8);
    assert_false(v[1].has_message); /* a sticker: skipped, offset still advances */
    assert_int_equal(v[2].update_id, 9);
    assert_true(v[2].is_group);
    assert_int_equal(v[2].chat_id, -1001);
    assert_int_equal(v[3].update_id, 10);
    assert_false(v[3].has_message);
    nx_tg_updates_free(v, n);

    assert_int_equal(nx_tg_parse_updates("{\"ok\":true,\"result\":[]}", 23, &v, &n, err, sizeof err), 0);
    assert_int_equal(n, 0);
    assert_null(v);
}

static void test_telegram_rejects_bad_answers(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "", "nope", "[]", "{\"ok\":false,\"result\":[]}", "{\"ok\":true}", "{\"ok\":true,\"result\":{}}",
        "{\"ok\":true,\"ok\":true,\"result\":[]}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        struct nx_tg_update *v;
        size_t n;
        char err[128] = "";
        assert_int_equal(nx_tg_parse_updates(bad[i], strlen(bad[i]), &v, &n, err, sizeof err), NX_EPROTO);
        assert_true(strncmp(err, "getUpdates:", 11) == 0);
        assert_null(v);
    }
}

static void test_telegram_reads_retry_after(void **state)
{
    (void)state;
    const char *b = "{\"ok\":false,\"error_code\":429,\"description\":\"Too Many Requests: retry after 7\","
                    "\"parameters\":{\"retry_after\":7}}";
    char desc[64];
    uint32_t ra = 99;
    nx_tg_parse_error(b, strlen(b), desc, sizeof desc, &ra);
    assert_int_equal(ra, 7);
    assert_string_equal(desc, "Too Many Requests: retry after 7");
    nx_tg_parse_error("<html>", 6, desc, sizeof desc, &ra);
    assert_int_equal(ra, 0);
    assert_string_equal(desc, "");
    nx_tg_parse_error("{\"message\":\"Unsupported\"}", 25, desc, sizeof desc, &ra);
    assert_string_equal(desc, "Unsupported");
}

/* Loads plugins/telegram.yaml from memory and runs the channel checks: the diagnostics as
 * "line:col: message" lines. */
static int check_yaml(const char *yaml, char *out, size_t outlen)
{
    struct nx_config *cfg = NULL;
    struct nx_diags d;
    nx_diags_init(&d);
    int rc = nx_config_load_mem(NULL, "plugins/telegram.yaml", yaml, strlen(yaml), &cfg, &d);
    assert_int_equal(rc, 0);
    rc = nx_channels_check(cfg, &d);
    size_t off = 0;
    out[0] = '\0';
    for (size_t i = 0; i < d.n && off < outlen; i++)
        off += (size_t)snprintf(out + off, outlen - off, "%d:%d: %s\n", d.v[i].line, d.v[i].col, d.v[i].msg);
    nx_diags_cleanup(&d);
    nx_config_unref(cfg);
    return rc;
}

static void test_telegram_config_accepts_nexo_rs_shapes(void **state)
{
    (void)state;
    char out[2048];
    assert_int_equal(check_yaml("telegram:\n  token: \"1:A\"\n", out, sizeof out), 0);
    assert_int_equal(check_yaml("telegram:\n  - {instance: a, token: \"1:A\", allow_agents: [kate]}\n"
                                "  - instance: b\n    token: \"2:B\"\n    api_url: http://127.0.0.1:1\n"
                                "    polling: {enabled: false, interval_ms: 100, offset_path: x}\n"
                                "    allowlist: {chat_ids: [1, -1002, \"3\"]}\n", out, sizeof out), 0);
    assert_int_equal(check_yaml("token: \"1:A\"\ninstance: solo\n", out, sizeof out), 0);
    assert_int_equal(check_yaml("", out, sizeof out), 0);
}

static void test_telegram_config_errors_have_positions(void **state)
{
    (void)state;
    char out[2048];
    assert_int_equal(check_yaml("telegram:\n  - instance: a\n    tokn: x\n", out, sizeof out), NX_ECONFIG);
    assert_non_null(strstr(out, "3:5: unknown key \"tokn\""));
    assert_non_null(strstr(out, "missing required key \"token\""));
    assert_int_equal(check_yaml("telegram:\n  - {token: \"1:A\", allowlist: {chat_ids: [1, two]}}\n",
                                out, sizeof out), NX_ECONFIG);
    assert_non_null(strstr(out, "2:46: expected an integer chat id"));
    assert_int_equal(check_yaml("telegram:\n  - {instance: a, token: \"1:A\"}\n"
                                "  - {instance: a, token: \"2:B\"}\n", out, sizeof out), NX_ECONFIG);
    assert_non_null(strstr(out, "3:16: duplicate telegram instance \"a\""));
    assert_int_equal(check_yaml("telegram:\n  - {token: \"1:A\"}\n  - {token: \"2:B\"}\n", out, sizeof out),
                     NX_ECONFIG);
    assert_non_null(strstr(out, "a second telegram instance without a name"));
    assert_int_equal(check_yaml("telegram: {instance: a.b, token: \"1:A\", api_url: ftp://x}\n", out,
                                sizeof out), NX_ECONFIG);
    assert_non_null(strstr(out, "must be one subject token"));
    assert_non_null(strstr(out, "api_url must start with http://"));
    assert_int_equal(check_yaml("telegram: [1]\nother: 2\n", out, sizeof out), NX_ECONFIG);
    assert_non_null(strstr(out, "2:1: unknown key \"other\" beside \"telegram\""));
    assert_non_null(strstr(out, "expected a mapping for a telegram instance"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_telegram_parses_updates),
        cmocka_unit_test(test_telegram_rejects_bad_answers),
        cmocka_unit_test(test_telegram_reads_retry_after),
        cmocka_unit_test(test_telegram_config_accepts_nexo_rs_shapes),
        cmocka_unit_test(test_telegram_config_errors_have_positions),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
