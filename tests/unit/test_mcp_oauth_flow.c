#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/buf.h"
#include "core/log.h"
#include "http/client.h"
#include "mcp/mcp.h"
#include "tools/tool.h"
#include "mcp_fixture.h"

/* The OAuth client inside the manager, against a scripted python server that is both the MCP
 * server and its authorization server: a 401 leads through protected resource metadata,
 * authorization server metadata, dynamic registration, the authorization redirect and the token
 * endpoint (client_secret_post) to a token; the token goes to <data>/mcp/oauth-<server>.json
 * (0600); when the server revokes it the refresh token gets a new one without a second
 * authorization; a new manager reuses the stored token. When the resource names another
 * authorization server between two runs, the client registered with the first one is never sent
 * to the second: the client registers there anew. The conformance suite covers the variants
 * (test_mcp_conformance.py). */

static const char oauth_py[] =
    "import base64, json, sys, urllib.parse\n"
    "LOGIN = sys.argv[1:] == ['login']  # /authorize shows a login page: an operator approves\n"
    "from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer\n"
    "# Two authorization servers on one port: /as (its metadata names the origin as issuer, as\n"
    "# path-based servers often do) and /as2; the resource names st['as'] (the `switch` tool changes it).\n"
    "ASES = {'/as': ('cid', 'csec', 'rt1'), '/as2': ('cid2', 'csec2', 'rt2')}\n"
    "st = {'authz': 0, 'grants': [], 'valid': [], 'n': 0, 'resource': [], 'scope': [], 'as': '/as',\n"
    "      'reg': {'/as': 0, '/as2': 0}, 'seen': {'/as': [], '/as2': []}}\n"
    "def as_of(path):\n"
    "    return next((a for a in ASES if path.startswith(a + '/')), None)\n"
    "class H(BaseHTTPRequestHandler):\n"
    "    protocol_version = 'HTTP/1.1'\n"
    "    def log_message(self, *a): pass\n"
    "    def reply(self, code, obj=None, headers=()):\n"
    "        b = json.dumps(obj).encode() if obj is not None else b''\n"
    "        self.send_response(code)\n"
    "        for k, v in headers: self.send_header(k, v)\n"
    "        self.send_header('Content-Type', 'application/json')\n"
    "        self.send_header('Content-Length', str(len(b)))\n"
    "        self.end_headers(); self.wfile.write(b)\n"
    "    def base(self): return 'http://127.0.0.1:%d' % self.server.server_address[1]\n"
    "    def do_GET(self):\n"
    "        u = urllib.parse.urlparse(self.path)\n"
    "        if u.path == '/.well-known/oauth-protected-resource/mcp':\n"
    "            return self.reply(200, {'resource': self.base() + '/mcp', 'scopes_supported': ['read'],\n"
    "                                    'authorization_servers': [self.base() + st['as']]})\n"
    "        for a in ASES:\n"
    "            if u.path == '/.well-known/oauth-authorization-server' + a:\n"
    "                b = self.base() + a\n"
    "                return self.reply(200, {'issuer': self.base() if a == '/as' else b,\n"
    "                    'authorization_endpoint': b + '/authorize', 'token_endpoint': b + '/token',\n"
    "                    'registration_endpoint': b + '/register',\n"
    "                    'token_endpoint_auth_methods_supported': ['client_secret_post']})\n"
    "        a = as_of(u.path)\n"
    "        if a and u.path == a + '/authorize':\n"
    "            q = urllib.parse.parse_qs(u.query); st['authz'] += 1\n"
    "            st['seen'][a] += q.get('client_id', [])\n"
    "            st['resource'].append(q.get('resource', [None])[0])\n"
    "            st['scope'].append(q.get('scope', [None])[0])\n"
    "            if LOGIN: return self.reply(200, {'page': 'log in'})\n"
    "            loc = q['redirect_uri'][0] + '?code=c1&state=' + urllib.parse.quote(q['state'][0])\n"
    "            return self.reply(302, None, [('Location', loc)])\n"
    "        self.reply(405, {})\n"
    "    def do_POST(self):\n"
    "        body = self.rfile.read(int(self.headers.get('Content-Length', '0')))\n"
    "        u = urllib.parse.urlparse(self.path)\n"
    "        a = as_of(u.path)\n"
    "        if a:\n"
    "            cid, csec, rt = ASES[a]\n"
    "            basic = self.headers.get('Authorization', '')\n"
    "            if basic: st['seen'][a].append(base64.b64decode(basic.split()[-1]).decode())\n"
    "        if a and u.path == a + '/register':\n"
    "            st['reg'][a] += 1\n"
    "            return self.reply(201, {'client_id': cid, 'client_secret': csec,\n"
    "                                    'token_endpoint_auth_method': 'client_secret_post'})\n"
    "        if a and u.path == a + '/token':\n"
    "            f = urllib.parse.parse_qs(body.decode()); g = f['grant_type'][0]; st['grants'].append(g)\n"
    "            st['seen'][a] += f.get('client_id', []) + f.get('client_secret', [])\n"
    "            if f.get('client_id', [''])[0] != cid or f.get('client_secret', [''])[0] != csec:\n"
    "                return self.reply(401, {'error': 'invalid_client'})\n"
    "            if g == 'refresh_token' and f['refresh_token'][0] != rt:\n"
    "                return self.reply(400, {'error': 'invalid_grant'})\n"
    "            st['n'] += 1; tok = 'at%d' % st['n']; st['valid'].append(tok)\n"
    "            return self.reply(200, {'access_token': tok, 'token_type': 'Bearer', 'expires_in': 3600,\n"
    "                                    'refresh_token': rt, 'scope': 'read'})\n"
    "        if u.path != '/mcp': return self.reply(404, {})\n"
    "        auth = self.headers.get('Authorization', '')\n"
    "        if not auth.startswith('Bearer ') or auth[7:] not in st['valid']:\n"
    "            w = 'Bearer error=\"invalid_token\", resource_metadata=\"%s%s\"'\n"
    "            w = w % (self.base(), '/.well-known/oauth-protected-resource/mcp')\n"
    "            return self.reply(401, {'error': 'invalid_token'}, [('WWW-Authenticate', w)])\n"
    "        m = json.loads(body); meth, mid = m.get('method'), m.get('id')\n"
    "        if meth == 'initialize':\n"
    "            r = {'protocolVersion': '2025-06-18', 'capabilities': {'tools': {}},\n"
    "                 'serverInfo': {'name': 'o', 'version': '1'}}\n"
    "            return self.reply(200, {'jsonrpc': '2.0', 'id': mid, 'result': r})\n"
    "        if mid is None: return self.reply(202)\n"
    "        if meth == 'tools/list':\n"
    "            t = [{'name': 'state'}, {'name': 'expire'}, {'name': 'switch'}]\n"
    "            return self.reply(200, {'jsonrpc': '2.0', 'id': mid, 'result': {'tools': t}})\n"
    "        if meth == 'tools/call':\n"
    "            name = m['params']['name']\n"
    "            if name == 'expire': st['valid'] = []\n"
    "            if name == 'switch':  # the resource now trusts another AS, and only its tokens\n"
    "                st['as'] = m['params']['arguments']['to']; st['valid'] = []\n"
    "            return self.reply(200, {'jsonrpc': '2.0', 'id': mid, 'result': {'content': [\n"
    "                {'type': 'text', 'text': json.dumps(st, sort_keys=True)}]}})\n"
    "        self.reply(200, {'jsonrpc': '2.0', 'id': mid, 'result': {}})\n"
    "    def do_DELETE(self): self.reply(200, {})\n"
    "s = ThreadingHTTPServer(('127.0.0.1', 0), H)\n"
    "print('READY %d' % s.server_address[1], flush=True)\n"
    "s.serve_forever()\n";

