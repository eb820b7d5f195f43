/* OpenAI-compatible endpoints: POST /v1/chat/completions, GET /v1/models (and /v1/models/{id}). */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api/admin.h"
#include "api/chat.h"
#include "core/alloc.h"
#include "core/clock.h"
#include "core/error.h"
#include "core/log.h"

/* OpenAI's error shape; `param` names the request field at fault (NULL: null). */
static void openai_error_at(struct nx_http_req *req, int status, const char *type, const char *code,
                            const char *param, const char *message)
{
    struct nx_buf m = NX_BUF_INIT; /* (a message cut mid-character would make no JSON at all) */
    nx_utf8_sanitize(&m, message ? message : "", message ? strlen(message) : 0);
    json_t *o = json_pack("{s:{s:s, s:s, s:s?, s:s?}}", "error", "message", m.data, "type", type,
                          "param", param, "code", code);
    nx_http_respond_json(req, status, o);
    json_decref(o);
    nx_buf_cleanup(&m);
}

static void openai_error(struct nx_http_req *req, int status, const char *type, const char *code,
                         const char *message)
{
    openai_error_at(req, status, type, code, NULL, message);
}

static bool authorized(struct nx_http_req *req, const struct api_ctx *ctx)
{
    if (nx_api_authorized(req, *ctx->token))
        return true;
    openai_error(req, 401, "invalid_request_error", "invalid_api_key",
                 "Incorrect API key provided. Use the gateway's auth_token as the API key.");
    return false;
}

/* GET /v1/models and /v1/models/{id}: the agents, in OpenAI's shape, or in Anthropic's for its
 * SDKs (which send anthropic-version). "created" is when this process first listed them. */
static json_t *model_object(const char *id, bool is_anthropic)
{
    static time_t created;
    char when[40];

    if (!created)
        created = time(NULL);
    if (!is_anthropic)
        return json_pack("{s:s, s:s, s:I, s:s}", "id", id, "object", "model", "created",
                         (json_int_t)created, "owned_by", "nexo");
    nx_rfc3339((uint64_t)created * 1000, when, sizeof when);
    return json_pack("{s:s, s:s, s:s, s:s}", "type", "model", "id", id, "display_name", id,
                     "created_at", when);
}

static void on_models(struct nx_http_req *req, void *udata)
{
    const struct api_ctx *ctx = udata;
    size_t i, len = 0;
    bool is_anthropic = nx_http_req_header(req, "anthropic-version", &len) != NULL;
    api_request_id(req, is_anthropic ? "request-id" : "x-request-id"); /* (errors carry one too) */
    if (!nx_api_authorized(req, *ctx->token)) {
        if (is_anthropic) /* in the shape its SDK reads */
            api_anthropic_error(req, 401, "authentication_error", "invalid x-api-key");
        else
            authorized(req, ctx);
        return;
    }
    json_t *agents = nx_agents_list(ctx->agents), *data = json_array(), *a;
    const char *path = nx_http_req_path(req, &len), *want = NULL;
    if (len > strlen("/v1/models/"))
        want = path + strlen("/v1/models/");
    json_array_foreach(agents, i, a) {
        const char *id = json_string_value(json_object_get(a, "id"));
        if (!want || (strlen(id) == len - (size_t)(want - path) && memcmp(id, want, strlen(id)) == 0))
            json_array_append_new(data, model_object(id, is_anthropic));
    }
    json_decref(agents);
    static const char unknown[] = "no such model: the models are the gateway's agents (GET /v1/models)";
    json_t *page = NULL;
    if (want && json_array_size(data) == 0 && is_anthropic) {
        api_anthropic_error(req, 404, "not_found_error", unknown);
    } else if (want && json_array_size(data) == 0) {
        openai_error_at(req, 404, "invalid_request_error", "model_not_found", "model", unknown);
    } else if (want) {
        nx_http_respond_json(req, 200, json_array_get(data, 0));
    } else if (is_anthropic) {
        size_t n = json_array_size(data);
        json_t *first = n ? json_object_get(json_array_get(data, 0), "id") : NULL;
        json_t *last = n ? json_object_get(json_array_get(data, n - 1), "id") : NULL;
        page = json_pack("{s:O, s:b, s:O?, s:O?}", "data", data, "has_more", 0, "first_id", first, "last_id",
                         last);
    } else {
        page = json_pack("{s:s, s:O}", "object", "list", "data", data);
    }
    if (page)
        nx_http_respond_json(req, 200, page);
    json_decref(page);
    json_decref(data);
}

