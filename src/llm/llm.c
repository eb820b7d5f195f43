#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/error.h"
#include "core/log.h"
#include "llm/internal.h"

/* Provider types, configured providers, and one attempt on one provider: build the body with the
 * type's wire format, send it with the HTTP client, feed the answer (whole or streamed) to the
 * wire's parser and report one nx_llm_result. Retries live in chain.c. */

/* The least time a whole answer (which a reasoning model takes minutes over) and a stream of
 * keep-alives only are given: the official SDKs' own default timeout. */
#define NX_LLM_WHOLE_MIN_MS (10u * 60 * 1000)

static const struct {
    const struct nx_llm_type *type;
    const struct nx_llm_wire *wire;
} kinds[] = {
    {&nx_llm_anthropic, &nx_anthropic_wire},
    {&nx_llm_openai, &nx_openai_wire},
};

const struct nx_llm_type *nx_llm_type_find(const char *kind)
{
    for (size_t i = 0; kind && i < NX_ARRAY_LEN(kinds); i++)
        if (strcmp(kinds[i].type->kind, kind) == 0)
            return kinds[i].type;
    return NULL;
}

/* ---- providers -------------------------------------------------------------------------- */

static const double latency_buckets[] = {0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120};
static const double ttft_buckets[] = {0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};

/* Providers alive, by name: a reload builds the new generation's before the old one's go, so
 * a name's breaker gauge is dropped only when its last provider goes (it left llm.yaml), and
 * does not say "open" forever for a provider nobody calls. One thread (the loop's). */
static struct live_name {
    char *name;
    unsigned n;
} *live_names;
static size_t nlive_names;

static void live_name_add(const char *name, int delta, struct nx_metric *gauge)
{
    size_t i = 0;
    while (i < nlive_names && strcmp(live_names[i].name, name) != 0)
        i++;
    if (i == nlive_names) {
        if (delta < 0)
            return;
        live_names = nx_realloc(live_names, (nlive_names + 1) * sizeof *live_names);
        live_names[nlive_names++] = (struct live_name){nx_strdup(name), 0};
    }
    if (delta > 0) {
        live_names[i].n++;
        return;
    }
    if (--live_names[i].n)
        return;
    const char *lv[] = {name};
    nx_gauge_remove(gauge, lv);
    free(live_names[i].name);
    live_names[i] = live_names[--nlive_names];
    if (!nlive_names) {
        free(live_names);
        live_names = NULL;
    }
}

int nx_llm_provider_new(struct nx_http_client *http, const struct nx_llm_provider_conf *conf,
                        struct nx_llm_provider **out)
{
    static const char *const l_pmo[] = {"provider", "model", "outcome", NULL};
    static const char *const l_p[] = {"provider", NULL};
    static const char *const l_pmd[] = {"provider", "model", "direction", NULL};
    struct nx_llm_provider *p;
    const struct nx_llm_wire *wire = NULL;
    const char *base;
    size_t blen;

