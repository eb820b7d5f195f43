/* The table walker: a mapping node against a struct nx_conf_struct, field by field. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config/schema.h"
#include "core/alloc.h"
#include "core/buf.h"
#include "core/error.h"

#define AT(obj, off) ((void *)((char *)(obj) + (off)))

static int parse_value(struct nx_conf_ctx *ctx, const struct nx_conf_field *f, const struct nx_cnode *v,
                       void *obj);

/* ---- scalars ---- */

static bool parse_i64(const char *s, int64_t *out)
{
    char *end;
    if (!*s || strchr(" \t", *s))
        return false;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end)
        return false;
    *out = v;
    return true;
}

/* 4MB, 32KiB, 1 GB, 1048576. K/KB/KiB all mean 1024. */
static bool parse_size(const char *s, int64_t *out)
{
    static const struct { const char *unit; int shift; } units[] = {
        {"", 0}, {"b", 0}, {"k", 10}, {"kb", 10}, {"kib", 10}, {"m", 20}, {"mb", 20}, {"mib", 20},
        {"g", 30}, {"gb", 30}, {"gib", 30}, {"t", 40}, {"tb", 40}, {"tib", 40},
    };
    char *end;

    if (*s < '0' || *s > '9')
        return false;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno)
        return false;
    while (*end == ' ')
        end++;
    for (size_t i = 0; i < NX_ARRAY_LEN(units); i++) {
        if (strcasecmp(end, units[i].unit) == 0) {
            if (v > ((unsigned long long)INT64_MAX >> units[i].shift))
                return false;
            *out = (int64_t)(v << units[i].shift);
            return true;
        }
    }
    return false;
}

/* 500ms, 30s, 5m, 24h, 1d, 1h30m; a plain number is milliseconds. nexo-rs's humantime forms too:
 * spaces between the parts and before a unit ("1h 30m", "5 min") and unit words ("5min", "2 hours",
 * "30secs"). Parts run from the largest unit to the smallest, each unit at most once: "1h1h",
 * "30m1h" or "1h 2h" is a typo more often than a sum, and silently adding it up would hide it. On
 * failure *why says what was wrong when there is more to say than "not a duration". */
static bool parse_duration(const char *s, int64_t *out, const char **why)
{
    static const struct {
        const char *names; /* ' '-separated, each followed by a space */
        int64_t ms;
    } units[] = {
        {"d day days ", 86400000},
        {"h hr hrs hour hours ", 3600000},
        {"m min mins minute minutes ", 60000},
        {"s sec secs second seconds ", 1000},
        {"ms msec msecs millis millisecond milliseconds ", 1},
    };
    int64_t total = 0;
    size_t next = 0; /* the first unit the next part may use */
    char *end;

    *why = NULL;
    if (*s < '0' || *s > '9')
        return false;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || v > INT64_MAX / 86400000)
        return false;
    if (*end == '\0') {
        *out = (int64_t)v;
        return true;
    }
    for (;;) {
        size_t ulen = 0, u;
        while (*end == ' ')
            end++;
        while (end[ulen] >= 'a' && end[ulen] <= 'z')
            ulen++;
        for (u = 0; ulen && u < NX_ARRAY_LEN(units); u++) {
            const char *n = units[u].names, *hit;
            while ((hit = strstr(n, " ")) && ((size_t)(hit - n) != ulen || strncmp(n, end, ulen) != 0))
                n = hit + 1;
            if (hit)
                break;
        }
        if (!ulen || u == NX_ARRAY_LEN(units))
            return false;
        if (u < next) {
            *why = u + 1 == next ? "each unit may appear once"
                                 : "units go from largest to smallest, as in 1h30m";
            return false;
        }
        next = u + 1;
        int64_t part = (int64_t)v * units[u].ms;
        if (part > INT64_MAX - total)
            return false;
        total += part;
        end += ulen;
        while (*end == ' ')
            end++;
        if (*end == '\0')
            break;
        if (*end < '0' || *end > '9')
            return false;
        v = strtoull(end, &end, 10);
        if (errno || v > INT64_MAX / 86400000)
            return false;
    }
    *out = total;
    return true;
}

