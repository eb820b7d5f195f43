#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/clock.h"
#include "core/error.h"
#include "core/log.h"
#include "http/sse.h"
#include "mcp/jsonrpc.h"
#include "mcp/mcp.h"
#include "mcp/oauth.h"
#include "mcp/transport.h"
#include "runtime/runtime.h"

/* The Streamable HTTP transport (MCP 2025-03-26 and later): every message is POSTed to the
 * server's URL with `Accept: application/json, text/event-stream`; a request's answer comes back
 * either as one JSON body or as an SSE stream that may carry notifications and server requests
 * before the answer. The session id the server gives in its initialize response
 * (`Mcp-Session-Id`) and the negotiated `MCP-Protocol-Version` go on every later POST; messages
 * sent while the initialize POST is still open wait for it, so they carry the session. Closing
 * sends DELETE for the session.
 *
 * After the handshake a standalone GET stream carries what the server sends outside a request
 * (list_changed, its own requests); it is reopened when it ends, after the server's `retry:`
 * delay, with `Last-Event-ID`. A POST whose SSE stream breaks before the answer, after an event
 * with an id, is resumed the same way: a GET with `Last-Event-ID` on which the answer comes. A
 * server that refuses GET (405, 4xx) simply has no standalone stream. */

#define NOTIFY_TIMEOUT_MS 30000
#define DELETE_TIMEOUT_MS 3000
#define ERROR_BODY_MAX 2048
#define STREAM_TIMEOUT_MS 3600000u /* a standalone GET is reopened at least hourly */
#define RETRY_DEFAULT_MS 1000
#define RETRY_MAX_MS 60000
#define RESUMES_MAX 5 /* GETs in a row that bring nothing new */
#define RETRY_QUIET_MS 250L      /* a quiet stream's reopening waits this, doubled up to 2 s */
#define QUIET_MS 10000u  /* a stream open this long was worth it, data or not */
#define AUTH_TRIES_MAX 3 /* authorizations one message may cause (401, then 403 step-ups) */

enum { MODE_UNKNOWN, MODE_JSON, MODE_SSE };

struct http_tp;

struct post {
    struct http_tp *t;
    struct post *prev, *next;
    struct nx_http_call *call;
    long long id;
    struct nx_buf body;
    struct nx_sse_reader sse;
    int mode;
    bool has_id;
    bool is_initialize;
    bool got_reply;
    bool is_forgotten;
    bool is_too_big;
    bool in_data;     /* inside on_data: on_done must not free */
    bool is_finished; /* on_done ran while in_data */
    bool is_get;        /* a GET: the standalone stream or a resumed one */
    bool is_standalone; /* the standalone GET stream */
    bool saw_event;     /* an event with an id arrived on this stream */
    bool saw_data;      /* an event with data arrived on this stream (not only a priming id) */
    uint64_t opened_ms; /* loop time the request started */
    char *last_event_id;
    int resumes;
    int quiet;          /* streams in a row that ended soon with no data */
    uint32_t timeout_ms;
    char *text;     /* what was POSTed, kept when OAuth may make us send it again */
    int auth_tries; /* authorizations this message caused so far */
};

/* A message waiting for an authorization to finish, to be sent again. */
struct held {
    char *text;
    uint32_t timeout_ms;
    int auth_tries;
};

/* A GET waiting for the server's retry delay. */
struct resume {
    struct http_tp *t;
    struct resume *prev, *next;
    struct nx_timer *timer;
    long long id;
    bool has_id;
    bool is_standalone;
    char *last_event_id;
    int resumes;
    int quiet;
    uint32_t timeout_ms;
};

struct queued {
    json_t *msg;
    uint32_t timeout_ms;
};

struct http_tp {
    struct nx_mcp_link base;
    struct nx_http_client *http;
    char *url;
    struct nx_http_header *headers; /* configured ones, owned strings */
    size_t nheaders;
    char *session_id;
    char version[32];
    struct post *posts;
    struct queued *queue;
    size_t nqueue, cqueue;
    struct nx_http_call *delete_call;
    struct resume *resumes;
    struct nx_mcp_oauth *oauth;         /* borrowed from the manager, or NULL */
    struct nx_mcp_oauth_op *auth_op;    /* an authorization in progress */
    struct held *held;
    size_t nheld;
    uv_loop_t *loop;
    int busy; /* callbacks on the stack */
    bool has_standalone;
    bool wants_standalone;
    bool is_handshaking;
    bool is_closing;
    bool has_reported_closed;
};