    if (!http || !conf || !out || !conf->name || !*conf->name)
        return NX_EINVAL;
    for (size_t i = 0; conf->kind && i < NX_ARRAY_LEN(kinds); i++)
        if (!strcmp(kinds[i].type->kind, conf->kind))
            wire = kinds[i].wire;
    if (!wire) {
        nx_error("llm", "provider %s: unknown kind \"%s\" (anthropic or openai)", conf->name,
                 conf->kind ? conf->kind : "");
        return NX_EINVAL;
    }
    p = nx_calloc(1, sizeof *p);
    p->name = nx_strdup(conf->name);
    p->type = nx_llm_type_find(conf->kind);
    p->wire = wire;
    p->http = http;
    p->api_key = nx_strdup(conf->api_key ? conf->api_key : "");
    base = conf->base_url && *conf->base_url ? conf->base_url : wire->default_base_url;
    blen = strlen(base);
    while (blen && base[blen - 1] == '/')
        blen--;
    p->url = nx_malloc(blen + strlen(wire->path) + 1);
    memcpy(p->url, base, blen);
    memcpy(p->url + blen, wire->path, strlen(wire->path) + 1);
    if (conf->nheaders) {
        p->headers = nx_calloc(conf->nheaders, sizeof *p->headers);
        for (size_t i = 0; i < conf->nheaders; i++) {
            p->headers[i].name = nx_strdup(conf->headers[i].name);
            p->headers[i].value = nx_strdup(conf->headers[i].value);
        }
        p->nheaders = conf->nheaders;
    }
    p->timeout_ms = conf->timeout_ms ? conf->timeout_ms : 120000;
    p->stall_ms = conf->stall_timeout_ms                   ? conf->stall_timeout_ms
                  : p->timeout_ms > NX_LLM_WHOLE_MIN_MS ? p->timeout_ms
                                                          : NX_LLM_WHOLE_MIN_MS;
    nx_breaker_init(&p->breaker, conf->breaker);
    p->m_requests = nx_metric_counter("nexo_llm_requests_total",
                                      "LLM attempts by outcome (ok, error, retry, cancelled).", l_pmo);
    p->m_latency = nx_metric_histogram("nexo_llm_latency_seconds", "LLM attempt latency.", l_p,
                                       latency_buckets, NX_ARRAY_LEN(latency_buckets));
    p->m_tokens = nx_metric_counter("nexo_llm_tokens_total", "LLM tokens by direction.", l_pmd);
    p->m_breaker = nx_metric_gauge("nexo_llm_breaker_state",
                                   "Provider circuit breaker (0 closed, 1 open, 2 half-open).", l_p);
    p->m_ttft = nx_metric_histogram("nexo_llm_stream_ttft_seconds",
                                    "Time to the first streamed text delta.", l_p, ttft_buckets,
                                    NX_ARRAY_LEN(ttft_buckets));
    live_name_add(p->name, 1, p->m_breaker);
    nx_llm_publish_breaker(p);
    *out = p;
    return 0;
}

void nx_llm_provider_free(struct nx_llm_provider *p)
{
    if (!p)
        return;
    live_name_add(p->name, -1, p->m_breaker);
    for (size_t i = 0; i < p->nheaders; i++) {
        free((char *)p->headers[i].name);
        free((char *)p->headers[i].value);
    }
    free(p->headers);
    nx_llm_no_stream_free(p);
    free(p->name);
    free(p->api_key);
    free(p->url);
    free(p);
}

const char *nx_llm_provider_name(const struct nx_llm_provider *p)
{
    return p->name;
}

struct nx_breaker *nx_llm_provider_breaker(struct nx_llm_provider *p)
{
    return &p->breaker;
}

void nx_llm_count_outcome(struct nx_llm_provider *p, const char *model, const char *outcome)
{
    const char *lv[] = {p->name, model ? model : "", outcome};
    nx_counter_add(p->m_requests, lv, 1);
}

void nx_llm_publish_breaker(struct nx_llm_provider *p)
{
    const char *lv[] = {p->name};
    nx_gauge_set(p->m_breaker, lv, (double)p->breaker.state);
}

static void count_tokens(struct nx_llm_provider *p, const char *model, const struct nx_llm_usage *u)
{
    static const char *const dirs[] = {"input", "output", "cache_read", "cache_write"};
    const uint64_t v[] = {u->input_tokens, u->output_tokens, u->cache_read_tokens,
                          u->cache_write_tokens};

    for (size_t i = 0; i < NX_ARRAY_LEN(dirs); i++) {
        const char *lv[] = {p->name, model ? model : "", dirs[i]};
        if (v[i])
            nx_counter_add(p->m_tokens, lv, (double)v[i]);
    }
}

/* ---- one attempt ----------------------------------------------------------------------- */

/* How long a stream's body may stay open after its last event (a keep-alive proxy). */
#define NX_LLM_STREAM_END_GRACE_MS 1000

