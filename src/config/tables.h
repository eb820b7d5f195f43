#ifndef NX_CONFIG_TABLES_H
#define NX_CONFIG_TABLES_H

/* The field tables of the files nexo itself reads (internal to src/config). */

#include "config/schema.h"

/* agents.yaml and each agents.d/\*.yaml */
struct nx_agents_file {
    struct nx_agent_conf *agents;
    size_t n_agents;
};

/* Passed as ctx->user while the files are walked. */
struct nx_conf_state {
    const struct nx_llm_conf *llm; /* providers agents may name */
    bool providers_known;          /* false when llm.yaml failed: skip provider checks */
};

extern const struct nx_conf_struct nx_conf_gateway_file;
extern const struct nx_conf_struct nx_conf_llm_file;
extern const struct nx_conf_struct nx_conf_broker_file;
extern const struct nx_conf_struct nx_conf_memory_file;
extern const struct nx_conf_struct nx_conf_mcp_file;
extern const struct nx_conf_struct nx_conf_agents_file;
extern const struct nx_conf_struct nx_conf_agent;

/* Reports `unknown provider` at val unless state knows `name`. */
/* A list of web-page origins: "*" or scheme://host[:port], no default port (cors, MCP's). */
void nx_conf_check_origins(struct nx_conf_ctx *ctx, const struct nx_cnode *val, void *dst);
void nx_conf_check_provider(struct nx_conf_ctx *ctx, const struct nx_cnode *val, const char *name);

#endif
