#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/error.h"
#include "core/log.h"
#include "core/metrics.h"
#include "mcp/manager_internal.h"

/* The MCP manager: one client per server of mcp.yaml, their tools in the registry, restarts with
 * exponential backoff, keep-alive pings, metrics and a status for the admin page. A server that
 * is down keeps its tools registered: calls then fail at once with a clear message, and the list
 * is refreshed when it is back. Tool tables are reference-counted, so a re-listing never frees
 * one that a call in flight (and the registry's record of that call) still points at. */

#define BACKOFF_FIRST_MS 500
#define BACKOFF_MAX_MS 60000
#define STABLE_MS 60000 /* up this long: the next crash starts the backoff over */
#define RELIST_FIRST_MS 1000
#define RELIST_MAX_MS 60000

static size_t limit_max_frame;
static uint32_t limit_first_backoff_ms;

static const double call_buckets[] = {0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300};

void nx_mcp_manager_set_limits(size_t max_frame, uint32_t first_backoff_ms)
{
    limit_max_frame = max_frame;
    limit_first_backoff_ms = first_backoff_ms;
}

/* ---- metrics --------------------------------------------------------------------------- */

static void set_up(struct server *s, bool is_up)
{
    static const char *const labels[] = {"server", NULL};
    const char *values[] = {s->conf.name};

    nx_gauge_set(nx_metric_gauge("nexo_mcp_server_up", "1 when the MCP server is connected.", labels),
                 values, is_up ? 1 : 0);
}

static void count_call(struct server *s, const char *tool, const char *outcome, double seconds)
{
    static const char *const labels[] = {"server", "tool", "outcome", NULL};
    static const char *const hlabels[] = {"server", "tool", NULL};
    const char *values[] = {s->conf.name, tool, outcome};

    nx_counter_add(nx_metric_counter("nexo_mcp_calls_total", "MCP tool calls by server, tool and outcome.",
                                     labels),
                   values, 1);
    if (seconds >= 0)
        nx_histogram_observe(nx_metric_histogram("nexo_mcp_call_seconds",
                                                 "Time from an MCP tools/call to its answer.", hlabels,
                                                 call_buckets, NX_ARRAY_LEN(call_buckets)),
                             values, seconds);
}

/* ---- tools ----------------------------------------------------------------------------- */

static void tool_unref(struct mcp_tool *mt)
{
    if (--mt->refs > 0)
        return;
    free(mt->name);
    free(mt->remote);
    free(mt->description);
    free(mt->schema);
    free(mt);
}

static void answer(struct mcp_call *call, const char *text, bool is_error)
{
    call->done(text, strlen(text), is_error, call->udata);
    tool_unref(call->mt);
    free(call);
}

static void on_call_progress(double progress, double total, const char *message, void *udata)
{
    struct mcp_call *call = udata;

    call->progress++;
    if (call->srv)
        call->srv->progress++;
    nx_debug("mcp", "tool %s: progress %g%s%.0f%s%.200s", call->mt->name, progress,
             total >= 0 ? "/" : "", total >= 0 ? total : 0, message ? " " : "", message ? message : "");
}

static void on_call_result(int rc, const json_t *result, const char *err, void *udata)
{
    struct mcp_call *call = udata;
    struct server *s = call->srv;
    double secs = (double)(nx_mono_ns() - call->start_ns) / 1e9;
    struct nx_buf b = NX_BUF_INIT;
    bool is_error = true;
    const char *outcome = "error";

    if (rc == 0 && call->mt->kind == MT_CALL && !json_is_array(json_object_get(result, "content")) &&
        !json_is_object(json_object_get(result, "structuredContent"))) {
        nx_buf_printf(&b, "MCP server \"%s\": tool \"%s\" answered with no tool result (no content)",
                      s->conf.name, call->mt->remote);
        nx_warn("mcp", "%s", nx_buf_cstr(&b));
    } else if (rc == 0) {
        char *text = call->mt->kind == MT_LIST_RESOURCES  ? nx_mcp_resource_list_text(result)
                     : call->mt->kind == MT_READ_RESOURCE ? nx_mcp_resource_read_text(result)
                                                          : nx_mcp_result_text(result);

        is_error = call->mt->kind == MT_CALL && json_is_true(json_object_get(result, "isError"));
        outcome = is_error ? "tool_error" : "ok";
        nx_buf_puts(&b, text);
        free(text);
    } else {
        outcome = rc == NX_ETIMEDOUT ? "timeout" : "error";
        nx_buf_printf(&b, "MCP server \"%s\": tool \"%s\" failed: %s", s->conf.name, call->mt->remote,
                      err ? err : nx_strerror(rc));
    }
    count_call(s, call->mt->remote, outcome, secs);
    if (call->progress)
        nx_info("mcp", "tool %s: %s after %.3f s and %u progress notifications", call->mt->name,
                outcome, secs, call->progress);
    answer(call, nx_buf_cstr(&b), is_error);
    nx_buf_cleanup(&b);
}

