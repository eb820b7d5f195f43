#include <stdlib.h>
#include <string.h>

#include "agent/agent_internal.h"
#include "agent/router.h"
#include "core/alloc.h"
#include "core/buf.h"
#include "core/error.h"
#include "core/log.h"
#include "core/metrics.h"

struct nx_router {
    struct nx_bus *bus;
    struct nx_agents *agents;
    struct nx_bus_sub *sub;
    struct reply *replies; /* turns in flight, so free can detach them */
};

struct reply {
    struct reply *next, *prev;
    struct nx_router *r;
    char *subject;     /* plugin.outbound.<plugin>[.<instance>] */
    char *agent;
    char *session_key;
    char *to;
    char *reply_to;    /* the inbound msg_id, or NULL */
};

static struct nx_metric *m_routed;

static void reply_free(struct reply *rp)
{
    if (rp->r) {
        if (rp->prev)
            rp->prev->next = rp->next;
        else
            rp->r->replies = rp->next;
        if (rp->next)
            rp->next->prev = rp->prev;
    }
    free(rp->subject);
    free(rp->agent);
    free(rp->session_key);
    free(rp->to);
    free(rp->reply_to);
    free(rp);
}

static void on_done(int rc, const struct nx_turn_result *res, void *udata)
{
    struct reply *rp = udata;
    const char *text = res->text;
    if (rc == NX_ECONFIG && res->error_message)
        text = res->error_message; /* the clear "add a key" message, as on the API */
    else if (rc < 0) {
        nx_warn("router", "agent %s: turn for %s failed: %s", rp->agent, rp->session_key,
                res->error_message ? res->error_message : nx_strerror(rc));
        reply_free(rp);
        return;
    }
    if (rp->r && text && *text) {
        json_t *payload = json_pack("{s:s, s:s, s:s, s:s?}", "to", rp->to, "text", text,
                                    "session_id", rp->session_key, "reply_to", rp->reply_to);
        struct nx_envelope *env = NULL;
        int prc = nx_envelope_new(rp->subject, rp->agent, rp->session_key, payload, &env);
        if (prc == 0)
            prc = nx_bus_publish(rp->r->bus, rp->subject, env);
        if (prc < 0)
            nx_error("router", "agent %s: reply to %s not published: %s", rp->agent, rp->subject,
                     nx_strerror(prc));
        nx_envelope_free(env);
        json_decref(payload);
    }
    reply_free(rp);
}

/* "plugin.inbound.<plugin>[.<instance>]": plugin and instance (NULL) into out buffers. */
static int split_topic(const char *subject, char *plugin, size_t plen, char *instance, size_t ilen,
                       bool *has_instance)
{
    static const char prefix[] = "plugin.inbound.";
    if (strncmp(subject, prefix, sizeof prefix - 1) != 0)
        return NX_EINVAL;
    const char *p = subject + sizeof prefix - 1;
    const char *dot = strchr(p, '.');
    size_t n = dot ? (size_t)(dot - p) : strlen(p);
    if (n == 0 || n >= plen)
        return NX_EINVAL;
    memcpy(plugin, p, n);
    plugin[n] = '\0';
    *has_instance = dot != NULL;
    if (dot && snprintf(instance, ilen, "%s", dot + 1) >= (int)ilen)
        return NX_EINVAL;
    return 0;
}

static const struct agent_rt *route(const struct generation *g, const char *plugin,
                                    const char *instance, bool has_instance)
{
    for (size_t i = 0; i < g->nagents; i++) {
        const struct nx_agent_conf *c = g->agents[i].conf;
        for (size_t k = 0; k < c->n_inbound_bindings; k++) {
            const struct nx_binding_conf *b = &c->inbound_bindings[k];
            if (strcmp(b->plugin, plugin) != 0)
                continue;
            if (has_instance ? (b->instance && strcmp(b->instance, instance) == 0) : !b->instance)
                return &g->agents[i];
        }
    }
    return NULL;
}

