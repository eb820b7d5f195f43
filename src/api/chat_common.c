#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/sha.h>

#include "api/chat.h"
#include "core/alloc.h"
#include "core/error.h"
#include "llm/llm.h"

/* A session name of at most SESSION_NAME_MAX bytes is kept as given; a longer one becomes its
 * start (cut between characters) and a digest of the whole, so that two long names that begin
 * alike stay two sessions. */
#define SESSION_NAME_MAX 256
#define SESSION_NAME_KEEP 200

static void put_session_name(struct nx_buf *b, const char *name, size_t len)
{
    unsigned char md[SHA256_DIGEST_LENGTH];
    size_t keep = SESSION_NAME_KEEP;

    if (len <= SESSION_NAME_MAX) {
        nx_buf_append(b, name, len);
        return;
    }
    while (keep > 0 && ((unsigned char)name[keep] & 0xC0) == 0x80)
        keep--; /* not inside a UTF-8 character */
    nx_buf_append(b, name, keep);
    SHA256((const unsigned char *)name, len, md);
    nx_buf_putc(b, '~');
    for (size_t i = 0; i < 12; i++)
        nx_buf_printf(b, "%02x", md[i]);
}

char *api_session_key(const struct nx_http_req *req, const char *agent, const char *user)
{
    size_t len = 0;
    const char *h = nx_http_req_header(req, "x-nexo-session", &len);
    struct nx_buf b = NX_BUF_INIT;
    if (h && len) {
        nx_buf_printf(&b, "agent:%s:http:", agent);
        put_session_name(&b, h, len);
    } else if (user && *user) {
        nx_buf_printf(&b, "agent:%s:http:", agent);
        put_session_name(&b, user, strlen(user));
    } else {
        return NULL;
    }
    return nx_buf_steal(&b);
}

/* Counts the marks of blocks[] from the end (tool_result contents too), dropping those past keep. */
static void cap_marks(json_t *blocks, size_t keep, size_t *seen)
{
    for (size_t i = json_array_size(blocks); i-- > 0;) {
        json_t *b = json_array_get(blocks, i);
        cap_marks(json_object_get(b, "content"), keep, seen); /* (a tool_result's, else nothing) */
        if (json_object_get(b, "cache_control") && ++*seen > keep)
            json_object_del(b, "cache_control");
    }
}

/* A request that names a session (X-Nexo-Session, or the API's user field): its last message is
 * the session's next one. */
static bool names_session(const struct nx_http_req *req, const char *user)
{
    size_t len = 0;
    const char *h = nx_http_req_header(req, "x-nexo-session", &len);
    return (h && len) || (user && *user);
}

void api_cap_cache_marks(const struct nx_http_req *req, json_t *canon, const char *user)
{
    size_t seen = 0, keep = names_session(req, user) ? 0 : API_CLIENT_CACHE_MARKS;

    for (size_t i = json_array_size(canon); i-- > 0;)
        cap_marks(json_object_get(json_array_get(canon, i), "content"), keep, &seen);
}

const char *api_session_input_why(const struct nx_http_req *req, const json_t *canon, const char *user)
{
    const json_t *last = json_array_get(canon, json_array_size(canon) - 1);
    const char *role = json_string_value(json_object_get(last, "role"));
    if (!names_session(req, user))
        return NULL; /* stateless: a closing assistant message is a prefill, as the APIs take it */
    return role && strcmp(role, "user") == 0 && json_array_size(json_object_get(last, "content"))
               ? NULL
               : "messages: in a session (X-Nexo-Session, user) only the last message is new, and it must "
                 "be the user's, with text or an image (a blank one is no message)";
}

void api_anthropic_error(struct nx_http_req *req, int status, const char *type, const char *message)
{
    struct nx_buf m = NX_BUF_INIT; /* (a message cut mid-character would make no JSON at all) */
    nx_utf8_sanitize(&m, message ? message : "", message ? strlen(message) : 0);
    json_t *o = json_pack("{s:s, s:{s:s, s:s}}", "type", "error", "error", "type", type, "message",
                          m.data);
    nx_http_respond_json(req, status, o);
    json_decref(o);
    nx_buf_cleanup(&m);
}

