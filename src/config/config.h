#ifndef NX_CONFIG_CONFIG_H
#define NX_CONFIG_CONFIG_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* The configuration: a directory of YAML files (gateway.yaml, agents.yaml + agents.d/NAME.yaml,
 * llm.yaml, broker.yaml, memory.yaml, mcp.yaml, plugins/NAME.yaml), each optional, parsed against
 * declarative field tables (config/schema.h) into one immutable, reference-counted snapshot.
 * See docs/configuration.md. */

/* One problem found while loading, with its place. line/col are 1-based; 0 when unknown. */
struct nx_diag {
    char *file; /* path as given (config dir joined with the file name) */
    int line;
    int col;
    char *msg; /* "unknown key \"alowed_tools\" (did you mean \"allowed_tools\"?)" */
};

struct nx_diags {
    struct nx_diag *v;
    size_t n;
    size_t cap;
};

void nx_diags_init(struct nx_diags *d);
void nx_diags_cleanup(struct nx_diags *d);
void nx_diags_add(struct nx_diags *d, const char *file, int line, int col, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* Orders the diagnostics from index `from` on by place within each file (stable; files keep
 * their order). */
void nx_diags_sort(struct nx_diags *d, size_t from);
/* "file:line:col: message\n" for each ("file: message" when the place is unknown). */
void nx_diags_print(const struct nx_diags *d, FILE *out);

/* "127.0.0.1:8080", "[::1]:8080", "localhost:8080", ":8080" (= 127.0.0.1), "8080" (= 127.0.0.1).
 * Returns 0, NX_EINVAL for a malformed address or NX_ERANGE for a port outside 0-65535. */
struct nx_listen {
    char host[64];
    int port; /* 0 = pick a free port */
};
int nx_listen_parse(const char *s, struct nx_listen *out);
/* True for 127.0.0.0/8, ::1 and "localhost". */
bool nx_listen_is_loopback(const struct nx_listen *l);

/* A map of strings to strings, in file order. */
struct nx_strmap {
    char **keys;
    char **vals;
    size_t n;
};
/* The value for key, or NULL. */
const char *nx_strmap_get(const struct nx_strmap *m, const char *key);

/* A map of strings to lists of strings (numbers are kept as written). */
struct nx_strlistmap {
    char **keys;
    char ***lists; /* lists[i] NULL-terminated */
    size_t n;
};
/* The list for key (NULL-terminated), or NULL. */
char *const *nx_strlistmap_get(const struct nx_strlistmap *m, const char *key);

/* ---- gateway.yaml ---- */

struct nx_http_limits_conf {
    uint32_t max_connections;      /* per listener; default 1024 */
    uint32_t max_header_bytes;     /* default 16384 */
    uint64_t max_body_bytes;       /* default 8 MiB; 413 beyond */
    uint32_t request_timeout_ms;   /* `request_timeout`: one request, headers and body; default 10s */
    uint32_t keepalive_timeout_ms; /* `keepalive_timeout`: idle keep-alive connection; default 30s */
    uint32_t stream_keepalive_ms;  /* `stream_keepalive`: a streamed answer's keep-alive while the
                                    * agent's tools run; default 15s */
};

struct nx_http_client_conf {
    char *proxy;                 /* http://, https://, socks5://, socks5h:// or NULL */
    uint32_t connect_timeout_ms; /* default 10s */
    uint32_t timeout_ms;         /* whole request default; default 120s */
    uint64_t max_response_bytes; /* default 32 MiB */
    uint32_t max_host_connections; /* concurrent connections per upstream host; default 256 */
    int engine;                  /* enum nx_http_engine: auto (default) or curl */
};

/* http_client.engine: nexo's own HTTP/1.1 engine for plain http:// calls that need nothing
 * more (auto), or libcurl for every call (curl). */
enum nx_http_engine { NX_HTTP_ENGINE_AUTO = 0, NX_HTTP_ENGINE_CURL = 1 };

struct nx_gateway_conf {
    struct nx_listen listen;         /* default 127.0.0.1:8080 */
    struct nx_listen metrics_listen; /* default 127.0.0.1:9090 */
    struct nx_listen admin_listen;   /* default 127.0.0.1:9091 */
    char *auth_token;                /* NULL = none; then only loopback binds are allowed */
    struct nx_http_limits_conf limits;
    struct nx_http_client_conf http_client;
    uint32_t shutdown_grace_ms;      /* `shutdown_grace`; default 10s */
    char **redact_patterns;          /* `log.redact_patterns` (POSIX ERE), NULL-terminated, never NULL */
    char *log_level;                 /* `log.level`; NULL = info (the CLI flag wins) */
    uint64_t media_retention_ms;     /* `media.retention`: received channel files kept (30d; 0 = forever) */
    struct {
        char **allowed_origins;      /* `cors.allowed_origins`: web pages that may call the listeners,
                                        "scheme://host[:port]" or "*"; NULL-terminated, never NULL */
        uint32_t max_age_ms;         /* `cors.max_age`: how long a browser keeps a preflight (10m) */
    } cors;
};

/* ---- llm.yaml ---- */

enum nx_provider_kind {
    NX_PROVIDER_ANTHROPIC = 0,
    NX_PROVIDER_OPENAI = 1, /* OpenAI-compatible: openai, deepseek, minimax, gemini, ollama, vllm... */
};

struct nx_provider_conf {
    char *name;    /* the key under `providers` */
    int kind;      /* enum nx_provider_kind; from `kind`, else from the name */
    char *api_key; /* "" when unset */
    char *base_url; /* NULL = the kind's default */
    bool is_known_base; /* base_url is the public endpoint nexo knows for this name */
    struct {
        double requests_per_second; /* default 2.0 */
        uint64_t quota_alert_threshold; /* 0 = none */
    } rate_limit;
    json_t *auth;            /* free-form, NULL when absent */
    char *group_id;
    char *api_flavor;        /* openai_compat | anthropic_messages; NULL = default */
    char *embedding_model;
    json_t *safety_settings; /* free-form */
    struct nx_strmap headers;
    uint32_t timeout_ms;     /* `timeout`; 0 = the gateway's http_client.timeout */
    uint32_t stall_timeout_ms; /* `stall_timeout`: a stream of keep-alives only; 0 = max(timeout, 10m) */
    struct nx_breaker_cfg {  /* `circuit_breaker`; here 0 = llm.yaml's top-level value */
        uint32_t failure_threshold; /* consecutive failures that open it (default 5) */
        uint32_t success_threshold; /* half-open successes that close it (default 1) */
        uint32_t open_secs;         /* first open period (default 10) */
        uint32_t max_open_secs;     /* the period doubles up to this (default 120) */
    } circuit_breaker;
};

struct nx_llm_retry_conf {
    uint32_t max_attempts;       /* default 5 */
    uint32_t initial_backoff_ms; /* default 1000 */
    uint32_t max_backoff_ms;     /* default 60000 */
    double backoff_multiplier;   /* default 2.0 */
    uint32_t deadline_ms;        /* `deadline`: no attempt or wait starts past it, counted from
                                    the request's start over all targets; default 5 min, 0 none */
};

struct nx_llm_conf {
    struct nx_provider_conf *providers;
    size_t n_providers;
    struct nx_llm_retry_conf retry;
    struct nx_breaker_cfg circuit_breaker; /* default for every provider */
    json_t *context_optimization; /* free-form */
    json_t *tenants;              /* free-form */
};

/* ---- agents.yaml + agents.d/\*.yaml ---- */

struct nx_model_ref {
    char *provider;          /* a key of llm.yaml providers */
    char *model;
    uint32_t context_window; /* tokens; 0 = known from the model's name (nx_llm_context_window) */
};

struct nx_agent_conf {
    char *id;
    char *description;
    struct {
        char *provider;
        char *model;
        uint32_t context_window; /* as in nx_model_ref */
        struct nx_model_ref *fallbacks;
        size_t n_fallbacks;
    } model;
    char *system_prompt;
    char *workspace;
    char *tenant_id;
    char *language;
    char *skills_dir;            /* default "./skills" */
    char *transcripts_dir;
    char **allowed_tools;        /* NULL-terminated, never NULL; empty = all; trailing-* globs */
    char **plugins;
    char **skills;
    char **extra_docs;
    char **allowed_delegates;
    char **accept_delegates_from;
    struct nx_strmap skill_overrides; /* name -> strict | warn | disable */
    struct nx_strmap credentials;     /* channel -> instance */
    struct nx_strlistmap outbound_allowlist; /* channel -> recipients; empty = unrestricted */
    struct nx_rate_conf {
        double rps;
        uint32_t burst; /* default 5 */
    } *sender_rate_limit; /* NULL = no limit */
    struct nx_binding_conf {
        char *plugin;     /* required */
        char *instance;   /* NULL = only topics without an instance */
        json_t *overrides; /* object of the per-binding override keys present, never NULL */
    } *inbound_bindings;
    size_t n_inbound_bindings;
    struct {
        uint32_t debounce_ms; /* default 2000 */
        uint32_t queue_cap;   /* default 32: turns waiting per session at most */
        int queue_mode;       /* followup (0) | collect (1) | interrupt (2): enum nx_queue_mode */
    } config;
    struct {
        uint32_t max_tool_iterations; /* default 16 */
        uint32_t max_tokens;          /* per LLM call; default 4096 */
        uint64_t daily_token_budget;  /* 0 = unlimited */
    } limits;
    struct {
        bool enabled;         /* default false */
        uint32_t interval_ms; /* `interval`; default 5m */
    } heartbeat;
    struct {
        uint32_t failure_threshold; /* consecutive failed turns that open it; default 5 */
        uint32_t open_secs;         /* cool-down before a probe turn; default 30 */
    } circuit_breaker;
    json_t *tool_rate_limits; /* free-form; NULL when absent */
    json_t *extra;            /* the other nexo-rs keys (dreaming, dispatch_policy, ...); never NULL */
    /* Where the agent was defined (its id's position), for later messages. */
    char *origin_file;
    int origin_line;
    int origin_col;
};

/* ---- broker.yaml ---- */

enum nx_broker_type { NX_BROKER_NATS = 0, NX_BROKER_LOCAL = 1 };

struct nx_broker_conf {
    int type;        /* enum nx_broker_type; default local (no broker.yaml) */
    char *url;       /* default nats://127.0.0.1:4222 */
    char **urls;     /* extra cluster URLs, NULL-terminated */
    struct {
        bool enabled;
        char *token;
        char *user;
        char *password;
        char *nkey_file;
        char *creds_file;
    } auth;
    struct {
        char *ca_file;
        char *cert_file;
        char *key_file;
    } tls;
    struct {
        uint32_t initial_backoff_ms; /* default 250 */
        uint32_t max_backoff_ms;     /* default 10000 */
        uint32_t max_attempts;       /* 0 = forever */
    } reconnect;
    struct {
        bool enabled;    /* default true */
        char *path;      /* default ./data/queue/broker.db */
    } persistence;
    struct {
        uint64_t max_payload; /* default 4MB */
        uint32_t max_pending; /* default 10000 */
    } limits;
    struct {
        char *mode;             /* default local_queue */
        bool drain_on_reconnect; /* default true */
    } fallback;
    struct {
        uint32_t max_attempts; /* default 3 */
    } dlq;
    /* The exactly-once ledger's housekeeping (docs/bus.md). */
    struct {
        uint64_t retention_ms;    /* default 7d: finished rows older than this are deleted */
    } ledger;
    /* JetStream (docs/scaling.md): used when the server has it. */
    struct {
        bool enabled;             /* default true: detected at connect */
        char *inbound_stream;     /* default NEXO_INBOUND, subjects plugin.inbound.> */
        char *outbound_stream;    /* default NEXO_OUTBOUND, subjects plugin.outbound.> */
        char *route_stream;       /* default NEXO_ROUTE, subjects agent.route.> */
        char *sessions_bucket;    /* default NEXO_SESSIONS (KV) */
        char *storage;            /* file (default) or memory */
        uint32_t replicas;        /* default 1 */
        uint64_t max_age_ms;      /* default 7d; 0 = unlimited */
        uint64_t max_bytes;       /* default 0 = unlimited */
        uint32_t duplicate_window_ms; /* default 2m */
        uint32_t partitions;      /* default 8 */
        uint32_t ack_wait_ms;     /* default 30s */
        uint32_t max_deliver;     /* default 0 = unlimited */
        uint32_t session_max_messages; /* default 200 */
    } jetstream;
};

/* ---- memory.yaml ---- */

struct nx_memory_conf {
    struct {
        uint32_t max_history_turns; /* default 50 */
        uint32_t session_ttl_ms;    /* `session_ttl`; default 24h */
        uint32_t max_sessions;      /* default 10000 */
    } short_term;
    struct {
        int backend;           /* 0 sqlite, 1 redis */
        char *sqlite_path;     /* `sqlite.path`; default ./data/memory.db */
        char *redis_url;       /* `redis.url` */
    } long_term;
    struct {
        bool enabled;
        char *backend;         /* default sqlite-vec */
        int default_recall_mode; /* 0 keyword, 1 vector, 2 hybrid */
        struct {
            char *provider;    /* default http */
            char *base_url;
            char *model;
            char *api_key;
            uint32_t dimensions;   /* default 1536 */
            uint32_t timeout_secs; /* default 30 */
        } embedding;
    } vector;
    struct {
        bool enabled;          /* default true */
        int on_secret;         /* 0 block, 1 redact, 2 warn */
        json_t *rules;         /* "all" or a list; NULL = all */
        char **exclude_rules;
    } secret_guard;
    json_t *snapshot;          /* free-form */
};

/* ---- mcp.yaml ---- */

enum nx_mcp_transport {
    NX_MCP_STDIO = 0,
    NX_MCP_STREAMABLE_HTTP = 1,
    NX_MCP_SSE = 2,
    NX_MCP_AUTO = 3,
};

struct nx_mcp_server_conf {
    char *name;
    int transport; /* enum nx_mcp_transport */
    char *command;
    char **args;
    struct nx_strmap env;
    char *cwd;
    char *url;
    struct nx_strmap headers;
    uint32_t connect_timeout_ms; /* 0 = mcp.connect_timeout */
    uint32_t call_timeout_ms;    /* 0 = mcp.call_timeout */
    json_t *extra;               /* other keys, never NULL */
};

struct nx_mcp_conf {
    bool enabled;                 /* default false */
    uint32_t session_ttl_ms;      /* default 30m */
    uint32_t idle_reap_interval_ms; /* default 60s */
    uint32_t connect_timeout_ms;  /* default 30s */
    uint32_t initialize_timeout_ms; /* default 10s */
    uint32_t call_timeout_ms;     /* default 30s */
    uint32_t shutdown_grace_ms;   /* default 3s */
    struct nx_mcp_server_conf *servers;
    size_t n_servers;
    json_t *extra;                /* watch, sampling, resource_cache...; never NULL */
};

/* ---- plugins/\*.yaml ---- */

struct nx_cnode;

struct nx_plugin_conf {
    char *name;   /* file name without .yaml: "telegram" */
    char *file;   /* display path, for diagnostics */
    json_t *json; /* the whole file, ${} resolved (an empty file is an empty object) */
    struct nx_cnode *root; /* the same with positions, for nx_conf_parse_struct (config/schema.h) */
};

/* ---- the snapshot ---- */

struct nx_config;

/* Loads `dir`; NULL means the embedded defaults (no files). On success *out holds a snapshot
 * with one reference. Every problem found is added to diags (all of them, not just the first;
 * diags may be NULL); returns NX_ECONFIG when there was any error, in which case *out is
 * untouched. */
int nx_config_load(const char *dir, struct nx_config **out, struct nx_diags *diags);
/* As nx_config_load(NULL, ...) but with one file's contents given in memory: `name` is a path
 * relative to a config dir ("gateway.yaml", "agents.d/x.yaml", "plugins/telegram.yaml"); `dir`
 * (may be NULL) is only used for ${file:} and display. For tests and fuzzing. */
int nx_config_load_mem(const char *dir, const char *name, const char *data, size_t len,
                       struct nx_config **out, struct nx_diags *diags);

/* Thread-safe (atomic count). The last unref frees everything. Both accept NULL. */
struct nx_config *nx_config_ref(struct nx_config *c);
void nx_config_unref(struct nx_config *c);

const struct nx_gateway_conf *nx_config_gateway(const struct nx_config *c);
struct nx_buf;
/* The files read from disk whose path starts with one of prefixes (NULL-terminated) and that
 * differ between a and b (changed, added or removed), appended to out as "x, y"; their count. */
size_t nx_config_changed(const struct nx_config *a, const struct nx_config *b,
                         const char *const *prefixes, struct nx_buf *out);
/* The directory it came from, or NULL for the embedded defaults. */
const char *nx_config_dir(const struct nx_config *c);
/* The real paths of the files the configuration read through ${file:} (secrets, often):
 * NULL-terminated, never NULL. */
const char *const *nx_config_file_refs(const struct nx_config *c);
/* The values of secret-named keys (api_key, auth_token, *_secret, Authorization, ...) in every
 * file, placeholders resolved; NULL-terminated, never NULL. */
const char *const *nx_config_secrets(const struct nx_config *c);
/* Makes every log line, transcript and error message of this process redact the snapshot's
 * secret values and its gateway.yaml log.redact_patterns. Returns 0, or NX_EINVAL with the
 * pattern that did not compile in err (the old patterns kept; the values are set anyway). */
int nx_config_apply_redaction(const struct nx_config *c, char *err, size_t errlen);
const struct nx_llm_conf *nx_config_llm(const struct nx_config *c);
/* The provider named `name`, or NULL. */
const struct nx_provider_conf *nx_config_provider(const struct nx_config *c, const char *name);
const struct nx_broker_conf *nx_config_broker(const struct nx_config *c);
const struct nx_memory_conf *nx_config_memory(const struct nx_config *c);
const struct nx_mcp_conf *nx_config_mcp(const struct nx_config *c);
/* The agents in order (base file order, drop-ins replacing or appending); *out may be NULL
 * when there are none (never, today: a default agent is added). */
size_t nx_config_agents(const struct nx_config *c, const struct nx_agent_conf **out);
const struct nx_agent_conf *nx_config_agent(const struct nx_config *c, const char *id);
size_t nx_config_plugins(const struct nx_config *c, const struct nx_plugin_conf **out);
/* plugins/<name>.yaml, or NULL. */
const struct nx_plugin_conf *nx_config_plugin(const struct nx_config *c, const char *name);

#endif
