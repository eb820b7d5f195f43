#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "channels/markdown.h"
#include "core/buf.h"

/* Agent text (model output: outside input as far as the converter goes) rendered for Telegram
 * and WhatsApp, then the HTML split into chunks (the first byte picks the limit). */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct nx_buf html = NX_BUF_INIT, wa = NX_BUF_INIT;
    size_t limit = size ? (size_t)data[0] % 64 + 1 : 1;
    const char *text = (const char *)data + (size ? 1 : 0);
    size_t len = size ? size - 1 : 0;

    nx_md_render(&nx_md_telegram, text, len, &html);
    nx_md_render(&nx_md_whatsapp, text, len, &wa);
    struct nx_md_chunk *v = NULL;
    size_t n = nx_md_split_html(html.data ? html.data : "", html.len, limit, &v);
    for (size_t i = 0; i < n; i++) {
        if (!v[i].html || !v[i].plain)
            abort();
    }
    nx_md_chunks_free(v, n);
    /* any bytes at all through the splitter */
    n = nx_md_split_html(text, len, limit, &v);
    nx_md_chunks_free(v, n);
    nx_buf_cleanup(&html);
    nx_buf_cleanup(&wa);
    return 0;
}