static struct nx_tool_call *tool_run(const struct nx_tool *self, const struct nx_tool_ctx *ctx,
                                     const json_t *args, nx_tool_done_fn done, void *udata)
{
    struct mcp_tool *mt = nx_container_of(self, struct mcp_tool, tool);
    struct server *s = mt->srv;
    struct mcp_call *call;
    struct nx_buf b = NX_BUF_INIT;
    const char *cursor;
    uint32_t timeout;
    json_t *params;

    (void)ctx;
    if (!s || s->state != NX_MCP_ST_READY || !nx_mcp_client_is_ready(s->client)) {
        nx_buf_printf(&b, "MCP server \"%s\" is not connected (%s); try again later",
                      s ? s->conf.name : "?", s ? nx_mcp_state_names[s->state] : "removed");
        if (s)
            count_call(s, mt->remote, "unavailable", -1);
        done(nx_buf_cstr(&b), b.len, true, udata);
        nx_buf_cleanup(&b);
        return NULL;
    }
    call = nx_calloc(1, sizeof *call);
    call->srv = s;
    call->mt = mt;
    mt->refs++;
    call->done = done;
    call->udata = udata;
    call->start_ns = nx_mono_ns();
    s->calls++;
    timeout = s->conf.call_timeout_ms ? s->conf.call_timeout_ms : s->m->call_timeout_ms;
    if (mt->kind == MT_LIST_RESOURCES) {
        cursor = json_string_value(json_object_get(args, "cursor"));
        call->req = nx_mcp_client_request(s->client, "resources/list",
                                          cursor && cursor[0] ? json_pack("{s:s}", "cursor", cursor) : NULL,
                                          timeout, NULL, on_call_result, call);
    } else if (mt->kind == MT_READ_RESOURCE) {
        call->req = nx_mcp_client_read_resource(s->client, json_string_value(json_object_get(args, "uri")),
                                                timeout, on_call_result, call);
    } else {
        params = json_pack("{s:s, s:O}", "name", mt->remote, "arguments",
                           args ? (json_t *)args : json_object());
        if (!args)
            json_decref(json_object_get(params, "arguments")); /* O took a second reference */
        call->req = nx_mcp_client_request(s->client, "tools/call", params, timeout, on_call_progress,
                                          on_call_result, call);
    }
    return (struct nx_tool_call *)(void *)call;
}

static void tool_cancel(struct nx_tool_call *handle)
{
    struct mcp_call *call = (struct mcp_call *)(void *)handle;

    count_call(call->srv, call->mt->remote, "cancelled", -1);
    nx_mcp_request_cancel(call->req, "cancelled by the caller");
    tool_unref(call->mt);
    free(call);
}

static void drop_tools(struct server *s)
{
    for (size_t i = 0; i < s->ntools; i++) {
        nx_tool_unregister(s->tools[i]->name);
        s->tools[i]->srv = NULL;
        tool_unref(s->tools[i]);
    }
    free(s->tools);
    s->tools = NULL;
    s->ntools = 0;
}

/* A tool whose input schema is refused is skipped, and said once: a re-listing that still finds
 * it (list_changed, a retry) only notes it. was_skipped: the tools the previous listing skipped. */
static struct mcp_tool *tool_new(struct server *s, const json_t *def, int kind, const json_t *was_skipped)
{
    const char *remote = json_string_value(json_object_get(def, "name"));
    struct mcp_tool *mt;
    char name[80], why[160];
    char *schema;
    int rc;

