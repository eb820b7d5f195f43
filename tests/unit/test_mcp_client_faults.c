#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/log.h"
#include "mcp/mcp.h"
#include "tools/tool.h"
#include "mcp_fixture.h"

/* The MCP client against a scripted stdio server (python3) that gets things wrong: error replies
 * whose "error" is malformed, tools whose inputSchema is no object schema, a flood of stderr, and
 * tools/list failing after a good handshake. Each must end in a clear outcome at once, never in a
 * call left waiting, a tool that cannot be called, a flooded log or a server left without tools. */

static char fake_path[256];

static const char fake_py[] =
    "import json, os, sys\n"
    "fails = [f for f in os.environ.get('FAKE_LIST_FAILS', '').split(',') if f]\n"
    "def send(o):\n"
    "    sys.stdout.write(json.dumps(o) + '\\n'); sys.stdout.flush()\n"
    "def result(i, r): send({'jsonrpc': '2.0', 'id': i, 'result': r})\n"
    "def text(i, t): result(i, {'content': [{'type': 'text', 'text': t}]})\n"
    "bad_errors = {'err_string': {'error': 'boom'}, 'err_nocode': {'error': {'message': 'm'}},\n"
    "              'err_nomsg': {'error': {'code': 5}}, 'err_null': {'error': None},\n"
    "              'err_both': {'error': {'code': 1, 'message': 'm'}, 'result': {}}}\n"
    "tools = [{'name': 'ok', 'inputSchema': {'type': 'object'}}]\n"
    "tools += [{'name': n, 'inputSchema': {'type': 'object'}} for n in bad_errors]\n"
    "tools += [{'name': 'noschema'}, {'name': 'relist'},\n"
    "          {'name': 'typeless', 'inputSchema': {'properties': {'x': {'type': 'string'}}}},\n"
    "          {'name': 'strschema', 'inputSchema': 'object'}, {'name': 'arrschema', 'inputSchema': []},\n"
    "          {'name': 'nullschema', 'inputSchema': None},\n"
    "          {'name': 'stringtype', 'inputSchema': {'type': 'string'}}]\n"
    "tools += [{'name': 'flood', 'inputSchema': {'type': 'object'}}]\n"
    "sys.stderr.write('fake server up\\n'); sys.stderr.flush()\n"
    "for line in sys.stdin:\n"
    "    m = json.loads(line); meth = m.get('method'); mid = m.get('id')\n"
    "    if mid is None: continue\n"
    "    if meth == 'initialize':\n"
    "        result(mid, {'protocolVersion': '2025-06-18', 'capabilities': {'tools': {}},\n"
    "                     'serverInfo': {'name': 'faulty', 'version': '1'}})\n"
    "    elif meth == 'tools/list':\n"
    "        f = fails.pop(0) if fails else None\n"
    "        if f == 'error':\n"
    "            send({'jsonrpc': '2.0', 'id': mid, 'error': {'code': -32603, 'message': 'not yet'}})\n"
    "        elif f != 'timeout':\n"
    "            result(mid, {'tools': tools})\n"
    "    elif meth == 'tools/call':\n"
    "        name, args = m['params']['name'], m['params'].get('arguments') or {}\n"
    "        if name in bad_errors:\n"
    "            send(dict({'jsonrpc': '2.0', 'id': mid}, **bad_errors[name]))\n"
    "        elif name == 'relist':\n"
    "            send({'jsonrpc': '2.0', 'method': 'notifications/tools/list_changed'})\n"
    "            text(mid, 'relisting')\n"
    "        elif name == 'flood':\n"
    "            sys.stderr.write('x' * args['long'] + '\\n')\n"
    "            sys.stderr.write(''.join('flood line %d\\n' % i for i in range(args['n'])))\n"
    "            sys.stderr.flush()\n"
    "            text(mid, 'flooded')\n"
    "        else:\n"
    "            text(mid, 'called ' + name)\n"
    "    elif meth == 'ping':\n"
    "        result(mid, {})\n";

static int setup(void **state)
{
    (void)state;
    return fake_script_write(fake_path, sizeof fake_path, "nx-mcp-faulty", fake_py);
}

static int teardown(void **state)
{
    (void)state;
    unlink(fake_path);
    return 0;
}

