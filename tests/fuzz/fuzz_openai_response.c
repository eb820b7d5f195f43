/* The openai response parsers on raw bytes (see llm_wire_fuzz.h), and the stream read with and
 * without the fast reader of common chunks (openai_fast.c): both must give the same result, text,
 * message, model, stop reason and usage. */
#include "llm_wire_fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int stream_with(bool fast, const uint8_t *data, size_t size, struct nx_buf *text,
                       struct nx_llm_resp *out)
{
    nx_openai_fast_enabled = fast;
    memset(out, 0, sizeof *out);
    int rc = stream(&nx_openai_wire, data, size, 1, text, out);
    nx_openai_fast_enabled = true;
    return rc;
}

static int same_str(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct nx_llm_resp r1, r2;
    struct nx_buf t1 = NX_BUF_INIT, t2 = NX_BUF_INIT;

    fuzz_wire(&nx_openai_wire, data, size);
    int rc1 = stream_with(true, data, size, &t1, &r1);
    int rc2 = stream_with(false, data, size, &t2, &r2);
    if (rc1 != rc2 || t1.len != t2.len || (t1.len && memcmp(t1.data, t2.data, t1.len) != 0) ||
        !same_str(r1.model, r2.model) || r1.stop != r2.stop ||
        memcmp(&r1.usage, &r2.usage, sizeof r1.usage) != 0 || !same_str(r1.error_type, r2.error_type) ||
        (rc1 == 0 && !same_answer(r1.message, r2.message)))
        abort();
    nx_llm_resp_cleanup(&r1);
    nx_llm_resp_cleanup(&r2);
    nx_buf_cleanup(&t1);
    nx_buf_cleanup(&t2);
    return 0;
}
