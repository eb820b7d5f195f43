#include <stdlib.h>
#include <string.h>

#include "bus/internal.h"
#include "core/alloc.h"
#include "core/clock.h"
#include "core/error.h"
#include "core/log.h"
#include "core/metrics.h"

/* The resilient path for broker.type nats (docs/bus.md, "Resilience").
 *
 * Every event bound for other processes is an entry of one FIFO list, in publish order, in one
 * of three states that always read CONFIRMED* SENT* QUEUED* along the list:
 *   QUEUED     waiting for NATS; also a row of bus_queue (the disk queue) - durable;
 *   SENT       handed to libnats, not yet acknowledged by the server (bounded: max_in_flight);
 *   CONFIRMED  the server answered a flush (PING/PONG) sent after it; kept retain_ms more,
 *              because a server that dies right after answering may not have passed it on.
 * While NATS is up and nothing waits, a publish goes straight out (SENT, no disk write). When
 * the connection drops, every SENT and CONFIRMED entry becomes QUEUED again (and is written to
 * disk), ahead of whatever is published during the outage: at-least-once, deduplicated by the
 * receivers' recent-id sets. On reconnect, after replay_delay_ms (so peers resubscribe first),
 * the queue is replayed in order with at most max_in_flight unacknowledged publishes; rows are
 * deleted once their entry leaves the retention window. */

static struct nx_metric *m_depth, *m_replayed, *m_queued;

static void metrics_init(void)
{
    m_depth = nx_metric_gauge("nexo_bus_queue_depth",
                              "Events waiting for NATS or not yet acknowledged by it.", NULL);
    m_replayed = nx_metric_counter("nexo_bus_replayed_total",
                                   "Queued events published to NATS after an outage.", NULL);
    m_queued = nx_metric_counter("nexo_bus_queued_total",
                                 "Events written to the disk queue while NATS was unavailable.", NULL);
}

static void update_depth(struct nx_bus *bus)
{
    if (!m_depth)
        metrics_init();
    nx_gauge_set(m_depth, NULL, (double)(bus->q_waiting + bus->in_flight));
}

static void qent_free(struct nx_qent *q)
{
    nx_bus_item_unref(q->item);
    free(q->local);
    free(q);
}

static void q_append(struct nx_bus *bus, struct nx_qent *q)
{
    q->prev = bus->q_tail;
    if (bus->q_tail)
        bus->q_tail->next = q;
    else
        bus->q_head = q;
    bus->q_tail = q;
}

static void q_remove(struct nx_bus *bus, struct nx_qent *q)
{
    if (q->prev)
        q->prev->next = q->next;
    else
        bus->q_head = q->next;
    if (q->next)
        q->next->prev = q->prev;
    else
        bus->q_tail = q->prev;
    if (bus->q_next_send == q)
        bus->q_next_send = q->next;
}

static int64_t next_seq(struct nx_bus *bus)
{
    int64_t now = (int64_t)nx_wall_ms() * 1000;

    if (bus->next_seq < now)
        bus->next_seq = now;
    return bus->next_seq++;
}

static void start_flush(struct nx_bus *bus);
static void kick(struct nx_bus *bus);

/* Room left under the server's max_payload for what NATS adds to our data (Nats-Msg-Id and the
 * other headers of a JetStream publish). */
#define PAYLOAD_HEADROOM 512

int nx_resilient_publish(struct nx_bus *bus, struct nx_bus_item *item, enum nx_bus_class cls)
{
    struct nx_qent *q;
    int rc;

    if (!m_depth)
        metrics_init();
    /* over the server's cap (headers take a little of it too): no queue would make it fit */
    if (bus->server_max_payload && item->len + PAYLOAD_HEADROOM > bus->server_max_payload)
        return NX_ETOOBIG;
    if (bus->is_connected && bus->is_loaded && !bus->q_next_send && !bus->is_replay_held &&
        bus->in_flight < bus->opts.max_in_flight) {
        if ((rc = nx_bus_nats_backend.publish(bus, item, NULL)) == 0) {
            q = nx_calloc(1, sizeof *q);
            q->item = nx_bus_item_ref(item);
            q->seq = next_seq(bus);
            q->state = Q_SENT;
            q->flush_gen = bus->send_gen;
            q_append(bus, q);
            bus->in_flight++;
            update_depth(bus);
            start_flush(bus);
            return 0;
        }
        if (rc == NX_ETOOBIG)
            return rc; /* over the server's max_payload: queueing would not make it fit */
        nx_debug("bus", "publish to NATS failed (%s); queueing", nx_strerror(rc));
    }
    if (!bus->is_connected && !strcmp(bus->conf.fallback.mode, "drop")) {
        nx_local_dispatch(bus, item, false);
        return 0;
    }
    size_t cap = bus->conf.limits.max_pending;
    if (bus->q_waiting >= (cls == NX_BUS_ANSWER ? 2 * cap : cap)) {
        if (!bus->is_full_said) /* (once until it has room again: refused publishes are retried) */
            nx_warn("bus", "disk queue full (%zu events, broker.limits.max_pending): publish refused",
                    bus->q_waiting);
        bus->is_full_said = true;
        return NX_EAGAIN;
    }
    q = nx_calloc(1, sizeof *q);
    q->item = nx_bus_item_ref(item);
    q->seq = next_seq(bus);
    q->state = Q_QUEUED;
    /* with NATS down, local subscribers are served now; with it up, they hear it from NATS */
    if (!bus->is_connected)
        q->local = nx_local_dispatch(bus, item, true);
    q_append(bus, q);
    if (!bus->q_next_send)
        bus->q_next_send = q;
    bus->q_waiting++;
    bus->stats.queued++;
    nx_counter_add(m_queued, NULL, 1);
    q->is_durable = true;
    nx_queue_insert(bus, &q, 1);
    update_depth(bus);
    kick(bus);
    return 0;
}

