#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/agent_internal.h"
#include "agent/carry.h"
#include "agent/partition.h"
#include "core/alloc.h"
#include "core/buf.h"
#include "core/error.h"
#include "core/log.h"
#include "core/metrics.h"
#include "llm/media.h"
#include "store/history.h"
#include "store/ledger.h"

/* Routed work for the gateway and agents roles (partition.h, docs/scaling.md). */

#define RECENT_IDS 64 /* inbound ids remembered per session in its KV state */
#define SETTLED "agent.settled." /* + agent: work items ended without a reply of their own */

struct nx_partition {
    struct nx_bus *bus;
    struct nx_agents *agents;
    struct nx_store *store;
    char *data_dir;
    struct item *items;
    uint32_t max_messages;
    struct nx_bus_sub *settled_sub; /* gateway: settlements of the work it dispatched */
};

/* One work item being served. */
struct item {
    struct item *next, *prev;
    struct nx_partition *p;  /* NULL once the partition is gone */
    struct nx_bus_work *w;
    json_t *work;            /* the payload */
    char *id;                /* the inbound event's id */
    json_t *state;           /* the session's KV state */
    uint64_t rev;
    json_t *user;            /* this turn's user message */
    char *reply_text;        /* the reply envelope's JSON, once the turn ended */
    struct nx_envelope *reply;
};

static struct nx_metric *m_forwarded, *m_served, *m_replayed;

static const char *str(const json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

static void item_free(struct item *it)
{
    if (it->p) {
        if (it->prev)
            it->prev->next = it->next;
        else
            it->p->items = it->next;
        if (it->next)
            it->next->prev = it->prev;
    }
    json_decref(it->work);
    json_decref(it->state);
    json_decref(it->user);
    free(it->id);
    free(it->reply_text);
    nx_envelope_free(it->reply);
    free(it);
}

static void finish(struct item *it, int rc)
{
    nx_bus_work_done(it->w, rc);
    item_free(it);
}

/* ---- gateway: the router's dispatch (router.h) ---- */

/* A work item the agents ended without a reply of its own, because its session's queue_mode
 * superseded its turn (lane_superseded), is settled in this ledger as the in-process router
 * settles it: merged ("answered") or interrupted ("cancelled"), so the resume at the next start
 * neither runs nor answers it again. Every gateway hears it; only the one whose ledger routed
 * the event has a received or routed row for it to change. */
static int on_settled(struct nx_bus *bus, struct nx_bus_msg *msg, void *arg)
{
    struct nx_partition *p = arg;
    const json_t *pl = msg->env->payload;
    const char *id = str(pl, "id"), *state = str(pl, "state");

    (void)bus;
    if (!id || !state || (strcmp(state, "answered") != 0 && strcmp(state, "cancelled") != 0)) {
        nx_warn("gateway", "settlement %s on %s without an id and a known state: ignored", msg->env->id,
                msg->subject);
        return 0;
    }
    nx_ledger_inbound_settle(p->store, id, state, str(pl, "note"), NULL, NULL);
    return 0;
}

/* The gateway subscribes at start (and in any case before its first work item is published), so
 * settlements published while it restarted are not missed once it is up. A process that
 * dispatches nothing (the agents role) has nothing to settle and does not listen. */
void nx_partition_watch_settled(struct nx_partition *p)
{
    if (p->settled_sub || !p->store)
        return;
    if (nx_bus_subscribe(p->bus, SETTLED ">", on_settled, p, &p->settled_sub) < 0)
        nx_warn("gateway", "cannot subscribe to %s>: events merged or interrupted by queue_mode stay "
                "\"routed\" and are routed again at the next start", SETTLED);
}

int nx_partition_dispatch(const struct nx_router_dispatch_in *in, void *arg)
{
    struct nx_partition *p = arg;
    struct nx_envelope *env = NULL;
    char subject[256];
    json_t *work;
    int rc;

    nx_partition_watch_settled(p);
    work = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s?}", "agent", in->agent, "session_key",
                     in->session_key, "channel", in->channel, "outbound", in->outbound, "to", in->to,
                     "text", in->text, "reply_to", in->reply_to);
    if (!work)
        return NX_EINVAL;
    if (in->media) { /* the files the model reads, carried: the agents process has its own disk */
        nx_llm_media_set_root(p->data_dir);
        json_t *carried = nx_carry_pack(in->media, NX_CARRY_MAX_BYTES);
        if (carried)
            json_object_set_new(work, "media", carried);
    }
    rc = nx_bus_route_subject(p->bus, in->agent, in->session_key, subject, sizeof subject);
    for (int tries = 0; rc == 0 && tries < 2; tries++) {
        nx_envelope_free(env);
        env = NULL;
        if ((rc = nx_envelope_new(subject, in->channel, in->session_key, work, &env)) < 0)
            break;
        if (strlen(in->id) >= sizeof env->id) {
            rc = NX_EINVAL;
            break;
        }
        memcpy(env->id, in->id, strlen(in->id) + 1); /* a repeat is stored once by the stream */
        rc = nx_bus_publish(p->bus, subject, env);
        if (rc != NX_ETOOBIG || tries > 0 || !json_object_get(work, "media"))
            break;
        nx_warn("gateway", "event %s: too large for the bus with its files; sent without them", in->id);
        json_object_set_new(work, "media", nx_carry_strip(json_object_get(work, "media")));
        rc = 0;
    }
    if (rc == 0) {
        const char *const lv[] = {in->agent};
        nx_counter_add(m_forwarded, lv, 1);
    }
    nx_envelope_free(env);
    json_decref(work);
    return rc;
}

