#ifndef NX_AGENT_INTERNAL_H
#define NX_AGENT_INTERNAL_H

#include "agent/agent.h"
#include "llm/llm.h"
#include "runtime/runtime.h"
#include "tools/tool.h"

/* Shared by agent.c (registry, generations), lane.c (sessions) and turn.c (the turn loop). */

struct agent_rt {
    const struct nx_agent_conf *conf;   /* points into gen->cfg */
    struct nx_llm_target *targets;      /* primary, then fallbacks (resolvable ones) */
    size_t ntargets;
    uint32_t context_window;            /* tokens: the smallest of the targets' */
    const char *const *allowed_tools;   /* NULL-terminated */
    const char *const *http_allowlist;  /* outbound_allowlist.http, or NULL */
    char *workspace;                    /* absolute, or NULL */
    char *system_prompt;
    char *no_target_why;                /* with no targets: what to tell the user, or NULL */
    struct ws_cache *ws;                /* identity files of the workspace, or NULL */
    struct tools_memo {                 /* the tool manifest, rebuilt when the registry changes */
        json_t *tools;
        uint64_t tokens;                /* their estimate */
        uint64_t changes;
    } *tools_memo;
};

/* Everything built from one configuration snapshot. Turns hold a reference, so a reload never
 * pulls an agent or provider out from under a running turn. */
struct generation {
    unsigned refs;
    struct nx_config *cfg;
    struct agent_rt *agents;
    size_t nagents;
    uint32_t *by_id;  /* open addressing: agent index + 1, 0 empty (gen_agent) */
    size_t nby_id;    /* a power of two, at least twice nagents */
    struct nx_llm_provider **providers;
    size_t nproviders;
};

struct lane;
struct hcache;
struct budget;
struct ws_cache;

struct nx_agents {
    struct nx_agent_deps deps;
    char *data_dir;
    struct generation *gen;
    struct hcache *history;    /* recent history of active sessions (history_cache.c) */
    struct lane **lanes;       /* hash table of sessions with a running or queued turn */
    size_t nbuckets;
    size_t nlanes;
    struct nx_turn *turns;     /* every turn not yet done (for free) */
    size_t nturns;
    uint64_t turns_started;
    struct budget *budgets;    /* daily token use per agent (budget.c) */
    bool is_freeing;
};

struct generation *gen_ref(struct generation *g);
void gen_unref(struct generation *g);
const struct agent_rt *gen_agent(const struct generation *g, const char *id);

/* The udata of a model call or history load: cancel detaches the turn from it, so a callback
 * that arrives after the turn ended finds no turn and only frees the ticket. */
struct ticket {
    struct nx_turn *t;
};

struct tool_slot {
    struct nx_turn *t;
    struct nx_tool_call *call;
    json_t *result;            /* tool_result block once done */
    const char *name;          /* the tool (borrowed from the model's message in convo) */
    bool is_done;
};

struct nx_turn {
    struct nx_agents *a;
    struct nx_turn *next, *prev;   /* a->turns */
    struct nx_turn *lane_next;     /* queue behind the running turn of its lane */
    struct lane *lane;
    struct generation *gen;
    const struct agent_rt *agent;
    char *agent_id;
    char *session_key;
    char *event_id; /* the inbound event answered, or NULL */
    char *channel;
    char *system_extra;
    json_t *input;                 /* the caller's messages (copy) */
    json_t *convo;                 /* history + input + this turn's model and tool messages */
    size_t new_from;               /* first index of convo that this turn adds */
    uint64_t tokens;               /* token estimates of convo[0, tokens_upto) added up */
    size_t tokens_upto;
    struct nx_turn_opts o;         /* callbacks and options (strings replaced by copies above) */
    struct nx_llm_call *llm;
    struct ticket *pending;        /* the model call or history load in flight, if any */
    struct tool_slot *slots;
    size_t nslots, slots_pending;
    unsigned iterations;
    unsigned tool_calls;
    struct nx_llm_usage usage;
    char *model;
    enum nx_llm_stop stop;
    char *stop_sequence;           /* which stop sequence ended the last answer, or NULL */
    int http_status;
    char *error_type;
    char *error_message;
    struct nx_timer *kick;
    uint64_t started_ns;           /* nx_mono_ns() when the turn was created */
    uint64_t log_ctx;              /* the log context its callbacks run in (core/log.h) */
    struct nx_turn **merged;       /* collect mode: callers answered with this turn's result */
    size_t nmerged;
    struct nx_turn *merged_into;   /* collect mode: the turn this one's message joined */
    const json_t *answer;          /* the model's final message (in convo), NULL: none yet or
                                      it said nothing */
    size_t call_text_bytes;        /* answer text the model call in flight has streamed */
    uint64_t call_fixed_tokens;    /* the call's system prompt and tools, estimated */
    uint32_t retry_after_s;        /* the provider's retry-after when the model call failed */
    bool is_started;
    bool is_images_kept;           /* its base64 images were looked at (kept as files) */
    uint64_t hcache_epoch;         /* hcache_epoch when its history was read */
    struct nx_llm_run *run;        /* its session's encoded history (hcache_run), or NULL */
    bool is_from_cache;            /* convo is the history cache's array (hcache_take_tokens) */
    bool is_history_cut;           /* ... and the context trim cut it: not what the turn took */
    bool is_put_pending;           /* saved: convo goes back to the history cache at the end */
    size_t put_keep;               /* with how many messages to keep, */
    uint64_t put_tokens;           /* and its token sum */
    bool is_keeping_images;        /* a worker has its input (on_images_kept gives it back) */
    bool is_stop_deferred;         /* stopped meanwhile: on_images_kept ends it, input back */
    bool has_streamed;             /* some text went to the caller's on_text */
    bool is_interrupted;           /* cancelled by a newer message (interrupt mode) */
    bool is_cancelled;
    bool is_budget_refusal;        /* refused: the agent's daily token budget is used up */
    bool is_history_missing;       /* its stored history could not be read: not cached after */
    bool is_saved;                 /* turn_save ran: its messages are in the store */
    json_t *late;                  /* messages of the turns queued right behind it that were
                                    * cancelled before they started: stored after its own */
    bool is_done;
    bool is_caller_gone;           /* collect mode: its own caller left and was answered; it runs
                                      on for the callers merged into it */
    uint64_t budget_held;          /* tokens its agent's daily budget set aside for it */
    unsigned answers;              /* model calls that answered */
};