static int on_inbound(struct nx_bus *bus, struct nx_bus_msg *msg, void *arg)
{
    struct nx_router *r = arg;
    char plugin[64], instance[128] = "";
    bool has_instance = false;
    (void)bus;
    if (split_topic(msg->subject, plugin, sizeof plugin, instance, sizeof instance, &has_instance) < 0)
        return nx_bus_fail(msg, "not a plugin.inbound.<plugin>[.<instance>] subject");
    const json_t *p = msg->env->payload;
    const char *kind = json_string_value(json_object_get(p, "kind"));
    const char *text = json_string_value(json_object_get(p, "text"));
    const char *from = json_string_value(json_object_get(p, "from"));
    const json_t *chat_j = json_object_get(p, "chat");
    char chat_num[32];
    const char *chat = json_string_value(chat_j);
    if (!chat && json_is_integer(chat_j)) {
        snprintf(chat_num, sizeof chat_num, "%lld", (long long)json_integer_value(chat_j));
        chat = chat_num;
    }
    if ((kind && strcmp(kind, "message") != 0) || !text || !*text)
        return 0; /* not a message with text: nothing for an agent */
    const char *peer = chat ? chat : from;
    if (!peer)
        return nx_bus_fail(msg, "inbound message without \"chat\" or \"from\"");

    const struct agent_rt *ag = route(r->agents->gen, plugin, instance, has_instance);
    if (!ag) {
        nx_debug("router", "%s: no agent binding matches: dropped", msg->subject);
        return 0;
    }
    struct nx_buf channel = NX_BUF_INIT, key = NX_BUF_INIT, subject = NX_BUF_INIT;
    nx_buf_printf(&channel, "%s%s%s", plugin, has_instance ? "." : "", instance);
    nx_buf_printf(&key, "agent:%s:%s:%s", ag->conf->id, nx_buf_cstr(&channel), peer);
    nx_buf_printf(&subject, "plugin.outbound.%s", nx_buf_cstr(&channel));

    struct reply *rp = nx_calloc(1, sizeof *rp);
    rp->r = r;
    rp->subject = nx_buf_steal(&subject);
    rp->agent = nx_strdup(ag->conf->id);
    rp->session_key = nx_buf_steal(&key);
    rp->to = nx_strdup(peer);
    const json_t *mid = json_object_get(p, "msg_id");
    char mid_num[32];
    if (json_is_string(mid))
        rp->reply_to = nx_strdup(json_string_value(mid));
    else if (json_is_integer(mid)) {
        snprintf(mid_num, sizeof mid_num, "%lld", (long long)json_integer_value(mid));
        rp->reply_to = nx_strdup(mid_num);
    }
    rp->next = r->replies;
    if (r->replies)
        r->replies->prev = rp;
    r->replies = rp;

    json_t *msgs = json_pack("[{s:s, s:[{s:s, s:s}]}]", "role", "user", "content", "type", "text",
                             "text", text);
    struct nx_turn_opts o = {
        .agent_id = rp->agent,
        .session_key = rp->session_key,
        .channel = nx_buf_cstr(&channel),
        .messages = msgs,
        .temperature = -1,
        .on_done = on_done,
        .udata = rp,
    };
    nx_turn_start(r->agents, &o);
    const char *const lv[] = {rp->agent, plugin};
    nx_counter_add(m_routed, lv, 1);
    json_decref(msgs);
    nx_buf_cleanup(&channel);
    return 0;
}

int nx_router_new(struct nx_bus *bus, struct nx_agents *agents, struct nx_router **out)
{
    static const char *const labels[] = {"agent", "plugin", NULL};
    if (!m_routed)
        m_routed = nx_metric_counter("nexo_router_messages_total",
                                     "inbound channel messages routed to an agent", labels);
    struct nx_router *r = nx_calloc(1, sizeof *r);
    r->bus = bus;
    r->agents = agents;
    int rc = nx_bus_queue_subscribe(bus, "plugin.inbound.>", "agents", on_inbound, r, &r->sub);
    if (rc < 0) {
        free(r);
        return rc;
    }
    *out = r;
    return 0;
}

void nx_router_free(struct nx_router *r)
{
    if (!r)
        return;
    nx_bus_unsubscribe(r->bus, r->sub);
    for (struct reply *rp = r->replies; rp; rp = rp->next)
        rp->r = NULL; /* their turns still end; the replies go nowhere */
    free(r);
}
