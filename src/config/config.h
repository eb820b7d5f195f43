#ifndef NX_CONFIG_CONFIG_H
#define NX_CONFIG_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* The configuration: a directory of YAML files (gateway.yaml, agents.yaml + agents.d/*.yaml,
 * llm.yaml, broker.yaml, memory.yaml, mcp.yaml, plugins/*.yaml), each optional, parsed against
 * declarative field tables into one immutable, reference-counted snapshot. See
 * docs/configuration.md. */

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
/* "file:line:col: message\n" for each. */
void nx_diags_print(const struct nx_diags *d, FILE *out);

/* "127.0.0.1:8080", "[::1]:8080", "localhost:8080", ":8080" (= 127.0.0.1). */
struct nx_listen {
    char host[64];
    int port; /* 0 = pick a free port */
};
int nx_listen_parse(const char *s, struct nx_listen *out);
/* True for 127.0.0.0/8, ::1 and "localhost". */
bool nx_listen_is_loopback(const struct nx_listen *l);

struct nx_http_limits_conf {
    uint32_t max_connections;     /* per listener; default 1024 */
    uint32_t max_header_bytes;    /* default 16384 */
    uint64_t max_body_bytes;      /* default 8 MiB; 413 beyond */
    uint32_t request_timeout_ms;  /* reading one request, headers and body; default 10000 */
    uint32_t keepalive_timeout_ms; /* idle keep-alive connection; default 30000 */
};

struct nx_http_client_conf {
    char *proxy;                  /* http://, https://, socks5://, socks5h:// or NULL */
    uint32_t connect_timeout_ms;  /* default 10000 */
    uint32_t timeout_ms;          /* whole request default; default 120000 */
    uint64_t max_response_bytes;  /* default 32 MiB */
};

/* gateway.yaml */
struct nx_gateway_conf {
    struct nx_listen listen;          /* default 127.0.0.1:8080 */
    struct nx_listen metrics_listen;  /* default 127.0.0.1:9090 */
    struct nx_listen admin_listen;    /* default 127.0.0.1:9091 */
    char *auth_token;                 /* NULL = none; then only loopback binds are allowed */
    struct nx_http_limits_conf limits;
    struct nx_http_client_conf http_client;
    uint32_t shutdown_grace_ms;       /* in-flight requests may finish this long; default 10000 */
    char **redact_patterns;           /* extra log redaction patterns (POSIX ERE), NULL-terminated */
    char *log_level;                  /* NULL = info (the CLI flag wins) */
};

struct nx_config;

/* Loads `dir`; NULL means the embedded defaults (no files). On success *out holds a snapshot
 * with one reference. Every problem found is added to diags (all of them, not just the first);
 * returns NX_ECONFIG when there was any error, in which case *out is untouched. */
int nx_config_load(const char *dir, struct nx_config **out, struct nx_diags *diags);

struct nx_config *nx_config_ref(struct nx_config *c);
void nx_config_unref(struct nx_config *c);

const struct nx_gateway_conf *nx_config_gateway(const struct nx_config *c);
/* The directory it came from, or NULL for the embedded defaults. */
const char *nx_config_dir(const struct nx_config *c);

#endif
