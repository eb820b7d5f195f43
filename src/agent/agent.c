/* The agent registry: one generation per configuration snapshot, with its providers. */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent/agent_internal.h"
#include "channels/media.h"
#include "core/alloc.h"
#include "core/buf.h"
#include "core/error.h"
#include "core/log.h"
#include "store/history.h"

static const char *kind_name(int kind)
{
    return kind == NX_PROVIDER_OPENAI ? "openai" : "anthropic";
}

static struct nx_llm_provider *gen_provider(const struct generation *g, const char *name)
{
    for (size_t i = 0; i < g->nproviders; i++) {
        if (strcmp(nx_llm_provider_name(g->providers[i]), name) == 0)
            return g->providers[i];
    }
    return NULL;
}

/* llm.yaml circuit_breaker: the provider's own values, else the top-level ones. */
static void breaker_conf(const struct nx_llm_conf *llm, const struct nx_provider_conf *pc,
                         struct nx_breaker_conf *out)
{
    const struct nx_breaker_cfg *d = &llm->circuit_breaker, *p = &pc->circuit_breaker;
    uint64_t open_ms = 1000ULL * (p->open_secs ? p->open_secs : d->open_secs);
    uint64_t max_ms = 1000ULL * (p->max_open_secs ? p->max_open_secs : d->max_open_secs);

    out->failure_threshold = p->failure_threshold ? p->failure_threshold : d->failure_threshold;
    out->success_threshold = p->success_threshold ? p->success_threshold : d->success_threshold;
    out->initial_backoff_ms = (uint32_t)open_ms;
    out->max_backoff_ms = (uint32_t)(max_ms < open_ms ? open_ms : max_ms);
}

static int make_providers(struct nx_agents *a, struct generation *g)
{
    const struct nx_llm_conf *llm = nx_config_llm(g->cfg);
    g->providers = nx_calloc(llm->n_providers + 1, sizeof *g->providers);
    for (size_t i = 0; i < llm->n_providers; i++) {
        const struct nx_provider_conf *pc = &llm->providers[i];
        struct nx_http_header *hdrs = nx_calloc(pc->headers.n + 1, sizeof *hdrs);
        for (size_t k = 0; k < pc->headers.n; k++) {
            hdrs[k].name = pc->headers.keys[k];
            hdrs[k].value = pc->headers.vals[k];
        }
        struct nx_breaker_conf bc;
        breaker_conf(llm, pc, &bc);
        const char *mode = json_string_value(json_object_get(pc->auth, "mode"));
        if ((!pc->api_key || !*pc->api_key) && mode && strcmp(mode, "api_key") != 0 &&
            strcmp(mode, "static") != 0) /* nexo-rs's OAuth bundles and setup tokens */
            nx_warn("agent", "provider \"%s\": auth mode \"%s\" is not supported; set api_key",
                    pc->name, mode);
        struct nx_llm_provider_conf c = {
            .name = pc->name,
            .kind = kind_name(pc->kind),
            .api_key = pc->api_key ? pc->api_key : "",
            .base_url = pc->base_url ? pc->base_url : "",
            .headers = hdrs,
            .nheaders = pc->headers.n,
            .timeout_ms = pc->timeout_ms,
            .stall_timeout_ms = pc->stall_timeout_ms,
            .breaker = &bc,
        };
        struct nx_llm_provider *p = NULL;
        int rc = nx_llm_provider_new(a->deps.http, &c, &p);
        free(hdrs);
        if (rc < 0) {
            nx_error("agent", "provider \"%s\": %s", pc->name, nx_strerror(rc));
            continue;
        }
        g->providers[g->nproviders++] = p;
    }
    return 0;
}

/* Relative workspaces are resolved against the configuration directory (as in nexo-rs); a
 * missing one is made when is_made (and said so), else NULL. */
