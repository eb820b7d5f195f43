/* Benchmark upstream: an OpenAI Chat Completions server in plain epoll, one thread, no parsing
 * beyond what HTTP/1.1 keep-alive needs. It shows nexo's own ceiling where the Python fake
 * (tests/fakes/fake_llm.py) would be the limit.
 *
 *   POST <any path>   a chat.completion JSON at once; with "stream":true in the body, SSE
 *                     chat.completion.chunk events: the role, then CHUNKS content deltas
 *                     DELAY_MS apart (0 = all at once), the finish chunk, usage, [DONE]
 *   GET /_stats       {"requests","streams_done","streams_active","peak_streams","conns",
 *                      "peak_conns"}; GET /_stats?reset also zeroes the peaks afterwards
 *
 * Usage: instant_upstream [--port P] [--chunks N] [--chunk-delay-ms D]
 * Prints "READY <port>" once listening on 127.0.0.1. Raises its open-file limit to the hard one. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_REQ (1 << 20)

struct conn {
    int fd;
    char *in;
    size_t in_len, in_cap;
    char *out;
    size_t out_len, out_off, out_cap;
    bool want_out;
    int chunks_left;     /* streaming: content deltas still to send; -1 = not streaming */
    uint64_t due_ms;     /* when the next delta is due */
    struct conn *next;   /* FIFO of streams waiting for their next delta (all delays are equal) */
    bool queued;
    bool dead;
};

static int ep;
static int n_chunks = 3;
static int delay_ms;
static struct conn *q_head, *q_tail;
static struct {
    uint64_t requests, streams_done;
    long streams_active, peak_streams, conns, peak_conns;
} st;

static const char json_body[] =
    "{\"id\":\"chatcmpl-instant\",\"object\":\"chat.completion\",\"created\":1700000000,\"model\":\"fake\","
    "\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"hello from fake\","
    "\"refusal\":null},\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":10,"
    "\"completion_tokens\":4,\"total_tokens\":14,\"prompt_tokens_details\":{\"cached_tokens\":0}}}";

#define CHUNK_HEAD                                                                    \
    "{\"id\":\"chatcmpl-instant\",\"object\":\"chat.completion.chunk\",\"created\":1700000000," \
    "\"model\":\"fake\",\"choices\":["
static const char ev_role[] =
    "data: " CHUNK_HEAD "{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,"
    "\"finish_reason\":null}]}\n\n";
static const char ev_text[] =
    "data: " CHUNK_HEAD "{\"index\":0,\"delta\":{\"content\":\"hello \"},\"logprobs\":null,"
    "\"finish_reason\":null}]}\n\n";
static const char ev_end[] =
    "data: " CHUNK_HEAD "{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}]}\n\n"
    "data: " CHUNK_HEAD "],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":4,\"total_tokens\":14}}\n\n"
    "data: [DONE]\n\n";

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void *xrealloc(void *p, size_t n)
{
    void *r = realloc(p, n);
    if (!r)
        abort();
    return r;
}

static void out_add(struct conn *c, const char *data, size_t n)
{
    if (c->out_len + n > c->out_cap) {
        c->out_cap = (c->out_len + n) * 2;
        c->out = xrealloc(c->out, c->out_cap);
    }
    memcpy(c->out + c->out_len, data, n);
    c->out_len += n;
}

static void out_chunk(struct conn *c, const char *data, size_t n)
{
    char head[32];
    int k = snprintf(head, sizeof head, "%zx\r\n", n);
    out_add(c, head, (size_t)k);
    out_add(c, data, n);
    out_add(c, "\r\n", 2);
}

static void set_events(struct conn *c, bool want_out)
{
    struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0u), .data.ptr = c};
    if (want_out != c->want_out) {
        epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
        c->want_out = want_out;
    }
}

static void conn_close(struct conn *c)
{
    if (c->dead)
        return;
    c->dead = true;
    if (c->chunks_left >= 0)
        st.streams_active--;
    st.conns--;
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    if (!c->queued) {
        free(c->in);
        free(c->out);
        free(c);
    } /* else freed when it leaves the queue */
}

static void flush_out(struct conn *c)
{
    while (c->out_off < c->out_len) {
        ssize_t w = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                set_events(c, true);
                return;
            }
            if (errno == EINTR)
                continue;
            conn_close(c);
            return;
        }
        c->out_off += (size_t)w;
    }
    c->out_off = c->out_len = 0;
    set_events(c, false);
}

static void enqueue(struct conn *c)
{
    c->due_ms = now_ms() + (uint64_t)delay_ms;
    c->next = NULL;
    c->queued = true;
    if (q_tail)
        q_tail->next = c;
    else
        q_head = c;
    q_tail = c;
}

/* Sends the stream's next delta (and the end after the last); requeues it when more are due. */
static void stream_step(struct conn *c)
{
    out_chunk(c, ev_text, sizeof ev_text - 1);
    while (--c->chunks_left > 0 && delay_ms == 0)
        out_chunk(c, ev_text, sizeof ev_text - 1);
    if (c->chunks_left > 0) {
        enqueue(c);
    } else {
        out_chunk(c, ev_end, sizeof ev_end - 1);
        out_add(c, "0\r\n\r\n", 5);
        c->chunks_left = -1;
        st.streams_active--;
        st.streams_done++;
    }
    flush_out(c);
}