struct peer {
    pid_t pid;
    int port;
    char path[256];
};

static struct peer peer; /* stopped by teardown even when an assertion fails */

static bool peer_start_mode(struct peer *p, const char *mode)
{
    int pipefd[2];
    char line[64] = {0};
    size_t n = 0;
    FILE *f;

    snprintf(p->path, sizeof p->path, "/tmp/nx-mcp-oauth-%d.py", (int)getpid());
    if (!(f = fopen(p->path, "w")))
        return false;
    fputs(oauth_py, f);
    fclose(f);
    if (pipe(pipefd) != 0)
        return false;
    if ((p->pid = fork()) == 0) {
        dup2(pipefd[1], 1);
        close(pipefd[0]);
        close(pipefd[1]);
        execl("/usr/bin/python3", "python3", p->path, mode, (char *)NULL);
        _exit(127);
    }
    close(pipefd[1]);
    while (n < sizeof line - 1) {
        struct pollfd pf = {.fd = pipefd[0], .events = POLLIN};

        if (poll(&pf, 1, 10000) <= 0 || read(pipefd[0], &line[n], 1) != 1 || line[n] == '\n')
            break;
        n++;
    }
    close(pipefd[0]);
    return sscanf(line, "READY %d", &p->port) == 1;
}

static bool peer_start(struct peer *p)
{
    return peer_start_mode(p, NULL);
}

