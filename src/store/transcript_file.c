#include <errno.h>
#include <fcntl.h>
#include <openssl/sha.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/fd.h"
#include "core/buf.h"
#include "core/error.h"
#include "core/log.h"
#include "core/redact.h"
#include "store/history.h"
#include "store/history_internal.h"

/* Transcript files: their names under <data_dir>/transcripts, and the JSONL writer of the store
 * thread (appends, cut back when a batch does not commit). See docs/transcripts.md. */

#define NAME_MAX_ENCODED 128
#define NAME_KEEP 96

/* ---- file names ---- */

static bool is_safe_byte(unsigned char c, bool is_first)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return true;
    if (c == '.')
        return !is_first; /* never ".", "..", nor a hidden file */
    return c == '_' || c == '-';
}

void nx_transcript_name(const char *name, struct nx_buf *out)
{
    static const char hex[] = "0123456789ABCDEF";
    struct nx_buf red = NX_BUF_INIT;
    size_t start = out->len;
    size_t n = strlen(name);

    bool is_secret = nx_redact_fixed(&red, name, n); /* (not the reloadable rules: a stable name) */
    const char *shown = is_secret ? nx_buf_cstr(&red) : name;
    for (size_t i = 0; shown[i]; i++) {
        unsigned char c = (unsigned char)shown[i];
        if (is_safe_byte(c, i == 0)) {
            nx_buf_putc(out, (char)c);
        } else {
            char esc[3] = {'%', hex[c >> 4], hex[c & 15]};
            nx_buf_append(out, esc, sizeof esc);
        }
    }
    nx_buf_cleanup(&red);
    if (n == 0)
        nx_buf_puts(out, "%00"); /* no empty names; NUL cannot occur in a real name */
    if (out->len - start <= NAME_MAX_ENCODED && !is_secret)
        return;

    /* Too long for a file name, or not to be shown: a prefix (not cut inside a %XX) plus a digest
     * of the whole. */
    unsigned char md[SHA256_DIGEST_LENGTH];
    size_t keep = NAME_KEEP;
    if (out->len - start > keep) {
        if (out->data[start + keep - 1] == '%')
            keep -= 1;
        else if (out->data[start + keep - 2] == '%')
            keep -= 2;
        out->len = start + keep;
        out->data[out->len] = '\0';
    }
    SHA256((const unsigned char *)name, n, md);
    nx_buf_putc(out, '~');
    for (size_t i = 0; i < 16; i++) {
        char h[2] = {hex[md[i] >> 4], hex[md[i] & 15]};
        nx_buf_append(out, h, 2);
    }
}

void nx_transcript_path(const char *data_dir, const char *agent_id, const char *session_key,
                        struct nx_buf *out)
{
    nx_buf_printf(out, "%s/transcripts/", data_dir);
    nx_transcript_name(agent_id, out);
    nx_buf_putc(out, '/');
    nx_transcript_name(session_key, out);
    nx_buf_puts(out, ".jsonl");
}

/* mkdir 0700 whatever the umask; an existing directory is fine. */
static int ensure_dir(const char *path)
{
    struct stat st;

    if (mkdir(path, 0700) == 0)
        return chmod(path, 0700) == 0 ? 0 : NX_EIO;
    if (errno == EEXIST && stat(path, &st) == 0 && S_ISDIR(st.st_mode))
        return 0;
    if (errno == EEXIST)
        errno = ENOTDIR;
    return NX_EIO;
}

/* Creates <data_dir>/transcripts/<agent>; path holds "<data_dir>/transcripts/<agent>/<file>" and
 * agent_end is where "/<file>" starts. */
static int make_dirs(struct nx_buf *path, size_t transcripts_end, size_t agent_end)
{
    int rc;

    path->data[transcripts_end] = '\0';
    rc = ensure_dir(path->data);
    path->data[transcripts_end] = '/';
    if (rc < 0)
        return rc;
    path->data[agent_end] = '\0';
    rc = ensure_dir(path->data);
    path->data[agent_end] = '/';
    return rc;
}