    if (!remote || !remote[0])
        return NULL;
    if (!(schema = nx_mcp_tool_input_schema(def, why, sizeof why))) {
        nx_log(json_object_get(was_skipped, remote) ? NX_LOG_DEBUG : NX_LOG_WARN, "mcp",
               "server %s: tool \"%.100s\" skipped: %s (MCP wants {\"type\": \"object\", ...})",
               s->conf.name, remote, why);
        if (!s->skipped)
            s->skipped = json_object();
        json_object_set_new(s->skipped, remote, json_string(why));
        return NULL;
    }
    mt = nx_calloc(1, sizeof *mt);
    mt->refs = 1;
    mt->srv = s;
    mt->kind = kind;
    mt->remote = nx_strdup(remote);
    mt->description = nx_strdup(json_string_value(json_object_get(def, "description"))
                                    ? json_string_value(json_object_get(def, "description"))
                                    : "");
    mt->schema = schema;
    mt->tool.description = mt->description;
    mt->tool.input_schema = mt->schema;
    mt->tool.run_self = tool_run;
    mt->tool.cancel = tool_cancel;
    for (int hashed = 0; hashed < 2; hashed++) {
        nx_mcp_tool_name(s->conf.name, remote, hashed, name, sizeof name);
        free(mt->name);
        mt->name = nx_strdup(name);
        mt->tool.name = mt->name;
        if ((rc = nx_tool_register(&mt->tool)) == 0)
            return mt;
        if (rc != NX_EEXIST)
            break;
    }
    nx_warn("mcp", "server %s: tool \"%.100s\" not registered: %s", s->conf.name, remote,
            rc == NX_EEXIST ? "its name is taken" : "invalid input schema");
    mt->srv = NULL;
    tool_unref(mt);
    return NULL;
}

static void list_tools(struct server *s);
static void set_error(struct server *s, const char *why);

struct list_ctx {
    struct server *s;
    unsigned gen;
};

static void on_relist_timer(void *arg)
{
    struct server *s = arg;

    s->relist = NULL;
    if (s->state == NX_MCP_ST_READY && nx_mcp_client_is_ready(s->client))
        list_tools(s);
}

/* tools/list failed (an error reply, a timeout) on a connection that is still up. Left at that,
 * the server would offer no tools (or stale ones) until it restarts, which a healthy connection
 * never does; so it is asked again 1 s later, then twice as long after each failure, up to a
 * minute, for as long as the connection lasts. One warning per run of failures: the retries
 * themselves go to debug. */
static void list_failed(struct server *s, int rc, const char *err)
{
    char why[400];

    if (!nx_mcp_client_is_ready(s->client))
        return; /* the connection is gone: its restart lists the tools again */
    snprintf(why, sizeof why, "tools/list failed: %.300s", err ? err : nx_strerror(rc));
    s->relist_ms = s->relist_ms == 0 ? RELIST_FIRST_MS
                   : s->relist_ms * 2 > RELIST_MAX_MS ? RELIST_MAX_MS : s->relist_ms * 2;
    if (s->list_failures++ == 0) {
        nx_warn("mcp", "server %s: %s; retrying in %u ms, then less often (at least once a minute)",
                s->conf.name, why, s->relist_ms);
        set_error(s, why);
    } else {
        nx_debug("mcp", "server %s: %s (%u failures in a row); retrying in %u ms", s->conf.name, why,
                 s->list_failures, s->relist_ms);
    }
    s->is_relist_wanted = false; /* the retry lists anyway */
    nx_timer_cancel(s->relist);
    s->relist = nx_timer_once(s->m->loop, s->relist_ms, on_relist_timer, s);
}

/* No retry pending and the backoff starts over: the list came, or the connection is new. */
static void list_retry_reset(struct server *s)
{
    nx_timer_cancel(s->relist);
    s->relist = NULL;
    s->relist_ms = 0;
    s->list_failures = 0;
}

