#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/sha.h>

#include "channels/media.h"
#include "core/alloc.h"
#include "core/buf.h"
#include "core/error.h"
#include "core/log.h"

struct nx_media_fetch {
    struct nx_media_fetch_opts o; /* strings below are copies */
    struct nx_http_call *call;
};

int nx_media_mkdirs(const char *dir)
{
    char *p = nx_strdup(dir);
    size_t len = strlen(p);
    struct stat st;
    int rc = 0;
    for (size_t i = 1; i <= len; i++) {
        if (p[i] != '/' && p[i] != '\0')
            continue;
        char c = p[i];
        p[i] = '\0';
        if (mkdir(p, 0700) < 0 && (errno != EEXIST || stat(p, &st) < 0 || !S_ISDIR(st.st_mode))) {
            rc = NX_EIO;
            break;
        }
        p[i] = c;
    }
    free(p);
    return rc;
}

int nx_media_make_outbox(const char *data_dir)
{
    struct nx_buf dir = NX_BUF_INIT;
    nx_buf_printf(&dir, "%s/media/outbox", data_dir);
    int rc = nx_media_mkdirs(nx_buf_cstr(&dir));
    if (rc < 0)
        nx_error("channels", "cannot create %s (%s): agents cannot send files until it exists",
                 nx_buf_cstr(&dir), strerror(errno));
    nx_buf_cleanup(&dir);
    return rc;
}

int nx_media_write_file(const char *path, const char *data, size_t len)
{
    static _Atomic unsigned long seq; /* writers on several threads may write one path at once */
    struct nx_buf tmp = NX_BUF_INIT;
    int fd = -1, rc = NX_EIO;
    nx_buf_printf(&tmp, "%s.%ld.%lu.part", path, (long)getpid(), ++seq);
    fd = open(nx_buf_cstr(&tmp), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        goto out;
    for (size_t off = 0; off < len;) {
        ssize_t w = write(fd, data + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            goto out;
        off += (size_t)w;
    }
    rc = close(fd) == 0 && rename(nx_buf_cstr(&tmp), path) == 0 ? 0 : NX_EIO;
    fd = -1;
out:
    if (fd >= 0)
        close(fd);
    if (rc < 0)
        unlink(nx_buf_cstr(&tmp));
    nx_buf_cleanup(&tmp);
    return rc;
}

bool nx_media_sha256_ok(const char *want, const char *data, size_t len)
{
    unsigned char md[SHA256_DIGEST_LENGTH], got[48];
    char hex[2 * SHA256_DIGEST_LENGTH + 1];
    size_t wl = want ? strlen(want) : 0;

    SHA256((const unsigned char *)data, len, md);
    if (wl == 2 * SHA256_DIGEST_LENGTH) {
        for (size_t i = 0; i < SHA256_DIGEST_LENGTH; i++)
            snprintf(hex + 2 * i, 3, "%02x", md[i]);
        return strcasecmp(hex, want) == 0;
    }
    if (wl == 44) { /* base64 of 32 bytes, one '=' of padding */
        int n = EVP_DecodeBlock(got, (const unsigned char *)want, 44);
        return n == 33 && want[43] == '=' && memcmp(got, md, sizeof md) == 0;
    }
    return false;
}

const char *nx_media_ext(const char *mime, const char *fallback)
{
    static const char *const map[][2] = {
        {"image/jpeg", "jpg"}, {"image/png", "png"}, {"image/gif", "gif"}, {"image/webp", "webp"},
        {"application/pdf", "pdf"}, {"text/plain", "txt"}, {"text/csv", "csv"},
        {"application/json", "json"}, {"audio/ogg", "ogg"}, {"audio/mpeg", "mp3"},
        {"audio/mp4", "m4a"}, {"audio/aac", "aac"}, {"audio/amr", "amr"}, {"video/mp4", "mp4"},
        {"video/3gpp", "3gp"}, {"application/zip", "zip"},
    };
    size_t n = 0;
    if (mime) {
        n = strcspn(mime, "; ");
        for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
            if (strlen(map[i][0]) == n && strncasecmp(mime, map[i][0], n) == 0)
                return map[i][1];
    }
    return fallback;
}

static void fetch_free(struct nx_media_fetch *f)
{
    free((char *)f->o.url);
    free((char *)f->o.auth);
    free((char *)f->o.proxy);
    free((char *)f->o.sha256);
    free((char *)f->o.dir);
    free((char *)f->o.name);
    free((char *)f->o.ext);
    free(f);
}

static void finish(struct nx_media_fetch *f, int rc, const char *path, int64_t size, const char *err)
{
    f->o.on_done(rc, path, size, err, f->o.udata);
    fetch_free(f);
}

static void on_download(int rc, const struct nx_http_response *res, const char *err, void *udata)
{
    struct nx_media_fetch *f = udata;
    struct nx_buf path = NX_BUF_INIT;
    char msg[96];
    f->call = NULL;
    if (rc == NX_ETOOBIG) {
        finish(f, NX_ETOOBIG, NULL, 0, "the file is larger than max_media_bytes");
    } else if (rc < 0 || res->status != 200) {
        snprintf(msg, sizeof msg, "download answered %ld", res ? res->status : 0L);
        finish(f, rc < 0 ? rc : NX_EHTTP, NULL, 0, rc < 0 ? err : msg);
    } else if (f->o.sha256 && !nx_media_sha256_ok(f->o.sha256, res->body, res->body_len)) {
        finish(f, NX_EPROTO, NULL, 0, "the file's SHA-256 does not match");
    } else if (nx_media_mkdirs(f->o.dir) < 0) {
        finish(f, NX_EIO, NULL, 0, "cannot create the media directory");
    } else {
        nx_buf_printf(&path, "%s/%s.%s", f->o.dir, f->o.name, f->o.ext);
        if (nx_media_write_file(nx_buf_cstr(&path), res->body, res->body_len) < 0)
            finish(f, NX_EIO, NULL, 0, "cannot write the media file");
        else
            finish(f, 0, nx_buf_cstr(&path), (int64_t)res->body_len, NULL);
    }
    nx_buf_cleanup(&path);
}

struct nx_media_fetch *nx_media_fetch_start(const struct nx_media_fetch_opts *o)
{
    struct nx_media_fetch *f = nx_calloc(1, sizeof *f);
    struct nx_http_header hdr[1];
    f->o = *o;
    f->o.url = nx_strdup(o->url);
    f->o.auth = o->auth ? nx_strdup(o->auth) : NULL;
    f->o.proxy = o->proxy ? nx_strdup(o->proxy) : NULL;
    f->o.sha256 = o->sha256 && *o->sha256 ? nx_strdup(o->sha256) : NULL;
    f->o.dir = nx_strdup(o->dir);
    f->o.name = nx_strdup(o->name);
    f->o.ext = nx_strdup(o->ext ? o->ext : "bin");
    hdr[0].name = "Authorization";
    hdr[0].value = f->o.auth;
    struct nx_http_call_opts co = {
        .url = f->o.url,
        .headers = hdr,
        .nheaders = f->o.auth ? 1 : 0,
        .timeout_ms = o->timeout_ms ? o->timeout_ms : 120000,
        .max_response_bytes = o->max_bytes,
        .proxy = f->o.proxy,
        .on_done = on_download,
        .udata = f,
    };
    f->call = nx_http_client_request(o->http, &co);
    if (!f->call) {
        fetch_free(f);
        return NULL;
    }
    return f;
}

void nx_media_fetch_cancel(struct nx_media_fetch *f)
{
    if (f && f->call)
        nx_http_call_cancel(f->call);
}
