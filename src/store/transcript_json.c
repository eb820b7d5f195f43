/* Transcripts' JSON with secrets redacted: every string through the redactor, and the whole
 * value of a member whose key names a secret (core/redact.h). See docs/transcripts.md. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/error.h"
#include "core/redact.h"
#include "store/history.h"
#include "store/history_internal.h"

json_t *nx_json_string_lossy(const char *s)
{
    json_t *v = json_string(s ? s : "");
    char *copy;

    if (v)
        return v;
    copy = nx_strdup(s);
    for (char *p = copy; *p; p++) {
        if ((unsigned char)*p >= 0x80)
            *p = '?';
    }
    v = json_string(copy);
    free(copy);
    NX_ASSERT(v);
    return v;
}

/* A redacted string as JSON; `scratch` is the caller's, reused. */
static void put_redacted(struct nx_buf *out, struct nx_buf *scratch, const char *s, size_t len)
{
    nx_buf_reset(scratch);
    nx_redact_append(scratch, s, len);
    nx_buf_put_json_str(out, scratch->len ? scratch->data : "", scratch->len);
}

/* A real as jansson writes it: 17 significant digits, and a ".0" when that reads as an integer. */
static void put_real(struct nx_buf *out, double d)
{
    char num[40];
    int n = snprintf(num, sizeof num, "%.17g", d);
    nx_buf_append(out, num, n > 0 ? (size_t)n : 0);
    if (n > 0 && !strpbrk(num, ".eE"))
        nx_buf_puts(out, ".0");
}

static const char *str_of(const json_t *o, const char *key)
{
    const char *v = json_string_value(json_object_get(o, key));
    return v ? v : "";
}

static void dump_redacted(struct nx_buf *out, struct nx_buf *scratch, const json_t *v)
{
    size_t i, klen;
    const char *key;
    json_t *item;
    bool is_first = true;

    switch (json_typeof(v)) {
    case JSON_STRING:
        put_redacted(out, scratch, json_string_value(v), json_string_length(v));
        break;
    case JSON_ARRAY:
        nx_buf_putc(out, '[');
        json_array_foreach(v, i, item) {
            if (i)
                nx_buf_putc(out, ',');
            dump_redacted(out, scratch, item);
        }
        nx_buf_putc(out, ']');
        break;
    case JSON_OBJECT:
        nx_buf_putc(out, '{');
        json_object_keylen_foreach((json_t *)v, key, klen, item) {
            if (!is_first)
                nx_buf_putc(out, ',');
            is_first = false;
            put_redacted(out, scratch, key, klen);
            nx_buf_putc(out, ':');
            if (klen == 4 && memcmp(key, "data", 4) == 0 && json_is_string(item) &&
                json_string_length(item) > 256 &&
                strcmp(str_of(v, "type"), "base64") == 0) /* an image's bytes */
                nx_buf_printf(out, "\"[base64, %zu bytes not kept in the transcript]\"",
                              json_string_length(item));
            else if ((json_is_string(item) || json_is_number(item)) && nx_redact_is_secret_key(key, klen))
                nx_buf_puts(out, "\"[REDACTED]\""); /* tool arguments: {"password": "…"} */
            else
                dump_redacted(out, scratch, item);
        }
        nx_buf_putc(out, '}');
        break;
    case JSON_INTEGER:
        nx_buf_printf(out, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        break;
    case JSON_REAL:
        put_real(out, json_real_value(v));
        break;
    case JSON_TRUE:
        nx_buf_puts(out, "true");
        break;
    case JSON_FALSE:
        nx_buf_puts(out, "false");
        break;
    default:
        nx_buf_puts(out, "null");
        break;
    }
}

void nx_json_put_redacted(struct nx_buf *out, const char *s, size_t len)
{
    struct nx_buf scratch = NX_BUF_INIT;
    put_redacted(out, &scratch, s, len);
    nx_buf_cleanup(&scratch);
}

void nx_json_dump_redacted(const json_t *v, struct nx_buf *out)
{
    struct nx_buf scratch = NX_BUF_INIT;
    dump_redacted(out, &scratch, v);
    nx_buf_cleanup(&scratch);
}

