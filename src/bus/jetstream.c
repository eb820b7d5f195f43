#include <nats/nats.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bus/internal.h"
#include "core/alloc.h"
#include "core/error.h"
#include "core/log.h"
#include "core/metrics.h"

/* JetStream (docs/scaling.md). At each connection a job on the libuv pool asks the server
 * whether it has JetStream; if so it makes sure the streams (inbound, outbound, routed work) and
 * the session bucket exist, and subscribes the work consumers: one durable push consumer per
 * (agent, partition), shared by every process through one deliver group, explicit acks,
 * max_ack_pending 1. Publishes then carry Nats-Msg-Id (nats.c). Every blocking libnats call
 * (JetStream API requests, KV, acks that wait) runs on the pool; messages from libnats threads
 * are posted to the loop through the connection's link, as in nats.c. Without JetStream the
 * work consumers are plain queue subscriptions and everything else is unchanged. */

#define WORK_GROUP "agents"

struct jsub {
    atomic_int refs;   /* the consumer's, libnats's (until on_complete), each mail's */
    struct link *link;
    struct jcons *cons; /* loop thread only; NULL once closed */
    natsSubscription *ns;
    uint32_t part;
};

enum { C_WAITING = 0, C_SUBSCRIBING, C_JETSTREAM, C_CORE };

struct jcons {
    struct jcons *next;
    struct nx_bus *bus;
    char *agent;        /* routed work of this agent, or NULL: */
    char *subject;      /* a durable consumer of this outbound subject */
    char *durable;      /* ... named so (nx_bus_durable_consume) */
    bool is_stopped;    /* stopped while its setup job ran: freed when it returns */
    nx_bus_work_cb cb;
    void *arg;
    int state;
    struct jsub **subs;
    uint32_t nsubs;
};

struct nx_bus_work {
    struct nx_bus_work *prev, *next; /* js->works */
    struct nx_bus *bus;
    natsMsg *msg;       /* NULL on core NATS */
    uint32_t attempt;
    uv_timer_t *progress;
    bool is_orphan;     /* the bus went away first */
};

struct nx_js {
    char *names[4];     /* inbound, outbound, route streams; sessions bucket */
    char *storage;
    jsCtx *ctx;
    kvStore *kv;
    bool is_job, want_job;
    struct jcons *cons;
    struct nx_bus_work *works;
};

static struct nx_metric *m_acks, *m_naks;

static void jsub_unref(struct jsub *j)
{
    if (atomic_fetch_sub(&j->refs, 1) == 1) {
        nx_nats_link_unref(j->link);
        free(j);
    }
}

static struct nx_js *js_get(struct nx_bus *bus)
{
    const struct nx_broker_conf *c = &bus->conf;
    struct nx_js *js;

    if (bus->js)
        return bus->js;
    js = nx_calloc(1, sizeof *js);
    js->names[0] = nx_strdup(c->jetstream.inbound_stream ? c->jetstream.inbound_stream : "NEXO_INBOUND");
    js->names[1] = nx_strdup(c->jetstream.outbound_stream ? c->jetstream.outbound_stream :
                             "NEXO_OUTBOUND");
    js->names[2] = nx_strdup(c->jetstream.route_stream ? c->jetstream.route_stream : "NEXO_ROUTE");
    js->names[3] = nx_strdup(c->jetstream.sessions_bucket ? c->jetstream.sessions_bucket :
                             "NEXO_SESSIONS");
    js->storage = nx_strdup(c->jetstream.storage ? c->jetstream.storage : "file");
    bus->js = js;
    if (!m_acks) {
        m_acks = nx_metric_counter("nexo_bus_work_acks_total",
                                   "Routed work items acknowledged to JetStream.", NULL);
        m_naks = nx_metric_counter("nexo_bus_work_naks_total",
                                   "Routed work items handed back to JetStream for redelivery.", NULL);
    }
    return js;
}

/* ---- public helpers ---- */

