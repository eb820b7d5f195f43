#ifndef NX_CHANNELS_MEDIA_H
#define NX_CHANNELS_MEDIA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "http/client.h"

/* Files users send, fetched into <data>/media/<channel>/<instance>/ (media.c): one GET with a
 * size cap, an optional SHA-256 check, written through a temporary file renamed into place,
 * 0600 in 0700 directories, under a name nexo makes (never the sender's). Shared by the
 * Telegram and WhatsApp adapters. Loop thread. */

/* rc 0 with the file's path and size; NX_ETOOBIG (larger than max_bytes), NX_EPROTO (not 200,
 * or the SHA-256 differs), NX_EIO, NX_ECANCELED or the HTTP client's error, with err. */
typedef void (*nx_media_done_fn)(int rc, const char *path, int64_t size, const char *err, void *udata);

struct nx_media_fetch_opts {
    struct nx_http_client *http;
    const char *url;
    const char *auth;       /* Authorization header value, or NULL; never logged */
    const char *proxy;      /* NULL = the client's default */
    uint64_t max_bytes;
    const char *sha256;     /* the expected digest, 64 hex digits or base64; NULL = no check */
    const char *dir;        /* created when missing */
    const char *name;       /* file name: <name>.<ext> */
    const char *ext;
    uint32_t timeout_ms;    /* 0 = 120 s */
    nx_media_done_fn on_done;
    void *udata;
};

struct nx_media_fetch;

/* NULL (on_done never runs) when the HTTP client is closing. */
struct nx_media_fetch *nx_media_fetch_start(const struct nx_media_fetch_opts *o);
/* on_done runs with NX_ECANCELED (from within this call). */
void nx_media_fetch_cancel(struct nx_media_fetch *f);

/* mkdir -p with 0700. */
int nx_media_mkdirs(const char *dir);
/* Writes data to path through "<path>.part", 0600, never following a symlink. */
int nx_media_write_file(const char *path, const char *data, size_t len);
/* Whether the SHA-256 of data is want (64 hex digits, either case, or standard base64). */
bool nx_media_sha256_ok(const char *want, const char *data, size_t len);
/* A file extension for a MIME type ("image/jpeg" -> "jpg"); fallback when unknown. */
const char *nx_media_ext(const char *mime, const char *fallback);

#endif
