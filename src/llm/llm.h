#ifndef NX_LLM_LLM_H
#define NX_LLM_LLM_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "config/config.h"
#include "core/breaker.h"
#include "http/client.h"

/* LLM providers behind one interface. A provider type is a table (struct nx_llm_type:
 * llm/anthropic.c, llm/openai.c); a provider is a configured instance (llm.yaml `providers`).
 * Providers know nothing of agents or channels. Everything runs on the loop thread.
 *
 * Conversations use one canonical JSON form, whatever the wire format:
 *   messages: [{"role": "user"|"assistant",
 *               "content": [{"type":"text","text":"..."},
 *                           {"type":"tool_use","id":"...","name":"...","input":{...}},
 *                           {"type":"tool_result","tool_use_id":"...","content":"...",
 *                            "is_error":false}]}]
 *   tools:    [{"name":"...","description":"...","input_schema":{JSON Schema}}]
 * (the Anthropic Messages shape; openai.c translates to and from Chat Completions).
 * A tool_use block whose arguments an OpenAI-compatible model sent as unparsable JSON carries
 * "input": {} plus "input_error" (why) and "input_raw" (the string as sent): the agent answers
 * it with an error tool_result; openai.c sends input_raw back as is, anthropic.c drops both. */

struct nx_llm_request {
    const char *model;
    const char *system;        /* system prompt, or NULL */
    const json_t *messages;    /* canonical (borrowed) */
    const json_t *tools;       /* canonical, or NULL (borrowed) */
    uint32_t max_tokens;       /* 0 = provider default (4096) */
    double temperature;        /* < 0 = provider default */
    const json_t *stop;        /* stop sequences: an array of strings, or NULL */
    bool stream;               /* stream deltas through on_text */
    bool is_stream_bare;       /* (set by llm/whole.c) without stream_options: the server refuses them */
    const char *user;          /* end-user id for the provider's abuse tracking, or NULL */
    /* The messages are a session's history that later requests send again, and none of them
     * changes once sent: their wire form is remembered by identity (llm/frag_cache.c), and
     * in the session's run when it has one. */
    bool is_history_stable;
    struct nx_llm_run *run; /* the session's encoded history (llm/run.c), or NULL; held by the call */
};

enum nx_llm_stop {
    NX_LLM_STOP_END_TURN,
    NX_LLM_STOP_TOOL_USE,
    NX_LLM_STOP_MAX_TOKENS,
    NX_LLM_STOP_STOP_SEQUENCE,
    NX_LLM_STOP_REFUSAL,
    NX_LLM_STOP_OTHER,
};

struct nx_llm_usage {
    uint64_t input_tokens;
    uint64_t output_tokens;
    uint64_t cache_read_tokens;
    uint64_t cache_write_tokens;
};

struct nx_llm_result {
    enum nx_llm_stop stop;
    const char *stop_sequence;  /* the stop sequence that ended it, when the provider says (Anthropic) */
    json_t *message;            /* the assistant message, canonical (borrowed; incref to keep) */
    struct nx_llm_usage usage;
    const char *model;          /* as the provider reported it */
    /* On failure (rc < 0 in on_done): */
    int http_status;            /* 0 if no HTTP response */
    const char *error_type;     /* provider's error type ("rate_limit_error", "overloaded_error", ...) */
    const char *error_message;  /* readable, no secrets */
    int64_t retry_after_ms;     /* from retry-after / retry-after-ms, -1 if none */
    bool is_retryable;          /* 429, 5xx, overloaded, connection errors, timeouts */
    bool is_stream_refused;     /* the model refuses to stream: to be asked again at once, whole */
};

struct nx_llm_callbacks {
    /* Streaming text delta (only with req->stream). */
    void (*on_text)(const char *delta, size_t len, void *udata);
    /* Called exactly once, never from inside nx_llm_start. rc 0 or a negative NX_E*. */
    void (*on_done)(int rc, const struct nx_llm_result *res, void *udata);
    void *udata;
};

struct nx_llm_call;
struct nx_llm_provider;

/* The provider types, by llm.yaml `kind`. */
struct nx_llm_type {
    const char *kind; /* "anthropic", "openai" */
    /* Builds the HTTP request body and headers, sends it with the client, parses the answer. */
    struct nx_llm_call *(*start)(struct nx_llm_provider *p, const struct nx_llm_request *req,
                                 const struct nx_llm_callbacks *cb);
    void (*cancel)(struct nx_llm_call *call); /* on_done then runs with NX_ECANCELED */
};

const struct nx_llm_type *nx_llm_type_find(const char *kind);

