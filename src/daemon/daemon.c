#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent/agent.h"
#include "agent/partition.h"
#include "agent/router.h"
#include "api/admin.h"
#include "api/chat.h"
#include "api/health.h"
#include "bus/bus.h"
#include "channels/channels.h"
#include "channels/chledger.h"
#include "channels/media.h"
#include "channels/policy.h"
#include "config/config.h"
#include "core/alloc.h"
#include "core/clock.h"
#include "core/error.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/redact.h"
#include "daemon/daemon.h"
#include "http/client.h"
#include "http/server.h"
#include "mcp/mcp.h"
#include "mcp/server.h"
#include "runtime/runtime.h"
#include "store/history.h"
#include "store/store.h"

enum { LISTENER_GATEWAY, LISTENER_METRICS, LISTENER_ADMIN, LISTENER_COUNT };

static const char *const listener_names[LISTENER_COUNT] = {"gateway", "metrics", "admin"};

struct daemon {
    struct nx_runtime rt;
    const struct nx_daemon_opts *opts;
    struct nx_config *cfg;       /* the current snapshot */
    const char *token;           /* cfg's auth_token, read by the auth checks */
    uint32_t stream_keepalive_ms; /* cfg's limits.stream_keepalive, read by the chat APIs */
    struct nx_http_origin_policy origin; /* cfg's cors, read by every listener */
    struct nx_readiness ready;
    struct nx_listen addr[LISTENER_COUNT];
    struct nx_http_server *srv[LISTENER_COUNT];
    struct nx_http_client *client;
    struct nx_store *store;
    struct nx_agents *agents;
    struct nx_bus *bus;
    struct nx_router *router;
    struct nx_partition *part;   /* gateway / agents roles (docs/scaling.md) */
    struct nx_media_sweeper *media_sweeper; /* files written by nexo: carried, from the APIs */
    struct nx_channels *channels;
    struct nx_sender_limiter *limiter; /* agents' sender_rate_limit, asked by the router */
    uv_timer_t trim_timer;
    uv_timer_t drain_timer;      /* after a stop signal: not ready, the listeners still open */
    uint64_t stop_ms, drain_end_ms; /* nx_mono_ms() at the stop signal, and when the drain ends */
    struct nx_mcp_manager *mcp;
    struct nx_mcp_server *mcp_srv;   /* nexo as an MCP server (/mcp), when mcp_server.yaml enables it */
    struct nx_mcp_httpd *mcp_http;
    struct nx_mcp_srv_conf mcp_srv_conf;
    int servers_down;
    int exit_code;
    bool is_reloading;
    bool is_reload_again;
    bool was_ready;
    uint64_t started_wall_ms;
    struct nx_metric *m_reloads;
    struct nx_metric *m_ready;
};

/* --- configuration applied at start and on reload --- */

static void apply_logging(struct daemon *d, const struct nx_gateway_conf *gw)
{
    if (!d->opts->has_log_level && gw->log_level) {
        enum nx_log_level lvl;
        if (nx_log_parse_level(gw->log_level, &lvl) == 0)
            nx_log_set_level(lvl);
    }
    /* Swapped as a whole, so no line written meanwhile misses a pattern or a secret. */
    char err[256];
    if (nx_config_apply_redaction(d->cfg, err, sizeof err) < 0)
        nx_warn("config", "redact patterns not applied: %s", err);
}

static void pick_addresses(struct daemon *d, const struct nx_gateway_conf *gw)
{
    const struct nx_daemon_opts *o = d->opts;
    d->addr[LISTENER_GATEWAY] = o->has_listen ? o->listen : gw->listen;
    d->addr[LISTENER_METRICS] = o->has_metrics_listen ? o->metrics_listen : gw->metrics_listen;
    d->addr[LISTENER_ADMIN] = o->has_admin_listen ? o->admin_listen : gw->admin_listen;
}

/* Secure by default: off loopback only with a token. */
static int check_exposure(const struct daemon *d, const struct nx_gateway_conf *gw)
{
    if (gw->auth_token && *gw->auth_token)
        return 0;
    for (int i = 0; i < LISTENER_COUNT; i++) {
        if (!nx_listen_is_loopback(&d->addr[i])) {
            nx_error("daemon",
                     "refusing to listen on %s:%d (%s) with no auth token, as anyone on the network "
                     "could use it. Give gateway.yaml an auth_token (a long random value, or "
                     "\"${NEXO_AUTH_TOKEN}\" to take it from the environment), or bind a loopback "
                     "address such as 127.0.0.1",
                     d->addr[i].host, d->addr[i].port, listener_names[i]);
            return NX_EPERM;
        }
    }
    return 0;
}

