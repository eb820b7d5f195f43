#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config/schema.h"
#include "config/subst.h"
#include "core/alloc.h"
#include "core/buf.h"
#include "core/error.h"

/* ---- substitution ---- */

static char *subst_ok(struct nx_conf_ctx *ctx, const char *in)
{
    char *out = NULL;
    int before = ctx->errors;
    assert_int_equal(nx_conf_subst(ctx, NULL, in, &out), 0);
    assert_int_equal(ctx->errors, before);
    return out;
}

static void test_subst_forms(void **state)
{
    (void)state;
    struct nx_diags d;
    struct nx_conf_ctx ctx = {.diags = &d, .file = "x.yaml"};
    char *s;

    nx_diags_init(&d);
    setenv("NX_T_SET", "value", 1);
    setenv("NX_T_EMPTY", "", 1);
    unsetenv("NX_T_UNSET");

    assert_null(subst_ok(&ctx, "plain $text {no placeholder}"));
    s = subst_ok(&ctx, "a-${NX_T_SET}-b");
    assert_string_equal(s, "a-value-b");
    free(s);
    s = subst_ok(&ctx, "${NX_T_UNSET:-def}|${NX_T_EMPTY:-def}|${NX_T_SET:-def}");
    assert_string_equal(s, "def|def|value");
    free(s);
    s = subst_ok(&ctx, "${NX_T_UNSET-def}|${NX_T_EMPTY-def}|${NX_T_SET-def}");
    assert_string_equal(s, "def||value");
    free(s);
    /* Defaults may hold placeholders; braces are counted. */
    s = subst_ok(&ctx, "${NX_T_UNSET:-${NX_T_SET}/x}");
    assert_string_equal(s, "value/x");
    free(s);
    s = subst_ok(&ctx, "${NX_T_UNSET:-}");
    assert_string_equal(s, "");
    free(s);
    /* $${ is a literal ${. */
    s = subst_ok(&ctx, "cost $${NX_T_SET} and $5");
    assert_string_equal(s, "cost ${NX_T_SET} and $5");
    free(s);

    /* ${file:} relative to ctx.dir, trailing whitespace trimmed. */
    char tmpl[] = "/tmp/nx-subst-XXXXXX";
    assert_non_null(mkdtemp(tmpl));
    struct nx_buf p = NX_BUF_INIT;
    nx_buf_printf(&p, "%s/key.txt", tmpl);
    FILE *f = fopen(p.data, "w");
    assert_non_null(f);
    fputs("  s3cret value \n\t\n", f);
    fclose(f);
    ctx.dir = tmpl;
    s = subst_ok(&ctx, "${file:key.txt}");
    assert_string_equal(s, "  s3cret value");
    free(s);

    /* Errors, each reported. */
    char *out = (char *)"untouched";
    assert_int_equal(nx_conf_subst(&ctx, NULL, "${NX_T_UNSET}", &out), NX_ECONFIG);
    assert_null(out);
    assert_int_equal(nx_conf_subst(&ctx, NULL, "${file:../key.txt}", &out), NX_ECONFIG);
    assert_int_equal(nx_conf_subst(&ctx, NULL, "${file:nope.txt}", &out), NX_ECONFIG);
    assert_int_equal(nx_conf_subst(&ctx, NULL, "${file:}", &out), NX_ECONFIG);
    assert_int_equal(nx_conf_subst(&ctx, NULL, "${1BAD}", &out), NX_ECONFIG);
    assert_int_equal(nx_conf_subst(&ctx, NULL, "${NX_T_SET", &out), NX_ECONFIG);
    assert_int_equal(nx_conf_subst(&ctx, NULL, "${file:/dev/null}", &out), NX_ECONFIG);
    assert_int_equal(d.n, 7);
    assert_string_equal(d.v[0].msg,
                        "environment variable \"NX_T_UNSET\" is not set "
                        "(use ${NX_T_UNSET:-default} for a default)");
    assert_string_equal(d.v[1].msg, "${file:../key.txt}: paths must not contain \"..\"");
    assert_string_equal(d.v[2].msg, "cannot read ${file:nope.txt}: No such file or directory");
    assert_string_equal(d.v[3].msg, "empty path in ${file:}");
    assert_string_equal(d.v[6].msg, "cannot read ${file:/dev/null}: not a regular file");

    unlink(p.data);
    rmdir(tmpl);
    nx_buf_cleanup(&p);
    nx_diags_cleanup(&d);
}

