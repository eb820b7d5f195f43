#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/clock.h"
#include "core/error.h"
#include "core/log.h"
#include "core/metrics.h"
#include "tools/internal.h"
#include "tools/tool.h"

/* The tool registry: the built-ins below plus tools registered at run time (MCP, extensions),
 * names unique, each schema parsed once. nx_tool_invoke is the only way the agent runs a tool:
 * it refuses unknown and not-allowed tools and bad arguments before anything runs, counts every
 * outcome, times what runs and caps what goes back to the model. Loop thread only. */

static const struct nx_tool *const builtins[] = {
    &nx_tool_time_now, &nx_tool_http_fetch, &nx_tool_file_read, &nx_tool_file_write,
    &nx_tool_file_list,
};

struct entry {
    const struct nx_tool *tool;
    json_t *schema; /* parsed input_schema */
};

static struct entry *entries;
static const struct nx_tool **tables; /* parallel to entries, for nx_tool_all */
static size_t nentries, centries;
static bool is_init;

static const double latency_buckets[] = {0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
                                         60};

static json_t *parse_schema(const struct nx_tool *t)
{
    json_t *s;

    if (!t->input_schema)
        return json_pack("{s:s}", "type", "object");
    s = json_loads(t->input_schema, 0, NULL);
    if (s && !json_is_object(s)) {
        json_decref(s);
        s = NULL;
    }
    return s;
}

static struct entry *find_entry(const char *name)
{
    for (size_t i = 0; i < nentries; i++) {
        if (strcmp(entries[i].tool->name, name) == 0)
            return &entries[i];
    }
    return NULL;
}

static uint64_t changes; /* registrations and unregistrations (nx_tool_registry_changes) */

static int add_entry(const struct nx_tool *t)
{
    json_t *schema;

    if (!t || !t->name || !t->name[0] || (!t->run && !t->run_self))
        return NX_EINVAL;
    if (find_entry(t->name))
        return NX_EEXIST;
    if (!(schema = parse_schema(t)))
        return NX_EINVAL;
    if (nentries == centries) {
        centries = centries ? centries * 2 : 16;
        entries = nx_realloc(entries, centries * sizeof *entries);
        tables = nx_realloc(tables, centries * sizeof *tables);
    }
    entries[nentries].tool = t;
    entries[nentries].schema = schema;
    tables[nentries] = t;
    nentries++;
    changes++;
    return 0;
}

static void ensure_init(void)
{
    if (is_init)
        return;
    is_init = true;
    for (size_t i = 0; i < NX_ARRAY_LEN(builtins); i++)
        NX_ASSERT(add_entry(builtins[i]) == 0);
}

const struct nx_tool *nx_tool_find(const char *name)
{
    struct entry *e;

    ensure_init();
    e = name ? find_entry(name) : NULL;
    return e ? e->tool : NULL;
}

const struct nx_tool *const *nx_tool_all(size_t *n)
{
    ensure_init();
    if (n)
        *n = nentries;
    return tables;
}

int nx_tool_register(const struct nx_tool *t)
{
    ensure_init();
    return add_entry(t);
}

void nx_tool_unregister(const char *name)
{
    struct entry *e;
    size_t i;

    ensure_init();
    if (!name || !(e = find_entry(name)))
        return;
    i = (size_t)(e - entries);
    json_decref(e->schema);
    memmove(&entries[i], &entries[i + 1], (nentries - i - 1) * sizeof *entries);
    memmove(&tables[i], &tables[i + 1], (nentries - i - 1) * sizeof *tables);
    nentries--;
    changes++;
}

uint64_t nx_tool_registry_changes(void)
{
    ensure_init();
    return changes;
}

bool nx_tool_allowed(const char *name, const char *const *allowed_globs)
{
    if (!name)
        return false;
    if (!allowed_globs || !allowed_globs[0])
        return true;
    for (size_t i = 0; allowed_globs[i]; i++) {
        if (fnmatch(allowed_globs[i], name, 0) == 0) /* shell globs: *, ?, [...] anywhere */
            return true;
    }
    return false;
}

json_t *nx_tool_manifest(const char *const *allowed_globs)
{
    json_t *arr = json_array();

    ensure_init();
    for (size_t i = 0; i < nentries; i++) {
        const struct nx_tool *t = entries[i].tool;

        if (!nx_tool_allowed(t->name, allowed_globs))
            continue;
        json_array_append_new(arr, json_pack("{s:s, s:s, s:o}", "name", t->name, "description",
                                             t->description ? t->description : "", "input_schema",
                                             json_deep_copy(entries[i].schema)));
    }
    return arr;
}

int nx_tool_validate(const struct nx_tool *t, const json_t *args, char *err, size_t errlen)
{
    struct entry *e;
    json_t *owned = NULL, *empty = NULL;
    int rc;

    ensure_init();
    if (!t)
        return NX_EINVAL;
    e = t->name ? find_entry(t->name) : NULL;
    if (!e || e->tool != t) {
        /* not registered (tests, or before registration): parse for this call only */
        if (!(owned = parse_schema(t))) {
            snprintf(err, errlen, "tool \"%s\" has an invalid input schema", t->name ? t->name : "");
            return NX_EINVAL;
        }
    }
    if (!args)
        args = empty = json_object();
    rc = nx_schema_validate(owned ? owned : e->schema, args, err, errlen);
    json_decref(owned);
    json_decref(empty);
    return rc;
}

/* ---- invoke ------------------------------------------------------------------------------ */

/* A call handed to a tool: the registry's own record around the tool's handle. */
struct nx_tool_call {
    const struct nx_tool *tool;
    struct nx_tool_call *inner; /* what tool->run returned */
    nx_tool_done_fn done;
    void *udata;
    char *agent;
    uint64_t start_ns;
    bool in_run;
    bool has_finished;
    bool is_cancelled;
};

