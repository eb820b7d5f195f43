/* The MCP server core: sessions, the lifecycle (initialize with version negotiation,
 * notifications/initialized, ping), tools/list with pagination, logging/setLevel, the empty
 * resources and prompts lists, completion/complete, batches (2025-03-26 and earlier only) and
 * JSON-RPC errors. tools/call is in server_call.c. No transport here: see server_stdio.c and
 * server_http.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/error.h"
#include "core/log.h"
#include "core/redact.h"
#include "mcp/jsonrpc.h"
#include "mcp/server_internal.h"
#include "runtime/runtime.h"

#define WATCH_MS 2000

static const char *const versions[] = {"2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"};
static const char *const log_levels[] = {"debug", "info", "notice", "warning", "error", "critical",
                                         "alert", "emergency"};

bool nx_mcp_server_version_supported(const char *v)
{
    for (size_t i = 0; v && i < NX_ARRAY_LEN(versions); i++) {
        if (strcmp(v, versions[i]) == 0)
            return true;
    }
    return false;
}

/* JSON-RPC batches exist in 2025-03-26 only (2024-11-05 inherits them from JSON-RPC 2.0);
 * 2025-06-18 removed them. */
static bool batch_allowed(const char *v)
{
    return v && (strcmp(v, "2025-03-26") == 0 || strcmp(v, "2024-11-05") == 0);
}

/* ---- configuration copy ---- */

static char **strv_dup(char *const *v)
{
    size_t n = 0;
    while (v && v[n])
        n++;
    char **out = nx_calloc(n + 1, sizeof *out);
    for (size_t i = 0; i < n; i++)
        out[i] = nx_strdup(v[i]);
    return out;
}

static void strv_free(char **v)
{
    for (size_t i = 0; v && v[i]; i++)
        free(v[i]);
    free(v);
}

static char *str_dup(const char *s)
{
    return s ? nx_strdup(s) : NULL;
}

static void conf_copy(struct nx_mcp_srv_conf *d, const struct nx_mcp_srv_conf *s)
{
    *d = *s;
    d->name = nx_strdup(s->name ? s->name : "nexo");
    d->agents = strv_dup(s->agents);
    d->tools_agent = str_dup(s->tools_agent);
    d->expose_tools = strv_dup(s->expose_tools);
    d->auth_token_env = str_dup(s->auth_token_env);
    d->http.bind = str_dup(s->http.bind);
    d->http.allowed_origins = strv_dup(s->http.allowed_origins);
    if (!d->max_frame)
        d->max_frame = 4u << 20;
    if (!d->page_size)
        d->page_size = 100;
    if (!d->http.max_sessions)
        d->http.max_sessions = 64;
    if (!d->http.session_idle_timeout_ms)
        d->http.session_idle_timeout_ms = 30 * 60 * 1000;
}

static void conf_free(struct nx_mcp_srv_conf *c)
{
    free(c->name);
    strv_free(c->agents);
    free(c->tools_agent);
    strv_free(c->expose_tools);
    free(c->auth_token_env);
    free(c->http.bind);
    strv_free(c->http.allowed_origins);
}

/* ---- the server ---- */

/* "ask_<id>" with every character outside [A-Za-z0-9_.-] replaced by '_' (MCP tool names). */
static char *agent_tool_name(const char *id)
{
    struct nx_buf b = NX_BUF_INIT;
    nx_buf_puts(&b, "ask_");
    for (const char *p = id; *p && b.len < 128; p++) {
        char c = *p;
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '_' || c == '-' || c == '.';
        nx_buf_putc(&b, ok ? c : '_');
    }
    return nx_buf_steal(&b);
}

static int add_agent(struct nx_mcp_server *srv, const char *id)
{
    if (!nx_config_agent(srv->cfg, id)) {
        nx_error("mcp-server", "no agent \"%s\" to offer as an MCP tool", id);
        return NX_ENOENT;
    }
    struct srv_tool *t = &srv->agent_tools[srv->n_agent_tools++];
    t->agent_id = nx_strdup(id);
    t->name = agent_tool_name(id);
    return 0;
}

