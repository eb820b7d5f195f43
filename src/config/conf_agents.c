/* Field tables: agents.yaml (and agents.d/\*.yaml), with nexo-rs key names. */
#include <stdlib.h>
#include <string.h>

#include "config/tables.h"
#include "core/alloc.h"
#include "core/error.h"

/* ---- map of string lists (outbound_allowlist) ---- */

static void strlistmap_cleanup(void *dst)
{
    struct nx_strlistmap *m = dst;
    for (size_t i = 0; i < m->n; i++) {
        free(m->keys[i]);
        nx_strv_free(m->lists[i]);
    }
    free(m->keys);
    free(m->lists);
    m->keys = NULL;
    m->lists = NULL;
    m->n = 0;
}

static int strlistmap_parse(struct nx_conf_ctx *ctx, const char *name, const struct nx_cnode *v, void *dst)
{
    struct nx_strlistmap *m = dst;
    char buf[96];
    int rc = 0;

    if (v->kind != NX_CNODE_MAP) {
        nx_conf_error(ctx, v, "expected a mapping of lists for \"%s\", got %s", name,
                      nx_cnode_describe(v, buf, sizeof buf));
        return NX_ECONFIG;
    }
    strlistmap_cleanup(m);
    m->keys = nx_calloc(v->n / 2 + 1, sizeof *m->keys);
    m->lists = nx_calloc(v->n / 2 + 1, sizeof *m->lists);
    for (size_t i = 0; i + 1 < v->n; i += 2) {
        const struct nx_cnode *key = v->kids[i], *list = v->kids[i + 1];
        if (list->kind != NX_CNODE_SEQ && !nx_cnode_is_null(list)) {
            nx_conf_error(ctx, list, "expected a list for \"%s\" in \"%s\", got %s", key->text, name,
                          nx_cnode_describe(list, buf, sizeof buf));
            rc = NX_ECONFIG;
            continue;
        }
        char **items = nx_calloc(list->n + 1, sizeof *items);
        size_t k = 0;
        for (size_t j = 0; list->kind == NX_CNODE_SEQ && j < list->n; j++) {
            const struct nx_cnode *it = list->kids[j];
            if (it->kind != NX_CNODE_SCALAR || nx_cnode_is_null(it)) {
                nx_conf_error(ctx, it, "expected a string or number in \"%s\", got %s", key->text,
                              nx_cnode_describe(it, buf, sizeof buf));
                rc = NX_ECONFIG;
                continue;
            }
            if (!it->is_bad)
                items[k++] = nx_strdup(it->text);
        }
        m->keys[m->n] = nx_strdup(key->text);
        m->lists[m->n] = items;
        m->n++;
    }
    return rc;
}

const struct nx_conf_custom nx_conf_strlistmap_type = {
    .what = "a mapping of lists",
    .parse = strlistmap_parse,
    .cleanup = strlistmap_cleanup,
};

/* ---- checks ---- */

#define A struct nx_agent_conf

static void check_agent_id(struct nx_conf_ctx *ctx, const struct nx_cnode *val, void *dst)
{
    A *a = nx_container_of(dst, A, id);
    const char *id = a->id;
    size_t n = strlen(id);
    bool ok = n > 0 && n <= 64;
    char buf[96];

    for (size_t i = 0; ok && i < n; i++) {
        char c = id[i];
        ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
             c == '-';
    }
    if (!ok) {
        nx_conf_error(ctx, val, "invalid agent id %s (use 1-64 letters, digits, \"_\" or \"-\")",
                      nx_cnode_describe(val, buf, sizeof buf));
        return;
    }
    free(a->origin_file);
    a->origin_file = nx_strdup(ctx->file ? ctx->file : "");
    a->origin_line = val->line;
    a->origin_col = val->col;
}

static void check_provider_ref(struct nx_conf_ctx *ctx, const struct nx_cnode *val, void *dst)
{
    nx_conf_check_provider(ctx, val, *(char **)dst);
}

