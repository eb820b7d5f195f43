#ifndef NX_CHANNELS_POLICY_H
#define NX_CHANNELS_POLICY_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "agent/router.h"
#include "bus/bus.h"
#include "channels/channels.h"
#include "config/config.h"
#include "config/schema.h"
#include "http/server.h"
#include "store/store.h"
#include "tools/builtin/send_message.h"

/* Who may talk to a channel instance, and how much; who an agent may write to. See
 * docs/channels.md.
 *
 * Per instance (plugins/<type>.yaml, accepted beside every type's own keys):
 *   sender_policy: open | allowlist | pairing   (default open)
 *   allow_from: [sender ids]                    (allowlist: the only senders; pairing: pre-approved)
 *   require_mention: true                       (group chats: only messages that mention the bot)
 *   mention_keywords: [words]                   (also count as a mention, case-insensitive)
 *   pairing_code_ttl: 1h                        (how long a pairing code stays valid)
 * Per agent (agents.yaml): sender_rate_limit {rps, burst} (binding override: inherit | disable |
 * {rps, burst}) and outbound_allowlist {channel: [ids]} for the sends an agent starts itself
 * (the send_message tool). Everything runs on the loop thread. */

/* ---- per-instance policy (policy.c) ---- */

enum nx_sender_policy {
    NX_SENDER_OPEN = 0,
    NX_SENDER_ALLOWLIST,
    NX_SENDER_PAIRING,
};

struct nx_chpolicy_conf {
    int sender_policy;        /* enum nx_sender_policy */
    char **allow_from;        /* NULL-terminated, never NULL */
    bool require_mention;     /* default true; applies to group chats only */
    char **mention_keywords;  /* NULL-terminated, never NULL */
    uint32_t pairing_code_ttl_ms; /* default 1h */
};

/* Takes the framework's keys out of one instance mapping: *conf gets them parsed (problems
 * reported through ctx; defaults when absent), *rest a shallow copy of node without them, to
 * parse with the type's own table (NULL when node is not a mapping: use node itself). Free both
 * with nx_chpolicy_conf_free and nx_chpolicy_rest_free. Returns 0 or NX_ECONFIG. */
int nx_chpolicy_conf_parse(struct nx_conf_ctx *ctx, const struct nx_cnode *node,
                           struct nx_chpolicy_conf **conf, struct nx_cnode **rest);
void nx_chpolicy_conf_free(struct nx_chpolicy_conf *c);
void nx_chpolicy_rest_free(struct nx_cnode *rest);

struct nx_chpolicy;

/* A running policy for one instance; takes ownership of conf. ch and store may be NULL (unit
 * tests): pairing state then lives in memory only and challenges are not sent. */
struct nx_chpolicy *nx_chpolicy_new(struct nx_channel *ch, struct nx_store *store,
                                    struct nx_chpolicy_conf *conf);
/* Accepts NULL. Memory is released once the refresh timer has closed. */
void nx_chpolicy_free(struct nx_chpolicy *p);

enum nx_chpolicy_verdict {
    NX_CHPOLICY_PASS = 0,   /* publish it */
    NX_CHPOLICY_DROP,       /* drop it (reason set) */
    NX_CHPOLICY_CHALLENGE,  /* drop it and send the sender the new pairing code */
    NX_CHPOLICY_RETRY,      /* the approved senders are not loaded yet: try again soon */
};

/* The decision for one inbound message at now_ms (monotonic). On CHALLENGE, code receives the
 * new code (already recorded as pending in memory). *reason: a metric label for DROP
 * ("not_allowed", "not_mentioned", "pairing_pending", "pairing_limit"). */
enum nx_chpolicy_verdict nx_chpolicy_check(struct nx_chpolicy *p, const struct nx_channel_in *in,
                                           uint64_t now_ms, char *code, const char **reason);
/* The same decision without side effects (no code handed out, nothing counted): false when
 * nx_chpolicy_check would drop the message (DROP or CHALLENGE), true for PASS and RETRY. */
bool nx_chpolicy_admits(const struct nx_chpolicy *p, const struct nx_channel_in *in);
/* For channel.c's nx_channel_publish: decides, counts drops, persists and sends a challenge.
 * Returns 0 = publish, 1 = dropped (the adapter treats it as handled), NX_EAGAIN = retry. */
int nx_chpolicy_inbound(struct nx_chpolicy *p, const struct nx_channel_in *in);

/* In-memory state, for tests and the store refresh. */
void nx_chpolicy_set_approved(struct nx_chpolicy *p, const char *sender, bool approved);
bool nx_chpolicy_is_approved(const struct nx_chpolicy *p, const char *sender);
size_t nx_chpolicy_pending(const struct nx_chpolicy *p);
void nx_chpolicy_set_loaded(struct nx_chpolicy *p);

/* Does text mention one of the keywords (case-insensitive, at word boundaries)? */
bool nx_chpolicy_keyword_match(const char *text, char *const *keywords);

/* ---- pairing codes and their table (pairing.c) ---- */

#define NX_PAIRING_CODE_LEN 8
/* 32 letters and digits without 0 O 1 I. */
#define NX_PAIRING_ALPHABET "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
/* How many codes one instance hands out per hour at most, and keeps pending at most. */
#define NX_PAIRING_MAX_PER_HOUR 30
#define NX_PAIRING_MAX_PENDING 64
/* How often a running instance re-reads the approved senders (CLI approvals and revocations). */
#define NX_PAIRING_REFRESH_MS 1000

/* A fresh code from the CSPRNG (OpenSSL RAND_bytes) into out[NX_PAIRING_CODE_LEN + 1].
 * Returns 0 or NX_EIO. */
