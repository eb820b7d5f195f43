#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "llm/internal.h"

/* The openai response parsers on raw bytes: the whole-body parser, the error-body parser, and
 * the SSE stream state machine fed the same bytes whole and in chunks whose sizes come from the
 * input. Both feeds must agree on the result, the streamed text and the final message. */

static void collect(const char *d, size_t n, void *u)
{
    nx_buf_append(u, d, n);
}

static int stream(const uint8_t *data, size_t size, int chunked, struct nx_buf *text,
                  struct nx_llm_resp *out)
{
    struct nx_openai_stream *s = nx_openai_stream_new(collect, text);
    size_t i = 0, k = 0;
    int rc = 0;

    while (i < size && rc == 0) {
        size_t step = chunked ? (size_t)(data[k++ % size] % 17) + 1 : size - i;
        if (step > size - i)
            step = size - i;
        rc = nx_openai_stream_feed(s, (const char *)data + i, step);
        i += step;
    }
    rc = nx_openai_stream_finish(s, out);
    nx_openai_stream_free(s);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct nx_llm_resp r, r2;
    struct nx_buf t1 = NX_BUF_INIT, t2 = NX_BUF_INIT;
    int rc1, rc2;

    memset(&r, 0, sizeof r);
    if (nx_openai_parse_response((const char *)data, size, &r) == 0) {
        if (!json_is_object(r.message))
            abort();
    } else if (!r.error_type || !r.error_message) {
        abort();
    }
    nx_llm_resp_cleanup(&r);
    nx_openai_parse_error(429, (const char *)data, size, &r);
    if (!r.error_type || !r.error_message)
        abort();
    nx_llm_resp_cleanup(&r);

    memset(&r2, 0, sizeof r2);
    rc1 = stream(data, size, 0, &t1, &r);
    rc2 = stream(data, size, 1, &t2, &r2);
    if (rc1 != rc2 || t1.len != t2.len || (t1.len && memcmp(t1.data, t2.data, t1.len) != 0))
        abort();
    if (rc1 == 0 && (!r.message || !json_equal(r.message, r2.message)))
        abort();
    if (rc1 != 0 && (r.message || !r.error_type))
        abort();
    nx_llm_resp_cleanup(&r);
    nx_llm_resp_cleanup(&r2);
    nx_buf_cleanup(&t1);
    nx_buf_cleanup(&t2);
    return 0;
}
