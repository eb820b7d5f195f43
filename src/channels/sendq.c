#include <stddef.h>

#include "channels/sendq.h"

static void on_timer(uv_timer_t *t)
{
    struct nx_sendq *q = (struct nx_sendq *)((char *)t - offsetof(struct nx_sendq, timer));
    q->is_timer_armed = false;
    q->kick(t->data);
}

void nx_sendq_init(struct nx_sendq *q, uv_loop_t *loop, size_t max, void (*kick)(void *owner), void *owner)
{
    q->head = q->tail = NULL;
    q->n = 0;
    q->max = max;
    q->is_timer_armed = false;
    q->call = NULL;
    q->kick = kick;
    uv_timer_init(loop, &q->timer);
    q->timer.data = owner;
}

bool nx_sendq_push(struct nx_sendq *q, struct nx_sendq_item *it)
{
    if (q->n >= q->max)
        return false;
    it->next = NULL;
    if (q->tail)
        q->tail->next = it;
    else
        q->head = it;
    q->tail = it;
    q->n++;
    return true;
}

struct nx_sendq_item *nx_sendq_pop(struct nx_sendq *q)
{
    struct nx_sendq_item *it = q->head;
    if (!it)
        return NULL;
    q->head = it->next;
    if (!q->head)
        q->tail = NULL;
    q->n--;
    it->next = NULL;
    return it;
}

bool nx_sendq_is_ready(const struct nx_sendq *q)
{
    return q->head && !q->call && !q->is_timer_armed;
}

void nx_sendq_retry_in(struct nx_sendq *q, uint64_t ms)
{
    q->is_timer_armed = true;
    uv_timer_start(&q->timer, on_timer, ms, 0);
}

uint64_t nx_sendq_backoff(uint32_t attempts, uint64_t first_ms, uint64_t max_ms)
{
    uint32_t shift = attempts > 1 ? attempts - 1 : 0;
    uint64_t d = first_ms << (shift < 20 ? shift : 20);
    return d > max_ms ? max_ms : d;
}

void nx_sendq_close(struct nx_sendq *q, uv_close_cb closed)
{
    uv_close((uv_handle_t *)&q->timer, closed);
}