/* ---- agents: serve work ---- */

/* The reply carries the idempotency key "<inbound id>:0", as the in-process router's does: the
 * gateway's channel ledger claims it once, and the claim marks the inbound event answered. */
static int make_reply(struct item *it, const char *text)
{
    const json_t *w = it->work;
    struct nx_buf key = NX_BUF_INIT;
    json_t *payload;
    int rc;
    size_t len;

    nx_buf_printf(&key, "%s:0", it->id);
    payload = json_pack("{s:s, s:s, s:s, s:s?, s:s}", "to", str(w, "to"), "text", text, "session_id",
                        str(w, "session_key"), "reply_to", str(w, "reply_to"), "key", nx_buf_cstr(&key));
    nx_buf_cleanup(&key);
    if (!payload)
        return NX_EINVAL;
    rc = nx_envelope_new(str(w, "outbound"), str(w, "agent"), str(w, "session_key"), payload, &it->reply);
    json_decref(payload);
    if (rc == 0)
        it->reply_text = nx_envelope_dump(it->reply, &len);
    return rc;
}

static void publish_and_ack(struct item *it)
{
    int rc = it->reply ? nx_bus_publish_as(it->p->bus, NULL, it->reply, NX_BUS_ANSWER) : 0;

    if (rc < 0)
        nx_error("agents", "reply to %s not published: %s", str(it->work, "outbound"), nx_strerror(rc));
    nx_counter_add(m_served, NULL, 1);
    finish(it, rc);
}

static void on_put(struct nx_bus *bus, int rc, const char *v, size_t len, uint64_t rev, void *arg)
{
    struct item *it = arg;

    (void)bus;
    (void)v;
    (void)len;
    (void)rev;
    if (rc < 0 || !it->p) {
        nx_warn("agents", "session %s: state not recorded (%s); the message will be served again",
                str(it->work, "session_key"), nx_strerror(rc < 0 ? rc : NX_ECLOSED));
        finish(it, rc < 0 ? rc : NX_ECLOSED);
        return;
    }
    publish_and_ack(it);
}