static void peer_stop(struct peer *p)
{
    if (p->pid > 0) {
        kill(p->pid, SIGKILL);
        waitpid(p->pid, NULL, 0);
    }
    unlink(p->path);
}

/* Calls one of the server's tools and returns the state it answers with. */
static json_t *server_state(uv_loop_t *loop, const char *tool, const char *args)
{
    struct answer a = {0};
    json_t *st;

    assert_true(call_tool(loop, tool, args, &a, 20000));
    assert_false(a.is_error);
    st = json_loads(a.text, 0, NULL);
    free(a.text);
    assert_non_null(st);
    return st;
}

/* A manager with the server "o" at url (OAuth), its token file under data_dir. */
static struct nx_mcp_manager *start_unready(uv_loop_t *loop, struct nx_http_client *http, const char *url,
                                            const char *data_dir)
{
    struct nx_mcp_server_conf sc;
    struct nx_mcp_conf c;
    struct nx_mcp_manager *m = NULL;
    struct nx_mcp_host host = {.data_dir = data_dir};

    memset(&sc, 0, sizeof sc);
    sc.name = "o";
    sc.transport = NX_MCP_STREAMABLE_HTTP;
    sc.url = (char *)url;
    sc.extra = json_pack("{s:{s:s}}", "auth", "type", "oauth");
    memset(&c, 0, sizeof c);
    c.enabled = true;
    c.initialize_timeout_ms = 20000;
    c.call_timeout_ms = 20000;
    c.idle_reap_interval_ms = 600000;
    c.servers = &sc;
    c.n_servers = 1;
    assert_int_equal(nx_mcp_manager_new(loop, http, &c, &m), 0);
    nx_mcp_manager_set_host(m, &host);
    json_decref(sc.extra);
    return m;
}

/* The same, once it is authorized and has listed the server's tools. */
static struct nx_mcp_manager *start(uv_loop_t *loop, struct nx_http_client *http, const char *url,
                                    const char *data_dir)
{
    struct nx_mcp_manager *m = start_unready(loop, http, url, data_dir);
    assert_true(run_until(loop, tool_exists, "mcp_o_state", 20000));
    return m;
}

/* The end of a test: the client's calls finished, the loop closed, the token file and its
 * directories removed. */
