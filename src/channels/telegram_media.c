#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "channels/media.h"
#include "channels/telegram.h"
#include "core/alloc.h"
#include "core/buf.h"
#include "core/error.h"
#include "http/multipart.h"
#include "llm/media.h"

/* Media for the Telegram channel: fetching what users send (getFile, then the file from
 * <api_url>/file/bot<token>/<file_path>, both with a size cap) into the data directory, and
 * building the multipart body of an upload. Files are written with names nexo makes up
 * (never the sender's), 0600 in 0700 directories. */

struct nx_tg_fetch {
    struct nx_tg_fetch_opts o; /* strings below are copies */
    struct nx_http_call *call;
    char ext[12];
};

static void fetch_free(struct nx_tg_fetch *f)
{
    free((char *)f->o.api_base);
    free((char *)f->o.file_base);
    free((char *)f->o.proxy);
    free((char *)f->o.file_id);
    free((char *)f->o.dir);
    free((char *)f->o.name);
    free(f);
}

static void finish(struct nx_tg_fetch *f, int rc, const char *path, int64_t size, const char *err)
{
    f->o.on_done(rc, path, size, err, f->o.udata);
    fetch_free(f);
}

int nx_tg_mkdirs(const char *dir)
{
    return nx_media_mkdirs(dir);
}

static void on_download(int rc, const struct nx_http_response *res, const char *err, void *udata)
{
    struct nx_tg_fetch *f = udata;
    struct nx_buf path = NX_BUF_INIT;
    f->call = NULL;
    if (rc == NX_ETOOBIG) {
        finish(f, NX_ETOOBIG, NULL, 0, "the file is larger than max_media_bytes");
        goto out;
    }
    if (rc < 0 || res->status != 200) {
        char msg[96];
        snprintf(msg, sizeof msg, "download answered %ld", res->status);
        finish(f, rc < 0 ? rc : NX_EHTTP, NULL, 0, rc < 0 ? err : msg);
        goto out;
    }
    if (nx_tg_mkdirs(f->o.dir) < 0) {
        finish(f, NX_EIO, NULL, 0, "cannot create the media directory");
        goto out;
    }
    nx_buf_printf(&path, "%s/%s.%s", f->o.dir, f->o.name, f->ext);
    if (nx_media_write_file(nx_buf_cstr(&path), res->body, res->body_len) < 0) {
        finish(f, NX_EIO, NULL, 0, "cannot write the media file");
        goto out;
    }
    finish(f, 0, nx_buf_cstr(&path), (int64_t)res->body_len, NULL);
out:
    nx_buf_cleanup(&path);
}

/* The extension of file_path when it is 1..8 letters or digits (lowercased), else fallback. */
static void pick_ext(const char *file_path, const char *fallback, char *out, size_t size)
{
    const char *dot = strrchr(file_path, '.');
    const char *slash = strrchr(file_path, '/');
    size_t n = 0;
    if (dot && (!slash || dot > slash) && strlen(dot + 1) <= 8) {
        for (const char *p = dot + 1; *p && n + 1 < size; p++) {
            char c = *p;
            if (c >= 'A' && c <= 'Z')
                c = (char)(c - 'A' + 'a');
            if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))) {
                n = 0;
                break;
            }
            out[n++] = c;
        }
    }
    if (n == 0)
        snprintf(out, size, "%s", fallback);
    else
        out[n] = '\0';
}