struct single {
    struct nx_llm_call base;
    struct nx_llm_provider *p;
    const struct nx_llm_wire *wire;
    struct nx_llm_callbacks cb;
    struct nx_http_call *http;
    void *stream;
    struct nx_buf errbody;
    char *model;
    unsigned flags;
    int stream_rc;
    bool is_stream;
    bool cancelled;
    bool in_data;
    bool saw_text;
    bool is_stream_ended; /* its last event came: the body's end is waited for a moment only */
    bool is_sniffed;      /* a stream's first byte was seen: */
    bool is_plain;        /* ...a JSON object, not events: the server answered whole */
    bool wants_text;      /* a stream was asked for: a whole answer's text is passed on too */
    bool is_stream_refused; /* 400, param "stream"; or stream_options refused (whole.c) */
    bool sent_options;      /* stream_options were asked for */
    struct nx_buf plain;  /* that answer */
    struct nx_json_end plain_end;
    uint64_t t0_ns;
    uv_timer_t *defer; /* a call that failed before it went out completes from here */
    uint64_t log_ctx;  /* the caller's: the deferred completion runs in it */
    int defer_rc;
    const char *defer_why;
};

static void single_free(struct single *c)
{
    if (c->stream)
        c->wire->stream_free(c->stream);
    nx_buf_cleanup(&c->errbody);
    nx_buf_cleanup(&c->plain);
    free(c->model);
    free(c);
}

static void on_text(const char *delta, size_t len, void *udata)
{
    struct single *c = udata;

    if (c->cancelled || !len)
        return;
    if (!c->saw_text) {
        const char *lv[] = {c->p->name};
        c->saw_text = true;
        nx_histogram_observe(c->p->m_ttft, lv, (double)(nx_mono_ns() - c->t0_ns) / 1e9);
    }
    if (c->cb.on_text)
        c->cb.on_text(delta, len, c->cb.udata);
}

static int on_data(const char *data, size_t len, long status, void *udata)
{
    struct single *c = udata;
    size_t nevents;
    int rc;

    if (status < 200 || status > 299) {
        size_t room = NX_LLM_MAX_ERRBODY - c->errbody.len;
        nx_http_call_progress(c->http);
        nx_buf_append(&c->errbody, data, len < room ? len : room);
        return 0;
    }
    /* A server (or proxy) that ignores "stream": true answers with one JSON object; an event
     * stream never starts with '{' (data:, event:, id:, a comment, a blank line). */
    for (size_t i = 0; !c->is_sniffed && i < len; i++) {
        if (data[i] != ' ' && data[i] != '\t' && data[i] != '\r' && data[i] != '\n') {
            c->is_sniffed = true;
            c->is_plain = data[i] == '{';
        }
    }
    if (c->is_plain) {
        nx_http_call_progress(c->http);
        nx_buf_append(&c->plain, data, len);
        if (!c->is_stream_ended && c->http && !c->plain_end.is_closed && /* (one parse, once) */
            nx_llm_json_end_feed(&c->plain_end, data, len) &&
            nx_llm_is_whole_json(c->plain.data, c->plain.len)) {
            c->is_stream_ended = true; /* the body left open after it: as a stream's end, below */
            nx_http_call_end_within(c->http, NX_LLM_STREAM_END_GRACE_MS);
        }
        return c->cancelled;
    }
    c->in_data = true;
    nevents = c->wire->stream_events(c->stream);
    rc = c->wire->stream_feed(c->stream, data, len);
    if (c->wire->stream_events(c->stream) != nevents)
        nx_http_call_progress(c->http);
    c->in_data = false;
    if (rc < 0)
        c->stream_rc = rc;
    if (rc > 0 && !c->is_stream_ended && c->http) {
        /* The answer is whole. An upstream (or a proxy) that keeps the body open after it (or
         * sends keep-alive comments in it) is given a moment, then the call ends as answered,
         * not as a silence timeout. */
        c->is_stream_ended = true;
        nx_http_call_end_within(c->http, NX_LLM_STREAM_END_GRACE_MS);
    }
    return rc < 0 || c->cancelled;
}

