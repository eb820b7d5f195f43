#include "agent/inproc.h"

#include <string.h>

#include "core/error.h"
#include "runtime/runtime.h"

static void store_failed(void *arg)
{
    struct nx_agents_inproc *p = arg;
    p->ready_timer = NULL;
    p->ready(NX_EINVAL, p->ready_arg);
}

void nx_agents_inproc_init(struct nx_agents_inproc *p, uv_loop_t *loop, struct nx_config *cfg,
                           const char *data_dir, nx_store_done_fn store_ready, void *arg)
{
    memset(p, 0, sizeof *p);
    nx_agents_http_client_new(loop, cfg, &p->http);
    if (nx_store_open(loop, data_dir, NULL, store_ready, arg, &p->store) < 0 && store_ready) {
        p->ready = store_ready; /* told on the next loop iteration, as a store that opens is */
        p->ready_arg = arg;
        p->ready_timer = nx_timer_once(loop, 0, store_failed, p);
    }
    struct nx_agent_deps deps = {.loop = loop, .http = p->http, .store = p->store, .data_dir = data_dir};
    nx_agents_new(&deps, cfg, &p->agents);
}

void nx_agents_inproc_cleanup(struct nx_agents_inproc *p)
{
    nx_timer_cancel(p->ready_timer);
    p->ready_timer = NULL;
    nx_agents_free(p->agents);
    p->agents = NULL;
    nx_store_close(p->store);
    p->store = NULL;
    nx_http_client_free(p->http);
    p->http = NULL;
}
