#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/alloc.h"
#include "core/error.h"
#include "llm/internal.h"
#include "llm/media.h"

/* The OpenAI Chat Completions request body: the canonical conversation (Anthropic's shape) as
 * Chat Completions messages (openai.c reads the answers). */

/* ---- request ----------------------------------------------------------------------------- */

/* tool_result content: a string or an array of blocks whose text is joined. */
static json_t *tool_result_text(const json_t *b)
{
    json_t *c = json_object_get(b, "content"), *part;
    struct nx_buf t = NX_BUF_INIT;
    json_t *out;
    size_t i;

    if (json_is_true(json_object_get(b, "is_error")))
        nx_buf_puts(&t, "Error: ");
    if (json_is_string(c)) {
        nx_buf_append(&t, json_string_value(c), json_string_length(c));
    } else if (json_is_array(c)) {
        json_array_foreach(c, i, part) {
            const char *text = nx_json_str(part, "text");
            if (!text)
                continue;
            if (t.len && t.data[t.len - 1] != ' ')
                nx_buf_putc(&t, '\n');
            nx_buf_puts(&t, text);
        }
    }
    out = json_stringn_nocheck(nx_buf_cstr(&t), t.len);
    nx_buf_cleanup(&t);
    return out;
}

static json_t *image_part(const json_t *b)
{
    json_t *src = json_object_get(b, "source");
    const char *type = nx_json_str(src, "type");
    struct nx_buf u = NX_BUF_INIT;
    json_t *out;

    if (type && !strcmp(type, "url") && nx_json_str(src, "url")) {
        nx_buf_puts(&u, nx_json_str(src, "url"));
    } else if (type && !strcmp(type, "base64") && nx_json_str(src, "data")) {
        const char *mt = nx_json_str(src, "media_type");
        nx_buf_printf(&u, "data:%s;base64,%s", mt ? mt : "image/png", nx_json_str(src, "data"));
    } else {
        return NULL;
    }
    out = json_pack("{s:s, s:{s:s}}", "type", "image_url", "image_url", "url", nx_buf_cstr(&u));
    nx_buf_cleanup(&u);
    return out;
}

static void add_user(json_t *msgs, const json_t *content)
{
    json_t *parts = json_array(), *b, *img, *keep = json_array();
    struct nx_buf text = NX_BUF_INIT;
    bool has_image = false;
    size_t i;

    /* tool results first: they must follow the assistant message that asked for them */
    json_array_foreach(content, i, b) {
        const char *type = nx_json_str(b, "type");
        if (type && !strcmp(type, "tool_result"))
            json_array_append_new(msgs, json_pack("{s:s, s:O, s:o}", "role", "tool", "tool_call_id",
                                                  json_object_get(b, "tool_use_id"), "content",
                                                  tool_result_text(b)));
    }
    json_array_foreach(content, i, b) {
        json_t *resolved = nx_llm_media_resolve(b); /* a file the user sent: its bytes, now */
        if (resolved) {
            json_array_append_new(keep, resolved);
            b = resolved;
        }
        const char *type = nx_json_str(b, "type"), *t = nx_json_str(b, "text");
        if (type && !strcmp(type, "text") && t) {
            if (text.len)
                nx_buf_putc(&text, '\n');
            nx_buf_puts(&text, t);
            json_array_append_new(parts, json_pack("{s:s, s:s}", "type", "text", "text", t));
        } else if (type && !strcmp(type, "image") && (img = image_part(b))) {
            has_image = true;
            json_array_append_new(parts, img);
        }
    }
    if (has_image)
        json_array_append_new(msgs, json_pack("{s:s, s:O}", "role", "user", "content", parts));
    else if (json_array_size(parts))
        json_array_append_new(msgs, json_pack("{s:s, s:o}", "role", "user", "content",
                                              json_stringn_nocheck(text.data, text.len)));
    json_decref(parts);
    json_decref(keep);
    nx_buf_cleanup(&text);
}

static void add_assistant(json_t *msgs, const json_t *content, bool with_reasoning)
{
    json_t *calls = json_array(), *b, *m;
    struct nx_buf text = NX_BUF_INIT;
    const char *reasoning = NULL;
    size_t i;

    json_array_foreach(content, i, b) {
        const char *type = nx_json_str(b, "type");
        if (!type)
            continue;
        if (!strcmp(type, "text") && nx_json_str(b, "text")) {
            nx_buf_puts(&text, nx_json_str(b, "text"));
        } else if (!strcmp(type, "reasoning")) {
            reasoning = nx_json_str(b, "text");
        } else if (!strcmp(type, "tool_use")) {
            const char *raw = nx_json_str(b, "input_raw");
            json_t *input = json_object_get(b, "input");
            char *args = raw || !json_is_object(input) ? NULL : json_dumps(input, JSON_COMPACT);
            json_array_append_new(calls, json_pack("{s:O, s:s, s:{s:O, s:s}}", "id",
                                                   json_object_get(b, "id"), "type", "function",
                                                   "function", "name", json_object_get(b, "name"),
                                                   "arguments", raw ? raw : args ? args : "{}"));
            free(args);
        }
    }
    m = json_pack("{s:s}", "role", "assistant");
    if (text.len || !json_array_size(calls))
        json_object_set_new(m, "content", json_stringn_nocheck(nx_buf_cstr(&text), text.len));
    else
        json_object_set_new(m, "content", json_null());
    if (json_array_size(calls))
        json_object_set(m, "tool_calls", calls);
    if (reasoning && with_reasoning && json_array_size(calls)) /* DeepSeek's thinking mode refuses */
        json_object_set_new(m, "reasoning_content", json_string(reasoning));
    json_array_append_new(msgs, m);
    json_decref(calls);
    nx_buf_cleanup(&text);
}

