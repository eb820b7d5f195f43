/* The wire-fragment memo (src/llm/frag_cache.c): what is put is found again, entries of
 * messages nobody holds any more go a few at a time as new ones come, never all at once. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llm/internal.h"
#include "llm/llm.h"

static json_t *message(unsigned i)
{
    char text[32];
    snprintf(text, sizeof text, "message %u", i);
    return json_pack("{s:s, s:s}", "role", i % 2 ? "assistant" : "user", "content", text);
}

static void put_text(json_t *m, unsigned i)
{
    char wire[48];
    int len = snprintf(wire, sizeof wire, "{\"wire\":%u}", i);
    nx_llm_frag_put(NX_FRAG_OPENAI, m, wire, (size_t)len);
}

static void assert_found(const json_t *m, unsigned i)
{
    char want[48];
    size_t len = 0;
    int n = snprintf(want, sizeof want, "{\"wire\":%u}", i);
    const char *got = nx_llm_frag_get(NX_FRAG_OPENAI, m, &len);
    assert_non_null(got);
    assert_int_equal(len, (size_t)n);
    assert_memory_equal(got, want, len);
}

/* A sliding window of live messages, as a session's history cache keeps: 200,000 messages go
 * through, 100 live at a time. The table stays near the live count, never sweeping all of it. */
static void test_dead_entries_go_as_new_ones_come(void **state)
{
    (void)state;
    enum { TOTAL = 200000, LIVE = 100 };
    json_t *live[LIVE] = {0};
    size_t most = 0;

    for (unsigned i = 0; i < TOTAL; i++) {
        json_t *m = message(i);
        put_text(m, i);
        json_decref(live[i % LIVE]); /* the window lets the oldest go: only the table holds it */
        live[i % LIVE] = m;
        if (nx_llm_frag_entries() > most)
            most = nx_llm_frag_entries();
    }
    for (unsigned i = TOTAL - LIVE; i < TOTAL; i++)
        assert_found(live[i % LIVE], i);
    print_message("entries at most %zu for %d live messages\n", most, LIVE);
    /* A pass over the 1,024 slots takes 128 puts, so about 128 dead ones wait at most; without
     * the incremental sweep the table filled to 768 and then swept all of them at once. */
    assert_true(most <= LIVE + 1024 / 8 + 16);
    for (unsigned i = 0; i < LIVE; i++)
        json_decref(live[i]);
    assert_int_equal(nx_llm_frag_sweep(), 0);
    nx_llm_frag_clear();
}

/* Random puts and drops against a plain list of what is live: every live message is found
 * with its own text after entries around it were deleted (the backward shift keeps probing
 * chains whole). */
static void test_lookups_survive_deletions(void **state)
{
    (void)state;
    enum { SLOTS = 3000, ROUNDS = 300000 };
    json_t **live = calloc(SLOTS, sizeof *live);
    unsigned *id = calloc(SLOTS, sizeof *id);
    unsigned seed = 7, next = 0;

    assert_non_null(live);
    assert_non_null(id);
    for (unsigned r = 0; r < ROUNDS; r++) {
        seed = seed * 1103515245u + 12345u;
        unsigned k = (seed >> 8) % SLOTS;
        if (live[k] && (seed & 1)) {
            assert_found(live[k], id[k]);
            json_decref(live[k]);
            live[k] = NULL;
        } else if (!live[k]) {
            live[k] = message(next);
            id[k] = next++;
            put_text(live[k], id[k]);
        }
        if (r % 50000 == 0) {
            for (unsigned i = 0; i < SLOTS; i++)
                if (live[i])
                    assert_found(live[i], id[i]);
        }
    }
    size_t nlive = 0;
    for (unsigned i = 0; i < SLOTS; i++) {
        if (live[i]) {
            assert_found(live[i], id[i]);
            nlive++;
        }
    }
    assert_int_equal(nx_llm_frag_sweep(), nlive);
    for (unsigned i = 0; i < SLOTS; i++)
        json_decref(live[i]);
    nx_llm_frag_clear();
    free(live);
    free(id);
}

/* A burst (10,000 streams at once) grows the table; the sweep after it gives the slots back
 * down to what the messages still held need, and those are still found. */
static void test_sweep_after_a_burst_shrinks_the_table(void **state)
{
    (void)state;
    enum { BURST = 20000, KEPT = 3 };
    json_t **live = calloc(BURST, sizeof *live);

    assert_non_null(live);
    for (unsigned i = 0; i < BURST; i++) {
        live[i] = message(i);
        put_text(live[i], i);
    }
    assert_true(nx_llm_frag_slots() >= 32768);
    for (unsigned i = KEPT; i < BURST; i++)
        json_decref(live[i]);
    assert_int_equal(nx_llm_frag_sweep(), KEPT);
    assert_int_equal(nx_llm_frag_slots(), 1024);
    for (unsigned i = 0; i < KEPT; i++)
        assert_found(live[i], i);
    for (unsigned i = 0; i < KEPT; i++)
        json_decref(live[i]);
    assert_int_equal(nx_llm_frag_sweep(), 0);
    assert_int_equal(nx_llm_frag_slots(), 0);
    free(live);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dead_entries_go_as_new_ones_come),
        cmocka_unit_test(test_lookups_survive_deletions),
        cmocka_unit_test(test_sweep_after_a_burst_shrinks_the_table),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
