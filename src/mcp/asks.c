#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/agent.h"
#include "core/alloc.h"
#include "core/buf.h"
#include "core/clock.h"
#include "core/error.h"
#include "core/log.h"
#include "core/metrics.h"
#include "mcp/asks.h"
#include "mcp/jsonrpc.h"

/* Requests an MCP server makes of nexo (see asks.h). A sampling request becomes one stateless
 * turn of the configured agent with no tools offered (so a sampled answer never calls back into
 * a server), its max_tokens capped; the turn's text goes back as the assistant message. Each
 * sampling in flight is a `struct ask` in the server's list, so a client that goes away or a
 * server's notifications/cancelled stops the turn. */

#define MAX_TOKENS_CAP_DEFAULT 4096
#define RATE_PER_MINUTE_DEFAULT 10

struct ask {
    struct nx_mcp_asks *a;
    struct ask *prev, *next;
    struct nx_mcp_client *c;
    json_t *id;
    struct nx_turn *turn;
    uint64_t start_ns;
};

struct nx_mcp_asks {
    char *server;
    bool has_sampling;
    char *agent; /* NULL = the first agent */
    uint32_t max_tokens_cap;
    uint32_t rate_per_minute;
    uint64_t window_start_ms;
    uint32_t window_count;
    bool has_elicitation; /* a policy was configured: declared */
    int elicit;
    struct nx_agents *agents;
    struct ask *asks;
};

static void count(const char *name, const char *help, const char *server, const char *label, const char *v)
{
    const char *labels[] = {"server", label, NULL};
    const char *values[] = {server, v};

    nx_counter_add(nx_metric_counter(name, help, labels), values, 1);
}

static uint32_t uint_of(const json_t *v, uint32_t def, uint32_t max)
{
    if (!json_is_integer(v) || json_integer_value(v) < 1)
        return def;
    return json_integer_value(v) > (json_int_t)max ? max : (uint32_t)json_integer_value(v);
}

static bool is_listed(const json_t *arr, const char *name)
{
    for (size_t i = 0; json_is_array(arr) && i < json_array_size(arr); i++) {
        const char *s = json_string_value(json_array_get(arr, i));

        if (s && strcmp(s, name) == 0)
            return true;
    }
    return false;
}

struct nx_mcp_asks *nx_mcp_asks_new(const char *server, const json_t *server_extra, const json_t *mcp_extra)
{
    struct nx_mcp_asks *a = nx_calloc(1, sizeof *a);
    const json_t *ss = json_object_get(server_extra, "sampling");
    const json_t *gs = json_object_get(mcp_extra, "sampling");
    const json_t *ps = json_object_get(json_object_get(gs, "per_server"), server);
    const json_t *el = json_object_get(server_extra, "elicitation");
    const char *agent = NULL;

    a->server = nx_strdup(server ? server : "");
    /* the server's own `sampling: {enabled, agent, max_tokens_cap, rate_limit_per_minute}` wins;
     * else nexo-rs's top-level block: enabled, minus deny_servers, per_server overrides */
    if (json_is_boolean(json_object_get(ss, "enabled")))
        a->has_sampling = json_is_true(json_object_get(ss, "enabled"));
    else
        a->has_sampling = json_is_true(json_object_get(gs, "enabled")) &&
                          !is_listed(json_object_get(gs, "deny_servers"), a->server) &&
                          !json_is_false(json_object_get(ps, "enabled"));
    agent = json_string_value(json_object_get(ss, "agent"));
    if (!agent)
        agent = json_string_value(json_object_get(gs, "agent"));
    a->agent = agent && agent[0] ? nx_strdup(agent) : NULL;
    a->max_tokens_cap =
        uint_of(json_object_get(gs, "global_max_tokens_cap"), MAX_TOKENS_CAP_DEFAULT, 1u << 20);
    a->max_tokens_cap = uint_of(json_object_get(ps, "max_tokens_cap"), a->max_tokens_cap, a->max_tokens_cap);
    a->max_tokens_cap = uint_of(json_object_get(ss, "max_tokens_cap"), a->max_tokens_cap, a->max_tokens_cap);
    a->rate_per_minute =
        uint_of(json_object_get(ps, "rate_limit_per_minute"), RATE_PER_MINUTE_DEFAULT, 100000);
    a->rate_per_minute = uint_of(json_object_get(ss, "rate_limit_per_minute"), a->rate_per_minute, 100000);
    if (el) {
        const char *p = json_string_value(el);

        a->has_elicitation = true;
        if (p && strcmp(p, "defaults") == 0)
            a->elicit = NX_MCP_ELICIT_DEFAULTS;
        else if (p && strcmp(p, "cancel") == 0)
            a->elicit = NX_MCP_ELICIT_CANCEL;
        else if (!p || strcmp(p, "decline") != 0)
            nx_warn("mcp", "server %s: elicitation must be decline, cancel or defaults; declining",
                    a->server);
    }
    return a;
}

