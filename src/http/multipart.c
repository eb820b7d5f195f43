#include <openssl/rand.h>
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "http/multipart.h"

void nx_multipart_init(struct nx_multipart *m)
{
    unsigned char r[16];
    static const char hex[] = "0123456789abcdef";
    size_t k = 0;
    nx_buf_init(&m->body);
    int ok = RAND_bytes(r, sizeof r);
    NX_ASSERT(ok == 1);
    k = (size_t)snprintf(m->boundary, sizeof m->boundary, "nexo-");
    for (size_t i = 0; i < sizeof r; i++) {
        m->boundary[k++] = hex[r[i] >> 4];
        m->boundary[k++] = hex[r[i] & 15];
    }
    m->boundary[k] = '\0';
    snprintf(m->content_type, sizeof m->content_type, "multipart/form-data; boundary=%s", m->boundary);
}

void nx_multipart_cleanup(struct nx_multipart *m)
{
    nx_buf_cleanup(&m->body);
}

void nx_multipart_field(struct nx_multipart *m, const char *name, const char *value)
{
    nx_buf_printf(&m->body, "--%s\r\nContent-Disposition: form-data; name=\"%s\"\r\n\r\n", m->boundary,
                  name);
    nx_buf_puts(&m->body, value);
    nx_buf_puts(&m->body, "\r\n");
}

void nx_multipart_file(struct nx_multipart *m, const char *name, const char *filename, const char *mime,
                       const void *data, size_t len)
{
    nx_buf_printf(&m->body, "--%s\r\nContent-Disposition: form-data; name=\"%s\"; filename=\"",
                  m->boundary, name);
    for (const char *p = filename; *p; p++) {
        unsigned char c = (unsigned char)*p;
        nx_buf_putc(&m->body, (c < ' ' || c == '"' || c == '\\' || c == 0x7f) ? '_' : (char)c);
    }
    nx_buf_printf(&m->body, "\"\r\nContent-Type: %s\r\n\r\n", mime ? mime : "application/octet-stream");
    nx_buf_append(&m->body, data, len);
    nx_buf_puts(&m->body, "\r\n");
}

const char *nx_multipart_finish(struct nx_multipart *m, size_t *len)
{
    nx_buf_printf(&m->body, "--%s--\r\n", m->boundary);
    *len = m->body.len;
    return m->body.data;
}

const char *nx_multipart_content_type(const struct nx_multipart *m)
{
    return m->content_type;
}
