/* Field tables: llm.yaml and mcp.yaml. */
#include <stdlib.h>
#include <string.h>

#include "config/tables.h"
#include "core/alloc.h"
#include "core/buf.h"

/* ---- llm.yaml ---- */

#define P struct nx_provider_conf

static const char *const provider_kinds[] = {"anthropic", "openai", NULL};

static void check_api_flavor(struct nx_conf_ctx *ctx, const struct nx_cnode *val, void *dst)
{
    const char *s = *(char **)dst;
    char buf[96];

    if (strcmp(s, "openai_compat") != 0 && strcmp(s, "anthropic_messages") != 0)
        nx_conf_error(ctx, val, "invalid value %s for \"api_flavor\" (expected one of: openai_compat, "
                      "anthropic_messages)", nx_cnode_describe(val, buf, sizeof buf));
}

static const struct nx_conf_field prov_rate_fields[] = {
    {NX_FIELD("requests_per_second", NX_CT_DOUBLE, P, rate_limit.requests_per_second), .def = "2.0",
     .min = 0, .max = 100000},
    {NX_FIELD("quota_alert_threshold", NX_CT_UINT, P, rate_limit.quota_alert_threshold), .def = "0"},
    {.name = NULL},
};
static const struct nx_conf_struct prov_rate = {.name = "\"rate_limit\"", .fields = prov_rate_fields};

/* The endpoints of the providers nexo-rs knows by name, used when base_url is absent or empty
 * (nexo-rs: "empty => provider default"). Gemini and MiniMax through their OpenAI-compatible
 * endpoints; MiniMax's Anthropic-compatible one with api_flavor anthropic_messages. */
static const struct {
    const char *name;
    int kind;
    const char *base_url;
} known_bases[] = {
    {"anthropic", NX_PROVIDER_ANTHROPIC, "https://api.anthropic.com"},
    {"openai", NX_PROVIDER_OPENAI, "https://api.openai.com/v1"},
    {"deepseek", NX_PROVIDER_OPENAI, "https://api.deepseek.com/v1"},
    {"gemini", NX_PROVIDER_OPENAI, "https://generativelanguage.googleapis.com/v1beta/openai"},
    {"minimax", NX_PROVIDER_OPENAI, "https://api.minimax.io/v1"},
    {"minimax", NX_PROVIDER_ANTHROPIC, "https://api.minimax.io/anthropic"},
};

#define GEMINI_NATIVE "https://generativelanguage.googleapis.com/v1beta"

/* Fills what the name implies: the kind (anthropic for "anthropic" or api_flavor
 * anthropic_messages, OpenAI-compatible otherwise) and, for the names above, the base URL. A
 * provider of another name must say where it is: its key is never sent to a guessed vendor. */
static void check_provider(struct nx_conf_ctx *ctx, const struct nx_cnode *node, void *obj)
{
    P *p = obj;
    bool is_anthropic_flavor = p->api_flavor && strcmp(p->api_flavor, "anthropic_messages") == 0;

    if (p->kind < 0)
        p->kind = strcmp(p->name, "anthropic") == 0 || is_anthropic_flavor ? NX_PROVIDER_ANTHROPIC
                                                                          : NX_PROVIDER_OPENAI;
    else if (is_anthropic_flavor && p->kind != NX_PROVIDER_ANTHROPIC)
        nx_conf_error(ctx, nx_cnode_get(node, "api_flavor"),
                      "provider %s: api_flavor anthropic_messages speaks the Anthropic API; it needs "
                      "kind: anthropic", p->name);
    if (!p->api_key)
        p->api_key = nx_strdup("");
    if (p->base_url && !*p->base_url) {
        free(p->base_url);
        p->base_url = NULL;
    }
    if (p->base_url && strcmp(p->name, "gemini") == 0 && p->kind == NX_PROVIDER_OPENAI &&
        (!strcmp(p->base_url, GEMINI_NATIVE) || !strcmp(p->base_url, GEMINI_NATIVE "/"))) {
        free(p->base_url); /* nexo-rs's native base: nexo speaks its OpenAI-compatible endpoint */
        p->base_url = NULL;
    }
    for (size_t i = 0; !p->base_url && i < NX_ARRAY_LEN(known_bases); i++)
        if (strcmp(known_bases[i].name, p->name) == 0 && known_bases[i].kind == p->kind) {
            p->base_url = nx_strdup(known_bases[i].base_url);
            p->is_known_base = true;
        }
    if (!p->base_url && !nx_cnode_get(node, "kind"))
        nx_conf_error(ctx, node,
                      "provider %s: base_url is required (nexo knows the endpoints of anthropic, "
                      "openai, deepseek, gemini and minimax by name; for another name set base_url, "
                      "or kind for that API's own endpoint)", p->name);
}

