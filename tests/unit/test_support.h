/* Helpers shared by the unit test programs (included by tests/unit/test_*.c and the fixture
 * headers next to it; only test_*.c files are built, so this header is never compiled alone):
 * start a helper process and read its "READY <port>" line, kill it, a small blocking HTTP/1.0
 * client for its control endpoints, run a loop until a condition holds, temporary directories,
 * free loopback ports, and the answer collector for tool invocations. Everything is bounded in
 * time; nothing sleeps where a readiness signal exists. */
#ifndef NX_TEST_SUPPORT_H
#define NX_TEST_SUPPORT_H

#include <arpa/inet.h>
#include <ftw.h>
#include <jansson.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/clock.h"
#include "core/metrics.h"

/* ---- child processes ----------------------------------------------------------------------- */

struct ts_child {
    pid_t pid;
    int out_fd; /* the child's stdout; stays open for lines after READY */
    int port;
};

#define TS_CHILD_INIT {-1, -1, 0}

/* Reads one line (without its '\n') from fd, waiting at most timeout_ms in all. */
static inline int ts_read_line(int fd, char *line, size_t cap, int timeout_ms)
{
    uint64_t deadline = nx_mono_ms() + (uint64_t)timeout_ms;
    size_t n = 0;

    while (n + 1 < cap) {
        struct pollfd pfd = {fd, POLLIN, 0};
        int64_t left = (int64_t)(deadline - nx_mono_ms());
        char ch;

        if (left <= 0 || poll(&pfd, 1, (int)left) <= 0)
            return -1;
        if (read(fd, &ch, 1) != 1)
            return -1;
        if (ch == '\n')
            break;
        line[n++] = ch;
    }
    line[n] = '\0';
    return 0;
}

/* The path of rel below tests/: $NEXO_SOURCE_DIR/tests/rel under ctest, or next to this header
 * when a test is run by hand. */
static inline void ts_tests_path(char *out, size_t n, const char *rel)
{
    const char *src = getenv("NEXO_SOURCE_DIR");

    if (src) {
        snprintf(out, n, "%s/tests/%s", src, rel);
    } else {
        const char *slash = strrchr(__FILE__, '/');
        int dirlen = slash ? (int)(slash - __FILE__) : 1;
        snprintf(out, n, "%.*s/../%s", dirlen, slash ? __FILE__ : ".", rel);
    }
}

/* Forks and execs argv[0] (a path) with its stdout on a pipe; the child dies with us
 * (PR_SET_PDEATHSIG). Waits at most timeout_ms for its "READY <port>" line. SIGPIPE is ignored
 * here so that a peer which goes away cannot kill the test. */
static inline int ts_spawn(struct ts_child *c, char *const argv[], int timeout_ms)
{
    char line[128];
    int fds[2];

    signal(SIGPIPE, SIG_IGN);
    if (pipe(fds) != 0)
        return -1;
    c->pid = fork();
    if (c->pid < 0) {
        close(fds[0]);
        close(fds[1]);
        return -1;
    }
    if (c->pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        dup2(fds[1], 1);
        close(fds[0]);
        close(fds[1]);
        execv(argv[0], argv);
        _exit(127);
    }
    close(fds[1]);
    c->out_fd = fds[0];
    if (ts_read_line(c->out_fd, line, sizeof line, timeout_ms) != 0 ||
        sscanf(line, "READY %d", &c->port) != 1)
        return -1;
    return 0;
}

/* Starts `python3 -B tests/<rel>` (tools/http_peer.py, tools/socks5_proxy.py,
 * fakes/fake_llm.py) and waits up to 15 s for it to be ready. */
static inline int ts_spawn_py(struct ts_child *c, const char *rel)
{
    char path[4096];
    char *argv[] = {"/usr/bin/python3", "-B", path, NULL};

    ts_tests_path(path, sizeof path, rel);
    return ts_spawn(c, argv, 15000);
}

/* Kills and reaps the child and closes its pipe; harmless when it never started. */
static inline void ts_kill(struct ts_child *c)
{
    if (c->pid > 0) {
        kill(c->pid, SIGKILL);
        waitpid(c->pid, NULL, 0);
        c->pid = -1;
    }
    if (c->out_fd >= 0) {
        close(c->out_fd);
        c->out_fd = -1;
    }
}

/* "http://<host>:<port><path>" */
static inline void ts_url(char *out, size_t n, const char *host, int port, const char *path)
{
    snprintf(out, n, "http://%s:%d%s", host, port, path);
}

/* ---- a blocking HTTP/1.0 client for control endpoints -------------------------------------- */

/* One exchange with 127.0.0.1:port, bounded by a 10 s deadline; body (may be NULL) is sent as
 * application/json. Returns the response body (caller frees) or NULL. */
static inline char *ts_http(int port, const char *method, const char *path, const char *body)
{
    struct sockaddr_in sa;
    struct nx_buf req = NX_BUF_INIT, resp = NX_BUF_INIT;
    uint64_t deadline = nx_mono_ms() + 10000;
    char buf[4096], *out = NULL, *sep;
    size_t off = 0;
    int fd;

    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if ((fd = socket(AF_INET, SOCK_STREAM, 0)) < 0)
        return NULL;
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0)
        goto out;
    nx_buf_printf(&req, "%s %s HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                        "Content-Length: %zu\r\n\r\n%s",
                  method, path, body ? strlen(body) : 0, body ? body : "");
    while (off < req.len) {
        ssize_t n = write(fd, req.data + off, req.len - off);
        if (n <= 0)
            goto out;
        off += (size_t)n;
    }
    for (;;) {
        struct pollfd pfd = {fd, POLLIN, 0};
        int64_t left = (int64_t)(deadline - nx_mono_ms());
        ssize_t n;
        if (left <= 0 || poll(&pfd, 1, (int)left) <= 0)
            goto out;
        if ((n = read(fd, buf, sizeof buf)) < 0)
            goto out;
        if (n == 0)
            break;
        nx_buf_append(&resp, buf, (size_t)n);
    }
    if ((sep = strstr(nx_buf_cstr(&resp), "\r\n\r\n")))
        out = nx_strdup(sep + 4);
