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

#include "bus_fixture.h"

/* ---- envelope ---- */

static void test_envelope_roundtrip(void **state)
{
    struct nx_envelope *e = NULL, *p = NULL;
    json_t *payload = json_pack("{s:s,s:i}", "text", "hi", "n", 7);
    char err[256];
    size_t len;
    char *s;

    (void)state;
    assert_int_equal(nx_envelope_new("plugin.inbound.telegram", "telegram", NULL, payload, &e), 0);
    assert_true(nx_uuid_is_valid(e->id));
    assert_int_equal(e->id[14], '4');
    assert_true(nx_rfc3339_is_valid(e->timestamp));
    s = nx_envelope_dump(e, &len);
    assert_non_null(strstr(s, "\"session_id\":null"));
    assert_int_equal(nx_envelope_parse(s, len, 0, &p, err, sizeof err), 0);
    assert_string_equal(p->id, e->id);
    assert_string_equal(p->topic, "plugin.inbound.telegram");
    assert_null(p->session_id);
    assert_true(json_equal(p->payload, payload));
    free(s);
    nx_envelope_free(e);
    nx_envelope_free(p);
    json_decref(payload);
}

static void test_envelope_rejects_bad_input(void **state)
{
    static const struct {
        const char *json;
        const char *why;
    } bad[] = {
        {"[]", "must be a JSON object"},
        {"{\"id\":\"x\"", "invalid JSON"},
        {"{\"id\":\"not-a-uuid\",\"timestamp\":\"2026-01-01T00:00:00Z\",\"topic\":\"a\",\"source\":\"s\","
         "\"payload\":1}", "\"id\" is not a UUID"},
        {"{\"id\":\"6f1c2a3e-0b7d-4c1a-9e2f-3a4b5c6d7e8f\",\"timestamp\":\"yesterday\",\"topic\":\"a\","
         "\"source\":\"s\",\"payload\":1}", "\"timestamp\""},
        {"{\"id\":\"6f1c2a3e-0b7d-4c1a-9e2f-3a4b5c6d7e8f\",\"timestamp\":\"2026-02-30T00:00:00Z\","
         "\"topic\":\"a\",\"source\":\"s\",\"payload\":1}", "\"timestamp\""},
        {"{\"id\":\"6f1c2a3e-0b7d-4c1a-9e2f-3a4b5c6d7e8f\",\"timestamp\":\"2026-01-01T00:00:00Z\","
         "\"topic\":\"a.*\",\"source\":\"s\",\"payload\":1}", "\"topic\""},
        {"{\"id\":\"6f1c2a3e-0b7d-4c1a-9e2f-3a4b5c6d7e8f\",\"timestamp\":\"2026-01-01T00:00:00Z\","
         "\"topic\":\"a\",\"source\":3,\"payload\":1}", "\"source\" must be a string"},
        {"{\"id\":\"6f1c2a3e-0b7d-4c1a-9e2f-3a4b5c6d7e8f\",\"timestamp\":\"2026-01-01T00:00:00Z\","
         "\"topic\":\"a\",\"source\":\"s\",\"session_id\":5,\"payload\":1}", "\"session_id\""},
        {"{\"id\":\"6f1c2a3e-0b7d-4c1a-9e2f-3a4b5c6d7e8f\",\"timestamp\":\"2026-01-01T00:00:00Z\","
         "\"topic\":\"a\",\"source\":\"s\"}", "\"payload\" is missing"},
        {"{\"id\":\"6f1c2a3e-0b7d-4c1a-9e2f-3a4b5c6d7e8f\",\"id\":\"6f1c2a3e-0b7d-4c1a-9e2f-3a4b5c6d7e8f\","
         "\"timestamp\":\"2026-01-01T00:00:00Z\",\"topic\":\"a\",\"source\":\"s\",\"payload\":1}",
         "duplicate"},
    };
    const char *ok = "{\"id\":\"6F1C2A3E-0B7D-4C1A-9E2F-3A4B5C6D7E8F\",\"timestamp\":\"2026-01-01T"
                     "10:00:00.5+02:00\",\"topic\":\"a.b\",\"source\":\"s\",\"session_id\":\"k\","
                     "\"payload\":{\"x\":[1,2]},\"extra\":true}";
    struct nx_envelope *e = NULL;
    char err[256];

    (void)state;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        assert_int_equal(nx_envelope_parse(bad[i].json, strlen(bad[i].json), 0, &e, err, sizeof err),
                         NX_EINVAL);
        assert_null(e);
        if (!strstr(err, bad[i].why))
            fail_msg("case %zu: \"%s\" does not mention %s", i, err, bad[i].why);
    }
    assert_int_equal(nx_envelope_parse(ok, strlen(ok), 10, &e, err, sizeof err), NX_ETOOBIG);
    assert_non_null(strstr(err, "max_payload"));
    assert_int_equal(nx_envelope_parse(ok, strlen(ok), 0, &e, err, sizeof err), 0);
    assert_string_equal(e->id, "6f1c2a3e-0b7d-4c1a-9e2f-3a4b5c6d7e8f");
    assert_string_equal(e->session_id, "k");
    nx_envelope_free(e);
}