static void store_int(void *dst, size_t size, int64_t v)
{
    switch (size) {
    case 1: *(int8_t *)dst = (int8_t)v; break;
    case 2: *(int16_t *)dst = (int16_t)v; break;
    case 4: *(int32_t *)dst = (int32_t)v; break;
    default: *(int64_t *)dst = v; break;
    }
}

static void type_range(const struct nx_conf_field *f, int64_t *lo, int64_t *hi)
{
    unsigned bits = (unsigned)(f->size * 8);
    if (f->type == NX_CT_INT) {
        *lo = bits >= 64 ? INT64_MIN : -((int64_t)1 << (bits - 1));
        *hi = bits >= 64 ? INT64_MAX : ((int64_t)1 << (bits - 1)) - 1;
    } else {
        *lo = 0;
        *hi = bits >= 64 ? INT64_MAX : (int64_t)(((uint64_t)1 << bits) - 1);
    }
    if (f->min < f->max) {
        if (f->min > *lo)
            *lo = f->min;
        if (f->max < *hi)
            *hi = f->max;
    }
}

static const char *type_what(const struct nx_conf_field *f)
{
    switch (f->type) {
    case NX_CT_STRING: return "a string";
    case NX_CT_BOOL: return "true or false";
    case NX_CT_INT:
    case NX_CT_UINT: return "an integer";
    case NX_CT_DOUBLE: return "a number";
    case NX_CT_SIZE: return "a size (e.g. 8MiB, 512KB, 1048576)";
    case NX_CT_DURATION: return "a duration (e.g. 500ms, 30s, 5m, 24h; a plain number is milliseconds)";
    case NX_CT_ENUM: return "a string";
    case NX_CT_STRLIST: return "a list of strings";
    case NX_CT_STRMAP: return "a mapping of strings";
    case NX_CT_STRUCT:
    case NX_CT_STRUCT_PTR:
    case NX_CT_MAP: return "a mapping";
    case NX_CT_LIST: return "a list";
    case NX_CT_ANY: return "a value";
    case NX_CT_CUSTOM: return f->custom->what;
    }
    return "a value";
}

static int wrong_type(struct nx_conf_ctx *ctx, const struct nx_conf_field *f, const struct nx_cnode *v)
{
    char buf[96];
    nx_conf_error(ctx, v, "expected %s for \"%s\", got %s", type_what(f), f->name,
                  nx_cnode_describe(v, buf, sizeof buf));
    return NX_ECONFIG;
}

/* 600000 -> "10m", 1500 -> "1500ms"; 4194304 -> "4MiB". */
static const char *fmt_amount(int64_t v, bool is_duration, char *buf, size_t size)
{
    static const struct { const char *unit; int64_t mul; } dur[] = {
        {"d", 86400000}, {"h", 3600000}, {"m", 60000}, {"s", 1000}, {"ms", 1},
    };
    static const struct { const char *unit; int64_t mul; } sz[] = {
        {"TiB", (int64_t)1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"", 1},
    };
    for (size_t i = 0; i < 5; i++) {
        const char *unit = is_duration ? dur[i].unit : sz[i].unit;
        int64_t mul = is_duration ? dur[i].mul : sz[i].mul;
        if (v != 0 && v % mul == 0) {
            snprintf(buf, size, "%lld%s", (long long)(v / mul), unit);
            return buf;
        }
    }
    snprintf(buf, size, "%lld%s", (long long)v, is_duration ? "ms" : "");
    return buf;
}

static int parse_number(struct nx_conf_ctx *ctx, const struct nx_conf_field *f, const struct nx_cnode *v,
                        void *dst)
{
    int64_t x, lo, hi;
    bool ok;
    const char *why = NULL;
    char buf[96];

    if (f->type == NX_CT_SIZE)
        ok = parse_size(v->text, &x);
    else if (f->type == NX_CT_DURATION)
        ok = parse_duration(v->text, &x, &why);
    else
        ok = parse_i64(v->text, &x);
    if (!ok && why) {
        nx_conf_error(ctx, v, "expected %s for \"%s\", got %s (%s)", type_what(f), f->name,
                      nx_cnode_describe(v, buf, sizeof buf), why);
        return NX_ECONFIG;
    }
    if (!ok)
        return wrong_type(ctx, f, v);
    type_range(f, &lo, &hi);
    if (x < lo || x > hi) {
        if (f->type == NX_CT_INT || f->type == NX_CT_UINT)
            nx_conf_error(ctx, v, "value %s for \"%s\" out of range (%lld-%lld)",
                          nx_cnode_describe(v, buf, sizeof buf), f->name, (long long)lo, (long long)hi);
        else {
            char b1[32], b2[32];
            bool is_dur = f->type == NX_CT_DURATION;
            nx_conf_error(ctx, v, "value %s for \"%s\" out of range (%s-%s)",
                          nx_cnode_describe(v, buf, sizeof buf), f->name,
                          fmt_amount(lo, is_dur, b1, sizeof b1), fmt_amount(hi, is_dur, b2, sizeof b2));
        }
        return NX_ECONFIG;
    }
    store_int(dst, f->size, x);
    return 0;
}

