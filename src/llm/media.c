#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/error.h"
#include "core/log.h"
#include "llm/media.h"

static char *media_root; /* <data>/media as given (resolved at each read) */

void nx_llm_media_set_root(const char *data_dir)
{
    struct nx_buf b = NX_BUF_INIT;
    if (data_dir && media_root) { /* the usual case: the same directory again */
        size_t n = strlen(data_dir);
        if (strncmp(media_root, data_dir, n) == 0 && strcmp(media_root + n, "/media") == 0)
            return;
    }
    free(media_root);
    media_root = NULL;
    if (!data_dir || !*data_dir)
        return;
    nx_buf_printf(&b, "%s/media", data_dir);
    media_root = nx_buf_steal(&b);
}

const char *nx_llm_media_root(void)
{
    return media_root;
}

const char *nx_llm_image_sniff(const unsigned char *p, size_t len)
{
    if (len >= 3 && p[0] == 0xFF && p[1] == 0xD8 && p[2] == 0xFF)
        return "image/jpeg";
    if (len >= 8 && memcmp(p, "\x89PNG\r\n\x1a\n", 8) == 0)
        return "image/png";
    if (len >= 6 && (memcmp(p, "GIF87a", 6) == 0 || memcmp(p, "GIF89a", 6) == 0))
        return "image/gif";
    if (len >= 12 && memcmp(p, "RIFF", 4) == 0 && memcmp(p + 8, "WEBP", 4) == 0)
        return "image/webp";
    return NULL;
}

int nx_llm_media_read(const char *path, uint64_t max, char **data, size_t *len, char *err,
                      size_t errlen)
{
    return nx_file_read_under(media_root, path, max, data, len, err, errlen);
}

int nx_file_read_under(const char *dir, const char *path, uint64_t max, char **data, size_t *len, char *err,
                       size_t errlen)
{
    char *real = NULL, *root = NULL, *buf = NULL;
    int fd = -1, rc = NX_EPERM;
    struct stat st;
    size_t got = 0;

    *data = NULL;
    *len = 0;
    if (!dir || !(root = realpath(dir, NULL))) {
        snprintf(err, errlen, "file refused: no media directory");
        goto out;
    }
    if (!path || !(real = realpath(path, NULL))) {
        snprintf(err, errlen, "file not found");
        rc = NX_ENOENT;
        goto out;
    }
    size_t rl = strlen(root);
    if (strncmp(real, root, rl) != 0 || real[rl] != '/') {
        snprintf(err, errlen, "file is outside the data directory's media/ (refused)");
        goto out;
    }
    rc = NX_EIO;
    if ((fd = open(real, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)) < 0 || fstat(fd, &st) < 0 ||
        !S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "not a readable file");
        goto out;
    }
    if ((uint64_t)st.st_size > max) {
        snprintf(err, errlen, "file is larger than max_media_bytes (%llu bytes)", (unsigned long long)max);
        rc = NX_ETOOBIG;
        goto out;
    }
    buf = nx_malloc((size_t)st.st_size + 1);
    while (got < (size_t)st.st_size) {
        ssize_t r = read(fd, buf + got, (size_t)st.st_size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    if (got != (size_t)st.st_size) {
        snprintf(err, errlen, "file could not be read whole");
        goto out;
    }
    buf[got] = '\0';
    *data = buf;
    *len = got;
    buf = NULL;
    rc = 0;
out:
    if (fd >= 0)
        close(fd);
    free(buf);
    free(real);
    free(root);
    return rc;
}

char *nx_llm_base64(const unsigned char *p, size_t len)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *out = nx_malloc((len + 2) / 3 * 4 + 1), *o = out;
    size_t i = 0;

    for (; i + 2 < len; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        *o++ = tab[v >> 18 & 63];
        *o++ = tab[v >> 12 & 63];
        *o++ = tab[v >> 6 & 63];
        *o++ = tab[v & 63];
    }
    if (i < len) {
        uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < len ? (uint32_t)p[i + 1] << 8 : 0);
        *o++ = tab[v >> 18 & 63];
        *o++ = tab[v >> 12 & 63];
        *o++ = i + 1 < len ? tab[v >> 6 & 63] : '=';
        *o++ = '=';
    }
    *o = '\0';
    return out;
}

json_t *nx_llm_media_resolve(const json_t *block)
{
    const json_t *src = json_object_get(block, "source");
    const char *type = json_string_value(json_object_get(block, "type"));
    const char *stype = json_string_value(json_object_get(src, "type"));
    const char *path = json_string_value(json_object_get(src, "path"));
    const char *mime, *slash;
    char *data = NULL, *b64 = NULL, err[128];
    size_t len = 0;
    json_t *out;

    if (!type || strcmp(type, "image") != 0 || !stype || strcmp(stype, "nexo_media") != 0)
        return NULL;
    slash = path ? strrchr(path, '/') : NULL;
    if (nx_llm_media_read(path, NX_LLM_IMAGE_MAX_BYTES, &data, &len, err, sizeof err) < 0) {
        nx_warn("llm", "image %s not sent to the model: %s", slash ? slash + 1 : "?", err);
        out = json_pack("{s:s, s:s++}", "type", "text", "text",
                        "[an image the user sent is not available: ",
                        err, "]");
        goto out;
    }
    if (!(mime = nx_llm_image_sniff((const unsigned char *)data, len))) {
        out = json_pack("{s:s, s:s}", "type", "text", "text",
                        "[a file the user sent as an image is not a JPEG, PNG, GIF or WebP image]");
        goto out;
    }
    b64 = nx_llm_base64((const unsigned char *)data, len);
    out = json_pack("{s:s, s:{s:s, s:s, s:s}}", "type", "image", "source", "type", "base64", "media_type",
                    mime, "data", b64);
out:
    free(data);
    free(b64);
    return out;
}

