#ifndef NX_CHANNELS_CHANNELS_H
#define NX_CHANNELS_CHANNELS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "bus/bus.h"
#include "config/config.h"
#include "config/schema.h"
#include "http/client.h"
#include "http/server.h"
#include "store/store.h"

/* Channels: adapters between a messaging service (Telegram, WhatsApp...) and the bus. A channel
 * type is a const table (name, config fields, start, stop, send), registered once in channel.c;
 * its instances come from plugins/<type>.yaml, which holds `<type>:` with one mapping or a list
 * of them (nexo-rs style; a file that is a single instance mapping without the `<type>:` key
 * also works). `instance` names an instance; at most one instance per type may go unnamed.
 *
 * An instance publishes each inbound message on `plugin.inbound.<type>[.<instance>]` with the
 * payload {kind:"message", from, chat, text, msg_id, is_group, timestamp} (the router turns it
 * into an agent turn), and receives replies from `plugin.outbound.<type>[.<instance>]`
 * ({to, text, reply_to}; queue group "channels", so one process sends each) which it hands to
 * the type's `send`. Everything runs on the loop thread. See docs/channels.md. */

struct nx_channel;  /* one running instance (owned by the framework) */
struct nx_channels; /* every instance of every type */

/* An outbound message, valid during `send`. */
struct nx_channel_out {
    const char *to;         /* chat / recipient id */
    const char *text;
    const char *reply_to;   /* the inbound msg_id being answered, or NULL */
    const char *session_id; /* or NULL */
    const char *key;        /* idempotency key, stable across redeliveries; never NULL in send() */
    /* A reply sent in steps (chunks; a photo then text) that a crash interrupted: its first
     * steps_done steps were delivered (reported with nx_channel_progress), so the adapter starts
     * after them. 0 = from the start. */
    uint32_t steps_done;
    /* The whole outbound bus payload (borrowed, valid during `send`), for adapter-specific
     * fields such as Telegram's `buttons` and `media`. */
    const json_t *payload;
};

struct nx_channel_type {
    const char *name;                   /* "telegram": plugins/<name>.yaml and the subjects */
    const struct nx_conf_struct *conf;  /* one instance's fields; conf->size bytes */
    size_t instance_offset;             /* the `char *instance` field inside that struct */
    /* Optional: a `char *` field no two instances may share, the account the service knows an
     * instance by (two instances of one account would take each other's webhooks). unique_key is
     * its key in the file, for messages; NULL = none. */
    const char *unique_key;
    size_t unique_offset;
    bool is_unique_secret; /* its value (a token) is named in no message */
    /* Starts an instance from its parsed config (valid until stop returns; copy what outlives
     * it). *state is handed back to send and stop. Returns 0 or a negative NX_E* code. */
    int (*start)(struct nx_channel *ch, const void *conf, void **state);
    /* Stops: cancels what is in flight, stops using ch; memory may be released later, once the
     * loop has closed the handles (the adapter's business). */
    void (*stop)(void *state);
    /* Queues an outbound message. 0 = accepted (the adapter delivers it, in order, retrying
     * what is transient); < 0 = refused now (the bus redelivers it). */
    int (*send)(void *state, const struct nx_channel_out *out);
    /* Optional (NULL = the type takes no webhooks): an HTTP request to
     * /webhooks/<type>[/<instance>] on the gateway listener, for this instance. Such requests
     * carry no gateway bearer token (the services cannot send one): the handler authenticates
     * the request itself (signature, secret) before parsing anything and answers 401 when that
     * fails. It answers the request (nx_http_respond...) at once or later. Loop thread. */
    void (*webhook)(void *state, struct nx_http_req *req);
    uint64_t webhook_max_body; /* request bodies above this are refused with 413; 0 = 1 MiB */
};

/* The registered type called `name`, or NULL. */
const struct nx_channel_type *nx_channel_type_find(const char *name);

/* Parses and validates every plugins/<type>.yaml of a registered type (files of other names are
 * left alone), adding file:line:col problems to diags. Returns 0 or NX_ECONFIG. For
 * --check-config and the daemon's start. */
int nx_channels_check(const struct nx_config *cfg, struct nx_diags *diags);

