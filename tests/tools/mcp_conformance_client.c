/* A minimal MCP client for @modelcontextprotocol/conformance's client scenarios, built on
 * src/mcp/client.h and the Streamable HTTP transport: `mcp_conformance_client URL` connects,
 * initializes, lists the tools, calls the one the scenario expects (MCP_CONFORMANCE_SCENARIO:
 * tools_call -> add_numbers {a:1,b:2}, sse-retry -> test_reconnection, initialize -> none,
 * anything else -> the first tool with {}), closes the session and exits 0, or 1 on any failure.
 * It answers elicitation/create with the schema's defaults (mcp/asks.h) and authorizes with
 * mcp/oauth.h: for the auth scenarios with the credentials in MCP_CONFORMANCE_CONTEXT (client_id,
 * client_secret, private_key_pem, signing_algorithm; the client credentials grant for
 * auth/client-credentials scenarios), a client ID metadata document URL, else dynamic registration.
 * Usage from the suite: conformance client --command "<this program>" --scenario NAME (the suite
 * appends the URL). */

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "core/error.h"
#include "core/log.h"
#include "http/client.h"
#include "mcp/asks.h"
#include "mcp/client.h"
#include "mcp/mcp.h"
#include "mcp/oauth.h"
#include "mcp/transport.h"

#define DEADLINE_MS 30000
#define CALL_TIMEOUT_MS 10000

#define CIMD_URL "https://conformance-test.local/client-metadata.json"

struct app {
    struct nx_mcp_client *client;
    struct nx_mcp_asks *asks;
    uv_timer_t call_timer;
    json_t *call; /* tools/call params waiting for call_timer */
    const char *scenario;
    int exit_code; /* -1 while running */
    bool is_done;
};

static void finish(struct app *a, int code, const char *why)
{
    if (a->is_done)
        return;
    a->is_done = true;
    a->exit_code = code;
    fprintf(stderr, "mcp_conformance_client: %s: %s\n", code == 0 ? "ok" : "FAILED", why);
    nx_mcp_client_free(a->client); /* DELETEs the session */
    a->client = NULL;
}

static void on_called(int rc, const json_t *result, const char *err, void *udata)
{
    struct app *a = udata;
    char *text = rc == 0 ? nx_mcp_result_text(result) : NULL;

    if (rc == 0)
        printf("%s\n", text ? text : "");
    if (rc < 0)
        finish(a, 1, err ? err : nx_strerror(rc));
    else if (json_is_true(json_object_get(result, "isError")))
        finish(a, 1, "the tool answered isError");
    else
        finish(a, 0, "tool called");
    free(text);
}

static void on_call_timer(uv_timer_t *t)
{
    struct app *a = t->data;
    json_t *params = a->call;

    a->call = NULL;
    if (!a->is_done && params)
        nx_mcp_client_request(a->client, "tools/call", params, CALL_TIMEOUT_MS, NULL, on_called, a);
    else
        json_decref(params);
}

static void on_listed(int rc, const json_t *result, const char *err, void *udata)
{
    struct app *a = udata;
    const json_t *tools = json_object_get(result, "tools");
    const char *name = NULL;
    json_t *args = json_object();

    if (a->is_done)
        goto out;
    if (rc < 0) {
        finish(a, 1, err ? err : nx_strerror(rc));
        goto out;
    }
    printf("%zu tools\n", json_array_size(tools));
    if (strcmp(a->scenario, "initialize") == 0) {
        finish(a, 0, "initialized and listed");
        goto out;
    }
    if (strcmp(a->scenario, "tools_call") == 0) {
        name = "add_numbers";
        json_object_set_new(args, "a", json_integer(1));
        json_object_set_new(args, "b", json_integer(2));
    } else if (strcmp(a->scenario, "sse-retry") == 0) {
        name = "test_reconnection";
    } else {
        name = json_string_value(json_object_get(json_array_get(tools, 0), "name"));
    }
    if (!name) {
        finish(a, 0, "no tool to call");
        goto out;
    }
    a->call = json_pack("{s:s, s:O}", "name", name, "arguments", args);
    /* The elicitation scenario's server sends elicitation/create outside the call, on the
     * standalone GET stream, and drops it when that stream is not open yet; our GET starts with
     * the first POST after the handshake, so give it a moment to be accepted. */
    uv_timer_start(&a->call_timer, on_call_timer, strncmp(a->scenario, "elicitation", 11) == 0 ? 500 : 0, 0);
out:
    json_decref(args);
}

static void on_ready(struct nx_mcp_client *c, int rc, const char *err, void *udata)
{
    struct app *a = udata;

    if (rc < 0) {
        finish(a, 1, err ? err : nx_strerror(rc));
        return;
    }
    printf("protocol %s\n", nx_mcp_client_protocol_version(c));
    nx_mcp_client_list_tools(c, CALL_TIMEOUT_MS, on_listed, a);
}