/* The appends of the store thread's open batch: where each file was before it (run_batch). */
struct appended {
    char *path;
    off_t size;
};
static _Thread_local struct appended *batch_appends;
static _Thread_local size_t nbatch_appends, batch_appends_cap;

void nx_transcripts_batch_end(bool is_committed)
{
    for (size_t i = nbatch_appends; i-- > 0;) { /* the last first: a file's first size wins */
        struct appended *a = &batch_appends[i];
        if (!is_committed && truncate(a->path, a->size) < 0)
            nx_error("transcripts", "cannot cut %s back after the batch did not commit: %s", a->path,
                     strerror(errno));
        free(a->path);
    }
    nbatch_appends = 0;
    free(batch_appends); /* (not kept: the thread may end after any batch) */
    batch_appends = NULL;
    batch_appends_cap = 0;
}

static void remember_append(const char *path, off_t size)
{
    if (nbatch_appends == batch_appends_cap) {
        batch_appends_cap = batch_appends_cap ? batch_appends_cap * 2 : 16;
        batch_appends = nx_realloc(batch_appends, batch_appends_cap * sizeof *batch_appends);
    }
    batch_appends[nbatch_appends].path = nx_strdup(path);
    batch_appends[nbatch_appends++].size = size;
}

void nx_transcripts_thread_end(void)
{
    nx_file_cache_close_all();
}

int nx_transcript_write(const char *data_dir, const char *agent_id, const char *session_key,
                        const char *lines, size_t len)
{
    const int flags = O_WRONLY | O_APPEND | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK;
    struct nx_buf path = NX_BUF_INIT;
    size_t transcripts_end;
    size_t agent_end;
    struct stat st;
    int fd;
    int rc = NX_EIO;

    nx_buf_printf(&path, "%s/transcripts", data_dir);
    transcripts_end = path.len;
    nx_buf_putc(&path, '/');
    nx_transcript_name(agent_id, &path);
    agent_end = path.len;
    nx_buf_putc(&path, '/');
    nx_transcript_name(session_key, &path);
    nx_buf_puts(&path, ".jsonl");

    if ((fd = nx_file_cache_get(path.data, &st)) >= 0)
        goto write;
    /* The common case is a file that exists: one open. Otherwise make what is missing. */
    fd = open(path.data, flags);
    if (fd < 0 && errno == ENOENT) {
        if (make_dirs(&path, transcripts_end, agent_end) < 0)
            goto fail;
        fd = open(path.data, flags | O_CREAT | O_EXCL, 0600);
        if (fd >= 0 && fchmod(fd, 0600) < 0) /* whatever the umask took away */
            goto fail;
        if (fd < 0 && errno == EEXIST)
            fd = open(path.data, flags);
    }
    if (fd < 0 || fstat(fd, &st) < 0)
        goto fail;
    if (!S_ISREG(st.st_mode)) {
        errno = EINVAL;
        goto fail;
    }
    nx_file_cache_keep(path.data, fd, &st);
write:
    if (nx_write_all(fd, lines, len) < 0) {
        /* A part written (the disk full) would leave half a line, and the next append would
         * run on from it: cut the file back to where this write began. */
        int e = errno;
        if (ftruncate(fd, st.st_size) < 0)
            nx_error("transcripts", "cannot cut %s back after a failed write: %s", nx_buf_cstr(&path),
                     strerror(errno));
        errno = e;
        goto fail;
    }
    remember_append(nx_buf_cstr(&path), st.st_size);
    rc = 0;
    fd = -1; /* (kept open) */
    goto out;
fail:
    nx_error("transcripts", "cannot append to %s: %s", nx_buf_cstr(&path), strerror(errno));
    if (fd >= 0)
        nx_file_cache_forget(fd); /* opened again next time */
out:
    if (fd >= 0)
        close(fd);
    nx_buf_cleanup(&path);
    return rc;
}
