#ifndef NX_CHANNELS_MEDIA_H
#define NX_CHANNELS_MEDIA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

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
/* Makes <data_dir>/media/outbox/ (0700; an existing one is left as it is): the only place files
 * an agent sends (the send_message tool's media) are read from. 0 or NX_EIO (logged). */
int nx_media_make_outbox(const char *data_dir);
/* ---- retention (media_sweep.c) ---- */

/* One pass's bounds and results. */
struct nx_media_sweep_pass {
    int64_t before_ms;   /* files last written before this (unix ms) go */
    size_t max_files;    /* deletions at most */
    size_t deleted, scanned, errors;
};
/* Deletes the regular files under dir (symlinks not followed, 4 levels at most) written before
 * p->before_ms, until p->max_files are deleted or 100000 entries were looked at (counted in p,
 * which may carry counts from an earlier call). Blocking: the sweeper runs it in the thread
 * pool. A missing dir is no error. */
void nx_media_sweep(const char *dir, struct nx_media_sweep_pass *p);

/* Deletes received files older than retention_ms under <media_root>/<type>/ for each of types,
 * every interval_ms (0 = 1 h; the first pass after a minute, or interval_ms if shorter), at
 * most max_files (0 = 1000) per pass, in the libuv thread pool. Never touches <media_root>/outbox
 * nor anything outside those directories. Loop thread. */
struct nx_media_sweeper;
struct nx_media_sweeper *nx_media_sweeper_new(uv_loop_t *loop, const char *media_root,
                                              const char *const *types, size_t ntypes,
                                              uint64_t retention_ms, uint64_t interval_ms,
                                              size_t max_files);
/* Files deleted so far. */
uint64_t nx_media_sweeper_deleted(const struct nx_media_sweeper *s);
/* Stops it (a pass under way finishes in the pool first, then the memory goes). Accepts NULL. */
void nx_media_sweeper_free(struct nx_media_sweeper *s);

/* Writes data to path through "<path>.part", 0600, never following a symlink. */
int nx_media_write_file(const char *path, const char *data, size_t len);
/* Whether the SHA-256 of data is want (64 hex digits, either case, or standard base64). */
bool nx_media_sha256_ok(const char *want, const char *data, size_t len);
/* A file extension for a MIME type ("image/jpeg" -> "jpg"); fallback when unknown. */
const char *nx_media_ext(const char *mime, const char *fallback);

#endif
