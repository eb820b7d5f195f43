/* NX_TEST_LABELS: threaded */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/buf.h"
#include "core/metrics.h"

#define PROMTOOL "/usr/bin/promtool"

static int reset_registry(void **state)
{
    (void)state;
    nx_metrics_reset();
    return 0;
}

static char *render(void)
{
    struct nx_buf b = NX_BUF_INIT;
    nx_metrics_render(&b);
    return nx_buf_steal(&b);
}

/* Everything before the process metrics (which are always last). */
static char *render_families(void)
{
    char *s = render();
    char *p = strstr(s, "# HELP process_");
    if (p)
        *p = '\0';
    return s;
}

/* Feeds text to `promtool check metrics` on stdin; returns its exit status, with its output in
 * report (so a failure shows what promtool disliked). */
static int promtool_check(const char *text, char *report, size_t reportlen)
{
    int in[2], outp[2];
    pid_t pid;
    int status = -1;

    if (access(PROMTOOL, X_OK) != 0)
        fail_msg(PROMTOOL " is missing: install it with scripts/install-deps.sh --test");
    assert_int_equal(pipe(in), 0);
    assert_int_equal(pipe(outp), 0);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(in[0], 0);
        dup2(outp[1], 1);
        dup2(outp[1], 2);
        close(in[0]);
        close(in[1]);
        close(outp[0]);
        close(outp[1]);
        execl(PROMTOOL, "promtool", "check", "metrics", (char *)NULL);
        _exit(127);
    }
    close(in[0]);
    close(outp[1]);
    signal(SIGPIPE, SIG_IGN);
    size_t len = strlen(text), off = 0;
    while (off < len) {
        ssize_t n = write(in[1], text + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        off += (size_t)n;
    }
    close(in[1]);
    size_t got = 0;
    for (int i = 0; i < 10000; i++) {
        if (got + 1 >= reportlen)
            break;
        ssize_t n = read(outp[0], report + got, reportlen - 1 - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    report[got] = '\0';
    close(outp[0]);
    /* Bounded wait: promtool answers in well under a second. */
    for (int i = 0; i < 3000; i++) {
        pid_t w = waitpid(pid, &status, WNOHANG);
        if (w == pid)
            break;
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
        if (i == 2999) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
        }
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static void assert_promtool_accepts(const char *text)
{
    char report[8192];
    int rc = promtool_check(text, report, sizeof report);
    if (rc != 0)
        fail_msg("promtool check metrics exited %d: %s\n--- input ---\n%s", rc, report, text);
}

static void test_metrics_render_exact_text(void **state)
{
    (void)state;
    const char *const labels[] = {"method", "code", NULL};
    const double buckets[] = {0.5, 1};
    struct nx_metric *c = nx_metric_counter("nx_test_requests_total", "Requests served.", labels);
    struct nx_metric *g = nx_metric_gauge("nx_test_temperature", "Current temperature.", NULL);
    struct nx_metric *h =
        nx_metric_histogram("nx_test_latency_seconds", "Request latency.", NULL, buckets, 2);
    struct nx_metric *hl = nx_metric_histogram("nx_test_size_bytes", "Sizes.",
                                               (const char *const[]){"kind", NULL}, (const double[]){100}, 1);

    nx_counter_add(c, (const char *const[]){"GET", "200"}, 1);
    nx_counter_add(c, (const char *const[]){"POST", "500"}, 1);
    nx_counter_add(c, (const char *const[]){"GET", "200"}, 2);
    nx_counter_add(c, (const char *const[]){"GET", "200"}, -5); /* counters never go down */
    nx_gauge_set(g, NULL, 20);
    nx_gauge_add(g, NULL, -18.5);
    nx_histogram_observe(h, NULL, 0.25);
    nx_histogram_observe(h, NULL, 0.5); /* le is inclusive */
    nx_histogram_observe(h, NULL, 4);
    nx_histogram_observe(hl, (const char *const[]){"in"}, 7);

    /* Registering again returns the same family. */
    assert_ptr_equal(nx_metric_counter("nx_test_requests_total", "Requests served.", labels), c);

    char *s = render_families();
    assert_string_equal(s,
                        "# HELP nx_test_requests_total Requests served.\n"
                        "# TYPE nx_test_requests_total counter\n"
                        "nx_test_requests_total{method=\"GET\",code=\"200\"} 3\n"
                        "nx_test_requests_total{method=\"POST\",code=\"500\"} 1\n"
                        "# HELP nx_test_temperature Current temperature.\n"
                        "# TYPE nx_test_temperature gauge\n"
                        "nx_test_temperature 1.5\n"
                        "# HELP nx_test_latency_seconds Request latency.\n"
                        "# TYPE nx_test_latency_seconds histogram\n"
                        "nx_test_latency_seconds_bucket{le=\"0.5\"} 2\n"
                        "nx_test_latency_seconds_bucket{le=\"1\"} 2\n"
                        "nx_test_latency_seconds_bucket{le=\"+Inf\"} 3\n"
                        "nx_test_latency_seconds_sum 4.75\n"
                        "nx_test_latency_seconds_count 3\n"
                        "# HELP nx_test_size_bytes Sizes.\n"
                        "# TYPE nx_test_size_bytes histogram\n"
                        "nx_test_size_bytes_bucket{kind=\"in\",le=\"100\"} 1\n"
                        "nx_test_size_bytes_bucket{kind=\"in\",le=\"+Inf\"} 1\n"
                        "nx_test_size_bytes_sum{kind=\"in\"} 7\n"
                        "nx_test_size_bytes_count{kind=\"in\"} 1\n");
    free(s);
}

static void test_metrics_number_formatting(void **state)
{
    (void)state;
    struct nx_metric *g = nx_metric_gauge("nx_test_value", "Values.", (const char *const[]){"v", NULL});
    nx_gauge_set(g, (const char *const[]){"a"}, 0.1);
    nx_gauge_set(g, (const char *const[]){"b"}, 1e20);
    nx_gauge_set(g, (const char *const[]){"c"}, INFINITY);
    nx_gauge_set(g, (const char *const[]){"d"}, -INFINITY);
    nx_gauge_set(g, (const char *const[]){"e"}, NAN);
    nx_gauge_set(g, (const char *const[]){"f"}, -0.0);
    nx_gauge_set(g, (const char *const[]){"g"}, 1234567890123.0);
    nx_gauge_set(g, (const char *const[]){"h"}, 1.0 / 3.0);
    nx_gauge_set(g, (const char *const[]){"i"}, -2.5e-7);
    char *s = render_families();
    assert_non_null(strstr(s, "nx_test_value{v=\"a\"} 0.1\n"));
    assert_non_null(strstr(s, "nx_test_value{v=\"b\"} 1e+20\n"));
    assert_non_null(strstr(s, "nx_test_value{v=\"c\"} +Inf\n"));
    assert_non_null(strstr(s, "nx_test_value{v=\"d\"} -Inf\n"));
    assert_non_null(strstr(s, "nx_test_value{v=\"e\"} NaN\n"));
    assert_non_null(strstr(s, "nx_test_value{v=\"f\"} 0\n"));
    assert_non_null(strstr(s, "nx_test_value{v=\"g\"} 1234567890123\n"));
    assert_non_null(strstr(s, "nx_test_value{v=\"h\"} 0.3333333333333333\n"));
    assert_non_null(strstr(s, "nx_test_value{v=\"i\"} -2.5e-07\n"));
    assert_promtool_accepts(s);
    free(s);
}

static void test_metrics_label_values_are_escaped(void **state)
{
    (void)state;
    struct nx_metric *c =
        nx_metric_counter("nx_test_errors_total", "Errors by\nmessage \\ kind.",
                          (const char *const[]){"msg", NULL});
    nx_counter_add(c, (const char *const[]){"say \"hi\"\nback\\slash"}, 1);
    nx_counter_add(c, (const char *const[]){""}, 1);
    char *s = render_families();
    assert_non_null(strstr(s, "# HELP nx_test_errors_total Errors by\\nmessage \\\\ kind.\n"));
    assert_non_null(strstr(s, "nx_test_errors_total{msg=\"say \\\"hi\\\"\\nback\\\\slash\"} 1\n"));
    assert_non_null(strstr(s, "nx_test_errors_total{msg=\"\"} 1\n"));
    free(s);
    s = render();
    assert_promtool_accepts(s);
    free(s);
}

/* The value of the sample line `name value` (not the HELP line that mentions name). */
static double sample_value(const char *text, const char *name)
{
    char key[128];
    snprintf(key, sizeof key, "\n%s ", name);
    const char *p = strstr(text, key);
    if (!p)
        fail_msg("missing sample %s in:\n%s", name, text);
    char *end;
    double v = strtod(p + strlen(key), &end);
    assert_true(end > p + strlen(key));
    return v;
}

static void test_metrics_process_metrics_present(void **state)
{
    (void)state;
    char *s = render();
    const char *names[] = {"process_resident_memory_bytes", "process_virtual_memory_bytes",
                           "process_cpu_seconds_total", "process_open_fds", "process_max_fds",
                           "process_start_time_seconds"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        assert_true(sample_value(s, names[i]) >= 0);
    double rss = sample_value(s, "process_resident_memory_bytes");
    double vsz = sample_value(s, "process_virtual_memory_bytes");
    assert_true(rss > 100 * 1024);
    assert_true(vsz >= rss);
    double start = sample_value(s, "process_start_time_seconds");
    double now = (double)time(NULL);
    assert_true(start > now - 24 * 3600 && start <= now + 2);
    assert_true(sample_value(s, "process_open_fds") >= 3);
    assert_true(sample_value(s, "process_max_fds") >= 3);
    assert_promtool_accepts(s);
    free(s);
}

static int collect_calls;

static void collect(void *arg)
{
    collect_calls++;
    nx_gauge_set(arg, NULL, collect_calls);
}

static void test_metrics_collectors_run_at_render(void **state)
{
    (void)state;
    struct nx_metric *g = nx_metric_gauge("nx_test_sampled", "Sampled at render.", NULL);
    collect_calls = 0;
    nx_metrics_on_collect(collect, g);
    char *s = render_families();
    assert_string_equal(s, "# HELP nx_test_sampled Sampled at render.\n"
                           "# TYPE nx_test_sampled gauge\n"
                           "nx_test_sampled 1\n");
    free(s);
    s = render_families();
    assert_non_null(strstr(s, "nx_test_sampled 2\n"));
    free(s);
    nx_metrics_reset();
    s = render_families();
    assert_string_equal(s, "");
    assert_int_equal(collect_calls, 2);
    free(s);
}

#define ROUNDS 50000
#define NTHREADS 2

static struct nx_metric *tc, *tcl, *tg, *th;

static void *update_thread(void *arg)
{
    const char *who = arg;
    for (int i = 0; i < ROUNDS; i++) {
        nx_counter_add(tc, NULL, 1);
        nx_counter_add(tcl, (const char *const[]){i % 2 ? "odd" : "even"}, 1);
        nx_gauge_add(tg, NULL, 1);
        nx_histogram_observe(th, (const char *const[]){who}, (double)(i % 4));
        if (i % 1000 == 0) {
            /* New label sets while the other thread updates: exercises table growth. */
            char label[32];
            snprintf(label, sizeof label, "%s-%d", who, i);
            nx_counter_add(tcl, (const char *const[]){label}, 1);
        }
    }
    return NULL;
}

static void *render_thread(void *arg)
{
    (void)arg;
    for (int i = 0; i < 20; i++)
        free(render());
    return NULL;
}

static void test_metrics_concurrent_updates(void **state)
{
    (void)state;
    tc = nx_metric_counter("nx_test_ops_total", "Ops.", NULL);
    tcl = nx_metric_counter("nx_test_labeled_ops_total", "Ops by parity.", (const char *const[]){"p", NULL});
    tg = nx_metric_gauge("nx_test_inflight", "In flight.", NULL);
    th = nx_metric_histogram("nx_test_work_seconds", "Work.", (const char *const[]){"thread", NULL},
                             (const double[]){0.5, 1.5, 2.5}, 3);
    pthread_t t[NTHREADS + 1];
    const char *names[NTHREADS] = {"a", "b"};
    for (int i = 0; i < NTHREADS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, update_thread, (void *)names[i]), 0);
    assert_int_equal(pthread_create(&t[NTHREADS], NULL, render_thread, NULL), 0);
    for (int i = 0; i <= NTHREADS; i++)
        pthread_join(t[i], NULL);

    char *s = render();
    char want[256];
    snprintf(want, sizeof want, "nx_test_ops_total %d\n", NTHREADS * ROUNDS);
    assert_non_null(strstr(s, want));
    snprintf(want, sizeof want, "nx_test_labeled_ops_total{p=\"even\"} %d\n", NTHREADS * ROUNDS / 2);
    assert_non_null(strstr(s, want));
    snprintf(want, sizeof want, "nx_test_inflight %d\n", NTHREADS * ROUNDS);
    assert_non_null(strstr(s, want));
    assert_non_null(strstr(s, "nx_test_labeled_ops_total{p=\"b-49000\"} 1\n"));
    snprintf(want, sizeof want, "nx_test_work_seconds_bucket{thread=\"a\",le=\"0.5\"} %d\n", ROUNDS / 4);
    assert_non_null(strstr(s, want));
    snprintf(want, sizeof want, "nx_test_work_seconds_bucket{thread=\"b\",le=\"+Inf\"} %d\n", ROUNDS);
    assert_non_null(strstr(s, want));
    snprintf(want, sizeof want, "nx_test_work_seconds_sum{thread=\"b\"} %d\n", ROUNDS / 4 * 6);
    assert_non_null(strstr(s, want));
    assert_promtool_accepts(s);
    free(s);
}

/* A removed series is not rendered, the others keep their order and values, the removed one
 * comes back when set again, and removing what is not there is harmless. */
static void test_metrics_gauge_series_can_be_removed(void **state)
{
    (void)state;
    static const char *const labels[] = {"provider", NULL};
    struct nx_metric *g = nx_metric_gauge("nexo_test_state", "state", labels);
    const char *const a[] = {"a"}, *const b[] = {"b"}, *const c[] = {"c"}, *const z[] = {"z"};

    nx_gauge_set(g, a, 1);
    nx_gauge_set(g, b, 2);
    nx_gauge_set(g, c, 3);
    nx_gauge_remove(g, b);
    nx_gauge_remove(g, z);
    char *text = render_families();
    assert_string_equal(text, "# HELP nexo_test_state state\n# TYPE nexo_test_state gauge\n"
                              "nexo_test_state{provider=\"a\"} 1\nnexo_test_state{provider=\"c\"} 3\n");
    free(text);
    nx_gauge_set(g, c, 4); /* still found after the table was rebuilt */
    nx_gauge_set(g, b, 5);
    text = render_families();
    assert_non_null(strstr(text, "nexo_test_state{provider=\"c\"} 4\nnexo_test_state{provider=\"b\"} 5\n"));
    free(text);
    for (int i = 0; i < 100; i++) { /* through table growth */
        char v[16];
        const char *lv[] = {v};
        snprintf(v, sizeof v, "p%d", i);
        nx_gauge_set(g, lv, i);
        if (i % 2)
            nx_gauge_remove(g, lv);
    }
    text = render_families();
    assert_non_null(strstr(text, "{provider=\"p98\"} 98\n"));
    assert_null(strstr(text, "{provider=\"p99\"}"));
    free(text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_metrics_render_exact_text, reset_registry),
        cmocka_unit_test_setup(test_metrics_number_formatting, reset_registry),
        cmocka_unit_test_setup(test_metrics_label_values_are_escaped, reset_registry),
        cmocka_unit_test_setup(test_metrics_process_metrics_present, reset_registry),
        cmocka_unit_test_setup(test_metrics_collectors_run_at_render, reset_registry),
        cmocka_unit_test_setup(test_metrics_concurrent_updates, reset_registry),
        cmocka_unit_test_setup(test_metrics_gauge_series_can_be_removed, reset_registry),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
