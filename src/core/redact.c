#include "core/redact.h"

/* Placeholder: copies through. Replaced by the real scanner. */
void nx_redact_append(struct nx_buf *out, const char *in, size_t len)
{
    nx_buf_append(out, in, len);
}

int nx_redact_add_pattern(const char *regex, char *err, size_t errlen)
{
    (void)regex;
    (void)err;
    (void)errlen;
    return 0;
}

void nx_redact_clear_patterns(void)
{
}
