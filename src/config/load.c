/* Loading a config directory: each file through its table, drop-ins merged, defaults filled. */
#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "config/internal.h"
#include "config/schema.h"
#include "config/tables.h"
#include "core/alloc.h"
#include "core/buf.h"
#include "core/error.h"
#include "core/redact.h"

#define CONF_MAX_FILE (4 * 1024 * 1024)

struct loader {
    const char *dir; /* for display and ${file:}; NULL: none */
    bool use_disk;   /* read files under dir (false: embedded defaults, or a memory file) */
    const char *mem_name;
    const char *mem_data;
    size_t mem_len;
    struct nx_diags *diags;
    struct nx_config *cfg;
    struct nx_conf_state state;
    struct nx_buf file_refs; /* ${file:} paths and texts, NUL-separated */
    struct nx_buf secret_values; /* every secret-named key's value, short ones too, NUL-separated */
    int errors;
};

static char *display_path(const struct loader *L, const char *rel)
{
    struct nx_buf b = NX_BUF_INIT;
    size_t n = L->dir ? strlen(L->dir) : 0;

    if (n && L->dir[n - 1] == '/')
        nx_buf_printf(&b, "%s%s", L->dir, rel);
    else if (n)
        nx_buf_printf(&b, "%s/%s", L->dir, rel);
    else
        nx_buf_puts(&b, rel);
    return nx_buf_steal(&b);
}

static void loader_error(struct loader *L, const char *file, const char *what, const char *why)
{
    nx_diags_add(L->diags, file, 0, 0, "%s: %s", what, why);
    L->errors++;
}

/* Remembers that rel was read, and a digest of its text (nx_config_changed). */
static void add_source(struct nx_config *c, const char *rel, const struct nx_buf *text)
{
    uint64_t h = 14695981039346656037ull; /* FNV-1a */

    for (size_t i = 0; i < text->len; i++)
        h = (h ^ (unsigned char)text->data[i]) * 1099511628211ull;
    c->sources = nx_realloc(c->sources, (c->n_sources + 1) * sizeof *c->sources);
    c->sources[c->n_sources++] = (struct nx_conf_source){nx_strdup(rel), h};
}

/* Reads `rel` into out. Returns 1 when read, 0 when absent, <0 after reporting (when report). */
static int read_source(struct loader *L, const char *rel, const char *display, struct nx_buf *out,
                       bool report)
{
    char chunk[8192];
    FILE *f;
    int rc = 1;

    if (L->mem_name && strcmp(L->mem_name, rel) == 0) {
        nx_buf_append(out, L->mem_data, L->mem_len);
        return 1;
    }
    if (!L->use_disk)
        return 0;
    if (!(f = fopen(display, "rb"))) {
        if (errno == ENOENT)
            return 0;
        if (report)
            loader_error(L, display, "cannot read", strerror(errno));
        return NX_EIO;
    }
    for (;;) {
        size_t n = fread(chunk, 1, sizeof chunk, f);
        if (n == 0)
            break;
        if (out->len + n > CONF_MAX_FILE) {
            if (report)
                loader_error(L, display, "cannot read", "larger than 4 MiB");
            rc = NX_ETOOBIG;
            break;
        }
        nx_buf_append(out, chunk, n);
    }
    if (rc > 0 && ferror(f)) {
        if (report)
            loader_error(L, display, "cannot read", strerror(errno ? errno : EIO));
        rc = NX_EIO;
    }
    fclose(f);
    if (rc > 0)
        add_source(L->cfg, rel, out);
    return rc;
}

static void add_secret(struct loader *L, const char *v, size_t len)
{
    struct nx_config *c = L->cfg;

    if (memchr(v, '\0', len))
        return;
    nx_buf_append(&L->secret_values, v, len);
    nx_buf_putc(&L->secret_values, '\0');
    if (len < NX_REDACT_MIN_LITERAL)
        return;
    c->secrets = nx_realloc(c->secrets, (c->n_secrets + 2) * sizeof *c->secrets);
    c->secrets[c->n_secrets++] = nx_strndup(v, len);
    c->secrets[c->n_secrets] = NULL;
}