/* One server "faulty" running the script, with env key=val when key is not NULL. */
static struct nx_mcp_manager *start(uv_loop_t *loop, uint32_t call_timeout_ms, char **key, char **val)
{
    static char *args[2];
    static struct nx_mcp_server_conf sc;
    struct nx_mcp_conf c;
    struct nx_mcp_manager *m = NULL;

    args[0] = fake_path;
    args[1] = NULL;
    memset(&sc, 0, sizeof sc);
    sc.name = "faulty";
    sc.transport = NX_MCP_STDIO;
    sc.command = "python3";
    sc.args = args;
    if (key)
        sc.env = (struct nx_strmap){key, val, 1};
    memset(&c, 0, sizeof c);
    c.enabled = true;
    c.initialize_timeout_ms = 10000;
    c.call_timeout_ms = call_timeout_ms;
    c.shutdown_grace_ms = 1000;
    c.idle_reap_interval_ms = 60000;
    c.servers = &sc;
    c.n_servers = 1;
    assert_int_equal(uv_loop_init(loop), 0);
    nx_mcp_manager_set_limits(0, 60000); /* a restart would show as a failure, not hide one */
    assert_int_equal(nx_mcp_manager_new(loop, NULL, &c, &m), 0);
    return m;
}

static void stop(uv_loop_t *loop, struct nx_mcp_manager *m)
{
    finish_loop(loop, m, 10000);
    assert_int_equal(uv_loop_close(loop), 0);
    nx_mcp_manager_set_limits(0, 0);
}

/* What the log said about the server, kept by a sink. */
struct seen {
    enum nx_log_level level;
    const char *needle;
    int count;
    char last[2048];
    size_t longest;
};

static void on_line(const struct nx_log_line *line, void *udata)
{
    struct seen *s = udata;

    if (line->level < s->level || !strstr(line->msg, "server faulty") || !strstr(line->msg, s->needle))
        return;
    s->count++;
    snprintf(s->last, sizeof s->last, "%s", line->msg);
    if (line->len > s->longest)
        s->longest = line->len;
}

/* ---- a malformed error reply ends its call at once -------------------------------------- */

static void test_mcp_malformed_error_reply_fails_the_call_at_once(void **state)
{
    static const char *const tools[] = {"mcp_faulty_err_string", "mcp_faulty_err_nocode",
                                        "mcp_faulty_err_nomsg", "mcp_faulty_err_null",
                                        "mcp_faulty_err_both"};
    uv_loop_t loop;
    struct nx_mcp_manager *m;
    struct answer a = {0};
    json_t *st;

    (void)state;
    m = start(&loop, 20000, NULL, NULL);
    assert_true(run_until(&loop, tool_exists, "mcp_faulty_err_both", 20000));
    for (size_t i = 0; i < NX_ARRAY_LEN(tools); i++) {
        /* far sooner than the 20 s call timeout */
        assert_true(call_tool(&loop, tools[i], "{}", &a, 3000));
        assert_true(a.is_error);
        assert_non_null(strstr(a.text, "the server's error reply is malformed: "));
        free(a.text);
    }
    assert_true(session_int(m, "faulty", "malformed") >= 5);
    /* the server is still up and answers */
    assert_true(call_tool(&loop, "mcp_faulty_ok", "{}", &a, 3000));
    assert_false(a.is_error);
    assert_string_equal(a.text, "called ok");
    free(a.text);
    st = server_status(m, "faulty");
    assert_string_equal(json_string_value(json_object_get(st, "state")), "ready");
    assert_int_equal(json_integer_value(json_object_get(st, "restarts")), 0);
    json_decref(st);
    stop(&loop, m);
}

/* ---- input schemas that are no object schema ------------------------------------------ */

static bool has_manifest_type_object(const char *name)
{
    json_t *all = nx_tool_manifest(NULL);
    bool ok = false;

    for (size_t i = 0; i < json_array_size(all); i++) {
        const json_t *t = json_array_get(all, i);

        const char *type = json_string_value(json_object_get(json_object_get(t, "input_schema"), "type"));

        if (strcmp(json_string_value(json_object_get(t, "name")), name) == 0)
            ok = type && strcmp(type, "object") == 0;
    }
    json_decref(all);
    return ok;
}

static bool listed_twice(void *arg)
{
    return ((struct seen *)arg)->count >= 2;
}

