/* Anthropic-compatible endpoint: POST /v1/messages (streaming and not). The key may come as
 * x-api-key (older SDKs) or Authorization: Bearer (newer ones). */
#include <stdlib.h>
#include <string.h>

#include "api/admin.h"
#include "api/chat.h"
#include "core/alloc.h"
#include "core/error.h"

static void event(struct api_call *c, const char *name, json_t *data)
{
    char *s = json_dumps(data, JSON_COMPACT);
    struct nx_buf b = NX_BUF_INIT;
    nx_buf_printf(&b, "event: %s\ndata: %s\n\n", name, s);
    nx_http_stream_write(c->req, b.data, b.len);
    nx_buf_cleanup(&b);
    free(s);
    json_decref(data);
}

static const char *stop_reason(enum nx_llm_stop stop)
{
    switch (stop) {
    case NX_LLM_STOP_MAX_TOKENS: return "max_tokens";
    case NX_LLM_STOP_STOP_SEQUENCE: return "stop_sequence";
    case NX_LLM_STOP_REFUSAL: return "refusal";
    default: return "end_turn";
    }
}

/* The stop sequence that ended the answer (as the provider parsed it: valid UTF-8), or null. */
static json_t *stop_sequence_json(const struct nx_turn_result *res)
{
    json_t *v = res->stop_sequence ? json_string(res->stop_sequence) : NULL;
    return v ? v : json_null();
}

static void begin_stream(struct api_call *c)
{
    if (c->started)
        return;
    c->started = true;
    nx_http_req_add_header(c->req, "cache-control", "no-cache");
    nx_http_stream_begin(c->req, 200, "text/event-stream; charset=utf-8");
    event(c, "message_start",
          json_pack("{s:s, s:{s:s, s:s, s:s, s:s, s:[], s:n, s:n, s:{s:i, s:i}}}", "type",
                    "message_start", "message", "id", c->id, "type", "message", "role", "assistant",
                    "model", c->model, "content", "stop_reason", "stop_sequence", "usage",
                    "input_tokens", 0, "output_tokens", 0));
    event(c, "content_block_start",
          json_pack("{s:s, s:i, s:{s:s, s:s}}", "type", "content_block_start", "index", 0,
                    "content_block", "type", "text", "text", ""));
    event(c, "ping", json_pack("{s:s}", "type", "ping"));
}

/* Written by hand, not through a json_t: a stream sends one per token. */
static void text_delta(struct api_call *c, const char *text, size_t len)
{
    struct nx_buf b = NX_BUF_INIT;
    nx_buf_puts(&b, "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,"
                    "\"delta\":{\"type\":\"text_delta\",\"text\":");
    nx_buf_put_json_str(&b, text, len);
    nx_buf_puts(&b, "}}\n\n");
    nx_http_stream_write(c->req, b.data, b.len);
    nx_buf_cleanup(&b);
}

static void on_text(const char *delta, size_t len, void *udata)
{
    struct api_call *c = udata;
    begin_stream(c);
    c->is_text_sent = true;
    text_delta(c, delta, len);
}

static void keepalive(struct api_call *c)
{
    static const char ping[] = "event: ping\ndata: {\"type\": \"ping\"}\n\n";
    nx_http_stream_write(c->req, ping, sizeof ping - 1);
}

static void free_call(struct api_call *c)
{
    api_call_cleanup(c);
    free(c->model);
    free(c);
}

static void on_abort(void *arg)
{
    struct api_call *c = arg;
    c->req = NULL;
    nx_turn_cancel(c->turn);
}

