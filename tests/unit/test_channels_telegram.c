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
        "{\"update_id\":10,\"channel_post\":{\"message_id\":1,\"text\":\"x\",\"chat\":{\"id\":5}}},"
        "{\"update_id\":11,\"message\":{\"message_id\":6,\"text\":\"  \\n\\t \","
        "\"from\":{\"id\":42},\"chat\":{\"id\":42,\"type\":\"private\"}}}"
        "]}";
    struct nx_tg_update *v;
    size_t n;
    char err[128];
    assert_int_equal(nx_tg_parse_updates(body, strlen(body), &v, &n, err, sizeof err), 0);
    assert_int_equal(n, 5);
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
    assert_int_equal(v[4].update_id, 11);
    assert_false(v[4].has_message); /* white space only: nothing to answer (the APIs refuse it) */
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

static void test_telegram_parses_buttons_and_media(void **state)
{
    (void)state;
    const char *body =
        "{\"ok\":true,\"result\":["
        "{\"update_id\":20,\"callback_query\":{\"id\":\"77\",\"from\":{\"id\":42},\"data\":\"yes\","
        "\"message\":{\"message_id\":9,\"chat\":{\"id\":-5,\"type\":\"group\"}}}},"
        "{\"update_id\":21,\"message\":{\"message_id\":10,\"caption\":\"look\",\"chat\":{\"id\":42},"
        "\"from\":{\"id\":42},\"photo\":[{\"file_id\":\"small\",\"width\":90,\"height\":90,\"file_size\":9},"
        "{\"file_id\":\"big\",\"width\":800,\"height\":600,\"file_size\":900},{\"width\":9000}]}},"
        "{\"update_id\":22,\"message\":{\"message_id\":11,\"chat\":{\"id\":42},\"document\":"
        "{\"file_id\":\"d\",\"file_name\":\"../../etc/passwd\",\"mime_type\":\"text/plain\","
        "\"file_size\":-3}}},"
        "{\"update_id\":23,\"callback_query\":{\"from\":{\"id\":42},\"data\":\"no id\"}},"
        "{\"update_id\":24,\"message\":{\"message_id\":12,\"chat\":{\"id\":42},\"photo\":[{}]}}"
        "]}";
    struct nx_tg_update *v;
    size_t n;
    char err[128];
    assert_int_equal(nx_tg_parse_updates(body, strlen(body), &v, &n, err, sizeof err), 0);
    assert_int_equal(n, 5);
    assert_true(v[0].has_message);
    assert_string_equal(v[0].callback_id, "77");
    assert_string_equal(v[0].callback_data, "yes");
    assert_int_equal(v[0].chat_id, -5);
    assert_int_equal(v[0].from_id, 42);
    assert_true(v[0].is_group);
    assert_null(v[0].text);
    assert_true(v[1].has_message);
    assert_string_equal(v[1].text, "look");
    assert_string_equal(v[1].media->type, "photo");
    assert_string_equal(v[1].media->file_id, "big");
    assert_int_equal(v[1].media->size, 900);
    assert_null(v[1].callback_id);
    assert_true(v[2].has_message);
    assert_null(v[2].text);
    assert_string_equal(v[2].media->type, "document");
    assert_string_equal(v[2].media->file_name, "../../etc/passwd"); /* kept as data, never a path */
    assert_string_equal(v[2].media->mime, "text/plain");
    assert_int_equal(v[2].media->size, 0);
    assert_false(v[3].has_message); /* a callback without an id */
    assert_false(v[4].has_message); /* a photo without a file_id */
    nx_tg_updates_free(v, n);
}

/* Whom a group message addresses: "@name" mentions, "/cmd@name", and a command naming no bot. */
static void test_telegram_parses_mentions_and_commands(void **state)
{
    (void)state;
    const char *body =
        "{\"ok\":true,\"result\":["
        "{\"update_id\":1,\"message\":{\"message_id\":1,\"chat\":{\"id\":-5,\"type\":\"group\"},"
        "\"text\":\"/menu please\",\"entities\":[{\"type\":\"bot_command\",\"offset\":0,\"length\":5}]}},"
        "{\"update_id\":2,\"message\":{\"message_id\":2,\"chat\":{\"id\":-5,\"type\":\"group\"},"
        "\"text\":\"/menu@Other_Bot\","
        "\"entities\":[{\"type\":\"bot_command\",\"offset\":0,\"length\":15}]}},"
        "{\"update_id\":3,\"message\":{\"message_id\":3,\"chat\":{\"id\":-5,\"type\":\"group\"},"
        "\"text\":\"see /menu, @Kate_Bot\","
        "\"entities\":[{\"type\":\"bot_command\",\"offset\":4,\"length\":5},"
        "{\"type\":\"mention\",\"offset\":11,\"length\":9}]}}"
        "]}";
    struct nx_tg_update *v;
    size_t n;
    char err[128];
    assert_int_equal(nx_tg_parse_updates(body, strlen(body), &v, &n, err, sizeof err), 0);
    assert_int_equal(n, 3);
    assert_true(v[0].is_bare_command);
    assert_null(v[0].mentions);
    assert_false(v[1].is_bare_command); /* meant for another bot */
    assert_string_equal(v[1].mentions, "@other_bot ");
    assert_false(v[2].is_bare_command); /* a command inside the text opens nothing */
    assert_string_equal(v[2].mentions, "@kate_bot ");
    /* a bare command addresses a bot in privacy mode (Telegram hands it only the commands meant
     * for it), not one that reads every group message (it may be another bot's) */
    assert_true(nx_tg_addresses_bot(&v[0], "@kate_bot ", 7, false));
    assert_false(nx_tg_addresses_bot(&v[0], "@kate_bot ", 7, true));
    assert_false(nx_tg_addresses_bot(&v[1], "@kate_bot ", 7, false));
    assert_true(nx_tg_addresses_bot(&v[2], "@kate_bot ", 7, true));
    assert_false(nx_tg_addresses_bot(&v[2], NULL, 7, false));
    nx_tg_updates_free(v, n);
}

