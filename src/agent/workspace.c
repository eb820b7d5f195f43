/* Workspace identity files (nexo-rs): IDENTITY.md, SOUL.md, USER.md, AGENTS.md and MEMORY.md in
 * the agent's workspace join its system prompt, in that order, each under a "# <name>" heading.
 * Missing files are skipped; a file that is a symbolic link leading out of the workspace is
 * refused (tools/sandbox.c decides); each file is cut at WS_FILE_MAX bytes. The text is cached
 * and rebuilt when a file's inode, size or mtime changed, checked with lstat at turn start. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent/agent_internal.h"
#include "core/alloc.h"
#include "core/buf.h"
#include "core/log.h"
#include "tools/tool.h"

#define WS_FILE_MAX (32 * 1024)

#define WS_NFILES NX_IDENTITY_FILES

struct ws_file {
    bool is_present;
    bool is_refused;   /* a symlink out of the workspace (warned once) */
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime;
};

struct ws_cache {
    char *dir;
    struct ws_file files[WS_NFILES];
    struct nx_buf text;   /* the headed sections, "" when no file is present */
    bool is_loaded;
};

struct ws_cache *ws_cache_new(const char *dir)
{
    struct ws_cache *c = nx_calloc(1, sizeof *c);
    c->dir = nx_strdup(dir);
    nx_buf_init(&c->text);
    return c;
}

const char *ws_cache_dir(const struct ws_cache *c)
{
    return c->dir;
}

void ws_cache_free(struct ws_cache *c)
{
    if (!c)
        return;
    nx_buf_cleanup(&c->text);
    free(c->dir);
    free(c);
}

/* What the file is now; path gets the path to read (the resolved one for a symlink). */
static void probe(struct ws_cache *c, size_t i, struct ws_file *f, char *path, size_t pathlen)
{
    struct stat st;
    char err[256];

    memset(f, 0, sizeof *f);
    snprintf(path, pathlen, "%s/%s", c->dir, nx_identity_files[i]);
    if (lstat(path, &st) < 0)
        return;
    if (S_ISLNK(st.st_mode)) {
        if (nx_sandbox_path(c->dir, nx_identity_files[i], false, path, pathlen, err, sizeof err) < 0) {
            if (!c->files[i].is_refused)
                nx_warn("agent", "workspace %s: %s not loaded: %s", c->dir, nx_identity_files[i], err);
            f->is_refused = true;
            return;
        }
        if (stat(path, &st) < 0)
            return;
    }
    if (!S_ISREG(st.st_mode))
        return;
    f->is_present = true;
    f->dev = st.st_dev;
    f->ino = st.st_ino;
    f->size = st.st_size;
    f->mtime = st.st_mtim;
}

static bool same(const struct ws_file *a, const struct ws_file *b)
{
    return a->is_present == b->is_present && a->is_refused == b->is_refused && a->dev == b->dev &&
           a->ino == b->ino && a->size == b->size && a->mtime.tv_sec == b->mtime.tv_sec &&
           a->mtime.tv_nsec == b->mtime.tv_nsec;
}

/* Up to WS_FILE_MAX bytes of the file, cut back to a whole UTF-8 character; invalid UTF-8
 * becomes U+FFFD and a NUL a space. */
static void read_section(const char *name, const char *path, struct nx_buf *out)
{
    char *data = nx_malloc(WS_FILE_MAX + 1);
    size_t n = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);

    if (fd < 0) {
        nx_warn("agent", "workspace file %s not read: %s", path, strerror(errno));
        goto out;
    }
    while (n < WS_FILE_MAX + 1) {
        ssize_t r = read(fd, data + n, WS_FILE_MAX + 1 - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        n += (size_t)r;
    }
    close(fd);
    bool is_cut = n > WS_FILE_MAX;
    if (is_cut) {
        n = WS_FILE_MAX;
        while (n > 0 && ((unsigned char)data[n] & 0xC0) == 0x80)
            n--;
    }
    while (n > 0 && (data[n - 1] == '\n' || data[n - 1] == ' ' || data[n - 1] == '\r'))
        n--;
    if (n == 0 && !is_cut)
        goto out;
    if (out->len)
        nx_buf_puts(out, "\n\n");
    nx_buf_printf(out, "# %s\n\n", name);
    /* a NUL would end the prompt there (and lose the files after it); one Latin-1 byte would
     * fail every turn, the prompt being sent as UTF-8 */
    for (size_t i = 0; i < n; i++)
        if (data[i] == '\0')
            data[i] = ' ';
    nx_utf8_sanitize(out, data, n);
    if (is_cut)
        nx_buf_printf(out, "\n\n[%s was cut at %d bytes]", name, WS_FILE_MAX);
out:
    free(data);
}

const char *ws_cache_text(struct ws_cache *c)
{
    struct ws_file now[WS_NFILES];
    char paths[WS_NFILES][PATH_MAX];
    bool is_changed = !c->is_loaded;

    for (size_t i = 0; i < WS_NFILES; i++) {
        probe(c, i, &now[i], paths[i], sizeof paths[i]);
        if (!same(&now[i], &c->files[i]))
            is_changed = true;
    }
    if (!is_changed)
        return nx_buf_cstr(&c->text);
    nx_buf_reset(&c->text);
    for (size_t i = 0; i < WS_NFILES; i++) {
        c->files[i] = now[i];
        if (now[i].is_present)
            read_section(nx_identity_files[i], paths[i], &c->text);
    }
    c->is_loaded = true;
    return nx_buf_cstr(&c->text);
}