out:
    close(fd);
    nx_buf_cleanup(&req);
    nx_buf_cleanup(&resp);
    return out;
}

/* POSTs a JSON text; a failed exchange aborts the test program (the fixture is broken). */
static inline void ts_http_post(int port, const char *path, const char *json_text)
{
    char *r = ts_http(port, "POST", path, json_text);

    if (!r) {
        fprintf(stderr, "test peer: POST %s failed\n", path);
        abort();
    }
    free(r);
}

/* GETs a JSON document (caller decrefs); NULL when the exchange or the parse failed. */
static inline json_t *ts_http_get_json(int port, const char *path)
{
    char *r = ts_http(port, "GET", path, NULL);
    json_t *j = r ? json_loads(r, 0, NULL) : NULL;

    free(r);
    return j;
}

/* ---- the loop ------------------------------------------------------------------------------ */

typedef bool (*ts_pred)(void *arg);

static inline void ts_tick(uv_timer_t *t)
{
    (void)t;
}

/* Runs the loop until pred(arg) holds or ms pass (a 5 ms timer keeps the loop waking up);
 * returns pred's last value. */
static inline bool ts_run_until(uv_loop_t *loop, ts_pred pred, void *arg, uint64_t ms)
{
    uint64_t end = nx_mono_ms() + ms;
    uv_timer_t t;
    bool ok;

    uv_timer_init(loop, &t);
    uv_timer_start(&t, ts_tick, 5, 5);
    while (!(ok = pred(arg)) && nx_mono_ms() < end)
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    return ok;
}

static inline bool ts_never(void *arg)
{
    (void)arg;
    return false;
}

/* Lets the loop run for ms. */
static inline void ts_run_for(uv_loop_t *loop, uint64_t ms)
{
    ts_run_until(loop, ts_never, NULL, ms);
}

/* A counter and the value it has to reach: ts_run_until(loop, ts_reached, &(struct ts_count){&n, 3}, ms) */
struct ts_count {
    const int *v;
    int n;
};

static inline bool ts_reached(void *arg)
{
    const struct ts_count *w = arg;

    return *w->v >= w->n;
}

/* Runs the loop until *count >= want or ms pass; count NULL: just for ms. */
static inline bool ts_run_until_count(uv_loop_t *loop, const int *count, int want, uint64_t ms)
{
    struct ts_count w = {count, want};

    return count ? ts_run_until(loop, ts_reached, &w, ms) : (ts_run_for(loop, ms), false);
}

/* Drains the loop after everything on it was freed (bounded: 200 rounds, 1 ms apart). */
static inline void ts_drain(uv_loop_t *loop)
{
    for (int i = 0; i < 200 && uv_run(loop, UV_RUN_NOWAIT); i++)
        usleep(1000);
}

/* Drains the loop and closes it: 0, or UV_EBUSY when a handle was left open. */
static inline int ts_loop_finish(uv_loop_t *loop)
{
    ts_drain(loop);
    return uv_loop_close(loop);
}

/* ---- ports and directories ----------------------------------------------------------------- */

/* A loopback port that was free a moment ago (bound, read back, closed); aborts on failure. */
static inline int ts_free_port(void)
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

/* Makes /tmp/<prefix>XXXXXX into out (n >= 64 is plenty); 0 or -1. */
static inline int ts_mkdtemp(char *out, size_t n, const char *prefix)
{
    if ((size_t)snprintf(out, n, "/tmp/%sXXXXXX", prefix) >= n)
        return -1;
    return mkdtemp(out) ? 0 : -1;
}

static inline int ts_rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* rm -rf dir without following symlinks; "" is a no-op. 0 or -1. */
static inline int ts_rm_tree(const char *dir)
{
    if (!dir[0])
        return 0;
    return nftw(dir, ts_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* ---- tool answers -------------------------------------------------------------------------- */

/* Collects what an nx_tool_invoke answered (pass ts_on_answer as its nx_tool_done_fn). */
struct ts_answer {
    int calls;
    bool is_error;
    char text[70000];
};

static inline void ts_on_answer(const char *output, size_t len, bool is_error, void *udata)
{
    struct ts_answer *a = udata;

    a->calls++;
    a->is_error = is_error;
    if (len >= sizeof a->text)
        len = sizeof a->text - 1;
    memcpy(a->text, output, len);
    a->text[len] = '\0';
}

/* Runs a group of tests on nexo's own HTTP/1.1 engine, then again with *curl_only set (every call
 * by libcurl), metrics counted from zero each time. (After <cmocka.h>.) */
#ifdef cmocka_unit_test
static inline int ts_run_twice(bool *curl_only, const struct CMUnitTest *tests, size_t n,
                               CMFixtureFunction setup, CMFixtureFunction teardown)
{
    int rc;

    *curl_only = false;
    rc = _cmocka_run_group_tests("nexo's HTTP/1.1 engine", tests, n, setup, teardown);
    *curl_only = true;
    nx_metrics_reset();
    return rc | _cmocka_run_group_tests("libcurl", tests, n, setup, teardown);
}
#endif

#endif
