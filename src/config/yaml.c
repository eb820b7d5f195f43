/* YAML text -> a tree of nodes with positions (libyaml's event API), and nodes <-> JSON. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "config/schema.h"
#include "config/subst.h"
#include "core/alloc.h"
#include "core/error.h"

#define YAML_MAX_DEPTH 64

struct builder {
    struct nx_conf_ctx *ctx;
    yaml_parser_t parser;
    const char *data;
    size_t len;
    bool failed; /* a syntax error was reported */
};

/* libyaml marks are 0-based; ours are 1-based. */
static int mark_line(const yaml_mark_t *m)
{
    return (int)m->line + 1;
}

static int mark_col(const yaml_mark_t *m)
{
    return (int)m->column + 1;
}

static struct nx_cnode *node_new(enum nx_cnode_kind kind, int line, int col)
{
    struct nx_cnode *n = nx_calloc(1, sizeof *n);
    n->kind = kind;
    n->line = line;
    n->col = col;
    return n;
}

static void node_push(struct nx_cnode *parent, struct nx_cnode *kid)
{
    if ((parent->n & (parent->n - 1)) == 0) /* grow at powers of two */
        parent->kids = nx_realloc(parent->kids, (parent->n ? parent->n * 2 : 2) * sizeof *parent->kids);
    parent->kids[parent->n++] = kid;
}

void nx_cnode_free(struct nx_cnode *n)
{
    if (!n)
        return;
    for (size_t i = 0; i < n->n; i++)
        nx_cnode_free(n->kids[i]);
    free(n->kids);
    free(n->text);
    free(n->raw);
    free(n);
}

bool nx_cnode_is_null(const struct nx_cnode *n)
{
    if (!n || n->kind != NX_CNODE_SCALAR || n->is_quoted || n->raw)
        return false;
    return n->len == 0 || strcmp(n->text, "~") == 0 || strcmp(n->text, "null") == 0 ||
           strcmp(n->text, "Null") == 0 || strcmp(n->text, "NULL") == 0;
}

const struct nx_cnode *nx_cnode_get(const struct nx_cnode *map, const char *key)
{
    if (!map || map->kind != NX_CNODE_MAP)
        return NULL;
    for (size_t i = 0; i + 1 < map->n; i += 2)
        if (map->kids[i]->kind == NX_CNODE_SCALAR && strcmp(map->kids[i]->text, key) == 0)
            return map->kids[i + 1];
    return NULL;
}

const char *nx_cnode_describe(const struct nx_cnode *n, char *buf, size_t size)
{
    if (n->kind == NX_CNODE_MAP)
        return "a mapping";
    if (n->kind == NX_CNODE_SEQ)
        return "a list";
    if (nx_cnode_is_null(n))
        return "null";
    const char *s = n->raw ? n->raw : n->text;
    size_t len = strlen(s);
    if (len > 40)
        snprintf(buf, size, "\"%.37s...\"", s);
    else
        snprintf(buf, size, "\"%s\"", s);
    return buf;
}

/* ---- building ---- */

static void syntax_error(struct builder *b)
{
    yaml_parser_t *p = &b->parser;
    int line = (int)p->problem_mark.line + 1, col = (int)p->problem_mark.column + 1;

    if (p->error == YAML_READER_ERROR) {
        /* Reader errors carry a byte offset, not a mark. */
        line = 1;
        col = 1;
        for (size_t i = 0; i < p->problem_offset && i < b->len; i++) {
            if (b->data[i] == '\n') {
                line++;
                col = 1;
            } else {
                col++;
            }
        }
    }
    if (p->context)
        nx_diags_add(b->ctx->diags, b->ctx->file, line, col, "YAML syntax error: %s %s",
                     p->problem ? p->problem : "invalid YAML", p->context);
    else
        nx_diags_add(b->ctx->diags, b->ctx->file, line, col, "YAML syntax error: %s",
                     p->problem ? p->problem : "invalid YAML");
    b->ctx->errors++;
    b->failed = true;
}