static void tp_free(struct http_tp *t)
{
    for (size_t i = 0; i < t->nheaders; i++) {
        free((char *)t->headers[i].name);
        free((char *)t->headers[i].value);
    }
    for (size_t i = 0; i < t->nqueue; i++)
        json_decref(t->queue[i].msg);
    free(t->queue);
    for (size_t i = 0; i < t->nheld; i++)
        free(t->held[i].text);
    free(t->held);
    free(t->headers);
    free(t->url);
    free(t->session_id);
    free(t->base.name);
    free(t);
}

static void maybe_free(struct http_tp *t)
{
    if (t->is_closing && t->busy == 0 && !t->posts && !t->delete_call)
        tp_free(t);
}

static void report_closed(struct http_tp *t, int rc, const char *why)
{
    if (t->has_reported_closed || t->is_closing)
        return;
    t->has_reported_closed = true;
    if (t->base.cb.on_closed)
        t->base.cb.on_closed(rc, why, t->base.udata);
}

static void report_failed(struct http_tp *t, struct post *p, int rc, const char *why)
{
    if (t->is_closing || !p->has_id || p->is_forgotten || p->got_reply)
        return;
    p->is_forgotten = true;
    if (t->base.cb.on_request_failed)
        t->base.cb.on_request_failed(p->id, rc, why, t->base.udata);
}

static void post_free(struct post *p)
{
    struct http_tp *t = p->t;

    if (p->prev)
        p->prev->next = p->next;
    else
        t->posts = p->next;
    if (p->next)
        p->next->prev = p->prev;
    nx_buf_cleanup(&p->body);
    nx_sse_reader_cleanup(&p->sse);
    free(p->last_event_id);
    free(p->text);
    free(p);
}

static void resume_free(struct resume *r)
{
    struct http_tp *t = r->t;

    if (r->prev)
        r->prev->next = r->next;
    else
        t->resumes = r->next;
    if (r->next)
        r->next->prev = r->prev;
    nx_timer_cancel(r->timer);
    free(r->last_event_id);
    free(r);
}

/* One frame (a JSON body or an SSE event's data): each message to the client. */
static int deliver(struct post *p, const char *text, size_t len)
{
    struct http_tp *t = p->t;
    json_t *v;
    char err[160];

    if (t->is_closing)
        return 1;
    if (!(v = nx_jsonrpc_load(text, len, err, sizeof err))) {
        nx_warn("mcp", "server %s: %s", t->base.name, err);
        return 0;
    }
    for (size_t i = 0; i < (json_is_array(v) ? json_array_size(v) : 1); i++) {
        const json_t *m = json_is_array(v) ? json_array_get(v, i) : v;
        const json_t *id = json_object_get(m, "id");

        if (p->has_id && json_is_integer(id) && json_integer_value(id) == p->id &&
            !json_object_get(m, "method"))
            p->got_reply = true;
    }
    nx_mcp_link_deliver(&t->base, text, len);
    json_decref(v);
    /* a resumed GET has done its job once the answer came */
    return t->is_closing || (p->is_get && !p->is_standalone && p->got_reply) ? 1 : 0;
}

static int on_sse_event(const struct nx_sse_event *ev, void *udata)
{
    struct post *p = udata;

    p->saw_data |= ev->data_len > 0;
    if (ev->id && ev->id[0]) {
        p->saw_event = true;
        if (!p->last_event_id || strcmp(p->last_event_id, ev->id) != 0) {
            free(p->last_event_id);
            p->last_event_id = nx_strdup(ev->id);
        }
    }
    if (ev->data_len == 0 || strcmp(ev->event, "message") != 0)
        return 0;
    return deliver(p, ev->data, ev->data_len);
}

