#include <stdlib.h>
#include <string.h>

#include "channels/channels.h"
#include "channels/markdown.h"
#include "core/alloc.h"

/* A line-based converter: block constructs (fences, headings, lists, quotes, rules) are found
 * per line, inline ones (emphasis, code spans, links) within a line. A delimiter's closer is
 * looked for at most SCAN_WINDOW bytes ahead and nesting stops at MAX_DEPTH, so hostile input
 * costs O(len * SCAN_WINDOW) at worst and never deep recursion. */

#define SCAN_WINDOW 4096
#define MAX_DEPTH 8
#define MAX_LANG 32
#define MAX_TAGS 64

const struct nx_md_style nx_md_telegram = {
    .is_html = true,
    .bold = {"<b>", "</b>"},
    .italic = {"<i>", "</i>"},
    .strike = {"<s>", "</s>"},
    .code = {"<code>", "</code>"},
    .pre = {"<pre>", "</pre>"},
    .pre_lang = {"<pre><code class=\"language-", "\">", "</code></pre>"},
    .quote = {"<blockquote>", "</blockquote>"},
    .quote_line = "",
    .bullet = "\xe2\x80\xa2 ",
    .rule = "\xe2\x80\x94\xe2\x80\x94\xe2\x80\x94",
};

const struct nx_md_style nx_md_whatsapp = {
    .is_html = false,
    .bold = {"*", "*"},
    .italic = {"_", "_"},
    .strike = {"~", "~"},
    .code = {"`", "`"},
    .pre = {"```\n", "\n```"},
    .pre_lang = {"```\n", "", "\n```"}, /* WhatsApp shows no language: dropped */
    .quote = {"", ""},
    .quote_line = "> ",
    .bullet = "\xe2\x80\xa2 ",
    .rule = "\xe2\x80\x94\xe2\x80\x94\xe2\x80\x94",
};