/* Starts every configured instance. Call after the router exists (so the first inbound message
 * has a subscriber). With no channel configured *out is an empty set. Returns 0, NX_ECONFIG
 * (invalid plugin files: each problem is logged, nothing runs) or the first start error. */
int nx_channels_new(uv_loop_t *loop, struct nx_bus *bus, struct nx_http_client *http,
                    struct nx_store *store, const struct nx_config *cfg, struct nx_channels **out);
/* Unsubscribes and stops every instance. Call before the bus, the store and the HTTP client are
 * freed (adapters' pending work completes against them with NX_ECANCELED / NX_ECLOSED). Accepts
 * NULL. */
void nx_channels_free(struct nx_channels *cs);
/* Instances running. */
size_t nx_channels_count(const struct nx_channels *cs);
/* Mounts the channel webhooks on an HTTP listener (the daemon's gateway): route
 * /webhooks/<type>[/<instance>] (any method) to the instance's type->webhook. Unknown type or
 * instance, or a type without webhooks: 404; a body above the type's cap: 413. No bearer token
 * is checked there (the adapters authenticate their requests). The set must outlive the
 * listener's request handling. Accepts NULL (nothing mounted). */
void nx_channels_mount(struct nx_channels *cs, struct nx_http_server *srv);
/* For webhook handlers: answers req once every store write queued so far has committed (the
 * ledger's records of the events just published), so a service is never told "received" about an
 * event nexo has not recorded; a failed commit answers 503 (the service delivers again). body is
 * copied. If the client goes away meanwhile nothing is answered. Loop thread. */
void nx_channel_webhook_ack(struct nx_channel *ch, struct nx_http_req *req, int status,
                            const char *content_type, const char *body, size_t len);

/* ---- for adapters ---- */

uv_loop_t *nx_channel_loop(const struct nx_channel *ch);
struct nx_http_client *nx_channel_http(const struct nx_channel *ch);
struct nx_store *nx_channel_store(const struct nx_channel *ch);
const char *nx_channel_type_name(const struct nx_channel *ch);
/* The instance name, or NULL when unnamed. */
const char *nx_channel_instance(const struct nx_channel *ch);
/* "telegram.kate_bot" or "telegram": for logs and the subjects' tail. */
const char *nx_channel_label(const struct nx_channel *ch);
/* The instance name, or "default" when unnamed: for metric labels and store keys. */
const char *nx_channel_instance_key(const struct nx_channel *ch);

/* An inbound message. chat and msg_id are borrowed JSON values (integers for Telegram, strings
 * elsewhere); NULL leaves them out. */
struct nx_channel_in {
    const char *from;
    json_t *chat;
    const char *text;
    json_t *msg_id;
    bool is_group;
    int64_t timestamp;     /* unix seconds */
    /* Stable identity of this event at the service ("update:123"): the envelope id is a UUID
     * derived from type, instance and this key, so a re-publish of the same event carries the
     * same id (the ledger and the bus's de-duplication recognise it). NULL = random id. */
    const char *event_key;
    /* What happened: NULL = "message"; "button" = a button press (callback), with `data` = the
     * button's data. Published in the payload as `kind` and `data`. */
    const char *kind;
    const char *data;
    /* Attachments (borrowed), published as `media`: [{type, path, mime, size, file_name}] (see
     * docs/channels.md), or NULL. */
    json_t *media;
    /* In a group chat: the bot was addressed (an @mention of it, or a reply to one of its
     * messages). Groups route only such messages unless require_mention is false. */
    bool mentioned;
};
/* nx_channel_publish's answer when the instance's policy (sender_policy, require_mention) dropped
 * the message on purpose: handled, do not retry (and show no "typing..."). */