/* Canonical tools as Chat Completions functions. New reference. */
static json_t *encode_tools(const json_t *canon)
{
    json_t *tools = json_array(), *v;
    size_t i;

    json_array_foreach(canon, i, v) {
        json_t *fn = json_object(), *schema = json_object_get(v, "input_schema");
        json_object_set(fn, "name", json_object_get(v, "name"));
        if (json_is_string(json_object_get(v, "description")))
            json_object_set(fn, "description", json_object_get(v, "description"));
        json_object_set_new(fn, "parameters", json_is_object(schema)
                                                  ? json_incref(schema)
                                                  : json_pack("{s:s}", "type", "object"));
        json_array_append_new(tools, json_pack("{s:s, s:o}", "type", "function", "function", fn));
    }
    return tools;
}

/* The wire messages of one canonical message, encoded and joined by ',' ("" when none). */
/* The common messages written straight, as add_user and add_assistant would encode them (the
 * same bytes: nx_buf_put_json_str escapes as jansson does): string content, or text blocks only,
 * a user's joined by newlines, an assistant's run together with its reasoning left out. False
 * for any other message. Most of a turn's new messages are such, and the tree that jansson
 * builds and dumps for one was 20 allocations. */
static bool encode_plain(const char *role, const json_t *content, struct nx_buf *out)
{
    bool is_user = !strcmp(role, "user");
    const json_t *b, *only = NULL;
    size_t i, ntext = 0;

    if (json_is_array(content)) {
        json_array_foreach(content, i, b) {
            const char *type = nx_json_str(b, "type");
            if (!type || !json_is_string(json_object_get(b, "text")))
                return false;
            if (!strcmp(type, "text"))
                only = ntext++ ? NULL : b;
            else if (is_user || strcmp(type, "reasoning") != 0)
                return false;
        }
        if (is_user && !ntext)
            return false; /* (encodes to nothing) */
    }
    nx_buf_puts(out, is_user ? "{\"role\":\"user\",\"content\":" : "{\"role\":\"assistant\",\"content\":");
    if (json_is_string(content)) {
        nx_buf_put_json_str(out, json_string_value(content), json_string_length(content));
    } else if (only || !ntext) {
        const char *t = only ? nx_json_str(only, "text") : "";
        nx_buf_put_json_str(out, t, strlen(t));
    } else {
        struct nx_buf text = NX_BUF_INIT;
        json_array_foreach(content, i, b) {
            if (strcmp(nx_json_str(b, "type"), "text") != 0)
                continue;
            if (is_user && text.len)
                nx_buf_putc(&text, '\n');
            nx_buf_puts(&text, nx_json_str(b, "text"));
        }
        nx_buf_put_json_str(out, text.data ? text.data : "", text.len);
        nx_buf_cleanup(&text);
    }
    nx_buf_putc(out, '}');
    return true;
}

static void encode_message(const char *role, const json_t *content, bool with_reasoning, struct nx_buf *out)
{
    json_t *msgs, *w;
    size_t i;

    if (nx_openai_fast_enabled && encode_plain(role, content, out))
        return;
    msgs = json_array();

    if (json_is_string(content))
        json_array_append_new(msgs, json_pack("{s:s, s:O}", "role", role, "content", content));
    else if (!strcmp(role, "user"))
        add_user(msgs, content);
    else
        add_assistant(msgs, content, with_reasoning);
    json_array_foreach(msgs, i, w) {
        char *s = json_dumps(w, JSON_COMPACT);
        NX_ASSERT(s);
        if (i)
            nx_buf_putc(out, ',');
        nx_buf_puts(out, s);
        free(s);
    }
    json_decref(msgs);
}

static const char *encode_one(const json_t *m, struct nx_buf *out, void *arg)
{
    const char *role = nx_json_str(m, "role");
    json_t *content = json_object_get(m, "content");
    if (!role || (strcmp(role, "user") != 0 && strcmp(role, "assistant") != 0))
        return "every message needs the role user or assistant";
    if (!json_is_string(content) && !json_is_array(content))
        return "message content must be a string or an array of blocks";
    encode_message(role, content, *(const bool *)arg, out);
    return NULL;
}

/* The body is assembled as text: {"model":...,"messages":[...],<the rest>}, where each message's
 * part comes from the fragment cache when the request allows it. */
