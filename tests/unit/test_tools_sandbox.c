#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/buf.h"
#include "core/error.h"
#include "core/log.h"
#include "tools/internal.h"
#include "tools/tool.h"
#include "test_support.h"

/* The workspace sandbox: nx_sandbox_path and the file tools against "..", absolute paths and
 * symlinks that lead out (files and directories, reading and writing), symlinks that stay
 * inside, modes of what file_write creates; the host allowlist and the private-address check. */

struct fixture {
    char root[64];    /* holds ws/ and outside/ */
    char ws[256];
    char outside[256];
};

static void write_file(const char *dir, const char *name, const char *content)
{
    char p[PATH_MAX];
    FILE *f;

    snprintf(p, sizeof p, "%s/%s", dir, name);
    f = fopen(p, "w");
    assert_non_null(f);
    fputs(content, f);
    fclose(f);
}

static int setup(void **state)
{
    /* ws/out_file -> ../outside/secret.txt, ws/out_dir -> outside, ws/in_link -> hello.txt,
     * ws/in_dir -> sub, ws/dangling -> /tmp/<root>/outside/new.txt (does not exist yet) */
    static const struct {
        const char *name;
        bool in_outside; /* target is outside's absolute path plus `to` */
        const char *to;
    } links[] = {
        {"out_file", false, "../outside/secret.txt"}, {"out_dir", true, ""}, {"in_link", false, "hello.txt"},
        {"in_dir", false, "sub"}, {"dangling", true, "/new.txt"},
    };
    struct fixture *fx = calloc(1, sizeof *fx);
    char p[PATH_MAX + 32], target[PATH_MAX];

    nx_log_set_level(NX_LOG_ERROR);
    if (ts_mkdtemp(fx->root, sizeof fx->root, "nx_sandbox_") != 0)
        return -1;
    snprintf(fx->ws, sizeof fx->ws, "%s/ws", fx->root);
    snprintf(fx->outside, sizeof fx->outside, "%s/outside", fx->root);
    mkdir(fx->ws, 0700);
    mkdir(fx->outside, 0700);
    write_file(fx->outside, "secret.txt", "top secret\n");
    write_file(fx->ws, "hello.txt", "hello\n");
    snprintf(p, sizeof p, "%s/sub", fx->ws);
    mkdir(p, 0700);
    write_file(p, "inner.txt", "inner\n");
    for (size_t i = 0; i < NX_ARRAY_LEN(links); i++) {
        snprintf(target, sizeof target, "%s%s", links[i].in_outside ? fx->outside : "", links[i].to);
        snprintf(p, sizeof p, "%s/%s", fx->ws, links[i].name);
        if (symlink(target, p) != 0)
            return -1;
    }
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *fx = *state;

    ts_rm_tree(fx->root);
    free(fx);
    return 0;
}

static int sbx(struct fixture *fx, const char *rel, bool create, char *out, char *err)
{
    return nx_sandbox_path(fx->ws, rel, create, out, PATH_MAX, err, 512);
}

static void test_sandbox_refuses_dotdot_and_absolute(void **state)
{
    struct fixture *fx = *state;
    char out[PATH_MAX], err[512];

    assert_int_equal(sbx(fx, "../outside/secret.txt", false, out, err), NX_EPERM);
    assert_non_null(strstr(err, "\"..\""));
    assert_int_equal(sbx(fx, "a/../../x", true, out, err), NX_EPERM);
    assert_int_equal(sbx(fx, "sub/..", false, out, err), NX_EPERM);
    assert_int_equal(sbx(fx, "/etc/passwd", false, out, err), NX_EPERM);
    assert_non_null(strstr(err, "absolute"));
    assert_int_equal(sbx(fx, "", false, out, err), NX_EINVAL);
    assert_int_equal(nx_sandbox_path(NULL, "x", false, out, sizeof out, err, sizeof err), NX_EPERM);
    /* "..x" is a name, not a parent reference */
    assert_int_equal(sbx(fx, "..x", true, out, err), 0);
}

