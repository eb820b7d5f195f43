/* `nexo chat [--agent ID] [--session NAME]`: a terminal conversation with an agent, in process
 * (no gateway needed). Replies stream as they come; Ctrl-C cancels the running turn, Ctrl-C at
 * the prompt (or end of input, or SIGTERM) ends the conversation. Standard input may also be a
 * pipe or a file: one message a line, each sent when the previous one is answered. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent/agent.h"
#include "agent/inproc.h"
#include "core/alloc.h"
#include "core/buf.h"
#include "core/error.h"
#include "core/log.h"
#include "daemon/daemon.h"
#include "mcp/mcp.h"
#include "runtime/runtime.h"
#include "store/history.h"

struct chat {
    struct nx_runtime rt;
    struct nx_config *cfg;
    struct nx_agents_inproc ag;
    struct nx_mcp_manager *mcp; /* the MCP servers of mcp.yaml, whose tools the agents use */
    const char *agent_id;
    char *session_key;
    const char *data_dir;
    uv_stream_t *in;
    union {
        uv_tty_t tty;
        uv_pipe_t pipe;
    } in_handle;
    struct nx_buf line;     /* input read and not yet sent: whole lines, then a partial one */
    struct nx_turn *turn;
    bool is_tty;
    bool is_tty_out;        /* standard output is a terminal */
    bool is_file;           /* stdin is a regular file (or /dev/null): read as needed, blocking */
    bool is_reading;
    bool is_skipping;       /* the rest of an over-long line is being dropped */
    bool is_stopping;
    bool is_down;
    bool eof;
    bool is_said;           /* the turn running has written text */
    struct nx_timer *more; /* file input: go on reading on the next loop iteration */
    int exit_code;
};

/* A line longer than this is skipped, with a message; the lines after it are not affected. */
#define CHAT_MAX_LINE (1u << 20)
/* Linux's terminal line editing (N_TTY, canonical mode) keeps at most this much of a line,
 * newline included: a longer one typed or pasted reaches us cut. */
#define CHAT_TTY_LINE 4096u
/* File input read per loop iteration, and empty or refused lines passed over, at most. */
#define CHAT_READ_BUDGET (1u << 20)
#define CHAT_SKIP_BUDGET 10000

static void prompt(struct chat *c)
{
    if (c->is_tty) {
        printf("\n%s> ", c->agent_id);
        fflush(stdout);
    }
}

static void shutdown_chat(struct chat *c)
{
    c->is_stopping = true;
    if (c->is_down)
        return;
    c->is_down = true;
    if (c->is_tty) { /* the shell's prompt on a line of its own after Ctrl-D or Ctrl-C */
        fputc('\n', stdout);
        fflush(stdout);
    }
    nx_timer_cancel(c->more);
    c->more = NULL;
    if (c->in && !uv_is_closing((uv_handle_t *)c->in))
        uv_close((uv_handle_t *)c->in, NULL);
    nx_agents_free(c->ag.agents); /* their turns may still call the MCP servers' tools */
    c->ag.agents = NULL;
    nx_mcp_manager_free(c->mcp); /* before the HTTP client it calls through */
    c->mcp = NULL;
    nx_agents_inproc_cleanup(&c->ag);
}

/* Appends what was read, keeping every line under CHAT_MAX_LINE: the rest of a longer one is
 * dropped up to its newline. */
static void feed(struct chat *c, const char *p, size_t n)
{
    while (n) {
        const char *nl = memchr(p, '\n', n);
        size_t take = nl ? (size_t)(nl - p) + 1 : n;
        if (!c->is_skipping) {
            const char *last = c->line.len ? memrchr(c->line.data, '\n', c->line.len) : NULL;
            size_t partial = c->line.len - (last ? (size_t)(last - c->line.data) + 1 : 0);
            if (partial + take - (nl ? 1 : 0) <= CHAT_MAX_LINE) {
                nx_buf_append(&c->line, p, take);
            } else {
                fprintf(stderr, "nexo chat: a line longer than %u bytes was skipped\n", CHAT_MAX_LINE);
                c->line.len -= partial;
                c->is_skipping = !nl;
            }
        } else if (nl) {
            c->is_skipping = false;
        }
        p += take;
        n -= take;
    }
}

static bool has_line(const struct chat *c)
{
    return c->line.len && memchr(c->line.data, '\n', c->line.len);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);