static void count(const char *agent, const char *tool, const char *outcome)
{
    static const char *const labels[] = {"agent", "tool", "outcome", NULL};
    const char *values[] = {agent ? agent : "", tool, outcome};

    nx_counter_add(nx_metric_counter("nexo_tool_calls_total", "Tool calls by agent, tool and outcome.",
                                     labels),
                   values, 1);
}

static void observe(const char *tool, double seconds)
{
    static const char *const labels[] = {"tool", NULL};
    const char *values[] = {tool};

    nx_histogram_observe(nx_metric_histogram("nexo_tool_latency_seconds",
                                             "Time from a tool's start to its answer.", labels,
                                             latency_buckets, NX_ARRAY_LEN(latency_buckets)),
                         values, seconds);
}

/* Sends output to done as valid UTF-8 (a message that quotes the model's path cut mid-character
 * would otherwise reach the model as no text at all), cut to NX_TOOL_OUTPUT_MAX at a character
 * boundary with a note. */
static void answer(nx_tool_done_fn done, void *udata, const char *out, size_t len, bool is_error)
{
    struct nx_buf b = NX_BUF_INIT;
    struct nx_buf clean = NX_BUF_INIT;
    size_t keep;

    if (!out)
        out = "";
    if (!nx_utf8_is_valid(out, len)) {
        nx_utf8_sanitize(&clean, out, len);
        out = nx_buf_cstr(&clean);
        len = clean.len;
    }
    if (len <= NX_TOOL_OUTPUT_MAX) {
        done(out, len, is_error, udata);
        nx_buf_cleanup(&clean);
        return;
    }
    keep = NX_TOOL_OUTPUT_MAX - 64;
    /* back off to the start of a UTF-8 sequence */
    while (keep > 0 && ((unsigned char)out[keep] & 0xc0) == 0x80)
        keep--;
    nx_buf_append(&b, out, keep);
    nx_buf_printf(&b, "\n[truncated: %zu bytes omitted]", len - keep);
    done(b.data, b.len, is_error, udata);
    nx_buf_cleanup(&b);
    nx_buf_cleanup(&clean);
}

static void refuse(const struct nx_tool_ctx *ctx, const char *tool_label, const char *outcome,
                   const char *msg, nx_tool_done_fn done, void *udata)
{
    count(ctx ? ctx->agent_id : NULL, tool_label, outcome);
    answer(done, udata, msg, strlen(msg), true);
}

static void call_free(struct nx_tool_call *c)
{
    free(c->agent);
    free(c);
}

static void on_tool_done(const char *output, size_t len, bool is_error, void *udata)
{
    struct nx_tool_call *c = udata;

    if (c->has_finished)
        return; /* a tool answering twice: ignore the second */
    c->has_finished = true;
    if (!c->is_cancelled) {
        observe(c->tool->name, (double)(nx_mono_ns() - c->start_ns) / 1e9);
        count(c->agent, c->tool->name, is_error ? "error" : "ok");
        answer(c->done, c->udata, output, len, is_error);
    }
    if (!c->in_run)
        call_free(c);
}

struct nx_tool_call *nx_tool_invoke(const struct nx_tool_ctx *ctx, const char *const *allowed_globs,
                                    const char *name, const json_t *args, nx_tool_done_fn done,
                                    void *udata)
{
    const struct nx_tool *t;
    struct nx_tool_call *c;
    char msg[1024];
    json_t *empty = NULL;
    const char *agent = ctx && ctx->agent_id ? ctx->agent_id : "";

    static const struct nx_tool_ctx no_ctx;

    if (!done)
        return NULL;
    if (!ctx)
        ctx = &no_ctx;
    if (!name)
        name = "";
    if (!(t = nx_tool_find(name))) {
        /* the name is the model's: keep it out of metric labels (unbounded) */
        snprintf(msg, sizeof msg, "unknown tool \"%.200s\"", name);
        nx_warn("tools", "agent %s: call to unknown tool \"%.200s\" refused", agent, name);
        refuse(ctx, "_unknown", "unknown", msg, done, udata);
        return NULL;
    }
    if (!nx_tool_allowed(name, allowed_globs)) {
        snprintf(msg, sizeof msg, "tool \"%s\" is not allowed for this agent", name);
        nx_warn("tools", "agent %s: call to tool \"%s\" refused: not in allowed_tools", agent, name);
        refuse(ctx, name, "blocked", msg, done, udata);
        return NULL;
    }
    if (!args)
        args = empty = json_object();
    if (nx_tool_validate(t, args, msg, sizeof msg) < 0) {
        nx_debug("tools", "agent %s: tool \"%s\": invalid arguments: %s", agent, name, msg);
        refuse(ctx, name, "invalid", msg, done, udata);
        json_decref(empty);
        return NULL;
    }
    c = nx_calloc(1, sizeof *c);
    c->tool = t;
    c->done = done;
    c->udata = udata;
    c->agent = nx_strdup(agent);
    c->start_ns = nx_mono_ns();
    c->in_run = true;
    c->inner = t->run_self ? t->run_self(t, ctx, args, on_tool_done, c)
                           : t->run(ctx, args, on_tool_done, c);
    c->in_run = false;
    json_decref(empty);
    if (c->has_finished) {
        call_free(c);
        return NULL;
    }
    return c;
}

void nx_tool_cancel(struct nx_tool_call *c)
{
    if (!c || c->has_finished || c->is_cancelled)
        return;
    c->is_cancelled = true;
    count(c->agent, c->tool->name, "cancelled");
    if (c->inner && c->tool->cancel) {
        c->tool->cancel(c->inner);
        call_free(c);
    }
    /* otherwise the tool answers later; on_tool_done drops the answer and frees */
}
