#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "core/breaker.h"

static void test_breaker_opens_after_threshold_probes_and_closes(void **state)
{
    (void)state;
    struct nx_breaker_conf conf = {.failure_threshold = 3, .initial_backoff_ms = 100,
                                   .max_backoff_ms = 250};
    struct nx_breaker b;
    nx_breaker_init(&b, &conf);
    assert_true(nx_breaker_allow(&b, 0));
    nx_breaker_failure(&b, 0);
    nx_breaker_failure(&b, 1);
    assert_int_equal(b.state, NX_BREAKER_CLOSED);
    nx_breaker_success(&b, 2); /* resets the count */
    nx_breaker_failure(&b, 3);
    nx_breaker_failure(&b, 4);
    nx_breaker_failure(&b, 5);
    assert_int_equal(b.state, NX_BREAKER_OPEN);
    assert_false(nx_breaker_allow(&b, 50));
    /* After the backoff exactly one probe goes through. */
    assert_true(nx_breaker_allow(&b, 105));
    assert_int_equal(b.state, NX_BREAKER_HALF_OPEN);
    assert_false(nx_breaker_allow(&b, 106));
    /* The probe fails: open again with the backoff doubled. */
    nx_breaker_failure(&b, 110);
    assert_int_equal(b.state, NX_BREAKER_OPEN);
    assert_false(nx_breaker_allow(&b, 300));
    assert_true(nx_breaker_allow(&b, 310));
    nx_breaker_failure(&b, 311); /* doubled again, capped at 250 */
    assert_int_equal(b.backoff_ms, 250);
    assert_false(nx_breaker_allow(&b, 560));
    assert_true(nx_breaker_allow(&b, 561));
    nx_breaker_success(&b, 562);
    assert_int_equal(b.state, NX_BREAKER_CLOSED);
    assert_int_equal(b.backoff_ms, 100);
    assert_true(nx_breaker_allow(&b, 563));
    assert_string_equal(nx_breaker_state_name(b.state), "closed");
}

/* A probe that ends with no verdict frees the half-open slot only while it still holds it: an
 * older probe's cancel must not let a second call through beside a newer probe. */
static void test_breaker_abandoned_probe_frees_only_its_own_slot(void **state)
{
    struct nx_breaker_conf c = {.failure_threshold = 1, .initial_backoff_ms = 100, .max_backoff_ms = 100};
    struct nx_breaker b;
    uint32_t p1, p2;

    (void)state;
    nx_breaker_init(&b, &c);
    nx_breaker_failure(&b, 0);                 /* open until 100 */
    assert_true(nx_breaker_allow(&b, 100));    /* probe P */
    p1 = b.probe;
    assert_false(nx_breaker_allow(&b, 100));
    nx_breaker_abandon(&b, p1);                /* P cancelled: the slot is free again */
    assert_true(nx_breaker_allow(&b, 101));    /* probe Q */
    p2 = b.probe;
    assert_int_not_equal(p1, p2);
    nx_breaker_abandon(&b, p1);                /* a stale abandon changes nothing */
    assert_false(nx_breaker_allow(&b, 102));
    nx_breaker_success(&b, 103);               /* Q's verdict closes it */
    assert_int_equal(b.state, NX_BREAKER_CLOSED);
    nx_breaker_abandon(&b, p2);                /* closed: nothing to free */
    assert_int_equal(b.state, NX_BREAKER_CLOSED);
}

static void test_breaker_defaults(void **state)
{
    (void)state;
    struct nx_breaker b;
    nx_breaker_init(&b, NULL);
    for (int i = 0; i < 4; i++)
        nx_breaker_failure(&b, 0);
    assert_int_equal(b.state, NX_BREAKER_CLOSED);
    nx_breaker_failure(&b, 0);
    assert_int_equal(b.state, NX_BREAKER_OPEN);
    assert_false(nx_breaker_allow(&b, 9999));
    assert_true(nx_breaker_allow(&b, 10000));
}

/* Half-open, only the probe's outcome counts: a call let through while closed is stale */
static void test_breaker_stale_outcomes(void **state)
{
    const struct nx_breaker_conf c = {1, 2, 100, 1000};
    struct nx_breaker b;

    (void)state;
    nx_breaker_init(&b, &c);
    assert_true(nx_breaker_allow(&b, 0)); /* X, while closed */
    assert_false(nx_breaker_is_stale(&b, false, 0));
    nx_breaker_failure(&b, 0);
    assert_true(nx_breaker_allow(&b, 200)); /* P1 */
    uint32_t p1 = b.probe;
    assert_true(nx_breaker_is_stale(&b, false, 0)); /* X's late outcome */
    assert_false(nx_breaker_is_stale(&b, true, p1));
    assert_false(nx_breaker_allow(&b, 260)); /* one probe at a time */
    nx_breaker_success(&b, 300);
    assert_true(nx_breaker_is_stale(&b, true, p1)); /* reported: the slot is free */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_breaker_opens_after_threshold_probes_and_closes),
        cmocka_unit_test(test_breaker_abandoned_probe_frees_only_its_own_slot),
        cmocka_unit_test(test_breaker_defaults),
        cmocka_unit_test(test_breaker_stale_outcomes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
