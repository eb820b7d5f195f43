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
};

struct nx_channel_type {
    const char *name;                   /* "telegram": plugins/<name>.yaml and the subjects */
    const struct nx_conf_struct *conf;  /* one instance's fields; conf->size bytes */
    size_t instance_offset;             /* the `char *instance` field inside that struct */
    /* Starts an instance from its parsed config (valid until stop returns; copy what outlives
     * it). *state is handed back to send and stop. Returns 0 or a negative NX_E* code. */
    int (*start)(struct nx_channel *ch, const void *conf, void **state);
    /* Stops: cancels what is in flight, stops using ch; memory may be released later, once the
     * loop has closed the handles (the adapter's business). */
    void (*stop)(void *state);
    /* Queues an outbound message. 0 = accepted (the adapter delivers it, in order, retrying
     * what is transient); < 0 = refused now (the bus redelivers it). */
    int (*send)(void *state, const struct nx_channel_out *out);
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
};
/* Publishes on plugin.inbound.<type>[.<instance>] and counts it. Returns nx_bus_publish's
 * result (NX_EAGAIN when the disk queue is full: try again later). */
int nx_channel_publish(struct nx_channel *ch, const struct nx_channel_in *in);
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
