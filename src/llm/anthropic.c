#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/error.h"
#include "http/sse.h"
#include "llm/internal.h"
#include "llm/media.h"

/* The Anthropic Messages API (POST /v1/messages). The canonical conversation form is already
 * Anthropic's, so the request is mostly a copy; prompt caching marks the system prompt and the
 * tool list (cache_control on the last block of each), which caches the whole prefix. */

#define ANTHROPIC_VERSION "2023-06-01"

/* ---- request ----------------------------------------------------------------------------- */

static json_t *ephemeral(void)
{
    return json_pack("{s:s}", "type", "ephemeral");
}

/* Copies a message keeping what the API accepts: tool_result blocks first, tool_use blocks lose
 * input_raw/input_error (see llm.h), text blocks with no text but white space go (the API
 * refuses them: "text content blocks must contain non-whitespace text"; OpenAI's clients send
 * "" freely), an OpenAI-compatible model's reasoning goes, everything else goes as is (a
 * message of blank text only stays whole: dropping it could put two messages of one role side
 * by side; the API refuses it as before). */
static json_t *clean_message(json_t *m)
{
    json_t *content = json_object_get(m, "content");
    json_t *out = json_object(), *blocks;
    size_t i;
    json_t *b;

    json_object_set(out, "role", json_object_get(m, "role"));
    if (!json_is_array(content)) {
        if (content)
            json_object_set(out, "content", content);
        return out;
    }
    blocks = json_array();
    size_t nresults = 0; /* tool_result blocks go first: the API refuses text before them */
    json_array_foreach(content, i, b) {
        const char *type = nx_json_str(b, "type"), *text = nx_json_str(b, "text");
        if (type && !strcmp(type, "tool_result")) {
            json_array_insert(blocks, nresults++, b);
        } else if (type && !strcmp(type, "tool_use")) {
            json_t *tu = json_object(), *input = json_object_get(b, "input"), *cc;
            json_object_set_new(tu, "type", json_string("tool_use"));
            json_object_set(tu, "id", json_object_get(b, "id"));
            json_object_set(tu, "name", json_object_get(b, "name"));
            json_object_set_new(tu, "input", json_is_object(input) ? json_incref(input) : json_object());
            if ((cc = json_object_get(b, "cache_control")))
                json_object_set(tu, "cache_control", cc);
            json_array_append_new(blocks, tu);
        } else if (type && ((!strcmp(type, "text") && text && nx_str_is_blank(text)) ||
                            !strcmp(type, "reasoning"))) { /* (an OpenAI-compatible model's) */
            continue;
        } else {
            json_t *img = nx_llm_media_resolve(b); /* a file the user sent: its bytes, now */
            if (img)
                json_array_append_new(blocks, img);
            else
                json_array_append(blocks, b);
        }
    }
    if (json_array_size(content) && !json_array_size(blocks)) /* all blank: as it is, to be refused */
        json_array_extend(blocks, content);
    json_object_set_new(out, "content", blocks);
    return out;
}

static const char *encode_one(const json_t *m, struct nx_buf *out, void *arg)
{
    (void)arg;
    if (!json_is_object(m))
        return "every message must be an object";
    json_t *c = clean_message((json_t *)m); /* (not changed: its parts are shared) */
    char *enc = json_dumps(c, JSON_COMPACT);
    json_decref(c);
    NX_ASSERT(enc);
    nx_buf_puts(out, enc);
    free(enc);
    return NULL;
}

