/* Bus benchmarks (bench/run.sh builds this against libnexo_lib.a). One JSON line per figure,
 * each with a baseline measured in the same run:
 *  - in-process: events/s through nx_bus_publish to one subscriber; baseline: serializing the
 *    same envelope (nx_envelope_dump), the floor of any publish;
 *  - core NATS: events/s published by one bus and received by another (two connections, one
 *    nats-server); baseline: raw libnats publish -> async subscriber, same sizes;
 *  - JetStream: the same on a subject captured by a stream (Nats-Msg-Id on every event);
 *    baseline: raw js_PublishAsync of the same events; and routed work (agent.route.*: durable
 *    consumers, max_ack_pending 1 per partition, ack after a flush) items/s;
 *  - disk-queue replay: N events queued in SQLite while NATS is down, then NATS starts: events/s
 *    from the reconnect to the last one received by another bus; baseline: the core NATS rate.
 * Usage: bus_bench [N]   (needs nats-server on PATH; starts its own on free ports) */
#include <fcntl.h>
#include <jansson.h>
#include <nats/nats.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "bus/bus.h"
#include "core/clock.h"
#include "core/log.h"
#include "store/store.h"

extern char **environ;

static uv_loop_t loop;
static uint64_t received;

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void on_wake(uv_timer_t *t)
{
    (void)t;
}

/* Runs the loop until *n >= target or timeout; true when reached. */
static bool run_until(const uint64_t *n, uint64_t target, double timeout)
{
    double end = now_s() + timeout;

    while (*n < target && now_s() < end)
        uv_run(&loop, UV_RUN_ONCE);
    return *n >= target;
}

static void run_for(double s)
{
    double end = now_s() + s;

    while (now_s() < end)
        uv_run(&loop, UV_RUN_ONCE);
}

static int on_event(struct nx_bus *bus, struct nx_bus_msg *m, void *arg)
{
    (void)bus;
    (void)m;
    (void)arg;
    received++;
    return 0;
}

static int free_port(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    int fd = socket(AF_INET, SOCK_STREAM, 0), port;

    bind(fd, (struct sockaddr *)&a, sizeof a);
    getsockname(fd, (struct sockaddr *)&a, &len);
    port = ntohs(a.sin_port);
    close(fd);
    return port;
}

static pid_t nats_start(int port, const char *store_dir)
{
    char p[16];
    char *argv[] = {"nats-server", "-a", "127.0.0.1", "-p", p, "-js", "-sd", (char *)store_dir, NULL};
    pid_t pid;
    natsConnection *nc = NULL;
    char url[64];

    snprintf(p, sizeof p, "%d", port);
    snprintf(url, sizeof url, "nats://127.0.0.1:%d", port);
    posix_spawn_file_actions_t fa;

    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    if (posix_spawnp(&pid, "nats-server", &fa, NULL, argv, environ) != 0) {
        perror("nats-server");
        exit(1);
    }
    posix_spawn_file_actions_destroy(&fa);
    for (int i = 0; i < 200; i++) { /* ready when it accepts a connection */
        if (natsConnection_ConnectTo(&nc, url) == NATS_OK) {
            natsConnection_Destroy(nc);
            return pid;
        }
        usleep(25000);
    }
    fprintf(stderr, "bus_bench: nats-server did not start\n");
    exit(1);
}

