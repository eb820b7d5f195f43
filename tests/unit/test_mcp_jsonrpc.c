#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/log.h"
#include "mcp/jsonrpc.h"
#include "mcp/mcp.h"

/* JSON-RPC framing (line splitting with a cap, classification), registry names for MCP tools
 * and the text a tools/call result becomes. */

struct lines {
    int n;
    char last[256];
};

static int on_line(const char *line, size_t len, void *udata)
{
    struct lines *l = udata;

    l->n++;
    snprintf(l->last, sizeof l->last, "%.*s", (int)len, line);
    return 0;
}

static void test_mcp_lines_split_across_chunks_and_crlf(void **state)
{
    struct nx_jsonrpc_lines sp;
    struct lines l = {0};

    (void)state;
    nx_jsonrpc_lines_init(&sp, 64);
    assert_int_equal(nx_jsonrpc_lines_feed(&sp, "{\"a\":", 5, on_line, &l), 0);
    assert_int_equal(l.n, 0);
    assert_int_equal(nx_jsonrpc_lines_feed(&sp, "1}\r\n\n{\"b\":2}\n{\"c\"", 17, on_line, &l), 0);
    assert_int_equal(l.n, 2);
    assert_string_equal(l.last, "{\"b\":2}");
    assert_int_equal(nx_jsonrpc_lines_feed(&sp, ":3}\n", 4, on_line, &l), 0);
    assert_int_equal(l.n, 3);
    assert_string_equal(l.last, "{\"c\":3}");
    nx_jsonrpc_lines_cleanup(&sp);
}

static void test_mcp_lines_drop_overlong_line_and_go_on(void **state)
{
    struct nx_jsonrpc_lines sp;
    struct lines l = {0};
    char big[200];

    (void)state;
    memset(big, 'x', sizeof big);
    nx_jsonrpc_lines_init(&sp, 16);
    /* over the cap in one piece, then in pieces without a newline for a while */
    assert_int_equal(nx_jsonrpc_lines_feed(&sp, big, 100, on_line, &l), NX_ETOOBIG);
    assert_int_equal(nx_jsonrpc_lines_feed(&sp, big, 100, on_line, &l), 0);
    assert_true(sp.buf.len <= 17); /* never buffered past the cap */
    assert_int_equal(nx_jsonrpc_lines_feed(&sp, "tail\nok\n", 8, on_line, &l), 0);
    assert_int_equal(l.n, 1);
    assert_string_equal(l.last, "ok");
    /* a complete over-long line inside one chunk */
    memcpy(big + 50, "\nshort\n", 7);
    assert_int_equal(nx_jsonrpc_lines_feed(&sp, big, 57, on_line, &l), NX_ETOOBIG);
    assert_string_equal(l.last, "short");
    assert_int_equal(sp.dropped, 2);
    nx_jsonrpc_lines_cleanup(&sp);
}

static void test_mcp_classify_messages(void **state)
{
    static const struct {
        const char *text;
        int kind; /* 0 = invalid */
    } cases[] = {
        {"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}", NX_JSONRPC_REQUEST},
        {"{\"jsonrpc\":\"2.0\",\"id\":\"a\",\"method\":\"roots/list\",\"params\":{}}", NX_JSONRPC_REQUEST},
        {"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}", NX_JSONRPC_NOTIFICATION},
        {"{\"jsonrpc\":\"2.0\",\"id\":3,\"result\":{}}", NX_JSONRPC_RESULT},
        {"{\"jsonrpc\":\"2.0\",\"id\":null,\"error\":{\"code\":-32700,\"message\":\"x\"}}", NX_JSONRPC_ERROR},
        {"{\"jsonrpc\":\"1.0\",\"id\":1,\"method\":\"ping\"}", 0},
        {"{\"jsonrpc\":\"2.0\",\"id\":1.5,\"method\":\"ping\"}", 0},
        {"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{},\"error\":{\"code\":1}}", 0},
        {"{\"jsonrpc\":\"2.0\",\"id\":1}", 0},
        {"{\"jsonrpc\":\"2.0\",\"method\":5}", 0},
        {"{\"jsonrpc\":\"2.0\",\"method\":\"x\",\"params\":3}", 0},
        {"{\"jsonrpc\":\"2.0\",\"id\":1,\"error\":{\"message\":\"no code\"}}", 0},
    };
    char err[160];

    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json_t *v = nx_jsonrpc_load(cases[i].text, strlen(cases[i].text), err, sizeof err);
        struct nx_jsonrpc_msg m;
        int rc;

        assert_non_null(v);
        rc = nx_jsonrpc_classify(v, &m, err, sizeof err);
        if (cases[i].kind) {
            assert_int_equal(rc, 0);
            assert_int_equal(m.kind, cases[i].kind);
        } else {
            assert_int_equal(rc, NX_EPROTO);
        }
        json_decref(v);
    }
    assert_null(nx_jsonrpc_load("{bad", 4, err, sizeof err));
    assert_null(nx_jsonrpc_load("42", 2, err, sizeof err));
}

