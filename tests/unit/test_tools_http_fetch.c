#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <arpa/inet.h>
#include <jansson.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "core/clock.h"
#include "core/error.h"
#include "core/log.h"
#include "http/client.h"
#include "tools/internal.h"
#include "tools/tool.h"
#include "test_support.h"

/* http_fetch against tests/tools/http_peer.py on 127.0.0.1: the allowlist, names that resolve
 * to loopback, redirects (to a host not allowed, to a private address, relative, too many),
 * the response cap, POST and headers, cancel; and the HTTP client's `resolve` pin. */

static struct ts_child g_peer = TS_CHILD_INIT;
static const char *const g_localhost[] = {"localhost", NULL};

static int group_setup(void **state)
{
    (void)state;
    nx_log_set_level(NX_LOG_OFF);
    return ts_spawn_py(&g_peer, "tools/http_peer.py");
}

static int group_teardown(void **state)
{
    (void)state;
    ts_kill(&g_peer);
    return 0;
}

/* ---- helpers ------------------------------------------------------------------------------ */

struct env {
    uv_loop_t loop;
    struct nx_http_client *http;
    struct nx_tool_ctx ctx;
};

/* Runs the loop until *count >= want (count NULL: for timeout_ms). */
static void run_until(uv_loop_t *loop, const int *count, int want, uint64_t timeout_ms)
{
    ts_run_until_count(loop, count, want, timeout_ms);
}

static int setup(void **state)
{
    struct env *e = calloc(1, sizeof *e);

    if (uv_loop_init(&e->loop) != 0 || nx_http_client_new(&e->loop, NULL, &e->http) != 0)
        return -1;
    e->ctx.loop = &e->loop;
    e->ctx.http = e->http;
    e->ctx.agent_id = "fetcher";
    *state = e;
    return 0;
}

static int teardown(void **state)
{
    struct env *e = *state;

    nx_http_fetch_set_addr_check(NULL);
    nx_http_client_free(e->http);
    assert_int_equal(ts_loop_finish(&e->loop), 0);
    free(e);
    return 0;
}

/* Invokes http_fetch with args (stolen) and waits for its answer. */
static void fetch(struct env *e, json_t *args, struct ts_answer *a)
{
    memset(a, 0, sizeof *a);
    nx_tool_invoke(&e->ctx, NULL, "http_fetch", args, ts_on_answer, a);
    run_until(&e->loop, &a->calls, 1, 10000);
    assert_int_equal(a->calls, 1);
    json_decref(args);
}

static json_t *get(const char *host, const char *path)
{
    char url[512];

    ts_url(url, sizeof url, host, g_peer.port, path);
    return json_pack("{s:s}", "url", url);
}

/* The agent may reach the hosts in list (NULL: none), and private addresses or not. */
static void allow_hosts(struct env *e, const char *const *list, bool private_ok)
{
    e->ctx.outbound_allowlist = list;
    e->ctx.allow_private_addresses = private_ok;
}

/* The answer is a success (printed when it is not). */
static void expect_ok(const struct ts_answer *a)
{
    if (a->is_error)
        print_message("answer: %s\n", a->text);
    assert_false(a->is_error);
}

/* The answer is an error that contains needle (NULL: any error). */
static void expect_error(const struct ts_answer *a, const char *needle)
{
    assert_true(a->is_error);
    if (needle)
        assert_non_null(strstr(a->text, needle));
}

/* 127.0.0.1 counts as public; every other address as the real check says. */
static bool only_127_0_0_1_public(const struct sockaddr *sa)
{
    const struct sockaddr_in *in = (const struct sockaddr_in *)(const void *)sa;

    if (sa->sa_family == AF_INET && ntohl(in->sin_addr.s_addr) == 0x7f000001)
        return false;
    return nx_sandbox_addr_is_private(sa);
}

/* ---- tests -------------------------------------------------------------------------------- */

static void test_fetch_refuses_without_allowlist(void **state)
{
    struct env *e = *state;
    struct ts_answer a;

    allow_hosts(e, NULL, true);
    fetch(e, get("127.0.0.1", "/json"), &a);
    expect_error(&a, "no outbound_allowlist");
}

static void test_fetch_refuses_host_not_in_allowlist(void **state)
{
    struct env *e = *state;
    const char *const allow[] = {"example.com", "*.example.org", NULL};
    struct ts_answer a;

    allow_hosts(e, allow, true);
    fetch(e, get("127.0.0.1", "/json"), &a);
    expect_error(&a, NULL);
    assert_string_equal(a.text, "http_fetch refused: host \"127.0.0.1\" is not in this agent's "
                                "outbound_allowlist");
    fetch(e, get("localhost", "/json"), &a);
    expect_error(&a, "not in this agent's outbound_allowlist");
}