static void on_listed(int rc, const json_t *result, const char *err, void *udata)
{
    struct list_ctx *lc = udata;
    struct server *s = lc->s;
    const json_t *tools = json_object_get(result, "tools");
    bool is_stale = lc->gen != s->gen || s->m->is_closing;
    json_t *was_skipped;

    free(lc);
    if (is_stale)
        return;
    s->is_listing = false;
    if (rc < 0) {
        list_failed(s, rc, err);
        return;
    }
    if (s->list_failures)
        nx_info("mcp", "server %s: tools/list answered after %u failures", s->conf.name, s->list_failures);
    list_retry_reset(s);
    drop_tools(s);
    was_skipped = s->skipped;
    s->skipped = NULL;
    s->tools = nx_calloc(json_array_size(tools) + 1, sizeof *s->tools);
    for (size_t i = 0; i < json_array_size(tools); i++) {
        struct mcp_tool *mt = tool_new(s, json_array_get(tools, i), MT_CALL, was_skipped);

        if (mt)
            s->tools[s->ntools++] = mt;
    }
    json_decref(was_skipped);
    nx_info("mcp", "server %s: %zu tools registered", s->conf.name, s->ntools);
    if (s->is_relist_wanted) {
        s->is_relist_wanted = false;
        list_tools(s);
    }
}

static void list_tools(struct server *s)
{
    struct list_ctx *lc;

    if (s->is_listing) {
        s->is_relist_wanted = true;
        return;
    }
    lc = nx_calloc(1, sizeof *lc);
    lc->s = s;
    lc->gen = s->gen;
    s->is_listing = true;
    nx_mcp_client_list_tools(s->client, s->m->call_timeout_ms, on_listed, lc);
}

/* ---- resources and prompts ------------------------------------------------------------ */

static void drop_resource_tools(struct server *s)
{
    for (size_t i = 0; i < NX_ARRAY_LEN(s->rtools); i++) {
        if (!s->rtools[i])
            continue;
        nx_tool_unregister(s->rtools[i]->name);
        s->rtools[i]->srv = NULL;
        tool_unref(s->rtools[i]);
        s->rtools[i] = NULL;
    }
}

/* mcp_<server>_list_resources and mcp_<server>_read_resource (nexo-rs's names), registered
 * while the server declares the resources capability; the remote name in metrics is the
 * method. */
static void update_resource_tools(struct server *s)
{
    static const char *const names[] = {"list_resources", "read_resource"};
    static const char *const methods[] = {"resources/list", "resources/read"};
    bool has = json_is_object(json_object_get(nx_mcp_client_capabilities(s->client), "resources"));
    json_t *def;

    if (!has || s->rtools[0])
        goto out;
    for (size_t i = 0; i < NX_ARRAY_LEN(names); i++) {
        def = i == 0 ? json_pack("{s:s, s:s, s:{s:s, s:{s:{s:s, s:s}}}}", "name", names[i], "description",
                                 "List the resources (documents, files, data) the MCP server offers: "
                                 "uri, name, type and description of each.",
                                 "inputSchema", "type", "object", "properties", "cursor", "type", "string",
                                 "description", "nextCursor from a previous page")
                     : json_pack("{s:s, s:s, s:{s:s, s:{s:{s:s, s:s}}, s:[s]}}", "name", names[i],
                                 "description", "Read one resource of the MCP server by its uri.",
                                 "inputSchema", "type", "object", "properties", "uri", "type", "string",
                                 "description", "the resource's uri, as listed", "required", "uri");
        if ((s->rtools[i] = tool_new(s, def, i == 0 ? MT_LIST_RESOURCES : MT_READ_RESOURCE, NULL))) {
            free(s->rtools[i]->remote);
            s->rtools[i]->remote = nx_strdup(methods[i]);
        }
        json_decref(def);
    }
out:
    if (!has)
        drop_resource_tools(s);
}

static void on_prompts_listed(int rc, const json_t *result, const char *err, void *udata)
{
    struct list_ctx *lc = udata;
    struct server *s = lc->s;
    bool is_stale = lc->gen != s->gen || s->m->is_closing;

    free(lc);
    if (is_stale)
        return;
    if (rc < 0) {
        nx_warn("mcp", "server %s: prompts/list failed: %s", s->conf.name, err ? err : nx_strerror(rc));
        return;
    }
    json_decref(s->prompts);
    s->prompts = json_array();
    for (size_t i = 0; i < json_array_size(json_object_get(result, "prompts")); i++) {
        const json_t *p = json_array_get(json_object_get(result, "prompts"), i);
        const char *name = json_string_value(json_object_get(p, "name"));
        const json_t *d = json_object_get(p, "description");
        const json_t *a = json_object_get(p, "arguments");
        json_t *o;

        if (!name)
            continue;
        o = json_pack("{s:s}", "name", name);
        json_object_set_new(o, "description", json_is_string(d) ? json_incref((json_t *)d) : json_null());
        json_object_set_new(o, "arguments", json_is_array(a) ? json_deep_copy(a) : json_array());
        json_array_append_new(s->prompts, o);
    }
    nx_info("mcp", "server %s: %zu prompts", s->conf.name, json_array_size(s->prompts));
}

