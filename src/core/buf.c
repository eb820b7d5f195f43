#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/buf.h"

void nx_buf_init(struct nx_buf *b)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}

void nx_buf_cleanup(struct nx_buf *b)
{
    free(b->data);
    nx_buf_init(b);
}

void nx_buf_reset(struct nx_buf *b)
{
    b->len = 0;
    if (b->data)
        b->data[0] = '\0';
}

void nx_buf_reserve(struct nx_buf *b, size_t extra)
{
    size_t need = b->len + extra + 1;
    if (need <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap *= 2;
    b->data = nx_realloc(b->data, cap);
    b->cap = cap;
}

void nx_buf_append(struct nx_buf *b, const void *data, size_t n)
{
    nx_buf_reserve(b, n);
    if (n)
        memcpy(b->data + b->len, data, n);
    b->len += n;
    b->data[b->len] = '\0';
}

void nx_buf_puts(struct nx_buf *b, const char *s)
{
    nx_buf_append(b, s, strlen(s));
}

void nx_buf_putc(struct nx_buf *b, char c)
{
    nx_buf_append(b, &c, 1);
}

/* Length of the valid UTF-8 sequence at p (at most n bytes), or 0 if it is not one (overlong
 * forms, surrogates and code points above U+10FFFF are invalid, as in RFC 3629). */
static size_t utf8_seq(const unsigned char *p, size_t n)
{
    unsigned char c = p[0];
    size_t len;
    unsigned lo = 0x80, hi = 0xBF;

    if (c >= 0xC2 && c <= 0xDF)
        len = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else
        return 0;
    if (n < len || p[1] < lo || p[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++)
        if ((p[i] & 0xC0) != 0x80)
            return 0;
    return len;
}

bool nx_utf8_is_valid(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s, *end = p + len;
    while (p < end) {
        if (*p == 0)
            return false;
        if (*p < 0x80) {
            p++;
            continue;
        }
        size_t n = utf8_seq(p, (size_t)(end - p));
        if (!n)
            return false;
        p += n;
    }
    return true;
}

/* utf8_seq, and 1 for an ASCII byte (NUL included). */
static size_t utf8_char(const unsigned char *p, size_t n)
{
    return p[0] < 0x80 ? 1 : utf8_seq(p, n);
}

size_t nx_utf8_valid_prefix(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;

    while (i < len) {
        size_t n = utf8_char(p + i, len - i);
        if (n == 0)
            break;
        i += n;
    }
    return i;
}

size_t nx_utf8_count(const char *s, size_t len)
{
    size_t n = 0;

    for (size_t i = 0; i < len; i++) {
        if (((unsigned char)s[i] & 0xc0) != 0x80)
            n++;
    }
    return n;
}

void nx_buf_put_term_safe(struct nx_buf *out, const char *s, size_t len, bool keep_lines)
{
    unsigned cont = 0; /* continuation bytes a UTF-8 sequence still has */

    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i], d = i + 1 < len ? (unsigned char)s[i + 1] : 0;
        if (c == 0xc2 && d >= 0x80 && d <= 0x9f) {
            nx_buf_printf(out, "\\xc2\\x%02x", d);
            i++;
        } else if (cont && c >= 0x80 && c <= 0xbf) {
            cont--;
            nx_buf_putc(out, (char)c);
        } else if (keep_lines && (c == '\n' || (c == '\r' && d == '\n'))) {
            cont = 0;
            nx_buf_putc(out, (char)c);
        } else if (!keep_lines && (c == '\n' || c == '\r')) {
            cont = 0;
            nx_buf_putc(out, ' ');
        } else if ((c < 0x20 && c != '\t') || c == 0x7f || (c >= 0x80 && c <= 0x9f)) {
            cont = 0;
            nx_buf_printf(out, "\\x%02x", c);
        } else {
            cont = c >= 0xf0 ? 3 : c >= 0xe0 ? 2 : c >= 0xc0 ? 1 : 0;
            nx_buf_putc(out, (char)c);
        }
    }
}

void nx_utf8_sanitize(struct nx_buf *out, const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;

    while (i < len) {
        size_t n = utf8_char(p + i, len - i);
        if (n == 0) {
            nx_buf_append(out, "\xef\xbf\xbd", 3);
            i++;
            continue;
        }
        nx_buf_append(out, s + i, n);
        i += n;
    }
    if (!out->data)
        nx_buf_puts(out, "");
}

bool nx_str_is_blank(const char *s)
{
    for (; s && *s; s++)
        if (*s != ' ' && *s != '\t' && *s != '\n' && *s != '\r')
            return false;
    return true;
}

int nx_hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* The letter of a two-character escape (\n, \"...), 0 for those written as \u00XX. */
static char json_short_escape(unsigned char c)
{
    switch (c) {
    case '"':
        return '"';
    case '\\':
        return '\\';
    case '\n':
        return 'n';
    case '\r':
        return 'r';
    case '\t':
        return 't';
    case '\b':
        return 'b';
    case '\f':
        return 'f';
    default:
        return 0;
    }
}

void nx_buf_put_json_str(struct nx_buf *b, const char *s, size_t len)
{
    static const char hex[] = "0123456789ABCDEF"; /* as jansson writes them */
    const unsigned char *p = (const unsigned char *)s, *end = p + len;

    nx_buf_reserve(b, len + 2);
    nx_buf_putc(b, '"');
    while (p < end) {
        const unsigned char *run = p;
        while (p < end && *p >= 0x20 && *p < 0x80 && *p != '"' && *p != '\\')
            p++;
        if (p > run)
            nx_buf_append(b, run, (size_t)(p - run));
        if (p == end)
            break;
        unsigned char c = *p;
        if (c >= 0x80) {
            size_t n = utf8_seq(p, (size_t)(end - p));
            if (n) {
                nx_buf_append(b, p, n);
                p += n;
            } else {
                nx_buf_append(b, "\\ufffd", 6);
                p++;
            }
            continue;
        }
        char esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
        char named = json_short_escape(c);
        if (named) {
            esc[1] = named;
            nx_buf_append(b, esc, 2);
        } else {
            nx_buf_append(b, esc, sizeof esc);
        }
        p++;
    }
    nx_buf_putc(b, '"');
}

/* One vsnprintf into the room there is (at least 64 bytes, which most lines fit); a second only
 * when the text was longer. */
void nx_buf_vprintf(struct nx_buf *b, const char *fmt, va_list ap)
{
    va_list ap2;
    nx_buf_reserve(b, 64);
    size_t room = b->cap - b->len;
    va_copy(ap2, ap);
    int n = vsnprintf(b->data + b->len, room, fmt, ap2);
    va_end(ap2);
    if (n < 0) {
        b->data[b->len] = '\0';
        return;
    }
    if ((size_t)n >= room) {
        nx_buf_reserve(b, (size_t)n);
        vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    }
    b->len += (size_t)n;
}

void nx_buf_printf(struct nx_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    nx_buf_vprintf(b, fmt, ap);
    va_end(ap);
}

void nx_buf_consume(struct nx_buf *b, size_t n)
{
    if (n >= b->len) {
        nx_buf_reset(b);
        return;
    }
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
    b->data[b->len] = '\0';
}

char *nx_buf_steal(struct nx_buf *b)
{
    char *d = b->data ? b->data : nx_strdup("");
    nx_buf_init(b);
    return d;
}

const char *nx_buf_cstr(const struct nx_buf *b)
{
    return b->data ? b->data : "";
}