static void finish(uv_loop_t *loop, struct nx_http_client *http, const char *dir)
{
    char path[256];

    for (int i = 0; i < 200 && nx_http_client_inflight(http) > 0; i++)
        run_until(loop, never, NULL, 20);
    nx_http_client_free(http);
    for (int i = 0; i < 100 && uv_run(loop, UV_RUN_NOWAIT); i++)
        ;
    assert_int_equal(uv_loop_close(loop), 0);
    snprintf(path, sizeof path, "%s/mcp/oauth-o.json", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/mcp", dir);
    rmdir(path);
    rmdir(dir);
}

static void test_mcp_oauth_code_flow_refresh_and_token_file(void **state)
{
    uv_loop_t loop;
    struct nx_http_client *http = NULL;
    struct nx_mcp_manager *m;
    struct peer *p = &peer;
    char url[128], dir[] = "/tmp/nx-mcp-oauth-XXXXXX", file[256], base[96];
    struct stat sb;
    json_t *st, *tok, *status;
    char *dump;

    (void)state;
    nx_log_set_level(getenv("NX_TEST_LOG") ? NX_LOG_DEBUG : NX_LOG_OFF);
    assert_true(peer_start(p));
    assert_non_null(mkdtemp(dir));
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(nx_http_client_new(&loop, NULL, &http), 0);
    snprintf(base, sizeof base, "http://127.0.0.1:%d", p->port);
    snprintf(url, sizeof url, "%s/mcp", base);
    m = start(&loop, http, url, dir);

    /* one authorization (code + PKCE), with resource and the PRM's scopes_supported */
    st = server_state(&loop, "mcp_o_state", "{}");
    assert_int_equal(json_integer_value(json_object_get(st, "authz")), 1);
    assert_string_equal(json_string_value(json_array_get(json_object_get(st, "resource"), 0)), url);
    assert_string_equal(json_string_value(json_array_get(json_object_get(st, "scope"), 0)), "read");
    assert_string_equal(json_string_value(json_array_get(json_object_get(st, "grants"), 0)),
                        "authorization_code");
    json_decref(st);
    snprintf(file, sizeof file, "%s/mcp/oauth-o.json", dir);
    assert_int_equal(stat(file, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0600);

    /* the token is revoked: the next call is answered after a refresh, with no new authorization */
    json_decref(server_state(&loop, "mcp_o_expire", "{}"));
    st = server_state(&loop, "mcp_o_state", "{}");
    assert_int_equal(json_integer_value(json_object_get(st, "authz")), 1);
    assert_string_equal(json_string_value(json_array_get(json_object_get(st, "grants"), 1)), "refresh_token");
    json_decref(st);
    tok = json_load_file(file, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(tok, "access_token")), "at2");
    assert_string_equal(json_string_value(json_object_get(tok, "refresh_token")), "rt1");
    json_decref(tok);

    /* the status tells the state, never a secret */
    status = nx_mcp_manager_status(m);
    dump = json_dumps(status, JSON_COMPACT);
    assert_non_null(strstr(dump, "\"state\":\"authorized\""));
    assert_null(strstr(dump, "at2"));
    assert_null(strstr(dump, "csec"));
    assert_null(strstr(dump, "rt1"));
    free(dump);
    json_decref(status);
    nx_mcp_manager_free(m);

    /* a new manager (a restart) uses the stored token: no registration, no authorization */
    m = start(&loop, http, url, dir);
    st = server_state(&loop, "mcp_o_state", "{}");
    assert_int_equal(json_integer_value(json_object_get(st, "authz")), 1);
    assert_int_equal(json_array_size(json_object_get(st, "grants")), 2);
    json_decref(st);
    nx_mcp_manager_free(m);
    finish(&loop, http, dir);
}

/* Info lines, as an operator would read them. */
static struct nx_buf logged = NX_BUF_INIT;

static void on_log(const struct nx_log_line *line, void *udata)
{
    (void)udata;
    nx_buf_printf(&logged, "%s: %s\n", line->component, line->msg);
}

static void test_mcp_oauth_new_authorization_server_gets_a_new_client(void **state)
{
    uv_loop_t loop;
    struct nx_http_client *http = NULL;
    struct nx_mcp_manager *m;
    struct peer *p = &peer;
    char url[128], dir[] = "/tmp/nx-mcp-oauth-XXXXXX", file[256], as2[128];
    json_t *st, *tok, *seen, *v;
    size_t i;

    (void)state;
    nx_log_set_level(getenv("NX_TEST_LOG") ? NX_LOG_DEBUG : NX_LOG_OFF);
    assert_int_equal(nx_log_sink_add(on_log, NULL, NX_LOG_INFO), 0);
    assert_true(peer_start(p));
    assert_non_null(mkdtemp(dir));
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(nx_http_client_new(&loop, NULL, &http), 0);
    snprintf(url, sizeof url, "http://127.0.0.1:%d/mcp", p->port);
    snprintf(as2, sizeof as2, "http://127.0.0.1:%d/as2/", p->port);
    snprintf(file, sizeof file, "%s/mcp/oauth-o.json", dir);

    /* first run: registered with /as (whose metadata names the origin as its issuer) */
    m = start(&loop, http, url, dir);
    st = server_state(&loop, "mcp_o_state", "{}");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(st, "reg"), "/as")), 1);
    json_decref(st);
    /* the resource now trusts /as2 only, and names it with a trailing slash */
    json_decref(server_state(&loop, "mcp_o_switch", "{\"to\": \"/as2/\"}"));
    nx_mcp_manager_free(m);

    /* second run: the stored client of /as goes nowhere near /as2, which registers its own */
    m = start(&loop, http, url, dir);
    st = server_state(&loop, "mcp_o_state", "{}");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(st, "reg"), "/as2")), 1);
    assert_int_equal(json_integer_value(json_object_get(st, "authz")), 2);
    /* every client credential /as2 was shown is its own */
    seen = json_object_get(json_object_get(st, "seen"), "/as2");
    assert_true(json_array_size(seen) > 0);
    json_array_foreach(seen, i, v) {
        assert_true(strcmp(json_string_value(v), "cid2") == 0 || strcmp(json_string_value(v), "csec2") == 0);
    }
    json_decref(st);
    tok = json_load_file(file, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(tok, "client_id")), "cid2");
    assert_string_equal(json_string_value(json_object_get(tok, "authorization_server")), as2);
    assert_string_equal(json_string_value(json_object_get(tok, "refresh_token")), "rt2");
    json_decref(tok);
    /* said once at info, without a secret */
    assert_non_null(strstr(nx_buf_cstr(&logged), "the authorization server is now"));
    assert_non_null(strstr(nx_buf_cstr(&logged), as2));
    assert_null(strstr(nx_buf_cstr(&logged), "csec"));
    assert_null(strstr(nx_buf_cstr(&logged), "rt1"));
    json_decref(server_state(&loop, "mcp_o_switch", "{\"to\": \"/as2\"}"));
    nx_mcp_manager_free(m);

    /* third run: /as2 spelled without the slash is the same server: the refresh token serves */
    m = start(&loop, http, url, dir);
    st = server_state(&loop, "mcp_o_state", "{}");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(st, "reg"), "/as2")), 1);
    assert_int_equal(json_integer_value(json_object_get(st, "authz")), 2);
    tok = json_object_get(st, "grants");
    assert_string_equal(json_string_value(json_array_get(tok, json_array_size(tok) - 1)), "refresh_token");
    json_decref(st);
    nx_mcp_manager_free(m);

    /* fourth run: a token file from before authorization_server was kept has the metadata's
     * issuer in its place, which may be the origin alone: the same server, nothing dropped */
    tok = json_load_file(file, 0, NULL);
    assert_non_null(tok);
    snprintf(as2, sizeof as2, "http://127.0.0.1:%d", p->port);
    json_object_del(tok, "authorization_server");
    json_object_del(tok, "access_token"); /* so that the client discovers the server again */
    json_object_set_new(tok, "issuer", json_string(as2));
    assert_int_equal(json_dump_file(tok, file, 0), 0);
    json_decref(tok);
    m = start(&loop, http, url, dir);
    st = server_state(&loop, "mcp_o_state", "{}");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(st, "reg"), "/as2")), 1);
    tok = json_object_get(st, "grants");
    assert_string_equal(json_string_value(json_array_get(tok, json_array_size(tok) - 1)), "refresh_token");
    json_decref(st);
    nx_mcp_manager_free(m);

    nx_log_sink_remove(on_log, NULL);
    nx_buf_cleanup(&logged);
    finish(&loop, http, dir);
}

