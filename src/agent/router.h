#ifndef NX_AGENT_ROUTER_H
#define NX_AGENT_ROUTER_H

#include <jansson.h>

#include "agent/agent.h"
#include "bus/bus.h"

/* The router: an inbound channel event on the bus (`plugin.inbound.<plugin>[.<instance>]`,
 * payload {kind:"message", from, chat, text, msg_id, ...}) goes to the first agent whose
 * inbound_bindings match (plugin, and instance strictly: a binding without instance matches only
 * events without one), as a turn in session "agent:<agent>:<plugin>[.<instance>]:<chat or from>";
 * the answer is published on `plugin.outbound.<plugin>[.<instance>]` with payload
 * {to, text, session_id, reply_to}. Events no binding matches are dropped (logged at debug), as
 * in nexo-rs. Agent processes share the inbound subjects through the queue group "agents". */

struct nx_router;

int nx_router_new(struct nx_bus *bus, struct nx_agents *agents, struct nx_router **out);
/* A gate asked for every inbound message that matched an agent, before it becomes a turn (the
 * channels layer registers its sender rate limit here). false = drop it (the gate logs, counts
 * and answers if it wants to). */
struct nx_router_gate_in {
    const struct nx_agent_conf *agent;
    const char *plugin;   /* channel type */
    const char *instance; /* NULL when the subject has none */
    const char *sender;   /* the payload's "from", else the peer */
    const char *peer;     /* where replies go (chat, else from) */
    const json_t *payload;
};
typedef bool (*nx_router_gate_fn)(const struct nx_router_gate_in *in, void *arg);
void nx_router_set_gate(struct nx_router *r, nx_router_gate_fn fn, void *arg);
/* Turns on the exactly-once ledger and per-agent circuit breakers (docs/bus.md): inbound events
 * are claimed in the store's ledger before their turn (a redelivery is dropped), replies carry
 * an idempotency key ("<event id>:0") and are recorded pending before they are published, and
 * the events the last run left unanswered are published again now, ahead of newer ones. Call once,
 * right after nx_router_new. store NULL = no ledger. */
void nx_router_set_store(struct nx_router *r, struct nx_store *store);
/* Dispatch (the gateway role, docs/scaling.md): instead of starting a local turn, an event that
 * matched, passed the gate and was claimed in the ledger is handed to `fn` (the partition
 * publisher), which publishes it as routed work for another process. fn returns 0 when the work
 * is published (the event stays `routed` in the ledger until its reply, key "<id>:0", reaches a
 * channel here and marks it answered), or a negative NX_E* code: the event then fails like a
 * turn (retried, dead-lettered after broker.dlq.max_attempts) without touching the breaker.
 * Breakers are left to the processes that run the turns. Call right after nx_router_new. */
struct nx_router_dispatch_in {
    const char *id;          /* the inbound envelope id (the work item's id) */
    const char *agent;
    const char *session_key; /* agent:<agent>:<plugin>[.<instance>]:<peer> */
    const char *channel;     /* <plugin>[.<instance>] */
    const char *outbound;    /* plugin.outbound.<channel>: where the reply goes */
    const char *to;          /* the peer */
    const char *text;        /* the user's text */
    const char *reply_to;    /* the inbound msg_id, or NULL */
    const json_t *media;     /* the payload's `media` (files under <data>/media), or NULL */
};
typedef int (*nx_router_dispatch_fn)(const struct nx_router_dispatch_in *in, void *arg);
void nx_router_set_dispatch(struct nx_router *r, nx_router_dispatch_fn fn, void *arg);
/* Unsubscribes; turns already started still answer (their replies are dropped if the bus is
 * gone). Accepts NULL. */
void nx_router_free(struct nx_router *r);

#endif