static void test_subject_matching(void **state)
{
    static const struct {
        const char *pattern, *subject;
        bool match;
    } t[] = {
        {"a.b.c", "a.b.c", true},      {"a.b.c", "a.b", false},       {"a.b", "a.b.c", false},
        {"a.*.c", "a.x.c", true},      {"a.*.c", "a.x.y.c", false},   {"a.*", "a.b", true},
        {"a.*", "a", false},           {"a.>", "a.b", true},          {"a.>", "a.b.c.d", true},
        {"a.>", "a", false},           {">", "a.b", true},            {"*", "a", true},
        {"*", "a.b", false},           {"*.*", "a.b", true},          {"ab.c", "a.c", false},
        {"a.bc", "a.b", false},        {"plugin.inbound.>", "plugin.inbound.telegram.main", true},
        {"agent.route.*", "agent.route.kate", true},
    };

    (void)state;
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        if (nx_subject_matches(t[i].pattern, t[i].subject) != t[i].match)
            fail_msg("%s vs %s", t[i].pattern, t[i].subject);
    assert_true(nx_subject_is_valid("a.*.>", true));
    assert_false(nx_subject_is_valid("a.*", false));
    assert_false(nx_subject_is_valid("a.>.b", true));
    assert_false(nx_subject_is_valid("a..b", true));
    assert_false(nx_subject_is_valid("a.b*", true));
    assert_false(nx_subject_is_valid("a b", true));
    assert_false(nx_subject_is_valid("", true));
    assert_false(nx_subject_is_valid(".a", true));
}

/* ---- in-process bus ---- */

struct rec {
    int n;
    int fail_left;
    char last[128];
    int order[4096];
    struct nx_bus_sub *unsub_self;
};

static int on_rec(struct nx_bus *bus, struct nx_bus_msg *m, void *arg)
{
    struct rec *r = arg;
    json_t *n = json_object_get(m->env->payload, "n");

    (void)bus;
    if (r->fail_left > 0) {
        r->fail_left--;
        return nx_bus_fail(m, "not yet");
    }
    if (r->n < 4096)
        r->order[r->n] = n ? (int)json_integer_value(n) : -1;
    r->n++;
    snprintf(r->last, sizeof r->last, "%s", m->subject);
    if (r->unsub_self) {
        nx_bus_unsubscribe(bus, r->unsub_self);
        r->unsub_self = NULL;
    }
    return 0;
}

static int publish_n(struct nx_bus *bus, const char *subject, int n)
{
    struct nx_envelope *e = NULL;
    json_t *p = json_pack("{s:i}", "n", n);
    int rc;

    rc = nx_envelope_new(subject, "test", "s1", p, &e);
    json_decref(p);
    if (rc == 0)
        rc = nx_bus_publish(bus, NULL, e);
    nx_envelope_free(e);
    return rc;
}

