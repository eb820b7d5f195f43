#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "channels/telegram_int.h"
#include "core/alloc.h"
#include "core/buf.h"
#include "core/clock.h"
#include "core/error.h"
#include "core/log.h"
#include "http/multipart.h"

/* The Telegram channel's outbound side: a queue of messages sent one step at a time (an
 * optional photo/document, then the text's chunks, the inline keyboard on the last step), in
 * order; 429 retry_after honoured, 5xx and transport errors retried with backoff, a chunk whose
 * HTML Telegram cannot parse resent as plain text. And the "typing" indicator. */

#define SEND_TIMEOUT_MS 30000
#define UPLOAD_TIMEOUT_MS 120000
#define SEND_MAX_ATTEMPTS 6
#define RETRY_429_MAX 20
#define BACKOFF_MAX_MS 30000

static void send_kick(struct tg *tg);

static json_t *chat_json(const char *chat)
{
    int64_t id;
    return tg_parse_i64(chat, &id) ? json_integer((json_int_t)id) : json_string(chat);
}

void nx_tg_out_msg_free(struct out_msg *m)
{
    if (!m)
        return;
    free(m->chat);
    nx_md_chunks_free(m->chunks, m->nchunks);
    free(m->caption.html);
    free(m->caption.plain);
    json_decref(m->media);
    json_decref(m->markup);
    free(m->key);
    free(m->first_id);
    free(m);
}

/* ---- typing ---- */

void nx_tg_on_aux_done(int rc, const struct nx_http_response *res, const char *err, void *udata)
{
    struct tg *tg = udata;
    if (rc == 0 && res->status != 200)
        nx_debug("telegram", "%s: a chat action or callback answer got %ld", tg->label, res->status);
    else if (rc < 0 && rc != NX_ECANCELED)
        nx_debug("telegram", "%s: a chat action or callback answer failed: %s", tg->label,
                 err ? err : nx_strerror(rc));
    nx_tg_unref(tg);
}

static void send_typing(struct tg *tg, int64_t chat)
{
    json_t *b = json_pack("{s:I, s:s}", "chat_id", (json_int_t)chat, "action", "typing");
    nx_tg_call(tg, "sendChatAction", NULL, b, 10000, 65536, nx_tg_on_aux_done);
    json_decref(b);
}

void nx_tg_on_typing_timer(uv_timer_t *t)
{
    struct tg *tg = t->data;
    uint64_t now = nx_mono_ms();
    size_t k = 0;
    for (size_t i = 0; i < tg->ntyping; i++) {
        if (tg->typing_v[i].until_ms <= now)
            continue; /* bounded: a reply that never comes stops it */
        send_typing(tg, tg->typing_v[i].chat);
        tg->typing_v[k++] = tg->typing_v[i];
    }
    tg->ntyping = k;
    if (k == 0)
        uv_timer_stop(&tg->typing_timer);
}

void nx_tg_typing_start(struct tg *tg, int64_t chat)
{
    if (!tg->typing || tg->is_stopped)
        return;
    send_typing(tg, chat);
    uint64_t until = nx_mono_ms() + TYPING_MAX_MS;
    for (size_t i = 0; i < tg->ntyping; i++) {
        if (tg->typing_v[i].chat == chat) {
            tg->typing_v[i].until_ms = until;
            return;
        }
    }
    if (tg->ntyping == TYPING_CHATS_MAX)
        return; /* that many chats waiting: the first action still showed */
    tg->typing_v[tg->ntyping++] = (struct typing){.chat = chat, .until_ms = until};
    if (!uv_is_active((uv_handle_t *)&tg->typing_timer))
        uv_timer_start(&tg->typing_timer, nx_tg_on_typing_timer, TYPING_EVERY_MS, TYPING_EVERY_MS);
}