static bool is_sp(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static bool is_alnum(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool is_punct(char c)
{
    return (c >= '!' && c <= '/') || (c >= ':' && c <= '@') || (c >= '[' && c <= '`') ||
           (c >= '{' && c <= '~');
}

static void put_text(const struct nx_md_style *st, struct nx_buf *out, const char *s, size_t n,
                     bool is_attr)
{
    if (!st->is_html) {
        nx_buf_append(out, s, n);
        return;
    }
    size_t from = 0;
    for (size_t i = 0; i < n; i++) {
        const char *e = NULL;
        switch (s[i]) {
        case '&': e = "&amp;"; break;
        case '<': e = "&lt;"; break;
        case '>': e = "&gt;"; break;
        case '"': e = is_attr ? "&quot;" : NULL; break;
        default: break;
        }
        if (!e)
            continue;
        nx_buf_append(out, s + from, i - from);
        nx_buf_puts(out, e);
        from = i + 1;
    }
    nx_buf_append(out, s + from, n - from);
}

static size_t run_of(const char *s, size_t i, size_t n, char c)
{
    size_t k = i;
    while (k < n && s[k] == c)
        k++;
    return k - i;
}

static void render_inline(const struct nx_md_style *st, const char *s, size_t n, struct nx_buf *out,
                          int depth);

/* `code`: the closing run of exactly as many backticks, or 0. */
static size_t code_span(const struct nx_md_style *st, const char *s, size_t i, size_t n,
                        struct nx_buf *out)
{
    size_t run = run_of(s, i, n, '`');
    size_t end = i + run + SCAN_WINDOW < n ? i + run + SCAN_WINDOW : n;
    for (size_t k = i + run; k < end;) {
        size_t r = run_of(s, k, end, '`');
        if (r == run) {
            const char *body = s + i + run;
            size_t blen = k - (i + run);
            if (blen >= 2 && body[0] == ' ' && body[blen - 1] == ' ') {
                body++;
                blen -= 2;
            }
            nx_buf_puts(out, st->code[0]);
            put_text(st, out, body, blen, false);
            nx_buf_puts(out, st->code[1]);
            return k + r - i;
        }
        k += r ? r : 1;
    }
    return 0;
}

/* **x**, __x__, *x*, _x_, ~~x~~ at s[i]: bytes consumed, or 0 when it does not close. */
static size_t emphasis(const struct nx_md_style *st, const char *s, size_t i, size_t n,
                       struct nx_buf *out, int depth)
{
    char c = s[i];
    size_t run = run_of(s, i, n, c);
    size_t d = c == '~' ? 2 : (run >= 2 ? 2 : 1);
    if (run < d || i + d >= n || is_sp(s[i + d]))
        return 0;
    if (c == '_' && i > 0 && is_alnum(s[i - 1]))
        return 0; /* snake_case */
    size_t end = i + d + SCAN_WINDOW < n ? i + d + SCAN_WINDOW : n;
    for (size_t k = i + d + 1; k + d <= end; k++) {
        if (s[k] == '\\') {
            k++;
            continue;
        }
        if (s[k] == '`') { /* a code span inside is opaque */
            struct nx_buf scratch = NX_BUF_INIT;
            size_t used = code_span(st, s, k, end, &scratch);
            nx_buf_cleanup(&scratch);
            if (used)
                k += used - 1;
            continue;
        }
        if (s[k] != c || is_sp(s[k - 1]) || run_of(s, k, end, c) < d)
            continue;
        if (d == 1 && k + 1 < n && s[k + 1] == c) { /* a ** inside *...*: skip it whole */
            k += run_of(s, k, end, c) - 1;
            continue;
        }
        if (d == 2) /* "***x***": the bold closes last */
            k += run_of(s, k, end, c) - d;
        if (c == '_' && k + d < n && is_alnum(s[k + d]))
            continue;
        const char *const *tag = c == '~' ? st->strike : d == 2 ? st->bold : st->italic;
        nx_buf_puts(out, tag[0]);
        render_inline(st, s + i + d, k - (i + d), out, depth + 1);
        nx_buf_puts(out, tag[1]);
        return k + d - i;
    }
    return 0;
}

static bool url_ok(const char *u, size_t n)
{
    static const char *const schemes[] = {"http://", "https://", "tg://", "mailto:", NULL};
    for (size_t i = 0; i < n; i++)
        if (is_sp(u[i]) || u[i] == '<' || u[i] == '>')
            return false;
    for (size_t i = 0; schemes[i]; i++) {
        size_t l = strlen(schemes[i]);
        if (n > l && strncmp(u, schemes[i], l) == 0)
            return true;
    }
    return false;
}

/* [text](url) at s[i]: bytes consumed, or 0. */
static size_t md_link(const struct nx_md_style *st, const char *s, size_t i, size_t n, struct nx_buf *out,
                      int depth)
{
    size_t end = i + SCAN_WINDOW < n ? i + SCAN_WINDOW : n;
    size_t j = i + 1;
    while (j < end && s[j] != ']' && s[j] != '[')
        j++;
    if (j + 1 >= end || s[j] != ']' || s[j + 1] != '(')
        return 0;
    size_t k = j + 2;
    while (k < end && s[k] != ')' && !is_sp(s[k]))
        k++;
    if (k >= end || s[k] != ')' || !url_ok(s + j + 2, k - (j + 2)) || j == i + 1)
        return 0;
    const char *url = s + j + 2;
    size_t ulen = k - (j + 2);
    if (st->is_html) {
        nx_buf_puts(out, "<a href=\"");
        put_text(st, out, url, ulen, true);
        nx_buf_puts(out, "\">");
        render_inline(st, s + i + 1, j - (i + 1), out, depth + 1);
        nx_buf_puts(out, "</a>");
    } else {
        render_inline(st, s + i + 1, j - (i + 1), out, depth + 1);
        if (j - (i + 1) != ulen || memcmp(s + i + 1, url, ulen) != 0) {
            nx_buf_puts(out, " (");
            nx_buf_append(out, url, ulen);
            nx_buf_putc(out, ')');
        }
    }
    return k + 1 - i;
}

static void render_inline(const struct nx_md_style *st, const char *s, size_t n, struct nx_buf *out,
                          int depth)
{
    size_t i = 0, lit = 0; /* s[lit..i) is pending literal text */
    while (i < n) {
        char c = s[i];
        size_t used = 0;
        if (c == '\\' && i + 1 < n && is_punct(s[i + 1])) {
            put_text(st, out, s + lit, i - lit, false);
            put_text(st, out, s + i + 1, 1, false);
            i += 2;
            lit = i;
            continue;
        }
        if (depth < MAX_DEPTH) {
            struct nx_buf b = NX_BUF_INIT;
            if (c == '`')
                used = code_span(st, s, i, n, &b);
            else if (c == '*' || c == '_' || c == '~')
                used = emphasis(st, s, i, n, &b, depth);
            else if (c == '[')
                used = md_link(st, s, i, n, &b, depth);
            if (used) {
                put_text(st, out, s + lit, i - lit, false);
                nx_buf_append(out, b.data, b.len);
                i += used;
                lit = i;
            }
            nx_buf_cleanup(&b);
            if (used)
                continue;
        }
        /* Not markup: a whole run of the same delimiter stays literal (so "**" that does not
         * close is not retried as "*"). */
        i += (c == '`' || c == '*' || c == '_' || c == '~') ? run_of(s, i, n, c) : 1;
    }
    put_text(st, out, s + lit, n - lit, false);
}

/* ---- blocks ---- */

static size_t indent_of(const char *s, size_t n)
{
    size_t i = 0;
    while (i < n && s[i] == ' ')
        i++;
    return i;
}

/* ``` or ~~~ (3 or more) after <= 3 spaces: the fence's length, else 0. */
static size_t fence_of(const char *s, size_t n, char *ch)
{
    size_t i = indent_of(s, n);
    if (i > 3 || i >= n || (s[i] != '`' && s[i] != '~'))
        return 0;
    size_t r = run_of(s, i, n, s[i]);
    if (r < 3)
        return 0;
    *ch = s[i];
    return r;
}

static bool is_rule(const char *s, size_t n)
{
    size_t count = 0;
    char c = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == ' ')
            continue;
        if ((s[i] != '-' && s[i] != '*' && s[i] != '_') || (c && s[i] != c))
            return false;
        c = s[i];
        count++;
    }
    return count >= 3;
}