/* A reply whose "error" is malformed is still the answer to its id: classify says so, so that the
 * client can fail that request at once. */
static void test_mcp_classify_malformed_error_reply_keeps_its_id(void **state)
{
    static const struct {
        const char *text;
        long long id; /* 0: no id to give */
        const char *why;
    } cases[] = {
        {"{\"jsonrpc\":\"2.0\",\"id\":7,\"error\":\"boom\"}", 7, "\"error\" is not an object"},
        {"{\"jsonrpc\":\"2.0\",\"id\":7,\"error\":null}", 7, "\"error\" is not an object"},
        {"{\"jsonrpc\":\"2.0\",\"id\":7,\"error\":{\"message\":\"m\"}}", 7,
         "\"error\" has no integer \"code\""},
        {"{\"jsonrpc\":\"2.0\",\"id\":7,\"error\":{\"code\":\"1\",\"message\":\"m\"}}", 7,
         "\"error\" has no integer \"code\""},
        {"{\"jsonrpc\":\"2.0\",\"id\":7,\"error\":{\"code\":1}}", 7, "\"error\" has no string \"message\""},
        {"{\"jsonrpc\":\"2.0\",\"id\":7,\"error\":{\"code\":1,\"message\":\"m\"},\"result\":{}}", 7,
         "a response needs exactly one of \"result\" and \"error\""},
        {"{\"jsonrpc\":\"2.0\",\"id\":null,\"error\":5}", 0, "\"error\" is not an object"},
        {"{\"jsonrpc\":\"2.0\",\"id\":1.5,\"error\":5}", 0, "\"id\" must be an integer, a string or null"},
        {"{\"jsonrpc\":\"2.0\",\"id\":7}", 0, "a response needs exactly one of \"result\" and \"error\""},
    };
    char err[160];

    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json_t *v = nx_jsonrpc_load(cases[i].text, strlen(cases[i].text), err, sizeof err);
        struct nx_jsonrpc_msg m;

        assert_non_null(v);
        assert_int_equal(nx_jsonrpc_classify(v, &m, err, sizeof err), NX_EPROTO);
        assert_string_equal(err, cases[i].why);
        if (cases[i].id)
            assert_int_equal(json_integer_value(m.id), cases[i].id);
        else
            assert_null(m.id);
        json_decref(v);
    }
}

static void test_mcp_builders(void **state)
{
    json_t *id = json_string("s1");
    json_t *e = nx_jsonrpc_error_new(id, NX_JSONRPC_METHOD_NOT_FOUND, "nope");
    char *s = json_dumps(e, JSON_COMPACT | JSON_SORT_KEYS);

    (void)state;
    assert_string_equal(s, "{\"error\":{\"code\":-32601,\"message\":\"nope\"},\"id\":\"s1\","
                           "\"jsonrpc\":\"2.0\"}");
    free(s);
    json_decref(e);
    json_decref(id);
}

static void test_mcp_tool_names(void **state)
{
    char name[80], again[80], hashed[80];
    char longtool[100];

    (void)state;
    nx_mcp_tool_name("everything", "get-sum", 0, name, sizeof name);
    assert_string_equal(name, "mcp_everything_get-sum");
    nx_mcp_tool_name("my server", "a.b/c", 0, name, sizeof name);
    assert_string_equal(name, "mcp_my_server_a_b_c");
    nx_mcp_tool_name("my server", "a.b/c", 1, hashed, sizeof hashed);
    assert_int_equal(strlen(hashed), strlen("mcp_my_server_a_b_c") + 9);
    assert_memory_equal(hashed, "mcp_my_server_a_b_c_", 20);
    memset(longtool, 't', 90);
    longtool[90] = '\0';
    nx_mcp_tool_name("srv", longtool, 0, name, sizeof name);
    assert_int_equal(strlen(name), 64);
    nx_mcp_tool_name("srv", longtool, 0, again, sizeof again);
    assert_string_equal(name, again); /* stable */
    longtool[89] = 'u';
    nx_mcp_tool_name("srv", longtool, 0, again, sizeof again);
    assert_string_not_equal(name, again); /* differs where the cut hides the difference */
}

