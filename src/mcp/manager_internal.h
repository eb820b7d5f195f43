#ifndef NX_MCP_MANAGER_INTERNAL_H
#define NX_MCP_MANAGER_INTERNAL_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "mcp/asks.h"
#include "mcp/client.h"
#include "mcp/mcp.h"
#include "mcp/oauth.h"
#include "runtime/runtime.h"
#include "tools/tool.h"

/* Shared by manager.c (connections, tools, restarts) and manager_conf.c (configuration copies,
 * roots, status). Loop thread only. */

enum { NX_MCP_ST_STOPPED, NX_MCP_ST_STARTING, NX_MCP_ST_READY, NX_MCP_ST_BACKOFF };
extern const char *const nx_mcp_state_names[];

struct server;

/* What a registered tool does: a server's own tool, or one of the two resource tools. */
enum { MT_CALL, MT_LIST_RESOURCES, MT_READ_RESOURCE };

struct mcp_tool {
    struct nx_tool tool;
    struct server *srv; /* NULL once unregistered */
    int kind;
    char *name;
    char *remote;
    char *description;
    char *schema;
    int refs;
};

struct mcp_call {
    struct server *srv;
    struct mcp_tool *mt;
    struct nx_mcp_request *req;
    nx_tool_done_fn done;
    void *udata;
    uint64_t start_ns;
    unsigned progress;
};

struct server {
    struct nx_mcp_manager *m;
    struct nx_mcp_server_conf conf; /* copied */
    json_t *roots;
    bool has_roots;                 /* `roots` configured: the capability is declared */
    bool wants_workspaces;          /* roots: workspaces (or true): the agents' workspaces */
    struct nx_mcp_asks *asks;       /* sampling and elicitation policy */
    struct nx_mcp_oauth *oauth;     /* auth: {type: oauth}, else NULL */
    struct nx_mcp_client *client;
    int state;
    unsigned gen; /* bumped at each connect: stale list results are dropped */
    struct nx_timer *restart;
    struct nx_timer *ping;
    struct nx_timer *relist;    /* the next tools/list after a failed one */
    uint32_t relist_ms;         /* its backoff */
    unsigned list_failures;     /* tools/list failures in a row */
    uint32_t backoff_ms;
    uint64_t up_since_ms;
    unsigned restarts;
    int pid;
    char *last_error;
    struct mcp_tool **tools;
    size_t ntools;
    struct mcp_tool *rtools[2]; /* list_resources, read_resource when the server has resources */
    json_t *skipped;            /* tools of the last listing left out: {name: why}, or NULL */
    json_t *prompts;            /* its prompts/list, [] when it has none */
    bool is_listing;
    bool is_relist_wanted;
    uint64_t calls;
    uint64_t progress;
};

struct nx_mcp_manager {
    uv_loop_t *loop;
    struct nx_http_client *http;
    struct server *servers;
    size_t nservers;
    uint32_t initialize_timeout_ms;
    uint32_t call_timeout_ms;
    uint32_t grace_ms;
    uint32_t ping_ms;
    bool is_closing;
};

/* manager_conf.c: copies c into s (and its policy objects); frees what that copied. */
void nx_mcp_mgr_server_init(struct nx_mcp_manager *m, struct server *s, const struct nx_mcp_server_conf *c,
                            const json_t *mcp_extra);
void nx_mcp_mgr_server_conf_cleanup(struct server *s);
/* The agents' workspaces as roots ([{uri: "file:///...", name: agent}]), from cfg; one that holds
 * the configuration or data directory is left out. */
json_t *nx_mcp_mgr_workspace_roots(const struct nx_config *cfg, const char *data_dir);

#endif