int nx_anthropic_build_body(const struct nx_llm_request *req, struct nx_buf *out, const char **why)
{
    json_t *body = json_object(), *arr, *v;
    struct nx_buf msgs = NX_BUF_INIT;
    const char *tools_part = NULL;
    char *tools_text = NULL;
    size_t i, n, tools_len = 0;
    char *text = NULL;
    int rc = NX_EINVAL;

    if (!req->model || !*req->model) {
        *why = "a model is required";
        goto out;
    }
    if (!json_is_array(req->messages) || json_array_size(req->messages) == 0) {
        *why = "messages must be a non-empty array";
        goto out;
    }
    if (!(v = json_string(req->model))) {
        *why = "the model name is not valid UTF-8";
        goto out;
    }
    json_object_set_new(body, "model", v);
    json_object_set_new(body, "max_tokens", json_integer(req->max_tokens ? req->max_tokens : 4096));
    if (req->system && *req->system) {
        if (!(v = json_string(req->system))) {
            *why = "the system prompt is not valid UTF-8";
            goto out;
        }
        json_object_set_new(body, "system",
                            json_pack("[{s:s, s:o, s:o}]", "type", "text", "text", v,
                                      "cache_control", ephemeral()));
    }
    /* messages: each one's encoding from the session's run or the fragment cache when the
     * request allows it */
    if ((*why = nx_llm_put_messages(req, NX_FRAG_ANTHROPIC, encode_one, NULL, &msgs)))
        goto out;
    if (msgs.len) /* (the comma after the last message) */
        msgs.len--;
    /* tools: the agent passes the same manifest object every turn, so it is encoded once. Looked
     * up after the messages: a put of theirs may start the memo over, freeing its texts */
    if (json_is_array(req->tools) && json_array_size(req->tools) > 0 &&
        (tools_part = nx_llm_frag_get(NX_FRAG_ANTHROPIC_TOOLS, req->tools, &tools_len))) {
        /* spliced in below */
    } else if (json_is_array(req->tools) && (n = json_array_size(req->tools)) > 0) {
        arr = json_array();
        json_array_foreach(req->tools, i, v) {
            json_t *t = json_object(), *schema = json_object_get(v, "input_schema");
            json_object_set(t, "name", json_object_get(v, "name"));
            if (json_is_string(json_object_get(v, "description")))
                json_object_set(t, "description", json_object_get(v, "description"));
            json_object_set_new(t, "input_schema",
                                json_is_object(schema) ? json_incref(schema)
                                                       : json_pack("{s:s}", "type", "object"));
            if (i == n - 1)
                json_object_set_new(t, "cache_control", ephemeral());
            json_array_append_new(arr, t);
        }
        tools_text = json_dumps(arr, JSON_COMPACT);
        json_decref(arr);
        NX_ASSERT(tools_text);
        tools_part = tools_text;
        tools_len = strlen(tools_text);
        nx_llm_frag_put(NX_FRAG_ANTHROPIC_TOOLS, req->tools, tools_text, tools_len);
    }
    if (req->stream)
        json_object_set_new(body, "stream", json_true());
    /* OpenAI's range is 0..2 and an OpenAI client's agent may run on Claude: the Messages API
     * refuses more than 1, its most random, so more asks for that. */
    if (req->temperature >= 0)
        json_object_set_new(body, "temperature", json_real(req->temperature > 1 ? 1 : req->temperature));
    if (json_array_size(req->stop)) { /* the Messages API refuses whitespace-only sequences */
        json_t *seqs = json_array(), *seq;
        size_t k;
        json_array_foreach(req->stop, k, seq) {
            const char *str = json_string_value(seq);
            if (str && str[strspn(str, " \t\r\n\f\v")])
                json_array_append(seqs, seq);
        }
        if (json_array_size(seqs))
            json_object_set_new(body, "stop_sequences", seqs);
        else
            json_decref(seqs);
    }
    if (req->user && *req->user && (v = json_string(req->user)))
        json_object_set_new(body, "metadata", json_pack("{s:o}", "user_id", v));
    if (!(text = json_dumps(body, JSON_COMPACT | JSON_PRESERVE_ORDER))) {
        *why = "the request could not be encoded as JSON";
        goto out;
    }
    /* body is never empty (model): its members, then "messages" */
    nx_buf_append(out, text, strlen(text) - 1);
    if (tools_part) {
        nx_buf_puts(out, ",\"tools\":");
        nx_buf_append(out, tools_part, tools_len);
    }
    nx_buf_puts(out, ",\"messages\":[");
    nx_buf_append(out, msgs.data ? msgs.data : "", msgs.len);
    nx_buf_puts(out, "]}");
    rc = 0;
out:
    free(text);
    free(tools_text);
    nx_buf_cleanup(&msgs);
    json_decref(body);
    return rc;
}

