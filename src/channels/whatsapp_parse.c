#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "channels/whatsapp.h"
#include "core/alloc.h"
#include "core/buf.h"
#include "core/error.h"

/* The WhatsApp Cloud API's wire formats: webhook signatures and bodies (outside input: see
 * tests/fuzz/fuzz_whatsapp_webhook.c), Graph error answers, and the request bodies of
 * POST /{phone_number_id}/messages. Formats from developers.facebook.com/docs/whatsapp/
 * cloud-api: webhooks/payload-examples, reference/messages, support/error-codes. */

/* ---- signature ---- */

static void hmac_hex(const char *secret, const char *body, size_t len, char hex[65])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    static const char digits[] = "0123456789abcdef";
    HMAC(EVP_sha256(), secret, (int)strlen(secret), (const unsigned char *)body, len, md, &mdlen);
    for (unsigned int i = 0; i < 32; i++) {
        hex[2 * i] = digits[md[i] >> 4];
        hex[2 * i + 1] = digits[md[i] & 15];
    }
    hex[64] = '\0';
}

void nx_wa_sign(const char *secret, const char *body, size_t len, char out[72])
{
    char hex[65];
    hmac_hex(secret, body ? body : "", len, hex);
    snprintf(out, 72, "sha256=%s", hex);
}

bool nx_wa_signature_ok(const char *secret, const char *header, size_t header_len, const char *body,
                        size_t len)
{
    char want[65], got[65];
    if (!secret || !*secret || !header || header_len != 7 + 64 || strncmp(header, "sha256=", 7) != 0)
        return false;
    for (size_t i = 0; i < 64; i++) { /* Meta sends lower case; accept either */
        char c = header[7 + i];
        if (c >= 'A' && c <= 'F')
            c = (char)(c - 'A' + 'a');
        got[i] = c;
    }
    got[64] = '\0';
    hmac_hex(secret, body ? body : "", len, want);
    return CRYPTO_memcmp(want, got, 64) == 0;
}

/* ---- the verification handshake's query ---- */

/* Percent-decodes one query value (and '+' as space) into out; false when it does not fit. */
bool nx_wa_query_value(const char *q, size_t qlen, const char *name, char *out, size_t outlen)
{
    size_t nlen = strlen(name);
    const char *p = q, *end = q + qlen;
    while (p && p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *stop = amp ? amp : end;
        if ((size_t)(stop - p) > nlen && memcmp(p, name, nlen) == 0 && p[nlen] == '=') {
            size_t k = 0;
            for (const char *s = p + nlen + 1; s < stop; s++) {
                char c = *s;
                if (c == '+') {
                    c = ' ';
                } else if (c == '%' && stop - s >= 3) {
                    char hex[3] = {s[1], s[2], 0};
                    char *e = NULL;
                    long v = strtol(hex, &e, 16);
                    if (e != hex + 2 || v == 0)
                        return false;
                    c = (char)v;
                    s += 2;
                }
                if (k + 1 >= outlen)
                    return false;
                out[k++] = c;
            }
            out[k] = '\0';
            return true;
        }
        p = amp ? amp + 1 : NULL;
    }
    return false;
}

/* ---- webhook body ---- */

static char *dup_str(const json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s ? nx_strdup(s) : NULL;
}

/* Meta sends timestamps as strings of digits; accept integers too. */
static int64_t get_ts(const json_t *o)
{
    const json_t *v = json_object_get(o, "timestamp");
    if (json_is_integer(v))
        return (int64_t)json_integer_value(v);
    const char *s = json_string_value(v);
    int64_t x = 0;
    for (int i = 0; s && s[i] >= '0' && s[i] <= '9' && i < 18; i++)
        x = x * 10 + (s[i] - '0');
    return x;
}

static const char *const media_types[] = {"image", "document", "audio", "video", "sticker", NULL};

static bool is_media(const char *type)
{
    for (size_t i = 0; type && media_types[i]; i++)
        if (strcmp(type, media_types[i]) == 0)
            return true;
    return false;
}