int nx_pairing_code_new(char *out);
/* "abcd-efgh " -> "ABCDEFGH": upper-cases and drops '-' and spaces. 0, or NX_EINVAL when the
 * result is not NX_PAIRING_CODE_LEN characters of the alphabet. */
int nx_pairing_code_normalize(const char *in, char *out);

struct nx_pairing_row {
    char *channel;  /* type */
    char *instance; /* instance key ("default" when unnamed) */
    char *sender;
    char *chat;
    char *code;     /* pending rows; NULL once approved */
    bool is_approved;
    int64_t created_at, expires_at, approved_at; /* unix seconds; 0 = none */
};
void nx_pairing_rows_free(struct nx_pairing_row *v, size_t n);

/* Store jobs; done runs on the loop. */
typedef void (*nx_pairing_rows_cb)(int rc, struct nx_pairing_row *v, size_t n, void *arg);
/* Rows of one instance (channel NULL: every row), pending ones only while not expired. done owns
 * v (nx_pairing_rows_free). */
void nx_pairing_list(struct nx_store *s, const char *channel, const char *instance,
                     nx_pairing_rows_cb done, void *arg);
/* Records a pending code for a sender (an approved sender stays approved). */
void nx_pairing_put_pending(struct nx_store *s, const char *channel, const char *instance,
                            const char *sender, const char *chat, const char *code,
                            int64_t expires_at, nx_store_done_fn done, void *arg);
/* Approves the pending, unexpired code: done's rc 0, or NX_ENOENT. The approved row is copied
 * into *out when out is not NULL (free its fields with nx_pairing_rows_free(out, 1)-style
 * cleanup: the caller passes a heap row). */
void nx_pairing_approve(struct nx_store *s, const char *code, struct nx_pairing_row *out,
                        nx_store_done_fn done, void *arg);
/* Removes a sender (approved or pending): rc 0, or NX_ENOENT. */
void nx_pairing_revoke(struct nx_store *s, const char *channel, const char *instance,
                       const char *sender, nx_store_done_fn done, void *arg);

/* The admin API (pairing_admin.c): GET /admin/pairing, POST /admin/pairing/approve {code},
 * POST /admin/pairing/revoke {channel, sender}. auth checks the admin token and answers 401
 * itself when it returns false. No store: nothing is mounted. */
typedef bool (*nx_pairing_auth_fn)(struct nx_http_req *req, void *arg);
void nx_pairing_admin_mount(struct nx_http_server *srv, struct nx_store *store, nx_pairing_auth_fn auth,
                            void *arg);

/* `nexo pairing list [--json] | approve CODE | revoke CHANNEL SENDER` on data_dir's database.
 * argv[0] is "pairing". Returns an exit code. */
int nx_cmd_pairing(int argc, char **argv, const char *data_dir);

/* ---- sender rate limit (ratelimit.c) ---- */

struct nx_sender_limiter;

/* max_buckets: how many (agent, channel, sender) buckets are kept at most (0 = 10000); idle ones
 * (full again) are evicted first. bus: where the polite notices go (NULL: none). */
struct nx_sender_limiter *nx_sender_limiter_new(struct nx_bus *bus, size_t max_buckets);
void nx_sender_limiter_free(struct nx_sender_limiter *l);

enum nx_limit_verdict {
    NX_LIMIT_PASS = 0,
    NX_LIMIT_DROP,         /* over the limit */
    NX_LIMIT_DROP_NOTICE,  /* over the limit, and this is the one drop per window to answer */
};
/* One message from key at now_ms (monotonic) against {rps, burst}. */
enum nx_limit_verdict nx_sender_limiter_take(struct nx_sender_limiter *l, const char *key, double rps,
                                             uint32_t burst, uint64_t now_ms);
size_t nx_sender_limiter_size(const struct nx_sender_limiter *l);

/* The limit in force for a message through binding b of agent a: the binding's override
 * (inherit | disable | {rps, burst}) over the agent's sender_rate_limit. false = unlimited. */
bool nx_sender_limit_for(const struct nx_agent_conf *a, const struct nx_binding_conf *b, double *rps,
                         uint32_t *burst);
/* nx_router_gate_fn over a limiter (arg): drops, counts and answers the floods. */
bool nx_sender_limiter_gate(const struct nx_router_gate_in *in, void *arg);

/* ---- sends an agent starts itself (outbound.c) ---- */

/* The outbound_allowlist check for agent a writing to `to` on channel type[.instance] from
 * session_key: true when allowed (the list for that channel is empty or absent, `to` is in it,
 * or `to` is the peer of the session the turn answers). A binding's outbound_allowlist override
 * applies to turns from that binding. */
bool nx_outbound_allowed(const struct nx_agent_conf *a, const char *session_key, const char *type,
                         const char *instance, const char *to);
/* The idempotency key of one send_message (NX_SEND_KEY_LEN chars + NUL into out): a digest of
 * the inbound event the turn answers, agent, session, channel, instance, to, text, buttons,
 * template and media, so a re-run turn (router retry, redelivery, restart) reuses it and the
 * ledger sends the message once (the same message to the same recipient twice in one turn is
 * sent once too). Without an event id (HTTP/MCP turns) the key is random. */
#define NX_SEND_KEY_LEN 35
void nx_send_message_key(const struct nx_send_message_req *rq, const char *instance, char *out);
/* The send_message handler: checks the channel and the allowlist, then publishes the outbound
 * envelope (idempotency key from nx_send_message_key). Returns 0, or NX_ENOENT / NX_EPERM /
 * other with a message for the model in err. */
int nx_channels_send_message(struct nx_channels *cs, const struct nx_config *cfg,
                             const struct nx_send_message_req *rq, char *err, size_t errlen);

#endif