void api_request_id(struct nx_http_req *req, const char *header)
{
    char id[40];
    nx_http_random_id(id, sizeof id, "req_");
    nx_http_req_add_header(req, header, id);
}

/* Text of white space only, which the Messages API refuses as a block ("text content blocks
 * must contain non-whitespace text") and OpenAI's clients send freely (an assistant turn's
 * "" beside its tool calls): such blocks are dropped (nx_str_is_blank), and a message left with
 * none goes. */
json_t *api_text_blocks(const json_t *content)
{
    if (json_is_string(content))
        return nx_str_is_blank(json_string_value(content))
                   ? json_array()
                   : json_pack("[{s:s, s:s}]", "type", "text", "text", json_string_value(content));
    if (!json_is_array(content))
        return NULL;
    json_t *out = json_array();
    size_t i;
    json_t *part;
    json_array_foreach(content, i, part) {
        const char *type = json_string_value(json_object_get(part, "type"));
        const char *text = json_string_value(json_object_get(part, "text"));
        if (type && strcmp(type, "text") == 0 && text && !nx_str_is_blank(text))
            json_array_append_new(out, json_pack("{s:s, s:s}", "type", "text", "text", text));
    }
    return out;
}

static bool is_image_type(const char *mt, size_t len)
{
    static const char *const types[] = {"image/png", "image/jpeg", "image/gif", "image/webp"};

    for (size_t i = 0; i < NX_ARRAY_LEN(types); i++) {
        if (len == strlen(types[i]) && strncmp(mt, types[i], len) == 0)
            return true;
    }
    return false;
}

/* A canonical image (the Anthropic block shape the providers' layers translate) from base64
 * bytes of a known type, or from a URL the provider fetches. */
static json_t *image_block(const char *media_type, size_t mlen, const char *data, const char *url,
                           const char **err)
{
    if (url) {
        if (strncmp(url, "https://", 8) != 0 && strncmp(url, "http://", 7) != 0) {
            *err = "an image URL must be https://, http:// or a data: URL";
            return NULL;
        }
        return json_pack("{s:s, s:{s:s, s:s}}", "type", "image", "source", "type", "url", "url", url);
    }
    if (!media_type || !is_image_type(media_type, mlen)) {
        *err = "an image must be image/png, image/jpeg, image/gif or image/webp";
        return NULL;
    }
    if (!data || !*data || strspn(data, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                        "0123456789+/=") != strlen(data)) {
        *err = "an image's data must be base64";
        return NULL;
    }
    return json_pack("{s:s, s:{s:s, s:s%, s:s}}", "type", "image", "source", "type", "base64",
                     "media_type", media_type, mlen, "data", data);
}

json_t *api_image_block(const json_t *part, const char **err)
{
    const char *type = json_string_value(json_object_get(part, "type"));
    const json_t *src;

    if (type && strcmp(type, "image_url") == 0) { /* OpenAI: {"image_url": {"url": ...}} */
        const json_t *iu = json_object_get(part, "image_url");
        const char *url = json_is_string(iu) ? json_string_value(iu)
                                             : json_string_value(json_object_get(iu, "url"));
        if (!url) {
            *err = "image_url.url is required";
            return NULL;
        }
        if (strncmp(url, "data:", 5) == 0) { /* data:<type>;base64,<data> */
            const char *semi = strchr(url + 5, ';');
            if (!semi || strncmp(semi, ";base64,", 8) != 0) {
                *err = "an image data: URL must be base64";
                return NULL;
            }
            return image_block(url + 5, (size_t)(semi - url - 5), semi + 8, NULL, err);
        }
        return image_block(NULL, 0, NULL, url, err);
    }
    src = json_object_get(part, "source"); /* Anthropic: {"source": {"type": base64 | url}} */
    type = json_string_value(json_object_get(src, "type"));
    if (type && strcmp(type, "base64") == 0) {
        const char *mt = json_string_value(json_object_get(src, "media_type"));
        return image_block(mt, mt ? strlen(mt) : 0, json_string_value(json_object_get(src, "data")),
                           NULL, err);
    }
    if (type && strcmp(type, "url") == 0 && json_string_value(json_object_get(src, "url")))
        return image_block(NULL, 0, NULL, json_string_value(json_object_get(src, "url")), err);
    *err = "an image's source must be base64 or url";
    return NULL;
}