static void ask_unlink(struct ask *k)
{
    struct nx_mcp_asks *a = k->a;

    if (!a)
        return;
    if (k->prev)
        k->prev->next = k->next;
    else
        a->asks = k->next;
    if (k->next)
        k->next->prev = k->prev;
    k->prev = k->next = NULL;
    k->a = NULL;
}

static void ask_free(struct ask *k)
{
    ask_unlink(k);
    json_decref(k->id);
    free(k);
}

/* No answer will be sent: the turn is cancelled (its on_done frees k, now or later). */
static void ask_stop(struct ask *k)
{
    struct nx_turn *t = k->turn;

    ask_unlink(k);
    k->c = NULL;
    if (t)
        nx_turn_cancel(t);
    else
        ask_free(k);
}

void nx_mcp_asks_free(struct nx_mcp_asks *a)
{
    if (!a)
        return;
    while (a->asks)
        ask_stop(a->asks);
    free(a->server);
    free(a->agent);
    free(a);
}

void nx_mcp_asks_set_agents(struct nx_mcp_asks *a, struct nx_agents *agents)
{
    if (a)
        a->agents = agents;
}

void nx_mcp_asks_declare(const struct nx_mcp_asks *a, json_t *caps)
{
    if (a && a->has_sampling)
        json_object_set_new(caps, "sampling", json_object());
    if (a && a->has_elicitation)
        json_object_set_new(caps, "elicitation", json_object());
}

/* ---- elicitation ----------------------------------------------------------------------- */

static bool in_enum(const json_t *def, const json_t *en)
{
    for (size_t i = 0; i < json_array_size(en); i++) {
        if (json_equal(def, json_array_get(en, i)))
            return true;
    }
    return false;
}

json_t *nx_mcp_elicit_defaults(const json_t *schema)
{
    const json_t *props = json_object_get(schema, "properties");
    const json_t *req = json_object_get(schema, "required");
    json_t *out = json_object();
    const char *key;
    const json_t *p;

    json_object_foreach ((json_t *)props, key, p) {
        const json_t *def = json_object_get(p, "default");
        const char *type = json_string_value(json_object_get(p, "type"));
        const json_t *en = json_object_get(p, "enum");
        bool ok = false;

        if (!def)
            continue;
        if (type && strcmp(type, "string") == 0)
            ok = json_is_string(def);
        else if (type && strcmp(type, "integer") == 0)
            ok = json_is_integer(def);
        else if (type && strcmp(type, "number") == 0)
            ok = json_is_number(def);
        else if (type && strcmp(type, "boolean") == 0)
            ok = json_is_boolean(def);
        else if (type && strcmp(type, "array") == 0)
            ok = json_is_array(def);
        if (ok && json_is_array(en) && !in_enum(def, en))
            ok = false;
        if (ok)
            json_object_set(out, key, (json_t *)def);
    }
    for (size_t i = 0; json_is_array(req) && i < json_array_size(req); i++) {
        const char *r = json_string_value(json_array_get(req, i));

        if (!r || !json_object_get(out, r)) {
            json_decref(out);
            return NULL;
        }
    }
    return out;
}

