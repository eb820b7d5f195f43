#include <stdlib.h>
#include <string.h>

#include "channels/whatsapp.h"
#include "core/error.h"

/* plugins/whatsapp.yaml: one instance's fields (Business Cloud API; see docs/channels.md). */

static void check_url(struct nx_conf_ctx *ctx, const struct nx_cnode *val, void *dst)
{
    const char *u = *(char **)dst;
    if (u && strncmp(u, "http://", 7) != 0 && strncmp(u, "https://", 8) != 0)
        nx_conf_error(ctx, val, "api_url must start with http:// or https://");
}

/* Values that go into a URL path or a header: no separators, no spaces. */
static void check_plain(struct nx_conf_ctx *ctx, const struct nx_cnode *val, void *dst)
{
    const char *t = *(char **)dst;
    if (t && !*t) {
        nx_conf_error(ctx, val, "empty value");
        return;
    }
    for (const char *p = t; p && *p; p++) {
        if ((unsigned char)*p <= ' ' || *p == '/' || *p == '?' || *p == '#' || *p == '%' ||
            (unsigned char)*p >= 0x7f) {
            nx_conf_error(ctx, val, "holds a character such a value never has (space, /, ?, #, %% or "
                          "non-ASCII): check the value or the file it comes from");
            return;
        }
    }
}

static void check_digits(struct nx_conf_ctx *ctx, const struct nx_cnode *val, void *dst)
{
    const char *t = *(char **)dst;
    if (!t || !*t || strspn(t, "0123456789") != strlen(t))
        nx_conf_error(ctx, val, "phone_number_id is the numeric id Meta shows for the number "
                      "(WhatsApp Manager > API setup), not the phone number");
}

static void check_version(struct nx_conf_ctx *ctx, const struct nx_cnode *val, void *dst)
{
    const char *t = *(char **)dst;
    if (!t || t[0] != 'v' || !t[1] || strspn(t + 1, "0123456789.") != strlen(t + 1))
        nx_conf_error(ctx, val, "graph_version looks like v21.0");
}

static void check_allow(struct nx_conf_ctx *ctx, const struct nx_cnode *val, void *dst)
{
    char **v = *(char ***)dst;
    for (size_t i = 0; v && v[i]; i++) {
        const char *s = v[i][0] == '+' ? v[i] + 1 : v[i];
        if (!*s || strspn(s, "0123456789") != strlen(s)) {
            nx_conf_error(ctx, val, "acl.allow_list entry \"%s\" is not a phone number in digits "
                          "(country code first, e.g. 15551234567)", v[i]);
            return;
        }
    }
}

#define TT struct nx_wa_template

static const struct nx_conf_field template_fields[] = {
    {NX_FIELD("name", NX_CT_STRING, TT, name), .flags = NX_CF_REQUIRED},
    {NX_FIELD("language", NX_CT_STRING, TT, language), .def = "en_US"},
    {NX_FIELD("components", NX_CT_ANY, TT, components)},
    {.name = NULL},
};
static void check_template(struct nx_conf_ctx *ctx, const struct nx_cnode *node, void *obj)
{
    const TT *t = obj;
    if (t->components && !json_is_array(t->components))
        nx_conf_error(ctx, nx_cnode_get(node, "components"), "components must be a list (Graph "
                      "API template components)");
}
static const struct nx_conf_struct template_desc = {
    .name = "\"window.template\"", .size = sizeof(TT), .fields = template_fields,
    .check = check_template,
};

#define WC struct nx_wa_conf

static const struct nx_conf_field window_fields[] = {
    {NX_FIELD("enforce", NX_CT_BOOL, WC, window.enforce), .def = "true"},
    {NX_FIELD("hours", NX_CT_UINT, WC, window.hours), .def = "24", .min = 1, .max = 24 * 365},
    {NX_FIELD("template", NX_CT_STRUCT_PTR, WC, window.template_), .sub = &template_desc},
    {.name = NULL},
};
static const struct nx_conf_struct window_desc = {.name = "\"window\"", .fields = window_fields};

static const char *const acl_extra[] = {"from_env", NULL};
static const struct nx_conf_field acl_fields[] = {
    {NX_FIELD("allow_list", NX_CT_STRLIST, WC, allow), .check = check_allow},
    {.name = NULL},
};
static const struct nx_conf_struct acl_desc = {
    .name = "\"acl\"", .fields = acl_fields, .extra_keys = acl_extra,
    .extra_offset = offsetof(WC, acl_extra),
};

/* nexo-rs keys (its WhatsApp Web bridge) accepted and not used by the Cloud API channel. */
static const char *const wa_extra[] = {"session_dir", "media_dir", "credentials_file", "behavior",
                                       "rate_limit", "bridge", "transcriber", "daemon",
                                       "public_tunnel", "allow_agents", NULL};

static const struct nx_conf_field wa_fields[] = {
    {NX_FIELD("instance", NX_CT_STRING, WC, instance)},
    {NX_FIELD("enabled", NX_CT_BOOL, WC, enabled), .def = "true"},
    {NX_FIELD("phone_number_id", NX_CT_STRING, WC, phone_number_id), .check = check_digits,
     .flags = NX_CF_REQUIRED},
    {NX_FIELD("access_token", NX_CT_STRING, WC, access_token), .check = check_plain,
     .flags = NX_CF_REQUIRED},
    {NX_FIELD("app_secret", NX_CT_STRING, WC, app_secret), .check = check_plain,
     .flags = NX_CF_REQUIRED},
    {NX_FIELD("verify_token", NX_CT_STRING, WC, verify_token), .check = check_plain,
     .flags = NX_CF_REQUIRED},
    {NX_FIELD("api_url", NX_CT_STRING, WC, api_url), .def = "https://graph.facebook.com",
     .check = check_url},
    {NX_FIELD("graph_version", NX_CT_STRING, WC, graph_version), .def = "v21.0",
     .check = check_version},
    {NX_FIELD("proxy", NX_CT_STRING, WC, proxy)},
    {NX_FIELD("markdown", NX_CT_BOOL, WC, markdown), .def = "true"},
    {NX_FIELD("max_body", NX_CT_SIZE, WC, max_body), .def = "1MiB", .min = 1024, .max = 64 << 20},
    {NX_FIELD("max_media_bytes", NX_CT_SIZE, WC, max_media_bytes), .def = "16MiB", .min = 1,
     .max = 100 << 20},
    {NX_GROUP("window", &window_desc)},
    {NX_GROUP("acl", &acl_desc)},
    {.name = NULL},
};

const struct nx_conf_struct nx_wa_conf_desc = {
    .name = "a whatsapp instance",
    .size = sizeof(WC),
    .fields = wa_fields,
    .extra_keys = wa_extra,
    .extra_offset = offsetof(WC, extra),
};