/* Reports the outcome to the caller and frees the call. */
static void complete(struct single *c, int rc, struct nx_llm_resp *r, long status, int64_t retry_ms,
                     bool retryable)
{
    struct nx_llm_provider *p = c->p;
    struct nx_llm_result res;
    const char *lv[] = {p->name};

    memset(&res, 0, sizeof res);
    res.stop = r->stop;
    res.stop_sequence = r->stop == NX_LLM_STOP_STOP_SEQUENCE ? r->stop_sequence : NULL;
    res.message = rc == 0 ? r->message : NULL;
    res.usage = r->usage;
    res.model = r->model ? r->model : c->model;
    res.http_status = (int)status;
    res.error_type = rc == 0 ? NULL : r->error_type;
    res.error_message = rc == 0 ? NULL : r->error_message;
    res.retry_after_ms = retry_ms;
    res.is_retryable = rc != 0 && retryable;
    res.is_stream_refused = rc != 0 && c->is_stream_refused;
    if (rc != NX_ECANCELED)
        nx_histogram_observe(p->m_latency, lv, (double)(nx_mono_ns() - c->t0_ns) / 1e9);
    if (rc == 0)
        count_tokens(p, c->model, &r->usage);
    if (!(c->flags & NX_LLM_CALL_NO_OUTCOME))
        nx_llm_count_outcome(p, c->model, rc == 0 ? "ok" : rc == NX_ECANCELED ? "cancelled" : "error");
    if (rc != 0 && rc != NX_ECANCELED)
        nx_debug("llm", "%s %s: %s (http %ld, %s): %s", p->name, c->model, nx_strerror(rc), status,
                 res.error_type ? res.error_type : "-", res.error_message ? res.error_message : "");
    c->cb.on_done(rc, &res, c->cb.udata);
    nx_llm_resp_cleanup(r);
    single_free(c);
}

static const char *transport_type(int rc)
{
    switch (rc) {
    case NX_ETIMEDOUT: return "timeout";
    case NX_ETOOBIG: return "response_too_large";
    case NX_ECANCELED: return "cancelled";
    default: return "connection_error";
    }
}

static void on_http_done(int rc, const struct nx_http_response *hres, const char *err, void *udata)
{
    struct single *c = udata;
    struct nx_llm_resp r;
    long status = hres->status;
    int64_t retry_ms = -1;
    bool retryable = false;
    char ra[64], ra_ms[64];

    memset(&r, 0, sizeof r);
    c->http = NULL;
    if (status) {
        if (nx_http_response_header(hres, "retry-after-ms", ra_ms, sizeof ra_ms) < 0)
            ra_ms[0] = '\0';
        if (nx_http_response_header(hres, "retry-after", ra, sizeof ra) < 0)
            ra[0] = '\0';
        retry_ms = nx_llm_parse_retry_after(ra_ms, ra);
    }
    if ((rc == NX_ETIMEDOUT || rc == NX_EHTTP) && c->is_stream_ended && status >= 200 && status <= 299)
        rc = 0; /* only the end of a whole answer's body never came (or the connection broke then) */
    if (c->cancelled) {
        rc = NX_ECANCELED;
        nx_llm_resp_set_error(&r, "cancelled", "%s: request cancelled", c->p->name);
    } else if (rc == NX_ECANCELED && c->stream_rc < 0) {
        /* the stream parser stopped the transfer: an error event or a malformed stream */
        rc = c->wire->stream_finish(c->stream, &r);
        if (rc == 0)
            rc = c->stream_rc;
        if (!r.error_type)
            nx_llm_resp_set_error(&r, "invalid_response", "%s: malformed stream", c->p->name);
        rc = !strcmp(r.error_type, "invalid_response") ? NX_EPROTO : nx_llm_classify(0, r.error_type,
                                                                                   &retryable);
    } else if (rc < 0) {
        retryable = rc == NX_ETIMEDOUT || rc == NX_EHTTP;
        nx_llm_resp_set_error(&r, transport_type(rc), "%s: %s%s%s", c->p->name, nx_strerror(rc),
                              err ? ": " : "", err ? err : "");
    } else if (status >= 200 && status <= 299) {
        if (c->is_stream && !c->is_plain) {
            rc = c->wire->stream_finish(c->stream, &r);
        } else {
            rc = c->is_plain ? c->wire->parse_response(c->plain.data ? c->plain.data : "", c->plain.len, &r)
                             : c->wire->parse_response(hres->body, hres->body_len, &r);
            if (rc == 0 && c->wants_text) { /* a whole answer where a stream was asked for */
                c->saw_text = true; /* (its latency is not a time to first text) */
                nx_llm_pass_text(r.message, on_text, c);
            }
        }
        if (rc < 0) {
            if (r.error_type && strcmp(r.error_type, "invalid_response") != 0) {
                rc = nx_llm_classify(0, r.error_type, &retryable);
            } else {
                if (!r.error_type)
                    nx_llm_resp_set_error(&r, "invalid_response", "%s: unreadable answer",
                                          c->p->name);
                rc = NX_EPROTO;
                /* a stream cut short: the connection went, as a connection error would */
                retryable = c->is_stream && !c->is_plain;
            }
        }
    } else {
        const char *body = c->is_stream ? nx_buf_cstr(&c->errbody) : hres->body;
        size_t blen = c->is_stream ? c->errbody.len : hres->body_len;
        c->wire->parse_error(status, body, blen, &r);
        rc = nx_llm_classify(status, r.error_type, &retryable);
        if (c->is_stream &&
            nx_llm_note_stream_refusal(c->p, c->model, status, body, blen, c->sent_options)) {
            rc = NX_EAGAIN; /* asked again at once, as learnt (not an attempt: chain.c) */
            retryable = true;
            retry_ms = 0;
            c->is_stream_refused = true;
        }
    }
    complete(c, rc, &r, status, retry_ms, retryable);
}