static void on_closed(struct nx_mcp_client *c, int rc, const char *why, void *udata)
{
    (void)c;
    (void)rc;
    finish(udata, 1, why ? why : "closed");
}

static int on_request(struct nx_mcp_client *c, const char *method, const json_t *id, const json_t *params,
                      void *udata)
{
    struct app *a = udata;

    return nx_mcp_asks_handle(a->asks, c, method, id, params);
}

/* auth: {type: oauth, ...} from the scenario's context. New reference. */
static json_t *auth_conf(const char *scenario)
{
    const char *ctx = getenv("MCP_CONFORMANCE_CONTEXT");
    json_t *c = ctx ? json_loads(ctx, 0, NULL) : NULL;
    json_t *auth = json_pack("{s:s, s:s}", "type", "oauth", "client_metadata_url", CIMD_URL);
    const char *keys[] = {"client_id", "client_secret", "private_key_pem", "signing_algorithm"};

    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        if (json_is_string(json_object_get(c, keys[i])))
            json_object_set(auth, keys[i], json_object_get(c, keys[i]));
    }
    if (strncmp(scenario, "auth/client-credentials", 23) == 0)
        json_object_set_new(auth, "grant", json_string("client_credentials"));
    json_decref(c);
    return auth;
}

static void on_deadline(uv_timer_t *t)
{
    finish(t->data, 1, "no result in time");
}

int main(int argc, char **argv)
{
    static const struct nx_mcp_client_cb cb = {.on_ready = on_ready, .on_closed = on_closed,
                                               .on_request = on_request};
    struct nx_mcp_oauth *oauth = NULL;
    json_t *extra, *caps, *auth;
    char err[200];
    struct app a = {.exit_code = -1};
    struct nx_http_client *http = NULL;
    struct nx_mcp_server_conf conf;
    struct nx_mcp_link_opts to;
    struct nx_mcp_client_opts co;
    struct nx_mcp_link *link = NULL;
    uv_loop_t loop;
    uv_timer_t deadline;
    int rc;

    if (argc < 2) {
        fprintf(stderr, "usage: %s URL\n", argv[0]);
        return 2;
    }
    a.scenario = getenv("MCP_CONFORMANCE_SCENARIO") ? getenv("MCP_CONFORMANCE_SCENARIO") : "";
    nx_log_set_level(getenv("NX_TEST_LOG") ? NX_LOG_DEBUG : NX_LOG_INFO);
    setvbuf(stdout, NULL, _IOLBF, 0);
    uv_loop_init(&loop);
    if ((rc = nx_http_client_new(&loop, NULL, &http)) < 0) {
        fprintf(stderr, "http client: %s\n", nx_strerror(rc));
        return 1;
    }
    memset(&conf, 0, sizeof conf);
    conf.name = "conformance";
    conf.transport = NX_MCP_STREAMABLE_HTTP;
    conf.url = argv[argc - 1];
    auth = auth_conf(a.scenario);
    if (nx_mcp_oauth_new(http, conf.name, conf.url, auth, &oauth, err, sizeof err) < 0)
        fprintf(stderr, "auth: %s\n", err);
    json_decref(auth);
    extra = json_pack("{s:s}", "elicitation", "defaults");
    a.asks = nx_mcp_asks_new(conf.name, extra, NULL);
    json_decref(extra);
    memset(&to, 0, sizeof to);
    to.name = conf.name;
    to.oauth = oauth;
    if ((rc = nx_mcp_http_new(http, &conf, &to, &link)) < 0) {
        fprintf(stderr, "bad url %s: %s\n", conf.url, nx_strerror(rc));
        nx_http_client_free(http);
        return 1;
    }
    memset(&co, 0, sizeof co);
    co.name = conf.name;
    co.initialize_timeout_ms = CALL_TIMEOUT_MS;
    caps = json_object();
    nx_mcp_asks_declare(a.asks, caps);
    co.capabilities = caps;
    uv_timer_init(&loop, &a.call_timer);
    a.call_timer.data = &a;
    uv_timer_init(&loop, &deadline);
    deadline.data = &a;
    uv_timer_start(&deadline, on_deadline, DEADLINE_MS, 0);
    nx_mcp_client_new(&loop, link, &co, &cb, &a, &a.client);
    json_decref(caps);
    while (!a.is_done && uv_run(&loop, UV_RUN_ONCE))
        ;
    uv_close((uv_handle_t *)&deadline, NULL);
    uv_close((uv_handle_t *)&a.call_timer, NULL);
    json_decref(a.call);
    /* let the DELETE go out (bounded by its own timeout) */
    for (int i = 0; i < 1000 && nx_http_client_inflight(http) > 0; i++)
        uv_run(&loop, UV_RUN_ONCE);
    nx_mcp_oauth_free(oauth);
    nx_mcp_asks_free(a.asks);
    nx_http_client_free(http);
    for (int i = 0; i < 1000 && uv_run(&loop, UV_RUN_NOWAIT); i++)
        ;
    uv_loop_close(&loop);
    return a.exit_code == 0 ? 0 : 1;
}