json_t *api_content_blocks(const json_t *content, const char **err)
{
    json_t *out, *part;
    size_t i;

    if (!json_is_array(content))
        return api_text_blocks(content);
    out = json_array();
    json_array_foreach(content, i, part) {
        const char *type = json_string_value(json_object_get(part, "type"));
        const char *text = json_string_value(json_object_get(part, "text"));
        json_t *img;
        if (type && strcmp(type, "text") == 0 && text) {
            if (!nx_str_is_blank(text))
                json_array_append_new(out, json_pack("{s:s, s:s}", "type", "text", "text", text));
        } else if (type && (strcmp(type, "image_url") == 0 || strcmp(type, "image") == 0)) {
            if (!(img = api_image_block(part, err))) {
                json_decref(out);
                return NULL;
            }
            json_array_append_new(out, img);
        } else {
            *err = "a content part nexo cannot pass on (text and images are supported)";
            json_decref(out);
            return NULL;
        }
    }
    return out;
}

json_t *api_stop_sequences(const json_t *v, size_t max, const char **err)
{
    json_t *out, *s;
    size_t i;

    *err = NULL;
    if (!v || json_is_null(v))
        return NULL;
    if (json_is_string(v))
        v = json_pack("[O]", v);
    else if (json_is_array(v))
        json_incref((json_t *)v);
    else {
        *err = "must be a string or an array of strings";
        return NULL;
    }
    out = (json_t *)v;
    if (json_array_size(out) > max) {
        *err = "too many stop sequences";
        json_decref(out);
        return NULL;
    }
    json_array_foreach(out, i, s) {
        if (!json_is_string(s) || json_string_length(s) == 0 || json_string_length(s) > 256) {
            *err = "each stop sequence must be a non-empty string of at most 256 bytes";
            json_decref(out);
            return NULL;
        }
    }
    if (!json_array_size(out)) {
        json_decref(out);
        return NULL;
    }
    return out;
}

const char *api_client_tools_why(const json_t *in)
{
    static const char *const lists[] = {"tools", "functions"};
    for (size_t i = 0; i < sizeof lists / sizeof lists[0]; i++) {
        const json_t *v = json_object_get(in, lists[i]);
        if (v && !json_is_null(v) && !(json_is_array(v) && json_array_size(v) == 0))
            return i == 0 ? "tools: the agent's own tools run inside nexo; tools defined by the client "
                            "are not supported (leave tools out, or give the agent an MCP server)"
                          : "functions: the agent's own tools run inside nexo; functions defined by the "
                            "client are not supported (leave functions out)";
    }
    const json_t *choice = json_object_get(in, "tool_choice");
    const char *mode = json_string_value(choice);
    if (!choice || json_is_null(choice) || (mode && (!strcmp(mode, "auto") || !strcmp(mode, "none"))))
        return NULL;
    mode = json_string_value(json_object_get(choice, "type")); /* Anthropic's {"type": "auto"} */
    if (mode && (!strcmp(mode, "auto") || !strcmp(mode, "none")))
        return NULL;
    return "tool_choice: the agent decides which of its tools to call; only \"auto\" and \"none\" "
           "are accepted";
}