static void on_done(int rc, const struct nx_turn_result *res, void *udata)
{
    struct api_call *c = udata;
    if (!c->req) {
        free_call(c);
        return;
    }
    bool config_msg = rc == NX_ECONFIG && res->error_message;
    if (rc < 0 && !config_msg) {
        bool is_budget = res->error_type && strcmp(res->error_type, "budget_exceeded") == 0;
        int status = api_status_for(API_ANTHROPIC, rc, res);
        const char *type = api_error_type(API_ANTHROPIC, status, res->error_type);
        const char *msg = res->error_message ? res->error_message : nx_strerror(rc);
        if (c->started) {
            event(c, "error", json_pack("{s:s, s:{s:s, s:s}}", "type", "error", "error", "type",
                                        type, "message", msg));
            nx_http_stream_end(c->req);
        } else {
            if (is_budget)
                api_budget_headers(c->req, res);
            else
                api_error_headers(c->req, status, res);
            api_anthropic_error(c->req, status, type, msg);
        }
        free_call(c);
        return;
    }
    const char *text = config_msg ? res->error_message : res->text;
    if (c->stream) {
        begin_stream(c);
        if (!c->is_text_sent && text && *text) /* a configuration message; a merged caller's */
            text_delta(c, text, strlen(text));
        event(c, "content_block_stop", json_pack("{s:s, s:i}", "type", "content_block_stop", "index", 0));
        event(c, "message_delta",
              /* the input count is known only now (nexo streams before the model's first
               * event): the SDKs take it from here when message_start said 0 */
              json_pack("{s:s, s:{s:s, s:o}, s:{s:I, s:I, s:I, s:I}}", "type", "message_delta", "delta",
                        "stop_reason", stop_reason(res->stop), "stop_sequence",
                        stop_sequence_json(res),
                        "usage",
                        "input_tokens", (json_int_t)res->usage.input_tokens,
                        "cache_creation_input_tokens", (json_int_t)res->usage.cache_write_tokens,
                        "cache_read_input_tokens", (json_int_t)res->usage.cache_read_tokens,
                        "output_tokens", (json_int_t)res->usage.output_tokens));
        event(c, "message_stop", json_pack("{s:s}", "type", "message_stop"));
        nx_http_stream_end(c->req);
    } else {
        struct nx_buf b = NX_BUF_INIT;
        nx_buf_puts(&b, "{\"id\":");
        nx_buf_put_json_str(&b, c->id, strlen(c->id));
        nx_buf_puts(&b, ",\"type\":\"message\",\"role\":\"assistant\",\"model\":");
        nx_buf_put_json_str(&b, c->model, strlen(c->model));
        nx_buf_puts(&b, ",\"content\":["); /* no text: no block, as the API answers */
        if (*text) {
            nx_buf_puts(&b, "{\"type\":\"text\",\"text\":");
            nx_buf_put_json_str(&b, text, strlen(text));
            nx_buf_putc(&b, '}');
        }
        nx_buf_printf(&b, "],\"stop_reason\":\"%s\",\"stop_sequence\":", stop_reason(res->stop));
        if (res->stop_sequence)
            nx_buf_put_json_str(&b, res->stop_sequence, strlen(res->stop_sequence));
        else
            nx_buf_puts(&b, "null");
        nx_buf_printf(&b, ",\"usage\":{\"input_tokens\":%llu,\"cache_creation_input_tokens\":%llu,"
                          "\"cache_read_input_tokens\":%llu,\"output_tokens\":%llu}}",
                      (unsigned long long)res->usage.input_tokens,
                      (unsigned long long)res->usage.cache_write_tokens,
                      (unsigned long long)res->usage.cache_read_tokens,
                      (unsigned long long)res->usage.output_tokens);
        nx_http_respond(c->req, 200, "application/json", b.data, b.len);
        nx_buf_cleanup(&b);
    }
    free_call(c);
}

/* Anthropic content: a string, or blocks (text, image, tool_use and tool_result are kept; thinking
 * blocks a client replays are dropped; other blocks, documents, are refused rather than
 * dropped). NULL with *err. */
static json_t *blocks_of(const json_t *content, const char **err)
{
    if (json_is_string(content))
        return api_text_blocks(content);
    if (!json_is_array(content))
        return NULL;
    json_t *out = json_array();
    size_t i;
    json_t *b, *img;
    json_array_foreach(content, i, b) {
        const char *type = json_string_value(json_object_get(b, "type"));
        const char *text = json_string_value(json_object_get(b, "text"));
        if (type && strcmp(type, "text") == 0 && nx_str_is_blank(text)) {
            continue; /* (the API refuses an empty text block; an earlier nexo answered with one) */
        } else if (type && (strcmp(type, "text") == 0 || strcmp(type, "tool_use") == 0 ||
                            strcmp(type, "tool_result") == 0)) {
            json_array_append(out, b);
        } else if (type && strcmp(type, "image") == 0 && (img = api_image_block(b, err))) {
            json_array_append_new(out, img);
        } else if (type && (strcmp(type, "thinking") == 0 || strcmp(type, "redacted_thinking") == 0)) {
            continue; /* an earlier answer's reasoning, replayed by the client: the agent's own */
        } else {
            if (!type || strcmp(type, "image") != 0)
                *err = "messages: a content block nexo cannot pass on (text, image, tool_use and "
                       "tool_result are supported)";
            json_decref(out);
            return NULL;
        }
    }
    return out;
}