static void read_more(void *arg);

/* Input is read only while no whole line waits: a fast pipe is held back by the conversation
 * instead of piling up in memory. */
static void want_input(struct chat *c)
{
    bool want = !c->eof && !c->is_stopping && !has_line(c);
    if (c->is_file) {
        char buf[65536];
        size_t budget = CHAT_READ_BUDGET; /* then the loop turns (signals; /dev/zero never ends) */
        while (want && !c->more) {
            if (budget < sizeof buf) {
                c->more = nx_timer_once(&c->rt.loop, 1, read_more, c); /* (0 would run again at once) */
                break;
            }
            budget -= sizeof buf;
            ssize_t n = read(STDIN_FILENO, buf, sizeof buf);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0) {
                c->eof = true;
                if (c->line.len && c->line.data[c->line.len - 1] != '\n' && !c->is_skipping)
                    nx_buf_putc(&c->line, '\n');
                break;
            }
            feed(c, buf, (size_t)n);
            want = !has_line(c);
        }
        return;
    }
    if (want && !c->is_reading && c->in)
        c->is_reading = uv_read_start(c->in, on_alloc, on_read) == 0;
    else if (!want && c->is_reading) {
        uv_read_stop(c->in);
        c->is_reading = false;
    }
}

/* The model's text: to a terminal, with nothing in it that acts on the terminal (an escape
 * sequence a prompt injection asked for could retitle the window or set the clipboard); to a
 * pipe or a file, as it is. */
static void on_text(const char *delta, size_t len, void *udata)
{
    struct chat *c = udata;
    struct nx_buf safe = NX_BUF_INIT;

    if (c->is_tty_out) {
        nx_buf_put_term_safe(&safe, delta, len, true);
        delta = nx_buf_cstr(&safe);
        len = safe.len;
    }
    fwrite(delta, 1, len, stdout);
    fflush(stdout);
    c->is_said |= len > 0;
    nx_buf_cleanup(&safe);
}

static void next_line(struct chat *c);

/* A turn's answer ends with a newline on stdout; a failure goes to stderr, and leaves no empty
 * line on stdout when nothing was said before it. */
static void on_done(int rc, const struct nx_turn_result *res, void *udata)
{
    struct chat *c = udata;
    bool end_line = true;

    c->turn = NULL;
    if (rc == NX_ECONFIG && res->error_message) {
        printf("%s", res->error_message);
    } else if (rc == NX_ECANCELED) {
        printf("\n[cancelled]");
    } else if (rc < 0) {
        fflush(stdout);
        fprintf(stderr, "%snexo chat: %s: %s\n", c->is_said ? "\n" : "",
                res->error_type ? res->error_type : "error",
                res->error_message ? res->error_message : nx_strerror(rc));
        c->exit_code = NX_EXIT_FAILURE;
        end_line = c->is_said;
    }
    if (end_line)
        printf("\n");
    fflush(stdout);
    next_line(c);
}

