#include <dirent.h>
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

/* file_list {path?}: the entries of a directory in the agent's workspace, as JSON
 * {"path", "entries": [{"name", "type", "size"}], "truncated"}: the LIST_MAX first by name of
 * all the entries (at most SCAN_MAX read), sorted, as many as the answer's cap
 * (NX_TOOL_OUTPUT_MAX) holds: it stays whole JSON, and its note says how many are shown. Types
 * come from lstat: a symlink is reported as "symlink", never followed. Runs on the loop. */

#define LIST_MAX 500
#define SCAN_MAX 100000

static const char schema[] =
    "{\"type\":\"object\",\"properties\":{"
    "\"path\":{\"type\":\"string\",\"maxLength\":4096,"
    "\"description\":\"Directory relative to the workspace (default \\\".\\\", the workspace itself).\"}},"
    "\"additionalProperties\":false}";

/* An entry's bytes in the answer besides its name: {"name":"","type":"directory","size":N}, */
#define ENTRY_BYTES 64

/* The bytes of s as a JSON string's contents (jansson escapes the C0 controls as \u00XX). */
static long json_bytes(const char *s)
{
    long n = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        n += *p < 0x20 ? 6 : *p == '"' || *p == '\\' ? 2 : 1;
    return n;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Keeps the LIST_MAX smallest names seen in h[0..*n), a max-heap on strcmp: the largest kept
 * name is h[0]. Takes name, or frees it when it is not among them. */
static void keep_smallest(char **h, size_t *n, char *name)
{
    size_t i;

    if (*n < LIST_MAX) {
        for (i = (*n)++; i > 0 && strcmp(h[(i - 1) / 2], name) < 0; i = (i - 1) / 2)
            h[i] = h[(i - 1) / 2];
        h[i] = name;
        return;
    }
    if (strcmp(name, h[0]) >= 0) {
        free(name);
        return;
    }
    free(h[0]);
    for (i = 0;;) { /* sift the new name down from the root */
        size_t c = 2 * i + 1;
        if (c >= *n)
            break;
        if (c + 1 < *n && strcmp(h[c + 1], h[c]) > 0)
            c++;
        if (strcmp(h[c], name) <= 0)
            break;
        h[i] = h[c];
        i = c;
    }
    h[i] = name;
}

static const char *type_name(mode_t m)
{
    if (S_ISREG(m))
        return "file";
    if (S_ISDIR(m))
        return "dir";
    if (S_ISLNK(m))
        return "symlink";
    return "other";
}

static struct nx_tool_call *file_list_run(const struct nx_tool_ctx *ctx, const json_t *args,
                                          nx_tool_done_fn done, void *udata)
{
    char path[PATH_MAX], err[512];
    const char *rel;
    char **names = nx_calloc(LIST_MAX, sizeof *names);
    size_t n = 0, total = 0, shown = 0;
    long budget = (long)NX_TOOL_OUTPUT_MAX - 512; /* (the rest of the answer fits in 512) */
    bool truncated = false;
    json_t *res = NULL, *arr;
    char *text = NULL;
    DIR *d = NULL;
    struct dirent *de;
    int fd = -1;

    err[0] = '\0';
    if (!(rel = nx_sandbox_path_arg(args, "path", ".", err, sizeof err)) ||
        nx_sandbox_path(ctx->workspace, rel[0] ? rel : ".", false, path, sizeof path, err,
                        sizeof err) < 0)
        goto out;
    fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, sizeof err, "cannot open \"%.200s\": %s", rel,
                 errno == ENOTDIR ? "not a directory" : strerror(errno));
        goto out;
    }
    if (nx_sandbox_check_fd(ctx->workspace, fd, err, sizeof err) < 0)
        goto out;
    if (!(d = fdopendir(fd))) {
        snprintf(err, sizeof err, "cannot read \"%.200s\": %s", rel, strerror(errno));
        goto out;
    }
    fd = -1; /* owned by d now */
    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        if (total >= SCAN_MAX) {
            truncated = true;
            break;
        }
        total++;
        keep_smallest(names, &n, nx_strdup(de->d_name));
    }
    if (n > 0)
        qsort(names, n, sizeof *names, by_name);
    res = json_object();
    arr = json_array();
    {
        struct nx_buf pb = NX_BUF_INIT;
        nx_utf8_sanitize(&pb, rel, strlen(rel));
        json_object_set_new(res, "path", json_string(nx_buf_cstr(&pb)));
        budget -= json_bytes(nx_buf_cstr(&pb));
        nx_buf_cleanup(&pb);
    }
    for (size_t i = 0; i < n; i++) {
        struct nx_buf nm = NX_BUF_INIT;
        struct stat st;
        json_t *e;

        nx_utf8_sanitize(&nm, names[i], strlen(names[i]));
        if ((budget -= json_bytes(nx_buf_cstr(&nm)) + ENTRY_BYTES) < 0) { /* the answer's cap */
            nx_buf_cleanup(&nm);
            break;
        }
        e = json_pack("{s:s}", "name", nx_buf_cstr(&nm));
        nx_buf_cleanup(&nm);
        shown++;
        if (fstatat(dirfd(d), names[i], &st, AT_SYMLINK_NOFOLLOW) == 0) {
            json_object_set_new(e, "type", json_string(type_name(st.st_mode)));
            if (S_ISREG(st.st_mode))
                json_object_set_new(e, "size", json_integer((json_int_t)st.st_size));
        } else {
            json_object_set_new(e, "type", json_string("unknown"));
        }
        json_array_append_new(arr, e);
    }
    if (total > shown)
        truncated = true;
    json_object_set_new(res, "entries", arr);
    json_object_set_new(res, "truncated", json_boolean(truncated));
    if (truncated && total >= SCAN_MAX)
        json_object_set_new(res, "note", json_sprintf("the directory has more than %d entries; "
                                                      "shown: the first %zu by name of the %d read",
                                                      SCAN_MAX, shown, SCAN_MAX));
    else if (truncated)
        json_object_set_new(res, "note", json_sprintf("the first %zu of %zu entries (by name) are "
                                                      "shown", shown, total));
    text = json_dumps(res, JSON_COMPACT);
out:
    if (text)
        done(text, strlen(text), false, udata);
    else
        done(err[0] ? err : "cannot list the directory", strlen(err[0] ? err : "cannot list the directory"),
             true, udata);
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    free(text);
    json_decref(res);
    if (d)
        closedir(d);
    if (fd >= 0)
        close(fd);
    return NULL;
}

const struct nx_tool nx_tool_file_list = {
    .name = "file_list",
    .description = "List a directory in the agent's workspace: name, type (file, dir, symlink, other) "
                   "and size of each entry.",
    .input_schema = schema,
    .run = file_list_run,
    .cancel = NULL,
};
