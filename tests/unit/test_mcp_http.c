#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <jansson.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/buf.h"
#include "core/log.h"
#include "http/client.h"
#include "mcp/mcp.h"
#include "tools/tool.h"
#include "mcp_fixture.h"

/* The MCP client over Streamable HTTP against the real server-everything (`streamableHttp`),
 * kept on 127.0.0.1 by a --require shim (it would bind every interface): initialize with a
 * session id, tools/list, calls answered as SSE, progress in the POST's stream, a cancel, and the
 * DELETE that ends the session at close (seen in the server's own log). */

static const char loopback_cjs[] =
    "const net = require('net'), orig = net.Server.prototype.listen, L = '127.0.0.1';\n"
    "net.Server.prototype.listen = function (...a) {\n"
    "  if (a.length === 0 || typeof a[0] === 'function') a.unshift(0);\n"
    "  if (typeof a[0] === 'number' || /^\\d+$/.test(String(a[0]))) { if (typeof a[1] === 'string') a[1] = L;"
    " else a.splice(1, 0, L); }\n"
    "  else if (a[0] && typeof a[0] === 'object' && a[0].path === undefined && a[0].fd === undefined &&"
    " !a[0]._handle) a[0] = { ...a[0], host: L };\n"
    "  return orig.apply(this, a);\n"
    "};\n";

struct peer {
    pid_t pid;
    int fd; /* its stdout + stderr */
    int port;
    struct nx_buf out;
    char shim[256];
};

static struct peer peer;

static int free_port(void)
{
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    int fd = socket(AF_INET, SOCK_STREAM, 0), port = -1;

    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}

/* Reads the peer's output until needle shows up or timeout_ms passes. */
static bool peer_wait_for(const char *needle, int timeout_ms)
{
    uint64_t deadline = nx_mono_ms() + (uint64_t)timeout_ms;
    char buf[4096];

    while (!strstr(nx_buf_cstr(&peer.out), needle) && nx_mono_ms() < deadline) {
        struct pollfd p = {.fd = peer.fd, .events = POLLIN};
        ssize_t n;

        if (poll(&p, 1, 50) <= 0)
            continue;
        if ((n = read(peer.fd, buf, sizeof buf)) <= 0)
            break;
        nx_buf_append(&peer.out, buf, (size_t)n);
    }
    return strstr(nx_buf_cstr(&peer.out), needle) != NULL;
}

static int setup(void **state)
{
    const char *src = getenv("NEXO_SOURCE_DIR");
    const char *peers = getenv("NEXO_NPM_PEERS");
    char bin[1024], port[16], opts[300], want[96];
    int pipefd[2];
    FILE *f;

    (void)state;
    nx_log_set_level(getenv("NX_TEST_LOG") ? NX_LOG_DEBUG : NX_LOG_OFF);
    if (peers)
        snprintf(bin, sizeof bin, "%s/node_modules/.bin/mcp-server-everything", peers);
    else
        snprintf(bin, sizeof bin, "%s/build/npm-peers/node_modules/.bin/mcp-server-everything",
                 src ? src : ".");
    if (access(bin, X_OK) != 0) {
        fprintf(stderr, "%s missing: run scripts/install-npm-peers.sh\n", bin);
        return -1;
    }
    snprintf(peer.shim, sizeof peer.shim, "/tmp/nx-mcp-loopback-%d.cjs", (int)getpid());
    if (!(f = fopen(peer.shim, "w")))
        return -1;
    fputs(loopback_cjs, f);
    fclose(f);
    nx_buf_init(&peer.out);
    for (int attempt = 0; attempt < 3; attempt++) {
        if ((peer.port = free_port()) <= 0 || pipe(pipefd) != 0)
            return -1;
        snprintf(port, sizeof port, "%d", peer.port);
        snprintf(opts, sizeof opts, "--require %s", peer.shim);
        if ((peer.pid = fork()) == 0) {
            setpgid(0, 0);
            dup2(pipefd[1], 1);
            dup2(pipefd[1], 2);
            close(pipefd[0]);
            close(pipefd[1]);
            setenv("PORT", port, 1);
            setenv("NODE_OPTIONS", opts, 1);
            execl(bin, bin, "streamableHttp", (char *)NULL);
            _exit(127);
        }
        close(pipefd[1]);
        peer.fd = pipefd[0];
        snprintf(want, sizeof want, "listening on port %d", peer.port);
        if (peer_wait_for(want, 30000))
            return 0;
        fprintf(stderr, "server-everything did not start: %s\n", nx_buf_cstr(&peer.out));
        kill(-peer.pid, SIGKILL);
        waitpid(peer.pid, NULL, 0);
        close(peer.fd);
        nx_buf_reset(&peer.out);
    }
    return -1;
}

