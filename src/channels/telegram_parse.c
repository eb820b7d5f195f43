#include <ctype.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "channels/telegram.h"
#include "core/alloc.h"
#include "core/buf.h"
#include "core/error.h"

/* Parsing the Bot API's answers (outside input: see tests/fuzz/fuzz_telegram_update.c). */

static bool get_int(const json_t *o, const char *key, int64_t *out)
{
    const json_t *v = json_object_get(o, key);
    if (!json_is_integer(v))
        return false;
    *out = (int64_t)json_integer_value(v);
    return true;
}

static char *dup_str(const json_t *o, const char *key)
{
    const char *v = json_string_value(json_object_get(o, key));
    return v ? nx_strdup(v) : NULL;
}

/* The largest photo size, or the document. */
static void parse_media(const json_t *m, struct nx_tg_update *u)
{
    const json_t *photo = json_object_get(m, "photo");
    const json_t *doc = json_object_get(m, "document");
    const json_t *pick = NULL;
    int64_t best = -1;
    if (json_is_array(photo)) {
        size_t i;
        const json_t *p;
        json_array_foreach(photo, i, p) {
            int64_t w = 0, h = 0, sz = 0;
            if (!json_string_value(json_object_get(p, "file_id")))
                continue;
            get_int(p, "width", &w);
            get_int(p, "height", &h);
            get_int(p, "file_size", &sz);
            int64_t score = (w > 0 && h > 0 && w < 100000 && h < 100000) ? w * h : sz;
            if (score >= best) {
                best = score;
                pick = p;
            }
        }
    } else if (json_is_object(doc) && json_string_value(json_object_get(doc, "file_id"))) {
        pick = doc;
    }
    if (!pick)
        return;
    struct nx_tg_media *md = nx_calloc(1, sizeof *md);
    md->type = pick == doc ? "document" : "photo";
    md->file_id = dup_str(pick, "file_id");
    if (pick == doc) {
        md->file_name = dup_str(doc, "file_name");
        md->mime = dup_str(doc, "mime_type");
    } else {
        md->mime = nx_strdup("image/jpeg");
    }
    if (!get_int(pick, "file_size", &md->size) || md->size < 0)
        md->size = 0;
    u->media = md;
}

/* Byte offset in UTF-8 text of a UTF-16 code unit offset (Telegram's entity offsets), or -1. */
static long utf16_to_byte(const char *text, int64_t units)
{
    const unsigned char *s = (const unsigned char *)text;
    int64_t n = 0;
    size_t i = 0;
    while (n < units && s[i]) {
        size_t len = s[i] < 0x80 ? 1 : s[i] < 0xe0 ? 2 : s[i] < 0xf0 ? 3 : 4;
        for (size_t k = 1; k < len; k++)
            if (!s[i + k])
                return -1;
        n += len == 4 ? 2 : 1;
        i += len;
    }
    return n == units ? (long)i : -1;
}

/* reply_to_message.from.id and the "mention" entities' text, for mention gating; a command
 * addressed to a bot ("/help@kate_bot", Telegram's way in groups) mentions that bot, and one
 * that opens the message naming none ("/help") is noted (nx_tg_addresses_bot). */
static void parse_mentions(const json_t *m, const char *text, bool is_caption, struct nx_tg_update *u)
{
    const json_t *ents = json_object_get(m, is_caption ? "caption_entities" : "entities");
    size_t i;
    const json_t *e;
    char buf[512];
    size_t len = 0;
    if (!get_int(json_object_get(json_object_get(m, "reply_to_message"), "from"), "id", &u->reply_to_from))
        u->reply_to_from = 0;
    if (!text || !json_is_array(ents))
        return;
    json_array_foreach(ents, i, e) {
        int64_t off = 0, n = 0;
        const char *type = json_string_value(json_object_get(e, "type"));
        bool is_command = type && strcmp(type, "bot_command") == 0;
        if (i >= 32 || !type || (strcmp(type, "mention") != 0 && !is_command) ||
            !get_int(e, "offset", &off) || !get_int(e, "length", &n) || off < 0 || n < 2 || n > 64 + 33)
            continue;
        long a = utf16_to_byte(text, off), b = a < 0 ? -1 : utf16_to_byte(text + a, n);
        if (is_command && b > 0) { /* the "@bot" of "/cmd@bot", if any */
            const char *at = memchr(text + a, '@', (size_t)b);
            if (!at && off == 0)
                u->is_bare_command = true;
            b = at ? b - (long)(at - (text + a)) : -1;
            a = at ? (long)(at - text) : a;
        }
        if (b < 2 || b > 64 || text[a] != '@' || len + (size_t)b + 2 > sizeof buf)
            continue;
        for (long k = 0; k < b; k++)
            buf[len++] = (char)tolower((unsigned char)text[a + k]);
        buf[len++] = ' ';
    }
    if (len) {
        buf[len] = '\0';
        u->mentions = nx_strdup(buf);
    }
}