static void test_sandbox_resolves_inside_paths(void **state)
{
    struct fixture *fx = *state;
    char out[PATH_MAX], err[512], want[PATH_MAX + 32], wsreal[PATH_MAX];

    assert_non_null(realpath(fx->ws, wsreal));
    assert_int_equal(sbx(fx, "./sub//inner.txt", false, out, err), 0);
    snprintf(want, sizeof want, "%s/sub/inner.txt", wsreal);
    assert_string_equal(out, want);
    assert_int_equal(sbx(fx, ".", false, out, err), 0);
    assert_string_equal(out, wsreal);
    /* a symlink pointing inside is allowed and resolved */
    assert_int_equal(sbx(fx, "in_link", false, out, err), 0);
    snprintf(want, sizeof want, "%s/hello.txt", wsreal);
    assert_string_equal(out, want);
    assert_int_equal(sbx(fx, "in_dir/new/deeper.txt", true, out, err), 0);
    snprintf(want, sizeof want, "%s/sub/new/deeper.txt", wsreal);
    assert_string_equal(out, want);
    assert_int_equal(sbx(fx, "missing.txt", false, out, err), NX_ENOENT);
}

static void test_sandbox_refuses_symlink_escapes(void **state)
{
    struct fixture *fx = *state;
    char out[PATH_MAX], err[512];

    assert_int_equal(sbx(fx, "out_file", false, out, err), NX_EPERM);
    assert_non_null(strstr(err, "outside the workspace"));
    assert_int_equal(sbx(fx, "out_file", true, out, err), NX_EPERM);
    assert_int_equal(sbx(fx, "out_dir/secret.txt", false, out, err), NX_EPERM);
    assert_int_equal(sbx(fx, "out_dir/new.txt", true, out, err), NX_EPERM);
    assert_int_equal(sbx(fx, "out_dir/a/b/c.txt", true, out, err), NX_EPERM);
    assert_int_equal(sbx(fx, "dangling", true, out, err), NX_EPERM);
}

static void run_tool(struct fixture *fx, const char *name, json_t *args, struct ts_answer *a)
{
    struct nx_tool_ctx ctx = {.agent_id = "sbx", .workspace = fx->ws};

    memset(a, 0, sizeof *a);
    nx_tool_invoke(&ctx, NULL, name, args, ts_on_answer, a);
    assert_int_equal(a->calls, 1);
    json_decref(args);
}

static void test_file_tools_refuse_escapes(void **state)
{
    static const struct {
        const char *tool;
        const char *args;   /* JSON */
        const char *absent; /* must not be in the answer, or NULL */
    } refused[] = {
        {"file_read", "{\"path\": \"../outside/secret.txt\"}", "top secret"},
        {"file_read", "{\"path\": \"out_file\"}", "top secret"},
        {"file_read", "{\"path\": \"out_dir/secret.txt\"}", NULL},
        {"file_read", "{\"path\": \"/etc/passwd\"}", NULL},
        {"file_list", "{\"path\": \"out_dir\"}", "secret"},
        {"file_list", "{\"path\": \"..\"}", NULL},
        /* writes through a symlinked file, a symlinked directory and a dangling link */
        {"file_write", "{\"path\": \"out_file\", \"content\": \"pwned\"}", NULL},
        {"file_write", "{\"path\": \"out_file\", \"content\": \"pwned\", \"append\": true}", NULL},
        {"file_write", "{\"path\": \"out_dir/new.txt\", \"content\": \"x\"}", NULL},
        {"file_write", "{\"path\": \"dangling\", \"content\": \"x\"}", NULL},
        {"file_write", "{\"path\": \"../escape.txt\", \"content\": \"x\"}", NULL},
    };
    struct fixture *fx = *state;
    struct ts_answer a;
    char p[PATH_MAX + 32], buf[64];
    int fd;
    ssize_t n;

    for (size_t i = 0; i < NX_ARRAY_LEN(refused); i++) {
        json_t *args = json_loads(refused[i].args, 0, NULL);

        assert_non_null(args);
        run_tool(fx, refused[i].tool, args, &a);
        if (!a.is_error)
            fail_msg("%s %s was not refused: %s", refused[i].tool, refused[i].args, a.text);
        if (refused[i].absent)
            assert_null(strstr(a.text, refused[i].absent));
    }

    /* nothing outside was read into an answer, changed or created */
    snprintf(p, sizeof p, "%s/secret.txt", fx->outside);
    fd = open(p, O_RDONLY);
    assert_true(fd >= 0);
    n = read(fd, buf, sizeof buf - 1);
    close(fd);
    assert_true(n > 0);
    buf[n] = '\0';
    assert_string_equal(buf, "top secret\n");
    snprintf(p, sizeof p, "%s/new.txt", fx->outside);
    assert_int_not_equal(access(p, F_OK), 0);
    snprintf(p, sizeof p, "%s/escape.txt", fx->root);
    assert_int_not_equal(access(p, F_OK), 0);
}

