/* Helpers shared by the LLM provider tests (included by tests/unit/test_llm_*.c only): start
 * tests/fakes/fake_llm.py as a child, drive its control endpoints with a small blocking HTTP/1.0
 * client, run the loop until a condition holds, and collect a call's outcome. */
#ifndef NX_TEST_LLM_FAKE_H
#define NX_TEST_LLM_FAKE_H

#include <arpa/inet.h>
#include <jansson.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/clock.h"
#include "core/error.h"
#include "http/client.h"
#include "llm/internal.h"
#include "llm/llm.h"

static pid_t g_fake_pid = -1;
static int g_fake_fd = -1;
static int g_fake_port;

static int fake_read_line(char *line, size_t cap, int timeout_ms)
{
    uint64_t deadline = nx_mono_ms() + (uint64_t)timeout_ms;
    size_t n = 0;

    while (n + 1 < cap) {
        struct pollfd pfd = {g_fake_fd, POLLIN, 0};
        int64_t left = (int64_t)(deadline - nx_mono_ms());
        char ch;

        if (left <= 0 || poll(&pfd, 1, (int)left) <= 0)
            return -1;
        if (read(g_fake_fd, &ch, 1) != 1)
            return -1;
        if (ch == '\n')
            break;
        line[n++] = ch;
    }
    line[n] = '\0';
    return 0;
}

