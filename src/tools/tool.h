#ifndef NX_TOOLS_TOOL_H
#define NX_TOOLS_TOOL_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "http/client.h"

/* Tools an agent may call. A tool is a table (struct nx_tool); built-ins live in
 * tools/builtin/<name>.c, one file each, listed in tools/registry.c. Later: MCP-backed and
 * extension tools register the same way. Everything runs on the loop thread. */

/* What a tool may touch: the calling agent's sandbox. */
struct nx_tool_ctx {
    uv_loop_t *loop;
    struct nx_http_client *http;
    const char *agent_id;
    const char *session_key;
    const char *workspace;               /* absolute, existing directory; NULL = no file tools */
    const char *const *outbound_allowlist; /* host globs for http_fetch, NULL-terminated; NULL = none */
    bool allow_private_addresses;        /* http_fetch to loopback/private/link-local allowed */
    const char *event_id;                /* the inbound event the turn answers, or NULL */
};

/* A tool's answer: text for the model, and whether it is an error (the model sees both). */
typedef void (*nx_tool_done_fn)(const char *output, size_t len, bool is_error, void *udata);

struct nx_tool_call; /* a running call, for cancel */

struct nx_tool {
    const char *name;
    const char *description;
    const char *input_schema; /* JSON Schema (object) as JSON text */
    /* Runs with validated arguments and calls done exactly once, either from inside run (then
     * it returns NULL) or later on the loop (then it returns a handle for cancel, or NULL if it
     * cannot be cancelled). */
    struct nx_tool_call *(*run)(const struct nx_tool_ctx *ctx, const json_t *args,
                                nx_tool_done_fn done, void *udata);
    void (*cancel)(struct nx_tool_call *call); /* done is then not called; may be NULL */
    /* Optional, used instead of run when set: the same call with the tool's own table, for tools
     * registered at run time that share one run function (MCP, extensions). */
    struct nx_tool_call *(*run_self)(const struct nx_tool *self, const struct nx_tool_ctx *ctx,
                                     const json_t *args, nx_tool_done_fn done, void *udata);
};

/* --- registry --- */
const struct nx_tool *nx_tool_find(const char *name);
/* All registered tools, in registration order; *n set to the count. */
const struct nx_tool *const *nx_tool_all(size_t *n);
/* Adds a tool at run time (MCP, extensions). The table must outlive the process or be removed
 * with nx_tool_unregister. Returns NX_EEXIST on a name clash. */
int nx_tool_register(const struct nx_tool *t);
void nx_tool_unregister(const char *name);

/* allowed_tools globs (trailing '*' matches a prefix; "*" everything; an empty/NULL list allows
 * everything, as in nexo-rs). */
bool nx_tool_allowed(const char *name, const char *const *allowed_globs);
/* The canonical tools array ([{name, description, input_schema}]) the model is shown: only the
 * allowed ones. New reference. */
json_t *nx_tool_manifest(const char *const *allowed_globs);
/* Changes whenever a tool is registered or unregistered: a manifest built when it had the same
 * value is still current. */
uint64_t nx_tool_registry_changes(void);

/* Checks args against the tool's input schema (types, required, properties, enum, items,
 * additionalProperties:false, min/max for numbers and lengths). Returns 0 or NX_EINVAL with a
 * message for the model in err. */
int nx_tool_validate(const struct nx_tool *t, const json_t *args, char *err, size_t errlen);

/* The full path for one call: allowed? exists? valid args? then run. A refused call (not
 * allowed, unknown, bad args) answers done(is_error=true) with a clear message, is logged and
 * counted (nexo_tool_calls_total{agent,tool,outcome=blocked|unknown|invalid}), never run. */
struct nx_tool_call *nx_tool_invoke(const struct nx_tool_ctx *ctx, const char *const *allowed_globs,
                                    const char *name, const json_t *args, nx_tool_done_fn done,
                                    void *udata);
void nx_tool_cancel(struct nx_tool_call *call);

/* --- sandbox checks (tools/sandbox.c), usable by any tool --- */
/* The workspace files that join an agent's system prompt, in order, NULL-terminated. The first
 * NX_IDENTITY_PROTECTED (all but MEMORY.md, the agent's own notes) are the operator's: the file
 * tools do not write them, so a model cannot rewrite the prompt of its other conversations. */
extern const char *const nx_identity_files[];
#define NX_IDENTITY_FILES 5
#define NX_IDENTITY_PROTECTED 4
/* Resolves a path given by the model inside the workspace: relative only, no "..", no escape
 * through symlinks (checked on the real path of the deepest existing ancestor). On success out
 * holds the absolute path. for_create: the final component may not exist yet. */
int nx_sandbox_path(const char *workspace, const char *rel, bool for_create, char *out,
                    size_t outlen, char *err, size_t errlen);
/* Where a path is, or will be once created: the real path of its deepest existing ancestor
 * (a relative path starts at the working directory), the rest appended as given. */
bool nx_sandbox_real_or_future(const char *path, char *out, size_t outlen);
/* Is this host, on this port, allowed by the allowlist globs ("example.com", "*.example.com",
 * each with an optional ":port"; "[::1]:8080")? An entry without a port allows any; port 0
 * matches every entry. */
bool nx_sandbox_host_allowed(const char *host, int port, const char *const *allowlist);
/* Loopback, private (RFC 1918, fc00::/7), link-local, unspecified, multicast, CGNAT, ... */
bool nx_sandbox_addr_is_private(const struct sockaddr *sa);

#endif
