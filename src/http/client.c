#include <curl/curl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/error.h"
#include "core/log.h"
#include "http/client.h"
#include "http/client_internal.h"

/* libcurl's multi interface on the libuv loop, after curl's docs/examples/multi-uv.c: curl
 * tells us which sockets to watch (CURLMOPT_SOCKETFUNCTION -> one uv_poll_t each) and when to
 * wake it (CURLMOPT_TIMERFUNCTION -> one uv_timer_t); we call curl_multi_socket_action from
 * those handles and read CURLMSG_DONE afterwards. A plain http:// call that needs nothing more
 * goes by nexo's own HTTP/1.1 engine (http/h1.c) instead, with the same bookkeeping: the call,
 * its finish, the kick and idle timers, enter and leave.
 *
 * Re-entrancy: user callbacks (on_data, on_done) may cancel calls, start calls or free the
 * client. libcurl forbids removing or adding easy handles from inside its callbacks, so every
 * entry point runs between nx_http_enter() and nx_http_leave(): while depth > 0 a finished call
 * is only marked done; leaving depth 0 detaches and frees finished calls and completes a
 * pending free.
 * New calls are added to the multi handle from a zero timer (`kick`), which is also how start
 * failures reach on_done on a later loop iteration, never inside nx_http_client_request. */

#define DEFAULT_CONNECT_MS 10000u
#define DEFAULT_TIMEOUT_MS 120000u
#define DEFAULT_MAX_BYTES (32ull * 1024 * 1024)
#define DEFAULT_HOST_CONNS 32
#define MAX_HEADER_BYTES (256u * 1024)

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static int global_rc;

static void global_init(void)
{
    curl_version_info_data *vi;

    global_rc = curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : NX_EHTTP;
    vi = curl_version_info(CURLVERSION_NOW);
    if (vi && !(vi->features & CURL_VERSION_ASYNCHDNS))
        nx_warn("http", "libcurl %s has no asynchronous resolver: DNS lookups block the loop",
                vi->version);
}

void nx_http_client_preload(void)
{
    pthread_once(&global_once, global_init);
}

/* ---- call bookkeeping ---------------------------------------------------------------- */
static void call_free(struct nx_http_client *c, struct nx_http_call *call)
{
    /* Reused reset: options only, connections stay with the multi handle. Not one whose transfer
     * ended early (cancelled while it waited for a connection) and so kept curl's receive
     * buffer: reset does not free it, and curl 7.88 then refuses a new CURLOPT_BUFFERSIZE and
     * reads 16 KiB into the old, smaller one. Setting the size is how to tell. */
    if (call->easy && c->nspare < NX_HTTP_SPARE_EASY && !c->is_freeing &&
        (curl_easy_reset(call->easy), curl_easy_setopt(call->easy, CURLOPT_BUFFERSIZE, 4096L) == CURLE_OK)) {
        c->spare[c->nspare++] = call->easy;
    } else if (call->easy) {
        curl_easy_cleanup(call->easy);
    }
    curl_slist_free_all(call->hdrs);
    curl_slist_free_all(call->resolve);
    free(call->body);
    nx_buf_cleanup(&call->resp_hdrs);
    nx_buf_cleanup(&call->resp_body);
    free(call);
}

static void call_unlink(struct nx_http_client *c, struct nx_http_call *call)
{
    if (call->prev)
        call->prev->next = call->next;
    else
        c->calls = call->next;
    if (call->next)
        call->next->prev = call->prev;
    else
        c->calls_tail = call->prev;
}

/* Runs on_done once. Must be called between nx_http_enter() and nx_http_leave(). */
void nx_http_call_finish(struct nx_http_call *call, int rc, const char *err)
{
    struct nx_http_response res;
    long status = 0;

    if (call->is_done)
        return;
    call->is_done = 1;
    call->client->inflight--;
    if (call->h1)
        status = nx_h1_status(call);
    else if (call->easy)
        curl_easy_getinfo(call->easy, CURLINFO_RESPONSE_CODE, &status);
    res.status = status;
    res.headers = nx_buf_cstr(&call->resp_hdrs);
    res.headers_len = call->resp_hdrs.len;
    res.body = nx_buf_cstr(&call->resp_body);
    res.body_len = call->resp_body.len;
    if (call->on_done) {
        uint64_t prev = nx_log_context_swap(call->log_ctx);
        call->on_done(rc, &res, rc == 0 ? NULL : err, call->udata);
        nx_log_context_swap(prev);
    }
}