static int fake_start(void)
{
    char path[4096], line[128];
    const char *src = getenv("NEXO_SOURCE_DIR");
    int fds[2];

    signal(SIGPIPE, SIG_IGN);
    if (src) {
        snprintf(path, sizeof path, "%s/tests/fakes/fake_llm.py", src);
    } else {
        const char *slash = strrchr(__FILE__, '/');
        int dirlen = slash ? (int)(slash - __FILE__) : 1;
        snprintf(path, sizeof path, "%.*s/../fakes/fake_llm.py", dirlen, slash ? __FILE__ : ".");
    }
    if (pipe(fds) != 0)
        return -1;
    g_fake_pid = fork();
    if (g_fake_pid < 0)
        return -1;
    if (g_fake_pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        dup2(fds[1], 1);
        close(fds[0]);
        close(fds[1]);
        execl("/usr/bin/python3", "python3", "-B", path, (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    g_fake_fd = fds[0];
    if (fake_read_line(line, sizeof line, 15000) != 0 || sscanf(line, "READY %d", &g_fake_port) != 1)
        return -1;
    return 0;
}

static void fake_stop(void)
{
    if (g_fake_pid > 0) {
        kill(g_fake_pid, SIGKILL);
        waitpid(g_fake_pid, NULL, 0);
        g_fake_pid = -1;
    }
    if (g_fake_fd >= 0) {
        close(g_fake_fd);
        g_fake_fd = -1;
    }
}

static int fake_group_setup(void **state)
{
    (void)state;
    return fake_start();
}

static int fake_group_teardown(void **state)
{
    (void)state;
    fake_stop();
    return 0;
}

/* A blocking HTTP/1.0 exchange with the fake's control endpoints; returns the body (caller
 * frees) or NULL. Bounded by a 10 s deadline. */
static char *fake_http(const char *method, const char *path, const char *body)
{
    struct sockaddr_in sa;
    struct nx_buf req = NX_BUF_INIT, resp = NX_BUF_INIT;
    uint64_t deadline = nx_mono_ms() + 10000;
    char buf[4096], *out = NULL, *sep;
    size_t off = 0;
    int fd;

    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)g_fake_port);
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

static void fake_post(const char *path, const char *body)
{
    char *r = fake_http("POST", path, body);
    if (!r) {
        fprintf(stderr, "fake: POST %s failed\n", path);
        abort();
    }
    free(r);
}

static void fake_reset(void)
{
    fake_post("/_reset", "{}");
}

static void fake_script(const char *steps_json)
{
    fake_post("/_script", steps_json);
}

/* The recorded requests (a JSON array; caller decrefs). */
static json_t *fake_requests(void)
{
    char *r = fake_http("GET", "/_requests", NULL);
    json_t *j = r ? json_loads(r, 0, NULL) : NULL;
    free(r);
    if (!json_is_array(j)) {
        fprintf(stderr, "fake: bad /_requests\n");
        abort();
    }
    return j;
}

static void fake_url(char *out, size_t n, const char *suffix)
{
    snprintf(out, n, "http://127.0.0.1:%d%s", g_fake_port, suffix);
}

/* ---- the loop ---------------------------------------------------------------------------- */

static void guard_tick(uv_timer_t *t)
{
    (void)t;
}

/* Runs the loop until *count >= want (count may be NULL: run for timeout_ms). */
static void run_until(uv_loop_t *loop, const int *count, int want, uint64_t timeout_ms)
{
    uint64_t deadline = nx_mono_ms() + timeout_ms;
    uv_timer_t guard;

    uv_timer_init(loop, &guard);
    uv_timer_start(&guard, guard_tick, 10, 10);
    while ((!count || *count < want) && nx_mono_ms() < deadline)
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&guard, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
}

struct env {
    uv_loop_t loop;
    struct nx_http_client *http;
};

static void env_init(struct env *e)
{
    if (uv_loop_init(&e->loop) != 0 || nx_http_client_new(&e->loop, NULL, &e->http) != 0)
        abort();
}

static void env_cleanup(struct env *e)
{
    nx_http_client_free(e->http);
    for (int i = 0; i < 200 && uv_run(&e->loop, UV_RUN_NOWAIT); i++)
        ;
    if (uv_loop_close(&e->loop) != 0) {
        fprintf(stderr, "loop has open handles\n");
        abort();
    }
}

static struct nx_llm_provider *provider(struct env *e, const char *name, const char *kind,
                                        const char *key, uint32_t timeout_ms,
                                        const struct nx_breaker_conf *bc)
{
    struct nx_llm_provider_conf c;
    struct nx_llm_provider *p = NULL;
    char base[128];

    memset(&c, 0, sizeof c);
    fake_url(base, sizeof base, strcmp(kind, "openai") == 0 ? "/v1/" : "/");
    c.name = name;
    c.kind = kind;
    c.api_key = key;
    c.base_url = base;
    c.timeout_ms = timeout_ms;
    c.breaker = bc;
    if (nx_llm_provider_new(e->http, &c, &p) != 0)
        abort();
    return p;
}

/* ---- one call's outcome ------------------------------------------------------------------ */

struct outcome {
    int ndone;
    int rc;
    struct nx_buf text;      /* streamed deltas, joined */
    int ndeltas;
    json_t *message;
    enum nx_llm_stop stop;
    struct nx_llm_usage usage;
    char model[128];
    int http_status;
    char error_type[128];
    char error_message[1024];
    int64_t retry_after_ms;
    bool is_retryable;
    struct nx_llm_call *call;
    int cancel_after_deltas; /* > 0: cancel from on_text after that many deltas */
    uint64_t done_ms;
};

static void oc_text(const char *d, size_t n, void *u)
{
    struct outcome *o = u;
    nx_buf_append(&o->text, d, n);
    o->ndeltas++;
    if (o->cancel_after_deltas && o->ndeltas == o->cancel_after_deltas)
        nx_llm_cancel(o->call);
}

static void oc_done(int rc, const struct nx_llm_result *r, void *u)
{
    struct outcome *o = u;
    o->ndone++;
    o->rc = rc;
    o->done_ms = nx_mono_ms();
    o->message = r->message ? json_incref(r->message) : NULL;
    o->stop = r->stop;
    o->usage = r->usage;
    snprintf(o->model, sizeof o->model, "%s", r->model ? r->model : "");
    o->http_status = r->http_status;
    snprintf(o->error_type, sizeof o->error_type, "%s", r->error_type ? r->error_type : "");
    snprintf(o->error_message, sizeof o->error_message, "%s", r->error_message ? r->error_message : "");
    o->retry_after_ms = r->retry_after_ms;
    o->is_retryable = r->is_retryable;
}

static void outcome_cleanup(struct outcome *o)
{
    nx_buf_cleanup(&o->text);
    json_decref(o->message);
}

static const struct nx_llm_callbacks *callbacks(struct outcome *o)
{
    static struct nx_llm_callbacks cb;
    cb.on_text = oc_text;
    cb.on_done = oc_done;
    cb.udata = o;
    return &cb;
}

/* The text of the message's first text block, or "". */
static const char *message_text(const json_t *m)
{
    size_t i;
    json_t *b;

    json_array_foreach(json_object_get(m, "content"), i, b) {
        if (nx_json_str(b, "type") && !strcmp(nx_json_str(b, "type"), "text"))
            return nx_json_str(b, "text");
    }
    return "";
}

static json_t *user_messages(const char *text)
{
    return json_pack("[{s:s, s:[{s:s, s:s}]}]", "role", "user", "content", "type", "text", "text", text);
}

#endif