static int post_data(const char *data, size_t len, long status, void *udata)
{
    struct post *p = udata;
    struct http_tp *t = p->t;
    int rc = 0;

    if (status < 200 || status >= 300) {
        if (p->body.len < ERROR_BODY_MAX)
            nx_buf_append(&p->body, data, len < ERROR_BODY_MAX ? len : ERROR_BODY_MAX);
        return 0;
    }
    if (p->mode == MODE_UNKNOWN) {
        size_t i = 0;

        while (i < len && (data[i] == ' ' || data[i] == '\t' || data[i] == '\r' || data[i] == '\n'))
            i++;
        if (i == len)
            return 0;
        p->mode = data[i] == '{' || data[i] == '[' ? MODE_JSON : MODE_SSE;
    }
    if (p->mode == MODE_JSON) {
        if (p->body.len + len > t->base.max_frame) {
            p->is_too_big = true;
            return 1;
        }
        nx_buf_append(&p->body, data, len);
        return 0;
    }
    p->in_data = true;
    t->busy++;
    rc = nx_sse_feed(&p->sse, data, len);
    t->busy--;
    p->in_data = false;
    if (rc == NX_ETOOBIG)
        p->is_too_big = true;
    if (p->is_finished) {
        post_free(p);
        maybe_free(t);
        return 1;
    }
    return rc != 0 || t->is_closing;
}

static void flush_queue(struct http_tp *t);
static int call_start(struct http_tp *t, struct post *p, const char *body);
static int post_text(struct http_tp *t, const char *text, uint32_t timeout_ms, int auth_tries);
static struct post *post_new(struct http_tp *t);

/* Once the handshake is over and its POST has ended (so the session id is known): the GET stream
 * for what the server sends on its own. */
static void standalone_start(struct http_tp *t)
{
    struct post *p;

    if (!t->wants_standalone || t->has_standalone || t->is_handshaking || t->is_closing || !t->loop)
        return;
    t->has_standalone = true;
    p = post_new(t);
    p->is_get = p->is_standalone = true;
    call_start(t, p, NULL);
}

static struct post *post_new(struct http_tp *t)
{
    struct post *p = nx_calloc(1, sizeof *p);

    p->t = t;
    nx_buf_init(&p->body);
    nx_sse_reader_init(&p->sse, t->base.max_frame, on_sse_event, p);
    return p;
}

static void on_resume_timer(void *arg)
{
    struct resume *r = arg;
    struct http_tp *t = r->t;
    struct post *p;

    r->timer = NULL;
    p = post_new(t);
    p->is_get = true;
    p->is_standalone = r->is_standalone;
    p->has_id = r->has_id;
    p->id = r->id;
    p->resumes = r->resumes;
    p->quiet = r->quiet;
    p->timeout_ms = r->timeout_ms;
    p->last_event_id = r->last_event_id;
    r->last_event_id = NULL;
    resume_free(r);
    nx_debug("mcp", "server %s: GET %s stream (Last-Event-ID %s)", t->base.name,
             p->is_standalone ? "the standalone" : "a resumed", p->last_event_id ? p->last_event_id : "none");
    if (call_start(t, p, NULL) < 0 && p->has_id && t->base.cb.on_request_failed)
        t->base.cb.on_request_failed(p->id, NX_ECLOSED, "cannot resume the stream", t->base.udata);
}

/* Waits the server's retry delay, then opens a GET (with Last-Event-ID) for p's stream: the
 * standalone one, or a request's answer after its stream broke. Returns false when p is not to
 * be resumed (then the caller reports the failure). */
static bool try_resume(struct http_tp *t, struct post *p)
{
    struct resume *r;
    long delay = p->sse.retry_ms >= 0 ? p->sse.retry_ms : RETRY_DEFAULT_MS;
    int resumes = p->saw_event ? 0 : p->resumes + 1;
    /* Streams in a row that end soon with no data wait longer each time (retry: 0 and a close made
     * a busy loop); one that answers by being polled (new ids, data at last) is still polled. */
    int quiet = !p->saw_data && nx_mono_ms() - p->opened_ms < QUIET_MS ? p->quiet + (p->quiet < 4) : 0;
    delay = quiet && delay < (RETRY_QUIET_MS << (quiet - 1)) ? RETRY_QUIET_MS << (quiet - 1) : delay;
    if (t->is_closing || p->is_forgotten || p->got_reply || !t->loop)
        return false;
    if (!p->is_standalone && (!p->has_id || p->mode != MODE_SSE || !p->last_event_id))
        return false;
    if (resumes >= RESUMES_MAX) {
        nx_warn("mcp", "server %s: %s stream gave nothing %d times; not reopened", t->base.name,
                p->is_standalone ? "the standalone" : "a request's", RESUMES_MAX);
        return false;
    }
    r = nx_calloc(1, sizeof *r);
    r->t = t;
    r->id = p->id;
    r->has_id = p->has_id;
    r->is_standalone = p->is_standalone;
    r->resumes = resumes;
    r->quiet = quiet;
    r->timeout_ms = p->timeout_ms;
    r->last_event_id = p->last_event_id;
    p->last_event_id = NULL;
    r->next = t->resumes;
    if (t->resumes)
        t->resumes->prev = r;
    t->resumes = r;
    r->timer = nx_timer_once(t->loop, (uint64_t)(delay > RETRY_MAX_MS ? RETRY_MAX_MS : delay),
                             on_resume_timer, r);
    return true;
}

