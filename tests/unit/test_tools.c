#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/error.h"
#include "core/log.h"
#include "core/metrics.h"
#include "tools/internal.h"
#include "tools/tool.h"

/* The registry (manifest filtering, the invoke paths and their metrics), the schema validator,
 * time_now, and file_write + file_read end to end through nx_tool_invoke. */

struct answer {
    int calls;
    bool is_error;
    char text[NX_TOOL_OUTPUT_MAX + 256];
    size_t len;
};

static void on_answer(const char *output, size_t len, bool is_error, void *udata)
{
    struct answer *a = udata;

    a->calls++;
    a->is_error = is_error;
    a->len = len < sizeof a->text - 1 ? len : sizeof a->text - 1;
    memcpy(a->text, output, a->len);
    a->text[a->len] = '\0';
}

/* A test tool that counts how often its run function is entered. */
static int probe_runs;

static struct nx_tool_call *probe_run(const struct nx_tool_ctx *ctx, const json_t *args,
                                      nx_tool_done_fn done, void *udata)
{
    const char *echo = json_string_value(json_object_get(args, "echo"));

    (void)ctx;
    probe_runs++;
    if (echo && strcmp(echo, "big") == 0) {
        size_t n = NX_TOOL_OUTPUT_MAX * 2;
        char *big = nx_malloc(n);
        memset(big, 'y', n);
        done(big, n, false, udata);
        free(big);
    } else {
        done(echo ? echo : "", echo ? strlen(echo) : 0, echo && strcmp(echo, "fail") == 0, udata);
    }
    return NULL;
}

static const struct nx_tool probe_tool = {
    .name = "probe",
    .description = "test tool",
    .input_schema = "{\"type\":\"object\",\"properties\":{\"echo\":{\"type\":\"string\"}},"
                    "\"required\":[\"echo\"],\"additionalProperties\":false}",
    .run = probe_run,
};

static const struct nx_tool mcp_tool = {
    .name = "mcp_srv_search",
    .description = "pretend MCP tool",
    .input_schema = "{\"type\":\"object\"}",
    .run = probe_run,
};

/* The value of one metric line (exact label set), or -1 when absent. */
static double metric_value(const char *line_prefix)
{
    struct nx_buf b = NX_BUF_INIT;
    double v = -1;
    const char *p;

    nx_metrics_render(&b);
    p = strstr(nx_buf_cstr(&b), line_prefix);
    if (p)
        v = strtod(p + strlen(line_prefix), NULL);
    nx_buf_cleanup(&b);
    return v;
}

static int setup(void **state)
{
    (void)state;
    nx_log_set_level(NX_LOG_ERROR);
    nx_tool_unregister("probe");
    nx_tool_unregister("mcp_srv_search");
    assert_int_equal(nx_tool_register(&probe_tool), 0);
    assert_int_equal(nx_tool_register(&mcp_tool), 0);
    probe_runs = 0;
    return 0;
}

static bool manifest_has(json_t *m, const char *name)
{
    size_t i;
    json_t *t;

    json_array_foreach(m, i, t) {
        if (strcmp(json_string_value(json_object_get(t, "name")), name) == 0)
            return true;
    }
    return false;
}

static void test_registry_has_builtins_and_unique_names(void **state)
{
    size_t n = 0;
    const struct nx_tool *const *all = nx_tool_all(&n);

    (void)state;
    assert_true(n >= 7);
    assert_non_null(nx_tool_find("time_now"));
    assert_non_null(nx_tool_find("http_fetch"));
    assert_non_null(nx_tool_find("file_read"));
    assert_non_null(nx_tool_find("file_write"));
    assert_non_null(nx_tool_find("file_list"));
    assert_null(nx_tool_find("nope"));
    assert_string_equal(all[0]->name, "time_now");
    assert_int_equal(nx_tool_register(&probe_tool), NX_EEXIST);
    nx_tool_unregister("probe");
    assert_null(nx_tool_find("probe"));
    assert_int_equal(nx_tool_register(&probe_tool), 0);
}

static void test_register_refuses_bad_schema(void **state)
{
    static const struct nx_tool bad = {.name = "bad_schema", .input_schema = "[1,2", .run = probe_run};
    static const struct nx_tool arr = {.name = "arr_schema", .input_schema = "[1]", .run = probe_run};

    (void)state;
    assert_int_equal(nx_tool_register(&bad), NX_EINVAL);
    assert_int_equal(nx_tool_register(&arr), NX_EINVAL);
    assert_null(nx_tool_find("bad_schema"));
}

