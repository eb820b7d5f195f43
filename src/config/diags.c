/* Diagnostics, listen addresses, "did you mean" and the small string containers. */
#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "config/schema.h"
#include "core/alloc.h"
#include "core/buf.h"
#include "core/error.h"
#include "core/redact.h"

void nx_diags_init(struct nx_diags *d)
{
    d->v = NULL;
    d->n = 0;
    d->cap = 0;
}

void nx_diags_cleanup(struct nx_diags *d)
{
    if (!d)
        return;
    for (size_t i = 0; i < d->n; i++) {
        free(d->v[i].file);
        free(d->v[i].msg);
    }
    free(d->v);
    nx_diags_init(d);
}

void nx_diags_add(struct nx_diags *d, const char *file, int line, int col, const char *fmt, ...)
{
    struct nx_buf b = NX_BUF_INIT, red = NX_BUF_INIT;
    va_list ap;

    va_start(ap, fmt);
    nx_buf_vprintf(&b, fmt, ap);
    va_end(ap);
    /* a diagnostic quotes what it found, which may be a password in a URL or a key */
    nx_redact_append(&red, nx_buf_cstr(&b), b.len);
    nx_buf_cleanup(&b);
    if (d->n == d->cap) {
        d->cap = d->cap ? d->cap * 2 : 8;
        d->v = nx_realloc(d->v, d->cap * sizeof *d->v);
    }
    d->v[d->n].file = nx_strdup(file ? file : "");
    d->v[d->n].line = line;
    d->v[d->n].col = col;
    d->v[d->n].msg = nx_buf_steal(&red);
    d->n++;
}

void nx_diags_print(const struct nx_diags *d, FILE *out)
{
    for (size_t i = 0; i < d->n; i++) {
        const struct nx_diag *g = &d->v[i];
        if (g->line > 0)
            fprintf(out, "%s:%d:%d: %s\n", g->file, g->line, g->col, g->msg);
        else if (g->file[0])
            fprintf(out, "%s: %s\n", g->file, g->msg);
        else
            fprintf(out, "%s\n", g->msg);
    }
}

void nx_diags_sort(struct nx_diags *d, size_t from)
{
    /* Insertion sort: stable, and the ranges are short. */
    for (size_t i = from + 1; i < d->n; i++) {
        struct nx_diag x = d->v[i];
        size_t j = i;
        while (j > from && strcmp(d->v[j - 1].file, x.file) == 0 &&
               (d->v[j - 1].line > x.line || (d->v[j - 1].line == x.line && d->v[j - 1].col > x.col))) {
            d->v[j] = d->v[j - 1];
            j--;
        }
        d->v[j] = x;
    }
}

void nx_conf_error(struct nx_conf_ctx *ctx, const struct nx_cnode *at, const char *fmt, ...)
{
    struct nx_buf b = NX_BUF_INIT;
    va_list ap;

    va_start(ap, fmt);
    nx_buf_vprintf(&b, fmt, ap);
    va_end(ap);
    ctx->errors++;
    if (ctx->diags)
        nx_diags_add(ctx->diags, ctx->file, at ? at->line : 0, at ? at->col : 0, "%s", nx_buf_cstr(&b));
    nx_buf_cleanup(&b);
}

/* ---- listen addresses ---- */

static bool is_host_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '-' || c == '_';
}

int nx_listen_parse(const char *s, struct nx_listen *out)
{
    const char *host = "127.0.0.1";
    size_t hlen = strlen(host);
    const char *port;
    struct nx_listen l;

    if (!s || !*s)
        return NX_EINVAL;
    if (s[0] == '[') {
        const char *end = strchr(s, ']');
        if (!end || end[1] != ':')
            return NX_EINVAL;
        host = s + 1;
        hlen = (size_t)(end - host);
        port = end + 2;
        char tmp[64];
        struct in6_addr a6;
        if (hlen == 0 || hlen >= sizeof tmp)
            return NX_EINVAL;
        memcpy(tmp, host, hlen);
        tmp[hlen] = '\0';
        if (inet_pton(AF_INET6, tmp, &a6) != 1)
            return NX_EINVAL;
    } else {
        const char *colon = strrchr(s, ':');
        if (colon) {
            if (strchr(s, ':') != colon)
                return NX_EINVAL; /* bare IPv6 needs brackets */
            if (colon != s) {
                host = s;
                hlen = (size_t)(colon - s);
            }
            port = colon + 1;
        } else {
            port = s;
        }
        for (size_t i = 0; i < hlen; i++)
            if (!is_host_char(host[i]))
                return NX_EINVAL;
    }
    if (hlen == 0 || hlen >= sizeof l.host || !*port || strlen(port) > 9)
        return NX_EINVAL;
    for (const char *p = port; *p; p++)
        if (*p < '0' || *p > '9')
            return NX_EINVAL;
    long v = strtol(port, NULL, 10);
    if (v > 65535)
        return NX_ERANGE;
    memcpy(l.host, host, hlen);
    l.host[hlen] = '\0';
    l.port = (int)v;
    *out = l;
    return 0;
}

