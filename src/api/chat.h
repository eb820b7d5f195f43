#ifndef NX_API_CHAT_H
#define NX_API_CHAT_H

#include <jansson.h>
#include <stdbool.h>

#include "agent/agent.h"
#include "core/buf.h"
#include "http/server.h"

/* The OpenAI-compatible (/v1/chat/completions, /v1/models) and Anthropic-compatible
 * (/v1/messages) endpoints on the gateway listener. The model is the agent id; the agent's own
 * tools run inside the gateway and the client sees the final answer (streaming: its text as it
 * comes). When *token_ptr is set, requests need it (Bearer or x-api-key). *keepalive_ms: how
 * often a stream whose agent runs tools says it is alive (limits.stream_keepalive). */
void nx_api_chat_register(struct nx_http_server *srv, struct nx_agents *agents,
                          const char *const *token_ptr, const uint32_t *keepalive_ms);

/* --- shared by openai_api.c and anthropic_api.c --- */

enum api_flavor { API_OPENAI, API_ANTHROPIC };

struct api_call {
    enum api_flavor flavor;
    struct nx_http_req *req;
    struct nx_turn *turn;
    bool stream;
    bool started;          /* stream headers sent */
    bool is_text_sent;     /* streamed text of its own (a caller merged into another's turn gets
                            * none: its answer's text goes out whole at the end) */
    bool include_usage;    /* OpenAI stream_options.include_usage */
    char id[48];           /* chatcmpl-… / msg_… */
    char *model;           /* the agent id as asked */
    long created;
    json_t *stop;          /* stop sequences, handed to the turn by api_start_turn */
    /* Streams: the flavor's start (headers and first event) and keep-alive writers, and the
     * timer that sends keep-alives while the agent's tools run (api_on_tool). */
    void (*begin)(struct api_call *c);
    void (*keepalive)(struct api_call *c);
    uv_timer_t *ka;
    uint32_t keepalive_ms;
};
/* Frees what api_start_turn gave the call (the keep-alive timer); the flavor frees the rest. */
void api_call_cleanup(struct api_call *c);

struct api_ctx {
    struct nx_agents *agents;
    const char *const *token;
    const uint32_t *keepalive_ms; /* limits.stream_keepalive, as the current config has it */
};

/* "agent:<agent>:http:<peer>" from X-Nexo-Session or the body's user field; NULL if neither. */
char *api_session_key(const struct nx_http_req *req, const char *agent, const char *user);
/* Canonical text-only content from a string or an array of {type:text,text} parts; NULL when
 * the shape is wrong. New reference. */
json_t *api_text_blocks(const json_t *content);
/* Appends msg to the canonical list, merging it into the last message when the roles match. */
void api_push_message(json_t *messages, const char *role, json_t *blocks);
/* A refused turn (daily token budget used up): retry-after (seconds to 00:00 UTC) and
 * x-should-retry: false, before the error is sent. */
void api_budget_headers(struct nx_http_req *req, const struct nx_turn_result *res);
/* A message's content as canonical blocks: text, and images (an OpenAI image_url part, data: or
 * http(s) URL; an Anthropic image block, base64 or url) as canonical image blocks. NULL with
 * *err for anything else, or an image nexo cannot send (a type other than png, jpeg, gif or
 * webp; data that is not base64). */
json_t *api_content_blocks(const json_t *content, const char **err);
/* One image part or block as a canonical image block; NULL with *err. */
json_t *api_image_block(const json_t *part, const char **err);
/* The largest max_tokens a request may ask for (no model answers more). */
#define API_MAX_TOKENS 1000000

/* Anthropic's error shape: {"type":"error","error":{"type","message"}}. */
void api_anthropic_error(struct nx_http_req *req, int status, const char *type, const char *message);
/* Names the request as the provider's API does, in every answer to it, error or stream
 * (OpenAI: x-request-id, Anthropic: request-id): what the SDKs show as request_id. */
void api_request_id(struct nx_http_req *req, const char *header);
/* Stop sequences from a request's `stop` (OpenAI: a string or up to 4 strings) or
 * `stop_sequences` (Anthropic: strings): a new array, NULL when absent; NULL with *err set when
 * malformed. */
json_t *api_stop_sequences(const json_t *v, size_t max, const char **err);
/* Why a request that brings tools of its own cannot be honoured, or NULL: the agent's tools run
 * inside nexo and the client sees only the answer, so a client's `tools` (or OpenAI's older
 * `functions`), or a `tool_choice` that demands a call, would be silently dropped. */
const char *api_client_tools_why(const json_t *in);
/* The headers an error answer with `status` carries: the provider's retry-after on 429/503/529,
 * and x-should-retry: false where the official SDKs would otherwise retry in vain (400, 409,
 * 413). */
void api_error_headers(struct nx_http_req *req, int status, const struct nx_turn_result *res);
/* Why a request cannot be a session's next message (it is one when it carries X-Nexo-Session
 * or `user`): its last message is not the user's (a blank last message is dropped, and the one
 * before it must not be taken for the new input). NULL when it can. */
const char *api_session_input_why(const struct nx_http_req *req, const json_t *canon, const char *user);
/* Anthropic allows 4 cache_control marks a request and the agent sets 2 (its system prompt and
 * tools): a stateless request keeps its last 2, a session's message none (it is stored, and later
 * turns would pile them up). */
#define API_CLIENT_CACHE_MARKS 2
void api_cap_cache_marks(const struct nx_http_req *req, json_t *canon, const char *user);
/* HTTP status for a failed turn, as the API of `f` uses them (OpenAI has no 529: 503). */
int api_status_for(enum api_flavor f, int rc, const struct nx_turn_result *res);
/* The error `type` for an answer with `status`, in the vocabulary of `f`'s API: a provider's
 * own (an Anthropic model's "overloaded_error" to an OpenAI client, OpenAI's "requests" to an
 * Anthropic one) would be foreign to its clients. nexo's own types (docs/api.md) stay. */
const char *api_error_type(enum api_flavor f, int status, const char *type);

void api_start_turn(const struct api_ctx *ctx, struct api_call *c, json_t *canon,
                    const char *system, const char *user, json_int_t max_tokens,
                    const json_t *temperature,
                    void (*on_text)(const char *delta, size_t len, void *udata),
                    void (*on_done)(int rc, const struct nx_turn_result *res, void *udata),
                    void (*on_abort)(void *arg));

void nx_api_openai_register(struct nx_http_server *srv, struct api_ctx *ctx);
void nx_api_anthropic_register(struct nx_http_server *srv, struct api_ctx *ctx);

#endif
