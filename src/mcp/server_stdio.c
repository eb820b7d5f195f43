/* `nexo mcp-server [--agent ID]`: the MCP server over stdio. Newline-delimited JSON-RPC on
 * stdin/stdout, logs on stderr only. Starts what an agent turn needs (config, store, HTTP
 * client, agents, the MCP client manager) and no listener, as `nexo chat` does. At end of input
 * the calls still running are answered, then the process exits 0. A batch (2025-03-26) is
 * answered with one array. */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent/inproc.h"
#include "core/alloc.h"
#include "core/buf.h"
#include "core/error.h"
#include "core/log.h"
#include "mcp/jsonrpc.h"
#include "mcp/mcp.h"
#include "mcp/server.h"
#include "runtime/runtime.h"

/* The answers of one batch frame, sent as one array when all are in. */
struct batch {
    json_t *answers;
    size_t expected;
    size_t got;
    bool is_fed;
};

struct stdio_srv {
    struct nx_runtime rt;
    struct nx_config *cfg;
    struct nx_agents_inproc ag;
    struct nx_mcp_manager *mcp;
    struct nx_mcp_server *srv;
    struct nx_mcp_session *sess;
    union {
        uv_tty_t tty;
        uv_pipe_t pipe;
    } in_handle;
    uv_stream_t *in;
    struct nx_jsonrpc_lines lines;
    bool is_eof;
    bool is_down;
    bool is_out_broken;
    struct nx_timer *stop_timer;
};

static void shutdown_srv(struct stdio_srv *x);

/* Blocking write of one line to stdout (stdin's handle may have made it non-blocking). */
static void write_line(struct stdio_srv *x, const json_t *msg)
{
    if (x->is_out_broken)
        return;
    char *s = json_dumps(msg, JSON_COMPACT);
    struct nx_buf b = NX_BUF_INIT;
    nx_buf_puts(&b, s);
    nx_buf_putc(&b, '\n');
    free(s);
    size_t off = 0;
    while (off < b.len) {
        ssize_t n = write(STDOUT_FILENO, b.data + off, b.len - off);
        if (n > 0) {
            off += (size_t)n;
        } else if (n < 0 && errno == EAGAIN) {
            struct pollfd p = {STDOUT_FILENO, POLLOUT, 0};
            poll(&p, 1, 1000);
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else {
            nx_warn("mcp-server", "stdout closed (%s): stopping", n < 0 ? strerror(errno) : "short write");
            x->is_out_broken = true;
            break;
        }
    }
    nx_buf_cleanup(&b);
}

static void batch_maybe_done(struct stdio_srv *x, struct batch *b)
{
    if (!b->is_fed || b->got < b->expected)
        return;
    if (json_array_size(b->answers))
        write_line(x, b->answers);
    json_decref(b->answers);
    free(b);
}

/* After the last answer at end of input; never from inside the session's own code. */
static void deferred_stop(void *arg)
{
    struct stdio_srv *x = arg;
    x->stop_timer = NULL;
    if (!x->sess || nx_mcp_session_in_flight(x->sess) == 0)
        shutdown_srv(x);
}

static void on_send(void *udata, void *origin, const json_t *msg, bool is_final)
{
    struct stdio_srv *x = udata;
    struct batch *b = origin;
    if (b && is_final) {
        if (msg)
            json_array_append(b->answers, (json_t *)msg);
        b->got++;
        batch_maybe_done(x, b);
    } else if (msg) {
        write_line(x, msg);
    }
    if (x->is_eof && !x->is_down && !x->stop_timer)
        x->stop_timer = nx_timer_once(&x->rt.loop, 0, deferred_stop, x);
}

static int on_line(const char *line, size_t len, void *udata)
{
    struct stdio_srv *x = udata;
    char err[200];
    if (!x->sess)
        return 1;
    json_t *v = nx_jsonrpc_load(line, len, err, sizeof err);
    if (!json_is_array(v) || json_array_size(v) == 0 || !nx_mcp_session_accepts_batch(x->sess)) {
        if (v)
            nx_mcp_session_feed_json(x->sess, v, NULL);
        else
            nx_mcp_session_feed(x->sess, line, len, NULL);
        json_decref(v);
        return 0;
    }
    struct batch *b = nx_calloc(1, sizeof *b);
    b->answers = json_array();
    b->expected = nx_mcp_session_feed_json(x->sess, v, b);
    b->is_fed = true;
    json_decref(v);
    batch_maybe_done(x, b);
    return 0;
}

static void feed(struct stdio_srv *x, const char *data, size_t len)
{
    if (nx_jsonrpc_lines_feed(&x->lines, data, len, on_line, x) == NX_ETOOBIG && x->sess)
        nx_mcp_session_reject_oversize(x->sess, NULL);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)h;
    (void)suggested;
    static char slab[65536];
    buf->base = slab;
    buf->len = sizeof slab;
}

static void on_eof(struct stdio_srv *x)
{
    x->is_eof = true;
    if (x->in && !uv_is_closing((uv_handle_t *)x->in))
        uv_read_stop(x->in);
    feed(x, "\n", 1); /* a last line without its newline */
    if (!x->sess || nx_mcp_session_in_flight(x->sess) == 0)
        shutdown_srv(x);
    else
        nx_info("mcp-server", "end of input: waiting for %zu call(s) in flight",
                nx_mcp_session_in_flight(x->sess));
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    struct stdio_srv *x = s->data;
    if (n < 0) {
        on_eof(x);
        return;
    }
    feed(x, buf->base, (size_t)n);
}

