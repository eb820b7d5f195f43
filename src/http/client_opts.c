/* What a call's options ask for, checked and turned into libcurl's terms before the call is
 * set up (http/client.c): the proxy's scheme, the header lines. */
#include <curl/curl.h>
#include <string.h>
#include <strings.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/error.h"
#include "http/client_internal.h"

int nx_http_check_proxy(const char *p)
{
    static const char *const schemes[] = {"http://", "https://", "socks5://", "socks5h://"};

    if (!p || !p[0])
        return 0;
    for (size_t i = 0; i < NX_ARRAY_LEN(schemes); i++) {
        if (strncasecmp(p, schemes[i], strlen(schemes[i])) == 0)
            return 0;
    }
    return NX_EINVAL;
}

int nx_http_bad_header_text(const char *s)
{
    return !s || strpbrk(s, "\r\n") != NULL;
}

int nx_http_bad_header(const struct nx_http_header *h)
{
    return nx_http_bad_header_text(h->name) || !h->name[0] || strchr(h->name, ':') ||
           nx_http_bad_header_text(h->value);
}

int nx_http_build_headers(struct nx_http_call *call, const struct nx_http_call_opts *o)
{
    struct nx_buf line = NX_BUF_INIT;
    int rc = 0;

    int has_expect = 0;

    for (size_t i = 0; i < o->nheaders; i++) {
        const struct nx_http_header *h = &o->headers[i];
        if (nx_http_bad_header(h)) {
            rc = NX_EINVAL;
            break;
        }
        nx_buf_reset(&line);
        if (h->value[0])
            nx_buf_printf(&line, "%s: %s", h->name, h->value);
        else
            nx_buf_printf(&line, "%s;", h->name); /* curl's spelling of an empty header */
        call->hdrs = curl_slist_append(call->hdrs, line.data);
        NX_ASSERT(call->hdrs);
        if (strcasecmp(h->name, "Expect") == 0)
            has_expect = 1;
    }
    /* no "Expect: 100-continue" round trip unless the caller asks for it */
    if (rc == 0 && !has_expect)
        call->hdrs = curl_slist_append(call->hdrs, "Expect:");
    nx_buf_cleanup(&line);
    return rc;
}
