#ifndef NX_CONFIG_INTERNAL_H
#define NX_CONFIG_INTERNAL_H

/* The snapshot's layout, shared by load.c and snapshot.c only. */

#include <stdatomic.h>

#include "config/config.h"

struct nx_config {
    atomic_int refs;
    char *dir;
    struct nx_gateway_conf gateway;
    struct nx_llm_conf llm;
    struct nx_broker_conf broker;
    struct nx_memory_conf memory;
    struct nx_mcp_conf mcp;
    struct nx_agent_conf *agents;
    size_t n_agents;
    struct nx_plugin_conf *plugins;
    size_t n_plugins;
    char **secrets; /* values of secret-named keys in every file, NULL-terminated (or NULL) */
    size_t n_secrets;
    struct nx_conf_source {
        char *rel;     /* "mcp.yaml", "plugins/telegram.yaml" */
        uint64_t hash; /* of its text (FNV-1a) */
    } *sources;        /* every file read, for nx_config_changed */
    size_t n_sources;
    char **file_refs; /* real paths of the ${file:} read, NULL-terminated */
};

/* A zeroed snapshot with one reference. */
struct nx_config *nx_config_alloc(void);
/* Frees everything (whatever was filled in). */
void nx_config_destroy(struct nx_config *c);

#endif
