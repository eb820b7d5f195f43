#ifndef NX_DAEMON_DAEMON_H
#define NX_DAEMON_DAEMON_H

#include <stdbool.h>
#include <stdint.h>

#include "config/config.h"

/* `nexo run`: assembles the gateway from a configuration snapshot and runs the loop until a
 * stop signal. This is the top layer (with main.c): it may include every module. */

struct nx_daemon_opts {
    const char *config_dir;      /* NULL = embedded defaults */
    const char *data_dir;        /* never NULL */
    bool has_listen, has_metrics_listen, has_admin_listen;
    struct nx_listen listen;     /* CLI overrides, win over gateway.yaml */
    struct nx_listen metrics_listen;
    struct nx_listen admin_listen;
    bool has_log_level;          /* --log-level given: config's log.level is ignored */
    uint64_t launch_ns;          /* nx_mono_ns() at process start, for "ready in" */
    const char *role;            /* run --role: NULL or "all", "gateway", "agents" */
    const char *agents;          /* run --agents: comma-separated agent ids, NULL = all */
};

/* Returns the process exit code (NX_EXIT_*). */
int nx_daemon_run(const struct nx_daemon_opts *opts);

/* `nexo chat`: a terminal conversation with agent_id (NULL = the first agent) in session
 * "agent:<id>:cli:<session>" (session NULL = "terminal"). Returns an exit code. */
int nx_chat_run(const struct nx_daemon_opts *opts, const char *agent_id, const char *session);

#endif
