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
 * whose "error" is malformed. The call must end at once with a clear error, never be left
 * waiting. */

static char fake_path[256];

static const char fake_py[] =
    "import json, sys\n"
    "def send(o):\n"
    "    sys.stdout.write(json.dumps(o) + '\\n'); sys.stdout.flush()\n"
    "def result(i, r): send({'jsonrpc': '2.0', 'id': i, 'result': r})\n"
    "def text(i, t): result(i, {'content': [{'type': 'text', 'text': t}]})\n"
    "bad_errors = {'err_string': {'error': 'boom'}, 'err_nocode': {'error': {'message': 'm'}},\n"
    "              'err_nomsg': {'error': {'code': 5}}, 'err_null': {'error': None},\n"
    "              'err_both': {'error': {'code': 1, 'message': 'm'}, 'result': {}}}\n"
    "tools = [{'name': 'ok', 'inputSchema': {'type': 'object'}}]\n"
    "tools += [{'name': n, 'inputSchema': {'type': 'object'}} for n in bad_errors]\n"
    "sys.stderr.write('fake server up\\n'); sys.stderr.flush()\n"
    "for line in sys.stdin:\n"
    "    m = json.loads(line); meth = m.get('method'); mid = m.get('id')\n"
    "    if mid is None: continue\n"
    "    if meth == 'initialize':\n"
    "        result(mid, {'protocolVersion': '2025-06-18', 'capabilities': {'tools': {}},\n"
    "                     'serverInfo': {'name': 'faulty', 'version': '1'}})\n"
    "    elif meth == 'tools/list':\n"
    "        result(mid, {'tools': tools})\n"
    "    elif meth == 'tools/call':\n"
    "        name = m['params']['name']\n"
    "        if name in bad_errors:\n"
    "            send(dict({'jsonrpc': '2.0', 'id': mid}, **bad_errors[name]))\n"
    "        else:\n"
    "            text(mid, 'called ' + name)\n"
    "    elif meth == 'ping':\n"
    "        result(mid, {})\n";

static int setup(void **state)
{
    FILE *f;

    (void)state;
    snprintf(fake_path, sizeof fake_path, "/tmp/nx-mcp-faulty-%d.py", (int)getpid());
    if (!(f = fopen(fake_path, "w")))
        return -1;
    fputs(fake_py, f);
    fclose(f);
    nx_log_set_level(getenv("NX_TEST_LOG") ? NX_LOG_DEBUG : NX_LOG_OFF);
    return 0;
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mcp_malformed_error_reply_fails_the_call_at_once),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