/* circuit_breaker, per provider (0 = the top-level value) and at the top level (defaults). */
static const struct nx_conf_field prov_breaker_fields[] = {
    {NX_FIELD("failure_threshold", NX_CT_UINT, P, circuit_breaker.failure_threshold), .def = "0", .min = 0,
     .max = 1000000},
    {NX_FIELD("success_threshold", NX_CT_UINT, P, circuit_breaker.success_threshold), .def = "0", .min = 0,
     .max = 1000000},
    {NX_FIELD("open_secs", NX_CT_UINT, P, circuit_breaker.open_secs), .def = "0", .min = 0, .max = 86400},
    {NX_FIELD("max_open_secs", NX_CT_UINT, P, circuit_breaker.max_open_secs), .def = "0", .min = 0,
     .max = 86400},
    {.name = NULL},
};
static const struct nx_conf_struct prov_breaker = {.name = "\"circuit_breaker\"",
                                                   .fields = prov_breaker_fields};

static const struct nx_conf_field provider_fields[] = {
    {NX_FIELD("kind", NX_CT_ENUM, P, kind), .choices = provider_kinds},
    {NX_FIELD("api_key", NX_CT_STRING, P, api_key), .def = ""},
    {NX_FIELD("base_url", NX_CT_STRING, P, base_url), .check = nx_conf_check_http_url_or_empty},
    {NX_GROUP("rate_limit", &prov_rate)},
    {NX_FIELD("auth", NX_CT_ANY, P, auth)},
    {NX_FIELD("group_id", NX_CT_STRING, P, group_id)},
    {NX_FIELD("api_flavor", NX_CT_STRING, P, api_flavor), .check = check_api_flavor},
    {NX_FIELD("embedding_model", NX_CT_STRING, P, embedding_model)},
    {NX_FIELD("safety_settings", NX_CT_ANY, P, safety_settings)},
    {NX_FIELD("headers", NX_CT_STRMAP, P, headers)},
    {NX_FIELD("timeout", NX_CT_DURATION, P, timeout_ms), .def = "0", .min = 0, .max = 86400000},
    {NX_FIELD("stall_timeout", NX_CT_DURATION, P, stall_timeout_ms), .def = "0", .min = 0, .max = 86400000},
    {NX_GROUP("circuit_breaker", &prov_breaker)},
    {.name = NULL},
};

static const struct nx_conf_struct provider_desc = {
    .name = "a provider",
    .size = sizeof(P),
    .fields = provider_fields,
    .has_key = true,
    .key_offset = offsetof(P, name),
    .check = check_provider,
};

#define L struct nx_llm_conf

static const struct nx_conf_field retry_fields[] = {
    {NX_FIELD("max_attempts", NX_CT_UINT, L, retry.max_attempts), .def = "5", .min = 1, .max = 100},
    {NX_FIELD("initial_backoff_ms", NX_CT_DURATION, L, retry.initial_backoff_ms), .def = "1000", .min = 1,
     .max = 3600000},
    {NX_FIELD("max_backoff_ms", NX_CT_DURATION, L, retry.max_backoff_ms), .def = "60000", .min = 1,
     .max = 3600000},
    {NX_FIELD("backoff_multiplier", NX_CT_DOUBLE, L, retry.backoff_multiplier), .def = "2.0", .min = 1,
     .max = 10},
    {NX_FIELD("deadline", NX_CT_DURATION, L, retry.deadline_ms), .def = "5m", .min = 0, .max = 86400000},
    {.name = NULL},
};
static const struct nx_conf_struct retry_desc = {.name = "\"retry\"", .fields = retry_fields};

