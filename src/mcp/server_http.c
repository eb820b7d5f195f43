/* The MCP server over Streamable HTTP (2025-11-25 basic/transports), at /mcp on the gateway
 * listener.
 *
 * POST: one JSON-RPC message (or a 2025-03-26 batch). Notifications and responses only: 202.
 * Requests all answered at once (initialize, tools/list, errors...): one JSON body. Otherwise
 * (a tools/call still running) an SSE stream: a priming event (an id, `retry:`, empty data),
 * then progress and log notifications and finally the response, each with an id
 * "<stream>-<seq>"; the stream ends after the last response. A client that goes away does not
 * cancel (notifications/cancelled does): a GET with Last-Event-ID replays what it missed and
 * follows the stream to its end. GET without it: the session's stream for server messages.
 * DELETE ends the session.
 * Sessions: Mcp-Session-Id (128 random bits, hex) issued with the initialize result, required
 * after it (400 without, 404 unknown or expired); capped (max_sessions) and expired when idle.
 * MCP-Protocol-Version must be one we speak (400). Security: an Origin that is not local, the
 * listener's own, in gateway.yaml cors.allowed_origins or in http.allowed_origins gets 403 from
 * the listener's checks (http/origin.c); on a loopback listener so does a Host that is not
 * localhost (DNS rebinding), here, token or not; the bearer token is the gateway's auth_token, or the one in
 * $auth_token_env, compared in constant time. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/clock.h"
#include "core/error.h"
#include "core/log.h"
#include "mcp/jsonrpc.h"
#include "mcp/server.h"

#define SWEEP_MS 5000
#define KEEPALIVE_MS 25000
#define LOG_MAX_EVENTS 512
#define LOG_MAX_BYTES (256u << 10)
#define KEEP_DONE_STREAMS 16
#define PENDING_MAX (16u << 20)

struct hsess;

struct ev {
    uint64_t seq;
    char *data; /* the whole SSE event text */
    size_t len;
};

/* What one POST (or the GET stream) is answered with: the `origin` the core sends to. */
struct hstream {
    struct hsess *hs;
    uint64_t sid;
    struct nx_http_req *req;  /* the live connection, or NULL */
    bool is_get;
    bool is_batch;
    bool can_sse;
    bool is_sse;              /* answering as SSE */
    bool is_fed;
    bool is_complete;
    size_t expected, got;
    json_t *finals;           /* before SSE starts: the answers */
    json_t *early;            /* before SSE starts: notifications */
    struct ev *log;           /* SSE events sent, for Last-Event-ID */
    size_t nlog, log_bytes;
    uint64_t seq;
    struct hstream *next, *prev;
};

struct hsess {
    struct nx_mcp_httpd *h;
    char id[33];
    struct nx_mcp_session *sess;
    uint64_t last_used_ms;
    uint64_t next_sid;
    struct hstream *streams;
    struct hstream *get;      /* the live GET stream (also in streams) */
    struct hsess *next, *prev;
};

struct nx_mcp_httpd {
    uv_loop_t *loop;
    struct nx_mcp_server *srv;
    const struct nx_mcp_srv_conf *conf;
    const char *const *token_ptr;
    char *own_token;          /* from auth_token_env */
    nx_mcp_authorize_fn authorize;
    bool is_loopback;
    bool is_stopping;
    struct hsess *sessions;
    size_t nsessions;
    uv_timer_t sweep;
    uint64_t last_keepalive_ms;
};

/* ---- plain answers ---- */

static void respond_rpc_error(struct nx_http_req *req, int status, int code, const char *msg)
{
    json_t *e = nx_jsonrpc_error_new(NULL, code, msg);
    nx_http_respond_json(req, status, e);
    json_decref(e);
}

/* ---- streams ---- */

static void stream_write_raw(struct hstream *st, const char *data, size_t len)
{
    if (!st->req)
        return;
    if (nx_http_stream_write(st->req, data, len) > PENDING_MAX) {
        nx_warn("mcp-server", "session %.8s…: client not reading its stream; dropping the connection",
                st->hs->id);
        nx_http_req_on_abort(st->req, NULL, NULL);
        nx_http_stream_end(st->req);
        st->req = NULL;
    }
}

