/* mcp_server.yaml: what nexo offers as an MCP server. nexo-rs keys (enabled, name, expose_tools,
 * auth_token_env, http{enabled, bind}) plus ours (agents, tools_agent, http.allowed_origins,
 * limits). The file is read at start (not on reload). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/schema.h"
#include "config/tables.h"
#include "core/alloc.h"
#include "core/buf.h"
#include "core/error.h"
#include "mcp/server.h"

typedef struct nx_mcp_srv_conf C;

/* Origins as the gateway's cors list takes them, but for "*", which is the gateway's to give
 * (with an auth_token). */
static void check_origins(struct nx_conf_ctx *ctx, const struct nx_cnode *val, void *dst)
{
    nx_conf_check_origins(ctx, val, dst);
    for (size_t i = 0; i < val->n; i++)
        if (strcmp(val->kids[i]->text, "*") == 0)
            nx_conf_error(ctx, val->kids[i], "\"*\" is not taken here: list origins, or allow every "
                          "page in gateway.yaml cors.allowed_origins (with an auth_token)");
}

static const struct nx_conf_field http_fields[] = {
    {NX_FIELD("enabled", NX_CT_BOOL, C, http.enabled), .def = "true"},
    {NX_FIELD("bind", NX_CT_STRING, C, http.bind)},
    {NX_FIELD("allowed_origins", NX_CT_STRLIST, C, http.allowed_origins), .check = check_origins},
    {NX_FIELD("max_sessions", NX_CT_UINT, C, http.max_sessions), .def = "64", .min = 1, .max = 100000},
    {NX_FIELD("session_idle_timeout", NX_CT_DURATION, C, http.session_idle_timeout_ms), .def = "30m",
     .min = 1000, .max = 86400000},
    {NX_FIELD("sse_retry", NX_CT_DURATION, C, http.sse_retry_ms), .def = "1s", .min = 0, .max = 600000},
    {.name = NULL},
};
static const struct nx_conf_struct http_desc = {.name = "\"http\"", .fields = http_fields};

static const struct nx_conf_field fields[] = {
    {NX_FIELD("enabled", NX_CT_BOOL, C, enabled), .def = "false"},
    {NX_FIELD("name", NX_CT_STRING, C, name), .def = "nexo"},
    {NX_FIELD("agents", NX_CT_STRLIST, C, agents)},
    {NX_FIELD("tools_agent", NX_CT_STRING, C, tools_agent)},
    {NX_FIELD("expose_tools", NX_CT_STRLIST, C, expose_tools)},
    {NX_FIELD("auth_token_env", NX_CT_STRING, C, auth_token_env)},
    {NX_FIELD("max_frame", NX_CT_SIZE, C, max_frame), .def = "4MiB", .min = 1024, .max = 64 << 20},
    {NX_FIELD("page_size", NX_CT_UINT, C, page_size), .def = "100", .min = 1, .max = 10000},
    {NX_GROUP("http", &http_desc)},
    {.name = NULL},
};
static const struct nx_conf_struct file_desc = {.name = "mcp_server.yaml", .size = sizeof(C),
                                                .fields = fields};

static int parse(const char *file, const char *dir, const char *yaml, size_t len, C *out,
                 struct nx_diags *diags)
{
    struct nx_diags own;
    struct nx_cnode *root = NULL;
    int rc = 0;

    memset(out, 0, sizeof *out);
    nx_conf_defaults(&file_desc, out);
    if (!yaml)
        return 0;
    if (!diags) {
        nx_diags_init(&own);
        diags = &own;
    }
    struct nx_conf_ctx ctx = {.diags = diags, .file = file, .dir = dir};
    if (nx_cnode_parse_yaml(&ctx, yaml, len, &root) < 0 || !root) {
        rc = NX_ECONFIG;
        goto out;
    }
    /* Also accept the whole file under one `mcp_server:` key. */
    const struct nx_cnode *node = root;
    const struct nx_cnode *inner = nx_cnode_get(root, "mcp_server");
    if (inner && root->n == 2)
        node = inner;
    if (nx_conf_parse_struct(&ctx, &file_desc, node, out) < 0 || ctx.errors)
        rc = NX_ECONFIG;
out:
    nx_cnode_free(root);
    if (diags == &own)
        nx_diags_cleanup(&own);
    return rc;
}

int nx_mcp_srv_conf_parse(const char *yaml, size_t len, C *out, struct nx_diags *diags)
{
    return parse("mcp_server.yaml", NULL, yaml ? yaml : "", yaml ? len : 0, out, diags);
}

int nx_mcp_srv_conf_load(const struct nx_config *cfg, C *out, struct nx_diags *diags)
{
    const char *dir = nx_config_dir(cfg);
    struct nx_buf path = NX_BUF_INIT, text = NX_BUF_INIT;
    int rc = 0;
    FILE *f = NULL;

    if (!dir)
        return parse("mcp_server.yaml", NULL, NULL, 0, out, diags);
    nx_buf_printf(&path, "%s/mcp_server.yaml", dir);
    if (!(f = fopen(nx_buf_cstr(&path), "rb"))) {
        if (errno != ENOENT) {
            if (diags)
                nx_diags_add(diags, nx_buf_cstr(&path), 0, 0, "cannot read: %s", strerror(errno));
            parse("mcp_server.yaml", dir, NULL, 0, out, diags);
            rc = NX_ECONFIG;
            goto out;
        }
        rc = parse("mcp_server.yaml", dir, NULL, 0, out, diags);
        goto out;
    }
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
        nx_buf_append(&text, chunk, n);
        if (text.len > (1u << 20)) {
            if (diags)
                nx_diags_add(diags, nx_buf_cstr(&path), 0, 0, "file larger than 1 MiB");
            parse("mcp_server.yaml", dir, NULL, 0, out, diags);
            rc = NX_ECONFIG;
            goto out;
        }
    }
    rc = parse(nx_buf_cstr(&path), dir, nx_buf_cstr(&text), text.len, out, diags);
out:
    if (f)
        fclose(f);
    nx_buf_cleanup(&path);
    nx_buf_cleanup(&text);
    return rc;
}

void nx_mcp_srv_conf_cleanup(C *c)
{
    if (c)
        nx_conf_cleanup(&file_desc, c);
}
