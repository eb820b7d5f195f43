#ifndef NX_MCP_MCP_H
#define NX_MCP_MCP_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "config/config.h"
#include "http/client.h"

/* The MCP client side of nexo: a manager starts every server in mcp.yaml (stdio child processes
 * and Streamable HTTP endpoints), keeps them up (a crashed stdio server is restarted with
 * exponential backoff) and registers their tools in the tool registry as mcp_<server>_<tool>.
 * Loop thread only. See docs/mcp.md. */

#define NX_MCP_MAX_FRAME_DEFAULT (4u * 1024 * 1024)

struct nx_mcp_manager;

/* Starts every server of conf (nothing when conf->enabled is false). conf is copied. http is
 * used for Streamable HTTP servers and must outlive the manager (may be NULL when there are
 * none). */
int nx_mcp_manager_new(uv_loop_t *loop, struct nx_http_client *http, const struct nx_mcp_conf *conf,
                       struct nx_mcp_manager **out);
/* What the manager needs from the daemon once the agents exist (any member may be NULL): the
 * agents that answer sampling/createMessage, the data directory (OAuth tokens go to
 * <data_dir>/mcp/oauth-<server>.json unless the server's auth sets token_file) and the
 * configuration (the agents' workspaces for `roots: workspaces`). Call it right after
 * nx_mcp_manager_new, on the same loop iteration; again after nx_agents_new on reload. */
struct nx_agents;
struct nx_mcp_host {
    struct nx_agents *agents;
    const char *data_dir;
    const struct nx_config *cfg;
};
void nx_mcp_manager_set_host(struct nx_mcp_manager *m, const struct nx_mcp_host *host);

/* Unregisters the tools, fails calls in flight, closes every server (stdio: EOF, SIGTERM and
 * SIGKILL after shutdown_grace; HTTP: DELETE the session). Handles close on later loop
 * iterations. Accepts NULL. */
void nx_mcp_manager_free(struct nx_mcp_manager *m);

/* For the admin page: {"servers": [{name, transport, state, protocol_version, server_info,
 * tools: [registered names], skipped_tools: {tool: why} (tools left out for their input
 * schema), prompts: [{name, description, arguments}] (the server's prompts/list, [] when it has
 * none), restarts, pid, last_error, calls,
 * progress_notifications, auth (OAuth servers: state, scope, expires_in, ..., never a token)}]}.
 * New reference. */
json_t *nx_mcp_manager_status(const struct nx_mcp_manager *m);

/* Tests: overrides the frame cap (0 = default) and the first restart delay of servers started
 * after the call. */
void nx_mcp_manager_set_limits(size_t max_frame, uint32_t first_backoff_ms);

/* The registry name for a server's tool: "mcp_<server>_<tool>" with every character outside
 * [A-Za-z0-9_-] replaced by '_'; names over 64 characters become the first 55 characters, '_'
 * and 8 hex digits of a hash of "<server>/<tool>" (also used when the plain name is taken). out
 * holds at least 65 bytes. */
void nx_mcp_tool_name(const char *server, const char *tool, int hashed, char *out, size_t outlen);

/* The input schema a server's tool (def, one entry of tools/list) is registered with, as JSON
 * text (new string): its inputSchema, {"type": "object"} when it has none, "type": "object"
 * added when the object has no "type". NULL, with why in why, when the inputSchema is no object
 * schema (a string, an array, null, a "type" other than "object"): such a tool is not
 * registered. */
char *nx_mcp_tool_input_schema(const json_t *def, char *why, size_t whylen);

/* The text the model sees for a tools/call result: text content joined with newlines, other
 * content summarized ("[image: image/png, 123 bytes]"), structuredContent when there is no
 * content. New string. */
char *nx_mcp_result_text(const json_t *result);
/* The text of a resources/list page: one line per resource ("uri (name, mime): description"),
 * then a note with nextCursor when there is one. New string. */
char *nx_mcp_resource_list_text(const json_t *result);
/* The text of a resources/read result: each content as "[resource: uri]" and its text, or
 * "[resource: uri, mime, N bytes]" for a blob. New string. */
char *nx_mcp_resource_read_text(const json_t *result);

#endif