static void typing_stop(struct tg *tg, const char *chat)
{
    int64_t id;
    if (!tg_parse_i64(chat, &id))
        return;
    for (size_t i = 0; i < tg->ntyping; i++) {
        if (tg->typing_v[i].chat == id) {
            tg->typing_v[i] = tg->typing_v[--tg->ntyping];
            break;
        }
    }
    if (tg->ntyping == 0 && !tg->is_stopped)
        uv_timer_stop(&tg->typing_timer);
}

/* ---- the queue ---- */

/* The head message is done: delivered (reason NULL) or dropped (reason for the metric). */
static void drop_head(struct tg *tg, const char *reason, int status, const char *err)
{
    struct out_msg *m = (struct out_msg *)tg->q.head;
    if (!m)
        return;
    if (reason)
        nx_channel_count_drop(tg->ch, reason);
    if (m->key && tg->ch)
        nx_channel_sent(tg->ch, m->key, m->first_id, reason ? (status < 0 ? status : NX_EIO) : 0,
                        reason ? err : NULL);
    typing_stop(tg, m->chat);
    nx_tg_out_msg_free((struct out_msg *)nx_sendq_pop(&tg->q));
}

static void retry_send(struct tg *tg, uint64_t delay_ms)
{
    nx_sendq_retry_in(&tg->q, delay_ms);
}

/* The step was delivered: on to the next one. */
static void step_done(struct tg *tg, struct out_msg *m, const json_t *result)
{
    const json_t *mid = json_object_get(result, "message_id");
    if (!m->first_id && json_is_integer(mid)) {
        char b[32];
        snprintf(b, sizeof b, "%" PRId64, (int64_t)json_integer_value(mid));
        m->first_id = nx_strdup(b);
    }
    m->attempts = 0;
    m->is_plain = false;
    if (++m->sent == m->nsteps)
        drop_head(tg, NULL, 0, NULL);
    else if (m->key && tg->ch) /* a crash from here on resumes at the next step */
        nx_channel_progress(tg->ch, m->key, (uint32_t)m->sent, m->first_id);
}

static bool is_media_step(const struct out_msg *m)
{
    return m->media && m->sent == 0;
}

static void on_send_done(int rc, const struct nx_http_response *res, const char *err, void *udata)
{
    struct tg *tg = udata;
    struct out_msg *m = (struct out_msg *)tg->q.head;
    char desc[256] = "";
    uint32_t retry_after = 0;
    json_t *root = NULL;

    tg->q.call = NULL;
    if (tg->is_stopped || rc == NX_ECANCELED || !m)
        goto out;
    if (rc == 0 && res->status == 200)
        root = json_loadb(res->body, res->body_len, 0, NULL);
    if (json_is_true(json_object_get(root, "ok"))) { /* (a macro: its argument twice) */
        nx_channel_count(tg->ch, "out");
        step_done(tg, m, json_object_get(root, "result"));
        send_kick(tg);
        goto out;
    }
    if (rc == 0)
        nx_tg_parse_error(res->body, res->body_len, desc, sizeof desc, &retry_after);
    m->attempts++;
    if (rc == 0 && res->status == 429) {
        if (m->attempts > RETRY_429_MAX) {
            nx_error("telegram", "%s: message to chat %s dropped: still rate limited after %u tries",
                     tg->label, m->chat, m->attempts);
            drop_head(tg, "send_failed", NX_EAGAIN, "rate limited");
            send_kick(tg);
            goto out;
        }
        nx_info("telegram", "%s: sendMessage rate limited: retrying in %us", tg->label,
                retry_after ? retry_after : 1);
        retry_send(tg, (uint64_t)(retry_after ? retry_after : 1) * 1000);
        goto out;
    }
    if (rc < 0 || res->status >= 500 || res->status == 0) {
        if (m->attempts >= SEND_MAX_ATTEMPTS) {
            nx_error("telegram", "%s: message to chat %s dropped after %u failed tries (last: %s)",
                     tg->label, m->chat, m->attempts, rc < 0 ? (err ? err : nx_strerror(rc)) : desc);
            drop_head(tg, "send_failed", rc < 0 ? rc : NX_EHTTP, rc < 0 ? (err ? err : "") : desc);
            send_kick(tg);
            goto out;
        }
        uint64_t delay = nx_sendq_backoff(m->attempts + 1, 500, BACKOFF_MAX_MS);
        nx_warn("telegram", "%s: sendMessage failed (%s): retrying in %" PRIu64 " ms", tg->label,
                rc < 0 ? (err ? err : nx_strerror(rc)) : desc, delay);
        retry_send(tg, delay);
        goto out;
    }
    if (res->status == 400 && !m->is_plain && strstr(desc, "can't parse entities")) {
        nx_warn("telegram", "%s: Telegram cannot parse the HTML of a message to chat %s (%s): "
                "resending it as plain text", tg->label, m->chat, desc);
        m->is_plain = true;
        m->attempts = 0;
        send_kick(tg);
        goto out;
    }
    /* 400 (chat not found, bad request), 403 (blocked by the user): retrying will not help. */
    nx_error("telegram", "%s: message to chat %s dropped: %ld %s", tg->label, m->chat, res->status,
             desc);
    drop_head(tg, "send_failed", NX_EINVAL, desc);
    send_kick(tg);
out:
    json_decref(root);
    nx_tg_unref(tg);
}