/* ---- listen addresses ---- */

static void test_listen_parse_and_loopback(void **state)
{
    (void)state;
    struct nx_listen l;

    assert_int_equal(nx_listen_parse("127.0.0.1:8080", &l), 0);
    assert_string_equal(l.host, "127.0.0.1");
    assert_int_equal(l.port, 8080);
    assert_true(nx_listen_is_loopback(&l));
    assert_int_equal(nx_listen_parse("[::1]:0", &l), 0);
    assert_string_equal(l.host, "::1");
    assert_int_equal(l.port, 0);
    assert_true(nx_listen_is_loopback(&l));
    assert_int_equal(nx_listen_parse(":9090", &l), 0);
    assert_string_equal(l.host, "127.0.0.1");
    assert_int_equal(nx_listen_parse("8081", &l), 0);
    assert_int_equal(l.port, 8081);
    assert_int_equal(nx_listen_parse("localhost:1", &l), 0);
    assert_true(nx_listen_is_loopback(&l));
    assert_int_equal(nx_listen_parse("0.0.0.0:80", &l), 0);
    assert_false(nx_listen_is_loopback(&l));
    assert_int_equal(nx_listen_parse("[::]:80", &l), 0);
    assert_false(nx_listen_is_loopback(&l));
    assert_int_equal(nx_listen_parse("127.0.0.1:65536", &l), NX_ERANGE);
    assert_int_equal(nx_listen_parse("127.0.0.1:", &l), NX_EINVAL);
    assert_int_equal(nx_listen_parse("::1:80", &l), NX_EINVAL);
    assert_int_equal(nx_listen_parse("[zz]:80", &l), NX_EINVAL);
    assert_int_equal(nx_listen_parse("host name:80", &l), NX_EINVAL);
    assert_int_equal(nx_listen_parse("h:8x", &l), NX_EINVAL);
    assert_int_equal(nx_listen_parse("", &l), NX_EINVAL);
}

/* ---- the engine, as a channel module would use it ---- */

struct chan_account {
    char *name;
    char *address;
    int port;
};

struct chan_conf {
    char *token;
    bool enabled;
    uint64_t max_body;
    uint32_t poll_ms;
    double ratio;
    int tls;
    char **chat_ids;
    struct nx_strmap labels;
    struct chan_account *accounts;
    size_t n_accounts;
    json_t *extra;
    json_t *raw;
};

static const char *const tls_modes[] = {"implicit_tls", "starttls", "plain", NULL};

static const struct nx_conf_field account_fields[] = {
    {NX_FIELD("address", NX_CT_STRING, struct chan_account, address), .flags = NX_CF_REQUIRED},
    {NX_FIELD("port", NX_CT_INT, struct chan_account, port), .def = "993", .min = 1, .max = 65535},
    {.name = NULL},
};
static const struct nx_conf_struct account_desc = {
    .name = "an account",
    .size = sizeof(struct chan_account),
    .fields = account_fields,
    .has_key = true,
    .key_offset = offsetof(struct chan_account, name),
};

static const char *const chan_extra[] = {"allow_agents", NULL};

static const struct nx_conf_field chan_fields[] = {
    {NX_FIELD("token", NX_CT_STRING, struct chan_conf, token), .flags = NX_CF_REQUIRED},
    {NX_FIELD("enabled", NX_CT_BOOL, struct chan_conf, enabled), .def = "true"},
    {NX_FIELD("max_body", NX_CT_SIZE, struct chan_conf, max_body), .def = "32KiB"},
    {NX_FIELD("poll", NX_CT_DURATION, struct chan_conf, poll_ms), .def = "25s"},
    {NX_FIELD("ratio", NX_CT_DOUBLE, struct chan_conf, ratio), .def = "0.5", .min = 0, .max = 1},
    {NX_FIELD("tls", NX_CT_ENUM, struct chan_conf, tls), .choices = tls_modes, .def = "implicit_tls"},
    {NX_FIELD("chat_ids", NX_CT_STRLIST, struct chan_conf, chat_ids)},
    {NX_FIELD("labels", NX_CT_STRMAP, struct chan_conf, labels)},
    {NX_FIELD_LIST("accounts", NX_CT_MAP, struct chan_conf, accounts, n_accounts), .sub = &account_desc},
    {NX_FIELD("raw", NX_CT_ANY, struct chan_conf, raw)},
    {.name = NULL},
};
static const struct nx_conf_struct chan_desc = {
    .name = "telegram",
    .size = sizeof(struct chan_conf),
    .fields = chan_fields,
    .extra_keys = chan_extra,
    .extra_offset = offsetof(struct chan_conf, extra),
};