/* New state: history + user + answer (the tail, from a user message), the id, the reply. */
static void record(struct item *it, const json_t *answer)
{
    json_t *hist = json_object_get(it->state, "history"), *last = json_object_get(it->state, "last");
    char *text;

    json_array_append(hist, it->user);
    if (answer)
        json_array_append_new(hist, json_deep_copy(answer));
    while (json_array_size(hist) > it->p->max_messages ||
           (json_array_size(hist) > 1 && (!str(json_array_get(hist, 0), "role") ||
                                          strcmp(str(json_array_get(hist, 0), "role"), "user"))))
        json_array_remove(hist, 0);
    json_array_append_new(last, json_string(it->id));
    while (json_array_size(last) > RECENT_IDS)
        json_array_remove(last, 0);
    json_object_set_new(it->state, "reply", it->reply_text ?
                        json_pack("{s:s, s:s}", "for", it->id, "envelope", it->reply_text) : json_null());
    text = json_dumps(it->state, JSON_COMPACT);
    nx_bus_kv_put(it->p->bus, str(it->work, "session_key"), text, strlen(text), it->rev, on_put, it);
    free(text);
}

/* The messages of this turn in the conversation the turn ended with: from its user message (the
 * last user message that is not a tool result) to the end. */
static size_t turn_start(const json_t *convo)
{
    for (size_t i = json_array_size(convo); i-- > 0;) {
        const json_t *m = json_array_get(convo, i), *c = json_object_get(m, "content"), *b;
        size_t k;

        if (!str(m, "role") || strcmp(str(m, "role"), "user") != 0)
            continue;
        if (json_is_string(c))
            return i;
        json_array_foreach(c, k, b)
            if (str(b, "type") && strcmp(str(b, "type"), "tool_result") != 0)
                return i;
    }
    return 0;
}

/* Deliveries of a work item whose turn fails before it is recorded unanswered: broker.yaml
 * dlq.max_attempts (0 = no limit), as the in-process router retries a failed turn. */
static uint32_t retries(const struct nx_partition *p)
{
    const struct nx_broker_conf *b = nx_config_broker(p->agents->gen->cfg);

    return b ? b->dlq.max_attempts : 3;
}

static void on_transcribed(int rc, void *arg)
{
    char *key = arg;

    if (rc < 0)
        nx_warn("agents", "session %s: transcript not written: %s", key, nx_strerror(rc));
    free(key);
}

/* The served turn (user message, tool calls and results, answer) goes to this process's store
 * and transcript (JSONL + FTS), as a turn in the "all" role does: `nexo transcripts search` on
 * this data dir finds it. The session's history for the next turn stays the bucket's. */
static void transcribe(struct item *it, const struct nx_turn_result *res)
{
    const json_t *convo = res->conversation;
    json_t *added;

    if (!it->p->store)
        return;
    added = json_array();
    if (json_is_array(convo) && json_array_size(convo) > 0) {
        for (size_t i = turn_start(convo); i < json_array_size(convo); i++)
            json_array_append(added, json_array_get(convo, i));
    } else {
        json_array_append(added, it->user);
        if (res->message)
            json_array_append(added, (json_t *)res->message);
    }
    struct nx_history_append ap = {
        .session_key = str(it->work, "session_key"),
        .agent_id = str(it->work, "agent"),
        .source = str(it->work, "channel"),
        .messages = added,
        .input_tokens = res->usage.input_tokens,
        .output_tokens = res->usage.output_tokens,
    };
    nx_history_append(it->p->store, it->p->data_dir, &ap, on_transcribed,
                      nx_strdup(str(it->work, "session_key")));
    json_decref(added);
}

/* The turn of this item was superseded by its session's queue_mode (lane_superseded): no reply
 * of its own (a merged message's answer is its group's one reply, sent for the group's first
 * message; an interrupted message is answered by the newer one's turn). The gateway that routed
 * it settles it in its ledger (on_settled), as the in-process router does. */
