/* Media carried in routed work (carry.h): the gateway reads the files the model would read and
 * puts them in the work item as base64; the agents process writes them under its own media root,
 * once per content, and builds the user message from them as a turn in one process would. */
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>

#include "agent/carry.h"
#include "channels/media.h"
#include "core/alloc.h"
#include "core/buf.h"
#include "core/error.h"
#include "core/log.h"
#include "llm/media.h"

#define CARRY_MAX_FILES 16 /* as nx_llm_user_message */

static const char *const kept_fields[] = {"type", "mime", "file_name", "error", NULL};

/* The descriptor without its path (a path of the gateway's means nothing elsewhere). */
static json_t *descriptor(const json_t *m)
{
    json_t *d = json_object();

    for (size_t i = 0; kept_fields[i]; i++) {
        json_t *v = json_object_get(m, kept_fields[i]);
        if (json_is_string(v))
            json_object_set(d, kept_fields[i], v);
    }
    if (json_is_integer(json_object_get(m, "size")))
        json_object_set(d, "size", json_object_get(m, "size"));
    return d;
}

static void set_error(json_t *d, const char *why)
{
    json_t *v = json_string(why);

    json_object_set_new(d, "error", v ? v : json_string("unreadable"));
}

json_t *nx_carry_pack(const json_t *media, size_t budget)
{
    json_t *out, *m;
    size_t i, used = 0;

    if (!json_is_array(media) || !json_array_size(media))
        return NULL;
    out = json_array();
    json_array_foreach(media, i, m) {
        const char *path = json_string_value(json_object_get(m, "path"));
        uint64_t cap = nx_llm_media_read_cap(m);
        char *data = NULL, err[128];
        size_t len = 0;
        json_t *d;
        int rc;

        if (i >= CARRY_MAX_FILES) { /* the user message says so past this many */
            json_array_append_new(out, json_pack("{s:s, s:s}", "type", "file", "error",
                                                 "more files were attached: left out"));
            break;
        }
        if (!json_is_object(m))
            continue;
        d = descriptor(m);
        json_array_append_new(out, d);
        if (!path)
            continue; /* not downloaded: its error says why */
        if (!cap) {
            set_error(d, "left at the gateway: the model is not shown this kind of file");
            continue;
        }
        /* read no more than the budget leaves: a file over it is not read whole to learn that */
        uint64_t room = budget - used;
        rc = nx_llm_media_read(path, room < cap ? room : cap, &data, &len, err, sizeof err);
        struct stat fst;
        if (rc == NX_ETOOBIG && room < cap && !(stat(path, &fst) == 0 && (uint64_t)fst.st_size > cap))
            set_error(d, "too large to carry to the agents process serving this chat");
        else if (rc == NX_ETOOBIG)
            set_error(d, "too large to show to the model");
        else if (rc < 0)
            set_error(d, err);
        if (rc == 0) {
            char *b64 = nx_llm_base64((const unsigned char *)data, len);
            json_object_set_new(d, "data", json_string(b64));
            json_object_set_new(d, "size", json_integer((json_int_t)len));
            used += len;
            free(b64);
        }
        free(data);
    }
    return out;
}

json_t *nx_carry_strip(const json_t *carried)
{
    json_t *out = json_array(), *m;
    size_t i;

    json_array_foreach(carried, i, m) {
        json_t *d = json_deep_copy(m);
        if (json_object_get(d, "data")) {
            json_object_del(d, "data");
            set_error(d, "too large to carry to the agents process serving this chat");
        }
        json_array_append_new(out, d);
    }
    return out;
}

/* Standard base64 with padding; NULL when it is not (or decodes to nothing). */
static unsigned char *unbase64(const char *s, size_t slen, size_t *len)
{
    unsigned char *out;
    int n;

    if (!slen || slen % 4 || slen > (size_t)1 << 30)
        return NULL;
    for (size_t i = 0; i < slen; i++) {
        unsigned char c = (unsigned char)s[i];
        bool is_pad = c == '=' && i >= slen - 2 && (i == slen - 1 || s[slen - 1] == '=');
        if (!(is_pad || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '+' || c == '/'))
            return NULL;
    }
    out = nx_malloc(slen / 4 * 3 + 1);
    n = EVP_DecodeBlock(out, (const unsigned char *)s, (int)slen);
    if (n < 0) {
        free(out);
        return NULL;
    }
    n -= (s[slen - 1] == '=') + (s[slen - 2] == '='); /* EVP_DecodeBlock counts the padding */
    *len = (size_t)n;
    return out;
}

/* Writes the file under <data_dir>/media/<dir>/ (if not there yet) and returns its path; NULL
 * (logged) when it cannot. */
static char *store_file(const char *data_dir, const char *dir, const unsigned char *data, size_t len,
                        const char *mime)
{
    unsigned char md[SHA256_DIGEST_LENGTH];
    struct nx_buf path = NX_BUF_INIT;
    struct stat st;

    SHA256(data, len, md);
    nx_buf_printf(&path, "%s/media/%s", data_dir, dir);
    if (nx_media_mkdirs(nx_buf_cstr(&path)) < 0) {
        nx_warn("agents", "cannot make %s for the files users sent", nx_buf_cstr(&path));
        nx_buf_cleanup(&path);
        return NULL;
    }
    nx_buf_putc(&path, '/');
    for (size_t i = 0; i < sizeof md; i++)
        nx_buf_printf(&path, "%02x", md[i]);
    nx_buf_printf(&path, ".%s", nx_media_ext(mime, "bin"));
    if (lstat(nx_buf_cstr(&path), &st) == 0 && S_ISREG(st.st_mode) && (size_t)st.st_size == len &&
        utimensat(AT_FDCWD, nx_buf_cstr(&path), NULL, AT_SYMLINK_NOFOLLOW) == 0) /* kept from now */
        return nx_buf_steal(&path); /* the same content, written before */
    if (nx_media_write_file(nx_buf_cstr(&path), (const char *)data, len) < 0) {
        nx_warn("agents", "cannot write %s", nx_buf_cstr(&path));
        nx_buf_cleanup(&path);
        return NULL;
    }
    return nx_buf_steal(&path);
}

