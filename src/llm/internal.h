#ifndef NX_LLM_INTERNAL_H
#define NX_LLM_INTERNAL_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"
#include "core/metrics.h"
#include "llm/llm.h"

/* Shared between llm.c (provider, call machinery), anthropic.c, openai.c and chain.c; also
 * what the fuzz targets and unit tests drive: every parser takes raw bytes. */

/* Caps on what one answer may hold (a stream may not grow the state without bound). */
#define NX_LLM_MAX_BLOCKS 1024     /* content blocks / tool calls per message */
#define NX_LLM_MAX_ERRBODY 65536   /* an error body kept for parsing */

/* A parsed answer; owns everything. */
struct nx_llm_resp {
    enum nx_llm_stop stop;
    char *stop_sequence;    /* which of the request's stop sequences ended it (Anthropic), or NULL */
    json_t *message;        /* canonical assistant message, NULL until complete */
    struct nx_llm_usage usage;
    char *model;
    char *error_type;       /* set by the error parsers and mid-stream errors */
    char *error_message;
};

void nx_llm_resp_cleanup(struct nx_llm_resp *r);
void nx_llm_resp_set_error(struct nx_llm_resp *r, const char *type, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

typedef void (*nx_llm_text_fn)(const char *delta, size_t len, void *udata);

/* A wire format: builds the request and parses the answer. */
struct nx_llm_wire {
    const char *default_base_url;
    const char *path;       /* appended to the base URL */
    /* Body for the request; NX_EINVAL (with *why set to a static string) on a bad request. */
    int (*build_body)(const struct nx_llm_request *req, struct nx_buf *out, const char **why);
    /* Headers beyond content-type/accept and the configured extras. Writes at most max. */
    size_t (*auth_headers)(const char *api_key, struct nx_http_header *out, size_t max,
                           struct nx_buf *scratch);
    int (*parse_response)(const char *body, size_t len, struct nx_llm_resp *out);
    /* Fills error_type/error_message from an error body (any shape, never fails). */
    void (*parse_error)(long status, const char *body, size_t len, struct nx_llm_resp *out);
    void *(*stream_new)(nx_llm_text_fn on_text, void *udata);
    /* 0 to go on; 1 the stream has ended ([DONE], message_stop): what follows is ignored;
     * < 0 stops (an error event fills the stream's error fields). */
    int (*stream_feed)(void *s, const char *data, size_t len);
    /* Events fed so far that carry something: keep-alives (pings, comments) do not count. */
    size_t (*stream_events)(const void *s);
    /* Moves the result into out: 0 when the stream completed, < 0 otherwise. */
    int (*stream_finish)(void *s, struct nx_llm_resp *out);
    void (*stream_free)(void *s);
};

/* Every call handle (a single attempt or a chain) starts with this. */
struct nx_llm_call {
    void (*cancel)(struct nx_llm_call *call);
    bool (*is_sending)(const struct nx_llm_call *call); /* NULL: a single attempt, always sending */
};

struct nx_llm_provider {
    char *name;
    const struct nx_llm_type *type;
    const struct nx_llm_wire *wire;
    struct nx_http_client *http;
    char *api_key;
    char *url;
    struct nx_http_header *headers; /* extras, owned */
    size_t nheaders;
    uint32_t timeout_ms;
    uint32_t stall_ms;
    struct nx_breaker breaker;
    struct nx_metric *m_requests;
    struct nx_metric *m_latency;
    struct nx_metric *m_tokens;
    struct nx_metric *m_breaker;
    struct nx_metric *m_ttft;
    char *no_stream[16];             /* models that refused to stream (whole.c) */
    size_t nno_stream;
    bool no_stream_options;          /* the server refused stream_options (whole.c) */
};

/* whole.c: models that refuse to stream, and the text of a whole answer passed on. */
bool nx_llm_refuses_stream(const struct nx_llm_provider *p, const char *model);
/* req as it is to be sent, given what was learnt: req itself, or tmp filled from it. */
const struct nx_llm_request *nx_llm_as_learnt(const struct nx_llm_provider *p,
                                              const struct nx_llm_request *req,
                                              struct nx_llm_request *tmp);
/* A streaming request's error: true when it is the model refusing to stream, or the server
 * refusing stream_options when they were sent (remembered: the request is to be sent again). */
bool nx_llm_note_stream_refusal(struct nx_llm_provider *p, const char *model, long status,
                                const char *body, size_t len, bool sent_options);
void nx_llm_pass_text(const json_t *message, nx_llm_text_fn fn, void *udata);
/* Where a JSON text's outermost object or array closes, found as its bytes come (strings and
 * their escapes skipped): each byte is looked at once, however the text is cut. */
struct nx_json_end {
    unsigned depth;
    bool in_str, esc, is_closed;
};
/* Feeds bytes; true once the outermost braces have closed (then parse the text to be sure). */
bool nx_llm_json_end_feed(struct nx_json_end *e, const char *p, size_t n);
/* s is one whole JSON object, maybe followed by white space. */
bool nx_llm_is_whole_json(const char *s, size_t len);
void nx_llm_no_stream_free(struct nx_llm_provider *p);

/* Flags for nx_llm_call_start. */
#define NX_LLM_CALL_NO_OUTCOME 1u /* the caller (the chain) counts requests_total itself */

struct nx_llm_call *nx_llm_call_start(struct nx_llm_provider *p, const struct nx_llm_wire *wire,
                                      const struct nx_llm_request *req,
                                      const struct nx_llm_callbacks *cb, unsigned flags);
void nx_llm_call_cancel(struct nx_llm_call *call);
/* Whether a single attempt (nx_llm_call_start's) has its whole answer: its stream's last event
 * came, and only the body's end is awaited. */
bool nx_llm_call_is_answered(const struct nx_llm_call *call);

/* nexo_llm_requests_total{provider,model,outcome}. */
void nx_llm_count_outcome(struct nx_llm_provider *p, const char *model, const char *outcome);
/* nexo_llm_breaker_state{provider} from the provider's breaker. */
void nx_llm_publish_breaker(struct nx_llm_provider *p);

/* Maps an HTTP status and error type to an NX_E* code and whether a retry may succeed. */
int nx_llm_classify(long status, const char *error_type, bool *is_retryable);
/* retry-after-ms (milliseconds) or retry-after (seconds, or an HTTP date: the wait until then),
 * capped at a day: -1 if none. */
int64_t nx_llm_parse_retry_after(const char *retry_after_ms, const char *retry_after);

/* Stop reasons. */
enum nx_llm_stop nx_llm_stop_from_anthropic(const char *s);
enum nx_llm_stop nx_llm_stop_from_openai(const char *s);

/* Small jansson helpers. */
const char *nx_json_str(const json_t *obj, const char *key);   /* NULL unless a string */
uint64_t nx_json_u64(const json_t *obj, const char *key);       /* 0 unless a non-negative int */
/* Why a tool call's arguments (input, NULL when they did not parse: err says why) are refused,
 * as the model reads it in the tool's error. */
json_t *nx_llm_input_error(const json_t *input, const json_error_t *err);

/* A wire's stream functions take its own stream type and the table holds them as void *: this
 * defines the four static adapters <w>_stream_new_any, _feed_any, _finish_any and _free_any
 * that call nx_<w>_stream_new, _feed, _events, _finish and _free, for the wire's table. */
#define NX_LLM_WIRE_STREAM_ADAPTERS(w)                                                          \
    static void *w##_stream_new_any(nx_llm_text_fn on_text, void *udata)                        \
    {                                                                                           \
        return nx_##w##_stream_new(on_text, udata);                                             \
    }                                                                                           \
    static int w##_stream_feed_any(void *s, const char *data, size_t len)                       \
    {                                                                                           \
        return nx_##w##_stream_feed(s, data, len);                                              \
    }                                                                                           \
    static size_t w##_stream_events_any(const void *s)                                         \
    {                                                                                           \
        return nx_##w##_stream_events(s);                                                       \
    }                                                                                           \
    static int w##_stream_finish_any(void *s, struct nx_llm_resp *out)                          \
    {                                                                                           \
        return nx_##w##_stream_finish(s, out);                                                  \
    }                                                                                           \
    static void w##_stream_free_any(void *s)                                                    \
    {                                                                                           \
        nx_##w##_stream_free(s);                                                                \
    }

/* ---- anthropic.c ---- */
extern const struct nx_llm_type nx_llm_anthropic;
extern const struct nx_llm_wire nx_anthropic_wire;
int nx_anthropic_build_body(const struct nx_llm_request *req, struct nx_buf *out, const char **why);
int nx_anthropic_parse_response(const char *body, size_t len, struct nx_llm_resp *out);
void nx_anthropic_parse_error(long status, const char *body, size_t len, struct nx_llm_resp *out);
struct nx_anthropic_stream;
struct nx_anthropic_stream *nx_anthropic_stream_new(nx_llm_text_fn on_text, void *udata);
int nx_anthropic_stream_feed(struct nx_anthropic_stream *s, const char *data, size_t len);
size_t nx_anthropic_stream_events(const struct nx_anthropic_stream *s);
int nx_anthropic_stream_finish(struct nx_anthropic_stream *s, struct nx_llm_resp *out);
void nx_anthropic_stream_free(struct nx_anthropic_stream *s);

/* ---- openai.c ---- */
extern const struct nx_llm_type nx_llm_openai;
extern const struct nx_llm_wire nx_openai_wire;
int nx_openai_build_body(const struct nx_llm_request *req, struct nx_buf *out, const char **why);
int nx_openai_parse_response(const char *body, size_t len, struct nx_llm_resp *out);
void nx_openai_parse_error(long status, const char *body, size_t len, struct nx_llm_resp *out);
struct nx_openai_stream;
struct nx_openai_stream *nx_openai_stream_new(nx_llm_text_fn on_text, void *udata);
int nx_openai_stream_feed(struct nx_openai_stream *s, const char *data, size_t len);
size_t nx_openai_stream_events(const struct nx_openai_stream *s);
int nx_openai_stream_finish(struct nx_openai_stream *s, struct nx_llm_resp *out);
void nx_openai_stream_free(struct nx_openai_stream *s);

/* openai_fast.c: the common stream chunk (one choice, a text delta) read without a JSON tree.
 * True when data is exactly that (valid JSON, as jansson would take it): the fields are spans of
 * data (content may hold simple escapes: content_esc). False for anything else, left to jansson.
 * nx_openai_fast_enabled (true) lets the fuzz target compare both readers. */
struct nx_openai_fast {
    const char *model, *content, *finish; /* NULL when absent or null */
    size_t model_len, content_len, finish_len;
    bool content_esc;
    bool has_choice;
    bool has_usage; /* a usage object: its counts below (0 when absent) */
    long long prompt_tokens, completion_tokens, cached_tokens, cache_hit_tokens;
};
extern bool nx_openai_fast_enabled;
bool nx_openai_fast_chunk(const char *data, size_t len, struct nx_openai_fast *f);
/* Appends s (a JSON string's bytes without \u escapes) unescaped. */
void nx_json_unescape_plain(const char *s, size_t n, struct nx_buf *out);

/* --- llm/frag_cache.c: the wire form of history messages, by message identity --- */
enum { NX_FRAG_OPENAI = 1, NX_FRAG_ANTHROPIC = 2, NX_FRAG_OPENAI_TOOLS = 3, NX_FRAG_ANTHROPIC_TOOLS = 4,
       NX_FRAG_TOKENS = 5, NX_FRAG_OPENAI_DEEPSEEK = 6 /* with reasoning_content */ };
/* The remembered fragment of message m for a wire, or NULL. */
const char *nx_llm_frag_get(int wire, const json_t *m, size_t *len);
/* Remembers it (holding a reference to m); text NULL remembers just the number len. */
void nx_llm_frag_put(int wire, const json_t *m, const char *text, size_t len);
void nx_llm_frag_clear(void);

/* --- llm/run.c: a session's history as one encoded run --- */
/* Appends to out the run's text for the longest start of messages it holds, in order (each
 * message's part followed by a comma), and returns how many messages that covers. The run
 * lets go of what it held before and after them. */
size_t nx_llm_run_reuse(struct nx_llm_run *r, int wire, const json_t *messages, struct nx_buf *out);
/* Whether the run takes the messages that follow the reused ones (not past one too long). */
bool nx_llm_run_is_open(const struct nx_llm_run *r, int wire);
/* Adds the next message's part (len 0: one that says nothing); false when it is refused. */
bool nx_llm_run_add(struct nx_llm_run *r, int wire, const json_t *m, const char *text, size_t len);
/* Encodes one canonical message for a wire into out; returns why it cannot, or NULL. */
typedef const char *(*nx_llm_encode_fn)(const json_t *m, struct nx_buf *out, void *arg);
/* Appends each of req->messages' wire form followed by a comma: from the request's run, else
 * the fragment cache, else encode. Returns encode's complaint, or NULL. */
const char *nx_llm_put_messages(const struct nx_llm_request *req, int wire, nx_llm_encode_fn encode,
                                void *arg, struct nx_buf *out);

#endif