/* lane.c */
struct lane *lane_get(struct nx_agents *a, const char *session_key);
/* Queues t on its lane; starts it at once when the lane is idle. NX_EBUSY (t not queued) when
 * the session already has its agent's config.queue_cap turns waiting. */
int lane_submit(struct nx_agents *a, struct nx_turn *t);
/* The lane's running turn finished: start the next queued one. */
/* The turn right ahead of queued turn t in its lane (the running one when t is first), or NULL
 * (t runs, or has no lane). */
struct nx_turn *lane_ahead(const struct nx_turn *t);
void lane_turn_done(struct nx_agents *a, struct nx_turn *t);
void lanes_free(struct nx_agents *a);
/* Did the turn end without an answer of its own because of its lane's queue_mode: interrupted
 * by a newer message of its session (interrupt), or merged into an earlier turn whose answer
 * covers it (collect)? Then *state and *note say how its inbound event is settled in the ledger
 * (nx_ledger_inbound_settle: "cancelled" or "answered", and why), so it is neither answered a
 * second time nor run again at the next start. A turn cancelled because nexo stops is not
 * superseded: it stays routed and runs again. */
bool lane_superseded(int rc, const struct nx_turn_result *res, const char **state, const char **note);

/* history_cache.c */
struct hcache *hcache_new(size_t max_sessions);
void hcache_free(struct hcache *c);
/* A pending user (a save in flight) keeps the struct past hcache_free; forget does nothing then. */
void hcache_hold(struct hcache *c);
void hcache_release(struct hcache *c);
/* Drops the session's entry, if any: its next turn reads the store. */
void hcache_forget(struct hcache *c, const char *key);
/* The same, for a session whose save failed: counted (hcache_epoch), so that a turn that read
 * its history before does not put its copy back (it may hold what the store did not keep). */
void hcache_forget_unsaved(struct hcache *c, const char *key);
/* How many hcache_forget_unsaved so far; turn_save compares with the count when it read. */
uint64_t hcache_epoch(const struct hcache *c);
/* Caches (a shallow copy of) the last `keep` messages (0 = all), starting on a clean user
 * message. */
void hcache_put(struct hcache *c, const char *key, const json_t *messages, size_t keep);
/* A turn takes the session's cached messages (the array itself, for it to append to; NULL when
 * none are cached or another has them) with their token estimates added up
 * (nx_llm_message_tokens; HCACHE_NO_TOKENS: not known), so that it neither copies nor
 * estimates its whole history again. It puts them back, with what it added, when it ends: put
 * takes the array (trimmed to `keep` in place) and `tokens`, the sum for all of it. */
#define HCACHE_NO_TOKENS UINT64_MAX
json_t *hcache_take_tokens(struct hcache *c, const char *key, uint64_t *tokens);
void hcache_put_owned(struct hcache *c, const char *key, json_t *messages, size_t keep, uint64_t tokens);
/* The session's encoded history as last sent (a new reference, created when first asked for),
 * or NULL when the session is not cached. */
struct nx_llm_run *hcache_run(struct hcache *c, const char *key);

/* budget.c: limits.daily_token_budget */
/* Creates (and starts loading) today's entry of every agent of a->gen that has a budget. */
void budgets_prepare(struct nx_agents *a);
/* 0 when t's agent may start a turn (it then sets aside up to its max_tokens of what is left,
 * given back by budget_charge); NX_EPERM (msg set) when its budget for today is used up,
 * NX_EBUSY when what is left is set aside for turns in flight; NX_EAGAIN when may_wait and the
 * day's stored count is still being read (budget_wait). */