static void on_get_file(int rc, const struct nx_http_response *res, const char *err, void *udata)
{
    struct nx_tg_fetch *f = udata;
    char fpath[512];
    int64_t size = 0;
    f->call = NULL;
    if (rc < 0) {
        finish(f, rc, NULL, 0, err);
        return;
    }
    if (res->status != 200 || nx_tg_parse_file(res->body, res->body_len, fpath, sizeof fpath, &size) < 0) {
        char desc[200], msg[256];
        uint32_t ra;
        nx_tg_parse_error(res->body, res->body_len, desc, sizeof desc, &ra);
        snprintf(msg, sizeof msg, "getFile answered %ld %s", res->status, desc);
        finish(f, NX_EPROTO, NULL, 0, msg);
        return;
    }
    if (size > 0 && (uint64_t)size > f->o.max_bytes) {
        finish(f, NX_ETOOBIG, NULL, size, "the file is larger than max_media_bytes");
        return;
    }
    pick_ext(fpath, strcmp(f->o.type, "photo") == 0 ? "jpg" : "bin", f->ext, sizeof f->ext);
    struct nx_buf url = NX_BUF_INIT;
    nx_buf_printf(&url, "%s%s", f->o.file_base, fpath);
    struct nx_http_call_opts o = {
        .url = nx_buf_cstr(&url),
        .timeout_ms = 120000,
        .max_response_bytes = f->o.max_bytes,
        .proxy = f->o.proxy,
        .on_done = on_download,
        .udata = f,
    };
    f->call = nx_http_client_request(f->o.http, &o);
    nx_buf_cleanup(&url);
    if (!f->call)
        finish(f, NX_ECLOSED, NULL, 0, "the HTTP client is closing");
}

struct nx_tg_fetch *nx_tg_fetch_start(const struct nx_tg_fetch_opts *opts)
{
    static const struct nx_http_header hdr[] = {{"Content-Type", "application/json"}};
    struct nx_tg_fetch *f = nx_calloc(1, sizeof *f);
    struct nx_buf url = NX_BUF_INIT;
    f->o = *opts;
    f->o.api_base = nx_strdup(opts->api_base);
    f->o.file_base = nx_strdup(opts->file_base);
    f->o.proxy = opts->proxy ? nx_strdup(opts->proxy) : NULL;
    f->o.file_id = nx_strdup(opts->file_id);
    f->o.dir = nx_strdup(opts->dir);
    f->o.name = nx_strdup(opts->name);
    json_t *b = json_pack("{s:s}", "file_id", opts->file_id);
    char *text = json_dumps(b, JSON_COMPACT);
    nx_buf_printf(&url, "%sgetFile", f->o.api_base);
    struct nx_http_call_opts o = {
        .method = "POST",
        .url = nx_buf_cstr(&url),
        .headers = hdr,
        .nheaders = 1,
        .body = text,
        .body_len = strlen(text),
        .timeout_ms = 30000,
        .max_response_bytes = 65536,
        .proxy = f->o.proxy,
        .on_done = on_get_file,
        .udata = f,
    };
    f->call = nx_http_client_request(f->o.http, &o);
    json_decref(b);
    free(text);
    nx_buf_cleanup(&url);
    if (!f->call) {
        fetch_free(f);
        return NULL;
    }
    return f;
}

void nx_tg_fetch_cancel(struct nx_tg_fetch *f)
{
    if (f && f->call)
        nx_http_call_cancel(f->call); /* its on_done finishes f with NX_ECANCELED */
}

/* ---- uploads ---- */

int nx_tg_read_upload(const char *path, const char *allowed_dir, uint64_t max_bytes, char **data,
                      size_t *len, char *err, size_t errlen)
{
    char why[128];
    int rc = nx_file_read_under(allowed_dir, path, max_bytes, data, len, why, sizeof why);
    if (rc < 0)
        snprintf(err, errlen, "media %s", why);
    return rc;
}

void nx_tg_upload_body(struct nx_multipart *m, const json_t *fields, const char *field,
                       const char *filename, const char *mime, const char *data, size_t len)
{
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)fields, k, v) {
        if (json_is_string(v)) {
            nx_multipart_field(m, k, json_string_value(v));
        } else {
            char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
            nx_multipart_field(m, k, s ? s : "");
            free(s);
        }
    }
    nx_multipart_file(m, field, filename, mime, data, len);
}