static void test_fetch_refuses_name_resolving_to_loopback(void **state)
{
    struct env *e = *state;
    struct ts_answer a;

    allow_hosts(e, g_localhost, false);
    fetch(e, get("localhost", "/json"), &a);
    expect_error(&a, "\"localhost\" resolves to ");
    assert_non_null(strstr(a.text, "loopback, private or link-local"));
    /* an IP literal is checked the same way */
    const char *const allow_ip[] = {"127.0.0.1", "2130706433", NULL};
    e->ctx.outbound_allowlist = allow_ip;
    fetch(e, get("127.0.0.1", "/json"), &a);
    expect_error(&a, "resolves to 127.0.0.1");
    fetch(e, get("2130706433", "/json"), &a); /* 127.0.0.1 spelled as one number */
    expect_error(&a, "resolves to 127.0.0.1");
}

static void test_fetch_allowed_with_private_addresses(void **state)
{
    struct env *e = *state;
    struct ts_answer a;

    allow_hosts(e, g_localhost, true);
    fetch(e, get("localhost", "/json"), &a);
    expect_ok(&a);
    assert_non_null(strstr(a.text, "status: 200\n"));
    assert_non_null(strstr(a.text, "content-type: application/json\n"));
    assert_non_null(strstr(a.text, "\n\n{\"ok\":true,\"n\":1}"));
}

/* "host:port" allows that port only, also after a redirect to another port of the host */
static void test_fetch_allowlist_port(void **state)
{
    struct env *e = *state;
    struct ts_answer a;
    char entry[64], path[128];
    const char *allow[] = {entry, NULL};

    snprintf(entry, sizeof entry, "localhost:%d", g_peer.port);
    allow_hosts(e, allow, true);
    fetch(e, get("localhost", "/json"), &a);
    expect_ok(&a);
    assert_non_null(strstr(a.text, "status: 200\n"));
    snprintf(path, sizeof path, "/redirect?to=http://localhost:%d/json", g_peer.port == 1 ? 2 : 1);
    fetch(e, get("localhost", path), &a);
    expect_error(&a, NULL);
    snprintf(path, sizeof path, "http_fetch refused (at redirect 1): port %d of host \"localhost\" is not "
             "in this agent's outbound_allowlist", g_peer.port == 1 ? 2 : 1);
    assert_string_equal(a.text, path);
}

static void test_fetch_redirect_to_host_not_allowed(void **state)
{
    struct env *e = *state;
    struct ts_answer a;

    allow_hosts(e, g_localhost, true);
    fetch(e, get("localhost", "/redirect?to=http://evil.example/json"), &a);
    expect_error(&a, NULL);
    assert_string_equal(a.text, "http_fetch refused (at redirect 1): host \"evil.example\" is not in "
                                "this agent's outbound_allowlist");
    /* a redirect to another scheme is refused too */
    fetch(e, get("localhost", "/redirect?to=file:///etc/passwd"), &a);
    expect_error(&a, "at redirect 1");
    assert_non_null(strstr(a.text, "only http:// and https://"));
}

static void test_fetch_redirect_to_private_address(void **state)
{
    struct env *e = *state;
    const char *const allow[] = {"127.0.0.1", "127.0.0.2", NULL};
    struct ts_answer a;
    char path[128];

    nx_http_fetch_set_addr_check(only_127_0_0_1_public);
    allow_hosts(e, allow, false);
    /* the first hop is "public" and works ... */
    fetch(e, get("127.0.0.1", "/json"), &a);
    expect_ok(&a);
    assert_non_null(strstr(a.text, "{\"ok\":true,\"n\":1}"));
    /* ... its redirect to an allowlisted but private address does not */
    snprintf(path, sizeof path, "/redirect?to=http://127.0.0.2:%d/json", g_peer.port);
    fetch(e, get("127.0.0.1", path), &a);
    expect_error(&a, NULL);
    assert_string_equal(a.text, "http_fetch refused (at redirect 1): \"127.0.0.2\" resolves to 127.0.0.2, "
                                "a loopback, private or link-local address, and this agent may not "
                                "reach those");
}

static void test_fetch_follows_relative_redirects_and_stops_loops(void **state)
{
    struct env *e = *state;
    struct ts_answer a;
    json_t *args;
    char url[256];

    allow_hosts(e, g_localhost, true);
    fetch(e, get("localhost", "/redirect?to=/json"), &a);
    expect_ok(&a);
    assert_non_null(strstr(a.text, "redirects: 1\n"));
    assert_non_null(strstr(a.text, "{\"ok\":true,\"n\":1}"));
    fetch(e, get("localhost", "/loop"), &a);
    expect_error(&a, "too many redirects (more than 5)");
    fetch(e, get("localhost", "/redirect_long?n=9000"), &a);
    expect_error(&a, "redirect to a URL over 8192 bytes, not followed");
    /* a POST answered with 302 is retried as GET without its body */
    snprintf(url, sizeof url, "http://localhost:%d/redirect?to=/echo", g_peer.port);
    args = json_pack("{s:s, s:s, s:s}", "url", url, "method", "POST", "body", "data");
    fetch(e, args, &a);
    expect_ok(&a);
    assert_non_null(strstr(a.text, "\"method\": \"GET\""));
}