static void put_lang(const struct nx_md_style *st, struct nx_buf *out, const char *s, size_t n)
{
    size_t i = 0;
    while (i < n && is_sp(s[i]))
        i++;
    size_t k = i;
    while (k < n && k - i < MAX_LANG && (is_alnum(s[k]) || s[k] == '+' || s[k] == '-' || s[k] == '_' ||
                                         s[k] == '#' || s[k] == '.'))
        k++;
    if (k == i || !st->is_html) {
        nx_buf_puts(out, k == i ? st->pre[0] : st->pre_lang[0]);
        return;
    }
    nx_buf_puts(out, st->pre_lang[0]);
    nx_buf_append(out, s + i, k - i);
    nx_buf_puts(out, st->pre_lang[1]);
}

void nx_md_render(const struct nx_md_style *st, const char *text, size_t len, struct nx_buf *out)
{
    bool need_sep = false, in_quote = false;
    size_t fence = 0;       /* open fence length; 0 = none */
    char fence_ch = 0;
    bool fence_has_lang = false;
    size_t pos = 0;

    nx_buf_reserve(out, len + len / 8 + 16);
    while (pos < len) {
        const char *nl = memchr(text + pos, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - (text + pos)) : len - pos;
        const char *s = text + pos;
        size_t ln = n;
        if (ln > 0 && s[ln - 1] == '\r')
            ln--;
        pos += n + (nl ? 1 : 0);

        if (fence) {
            char c = 0;
            size_t f = fence_of(s, ln, &c);
            size_t after = indent_of(s, ln) + f;
            if (f >= fence && c == fence_ch && run_of(s, after, ln, ' ') == ln - after) {
                nx_buf_puts(out, fence_has_lang ? st->pre_lang[2] : st->pre[1]);
                fence = 0;
                need_sep = true;
                continue;
            }
            if (need_sep)
                nx_buf_putc(out, '\n');
            put_text(st, out, s, ln, false);
            need_sep = true;
            continue;
        }
        size_t ind = indent_of(s, ln);
        bool is_quote = ind <= 3 && ind < ln && s[ind] == '>';
        if (in_quote && !is_quote) {
            nx_buf_puts(out, st->quote[1]);
            in_quote = false;
        }
        if (need_sep)
            nx_buf_putc(out, '\n');
        need_sep = true;
        char c = 0;
        size_t f = fence_of(s, ln, &c);
        if (f && !(c == '`' && memchr(s + ind + f, '`', ln - ind - f))) {
            const char *rest = s + ind + f;
            size_t rlen = ln - ind - f;
            size_t lang = 0;
            while (lang < rlen && is_sp(rest[lang]))
                lang++;
            fence_has_lang = st->is_html && lang < rlen && (is_alnum(rest[lang]) || rest[lang] == '+');
            put_lang(st, out, rest, rlen);
            fence = f;
            fence_ch = c;
            need_sep = false;
            continue;
        }
        if (is_quote) {
            if (!in_quote)
                nx_buf_puts(out, st->quote[0]);
            in_quote = true;
            size_t k = ind + 1;
            if (k < ln && s[k] == ' ')
                k++;
            nx_buf_puts(out, st->quote_line);
            render_inline(st, s + k, ln - k, out, 0);
            continue;
        }
        if (ind <= 3 && ind < ln && s[ind] == '#') {
            size_t h = run_of(s, ind, ln, '#');
            if (h <= 6 && (ind + h == ln || s[ind + h] == ' ')) {
                size_t a = ind + h, b = ln;
                while (a < b && s[a] == ' ')
                    a++;
                while (b > a && (s[b - 1] == ' ' || s[b - 1] == '#'))
                    b--;
                nx_buf_puts(out, st->bold[0]);
                render_inline(st, s + a, b - a, out, 1);
                nx_buf_puts(out, st->bold[1]);
                continue;
            }
        }
        if (is_rule(s, ln)) {
            nx_buf_puts(out, st->rule);
            continue;
        }
        if (ind + 1 < ln && (s[ind] == '-' || s[ind] == '*' || s[ind] == '+') && s[ind + 1] == ' ') {
            nx_buf_append(out, s, ind);
            nx_buf_puts(out, st->bullet);
            render_inline(st, s + ind + 2, ln - ind - 2, out, 0);
            continue;
        }
        render_inline(st, s, ln, out, 0);
    }
    if (in_quote)
        nx_buf_puts(out, st->quote[1]);
    if (fence)
        nx_buf_puts(out, fence_has_lang ? st->pre_lang[2] : st->pre[1]);
    if (len > 0 && text[len - 1] == '\n')
        nx_buf_putc(out, '\n');
}

