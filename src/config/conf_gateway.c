/* Field tables: gateway.yaml, broker.yaml, memory.yaml. */
#include <regex.h>
#include <stdlib.h>
#include <string.h>

#include "config/tables.h"
#include "core/alloc.h"
#include "core/log.h"

/* ---- gateway.yaml ---- */

#define G struct nx_gateway_conf

static void check_proxy(struct nx_conf_ctx *ctx, const struct nx_cnode *val, void *dst)
{
    static const char *const schemes[] = {"http://", "https://", "socks5://", "socks5h://"};
    const char *s = *(char **)dst;
    char buf[96];

    for (size_t i = 0; i < NX_ARRAY_LEN(schemes); i++)
        if (strncmp(s, schemes[i], strlen(schemes[i])) == 0)
            return;
    nx_conf_error(ctx, val, "invalid proxy %s (expected http://, https://, socks5:// or socks5h://)",
                  nx_cnode_describe(val, buf, sizeof buf));
}

static void check_log_level(struct nx_conf_ctx *ctx, const struct nx_cnode *val, void *dst)
{
    enum nx_log_level lvl;
    char buf[96];

    if (nx_log_parse_level(*(char **)dst, &lvl) < 0)
        nx_conf_error(ctx, val, "invalid value %s for \"level\" (expected one of: trace, debug, info, warn, "
                      "error, off)", nx_cnode_describe(val, buf, sizeof buf));
}

static void check_regexes(struct nx_conf_ctx *ctx, const struct nx_cnode *val, void *dst)
{
    char **list = *(char ***)dst;
    NX_UNUSED(list);
    for (size_t i = 0; i < val->n; i++) {
        const struct nx_cnode *it = val->kids[i];
        regex_t re;
        char err[128];
        int rc = regcomp(&re, it->text, REG_EXTENDED | REG_NOSUB);
        if (rc != 0) {
            regerror(rc, &re, err, sizeof err);
            nx_conf_error(ctx, it, "invalid regular expression: %s", err);
            continue;
        }
        regfree(&re);
    }
}

static const struct nx_conf_field gw_limits_fields[] = {
    {NX_FIELD("max_connections", NX_CT_UINT, G, limits.max_connections), .def = "1024", .min = 1,
     .max = 1000000},
    {NX_FIELD("max_header_bytes", NX_CT_SIZE, G, limits.max_header_bytes), .def = "16KiB", .min = 1024,
     .max = 1 << 20},
    {NX_FIELD("max_body_bytes", NX_CT_SIZE, G, limits.max_body_bytes), .def = "8MiB", .min = 1,
     .max = (int64_t)1 << 32},
    {NX_FIELD("request_timeout", NX_CT_DURATION, G, limits.request_timeout_ms), .def = "10s", .min = 1,
     .max = 3600000},
    {NX_FIELD("keepalive_timeout", NX_CT_DURATION, G, limits.keepalive_timeout_ms), .def = "30s", .min = 0,
     .max = 3600000},
    {NX_FIELD("stream_keepalive", NX_CT_DURATION, G, limits.stream_keepalive_ms), .def = "15s", .min = 100,
     .max = 600000},
    {.name = NULL},
};
static const struct nx_conf_struct gw_limits = {.name = "\"limits\"", .fields = gw_limits_fields};

static const char *const http_engines[] = {"auto", "curl", NULL};

static const struct nx_conf_field gw_client_fields[] = {
    {NX_FIELD("proxy", NX_CT_STRING, G, http_client.proxy), .check = check_proxy},
    {NX_FIELD("connect_timeout", NX_CT_DURATION, G, http_client.connect_timeout_ms), .def = "10s", .min = 1,
     .max = 600000},
    {NX_FIELD("timeout", NX_CT_DURATION, G, http_client.timeout_ms), .def = "120s", .min = 1,
     .max = 86400000},
    {NX_FIELD("max_response_bytes", NX_CT_SIZE, G, http_client.max_response_bytes), .def = "32MiB", .min = 1,
     .max = (int64_t)1 << 34},
    {NX_FIELD("max_host_connections", NX_CT_UINT, G, http_client.max_host_connections), .def = "256",
     .min = 1, .max = 1000000},
    {NX_FIELD("engine", NX_CT_ENUM, G, http_client.engine), .choices = http_engines, .def = "auto"},
    {.name = NULL},
};
static const struct nx_conf_struct gw_client = {.name = "\"http_client\"", .fields = gw_client_fields};

