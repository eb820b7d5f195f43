/* Shared by tests/unit/test_bus_*.c: run a loop until a condition holds (bounded), start and
 * kill a real nats-server on a free loopback port. */
#ifndef NX_TEST_BUS_FIXTURE_H
#define NX_TEST_BUS_FIXTURE_H

#include <arpa/inet.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "core/clock.h"

typedef bool (*fx_pred)(void *arg);

static inline void fx_tick(uv_timer_t *t)
{
    (void)t;
}

/* Runs the loop until pred(arg) or ms elapse; returns pred's last value. */
static inline bool fx_run_until(uv_loop_t *loop, fx_pred pred, void *arg, uint64_t ms)
{
    uint64_t end = nx_mono_ms() + ms;
    uv_timer_t t;
    bool ok;

    uv_timer_init(loop, &t);
    uv_timer_start(&t, fx_tick, 5, 5);
    while (!(ok = pred(arg)) && nx_mono_ms() < end)
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    return ok;
}

static inline bool fx_never(void *arg)
{
    (void)arg;
    return false;
}

/* Lets the loop run for ms. */
static inline void fx_run_for(uv_loop_t *loop, uint64_t ms)
{
    fx_run_until(loop, fx_never, NULL, ms);
}

/* Drains the loop after everything was freed (bounded). */
static inline void fx_drain(uv_loop_t *loop)
{
    for (int i = 0; i < 200 && uv_run(loop, UV_RUN_NOWAIT); i++)
        usleep(1000);
}

static inline int fx_free_port(void)
{
    struct sockaddr_in a = {0};
    socklen_t alen = sizeof a;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int port;

    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) < 0 ||
        getsockname(fd, (struct sockaddr *)&a, &alen) < 0)
        abort();
    port = ntohs(a.sin_port);
    close(fd);
    return port;
}

struct fx_nats {
    pid_t pid;
    int port;
    char dir[64];
    char log[128];
};

static inline bool fx_log_has(const char *path, const char *needle)
{
    char buf[16384];
    FILE *f = fopen(path, "r");
    size_t n;

    if (!f)
        return false;
    n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    return strstr(buf, needle) != NULL;
}

/* Starts nats-server on ns->port (picks one when 0) and waits for "Server is ready" (10 s). */
static inline bool fx_nats_start(struct fx_nats *ns)
{
    char port[16];
    pid_t pid;
    uint64_t end;

    if (!ns->port)
        ns->port = fx_free_port();
    if (!ns->dir[0]) {
        snprintf(ns->dir, sizeof ns->dir, "/tmp/nx-bus-nats-XXXXXX");
        if (!mkdtemp(ns->dir))
            return false;
    }
    snprintf(ns->log, sizeof ns->log, "%s/server.log", ns->dir);
    unlink(ns->log);
    snprintf(port, sizeof port, "%d", ns->port);
    pid = fork();
    if (pid < 0)
        return false;
    if (pid == 0) {
        int fd = open(ns->log, O_WRONLY | O_CREAT | O_TRUNC, 0600);

        prctl(PR_SET_PDEATHSIG, SIGKILL); /* a crashed test leaves no server behind */
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execlp("nats-server", "nats-server", "-a", "127.0.0.1", "-p", port, "-sd", ns->dir,
               (char *)NULL);
        _exit(127);
    }
    ns->pid = pid;
    end = nx_mono_ms() + 10000;
    while (nx_mono_ms() < end) {
        int st;

        if (fx_log_has(ns->log, "Server is ready"))
            return true;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            ns->pid = 0;
            return false;
        }
        usleep(5000);
    }
    return false;
}

static inline void fx_nats_kill(struct fx_nats *ns, int sig)
{
    if (ns->pid > 0) {
        kill(ns->pid, sig);
        waitpid(ns->pid, NULL, 0);
        ns->pid = 0;
    }
}

static inline int fx_rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static inline void fx_rm_tree(const char *dir)
{
    if (dir[0])
        nftw(dir, fx_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static inline void fx_nats_stop(struct fx_nats *ns)
{
    fx_nats_kill(ns, SIGTERM);
    fx_rm_tree(ns->dir);
    ns->dir[0] = '\0';
}

#endif
