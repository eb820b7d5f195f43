#ifndef NX_CORE_REDACT_INTERNAL_H
#define NX_CORE_REDACT_INTERNAL_H

#include <stddef.h>

#include "core/buf.h"

#define REDACTED "[REDACTED]"
#define REDACTED_LEN (sizeof REDACTED - 1)

/* The built-in rules alone (redact.c): one linear pass. */
void nx_redact_builtin(struct nx_buf *out, const char *in, size_t len);

#endif
