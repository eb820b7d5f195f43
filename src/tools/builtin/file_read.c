#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/error.h"
#include "tools/internal.h"
#include "tools/tool.h"

/* file_read {path, offset?, limit?}: text from a file in the agent's workspace. The path is
 * checked by nx_sandbox_path, the file opened with O_NOFOLLOW | O_NONBLOCK (a FIFO cannot stall
 * the loop), required to be a regular file by fstat, and its real path re-checked through
 * /proc/self/fd. A read is at most READ_MAX bytes: small and bounded, so it runs on the loop. */

#define READ_DEFAULT 32768
#define READ_MAX 61440

static const char schema[] =
    "{\"type\":\"object\",\"properties\":{"
    "\"path\":{\"type\":\"string\",\"minLength\":1,\"maxLength\":4096,"
    "\"description\":\"File path relative to the workspace.\"},"
    "\"offset\":{\"type\":\"integer\",\"minimum\":0,\"maximum\":1099511627776,"
    "\"description\":\"Byte offset to start at (default 0).\"},"
    "\"limit\":{\"type\":\"integer\",\"minimum\":1,\"maximum\":61440,"
    "\"description\":\"Bytes to read at most (default 32768).\"}},"
    "\"required\":[\"path\"],\"additionalProperties\":false}";

static void fail(nx_tool_done_fn done, void *udata, const char *msg)
{
    done(msg, strlen(msg), true, udata);
}

/* Text or not: no NUL bytes and valid UTF-8, allowing a sequence cut at either end of the
 * window when the window does not start or end the file. */
static bool is_text(const char *s, size_t len, bool cut_start, bool cut_end)
{
    size_t i = 0, ok;

    if (memchr(s, '\0', len))
        return false;
    if (cut_start) {
        while (i < len && i < 3 && ((unsigned char)s[i] & 0xc0) == 0x80)
            i++;
    }
    ok = nx_utf8_valid_prefix(s + i, len - i);
    if (i + ok == len)
        return true;
    return cut_end && len - (i + ok) < 4;
}

static struct nx_tool_call *file_read_run(const struct nx_tool_ctx *ctx, const json_t *args,
                                          nx_tool_done_fn done, void *udata)
{
    char path[PATH_MAX], err[512];
    const char *rel;
    struct nx_buf out = NX_BUF_INIT;
    const json_t *jo = json_object_get(args, "offset"), *jl = json_object_get(args, "limit");
    double dof = jo ? json_number_value(jo) : 0, dl = jl ? json_number_value(jl) : READ_DEFAULT;
    /* the schema bounds both; clamp again so no cast can overflow */
    unsigned long long offset = dof > 0 && dof < 1e15 ? (unsigned long long)dof : 0;
    size_t limit = dl >= 1 && dl <= READ_MAX ? (size_t)dl : READ_DEFAULT, got = 0;
    char *data = NULL;
    struct stat st;
    int fd = -1;

    if (!(rel = nx_sandbox_path_arg(args, "path", NULL, err, sizeof err)) ||
        nx_sandbox_path(ctx->workspace, rel, false, path, sizeof path, err, sizeof err) < 0) {
        fail(done, udata, err);
        goto out;
    }
    fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, sizeof err, "cannot open \"%.200s\": %s", rel,
                 errno == ELOOP ? "it is a symbolic link that changed" : strerror(errno));
        fail(done, udata, err);
        goto out;
    }
    if (fstat(fd, &st) != 0 || S_ISDIR(st.st_mode) || nx_sandbox_names_dir(rel)) { /* ("x/.") */
        snprintf(err, sizeof err, "\"%.200s\" is a directory: use file_list", rel);
        fail(done, udata, err);
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(err, sizeof err, "\"%.200s\" is not a regular file", rel);
        fail(done, udata, err);
        goto out;
    }
    if (nx_sandbox_check_fd(ctx->workspace, fd, err, sizeof err) < 0) {
        fail(done, udata, err);
        goto out;
    }
    data = nx_malloc(limit + 1);
    while (got < limit && offset + got < (unsigned long long)st.st_size) {
        ssize_t n = pread(fd, data + got, limit - got, (off_t)(offset + got));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            snprintf(err, sizeof err, "cannot read \"%.200s\": %s", rel, strerror(errno));
            fail(done, udata, err);
            goto out;
        }
        if (n == 0)
            break;
        got += (size_t)n;
    }
    if (!is_text(data, got, offset > 0, offset + got < (unsigned long long)st.st_size)) {
        snprintf(err, sizeof err, "\"%.200s\" is a binary file (%lld bytes): file_read returns text only",
                 rel, (long long)st.st_size);
        fail(done, udata, err);
        goto out;
    }
    nx_buf_append(&out, data, got);
    if (offset + got < (unsigned long long)st.st_size)
        nx_buf_printf(&out, "\n[file_read: bytes %llu-%llu of %lld shown; call again with offset=%llu "
                            "for more]", offset, offset + got, (long long)st.st_size, offset + got);
    else if (got == 0)
        nx_buf_printf(&out, "[file_read: no bytes at offset %llu; the file has %lld]", offset,
                      (long long)st.st_size);
    done(nx_buf_cstr(&out), out.len, false, udata);
out:
    if (fd >= 0)
        close(fd);
    free(data);
    nx_buf_cleanup(&out);
    return NULL;
}

const struct nx_tool nx_tool_file_read = {
    .name = "file_read",
    .description = "Read a text file from the agent's workspace. Returns the text; large files are "
                   "read in windows (offset, limit).",
    .input_schema = schema,
    .run = file_read_run,
    .cancel = NULL,
};