/* The scalar values of secret-named keys, at any depth (a provider's api_key, an MCP server's
 * env GITHUB_TOKEN, an Authorization header, with and without its scheme). */
static void collect_secrets(struct loader *L, const struct nx_cnode *n, bool is_secret)
{
    if (!n)
        return;
    if (n->kind == NX_CNODE_SCALAR) {
        const char *sp = is_secret && n->text ? memchr(n->text, ' ', n->len) : NULL;
        if (!is_secret || !n->text)
            return;
        add_secret(L, n->text, n->len);
        if (sp) /* "Bearer <token>": the token alone too */
            add_secret(L, sp + 1, n->len - (size_t)(sp + 1 - n->text));
        return;
    }
    for (size_t i = 0; i < n->n; i++) {
        if (n->kind == NX_CNODE_MAP && i % 2 == 0)
            continue; /* a key */
        bool kid_secret = is_secret;
        if (n->kind == NX_CNODE_MAP) {
            const struct nx_cnode *k = n->kids[i - 1];
            kid_secret = k->kind == NX_CNODE_SCALAR && k->text && nx_redact_is_secret_key(k->text, k->len);
        }
        collect_secrets(L, n->kids[i], kid_secret);
    }
}

/* Parses `rel` (or `fallback` text when absent) into obj, which gets its defaults first.
 * Returns 1 when the file existed, 0 when absent; *syntax_ok tells whether it parsed as YAML. */