static void finish_free(struct nx_http_client *c);

/* Detaches and frees every finished call. Only at depth 0 (outside libcurl callbacks). */
static void reap(struct nx_http_client *c)
{
    struct nx_http_call *call = c->calls, *next;

    for (; call; call = next) {
        next = call->next;
        if (!call->is_done)
            continue;
        if (call->h1) {
            nx_h1_detach(call);
        } else if (call->in_multi) {
            curl_multi_remove_handle(c->multi, call->easy);
            call->in_multi = 0;
        }
        call_unlink(c, call);
        call_free(c, call);
    }
}

void nx_http_enter(struct nx_http_client *c)
{
    c->depth++;
}

void nx_http_leave(struct nx_http_client *c)
{
    NX_ASSERT(c->depth > 0);
    if (--c->depth > 0)
        return;
    c->depth++; /* reaping may run curl's socket callback: keep re-entry out */
    reap(c);
    c->depth--;
    if (c->is_freeing && !c->is_closed)
        finish_free(c);
}

/* ---- libcurl <-> libuv ---------------------------------------------------------------- */

static int map_result(struct nx_http_call *call, CURLcode res, const char **err)
{
    *err = call->errbuf[0] ? call->errbuf : curl_easy_strerror(res);
    if (call->fail_rc == NX_ETOOBIG) {
        *err = "response exceeds the size cap";
        return NX_ETOOBIG;
    }
    if (call->fail_rc == NX_ECANCELED) {
        *err = "aborted by the data callback";
        return NX_ECANCELED;
    }
    switch (res) {
    case CURLE_OK:
        return 0;
    case CURLE_OPERATION_TIMEDOUT:
        return NX_ETIMEDOUT;
    case CURLE_FILESIZE_EXCEEDED:
        *err = "response Content-Length exceeds the size cap";
        return NX_ETOOBIG;
    default:
        return NX_EHTTP;
    }
}

static void check_multi_info(struct nx_http_client *c)
{
    CURLMsg *msg;
    int pending;

    while ((msg = curl_multi_info_read(c->multi, &pending))) {
        struct nx_http_call *call;
        char *priv = NULL;
        CURLcode res;
        const char *err;
        int rc;

        if (msg->msg != CURLMSG_DONE)
            continue;
        res = msg->data.result;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &priv);
        call = (struct nx_http_call *)(void *)priv;
        curl_multi_remove_handle(c->multi, msg->easy_handle);
        if (!call)
            continue;
        call->in_multi = 0;
        rc = map_result(call, res, &err);
        nx_http_call_finish(call, rc, err);
    }
}

static void socket_action(struct nx_http_client *c, curl_socket_t fd, int flags)
{
    int running;

    nx_http_enter(c);
    curl_multi_socket_action(c->multi, fd, flags, &running);
    check_multi_info(c);
    nx_http_leave(c);
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    struct sock_ctx *s = h->data;
    int flags = 0;

    if (status < 0)
        flags = CURL_CSELECT_ERR;
    if (events & UV_READABLE)
        flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE)
        flags |= CURL_CSELECT_OUT;
    socket_action(s->client, s->fd, flags);
}

static void on_timer(uv_timer_t *h)
{
    socket_action(h->data, CURL_SOCKET_TIMEOUT, 0);
}

static void sock_close_cb(uv_handle_t *h)
{
    struct sock_ctx *s = h->data;
    struct nx_http_client *c = s->client;

    free(s);
    nx_http_handle_closed(c);
}

static void sock_close(struct nx_http_client *c, struct sock_ctx *s)
{
    if (s->is_closing)
        return;
    s->is_closing = 1;
    if (s->prev)
        s->prev->next = s->next;
    else
        c->socks = s->next;
    if (s->next)
        s->next->prev = s->prev;
    uv_close((uv_handle_t *)&s->poll, sock_close_cb);
}