/* OpenAI messages -> canonical; system/developer text goes to *system. */
static json_t *to_canonical(const json_t *msgs, struct nx_buf *system, const char **err)
{
    json_t *out = json_array();
    size_t i;
    json_t *m;
    json_array_foreach(msgs, i, m) {
        const char *role = json_string_value(json_object_get(m, "role"));
        const json_t *content = json_object_get(m, "content");
        if (!role) {
            *err = "each message needs a \"role\"";
            goto bad;
        }
        if (strcmp(role, "system") == 0 || strcmp(role, "developer") == 0) {
            json_t *blocks = api_text_blocks(content);
            size_t k;
            json_t *b;
            json_array_foreach(blocks, k, b) {
                if (system->len)
                    nx_buf_puts(system, "\n\n");
                nx_buf_puts(system, json_string_value(json_object_get(b, "text")));
            }
            json_decref(blocks);
        } else if (strcmp(role, "user") == 0 || strcmp(role, "assistant") == 0) {
            const char *why = NULL;
            json_t *blocks = json_is_null(content) || !content ? json_array()
                             : strcmp(role, "user") == 0 ? api_content_blocks(content, &why)
                                                          : api_text_blocks(content);
            if (!blocks) {
                *err = why ? why : "\"content\" must be a string or an array of content parts";
                goto bad;
            }
            if (json_array_size(blocks) == 0) {
                json_decref(blocks);
                continue;
            }
            api_push_message(out, role, blocks);
        } else if (strcmp(role, "tool") == 0 || strcmp(role, "function") == 0) {
            continue; /* results of the client's own tools: nexo runs the agent's tools itself */
        } else {
            *err = "unknown message role";
            goto bad;
        }
    }
    return out;
bad:
    json_decref(out);
    return NULL;
}

static const char *finish_reason(enum nx_llm_stop stop)
{
    return stop == NX_LLM_STOP_MAX_TOKENS ? "length"
           : stop == NX_LLM_STOP_REFUSAL  ? "content_filter"
                                          : "stop";
}

/* "id", "object", "created" and "model": the head of every object this call answers with. */
static void put_head(struct nx_buf *b, const struct api_call *c, const char *object)
{
    nx_buf_puts(b, "{\"id\":");
    nx_buf_put_json_str(b, c->id, strlen(c->id));
    nx_buf_printf(b, ",\"object\":\"%s\",\"created\":%lld,\"model\":", object, (long long)c->created);
    nx_buf_put_json_str(b, c->model, strlen(c->model));
}

/* OpenAI's prompt_tokens count the cached ones too (prompt_tokens_details.cached_tokens says how
 * many); nexo's input_tokens, as Anthropic's, leave out those read from and written to the
 * cache. */
static void put_usage(struct nx_buf *b, const struct nx_turn_result *res)
{
    const struct nx_llm_usage *u = &res->usage;
    unsigned long long prompt = u->input_tokens + u->cache_read_tokens + u->cache_write_tokens;
    nx_buf_printf(b, "\"usage\":{\"prompt_tokens\":%llu,\"completion_tokens\":%llu,\"total_tokens\":%llu,"
                     "\"prompt_tokens_details\":{\"cached_tokens\":%llu}}",
                  prompt, (unsigned long long)u->output_tokens, prompt + u->output_tokens,
                  (unsigned long long)u->cache_read_tokens);
}

/* One chat.completion.chunk event. Its delta holds the role when `is_first`, the content when
 * `content` is not NULL; `finish` is the finish_reason (NULL: null). Written by hand, not
 * through jansson: a stream sends one per token. */
