#ifndef NX_AGENT_PARTITION_H
#define NX_AGENT_PARTITION_H

#include "agent/agent.h"
#include "agent/router.h"
#include "bus/bus.h"
#include "store/store.h"

/* Scale-out (docs/scaling.md): the process roles' side of routed work.
 *  - gateway role: the router (router.h) matches, claims in the ledger and gates an inbound
 *    event, then hands it to nx_partition_dispatch, which publishes it as a work item on
 *    agent.route.<agent>.<p>, p = hash(session) mod broker.jetstream.partitions, with the
 *    inbound event's id (so a repeat is stored once by the route stream);
 *  - agents role: the work of the listed agents is consumed (nx_bus_work_consume). With
 *    JetStream, the session's state lives in the KV bucket: each item reads it, runs the turn
 *    on that history, writes history + the reply back (compare-and-set on the revision), then
 *    publishes the reply and acknowledges the item; an item redelivered after its turn was
 *    recorded republishes the recorded reply (same envelope id) instead of running again. The
 *    reply carries the key "<inbound id>:0"; the turn is written to this process's store and
 *    transcript (JSONL + FTS) as in the "all" role.
 *    Without JetStream the turn runs in a local session as in the "all" role, the agent's
 *    queue_mode included: a turn merged into an earlier one (collect) or interrupted by a newer
 *    message (interrupt) publishes no reply; its event is settled instead ("answered" or
 *    "cancelled", on agent.settled.<agent>), and the gateway that routed it records that in its
 *    ledger, as the in-process router does. With JetStream a partition runs one item at a time,
 *    so no message waits behind a running turn in the process: queue_mode does not apply.
 * Loop thread only. */

struct nx_partition;

/* session_max_messages: the history tail kept in the session state (0 = 200). */
int nx_partition_new(struct nx_bus *bus, struct nx_agents *agents, struct nx_store *store,
                     const char *data_dir, uint32_t session_max_messages, struct nx_partition **out);
/* gateway role: the router's dispatch function (nx_router_set_dispatch(r, nx_partition_dispatch,
 * p)): publishes the event as routed work. 0 or the publish error. */
int nx_partition_dispatch(const struct nx_router_dispatch_in *in, void *arg);
/* gateway role, at start: listens for the agents processes' settlements (agent.settled.<agent>)
 * of merged and interrupted work, and settles those events in its ledger. */
void nx_partition_watch_settled(struct nx_partition *p);
/* agents role: consume agent_id's routed work. */
int nx_partition_consume(struct nx_partition *p, const char *agent_id);
/* Work still in flight is handed back (redelivered elsewhere). Call before freeing the bus;
 * free the agents first so their turns end. Accepts NULL. */
void nx_partition_free(struct nx_partition *p);

#endif
