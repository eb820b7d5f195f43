/* Session lanes: one turn at a time per session; later turns queue (followup), merge into the
 * next turn (collect) or cancel the running one (interrupt). A lane exists only while it has a
 * running or queued turn, so idle sessions cost nothing here. */
#include <stdlib.h>
#include <string.h>

#include "agent/agent_internal.h"
#include "core/alloc.h"
#include "core/error.h"

struct lane {
    struct lane *hnext;
    char *key;
    struct nx_turn *running;
    struct nx_turn *head;   /* queued, in arrival order */
    struct nx_turn *tail;
};

static size_t hash(const char *s)
{
    size_t h = 1469598103934665603u; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211u;
    return h;
}

static void grow(struct nx_agents *a)
{
    size_t n = a->nbuckets ? a->nbuckets * 2 : 64;
    struct lane **b = nx_calloc(n, sizeof *b);
    for (size_t i = 0; i < a->nbuckets; i++) {
        struct lane *l = a->lanes[i];
        while (l) {
            struct lane *next = l->hnext;
            size_t k = hash(l->key) & (n - 1);
            l->hnext = b[k];
            b[k] = l;
            l = next;
        }
    }
    free(a->lanes);
    a->lanes = b;
    a->nbuckets = n;
}

struct lane *lane_get(struct nx_agents *a, const char *key)
{
    if (a->nlanes + 1 > a->nbuckets * 3 / 4)
        grow(a);
    size_t k = hash(key) & (a->nbuckets - 1);
    for (struct lane *l = a->lanes[k]; l; l = l->hnext) {
        if (strcmp(l->key, key) == 0)
            return l;
    }
    struct lane *l = nx_calloc(1, sizeof *l);
    l->key = nx_strdup(key);
    l->hnext = a->lanes[k];
    a->lanes[k] = l;
    a->nlanes++;
    return l;
}

static void lane_drop(struct nx_agents *a, struct lane *l)
{
    size_t k = hash(l->key) & (a->nbuckets - 1);
    struct lane **pp = &a->lanes[k];
    while (*pp && *pp != l)
        pp = &(*pp)->hnext;
    if (*pp)
        *pp = l->hnext;
    a->nlanes--;
    free(l->key);
    free(l);
}

static struct nx_turn *dequeue(struct lane *l)
{
    struct nx_turn *t = l->head;
    if (t) {
        l->head = t->lane_next;
        if (!l->head)
            l->tail = NULL;
        t->lane_next = NULL;
    }
    return t;
}

/* A queued message joins a turn only when it asked for what that turn's call asks: one call
 * cannot stop at two callers' different stop sequences or keep to two max_tokens. One that asked
 * otherwise waits for a turn of its own. */
static bool same_call(const struct nx_turn_opts *a, const struct nx_turn_opts *b)
{
    bool same_stop = (!a->stop && !b->stop) || (a->stop && b->stop && json_equal(a->stop, b->stop));
    return same_stop && a->max_tokens == b->max_tokens && a->temperature == b->temperature &&
           a->no_tools == b->no_tools;
}

static void start_next(struct nx_agents *a, struct lane *l)
{
    struct nx_turn *t = dequeue(l);
    if (!t) {
        lane_drop(a, l);
        return;
    }
    /* collect: everything queued behind a collect-mode turn joins it. */
    while (t->o.queue_mode == NX_QUEUE_COLLECT && l->head &&
           l->head->o.queue_mode == NX_QUEUE_COLLECT && same_call(&t->o, &l->head->o))
        turn_merge(t, dequeue(l));
    l->running = t;
    /* On the next loop iteration: the turn before is answered first, also when this one ends
     * at once (a budget refusal would otherwise answer a later message first). */
    turn_run_soon(t);
}

int lane_submit(struct nx_agents *a, struct nx_turn *t)
{
    struct lane *l = lane_get(a, t->session_key);
    if (l->running) {
        size_t queued = 0;
        for (struct nx_turn *q = l->head; q; q = q->lane_next)
            queued++;
        if (queued >= t->agent->conf->config.queue_cap)
            return NX_EBUSY;
    }
    t->lane = l;
    if (!l->running) {
        l->running = t;
        turn_run(t);
        return 0;
    }
    if (l->tail)
        l->tail->lane_next = t;
    else
        l->head = t;
    l->tail = t;
    if (t->o.queue_mode == NX_QUEUE_INTERRUPT) {
        l->running->is_interrupted = true;
        nx_turn_cancel(l->running); /* its end starts the queue */
    }
    return 0;
}

struct nx_turn *lane_ahead(const struct nx_turn *t)
{
    const struct lane *l = t->lane;
    struct nx_turn *prev;

    if (!l || l->running == t)
        return NULL;
    prev = l->running;
    for (struct nx_turn *q = l->head; q; q = q->lane_next) {
        if (q == t)
            return prev;
        prev = q;
    }
    return NULL;
}

void lane_turn_done(struct nx_agents *a, struct nx_turn *t)
{
    struct lane *l = t->lane;
    t->lane = NULL;
    if (l->running == t) {
        l->running = NULL;
        if (!a->is_freeing)
            start_next(a, l);
        else if (!l->head)
            lane_drop(a, l);
        return;
    }
    /* A queued turn that ended early (cancelled): take it out of the queue. */
    struct nx_turn **pp = &l->head, *prev = NULL;
    while (*pp && *pp != t) {
        prev = *pp;
        pp = &(*pp)->lane_next;
    }
    if (*pp) {
        *pp = t->lane_next;
        if (l->tail == t)
            l->tail = prev;
    }
    t->lane_next = NULL;
    if (!l->running && !l->head)
        lane_drop(a, l);
}

bool lane_superseded(int rc, const struct nx_turn_result *res, const char **state, const char **note)
{
    if (rc == 0 && res->is_merged) {
        *state = "answered";
        *note = "answered together with an earlier message (queue_mode collect)";
        return true;
    }
    if (rc == NX_ECANCELED && res->error_type && strcmp(res->error_type, "interrupted") == 0) {
        *state = "cancelled";
        *note = "interrupted by a newer message (queue_mode interrupt)";
        return true;
    }
    return false;
}

void lanes_free(struct nx_agents *a)
{
    for (size_t i = 0; i < a->nbuckets; i++) {
        struct lane *l = a->lanes[i];
        while (l) {
            struct lane *next = l->hnext;
            free(l->key);
            free(l);
            l = next;
        }
    }
    free(a->lanes);
    a->lanes = NULL;
    a->nbuckets = a->nlanes = 0;
}