static size_t auth_headers(const char *api_key, struct nx_http_header *out, size_t max,
                           struct nx_buf *scratch)
{
    size_t n = 0;

    (void)scratch;
    if (max < 2)
        return 0;
    if (api_key && *api_key)
        out[n++] = (struct nx_http_header){"x-api-key", api_key};
    out[n++] = (struct nx_http_header){"anthropic-version", ANTHROPIC_VERSION};
    return n;
}

/* ---- response ---------------------------------------------------------------------------- */

/* The matched sequence of stop_reason "stop_sequence" (a string, or null otherwise). */
static void set_stop_sequence(struct nx_llm_resp *r, const char *seq)
{
    if (!seq)
        return;
    free(r->stop_sequence);
    r->stop_sequence = nx_strdup(seq);
}

static void read_usage(const json_t *u, struct nx_llm_usage *out)
{
    if (!json_is_object(u))
        return;
    /* message_delta repeats the totals so far: take every field that is present */
    /* (a null one is not a count: left as it was, as the official SDKs do) */
    if (json_is_integer(json_object_get(u, "input_tokens")))
        out->input_tokens = nx_json_u64(u, "input_tokens");
    if (json_is_integer(json_object_get(u, "output_tokens")))
        out->output_tokens = nx_json_u64(u, "output_tokens");
    if (json_is_integer(json_object_get(u, "cache_read_input_tokens")))
        out->cache_read_tokens = nx_json_u64(u, "cache_read_input_tokens");
    if (json_is_integer(json_object_get(u, "cache_creation_input_tokens")))
        out->cache_write_tokens = nx_json_u64(u, "cache_creation_input_tokens");
}

static bool block_is_valid(const json_t *b)
{
    const char *type = nx_json_str(b, "type");

    if (!type)
        return false;
    if (!strcmp(type, "text"))
        return nx_json_str(b, "text") != NULL;
    if (!strcmp(type, "tool_use"))
        return nx_json_str(b, "id") && nx_json_str(b, "name") && json_is_object(json_object_get(b, "input"));
    return true; /* thinking, redacted_thinking, server tool blocks: kept as they are */
}

static void read_error_object(const json_t *root, struct nx_llm_resp *out)
{
    json_t *e = json_object_get(root, "error");
    const char *type = nx_json_str(e, "type"), *msg = nx_json_str(e, "message");

    nx_llm_resp_set_error(out, type ? type : "api_error", "%s", msg ? msg : "(no message)");
}