/* ---- acknowledgements ---- */

static void on_flushed(struct nx_bus *bus, int rc, uint64_t token)
{
    uint64_t epoch = token >> 32;
    uint64_t gen = token & 0xffffffffu;
    uint64_t now = nx_mono_ms();

    bus->is_flushing = false;
    if (bus->is_closing) {
        nx_bus_maybe_finish_close(bus);
        return;
    }
    if (rc < 0 || epoch != (bus->epoch & 0xffffffffu))
        return; /* the tick retries while connected; a disconnect already requeued */
    /* The SENT block sits right before the first QUEUED entry (or at the tail): walk it
     * backwards, not the retained CONFIRMED entries ahead of it (tens of thousands at load). */
    for (struct nx_qent *q = bus->q_next_send ? bus->q_next_send->prev : bus->q_tail;
         q && q->state == Q_SENT; q = q->prev) {
        if ((q->flush_gen & 0xffffffffu) <= gen) {
            q->state = Q_CONFIRMED;
            q->confirmed_at = now;
            bus->in_flight--;
            bus->q_confirmed++;
        }
    }
    update_depth(bus);
    kick(bus);
    start_flush(bus);
}

static void start_flush(struct nx_bus *bus)
{
    uint64_t token;

    if (bus->is_flushing || !bus->in_flight || !bus->is_connected || bus->is_closing)
        return;
    bus->is_flushing = true;
    token = ((bus->epoch & 0xffffffffu) << 32) | (bus->send_gen & 0xffffffffu);
    bus->send_gen++;
    nx_bus_nats_backend.flush(bus, bus->opts.flush_timeout_ms, on_flushed, token);
}

/* ---- replay ---- */

static void kick(struct nx_bus *bus)
{
    struct nx_qent *q;
    size_t sent = 0;

    if (!bus->is_connected || !bus->is_loaded || bus->is_closing)
        return;
    if (bus->is_replay_held) {
        if (nx_mono_ms() < bus->replay_at)
            return;
        bus->is_replay_held = false;
        if (bus->q_waiting)
            nx_info("bus", "%s: replaying %zu queued events to NATS", bus->name, bus->q_waiting);
    }
    while ((q = bus->q_next_send) && bus->in_flight < bus->opts.max_in_flight) {
        int rc = nx_bus_nats_backend.publish(bus, q->item, q->local);

        if (rc == NX_ETOOBIG) { /* queued while NATS was down, and over its max_payload */
            nx_error("bus", "event %s on %s: larger than the NATS server's max_payload; moved to the "
                     "dead letters", q->item->env->id, q->item->subject);
            nx_dlq_move(bus, q, DLQ_PUBLISH, "larger than the NATS server's max_payload");
            q_remove(bus, q); /* (moves q_next_send on) */
            bus->q_waiting--;
            qent_free(q);
            update_depth(bus);
            continue;
        }
        if (rc < 0) {
            nx_debug("bus", "replay publish failed (%s); will retry", nx_strerror(rc));
            break;
        }
        q->state = Q_SENT;
        q->flush_gen = bus->send_gen;
        bus->q_next_send = q->next;
        bus->q_waiting--;
        bus->in_flight++;
        bus->stats.replayed++;
        sent++;
    }
    if (sent) {
        nx_counter_add(m_replayed, NULL, (double)sent);
        update_depth(bus);
        start_flush(bus);
        bus->is_full_said = false;
        nx_bus_later_kick(bus); /* there is room: what waits for it goes now, in order */
    }
}

/* Drops acknowledged entries past the retention window; their rows go in one write. */
static void purge(struct nx_bus *bus, bool all_confirmed)
{
    uint64_t now = nx_mono_ms();
    struct nx_qent *v[256];
    size_t n = 0;

    while (bus->q_head && bus->q_head->state == Q_CONFIRMED &&
           (all_confirmed || now - bus->q_head->confirmed_at >= bus->opts.retain_ms)) {
        struct nx_qent *q = bus->q_head;

        q_remove(bus, q);
        bus->q_confirmed--;
        if (q->is_durable) {
            v[n++] = q;
            if (n == NX_ARRAY_LEN(v)) {
                nx_queue_delete(bus, v, n);
                for (size_t i = 0; i < n; i++)
                    qent_free(v[i]);
                n = 0;
            }
        } else {
            qent_free(q);
        }
    }
    if (n)
        nx_queue_delete(bus, v, n);
    for (size_t i = 0; i < n; i++)
        qent_free(v[i]);
}

