#ifndef NX_HTTP_CLIENT_H
#define NX_HTTP_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* Outbound HTTP on the loop, so nothing blocks it: a plain http:// call that needs no proxy,
 * redirect, pinned address or Expect goes by nexo's own HTTP/1.1 engine (http/h1.c, ~1 KB a
 * call in flight); every other call by libcurl's multi interface (uv_poll + uv_timer with
 * curl_multi_socket_action). Connections are reused. Every call has a deadline and a response
 * size cap; a proxy (http, https, socks5, socks5h) may be set per client or per call.
 * Callbacks run on the loop thread. */

struct nx_http_client;
struct nx_http_call;

struct nx_http_client_opts {
    const char *proxy;           /* NULL = none */
    uint32_t connect_timeout_ms; /* 0 = 10000 */
    uint32_t timeout_ms;         /* default per call; 0 = 120000 */
    uint64_t max_response_bytes; /* default per call; 0 = 32 MiB */
    const char *user_agent;      /* NULL = "nexo/<version>" */
    uint32_t max_host_connections; /* per host (and proxy); 0 = 32; the idle pool keeps twice that */
    bool is_curl_only; /* every call by libcurl, never by nexo's own HTTP/1.1 engine */
};

struct nx_http_header {
    const char *name;
    const char *value;
};

struct nx_http_response {
    long status;            /* 0 when no response arrived */
    const char *headers;    /* raw header block of the final response, NUL-terminated */
    size_t headers_len;
    const char *body;       /* whole body when no on_data was given; NUL-terminated */
    size_t body_len;
};

/* Looks up a response header (case-insensitive) in res->headers; copies the value (trimmed)
 * into out. Returns the value's length, or -1 when absent. */
int nx_http_response_header(const struct nx_http_response *res, const char *name, char *out,
                            size_t outlen);

/* Streaming body: called for each chunk as it arrives (status known). Return 0 to go on,
 * non-zero to abort the call (on_done then gets NX_ECANCELED). */
typedef int (*nx_http_data_fn)(const char *data, size_t len, long status, void *udata);
/* Called exactly once. rc 0 = a response arrived (any status); otherwise NX_ETIMEDOUT,
 * NX_ETOOBIG, NX_ECANCELED, NX_EHTTP (connect/TLS/protocol; see err), NX_EINVAL (bad
 * opts). err is NULL when rc is 0. res (never NULL) is valid only during the call. */
typedef void (*nx_http_done_fn)(int rc, const struct nx_http_response *res, const char *err,
                                void *udata);

struct nx_http_call_opts {
    const char *method;                   /* NULL = GET, or POST when body is set */
    const char *url;
    const struct nx_http_header *headers; /* copied */
    size_t nheaders;
    const char *body;                     /* copied, unless is_body_given */
    size_t body_len;
    bool is_body_given;                   /* body is malloc'd and the call's now, whatever happens */
    uint32_t timeout_ms;                  /* 0 = client default */
    /* Instead of timeout_ms, for an answer that may stream for long: the call fails when no
     * byte came for this long (to the second), however long it lasts while bytes come. */
    uint32_t idle_timeout_ms;
    /* With idle_timeout_ms: the call also fails when neither headers nor nx_http_call_progress
     * came for this long, whatever bytes did: an answer stalled behind keep-alives (pings,
     * comments) is cut. 0 = never. */
    uint32_t stall_timeout_ms;
    uint64_t max_response_bytes;          /* 0 = client default */
    const char *proxy;                    /* NULL = client default; "" = none */
    uint32_t follow_redirects;            /* 0 = return 3xx as is; N = follow up to N */
    nx_http_data_fn on_data;              /* NULL = buffer the body */
    nx_http_done_fn on_done;
    void *udata;
    /* "host:port:addr[,addr]" (IPv6 in brackets): connect to these addresses instead of
     * resolving host (curl's CURLOPT_RESOLVE; the entry expires like a DNS cache entry). Such a
     * call opens a fresh connection and does not leave it in the pool, so it always reaches a
     * pinned address. NULL = resolve normally. Only effective without a proxy. */
    const char *resolve;
};

/* Loads libcurl and initializes it now (any thread; e.g. from the libuv thread pool once the
 * gateway is ready), so the first outbound request does not pay for it on the loop. */
void nx_http_client_preload(void);

int nx_http_client_new(uv_loop_t *loop, const struct nx_http_client_opts *opts,
                       struct nx_http_client **out);
/* Cancels every call in flight (their on_done gets NX_ECANCELED), then frees once the loop
 * has closed its handles. Accepts NULL. */
void nx_http_client_free(struct nx_http_client *c);

/* Starts a call; returns a handle valid until on_done has run. on_done never runs inside this
 * function: a call that cannot start (bad header, proxy scheme, ...) completes on a later loop
 * iteration. Returns NULL (and never calls on_done) only when opts or opts->on_done is NULL or
 * the client is being freed. */
struct nx_http_call *nx_http_client_request(struct nx_http_client *c,
                                            const struct nx_http_call_opts *opts);
/* on_done runs with NX_ECANCELED (from within this call). */
void nx_http_call_cancel(struct nx_http_call *call);
/* The call fails (NX_ETIMEDOUT) if it has not ended within ms from now, whatever still arrives
 * (a body kept open after the answer's end, keep-alive comments in it). Once per call. */
void nx_http_call_end_within(struct nx_http_call *call, uint32_t ms);
/* The call's answer moved on: its stall clock (stall_timeout_ms) starts again. */
void nx_http_call_progress(struct nx_http_call *call);
/* The bytes of request body the call still holds: a streamed call (on_data) lets it go once the
 * answer's body starts and curl has sent all of it (not when it follows redirects). */
size_t nx_http_call_body_held(const struct nx_http_call *call);
size_t nx_http_client_inflight(const struct nx_http_client *c);
/* After a burst: when no call is in flight and more calls ran at once since the last trim than
 * the idle pool keeps, closes the pooled connections (the next call opens new ones), so the
 * memory they hold, scattered among the burst's freed memory, no longer pins it. Returns 1 when
 * it closed them, 0 otherwise. For the daemon's trim before malloc_trim. Accepts NULL. */
int nx_http_client_trim(struct nx_http_client *c);
/* The loop the client runs on (for callers' own timers). */
uv_loop_t *nx_http_client_loop(const struct nx_http_client *c);

#endif