static size_t count_of(const char *hay, const char *needle)
{
    size_t n = 0;
    for (const char *p = hay; (p = strstr(p, needle)); p++)
        n++;
    return n;
}

static bool authorizations_tried(void *arg)
{
    return count_of(nx_buf_cstr(&logged), "OAuth authorization request") +
               count_of(nx_buf_cstr(&logged), "OAuth still waits for the operator") >= *(size_t *)arg;
}

/* An authorization server that shows a login page: the client logs the URL for an operator and
 * tries again with backoff meanwhile. The operator approves the URL logged first, some tries
 * later, and writes where the browser landed to <token_file>.code: that code is exchanged. */
static void test_mcp_oauth_operator_approves_the_url_logged_first(void **state)
{
    uv_loop_t loop;
    struct nx_http_client *http = NULL;
    struct nx_mcp_manager *m = NULL;
    struct peer *p = &peer;
    char url[128], dir[] = "/tmp/nx-mcp-oauth-XXXXXX", file[256], st[64] = "";
    size_t tries = 3;

    (void)state;
    nx_log_set_level(getenv("NX_TEST_LOG") ? NX_LOG_DEBUG : NX_LOG_OFF);
    assert_int_equal(nx_log_sink_add(on_log, NULL, NX_LOG_DEBUG), 0);
    assert_true(peer_start_mode(p, "login"));
    assert_non_null(mkdtemp(dir));
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(nx_http_client_new(&loop, NULL, &http), 0);
    snprintf(url, sizeof url, "http://127.0.0.1:%d/mcp", p->port);
    m = start_unready(&loop, http, url, dir);

    assert_true(run_until(&loop, authorizations_tried, &tries, 20000));
    const char *first = strstr(nx_buf_cstr(&logged), "OAuth needs an operator: open ");
    assert_non_null(first);
    const char *s = strstr(first, "&state=");
    assert_non_null(s);
    s += 7;
    size_t n = strcspn(s, "& ");
    memcpy(st, s, n < sizeof st - 1 ? n : sizeof st - 1);
    assert_int_equal(count_of(nx_buf_cstr(&logged), "OAuth needs an operator"), 1); /* said once */
    snprintf(file, sizeof file, "%s/mcp/oauth-o.json.code", dir);
    FILE *f = fopen(file, "w");
    assert_non_null(f);
    fprintf(f, "http://127.0.0.1/callback?code=c1&state=%s\n", st);
    fclose(f);
    assert_true(run_until(&loop, tool_exists, "mcp_o_state", 20000));
    nx_mcp_manager_free(m);

    nx_log_sink_remove(on_log, NULL);
    nx_buf_cleanup(&logged);
    finish(&loop, http, dir);
}

static int teardown(void **state)
{
    (void)state;
    peer_stop(&peer);
    peer.pid = 0;
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_mcp_oauth_code_flow_refresh_and_token_file, teardown),
        cmocka_unit_test_teardown(test_mcp_oauth_new_authorization_server_gets_a_new_client, teardown),
        cmocka_unit_test_teardown(test_mcp_oauth_operator_approves_the_url_logged_first, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