static int parse_double(struct nx_conf_ctx *ctx, const struct nx_conf_field *f, const struct nx_cnode *v,
                        double *dst)
{
    char *end;
    char buf[96];

    errno = 0;
    double d = strtod(v->text, &end);
    if (!v->len || *end || errno || !isfinite(d) || strchr(" \t", v->text[0]))
        return wrong_type(ctx, f, v);
    if (f->min < f->max && (d < (double)f->min || d > (double)f->max)) {
        nx_conf_error(ctx, v, "value %s for \"%s\" out of range (%lld-%lld)",
                      nx_cnode_describe(v, buf, sizeof buf), f->name, (long long)f->min, (long long)f->max);
        return NX_ECONFIG;
    }
    *dst = d;
    return 0;
}

static int parse_enum(struct nx_conf_ctx *ctx, const struct nx_conf_field *f, const struct nx_cnode *v,
                      int *dst)
{
    struct nx_buf list = NX_BUF_INIT;
    char buf[96];

    for (int i = 0; f->choices[i]; i++) {
        if (strcmp(f->choices[i], v->text) == 0) {
            *dst = i;
            return 0;
        }
    }
    for (int i = 0; f->choices[i]; i++)
        nx_buf_printf(&list, "%s%s", i ? ", " : "", f->choices[i]);
    nx_conf_error(ctx, v, "invalid value %s for \"%s\" (expected one of: %s)",
                  nx_cnode_describe(v, buf, sizeof buf), f->name, nx_buf_cstr(&list));
    nx_buf_cleanup(&list);
    return NX_ECONFIG;
}

static bool parse_bool(const char *s, bool *out)
{
    if (!strcmp(s, "true") || !strcmp(s, "True") || !strcmp(s, "TRUE")) {
        *out = true;
        return true;
    }
    if (!strcmp(s, "false") || !strcmp(s, "False") || !strcmp(s, "FALSE")) {
        *out = false;
        return true;
    }
    return false;
}

/* ---- collections ---- */

static int parse_strlist(struct nx_conf_ctx *ctx, const struct nx_conf_field *f, const struct nx_cnode *v,
                         char ***dst)
{
    char buf[96];
    int rc = 0;

    if (v->kind != NX_CNODE_SEQ)
        return wrong_type(ctx, f, v);
    char **list = nx_calloc(v->n + 1, sizeof *list);
    size_t k = 0;
    for (size_t i = 0; i < v->n; i++) {
        const struct nx_cnode *it = v->kids[i];
        if (it->kind != NX_CNODE_SCALAR || nx_cnode_is_null(it)) {
            nx_conf_error(ctx, it, "expected a string in the list \"%s\", got %s", f->name,
                          nx_cnode_describe(it, buf, sizeof buf));
            rc = NX_ECONFIG;
            continue;
        }
        if (!it->is_bad)
            list[k++] = nx_strdup(it->text);
    }
    nx_strv_free(*dst);
    *dst = list;
    return rc;
}

static int parse_strmap(struct nx_conf_ctx *ctx, const struct nx_conf_field *f, const struct nx_cnode *v,
                        struct nx_strmap *m)
{
    char buf[96];
    int rc = 0;