static void stream_chunk(struct api_call *c, bool is_first, const char *content, size_t len,
                         const char *finish)
{
    struct nx_buf b = NX_BUF_INIT;
    nx_buf_puts(&b, "data: ");
    put_head(&b, c, "chat.completion.chunk");
    nx_buf_puts(&b, ",\"choices\":[{\"index\":0,\"delta\":{");
    if (is_first)
        nx_buf_puts(&b, content ? "\"role\":\"assistant\"," : "\"role\":\"assistant\"");
    if (content) {
        nx_buf_puts(&b, "\"content\":");
        nx_buf_put_json_str(&b, content, len);
    }
    nx_buf_puts(&b, "},\"logprobs\":null,\"finish_reason\":");
    if (finish)
        nx_buf_put_json_str(&b, finish, strlen(finish));
    else
        nx_buf_puts(&b, "null");
    /* with include_usage every chunk but the last names usage, as null */
    nx_buf_puts(&b, c->include_usage ? "}],\"system_fingerprint\":null,\"usage\":null}\n\n"
                                     : "}],\"system_fingerprint\":null}\n\n");
    nx_http_stream_write(c->req, b.data, b.len);
    nx_buf_cleanup(&b);
}

static void begin_stream(struct api_call *c)
{
    if (c->started)
        return;
    c->started = true;
    nx_http_req_add_header(c->req, "cache-control", "no-cache");
    nx_http_stream_begin(c->req, 200, "text/event-stream; charset=utf-8");
    stream_chunk(c, true, "", 0, NULL);
}

static void on_text(const char *delta, size_t len, void *udata)
{
    struct api_call *c = udata;
    begin_stream(c);
    c->is_text_sent = true;
    stream_chunk(c, false, delta, len, NULL);
}

/* An SSE comment: the SDKs' parsers skip it. */
static void keepalive(struct api_call *c)
{
    static const char ka[] = ": keep-alive\n\n";
    nx_http_stream_write(c->req, ka, sizeof ka - 1);
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
    nx_turn_cancel(c->turn); /* on_done frees */
}