static int parse_chan(const char *yaml, struct chan_conf *c, struct nx_diags *d)
{
    struct nx_conf_ctx ctx = {.diags = d, .file = "plugins/telegram.yaml"};
    struct nx_cnode *root = NULL;
    int rc;

    memset(c, 0, sizeof *c);
    nx_conf_defaults(&chan_desc, c);
    rc = nx_cnode_parse_yaml(&ctx, yaml, strlen(yaml), &root);
    if (rc == 0)
        rc = nx_conf_parse_struct(&ctx, &chan_desc, root, c);
    nx_cnode_free(root);
    return rc;
}

static void test_schema_table_from_another_module(void **state)
{
    (void)state;
    struct nx_diags d;
    struct chan_conf c;

    nx_diags_init(&d);
    assert_int_equal(parse_chan("token: abc\n", &c, &d), 0);
    assert_string_equal(c.token, "abc");
    assert_true(c.enabled);
    assert_int_equal(c.max_body, 32768);
    assert_int_equal(c.poll_ms, 25000);
    assert_true(c.ratio == 0.5);
    assert_int_equal(c.tls, 0);
    assert_null(c.chat_ids[0]);
    assert_null(c.raw);
    nx_conf_cleanup(&chan_desc, &c);

    const char *yaml = "token: 'x'\nenabled: false\nmax_body: 1 GiB\npoll: 1h2m3s\nratio: 1\ntls: starttls\n"
                       "chat_ids: [1, -2, three]\nlabels: {a: b, n: 5}\n"
                       "accounts:\n  work: {address: imap.example.com}\n  home: {address: h, port: 143}\n"
                       "raw: {x: [1, 2.5, true, null, '7']}\nallow_agents: [kate]\n";
    assert_int_equal(parse_chan(yaml, &c, &d), 0);
    assert_false(c.enabled);
    assert_int_equal(c.max_body, 1ULL << 30);
    assert_int_equal(c.poll_ms, 3723000);
    assert_int_equal(c.tls, 1);
    assert_string_equal(c.chat_ids[1], "-2");
    assert_string_equal(c.chat_ids[2], "three");
    assert_string_equal(nx_strmap_get(&c.labels, "n"), "5");
    assert_int_equal(c.n_accounts, 2);
    assert_string_equal(c.accounts[0].name, "work");
    assert_int_equal(c.accounts[0].port, 993);
    assert_int_equal(c.accounts[1].port, 143);
    char *dump = json_dumps(c.raw, JSON_COMPACT);
    assert_string_equal(dump, "{\"x\":[1,2.5,true,null,\"7\"]}");
    free(dump);
    json_t *allow = json_object_get(c.extra, "allow_agents");
    assert_string_equal(json_string_value(json_array_get(allow, 0)), "kate");
    nx_conf_cleanup(&chan_desc, &c);
    assert_int_equal(d.n, 0);

    yaml = "enabled: maybe\nmax_body: lots\npoll: -1s\nratio: 2\ntls: ssl\nchat_ids: {a: 1}\n"
           "accounts:\n  work: {port: 0}\nallow_agent: []\n";
    assert_int_equal(parse_chan(yaml, &c, &d), NX_ECONFIG);
    nx_conf_cleanup(&chan_desc, &c);
    const char *want[] = {
        "1:10: expected true or false for \"enabled\", got \"maybe\"",
        "2:11: expected a size (e.g. 8MiB, 512KB, 1048576) for \"max_body\", got \"lots\"",
        "3:7: expected a duration (e.g. 500ms, 30s, 5m, 24h; a plain number is milliseconds) for \"poll\", "
        "got \"-1s\"",
        "4:8: value \"2\" for \"ratio\" out of range (0-1)",
        "5:6: invalid value \"ssl\" for \"tls\" (expected one of: implicit_tls, starttls, plain)",
        "6:11: expected a list of strings for \"chat_ids\", got a mapping",
        "8:16: value \"0\" for \"port\" out of range (1-65535)",
        "8:9: missing required key \"address\"",
        "9:1: unknown key \"allow_agent\" (did you mean \"allow_agents\"?)",
        "1:1: missing required key \"token\"",
    };
    assert_int_equal(d.n, NX_ARRAY_LEN(want));
    for (size_t i = 0; i < d.n; i++) {
        char got[256];
        snprintf(got, sizeof got, "%d:%d: %s", d.v[i].line, d.v[i].col, d.v[i].msg);
        assert_string_equal(got, want[i]);
        assert_string_equal(d.v[i].file, "plugins/telegram.yaml");
    }
    nx_diags_cleanup(&d);
}

