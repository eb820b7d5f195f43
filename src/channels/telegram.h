#ifndef NX_CHANNELS_TELEGRAM_H
#define NX_CHANNELS_TELEGRAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "channels/channels.h"

/* Telegram Bot API channel (long polling getUpdates, sendMessage). See docs/channels.md. */

extern const struct nx_channel_type nx_channel_telegram;

/* One instance of plugins/telegram.yaml (telegram_conf.c). */
struct nx_tg_ids {
    int64_t *v;
    size_t n;
};

struct nx_tg_conf {
    char *token;
    char *api_url;
    char *instance;
    char *proxy;
    bool typing;
    bool markdown;           /* render the agent's Markdown as Telegram HTML */
    uint64_t max_media_bytes; /* inbound downloads and uploads */
    struct {
        bool enabled;
        uint32_t interval_ms;
        uint32_t watchdog_ms; /* a getUpdates unanswered this long past its timeout restarts */
        json_t *extra;
    } polling;
    struct nx_tg_ids allow;
    json_t *extra;
    struct {                 /* webhook mode (telegram_webhook.c) instead of polling */
        bool enabled;
        char *secret_token;  /* X-Telegram-Bot-Api-Secret-Token; required when enabled */
        char *url;           /* registered with setWebhook at start; NULL = done by hand */
    } webhook;
};
extern const struct nx_conf_struct nx_tg_conf_desc;

#define NX_TG_TEXT_LIMIT 4096   /* sendMessage text, in UTF-16 code units */
#define NX_TG_MAX_UPDATES 1000  /* per getUpdates answer at most (the API sends <= 100) */

#define NX_TG_CAPTION_LIMIT 1024    /* sendPhoto/sendDocument caption, in UTF-16 code units */
#define NX_TG_CALLBACK_DATA_MAX 64  /* callback_data, in bytes */

/* A photo or document attached to a message (for a photo, its largest size). */
struct nx_tg_media {
    const char *type;  /* "photo" or "document" (static) */
    char *file_id;
    char *file_name;   /* the sender's name for it (documents), or NULL: never a path */
    char *mime;        /* or NULL */
    int64_t size;      /* bytes as Telegram announced them; 0 = unknown */
};

/* One update from getUpdates. Messages with text or a photo/document, and button presses
 * (callback_query) are kept; anything else has has_message false and is skipped (its
 * update_id still advances the offset). */
struct nx_tg_update {
    int64_t update_id;
    bool has_message;  /* a message with text or media, or a button press */
    int64_t chat_id;
    int64_t from_id;   /* the chat id when the message has no sender (channel posts) */
    int64_t message_id;
    int64_t date;      /* unix seconds */
    bool is_group;     /* chat.type group or supergroup */
    char *text;        /* the text, or a media's caption; NULL when there is none */
    struct nx_tg_media *media; /* at most one per message (Telegram sends albums as messages) */
    char *callback_id; /* a button press: its id (for answerCallbackQuery); else NULL */
    char *callback_data; /* ... and the button's data ("" when it had none) */
    /* Whom the message addresses (group mention gating): the @usernames of its "mention"
     * entities, lower-case, each followed by a space ("@kate_bot @bob "), or NULL; and the
     * author of the message it replies to (0 = none). */
    char *mentions;
    int64_t reply_to_from;
    /* It starts with a command that names no bot ("/menu", not "/menu@other_bot"): a bot in
     * privacy mode gets only the commands meant for it (nx_tg_addresses_bot). */
    bool is_bare_command;
};

/* Parses a getUpdates answer {"ok":true,"result":[...]}. Elements without an integer update_id
 * are skipped; more than NX_TG_MAX_UPDATES is NX_ETOOBIG. Returns 0 (*out NULL when empty),
 * NX_EPROTO (not JSON, ok not true, result not a list) with a reason in err. */
int nx_tg_parse_updates(const char *body, size_t len, struct nx_tg_update **out, size_t *n,
                        char *err, size_t errlen);
void nx_tg_updates_free(struct nx_tg_update *v, size_t n);

/* Parses one update object (a getUpdates element or a webhook body) into *u (zeroed first).
 * Returns false when it has no integer update_id (then *u holds nothing to free). */