static void log_event(struct hstream *st, uint64_t seq, const char *data, size_t len)
{
    while (st->nlog && (st->nlog >= LOG_MAX_EVENTS || st->log_bytes + len > LOG_MAX_BYTES)) {
        st->log_bytes -= st->log[0].len;
        free(st->log[0].data);
        memmove(st->log, st->log + 1, (st->nlog - 1) * sizeof *st->log);
        st->nlog--;
    }
    if (!st->nlog || (st->nlog & (st->nlog - 1)) == 0)
        st->log = nx_realloc(st->log, (st->nlog ? st->nlog * 2 : 4) * sizeof *st->log);
    st->log[st->nlog].seq = seq;
    st->log[st->nlog].data = nx_strndup(data, len);
    st->log[st->nlog].len = len;
    st->nlog++;
    st->log_bytes += len;
}

static void log_clear(struct hstream *st)
{
    for (size_t i = 0; i < st->nlog; i++)
        free(st->log[i].data);
    free(st->log);
    st->log = NULL;
    st->nlog = st->log_bytes = 0;
}

static void sse_event(struct hstream *st, const json_t *msg)
{
    struct nx_buf b = NX_BUF_INIT;
    char *s = json_dumps(msg, JSON_COMPACT);
    uint64_t seq = ++st->seq;
    nx_buf_printf(&b, "id: %llu-%llu\nevent: message\ndata: %s\n\n", (unsigned long long)st->sid,
                  (unsigned long long)seq, s);
    free(s);
    log_event(st, seq, b.data, b.len);
    stream_write_raw(st, b.data, b.len);
    nx_buf_cleanup(&b);
}

static void on_stream_abort(void *arg)
{
    struct hstream *st = arg;
    st->req = NULL; /* the calls go on: notifications/cancelled cancels, a disconnect does not */
    if (st->is_get && st->hs->get == st)
        st->hs->get = NULL;
}

static void stream_free(struct hstream *st)
{
    struct hsess *hs = st->hs;
    if (st->req) {
        nx_http_req_on_abort(st->req, NULL, NULL);
        if (st->is_sse || st->is_get)
            nx_http_stream_end(st->req);
        else
            nx_http_respond(st->req, 503, "application/json", "{}", 2);
    }
    if (hs->get == st)
        hs->get = NULL;
    if (st->prev)
        st->prev->next = st->next;
    else
        hs->streams = st->next;
    if (st->next)
        st->next->prev = st->prev;
    log_clear(st);
    json_decref(st->finals);
    json_decref(st->early);
    free(st);
}

static struct hstream *stream_new(struct hsess *hs, struct nx_http_req *req)
{
    struct hstream *st = nx_calloc(1, sizeof *st);
    st->hs = hs;
    st->sid = ++hs->next_sid;
    st->req = req;
    st->finals = json_array();
    st->early = json_array();
    st->next = hs->streams;
    if (hs->streams)
        hs->streams->prev = st;
    hs->streams = st;
    return st;
}

/* Keeps the last few finished SSE streams (for Last-Event-ID); frees older ones. */
static void prune_done(struct hsess *hs)
{
    size_t kept = 0;
    struct hstream *st = hs->streams, *next;
    for (; st; st = next) {
        next = st->next;
        if (!st->is_complete || st->req)
            continue;
        if (++kept > KEEP_DONE_STREAMS || !st->is_sse)
            stream_free(st);
    }
}

static void sse_begin(struct hstream *st)
{
    struct nx_mcp_httpd *h = st->hs->h;
    char buf[96];
    st->is_sse = true;
    nx_http_req_add_header(st->req, "cache-control", "no-cache");
    nx_http_req_add_header(st->req, "mcp-session-id", st->hs->id);
    nx_http_stream_begin(st->req, 200, "text/event-stream");
    /* The priming event: an id to resume from, and how long to wait before reconnecting. */
    int n = snprintf(buf, sizeof buf, "id: %llu-0\nretry: %u\ndata: \n\n", (unsigned long long)st->sid,
                     (unsigned)h->conf->http.sse_retry_ms);
    log_event(st, 0, buf, (size_t)n);
    stream_write_raw(st, buf, (size_t)n);
}

static void stream_maybe_complete(struct hstream *st)
{
    if (!st->is_fed || st->got < st->expected || st->is_complete)
        return;
    st->is_complete = true;
    if (st->is_sse) {
        if (st->req) { /* delivered: nothing to replay (a Last-Event-ID just ends at once) */
            nx_http_req_on_abort(st->req, NULL, NULL);
            nx_http_stream_end(st->req);
            st->req = NULL;
            log_clear(st);
        }
    } else if (st->req) { /* JSON, answered later: the client asked for JSON only */
        nx_http_req_on_abort(st->req, NULL, NULL);
        if (json_array_size(st->finals) == 0)
            nx_http_respond(st->req, 202, NULL, NULL, 0);
        else
            nx_http_respond_json(st->req, 200, st->is_batch ? st->finals : json_array_get(st->finals, 0));
        st->req = NULL;
    }
    prune_done(st->hs);
}