static void elicit(struct nx_mcp_asks *a, struct nx_mcp_client *c, const json_t *id, const json_t *params)
{
    const char *msg = json_string_value(json_object_get(params, "message"));
    const char *mode = json_string_value(json_object_get(params, "mode"));
    json_t *content = NULL;
    const char *action = "decline";

    if (a->elicit == NX_MCP_ELICIT_CANCEL) {
        action = "cancel";
    } else if (a->elicit == NX_MCP_ELICIT_DEFAULTS && (!mode || strcmp(mode, "form") == 0) &&
               (content = nx_mcp_elicit_defaults(json_object_get(params, "requestedSchema")))) {
        action = "accept";
    }
    nx_info("mcp", "server %s: elicitation \"%.200s\": %s", a->server, msg ? msg : "", action);
    count("nexo_mcp_elicitations_total", "elicitation/create requests from MCP servers, by answer.",
          a->server, "action", action);
    if (content)
        nx_mcp_client_reply(c, id, json_pack("{s:s, s:o}", "action", action, "content", content));
    else
        nx_mcp_client_reply(c, id, json_pack("{s:s}", "action", action));
}

/* ---- sampling -------------------------------------------------------------------------- */

static void describe(struct nx_buf *b, const json_t *block)
{
    const char *type = json_string_value(json_object_get(block, "type"));
    const char *mime = json_string_value(json_object_get(block, "mimeType"));
    const char *data = json_string_value(json_object_get(block, "data"));

    if (type && strcmp(type, "text") == 0 && json_is_string(json_object_get(block, "text")))
        nx_buf_puts(b, json_string_value(json_object_get(block, "text")));
    else
        nx_buf_printf(b, "[%s: %s, %zu bytes of base64]", type ? type : "content", mime ? mime : "?",
                      data ? strlen(data) : 0);
}

json_t *nx_mcp_sampling_messages(const json_t *messages, char *err, size_t errlen)
{
    json_t *out = json_array();

    if (!json_is_array(messages) || json_array_size(messages) == 0) {
        snprintf(err, errlen, "messages must be a non-empty array");
        goto fail;
    }
    for (size_t i = 0; i < json_array_size(messages); i++) {
        const json_t *m = json_array_get(messages, i);
        const char *role = json_string_value(json_object_get(m, "role"));
        const json_t *content = json_object_get(m, "content");
        struct nx_buf b = NX_BUF_INIT;

        if (!role || (strcmp(role, "user") != 0 && strcmp(role, "assistant") != 0)) {
            snprintf(err, errlen, "messages[%zu]: role must be user or assistant", i);
            goto fail;
        }
        if (json_is_object(content)) {
            describe(&b, content);
        } else if (json_is_array(content)) {
            for (size_t j = 0; j < json_array_size(content); j++) {
                if (j)
                    nx_buf_putc(&b, '\n');
                describe(&b, json_array_get(content, j));
            }
        } else {
            snprintf(err, errlen, "messages[%zu]: content must be an object or an array", i);
            goto fail;
        }
        json_array_append_new(out, json_pack("{s:s, s:[{s:s, s:s}]}", "role", role, "content", "type", "text",
                                             "text", nx_buf_cstr(&b)));
        nx_buf_cleanup(&b);
    }
    return out;
fail:
    json_decref(out);
    return NULL;
}

static const char *stop_reason(enum nx_llm_stop s)
{
    switch (s) {
    case NX_LLM_STOP_MAX_TOKENS:
        return "maxTokens";
    case NX_LLM_STOP_STOP_SEQUENCE:
        return "stopSequence";
    default:
        return "endTurn";
    }
}

static void on_turn_done(int rc, const struct nx_turn_result *res, void *udata)
{
    struct ask *k = udata;
    struct nx_mcp_asks *a = k->a;
    char msg[400];

    k->turn = NULL;
    if (!a) { /* stopped: nobody waits for the answer */
        ask_free(k);
        return;
    }
    if (k->c && rc == 0) {
        nx_info("mcp", "server %s: sampling answered in %.2f s (%llu output tokens)", a->server,
                (double)(nx_mono_ns() - k->start_ns) / 1e9, (unsigned long long)res->usage.output_tokens);
        nx_mcp_client_reply(k->c, k->id,
                            json_pack("{s:s, s:{s:s, s:s}, s:s, s:s}", "role", "assistant", "content", "type",
                                      "text", "text", res->text ? res->text : "", "model",
                                      res->model ? res->model : "", "stopReason", stop_reason(res->stop)));
    } else if (k->c) {
        snprintf(msg, sizeof msg, "sampling failed: %.300s",
                 res && res->error_message ? res->error_message : nx_strerror(rc));
        nx_warn("mcp", "server %s: %s", a->server, msg);
        nx_mcp_client_reply_error(k->c, k->id, NX_JSONRPC_INTERNAL_ERROR, msg);
    }
    count("nexo_mcp_sampling_requests_total", "sampling/createMessage requests from MCP servers.", a->server,
          "outcome",
          rc == 0              ? "ok"
          : rc == NX_ECANCELED ? "cancelled"
                               : "error");
    ask_free(k);
}