static int socket_cb(CURL *easy, curl_socket_t fd, int action, void *userp, void *socketp)
{
    struct nx_http_client *c = userp;
    struct sock_ctx *s = socketp;
    int events = 0;

    NX_UNUSED(easy);
    if (action == CURL_POLL_REMOVE) {
        if (s) {
            curl_multi_assign(c->multi, fd, NULL);
            sock_close(c, s);
        }
        return 0;
    }
    if (!s) {
        s = nx_calloc(1, sizeof *s);
        s->fd = fd;
        s->client = c;
        if (uv_poll_init_socket(c->loop, &s->poll, fd) != 0) {
            free(s);
            return -1;
        }
        s->poll.data = s;
        c->open_handles++;
        s->next = c->socks;
        if (c->socks)
            c->socks->prev = s;
        c->socks = s;
        curl_multi_assign(c->multi, fd, s);
    }
    if (action == CURL_POLL_IN || action == CURL_POLL_INOUT)
        events |= UV_READABLE;
    if (action == CURL_POLL_OUT || action == CURL_POLL_INOUT)
        events |= UV_WRITABLE;
    return uv_poll_start(&s->poll, events, on_poll) == 0 ? 0 : -1;
}

static int timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    struct nx_http_client *c = userp;

    NX_UNUSED(multi);
    if (timeout_ms < 0)
        uv_timer_stop(&c->timer);
    else /* 0 fires on the next loop iteration: never call socket_action from here */
        uv_timer_start(&c->timer, on_timer, (uint64_t)timeout_ms, 0);
    return 0;
}

/* ---- per-call libcurl callbacks ------------------------------------------------------- */

static size_t header_cb(char *ptr, size_t size, size_t nitems, void *userp)
{
    struct nx_http_call *call = userp;
    size_t n = size * nitems;

    if (call->is_done)
        return 0;
    call->last_data_ms = call->last_progress_ms = uv_now(call->client->loop); /* (trailers too) */
    if (call->body_started)
        return n; /* trailers */
    if (call->hdr_complete) {
        /* a new block (after 1xx or a followed redirect): keep only the last one */
        nx_buf_reset(&call->resp_hdrs);
        call->hdr_complete = 0;
    }
    if (call->resp_hdrs.len + n > MAX_HEADER_BYTES) {
        call->fail_rc = NX_ETOOBIG;
        return 0;
    }
    nx_buf_append(&call->resp_hdrs, ptr, n);
    if ((n == 2 && ptr[0] == '\r' && ptr[1] == '\n') || (n == 1 && ptr[0] == '\n'))
        call->hdr_complete = 1;
    return n;
}

/* A streamed answer may last minutes; its request body (a whole conversation) goes once curl sent
 * it all, as it has when the answer's body comes unless the server answered early. Nothing sends
 * it again: a retry is a new call (a redirect curl follows would: those keep it). */
static void release_sent_body(struct nx_http_call *call)
{
    curl_off_t sent = -1;

    if (call->body && call->on_data && !call->is_redirecting &&
        curl_easy_getinfo(call->easy, CURLINFO_SIZE_UPLOAD_T, &sent) == CURLE_OK &&
        sent == (curl_off_t)call->body_len) {
        free(call->body);
        call->body = NULL;
    }
}

/* curl has a connection for the call (new or reused) and is about to send the request. Until
 * then the call waited for a connection, maybe queued behind max_host_connections busy streams:
 * that wait is not the upstream's silence, and is bounded and reported apart. */
static int prereq_cb(void *userp, char *conn_primary_ip, char *conn_local_ip, int conn_primary_port,
                     int conn_local_port)
{
    struct nx_http_call *call = userp;

    (void)conn_primary_ip, (void)conn_local_ip, (void)conn_primary_port, (void)conn_local_port;
    call->is_connected = true;
    call->last_data_ms = call->last_progress_ms = uv_now(call->client->loop);
    return CURL_PREREQFUNC_OK;
}