static void test_manifest_filters_by_globs(void **state)
{
    const char *const only_files[] = {"file_*", NULL};
    const char *const exact[] = {"time_now", "mcp_srv_*", NULL};
    const char *const star[] = {"*", NULL};
    const char *const empty[] = {NULL};
    json_t *m;

    (void)state;
    m = nx_tool_manifest(only_files);
    assert_int_equal(json_array_size(m), 3);
    assert_true(manifest_has(m, "file_read") && manifest_has(m, "file_write") &&
                manifest_has(m, "file_list"));
    assert_false(manifest_has(m, "time_now"));
    /* the schema is parsed JSON, not text */
    assert_true(json_is_object(json_object_get(json_array_get(m, 0), "input_schema")));
    assert_true(json_is_string(json_object_get(json_array_get(m, 0), "description")));
    json_decref(m);

    m = nx_tool_manifest(exact);
    assert_int_equal(json_array_size(m), 2);
    assert_true(manifest_has(m, "time_now") && manifest_has(m, "mcp_srv_search"));
    json_decref(m);

    size_t n;
    nx_tool_all(&n);
    m = nx_tool_manifest(star);
    assert_int_equal(json_array_size(m), n);
    json_decref(m);
    m = nx_tool_manifest(empty);
    assert_int_equal(json_array_size(m), n);
    json_decref(m);
    m = nx_tool_manifest(NULL);
    assert_int_equal(json_array_size(m), n);
    json_decref(m);

    assert_true(nx_tool_allowed("file_read", only_files));
    assert_false(nx_tool_allowed("file", only_files)); /* "file_*" needs the underscore */
    assert_false(nx_tool_allowed("time_now_x", exact));
    /* globs as a shell has them, not only a trailing "*" */
    static const char *const globs[] = {"mcp_*_search", "file_[rw]*", "time_no?", NULL};
    assert_true(nx_tool_allowed("mcp_github_search", globs));
    assert_false(nx_tool_allowed("mcp_github_create", globs));
    assert_true(nx_tool_allowed("file_write", globs));
    assert_false(nx_tool_allowed("file_list", globs));
    assert_true(nx_tool_allowed("time_now", globs));
}

static void test_invoke_unknown_tool(void **state)
{
    struct nx_tool_ctx ctx = {.agent_id = "a_unknown"};
    struct answer a = {0};

    (void)state;
    assert_null(nx_tool_invoke(&ctx, NULL, "rm_rf", NULL, on_answer, &a));
    assert_int_equal(a.calls, 1);
    assert_true(a.is_error);
    assert_string_equal(a.text, "unknown tool \"rm_rf\"");
    assert_true(metric_value("nexo_tool_calls_total{agent=\"a_unknown\",tool=\"_unknown\","
                             "outcome=\"unknown\"} ") == 1);
}

static void test_invoke_blocked_tool_never_runs(void **state)
{
    const char *const allowed[] = {"time_now", "file_*", NULL};
    struct nx_tool_ctx ctx = {.agent_id = "a_blocked"};
    json_t *args = json_pack("{s:s}", "echo", "hi");
    struct answer a = {0};

    (void)state;
    assert_null(nx_tool_invoke(&ctx, allowed, "probe", args, on_answer, &a));
    assert_int_equal(probe_runs, 0);
    assert_int_equal(a.calls, 1);
    assert_true(a.is_error);
    assert_string_equal(a.text, "tool \"probe\" is not allowed for this agent");
    assert_true(metric_value("nexo_tool_calls_total{agent=\"a_blocked\",tool=\"probe\","
                             "outcome=\"blocked\"} ") == 1);
    /* the same call again counts again */
    assert_null(nx_tool_invoke(&ctx, allowed, "probe", args, on_answer, &a));
    assert_true(metric_value("nexo_tool_calls_total{agent=\"a_blocked\",tool=\"probe\","
                             "outcome=\"blocked\"} ") == 2);
    assert_int_equal(probe_runs, 0);
    json_decref(args);
}

static void test_invoke_invalid_args_never_runs(void **state)
{
    struct nx_tool_ctx ctx = {.agent_id = "a_invalid"};
    json_t *args = json_pack("{s:i}", "echo", 5);
    struct answer a = {0};

    (void)state;
    assert_null(nx_tool_invoke(&ctx, NULL, "probe", args, on_answer, &a));
    assert_int_equal(probe_runs, 0);
    assert_true(a.is_error);
    assert_string_equal(a.text, "argument \"echo\": expected a string, got number");
    assert_true(metric_value("nexo_tool_calls_total{agent=\"a_invalid\",tool=\"probe\","
                             "outcome=\"invalid\"} ") == 1);
    json_decref(args);

    /* no arguments at all: the required field is missing */
    assert_null(nx_tool_invoke(&ctx, NULL, "probe", NULL, on_answer, &a));
    assert_string_equal(a.text, "missing required argument \"echo\"");
    assert_int_equal(probe_runs, 0);
}

