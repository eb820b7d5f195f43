/* HTTP/1.x responses as the client's own engine reads them (http/h1_parse.c): the input is fed
 * once whole and once in pieces (sizes taken from its first byte); both must agree on the outcome,
 * the head and the body, and a parse never reads past what it was given. A disagreement, a crash
 * or anything a sanitizer sees is a finding. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/error.h"
#include "http/h1_parse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct run {
    struct nx_buf head, body;
    int rc;
    long status;
    int heads;
};

static int on_head(struct nx_h1_parser *p, void *ud)
{
    struct run *r = ud;
    r->heads++;
    r->status = p->status;
    return 0;
}

static int on_body(const char *d, size_t n, void *ud)
{
    struct run *r = ud;
    nx_buf_append(&r->body, d, n);
    return 0;
}

static void run(struct run *r, const char *d, size_t n, size_t step, int is_head)
{
    struct nx_h1_parser p;
    size_t off = 0;

    memset(r, 0, sizeof *r);
    nx_buf_init(&r->head);
    nx_buf_init(&r->body);
    nx_h1_parser_init(&p, &r->head, 4096, is_head);
    r->rc = NX_H1_MORE;
    while (off < n && r->rc == NX_H1_MORE) {
        size_t len = n - off < step ? n - off : step, used = 0;
        r->rc = nx_h1_feed(&p, d + off, len, &used, on_head, on_body, r);
        if (used > len)
            abort();
        if (r->rc == NX_H1_MORE && used != len)
            abort();
        off += used;
    }
    if (r->rc == NX_H1_MORE)
        r->rc = nx_h1_eof(&p) == NX_H1_COMPLETE ? 10 : 11;
    if (r->heads > 1)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct run whole, split;
    size_t step;

    if (size < 1)
        return 0;
    step = (data[0] & 0x3f) + 1;
    run(&whole, (const char *)data + 1, size - 1, size, data[0] & 0x40);
    run(&split, (const char *)data + 1, size - 1, step, data[0] & 0x40);
    if (whole.rc != split.rc || whole.status != split.status || whole.heads != split.heads ||
        whole.body.len != split.body.len ||
        (whole.body.len && memcmp(whole.body.data, split.body.data, whole.body.len)))
        abort();
    nx_buf_cleanup(&whole.head);
    nx_buf_cleanup(&whole.body);
    nx_buf_cleanup(&split.head);
    nx_buf_cleanup(&split.body);
    return 0;
}