/* --- readiness --- */

static void preload_work(uv_work_t *w)
{
    (void)w;
    nx_http_client_preload();
}

static void preload_done(uv_work_t *w, int status)
{
    (void)status;
    free(w);
}

static void check_ready(struct daemon *d)
{
    bool ok = nx_readiness_ok(&d->ready);
    nx_gauge_set(d->m_ready, NULL, ok ? 1 : 0);
    if (ok && !d->was_ready) {
        d->was_ready = true;
        double ms = (double)(nx_mono_ns() - d->opts->launch_ns) / 1e6;
        nx_info("daemon", "ready in %.1f ms: gateway http://%s:%d, metrics http://%s:%d/metrics, "
                "admin http://%s:%d", ms, d->addr[0].host, nx_http_server_port(d->srv[0]),
                d->addr[1].host, nx_http_server_port(d->srv[1]), d->addr[2].host,
                nx_http_server_port(d->srv[2]));
        nx_notify("READY=1");
        /* Agents that can answer will need outbound HTTP: load libcurl off the loop now. */
        if (d->agents && nx_agents_can_answer(d->agents))
            uv_queue_work(&d->rt.loop, nx_calloc(1, sizeof(uv_work_t)), preload_work, preload_done);
    }
}

static void on_store_ready(int rc, void *arg)
{
    struct daemon *d = arg;
    if (rc < 0) {
        nx_error("daemon", "cannot open the store under %s: %s", d->opts->data_dir,
                 nx_strerror(rc));
        d->exit_code = NX_EXIT_FAILURE;
        nx_runtime_stop(&d->rt, 0);
        return;
    }
    d->ready.store_open = true;
    /* what a previous run left unindexed (a failing index, a backlog at stop), in the background */
    nx_transcripts_index(d->store, NULL, NULL);
    check_ready(d);
}

/* --- reload (SIGHUP): parse off the loop, swap on it --- */

struct reload {
    uv_work_t work;
    struct daemon *d;
    struct nx_config *cfg;
    struct nx_diags diags;
    int rc;
};

static void reload_work(uv_work_t *w)
{
    struct reload *r = nx_container_of(w, struct reload, work);
    r->rc = nx_config_load(r->d->opts->config_dir, &r->cfg, &r->diags);
}

/* Web pages: the listed origins, and an open gateway (no token) answers to loopback names only. */
static void set_origin_policy(struct daemon *d, const struct nx_gateway_conf *gw)
{
    d->origin.allowed_origins = gw->cors.allowed_origins;
    d->origin.max_age_s = gw->cors.max_age_ms / 1000;
    d->origin.is_open = !(gw->auth_token && *gw->auth_token);
}

static void on_reload(struct nx_runtime *rt);
static void reload_done(uv_work_t *w, int status)
{
    struct reload *r = nx_container_of(w, struct reload, work);
    struct daemon *d = r->d;
    static const char *const ok_label[] = {"ok"}, *const err_label[] = {"error"};
    (void)status;

    d->is_reloading = false;
    if (r->rc < 0 || d->ready.is_stopping) {
        for (size_t i = 0; i < r->diags.n; i++) {
            const struct nx_diag *g = &r->diags.v[i];
            nx_error("config", "%s:%d:%d: %s", g->file, g->line, g->col, g->msg);
        }
        if (r->rc < 0) {
            nx_error("config", "reload failed (%zu problem%s): keeping the running configuration",
                     r->diags.n, r->diags.n == 1 ? "" : "s");
            nx_counter_add(d->m_reloads, err_label, 1);
        }
        nx_config_unref(r->cfg);
    } else {
        const struct nx_gateway_conf *gw = nx_config_gateway(r->cfg);
        struct nx_listen before[LISTENER_COUNT];
        memcpy(before, d->addr, sizeof before);
        pick_addresses(d, gw);
        if (memcmp(before, d->addr, sizeof before) != 0) {
            nx_warn("config", "listen addresses changed: they take effect at the next restart");
            memcpy(d->addr, before, sizeof before);
        }
        if (check_exposure(d, gw) < 0) {
            nx_error("config", "reload refused: keeping the running configuration");
            nx_counter_add(d->m_reloads, err_label, 1);
            nx_config_unref(r->cfg);
        } else {
            static const char *const at_restart[] = {"broker.yaml", "mcp.yaml", "mcp_server.yaml",
                                                     "plugins/", NULL};
            struct nx_buf changed = NX_BUF_INIT;
            if (nx_config_changed(d->cfg, r->cfg, at_restart, &changed))
                nx_warn("config", "%s changed: applied at the next restart (the bus, MCP servers and "
                        "channels, and /mcp, are set up at start)", nx_buf_cstr(&changed));
            nx_buf_cleanup(&changed);
            nx_config_unref(d->cfg);
            d->cfg = r->cfg;
            if (d->agents)
                nx_agents_reload(d->agents, d->cfg);
            if (d->mcp_srv)
                nx_mcp_server_set_config(d->mcp_srv, d->cfg);
            d->token = gw->auth_token && *gw->auth_token ? gw->auth_token : NULL;
            set_origin_policy(d, gw);
            d->stream_keepalive_ms = gw->limits.stream_keepalive_ms;
            apply_logging(d, gw);
            nx_counter_add(d->m_reloads, ok_label, 1);
            nx_info("config", "configuration reloaded from %s",
                    d->opts->config_dir ? d->opts->config_dir : "embedded defaults");
        }
    }
    nx_diags_cleanup(&r->diags);
    free(r);
    if (d->is_reload_again && !d->ready.is_stopping)
        on_reload(&d->rt); /* (a file may have changed after this one read it) */
}