static void parse_msg(const json_t *m, const char *pnid, const json_t *contacts, struct nx_wa_msg *out)
{
    const char *type = json_string_value(json_object_get(m, "type"));
    out->from = dup_str(m, "from");
    out->id = dup_str(m, "id");
    out->type = nx_strdup(type ? type : "unknown");
    out->phone_number_id = pnid ? nx_strdup(pnid) : NULL;
    out->timestamp = get_ts(m);
    out->context_id = dup_str(json_object_get(m, "context"), "id");
    size_t i;
    const json_t *c;
    json_array_foreach(contacts, i, c) {
        const char *wa = json_string_value(json_object_get(c, "wa_id"));
        if (wa && out->from && strcmp(wa, out->from) == 0) {
            out->name = dup_str(json_object_get(c, "profile"), "name");
            break;
        }
    }
    out->kind = NX_WA_MSG_OTHER;
    if (type && strcmp(type, "text") == 0) {
        out->text = dup_str(json_object_get(m, "text"), "body");
        if (out->text && !nx_str_is_blank(out->text)) /* (white space only says nothing) */
            out->kind = NX_WA_MSG_TEXT;
    } else if (type && strcmp(type, "interactive") == 0) {
        const json_t *it = json_object_get(m, "interactive");
        const char *itype = json_string_value(json_object_get(it, "type"));
        const json_t *r = NULL;
        if (itype && strcmp(itype, "button_reply") == 0)
            r = json_object_get(it, "button_reply");
        else if (itype && strcmp(itype, "list_reply") == 0)
            r = json_object_get(it, "list_reply");
        out->data = dup_str(r, "id");
        out->text = dup_str(r, "title");
        if (out->data)
            out->kind = NX_WA_MSG_BUTTON;
    } else if (type && strcmp(type, "button") == 0) { /* a template's quick-reply button */
        const json_t *b = json_object_get(m, "button");
        out->data = dup_str(b, "payload");
        out->text = dup_str(b, "text");
        if (!out->data && out->text)
            out->data = nx_strdup(out->text);
        if (out->data)
            out->kind = NX_WA_MSG_BUTTON;
    } else if (is_media(type)) {
        const json_t *o = json_object_get(m, type);
        out->data = dup_str(o, "id");
        out->text = dup_str(o, "caption");
        if (out->text && nx_str_is_blank(out->text)) {
            free(out->text);
            out->text = NULL;
        }
        out->mime_type = dup_str(o, "mime_type");
        out->filename = dup_str(o, "filename");
        if (out->data)
            out->kind = NX_WA_MSG_MEDIA;
    }
}

static void parse_status(const json_t *s, const char *pnid, struct nx_wa_status *out)
{
    out->phone_number_id = pnid ? nx_strdup(pnid) : NULL;
    out->id = dup_str(s, "id");
    out->status = dup_str(s, "status");
    out->recipient = dup_str(s, "recipient_id");
    out->timestamp = get_ts(s);
    const json_t *e = json_array_get(json_object_get(s, "errors"), 0);
    if (json_is_object(e)) {
        char buf[512];
        const char *title = json_string_value(json_object_get(e, "title"));
        const char *msg = json_string_value(json_object_get(e, "message"));
        const char *det = json_string_value(json_object_get(json_object_get(e, "error_data"), "details"));
        snprintf(buf, sizeof buf, "%lld: %s%s%s%s", (long long)json_integer_value(json_object_get(e, "code")),
                 title ? title : (msg ? msg : "error"), det ? " (" : "", det ? det : "", det ? ")" : "");
        out->error = nx_strdup(buf);
    }
}

static void msg_cleanup(struct nx_wa_msg *m)
{
    free(m->phone_number_id);
    free(m->from);
    free(m->id);
    free(m->type);
    free(m->name);
    free(m->text);
    free(m->data);
    free(m->mime_type);
    free(m->filename);
    free(m->context_id);
}

static void status_cleanup(struct nx_wa_status *s)
{
    free(s->phone_number_id);
    free(s->id);
    free(s->status);
    free(s->recipient);
    free(s->error);
}