/* The request's JSON object, after the key check; NULL when it was answered (401, 400). */
static json_t *request_object(struct nx_http_req *req, const struct api_ctx *ctx)
{
    api_request_id(req, "request-id");
    if (!nx_api_authorized(req, *ctx->token)) {
        api_anthropic_error(req, 401, "authentication_error", "invalid x-api-key");
        return NULL;
    }
    size_t len = 0;
    const char *body = nx_http_req_body(req, &len);
    json_error_t jerr;
    json_t *in = json_loadb(body ? body : "", len, 0, &jerr);
    if (json_is_object(in))
        return in;
    char msg[256];
    if (in)
        snprintf(msg, sizeof msg, "the request body must be a JSON object");
    else
        snprintf(msg, sizeof msg, "invalid JSON body: line %d column %d: %s", jerr.line, jerr.column,
                 jerr.text);
    api_anthropic_error(req, 400, "invalid_request_error", msg);
    json_decref(in);
    return NULL;
}

/* The request's messages, canonical, into canon (blank ones go, as on the OpenAI side); the
 * problem, or NULL. */
static const char *canon_of(const json_t *msgs, json_t *canon)
{
    size_t i;
    json_t *m;
    json_array_foreach(msgs, i, m) {
        const char *role = json_string_value(json_object_get(m, "role"));
        const char *why = NULL;
        json_t *blocks = blocks_of(json_object_get(m, "content"), &why);
        if (!role || (strcmp(role, "user") != 0 && strcmp(role, "assistant") != 0) || !blocks) {
            json_decref(blocks);
            return why ? why : "messages: each message needs role user or assistant and content";
        }
        if (json_array_size(blocks) == 0) {
            json_decref(blocks);
            continue;
        }
        api_push_message(canon, role, blocks);
    }
    return NULL;
}

/* `system` (a string or text blocks) as one text. */
static void system_of(const json_t *sys, struct nx_buf *out)
{
    size_t i;
    json_t *m, *sblocks = sys ? api_text_blocks(sys) : NULL;
    json_array_foreach(sblocks, i, m) {
        if (out->len)
            nx_buf_puts(out, "\n\n");
        nx_buf_puts(out, json_string_value(json_object_get(m, "text")));
    }
    json_decref(sblocks);
}

/* A string, or text blocks only: the Messages API refuses an image there ("system.0.type:
 * Input should be 'text'"), and nexo would otherwise drop it without a word. */
static bool system_ok(const json_t *sys)
{
    size_t i;
    const json_t *b;

    if (!sys || json_is_null(sys) || json_is_string(sys))
        return true;
    if (!json_is_array(sys))
        return false;
    json_array_foreach(sys, i, b) {
        const char *type = json_string_value(json_object_get(b, "type"));
        if (!type || strcmp(type, "text") != 0 || !json_is_string(json_object_get(b, "text")))
            return false;
    }
    return true;
}

