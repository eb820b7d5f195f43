#ifndef NX_CORE_BREAKER_H
#define NX_CORE_BREAKER_H

#include <stdbool.h>
#include <stdint.h>

/* A circuit breaker (used per LLM provider, per agent, per bus link). Closed: calls pass;
 * `failure_threshold` consecutive failures open it. Open: calls are refused until the backoff
 * has passed, then one probe is let through (half-open). Half-open: `success_threshold`
 * successes close it; a failure opens it again with the backoff doubled (up to max_backoff).
 * Time is passed in (milliseconds, monotonic) so tests need no clock. Not thread-safe: owned by
 * one thread (the loop). */

enum nx_breaker_state { NX_BREAKER_CLOSED = 0, NX_BREAKER_OPEN = 1, NX_BREAKER_HALF_OPEN = 2 };

struct nx_breaker_conf {
    uint32_t failure_threshold;  /* default 5 */
    uint32_t success_threshold;  /* default 1 */
    uint32_t initial_backoff_ms; /* default 10000 */
    uint32_t max_backoff_ms;     /* default 120000 */
};

struct nx_breaker {
    struct nx_breaker_conf conf;
    enum nx_breaker_state state;
    uint32_t failures;    /* consecutive, while closed */
    uint32_t successes;   /* while half-open */
    uint32_t backoff_ms;  /* current */
    uint64_t open_until;  /* while open */
    bool probe_in_flight; /* half-open: one call at a time */
    uint32_t probe;       /* which probe holds the slot (counts up with each one let through) */
};

/* conf may be NULL (defaults); zero fields take defaults. */
void nx_breaker_init(struct nx_breaker *b, const struct nx_breaker_conf *conf);
/* May a call go now? Moves open -> half-open when the backoff has passed (and then lets exactly
 * one probe through until it reports). */
bool nx_breaker_allow(struct nx_breaker *b, uint64_t now_ms);
void nx_breaker_success(struct nx_breaker *b, uint64_t now_ms);
/* A call given the half-open probe (b->probe right after allow) ended with no verdict (it was
 * cancelled, or never sent): the slot goes to the next call, unless another probe holds it. */
void nx_breaker_abandon(struct nx_breaker *b, uint32_t probe);
void nx_breaker_failure(struct nx_breaker *b, uint64_t now_ms);
/* Is a call's outcome stale: half-open, and the call not the probe holding the slot (it began
 * before the breaker opened)? Its verdict is then not the probe's: a late failure must not
 * open the breaker again, a late success must not free the slot for a second probe. `probe`:
 * b->probe right after the allow that let the call through, when it was the probe. */
bool nx_breaker_is_stale(const struct nx_breaker *b, bool was_probe, uint32_t probe);
const char *nx_breaker_state_name(enum nx_breaker_state s);

#endif