/* The request's own strings go into the body as they are: reject what JSON cannot carry. */
static bool is_json_text(const char *s)
{
    return nx_utf8_is_valid(s, strlen(s));
}

/* OpenAI's reasoning models by name: o1, o3, o4-mini, gpt-5 and what follows them; they take
 * max_completion_tokens only. gpt-5-chat (ChatGPT's model) does not reason: it keeps its temperature. */
static bool is_openai_reasoner(const char *model)
{
    return model && ((model[0] == 'o' && model[1] >= '1' && model[1] <= '9') ||
                     strncmp(model, "gpt-5", 5) == 0);
}

static bool takes_temperature(const char *model)
{
    return !is_openai_reasoner(model) || strncmp(model, "gpt-5-chat", 10) == 0;
}

int nx_openai_build_body(const struct nx_llm_request *req, struct nx_buf *out, const char **why)
{
    char *text = NULL;
    size_t start = out->len;
    int rc = NX_EINVAL;

    /* Written by hand, not through a json_t: this runs for every model call. */
    if (!req->model || !*req->model || !is_json_text(req->model)) {
        *why = "a model is required (valid UTF-8)";
        goto out;
    }
    nx_buf_puts(out, "{\"model\":");
    nx_buf_put_json_str(out, req->model, strlen(req->model));
    nx_buf_puts(out, ",\"messages\":[");
    if (!json_is_array(req->messages) || json_array_size(req->messages) == 0) {
        *why = "messages must be a non-empty array";
        goto out;
    }
    if (req->system && *req->system) {
        if (!is_json_text(req->system)) {
            *why = "the system prompt is not valid UTF-8";
            goto out;
        }
        nx_buf_puts(out, "{\"role\":\"system\",\"content\":");
        nx_buf_put_json_str(out, req->system, strlen(req->system));
        nx_buf_puts(out, "},");
    }
    /* reasoning goes back to DeepSeek only (Groq, Cerebras refuse the field): its messages are
     * remembered apart (scanning each message for reasoning cost a fifth of a turn) */
    bool with_reasoning = req->model && strncasecmp(req->model, "deepseek", 8) == 0;
    if ((*why = nx_llm_put_messages(req, with_reasoning ? NX_FRAG_OPENAI_DEEPSEEK : NX_FRAG_OPENAI,
                                    encode_one, &with_reasoning, out)))
        goto out;
    if (out->data[out->len - 1] == ',') /* (after the last message) */
        out->len--;
    nx_buf_putc(out, ']');
    if (json_is_array(req->tools) && json_array_size(req->tools) > 0) {
        /* the agent passes the same manifest object every turn: encoded once */
        size_t len = 0;
        const char *part = nx_llm_frag_get(NX_FRAG_OPENAI_TOOLS, req->tools, &len);
        if (!part) {
            json_t *tools = encode_tools(req->tools);
            text = json_dumps(tools, JSON_COMPACT);
            json_decref(tools);
            NX_ASSERT(text);
            nx_llm_frag_put(NX_FRAG_OPENAI_TOOLS, req->tools, text, strlen(text));
            part = nx_llm_frag_get(NX_FRAG_OPENAI_TOOLS, req->tools, &len);
            if (!part) { /* too big to keep */
                part = text;
                len = strlen(text);
            }
        }
        nx_buf_puts(out, ",\"tools\":");
        nx_buf_append(out, part, len);
        free(text);
        text = NULL;
    }
    /* OpenAI's reasoning models refuse max_tokens (deprecated there) and any temperature but
     * the default; other servers (Ollama, vLLM, DeepSeek) know max_tokens only */
    bool is_reasoner = is_openai_reasoner(req->model);
    nx_buf_printf(out, is_reasoner ? ",\"max_completion_tokens\":%lld" : ",\"max_tokens\":%lld",
                  (long long)(req->max_tokens ? req->max_tokens : 4096));
    if (req->temperature >= 0 && takes_temperature(req->model))
        nx_buf_printf(out, ",\"temperature\":%.17g", (double)req->temperature);
    if (json_array_size(req->stop)) { /* the Chat Completions API takes at most 4 */
        nx_buf_puts(out, ",\"stop\":[");
        for (size_t k = 0; k < json_array_size(req->stop) && k < 4; k++) {
            const json_t *v = json_array_get(req->stop, k);
            if (k)
                nx_buf_putc(out, ',');
            nx_buf_put_json_str(out, json_string_value(v), json_string_length(v));
        }
        nx_buf_putc(out, ']');
    }
    if (req->stream)
        nx_buf_puts(out, ",\"stream\":true");
    if (req->stream && !req->is_stream_bare)
        nx_buf_puts(out, ",\"stream_options\":{\"include_usage\":true}");
    if (req->user && *req->user && is_json_text(req->user)) {
        nx_buf_puts(out, ",\"user\":");
        nx_buf_put_json_str(out, req->user, strlen(req->user));
    }
    nx_buf_putc(out, '}');
    rc = 0;
out:
    if (rc < 0) {
        out->len = start;
        if (out->data)
            out->data[start] = '\0';
    }
    free(text);
    return rc;
}
