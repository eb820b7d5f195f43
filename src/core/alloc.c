#include <malloc.h>
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

/* glibc's per-thread cache (tcache) keeps up to 7 freed chunks of each size up to 1032 bytes
 * outside the arena, for reuse. After a burst they are the last chunks it freed, scattered over
 * the heap, and malloc_trim cannot release the pages they pin (1.5 MB measured after 5,000
 * streams). So they are taken out, replaced by chunks allocated once the free memory is
 * consolidated (from pages in use anyway, or from one run of fresh ones), and handed back to the
 * arena, which the second malloc_trim can release. With other glibc tunables it does less, no
 * harm. */
#define TCACHE_BINS 64 /* chunk sizes 32, 48, .. 1040: requests 24 + 16 * i */
#define TCACHE_COUNT 7

void nx_heap_trim(void)
{
    static void *held[TCACHE_BINS][TCACHE_COUNT], *fresh[TCACHE_BINS][TCACHE_COUNT];

    for (size_t i = 0; i < TCACHE_BINS; i++)
        for (size_t k = 0; k < TCACHE_COUNT; k++)
            held[i][k] = malloc(24 + 16 * i); /* the cached chunks come first */
    malloc_trim(0);
    for (size_t i = 0; i < TCACHE_BINS; i++)
        for (size_t k = 0; k < TCACHE_COUNT; k++)
            fresh[i][k] = malloc(24 + 16 * i);
    for (size_t i = 0; i < TCACHE_BINS; i++) {
        for (size_t k = 0; k < TCACHE_COUNT; k++)
            free(fresh[i][k]); /* into the emptied cache */
        for (size_t k = 0; k < TCACHE_COUNT; k++)
            free(held[i][k]); /* the cache is full: back to the arena */
    }
    malloc_trim(0);
}