#define NX_CHANNEL_DROPPED 1
/* Records the event in the exactly-once ledger (keyed by event_key), then publishes it on
 * plugin.inbound.<type>[.<instance>] and counts it; an event_key recorded already is a duplicate:
 * dropped and counted (nexo_ledger_duplicates_total). Recording is asynchronous, but the store
 * runs jobs in the order queued (FIFO, group commit), so the contract for adapters is simple:
 * acknowledge the service (store its cursor/offset with nx_store_write, or answer its webhook
 * after a nx_store_flush) AFTER this call returns, and the acknowledgement is committed in the
 * same transaction as the event or a later one: recorded before acknowledged. Without a store
 * it publishes at once. Returns 0, NX_CHANNEL_DROPPED (see above) or a negative NX_E* code
 * (the event could not be encoded; without a store, nx_bus_publish's error). A recorded event
 * whose publish fails is routed from the ledger at the next start. */
int nx_channel_publish(struct nx_channel *ch, const struct nx_channel_in *in);
/* Would the instance's policy (sender_policy, require_mention) drop this message? Call it before
 * any costly work for a message, above all before downloading its media: NX_CHANNEL_DROPPED =
 * it would be dropped, so download nothing and hand the message to nx_channel_publish without
 * media (which drops it, counts it and, under pairing, sends the code: side effects happen there
 * once); 0 = go on (also while the approved senders are still loading). No side effects. */
int nx_channel_precheck(struct nx_channel *ch, const struct nx_channel_in *in);
/* The adapter reports the end of one send(): status 0 = the service accepted it (provider_id: its
 * message id as text, e.g. Telegram message_id, WhatsApp wamid; may be NULL); < 0 = failed for
 * good (NX_E* code; error = a short reason or NULL). Loop thread. Call it once per send() that
 * returned 0 (a message dropped on purpose, e.g. by an allowlist, counts as done: status 0), never
 * after stop (what stop cancels stays pending and is sent again at the next start). */
void nx_channel_sent(struct nx_channel *ch, const char *key, const char *provider_id, int status,
                     const char *error);
/* The adapter reports that the first `steps` steps of a reply sent in several (text chunks, a
 * photo then text) are delivered, after each step but the last (which nx_channel_sent
 * reports); provider_id: the service's id of the first step. A send resumed after a crash then
 * starts at the first step not delivered (nx_channel_out.steps_done): only a step whose report
 * did not commit (a few ms of group commit) may go twice. Loop thread. */
void nx_channel_progress(struct nx_channel *ch, const char *key, uint32_t steps, const char *provider_id);
/* A later delivery update from the service (WhatsApp statuses): state "delivered", "read" or
 * "failed" ("sent" is accepted and ignored: nx_channel_sent recorded it); error = the service's
 * reason or NULL. A state never goes backwards. Loop thread. */
void nx_channel_status(struct nx_channel *ch, const char *provider_id, const char *state,
                       const char *error);
/* Store thread, inside a write job: kv[key] = value (decimal text), with updated_at; 0 or NX_EDB.
 * The adapters keep their cursors and small state this way. */
int nx_channel_kv_put(sqlite3 *db, const char *key, int64_t value);
/* The bus the instances publish on. */
struct nx_bus *nx_channel_bus(const struct nx_channel *ch);
/* The running instance of type `type` named `instance` (NULL: the unnamed one, else the only
 * instance of that type), or NULL. */
struct nx_channel *nx_channels_find(struct nx_channels *cs, const char *type, const char *instance);
/* Counts one message in nexo_channel_messages_total{channel,instance,direction} ("in"|"out"). */
void nx_channel_count(struct nx_channel *ch, const char *direction);
/* Counts one dropped message in nexo_channel_dropped_total{channel,instance,reason}. */
void nx_channel_count_drop(struct nx_channel *ch, const char *reason);

/* ---- text splitting ---- */

struct nx_text_chunk {
    size_t off; /* byte offset into the text */
    size_t len; /* bytes */
};
/* Splits UTF-8 text into chunks of at most `limit` UTF-16 code units (how Telegram counts; a
 * chunk is never longer in bytes-per-unit than that), cutting at the last paragraph break
 * ("\n\n"), else sentence end (".", "!" or "?" then whitespace), else line break, else word
 * boundary found in the second half of the window (a word boundary anywhere), else at a
 * character boundary. The whitespace at a cut, and at the start and the end of the text, is
 * left out. *out gets an array (NULL when there is no chunk); returns the count. limit >= 1. */
size_t nx_text_split(const char *text, size_t len, size_t limit, struct nx_text_chunk **out);

#endif
