#ifndef NX_CHANNELS_WHATSAPP_H
#define NX_CHANNELS_WHATSAPP_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "channels/channels.h"

/* WhatsApp Business Cloud API channel: signed webhooks in (on the gateway listener), Graph API
 * POST /{version}/{phone_number_id}/messages out. See docs/channels.md. */

extern const struct nx_channel_type nx_channel_whatsapp;

/* One instance of plugins/whatsapp.yaml (whatsapp_conf.c). */
struct nx_wa_template {
    char *name;
    char *language;
    json_t *components; /* a list, or NULL */
};

struct nx_wa_conf {
    char *instance;
    bool enabled;
    char *phone_number_id;
    char *access_token;
    char *app_secret;
    char *verify_token;
    char *api_url;
    char *graph_version;
    char *proxy;
    bool markdown;                        /* replies' Markdown as WhatsApp formatting */
    struct {
        bool enforce;
        uint32_t hours;
        struct nx_wa_template *template_; /* sent instead outside the window; NULL = fail */
    } window;
    char **allow;                         /* acl.allow_list: wa_ids (digits); empty = everyone */
    json_t *acl_extra;
    uint64_t max_body;                    /* webhook body cap */
    uint64_t max_media_bytes;             /* inbound media downloaded up to this size */
    json_t *extra;
};
extern const struct nx_conf_struct nx_wa_conf_desc;

#define NX_WA_TEXT_LIMIT 4096      /* text.body, characters */
#define NX_WA_BODY_LIMIT 1024      /* interactive body.text and media captions */
#define NX_WA_MAX_BUTTONS 3
#define NX_WA_BUTTON_TITLE 20
#define NX_WA_MAX_ROWS 10
#define NX_WA_ROW_TITLE 24
#define NX_WA_ROW_DESC 72
#define NX_WA_MAX_EVENTS 1000      /* messages + statuses per webhook body */

/* ---- webhook signature (whatsapp_parse.c) ---- */

/* X-Hub-Signature-256 "sha256=<64 hex>" against HMAC-SHA256(secret, body), compared in constant
 * time. False for a missing, malformed or wrong signature. */
bool nx_wa_signature_ok(const char *secret, const char *header, size_t header_len, const char *body,
                        size_t len);
/* Writes "sha256=<hex>" for body (71 bytes with the NUL). For tests and the fakes. */
void nx_wa_sign(const char *secret, const char *body, size_t len, char out[72]);

/* The value of `name` in a query string (hub.mode, hub.verify_token, hub.challenge), percent-
 * and '+'-decoded into out. False when absent, when it holds %00 or a bad escape, or when it does
 * not fit. */
bool nx_wa_query_value(const char *q, size_t qlen, const char *name, char *out, size_t outlen);

/* ---- webhook body ---- */

enum nx_wa_msg_kind {
    NX_WA_MSG_TEXT,    /* text.body */
    NX_WA_MSG_BUTTON,  /* interactive button_reply / list_reply (data = id), or a template's
                        * quick-reply button (data = payload); text = the title */
    NX_WA_MSG_MEDIA,   /* image, document, audio, video, sticker: data = the media id */
    NX_WA_MSG_OTHER,   /* location, reaction, contacts, unsupported...: type says which */
};

struct nx_wa_msg {
    enum nx_wa_msg_kind kind;
    char *phone_number_id; /* value.metadata.phone_number_id: the number it was sent to */
    char *from;            /* the sender's wa_id */
    char *id;              /* wamid */
    char *type;            /* the message's "type" as sent */
    char *name;            /* the sender's profile name, or NULL */
    char *text;            /* body, button title or media caption; NULL when none */
    char *data;            /* button id / payload, media id; NULL otherwise */
    char *mime_type;       /* media */
    char *filename;        /* documents */
    char *context_id;      /* the wamid it replies to, or NULL */
    int64_t timestamp;     /* unix seconds */
};

struct nx_wa_status {
    char *phone_number_id;
    char *id;              /* the wamid of our message */
    char *status;          /* sent, delivered, read, failed (or a later one) */
    char *recipient;
    char *error;           /* "code: title (details)" for failed, else NULL */
    int64_t timestamp;
};

struct nx_wa_webhook {
    struct nx_wa_msg *msgs;
    size_t nmsgs;
    struct nx_wa_status *statuses;
    size_t nstatuses;
};