bool nx_tg_parse_update(const json_t *e, struct nx_tg_update *u);
/* Frees what *u holds (not u itself). */
void nx_tg_update_cleanup(struct nx_tg_update *u);
/* Whether a group message addresses the bot (mention gating): a button press on its message, a
 * reply to it (bot_id), its @username (mention, "@name " lower-case, NULL when unknown), or a
 * command naming no bot while the bot is in privacy mode (!can_read_all: getMe's
 * can_read_all_group_messages), as Telegram then hands it only the commands meant for it. */
bool nx_tg_addresses_bot(const struct nx_tg_update *u, const char *mention, int64_t bot_id,
                         bool can_read_all);

/* Outbound `buttons` ([[{text, data} | {text, url}], ...]) -> a reply_markup object
 * {"inline_keyboard": ...} in *out. Checks: at most 100 buttons, 8 per row, text 1..64 bytes,
 * data <= NX_TG_CALLBACK_DATA_MAX bytes, url http(s):// or tg://, exactly one of data/url.
 * Returns 0 or NX_EINVAL with the reason in err. */
int nx_tg_keyboard(const json_t *buttons, json_t **out, char *err, size_t errlen);

/* From a getFile answer: the file_path (validated: no "..", no leading "/", printable ASCII)
 * and file_size (0 when absent). Returns 0 or NX_EPROTO. */
int nx_tg_parse_file(const char *body, size_t len, char *path, size_t pathlen, int64_t *size);

/* From a failed Bot API answer {"ok":false,"error_code":..,"description":..,
 * "parameters":{"retry_after":N}}: the description (or "" ) into desc and retry_after in
 * seconds (0 when absent). Never fails. */
void nx_tg_parse_error(const char *body, size_t len, char *desc, size_t desclen,
                       uint32_t *retry_after);

/* ---- media (telegram_media.c) ---- */

/* Fetches one file a user sent: getFile, then the download (at most max_bytes), written to
 * dir/name.<ext> (ext from Telegram's file path, else "jpg"/"bin"). on_done gets 0 and the
 * path, NX_ETOOBIG (larger than max_bytes; size when known), NX_ECANCELED, or another error
 * with a short reason. Strings are copied. */
typedef void (*nx_tg_fetch_done_fn)(int rc, const char *path, int64_t size, const char *err, void *udata);
struct nx_tg_fetch_opts {
    struct nx_http_client *http;
    const char *api_base;  /* "<api_url>/bot<token>/" */
    const char *file_base; /* "<api_url>/file/bot<token>/" */
    const char *proxy;     /* or NULL */
    const char *file_id;
    const char *type;      /* "photo" | "document" (static) */
    const char *dir;
    const char *name;      /* file name without extension: made by nexo, never the sender's */
    uint64_t max_bytes;
    nx_tg_fetch_done_fn on_done;
    void *udata;
};
struct nx_tg_fetch;
/* NULL when the HTTP client refuses the call (closing); on_done is then never called. */
struct nx_tg_fetch *nx_tg_fetch_start(const struct nx_tg_fetch_opts *opts);
/* on_done runs (NX_ECANCELED) from within. */
void nx_tg_fetch_cancel(struct nx_tg_fetch *f);
/* mkdir -p with 0700 directories. Returns 0 or NX_EIO. */
int nx_tg_mkdirs(const char *dir);
/* Reads a file to upload: it must resolve (symlinks followed) to a regular file under
 * allowed_dir, of at most max_bytes. Returns 0 (*data malloc'd) or NX_ENOENT / NX_EINVAL /
 * NX_EIO / NX_ETOOBIG with a reason in err. Blocking: small files on a local disk. */
int nx_tg_read_upload(const char *path, const char *allowed_dir, uint64_t max_bytes, char **data,
                      size_t *len, char *err, size_t errlen);
struct nx_multipart;
/* A sendPhoto/sendDocument body: each member of fields as a form field (strings as they are,
 * other values as JSON), then the file as `field`. */
void nx_tg_upload_body(struct nx_multipart *m, const json_t *fields, const char *field,
                       const char *filename, const char *mime, const char *data, size_t len);

#endif