static char *resolve_workspace(const struct nx_config *cfg, const char *ws, bool is_made)
{
    if (!ws || !*ws)
        return NULL;
    char path[PATH_MAX];
    const char *dir = nx_config_dir(cfg);
    if (ws[0] == '/' || !dir)
        snprintf(path, sizeof path, "%s", ws);
    else
        snprintf(path, sizeof path, "%s/%s", dir, ws);
    char *real = realpath(path, NULL);
    int err = errno;
    if (!is_made)
        return real;
    if (!real && err == ENOENT && nx_media_mkdirs(path) == 0) { /* a new agent's: made, 0700 */
        real = realpath(path, NULL);
        err = errno;
        nx_info("agent", "workspace %s created", path);
    }
    if (!real)
        nx_warn("agent", "workspace %s cannot be used (%s): file tools are disabled", path,
                strerror(err));
    return real;
}

/* A provider with no key that can only be the public API is unusable: better a clear message
 * than a 401 from upstream. (Local OpenAI-compatible servers such as Ollama need no key.) */
static struct nx_llm_provider *usable_provider(const struct generation *g, const char *name)
{
    const struct nx_provider_conf *pc = nx_config_provider(g->cfg, name);
    if (!pc)
        return NULL;
    if ((!pc->api_key || !*pc->api_key) &&
        (pc->kind == NX_PROVIDER_ANTHROPIC || !pc->base_url || !*pc->base_url || pc->is_known_base))
        return NULL;
    return gen_provider(g, name);
}

/* Why an agent configured in llm.yaml has no provider it can use (the embedded default's own
 * message says which environment variables to set). */
static char *no_target_why(const struct generation *g, const struct nx_agent_conf *ac)
{
    const struct nx_provider_conf *pc = nx_config_provider(g->cfg, ac->model.provider);
    struct nx_buf b = NX_BUF_INIT;

    if (!nx_config_dir(g->cfg))
        return NULL;
    nx_buf_printf(&b, "%s/llm.yaml", nx_config_dir(g->cfg));
    bool has_llm_yaml = access(nx_buf_cstr(&b), F_OK) == 0;
    nx_buf_reset(&b);
    if (!has_llm_yaml) { /* the built-in providers, on the environment: the default's message */
        nx_buf_cleanup(&b);
        return NULL;
    }
    nx_buf_printf(&b, "no usable LLM provider for agent \"%s\": ", ac->id);
    if (!pc)
        nx_buf_printf(&b, "provider \"%s\" is not in llm.yaml", ac->model.provider);
    else if (!pc->api_key || !*pc->api_key)
        nx_buf_printf(&b, "provider \"%s\" has no api_key: set it in llm.yaml (e.g. api_key: "
                          "\"${%s}\") and the variable it names", pc->name,
                      pc->kind == NX_PROVIDER_ANTHROPIC ? "ANTHROPIC_API_KEY" : "OPENAI_API_KEY");
    else
        nx_buf_printf(&b, "provider \"%s\" could not be set up (see the log)", pc->name);
    if (ac->model.n_fallbacks)
        nx_buf_puts(&b, ", nor any of its fallbacks");
    return nx_buf_steal(&b);
}

/* What a model takes, in tokens: as configured, else as known by its name, else a guess that
 * suits today's hosted models (said once per load, so that a smaller local model gets set). */
#define UNKNOWN_CONTEXT_WINDOW 128000

static uint32_t context_window(const char *agent, const char *model, uint32_t configured)
{
    if (configured)
        return configured;
    uint32_t w = nx_llm_context_window(model);
    if (w)
        return w;
    nx_info("agent", "agent %s: the context window of model \"%s\" is not known: taking %d tokens "
                     "(set model.context_window if it is smaller)", agent, model, UNKNOWN_CONTEXT_WINDOW);
    return UNKNOWN_CONTEXT_WINDOW;
}