static size_t write_cb(char *ptr, size_t size, size_t nmemb, void *userp)
{
    struct nx_http_call *call = userp;
    size_t n = size * nmemb;

    if (call->is_done)
        return 0; /* cancelled while curl still held the handle: abort quietly */
    call->last_data_ms = uv_now(call->client->loop);
    if (!call->body_started) {
        call->body_started = 1;
        release_sent_body(call);
    }
    if (call->received + n > call->max_bytes) {
        call->fail_rc = NX_ETOOBIG;
        return 0;
    }
    call->received += n;
    if (call->on_data) {
        long status = 0;
        curl_easy_getinfo(call->easy, CURLINFO_RESPONSE_CODE, &status);
        uint64_t prev = nx_log_context_swap(call->log_ctx);
        int stop = call->on_data(ptr, n, status, call->udata);
        nx_log_context_swap(prev);
        if (stop != 0) {
            call->fail_rc = NX_ECANCELED;
            return 0;
        }
        if (call->is_done)
            return 0; /* the callback cancelled the call */
        return n;
    }
    nx_buf_append(&call->resp_body, ptr, n);
    return n;
}

/* ---- public API ----------------------------------------------------------------------- */

int nx_http_client_new(uv_loop_t *loop, const struct nx_http_client_opts *opts,
                       struct nx_http_client **out)
{
    struct nx_http_client *c;

    if (!loop || !out)
        return NX_EINVAL;
    if (opts && nx_http_check_proxy(opts->proxy) != 0) {
        nx_error("http", "proxy must start with http://, https://, socks5:// or socks5h://");
        return NX_EINVAL;
    }
    c = nx_calloc(1, sizeof *c);
    c->loop = loop;
    c->proxy = nx_strdup(opts && opts->proxy ? opts->proxy : "");
    c->user_agent = nx_strdup(opts && opts->user_agent ? opts->user_agent : "nexo/" NEXO_VERSION);
    c->connect_timeout_ms = opts && opts->connect_timeout_ms ? opts->connect_timeout_ms
                                                             : DEFAULT_CONNECT_MS;
    c->timeout_ms = opts && opts->timeout_ms ? opts->timeout_ms : DEFAULT_TIMEOUT_MS;
    c->max_response_bytes = opts && opts->max_response_bytes ? opts->max_response_bytes
                                                             : DEFAULT_MAX_BYTES;
    c->is_curl_only = opts && opts->is_curl_only;
    c->host_conns = opts && opts->max_host_connections ? (long)opts->max_host_connections
                                                       : DEFAULT_HOST_CONNS;
    uv_timer_init(loop, &c->timer);
    c->timer.data = c;
    uv_timer_init(loop, &c->kick);
    c->kick.data = c;
    uv_timer_init(loop, &c->idle);
    c->idle.data = c;
    c->open_handles = 3;
    *out = c;
    return 0;
}

/* Idle connections kept for reuse: enough for steady traffic; after a burst of thousands of
 * streams the rest are closed instead of holding their sockets and buffers. */
static long max_connects(const struct nx_http_client *c)
{
    return c->host_conns * 2 < 256 ? c->host_conns * 2 : 256;
}

size_t nx_http_max_idle(const struct nx_http_client *c)
{
    return (size_t)max_connects(c);
}

/* libcurl (dlopened by http/curl_loader.c) and the multi handle come at the first request, so a
 * client that never calls out costs no start-up time or memory. */
static int ensure_multi(struct nx_http_client *c)
{
    if (c->multi)
        return 0;
    pthread_once(&global_once, global_init);
    if (global_rc != 0)
        return global_rc;
    if (!(c->multi = curl_multi_init()))
        return NX_EHTTP;
    /* One TLS session cache for all calls: a new connection to a provider resumes the last
     * session, and no easy handle allocates a cache of its own (~840 bytes each, thousands at
     * once under a burst of streams). Without it (NULL) curl falls back to per-handle caches. */
    if (!c->share && (c->share = curl_share_init()) &&
        curl_share_setopt(c->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION) != CURLSHE_OK) {
        curl_share_cleanup(c->share);
        c->share = NULL;
    }
    c->peak_inflight = c->inflight;
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
    curl_multi_setopt(c->multi, CURLMOPT_MAX_HOST_CONNECTIONS, c->host_conns);
    curl_multi_setopt(c->multi, CURLMOPT_MAXCONNECTS, max_connects(c));
    return 0;
}

/* The client's memory goes once the loop has closed every handle it owned. */
void nx_http_handle_closed(struct nx_http_client *c)
{
    if (--c->open_handles == 0) {
        free(c->proxy);
        free(c->user_agent);
        free(c);
    }
}

