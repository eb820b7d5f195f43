/* NX_TEST_LABELS: threaded */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/error.h"
#include "store/ledger.h"
#include "store/store.h"
#include "store_fixture.h"

/* ---- fixture: a temp dir, a loop and a store that can be closed and reopened ---- */

struct fx {
    char tmp[64];
    char dir[128];
    uv_loop_t loop;
    struct nx_store *s;
    int calls;      /* completions seen */
    int rc;         /* the last one's */
    int64_t result; /* the last one's */
    struct nx_ledger_row rows[16];
    size_t nrows;
};

static void run_until(struct fx *f, int target)
{
    sfx_run_until(&f->loop, &f->calls, target);
}

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof *f);
    assert_int_equal(ts_mkdtemp(f->tmp, sizeof f->tmp, "nx-ledger-"), 0);
    snprintf(f->dir, sizeof f->dir, "%s/data", f->tmp);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    assert_int_equal(sfx_open(&f->loop, f->dir, NULL, &f->s), 0);
    *state = f;
    return 0;
}

static void rows_clear(struct fx *f)
{
    for (size_t i = 0; i < f->nrows; i++) {
        free(f->rows[i].key);
        free(f->rows[i].state);
        free(f->rows[i].envelope);
        free(f->rows[i].provider_id);
        free(f->rows[i].last_error);
    }
    f->nrows = 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    rows_clear(f);
    sfx_close(&f->loop, &f->s);
    sfx_finish(&f->loop, f->tmp);
    free(f);
    return 0;
}

/* ---- helpers: one call, wait for its completion ---- */

static void on_done(int rc, int64_t result, void *arg)
{
    struct fx *f = arg;
    f->rc = rc;
    f->result = result;
    f->calls++;
}

static void on_rows(int rc, const struct nx_ledger_row *v, size_t n, void *arg)
{
    struct fx *f = arg;
    rows_clear(f);
    f->rc = rc;
    for (size_t i = 0; i < n && i < 16; i++) {
        f->rows[i].key = strdup(v[i].key);
        f->rows[i].state = strdup(v[i].state);
        f->rows[i].envelope = strdup(v[i].envelope);
        f->rows[i].provider_id = v[i].provider_id ? strdup(v[i].provider_id) : NULL;
        f->rows[i].last_error = v[i].last_error ? strdup(v[i].last_error) : NULL;
        f->rows[i].attempts = v[i].attempts;
        f->rows[i].steps_sent = v[i].steps_sent;
    }
    f->nrows = n < 16 ? n : 16;
    f->calls++;
}

static int64_t wait1(struct fx *f)
{
    run_until(f, f->calls + 1);
    assert_int_equal(f->rc, 0);
    return f->result;
}

#define WAIT(f, call) ((call), wait1(f))

static void wait_rows(struct fx *f)
{
    run_until(f, f->calls + 1);
    assert_int_equal(f->rc, 0);
}