static void check_skill_overrides(struct nx_conf_ctx *ctx, const struct nx_cnode *val, void *dst)
{
    const struct nx_strmap *m = dst;
    char buf[96];

    for (size_t i = 0; i < m->n; i++) {
        const char *v = m->vals[i];
        if (strcmp(v, "strict") && strcmp(v, "warn") && strcmp(v, "disable")) {
            const struct nx_cnode *n = nx_cnode_get(val, m->keys[i]);
            nx_conf_error(ctx, n,
                          "invalid value %s for skill \"%s\" (expected one of: strict, warn, disable)",
                          nx_cnode_describe(n, buf, sizeof buf), m->keys[i]);
        }
    }
}

static void agent_cleanup(void *obj)
{
    A *a = obj;
    free(a->origin_file);
    a->origin_file = NULL;
}

/* ---- tables ---- */

#define R struct nx_model_ref

static const char *const queue_modes[] = {"followup", "collect", "interrupt", NULL};

/* Below this a prompt hardly holds a system prompt and one message: a typo, most likely. */
#define MIN_CONTEXT_WINDOW 1024

static void check_context_window(struct nx_conf_ctx *ctx, const struct nx_cnode *val, void *dst)
{
    uint32_t v = *(uint32_t *)dst;
    if (v && v < MIN_CONTEXT_WINDOW)
        nx_conf_error(ctx, val, "context_window %u is too small: give the model's context in tokens "
                                "(at least %d), or leave it out to go by the model's name",
                      (unsigned)v, MIN_CONTEXT_WINDOW);
}

static const struct nx_conf_field ref_fields[] = {
    {NX_FIELD("provider", NX_CT_STRING, R, provider), .check = check_provider_ref, .flags = NX_CF_REQUIRED},
    {NX_FIELD("model", NX_CT_STRING, R, model), .flags = NX_CF_REQUIRED},
    {NX_FIELD("context_window", NX_CT_UINT, R, context_window), .def = "0", .max = 100000000,
     .check = check_context_window},
    {.name = NULL},
};
static const struct nx_conf_struct ref_desc = {
    .name = "a fallback model",
    .size = sizeof(R),
    .fields = ref_fields,
};

static const struct nx_conf_field model_fields[] = {
    {NX_FIELD("provider", NX_CT_STRING, A, model.provider), .check = check_provider_ref,
     .flags = NX_CF_REQUIRED},
    {NX_FIELD("model", NX_CT_STRING, A, model.model), .flags = NX_CF_REQUIRED},
    {NX_FIELD("context_window", NX_CT_UINT, A, model.context_window), .def = "0", .max = 100000000,
     .check = check_context_window},
    {NX_FIELD_LIST("fallbacks", NX_CT_LIST, A, model.fallbacks, model.n_fallbacks), .sub = &ref_desc},
    {.name = NULL},
};
static const struct nx_conf_struct model_desc = {.name = "\"model\"", .fields = model_fields};

static const struct nx_conf_field rate_fields[] = {
    {NX_FIELD("rps", NX_CT_DOUBLE, struct nx_rate_conf, rps), .min = 0, .max = 1000000,
     .flags = NX_CF_REQUIRED},
    {NX_FIELD("burst", NX_CT_UINT, struct nx_rate_conf, burst), .def = "5", .min = 1, .max = 1000000},
    {.name = NULL},
};
static const struct nx_conf_struct rate_desc = {
    .name = "\"sender_rate_limit\"",
    .size = sizeof(struct nx_rate_conf),
    .fields = rate_fields,
};

/* Per-binding overrides (nexo-rs InboundBinding): kept as JSON for the agent module. */
static const char *const binding_overrides[] = {
    "allowed_tools", "outbound_allowlist", "skills", "model", "system_prompt_extra", "sender_rate_limit",
    "allowed_delegates", "language", "dispatch_policy", "plan_mode", "role", "proactive", "repl",
    "auto_approve", "allowed_channel_servers", "remote_triggers", "lsp", "team", "config_tool",
    "tool_rate_limits", NULL,
};

#define BD struct nx_binding_conf

static const struct nx_conf_field binding_fields[] = {
    {NX_FIELD("plugin", NX_CT_STRING, BD, plugin), .flags = NX_CF_REQUIRED},
    {NX_FIELD("instance", NX_CT_STRING, BD, instance)},
    {.name = NULL},
};
/* The overrides the channels act on: sender_rate_limit (inherit | disable | {rps, burst}) and
 * outbound_allowlist ({channel: [ids]}). */