void api_push_message(json_t *messages, const char *role, json_t *blocks)
{
    size_t n = json_array_size(messages);
    json_t *last = n ? json_array_get(messages, n - 1) : NULL;
    const char *lrole = last ? json_string_value(json_object_get(last, "role")) : NULL;
    if (lrole && strcmp(lrole, role) == 0) {
        json_array_extend(json_object_get(last, "content"), blocks);
        json_decref(blocks);
        return;
    }
    json_array_append_new(messages, json_pack("{s:s, s:o}", "role", role, "content", blocks));
}

int api_status_for(enum api_flavor f, int rc, const struct nx_turn_result *res)
{
    const char *type = res && res->error_type ? res->error_type : "";
    if (strcmp(type, "budget_exceeded") == 0)
        return 429;
    if (rc == NX_ENOENT && !(res && res->http_status))
        return 404; /* no such agent (the provider's 404, a model it lacks, is the gateway's fault) */
    if (rc == NX_EBUSY)
        return 429;
    if (rc == NX_ECANCELED)
        return 409; /* interrupted by a newer message in the same session */
    /* a provider's rate limit, whatever its type says (OpenAI's: "requests", "tokens",
     * "insufficient_quota"): the client is to wait, not to retry at once as after a 502 */
    if (strcmp(type, "rate_limit_error") == 0 || (res && res->http_status == 429))
        return 429;
    /* the provider refused the request itself (a bad parameter the caller sent, a conversation
     * it will not take): the caller's mistake, not a gateway failure, and no retry mends it */
    if (strcmp(type, "invalid_request_error") == 0 && res &&
        (res->http_status == 400 || res->http_status == 422))
        return 400;
    if (strcmp(type, "request_too_large") == 0 || (res && res->http_status == 413))
        return 413;
    if (strcmp(type, "overloaded_error") == 0)
        return f == API_OPENAI ? 503 : 529;
    if (strcmp(type, "circuit_open") == 0)
        return 503; /* with retry-after: when the breaker lets a probe through */
    if (rc == NX_ETIMEDOUT)
        return 504;
    if (rc == NX_ERANGE || rc == NX_ECONFIG)
        return 500;
    return 502;
}

const char *api_error_type(enum api_flavor f, int status, const char *type)
{
    static const char *const own[] = {"circuit_open", "session_busy", "interrupted", "cancelled",
                                      "tool_iteration_limit", "configuration_error"};
    static const char *const openai_429[] = {"requests", "tokens", "insufficient_quota"};

    for (size_t i = 0; type && i < NX_ARRAY_LEN(own); i++)
        if (strcmp(type, own[i]) == 0)
            return type;
    if (f == API_OPENAI) {
        for (size_t i = 0; status == 429 && type && i < NX_ARRAY_LEN(openai_429); i++)
            if (strcmp(type, openai_429[i]) == 0)
                return type;
        return status == 429 ? "requests" : status >= 500 ? "server_error" : "invalid_request_error";
    }
    const char *t = nx_llm_error_type_for_status(status); /* Anthropic's */
    return t ? t : status >= 500 ? "api_error" : "invalid_request_error";
}

void api_error_headers(struct nx_http_req *req, int status, const struct nx_turn_result *res)
{
    char secs[16];

    if (res && res->retry_after_s && (status == 429 || status == 503 || status == 529)) {
        snprintf(secs, sizeof secs, "%u", (unsigned)res->retry_after_s);
        nx_http_req_add_header(req, "retry-after", secs);
    }
    /* The official SDKs retry 409 and 5xx by themselves: an interrupted turn, a request the
     * provider refused, an agent with no provider comes out the same the next time; and a turn
     * that reached its tool-iteration limit would run its tools (and their effects) again. */
    const char *type = res && res->error_type ? res->error_type : "";
    if (status == 400 || status == 409 || status == 413 || strcmp(type, "tool_iteration_limit") == 0 ||
        strcmp(type, "configuration_error") == 0)
        nx_http_req_add_header(req, "x-should-retry", "false");
}