static void defer_closed(uv_handle_t *h)
{
    struct single *c = h->data;
    free(h);
    single_free(c);
}

/* Completes a call that never went out; the call is freed once the timer has closed. */
static void defer_fire(struct single *c, int rc)
{
    struct nx_llm_provider *p = c->p;
    struct nx_llm_result res;

    memset(&res, 0, sizeof res);
    res.model = c->model;
    res.retry_after_ms = -1;
    res.error_type = rc == NX_ECANCELED ? "cancelled" : "invalid_request";
    res.error_message = rc == NX_ECANCELED ? "request cancelled" : c->defer_why;
    if (!(c->flags & NX_LLM_CALL_NO_OUTCOME))
        nx_llm_count_outcome(p, c->model, rc == NX_ECANCELED ? "cancelled" : "error");
    uv_timer_stop(c->defer);
    c->cb.on_done(rc, &res, c->cb.udata);
    uv_close((uv_handle_t *)c->defer, defer_closed);
}

static void on_defer(uv_timer_t *t)
{
    struct single *c = t->data;
    uint64_t prev = nx_log_context_swap(c->log_ctx);
    defer_fire(c, c->defer_rc);
    nx_log_context_swap(prev);
}

/* The size of the last request body built on this thread (see nx_llm_call_start). */
#define BODY_HINT_MAX (256u * 1024)
static _Thread_local size_t body_hint;

