#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/error.h"
#include "core/log.h"
#include "core/metrics.h"
#include "mcp/client.h"
#include "mcp/mcp.h"
#include "mcp/transport.h"
#include "tools/tool.h"
#include "mcp_fixture.h"

/* The MCP client over stdio, end to end through the manager and nx_tool_invoke: against the real
 * @modelcontextprotocol/server-everything (handshake, tools, progress, cancellation, a kill -9
 * and the restart), and against a small scripted server (python3) that sends malformed frames,
 * an over-long line, a response to an unknown id, paginated tools/list, and asks us for ping,
 * roots, sampling, elicitation and an unknown method. */

static char everything[1024];
static char fake_path[256];

static const char fake_py[] =
    "import json, os, sys\n"
    "ver = os.environ.get('FAKE_VERSION', '2025-06-18')\n"
    "big = int(os.environ.get('FAKE_BIG', '0'))\n"
    "replies = {}\n"
    "def send(o):\n"
    "    sys.stdout.write(json.dumps(o) + '\\n'); sys.stdout.flush()\n"
    "def result(i, r): send({'jsonrpc': '2.0', 'id': i, 'result': r})\n"
    "sys.stderr.write('fake server up\\n'); sys.stderr.flush()\n"
    "for line in sys.stdin:\n"
    "    line = line.strip()\n"
    "    if not line: continue\n"
    "    m = json.loads(line); meth = m.get('method'); mid = m.get('id')\n"
    "    if meth is None:\n"
    "        replies[str(mid)] = m; continue\n"
    "    if meth == 'initialize':\n"
    "        sys.stdout.write('this is not json\\n')\n"
    "        result(999, {})\n"
    "        send({'jsonrpc': '2.0', 'id': mid, 'bogus': True})\n"
    "        if big:\n"
    "            sys.stdout.write(json.dumps({'jsonrpc': '2.0', 'method': 'x',\n"
    "                                         'params': {'p': 'x' * big}}))\n"
    "            sys.stdout.write('\\n')\n"
    "        result(mid, {'protocolVersion': ver, 'capabilities': {'tools': {'listChanged': True}},\n"
    "                     'serverInfo': {'name': 'fake', 'version': '1'}})\n"
    "    elif meth == 'notifications/initialized':\n"
    "        for rid, rm in [('p1', 'ping'), ('r1', 'roots/list'), ('s1', 'sampling/createMessage'),\n"
    "                        ('e1', 'elicitation/create'), ('u1', 'foo/bar')]:\n"
    "            send({'jsonrpc': '2.0', 'id': rid, 'method': rm, 'params': {}})\n"
    "    elif meth == 'tools/list':\n"
    "        if (m.get('params') or {}).get('cursor') is None:\n"
    "            result(mid, {'tools': [{'name': 'replies', 'inputSchema': {'type': 'object'}}],\n"
    "                         'nextCursor': 'page2'})\n"
    "        else:\n"
    "            result(mid, {'tools': [{'name': 'dotted.name/x', 'description': 'd'},\n"
    "                                   {'name': 'L' * 80}, {'name': 'slow'}, {'name': 'nothing'},\n"
    "                                   {'name': 'nul'}]})\n"
    "    elif meth == 'tools/call':\n"
    "        if m['params']['name'] == 'slow': continue\n"
    "        if m['params']['name'] == 'nothing': result(mid, {}); continue\n"
    "        if m['params']['name'] == 'nul':\n"
    "            result(mid, {'content': [{'type': 'text', 'text': 'a\\u0000b'}]}); continue\n"
    "        if m['params']['name'] == 'replies':\n"
    "            result(mid, {'content': [{'type': 'text', 'text': json.dumps(replies, sort_keys=True)}]})\n"
    "        else:\n"
    "            result(mid, {'content': [{'type': 'image', 'mimeType': 'image/png', 'data': 'AAAA'},\n"
    "                                     {'type': 'text', 'text': 't'}], 'isError': True})\n"
    "    elif meth == 'ping':\n"
    "        if not os.environ.get('FAKE_NO_PING'): result(mid, {})\n"
    "    elif mid is not None:\n"
    "        send({'jsonrpc': '2.0', 'id': mid, 'error': {'code': -32601, 'message': 'no'}})\n";

