/* Shared by the provider fuzz targets (fuzz_anthropic_response.c, fuzz_openai_response.c): one
 * provider's response parsers on raw bytes, through its wire table: the whole-body parser, the
 * error-body parser, and the SSE stream state machine fed the same bytes whole and in chunks
 * whose sizes come from the input. Both feeds must agree on the result, the streamed text and
 * the final message. */
#ifndef NX_FUZZ_LLM_WIRE_H
#define NX_FUZZ_LLM_WIRE_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "llm/internal.h"

static void collect(const char *d, size_t n, void *u)
{
    nx_buf_append(u, d, n);
}

static int stream(const struct nx_llm_wire *w, const uint8_t *data, size_t size, int chunked, struct nx_buf *text,
                  struct nx_llm_resp *out)
{
    void *s = w->stream_new(collect, text);
    size_t i = 0, k = 0;
    int rc = 0;

    while (i < size && rc >= 0) { /* (1: ended; what follows is ignored) */
        size_t step = chunked ? (size_t)(data[k++ % size] % 17) + 1 : size - i;
        if (step > size - i)
            step = size - i;
        rc = w->stream_feed(s, (const char *)data + i, step);
        i += step;
    }
    rc = w->stream_finish(s, out);
    w->stream_free(s);
    return rc;
}

/* Whether two answers are the same but for the ids made up for tool calls that came without one
 * (unique to each answer, by design). */
static int same_answer(const json_t *a, const json_t *b)
{
    json_t *ca = json_deep_copy(a), *cb = json_deep_copy(b);
    const json_t *all[2] = {ca, cb};
    size_t i;
    json_t *blk;
    int same;

    for (int k = 0; k < 2; k++)
        json_array_foreach(json_object_get(all[k], "content"), i, blk)
            json_object_del(blk, "id");
    same = json_equal(ca, cb);
    json_decref(ca);
    json_decref(cb);
    return same;
}

static int fuzz_wire(const struct nx_llm_wire *w, const uint8_t *data, size_t size)
{
    struct nx_llm_resp r, r2;
    struct nx_buf t1 = NX_BUF_INIT, t2 = NX_BUF_INIT;
    int rc1, rc2;

    memset(&r, 0, sizeof r);
    if (w->parse_response((const char *)data, size, &r) == 0) {
        if (!json_is_object(r.message))
            abort();
    } else if (!r.error_type || !r.error_message) {
        abort();
    }
    nx_llm_resp_cleanup(&r);
    w->parse_error(429, (const char *)data, size, &r);
    if (!r.error_type || !r.error_message)
        abort();
    nx_llm_resp_cleanup(&r);

    memset(&r2, 0, sizeof r2);
    rc1 = stream(w, data, size, 0, &t1, &r);
    rc2 = stream(w, data, size, 1, &t2, &r2);
    if (rc1 != rc2 || t1.len != t2.len || (t1.len && memcmp(t1.data, t2.data, t1.len) != 0))
        abort();
    if (rc1 == 0 && (!r.message || !same_answer(r.message, r2.message)))
        abort();
    if (rc1 != 0 && (r.message || !r.error_type))
        abort();
    nx_llm_resp_cleanup(&r);
    nx_llm_resp_cleanup(&r2);
    nx_buf_cleanup(&t1);
    nx_buf_cleanup(&t2);
    return 0;
}

#endif
