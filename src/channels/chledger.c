#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "channels/chledger.h"
#include "core/alloc.h"
#include "core/buf.h"
#include "core/clock.h"
#include "core/error.h"
#include "core/log.h"
#include "core/metrics.h"
#include "runtime/runtime.h"
#include "store/ledger.h"

/* The framework's side of the exactly-once ledger; see chledger.h and docs/bus.md. Everything
 * here runs on the loop thread; store completions come back in the order their jobs were
 * queued, so events are published in the order the adapter handed them over. */

#define TAKE_BATCH 100
#define SWEEP_MS 30000
#define RETRY_MS 2000

struct op {
    struct op *next, *prev;
    struct nx_chledger *l;     /* NULL once detached */
    struct nx_envelope *env;   /* inbound: to publish once recorded */
    char *key;                 /* outbound */
    char *subject;
    char *data;
    struct nx_bus_work *w;     /* outbound from the durable consumer: acknowledged once claimed */
};

struct nx_chledger {
    struct nx_channel *ch;
    struct nx_store *store;
    nx_chledger_deliver_fn deliver;
    struct nx_bus_msg *current; /* the ledger's own delivery in progress */
    uint32_t current_steps;     /* its steps delivered before (a resumed multi-step reply) */
    struct op *ops;
    struct nx_timer *timer;
    bool is_taking;
    struct nx_bus_durable *durable; /* gateway role on JetStream: replies from the stream */
};

static bool use_durable; /* nx_chledger_use_jetstream */

static struct nx_metric *m_dup, *m_skipped, *m_resent;
static uint64_t boot_id;

static void register_metrics(void)
{
    static const char *const labels[] = {"channel", NULL};
    if (m_dup)
        return;
    m_dup = nx_metric_counter("nexo_ledger_duplicates_total",
                              "inbound channel events dropped as already recorded in the ledger", labels);
    m_skipped = nx_metric_counter("nexo_ledger_outbound_skipped_total",
                                  "outbound replies not sent again: their key was sent already", labels);
    m_resent = nx_metric_counter("nexo_ledger_resent_total",
                                 "pending outbound replies sent again from the ledger (resume)", labels);
}

/* Unique per process start, never 0: marks the replies this process is sending. */
static uint64_t boot(void)
{
    while (!boot_id) {
        uint64_t v = 0;
        if (getrandom(&v, sizeof v, 0) != (ssize_t)sizeof v)
            v = nx_wall_ms() ^ ((uint64_t)getpid() << 32);
        boot_id = v & 0x3fffffffffffffffull;
    }
    return boot_id;
}

static void count(struct nx_metric *m, struct nx_channel *ch)
{
    const char *const lv[] = {nx_channel_label(ch)};
    nx_counter_add(m, lv, 1);
}

static struct op *op_new(struct nx_chledger *l)
{
    struct op *o = nx_calloc(1, sizeof *o);
    o->l = l;
    o->next = l->ops;
    if (l->ops)
        l->ops->prev = o;
    l->ops = o;
    return o;
}

static void op_free(struct op *o)
{
    if (o->l) {
        if (o->prev)
            o->prev->next = o->next;
        else
            o->l->ops = o->next;
        if (o->next)
            o->next->prev = o->prev;
    }
    if (o->w) /* not claimed: the server delivers it again */
        nx_bus_work_done(o->w, NX_ECANCELED);
    nx_envelope_free(o->env);
    free(o->key);
    free(o->subject);
    free(o->data);
    free(o);
}

const char *nx_chledger_key(const struct nx_envelope *env)
{
    const char *key = json_string_value(json_object_get(env->payload, "key"));
    return key && *key ? key : env->id;
}

/* ---- inbound ---- */

