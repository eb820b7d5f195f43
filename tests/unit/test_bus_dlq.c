/* NX_TEST_LABELS: threaded */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bus/bus.h"
#include "core/error.h"
#include "core/log.h"
#include "store/store.h"

#include "bus_fixture.h"

/* Dead letters: a poison event reaches the DLQ after broker.dlq.max_attempts failures with its
 * last error; `retry` re-delivers it once the fault is fixed; the CLI lists and purges. */

struct fx {
    uv_loop_t loop;
    char data[64];
    struct nx_store *store;
    struct nx_bus *bus;
    struct nx_broker_conf conf;
};

static void on_ready(int rc, void *arg)
{
    *(int *)arg = rc == 0 ? 1 : -1;
}

static bool flag_set(void *arg)
{
    return *(int *)arg != 0;
}

static void open_all(struct fx *f)
{
    int ready = 0;
    struct nx_bus_opts o = {.conf = &f->conf, .store = f->store, .retry_backoff_ms = 5,
                            .poll_ms = 50};

    assert_int_equal(nx_store_open(&f->loop, f->data, NULL, on_ready, &ready, &f->store), 0);
    assert_true(fx_run_until(&f->loop, flag_set, &ready, 10000));
    assert_int_equal(ready, 1);
    o.store = f->store;
    assert_int_equal(nx_bus_new(&f->loop, &o, &f->bus), 0);
}

static void close_all(struct fx *f)
{
    nx_bus_free(f->bus);
    fx_drain(&f->loop);
    nx_store_close(f->store);
    fx_drain(&f->loop);
    f->bus = NULL;
    f->store = NULL;
}

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof *f);

    uv_loop_init(&f->loop);
    snprintf(f->data, sizeof f->data, "/tmp/nx-bus-dlq-XXXXXX");
    assert_non_null(mkdtemp(f->data));
    f->conf.type = NX_BROKER_LOCAL;
    f->conf.dlq.max_attempts = 3;
    open_all(f);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;

    if (f->bus)
        close_all(f);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    fx_rm_tree(f->data);
    free(f);
    return 0;
}

struct consumer {
    bool is_fixed;
    int attempts; /* deliveries of the poison event */
    int ok;       /* events handled */
    bool poison_ok;
};

static int on_event(struct nx_bus *bus, struct nx_bus_msg *m, void *arg)
{
    struct consumer *c = arg;

    (void)bus;
    if (json_is_true(json_object_get(m->env->payload, "poison"))) {
        c->attempts++;
        if (!c->is_fixed)
            return nx_bus_fail(m, "cannot parse order #%d", 17);
        c->poison_ok = true;
    }
    c->ok++;
    return 0;
}

static int publish(struct nx_bus *bus, bool poison, char *id_out)
{
    struct nx_envelope *e = NULL;
    json_t *p = json_pack("{s:b}", "poison", poison);
    int rc = nx_envelope_new("agent.route.kate", "test", NULL, p, &e);

    json_decref(p);
    if (id_out)
        snprintf(id_out, 37, "%s", e->id);
    if (rc == 0)
        rc = nx_bus_publish(bus, NULL, e);
    nx_envelope_free(e);
    return rc;
}

struct listing {
    bool is_done;
    int rc;
    size_t n;
    char id[37];
    char consumer[64];
    char error[128];
    char state[16];
    uint32_t attempts;
};

static void on_list(int rc, const struct nx_dead_letter *v, size_t n, void *arg)
{
    struct listing *l = arg;

    l->is_done = true;
    l->rc = rc;
    l->n = n;
    if (n) {
        snprintf(l->id, sizeof l->id, "%s", v[0].id);
        snprintf(l->consumer, sizeof l->consumer, "%s", v[0].consumer);
        snprintf(l->error, sizeof l->error, "%s", v[0].last_error);
        snprintf(l->state, sizeof l->state, "%s", v[0].state);
        l->attempts = v[0].attempts;
    }
}

