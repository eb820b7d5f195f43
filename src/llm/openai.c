#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/alloc.h"
#include "core/error.h"
#include "http/sse.h"
#include "llm/internal.h"

/* The OpenAI Chat Completions wire format (POST {base_url}/chat/completions), spoken by OpenAI
 * and by DeepSeek, MiniMax, Ollama, vLLM, OpenRouter and Gemini's compatible endpoint. The
 * canonical conversation (Anthropic's shape) is translated both ways here. */

static size_t auth_headers(const char *api_key, struct nx_http_header *out, size_t max,
                           struct nx_buf *scratch)
{
    if (!api_key || !*api_key || max < 1)
        return 0; /* Ollama, vLLM: no key, no header */
    nx_buf_reset(scratch);
    nx_buf_printf(scratch, "Bearer %s", api_key);
    out[0] = (struct nx_http_header){"authorization", scratch->data};
    return 1;
}

/* ---- response ---------------------------------------------------------------------------- */

/* OpenAI counts cached tokens inside prompt_tokens; the canonical input_tokens (Anthropic's
 * meaning) does not. */
static void read_usage(const json_t *u, struct nx_llm_usage *out)
{
    uint64_t prompt, cached;

    if (!json_is_object(u))
        return;
    prompt = nx_json_u64(u, "prompt_tokens");
    cached = nx_json_u64(json_object_get(u, "prompt_tokens_details"), "cached_tokens");
    if (!cached) /* DeepSeek's name for them */
        cached = nx_json_u64(u, "prompt_cache_hit_tokens");
    if (cached > prompt)
        cached = prompt;
    out->input_tokens = prompt - cached;
    out->cache_read_tokens = cached;
    out->output_tokens = nx_json_u64(u, "completion_tokens");
}

/* An id for a tool call that came without one (some local servers send none): unique in the
 * session's history, across rounds and restarts, so that a result is never matched to a call of
 * another round. */
static void made_up_id(char *buf, size_t len, size_t i)
{
    static uint64_t seq;
    snprintf(buf, len, "call_%llx%llx_%zu", (unsigned long long)time(NULL), (unsigned long long)++seq, i);
}

/* The model's reasoning in a message or delta as DeepSeek names it (reasoning_content), NULL
 * when none. Kept with an answer that calls tools, for DeepSeek's thinking mode, which refuses a
 * later request whose tool-call message lacks it. Not the `reasoning` of Groq, Cerebras or
 * OpenRouter: sent back as reasoning_content, Groq and Cerebras refuse the request. */
static const char *reasoning_of(const json_t *m)
{
    return nx_json_str(m, "reasoning_content");
}

/* A canonical tool_use block from an id, a name and the arguments as the model sent them. */
static json_t *tool_use_block(const char *id, const char *name, const char *args, size_t len)
{
    json_t *b = json_pack("{s:s, s:s, s:s}", "type", "tool_use", "id", id, "name", name), *input;
    json_error_t err;

    while (len && (*args == ' ' || *args == '\n' || *args == '\t' || *args == '\r'))
        args++, len--;
    if (len == 0) {
        json_object_set_new(b, "input", json_object());
        return b;
    }
    input = json_loadb(args, len, JSON_DECODE_ANY, &err);
    if (json_is_object(input) || json_is_null(input)) { /* "null": no arguments, as "" */
        json_object_set_new(b, "input", json_is_null(input) ? json_object() : input);
        return b;
    }
    json_object_set_new(b, "input", json_object());
    json_object_set_new(b, "input_error", nx_llm_input_error(input, &err));
    json_object_set_new(b, "input_raw", json_stringn_nocheck(args, len));
    json_decref(input);
    return b;
}

/* The error type that says what an HTTP status says (nx_llm_classify reads it back). */
static const char *type_of_status(long status, char *buf, size_t len)
{
    const char *t = nx_llm_error_type_for_status(status);
    if (t)
        return t;
    snprintf(buf, len, "http_%ld", status);
    return status ? buf : "api_error";
}

