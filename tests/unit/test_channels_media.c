#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "channels/media.h"
#include "channels/whatsapp.h"
#include "core/buf.h"
#include "core/error.h"
#include "llm/internal.h"
#include "llm/media.h"

/* Files users send, as the model sees them: the user message built from a channel payload's
 * `media` (image references, notes, inlined text), the media root check, the providers'
 * encoders turning a reference into base64 at request time; and the channels' download helpers
 * (SHA-256 check, WhatsApp's media URL answer). */

static const unsigned char png[] = {
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4,
};

static char tmp[128];

static void put(const char *rel, const void *data, size_t len)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%s", tmp, rel);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    fclose(f);
}

static int setup(void **state)
{
    char path[256];
    (void)state;
    snprintf(tmp, sizeof tmp, "/tmp/nx-media-XXXXXX");
    assert_non_null(mkdtemp(tmp));
    snprintf(path, sizeof path, "%s/media", tmp);
    assert_int_equal(mkdir(path, 0700), 0);
    put("media/dot.png", png, sizeof png);
    put("media/notes.txt", "milk\n", 5);
    put("media/x.pdf", "%PDF-1.4", 8);
    put("secret.png", png, sizeof png); /* outside media/ */
    snprintf(path, sizeof path, "%s/secret.png", tmp);
    char link[256];
    snprintf(link, sizeof link, "%s/media/link.png", tmp);
    assert_int_equal(symlink(path, link), 0);
    nx_llm_media_set_root(tmp);
    return 0;
}

static int teardown(void **state)
{
    char cmd[300];
    (void)state;
    const char *names[] = {"media/dot.png", "media/notes.txt", "media/x.pdf", "media/link.png",
                           "secret.png", "media", ""};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        snprintf(cmd, sizeof cmd, "%s/%s", tmp, names[i]);
        if (unlink(cmd) < 0)
            rmdir(cmd);
    }
    nx_llm_media_set_root(NULL);
    return 0;
}

static json_t *item(const char *type, const char *rel, const char *mime, const char *name)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%s", tmp, rel);
    json_t *o = json_pack("{s:s, s:s}", "type", type, "path", path);
    if (mime)
        json_object_set_new(o, "mime", json_string(mime));
    if (name)
        json_object_set_new(o, "file_name", json_string(name));
    return o;
}

static void test_base64_and_sniffing(void **state)
{
    (void)state;
    const char *cases[][2] = {{"", ""}, {"f", "Zg=="}, {"fo", "Zm8="}, {"foo", "Zm9v"},
                              {"foob", "Zm9vYg=="}, {"fooba", "Zm9vYmE="}, {"foobar", "Zm9vYmFy"}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) { /* RFC 4648 section 10 */
        char *b = nx_llm_base64((const unsigned char *)cases[i][0], strlen(cases[i][0]));
        assert_string_equal(b, cases[i][1]);
        free(b);
    }
    assert_string_equal(nx_llm_image_sniff(png, sizeof png), "image/png");
    assert_string_equal(nx_llm_image_sniff((const unsigned char *)"\xff\xd8\xff\xe0", 4), "image/jpeg");
    assert_string_equal(nx_llm_image_sniff((const unsigned char *)"GIF89a..", 8), "image/gif");
    assert_string_equal(nx_llm_image_sniff((const unsigned char *)"RIFF\1\0\0\0WEBPVP8 ", 16), "image/webp");
    assert_null(nx_llm_image_sniff((const unsigned char *)"%PDF-1.4", 8));
    assert_null(nx_llm_image_sniff(png, 4));
}