static const struct nx_conf_field breaker_fields[] = {
    {NX_FIELD("failure_threshold", NX_CT_UINT, L, circuit_breaker.failure_threshold), .def = "5", .min = 1,
     .max = 1000000},
    {NX_FIELD("success_threshold", NX_CT_UINT, L, circuit_breaker.success_threshold), .def = "1", .min = 1,
     .max = 1000000},
    {NX_FIELD("open_secs", NX_CT_UINT, L, circuit_breaker.open_secs), .def = "10", .min = 1, .max = 86400},
    {NX_FIELD("max_open_secs", NX_CT_UINT, L, circuit_breaker.max_open_secs), .def = "120", .min = 1,
     .max = 86400},
    {.name = NULL},
};
static const struct nx_conf_struct breaker_desc = {.name = "\"circuit_breaker\"", .fields = breaker_fields};

static const struct nx_conf_field llm_fields[] = {
    {NX_FIELD_LIST("providers", NX_CT_MAP, L, providers, n_providers), .sub = &provider_desc,
     .flags = NX_CF_REQUIRED},
    {NX_GROUP("retry", &retry_desc)},
    {NX_GROUP("circuit_breaker", &breaker_desc)},
    {NX_FIELD("context_optimization", NX_CT_ANY, L, context_optimization)},
    {NX_FIELD("tenants", NX_CT_ANY, L, tenants)},
    {.name = NULL},
};

const struct nx_conf_struct nx_conf_llm_file = {
    .name = "llm.yaml",
    .size = sizeof(L),
    .fields = llm_fields,
};

void nx_conf_check_provider(struct nx_conf_ctx *ctx, const struct nx_cnode *val, const char *name)
{
    const struct nx_conf_state *st = ctx->user;
    struct nx_buf known = NX_BUF_INIT;

    if (!st || !st->providers_known || !st->llm)
        return;
    const char **names = nx_calloc(st->llm->n_providers + 1, sizeof *names);
    for (size_t i = 0; i < st->llm->n_providers; i++) {
        if (strcmp(st->llm->providers[i].name, name) == 0)
            goto out;
        names[i] = st->llm->providers[i].name;
        nx_buf_printf(&known, "%s%s", i ? ", " : "", names[i]);
    }
    const char *hint = nx_conf_suggest(name, names, NULL);
    if (hint)
        nx_conf_error(ctx, val, "unknown provider \"%s\" (did you mean \"%s\"?)", name, hint);
    else if (known.len)
        nx_conf_error(ctx, val, "unknown provider \"%s\" (llm.yaml defines: %s)", name, nx_buf_cstr(&known));
    else
        nx_conf_error(ctx, val, "unknown provider \"%s\" (llm.yaml defines none)", name);
out:
    free(names);
    nx_buf_cleanup(&known);
}

/* ---- mcp.yaml ---- */

#define S struct nx_mcp_server_conf

static const char *const transports[] = {"stdio", "streamable_http", "sse", "auto", NULL};
static const char *const server_extra[] = {
    "enabled", "description", "initialize_timeout", "shutdown_grace", "log_level", "roots", "sampling",
    "tool_prefix", "tools_allowlist", "protocol_version", "bearer", "elicitation", "auth", NULL,
};

