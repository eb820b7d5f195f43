#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "channels/channels.h"
#include "channels/whatsapp.h"
#include "config/config.h"
#include "core/buf.h"
#include "core/error.h"

/* The WhatsApp Cloud API wire formats: webhook signatures and bodies, Graph errors, the request
 * bodies sent, and plugins/whatsapp.yaml. */

static void test_whatsapp_signature_is_checked(void **state)
{
    (void)state;
    const char *body = "{\"object\":\"whatsapp_business_account\",\"entry\":[]}";
    char sig[72];
    nx_wa_sign("s3cret", body, strlen(body), sig);
    assert_int_equal(strlen(sig), 71);
    assert_true(nx_wa_signature_ok("s3cret", sig, strlen(sig), body, strlen(body)));
    /* The value of RFC 4231-style known answer: HMAC-SHA256("key", "The quick brown fox...") */
    const char *fox = "The quick brown fox jumps over the lazy dog";
    const char *want = "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8";
    assert_true(nx_wa_signature_ok("key", want, strlen(want), fox, strlen(fox)));
    char upper[72];
    snprintf(upper, sizeof upper, "%s", want);
    for (char *p = upper + 7; *p; p++)
        if (*p >= 'a' && *p <= 'f')
            *p = (char)(*p - 'a' + 'A');
    assert_true(nx_wa_signature_ok("key", upper, strlen(upper), fox, strlen(fox)));
    /* Wrong secret, altered body, malformed headers, empty secret: all refused. */
    assert_false(nx_wa_signature_ok("other", sig, strlen(sig), body, strlen(body)));
    assert_false(nx_wa_signature_ok("s3cret", sig, strlen(sig), body, strlen(body) - 1));
    assert_false(nx_wa_signature_ok("s3cret", NULL, 0, body, strlen(body)));
    assert_false(nx_wa_signature_ok("s3cret", sig + 7, 64, body, strlen(body)));
    assert_false(nx_wa_signature_ok("s3cret", sig, strlen(sig) - 1, body, strlen(body)));
    assert_false(nx_wa_signature_ok("s3cret", "sha1=abc", 8, body, strlen(body)));
    assert_false(nx_wa_signature_ok("", sig, strlen(sig), body, strlen(body)));
    char bad[72];
    snprintf(bad, sizeof bad, "%s", sig);
    bad[70] = bad[70] == '0' ? '1' : '0';
    assert_false(nx_wa_signature_ok("s3cret", bad, strlen(bad), body, strlen(body)));
}

#define VALUE_HEAD "{\"object\":\"whatsapp_business_account\",\"entry\":[{\"id\":\"1\",\"changes\":[" \
                   "{\"field\":\"messages\",\"value\":{\"messaging_product\":\"whatsapp\","            \
                   "\"metadata\":{\"display_phone_number\":\"15550001111\",\"phone_number_id\":\"777\"},"