static const struct nx_conf_field gw_log_fields[] = {
    {NX_FIELD("level", NX_CT_STRING, G, log_level), .check = check_log_level},
    {NX_FIELD("redact_patterns", NX_CT_STRLIST, G, redact_patterns), .check = check_regexes},
    {.name = NULL},
};
static const struct nx_conf_struct gw_log = {.name = "\"log\"", .fields = gw_log_fields};

/* "*", or an origin as a browser sends it: scheme://host[:port], nothing after. */
void nx_conf_check_origins(struct nx_conf_ctx *ctx, const struct nx_cnode *val, void *dst)
{
    char buf[96];
    NX_UNUSED(dst);
    for (size_t i = 0; i < val->n; i++) {
        static const char scheme_chars[] = "abcdefghijklmnopqrstuvwxyz0123456789+.-";
        const char *o = val->kids[i]->text, *sep = strstr(o, "://");
        bool ok = strcmp(o, "*") == 0 || (sep && sep > o && sep[3] && !strpbrk(sep + 3, "/?#@ ") &&
                                          strspn(o, scheme_chars) == (size_t)(sep - o));
        size_t n = strlen(o);
        bool default_port = (strncmp(o, "https://", 8) == 0 && n > 4 && strcmp(o + n - 4, ":443") == 0) ||
                            (strncmp(o, "http://", 7) == 0 && n > 3 && strcmp(o + n - 3, ":80") == 0);
        if (!ok)
            nx_conf_error(ctx, val->kids[i], "invalid origin %s (expected scheme://host[:port], as a "
                          "browser sends it, e.g. https://chat.example.com, or \"*\")",
                          nx_cnode_describe(val->kids[i], buf, sizeof buf));
        else if (default_port)
            nx_conf_error(ctx, val->kids[i], "origin %s names its scheme's default port, which browsers "
                          "leave out of Origin: drop it", nx_cnode_describe(val->kids[i], buf, sizeof buf));
    }
}

static const struct nx_conf_field gw_cors_fields[] = {
    {NX_FIELD("allowed_origins", NX_CT_STRLIST, G, cors.allowed_origins), .check = nx_conf_check_origins},
    {NX_FIELD("max_age", NX_CT_DURATION, G, cors.max_age_ms), .def = "10m", .min = 0, .max = 86400000},
    {.name = NULL},
};
static const struct nx_conf_struct gw_cors = {.name = "\"cors\"", .fields = gw_cors_fields};

static void check_retention(struct nx_conf_ctx *ctx, const struct nx_cnode *val, void *dst)
{
    char buf[96];
    uint64_t ms = *(uint64_t *)dst;
    /* An hour at least: a file an event still waiting for its turn refers to must outlive the
     * wait (a restart after a short outage resumes such events). */
    if (ms != 0 && ms < 3600000)
        nx_conf_error(ctx, val, "value %s for \"retention\" too short (0 = keep forever, else at least 1h)",
                      nx_cnode_describe(val, buf, sizeof buf));
}

static const struct nx_conf_field gw_media_fields[] = {
    {NX_FIELD("retention", NX_CT_DURATION, G, media_retention_ms), .def = "30d", .min = 0,
     .max = (int64_t)3650 * 86400000, .check = check_retention},
    {.name = NULL},
};
static const struct nx_conf_struct gw_media = {.name = "\"media\"", .fields = gw_media_fields};

static void check_gateway(struct nx_conf_ctx *ctx, const struct nx_cnode *node, void *obj)
{
    static const char *const names[] = {"listen", "metrics_listen", "admin_listen"};
    struct nx_gateway_conf *g = obj;
    const struct nx_listen *ls[] = {&g->listen, &g->metrics_listen, &g->admin_listen};

    if (g->auth_token && !*g->auth_token) {
        free(g->auth_token);
        g->auth_token = NULL;
    }
    for (size_t i = 0; !g->auth_token && g->cors.allowed_origins && g->cors.allowed_origins[i]; i++)
        if (strcmp(g->cors.allowed_origins[i], "*") == 0)
            nx_conf_error(ctx, nx_cnode_get(node, "cors"), "cors.allowed_origins \"*\" lets every web page "
                          "use the gateway: set auth_token first (or list the origins)");
    for (size_t i = 0; i < NX_ARRAY_LEN(names); i++) {
        if (g->auth_token || nx_listen_is_loopback(ls[i]))
            continue;
        nx_conf_error(ctx, nx_cnode_get(node, names[i]),
                      "%s address %s:%d is not loopback: set auth_token to bind it", names[i], ls[i]->host,
                      ls[i]->port);
    }
}