static void close_cb_count(uv_handle_t *h)
{
    nx_http_handle_closed(h->data);
}

/* Closes the multi handle and with it every cached connection. No call may be attached. */
static void multi_close(struct nx_http_client *c)
{
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, NULL);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, NULL);
    /* stop watching before curl closes the cached connections' descriptors */
    while (c->socks)
        sock_close(c, c->socks);
    curl_multi_cleanup(c->multi);
    c->multi = NULL;
    uv_timer_stop(&c->timer);
}

/* At depth 0 after nx_http_client_free: every call is finished and reaped. */
static void finish_free(struct nx_http_client *c)
{
    c->is_closed = 1;
    reap(c);
    nx_h1_free(c);
    while (c->nspare)
        curl_easy_cleanup(c->spare[--c->nspare]);
    if (c->multi) /* NULL when no request was ever made */
        multi_close(c);
    if (c->share) /* after the easy handles and the multi handle that used it */
        curl_share_cleanup(c->share);
    c->share = NULL;
    uv_close((uv_handle_t *)&c->timer, close_cb_count);
    uv_close((uv_handle_t *)&c->kick, close_cb_count);
    uv_close((uv_handle_t *)&c->idle, close_cb_count);
}

/* The idle connections a burst leaves in the cache (up to CURLMOPT_MAXCONNECTS) were allocated
 * among the burst's transient memory: freed, they let malloc_trim hand that memory back. */
int nx_http_client_trim(struct nx_http_client *c)
{
    int closed;

    if (!c || c->calls || c->depth || c->is_freeing || c->peak_inflight <= (size_t)max_connects(c))
        return 0;
    closed = nx_h1_trim(c) > 0;
    c->peak_inflight = 0;
    if (!c->multi)
        return closed;
    while (c->nspare)
        curl_easy_cleanup(c->spare[--c->nspare]);
    multi_close(c); /* the next request makes a new one */
    return 1;
}

void nx_http_client_free(struct nx_http_client *c)
{
    if (!c || c->is_freeing)
        return;
    c->is_freeing = 1;
    nx_http_enter(c);
    for (struct nx_http_call *call = c->calls; call; call = call->next)
        nx_http_call_finish(call, NX_ECANCELED, "HTTP client shut down");
    nx_http_leave(c);
}

/* A streamed answer may last as long as bytes keep coming: its call fails when none came for
 * its idle_ms. One timer for all of them, ticking only while there are some; curl's own
 * low-speed check averages over seconds of past traffic and so misses a silence that follows
 * the upload. */
#define IDLE_TICK_MS 250

static void on_idle_tick(uv_timer_t *h)
{
    struct nx_http_client *c = h->data;
    uint64_t now = uv_now(c->loop);
    bool is_any = false;

    nx_http_enter(c);
    for (struct nx_http_call *call = c->calls; call; call = call->next) {
        if (call->h1 && !call->is_done) {
            is_any = true;
            if (nx_h1_tick(call, now))
                continue;
        }
        if (call->is_done || (!call->idle_ms && !call->end_by_ms))
            continue;
        if (call->end_by_ms && now >= call->end_by_ms) {
            snprintf(call->errbuf, sizeof call->errbuf, "not ended in time");
            nx_http_call_finish(call, NX_ETIMEDOUT, call->errbuf);
            continue;
        }
        if (call->stall_ms && call->is_connected && now - call->last_progress_ms >= call->stall_ms) {
            snprintf(call->errbuf, sizeof call->errbuf, "only keep-alives received for %u ms",
                     (unsigned)call->stall_ms);
            nx_http_call_finish(call, NX_ETIMEDOUT, call->errbuf);
            continue;
        }
        if (!call->idle_ms || now - call->last_data_ms < call->idle_ms) {
            is_any = true;
            continue;
        }
        snprintf(call->errbuf, sizeof call->errbuf,
                 call->is_connected ? "nothing received for %u ms"
                                    : "no connection to the upstream within %u ms (it did not accept "
                                      "one, or all http_client.max_host_connections to it are busy)",
                 (unsigned)call->idle_ms);
        nx_http_call_finish(call, NX_ETIMEDOUT, call->errbuf);
    }
    nx_http_leave(c);
    if (!is_any)
        uv_timer_stop(&c->idle);
}