/* Every form docs/configuration.md shows parses (nexo-rs's humantime ones too); repeated or reordered
 * parts are refused with a reason instead of being summed. */
static void test_schema_duration_is_one_part_per_unit_largest_first(void **state)
{
    (void)state;
    static const struct { const char *text; int64_t ms; } good[] = {
        {"500ms", 500}, {"30s", 30000}, {"5m", 300000}, {"24h", 86400000}, {"1d", 86400000},
        {"1h30m", 5400000}, {"1500", 1500}, {"0", 0}, {"1d2h3m4s5ms", 93784005}, {"1s500ms", 1500},
        /* nexo-rs's humantime forms */
        {"1h 30m", 5400000}, {"5min", 300000}, {"5 min", 300000}, {"2 hours", 7200000},
        {"30secs", 30000}, {"1day 2hrs", 93600000}, {"250 millis", 250},
    };
    static const struct { const char *text, *why; } bad[] = {
        {"1h1h", " (each unit may appear once)"},
        {"5m5m", " (each unit may appear once)"},
        {"1h30m30m", " (each unit may appear once)"},
        {"30m1h", " (units go from largest to smallest, as in 1h30m)"},
        {"1ms1s", " (units go from largest to smallest, as in 1h30m)"},
        {"1h 2h", " (each unit may appear once)"},
        {"5 min 1 hour", " (units go from largest to smallest, as in 1h30m)"},
        {"1h30", ""}, {"1.5h", ""}, {"h", ""}, {"1H", ""}, {"1w", ""}, {"99999999999999d", ""},
        {"5minutesx", ""}, {"1h,30m", ""}, {"1 h  30", ""},
    };
    struct nx_diags d;
    struct chan_conf c;
    char yaml[64], want[192];

    nx_diags_init(&d);
    for (size_t i = 0; i < NX_ARRAY_LEN(good); i++) {
        snprintf(yaml, sizeof yaml, "token: x\npoll: %s\n", good[i].text);
        assert_int_equal(parse_chan(yaml, &c, &d), 0);
        assert_int_equal(c.poll_ms, good[i].ms);
        nx_conf_cleanup(&chan_desc, &c);
    }
    assert_int_equal(d.n, 0);
    for (size_t i = 0; i < NX_ARRAY_LEN(bad); i++) {
        snprintf(yaml, sizeof yaml, "token: x\npoll: %s\n", bad[i].text);
        assert_int_equal(parse_chan(yaml, &c, &d), NX_ECONFIG);
        nx_conf_cleanup(&chan_desc, &c);
        assert_int_equal(d.n, 1);
        snprintf(want, sizeof want, "expected a duration (e.g. 500ms, 30s, 5m, 24h; a plain number is "
                 "milliseconds) for \"poll\", got \"%s\"%s", bad[i].text, bad[i].why);
        assert_string_equal(d.v[0].msg, want);
        assert_int_equal(d.v[0].line, 2);
        assert_int_equal(d.v[0].col, 7);
        nx_diags_cleanup(&d);
        nx_diags_init(&d);
    }
    nx_diags_cleanup(&d);
}