static void on_reload(struct nx_runtime *rt)
{
    struct daemon *d = rt->udata;
    if ((d->is_reload_again = d->is_reloading)) {
        nx_info("config", "SIGHUP during a reload: reloading again after it");
        return;
    }
    nx_info("config", "SIGHUP: reloading configuration");
    struct reload *r = nx_calloc(1, sizeof *r);
    r->d = d;
    nx_diags_init(&r->diags);
    d->is_reloading = true;
    uv_queue_work(&d->rt.loop, &r->work, reload_work, reload_done);
}

/* The admin token check for the pairing endpoints (answers 401 itself). */
static bool admin_authorized(struct nx_http_req *req, void *arg)
{
    struct daemon *d = arg;
    if (nx_api_authorized(req, d->token))
        return true;
    nx_api_respond_unauthorized(req);
    return false;
}

/* The send_message tool's handler: the channels and the current snapshot's agents. */
static int daemon_send_message(const struct nx_send_message_req *rq, char *err, size_t errlen, void *arg)
{
    struct daemon *d = arg;
    return nx_channels_send_message(d->channels, d->cfg, rq, err, errlen);
}

/* --- graceful stop --- */

#define DRAIN_MAX_MS 1000 /* the longest the listeners stay open, not ready, after a stop signal */
#define DRAIN_TICK_MS 10

static void teardown(struct daemon *d)
{
    if (d->trim_timer.data && !uv_is_closing((uv_handle_t *)&d->trim_timer))
        uv_close((uv_handle_t *)&d->trim_timer, NULL);
    if (d->drain_timer.data && !uv_is_closing((uv_handle_t *)&d->drain_timer))
        uv_close((uv_handle_t *)&d->drain_timer, NULL);
    nx_send_message_set_handler(NULL, NULL);
    nx_channels_free(d->channels); /* no new inbound; before the bus, store and client */
    d->channels = NULL;
    nx_router_free(d->router);
    d->router = NULL;
    nx_sender_limiter_free(d->limiter);
    d->limiter = NULL;
    nx_mcp_httpd_free(d->mcp_http); /* its sessions' turns, before the agents */
    d->mcp_http = NULL;
    nx_mcp_server_free(d->mcp_srv);
    d->mcp_srv = NULL;
    nx_agents_free(d->agents); /* cancels turns still running */
    d->agents = NULL;
    nx_partition_free(d->part); /* after the turns ended, before the bus */
    d->part = NULL;
    nx_media_sweeper_free(d->media_sweeper);
    d->media_sweeper = NULL;
    nx_mcp_manager_free(d->mcp); /* before the HTTP client it calls through */
    d->mcp = NULL;
    nx_bus_free(d->bus); /* before the store: queued events stay on disk */
    d->bus = d->ready.bus = NULL;
    if (d->store) {
        nx_store_close(d->store); /* flushes every queued write */
        d->store = NULL;
    }
    nx_http_client_free(d->client);
    d->client = NULL;
    for (int i = 0; i < LISTENER_COUNT; i++) {
        nx_http_server_free(d->srv[i]);
        d->srv[i] = NULL;
    }
}