static int count_dead_job(sqlite3 *db, void *arg)
{
    struct fx *f = arg;
    sqlite3_stmt *st = NULL;
    int rc = NX_EDB;
    if (sqlite3_prepare_v2(db, "SELECT count(*) FROM dead_letters WHERE id = 'id-1' AND "
                               "consumer = 'plugin.inbound.>#agents' AND attempts = 3 AND "
                               "last_error = 'boom' AND state = 'dead'", -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW) {
        f->result = sqlite3_column_int64(st, 0);
        rc = 0;
    }
    sqlite3_finalize(st);
    return rc;
}

static void on_job_done(int rc, void *arg)
{
    struct fx *f = arg;
    f->rc = rc;
    f->calls++;
}

static struct nx_ledger_event event(const char *key, const char *id)
{
    struct nx_ledger_event ev = {
        .channel = "telegram", .instance = "default", .event_key = key, .id = id,
        .subject = "plugin.inbound.telegram", .envelope = "{\"id\":\"x\"}",
    };
    return ev;
}

static const char *in_state(struct fx *f, const char *id)
{
    nx_ledger_inbound_get(f->s, id, on_rows, f);
    wait_rows(f);
    return f->nrows ? f->rows[0].state : "";
}

static const char *out_state(struct fx *f, const char *key)
{
    nx_ledger_outbound_get(f->s, key, on_rows, f);
    wait_rows(f);
    return f->nrows ? f->rows[0].state : "";
}

/* ---- tests ---- */

static void test_ledger_inbound_dedupes_by_event_key(void **state)
{
    struct fx *f = *state;
    struct nx_ledger_event a = event("bot1:update:1", "id-1");
    assert_int_equal(WAIT(f, nx_ledger_inbound_record(f->s, &a, on_done, f)), 1);
    assert_int_equal(WAIT(f, nx_ledger_inbound_record(f->s, &a, on_done, f)), 0);
    /* same service key, another id (cannot happen with derived ids, but the key decides) */
    struct nx_ledger_event b = event("bot1:update:1", "id-2");
    assert_int_equal(WAIT(f, nx_ledger_inbound_record(f->s, &b, on_done, f)), 0);
    /* same key on another instance is another event */
    struct nx_ledger_event c = event("bot1:update:1", "id-3");
    c.instance = "other";
    assert_int_equal(WAIT(f, nx_ledger_inbound_record(f->s, &c, on_done, f)), 1);
    assert_string_equal(in_state(f, "id-1"), "received");
}

static void test_ledger_inbound_states_and_claim(void **state)
{
    struct fx *f = *state;
    struct nx_ledger_event a = event("k1", "id-1");
    WAIT(f, nx_ledger_inbound_record(f->s, &a, on_done, f));
    assert_int_equal(WAIT(f, nx_ledger_inbound_claim(f->s, &a, "kate", on_done, f)), 1);
    assert_string_equal(in_state(f, "id-1"), "routed");
    /* a redelivery is not taken twice */
    assert_int_equal(WAIT(f, nx_ledger_inbound_claim(f->s, &a, "kate", on_done, f)), 0);
    struct nx_ledger_reply r = {
        .key = "id-1:0", .channel = "telegram", .instance = "default",
        .subject = "plugin.outbound.telegram", .envelope = "{\"payload\":{}}",
    };
    assert_int_equal(WAIT(f, nx_ledger_inbound_answer(f->s, "id-1", &r, 1, false, on_done, f)), 1);
    assert_string_equal(in_state(f, "id-1"), "answered");
    assert_string_equal(out_state(f, "id-1:0"), "pending");
    assert_int_equal(WAIT(f, nx_ledger_inbound_claim(f->s, &a, "kate", on_done, f)), 0);
    /* an event nobody recorded (published by another component) is recorded as routed */
    struct nx_ledger_event u = event(NULL, "id-9");
    assert_int_equal(WAIT(f, nx_ledger_inbound_claim(f->s, &u, "kate", on_done, f)), 1);
    assert_string_equal(in_state(f, "id-9"), "routed");
    assert_int_equal(WAIT(f, nx_ledger_inbound_claim(f->s, &u, "kate", on_done, f)), 0);
}

static void test_ledger_inbound_fail_then_dead_letter(void **state)
{
    struct fx *f = *state;
    struct nx_ledger_event a = event("k1", "id-1");
    WAIT(f, nx_ledger_inbound_record(f->s, &a, on_done, f));
    for (int i = 1; i <= 3; i++) {
        assert_int_equal(WAIT(f, nx_ledger_inbound_claim(f->s, &a, "kate", on_done, f)), 1);
        assert_int_equal(WAIT(f, nx_ledger_inbound_fail(f->s, "id-1", "boom", 3, "plugin.inbound.>#agents",
                                                        on_done, f)), i);
        assert_string_equal(in_state(f, "id-1"), i < 3 ? "received" : "dead");
    }
    assert_int_equal(f->rows[0].attempts, 3);
    assert_string_equal(f->rows[0].last_error, "boom");
    /* in the dead-letter queue for the subscriber */
    assert_int_equal(WAIT(f, nx_ledger_count(f->s, "inbound", "dead", on_done, f)), 1);
    f->result = 0;
    nx_store_read(f->s, count_dead_job, on_job_done, f);
    assert_int_equal(wait1(f), 1);
    /* a retry from the dead-letter queue takes it again, with the attempts reset */
    assert_int_equal(WAIT(f, nx_ledger_inbound_claim(f->s, &a, "kate", on_done, f)), 1);
    assert_string_equal(in_state(f, "id-1"), "routed");
    assert_int_equal(f->rows[0].attempts, 0);
}

static void test_ledger_outbound_claim_sent_and_status(void **state)
{
    struct fx *f = *state;
    struct nx_ledger_reply r = {
        .key = "k:0", .channel = "whatsapp", .instance = "default",
        .subject = "plugin.outbound.whatsapp", .envelope = "{}",
    };
    assert_int_equal(WAIT(f, nx_ledger_outbound_claim(f->s, &r, 7, on_done, f)), 1);
    /* the same process does not take it twice (a redelivered bus event) */
    assert_int_equal(WAIT(f, nx_ledger_outbound_claim(f->s, &r, 7, on_done, f)), 0);
    /* given back, it can be taken again */
    WAIT(f, nx_ledger_outbound_unclaim(f->s, "k:0", on_done, f));
    assert_int_equal(WAIT(f, nx_ledger_outbound_claim(f->s, &r, 7, on_done, f)), 1);
    assert_int_equal(WAIT(f, nx_ledger_outbound_sent(f->s, "k:0", "wamid.1", 0, NULL, on_done, f)), 1);
    assert_string_equal(out_state(f, "k:0"), "sent");
    assert_string_equal(f->rows[0].provider_id, "wamid.1");
    assert_int_equal(f->rows[0].attempts, 2);
    /* sent: no process sends it again */
    assert_int_equal(WAIT(f, nx_ledger_outbound_claim(f->s, &r, 8, on_done, f)), 0);
    assert_int_equal(WAIT(f, nx_ledger_outbound_status(f->s, "whatsapp", "default", "wamid.1", "read",
                                                       NULL, on_done, f)), 1);
    /* never backwards */
    assert_int_equal(WAIT(f, nx_ledger_outbound_status(f->s, "whatsapp", "default", "wamid.1",
                                                       "delivered", NULL, on_done, f)), 0);
    assert_string_equal(out_state(f, "k:0"), "read");
    assert_int_equal(WAIT(f, nx_ledger_outbound_sent(f->s, "k:0", NULL, 0, NULL, on_done, f)), 0);
    /* a failure keeps its reason */
    struct nx_ledger_reply r2 = r;
    r2.key = "k:1";
    assert_int_equal(WAIT(f, nx_ledger_outbound_claim(f->s, &r2, 7, on_done, f)), 1);
    WAIT(f, nx_ledger_outbound_sent(f->s, "k:1", NULL, NX_EIO, "chat not found", on_done, f));
    assert_string_equal(out_state(f, "k:1"), "failed");
    assert_string_equal(f->rows[0].last_error, "chat not found");
}

/* Resume after a restart of the store: routed events come back as unanswered, pending replies
 * not claimed by the new process are taken, in order. */
static void test_ledger_resume_after_restart(void **state)
{
    struct fx *f = *state;
    char id[32], key[32];
    for (int i = 0; i < 5; i++) {
        snprintf(id, sizeof id, "id-%d", i);
        snprintf(key, sizeof key, "u:%d", i);
        struct nx_ledger_event ev = event(key, id);
        nx_ledger_inbound_record(f->s, &ev, on_done, f);
    }
    run_until(f, f->calls + 5);
    struct nx_ledger_event e1 = event("u:1", "id-1"), e2 = event("u:2", "id-2");
    WAIT(f, nx_ledger_inbound_claim(f->s, &e1, "kate", on_done, f)); /* mid-turn at the crash */
    WAIT(f, nx_ledger_inbound_claim(f->s, &e2, "kate", on_done, f));
    struct nx_ledger_reply r = {
        .key = "id-2:0", .channel = "telegram", .instance = "default",
        .subject = "plugin.outbound.telegram", .envelope = "{\"n\":2}",
    };
    WAIT(f, nx_ledger_inbound_answer(f->s, "id-2", &r, 1, false, on_done, f));
    struct nx_ledger_reply r3 = r;
    r3.key = "id-3:0";
    r3.envelope = "{\"n\":3}";
    WAIT(f, nx_ledger_outbound_claim(f->s, &r3, 1, on_done, f)); /* handed to the adapter */
    struct nx_ledger_reply r4 = r;
    r4.key = "id-4:0";
    WAIT(f, nx_ledger_outbound_claim(f->s, &r4, 1, on_done, f));
    WAIT(f, nx_ledger_outbound_sent(f->s, "id-4:0", "99", 0, NULL, on_done, f)); /* confirmed */

    sfx_close(&f->loop, &f->s);
    assert_int_equal(sfx_open(&f->loop, f->dir, NULL, &f->s), 0);

    nx_ledger_inbound_unanswered(f->s, 0, on_rows, f);
    wait_rows(f);
    /* 0, 1 (routed: back to received); not 2 (answered), nor 3 and 4: a channel took replies keyed
     * "id-3:0" and "id-4:0", which answer them (routed by another process) */
    assert_int_equal(f->nrows, 2);
    assert_string_equal(f->rows[0].key, "id-0");
    assert_string_equal(f->rows[1].key, "id-1");
    assert_string_equal(f->rows[1].state, "received");
    assert_string_equal(in_state(f, "id-3"), "answered");
    nx_ledger_outbound_take(f->s, "telegram", "default", 2, 0, on_rows, f);
    wait_rows(f);
    assert_int_equal(f->nrows, 2); /* id-2:0 (never handed over) and id-3:0 (never confirmed) */
    assert_string_equal(f->rows[0].key, "id-2:0");
    assert_string_equal(f->rows[0].envelope, "{\"n\":2}");
    assert_string_equal(f->rows[1].key, "id-3:0");
    assert_int_equal(f->rows[1].attempts, 2);
    /* taken: a second look by the same process finds nothing; the bus copy is skipped */
    nx_ledger_outbound_take(f->s, "telegram", "default", 2, 0, on_rows, f);
    wait_rows(f);
    assert_int_equal(f->nrows, 0);
    assert_int_equal(WAIT(f, nx_ledger_outbound_claim(f->s, &r, 2, on_done, f)), 0);
    /* other channels' replies are not taken */
    nx_ledger_outbound_take(f->s, "telegram", "other", 3, 0, on_rows, f);
    wait_rows(f);
    assert_int_equal(f->nrows, 0);
}

/* A reply sent in chunks: the chunks delivered are recorded, so after a restart the take and a
 * claim both say where to resume; the reply is known by its first chunk's id once sent. */
static void test_ledger_outbound_progress_resumes_at_the_first_step_not_delivered(void **state)
{
    struct fx *f = *state;
    struct nx_ledger_reply r = {
        .key = "id-9:0", .channel = "telegram", .instance = "default",
        .subject = "plugin.outbound.telegram", .envelope = "{}",
    };
    struct nx_ledger_reply r2 = r;
    r2.key = "id-10:0";
    assert_int_equal(WAIT(f, nx_ledger_outbound_claim(f->s, &r, 1, on_done, f)), 1);
    assert_int_equal(WAIT(f, nx_ledger_outbound_claim(f->s, &r2, 1, on_done, f)), 1);
    assert_int_equal(WAIT(f, nx_ledger_outbound_progress(f->s, "id-9:0", 1, "501", on_done, f)), 1);
    assert_int_equal(WAIT(f, nx_ledger_outbound_progress(f->s, "id-9:0", 2, "502", on_done, f)), 1);
    assert_int_equal(WAIT(f, nx_ledger_outbound_progress(f->s, "id-9:0", 1, NULL, on_done, f)), 0);
    assert_int_equal(WAIT(f, nx_ledger_outbound_progress(f->s, "id-10:0", 1, "601", on_done, f)), 1);

    sfx_close(&f->loop, &f->s); /* the crash */
    assert_int_equal(sfx_open(&f->loop, f->dir, NULL, &f->s), 0);

    nx_ledger_outbound_take(f->s, "telegram", "default", 2, 1, on_rows, f);
    wait_rows(f);
    assert_int_equal(f->nrows, 1);
    assert_string_equal(f->rows[0].key, "id-9:0");
    assert_int_equal(f->rows[0].steps_sent, 2);
    assert_string_equal(f->rows[0].state, "pending");
    /* the other one comes back over the bus: its claim says one step went already */
    assert_int_equal(WAIT(f, nx_ledger_outbound_claim(f->s, &r2, 2, on_done, f)), 2);
    /* the resumed send ends: the reply is known by its first chunk's id */
    assert_int_equal(WAIT(f, nx_ledger_outbound_sent(f->s, "id-9:0", "503", 0, NULL, on_done, f)), 1);
    assert_string_equal(out_state(f, "id-9:0"), "sent");
    assert_string_equal(f->rows[0].provider_id, "501");
    assert_int_equal(f->rows[0].steps_sent, 2);
    /* no progress once sent */
    assert_int_equal(WAIT(f, nx_ledger_outbound_progress(f->s, "id-9:0", 3, NULL, on_done, f)), 0);
    /* a one-step reply is unaffected */
    struct nx_ledger_reply r3 = r;
    r3.key = "id-11:0";
    assert_int_equal(WAIT(f, nx_ledger_outbound_claim(f->s, &r3, 2, on_done, f)), 1);
    WAIT(f, nx_ledger_outbound_sent(f->s, "id-11:0", "701", 0, NULL, on_done, f));
    assert_string_equal(out_state(f, "id-11:0"), "sent");
    assert_string_equal(f->rows[0].provider_id, "701");
}

/* Many records queued at once share transactions (group commit) and all complete, in order. */
static void test_ledger_many_records_group_commit(void **state)
{
    struct fx *f = *state;
    char id[32], key[32];
    uint64_t t0 = nx_mono_ns();
    for (int i = 0; i < 500; i++) {
        snprintf(id, sizeof id, "id-%d", i);
        snprintf(key, sizeof key, "u:%d", i % 250); /* every key twice */
        struct nx_ledger_event ev = event(key, id);
        nx_ledger_inbound_record(f->s, &ev, on_done, f);
    }
    run_until(f, 500);
    uint64_t ns = nx_mono_ns() - t0;
    assert_int_equal(WAIT(f, nx_ledger_count(f->s, "inbound", "received", on_done, f)), 250);
    struct nx_store_stats st;
    nx_store_stats(f->s, &st);
    assert_true(st.commits < 500);
    print_message("ledger: 500 records (250 duplicates) in %.1f ms, %llu commits\n", (double)ns / 1e6,
                  (unsigned long long)st.commits);
}

/* A turn interrupted by a newer message (queue_mode interrupt) or merged into another
 * (collect) is settled: not run again at the next start. */
static void test_ledger_settled_events_are_not_resumed(void **state)
{
    struct fx *f = *state;
    struct nx_ledger_event a = event("k1", "id-1"), b = event("k2", "id-2"), c = event("k3", "id-3");
    WAIT(f, nx_ledger_inbound_record(f->s, &a, on_done, f));
    WAIT(f, nx_ledger_inbound_record(f->s, &b, on_done, f));
    WAIT(f, nx_ledger_inbound_record(f->s, &c, on_done, f));
    for (int i = 0; i < 3; i++) {
        struct nx_ledger_event *e = i == 0 ? &a : i == 1 ? &b : &c;
        assert_int_equal(WAIT(f, nx_ledger_inbound_claim(f->s, e, "kate", on_done, f)), 1);
    }
    assert_int_equal(WAIT(f, nx_ledger_inbound_settle(f->s, "id-1", "cancelled", "interrupted", on_done, f)),
                     1);
    assert_int_equal(WAIT(f, nx_ledger_inbound_settle(f->s, "id-2", "answered", "merged", on_done, f)), 1);
    assert_string_equal(in_state(f, "id-1"), "cancelled");
    assert_string_equal(f->rows[0].last_error, "interrupted");
    assert_string_equal(in_state(f, "id-2"), "answered");
    /* a settled event is final: settling again, or a redelivery, changes nothing */
    assert_int_equal(WAIT(f, nx_ledger_inbound_settle(f->s, "id-2", "cancelled", "x", on_done, f)), 0);
    assert_int_equal(WAIT(f, nx_ledger_inbound_claim(f->s, &a, "kate", on_done, f)), 0);
    /* only id-3 (stopped mid-turn) comes back */
    nx_ledger_inbound_unanswered(f->s, 0, on_rows, f);
    wait_rows(f);
    assert_int_equal(f->nrows, 1);
    assert_string_equal(f->rows[0].key, "id-3");
}

/* A delivery status that overtakes the send's answer is kept and merged when the send is
 * recorded; a later status still moves it forward only. */
static void test_ledger_early_status_is_merged_into_the_send(void **state)
{
    struct fx *f = *state;
    struct nx_ledger_reply r = {
        .key = "k:0", .channel = "whatsapp", .instance = "default",
        .subject = "plugin.outbound.whatsapp", .envelope = "{}",
    };
    assert_int_equal(WAIT(f, nx_ledger_outbound_claim(f->s, &r, 7, on_done, f)), 1);
    assert_int_equal(WAIT(f, nx_ledger_outbound_status(f->s, "whatsapp", "default", "wamid.E", "delivered",
                                                       NULL, on_done, f)), 1);
    assert_string_equal(out_state(f, "early:whatsapp:default:wamid.E"), "delivered");
    /* a "sent" status is never kept early (nx_channel_sent records that) */
    assert_int_equal(WAIT(f, nx_ledger_outbound_status(f->s, "whatsapp", "default", "wamid.F", "sent",
                                                       NULL, on_done, f)), 0);
    assert_string_equal(out_state(f, "early:whatsapp:default:wamid.F"), "");
    /* read overtakes delivered in the early row too; delivered does not go back */
    WAIT(f, nx_ledger_outbound_status(f->s, "whatsapp", "default", "wamid.E", "read", NULL, on_done, f));
    assert_int_equal(WAIT(f, nx_ledger_outbound_status(f->s, "whatsapp", "default", "wamid.E", "delivered",
                                                       NULL, on_done, f)), 0);
    assert_string_equal(out_state(f, "early:whatsapp:default:wamid.E"), "read");
    /* the early row is never offered for sending */
    nx_ledger_outbound_take(f->s, "whatsapp", "default", 9, 0, on_rows, f);
    wait_rows(f);
    for (size_t i = 0; i < f->nrows; i++)
        assert_string_not_equal(f->rows[i].key, "early:whatsapp:default:wamid.E");
    /* the send is recorded: the reply is read, the early row is gone */
    assert_int_equal(WAIT(f, nx_ledger_outbound_sent(f->s, "k:0", "wamid.E", 0, NULL, on_done, f)), 1);
    assert_string_equal(out_state(f, "k:0"), "read");
    assert_string_equal(f->rows[0].provider_id, "wamid.E");
    assert_string_equal(out_state(f, "early:whatsapp:default:wamid.E"), "");
    /* an early failure keeps its reason */
    struct nx_ledger_reply r2 = r;
    r2.key = "k:1";
    assert_int_equal(WAIT(f, nx_ledger_outbound_claim(f->s, &r2, 7, on_done, f)), 1);
    WAIT(f, nx_ledger_outbound_status(f->s, "whatsapp", "default", "wamid.G", "failed",
                                      "131026: undeliverable", on_done, f));
    WAIT(f, nx_ledger_outbound_sent(f->s, "k:1", "wamid.G", 0, NULL, on_done, f));
    assert_string_equal(out_state(f, "k:1"), "failed");
    assert_string_equal(f->rows[0].last_error, "131026: undeliverable");
}

static int age_rows_job(sqlite3 *db, void *arg)
{
    (void)arg; /* everything but id-new / k:new is a year old */
    return sqlite3_exec(db, "UPDATE ledger_inbound SET updated_at = updated_at - 31536000000 "
                            "WHERE id != 'id-new';"
                            "UPDATE ledger_outbound SET updated_at = updated_at - 31536000000 "
                            "WHERE key != 'k:new';",
                        NULL, NULL, NULL) == SQLITE_OK ? 0 : NX_EDB;
}

/* Retention: finished rows older than the cut-off go, in batches (and received ones never taken,
 * and replies sent but never reported delivered); routed, pending and recent rows stay. */
static void test_ledger_prune_deletes_old_finished_rows_in_batches(void **state)
{
    struct fx *f = *state;
    char key[32], id[32];
    for (int i = 0; i < 12; i++) { /* 10 answered, 1 routed, 1 received */
        snprintf(key, sizeof key, "k%d", i);
        snprintf(id, sizeof id, "id-%d", i);
        struct nx_ledger_event e = event(key, id);
        WAIT(f, nx_ledger_inbound_record(f->s, &e, on_done, f));
        if (i < 11)
            WAIT(f, nx_ledger_inbound_claim(f->s, &e, "kate", on_done, f));
        if (i < 10)
            WAIT(f, nx_ledger_inbound_answer(f->s, id, NULL, 0, i == 9, on_done, f));
    }
    struct nx_ledger_event fresh = event("knew", "id-new");
    WAIT(f, nx_ledger_inbound_record(f->s, &fresh, on_done, f));
    WAIT(f, nx_ledger_inbound_claim(f->s, &fresh, "kate", on_done, f));
    WAIT(f, nx_ledger_inbound_answer(f->s, "id-new", NULL, 0, false, on_done, f));
    const char *okeys[] = {"k:pending", "k:sent", "k:read", "k:failed", "k:new"};
    for (size_t i = 0; i < 5; i++) {
        struct nx_ledger_reply r = {.key = okeys[i], .channel = "whatsapp", .instance = "default",
                                    .subject = "plugin.outbound.whatsapp", .envelope = "{}"};
        WAIT(f, nx_ledger_outbound_claim(f->s, &r, 7, on_done, f));
        if (i == 0)
            continue;
        snprintf(id, sizeof id, "wamid.%zu", i);
        WAIT(f, nx_ledger_outbound_sent(f->s, okeys[i], id, i == 3 ? NX_EIO : 0, "x", on_done, f));
        if (i == 2 || i == 4)
            WAIT(f, nx_ledger_outbound_status(f->s, "whatsapp", "default", id, "read", NULL, on_done, f));
    }
    nx_store_write(f->s, age_rows_job, on_job_done, f);
    run_until(f, f->calls + 1);
    assert_int_equal(f->rc, 0);
    int64_t cut = (int64_t)nx_wall_ms() - 7LL * 86400000;
    assert_int_equal(WAIT(f, nx_ledger_prune(f->s, cut, 4, on_done, f)), 4);
    assert_int_equal(WAIT(f, nx_ledger_prune(f->s, cut, 4, on_done, f)), 4);
    assert_int_equal(WAIT(f, nx_ledger_prune(f->s, cut, 4, on_done, f)), 4); /* 3 inbound + 1 outbound */
    assert_int_equal(WAIT(f, nx_ledger_prune(f->s, cut, 4, on_done, f)), 2);
    assert_int_equal(WAIT(f, nx_ledger_prune(f->s, cut, 4, on_done, f)), 0);
    assert_int_equal(WAIT(f, nx_ledger_count(f->s, "inbound", "answered", on_done, f)), 1); /* id-new */
    assert_int_equal(WAIT(f, nx_ledger_count(f->s, "inbound", "failed", on_done, f)), 0);
    assert_string_equal(in_state(f, "id-10"), "routed");
    assert_string_equal(in_state(f, "id-11"), ""); /* never taken and stale */
    assert_string_equal(out_state(f, "k:pending"), "pending");
    assert_string_equal(out_state(f, "k:sent"), ""); /* a service that never reports delivery */
    assert_string_equal(out_state(f, "k:read"), "");
    assert_string_equal(out_state(f, "k:failed"), "");
    assert_string_equal(out_state(f, "k:new"), "read");
}

static int age_received_job(sqlite3 *db, void *arg)
{
    (void)arg; /* everything but id-new was received a year ago */
    return sqlite3_exec(db, "UPDATE ledger_inbound SET received_at = received_at - 31536000000, "
                            "updated_at = updated_at - 31536000000 WHERE id != 'id-new'",
                        NULL, NULL, NULL) == SQLITE_OK ? 0 : NX_EDB;
}

/* An event the router drops (no text, no binding, rate limited) is settled as dropped: never
 * resumed, and pruned; a received event older than the retention is not resumed either (it
 * would be answered that late) and is pruned. */
static void test_ledger_dropped_and_stale_events_are_not_resumed(void **state)
{
    struct fx *f = *state;
    struct nx_ledger_event a = event("k1", "id-1"), b = event("k2", "id-2"), c = event("knew", "id-new");
    WAIT(f, nx_ledger_inbound_record(f->s, &a, on_done, f));
    WAIT(f, nx_ledger_inbound_record(f->s, &b, on_done, f));
    assert_int_equal(WAIT(f, nx_ledger_inbound_settle(f->s, "id-1", NX_LEDGER_DROPPED, "rate limited",
                                                      on_done, f)), 1);
    assert_string_equal(in_state(f, "id-1"), "dropped");
    assert_string_equal(f->rows[0].last_error, "rate limited");
    /* dropped is final: a redelivery does not run it */
    assert_int_equal(WAIT(f, nx_ledger_inbound_claim(f->s, &a, "kate", on_done, f)), 0);
    nx_store_write(f->s, age_received_job, on_job_done, f);
    run_until(f, f->calls + 1);
    assert_int_equal(f->rc, 0);
    WAIT(f, nx_ledger_inbound_record(f->s, &c, on_done, f));
    int64_t cut = (int64_t)nx_wall_ms() - 7LL * 86400000;
    nx_ledger_inbound_unanswered_since(f->s, cut, 0, on_rows, f);
    wait_rows(f);
    assert_int_equal(f->nrows, 1);
    assert_string_equal(f->rows[0].key, "id-new");
    nx_ledger_inbound_unanswered(f->s, 0, on_rows, f); /* no cut-off: the stale one too */
    wait_rows(f);
    assert_int_equal(f->nrows, 2);
    assert_string_equal(f->rows[0].key, "id-2");
    assert_int_equal(WAIT(f, nx_ledger_prune(f->s, cut, 0, on_done, f)), 2);
    assert_string_equal(in_state(f, "id-1"), "");
    assert_string_equal(in_state(f, "id-2"), "");
    assert_string_equal(in_state(f, "id-new"), "received");
}

/* The pruner's timer: with a short interval it runs passes until nothing old is left. */
static void test_ledger_pruner_runs_on_a_timer(void **state)
{
    struct fx *f = *state;
    char key[32], id[32];
    for (int i = 0; i < 3; i++) {
        snprintf(key, sizeof key, "k%d", i);
        snprintf(id, sizeof id, "id-%d", i);
        struct nx_ledger_event e = event(key, id);
        WAIT(f, nx_ledger_inbound_record(f->s, &e, on_done, f));
        WAIT(f, nx_ledger_inbound_claim(f->s, &e, "kate", on_done, f));
        WAIT(f, nx_ledger_inbound_answer(f->s, id, NULL, 0, false, on_done, f));
    }
    nx_store_write(f->s, age_rows_job, on_job_done, f);
    run_until(f, f->calls + 1);
    struct nx_ledger_pruner *p = nx_ledger_pruner_new(&f->loop, f->s, 86400000, 50);
    uint64_t deadline = nx_mono_ms() + SFX_WAIT_MS;
    while (nx_ledger_pruner_deleted(p) < 3 && nx_mono_ms() < deadline)
        uv_run(&f->loop, UV_RUN_ONCE);
    assert_int_equal(nx_ledger_pruner_deleted(p), 3);
    nx_ledger_pruner_free(p);
    assert_int_equal(WAIT(f, nx_ledger_count(f->s, "inbound", "answered", on_done, f)), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_ledger_inbound_dedupes_by_event_key, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ledger_inbound_states_and_claim, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ledger_inbound_fail_then_dead_letter, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ledger_outbound_claim_sent_and_status, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ledger_resume_after_restart, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ledger_outbound_progress_resumes_at_the_first_step_not_delivered,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_ledger_many_records_group_commit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ledger_settled_events_are_not_resumed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ledger_early_status_is_merged_into_the_send, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ledger_prune_deletes_old_finished_rows_in_batches, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_ledger_pruner_runs_on_a_timer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ledger_dropped_and_stale_events_are_not_resumed, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