void nx_http_on_kick(uv_timer_t *h)
{
    struct nx_http_client *c = h->data;

    nx_http_enter(c);
    for (struct nx_http_call *call = c->calls; call; call = call->next) {
        CURLMcode mc;

        if (call->is_done || call->in_multi)
            continue;
        if (call->start_rc != 0) {
            nx_http_call_finish(call, call->start_rc, call->start_err);
            continue;
        }
        if (call->h1) {
            nx_h1_start(call);
            continue;
        }
        if ((mc = curl_multi_add_handle(c->multi, call->easy)) != CURLM_OK) {
            nx_http_call_finish(call, NX_EHTTP, curl_multi_strerror(mc));
            continue;
        }
        call->in_multi = 1;
    }
    nx_http_leave(c);
}

static void setup_easy(struct nx_http_client *c, struct nx_http_call *call,
                       const struct nx_http_call_opts *o)
{
    CURL *e = call->easy;
    const char *method = o->method;
    const char *proxy = o->proxy ? o->proxy : c->proxy;

    curl_easy_setopt(e, CURLOPT_PRIVATE, call);
    if (c->share)
        curl_easy_setopt(e, CURLOPT_SHARE, c->share);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, call->errbuf);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_URL, o->url);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_USERAGENT, c->user_agent);
    if (!o->idle_timeout_ms) /* (else on_idle_tick watches it) */
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)(o->timeout_ms ? o->timeout_ms : c->timeout_ms));
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)c->connect_timeout_ms);
    curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)call->max_bytes);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    /* The receive buffer every transfer holds while it runs (curl's default is 16 KiB): answers
     * and SSE events are small, and thousands of concurrent streams each hold one, so a stream
     * (on_data) gets curl's minimum, 1 KiB: its events come a few hundred bytes at a time. */
    curl_easy_setopt(e, CURLOPT_BUFFERSIZE, o->on_data ? 1024L : 4096L);
    /* "" also keeps curl from picking a proxy up from the environment */
    curl_easy_setopt(e, CURLOPT_PROXY, proxy);
    curl_easy_setopt(e, CURLOPT_SUPPRESS_CONNECT_HEADERS, 1L);
    if (o->follow_redirects > 0) {
        call->is_redirecting = true;
        curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 1L);
        curl_easy_setopt(e, CURLOPT_MAXREDIRS, (long)o->follow_redirects);
        curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    }
    if (curl_easy_setopt(e, CURLOPT_PREREQFUNCTION, prereq_cb) != CURLE_OK ||
        curl_easy_setopt(e, CURLOPT_PREREQDATA, call) != CURLE_OK)
        call->is_connected = true; /* a libcurl before 7.80: the wait counts as silence */
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, header_cb);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, call);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, call);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, call->hdrs);
    if (call->resolve) {
        curl_easy_setopt(e, CURLOPT_RESOLVE, call->resolve);
        curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, 1L);
        curl_easy_setopt(e, CURLOPT_FORBID_REUSE, 1L);
    }
    if (!method)
        method = o->body ? "POST" : "GET";
    if (o->body || strcasecmp(method, "POST") == 0) {
        if (!o->is_body_given)
            call->body = nx_memdup(o->body ? o->body : "", o->body ? o->body_len : 0);
        call->body_len = o->body ? o->body_len : 0;
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(o->body ? o->body_len : 0));
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, call->body);
        if (strcasecmp(method, "POST") != 0)
            curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
    } else if (strcasecmp(method, "HEAD") == 0) {
        curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    } else if (strcasecmp(method, "GET") != 0) {
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
    }
}