static const struct nx_conf_field gateway_fields[] = {
    {NX_FIELD("listen", NX_CT_CUSTOM, G, listen), .custom = &nx_conf_listen_type, .def = "127.0.0.1:8080"},
    {NX_FIELD("metrics_listen", NX_CT_CUSTOM, G, metrics_listen), .custom = &nx_conf_listen_type,
     .def = "127.0.0.1:9090"},
    {NX_FIELD("admin_listen", NX_CT_CUSTOM, G, admin_listen), .custom = &nx_conf_listen_type,
     .def = "127.0.0.1:9091"},
    {NX_FIELD("auth_token", NX_CT_STRING, G, auth_token)},
    {NX_GROUP("limits", &gw_limits)},
    {NX_GROUP("http_client", &gw_client)},
    {NX_FIELD("shutdown_grace", NX_CT_DURATION, G, shutdown_grace_ms), .def = "10s", .min = 0, .max = 600000},
    {NX_GROUP("log", &gw_log)},
    {NX_GROUP("media", &gw_media)},
    {NX_GROUP("cors", &gw_cors)},
    {.name = NULL},
};

const struct nx_conf_struct nx_conf_gateway_file = {
    .name = "gateway.yaml",
    .size = sizeof(G),
    .fields = gateway_fields,
    .check = check_gateway,
};

/* ---- broker.yaml ---- */

#define B struct nx_broker_conf

static const char *const broker_types[] = {"nats", "local", NULL};
static const char *const fallback_modes[] = {"local_queue", "drop", NULL};

static bool is_nats_url(const char *s)
{
    return strncmp(s, "nats://", 7) == 0 || strncmp(s, "tls://", 6) == 0;
}

static void check_nats_url(struct nx_conf_ctx *ctx, const struct nx_cnode *val, void *dst)
{
    char buf[96];
    if (!is_nats_url(*(char **)dst))
        nx_conf_error(ctx, val, "invalid NATS URL %s (expected nats://host:port or tls://host:port)",
                      nx_cnode_describe(val, buf, sizeof buf));
}

static void check_nats_urls(struct nx_conf_ctx *ctx, const struct nx_cnode *val, void *dst)
{
    char buf[96];
    NX_UNUSED(dst);
    for (size_t i = 0; i < val->n; i++)
        if (!is_nats_url(val->kids[i]->text))
            nx_conf_error(ctx, val->kids[i],
                          "invalid NATS URL %s (expected nats://host:port or tls://host:port)",
                          nx_cnode_describe(val->kids[i], buf, sizeof buf));
}

static const struct nx_conf_field br_auth_fields[] = {
    {NX_FIELD("enabled", NX_CT_BOOL, B, auth.enabled), .def = "false"},
    {NX_FIELD("token", NX_CT_STRING, B, auth.token)},
    {NX_FIELD("user", NX_CT_STRING, B, auth.user)},
    {NX_FIELD("password", NX_CT_STRING, B, auth.password)},
    {NX_FIELD("nkey_file", NX_CT_STRING, B, auth.nkey_file)},
    {NX_FIELD("creds_file", NX_CT_STRING, B, auth.creds_file)},
    {.name = NULL},
};
static const struct nx_conf_struct br_auth = {.name = "\"auth\"", .fields = br_auth_fields};

static const struct nx_conf_field br_tls_fields[] = {
    {NX_FIELD("ca_file", NX_CT_STRING, B, tls.ca_file)},
    {NX_FIELD("cert_file", NX_CT_STRING, B, tls.cert_file)},
    {NX_FIELD("key_file", NX_CT_STRING, B, tls.key_file)},
    {.name = NULL},
};
static const struct nx_conf_struct br_tls = {.name = "\"tls\"", .fields = br_tls_fields};

