#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "http/sse.h"

/* Feeds the input to the SSE reader three ways (whole, byte at a time, and in chunks whose sizes
 * come from the input itself) and checks they give the same events and the same result. A
 * small cap makes the NX_ETOOBIG paths reachable. */

#define FUZZ_CAP 512

static int record(const struct nx_sse_event *ev, void *udata)
{
    struct nx_buf *log = udata;
    size_t n;

    if (!ev->event || !ev->data || !ev->id || ev->data[ev->data_len] != '\0')
        abort();
    n = strlen(ev->event);
    nx_buf_append(log, &n, sizeof n);
    nx_buf_append(log, ev->event, n);
    nx_buf_append(log, &ev->data_len, sizeof ev->data_len);
    nx_buf_append(log, ev->data, ev->data_len);
    n = strlen(ev->id);
    nx_buf_append(log, &n, sizeof n);
    nx_buf_append(log, ev->id, n);
    return 0;
}

/* mode 0: whole; 1: byte at a time; 2: sizes from the input */
static int run(const uint8_t *data, size_t size, int mode, struct nx_buf *log, long *retry)
{
    struct nx_sse_reader r;
    int rc = 0;
    size_t i = 0, k = 0;

    nx_sse_reader_init(&r, FUZZ_CAP, record, log);
    while (i < size && rc == 0) {
        size_t step = size - i;
        if (mode == 1)
            step = 1;
        else if (mode == 2)
            step = (size_t)(data[k++ % size] % 13);
        if (step == 0) {
            /* an empty chunk must change nothing */
            if ((rc = nx_sse_feed(&r, "", 0)) != 0)
                break;
            step = 1;
        }
        if (step > size - i)
            step = size - i;
        rc = nx_sse_feed(&r, (const char *)data + i, step);
        i += step;
    }
    *retry = r.retry_ms;
    nx_sse_reader_cleanup(&r);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct nx_buf logs[3] = {NX_BUF_INIT, NX_BUF_INIT, NX_BUF_INIT};
    long retry[3];
    int rc[3];

    for (int m = 0; m < 3; m++)
        rc[m] = run(data, size, m, &logs[m], &retry[m]);
    for (int m = 1; m < 3; m++) {
        if (rc[m] != rc[0] || logs[m].len != logs[0].len ||
            (logs[0].len && memcmp(logs[m].data, logs[0].data, logs[0].len) != 0))
            abort();
        if (rc[0] == 0 && retry[m] != retry[0])
            abort();
    }
    for (int m = 0; m < 3; m++)
        nx_buf_cleanup(&logs[m]);
    return 0;
}