static int setup(void **state)
{
    const char *src = getenv("NEXO_SOURCE_DIR");
    const char *peers = getenv("NEXO_NPM_PEERS");

    (void)state;
    if (peers)
        snprintf(everything, sizeof everything, "%s/node_modules/.bin/mcp-server-everything", peers);
    else
        snprintf(everything, sizeof everything, "%s/build/npm-peers/node_modules/.bin/mcp-server-everything",
                 src ? src : ".");
    if (access(everything, X_OK) != 0) {
        fprintf(stderr, "%s missing: run scripts/install-npm-peers.sh\n", everything);
        return -1;
    }
    return fake_script_write(fake_path, sizeof fake_path, "nx-mcp-fake", fake_py);
}

static int teardown(void **state)
{
    (void)state;
    unlink(fake_path);
    return 0;
}

static void conf_init(struct nx_mcp_conf *c, struct nx_mcp_server_conf *servers, size_t n)
{
    memset(c, 0, sizeof *c);
    c->enabled = true;
    c->initialize_timeout_ms = 20000;
    c->call_timeout_ms = 20000;
    c->shutdown_grace_ms = 1000;
    c->idle_reap_interval_ms = 60000;
    c->servers = servers;
    c->n_servers = n;
}

/* ---- server-everything ----------------------------------------------------------------- */

struct progress_wait {
    struct nx_mcp_manager *m;
    long long at_least;
};

static bool progress_reached(void *arg)
{
    struct progress_wait *w = arg;

    return status_int(w->m, "everything", "progress_notifications") >= w->at_least;
}

struct restart_wait {
    struct nx_mcp_manager *m;
    long long old_pid;
};

static bool restarted(void *arg)
{
    struct restart_wait *w = arg;
    json_t *s = server_status(w->m, "everything");
    bool ok = s && json_integer_value(json_object_get(s, "restarts")) >= 1 &&
              strcmp(json_string_value(json_object_get(s, "state")), "ready") == 0 &&
              json_integer_value(json_object_get(s, "pid")) != w->old_pid &&
              json_array_size(json_object_get(s, "tools")) > 0;

    json_decref(s);
    return ok;
}

