/* Raw bytes through the real server path: a loopback TCP connection to a server on port 0 on
 * our own loop, the input written, the write side shut, the loop run until the server has closed
 * the connection. A connection the server never closes (within a bound), a request left in
 * flight, or anything a sanitizer sees, is a finding. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "core/log.h"
#include "http/server.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uv_loop_t loop;
static struct nx_http_server *srv;
static int port;

struct client {
    uv_poll_t poll;
    uv_timer_t guard;
    int fd;
    const uint8_t *data;
    size_t size, sent;
    bool write_shut, eof, guard_fired;
};

static void h_ok(struct nx_http_req *req, void *ud)
{
    size_t n;
    char peer[64];
    (void)ud;
    nx_http_req_body(req, &n);
    nx_http_req_header(req, "x", &n);
    nx_http_req_query(req, &n);
    nx_http_req_peer(req, peer, sizeof peer);
    nx_http_req_add_header(req, "x-ok", "1");
    nx_http_respond(req, 200, "text/plain", "ok", 2);
}

static void h_stream(struct nx_http_req *req, void *ud)
{
    (void)ud;
    nx_http_stream_begin(req, 200, "text/event-stream");
    nx_http_stream_write(req, ": ok\n\n", 6);
    nx_http_stream_write(req, "data: 1\n\n", 9);
    nx_http_stream_end(req);
}

static void h_err(struct nx_http_req *req, void *ud)
{
    size_t n;
    const char *p = nx_http_req_path(req, &n);
    char msg[128];
    (void)ud;
    snprintf(msg, sizeof msg, "no \"%.*s\"", (int)(n < 64 ? n : 64), p);
    nx_http_respond_error(req, 404, "not_found_error", msg);
}

static void setup(void)
{
    struct nx_http_limits lim = {.max_connections = 16, .max_header_bytes = 4096,
                                 .max_body_bytes = 65536, .request_timeout_ms = 1000,
                                 .keepalive_timeout_ms = 1000};
    char err[256];

    nx_log_set_level(NX_LOG_OFF);
    if (uv_loop_init(&loop) != 0 || nx_http_server_new(&loop, "fuzz", &lim, &srv) != 0)
        abort();
    /* web pages: an open listener (Host must be loopback), one listed origin (http/origin.c) */
    static char *origins[] = {"https://app.example", NULL};
    static const struct nx_http_origin_policy policy = {.allowed_origins = origins, .max_age_s = 600,
                                                        .is_open = true};
    nx_http_server_set_origin_policy(srv, &policy);
    nx_http_server_route(srv, NULL, "/ok", h_ok, NULL);
    nx_http_server_route(srv, "GET", "/stream", h_stream, NULL);
    nx_http_server_route(srv, NULL, "/err*", h_err, NULL);
    if (nx_http_server_listen(srv, "127.0.0.1", 0, err, sizeof err) != 0) {
        fprintf(stderr, "fuzz_http_request: %s\n", err);
        abort();
    }
    port = nx_http_server_port(srv);
}

static void on_poll(uv_poll_t *p, int status, int events)
{
    struct client *c = p->data;
    char buf[65536];

    if (status < 0) {
        c->eof = true;
        uv_poll_stop(p);
        return;
    }
    if ((events & UV_WRITABLE) && !c->write_shut) {
        while (c->sent < c->size) {
            ssize_t n = send(c->fd, c->data + c->sent, c->size - c->sent, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (n < 0) {
                if (errno != EAGAIN && errno != EWOULDBLOCK)
                    c->sent = c->size; /* the server closed: stop writing */
                break;
            }
            c->sent += (size_t)n;
        }
        if (c->sent == c->size) {
            shutdown(c->fd, SHUT_WR);
            c->write_shut = true;
            uv_poll_start(p, UV_READABLE, on_poll);
        }
    }
    if (events & UV_READABLE) {
        ssize_t n = recv(c->fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
            c->eof = true;
            uv_poll_stop(p);
        }
    }
}

static void on_guard(uv_timer_t *t)
{
    ((struct client *)t->data)->guard_fired = true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool ready;
    struct sockaddr_in a = {.sin_family = AF_INET};
    struct client c = {.data = data, .size = size};

    if (!ready) {
        setup();
        ready = true;
    }
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if ((c.fd = socket(AF_INET, SOCK_STREAM, 0)) < 0 || connect(c.fd, (struct sockaddr *)&a, sizeof a) != 0)
        abort();
    fcntl(c.fd, F_SETFL, fcntl(c.fd, F_GETFL) | O_NONBLOCK);
    uv_poll_init(&loop, &c.poll, c.fd);
    c.poll.data = &c;
    uv_poll_start(&c.poll, UV_READABLE | UV_WRITABLE, on_poll);
    uv_timer_init(&loop, &c.guard);
    c.guard.data = &c;
    uv_timer_start(&c.guard, on_guard, 5000, 0);

    /* until the server has closed its side and forgotten the connection */
    while (!c.guard_fired && (!c.eof || nx_http_server_connections(srv) > 0))
        uv_run(&loop, UV_RUN_ONCE);
    if (c.guard_fired) {
        fprintf(stderr, "fuzz_http_request: connection not closed by the server within 5 s\n");
        abort();
    }
    if (nx_http_server_inflight(srv) != 0) {
        fprintf(stderr, "fuzz_http_request: request still in flight after its connection closed\n");
        abort();
    }
    uv_close((uv_handle_t *)&c.poll, NULL);
    uv_close((uv_handle_t *)&c.guard, NULL);
    uv_run(&loop, UV_RUN_NOWAIT); /* finish the closes before the stack frame goes */
    close(c.fd);
    return 0;
}