json_t *nx_carry_unpack(const json_t *carried, const char *data_dir)
{
    json_t *out = json_array(), *m;
    size_t i;

    json_array_foreach(carried, i, m) {
        const char *b64 = json_string_value(json_object_get(m, "data"));
        unsigned char *data;
        size_t len = 0;
        char *path;
        json_t *d;

        if (i > CARRY_MAX_FILES) /* (the one past them says more were left out) */
            break;
        if (!json_is_object(m))
            continue;
        d = descriptor(m);
        json_array_append_new(out, d);
        if (!b64 || i == CARRY_MAX_FILES)
            continue;
        if (!(data = unbase64(b64, strlen(b64), &len)) || len > NX_LLM_IMAGE_MAX_BYTES) {
            set_error(d, "its carried copy was not valid base64");
            free(data);
            continue;
        }
        path = store_file(data_dir, "carried", data, len, json_string_value(json_object_get(m, "mime")));
        free(data);
        if (!path) {
            set_error(d, "could not be saved by the agents process");
            continue;
        }
        json_object_set_new(d, "path", json_string(path));
        json_object_set_new(d, "size", json_integer((json_int_t)len));
        json_object_del(d, "error");
        free(path);
    }
    return out;
}

/* The nexo_media block for a base64 image block, or NULL to leave it as it is. */
static json_t *kept_image(const json_t *block, const char *data_dir)
{
    const json_t *src = json_object_get(block, "source");
    const char *stype = json_string_value(json_object_get(src, "type"));
    const char *b64 = json_string_value(json_object_get(src, "data"));
    const char *mime;
    unsigned char *data;
    size_t len = 0;
    char *path;
    json_t *out;

    if (!json_is_object(block) || !stype || strcmp(stype, "base64") != 0 || !b64 ||
        !(data = unbase64(b64, strlen(b64), &len)))
        return NULL;
    mime = len <= NX_LLM_IMAGE_MAX_BYTES ? nx_llm_image_sniff(data, len) : NULL;
    path = mime ? store_file(data_dir, "api", data, len, mime) : NULL;
    free(data);
    if (!path)
        return NULL;
    out = json_pack("{s:s, s:{s:s, s:s, s:s}}", "type", "image", "source", "type", "nexo_media",
                    "media_type", mime, "path", path);
    free(path);
    return out;
}

static bool is_base64_image(const json_t *block)
{
    const char *type = json_string_value(json_object_get(block, "type"));
    const json_t *src = json_object_get(block, "source");
    const char *stype = json_string_value(json_object_get(src, "type"));
    return type && strcmp(type, "image") == 0 && stype && strcmp(stype, "base64") == 0;
}

bool nx_media_has_images(const json_t *messages)
{
    size_t i, k;
    const json_t *m, *block;

    json_array_foreach(messages, i, m) {
        json_array_foreach(json_object_get(m, "content"), k, block) {
            if (is_base64_image(block))
                return true;
        }
    }
    return false;
}

static void keep_images_io(json_t *messages, const char *data_dir)
{
    size_t i, k;
    json_t *m, *block;

    json_array_foreach(messages, i, m) {
        json_t *content = json_object_get(m, "content");
        json_array_foreach(content, k, block) {
            json_t *kept = is_base64_image(block) ? kept_image(block, data_dir) : NULL;
            if (kept)
                json_array_set_new(content, k, kept);
        }
    }
}

struct image_work {
    uv_work_t req;
    json_t *messages;
    char *data_dir;
    void (*done)(json_t *messages, void *arg);
    void *arg;
};

static void keep_images_run(uv_work_t *req)
{
    struct image_work *w = req->data;
    keep_images_io(w->messages, w->data_dir);
}

static void keep_images_done(uv_work_t *req, int status)
{
    struct image_work *w = req->data;
    (void)status; /* (cancelled: the work did not run, and the images stay as they were) */
    w->done(w->messages, w->arg);
    free(w->data_dir);
    free(w);
}

int nx_media_keep_images_async(uv_loop_t *loop, json_t *messages, const char *data_dir,
                               void (*done)(json_t *messages, void *arg), void *arg)
{
    struct image_work *w;
    int rc;

    if (!data_dir || !*data_dir)
        return NX_EINVAL; /* nowhere to keep them */
    w = nx_calloc(1, sizeof *w);
    nx_llm_media_set_root(data_dir); /* where the providers' encoders read them back */
    w->req.data = w;
    w->messages = messages;
    w->data_dir = nx_strdup(data_dir);
    w->done = done;
    w->arg = arg;
    if ((rc = uv_queue_work(loop, &w->req, keep_images_run, keep_images_done)) != 0) {
        free(w->data_dir);
        free(w);
        return rc;
    }
    return 0;
}
