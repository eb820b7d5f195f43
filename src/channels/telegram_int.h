#ifndef NX_CHANNELS_TELEGRAM_INT_H
#define NX_CHANNELS_TELEGRAM_INT_H

#include <errno.h>
#include <stdlib.h>

#include "channels/markdown.h"
#include "channels/sendq.h"
#include "channels/telegram.h"

/* Inside the Telegram channel: the instance state shared by telegram.c (polling, inbound,
 * start/stop, watchdog) and telegram_send.c (the outbound queue, typing). Loop thread only. */

#define TYPING_EVERY_MS 4000
#define TYPING_MAX_MS 120000
#define TYPING_CHATS_MAX 256

/* One outbound message: an optional media step, then its text chunks. */
struct out_msg {
    struct nx_sendq_item qi; /* first: the queue's link */
    char *chat;
    struct nx_md_chunk *chunks; /* html NULL when sent as plain text */
    size_t nchunks;
    json_t *media;      /* {type, path|url}: sent first; or NULL */
    struct nx_md_chunk caption; /* the media's caption (html NULL: plain), or all NULL */
    json_t *markup;     /* reply_markup for the last step, or NULL */
    char *key;          /* for nx_channel_sent; NULL = nexo's own note */
    char *first_id;     /* message_id of the first step Telegram accepted */
    size_t sent;        /* steps delivered */
    size_t nsteps;
    bool is_plain;      /* the current step is resent without parse_mode */
    int64_t reply_to;   /* 0 = none */
    uint32_t attempts;  /* failures of the current step */
};

/* A chat that gets "typing" until its reply goes out. */
struct typing {
    int64_t chat;
    uint64_t until_ms;
};

struct tg {
    int refs;
    bool is_stopped;
    struct nx_channel *ch; /* NULL once stopped */
    struct nx_http_client *http;
    struct nx_store *store;
    char *label;
    char *base;            /* <api_url>/bot<token>/ : never logged */
    char *bot_id;          /* the token's numeric prefix, for event ids */
    char *mention;         /* "@<bot username> " lower-case, from getMe; NULL until known */
    bool is_me_done;       /* getMe answered or failed: webhook updates wait for it (gating) */
    bool is_me_wait_said;
    int64_t bot_user_id;   /* getMe's id (the token's prefix until then): replies to the bot */
    bool can_read_all;     /* getMe's can_read_all_group_messages: privacy mode off (or admin) */
    char *proxy;
    char *kv_key;
    bool is_polling;
    bool has_offset;
    bool typing;
    bool markdown;
    uint32_t interval_ms;
    uint32_t watchdog_ms;
    uint64_t max_media;
    char *file_base;       /* <api_url>/file/bot<token>/ : never logged */
    char *media_dir;       /* <data>/media/telegram/<instance> */
    char *media_root;      /* <data>/media: uploads come from here only */
    uint32_t long_poll_s;
    struct nx_tg_ids allow;
    int64_t offset;        /* the next update_id wanted */
    uint64_t poll_started_ms;
    uint32_t backoff_ms;
    uv_timer_t poll_timer;
    struct nx_http_call *poll_call;
    struct nx_sendq q;     /* struct out_msg, in order (NX_TG_QUEUE_MAX wait at most) */
    /* the getUpdates answer being handled, in order (a media download pauses it) */
    struct nx_tg_update *batch;
    size_t nbatch, bi;
    int64_t batch_offset;
    bool is_batch_stalled;
    struct nx_tg_fetch *fetch;
    int media_rc;          /* the fetch result for batch[bi]; 1 = none yet */
    int64_t noted[32];     /* updates lately answered with a note of ours (a file too large) */
    unsigned nnoted;
    char *media_path;
    int64_t media_size;
    bool is_offset_busy;   /* a store read or write of the offset is pending */
    uint64_t progress_ms;  /* the polling cycle last moved */
    uv_timer_t watchdog;
    uv_timer_t typing_timer;
    struct typing typing_v[TYPING_CHATS_MAX];
    size_t ntyping;
    char *webhook_secret;  /* webhook mode: the secret token; NULL = polling (telegram_webhook.c) */
    /* webhook mode: requests whose update waits for the one being handled (hook_cur), in order */
    struct tg_hook *hooks, **hooks_tail, *hook_cur;
    size_t nhooks;
    bool is_hook_looping;  /* hook_next is on the stack (an update handled at once re-enters it) */
};

