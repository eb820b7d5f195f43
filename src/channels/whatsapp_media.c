#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "channels/media.h"
#include "channels/whatsapp.h"
#include "core/alloc.h"
#include "core/buf.h"
#include "core/error.h"

/* Media users send on WhatsApp: the webhook gives only a media id. Meta's "Retrieve Media URL"
 * (GET /{version}/{media-id} with the access token) answers {messaging_product, url, mime_type,
 * sha256, file_size, id}; then "Download Media" (GET <url>, same Bearer header) gives the bytes,
 * which must match sha256. The URL expires after about 5 minutes, so it is used at once.
 * https://developers.facebook.com/docs/whatsapp/cloud-api/reference/media */

struct nx_wa_fetch {
    struct nx_wa_fetch_opts o; /* strings below are copies */
    struct nx_http_call *call;
    struct nx_media_fetch *dl;
    char *mime;
};

static void fetch_free(struct nx_wa_fetch *f)
{
    free((char *)f->o.api_base);
    free((char *)f->o.auth);
    free((char *)f->o.proxy);
    free((char *)f->o.media_id);
    free((char *)f->o.dir);
    free((char *)f->o.name);
    free(f->mime);
    free(f);
}

static void finish(struct nx_wa_fetch *f, int rc, const char *path, int64_t size, const char *err)
{
    f->o.on_done(rc, path, f->mime, size, err, f->o.udata);
    fetch_free(f);
}

static void on_downloaded(int rc, const char *path, int64_t size, const char *err, void *udata)
{
    struct nx_wa_fetch *f = udata;
    f->dl = NULL;
    finish(f, rc, path, size, err);
}

int nx_wa_parse_media_url(const char *body, size_t len, struct nx_wa_media_info *out)
{
    json_t *root = json_loadb(body ? body : "", len, 0, NULL);
    const char *url = json_string_value(json_object_get(root, "url"));
    const char *mime = json_string_value(json_object_get(root, "mime_type"));
    const char *sha = json_string_value(json_object_get(root, "sha256"));
    const json_t *size = json_object_get(root, "file_size");
    int rc = NX_EPROTO;

    memset(out, 0, sizeof *out);
    out->file_size = -1;
    if (!url || (strncmp(url, "https://", 8) != 0 && strncmp(url, "http://", 7) != 0))
        goto out;
    if (json_is_integer(size)) {
        out->file_size = json_integer_value(size);
    } else if (json_is_string(size)) { /* Meta sends it as a string */
        char *end = NULL;
        long long v = strtoll(json_string_value(size), &end, 10);
        if (end && !*end && v >= 0)
            out->file_size = v;
    }
    out->url = nx_strdup(url);
    out->mime_type = mime ? nx_strdup(mime) : NULL;
    out->sha256 = sha ? nx_strdup(sha) : NULL;
    rc = 0;
out:
    json_decref(root);
    return rc;
}

void nx_wa_media_info_cleanup(struct nx_wa_media_info *m)
{
    free(m->url);
    free(m->mime_type);
    free(m->sha256);
    memset(m, 0, sizeof *m);
}

static void on_media_url(int rc, const struct nx_http_response *res, const char *err, void *udata)
{
    struct nx_wa_fetch *f = udata;
    struct nx_wa_media_info mi;
    struct nx_wa_error e;
    char msg[320];

    f->call = NULL;
    if (rc < 0) {
        finish(f, rc, NULL, 0, err);
        return;
    }
    if (res->status != 200 || nx_wa_parse_media_url(res->body, res->body_len, &mi) < 0) {
        nx_wa_parse_error(res->body, res->body_len, &e);
        snprintf(msg, sizeof msg, "media URL lookup answered %ld%s%s", res->status, e.message[0] ? ": " : "",
                 e.message);
        finish(f, NX_EPROTO, NULL, 0, msg);
        return;
    }
    f->mime = mi.mime_type ? nx_strdup(mi.mime_type) : NULL;
    if (mi.file_size > 0 && (uint64_t)mi.file_size > f->o.max_bytes) {
        nx_wa_media_info_cleanup(&mi);
        finish(f, NX_ETOOBIG, NULL, 0, "the file is larger than max_media_bytes");
        return;
    }
    struct nx_media_fetch_opts mo = {
        .http = f->o.http, .url = mi.url, .auth = f->o.auth, .proxy = f->o.proxy,
        .max_bytes = f->o.max_bytes, .sha256 = mi.sha256, .dir = f->o.dir, .name = f->o.name,
        .ext = nx_media_ext(mi.mime_type, "bin"), .on_done = on_downloaded, .udata = f,
    };
    f->dl = nx_media_fetch_start(&mo);
    nx_wa_media_info_cleanup(&mi);
    if (!f->dl)
        finish(f, NX_ECLOSED, NULL, 0, "the HTTP client is closing");
}

static bool id_ok(const char *id)
{
    size_t n = id ? strlen(id) : 0;
    if (n == 0 || n > 128)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = id[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
              c == '-'))
            return false;
    }
    return true;
}

struct nx_wa_fetch *nx_wa_fetch_start(const struct nx_wa_fetch_opts *opts, int *rc)
{
    struct nx_wa_fetch *f;
    struct nx_buf url = NX_BUF_INIT;

    *rc = 0;
    if (!id_ok(opts->media_id)) {
        *rc = NX_EINVAL;
        return NULL;
    }
    f = nx_calloc(1, sizeof *f);
    f->o = *opts;
    f->o.api_base = nx_strdup(opts->api_base);
    f->o.auth = nx_strdup(opts->auth);
    f->o.proxy = opts->proxy ? nx_strdup(opts->proxy) : NULL;
    f->o.media_id = nx_strdup(opts->media_id);
    f->o.dir = nx_strdup(opts->dir);
    f->o.name = nx_strdup(opts->name);
    nx_buf_printf(&url, "%s%s", f->o.api_base, f->o.media_id);
    const struct nx_http_header hdr[] = {{"Authorization", f->o.auth}};
    struct nx_http_call_opts o = {
        .url = nx_buf_cstr(&url),
        .headers = hdr,
        .nheaders = 1,
        .timeout_ms = 30000,
        .max_response_bytes = 65536,
        .proxy = f->o.proxy,
        .on_done = on_media_url,
        .udata = f,
    };
    f->call = nx_http_client_request(f->o.http, &o);
    nx_buf_cleanup(&url);
    if (!f->call) {
        fetch_free(f);
        *rc = NX_ECLOSED;
        return NULL;
    }
    return f;
}

void nx_wa_fetch_cancel(struct nx_wa_fetch *f)
{
    if (!f)
        return;
    if (f->call)
        nx_http_call_cancel(f->call);
    else if (f->dl)
        nx_media_fetch_cancel(f->dl);
}