static void answer_stats(struct conn *c, bool reset)
{
    char body[512], head[128];
    int n = snprintf(body, sizeof body,
                     "{\"requests\":%llu,\"streams_done\":%llu,\"streams_active\":%ld,\"peak_streams\":%ld,"
                     "\"conns\":%ld,\"peak_conns\":%ld}",
                     (unsigned long long)st.requests, (unsigned long long)st.streams_done,
                     st.streams_active, st.peak_streams, st.conns, st.peak_conns);
    int h = snprintf(head, sizeof head, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     "Content-Length: %d\r\n\r\n", n);
    out_add(c, head, (size_t)h);
    out_add(c, body, (size_t)n);
    if (reset) {
        st.peak_streams = st.streams_active;
        st.peak_conns = st.conns;
    }
    flush_out(c);
}

static void answer(struct conn *c, const char *req, size_t head_len, const char *body, size_t body_len)
{
    static const char sse_head[] = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
                                   "Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n";
    if (head_len > 17 && memcmp(req, "GET /_stats", 11) == 0) {
        answer_stats(c, memcmp(req + 11, "?reset", 6) == 0);
        return;
    }
    st.requests++;
    if (memmem(body, body_len, "\"stream\":true", 13) || memmem(body, body_len, "\"stream\": true", 14)) {
        out_add(c, sse_head, sizeof sse_head - 1);
        out_chunk(c, ev_role, sizeof ev_role - 1);
        c->chunks_left = n_chunks > 0 ? n_chunks : 1;
        if (++st.streams_active > st.peak_streams)
            st.peak_streams = st.streams_active;
        stream_step(c);
        return;
    }
    char head[160];
    int h = snprintf(head, sizeof head, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\n\r\n", sizeof json_body - 1);
    out_add(c, head, (size_t)h);
    out_add(c, json_body, sizeof json_body - 1);
    flush_out(c);
}

/* Content-Length of a header block, or 0. */
static size_t content_length(const char *head, size_t len)
{
    static const char name[] = "\r\ncontent-length:";
    for (size_t i = 0; i + sizeof name - 1 < len; i++) {
        if (strncasecmp(head + i, name, sizeof name - 1) == 0) {
            char *end;
            unsigned long long v = strtoull(head + i + sizeof name - 1, &end, 10);
            return (size_t)v;
        }
    }
    return 0;
}

static void on_readable(struct conn *c)
{
    for (;;) {
        if (c->in_cap - c->in_len < 16384) {
            c->in_cap = c->in_cap ? c->in_cap * 2 : 32768;
            c->in = xrealloc(c->in, c->in_cap);
        }
        ssize_t r = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, 0);
        if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
            conn_close(c);
            return;
        }
        if (r < 0)
            break;
        c->in_len += (size_t)r;
        if (c->in_len > MAX_REQ) {
            conn_close(c);
            return;
        }
    }
    /* Answer every complete request (a stream in progress holds the rest until it ends). */
    while (c->in_len && c->chunks_left < 0 && !c->dead) {
        char *end = memmem(c->in, c->in_len, "\r\n\r\n", 4);
        if (!end)
            return;
        size_t head_len = (size_t)(end - c->in) + 4;
        size_t body_len = content_length(c->in, head_len);
        if (c->in_len < head_len + body_len)
            return;
        answer(c, c->in, head_len, c->in + head_len, body_len);
        if (c->dead)
            return;
        memmove(c->in, c->in + head_len + body_len, c->in_len - head_len - body_len);
        c->in_len -= head_len + body_len;
    }
}

static void run_queue(void)
{
    uint64_t now = now_ms();
    while (q_head && q_head->due_ms <= now) {
        struct conn *c = q_head;
        q_head = c->next;
        if (!q_head)
            q_tail = NULL;
        c->queued = false;
        if (c->dead) {
            free(c->in);
            free(c->out);
            free(c);
            continue;
        }
        stream_step(c);
        if (!c->dead && c->chunks_left < 0 && c->in_len)
            on_readable(c); /* a pipelined request waited for the stream */
    }
}

static int listen_on(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    socklen_t alen = sizeof a;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, 4096) < 0) {
        perror("bind/listen");
        exit(1);
    }
    getsockname(fd, (struct sockaddr *)&a, &alen);
    printf("READY %d\n", ntohs(a.sin_port));
    fflush(stdout);
    return fd;
}

static void on_accept(int lfd)
{
    for (int i = 0; i < 1024; i++) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return;
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct conn *c = calloc(1, sizeof *c);
        if (!c)
            abort();
        c->fd = fd;
        c->chunks_left = -1;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
        if (++st.conns > st.peak_conns)
            st.peak_conns = st.conns;
    }
}

static int int_arg(const char *s)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (*end || v < 0 || v > 1000000) {
        fprintf(stderr, "bad number %s\n", s);
        exit(2);
    }
    return (int)v;
}

int main(int argc, char **argv)
{
    int port = 0;
    struct rlimit rl;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--port") == 0)
            port = int_arg(argv[i + 1]);
        else if (strcmp(argv[i], "--chunks") == 0)
            n_chunks = int_arg(argv[i + 1]);
        else if (strcmp(argv[i], "--chunk-delay-ms") == 0)
            delay_ms = int_arg(argv[i + 1]);
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    signal(SIGPIPE, SIG_IGN);
    ep = epoll_create1(EPOLL_CLOEXEC);
    int lfd = listen_on(port);
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev);
    struct epoll_event evs[256];
    for (;;) {
        int timeout = -1;
        if (q_head) {
            uint64_t now = now_ms();
            timeout = q_head->due_ms > now ? (int)(q_head->due_ms - now) : 0;
        }
        int n = epoll_wait(ep, evs, 256, timeout);
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (!c) {
                on_accept(lfd);
                continue;
            }
            if (c->dead)
                continue;
            if (evs[i].events & EPOLLOUT)
                flush_out(c);
            if (!c->dead && (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
                on_readable(c);
        }
        run_queue();
    }
}