static void on_server_down(void *arg)
{
    struct daemon *d = arg;
    if (++d->servers_down < LISTENER_COUNT)
        return;
    nx_info("daemon", "listeners closed; flushing the store");
    teardown(d);
}

static size_t requests_in_flight(const struct daemon *d)
{
    size_t n = 0;
    for (int i = 0; i < LISTENER_COUNT; i++)
        n += nx_http_server_inflight(d->srv[i]);
    return n;
}

/* Stops accepting; the requests in flight may finish until shutdown_grace after the signal. */
static void close_listeners(struct daemon *d)
{
    uint64_t grace = nx_config_gateway(d->cfg)->shutdown_grace_ms, spent = nx_mono_ms() - d->stop_ms;
    int started = 0;
    for (int i = 0; i < LISTENER_COUNT; i++) {
        if (d->srv[i]) {
            nx_http_server_shutdown(d->srv[i], (uint32_t)(spent < grace ? grace - spent : 0), on_server_down,
                                    d);
            started++;
        }
    }
    d->servers_down = LISTENER_COUNT - started;
    if (started == 0)
        teardown(d);
}

static void on_drain_tick(uv_timer_t *t)
{
    struct daemon *d = t->data;
    if (requests_in_flight(d) > 0 && nx_mono_ms() < d->drain_end_ms)
        return;
    uv_timer_stop(t);
    close_listeners(d);
}

/* A graceful stop: /readyz answers 503 at once while the listeners stay open a moment, so that a
 * load balancer probing it sees "not ready" rather than a refused connection, and the requests
 * it still sends are served. They close once no request is in flight, after DRAIN_MAX_MS (or
 * shutdown_grace when shorter) at most: at once when the gateway is idle. */
static void on_stop(struct nx_runtime *rt, int signum)
{
    struct daemon *d = rt->udata;
    (void)signum;
    d->ready.is_stopping = true;
    nx_mcp_httpd_shutdown(d->mcp_http); /* ends the long-lived GET streams */
    nx_gauge_set(d->m_ready, NULL, 0);
    uint32_t grace = nx_config_gateway(d->cfg)->shutdown_grace_ms;
    uint32_t drain = grace < DRAIN_MAX_MS ? grace : DRAIN_MAX_MS;
    size_t n = requests_in_flight(d);
    d->stop_ms = nx_mono_ms();
    d->drain_end_ms = d->stop_ms + drain;
    if (n == 0 || drain == 0) {
        close_listeners(d);
        return;
    }
    nx_info("daemon", "not ready: /readyz answers 503; the listeners close when the %zu request%s in flight "
            "end, in %u ms at most", n, n == 1 ? "" : "s", (unsigned)drain);
    uv_timer_init(&d->rt.loop, &d->drain_timer);
    d->drain_timer.data = d;
    uv_timer_start(&d->drain_timer, on_drain_tick, DRAIN_TICK_MS, DRAIN_TICK_MS);
}

/* --- admin status --- */

static json_t *admin_status(void *arg)
{
    struct daemon *d = arg;
    json_t *o = json_object();
    json_object_set_new(o, "version", json_string(NEXO_VERSION));
    json_object_set_new(o, "ready", json_boolean(nx_readiness_ok(&d->ready)));
    json_object_set_new(o, "uptime_seconds",
                        json_real((double)(nx_wall_ms() - d->started_wall_ms) / 1000.0));
    json_object_set_new(o, "config_dir", d->opts->config_dir ? json_string(d->opts->config_dir)
                                                             : json_string("(embedded defaults)"));
    json_object_set_new(o, "data_dir", json_string(d->opts->data_dir));
    json_object_set_new(o, "bus_mode", json_string(d->bus ? nx_bus_mode(d->bus) : "none"));
    json_t *ls = json_object();
    for (int i = 0; i < LISTENER_COUNT; i++) {
        json_t *l = json_object();
        json_object_set_new(l, "host", json_string(d->addr[i].host));
        json_object_set_new(l, "port", json_integer(nx_http_server_port(d->srv[i])));
        json_object_set_new(l, "connections",
                            json_integer((json_int_t)nx_http_server_connections(d->srv[i])));
        json_object_set_new(ls, listener_names[i], l);
    }
    json_object_set_new(o, "listeners", ls);
    if (d->mcp)
        json_object_set_new(o, "mcp", nx_mcp_manager_status(d->mcp));
    return o;
}

/* --- start --- */