bool nx_bus_has_jetstream(const struct nx_bus *bus)
{
    return bus && bus->has_js && bus->is_connected;
}

static uint32_t partitions(const struct nx_bus *bus)
{
    return bus->conf.jetstream.partitions ? bus->conf.jetstream.partitions : 8;
}

int nx_bus_route_subject(const struct nx_bus *bus, const char *agent, const char *session_key,
                         char *out, size_t outlen)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    int n;

    if (!agent || !*agent || strpbrk(agent, ".*> \t\r\n") || !session_key)
        return NX_EINVAL;
    for (const unsigned char *p = (const unsigned char *)session_key; *p; p++)
        h = (h ^ *p) * 1099511628211ull;
    n = snprintf(out, outlen, "agent.route.%s.%u", agent, (unsigned)(h % partitions(bus)));
    return n < 0 || (size_t)n >= outlen ? NX_EINVAL : 0;
}

uint32_t nx_bus_work_attempt(const struct nx_bus_work *w)
{
    return w->attempt;
}

bool nx_bus_work_is_durable(const struct nx_bus_work *w)
{
    return w->msg != NULL;
}

/* ---- deliveries ---- */

static void on_progress(uv_timer_t *t)
{
    struct nx_bus_work *w = t->data;

    if (w->msg && !w->is_orphan)
        natsMsg_InProgress(w->msg, NULL); /* the turn is still running: keep the ack window open */
}

static void work_start(struct nx_bus *bus, struct nx_bus_work *w)
{
    struct nx_js *js = js_get(bus);
    uint64_t every = (bus->conf.jetstream.ack_wait_ms ? bus->conf.jetstream.ack_wait_ms : 30000) / 3;

    w->bus = bus;
    w->next = js->works;
    if (js->works)
        js->works->prev = w;
    js->works = w;
    if (w->msg) {
        w->progress = nx_calloc(1, sizeof *w->progress);
        uv_timer_init(bus->loop, w->progress);
        w->progress->data = w;
        uv_timer_start(w->progress, on_progress, every ? every : 1, every ? every : 1);
    }
}

static void on_timer_closed(uv_handle_t *h)
{
    free(h);
}

static void work_unlink(struct nx_bus_work *w)
{
    struct nx_js *js = w->bus->js;

    if (w->prev)
        w->prev->next = w->next;
    else
        js->works = w->next;
    if (w->next)
        w->next->prev = w->prev;
    w->prev = w->next = NULL;
    if (w->progress) {
        uv_timer_stop(w->progress);
        uv_close((uv_handle_t *)w->progress, on_timer_closed);
        w->progress = NULL;
    }
}

struct jmail {
    struct jsub *j;
    natsMsg *msg;
};

static void on_js_mail(void *arg)
{
    struct jmail *m = arg;
    struct jcons *c = m->j->cons;
    struct nx_envelope *env = NULL;
    jsMsgMetaData *meta = NULL;
    struct nx_bus_work *w;
    struct nx_bus *bus;
    char err[256];

    if (!c || c->bus->is_closing) {
        natsMsg_Destroy(m->msg); /* not acknowledged: the server delivers it again */
        goto out;
    }
    bus = c->bus;
    if (nx_envelope_parse(natsMsg_GetData(m->msg), (size_t)natsMsg_GetDataLength(m->msg),
                          bus->conf.limits.max_payload, &env, err, sizeof err) < 0) {
        nx_warn("bus", "dropped routed work on %s: %s", natsMsg_GetSubject(m->msg), err);
        natsMsg_Term(m->msg, NULL); /* never deliverable */
        natsMsg_Destroy(m->msg);
        goto out;
    }
    w = nx_calloc(1, sizeof *w);
    w->msg = m->msg;
    w->attempt = 1;
    if (natsMsg_GetMetaData(&meta, m->msg) == NATS_OK) {
        w->attempt = (uint32_t)meta->NumDelivered;
        jsMsgMetaData_Destroy(meta);
    }
    work_start(bus, w);
    c->cb(bus, w, env, c->arg);
    nx_envelope_free(env);
out:
    jsub_unref(m->j);
    free(m);
}

