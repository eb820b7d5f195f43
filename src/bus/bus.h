#ifndef NX_BUS_BUS_H
#define NX_BUS_BUS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "bus/envelope.h"
#include "config/config.h"
#include "store/store.h"

/* The bus: publish, subscribe, queue-subscribe and request/reply over JSON envelopes, with an
 * in-process backend and a NATS backend under a resilient wrapper (see docs/bus.md):
 *  - broker.type local (or no broker.yaml): in-process only (mode "in-process");
 *  - broker.type nats: while NATS is connected, everything goes through NATS (mode "nats");
 *    while it is not (also when it never was), local subscribers are served in-process and
 *    events for other processes wait in the disk queue (mode "fallback"), replayed in order when
 *    NATS returns.
 * Everything here is called on the loop thread, and every callback runs on the loop thread. */

struct nx_bus;
struct nx_bus_sub;

/* One delivery, valid for the duration of the callback. */
struct nx_bus_msg {
    const char *subject;             /* the subject it was published on */
    const char *reply_to;            /* set for a request: answer with nx_bus_reply */
    const struct nx_envelope *env;   /* parsed and validated */
    const char *data;                /* the envelope's JSON text */
    size_t len;
    uint32_t attempt;                /* 1 on the first delivery, 2 on the first retry... */
    struct nx_bus_sub *sub;
    char *error;                     /* internal: set by nx_bus_fail */
};

/* A subscriber returns 0 when it handled the event, or a negative NX_E* code when it failed;
 * a failed event is delivered again (to the same subscriber, after a short backoff, ahead of
 * later events) and after broker.dlq.max_attempts failures goes to the dead-letter queue with
 * its last error. */
typedef int (*nx_bus_cb)(struct nx_bus *bus, struct nx_bus_msg *msg, void *arg);
/* Records why the delivery failed (kept with the dead letter) and returns NX_EIO, so a
 * subscriber can write `return nx_bus_fail(m, "tool %s timed out", name);`. */