    if (v->kind != NX_CNODE_MAP)
        return wrong_type(ctx, f, v);
    nx_strmap_cleanup(m);
    m->keys = nx_calloc(v->n / 2 + 1, sizeof *m->keys);
    m->vals = nx_calloc(v->n / 2 + 1, sizeof *m->vals);
    for (size_t i = 0; i + 1 < v->n; i += 2) {
        const struct nx_cnode *val = v->kids[i + 1];
        if (val->kind != NX_CNODE_SCALAR) {
            nx_conf_error(ctx, val, "expected a string for \"%s\" in \"%s\", got %s", v->kids[i]->text,
                          f->name, nx_cnode_describe(val, buf, sizeof buf));
            rc = NX_ECONFIG;
            continue;
        }
        if (val->is_bad)
            continue;
        m->keys[m->n] = nx_strdup(v->kids[i]->text);
        m->vals[m->n] = nx_strdup(nx_cnode_is_null(val) ? "" : val->text);
        m->n++;
    }
    return rc;
}

static void free_items(const struct nx_conf_struct *sub, void *items, size_t n)
{
    for (size_t i = 0; i < n; i++)
        nx_conf_cleanup(sub, AT(items, i * sub->size));
    free(items);
}

static int parse_list(struct nx_conf_ctx *ctx, const struct nx_conf_field *f, const struct nx_cnode *v,
                      void *obj)
{
    const struct nx_conf_struct *sub = f->sub;
    void **pv = AT(obj, f->offset);
    size_t *pn = AT(obj, f->count_offset);
    bool is_map = f->type == NX_CT_MAP;
    size_t count = is_map ? v->n / 2 : v->n;
    int rc = 0;

    if (v->kind != (is_map ? NX_CNODE_MAP : NX_CNODE_SEQ))
        return wrong_type(ctx, f, v);
    free_items(sub, *pv, *pn);
    *pv = NULL;
    *pn = 0;
    char *items = nx_calloc(count ? count : 1, sub->size);
    for (size_t i = 0; i < count; i++) {
        void *it = items + i * sub->size;
        const struct nx_cnode *node = is_map ? v->kids[2 * i + 1] : v->kids[i];
        nx_conf_defaults(sub, it);
        if (is_map) {
            NX_ASSERT(sub->has_key);
            *(char **)AT(it, sub->key_offset) = nx_strdup(v->kids[2 * i]->text);
        }
        if (node->kind != NX_CNODE_MAP && !nx_cnode_is_null(node)) {
            char buf[96];
            if (is_map)
                nx_conf_error(ctx, node, "expected a mapping for \"%s\" in \"%s\", got %s",
                              v->kids[2 * i]->text, f->name, nx_cnode_describe(node, buf, sizeof buf));
            else
                nx_conf_error(ctx, node, "expected a mapping for an item of \"%s\", got %s", f->name,
                              nx_cnode_describe(node, buf, sizeof buf));
            rc = NX_ECONFIG;
            continue;
        }
        if (nx_conf_parse_struct(ctx, sub, node, it) < 0)
            rc = NX_ECONFIG;
    }
    *pv = items;
    *pn = count;
    return rc;
}

/* ---- fields ---- */

static int parse_value(struct nx_conf_ctx *ctx, const struct nx_conf_field *f, const struct nx_cnode *v,
                       void *obj)
{
    void *dst = AT(obj, f->offset);
    bool is_scalar = v->kind == NX_CNODE_SCALAR;

    switch (f->type) {
    case NX_CT_STRING:
        if (!is_scalar)
            return wrong_type(ctx, f, v);
        free(*(char **)dst);
        *(char **)dst = nx_strdup(v->text);
        return 0;
    case NX_CT_BOOL:
        if (!is_scalar || !parse_bool(v->text, dst))
            return wrong_type(ctx, f, v);
        return 0;
    case NX_CT_INT:
    case NX_CT_UINT:
    case NX_CT_SIZE:
    case NX_CT_DURATION:
        if (!is_scalar)
            return wrong_type(ctx, f, v);
        return parse_number(ctx, f, v, dst);
    case NX_CT_DOUBLE:
        if (!is_scalar)
            return wrong_type(ctx, f, v);
        return parse_double(ctx, f, v, dst);
    case NX_CT_ENUM:
        if (!is_scalar)
            return wrong_type(ctx, f, v);
        return parse_enum(ctx, f, v, dst);
    case NX_CT_STRLIST:
        return parse_strlist(ctx, f, v, dst);
    case NX_CT_STRMAP:
        return parse_strmap(ctx, f, v, dst);
    case NX_CT_STRUCT:
        if (v->kind != NX_CNODE_MAP)
            return wrong_type(ctx, f, v);
        return nx_conf_parse_struct(ctx, f->sub, v, dst);
    case NX_CT_STRUCT_PTR: {
        if (v->kind != NX_CNODE_MAP)
            return wrong_type(ctx, f, v);
        void **pp = dst;
        if (!*pp) {
            *pp = nx_calloc(1, f->sub->size);
            nx_conf_defaults(f->sub, *pp);
        }
        return nx_conf_parse_struct(ctx, f->sub, v, *pp);
    }
    case NX_CT_LIST:
    case NX_CT_MAP:
        return parse_list(ctx, f, v, obj);
    case NX_CT_ANY: {
        json_t *j = nx_cnode_to_json(ctx, v);
        if (!j)
            return NX_ECONFIG;
        json_decref(*(json_t **)dst);
        *(json_t **)dst = j;
        return 0;
    }
    case NX_CT_CUSTOM:
        return f->custom->parse(ctx, f->name, v, dst);
    }
    return NX_EINVAL;
}

