#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "channels/channels.h"
#include "core/alloc.h"

/* Text splitting for channels with a message length limit (Telegram: 4096 characters, counted
 * in UTF-16 code units). */

static bool is_space(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

/* Bytes and UTF-16 code units of the character at s[i] (invalid bytes count as one of each). */
static size_t char_at(const unsigned char *s, size_t i, size_t len, size_t *units)
{
    unsigned char c = s[i];
    size_t n = 1;
    *units = 1;
    if (c >= 0xC2 && c <= 0xDF)
        n = 2;
    else if (c >= 0xE0 && c <= 0xEF)
        n = 3;
    else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        *units = 2;
    }
    if (n > len - i) {
        *units = 1;
        return 1;
    }
    for (size_t k = 1; k < n; k++) {
        if ((s[i + k] & 0xC0) != 0x80) {
            *units = 1;
            return 1;
        }
    }
    return n;
}

/* The cut for one chunk starting at `pos` (not whitespace) that cannot hold the rest of the
 * text: the chunk is [pos, cut). */
static size_t find_cut(const unsigned char *s, size_t len, size_t pos, size_t limit)
{
    size_t para = 0, sentence = 0, line = 0, word = 0;
    size_t i = pos, units = 0;
    while (i < len) {
        size_t u;
        size_t n = char_at(s, i, len, &u);
        if (i > pos && is_space(s[i])) {
            /* A cut here keeps [pos, i): always fits, since [pos, i) was counted. */
            word = i;
            if (s[i] == '\n') {
                line = i;
                if (i + 1 < len && s[i + 1] == '\n')
                    para = i;
            }
            if (s[i - 1] == '.' || s[i - 1] == '!' || s[i - 1] == '?')
                sentence = i;
        }
        if (units + u > limit)
            break;
        units += u;
        i += n;
    }
    size_t end = i;            /* [pos, end) is the most that fits */
    size_t half = pos + (end - pos) / 2;
    if (para > half)
        return para;
    if (sentence > half)
        return sentence;
    if (line > half)
        return line;
    if (word > pos)
        return word;
    return end > pos ? end : pos + char_at(s, pos, len, &units); /* limit below one character */
}

size_t nx_text_split(const char *text, size_t len, size_t limit, struct nx_text_chunk **out)
{
    const unsigned char *s = (const unsigned char *)text;
    struct nx_text_chunk *v = NULL;
    size_t n = 0, cap = 0, pos = 0;

    if (limit == 0)
        limit = 1;
    while (len > 0 && is_space(s[len - 1]))
        len--;
    for (;;) {
        while (pos < len && is_space(s[pos]))
            pos++;
        if (pos >= len)
            break;
        /* Does the rest fit? */
        size_t i = pos, units = 0;
        while (i < len && units <= limit) {
            size_t u;
            i += char_at(s, i, len, &u);
            units += u;
        }
        size_t cut = units <= limit ? len : find_cut(s, len, pos, limit);
        size_t end = cut;
        while (end > pos && is_space(s[end - 1]))
            end--;
        if (n == cap) {
            cap = cap ? cap * 2 : 4;
            v = nx_realloc(v, cap * sizeof *v);
        }
        v[n].off = pos;
        v[n].len = end - pos;
        n++;
        pos = cut;
    }
    *out = v;
    return n;
}
