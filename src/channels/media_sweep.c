#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "channels/media.h"
#include "core/alloc.h"
#include "core/buf.h"
#include "core/clock.h"
#include "core/log.h"
#include "runtime/runtime.h"

/* Retention of the files users sent (gateway.yaml `media.retention`): a pass deletes the regular
 * files under <media>/<type>/ (one directory per channel type: the downloads, in
 * <type>/<instance>/) last written before the cut-off. The outbox and anything else under
 * <media> are never looked at, so a file an agent is about to send is safe. Symlinks are not
 * followed and only regular files go. The walk runs in the libuv thread pool (a big directory
 * never stalls the loop) and is bounded per pass; a pass that hit a bound is followed by
 * another soon, so a backlog drains in steps. */

#define SWEEP_FIRST_MS 60000
#define SWEEP_AGAIN_MS 5000      /* after a pass that hit its bound */
#define SWEEP_SCAN_MAX 100000    /* directory entries looked at per pass */
#define SWEEP_DEPTH_MAX 4

struct nx_media_sweeper {
    uv_loop_t *loop;
    char **dirs;                 /* <media>/<type> */
    size_t ndirs;
    uint64_t retention_ms;
    uint64_t interval_ms;
    size_t max_files;            /* deletions per pass */
    struct nx_timer *timer;
    uv_work_t work;
    bool is_running;             /* a pass is in the thread pool */
    bool is_freed;               /* freed meanwhile: the pass's end frees it */
    /* the pass: set on the loop, filled in the pool, read back on the loop */
    struct nx_media_sweep_pass pass;
    uint64_t deleted;
};

static int64_t mtime_ms(const struct stat *st)
{
    return (int64_t)st->st_mtim.tv_sec * 1000 + st->st_mtim.tv_nsec / 1000000;
}

static bool pass_is_full(const struct nx_media_sweep_pass *p)
{
    return p->deleted >= p->max_files || p->scanned >= SWEEP_SCAN_MAX;
}

/* Takes fd (a directory). */
static void sweep_fd(int fd, int depth, struct nx_media_sweep_pass *p)
{
    DIR *d = fdopendir(fd);
    struct dirent *e;
    if (!d) {
        close(fd);
        p->errors++;
        return;
    }
    while (!pass_is_full(p) && (e = readdir(d))) {
        struct stat st;
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        p->scanned++;
        if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
            continue; /* gone meanwhile */
        if (S_ISDIR(st.st_mode) && depth < SWEEP_DEPTH_MAX) {
            int sub = openat(dirfd(d), e->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (sub >= 0)
                sweep_fd(sub, depth + 1, p);
            else
                p->errors++;
        } else if (S_ISREG(st.st_mode) && mtime_ms(&st) < p->before_ms) {
            if (unlinkat(dirfd(d), e->d_name, 0) == 0)
                p->deleted++;
            else if (errno != ENOENT)
                p->errors++;
        }
    }
    closedir(d);
}

void nx_media_sweep(const char *dir, struct nx_media_sweep_pass *p)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd >= 0)
        sweep_fd(fd, 1, p);
    else if (errno != ENOENT) /* no download yet: nothing to do */
        p->errors++;
}

static void on_tick(void *arg);

static void work_cb(uv_work_t *w)
{
    struct nx_media_sweeper *s = w->data;
    for (size_t i = 0; i < s->ndirs && !pass_is_full(&s->pass); i++)
        nx_media_sweep(s->dirs[i], &s->pass);
}

static void sweeper_destroy(struct nx_media_sweeper *s)
{
    for (size_t i = 0; i < s->ndirs; i++)
        free(s->dirs[i]);
    free(s->dirs);
    free(s);
}

static void after_work_cb(uv_work_t *w, int status)
{
    struct nx_media_sweeper *s = w->data;
    const struct nx_media_sweep_pass *p = &s->pass;
    s->is_running = false;
    if (s->is_freed) {
        sweeper_destroy(s);
        return;
    }
    s->deleted += p->deleted;
    if (p->deleted)
        nx_info("channels", "media retention: deleted %zu received file%s older than %llu s",
                p->deleted, p->deleted == 1 ? "" : "s", (unsigned long long)(s->retention_ms / 1000));
    if (p->errors)
        nx_warn("channels", "media retention: %zu file%s or director%s could not be read or deleted "
                "(permissions?)", p->errors, p->errors == 1 ? "" : "s", p->errors == 1 ? "y" : "ies");
    uint64_t next = status == 0 && pass_is_full(p) && s->interval_ms > SWEEP_AGAIN_MS ? SWEEP_AGAIN_MS
                                                                                      : s->interval_ms;
    s->timer = nx_timer_once(s->loop, next, on_tick, s);
}

static void on_tick(void *arg)
{
    struct nx_media_sweeper *s = arg;
    s->timer = NULL;
    memset(&s->pass, 0, sizeof s->pass);
    s->pass.before_ms = (int64_t)nx_wall_ms() - (int64_t)s->retention_ms;
    s->pass.max_files = s->max_files;
    s->work.data = s;
    s->is_running = true;
    if (uv_queue_work(s->loop, &s->work, work_cb, after_work_cb) != 0) {
        s->is_running = false;
        s->timer = nx_timer_once(s->loop, s->interval_ms, on_tick, s);
    }
}

struct nx_media_sweeper *nx_media_sweeper_new(uv_loop_t *loop, const char *media_root,
                                              const char *const *types, size_t ntypes,
                                              uint64_t retention_ms, uint64_t interval_ms,
                                              size_t max_files)
{
    struct nx_media_sweeper *s = nx_calloc(1, sizeof *s);
    struct nx_buf b = NX_BUF_INIT;
    s->loop = loop;
    s->retention_ms = retention_ms;
    s->interval_ms = interval_ms ? interval_ms : 3600000;
    s->max_files = max_files ? max_files : 1000;
    s->dirs = nx_calloc(ntypes ? ntypes : 1, sizeof *s->dirs);
    for (size_t i = 0; i < ntypes; i++) {
        nx_buf_printf(&b, "%s/%s", media_root, types[i]);
        s->dirs[s->ndirs++] = nx_buf_steal(&b);
    }
    s->timer = nx_timer_once(loop, s->interval_ms < SWEEP_FIRST_MS ? s->interval_ms : SWEEP_FIRST_MS,
                             on_tick, s);
    return s;
}

uint64_t nx_media_sweeper_deleted(const struct nx_media_sweeper *s)
{
    return s ? s->deleted : 0;
}

void nx_media_sweeper_free(struct nx_media_sweeper *s)
{
    if (!s)
        return;
    if (s->timer)
        nx_timer_cancel(s->timer);
    if (s->is_running)
        s->is_freed = true; /* the pool finishes the walk; after_work_cb frees */
    else
        sweeper_destroy(s);
}