static void on_recorded(int rc, int64_t is_new, void *arg)
{
    struct op *o = arg;
    struct nx_chledger *l = o->l;
    if (!l)
        goto out;
    struct nx_channel *ch = l->ch;
    if (rc < 0) {
        /* not durable: publish anyway (at-least-once beats losing it) */
        nx_error("ledger", "%s: event %s not recorded (%s): published unrecorded",
                 nx_channel_label(ch), o->env->id, nx_strerror(rc));
    } else if (!is_new) {
        nx_debug("ledger", "%s: event %s already recorded: duplicate dropped", nx_channel_label(ch),
                 o->env->id);
        count(m_dup, ch);
        goto out;
    }
    if ((rc = nx_bus_publish_in_order(nx_channel_bus(ch), o->env->topic, o->env, NX_BUS_WORK)) < 0) {
        nx_warn("ledger", "%s: event %s recorded but not published (%s): it is routed from the "
                "ledger at the next start", nx_channel_label(ch), o->env->id, nx_strerror(rc));
        goto out;
    }
    nx_channel_count(ch, "in");
out:
    op_free(o);
}

int nx_chledger_publish(struct nx_channel *ch, struct nx_chledger *l, const struct nx_envelope *env,
                        const char *event_key)
{
    int rc;
    if (!l) {
        if ((rc = nx_bus_publish(nx_channel_bus(ch), env->topic, env)) == 0)
            nx_channel_count(ch, "in");
        return rc;
    }
    size_t len = 0;
    char *data = nx_envelope_dump(env, &len);
    if (!data)
        return NX_EINVAL;
    struct op *o = op_new(l);
    o->env = nx_envelope_copy(env);
    o->data = data;
    struct nx_ledger_event ev = {
        .channel = nx_channel_type_name(ch),
        .instance = nx_channel_instance_key(ch),
        .event_key = event_key,
        .id = env->id,
        .subject = env->topic,
        .envelope = data,
    };
    nx_ledger_inbound_record(l->store, &ev, on_recorded, o);
    return 0;
}

/* ---- outbound ---- */

static void schedule_take(struct nx_chledger *l, uint64_t ms);

/* Hands a claimed reply to the channel's subscriber, `steps` of it delivered already. Returns
 * the subscriber's rc: < 0 = not taken now (given back to the ledger; a take is scheduled after
 * RETRY_MS). */
static int deliver_now(struct nx_chledger *l, const char *key, const char *subject, const char *data,
                       uint32_t steps)
{
    struct nx_channel *ch = l->ch;
    struct nx_envelope *env = NULL;
    char err[160];
    size_t len = strlen(data);
    if (nx_envelope_parse(data, len, 0, &env, err, sizeof err) < 0) {
        nx_error("ledger", "%s: reply %s unreadable in the ledger (%s): marked failed",
                 nx_channel_label(ch), key, err);
        nx_ledger_outbound_sent(l->store, key, NULL, NX_EINVAL, err, NULL, NULL);
        return 0; /* settled: not a refusal */
    }
    struct nx_bus_msg msg = {.subject = subject, .env = env, .data = data, .len = len, .attempt = 1};
    l->current = &msg;
    l->current_steps = steps;
    if (steps)
        nx_info("ledger", "%s: reply %s resumes after its %u delivered step%s", nx_channel_label(ch),
                key, steps, steps == 1 ? "" : "s");
    int rc = l->deliver(nx_channel_bus(ch), &msg, ch);
    l->current = NULL;
    l->current_steps = 0;
    if (rc < 0) {
        nx_warn("ledger", "%s: reply %s not taken now (%s): retried from the ledger",
                nx_channel_label(ch), key, msg.error ? msg.error : nx_strerror(rc));
        nx_ledger_outbound_unclaim(l->store, key, NULL, NULL);
        schedule_take(l, RETRY_MS);
    }
    free(msg.error);
    nx_envelope_free(env);
    return rc < 0 ? rc : 0;
}

static void on_claimed(int rc, int64_t is_claimed, void *arg)
{
    struct op *o = arg;
    struct nx_chledger *l = o->l;
    if (!l)
        goto out;
    if (o->w && rc < 0) { /* from the stream: not recorded, so not acknowledged either */
        nx_warn("ledger", "%s: reply %s not recorded (%s): the stream delivers it again",
                nx_channel_label(l->ch), o->key, nx_strerror(rc));
        goto out;
    }
    if (o->w) { /* the ledger has it (pending, sent or failed): the stream may let it go */
        nx_bus_work_done(o->w, 0);
        o->w = NULL;
    }
    if (rc < 0) {
        nx_error("ledger", "%s: reply %s not recorded (%s): sent unrecorded",
                 nx_channel_label(l->ch), o->key, nx_strerror(rc));
    } else if (!is_claimed) {
        nx_debug("ledger", "%s: reply %s sent already: skipped", nx_channel_label(l->ch), o->key);
        count(m_skipped, l->ch);
        goto out;
    }
    deliver_now(l, o->key, o->subject, o->data, rc < 0 ? 0 : (uint32_t)(is_claimed - 1));
out:
    op_free(o);
}