static void test_mcp_stdio_against_server_everything(void **state)
{
    uv_loop_t loop;
    struct nx_mcp_manager *m = NULL;
    struct nx_mcp_server_conf sc;
    struct nx_mcp_conf c;
    char *args[] = {"stdio", NULL};
    struct answer a = {0}, cancelled = {0};
    struct progress_wait pw;
    struct restart_wait rw;
    struct nx_tool_call *call;
    json_t *st, *args_json;
    long long before, cancels;

    (void)state;
    assert_int_equal(uv_loop_init(&loop), 0);
    memset(&sc, 0, sizeof sc);
    sc.name = "everything";
    sc.transport = NX_MCP_STDIO;
    sc.command = everything;
    sc.args = args;
    conf_init(&c, &sc, 1);
    nx_mcp_manager_set_limits(0, 200);
    assert_int_equal(nx_mcp_manager_new(&loop, NULL, &c, &m), 0);

    /* handshake and tools */
    assert_true(run_until(&loop, tool_exists, "mcp_everything_echo", 30000));
    assert_non_null(nx_tool_find("mcp_everything_get-sum"));
    assert_non_null(nx_tool_find("mcp_everything_trigger-long-running-operation"));
    st = server_status(m, "everything");
    assert_string_equal(json_string_value(json_object_get(st, "protocol_version")), "2025-11-25");
    assert_string_equal(json_string_value(json_object_get(json_object_get(st, "server_info"), "name")),
                        "mcp-servers/everything");
    assert_string_equal(json_string_value(json_object_get(st, "state")), "ready");
    json_decref(st);

    /* calls through the registry */
    assert_true(call_tool(&loop, "mcp_everything_echo", "{\"message\":\"hi there\"}", &a, 20000));
    assert_false(a.is_error);
    assert_non_null(strstr(a.text, "hi there"));
    free(a.text);
    assert_true(call_tool(&loop, "mcp_everything_get-sum", "{\"a\":2,\"b\":40}", &a, 20000));
    assert_false(a.is_error);
    assert_non_null(strstr(a.text, "42"));
    free(a.text);
    /* a call the server's schema refuses never reaches the server */
    assert_true(call_tool(&loop, "mcp_everything_echo", "{}", &a, 20000));
    assert_true(a.is_error);
    free(a.text);

    /* a long-running operation with progress notifications */
    before = status_int(m, "everything", "progress_notifications");
    assert_true(call_tool(&loop, "mcp_everything_trigger-long-running-operation",
                          "{\"duration\":1,\"steps\":4}", &a, 20000));
    assert_false(a.is_error);
    assert_non_null(strstr(a.text, "Long running operation completed"));
    free(a.text);
    assert_true(status_int(m, "everything", "progress_notifications") >= before + 4);

    /* cancelled midway: notifications/cancelled goes out, done is never called */
    cancels = session_int(m, "everything", "cancels_sent");
    pw.m = m;
    pw.at_least = status_int(m, "everything", "progress_notifications") + 1;
    args_json = json_loads("{\"duration\":10,\"steps\":50}", 0, NULL);
    call = nx_tool_invoke(&test_ctx, NULL, "mcp_everything_trigger-long-running-operation", args_json,
                          on_answer, &cancelled);
    json_decref(args_json);
    assert_non_null(call);
    assert_true(run_until(&loop, progress_reached, &pw, 20000));
    nx_tool_cancel(call);
    assert_int_equal(session_int(m, "everything", "cancels_sent"), cancels + 1);
    run_until(&loop, never, NULL, 700);
    assert_int_equal(cancelled.calls, 0);
    /* still usable */
    assert_true(call_tool(&loop, "mcp_everything_echo", "{\"message\":\"after cancel\"}", &a, 20000));
    assert_non_null(strstr(a.text, "after cancel"));
    free(a.text);

    /* kill -9: restarted with backoff and usable again */
    rw.m = m;
    rw.old_pid = status_int(m, "everything", "pid");
    assert_true(rw.old_pid > 0);
    assert_int_equal(kill((pid_t)rw.old_pid, SIGKILL), 0);
    assert_true(run_until(&loop, restarted, &rw, 30000));
    assert_true(call_tool(&loop, "mcp_everything_echo", "{\"message\":\"reborn\"}", &a, 20000));
    assert_false(a.is_error);
    assert_non_null(strstr(a.text, "reborn"));
    free(a.text);

    finish_loop(&loop, m, 10000);
    assert_null(nx_tool_find("mcp_everything_echo"));
    assert_int_equal(uv_loop_close(&loop), 0);
    nx_mcp_manager_set_limits(0, 0);
}

/* ---- resources and prompts (server-everything) ----------------------------------------- */

struct got {
    int calls;
    int rc;
    json_t *result;
};

static void on_got(int rc, const json_t *result, const char *err, void *udata)
{
    struct got *g = udata;

    (void)err;
    g->calls++;
    g->rc = rc;
    g->result = result ? json_deep_copy(result) : NULL;
}

static bool got_it(void *arg)
{
    return ((struct got *)arg)->calls > 0;
}

static bool client_ready(void *arg)
{
    return nx_mcp_client_is_ready(arg);
}

static bool has_prompts(void *arg)
{
    json_t *s = server_status(arg, "everything");
    bool ok = json_array_size(json_object_get(s, "prompts")) > 0;

    json_decref(s);
    return ok;
}