static uint64_t tools_hash(const struct nx_mcp_server *srv);
static void on_watch(void *arg);

int nx_mcp_server_new(const struct nx_mcp_server_deps *deps, const struct nx_mcp_srv_conf *conf,
                      struct nx_mcp_server **out)
{
    struct nx_mcp_server *srv = nx_calloc(1, sizeof *srv);
    const struct nx_agent_conf *acs = NULL;
    size_t nagents = nx_config_agents(deps->cfg, &acs);
    int rc = 0;

    srv->loop = deps->loop;
    srv->http = deps->http;
    srv->agents = deps->agents;
    srv->cfg = nx_config_ref(deps->cfg);
    srv->loop_thread = pthread_self();
    srv->sink_level = MCP_LOG_NONE;
    srv->ops.start = deps->ops && deps->ops->start ? deps->ops->start : nx_turn_start;
    srv->ops.cancel = deps->ops && deps->ops->cancel ? deps->ops->cancel : nx_turn_cancel;
    conf_copy(&srv->conf, conf);
    size_t nconf = 0;
    while (srv->conf.agents[nconf])
        nconf++;
    srv->agent_tools = nx_calloc((nconf > nagents ? nconf : nagents) + 1, sizeof *srv->agent_tools);
    if (deps->only_agent) {
        rc = add_agent(srv, deps->only_agent);
    } else if (nconf) {
        for (size_t i = 0; i < nconf && rc == 0; i++)
            rc = add_agent(srv, srv->conf.agents[i]);
    } else {
        for (size_t i = 0; i < nagents && rc == 0; i++)
            rc = add_agent(srv, acs[i].id);
    }
    if (rc < 0)
        goto out;
    const char *ta = srv->conf.tools_agent ? srv->conf.tools_agent
                     : deps->only_agent    ? deps->only_agent
                     : srv->n_agent_tools  ? srv->agent_tools[0].agent_id
                                           : NULL;
    if (ta && !nx_config_agent(srv->cfg, ta)) {
        nx_error("mcp-server", "mcp_server.yaml: tools_agent \"%s\" is not a configured agent", ta);
        rc = NX_ENOENT;
        goto out;
    }
    srv->tools_agent = str_dup(ta);
    srv->tools_hash = tools_hash(srv);
    if (srv->loop && srv->conf.expose_tools[0] && srv->tools_agent)
        srv->watch = nx_timer_once(srv->loop, WATCH_MS, on_watch, srv);
    *out = srv;
    srv = NULL;
out:
    nx_mcp_server_free(srv);
    return rc;
}

void nx_mcp_server_free(struct nx_mcp_server *srv)
{
    if (!srv)
        return;
    NX_ASSERT(!srv->sessions);
    mcp_logs_stop(srv);
    nx_timer_cancel(srv->watch);
    for (size_t i = 0; i < srv->n_agent_tools; i++) {
        free(srv->agent_tools[i].name);
        free(srv->agent_tools[i].agent_id);
    }
    free(srv->agent_tools);
    free(srv->tools_agent);
    conf_free(&srv->conf);
    nx_config_unref(srv->cfg);
    free(srv);
}

const struct nx_mcp_srv_conf *nx_mcp_server_get_conf(const struct nx_mcp_server *srv)
{
    return &srv->conf;
}

void nx_mcp_server_set_config(struct nx_mcp_server *srv, struct nx_config *cfg)
{
    nx_config_ref(cfg);
    nx_config_unref(srv->cfg);
    srv->cfg = cfg;
}

/* ---- tools ---- */

/* An exported registry tool: matched by expose_tools, allowed for the sandbox agent, and not
 * shadowed by an agent tool. */