static void nats_stop(pid_t pid)
{
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

static struct nx_envelope *make_env(const char *topic)
{
    json_t *p = json_pack("{s:s, s:s, s:i, s:s}", "kind", "message", "chat", "c1", "msg_id", 1, "text",
                          "a message of about the size of a short chat line, sixty-four bytes.");
    struct nx_envelope *e = NULL;

    nx_envelope_new(topic, "bench", "agent:a:bench:c1", p, &e);
    json_decref(p);
    return e;
}

static void emit(const char *bench, double rate, const char *baseline, double base_rate, uint64_t n)
{
    printf("{\"bench\": \"%s\", \"events\": %llu, \"events_per_s\": %.0f, \"baseline\": \"%s\", "
           "\"baseline_per_s\": %.0f, \"ratio\": %.3f}\n", bench, (unsigned long long)n, rate, baseline,
           base_rate, base_rate > 0 ? rate / base_rate : 0);
    fflush(stdout);
}

static struct nx_bus *bus_new(const char *url, struct nx_store *store, const char *name)
{
    static struct nx_broker_conf confs[8];
    static int nconf;
    struct nx_broker_conf *c = &confs[nconf++];
    struct nx_bus_opts o = {.conf = url ? c : NULL, .store = store, .name = name};
    struct nx_bus *bus = NULL;

    memset(c, 0, sizeof *c);
    c->type = NX_BROKER_NATS;
    c->url = (char *)url;
    c->reconnect.initial_backoff_ms = 50;
    c->reconnect.max_backoff_ms = 200;
    c->jetstream.enabled = true;
    c->jetstream.partitions = 8;
    c->jetstream.max_age_ms = 600000;
    c->jetstream.ack_wait_ms = 30000;
    c->limits.max_pending = 1000000;
    if (nx_bus_new(&loop, &o, &bus) < 0) {
        fprintf(stderr, "bus_bench: nx_bus_new failed\n");
        exit(1);
    }
    return bus;
}

static bool wait_mode(struct nx_bus *b, const char *mode, bool want_js)
{
    double end = now_s() + 20;

    while (now_s() < end && (strcmp(nx_bus_mode(b), mode) || (want_js && !nx_bus_has_jetstream(b))))
        uv_run(&loop, UV_RUN_ONCE);
    return !strcmp(nx_bus_mode(b), mode);
}

/* Publishes n events with at most `window` waiting in the bus, then waits for them all. */
static double pump(struct nx_bus *pub, const char *subject, uint64_t n)
{
    struct nx_envelope *e = make_env(subject);
    struct nx_bus_stats st;
    double t0 = now_s();
    uint64_t sent = 0;

    received = 0;
    while (sent < n) {
        nx_bus_stats(pub, &st);
        while (sent < n && st.queue_depth < 4096) {
            nx_uuid_v4(e->id);
            if (nx_bus_publish(pub, subject, e) < 0)
                break;
            sent++;
            st.queue_depth++;
        }
        uv_run(&loop, UV_RUN_NOWAIT);
        if (now_s() - t0 > 120)
            break;
    }
    run_until(&received, n, 120);
    nx_envelope_free(e);
    return received >= n ? (double)n / (now_s() - t0) : 0;
}

/* ---- baselines ---- */

static double dump_rate(uint64_t n)
{
    struct nx_envelope *e = make_env("plugin.inbound.bench");
    double t0 = now_s();
    size_t len;

    for (uint64_t i = 0; i < n; i++)
        free(nx_envelope_dump(e, &len));
    nx_envelope_free(e);
    return (double)n / (now_s() - t0);
}

static volatile uint64_t raw_received;

static void raw_on_msg(natsConnection *nc, natsSubscription *s, natsMsg *m, void *c)
{
    (void)nc;
    (void)s;
    (void)c;
    natsMsg_Destroy(m);
    __atomic_add_fetch(&raw_received, 1, __ATOMIC_RELAXED);
}

/* subject: bench.raw (no stream) for core, plugin.outbound.raw (captured) for JetStream */
static double raw_nats_rate(const char *url, uint64_t n, bool use_js)
{
    natsConnection *a = NULL, *b = NULL;
    natsSubscription *sub = NULL;
    jsCtx *js = NULL;
    const char *subject = use_js ? "plugin.outbound.raw" : "bench.raw";
    struct nx_envelope *e = make_env(subject);
    size_t len;
    char *data = nx_envelope_dump(e, &len);
    double t0, rate = 0;

    natsConnection_ConnectTo(&a, url);
    natsConnection_ConnectTo(&b, url);
    natsConnection_Subscribe(&sub, b, subject, raw_on_msg, NULL);
    natsSubscription_SetPendingLimits(sub, -1, -1);
    natsConnection_Flush(b);
    if (use_js)
        natsConnection_JetStream(&js, a, NULL);
    raw_received = 0;
    t0 = now_s();
    for (uint64_t i = 0; i < n; i++) {
        if (use_js)
            js_PublishAsync(js, subject, data, (int)len, NULL);
        else
            natsConnection_Publish(a, subject, data, (int)len);
    }
    if (use_js)
        js_PublishAsyncComplete(js, NULL);
    natsConnection_Flush(a);
    for (int i = 0; i < 60000 && __atomic_load_n(&raw_received, __ATOMIC_RELAXED) < n; i++)
        usleep(1000);
    if (raw_received >= n)
        rate = (double)n / (now_s() - t0);
    free(data);
    nx_envelope_free(e);
    jsCtx_Destroy(js);
    natsSubscription_Destroy(sub);
    natsConnection_Destroy(a);
    natsConnection_Destroy(b);
    return rate;
}

/* ---- routed work ---- */

static void on_work(struct nx_bus *bus, struct nx_bus_work *w, const struct nx_envelope *env, void *arg)
{
    (void)bus;
    (void)env;
    (void)arg;
    received++;
    nx_bus_work_done(w, 0);
}

static void on_store(int rc, void *arg)
{
    *(int *)arg = rc < 0 ? rc : 1;
}

int main(int argc, char **argv)
{
    uint64_t n = argc > 1 ? strtoull(argv[1], NULL, 10) : 100000;
    char tmpl[] = "/tmp/nexo-bus-bench-XXXXXX", store_dir[600], data_dir[600], url[64];
    struct nx_bus *a, *b;
    struct nx_store *store = NULL;
    struct nx_bus_stats st;
    uv_timer_t wake;
    double rate, core_rate, t0;
    int port, store_ok = 0;
    pid_t ns;

    signal(SIGPIPE, SIG_IGN);
    nx_log_set_level(NX_LOG_ERROR);
    if (!mkdtemp(tmpl))
        return 1;
    snprintf(store_dir, sizeof store_dir, "%s/nats", tmpl);
    snprintf(data_dir, sizeof data_dir, "%s/data", tmpl);
    uv_loop_init(&loop);
    uv_timer_init(&loop, &wake);
    uv_timer_start(&wake, on_wake, 1, 1);

    /* in-process */
    a = bus_new(NULL, NULL, "bench");
    nx_bus_subscribe(a, "plugin.inbound.>", on_event, NULL, NULL);
    rate = pump(a, "plugin.inbound.bench", n);
    emit("bus_inprocess", rate, "envelope_dump", dump_rate(n), n);
    nx_bus_free(a);
    run_for(0.05);

    /* core NATS and JetStream: the same server (JetStream captures only its streams' subjects) */
    port = free_port();
    snprintf(url, sizeof url, "nats://127.0.0.1:%d", port);
    ns = nats_start(port, store_dir);
    a = bus_new(url, NULL, "bench-pub");
    b = bus_new(url, NULL, "bench-sub");
    nx_bus_subscribe(b, "bench.core.>", on_event, NULL, NULL);
    wait_mode(a, "nats", true);
    wait_mode(b, "nats", true);
    run_for(0.3);
    core_rate = pump(a, "bench.core.x", n);
    emit("bus_core_nats", core_rate, "raw_libnats_publish", raw_nats_rate(url, n, false), n);

    nx_bus_subscribe(b, "plugin.outbound.>", on_event, NULL, NULL);
    run_for(0.3);
    rate = pump(a, "plugin.outbound.bench", n);
    emit("bus_jetstream_stream_capture", rate, "raw_js_publish_async", raw_nats_rate(url, n, true), n);

    nx_bus_work_consume(b, "bench", on_work, NULL);
    run_for(1.0);
    {
        uint64_t items = n / 10 ? n / 10 : 1;
        struct nx_envelope *e = make_env("agent.route.bench.0");
        char subject[128], key[32];

        received = 0;
        t0 = now_s();
        for (uint64_t i = 0; i < items; i++) {
            snprintf(key, sizeof key, "s%llu", (unsigned long long)(i % 64));
            nx_bus_route_subject(a, "bench", key, subject, sizeof subject);
            nx_uuid_v4(e->id);
            nx_bus_publish(a, subject, e);
            if (i % 1024 == 0)
                uv_run(&loop, UV_RUN_NOWAIT);
        }
        run_until(&received, items, 300);
        rate = received >= items ? (double)items / (now_s() - t0) : 0;
        emit(nx_bus_has_jetstream(b) ? "bus_jetstream_routed_work_8_partitions" : "bus_core_routed_work",
             rate, "bus_core_nats", core_rate, items);
        nx_envelope_free(e);
    }
    nx_bus_free(a);
    nx_bus_free(b);
    run_for(0.2);
    nats_stop(ns);

    /* disk-queue replay: NATS down, N events queued in SQLite, NATS up */
    snprintf(store_dir, sizeof store_dir, "%s/nats2", tmpl);
    nx_store_open(&loop, data_dir, NULL, on_store, &store_ok, &store);
    run_until((uint64_t *)&store_ok, 1, 10);
    port = free_port();
    snprintf(url, sizeof url, "nats://127.0.0.1:%d", port);
    a = bus_new(url, store, "bench-pub");
    {
        uint64_t q = n / 5 ? n / 5 : 1;
        struct nx_envelope *e = make_env("bench.replay.x");

        for (uint64_t i = 0; i < q; i++) {
            nx_uuid_v4(e->id);
            nx_bus_publish(a, "bench.replay.x", e);
            if (i % 1024 == 0)
                uv_run(&loop, UV_RUN_NOWAIT);
        }
        nx_envelope_free(e);
        run_for(0.5); /* the store commits the queue */
        ns = nats_start(port, store_dir);
        b = bus_new(url, NULL, "bench-sub");
        nx_bus_subscribe(b, "bench.replay.>", on_event, NULL, NULL);
        wait_mode(b, "nats", false);
        received = 0;
        wait_mode(a, "nats", false);
        t0 = now_s();
        run_until(&received, q, 300);
        nx_bus_stats(a, &st);
        /* the bus waits replay_delay_ms (500) after reconnecting before it replays: not counted */
        rate = received >= q ? (double)q / (now_s() - t0 - 0.5) : 0;
        emit("bus_disk_queue_replay", rate, "bus_core_nats", core_rate, q);
    }
    nx_bus_free(a);
    nx_bus_free(b);
    run_for(0.2);
    nx_store_close(store);
    run_for(0.2);
    nats_stop(ns);
    uv_timer_stop(&wake);
    uv_close((uv_handle_t *)&wake, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    {
        char *rm[] = {"rm", "-rf", tmpl, NULL};
        pid_t pid;

        if (posix_spawnp(&pid, "rm", NULL, NULL, rm, environ) == 0)
            waitpid(pid, NULL, 0);
    }
    return 0;
}
