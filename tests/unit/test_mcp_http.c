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
    memset(&c, 0, sizeof c);
    c.enabled = true;
    c.initialize_timeout_ms = 20000;
    c.call_timeout_ms = 20000;
    c.idle_reap_interval_ms = 60000;
    c.servers = &sc;
    c.n_servers = 1;
    assert_int_equal(nx_mcp_manager_new(&loop, http, &c, &m), 0);

    assert_true(run_until(&loop, tool_exists, "mcp_web_echo", 20000));
    assert_true(peer_wait_for("Session initialized with ID", 5000));
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mcp_http_against_server_everything),
        cmocka_unit_test(test_mcp_http_unreachable_backs_off),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
