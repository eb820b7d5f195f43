#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bus/internal.h"
#include "core/alloc.h"
#include "core/buf.h"
#include "core/error.h"
#include "core/log.h"
#include "core/metrics.h"
#include "runtime/runtime.h"

/* In-process matching and delivery. Every delivery goes through a per-subscription FIFO that is
 * drained from a uv_idle handle, so callbacks never run inside publish and a slow or failing
 * subscriber holds back only its own queue. Nothing is dropped: past opts.backlog_warn a warning
 * is logged (once per crossing) and nexo_bus_backlog_warnings_total counts it. */

#define DELIVER_BUDGET 512 /* deliveries per idle tick, so the loop keeps serving I/O */

struct nx_bus_item *nx_bus_item_new(const char *subject, const char *reply_to, const char *data,
                                    size_t len, struct nx_envelope *env_owned)
{
    struct nx_bus_item *it = nx_calloc(1, sizeof *it);

    it->refs = 1;
    it->subject = nx_strdup(subject);
    it->reply_to = reply_to ? nx_strdup(reply_to) : NULL;
    it->data = nx_malloc(len + 1);
    memcpy(it->data, data, len);
    it->data[len] = '\0';
    it->len = len;
    it->env = env_owned;
    return it;
}

struct nx_bus_item *nx_bus_item_ref(struct nx_bus_item *it)
{
    it->refs++;
    return it;
}

void nx_bus_item_unref(struct nx_bus_item *it)
{
    if (!it || --it->refs > 0)
        return;
    free(it->subject);
    free(it->reply_to);
    free(it->data);
    nx_envelope_free(it->env);
    free(it);
}

/* ---- recent ids ---- */