static void parse_message(const json_t *m, struct nx_tg_update *u)
{
    const json_t *chat = json_object_get(m, "chat");
    const char *text = json_string_value(json_object_get(m, "text"));
    if (!text)
        text = json_string_value(json_object_get(m, "caption"));
    if (text && nx_str_is_blank(text))
        text = NULL; /* white space only says nothing (and a model's API refuses it) */
    if (!json_is_object(m) || !json_is_object(chat))
        return;
    if (!get_int(chat, "id", &u->chat_id) || !get_int(m, "message_id", &u->message_id))
        return;
    parse_media(m, u);
    if (!text && !u->media)
        return;
    if (!get_int(json_object_get(m, "from"), "id", &u->from_id))
        u->from_id = u->chat_id;
    if (!get_int(m, "date", &u->date))
        u->date = 0;
    const char *type = json_string_value(json_object_get(chat, "type"));
    u->is_group = type && (strcmp(type, "group") == 0 || strcmp(type, "supergroup") == 0);
    u->text = text ? nx_strdup(text) : NULL;
    u->has_message = true;
    parse_mentions(m, text, !json_object_get(m, "text"), u);
}

/* A button press: {id, from, message: {chat, message_id}, data}. */
static void parse_callback(const json_t *cq, struct nx_tg_update *u)
{
    const json_t *m = json_object_get(cq, "message");
    const char *id = json_string_value(json_object_get(cq, "id"));
    const char *data = json_string_value(json_object_get(cq, "data"));
    if (!id || !get_int(json_object_get(cq, "from"), "id", &u->from_id))
        return;
    if (!get_int(json_object_get(m, "chat"), "id", &u->chat_id))
        u->chat_id = u->from_id; /* an inline-mode message: answer the presser */
    if (!get_int(m, "message_id", &u->message_id))
        u->message_id = 0;
    if (!get_int(m, "date", &u->date))
        u->date = 0;
    const char *type = json_string_value(json_object_get(json_object_get(m, "chat"), "type"));
    u->is_group = type && (strcmp(type, "group") == 0 || strcmp(type, "supergroup") == 0);
    u->callback_id = nx_strdup(id);
    u->callback_data = nx_strdup(data ? data : "");
    u->has_message = true;
}

bool nx_tg_parse_update(const json_t *e, struct nx_tg_update *u)
{
    memset(u, 0, sizeof *u);
    if (!json_is_object(e) || !get_int(e, "update_id", &u->update_id))
        return false;
    const json_t *m = json_object_get(e, "message"); /* edits and the rest: skipped */
    const json_t *cq = json_object_get(e, "callback_query");
    if (m)
        parse_message(m, u);
    else if (json_is_object(cq))
        parse_callback(cq, u);
    return true;
}

bool nx_tg_addresses_bot(const struct nx_tg_update *u, const char *mention, int64_t bot_id,
                         bool can_read_all)
{
    return u->callback_id || (u->is_bare_command && !can_read_all) ||
           (u->reply_to_from && u->reply_to_from == bot_id) ||
           (mention && u->mentions && strstr(u->mentions, mention));
}

void nx_tg_update_cleanup(struct nx_tg_update *u)
{
    free(u->text);
    if (u->media) {
        free(u->media->file_id);
        free(u->media->file_name);
        free(u->media->mime);
        free(u->media);
    }
    free(u->callback_id);
    free(u->callback_data);
    free(u->mentions);
    memset(u, 0, sizeof *u);
}

int nx_tg_parse_updates(const char *body, size_t len, struct nx_tg_update **out, size_t *n,
                        char *err, size_t errlen)
{
    json_error_t jerr;
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    struct nx_tg_update *v = NULL;
    size_t count = 0;
    int rc = 0;

    *out = NULL;
    *n = 0;
    if (!root) {
        snprintf(err, errlen, "getUpdates: not JSON (%s)", jerr.text);
        rc = NX_EPROTO;
        goto out;
    }
    if (!json_is_true(json_object_get(root, "ok"))) {
        snprintf(err, errlen, "getUpdates: \"ok\" is not true");
        rc = NX_EPROTO;
        goto out;
    }
    const json_t *res = json_object_get(root, "result");
    if (!json_is_array(res)) {
        snprintf(err, errlen, "getUpdates: \"result\" is not a list");
        rc = NX_EPROTO;
        goto out;
    }
    if (json_array_size(res) > NX_TG_MAX_UPDATES) {
        snprintf(err, errlen, "getUpdates: %zu updates (at most %d)", json_array_size(res),
                 NX_TG_MAX_UPDATES);
        rc = NX_ETOOBIG;
        goto out;
    }
    if (json_array_size(res) > 0)
        v = nx_calloc(json_array_size(res), sizeof *v);
    size_t i;
    const json_t *e;
    json_array_foreach(res, i, e) {
        if (nx_tg_parse_update(e, &v[count]))
            count++;
    }
    if (count == 0) {
        free(v);
        v = NULL;
    }
    *out = v;
    *n = count;
    v = NULL;
out:
    free(v);
    json_decref(root);
    return rc;
}

