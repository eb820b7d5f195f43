#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "channels/telegram.h"
#include "core/alloc.h"
#include "core/error.h"

/* plugins/telegram.yaml: one instance's fields (nexo-rs keys plus api_url, proxy, typing). */

static int parse_ids(struct nx_conf_ctx *ctx, const char *name, const struct nx_cnode *val, void *dst)
{
    struct nx_tg_ids *ids = dst;
    char buf[96];
    if (val->kind != NX_CNODE_SEQ) {
        nx_conf_error(ctx, val, "expected a list of chat ids for \"%s\", got %s", name,
                      nx_cnode_describe(val, buf, sizeof buf));
        return NX_ECONFIG;
    }
    free(ids->v);
    ids->v = nx_calloc(val->n ? val->n : 1, sizeof *ids->v);
    ids->n = 0;
    int rc = 0;
    for (size_t i = 0; i < val->n; i++) {
        const struct nx_cnode *k = val->kids[i];
        char *end = NULL;
        errno = 0;
        long long x = k->kind == NX_CNODE_SCALAR && k->len ? strtoll(k->text, &end, 10) : 0;
        if (k->kind != NX_CNODE_SCALAR || !end || *end || errno) {
            nx_conf_error(ctx, k, "expected an integer chat id in \"%s\", got %s", name,
                          nx_cnode_describe(k, buf, sizeof buf));
            rc = NX_ECONFIG;
            continue;
        }
        ids->v[ids->n++] = x;
    }
    return rc;
}

static void cleanup_ids(void *dst)
{
    struct nx_tg_ids *ids = dst;
    free(ids->v);
    ids->v = NULL;
    ids->n = 0;
}

static const struct nx_conf_custom ids_type = {
    .what = "a list of chat ids", .parse = parse_ids, .cleanup = cleanup_ids,
};

static void check_url(struct nx_conf_ctx *ctx, const struct nx_cnode *val, void *dst)
{
    const char *u = *(char **)dst;
    if (u && strncmp(u, "http://", 7) != 0 && strncmp(u, "https://", 8) != 0)
        nx_conf_error(ctx, val, "api_url must start with http:// or https://");
}

static void check_token(struct nx_conf_ctx *ctx, const struct nx_cnode *val, void *dst)
{
    const char *t = *(char **)dst;
    for (const char *p = t; p && *p; p++) {
        if ((unsigned char)*p <= ' ' || *p == '/' || *p == '?' || *p == '#' || *p == '%') {
            nx_conf_error(ctx, val, "token holds a character a bot token never has (space, /, ?, # "
                          "or %%): check the value or the file it comes from");
            return;
        }
    }
    if (t && !*t)
        nx_conf_error(ctx, val, "token is empty");
}

#define TC struct nx_tg_conf

static const char *const polling_extra[] = {"offset_path", NULL};
static const struct nx_conf_field polling_fields[] = {
    {NX_FIELD("enabled", NX_CT_BOOL, TC, polling.enabled), .def = "true"},
    {NX_FIELD("interval_ms", NX_CT_DURATION, TC, polling.interval_ms), .def = "25000", .min = 0,
     .max = 600000},
    {NX_FIELD("watchdog_ms", NX_CT_DURATION, TC, polling.watchdog_ms), .def = "15000", .min = 100,
     .max = 600000},
    {.name = NULL},
};
static const struct nx_conf_struct polling_desc = {
    .name = "\"polling\"", .fields = polling_fields, .extra_keys = polling_extra,
    .extra_offset = offsetof(TC, polling.extra),
};

static const struct nx_conf_field allowlist_fields[] = {
    {NX_FIELD("chat_ids", NX_CT_CUSTOM, TC, allow), .custom = &ids_type},
    {.name = NULL},
};
static const struct nx_conf_struct allowlist_desc = {.name = "\"allowlist\"", .fields = allowlist_fields};

/* nexo-rs keys this slice accepts but does not act on yet. */
static const char *const tg_extra[] = {"auto_transcribe", "bridge_timeout_ms", "allow_agents", NULL};

/* Webhook mode (telegram_webhook.c). Telegram allows 1-256 characters A-Z a-z 0-9 _ - in a
 * secret_token; an enabled webhook needs one (nothing else authenticates the requests). */
static void check_webhook(struct nx_conf_ctx *ctx, const struct nx_cnode *node, void *obj)
{
    const TC *c = obj;
    const char *t = c->webhook.secret_token;
    if (t && (!*t || strlen(t) > 256 || strspn(t, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                            "0123456789_-") != strlen(t)))
        nx_conf_error(ctx, nx_cnode_get(node, "secret_token"), "webhook.secret_token must be 1-256 "
                      "characters of A-Z, a-z, 0-9, _ and - (what Telegram accepts)");
    else if (c->webhook.enabled && !t)
        nx_conf_error(ctx, node, "webhook.enabled needs webhook.secret_token: without it anyone could "
                      "post updates to the webhook");
    if (c->webhook.url && strncmp(c->webhook.url, "https://", 8) != 0)
        nx_conf_error(ctx, nx_cnode_get(node, "url"), "webhook.url must be an https:// URL (Telegram "
                      "only posts to HTTPS)");
}

static const struct nx_conf_field webhook_fields[] = {
    {NX_FIELD("enabled", NX_CT_BOOL, TC, webhook.enabled), .def = "false"},
    {NX_FIELD("secret_token", NX_CT_STRING, TC, webhook.secret_token)},
    {NX_FIELD("url", NX_CT_STRING, TC, webhook.url)},
    {.name = NULL},
};
static const struct nx_conf_struct webhook_desc = {
    .name = "\"webhook\"", .fields = webhook_fields, .check = check_webhook,
};

static const struct nx_conf_field tg_fields[] = {
    {NX_FIELD("token", NX_CT_STRING, TC, token), .check = check_token, .flags = NX_CF_REQUIRED},
    {NX_FIELD("api_url", NX_CT_STRING, TC, api_url), .def = "https://api.telegram.org",
     .check = check_url},
    {NX_FIELD("instance", NX_CT_STRING, TC, instance)},
    {NX_FIELD("proxy", NX_CT_STRING, TC, proxy)},
    {NX_FIELD("typing", NX_CT_BOOL, TC, typing), .def = "true"},
    {NX_FIELD("markdown", NX_CT_BOOL, TC, markdown), .def = "true"},
    {NX_FIELD("max_media_bytes", NX_CT_SIZE, TC, max_media_bytes), .def = "20MiB", .min = 1,
     .max = 2147483648},
    {NX_GROUP("polling", &polling_desc)},
    {NX_GROUP("allowlist", &allowlist_desc)},
    {NX_GROUP("webhook", &webhook_desc)},
    {.name = NULL},
};

const struct nx_conf_struct nx_tg_conf_desc = {
    .name = "a telegram instance",
    .size = sizeof(TC),
    .fields = tg_fields,
    .extra_keys = tg_extra,
    .extra_offset = offsetof(TC, extra),
};
