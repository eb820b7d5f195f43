#ifndef NX_MCP_ASKS_H
#define NX_MCP_ASKS_H

#include <jansson.h>

#include "mcp/client.h"

/* What an MCP server may ask of nexo, per server (mcp.yaml): sampling/createMessage answered by
 * an agent's model, elicitation/create answered by a policy, and the capabilities the client
 * declares for them. Loop thread only. See docs/mcp.md. */

struct nx_agents;
struct nx_mcp_asks;

enum nx_mcp_elicit_policy {
    NX_MCP_ELICIT_DECLINE = 0, /* {action: "decline"} (the default) */
    NX_MCP_ELICIT_CANCEL,      /* {action: "cancel"} */
    NX_MCP_ELICIT_DEFAULTS,    /* {action: "accept", content: the schema's defaults} */
};

/* The server's policy from its entry (`sampling`, `elicitation`) and mcp.yaml's top level
 * (`sampling: {enabled, agent, global_max_tokens_cap, deny_servers, per_server}`); both may be
 * NULL. Never fails: bad values are logged and the safe choice kept. */
struct nx_mcp_asks *nx_mcp_asks_new(const char *server, const json_t *server_extra, const json_t *mcp_extra);
/* Cancels the sampling turns in flight (their requests get no answer). Accepts NULL. */
void nx_mcp_asks_free(struct nx_mcp_asks *a);
/* The agents that answer sampling (NULL: sampling requests get an error). */
void nx_mcp_asks_set_agents(struct nx_mcp_asks *a, struct nx_agents *agents);

/* Adds what the policy declares to caps (an object): "sampling": {} when sampling is enabled,
 * "elicitation": {} when a policy was configured. */
void nx_mcp_asks_declare(const struct nx_mcp_asks *a, json_t *caps);
/* For nx_mcp_client_cb.on_request: 0 when the request is (or will be) answered, NX_ENOTSUP. */
int nx_mcp_asks_handle(struct nx_mcp_asks *a, struct nx_mcp_client *c, const char *method, const json_t *id,
                       const json_t *params);
/* notifications/cancelled from the server: stops that sampling turn. */
void nx_mcp_asks_cancel(struct nx_mcp_asks *a, struct nx_mcp_client *c, const json_t *id);
/* The client is going away: its sampling turns are cancelled, no answer is sent. */
void nx_mcp_asks_forget_client(struct nx_mcp_asks *a, struct nx_mcp_client *c);

/* elicitation/create with the defaults policy: an object with the default of every property of
 * requestedSchema that has one (string, number, integer, boolean, enum member). NULL when a
 * required property has no usable default (then the answer is decline). New reference. */
json_t *nx_mcp_elicit_defaults(const json_t *requested_schema);
/* sampling/createMessage messages to nexo's canonical form ([{role, content: [{type: text}]}]):
 * text kept, images and audio described as text. NULL with why in err when malformed. */
json_t *nx_mcp_sampling_messages(const json_t *messages, char *err, size_t errlen);

#endif
