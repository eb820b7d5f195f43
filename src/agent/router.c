#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "agent/agent_internal.h"
#include "agent/router.h"
#include "core/alloc.h"
#include "core/buf.h"
#include "core/error.h"
#include "core/log.h"
#include "core/breaker.h"
#include "core/clock.h"
#include "core/metrics.h"
#include "llm/media.h"
#include "runtime/runtime.h"
#include "store/ledger.h"

struct nx_router {
    struct nx_bus *bus;
    struct nx_agents *agents;
    struct nx_bus_sub *sub;
    struct reply *replies; /* turns in flight, so free can detach them */
    /* the exactly-once ledger and the per-agent breakers (section below) */
    struct nx_store *store;   /* NULL: no ledger */
    struct gate *gates;
    uint64_t seq;
    struct resume *resume;    /* the resume read in flight */
    nx_router_gate_fn gate; /* asked before a message becomes a turn (sender rate limit) */
    void *gate_arg;
    nx_router_dispatch_fn dispatch; /* gateway role: publish routed work instead of a turn */
    void *dispatch_arg;
    struct nx_bus_sub *out_sub;     /* gateway role: replies, which mark their events answered */
};

struct reply {
    struct reply *next, *prev;
    struct nx_router *r;
    char *subject;     /* plugin.outbound.<plugin>[.<instance>] */
    char *agent;
    char *session_key;
    char *to;
    char *reply_to;    /* the inbound msg_id, or NULL */
    /* the ledger and breaker path */
    struct reply *qnext;   /* a gate's queue */
    struct gate *g;
    int stage;             /* enum stage */
    uint64_t seq;
    char *id;              /* the inbound envelope id */
    char *in_subject;
    char *data;            /* the inbound envelope text */
    char *text;            /* the user's text */
    char *channel;         /* <plugin>[.<instance>] */
    char *plugin;
    char *inst_key;        /* the instance, or "default" */
    struct nx_timer *retry;
    struct nx_envelope *out_env;
};

static void router_admit(struct nx_router *r, struct reply *rp);
static void turn_finished(struct reply *rp, int rc, const char *text, const char *error);
static bool turn_superseded(struct reply *rp, int rc, const struct nx_turn_result *res);

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
    free(rp->id);
    free(rp->in_subject);
    free(rp->data);
    free(rp->text);
    free(rp->channel);
    free(rp->plugin);
    free(rp->inst_key);
    if (rp->retry)
        nx_timer_cancel(rp->retry);
    nx_envelope_free(rp->out_env);
    free(rp);
}

