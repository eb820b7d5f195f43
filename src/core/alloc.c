#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/alloc.h"

static _Noreturn void oom(size_t n)
{
    char msg[96];
    int len = snprintf(msg, sizeof msg, "nexo: out of memory (allocating %zu bytes)\n", n);
    if (len > 0 && write(2, msg, (size_t)len) < 0) {
        /* nothing more we can do */
    }
    abort();
}

void *nx_malloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        oom(n);
    return p;
}

void *nx_calloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p)
        oom(n * size);
    return p;
}

void *nx_realloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q)
        oom(n);
    return q;
}

char *nx_strdup(const char *s)
{
    return nx_memdup(s, strlen(s) + 1);
}

char *nx_strndup(const char *s, size_t n)
{
    size_t len = strnlen(s, n);
    char *d = nx_malloc(len + 1);
    memcpy(d, s, len);
    d[len] = '\0';
    return d;
}

void *nx_memdup(const void *p, size_t n)
{
    void *d = nx_malloc(n);
    if (n)
        memcpy(d, p, n);
    return d;
}

void nx_assert_fail(const char *expr, const char *file, int line)
{
    fprintf(stderr, "nexo: assertion failed: %s (%s:%d)\n", expr, file, line);
    abort();
}