/* libnats thread */
static void on_js_msg(natsConnection *nc, natsSubscription *s, natsMsg *msg, void *closure)
{
    struct jsub *j = closure;
    struct jmail *m = nx_calloc(1, sizeof *m);

    (void)nc;
    (void)s;
    atomic_fetch_add(&j->refs, 1);
    m->j = j;
    m->msg = msg;
    if (!nx_nats_link_post(j->link, on_js_mail, m)) {
        natsMsg_Destroy(msg);
        jsub_unref(j);
        free(m);
    }
}

static void on_jsub_complete(void *closure)
{
    jsub_unref(closure);
}

static int on_core_work(struct nx_bus *bus, struct nx_bus_msg *msg, void *arg)
{
    struct jcons *c = arg;
    struct nx_bus_work *w = nx_calloc(1, sizeof *w);

    w->attempt = msg->attempt;
    work_start(bus, w);
    c->cb(bus, w, msg->env, c->arg);
    return 0;
}

/* ---- acknowledgements ---- */

struct ackjob {
    uv_work_t req;
    struct nx_bus *bus;
    natsConnection *nc;
    natsMsg *msg;
    natsStatus st;
};

static void ack_work(uv_work_t *r)
{
    struct ackjob *a = r->data;

    /* everything published before (the reply) is on the server before the ack is */
    a->st = natsConnection_FlushTimeout(a->nc, 5000);
    if (a->st == NATS_OK)
        a->st = natsMsg_AckSync(a->msg, NULL, NULL);
}

static void ack_after(uv_work_t *r, int status)
{
    struct ackjob *a = r->data;
    struct nx_bus *bus = a->bus;

    (void)status;
    if (a->st != NATS_OK)
        nx_warn("bus", "routed work not acknowledged (%s): it will be delivered again",
                natsStatus_GetText(a->st));
    else
        nx_counter_add(m_acks, NULL, 1);
    natsMsg_Destroy(a->msg);
    free(a);
    bus->js_ops--;
    if (bus->is_closing)
        nx_bus_maybe_finish_close(bus);
}

void nx_bus_work_done(struct nx_bus_work *w, int rc)
{
    struct nx_bus *bus = w->bus;
    struct ackjob *a;

    if (w->is_orphan || !bus) {
        free(w);
        return;
    }
    work_unlink(w);
    if (!w->msg) {
        free(w);
        return;
    }
    if (bus->is_closing || !nx_nats_connection(bus)) {
        natsMsg_Destroy(w->msg);
    } else if (rc < 0) {
        natsMsg_NakWithDelay(w->msg, 1000, NULL);
        nx_counter_add(m_naks, NULL, 1);
        natsMsg_Destroy(w->msg);
    } else {
        a = nx_calloc(1, sizeof *a);
        a->req.data = a;
        a->bus = bus;
        a->nc = nx_nats_connection(bus);
        a->msg = w->msg;
        bus->js_ops++;
        if (uv_queue_work(bus->loop, &a->req, ack_work, ack_after) != 0) {
            bus->js_ops--;
            natsMsg_Destroy(a->msg);
            free(a);
        }
    }
    free(w);
}

/* ---- setup: streams, bucket, consumers ---- */

struct setup {
    uv_work_t req;
    struct nx_bus *bus;
    natsConnection *nc;
    struct nx_broker_conf conf;
    struct nx_js *js;      /* names only are read on the pool */
    jsCtx *ctx;
    kvStore *kv;
    bool has_js;
    struct jcons **cons;   /* to subscribe; their jsubs are allocated */
    size_t ncons;
    char err[256];
};