static int load_file(struct loader *L, const char *rel, const struct nx_conf_struct *desc, void *obj,
                     const char *fallback, bool *syntax_ok)
{
    struct nx_buf data = NX_BUF_INIT;
    struct nx_cnode *root = NULL;
    char *display = display_path(L, rel);
    struct nx_conf_ctx ctx = {.diags = L->diags, .file = display, .dir = L->dir, .user = &L->state,
                               .file_refs = &L->file_refs};
    int present;

    size_t first_diag = L->diags->n;

    nx_conf_defaults(desc, obj);
    if (syntax_ok)
        *syntax_ok = false;
    present = read_source(L, rel, display, &data, true);
    if (present < 0)
        goto out;
    if (present == 0 && !fallback) {
        if (syntax_ok)
            *syntax_ok = true;
        goto out;
    }
    if (present == 0)
        nx_buf_puts(&data, fallback);
    if (nx_cnode_parse_yaml(&ctx, data.data ? data.data : "", data.len, &root) == 0) {
        if (syntax_ok)
            *syntax_ok = true;
        nx_conf_parse_struct(&ctx, desc, root, obj);
        collect_secrets(L, root, false);
    }
out:
    L->errors += ctx.errors;
    nx_diags_sort(L->diags, first_diag);
    nx_cnode_free(root);
    nx_buf_cleanup(&data);
    free(display);
    return present > 0 ? 1 : 0;
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The *.yaml names in `sub` (sorted), from disk and from the memory file. */
static char **list_yaml(struct loader *L, const char *sub, size_t *count)
{
    size_t n = 0, cap = 8, sublen = strlen(sub);
    char **v = nx_calloc(cap, sizeof *v);

    if (L->use_disk) {
        char *path = display_path(L, sub);
        DIR *d = opendir(path);
        struct dirent *e;
        while (d && (e = readdir(d))) {
            size_t len = strlen(e->d_name);
            if (e->d_name[0] == '.' || len <= 5 || strcmp(e->d_name + len - 5, ".yaml") != 0)
                continue;
            if (n + 1 >= cap) {
                cap *= 2;
                v = nx_realloc(v, cap * sizeof *v);
            }
            v[n++] = nx_strdup(e->d_name);
        }
        if (d)
            closedir(d);
        free(path);
    }
    if (L->mem_name && strncmp(L->mem_name, sub, sublen) == 0 && L->mem_name[sublen] == '/') {
        const char *name = L->mem_name + sublen + 1;
        size_t len = strlen(name);
        bool dup = false;
        for (size_t i = 0; i < n; i++)
            dup = dup || strcmp(v[i], name) == 0;
        if (!dup && len > 5 && !strchr(name, '/') && strcmp(name + len - 5, ".yaml") == 0) {
            if (n + 1 >= cap)
                v = nx_realloc(v, (cap *= 2) * sizeof *v);
            v[n++] = nx_strdup(name);
        }
    }
    qsort(v, n, sizeof *v, cmp_names);
    *count = n;
    return v;
}

/* Agent ids -> where the agent is, for the duplicate check and the merge below, which look up
 * every id: scanning the list for each made loading 30,000 agents take seconds. Open addressing,
 * at most half full; the index borrows the ids. */
struct id_slot {
    const char *id; /* NULL: empty */
    size_t at;
};

struct id_index {
    struct id_slot *v;
    size_t mask;
};

static void id_index_init(struct id_index *x, size_t n)
{
    size_t cap = 16;
    while (cap < 2 * n)
        cap *= 2;
    x->v = nx_calloc(cap, sizeof *x->v);
    x->mask = cap - 1;
}

/* id's slot: where it is, or the empty slot where it goes. */
static struct id_slot *id_index_slot(const struct id_index *x, const char *id)
{
    uint64_t h = 14695981039346656037ull; /* FNV-1a */
    for (const char *p = id; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ull;
    for (size_t i = (size_t)h & x->mask;; i = (i + 1) & x->mask)
        if (!x->v[i].id || strcmp(x->v[i].id, id) == 0)
            return &x->v[i];
}

/* Reports the second of two agents with one id within one file. */
static void check_duplicate_ids(struct loader *L, const struct nx_agents_file *af)
{
    struct id_index x;
    id_index_init(&x, af->n_agents);
    for (size_t i = 0; i < af->n_agents; i++) {
        const struct nx_agent_conf *a = &af->agents[i];
        if (!a->id || !a->origin_file)
            continue;
        struct id_slot *s = id_index_slot(&x, a->id);
        if (!s->id) {
            s->id = a->id;
            s->at = i;
            continue;
        }
        const struct nx_agent_conf *b = &af->agents[s->at];
        nx_diags_add(L->diags, a->origin_file, a->origin_line, a->origin_col,
                     "duplicate agent id \"%s\" (first defined at line %d, column %d)", a->id,
                     b->origin_line, b->origin_col);
        L->errors++;
    }
    free(x.v);
}

/* Moves the agents of a drop-in into the config: same id replaces, else appended. */
static void merge_agents(struct nx_config *c, struct nx_agents_file *af)
{
    struct id_index x;
    id_index_init(&x, c->n_agents + af->n_agents);
    for (size_t j = 0; j < c->n_agents; j++) {
        struct id_slot *s = c->agents[j].id ? id_index_slot(&x, c->agents[j].id) : NULL;
        if (s && !s->id) {
            s->id = c->agents[j].id;
            s->at = j;
        }
    }
    if (af->n_agents)
        c->agents = nx_realloc(c->agents, (c->n_agents + af->n_agents) * sizeof *c->agents);
    for (size_t i = 0; i < af->n_agents; i++) {
        struct nx_agent_conf *a = &af->agents[i];
        struct id_slot *s = a->id ? id_index_slot(&x, a->id) : NULL;
        struct nx_agent_conf *slot;
        if (s && s->id) {
            slot = &c->agents[s->at];
            nx_conf_cleanup(&nx_conf_agent, slot); /* (frees the id s borrowed: a's replaces it) */
        } else {
            if (s)
                s->at = c->n_agents;
            slot = &c->agents[c->n_agents++];
        }
        *slot = *a;
        if (s)
            s->id = slot->id;
    }
    free(x.v);
    free(af->agents);
    af->agents = NULL;
    af->n_agents = 0;
}

/* The default agent: Anthropic when ANTHROPIC_API_KEY is set, else OpenAI when OPENAI_API_KEY or
 * OPENAI_BASE_URL (a local OpenAI-compatible server needs no key) is, else Anthropic (it answers
 * with a clear message until a key is configured). */
static void add_default_agent(struct loader *L)
{
    const struct nx_llm_conf *llm = &L->cfg->llm;
    const char *ak = getenv("ANTHROPIC_API_KEY"), *ok = getenv("OPENAI_API_KEY");
    const char *ob = getenv("OPENAI_BASE_URL");
    const char *want = (ak && *ak) ? "anthropic" : ((ok && *ok) || (ob && *ob)) ? "openai" : "anthropic";
    const struct nx_provider_conf *p = nx_config_provider(L->cfg, want);
    struct nx_agents_file af = {0};
    struct nx_buf text = NX_BUF_INIT;
    struct nx_conf_state quiet = {0};
    struct nx_conf_ctx ctx = {.diags = L->diags, .file = "<defaults>/agents.yaml", .user = &quiet};
    struct nx_cnode *root = NULL;

    if (!p && llm->n_providers)
        p = &llm->providers[0];
    const char *name = p ? p->name : want;
    int kind = p ? p->kind : NX_PROVIDER_ANTHROPIC;
    nx_buf_printf(&text,
                  "agents:\n  - id: main\n    description: default agent\n"
                  "    model: {provider: \"%s\", model: %s}\n",
                  name, kind == NX_PROVIDER_OPENAI ? "gpt-4o-mini" : "claude-haiku-4-5");
    nx_conf_defaults(&nx_conf_agents_file, &af);
    if (nx_cnode_parse_yaml(&ctx, text.data, text.len, &root) == 0)
        nx_conf_parse_struct(&ctx, &nx_conf_agents_file, root, &af);
    L->errors += ctx.errors;
    merge_agents(L->cfg, &af);
    nx_cnode_free(root);
    nx_buf_cleanup(&text);
}

static void load_agents(struct loader *L)
{
    struct nx_agents_file af = {0};
    size_t n = 0, first_diag = L->diags->n;
    bool has_base = load_file(L, "agents.yaml", &nx_conf_agents_file, &af, NULL, NULL) > 0;

    check_duplicate_ids(L, &af);
    nx_diags_sort(L->diags, first_diag);
    merge_agents(L->cfg, &af);
    char **names = list_yaml(L, "agents.d", &n);
    for (size_t i = 0; i < n; i++) {
        struct nx_buf rel = NX_BUF_INIT;
        nx_buf_printf(&rel, "agents.d/%s", names[i]);
        struct nx_agents_file drop = {0};
        first_diag = L->diags->n;
        load_file(L, rel.data, &nx_conf_agents_file, &drop, NULL, NULL);
        check_duplicate_ids(L, &drop);
        nx_diags_sort(L->diags, first_diag);
        merge_agents(L->cfg, &drop);
        nx_buf_cleanup(&rel);
    }
    nx_strv_free(names);
    if (!has_base && L->cfg->n_agents == 0)
        add_default_agent(L);
}

static void load_plugins(struct loader *L)
{
    size_t n = 0;
    char **names = list_yaml(L, "plugins", &n);

    L->cfg->plugins = nx_calloc(n ? n : 1, sizeof *L->cfg->plugins);
    for (size_t i = 0; i < n; i++) {
        struct nx_buf rel = NX_BUF_INIT;
        struct nx_buf data = NX_BUF_INIT;
        struct nx_cnode *root = NULL;
        size_t first_diag = L->diags->n;
        nx_buf_printf(&rel, "plugins/%s", names[i]);
        char *display = display_path(L, rel.data);
        struct nx_conf_ctx ctx = {.diags = L->diags, .file = display, .dir = L->dir, .user = &L->state,
                                  .file_refs = &L->file_refs};
        if (read_source(L, rel.data, display, &data, true) > 0 &&
            nx_cnode_parse_yaml(&ctx, data.data ? data.data : "", data.len, &root) == 0) {
            json_t *j = nx_cnode_to_json(&ctx, root);
            collect_secrets(L, root, false);
            if (j) {
                struct nx_plugin_conf *p = &L->cfg->plugins[L->cfg->n_plugins++];
                p->name = nx_strndup(names[i], strlen(names[i]) - 5);
                p->file = display;
                display = NULL;
                p->json = j;
                p->root = root;
                root = NULL;
            }
        }
        L->errors += ctx.errors;
        nx_diags_sort(L->diags, first_diag);
        nx_cnode_free(root);
        free(display);
        nx_buf_cleanup(&data);
        nx_buf_cleanup(&rel);
    }
    nx_strv_free(names);
}

static const char *const default_llm =
    "providers:\n"
    "  anthropic:\n"
    "    api_key: \"${ANTHROPIC_API_KEY:-}\"\n"
    "    base_url: \"${ANTHROPIC_BASE_URL:-}\"\n"
    "  openai:\n"
    "    api_key: \"${OPENAI_API_KEY:-}\"\n"
    "    base_url: \"${OPENAI_BASE_URL:-}\"\n";

/* The ${file:} files whose text is (part of) a secret's value: an agent's workspace must not
 * hold them (agent.c). A prompt kept in a file is not one. */
static void keep_secret_files(struct loader *L)
{
    struct nx_config *c = L->cfg;
    size_t n = 0;

    c->file_refs = nx_calloc(1, sizeof *c->file_refs);
    for (size_t at = 0; at < L->file_refs.len;) {
        const char *path = L->file_refs.data + at, *text = path + strlen(path) + 1;
        bool is_secret = false;
        at = (size_t)(text - L->file_refs.data) + strlen(text) + 1;
        for (size_t v = 0; v < L->secret_values.len && !is_secret; v += strlen(L->secret_values.data + v) + 1)
            is_secret = strstr(L->secret_values.data + v, text) != NULL;
        if (!is_secret)
            continue;
        c->file_refs = nx_realloc(c->file_refs, (n + 2) * sizeof *c->file_refs);
        c->file_refs[n++] = nx_strdup(path);
        c->file_refs[n] = NULL;
    }
    nx_buf_cleanup(&L->file_refs);
    nx_buf_cleanup(&L->secret_values);
}

static int load(struct loader *L, struct nx_config **out)
{
    struct nx_config *c = nx_config_alloc();
    struct nx_diags own;
    bool llm_ok = false;
    int rc = 0;

    nx_diags_init(&own);
    if (!L->diags)
        L->diags = &own;

    L->cfg = c;
    if (L->dir)
        c->dir = nx_strdup(L->dir);
    if (L->use_disk) {
        struct stat st;
        int err = stat(L->dir, &st) < 0 ? errno : S_ISDIR(st.st_mode) ? 0 : ENOTDIR;
        if (err) {
            loader_error(L, L->dir, "cannot open config directory", strerror(err));
            rc = NX_ECONFIG;
            goto out;
        }
    }
    load_file(L, "gateway.yaml", &nx_conf_gateway_file, &c->gateway, NULL, NULL);
    load_file(L, "llm.yaml", &nx_conf_llm_file, &c->llm, default_llm, &llm_ok);
    L->state.llm = &c->llm;
    L->state.providers_known = llm_ok; /* (an empty map too: then no agent can answer) */
    load_file(L, "broker.yaml", &nx_conf_broker_file, &c->broker, NULL, NULL);
    load_file(L, "memory.yaml", &nx_conf_memory_file, &c->memory, NULL, NULL);
    load_file(L, "mcp.yaml", &nx_conf_mcp_file, &c->mcp, NULL, NULL);
    load_agents(L);
    load_plugins(L);
    if (L->use_disk) { /* the MCP server's (mcp/server_conf.c, which reports its errors): a digest */
        struct nx_buf text = NX_BUF_INIT;
        char *path = display_path(L, "mcp_server.yaml");
        read_source(L, "mcp_server.yaml", path, &text, false);
        free(path);
        nx_buf_cleanup(&text);
    }
    keep_secret_files(L);
    if (L->errors)
        rc = NX_ECONFIG;
out:
    nx_diags_cleanup(&own);
    if (rc < 0) {
        nx_config_destroy(c);
        return rc;
    }
    *out = c;
    return 0;
}

int nx_config_load(const char *dir, struct nx_config **out, struct nx_diags *diags)
{
    struct loader L = {.dir = dir, .use_disk = dir != NULL, .diags = diags};
    return load(&L, out);
}

int nx_config_load_mem(const char *dir, const char *name, const char *data, size_t len,
                       struct nx_config **out, struct nx_diags *diags)
{
    struct loader L = {.dir = dir, .mem_name = name, .mem_data = data, .mem_len = len, .diags = diags};
    return load(&L, out);
}
