#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/agent.h"
#include "core/alloc.h"
#include "core/buf.h"
#include "core/error.h"
#include "core/log.h"
#include "mcp/manager_internal.h"

/* The MCP manager's configuration side: each server's settings copied out of the snapshot, its
 * roots, sampling/elicitation policy and OAuth state, and the status for the admin page. */

const char *const nx_mcp_state_names[] = {"stopped", "starting", "ready", "backoff"};

static char **strv_dup(char **v)
{
    size_t n = 0;
    char **out;

    while (v && v[n])
        n++;
    out = nx_calloc(n + 1, sizeof *out);
    for (size_t i = 0; i < n; i++)
        out[i] = nx_strdup(v[i]);
    return out;
}

static void strv_free(char **v)
{
    for (size_t i = 0; v && v[i]; i++)
        free(v[i]);
    free(v);
}

static void strmap_dup(struct nx_strmap *dst, const struct nx_strmap *src)
{
    dst->n = src->n;
    dst->keys = nx_calloc(src->n + 1, sizeof *dst->keys);
    dst->vals = nx_calloc(src->n + 1, sizeof *dst->vals);
    for (size_t i = 0; i < src->n; i++) {
        dst->keys[i] = nx_strdup(src->keys[i]);
        dst->vals[i] = nx_strdup(src->vals[i]);
    }
}

static void strmap_free(struct nx_strmap *m)
{
    for (size_t i = 0; i < m->n; i++) {
        free(m->keys[i]);
        free(m->vals[i]);
    }
    free(m->keys);
    free(m->vals);
}

static char *dup_or_null(const char *s)
{
    return s ? nx_strdup(s) : NULL;
}

/* roots: ["file:///x", ...] or [{uri, name?}, ...] from the server's `roots` key. */
static json_t *roots_from(const json_t *extra)
{
    const json_t *r = json_object_get(extra, "roots");
    json_t *out = json_array();

    for (size_t i = 0; json_is_array(r) && i < json_array_size(r); i++) {
        const json_t *e = json_array_get(r, i);

        if (json_is_string(e))
            json_array_append_new(out, json_pack("{s:O}", "uri", e));
        else if (json_is_object(e) && json_is_string(json_object_get(e, "uri")))
            json_array_append_new(out, json_deep_copy(e));
    }
    return out;
}

void nx_mcp_mgr_server_init(struct nx_mcp_manager *m, struct server *s, const struct nx_mcp_server_conf *c,
                            const json_t *mcp_extra)
{
    const json_t *roots = json_object_get(c->extra, "roots");
    char err[200];

    s->m = m;
    s->conf.name = nx_strdup(c->name ? c->name : "");
    s->conf.transport = c->transport;
    s->conf.command = dup_or_null(c->command);
    s->conf.args = strv_dup(c->args);
    strmap_dup(&s->conf.env, &c->env);
    s->conf.cwd = dup_or_null(c->cwd);
    s->conf.url = dup_or_null(c->url);
    strmap_dup(&s->conf.headers, &c->headers);
    s->conf.connect_timeout_ms = c->connect_timeout_ms;
    s->conf.call_timeout_ms = c->call_timeout_ms;
    s->conf.extra = c->extra ? json_deep_copy(c->extra) : json_object();
    /* roots: a list of uris, or true / "workspaces" for the agents' workspaces; absent or
     * false: the capability is not declared and roots/list gets -32601 */
    s->has_roots = roots && !json_is_false(roots) && !json_is_null(roots);
    s->wants_workspaces = json_is_true(roots) ||
                          (json_is_string(roots) && strcmp(json_string_value(roots), "workspaces") == 0);
    s->roots = roots_from(c->extra);
    s->prompts = json_array();
    s->asks = nx_mcp_asks_new(s->conf.name, c->extra, mcp_extra);
    if (c->transport != NX_MCP_STDIO &&
        nx_mcp_oauth_new(m->http, s->conf.name, c->url, json_object_get(c->extra, "auth"), &s->oauth, err,
                         sizeof err) < 0) {
        nx_error("mcp", "server %s: auth: %s", s->conf.name, err);
        s->oauth = NULL;
    }
}

void nx_mcp_mgr_server_conf_cleanup(struct server *s)
{
    nx_mcp_asks_free(s->asks);
    s->asks = NULL;
    nx_mcp_oauth_free(s->oauth);
    s->oauth = NULL;
    free(s->conf.name);
    free(s->conf.command);
    strv_free(s->conf.args);
    strmap_free(&s->conf.env);
    free(s->conf.cwd);
    free(s->conf.url);
    strmap_free(&s->conf.headers);
    json_decref(s->roots);
    json_decref(s->conf.extra);
    json_decref(s->prompts);
    json_decref(s->skipped);
    free(s->last_error);
}