static void test_fetch_caps_the_response(void **state)
{
    struct env *e = *state;
    struct ts_answer a;
    char url[256];
    json_t *args;

    allow_hosts(e, g_localhost, true);
    snprintf(url, sizeof url, "http://localhost:%d/big?bytes=500000", g_peer.port);
    args = json_pack("{s:s, s:i}", "url", url, "max_bytes", 100);
    fetch(e, args, &a);
    expect_ok(&a);
    assert_non_null(strstr(a.text, "[body truncated to the first 100 bytes]\n"));
    const char *body = strstr(a.text, "\n\n");
    assert_non_null(body);
    assert_int_equal(strlen(body + 2), 100);
    /* chunked, with no Content-Length: the same */
    snprintf(url, sizeof url, "http://localhost:%d/big?bytes=500000&chunked=1", g_peer.port);
    args = json_pack("{s:s}", "url", url);
    fetch(e, args, &a);
    expect_ok(&a);
    assert_non_null(strstr(a.text, "[body truncated to the first 32768 bytes]\n"));
    /* the largest max_bytes: the answer's cap (the lines before the body count) wins, and the
     * note says what was kept */
    snprintf(url, sizeof url, "http://localhost:%d/big?bytes=70000", g_peer.port);
    args = json_pack("{s:s, s:i}", "url", url, "max_bytes", 65536);
    fetch(e, args, &a);
    expect_ok(&a);
    body = strstr(a.text, "\n\n");
    assert_non_null(body);
    char note[80];
    snprintf(note, sizeof note, "[body truncated to the first %zu bytes]\n", strlen(body + 2));
    assert_non_null(strstr(a.text, note));
    assert_true(strlen(a.text) <= 65536);
    assert_null(strstr(a.text, "omitted"));
}

static void test_fetch_post_with_headers(void **state)
{
    struct env *e = *state;
    struct ts_answer a;
    char url[256];
    json_t *args;

    allow_hosts(e, g_localhost, true);
    snprintf(url, sizeof url, "http://LocalHost:%d/echo", g_peer.port);
    args = json_pack("{s:s, s:s, s:{s:s}, s:s}", "url", url, "method", "POST", "headers", "X-Test", "yes",
                     "body", "{\"q\":1}");
    fetch(e, args, &a);
    expect_ok(&a);
    assert_non_null(strstr(a.text, "\"method\": \"POST\""));
    assert_non_null(strstr(a.text, "\"x-test\": \"yes\""));
    assert_non_null(strstr(a.text, "\"body\": \"{\\\"q\\\":1}\""));
    /* Host cannot be overridden (virtual-host hopping behind an allowed address) */
    args = json_pack("{s:s, s:{s:s}}", "url", url, "headers", "Host", "internal.example");
    fetch(e, args, &a);
    expect_error(&a, "headers.Host");
    /* bad URLs */
    args = json_pack("{s:s}", "url", "ftp://localhost/x");
    fetch(e, args, &a);
    expect_error(&a, NULL);
    args = json_pack("{s:s}", "url", "http://user:pw@localhost/x");
    fetch(e, args, &a);
    expect_error(&a, "credentials");
    /* an error status is an error for the model, with the body */
    fetch(e, get("localhost", "/status/503"), &a);
    expect_error(&a, "status: 503\n");
}

/* The name is looked up once, by http_fetch, and curl connects to that checked address: a name
 * curl cannot resolve itself is reached only through the pin (without it, a second lookup by
 * curl could get another answer: DNS rebinding). */
static void test_fetch_connects_to_the_address_it_checked(void **state)
{
    struct env *e = *state;
    const char *const allow[] = {"rebind.invalid", NULL};
    struct ts_answer a;

    nx_http_fetch_set_addr_check(only_127_0_0_1_public);
    nx_http_fetch_set_lookup("rebind.invalid", "127.0.0.1");
    allow_hosts(e, allow, false);
    fetch(e, get("rebind.invalid", "/json"), &a);
    nx_http_fetch_set_lookup(NULL, NULL);
    expect_ok(&a);
    assert_non_null(strstr(a.text, "{\"ok\":true,\"n\":1}"));
}

/* A redirect's body is not read (an endless one held the tool for its whole deadline); headers
 * go to another origin only when harmless, so a key in any header stays with its origin. */
