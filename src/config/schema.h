#ifndef NX_CONFIG_SCHEMA_H
#define NX_CONFIG_SCHEMA_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config/config.h"

/* The config engine: YAML is read into a tree of nodes that keep their positions, ${}
 * placeholders resolved in scalar values, then walked against declarative field tables (in the
 * style of nginx's command tables). Other modules (channels) describe their own structs with a
 * table and call nx_conf_parse_struct on their plugins/<name>.yaml node. */

/* ---- nodes ---- */

enum nx_cnode_kind { NX_CNODE_SCALAR, NX_CNODE_SEQ, NX_CNODE_MAP };

struct nx_cnode {
    enum nx_cnode_kind kind;
    int line; /* 1-based; 0 when unknown (a tree converted from JSON) */
    int col;
    char *text;      /* SCALAR: the value, ${} resolved */
    size_t len;
    char *raw;       /* SCALAR: the text as written when it held a placeholder, else NULL; messages
                      * quote this one so a resolved secret never reaches a diagnostic */
    bool is_quoted;  /* SCALAR: '...', "...", | or > (never null, bool or a number) */
    bool is_bad;     /* SCALAR: resolving failed, already reported; the walker skips it */
    struct nx_cnode **kids; /* SEQ: the items; MAP: key, value, key, value... */
    size_t n;        /* number of kids (twice the pairs for a MAP) */
};

struct nx_conf_ctx {
    struct nx_diags *diags;
    const char *file; /* display path for diagnostics */
    const char *dir;  /* base for relative ${file:} paths; NULL = current directory */
    void *user;       /* for check callbacks */
    int errors;       /* count added through this context */
    struct nx_buf *file_refs; /* when set: each ${file:} read, its real path and text (each NUL-ended) */
};