static uint64_t id_hash(const char *id, const char *subject)
{
    uint64_t h = 1469598103934665603ULL;

    for (const char *p = id; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    h = (h ^ '|') * 1099511628211ULL;
    for (const char *p = subject; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    return h | 1; /* 0 marks an empty slot */
}

static bool gen_has(const uint64_t *g, size_t cap, uint64_t h)
{
    if (!g)
        return false;
    for (size_t i = h & (cap - 1), n = 0; n < cap; i = (i + 1) & (cap - 1), n++) {
        if (g[i] == 0)
            return false;
        if (g[i] == h)
            return true;
    }
    return false;
}

/* True when (id, subject) is new (and remembers it); false when it was seen recently. */
bool nx_seen_check_add(struct nx_seen *s, size_t window, const char *id, const char *subject)
{
    uint64_t h = id_hash(id, subject);
    size_t i;

    if (!s->cap) {
        s->cap = 64;
        while (s->cap < window)
            s->cap <<= 1; /* a generation holds window/2 ids at load factor <= 0.5 */
        s->gen[0] = nx_calloc(s->cap, sizeof(uint64_t));
    }
    if (gen_has(s->gen[0], s->cap, h) || gen_has(s->gen[1], s->cap, h))
        return false;
    if (s->n_cur >= s->cap / 2) {
        free(s->gen[1]);
        s->gen[1] = s->gen[0];
        s->gen[0] = nx_calloc(s->cap, sizeof(uint64_t));
        s->n_cur = 0;
    }
    for (i = h & (s->cap - 1); s->gen[0][i]; i = (i + 1) & (s->cap - 1))
        ;
    s->gen[0][i] = h;
    s->n_cur++;
    return true;
}

void nx_seen_cleanup(struct nx_seen *s)
{
    free(s->gen[0]);
    free(s->gen[1]);
    memset(s, 0, sizeof *s);
}

/* ---- metrics ---- */

static struct nx_metric *m_delivered, *m_failed, *m_backlog_warn;

static void metrics_init(void)
{
    m_delivered = nx_metric_counter("nexo_bus_delivered_total",
                                    "Events handled by a subscriber (callback returned 0).", NULL);
    m_failed = nx_metric_counter("nexo_bus_delivery_failures_total",
                                 "Subscriber callbacks that reported a failure.", NULL);
    m_backlog_warn = nx_metric_counter("nexo_bus_backlog_warnings_total",
                                       "Times a subscriber's backlog crossed the warning mark.", NULL);
}

/* ---- queues ---- */

static void ready_push(struct nx_bus *bus, struct nx_bus_sub *sub);

static void on_idle(uv_idle_t *h);

static void wake(struct nx_bus *bus)
{
    if (!bus->is_idle_active && bus->ready_head) {
        uv_idle_start(&bus->idle, on_idle);
        bus->is_idle_active = true;
    }
}

static void ready_push(struct nx_bus *bus, struct nx_bus_sub *sub)
{
    if (sub->is_listed_ready || sub->is_waiting_retry || sub->is_dead || !sub->head)
        return;
    sub->is_listed_ready = true;
    sub->ready_next = NULL;
    if (bus->ready_tail)
        bus->ready_tail->ready_next = sub;
    else
        bus->ready_head = sub;
    bus->ready_tail = sub;
    wake(bus);
}

void nx_local_enqueue(struct nx_bus_sub *sub, struct nx_bus_item *item)
{
    struct nx_delivery *d = nx_calloc(1, sizeof *d);

    d->item = nx_bus_item_ref(item);
    if (sub->tail)
        sub->tail->next = d;
    else
        sub->head = d;
    sub->tail = d;
    sub->depth++;
    if (sub->depth >= sub->bus->opts.backlog_warn && !sub->is_backlog_warned) {
        sub->is_backlog_warned = true;
        if (!m_delivered)
            metrics_init();
        nx_counter_add(m_backlog_warn, NULL, 1);
        nx_warn("bus", "subscriber %s is slow: %zu events waiting (nothing is dropped)", sub->name,
                sub->depth);
    }
    ready_push(sub->bus, sub);
}

static void delivery_free(struct nx_delivery *d)
{
    nx_bus_item_unref(d->item);
    free(d->last_error);
    free(d);
}

struct grp {
    const char *pattern, *group;
    struct nx_bus_sub *best;
};

char *nx_local_dispatch(struct nx_bus *bus, struct nx_bus_item *item, bool want_groups)
{
    struct nx_buf groups = NX_BUF_INIT;
    /* queue groups seen in this dispatch: first member found + best (least backlog) */
    struct grp g[16];
    struct grp *gv = g;
    size_t ng = 0, gcap = NX_ARRAY_LEN(g);

    for (struct nx_bus_sub *s = bus->subs; s; s = s->next) {
        size_t i;

        if (s->is_dead || !nx_subject_matches(s->pattern, item->subject))
            continue;
        if (!s->group) {
            nx_local_enqueue(s, item);
            continue;
        }
        for (i = 0; i < ng; i++)
            if (!strcmp(gv[i].group, s->group) && !strcmp(gv[i].pattern, s->pattern))
                break;
        if (i == ng) {
            if (ng == gcap) {
                void *nv = nx_malloc(2 * gcap * sizeof *gv);

                memcpy(nv, gv, ng * sizeof *gv);
                if (gv != g)
                    free(gv);
                gv = nv;
                gcap *= 2;
            }
            gv[ng].pattern = s->pattern;
            gv[ng].group = s->group;
            gv[ng].best = s;
            ng++;
        } else if (s->depth < gv[i].best->depth) {
            gv[i].best = s;
        }
    }
    if (want_groups)
        nx_buf_putc(&groups, '1');
    for (size_t i = 0; i < ng; i++) {
        nx_local_enqueue(gv[i].best, item);
        if (want_groups)
            nx_buf_printf(&groups, ",%s", gv[i].group);
    }
    if (gv != g)
        free(gv);
    return want_groups ? nx_buf_steal(&groups) : NULL;
}

static void on_retry_timer(void *arg)
{
    struct nx_bus_sub *sub = arg;

    sub->retry_timer = NULL;
    sub->is_waiting_retry = false;
    ready_push(sub->bus, sub);
}

int nx_bus_fail(struct nx_bus_msg *msg, const char *fmt, ...)
{
    struct nx_buf b = NX_BUF_INIT;
    va_list ap;

    va_start(ap, fmt);
    nx_buf_vprintf(&b, fmt, ap);
    va_end(ap);
    free(msg->error);
    msg->error = nx_buf_steal(&b);
    return NX_EIO;
}

/* Runs the head delivery of sub once. Returns false when the subscriber unsubscribed itself
 * (sub is freed). */
static bool deliver_one(struct nx_bus *bus, struct nx_bus_sub *sub)
{
    struct nx_delivery *d = sub->head;
    struct nx_bus_msg m = {0};
    int rc;

    d->attempts++;
    m.subject = d->item->subject;
    m.reply_to = d->item->reply_to;
    m.env = d->item->env;
    m.data = d->item->data;
    m.len = d->item->len;
    m.attempt = d->attempts;
    m.sub = sub;
    sub->is_in_callback = true;
    rc = sub->cb(bus, &m, sub->arg);
    sub->is_in_callback = false;
    if (sub->is_dead) {
        free(m.error);
        nx_local_sub_free(sub);
        return false;
    }
    if (rc >= 0) {
        bus->stats.delivered++;
        nx_counter_add(m_delivered, NULL, 1);
        if (d->item->is_redelivery)
            nx_dlq_delete(bus, d->item->env->id, sub->name);
        free(m.error);
    } else {
        bus->stats.failed++;
        nx_counter_add(m_failed, NULL, 1);
        free(d->last_error);
        d->last_error = m.error ? m.error : nx_strdup(nx_strerror(rc));
        if (d->attempts < bus->conf.dlq.max_attempts) {
            uint32_t shift = d->attempts - 1 < 6 ? d->attempts - 1 : 6;
            uint64_t ms = (uint64_t)bus->opts.retry_backoff_ms << shift;

            nx_debug("bus", "%s failed event %s (attempt %u): %s", sub->name, d->item->env->id,
                     d->attempts, d->last_error);
            sub->is_waiting_retry = true;
            sub->retry_timer = nx_timer_once(bus->loop, ms, on_retry_timer, sub);
            return true;
        }
        nx_warn("bus", "%s failed event %s %u times, moved to dead letters: %s", sub->name,
                d->item->env->id, d->attempts, d->last_error);
        nx_dlq_put(bus, sub, d);
    }
    sub->head = d->next;
    if (!sub->head)
        sub->tail = NULL;
    sub->depth--;
    if (sub->is_backlog_warned && sub->depth < bus->opts.backlog_warn / 2)
        sub->is_backlog_warned = false;
    delivery_free(d);
    return true;
}

static void on_idle(uv_idle_t *h)
{
    struct nx_bus *bus = h->data;
    int budget = DELIVER_BUDGET;

    if (!m_delivered)
        metrics_init();
    while (bus->ready_head && budget > 0) {
        struct nx_bus_sub *sub = bus->ready_head;

        bus->ready_head = sub->ready_next;
        if (!bus->ready_head)
            bus->ready_tail = NULL;
        sub->is_listed_ready = false;
        /* a few per subscriber per turn: fair, and cheap for the common one-subscriber case */
        for (int i = 0; i < 64 && budget > 0 && sub->head && !sub->is_waiting_retry; i++, budget--) {
            if (!deliver_one(bus, sub))
                break;
            if (!sub->head || sub->is_waiting_retry)
                break;
            if (i == 63 || budget == 1)
                ready_push(bus, sub);
        }
    }
    if (!bus->ready_head && bus->is_idle_active) {
        uv_idle_stop(&bus->idle);
        bus->is_idle_active = false;
    }
}

void nx_local_sub_free(struct nx_bus_sub *sub)
{
    struct nx_bus *bus = sub->bus;

    if (sub->is_in_callback) {
        sub->is_dead = true;
        return;
    }
    if (sub->retry_timer)
        nx_timer_cancel(sub->retry_timer);
    if (sub->is_listed_ready) {
        struct nx_bus_sub **pp = &bus->ready_head;

        bus->ready_tail = NULL;
        while (*pp) {
            if (*pp == sub)
                *pp = sub->ready_next;
            else {
                bus->ready_tail = *pp;
                pp = &(*pp)->ready_next;
            }
        }
    }
    while (sub->head) {
        struct nx_delivery *d = sub->head;

        sub->head = d->next;
        delivery_free(d);
    }
    if (sub->prev)
        sub->prev->next = sub->next;
    else if (bus->subs == sub)
        bus->subs = sub->next;
    if (sub->next)
        sub->next->prev = sub->prev;
    bus->n_subs--;
    nx_seen_cleanup(&sub->seen);
    free(sub->pattern);
    free(sub->group);
    free(sub->name);
    free(sub);
}

void nx_local_drop_all(struct nx_bus *bus)
{
    while (bus->subs) {
        bus->subs->is_in_callback = false;
        nx_local_sub_free(bus->subs);
    }
    if (bus->is_idle_active) {
        uv_idle_stop(&bus->idle);
        bus->is_idle_active = false;
    }
}