static void settle_superseded(struct item *it, const char *state, const char *note)
{
    struct nx_envelope *env = NULL;
    char subject[160];
    json_t *payload = json_pack("{s:s, s:s, s:s}", "id", it->id, "state", state, "note", note);
    int rc = NX_EINVAL, n = snprintf(subject, sizeof subject, SETTLED "%s", str(it->work, "agent"));

    if (payload && n > 0 && (size_t)n < sizeof subject &&
        (rc = nx_envelope_new(subject, str(it->work, "agent"), str(it->work, "session_key"), payload,
                              &env)) == 0)
        rc = nx_bus_publish_as(it->p->bus, NULL, env, NX_BUS_ANSWER);
    if (rc < 0)
        nx_warn("agents", "event %s (%s): not settled at the gateway (%s): it is routed again at its "
                "next start", it->id, state, nx_strerror(rc));
    nx_envelope_free(env);
    json_decref(payload);
    nx_counter_add(m_served, NULL, 1);
    finish(it, 0);
}

static void on_done(int rc, const struct nx_turn_result *res, void *udata)
{
    struct item *it = udata;
    const char *text = res->text, *state, *note;

    if (it->p && lane_superseded(rc, res, &state, &note)) {
        settle_superseded(it, state, note);
        return;
    }
    if (!it->p || rc == NX_ECANCELED) {
        finish(it, NX_ECANCELED);
        return;
    }
    if ((rc == NX_ECONFIG || res->is_user_facing) && res->error_message) {
        text = res->error_message; /* "add a key", "budget used up": the user gets it, as in "all" */
        rc = NX_ECONFIG;
    } else if (rc < 0) {
        uint32_t max = retries(it->p);

        nx_warn("agents", "agent %s: turn for %s failed (delivery %u): %s", str(it->work, "agent"),
                str(it->work, "session_key"), nx_bus_work_attempt(it->w),
                res->error_message ? res->error_message : nx_strerror(rc));
        if (nx_bus_work_is_durable(it->w) && (!max || nx_bus_work_attempt(it->w) < max)) {
            finish(it, rc); /* handed back: delivered again in 1 s, the partition waits for it */
            return;
        }
        if (nx_bus_work_is_durable(it->w))
            nx_error("agents", "agent %s: turn for %s failed %u times: recorded unanswered",
                     str(it->work, "agent"), str(it->work, "session_key"), nx_bus_work_attempt(it->w));
    }
    if ((rc == 0 || rc == NX_ECONFIG) && text && *text && make_reply(it, text) < 0) {
        finish(it, NX_EINVAL);
        return;
    }
    if (it->state) {
        if (rc == 0)
            transcribe(it, res);
        record(it, rc == 0 ? res->message : NULL);
    } else {
        publish_and_ack(it);
    }
}

/* The text, and the files the gateway carried (written under this process's media root). */
static json_t *user_message(const struct item *it)
{
    const json_t *carried = json_object_get(it->work, "media");
    json_t *media, *m;

    if (!json_is_array(carried) || !json_array_size(carried))
        return json_pack("{s:s, s:[{s:s, s:s}]}", "role", "user", "content", "type", "text", "text",
                         str(it->work, "text"));
    media = nx_carry_unpack(carried, it->p->data_dir);
    nx_llm_media_set_root(it->p->data_dir);
    m = nx_llm_user_message(str(it->work, "text"), media);
    json_decref(media);
    return m;
}

static void run_turn(struct item *it, bool is_stateless)
{
    json_t *msgs = json_array();
    struct nx_turn_opts o = {
        .agent_id = str(it->work, "agent"),
        .channel = str(it->work, "channel"),
        .temperature = -1,
        .on_done = on_done,
        .udata = it,
    };

    it->user = user_message(it);
    if (is_stateless) {
        json_array_extend(msgs, json_object_get(it->state, "history"));
    } else {
        o.session_key = str(it->work, "session_key");
    }
    json_array_append(msgs, it->user);
    o.messages = msgs;
    nx_turn_start(it->p->agents, &o);
    json_decref(msgs);
}

static bool seen(const json_t *last, const char *id)
{
    size_t i;
    json_t *v;

    json_array_foreach(last, i, v)
        if (json_is_string(v) && strcmp(json_string_value(v), id) == 0)
            return true;
    return false;
}