static void claim(struct nx_chledger *l, struct op *o)
{
    struct nx_ledger_reply r = {
        .key = o->key,
        .channel = nx_channel_type_name(l->ch),
        .instance = nx_channel_instance_key(l->ch),
        .subject = o->subject,
        .envelope = o->data,
    };
    nx_ledger_outbound_claim(l->store, &r, boot(), on_claimed, o);
}

bool nx_chledger_outbound(struct nx_chledger *l, struct nx_bus_msg *msg)
{
    if (!l || msg == l->current)
        return false;
    if (l->durable && nx_bus_durable_is_active(l->durable))
        return true; /* the stream's consumer delivers this one, acknowledged once claimed */
    struct op *o = op_new(l);
    o->key = nx_strdup(nx_chledger_key(msg->env));
    o->subject = nx_strdup(msg->subject);
    o->data = nx_strndup(msg->data, msg->len);
    claim(l, o);
    return true;
}

/* A reply from the outbound stream's durable consumer: claimed in the ledger like one from the
 * core subscription (a key seen before is skipped), acknowledged once the claim is recorded. */
static void on_durable(struct nx_bus *bus, struct nx_bus_work *w, const struct nx_envelope *env, void *arg)
{
    struct nx_chledger *l = arg;
    struct nx_buf subject = NX_BUF_INIT;
    size_t len = 0;
    char *data = nx_envelope_dump(env, &len);
    (void)bus;
    if (!data) {
        nx_warn("ledger", "%s: reply %s from the stream unreadable: dropped", nx_channel_label(l->ch),
                env->id);
        nx_bus_work_done(w, 0);
        return;
    }
    nx_buf_printf(&subject, "plugin.outbound.%s", nx_channel_label(l->ch));
    struct op *o = op_new(l);
    o->w = w;
    o->key = nx_strdup(nx_chledger_key(env));
    o->subject = nx_buf_steal(&subject);
    o->data = data;
    claim(l, o);
}

void nx_chledger_use_jetstream(bool on)
{
    use_durable = on;
}

/* "nexo_out_<label>", every byte outside [A-Za-z0-9_-] as '_'. */
static void start_durable(struct nx_chledger *l)
{
    struct nx_buf subject = NX_BUF_INIT, name = NX_BUF_INIT;
    const char *label = nx_channel_label(l->ch);
    nx_buf_printf(&subject, "plugin.outbound.%s", label);
    nx_buf_puts(&name, "nexo_out_");
    for (const char *p = label; *p; p++) {
        char c = *p;
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-';
        nx_buf_putc(&name, ok ? c : '_');
    }
    int rc = nx_bus_durable_consume(nx_channel_bus(l->ch), nx_buf_cstr(&subject), nx_buf_cstr(&name),
                                    on_durable, l, &l->durable);
    if (rc < 0)
        nx_warn("ledger", "%s: no durable reply consumer (%s): replies come over core NATS only",
                label, nx_strerror(rc));
    nx_buf_cleanup(&subject);
    nx_buf_cleanup(&name);
}