/* Clears a field's value back to nothing (before it is set to null). */
static void field_cleanup(const struct nx_conf_field *f, void *obj)
{
    void *dst = AT(obj, f->offset);

    switch (f->type) {
    case NX_CT_STRING:
        free(*(char **)dst);
        *(char **)dst = NULL;
        break;
    case NX_CT_STRLIST:
        nx_strv_free(*(char ***)dst);
        *(char ***)dst = NULL;
        break;
    case NX_CT_STRMAP:
        nx_strmap_cleanup(dst);
        break;
    case NX_CT_STRUCT:
        nx_conf_cleanup(f->sub, dst);
        break;
    case NX_CT_STRUCT_PTR:
        if (*(void **)dst)
            nx_conf_cleanup(f->sub, *(void **)dst);
        free(*(void **)dst);
        *(void **)dst = NULL;
        break;
    case NX_CT_LIST:
    case NX_CT_MAP:
        free_items(f->sub, *(void **)dst, *(size_t *)AT(obj, f->count_offset));
        *(void **)dst = NULL;
        *(size_t *)AT(obj, f->count_offset) = 0;
        break;
    case NX_CT_ANY:
        json_decref(*(json_t **)dst);
        *(json_t **)dst = NULL;
        break;
    case NX_CT_CUSTOM:
        if (f->custom->cleanup)
            f->custom->cleanup(dst);
        break;
    default:
        break;
    }
}

void nx_conf_defaults(const struct nx_conf_struct *desc, void *obj)
{
    struct nx_conf_ctx quiet = {0};

    if (desc->extra_keys || desc->is_open) {
        json_t **pe = AT(obj, desc->extra_offset);
        if (!*pe)
            *pe = json_object();
    }
    for (const struct nx_conf_field *f = desc->fields; f->name; f++) {
        if (f->type == NX_CT_STRUCT) {
            nx_conf_defaults(f->sub, AT(obj, f->offset));
        } else if (f->type == NX_CT_ENUM && !f->def) {
            *(int *)AT(obj, f->offset) = -1;
        } else if (f->type == NX_CT_STRLIST && !f->def) {
            char ***pl = AT(obj, f->offset);
            if (!*pl)
                *pl = nx_calloc(1, sizeof **pl);
        } else if (f->def) {
            struct nx_cnode n = {.kind = NX_CNODE_SCALAR, .text = (char *)f->def, .len = strlen(f->def)};
            int rc = parse_value(&quiet, f, &n, obj);
            NX_ASSERT(rc == 0);
        }
    }
}

static const struct nx_conf_field *find_field(const struct nx_conf_struct *desc, const char *name)
{
    for (const struct nx_conf_field *f = desc->fields; f->name; f++)
        if (strcmp(f->name, name) == 0)
            return f;
    return NULL;
}

static bool is_extra_key(const struct nx_conf_struct *desc, const char *name)
{
    if (desc->is_open)
        return true;
    for (size_t i = 0; desc->extra_keys && desc->extra_keys[i]; i++)
        if (strcmp(desc->extra_keys[i], name) == 0)
            return true;
    return false;
}