static bool exported(const struct nx_mcp_server *srv, const char *name)
{
    if (!srv->conf.expose_tools[0] || !srv->tools_agent)
        return false;
    if (!nx_tool_allowed(name, (const char *const *)srv->conf.expose_tools))
        return false;
    const struct nx_agent_conf *ac = nx_config_agent(srv->cfg, srv->tools_agent);
    if (!ac || !nx_tool_allowed(name, (const char *const *)ac->allowed_tools))
        return false;
    for (size_t i = 0; i < srv->n_agent_tools; i++) {
        if (strcmp(srv->agent_tools[i].name, name) == 0)
            return false;
    }
    return true;
}

bool mcp_find_tool(const struct nx_mcp_server *srv, const char *name, struct srv_tool *out)
{
    memset(out, 0, sizeof *out);
    for (size_t i = 0; i < srv->n_agent_tools; i++) {
        if (strcmp(srv->agent_tools[i].name, name) == 0) {
            *out = srv->agent_tools[i];
            return true;
        }
    }
    const struct nx_tool *t = nx_tool_find(name);
    if (!t || !exported(srv, t->name))
        return false;
    out->reg = t->name;
    out->name = (char *)t->name;
    return true;
}

static json_t *agent_tool_entry(const struct nx_mcp_server *srv, const struct srv_tool *t)
{
    const struct nx_agent_conf *ac = nx_config_agent(srv->cfg, t->agent_id);
    struct nx_buf d = NX_BUF_INIT;
    nx_buf_printf(&d, "Ask the nexo agent \"%s\"", t->agent_id);
    if (ac && ac->description && *ac->description)
        nx_buf_printf(&d, " (%s)", ac->description);
    nx_buf_puts(&d, ". Runs a full agent turn (the agent may use its own tools) and returns its final "
                    "answer as text. Pass `session` to continue a conversation.");
    json_t *schema = json_pack(
        "{s:s, s:{s:{s:s, s:s}, s:{s:s, s:s}}, s:[s], s:b}", "type", "object", "properties", "message",
        "type", "string", "description", "What to ask or tell the agent", "session", "type", "string",
        "description", "A conversation name: calls with the same one share history (default: none, "
        "a fresh conversation each call)", "required", "message", "additionalProperties", 0);
    json_t *o = json_pack("{s:s, s:s, s:s%, s:o}", "name", t->name, "title", t->agent_id, "description",
                          d.data, d.len, "inputSchema", schema);
    nx_buf_cleanup(&d);
    return o;
}

json_t *mcp_tool_list(const struct nx_mcp_server *srv)
{
    json_t *out = json_array();
    for (size_t i = 0; i < srv->n_agent_tools; i++)
        json_array_append_new(out, agent_tool_entry(srv, &srv->agent_tools[i]));
    size_t n = 0;
    const struct nx_tool *const *all = nx_tool_all(&n);
    for (size_t i = 0; i < n; i++) {
        if (!exported(srv, all[i]->name))
            continue;
        json_t *schema = all[i]->input_schema ? json_loads(all[i]->input_schema, 0, NULL) : NULL;
        if (!json_is_object(schema)) {
            json_decref(schema);
            schema = json_pack("{s:s}", "type", "object");
        }
        json_array_append_new(out, json_pack("{s:s, s:s, s:o}", "name", all[i]->name, "description",
                                             all[i]->description ? all[i]->description : all[i]->name,
                                             "inputSchema", schema));
    }
    return out;
}

/* FNV-1a over the exported tools' names: MCP tools come and go as mcp.yaml servers connect. */
static uint64_t tools_hash(const struct nx_mcp_server *srv)
{
    uint64_t h = 1469598103934665603ull;
    size_t n = 0;
    const struct nx_tool *const *all = nx_tool_all(&n);
    for (size_t i = 0; i < n; i++) {
        if (!exported(srv, all[i]->name))
            continue;
        for (const char *p = all[i]->name; *p; p++)
            h = (h ^ (unsigned char)*p) * 1099511628211ull;
        h = (h ^ 0xff) * 1099511628211ull;
    }
    return h;
}

