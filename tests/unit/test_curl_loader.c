#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <curl/curl.h>
#include <jansson.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#include "core/buf.h"
#include "core/clock.h"
#include "core/error.h"
#include "core/log.h"
#include "http/client.h"
#include "http/curl_loader.h"
#include "test_support.h"

/* http/curl_loader.c: libcurl is dlopened at the first request, not at start-up, and every
 * argument type of the variadic setopt functions reaches libcurl intact. Runs against
 * tests/tools/http_peer.py. The tests run in order: the first needs a process that has not
 * loaded libcurl yet (it forks), the second watches the load happen. */

static struct ts_child g_peer = TS_CHILD_INIT;

static int group_setup(void **state)
{
    (void)state;
    return ts_spawn_py(&g_peer, "tools/http_peer.py");
}

static int group_teardown(void **state)
{
    (void)state;
    ts_kill(&g_peer);
    return 0;
}

static void url(char *out, size_t n, const char *path)
{
    ts_url(out, n, "127.0.0.1", g_peer.port, path);
}

/* ---- client helpers -------------------------------------------------------------------- */

struct result {
    int ndone;
    int rc;
    long status;
    char err[256];
};

static void on_done(int rc, const struct nx_http_response *res, const char *err, void *udata)
{
    struct result *r = udata;

    r->ndone++;
    r->rc = rc;
    r->status = res->status;
    snprintf(r->err, sizeof r->err, "%s", err ? err : "");
}

/* Starts a GET and runs the loop until it completes (at most 10 s). A plain http:// call goes by
 * nexo's own engine unless it asks for what only libcurl does: is_curl asks it to follow
 * redirects. */
static void get_by(uv_loop_t *loop, struct nx_http_client *c, const char *u, bool is_curl, struct result *r)
{
    struct nx_http_call_opts o = {.url = u, .on_done = on_done, .udata = r, .follow_redirects = is_curl};

    memset(r, 0, sizeof *r);
    if (nx_http_client_request(c, &o))
        ts_run_until_count(loop, &r->ndone, 1, 10000);
}

static void get(uv_loop_t *loop, struct nx_http_client *c, const char *u, struct result *r)
{
    get_by(loop, c, u, true, r);
}

static int client_free_and_close(uv_loop_t *loop, struct nx_http_client *c)
{
    nx_http_client_free(c);
    return ts_loop_finish(loop);
}

/* ---- tests ----------------------------------------------------------------------------- */

/* In a child (this process must keep libcurl loadable): a missing library makes every entry
 * point fail cleanly, the client report NX_EHTTP, and exactly one error line. Returns a bit
 * per failed check. */
static int missing_library_child(int log_fd)
{
    struct nx_http_client *c = NULL;
    struct result r;
    uv_loop_t loop;
    char u[128];
    int bad = 0, running = 1, queued = 1;

    nx_log_set_fd(log_fd);
    nx_curl_set_soname("libnexo-test-no-such-curl.so.4");
    bad |= nx_curl_is_loaded() << 0;
    bad |= (curl_easy_init() != NULL) << 1;
    bad |= (curl_global_init(CURL_GLOBAL_NOTHING) != CURLE_FAILED_INIT) << 2;
    bad |= (curl_multi_init() != NULL) << 3;
    bad |= (curl_slist_append(NULL, "A: b") != NULL) << 4;
    bad |= (curl_version_info(CURLVERSION_NOW) != NULL) << 5;
    bad |= (curl_easy_setopt(NULL, CURLOPT_URL, "http://127.0.0.1/") != CURLE_FAILED_INIT) << 6;
    bad |= (curl_multi_setopt(NULL, CURLMOPT_MAXCONNECTS, 1L) != CURLM_BAD_HANDLE) << 7;
    bad |= (curl_multi_socket_action(NULL, CURL_SOCKET_TIMEOUT, 0, &running) != CURLM_BAD_HANDLE ||
            running != 0) << 8;
    bad |= (curl_multi_info_read(NULL, &queued) != NULL || queued != 0) << 9;
    bad |= (curl_multi_cleanup(NULL) != CURLM_BAD_HANDLE) << 10;
    bad |= (curl_easy_strerror(CURLE_OK) == NULL) << 11;
    curl_slist_free_all(NULL);
    curl_easy_cleanup(NULL);

    /* the gateway's client keeps working: the call fails, nothing crashes */
    if (uv_loop_init(&loop) != 0 || nx_http_client_new(&loop, NULL, &c) != 0)
        return bad | 1 << 12;
    url(u, sizeof u, "/json");
    get(&loop, c, u, &r);
    bad |= (r.ndone != 1 || r.rc != NX_EHTTP || !strstr(r.err, "libcurl")) << 13;
    get(&loop, c, u, &r);
    bad |= (r.ndone != 1 || r.rc != NX_EHTTP) << 14;
    get_by(&loop, c, u, false, &r); /* nexo's own engine needs no libcurl */
    bad |= (r.ndone != 1 || r.rc != 0 || r.status != 200) << 17;
    bad |= (client_free_and_close(&loop, c) != 0) << 15;
    bad |= nx_curl_is_loaded() << 16;
    return bad;
}