void nx_resilient_on_connection(struct nx_bus *bus, bool is_connected)
{
    struct nx_qent **v = NULL;
    size_t n = 0, cap = 0;

    if (is_connected) {
        bus->is_replay_held = bus->q_waiting > 0 || !bus->is_loaded;
        bus->replay_at = nx_mono_ms() + bus->opts.replay_delay_ms;
        if (bus->is_replay_held && bus->q_waiting)
            nx_info("bus", "%s: NATS is back; %zu queued events will be replayed in %u ms",
                    bus->name, bus->q_waiting, bus->opts.replay_delay_ms);
        kick(bus);
        return;
    }
    /* Down: everything not yet past retention goes back to the queue, in order. */
    bus->epoch++;
    bus->is_replay_held = false;
    for (struct nx_qent *q = bus->q_head; q && q->state != Q_QUEUED; q = q->next) {
        if (q->state == Q_SENT)
            bus->in_flight--;
        else
            bus->q_confirmed--;
        q->state = Q_QUEUED;
        bus->q_waiting++;
        if (!q->is_durable) {
            if (n == cap) {
                cap = cap ? cap * 2 : 64;
                v = nx_realloc(v, cap * sizeof *v);
            }
            v[n++] = q;
            q->is_durable = true;
        }
    }
    bus->q_next_send = bus->q_head;
    if (n)
        nx_queue_insert(bus, v, n);
    free(v);
    if (bus->q_waiting)
        nx_info("bus", "%s: NATS is down; %zu events held for replay", bus->name, bus->q_waiting);
    update_depth(bus);
}

void nx_resilient_tick(struct nx_bus *bus)
{
    if (bus->is_closing)
        return;
    purge(bus, false);
    kick(bus);
    start_flush(bus);
    if (bus->opts.store && nx_mono_ms() - bus->last_poll >= bus->opts.poll_ms) {
        bus->last_poll = nx_mono_ms();
        nx_dlq_poll(bus);
    }
}

/* ---- start: the disk queue from the last run comes first ---- */

static void on_loaded(struct nx_bus *bus, int rc, struct nx_qrow *rows, size_t n)
{
    struct nx_qent *first = NULL, *last = NULL;

    if (bus->is_closing)
        return;
    if (rc < 0)
        nx_error("bus", "cannot read the disk queue: %s", nx_strerror(rc));
    for (size_t i = 0; i < n; i++) {
        struct nx_envelope *env = NULL;
        struct nx_qent *q;
        char err[256];

        if (nx_envelope_parse(rows[i].envelope, strlen(rows[i].envelope), 0, &env, err,
                              sizeof err) < 0) {
            nx_error("bus", "queued event %s is unreadable (%s); left in bus_queue", rows[i].id, err);
            continue;
        }
        q = nx_calloc(1, sizeof *q);
        q->item = nx_bus_item_new(rows[i].subject, NULL, rows[i].envelope,
                                  strlen(rows[i].envelope), env);
        q->seq = rows[i].seq;
        q->state = Q_QUEUED;
        q->is_durable = true;
        q->local = rows[i].local ? nx_strdup(rows[i].local) : NULL;
        if (q->seq >= bus->next_seq)
            bus->next_seq = q->seq + 1;
        q->prev = last;
        if (last)
            last->next = q;
        else
            first = q;
        last = q;
        bus->q_waiting++;
    }
    nx_qrows_free(rows, n);
    if (first) {
        /* nothing was sent before the load (direct publishing waits for it) */
        last->next = bus->q_head;
        if (bus->q_head)
            bus->q_head->prev = last;
        else
            bus->q_tail = last;
        bus->q_head = first;
        bus->q_next_send = first;
        nx_info("bus", "%s: %zu events from the disk queue wait for NATS", bus->name,
                bus->q_waiting);
    }
    else if (!bus->q_waiting)
        bus->is_replay_held = false; /* nothing from before, nothing queued: no peer to wait for */
    bus->is_loaded = true;
    update_depth(bus);
    kick(bus);
}

void nx_resilient_load(struct nx_bus *bus)
{
    if (!bus->opts.store) {
        bus->is_loaded = true;
        return;
    }
    nx_queue_load(bus, on_loaded);
}

void nx_resilient_free(struct nx_bus *bus)
{
    while (bus->q_head) {
        struct nx_qent *q = bus->q_head;

        q_remove(bus, q);
        if (bus->opts.store) {
            /* not acknowledged yet: keep it for the next run (receivers deduplicate); through:
             * its row, if any, can go */
            if (q->state == Q_SENT && !q->is_durable)
                nx_queue_insert(bus, &q, 1);
            else if (q->state == Q_CONFIRMED && q->is_durable)
                nx_queue_delete(bus, &q, 1);
        }
        qent_free(q);
    }
    bus->q_waiting = bus->in_flight = bus->q_confirmed = 0;
}