struct nx_http_call *nx_http_client_request(struct nx_http_client *c,
                                            const struct nx_http_call_opts *o)
{
    struct nx_http_call *call;

    if (!c || !o || !o->on_done || c->is_freeing) {
        if (o && o->is_body_given)
            free((char *)o->body);
        return NULL;
    }
    call = nx_calloc(1, sizeof *call);
    if (o->is_body_given) /* (freed with the call, whichever way it ends) */
        call->body = (char *)o->body;
    call->log_ctx = nx_log_context_current();
    call->client = c;
    call->on_data = o->on_data;
    call->on_done = o->on_done;
    call->udata = o->udata;
    call->max_bytes = o->max_response_bytes ? o->max_response_bytes : c->max_response_bytes;
    nx_buf_init(&call->resp_hdrs);
    nx_buf_init(&call->resp_body);

    if (!o->url || !o->url[0] || (o->method && !o->method[0])) {
        call->start_rc = NX_EINVAL;
        call->start_err = "request has no URL or an empty method";
    } else if (nx_http_check_proxy(o->proxy) != 0) {
        call->start_rc = NX_EINVAL;
        call->start_err = "proxy must start with http://, https://, socks5:// or socks5h://";
    } else if (nx_h1_wants(c, o)) {
        const char *method = o->method ? o->method : o->body ? "POST" : "GET";
        if (nx_h1_prepare(call, o, method, &call->start_err) != 0)
            call->start_rc = NX_EINVAL;
    } else if (ensure_multi(c) != 0) {
        call->start_rc = NX_EHTTP;
        call->start_err = "libcurl is unavailable (libcurl.so.4 not loaded or not initialised)";
    } else if (nx_http_build_headers(call, o) != 0) {
        call->start_rc = NX_EINVAL;
        call->start_err = "header name or value is empty or contains CR, LF or ':'";
    } else if (o->resolve && (nx_http_bad_header_text(o->resolve) || !o->resolve[0])) {
        call->start_rc = NX_EINVAL;
        call->start_err = "resolve entry is empty or contains CR or LF";
    } else if (!(call->easy = c->nspare ? c->spare[--c->nspare] : curl_easy_init())) {
        call->start_rc = NX_EHTTP;
        call->start_err = "curl_easy_init failed";
    } else {
        if (o->resolve) {
            struct nx_buf r = NX_BUF_INIT;
            nx_buf_printf(&r, "+%s", o->resolve); /* "+": expires like a DNS cache entry */
            call->resolve = curl_slist_append(NULL, r.data);
            NX_ASSERT(call->resolve);
            nx_buf_cleanup(&r);
        }
        setup_easy(c, call, o);
    }

    call->prev = c->calls_tail;
    if (c->calls_tail)
        c->calls_tail->next = call;
    else
        c->calls = call;
    c->calls_tail = call;
    if (++c->inflight > c->peak_inflight)
        c->peak_inflight = c->inflight;
    uv_timer_start(&c->kick, nx_http_on_kick, 0, 0);
    call->last_data_ms = uv_now(c->loop);
    call->last_progress_ms = call->last_data_ms;
    call->stall_ms = o->idle_timeout_ms ? o->stall_timeout_ms : 0;
    if (((call->idle_ms = o->idle_timeout_ms) || call->h1) && !uv_is_active((uv_handle_t *)&c->idle))
        uv_timer_start(&c->idle, on_idle_tick, IDLE_TICK_MS, IDLE_TICK_MS);
    return call;
}

void nx_http_call_end_within(struct nx_http_call *call, uint32_t ms)
{
    struct nx_http_client *c = call->client;

    if (call->is_done || !ms || call->end_by_ms)
        return;
    call->end_by_ms = uv_now(c->loop) + ms;
    if (!uv_is_active((uv_handle_t *)&c->idle))
        uv_timer_start(&c->idle, on_idle_tick, IDLE_TICK_MS, IDLE_TICK_MS);
}

void nx_http_call_cancel(struct nx_http_call *call)
{
    struct nx_http_client *c;

    if (!call || call->is_done)
        return;
    c = call->client;
    nx_http_enter(c);
    nx_http_call_finish(call, NX_ECANCELED, "cancelled");
    nx_http_leave(c);
}

uv_loop_t *nx_http_client_loop(const struct nx_http_client *c)
{
    return c->loop;
}

void nx_http_call_progress(struct nx_http_call *call)
{
    if (call)
        call->last_progress_ms = uv_now(call->client->loop);
}

size_t nx_http_call_body_held(const struct nx_http_call *call)
{
    return call && call->body ? call->body_len : 0;
}

size_t nx_http_client_inflight(const struct nx_http_client *c)
{
    return c ? c->inflight : 0;
}