static void test_invoke_ok_and_error_are_counted_and_timed(void **state)
{
    struct nx_tool_ctx ctx = {.agent_id = "a_ok"};
    json_t *ok = json_pack("{s:s}", "echo", "hello"), *bad = json_pack("{s:s}", "echo", "fail");
    struct answer a = {0};

    (void)state;
    assert_null(nx_tool_invoke(&ctx, NULL, "probe", ok, on_answer, &a));
    assert_int_equal(probe_runs, 1);
    assert_false(a.is_error);
    assert_string_equal(a.text, "hello");
    assert_null(nx_tool_invoke(&ctx, NULL, "probe", bad, on_answer, &a));
    assert_true(a.is_error);
    assert_true(metric_value("nexo_tool_calls_total{agent=\"a_ok\",tool=\"probe\",outcome=\"ok\"} ") == 1);
    assert_true(metric_value("nexo_tool_calls_total{agent=\"a_ok\",tool=\"probe\",outcome=\"error\"} ") ==
                1);
    assert_true(metric_value("nexo_tool_latency_seconds_count{tool=\"probe\"} ") >= 2);
    json_decref(ok);
    json_decref(bad);
}

static void test_invoke_caps_output(void **state)
{
    struct nx_tool_ctx ctx = {.agent_id = "a_cap"};
    json_t *args = json_pack("{s:s}", "echo", "big");
    struct answer a = {0};

    (void)state;
    nx_tool_invoke(&ctx, NULL, "probe", args, on_answer, &a);
    assert_int_equal(a.calls, 1);
    assert_true(a.len <= NX_TOOL_OUTPUT_MAX);
    assert_non_null(strstr(a.text, "[truncated: "));
    assert_non_null(strstr(a.text, " bytes omitted]"));
    json_decref(args);
}

/* ---- validator ---------------------------------------------------------------------------- */

static int validate(const char *schema, const char *value, char *err, size_t errlen)
{
    json_t *s = json_loads(schema, 0, NULL), *v = json_loads(value, JSON_DECODE_ANY, NULL);
    int rc;

    assert_non_null(s);
    assert_non_null(v);
    rc = nx_schema_validate(s, v, err, errlen);
    json_decref(s);
    json_decref(v);
    return rc;
}

static void test_validator_cases(void **state)
{
    static const struct {
        const char *schema, *value, *err; /* err NULL: valid */
    } cases[] = {
        {"{\"type\":\"object\"}", "[]", "arguments: expected an object, got array"},
        {"{\"type\":\"object\",\"properties\":{\"path\":{\"type\":\"string\"}}}", "{\"path\":1}",
         "argument \"path\": expected a string, got number"},
        {"{\"type\":\"object\",\"required\":[\"url\"]}", "{}", "missing required argument \"url\""},
        {"{\"type\":\"object\",\"properties\":{\"a\":{}},\"additionalProperties\":false}", "{\"b\":1}",
         "unexpected argument \"b\" (allowed: a)"},
        {"{\"properties\":{\"m\":{\"enum\":[\"GET\",\"POST\"]}}}", "{\"m\":\"PUT\"}",
         "argument \"m\": must be one of \"GET\", \"POST\""},
        {"{\"properties\":{\"n\":{\"type\":\"integer\",\"minimum\":1,\"maximum\":10}}}", "{\"n\":0}",
         "argument \"n\": must be >= 1"},
        {"{\"properties\":{\"n\":{\"type\":\"integer\",\"minimum\":1,\"maximum\":10}}}", "{\"n\":11}",
         "argument \"n\": must be <= 10"},
        {"{\"properties\":{\"n\":{\"type\":\"integer\"}}}", "{\"n\":1.5}",
         "argument \"n\": expected an integer, got number"},
        {"{\"properties\":{\"n\":{\"type\":\"integer\"}}}", "{\"n\":2.0}", NULL},
        {"{\"properties\":{\"s\":{\"type\":\"string\",\"minLength\":2,\"maxLength\":3}}}",
         "{\"s\":\"\\u00e9\"}",
         "argument \"s\": must have at least 2 characters"},
        {"{\"properties\":{\"s\":{\"type\":\"string\",\"maxLength\":3}}}",
         "{\"s\":\"\\u00e9\\u00e9\\u00e9\"}", NULL},
        {"{\"properties\":{\"l\":{\"type\":\"array\",\"items\":{\"type\":\"string\"},\"maxItems\":2}}}",
         "{\"l\":[\"a\",2]}", "argument \"l[1]\": expected a string, got number"},
        {"{\"properties\":{\"l\":{\"type\":\"array\",\"minItems\":1}}}", "{\"l\":[]}",
         "argument \"l\": must have at least 1 items"},
        {"{\"properties\":{\"o\":{\"type\":\"object\",\"properties\":{\"x\":{\"type\":\"boolean\"}}}}}",
         "{\"o\":{\"x\":null}}", "argument \"o.x\": expected a boolean, got null"},
        {"{\"properties\":{\"t\":{\"type\":[\"string\",\"null\"]}}}", "{\"t\":null}", NULL},
        {"{\"properties\":{\"t\":{\"type\":[\"string\",\"null\"]}}}", "{\"t\":true}",
         "argument \"t\": expected string or null, got boolean"},
        {"{\"properties\":{\"h\":{\"type\":\"object\",\"additionalProperties\":{\"type\":\"string\"}}}}",
         "{\"h\":{\"A\":\"1\",\"B\":2}}", "argument \"h.B\": expected a string, got number"},
        {"{\"type\":\"number\"}", "3", NULL},
        {"{\"type\":\"nonsense\",\"minimum\":\"x\",\"properties\":7,\"required\":{}}", "{\"a\":1}", NULL},
    };
    char err[512];

    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int rc = validate(cases[i].schema, cases[i].value, err, sizeof err);
        if (cases[i].err) {
            if (rc != NX_EINVAL || strcmp(err, cases[i].err) != 0)
                fail_msg("case %zu: rc %d, err '%s', want '%s'", i, rc, err, cases[i].err);
        } else if (rc != 0) {
            fail_msg("case %zu: rc %d, err '%s', want valid", i, rc, err);
        }
    }
}