/* MCP wants an object schema: none is taken as one, anything else that is no object schema is
 * refused with a reason. */
static void test_mcp_tool_input_schema(void **state)
{
    static const struct {
        const char *def;
        const char *schema; /* NULL: refused, why below */
        const char *why;
    } cases[] = {
        {"{\"name\":\"t\"}", "{\"type\":\"object\"}", NULL},
        {"{\"name\":\"t\",\"inputSchema\":{\"type\":\"object\",\"required\":[\"a\"]}}",
         "{\"type\":\"object\",\"required\":[\"a\"]}", NULL},
        {"{\"name\":\"t\",\"inputSchema\":{\"properties\":{}}}", "{\"properties\":{},\"type\":\"object\"}",
         NULL},
        {"{\"name\":\"t\",\"inputSchema\":\"object\"}", NULL,
         "its inputSchema is a string, not an object schema"},
        {"{\"name\":\"t\",\"inputSchema\":[]}", NULL, "its inputSchema is an array, not an object schema"},
        {"{\"name\":\"t\",\"inputSchema\":null}", NULL, "its inputSchema is null, not an object schema"},
        {"{\"name\":\"t\",\"inputSchema\":7}", NULL, "its inputSchema is a number, not an object schema"},
        {"{\"name\":\"t\",\"inputSchema\":{\"type\":\"string\"}}", NULL,
         "its inputSchema has \"type\": \"string\", not \"object\""},
        {"{\"name\":\"t\",\"inputSchema\":{\"type\":[\"object\",\"null\"]}}", NULL,
         "its inputSchema's \"type\" is an array, not \"object\""},
    };
    char why[160];

    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json_t *def = json_loads(cases[i].def, 0, NULL);
        char *schema;

        assert_non_null(def);
        why[0] = '\0';
        schema = nx_mcp_tool_input_schema(def, why, sizeof why);
        if (cases[i].schema) {
            json_t *got = json_loads(schema, 0, NULL), *want = json_loads(cases[i].schema, 0, NULL);

            assert_true(json_equal(got, want));
            json_decref(got);
            json_decref(want);
        } else {
            assert_null(schema);
            assert_string_equal(why, cases[i].why);
        }
        free(schema);
        json_decref(def);
    }
}

static void test_mcp_result_text(void **state)
{
    json_t *r = json_loads("{\"content\":[{\"type\":\"text\",\"text\":\"hello\"},"
                           "{\"type\":\"image\",\"mimeType\":\"image/png\",\"data\":\"AAAAAA==\"},"
                           "{\"type\":\"resource\",\"resource\":{\"uri\":\"x://1\",\"text\":\"body\"}},"
                           "{\"type\":\"resource_link\",\"uri\":\"x://2\",\"name\":\"two\"},"
                           "{\"type\":\"weird\"}]}", 0, NULL);
    char *t = nx_mcp_result_text(r);

    (void)state;
    assert_string_equal(t, "hello\n[image: image/png, 4 bytes]\n[resource: x://1]\nbody\n"
                           "[resource link: x://2 (two)]\n[weird content]");
    free(t);
    json_decref(r);
    r = json_loads("{\"content\":[],\"structuredContent\":{\"a\":1}}", 0, NULL);
    t = nx_mcp_result_text(r);
    assert_string_equal(t, "{\"a\":1}");
    free(t);
    json_decref(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mcp_lines_split_across_chunks_and_crlf),
        cmocka_unit_test(test_mcp_lines_drop_overlong_line_and_go_on),
        cmocka_unit_test(test_mcp_classify_messages),
        cmocka_unit_test(test_mcp_classify_malformed_error_reply_keeps_its_id),
        cmocka_unit_test(test_mcp_builders),
        cmocka_unit_test(test_mcp_tool_names),
        cmocka_unit_test(test_mcp_tool_input_schema),
        cmocka_unit_test(test_mcp_result_text),
    };

    nx_log_set_level(NX_LOG_OFF);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
