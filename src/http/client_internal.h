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
    int in_multi;       /* attached to the multi handle, or (h1) to a connection */
    int is_done;
    struct nx_h1_call *h1; /* http/h1.c's state, when the call goes by nexo's own engine */
    char errbuf[CURL_ERROR_SIZE];
};

/* http/client_opts.c */
/* 0, or NX_EINVAL for a proxy of a scheme libcurl is not asked to speak ("" and NULL: none). */
int nx_http_check_proxy(const char *p);
/* Whether s is NULL or holds CR or LF. */
int nx_http_bad_header_text(const char *s);
/* Whether a header cannot be sent: an empty name, a name with ':', CR or LF in name or value. */
int nx_http_bad_header(const struct nx_http_header *h);
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
    bool is_curl_only;
    struct nx_http_call *calls, *calls_tail;
    CURL *spare[NX_HTTP_SPARE_EASY]; /* reset easy handles of finished calls, for the next ones */
    size_t nspare;
    struct sock_ctx *socks;
    size_t inflight;
    size_t peak_inflight; /* since the multi handle was made: how full its connection cache got */
    struct nx_h1_pool *h1; /* http/h1.c: its hosts and connections, made at its first call */
    int depth;
    int open_handles;
    int is_freeing;
    int is_closed;
};

/* http/client.c, for http/h1.c */
void nx_http_enter(struct nx_http_client *c);
/* At depth 0: detaches and frees finished calls, completes a pending free. */
void nx_http_leave(struct nx_http_client *c);
/* Runs on_done once. Between nx_http_enter and nx_http_leave. */
void nx_http_call_finish(struct nx_http_call *call, int rc, const char *err);
/* One of the client's handles (or lookups) is closed: the last one frees the client. */
void nx_http_handle_closed(struct nx_http_client *c);
/* Starts calls not started yet (the kick timer's callback). */
void nx_http_on_kick(uv_timer_t *h);
/* Idle connections the client keeps. */
size_t nx_http_max_idle(const struct nx_http_client *c);

/* http/h1.c: nexo's own HTTP/1.1 engine, for plain http:// calls without a proxy, redirects, a
 * pinned address or Expect; libcurl does the rest. */
struct nx_h1_call;
struct nx_h1_pool;
bool nx_h1_wants(const struct nx_http_client *c, const struct nx_http_call_opts *o);
/* The call's URL, request head and body; NX_EINVAL with *err for a bad URL or header. */
int nx_h1_prepare(struct nx_http_call *call, const struct nx_http_call_opts *o, const char *method,
                  const char **err);
/* From the kick timer: a connection (pooled or new) for the call, or it waits for one. */
void nx_h1_start(struct nx_http_call *call);
/* The finished call lets its connection go: back to the idle pool after a whole answer, else
 * closed. Frees call->h1. */
void nx_h1_detach(struct nx_http_call *call);
/* Connect timeout and whole-call deadline: 1 when it finished the call. */
int nx_h1_tick(struct nx_http_call *call, uint64_t now);
long nx_h1_status(const struct nx_http_call *call);
/* Closes the idle connections; with none left at all, frees the hosts and the read buffer too.
 * Returns how many it closed. */
size_t nx_h1_trim(struct nx_http_client *c);
/* The client is being freed: idle connections closed, hosts freed. */
void nx_h1_free(struct nx_http_client *c);

#endif
