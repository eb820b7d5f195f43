#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bus/envelope.h"
#include "channels/policy.h"
#include "core/alloc.h"
#include "core/buf.h"
#include "core/clock.h"
#include "core/error.h"
#include "core/log.h"
#include "core/metrics.h"

/* sender_rate_limit: a token bucket per (agent, channel, sender), refilled at rps up to burst.
 * A message over the limit is dropped and counted; the first drop of a flood (and at most one per
 * refill window, 10 s at least) gets a short notice back. Buckets live in a chained hash table of
 * at most max_buckets entries: a new bucket at the cap first evicts the idle ones (full again),
 * then the least recently used. */

#define NBUCKETS 1024
#define NOTICE_MIN_MS 10000
#define SWEEP_MS 60000

static const char notice_text[] =
    "You are sending messages faster than I can answer them; the last ones were skipped. Please "
    "wait a moment before writing again.";

struct bucket {
    struct bucket *next;
    char *key;
    double tokens;
    double rps;
    uint32_t burst;
    uint64_t last_ms;   /* last refill */
    uint64_t used_ms;   /* last message: the least recently used bucket goes first */
    uint64_t notice_ms; /* last notice; 0 = none */
    bool is_noticed;    /* this flood got its notice */
};

struct nx_sender_limiter {
    struct nx_bus *bus;
    struct bucket *table[NBUCKETS];
    size_t n, max;
    uint64_t last_sweep_ms;
};

static struct nx_metric *m_dropped;

struct nx_sender_limiter *nx_sender_limiter_new(struct nx_bus *bus, size_t max_buckets)
{
    static const char *const drop_labels[] = {"channel", "instance", "reason", NULL};
    struct nx_sender_limiter *l = nx_calloc(1, sizeof *l);
    if (!m_dropped)
        m_dropped = nx_metric_counter("nexo_channel_dropped_total",
                                      "channel messages dropped (allowlist, send failure...)", drop_labels);
    l->bus = bus;
    l->max = max_buckets ? max_buckets : 10000;
    return l;
}

static void bucket_free(struct bucket *b)
{
    free(b->key);
    free(b);
}

void nx_sender_limiter_free(struct nx_sender_limiter *l)
{
    if (!l)
        return;
    for (size_t i = 0; i < NBUCKETS; i++) {
        while (l->table[i]) {
            struct bucket *b = l->table[i];
            l->table[i] = b->next;
            bucket_free(b);
        }
    }
    free(l);
}

size_t nx_sender_limiter_size(const struct nx_sender_limiter *l)
{
    return l ? l->n : 0;
}

static uint64_t hash(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ULL;
    }
    return h;
}

static void refill(struct bucket *b, uint64_t now_ms)
{
    if (now_ms > b->last_ms) {
        b->tokens += (double)(now_ms - b->last_ms) / 1000.0 * b->rps;
        if (b->tokens > b->burst)
            b->tokens = b->burst;
    }
    b->last_ms = now_ms > b->last_ms ? now_ms : b->last_ms;
}

static bool is_idle(struct bucket *b, uint64_t now_ms)
{
    refill(b, now_ms);
    return b->tokens >= b->burst;
}

/* Drops the idle buckets; with evict_one, also the least recently used one when none was idle. */
static void sweep(struct nx_sender_limiter *l, uint64_t now_ms, bool evict_one)
{
    size_t before = l->n;
    struct bucket **oldest = NULL;
    for (size_t i = 0; i < NBUCKETS; i++) {
        for (struct bucket **pp = &l->table[i]; *pp;) {
            struct bucket *b = *pp;
            if (is_idle(b, now_ms)) {
                *pp = b->next;
                bucket_free(b);
                l->n--;
                continue;
            }
            if (!oldest || b->used_ms < (*oldest)->used_ms)
                oldest = pp;
            pp = &b->next;
        }
    }
    if (evict_one && l->n == before && oldest) {
        struct bucket *b = *oldest;
        *oldest = b->next;
        bucket_free(b);
        l->n--;
    }
    l->last_sweep_ms = now_ms;
}

enum nx_limit_verdict nx_sender_limiter_take(struct nx_sender_limiter *l, const char *key, double rps,
                                             uint32_t burst, uint64_t now_ms)
{
    if (!(rps > 0) || burst == 0)
        return NX_LIMIT_PASS;
    if (now_ms - l->last_sweep_ms >= SWEEP_MS)
        sweep(l, now_ms, false);
    size_t slot = hash(key) % NBUCKETS;
    struct bucket *b = l->table[slot];
    while (b && strcmp(b->key, key) != 0)
        b = b->next;
    if (!b) {
        if (l->n >= l->max)
            sweep(l, now_ms, true);
        b = nx_calloc(1, sizeof *b);
        b->key = nx_strdup(key);
        b->tokens = burst;
        b->last_ms = now_ms;
        b->next = l->table[slot];
        l->table[slot] = b;
        l->n++;
    }
    b->rps = rps;
    b->burst = burst;
    b->used_ms = now_ms;
    refill(b, now_ms);
    if (b->tokens >= 1.0) {
        b->tokens -= 1.0;
        b->is_noticed = false;
        return NX_LIMIT_PASS;
    }
    uint64_t window = (uint64_t)ceil((double)burst / rps * 1000.0);
    if (window < NOTICE_MIN_MS)
        window = NOTICE_MIN_MS;
    if (!b->is_noticed && (b->notice_ms == 0 || now_ms - b->notice_ms >= window)) {
        b->is_noticed = true;
        b->notice_ms = now_ms;
        return NX_LIMIT_DROP_NOTICE;
    }
    return NX_LIMIT_DROP;
}