/* ---- OAuth: a 401, or a 403 asking for more scope, holds the message, authorizes, resends ---- */

static bool wants_auth(struct http_tp *t, const struct post *p, const struct nx_http_response *res, char *www,
                       size_t wwwlen)
{
    char err[64];

    www[0] = '\0';
    if (!t->oauth || p->is_get || !p->text || (res->status != 401 && res->status != 403))
        return false;
    nx_http_response_header(res, "WWW-Authenticate", www, wwwlen);
    if (res->status == 403 &&
        (nx_mcp_oauth_www_param(www, "error", err, sizeof err) < 0 || strcmp(err, "insufficient_scope") != 0))
        return false;
    if (p->auth_tries >= AUTH_TRIES_MAX) {
        nx_warn("mcp", "server %s: still HTTP %ld after %d authorizations; giving up on this message",
                t->base.name, res->status, AUTH_TRIES_MAX);
        return false;
    }
    return true;
}

static void hold(struct http_tp *t, struct post *p)
{
    t->held = nx_realloc(t->held, (t->nheld + 1) * sizeof *t->held);
    t->held[t->nheld].text = p->text;
    t->held[t->nheld].timeout_ms = p->timeout_ms;
    t->held[t->nheld++].auth_tries = p->auth_tries + 1;
    p->text = NULL;
    p->is_forgotten = true; /* not failed: it goes again */
    if (p->is_initialize)
        t->is_handshaking = false;
}

static void on_auth_done(int rc, const char *err, void *udata)
{
    struct http_tp *t = udata;
    struct held *held = t->held;
    size_t n = t->nheld;
    char why[700];

    t->auth_op = NULL;
    t->held = NULL;
    t->nheld = 0;
    t->busy++;
    snprintf(why, sizeof why, "OAuth authorization failed: %s", err ? err : nx_strerror(rc));
    for (size_t i = 0; i < n; i++) {
        json_t *m = json_loads(held[i].text, 0, NULL);
        const json_t *id = json_object_get(m, "id");
        int src = rc;

        if (rc == 0 && !t->is_closing)
            src = post_text(t, held[i].text, held[i].timeout_ms, held[i].auth_tries);
        if (src < 0 && !t->is_closing && json_is_integer(id) && json_object_get(m, "method") &&
            t->base.cb.on_request_failed)
            t->base.cb.on_request_failed(json_integer_value(id), rc < 0 ? NX_EPERM : src,
                                         rc < 0 ? why : "send failed", t->base.udata);
        json_decref(m);
        free(held[i].text);
    }
    free(held);
    if (!t->is_handshaking && !t->auth_op && t->nqueue > 0 && !t->is_closing)
        flush_queue(t);
    t->busy--;
    maybe_free(t);
}

static void start_auth(struct http_tp *t, long status, const char *www)
{
    if (t->auth_op || t->is_closing)
        return; /* the one in progress serves this message too */
    if (!(t->auth_op = nx_mcp_oauth_challenge(t->oauth, status, www, on_auth_done, t)))
        on_auth_done(NX_EBUSY, "another authorization of this server is in progress", t);
}