static void on_send(void *udata, void *origin, const json_t *msg, bool is_final)
{
    struct hsess *hs = udata;
    struct hstream *st = origin;
    if (!st) { /* session-wide: on the GET stream if one is open */
        if (hs->get && msg)
            sse_event(hs->get, msg);
        return;
    }
    if (is_final)
        st->got++;
    if (msg) {
        if (st->is_sse)
            sse_event(st, msg);
        else if (is_final)
            json_array_append(st->finals, (json_t *)msg);
        else if (!st->is_fed)
            json_array_append(st->early, (json_t *)msg);
    }
    stream_maybe_complete(st);
}

/* ---- sessions ---- */

static void session_free(struct hsess *hs)
{
    struct nx_mcp_httpd *h = hs->h;
    nx_mcp_session_free(hs->sess); /* nothing is sent after this */
    while (hs->streams)
        stream_free(hs->streams);
    if (hs->prev)
        hs->prev->next = hs->next;
    else
        h->sessions = hs->next;
    if (hs->next)
        hs->next->prev = hs->prev;
    h->nsessions--;
    free(hs);
}

static bool ct_equal(const char *a, size_t alen, const char *b)
{
    size_t blen = strlen(b);
    unsigned char d = (unsigned char)(alen != blen);
    for (size_t i = 0; i < blen; i++)
        d |= (unsigned char)(b[i] ^ (i < alen ? a[i] : 0));
    return d == 0;
}

static struct hsess *session_find(struct nx_mcp_httpd *h, const char *id, size_t len)
{
    for (struct hsess *hs = h->sessions; hs; hs = hs->next) {
        if (ct_equal(id, len, hs->id))
            return hs;
    }
    return NULL;
}

static bool session_is_busy(const struct hsess *hs)
{
    if (nx_mcp_session_in_flight(hs->sess))
        return true;
    for (const struct hstream *st = hs->streams; st; st = st->next) {
        if (st->req)
            return true;
    }
    return false;
}

static struct hsess *session_new(struct nx_mcp_httpd *h)
{
    if (h->nsessions >= h->conf->http.max_sessions) {
        /* Make room by ending the longest-idle session that has nothing running; of sessions
         * last used in the same millisecond, the oldest (the list runs newest first). */
        struct hsess *victim = NULL;
        for (struct hsess *hs = h->sessions; hs; hs = hs->next) {
            if (!session_is_busy(hs) && (!victim || hs->last_used_ms <= victim->last_used_ms))
                victim = hs;
        }
        if (!victim)
            return NULL;
        nx_info("mcp-server", "session cap (%u) reached: ending idle session %.8s…",
                h->conf->http.max_sessions, victim->id);
        session_free(victim);
    }
    unsigned char rnd[16];
    if (getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd)
        return NULL;
    struct hsess *hs = nx_calloc(1, sizeof *hs);
    for (size_t i = 0; i < sizeof rnd; i++)
        snprintf(hs->id + 2 * i, 3, "%02x", rnd[i]);
    hs->h = h;
    hs->last_used_ms = nx_mono_ms();
    struct nx_mcp_session_io io = {.send = on_send, .udata = hs};
    hs->sess = nx_mcp_session_new(h->srv, &io);
    hs->next = h->sessions;
    if (h->sessions)
        h->sessions->prev = hs;
    h->sessions = hs;
    h->nsessions++;
    return hs;
}

static void on_sweep(uv_timer_t *t)
{
    struct nx_mcp_httpd *h = t->data;
    uint64_t now = nx_mono_ms();
    struct hsess *hs = h->sessions, *next;
    bool keepalive = now - h->last_keepalive_ms >= KEEPALIVE_MS;
    if (keepalive)
        h->last_keepalive_ms = now;
    for (; hs; hs = next) {
        next = hs->next;
        if (!session_is_busy(hs) && now - hs->last_used_ms > h->conf->http.session_idle_timeout_ms) {
            nx_info("mcp-server", "session %.8s… expired after %u s idle", hs->id,
                    h->conf->http.session_idle_timeout_ms / 1000);
            session_free(hs);
            continue;
        }
        for (struct hstream *st = hs->streams; keepalive && st; st = st->next) {
            if (st->req && (st->is_sse || st->is_get))
                stream_write_raw(st, ": keepalive\n\n", 13);
        }
        if (session_is_busy(hs))
            hs->last_used_ms = now;
    }
}

