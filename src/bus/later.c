#include <stdlib.h>
#include <string.h>

#include "bus/bus.h"
#include "bus/envelope.h"
#include "bus/internal.h"
#include "core/alloc.h"
#include "core/error.h"
#include "core/log.h"
#include "core/metrics.h"
#include "runtime/runtime.h"

/* Publishes the bus refused for now (NX_EAGAIN: its disk queue is full while NATS is away),
 * kept in one FIFO per class per bus and tried again until the bus takes them. A caller whose
 * events are durable elsewhere (a channel's ledger, the router's resume) would otherwise leave
 * them unrouted until the next start; one queue for all the work keeps its order, and answers
 * have their own so that they never wait behind new work (bus.h, nx_bus_class). */

#define LATER_FIRST_MS 100
#define LATER_MAX_MS 5000
#define LATER_MAX_WAITING 100000 /* per class; beyond: refused (they stay in the ledger) */
#define N_CLASSES 2

struct waiting {
    struct waiting *next;
    char *subject;
    struct nx_envelope *env;
};

struct fifo {
    struct waiting *head, **tail;
    size_t n;
};

struct nx_bus_later {
    struct nx_bus *bus;
    struct fifo q[N_CLASSES]; /* by enum nx_bus_class */
    uint64_t delay_ms;
    struct nx_timer *timer;
};

static struct nx_metric *m_waiting;

/* nexo_bus_waiting_for_room{class}: added to and taken from, as a process may have several buses. */
static void count_waiting(enum nx_bus_class cls, double d)
{
    static const char *const class_names[N_CLASSES] = {"work", "answer"};
    static const char *const labels[] = {"class", NULL};
    if (!m_waiting)
        m_waiting = nx_metric_gauge("nexo_bus_waiting_for_room", "Events a full disk queue refused for now, "
                                    "waiting in memory, in order, to be published.", labels);
    const char *const lv[] = {class_names[cls]};
    nx_gauge_add(m_waiting, lv, d);
}

static void waiting_free(struct waiting *w)
{
    free(w->subject);
    nx_envelope_free(w->env);
    free(w);
}

static void on_timer(void *arg);

static void arm(struct nx_bus_later *l)
{
    if (!l->timer)
        l->timer = nx_timer_once(l->bus->loop, l->delay_ms, on_timer, l);
}

static bool is_waiting(const struct nx_bus_later *l)
{
    for (int c = 0; c < N_CLASSES; c++)
        if (l->q[c].head)
            return true;
    return false;
}

/* Publishes one class's waiting events in order, up to the first the bus refuses again.
 * Returns how many went. */
static size_t drain_class(struct nx_bus_later *l, enum nx_bus_class cls)
{
    struct fifo *f = &l->q[cls];
    size_t done = 0;
    while (f->head) {
        struct waiting *w = f->head;
        int rc = nx_bus_publish_as(l->bus, w->subject, w->env, cls);
        if (rc == NX_EAGAIN)
            break;
        if (rc < 0)
            nx_error("bus", "event %s refused (%s): it stays unrouted until the next start", w->env->id,
                     nx_strerror(rc));
        if (!(f->head = w->next))
            f->tail = &f->head;
        f->n--;
        done++;
        waiting_free(w);
    }
    if (done)
        count_waiting(cls, -(double)done);
    return done;
}

static void drain(struct nx_bus_later *l)
{
    size_t done = drain_class(l, NX_BUS_ANSWER); /* answers first: they free what waits on them */
    done += drain_class(l, NX_BUS_WORK);
    if (is_waiting(l)) {
        l->delay_ms = l->delay_ms * 2 > LATER_MAX_MS ? LATER_MAX_MS : l->delay_ms * 2;
        arm(l);
    } else if (done) {
        nx_info("bus", "the events that waited for room in the disk queue are published");
    }
}

static void on_timer(void *arg)
{
    struct nx_bus_later *l = arg;
    l->timer = NULL;
    drain(l);
}

int nx_bus_publish_in_order(struct nx_bus *bus, const char *subject, const struct nx_envelope *env,
                            enum nx_bus_class cls)
{
    struct nx_bus_later *l = bus->later;
    if (cls != NX_BUS_ANSWER)
        cls = NX_BUS_WORK;
    if (!l || !l->q[cls].head) {
        int rc = nx_bus_publish_as(bus, subject, env, cls);
        if (rc != NX_EAGAIN || bus->is_closing)
            return rc;
        if (!l) {
            l = bus->later = nx_calloc(1, sizeof *l);
            l->bus = bus;
            for (int c = 0; c < N_CLASSES; c++)
                l->q[c].tail = &l->q[c].head;
        }
        if (!is_waiting(l)) {
            l->delay_ms = LATER_FIRST_MS;
            nx_warn("bus", "the disk queue is full: events wait in memory, in order, and are tried again");
        }
    }
    struct fifo *f = &l->q[cls];
    if (f->n >= LATER_MAX_WAITING)
        return NX_EAGAIN;
    struct waiting *w = nx_calloc(1, sizeof *w);
    w->subject = subject ? nx_strdup(subject) : NULL;
    w->env = nx_envelope_copy(env);
    *f->tail = w;
    f->tail = &w->next;
    f->n++;
    count_waiting(cls, 1);
    arm(l);
    return 0;
}

void nx_bus_later_kick(struct nx_bus *bus)
{
    struct nx_bus_later *l = bus->later;
    if (!l || !is_waiting(l))
        return;
    if (l->timer)
        nx_timer_cancel(l->timer);
    l->delay_ms = LATER_FIRST_MS;
    l->timer = nx_timer_once(bus->loop, 0, on_timer, l);
}

void nx_bus_later_free(struct nx_bus_later *l)
{
    if (!l)
        return;
    if (l->timer)
        nx_timer_cancel(l->timer);
    for (int c = 0; c < N_CLASSES; c++) {
        if (l->q[c].n)
            count_waiting((enum nx_bus_class)c, -(double)l->q[c].n);
        while (l->q[c].head) {
            struct waiting *w = l->q[c].head;
            l->q[c].head = w->next;
            waiting_free(w);
        }
    }
    free(l);
}