static inline struct tg *tg_ref(struct tg *tg)
{
    tg->refs++;
    return tg;
}

static inline bool tg_parse_i64(const char *s, int64_t *out)
{
    char *end = NULL;
    errno = 0;
    long long x = s && *s ? strtoll(s, &end, 10) : 0;
    if (!s || !*s || *end || errno)
        return false;
    *out = x;
    return true;
}

static inline bool tg_is_allowed(const struct tg *tg, int64_t chat)
{
    if (tg->allow.n == 0)
        return true;
    for (size_t i = 0; i < tg->allow.n; i++)
        if (tg->allow.v[i] == chat)
            return true;
    return false;
}

/* telegram.c */
void nx_tg_unref(struct tg *tg);
/* A Bot API call (udata = a reference on tg); body of content type ctype, NULL = GET. NULL when
 * the client refuses it (then done never runs). */
struct nx_http_call *nx_tg_call_raw(struct tg *tg, const char *method, const char *query,
                                    const char *ctype, const char *body, size_t body_len,
                                    uint32_t timeout_ms, uint64_t max_bytes, nx_http_done_fn done);
struct nx_http_call *nx_tg_call(struct tg *tg, const char *method, const char *query, json_t *body,
                                uint32_t timeout_ms, uint64_t max_bytes, nx_http_done_fn done);

/* telegram_send.c */
/* The channel type's send. */
int nx_tg_send(void *state, const struct nx_channel_out *out);
/* Queues a plain text of nexo's own (a note to the user; not reported to the ledger). */
void nx_tg_queue_note(struct tg *tg, int64_t chat, const char *text);
void nx_tg_out_msg_free(struct out_msg *m);
void nx_tg_on_send_timer(void *owner);
#define NX_TG_QUEUE_MAX 1000
void nx_tg_on_typing_timer(uv_timer_t *t);
/* "typing" in chat now and every TYPING_EVERY_MS until its reply is out (TYPING_MAX_MS at most). */
void nx_tg_typing_start(struct tg *tg, int64_t chat);
/* For calls whose answer only matters in the debug log. */
void nx_tg_on_aux_done(int rc, const struct nx_http_response *res, const char *err, void *udata);

/* telegram.c: hands updates a webhook brought (taking v) to the processing polling uses; call it
 * only while no batch is being handled. No offset applies (repeats are recognised by their event
 * key). When the batch is done (at once, or after a media download) nx_tg_webhook_done runs. */
void nx_tg_feed(struct tg *tg, struct nx_tg_update *v, size_t n);

/* telegram_webhook.c */
/* The channel type's webhook handler (POST /webhooks/telegram[/<instance>]). */
void nx_tg_webhook(void *state, struct nx_http_req *req);
/* Webhook mode at start: keeps the secret, calls setWebhook when conf->webhook.url is set. */
void nx_tg_webhook_start(struct tg *tg, const struct nx_tg_conf *conf);
/* The update fed last is handled (is_stalled: it could not be published now): answers its
 * request and feeds the next one waiting. */
void nx_tg_webhook_done(struct tg *tg, bool is_stalled);
/* getMe is done (answered or not): the webhook updates that waited for it go on. */
void nx_tg_webhook_resume(struct tg *tg);
/* At stop: answers every request still waiting 503 (Telegram delivers those updates again). */
void nx_tg_webhook_stop(struct tg *tg);
/* Frees what webhook mode holds (from the last unref). */
void nx_tg_webhook_cleanup(struct tg *tg);
/* Requests queued behind the update being handled at most; 503 beyond. */
#define NX_TG_HOOKS_MAX 100

#endif