static void post_done(int rc, const struct nx_http_response *res, const char *err, void *udata)
{
    struct post *p = udata;
    struct http_tp *t = p->t;
    char why[ERROR_BODY_MAX + 64];
    char www[2048];
    int sid_len;

    p->call = NULL;
    if (p->in_data) {
        p->is_finished = true; /* cancelled from inside its own on_data: freed there */
        return;
    }
    t->busy++;
    if (p->is_initialize)
        t->is_handshaking = false;
    if (t->is_closing) {
        /* quiet */
    } else if (rc == 0 && res->status >= 200 && res->status < 300) {
        if (!t->session_id && (sid_len = nx_http_response_header(res, "Mcp-Session-Id", NULL, 0)) > 0) {
            t->session_id = nx_malloc((size_t)sid_len + 1); /* whole: the spec sets no length */
            nx_http_response_header(res, "Mcp-Session-Id", t->session_id, (size_t)sid_len + 1);
        }
        if (p->mode == MODE_JSON && p->body.len > 0)
            deliver(p, p->body.data, p->body.len);
        if (!try_resume(t, p))
            report_failed(t, p, NX_EPROTO, "the server's reply ended without an answer");
    } else if (rc == 0 && wants_auth(t, p, res, www, sizeof www)) {
        hold(t, p);
        start_auth(t, res->status, www);
    } else if (rc == 0 && res->status == 404 && t->session_id && !p->is_get) {
        report_failed(t, p, NX_ECLOSED, "session expired");
        report_closed(t, NX_ECLOSED, "session expired (HTTP 404)");
    } else if (rc == 0) {
        snprintf(why, sizeof why, "HTTP %ld%s%.*s", res->status, p->body.len ? ": " : "",
                 (int)p->body.len, nx_buf_cstr(&p->body));
        if (p->is_standalone)
            nx_debug("mcp", "server %s: no standalone stream: %s", t->base.name, why);
        else if (p->has_id)
            report_failed(t, p, NX_EHTTP, why);
        else
            nx_warn("mcp", "server %s refused a message: %s", t->base.name, why);
    } else if (p->is_too_big) {
        snprintf(why, sizeof why, "a message over %zu bytes", t->base.max_frame);
        nx_warn("mcp", "server %s: %s", t->base.name, why);
        report_failed(t, p, NX_ETOOBIG, why);
        if (p->is_standalone)
            try_resume(t, p);
    } else if (!p->is_forgotten && !try_resume(t, p)) {
        snprintf(why, sizeof why, "%s", err ? err : nx_strerror(rc));
        if (p->has_id)
            report_failed(t, p, rc, why);
        else
            nx_warn("mcp", "server %s: %s failed: %s", t->base.name,
                    p->is_standalone ? "the standalone stream" : "sending a message", why);
    }
    post_free(p);
    if (!t->is_handshaking && !t->auth_op && t->nqueue > 0 && !t->is_closing)
        flush_queue(t);
    standalone_start(t);
    t->busy--;
    maybe_free(t);
}

/* POST: JSON in, JSON or SSE out. GET: SSE only, with Last-Event-ID when resuming. */
static size_t build_headers(struct http_tp *t, const struct post *p, struct nx_http_header *h, size_t cap)
{
    size_t n = 0;

    if (p && p->is_get) {
        h[n++] = (struct nx_http_header){"Accept", "text/event-stream"};
        if (p->last_event_id)
            h[n++] = (struct nx_http_header){"Last-Event-ID", p->last_event_id};
    } else if (p) {
        h[n++] = (struct nx_http_header){"Content-Type", "application/json"};
        h[n++] = (struct nx_http_header){"Accept", "application/json, text/event-stream"};
    }
    if (t->session_id)
        h[n++] = (struct nx_http_header){"Mcp-Session-Id", t->session_id};
    if (t->version[0])
        h[n++] = (struct nx_http_header){"MCP-Protocol-Version", t->version};
    if (nx_mcp_oauth_authorization(t->oauth))
        h[n++] = (struct nx_http_header){"Authorization", nx_mcp_oauth_authorization(t->oauth)};
    for (size_t i = 0; i < t->nheaders && n < cap; i++)
        h[n++] = t->headers[i];
    return n;
}

/* Starts p's HTTP call and links it; on failure p is freed and NX_ECLOSED returned. */
static int call_start(struct http_tp *t, struct post *p, const char *body)
{
    struct nx_http_header *h = nx_calloc(t->nheaders + 5, sizeof *h);
    struct nx_http_call_opts o;

    memset(&o, 0, sizeof o);
    o.method = p->is_get ? "GET" : "POST";
    o.url = t->url;
    o.headers = h;
    o.nheaders = build_headers(t, p, h, t->nheaders + 5);
    o.body = body;
    o.body_len = body ? strlen(body) : 0;
    o.timeout_ms = p->is_standalone ? STREAM_TIMEOUT_MS
                   : p->has_id      ? (p->timeout_ms ? p->timeout_ms + 5000 : 0)
                                    : NOTIFY_TIMEOUT_MS;
    o.max_response_bytes = t->base.max_frame * 16 > (64u << 20) ? t->base.max_frame * 16 : (64u << 20);
    o.on_data = post_data;
    o.on_done = post_done;
    o.udata = p;
    p->opened_ms = nx_mono_ms();
    p->call = nx_http_client_request(t->http, &o);
    free(h);
    if (!p->call) {
        nx_buf_cleanup(&p->body);
        nx_sse_reader_cleanup(&p->sse);
        free(p->last_event_id);
        free(p);
        return NX_ECLOSED;
    }
    p->next = t->posts;
    if (t->posts)
        t->posts->prev = p;
    t->posts = p;
    return 0;
}

