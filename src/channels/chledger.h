#ifndef NX_CHANNELS_CHLEDGER_H
#define NX_CHANNELS_CHLEDGER_H

#include "channels/channels.h"

/* The channel framework's side of the exactly-once ledger (chledger.c, docs/bus.md), kept out of
 * channel.c: channel.c calls these at its few hook points.
 *  - inbound: an event is recorded in the ledger first; a duplicate (same event key) is dropped
 *    and counted in nexo_ledger_duplicates_total{channel}; a new one is then published;
 *  - outbound: each reply's idempotency key is claimed in the ledger before the adapter's send
 *    (keys already sent are skipped), the adapter's nx_channel_sent marks it sent or failed, and
 *    replies still pending (never confirmed) are sent again when the instance starts. */

struct nx_chledger;

/* The delivery function of channel.c (its outbound subscriber): called with a bus message built
 * from the ledger's copy once the key is claimed. */
typedef int (*nx_chledger_deliver_fn)(struct nx_bus *bus, struct nx_bus_msg *msg, void *arg);

/* NULL when the channel has no store (then everything passes straight through). Starts the
 * resend of pending replies. */
struct nx_chledger *nx_chledger_new(struct nx_channel *ch, nx_chledger_deliver_fn deliver);
/* Detaches what is in flight (their completions then do nothing). Accepts NULL. */
void nx_chledger_free(struct nx_chledger *l);

/* Records env (published on env->topic) under event_key (NULL: the envelope id) and publishes it
 * when new; without a ledger publishes at once. Counts "in" when published. Returns 0 or the
 * synchronous error (serialization, or nx_bus_publish's without a ledger). */
int nx_chledger_publish(struct nx_channel *ch, struct nx_chledger *l, const struct nx_envelope *env,
                        const char *event_key);

/* For the outbound subscriber: true when the ledger takes this delivery (it claims the key and
 * calls `deliver` later, or skips it); false when the subscriber should handle it now (no
 * ledger, or this is the ledger's own call of `deliver`). */
bool nx_chledger_outbound(struct nx_chledger *l, struct nx_bus_msg *msg);

/* The idempotency key of an outbound event: the payload's "key", else the envelope id. */
const char *nx_chledger_key(const struct nx_envelope *env);

/* Gateway role (docs/scaling.md): channels created from now on also take their replies from a
 * durable consumer of the outbound stream ("nexo_out_<label>") when the bus has JetStream, so
 * replies published while this process was down are sent when it is back. Each is acknowledged
 * once the ledger recorded its claim (a key seen before is skipped), and while that consumer is
 * active the core deliveries of the same replies are left to it. Process-wide; call before
 * nx_channels_new. */
void nx_chledger_use_jetstream(bool on);

/* For the outbound subscriber, during the ledger's delivery msg: the steps of that reply
 * delivered before (a send resumed after a restart), else 0. */
uint32_t nx_chledger_steps_done(const struct nx_chledger *l, const struct nx_bus_msg *msg);
/* Records that the first `steps` steps of reply key are delivered (nx_channel_progress). */
void nx_chledger_progress(struct nx_chledger *l, const char *key, uint32_t steps, const char *provider_id);

void nx_chledger_sent(struct nx_chledger *l, const char *key, const char *provider_id, int status,
                      const char *error);
void nx_chledger_status(struct nx_chledger *l, const char *provider_id, const char *state,
                        const char *error);

#endif