/* Whether ws holds dir (the real path of it, or where it will be, written to real). */
static bool holds(const char *ws, const char *dir, char *real)
{
    size_t wlen = strlen(ws);
    /* (the data directory may not be made yet on a first run: where it will be) */
    return dir && nx_sandbox_real_or_future(dir, real, PATH_MAX) && strncmp(real, ws, wlen) == 0 &&
           (real[wlen] == '\0' || real[wlen] == '/' || wlen == 1);
}

/* The agents' workspaces, each resolved once and sorted, so that whether a workspace holds
 * another is a binary search: comparing each with every other, resolving both each time, took
 * 36 s to start 2,000 agents. */
struct ws_entry {
    char *path;   /* real path */
    size_t agent; /* index in the configuration's agents */
};

struct nx_workspaces {
    struct ws_entry *v;
    size_t n;
};

static int by_path(const void *a, const void *b)
{
    const struct ws_entry *x = a, *y = b;
    int c = strcmp(x->path, y->path);
    return c ? c : (x->agent > y->agent) - (x->agent < y->agent);
}

/* Takes v (n entries with their paths). */
static struct nx_workspaces *workspaces_of(struct ws_entry *v, size_t n)
{
    struct nx_workspaces *w = nx_calloc(1, sizeof *w);
    qsort(v, n, sizeof *v, by_path);
    w->v = v;
    w->n = n;
    return w;
}

struct nx_workspaces *nx_workspaces_new(const struct nx_config *cfg)
{
    const struct nx_agent_conf *acs = NULL;
    size_t n = nx_config_agents(cfg, &acs), k = 0;
    struct ws_entry *v = nx_calloc(n + 1, sizeof *v);

    for (size_t i = 0; i < n; i++) {
        char *real = resolve_workspace(cfg, acs[i].workspace, false);
        if (real)
            v[k++] = (struct ws_entry){real, i};
    }
    return workspaces_of(v, k);
}

void nx_workspaces_free(struct nx_workspaces *w)
{
    if (!w)
        return;
    for (size_t i = 0; i < w->n; i++)
        free(w->v[i].path);
    free(w->v);
    free(w);
}

/* A workspace in w that ws (a real path) holds and is not ws itself, or NULL. Everything under
 * ws sorts together, from ws + "/" on ("ws-b" and "ws.d" sort before that, "ws" itself too). */