static bool list_done(void *arg)
{
    return ((struct listing *)arg)->is_done;
}

static void list(struct fx *f, struct listing *l)
{
    memset(l, 0, sizeof *l);
    nx_dlq_list(f->store, 0, on_list, l);
    assert_true(fx_run_until(&f->loop, list_done, l, 5000));
    assert_int_equal(l->rc, 0);
}

struct count {
    bool is_done;
    int rc;
    size_t n;
};

static void on_count(int rc, size_t n, void *arg)
{
    struct count *c = arg;

    c->is_done = true;
    c->rc = rc;
    c->n = n;
}

static bool count_done(void *arg)
{
    return ((struct count *)arg)->is_done;
}

struct wantc {
    struct consumer *c;
    int ok;
    struct nx_bus *bus;
    uint64_t dead;
};

static bool has_ok(void *arg)
{
    struct wantc *w = arg;

    return w->c->ok >= w->ok;
}

static bool has_dead(void *arg)
{
    struct wantc *w = arg;
    struct nx_bus_stats st;

    nx_bus_stats(w->bus, &st);
    return st.dead_letters >= w->dead;
}

static void test_dlq_poison_then_retry_after_fix(void **state)
{
    struct fx *f = *state;
    struct consumer c = {0};
    struct listing l;
    struct count cnt = {0};
    char id[37];

    assert_int_equal(nx_bus_subscribe(f->bus, "agent.route.*", on_event, &c, NULL), 0);
    assert_int_equal(publish(f->bus, true, id), 0);
    assert_int_equal(publish(f->bus, false, NULL), 0);
    assert_true(fx_run_until(&f->loop, has_ok, &(struct wantc){.c = &c, .ok = 1}, 5000));
    assert_true(fx_run_until(&f->loop, has_dead, &(struct wantc){.bus = f->bus, .dead = 1}, 5000));
    assert_int_equal(c.attempts, 3); /* broker.dlq.max_attempts */
    fx_run_for(&f->loop, 50);
    list(f, &l);
    assert_int_equal(l.n, 1);
    assert_string_equal(l.id, id);
    assert_string_equal(l.consumer, "agent.route.*");
    assert_string_equal(l.error, "cannot parse order #17");
    assert_string_equal(l.state, "dead");
    assert_int_equal(l.attempts, 3);

    /* unknown id */
    nx_dlq_retry(f->store, "00000000-0000-4000-8000-000000000000", on_count, &cnt);
    assert_true(fx_run_until(&f->loop, count_done, &cnt, 5000));
    assert_int_equal(cnt.rc, NX_ENOENT);

    /* fixed: retry re-delivers it, and success removes the dead letter */
    c.is_fixed = true;
    memset(&cnt, 0, sizeof cnt);
    nx_dlq_retry(f->store, id, on_count, &cnt);
    assert_true(fx_run_until(&f->loop, count_done, &cnt, 5000));
    assert_int_equal(cnt.rc, 0);
    assert_int_equal(cnt.n, 1);
    assert_true(fx_run_until(&f->loop, has_ok, &(struct wantc){.c = &c, .ok = 2}, 5000));
    assert_true(c.poison_ok);
    fx_run_for(&f->loop, 100);
    list(f, &l);
    assert_int_equal(l.n, 0);
}