/* file:// + the path, percent-encoding what is not unreserved or '/'. */
static char *file_uri(const char *path)
{
    static const char hex[] = "0123456789ABCDEF";
    struct nx_buf b = NX_BUF_INIT;

    nx_buf_puts(&b, "file://");
    for (const unsigned char *p = (const unsigned char *)path; *p; p++) {
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
            strchr("/-._~", *p)) {
            nx_buf_putc(&b, (char)*p);
        } else {
            nx_buf_putc(&b, '%');
            nx_buf_putc(&b, hex[*p >> 4]);
            nx_buf_putc(&b, hex[*p & 15]);
        }
    }
    return nx_buf_steal(&b);
}

json_t *nx_mcp_mgr_workspace_roots(const struct nx_config *cfg, const char *data_dir)
{
    const struct nx_agent_conf *acs = NULL;
    size_t n = cfg ? nx_config_agents(cfg, &acs) : 0;
    const char *dir = cfg ? nx_config_dir(cfg) : NULL;
    json_t *out = json_array();
    char path[PATH_MAX];
    struct nx_workspaces *w = n ? nx_workspaces_new(cfg) : NULL;

    for (size_t i = 0; i < n; i++) {
        const char *ws = acs[i].workspace;
        char *real, *uri;

        if (!ws || !ws[0])
            continue;
        if (ws[0] == '/' || !dir)
            snprintf(path, sizeof path, "%s", ws);
        else
            snprintf(path, sizeof path, "%s/%s", dir, ws);
        if (!(real = realpath(path, NULL)))
            continue;
        if (nx_workspace_off_limits(cfg, w, real, data_dir)) { /* (as its own file tools are off) */
            free(real);
            continue;
        }
        uri = file_uri(real);
        json_array_append_new(out, json_pack("{s:s, s:s}", "uri", uri, "name", acs[i].id ? acs[i].id : ""));
        free(uri);
        free(real);
    }
    nx_workspaces_free(w);
    return out;
}

json_t *nx_mcp_manager_status(const struct nx_mcp_manager *m)
{
    json_t *arr = json_array();

    for (size_t i = 0; m && i < m->nservers; i++) {
        const struct server *s = &m->servers[i];
        json_t *tools = json_array();
        json_t *o;

        for (size_t j = 0; j < NX_ARRAY_LEN(s->rtools); j++) {
            if (s->rtools[j])
                json_array_append_new(tools, json_string(s->rtools[j]->name));
        }
        for (size_t j = 0; j < s->ntools; j++)
            json_array_append_new(tools, json_string(s->tools[j]->name));
        o = json_pack("{s:s, s:s, s:s, s:s, s:o, s:I, s:I, s:I}", "name", s->conf.name, "transport",
                      s->conf.transport == NX_MCP_STDIO ? "stdio" : "streamable_http", "state",
                      nx_mcp_state_names[s->state], "protocol_version",
                      nx_mcp_client_protocol_version(s->client), "tools", tools, "restarts",
                      (json_int_t)s->restarts, "calls", (json_int_t)s->calls,
                      "progress_notifications", (json_int_t)s->progress);
        json_object_set_new(o, "server_info",
                            s->state == NX_MCP_ST_READY && nx_mcp_client_server_info(s->client)
                                                  ? json_deep_copy(nx_mcp_client_server_info(s->client))
                                                  : json_null());
        json_object_set_new(o, "pid", s->pid ? json_integer(s->pid) : json_null());
        json_object_set_new(o, "prompts", json_deep_copy(s->prompts));
        json_object_set_new(o, "skipped_tools", s->skipped ? json_deep_copy(s->skipped) : json_object());
        if (s->client) {
            struct nx_mcp_client_stats st;

            nx_mcp_client_stats(s->client, &st);
            json_object_set_new(o, "session", json_pack("{s:I, s:I, s:I, s:I}", "malformed",
                                                        (json_int_t)st.malformed, "unknown_replies",
                                                        (json_int_t)st.unknown_replies, "server_requests",
                                                        (json_int_t)st.server_requests, "cancels_sent",
                                                        (json_int_t)st.cancels_sent));
        }
        json_object_set_new(o, "last_error", s->last_error ? json_string(s->last_error) : json_null());
        if (s->oauth)
            json_object_set_new(o, "auth", nx_mcp_oauth_status(s->oauth));
        json_array_append_new(arr, o);
    }
    return json_pack("{s:o}", "servers", arr);
}