static bool next_event(struct builder *b, yaml_event_t *ev)
{
    if (!yaml_parser_parse(&b->parser, ev)) {
        syntax_error(b);
        return false;
    }
    return true;
}

/* Skips the rest of a collection whose start event was already read. */
static bool skip_collection(struct builder *b)
{
    int depth = 1;
    while (depth > 0) {
        yaml_event_t ev;
        if (!next_event(b, &ev))
            return false;
        if (ev.type == YAML_SEQUENCE_START_EVENT || ev.type == YAML_MAPPING_START_EVENT)
            depth++;
        else if (ev.type == YAML_SEQUENCE_END_EVENT || ev.type == YAML_MAPPING_END_EVENT)
            depth--;
        yaml_event_delete(&ev);
    }
    return true;
}

static struct nx_cnode *build_node(struct builder *b, yaml_event_t *ev, bool is_key, int depth);

static struct nx_cnode *build_scalar(struct builder *b, yaml_event_t *ev, bool is_key)
{
    struct nx_cnode *n = node_new(NX_CNODE_SCALAR, mark_line(&ev->start_mark), mark_col(&ev->start_mark));
    char *resolved = NULL;

    n->len = ev->data.scalar.length;
    n->text = nx_strndup((const char *)ev->data.scalar.value, n->len);
    n->len = strlen(n->text); /* an escaped NUL ends the value */
    n->is_quoted = ev->data.scalar.style != YAML_PLAIN_SCALAR_STYLE;
    if (is_key)
        return n;
    if (nx_conf_subst(b->ctx, n, n->text, &resolved) < 0) {
        n->is_bad = true;
    } else if (resolved) {
        n->raw = n->text;
        n->text = resolved;
        n->len = strlen(resolved);
    }
    return n;
}

static struct nx_cnode *build_seq(struct builder *b, yaml_event_t *start, int depth)
{
    struct nx_cnode *n = node_new(NX_CNODE_SEQ, mark_line(&start->start_mark), mark_col(&start->start_mark));
    for (;;) {
        yaml_event_t ev;
        if (!next_event(b, &ev))
            goto fail;
        if (ev.type == YAML_SEQUENCE_END_EVENT) {
            yaml_event_delete(&ev);
            return n;
        }
        struct nx_cnode *kid = build_node(b, &ev, false, depth + 1);
        yaml_event_delete(&ev);
        if (b->failed) {
            nx_cnode_free(kid);
            goto fail;
        }
        if (kid)
            node_push(n, kid);
    }
fail:
    nx_cnode_free(n);
    return NULL;
}

static struct nx_cnode *build_map(struct builder *b, yaml_event_t *start, int depth)
{
    struct nx_cnode *n = node_new(NX_CNODE_MAP, mark_line(&start->start_mark), mark_col(&start->start_mark));
    for (;;) {
        yaml_event_t ev;
        struct nx_cnode *key, *val;
        if (!next_event(b, &ev))
            goto fail;
        if (ev.type == YAML_MAPPING_END_EVENT) {
            yaml_event_delete(&ev);
            return n;
        }
        key = build_node(b, &ev, true, depth + 1);
        yaml_event_delete(&ev);
        if (b->failed || !next_event(b, &ev)) {
            nx_cnode_free(key);
            goto fail;
        }
        val = build_node(b, &ev, false, depth + 1);
        yaml_event_delete(&ev);
        if (b->failed) {
            nx_cnode_free(key);
            nx_cnode_free(val);
            goto fail;
        }
        if (!key || !val) {
            nx_cnode_free(key);
            nx_cnode_free(val);
            continue;
        }
        if (key->kind != NX_CNODE_SCALAR) {
            nx_conf_error(b->ctx, key, "mapping keys must be plain strings");
            nx_cnode_free(key);
            nx_cnode_free(val);
            continue;
        }
        const struct nx_cnode *first = NULL;
        for (size_t i = 0; i < n->n && !first; i += 2)
            if (strcmp(n->kids[i]->text, key->text) == 0)
                first = n->kids[i];
        if (first) {
            nx_conf_error(b->ctx, key, "duplicate key \"%s\" (first at line %d, column %d)", key->text,
                          first->line, first->col);
            nx_cnode_free(key);
            nx_cnode_free(val);
            continue;
        }
        node_push(n, key);
        node_push(n, val);
    }
fail:
    nx_cnode_free(n);
    return NULL;
}