void nx_wa_webhook_cleanup(struct nx_wa_webhook *w)
{
    for (size_t i = 0; i < w->nmsgs; i++)
        msg_cleanup(&w->msgs[i]);
    for (size_t i = 0; i < w->nstatuses; i++)
        status_cleanup(&w->statuses[i]);
    free(w->msgs);
    free(w->statuses);
    memset(w, 0, sizeof *w);
}

/* Counts what the body holds first, so a hostile body cannot make us allocate beyond the cap. */
static size_t count_events(const json_t *entries)
{
    size_t n = 0, i, k;
    const json_t *e, *c;
    json_array_foreach(entries, i, e) {
        json_array_foreach(json_object_get(e, "changes"), k, c) {
            const json_t *v = json_object_get(c, "value");
            n += json_array_size(json_object_get(v, "messages"));
            n += json_array_size(json_object_get(v, "statuses"));
        }
    }
    return n;
}

int nx_wa_parse_webhook(const char *body, size_t len, struct nx_wa_webhook *out, char *err,
                        size_t errlen)
{
    json_error_t jerr;
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    int rc = 0;

    memset(out, 0, sizeof *out);
    if (!root) {
        snprintf(err, errlen, "webhook body is not JSON (%s)", jerr.text);
        rc = NX_EPROTO;
        goto out;
    }
    const char *object = json_string_value(json_object_get(root, "object"));
    const json_t *entries = json_object_get(root, "entry");
    if (!object || strcmp(object, "whatsapp_business_account") != 0 || !json_is_array(entries)) {
        snprintf(err, errlen, "webhook body is not a whatsapp_business_account notification");
        rc = NX_EPROTO;
        goto out;
    }
    size_t total = count_events(entries);
    if (total > NX_WA_MAX_EVENTS) {
        snprintf(err, errlen, "webhook body holds %zu events (at most %d)", total, NX_WA_MAX_EVENTS);
        rc = NX_ETOOBIG;
        goto out;
    }
    if (total) {
        out->msgs = nx_calloc(total, sizeof *out->msgs);
        out->statuses = nx_calloc(total, sizeof *out->statuses);
    }
    size_t i, k, j;
    const json_t *e, *c, *x;
    json_array_foreach(entries, i, e) {
        json_array_foreach(json_object_get(e, "changes"), k, c) {
            const char *field = json_string_value(json_object_get(c, "field"));
            const json_t *v = json_object_get(c, "value");
            if (!field || strcmp(field, "messages") != 0 || !json_is_object(v))
                continue;
            const char *pnid = json_string_value(json_object_get(json_object_get(v, "metadata"),
                                                                 "phone_number_id"));
            const json_t *contacts = json_object_get(v, "contacts");
            json_array_foreach(json_object_get(v, "messages"), j, x) {
                if (!json_is_object(x) || !json_is_string(json_object_get(x, "id")) ||
                    !json_is_string(json_object_get(x, "from")))
                    continue;
                parse_msg(x, pnid, contacts, &out->msgs[out->nmsgs++]);
            }
            json_array_foreach(json_object_get(v, "statuses"), j, x) {
                if (!json_is_object(x) || !json_is_string(json_object_get(x, "id")) ||
                    !json_is_string(json_object_get(x, "status")))
                    continue;
                parse_status(x, pnid, &out->statuses[out->nstatuses++]);
            }
        }
    }
out:
    json_decref(root);
    return rc;
}

/* ---- Graph errors ---- */

void nx_wa_parse_error(const char *body, size_t len, struct nx_wa_error *e)
{
    json_t *root = body ? json_loadb(body, len, 0, NULL) : NULL;
    const json_t *o = json_object_get(root, "error");
    memset(e, 0, sizeof *e);
    const char *s = json_string_value(json_object_get(o, "message"));
    snprintf(e->message, sizeof e->message, "%s", s ? s : "");
    s = json_string_value(json_object_get(o, "type"));
    snprintf(e->type, sizeof e->type, "%s", s ? s : "");
    s = json_string_value(json_object_get(o, "fbtrace_id"));
    snprintf(e->fbtrace_id, sizeof e->fbtrace_id, "%s", s ? s : "");
    e->code = (int64_t)json_integer_value(json_object_get(o, "code"));
    e->subcode = (int64_t)json_integer_value(json_object_get(o, "error_subcode"));
    json_decref(root);
}