static void list_prompts(struct server *s)
{
    struct list_ctx *lc;

    if (!json_is_object(json_object_get(nx_mcp_client_capabilities(s->client), "prompts")))
        return;
    lc = nx_calloc(1, sizeof *lc);
    lc->s = s;
    lc->gen = s->gen;
    nx_mcp_client_list(s->client, "prompts/list", "prompts", s->m->call_timeout_ms, on_prompts_listed, lc);
}

/* ---- connection lifecycle ------------------------------------------------------------- */

static void connect_server(struct server *s);

static void set_error(struct server *s, const char *why)
{
    free(s->last_error);
    s->last_error = nx_strdup(why ? why : "");
}

static void on_restart_timer(void *arg)
{
    struct server *s = arg;

    static const char *const labels[] = {"server", NULL};
    const char *values[1];

    s->restart = NULL;
    s->restarts++;
    values[0] = s->conf.name;
    nx_counter_add(nx_metric_counter("nexo_mcp_server_restarts_total",
                                     "Reconnections of an MCP server after it went down.", labels),
                   values, 1);
    connect_server(s);
}

static void on_first_connect(void *arg)
{
    struct server *s = arg;

    s->restart = NULL;
    connect_server(s);
}

/* The connection is over (crash, failed handshake, lost session, dead ping): try again later. */
static void schedule_restart(struct server *s, const char *why)
{
    uint64_t now = nx_mono_ms();
    uint32_t first = limit_first_backoff_ms ? limit_first_backoff_ms : BACKOFF_FIRST_MS;

    set_error(s, why);
    set_up(s, false);
    nx_mcp_asks_forget_client(s->asks, s->client);
    nx_mcp_client_free(s->client);
    s->client = NULL;
    s->pid = 0;
    s->gen++;
    s->is_listing = s->is_relist_wanted = false;
    list_retry_reset(s);
    if (s->m->is_closing)
        return;
    if (s->backoff_ms == 0 || (s->up_since_ms && now - s->up_since_ms >= STABLE_MS))
        s->backoff_ms = first;
    s->up_since_ms = 0;
    s->state = NX_MCP_ST_BACKOFF;
    nx_warn("mcp", "server %s is down (%s); reconnecting in %u ms", s->conf.name, why ? why : "?",
            s->backoff_ms);
    nx_timer_cancel(s->restart);
    s->restart = nx_timer_once(s->m->loop, s->backoff_ms, on_restart_timer, s);
    s->backoff_ms = s->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : s->backoff_ms * 2;
}

static void on_ready(struct nx_mcp_client *c, int rc, const char *err, void *udata)
{
    struct server *s = udata;

    if (c != s->client)
        return;
    if (rc < 0) {
        schedule_restart(s, err ? err : nx_strerror(rc));
        return;
    }
    s->state = NX_MCP_ST_READY;
    s->up_since_ms = nx_mono_ms();
    set_up(s, true);
    list_tools(s);
    update_resource_tools(s);
    list_prompts(s);
}

static void on_list_changed(struct nx_mcp_client *c, const char *what, void *udata)
{
    struct server *s = udata;

    if (c == s->client && s->state == NX_MCP_ST_READY && strcmp(what, "prompts") == 0)
        list_prompts(s);
}

static void on_tools_changed(struct nx_mcp_client *c, void *udata)
{
    struct server *s = udata;

    if (c == s->client && s->state == NX_MCP_ST_READY) {
        nx_info("mcp", "server %s: tool list changed", s->conf.name);
        list_tools(s);
    }
}

static void on_closed(struct nx_mcp_client *c, int rc, const char *why, void *udata)
{
    struct server *s = udata;

    (void)rc;
    if (c == s->client)
        schedule_restart(s, why);
}

