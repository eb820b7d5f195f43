#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bus/internal.h"
#include "core/alloc.h"
#include "core/clock.h"
#include "core/error.h"
#include "core/log.h"
#include "core/metrics.h"
#include "runtime/runtime.h"

/* The bus front: the public API, the mode, request/reply, the delivery rule for events that
 * come back from NATS, and teardown. Routing of outgoing events is in resilient.c. */

static const char *const mode_names[] = {"in-process", "nats", "fallback"};

static struct nx_metric *m_mode, *m_published;

struct nx_req {
    struct nx_req *next;
    struct nx_bus *bus;
    char *subject;
    nx_bus_reply_cb cb;
    void *arg;
    struct nx_timer *timer;
};

static void metrics_init(void)
{
    static const char *const mode_label[] = {"mode", NULL};

    m_mode = nx_metric_gauge("nexo_bus_mode", "1 for the bus's current mode, 0 for the others.",
                             mode_label);
    m_published = nx_metric_counter("nexo_bus_published_total", "Events accepted for publishing.",
                                    NULL);
}

void nx_bus_set_mode(struct nx_bus *bus, int mode)
{
    bool is_first = bus->stats.mode_changes == 0;

    if (!m_mode)
        metrics_init();
    if (!is_first && bus->mode == mode)
        return;
    if (is_first)
        nx_info("bus", "%s: mode %s", bus->name, mode_names[mode]);
    else
        nx_warn("bus", "%s: mode %s -> %s", bus->name, mode_names[bus->mode], mode_names[mode]);
    bus->mode = mode;
    bus->stats.mode_changes++;
    for (int i = 0; i < 3; i++) {
        const char *lv[] = {mode_names[i]};

        nx_gauge_set(m_mode, lv, i == mode ? 1 : 0);
    }
}

const char *nx_bus_mode(const struct nx_bus *bus)
{
    return mode_names[bus->mode];
}

bool nx_bus_is_ready(const struct nx_bus *bus)
{
    return bus && !bus->is_closing;
}

void nx_bus_stats(const struct nx_bus *bus, struct nx_bus_stats *out)
{
    *out = bus->stats;
    out->queue_depth = bus->q_waiting + bus->in_flight;
    out->in_flight = bus->in_flight;
    out->is_loaded = bus->is_loaded;
}

void nx_bus_on_connection(struct nx_bus *bus, bool is_connected)
{
    if (bus->is_closing || bus->is_connected == is_connected)
        return;
    bus->is_connected = is_connected;
    nx_bus_set_mode(bus, is_connected ? NX_BUS_NATS : NX_BUS_FALLBACK);
    nx_resilient_on_connection(bus, is_connected);
    nx_js_on_connection(bus, is_connected);
}

static void on_tick(uv_timer_t *t)
{
    nx_resilient_tick(t->data);
}

/* ---- request inbox ---- */

static int on_inbox(struct nx_bus *bus, struct nx_bus_msg *m, void *arg)
{
    struct nx_req **pp = &bus->reqs;

    (void)arg;
    for (; *pp; pp = &(*pp)->next) {
        struct nx_req *r = *pp;

        if (strcmp(r->subject, m->subject))
            continue;
        *pp = r->next;
        nx_timer_cancel(r->timer);
        r->cb(bus, 0, m, r->arg);
        free(r->subject);
        free(r);
        break;
    }
    return 0; /* a late or unknown reply is not a failure */
}

static void on_req_timeout(void *arg)
{
    struct nx_req *r = arg;
    struct nx_bus *bus = r->bus;

    for (struct nx_req **pp = &bus->reqs; *pp; pp = &(*pp)->next) {
        if (*pp == r) {
            *pp = r->next;
            break;
        }
    }
    r->cb(bus, NX_ETIMEDOUT, NULL, r->arg);
    free(r->subject);
    free(r);
}

