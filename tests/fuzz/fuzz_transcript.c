/* Transcript writing from untrusted input: the file-name mapping of agent ids and session keys
 * (peer strings come from channels) and the redacted copy of message JSON. Invariants: a name
 * never contains '/', never starts with '.', stays short, and uses only [A-Za-z0-9._-%~]; a
 * redacted dump always parses again, as a value of the same type. */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "store/history.h"
#include "store/history_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *name = nx_strndup((const char *)data, size);
    struct nx_buf b = NX_BUF_INIT;
    json_t *v;

    nx_transcript_name(name, &b);
    NX_ASSERT(b.len > 0 && b.len <= 128 + 32);
    NX_ASSERT(b.data[0] != '.');
    for (size_t i = 0; i < b.len; i++)
        NX_ASSERT(b.data[i] && strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-%~",
                                      b.data[i]));
    nx_buf_cleanup(&b);

    v = json_loadb((const char *)data, size, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
    if (v) {
        struct nx_buf text = NX_BUF_INIT;
        struct nx_buf t = NX_BUF_INIT;
        json_t *back;

        nx_json_dump_redacted(v, &text);
        back = json_loadb(text.data, text.len, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
        NX_ASSERT(back);
        NX_ASSERT(json_typeof(back) == json_typeof(v));
        nx_transcript_text(v, &t);
        json_decref(back);
        nx_buf_cleanup(&t);
        nx_buf_cleanup(&text);
        json_decref(v);
    }
    {
        json_t *s = nx_json_string_lossy(name);
        NX_ASSERT(s);
        json_decref(s);
    }
    free(name);
    return 0;
}