static void check_binding(struct nx_conf_ctx *ctx, const struct nx_cnode *node, void *obj)
{
    const BD *b = obj;
    const json_t *rl = json_object_get(b->overrides, "sender_rate_limit");
    const char *word = json_string_value(rl);
    if (rl && !json_is_null(rl) && !(word && (!strcmp(word, "inherit") || !strcmp(word, "disable")))) {
        const json_t *rps = json_object_get(rl, "rps"), *burst = json_object_get(rl, "burst");
        size_t nkeys = json_is_object(rl) ? json_object_size(rl) : 0;
        if (!json_is_object(rl) || !json_is_number(rps) || !(json_number_value(rps) > 0) ||
            (burst && (!json_is_integer(burst) || json_integer_value(burst) < 1 ||
                       json_integer_value(burst) > 1000000)) ||
            nkeys != 1u + (burst != NULL))
            nx_conf_error(ctx, nx_cnode_get(node, "sender_rate_limit"),
                          "sender_rate_limit must be inherit, disable or {rps: <number > 0>, burst: "
                          "<integer >= 1>}");
    }
    const json_t *al = json_object_get(b->overrides, "outbound_allowlist");
    if (al && !json_is_null(al)) {
        bool ok = json_is_object(al);
        const char *k;
        const json_t *v;
        json_object_foreach((json_t *)al, k, v) {
            size_t i;
            const json_t *e;
            ok = ok && json_is_array(v);
            json_array_foreach(v, i, e)
                ok = ok && (json_is_string(e) || json_is_integer(e));
        }
        if (!ok)
            nx_conf_error(ctx, nx_cnode_get(node, "outbound_allowlist"),
                          "outbound_allowlist must map channels to lists of recipient ids");
    }
}

static const struct nx_conf_struct binding_desc = {
    .name = "an inbound binding",
    .size = sizeof(BD),
    .fields = binding_fields,
    .extra_keys = binding_overrides,
    .extra_offset = offsetof(BD, overrides),
    .check = check_binding,
};

static const struct nx_conf_field agent_config_fields[] = {
    {NX_FIELD("debounce_ms", NX_CT_DURATION, A, config.debounce_ms), .def = "2000", .min = 0, .max = 600000},
    {NX_FIELD("queue_cap", NX_CT_UINT, A, config.queue_cap), .def = "32", .min = 1, .max = 100000},
    {NX_FIELD("queue_mode", NX_CT_ENUM, A, config.queue_mode), .choices = queue_modes, .def = "followup"},
    {.name = NULL},
};
static const struct nx_conf_struct agent_config_desc = {.name = "\"config\"", .fields = agent_config_fields};

static const struct nx_conf_field agent_limits_fields[] = {
    {NX_FIELD("max_tool_iterations", NX_CT_UINT, A, limits.max_tool_iterations), .def = "16", .min = 1,
     .max = 1000},
    {NX_FIELD("max_tokens", NX_CT_UINT, A, limits.max_tokens), .def = "4096", .min = 1, .max = 10000000},
    {NX_FIELD("daily_token_budget", NX_CT_UINT, A, limits.daily_token_budget), .def = "0"},
    {.name = NULL},
};
static const struct nx_conf_struct agent_limits_desc = {.name = "\"limits\"", .fields = agent_limits_fields};

static const struct nx_conf_field heartbeat_fields[] = {
    {NX_FIELD("enabled", NX_CT_BOOL, A, heartbeat.enabled), .def = "false"},
    {NX_FIELD("interval", NX_CT_DURATION, A, heartbeat.interval_ms), .def = "5m", .min = 1000,
     .max = 30LL * 86400000},
    {.name = NULL},
};
static const struct nx_conf_struct heartbeat_desc = {.name = "\"heartbeat\"", .fields = heartbeat_fields};

