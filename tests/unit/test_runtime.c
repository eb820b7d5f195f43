/* NX_TEST_LABELS: threaded */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "core/alloc.h"
#include "runtime/mailbox.h"
#include "runtime/runtime.h"

enum { POSTERS = 4, PER_POSTER = 20000 };

struct box_test {
    struct nx_mailbox mb;
    pthread_t loop_thread;
    unsigned next[POSTERS];
    unsigned received;
    int out_of_order;
    int wrong_thread;
};

struct item {
    struct box_test *t;
    unsigned poster;
    unsigned seq;
};

static void on_item(void *arg)
{
    struct item *it = arg;
    struct box_test *t = it->t;
    if (!pthread_equal(pthread_self(), t->loop_thread))
        t->wrong_thread++;
    if (it->seq != t->next[it->poster])
        t->out_of_order++;
    t->next[it->poster] = it->seq + 1;
    if (++t->received == POSTERS * PER_POSTER)
        nx_mailbox_close(&t->mb, NULL);
    free(it);
}

struct poster_arg {
    struct box_test *t;
    unsigned id;
};

static void *poster(void *arg)
{
    struct poster_arg *p = arg;
    for (unsigned i = 0; i < PER_POSTER; i++) {
        struct item *it = nx_malloc(sizeof *it);
        it->t = p->t;
        it->poster = p->id;
        it->seq = i;
        nx_mailbox_post(&p->t->mb, on_item, it);
    }
    return NULL;
}

static void test_mailbox_delivers_every_post_in_order_on_the_loop_thread(void **state)
{
    (void)state;
    uv_loop_t loop;
    struct box_test t;
    memset(&t, 0, sizeof t);
    uv_loop_init(&loop);
    assert_int_equal(nx_mailbox_init(&t.mb, &loop), 0);
    t.loop_thread = pthread_self();

    pthread_t th[POSTERS];
    struct poster_arg args[POSTERS];
    for (unsigned i = 0; i < POSTERS; i++) {
        args[i].t = &t;
        args[i].id = i;
        pthread_create(&th[i], NULL, poster, &args[i]);
    }
    uv_run(&loop, UV_RUN_DEFAULT); /* returns once the mailbox closed after the last item */
    for (unsigned i = 0; i < POSTERS; i++)
        pthread_join(th[i], NULL);

    assert_int_equal(t.received, POSTERS * PER_POSTER);
    assert_int_equal(t.out_of_order, 0);
    assert_int_equal(t.wrong_thread, 0);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void count(void *arg)
{
    (*(int *)arg)++;
}

static void test_timer_once_fires_once_and_cancel_prevents_it(void **state)
{
    (void)state;
    uv_loop_t loop;
    int fired = 0, cancelled = 0;
    uv_loop_init(&loop);
    nx_timer_once(&loop, 5, count, &fired);
    struct nx_timer *t = nx_timer_once(&loop, 1, count, &cancelled);
    nx_timer_cancel(t);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(fired, 1);
    assert_int_equal(cancelled, 0);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_notify_sends_ready_to_notify_socket(void **state)
{
    (void)state;
    char dir[] = "/tmp/nexo-notify-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[128];
    snprintf(path, sizeof path, "%s/sock", dir);
    int fd = socket(AF_UNIX, SOCK_DGRAM, 0);
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, path, strlen(path) + 1);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);

    setenv("NOTIFY_SOCKET", path, 1);
    nx_notify("READY=1");
    unsetenv("NOTIFY_SOCKET");
    nx_notify("READY=1"); /* no socket: nothing happens */

    char buf[64] = {0};
    ssize_t n = recv(fd, buf, sizeof buf - 1, 0);
    assert_int_equal(n, 7);
    assert_string_equal(buf, "READY=1");
    close(fd);
    unlink(path);
    rmdir(dir);
}

static void on_stop_called(struct nx_runtime *rt, int signum)
{
    *(int *)rt->udata = signum;
}

static void test_runtime_stop_runs_on_stop_once_and_closes_cleanly(void **state)
{
    (void)state;
    struct nx_runtime rt;
    int got = 0;
    assert_int_equal(nx_runtime_init(&rt), 0);
    rt.udata = &got;
    rt.on_stop = on_stop_called;
    nx_runtime_watch_signals(&rt);
    nx_runtime_stop(&rt, 15);
    nx_runtime_stop(&rt, 2); /* second call is ignored */
    assert_int_equal(got, 15);
    assert_true(rt.is_stopping);
    assert_int_equal(nx_runtime_close(&rt), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mailbox_delivers_every_post_in_order_on_the_loop_thread),
        cmocka_unit_test(test_timer_once_fires_once_and_cancel_prevents_it),
        cmocka_unit_test(test_notify_sends_ready_to_notify_socket),
        cmocka_unit_test(test_runtime_stop_runs_on_stop_once_and_closes_cleanly),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
