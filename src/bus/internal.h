#ifndef NX_BUS_INTERNAL_H
#define NX_BUS_INTERNAL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "bus/bus.h"
#include "runtime/mailbox.h"

/* Shared by the bus's own files only (bus.c, local.c, nats.c, resilient.c, queue.c). */

/* One published message, shared by every delivery and by the outgoing queue. */
struct nx_bus_item {
    int refs;
    char *subject;
    char *reply_to;
    char *data;
    size_t len;
    struct nx_envelope *env;
    bool is_redelivery; /* a dead letter retried: delete it on success */
};

struct nx_bus_item *nx_bus_item_new(const char *subject, const char *reply_to, const char *data,
                                    size_t len, struct nx_envelope *env_owned);
struct nx_bus_item *nx_bus_item_ref(struct nx_bus_item *it);
void nx_bus_item_unref(struct nx_bus_item *it);

struct nx_delivery {
    struct nx_delivery *next;
    struct nx_bus_item *item;
    uint32_t attempts;
    char *last_error;
};

/* Recent event ids (two generations of an open-addressing set): a replay overlap is not
 * delivered twice. */
struct nx_seen {
    uint64_t *gen[2];
    size_t n_cur;
    size_t cap; /* slots per generation (power of two) */
};
bool nx_seen_check_add(struct nx_seen *s, size_t window, const char *id, const char *subject);
void nx_seen_cleanup(struct nx_seen *s);

struct nx_bus_sub {
    struct nx_bus *bus;
    struct nx_bus_sub *prev, *next;   /* bus->subs */
    struct nx_bus_sub *ready_next;    /* bus->ready list */
    char *pattern;
    char *group;
    char *name;
    nx_bus_cb cb;
    void *arg;
    struct nx_delivery *head, *tail;
    size_t depth;
    bool is_listed_ready;
    bool is_waiting_retry;
    bool is_dead;           /* unsubscribed; freed when not in use */
    bool is_in_callback;
    bool is_internal;       /* the request inbox */
    bool is_backlog_warned;
    struct nx_timer *retry_timer;
    struct nx_seen seen;
    void *backend;          /* the NATS subscription record */
};

enum nx_bus_mode { NX_BUS_INPROC = 0, NX_BUS_NATS = 1, NX_BUS_FALLBACK = 2 };

/* An event bound for other processes, in publish order. States only ever read
 * CONFIRMED* SENT* QUEUED* along the list. */
enum qstate { Q_QUEUED = 0, Q_SENT = 1, Q_CONFIRMED = 2 };
struct nx_qent {
    struct nx_qent *prev, *next;
    struct nx_bus_item *item;
    int64_t seq;
    int state;
    bool is_durable;
    char *local;           /* "1[,group...]" when delivered in-process already, else NULL */
    uint64_t flush_gen;
    uint64_t confirmed_at;
};

struct nx_nats; /* nats.c */
struct nx_js;   /* jetstream.c */
void nx_js_init(struct nx_bus *bus); /* copies broker.jetstream's names (nx_bus_new) */

struct nx_bus {
    uv_loop_t *loop;
    struct nx_bus_opts opts;
    struct nx_broker_conf conf; /* shallow copy: strings borrowed from the config snapshot */
    bool has_conf;
    char instance[37];          /* this bus's id (Nx-Origin header) */
    char name[64];
    int mode;
    bool is_closing;
    bool is_connected;
    size_t server_max_payload; /* the NATS server's max_payload, once one was seen (0 = not yet) */
    struct nx_bus_later *later; /* publishes waiting for room (later.c), made at the first one */
    bool is_full_said;          /* "disk queue full" logged, not again until there is room */

    struct nx_bus_sub *subs;
    size_t n_subs;
    struct nx_bus_sub *ready_head, *ready_tail;
    uv_idle_t idle;
    bool is_idle_active;

    /* request/reply */
    struct nx_bus_sub *inbox;
    char inbox_prefix[64];
    uint64_t next_req;
    struct nx_req *reqs;

    /* the outgoing queue (resilient.c) */
    struct nx_qent *q_head, *q_tail, *q_next_send;
    size_t q_waiting;   /* QUEUED */
    size_t in_flight;   /* SENT */
    size_t q_confirmed; /* CONFIRMED, retained */
    int64_t next_seq;
    uint64_t send_gen;
    uint64_t epoch;     /* bumped at each disconnect: stale flush results are ignored */
    bool is_flushing;
    bool is_loaded;
    bool is_replay_held; /* waiting replay_delay_ms after (re)connecting */
    uint64_t replay_at;
    uint64_t last_poll;
    bool is_polling;
    uv_timer_t tick;
    bool has_tick;

    struct nx_nats *nats;
    struct nx_js *js;   /* JetStream state (jetstream.c); NULL until used */
    bool has_js;        /* connected to a server with JetStream, streams set up */
    int js_ops;         /* JetStream jobs on the pool whose completion is still to come */
    struct nx_mailbox mb;
    bool has_mb;
    int store_ops;      /* store jobs whose completion is still to come */
    int close_stage;
    struct nx_bus_stats stats;
};