static void test_whatsapp_parses_every_message_kind(void **state)
{
    (void)state;
    const char *body =
        VALUE_HEAD
        "\"contacts\":[{\"profile\":{\"name\":\"Ana\"},\"wa_id\":\"15551234567\"}],"
        "\"messages\":["
        "{\"from\":\"15551234567\",\"id\":\"wamid.T\",\"timestamp\":\"1700000000\",\"type\":\"text\","
        "\"text\":{\"body\":\"hola\"},\"context\":{\"from\":\"15550001111\",\"id\":\"wamid.P\"}},"
        "{\"from\":\"15551234567\",\"id\":\"wamid.B\",\"timestamp\":\"1\",\"type\":\"interactive\","
        "\"interactive\":{\"type\":\"button_reply\",\"button_reply\":{\"id\":\"yes\",\"title\":\"Yes\"}}},"
        "{\"from\":\"15551234567\",\"id\":\"wamid.L\",\"timestamp\":\"2\",\"type\":\"interactive\","
        "\"interactive\":{\"type\":\"list_reply\",\"list_reply\":{\"id\":\"row2\",\"title\":\"Two\","
        "\"description\":\"d\"}}},"
        "{\"from\":\"15551234567\",\"id\":\"wamid.Q\",\"timestamp\":\"3\",\"type\":\"button\","
        "\"button\":{\"payload\":\"STOP\",\"text\":\"Stop promotions\"}},"
        "{\"from\":\"15551234567\",\"id\":\"wamid.I\",\"timestamp\":\"4\",\"type\":\"image\","
        "\"image\":{\"caption\":\"look\",\"mime_type\":\"image/jpeg\",\"sha256\":\"x\",\"id\":\"m1\"}},"
        "{\"from\":\"15551234567\",\"id\":\"wamid.D\",\"timestamp\":\"5\",\"type\":\"document\","
        "\"document\":{\"filename\":\"a.pdf\",\"mime_type\":\"application/pdf\",\"id\":\"m2\"}},"
        "{\"from\":\"15551234567\",\"id\":\"wamid.A\",\"timestamp\":\"6\",\"type\":\"audio\","
        "\"audio\":{\"mime_type\":\"audio/ogg\",\"id\":\"m3\",\"voice\":true}},"
        "{\"from\":\"15551234567\",\"id\":\"wamid.O\",\"timestamp\":\"7\",\"type\":\"location\","
        "\"location\":{\"latitude\":1,\"longitude\":2}},"
        "{\"from\":\"15551234567\",\"type\":\"text\",\"text\":{\"body\":\"no id: skipped\"}},"
        "\"not an object\","
        "{\"from\":\"15551234567\",\"id\":\"wamid.W\",\"timestamp\":\"8\",\"type\":\"text\","
        "\"text\":{\"body\":\" \\n \"}},"
        "{\"from\":\"15551234567\",\"id\":\"wamid.V\",\"timestamp\":\"9\",\"type\":\"video\","
        "\"video\":{\"caption\":\"  \",\"mime_type\":\"video/mp4\",\"id\":\"m4\"}}"
        "]}}]}]}";
    struct nx_wa_webhook w;
    char err[128];
    assert_int_equal(nx_wa_parse_webhook(body, strlen(body), &w, err, sizeof err), 0);
    assert_int_equal(w.nmsgs, 10);
    assert_int_equal(w.nstatuses, 0);
    const struct nx_wa_msg *m = w.msgs;
    assert_int_equal(m[0].kind, NX_WA_MSG_TEXT);
    assert_string_equal(m[0].text, "hola");
    assert_string_equal(m[0].from, "15551234567");
    assert_string_equal(m[0].id, "wamid.T");
    assert_string_equal(m[0].name, "Ana");
    assert_string_equal(m[0].phone_number_id, "777");
    assert_string_equal(m[0].context_id, "wamid.P");
    assert_int_equal(m[0].timestamp, 1700000000);
    assert_int_equal(m[1].kind, NX_WA_MSG_BUTTON);
    assert_string_equal(m[1].data, "yes");
    assert_string_equal(m[1].text, "Yes");
    assert_int_equal(m[2].kind, NX_WA_MSG_BUTTON);
    assert_string_equal(m[2].data, "row2");
    assert_int_equal(m[3].kind, NX_WA_MSG_BUTTON);
    assert_string_equal(m[3].data, "STOP");
    assert_string_equal(m[3].text, "Stop promotions");
    assert_int_equal(m[4].kind, NX_WA_MSG_MEDIA);
    assert_string_equal(m[4].type, "image");
    assert_string_equal(m[4].data, "m1");
    assert_string_equal(m[4].text, "look");
    assert_string_equal(m[4].mime_type, "image/jpeg");
    assert_int_equal(m[5].kind, NX_WA_MSG_MEDIA);
    assert_string_equal(m[5].filename, "a.pdf");
    assert_null(m[5].text);
    assert_int_equal(m[6].kind, NX_WA_MSG_MEDIA);
    assert_string_equal(m[6].data, "m3");
    assert_int_equal(m[7].kind, NX_WA_MSG_OTHER);
    assert_string_equal(m[7].type, "location");
    assert_int_equal(m[8].kind, NX_WA_MSG_OTHER); /* white space only: nothing to answer */
    assert_int_equal(m[9].kind, NX_WA_MSG_MEDIA); /* a blank caption is none */
    assert_null(m[9].text);
    nx_wa_webhook_cleanup(&w);
}