static void on_taken(int rc, const struct nx_ledger_row *v, size_t n, void *arg)
{
    struct op *o = arg;
    struct nx_chledger *l = o->l;
    if (!l)
        goto out;
    l->is_taking = false;
    if (rc < 0) {
        nx_error("ledger", "%s: pending replies not read: %s", nx_channel_label(l->ch),
                 nx_strerror(rc));
        schedule_take(l, SWEEP_MS);
        goto out;
    }
    if (n)
        nx_info("ledger", "%s: sending %zu pending repl%s from the ledger", nx_channel_label(l->ch), n,
                n == 1 ? "y" : "ies");
    bool is_refused = false;
    for (size_t i = 0; i < n && o->l; i++) {
        count(m_resent, l->ch);
        int drc = deliver_now(l, v[i].key, v[i].subject, v[i].envelope, v[i].steps_sent);
        if (drc < 0)
            is_refused = true; /* deliver_now scheduled the take after RETRY_MS: keep that delay */
        if (drc == NX_EAGAIN) { /* the adapter's queue is full: the rest waits for the retry too */
            for (size_t k = i + 1; k < n; k++)
                nx_ledger_outbound_unclaim(l->store, v[k].key, NULL, NULL);
            break;
        }
    }
    if (o->l && !is_refused)
        schedule_take(l, n == TAKE_BATCH ? 0 : SWEEP_MS);
out:
    op_free(o);
}

static void take(void *arg)
{
    struct nx_chledger *l = arg;
    l->timer = NULL;
    if (l->is_taking)
        return;
    l->is_taking = true;
    nx_ledger_outbound_take(l->store, nx_channel_type_name(l->ch), nx_channel_instance_key(l->ch),
                            boot(), TAKE_BATCH, on_taken, op_new(l));
}

static void schedule_take(struct nx_chledger *l, uint64_t ms)
{
    if (l->timer)
        nx_timer_cancel(l->timer);
    l->timer = nx_timer_once(nx_channel_loop(l->ch), ms, take, l);
}

uint32_t nx_chledger_steps_done(const struct nx_chledger *l, const struct nx_bus_msg *msg)
{
    return l && msg == l->current ? l->current_steps : 0;
}

void nx_chledger_progress(struct nx_chledger *l, const char *key, uint32_t steps, const char *provider_id)
{
    if (l && key)
        nx_ledger_outbound_progress(l->store, key, steps, provider_id, NULL, NULL);
}

void nx_chledger_sent(struct nx_chledger *l, const char *key, const char *provider_id, int status,
                      const char *error)
{
    if (!l || !key)
        return;
    if (status == NX_ECANCELED) { /* not sent: the next start sends it */
        nx_ledger_outbound_unclaim(l->store, key, NULL, NULL);
        return;
    }
    if (status < 0)
        nx_warn("ledger", "%s: reply %s failed: %s", nx_channel_label(l->ch), key,
                error ? error : nx_strerror(status));
    nx_ledger_outbound_sent(l->store, key, provider_id, status, error, NULL, NULL);
}

void nx_chledger_status(struct nx_chledger *l, const char *provider_id, const char *state,
                        const char *error)
{
    if (!l || !provider_id || !state)
        return;
    if (strcmp(state, "sent") == 0) /* nx_channel_sent recorded that already */
        return;
    if (strcmp(state, "delivered") != 0 && strcmp(state, "read") != 0 && strcmp(state, "failed") != 0) {
        nx_warn("ledger", "%s: delivery state \"%s\" for %s ignored (delivered, read or failed)",
                nx_channel_label(l->ch), state, provider_id);
        return;
    }
    nx_ledger_outbound_status(l->store, nx_channel_type_name(l->ch), nx_channel_instance_key(l->ch),
                              provider_id, state, error, NULL, NULL);
}

/* ---- lifetime ---- */

struct nx_chledger *nx_chledger_new(struct nx_channel *ch, nx_chledger_deliver_fn deliver)
{
    struct nx_store *store = nx_channel_store(ch);
    if (!store)
        return NULL;
    register_metrics();
    struct nx_chledger *l = nx_calloc(1, sizeof *l);
    l->ch = ch;
    l->store = store;
    l->deliver = deliver;
    schedule_take(l, 0); /* replies left pending by the last run */
    if (use_durable)
        start_durable(l);
    return l;
}

void nx_chledger_free(struct nx_chledger *l)
{
    if (!l)
        return;
    if (l->timer)
        nx_timer_cancel(l->timer);
    nx_bus_durable_stop(l->durable);
    for (struct op *o = l->ops; o; o = o->next)
        o->l = NULL;
    free(l);
}