static void test_curl_missing_library_fails_cleanly_and_logs_once(void **state)
{
    (void)state;
    char log[8192];
    size_t len = 0;
    int fds[2], status = -1;
    pid_t pid;
    const char *p;
    int nerr = 0;

    assert_false(nx_curl_is_loaded());
    assert_int_equal(pipe(fds), 0);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int bad;

        close(fds[0]);
        bad = missing_library_child(fds[1]);
        dprintf(fds[1], "child failed checks: 0x%x\n", (unsigned)bad);
        _exit(bad ? 1 : 0);
    }
    close(fds[1]);
    for (uint64_t deadline = nx_mono_ms() + 20000; len + 1 < sizeof log && nx_mono_ms() < deadline;) {
        struct pollfd pfd = {fds[0], POLLIN, 0};
        ssize_t n;

        if (poll(&pfd, 1, 100) <= 0)
            continue;
        if ((n = read(fds[0], log + len, sizeof log - 1 - len)) <= 0)
            break;
        len += (size_t)n;
    }
    log[len] = '\0';
    close(fds[0]);
    assert_int_equal(waitpid(pid, &status, 0), pid);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail_msg("child status %d, its log:\n%s", status, log);
    for (p = log; (p = strstr(p, "could not be loaded")); p++)
        nerr++;
    assert_int_equal(nerr, 1);
    assert_non_null(strstr(log, "libnexo-test-no-such-curl.so.4"));
    assert_non_null(strstr(log, "apt-get install libcurl4"));
}

static void test_curl_loads_at_first_request_not_at_client_new(void **state)
{
    (void)state;
    struct nx_http_client *c = NULL;
    struct result r;
    uv_loop_t loop;
    char u[128];

    assert_false(nx_curl_is_loaded());
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(nx_http_client_new(&loop, NULL, &c), 0);
    assert_false(nx_curl_is_loaded());

    /* a request refused before it reaches curl does not load it either */
    get(&loop, c, "", &r);
    assert_int_equal(r.ndone, 1);
    assert_int_equal(r.rc, NX_EINVAL);
    assert_false(nx_curl_is_loaded());

    /* nor does one nexo's own HTTP/1.1 engine makes */
    url(u, sizeof u, "/json");
    get_by(&loop, c, u, false, &r);
    assert_int_equal(r.ndone, 1);
    assert_int_equal(r.rc, 0);
    assert_int_equal(r.status, 200);
    assert_false(nx_curl_is_loaded());

    get(&loop, c, u, &r);
    assert_int_equal(r.ndone, 1);
    assert_int_equal(r.rc, 0);
    assert_int_equal(r.status, 200);
    assert_true(nx_curl_is_loaded());
    assert_int_equal(client_free_and_close(&loop, c), 0);

    /* a client freed before any request never touches curl */
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(nx_http_client_new(&loop, NULL, &c), 0);
    assert_int_equal(client_free_and_close(&loop, c), 0);
}

struct sink {
    struct nx_buf body;
    int calls;
    int refuse;
};

static size_t sink_write(char *data, size_t size, size_t nmemb, void *udata)
{
    struct sink *s = udata;

    s->calls++;
    if (s->refuse)
        return 0;
    nx_buf_append(&s->body, data, size * nmemb);
    return size * nmemb;
}

static int ignore_socket(CURL *e, curl_socket_t fd, int what, void *userp, void *socketp)
{
    (void)e;
    (void)fd;
    (void)what;
    (void)userp;
    (void)socketp;
    return 0;
}

