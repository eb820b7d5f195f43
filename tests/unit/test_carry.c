/* NX_TEST_LABELS: threaded */
/* Media carried in routed work (agent/carry.c): what the gateway packs, within its budget, and
 * what an agents process makes of it, up to the user message the model gets; and a session's
 * images from the HTTP APIs, kept as files. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "agent/carry.h"
#include "llm/media.h"
#include "test_support.h"

/* A 1x1 PNG. */
static const unsigned char png[] = {
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4,
    0x89, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x44, 0x41, 0x54, 0x78, 0xda, 0x63, 0xfc, 0xcf, 0xc0, 0xf0,
    0x1f, 0x00, 0x05, 0x05, 0x02, 0x00, 0x5f, 0xc8, 0xf1, 0xd2, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45,
    0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
};

struct fx {
    char tmp[64];
    char gw[128];    /* the gateway's data dir */
    char agent[128]; /* the agents process's */
    char inbox[160];
};

static void put_file(const struct fx *f, const char *name, const void *data, size_t len)
{
    char path[256];
    FILE *fp;

    snprintf(path, sizeof path, "%s/%s", f->inbox, name);
    fp = fopen(path, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(data, 1, len, fp), len);
    fclose(fp);
}

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof *f);

    assert_non_null(f);
    assert_int_equal(ts_mkdtemp(f->tmp, sizeof f->tmp, "nx-carry-"), 0);
    snprintf(f->gw, sizeof f->gw, "%s/gw", f->tmp);
    snprintf(f->agent, sizeof f->agent, "%s/ag", f->tmp);
    snprintf(f->inbox, sizeof f->inbox, "%s/media/telegram", f->gw);
    assert_int_equal(mkdir(f->gw, 0700), 0);
    assert_int_equal(mkdir(f->agent, 0700), 0);
    snprintf(f->inbox, sizeof f->inbox, "%s/media", f->gw);
    assert_int_equal(mkdir(f->inbox, 0700), 0);
    snprintf(f->inbox, sizeof f->inbox, "%s/media/telegram", f->gw);
    assert_int_equal(mkdir(f->inbox, 0700), 0);
    put_file(f, "p.png", png, sizeof png);
    put_file(f, "n.txt", "milk, eggs\n", 11);
    put_file(f, "r.pdf", "%PDF-1.4", 8);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;

    nx_llm_media_set_root(NULL);
    assert_int_equal(ts_rm_tree(f->tmp), 0);
    free(f);
    return 0;
}

static json_t *media_of(const struct fx *f)
{
    char p[256], n[256], r[256];

    snprintf(p, sizeof p, "%s/p.png", f->inbox);
    snprintf(n, sizeof n, "%s/n.txt", f->inbox);
    snprintf(r, sizeof r, "%s/r.pdf", f->inbox);
    return json_pack("[{s:s, s:s}, {s:s, s:s, s:s, s:s}, {s:s, s:s, s:s}, {s:s, s:s}, {s:s, s:s}]",
                     "type", "photo", "path", p,
                     "type", "document", "path", n, "mime", "text/plain", "file_name", "list.txt",
                     "type", "document", "path", r, "mime", "application/pdf",
                     "type", "voice", "error", "too large to download",
                     "type", "photo", "path", "/etc/passwd");
}

