#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/error.h"
#include "tools/internal.h"

/* A JSON Schema subset for tool arguments, which come from the model and are therefore
 * untrusted; schemas may come from MCP servers, so they are untrusted too. Keywords: type
 * (a name or an array of names), properties, required, additionalProperties (false or a
 * schema), enum, items, minimum, maximum, minLength, maxLength, minItems, maxItems. Anything
 * else is ignored. Recursion is bounded by MAX_DEPTH; a malformed keyword is ignored rather
 * than trusted. Messages name the path: argument "headers.Accept": expected a string, got
 * number. */

#define MAX_DEPTH 64
#define MAX_PATH 256

struct vctx {
    char *err;
    size_t errlen;
    char path[MAX_PATH];
};

/* ---- messages ---------------------------------------------------------------------------- */

static const char *type_of(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "object";
    case JSON_ARRAY:
        return "array";
    case JSON_STRING:
        return "string";
    case JSON_INTEGER:
    case JSON_REAL:
        return "number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "boolean";
    default:
        return "null";
    }
}

static const char *article(const char *type)
{
    return strchr("aeiou", type[0]) ? "an" : "a";
}

/* Writes "<subject>: <message>" into v->err; the subject is argument "path" or "arguments". */
static void fail(struct vctx *v, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(struct vctx *v, const char *fmt, ...)
{
    char msg[512];
    va_list ap;

    if (!v->err || v->errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (v->path[0])
        snprintf(v->err, v->errlen, "argument \"%s\": %s", v->path, msg);
    else
        snprintf(v->err, v->errlen, "arguments: %s", msg);
}

/* A message with no subject prefix. */
static void fail_bare(struct vctx *v, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail_bare(struct vctx *v, const char *fmt, ...)
{
    va_list ap;

    if (!v->err || v->errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(v->err, v->errlen, fmt, ap);
    va_end(ap);
}

/* Appends ".key" or "[i]" to the path; returns the old length to restore. */
static size_t path_push(struct vctx *v, const char *key, size_t index)
{
    size_t old = strlen(v->path);
    size_t room = sizeof v->path - old;

    if (key)
        snprintf(v->path + old, room, "%s%s", old ? "." : "", key);
    else
        snprintf(v->path + old, room, "[%zu]", index);
    return old;
}

/* ---- keywords ---------------------------------------------------------------------------- */

static bool is_integral(const json_t *v)
{
    double d;

    if (json_is_integer(v))
        return true;
    if (!json_is_real(v))
        return false;
    d = json_real_value(v);
    return isfinite(d) && d == floor(d);
}

static bool type_matches(const char *name, const json_t *v)
{
    if (strcmp(name, "object") == 0)
        return json_is_object(v);
    if (strcmp(name, "array") == 0)
        return json_is_array(v);
    if (strcmp(name, "string") == 0)
        return json_is_string(v);
    if (strcmp(name, "integer") == 0)
        return is_integral(v);
    if (strcmp(name, "number") == 0)
        return json_is_number(v);
    if (strcmp(name, "boolean") == 0)
        return json_is_boolean(v);
    if (strcmp(name, "null") == 0)
        return json_is_null(v);
    return true; /* an unknown type name constrains nothing */
}

static int check_type(struct vctx *v, const json_t *type, const json_t *val)
{
    char expected[160];
    size_t i, n = 0;
    const json_t *t;

    if (json_is_string(type)) {
        const char *name = json_string_value(type);
        if (type_matches(name, val))
            return 0;
        snprintf(expected, sizeof expected, "%s %s", article(name), name);
    } else if (json_is_array(type) && json_array_size(type) > 0) {
        expected[0] = '\0';
        json_array_foreach(type, i, t) {
            if (!json_is_string(t))
                continue;
            if (type_matches(json_string_value(t), val))
                return 0;
            n += (size_t)snprintf(expected + n, n < sizeof expected ? sizeof expected - n : 0, "%s%s",
                                  n ? " or " : "", json_string_value(t));
            if (n >= sizeof expected)
                n = sizeof expected - 1;
        }
        if (!expected[0])
            return 0;
    } else {
        return 0;
    }
    fail(v, "expected %s, got %s", expected, type_of(val));
    return NX_EINVAL;
}

static int check_enum(struct vctx *v, const json_t *en, const json_t *val)
{
    struct nx_buf list = NX_BUF_INIT;
    size_t i;
    const json_t *e;

    if (!json_is_array(en) || json_array_size(en) == 0)
        return 0;
    json_array_foreach(en, i, e) {
        if (json_equal((json_t *)e, (json_t *)val))
            return 0;
    }
    json_array_foreach(en, i, e) {
        char *s = json_dumps(e, JSON_ENCODE_ANY | JSON_COMPACT);
        if (list.len > 200) {
            nx_buf_puts(&list, ", ...");
            free(s);
            break;
        }
        nx_buf_printf(&list, "%s%s", i ? ", " : "", s ? s : "?");
        free(s);
    }
    fail(v, "must be one of %s", nx_buf_cstr(&list));
    nx_buf_cleanup(&list);
    return NX_EINVAL;
}

/* The keyword as a non-negative count, or -1 when absent or malformed. */
static long long count_kw(const json_t *schema, const char *key)
{
    const json_t *k = json_object_get(schema, key);

    if (json_is_integer(k) && json_integer_value(k) >= 0)
        return json_integer_value(k);
    if (json_is_real(k) && json_real_value(k) >= 0 && json_real_value(k) < 9e18)
        return (long long)json_real_value(k);
    return -1;
}

static int check_bounds(struct vctx *v, const json_t *schema, const json_t *val)
{
    const json_t *mn = json_object_get(schema, "minimum");
    const json_t *mx = json_object_get(schema, "maximum");
    double d = json_number_value(val);
    char num[64];

    if (json_is_number(mn) && d < json_number_value(mn)) {
        snprintf(num, sizeof num, "%.17g", json_number_value(mn));
        fail(v, "must be >= %s", num);
        return NX_EINVAL;
    }
    if (json_is_number(mx) && d > json_number_value(mx)) {
        snprintf(num, sizeof num, "%.17g", json_number_value(mx));
        fail(v, "must be <= %s", num);
        return NX_EINVAL;
    }
    return 0;
}

static int check_count(struct vctx *v, const json_t *schema, size_t have, const char *kmin,
                       const char *kmax, const char *unit)
{
    long long mn = count_kw(schema, kmin), mx = count_kw(schema, kmax);
    char num[32];

    if (mn >= 0 && (unsigned long long)have < (unsigned long long)mn) {
        snprintf(num, sizeof num, "%lld", mn);
        fail(v, "must have at least %s %s", num, unit);
        return NX_EINVAL;
    }
    if (mx >= 0 && (unsigned long long)have > (unsigned long long)mx) {
        snprintf(num, sizeof num, "%lld", mx);
        fail(v, "must have at most %s %s", num, unit);
        return NX_EINVAL;
    }
    return 0;
}

static int check(struct vctx *v, const json_t *schema, const json_t *val, int depth);

static int check_object(struct vctx *v, const json_t *schema, const json_t *val, int depth)
{
    const json_t *props = json_object_get(schema, "properties");
    const json_t *req = json_object_get(schema, "required");
    const json_t *extra = json_object_get(schema, "additionalProperties");
    const char *key;
    const json_t *x;
    size_t i;
    int rc;

    if (!json_is_object(props))
        props = NULL;
    if (json_is_array(req)) {
        json_array_foreach(req, i, x) {
            if (!json_is_string(x) || json_object_get(val, json_string_value(x)))
                continue;
            size_t old = path_push(v, json_string_value(x), 0);
            fail_bare(v, "missing required argument \"%s\"", v->path);
            v->path[old] = '\0';
            return NX_EINVAL;
        }
    }
    json_object_foreach((json_t *)val, key, x) {
        const json_t *sub = props ? json_object_get(props, key) : NULL;
        size_t old;

        if (!sub && json_is_false(extra)) {
            struct nx_buf names = NX_BUF_INIT;
            const char *pk;
            const json_t *pv;

            old = path_push(v, key, 0);
            if (props) {
                json_object_foreach((json_t *)props, pk, pv) {
                    NX_UNUSED(pv);
                    nx_buf_printf(&names, "%s%s", names.len ? ", " : "", pk);
                }
            }
            fail_bare(v, "unexpected argument \"%s\" (allowed: %s)", v->path,
                      names.len ? nx_buf_cstr(&names) : "none");
            nx_buf_cleanup(&names);
            v->path[old] = '\0';
            return NX_EINVAL;
        }
        if (!sub && json_is_object(extra))
            sub = extra;
        if (!sub)
            continue;
        old = path_push(v, key, 0);
        rc = check(v, sub, x, depth + 1);
        v->path[old] = '\0';
        if (rc < 0)
            return rc;
    }
    return check_count(v, schema, json_object_size(val), "minProperties", "maxProperties",
                       "properties");
}

static int check_array(struct vctx *v, const json_t *schema, const json_t *val, int depth)
{
    const json_t *items = json_object_get(schema, "items");
    const json_t *x;
    size_t i;
    int rc;

    if ((rc = check_count(v, schema, json_array_size(val), "minItems", "maxItems", "items")) < 0)
        return rc;
    if (!json_is_object(items))
        return 0;
    json_array_foreach(val, i, x) {
        size_t old = path_push(v, NULL, i);
        rc = check(v, items, x, depth + 1);
        v->path[old] = '\0';
        if (rc < 0)
            return rc;
    }
    return 0;
}

static int check(struct vctx *v, const json_t *schema, const json_t *val, int depth)
{
    int rc;

    if (!json_is_object(schema))
        return 0; /* true, or a malformed sub-schema: constrains nothing */
    if (depth > MAX_DEPTH) {
        fail(v, "nested too deeply");
        return NX_EINVAL;
    }
    if ((rc = check_type(v, json_object_get(schema, "type"), val)) < 0)
        return rc;
    if ((rc = check_enum(v, json_object_get(schema, "enum"), val)) < 0)
        return rc;
    if (json_is_number(val))
        return check_bounds(v, schema, val);
    if (json_is_string(val))
        return check_count(v, schema, nx_utf8_count(json_string_value(val), json_string_length(val)),
                           "minLength", "maxLength", "characters");
    if (json_is_object(val))
        return check_object(v, schema, val, depth);
    if (json_is_array(val))
        return check_array(v, schema, val, depth);
    return 0;
}

int nx_schema_validate(const json_t *schema, const json_t *value, char *err, size_t errlen)
{
    struct vctx v;

    memset(&v, 0, sizeof v);
    v.err = err;
    v.errlen = errlen;
    if (err && errlen)
        err[0] = '\0';
    if (!value)
        return NX_EINVAL;
    return check(&v, schema, value, 0);
}