int budget_check(struct nx_turn *t, bool may_wait, char *msg, size_t msglen);
/* done runs (loop thread) once the stored counts queued so far have been read. */
void budget_wait(struct nx_agents *a, nx_store_done_fn done, void *arg);
/* Adds the finished turn's tokens to its agent's count for today (and to the store), or
 * `estimate` when the provider reported none, and gives back what the turn set aside. */
void budget_charge(struct nx_turn *t, uint64_t estimate);
/* Seconds until the next 00:00 UTC. */
uint32_t budget_reset_secs(void);
void budgets_free(struct nx_agents *a);

/* workspace.c: IDENTITY.md, SOUL.md, USER.md, AGENTS.md, MEMORY.md */
struct ws_cache *ws_cache_new(const char *dir);
void ws_cache_free(struct ws_cache *c);
const char *ws_cache_dir(const struct ws_cache *c); /* the workspace (a real path) */
/* The files' text with headings ("" when none), re-read when one changed. Valid until the next
 * call. */
const char *ws_cache_text(struct ws_cache *c);

/* turn.c */
void turn_run(struct nx_turn *t); /* begins the turn (history, model, tools ...) */
void turn_run_soon(struct nx_turn *t); /* the same, on the next loop iteration */
/* collect mode: `from`'s messages join `into`, and its caller gets into's answer. */
void turn_merge(struct nx_turn *into, struct nx_turn *from);

/* --- agent/convo.c --- */
struct nx_buf;
/* Appends the text blocks of a canonical message to out. */
void turn_text_of(const json_t *message, struct nx_buf *out);
/* The final answer as callers get it: the model's last message, with only its text when it also
 * holds tool calls left open (cut off at max_tokens); NULL when it said nothing. New reference. */
json_t *turn_answer(const struct nx_turn *t);
/* Answers, as not run, the tool calls of the conversation's last message (an assistant message
 * cut off by the iteration limit or by max_tokens), so the stored session stays valid. */
void turn_close_open_calls(struct nx_turn *t);
/* The conversation as sent: messages of one role in a row, from index `from` on, joined into
 * one (new reference; the messages before `from` must already alternate). */
json_t *turn_alternating(json_t *convo, size_t from);
/* Messages of history a turn starts with (memory.yaml short_term.max_history_turns). */
size_t turn_history_keep(const struct nx_turn *t);
/* Adds the token estimates of the messages not counted yet to t->tokens; returns the sum. */
uint64_t turn_count_tokens(struct nx_turn *t);
/* Stores the turn's new messages (from new_from) in the session's history, and caches what the
 * next turn starts from. */
void turn_save(struct nx_turn *t);
/* Gives the turn's messages back to the history cache when it ends (finish, before the callers'
 * callbacks, which may free the agents): after a save, all of them (the array itself, which the
 * turn keeps a reference to); else the history it took, without what it added. */
void turn_put_back(struct nx_turn *t);
/* The conversation of a turn that ended before it had one (cancelled while queued, its history
 * loading or its images being kept; refused by the budget): the cached history if any, then
 * msgs (may be NULL), for turn_save. Without the cache the history is not known: nothing is
 * cached after. */
void turn_convo_of_unstarted(struct nx_turn *t, json_t *msgs);
/* The session's cached history as the turn's conversation (convo, new_from, its token sum), and
 * the cache's epoch noted for turn_save; false when it is not cached (then nothing is set but
 * the epoch). */
bool turn_convo_from_cache(struct nx_turn *t);
/* Whether an answer's content blocks say nothing: none, or text of white space only (which the
 * Messages API refuses in a later request: such an answer is not stored). */
bool turn_says_nothing(const json_t *content);
/* Appends messages to a conversation, a message of the role the last one has joining it (the
 * APIs want roles to alternate): collect mode's merging of queued messages. */
void turn_append_messages(json_t *to, const json_t *from);
/* A call's system prompt: the agent's own, its workspace identity files, the turn's extra (a
 * channel's addendum), blank-line separated. */
void turn_system_prompt(const struct nx_turn *t, struct nx_buf *out);
/* Adds a model call's usage to the turn's; a call that reported none is estimated (its system
 * prompt and tools, the conversation it was sent, the answer). */
void turn_add_usage(struct nx_turn *t, int rc, const struct nx_llm_result *res);
void agent_system_prompt(const struct agent_rt *ag, const char *extra, struct nx_buf *out);
/* A call's tool list (a new reference; empty when the turn has none) and its token estimate. */
json_t *turn_tools(const struct nx_turn *t, uint64_t *tokens);
json_t *agent_tools(const struct agent_rt *ag, uint64_t *tokens);
/* The history's share of the agent's context window, in estimated tokens: what is left once
 * the answer's room (max_tokens), the system prompt and the tool list (fixed_tokens: the call's
 * call_fixed_tokens) are taken, less a tenth for the estimate's error (tokenizers differ by more
 * than that on some text). */
uint64_t turn_history_budget(const struct nx_turn *t, uint32_t max_tokens, uint64_t fixed_tokens);
/* The messages of the turn's next call, its history cut to fit the context (convo.c). */
json_t *turn_fit_context(struct nx_turn *t, uint32_t max_tokens);

#endif
