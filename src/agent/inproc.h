#ifndef NX_AGENT_INPROC_H
#define NX_AGENT_INPROC_H

#include <uv.h>

#include "agent/agent.h"

/* Agents run in process, without the gateway's listeners, bus or channels (`nexo chat`,
 * `nexo mcp-server`): the HTTP client configured from gateway.yaml, the store under the data
 * directory and the configured agents on them. The daemon puts the bus between the store and the
 * agents, so it starts its own. Loop thread only. */
struct nx_agents_inproc {
    struct nx_http_client *http;
    struct nx_store *store; /* NULL when it could not open: the agents then run stateless */
    struct nx_agents *agents;
    nx_store_done_fn ready; /* a store that could not even start: told from ready_timer */
    void *ready_arg;
    struct nx_timer *ready_timer;
};

/* Starts the client, the store and the agents on loop, in that order. A part that cannot start
 * stays NULL and the others run without it. store_ready (may be NULL) gets the store's opening
 * outcome, on the loop (nx_store_open). */
void nx_agents_inproc_init(struct nx_agents_inproc *p, uv_loop_t *loop, struct nx_config *cfg,
                           const char *data_dir, nx_store_done_fn store_ready, void *arg);
/* Frees the agents (their turns are cancelled), closes the store (queued writes are flushed) and
 * frees the client; a part already NULL is skipped, so a caller may free one itself first or
 * call this again. */
void nx_agents_inproc_cleanup(struct nx_agents_inproc *p);

#endif