static const struct ws_entry *held_by(const struct nx_workspaces *w, const char *ws)
{
    char under[PATH_MAX + 1];
    bool is_root = strcmp(ws, "/") == 0;
    int len = snprintf(under, sizeof under, "%s%s", ws, is_root ? "" : "/");
    size_t lo = 0, hi = w ? w->n : 0;

    if (!w || len < 0 || (size_t)len >= sizeof under)
        return NULL;
    while (lo < hi) { /* the first path not before under */
        size_t mid = lo + (hi - lo) / 2;
        if (strcmp(w->v[mid].path, under) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    while (lo < w->n && strcmp(w->v[lo].path, ws) == 0) /* (only when ws is "/") */
        lo++;
    return lo < w->n && strncmp(w->v[lo].path, under, (size_t)len) == 0 ? &w->v[lo] : NULL;
}

/* Why ws is off limits to its agent's file tools (docs/tools.md), written to why (when not NULL)
 * as what follows "workspace <ws> holds" in the log; false when it is not. Each of these would
 * be the agent's to read or rewrite: the configuration directory (API keys, agents.yaml for the
 * next reload) or the data directory (every agent's history and media); a file the
 * configuration reads through ${file:} for a secret; another agent's workspace (its identity
 * files and memory: agents are isolated; the same directory for two is a choice, and its
 * identity files are protected for both). */
static bool off_limits(const struct nx_config *cfg, const struct nx_workspaces *w, const char *ws,
                       const char *data_dir, struct nx_buf *why)
{
    const struct nx_agent_conf *acs = NULL;
    nx_config_agents(cfg, &acs);
    const char *dirs[] = {nx_config_dir(cfg), data_dir}, *const names[] = {"configuration", "data"};
    char real[PATH_MAX];

    for (size_t i = 0; i < NX_ARRAY_LEN(dirs); i++) {
        if (holds(ws, dirs[i], real)) {
            if (why)
                nx_buf_printf(why, "%s (the %s directory): its file tools are off, or they could read "
                                   "API keys and rewrite the configuration; give the agent a directory "
                                   "of its own", real, names[i]);
            return true;
        }
    }
    for (const char *const *f = nx_config_file_refs(cfg); *f; f++) {
        if (holds(ws, *f, real)) {
            if (why)
                nx_buf_printf(why, "%s, which the configuration reads through ${file:}: its file tools "
                                   "are off, or they could read it; keep such files out of every "
                                   "workspace", real);
            return true;
        }
    }
    const struct ws_entry *e = held_by(w, ws);
    if (e && why)
        nx_buf_printf(why, "agent %s's (%s): its file tools are off, or they could rewrite that "
                           "agent's identity files and read its memory; give each agent a "
                           "directory of its own", acs[e->agent].id, e->path);
    return e != NULL;
}

bool nx_workspace_off_limits(const struct nx_config *cfg, const struct nx_workspaces *w, const char *ws,
                             const char *data_dir)
{
    return off_limits(cfg, w, ws, data_dir, NULL);
}

/* After every agent's workspace is made (one may hold a later one's): those off limits lose
 * their file tools' workspace (the file tools then refuse), and the log says why; their
 * identity files still load. Each still counts as a workspace others must not hold. */
static void close_off_limits(struct generation *g, const char *data_dir)
{
    struct ws_entry *v = nx_calloc(g->nagents + 1, sizeof *v);
    size_t k = 0;
    for (size_t i = 0; i < g->nagents; i++)
        if (g->agents[i].workspace)
            v[k++] = (struct ws_entry){nx_strdup(g->agents[i].workspace), i};
    struct nx_workspaces *w = workspaces_of(v, k);

    for (size_t i = 0; i < g->nagents; i++) {
        struct agent_rt *rt = &g->agents[i];
        struct nx_buf why = NX_BUF_INIT;
        if (rt->workspace && off_limits(g->cfg, w, rt->workspace, data_dir, &why)) {
            nx_error("agent", "agent %s: workspace %s holds %s", rt->conf->id, rt->workspace, why.data);
            free(rt->workspace);
            rt->workspace = NULL;
        }
        nx_buf_cleanup(&why);
    }
    nx_workspaces_free(w);
}

static void build_agent(struct generation *g, struct agent_rt *rt, const struct nx_agent_conf *ac)
{
    rt->conf = ac;
    rt->targets = nx_calloc(ac->model.n_fallbacks + 1, sizeof *rt->targets);
    /* The request must fit whichever target answers: the smallest window of those usable. */
    rt->context_window = UINT32_MAX;
    struct nx_llm_provider *p = usable_provider(g, ac->model.provider);
    if (p) {
        rt->targets[rt->ntargets].provider = p;
        rt->targets[rt->ntargets++].model = ac->model.model;
        rt->context_window = context_window(ac->id, ac->model.model, ac->model.context_window);
    }
    for (size_t i = 0; i < ac->model.n_fallbacks; i++) {
        const struct nx_model_ref *f = &ac->model.fallbacks[i];
        if (!(p = usable_provider(g, f->provider)))
            continue;
        rt->targets[rt->ntargets].provider = p;
        rt->targets[rt->ntargets++].model = f->model;
        uint32_t w = context_window(ac->id, f->model, f->context_window);
        if (w < rt->context_window)
            rt->context_window = w;
    }
    if (!rt->ntargets) {
        rt->no_target_why = no_target_why(g, ac);
        rt->context_window = UNKNOWN_CONTEXT_WINDOW; /* (no call is made) */
    } else if (ac->limits.max_tokens >= rt->context_window / 10 * 9) {
        nx_warn("agent", "agent %s: limits.max_tokens %u leaves no room for the conversation in a "
                         "context window of %u tokens: lower it (or set model.context_window)",
                ac->id, (unsigned)ac->limits.max_tokens, (unsigned)rt->context_window);
    }
    rt->allowed_tools = (const char *const *)ac->allowed_tools;
    rt->http_allowlist = (const char *const *)nx_strlistmap_get(&ac->outbound_allowlist, "http");
    rt->workspace = resolve_workspace(g->cfg, ac->workspace, true);
    rt->ws = rt->workspace ? ws_cache_new(rt->workspace) : NULL;
    rt->tools_memo = nx_calloc(1, sizeof *rt->tools_memo);
    rt->system_prompt = nx_strdup(ac->system_prompt ? ac->system_prompt : "");
}

static size_t id_hash(const char *s)
{
    uint64_t h = 1469598103934665603u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211u;
    return (size_t)h;
}

static struct generation *gen_new(struct nx_agents *a, struct nx_config *cfg)
{
    struct generation *g = nx_calloc(1, sizeof *g);
    g->refs = 1;
    g->cfg = nx_config_ref(cfg);
    make_providers(a, g);
    const struct nx_agent_conf *acs = NULL;
    g->nagents = nx_config_agents(cfg, &acs);
    g->agents = nx_calloc(g->nagents + 1, sizeof *g->agents);
    for (size_t i = 0; i < g->nagents; i++)
        build_agent(g, &g->agents[i], &acs[i]);
    /* every request looks its agent up: by hash, not by scanning thousands of ids */
    for (g->nby_id = 16; g->nby_id < g->nagents * 2; g->nby_id *= 2)
        ;
    g->by_id = nx_calloc(g->nby_id, sizeof *g->by_id);
    for (size_t i = 0; i < g->nagents; i++) {
        size_t k = id_hash(g->agents[i].conf->id) & (g->nby_id - 1);
        while (g->by_id[k])
            k = (k + 1) & (g->nby_id - 1);
        g->by_id[k] = (uint32_t)i + 1;
    }
    close_off_limits(g, a->data_dir);
    return g;
}

struct generation *gen_ref(struct generation *g)
{
    g->refs++;
    return g;
}

void gen_unref(struct generation *g)
{
    if (!g || --g->refs > 0)
        return;
    for (size_t i = 0; i < g->nagents; i++) {
        free(g->agents[i].targets);
        free(g->agents[i].workspace);
        ws_cache_free(g->agents[i].ws);
        if (g->agents[i].tools_memo)
            json_decref(g->agents[i].tools_memo->tools);
        free(g->agents[i].tools_memo);
        free(g->agents[i].system_prompt);
        free(g->agents[i].no_target_why);
    }
    free(g->agents);
    free(g->by_id);
    for (size_t i = 0; i < g->nproviders; i++)
        nx_llm_provider_free(g->providers[i]);
    free(g->providers);
    nx_config_unref(g->cfg);
    free(g);
}

const struct agent_rt *gen_agent(const struct generation *g, const char *id)
{
    if (!id || !g->nby_id)
        return NULL;
    for (size_t k = id_hash(id) & (g->nby_id - 1); g->by_id[k]; k = (k + 1) & (g->nby_id - 1)) {
        const struct agent_rt *rt = &g->agents[g->by_id[k] - 1];
        if (strcmp(rt->conf->id, id) == 0)
            return rt;
    }
    return NULL;
}

int nx_agents_http_client_new(uv_loop_t *loop, const struct nx_config *cfg,
                              struct nx_http_client **out)
{
    const struct nx_http_client_conf *hc = &nx_config_gateway(cfg)->http_client;
    struct nx_http_client_opts copts = {
        .proxy = hc->proxy,
        .connect_timeout_ms = hc->connect_timeout_ms,
        .timeout_ms = hc->timeout_ms,
        .max_response_bytes = hc->max_response_bytes,
        .max_host_connections = hc->max_host_connections,
        .is_curl_only = hc->engine == NX_HTTP_ENGINE_CURL,
    };
    return nx_http_client_new(loop, &copts, out);
}

int nx_agents_new(const struct nx_agent_deps *deps, struct nx_config *cfg, struct nx_agents **out)
{
    struct nx_agents *a = nx_calloc(1, sizeof *a);
    a->deps = *deps;
    a->data_dir = nx_strdup(deps->data_dir ? deps->data_dir : "./data");
    a->deps.data_dir = a->data_dir;
    a->gen = gen_new(a, cfg);
    const struct nx_memory_conf *mem = nx_config_memory(cfg);
    a->history = hcache_new(mem ? mem->short_term.max_sessions : 0);
    budgets_prepare(a);
    *out = a;
    return 0;
}

int nx_agents_reload(struct nx_agents *a, struct nx_config *cfg)
{
    struct generation *old = a->gen;
    a->gen = gen_new(a, cfg);
    for (size_t i = 0; old && i < a->gen->nproviders; i++) /* (what each server refused) */
        for (size_t j = 0; j < old->nproviders; j++)
            nx_llm_provider_inherit(a->gen->providers[i], old->providers[j]);
    gen_unref(old);
    budgets_prepare(a);
    return 0;
}

bool nx_agents_has(const struct nx_agents *a, const char *id)
{
    return gen_agent(a->gen, id) != NULL;
}

json_t *nx_agents_list(const struct nx_agents *a)
{
    json_t *arr = json_array();
    for (size_t i = 0; i < a->gen->nagents; i++) {
        const struct nx_agent_conf *c = a->gen->agents[i].conf;
        json_array_append_new(arr, json_pack("{s:s, s:s, s:s, s:s}", "id", c->id, "description",
                                             c->description ? c->description : "", "provider",
                                             c->model.provider ? c->model.provider : "", "model",
                                             c->model.model ? c->model.model : ""));
    }
    return arr;
}

int nx_agents_count_tokens(const struct nx_agents *a, const char *agent_id, const char *extra,
                           const json_t *messages, uint64_t *out)
{
    const struct agent_rt *ag = gen_agent(a->gen, agent_id);
    struct nx_buf system = NX_BUF_INIT;
    uint64_t tools = 0;
    size_t i;
    const json_t *m;

    if (!ag)
        return NX_ENOENT;
    agent_system_prompt(ag, extra, &system);
    json_decref(agent_tools(ag, &tools));
    *out = nx_history_text_tokens(system.data ? system.data : "", system.len) + tools;
    json_array_foreach(messages, i, m)
        *out += nx_history_estimate_tokens(m); /* (not nx_llm_message_tokens: nothing to keep) */
    nx_buf_cleanup(&system);
    return 0;
}

size_t nx_agents_turns_in_flight(const struct nx_agents *a)
{
    return a->nturns;
}

uint64_t nx_agents_turns_started(const struct nx_agents *a)
{
    return a->turns_started;
}

bool nx_agents_can_answer(const struct nx_agents *a)
{
    for (size_t i = 0; i < a->gen->nagents; i++) {
        if (a->gen->agents[i].ntargets)
            return true;
    }
    return false;
}

size_t nx_agents_sessions(const struct nx_agents *a)
{
    return a->nlanes;
}

void nx_agents_free(struct nx_agents *a)
{
    if (!a)
        return;
    a->is_freeing = true;
    while (a->turns)
        nx_turn_cancel(a->turns);
    lanes_free(a);
    budgets_free(a);
    hcache_free(a->history);
    gen_unref(a->gen);
    free(a->data_dir);
    free(a);
}

char *nx_agents_workspace(const struct nx_agents *a, const char *agent_id)
{
    const struct agent_rt *rt = a && a->gen ? gen_agent(a->gen, agent_id) : NULL;
    return rt && rt->workspace ? nx_strdup(rt->workspace) : NULL;
}
