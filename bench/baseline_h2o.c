/* Baseline for the benchmarks: the smallest libh2o (libuv) server answering one fixed JSON body.
 * nexo's figures are reported as ratios against it, measured in the same run.
 * Usage: baseline_h2o PORT  (prints "READY <port>" when listening) */
#include <h2o.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <uv.h>

static h2o_globalconf_t config;
static h2o_context_t ctx;
static h2o_accept_ctx_t accept_ctx;

static int on_req(h2o_handler_t *self, h2o_req_t *req)
{
    (void)self;
    static h2o_generator_t gen = {NULL, NULL};
    static const char body[] = "{\"status\":\"ok\"}";
    h2o_iovec_t buf = h2o_iovec_init(body, sizeof body - 1);
    req->res.status = 200;
    req->res.reason = "OK";
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL,
                   H2O_STRLIT("application/json"));
    h2o_start_response(req, &gen);
    h2o_send(req, &buf, 1, 1);
    return 0;
}

static void on_accept(uv_stream_t *listener, int status)
{
    if (status != 0)
        return;
    uv_tcp_t *conn = h2o_mem_alloc(sizeof *conn);
    uv_tcp_init(listener->loop, conn);
    if (uv_accept(listener, (uv_stream_t *)conn) != 0) {
        uv_close((uv_handle_t *)conn, (uv_close_cb)free);
        return;
    }
    h2o_accept(&accept_ctx, h2o_uv_socket_create((uv_stream_t *)conn, (uv_close_cb)free));
}

int main(int argc, char **argv)
{
    static uv_loop_t loop;
    static uv_tcp_t listener;
    struct sockaddr_in addr;
    struct sockaddr_storage bound;
    int len = sizeof bound;

    signal(SIGPIPE, SIG_IGN);
    h2o_config_init(&config);
    config.http1.upgrade_to_http2 = 0;
    h2o_hostconf_t *host = h2o_config_register_host(&config, h2o_iovec_init(H2O_STRLIT("default")), 65535);
    h2o_pathconf_t *path = h2o_config_register_path(host, "/", 0);
    h2o_create_handler(path, sizeof(h2o_handler_t))->on_req = on_req;
    uv_loop_init(&loop);
    h2o_context_init(&ctx, &loop, &config);
    accept_ctx.ctx = &ctx;
    accept_ctx.hosts = config.hosts;
    uv_tcp_init(&loop, &listener);
    uv_ip4_addr("127.0.0.1", argc > 1 ? (int)strtol(argv[1], NULL, 10) : 0, &addr);
    if (uv_tcp_bind(&listener, (struct sockaddr *)&addr, 0) != 0 ||
        uv_listen((uv_stream_t *)&listener, 1024, on_accept) != 0)
        return 1;
    uv_tcp_getsockname(&listener, (struct sockaddr *)&bound, &len);
    printf("READY %d\n", ntohs(((struct sockaddr_in *)&bound)->sin_port));
    fflush(stdout);
    return uv_run(&loop, UV_RUN_DEFAULT);
}