static int teardown(void **state)
{
    (void)state;
    if (peer.pid > 0) {
        kill(-peer.pid, SIGTERM);
        waitpid(peer.pid, NULL, 0);
        close(peer.fd);
    }
    unlink(peer.shim);
    nx_buf_cleanup(&peer.out);
    return 0;
}

struct progress_wait {
    struct nx_mcp_manager *m;
    long long at_least;
};

static bool progress_reached(void *arg)
{
    struct progress_wait *w = arg;

    return status_int(w->m, "web", "progress_notifications") >= w->at_least;
}

static bool asked_roots(void *arg)
{
    return session_int(arg, "web", "server_requests") >= 1;
}

static void test_mcp_http_against_server_everything(void **state)
{
    uv_loop_t loop;
    struct nx_http_client *http = NULL;
    struct nx_mcp_manager *m = NULL;
    struct nx_mcp_server_conf sc;
    struct nx_mcp_conf c;
    char url[128], *hk[] = {"X-Nexo-Test"}, *hv[] = {"yes"};
    struct answer a = {0}, cancelled = {0};
    struct progress_wait pw;
    struct nx_tool_call *call;
    json_t *st, *args;
    long long before, cancels;
    uint64_t deadline;

    (void)state;
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(nx_http_client_new(&loop, NULL, &http), 0);
    snprintf(url, sizeof url, "http://127.0.0.1:%d/mcp", peer.port);
    memset(&sc, 0, sizeof sc);
    sc.name = "web";
    sc.transport = NX_MCP_STREAMABLE_HTTP;
    sc.url = url;
    sc.headers = (struct nx_strmap){hk, hv, 1};
    sc.extra = json_loads("{\"roots\":[\"file:///srv/data\"]}", 0, NULL); /* declares roots */
    memset(&c, 0, sizeof c);
    c.enabled = true;
    c.initialize_timeout_ms = 20000;
    c.call_timeout_ms = 20000;
    c.idle_reap_interval_ms = 60000;
    c.servers = &sc;
    c.n_servers = 1;
    assert_int_equal(nx_mcp_manager_new(&loop, http, &c, &m), 0);
    json_decref(sc.extra);

    assert_true(run_until(&loop, tool_exists, "mcp_web_echo", 20000));
    assert_true(peer_wait_for("Session initialized with ID", 5000));
    /* server-everything asks for roots/list after notifications/initialized, outside any request:
     * only the standalone GET stream can carry that */
    assert_true(run_until(&loop, asked_roots, m, 10000));
    st = server_status(m, "web");
    assert_string_equal(json_string_value(json_object_get(st, "protocol_version")), "2025-11-25");
    assert_string_equal(json_string_value(json_object_get(st, "transport")), "streamable_http");
    json_decref(st);

    assert_true(call_tool(&loop, "mcp_web_get-sum", "{\"a\":20,\"b\":22}", &a, 20000));
    assert_false(a.is_error);
    assert_non_null(strstr(a.text, "42"));
    free(a.text);
    assert_true(call_tool(&loop, "mcp_web_echo", "{\"message\":\"over http\"}", &a, 20000));
    assert_non_null(strstr(a.text, "over http"));
    free(a.text);

    /* progress arrives in the POST's SSE stream before the answer */
    before = status_int(m, "web", "progress_notifications");
    assert_true(call_tool(&loop, "mcp_web_trigger-long-running-operation", "{\"duration\":1,\"steps\":3}",
                          &a, 20000));
    assert_false(a.is_error);
    assert_non_null(strstr(a.text, "Long running operation completed"));
    free(a.text);
    assert_true(status_int(m, "web", "progress_notifications") >= before + 3);

    /* cancelled midway */
    cancels = session_int(m, "web", "cancels_sent");
    pw.m = m;
    pw.at_least = status_int(m, "web", "progress_notifications") + 1;
    args = json_loads("{\"duration\":10,\"steps\":50}", 0, NULL);
    call = nx_tool_invoke(&test_ctx, NULL, "mcp_web_trigger-long-running-operation", args, on_answer,
                          &cancelled);
    json_decref(args);
    assert_non_null(call);
    assert_true(run_until(&loop, progress_reached, &pw, 20000));
    nx_tool_cancel(call);
    assert_int_equal(session_int(m, "web", "cancels_sent"), cancels + 1);
    run_until(&loop, never, NULL, 500);
    assert_int_equal(cancelled.calls, 0);
    assert_true(call_tool(&loop, "mcp_web_echo", "{\"message\":\"still here\"}", &a, 20000));
    assert_non_null(strstr(a.text, "still here"));
    free(a.text);

    /* close: DELETE ends the session */
    nx_mcp_manager_free(m);
    deadline = nx_mono_ms() + 5000;
    while (nx_http_client_inflight(http) > 0 && nx_mono_ms() < deadline)
        run_until(&loop, never, NULL, 20);
    assert_int_equal(nx_http_client_inflight(http), 0);
    assert_true(peer_wait_for("Received session termination request", 5000));
    assert_null(nx_tool_find("mcp_web_echo"));
    nx_http_client_free(http);
    for (int i = 0; i < 100 && uv_run(&loop, UV_RUN_NOWAIT); i++)
        ;
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* A server that is not there: initialize fails, the server backs off, calls fail cleanly. */
static void test_mcp_http_unreachable_backs_off(void **state)
{
    uv_loop_t loop;
    struct nx_http_client *http = NULL;
    struct nx_mcp_manager *m = NULL;
    struct nx_mcp_server_conf sc;
    struct nx_mcp_conf c;
    char url[128];
    json_t *st;

    (void)state;
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(nx_http_client_new(&loop, NULL, &http), 0);
    snprintf(url, sizeof url, "http://127.0.0.1:%d/mcp", free_port());
    memset(&sc, 0, sizeof sc);
    sc.name = "nowhere";
    sc.transport = NX_MCP_STREAMABLE_HTTP;
    sc.url = url;
    memset(&c, 0, sizeof c);
    c.enabled = true;
    c.initialize_timeout_ms = 2000;
    c.call_timeout_ms = 2000;
    c.servers = &sc;
    c.n_servers = 1;
    nx_mcp_manager_set_limits(0, 50);
    assert_int_equal(nx_mcp_manager_new(&loop, http, &c, &m), 0);
    run_until(&loop, never, NULL, 400);
    st = server_status(m, "nowhere");
    assert_true(json_integer_value(json_object_get(st, "restarts")) >= 1);
    assert_string_not_equal(json_string_value(json_object_get(st, "state")), "ready");
    assert_non_null(json_string_value(json_object_get(st, "last_error")));
    json_decref(st);
    nx_mcp_manager_free(m);
    nx_http_client_free(http);
    for (int i = 0; i < 100 && uv_run(&loop, UV_RUN_NOWAIT); i++)
        ;
    assert_int_equal(uv_loop_close(&loop), 0);
    nx_mcp_manager_set_limits(0, 0);
}

/* ---- a scripted Streamable HTTP server (python3) ---------------------------------------- */

/* It wants `Authorization: Bearer tok`, gives a session (an id of 300 characters, which every
 * later POST must carry whole: the spec sets no length), and on the first GET sends a
 * tools/list_changed (event id g2, retry 100) and closes the stream: the client must list again
 * (now two tools) and reopen the GET with Last-Event-ID: g2. Later GETs get a priming event
 * (an id, no data) with retry: 0 and are closed: a loop the client must not spin in. Tool
 * `state` answers what it saw. */
static const char fake_http_py[] =
    "import json, sys, time, threading\n"
    "from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer\n"
    "st = {'gets': 0, 'last_ids': [], 'auth': [], 'changed': False}\n"
    "SID = 'S' + 'x' * 299\n"
    "class H(BaseHTTPRequestHandler):\n"
    "    protocol_version = 'HTTP/1.1'\n"
    "    def log_message(self, *a): pass\n"
    "    def reply(self, code, obj=None, sid=True):\n"
    "        b = json.dumps(obj).encode() if obj is not None else b''\n"
    "        self.send_response(code)\n"
    "        if sid: self.send_header('Mcp-Session-Id', SID)\n"
    "        self.send_header('Content-Type', 'application/json')\n"
    "        self.send_header('Content-Length', str(len(b)))\n"
    "        self.end_headers(); self.wfile.write(b)\n"
    "    def do_POST(self):\n"
    "        m = json.loads(self.rfile.read(int(self.headers['Content-Length'])))\n"
    "        st['auth'].append(self.headers.get('Authorization'))\n"
    "        if self.headers.get('Authorization') != 'Bearer tok': return self.reply(401, {})\n"
    "        meth, mid = m.get('method'), m.get('id')\n"
    "        if meth != 'initialize' and self.headers.get('Mcp-Session-Id') != SID:\n"
    "            return self.reply(404, {}, sid=False)\n"
    "        if meth == 'initialize':\n"
    "            r = {'protocolVersion': '2025-06-18', 'capabilities': {'tools': {'listChanged': True}},\n"
    "                 'serverInfo': {'name': 'f', 'version': '1'}}\n"
    "            return self.reply(200, {'jsonrpc': '2.0', 'id': mid, 'result': r})\n"
    "        if mid is None or meth is None: return self.reply(202)\n"
    "        if meth == 'tools/list':\n"
    "            t = [{'name': 'state'}, {'name': 'polled'}]\n"
    "            t += [{'name': 'second'}] if st['changed'] else []\n"
    "            return self.reply(200, {'jsonrpc': '2.0', 'id': mid, 'result': {'tools': t}})\n"
    "        if meth == 'tools/call' and m['params']['name'] == 'polled':\n"
    "            st['t0'] = time.time(); st['pmid'] = mid\n"
    "            return self.sse(b'id: c0\\nretry: 300\\ndata: \\n\\n')\n"
    "        if meth == 'tools/call':\n"
    "            return self.reply(200, {'jsonrpc': '2.0', 'id': mid, 'result': {'content': [\n"
    "                {'type': 'text', 'text': json.dumps(st, sort_keys=True)}]}})\n"
    "        self.reply(200, {'jsonrpc': '2.0', 'id': mid, 'result': {}})\n"
    "    def sse(self, chunk):\n"
    "        self.send_response(200)\n"
    "        self.send_header('Content-Type', 'text/event-stream')\n"
    "        self.send_header('Connection', 'close')\n"
    "        self.end_headers(); self.wfile.write(chunk); self.wfile.flush()\n"
    "        self.close_connection = True\n"
    "    def do_GET(self):\n"
    "        lid = self.headers.get('Last-Event-ID') or ''\n"
    "        if lid.startswith('c'):  # the polled call: priming events until 4 s, then the answer\n"
    "            n = int(lid[1:]) + 1; st['polls'] = n\n"
    "            if time.time() - st['t0'] < 4:\n"
    "                return self.sse(b'id: c%d\\nretry: 300\\ndata: \\n\\n' % n)\n"
    "            r = {'jsonrpc': '2.0', 'id': st['pmid'], 'result': {'content': [\n"
    "                {'type': 'text', 'text': 'answered after %d polls' % n}]}}\n"
    "            ev = 'id: c%d\\nevent: message\\ndata: %s\\n\\n' % (n, json.dumps(r))\n"
    "            return self.sse(ev.encode())\n"
    "        st['gets'] += 1\n"
    "        st['last_ids'].append(self.headers.get('Last-Event-ID'))\n"
    "        self.send_response(200)\n"
    "        self.send_header('Content-Type', 'text/event-stream')\n"
    "        self.send_header('Connection', 'close')\n"
    "        self.end_headers()\n"
    "        if st['gets'] == 1:\n"
    "            st['changed'] = True\n"
    "            self.wfile.write(b'id: g1\\nretry: 100\\ndata: \\n\\n')\n"
    "            n = {'jsonrpc': '2.0', 'method': 'notifications/tools/list_changed'}\n"
    "            self.wfile.write(('event: message\\nid: g2\\ndata: ' + json.dumps(n) + '\\n\\n').encode())\n"
    "            self.wfile.flush(); return\n"
    "        self.wfile.write(b'id: p%d\\nretry: 0\\ndata: \\n\\n' % st['gets'])\n"
    "        self.wfile.flush()\n"
    "    def do_DELETE(self): self.reply(200, {})\n"
    "s = ThreadingHTTPServer(('127.0.0.1', 0), H)\n"
    "print('READY %d' % s.server_address[1], flush=True)\n"
    "s.serve_forever()\n";

struct fake_peer {
    pid_t pid;
    int port;
    char path[256];
};

/* The test's scripted server: stopped by the test's teardown, which cmocka runs even when an
 * assertion ends the test early, so that no python process outlives a failed run. */
static struct fake_peer fake;

static bool fake_start(struct fake_peer *fp)
{
    int pipefd[2];
    char line[64] = {0};
    size_t n = 0;
    FILE *f;

    snprintf(fp->path, sizeof fp->path, "/tmp/nx-mcp-fake-http-%d.py", (int)getpid());
    if (!(f = fopen(fp->path, "w")))
        return false;
    fputs(fake_http_py, f);
    fclose(f);
    if (pipe(pipefd) != 0)
        return false;
    if ((fp->pid = fork()) == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* nor a test binary killed outright */
        dup2(pipefd[1], 1);
        close(pipefd[0]);
        close(pipefd[1]);
        execl("/usr/bin/python3", "python3", fp->path, (char *)NULL);
        _exit(127);
    }
    close(pipefd[1]);
    while (n < sizeof line - 1) {
        struct pollfd p = {.fd = pipefd[0], .events = POLLIN};

        if (poll(&p, 1, 10000) <= 0 || read(pipefd[0], &line[n], 1) != 1 || line[n] == '\n')
            break;
        n++;
    }
    close(pipefd[0]);
    return sscanf(line, "READY %d", &fp->port) == 1;
}

static int fake_stop(void **state)
{
    (void)state;
    if (fake.pid > 0) {
        kill(fake.pid, SIGKILL);
        waitpid(fake.pid, NULL, 0);
    }
    if (fake.path[0])
        unlink(fake.path);
    memset(&fake, 0, sizeof fake);
    return 0;
}

static void test_mcp_http_standalone_stream_and_bearer(void **state)
{
    uv_loop_t loop;
    struct nx_http_client *http = NULL;
    struct nx_mcp_manager *m = NULL;
    struct nx_mcp_server_conf sc;
    struct nx_mcp_conf c;
    struct answer a = {0};
    char url[128];
    json_t *seen, *ids;

    (void)state;
    assert_true(fake_start(&fake));
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(nx_http_client_new(&loop, NULL, &http), 0);
    snprintf(url, sizeof url, "http://127.0.0.1:%d/mcp", fake.port);
    memset(&sc, 0, sizeof sc);
    sc.name = "fake";
    sc.transport = NX_MCP_STREAMABLE_HTTP;
    sc.url = url;
    sc.extra = json_pack("{s:s}", "bearer", "tok");
    memset(&c, 0, sizeof c);
    c.enabled = true;
    c.initialize_timeout_ms = 10000;
    c.call_timeout_ms = 10000;
    c.idle_reap_interval_ms = 60000;
    c.servers = &sc;
    c.n_servers = 1;
    assert_int_equal(nx_mcp_manager_new(&loop, http, &c, &m), 0);
    json_decref(sc.extra);

    /* list_changed came over the GET stream: listed again, the second tool is there */
    assert_true(run_until(&loop, tool_exists, "mcp_fake_second", 10000));
    /* the stream was reopened after retry: 100 ms, with Last-Event-ID: g2 */
    for (int i = 0; i < 100; i++) {
        assert_true(call_tool(&loop, "mcp_fake_state", "{}", &a, 10000));
        assert_false(a.is_error);
        seen = json_loads(a.text, 0, NULL);
        free(a.text);
        assert_non_null(seen);
        if (json_integer_value(json_object_get(seen, "gets")) >= 2)
            break;
        json_decref(seen);
        seen = NULL;
        run_until(&loop, never, NULL, 50);
    }
    assert_non_null(seen);
    ids = json_object_get(seen, "last_ids");
    assert_true(json_is_null(json_array_get(ids, 0)));
    assert_string_equal(json_string_value(json_array_get(ids, 1)), "g2");
    assert_string_equal(json_string_value(json_array_get(json_object_get(seen, "auth"), 0)), "Bearer tok");
    json_decref(seen);
    /* GETs that bring nothing wait longer each time (250 ms, 500 ms, 1 s, ...), retry: 0 or not */
    run_until(&loop, never, NULL, 1500);
    assert_true(call_tool(&loop, "mcp_fake_state", "{}", &a, 10000));
    seen = json_loads(a.text, 0, NULL);
    free(a.text);
    assert_non_null(seen);
    assert_in_range(json_integer_value(json_object_get(seen, "gets")), 3, 6);
    json_decref(seen);
    /* a call the server answers by being polled (a priming event, then GETs with Last-Event-ID
     * that bring new ids and no data for 4 s) is still answered */
    assert_true(call_tool(&loop, "mcp_fake_polled", "{}", &a, 20000));
    assert_false(a.is_error);
    assert_non_null(strstr(a.text, "answered after"));
    free(a.text);

    nx_mcp_manager_free(m);
    for (int i = 0; i < 200 && nx_http_client_inflight(http) > 0; i++)
        run_until(&loop, never, NULL, 20);
    assert_int_equal(nx_http_client_inflight(http), 0);
    nx_http_client_free(http);
    for (int i = 0; i < 100 && uv_run(&loop, UV_RUN_NOWAIT); i++)
        ;
    assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mcp_http_against_server_everything),
        cmocka_unit_test(test_mcp_http_unreachable_backs_off),
        cmocka_unit_test_teardown(test_mcp_http_standalone_stream_and_bearer, fake_stop),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
