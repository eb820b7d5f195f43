/* An HTTP/1.x response's framing (RFC 9112 §4-§7), fed in pieces of any size. */
#include <string.h>
#include <strings.h>

#include "core/buf.h"
#include "core/error.h"
#include "http/h1_parse.h"

#define DEFAULT_MAX_HEAD (256u * 1024)
#define MAX_CHUNK_LINE 4096 /* a chunk-size line, extensions included */

void nx_h1_parser_init(struct nx_h1_parser *p, struct nx_buf *head, size_t max_head, bool is_head_request)
{
    memset(p, 0, sizeof *p);
    p->head = head;
    p->max_head = max_head ? max_head : DEFAULT_MAX_HEAD;
    p->is_head_request = is_head_request;
    p->content_length = UINT64_MAX;
}

static int fail(struct nx_h1_parser *p, const char *why)
{
    p->err = why;
    return NX_EHTTP;
}

static bool is_tchar(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

/* Whether the comma-separated list [v, v + n) holds token (case-insensitive). */
static bool list_has(const char *v, size_t n, const char *token)
{
    size_t tl = strlen(token);

    for (size_t i = 0; i < n;) {
        size_t s, e;
        while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
            i++;
        s = i;
        while (i < n && v[i] != ',')
            i++;
        e = i;
        while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t'))
            e--;
        if (e - s == tl && strncasecmp(v + s, token, tl) == 0)
            return true;
    }
    return false;
}

/* The last coding of a Transfer-Encoding list is chunked. */
static bool last_is_chunked(const char *v, size_t n)
{
    while (n && (v[n - 1] == ' ' || v[n - 1] == '\t' || v[n - 1] == ','))
        n--;
    return n >= 7 && strncasecmp(v + n - 7, "chunked", 7) == 0 &&
           (n == 7 || v[n - 8] == ',' || v[n - 8] == ' ' || v[n - 8] == '\t');
}

/* The head in p->head is complete: status line and fields. Sets the body's framing. */
static int parse_head(struct nx_h1_parser *p)
{
    const char *s = p->head->data, *end = s + p->head->len, *eol;
    bool is_http10, has_te = false, is_chunked = false, has_close = false, has_keep = false;
    bool is_framing = false; /* the last field was Content-Length or Transfer-Encoding */
    uint64_t cl = UINT64_MAX;

    if (p->head->len < 12 || strncmp(s, "HTTP/1.", 7) != 0 || (s[7] != '0' && s[7] != '1') || s[8] != ' ' ||
        s[9] < '1' || s[9] > '9' || s[10] < '0' || s[10] > '9' || s[11] < '0' || s[11] > '9' ||
        (p->head->len > 12 && s[12] != ' ' && s[12] != '\r' && s[12] != '\n'))
        return fail(p, "not an HTTP/1.x status line");
    is_http10 = s[7] == '0';
    p->status = (s[9] - '0') * 100 + (s[10] - '0') * 10 + (s[11] - '0');
    eol = memchr(s, '\n', (size_t)(end - s));
    for (s = eol + 1; s < end; s = eol + 1) {
        const char *colon, *v, *ve;
        eol = memchr(s, '\n', (size_t)(end - s));
        ve = eol > s && eol[-1] == '\r' ? eol - 1 : eol;
        if (ve == s)
            break; /* the empty line */
        /* What a client may pass over: a line without a colon, or whose name is not a token (as
         * "Content-Length :" is not: curl does not take it for the length either, §5.1), and a
         * folded line (obs-fold, §5.2), unless it would add to the framing fields. */
        colon = memchr(s, ':', (size_t)(ve - s));
        if (*s == ' ' || *s == '\t') {
            if (is_framing)
                return fail(p, "folded Content-Length or Transfer-Encoding");
            continue;
        }
        is_framing = false;
        bool is_token = colon && colon > s;
        for (const char *q = s; is_token && q < colon; q++)
            is_token = is_tchar(*q);
        if (!is_token)
            continue;
        for (v = colon + 1; v < ve && (*v == ' ' || *v == '\t'); v++)
            ;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
            ve--;
        size_t nl = (size_t)(colon - s), vl = (size_t)(ve - v);
        if (nl == 14 && strncasecmp(s, "content-length", 14) == 0) {
            uint64_t n = 0;
            if (!vl)
                return fail(p, "invalid Content-Length");
            for (const char *q = v; q < ve; q++) {
                if (*q < '0' || *q > '9' || n > (UINT64_MAX - 9) / 10)
                    return fail(p, "invalid Content-Length");
                n = n * 10 + (uint64_t)(*q - '0');
            }
            if (cl != UINT64_MAX && cl != n)
                return fail(p, "conflicting Content-Length values");
            cl = n;
            is_framing = true;
        } else if (nl == 17 && strncasecmp(s, "transfer-encoding", 17) == 0) {
            is_framing = true;
            has_te = true;
            is_chunked = last_is_chunked(v, vl);
        } else if (nl == 10 && strncasecmp(s, "connection", 10) == 0) {
            has_close = has_close || list_has(v, vl, "close");
            has_keep = has_keep || list_has(v, vl, "keep-alive");
        }
    }
    p->is_keep_alive = !has_close && (!is_http10 || has_keep);
    if (p->status == 101)
        return fail(p, "unexpected protocol switch (101)");
    if (p->status < 200)
        return NX_H1_MORE; /* interim: the caller drops this head and reads the next */
    if (p->is_head_request || p->status == 204 || p->status == 304) {
        p->state = NX_H1_DONE;
    } else if (has_te) { /* §6.3: Transfer-Encoding overrides Content-Length */
        if (is_chunked) {
            p->state = NX_H1_CHUNK_SIZE;
        } else {
            p->state = NX_H1_TO_EOF;
            p->is_keep_alive = false;
        }
    } else if (cl != UINT64_MAX) {
        p->content_length = p->remaining = cl;
        p->state = cl ? NX_H1_LEN : NX_H1_DONE;
    } else {
        p->state = NX_H1_TO_EOF;
        p->is_keep_alive = false;
    }
    return NX_H1_COMPLETE;
}

/* Takes head bytes up to the blank line. Returns NX_H1_MORE (all taken, head goes on),
 * NX_H1_COMPLETE (a final head), NX_H1_STOPPED, or an error; *n is what it took. */
static int feed_head(struct nx_h1_parser *p, const char *d, size_t len, size_t *n, nx_h1_head_fn on_head,
                     void *udata)
{
    size_t i = 0;
    bool is_end = false;
    int rc;

    for (; i < len && !is_end; i++) {
        if (d[i] == '\n') {
            is_end = p->nl != 0;
            p->nl = 1;
        } else if (d[i] == '\r' && p->nl == 1) {
            p->nl = 2;
        } else {
            p->nl = 0;
        }
    }
    *n = i;
    if (p->head->len + i > p->max_head)
        return p->err = "response head exceeds the size cap", NX_ETOOBIG;
    nx_buf_append(p->head, d, i);
    if (!is_end)
        return NX_H1_MORE;
    p->nl = 0;
    if ((rc = parse_head(p)) < 0)
        return rc;
    if (rc == NX_H1_MORE) {
        nx_buf_reset(p->head);
        return NX_H1_MORE;
    }
    return on_head && on_head(p, udata) ? NX_H1_STOPPED : NX_H1_COMPLETE;
}

int nx_h1_feed(struct nx_h1_parser *p, const char *d, size_t len, size_t *used, nx_h1_head_fn on_head,
               nx_h1_body_fn on_body, void *udata)
{
    size_t i = 0;

    *used = 0;
    while (i < len && p->state != NX_H1_DONE) {
        size_t n;
        int rc, h;

        switch (p->state) {
        case NX_H1_HEAD:
            rc = feed_head(p, d + i, len - i, &n, on_head, udata);
            i += n;
            if (rc < 0 || rc == NX_H1_STOPPED) {
                *used = i;
                return rc;
            }
            continue;
        case NX_H1_LEN:
        case NX_H1_CHUNK_DATA:
        case NX_H1_TO_EOF:
            n = len - i;
            if (p->state != NX_H1_TO_EOF && n > p->remaining)
                n = (size_t)p->remaining;
            if (p->state != NX_H1_TO_EOF)
                p->remaining -= n;
            if (p->state == NX_H1_LEN && !p->remaining)
                p->state = NX_H1_DONE;
            else if (p->state == NX_H1_CHUNK_DATA && !p->remaining)
                p->state = NX_H1_CHUNK_END;
            if (on_body && n && on_body(d + i, n, udata)) {
                *used = i + n;
                return NX_H1_STOPPED;
            }
            i += n;
            continue;
        case NX_H1_CHUNK_SIZE:
            if (++p->line_len > MAX_CHUNK_LINE)
                return fail(p, "chunk-size line too long");
            if (d[i] == '\n') {
                if (p->digits == 0)
                    return fail(p, "chunk without a size");
                p->line_len = 0;
                p->digits = 0;
                p->remaining = p->chunk_size;
                p->state = p->chunk_size ? NX_H1_CHUNK_DATA : NX_H1_TRAILER;
                p->chunk_size = 0;
            } else if (p->digits >= 0 && (h = nx_hex_digit(d[i])) >= 0) {
                if (++p->digits > 15)
                    return fail(p, "chunk size too large");
                p->chunk_size = p->chunk_size * 16 + (uint64_t)h;
            } else if (p->digits == 0) {
                return fail(p, "invalid chunk size");
            } else {
                p->digits = p->digits > 0 ? -p->digits : p->digits; /* past the digits: extensions */
            }
            i++;
            continue;
        case NX_H1_CHUNK_END:
            if (d[i] == '\n')
                p->state = NX_H1_CHUNK_SIZE;
            else if (d[i] != '\r')
                return fail(p, "chunk data longer than its size");
            i++;
            continue;
        case NX_H1_TRAILER:
            if (++p->trailer_len > p->max_head)
                return p->err = "response trailers exceed the size cap", NX_ETOOBIG;
            if (d[i] == '\n') {
                if (p->line_len == 0)
                    p->state = NX_H1_DONE;
                p->line_len = 0;
            } else if (d[i] != '\r' || p->line_len) {
                p->line_len++;
            }
            i++;
            continue;
        case NX_H1_DONE:
            break;
        }
    }
    *used = i;
    return p->state == NX_H1_DONE ? NX_H1_COMPLETE : NX_H1_MORE;
}

int nx_h1_eof(struct nx_h1_parser *p)
{
    switch (p->state) {
    case NX_H1_TO_EOF:
    case NX_H1_DONE:
        p->state = NX_H1_DONE;
        return NX_H1_COMPLETE;
    case NX_H1_HEAD:
        return fail(p, p->head->len || p->status ? "connection closed in the response head"
                                                 : "Empty reply from server");
    default:
        return fail(p, "connection closed before the end of the response body");
    }
}