static void test_telegram_keyboard_is_checked(void **state)
{
    (void)state;
    char err[160];
    json_t *out = NULL;
    json_t *b = json_loads("[[{\"text\":\"Yes\",\"data\":\"y\"},"
                           "{\"text\":\"Site\",\"url\":\"https://x.org\"}],"
                           "[{\"text\":\"No\",\"data\":\"n\"}]]", 0, NULL);
    assert_int_equal(nx_tg_keyboard(b, &out, err, sizeof err), 0);
    char *s = json_dumps(out, JSON_COMPACT);
    assert_string_equal(s, "{\"inline_keyboard\":[[{\"text\":\"Yes\",\"callback_data\":\"y\"},"
                           "{\"text\":\"Site\",\"url\":\"https://x.org\"}],[{\"text\":\"No\","
                           "\"callback_data\":\"n\"}]]}");
    free(s);
    json_decref(out);
    json_decref(b);
    static const struct {
        const char *json, *why;
    } bad[] = {
        {"[]", "non-empty list of rows"},
        {"{}", "non-empty list of rows"},
        {"[[]]", "1 to 8 buttons"},
        {"[[{\"text\":\"a\"}]]", "exactly one of"},
        {"[[{\"text\":\"a\",\"data\":\"x\",\"url\":\"https://x\"}]]", "exactly one of"},
        {"[[{\"text\":\"\",\"data\":\"x\"}]]", "1 to 64 bytes"},
        {"[[{\"text\":\"a\",\"data\":"
         "\"0123456789012345678901234567890123456789012345678901234567890123X\"}]]",
         "\"data\" must be 1 to 64 bytes"},
        {"[[{\"text\":\"a\",\"url\":\"javascript:alert(1)\"}]]", "http(s)://"},
        {"[[1,2,3,4,5,6,7,8,9]]", "1 to 8 buttons"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        b = json_loads(bad[i].json, JSON_DECODE_ANY, NULL);
        assert_non_null(b);
        assert_int_equal(nx_tg_keyboard(b, &out, err, sizeof err), NX_EINVAL);
        assert_null(out);
        if (!strstr(err, bad[i].why))
            print_error("%s: %s\n", bad[i].json, err);
        assert_non_null(strstr(err, bad[i].why));
        json_decref(b);
    }
}

static void test_telegram_file_paths_are_checked(void **state)
{
    (void)state;
    char path[64];
    int64_t size = -1;
    const char *ok = "{\"ok\":true,\"result\":{\"file_id\":\"x\",\"file_size\":12,"
                     "\"file_path\":\"photos/f_1.jpg\"}}";
    assert_int_equal(nx_tg_parse_file(ok, strlen(ok), path, sizeof path, &size), 0);
    assert_string_equal(path, "photos/f_1.jpg");
    assert_int_equal(size, 12);
    static const char *const bad[] = {
        "{\"ok\":true,\"result\":{\"file_path\":\"../secret\"}}",
        "{\"ok\":true,\"result\":{\"file_path\":\"/etc/passwd\"}}",
        "{\"ok\":true,\"result\":{\"file_path\":\"a b\"}}",
        "{\"ok\":true,\"result\":{\"file_path\":\"a?x=1\"}}",
        "{\"ok\":false,\"result\":{\"file_path\":\"a\"}}",
        "{\"ok\":true,\"result\":{}}",
        "nope",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        assert_int_equal(nx_tg_parse_file(bad[i], strlen(bad[i]), path, sizeof path, &size), NX_EPROTO);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_telegram_parses_updates),
        cmocka_unit_test(test_telegram_rejects_bad_answers),
        cmocka_unit_test(test_telegram_reads_retry_after),
        cmocka_unit_test(test_telegram_config_accepts_nexo_rs_shapes),
        cmocka_unit_test(test_telegram_config_errors_have_positions),
        cmocka_unit_test(test_telegram_parses_buttons_and_media),
        cmocka_unit_test(test_telegram_parses_mentions_and_commands),
        cmocka_unit_test(test_telegram_keyboard_is_checked),
        cmocka_unit_test(test_telegram_file_paths_are_checked),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