static void on_watch(void *arg)
{
    struct nx_mcp_server *srv = arg;
    srv->watch = nx_timer_once(srv->loop, WATCH_MS, on_watch, srv);
    uint64_t h = tools_hash(srv);
    if (h == srv->tools_hash)
        return;
    srv->tools_hash = h;
    nx_info("mcp-server", "the exported tools changed: sending notifications/tools/list_changed");
    for (struct nx_mcp_session *s = srv->sessions; s; s = s->next) {
        if (s->protocol)
            mcp_send(s, NULL, nx_jsonrpc_notification_new("notifications/tools/list_changed", NULL), false);
    }
}

/* ---- sending ---- */

void mcp_send(struct nx_mcp_session *s, void *origin, json_t *msg, bool is_final)
{
    if (s && s->io.send)
        s->io.send(s->io.udata, origin, msg, is_final);
    json_decref(msg);
}

void mcp_send_error(struct nx_mcp_session *s, void *origin, const json_t *id, int code, const char *fmt,
                    ...)
{
    struct nx_buf b = NX_BUF_INIT;
    va_list ap;
    va_start(ap, fmt);
    nx_buf_vprintf(&b, fmt, ap);
    va_end(ap);
    mcp_send(s, origin, nx_jsonrpc_error_new(id, code, nx_buf_cstr(&b)), true);
    nx_buf_cleanup(&b);
}

void mcp_session_log(struct nx_mcp_session *s, void *origin, int level, const char *fmt, ...)
{
    struct nx_buf b = NX_BUF_INIT, red = NX_BUF_INIT;
    va_list ap;
    va_start(ap, fmt);
    nx_buf_vprintf(&b, fmt, ap);
    va_end(ap);
    enum nx_log_level nl = level <= MCP_LOG_DEBUG  ? NX_LOG_DEBUG
                           : level <= MCP_LOG_NOTICE ? NX_LOG_INFO
                           : level == MCP_LOG_WARNING ? NX_LOG_WARN
                                                      : NX_LOG_ERROR;
    nx_log(nl, "mcp-server", "%s", nx_buf_cstr(&b));
    if (s && s->log_level != MCP_LOG_NONE && level >= s->log_level) {
        nx_redact_append(&red, b.data ? b.data : "", b.len);
        json_t *params = json_pack("{s:s, s:s, s:s%}", "level", log_levels[level], "logger", "nexo",
                                   "data", red.data ? red.data : "", red.len);
        mcp_send(s, origin, nx_jsonrpc_notification_new("notifications/message", params), false);
    }
    nx_buf_cleanup(&b);
    nx_buf_cleanup(&red);
}

static void send_result(struct nx_mcp_session *s, void *origin, const json_t *id, json_t *result)
{
    mcp_send(s, origin, nx_jsonrpc_result_new(id, result), true);
}

/* ---- sessions ---- */

struct nx_mcp_session *nx_mcp_session_new(struct nx_mcp_server *srv, const struct nx_mcp_session_io *io)
{
    struct nx_mcp_session *s = nx_calloc(1, sizeof *s);
    s->srv = srv;
    s->io = *io;
    s->log_level = MCP_LOG_NONE;
    srv->sessions_opened++;
    s->next = srv->sessions;
    if (srv->sessions)
        srv->sessions->prev = s;
    srv->sessions = s;
    return s;
}

void nx_mcp_session_free(struct nx_mcp_session *s)
{
    if (!s)
        return;
    s->io.send = NULL;
    mcp_calls_abandon(s);
    if (s->prev)
        s->prev->next = s->next;
    else
        s->srv->sessions = s->next;
    if (s->next)
        s->next->prev = s->prev;
    if (s->log_level != MCP_LOG_NONE)
        mcp_logs_update(s->srv);
    free(s->protocol);
    free(s);
}

const char *nx_mcp_session_protocol(const struct nx_mcp_session *s)
{
    return s->protocol;
}