struct nx_llm_call *nx_llm_call_start(struct nx_llm_provider *p, const struct nx_llm_wire *wire,
                                      const struct nx_llm_request *req,
                                      const struct nx_llm_callbacks *cb, unsigned flags)
{
    struct nx_http_header hdrs[24];
    struct nx_http_call_opts o;
    struct nx_buf body = NX_BUF_INIT, scratch = NX_BUF_INIT;
    struct single *c;
    const char *why = NULL;
    size_t n = 0;

    if (!p || !req || !cb || !cb->on_done)
        return NULL;
    c = nx_calloc(1, sizeof *c);
    c->log_ctx = nx_log_context_current();
    c->base.cancel = nx_llm_call_cancel;
    c->p = p;
    c->wire = wire;
    c->cb = *cb;
    c->flags = flags;
    c->model = nx_strdup(req->model ? req->model : "");
    c->wants_text = req->stream;
    struct nx_llm_request learnt;
    req = nx_llm_as_learnt(p, req, &learnt);
    c->is_stream = req->stream;
    c->sent_options = req->stream && !req->is_stream_bare && wire == &nx_openai_wire;
    c->t0_ns = nx_mono_ns();
    /* A session's body grows by a message or two a turn: sized like the last one (no regrowth
     * copies while the history is assembled). */
    nx_buf_reserve(&body, body_hint);
    if (wire->build_body(req, &body, &why) < 0) {
        c->defer_rc = NX_EINVAL;
        c->defer_why = why ? why : "invalid request";
        goto defer;
    }
    body_hint = body.len + body.len / 4 < BODY_HINT_MAX ? body.len + body.len / 4 : BODY_HINT_MAX;
    hdrs[n++] = (struct nx_http_header){"content-type", "application/json"};
    hdrs[n++] = (struct nx_http_header){"accept", req->stream ? "text/event-stream" : "application/json"};
    n += wire->auth_headers(p->api_key, hdrs + n, 4, &scratch);
    for (size_t i = 0; i < p->nheaders && n < NX_ARRAY_LEN(hdrs); i++)
        hdrs[n++] = p->headers[i];
    if (req->stream)
        c->stream = wire->stream_new(on_text, c);
    memset(&o, 0, sizeof o);
    o.method = "POST";
    o.url = p->url;
    o.headers = hdrs;
    o.nheaders = n;
    /* the call's now, and held until sent: no more room than it needs (a shrink in place) */
    o.body = body.cap > body.len + 1 ? nx_realloc(body.data, body.len + 1) : body.data;
    o.body_len = body.len;
    o.is_body_given = true;
    body = (struct nx_buf)NX_BUF_INIT;
    if (req->stream) { /* a long answer streams for minutes: only a stall ends it */
        o.idle_timeout_ms = p->timeout_ms;
        o.stall_timeout_ms = p->stall_ms;
    }
    else if (c->wants_text) /* a model that will not stream: nothing comes before its answer, */
        o.timeout_ms = p->timeout_ms > NX_LLM_WHOLE_MIN_MS ? p->timeout_ms : NX_LLM_WHOLE_MIN_MS;
    else
        o.timeout_ms = p->timeout_ms;
    o.on_data = req->stream ? on_data : NULL;
    o.on_done = on_http_done;
    o.udata = c;
    c->http = nx_http_client_request(p->http, &o);
    nx_buf_cleanup(&scratch);
    nx_buf_cleanup(&body);
    if (c->http)
        return &c->base;
    c->defer_rc = NX_ECLOSED;
    c->defer_why = "the HTTP client is shutting down";
defer:
    nx_buf_cleanup(&scratch);
    nx_buf_cleanup(&body);
    c->defer = nx_malloc(sizeof *c->defer);
    uv_timer_init(nx_http_client_loop(p->http), c->defer);
    c->defer->data = c;
    uv_timer_start(c->defer, on_defer, 0, 0);
    return &c->base;
}

void nx_llm_call_cancel(struct nx_llm_call *call)
{
    struct single *c = (struct single *)call;

    if (!c || c->cancelled)
        return;
    c->cancelled = true;
    if (c->in_data)
        return; /* on_data stops the transfer when the parser returns */
    if (c->http)
        nx_http_call_cancel(c->http);
    else if (c->defer)
        defer_fire(c, NX_ECANCELED);
}

struct nx_llm_call *nx_llm_start(struct nx_llm_provider *p, const struct nx_llm_request *req,
                                 const struct nx_llm_callbacks *cb)
{
    return p ? p->type->start(p, req, cb) : NULL;
}

bool nx_llm_call_is_answered(const struct nx_llm_call *call)
{
    return call && ((const struct single *)(const void *)call)->is_stream_ended;
}

bool nx_llm_is_sending(const struct nx_llm_call *call)
{
    return call && (!call->is_sending || call->is_sending(call));
}

void nx_llm_cancel(struct nx_llm_call *call)
{
    if (call)
        call->cancel(call);
}