int nx_conf_parse_struct(struct nx_conf_ctx *ctx, const struct nx_conf_struct *desc,
                         const struct nx_cnode *node, void *obj)
{
    size_t nfields = 0;
    int errors_before = ctx->errors;
    char buf[96];

    while (desc->fields[nfields].name)
        nfields++;
    bool *seen = nx_calloc(nfields + 1, sizeof *seen);
    if (node->kind != NX_CNODE_MAP && !nx_cnode_is_null(node)) {
        nx_conf_error(ctx, node, "expected a mapping for %s, got %s", desc->name,
                      nx_cnode_describe(node, buf, sizeof buf));
        goto out;
    }
    for (size_t i = 0; i + 1 < node->n; i += 2) {
        const struct nx_cnode *key = node->kids[i], *val = node->kids[i + 1];
        const struct nx_conf_field *f = find_field(desc, key->text);
        if (!f) {
            if (is_extra_key(desc, key->text)) {
                json_t *j = nx_cnode_to_json(ctx, val);
                if (j)
                    json_object_set_new(*(json_t **)AT(obj, desc->extra_offset), key->text, j);
                continue;
            }
            const char *hint = nx_conf_suggest(key->text, desc->extra_keys, desc->fields);
            if (hint)
                nx_conf_error(ctx, key, "unknown key \"%s\" (did you mean \"%s\"?)", key->text, hint);
            else
                nx_conf_error(ctx, key, "unknown key \"%s\"", key->text);
            continue;
        }
        seen[f - desc->fields] = true;
        if (val->is_bad)
            continue;
        if (nx_cnode_is_null(val)) {
            if (f->flags & NX_CF_REQUIRED)
                nx_conf_error(ctx, val, "\"%s\" must not be null", f->name);
            else if (f->type == NX_CT_STRUCT_PTR || f->type == NX_CT_ANY || f->type == NX_CT_STRING)
                field_cleanup(f, obj);
            continue;
        }
        int before = ctx->errors;
        if (parse_value(ctx, f, val, obj) == 0 && ctx->errors == before && f->check)
            f->check(ctx, val, AT(obj, f->offset));
    }
    for (size_t i = 0; i < nfields; i++)
        if ((desc->fields[i].flags & NX_CF_REQUIRED) && !seen[i])
            nx_conf_error(ctx, node, "missing required key \"%s\"%s%s", desc->fields[i].name,
                          desc->name[0] == '"' ? " in " : "", desc->name[0] == '"' ? desc->name : "");
    if (desc->check && ctx->errors == errors_before)
        desc->check(ctx, node, obj);
out:
    free(seen);
    return ctx->errors == errors_before ? 0 : NX_ECONFIG;
}

void nx_conf_cleanup(const struct nx_conf_struct *desc, void *obj)
{
    if (!obj)
        return;
    for (const struct nx_conf_field *f = desc->fields; f->name; f++)
        field_cleanup(f, obj);
    if (desc->extra_keys || desc->is_open) {
        json_t **pe = AT(obj, desc->extra_offset);
        json_decref(*pe);
        *pe = NULL;
    }
    if (desc->has_key) {
        char **pk = AT(obj, desc->key_offset);
        free(*pk);
        *pk = NULL;
    }
    if (desc->cleanup)
        desc->cleanup(obj);
}

void nx_conf_check_http_url(struct nx_conf_ctx *ctx, const struct nx_cnode *val, void *dst)
{
    const char *s = *(char **)dst, *host = NULL;
    char buf[96];

    if (strncasecmp(s, "http://", 7) == 0)
        host = s + 7;
    else if (strncasecmp(s, "https://", 8) == 0)
        host = s + 8;
    bool ok = host && *host && *host != '/' && *host != '?' && *host != '#';
    for (const unsigned char *p = (const unsigned char *)s; ok && *p; p++)
        ok = *p > 0x20 && *p != 0x7f; /* (a name in another script: curl converts it) */
    if (!ok)
        nx_conf_error(ctx, val, "invalid URL %s (expected http://host[:port][/path] or https://...)",
                      nx_cnode_describe(val, buf, sizeof buf));
}

void nx_conf_check_http_url_or_empty(struct nx_conf_ctx *ctx, const struct nx_cnode *val, void *dst)
{
    if (**(char **)dst)
        nx_conf_check_http_url(ctx, val, dst);
}
