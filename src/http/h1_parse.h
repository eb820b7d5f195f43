#ifndef NX_HTTP_H1_PARSE_H
#define NX_HTTP_H1_PARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"

/* An HTTP/1.x response's framing (RFC 9112), for the client's own engine (http/h1.c): the head,
 * kept raw as nx_http_response.headers wants it (interim 1xx heads dropped), then the body by
 * chunked coding, Content-Length or the connection's end (§6.3). Bytes in, events out; no I/O. */

enum nx_h1_state {
    NX_H1_HEAD,
    NX_H1_LEN,        /* Content-Length body: `remaining` bytes to come */
    NX_H1_CHUNK_SIZE, /* a chunk-size line (extensions skipped) */
    NX_H1_CHUNK_DATA, /* `remaining` bytes of the chunk */
    NX_H1_CHUNK_END,  /* the CRLF after a chunk's data */
    NX_H1_TRAILER,    /* trailer lines, up to the empty one */
    NX_H1_TO_EOF,     /* a body the connection's end delimits */
    NX_H1_DONE
};

struct nx_h1_parser {
    enum nx_h1_state state;
    bool is_head_request; /* set before feeding: the answer to HEAD has no body */
    bool is_keep_alive;   /* known once the head is: the connection may carry another request */
    long status;          /* of the final response, once its head is complete */
    struct nx_buf *head;  /* the caller's buffer for the raw head */
    size_t max_head;      /* head (and trailer) bytes allowed */
    uint64_t content_length; /* UINT64_MAX when the head gave none */
    uint64_t remaining;
    uint64_t chunk_size;
    size_t line_len;      /* bytes of the current chunk-size or trailer line */
    size_t trailer_len;
    int nl;               /* head end scan: 1 after LF, 2 after LF CR */
    int digits;           /* hex digits of the chunk size so far; -1 once past them */
    const char *err;      /* why the last feed failed */
};

/* The head is complete (final status, not 1xx): returns non-zero to stop feeding. */
typedef int (*nx_h1_head_fn)(struct nx_h1_parser *p, void *udata);
/* Body bytes, as they come (chunk framing removed): returns non-zero to stop feeding. */
typedef int (*nx_h1_body_fn)(const char *data, size_t len, void *udata);

#define NX_H1_MORE 0     /* all of data used; the response goes on */
#define NX_H1_COMPLETE 1 /* the response ended; *used bytes of data were part of it */
#define NX_H1_STOPPED 2  /* a callback asked to stop */

/* head must outlive the parser; max_head 0 = 256 KiB. */
void nx_h1_parser_init(struct nx_h1_parser *p, struct nx_buf *head, size_t max_head, bool is_head_request);
/* Feeds the next bytes of the response. Returns NX_H1_MORE, NX_H1_COMPLETE, NX_H1_STOPPED, or
 * NX_EHTTP (malformed; p->err says why) or NX_ETOOBIG (head or trailers over max_head). */
int nx_h1_feed(struct nx_h1_parser *p, const char *data, size_t len, size_t *used, nx_h1_head_fn on_head,
               nx_h1_body_fn on_body, void *udata);
/* The connection ended: NX_H1_COMPLETE for a body read to the end, else NX_EHTTP with p->err. */
int nx_h1_eof(struct nx_h1_parser *p);

#endif