static struct nx_http_limits limits_from(const struct nx_gateway_conf *gw)
{
    struct nx_http_limits l = {
        .max_connections = gw->limits.max_connections,
        .max_header_bytes = gw->limits.max_header_bytes,
        .max_body_bytes = gw->limits.max_body_bytes,
        .request_timeout_ms = gw->limits.request_timeout_ms,
        .keepalive_timeout_ms = gw->limits.keepalive_timeout_ms,
    };
    return l;
}

/* /mcp on the gateway listener when mcp_server.yaml says enabled (and http.enabled). A bad file
 * is reported and /mcp left out; the rest of the gateway runs. */
static void start_mcp_server(struct daemon *d, struct nx_http_server *srv)
{
    struct nx_diags diags;
    nx_diags_init(&diags);
    int rc = nx_mcp_srv_conf_load(d->cfg, &d->mcp_srv_conf, &diags);
    for (size_t i = 0; i < diags.n; i++)
        nx_error("config", "%s:%d:%d: %s", diags.v[i].file, diags.v[i].line, diags.v[i].col, diags.v[i].msg);
    nx_diags_cleanup(&diags);
    if (rc < 0) {
        nx_error("daemon", "mcp_server.yaml is invalid: /mcp is not served");
        return;
    }
    if (!d->mcp_srv_conf.enabled || !d->mcp_srv_conf.http.enabled)
        return;
    struct nx_mcp_server_deps deps = {.loop = &d->rt.loop, .http = d->client, .agents = d->agents,
                                      .cfg = d->cfg};
    if (nx_mcp_server_new(&deps, &d->mcp_srv_conf, &d->mcp_srv) < 0) {
        nx_error("daemon", "MCP server not started: see the errors above");
        return;
    }
    struct nx_mcp_httpd_opts o = {.server = d->mcp_srv, .token_ptr = &d->token,
                                  .authorize = nx_api_authorized,
                                  .is_loopback = nx_listen_is_loopback(&d->addr[LISTENER_GATEWAY])};
    if (nx_mcp_httpd_new(&d->rt.loop, srv, &o, &d->mcp_http) < 0) {
        nx_mcp_server_free(d->mcp_srv);
        d->mcp_srv = NULL;
        return;
    }
    nx_info("daemon", "MCP server at /mcp (Streamable HTTP)");
}

static int start_listeners(struct daemon *d, const struct nx_gateway_conf *gw)
{
    struct nx_http_limits lim = limits_from(gw);
    for (int i = 0; i < LISTENER_COUNT; i++) {
        char err[256];
        nx_http_server_new(&d->rt.loop, listener_names[i], &lim, &d->srv[i]);
        nx_http_server_set_origin_policy(d->srv[i], &d->origin);
        switch (i) {
        case LISTENER_GATEWAY:
            nx_api_health_register(d->srv[i], &d->ready);
            nx_api_chat_register(d->srv[i], d->agents, &d->token, &d->stream_keepalive_ms);
            start_mcp_server(d, d->srv[i]);
            nx_channels_mount(d->channels, d->srv[i]); /* /webhooks/...: no bearer token */
            break;
        case LISTENER_METRICS:
            nx_api_metrics_register(d->srv[i], &d->token);
            break;
        case LISTENER_ADMIN:
            nx_api_health_register(d->srv[i], &d->ready);
            nx_api_admin_register(d->srv[i], &d->token, admin_status, d);
            nx_pairing_admin_mount(d->srv[i], d->store, admin_authorized, d);
            break;
        }
        if (nx_http_server_listen(d->srv[i], d->addr[i].host, d->addr[i].port, err, sizeof err) < 0) {
            nx_error("daemon", "cannot listen for the %s listener: %s", listener_names[i], err);
            return NX_EADDR;
        }
    }
    return 0;
}

/* After a burst (thousands of streams), glibc keeps the freed memory in its arenas, and what the
 * burst left behind (idle upstream connections, recycled request records) sits scattered among it,
 * pinning pages. When no turn is in flight, those go and malloc_trim hands the free pages back, so
 * RSS returns near idle: on a tick that saw client connections close (a burst's connections
 * close a while after its last turn ended), at most once a second, or once turns ran and none
 * started for TRIM_QUIET_TICKS (clients that keep their connections). A trim walks the heap's
 * free lists (~50 ms right after 5,000 streams, under 1 ms for an ordinary heap); a quiet
 * gateway pays a few comparisons a tick. */
#define TRIM_TICK_MS 250
#define TRIM_QUIET_TICKS 40
#define TRIM_GAP_TICKS 4       /* 1 s between trims that closing connections set off */
#define TRIM_CLOSED_CONNS 256 /* a burst: this many connections gone since the last trim */