static size_t files_in(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    size_t n = 0;

    if (!d)
        return 0;
    while ((e = readdir(d)))
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

static const char *error_of(const json_t *carried, size_t i)
{
    return json_string_value(json_object_get(json_array_get(carried, i), "error"));
}

static void test_carried_files_reach_the_model_from_another_data_dir(void **state)
{
    struct fx *f = *state;
    json_t *media = media_of(f), *carried, *wire, *local, *msg, *blocks;
    char dir[256];
    char *text;

    nx_llm_media_set_root(f->gw);
    carried = nx_carry_pack(media, NX_CARRY_MAX_BYTES);
    assert_int_equal(json_array_size(carried), 5);
    for (size_t i = 0; i < 5; i++) /* no path of the gateway's goes along */
        assert_null(json_object_get(json_array_get(carried, i), "path"));
    assert_non_null(json_object_get(json_array_get(carried, 0), "data"));
    assert_non_null(json_object_get(json_array_get(carried, 1), "data"));
    assert_null(json_object_get(json_array_get(carried, 2), "data")); /* a PDF: a note */
    assert_non_null(strstr(error_of(carried, 2), "left at the gateway"));
    assert_string_equal(error_of(carried, 3), "too large to download");
    assert_non_null(error_of(carried, 4)); /* outside the media root: not read */

    /* over the bus and into the agents process */
    text = json_dumps(carried, JSON_COMPACT);
    wire = json_loads(text, 0, NULL);
    free(text);
    local = nx_carry_unpack(wire, f->agent);
    nx_llm_media_set_root(f->agent);
    msg = nx_llm_user_message("look", local);
    blocks = json_object_get(msg, "content");
    assert_string_equal(json_string_value(json_object_get(json_array_get(blocks, 0), "type")), "image");
    text = json_dumps(blocks, JSON_COMPACT);
    assert_non_null(strstr(text, "list.txt"));
    assert_non_null(strstr(text, "its text:]\\nmilk, eggs\\n"));
    assert_non_null(strstr(text, "left at the gateway"));
    assert_non_null(strstr(text, "too large to download"));
    assert_null(strstr(text, f->gw)); /* nothing of the gateway's disk */
    free(text);
    snprintf(dir, sizeof dir, "%s/media/carried", f->agent);
    assert_int_equal(files_in(dir), 2);

    /* the same files again: written once */
    json_decref(local);
    local = nx_carry_unpack(wire, f->agent);
    assert_int_equal(files_in(dir), 2);
    json_decref(local);
    json_decref(msg);
    json_decref(wire);
    json_decref(carried);
    json_decref(media);
}

static void test_carry_keeps_to_its_budget(void **state)
{
    struct fx *f = *state;
    json_t *media = media_of(f), *carried;

    nx_llm_media_set_root(f->gw);
    carried = nx_carry_pack(media, sizeof png); /* the image fits, the text file no more */
    assert_non_null(json_object_get(json_array_get(carried, 0), "data"));
    assert_null(json_object_get(json_array_get(carried, 1), "data"));
    assert_non_null(strstr(error_of(carried, 1), "too large to carry"));
    json_decref(carried);

    json_t *full = json_pack("[{s:s, s:s}]", "type", "photo", "data", "aGk=");
    carried = nx_carry_strip(full);
    assert_null(json_object_get(json_array_get(carried, 0), "data"));
    assert_non_null(strstr(error_of(carried, 0), "too large to carry"));
    assert_non_null(json_object_get(json_array_get(full, 0), "data")); /* a copy */
    json_decref(carried);
    json_decref(full);
    json_t *none = json_array();
    assert_null(nx_carry_pack(none, 100));
    json_decref(none);
    json_decref(media);
}

static void test_bad_carried_data_becomes_a_note(void **state)
{
    struct fx *f = *state;
    static const char *const bad[] = {"", "abc", "ab=c", "a===", "!!!!", "aGk=aGk="};
    char dir[256];

    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        json_t *in = json_pack("[{s:s, s:s}, s]", "type", "photo", "data", bad[i], "not an object");
        json_t *out = nx_carry_unpack(in, f->agent);
        assert_int_equal(json_array_size(out), 1); /* what is not an object is dropped */
        assert_null(json_object_get(json_array_get(out, 0), "path"));
        assert_non_null(error_of(out, 0));
        json_decref(out);
        json_decref(in);
    }
    snprintf(dir, sizeof dir, "%s/media/carried", f->agent);
    assert_int_equal(files_in(dir), 0);
}

struct kept {
    json_t *msgs[8];
    int done;
};

static void on_kept(json_t *messages, void *arg)
{
    struct kept *k = arg;
    k->msgs[k->done++] = messages;
}

/* Keeps a session's images as a turn does (on a worker) and waits for it. */
static void keep_now(json_t *msgs, const char *data_dir)
{
    struct kept k = {{0}, 0};
    uv_loop_t loop;

    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(nx_media_keep_images_async(&loop, msgs, data_dir, on_kept, &k), 0);
    while (k.done < 1)
        uv_run(&loop, UV_RUN_ONCE);
    assert_ptr_equal(k.msgs[0], msgs); /* handed back, edited in place */
    assert_int_equal(uv_loop_close(&loop), 0);
}

static json_t *image_message(const char *b64)
{
    return json_pack("[{s:s, s:[{s:s, s:{s:s, s:s, s:s}}, {s:s, s:s}]}]", "role", "user", "content",
                     "type", "image", "source", "type", "base64", "media_type", "image/png", "data", b64,
                     "type", "text", "text", "what is this?");
}