static void on_ping(int rc, const json_t *result, const char *err, void *udata)
{
    struct list_ctx *pc = udata;
    struct server *s = pc->s;
    bool is_stale = pc->gen != s->gen || s->m->is_closing;

    (void)result;
    free(pc);
    if (!is_stale && rc < 0 && rc != NX_ECLOSED)
        schedule_restart(s, err ? err : "ping failed");
}

static void on_ping_timer(void *arg)
{
    struct server *s = arg;
    struct list_ctx *pc;

    s->ping = nx_timer_once(s->m->loop, s->m->ping_ms, on_ping_timer, s);
    if (s->state != NX_MCP_ST_READY || !s->client)
        return;
    pc = nx_calloc(1, sizeof *pc);
    pc->s = s;
    pc->gen = s->gen;
    nx_mcp_client_request(s->client, "ping", NULL, s->m->initialize_timeout_ms, NULL, on_ping, pc);
}

static int on_server_request(struct nx_mcp_client *c, const char *method, const json_t *id,
                             const json_t *params, void *udata)
{
    struct server *s = udata;

    return c == s->client ? nx_mcp_asks_handle(s->asks, c, method, id, params) : NX_ENOTSUP;
}

static void on_server_request_cancelled(struct nx_mcp_client *c, const json_t *id, void *udata)
{
    struct server *s = udata;

    nx_mcp_asks_cancel(s->asks, c, id);
}

static void connect_server(struct server *s)
{
    struct nx_mcp_link_opts to;
    struct nx_mcp_link *t = NULL;
    struct nx_mcp_client_opts co;
    static const struct nx_mcp_client_cb cb = {
        .on_ready = on_ready, .on_tools_changed = on_tools_changed, .on_closed = on_closed,
        .on_list_changed = on_list_changed, .on_request = on_server_request,
        .on_request_cancelled = on_server_request_cancelled};
    json_t *caps;
    int rc;

    memset(&to, 0, sizeof to);
    to.name = s->conf.name;
    to.max_frame = limit_max_frame;
    to.grace_ms = s->m->grace_ms;
    to.oauth = s->oauth;
    if (s->conf.transport == NX_MCP_STDIO)
        rc = nx_mcp_stdio_new(s->m->loop, &s->conf, &to, &t);
    else if (s->m->http)
        rc = nx_mcp_http_new(s->m->http, &s->conf, &to, &t);
    else
        rc = NX_EINVAL;
    s->gen++;
    s->state = NX_MCP_ST_STARTING;
    if (rc < 0) {
        schedule_restart(s, "cannot create the transport (bad command or url)");
        return;
    }
    memset(&co, 0, sizeof co);
    co.name = s->conf.name;
    co.initialize_timeout_ms = s->conf.connect_timeout_ms ? s->conf.connect_timeout_ms
                                                         : s->m->initialize_timeout_ms;
    co.roots = s->roots;
    caps = s->has_roots ? json_pack("{s:{s:b}}", "roots", "listChanged", 0) : json_object();
    nx_mcp_asks_declare(s->asks, caps);
    co.capabilities = caps;
    nx_mcp_client_new(s->m->loop, t, &co, &cb, s, &s->client);
    json_decref(caps);
    s->pid = t->pid;
}

/* ---- the manager ----------------------------------------------------------------------- */

static void server_cleanup(struct server *s)
{
    nx_timer_cancel(s->restart);
    nx_timer_cancel(s->ping);
    list_retry_reset(s);
    s->gen++;
    nx_mcp_asks_forget_client(s->asks, s->client);
    nx_mcp_client_free(s->client); /* calls in flight are answered with an error now */
    s->client = NULL;
    drop_tools(s);
    drop_resource_tools(s);
    if (s->state == NX_MCP_ST_READY)
        set_up(s, false);
    nx_mcp_mgr_server_conf_cleanup(s);
}

/* Tools are named mcp_<server>_<tool>, so with servers "web" and "web_admin" the glob mcp_web_*
 * in allowed_tools takes web_admin's tools too (and web's tool admin_x and web_admin's x share a
 * name): said at start, as renaming is the operator's call. */
