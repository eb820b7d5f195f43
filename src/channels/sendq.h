#ifndef NX_CHANNELS_SENDQ_H
#define NX_CHANNELS_SENDQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "http/client.h"

/* The outbound queue every channel adapter keeps (sendq.c): messages in order, one request in
 * flight, a retry timer with capped exponential backoff, a bound on what may wait. The adapter
 * owns the messages (each starts with a struct nx_sendq_item) and says how to send the head:
 * `kick(owner)` runs when the retry timer fires, and the adapter calls its own kick after a
 * push or a finished send. Loop thread. */

struct nx_sendq_item {
    struct nx_sendq_item *next;
};

struct nx_sendq {
    struct nx_sendq_item *head, *tail;
    size_t n, max;
    uv_timer_t timer;           /* timer.data: the owner (the adapter takes a reference) */
    bool is_timer_armed;
    struct nx_http_call *call;  /* the request in flight, or NULL */
    void (*kick)(void *owner);
};

void nx_sendq_init(struct nx_sendq *q, uv_loop_t *loop, size_t max, void (*kick)(void *owner), void *owner);
/* Appends; false (nothing done) when max messages wait already. */
bool nx_sendq_push(struct nx_sendq *q, struct nx_sendq_item *it);
/* Removes and returns the head (NULL when empty). */
struct nx_sendq_item *nx_sendq_pop(struct nx_sendq *q);
/* A head waits, nothing is in flight and no retry is pending: send the head now. */
bool nx_sendq_is_ready(const struct nx_sendq *q);
/* kick(owner) again in ms. */
void nx_sendq_retry_in(struct nx_sendq *q, uint64_t ms);
/* first_ms doubled per attempt after the first (attempts >= 1), at most max_ms. */
uint64_t nx_sendq_backoff(uint32_t attempts, uint64_t first_ms, uint64_t max_ms);
/* Closes the timer (closed gets its handle: drop the owner's reference there). */
void nx_sendq_close(struct nx_sendq *q, uv_close_cb closed);

#endif