static int sub_new(struct nx_bus *bus, const char *pattern, const char *group, nx_bus_cb cb,
                   void *arg, bool is_internal, struct nx_bus_sub **out)
{
    struct nx_bus_sub *sub;
    size_t nlen;
    int rc;

    if (out)
        *out = NULL;
    if (bus->is_closing)
        return NX_ECLOSED;
    if (!cb || !nx_subject_is_valid(pattern, true))
        return NX_EINVAL;
    if (group && (!nx_subject_is_valid(group, false) || strchr(group, '.') || strchr(group, ',')))
        return NX_EINVAL;
    sub = nx_calloc(1, sizeof *sub);
    sub->bus = bus;
    sub->pattern = nx_strdup(pattern);
    sub->group = group ? nx_strdup(group) : NULL;
    nlen = strlen(pattern) + (group ? strlen(group) + 1 : 0) + 1;
    sub->name = nx_malloc(nlen);
    snprintf(sub->name, nlen, "%s%s%s", pattern, group ? "#" : "", group ? group : "");
    sub->cb = cb;
    sub->arg = arg;
    sub->is_internal = is_internal;
    sub->next = bus->subs;
    if (bus->subs)
        bus->subs->prev = sub;
    bus->subs = sub;
    bus->n_subs++;
    if (bus->nats && (rc = nx_bus_nats_backend.subscribe(bus, sub)) < 0) {
        nx_local_sub_free(sub);
        return rc;
    }
    if (out)
        *out = sub;
    return 0;
}

int nx_bus_new(uv_loop_t *loop, const struct nx_bus_opts *opts, struct nx_bus **out)
{
    static const struct nx_bus_opts defaults = {0};
    struct nx_bus *bus;
    char pattern[96];
    int rc;

    *out = NULL;
    if (!opts)
        opts = &defaults;
    bus = nx_calloc(1, sizeof *bus);
    bus->loop = loop;
    bus->opts = *opts;
    if (!bus->opts.replay_delay_ms)
        bus->opts.replay_delay_ms = 500;
    if (!bus->opts.retain_ms)
        bus->opts.retain_ms = 2000;
    if (!bus->opts.max_in_flight)
        bus->opts.max_in_flight = 512;
    if (!bus->opts.retry_backoff_ms)
        bus->opts.retry_backoff_ms = 50;
    if (!bus->opts.poll_ms)
        bus->opts.poll_ms = 1000;
    if (!bus->opts.flush_timeout_ms)
        bus->opts.flush_timeout_ms = 2000;
    if (!bus->opts.backlog_warn)
        bus->opts.backlog_warn = 10000;
    if (!bus->opts.dedupe_window)
        bus->opts.dedupe_window = 16384;
    if (opts->conf) {
        bus->conf = *opts->conf;
        bus->has_conf = true;
    } else {
        bus->conf.type = NX_BROKER_LOCAL;
    }
    if (!bus->conf.dlq.max_attempts)
        bus->conf.dlq.max_attempts = 3;
    if (!bus->conf.limits.max_payload)
        bus->conf.limits.max_payload = 4u << 20;
    if (!bus->conf.limits.max_pending)
        bus->conf.limits.max_pending = 10000;
    snprintf(bus->name, sizeof bus->name, "%s", opts->name ? opts->name : "nexo");
    bus->opts.name = NULL;
    nx_uuid_v4(bus->instance);
    uv_idle_init(loop, &bus->idle);
    bus->idle.data = bus;
    uv_timer_init(loop, &bus->tick);
    bus->tick.data = bus;
    bus->has_tick = true;
    nx_mailbox_init(&bus->mb, loop);
    bus->has_mb = true;
    bus->mode = bus->conf.type == NX_BROKER_NATS ? NX_BUS_FALLBACK : NX_BUS_INPROC;
    nx_bus_set_mode(bus, bus->mode);
    if (bus->conf.type == NX_BROKER_NATS) {
        nx_js_init(bus);
        if ((rc = nx_bus_nats_backend.open(bus)) < 0)
            goto fail;
        uv_timer_start(&bus->tick, on_tick, 50, 50);
    } else {
        bus->is_loaded = true;
        if (bus->opts.store) /* dead letters retried from the CLI */
            uv_timer_start(&bus->tick, on_tick, bus->opts.poll_ms, bus->opts.poll_ms);
    }
    /* the strings belong to the config snapshot: libnats has copied what it needs */
    memset(&bus->conf.auth, 0, sizeof bus->conf.auth);
    memset(&bus->conf.tls, 0, sizeof bus->conf.tls);
    bus->conf.url = NULL;
    bus->conf.urls = NULL;
    bus->conf.persistence.path = NULL;
    bus->conf.jetstream.inbound_stream = bus->conf.jetstream.outbound_stream = NULL;
    bus->conf.jetstream.route_stream = bus->conf.jetstream.sessions_bucket = NULL;
    bus->conf.jetstream.storage = NULL;
    bus->conf.fallback.mode = (opts->conf && opts->conf->fallback.mode &&
                               !strcmp(opts->conf->fallback.mode, "drop")) ? "drop" : "local_queue";
    snprintf(bus->inbox_prefix, sizeof bus->inbox_prefix, "_INBOX.%.8s%.4s%.4s", bus->instance,
             bus->instance + 9, bus->instance + 14);
    snprintf(pattern, sizeof pattern, "%s.*", bus->inbox_prefix);
    if ((rc = sub_new(bus, pattern, NULL, on_inbox, NULL, true, &bus->inbox)) < 0)
        goto fail;
    if (bus->conf.type == NX_BROKER_NATS)
        nx_resilient_load(bus);
    *out = bus;
    return 0;
fail:
    nx_bus_free(bus);
    return rc;
}