static void on_trim_timer(uv_timer_t *t)
{
    static uint64_t trimmed_started, seen_started; /* turns started at the last trim / tick */
    static size_t seen_conns, trimmed_conns;        /* connections at the last tick / trim */
    static unsigned quiet_ticks;                   /* ticks without a turn started */
    static unsigned since_trim = TRIM_GAP_TICKS;   /* ticks since the last trim */
    static bool settle_due;                        /* one more trim once closes stop */
    struct daemon *d = t->data;
    size_t conns = 0;

    if (!d->agents)
        return;
    for (int i = 0; i < LISTENER_COUNT; i++)
        conns += nx_http_server_connections(d->srv[i]);
    bool closed = conns < seen_conns;
    seen_conns = conns;
    uint64_t started = nx_agents_turns_started(d->agents);
    quiet_ticks = started == seen_started ? quiet_ticks + 1 : 0;
    seen_started = started;
    since_trim++;
    /* Closing connections count only with something to give back (turns ran, or a burst's
     * connections went since the last trim), and at most once per TRIM_GAP_TICKS: clients that
     * open a connection per request must not make every tick a trim. */
    bool is_worth = started != trimmed_started || conns + TRIM_CLOSED_CONNS <= trimmed_conns;
    bool is_after_closes = closed && is_worth && since_trim >= TRIM_GAP_TICKS;
    bool is_after_quiet = started != trimmed_started && quiet_ticks >= TRIM_QUIET_TICKS;
    /* A burst's last connections close after the trim their first closes set off, and fewer
     * than TRIM_CLOSED_CONNS of them (a few hundred streams' worth of memory) would set off no
     * other: so a trim these set off is followed by one more at the first tick without closes. */
    bool is_settle = settle_due && !closed;
    if (nx_agents_turns_in_flight(d->agents) != 0 || !(is_after_closes || is_after_quiet || is_settle))
        return;
    settle_due = is_after_closes;
    trimmed_started = started;
    trimmed_conns = conns;
    since_trim = 0;
    nx_llm_frag_sweep(); /* wire fragments of messages no conversation holds any more */
    nx_http_client_trim(d->client);
    for (int i = 0; i < LISTENER_COUNT; i++)
        nx_http_server_trim(d->srv[i]);
    nx_heap_trim();
}

static struct nx_metric *m_sessions;

static void collect(void *arg)
{
    struct daemon *d = arg;
    nx_gauge_set(m_sessions, NULL, d->agents ? (double)nx_agents_sessions(d->agents) : 0);
}

static void register_metrics(struct daemon *d)
{
    static const char *const reload_labels[] = {"result", NULL};
    static const char *const info_labels[] = {"version", NULL};
    static const char *const info_values[] = {NEXO_VERSION};
    nx_gauge_set(nx_metric_gauge("nexo_build_info", "nexo version", info_labels), info_values, 1);
    d->m_ready = nx_metric_gauge("nexo_ready", "1 when /readyz answers 200", NULL);
    m_sessions = nx_metric_gauge("nexo_agent_sessions_active",
                                 "sessions with a turn running or queued", NULL);
    nx_metrics_on_collect(collect, d);
    d->m_reloads = nx_metric_counter("nexo_config_reloads_total",
                                     "configuration reloads (SIGHUP) by result", reload_labels);
}

/* --- process roles (docs/scaling.md) --- */

static bool is_role(const struct daemon *d, const char *role)
{
    return d->opts->role && strcmp(d->opts->role, role) == 0;
}

/* The files nexo writes itself go after media.retention as the channels' own do: those the
 * gateway carried in routed work (agents role, <data>/media/carried/) and the images sent to
 * the HTTP APIs in a session (<data>/media/api/). */
static void start_media_sweeper(struct daemon *d)
{
    uint64_t keep = nx_config_gateway(d->cfg)->media_retention_ms;
    static const char *const types[] = {"carried", "api"};
    struct nx_buf root = NX_BUF_INIT;

    if (!keep)
        return; /* kept forever */
    nx_buf_printf(&root, "%s/media", d->opts->data_dir);
    d->media_sweeper = nx_media_sweeper_new(&d->rt.loop, nx_buf_cstr(&root), types, NX_ARRAY_LEN(types),
                                            keep, 0, 0);
    nx_buf_cleanup(&root);
}