static void test_a_sessions_images_are_kept_as_files(void **state)
{
    struct fx *f = *state;
    char *b64 = nx_llm_base64(png, sizeof png), dir[256];
    json_t *msgs = image_message(b64), *resolved;
    const json_t *src;

    keep_now(msgs, f->agent);
    keep_now(msgs, f->agent); /* (nothing left to keep) */
    src = json_object_get(json_array_get(json_object_get(json_array_get(msgs, 0), "content"), 0),
                          "source");
    assert_string_equal(json_string_value(json_object_get(src, "type")), "nexo_media");
    assert_string_equal(json_string_value(json_object_get(src, "media_type")), "image/png");
    snprintf(dir, sizeof dir, "%s/media/api/", f->agent);
    assert_int_equal(strncmp(json_string_value(json_object_get(src, "path")), dir, strlen(dir)), 0);
    resolved = nx_llm_media_resolve(json_array_get(json_object_get(json_array_get(msgs, 0), "content"), 0));
    assert_string_equal(json_string_value(json_object_get(json_object_get(resolved, "source"), "data")), b64);
    json_decref(resolved);
    json_decref(msgs);

    msgs = image_message(b64); /* the same bytes again: the same file */
    keep_now(msgs, f->agent);
    json_decref(msgs);
    dir[strlen(dir) - 1] = '\0';
    assert_int_equal(files_in(dir), 1);
    free(b64);
}

static void test_images_that_cannot_be_kept_stay_as_they_are(void **state)
{
    struct fx *f = *state;
    static const char *const kept_as_is[] = {"aGVsbG8=" /* "hello": not an image */, "a===", "!!!!"};
    char dir[256];

    for (size_t i = 0; i < sizeof kept_as_is / sizeof kept_as_is[0]; i++) {
        json_t *msgs = image_message(kept_as_is[i]), *before = json_deep_copy(msgs);
        keep_now(msgs, f->agent);
        assert_true(json_equal(msgs, before));
        json_decref(before);
        json_decref(msgs);
    }
    char *b64 = nx_llm_base64(png, sizeof png);
    json_t *msgs = image_message(b64), *before = json_deep_copy(msgs);
    uv_loop_t loop; /* no data directory: nowhere to keep it, and the messages stay the caller's */
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_true(nx_media_keep_images_async(&loop, msgs, NULL, on_kept, NULL) < 0);
    assert_int_equal(uv_loop_close(&loop), 0);
    assert_true(json_equal(msgs, before));
    json_decref(before);
    json_decref(msgs);
    free(b64);
    snprintf(dir, sizeof dir, "%s/media/api", f->agent);
    assert_int_equal(files_in(dir), 0);
}

/* Sessions' images are kept by the loop's worker threads, several at once, the same image in
 * some of them: each comes back as a path, one file per distinct image, nothing half-written
 * left behind. */
static void test_images_are_kept_by_workers(void **state)
{
    struct fx *f = *state;
    unsigned char other[sizeof png];
    char *b64[2], dir[256];
    struct kept k = {{0}, 0};
    uv_loop_t loop;

    memcpy(other, png, sizeof png);
    other[sizeof png - 1] ^= 0x5a; /* (still a PNG by its signature: other bytes, another file) */
    b64[0] = nx_llm_base64(png, sizeof png);
    b64[1] = nx_llm_base64(other, sizeof other);
    assert_int_equal(uv_loop_init(&loop), 0);
    json_t *plain = json_pack("[{s:s, s:[{s:s, s:s}]}]", "role", "user", "content", "type", "text",
                              "text", "hi");
    assert_false(nx_media_has_images(plain));
    json_decref(plain);
    for (int i = 0; i < 8; i++) {
        json_t *msgs = image_message(b64[i % 2]);
        assert_true(nx_media_has_images(msgs));
        assert_int_equal(nx_media_keep_images_async(&loop, msgs, f->agent, on_kept, &k), 0);
    }
    while (k.done < 8)
        uv_run(&loop, UV_RUN_ONCE);
    for (int i = 0; i < 8; i++) {
        const json_t *src = json_object_get(
            json_array_get(json_object_get(json_array_get(k.msgs[i], 0), "content"), 0), "source");
        assert_string_equal(json_string_value(json_object_get(src, "type")), "nexo_media");
        assert_false(nx_media_has_images(k.msgs[i]));
        json_decref(k.msgs[i]);
    }
    assert_int_equal(uv_loop_close(&loop), 0);
    snprintf(dir, sizeof dir, "%s/media/api", f->agent);
    assert_int_equal(files_in(dir), 2);
    free(b64[0]);
    free(b64[1]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_carried_files_reach_the_model_from_another_data_dir,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_carry_keeps_to_its_budget, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_carried_data_becomes_a_note, setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_sessions_images_are_kept_as_files, setup, teardown),
        cmocka_unit_test_setup_teardown(test_images_that_cannot_be_kept_stay_as_they_are, setup, teardown),
        cmocka_unit_test_setup_teardown(test_images_are_kept_by_workers, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
