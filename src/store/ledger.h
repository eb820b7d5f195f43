#ifndef NX_STORE_LEDGER_H
#define NX_STORE_LEDGER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store/store.h"

/* The exactly-once ledger (migration 4; docs/bus.md): every inbound channel event and every
 * outbound reply, with its state, in the store's database.
 *
 * ledger_inbound, keyed by (channel, instance, event_key), also unique by the envelope id:
 *   received -> routed -> answered | failed | dead; received -> dropped (the router had
 *   nothing to do for it: no text, no binding, refused by the sender rate limit)
 * ledger_outbound, keyed by the idempotency key:
 *   pending -> sent -> delivered -> read, or -> failed
 *
 * Every call queues one job on the store thread (writes share the group commit; statements are
 * prepared once per connection) and runs `done` on the loop thread with rc (0, or a negative
 * NX_E* code: NX_EDB, NX_ECLOSED) and a result whose meaning each call gives. done may be NULL.
 * Strings are copied. The store runs jobs in the order queued, so a write queued after one of
 * these is committed in the same transaction or a later one. */

/* The inbound state of an event the router had nothing to do for (nx_ledger_inbound_settle). */
#define NX_LEDGER_DROPPED "dropped"

typedef void (*nx_ledger_done_fn)(int rc, int64_t result, void *arg);

struct nx_ledger_event {
    const char *channel;   /* channel type: "telegram" */
    const char *instance;  /* instance key: "default" when unnamed */
    const char *event_key; /* the service's id of the event ("bot1:update:42"); NULL = id */
    const char *id;        /* the envelope id */
    const char *subject;   /* plugin.inbound.<label> */
    const char *envelope;  /* JSON text */
};

/* Records a new inbound event as `received`. result 1 = new, 0 = already recorded (a
 * duplicate: nothing changed). */
void nx_ledger_inbound_record(struct nx_store *s, const struct nx_ledger_event *ev,
                              nx_ledger_done_fn done, void *arg);

/* The router takes an event: received (or dead: a retry from the dead-letter queue) -> routed,
 * with the agent. An id the ledger does not know (published by something other than a channel)
 * is recorded as routed. result 1 = taken (run the turn), 0 = routed, answered or failed
 * already (a redelivery: do nothing). */
void nx_ledger_inbound_claim(struct nx_store *s, const struct nx_ledger_event *ev,
                             const char *agent_id, nx_ledger_done_fn done, void *arg);

/* One reply of a turn, recorded pending together with its inbound event's `answered`. */
struct nx_ledger_reply {
    const char *key;      /* the idempotency key */
    const char *channel;
    const char *instance;
    const char *subject;  /* plugin.outbound.<label> */
    const char *envelope; /* JSON text */
};
/* In one transaction: the replies become pending outbound rows (a key already there is left
 * as it is) and the inbound event `id` becomes answered (failed when `is_failed`, e.g. a turn
 * that answered with an error text). result = replies newly recorded. */
void nx_ledger_inbound_answer(struct nx_store *s, const char *id, const struct nx_ledger_reply *v,
                              size_t n, bool is_failed, nx_ledger_done_fn done, void *arg);

/* A turn for inbound event `id` failed: attempts + 1 and last_error. When attempts reaches
 * max_attempts (0 = never) the event becomes dead and is written to dead_letters for
 * `consumer` (so `nexo dlq retry` can redeliver it to that bus subscriber); else it goes back to
 * received. result = the attempts so far (dead when max_attempts > 0 and result >= it). */
void nx_ledger_inbound_fail(struct nx_store *s, const char *id, const char *error,
                            uint32_t max_attempts, const char *consumer, nx_ledger_done_fn done,
                            void *arg);

/* A turn for inbound event `id` ended without an answer of its own: state "cancelled" (a newer
 * message of its session interrupted it: queue_mode interrupt) or "answered" (its message was
 * merged into another turn's, which answered both: queue_mode collect), or the router dropped
 * the event before any turn: "dropped" (NX_LEDGER_DROPPED); note goes to last_error.
 * Only a received or routed event changes, so it is not run again at the next start. result 1 =
 * the row changed. */
void nx_ledger_inbound_settle(struct nx_store *s, const char *id, const char *state, const char *note,
                              nx_ledger_done_fn done, void *arg);

/* A row as the list and get calls return it. */
struct nx_ledger_row {
    char *key;         /* inbound: the envelope id; outbound: the idempotency key */
    char *channel;
    char *instance;
    char *subject;
    char *envelope;
    char *state;
    char *provider_id; /* outbound; NULL when none */
    char *last_error;
    uint32_t attempts;
    uint32_t steps_sent; /* outbound (take, get): steps of a multi-step reply delivered already */
};
/* rc, then rows (owned by the ledger, valid during the call). */
typedef void (*nx_ledger_rows_fn)(int rc, const struct nx_ledger_row *v, size_t n, void *arg);

/* Resume: inbound events recorded but not answered (received, or routed when the process
 * stopped mid-turn), oldest first; routed ones are set back to received first. limit 0 = all. */
void nx_ledger_inbound_unanswered(struct nx_store *s, size_t limit, nx_ledger_rows_fn done,
                                  void *arg);
