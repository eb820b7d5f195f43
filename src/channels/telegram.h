#ifndef NX_CHANNELS_TELEGRAM_H
#define NX_CHANNELS_TELEGRAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

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
    struct {
        bool enabled;
        uint32_t interval_ms;
        json_t *extra;
    } polling;
    struct nx_tg_ids allow;
    json_t *extra;
};
extern const struct nx_conf_struct nx_tg_conf_desc;

#define NX_TG_TEXT_LIMIT 4096   /* sendMessage text, in UTF-16 code units */
#define NX_TG_MAX_UPDATES 1000  /* per getUpdates answer at most (the API sends <= 100) */

/* One update from getUpdates. Only text messages are kept in full; anything else has
 * has_message false and is skipped (its update_id still advances the offset). */
struct nx_tg_update {
    int64_t update_id;
    bool has_message;  /* a message with text */
    int64_t chat_id;
    int64_t from_id;   /* the chat id when the message has no sender (channel posts) */
    int64_t message_id;
    int64_t date;      /* unix seconds */
    bool is_group;     /* chat.type group or supergroup */
    char *text;
};

/* Parses a getUpdates answer {"ok":true,"result":[...]}. Elements without an integer update_id
 * are skipped; more than NX_TG_MAX_UPDATES is NX_ETOOBIG. Returns 0 (*out NULL when empty),
 * NX_EPROTO (not JSON, ok not true, result not a list) with a reason in err. */
int nx_tg_parse_updates(const char *body, size_t len, struct nx_tg_update **out, size_t *n,
                        char *err, size_t errlen);
void nx_tg_updates_free(struct nx_tg_update *v, size_t n);

/* From a failed Bot API answer {"ok":false,"error_code":..,"description":..,
 * "parameters":{"retry_after":N}}: the description (or "" ) into desc and retry_after in
 * seconds (0 when absent). Never fails. */
void nx_tg_parse_error(const char *body, size_t len, char *desc, size_t desclen,
                       uint32_t *retry_after);

#endif