/* Returns NULL on a syntax error (b->failed) or for a node that was reported and dropped. */
static struct nx_cnode *build_node(struct builder *b, yaml_event_t *ev, bool is_key, int depth)
{
    int line = (int)ev->start_mark.line + 1, col = (int)ev->start_mark.column + 1;

    switch (ev->type) {
    case YAML_SCALAR_EVENT:
        return build_scalar(b, ev, is_key);
    case YAML_ALIAS_EVENT:
        nx_diags_add(b->ctx->diags, b->ctx->file, line, col, "YAML aliases (*%s) are not supported",
                     (const char *)ev->data.alias.anchor);
        b->ctx->errors++;
        return NULL;
    case YAML_SEQUENCE_START_EVENT:
    case YAML_MAPPING_START_EVENT:
        if (depth >= YAML_MAX_DEPTH) {
            nx_diags_add(b->ctx->diags, b->ctx->file, line, col, "nested more than %d levels deep",
                         YAML_MAX_DEPTH);
            b->ctx->errors++;
            skip_collection(b);
            return NULL;
        }
        if (ev->type == YAML_SEQUENCE_START_EVENT)
            return build_seq(b, ev, depth);
        return build_map(b, ev, depth);
    default:
        nx_diags_add(b->ctx->diags, b->ctx->file, line, col, "unexpected YAML event");
        b->ctx->errors++;
        b->failed = true;
        return NULL;
    }
}

int nx_cnode_parse_yaml(struct nx_conf_ctx *ctx, const char *data, size_t len, struct nx_cnode **out)
{
    struct builder b = {.ctx = ctx, .data = data, .len = len};
    struct nx_cnode *root = NULL;
    yaml_event_t ev;
    bool done = false;
    int rc = 0;

    *out = NULL;
    if (!yaml_parser_initialize(&b.parser))
        return NX_EINVAL;
    yaml_parser_set_input_string(&b.parser, (const unsigned char *)data, len);
    while (!done) {
        if (!next_event(&b, &ev))
            break;
        switch (ev.type) {
        case YAML_STREAM_END_EVENT:
            done = true;
            break;
        case YAML_DOCUMENT_START_EVENT:
            if (root) {
                nx_conf_error(ctx, &(struct nx_cnode){.line = (int)ev.start_mark.line + 1,
                                                      .col = (int)ev.start_mark.column + 1},
                              "only one YAML document per file");
                done = true;
            }
            break;
        case YAML_SCALAR_EVENT:
        case YAML_SEQUENCE_START_EVENT:
        case YAML_MAPPING_START_EVENT:
        case YAML_ALIAS_EVENT:
            nx_cnode_free(root);
            root = build_node(&b, &ev, false, 0);
            if (!root && !b.failed)
                root = node_new(NX_CNODE_SCALAR, 1, 1);
            break;
        default:
            break;
        }
        yaml_event_delete(&ev);
        if (b.failed)
            break;
    }
    yaml_parser_delete(&b.parser);
    if (b.failed) {
        nx_cnode_free(root);
        return NX_ECONFIG;
    }
    if (!root || nx_cnode_is_null(root)) {
        nx_cnode_free(root);
        root = node_new(NX_CNODE_MAP, 1, 1);
    }
    *out = root;
    return rc;
}

/* ---- JSON ---- */

static bool looks_numeric(const char *s)
{
    if (*s == '+' || *s == '-')
        s++;
    if (!*s)
        return false;
    bool digit = false;
    for (; *s; s++) {
        if (*s >= '0' && *s <= '9')
            digit = true;
        else if (*s != '.' && *s != 'e' && *s != 'E' && *s != '+' && *s != '-')
            return false;
    }
    return digit;
}