bool nx_mcp_session_accepts_batch(const struct nx_mcp_session *s)
{
    return batch_allowed(s->protocol);
}

size_t nx_mcp_session_in_flight(const struct nx_mcp_session *s)
{
    return s->n_calls;
}

/* ---- methods ---- */

static void on_initialize(struct nx_mcp_session *s, const json_t *id, const json_t *params, void *origin)
{
    const char *asked = json_string_value(json_object_get(params, "protocolVersion"));
    if (s->protocol) {
        mcp_send_error(s, origin, id, NX_JSONRPC_INVALID_REQUEST, "already initialized");
        return;
    }
    if (!json_is_object(params) || !asked) {
        mcp_send_error(s, origin, id, NX_JSONRPC_INVALID_PARAMS,
                       "initialize needs params.protocolVersion (a string)");
        return;
    }
    /* The client's version when we speak it, else our latest (the client then decides). */
    s->protocol = nx_strdup(nx_mcp_server_version_supported(asked) ? asked : NX_MCP_SERVER_PROTOCOL_LATEST);
    const json_t *ci = json_object_get(params, "clientInfo");
    const char *cname = json_string_value(json_object_get(ci, "name"));
    const char *cver = json_string_value(json_object_get(ci, "version"));
    nx_info("mcp-server", "session initialized: protocol %s, client %.64s %.32s", s->protocol,
            cname ? cname : "?", cver ? cver : "");
    json_t *caps = json_pack("{s:{s:b}, s:{}, s:{s:b, s:b}, s:{s:b}, s:{}}", "tools", "listChanged",
                             s->srv->watch != NULL,
                             "logging", "resources", "subscribe", 0, "listChanged", 0, "prompts",
                             "listChanged", 0, "completions");
    json_t *result = json_pack("{s:s, s:o, s:{s:s, s:s, s:s}, s:s}", "protocolVersion", s->protocol,
                               "capabilities", caps, "serverInfo", "name", s->srv->conf.name, "title",
                               "nexo gateway", "version", NEXO_VERSION, "instructions",
                               "Each ask_<agent> tool sends a message to a nexo agent and returns its "
                               "answer; other tools are nexo tools run in an agent's sandbox.");
    send_result(s, origin, id, result);
}

/* Cursors are "o<offset>"; anything else is -32602. */
static bool parse_cursor(const json_t *params, size_t *off)
{
    const json_t *c = json_object_get(params, "cursor");
    *off = 0;
    if (!c || json_is_null(c))
        return true;
    const char *v = json_string_value(c);
    if (!v || v[0] != 'o' || !v[1])
        return false;
    char *end = NULL;
    unsigned long long n = strtoull(v + 1, &end, 10);
    if (*end || n > 1000000)
        return false;
    *off = (size_t)n;
    return true;
}

static void on_tools_list(struct nx_mcp_session *s, const json_t *id, const json_t *params, void *origin)
{
    size_t off;
    if (!parse_cursor(params, &off)) {
        mcp_send_error(s, origin, id, NX_JSONRPC_INVALID_PARAMS, "invalid cursor");
        return;
    }
    json_t *all = mcp_tool_list(s->srv), *page = json_array();
    size_t n = json_array_size(all), ps = s->srv->conf.page_size;
    if (off > n || (off && off == n)) {
        json_decref(all);
        json_decref(page);
        mcp_send_error(s, origin, id, NX_JSONRPC_INVALID_PARAMS, "invalid cursor");
        return;
    }
    for (size_t i = off; i < n && i < off + ps; i++)
        json_array_append(page, json_array_get(all, i));
    json_t *result = json_pack("{s:o}", "tools", page);
    if (off + ps < n) {
        char next[32];
        snprintf(next, sizeof next, "o%zu", off + ps);
        json_object_set_new(result, "nextCursor", json_string(next));
    }
    json_decref(all);
    send_result(s, origin, id, result);
}