static void test_mcp_tool_without_an_object_schema_is_skipped(void **state)
{
    static const struct {
        const char *tool;
        const char *why;
    } refused[] = {
        {"strschema", "its inputSchema is a string, not an object schema"},
        {"arrschema", "its inputSchema is an array, not an object schema"},
        {"nullschema", "its inputSchema is null, not an object schema"},
        {"stringtype", "its inputSchema has \"type\": \"string\", not \"object\""},
    };
    uv_loop_t loop;
    struct nx_mcp_manager *m;
    struct answer a = {0};
    struct seen warned[NX_ARRAY_LEN(refused)];
    struct seen listed = {.level = NX_LOG_INFO, .needle = "tools registered"};
    json_t *st;
    char needle[NX_ARRAY_LEN(refused)][200];

    (void)state;
    for (size_t i = 0; i < NX_ARRAY_LEN(refused); i++) {
        snprintf(needle[i], sizeof needle[i], "server faulty: tool \"%s\" skipped: %s", refused[i].tool,
                 refused[i].why);
        memset(&warned[i], 0, sizeof warned[i]);
        warned[i].level = NX_LOG_WARN;
        warned[i].needle = needle[i];
        assert_int_equal(nx_log_sink_add(on_line, &warned[i], NX_LOG_WARN), 0);
    }
    assert_int_equal(nx_log_sink_add(on_line, &listed, NX_LOG_INFO), 0);
    m = start(&loop, 20000, NULL, NULL);
    assert_true(run_until(&loop, tool_exists, "mcp_faulty_ok", 20000));
    /* listed again (the server says its list changed): the same tools are not warned of again */
    assert_true(call_tool(&loop, "mcp_faulty_relist", "{}", &a, 5000));
    free(a.text);
    assert_true(run_until(&loop, listed_twice, &listed, 5000));
    for (size_t i = 0; i < NX_ARRAY_LEN(refused); i++)
        nx_log_sink_remove(on_line, &warned[i]);
    nx_log_sink_remove(on_line, &listed);
    for (size_t i = 0; i < NX_ARRAY_LEN(refused); i++) {
        char name[80];

        snprintf(name, sizeof name, "mcp_faulty_%s", refused[i].tool);
        assert_null(nx_tool_find(name));
        assert_int_equal(warned[i].count, 1); /* one warning, naming the server and the tool */
    }
    /* and the admin page says which were left out, and why */
    st = server_status(m, "faulty");
    assert_int_equal(json_object_size(json_object_get(st, "skipped_tools")), NX_ARRAY_LEN(refused));
    assert_string_equal(json_string_value(json_object_get(json_object_get(st, "skipped_tools"), "arrschema")),
                        "its inputSchema is an array, not an object schema");
    json_decref(st);
    /* no inputSchema at all: taken as {"type": "object"}, and callable */
    assert_true(has_manifest_type_object("mcp_faulty_noschema"));
    assert_true(call_tool(&loop, "mcp_faulty_noschema", "{}", &a, 5000));
    assert_false(a.is_error);
    assert_string_equal(a.text, "called noschema");
    free(a.text);
    /* an object schema without "type": "object" is added, the rest kept and checked */
    assert_true(has_manifest_type_object("mcp_faulty_typeless"));
    assert_true(call_tool(&loop, "mcp_faulty_typeless", "{\"x\": 5}", &a, 5000));
    assert_true(a.is_error);
    free(a.text);
    assert_true(call_tool(&loop, "mcp_faulty_typeless", "{\"x\": \"five\"}", &a, 5000));
    assert_false(a.is_error);
    free(a.text);
    stop(&loop, m);
}

/* ---- a flood of stderr ------------------------------------------------------------------- */

struct flood_seen {
    int lines;                     /* stderr lines written to the log */
    unsigned long long suppressed; /* as the summaries said */
    int summaries;
    bool has_cut_line;
    size_t longest;
};

static void on_flood_line(const struct nx_log_line *line, void *udata)
{
    struct flood_seen *f = udata;
    const char *p;
    unsigned long long n;

    if (!strstr(line->msg, "server faulty"))
        return;
    if (line->len > f->longest)
        f->longest = line->len;
    if (strstr(line->msg, "server faulty: stderr: ")) {
        f->lines++;
        if (strstr(line->msg, "xxxxxxxx [... 98976 more bytes]"))
            f->has_cut_line = true;
    } else if ((p = strstr(line->msg, "server faulty: ... ")) &&
               sscanf(p, "server faulty: ... %llu lines of stderr suppressed", &n) == 1) {
        f->summaries++;
        f->suppressed += n;
    }
}