/* Parses a webhook POST body ({"object":"whatsapp_business_account","entry":[{"changes":[{
 * "field":"messages","value":{...}}]}]}). Changes of other fields, and messages or statuses
 * without the ids they need, are skipped. Returns 0, NX_EPROTO (not JSON, not that object) or
 * NX_ETOOBIG (more than NX_WA_MAX_EVENTS) with a reason in err; *out is then empty. */
int nx_wa_parse_webhook(const char *body, size_t len, struct nx_wa_webhook *out, char *err,
                        size_t errlen);
void nx_wa_webhook_cleanup(struct nx_wa_webhook *w);

/* ---- Graph API requests and errors ---- */

/* A Graph error answer {"error":{"message","type","code","error_subcode","fbtrace_id"}}. */
struct nx_wa_error {
    int64_t code;       /* 0 when absent */
    int64_t subcode;
    char message[256];
    char type[64];
    char fbtrace_id[64];
};
/* Fills e from a response body (anything: fields not found stay empty/0). */
void nx_wa_parse_error(const char *body, size_t len, struct nx_wa_error *e);
/* What the code means and what to do, for the log line ("" when nothing to add). */
const char *nx_wa_error_hint(int64_t code);
/* Whether a failed send is worth retrying: HTTP 429/5xx/no answer, or a throttling or
 * temporary Graph code. */
bool nx_wa_error_is_transient(long http_status, int64_t code);
/* The wamid of an accepted send ({"messages":[{"id":...}]}), into out; false when absent. */
bool nx_wa_parse_sent(const char *body, size_t len, char *out, size_t outlen);

/* Request bodies for POST /{version}/{phone_number_id}/messages (new references). reply_to (a
 * wamid) adds "context", NULL for none. */
json_t *nx_wa_text_request(const char *to, const char *text, size_t len, const char *reply_to);
json_t *nx_wa_template_request(const char *to, const char *name, const char *language,
                               const json_t *components);
/* From the outbound payload's fields. Each returns NULL with a reason in err when the value
 * breaks the Cloud API's rules (at most 3 buttons, titles of 20 characters, 10 rows, ...).
 * body is the message text shown above the buttons / list (1..1024 characters). */
json_t *nx_wa_template_from_payload(const char *to, const json_t *tmpl, char *err, size_t errlen);
json_t *nx_wa_buttons_request(const char *to, const char *body, const json_t *buttons,
                              const char *reply_to, char *err, size_t errlen);
json_t *nx_wa_list_request(const char *to, const char *body, const json_t *list,
                           const char *reply_to, char *err, size_t errlen);
json_t *nx_wa_media_request(const char *to, const json_t *media, const char *reply_to, char *err,
                            size_t errlen);

/* Characters (code points) in UTF-8 text. */
size_t nx_wa_chars(const char *s);

/* ---- inbound media (whatsapp_media.c) ---- */

/* The answer of GET /{version}/{media-id}. */
struct nx_wa_media_info {
    char *url;
    char *mime_type;
    char *sha256;
    int64_t file_size;     /* -1 when absent */
};
/* NX_EPROTO when it is not JSON or has no http(s) url. */
int nx_wa_parse_media_url(const char *body, size_t len, struct nx_wa_media_info *out);
void nx_wa_media_info_cleanup(struct nx_wa_media_info *m);

/* path, mime (Meta's mime_type, may be NULL) and size on rc 0; else err says why. */
typedef void (*nx_wa_fetch_done_fn)(int rc, const char *path, const char *mime, int64_t size,
                                    const char *err, void *udata);
struct nx_wa_fetch_opts {
    struct nx_http_client *http;
    const char *api_base;   /* "{api_url}/{version}/" */
    const char *auth;       /* "Bearer <token>" */
    const char *proxy;
    const char *media_id;
    const char *dir;
    const char *name;       /* the file's name, nexo-made; the extension follows mime_type */
    uint64_t max_bytes;
    nx_wa_fetch_done_fn on_done;
    void *udata;
};
struct nx_wa_fetch;
/* Looks the media id up, then downloads the file (size cap, SHA-256 check). NULL with *rc <
 * 0 (a bad media id, or the client is closing) when it cannot start; on_done never runs then. */
struct nx_wa_fetch *nx_wa_fetch_start(const struct nx_wa_fetch_opts *opts, int *rc);
/* on_done runs with NX_ECANCELED (from within this call). */
void nx_wa_fetch_cancel(struct nx_wa_fetch *f);

#endif