static const struct nx_conf_field br_reconnect_fields[] = {
    {NX_FIELD("initial_backoff", NX_CT_DURATION, B, reconnect.initial_backoff_ms), .def = "250ms", .min = 1,
     .max = 3600000},
    {NX_FIELD("max_backoff", NX_CT_DURATION, B, reconnect.max_backoff_ms), .def = "10s", .min = 1,
     .max = 3600000},
    {NX_FIELD("max_attempts", NX_CT_UINT, B, reconnect.max_attempts), .def = "0"},
    {.name = NULL},
};
static const struct nx_conf_struct br_reconnect = {.name = "\"reconnect\"", .fields = br_reconnect_fields};

static const struct nx_conf_field br_persist_fields[] = {
    {NX_FIELD("enabled", NX_CT_BOOL, B, persistence.enabled), .def = "true"},
    {NX_FIELD("path", NX_CT_STRING, B, persistence.path), .def = "./data/queue/broker.db"},
    {.name = NULL},
};
static const struct nx_conf_struct br_persist = {.name = "\"persistence\"", .fields = br_persist_fields};

static const struct nx_conf_field br_limits_fields[] = {
    {NX_FIELD("max_payload", NX_CT_SIZE, B, limits.max_payload), .def = "4MB", .min = 1,
     .max = (int64_t)64 << 20},
    {NX_FIELD("max_pending", NX_CT_UINT, B, limits.max_pending), .def = "10000", .min = 1, .max = 100000000},
    {.name = NULL},
};
static const struct nx_conf_struct br_limits = {.name = "\"limits\"", .fields = br_limits_fields};

static const struct nx_conf_field br_fallback_fields[] = {
    {NX_FIELD("mode", NX_CT_STRING, B, fallback.mode), .def = "local_queue"},
    {NX_FIELD("drain_on_reconnect", NX_CT_BOOL, B, fallback.drain_on_reconnect), .def = "true"},
    {.name = NULL},
};

static void check_fallback(struct nx_conf_ctx *ctx, const struct nx_cnode *node, void *obj)
{
    const char *mode = ((B *)obj)->fallback.mode;
    char buf[96];

    for (size_t i = 0; fallback_modes[i]; i++)
        if (mode && strcmp(mode, fallback_modes[i]) == 0)
            return;
    const struct nx_cnode *v = nx_cnode_get(node, "mode");
    nx_conf_error(ctx, v, "invalid value %s for \"mode\" (expected one of: local_queue, drop)",
                  v ? nx_cnode_describe(v, buf, sizeof buf) : "null");
}
static const struct nx_conf_struct br_fallback = {.name = "\"fallback\"", .fields = br_fallback_fields,
                                                  .check = check_fallback};

static const struct nx_conf_field br_dlq_fields[] = {
    {NX_FIELD("max_attempts", NX_CT_UINT, B, dlq.max_attempts), .def = "3", .min = 1, .max = 1000},
    {.name = NULL},
};
static const struct nx_conf_struct br_dlq = {.name = "\"dlq\"", .fields = br_dlq_fields};

static const struct nx_conf_field br_ledger_fields[] = {
    {NX_FIELD("retention", NX_CT_DURATION, B, ledger.retention_ms), .def = "7d", .min = 60000,
     .max = (int64_t)3650 * 86400000},
    {.name = NULL},
};
static const struct nx_conf_struct br_ledger = {.name = "\"ledger\"", .fields = br_ledger_fields};