/* Adds what every step may carry: reply_parameters on the first, the keyboard on the last. */
static void decorate(const struct out_msg *m, json_t *b)
{
    if (m->sent == 0 && m->reply_to > 0)
        json_object_set_new(b, "reply_parameters",
                            json_pack("{s:I, s:b}", "message_id", (json_int_t)m->reply_to,
                                      "allow_sending_without_reply", 1));
    if (m->sent + 1 == m->nsteps && m->markup)
        json_object_set(b, "reply_markup", m->markup);
}

/* sendPhoto / sendDocument. Returns the call, or NULL with *failed set when the step cannot be
 * sent at all (the file is refused). */
static struct nx_http_call *send_media(struct tg *tg, struct out_msg *m, bool *failed, char *err,
                                       size_t errlen)
{
    const char *type = json_string_value(json_object_get(m->media, "type"));
    const char *url = json_string_value(json_object_get(m->media, "url"));
    const char *path = json_string_value(json_object_get(m->media, "path"));
    bool is_photo = strcmp(type, "photo") == 0;
    const char *method = is_photo ? "sendPhoto" : "sendDocument";
    json_t *b = json_pack("{s:o}", "chat_id", chat_json(m->chat));
    struct nx_http_call *c = NULL;
    char *data = NULL;
    size_t len = 0;
    struct nx_buf outbox = NX_BUF_INIT;
    char why[160];

    *failed = false;
    if (m->caption.plain) {
        bool html = m->caption.html && !m->is_plain;
        json_object_set_new(b, "caption", json_string(html ? m->caption.html : m->caption.plain));
        if (html)
            json_object_set_new(b, "parse_mode", json_string("HTML"));
    }
    decorate(m, b);
    if (url) {
        json_object_set_new(b, type, json_string(url));
        c = nx_tg_call(tg, method, NULL, b, UPLOAD_TIMEOUT_MS, 1u << 20, on_send_done);
        goto out;
    }
    /* Only <data>/media/outbox: the rest of <data>/media holds every user's inbound files. */
    nx_buf_printf(&outbox, "%s/outbox", tg->media_root ? tg->media_root : "data/media");
    if (nx_tg_read_upload(path, nx_buf_cstr(&outbox), tg->max_media, &data, &len, why, sizeof why) < 0) {
        snprintf(err, errlen, "%s; files to send must be under %s/", why, nx_buf_cstr(&outbox));
        nx_error("telegram", "%s: %s to chat %s not sent: %s", tg->label, type, m->chat, err);
        *failed = true;
        goto out;
    }
    struct nx_multipart mp;
    size_t blen = 0;
    const char *slash = strrchr(path, '/');
    nx_multipart_init(&mp);
    nx_tg_upload_body(&mp, b, type, slash ? slash + 1 : path, NULL, data, len);
    const char *body = nx_multipart_finish(&mp, &blen);
    c = nx_tg_call_raw(tg, method, NULL, nx_multipart_content_type(&mp), body, blen, UPLOAD_TIMEOUT_MS,
                       1u << 20, on_send_done);
    nx_multipart_cleanup(&mp);
out:
    nx_buf_cleanup(&outbox);
    free(data);
    json_decref(b);
    return c;
}