/* The same, for events received at or after since_ms (unix ms) only: an older one (e.g. the
 * retention ago) is stale and left for the pruner, never answered that late. */
void nx_ledger_inbound_unanswered_since(struct nx_store *s, int64_t since_ms, size_t limit,
                                        nx_ledger_rows_fn done, void *arg);

/* The outbound side takes a reply to send: inserts it pending when missing, marks the inbound
 * event its key names ("<inbound id>:<n>") answered if it is still received or routed here (it
 * was routed by another process), then claims the reply for this process (`boot`, non-zero,
 * unique per process start) when it is pending and not claimed by this boot yet, counting an
 * attempt. result >= 1 = claimed: send it, skipping its first result - 1 steps, which were
 * delivered already (nx_ledger_outbound_progress; 1 = from the start); 0 = sent, delivered,
 * read or failed already, or being sent by this process (a redelivery: do nothing). */
void nx_ledger_outbound_claim(struct nx_store *s, const struct nx_ledger_reply *r, uint64_t boot,
                              nx_ledger_done_fn done, void *arg);
/* Gives a claimed, still pending reply back (the adapter refused it for now), so the next
 * nx_ledger_outbound_take offers it again. */
void nx_ledger_outbound_unclaim(struct nx_store *s, const char *key, nx_ledger_done_fn done,
                                void *arg);
/* Resume: claims up to `limit` pending replies of (channel, instance) not claimed by `boot`,
 * oldest first, and lists them (key, subject, envelope, attempts, steps_sent). limit 0 = 1000. */
void nx_ledger_outbound_take(struct nx_store *s, const char *channel, const char *instance,
                             uint64_t boot, size_t limit, nx_ledger_rows_fn done, void *arg);
/* A reply sent in several steps (chunks, a photo then text): its first `steps` steps are
 * delivered; provider_id = the service's id of its first step (kept from the first report; the
 * reply is known by it once sent). Only a pending reply changes, and only forward, so a resumed
 * send (nx_ledger_outbound_take's steps_sent, the claim's result) starts at the first step not
 * delivered. result 1 = the row changed. */
void nx_ledger_outbound_progress(struct nx_store *s, const char *key, uint32_t steps,
                                 const char *provider_id, nx_ledger_done_fn done, void *arg);
/* The adapter's report: status 0 = sent (provider_id may be NULL), < 0 = failed (error). A
 * reply already delivered or read stays so. result 1 = the row changed. */
void nx_ledger_outbound_sent(struct nx_store *s, const char *key, const char *provider_id,
                             int status, const char *error, nx_ledger_done_fn done, void *arg);
/* A delivery update ("delivered", "read", "failed") for the reply the service knows as
 * provider_id on (channel, instance); a state never goes back (read stays read). A status for a
 * provider id no reply has yet (it overtook the send's answer) is kept in a row of its own (key
 * "early:<channel>:<instance>:<provider id>", never sent) that nx_ledger_outbound_sent merges into
 * the reply when it records that provider id. result = rows changed. */
void nx_ledger_outbound_status(struct nx_store *s, const char *channel, const char *instance,
                               const char *provider_id, const char *state, const char *error,
                               nx_ledger_done_fn done, void *arg);

/* One row by key (inbound: the envelope id), for tests and the admin surface: n is 0 or 1. */
void nx_ledger_inbound_get(struct nx_store *s, const char *id, nx_ledger_rows_fn done, void *arg);
void nx_ledger_outbound_get(struct nx_store *s, const char *key, nx_ledger_rows_fn done, void *arg);

/* Counts per state, e.g. for a test: result = rows of table ("inbound"|"outbound") in state. */
void nx_ledger_count(struct nx_store *s, const char *table, const char *state,
                     nx_ledger_done_fn done, void *arg);

/* ---- housekeeping (ledger_prune.c) ---- */

/* Deletes at most `batch` finished rows last updated before `before_ms` (unix ms): inbound
 * answered, failed, cancelled, dead or dropped, and received ones never taken (stale: the resume
 * skips them); outbound sent (a service that never reports delivery), delivered, read or failed
 * (and early statuses).
 * result = rows deleted (call again while it equals batch). */
void nx_ledger_prune(struct nx_store *s, int64_t before_ms, uint32_t batch, nx_ledger_done_fn done,
                     void *arg);

/* Runs nx_ledger_prune every interval_ms (0 = 10 min; the first soon after start) for rows
 * older than retention_ms, in batches of 500, one batch per store job until a pass finds no
 * more. Loop thread. */
struct nx_ledger_pruner;
struct nx_ledger_pruner *nx_ledger_pruner_new(uv_loop_t *loop, struct nx_store *s, uint64_t retention_ms,
                                              uint64_t interval_ms);
/* A new retention (a config reload) from the next pass. */
void nx_ledger_pruner_set_retention(struct nx_ledger_pruner *p, uint64_t retention_ms);
/* Rows the pruner deleted since it started. */
uint64_t nx_ledger_pruner_deleted(const struct nx_ledger_pruner *p);
/* Accepts NULL. A pass in flight finishes on its own. */
void nx_ledger_pruner_free(struct nx_ledger_pruner *p);

#endif