static void test_mcp_stdio_resources_and_prompts(void **state)
{
    uv_loop_t loop;
    struct nx_mcp_manager *m = NULL;
    struct nx_mcp_server_conf sc;
    struct nx_mcp_conf c;
    struct nx_mcp_link_opts to;
    struct nx_mcp_link *link = NULL;
    struct nx_mcp_client_opts co;
    struct nx_mcp_client_cb cb;
    struct nx_mcp_client *client = NULL;
    char *args[] = {"stdio", NULL};
    struct answer a = {0};
    struct got g = {0};
    json_t *st, *prompts, *pargs, *first;
    const char *uri;
    bool has_args_prompt = false;

    (void)state;
    assert_int_equal(uv_loop_init(&loop), 0);
    memset(&sc, 0, sizeof sc);
    sc.name = "everything";
    sc.transport = NX_MCP_STDIO;
    sc.command = everything;
    sc.args = args;
    conf_init(&c, &sc, 1);
    assert_int_equal(nx_mcp_manager_new(&loop, NULL, &c, &m), 0);

    /* the two resource tools, through the registry */
    assert_true(run_until(&loop, tool_exists, "mcp_everything_list_resources", 30000));
    assert_non_null(nx_tool_find("mcp_everything_read_resource"));
    assert_true(call_tool(&loop, "mcp_everything_list_resources", "{}", &a, 20000));
    assert_false(a.is_error);
    assert_non_null(strstr(a.text, "demo://resource/static/document/architecture.md (architecture.md, "
                                   "text/markdown)"));
    free(a.text);
    assert_true(call_tool(&loop, "mcp_everything_read_resource",
                          "{\"uri\":\"demo://resource/static/document/architecture.md\"}", &a, 20000));
    assert_false(a.is_error);
    assert_non_null(strstr(a.text, "[resource: demo://resource/static/document/architecture.md]\n"));
    assert_true(strlen(a.text) > 200);
    free(a.text);
    /* a uri the server does not have: its JSON-RPC error, as a tool error */
    assert_true(call_tool(&loop, "mcp_everything_read_resource", "{\"uri\":\"demo://nope\"}", &a, 20000));
    assert_true(a.is_error);
    free(a.text);
    /* the uri is required by the tool's schema */
    assert_true(call_tool(&loop, "mcp_everything_read_resource", "{}", &a, 20000));
    assert_true(a.is_error);
    free(a.text);

    /* prompts in the status */
    assert_true(run_until(&loop, has_prompts, m, 20000));
    st = server_status(m, "everything");
    prompts = json_object_get(st, "prompts");
    for (size_t i = 0; i < json_array_size(prompts); i++) {
        const json_t *p = json_array_get(prompts, i);

        if (strcmp(json_string_value(json_object_get(p, "name")), "args-prompt") == 0) {
            has_args_prompt = true;
            assert_string_equal(json_string_value(json_object_get(
                                    json_array_get(json_object_get(p, "arguments"), 0), "name")),
                                "city");
        }
    }
    assert_true(has_args_prompt);
    json_decref(st);
    finish_loop(&loop, m, 10000);

    /* the client API on its own: resources/list (paginated), resources/read, prompts/get */
    memset(&to, 0, sizeof to);
    to.name = "direct";
    to.grace_ms = 1000;
    assert_int_equal(nx_mcp_stdio_new(&loop, &sc, &to, &link), 0);
    memset(&co, 0, sizeof co);
    co.name = "direct";
    memset(&cb, 0, sizeof cb);
    assert_int_equal(nx_mcp_client_new(&loop, link, &co, &cb, NULL, &client), 0);
    assert_true(run_until(&loop, client_ready, client, 30000));
    nx_mcp_client_list(client, "resources/list", "resources", 20000, on_got, &g);
    assert_true(run_until(&loop, got_it, &g, 20000));
    assert_int_equal(g.rc, 0);
    assert_true(json_array_size(json_object_get(g.result, "resources")) >= 3);
    uri = json_string_value(
        json_object_get(json_array_get(json_object_get(g.result, "resources"), 0), "uri"));
    assert_non_null(uri);
    first = json_string(uri);
    json_decref(g.result);
    memset(&g, 0, sizeof g);
    nx_mcp_client_read_resource(client, json_string_value(first), 20000, on_got, &g);
    assert_true(run_until(&loop, got_it, &g, 20000));
    assert_int_equal(g.rc, 0);
    assert_string_equal(json_string_value(json_object_get(
                            json_array_get(json_object_get(g.result, "contents"), 0), "uri")),
                        json_string_value(first));
    json_decref(first);
    json_decref(g.result);
    memset(&g, 0, sizeof g);
    pargs = json_pack("{s:s, s:s}", "city", "Paris", "state", "Texas");
    nx_mcp_client_get_prompt(client, "args-prompt", pargs, 20000, on_got, &g);
    json_decref(pargs);
    assert_true(run_until(&loop, got_it, &g, 20000));
    assert_int_equal(g.rc, 0);
    assert_string_equal(json_string_value(json_object_get(json_object_get(json_array_get(
                            json_object_get(g.result, "messages"), 0), "content"), "text")),
                        "What's weather in Paris, Texas?");
    json_decref(g.result);
    memset(&g, 0, sizeof g);
    nx_mcp_client_get_prompt(client, "no-such-prompt", NULL, 20000, on_got, &g);
    assert_true(run_until(&loop, got_it, &g, 20000));
    assert_int_equal(g.rc, NX_EPROTO);
    nx_mcp_client_free(client);
    for (int i = 0; i < 1000 && uv_run(&loop, UV_RUN_ONCE); i++)
        ;
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* A child whose exit never reaches us (SIGCHLD blocked here, as a lost one would be): closing
 * still ends, after EOF, SIGTERM, SIGKILL and one more grace period, so a shutdown never hangs
 * on it. */
static void test_mcp_stdio_close_ends_without_the_childs_exit(void **state)
{
    uv_loop_t loop;
    struct nx_mcp_server_conf sc;
    struct nx_mcp_link_opts to;
    struct nx_mcp_link *link;
    char *args[] = {"60", NULL};
    sigset_t chld, old;
    struct timespec t0, t1, zero = {0, 0};
    int pid;

    (void)state;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    assert_int_equal(pthread_sigmask(SIG_BLOCK, &chld, &old), 0);
    assert_int_equal(uv_loop_init(&loop), 0);
    memset(&sc, 0, sizeof sc);
    sc.name = "sleeper";
    sc.command = "/bin/sleep";
    sc.args = args;
    memset(&to, 0, sizeof to);
    to.name = "sleeper";
    to.grace_ms = 50;
    assert_int_equal(nx_mcp_stdio_new(&loop, &sc, &to, &link), 0);
    assert_int_equal(link->vt->start(link), 0);
    pid = link->pid;
    assert_true(pid > 0);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    link->vt->close(link);
    while (uv_run(&loop, UV_RUN_ONCE))
        ;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    assert_true(t1.tv_sec - t0.tv_sec < 5); /* three grace periods and change, not forever */
    assert_int_equal(uv_loop_close(&loop), 0); /* every handle of the link is closed */
    assert_int_equal(waitpid(pid, NULL, 0), pid); /* it was killed: reaped here */
    sigtimedwait(&chld, NULL, &zero);          /* the SIGCHLD held back */
    assert_int_equal(pthread_sigmask(SIG_SETMASK, &old, NULL), 0);
}

/* ---- the scripted server --------------------------------------------------------------- */

static bool fake_failed(void *arg)
{
    struct nx_mcp_manager *m = arg;
    json_t *s = server_status(m, "old");
    const char *err = json_string_value(json_object_get(s, "last_error"));
    bool ok = err && strstr(err, "protocol version") != NULL;

    json_decref(s);
    return ok;
}

static long long error_code(const json_t *replies, const char *id)
{
    const json_t *e = json_object_get(json_object_get(replies, id), "error");

    return json_integer_value(json_object_get(e, "code"));
}

static void test_mcp_stdio_malformed_frames_and_server_requests(void **state)
{
    uv_loop_t loop;
    struct nx_mcp_manager *m = NULL;
    struct nx_mcp_server_conf sc[4];
    struct nx_mcp_conf c;
    char *args[] = {fake_path, NULL};
    char *env_keys[] = {"FAKE_BIG"}, *env_vals[] = {"100000"};
    char *old_keys[] = {"FAKE_VERSION"}, *old_vals[] = {"1999-01-01"};
    char *v1_vals[] = {"2024-11-05"}, *v2_vals[] = {"2025-03-26"};
    char hashed[80], longname[81];
    struct answer a = {0};
    json_t *replies, *r, *st;

    (void)state;
    assert_int_equal(uv_loop_init(&loop), 0);
    memset(sc, 0, sizeof sc);
    sc[0].name = "fake";
    sc[0].transport = NX_MCP_STDIO;
    sc[0].command = "python3";
    sc[0].args = args;
    sc[0].env = (struct nx_strmap){env_keys, env_vals, 1};
    sc[0].extra = json_loads("{\"roots\":[\"file:///srv/data\"]}", 0, NULL);
    sc[1] = sc[0];
    sc[1].name = "old";
    sc[1].env = (struct nx_strmap){old_keys, old_vals, 1};
    sc[2] = sc[1];
    sc[2].name = "v1";
    sc[2].env = (struct nx_strmap){old_keys, v1_vals, 1};
    sc[3] = sc[1];
    sc[3].name = "v2";
    sc[3].env = (struct nx_strmap){old_keys, v2_vals, 1};
    conf_init(&c, sc, 4);
    nx_mcp_manager_set_limits(64 * 1024, 60000); /* frames over 64 KiB are dropped */
    assert_int_equal(nx_mcp_manager_new(&loop, NULL, &c, &m), 0);
    json_decref(sc[0].extra);

    /* both pages of tools/list, with names made safe and a long one hash-truncated */
    assert_true(run_until(&loop, tool_exists, "mcp_fake_dotted_name_x", 20000));
    assert_non_null(nx_tool_find("mcp_fake_replies"));
    memset(longname, 'L', 80);
    longname[80] = '\0';
    nx_mcp_tool_name("fake", longname, 0, hashed, sizeof hashed);
    assert_int_equal(strlen(hashed), 64);
    assert_non_null(nx_tool_find(hashed));
    st = server_status(m, "fake");
    assert_string_equal(json_string_value(json_object_get(st, "protocol_version")), "2025-06-18");
    json_decref(st);
    /* bad JSON and a message without result or error were counted, the unknown id ignored */
    assert_true(session_int(m, "fake", "malformed") >= 2);
    assert_true(session_int(m, "fake", "unknown_replies") >= 1);
    assert_int_equal(session_int(m, "fake", "server_requests"), 5);

    /* what we answered to the server's requests */
    assert_true(call_tool(&loop, "mcp_fake_replies", "{}", &a, 20000));
    assert_false(a.is_error);
    replies = json_loads(a.text, 0, NULL);
    assert_non_null(replies);
    assert_true(json_is_object(json_object_get(json_object_get(replies, "p1"), "result")));
    r = json_object_get(json_object_get(json_object_get(replies, "r1"), "result"), "roots");
    assert_int_equal(json_array_size(r), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(r, 0), "uri")),
                        "file:///srv/data");
    assert_int_equal(error_code(replies, "s1"), -32601);
    /* elicitation is declined by default (not declared, but a clear answer beats -32601) */
    assert_string_equal(json_string_value(json_object_get(json_object_get(json_object_get(replies, "e1"),
                                                                          "result"), "action")), "decline");
    assert_int_equal(error_code(replies, "u1"), -32601);
    json_decref(replies);
    free(a.text);

    /* isError and non-text content */
    assert_true(call_tool(&loop, "mcp_fake_dotted_name_x", "{}", &a, 20000));
    assert_true(a.is_error);
    assert_string_equal(a.text, "[image: image/png, 3 bytes]\nt");
    free(a.text);
    /* a result that is no tool result is an error, not an empty success */
    assert_true(call_tool(&loop, "mcp_fake_nothing", "{}", &a, 20000));
    assert_true(a.is_error);
    assert_string_equal(a.text,
                        "MCP server \"fake\": tool \"nothing\" answered with no tool result (no content)");
    free(a.text);
    /* a NUL in a text is not its end */
    assert_true(call_tool(&loop, "mcp_fake_nul", "{}", &a, 20000));
    assert_false(a.is_error);
    assert_string_equal(a.text, "a\xEF\xBF\xBD" "b");
    free(a.text);

    /* a server that wants a version we do not speak is refused */
    assert_true(run_until(&loop, fake_failed, m, 20000));
    assert_null(nx_tool_find("mcp_old_replies"));
    /* the older versions we speak are accepted */
    assert_true(run_until(&loop, tool_exists, "mcp_v1_replies", 20000));
    assert_true(run_until(&loop, tool_exists, "mcp_v2_replies", 20000));
    st = server_status(m, "v1");
    assert_string_equal(json_string_value(json_object_get(st, "protocol_version")), "2024-11-05");
    json_decref(st);
    st = server_status(m, "v2");
    assert_string_equal(json_string_value(json_object_get(st, "protocol_version")), "2025-03-26");
    json_decref(st);

    finish_loop(&loop, m, 10000);
    assert_null(nx_tool_find("mcp_fake_replies"));
    assert_int_equal(uv_loop_close(&loop), 0);
    nx_mcp_manager_set_limits(0, 0);
}

