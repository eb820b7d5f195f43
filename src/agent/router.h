#ifndef NX_AGENT_ROUTER_H
#define NX_AGENT_ROUTER_H

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
/* Unsubscribes; turns already started still answer (their replies are dropped if the bus is
 * gone). Accepts NULL. */
void nx_router_free(struct nx_router *r);

#endif