void nx_tg_updates_free(struct nx_tg_update *v, size_t n)
{
    if (!v)
        return;
    for (size_t i = 0; i < n; i++)
        nx_tg_update_cleanup(&v[i]);
    free(v);
}

void nx_tg_parse_error(const char *body, size_t len, char *desc, size_t desclen, uint32_t *retry_after)
{
    json_t *root = body ? json_loadb(body, len, 0, NULL) : NULL;
    int64_t ra = 0;
    const char *d = json_string_value(json_object_get(root, "description"));
    if (!d)
        d = json_string_value(json_object_get(root, "message")); /* the emulator's errors */
    snprintf(desc, desclen, "%s", d ? d : "");
    if (get_int(json_object_get(root, "parameters"), "retry_after", &ra) && ra > 0)
        *retry_after = ra > 3600 ? 3600 : (uint32_t)ra;
    else
        *retry_after = 0;
    json_decref(root);
}

static bool url_ok(const char *u)
{
    return strncmp(u, "https://", 8) == 0 || strncmp(u, "http://", 7) == 0 || strncmp(u, "tg://", 5) == 0;
}

int nx_tg_keyboard(const json_t *buttons, json_t **out, char *err, size_t errlen)
{
    json_t *rows = json_array();
    size_t total = 0, r;
    const json_t *row;
    int rc = NX_EINVAL;

    *out = NULL;
    if (!json_is_array(buttons) || json_array_size(buttons) == 0) {
        snprintf(err, errlen, "buttons: expected a non-empty list of rows");
        goto out;
    }
    json_array_foreach(buttons, r, row) {
        size_t k;
        const json_t *b;
        if (!json_is_array(row) || json_array_size(row) == 0 || json_array_size(row) > 8) {
            snprintf(err, errlen, "buttons[%zu]: expected a list of 1 to 8 buttons", r);
            goto out;
        }
        json_t *jrow = json_array();
        json_array_append_new(rows, jrow);
        json_array_foreach(row, k, b) {
            const char *text = json_string_value(json_object_get(b, "text"));
            const char *data = json_string_value(json_object_get(b, "data"));
            const char *url = json_string_value(json_object_get(b, "url"));
            if (++total > 100) {
                snprintf(err, errlen, "buttons: more than 100");
                goto out;
            }
            if (!text || !*text || strlen(text) > 64) {
                snprintf(err, errlen, "buttons[%zu][%zu]: \"text\" must be 1 to 64 bytes", r, k);
                goto out;
            }
            if (!data == !url) {
                snprintf(err, errlen, "buttons[%zu][%zu]: give exactly one of \"data\" and \"url\"", r, k);
                goto out;
            }
            if (data && (!*data || strlen(data) > NX_TG_CALLBACK_DATA_MAX)) {
                snprintf(err, errlen, "buttons[%zu][%zu]: \"data\" must be 1 to %d bytes", r, k,
                         NX_TG_CALLBACK_DATA_MAX);
                goto out;
            }
            if (url && (!url_ok(url) || strlen(url) > 2048)) {
                snprintf(err, errlen, "buttons[%zu][%zu]: \"url\" must be http(s):// or tg://", r, k);
                goto out;
            }
            json_array_append_new(jrow, json_pack("{s:s, s:s}", "text", text, data ? "callback_data" : "url",
                                                  data ? data : url));
        }
    }
    *out = json_pack("{s:O}", "inline_keyboard", rows);
    rc = 0;
out:
    json_decref(rows);
    return rc;
}

int nx_tg_parse_file(const char *body, size_t len, char *path, size_t pathlen, int64_t *size)
{
    json_t *root = json_loadb(body, len, 0, NULL);
    const json_t *res = json_object_get(root, "result");
    const char *p = json_string_value(json_object_get(res, "file_path"));
    int rc = NX_EPROTO;

    *size = 0;
    if (!json_is_true(json_object_get(root, "ok")) || !p || !*p || *p == '/' || strstr(p, "..") ||
        strlen(p) >= pathlen)
        goto out;
    for (const char *c = p; *c; c++)
        if ((unsigned char)*c <= ' ' || (unsigned char)*c >= 0x7f || *c == '?' || *c == '#' || *c == '%')
            goto out;
    snprintf(path, pathlen, "%s", p);
    if (!get_int(res, "file_size", size) || *size < 0)
        *size = 0;
    rc = 0;
out:
    json_decref(root);
    return rc;
}
