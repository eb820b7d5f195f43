#ifndef NX_CHANNELS_WHATSAPP_INT_H
#define NX_CHANNELS_WHATSAPP_INT_H

#include <stdbool.h>
#include <stdint.h>

#include "channels/sendq.h"
#include "channels/whatsapp.h"

/* Shared by whatsapp.c (start, stop, sending, the webhook's checks) and whatsapp_in.c (what a
 * webhook brings in: media downloads, publishing in order, statuses). Not for other modules. */

struct out_msg {
    struct nx_sendq_item qi; /* first: the queue's link */
    char *to;
    char *key;
    json_t *reqs;       /* request bodies, in order */
    size_t sent;        /* accepted so far */
    bool is_template;   /* a template from the start: no window applies */
    bool is_fallback;   /* replaced by the window template */
    char *first_id;     /* wamid of the first accepted request */
    uint32_t attempts;  /* failures of the current request */
};

struct wa {
    int refs;
    bool is_stopped;
    bool markdown;         /* replies rendered from Markdown (*bold*, _italic_, ~strike~) */
    bool is_enabled;
    struct nx_channel *ch; /* NULL once stopped */
    struct nx_http_client *http;
    struct nx_store *store;
    char *label;
    char *url;             /* .../{phone_number_id}/messages */
    char *auth;            /* "Bearer <token>": never logged */
    char *pnid;
    char *app_secret;
    char *verify_token;
    char *proxy;
    char **allow;
    uint64_t max_body;
    bool enforce_window;
    uint64_t window_ms;
    struct nx_wa_template tmpl; /* name NULL = none */
    json_t *last_in;       /* wa_id -> unix ms of the last inbound message */
    bool is_loaded;        /* last_in read from the store */
    char *kv_prefix;
    struct nx_sendq q;     /* struct out_msg, in order */
    /* inbound media: webhooks wait, in order, while their media downloads */
    char *media_base;      /* "{api_url}/{version}/" */
    char *media_dir;       /* <data>/media/whatsapp/<instance> */
    uint64_t max_media;
    struct nx_wa_batch *batches; /* the first runs; the rest wait behind it */
    size_t nbatches;
};

struct wa *nx_wa_ref(struct wa *wa);
void nx_wa_unref(struct wa *wa);
bool nx_wa_is_allowed(const struct wa *wa, const char *who);
/* Remembers when the user last wrote (the customer service window). */
void nx_wa_note_inbound(struct wa *wa, const char *from, int64_t ts_s);
void nx_wa_take_webhook(struct wa *wa, struct nx_http_req *req, struct nx_wa_webhook *w);
/* At stop: the batch downloading ends (answered 503), and the rest after it. */
void nx_wa_batches_stop(struct wa *wa);

#endif
