/* Reading a response's header block (nx_http_response.headers: the status line and the header
 * lines of the last block, as received). */
#include <string.h>
#include <strings.h>

#include "http/client.h"

int nx_http_response_header(const struct nx_http_response *res, const char *name, char *out,
                            size_t outlen)
{
    const char *p, *end;
    size_t nlen;

    if (!res || !res->headers || !name)
        return -1;
    nlen = strlen(name);
    p = res->headers;
    end = p + res->headers_len;
    /* skip the status line */
    p = memchr(p, '\n', (size_t)(end - p));
    while (p && p < end) {
        const char *ln = p + 1, *eol = memchr(ln, '\n', (size_t)(end - ln));
        const char *v, *ve;
        size_t vlen;

        if (!eol)
            eol = end;
        p = eol;
        if ((size_t)(eol - ln) <= nlen || ln[nlen] != ':' || strncasecmp(ln, name, nlen) != 0)
            continue;
        v = ln + nlen + 1;
        ve = eol;
        while (v < ve && (*v == ' ' || *v == '\t'))
            v++;
        while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t'))
            ve--;
        vlen = (size_t)(ve - v);
        if (out && outlen > 0) {
            size_t n = vlen < outlen - 1 ? vlen : outlen - 1;
            memcpy(out, v, n);
            out[n] = '\0';
        }
        return vlen > (size_t)0x7fffffff ? 0x7fffffff : (int)vlen;
    }
    return -1;
}