/* ---- splitting HTML ---- */

struct tag {
    size_t pos, len;   /* the whole tag in the HTML */
    size_t name, nlen; /* its name */
    bool is_close;
};

static size_t tag_name(const char *h, size_t pos, size_t len, size_t *nlen)
{
    size_t i = pos + 1;
    if (i < len && h[i] == '/')
        i++;
    size_t k = i;
    while (k < len && h[k] != '>' && h[k] != ' ' && h[k] != '/')
        k++;
    *nlen = k - i;
    return i;
}

static void put_close(struct nx_buf *b, const char *h, const struct tag *t)
{
    nx_buf_puts(b, "</");
    nx_buf_append(b, h + t->name, t->nlen);
    nx_buf_putc(b, '>');
}

/* Applies one tag to the stack of open ones (indexes into tags). */
static void stack_apply(const char *h, const struct tag *tags, size_t ti, size_t *stack, size_t *depth)
{
    const struct tag *t = &tags[ti];
    if (!t->is_close) {
        if (*depth < MAX_TAGS)
            stack[(*depth)++] = ti;
        return;
    }
    for (size_t k = *depth; k-- > 0;) {
        const struct tag *o = &tags[stack[k]];
        if (o->nlen == t->nlen && memcmp(h + o->name, h + t->name, t->nlen) == 0) {
            *depth = k;
            return;
        }
    }
}