/* gateway: the router matches, claims and gates inbound channel messages and dispatches them
 * as routed work (set up with the router below); agents: serve the routed work of the listed
 * agents (all by default). "all" (the default) leaves the in-process router running turns. */
static int start_role(struct daemon *d)
{
    const char *list = d->opts->agents;
    int rc = 0;

    if (!is_role(d, "gateway") && !is_role(d, "agents"))
        return 0;
    if (nx_partition_new(d->bus, d->agents, d->store, d->opts->data_dir,
                         nx_config_broker(d->cfg)->jetstream.session_max_messages, &d->part) < 0)
        return NX_EIO;
    if (is_role(d, "gateway")) {
        nx_partition_watch_settled(d->part); /* from the start: a restart misses none */
        return 0;
    }
    if (!list) {
        json_t *all = nx_agents_list(d->agents), *a;
        size_t i;

        json_array_foreach(all, i, a) {
            if ((rc = nx_partition_consume(d->part, json_string_value(json_object_get(a, "id")))) < 0)
                break;
        }
        json_decref(all);
        return rc;
    }
    for (const char *p = list; *p && rc == 0;) {
        const char *comma = strchr(p, ',');
        size_t n = comma ? (size_t)(comma - p) : strlen(p);
        char *id = nx_strndup(p, n);

        rc = nx_partition_consume(d->part, id);
        if (rc == NX_ENOENT || rc == NX_EINVAL) {
            nx_error("daemon", "--agents: no agent \"%s\" in agents.yaml", id);
            rc = NX_ECONFIG;
        } else if (rc < 0) {
            nx_error("daemon", "--agents: agent \"%s\": %s", id, nx_strerror(rc));
        }
        free(id);
        p += n + (comma ? 1 : 0);
    }
    return rc;
}