static void read_error_object(const json_t *root, long status, struct nx_llm_resp *out)
{
    json_t *e = json_object_get(root, "error"), *ncode = json_object_get(e, "code");
    const char *type = nx_json_str(e, "type"), *msg = nx_json_str(e, "message");
    const char *code = nx_json_str(e, "code");
    char deftype[32];

    if (json_is_string(e))
        msg = json_string_value(e); /* Ollama: {"error": "..."} */
    if (!msg)
        msg = nx_json_str(root, "message");
    if (!type || !*type)
        type = code;
    /* an error in a stream that began as 200 (OpenRouter, vLLM): its numeric code is the status
     * it would have had, and says more than a server's own type names ("InternalServerError") */
    if ((status == 0 || status == 200) && json_is_integer(ncode) && json_integer_value(ncode) >= 400 &&
        json_integer_value(ncode) <= 599)
        type = type_of_status((long)json_integer_value(ncode), deftype, sizeof deftype);
    if (!type && (status == 0 || status == 200))
        type = "api_error";
    else if (!type)
        type = type_of_status(status, deftype, sizeof deftype);
    nx_llm_resp_set_error(out, type, "%s", msg ? msg : "(no message)");
}

int nx_openai_parse_response(const char *body, size_t len, struct nx_llm_resp *out)
{
    json_t *root = json_loadb(body ? body : "", len, 0, NULL), *choice, *msg, *calls, *tc, *content;
    const char *text, *model;
    int rc = NX_EPROTO;
    size_t i;

    if (json_object_get(root, "error") && !json_is_null(json_object_get(root, "error"))) {
        read_error_object(root, 0, out);
        goto out;
    }
    choice = json_array_get(json_object_get(root, "choices"), 0);
    msg = json_object_get(choice, "message");
    if (!json_is_object(msg)) {
        nx_llm_resp_set_error(out, "invalid_response", "the answer has no choices[0].message");
        goto out;
    }
    content = json_array();
    if (json_array_size(json_object_get(msg, "tool_calls")) && (text = reasoning_of(msg)) && *text)
        json_array_append_new(content, json_pack("{s:s, s:s}", "type", "reasoning", "text", text));
    if ((text = nx_json_str(msg, "content")) && *text)
        json_array_append_new(content, json_pack("{s:s, s:s}", "type", "text", "text", text));
    else if ((text = nx_json_str(msg, "refusal")) && *text)
        json_array_append_new(content, json_pack("{s:s, s:s}", "type", "text", "text", text));
    calls = json_object_get(msg, "tool_calls");
    json_array_foreach(calls, i, tc) {
        json_t *fn = json_object_get(tc, "function"), *args = json_object_get(fn, "arguments");
        const char *name = nx_json_str(fn, "name"), *id = nx_json_str(tc, "id");
        char idbuf[64];
        char *dumped = NULL;
        if (!name || !*name || i >= NX_LLM_MAX_BLOCKS) {
            json_decref(content);
            nx_llm_resp_set_error(out, "invalid_response", "tool call %zu has no function name", i);
            goto out;
        }
        if (!id) {
            made_up_id(idbuf, sizeof idbuf, i);
            id = idbuf;
        }
        if (json_is_object(args)) /* a few servers send an object, not a string */
            dumped = json_dumps(args, JSON_COMPACT);
        text = dumped ? dumped : json_is_string(args) ? json_string_value(args) : "";
        json_array_append_new(content, tool_use_block(id, name, text,
                                                      dumped ? strlen(dumped)
                                                      : json_is_string(args) ? json_string_length(args)
                                                                             : 0));
        free(dumped);
    }
    json_decref(out->message);
    out->message = json_pack("{s:s, s:o}", "role", "assistant", "content", content);
    out->stop = nx_llm_stop_from_openai(nx_json_str(choice, "finish_reason"));
    if (json_array_size(calls) && (out->stop == NX_LLM_STOP_END_TURN || out->stop == NX_LLM_STOP_OTHER))
        out->stop = NX_LLM_STOP_TOOL_USE; /* servers that say "stop" (or eos_token: TGI) after tool calls */
    read_usage(json_object_get(root, "usage"), &out->usage);
    if ((model = nx_json_str(root, "model"))) {
        free(out->model);
        out->model = nx_strdup(model);
    }
    rc = 0;
out:
    json_decref(root);
    return rc;
}

void nx_openai_parse_error(long status, const char *body, size_t len, struct nx_llm_resp *out)
{
    json_t *root = json_loadb(body ? body : "", len, 0, NULL);
    const json_t *obj = json_is_array(root) ? json_array_get(root, 0) : root; /* Gemini's: [{...}] */

    read_error_object(json_is_object(obj) ? obj : NULL, status, out);
    json_decref(root);
}