/* A configured provider (one per llm.yaml entry). */
struct nx_llm_provider_conf {
    const char *name;      /* "anthropic", "deepseek", ... */
    const char *kind;      /* "anthropic" | "openai" */
    const char *api_key;   /* may be "" */
    const char *base_url;  /* "" = the kind's default */
    const struct nx_http_header *headers; /* extra headers */
    size_t nheaders;
    uint32_t timeout_ms;   /* per request, 0 = 120000 */
    uint32_t stall_timeout_ms; /* a stream with only keep-alives, 0 = the longer of timeout and 10 min */
    const struct nx_breaker_conf *breaker; /* NULL = defaults (5 failures; 10 s doubling to 120 s) */
};

int nx_llm_provider_new(struct nx_http_client *http, const struct nx_llm_provider_conf *conf,
                        struct nx_llm_provider **out);
void nx_llm_provider_free(struct nx_llm_provider *p);
/* At a reload: what old (the same name, kind and URL) learnt of its server, p keeps: the models
 * that refuse to stream, a refusal of stream_options. Does nothing for another provider. */
void nx_llm_provider_inherit(struct nx_llm_provider *p, const struct nx_llm_provider *old);
const char *nx_llm_provider_name(const struct nx_llm_provider *p);

/* One attempt on one provider (no retries). */
struct nx_llm_call *nx_llm_start(struct nx_llm_provider *p, const struct nx_llm_request *req,
                                 const struct nx_llm_callbacks *cb);
void nx_llm_cancel(struct nx_llm_call *call);
/* Is a request of this call with the provider now (not waiting out a backoff or a breaker)? */
bool nx_llm_is_sending(const struct nx_llm_call *call);
/* The Messages API's error type for an HTTP status (docs.anthropic.com/en/api/errors): 400
 * invalid_request_error, 401 authentication_error, 402 billing_error, 403 permission_error, 404
 * not_found_error, 408 and 504 timeout_error, 413 request_too_large, 429 rate_limit_error, 529
 * overloaded_error, other 5xx api_error; NULL for any other status. */
const char *nx_llm_error_type_for_status(long status);

/* The context window of a well-known model, in tokens, from its name ("claude-sonnet-4-5",
 * "gpt-4o-mini", "openai/gpt-4.1"); 0 when the name is not known. */
uint32_t nx_llm_context_window(const char *model);

/* store/history.h's token estimate of a message that does not change once in a conversation
 * (a session's history), remembered by message identity (llm/frag_cache.c). Loop thread. */
uint64_t nx_llm_message_tokens(const json_t *m);
/* Forgets the remembered wire forms of messages nobody else holds any more (after a burst).
 * Returns how many entries are left. */
size_t nx_llm_frag_sweep(void);
/* A session's history as sent, one encoded run per wire format (llm/run.c): the next request
 * copies what it shares with the last one at once. Reference counted; loop thread. */
struct nx_llm_run;
struct nx_llm_run *nx_llm_run_new(void);
struct nx_llm_run *nx_llm_run_ref(struct nx_llm_run *r);
void nx_llm_run_unref(struct nx_llm_run *r);
size_t nx_llm_run_bytes(const struct nx_llm_run *r);
/* What the calling thread's runs hold together (bounded: past 64 MB, messages go through the
 * fragment cache instead). */
size_t nx_llm_run_total_bytes(void);
/* Entries the table holds now, live or not yet swept, and its slots (tests). */
size_t nx_llm_frag_entries(void);
size_t nx_llm_frag_slots(void);

/* --- retries, failover and circuit breakers (llm/chain.c) --- */

/* Retry policy: struct nx_llm_retry_conf from config/config.h (llm.yaml `retry`: max_attempts,
 * initial_backoff_ms, max_backoff_ms, backoff_multiplier; full jitter: sleep a random time in
 * [0, min(max, initial * multiplier^n)]). */

struct nx_llm_target {
    struct nx_llm_provider *provider;
    const char *model;
};

/* Runs the request on targets[0]; on retryable failures retries with backoff (honouring
 * retry-after), then moves to the next target (fallback). A provider whose breaker is open is
 * skipped. Streaming text already delivered is not repeated: a failover after text was streamed
 * is reported as an error instead. Same callbacks as nx_llm_start. */
struct nx_llm_call *nx_llm_chain_start(const struct nx_llm_target *targets, size_t ntargets,
                                       const struct nx_llm_retry_conf *retry,
                                       const struct nx_llm_request *req,
                                       const struct nx_llm_callbacks *cb);

/* Each provider has a circuit breaker (core/breaker.h): the chain records every attempt's
 * outcome in it and skips providers whose breaker refuses. */
struct nx_breaker *nx_llm_provider_breaker(struct nx_llm_provider *p);

#endif