static bool ensure_stream(struct setup *s, const char *name, const char *subject)
{
    const struct nx_broker_conf *c = &s->conf;
    const char *subjects[1] = {subject};
    jsStreamConfig sc;
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    natsStatus st;

    jsStreamConfig_Init(&sc);
    sc.Name = name;
    sc.Subjects = subjects;
    sc.SubjectsLen = 1;
    sc.Retention = js_LimitsPolicy;
    sc.Storage = strcmp(s->js->storage, "memory") ? js_FileStorage : js_MemoryStorage;
    sc.Replicas = c->jetstream.replicas ? c->jetstream.replicas : 1;
    sc.MaxAge = (int64_t)c->jetstream.max_age_ms * 1000000;
    sc.MaxBytes = c->jetstream.max_bytes ? (int64_t)c->jetstream.max_bytes : -1;
    sc.Duplicates = (int64_t)(c->jetstream.duplicate_window_ms ? c->jetstream.duplicate_window_ms :
                              120000) * 1000000;
    st = js_AddStream(&si, s->ctx, &sc, NULL, &jerr);
    if (st != NATS_OK && jerr == JSStreamNameExistErr) {
        jsStreamInfo_Destroy(si);
        si = NULL;
        jerr = 0;
        st = js_UpdateStream(&si, s->ctx, &sc, NULL, &jerr);
        if (st != NATS_OK) {
            nx_warn("bus", "JetStream stream %s exists with other settings that cannot change (%s); "
                    "using it as it is", name, nats_GetLastError(NULL));
            st = NATS_OK;
        }
    }
    jsStreamInfo_Destroy(si);
    si = NULL;
    if (st != NATS_OK && js_GetStreamInfo(&si, s->ctx, name, NULL, NULL) == NATS_OK)
        st = NATS_OK; /* another process created it meanwhile ("subjects overlap"): use it */
    jsStreamInfo_Destroy(si);
    if (st != NATS_OK)
        snprintf(s->err, sizeof s->err, "stream %s: %s (%d)", name, nats_GetLastError(NULL), (int)jerr);
    return st == NATS_OK;
}

static bool subscribe_cons(struct setup *s, struct jcons *c)
{
    const struct nx_broker_conf *conf = &s->conf;

    for (uint32_t p = 0; p < c->nsubs; p++) {
        struct jsub *j = c->subs[p];
        char subject[192], durable[128];
        jsSubOptions so;
        jsErrCode jerr = 0;
        natsStatus st;

        if (c->agent) {
            snprintf(subject, sizeof subject, "agent.route.%s.%u", c->agent, p);
            snprintf(durable, sizeof durable, "nexo_%s_%u", c->agent, p);
        } else {
            snprintf(subject, sizeof subject, "%s", c->subject);
            snprintf(durable, sizeof durable, "%s", c->durable);
        }
        jsSubOptions_Init(&so);
        so.Stream = s->js->names[c->agent ? 2 : 1];
        so.Queue = durable; /* one deliver group: each item goes to one process */
        so.ManualAck = true;
        so.Config.Durable = durable;
        so.Config.AckPolicy = js_AckExplicit;
        /* work: everything in the stream; replies: from the consumer's creation on (older ones
         * were this process's to send before it existed) */
        so.Config.DeliverPolicy = c->agent ? js_DeliverAll : js_DeliverNew;
        /* one item in flight per partition: sessions stay ordered; replies: a window */
        so.Config.MaxAckPending = c->agent ? 1 : 256;
        so.Config.AckWait = (int64_t)(conf->jetstream.ack_wait_ms ? conf->jetstream.ack_wait_ms : 30000) *
                            1000000;
        so.Config.MaxDeliver = conf->jetstream.max_deliver ? (int64_t)conf->jetstream.max_deliver : -1;
        st = js_Subscribe(&j->ns, s->ctx, subject, on_js_msg, j, NULL, &so, &jerr);
        if (st != NATS_OK) { /* another process may be creating the same durable: once more */
            usleep(100000);
            jerr = 0;
            st = js_Subscribe(&j->ns, s->ctx, subject, on_js_msg, j, NULL, &so, &jerr);
        }
        if (st != NATS_OK) {
            snprintf(s->err, sizeof s->err, "consumer %s: %s (%d)", durable, nats_GetLastError(NULL),
                     (int)jerr);
            return false;
        }
        natsSubscription_SetPendingLimits(j->ns, -1, -1);
        natsSubscription_SetOnCompleteCB(j->ns, on_jsub_complete, j);
        atomic_fetch_add(&j->refs, 1); /* libnats's, until on_complete */
    }
    return true;
}