const char *nx_wa_error_hint(int64_t code)
{
    switch (code) {
    case 190:
        return "the access token is invalid or expired: renew access_token";
    case 10:
    case 200:
    case 299:
        return "the token lacks a permission (whatsapp_business_messaging) for this number";
    case 100:
        return "invalid parameter in the request";
    case 4:
    case 80007:
    case 130429:
        return "rate limit reached: retrying later";
    case 131056:
        return "too many messages to this user in a short time: retrying later";
    case 131047:
        return "more than 24 hours since the user's last message: only a template can re-engage";
    case 131026:
        return "message undeliverable (not a WhatsApp number, an old app, or terms not accepted)";
    case 131051:
        return "unsupported message type";
    case 131009:
        return "a parameter value is invalid";
    case 132000:
    case 132001:
    case 132005:
    case 132007:
    case 132012:
        return "the template does not exist, is not approved in this language, or its parameters "
               "do not match";
    case 133010:
        return "the phone number is not registered with the Cloud API";
    case 131000:
    case 1:
    case 2:
        return "temporary error at Meta: retrying";
    default:
        return "";
    }
}

bool nx_wa_error_is_transient(long http_status, int64_t code)
{
    if (http_status == 0 || http_status == 429 || http_status >= 500)
        return true;
    return code == 1 || code == 2 || code == 4 || code == 80007 || code == 130429 ||
           code == 131056 || code == 131000;
}

bool nx_wa_parse_sent(const char *body, size_t len, char *out, size_t outlen)
{
    json_t *root = json_loadb(body, len, 0, NULL);
    const char *id = json_string_value(json_object_get(json_array_get(json_object_get(root, "messages"),
                                                                       0), "id"));
    bool ok = id && *id;
    if (ok)
        snprintf(out, outlen, "%s", id);
    json_decref(root);
    return ok;
}

/* ---- requests ---- */

size_t nx_wa_chars(const char *s)
{
    size_t n = 0;
    for (; s && *s; s++)
        if (((unsigned char)*s & 0xc0) != 0x80)
            n++;
    return n;
}

static json_t *base_request(const char *to, const char *type, const char *reply_to)
{
    json_t *r = json_pack("{s:s, s:s, s:s, s:s}", "messaging_product", "whatsapp", "recipient_type",
                          "individual", "to", to, "type", type);
    if (r && reply_to && *reply_to)
        json_object_set_new(r, "context", json_pack("{s:s}", "message_id", reply_to));
    return r;
}

json_t *nx_wa_text_request(const char *to, const char *text, size_t len, const char *reply_to)
{
    json_t *r = base_request(to, "text", reply_to);
    json_t *t = json_stringn(text, len);
    if (!r || !t) {
        json_decref(r);
        json_decref(t);
        return NULL;
    }
    json_object_set_new(r, "text", json_pack("{s:b, s:o}", "preview_url", 0, "body", t));
    return r;
}

json_t *nx_wa_template_request(const char *to, const char *name, const char *language,
                               const json_t *components)
{
    json_t *r = base_request(to, "template", NULL);
    json_t *t = json_pack("{s:s, s:{s:s}}", "name", name, "language", "code", language);
    if (!r || !t) {
        json_decref(r);
        json_decref(t);
        return NULL;
    }
    if (json_is_array(components) && json_array_size(components) > 0)
        json_object_set_new(t, "components", json_deep_copy(components));
    json_object_set_new(r, "template", t);
    return r;
}

static bool text_ok(const json_t *v, size_t max)
{
    const char *s = json_string_value(v);
    size_t n = nx_wa_chars(s);
    return s && n >= 1 && n <= max;
}