static void test_mcp_stdio_missing_command_backs_off(void **state)
{
    uv_loop_t loop;
    struct nx_mcp_manager *m = NULL;
    struct nx_mcp_server_conf sc;
    struct nx_mcp_conf c;
    struct answer a = {0};

    (void)state;
    assert_int_equal(uv_loop_init(&loop), 0);
    memset(&sc, 0, sizeof sc);
    sc.name = "ghost";
    sc.transport = NX_MCP_STDIO;
    sc.command = "/nonexistent/mcp-server";
    conf_init(&c, &sc, 1);
    nx_mcp_manager_set_limits(0, 50);
    assert_int_equal(nx_mcp_manager_new(&loop, NULL, &c, &m), 0);
    run_until(&loop, never, NULL, 400);
    assert_true(status_int(m, "ghost", "restarts") >= 2); /* 50, 100, 200 ms ... */
    assert_true(status_int(m, "ghost", "restarts") <= 4);
    /* no tools, and an unknown tool is refused by the registry as usual */
    assert_true(call_tool(&loop, "mcp_ghost_x", "{}", &a, 1000));
    assert_true(a.is_error);
    free(a.text);
    finish_loop(&loop, m, 5000);
    assert_int_equal(uv_loop_close(&loop), 0);
    nx_mcp_manager_set_limits(0, 0);
}