static void on_handle_closed(uv_handle_t *h)
{
    struct nx_bus *bus = h->data;

    if (--bus->close_stage == 0)
        free(bus);
}

static void on_mb_closed(struct nx_mailbox *mb)
{
    struct nx_bus *bus = nx_container_of(mb, struct nx_bus, mb);

    if (--bus->close_stage == 0)
        free(bus);
}

/* The last step, once nothing can call back into the bus: no flush in flight, no store job
 * pending, the NATS connection closed. */
void nx_bus_maybe_finish_close(struct nx_bus *bus)
{
    if (!bus->is_closing || bus->close_stage != 0 || bus->is_flushing || bus->store_ops > 0 ||
        bus->js_ops > 0)
        return;
    nx_js_destroy(bus); /* its subscriptions before the connection */
    if (bus->nats)
        nx_bus_nats_backend.destroy(bus);
    bus->close_stage = 3;
    uv_close((uv_handle_t *)&bus->idle, on_handle_closed);
    uv_close((uv_handle_t *)&bus->tick, on_handle_closed);
    nx_mailbox_close(&bus->mb, on_mb_closed);
}

void nx_bus_free(struct nx_bus *bus)
{
    if (!bus || bus->is_closing)
        return;
    bus->is_closing = true;
    nx_bus_later_free(bus->later);
    bus->later = NULL;
    while (bus->reqs) {
        struct nx_req *r = bus->reqs;

        bus->reqs = r->next;
        nx_timer_cancel(r->timer);
        r->cb(bus, NX_ECLOSED, NULL, r->arg);
        free(r->subject);
        free(r);
    }
    for (struct nx_bus_sub *s = bus->subs; s; s = s->next)
        if (bus->nats)
            nx_bus_nats_backend.unsubscribe(bus, s);
    nx_local_drop_all(bus);
    uv_timer_stop(&bus->tick);
    nx_js_close(bus);
    if (bus->nats)
        nx_bus_nats_backend.close(bus);
    nx_resilient_free(bus);
    nx_bus_maybe_finish_close(bus);
}

/* ---- publish / subscribe ---- */

static int make_item(struct nx_bus *bus, const char *subject, const char *reply_to,
                     const struct nx_envelope *env, struct nx_bus_item **out)
{
    char *data;
    size_t len;

    *out = NULL;
    if (bus->is_closing)
        return NX_ECLOSED;
    if (!env || !subject || !nx_subject_is_valid(subject, false))
        return NX_EINVAL;
    data = nx_envelope_dump(env, &len);
    if (len > bus->conf.limits.max_payload) {
        free(data);
        return NX_ETOOBIG;
    }
    *out = nx_bus_item_new(subject, reply_to, data, len, nx_envelope_copy(env));
    free(data);
    return 0;
}

static bool is_ephemeral(const struct nx_bus *bus, const struct nx_bus_item *it)
{
    return it->reply_to || !strncmp(it->subject, "_INBOX.", 7) ||
           !strncmp(it->subject, bus->inbox_prefix, strlen(bus->inbox_prefix));
}

/* Requests and replies are never queued: they are only useful before their deadline. */
static int send_ephemeral(struct nx_bus *bus, struct nx_bus_item *it)
{
    int rc = 0;

    if (bus->nats && bus->is_connected)
        rc = nx_bus_nats_backend.publish(bus, it, NULL);
    else
        nx_local_dispatch(bus, it, false);
    return rc;
}

int nx_bus_publish(struct nx_bus *bus, const char *subject, const struct nx_envelope *env)
{
    return nx_bus_publish_as(bus, subject, env, NX_BUS_WORK);
}

int nx_bus_publish_as(struct nx_bus *bus, const char *subject, const struct nx_envelope *env,
                      enum nx_bus_class cls)
{
    struct nx_bus_item *it = NULL;
    int rc;