/* POSTs text (one message); auth_tries carries over when it is sent again after an
 * authorization. */
static int post_text(struct http_tp *t, const char *text, uint32_t timeout_ms, int auth_tries)
{
    struct post *p;
    json_t *msg = json_loads(text, 0, NULL);
    const json_t *id = json_object_get(msg, "id");
    const char *method = json_string_value(json_object_get(msg, "method"));
    bool is_initialize;
    int rc;

    p = post_new(t);
    p->timeout_ms = timeout_ms;
    p->auth_tries = auth_tries;
    if (method && json_is_integer(id)) {
        p->has_id = true;
        p->id = json_integer_value(id);
        p->is_initialize = strcmp(method, "initialize") == 0;
    }
    json_decref(msg);
    if (t->oauth)
        p->text = nx_strdup(text);
    is_initialize = p->is_initialize;
    rc = call_start(t, p, text);
    if (rc == 0 && is_initialize)
        t->is_handshaking = true;
    return rc;
}

static int post_start(struct http_tp *t, const json_t *msg, uint32_t timeout_ms)
{
    char *text;
    int rc;

    if (!(text = json_dumps(msg, JSON_COMPACT)))
        return NX_EINVAL;
    rc = post_text(t, text, timeout_ms, 0);
    free(text);
    return rc;
}

static void flush_queue(struct http_tp *t)
{
    struct queued *q = t->queue;
    size_t n = t->nqueue;

    t->queue = NULL;
    t->nqueue = t->cqueue = 0;
    for (size_t i = 0; i < n; i++) {
        const json_t *id = json_object_get(q[i].msg, "id");
        int rc = t->is_closing ? NX_ECLOSED : post_start(t, q[i].msg, q[i].timeout_ms);

        if (rc < 0 && json_is_integer(id) && json_object_get(q[i].msg, "method") &&
            t->base.cb.on_request_failed && !t->is_closing)
            t->base.cb.on_request_failed(json_integer_value(id), rc, nx_strerror(rc), t->base.udata);
        json_decref(q[i].msg);
    }
    free(q);
}

static int tp_start(struct nx_mcp_link *base)
{
    (void)base;
    return 0; /* nothing to open: the first POST (initialize) starts the session */
}

static int tp_send(struct nx_mcp_link *base, const json_t *msg, uint32_t timeout_ms)
{
    struct http_tp *t = (struct http_tp *)base;

    if (t->is_closing || t->has_reported_closed)
        return NX_ECLOSED;
    if (t->is_handshaking || t->auth_op) {
        if (t->nqueue == t->cqueue) {
            t->cqueue = t->cqueue ? t->cqueue * 2 : 8;
            t->queue = nx_realloc(t->queue, t->cqueue * sizeof *t->queue);
        }
        t->queue[t->nqueue].msg = json_deep_copy(msg);
        t->queue[t->nqueue++].timeout_ms = timeout_ms;
        return 0;
    }
    return post_start(t, msg, timeout_ms);
}

static void tp_forget(struct nx_mcp_link *base, long long id)
{
    struct http_tp *t = (struct http_tp *)base;

    for (struct post *p = t->posts; p; p = p->next) {
        if (p->has_id && p->id == id && p->call && !p->is_finished) {
            p->is_forgotten = true;
            nx_http_call_cancel(p->call); /* post_done runs now (or after its on_data) */
            return;
        }
    }
    for (struct resume *r = t->resumes; r; r = r->next) {
        if (r->has_id && r->id == id) {
            resume_free(r);
            return;
        }
    }
    /* still queued behind the handshake: drop it there */
    for (size_t i = 0; i < t->nqueue; i++) {
        const json_t *qid = json_object_get(t->queue[i].msg, "id");

        if (json_is_integer(qid) && json_integer_value(qid) == id &&
            json_object_get(t->queue[i].msg, "method")) {
            json_decref(t->queue[i].msg);
            memmove(&t->queue[i], &t->queue[i + 1], (t->nqueue - i - 1) * sizeof *t->queue);
            t->nqueue--;
            return;
        }
    }
}