static char warned[1024];

static void on_warn(const struct nx_log_line *line, void *udata)
{
    (void)udata;
    if (line->level == NX_LOG_WARN && strstr(line->msg, "glob"))
        snprintf(warned, sizeof warned, "%s", line->msg);
}

/* Servers web and web_admin: mcp_web_* in allowed_tools would take web_admin's tools too. */
static void test_mcp_server_names_that_start_one_another_are_warned_of(void **state)
{
    uv_loop_t loop;
    struct nx_mcp_manager *m = NULL;
    struct nx_mcp_server_conf sc[4];
    struct nx_mcp_conf c;
    static const char *const names[] = {"web_admin", "web", "webhooks", "api"};

    (void)state;
    assert_int_equal(uv_loop_init(&loop), 0);
    memset(sc, 0, sizeof sc);
    for (int i = 0; i < 4; i++) {
        sc[i].name = (char *)names[i];
        sc[i].transport = NX_MCP_STDIO;
        sc[i].command = "/nonexistent/mcp-server";
    }
    conf_init(&c, sc, 4);
    assert_int_equal(nx_log_sink_add(on_warn, NULL, NX_LOG_WARN), 0);
    assert_int_equal(nx_mcp_manager_new(&loop, NULL, &c, &m), 0);
    nx_log_sink_remove(on_warn, NULL);
    assert_string_equal(warned, "servers web and web_admin: the allowed_tools glob mcp_web_* matches "
                                "web_admin's tools too; name the tools, or rename a server so that "
                                "neither name starts the other");
    finish_loop(&loop, m, 5000);
    /* a name that differs by punctuation only: web.admin's tools are mcp_web_admin_... too */
    warned[0] = '\0';
    sc[0].name = (char *)"web.admin";
    assert_int_equal(nx_log_sink_add(on_warn, NULL, NX_LOG_WARN), 0);
    assert_int_equal(nx_mcp_manager_new(&loop, NULL, &c, &m), 0);
    nx_log_sink_remove(on_warn, NULL);
    assert_non_null(strstr(warned, "servers web and web.admin: the allowed_tools glob mcp_web_* matches"));
    finish_loop(&loop, m, 5000);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static bool deaf_restarted(void *arg)
{
    return status_int(arg, "deaf", "restarts") >= 1;
}

/* A call the server never answers fails at the server's call_timeout (and is cancelled); a
 * server that stops answering pings is restarted; its stderr lines are in our log; a tool outside
 * the caller's allowed_tools is refused before it reaches the server. */
static void test_mcp_stdio_timeouts_pings_stderr_allowed(void **state)
{
    uv_loop_t loop;
    struct nx_mcp_manager *m = NULL;
    struct nx_mcp_server_conf sc[2];
    struct nx_mcp_conf c;
    char *args[] = {fake_path, NULL};
    char *keys[] = {"FAKE_NO_PING"}, *vals[] = {"1"};
    char logpath[] = "/tmp/nx-mcp-log-XXXXXX", buf[65536];
    const char *const allowed[] = {"mcp_other_*", NULL};
    struct answer a = {0};
    enum nx_log_level old = nx_log_level();
    int fd = mkstemp(logpath);
    ssize_t n;

    (void)state;
    assert_true(fd >= 0);
    nx_log_set_fd(fd);
    nx_log_set_level(NX_LOG_INFO);
    assert_int_equal(uv_loop_init(&loop), 0);
    memset(sc, 0, sizeof sc);
    sc[0].name = "slow";
    sc[0].transport = NX_MCP_STDIO;
    sc[0].command = "python3";
    sc[0].args = args;
    sc[0].call_timeout_ms = 300;
    sc[1] = sc[0];
    sc[1].name = "deaf";
    sc[1].env = (struct nx_strmap){keys, vals, 1};
    conf_init(&c, sc, 2);
    c.idle_reap_interval_ms = 300;
    c.initialize_timeout_ms = 3000;
    nx_mcp_manager_set_limits(0, 100);
    assert_int_equal(nx_mcp_manager_new(&loop, NULL, &c, &m), 0);
    assert_true(run_until(&loop, tool_exists, "mcp_slow_slow", 20000));

    assert_true(call_tool(&loop, "mcp_slow_slow", "{}", &a, 20000));
    assert_true(a.is_error);
    assert_non_null(strstr(a.text, "did not answer in time"));
    free(a.text);
    assert_true(session_int(m, "slow", "cancels_sent") >= 1);

    memset(&a, 0, sizeof a);
    test_ctx.loop = &loop;
    nx_tool_invoke(&test_ctx, allowed, "mcp_slow_replies", NULL, on_answer, &a);
    assert_true(run_until(&loop, answered, &a, 5000));
    assert_true(a.is_error);
    free(a.text);

    assert_true(run_until(&loop, deaf_restarted, m, 20000));
    assert_int_equal(status_int(m, "slow", "restarts"), 0); /* it answers its pings */

    finish_loop(&loop, m, 10000);
    assert_int_equal(uv_loop_close(&loop), 0);
    nx_mcp_manager_set_limits(0, 0);
    nx_log_set_fd(2);
    nx_log_set_level(old);
    n = pread(fd, buf, sizeof buf - 1, 0);
    close(fd);
    unlink(logpath);
    assert_true(n > 0);
    buf[n] = '\0';
    assert_non_null(strstr(buf, "server deaf: stderr: fake server up"));
    assert_non_null(strstr(buf, "server deaf is down"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mcp_stdio_against_server_everything),
        cmocka_unit_test(test_mcp_stdio_resources_and_prompts),
        cmocka_unit_test(test_mcp_stdio_malformed_frames_and_server_requests),
        cmocka_unit_test(test_mcp_stdio_missing_command_backs_off),
        cmocka_unit_test(test_mcp_server_names_that_start_one_another_are_warned_of),
        cmocka_unit_test(test_mcp_stdio_close_ends_without_the_childs_exit),
        cmocka_unit_test(test_mcp_stdio_timeouts_pings_stderr_allowed),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