static void setup_work(uv_work_t *r)
{
    struct setup *s = r->data;
    jsAccountInfo *ai = NULL;
    jsErrCode jerr = 0;
    natsStatus st;

    if (!s->ctx && natsConnection_JetStream(&s->ctx, s->nc, NULL) != NATS_OK)
        return;
    st = js_GetAccountInfo(&ai, s->ctx, NULL, &jerr);
    jsAccountInfo_Destroy(ai);
    if (st != NATS_OK)
        return; /* no JetStream here: core NATS */
    if (!ensure_stream(s, s->js->names[0], "plugin.inbound.>") ||
        !ensure_stream(s, s->js->names[1], "plugin.outbound.>") ||
        !ensure_stream(s, s->js->names[2], "agent.route.>"))
        return;
    if (!s->kv && js_KeyValue(&s->kv, s->ctx, s->js->names[3]) != NATS_OK) {
        kvConfig kc;

        kvConfig_Init(&kc);
        kc.Bucket = s->js->names[3];
        kc.History = 1;
        kc.StorageType = strcmp(s->js->storage, "memory") ? js_FileStorage : js_MemoryStorage;
        kc.Replicas = s->conf.jetstream.replicas ? (int)s->conf.jetstream.replicas : 1;
        if (js_CreateKeyValue(&s->kv, s->ctx, &kc) != NATS_OK &&
            js_KeyValue(&s->kv, s->ctx, s->js->names[3]) != NATS_OK) { /* a peer's, created meanwhile */
            snprintf(s->err, sizeof s->err, "bucket %s: %s", s->js->names[3], nats_GetLastError(NULL));
            s->kv = NULL;
            return;
        }
    }
    s->has_js = true;
    for (size_t i = 0; i < s->ncons; i++)
        if (!subscribe_cons(s, s->cons[i]))
            break;
}

static void run_setup(struct nx_bus *bus);

static void cons_drop_subs(struct jcons *c)
{
    for (uint32_t p = 0; p < c->nsubs; p++) {
        struct jsub *j = c->subs[p];

        j->cons = NULL;
        if (j->ns)
            natsSubscription_Destroy(j->ns); /* no Unsubscribe: that would delete the durable */
        jsub_unref(j);
    }
    free(c->subs);
    c->subs = NULL;
    c->nsubs = 0;
}

static void cons_free(struct jcons *c)
{
    free(c->agent);
    free(c->subject);
    free(c->durable);
    free(c);
}

static void core_subscribe(struct nx_bus *bus, struct jcons *c)
{
    char pattern[192];

    snprintf(pattern, sizeof pattern, "agent.route.%s.*", c->agent);
    if (nx_bus_queue_subscribe(bus, pattern, WORK_GROUP, on_core_work, c, NULL) < 0) {
        nx_error("bus", "cannot subscribe to %s", pattern);
        return;
    }
    c->state = C_CORE;
    nx_info("bus", "%s: consuming %s (core NATS queue group %s: no JetStream)", bus->name, pattern,
            WORK_GROUP);
}

