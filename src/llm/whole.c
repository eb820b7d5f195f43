/* Answers that come whole where a stream was asked for: a server that ignores "stream" (llm.c
 * reads its JSON as the answer), and a model that refuses to stream (OpenAI's o3 and gpt-5 for an
 * organization not verified: 400 with param "stream"). Such a model is remembered per provider,
 * and asked for whole answers from then on; their text reaches a streaming caller in one piece.
 * Also here: a server that refuses the stream_options asking for usage (Mistral's strict schema,
 * Azure's api-versions before 2024-09, some proxies) streams without them from then on; each
 * call's usage is then estimated (agents/convo.c). */
#include <string.h>

#include "core/alloc.h"
#include "core/log.h"
#include "llm/internal.h"

bool nx_llm_refuses_stream(const struct nx_llm_provider *p, const char *model)
{
    for (size_t i = 0; model && i < p->nno_stream; i++)
        if (strcmp(p->no_stream[i], model) == 0)
            return true;
    return false;
}

const struct nx_llm_request *nx_llm_as_learnt(const struct nx_llm_provider *p,
                                              const struct nx_llm_request *req,
                                              struct nx_llm_request *tmp)
{
    bool is_whole = req->stream && nx_llm_refuses_stream(p, req->model);

    if (!req->stream || (!is_whole && !p->no_stream_options))
        return req;
    *tmp = *req;
    tmp->stream = !is_whole;
    tmp->is_stream_bare = p->no_stream_options;
    return tmp;
}

/* An error that names stream_options, in whatever shape: OpenAI's param, a message, pydantic's
 * loc; not in an "input" (pydantic echoes the request there whatever the error is about). */
static bool names_options(const json_t *j, int depth)
{
    const char *k;
    json_t *v;
    size_t i;

    if (json_is_string(j))
        return strstr(json_string_value(j), "stream_options") != NULL;
    json_array_foreach(j, i, v)
        if (depth < 8 && names_options(v, depth + 1))
            return true;
    json_object_foreach((json_t *)j, k, v)
        if (depth < 8 && strcmp(k, "input") != 0 && names_options(v, depth + 1))
            return true;
    return false;
}

static bool refuses_options(const char *body, size_t len)
{
    json_t *e = json_loadb(body, len, 0, NULL);
    bool yes = e ? names_options(e, 0) : memmem(body, len, "stream_options", 14) != NULL;
    json_decref(e);
    return yes;
}

bool nx_llm_note_stream_refusal(struct nx_llm_provider *p, const char *model, long status,
                                const char *body, size_t len, bool sent_options)
{
    if ((status == 400 || status == 422) && sent_options && body && refuses_options(body, len)) {
        if (!p->no_stream_options)
            nx_warn("llm", "%s refuses stream_options: its streams are asked for without them from "
                    "now on, and their usage is estimated", p->name);
        p->no_stream_options = true;
        return true;
    }
    if (status != 400 || !body || !len || !model)
        return false;
    json_t *e = json_loadb(body, len, 0, NULL);
    const char *param = json_string_value(json_object_get(json_object_get(e, "error"), "param"));
    bool is_refusal = param && strcmp(param, "stream") == 0;
    json_decref(e);
    if (!is_refusal || nx_llm_refuses_stream(p, model))
        return is_refusal;
    if (p->nno_stream == NX_ARRAY_LEN(p->no_stream)) { /* (bounded: the oldest goes) */
        free(p->no_stream[0]);
        memmove(p->no_stream, p->no_stream + 1, (p->nno_stream - 1) * sizeof p->no_stream[0]);
        p->nno_stream--;
    }
    p->no_stream[p->nno_stream++] = nx_strdup(model);
    nx_warn("llm", "%s %s refuses to stream: its answers are asked for whole from now on (their "
            "text reaches a streaming caller in one piece)", p->name, model);
    return true;
}

void nx_llm_pass_text(const json_t *message, nx_llm_text_fn fn, void *udata)
{
    size_t i;
    const json_t *b;

    json_array_foreach(json_object_get(message, "content"), i, b) {
        const char *type = json_string_value(json_object_get(b, "type"));
        const json_t *text = json_object_get(b, "text");
        if (type && strcmp(type, "text") == 0 && json_is_string(text) && json_string_length(text))
            fn(json_string_value(text), json_string_length(text), udata);
    }
}

bool nx_llm_json_end_feed(struct nx_json_end *e, const char *p, size_t n)
{
    for (size_t i = 0; i < n && !e->is_closed; i++) {
        char ch = p[i];
        if (e->in_str) {
            e->in_str = e->esc || ch != '"';
            e->esc = !e->esc && ch == '\\';
        } else if (ch == '"') {
            e->in_str = true;
        } else if (ch == '{' || ch == '[') {
            e->depth++;
        } else if ((ch == '}' || ch == ']') && e->depth) {
            e->is_closed = --e->depth == 0;
        }
    }
    return e->is_closed;
}

bool nx_llm_is_whole_json(const char *s, size_t len)
{
    json_t *j;

    while (len && (s[len - 1] == ' ' || s[len - 1] == '\t' || s[len - 1] == '\r' || s[len - 1] == '\n'))
        len--;
    if (!len || s[len - 1] != '}') /* (most chunks of a long answer: no parse) */
        return false;
    j = json_loadb(s, len, 0, NULL);
    json_decref(j);
    return j != NULL;
}

void nx_llm_provider_inherit(struct nx_llm_provider *p, const struct nx_llm_provider *old)
{
    if (!p || !old || p->type != old->type || strcmp(p->name, old->name) != 0 ||
        strcmp(p->url, old->url) != 0 || strcmp(p->api_key, old->api_key) != 0 ||
        p->nheaders != old->nheaders) /* (a new key, or organization, may be let stream) */
        return;
    for (size_t i = 0; i < p->nheaders; i++)
        if (strcmp(p->headers[i].name, old->headers[i].name) != 0 ||
            strcmp(p->headers[i].value, old->headers[i].value) != 0)
            return;
    p->no_stream_options |= old->no_stream_options;
    for (size_t i = 0; i < old->nno_stream && p->nno_stream < NX_ARRAY_LEN(p->no_stream); i++)
        if (!nx_llm_refuses_stream(p, old->no_stream[i]))
            p->no_stream[p->nno_stream++] = nx_strdup(old->no_stream[i]);
}

void nx_llm_no_stream_free(struct nx_llm_provider *p)
{
    for (size_t i = 0; i < p->nno_stream; i++)
        free(p->no_stream[i]);
    p->nno_stream = 0;
}