static void test_curl_setopt_forwards_each_argument_type(void **state)
{
    (void)state;
    struct sink s = {NX_BUF_INIT, 0, 0};
    struct curl_slist *hdrs = NULL;
    char u[128], errbuf[CURL_ERROR_SIZE] = "";
    char *eff = NULL;
    long code = 0;
    curl_off_t got = 0;
    json_t *doc;
    CURL *e;
    CURLM *m;
    uint64_t t0;
    static const char pem[] = "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n";
    struct curl_blob blob = {(void *)pem, sizeof pem - 1, CURL_BLOB_COPY};

    assert_int_equal(curl_global_init(CURL_GLOBAL_NOTHING), CURLE_OK);
    assert_non_null(curl_version_info(CURLVERSION_NOW));
    assert_non_null(curl_version_info(CURLVERSION_NOW)->version);
    assert_string_equal(curl_easy_strerror(CURLE_OK), "No error");
    assert_non_null(e = curl_easy_init());
    assert_non_null(hdrs = curl_slist_append(NULL, "X-Nexo-Shim: slist-ok"));

    /* string, slist, function, object pointer, long, off_t: an /echo request shows each */
    url(u, sizeof u, "/echo");
    assert_int_equal(curl_easy_setopt(e, CURLOPT_URL, u), CURLE_OK);
    assert_int_equal(curl_easy_setopt(e, CURLOPT_HTTPHEADER, hdrs), CURLE_OK);
    assert_int_equal(curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, sink_write), CURLE_OK);
    assert_int_equal(curl_easy_setopt(e, CURLOPT_WRITEDATA, &s), CURLE_OK);
    assert_int_equal(curl_easy_setopt(e, CURLOPT_ERRORBUFFER, errbuf), CURLE_OK);
    assert_int_equal(curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L), CURLE_OK);
    assert_int_equal(curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 10000L), CURLE_OK);
    assert_int_equal(curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)1 << 20), CURLE_OK);
    assert_int_equal(curl_easy_perform(e), CURLE_OK);
    assert_int_equal(curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &code), CURLE_OK);
    assert_int_equal(code, 200);
    assert_int_equal(curl_easy_getinfo(e, CURLINFO_EFFECTIVE_URL, &eff), CURLE_OK);
    assert_string_equal(eff, u);
    assert_true(s.calls > 0);
    assert_non_null(doc = json_loadb(s.body.data, s.body.len, 0, NULL));
    assert_string_equal(json_string_value(json_object_get(doc, "method")), "GET");
    assert_string_equal(json_string_value(json_object_get(json_object_get(doc, "headers"),
                                                          "x-nexo-shim")), "slist-ok");
    json_decref(doc);

    /* off_t: a cap under the size refuses it; a cap above 2^32 is not truncated to 1000 */
    url(u, sizeof u, "/big?bytes=4096");
    assert_int_equal(curl_easy_setopt(e, CURLOPT_URL, u), CURLE_OK);
    assert_int_equal(curl_easy_setopt(e, CURLOPT_HTTPHEADER, NULL), CURLE_OK);
    assert_int_equal(curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)1000), CURLE_OK);
    nx_buf_reset(&s.body);
    assert_int_equal(curl_easy_perform(e), CURLE_FILESIZE_EXCEEDED);
    assert_int_equal(curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, ((curl_off_t)1 << 32) + 1000),
                     CURLE_OK);
    assert_int_equal(curl_easy_perform(e), CURLE_OK);
    assert_int_equal(s.body.len, 4096);
    assert_int_equal(curl_easy_getinfo(e, CURLINFO_SIZE_DOWNLOAD_T, &got), CURLE_OK);
    assert_int_equal(got, 4096);

    /* long: a 200 ms deadline against a 3 s answer; the error buffer (object pointer) fills */
    url(u, sizeof u, "/slow?ms=3000");
    assert_int_equal(curl_easy_setopt(e, CURLOPT_URL, u), CURLE_OK);
    assert_int_equal(curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 200L), CURLE_OK);
    t0 = nx_mono_ms();
    assert_int_equal(curl_easy_perform(e), CURLE_OPERATION_TIMEDOUT);
    assert_true(nx_mono_ms() - t0 < 2500);
    assert_true(errbuf[0] != '\0');

    /* function pointer: the callback's return value reaches curl */
    url(u, sizeof u, "/json");
    assert_int_equal(curl_easy_setopt(e, CURLOPT_URL, u), CURLE_OK);
    assert_int_equal(curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 10000L), CURLE_OK);
    s.refuse = 1;
    s.calls = 0;
    assert_int_equal(curl_easy_perform(e), CURLE_WRITE_ERROR);
    assert_int_equal(s.calls, 1);

    /* blob, and an option number of no known type */
    assert_int_equal(curl_easy_setopt(e, CURLOPT_CAINFO_BLOB, &blob), CURLE_OK);
    assert_int_equal(curl_easy_setopt(e, (CURLoption)90001, 1L), CURLE_UNKNOWN_OPTION);
    curl_easy_cleanup(e);
    curl_slist_free_all(hdrs);
    nx_buf_cleanup(&s.body);

    /* the multi handle's option types (the client's tests drive a whole multi transfer) */
    assert_non_null(m = curl_multi_init());
    assert_int_equal(curl_multi_setopt(m, CURLMOPT_MAXCONNECTS, 4L), CURLM_OK);
    assert_int_equal(curl_multi_setopt(m, CURLMOPT_SOCKETFUNCTION, ignore_socket), CURLM_OK);
    assert_int_equal(curl_multi_setopt(m, CURLMOPT_SOCKETDATA, &s), CURLM_OK);
    assert_int_equal(curl_multi_setopt(m, CURLMOPT_CONTENT_LENGTH_PENALTY_SIZE, (curl_off_t)1 << 33),
                     CURLM_OK);
    assert_int_equal(curl_multi_setopt(m, (CURLMoption)90001, 1L), CURLM_UNKNOWN_OPTION);
    assert_string_equal(curl_multi_strerror(CURLM_OK), "No error");
    assert_int_equal(curl_multi_cleanup(m), CURLM_OK);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_curl_missing_library_fails_cleanly_and_logs_once),
        cmocka_unit_test(test_curl_loads_at_first_request_not_at_client_new),
        cmocka_unit_test(test_curl_setopt_forwards_each_argument_type),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