static void on_set_level(struct nx_mcp_session *s, const json_t *id, const json_t *params, void *origin)
{
    const char *lv = json_string_value(json_object_get(params, "level"));
    for (int i = 0; lv && i < (int)NX_ARRAY_LEN(log_levels); i++) {
        if (strcmp(lv, log_levels[i]) == 0) {
            s->log_level = i;
            mcp_logs_update(s->srv);
            send_result(s, origin, id, json_object());
            return;
        }
    }
    mcp_send_error(s, origin, id, NX_JSONRPC_INVALID_PARAMS,
                   "level must be one of debug, info, notice, warning, error, critical, alert, emergency");
}

/* Nothing is exported as resources or prompts: empty lists, and any cursor is invalid. */
static void on_empty_list(struct nx_mcp_session *s, const json_t *id, const json_t *params, void *origin,
                          const char *key)
{
    size_t off;
    if (!parse_cursor(params, &off) || off) {
        mcp_send_error(s, origin, id, NX_JSONRPC_INVALID_PARAMS, "invalid cursor");
        return;
    }
    send_result(s, origin, id, json_pack("{s:[]}", key));
}

static void on_complete(struct nx_mcp_session *s, const json_t *id, const json_t *params, void *origin)
{
    const json_t *ref = json_object_get(params, "ref"), *arg = json_object_get(params, "argument");
    const char *type = json_string_value(json_object_get(ref, "type"));
    if (!type || !json_is_string(json_object_get(arg, "name")) ||
        !json_is_string(json_object_get(arg, "value"))) {
        mcp_send_error(s, origin, id, NX_JSONRPC_INVALID_PARAMS,
                       "completion/complete needs ref {type, ...} and argument {name, value}");
        return;
    }
    send_result(s, origin, id, json_pack("{s:{s:[], s:i, s:b}}", "completion", "values", "total", 0,
                                         "hasMore", 0));
}

static const char *str_or(const json_t *o, const char *key, const char *def)
{
    const char *v = json_string_value(json_object_get(o, key));
    return v ? v : def;
}

static void on_request(struct nx_mcp_session *s, const struct nx_jsonrpc_msg *m, void *origin)
{
    const char *meth = m->method;
    const json_t *p = m->params;

    if (strcmp(meth, "initialize") == 0) {
        on_initialize(s, m->id, p, origin);
        return;
    }
    if (strcmp(meth, "ping") == 0) {
        send_result(s, origin, m->id, json_object());
        return;
    }
    if (!s->protocol) {
        mcp_send_error(s, origin, m->id, NX_JSONRPC_INVALID_REQUEST,
                       "not initialized: send initialize first");
        return;
    }
    if (p && !json_is_object(p)) {
        mcp_send_error(s, origin, m->id, NX_JSONRPC_INVALID_PARAMS, "params must be an object");
        return;
    }
    if (strcmp(meth, "tools/list") == 0)
        on_tools_list(s, m->id, p, origin);
    else if (strcmp(meth, "tools/call") == 0)
        mcp_call_start(s, m->id, p, origin);
    else if (strcmp(meth, "logging/setLevel") == 0)
        on_set_level(s, m->id, p, origin);
    else if (strcmp(meth, "resources/list") == 0)
        on_empty_list(s, m->id, p, origin, "resources");
    else if (strcmp(meth, "resources/templates/list") == 0)
        on_empty_list(s, m->id, p, origin, "resourceTemplates");
    else if (strcmp(meth, "prompts/list") == 0)
        on_empty_list(s, m->id, p, origin, "prompts");
    else if (strcmp(meth, "resources/read") == 0)
        mcp_send_error(s, origin, m->id, -32002, "Resource not found: %.200s", str_or(p, "uri", "(no uri)"));
    else if (strcmp(meth, "prompts/get") == 0)
        mcp_send_error(s, origin, m->id, NX_JSONRPC_INVALID_PARAMS, "Unknown prompt: %.200s",
                       str_or(p, "name", "(no name)"));
    else if (strcmp(meth, "completion/complete") == 0)
        on_complete(s, m->id, p, origin);
    else
        mcp_send_error(s, origin, m->id, NX_JSONRPC_METHOD_NOT_FOUND, "Method not found: %.200s", meth);
}

