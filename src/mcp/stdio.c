#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/error.h"
#include "core/log.h"
#include "mcp/jsonrpc.h"
#include "mcp/mcp.h"
#include "mcp/stderr_log.h"
#include "mcp/transport.h"

/* The stdio transport: the server is our child (uv_spawn, in its own process group), we write
 * one JSON-RPC message per line to its stdin and read lines from its stdout; stderr lines go to
 * our log at info with the server's name, cut and rate-limited (stderr_log.c). Closing sends EOF
 * on stdin, then SIGTERM to the group after the grace period, then SIGKILL. */

extern char **environ;

#define WRITE_QUEUE_MAX (64u * 1024 * 1024)

struct stdio_tp {
    struct nx_mcp_link base;
    uv_loop_t *loop;
    uv_process_t proc;
    uv_pipe_t in, out, err;
    uv_timer_t timer;
    uv_timer_t errtimer; /* says how many stderr lines were suppressed */
    struct nx_jsonrpc_lines lines;
    struct nx_mcp_stderr_log errlog;
    char **argv;
    char **env;
    char *cwd;
    uint32_t grace_ms;
    int open_handles;
    int pid;
    int kill_stage;
    bool is_started;
    bool is_running;
    bool is_closing;
    bool has_reported_closed;
    char rbuf[65536];
    char ebuf[8192];
};

struct wreq {
    uv_write_t req;
    char *data;
};

static void strv_free(char **v)
{
    if (!v)
        return;
    for (size_t i = 0; v[i]; i++)
        free(v[i]);
    free(v);
}

static void tp_free(struct stdio_tp *s)
{
    nx_jsonrpc_lines_cleanup(&s->lines);
    strv_free(s->argv);
    strv_free(s->env);
    free(s->cwd);
    free(s->base.name);
    free(s);
}

static void on_handle_closed(uv_handle_t *h)
{
    struct stdio_tp *s = h->data;

    if (--s->open_handles == 0 && s->is_closing)
        tp_free(s);
}

static void close_handle(struct stdio_tp *s, uv_handle_t *h)
{
    if (h->data == s && !uv_is_closing(h))
        uv_close(h, on_handle_closed);
}

static void close_all(struct stdio_tp *s)
{
    if (!uv_is_closing((uv_handle_t *)&s->err))
        nx_mcp_stderr_log_flush(&s->errlog, uv_now(s->loop), true);
    close_handle(s, (uv_handle_t *)&s->in);
    close_handle(s, (uv_handle_t *)&s->out);
    close_handle(s, (uv_handle_t *)&s->err);
    close_handle(s, (uv_handle_t *)&s->timer);
    close_handle(s, (uv_handle_t *)&s->errtimer);
    if (!s->is_running)
        close_handle(s, (uv_handle_t *)&s->proc);
}

static void report_closed(struct stdio_tp *s, int rc, const char *why)
{
    if (s->has_reported_closed || s->is_closing)
        return;
    s->has_reported_closed = true;
    if (s->base.cb.on_closed)
        s->base.cb.on_closed(rc, why, s->base.udata);
}

static void on_exit_cb(uv_process_t *p, int64_t status, int sig)
{
    struct stdio_tp *s = p->data;
    char why[96];

    s->is_running = false;
    if (sig)
        snprintf(why, sizeof why, "exited on signal %d", sig);
    else
        snprintf(why, sizeof why, "exited with status %lld", (long long)status);
    nx_log(s->is_closing ? NX_LOG_DEBUG : NX_LOG_WARN, "mcp", "server %s (pid %d) %s", s->base.name,
           s->pid, why);
    close_handle(s, (uv_handle_t *)&s->proc);
    if (s->is_closing)
        close_all(s);
    else
        report_closed(s, NX_ECLOSED, why);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct stdio_tp *s = h->data;

    (void)suggested;
    if (h == (uv_handle_t *)&s->err)
        *buf = uv_buf_init(s->ebuf, sizeof s->ebuf);
    else
        *buf = uv_buf_init(s->rbuf, sizeof s->rbuf);
}

static int on_line(const char *line, size_t len, void *udata)
{
    struct stdio_tp *s = udata;

    if (s->is_closing || s->has_reported_closed)
        return 1;
    nx_mcp_link_deliver(&s->base, line, len);
    return 0;
}

static void on_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf)
{
    struct stdio_tp *s = st->data;

    if (n > 0) {
        if (nx_jsonrpc_lines_feed(&s->lines, buf->base, (size_t)n, on_line, s) == NX_ETOOBIG)
            nx_warn("mcp", "server %s: a message over %zu bytes was dropped", s->base.name,
                    s->base.max_frame);
    } else if (n < 0) {
        uv_read_stop(st);
        report_closed(s, NX_ECLOSED, n == UV_EOF ? "closed its stdout" : uv_strerror((int)n));
    }
}

static void on_err_timer(uv_timer_t *t);

