#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/fd.h"
#include "core/error.h"
#include "tools/internal.h"
#include "tools/tool.h"

/* file_write {path, content, append?}: writes a text file inside the agent's workspace.
 * Missing parent directories are created (0700); files are 0600. The identity files that join
 * the system prompt (all but MEMORY.md) are refused, and so is appending to a file with other
 * hard links. Without append the write is
 * atomic: a temporary file in the same directory, fsync, rename over the target (which replaces
 * a symlink there rather than following it). Every open is relative to a directory descriptor
 * opened with O_NOFOLLOW and re-checked through /proc/self/fd, and the final component is opened
 * with O_NOFOLLOW. Content is capped at WRITE_MAX bytes; runs on the loop. */

#define WRITE_MAX (1024 * 1024)

static const char schema[] =
    "{\"type\":\"object\",\"properties\":{"
    "\"path\":{\"type\":\"string\",\"minLength\":1,\"maxLength\":4096,"
    "\"description\":\"File path relative to the workspace; parent directories are created.\"},"
    "\"content\":{\"type\":\"string\",\"maxLength\":1048576,\"description\":\"Text to write.\"},"
    "\"append\":{\"type\":\"boolean\",\"description\":\"Append instead of replacing (default false).\"}},"
    "\"required\":[\"path\",\"content\"],\"additionalProperties\":false}";

static unsigned tmp_counter;

/* mkdir -p for every component of dir below the existing, already checked ancestor. */
static int make_dirs(const char *dir, char *err, size_t errlen, const char *rel)
{
    char buf[PATH_MAX];
    size_t len = strlen(dir);

    if (len >= sizeof buf)
        return NX_EINVAL;
    memcpy(buf, dir, len + 1);
    for (size_t i = 1; i <= len; i++) {
        struct stat st;

        if (buf[i] != '/' && buf[i] != '\0')
            continue;
        buf[i] = '\0';
        if (mkdir(buf, 0700) != 0 && errno != EEXIST) {
            snprintf(err, errlen, "cannot create a directory for \"%.200s\": %s", rel, strerror(errno));
            return NX_EIO;
        }
        if (lstat(buf, &st) != 0 || !S_ISDIR(st.st_mode)) {
            snprintf(err, errlen, "cannot create a directory for \"%.200s\": a component is not a "
                                  "directory", rel);
            return NX_EPERM;
        }
        if (i < len)
            buf[i] = '/';
    }
    return 0;
}

static struct nx_tool_call *file_write_run(const struct nx_tool_ctx *ctx, const json_t *args,
                                           nx_tool_done_fn done, void *udata)
{
    char path[PATH_MAX], tmp[NAME_MAX + 1], err[512], msg[600];
    const char *rel, *content = json_string_value(json_object_get(args, "content"));
    size_t clen = json_string_length(json_object_get(args, "content"));
    bool append = json_is_true(json_object_get(args, "append"));
    char *slash, *name;
    int dfd = -1, fd = -1, rc = NX_EIO;
    struct stat st;

    tmp[0] = '\0';
    err[0] = '\0';
    if (!(rel = nx_sandbox_path_arg(args, "path", NULL, err, sizeof err)) ||
        nx_sandbox_path(ctx->workspace, rel, true, path, sizeof path, err, sizeof err) < 0)
        goto out;
    if (nx_sandbox_names_dir(rel)) {
        snprintf(err, sizeof err, "\"%.200s\" names a directory: give a file name", rel);
        goto out;
    }
    if (nx_sandbox_is_identity_file(ctx->workspace, path)) {
        snprintf(err, sizeof err, "\"%.200s\" is one of the agent's identity files (part of its "
                                  "system prompt, set by its operator): the file tools do not "
                                  "write it", rel);
        rc = NX_EPERM;
        goto out;
    }
    if (!content || clen > WRITE_MAX) {
        snprintf(err, sizeof err, "content is larger than %d bytes", WRITE_MAX);
        goto out;
    }
    if (lstat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        snprintf(err, sizeof err, "\"%.200s\" is a directory", rel);
        goto out;
    }
    slash = strrchr(path, '/');
    NX_ASSERT(slash && slash[1]);
    name = slash + 1;
    *slash = '\0';
    if ((rc = make_dirs(path[0] ? path : "/", err, sizeof err, rel)) < 0)
        goto out;
    rc = NX_EIO;
    dfd = open(path[0] ? path : "/", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dfd < 0) {
        snprintf(err, sizeof err, "cannot open the directory of \"%.200s\": %s", rel, strerror(errno));
        goto out;
    }
    if (nx_sandbox_check_fd(ctx->workspace, dfd, err, sizeof err) < 0)
        goto out;
    if (append) {
        fd = openat(dfd, name, O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0600);
        if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_nlink > 1) {
            snprintf(err, sizeof err, "cannot open \"%.200s\" for appending: %s", rel,
                     fd < 0              ? (errno == ELOOP ? "it is a symbolic link" : strerror(errno))
                     : st.st_nlink > 1   ? "it has other hard links (they may be outside the workspace)"
                                         : "not a regular file");
            goto out;
        }
        if (nx_write_all(fd, content, clen) != 0) {
            snprintf(err, sizeof err, "cannot write \"%.200s\": %s", rel, strerror(errno));
            goto out;
        }
    } else {
        snprintf(tmp, sizeof tmp, ".nexo-tmp-%ld-%u", (long)getpid(), tmp_counter++);
        fd = openat(dfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd < 0) {
            snprintf(err, sizeof err, "cannot create a file next to \"%.200s\": %s", rel, strerror(errno));
            tmp[0] = '\0';
            goto out;
        }
        if (nx_write_all(fd, content, clen) != 0 || fsync(fd) != 0) {
            snprintf(err, sizeof err, "cannot write \"%.200s\": %s", rel, strerror(errno));
            goto out;
        }
        if (renameat(dfd, tmp, dfd, name) != 0) {
            snprintf(err, sizeof err, "cannot replace \"%.200s\": %s", rel, strerror(errno));
            goto out;
        }
        tmp[0] = '\0';
    }
    rc = 0;
    snprintf(msg, sizeof msg, "%s %zu bytes to \"%.200s\"", append ? "appended" : "wrote", clen, rel);
out:
    if (fd >= 0)
        close(fd);
    if (tmp[0] && dfd >= 0)
        unlinkat(dfd, tmp, 0);
    if (dfd >= 0)
        close(dfd);
    if (rc == 0)
        done(msg, strlen(msg), false, udata);
    else
        done(err, strlen(err), true, udata);
    return NULL;
}

const struct nx_tool nx_tool_file_write = {
    .name = "file_write",
    .description = "Write a text file in the agent's workspace (replacing it atomically, or appending). "
                   "Creates parent directories.",
    .input_schema = schema,
    .run = file_write_run,
    .cancel = NULL,
};