    if ((rc = make_item(bus, subject ? subject : env ? env->topic : NULL, NULL, env, &it)) < 0)
        return rc;
    if (!m_published)
        metrics_init();
    if (bus->mode == NX_BUS_INPROC) {
        nx_local_dispatch(bus, it, false);
    } else if (is_ephemeral(bus, it)) {
        rc = send_ephemeral(bus, it);
    } else {
        rc = nx_resilient_publish(bus, it, cls);
    }
    if (rc == 0) {
        bus->stats.published++;
        nx_counter_add(m_published, NULL, 1);
    }
    nx_bus_item_unref(it);
    return rc;
}

int nx_bus_subscribe(struct nx_bus *bus, const char *pattern, nx_bus_cb cb, void *arg,
                     struct nx_bus_sub **out)
{
    return sub_new(bus, pattern, NULL, cb, arg, false, out);
}

int nx_bus_queue_subscribe(struct nx_bus *bus, const char *pattern, const char *group,
                           nx_bus_cb cb, void *arg, struct nx_bus_sub **out)
{
    if (!group)
        return NX_EINVAL;
    return sub_new(bus, pattern, group, cb, arg, false, out);
}

void nx_bus_unsubscribe(struct nx_bus *bus, struct nx_bus_sub *sub)
{
    if (!sub || sub->is_dead)
        return;
    if (bus->nats)
        nx_bus_nats_backend.unsubscribe(bus, sub);
    nx_local_sub_free(sub);
}

const char *nx_bus_sub_name(const struct nx_bus_sub *sub)
{
    return sub->name;
}

size_t nx_bus_sub_backlog(const struct nx_bus_sub *sub)
{
    return sub->depth;
}

int nx_bus_request(struct nx_bus *bus, const char *subject, const struct nx_envelope *env,
                   uint32_t timeout_ms, nx_bus_reply_cb cb, void *arg)
{
    struct nx_bus_item *it = NULL;
    struct nx_req *r;
    char inbox[128];
    int rc;

    if (!cb)
        return NX_EINVAL;
    snprintf(inbox, sizeof inbox, "%s.%llu", bus->inbox_prefix,
             (unsigned long long)++bus->next_req);
    if ((rc = make_item(bus, subject ? subject : env ? env->topic : NULL, inbox, env, &it)) < 0)
        return rc;
    r = nx_calloc(1, sizeof *r);
    r->bus = bus;
    r->subject = nx_strdup(inbox);
    r->cb = cb;
    r->arg = arg;
    r->timer = nx_timer_once(bus->loop, timeout_ms, on_req_timeout, r);
    r->next = bus->reqs;
    bus->reqs = r;
    rc = send_ephemeral(bus, it);
    nx_bus_item_unref(it);
    return 0; /* a failed send shows as a timeout */
}

int nx_bus_reply(struct nx_bus *bus, const struct nx_bus_msg *msg, const struct nx_envelope *env)
{
    struct nx_bus_item *it = NULL;
    int rc;

    if (!msg || !msg->reply_to)
        return NX_EINVAL;
    if ((rc = make_item(bus, msg->reply_to, NULL, env, &it)) < 0)
        return rc;
    if (bus->mode == NX_BUS_INPROC)
        nx_local_dispatch(bus, it, false);
    else
        rc = send_ephemeral(bus, it);
    nx_bus_item_unref(it);
    return rc;
}

/* ---- events from NATS ---- */

static bool group_listed(const char *local, const char *group)
{
    size_t gl = strlen(group);

    for (const char *p = strchr(local, ','); p; p = strchr(p + 1, ',')) {
        if (!strncmp(p + 1, group, gl) && (p[1 + gl] == ',' || p[1 + gl] == '\0'))
            return true;
    }
    return false;
}

/* The delivery rule with NATS up (docs/bus.md): this process hears its own events back from
 * NATS (echo on) and delivers nothing locally, so each subscriber sees an event once. Events
 * replayed after an outage were already delivered in-process at their origin: the Nx-Local
 * header lists that, and they are skipped by the origin's plain subscribers and by every member
 * of a queue group the origin served. A replay overlap is caught by the recent-id set. */
void nx_bus_on_remote(struct nx_bus *bus, struct nx_bus_sub *sub, struct nx_bus_item *item,
                      const char *origin, const char *local)
{
    if (bus->is_closing || sub->is_dead)
        goto out;
    if (local && !sub->group && origin && !strcmp(origin, bus->instance))
        goto out;
    if (local && sub->group && group_listed(local, sub->group))
        goto out;
    if (!item->reply_to && !sub->is_internal &&
        !nx_seen_check_add(&sub->seen, bus->opts.dedupe_window, item->env->id, item->subject)) {
        bus->stats.duplicates++;
        goto out;
    }
    nx_local_enqueue(sub, item);
out:
    nx_bus_item_unref(item);
}