void api_budget_headers(struct nx_http_req *req, const struct nx_turn_result *res)
{
    char secs[16];
    snprintf(secs, sizeof secs, "%u", (unsigned)res->retry_after_s);
    nx_http_req_add_header(req, "retry-after", secs);
    /* The official SDKs retry 429s unless told not to; waiting for tomorrow is not a retry. */
    nx_http_req_add_header(req, "x-should-retry", "false");
}

/* A streamed turn whose agent runs tools may go minutes without a word: the stream starts when
 * the first tool does (the model has answered, so the request was good), and a keep-alive goes
 * out every limits.stream_keepalive while it is open, so the client, and any proxy between,
 * knows the answer is coming (idle timeouts of 60 s are common). */
static void ka_tick(uv_timer_t *t)
{
    struct api_call *c = t->data;
    if (c->req && c->started)
        c->keepalive(c);
}

static void ka_closed(uv_handle_t *h)
{
    free(h);
}

void api_call_cleanup(struct api_call *c)
{
    if (!c->ka)
        return;
    uv_timer_stop(c->ka);
    uv_close((uv_handle_t *)c->ka, ka_closed);
    c->ka = NULL;
}

static void on_tool(const char *name, bool is_end, bool is_error, void *udata)
{
    struct api_call *c = udata;
    (void)name;
    (void)is_error;
    if (is_end || !c->req)
        return;
    c->begin(c);
    if (!c->ka) {
        c->ka = nx_malloc(sizeof *c->ka);
        uv_timer_init(nx_http_req_loop(c->req), c->ka);
        c->ka->data = c;
        uv_timer_start(c->ka, ka_tick, c->keepalive_ms, c->keepalive_ms);
    }
}

/* Both endpoints' common tail: session selection (only the last message is new in a session),
 * limits, the turn, and cancel-on-disconnect. Takes over `canon`. */
void api_start_turn(const struct api_ctx *ctx, struct api_call *c, json_t *canon,
                    const char *system, const char *user, json_int_t max_tokens,
                    const json_t *temperature,
                    void (*on_text)(const char *delta, size_t len, void *udata),
                    void (*on_done)(int rc, const struct nx_turn_result *res, void *udata),
                    void (*on_abort)(void *arg))
{
    c->keepalive_ms = ctx->keepalive_ms && *ctx->keepalive_ms ? *ctx->keepalive_ms : 15000;
    char *session = api_session_key(c->req, c->model, user);
    if (session) {
        json_t *last = json_incref(json_array_get(canon, json_array_size(canon) - 1));
        json_decref(canon);
        canon = json_pack("[o]", last);
    }
    struct nx_buf upstream_user = NX_BUF_INIT; /* (a long one shortened, as a session name is) */
    if (user && *user)
        put_session_name(&upstream_user, user, strlen(user));
    struct nx_turn_opts o = {
        .on_tool = c->stream && c->begin ? on_tool : NULL, /* (keep-alive every c->keepalive_ms) */
        .agent_id = c->model,
        .session_key = session,
        .channel = "http",
        .user = upstream_user.len ? nx_buf_cstr(&upstream_user) : NULL,
        .messages = canon,
        .system_extra = system && *system ? system : NULL,
        .max_tokens = max_tokens > 0 && max_tokens <= API_MAX_TOKENS ? (uint32_t)max_tokens : 0,
        .temperature = json_is_number(temperature) ? json_number_value(temperature) : -1,
        .stop = c->stop,
        .on_text = c->stream ? on_text : NULL,
        .on_done = on_done,
        .udata = c,
    };
    c->turn = nx_turn_start(ctx->agents, &o);
    json_decref(c->stop); /* the turn has its own copy */
    c->stop = NULL;
    nx_http_req_on_abort(c->req, on_abort, c);
    free(session);
    nx_buf_cleanup(&upstream_user);
    json_decref(canon);
}
