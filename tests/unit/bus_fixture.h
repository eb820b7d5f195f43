/* Shared by tests/unit/test_bus_*.c: run a loop until a condition holds (bounded), start and
 * kill a real nats-server on a free loopback port. The loop, port and directory helpers are
 * tests/unit/test_support.h's under the fx_ names these tests use. */
#ifndef NX_TEST_BUS_FIXTURE_H
#define NX_TEST_BUS_FIXTURE_H

#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "core/clock.h"
#include "test_support.h"

typedef ts_pred fx_pred;

/* Runs the loop until pred(arg) or ms elapse; returns pred's last value. */
static inline bool fx_run_until(uv_loop_t *loop, fx_pred pred, void *arg, uint64_t ms)
{
    return ts_run_until(loop, pred, arg, ms);
}

/* Lets the loop run for ms. */
static inline void fx_run_for(uv_loop_t *loop, uint64_t ms)
{
    ts_run_for(loop, ms);
}

/* Drains the loop after everything was freed (bounded). */
static inline void fx_drain(uv_loop_t *loop)
{
    ts_drain(loop);
}

static inline int fx_free_port(void)
{
    return ts_free_port();
}

struct fx_nats {
    pid_t pid;
    int port;
    char dir[64];
    char log[128];
    bool jetstream; /* start with -js */
    const char *conf; /* server settings no flag sets ("max_payload: 4096"), or NULL */
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
        if (ts_mkdtemp(ns->dir, sizeof ns->dir, "nx-bus-nats-") != 0)
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
        char conf[128];
        const char *argv[12] = {"nats-server", "-a", "127.0.0.1", "-p", port, "-sd", ns->dir};
        int argc = 7;
        if (ns->conf) {
            FILE *cf;
            snprintf(conf, sizeof conf, "%s/nats.conf", ns->dir);
            if ((cf = fopen(conf, "w"))) {
                fprintf(cf, "%s\n", ns->conf);
                fclose(cf);
            }
            argv[argc++] = "-c";
            argv[argc++] = conf;
        }
        if (ns->jetstream)
            argv[argc++] = "-js";
        argv[argc] = NULL;
        execvp("nats-server", (char *const *)argv);
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

static inline void fx_rm_tree(const char *dir)
{
    ts_rm_tree(dir);
}

static inline void fx_nats_stop(struct fx_nats *ns)
{
    fx_nats_kill(ns, SIGTERM);
    fx_rm_tree(ns->dir);
    ns->dir[0] = '\0';
}

#endif