/* Starts a turn for the first complete line in the buffer, if any. */
static void next_line(struct chat *c)
{
    char *text = NULL;
    size_t n;

    for (unsigned skipped = 0; !text; skipped++) {
        if (c->is_stopping)
            return;
        if (skipped == CHAT_SKIP_BUDGET && !c->more) { /* let the loop turn, then go on */
            c->more = nx_timer_once(&c->rt.loop, 1, read_more, c); /* (0 would run again at once) */
            return;
        }
        want_input(c);
        char *nl = c->line.data ? memchr(c->line.data, '\n', c->line.len) : NULL;
        if (!nl) {
            if (c->eof)
                shutdown_chat(c);
            else if (!c->more)
                prompt(c);
            return;
        }
        n = (size_t)(nl - c->line.data);
        if (n && c->line.data[n - 1] == '\r') /* CRLF input */
            n--;
        text = nx_strndup(c->line.data, n);
        nx_buf_consume(&c->line, (size_t)(nl - c->line.data) + 1);
        if (c->is_tty && n >= CHAT_TTY_LINE - 1) { /* the terminal kept only the start of it */
            fprintf(stderr, "nexo chat: the terminal cuts a line at %u bytes, so that one was not sent; "
                            "send longer text through a pipe or a file (nexo chat < file)\n",
                    CHAT_TTY_LINE - 1);
            *text = '\0';
        } else if (*text && !nx_utf8_is_valid(text, n)) {
            fprintf(stderr, strlen(text) != n ? "nexo chat: that line holds a NUL byte; not sent\n"
                                              : "nexo chat: that line is not valid UTF-8; not sent\n");
            *text = '\0';
        }
        if (nx_str_is_blank(text)) { /* (white space only is no message: the APIs refuse it) */
            free(text);
            text = NULL;
        }
    }
    json_t *msgs = json_pack("[{s:s, s:[{s:s, s:s}]}]", "role", "user", "content", "type", "text",
                             "text", text);
    struct nx_turn_opts o = {
        .agent_id = c->agent_id,
        .session_key = c->session_key,
        .channel = "cli",
        .messages = msgs,
        .temperature = -1,
        .on_text = on_text,
        .on_done = on_done,
        .udata = c,
    };
    c->is_said = false;
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

static void read_more(void *arg)
{
    struct chat *c = arg;

    c->more = NULL;
    if (!c->turn)
        next_line(c);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    struct chat *c = s->data;
    if (n < 0) {
        c->eof = true;
        uv_read_stop(s);
        c->is_reading = false;
        if (c->line.len && c->line.data[c->line.len - 1] != '\n' && !c->is_skipping)
            nx_buf_putc(&c->line, '\n');
        if (!c->turn)
            next_line(c);
        return;
    }
    feed(c, buf->base, (size_t)n);
    if (!c->turn)
        next_line(c);
    else
        want_input(c);
}

/* Ctrl-C at a terminal during a reply cancels the reply; at the prompt, with piped input, or
 * SIGTERM, the conversation ends (a turn in flight is cancelled first). */
static void on_signal(uv_signal_t *h, int signum)
{
    struct nx_runtime *rt = h->data;
    struct chat *c = rt->udata;

    if (signum == SIGINT && c->is_tty && c->turn) {
        nx_turn_cancel(c->turn);
        return;
    }
    uv_signal_stop(&rt->sig_term);
    uv_signal_stop(&rt->sig_int);
    uv_signal_stop(&rt->sig_hup);
    c->is_stopping = true;
    if (c->turn)
        nx_turn_cancel(c->turn);
    shutdown_chat(c);
}

/* One process at a time holds a session (agent/history_cache.c keeps what it last wrote): a
 * second chat on it would answer from its own stale copy. An advisory lock on
 * <data>/chat/<session>.lock, held until the process ends. Returns 0, or -1 after saying why. */
static int lock_session(const struct chat *c)
{
    struct nx_buf path = NX_BUF_INIT;
    int fd, rc = 0;

    nx_buf_printf(&path, "%s/chat", c->data_dir);
    if (mkdir(nx_buf_cstr(&path), 0700) < 0 && errno != EEXIST) {
        fprintf(stderr, "\nnexo chat: cannot create %s: %s\n", nx_buf_cstr(&path), strerror(errno));
        nx_buf_cleanup(&path);
        return -1;
    }
    nx_buf_putc(&path, '/');
    nx_transcript_name(c->session_key, &path); /* a file name whatever --session holds */
    nx_buf_puts(&path, ".lock");
    fd = open(nx_buf_cstr(&path), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0 || flock(fd, LOCK_EX | LOCK_NB) < 0) {
        if (fd >= 0 && errno == EWOULDBLOCK)
            fprintf(stderr, "\nnexo chat: session %s is open in another nexo chat; use --session NAME "
                            "for a conversation of its own\n", c->session_key);
        else
            fprintf(stderr, "\nnexo chat: cannot lock %s: %s\n", nx_buf_cstr(&path), strerror(errno));
        if (fd >= 0)
            close(fd);
        rc = -1;
    } /* else the descriptor stays open (and locked) until the process ends */
    nx_buf_cleanup(&path);
    return rc;
}

/* The conversation starts once its history can be kept and is its own: a data directory that
 * cannot be used, or a session another chat holds, ends the chat (exit 1) before the first line
 * is sent. */
static void on_store_ready(int rc, void *arg)
{
    struct chat *c = arg;
    if (c->is_stopping)
        return;
    if (rc < 0) {
        fprintf(stderr, "\nnexo chat: the data directory cannot be used (%s)\n", nx_strerror(rc));
        c->exit_code = NX_EXIT_FAILURE;
        shutdown_chat(c);
        return;
    }
    if (lock_session(c) < 0) {
        c->exit_code = NX_EXIT_FAILURE;
        shutdown_chat(c);
        return;
    }
    next_line(c); /* reads, then prompts or starts the first turn */
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
    char err[256];
    if (nx_config_apply_redaction(c.cfg, err, sizeof err) < 0) { /* transcripts and logs alike */
        fprintf(stderr, "nexo chat: %s\n", err);
        nx_config_unref(c.cfg);
        return NX_EXIT_CONFIG;
    }
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
        const struct nx_agent_conf *acs = NULL;
        size_t n = nx_config_agents(c.cfg, &acs);
        fprintf(stderr, "nexo chat: no agent \"%s\"; the agents are:", agent_id);
        for (size_t i = 0; i < n; i++)
            fprintf(stderr, " %s", acs[i].id);
        fprintf(stderr, n ? "\n" : " none\n");
        nx_config_unref(c.cfg);
        return NX_EXIT_USAGE;
    }
    c.agent_id = agent_id;
    struct nx_buf key = NX_BUF_INIT;
    nx_buf_printf(&key, "agent:%s:cli:%s", agent_id, session ? session : "terminal");
    c.session_key = nx_buf_steal(&key);

    nx_runtime_init(&c.rt);
    c.rt.udata = &c;
    uv_signal_start(&c.rt.sig_term, on_signal, SIGTERM);
    uv_signal_start(&c.rt.sig_int, on_signal, SIGINT);
    struct sigaction hup;
    if (sigaction(SIGHUP, NULL, &hup) == 0 && hup.sa_handler != SIG_IGN) /* (nohup: left ignored) */
        uv_signal_start(&c.rt.sig_hup, on_signal, SIGHUP); /* the terminal closed: as SIGTERM */
    uv_unref((uv_handle_t *)&c.rt.sig_term);
    uv_unref((uv_handle_t *)&c.rt.sig_int);
    uv_unref((uv_handle_t *)&c.rt.sig_hup);
    c.data_dir = opts->data_dir;
    nx_agents_inproc_init(&c.ag, &c.rt.loop, c.cfg, opts->data_dir, on_store_ready, &c);
    if (nx_mcp_manager_new(&c.rt.loop, c.ag.http, nx_config_mcp(c.cfg), &c.mcp) < 0)
        nx_warn("chat", "MCP servers (mcp.yaml) not started: see the errors above");
    struct nx_mcp_host mhost = {.agents = c.ag.agents, .data_dir = opts->data_dir, .cfg = c.cfg};
    nx_mcp_manager_set_host(c.mcp, &mhost); /* sampling, OAuth token files, workspace roots */

    uv_handle_type kind = uv_guess_handle(STDIN_FILENO);
    int rc = 0;
    c.is_tty = kind == UV_TTY;
    c.is_tty_out = isatty(STDOUT_FILENO) == 1;
    c.is_file = kind == UV_FILE;
    if (c.is_tty) {
        rc = uv_tty_init(&c.rt.loop, &c.in_handle.tty, STDIN_FILENO, 1);
        c.in = rc == 0 ? (uv_stream_t *)&c.in_handle.tty : NULL;
        printf("nexo chat with %s (Ctrl-C cancels a reply; Ctrl-D or Ctrl-C at the prompt quits)",
               agent_id);
    } else if (!c.is_file) {
        rc = uv_pipe_init(&c.rt.loop, &c.in_handle.pipe, 0);
        if (rc == 0 && (rc = uv_pipe_open(&c.in_handle.pipe, STDIN_FILENO)) < 0)
            uv_close((uv_handle_t *)&c.in_handle.pipe, NULL);
        c.in = rc == 0 ? (uv_stream_t *)&c.in_handle.pipe : NULL;
    }
    if (rc < 0) {
        fprintf(stderr, "nexo chat: cannot read standard input: %s\n", uv_strerror(rc));
        c.exit_code = NX_EXIT_FAILURE;
        shutdown_chat(&c);
    } else if (c.in) {
        c.in->data = &c; /* input is read once the store is open (on_store_ready) */
    }
    uv_run(&c.rt.loop, UV_RUN_DEFAULT);
    shutdown_chat(&c);
    nx_runtime_close(&c.rt);
    nx_buf_cleanup(&c.line);
    free(c.session_key);
    nx_config_unref(c.cfg);
    return c.exit_code;
}
