#ifndef NX_CORE_ALLOC_H
#define NX_CORE_ALLOC_H

#include <stddef.h>

/* Memory exhaustion is not an error path: these abort with a message. */
void *nx_malloc(size_t n);
void *nx_calloc(size_t n, size_t size);
void *nx_realloc(void *p, size_t n);
char *nx_strdup(const char *s);
char *nx_strndup(const char *s, size_t n);
void *nx_memdup(const void *p, size_t n);

/* Hands the heap's free pages back to the kernel (glibc's trim), including those the allocator's
 * per-thread cache pins; for the daemon's trim when nothing is in flight. */
void nx_heap_trim(void);

_Noreturn void nx_assert_fail(const char *expr, const char *file, int line);

/* Stays on in release builds: for invariants whose breach would corrupt data. */
#define NX_ASSERT(c)                                                                               \
    do {                                                                                           \
        if (!(c))                                                                                  \
            nx_assert_fail(#c, __FILE__, __LINE__);                                                \
    } while (0)

#define NX_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define NX_UNUSED(x) ((void)(x))

/* Pointer to the struct that contains `ptr` as its `member`. */
#define nx_container_of(ptr, type, member) ((type *)(void *)((char *)(ptr) - offsetof(type, member)))

#endif
