/* Carried media from the bus (routed work another process published): nx_carry_unpack writes
 * what decodes under a scratch data directory, emptied after every input. Invariants: every
 * entry it returns is an object; one with a path names a file under <data>/media/carried/ whose
 * size is the entry's; the user message built from it is an object. */
#include <dirent.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent/carry.h"
#include "core/alloc.h"
#include "llm/media.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char root[64];

static void empty_carried(void)
{
    char dir[128], path[512];
    DIR *d;
    struct dirent *e;

    snprintf(dir, sizeof dir, "%s/media/carried", root);
    if (!(d = opendir(dir)))
        return;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        unlink(path);
    }
    closedir(d);
}

static void remove_root(void)
{
    char dir[128];

    empty_carried();
    snprintf(dir, sizeof dir, "%s/media/carried", root);
    rmdir(dir);
    snprintf(dir, sizeof dir, "%s/media", root);
    rmdir(dir);
    rmdir(root);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_t *in, *out, *m, *msg;
    char prefix[160];
    size_t i;

    if (!root[0]) {
        snprintf(root, sizeof root, "/tmp/nexo-fuzz-carry-%ld", (long)getpid());
        mkdir(root, 0700);
        atexit(remove_root);
    }
    in = json_loadb((const char *)data, size, 0, NULL);
    if (!in)
        return 0;
    out = nx_carry_unpack(in, root);
    snprintf(prefix, sizeof prefix, "%s/media/carried/", root);
    json_array_foreach(out, i, m) {
        const char *path = json_string_value(json_object_get(m, "path"));
        struct stat st;
        NX_ASSERT(json_is_object(m));
        if (path) {
            NX_ASSERT(strncmp(path, prefix, strlen(prefix)) == 0 && !strstr(path + strlen(prefix), "/"));
            NX_ASSERT(lstat(path, &st) == 0 && S_ISREG(st.st_mode));
            NX_ASSERT(st.st_size == json_integer_value(json_object_get(m, "size")));
        }
    }
    nx_llm_media_set_root(root);
    msg = nx_llm_user_message("hi", out);
    NX_ASSERT(json_is_object(msg));
    json_decref(msg);
    json_decref(out);
    json_decref(in);
    empty_carried();
    return 0;
}