static void test_user_message_refers_to_images_and_notes_documents(void **state)
{
    (void)state;
    json_t *media = json_pack("[o, o, o]", item("photo", "media/dot.png", "image/jpeg", NULL),
                              item("document", "media/notes.txt", "text/plain", "list.txt"),
                              item("document", "media/x.pdf", "application/pdf", "q3.pdf"));
    json_object_set_new(json_array_get(media, 2), "size", json_integer(8));
    json_t *m = nx_llm_user_message("look", media);
    json_t *c = json_object_get(m, "content");
    assert_string_equal(json_string_value(json_object_get(m, "role")), "user");
    assert_int_equal(json_array_size(c), 5);
    json_t *img = json_array_get(c, 0);
    assert_string_equal(json_string_value(json_object_get(img, "type")), "image");
    json_t *src = json_object_get(img, "source");
    assert_string_equal(json_string_value(json_object_get(src, "type")), "nexo_media");
    assert_string_equal(json_string_value(json_object_get(src, "media_type")), "image/png"); /* sniffed */
    assert_null(json_object_get(src, "data")); /* no bytes in the message (nor in history) */
    const char *note = json_string_value(json_object_get(json_array_get(c, 1), "text"));
    assert_non_null(strstr(note, "[photo, 32 bytes, saved at "));
    note = json_string_value(json_object_get(json_array_get(c, 2), "text"));
    assert_non_null(strstr(note, "list.txt"));
    assert_non_null(strstr(note, "its text:]\nmilk\n"));
    note = json_string_value(json_object_get(json_array_get(c, 3), "text"));
    assert_non_null(strstr(note, "[document q3.pdf, application/pdf, 8 bytes, saved at "));
    assert_string_equal(json_string_value(json_object_get(json_array_get(c, 4), "text")), "look");
    json_decref(m);
    json_decref(media);
}

static void test_paths_outside_the_media_root_are_refused(void **state)
{
    (void)state;
    json_t *media = json_pack("[o, o, o, {s:s, s:s}]", item("photo", "secret.png", NULL, NULL),
                              item("photo", "media/link.png", NULL, NULL),
                              item("photo", "media/../secret.png", NULL, NULL), "type", "photo", "error",
                              "not downloaded");
    json_t *m = nx_llm_user_message(NULL, media), *b;
    size_t i;
    json_array_foreach(json_object_get(m, "content"), i, b) {
        const char *t = json_string_value(json_object_get(b, "text"));
        assert_string_equal(json_string_value(json_object_get(b, "type")), "text");
        assert_non_null(i < 3 ? strstr(t, "outside the data directory's media/ (refused)")
                              : strstr(t, "[photo: not downloaded]"));
    }
    assert_int_equal(i, 4);
    json_decref(m);
    json_decref(media);

    /* the encoders check again at request time: a reference to a file outside is a note */
    char path[256], *data = NULL, err[128];
    size_t len;
    snprintf(path, sizeof path, "%s/secret.png", tmp);
    assert_int_equal(nx_llm_media_read(path, 1 << 20, &data, &len, err, sizeof err), NX_EPERM);
    json_t *ref = json_pack("{s:s, s:{s:s, s:s, s:s}}", "type", "image", "source", "type", "nexo_media",
                            "media_type", "image/png", "path", path);
    json_t *r = nx_llm_media_resolve(ref);
    assert_string_equal(json_string_value(json_object_get(r, "type")), "text");
    json_decref(r);
    nx_llm_media_set_root(NULL); /* no root: nothing is read */
    snprintf(path, sizeof path, "%s/media/dot.png", tmp);
    assert_int_equal(nx_llm_media_read(path, 1 << 20, &data, &len, err, sizeof err), NX_EPERM);
    nx_llm_media_set_root(tmp);
    assert_int_equal(nx_llm_media_read(path, 10, &data, &len, err, sizeof err), NX_ETOOBIG);
    json_decref(ref);
}

static void test_both_wire_formats_carry_the_image(void **state)
{
    (void)state;
    json_t *media = json_pack("[o]", item("photo", "media/dot.png", NULL, NULL));
    json_t *msgs = json_pack("[o]", nx_llm_user_message("what is it?", media));
    struct nx_llm_request req = {.model = "m", .messages = msgs};
    struct nx_buf out = NX_BUF_INIT;
    const char *why = NULL;
    char *b64 = nx_llm_base64(png, sizeof png);

    assert_int_equal(nx_anthropic_build_body(&req, &out, &why), 0);
    json_t *body = json_loads(nx_buf_cstr(&out), 0, NULL);
    json_t *img = json_array_get(json_object_get(json_array_get(json_object_get(body, "messages"), 0),
                                                 "content"), 0);
    json_t *src = json_object_get(img, "source");
    assert_string_equal(json_string_value(json_object_get(src, "type")), "base64");
    assert_string_equal(json_string_value(json_object_get(src, "media_type")), "image/png");
    assert_string_equal(json_string_value(json_object_get(src, "data")), b64);
    assert_null(json_object_get(src, "path")); /* the path stays home */
    json_decref(body);

    nx_buf_reset(&out);
    assert_int_equal(nx_openai_build_body(&req, &out, &why), 0);
    body = json_loads(nx_buf_cstr(&out), 0, NULL);
    json_t *parts = json_object_get(json_array_get(json_object_get(body, "messages"), 0), "content");
    assert_true(json_is_array(parts));
    json_t *iu = json_array_get(parts, 0);
    assert_string_equal(json_string_value(json_object_get(iu, "type")), "image_url");
    struct nx_buf want = NX_BUF_INIT;
    nx_buf_printf(&want, "data:image/png;base64,%s", b64);
    assert_string_equal(json_string_value(json_object_get(json_object_get(iu, "image_url"), "url")),
                        nx_buf_cstr(&want));
    assert_string_equal(json_string_value(json_object_get(json_array_get(parts, 2), "text")), "what is it?");
    json_decref(body);
    nx_buf_cleanup(&want);
    nx_buf_cleanup(&out);
    free(b64);
    json_decref(msgs);
    json_decref(media);
}