size_t nx_md_split_html(const char *html, size_t len, size_t limit, struct nx_md_chunk **out)
{
    struct nx_buf vis = NX_BUF_INIT;
    size_t *vstart = nx_malloc((len + 1) * sizeof *vstart), *vend = nx_malloc((len + 1) * sizeof *vend);
    struct tag *tags = NULL;
    size_t ntags = 0, cap = 0;
    static const struct {
        const char *ent;
        char c;
    } ents[] = {{"&amp;", '&'}, {"&lt;", '<'}, {"&gt;", '>'}, {"&quot;", '"'}};

    for (size_t i = 0; i < len;) {
        if (html[i] == '<') {
            const char *gt = memchr(html + i, '>', len - i);
            if (gt) {
                if (ntags == cap) {
                    cap = cap ? cap * 2 : 16;
                    tags = nx_realloc(tags, cap * sizeof *tags);
                }
                struct tag *t = &tags[ntags++];
                t->pos = i;
                t->len = (size_t)(gt - html) + 1 - i;
                t->is_close = i + 1 < len && html[i + 1] == '/';
                t->name = tag_name(html, i, (size_t)(gt - html), &t->nlen);
                i += t->len;
                continue;
            }
        }
        size_t w = 1;
        char c = html[i];
        if (c == '&') {
            for (size_t e = 0; e < sizeof ents / sizeof ents[0]; e++) {
                size_t el = strlen(ents[e].ent);
                if (len - i >= el && memcmp(html + i, ents[e].ent, el) == 0) {
                    w = el;
                    c = ents[e].c;
                    break;
                }
            }
        }
        vstart[vis.len] = i;
        vend[vis.len] = i + w;
        nx_buf_putc(&vis, c);
        i += w;
    }

    struct nx_text_chunk *cuts = NULL;
    size_t n = vis.len ? nx_text_split(vis.data, vis.len, limit, &cuts) : 0;
    struct nx_md_chunk *v = n ? nx_calloc(n, sizeof *v) : NULL;
    size_t stack[MAX_TAGS], depth = 0, ti = 0;
    for (size_t k = 0; k < n; k++) {
        size_t hs = vstart[cuts[k].off], he = vend[cuts[k].off + cuts[k].len - 1];
        struct nx_buf b = NX_BUF_INIT;
        for (; ti < ntags && tags[ti].pos < hs; ti++)
            stack_apply(html, tags, ti, stack, &depth);
        for (size_t s = 0; s < depth; s++)
            nx_buf_append(&b, html + tags[stack[s]].pos, tags[stack[s]].len);
        nx_buf_append(&b, html + hs, he - hs);
        for (; ti < ntags && tags[ti].pos < he; ti++)
            stack_apply(html, tags, ti, stack, &depth);
        for (size_t s = depth; s-- > 0;)
            put_close(&b, html, &tags[stack[s]]);
        v[k].html = nx_buf_steal(&b);
        v[k].plain = nx_strndup(vis.data + cuts[k].off, cuts[k].len);
    }
    free(cuts);
    free(tags);
    free(vstart);
    free(vend);
    nx_buf_cleanup(&vis);
    *out = v;
    return n;
}

void nx_md_chunks_free(struct nx_md_chunk *v, size_t n)
{
    if (!v)
        return;
    for (size_t i = 0; i < n; i++) {
        free(v[i].html);
        free(v[i].plain);
    }
    free(v);
}