static bool ends_with_ci(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcasecmp(s + n - m, suffix) == 0;
}

static bool is_text_doc(const char *mime, const char *name)
{
    static const char *const exts[] = {".txt", ".md", ".csv", ".json", ".log", ".yaml", ".yml",
                                       ".xml", ".html", ".tsv", NULL};
    if (mime && (strncmp(mime, "text/", 5) == 0 || strcmp(mime, "application/json") == 0 ||
                 strcmp(mime, "application/xml") == 0))
        return true;
    for (size_t i = 0; name && exts[i]; i++)
        if (ends_with_ci(name, exts[i]))
            return true;
    return false;
}

static bool is_image_file(const char *type, const char *mime)
{
    return (type && (!strcmp(type, "photo") || !strcmp(type, "image") || !strcmp(type, "sticker"))) ||
           (mime && strncmp(mime, "image/", 6) == 0);
}

uint64_t nx_llm_media_read_cap(const json_t *m)
{
    const char *type = json_string_value(json_object_get(m, "type"));
    const char *mime = json_string_value(json_object_get(m, "mime"));

    if (is_image_file(type, mime))
        return NX_LLM_IMAGE_MAX_BYTES;
    return is_text_doc(mime, json_string_value(json_object_get(m, "file_name"))) ? NX_LLM_DOC_INLINE_MAX
                                                                                : 0;
}

/* One file of the payload's media as content blocks appended to blocks. */
static void add_media(json_t *blocks, const json_t *m)
{
    const char *type = json_string_value(json_object_get(m, "type"));
    const char *path = json_string_value(json_object_get(m, "path"));
    const char *mime = json_string_value(json_object_get(m, "mime"));
    const char *name = json_string_value(json_object_get(m, "file_name"));
    const char *what = type ? type : "file", *img = NULL;
    struct nx_buf note = NX_BUF_INIT;
    char *data = NULL, err[128];
    size_t len = 0;
    json_t *probe;
    int rc;

    if (!path) {
        const char *e = json_string_value(json_object_get(m, "error"));
        nx_buf_printf(&note, "[%s%s%s: %s]", what, name ? " " : "", name ? name : "",
                      e ? e : "not downloaded");
        goto out;
    }
    bool is_image = is_image_file(type, mime);
    bool is_text = !is_image && is_text_doc(mime, name);
    uint64_t cap = nx_llm_media_read_cap(m);
    rc = nx_llm_media_read(path, cap, &data, &len, err, sizeof err);
    if (rc == NX_EPERM || rc == NX_ENOENT || rc == NX_EIO) {
        nx_warn("llm", "a %s the user sent is not given to the model: %s", what, err);
        nx_buf_printf(&note, "[%s%s%s: %s]", what, name ? " " : "", name ? name : "", err);
        goto out;
    }
    if (rc == 0 && is_image && (img = nx_llm_image_sniff((const unsigned char *)data, len))) {
        json_array_append_new(blocks, json_pack("{s:s, s:{s:s, s:s, s:s}}", "type", "image", "source",
                                                "type", "nexo_media", "media_type", img, "path", path));
        nx_buf_printf(&note, "[%s%s%s, %zu bytes, saved at %s]", what, name ? " " : "", name ? name : "",
                      len, path);
        goto out;
    }
    json_int_t size = rc == 0 ? (json_int_t)len : json_integer_value(json_object_get(m, "size"));
    nx_buf_printf(&note, "[%s%s%s, %s, ", what, name ? " " : "", name ? name : "",
                  mime ? mime : "unknown type");
    if (size > 0)
        nx_buf_printf(&note, "%lld bytes, ", (long long)size);
    nx_buf_printf(&note, "saved at %s", path);
    if (is_image)
        nx_buf_puts(&note, rc == NX_ETOOBIG ? ": too large to show to the model]"
                                            : ": not a JPEG, PNG, GIF or WebP image]");
    else if (rc == 0 && is_text && (probe = json_stringn(data, len))) { /* valid UTF-8 only */
        json_decref(probe);
        nx_buf_puts(&note, "; its text:]\n");
        nx_buf_append(&note, data, len);
    } else
        nx_buf_puts(&note, "]");
out:
    if (note.len) {
        json_t *t = json_stringn(note.data, note.len);
        if (!t) /* a non-UTF-8 name or path */
            t = json_string("[a file the user sent, with a name that is not UTF-8]");
        json_array_append_new(blocks, json_pack("{s:s, s:o}", "type", "text", "text", t));
    }
    free(data);
    nx_buf_cleanup(&note);
}

json_t *nx_llm_user_message(const char *text, const json_t *media)
{
    json_t *blocks = json_array(), *m;
    size_t i;

    json_array_foreach(media, i, m) {
        if (i >= 16) { /* more than any channel sends in one message */
            json_array_append_new(blocks, json_pack("{s:s, s:s}", "type", "text", "text",
                                                    "[more files were attached: left out]"));
            break;
        }
        if (json_is_object(m))
            add_media(blocks, m);
    }
    if (text && *text) {
        json_t *t = json_string(text);
        if (t)
            json_array_append_new(blocks, json_pack("{s:s, s:o}", "type", "text", "text", t));
    }
    if (!json_array_size(blocks))
        json_array_append_new(blocks, json_pack("{s:s, s:s}", "type", "text", "text", ""));
    return json_pack("{s:s, s:o}", "role", "user", "content", blocks);
}
