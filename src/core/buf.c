#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/buf.h"

void nx_buf_init(struct nx_buf *b)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}

void nx_buf_cleanup(struct nx_buf *b)
{
    free(b->data);
    nx_buf_init(b);
}

void nx_buf_reset(struct nx_buf *b)
{
    b->len = 0;
    if (b->data)
        b->data[0] = '\0';
}

void nx_buf_reserve(struct nx_buf *b, size_t extra)
{
    size_t need = b->len + extra + 1;
    if (need <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap *= 2;
    b->data = nx_realloc(b->data, cap);
    b->cap = cap;
}

void nx_buf_append(struct nx_buf *b, const void *data, size_t n)
{
    nx_buf_reserve(b, n);
    if (n)
        memcpy(b->data + b->len, data, n);
    b->len += n;
    b->data[b->len] = '\0';
}

void nx_buf_puts(struct nx_buf *b, const char *s)
{
    nx_buf_append(b, s, strlen(s));
}

void nx_buf_putc(struct nx_buf *b, char c)
{
    nx_buf_append(b, &c, 1);
}

void nx_buf_vprintf(struct nx_buf *b, const char *fmt, va_list ap)
{
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap2);
    va_end(ap2);
    if (n < 0)
        return;
    nx_buf_reserve(b, (size_t)n);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    b->len += (size_t)n;
}

void nx_buf_printf(struct nx_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    nx_buf_vprintf(b, fmt, ap);
    va_end(ap);
}

void nx_buf_consume(struct nx_buf *b, size_t n)
{
    if (n >= b->len) {
        nx_buf_reset(b);
        return;
    }
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
    b->data[b->len] = '\0';
}

char *nx_buf_steal(struct nx_buf *b)
{
    char *d = b->data ? b->data : nx_strdup("");
    nx_buf_init(b);
    return d;
}

const char *nx_buf_cstr(const struct nx_buf *b)
{
    return b->data ? b->data : "";
}
