#ifndef NX_HTTP_SSE_H
#define NX_HTTP_SSE_H

#include <stddef.h>

#include "core/buf.h"

/* Server-sent events (WHATWG HTML, "Interpreting an event stream"): an incremental reader fed
 * arbitrary chunks, and a writer. */

struct nx_sse_event {
    const char *event; /* "message" when the stream gave none */
    const char *data;  /* data lines joined with '\n', NUL-terminated */
    size_t data_len;
    const char *id;    /* last event id seen, or "" */
};

/* Return 0 to go on, non-zero to stop (nx_sse_feed then returns that value). */
typedef int (*nx_sse_event_fn)(const struct nx_sse_event *ev, void *udata);

struct nx_sse_reader {
    struct nx_buf line;
    struct nx_buf data;
    struct nx_buf event;
    struct nx_buf id;
    size_t max_event_bytes;
    long retry_ms;      /* last "retry:" value, -1 if none */
    int saw_cr;         /* previous chunk ended in '\r' */
    int bom_checked;
    nx_sse_event_fn fn;
    void *udata;
};

/* max_event_bytes caps one line and one event's data + name (0 = 1 MiB). */
void nx_sse_reader_init(struct nx_sse_reader *r, size_t max_event_bytes, nx_sse_event_fn fn,
                        void *udata);
void nx_sse_reader_cleanup(struct nx_sse_reader *r);
/* Returns 0, the callback's non-zero value, or NX_ETOOBIG when an event or line exceeds the
 * cap. */
int nx_sse_feed(struct nx_sse_reader *r, const char *chunk, size_t len);
/* At end of stream: dispatches nothing (an unterminated event is dropped, as the spec says). */

/* Appends one event ("event: x\ndata: ...\n\n"; multi-line data split into data lines). */
void nx_sse_write(struct nx_buf *out, const char *event, const char *data, size_t len);

#endif