static const char *pick_agent(struct nx_mcp_asks *a, json_t **list)
{
    if (a->agent)
        return a->agent;
    *list = nx_agents_list(a->agents);
    return json_string_value(json_object_get(json_array_get(*list, 0), "id"));
}

static void sample(struct nx_mcp_asks *a, struct nx_mcp_client *c, const json_t *id, const json_t *params)
{
    uint64_t now = nx_mono_ms();
    const json_t *mt = json_object_get(params, "maxTokens");
    const json_t *temp = json_object_get(params, "temperature");
    json_t *msgs, *list = NULL;
    struct nx_turn_opts o;
    const char *agent;
    struct ask *k;
    char err[200];

    if (now - a->window_start_ms >= 60000 || a->window_start_ms == 0) {
        a->window_start_ms = now;
        a->window_count = 0;
    }
    if (++a->window_count > a->rate_per_minute) {
        count("nexo_mcp_sampling_requests_total", "sampling/createMessage requests from MCP servers.",
              a->server, "outcome", "rate_limited");
        nx_mcp_client_reply_error(c, id, NX_JSONRPC_INTERNAL_ERROR, "sampling rate limit reached; try later");
        return;
    }
    if (!(msgs = nx_mcp_sampling_messages(json_object_get(params, "messages"), err, sizeof err))) {
        nx_mcp_client_reply_error(c, id, NX_JSONRPC_INVALID_PARAMS, err);
        return;
    }
    if (!a->agents || !(agent = pick_agent(a, &list)) || !nx_agents_has(a->agents, agent)) {
        nx_mcp_client_reply_error(c, id, NX_JSONRPC_INTERNAL_ERROR, "sampling: no agent to answer it");
        goto out;
    }
    k = nx_calloc(1, sizeof *k);
    k->a = a;
    k->c = c;
    k->id = json_deep_copy(id);
    k->start_ns = nx_mono_ns();
    k->next = a->asks;
    if (a->asks)
        a->asks->prev = k;
    a->asks = k;
    memset(&o, 0, sizeof o);
    o.agent_id = agent;
    o.channel = "mcp";
    o.messages = msgs;
    o.system_extra = json_string_value(json_object_get(params, "systemPrompt"));
    o.max_tokens = uint_of(mt, a->max_tokens_cap, a->max_tokens_cap);
    o.temperature = json_is_number(temp) ? json_number_value(temp) : -1;
    o.no_tools = true;
    o.on_done = on_turn_done;
    o.udata = k;
    nx_info("mcp", "server %s: sampling through agent %s (max %u tokens)", a->server, agent, o.max_tokens);
    k->turn = nx_turn_start(a->agents, &o);
out:
    json_decref(msgs);
    json_decref(list);
}

int nx_mcp_asks_handle(struct nx_mcp_asks *a, struct nx_mcp_client *c, const char *method, const json_t *id,
                       const json_t *params)
{
    if (!a)
        return NX_ENOTSUP;
    if (strcmp(method, "elicitation/create") == 0) {
        elicit(a, c, id, params);
        return 0;
    }
    if (strcmp(method, "sampling/createMessage") == 0 && a->has_sampling) {
        sample(a, c, id, params);
        return 0;
    }
    return NX_ENOTSUP;
}

void nx_mcp_asks_cancel(struct nx_mcp_asks *a, struct nx_mcp_client *c, const json_t *id)
{
    for (struct ask *k = a ? a->asks : NULL; k; k = k->next) {
        if (k->c == c && json_equal(k->id, id)) {
            nx_info("mcp", "server %s: sampling cancelled by the server", a->server);
            ask_stop(k);
            return;
        }
    }
}

void nx_mcp_asks_forget_client(struct nx_mcp_asks *a, struct nx_mcp_client *c)
{
    struct ask *next;

    for (struct ask *k = a ? a->asks : NULL; k; k = next) {
        next = k->next;
        if (k->c == c)
            k->c = NULL; /* the turn runs out; nothing is sent */
    }
}
