#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/error.h"
#include "core/log.h"
#include "core/redact.h"
#include "llm/internal.h"

/* What the providers' wire formats share: results and their errors, JSON lookups, stop reasons,
 * context windows, how an HTTP status and an error type are classified, retry-after. */

void nx_llm_resp_cleanup(struct nx_llm_resp *r)
{
    json_decref(r->message);
    free(r->stop_sequence);
    free(r->model);
    free(r->error_type);
    free(r->error_message);
    memset(r, 0, sizeof *r);
}

void nx_llm_resp_set_error(struct nx_llm_resp *r, const char *type, const char *fmt, ...)
{
    struct nx_buf b = NX_BUF_INIT, red = NX_BUF_INIT;
    va_list ap;

    va_start(ap, fmt);
    nx_buf_vprintf(&b, fmt, ap);
    va_end(ap);
    /* a provider's message may echo a credential; it goes to clients and logs */
    nx_redact_append(&red, b.data ? b.data : "", b.len);
    nx_buf_cleanup(&b);
    free(r->error_type);
    free(r->error_message);
    r->error_type = nx_strdup(type);
    r->error_message = nx_buf_steal(&red);
}

const char *nx_json_str(const json_t *obj, const char *key)
{
    json_t *v = json_is_object(obj) ? json_object_get(obj, key) : NULL;
    return json_is_string(v) ? json_string_value(v) : NULL;
}

uint64_t nx_json_u64(const json_t *obj, const char *key)
{
    json_t *v = json_is_object(obj) ? json_object_get(obj, key) : NULL;
    return json_is_integer(v) && json_integer_value(v) > 0 ? (uint64_t)json_integer_value(v) : 0;
}

json_t *nx_llm_input_error(const json_t *input, const json_error_t *err)
{
    if (input)
        return json_string("the arguments are not a JSON object");
    if (strstr(err->text, "\\u0000")) /* (jansson's words name one of its flags) */
        return json_string("the arguments hold a NUL character (\\u0000), which no tool takes");
    return json_sprintf("the arguments are not a JSON object: %s", err->text);
}

enum nx_llm_stop nx_llm_stop_from_anthropic(const char *s)
{
    if (!s)
        return NX_LLM_STOP_OTHER;
    if (!strcmp(s, "end_turn"))
        return NX_LLM_STOP_END_TURN;
    if (!strcmp(s, "tool_use"))
        return NX_LLM_STOP_TOOL_USE;
    if (!strcmp(s, "max_tokens") || !strcmp(s, "model_context_window_exceeded")) /* cut short */
        return NX_LLM_STOP_MAX_TOKENS;
    if (!strcmp(s, "stop_sequence"))
        return NX_LLM_STOP_STOP_SEQUENCE;
    if (!strcmp(s, "refusal"))
        return NX_LLM_STOP_REFUSAL;
    return NX_LLM_STOP_OTHER; /* pause_turn and anything newer */
}

enum nx_llm_stop nx_llm_stop_from_openai(const char *s)
{
    if (!s)
        return NX_LLM_STOP_OTHER;
    if (!strcmp(s, "stop"))
        return NX_LLM_STOP_END_TURN;
    if (!strcmp(s, "length"))
        return NX_LLM_STOP_MAX_TOKENS;
    if (!strcmp(s, "tool_calls") || !strcmp(s, "function_call"))
        return NX_LLM_STOP_TOOL_USE;
    if (!strcmp(s, "content_filter"))
        return NX_LLM_STOP_REFUSAL;
    return NX_LLM_STOP_OTHER;
}

/* The status decides when there is one; a mid-stream error event (status 200) has only its type. */
/* Context windows of well-known model families, in tokens, by name prefix (the longest listed
 * prefix first where two overlap). From the vendors' model pages; a model can be given its own
 * with model.context_window. */
static const struct {
    const char *prefix;
    uint32_t tokens;
} windows[] = {
    {"claude-", 200000},      {"gpt-5-chat", 128000},    {"gpt-5", 272000}, /* (its input) */
    {"gpt-4.1", 1047576},     {"gpt-4.5", 128000},       {"gpt-4o", 128000},
    {"chatgpt-4o", 128000},   {"gpt-4-turbo", 128000},   {"gpt-4-vision", 128000},
    {"gpt-4-1106", 128000},   {"gpt-4-0125", 128000},    {"gpt-4-32k", 32768},
    {"gpt-4", 8192},          {"gpt-3.5-turbo", 16385},  {"o1-mini", 128000},
    {"o1-preview", 128000},   {"o1", 200000},            {"o3", 200000},
    {"o4-mini", 200000},
    {"deepseek-", 128000},    {"gemini-", 1048576},      {"minimax-", 200000},
    {"abab", 245760},
};