/* ---- streaming ------------------------------------------------------------------------- */

struct tcall {
    struct nx_buf id;
    struct nx_buf name;
    struct nx_buf args;
    bool used;
    long index;  /* the stream's index for it, or -1 when the provider sends none */
};

#define NX_OPENAI_REASONING_MAX (1024 * 1024) /* kept of one answer's reasoning */

struct nx_openai_stream {
    struct nx_sse_reader sse;
    nx_llm_text_fn on_text;
    void *udata;
    struct nx_llm_resp resp;
    struct nx_buf text;
    struct nx_buf reasoning; /* reasoning_content deltas (DeepSeek) */
    struct tcall *calls;
    size_t ncalls;
    size_t nevents; /* every event counts: keep-alives come as comments */
    bool got_finish;
    bool done;     /* [DONE] */
    int err;       /* sticky */
};

static int fail(struct nx_openai_stream *s, const char *what)
{
    nx_llm_resp_set_error(&s->resp, "invalid_response", "malformed stream: %s", what);
    return s->err = NX_EPROTO;
}

static struct tcall *new_call(struct nx_openai_stream *s, long index)
{
    struct tcall *c;

    s->calls = nx_realloc(s->calls, (s->ncalls + 1) * sizeof *s->calls);
    c = &s->calls[s->ncalls++];
    memset(c, 0, sizeof *c);
    c->index = index;
    return c;
}

/* The call a delta continues, or a new one. Calls are kept in the order they began. OpenAI
 * numbers them (`index`); a new `id` at an index already in use starts another call (providers
 * that number every call 0); a delta without an index (Gemini's endpoint) continues the call
 * with its id, or the last call when it has none (unless it names a function anew). */
static struct tcall *call_for(struct nx_openai_stream *s, const json_t *idx, const char *id,
                              const char *name)
{
    bool has_id = id && *id;

    if (json_is_integer(idx)) {
        long k = (long)json_integer_value(idx);
        for (size_t i = s->ncalls; i > 0; i--) {
            struct tcall *c = &s->calls[i - 1];
            if (c->index != k)
                continue;
            if (has_id && c->id.len && strcmp(nx_buf_cstr(&c->id), id) != 0)
                break; /* another call at the same index */
            return c;
        }
        return new_call(s, k);
    }
    if (has_id) {
        for (size_t i = 0; i < s->ncalls; i++) {
            if (s->calls[i].id.len && strcmp(nx_buf_cstr(&s->calls[i].id), id) == 0)
                return &s->calls[i];
        }
        return new_call(s, -1);
    }
    if (s->ncalls && !(name && *name && s->calls[s->ncalls - 1].name.len))
        return &s->calls[s->ncalls - 1];
    return new_call(s, -1); /* the first, or one that names its function anew */
}

static int on_tool_delta(struct nx_openai_stream *s, const json_t *d)
{
    json_t *idx = json_object_get(d, "index"), *fn = json_object_get(d, "function");
    const char *v, *id = nx_json_str(d, "id");
    struct tcall *c;

    if (idx && !json_is_null(idx) &&
        (!json_is_integer(idx) || json_integer_value(idx) < 0 ||
         json_integer_value(idx) >= NX_LLM_MAX_BLOCKS))
        return fail(s, "a tool call delta with an invalid index");
    c = call_for(s, idx, id, nx_json_str(fn, "name"));
    if (s->ncalls > NX_LLM_MAX_BLOCKS)
        return fail(s, "too many tool calls");
    c->used = true;
    if (id && *id) {
        nx_buf_reset(&c->id);
        nx_buf_puts(&c->id, id);
    }
    if ((v = nx_json_str(fn, "name")) && *v && c->name.len == 0)
        nx_buf_puts(&c->name, v);
    if ((v = nx_json_str(fn, "arguments"))) {
        nx_buf_puts(&c->args, v);
    } else if (json_is_object(json_object_get(fn, "arguments"))) { /* (an object, not a string) */
        char *dumped = json_dumps(json_object_get(fn, "arguments"), JSON_COMPACT);
        nx_buf_puts(&c->args, dumped ? dumped : "");
        free(dumped);
    }
    return 0;
}

