#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/redact.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A marker secret surrounded by spaces is always redacted, whatever comes around it: the output
 * never holds it (replacements cannot join input bytes into a new one). */
#define MARKER " AKIAIOSFODNN7EXAMPLE "

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct nx_buf out = NX_BUF_INIT;
    char err[128];
    bool with_patterns = size > 0 && (data[0] & 1);

    /* Odd first byte: also run configured patterns, including ones that match the empty string. */
    if (with_patterns) {
        NX_ASSERT(nx_redact_add_pattern("a*", err, sizeof err) == 0);
        NX_ASSERT(nx_redact_add_pattern("(x|yz)+|$", err, sizeof err) == 0);
    }
    nx_buf_puts(&out, "p:");
    nx_redact_append(&out, (const char *)data, size);
    if (with_patterns)
        nx_redact_clear_patterns();

    /* Every replacement consumes at least one byte and writes "[REDACTED]" (10 bytes), twice at
     * most (built-in then pattern, and a pattern may re-match a marker): the output stays bounded. */
    NX_ASSERT(out.len <= 2 + 100 * size + 16);
    NX_ASSERT(out.data[out.len] == '\0');
    NX_ASSERT(memcmp(out.data, "p:", 2) == 0);
    NX_ASSERT(!memmem(out.data, out.len, MARKER, strlen(MARKER)));
    nx_buf_cleanup(&out);
    return 0;
}