json_t *nx_wa_template_from_payload(const char *to, const json_t *tmpl, char *err, size_t errlen)
{
    const json_t *lang = json_object_get(tmpl, "language");
    const char *name = json_string_value(json_object_get(tmpl, "name"));
    const char *code = json_is_object(lang) ? json_string_value(json_object_get(lang, "code"))
                                            : json_string_value(lang);
    const json_t *comps = json_object_get(tmpl, "components");
    if (!name || !*name || !code || !*code) {
        snprintf(err, errlen, "template needs a \"name\" and a \"language\" (a code like en_US)");
        return NULL;
    }
    if (comps && !json_is_array(comps)) {
        snprintf(err, errlen, "template \"components\" must be a list");
        return NULL;
    }
    return nx_wa_template_request(to, name, code, comps);
}

static json_t *interactive(const char *to, const char *itype, const char *body, json_t *action,
                           const char *reply_to)
{
    json_t *r = base_request(to, "interactive", reply_to);
    json_object_set_new(r, "interactive", json_pack("{s:s, s:{s:s}, s:o}", "type", itype, "body",
                                                    "text", body, "action", action));
    return r;
}

/* `buttons`: [[{id, title}], ...] (rows, as Telegram's keyboards) or a flat [{id, title}]. */
json_t *nx_wa_buttons_request(const char *to, const char *body, const json_t *buttons,
                              const char *reply_to, char *err, size_t errlen)
{
    json_t *list = json_array();
    size_t i, k;
    const json_t *row, *b;
    if (!body || nx_wa_chars(body) < 1 || nx_wa_chars(body) > NX_WA_BODY_LIMIT) {
        snprintf(err, errlen, "a button message needs a text of 1 to %d characters", NX_WA_BODY_LIMIT);
        goto fail;
    }
    json_array_foreach(buttons, i, row) {
        json_t *one = json_array();
        if (json_is_array(row))
            json_array_extend(one, (json_t *)row);
        else
            json_array_append(one, (json_t *)row);
        json_array_foreach(one, k, b) {
            const json_t *id = json_object_get(b, "id");
            const json_t *title = json_object_get(b, "title");
            if (!id)
                id = json_object_get(b, "data"); /* Telegram-style {text, data} */
            if (!title)
                title = json_object_get(b, "text");
            if (!text_ok(id, 256) || !text_ok(title, NX_WA_BUTTON_TITLE)) {
                snprintf(err, errlen, "button %zu needs an \"id\" (1-256 characters) and a \"title\" "
                         "(1-%d characters)", json_array_size(list) + 1, NX_WA_BUTTON_TITLE);
                json_decref(one);
                goto fail;
            }
            json_array_append_new(list, json_pack("{s:s, s:{s:O, s:O}}", "type", "reply", "reply",
                                                  "id", id, "title", title));
        }
        json_decref(one);
    }
    if (json_array_size(list) < 1 || json_array_size(list) > NX_WA_MAX_BUTTONS) {
        snprintf(err, errlen, "%zu buttons: WhatsApp reply buttons are 1 to %d (use a list for more)",
                 json_array_size(list), NX_WA_MAX_BUTTONS);
        goto fail;
    }
    return interactive(to, "button", body, json_pack("{s:o}", "buttons", list), reply_to);
fail:
    json_decref(list);
    return NULL;
}