/* ---- configuration ---- */

static bool rate_from_json(const json_t *o, double *rps, uint32_t *burst)
{
    const json_t *r = json_object_get(o, "rps"), *b = json_object_get(o, "burst");
    if (!json_is_number(r) || !(json_number_value(r) > 0))
        return false;
    if (b && (!json_is_integer(b) || json_integer_value(b) < 1 || json_integer_value(b) > 1000000))
        return false;
    *rps = json_number_value(r);
    *burst = b ? (uint32_t)json_integer_value(b) : 5;
    return true;
}

bool nx_sender_limit_for(const struct nx_agent_conf *a, const struct nx_binding_conf *b, double *rps,
                         uint32_t *burst)
{
    const json_t *o = b && b->overrides ? json_object_get(b->overrides, "sender_rate_limit") : NULL;
    const char *word = json_string_value(o);
    if (word && strcmp(word, "disable") == 0)
        return false;
    if (json_is_object(o)) {
        if (rate_from_json(o, rps, burst))
            return true;
        nx_warn("channels", "agent %s: binding %s: sender_rate_limit override is not "
                "{rps > 0, burst >= 1}: the agent's limit applies", a->id, b->plugin);
    } else if (o && !json_is_null(o) && !(word && strcmp(word, "inherit") == 0)) {
        nx_warn("channels", "agent %s: binding %s: sender_rate_limit override must be inherit, disable "
                "or {rps, burst}: the agent's limit applies", a->id, b->plugin);
    }
    if (!a->sender_rate_limit || !(a->sender_rate_limit->rps > 0))
        return false;
    *rps = a->sender_rate_limit->rps;
    *burst = a->sender_rate_limit->burst ? a->sender_rate_limit->burst : 5;
    return true;
}

static const struct nx_binding_conf *find_binding(const struct nx_agent_conf *a, const char *plugin,
                                                  const char *instance)
{
    for (size_t k = 0; k < a->n_inbound_bindings; k++) {
        const struct nx_binding_conf *b = &a->inbound_bindings[k];
        if (strcmp(b->plugin, plugin) != 0)
            continue;
        if (instance ? (b->instance && strcmp(b->instance, instance) == 0) : !b->instance)
            return b;
    }
    return NULL;
}

static void send_notice(struct nx_sender_limiter *l, const struct nx_router_gate_in *in, const char *label)
{
    struct nx_buf subject = NX_BUF_INIT;
    struct nx_envelope *env = NULL;
    char key[37];
    nx_uuid_v4(key);
    nx_buf_printf(&subject, "plugin.outbound.%s", label);
    json_t *payload = json_pack("{s:s, s:s, s:s}", "to", in->peer, "text", notice_text, "key", key);
    int rc = nx_envelope_new(nx_buf_cstr(&subject), in->agent->id, NULL, payload, &env);
    if (rc == 0)
        rc = nx_bus_publish_as(l->bus, nx_buf_cstr(&subject), env, NX_BUS_ANSWER);
    if (rc < 0)
        nx_warn("channels", "%s: rate-limit notice to %s not sent: %s", label, in->peer, nx_strerror(rc));
    nx_envelope_free(env);
    json_decref(payload);
    nx_buf_cleanup(&subject);
}

bool nx_sender_limiter_gate(const struct nx_router_gate_in *in, void *arg)
{
    struct nx_sender_limiter *l = arg;
    double rps = 0;
    uint32_t burst = 0;
    if (!l || !nx_sender_limit_for(in->agent, find_binding(in->agent, in->plugin, in->instance), &rps,
                                   &burst))
        return true;
    struct nx_buf key = NX_BUF_INIT, label = NX_BUF_INIT;
    nx_buf_printf(&label, "%s%s%s", in->plugin, in->instance ? "." : "", in->instance ? in->instance : "");
    nx_buf_printf(&key, "%s\x1f%s\x1f%s", in->agent->id, nx_buf_cstr(&label), in->sender);
    enum nx_limit_verdict v = nx_sender_limiter_take(l, nx_buf_cstr(&key), rps, burst, nx_mono_ms());
    if (v != NX_LIMIT_PASS) {
        const char *const lv[] = {in->plugin, in->instance ? in->instance : "default", "rate_limited"};
        nx_counter_add(m_dropped, lv, 1);
        if (v == NX_LIMIT_DROP_NOTICE) {
            nx_info("channels", "agent %s: sender %s on %s is over sender_rate_limit (%.3g/s, burst %u): "
                    "dropping", in->agent->id, in->sender, nx_buf_cstr(&label), rps, burst);
            if (l->bus && in->peer)
                send_notice(l, in, nx_buf_cstr(&label));
        }
    }
    nx_buf_cleanup(&key);
    nx_buf_cleanup(&label);
    return v == NX_LIMIT_PASS;
}
