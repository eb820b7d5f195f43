#include <limits.h>
#include <string.h>

#include "core/error.h"
#include "http/sse.h"

/* Server-sent events, following WHATWG HTML "9.2.6 Interpreting an event stream". The reader
 * is a byte-level state machine: any split of the input into chunks yields the same events. */

#define SSE_DEFAULT_MAX (1024u * 1024u)

static const char bom[3] = {'\xEF', '\xBB', '\xBF'};

void nx_sse_reader_init(struct nx_sse_reader *r, size_t max_event_bytes, nx_sse_event_fn fn,
                        void *udata)
{
    memset(r, 0, sizeof *r);
    nx_buf_init(&r->line);
    nx_buf_init(&r->data);
    nx_buf_init(&r->event);
    nx_buf_init(&r->id);
    r->max_event_bytes = max_event_bytes ? max_event_bytes : SSE_DEFAULT_MAX;
    r->retry_ms = -1;
    r->fn = fn;
    r->udata = udata;
}

void nx_sse_reader_cleanup(struct nx_sse_reader *r)
{
    nx_buf_cleanup(&r->line);
    nx_buf_cleanup(&r->data);
    nx_buf_cleanup(&r->event);
    nx_buf_cleanup(&r->id);
}

/* A blank line: hand the buffered event to the callback (unless it has no data). The id is
 * the "last event ID buffer", which persists across events. */
static int dispatch(struct nx_sse_reader *r)
{
    int rc = 0;

    if (r->data.len > 0) {
        struct nx_sse_event ev;
        r->data.len--; /* drop the newline appended after the last data line */
        r->data.data[r->data.len] = '\0';
        ev.event = r->event.len ? r->event.data : "message";
        ev.data = r->data.data;
        ev.data_len = r->data.len;
        ev.id = nx_buf_cstr(&r->id);
        rc = r->fn ? r->fn(&ev, r->udata) : 0;
    }
    nx_buf_reset(&r->data);
    nx_buf_reset(&r->event);
    return rc;
}

static void set_retry(struct nx_sse_reader *r, const char *v, size_t n)
{
    long ms = 0;

    if (n == 0)
        return;
    for (size_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9')
            return;
    }
    for (size_t i = 0; i < n; i++) {
        int d = v[i] - '0';
        ms = ms > (LONG_MAX - d) / 10 ? LONG_MAX : ms * 10 + d;
    }
    r->retry_ms = ms;
}

/* One complete line, without its terminator. */
static int process_line(struct nx_sse_reader *r, const char *ln, size_t n)
{
    const char *colon, *val;
    size_t flen, vlen;

    if (n == 0)
        return dispatch(r);
    if (ln[0] == ':')
        return 0;
    colon = memchr(ln, ':', n);
    if (colon) {
        flen = (size_t)(colon - ln);
        val = colon + 1;
        vlen = n - flen - 1;
        if (vlen > 0 && val[0] == ' ') {
            val++;
            vlen--;
        }
    } else {
        flen = n;
        val = ln + n;
        vlen = 0;
    }

    if (flen == 5 && memcmp(ln, "event", 5) == 0) {
        if (vlen + r->data.len > r->max_event_bytes)
            return NX_ETOOBIG;
        nx_buf_reset(&r->event);
        nx_buf_append(&r->event, val, vlen);
    } else if (flen == 4 && memcmp(ln, "data", 4) == 0) {
        if (r->data.len + vlen + 1 + r->event.len > r->max_event_bytes)
            return NX_ETOOBIG;
        nx_buf_append(&r->data, val, vlen);
        nx_buf_putc(&r->data, '\n');
    } else if (flen == 2 && memcmp(ln, "id", 2) == 0) {
        if (!memchr(val, '\0', vlen)) {
            nx_buf_reset(&r->id);
            nx_buf_append(&r->id, val, vlen);
        }
    } else if (flen == 5 && memcmp(ln, "retry", 5) == 0) {
        set_retry(r, val, vlen);
    }
    /* any other field is ignored */
    return 0;
}

static int feed_lines(struct nx_sse_reader *r, const char *chunk, size_t len)
{
    size_t i = 0;
    int rc;

    if (len == 0)
        return 0;
    if (r->saw_cr) {
        r->saw_cr = 0;
        if (chunk[0] == '\n')
            i = 1;
    }
    while (i < len) {
        size_t j = i;
        const char *ln;
        size_t n;

        while (j < len && chunk[j] != '\n' && chunk[j] != '\r')
            j++;
        if (j == len) {
            if (r->line.len + (len - i) > r->max_event_bytes)
                return NX_ETOOBIG;
            nx_buf_append(&r->line, chunk + i, len - i);
            return 0;
        }
        if (r->line.len + (j - i) > r->max_event_bytes)
            return NX_ETOOBIG;
        if (r->line.len > 0) {
            nx_buf_append(&r->line, chunk + i, j - i);
            ln = r->line.data;
            n = r->line.len;
        } else {
            ln = chunk + i;
            n = j - i;
        }
        if (chunk[j] == '\r') {
            if (j + 1 < len) {
                if (chunk[j + 1] == '\n')
                    j++;
            } else {
                r->saw_cr = 1; /* a LF starting the next chunk belongs to this line end */
            }
        }
        i = j + 1;
        rc = process_line(r, ln, n);
        nx_buf_reset(&r->line);
        if (rc)
            return rc;
    }
    return 0;
}

int nx_sse_feed(struct nx_sse_reader *r, const char *chunk, size_t len)
{
    if (!r->bom_checked && len > 0) {
        /* The first bytes of the stream may be a (possibly split) UTF-8 BOM. Until we know,
         * they wait in r->line, which is otherwise empty at the start of the stream. */
        char head[3];
        size_t have = r->line.len, take = 3 - have < len ? 3 - have : len, hn;
        int rc;

        nx_buf_append(&r->line, chunk, take);
        chunk += take;
        len -= take;
        if (r->line.len < 3 && memcmp(r->line.data, bom, r->line.len) == 0)
            return 0; /* still a prefix of the BOM; wait for more */
        r->bom_checked = 1;
        hn = r->line.len;
        memcpy(head, r->line.data, hn);
        nx_buf_reset(&r->line);
        if (hn == 3 && memcmp(head, bom, 3) == 0)
            hn = 0;
        if ((rc = feed_lines(r, head, hn)) != 0)
            return rc;
    }
    return feed_lines(r, chunk, len);
}

/* Appends s[0..n) split at every CR, LF or CRLF, each piece as "<prefix><piece>\n". */
static void write_lines(struct nx_buf *out, const char *prefix, const char *s, size_t n)
{
    size_t i = 0;

    for (;;) {
        size_t j = i;
        while (j < n && s[j] != '\n' && s[j] != '\r')
            j++;
        nx_buf_puts(out, prefix);
        nx_buf_append(out, s + i, j - i);
        nx_buf_putc(out, '\n');
        if (j >= n)
            break;
        if (s[j] == '\r' && j + 1 < n && s[j + 1] == '\n')
            j++;
        i = j + 1;
    }
}

void nx_sse_write(struct nx_buf *out, const char *event, const char *data, size_t len)
{
    if (event && event[0]) {
        /* an event name cannot span lines: keep only its first line */
        size_t n = strcspn(event, "\r\n");
        nx_buf_puts(out, "event: ");
        nx_buf_append(out, event, n);
        nx_buf_putc(out, '\n');
    }
    write_lines(out, "data: ", data ? data : "", data ? len : 0);
    nx_buf_putc(out, '\n');
}