int nx_daemon_run(const struct nx_daemon_opts *opts)
{
    struct daemon d;
    struct nx_diags diags;
    int rc;

    memset(&d, 0, sizeof d);
    d.opts = opts;
    d.exit_code = NX_EXIT_OK;
    d.started_wall_ms = nx_wall_ms();
    nx_diags_init(&diags);

    if (nx_config_load(opts->config_dir, &d.cfg, &diags) < 0) {
        nx_diags_print(&diags, stderr);
        nx_error("daemon", "configuration invalid (%zu problem%s): not starting", diags.n,
                 diags.n == 1 ? "" : "s");
        nx_diags_cleanup(&diags);
        return NX_EXIT_CONFIG;
    }
    if (nx_channels_check(d.cfg, &diags) < 0) {
        nx_diags_print(&diags, stderr);
        nx_error("daemon", "configuration invalid (%zu problem%s): not starting", diags.n,
                 diags.n == 1 ? "" : "s");
        nx_diags_cleanup(&diags);
        nx_config_unref(d.cfg);
        return NX_EXIT_CONFIG;
    }
    nx_diags_cleanup(&diags);
    if (opts->role && strcmp(opts->role, "all") != 0 &&
        nx_config_broker(d.cfg)->type != NX_BROKER_NATS) {
        nx_error("daemon", "--role %s needs NATS: set broker.yaml to type: nats (with url:), so the "
                 "processes can share work; only --role all runs on the in-process bus", opts->role);
        nx_config_unref(d.cfg);
        return NX_EXIT_CONFIG;
    }
    if (opts->agents && !is_role(&d, "agents"))
        nx_warn("daemon", "--agents applies to --role agents only; ignored");
    const struct nx_gateway_conf *gw = nx_config_gateway(d.cfg);
    d.token = gw->auth_token && *gw->auth_token ? gw->auth_token : NULL;
    set_origin_policy(&d, gw);
    d.stream_keepalive_ms = gw->limits.stream_keepalive_ms;
    apply_logging(&d, gw);
    /* every connection is a descriptor, and may hold an upstream connection too */
    nx_runtime_raise_nofile((uint64_t)gw->limits.max_connections * LISTENER_COUNT * 2 + 64);
    pick_addresses(&d, gw);
    if (check_exposure(&d, gw) < 0) {
        nx_config_unref(d.cfg);
        return NX_EXIT_LISTEN;
    }

    if (nx_runtime_init(&d.rt) < 0) {
        nx_config_unref(d.cfg);
        return NX_EXIT_FAILURE;
    }
    d.rt.udata = &d;
    d.rt.on_stop = on_stop;
    d.rt.on_reload = on_reload;
    register_metrics(&d);
    d.ready.config_loaded = true;

    if (nx_agents_http_client_new(&d.rt.loop, d.cfg, &d.client) < 0 ||
        nx_store_open(&d.rt.loop, opts->data_dir, NULL, on_store_ready, &d, &d.store) < 0) {
        nx_error("daemon", "cannot start the HTTP client or the store under %s", opts->data_dir);
        teardown(&d);
        nx_runtime_close(&d.rt);
        nx_config_unref(d.cfg);
        return NX_EXIT_FAILURE;
    }
    struct nx_bus_opts bopts = {.conf = nx_config_broker(d.cfg), .store = d.store, .name = "nexo"};
    if (nx_bus_new(&d.rt.loop, &bopts, &d.bus) < 0) {
        nx_error("daemon", "cannot start the bus");
        teardown(&d);
        nx_runtime_close(&d.rt);
        nx_config_unref(d.cfg);
        return NX_EXIT_FAILURE;
    }
    d.ready.bus = d.bus;
    if (nx_mcp_manager_new(&d.rt.loop, d.client, nx_config_mcp(d.cfg), &d.mcp) < 0)
        nx_warn("daemon", "MCP servers not started: see the errors above");
    struct nx_agent_deps deps = {
        .loop = &d.rt.loop, .http = d.client, .store = d.store, .data_dir = opts->data_dir,
    };
    nx_agents_new(&deps, d.cfg, &d.agents);
    const struct nx_agent_conf *acs = NULL;
    if (nx_config_agents(d.cfg, &acs) == 0)
        nx_warn("daemon", "no agents configured: every request for a model gets 404 (without "
                "agents.yaml, the default agent main is used)");
    struct nx_mcp_host mhost = {.agents = d.agents, .data_dir = opts->data_dir, .cfg = d.cfg};
    nx_mcp_manager_set_host(d.mcp, &mhost); /* sampling, OAuth token files, workspace roots */
    uv_timer_init(&d.rt.loop, &d.trim_timer);
    d.trim_timer.data = &d;
    uv_timer_start(&d.trim_timer, on_trim_timer, TRIM_TICK_MS, TRIM_TICK_MS);
    uv_unref((uv_handle_t *)&d.trim_timer);
    start_media_sweeper(&d);
    if ((rc = start_role(&d)) < 0) {
        teardown(&d);
        nx_runtime_close(&d.rt);
        nx_config_unref(d.cfg);
        return rc == NX_ECONFIG ? NX_EXIT_CONFIG : NX_EXIT_FAILURE;
    }
    if (is_role(&d, "agents"))
        nx_info("daemon", "role agents: routed work replaces the in-process router");
    else if (nx_router_new(d.bus, d.agents, &d.router) < 0)
        nx_warn("daemon", "channel messages will not reach agents: the router could not subscribe");
    else {
        if (d.part) { /* gateway: the same match, ledger and gate; the turn runs elsewhere */
            nx_info("daemon", "role gateway: matched messages are dispatched as routed work");
            nx_router_set_dispatch(d.router, nx_partition_dispatch, d.part);
        }
        nx_router_set_store(d.router, d.store); /* the ledger: resumes unanswered events first */
    }
    nx_chledger_use_jetstream(is_role(&d, "gateway")); /* replies sent while it was down, too */
    if (!is_role(&d, "agents") &&
        nx_channels_new(&d.rt.loop, d.bus, d.client, d.store, d.cfg, &d.channels) < 0)
        nx_warn("daemon", "channels not started: see the errors above");
    if (d.router) {
        d.limiter = nx_sender_limiter_new(d.bus, 0);
        nx_router_set_gate(d.router, nx_sender_limiter_gate, d.limiter);
    }
    if (nx_channels_count(d.channels) > 0)
        nx_send_message_set_handler(daemon_send_message, &d);
    if ((rc = start_listeners(&d, gw)) < 0) {
        teardown(&d);
        nx_runtime_close(&d.rt);
        nx_config_unref(d.cfg);
        nx_mcp_srv_conf_cleanup(&d.mcp_srv_conf);
        return NX_EXIT_LISTEN;
    }
    nx_runtime_watch_signals(&d.rt);

    uv_run(&d.rt.loop, UV_RUN_DEFAULT);

    teardown(&d);
    if (nx_runtime_close(&d.rt) < 0)
        nx_warn("daemon", "some handles were still open at exit");
    nx_config_unref(d.cfg);
    nx_mcp_srv_conf_cleanup(&d.mcp_srv_conf);
    nx_info("daemon", "stopped");
    return d.exit_code;
}