static void test_downloads_check_sha256_and_read_the_media_url(void **state)
{
    (void)state;
    const char *abc = "abc"; /* FIPS 180-2 test vector */
    const char *hex = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    assert_true(nx_media_sha256_ok(hex, abc, 3));
    assert_true(nx_media_sha256_ok("BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD",
                                   abc, 3));
    assert_true(nx_media_sha256_ok("ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=", abc, 3));
    assert_false(nx_media_sha256_ok("vngWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=", abc, 3));
    assert_false(nx_media_sha256_ok("00", abc, 3));
    assert_false(nx_media_sha256_ok("", abc, 3));
    assert_string_equal(nx_media_ext("image/jpeg", "bin"), "jpg");
    assert_string_equal(nx_media_ext("audio/ogg; codecs=opus", "bin"), "ogg");
    assert_string_equal(nx_media_ext("application/x-unknown", "bin"), "bin");
    assert_string_equal(nx_media_ext(NULL, "bin"), "bin");

    struct nx_wa_media_info mi;
    const char *ok = "{\"messaging_product\":\"whatsapp\",\"url\":\"https://lookaside.fbsbx.com/x?mid=1\","
                     "\"mime_type\":\"image/jpeg\",\"sha256\":\"ab\",\"file_size\":\"303833\",\"id\":\"1\"}";
    assert_int_equal(nx_wa_parse_media_url(ok, strlen(ok), &mi), 0);
    assert_string_equal(mi.url, "https://lookaside.fbsbx.com/x?mid=1");
    assert_string_equal(mi.mime_type, "image/jpeg");
    assert_int_equal(mi.file_size, 303833);
    nx_wa_media_info_cleanup(&mi);
    const char *bad[] = {"", "[]", "{\"url\":\"file:///etc/passwd\"}", "{\"mime_type\":\"image/png\"}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(nx_wa_parse_media_url(bad[i], strlen(bad[i]), &mi), NX_EPROTO);
}

/* ---- retention of received files ---- */

static char sweep_tmp[128];

static void sweep_file(const char *rel, int64_t age_s)
{
    char path[256];
    struct timespec ts[2];
    snprintf(path, sizeof path, "%s/%s", sweep_tmp, rel);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs("x", f);
    fclose(f);
    clock_gettime(CLOCK_REALTIME, &ts[0]);
    ts[0].tv_sec -= age_s;
    ts[1] = ts[0];
    assert_int_equal(utimensat(AT_FDCWD, path, ts, 0), 0);
}

static bool sweep_exists(const char *rel)
{
    char path[256];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", sweep_tmp, rel);
    return lstat(path, &st) == 0;
}

static const char *const sweep_dirs[] = {"media", "media/telegram", "media/telegram/bot",
                                         "media/whatsapp", "media/whatsapp/sales", "media/outbox",
                                         "media/other"};

static void sweep_setup(void)
{
    char path[256];
    snprintf(sweep_tmp, sizeof sweep_tmp, "/tmp/nx-sweep-XXXXXX");
    assert_non_null(mkdtemp(sweep_tmp));
    for (size_t i = 0; i < sizeof sweep_dirs / sizeof sweep_dirs[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", sweep_tmp, sweep_dirs[i]);
        assert_int_equal(mkdir(path, 0700), 0);
    }
}

static void sweep_teardown(const char *const *files, size_t n)
{
    char path[256];
    for (size_t i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s/%s", sweep_tmp, files[i]);
        unlink(path);
    }
    for (size_t i = sizeof sweep_dirs / sizeof sweep_dirs[0]; i-- > 0;) {
        snprintf(path, sizeof path, "%s/%s", sweep_tmp, sweep_dirs[i]);
        assert_int_equal(rmdir(path), 0);
    }
    assert_int_equal(rmdir(sweep_tmp), 0);
}

#define DAY 86400

static void test_retention_deletes_old_received_files_and_never_the_outbox(void **state)
{
    static const char *const files[] = {
        "media/telegram/bot/1-photo.jpg", "media/telegram/bot/2-photo.jpg",
        "media/whatsapp/sales/wamid.bin", "media/outbox/report.pdf", "media/other/keep.txt",
        "media/telegram/bot/to-outbox", "media/telegram/old.part",
    };
    char root[256], target[256], link[256];
    uv_loop_t loop;
    (void)state;
    sweep_setup();
    sweep_file(files[0], 40 * DAY);
    sweep_file(files[1], 1 * DAY);
    sweep_file(files[2], 31 * DAY);
    sweep_file(files[3], 400 * DAY); /* an agent's file to send: never the sweeper's */
    sweep_file(files[4], 400 * DAY);
    snprintf(target, sizeof target, "%s/%s", sweep_tmp, files[3]);
    snprintf(link, sizeof link, "%s/%s", sweep_tmp, files[5]);
    assert_int_equal(symlink(target, link), 0);
    struct timespec old[2] = {{.tv_sec = 1000000000}, {.tv_sec = 1000000000}};
    assert_int_equal(utimensat(AT_FDCWD, link, old, AT_SYMLINK_NOFOLLOW), 0);
    sweep_file(files[6], 90 * DAY);

    assert_int_equal(uv_loop_init(&loop), 0);
    snprintf(root, sizeof root, "%s/media", sweep_tmp);
    const char *types[] = {"telegram", "whatsapp", "signal"}; /* signal: no directory yet */
    struct nx_media_sweeper *s = nx_media_sweeper_new(&loop, root, types, 3, 30ull * DAY * 1000, 10, 0);
    uint64_t deadline = uv_now(&loop) + 10000;
    while (nx_media_sweeper_deleted(s) < 3 && uv_now(&loop) < deadline)
        uv_run(&loop, UV_RUN_ONCE);
    assert_int_equal(nx_media_sweeper_deleted(s), 3);
    nx_media_sweeper_free(s);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);

    assert_false(sweep_exists(files[0]));
    assert_true(sweep_exists(files[1]));
    assert_false(sweep_exists(files[2]));
    assert_true(sweep_exists(files[3]));
    assert_true(sweep_exists(files[4]));
    assert_true(sweep_exists(files[5])); /* a symlink is not a received file */
    assert_false(sweep_exists(files[6]));
    sweep_teardown(files, sizeof files / sizeof files[0]);
}

static void test_retention_is_bounded_per_pass(void **state)
{
    static const char *const files[] = {"media/telegram/bot/a", "media/telegram/bot/b",
                                        "media/telegram/bot/c", "media/telegram/bot/d",
                                        "media/telegram/bot/e"};
    char dir[256];
    (void)state;
    sweep_setup();
    for (size_t i = 0; i < 5; i++)
        sweep_file(files[i], 40 * DAY);
    snprintf(dir, sizeof dir, "%s/media/telegram", sweep_tmp);
    int64_t cut = (int64_t)time(NULL) * 1000 - 30ll * DAY * 1000;
    size_t left = 5;
    for (int pass = 0; pass < 3; pass++) {
        struct nx_media_sweep_pass p = {.before_ms = cut, .max_files = 2};
        nx_media_sweep(dir, &p);
        assert_int_equal(p.deleted, left < 2 ? left : 2);
        assert_int_equal(p.errors, 0);
        left -= p.deleted;
    }
    assert_int_equal(left, 0);
    sweep_teardown(files, sizeof files / sizeof files[0]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_base64_and_sniffing),
        cmocka_unit_test(test_user_message_refers_to_images_and_notes_documents),
        cmocka_unit_test(test_paths_outside_the_media_root_are_refused),
        cmocka_unit_test(test_both_wire_formats_carry_the_image),
        cmocka_unit_test(test_downloads_check_sha256_and_read_the_media_url),
        cmocka_unit_test(test_retention_deletes_old_received_files_and_never_the_outbox),
        cmocka_unit_test(test_retention_is_bounded_per_pass),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