/* `list`: {button, sections: [{title, rows: [{id, title, description}]}]}. */
json_t *nx_wa_list_request(const char *to, const char *body, const json_t *list,
                           const char *reply_to, char *err, size_t errlen)
{
    json_t *sections = json_array();
    size_t rows = 0, i, k;
    const json_t *s, *r;
    const json_t *button = json_object_get(list, "button");
    const json_t *in = json_object_get(list, "sections");
    if (!body || nx_wa_chars(body) < 1 || nx_wa_chars(body) > NX_WA_BODY_LIMIT) {
        snprintf(err, errlen, "a list message needs a text of 1 to %d characters", NX_WA_BODY_LIMIT);
        goto fail;
    }
    if (!text_ok(button, NX_WA_BUTTON_TITLE) || !json_is_array(in) || json_array_size(in) < 1 ||
        json_array_size(in) > 10) {
        snprintf(err, errlen, "a list needs \"button\" (1-%d characters) and 1 to 10 \"sections\"",
                 NX_WA_BUTTON_TITLE);
        goto fail;
    }
    json_array_foreach(in, i, s) {
        const json_t *title = json_object_get(s, "title");
        const json_t *rin = json_object_get(s, "rows");
        if ((json_array_size(in) > 1 && !text_ok(title, NX_WA_ROW_TITLE)) || (title &&
            !text_ok(title, NX_WA_ROW_TITLE)) || !json_is_array(rin) || json_array_size(rin) < 1) {
            snprintf(err, errlen, "list section %zu needs rows (and a title of 1-%d characters when "
                     "there are several sections)", i + 1, NX_WA_ROW_TITLE);
            goto fail;
        }
        json_t *rout = json_array();
        json_array_foreach(rin, k, r) {
            const json_t *id = json_object_get(r, "id");
            const json_t *rt = json_object_get(r, "title");
            const json_t *desc = json_object_get(r, "description");
            if (!text_ok(id, 200) || !text_ok(rt, NX_WA_ROW_TITLE) ||
                (desc && !text_ok(desc, NX_WA_ROW_DESC))) {
                snprintf(err, errlen, "list row %zu needs an \"id\" (1-200 characters), a \"title\" "
                         "(1-%d) and at most a %d-character \"description\"", rows + 1,
                         NX_WA_ROW_TITLE, NX_WA_ROW_DESC);
                json_decref(rout);
                goto fail;
            }
            json_t *row = json_pack("{s:O, s:O}", "id", id, "title", rt);
            if (desc)
                json_object_set(row, "description", (json_t *)desc);
            json_array_append_new(rout, row);
            rows++;
        }
        json_t *sec = json_pack("{s:o}", "rows", rout);
        if (title)
            json_object_set(sec, "title", (json_t *)title);
        json_array_append_new(sections, sec);
    }
    if (rows > NX_WA_MAX_ROWS) {
        snprintf(err, errlen, "%zu list rows: WhatsApp allows at most %d", rows, NX_WA_MAX_ROWS);
        goto fail;
    }
    return interactive(to, "list", body, json_pack("{s:O, s:o}", "button", button, "sections",
                                                   sections), reply_to);
fail:
    json_decref(sections);
    return NULL;
}

/* `media`: {type: image|document|audio|video|sticker, id | link, caption, filename}. */
json_t *nx_wa_media_request(const char *to, const json_t *media, const char *reply_to, char *err,
                            size_t errlen)
{
    const char *type = json_string_value(json_object_get(media, "type"));
    const json_t *id = json_object_get(media, "id");
    const json_t *link = json_object_get(media, "link");
    const json_t *caption = json_object_get(media, "caption");
    const json_t *filename = json_object_get(media, "filename");
    if (!is_media(type)) {
        snprintf(err, errlen, "media \"type\" must be image, document, audio, video or sticker");
        return NULL;
    }
    if ((id != NULL) == (link != NULL) || !text_ok(id ? id : link, 2048)) {
        snprintf(err, errlen, "media needs exactly one of \"id\" (an uploaded media id) and \"link\"");
        return NULL;
    }
    if (link && strncmp(json_string_value(link), "https://", 8) != 0) {
        snprintf(err, errlen, "media \"link\" must be an https:// URL");
        return NULL;
    }
    bool can_caption = strcmp(type, "audio") != 0 && strcmp(type, "sticker") != 0;
    if (caption && (!can_caption || !text_ok(caption, NX_WA_BODY_LIMIT))) {
        snprintf(err, errlen, "media \"caption\" is for image, document and video, 1-%d characters",
                 NX_WA_BODY_LIMIT);
        return NULL;
    }
    if (filename && (strcmp(type, "document") != 0 || !text_ok(filename, 240))) {
        snprintf(err, errlen, "media \"filename\" is for documents, 1-240 characters");
        return NULL;
    }
    json_t *o = json_pack("{s:O}", id ? "id" : "link", id ? id : link);
    if (caption)
        json_object_set(o, "caption", (json_t *)caption);
    if (filename)
        json_object_set(o, "filename", (json_t *)filename);
    json_t *r = base_request(to, type, reply_to);
    json_object_set_new(r, type, o);
    return r;
}