static void on_done(int rc, const struct nx_turn_result *res, void *udata)
{
    struct api_call *c = udata;
    if (!c->req) { /* the client went away */
        free_call(c);
        return;
    }
    bool config_msg = rc == NX_ECONFIG && res->error_message;
    if (rc < 0 && !config_msg) {
        if (c->started) { /* headers are gone: an error event, then the end */
            struct nx_buf b = NX_BUF_INIT, m = NX_BUF_INIT; /* (the shape of OpenAI's errors, whole) */
            const char *msg = res->error_message ? res->error_message : nx_strerror(rc);
            nx_utf8_sanitize(&m, msg, strlen(msg));
            json_t *e = json_pack("{s:{s:s, s:s, s:n, s:n}}", "error", "message", m.data, "type",
                                  api_error_type(API_OPENAI, api_status_for(API_OPENAI, rc, res),
                                                 res->error_type),
                                  "param", "code");
            nx_buf_cleanup(&m);
            char *s = json_dumps(e, JSON_COMPACT);
            nx_buf_printf(&b, "data: %s\n\n", s);
            nx_http_stream_write(c->req, b.data, b.len);
            nx_http_stream_end(c->req);
            free(s);
            json_decref(e);
            nx_buf_cleanup(&b);
        } else if (res->error_type && strcmp(res->error_type, "budget_exceeded") == 0) {
            /* What OpenAI answers when a quota is spent: the SDKs raise RateLimitError with
             * code "insufficient_quota". */
            api_budget_headers(c->req, res);
            openai_error(c->req, 429, "insufficient_quota", "insufficient_quota", res->error_message);
        } else {
            int status = api_status_for(API_OPENAI, rc, res);
            const char *type = api_error_type(API_OPENAI, status, res->error_type);
            api_error_headers(c->req, status, res);
            openai_error(c->req, status, type,
                         status == 404                               ? "model_not_found"
                         : strcmp(type, "insufficient_quota") == 0   ? "insufficient_quota"
                         : status == 429                             ? "rate_limit_exceeded"
                                                                     : NULL,
                         res->error_message ? res->error_message : nx_strerror(rc));
        }
        free_call(c);
        return;
    }
    const char *text = config_msg ? res->error_message : res->text;
    struct nx_buf b = NX_BUF_INIT;
    if (c->stream) {
        begin_stream(c);
        if (!c->is_text_sent && text && *text) /* a configuration message; a merged caller's */
            stream_chunk(c, false, text, strlen(text), NULL);
        stream_chunk(c, false, NULL, 0, finish_reason(res->stop));
        if (c->include_usage) {
            nx_buf_puts(&b, "data: ");
            put_head(&b, c, "chat.completion.chunk");
            nx_buf_puts(&b, ",\"choices\":[],\"system_fingerprint\":null,");
            put_usage(&b, res);
            nx_buf_puts(&b, "}\n\n");
        }
        nx_buf_puts(&b, "data: [DONE]\n\n");
        nx_http_stream_write(c->req, b.data, b.len);
        nx_http_stream_end(c->req);
    } else {
        put_head(&b, c, "chat.completion");
        nx_buf_puts(&b, ",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":");
        nx_buf_put_json_str(&b, text ? text : "", text ? strlen(text) : 0);
        nx_buf_printf(&b, ",\"refusal\":null},\"logprobs\":null,\"finish_reason\":\"%s\"}],",
                      finish_reason(res->stop));
        put_usage(&b, res);
        nx_buf_puts(&b, ",\"system_fingerprint\":null}");
        nx_http_respond(c->req, 200, "application/json", b.data, b.len);
    }
    nx_buf_cleanup(&b);
    free_call(c);
}

/* Whether `modalities` (absent, null, or a list) asks for text alone. */
static bool only_text(const json_t *m)
{
    size_t i;
    const json_t *v;

    if (!m || json_is_null(m))
        return true;
    if (!json_is_array(m))
        return false;
    json_array_foreach(m, i, v) {
        if (!json_is_string(v) || strcmp(json_string_value(v), "text") != 0)
            return false;
    }
    return true;
}

/* Parameters nexo cannot honour are refused (400), not ignored: a client asking for two choices
 * or for JSON mode would otherwise take what comes back for what it asked. */
static bool unsupported(const json_t *in, char *why, size_t len)
{
    const json_t *n = json_object_get(in, "n"), *fmt = json_object_get(in, "response_format");
    const json_t *t = json_object_get(in, "temperature");
    const char *ftype = json_string_value(json_object_get(fmt, "type"));
    const json_t *mt = json_object_get(in, "max_completion_tokens");
    const char *mt_name = "max_completion_tokens";
    const json_t *stream = json_object_get(in, "stream"), *sopts = json_object_get(in, "stream_options");

    if (!mt || json_is_null(mt)) {
        mt = json_object_get(in, "max_tokens");
        mt_name = "max_tokens";
    }
    if (n && !json_is_null(n) && !(json_is_integer(n) && json_integer_value(n) == 1))
        snprintf(why, len, "n: nexo answers with one choice; send n=1 or leave it out");
    else if (json_is_true(json_object_get(in, "logprobs")) ||
             (json_object_get(in, "top_logprobs") && !json_is_null(json_object_get(in, "top_logprobs"))))
        snprintf(why, len, "logprobs: not available through nexo");
    else if (fmt && !json_is_null(fmt) && !(ftype && strcmp(ftype, "text") == 0))
        snprintf(why, len, "response_format: only {\"type\": \"text\"} is supported");
    else if (t && !json_is_null(t) && (!json_is_number(t) || json_number_value(t) < 0 ||
                                       json_number_value(t) > 2))
        snprintf(why, len, "temperature: must be a number from 0 to 2");
    else if (mt && !json_is_null(mt) && (!json_is_integer(mt) || json_integer_value(mt) < 1 ||
                                         json_integer_value(mt) > API_MAX_TOKENS))
        snprintf(why, len, "%s: must be an integer from 1 to %d", mt_name, API_MAX_TOKENS);
    else if (stream && !json_is_null(stream) && !json_is_boolean(stream))
        snprintf(why, len, "stream: must be true or false");
    else if (sopts && !json_is_null(sopts) && (!json_is_true(stream) || !json_is_object(sopts)))
        snprintf(why, len, "stream_options: only allowed, as an object, when stream is true");
    else if (!only_text(json_object_get(in, "modalities")) ||
             (json_object_get(in, "audio") && !json_is_null(json_object_get(in, "audio"))))
        snprintf(why, len, "%s: nexo answers in text only",
                 json_object_get(in, "audio") && !json_is_null(json_object_get(in, "audio")) ? "audio"
                                                                                              : "modalities");
    else if (json_object_get(in, "user") && !json_is_null(json_object_get(in, "user")) &&
             !json_is_string(json_object_get(in, "user")))
        snprintf(why, len, "user: must be a string (an id for your end user)");
    else if (api_client_tools_why(in))
        snprintf(why, len, "%s", api_client_tools_why(in));
    else
        return false;
    return true;
}

static void on_completions(struct nx_http_req *req, void *udata)
{
    const struct api_ctx *ctx = udata;
    api_request_id(req, "x-request-id");
    if (!authorized(req, ctx))
        return;
    size_t len = 0;
    const char *body = nx_http_req_body(req, &len);
    json_error_t jerr;
    json_t *in = json_loadb(body ? body : "", len, 0, &jerr);
    if (!json_is_object(in)) {
        char msg[256];
        if (in)
            snprintf(msg, sizeof msg, "The body of your request must be a JSON object.");
        else
            snprintf(msg, sizeof msg, "We could not parse the JSON body of your request (line %d, "
                     "column %d: %s).", jerr.line, jerr.column, jerr.text);
        openai_error(req, 400, "invalid_request_error", NULL, msg);
        json_decref(in);
        return;
    }
    const char *model = json_string_value(json_object_get(in, "model"));
    const json_t *msgs = json_object_get(in, "messages");
    if (!model || !json_is_array(msgs) || json_array_size(msgs) == 0) {
        openai_error(req, 400, "invalid_request_error", NULL,
                     !model ? "you must provide a model parameter (an agent id, see GET /v1/models)"
                            : "\"messages\" must be a non-empty array");
        json_decref(in);
        return;
    }
    char why[200];
    const char *stop_err = NULL;
    json_t *stop = api_stop_sequences(json_object_get(in, "stop"), 4, &stop_err);
    if (stop_err)
        snprintf(why, sizeof why, "stop: %s", stop_err);
    if (stop_err || unsupported(in, why, sizeof why)) {
        char param[32] = ""; /* every reason starts "<param>: " */
        size_t plen = strcspn(why, ":");
        if (why[plen] && plen < sizeof param)
            memcpy(param, why, plen);
        openai_error_at(req, 400, "invalid_request_error", NULL, *param ? param : NULL, why);
        json_decref(stop);
        json_decref(in);
        return;
    }
    struct nx_buf system = NX_BUF_INIT;
    const char *err = NULL;
    json_t *canon = to_canonical(msgs, &system, &err);
    if (canon && json_array_size(canon))
        err = api_session_input_why(req, canon, json_string_value(json_object_get(in, "user")));
    if (!canon || json_array_size(canon) == 0 || err) {
        openai_error(req, 400, "invalid_request_error", NULL, err ? err : "no user message");
        json_decref(stop);
        json_decref(canon);
        json_decref(in);
        nx_buf_cleanup(&system);
        return;
    }
    struct api_call *c = nx_calloc(1, sizeof *c);
    c->flavor = API_OPENAI;
    c->begin = begin_stream;
    c->keepalive = keepalive;
    c->req = req;
    c->model = nx_strdup(model);
    c->created = (long)time(NULL);
    c->stop = stop;
    c->stream = json_is_true(json_object_get(in, "stream"));
    c->include_usage = json_is_true(json_object_get(json_object_get(in, "stream_options"),
                                                    "include_usage"));
    nx_http_random_id(c->id, sizeof c->id, "chatcmpl-");
    json_int_t max_tokens = json_integer_value(json_object_get(in, "max_completion_tokens"));
    if (!max_tokens)
        max_tokens = json_integer_value(json_object_get(in, "max_tokens"));
    api_start_turn(ctx, c, canon, nx_buf_cstr(&system), json_string_value(json_object_get(in, "user")),
                   max_tokens, json_object_get(in, "temperature"), on_text, on_done, on_abort);
    json_decref(in);
    nx_buf_cleanup(&system);
}

void nx_api_openai_register(struct nx_http_server *srv, struct api_ctx *ctx)
{
    nx_http_server_route(srv, "POST", "/v1/chat/completions", on_completions, ctx);
    nx_http_server_route(srv, "GET", "/v1/models", on_models, ctx);
    nx_http_server_route(srv, "GET", "/v1/models/*", on_models, ctx);
}