static void setup_after(uv_work_t *r, int status)
{
    struct setup *s = r->data;
    struct nx_bus *bus = s->bus;
    struct nx_js *js = bus->js;
    bool was_js = bus->has_js;

    (void)status;
    bus->js_ops--;
    js->is_job = false;
    js->ctx = s->ctx;
    js->kv = s->kv;
    if (!bus->is_closing) {
        bus->has_js = s->has_js;
        if (s->err[0])
            nx_error("bus", "JetStream setup: %s", s->err);
        if (s->has_js && !was_js)
            nx_info("bus", "%s: JetStream: streams %s, %s, %s and bucket %s ready", bus->name,
                    js->names[0], js->names[1], js->names[2], js->names[3]);
    }
    for (size_t i = 0; i < s->ncons; i++) {
        struct jcons *c = s->cons[i];
        bool ok = !bus->is_closing && s->has_js && !s->err[0] && !c->is_stopped;

        for (uint32_t p = 0; ok && p < c->nsubs; p++)
            ok = c->subs[p]->ns != NULL;
        if (ok) {
            c->state = C_JETSTREAM;
            if (c->agent)
                nx_info("bus", "%s: consuming agent.route.%s.* through %u durable JetStream consumers",
                        bus->name, c->agent, c->nsubs);
            else
                nx_info("bus", "%s: consuming %s through durable JetStream consumer %s", bus->name,
                        c->subject, c->durable);
            continue;
        }
        cons_drop_subs(c);
        c->state = C_WAITING;
        if (c->is_stopped)
            cons_free(c);
        else if (!bus->is_closing && !s->has_js && c->agent)
            core_subscribe(bus, c); /* a durable reply consumer has no core form: the channel's own
                                       subscription serves it */
    }
    free(s->cons);
    free(s);
    if (bus->is_closing) {
        nx_bus_maybe_finish_close(bus);
        return;
    }
    if (js->want_job) {
        js->want_job = false;
        run_setup(bus);
    }
}

static void run_setup(struct nx_bus *bus)
{
    struct nx_js *js = js_get(bus);
    struct setup *s;

    if (js->is_job) {
        js->want_job = true;
        return;
    }
    if (!bus->is_connected || bus->is_closing || !nx_nats_connection(bus))
        return;
    if (!bus->conf.jetstream.enabled) {
        for (struct jcons *c = js->cons; c; c = c->next)
            if (c->state == C_WAITING && c->agent)
                core_subscribe(bus, c);
        return;
    }
    s = nx_calloc(1, sizeof *s);
    s->req.data = s;
    s->bus = bus;
    s->nc = nx_nats_connection(bus);
    s->conf = bus->conf;
    s->js = js;
    s->ctx = js->ctx;
    s->kv = js->kv;
    for (struct jcons *c = js->cons; c; c = c->next) {
        if (c->state != C_WAITING)
            continue;
        s->cons = nx_realloc(s->cons, (s->ncons + 1) * sizeof *s->cons);
        s->cons[s->ncons++] = c;
        c->state = C_SUBSCRIBING;
        c->nsubs = c->agent ? partitions(bus) : 1;
        c->subs = nx_calloc(c->nsubs, sizeof *c->subs);
        for (uint32_t p = 0; p < c->nsubs; p++) {
            struct jsub *j = nx_calloc(1, sizeof *j);

            atomic_init(&j->refs, 1);
            j->link = nx_nats_link_ref(bus);
            j->cons = c;
            j->part = p;
            c->subs[p] = j;
        }
    }
    js->is_job = true;
    bus->js_ops++;
    if (uv_queue_work(bus->loop, &s->req, setup_work, setup_after) != 0)
        setup_after(&s->req, -1);
}

void nx_js_init(struct nx_bus *bus)
{
    js_get(bus);
}

void nx_js_on_connection(struct nx_bus *bus, bool is_connected)
{
    if (is_connected)
        run_setup(bus);
}