int nx_anthropic_parse_response(const char *body, size_t len, struct nx_llm_resp *out)
{
    json_t *root = json_loadb(body ? body : "", len, 0, NULL), *content, *b;
    const char *type, *model;
    int rc = NX_EPROTO;
    size_t i;

    type = nx_json_str(root, "type");
    if (type && !strcmp(type, "error")) {
        read_error_object(root, out);
        goto out;
    }
    content = json_object_get(root, "content");
    if (!type || strcmp(type, "message") != 0 || !json_is_array(content)) {
        nx_llm_resp_set_error(out, "invalid_response", "the answer is not a message object");
        goto out;
    }
    json_array_foreach(content, i, b) {
        if (!block_is_valid(b)) {
            nx_llm_resp_set_error(out, "invalid_response", "content block %zu is malformed", i);
            goto out;
        }
    }
    json_decref(out->message);
    out->message = json_pack("{s:s, s:O}", "role", "assistant", "content", content);
    out->stop = nx_llm_stop_from_anthropic(nx_json_str(root, "stop_reason"));
    set_stop_sequence(out, nx_json_str(root, "stop_sequence"));
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

static const char *type_for_status(long status)
{
    switch (status) {
    case 400: return "invalid_request_error";
    case 401: return "authentication_error";
    case 403: return "permission_error";
    case 404: return "not_found_error";
    case 413: return "request_too_large";
    case 429: return "rate_limit_error";
    case 529: return "overloaded_error";
    default: return status >= 500 ? "api_error" : "invalid_request_error";
    }
}

void nx_anthropic_parse_error(long status, const char *body, size_t len, struct nx_llm_resp *out)
{
    json_t *root = json_loadb(body ? body : "", len, 0, NULL);

    if (json_is_object(json_object_get(root, "error")))
        read_error_object(root, out);
    else
        nx_llm_resp_set_error(out, type_for_status(status), "HTTP %ld with a body that is not an API error",
                              status);
    json_decref(root);
}

/* ---- streaming ------------------------------------------------------------------------- */

enum blk_kind { BLK_TEXT, BLK_TOOL, BLK_THINKING, BLK_OTHER };

struct blk {
    json_t *block;      /* as content_block_start gave it, completed at content_block_stop */
    struct nx_buf acc;  /* text, thinking or partial JSON */
    enum blk_kind kind;
    bool stopped;
};

struct nx_anthropic_stream {
    struct nx_sse_reader sse;
    nx_llm_text_fn on_text;
    void *udata;
    struct nx_llm_resp resp;
    struct blk *blocks;
    size_t nblocks;
    size_t nevents; /* but pings */
    bool started;
    bool finished; /* message_stop */
    int err;       /* sticky */
};

static int fail(struct nx_anthropic_stream *s, const char *what)
{
    nx_llm_resp_set_error(&s->resp, "invalid_response", "malformed stream: %s", what);
    return s->err = NX_EPROTO;
}

static void blk_finish(struct blk *k)
{
    json_t *input;
    json_error_t jerr;

    if (k->stopped)
        return;
    k->stopped = true;
    switch (k->kind) {
    case BLK_TEXT:
        json_object_set_new(k->block, "text", json_stringn_nocheck(nx_buf_cstr(&k->acc), k->acc.len));
        break;
    case BLK_THINKING:
        json_object_set_new(k->block, "thinking", json_stringn_nocheck(nx_buf_cstr(&k->acc), k->acc.len));
        break;
    case BLK_TOOL:
        if (k->acc.len == 0)
            break; /* no input_json_delta: keep the start's input */
        input = json_loadb(k->acc.data, k->acc.len, JSON_DECODE_ANY, &jerr);
        if (json_is_object(input) || json_is_null(input)) { /* "null": no arguments */
            json_object_set_new(k->block, "input", json_is_null(input) ? json_object() : input);
        } else {
            json_object_set_new(k->block, "input", json_object());
            json_object_set_new(k->block, "input_error", nx_llm_input_error(input, &jerr));
            json_decref(input);
            json_object_set_new(k->block, "input_raw",
                                json_stringn_nocheck(k->acc.data, k->acc.len));
        }
        break;
    case BLK_OTHER:
        break;
    }
}

static int on_block_start(struct nx_anthropic_stream *s, const json_t *ev)
{
    json_t *cb = json_object_get(ev, "content_block");
    const char *type = nx_json_str(cb, "type"), *text;
    json_t *idx = json_object_get(ev, "index");
    struct blk *k;

    if (!json_is_integer(idx) || json_integer_value(idx) != (json_int_t)s->nblocks || !type)
        return fail(s, "content_block_start out of order");
    if (s->nblocks >= NX_LLM_MAX_BLOCKS)
        return fail(s, "too many content blocks");
    s->blocks = nx_realloc(s->blocks, (s->nblocks + 1) * sizeof *s->blocks);
    k = &s->blocks[s->nblocks++];
    memset(k, 0, sizeof *k);
    k->block = json_deep_copy(cb);
    if (!strcmp(type, "text")) {
        k->kind = BLK_TEXT;
        if ((text = nx_json_str(cb, "text")) && *text) {
            nx_buf_puts(&k->acc, text);
            s->on_text(text, strlen(text), s->udata);
        }
    } else if (!strcmp(type, "tool_use")) {
        k->kind = BLK_TOOL;
        if (!nx_json_str(cb, "id") || !nx_json_str(cb, "name"))
            return fail(s, "tool_use block without id or name");
        if (!json_is_object(json_object_get(cb, "input")))
            json_object_set_new(k->block, "input", json_object());
    } else if (!strcmp(type, "thinking")) {
        k->kind = BLK_THINKING;
        if ((text = nx_json_str(cb, "thinking")))
            nx_buf_puts(&k->acc, text);
    } else {
        k->kind = BLK_OTHER;
    }
    return 0;
}

static int on_block_delta(struct nx_anthropic_stream *s, const json_t *ev)
{
    json_t *idx = json_object_get(ev, "index"), *d = json_object_get(ev, "delta");
    const char *type = nx_json_str(d, "type"), *v;
    struct blk *k;

    if (!json_is_integer(idx) || json_integer_value(idx) < 0 ||
        json_integer_value(idx) >= (json_int_t)s->nblocks || !type)
        return fail(s, "content_block_delta for an unknown block");
    k = &s->blocks[json_integer_value(idx)];
    if (k->stopped)
        return fail(s, "content_block_delta after content_block_stop");
    if (!strcmp(type, "text_delta")) {
        if (k->kind != BLK_TEXT || !(v = nx_json_str(d, "text")))
            return fail(s, "text_delta on a block that is not text");
        nx_buf_append(&k->acc, v, strlen(v));
        if (*v)
            s->on_text(v, strlen(v), s->udata);
    } else if (!strcmp(type, "input_json_delta")) {
        if (k->kind != BLK_TOOL || !(v = nx_json_str(d, "partial_json")))
            return fail(s, "input_json_delta on a block that is not tool_use");
        nx_buf_append(&k->acc, v, strlen(v));
    } else if (!strcmp(type, "thinking_delta")) {
        if (k->kind != BLK_THINKING || !(v = nx_json_str(d, "thinking")))
            return fail(s, "thinking_delta on a block that is not thinking");
        nx_buf_append(&k->acc, v, strlen(v));
    } else if (!strcmp(type, "signature_delta")) {
        if ((v = nx_json_str(d, "signature")))
            json_object_set_new(k->block, "signature", json_string(v));
    }
    return 0; /* citations_delta and newer kinds: nothing to keep */
}

static int on_event(const struct nx_sse_event *sse, void *udata)
{
    struct nx_anthropic_stream *s = udata;
    json_t *ev;
    const char *type;
    int rc = 0;

    if (s->finished)
        return 0;
    if (!(ev = json_loadb(sse->data, sse->data_len, 0, NULL)) || !json_is_object(ev)) {
        json_decref(ev);
        if (!strcmp(sse->event, "ping"))
            return 0;
        return fail(s, "an event whose data is not a JSON object");
    }
    type = nx_json_str(ev, "type");
    if (!type)
        type = sse->event;
    if (strcmp(type, "ping") != 0)
        s->nevents++;
    if (!strcmp(type, "error")) {
        read_error_object(ev, &s->resp);
        rc = s->err = NX_EPROTO;
    } else if (!strcmp(type, "message_start")) {
        json_t *m = json_object_get(ev, "message");
        const char *model = nx_json_str(m, "model");
        if (!json_is_object(m)) {
            rc = fail(s, "message_start without a message");
        } else {
            s->started = true;
            read_usage(json_object_get(m, "usage"), &s->resp.usage);
            if (model) {
                free(s->resp.model);
                s->resp.model = nx_strdup(model);
            }
        }
    } else if (!s->started && strcmp(type, "ping") != 0) {
        rc = fail(s, "an event before message_start");
    } else if (!strcmp(type, "content_block_start")) {
        rc = on_block_start(s, ev);
    } else if (!strcmp(type, "content_block_delta")) {
        rc = on_block_delta(s, ev);
    } else if (!strcmp(type, "content_block_stop")) {
        json_t *idx = json_object_get(ev, "index");
        if (!json_is_integer(idx) || json_integer_value(idx) < 0 ||
            json_integer_value(idx) >= (json_int_t)s->nblocks)
            rc = fail(s, "content_block_stop for an unknown block");
        else
            blk_finish(&s->blocks[json_integer_value(idx)]);
    } else if (!strcmp(type, "message_delta")) {
        json_t *d = json_object_get(ev, "delta");
        if (nx_json_str(d, "stop_reason"))
            s->resp.stop = nx_llm_stop_from_anthropic(nx_json_str(d, "stop_reason"));
        set_stop_sequence(&s->resp, nx_json_str(d, "stop_sequence"));
        read_usage(json_object_get(ev, "usage"), &s->resp.usage);
    } else if (!strcmp(type, "message_stop")) {
        json_t *content = json_array();
        for (size_t i = 0; i < s->nblocks; i++) {
            blk_finish(&s->blocks[i]);
            json_array_append(content, s->blocks[i].block);
        }
        json_decref(s->resp.message);
        s->resp.message = json_pack("{s:s, s:o}", "role", "assistant", "content", content);
        s->finished = true;
    }
    /* ping and unknown event types are skipped, as the API's versioning policy asks */
    json_decref(ev);
    return rc;
}

struct nx_anthropic_stream *nx_anthropic_stream_new(nx_llm_text_fn on_text, void *udata)
{
    struct nx_anthropic_stream *s = nx_calloc(1, sizeof *s);

    nx_sse_reader_init(&s->sse, 0, on_event, s);
    s->on_text = on_text;
    s->udata = udata;
    s->resp.stop = NX_LLM_STOP_OTHER;
    return s;
}

int nx_anthropic_stream_feed(struct nx_anthropic_stream *s, const char *data, size_t len)
{
    int rc;

    if (s->err)
        return s->err;
    rc = nx_sse_feed(&s->sse, data, len);
    if (rc == NX_ETOOBIG)
        return fail(s, "an event larger than the cap");
    return rc < 0 ? rc : s->finished ? 1 : 0;
}

int nx_anthropic_stream_finish(struct nx_anthropic_stream *s, struct nx_llm_resp *out)
{
    int rc = s->err;

    if (!rc && !s->finished)
        rc = fail(s, "the stream ended before message_stop");
    nx_llm_resp_cleanup(out);
    *out = s->resp;
    memset(&s->resp, 0, sizeof s->resp);
    if (rc) {
        json_decref(out->message);
        out->message = NULL;
    }
    return rc;
}

size_t nx_anthropic_stream_events(const struct nx_anthropic_stream *s)
{
    return s->nevents;
}

void nx_anthropic_stream_free(struct nx_anthropic_stream *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->nblocks; i++) {
        json_decref(s->blocks[i].block);
        nx_buf_cleanup(&s->blocks[i].acc);
    }
    free(s->blocks);
    nx_sse_reader_cleanup(&s->sse);
    nx_llm_resp_cleanup(&s->resp);
    free(s);
}

/* ---- the table ------------------------------------------------------------------------- */

NX_LLM_WIRE_STREAM_ADAPTERS(anthropic)

const struct nx_llm_wire nx_anthropic_wire = {
    .default_base_url = "https://api.anthropic.com",
    .path = "/v1/messages",
    .build_body = nx_anthropic_build_body,
    .auth_headers = auth_headers,
    .parse_response = nx_anthropic_parse_response,
    .parse_error = nx_anthropic_parse_error,
    .stream_new = anthropic_stream_new_any,
    .stream_feed = anthropic_stream_feed_any,
    .stream_events = anthropic_stream_events_any,
    .stream_finish = anthropic_stream_finish_any,
    .stream_free = anthropic_stream_free_any,
};

static struct nx_llm_call *start(struct nx_llm_provider *p, const struct nx_llm_request *req,
                                 const struct nx_llm_callbacks *cb)
{
    return nx_llm_call_start(p, &nx_anthropic_wire, req, cb, 0);
}

const struct nx_llm_type nx_llm_anthropic = {
    .kind = "anthropic",
    .start = start,
    .cancel = nx_llm_call_cancel,
};
