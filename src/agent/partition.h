#ifndef NX_AGENT_PARTITION_H
#define NX_AGENT_PARTITION_H

#include "agent/agent.h"
#include "bus/bus.h"
#include "store/store.h"

/* Scale-out (docs/scaling.md): the process roles' side of routed work.
 *  - gateway role: an inbound channel event (plugin.inbound.>, queue group "agents") is matched
 *    against the agents' inbound_bindings as the router does, and published as a work item on
 *    agent.route.<agent>.<p>, p = hash(session) mod broker.jetstream.partitions, with the
 *    inbound event's id (so a repeat is stored once by the route stream);
 *  - agents role: the work of the listed agents is consumed (nx_bus_work_consume). With
 *    JetStream, the session's state lives in the KV bucket: each item reads it, runs the turn
 *    on that history, writes history + the reply back (compare-and-set on the revision), then
 *    publishes the reply and acknowledges the item; an item redelivered after its turn was
 *    recorded republishes the recorded reply (same envelope id) instead of running again.
 *    Without JetStream the turn runs in a local session as in the "all" role.
 * Loop thread only. */

struct nx_partition;

/* session_max_messages: the history tail kept in the session state (0 = 200). */
int nx_partition_new(struct nx_bus *bus, struct nx_agents *agents, struct nx_store *store,
                     const char *data_dir, uint32_t session_max_messages, struct nx_partition **out);
/* gateway role: subscribe to plugin.inbound.> and forward matched messages. */
int nx_partition_gateway(struct nx_partition *p);
/* agents role: consume agent_id's routed work. */
int nx_partition_consume(struct nx_partition *p, const char *agent_id);
/* Work still in flight is handed back (redelivered elsewhere). Call before freeing the bus;
 * free the agents first so their turns end. Accepts NULL. */
void nx_partition_free(struct nx_partition *p);

#endif