bool nx_listen_is_loopback(const struct nx_listen *l)
{
    struct in_addr a4;
    struct in6_addr a6;

    if (strcmp(l->host, "localhost") == 0)
        return true;
    if (inet_pton(AF_INET, l->host, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    if (inet_pton(AF_INET6, l->host, &a6) == 1)
        return IN6_IS_ADDR_LOOPBACK(&a6);
    return false;
}

static int listen_parse(struct nx_conf_ctx *ctx, const char *name, const struct nx_cnode *val, void *dst)
{
    char what[96];
    int rc;

    if (val->kind != NX_CNODE_SCALAR) {
        nx_conf_error(ctx, val, "expected an address (host:port) for \"%s\", got %s", name,
                      nx_cnode_describe(val, what, sizeof what));
        return NX_ECONFIG;
    }
    rc = nx_listen_parse(val->text, dst);
    if (rc == NX_ERANGE) {
        const char *colon = strrchr(val->text, ':');
        if (val->raw)
            nx_conf_error(ctx, val, "port in %s out of range (0-65535)",
                          nx_cnode_describe(val, what, sizeof what));
        else
            nx_conf_error(ctx, val, "port %s out of range (0-65535)", colon ? colon + 1 : val->text);
        return NX_ECONFIG;
    }
    if (rc < 0) {
        nx_conf_error(ctx, val, "invalid address %s for \"%s\" (expected host:port, e.g. 127.0.0.1:8080)",
                      nx_cnode_describe(val, what, sizeof what), name);
        return NX_ECONFIG;
    }
    return 0;
}

const struct nx_conf_custom nx_conf_listen_type = {
    .what = "an address (host:port)",
    .parse = listen_parse,
    .cleanup = NULL,
};

/* ---- did you mean ---- */

/* Optimal string alignment distance: insertions, deletions, substitutions and swaps of two
 * neighbouring letters ("modle" -> "model") each cost one. */
static size_t edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    unsigned char d[33][33];

    if (la >= NX_ARRAY_LEN(d) || lb >= NX_ARRAY_LEN(d))
        return (size_t)-1;
    for (size_t i = 0; i <= la; i++)
        d[i][0] = (unsigned char)i;
    for (size_t j = 0; j <= lb; j++)
        d[0][j] = (unsigned char)j;
    for (size_t i = 1; i <= la; i++) {
        for (size_t j = 1; j <= lb; j++) {
            unsigned best = d[i - 1][j - 1] + (a[i - 1] == b[j - 1] ? 0u : 1u);
            if (d[i - 1][j] + 1u < best)
                best = d[i - 1][j] + 1u;
            if (d[i][j - 1] + 1u < best)
                best = d[i][j - 1] + 1u;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] && d[i - 2][j - 2] + 1u < best)
                best = d[i - 2][j - 2] + 1u;
            d[i][j] = (unsigned char)best;
        }
    }
    return d[la][lb];
}

static void consider(const char *word, const char *cand, const char **best, size_t *best_d)
{
    size_t d = edit_distance(word, cand);
    if (d < *best_d) {
        *best_d = d;
        *best = cand;
    }
}

const char *nx_conf_suggest(const char *word, const char *const *cands, const struct nx_conf_field *fields)
{
    const char *best = NULL;
    size_t best_d = (size_t)-1;
    size_t len = strlen(word);

    for (size_t i = 0; cands && cands[i]; i++)
        consider(word, cands[i], &best, &best_d);
    for (size_t i = 0; fields && fields[i].name; i++)
        consider(word, fields[i].name, &best, &best_d);
    if (!best)
        return NULL;
    /* Near enough to be a typo: one edit for short words, up to a third of the length. */
    size_t limit = len <= 4 ? 1 : len / 3;
    if (limit > 3)
        limit = 3;
    return best_d <= limit ? best : NULL;
}

/* ---- containers ---- */

const char *nx_strmap_get(const struct nx_strmap *m, const char *key)
{
    for (size_t i = 0; i < m->n; i++)
        if (strcmp(m->keys[i], key) == 0)
            return m->vals[i];
    return NULL;
}

void nx_strmap_cleanup(struct nx_strmap *m)
{
    for (size_t i = 0; i < m->n; i++) {
        free(m->keys[i]);
        free(m->vals[i]);
    }
    free(m->keys);
    free(m->vals);
    m->keys = NULL;
    m->vals = NULL;
    m->n = 0;
}

char *const *nx_strlistmap_get(const struct nx_strlistmap *m, const char *key)
{
    for (size_t i = 0; i < m->n; i++)
        if (strcmp(m->keys[i], key) == 0)
            return m->lists[i];
    return NULL;
}

void nx_strv_free(char **v)
{
    for (size_t i = 0; v && v[i]; i++)
        free(v[i]);
    free(v);
}
