#ifndef NX_HTTP_MULTIPART_H
#define NX_HTTP_MULTIPART_H

#include <stddef.h>

#include "core/buf.h"

/* A multipart/form-data request body (RFC 7578), built in memory, for nx_http_client_request:
 * pass nx_multipart_content_type() as the Content-Type header and body/len from
 * nx_multipart_finish(). The boundary is 128 random bits. */
struct nx_multipart {
    struct nx_buf body;
    char boundary[48];
    char content_type[96];
};

void nx_multipart_init(struct nx_multipart *m);
void nx_multipart_cleanup(struct nx_multipart *m);
/* A text field. name must be a plain token (letters, digits, _ -). */
void nx_multipart_field(struct nx_multipart *m, const char *name, const char *value);
/* A file part. The filename's quotes, backslashes and control bytes become '_'; mime NULL =
 * application/octet-stream. */
void nx_multipart_file(struct nx_multipart *m, const char *name, const char *filename, const char *mime,
                       const void *data, size_t len);
/* Closes the body; returns it (valid until cleanup) and its length. */
const char *nx_multipart_finish(struct nx_multipart *m, size_t *len);
/* "multipart/form-data; boundary=..." */
const char *nx_multipart_content_type(const struct nx_multipart *m);

#endif
