/* ${VAR}, ${VAR:-default}, ${VAR-default}, ${file:path} and $${ in scalar values. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config/subst.h"
#include "core/alloc.h"
#include "core/buf.h"
#include "core/error.h"

#define SUBST_MAX_DEPTH 8
#define SUBST_MAX_FILE (1024 * 1024)

static bool has_dotdot(const char *p)
{
    const char *s = p;
    while (*s) {
        const char *e = strchr(s, '/');
        size_t n = e ? (size_t)(e - s) : strlen(s);
        if (n == 2 && s[0] == '.' && s[1] == '.')
            return true;
        if (!e)
            break;
        s = e + 1;
    }
    return false;
}

/* Reads a small regular file into b (without blocking on FIFOs or devices). */
static int read_small_file(const char *path, struct nx_buf *b, int *err)
{
    char chunk[4096];
    struct stat st;
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    int rc = 0;

    if (fd < 0) {
        *err = errno;
        return NX_EIO;
    }
    if (fstat(fd, &st) < 0) {
        *err = errno;
        rc = NX_EIO;
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        *err = EINVAL;
        rc = NX_EINVAL;
        goto out;
    }
    for (;;) {
        ssize_t r = read(fd, chunk, sizeof chunk);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            *err = errno;
            rc = NX_EIO;
            goto out;
        }
        if (r == 0)
            break;
        if (b->len + (size_t)r > SUBST_MAX_FILE) {
            *err = EFBIG;
            rc = NX_ETOOBIG;
            goto out;
        }
        nx_buf_append(b, chunk, (size_t)r);
    }
out:
    close(fd);
    return rc;
}

static int subst_file(struct nx_conf_ctx *ctx, const struct nx_cnode *at, const char *path,
                      struct nx_buf *out)
{
    struct nx_buf full = NX_BUF_INIT;
    struct nx_buf data = NX_BUF_INIT;
    int err = 0;
    int rc = 0;

    if (!*path) {
        nx_conf_error(ctx, at, "empty path in ${file:}");
        return NX_ECONFIG;
    }
    if (has_dotdot(path)) {
        nx_conf_error(ctx, at, "${file:%s}: paths must not contain \"..\"", path);
        return NX_ECONFIG;
    }
    if (path[0] != '/' && ctx->dir)
        nx_buf_printf(&full, "%s/%s", ctx->dir, path);
    else
        nx_buf_puts(&full, path);
    rc = read_small_file(nx_buf_cstr(&full), &data, &err);
    if (rc == NX_EINVAL) {
        nx_conf_error(ctx, at, "cannot read ${file:%s}: not a regular file", path);
        rc = NX_ECONFIG;
    } else if (rc == NX_ETOOBIG) {
        nx_conf_error(ctx, at, "cannot read ${file:%s}: larger than %d bytes", path, SUBST_MAX_FILE);
        rc = NX_ECONFIG;
    } else if (rc < 0) {
        nx_conf_error(ctx, at, "cannot read ${file:%s}: %s", path, strerror(err));
        rc = NX_ECONFIG;
    } else {
        size_t n = data.len;
        char real[PATH_MAX];
        while (n > 0 && (data.data[n - 1] == ' ' || data.data[n - 1] == '\t' || data.data[n - 1] == '\n' ||
                         data.data[n - 1] == '\r'))
            n--;
        if (memchr(data.data ? data.data : "", '\0', n)) {
            nx_conf_error(ctx, at, "cannot use ${file:%s}: it holds a NUL byte", path);
            rc = NX_ECONFIG;
        } else if (n) {
            nx_buf_append(out, data.data, n);
            if (ctx->file_refs && realpath(nx_buf_cstr(&full), real)) { /* its path, then its text */
                nx_buf_append(ctx->file_refs, real, strlen(real) + 1);
                nx_buf_append(ctx->file_refs, data.data, n);
                nx_buf_putc(ctx->file_refs, '\0');
            }
        }
    }
    nx_buf_cleanup(&full);
    nx_buf_cleanup(&data);
    return rc;
}

