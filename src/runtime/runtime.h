#ifndef NX_RUNTIME_RUNTIME_H
#define NX_RUNTIME_RUNTIME_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "runtime/mailbox.h"

/* The loop thread's frame: the libuv loop, the mailbox other threads post into, and the
 * process signals. SIGTERM/SIGINT ask for a graceful stop (on_stop runs on the loop); a second
 * one ends the process at once with NX_EXIT_FORCED, even if the loop is stuck. SIGHUP asks for
 * a reload (on_reload). SIGPIPE is ignored. */

/* Documented process exit codes (nexo help, docs/operations.md). */
enum {
    NX_EXIT_OK = 0,
    NX_EXIT_FAILURE = 1,   /* runtime failure (store could not open, internal error) */
    NX_EXIT_USAGE = 2,     /* bad command line */
    NX_EXIT_CONFIG = 3,    /* configuration invalid */
    NX_EXIT_LISTEN = 4,    /* could not listen (address in use, or refused off-loopback) */
    NX_EXIT_FORCED = 5,    /* a second stop signal during shutdown */
};

struct nx_runtime {
    uv_loop_t loop;
    struct nx_mailbox mailbox;
    uv_signal_t sig_term;
    uv_signal_t sig_int;
    uv_signal_t sig_hup;
    bool is_stopping;
    void (*on_stop)(struct nx_runtime *rt, int signum);
    void (*on_reload)(struct nx_runtime *rt);
    void *udata;
};

int nx_runtime_init(struct nx_runtime *rt);
/* Starts watching SIGTERM, SIGINT and SIGHUP. */
void nx_runtime_watch_signals(struct nx_runtime *rt);
/* Begins a graceful stop as if a signal had arrived (on the loop thread). */
void nx_runtime_stop(struct nx_runtime *rt, int signum);
/* Closes the runtime's own handles, runs the loop until every handle is closed and closes it.
 * Returns 0, or NX_EBUSY if handles that are not the runtime's stayed open (they are listed in
 * the log). */
int nx_runtime_close(struct nx_runtime *rt);

/* One-shot timer: fn(arg) runs on the loop after ms. The handle frees itself; cancel with
 * nx_timer_cancel before it fires (fn then never runs). */
struct nx_timer;
struct nx_timer *nx_timer_once(uv_loop_t *loop, uint64_t ms, void (*fn)(void *arg), void *arg);
void nx_timer_cancel(struct nx_timer *t);

/* Raises the soft open-file limit to the hard one (and the hard one to `need` when privileged);
 * warns when the limit stays below `need`, the descriptors the configured caps may take. */
void nx_runtime_raise_nofile(uint64_t need);

/* systemd-style readiness: when $NOTIFY_SOCKET names a unix datagram socket, sends it `msg`
 * (e.g. "READY=1"). Does nothing otherwise. */
void nx_notify(const char *msg);

#endif