static void test_whatsapp_parses_statuses(void **state)
{
    (void)state;
    const char *body =
        VALUE_HEAD
        "\"statuses\":["
        "{\"id\":\"wamid.1\",\"status\":\"sent\",\"timestamp\":\"10\",\"recipient_id\":\"155\"},"
        "{\"id\":\"wamid.1\",\"status\":\"delivered\",\"timestamp\":\"11\",\"recipient_id\":\"155\"},"
        "{\"id\":\"wamid.1\",\"status\":\"read\",\"timestamp\":\"12\",\"recipient_id\":\"155\"},"
        "{\"id\":\"wamid.2\",\"status\":\"failed\",\"timestamp\":\"13\",\"recipient_id\":\"155\","
        "\"errors\":[{\"code\":131026,\"title\":\"Message undeliverable\",\"error_data\":"
        "{\"details\":\"Receiver is incapable\"}}]},"
        "{\"status\":\"read\"}"
        "]}},{\"field\":\"account_update\",\"value\":{\"messages\":[{\"id\":\"x\",\"from\":\"1\"}]}}]}]}";
    struct nx_wa_webhook w;
    char err[128];
    assert_int_equal(nx_wa_parse_webhook(body, strlen(body), &w, err, sizeof err), 0);
    assert_int_equal(w.nmsgs, 0); /* the other field's change is not read */
    assert_int_equal(w.nstatuses, 4);
    assert_string_equal(w.statuses[0].status, "sent");
    assert_string_equal(w.statuses[1].status, "delivered");
    assert_string_equal(w.statuses[2].status, "read");
    assert_int_equal(w.statuses[2].timestamp, 12);
    assert_string_equal(w.statuses[3].status, "failed");
    assert_string_equal(w.statuses[3].id, "wamid.2");
    assert_string_equal(w.statuses[3].recipient, "155");
    assert_string_equal(w.statuses[3].error, "131026: Message undeliverable (Receiver is incapable)");
    assert_null(w.statuses[0].error);
    nx_wa_webhook_cleanup(&w);
}

static void test_whatsapp_rejects_bad_bodies(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "", "nope", "[]", "{\"object\":\"page\",\"entry\":[]}", "{\"object\":\"whatsapp_business_account\"}",
        "{\"object\":\"whatsapp_business_account\",\"entry\":{}}",
        "{\"object\":\"whatsapp_business_account\",\"object\":\"x\",\"entry\":[]}", NULL,
    };
    struct nx_wa_webhook w;
    char err[128];
    for (size_t i = 0; bad[i]; i++) {
        assert_int_equal(nx_wa_parse_webhook(bad[i], strlen(bad[i]), &w, err, sizeof err), NX_EPROTO);
        assert_int_equal(w.nmsgs + w.nstatuses, 0);
    }
    /* Too many events: refused before anything is allocated for them. */
    struct nx_buf b = NX_BUF_INIT;
    nx_buf_puts(&b, VALUE_HEAD "\"statuses\":[");
    for (int i = 0; i <= NX_WA_MAX_EVENTS; i++)
        nx_buf_printf(&b, "%s{\"id\":\"w%d\",\"status\":\"read\"}", i ? "," : "", i);
    nx_buf_puts(&b, "]}}]}]}");
    assert_int_equal(nx_wa_parse_webhook(b.data, b.len, &w, err, sizeof err), NX_ETOOBIG);
    nx_buf_cleanup(&b);
}

