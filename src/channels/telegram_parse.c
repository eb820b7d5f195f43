#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "channels/telegram.h"
#include "core/alloc.h"
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

static void parse_message(const json_t *m, struct nx_tg_update *u)
{
    const json_t *chat = json_object_get(m, "chat");
    const char *text = json_string_value(json_object_get(m, "text"));
    if (!json_is_object(m) || !json_is_object(chat) || !text)
        return;
    if (!get_int(chat, "id", &u->chat_id) || !get_int(m, "message_id", &u->message_id))
        return;
    if (!get_int(json_object_get(m, "from"), "id", &u->from_id))
        u->from_id = u->chat_id;
    if (!get_int(m, "date", &u->date))
        u->date = 0;
    const char *type = json_string_value(json_object_get(chat, "type"));
    u->is_group = type && (strcmp(type, "group") == 0 || strcmp(type, "supergroup") == 0);
    u->text = nx_strdup(text);
    u->has_message = true;
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
        struct nx_tg_update *u = &v[count];
        if (!json_is_object(e) || !get_int(e, "update_id", &u->update_id))
            continue;
        const json_t *m = json_object_get(e, "message"); /* edits and the rest: skipped */
        if (m)
            parse_message(m, u);
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
        free(v[i].text);
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