/* ---- request checks ---- */

/* http.allowed_origins, for the listener's web-page checks (http/origin.c), which decide on
 * Origin with the gateway's cors.allowed_origins, local pages and this list together. */
static bool origin_listed(void *udata, const char *o, size_t len)
{
    const struct nx_mcp_httpd *h = udata;
    for (char *const *a = h->conf->http.allowed_origins; a && *a; a++) {
        if (strlen(*a) == len && strncasecmp(*a, o, len) == 0)
            return true;
    }
    return false;
}

/* Host, bearer token (Origin: the listener's checks, before any route). Answers and returns
 * false when refused. */
static bool admitted(struct nx_mcp_httpd *h, struct nx_http_req *req)
{
    size_t len = 0;
    const char *v;
    if (h->is_stopping) {
        respond_rpc_error(req, 503, -32000, "Service Unavailable: shutting down");
        return false;
    }
    if (h->is_loopback && (v = nx_http_req_header(req, "host", &len)) &&
        !nx_http_authority_is_loopback(v, len)) {
        nx_warn("mcp-server", "refused a request with Host %.*s on a loopback listener (DNS rebinding?)",
                (int)(len > 100 ? 100 : len), v);
        respond_rpc_error(req, 403, -32000, "Forbidden: Host not allowed");
        return false;
    }
    const char *token = h->own_token ? h->own_token : h->token_ptr ? *h->token_ptr : NULL;
    if (token && *token && !(h->authorize && h->authorize(req, token))) {
        nx_http_req_add_header(req, "www-authenticate", "Bearer realm=\"nexo\"");
        respond_rpc_error(req, 401, -32001, "Unauthorized: Authorization: Bearer <token> required");
        return false;
    }
    return true;
}

static bool has_header(const struct nx_http_req *req, const char *name)
{
    size_t len = 0;
    return nx_http_req_header(req, name, &len) != NULL;
}

static bool header_has(const struct nx_http_req *req, const char *name, const char *what)
{
    size_t len = 0;
    const char *v = nx_http_req_header(req, name, &len);
    size_t n = strlen(what);
    for (size_t i = 0; v && i + n <= len; i++) {
        if (strncasecmp(v + i, what, n) == 0)
            return true;
    }
    return false;
}

/* Mcp-Session-Id and MCP-Protocol-Version on a request after initialize. */
static struct hsess *session_of(struct nx_mcp_httpd *h, struct nx_http_req *req)
{
    size_t len = 0;
    const char *id = nx_http_req_header(req, "mcp-session-id", &len);
    if (!id) {
        respond_rpc_error(req, 400, -32000, "Bad Request: Mcp-Session-Id header is required");
        return NULL;
    }
    struct hsess *hs = session_find(h, id, len);
    if (!hs) {
        respond_rpc_error(req, 404, -32001, "Session not found");
        return NULL;
    }
    const char *pv = nx_http_req_header(req, "mcp-protocol-version", &len);
    if (pv) {
        char ver[32];
        snprintf(ver, sizeof ver, "%.*s", (int)(len < sizeof ver ? len : sizeof ver - 1), pv);
        if (!nx_mcp_server_version_supported(ver)) {
            respond_rpc_error(req, 400, -32000, "Bad Request: unsupported MCP-Protocol-Version");
            return NULL;
        }
    }
    hs->last_used_ms = nx_mono_ms();
    return hs;
}

/* ---- POST ---- */