static void tp_set_version(struct nx_mcp_link *base, const char *v)
{
    struct http_tp *t = (struct http_tp *)base;

    snprintf(t->version, sizeof t->version, "%s", v ? v : "");
    t->wants_standalone = true;
    standalone_start(t);
}

static void delete_done(int rc, const struct nx_http_response *res, const char *err, void *udata)
{
    struct http_tp *t = udata;

    nx_debug("mcp", "server %s: DELETE session: %s (HTTP %ld)", t->base.name,
             rc == 0 ? "done" : err ? err : nx_strerror(rc), res->status);
    t->delete_call = NULL;
    maybe_free(t);
}

static void tp_close(struct nx_mcp_link *base)
{
    struct http_tp *t = (struct http_tp *)base;
    struct nx_http_header *h;
    struct nx_http_call_opts o;

    if (!t || t->is_closing)
        return;
    t->is_closing = true;
    t->busy++;
    nx_mcp_oauth_op_cancel(t->auth_op);
    t->auth_op = NULL;
    while (t->resumes)
        resume_free(t->resumes);
    for (struct post *p = t->posts, *next; p; p = next) {
        next = p->next;
        if (p->call && !p->is_finished)
            nx_http_call_cancel(p->call);
    }
    if (t->session_id) {
        h = nx_calloc(t->nheaders + 5, sizeof *h);
        memset(&o, 0, sizeof o);
        o.method = "DELETE";
        o.url = t->url;
        o.headers = h;
        o.nheaders = build_headers(t, NULL, h, t->nheaders + 5);
        o.timeout_ms = DELETE_TIMEOUT_MS;
        o.on_done = delete_done;
        o.udata = t;
        t->delete_call = nx_http_client_request(t->http, &o);
        free(h);
    }
    t->busy--;
    maybe_free(t);
}

static const struct nx_mcp_link_vt http_vt = {
    .kind = "streamable_http",
    .start = tp_start,
    .send = tp_send,
    .forget = tp_forget,
    .set_protocol_version = tp_set_version,
    .close = tp_close,
};

int nx_mcp_http_new(struct nx_http_client *http, const struct nx_mcp_server_conf *conf,
                    const struct nx_mcp_link_opts *opts, struct nx_mcp_link **out)
{
    const char *bearer = json_string_value(json_object_get(conf ? conf->extra : NULL, "bearer"));
    struct http_tp *t;
    bool has_auth = false;

    if (!http || !conf || !conf->url || !opts)
        return NX_EINVAL;
    if (strncmp(conf->url, "http://", 7) != 0 && strncmp(conf->url, "https://", 8) != 0)
        return NX_EINVAL;
    t = nx_calloc(1, sizeof *t);
    t->base.vt = &http_vt;
    t->base.cb = opts->cb;
    t->base.udata = opts->udata;
    t->base.name = nx_strdup(opts->name ? opts->name : conf->name ? conf->name : "?");
    t->base.max_frame = opts->max_frame ? opts->max_frame : NX_MCP_MAX_FRAME_DEFAULT;
    t->http = http;
    t->loop = nx_http_client_loop(http);
    t->url = nx_strdup(conf->url);
    t->oauth = opts->oauth;
    t->headers = nx_calloc(conf->headers.n + 1, sizeof *t->headers);
    for (size_t i = 0; i < conf->headers.n; i++) {
        t->headers[i].name = nx_strdup(conf->headers.keys[i]);
        t->headers[i].value = nx_strdup(conf->headers.vals[i]);
        has_auth = has_auth || strcasecmp(conf->headers.keys[i], "Authorization") == 0;
    }
    t->nheaders = conf->headers.n;
    /* `bearer: TOKEN` (a key of the server's entry) is Authorization: Bearer TOKEN, unless
     * headers already set Authorization */
    if (bearer && bearer[0] && !has_auth) {
        struct nx_buf b = NX_BUF_INIT;

        nx_buf_printf(&b, "Bearer %s", bearer);
        t->headers[t->nheaders].name = nx_strdup("Authorization");
        t->headers[t->nheaders++].value = nx_buf_steal(&b);
    }
    *out = &t->base;
    return 0;
}