static void test_validator_survives_deep_nesting(void **state)
{
    struct nx_buf schema = NX_BUF_INIT, value = NX_BUF_INIT;
    char err[256];
    json_t *s, *v;

    (void)state;
    for (int i = 0; i < 200; i++) {
        nx_buf_puts(&schema, "{\"type\":\"array\",\"items\":");
        nx_buf_putc(&value, '[');
    }
    nx_buf_puts(&schema, "{}");
    for (int i = 0; i < 200; i++) {
        nx_buf_putc(&schema, '}');
        nx_buf_putc(&value, ']');
    }
    s = json_loads(schema.data, 0, NULL);
    v = json_loads(value.data, 0, NULL);
    assert_non_null(s);
    assert_non_null(v);
    assert_int_equal(nx_schema_validate(s, v, err, sizeof err), NX_EINVAL);
    assert_non_null(strstr(err, "nested too deeply"));
    json_decref(s);
    json_decref(v);
    nx_buf_cleanup(&schema);
    nx_buf_cleanup(&value);
}

static void test_builtin_schemas_reject_wrong_args(void **state)
{
    char err[512];
    json_t *args = json_pack("{s:s, s:s}", "url", "http://example.com/", "method", "DELETE");

    (void)state;
    assert_int_equal(nx_tool_validate(nx_tool_find("http_fetch"), args, err, sizeof err), NX_EINVAL);
    assert_string_equal(err, "argument \"method\": must be one of \"GET\", \"HEAD\", \"POST\"");
    json_decref(args);
    args = json_pack("{s:s}", "content", "x");
    assert_int_equal(nx_tool_validate(nx_tool_find("file_write"), args, err, sizeof err), NX_EINVAL);
    assert_string_equal(err, "missing required argument \"path\"");
    json_decref(args);
}

/* ---- time_now and a file round trip ------------------------------------------------------ */