/* The common chunk (openai_fast.c), applied as the jansson path below would. */
static bool fast_event(struct nx_openai_stream *s, const char *data, size_t len)
{
    struct nx_openai_fast f;

    if (!nx_openai_fast_chunk(data, len, &f))
        return false;
    if (f.model && !s->resp.model)
        s->resp.model = nx_strndup(f.model, f.model_len);
    if (f.content && f.content_len) {
        size_t at = s->text.len;
        if (f.content_esc)
            nx_json_unescape_plain(f.content, f.content_len, &s->text);
        else
            nx_buf_append(&s->text, f.content, f.content_len);
        s->on_text(s->text.data + at, s->text.len - at, s->udata);
    }
    if (f.has_usage) { /* as read_usage */
        uint64_t prompt = f.prompt_tokens > 0 ? (uint64_t)f.prompt_tokens : 0;
        uint64_t cached = f.cached_tokens > 0 ? (uint64_t)f.cached_tokens : 0;
        if (!cached)
            cached = f.cache_hit_tokens > 0 ? (uint64_t)f.cache_hit_tokens : 0;
        if (cached > prompt)
            cached = prompt;
        s->resp.usage.input_tokens = prompt - cached;
        s->resp.usage.cache_read_tokens = cached;
        s->resp.usage.output_tokens = f.completion_tokens > 0 ? (uint64_t)f.completion_tokens : 0;
    }
    if (f.finish && f.finish_len) {
        char *v = nx_strndup(f.finish, f.finish_len);
        s->resp.stop = nx_llm_stop_from_openai(v);
        s->got_finish = true;
        free(v);
    }
    return true;
}

static int on_event(const struct nx_sse_event *sse, void *udata)
{
    struct nx_openai_stream *s = udata;
    json_t *ev, *choices, *ch, *d, *e;
    const char *v;
    size_t i, j;
    int rc = 0;

    s->nevents++;
    if (s->done)
        return 0;
    if (sse->data_len == 6 && !memcmp(sse->data, "[DONE]", 6)) {
        s->done = true;
        return 0;
    }
    if (nx_openai_fast_enabled && fast_event(s, sse->data, sse->data_len))
        return 0;
    if (!(ev = json_loadb(sse->data, sse->data_len, 0, NULL)) || !json_is_object(ev)) {
        json_decref(ev);
        return fail(s, "a chunk that is not a JSON object");
    }
    if ((e = json_object_get(ev, "error")) && !json_is_null(e)) {
        read_error_object(ev, 0, &s->resp);
        json_decref(ev);
        return s->err = NX_EPROTO;
    }
    if ((v = nx_json_str(ev, "model")) && !s->resp.model)
        s->resp.model = nx_strdup(v);
    read_usage(json_object_get(ev, "usage"), &s->resp.usage);
    choices = json_object_get(ev, "choices");
    json_array_foreach(choices, i, ch) {
        json_t *idx = json_object_get(ch, "index"), *calls, *tc;
        if (json_is_integer(idx) && json_integer_value(idx) != 0)
            continue; /* n > 1 is not used: only the first choice counts */
        d = json_object_get(ch, "delta");
        if (((v = nx_json_str(d, "content")) && *v) || ((v = nx_json_str(d, "refusal")) && *v)) {
            nx_buf_puts(&s->text, v);
            s->on_text(v, strlen(v), s->udata);
        }
        if ((v = reasoning_of(d)) && *v && s->reasoning.len < NX_OPENAI_REASONING_MAX)
            nx_buf_puts(&s->reasoning, v);
        calls = json_object_get(d, "tool_calls");
        json_array_foreach(calls, j, tc) {
            if ((rc = on_tool_delta(s, tc)) < 0)
                goto out;
        }
        if ((v = nx_json_str(ch, "finish_reason")) && *v) { /* (older Ollama: "" in every chunk) */
            s->resp.stop = nx_llm_stop_from_openai(v);
            s->got_finish = true;
        }
    }
out:
    json_decref(ev);
    return rc;
}

struct nx_openai_stream *nx_openai_stream_new(nx_llm_text_fn on_text, void *udata)
{
    struct nx_openai_stream *s = nx_calloc(1, sizeof *s);