/* Suppressed stderr lines are said when their second is over, even if the server falls silent. */
static void arm_err_timer(struct stdio_tp *s, uint64_t due_ms)
{
    if (due_ms && !s->is_closing && !uv_is_active((uv_handle_t *)&s->errtimer))
        uv_timer_start(&s->errtimer, on_err_timer, due_ms, 0);
}

static void on_err_timer(uv_timer_t *t)
{
    struct stdio_tp *s = t->data;

    arm_err_timer(s, nx_mcp_stderr_log_flush(&s->errlog, uv_now(s->loop), false));
}

/* stderr is read on its own pipe and costs little per line, so a flood of it never holds back
 * the protocol on stdout. */
static void on_err_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf)
{
    struct stdio_tp *s = st->data;

    if (n > 0) {
        arm_err_timer(s, nx_mcp_stderr_log_feed(&s->errlog, buf->base, (size_t)n, uv_now(s->loop)));
    } else if (n < 0) {
        uv_read_stop(st);
        nx_mcp_stderr_log_flush(&s->errlog, uv_now(s->loop), true);
        uv_timer_stop(&s->errtimer);
    }
}

static void kill_group(struct stdio_tp *s, int sig)
{
    if (!s->is_running || s->pid <= 0)
        return;
    if (kill(-s->pid, sig) != 0)
        uv_process_kill(&s->proc, sig);
}

static void on_kill_timer(uv_timer_t *t)
{
    struct stdio_tp *s = t->data;

    if (!s->is_running)
        return;
    s->kill_stage++;
    if (s->kill_stage == 1) {
        nx_debug("mcp", "server %s did not exit on EOF: SIGTERM", s->base.name);
        kill_group(s, SIGTERM);
        uv_timer_start(&s->timer, on_kill_timer, s->grace_ms, 0);
    } else if (s->kill_stage == 2) {
        nx_warn("mcp", "server %s did not exit on SIGTERM: SIGKILL", s->base.name);
        kill_group(s, SIGKILL);
        uv_timer_start(&s->timer, on_kill_timer, s->grace_ms ? s->grace_ms : 1000, 0);
    } else {
        /* Its exit never reached us (a SIGCHLD lost, as under TSan, or a process that cannot
         * die): stop waiting for it, so that closing never hangs. */
        nx_warn("mcp", "server %s (pid %d): no exit seen after SIGKILL; closing without it",
                s->base.name, s->pid);
        s->is_running = false;
        close_all(s);
    }
}

static char **build_env(const struct nx_mcp_server_conf *conf)
{
    size_t n = 0, k = 0;
    char **env;

    while (environ && environ[n])
        n++;
    env = nx_calloc(n + conf->env.n + 1, sizeof *env);
    for (size_t i = 0; i < n; i++) {
        const char *eq = strchr(environ[i], '=');
        size_t klen = eq ? (size_t)(eq - environ[i]) : strlen(environ[i]);
        bool is_overridden = false;

        for (size_t j = 0; j < conf->env.n && !is_overridden; j++)
            is_overridden = strlen(conf->env.keys[j]) == klen &&
                            memcmp(conf->env.keys[j], environ[i], klen) == 0;
        if (!is_overridden)
            env[k++] = nx_strdup(environ[i]);
    }
    for (size_t j = 0; j < conf->env.n; j++) {
        size_t len = strlen(conf->env.keys[j]) + strlen(conf->env.vals[j]) + 2;
        env[k] = nx_malloc(len);
        snprintf(env[k++], len, "%s=%s", conf->env.keys[j], conf->env.vals[j]);
    }
    return env;
}

static int tp_start(struct nx_mcp_link *t)
{
    struct stdio_tp *s = (struct stdio_tp *)t;
    uv_process_options_t o;
    uv_stdio_container_t stdio[3];
    int r;

    if (s->is_started || s->is_closing)
        return NX_EINVAL;
    s->is_started = true;
    uv_pipe_init(s->loop, &s->in, 0);
    uv_pipe_init(s->loop, &s->out, 0);
    uv_pipe_init(s->loop, &s->err, 0);
    uv_timer_init(s->loop, &s->timer);
    uv_timer_init(s->loop, &s->errtimer);
    s->in.data = s->out.data = s->err.data = s->timer.data = s->errtimer.data = s->proc.data = s;
    s->open_handles = 6;
    memset(&o, 0, sizeof o);
    stdio[0].flags = UV_CREATE_PIPE | UV_READABLE_PIPE;
    stdio[0].data.stream = (uv_stream_t *)&s->in;
    stdio[1].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
    stdio[1].data.stream = (uv_stream_t *)&s->out;
    stdio[2].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
    stdio[2].data.stream = (uv_stream_t *)&s->err;
    o.file = s->argv[0];
    o.args = s->argv;
    o.env = s->env;
    o.cwd = s->cwd;
    o.flags = UV_PROCESS_DETACHED; /* its own process group, so close reaches grandchildren */
    o.stdio_count = 3;
    o.stdio = stdio;
    o.exit_cb = on_exit_cb;
    if ((r = uv_spawn(s->loop, &s->proc, &o)) != 0) {
        nx_warn("mcp", "server %s: cannot start \"%s\": %s", s->base.name, s->argv[0], uv_strerror(r));
        return r == UV_ENOENT ? NX_ENOENT : NX_EIO;
    }
    s->is_running = true;
    s->pid = s->base.pid = s->proc.pid;
    nx_info("mcp", "server %s: started \"%s\" (pid %d)", s->base.name, s->argv[0], s->pid);
    uv_read_start((uv_stream_t *)&s->out, on_alloc, on_read);
    uv_read_start((uv_stream_t *)&s->err, on_alloc, on_err_read);
    return 0;
}