static void test_time_now_round_trip(void **state)
{
    struct nx_tool_ctx ctx = {.agent_id = "a_time"};
    json_t *args = json_pack("{s:s}", "timezone", "Asia/Tokyo"), *res;
    struct answer a = {0};

    (void)state;
    assert_null(nx_tool_invoke(&ctx, NULL, "time_now", NULL, on_answer, &a));
    assert_false(a.is_error);
    res = json_loads(a.text, 0, NULL);
    assert_non_null(res);
    assert_true(json_integer_value(json_object_get(res, "unix")) > 1700000000);
    assert_int_equal(strlen(json_string_value(json_object_get(res, "utc"))), 24);
    assert_string_equal(json_string_value(json_object_get(res, "timezone")), "UTC");
    json_decref(res);

    if (access("/usr/share/zoneinfo/Asia/Tokyo", R_OK) == 0) {
        nx_tool_invoke(&ctx, NULL, "time_now", args, on_answer, &a);
        assert_false(a.is_error);
        res = json_loads(a.text, 0, NULL);
        assert_non_null(res);
        assert_int_equal(json_integer_value(json_object_get(res, "utc_offset_seconds")), 9 * 3600);
        assert_string_equal(json_string_value(json_object_get(res, "abbreviation")), "JST");
        assert_non_null(strstr(json_string_value(json_object_get(res, "local")), "+09:00"));
        json_decref(res);
    }
    json_decref(args);
    args = json_pack("{s:s}", "timezone", "../../etc/passwd");
    nx_tool_invoke(&ctx, NULL, "time_now", args, on_answer, &a);
    assert_true(a.is_error);
    assert_non_null(strstr(a.text, "unknown timezone"));
    json_decref(args);
}

static void test_file_write_then_read_round_trip(void **state)
{
    char ws[] = "/tmp/nx_tools_rt_XXXXXX";
    const char *const allowed[] = {"file_*", NULL};
    struct nx_tool_ctx ctx = {.agent_id = "a_files"};
    struct answer a = {0};
    json_t *args;

    (void)state;
    assert_non_null(mkdtemp(ws));
    ctx.workspace = ws;
    args = json_pack("{s:s, s:s}", "path", "notes/today.txt", "content", "caf\xc3\xa9 ok\n");
    assert_null(nx_tool_invoke(&ctx, allowed, "file_write", args, on_answer, &a));
    assert_false(a.is_error);
    assert_string_equal(a.text, "wrote 9 bytes to \"notes/today.txt\"");
    json_decref(args);

    args = json_pack("{s:s, s:s, s:b}", "path", "notes/today.txt", "content", "more\n", "append", 1);
    nx_tool_invoke(&ctx, allowed, "file_write", args, on_answer, &a);
    assert_false(a.is_error);
    json_decref(args);

    args = json_pack("{s:s}", "path", "notes/today.txt");
    nx_tool_invoke(&ctx, allowed, "file_read", args, on_answer, &a);
    assert_false(a.is_error);
    assert_string_equal(a.text, "caf\xc3\xa9 ok\nmore\n");
    json_decref(args);

    args = json_pack("{s:s, s:i, s:i}", "path", "notes/today.txt", "offset", 6, "limit", 2);
    nx_tool_invoke(&ctx, allowed, "file_read", args, on_answer, &a);
    assert_false(a.is_error);
    assert_non_null(strstr(a.text, "ok\n[file_read: bytes 6-8 of 14 shown; call again with offset=8"));
    json_decref(args);

    args = json_pack("{s:s}", "path", "notes");
    nx_tool_invoke(&ctx, allowed, "file_list", args, on_answer, &a);
    assert_false(a.is_error);
    assert_non_null(strstr(a.text, "{\"name\":\"today.txt\",\"type\":\"file\",\"size\":14}"));
    json_decref(args);

    nx_tool_invoke(&ctx, allowed, "file_list", NULL, on_answer, &a);
    assert_false(a.is_error);
    assert_non_null(strstr(a.text, "{\"name\":\"notes\",\"type\":\"dir\"}"));

    /* time_now is not in this agent's list */
    nx_tool_invoke(&ctx, allowed, "time_now", NULL, on_answer, &a);
    assert_true(a.is_error);

    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/notes/today.txt", ws);
    unlink(path);
    snprintf(path, sizeof path, "%s/notes", ws);
    rmdir(path);
    rmdir(ws);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_registry_has_builtins_and_unique_names, setup),
        cmocka_unit_test_setup(test_register_refuses_bad_schema, setup),
        cmocka_unit_test_setup(test_manifest_filters_by_globs, setup),
        cmocka_unit_test_setup(test_invoke_unknown_tool, setup),
        cmocka_unit_test_setup(test_invoke_blocked_tool_never_runs, setup),
        cmocka_unit_test_setup(test_invoke_invalid_args_never_runs, setup),
        cmocka_unit_test_setup(test_invoke_ok_and_error_are_counted_and_timed, setup),
        cmocka_unit_test_setup(test_invoke_caps_output, setup),
        cmocka_unit_test_setup(test_validator_cases, setup),
        cmocka_unit_test_setup(test_validator_survives_deep_nesting, setup),
        cmocka_unit_test_setup(test_builtin_schemas_reject_wrong_args, setup),
        cmocka_unit_test_setup(test_time_now_round_trip, setup),
        cmocka_unit_test_setup(test_file_write_then_read_round_trip, setup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