static void send_kick(struct tg *tg)
{
    struct out_msg *m;
again:
    m = (struct out_msg *)tg->q.head;
    if (tg->is_stopped || !nx_sendq_is_ready(&tg->q))
        return;
    if (is_media_step(m)) {
        bool failed = false;
        char why[512];
        tg->q.call = send_media(tg, m, &failed, why, sizeof why);
        if (failed) {
            if (m->nsteps == 1) {
                drop_head(tg, "send_failed", NX_EINVAL, why);
            } else {
                m->sent++; /* the text still goes */
            }
            goto again;
        }
        if (!tg->q.call)
            retry_send(tg, 1000);
        return;
    }
    const struct nx_md_chunk *c = &m->chunks[m->sent - (m->media ? 1 : 0)];
    bool html = c->html && !m->is_plain;
    json_t *b = json_pack("{s:o, s:s}", "chat_id", chat_json(m->chat), "text", html ? c->html : c->plain);
    if (!b) { /* not UTF-8: cannot happen for text that came as JSON */
        nx_error("telegram", "%s: message to chat %s dropped: text is not UTF-8", tg->label, m->chat);
        drop_head(tg, "send_failed", NX_EINVAL, "text is not UTF-8");
        goto again;
    }
    if (html)
        json_object_set_new(b, "parse_mode", json_string("HTML"));
    decorate(m, b);
    tg->q.call = nx_tg_call(tg, "sendMessage", NULL, b, SEND_TIMEOUT_MS, 1u << 20, on_send_done);
    json_decref(b);
    if (!tg->q.call)
        retry_send(tg, 1000);
}

void nx_tg_on_send_timer(void *owner)
{
    send_kick(owner);
}

/* text -> chunks (rendered as HTML when markdown is on). */
static size_t make_chunks(const struct tg *tg, const char *text, size_t limit, struct nx_md_chunk **out)
{
    size_t len = strlen(text);
    if (tg->markdown) {
        struct nx_buf html = NX_BUF_INIT;
        nx_md_render(&nx_md_telegram, text, len, &html);
        size_t n = nx_md_split_html(html.data ? html.data : "", html.len, limit, out);
        nx_buf_cleanup(&html);
        return n;
    }
    struct nx_text_chunk *cuts = NULL;
    size_t n = nx_text_split(text, len, limit, &cuts);
    *out = n ? nx_calloc(n, sizeof **out) : NULL;
    for (size_t i = 0; i < n; i++)
        (*out)[i].plain = nx_strndup(text + cuts[i].off, cuts[i].len);
    free(cuts);
    return n;
}

/* The payload's `media` if it is usable: {type: photo|document, path|url, caption?}. */
static json_t *check_media(const struct tg *tg, const json_t *md)
{
    const char *type = json_string_value(json_object_get(md, "type"));
    const char *url = json_string_value(json_object_get(md, "url"));
    const char *path = json_string_value(json_object_get(md, "path"));
    const char *why = NULL;
    if (!json_is_object(md))
        why = "not an object";
    else if (!type || (strcmp(type, "photo") != 0 && strcmp(type, "document") != 0))
        why = "type must be \"photo\" or \"document\"";
    else if (!url == !path)
        why = "give exactly one of \"path\" and \"url\"";
    else if (url && strncmp(url, "https://", 8) != 0 && strncmp(url, "http://", 7) != 0)
        why = "url must be http(s)://";
    if (why) {
        nx_warn("telegram", "%s: outbound media ignored: %s", tg->label, why);
        return NULL;
    }
    return json_pack("{s:s, s:s}", "type", type, url ? "url" : "path", url ? url : path);
}

