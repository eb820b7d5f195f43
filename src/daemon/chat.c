/* `nexo chat [--agent ID] [--session NAME]`: a terminal conversation with an agent, in process
 * (no gateway needed). Replies stream as they come; Ctrl-C cancels the running turn, Ctrl-C at
 * the prompt (or end of input) ends the conversation. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent/agent.h"
#include "agent/inproc.h"
#include "core/alloc.h"
#include "core/buf.h"
#include "core/error.h"
#include "core/log.h"
#include "daemon/daemon.h"
#include "runtime/runtime.h"

struct chat {
    struct nx_runtime rt;
    struct nx_config *cfg;
    struct nx_agents_inproc ag;
    const char *agent_id;
    char *session_key;
    uv_stream_t *in;
    union {
        uv_tty_t tty;
        uv_pipe_t pipe;
    } in_handle;
    struct nx_buf line;
    struct nx_turn *turn;
    bool is_tty;
    bool eof;
    int exit_code;
};

static void prompt(struct chat *c)
{
    if (c->is_tty) {
        printf("\n%s> ", c->agent_id);
        fflush(stdout);
    }
}

static void shutdown_chat(struct chat *c)
{
    if (c->in && !uv_is_closing((uv_handle_t *)c->in))
        uv_close((uv_handle_t *)c->in, NULL);
    nx_agents_inproc_cleanup(&c->ag);
}

static void on_text(const char *delta, size_t len, void *udata)
{
    (void)udata;
    fwrite(delta, 1, len, stdout);
    fflush(stdout);
}

static void next_line(struct chat *c);

static void on_done(int rc, const struct nx_turn_result *res, void *udata)
{
    struct chat *c = udata;
    c->turn = NULL;
    if (rc == NX_ECONFIG && res->error_message)
        printf("%s", res->error_message);
    else if (rc == NX_ECANCELED)
        printf("\n[cancelled]");
    else if (rc < 0) {
        fprintf(stderr, "\nnexo chat: %s: %s\n", res->error_type ? res->error_type : "error",
                res->error_message ? res->error_message : nx_strerror(rc));
        c->exit_code = NX_EXIT_FAILURE;
    }
    printf("\n");
    fflush(stdout);
    next_line(c);
}

/* Starts a turn for the first complete line in the buffer, if any. */
static void next_line(struct chat *c)
{
    char *nl = c->line.data ? memchr(c->line.data, '\n', c->line.len) : NULL;
    if (!nl) {
        if (c->eof) {
            shutdown_chat(c);
            return;
        }
        prompt(c);
        return;
    }
    size_t n = (size_t)(nl - c->line.data);
    char *text = nx_strndup(c->line.data, n);
    nx_buf_consume(&c->line, n + 1);
    if (!*text) {
        free(text);
        next_line(c);
        return;
    }
    json_t *msgs = json_pack("[{s:s, s:[{s:s, s:s}]}]", "role", "user", "content", "type", "text",
                             "text", text);
    struct nx_turn_opts o = {
        .agent_id = c->agent_id,
        .session_key = c->session_key,
        .channel = "cli",
        .messages = msgs,
        .temperature = -1,
        .stream = true,
        .on_text = on_text,
        .on_done = on_done,
        .udata = c,
    };
    c->turn = nx_turn_start(c->ag.agents, &o);
    json_decref(msgs);
    free(text);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)h;
    (void)suggested;
    static char slab[4096];
    buf->base = slab;
    buf->len = sizeof slab;
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    struct chat *c = s->data;
    if (n < 0) {
        c->eof = true;
        uv_read_stop(s);
        if (c->line.len && c->line.data[c->line.len - 1] != '\n')
            nx_buf_putc(&c->line, '\n');
        if (!c->turn)
            next_line(c);
        return;
    }
    nx_buf_append(&c->line, buf->base, (size_t)n);
    if (c->line.len > 1 << 20) {
        fprintf(stderr, "nexo chat: line too long\n");
        nx_buf_reset(&c->line);
    }
    if (!c->turn)
        next_line(c);
}

static void on_stop(struct nx_runtime *rt, int signum)
{
    struct chat *c = rt->udata;
    (void)signum;
    if (c->turn) { /* Ctrl-C during a turn cancels the turn, not the conversation */
        nx_turn_cancel(c->turn);
        rt->is_stopping = false;
        nx_runtime_watch_signals(rt);
        return;
    }
    shutdown_chat(c);
}

int nx_chat_run(const struct nx_daemon_opts *opts, const char *agent_id, const char *session)
{
    struct chat c;
    struct nx_diags diags;
    memset(&c, 0, sizeof c);
    nx_diags_init(&diags);
    if (nx_config_load(opts->config_dir, &c.cfg, &diags) < 0) {
        nx_diags_print(&diags, stderr);
        nx_diags_cleanup(&diags);
        return NX_EXIT_CONFIG;
    }
    nx_diags_cleanup(&diags);
    if (!agent_id) {
        const struct nx_agent_conf *acs = NULL;
        if (nx_config_agents(c.cfg, &acs) == 0) {
            fprintf(stderr, "nexo chat: no agents configured\n");
            nx_config_unref(c.cfg);
            return NX_EXIT_CONFIG;
        }
        agent_id = acs[0].id;
    }
    if (!nx_config_agent(c.cfg, agent_id)) {
        fprintf(stderr, "nexo chat: no agent \"%s\"\n", agent_id);
        nx_config_unref(c.cfg);
        return NX_EXIT_USAGE;
    }
    c.agent_id = agent_id;
    struct nx_buf key = NX_BUF_INIT;
    nx_buf_printf(&key, "agent:%s:cli:%s", agent_id, session ? session : "terminal");
    c.session_key = nx_buf_steal(&key);

    nx_runtime_init(&c.rt);
    c.rt.udata = &c;
    c.rt.on_stop = on_stop;
    nx_runtime_watch_signals(&c.rt);
    nx_agents_inproc_init(&c.ag, &c.rt.loop, c.cfg, opts->data_dir);

    c.is_tty = uv_guess_handle(0) == UV_TTY;
    if (c.is_tty) {
        uv_tty_init(&c.rt.loop, &c.in_handle.tty, 0, 1);
        c.in = (uv_stream_t *)&c.in_handle.tty;
        printf("nexo chat with %s (Ctrl-C cancels a reply; Ctrl-D or Ctrl-C at the prompt quits)",
               agent_id);
    } else {
        uv_pipe_init(&c.rt.loop, &c.in_handle.pipe, 0);
        uv_pipe_open(&c.in_handle.pipe, 0);
        c.in = (uv_stream_t *)&c.in_handle.pipe;
    }
    c.in->data = &c;
    uv_read_start(c.in, on_alloc, on_read);
    prompt(&c);
    uv_run(&c.rt.loop, UV_RUN_DEFAULT);
    shutdown_chat(&c);
    nx_runtime_close(&c.rt);
    nx_buf_cleanup(&c.line);
    free(c.session_key);
    nx_config_unref(c.cfg);
    return c.exit_code;
}