static void warn_name_overlaps(const struct nx_mcp_manager *m)
{
    char pa[80], pb[80]; /* the names as tool names have them: mcp_<server>_ (web.admin: web_admin) */
    for (size_t i = 0; i < m->nservers; i++) {
        const char *a = m->servers[i].conf.name;
        nx_mcp_tool_name(a, "", 0, pa, sizeof pa);
        size_t n = strlen(pa);
        for (size_t j = 0; a && j < m->nservers; j++) {
            const char *b = m->servers[j].conf.name;
            if (j == i || !b)
                continue;
            nx_mcp_tool_name(b, "", 0, pb, sizeof pb);
            if (!strncmp(pa, pb, n) && (pb[n] || j > i)) /* (the same name twice: said once) */
                nx_warn("mcp", "servers %s and %s: the allowed_tools glob %s* matches %s's tools too; "
                        "name the tools, or rename a server so that neither name starts the other", a, b,
                        pa, b);
        }
    }
}

int nx_mcp_manager_new(uv_loop_t *loop, struct nx_http_client *http, const struct nx_mcp_conf *conf,
                       struct nx_mcp_manager **out)
{
    struct nx_mcp_manager *m;

    if (!loop || !conf || !out)
        return NX_EINVAL;
    m = nx_calloc(1, sizeof *m);
    m->loop = loop;
    m->http = http;
    m->initialize_timeout_ms = conf->initialize_timeout_ms ? conf->initialize_timeout_ms : 10000;
    m->call_timeout_ms = conf->call_timeout_ms ? conf->call_timeout_ms : 30000;
    m->grace_ms = conf->shutdown_grace_ms;
    m->ping_ms = conf->idle_reap_interval_ms ? conf->idle_reap_interval_ms : 60000;
    if (conf->enabled && conf->n_servers > 0) {
        m->servers = nx_calloc(conf->n_servers, sizeof *m->servers);
        m->nservers = conf->n_servers;
        for (size_t i = 0; i < conf->n_servers; i++)
            nx_mcp_mgr_server_init(m, &m->servers[i], &conf->servers[i], conf->extra);
        warn_name_overlaps(m);
        for (size_t i = 0; i < m->nservers; i++) {
            struct server *s = &m->servers[i];

            if (s->conf.transport != NX_MCP_STDIO && s->conf.transport != NX_MCP_STREAMABLE_HTTP) {
                /* sse (the 2024-11-05 transport) and auto are not implemented yet */
                nx_warn("mcp", "server %s: transport not supported yet; skipped", s->conf.name);
                set_error(s, "transport not supported");
                continue;
            }
            set_up(s, false);
            /* on the next iteration, so nx_mcp_manager_set_host (token files) comes first */
            s->state = NX_MCP_ST_STARTING;
            s->restart = nx_timer_once(loop, 0, on_first_connect, s);
            s->ping = nx_timer_once(loop, m->ping_ms, on_ping_timer, s);
        }
    }
    *out = m;
    return 0;
}

void nx_mcp_manager_set_host(struct nx_mcp_manager *m, const struct nx_mcp_host *host)
{
    json_t *ws = NULL;
    char path[4096];

    for (size_t i = 0; m && host && i < m->nservers; i++) {
        struct server *s = &m->servers[i];
        const json_t *auth = json_object_get(s->conf.extra, "auth");

        nx_mcp_asks_set_agents(s->asks, host->agents);
        if (s->oauth && host->data_dir && !json_object_get(auth, "token_file") &&
            snprintf(path, sizeof path, "%s/mcp/oauth-%s.json", host->data_dir, s->conf.name) <
                (int)sizeof path)
            nx_mcp_oauth_set_token_file(s->oauth, path);
        if (s->wants_workspaces && host->cfg) {
            if (!ws)
                ws = nx_mcp_mgr_workspace_roots(host->cfg, host->data_dir);
            json_decref(s->roots);
            s->roots = json_deep_copy(ws);
            nx_mcp_client_set_roots(s->client, s->roots);
        }
    }
    json_decref(ws);
}

void nx_mcp_manager_free(struct nx_mcp_manager *m)
{
    if (!m)
        return;
    m->is_closing = true;
    for (size_t i = 0; i < m->nservers; i++)
        server_cleanup(&m->servers[i]);
    free(m->servers);
    free(m);
}