static void check_server(struct nx_conf_ctx *ctx, const struct nx_cnode *node, void *obj)
{
    S *s = obj;

    if (s->transport == NX_MCP_STDIO && !s->command)
        nx_conf_error(ctx, node, "MCP server \"%s\": transport stdio needs \"command\"", s->name);
    if (s->transport != NX_MCP_STDIO && !s->url)
        nx_conf_error(ctx, node, "MCP server \"%s\": transport %s needs \"url\"", s->name,
                      transports[s->transport]);
    for (size_t i = 0; i < s->headers.n; i++) {
        for (const unsigned char *p = (const unsigned char *)s->headers.vals[i]; *p; p++) {
            if (*p != '\t' && (*p < 0x20 || *p > 0x7e)) {
                const struct nx_cnode *h = nx_cnode_get(node, "headers");
                nx_conf_error(ctx, nx_cnode_get(h, s->headers.keys[i]),
                              "header \"%s\" holds a character outside tab and 0x20-0x7E",
                              s->headers.keys[i]);
                break;
            }
        }
    }
}

static const struct nx_conf_field server_fields[] = {
    {NX_FIELD("transport", NX_CT_ENUM, S, transport), .choices = transports, .flags = NX_CF_REQUIRED},
    {NX_FIELD("command", NX_CT_STRING, S, command)},
    {NX_FIELD("args", NX_CT_STRLIST, S, args)},
    {NX_FIELD("env", NX_CT_STRMAP, S, env)},
    {NX_FIELD("cwd", NX_CT_STRING, S, cwd)},
    {NX_FIELD("url", NX_CT_STRING, S, url), .check = nx_conf_check_http_url},
    {NX_FIELD("headers", NX_CT_STRMAP, S, headers)},
    {NX_FIELD("connect_timeout", NX_CT_DURATION, S, connect_timeout_ms), .def = "0", .min = 0,
     .max = 3600000},
    {NX_FIELD("call_timeout", NX_CT_DURATION, S, call_timeout_ms), .def = "0", .min = 0, .max = 86400000},
    {.name = NULL},
};

static const struct nx_conf_struct server_desc = {
    .name = "an MCP server",
    .size = sizeof(S),
    .fields = server_fields,
    .extra_keys = server_extra,
    .extra_offset = offsetof(S, extra),
    .has_key = true,
    .key_offset = offsetof(S, name),
    .check = check_server,
};

#define C struct nx_mcp_conf

static const char *const mcp_extra[] = {
    "watch", "context", "sampling", "resource_cache", "resource_uri_allowlist", "strict_root_paths",
    "reset_level_on_unset", "default_reset_level", "protocol_version", NULL,
};

static const struct nx_conf_field mcp_fields[] = {
    {NX_FIELD("enabled", NX_CT_BOOL, C, enabled), .def = "false"},
    {NX_FIELD("session_ttl", NX_CT_DURATION, C, session_ttl_ms), .def = "30m", .min = 1, .max = 86400000},
    {NX_FIELD("idle_reap_interval", NX_CT_DURATION, C, idle_reap_interval_ms), .def = "60s", .min = 1,
     .max = 86400000},
    {NX_FIELD("connect_timeout", NX_CT_DURATION, C, connect_timeout_ms), .def = "30s", .min = 1,
     .max = 3600000},
    {NX_FIELD("initialize_timeout", NX_CT_DURATION, C, initialize_timeout_ms), .def = "10s", .min = 1,
     .max = 3600000},
    {NX_FIELD("call_timeout", NX_CT_DURATION, C, call_timeout_ms), .def = "30s", .min = 1, .max = 86400000},
    {NX_FIELD("shutdown_grace", NX_CT_DURATION, C, shutdown_grace_ms), .def = "3s", .min = 0, .max = 600000},
    {NX_FIELD_LIST("servers", NX_CT_MAP, C, servers, n_servers), .sub = &server_desc},
    {.name = NULL},
};
static const struct nx_conf_struct mcp_desc = {
    .name = "\"mcp\"",
    .fields = mcp_fields,
    .extra_keys = mcp_extra,
    .extra_offset = offsetof(C, extra),
};

static const struct nx_conf_field mcp_file_fields[] = {
    {NX_GROUP("mcp", &mcp_desc)},
    {.name = NULL},
};

const struct nx_conf_struct nx_conf_mcp_file = {
    .name = "mcp.yaml",
    .size = sizeof(C),
    .fields = mcp_file_fields,
};