static void on_done(int rc, const struct nx_turn_result *res, void *udata)
{
    struct reply *rp = udata;
    const char *text = res->text;
    if (turn_superseded(rp, rc, res)) /* interrupted, or merged into another turn */
        return;
    if ((rc == NX_ECONFIG || res->is_user_facing) && res->error_message) {
        text = res->error_message; /* the clear "add a key" / "budget used up" message */
        rc = 0;
    }
    turn_finished(rp, rc, text, res->error_message); /* the ledger and breaker section below */
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

/* An event the router has nothing to do for is settled in the ledger as dropped, so the next
 * start does not publish it again (and the pruner deletes it). Returns 0: the bus acks it. */
static int drop(struct nx_router *r, const struct nx_bus_msg *msg, const char *why)
{
    if (r->store && msg->env && msg->env->id[0])
        nx_ledger_inbound_settle(r->store, msg->env->id, NX_LEDGER_DROPPED, why, NULL, NULL);
    return 0;
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
    char button[320];
    if (kind && strcmp(kind, "button") == 0) { /* a button press: the turn says which */
        const char *data = json_string_value(json_object_get(p, "data"));
        snprintf(button, sizeof button, "[button] %s", data ? data : "");
        text = button;
        kind = NULL;
    }
    if ((kind && strcmp(kind, "message") != 0) || !text || !*text)
        return drop(r, msg, "not a message with text"); /* nothing for an agent */
    const char *peer = chat ? chat : from;
    if (!peer)
        return nx_bus_fail(msg, "inbound message without \"chat\" or \"from\"");

    const struct agent_rt *ag = route(r->agents->gen, plugin, instance, has_instance);
    if (!ag) {
        nx_debug("router", "%s: no agent binding matches: dropped", msg->subject);
        return drop(r, msg, "no agent binding matches");
    }
    if (r->gate) {
        const struct nx_router_gate_in gin = {
            .agent = ag->conf, .plugin = plugin, .instance = has_instance ? instance : NULL,
            .sender = from ? from : peer, .peer = peer, .payload = p,
        };
        if (!r->gate(&gin, r->gate_arg))
            return drop(r, msg, "refused by the sender rate limit");
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
    rp->id = nx_strdup(msg->env->id);
    rp->in_subject = nx_strdup(msg->subject);
    rp->data = nx_strndup(msg->data, msg->len);
    rp->text = nx_strdup(text);
    rp->channel = nx_buf_steal(&channel);
    rp->plugin = nx_strdup(plugin);
    rp->inst_key = nx_strdup(has_instance ? instance : "default");
    router_admit(r, rp); /* ledger claim, then the agent's breaker, then the turn */
    return 0;
}

/* ---- the exactly-once ledger and the per-agent circuit breakers (docs/bus.md) ----
 *
 * An admitted event is claimed in the ledger (received -> routed; a redelivery of an event
 * routed or answered already is dropped here), then waits in its agent's gate: a turn starts
 * when the agent's breaker lets it and no earlier event of its session is failing or waiting
 * for its retry (the session lane orders the rest). A successful turn records its
 * reply (idempotency key "<event id>:0") pending together with the event's `answered`, then
 * publishes it; a failed one counts against the breaker and is retried after a short backoff,
 * until broker.dlq.max_attempts turns failed: then the event is dead and in dead_letters for
 * this subscriber, so `nexo dlq retry` redelivers it here. While the breaker is open events
 * wait (recorded in the ledger); after circuit_breaker.open_secs one probe turn runs (the
 * oldest waiting event): success closes the breaker and the rest follow. */

enum stage { ST_NEW, ST_CLAIM, ST_WAIT, ST_TURN, ST_FAILING, ST_RETRY, ST_ANSWER };

struct gate {
    struct gate *next;
    struct nx_router *r;
    char *agent;
    struct nx_breaker br;
    struct reply *head;      /* waiting, by seq */
    struct nx_timer *timer;  /* the end of the cool-down */
};

struct resume {
    struct nx_router *r;     /* NULL once the router is freed */
};

static struct nx_metric *m_breaker, *m_redelivered, *m_dead;

static void gate_pump(struct gate *g);

static void register_ledger_metrics(void)
{
    static const char *const labels[] = {"agent", NULL};
    if (m_breaker)
        return;
    m_breaker = nx_metric_gauge("nexo_agent_breaker_state",
                                "per-agent circuit breaker: 0 closed, 1 open, 2 half-open", labels);
    m_redelivered = nx_metric_counter("nexo_router_redeliveries_total",
                                      "inbound events dropped as routed or answered already", labels);
    m_dead = nx_metric_counter("nexo_router_dead_letters_total",
                               "inbound events whose turn failed broker.dlq.max_attempts times", labels);
}

static void gate_publish_state(struct gate *g)
{
    const char *const lv[] = {g->agent};
    nx_gauge_set(m_breaker, lv, (double)g->br.state);
}

/* The agent's circuit_breaker settings (agents.yaml), as the current config has them. */
static struct nx_breaker_conf breaker_conf(const struct nx_router *r, const char *agent)
{
    const struct agent_rt *ag = gen_agent(r->agents->gen, agent);
    struct nx_breaker_conf bc = {.failure_threshold = 5, .success_threshold = 1,
                                 .initial_backoff_ms = 30000};
    if (ag && ag->conf->circuit_breaker.failure_threshold) {
        bc.failure_threshold = ag->conf->circuit_breaker.failure_threshold;
        bc.initial_backoff_ms = ag->conf->circuit_breaker.open_secs * 1000;
    }
    bc.max_backoff_ms = bc.initial_backoff_ms * 8;
    return bc;
}

static struct gate *gate_get(struct nx_router *r, const char *agent)
{
    for (struct gate *g = r->gates; g; g = g->next) {
        if (strcmp(g->agent, agent) == 0) {
            struct nx_breaker_conf bc = breaker_conf(r, agent); /* a reload applies from now */
            if (bc.failure_threshold != g->br.conf.failure_threshold ||
                bc.initial_backoff_ms != g->br.conf.initial_backoff_ms) {
                g->br.conf = bc;
                if (g->br.state == NX_BREAKER_CLOSED)
                    g->br.backoff_ms = bc.initial_backoff_ms;
            }
            return g;
        }
    }
    struct gate *g = nx_calloc(1, sizeof *g);
    struct nx_breaker_conf bc = breaker_conf(r, agent);
    nx_breaker_init(&g->br, &bc);
    g->r = r;
    g->agent = nx_strdup(agent);
    g->next = r->gates;
    r->gates = g;
    gate_publish_state(g);
    return g;
}

static uint32_t max_attempts(const struct nx_router *r)
{
    const struct nx_broker_conf *b = nx_config_broker(r->agents->gen->cfg);
    return b ? b->dlq.max_attempts : 3;
}

/* Is an earlier event of this session failing or waiting for its retry? Then this one waits
 * too, so that a session's events are answered in order across retries. Events that merely run
 * are left to the session lane, which orders them (and applies the agent's queue_mode). */
static bool session_busy(const struct nx_router *r, const struct reply *rp)
{
    for (const struct reply *o = r->replies; o; o = o->next)
        if (o->seq < rp->seq && (o->stage == ST_FAILING || o->stage == ST_RETRY) &&
            strcmp(o->session_key, rp->session_key) == 0)
            return true;
    return false;
}

static void on_failed(int rc, int64_t attempts, void *arg);

/* The payload's `media` (new reference), or NULL. */
static json_t *payload_media(const struct reply *rp)
{
    struct nx_envelope *env = NULL;
    char err[160];
    json_t *m;

    if (!rp->data || nx_envelope_parse(rp->data, strlen(rp->data), 0, &env, err, sizeof err) < 0)
        return NULL;
    m = json_incref(json_object_get(env->payload, "media"));
    nx_envelope_free(env);
    return m;
}

/* The gateway role's end of the path: the claimed event becomes routed work for another
 * process, with the files the model reads (agent/carry.h). Its reply marks it answered when a
 * channel here claims it (key "<id>:0"). */
static void dispatch_now(struct reply *rp)
{
    struct nx_router *r = rp->r;
    json_t *media = payload_media(rp);
    const struct nx_router_dispatch_in in = {
        .id = rp->id, .agent = rp->agent, .session_key = rp->session_key, .channel = rp->channel,
        .outbound = rp->subject, .to = rp->to, .text = rp->text, .reply_to = rp->reply_to,
        .media = media,
    };
    int rc = r->dispatch(&in, r->dispatch_arg);
    json_decref(media);
    if (rc == 0) {
        const char *const lv[] = {rp->agent, rp->plugin};
        nx_counter_add(m_routed, lv, 1);
        reply_free(rp);
        return;
    }
    nx_warn("router", "agent %s: event %s not dispatched: %s", rp->agent, rp->id, nx_strerror(rc));
    if (!r->store) {
        reply_free(rp);
        return;
    }
    rp->stage = ST_FAILING; /* retried like a failed turn; the breaker is the agents' own */
    nx_ledger_inbound_fail(r->store, rp->id, nx_strerror(rc), max_attempts(r), nx_bus_sub_name(r->sub),
                           on_failed, rp);
}

/* The turn's user message: the text, and the files the sender attached (the payload's `media`,
 * as the channels downloaded them under <data>/media/): images as references the providers
 * read at request time, documents as notes (llm/media.h). */
static json_t *user_message(const struct reply *rp)
{
    json_t *media = payload_media(rp);
    json_t *m;

    nx_llm_media_set_root(rp->r->agents->data_dir);
    m = nx_llm_user_message(rp->text, media);
    json_decref(media);
    return m;
}

static void start_turn(struct reply *rp)
{
    struct nx_router *r = rp->r;
    if (r->dispatch) {
        dispatch_now(rp);
        return;
    }
    json_t *msgs = json_pack("[o]", user_message(rp));
    struct nx_turn_opts o = {
        .agent_id = rp->agent,
        .session_key = rp->session_key,
        .channel = rp->channel,
        .messages = msgs,
        .temperature = -1,
        .on_done = on_done,
        .udata = rp,
        .event_id = rp->id,
    };
    rp->stage = ST_TURN;
    nx_turn_start(r->agents, &o);
    const char *const lv[] = {rp->agent, rp->plugin};
    nx_counter_add(m_routed, lv, 1);
    json_decref(msgs);
}

static void on_gate_timer(void *arg)
{
    struct gate *g = arg;
    g->timer = NULL;
    gate_pump(g);
}

/* Starts what may start: in order, skipping sessions that are busy, while the breaker allows. */
static void gate_pump(struct gate *g)
{
    struct reply **pp = &g->head;
    uint64_t now = nx_mono_ms();
    while (*pp) {
        struct reply *rp = *pp;
        if (session_busy(g->r, rp)) {
            pp = &rp->qnext;
            continue;
        }
        if (!nx_breaker_allow(&g->br, now))
            break;
        *pp = rp->qnext;
        rp->qnext = NULL;
        if (g->br.state == NX_BREAKER_HALF_OPEN)
            nx_info("router", "agent %s: circuit breaker half-open: probing with event %s", g->agent,
                    rp->id);
        start_turn(rp);
    }
    gate_publish_state(g);
    if (g->head && g->br.state == NX_BREAKER_OPEN && !g->timer) {
        uint64_t wait = g->br.open_until > now ? g->br.open_until - now : 0;
        g->timer = nx_timer_once(g->r->agents->deps.loop, wait + 1, on_gate_timer, g);
    }
}

/* Into the agent's queue, by arrival. */
static void gate_push(struct reply *rp)
{
    struct gate *g = rp->g;
    struct reply **pp = &g->head;
    while (*pp && (*pp)->seq < rp->seq)
        pp = &(*pp)->qnext;
    rp->qnext = *pp;
    *pp = rp;
    rp->stage = ST_WAIT;
    gate_pump(g);
}

static void on_claimed(int rc, int64_t is_claimed, void *arg)
{
    struct reply *rp = arg;
    if (!rp->r) {
        reply_free(rp);
        return;
    }
    if (rc < 0) {
        nx_error("router", "event %s: ledger claim failed (%s): routed unrecorded", rp->id,
                 nx_strerror(rc));
    } else if (!is_claimed) {
        nx_debug("router", "event %s routed or answered already: redelivery dropped", rp->id);
        const char *const lv[] = {rp->agent};
        nx_counter_add(m_redelivered, lv, 1);
        reply_free(rp);
        return;
    }
    gate_push(rp);
}

static void claim(struct reply *rp)
{
    struct nx_ledger_event ev = {
        .channel = rp->plugin, .instance = rp->inst_key, .id = rp->id, .subject = rp->in_subject,
        .envelope = rp->data,
    };
    rp->stage = ST_CLAIM;
    nx_ledger_inbound_claim(rp->r->store, &ev, rp->agent, on_claimed, rp);
}

static void router_admit(struct nx_router *r, struct reply *rp)
{
    register_ledger_metrics();
    rp->seq = ++r->seq;
    rp->g = gate_get(r, rp->agent);
    rp->stage = ST_NEW;
    if (!r->store)
        gate_push(rp);
    else
        claim(rp);
}

static void on_retry(void *arg)
{
    struct reply *rp = arg;
    rp->retry = NULL;
    gate_push(rp);
}

static void on_failed(int rc, int64_t attempts, void *arg)
{
    struct reply *rp = arg;
    struct gate *g = rp->g;
    uint32_t max = rp->r ? max_attempts(rp->r) : 0;
    if (!rp->r) {
        reply_free(rp);
        return;
    }
    if (rc < 0)
        nx_error("router", "event %s: failure not recorded: %s", rp->id, nx_strerror(rc));
    if (rc == 0 && max && attempts >= max) {
        nx_error("router", "agent %s: event %s failed %" PRId64 " times: moved to the dead-letter "
                 "queue (nexo dlq retry %s)", rp->agent, rp->id, attempts, rp->id);
        const char *const lv[] = {rp->agent};
        nx_counter_add(m_dead, lv, 1);
        reply_free(rp);
        gate_pump(g);
        return;
    }
    uint64_t backoff = 250u * (uint64_t)(attempts > 0 ? attempts : 1);
    rp->stage = ST_RETRY;
    rp->retry = nx_timer_once(rp->r->agents->deps.loop, backoff > 5000 ? 5000 : backoff, on_retry, rp);
}

static void on_answered(int rc, int64_t n, void *arg)
{
    struct reply *rp = arg;
    (void)n;
    if (rc < 0)
        nx_error("router", "event %s: answer not recorded (%s): published unrecorded", rp->id,
                 nx_strerror(rc));
    if (rp->r && rp->out_env) {
        int prc = nx_bus_publish_in_order(rp->r->bus, rp->subject, rp->out_env, NX_BUS_ANSWER);
        if (prc < 0)
            nx_error("router", "agent %s: reply to %s not published now (%s): the channel sends it "
                     "from the ledger", rp->agent, rp->subject, nx_strerror(prc));
    }
    reply_free(rp);
}

/* A turn that ends without an answer of its own is settled in the ledger, so the next start
 * does not run it again: interrupted by a newer message of its session (queue_mode interrupt:
 * "cancelled"), or merged into an earlier turn that answered it (queue_mode collect: "answered",
 * and no second copy of that turn's reply). A turn cancelled because nexo stops stays routed
 * and runs again at the next start. */
static bool turn_superseded(struct reply *rp, int rc, const struct nx_turn_result *res)
{
    struct nx_router *r = rp->r;
    const char *state, *note;
    if (!r || !lane_superseded(rc, res, &state, &note))
        return false;
    struct gate *g = rp->g;
    if (r->store)
        nx_ledger_inbound_settle(r->store, rp->id, state, note, NULL, NULL);
    if (rc == NX_ECANCELED && g->br.state == NX_BREAKER_HALF_OPEN) /* a cancelled probe proves nothing */
        nx_breaker_failure(&g->br, nx_mono_ms());
    reply_free(rp);
    gate_pump(g);
    return true;
}

/* A turn ended: rc 0 with the reply text (maybe empty), or a failure. */
static void turn_finished(struct reply *rp, int rc, const char *text, const char *error)
{
    struct nx_router *r = rp->r;
    struct gate *g = rp->g;
    if (!r) { /* the router is gone: the ledger still says routed, the next start re-runs it */
        reply_free(rp);
        return;
    }
    if (rc == NX_ECANCELED) { /* interrupted or stopping: left as it is for the next start */
        if (g->br.state == NX_BREAKER_HALF_OPEN) /* a cancelled probe proves nothing: probe again */
            nx_breaker_failure(&g->br, nx_mono_ms());
        reply_free(rp);
        gate_pump(g);
        return;
    }
    if (rc < 0) {
        nx_warn("router", "agent %s: turn for %s failed: %s", rp->agent, rp->session_key,
                error ? error : nx_strerror(rc));
        nx_breaker_failure(&g->br, nx_mono_ms());
        if (g->br.state == NX_BREAKER_OPEN)
            nx_warn("router", "agent %s: circuit breaker open: events wait", g->agent);
        if (!r->store) {
            reply_free(rp);
        } else {
            rp->stage = ST_FAILING;
            nx_ledger_inbound_fail(r->store, rp->id, error ? error : nx_strerror(rc), max_attempts(r),
                                   nx_bus_sub_name(r->sub), on_failed, rp);
        }
        gate_pump(g);
        return;
    }
    bool was_open = g->br.state != NX_BREAKER_CLOSED;
    nx_breaker_success(&g->br, nx_mono_ms());
    if (was_open && g->br.state == NX_BREAKER_CLOSED)
        nx_info("router", "agent %s: circuit breaker closed", g->agent);
    if (text && *text) {
        struct nx_buf key = NX_BUF_INIT;
        nx_buf_printf(&key, "%s:0", rp->id); /* one reply per turn: stable across re-runs */
        json_t *payload = json_pack("{s:s, s:s, s:s, s:s?, s:s}", "to", rp->to, "text", text,
                                    "session_id", rp->session_key, "reply_to", rp->reply_to, "key",
                                    nx_buf_cstr(&key));
        if (!payload || nx_envelope_new(rp->subject, rp->agent, rp->session_key, payload,
                                        &rp->out_env) < 0)
            nx_error("router", "agent %s: reply to %s cannot be built", rp->agent, rp->subject);
        if (rp->out_env && r->store) {
            size_t len = 0;
            char *data = nx_envelope_dump(rp->out_env, &len);
            struct nx_ledger_reply lr = {
                .key = nx_buf_cstr(&key), .channel = rp->plugin, .instance = rp->inst_key,
                .subject = rp->subject, .envelope = data,
            };
            rp->stage = ST_ANSWER;
            nx_ledger_inbound_answer(r->store, rp->id, &lr, 1, false, on_answered, rp);
            free(data);
            rp = NULL;
        }
        json_decref(payload);
        nx_buf_cleanup(&key);
    } else if (r->store) {
        rp->stage = ST_ANSWER;
        nx_ledger_inbound_answer(r->store, rp->id, NULL, 0, false, on_answered, rp);
        rp = NULL;
    }
    if (rp) { /* no ledger */
        if (rp->out_env && nx_bus_publish_as(r->bus, rp->subject, rp->out_env, NX_BUS_ANSWER) < 0)
            nx_error("router", "agent %s: reply to %s not published", rp->agent, rp->subject);
        reply_free(rp);
    }
    gate_pump(g); /* ST_ANSWER frees the session: the store publishes the replies in order */
}

/* Resume: the events the last run recorded but did not answer are published again, with their
 * ids, on their subjects: whichever router takes them (this one, or another process's on NATS)
 * claims them in its ledger, so one that was answered elsewhere is dropped there. They go out
 * before the channels poll again (the store answers this read before their first one), so they
 * come back ahead of newer events. */
static void on_unanswered(int rc, const struct nx_ledger_row *v, size_t n, void *arg)
{
    struct resume *t = arg;
    struct nx_router *r = t->r;
    size_t resumed = 0;
    free(t);
    if (!r)
        return;
    r->resume = NULL;
    if (rc < 0) {
        nx_error("router", "cannot read unanswered events from the ledger: %s", nx_strerror(rc));
        return;
    }
    for (size_t i = 0; i < n; i++) {
        struct nx_envelope *env = NULL;
        char err[160];
        int prc;
        if (nx_envelope_parse(v[i].envelope, strlen(v[i].envelope), 0, &env, err, sizeof err) < 0) {
            nx_error("router", "event %s in the ledger is unreadable (%s): skipped", v[i].key, err);
            continue;
        }
        if ((prc = nx_bus_publish_in_order(r->bus, v[i].subject, env, NX_BUS_WORK)) < 0)
            nx_error("router", "event %s from the ledger not published again: %s", v[i].key,
                     nx_strerror(prc));
        else
            resumed++;
        nx_envelope_free(env);
    }
    if (resumed)
        nx_info("router", "resumed %zu unanswered event%s from the ledger", resumed,
                resumed == 1 ? "" : "s");
}

void nx_router_set_store(struct nx_router *r, struct nx_store *store)
{
    r->store = store;
    if (!store || r->resume)
        return;
    r->resume = nx_calloc(1, sizeof *r->resume);
    r->resume->r = r;
    /* events older than the ledger's retention are stale: never answered that late */
    const struct nx_broker_conf *b = nx_config_broker(r->agents->gen->cfg);
    uint64_t keep = b && b->ledger.retention_ms ? b->ledger.retention_ms : 7ull * 86400000;
    nx_ledger_inbound_unanswered_since(store, (int64_t)nx_wall_ms() - (int64_t)keep, 0, on_unanswered,
                                       r->resume);
}

/* At free: what waits in a queue goes (the ledger keeps it); what a store job or a turn holds is
 * detached and freed when that completes. */
static void ledger_free(struct nx_router *r)
{
    if (r->resume)
        r->resume->r = NULL;
    struct reply *rp = r->replies;
    while (rp) {
        struct reply *next = rp->next;
        rp->r = NULL;
        if (rp->stage == ST_NEW || rp->stage == ST_WAIT || rp->stage == ST_RETRY)
            reply_free(rp);
        rp = next;
    }
    r->replies = NULL;
    while (r->gates) {
        struct gate *g = r->gates;
        r->gates = g->next;
        if (g->timer)
            nx_timer_cancel(g->timer);
        free(g->agent);
        free(g);
    }
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

void nx_router_set_gate(struct nx_router *r, nx_router_gate_fn fn, void *arg)
{
    r->gate = fn;
    r->gate_arg = arg;
}

/* Gateway role: a reply seen on plugin.outbound.> whose key is "<event id>:<n>" (the key every
 * turn's reply carries) marks that event answered in this ledger, whichever channel (here or in
 * another process) sends it. A reply published while this process was down is missed: its event
 * is routed again at the next start and answered from the agents' recorded state (partition.h). */
static int on_reply_seen(struct nx_bus *bus, struct nx_bus_msg *msg, void *arg)
{
    struct nx_router *r = arg;
    const char *key = json_string_value(json_object_get(msg->env->payload, "key"));
    const char *colon = key ? strrchr(key, ':') : NULL;
    char id[64];
    (void)bus;
    if (!r->store || !colon || colon == key || (size_t)(colon - key) >= sizeof id)
        return 0;
    memcpy(id, key, (size_t)(colon - key));
    id[colon - key] = '\0';
    nx_ledger_inbound_answer(r->store, id, NULL, 0, false, NULL, NULL);
    return 0;
}

void nx_router_set_dispatch(struct nx_router *r, nx_router_dispatch_fn fn, void *arg)
{
    r->dispatch = fn;
    r->dispatch_arg = arg;
    if (fn && !r->out_sub && nx_bus_subscribe(r->bus, "plugin.outbound.>", on_reply_seen, r, &r->out_sub) < 0)
        nx_warn("router", "cannot subscribe to plugin.outbound.>: dispatched events stay \"routed\" "
                "in the ledger until a channel here sends their reply");
}

void nx_router_free(struct nx_router *r)
{
    if (!r)
        return;
    nx_bus_unsubscribe(r->bus, r->sub);
    if (r->out_sub)
        nx_bus_unsubscribe(r->bus, r->out_sub);
    ledger_free(r); /* turns still running end; their replies go nowhere */
    free(r);
}