static void test_fetch_redirects_skip_bodies_and_keep_secrets(void **state)
{
    struct env *e = *state;
    const char *const allow[] = {"localhost", "127.0.0.1", NULL};
    struct ts_answer a;
    char url[256];
    uint64_t t0 = nx_mono_ms();
    json_t *args;

    allow_hosts(e, allow, true);
    fetch(e, get("localhost", "/redirect_endless?to=/json"), &a);
    expect_ok(&a);
    assert_non_null(strstr(a.text, "redirects: 1\n"));
    assert_non_null(strstr(a.text, "{\"ok\":true,\"n\":1}"));
    assert_true(nx_mono_ms() - t0 < 5000);

    snprintf(url, sizeof url, "http://localhost:%d/redirect?to=http://127.0.0.1:%d/echo", g_peer.port,
             g_peer.port);
    args = json_pack("{s:s, s:{s:s, s:s, s:s}}", "url", url, "headers", "X-Api-Key", "s3cret-key",
                     "Authorization", "Bearer s3cret", "Accept", "text/plain");
    fetch(e, args, &a);
    expect_ok(&a);
    assert_non_null(strstr(a.text, "\"accept\": \"text/plain\""));
    assert_null(strstr(a.text, "s3cret"));
    /* the same origin keeps them */
    snprintf(url, sizeof url, "http://localhost:%d/redirect?to=/echo", g_peer.port);
    args = json_pack("{s:s, s:{s:s}}", "url", url, "headers", "X-Api-Key", "s3cret-key");
    fetch(e, args, &a);
    expect_ok(&a);
    assert_non_null(strstr(a.text, "\"x-api-key\": \"s3cret-key\""));
}

static void test_fetch_cancel_never_answers(void **state)
{
    struct env *e = *state;
    struct ts_answer a = {0};
    struct nx_tool_call *call;

    allow_hosts(e, g_localhost, true);
    json_t *args = get("localhost", "/slow?ms=3000");
    call = nx_tool_invoke(&e->ctx, NULL, "http_fetch", args, ts_on_answer, &a);
    json_decref(args);
    assert_non_null(call);
    run_until(&e->loop, NULL, 0, 150); /* resolved and connected by now */
    nx_tool_cancel(call);
    run_until(&e->loop, NULL, 0, 100);
    assert_int_equal(a.calls, 0);
    assert_int_equal(nx_http_client_inflight(e->http), 0);
    /* cancelled right away, while the name is still being resolved */
    args = get("localhost", "/json");
    call = nx_tool_invoke(&e->ctx, NULL, "http_fetch", args, ts_on_answer, &a);
    json_decref(args);
    nx_tool_cancel(call);
    run_until(&e->loop, NULL, 0, 100);
    assert_int_equal(a.calls, 0);
}

struct pinned {
    int done;
    int rc;
    long status;
};

static void on_pinned(int rc, const struct nx_http_response *res, const char *err, void *udata)
{
    struct pinned *p = udata;

    (void)err;
    p->done++;
    p->rc = rc;
    p->status = res->status;
}

static void test_client_resolve_pins_the_address(void **state)
{
    struct env *e = *state;
    struct nx_http_call_opts o;
    struct pinned p = {0};
    char url[256], pin[128];

    /* a name no resolver knows reaches the peer because the call pins it */
    snprintf(url, sizeof url, "http://pinned.invalid:%d/json", g_peer.port);
    snprintf(pin, sizeof pin, "pinned.invalid:%d:127.0.0.1", g_peer.port);
    memset(&o, 0, sizeof o);
    o.url = url;
    o.resolve = pin;
    o.proxy = "";
    o.on_done = on_pinned;
    o.udata = &p;
    assert_non_null(nx_http_client_request(e->http, &o));
    run_until(&e->loop, &p.done, 1, 5000);
    assert_int_equal(p.done, 1);
    assert_int_equal(p.rc, 0);
    assert_int_equal(p.status, 200);
    /* a malformed entry fails the call cleanly */
    o.resolve = "bad\r\nentry";
    p.done = 0;
    assert_non_null(nx_http_client_request(e->http, &o));
    run_until(&e->loop, &p.done, 1, 5000);
    assert_int_equal(p.rc, NX_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_fetch_refuses_without_allowlist, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fetch_refuses_host_not_in_allowlist, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fetch_refuses_name_resolving_to_loopback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fetch_allowed_with_private_addresses, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fetch_allowlist_port, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fetch_redirect_to_host_not_allowed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fetch_redirect_to_private_address, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fetch_follows_relative_redirects_and_stops_loops, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_fetch_caps_the_response, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fetch_post_with_headers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fetch_connects_to_the_address_it_checked, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fetch_redirects_skip_bodies_and_keep_secrets, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_fetch_cancel_never_answers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_client_resolve_pins_the_address, setup, teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