static void test_schema_validates_json_without_positions(void **state)
{
    (void)state;
    struct nx_diags d;
    struct nx_conf_ctx ctx = {.diags = &d, .file = "plugins/telegram.yaml"};
    struct chan_conf c = {0};
    json_t *j = json_pack("{s:s, s:i, s:[i,s]}", "token", "t", "poll", 1500, "chat_ids", 7, "x");

    nx_diags_init(&d);
    struct nx_cnode *n = nx_cnode_from_json(j);
    nx_conf_defaults(&chan_desc, &c);
    assert_int_equal(nx_conf_parse_struct(&ctx, &chan_desc, n, &c), 0);
    assert_int_equal(c.poll_ms, 1500);
    assert_string_equal(c.chat_ids[0], "7");
    nx_conf_cleanup(&chan_desc, &c);
    nx_cnode_free(n);
    json_decref(j);

    j = json_pack("{s:b}", "tokn", 1);
    n = nx_cnode_from_json(j);
    memset(&c, 0, sizeof c);
    nx_conf_defaults(&chan_desc, &c);
    assert_int_equal(nx_conf_parse_struct(&ctx, &chan_desc, n, &c), NX_ECONFIG);
    nx_conf_cleanup(&chan_desc, &c);
    nx_cnode_free(n);
    json_decref(j);
    char *out = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&out, &len);
    nx_diags_print(&d, f);
    fclose(f);
    assert_string_equal(out, "plugins/telegram.yaml: unknown key \"tokn\" (did you mean \"token\"?)\n"
                             "plugins/telegram.yaml: missing required key \"token\"\n");
    free(out);
    nx_diags_cleanup(&d);
}

static void test_yaml_tree_rejects_aliases_and_reports_duplicates(void **state)
{
    (void)state;
    struct nx_diags d;
    struct nx_conf_ctx ctx = {.diags = &d, .file = "f.yaml"};
    struct nx_cnode *root = NULL;
    const char *yaml = "a: &x 1\nb: *x\na: 2\n";

    nx_diags_init(&d);
    assert_int_equal(nx_cnode_parse_yaml(&ctx, yaml, strlen(yaml), &root), 0);
    assert_non_null(root);
    assert_int_equal(root->n, 2); /* b and the second a were dropped */
    assert_int_equal(d.n, 2);
    assert_string_equal(d.v[0].msg, "YAML aliases (*x) are not supported");
    assert_string_equal(d.v[1].msg, "duplicate key \"a\" (first at line 1, column 1)");
    nx_cnode_free(root);

    yaml = "a: 1\n---\nb: 2\n";
    assert_int_equal(nx_cnode_parse_yaml(&ctx, yaml, strlen(yaml), &root), 0);
    assert_string_equal(d.v[2].msg, "only one YAML document per file");
    assert_int_equal(d.v[2].line, 2);
    nx_cnode_free(root);

    yaml = "a: [1, 2\n";
    assert_int_equal(nx_cnode_parse_yaml(&ctx, yaml, strlen(yaml), &root), NX_ECONFIG);
    assert_null(root);
    assert_non_null(strstr(d.v[3].msg, "YAML syntax error: "));

    assert_int_equal(nx_cnode_parse_yaml(&ctx, "", 0, &root), 0);
    assert_int_equal(root->kind, NX_CNODE_MAP);
    assert_int_equal(root->n, 0);
    nx_cnode_free(root);
    nx_diags_cleanup(&d);
}

static void test_suggest_only_near_misses(void **state)
{
    (void)state;
    const char *const cands[] = {"allowed_tools", "model", "id", "system_prompt", NULL};
    assert_string_equal(nx_conf_suggest("alowed_tools", cands, NULL), "allowed_tools");
    assert_string_equal(nx_conf_suggest("modle", cands, NULL), "model");
    assert_string_equal(nx_conf_suggest("systemprompt", cands, NULL), "system_prompt");
    assert_string_equal(nx_conf_suggest("ix", cands, NULL), "id");
    assert_null(nx_conf_suggest("frobnicate", cands, NULL));
    assert_null(nx_conf_suggest("tools", cands, NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_subst_forms),
        cmocka_unit_test(test_listen_parse_and_loopback),
        cmocka_unit_test(test_schema_table_from_another_module),
        cmocka_unit_test(test_schema_duration_is_one_part_per_unit_largest_first),
        cmocka_unit_test(test_schema_validates_json_without_positions),
        cmocka_unit_test(test_yaml_tree_rejects_aliases_and_reports_duplicates),
        cmocka_unit_test(test_suggest_only_near_misses),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