static void on_post(struct nx_mcp_httpd *h, struct nx_http_req *req)
{
    size_t len = 0;
    const char *body = nx_http_req_body(req, &len);
    char err[200];

    bool can_sse = header_has(req, "accept", "text/event-stream") || header_has(req, "accept", "*/*");
    bool can_json = header_has(req, "accept", "application/json") || header_has(req, "accept", "*/*") ||
                    !has_header(req, "accept");
    if (!can_sse && !can_json) {
        respond_rpc_error(req, 406, -32000,
                          "Not Acceptable: Accept must include application/json and text/event-stream");
        return;
    }
    if (has_header(req, "content-type") && !header_has(req, "content-type", "json")) {
        respond_rpc_error(req, 415, -32000, "Unsupported Media Type: Content-Type must be application/json");
        return;
    }
    if (len > h->conf->max_frame) {
        respond_rpc_error(req, 413, NX_JSONRPC_INVALID_REQUEST, "message too large");
        return;
    }
    json_t *v = nx_jsonrpc_load(body ? body : "", len, err, sizeof err);
    if (!v) {
        char msg[256];
        snprintf(msg, sizeof msg, "Parse error: %s", err);
        respond_rpc_error(req, 400, NX_JSONRPC_PARSE_ERROR, msg);
        return;
    }
    struct hsess *hs = NULL;
    bool is_new = false;
    if (nx_mcp_is_initialize(v) && !has_header(req, "mcp-session-id")) {
        if (json_is_array(v)) {
            respond_rpc_error(req, 400, NX_JSONRPC_INVALID_REQUEST, "initialize cannot be part of a batch");
            goto out;
        }
        if (!(hs = session_new(h))) {
            respond_rpc_error(req, 503, -32000, "Service Unavailable: too many MCP sessions");
            goto out;
        }
        is_new = true;
    } else if (!(hs = session_of(h, req))) {
        goto out;
    }
    struct hstream *st = stream_new(hs, req);
    st->is_batch = json_is_array(v) && nx_mcp_session_accepts_batch(hs->sess) && json_array_size(v);
    st->can_sse = can_sse;
    st->expected = nx_mcp_session_feed_json(hs->sess, v, st);
    st->is_fed = true;
    if (is_new && !nx_mcp_session_protocol(hs->sess)) { /* initialize refused: no session */
        nx_http_respond_json(req, 400, json_array_get(st->finals, 0));
        st->req = NULL;
        session_free(hs);
        goto out;
    }
    if (st->expected == 0) { /* notifications and responses only */
        st->req = NULL;
        nx_http_respond(req, 202, NULL, NULL, 0);
        stream_free(st);
    } else if (st->got >= st->expected) { /* all answered: one JSON body */
        st->is_complete = true;
        st->req = NULL;
        nx_http_req_add_header(req, "mcp-session-id", hs->id);
        if (json_array_size(st->finals) == 0)
            nx_http_respond(req, 202, NULL, NULL, 0);
        else
            nx_http_respond_json(req, 200, st->is_batch ? st->finals : json_array_get(st->finals, 0));
        stream_free(st);
    } else if (can_sse) { /* something still running: stream what comes */
        sse_begin(st);
        size_t i;
        json_t *m;
        json_array_foreach(st->early, i, m) sse_event(st, m);
        json_array_foreach(st->finals, i, m) sse_event(st, m);
        json_array_clear(st->early);
        json_array_clear(st->finals);
        nx_http_req_on_abort(req, on_stream_abort, st);
    } else {
        nx_http_req_add_header(req, "mcp-session-id", hs->id);
        nx_http_req_on_abort(req, on_stream_abort, st);
    }
out:
    json_decref(v);
}

/* ---- GET ---- */

static struct hstream *find_stream(struct hsess *hs, uint64_t sid)
{
    for (struct hstream *st = hs->streams; st; st = st->next) {
        if (st->sid == sid)
            return st;
    }
    return NULL;
}

/* Last-Event-ID "<stream>-<seq>": replay what followed, then follow the stream live. */
static bool resume(struct hsess *hs, struct nx_http_req *req, const char *leid, size_t len)
{
    char buf[64];
    unsigned long long sid, seq;
    char tail;
    snprintf(buf, sizeof buf, "%.*s", (int)(len < sizeof buf ? len : sizeof buf - 1), leid);
    if (sscanf(buf, "%llu-%llu%c", &sid, &seq, &tail) != 2)
        return false;
    struct hstream *st = find_stream(hs, sid);
    if (!st || !st->is_sse)
        return false;
    if (st->req) { /* the old connection is superseded */
        nx_http_req_on_abort(st->req, NULL, NULL);
        nx_http_stream_end(st->req);
        st->req = NULL;
    }
    nx_http_req_add_header(req, "cache-control", "no-cache");
    nx_http_stream_begin(req, 200, "text/event-stream");
    nx_http_stream_write(req, ": resumed\n\n", 11);
    for (size_t i = 0; i < st->nlog; i++) {
        if (st->log[i].seq > seq)
            nx_http_stream_write(req, st->log[i].data, st->log[i].len);
    }
    if (st->is_complete) {
        nx_http_stream_end(req);
        return true;
    }
    st->req = req;
    nx_http_req_on_abort(req, on_stream_abort, st);
    return true;
}

