#ifndef NX_CORE_BUF_H
#define NX_CORE_BUF_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>

/* A growable byte buffer. `data` is always NUL-terminated once anything was appended. */
struct nx_buf {
    char *data;
    size_t len;
    size_t cap;
};

#define NX_BUF_INIT {NULL, 0, 0}

void nx_buf_init(struct nx_buf *b);
void nx_buf_cleanup(struct nx_buf *b);
void nx_buf_reset(struct nx_buf *b);
void nx_buf_reserve(struct nx_buf *b, size_t extra);
void nx_buf_append(struct nx_buf *b, const void *data, size_t n);
void nx_buf_puts(struct nx_buf *b, const char *s);
void nx_buf_putc(struct nx_buf *b, char c);
void nx_buf_printf(struct nx_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void nx_buf_vprintf(struct nx_buf *b, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));
/* Appends `len` bytes of `s` as a quoted JSON string: '"', '\\', and control characters
 * escaped, valid UTF-8 copied as it is, each byte of an invalid sequence written as U+FFFD. */
void nx_buf_put_json_str(struct nx_buf *b, const char *s, size_t len);
/* Whether s[0..len) is valid UTF-8 (RFC 3629) with no NUL: what a JSON string may carry. */
bool nx_utf8_is_valid(const char *s, size_t len);
/* Length of the longest prefix of s[0..len) that is complete, valid UTF-8. */
size_t nx_utf8_valid_prefix(const char *s, size_t len);
/* Number of code points in a valid UTF-8 string. */
size_t nx_utf8_count(const char *s, size_t len);
/* Appends s[0..len) to out with every invalid UTF-8 byte replaced by U+FFFD. */
void nx_utf8_sanitize(struct nx_buf *out, const char *s, size_t len);
/* Appends s[0..len) for a terminal: nothing in it acts on the terminal. Control characters
 * become \xNN: C0 but tab, DEL, and C1 (U+0080-U+009F, which 8-bit and some UTF-8 terminals take
 * as ESC sequences) whether UTF-8 encoded or a stray byte, so that no escape sequence can erase
 * a line and print another, retitle the window or set the clipboard. A newline (and a CR just
 * before one) stays when keep_lines, else each becomes a space (a log entry stays one line). */
void nx_buf_put_term_safe(struct nx_buf *out, const char *s, size_t len, bool keep_lines);
/* Whether s (NULL too) holds nothing but spaces, tabs and line breaks. */
bool nx_str_is_blank(const char *s);
/* The value of a hexadecimal digit (either case), or -1. */
int nx_hex_digit(char c);
/* Drops the first n bytes. */
void nx_buf_consume(struct nx_buf *b, size_t n);
/* Hands the storage to the caller (never NULL) and leaves the buffer empty. */
char *nx_buf_steal(struct nx_buf *b);
/* The contents as a C string ("" when empty). */
const char *nx_buf_cstr(const struct nx_buf *b);

#endif