int nx_bus_fail(struct nx_bus_msg *msg, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Answer to a request: rc 0 with the reply (valid during the call) or NX_ETIMEDOUT /
 * NX_ECLOSED with reply NULL. */
typedef void (*nx_bus_reply_cb)(struct nx_bus *bus, int rc, const struct nx_bus_msg *reply,
                                void *arg);

struct nx_bus_opts {
    const struct nx_broker_conf *conf; /* NULL = in-process defaults; copied */
    struct nx_store *store;            /* disk queue and dead letters; NULL = memory only */
    const char *name;                  /* connection name (NATS), log prefix; default "nexo" */
    /* Tuning; 0 = default. */
    uint32_t replay_delay_ms;   /* wait after (re)connecting before replaying; default 500 */
    uint32_t retain_ms;         /* keep acknowledged events this long for replay; default 2000 */
    uint32_t max_in_flight;     /* unacknowledged NATS publishes at most; default 512 */
    uint32_t retry_backoff_ms;  /* first redelivery delay after a failure; default 50 */
    uint32_t poll_ms;           /* look for dead letters retried by another process; 1000 */
    uint32_t flush_timeout_ms;  /* server acknowledgement of a batch; default 2000 */
    uint32_t backlog_warn;      /* per-subscriber backlog that logs a warning; default 10000 */
    uint32_t dedupe_window;     /* recent ids remembered per subscription; default 16384 */
};

/* Creates the bus on `loop`. With broker.type nats it starts connecting in the background and
 * returns at once (mode "fallback" until connected). Returns 0 or NX_EINVAL / NX_ECONFIG (bad
 * TLS or credential files). */
int nx_bus_new(uv_loop_t *loop, const struct nx_bus_opts *opts, struct nx_bus **out);
/* Disconnects and frees. Events still queued stay on disk for the next start. Accepts NULL.
 * Memory is released once the loop runs again. */
void nx_bus_free(struct nx_bus *bus);

/* Publishes env on subject (NULL = env->topic). The envelope is borrowed (serialized now).
 * Returns 0, NX_EINVAL (bad subject), NX_ETOOBIG (over broker.limits.max_payload), NX_EAGAIN
 * (the disk queue holds broker.limits.max_pending events: nothing was published, try later)
 * or NX_ECLOSED. Subscribers never run inside this call. */
int nx_bus_publish(struct nx_bus *bus, const char *subject, const struct nx_envelope *env);

/* What a publish is to a full disk queue. New work (a channel's inbound event, one resumed from
 * the ledger, work forwarded to the agents' processes) is refused at broker.limits.max_pending;
 * an answer to work already taken in (a reply, a settlement, an agent's send_message, a pairing
 * code or rate-limit notice) may use as much again, so that while NATS is away what was taken in
 * is still answered at once instead of waiting behind new work that itself waits for room. */
enum nx_bus_class { NX_BUS_WORK, NX_BUS_ANSWER };

/* nx_bus_publish of a class: nx_bus_publish is this with NX_BUS_WORK. */
int nx_bus_publish_as(struct nx_bus *bus, const char *subject, const struct nx_envelope *env,
                      enum nx_bus_class cls);

/* nx_bus_publish, or, when the bus has no room now (NX_EAGAIN: its disk queue is full while NATS
 * is away), a wait in the bus's own queue of such publishes: one FIFO per class for every caller,
 * tried again (100 ms, doubling to 5 s) until the bus takes them, so the order of all publishes of
 * a class made through it holds (a channel's new event never overtakes a resumed one). A publish
 * while some of its class wait goes behind them. For events durable elsewhere (the ledger): what
 * still waits when the bus is freed is dropped. Returns 0 (published or waiting) or
 * nx_bus_publish's other errors (NX_EAGAIN past 100,000 waiting). */
int nx_bus_publish_in_order(struct nx_bus *bus, const char *subject, const struct nx_envelope *env,
                            enum nx_bus_class cls);

/* Subscribes to a subject or pattern ('*' one token, '>' the rest). *out (may be NULL) gets a
 * handle for nx_bus_unsubscribe. A queue subscription delivers each event to one member of
 * `group` (across processes when on NATS). */
int nx_bus_subscribe(struct nx_bus *bus, const char *pattern, nx_bus_cb cb, void *arg,
                     struct nx_bus_sub **out);
int nx_bus_queue_subscribe(struct nx_bus *bus, const char *pattern, const char *group,
                           nx_bus_cb cb, void *arg, struct nx_bus_sub **out);
/* Stops deliveries at once (queued ones are dropped) and frees the handle. */
void nx_bus_unsubscribe(struct nx_bus *bus, struct nx_bus_sub *sub);
/* "pattern" or "pattern#group": the consumer's name in dead letters. */
const char *nx_bus_sub_name(const struct nx_bus_sub *sub);
/* Events waiting for this subscriber. */
size_t nx_bus_sub_backlog(const struct nx_bus_sub *sub);

/* Request/reply: publishes env with a private reply subject; cb runs once, with the first
 * reply or NX_ETIMEDOUT after timeout_ms. Requests are not queued while NATS is down (only
 * local subscribers can answer then). */
int nx_bus_request(struct nx_bus *bus, const char *subject, const struct nx_envelope *env,
                   uint32_t timeout_ms, nx_bus_reply_cb cb, void *arg);
/* Answers a request (msg->reply_to). Returns NX_EINVAL when msg was not a request. */
int nx_bus_reply(struct nx_bus *bus, const struct nx_bus_msg *msg, const struct nx_envelope *env);

/* "in-process", "nats" or "fallback". */
const char *nx_bus_mode(const struct nx_bus *bus);
/* Ready for /readyz: true in every mode once created (fallback serves local subscribers and
 * queues the rest), false once closing. */
bool nx_bus_is_ready(const struct nx_bus *bus);

struct nx_bus_stats {
    uint64_t published;    /* accepted by nx_bus_publish */
    uint64_t delivered;    /* subscriber callbacks that returned 0 */
    uint64_t failed;       /* subscriber callbacks that returned < 0 */
    uint64_t duplicates;   /* NATS deliveries dropped as already seen */
    uint64_t replayed;     /* queued events published to NATS on recovery */
    uint64_t queued;       /* events written to the disk queue */
    uint64_t dead_letters; /* events moved to the dead-letter queue */
    uint64_t queue_depth;  /* events waiting for NATS now */
    uint64_t in_flight;    /* published to NATS, not yet acknowledged */
    uint64_t mode_changes;
    bool is_loaded;        /* the disk queue was read at start */
};
void nx_bus_stats(const struct nx_bus *bus, struct nx_bus_stats *out);

/* ---- scale-out: routed work and session state (docs/scaling.md) ---- */

/* True while connected to a server with JetStream whose streams are set up (broker.jetstream). */
bool nx_bus_has_jetstream(const struct nx_bus *bus);
/* "agent.route.<agent>.<p>" into out, p = hash(session_key) mod broker.jetstream.partitions.
 * Returns 0, or NX_EINVAL (agent id not one subject token, or out too small). */
int nx_bus_route_subject(const struct nx_bus *bus, const char *agent, const char *session_key,
                         char *out, size_t outlen);

/* One routed work item; the consumer completes it exactly once with nx_bus_work_done. */
struct nx_bus_work;
typedef void (*nx_bus_work_cb)(struct nx_bus *bus, struct nx_bus_work *w,
                               const struct nx_envelope *env, void *arg);
/* Consumes agent.route.<agent>.*: with JetStream, one durable consumer per partition
 * ("nexo_<agent>_<p>", shared by every process that consumes this agent, explicit acks,
 * max_ack_pending 1, so a partition has one item in flight at a time across processes); on core
 * NATS, a queue subscription (group "agents"). Which one is decided at connect; nothing is
 * consumed before the first connection. Returns 0 or NX_EINVAL. */
int nx_bus_work_consume(struct nx_bus *bus, const char *agent, nx_bus_work_cb cb, void *arg);
/* Completes w (and frees it): rc 0 acknowledges it once the server confirmed everything this
 * bus published before (so a reply published first is not lost if this process dies); rc < 0
 * asks for a redelivery after a short delay. On core NATS it only frees w. */
void nx_bus_work_done(struct nx_bus_work *w, int rc);
/* 1 on the first delivery, 2 on the first redelivery... */
uint32_t nx_bus_work_attempt(const struct nx_bus_work *w);
/* True when w came from a JetStream consumer (acknowledged, redelivered), false on core NATS. */
bool nx_bus_work_is_durable(const struct nx_bus_work *w);

/* A durable JetStream consumer of one outbound subject ("plugin.outbound.<label>") in the
 * outbound stream, named `durable` ([A-Za-z0-9_-]), shared through a deliver group of that name:
 * for a process whose channels must also get the replies published while it was down (the
 * gateway role, docs/scaling.md). Created the first time with "deliver new"; afterwards it resumes
 * where its acknowledgements stopped. Deliveries are work items: nx_bus_work_done(w, 0)
 * acknowledges (after a flush), rc < 0 asks for a redelivery. Subscribed at each connection to a
 * server with JetStream; without JetStream nothing is delivered through it. Returns 0,
 * NX_EINVAL or NX_ECLOSED. */
struct nx_bus_durable;
int nx_bus_durable_consume(struct nx_bus *bus, const char *subject, const char *durable,
                           nx_bus_work_cb cb, void *arg, struct nx_bus_durable **out);
/* True while it is subscribed on a connected JetStream server: every reply published on its
 * subject reaches it (the channel may then leave the core copies to it). */
bool nx_bus_durable_is_active(const struct nx_bus_durable *d);
/* Stops it (the consumer stays on the server for the next start) and frees. Accepts NULL. */
void nx_bus_durable_stop(struct nx_bus_durable *d);

/* The session-state bucket (JetStream KV, broker.jetstream.sessions_bucket). Any key text is
 * accepted (it is encoded). cb runs on the loop: rc 0 with the value and its revision, NX_ENOENT
 * (no such key; for get), NX_ENOTSUP (no JetStream), NX_EIO, NX_ECLOSED. The value is valid
 * during the call. put with expect_rev > 0 succeeds only if the key is still at that revision
 * (NX_EAGAIN otherwise); expect_rev 0 writes unconditionally. */
typedef void (*nx_bus_kv_cb)(struct nx_bus *bus, int rc, const char *value, size_t len,
                             uint64_t revision, void *arg);
void nx_bus_kv_get(struct nx_bus *bus, const char *key, nx_bus_kv_cb cb, void *arg);
void nx_bus_kv_put(struct nx_bus *bus, const char *key, const char *value, size_t len,
                   uint64_t expect_rev, nx_bus_kv_cb cb, void *arg);

/* ---- dead letters (store) ---- */

struct nx_dead_letter {
    char *id;         /* event id */
    char *consumer;   /* subscriber name ("agent.route.a#agents") */
    char *subject;
    char *envelope;   /* JSON text */
    char *last_error;
    uint32_t attempts;
    int64_t failed_at_ms;
    char *state;      /* "dead", "retry" (waiting for a bus) or "redelivering" */
};
void nx_dead_letters_free(struct nx_dead_letter *v, size_t n);

/* Lists up to `limit` dead letters, oldest first (limit 0 = 1000). Runs on the store thread;
 * done runs on the loop with the array (owned by the callee: freed after done returns). */
typedef void (*nx_dlq_list_cb)(int rc, const struct nx_dead_letter *v, size_t n, void *arg);
void nx_dlq_list(struct nx_store *s, size_t limit, nx_dlq_list_cb done, void *arg);
/* Moves dead letters back for redelivery to the consumer that failed them: one event id, or
 * every one when id is NULL. A running bus that has that consumer (in this process or another
 * one using the same data dir) picks them up within its poll interval (opts.poll_ms); success
 * deletes the dead letter, failing max_attempts times again makes it dead again. done gets how
 * many moved (rc NX_ENOENT when id names none). */
typedef void (*nx_dlq_count_cb)(int rc, size_t count, void *arg);
void nx_dlq_retry(struct nx_store *s, const char *id, nx_dlq_count_cb done, void *arg);
/* Deletes every dead letter; done gets how many. */
void nx_dlq_purge(struct nx_store *s, nx_dlq_count_cb done, void *arg);

/* `nexo dlq list | retry ID | retry --all | purge`: opens the store under data_dir with its own
 * loop, prints to stdout (errors to stderr) and returns a process exit code (0, 1 = failure,
 * 2 = usage). argv[0] is "dlq". */
int nx_cmd_dlq(int argc, char **argv, const char *data_dir);

#endif