static bool is_js_name(const char *s)
{
    if (!s || !*s || strlen(s) > 64)
        return false;
    for (; *s; s++)
        if (!((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') ||
              *s == '_' || *s == '-'))
            return false;
    return true;
}

static void check_js_name(struct nx_conf_ctx *ctx, const struct nx_cnode *val, void *dst)
{
    char buf[96];
    if (!is_js_name(*(char **)dst))
        nx_conf_error(ctx, val, "invalid JetStream name %s (letters, digits, '_' and '-', at most 64)",
                      nx_cnode_describe(val, buf, sizeof buf));
}

static void check_js_storage(struct nx_conf_ctx *ctx, const struct nx_cnode *val, void *dst)
{
    char buf[96];
    const char *v = *(char **)dst;
    if (!v || (strcmp(v, "file") != 0 && strcmp(v, "memory") != 0))
        nx_conf_error(ctx, val, "invalid value %s for \"storage\" (expected file or memory)",
                      nx_cnode_describe(val, buf, sizeof buf));
}

static const struct nx_conf_field br_js_fields[] = {
    {NX_FIELD("enabled", NX_CT_BOOL, B, jetstream.enabled), .def = "true"},
    {NX_FIELD("inbound_stream", NX_CT_STRING, B, jetstream.inbound_stream), .def = "NEXO_INBOUND",
     .check = check_js_name},
    {NX_FIELD("outbound_stream", NX_CT_STRING, B, jetstream.outbound_stream), .def = "NEXO_OUTBOUND",
     .check = check_js_name},
    {NX_FIELD("route_stream", NX_CT_STRING, B, jetstream.route_stream), .def = "NEXO_ROUTE",
     .check = check_js_name},
    {NX_FIELD("sessions_bucket", NX_CT_STRING, B, jetstream.sessions_bucket), .def = "NEXO_SESSIONS",
     .check = check_js_name},
    {NX_FIELD("storage", NX_CT_STRING, B, jetstream.storage), .def = "file", .check = check_js_storage},
    {NX_FIELD("replicas", NX_CT_UINT, B, jetstream.replicas), .def = "1", .min = 1, .max = 5},
    {NX_FIELD("max_age", NX_CT_DURATION, B, jetstream.max_age_ms), .def = "7d"},
    {NX_FIELD("max_bytes", NX_CT_SIZE, B, jetstream.max_bytes), .def = "0"},
    {NX_FIELD("duplicate_window", NX_CT_DURATION, B, jetstream.duplicate_window_ms), .def = "2m",
     .min = 1000, .max = 86400000},
    {NX_FIELD("partitions", NX_CT_UINT, B, jetstream.partitions), .def = "8", .min = 1, .max = 1024},
    {NX_FIELD("ack_wait", NX_CT_DURATION, B, jetstream.ack_wait_ms), .def = "30s", .min = 500,
     .max = 3600000},
    {NX_FIELD("max_deliver", NX_CT_UINT, B, jetstream.max_deliver), .def = "0", .max = 1000000},
    {NX_FIELD("session_max_messages", NX_CT_UINT, B, jetstream.session_max_messages), .def = "200",
     .min = 2, .max = 100000},
    {.name = NULL},
};
static const struct nx_conf_struct br_js = {.name = "\"jetstream\"", .fields = br_js_fields};

static const struct nx_conf_field broker_fields[] = {
    {NX_FIELD("type", NX_CT_ENUM, B, type), .choices = broker_types, .def = "local", .flags = NX_CF_REQUIRED},
    {NX_FIELD("url", NX_CT_STRING, B, url), .def = "nats://127.0.0.1:4222", .check = check_nats_url},
    {NX_FIELD("urls", NX_CT_STRLIST, B, urls), .check = check_nats_urls},
    {NX_GROUP("auth", &br_auth)},
    {NX_GROUP("tls", &br_tls)},
    {NX_GROUP("reconnect", &br_reconnect)},
    {NX_GROUP("persistence", &br_persist)},
    {NX_GROUP("limits", &br_limits)},
    {NX_GROUP("fallback", &br_fallback)},
    {NX_GROUP("dlq", &br_dlq)},
    {NX_GROUP("ledger", &br_ledger)},
    {NX_GROUP("jetstream", &br_js)},
    {.name = NULL},
};
static const struct nx_conf_struct broker_desc = {.name = "\"broker\"", .fields = broker_fields};

static const struct nx_conf_field broker_file_fields[] = {
    {NX_GROUP("broker", &broker_desc), .flags = NX_CF_REQUIRED},
    {.name = NULL},
};

const struct nx_conf_struct nx_conf_broker_file = {
    .name = "broker.yaml",
    .size = sizeof(B),
    .fields = broker_file_fields,
};

/* ---- memory.yaml ---- */

#define M struct nx_memory_conf

static const char *const lt_backends[] = {"sqlite", "redis", NULL};
static const char *const recall_modes[] = {"keyword", "vector", "hybrid", NULL};
static const char *const on_secret[] = {"block", "redact", "warn", NULL};

static const struct nx_conf_field st_fields[] = {
    {NX_FIELD("max_history_turns", NX_CT_UINT, M, short_term.max_history_turns), .def = "50", .min = 1,
     .max = 100000},
    {NX_FIELD("session_ttl", NX_CT_DURATION, M, short_term.session_ttl_ms), .def = "24h", .min = 1000,
     .max = 30LL * 86400000},
    {NX_FIELD("max_sessions", NX_CT_UINT, M, short_term.max_sessions), .def = "10000", .min = 1,
     .max = 100000000},
    {.name = NULL},
};
static const struct nx_conf_struct st_desc = {.name = "\"short_term\"", .fields = st_fields};

static const struct nx_conf_field lt_sqlite_fields[] = {
    {NX_FIELD("path", NX_CT_STRING, M, long_term.sqlite_path), .def = "./data/memory.db"},
    {.name = NULL},
};
static const struct nx_conf_struct lt_sqlite = {.name = "\"sqlite\"", .fields = lt_sqlite_fields};

static const struct nx_conf_field lt_redis_fields[] = {
    {NX_FIELD("url", NX_CT_STRING, M, long_term.redis_url)},
    {.name = NULL},
};
static const struct nx_conf_struct lt_redis = {.name = "\"redis\"", .fields = lt_redis_fields};

static const struct nx_conf_field lt_fields[] = {
    {NX_FIELD("backend", NX_CT_ENUM, M, long_term.backend), .choices = lt_backends, .def = "sqlite"},
    {NX_GROUP("sqlite", &lt_sqlite)},
    {NX_GROUP("redis", &lt_redis)},
    {.name = NULL},
};
static const struct nx_conf_struct lt_desc = {.name = "\"long_term\"", .fields = lt_fields};

static const struct nx_conf_field emb_fields[] = {
    {NX_FIELD("provider", NX_CT_STRING, M, vector.embedding.provider), .def = "http"},
    {NX_FIELD("base_url", NX_CT_STRING, M, vector.embedding.base_url), .def = "http://localhost:11434/v1"},
    {NX_FIELD("model", NX_CT_STRING, M, vector.embedding.model), .def = "nomic-embed-text"},
    {NX_FIELD("api_key", NX_CT_STRING, M, vector.embedding.api_key)},
    {NX_FIELD("dimensions", NX_CT_UINT, M, vector.embedding.dimensions), .def = "1536", .min = 1,
     .max = 65536},
    {NX_FIELD("timeout_secs", NX_CT_UINT, M, vector.embedding.timeout_secs), .def = "30", .min = 1,
     .max = 3600},
    {.name = NULL},
};
static const struct nx_conf_struct emb_desc = {.name = "\"embedding\"", .fields = emb_fields};

static const struct nx_conf_field vec_fields[] = {
    {NX_FIELD("enabled", NX_CT_BOOL, M, vector.enabled), .def = "false"},
    {NX_FIELD("backend", NX_CT_STRING, M, vector.backend), .def = "sqlite-vec"},
    {NX_FIELD("default_recall_mode", NX_CT_ENUM, M, vector.default_recall_mode), .choices = recall_modes,
     .def = "keyword"},
    {NX_GROUP("embedding", &emb_desc)},
    {.name = NULL},
};
static const struct nx_conf_struct vec_desc = {.name = "\"vector\"", .fields = vec_fields};

static const struct nx_conf_field sg_fields[] = {
    {NX_FIELD("enabled", NX_CT_BOOL, M, secret_guard.enabled), .def = "true"},
    {NX_FIELD("on_secret", NX_CT_ENUM, M, secret_guard.on_secret), .choices = on_secret, .def = "block"},
    {NX_FIELD("rules", NX_CT_ANY, M, secret_guard.rules)},
    {NX_FIELD("exclude_rules", NX_CT_STRLIST, M, secret_guard.exclude_rules)},
    {.name = NULL},
};
static const struct nx_conf_struct sg_desc = {.name = "\"secret_guard\"", .fields = sg_fields};

static const struct nx_conf_field memory_fields[] = {
    {NX_GROUP("short_term", &st_desc)},
    {NX_GROUP("long_term", &lt_desc)},
    {NX_GROUP("vector", &vec_desc)},
    {NX_GROUP("secret_guard", &sg_desc)},
    {NX_FIELD("snapshot", NX_CT_ANY, M, snapshot)},
    {.name = NULL},
};

const struct nx_conf_struct nx_conf_memory_file = {
    .name = "memory.yaml",
    .size = sizeof(M),
    .fields = memory_fields,
};