/* Adds "file:line:col: message" at node `at` (may be NULL: position 0:0). */
void nx_conf_error(struct nx_conf_ctx *ctx, const struct nx_cnode *at, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Parses one YAML document into *out (an empty document gives an empty MAP at 1:1), resolving
 * placeholders in scalar values (config/subst.h rules). Duplicate keys, aliases and bad
 * placeholders are reported and dropped; a syntax error is reported and stops: returns
 * NX_ECONFIG and *out is NULL. Otherwise returns 0 (even when other errors were reported). */
int nx_cnode_parse_yaml(struct nx_conf_ctx *ctx, const char *data, size_t len, struct nx_cnode **out);
void nx_cnode_free(struct nx_cnode *n);
/* A plain null, ~ or empty scalar (not quoted, not from a placeholder). */
bool nx_cnode_is_null(const struct nx_cnode *n);
/* The value of `key` in a MAP node, or NULL. */
const struct nx_cnode *nx_cnode_get(const struct nx_cnode *map, const char *key);
/* YAML 1.2 core typing for plain scalars (null, true/false, integers, floats), strings otherwise.
 * Returns NULL (after reporting) for text that is not UTF-8. */
json_t *nx_cnode_to_json(struct nx_conf_ctx *ctx, const struct nx_cnode *n);
/* A tree with no positions from a JSON value (to validate JSON against a table). */
struct nx_cnode *nx_cnode_from_json(const json_t *j);
/* How a node is quoted in messages: "value" for scalars (raw text if substituted), "a mapping"... */
const char *nx_cnode_describe(const struct nx_cnode *n, char *buf, size_t size);

/* ---- field tables ---- */

enum nx_conf_type {
    NX_CT_STRING,     /* char * */
    NX_CT_BOOL,       /* bool */
    NX_CT_INT,        /* signed integer of the field's size; min/max */
    NX_CT_UINT,       /* unsigned integer of the field's size; min/max */
    NX_CT_DOUBLE,     /* double; min/max when min < max */
    NX_CT_SIZE,       /* unsigned integer: 4MB, 32KiB, 1048576 (K = Ki = 1024) */
    NX_CT_DURATION,   /* unsigned integer in ms: 500ms, 30s, 5m, 24h, 1d, 1h30m, 1500 (= ms) */
    NX_CT_ENUM,       /* int: index into `choices`; -1 when unset and no default */
    NX_CT_STRLIST,    /* char **, NULL-terminated, never NULL after defaults */
    NX_CT_STRMAP,     /* struct nx_strmap */
    NX_CT_STRUCT,     /* nested struct at offset, fields of `sub` relative to it */
    NX_CT_STRUCT_PTR, /* pointer to a `sub` struct; NULL when absent or null */
    NX_CT_LIST,       /* sequence of `sub` structs: pointer at offset, size_t at count_offset */
    NX_CT_MAP,        /* mapping name -> `sub` struct (sub->key_offset receives the name) */
    NX_CT_ANY,        /* json_t *, free-form; NULL when absent */
    NX_CT_CUSTOM,     /* `custom` parses and cleans up */
};

enum {
    NX_CF_REQUIRED = 1 << 0, /* absent -> "missing required key" at the parent mapping */
};

struct nx_conf_ctx;
struct nx_conf_struct;

struct nx_conf_custom {
    const char *what; /* for "expected <what> for ..." */
    /* Called with a non-null node; reports its own errors, returns 0 or NX_ECONFIG. */
    int (*parse)(struct nx_conf_ctx *ctx, const char *name, const struct nx_cnode *val, void *dst);
    void (*cleanup)(void *dst);
};

/* Called after a field parsed cleanly, to check the value further. Reports through ctx. */
typedef void (*nx_conf_check_fn)(struct nx_conf_ctx *ctx, const struct nx_cnode *val, void *dst);
/* Called after a struct parsed with no errors inside it; node is its mapping. */
typedef void (*nx_conf_struct_check_fn)(struct nx_conf_ctx *ctx, const struct nx_cnode *node, void *obj);

struct nx_conf_field {
    const char *name; /* NULL ends a table */
    enum nx_conf_type type;
    size_t offset;
    size_t size;         /* storage width (integers) */
    size_t count_offset; /* LIST, MAP: where the size_t count lives */
    const struct nx_conf_struct *sub;
    const char *const *choices; /* ENUM: NULL-terminated */
    const struct nx_conf_custom *custom;
    nx_conf_check_fn check;
    const char *def;  /* default, written as a YAML scalar ("127.0.0.1:8080", "10s", "8MiB") */
    int64_t min;      /* integers, sizes, durations, doubles: range when min < max */
    int64_t max;
    unsigned flags;
};

struct nx_conf_struct {
    const char *name;
    size_t size;                      /* for STRUCT_PTR, LIST and MAP items */
    const struct nx_conf_field *fields;
    const char *const *extra_keys;    /* other accepted keys, collected as JSON; NULL-terminated */
    bool is_open;                     /* accept any other key into extra */
    size_t extra_offset;              /* json_t * object (when extra_keys or is_open), never NULL */
    bool has_key;                     /* MAP items: char * at key_offset receives the name */
    size_t key_offset;
    nx_conf_struct_check_fn check;
    void (*cleanup)(void *obj);       /* frees what the table does not describe */
};

#define NX_FIELD(nm, ty, T, f)                                                                     \
    .name = (nm), .type = (ty), .offset = offsetof(T, f), .size = sizeof(((T *)0)->f)
#define NX_FIELD_LIST(nm, ty, T, f, nf)                                                            \
    NX_FIELD(nm, ty, T, f), .count_offset = offsetof(T, nf)

/* A nested mapping whose fields' offsets are relative to the enclosing object (for members that
 * are anonymous structs, or flat C fields grouped under a YAML key). */
#define NX_GROUP(nm, subdesc) .name = (nm), .type = NX_CT_STRUCT, .offset = 0, .sub = (subdesc)

/* Sets every field of obj to its default (obj must be zeroed first). */
void nx_conf_defaults(const struct nx_conf_struct *desc, void *obj);
/* Walks a MAP node (or a null scalar) into obj, which must hold its defaults already
 * (nx_conf_defaults): unknown keys, wrong types, bad values and missing required keys are
 * reported through ctx. Returns 0 when nothing was reported, else NX_ECONFIG (obj is still
 * valid and must be cleaned up with nx_conf_cleanup either way). */
int nx_conf_parse_struct(struct nx_conf_ctx *ctx, const struct nx_conf_struct *desc,
                         const struct nx_cnode *node, void *obj);
/* Frees what obj owns (not obj). */
void nx_conf_cleanup(const struct nx_conf_struct *desc, void *obj);

/* The closest of `cands` (NULL-terminated arrays, up to two) to `word` when near enough to be a
 * typo, else NULL. */
const char *nx_conf_suggest(const char *word, const char *const *cands, const struct nx_conf_field *fields);

/* A field check (.check) for an HTTP endpoint (a char * field): http:// or https://, a host,
 * no space or control character. nx_conf_check_http_url_or_empty also takes "" (meaning a default). */
void nx_conf_check_http_url(struct nx_conf_ctx *ctx, const struct nx_cnode *val, void *dst);
void nx_conf_check_http_url_or_empty(struct nx_conf_ctx *ctx, const struct nx_cnode *val, void *dst);

/* Shared custom type: a listen address (struct nx_listen). */
extern const struct nx_conf_custom nx_conf_listen_type;
/* Shared custom type: map of string lists (agents' outbound_allowlist). */
extern const struct nx_conf_custom nx_conf_strlistmap_type;

void nx_strmap_cleanup(struct nx_strmap *m);
void nx_strv_free(char **v);

#endif
