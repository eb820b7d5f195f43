/* Descriptors of the files the store thread appends to (the transcripts), kept open by path, so
 * that a session's next turn writes without opening its file again (open, fstat and close were a
 * tenth of the thread's time per turn). Before each use the path is looked at (lstat): a file
 * moved or removed meanwhile (log rotation, an operator) is opened anew at its path, and a
 * symlink put there is refused by the open. At most a 64th of the open-file limit, 64 to
 * 1,024; when full, a file chosen at random is closed (sessions written in turn, more of them
 * than there is room for, would find none open if the least recently used went first). Store
 * thread only: all closed when it ends (nx_file_cache_close_all). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/alloc.h"
#include "store/history_internal.h"

#define FILES_MIN 64
#define FILES_MAX 1024

struct open_file {
    char *path;
    uint64_t hash;
    int fd;
    int next; /* in its bucket's chain, -1 at the end */
    dev_t dev;
    ino_t ino;
};

static _Thread_local struct open_file *files;
static _Thread_local int *buckets; /* heads of the chains, -1: none */
static _Thread_local size_t nfiles, cap, nbuckets;
static _Thread_local uint64_t rng = 0x9E3779B97F4A7C15u;

static uint64_t hash_of(const char *s)
{
    uint64_t h = 1469598103934665603u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211u;
    return h;
}

static void ensure_table(void)
{
    if (files)
        return;
    struct rlimit rl;
    bool is_known = getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY;
    cap = is_known ? (size_t)rl.rlim_cur / 64 : FILES_MAX;
    cap = cap < FILES_MIN ? FILES_MIN : cap > FILES_MAX ? FILES_MAX : cap;
    for (nbuckets = 1; nbuckets < cap * 2; nbuckets *= 2)
        ;
    files = nx_calloc(cap, sizeof *files);
    buckets = nx_malloc(nbuckets * sizeof *buckets);
    memset(buckets, 0xff, nbuckets * sizeof *buckets); /* (-1) */
}

static int *chain_of(uint64_t hash)
{
    return &buckets[hash & (nbuckets - 1)];
}

static void unchain(int i)
{
    int *pp = chain_of(files[i].hash);
    while (*pp != i)
        pp = &files[*pp].next;
    *pp = files[i].next;
}

/* Takes entry i out (closing its descriptor when is_close); the last entry moves into its place. */
static void drop(int i, bool is_close)
{
    int last = (int)nfiles - 1;

    unchain(i);
    if (is_close)
        close(files[i].fd);
    free(files[i].path);
    if (i != last) {
        unchain(last);
        files[i] = files[last];
        int *head = chain_of(files[i].hash);
        files[i].next = *head;
        *head = i;
    }
    nfiles--;
}

int nx_file_cache_get(const char *path, struct stat *st)
{
    if (!files)
        return -1;
    uint64_t h = hash_of(path);
    for (int i = *chain_of(h); i >= 0; i = files[i].next) {
        if (files[i].hash != h || strcmp(files[i].path, path) != 0)
            continue;
        if (lstat(path, st) == 0 && S_ISREG(st->st_mode) && st->st_dev == files[i].dev &&
            st->st_ino == files[i].ino)
            return files[i].fd;
        drop(i, true); /* not the file it was */
        return -1;
    }
    return -1;
}

void nx_file_cache_keep(const char *path, int fd, const struct stat *st)
{
    ensure_table();
    if (nfiles == cap) {
        rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
        drop((int)(rng % nfiles), true);
    }
    int i = (int)nfiles++, *head;
    files[i] = (struct open_file){.path = nx_strdup(path), .hash = hash_of(path), .fd = fd,
                                  .dev = st->st_dev, .ino = st->st_ino};
    head = chain_of(files[i].hash);
    files[i].next = *head;
    *head = i;
}

void nx_file_cache_forget(int fd)
{
    for (size_t i = 0; i < nfiles; i++) {
        if (files[i].fd == fd) {
            drop((int)i, false);
            return;
        }
    }
}

void nx_file_cache_close_all(void)
{
    while (nfiles)
        drop((int)nfiles - 1, true);
    free(files);
    free(buckets);
    files = NULL;
    buckets = NULL;
    cap = nbuckets = 0;
}