static void on_notification(struct nx_mcp_session *s, const struct nx_jsonrpc_msg *m)
{
    if (strcmp(m->method, "notifications/initialized") == 0) {
        s->is_initialized = true;
    } else if (strcmp(m->method, "notifications/cancelled") == 0) {
        const json_t *rid = json_object_get(m->params, "requestId");
        const char *why = json_string_value(json_object_get(m->params, "reason"));
        if (rid && !mcp_call_cancel(s, rid, why))
            nx_debug("mcp-server", "notifications/cancelled for a request not in flight: ignored");
    } else {
        nx_debug("mcp-server", "notification %.100s ignored", m->method);
    }
}

static size_t handle_one(struct nx_mcp_session *s, const json_t *v, void *origin)
{
    struct nx_jsonrpc_msg m;
    char err[200];

    if (nx_jsonrpc_classify(v, &m, err, sizeof err) < 0) {
        /* Echo a usable id when there is one. */
        const json_t *id = json_object_get(v, "id");
        if (!json_is_string(id) && !json_is_integer(id))
            id = NULL;
        mcp_send_error(s, origin, id, NX_JSONRPC_INVALID_REQUEST, "Invalid Request: %s", err);
        return 1;
    }
    switch (m.kind) {
    case NX_JSONRPC_REQUEST:
        on_request(s, &m, origin);
        return 1;
    case NX_JSONRPC_NOTIFICATION:
        on_notification(s, &m);
        return 0;
    default: /* a response: we send no requests, so nothing waits for it */
        nx_debug("mcp-server", "unexpected response from the client ignored");
        return 0;
    }
}

size_t nx_mcp_session_feed_json(struct nx_mcp_session *s, const json_t *v, void *origin)
{
    if (!json_is_array(v))
        return handle_one(s, v, origin);
    if (!batch_allowed(s->protocol)) {
        mcp_send_error(s, origin, NULL, NX_JSONRPC_INVALID_REQUEST,
                       "JSON-RPC batches are not supported in protocol version %s",
                       s->protocol ? s->protocol : "(not initialized)");
        return 1;
    }
    if (json_array_size(v) == 0) {
        mcp_send_error(s, origin, NULL, NX_JSONRPC_INVALID_REQUEST, "empty batch");
        return 1;
    }
    size_t n = 0, i;
    const json_t *el;
    json_array_foreach(v, i, el) n += handle_one(s, el, origin);
    return n;
}

size_t nx_mcp_session_feed(struct nx_mcp_session *s, const char *text, size_t len, void *origin)
{
    char err[200];
    json_t *v = nx_jsonrpc_load(text, len, err, sizeof err);
    if (!v) {
        mcp_send_error(s, origin, NULL, NX_JSONRPC_PARSE_ERROR, "Parse error: %s", err);
        return 1;
    }
    size_t n = nx_mcp_session_feed_json(s, v, origin);
    json_decref(v);
    return n;
}

void nx_mcp_session_reject_oversize(struct nx_mcp_session *s, void *origin)
{
    mcp_send_error(s, origin, NULL, NX_JSONRPC_INVALID_REQUEST,
                   "message too large (the limit is %llu bytes)", (unsigned long long)s->srv->conf.max_frame);
}

bool nx_mcp_is_initialize(const json_t *v)
{
    if (json_is_array(v)) {
        size_t i;
        const json_t *el;
        json_array_foreach(v, i, el) {
            if (nx_mcp_is_initialize(el))
                return true;
        }
        return false;
    }
    const char *m = json_string_value(json_object_get(v, "method"));
    return m && strcmp(m, "initialize") == 0 && json_object_get(v, "id");
}