static void on_messages(struct nx_http_req *req, void *udata)
{
    const struct api_ctx *ctx = udata;
    json_t *in = request_object(req, ctx);
    if (!in)
        return;
    const char *model = json_string_value(json_object_get(in, "model"));
    const json_t *msgs = json_object_get(in, "messages");
    const json_t *mt = json_object_get(in, "max_tokens");
    const json_t *temp = json_object_get(in, "temperature");
    const json_t *sys = json_object_get(in, "system"), *stream = json_object_get(in, "stream");
    bool sys_ok = system_ok(sys);
    bool stream_ok = !stream || json_is_null(stream) || json_is_boolean(stream);
    bool bad_temp = temp && !json_is_null(temp) &&
                    (!json_is_number(temp) || json_number_value(temp) < 0 || json_number_value(temp) > 1);
    const json_t *meta = json_object_get(in, "metadata"), *uid = json_object_get(meta, "user_id");
    bool meta_ok = !meta || json_is_null(meta) || json_is_object(meta);
    bool uid_ok = !uid || json_is_null(uid) || json_is_string(uid);
    json_int_t mtv = json_integer_value(mt);
    const char *bad = !model                  ? "model: Field required"
                      : !json_is_integer(mt)  ? "max_tokens: Field required"
                      : mtv < 1 ? "max_tokens: Input should be greater than or equal to 1"
                      : mtv > API_MAX_TOKENS ? "max_tokens: Input should be at most 1000000"
                      : !sys_ok ? "system: Input should be a valid string or a list of text blocks"
                      : !stream_ok ? "stream: Input should be a valid boolean"
                      : !json_is_array(msgs) || !json_array_size(msgs) ? "messages: Field required"
                      : bad_temp ? "temperature: Input should be a number from 0 to 1"
                      : !meta_ok ? "metadata: Input should be a valid dictionary"
                      : !uid_ok ? "metadata.user_id: Input should be a valid string"
                                 : api_client_tools_why(in);
    json_t *canon = json_array();
    if (!bad)
        bad = canon_of(msgs, canon);
    if (!bad && !json_array_size(canon)) /* (every message blank: the caller's mistake, not a 502) */
        bad = "messages: text content blocks must be non-empty";
    if (bad) {
        api_anthropic_error(req, 400, "invalid_request_error", bad);
        json_decref(canon);
        json_decref(in);
        return;
    }
    struct nx_buf system = NX_BUF_INIT;
    system_of(sys, &system);

    const char *stop_err = NULL;
    const char *user = json_string_value(json_object_get(json_object_get(in, "metadata"), "user_id"));
    const char *input_err = api_session_input_why(req, canon, user);
    api_cap_cache_marks(req, canon, user);
    json_t *stop = api_stop_sequences(json_object_get(in, "stop_sequences"), 16, &stop_err);
    if (input_err || stop_err || (json_object_get(in, "stop_sequences") && !json_is_null(json_object_get(in,
                     "stop_sequences")) && !json_is_array(json_object_get(in, "stop_sequences")))) {
        api_anthropic_error(req, 400, "invalid_request_error", input_err ? input_err
                            : "stop_sequences: must be an array of non-empty strings (at most 16)");
        json_decref(stop);
        json_decref(canon);
        json_decref(in);
        nx_buf_cleanup(&system);
        return;
    }
    struct api_call *c = nx_calloc(1, sizeof *c);
    c->flavor = API_ANTHROPIC;
    c->begin = begin_stream;
    c->keepalive = keepalive;
    c->stop = stop;
    c->req = req;
    c->model = nx_strdup(model);
    c->stream = json_is_true(json_object_get(in, "stream"));
    nx_http_random_id(c->id, sizeof c->id, "msg_");
    api_start_turn(ctx, c, canon, nx_buf_cstr(&system), user, json_integer_value(mt),
                   json_object_get(in, "temperature"), on_text, on_done, on_abort);
    json_decref(in);
    nx_buf_cleanup(&system);
}

/* POST /v1/messages/count_tokens: {"input_tokens": N}, nexo's estimate of what a turn of the
 * agent with these messages would send (its system prompt, identity files and tools included). */
static void on_count_tokens(struct nx_http_req *req, void *udata)
{
    const struct api_ctx *ctx = udata;
    json_t *in = request_object(req, ctx);
    if (!in)
        return;
    const char *model = json_string_value(json_object_get(in, "model"));
    const json_t *msgs = json_object_get(in, "messages"), *sys = json_object_get(in, "system");
    const char *bad = !model                                      ? "model: Field required"
                      : !json_is_array(msgs) || !json_array_size(msgs) ? "messages: Field required"
                      : !system_ok(sys) ? "system: Input should be a valid string or a list of text blocks"
                                        : api_client_tools_why(in);
    json_t *canon = json_array();
    if (!bad)
        bad = canon_of(msgs, canon);
    struct nx_buf system = NX_BUF_INIT;
    uint64_t n = 0;
    if (bad) {
        api_anthropic_error(req, 400, "invalid_request_error", bad);
    } else {
        system_of(sys, &system);
        if (nx_agents_count_tokens(ctx->agents, model, nx_buf_cstr(&system), canon, &n) < 0) {
            api_anthropic_error(req, 404, "not_found_error",
                                "no such model: the models are the gateway's agents (GET /v1/models)");
        } else {
            char out[64];
            int len = snprintf(out, sizeof out, "{\"input_tokens\":%llu}", (unsigned long long)n);
            nx_http_respond(req, 200, "application/json", out, (size_t)len);
        }
    }
    nx_buf_cleanup(&system);
    json_decref(canon);
    json_decref(in);
}

void nx_api_anthropic_register(struct nx_http_server *srv, struct api_ctx *ctx)
{
    nx_http_server_route(srv, "POST", "/v1/messages", on_messages, ctx);
    nx_http_server_route(srv, "POST", "/v1/messages/count_tokens", on_count_tokens, ctx);
}

void nx_api_chat_register(struct nx_http_server *srv, struct nx_agents *agents,
                          const char *const *token_ptr, const uint32_t *keepalive_ms)
{
    /* One per gateway listener, for the life of the process. */
    static struct api_ctx ctx;
    ctx.agents = agents;
    ctx.token = token_ptr;
    ctx.keepalive_ms = keepalive_ms;
    nx_api_openai_register(srv, &ctx);
    nx_api_anthropic_register(srv, &ctx);
}