static void test_dlq_retry_all_fails_again_and_purge(void **state)
{
    struct fx *f = *state;
    struct consumer c = {0};
    struct listing l;
    struct count cnt = {0};

    assert_int_equal(nx_bus_queue_subscribe(f->bus, "agent.route.*", "agents", on_event, &c, NULL), 0);
    assert_int_equal(publish(f->bus, true, NULL), 0);
    assert_int_equal(publish(f->bus, true, NULL), 0);
    assert_true(fx_run_until(&f->loop, has_dead, &(struct wantc){.bus = f->bus, .dead = 2}, 5000));
    fx_run_for(&f->loop, 50);
    /* still broken: retry --all, and both come back dead */
    nx_dlq_retry(f->store, NULL, on_count, &cnt);
    assert_true(fx_run_until(&f->loop, count_done, &cnt, 5000));
    assert_int_equal(cnt.n, 2);
    assert_true(fx_run_until(&f->loop, has_dead, &(struct wantc){.bus = f->bus, .dead = 4}, 5000));
    fx_run_for(&f->loop, 50);
    list(f, &l);
    assert_int_equal(l.n, 2);
    assert_string_equal(l.consumer, "agent.route.*#agents");
    assert_string_equal(l.state, "dead");
    memset(&cnt, 0, sizeof cnt);
    nx_dlq_purge(f->store, on_count, &cnt);
    assert_true(fx_run_until(&f->loop, count_done, &cnt, 5000));
    assert_int_equal(cnt.n, 2);
    list(f, &l);
    assert_int_equal(l.n, 0);
}

/* `nexo dlq`: its own loop and store on the same data dir. */
static int run_cmd(const char *data, const char *out_path, int argc, char **argv)
{
    int saved = dup(1);
    FILE *o = fopen(out_path, "w");
    int rc;

    fflush(stdout);
    dup2(fileno(o), 1);
    rc = nx_cmd_dlq(argc, argv, data);
    fflush(stdout);
    dup2(saved, 1);
    close(saved);
    fclose(o);
    return rc;
}

static void test_dlq_cli(void **state)
{
    struct fx *f = *state;
    struct consumer c = {0};
    char out[128];
    char id[37];

    assert_int_equal(nx_bus_subscribe(f->bus, "agent.route.*", on_event, &c, NULL), 0);
    assert_int_equal(publish(f->bus, true, id), 0);
    assert_true(fx_run_until(&f->loop, has_dead, &(struct wantc){.bus = f->bus, .dead = 1}, 5000));
    fx_run_for(&f->loop, 50);
    close_all(f);
    snprintf(out, sizeof out, "%s/out.txt", f->data);
    assert_int_equal(run_cmd(f->data, out, 2, (char *[]){"dlq", "list", NULL}), 0);
    assert_true(fx_log_has(out, id));
    assert_true(fx_log_has(out, "cannot parse order #17"));
    assert_int_equal(run_cmd(f->data, out, 1, (char *[]){"dlq", NULL}), 2);
    assert_int_equal(run_cmd(f->data, out, 3, (char *[]){"dlq", "retry", "nope", NULL}), 2);
    assert_int_equal(run_cmd(f->data, out, 3,
                             (char *[]){"dlq", "retry", "00000000-0000-4000-8000-000000000000", NULL}),
                     1);
    assert_int_equal(run_cmd(f->data, out, 3, (char *[]){"dlq", "retry", id, NULL}), 0);
    assert_true(fx_log_has(out, "1 dead letters queued for redelivery"));
    /* a bus started later picks the retried event up */
    c.is_fixed = true;
    open_all(f);
    assert_int_equal(nx_bus_subscribe(f->bus, "agent.route.*", on_event, &c, NULL), 0);
    assert_true(fx_run_until(&f->loop, has_ok, &(struct wantc){.c = &c, .ok = 1}, 5000));
    assert_true(c.poison_ok);
    fx_run_for(&f->loop, 100);
    close_all(f);
    assert_int_equal(run_cmd(f->data, out, 2, (char *[]){"dlq", "list", NULL}), 0);
    assert_true(fx_log_has(out, "no dead letters"));
    assert_int_equal(run_cmd(f->data, out, 2, (char *[]){"dlq", "purge", NULL}), 0);
    assert_true(fx_log_has(out, "purged 0 dead letters"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_dlq_poison_then_retry_after_fix, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dlq_retry_all_fails_again_and_purge, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dlq_cli, setup, teardown),
    };

    nx_log_set_level(getenv("NX_TEST_LOG") ? NX_LOG_DEBUG : NX_LOG_OFF);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