static void assert_json(json_t *got, const char *want)
{
    json_error_t e;
    json_t *w = json_loads(want, 0, &e);
    assert_non_null(w);
    assert_non_null(got);
    if (!json_equal(got, w)) {
        char *g = json_dumps(got, JSON_COMPACT | JSON_SORT_KEYS);
        fprintf(stderr, "got  %s\nwant %s\n", g, want);
        free(g);
        fail();
    }
    json_decref(w);
    json_decref(got);
}

static void test_whatsapp_builds_documented_requests(void **state)
{
    (void)state;
    char err[256];
    assert_json(nx_wa_text_request("155", "hi there", 8, "wamid.P"),
                "{\"messaging_product\":\"whatsapp\",\"recipient_type\":\"individual\",\"to\":\"155\","
                "\"type\":\"text\",\"text\":{\"preview_url\":false,\"body\":\"hi there\"},"
                "\"context\":{\"message_id\":\"wamid.P\"}}");
    json_t *comps = json_loads("[{\"type\":\"body\",\"parameters\":[{\"type\":\"text\",\"text\":\"Ana\"}]}]",
                               0, NULL);
    assert_json(nx_wa_template_request("155", "hello", "en_US", comps),
                "{\"messaging_product\":\"whatsapp\",\"recipient_type\":\"individual\",\"to\":\"155\","
                "\"type\":\"template\",\"template\":{\"name\":\"hello\",\"language\":{\"code\":\"en_US\"},"
                "\"components\":[{\"type\":\"body\",\"parameters\":[{\"type\":\"text\",\"text\":\"Ana\"}"
                "]}]}}");
    json_decref(comps);
    json_t *t = json_loads("{\"name\":\"n\",\"language\":{\"code\":\"es\"}}", 0, NULL);
    assert_json(nx_wa_template_from_payload("155", t, err, sizeof err),
                "{\"messaging_product\":\"whatsapp\",\"recipient_type\":\"individual\",\"to\":\"155\","
                "\"type\":\"template\",\"template\":{\"name\":\"n\",\"language\":{\"code\":\"es\"}}}");
    json_decref(t);
    t = json_loads("{\"name\":\"n\"}", 0, NULL);
    assert_null(nx_wa_template_from_payload("155", t, err, sizeof err));
    assert_non_null(strstr(err, "language"));
    json_decref(t);

    json_t *btn = json_loads("[[{\"id\":\"y\",\"title\":\"Yes\"},{\"id\":\"n\",\"title\":\"No\"}]]", 0, NULL);
    assert_json(nx_wa_buttons_request("155", "Sure?", btn, NULL, err, sizeof err),
                "{\"messaging_product\":\"whatsapp\",\"recipient_type\":\"individual\",\"to\":\"155\","
                "\"type\":\"interactive\",\"interactive\":{\"type\":\"button\",\"body\":{\"text\":\"Sure?\"},"
                "\"action\":{\"buttons\":[{\"type\":\"reply\",\"reply\":{\"id\":\"y\",\"title\":\"Yes\"}},"
                "{\"type\":\"reply\",\"reply\":{\"id\":\"n\",\"title\":\"No\"}}]}}}");
    json_decref(btn);
    btn = json_loads("[{\"id\":\"a\",\"title\":\"A\"},{\"id\":\"b\",\"title\":\"B\"},{\"id\":\"c\",\"tit"
                     "le\":\"C\"},"
                     "{\"id\":\"d\",\"title\":\"D\"}]", 0, NULL);
    assert_null(nx_wa_buttons_request("155", "x", btn, NULL, err, sizeof err));
    assert_non_null(strstr(err, "4 buttons"));
    json_decref(btn);
    btn = json_loads("[{\"id\":\"a\",\"title\":\"twenty-one characters\"}]", 0, NULL);
    assert_null(nx_wa_buttons_request("155", "x", btn, NULL, err, sizeof err));
    assert_non_null(strstr(err, "1-20 characters"));
    json_decref(btn);

    json_t *list = json_loads("{\"button\":\"Options\",\"sections\":[{\"title\":\"S\",\"rows\":["
                              "{\"id\":\"r1\",\"title\":\"One\",\"description\":\"first\"},"
                              "{\"id\":\"r2\",\"title\":\"Two\"}]}]}", 0, NULL);
    assert_json(nx_wa_list_request("155", "Pick one", list, NULL, err, sizeof err),
                "{\"messaging_product\":\"whatsapp\",\"recipient_type\":\"individual\",\"to\":\"155\","
                "\"type\":\"interactive\",\"interactive\":{\"type\":\"list\",\"body\":{\"text\":\"Pick o"
                "ne\"},"
                "\"action\":{\"button\":\"Options\",\"sections\":[{\"title\":\"S\",\"rows\":["
                "{\"id\":\"r1\",\"title\":\"One\",\"description\":\"first\"},{\"id\":\"r2\",\"title\":\""
                "Two\"}]}]}}}");
    assert_null(nx_wa_list_request("155", "", list, NULL, err, sizeof err));
    json_decref(list);
    list = json_loads("{\"button\":\"B\",\"sections\":[{\"rows\":[{\"id\":\"1\",\"title\":\"a\"},{\"id\""
                      ":\"2\","
                      "\"title\":\"a\"},{\"id\":\"3\",\"title\":\"a\"},{\"id\":\"4\",\"title\":\"a\"},{"
                      "\"id\":"
                      "\"5\",\"title\":\"a\"},{\"id\":\"6\",\"title\":\"a\"},{\"id\":\"7\",\"title\":\"a\"},"
                      "{\"id\":\"8\",\"title\":\"a\"},{\"id\":\"9\",\"title\":\"a\"},{\"id\":\"10\",\"ti"
                      "tle\":"
                      "\"a\"},{\"id\":\"11\",\"title\":\"a\"}]}]}", 0, NULL);
    assert_null(nx_wa_list_request("155", "x", list, NULL, err, sizeof err));
    assert_non_null(strstr(err, "11 list rows"));
    json_decref(list);

    json_t *media = json_loads("{\"type\":\"image\",\"id\":\"m1\",\"caption\":\"see\"}", 0, NULL);
    assert_json(nx_wa_media_request("155", media, NULL, err, sizeof err),
                "{\"messaging_product\":\"whatsapp\",\"recipient_type\":\"individual\",\"to\":\"155\","
                "\"type\":\"image\",\"image\":{\"id\":\"m1\",\"caption\":\"see\"}}");
    json_decref(media);
    media = json_loads("{\"type\":\"audio\",\"id\":\"m1\",\"caption\":\"no\"}", 0, NULL);
    assert_null(nx_wa_media_request("155", media, NULL, err, sizeof err));
    json_decref(media);
    media = json_loads("{\"type\":\"document\",\"link\":\"http://insecure\"}", 0, NULL);
    assert_null(nx_wa_media_request("155", media, NULL, err, sizeof err));
    assert_non_null(strstr(err, "https://"));
    json_decref(media);
}