static void test_local_pubsub_wildcards(void **state)
{
    uv_loop_t loop;
    struct nx_bus *bus = NULL;
    struct rec all = {0}, star = {0}, exact = {0}, none = {0};

    (void)state;
    uv_loop_init(&loop);
    assert_int_equal(nx_bus_new(&loop, NULL, &bus), 0);
    assert_string_equal(nx_bus_mode(bus), "in-process");
    assert_true(nx_bus_is_ready(bus));
    assert_int_equal(nx_bus_subscribe(bus, "plugin.>", on_rec, &all, NULL), 0);
    assert_int_equal(nx_bus_subscribe(bus, "plugin.*.telegram", on_rec, &star, NULL), 0);
    assert_int_equal(nx_bus_subscribe(bus, "plugin.inbound.telegram", on_rec, &exact, NULL), 0);
    assert_int_equal(nx_bus_subscribe(bus, "agent.>", on_rec, &none, NULL), 0);
    assert_int_equal(nx_bus_subscribe(bus, "bad..pattern", on_rec, &none, NULL), NX_EINVAL);
    assert_int_equal(publish_n(bus, "plugin.inbound.telegram", 1), 0);
    assert_int_equal(publish_n(bus, "plugin.outbound.telegram.main", 2), 0);
    assert_int_equal(all.n, 0); /* never inside publish */
    assert_true(fx_run_until(&loop, ts_reached, &(struct ts_count){&all.n, 2}, 2000));
    fx_run_for(&loop, 20);
    assert_int_equal(all.n, 2);
    assert_int_equal(star.n, 1);
    assert_int_equal(exact.n, 1);
    assert_int_equal(none.n, 0);
    nx_bus_free(bus);
    fx_drain(&loop);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_local_queue_group_delivers_once(void **state)
{
    uv_loop_t loop;
    struct nx_bus *bus = NULL;
    struct rec a = {0}, b = {0}, plain = {0};

    (void)state;
    uv_loop_init(&loop);
    assert_int_equal(nx_bus_new(&loop, NULL, &bus), 0);
    assert_int_equal(nx_bus_queue_subscribe(bus, "work.*", "workers", on_rec, &a, NULL), 0);
    assert_int_equal(nx_bus_queue_subscribe(bus, "work.*", "workers", on_rec, &b, NULL), 0);
    assert_int_equal(nx_bus_subscribe(bus, "work.*", on_rec, &plain, NULL), 0);
    for (int i = 0; i < 100; i++)
        assert_int_equal(publish_n(bus, "work.x", i), 0);
    assert_true(fx_run_until(&loop, ts_reached, &(struct ts_count){&plain.n, 100}, 2000));
    fx_run_for(&loop, 20);
    assert_int_equal(a.n + b.n, 100);
    assert_true(a.n > 0 && b.n > 0);
    nx_bus_free(bus);
    fx_drain(&loop);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static int on_echo(struct nx_bus *bus, struct nx_bus_msg *m, void *arg)
{
    struct nx_envelope *e = NULL;
    json_t *p = json_pack("{s:O}", "echo", m->env->payload);
    int rc;

    (void)arg;
    nx_envelope_new("svc.reply", "echo", m->env->session_id, p, &e);
    json_decref(p);
    rc = nx_bus_reply(bus, m, e);
    nx_envelope_free(e);
    return rc;
}

struct reply_rec {
    int calls;
    int rc;
    char text[256];
};

static void on_reply(struct nx_bus *bus, int rc, const struct nx_bus_msg *m, void *arg)
{
    struct reply_rec *r = arg;

    (void)bus;
    r->calls++;
    r->rc = rc;
    if (m)
        snprintf(r->text, sizeof r->text, "%s", m->data);
}

static void test_local_request_reply_and_timeout(void **state)
{
    uv_loop_t loop;
    struct nx_bus *bus = NULL;
    struct reply_rec ok = {0}, late = {0};
    struct nx_envelope *e = NULL;
    json_t *p = json_pack("{s:s}", "q", "ping");

    (void)state;
    uv_loop_init(&loop);
    assert_int_equal(nx_bus_new(&loop, NULL, &bus), 0);
    assert_int_equal(nx_bus_subscribe(bus, "svc.echo", on_echo, NULL, NULL), 0);
    nx_envelope_new("svc.echo", "test", NULL, p, &e);
    assert_int_equal(nx_bus_request(bus, NULL, e, 2000, on_reply, &ok), 0);
    assert_int_equal(nx_bus_request(bus, "svc.nobody", e, 50, on_reply, &late), 0);
    assert_true(fx_run_until(&loop, ts_reached, &(struct ts_count){&late.calls, 1}, 3000));
    assert_int_equal(ok.calls, 1);
    assert_int_equal(ok.rc, 0);
    assert_non_null(strstr(ok.text, "\"echo\":{\"q\":\"ping\"}"));
    assert_int_equal(late.rc, NX_ETIMEDOUT);
    nx_envelope_free(e);
    json_decref(p);
    nx_bus_free(bus);
    fx_drain(&loop);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* A subscriber that is much slower than the publisher loses nothing. */
static void test_local_slow_subscriber_is_never_dropped(void **state)
{
    uv_loop_t loop;
    struct nx_bus *bus = NULL;
    struct nx_bus_sub *sub = NULL;
    struct rec r = {0};
    struct nx_bus_opts o = {.backlog_warn = 1000};
    int n = 20000;

    (void)state;
    uv_loop_init(&loop);
    assert_int_equal(nx_bus_new(&loop, &o, &bus), 0);
    assert_int_equal(nx_bus_subscribe(bus, "flood", on_rec, &r, &sub), 0);
    for (int i = 0; i < n; i++)
        assert_int_equal(publish_n(bus, "flood", i), 0);
    assert_int_equal(nx_bus_sub_backlog(sub), (size_t)n);
    assert_true(fx_run_until(&loop, ts_reached, &(struct ts_count){&r.n, n}, 10000));
    for (int i = 0; i < 4096; i++)
        assert_int_equal(r.order[i], i);
    assert_int_equal(nx_bus_sub_backlog(sub), 0);
    nx_bus_free(bus);
    fx_drain(&loop);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* A failing event is retried ahead of later ones; a subscriber may unsubscribe itself. */
static void test_local_retry_keeps_order_and_unsubscribe_in_callback(void **state)
{
    uv_loop_t loop;
    struct nx_bus *bus = NULL;
    struct nx_bus_sub *sub = NULL;
    struct rec r = {.fail_left = 2}, once = {0};
    struct nx_bus_stats st;

    (void)state;
    uv_loop_init(&loop);
    assert_int_equal(nx_bus_new(&loop, &(struct nx_bus_opts){.retry_backoff_ms = 5}, &bus), 0);
    assert_int_equal(nx_bus_subscribe(bus, "t", on_rec, &r, NULL), 0);
    assert_int_equal(nx_bus_subscribe(bus, "t", on_rec, &once, &sub), 0);
    once.unsub_self = sub;
    for (int i = 0; i < 5; i++)
        assert_int_equal(publish_n(bus, "t", i), 0);
    assert_true(fx_run_until(&loop, ts_reached, &(struct ts_count){&r.n, 5}, 3000));
    for (int i = 0; i < 5; i++)
        assert_int_equal(r.order[i], i);
    assert_int_equal(once.n, 1);
    nx_bus_stats(bus, &st);
    assert_int_equal(st.failed, 2);
    assert_int_equal(st.dead_letters, 0);
    assert_int_equal(publish_n(bus, "a.*", 1), NX_EINVAL);
    nx_bus_free(bus);
    fx_drain(&loop);
    assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_envelope_roundtrip),
        cmocka_unit_test(test_envelope_rejects_bad_input),
        cmocka_unit_test(test_subject_matching),
        cmocka_unit_test(test_local_pubsub_wildcards),
        cmocka_unit_test(test_local_queue_group_delivers_once),
        cmocka_unit_test(test_local_request_reply_and_timeout),
        cmocka_unit_test(test_local_slow_subscriber_is_never_dropped),
        cmocka_unit_test(test_local_retry_keeps_order_and_unsubscribe_in_callback),
    };

    nx_log_set_level(NX_LOG_ERROR);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