static void shutdown_srv(struct stdio_srv *x)
{
    if (x->is_down)
        return;
    x->is_down = true;
    if (x->stop_timer) {
        nx_timer_cancel(x->stop_timer);
        x->stop_timer = NULL;
    }
    if (x->in && !uv_is_closing((uv_handle_t *)x->in))
        uv_close((uv_handle_t *)x->in, NULL);
    nx_mcp_session_free(x->sess);
    x->sess = NULL;
    nx_mcp_server_free(x->srv);
    x->srv = NULL;
    nx_agents_free(x->ag.agents); /* their turns may still call the MCP clients' tools */
    x->ag.agents = NULL;
    nx_mcp_manager_free(x->mcp); /* before the HTTP client it calls through */
    x->mcp = NULL;
    nx_agents_inproc_cleanup(&x->ag);
}

static void on_stop(struct nx_runtime *rt, int signum)
{
    (void)signum;
    shutdown_srv(rt->udata);
}

/* A regular file on stdin: read it all now. */
static void read_file_input(struct stdio_srv *x)
{
    char buf[65536];
    for (;;) {
        ssize_t n = read(STDIN_FILENO, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        feed(x, buf, (size_t)n);
    }
    on_eof(x);
}

int nx_mcp_stdio_run(const struct nx_mcp_stdio_opts *o)
{
    struct stdio_srv x;
    struct nx_diags diags;
    struct nx_mcp_srv_conf conf;
    int code = NX_EXIT_OK;

    memset(&x, 0, sizeof x);
    memset(&conf, 0, sizeof conf);
    nx_diags_init(&diags);
    if (nx_config_load(o->config_dir, &x.cfg, &diags) < 0 ||
        nx_mcp_srv_conf_load(x.cfg, &conf, &diags) < 0) {
        nx_diags_print(&diags, stderr);
        nx_diags_cleanup(&diags);
        nx_mcp_srv_conf_cleanup(&conf);
        nx_config_unref(x.cfg);
        return NX_EXIT_CONFIG;
    }
    nx_diags_cleanup(&diags);
    char err[256];
    if (nx_config_apply_redaction(x.cfg, err, sizeof err) < 0) { /* logs, transcripts, errors */
        fprintf(stderr, "nexo mcp-server: %s\n", err);
        nx_mcp_srv_conf_cleanup(&conf);
        nx_config_unref(x.cfg);
        return NX_EXIT_CONFIG;
    }
    if (o->agent_id && !nx_config_agent(x.cfg, o->agent_id)) {
        fprintf(stderr, "nexo mcp-server: no agent \"%s\"\n", o->agent_id);
        nx_mcp_srv_conf_cleanup(&conf);
        nx_config_unref(x.cfg);
        return NX_EXIT_USAGE;
    }

    nx_runtime_init(&x.rt);
    x.rt.udata = &x;
    x.rt.on_stop = on_stop;
    nx_runtime_watch_signals(&x.rt);
    nx_agents_inproc_init(&x.ag, &x.rt.loop, x.cfg, o->data_dir, NULL, NULL);
    if (nx_mcp_manager_new(&x.rt.loop, x.ag.http, nx_config_mcp(x.cfg), &x.mcp) < 0)
        nx_warn("mcp-server", "MCP client servers (mcp.yaml) not started: see the errors above");
    struct nx_mcp_server_deps sdeps = {.loop = &x.rt.loop, .http = x.ag.http, .agents = x.ag.agents,
                                       .cfg = x.cfg, .only_agent = o->agent_id};
    if (nx_mcp_server_new(&sdeps, &conf, &x.srv) < 0) {
        code = NX_EXIT_CONFIG;
        shutdown_srv(&x);
        goto out;
    }
    struct nx_mcp_session_io io = {.send = on_send, .udata = &x};
    x.sess = nx_mcp_session_new(x.srv, &io);
    nx_jsonrpc_lines_init(&x.lines, (size_t)nx_mcp_server_get_conf(x.srv)->max_frame);
    nx_info("mcp-server", "serving MCP on stdio (%s)", o->agent_id ? o->agent_id : "configured agents");

    uv_handle_type kind = uv_guess_handle(STDIN_FILENO);
    if (kind == UV_FILE) {
        read_file_input(&x);
    } else {
        int rc;
        if (kind == UV_TTY) {
            rc = uv_tty_init(&x.rt.loop, &x.in_handle.tty, STDIN_FILENO, 1);
        } else {
            rc = uv_pipe_init(&x.rt.loop, &x.in_handle.pipe, 0);
            if (rc == 0 && (rc = uv_pipe_open(&x.in_handle.pipe, STDIN_FILENO)) < 0)
                uv_close((uv_handle_t *)&x.in_handle.pipe, NULL);
        }
        if (rc < 0) {
            nx_error("mcp-server", "cannot read standard input: %s", uv_strerror(rc));
            code = NX_EXIT_FAILURE;
            shutdown_srv(&x);
        } else {
            x.in = (uv_stream_t *)&x.in_handle;
            x.in->data = &x;
            uv_read_start(x.in, on_alloc, on_read);
        }
    }
    uv_run(&x.rt.loop, UV_RUN_DEFAULT);
out:
    shutdown_srv(&x);
    nx_runtime_close(&x.rt);
    nx_jsonrpc_lines_cleanup(&x.lines);
    nx_mcp_srv_conf_cleanup(&conf);
    nx_config_unref(x.cfg);
    return code;
}