    nx_sse_reader_init(&s->sse, 0, on_event, s);
    s->on_text = on_text;
    s->udata = udata;
    s->resp.stop = NX_LLM_STOP_OTHER;
    return s;
}

int nx_openai_stream_feed(struct nx_openai_stream *s, const char *data, size_t len)
{
    int rc;

    if (s->err)
        return s->err;
    rc = nx_sse_feed(&s->sse, data, len);
    if (rc == NX_ETOOBIG)
        return fail(s, "a chunk larger than the cap");
    return rc < 0 ? rc : s->done ? 1 : 0;
}

int nx_openai_stream_finish(struct nx_openai_stream *s, struct nx_llm_resp *out)
{
    json_t *content;
    bool has_calls = false;
    int rc = s->err;

    if (!rc && !s->done && !s->got_finish)
        rc = fail(s, "the stream ended before [DONE]");
    if (!rc) {
        content = json_array();
        if (s->text.len)
            json_array_append_new(content, json_pack("{s:s, s:o}", "type", "text", "text",
                                                     json_stringn_nocheck(s->text.data, s->text.len)));
        for (size_t i = 0; i < s->ncalls && !rc; i++) {
            struct tcall *c = &s->calls[i];
            char idbuf[64];
            if (!c->used)
                continue;
            if (!c->name.len) {
                rc = fail(s, "a tool call without a function name");
                break;
            }
            if (!c->id.len)
                made_up_id(idbuf, sizeof idbuf, i);
            json_array_append_new(content, tool_use_block(c->id.len ? c->id.data : idbuf, c->name.data,
                                                          nx_buf_cstr(&c->args), c->args.len));
            has_calls = true;
        }
        if (has_calls && s->reasoning.len && nx_utf8_is_valid(s->reasoning.data, s->reasoning.len))
            json_array_insert_new(content, 0, json_pack("{s:s, s:s%}", "type", "reasoning", "text",
                                                        s->reasoning.data, s->reasoning.len));
        if (rc)
            json_decref(content);
        else
            s->resp.message = json_pack("{s:s, s:o}", "role", "assistant", "content", content);
        if (has_calls && (s->resp.stop == NX_LLM_STOP_END_TURN || s->resp.stop == NX_LLM_STOP_OTHER))
            s->resp.stop = NX_LLM_STOP_TOOL_USE;
    }
    nx_llm_resp_cleanup(out);
    *out = s->resp;
    memset(&s->resp, 0, sizeof s->resp);
    if (rc) {
        json_decref(out->message);
        out->message = NULL;
    }
    return rc;
}

size_t nx_openai_stream_events(const struct nx_openai_stream *s)
{
    return s->nevents;
}

void nx_openai_stream_free(struct nx_openai_stream *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->ncalls; i++) {
        nx_buf_cleanup(&s->calls[i].id);
        nx_buf_cleanup(&s->calls[i].name);
        nx_buf_cleanup(&s->calls[i].args);
    }
    free(s->calls);
    nx_buf_cleanup(&s->text);
    nx_buf_cleanup(&s->reasoning);
    nx_sse_reader_cleanup(&s->sse);
    nx_llm_resp_cleanup(&s->resp);
    free(s);
}

/* ---- the table ------------------------------------------------------------------------- */

NX_LLM_WIRE_STREAM_ADAPTERS(openai)

const struct nx_llm_wire nx_openai_wire = {
    .default_base_url = "https://api.openai.com/v1",
    .path = "/chat/completions",
    .build_body = nx_openai_build_body,
    .auth_headers = auth_headers,
    .parse_response = nx_openai_parse_response,
    .parse_error = nx_openai_parse_error,
    .stream_new = openai_stream_new_any,
    .stream_feed = openai_stream_feed_any,
    .stream_events = openai_stream_events_any,
    .stream_finish = openai_stream_finish_any,
    .stream_free = openai_stream_free_any,
};

static struct nx_llm_call *start(struct nx_llm_provider *p, const struct nx_llm_request *req,
                                 const struct nx_llm_callbacks *cb)
{
    return nx_llm_call_start(p, &nx_openai_wire, req, cb, 0);
}

const struct nx_llm_type nx_llm_openai = {
    .kind = "openai",
    .start = start,
    .cancel = nx_llm_call_cancel,
};