/* Per-agent circuit breaker of the router (docs/bus.md). */
static const struct nx_conf_field agent_breaker_fields[] = {
    {NX_FIELD("failure_threshold", NX_CT_UINT, A, circuit_breaker.failure_threshold), .def = "5", .min = 1,
     .max = 1000},
    {NX_FIELD("open_secs", NX_CT_UINT, A, circuit_breaker.open_secs), .def = "30", .min = 1, .max = 86400},
    {.name = NULL},
};
static const struct nx_conf_struct agent_breaker_desc = {.name = "\"circuit_breaker\"",
                                                         .fields = agent_breaker_fields};

/* The rest of nexo-rs's AgentConfig: accepted and kept as JSON in `extra`. */
static const char *const agent_extra[] = {
    "dreaming", "workspace_git", "google_auth", "tool_args_validation", "context_optimization",
    "dispatch_policy", "plan_mode", "remote_triggers", "lsp", "config_tool", "team", "proactive", "repl",
    "auto_dream", "assistant_mode", "away_summary", "channels", "brief", "auto_approve", "extract_memories",
    "event_subscribers", "extensions_config", "link_understanding", "web_search", "pairing_policy", NULL,
};

static const struct nx_conf_field agent_fields[] = {
    {NX_FIELD("id", NX_CT_STRING, A, id), .check = check_agent_id, .flags = NX_CF_REQUIRED},
    {NX_FIELD("description", NX_CT_STRING, A, description)},
    {NX_GROUP("model", &model_desc), .flags = NX_CF_REQUIRED},
    {NX_FIELD("system_prompt", NX_CT_STRING, A, system_prompt)},
    {NX_FIELD("workspace", NX_CT_STRING, A, workspace)},
    {NX_FIELD("tenant_id", NX_CT_STRING, A, tenant_id)},
    {NX_FIELD("language", NX_CT_STRING, A, language)},
    {NX_FIELD("skills_dir", NX_CT_STRING, A, skills_dir), .def = "./skills"},
    {NX_FIELD("transcripts_dir", NX_CT_STRING, A, transcripts_dir)},
    {NX_FIELD("allowed_tools", NX_CT_STRLIST, A, allowed_tools)},
    {NX_FIELD("plugins", NX_CT_STRLIST, A, plugins)},
    {NX_FIELD("skills", NX_CT_STRLIST, A, skills)},
    {NX_FIELD("extra_docs", NX_CT_STRLIST, A, extra_docs)},
    {NX_FIELD("allowed_delegates", NX_CT_STRLIST, A, allowed_delegates)},
    {NX_FIELD("accept_delegates_from", NX_CT_STRLIST, A, accept_delegates_from)},
    {NX_FIELD("skill_overrides", NX_CT_STRMAP, A, skill_overrides), .check = check_skill_overrides},
    {NX_FIELD("credentials", NX_CT_STRMAP, A, credentials)},
    {NX_FIELD("outbound_allowlist", NX_CT_CUSTOM, A, outbound_allowlist), .custom = &nx_conf_strlistmap_type},
    {NX_FIELD("sender_rate_limit", NX_CT_STRUCT_PTR, A, sender_rate_limit), .sub = &rate_desc},
    {NX_FIELD_LIST("inbound_bindings", NX_CT_LIST, A, inbound_bindings, n_inbound_bindings),
     .sub = &binding_desc},
    {NX_GROUP("config", &agent_config_desc)},
    {NX_GROUP("limits", &agent_limits_desc)},
    {NX_GROUP("heartbeat", &heartbeat_desc)},
    {NX_GROUP("circuit_breaker", &agent_breaker_desc)},
    {NX_FIELD("tool_rate_limits", NX_CT_ANY, A, tool_rate_limits)},
    {.name = NULL},
};

const struct nx_conf_struct nx_conf_agent = {
    .name = "an agent",
    .size = sizeof(A),
    .fields = agent_fields,
    .extra_keys = agent_extra,
    .extra_offset = offsetof(A, extra),
    .cleanup = agent_cleanup,
};

static const struct nx_conf_field agents_file_fields[] = {
    {NX_FIELD_LIST("agents", NX_CT_LIST, struct nx_agents_file, agents, n_agents), .sub = &nx_conf_agent},
    {.name = NULL},
};

const struct nx_conf_struct nx_conf_agents_file = {
    .name = "agents.yaml",
    .size = sizeof(struct nx_agents_file),
    .fields = agents_file_fields,
};