static void on_get(struct nx_mcp_httpd *h, struct nx_http_req *req)
{
    if (!header_has(req, "accept", "text/event-stream")) {
        respond_rpc_error(req, 406, -32000, "Not Acceptable: Accept must include text/event-stream");
        return;
    }
    struct hsess *hs = session_of(h, req);
    if (!hs)
        return;
    size_t len = 0;
    const char *leid = nx_http_req_header(req, "last-event-id", &len);
    if (leid && resume(hs, req, leid, len))
        return;
    if (hs->get) /* one stream for server messages: the newer one wins */
        stream_free(hs->get);
    struct hstream *st = stream_new(hs, req);
    st->is_get = true;
    st->is_fed = true;
    hs->get = st;
    char buf[64];
    int n = snprintf(buf, sizeof buf, ": ok\nretry: %u\n\n", (unsigned)h->conf->http.sse_retry_ms);
    nx_http_req_add_header(req, "cache-control", "no-cache");
    nx_http_req_add_header(req, "mcp-session-id", hs->id);
    nx_http_stream_begin(req, 200, "text/event-stream");
    nx_http_stream_write(req, buf, (size_t)n);
    nx_http_req_on_abort(req, on_stream_abort, st);
}

static void on_request(struct nx_http_req *req, void *udata)
{
    struct nx_mcp_httpd *h = udata;
    size_t mlen = 0;
    const char *m = nx_http_req_method(req, &mlen);

    if (!admitted(h, req))
        return;
    if (mlen == 4 && memcmp(m, "POST", 4) == 0) {
        on_post(h, req);
    } else if (mlen == 3 && memcmp(m, "GET", 3) == 0) {
        on_get(h, req);
    } else if (mlen == 6 && memcmp(m, "DELETE", 6) == 0) {
        struct hsess *hs = session_of(h, req);
        if (hs) {
            nx_info("mcp-server", "session %.8s… ended by the client", hs->id);
            session_free(hs);
            nx_http_respond(req, 200, "application/json", "{}", 2);
        }
    } else {
        nx_http_req_add_header(req, "allow", "GET, POST, DELETE");
        respond_rpc_error(req, 405, -32000, "Method Not Allowed");
    }
}

/* ---- the handle ---- */

int nx_mcp_httpd_new(uv_loop_t *loop, struct nx_http_server *srv, const struct nx_mcp_httpd_opts *o,
                    struct nx_mcp_httpd **out)
{
    const struct nx_mcp_srv_conf *conf = nx_mcp_server_get_conf(o->server);
    char *own = NULL;
    if (conf->auth_token_env && *conf->auth_token_env) {
        const char *t = getenv(conf->auth_token_env);
        if (!t || !*t) {
            nx_error("mcp-server", "mcp_server.yaml: auth_token_env names $%s, which is not set: /mcp is "
                     "not served", conf->auth_token_env);
            return NX_ECONFIG;
        }
        own = nx_strdup(t);
    }
    struct nx_mcp_httpd *h = nx_calloc(1, sizeof *h);
    h->loop = loop;
    h->srv = o->server;
    h->conf = conf;
    h->token_ptr = o->token_ptr;
    h->own_token = own;
    h->authorize = o->authorize;
    h->is_loopback = o->is_loopback;
    h->last_keepalive_ms = nx_mono_ms();
    uv_timer_init(loop, &h->sweep);
    h->sweep.data = h;
    uv_timer_start(&h->sweep, on_sweep, SWEEP_MS, SWEEP_MS);
    uv_unref((uv_handle_t *)&h->sweep);
    const struct nx_http_route_opts ro = {.origin_ok = origin_listed};
    nx_http_server_route_ex(srv, NULL, "/mcp", on_request, h, &ro);
    *out = h;
    return 0;
}

void nx_mcp_httpd_shutdown(struct nx_mcp_httpd *h)
{
    if (!h)
        return;
    h->is_stopping = true;
    for (struct hsess *hs = h->sessions; hs; hs = hs->next) {
        if (hs->get)
            stream_free(hs->get);
    }
}

static void on_timer_closed(uv_handle_t *t)
{
    struct nx_mcp_httpd *h = t->data;
    free(h->own_token);
    free(h);
}

void nx_mcp_httpd_free(struct nx_mcp_httpd *h)
{
    if (!h)
        return;
    h->is_stopping = true;
    while (h->sessions)
        session_free(h->sessions);
    uv_close((uv_handle_t *)&h->sweep, on_timer_closed);
}

size_t nx_mcp_httpd_sessions(const struct nx_mcp_httpd *h)
{
    return h ? h->nsessions : 0;
}