static void enqueue(struct tg *tg, struct out_msg *m)
{
    nx_sendq_push(&tg->q, &m->qi); /* room checked by the callers */
    send_kick(tg);
}

void nx_tg_queue_note(struct tg *tg, int64_t chat, const char *text)
{
    char id[32];
    if (tg->q.n >= tg->q.max)
        return;
    struct out_msg *m = nx_calloc(1, sizeof *m);
    snprintf(id, sizeof id, "%" PRId64, chat);
    m->chat = nx_strdup(id);
    m->chunks = nx_calloc(1, sizeof *m->chunks);
    m->chunks[0].plain = nx_strdup(text);
    m->nchunks = m->nsteps = 1;
    enqueue(tg, m);
}

int nx_tg_send(void *state, const struct nx_channel_out *out)
{
    struct tg *tg = state;
    int64_t chat = 0;
    char err[200];
    const json_t *p = out->payload;
    if (tg->is_stopped)
        return NX_ECLOSED;
    if (tg->allow.n && (!tg_parse_i64(out->to, &chat) || !tg_is_allowed(tg, chat))) {
        nx_warn("telegram", "%s: reply to chat %s (not in allowlist.chat_ids) not sent", tg->label,
                out->to);
        nx_channel_count_drop(tg->ch, "allowlist");
        if (out->key)
            nx_channel_sent(tg->ch, out->key, NULL, 0, NULL);
        return 0;
    }
    if (tg->q.n >= tg->q.max)
        return NX_EAGAIN;
    struct out_msg *m = nx_calloc(1, sizeof *m);
    struct nx_buf text = NX_BUF_INIT;
    const json_t *md = json_object_get(p, "media");
    if (md && (m->media = check_media(tg, md))) {
        const char *cap = json_string_value(json_object_get(md, "caption"));
        struct nx_md_chunk *cv = NULL;
        size_t cn = cap ? make_chunks(tg, cap, NX_TG_CAPTION_LIMIT, &cv) : 0;
        if (cn == 1) {
            m->caption = cv[0];
            free(cv);
        } else if (cn > 1) { /* too long for a caption: sent as text after the media */
            nx_md_chunks_free(cv, cn);
            nx_buf_printf(&text, "%s\n\n", cap);
        }
    }
    nx_buf_puts(&text, out->text ? out->text : "");
    m->nchunks = make_chunks(tg, nx_buf_cstr(&text), NX_TG_TEXT_LIMIT, &m->chunks);
    nx_buf_cleanup(&text);
    m->nsteps = m->nchunks + (m->media ? 1 : 0);
    if (m->nsteps == 0) {
        nx_tg_out_msg_free(m);
        if (out->key)
            nx_channel_sent(tg->ch, out->key, NULL, 0, NULL);
        return 0; /* nothing but whitespace */
    }
    const json_t *buttons = json_object_get(p, "buttons");
    if (buttons && nx_tg_keyboard(buttons, &m->markup, err, sizeof err) < 0)
        nx_warn("telegram", "%s: the message's buttons are left out: %s", tg->label, err);
    m->chat = nx_strdup(out->to);
    m->key = out->key ? nx_strdup(out->key) : NULL;
    if (!tg_parse_i64(out->reply_to, &m->reply_to))
        m->reply_to = 0;
    if (out->steps_done >= m->nsteps) { /* all delivered before a crash; only the report was lost */
        nx_tg_out_msg_free(m);
        nx_channel_sent(tg->ch, out->key, NULL, 0, NULL);
        return 0;
    }
    m->sent = out->steps_done; /* resumed: the same text makes the same steps */
    enqueue(tg, m);
    return 0;
}
