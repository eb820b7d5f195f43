#ifndef NX_AGENT_AGENT_H
#define NX_AGENT_AGENT_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "config/config.h"
#include "http/client.h"
#include "llm/llm.h"
#include "store/store.h"

/* Agents: each configured agent with its providers, tools and limits; sessions with lanes (one
 * turn at a time per session, later messages queue); the turn loop (model -> tool calls ->
 * results -> model ... -> final text). Loop thread only. */

struct nx_agents;
struct nx_turn;
struct nx_workspaces;

struct nx_agent_deps {
    uv_loop_t *loop;
    struct nx_http_client *http;
    struct nx_store *store;   /* sessions and transcripts; NULL = stateless only */
    const char *data_dir;
};

int nx_agents_new(const struct nx_agent_deps *deps, struct nx_config *cfg, struct nx_agents **out);
/* The HTTP client the agents' providers and tools (and the channels, MCP) share, configured from
 * gateway.yaml's http_client. Returns nx_http_client_new's result. */
int nx_agents_http_client_new(uv_loop_t *loop, const struct nx_config *cfg,
                              struct nx_http_client **out);
/* A new snapshot: turns in flight keep the one they started with; agents added or removed take
 * effect for the next message. */
int nx_agents_reload(struct nx_agents *a, struct nx_config *cfg);
/* Cancels every turn (their on_done runs with NX_ECANCELED) and frees. Accepts NULL. */
void nx_agents_free(struct nx_agents *a);

bool nx_agents_has(const struct nx_agents *a, const char *id);
/* [{"id":..., "description":..., "model":...}] in configuration order. New reference. */
json_t *nx_agents_list(const struct nx_agents *a);
/* The input tokens a turn of agent_id with these canonical messages would send, by nexo's
 * estimate (the one that trims history): the agent's system prompt and identity files, `extra`
 * (the caller's system prompt, or NULL), its tools and the messages. NX_ENOENT: no such agent. */
int nx_agents_count_tokens(const struct nx_agents *a, const char *agent_id, const char *extra,
                           const json_t *messages, uint64_t *out);
size_t nx_agents_turns_in_flight(const struct nx_agents *a);
/* Turns started since the agents were created (a cheap activity counter). */
uint64_t nx_agents_turns_started(const struct nx_agents *a);
/* True when some agent has a usable provider (so outbound HTTP will be needed). */
bool nx_agents_can_answer(const struct nx_agents *a);
size_t nx_agents_sessions(const struct nx_agents *a);

struct nx_turn_result {
    const char *text;            /* the final answer's text ("" if none) */
    const json_t *message;       /* the final assistant message, canonical */
    /* The whole conversation the turn ended with (the history it started from, then this turn's
     * messages), or NULL; for a stateless turn's caller that keeps its own transcript. */
    const json_t *conversation;
    struct nx_llm_usage usage;   /* summed over every model call of the turn */
    const char *model;
    enum nx_llm_stop stop;
    const char *stop_sequence;   /* the caller's stop sequence that ended the answer, when the
                                    provider says which (Anthropic), or NULL */
    unsigned tool_calls;
    /* On failure: */
    int http_status;             /* upstream status, 0 if none */
    const char *error_type;      /* "not_found_error", "rate_limit_error", "overloaded_error",
                                    "api_error", "invalid_request_error", "configuration_error" */
    const char *error_message;
    /* error_message is meant for the end user (a channel replies with it): e.g. the daily token
     * budget is used up (error_type "budget_exceeded"). */
    bool is_user_facing;
    uint32_t retry_after_s;      /* when trying again may succeed; 0 = unknown */
    /* queue_mode collect: this turn's message joined an earlier turn, whose result this is (the
     * same answer goes to each message merged; the first caller got it with is_merged false). */
    bool is_merged;
};

enum nx_queue_mode {
    NX_QUEUE_FOLLOWUP = 0, /* queued messages each get their own turn, in order */
    NX_QUEUE_COLLECT,      /* queued messages merge into the next turn */
    NX_QUEUE_INTERRUPT,    /* a new message cancels the running turn */
};

struct nx_turn_opts {
    const char *agent_id;
    /* "agent:<agent_id>:<channel>:<peer>" for a persistent session (history loaded and saved);
     * NULL for a stateless turn whose messages are the whole history. */
    const char *session_key;
    const char *channel;           /* "http", "telegram", ... (transcripts) */
    const json_t *messages;        /* canonical; for a session: the new message(s) only */
    const char *system_extra;      /* appended to the agent's system prompt, or NULL */
    uint32_t max_tokens;           /* 0 = the agent's limit */
    double temperature;            /* < 0 = default */
    const json_t *stop;            /* stop sequences (an array of strings), or NULL */
    const char *user;              /* the end user the caller names, for the provider's abuse checks */
    enum nx_queue_mode queue_mode;
    void (*on_text)(const char *delta, size_t len, void *udata);
    /* Exactly once, never from inside nx_turn_start. rc 0 or NX_ENOENT (no such agent),
     * NX_ECANCELED, NX_EHTTP/NX_ETIMEDOUT (upstream), NX_ERANGE (tool iteration limit),
     * NX_EPERM (the agent's daily token budget is used up: error_type "budget_exceeded"). */
    void (*on_done)(int rc, const struct nx_turn_result *res, void *udata);
    void *udata;
    bool no_tools;                 /* offer the model no tools (MCP sampling: one completion) */
    /* Optional: a tool call of the turn starts (is_end false) or ends (is_end true; is_error as
     * the tool said). Never after on_done; name is borrowed for the call. */
    void (*on_tool)(const char *name, bool is_end, bool is_error, void *udata);
    /* The inbound event the turn answers (the same when the turn is re-run), or NULL: tools
     * derive idempotency keys from it (send_message). */
    const char *event_id;
};

/* Whether a workspace (a real path) holds what an agent's tools must not reach: the
 * configuration or the data directory (API keys, every agent's data, agents.yaml), a file cfg
 * reads through ${file:} for a secret, or another agent's workspace (one of w other than ws). What
 * turns an agent's file tools off (docs/tools.md). */
bool nx_workspace_off_limits(const struct nx_config *cfg, const struct nx_workspaces *w, const char *ws,
                             const char *data_dir);
/* The agents' workspaces in cfg, resolved (those that exist), for nx_workspace_off_limits. */
struct nx_workspaces *nx_workspaces_new(const struct nx_config *cfg);
void nx_workspaces_free(struct nx_workspaces *w);
/* The directory an agent's file tools are confined to (a copy to free), or NULL: no such agent,
 * no workspace, or one that holds the configuration or data directory (file tools off). */
char *nx_agents_workspace(const struct nx_agents *a, const char *agent_id);

/* Starts (or queues behind the session's running turn) a turn. Returns a handle valid until
 * on_done has run. */
struct nx_turn *nx_turn_start(struct nx_agents *a, const struct nx_turn_opts *o);
/* on_done then runs with NX_ECANCELED (from within this call or soon after); the upstream
 * request is cancelled. */
void nx_turn_cancel(struct nx_turn *t);

#endif