static void test_file_tools_follow_inside_links(void **state)
{
    struct fixture *fx = *state;
    struct ts_answer a;

    run_tool(fx, "file_read", json_pack("{s:s}", "path", "in_link"), &a);
    assert_false(a.is_error);
    assert_string_equal(a.text, "hello\n");
    run_tool(fx, "file_read", json_pack("{s:s}", "path", "in_dir/inner.txt"), &a);
    assert_false(a.is_error);
    assert_string_equal(a.text, "inner\n");
    run_tool(fx, "file_list", json_pack("{}"), &a);
    assert_false(a.is_error);
    assert_non_null(strstr(a.text, "{\"name\":\"out_file\",\"type\":\"symlink\"}"));
    run_tool(fx, "file_read", json_pack("{s:s}", "path", "sub"), &a);
    assert_true(a.is_error);
    assert_non_null(strstr(a.text, "directory"));
}

static void test_file_write_creates_private_dirs_and_files(void **state)
{
    struct fixture *fx = *state;
    struct ts_answer a;
    char p[PATH_MAX + 32];
    struct stat st;
    mode_t old = umask(0);

    run_tool(fx, "file_write", json_pack("{s:s, s:s}", "path", "a/b/c/note.md", "content", "# hi\n"), &a);
    umask(old);
    assert_false(a.is_error);
    snprintf(p, sizeof p, "%s/a", fx->ws);
    assert_int_equal(stat(p, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0700);
    snprintf(p, sizeof p, "%s/a/b/c", fx->ws);
    assert_int_equal(stat(p, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0700);
    snprintf(p, sizeof p, "%s/a/b/c/note.md", fx->ws);
    assert_int_equal(stat(p, &st), 0);
    assert_true(S_ISREG(st.st_mode));
    assert_int_equal(st.st_mode & 07777, 0600);
    assert_int_equal(st.st_size, 5);

    /* replacing is atomic and leaves no temporary file behind */
    run_tool(fx, "file_write", json_pack("{s:s, s:s}", "path", "a/b/c/note.md", "content", "v2"), &a);
    assert_false(a.is_error);
    run_tool(fx, "file_list", json_pack("{s:s}", "path", "a/b/c"), &a);
    assert_false(a.is_error);
    assert_non_null(strstr(a.text, "\"entries\":[{\"name\":\"note.md\",\"type\":\"file\",\"size\":2}]"));
    /* writing onto a directory is refused */
    run_tool(fx, "file_write", json_pack("{s:s, s:s}", "path", "a/b", "content", "x"), &a);
    assert_true(a.is_error);
    run_tool(fx, "file_write", json_pack("{s:s, s:s}", "path", ".", "content", "x"), &a);
    assert_true(a.is_error);
}

static void test_file_read_reports_binary_and_nul_paths(void **state)
{
    struct fixture *fx = *state;
    struct ts_answer a;
    char p[PATH_MAX + 32];
    FILE *f;
    json_t *args;

    snprintf(p, sizeof p, "%s/blob.bin", fx->ws);
    f = fopen(p, "wb");
    assert_non_null(f);
    fwrite("\x7f" "ELF\0\1\2\3", 1, 8, f);
    fclose(f);
    run_tool(fx, "file_read", json_pack("{s:s}", "path", "blob.bin"), &a);
    assert_true(a.is_error);
    assert_non_null(strstr(a.text, "binary file"));

    args = json_object();
    json_object_set_new(args, "path", json_stringn("hello.txt\0/../../x", 18));
    run_tool(fx, "file_read", args, &a);
    assert_true(a.is_error);
    assert_non_null(strstr(a.text, "NUL"));
}

/* A path deeper than NX_SANDBOX_MAX_DEPTH is refused before anything is resolved (a 2,000-deep
 * path to create took a minute of the loop thread); one at the limit is written. */
static void test_file_write_refuses_deep_paths(void **state)
{
    struct fixture *fx = *state;
    struct ts_answer a;
    struct nx_buf deep = NX_BUF_INIT;

    for (int i = 0; i < NX_SANDBOX_MAX_DEPTH - 1; i++)
        nx_buf_puts(&deep, "d/");
    nx_buf_puts(&deep, "f");
    run_tool(fx, "file_write", json_pack("{s:s, s:s}", "path", nx_buf_cstr(&deep), "content", "x"), &a);
    assert_false(a.is_error);
    nx_buf_reset(&deep);
    for (int i = 0; i < 2000; i++)
        nx_buf_puts(&deep, i < 1000 ? "a/" : "b/");
    nx_buf_puts(&deep, "f");
    run_tool(fx, "file_write", json_pack("{s:s, s:s}", "path", nx_buf_cstr(&deep), "content", "x"), &a);
    assert_true(a.is_error);
    assert_non_null(strstr(a.text, "more than 64 components"));
    run_tool(fx, "file_read", json_pack("{s:s}", "path", nx_buf_cstr(&deep)), &a);
    assert_true(a.is_error);
    nx_buf_cleanup(&deep);
}

/* The identity files join every conversation's system prompt: file_write leaves them alone,
 * also through a directory link to the workspace and through a link to one of them; MEMORY.md
 * stays writable. Appending to a file with another hard link is refused; a trailing "/" names
 * no file. */
static void test_file_write_protects_identity_and_linked_files(void **state)
{
    struct fixture *fx = *state;
    struct ts_answer a;
    char p[PATH_MAX + 32], q[PATH_MAX + 32];
    static const char *const refused[] = {"SOUL.md", "./IDENTITY.md", "self/USER.md", "soul_link",
                                          "AGENTS.md", "AGENTS.md/x" /* a directory in its place */};

    write_file(fx->ws, "SOUL.md", "be kind\n");
    snprintf(p, sizeof p, "%s/self", fx->ws);
    assert_int_equal(symlink(".", p), 0);
    snprintf(p, sizeof p, "%s/soul_link", fx->ws);
    assert_int_equal(symlink("SOUL.md", p), 0);
    for (size_t i = 0; i < NX_ARRAY_LEN(refused); i++) {
        run_tool(fx, "file_write", json_pack("{s:s, s:s}", "path", refused[i], "content", "obey me"), &a);
        if (!a.is_error)
            fail_msg("file_write %s was not refused", refused[i]);
        assert_non_null(strstr(a.text, "identity files"));
    }
    run_tool(fx, "file_read", json_pack("{s:s}", "path", "SOUL.md"), &a);
    assert_string_equal(a.text, "be kind\n");
    run_tool(fx, "file_write", json_pack("{s:s, s:s}", "path", "MEMORY.md", "content", "note\n"), &a);
    assert_false(a.is_error);

    snprintf(p, sizeof p, "%s/secret.txt", fx->outside);
    snprintf(q, sizeof q, "%s/hard", fx->ws);
    assert_int_equal(link(p, q), 0);
    run_tool(fx, "file_write", json_pack("{s:s, s:s, s:b}", "path", "hard", "content", "x", "append", 1), &a);
    assert_true(a.is_error);
    assert_non_null(strstr(a.text, "hard links"));
    run_tool(fx, "file_read", json_pack("{s:s}", "path", "../outside/secret.txt"), &a);
    assert_true(a.is_error);
    {
        FILE *f = fopen(p, "r");
        char buf[64] = "";
        assert_non_null(f);
        assert_non_null(fgets(buf, sizeof buf, f));
        fclose(f);
        assert_string_equal(buf, "top secret\n"); /* unchanged */
    }
    for (size_t i = 0; i < 2; i++) { /* "x/." is the directory x too, never a file x */
        const char *dirlike = i ? "newdir/." : "newdir/";
        run_tool(fx, "file_write", json_pack("{s:s, s:s}", "path", dirlike, "content", "x"), &a);
        assert_true(a.is_error);
        assert_non_null(strstr(a.text, "names a directory"));
        snprintf(p, sizeof p, "%s/newdir", fx->ws);
        assert_int_not_equal(access(p, F_OK), 0);
    }
    write_file(fx->ws, "plain.txt", "text\n");
    run_tool(fx, "file_read", json_pack("{s:s}", "path", "plain.txt/."), &a);
    assert_true(a.is_error);
}

/* An identity file that is a link to a file not written yet is protected too: writing where
 * the link leads would put the model's words in every system prompt once the link resolves. */
static void test_file_write_protects_where_a_dangling_identity_link_leads(void **state)
{
    struct fixture *fx = *state;
    struct ts_answer a;
    char p[PATH_MAX + 32], target[PATH_MAX + 32];

    snprintf(p, sizeof p, "%s/SOUL.md", fx->ws);
    assert_int_equal(symlink("persona/soul.md", p), 0);
    snprintf(p, sizeof p, "%s/USER.md", fx->ws);
    snprintf(target, sizeof target, "%s/notes/user.md", fx->ws);
    assert_int_equal(symlink(target, p), 0);
    static const char *const refused[] = {"persona/soul.md", "./persona//soul.md", "notes/user.md"};
    for (size_t i = 0; i < NX_ARRAY_LEN(refused); i++) {
        run_tool(fx, "file_write", json_pack("{s:s, s:s}", "path", refused[i], "content", "obey me"), &a);
        if (!a.is_error)
            fail_msg("file_write %s was not refused", refused[i]);
        assert_non_null(strstr(a.text, "identity files"));
    }
    snprintf(p, sizeof p, "%s/persona/soul.md", fx->ws);
    assert_int_not_equal(access(p, F_OK), 0);
    run_tool(fx, "file_write", json_pack("{s:s, s:s}", "path", "persona/other.md", "content", "x"), &a);
    assert_false(a.is_error);

    /* through chains of links: IDENTITY.md -> cur/id.md with cur -> v1; AGENTS.md -> hop -> real.md */
    snprintf(p, sizeof p, "%s/IDENTITY.md", fx->ws);
    assert_int_equal(symlink("cur/id.md", p), 0);
    snprintf(p, sizeof p, "%s/cur", fx->ws);
    assert_int_equal(symlink("v1", p), 0);
    snprintf(p, sizeof p, "%s/AGENTS.md", fx->ws);
    assert_int_equal(symlink("hop", p), 0);
    snprintf(p, sizeof p, "%s/hop", fx->ws);
    assert_int_equal(symlink("./real.md", p), 0);
    static const char *const chained[] = {"v1/id.md", "v1/id.md/x", "real.md", "./v1//id.md"};
    for (size_t i = 0; i < NX_ARRAY_LEN(chained); i++) {
        run_tool(fx, "file_write", json_pack("{s:s, s:s}", "path", chained[i], "content", "obey me"), &a);
        if (!a.is_error)
            fail_msg("file_write %s was not refused", chained[i]);
        assert_non_null(strstr(a.text, "identity files"));
    }
    run_tool(fx, "file_write", json_pack("{s:s, s:s}", "path", "v1/other.md", "content", "x"), &a);
    assert_false(a.is_error);

    /* a link to an existing directory ("/", ".", notes/) protects nothing under it: no file is
     * there to load */
    static const char *const dirs[] = {"/", ".", "notes"};
    char d[PATH_MAX + 32];
    snprintf(d, sizeof d, "%s/notes", fx->ws);
    mkdir(d, 0700);
    for (size_t i = 0; i < NX_ARRAY_LEN(dirs); i++) {
        snprintf(p, sizeof p, "%s/USER.md", fx->ws);
        unlink(p);
        assert_int_equal(symlink(dirs[i], p), 0);
        run_tool(fx, "file_write", json_pack("{s:s, s:s}", "path", "notes/todo.txt", "content", "x"), &a);
        if (a.is_error)
            fail_msg("USER.md -> %s: %s", dirs[i], a.text);
    }
}

/* Where a path is or will be: resolved as far as it exists, the rest as given. */
static void test_real_or_future(void **state)
{
    struct fixture *fx = *state;
    char out[PATH_MAX], want[PATH_MAX + 64], real[PATH_MAX], cwd[PATH_MAX];

    assert_non_null(realpath(fx->ws, real));
    assert_true(nx_sandbox_real_or_future(fx->ws, out, sizeof out));
    assert_string_equal(out, real);
    snprintf(want, sizeof want, "%s/not/yet", real);
    snprintf(cwd, sizeof cwd, "%s/not/yet", fx->ws);
    assert_true(nx_sandbox_real_or_future(cwd, out, sizeof out));
    assert_string_equal(out, want);
    assert_true(nx_sandbox_real_or_future("/nx-none-such/x", out, sizeof out));
    assert_string_equal(out, "/nx-none-such/x");
    snprintf(cwd, sizeof cwd, "%s/in_dir/new.txt", fx->ws); /* through a link: where it leads */
    assert_true(nx_sandbox_real_or_future(cwd, out, sizeof out));
    snprintf(want, sizeof want, "%s/sub/new.txt", real);
    assert_string_equal(out, want);
    assert_non_null(getcwd(cwd, sizeof cwd));
    assert_int_equal(chdir(fx->ws), 0);
    assert_true(nx_sandbox_real_or_future("data/x", out, sizeof out)); /* relative: from here */
    assert_int_equal(chdir(cwd), 0);
    snprintf(want, sizeof want, "%s/data/x", real);
    assert_string_equal(out, want);
}

/* A descriptor whose real path is longer than PATH_MAX cannot be told to be inside the
 * workspace: refused (a directory swapped for a link to such a place between the check and
 * the open got through when a failed readlink counted as "no /proc"). */
static void test_check_fd_refuses_what_it_cannot_place(void **state)
{
    struct fixture *fx = *state;
    enum { DEPTH = 30 };
    char name[201], err[256], p[PATH_MAX];
    int dirs[DEPTH + 1];

    memset(name, 'd', sizeof name - 1);
    name[sizeof name - 1] = '\0';
    dirs[0] = open(fx->outside, O_RDONLY | O_DIRECTORY);
    assert_true(dirs[0] >= 0);
    for (int d = 1; d <= DEPTH; d++) { /* 30 names of 200 bytes: a real path of ~6,000 */
        assert_int_equal(mkdirat(dirs[d - 1], name, 0700), 0);
        dirs[d] = openat(dirs[d - 1], name, O_RDONLY | O_DIRECTORY);
        assert_true(dirs[d] >= 0);
    }
    int fd = openat(dirs[DEPTH], "f", O_CREAT | O_WRONLY, 0600);
    assert_true(fd >= 0);
    assert_int_equal(nx_sandbox_check_fd(fx->ws, fd, err, sizeof err), NX_EPERM);
    snprintf(p, sizeof p, "%s/hello.txt", fx->ws);
    int in = open(p, O_RDONLY);
    assert_int_equal(nx_sandbox_check_fd(fx->ws, in, err, sizeof err), 0);
    close(in);
    close(fd);
    assert_int_equal(unlinkat(dirs[DEPTH], "f", 0), 0);
    for (int d = DEPTH; d >= 1; d--) {
        close(dirs[d]);
        assert_int_equal(unlinkat(dirs[d - 1], name, AT_REMOVEDIR), 0);
    }
    close(dirs[0]);
}

/* A message that quotes the model's path cut mid-character is still valid UTF-8. */
static void test_tool_answers_are_valid_utf8(void **state)
{
    struct fixture *fx = *state;
    struct ts_answer a;
    struct nx_buf name = NX_BUF_INIT;

    nx_buf_puts(&name, "a");
    for (int i = 0; i < 150; i++)
        nx_buf_puts(&name, "\xc3\xa9"); /* é */
    nx_buf_puts(&name, "/../x");
    run_tool(fx, "file_read", json_pack("{s:s}", "path", nx_buf_cstr(&name)), &a);
    assert_true(a.is_error);
    assert_true(nx_utf8_is_valid(a.text, strlen(a.text)));
    assert_non_null(strstr(a.text, ".."));
    nx_buf_cleanup(&name);
}

/* file_list shows the 500 first names of the whole directory, not of the first entries read. */
static void test_file_list_shows_the_first_names_of_a_big_directory(void **state)
{
    struct fixture *fx = *state;
    struct ts_answer a;
    char dir[PATH_MAX], p[PATH_MAX + 32];
    json_t *res, *entries;

    snprintf(dir, sizeof dir, "%s/big", fx->ws);
    assert_int_equal(mkdir(dir, 0700), 0);
    for (int i = 5999; i >= 0; i--) {
        int fd;
        snprintf(p, sizeof p, "%s/f%05d", dir, i);
        fd = open(p, O_CREAT | O_WRONLY, 0600);
        assert_true(fd >= 0);
        close(fd);
    }
    run_tool(fx, "file_list", json_pack("{s:s}", "path", "big"), &a);
    assert_false(a.is_error);
    res = json_loads(a.text, 0, NULL);
    assert_non_null(res);
    entries = json_object_get(res, "entries");
    assert_int_equal(json_array_size(entries), 500);
    for (size_t i = 0; i < 500; i++) {
        char want[16];
        snprintf(want, sizeof want, "f%05zu", i);
        assert_string_equal(json_string_value(json_object_get(json_array_get(entries, i), "name")), want);
    }
    assert_true(json_is_true(json_object_get(res, "truncated")));
    assert_non_null(strstr(json_string_value(json_object_get(res, "note")), "500 of 6000"));
    json_decref(res);

    /* 600 long names (with a control character, escaped at 6 bytes) do not fit the answer's
     * cap: as many as fit, whole JSON, and the note says how many */
    snprintf(dir, sizeof dir, "%s/long", fx->ws);
    assert_int_equal(mkdir(dir, 0700), 0);
    char name[220];
    memset(name, 'n', sizeof name - 1);
    name[sizeof name - 1] = '\0';
    name[150] = '\t';
    for (int i = 0; i < 600; i++) {
        char lp[2 * PATH_MAX];
        snprintf(lp, sizeof lp, "%s/%03d%s", dir, i, name);
        int fd = open(lp, O_CREAT | O_WRONLY, 0600);
        assert_true(fd >= 0);
        close(fd);
    }
    run_tool(fx, "file_list", json_pack("{s:s}", "path", "long"), &a);
    assert_false(a.is_error);
    assert_true(strlen(a.text) <= 65536);
    res = json_loads(a.text, 0, NULL);
    assert_non_null(res);
    size_t shown = json_array_size(json_object_get(res, "entries"));
    assert_true(shown > 200 && shown < 600);
    assert_true(json_is_true(json_object_get(res, "truncated")));
    char want[64];
    snprintf(want, sizeof want, "the first %zu of 600 entries", shown);
    assert_non_null(strstr(json_string_value(json_object_get(res, "note")), want));
    json_decref(res);
}

/* ---- hosts and addresses ------------------------------------------------------------------ */

static bool priv4(const char *s)
{
    struct sockaddr_in in = {.sin_family = AF_INET};
    assert_int_equal(inet_pton(AF_INET, s, &in.sin_addr), 1);
    return nx_sandbox_addr_is_private((struct sockaddr *)&in);
}

static bool priv6(const char *s)
{
    struct sockaddr_in6 in6 = {.sin6_family = AF_INET6};
    assert_int_equal(inet_pton(AF_INET6, s, &in6.sin6_addr), 1);
    return nx_sandbox_addr_is_private((struct sockaddr *)&in6);
}

static void test_private_addresses(void **state)
{
    static const char *const private4[] = {"127.0.0.1", "127.255.0.9", "10.1.2.3", "172.16.0.1",
                                           "172.31.255.255", "192.168.1.1", "100.64.0.1", "100.127.1.1",
                                           "169.254.169.254", "0.0.0.0", "224.0.0.1", "255.255.255.255",
                                           "168.63.129.16", "198.18.0.1", "192.0.0.8", "0.1.2.3"};
    static const char *const public4[] = {"8.8.8.8", "172.32.0.1", "172.15.255.255", "100.128.0.1",
                                          "93.184.216.34", "11.0.0.1"};
    static const char *const private6[] = {"::1", "::", "fc00::1", "fd12:3456::1", "fe80::1",
                                           "::ffff:127.0.0.1", "::ffff:10.0.0.1", "ff02::1",
                                           "64:ff9b::a00:1", "64:ff9b:1::a9fe:a9fe", "2001::1",
                                           "2001:0:4136:e378::1", "::ffff:0:7f00:1", "::127.0.0.1",
                                           "2002:7f00:1::1", "2002:a00:1::1", "fec0::1", "100::1",
                                           "2001:db8::1"};
    static const char *const public6[] = {"2606:4700::1111", "::ffff:8.8.8.8", "::ffff:0:808:808",
                                          "2002:808:808::1", "64:ff9b::808:808", "2a00:1450::1"};

    (void)state;
    for (size_t i = 0; i < sizeof private4 / sizeof *private4; i++)
        if (!priv4(private4[i]))
            fail_msg("%s should be private", private4[i]);
    for (size_t i = 0; i < sizeof public4 / sizeof *public4; i++)
        if (priv4(public4[i]))
            fail_msg("%s should be public", public4[i]);
    for (size_t i = 0; i < sizeof private6 / sizeof *private6; i++)
        if (!priv6(private6[i]))
            fail_msg("%s should be private", private6[i]);
    for (size_t i = 0; i < sizeof public6 / sizeof *public6; i++)
        if (priv6(public6[i]))
            fail_msg("%s should be public", public6[i]);
}

static void test_host_allowlist_globs(void **state)
{
    const char *const list[] = {"api.example.com", "*.wiki.org", "127.0.0.1", "[::1]", NULL};
    const char *const all[] = {"*", NULL};
    const char *const none[] = {NULL};

    (void)state;
    assert_true(nx_sandbox_host_allowed("api.example.com", 443, list));
    assert_true(nx_sandbox_host_allowed("API.Example.COM.", 443, list));
    assert_false(nx_sandbox_host_allowed("example.com", 443, list));
    assert_false(nx_sandbox_host_allowed("evilapi.example.com", 443, list));
    assert_true(nx_sandbox_host_allowed("en.wiki.org", 443, list));
    assert_true(nx_sandbox_host_allowed("a.b.wiki.org", 443, list));
    assert_false(nx_sandbox_host_allowed("wiki.org", 443, list));
    assert_false(nx_sandbox_host_allowed("evilwiki.org", 443, list));
    assert_true(nx_sandbox_host_allowed("127.0.0.1", 443, list));
    assert_true(nx_sandbox_host_allowed("::1", 443, list));
    assert_true(nx_sandbox_host_allowed("anything.net", 443, all));
    assert_false(nx_sandbox_host_allowed("anything.net", 443, none));
    assert_false(nx_sandbox_host_allowed("anything.net", 443, NULL));

    /* ":port" narrows an entry to one port; without one, any port */
    const char *const ports[] = {"api.example.com:8443", "*.wiki.org:443", "127.0.0.1:8080",
                                 "[::1]:9000", "::2", "open.example.com", "bad.example.com:99999", NULL};
    assert_true(nx_sandbox_host_allowed("api.example.com", 8443, ports));
    assert_false(nx_sandbox_host_allowed("api.example.com", 443, ports));
    assert_true(nx_sandbox_host_allowed("en.wiki.org", 443, ports));
    assert_false(nx_sandbox_host_allowed("en.wiki.org", 80, ports));
    assert_true(nx_sandbox_host_allowed("127.0.0.1", 8080, ports));
    assert_false(nx_sandbox_host_allowed("127.0.0.1", 80, ports));
    assert_true(nx_sandbox_host_allowed("[::1]", 9000, ports));
    assert_false(nx_sandbox_host_allowed("::1", 9001, ports));
    assert_true(nx_sandbox_host_allowed("::2", 1234, ports)); /* a bare IPv6 address has no port */
    assert_true(nx_sandbox_host_allowed("open.example.com", 1234, ports));
    assert_false(nx_sandbox_host_allowed("bad.example.com", 443, ports));
    assert_false(nx_sandbox_host_allowed("bad.example.com", 9999, ports));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_sandbox_refuses_dotdot_and_absolute, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sandbox_resolves_inside_paths, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sandbox_refuses_symlink_escapes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_file_tools_refuse_escapes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_file_tools_follow_inside_links, setup, teardown),
        cmocka_unit_test_setup_teardown(test_file_write_creates_private_dirs_and_files, setup, teardown),
        cmocka_unit_test_setup_teardown(test_file_read_reports_binary_and_nul_paths, setup, teardown),
        cmocka_unit_test_setup_teardown(test_file_write_refuses_deep_paths, setup, teardown),
        cmocka_unit_test_setup_teardown(test_file_write_protects_identity_and_linked_files, setup, teardown),
        cmocka_unit_test_setup_teardown(test_file_write_protects_where_a_dangling_identity_link_leads, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_check_fd_refuses_what_it_cannot_place, setup, teardown),
        cmocka_unit_test_setup_teardown(test_real_or_future, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tool_answers_are_valid_utf8, setup, teardown),
        cmocka_unit_test_setup_teardown(test_file_list_shows_the_first_names_of_a_big_directory, setup,
                                        teardown),
        cmocka_unit_test(test_private_addresses),
        cmocka_unit_test(test_host_allowlist_globs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