static json_t *scalar_to_json(struct nx_conf_ctx *ctx, const struct nx_cnode *n)
{
    if (!n->is_quoted) {
        const char *t = n->text;
        if (nx_cnode_is_null(n))
            return json_null();
        if (!strcmp(t, "true") || !strcmp(t, "True") || !strcmp(t, "TRUE"))
            return json_true();
        if (!strcmp(t, "false") || !strcmp(t, "False") || !strcmp(t, "FALSE"))
            return json_false();
        if (looks_numeric(t)) {
            char *end;
            errno = 0;
            long long v = strtoll(t, &end, 10);
            if (*end == '\0' && errno == 0)
                return json_integer(v);
            errno = 0;
            double d = strtod(t, &end);
            if (*end == '\0' && errno == 0 && isfinite(d))
                return json_real(d);
        }
    }
    json_t *s = json_stringn(n->text, n->len);
    if (!s)
        nx_conf_error(ctx, n, "value is not valid UTF-8");
    return s;
}

json_t *nx_cnode_to_json(struct nx_conf_ctx *ctx, const struct nx_cnode *n)
{
    json_t *j = NULL;

    switch (n->kind) {
    case NX_CNODE_SCALAR:
        return n->is_bad ? json_null() : scalar_to_json(ctx, n);
    case NX_CNODE_SEQ:
        j = json_array();
        for (size_t i = 0; i < n->n; i++) {
            json_t *k = nx_cnode_to_json(ctx, n->kids[i]);
            if (!k)
                goto fail;
            json_array_append_new(j, k);
        }
        return j;
    case NX_CNODE_MAP:
        j = json_object();
        for (size_t i = 0; i + 1 < n->n; i += 2) {
            json_t *k = nx_cnode_to_json(ctx, n->kids[i + 1]);
            if (!k)
                goto fail;
            if (json_object_set_new(j, n->kids[i]->text, k) < 0) {
                nx_conf_error(ctx, n->kids[i], "key is not valid UTF-8");
                goto fail;
            }
        }
        return j;
    }
fail:
    json_decref(j);
    return NULL;
}

struct nx_cnode *nx_cnode_from_json(const json_t *j)
{
    struct nx_cnode *n;
    char num[64];

    switch (json_typeof(j)) {
    case JSON_OBJECT: {
        const char *key;
        json_t *v;
        n = node_new(NX_CNODE_MAP, 0, 0);
        json_object_foreach((json_t *)j, key, v) {
            struct nx_cnode *k = node_new(NX_CNODE_SCALAR, 0, 0);
            k->text = nx_strdup(key);
            k->len = strlen(key);
            node_push(n, k);
            node_push(n, nx_cnode_from_json(v));
        }
        return n;
    }
    case JSON_ARRAY: {
        size_t i;
        json_t *v;
        n = node_new(NX_CNODE_SEQ, 0, 0);
        json_array_foreach(j, i, v)
            node_push(n, nx_cnode_from_json(v));
        return n;
    }
    case JSON_STRING:
        n = node_new(NX_CNODE_SCALAR, 0, 0);
        n->text = nx_strndup(json_string_value(j), json_string_length(j));
        n->len = strlen(n->text);
        n->is_quoted = true;
        return n;
    case JSON_INTEGER:
        snprintf(num, sizeof num, "%" JSON_INTEGER_FORMAT, json_integer_value(j));
        break;
    case JSON_REAL:
        snprintf(num, sizeof num, "%.17g", json_real_value(j));
        break;
    case JSON_TRUE:
        snprintf(num, sizeof num, "true");
        break;
    case JSON_FALSE:
        snprintf(num, sizeof num, "false");
        break;
    default:
        num[0] = '\0';
        break;
    }
    n = node_new(NX_CNODE_SCALAR, 0, 0);
    n->text = nx_strdup(num);
    n->len = strlen(num);
    return n;
}
