#include "agent/inproc.h"

#include <string.h>

#include "core/error.h"

void nx_agents_inproc_init(struct nx_agents_inproc *p, uv_loop_t *loop, struct nx_config *cfg,
                           const char *data_dir, nx_store_done_fn store_ready, void *arg)
{
    memset(p, 0, sizeof *p);
    nx_agents_http_client_new(loop, cfg, &p->http);
    if (nx_store_open(loop, data_dir, NULL, store_ready, arg, &p->store) < 0 && store_ready)
        store_ready(NX_EIO, arg);
    struct nx_agent_deps deps = {.loop = loop, .http = p->http, .store = p->store, .data_dir = data_dir};
    nx_agents_new(&deps, cfg, &p->agents);
}

void nx_agents_inproc_cleanup(struct nx_agents_inproc *p)
{
    nx_agents_free(p->agents);
    p->agents = NULL;
    nx_store_close(p->store);
    p->store = NULL;
    nx_http_client_free(p->http);
    p->http = NULL;
}