static void on_written(uv_write_t *req, int status)
{
    struct wreq *w = (struct wreq *)req;

    if (status < 0 && status != UV_ECANCELED)
        nx_debug("mcp", "stdio write failed: %s", uv_strerror(status));
    free(w->data);
    free(w);
}

static int tp_send(struct nx_mcp_link *t, const json_t *msg, uint32_t timeout_ms)
{
    struct stdio_tp *s = (struct stdio_tp *)t;
    struct wreq *w;
    uv_buf_t b;
    char *text;
    size_t len;

    (void)timeout_ms;
    if (!s->is_running || s->is_closing || s->has_reported_closed)
        return NX_ECLOSED;
    if (uv_stream_get_write_queue_size((uv_stream_t *)&s->in) > WRITE_QUEUE_MAX)
        return NX_EAGAIN; /* the server does not read its stdin */
    if (!(text = json_dumps(msg, JSON_COMPACT)))
        return NX_EINVAL;
    len = strlen(text);
    w = nx_calloc(1, sizeof *w);
    w->data = nx_malloc(len + 1);
    memcpy(w->data, text, len);
    w->data[len] = '\n';
    free(text);
    b = uv_buf_init(w->data, (unsigned)(len + 1));
    if (uv_write(&w->req, (uv_stream_t *)&s->in, &b, 1, on_written) != 0) {
        free(w->data);
        free(w);
        return NX_EIO;
    }
    return 0;
}

static void tp_forget(struct nx_mcp_link *t, long long id)
{
    (void)t;
    (void)id;
}

static void tp_set_version(struct nx_mcp_link *t, const char *v)
{
    (void)t;
    (void)v;
}

static void tp_close(struct nx_mcp_link *t)
{
    struct stdio_tp *s = (struct stdio_tp *)t;

    if (!s || s->is_closing)
        return;
    s->is_closing = true;
    if (!s->is_started) {
        tp_free(s);
        return;
    }
    uv_read_stop((uv_stream_t *)&s->out);
    close_handle(s, (uv_handle_t *)&s->in); /* EOF on the server's stdin */
    if (s->is_running) {
        if (s->grace_ms == 0) {
            s->kill_stage = 1;
            kill_group(s, SIGTERM);
        }
        uv_timer_start(&s->timer, on_kill_timer, s->grace_ms ? s->grace_ms : 1000, 0);
    } else {
        close_all(s);
    }
}

static const struct nx_mcp_link_vt stdio_vt = {
    .kind = "stdio",
    .start = tp_start,
    .send = tp_send,
    .forget = tp_forget,
    .set_protocol_version = tp_set_version,
    .close = tp_close,
};

int nx_mcp_stdio_new(uv_loop_t *loop, const struct nx_mcp_server_conf *conf,
                     const struct nx_mcp_link_opts *opts, struct nx_mcp_link **out)
{
    struct stdio_tp *s;
    size_t nargs = 0;

    if (!loop || !conf || !conf->command || !conf->command[0] || !opts)
        return NX_EINVAL;
    while (conf->args && conf->args[nargs])
        nargs++;
    s = nx_calloc(1, sizeof *s);
    s->base.vt = &stdio_vt;
    s->base.cb = opts->cb;
    s->base.udata = opts->udata;
    s->base.name = nx_strdup(opts->name ? opts->name : conf->name ? conf->name : "?");
    s->base.max_frame = opts->max_frame ? opts->max_frame : NX_MCP_MAX_FRAME_DEFAULT;
    s->loop = loop;
    s->grace_ms = opts->grace_ms;
    s->argv = nx_calloc(nargs + 2, sizeof *s->argv);
    s->argv[0] = nx_strdup(conf->command);
    for (size_t i = 0; i < nargs; i++)
        s->argv[i + 1] = nx_strdup(conf->args[i]);
    s->env = build_env(conf);
    s->cwd = conf->cwd && conf->cwd[0] ? nx_strdup(conf->cwd) : NULL;
    nx_jsonrpc_lines_init(&s->lines, s->base.max_frame);
    nx_mcp_stderr_log_init(&s->errlog, s->base.name);
    *out = &s->base;
    return 0;
}
