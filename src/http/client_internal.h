#ifndef NX_HTTP_CLIENT_INTERNAL_H
#define NX_HTTP_CLIENT_INTERNAL_H

#include <curl/curl.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "core/buf.h"
#include "http/client.h"

/* The HTTP client's bookkeeping (http/client.c): a watched socket, a call, the client. */

struct sock_ctx {
    uv_poll_t poll;
    curl_socket_t fd;
    struct nx_http_client *client;
    struct sock_ctx *prev, *next;
    int is_closing;
};

struct nx_http_call {
    struct nx_http_client *client;
    struct nx_http_call *prev, *next;
    CURL *easy;
    struct curl_slist *hdrs;
    struct curl_slist *resolve;
    char *body;
    size_t body_len;
    bool is_redirecting; /* curl follows redirects: it may send the body again */
    nx_http_data_fn on_data;
    nx_http_done_fn on_done;
    uint64_t log_ctx; /* the caller's log context: its callbacks run in it */
    void *udata;
    uint64_t max_bytes;
    uint64_t received;
    struct nx_buf resp_hdrs;
    struct nx_buf resp_body;
    int hdr_complete;   /* the last header line seen was the blank line ending a block */
    int body_started;   /* later header lines are trailers */
    int fail_rc;        /* our own reason for aborting (size cap, caller abort) */
    uint32_t idle_ms;   /* idle_timeout_ms: the longest silence allowed, 0 = timeout_ms instead */
    uint64_t last_data_ms; /* loop time of the last byte (or of the start, or of the connection) */
    bool is_connected;  /* curl has a connection for it: the idle clock counts silence from here on */
    uint32_t stall_ms;  /* stall_timeout_ms: the longest time without progress, 0 = none */
    uint64_t last_progress_ms; /* loop time of the last nx_http_call_progress (or headers, ...) */
    uint64_t end_by_ms; /* nx_http_call_end_within: loop time it fails by, whatever arrives; 0 none */
    int start_rc;       /* set up failed: reported from the kick timer */
    const char *start_err;
    int in_multi;
    int is_done;
    char errbuf[CURL_ERROR_SIZE];
};

/* http/client_opts.c */
/* 0, or NX_EINVAL for a proxy of a scheme libcurl is not asked to speak ("" and NULL: none). */
int nx_http_check_proxy(const char *p);
/* Whether s is NULL or holds CR or LF. */
int nx_http_bad_header_text(const char *s);
/* The call's header lines (call->hdrs), with "Expect:" unless asked for; NX_EINVAL for a name
 * or value that cannot be a header. */
int nx_http_build_headers(struct nx_http_call *call, const struct nx_http_call_opts *o);

/* A call's easy handle is 5 KB that libcurl allocates and sets up: the next call reuses it. */
#define NX_HTTP_SPARE_EASY 64

struct nx_http_client {
    uv_loop_t *loop;
    CURLM *multi;
    CURLSH *share; /* TLS session cache of every call (else each easy handle allocates its own) */
    uv_timer_t timer;
    uv_timer_t kick;
    uv_timer_t idle; /* ticks while calls with an idle timeout are in flight */
    char *proxy;
    char *user_agent;
    uint32_t connect_timeout_ms;
    uint32_t timeout_ms;
    uint64_t max_response_bytes;
    long host_conns;
    struct nx_http_call *calls, *calls_tail;
    CURL *spare[NX_HTTP_SPARE_EASY]; /* reset easy handles of finished calls, for the next ones */
    size_t nspare;
    struct sock_ctx *socks;
    size_t inflight;
    size_t peak_inflight; /* since the multi handle was made: how full its connection cache got */
    int depth;
    int open_handles;
    int is_freeing;
    int is_closed;
};

#endif
