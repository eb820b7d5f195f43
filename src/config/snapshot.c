/* The immutable, reference-counted snapshot and its accessors. */
#include <stdlib.h>
#include <string.h>

#include "config/internal.h"
#include "config/schema.h"
#include "config/tables.h"
#include "core/buf.h"
#include "core/alloc.h"
#include "core/redact.h"

struct nx_config *nx_config_alloc(void)
{
    struct nx_config *c = nx_calloc(1, sizeof *c);
    atomic_init(&c->refs, 1);
    return c;
}

void nx_config_destroy(struct nx_config *c)
{
    if (!c)
        return;
    nx_conf_cleanup(&nx_conf_gateway_file, &c->gateway);
    nx_conf_cleanup(&nx_conf_llm_file, &c->llm);
    nx_conf_cleanup(&nx_conf_broker_file, &c->broker);
    nx_conf_cleanup(&nx_conf_memory_file, &c->memory);
    nx_conf_cleanup(&nx_conf_mcp_file, &c->mcp);
    struct nx_agents_file af = {.agents = c->agents, .n_agents = c->n_agents};
    nx_conf_cleanup(&nx_conf_agents_file, &af);
    for (size_t i = 0; i < c->n_plugins; i++) {
        free(c->plugins[i].name);
        free(c->plugins[i].file);
        json_decref(c->plugins[i].json);
        nx_cnode_free(c->plugins[i].root);
    }
    free(c->plugins);
    nx_strv_free(c->secrets);
    for (size_t i = 0; i < c->n_sources; i++)
        free(c->sources[i].rel);
    free(c->sources);
    nx_strv_free(c->file_refs);
    free(c->dir);
    free(c);
}

struct nx_config *nx_config_ref(struct nx_config *c)
{
    if (c)
        atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
    return c;
}

void nx_config_unref(struct nx_config *c)
{
    if (c && atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) == 1)
        nx_config_destroy(c);
}

static bool has_prefix(const char *rel, const char *const *prefixes)
{
    for (; *prefixes; prefixes++)
        if (strncmp(rel, *prefixes, strlen(*prefixes)) == 0)
            return true;
    return false;
}

/* The hash of rel's text in c, or 0 when c read no such file. */
static uint64_t source_hash(const struct nx_config *c, const char *rel)
{
    for (size_t i = 0; i < c->n_sources; i++)
        if (strcmp(c->sources[i].rel, rel) == 0)
            return c->sources[i].hash | 1; /* (never 0) */
    return 0;
}

static size_t add_changed(const struct nx_config *a, const struct nx_config *b,
                          const char *const *prefixes, bool both_ways, struct nx_buf *out)
{
    size_t n = 0;

    for (size_t i = 0; i < a->n_sources; i++) {
        const char *rel = a->sources[i].rel;
        uint64_t hb = source_hash(b, rel);
        if (!has_prefix(rel, prefixes) || (!both_ways && hb) || hb == (a->sources[i].hash | 1))
            continue;
        nx_buf_printf(out, "%s%s", out->len ? ", " : "", rel);
        n++;
    }
    return n;
}

size_t nx_config_changed(const struct nx_config *a, const struct nx_config *b,
                         const char *const *prefixes, struct nx_buf *out)
{
    /* a's files that b lacks or has otherwise, then b's that a lacks */
    return add_changed(a, b, prefixes, true, out) + add_changed(b, a, prefixes, false, out);
}

const char *const *nx_config_file_refs(const struct nx_config *c)
{
    static const char *const none[] = {NULL};
    return c->file_refs ? (const char *const *)c->file_refs : none;
}

const struct nx_gateway_conf *nx_config_gateway(const struct nx_config *c)
{
    return &c->gateway;
}

const char *nx_config_dir(const struct nx_config *c)
{
    return c->dir;
}

const char *const *nx_config_secrets(const struct nx_config *c)
{
    static const char *const none[] = {NULL};
    return c->secrets ? (const char *const *)c->secrets : none;
}

int nx_config_apply_redaction(const struct nx_config *c, char *err, size_t errlen)
{
    nx_redact_set_literals(nx_config_secrets(c));
    return nx_redact_set_patterns((const char *const *)c->gateway.redact_patterns, err, errlen);
}

const struct nx_llm_conf *nx_config_llm(const struct nx_config *c)
{
    return &c->llm;
}

const struct nx_provider_conf *nx_config_provider(const struct nx_config *c, const char *name)
{
    for (size_t i = 0; i < c->llm.n_providers; i++)
        if (strcmp(c->llm.providers[i].name, name) == 0)
            return &c->llm.providers[i];
    return NULL;
}

const struct nx_broker_conf *nx_config_broker(const struct nx_config *c)
{
    return &c->broker;
}

const struct nx_memory_conf *nx_config_memory(const struct nx_config *c)
{
    return &c->memory;
}

const struct nx_mcp_conf *nx_config_mcp(const struct nx_config *c)
{
    return &c->mcp;
}

size_t nx_config_agents(const struct nx_config *c, const struct nx_agent_conf **out)
{
    *out = c->agents;
    return c->n_agents;
}

const struct nx_agent_conf *nx_config_agent(const struct nx_config *c, const char *id)
{
    for (size_t i = 0; i < c->n_agents; i++)
        if (c->agents[i].id && strcmp(c->agents[i].id, id) == 0)
            return &c->agents[i];
    return NULL;
}

size_t nx_config_plugins(const struct nx_config *c, const struct nx_plugin_conf **out)
{
    *out = c->plugins;
    return c->n_plugins;
}

const struct nx_plugin_conf *nx_config_plugin(const struct nx_config *c, const char *name)
{
    for (size_t i = 0; i < c->n_plugins; i++)
        if (strcmp(c->plugins[i].name, name) == 0)
            return &c->plugins[i];
    return NULL;
}