uint32_t nx_llm_context_window(const char *model)
{
    if (!model)
        return 0;
    const char *slash = strrchr(model, '/'); /* OpenRouter's "anthropic/claude-..." */
    const char *name = slash ? slash + 1 : model;
    if (strstr(name, "claude-")) /* Bedrock's "us.anthropic.claude-..." and Vertex names */
        return 200000;
    for (size_t i = 0; i < sizeof windows / sizeof windows[0]; i++)
        if (strncasecmp(name, windows[i].prefix, strlen(windows[i].prefix)) == 0)
            return windows[i].tokens;
    return 0;
}

const char *nx_llm_error_type_for_status(long status)
{
    switch (status) {
    case 400:
        return "invalid_request_error";
    case 401:
        return "authentication_error";
    case 402:
        return "billing_error";
    case 403:
        return "permission_error";
    case 404:
        return "not_found_error";
    case 408:
    case 504:
        return "timeout_error";
    case 413:
        return "request_too_large";
    case 429:
        return "rate_limit_error";
    case 529:
        return "overloaded_error";
    default:
        return status >= 500 && status <= 599 ? "api_error" : NULL;
    }
}

int nx_llm_classify(long status, const char *type, bool *is_retryable)
{
    bool t_retry = type && (!strcmp(type, "overloaded_error") || !strcmp(type, "rate_limit_error") ||
                            !strcmp(type, "api_error") || !strcmp(type, "server_error"));

    *is_retryable = false;
    if (status == 402 || (type && (!strcmp(type, "insufficient_quota") || !strcmp(type, "billing_error"))))
        return NX_EPERM; /* unpaid (DeepSeek's, OpenRouter's 402), or a 429 that waiting does not fix */
    if (status == 429 || status == 529 || status >= 500 || ((status == 0 || status == 200) && t_retry)) {
        *is_retryable = true;
        return NX_EAGAIN;
    }
    if (status == 408 || ((status == 0 || status == 200) && type && !strcmp(type, "timeout_error"))) {
        *is_retryable = true;
        return NX_ETIMEDOUT;
    }
    if (status == 400)
        return NX_EINVAL;
    if (status == 401 || status == 403)
        return NX_EPERM;
    if (status == 404)
        return NX_ENOENT;
    if (status == 413)
        return NX_ETOOBIG;
    if (status != 0 && status != 200)
        return NX_EPROTO;
    if (type && !strcmp(type, "invalid_request_error"))
        return NX_EINVAL;
    if (type && (!strcmp(type, "authentication_error") || !strcmp(type, "permission_error")))
        return NX_EPERM;
    if (type && !strcmp(type, "not_found_error"))
        return NX_ENOENT;
    if (type && !strcmp(type, "request_too_large"))
        return NX_ETOOBIG;
    return NX_EPROTO;
}

static int64_t parse_ms(const char *s, double scale)
{
    char *end;
    double v;

    if (!s || !*s)
        return -1;
    errno = 0;
    v = strtod(s, &end);
    while (*end == ' ' || *end == '\t')
        end++;
    if (errno || *end || !isfinite(v) || v < 0)
        return -1;
    v *= scale;
    return v > 86400000.0 ? 86400000 : (int64_t)ceil(v);
}

/* An HTTP-date (RFC 9110's IMF-fixdate, "Sun, 06 Nov 1994 08:49:37 GMT"): the wait until then,
 * 0 when it is past. */
static int64_t parse_http_date_ms(const char *s)
{
    struct tm tm;
    const char *end;

    if (!s)
        return -1;
    memset(&tm, 0, sizeof tm);
    if (!(end = strptime(s, "%a, %d %b %Y %H:%M:%S GMT", &tm)) || *end)
        return -1;
    time_t at = timegm(&tm);
    if (at == (time_t)-1)
        return -1;
    double ms = difftime(at, time(NULL)) * 1000.0;
    return ms <= 0 ? 0 : ms > 86400000.0 ? 86400000 : (int64_t)ms;
}

int64_t nx_llm_parse_retry_after(const char *retry_after_ms, const char *retry_after)
{
    int64_t ms = parse_ms(retry_after_ms, 1.0);
    if (ms < 0)
        ms = parse_ms(retry_after, 1000.0);
    return ms >= 0 ? ms : parse_http_date_ms(retry_after);
}