static void on_state(struct nx_bus *bus, int rc, const char *v, size_t len, uint64_t rev, void *arg)
{
    struct item *it = arg;
    const json_t *reply;

    (void)bus;
    if (!it->p || (rc < 0 && rc != NX_ENOENT)) {
        if (it->p)
            nx_warn("agents", "session %s: state not readable (%s); retrying later",
                    str(it->work, "session_key"), nx_strerror(rc));
        finish(it, rc < 0 ? rc : NX_ECLOSED);
        return;
    }
    if (rc == 0)
        it->state = json_loadb(v, len, 0, NULL);
    if (!json_is_object(it->state) || !json_is_array(json_object_get(it->state, "history")) ||
        !json_is_array(json_object_get(it->state, "last"))) {
        json_decref(it->state);
        it->state = json_pack("{s:[], s:[], s:n}", "history", "last", "reply");
    }
    it->rev = rc == 0 ? rev : 0;
    if (seen(json_object_get(it->state, "last"), it->id)) {
        /* its turn was recorded already (its process died before the ack): send that reply
         * again, same envelope id, so receivers drop it if they had it */
        reply = json_object_get(it->state, "reply");
        if (str(reply, "for") && strcmp(str(reply, "for"), it->id) == 0 && str(reply, "envelope")) {
            char err[128];
            const char *e = str(reply, "envelope");

            if (nx_envelope_parse(e, strlen(e), 0, &it->reply, err, sizeof err) < 0)
                nx_warn("agents", "recorded reply unreadable: %s", err);
        }
        nx_counter_add(m_replayed, NULL, 1);
        publish_and_ack(it);
        return;
    }
    run_turn(it, true);
}

static void on_work(struct nx_bus *bus, struct nx_bus_work *w, const struct nx_envelope *env, void *arg)
{
    struct nx_partition *p = arg;
    struct item *it = nx_calloc(1, sizeof *it);

    it->p = p;
    it->w = w;
    it->work = json_incref(env->payload);
    it->id = nx_strdup(env->id);
    it->next = p->items;
    if (p->items)
        p->items->prev = it;
    p->items = it;
    if (!str(it->work, "agent") || !str(it->work, "session_key") || !str(it->work, "text") ||
        !str(it->work, "outbound") || !str(it->work, "to")) {
        nx_warn("agents", "malformed routed work %s dropped", env->id);
        finish(it, 0);
        return;
    }
    if (nx_bus_work_is_durable(w)) /* JetStream: the session's state is in the bucket */
        nx_bus_kv_get(bus, str(it->work, "session_key"), on_state, it);
    else
        run_turn(it, false);
}

/* ---- lifecycle ---- */

int nx_partition_new(struct nx_bus *bus, struct nx_agents *agents, struct nx_store *store,
                     const char *data_dir, uint32_t session_max_messages, struct nx_partition **out)
{
    static const char *const labels[] = {"agent", NULL};
    struct nx_partition *p = nx_calloc(1, sizeof *p);

    if (!m_forwarded) {
        m_forwarded = nx_metric_counter("nexo_route_forwarded_total",
                                        "inbound messages published as routed work (gateway role)",
                                        labels);
        m_served = nx_metric_counter("nexo_route_served_total",
                                     "routed work items served (agents role)", NULL);
        m_replayed = nx_metric_counter("nexo_route_replies_resent_total",
                                       "redelivered work answered with its recorded reply", NULL);
    }
    p->bus = bus;
    p->agents = agents;
    p->store = store;
    p->data_dir = nx_strdup(data_dir ? data_dir : ".");
    p->max_messages = session_max_messages >= 2 ? session_max_messages : 200;
    *out = p;
    return 0;
}

int nx_partition_consume(struct nx_partition *p, const char *agent_id)
{
    if (!nx_agents_has(p->agents, agent_id))
        return NX_ENOENT;
    return nx_bus_work_consume(p->bus, agent_id, on_work, p);
}

void nx_partition_free(struct nx_partition *p)
{
    if (!p)
        return;
    if (p->settled_sub)
        nx_bus_unsubscribe(p->bus, p->settled_sub);
    for (struct item *it = p->items; it; it = it->next)
        it->p = NULL; /* their callbacks finish them */
    free(p->data_dir);
    free(p);
}