int nx_bus_work_consume(struct nx_bus *bus, const char *agent, nx_bus_work_cb cb, void *arg)
{
    struct nx_js *js;
    struct jcons *c;

    if (!bus || !cb || !agent || !*agent || strlen(agent) > 100 || strpbrk(agent, ".*> \t\r\n"))
        return NX_EINVAL;
    if (bus->is_closing)
        return NX_ECLOSED;
    js = js_get(bus);
    c = nx_calloc(1, sizeof *c);
    c->bus = bus;
    c->agent = nx_strdup(agent);
    c->cb = cb;
    c->arg = arg;
    c->next = js->cons;
    js->cons = c;
    if (bus->conf.type != NX_BROKER_NATS)
        core_subscribe(bus, c); /* in-process: the local bus serves it */
    else
        run_setup(bus);
    return 0;
}

/* ---- durable reply consumers (the gateway role's channels) ---- */

int nx_bus_durable_consume(struct nx_bus *bus, const char *subject, const char *durable,
                           nx_bus_work_cb cb, void *arg, struct nx_bus_durable **out)
{
    struct nx_js *js;
    struct jcons *c;

    if (!bus || !cb || !subject || strncmp(subject, "plugin.outbound.", 16) != 0 ||
        strlen(subject) > 180 || strpbrk(subject, "*> \t\r\n") || !durable || !*durable ||
        strlen(durable) > 120 || strspn(durable, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                        "0123456789_-") != strlen(durable))
        return NX_EINVAL;
    if (bus->is_closing)
        return NX_ECLOSED;
    js = js_get(bus);
    c = nx_calloc(1, sizeof *c);
    c->bus = bus;
    c->subject = nx_strdup(subject);
    c->durable = nx_strdup(durable);
    c->cb = cb;
    c->arg = arg;
    c->next = js->cons;
    js->cons = c;
    if (bus->conf.type == NX_BROKER_NATS)
        run_setup(bus);
    *out = (struct nx_bus_durable *)c;
    return 0;
}

bool nx_bus_durable_is_active(const struct nx_bus_durable *d)
{
    const struct jcons *c = (const struct jcons *)d;

    return c && c->state == C_JETSTREAM && nx_bus_has_jetstream(c->bus);
}

void nx_bus_durable_stop(struct nx_bus_durable *d)
{
    struct jcons *c = (struct jcons *)d, **pp;

    if (!c)
        return;
    for (pp = &c->bus->js->cons; *pp && *pp != c; pp = &(*pp)->next)
        ;
    if (*pp)
        *pp = c->next;
    c->next = NULL;
    if (c->state == C_SUBSCRIBING) { /* its setup job holds it: freed when that returns */
        c->is_stopped = true;
        return;
    }
    cons_drop_subs(c); /* deliveries still posted are dropped: the server delivers them again */
    cons_free(c);
}

/* ---- the session bucket (kv.c) ---- */

void *nx_js_kv(struct nx_bus *bus)
{
    return bus->js && bus->has_js && !bus->is_closing ? bus->js->kv : NULL;
}

/* ---- teardown ---- */

void nx_js_close(struct nx_bus *bus)
{
    struct nx_js *js = bus->js;

    if (!js)
        return;
    for (struct jcons *c = js->cons; c; c = c->next)
        for (uint32_t p = 0; p < c->nsubs; p++)
            c->subs[p]->cons = NULL; /* deliveries still posted are dropped (redelivered later) */
}

void nx_js_destroy(struct nx_bus *bus)
{
    struct nx_js *js = bus->js;

    if (!js)
        return;
    while (js->cons) {
        struct jcons *c = js->cons;

        js->cons = c->next;
        cons_drop_subs(c);
        cons_free(c);
    }
    while (js->works) { /* a caller still holds these: nx_bus_work_done only frees them now */
        struct nx_bus_work *w = js->works;

        work_unlink(w);
        if (w->msg)
            natsMsg_Destroy(w->msg);
        w->msg = NULL;
        w->is_orphan = true;
    }
    kvStore_Destroy(js->kv);
    jsCtx_Destroy(js->ctx);
    for (int i = 0; i < 4; i++)
        free(js->names[i]);
    free(js->storage);
    free(js);
    bus->js = NULL;
}
