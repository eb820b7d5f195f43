#include <stddef.h>

#include "core/breaker.h"

void nx_breaker_init(struct nx_breaker *b, const struct nx_breaker_conf *conf)
{
    struct nx_breaker_conf c = {0, 0, 0, 0};
    if (conf)
        c = *conf;
    if (!c.failure_threshold)
        c.failure_threshold = 5;
    if (!c.success_threshold)
        c.success_threshold = 1;
    if (!c.initial_backoff_ms)
        c.initial_backoff_ms = 10000;
    if (!c.max_backoff_ms)
        c.max_backoff_ms = 120000;
    if (c.max_backoff_ms < c.initial_backoff_ms)
        c.max_backoff_ms = c.initial_backoff_ms;
    b->conf = c;
    b->state = NX_BREAKER_CLOSED;
    b->failures = 0;
    b->successes = 0;
    b->backoff_ms = c.initial_backoff_ms;
    b->open_until = 0;
    b->probe_in_flight = false;
}

bool nx_breaker_allow(struct nx_breaker *b, uint64_t now_ms)
{
    switch (b->state) {
    case NX_BREAKER_CLOSED:
        return true;
    case NX_BREAKER_OPEN:
        if (now_ms < b->open_until)
            return false;
        b->state = NX_BREAKER_HALF_OPEN;
        b->successes = 0;
        b->probe_in_flight = true;
        b->probe++;
        return true;
    case NX_BREAKER_HALF_OPEN:
        if (b->probe_in_flight)
            return false;
        b->probe_in_flight = true;
        b->probe++;
        return true;
    }
    return false;
}

void nx_breaker_abandon(struct nx_breaker *b, uint32_t probe)
{
    if (b->state == NX_BREAKER_HALF_OPEN && b->probe_in_flight && b->probe == probe)
        b->probe_in_flight = false;
}

static void trip(struct nx_breaker *b, uint64_t now_ms)
{
    b->state = NX_BREAKER_OPEN;
    b->open_until = now_ms + b->backoff_ms;
    b->probe_in_flight = false;
    b->failures = 0;
}

void nx_breaker_success(struct nx_breaker *b, uint64_t now_ms)
{
    (void)now_ms;
    switch (b->state) {
    case NX_BREAKER_CLOSED:
        b->failures = 0;
        break;
    case NX_BREAKER_HALF_OPEN:
        b->probe_in_flight = false;
        if (++b->successes >= b->conf.success_threshold) {
            b->state = NX_BREAKER_CLOSED;
            b->failures = 0;
            b->backoff_ms = b->conf.initial_backoff_ms;
        }
        break;
    case NX_BREAKER_OPEN:
        break; /* a call that started before the breaker opened */
    }
}

void nx_breaker_failure(struct nx_breaker *b, uint64_t now_ms)
{
    switch (b->state) {
    case NX_BREAKER_CLOSED:
        if (++b->failures >= b->conf.failure_threshold)
            trip(b, now_ms);
        break;
    case NX_BREAKER_HALF_OPEN: {
        uint64_t next = (uint64_t)b->backoff_ms * 2;
        b->backoff_ms = next > b->conf.max_backoff_ms ? b->conf.max_backoff_ms : (uint32_t)next;
        trip(b, now_ms);
        break;
    }
    case NX_BREAKER_OPEN:
        break;
    }
}

bool nx_breaker_is_stale(const struct nx_breaker *b, bool was_probe, uint32_t probe)
{
    return b->state == NX_BREAKER_HALF_OPEN && !(was_probe && b->probe_in_flight && b->probe == probe);
}

const char *nx_breaker_state_name(enum nx_breaker_state s)
{
    switch (s) {
    case NX_BREAKER_CLOSED: return "closed";
    case NX_BREAKER_OPEN: return "open";
    case NX_BREAKER_HALF_OPEN: return "half_open";
    }
    return "?";
}