static void test_whatsapp_reads_graph_errors(void **state)
{
    (void)state;
    const char *body = "{\"error\":{\"message\":\"(#131047) Re-engagement message\",\"type\":\"OAuthExce"
                       "ption\","
                       "\"code\":131047,\"error_subcode\":2494010,\"fbtrace_id\":\"AbC\"}}";
    struct nx_wa_error e;
    nx_wa_parse_error(body, strlen(body), &e);
    assert_int_equal(e.code, 131047);
    assert_int_equal(e.subcode, 2494010);
    assert_string_equal(e.type, "OAuthException");
    assert_string_equal(e.fbtrace_id, "AbC");
    assert_non_null(strstr(nx_wa_error_hint(131047), "24 hours"));
    assert_non_null(strstr(nx_wa_error_hint(190), "access_token"));
    assert_non_null(strstr(nx_wa_error_hint(131026), "undeliverable"));
    nx_wa_parse_error("garbage", 7, &e);
    assert_int_equal(e.code, 0);
    assert_string_equal(e.message, "");
    assert_true(nx_wa_error_is_transient(429, 0));
    assert_true(nx_wa_error_is_transient(503, 0));
    assert_true(nx_wa_error_is_transient(0, 0));
    assert_true(nx_wa_error_is_transient(400, 130429));
    assert_false(nx_wa_error_is_transient(400, 131047));
    assert_false(nx_wa_error_is_transient(401, 190));
    char id[64];
    const char *ok = "{\"messaging_product\":\"whatsapp\",\"contacts\":[{\"input\":\"155\",\"wa_id\":\"1"
                     "55\"}],"
                     "\"messages\":[{\"id\":\"wamid.X\"}]}";
    assert_true(nx_wa_parse_sent(ok, strlen(ok), id, sizeof id));
    assert_string_equal(id, "wamid.X");
    assert_false(nx_wa_parse_sent("{}", 2, id, sizeof id));
    assert_int_equal(nx_wa_chars("a\xc3\xa9\xf0\x9f\x98\x80"), 3);
}

