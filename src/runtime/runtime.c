#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/error.h"
#include "core/log.h"
#include "runtime/runtime.h"

/* After the first stop signal the loop may be busy draining; a plain handler makes the second
 * signal end the process even if the loop never comes back. */
static void forced_exit(int signum)
{
    (void)signum;
    static const char msg[] = "nexo: second stop signal, exiting now\n";
    if (write(2, msg, sizeof msg - 1) < 0) {
        /* nothing to do */
    }
    _exit(NX_EXIT_FORCED);
}

void nx_runtime_stop(struct nx_runtime *rt, int signum)
{
    if (rt->is_stopping)
        return;
    rt->is_stopping = true;
    uv_signal_stop(&rt->sig_term);
    uv_signal_stop(&rt->sig_int);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = forced_exit;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    if (rt->on_stop)
        rt->on_stop(rt, signum);
}

static void on_signal(uv_signal_t *h, int signum)
{
    struct nx_runtime *rt = h->data;
    if (signum == SIGHUP) {
        if (rt->on_reload && !rt->is_stopping)
            rt->on_reload(rt);
        return;
    }
    nx_info("runtime", "%s received: stopping gracefully (send it again to exit at once)",
            signum == SIGINT ? "SIGINT" : "SIGTERM");
    nx_runtime_stop(rt, signum);
}

int nx_runtime_init(struct nx_runtime *rt)
{
    int rc;
    memset(rt, 0, sizeof *rt);
    signal(SIGPIPE, SIG_IGN);
    if ((rc = uv_loop_init(&rt->loop)) != 0)
        return NX_EIO;
    if ((rc = nx_mailbox_init(&rt->mailbox, &rt->loop)) != 0)
        return NX_EIO;
    uv_unref((uv_handle_t *)&rt->mailbox.async);
    uv_signal_init(&rt->loop, &rt->sig_term);
    uv_signal_init(&rt->loop, &rt->sig_int);
    uv_signal_init(&rt->loop, &rt->sig_hup);
    rt->sig_term.data = rt->sig_int.data = rt->sig_hup.data = rt;
    return 0;
}

void nx_runtime_watch_signals(struct nx_runtime *rt)
{
    uv_signal_start(&rt->sig_term, on_signal, SIGTERM);
    uv_signal_start(&rt->sig_int, on_signal, SIGINT);
    uv_signal_start(&rt->sig_hup, on_signal, SIGHUP);
    /* Signals alone must not keep the loop alive. */
    uv_unref((uv_handle_t *)&rt->sig_term);
    uv_unref((uv_handle_t *)&rt->sig_int);
    uv_unref((uv_handle_t *)&rt->sig_hup);
}

static void close_if_open(uv_handle_t *h)
{
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

static void log_open_handle(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        nx_warn("runtime", "handle still open at exit: %s", uv_handle_type_name(uv_handle_get_type(h)));
}

int nx_runtime_close(struct nx_runtime *rt)
{
    close_if_open((uv_handle_t *)&rt->sig_term);
    close_if_open((uv_handle_t *)&rt->sig_int);
    close_if_open((uv_handle_t *)&rt->sig_hup);
    nx_mailbox_close(&rt->mailbox, NULL);
    uv_run(&rt->loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&rt->loop) == UV_EBUSY) {
        uv_walk(&rt->loop, log_open_handle, NULL);
        return NX_EBUSY;
    }
    return 0;
}

struct nx_timer {
    uv_timer_t handle;
    void (*fn)(void *arg);
    void *arg;
    uint64_t log_ctx; /* the log context it was set in, and fires in */
};

static void timer_closed(uv_handle_t *h)
{
    free(nx_container_of((uv_timer_t *)h, struct nx_timer, handle));
}

static void timer_fired(uv_timer_t *h)
{
    struct nx_timer *t = nx_container_of(h, struct nx_timer, handle);
    uint64_t prev = nx_log_context_swap(t->log_ctx);
    t->fn(t->arg);
    nx_log_context_swap(prev);
    uv_close((uv_handle_t *)h, timer_closed);
}

struct nx_timer *nx_timer_once(uv_loop_t *loop, uint64_t ms, void (*fn)(void *arg), void *arg)
{
    struct nx_timer *t = nx_calloc(1, sizeof *t);
    t->fn = fn;
    t->arg = arg;
    t->log_ctx = nx_log_context_current();
    uv_timer_init(loop, &t->handle);
    uv_timer_start(&t->handle, timer_fired, ms, 0);
    return t;
}

void nx_timer_cancel(struct nx_timer *t)
{
    if (!t || uv_is_closing((uv_handle_t *)&t->handle))
        return;
    uv_timer_stop(&t->handle);
    uv_close((uv_handle_t *)&t->handle, timer_closed);
}

void nx_notify(const char *msg)
{
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || !*path)
        return;
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    size_t plen = strlen(path);
    if (plen >= sizeof sa.sun_path)
        return;
    memcpy(sa.sun_path, path, plen);
    if (sa.sun_path[0] == '@')
        sa.sun_path[0] = '\0'; /* abstract namespace */
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return;
    socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + plen);
    if (sendto(fd, msg, strlen(msg), MSG_NOSIGNAL, (struct sockaddr *)&sa, len) < 0)
        nx_debug("runtime", "notify socket %s: send failed", path);
    close(fd);
}

/* Every connection, upstream request and stream is a descriptor: raise the soft limit to the
 * hard one, and say so when even that is short of what the listeners may accept. */
void nx_runtime_raise_nofile(uint64_t want)
{
    struct rlimit rl;
    rlim_t need = (rlim_t)want;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            getrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur < need) { /* privileged processes may raise the hard limit too */
        struct rlimit more = {need, need};
        if (setrlimit(RLIMIT_NOFILE, &more) == 0)
            rl = more;
    }
    if (rl.rlim_cur < need)
        nx_warn("daemon", "open-file limit %llu is below the %llu the configured connection caps may "
                "need (limits.max_connections x listeners x 2): raise it (ulimit -n, LimitNOFILE=)",
                (unsigned long long)rl.rlim_cur, (unsigned long long)need);
    else
        nx_debug("daemon", "open-file limit %llu", (unsigned long long)rl.rlim_cur);
}