/* bus.c */
void nx_bus_set_mode(struct nx_bus *bus, int mode);
void nx_bus_maybe_finish_close(struct nx_bus *bus);
void nx_bus_on_connection(struct nx_bus *bus, bool is_connected);

/* local.c: in-process matching and delivery */
/* Queues item for every matching subscription (one member per queue group). Returns the groups
 * served as "1[,g...]" (caller frees), or NULL when local_out is false. */
char *nx_local_dispatch(struct nx_bus *bus, struct nx_bus_item *item, bool want_groups);
void nx_local_enqueue(struct nx_bus_sub *sub, struct nx_bus_item *item);
void nx_local_sub_free(struct nx_bus_sub *sub);
void nx_local_drop_all(struct nx_bus *bus);

/* nats.c: the NATS backend (a table of operations over libnats) */
struct nx_bus_backend {
    const char *name;
    int (*open)(struct nx_bus *bus);
    void (*close)(struct nx_bus *bus);   /* closes the connection (a flush may still be running) */
    void (*destroy)(struct nx_bus *bus); /* once no flush runs: frees the connection */
    int (*publish)(struct nx_bus *bus, const struct nx_bus_item *item, const char *local);
    int (*subscribe)(struct nx_bus *bus, struct nx_bus_sub *sub);
    void (*unsubscribe)(struct nx_bus *bus, struct nx_bus_sub *sub);
    /* Asks the server to acknowledge everything published so far; done(rc) on the loop. */
    void (*flush)(struct nx_bus *bus, uint32_t timeout_ms, void (*done)(struct nx_bus *, int rc,
                                                                          uint64_t token),
                  uint64_t token);
};
extern const struct nx_bus_backend nx_bus_nats_backend;
/* Called by nats.c on the loop for each message from NATS. */
void nx_bus_on_remote(struct nx_bus *bus, struct nx_bus_sub *sub, struct nx_bus_item *item,
                      const char *origin, const char *local);

/* nats.c, for jetstream.c: the connection (natsConnection *) and the counted link through
 * which libnats threads post to the loop. */
struct link;
void *nx_nats_connection(struct nx_bus *bus);
struct link *nx_nats_link_ref(struct nx_bus *bus);
void nx_nats_link_unref(struct link *l);
bool nx_nats_link_post(struct link *l, nx_mail_fn fn, void *arg);

/* jetstream.c */
void nx_js_init(struct nx_bus *bus); /* copies broker.jetstream's names (nx_bus_new) */
void nx_js_on_connection(struct nx_bus *bus, bool is_connected);
void nx_js_close(struct nx_bus *bus); /* at nx_bus_free: unsubscribes, drops pending work */
void nx_js_destroy(struct nx_bus *bus);
void *nx_js_kv(struct nx_bus *bus); /* kvStore * while JetStream is usable, else NULL (kv.c) */

/* resilient.c */
/* An answer may fill the disk queue to twice broker.limits.max_pending (bus.h, nx_bus_class). */
int nx_resilient_publish(struct nx_bus *bus, struct nx_bus_item *item, enum nx_bus_class cls);
void nx_resilient_on_connection(struct nx_bus *bus, bool is_connected);
void nx_resilient_tick(struct nx_bus *bus);
void nx_resilient_load(struct nx_bus *bus);
void nx_resilient_free(struct nx_bus *bus);

/* queue.c: store jobs */
struct nx_qrow {
    char *id;
    char *subject;
    char *envelope;
    char *local;
    int64_t seq;
};
void nx_queue_insert(struct nx_bus *bus, struct nx_qent **v, size_t n);
void nx_queue_delete(struct nx_bus *bus, struct nx_qent **v, size_t n);
typedef void (*nx_queue_loaded_fn)(struct nx_bus *bus, int rc, struct nx_qrow *rows, size_t n);
void nx_queue_load(struct nx_bus *bus, nx_queue_loaded_fn done);
void nx_qrows_free(struct nx_qrow *rows, size_t n);
/* Dead letters from a live bus. */
void nx_dlq_put(struct nx_bus *bus, struct nx_bus_sub *sub, struct nx_delivery *d);
/* The same for any item, under `consumer` (DLQ_PUBLISH: an event NATS never took, published
 * again when retried). */
#define DLQ_PUBLISH "publish"
/* A queued entry (q, not freed) into the dead letters and, if it has a row, out of the disk
 * queue, in one write. */
void nx_dlq_move(struct nx_bus *bus, struct nx_qent *q, const char *consumer, const char *error);
void nx_dlq_put_item(struct nx_bus *bus, const char *consumer, const struct nx_bus_item *item,
                     const char *error, uint32_t attempts);
void nx_dlq_delete(struct nx_bus *bus, const char *id, const char *consumer);
void nx_dlq_poll(struct nx_bus *bus);

/* later.c: drops what waits (in the ledger for the next start), cancels the timer. */
void nx_bus_later_free(struct nx_bus_later *l);
/* later.c: the disk queue has room again: what waits is published on the next loop iteration. */
void nx_bus_later_kick(struct nx_bus *bus);

#endif