static bool all_said(void *arg)
{
    struct flood_seen *f = arg;

    return (unsigned long long)f->lines + f->suppressed >= 5002; /* the banner, the long line, 5000 */
}

static void test_mcp_stderr_flood_is_rate_limited(void **state)
{
    uv_loop_t loop;
    struct nx_mcp_manager *m;
    struct answer a = {0};
    struct flood_seen f = {0};
    uint64_t t0;

    (void)state;
    assert_int_equal(nx_log_sink_add(on_flood_line, &f, NX_LOG_INFO), 0);
    m = start(&loop, 20000, NULL, NULL);
    assert_true(run_until(&loop, tool_exists, "mcp_faulty_flood", 20000));
    t0 = nx_mono_ms();
    /* the answer on stdout comes after 5000 lines of stderr: it is not held up by them */
    assert_true(call_tool(&loop, "mcp_faulty_flood", "{\"n\": 5000, \"long\": 100000}", &a, 10000));
    assert_false(a.is_error);
    assert_string_equal(a.text, "flooded");
    free(a.text);
    /* the lines over the rate are counted, and said once their second is over */
    assert_true(run_until(&loop, all_said, &f, 5000));
    nx_log_sink_remove(on_flood_line, &f);
    assert_true(f.summaries >= 1);
    /* 20 lines a second at most: the flood takes a few seconds at the very worst */
    assert_true(f.lines <= 20 * (int)(2 + (nx_mono_ms() - t0) / 1000));
    assert_int_equal((unsigned long long)f.lines + f.suppressed, 5002);
    /* a 100,000-byte line is cut, not dropped, and no entry is long */
    assert_true(f.has_cut_line);
    assert_true(f.longest < 1200);
    /* the server is fine */
    assert_true(call_tool(&loop, "mcp_faulty_ok", "{}", &a, 5000));
    assert_false(a.is_error);
    free(a.text);
    stop(&loop, m);
}

/* ---- tools/list failing after the handshake ---------------------------------------------- */

static void test_mcp_tools_list_failure_is_retried_with_backoff(void **state)
{
    char *key[] = {"FAKE_LIST_FAILS"}, *val[] = {"error,timeout"};
    uv_loop_t loop;
    struct nx_mcp_manager *m;
    struct seen warned = {.level = NX_LOG_WARN, .needle = "tools/list"};
    struct seen recovered = {.level = NX_LOG_INFO, .needle = "tools/list answered after 2 failures"};
    uint64_t t0;
    json_t *st;

    (void)state;
    assert_int_equal(nx_log_sink_add(on_line, &warned, NX_LOG_WARN), 0);
    assert_int_equal(nx_log_sink_add(on_line, &recovered, NX_LOG_INFO), 0);
    /* an error reply, then no answer (500 ms is the timeout), then the list */
    m = start(&loop, 500, key, val);
    t0 = nx_mono_ms();
    assert_true(run_until(&loop, tool_exists, "mcp_faulty_ok", 15000));
    /* retried 1 s after the error, then 2 s after the timeout: not at once */
    assert_true(nx_mono_ms() - t0 >= 3000);
    nx_log_sink_remove(on_line, &warned);
    nx_log_sink_remove(on_line, &recovered);
    assert_int_equal(warned.count, 1); /* one warning for the run of failures, timeouts included */
    assert_non_null(strstr(warned.last, "server faulty: tools/list failed: code -32603: not yet; "
                                        "retrying in 1000 ms"));
    assert_int_equal(recovered.count, 1);
    st = server_status(m, "faulty");
    assert_int_equal(json_integer_value(json_object_get(st, "restarts")), 0); /* same connection */
    json_decref(st);
    stop(&loop, m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mcp_malformed_error_reply_fails_the_call_at_once),
        cmocka_unit_test(test_mcp_tool_without_an_object_schema_is_skipped),
        cmocka_unit_test(test_mcp_stderr_flood_is_rate_limited),
        cmocka_unit_test(test_mcp_tools_list_failure_is_retried_with_backoff),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