static void test_whatsapp_reads_the_handshake_query(void **state)
{
    (void)state;
    const char *q = "hub.mode=subscribe&hub.verify_token=a%2Fb+c&hub.challenge=1158201444&x=%00";
    char v[32];
    assert_true(nx_wa_query_value(q, strlen(q), "hub.mode", v, sizeof v));
    assert_string_equal(v, "subscribe");
    assert_true(nx_wa_query_value(q, strlen(q), "hub.verify_token", v, sizeof v));
    assert_string_equal(v, "a/b c");
    assert_true(nx_wa_query_value(q, strlen(q), "hub.challenge", v, sizeof v));
    assert_string_equal(v, "1158201444");
    assert_false(nx_wa_query_value(q, strlen(q), "hub", v, sizeof v));
    assert_false(nx_wa_query_value(q, strlen(q), "x", v, sizeof v)); /* %00 refused */
    assert_false(nx_wa_query_value(q, strlen(q), "hub.challenge", v, 5)); /* does not fit */
    assert_false(nx_wa_query_value("a=%zz", 5, "a", v, sizeof v));
}

static int check_file(const char *file, const char *yaml, char *out, size_t outlen)
{
    struct nx_config *cfg = NULL;
    struct nx_diags d;
    nx_diags_init(&d);
    int rc = nx_config_load_mem(NULL, file, yaml, strlen(yaml), &cfg, &d);
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

static int check_yaml(const char *yaml, char *out, size_t outlen)
{
    return check_file("plugins/whatsapp.yaml", yaml, out, outlen);
}

/* telegram_webhook.c's switch in plugins/telegram.yaml. */
static void test_telegram_webhook_config(void **state)
{
    (void)state;
    char out[2048];
    const char *f = "plugins/telegram.yaml";
    assert_int_equal(check_file(f, "telegram:\n  token: \"1:A\"\n  webhook: {enabled: true, "
                                "secret_token: a-Z_9, url: \"https://x.example/webhooks/telegram\"}\n",
                                out, sizeof out), 0);
    assert_int_equal(check_file(f, "telegram:\n  token: \"1:A\"\n  webhook: {enabled: false}\n", out,
                                sizeof out), 0);
    assert_int_equal(check_file(f, "telegram:\n  token: \"1:A\"\n  webhook: {enabled: true}\n", out,
                                sizeof out), NX_ECONFIG);
    assert_non_null(strstr(out, "webhook.enabled needs webhook.secret_token"));
    assert_int_equal(check_file(f, "telegram:\n  token: \"1:A\"\n  webhook: {enabled: true, secret_token: "
                                "\"a b\", url: \"http://x\"}\n", out, sizeof out), NX_ECONFIG);
    assert_non_null(strstr(out, "1-256 characters of A-Z"));
    assert_non_null(strstr(out, "must be an https:// URL"));
}

static void test_whatsapp_config(void **state)
{
    (void)state;
    char out[2048];
    const char *one = "whatsapp:\n  phone_number_id: \"123\"\n  access_token: EAAG\n  app_secret: s\n"
                      "  verify_token: v\n";
    assert_int_equal(check_yaml(one, out, sizeof out), 0);
    assert_int_equal(check_yaml("whatsapp:\n  - instance: sales\n    phone_number_id: \"1\"\n"
                                "    access_token: a\n    app_secret: s\n    verify_token: v\n"
                                "    graph_version: v20.0\n    api_url: http://127.0.0.1:1\n"
                                "    window: {hours: 24, template: {name: hello_world, language: en_US,"
                                " components: []}}\n    acl: {allow_list: [\"+15551234567\"]}\n"
                                "    session_dir: ./x\n"
                                "  - instance: support\n    phone_number_id: \"2\"\n    access_token: b\n"
                                "    app_secret: s\n    verify_token: v\n", out, sizeof out), 0);
    assert_int_equal(check_yaml("whatsapp:\n  phone_number_id: \"+1 555\"\n  access_token: a b\n"
                                "  verify_token: v\n  graph_version: 21\n  acl: {allow_list: [abc]}\n"
                                "  window: {template: {language: en}}\n", out, sizeof out), NX_ECONFIG);
    assert_non_null(strstr(out, "missing required key \"app_secret\""));
    assert_non_null(strstr(out, "phone_number_id is the numeric id"));
    assert_non_null(strstr(out, "holds a character"));
    assert_non_null(strstr(out, "graph_version looks like v21.0"));
    assert_non_null(strstr(out, "not a phone number in digits"));
    assert_non_null(strstr(out, "missing required key \"name\""));
    assert_null(strstr(out, "a b")); /* the token's value is not echoed */
}

/* Two instances of one number would take each other's webhooks: the second is refused where its
 * phone_number_id is written, naming both. */
static void test_whatsapp_one_instance_per_number(void **state)
{
    (void)state;
    char out[2048];
    const char *keys = "    access_token: a\n    app_secret: s\n    verify_token: v\n";
    char yaml[1024];
    snprintf(yaml, sizeof yaml, "whatsapp:\n  - instance: sales\n    phone_number_id: \"106\"\n%s"
             "  - instance: support\n    phone_number_id: \"107\"\n%s"
             "  - instance: helpdesk\n    enabled: false\n    phone_number_id: \"106\"\n%s"
             "  - phone_number_id: \"107\"\n%s", keys, keys, keys, keys);
    assert_int_equal(check_yaml(yaml, out, sizeof out), NX_ECONFIG);
    assert_string_equal(out, "14:22: whatsapp instance \"helpdesk\" has the same phone_number_id \"106\" as "
                        "instance \"sales\" (line 3, column 22): each phone_number_id belongs to one "
                        "instance\n"
                        "18:22: the unnamed whatsapp instance has the same phone_number_id \"107\" as "
                        "instance \"support\" (line 8, column 22): each phone_number_id belongs to one "
                        "instance\n");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_whatsapp_signature_is_checked),
        cmocka_unit_test(test_whatsapp_parses_every_message_kind),
        cmocka_unit_test(test_whatsapp_parses_statuses),
        cmocka_unit_test(test_whatsapp_rejects_bad_bodies),
        cmocka_unit_test(test_whatsapp_builds_documented_requests),
        cmocka_unit_test(test_whatsapp_reads_graph_errors),
        cmocka_unit_test(test_whatsapp_reads_the_handshake_query),
        cmocka_unit_test(test_whatsapp_config),
        cmocka_unit_test(test_whatsapp_one_instance_per_number),
        cmocka_unit_test(test_telegram_webhook_config),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