static bool is_name_start(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
}

static bool is_name_char(char c)
{
    return is_name_start(c) || (c >= '0' && c <= '9');
}

static int expand(struct nx_conf_ctx *ctx, const struct nx_cnode *at, const char *in, size_t len,
                  struct nx_buf *out, int depth);

/* One placeholder: `inner` is what sits between "${" and the matching "}". */
static int expand_one(struct nx_conf_ctx *ctx, const struct nx_cnode *at, const char *inner, size_t n,
                      struct nx_buf *out, int depth)
{
    char *body = nx_strndup(inner, n);
    int rc = 0;
    size_t i = 0;

    if (strncmp(body, "file:", 5) == 0) {
        rc = subst_file(ctx, at, body + 5, out);
        goto out;
    }
    if (!is_name_start(body[0]))
        goto bad;
    while (is_name_char(body[i]))
        i++;
    char *name = nx_strndup(body, i);
    const char *val = getenv(name);
    if (body[i] == '\0') {
        if (!val) {
            nx_conf_error(ctx, at,
                          "environment variable \"%s\" is not set (use ${%s:-default} for a default)", name,
                          name);
            rc = NX_ECONFIG;
        } else {
            nx_buf_puts(out, val);
        }
    } else if (body[i] == ':' && body[i + 1] == '-') {
        if (val && *val)
            nx_buf_puts(out, val);
        else
            rc = expand(ctx, at, body + i + 2, strlen(body + i + 2), out, depth + 1);
    } else if (body[i] == '-') {
        if (val)
            nx_buf_puts(out, val);
        else
            rc = expand(ctx, at, body + i + 1, strlen(body + i + 1), out, depth + 1);
    } else {
        free(name);
        goto bad;
    }
    free(name);
    goto out;
bad:
    nx_conf_error(ctx, at,
                  "invalid placeholder \"${%s}\" (expected ${VAR}, ${VAR:-default}, ${VAR-default} or "
                  "${file:path})",
                  body);
    rc = NX_ECONFIG;
out:
    free(body);
    return rc;
}

static int expand(struct nx_conf_ctx *ctx, const struct nx_cnode *at, const char *in, size_t len,
                  struct nx_buf *out, int depth)
{
    int rc = 0;
    size_t i = 0;

    if (depth > SUBST_MAX_DEPTH) {
        nx_conf_error(ctx, at, "placeholders nested more than %d deep", SUBST_MAX_DEPTH);
        return NX_ECONFIG;
    }
    while (i < len) {
        if (in[i] == '$' && i + 2 < len && in[i + 1] == '$' && in[i + 2] == '{') {
            nx_buf_puts(out, "${");
            i += 3;
            continue;
        }
        if (in[i] != '$' || i + 1 >= len || in[i + 1] != '{') {
            nx_buf_putc(out, in[i]);
            i++;
            continue;
        }
        size_t start = i + 2, j = start;
        int level = 1;
        for (; j < len; j++) {
            if (in[j] == '{')
                level++;
            else if (in[j] == '}' && --level == 0)
                break;
        }
        if (j >= len) {
            nx_conf_error(ctx, at,
                          "unterminated placeholder: \"${\" without \"}\" (write $${ for a literal \"${\")");
            return NX_ECONFIG;
        }
        if (expand_one(ctx, at, in + start, j - start, out, depth) < 0)
            rc = NX_ECONFIG;
        i = j + 1;
    }
    return rc;
}

int nx_conf_subst(struct nx_conf_ctx *ctx, const struct nx_cnode *at, const char *in, char **out)
{
    struct nx_buf b = NX_BUF_INIT;
    int rc;

    *out = NULL;
    if (!strstr(in, "${"))
        return 0;
    nx_buf_reserve(&b, strlen(in));
    rc = expand(ctx, at, in, strlen(in), &b, 0);
    if (rc < 0) {
        nx_buf_cleanup(&b);
        return NX_ECONFIG;
    }
    *out = b.len ? nx_buf_steal(&b) : nx_strdup("");
    nx_buf_cleanup(&b);
    return 0;
}
