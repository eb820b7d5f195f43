#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "channels/telegram.h"
#include "core/alloc.h"
#include "core/buf.h"
#include "core/clock.h"
#include "core/error.h"
#include "core/log.h"

/* The Telegram channel: long polling getUpdates with the next offset kept in the store's kv
 * table ("telegram:<instance>:offset"), sendMessage for replies (split at 4096 UTF-16 units,
 * chunks sent one after another), 429 retry_after honoured, a "typing" action when a message
 * comes in.
 *
 * Exactly-once, as far as this slice goes: for each update the inbound event is published
 * first, then the offset past it is written; the next getUpdates (which tells Telegram to
 * forget the earlier updates) starts only once that write has committed. A crash between the
 * publish and the commit (a few milliseconds of group commit) re-processes that update after a
 * restart: at-least-once in that window, and the envelope id is derived from the bot and the
 * update_id so the ledger (when it lands) can drop the repeat. */

#define POLL_MAX_BYTES (16u << 20)
#define SEND_TIMEOUT_MS 30000
#define SEND_MAX_ATTEMPTS 6
#define RETRY_429_MAX 20
#define QUEUE_MAX 1000
#define BACKOFF_MAX_MS 30000

/* ---- state ---- */

struct out_msg {
    struct out_msg *next;
    char *chat;
    char *text;
    struct nx_text_chunk *chunks;
    size_t nchunks;
    size_t sent;        /* chunks delivered */
    int64_t reply_to;   /* 0 = none */
    uint32_t attempts;  /* failures of the current chunk */
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
    char *proxy;
    char *kv_key;
    bool is_polling;
    bool has_offset;
    bool typing;
    uint32_t interval_ms;
    uint32_t long_poll_s;
    struct nx_tg_ids allow;
    int64_t offset;        /* the next update_id wanted */
    uint64_t poll_started_ms;
    uint32_t backoff_ms;
    uv_timer_t poll_timer;
    uv_timer_t send_timer;
    bool is_send_timer_armed;
    struct nx_http_call *poll_call;
    struct nx_http_call *send_call;
    struct out_msg *head, *tail;
    size_t queued;
};

static void tg_unref(struct tg *tg);
static void poll_start(struct tg *tg);
static void send_kick(struct tg *tg);
static void on_poll_timer(uv_timer_t *t);
static void on_send_timer(uv_timer_t *t);

static struct tg *tg_ref(struct tg *tg)
{
    tg->refs++;
    return tg;
}

static void out_msg_free(struct out_msg *m)
{
    if (!m)
        return;
    free(m->chat);
    free(m->text);
    free(m->chunks);
    free(m);
}

static void tg_unref(struct tg *tg)
{
    if (--tg->refs > 0)
        return;
    while (tg->head) {
        struct out_msg *m = tg->head;
        tg->head = m->next;
        out_msg_free(m);
    }
    free(tg->label);
    free(tg->base);
    free(tg->bot_id);
    free(tg->proxy);
    free(tg->kv_key);
    free(tg->allow.v);
    free(tg);
}

static bool is_allowed(const struct tg *tg, int64_t chat)
{
    if (tg->allow.n == 0)
        return true;
    for (size_t i = 0; i < tg->allow.n; i++)
        if (tg->allow.v[i] == chat)
            return true;
    return false;
}

static bool parse_i64(const char *s, int64_t *out)
{
    char *end = NULL;
    errno = 0;
    long long x = s && *s ? strtoll(s, &end, 10) : 0;
    if (!s || !*s || *end || errno)
        return false;
    *out = x;
    return true;
}

static void schedule_poll(struct tg *tg, uint64_t delay_ms)
{
    if (!tg->is_stopped && tg->is_polling)
        uv_timer_start(&tg->poll_timer, on_poll_timer, delay_ms, 0);
}

static struct nx_http_call *call(struct tg *tg, const char *method, const char *query, json_t *body,
                                 uint32_t timeout_ms, uint64_t max_bytes, nx_http_done_fn done)
{
    static const struct nx_http_header json_hdr[] = {{"Content-Type", "application/json"}};
    struct nx_buf url = NX_BUF_INIT;
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    nx_buf_printf(&url, "%s%s%s", tg->base, method, query ? query : "");
    struct nx_http_call_opts o = {
        .method = body ? "POST" : "GET",
        .url = nx_buf_cstr(&url),
        .headers = body ? json_hdr : NULL,
        .nheaders = body ? 1 : 0,
        .body = text,
        .body_len = text ? strlen(text) : 0,
        .timeout_ms = timeout_ms,
        .max_response_bytes = max_bytes,
        .proxy = tg->proxy,
        .on_done = done,
        .udata = tg_ref(tg),
    };
    struct nx_http_call *c = nx_http_client_request(tg->http, &o);
    if (!c)
        tg->refs--; /* never called back */
    free(text);
    nx_buf_cleanup(&url);
    return c;
}

static json_t *chat_json(const char *chat)
{
    int64_t id;
    return parse_i64(chat, &id) ? json_integer((json_int_t)id) : json_string(chat);
}

/* ---- typing ---- */

static void on_typing_done(int rc, const struct nx_http_response *res, const char *err, void *udata)
{
    struct tg *tg = udata;
    if (rc == 0 && res->status != 200)
        nx_debug("telegram", "%s: sendChatAction answered %ld", tg->label, res->status);
    else if (rc < 0 && rc != NX_ECANCELED)
        nx_debug("telegram", "%s: sendChatAction failed: %s", tg->label, err ? err : nx_strerror(rc));
    tg_unref(tg);
}

static void send_typing(struct tg *tg, int64_t chat)
{
    if (!tg->typing)
        return;
    json_t *b = json_pack("{s:I, s:s}", "chat_id", (json_int_t)chat, "action", "typing");
    call(tg, "sendChatAction", NULL, b, 10000, 65536, on_typing_done);
    json_decref(b);
}

/* ---- the offset in the store ---- */

struct kv_job {
    struct tg *tg;
    char *key;
    int64_t value;
    bool is_found;
};

static void kv_job_free(struct kv_job *j)
{
    free(j->key);
    free(j);
}

static int kv_read(sqlite3 *db, void *arg)
{
    struct kv_job *j = arg;
    sqlite3_stmt *st = NULL;
    int rc = NX_EDB;
    if (sqlite3_prepare_v2(db, "SELECT value FROM kv WHERE key = ?", -1, &st, NULL) != SQLITE_OK)
        goto out;
    sqlite3_bind_text(st, 1, j->key, -1, SQLITE_STATIC);
    int s = sqlite3_step(st);
    if (s == SQLITE_ROW) {
        const char *v = (const char *)sqlite3_column_text(st, 0);
        if (!parse_i64(v, &j->value) || j->value < 0)
            goto out;
        j->is_found = true;
    } else if (s != SQLITE_DONE) {
        goto out;
    }
    rc = 0;
out:
    sqlite3_finalize(st);
    return rc;
}

static int kv_write(sqlite3 *db, void *arg)
{
    struct kv_job *j = arg;
    sqlite3_stmt *st = NULL;
    char v[32];
    int rc = NX_EDB;
    snprintf(v, sizeof v, "%" PRId64, j->value);
    if (sqlite3_prepare_v2(db, "INSERT INTO kv (key, value, updated_at) VALUES (?, ?, ?) "
                           "ON CONFLICT(key) DO UPDATE SET value = excluded.value, "
                           "updated_at = excluded.updated_at", -1, &st, NULL) != SQLITE_OK)
        goto out;
    sqlite3_bind_text(st, 1, j->key, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, v, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)nx_wall_ms());
    if (sqlite3_step(st) == SQLITE_DONE)
        rc = 0;
out:
    sqlite3_finalize(st);
    return rc;
}

static void on_offset_read(int rc, void *arg)
{
    struct kv_job *j = arg;
    struct tg *tg = j->tg;
    if (!tg->is_stopped) {
        if (rc < 0) {
            nx_error("telegram", "%s: cannot read the stored offset (%s): polling waits",
                     tg->label, nx_strerror(rc));
            tg->backoff_ms = tg->backoff_ms ? tg->backoff_ms * 2 : 1000;
            if (tg->backoff_ms > BACKOFF_MAX_MS)
                tg->backoff_ms = BACKOFF_MAX_MS;
            schedule_poll(tg, tg->backoff_ms);
        } else {
            tg->has_offset = true;
            tg->offset = j->is_found ? j->value : 0;
            tg->backoff_ms = 0;
            nx_info("telegram", "%s: polling from update %" PRId64 "%s", tg->label, tg->offset,
                    j->is_found ? "" : " (no stored offset)");
            schedule_poll(tg, 0);
        }
    }
    tg_unref(tg);
    kv_job_free(j);
}

static void on_offset_written(int rc, void *arg)
{
    struct kv_job *j = arg;
    struct tg *tg = j->tg;
    if (rc < 0)
        nx_error("telegram", "%s: offset %" PRId64 " not stored (%s): a restart may handle "
                 "those updates again", tg->label, j->value, nx_strerror(rc));
    if (!tg->is_stopped)
        schedule_poll(tg, 0);
    tg_unref(tg);
    kv_job_free(j);
}

static void load_offset(struct tg *tg)
{
    struct kv_job *j = nx_calloc(1, sizeof *j);
    j->tg = tg_ref(tg);
    j->key = nx_strdup(tg->kv_key);
    nx_store_read(tg->store, kv_read, on_offset_read, j);
}

/* ---- polling ---- */

static void poll_later(struct tg *tg, bool is_error, uint32_t retry_after_s)
{
    uint64_t delay;
    if (retry_after_s) {
        delay = (uint64_t)retry_after_s * 1000;
    } else if (is_error) {
        tg->backoff_ms = tg->backoff_ms ? tg->backoff_ms * 2 : 1000;
        if (tg->backoff_ms > BACKOFF_MAX_MS)
            tg->backoff_ms = BACKOFF_MAX_MS;
        delay = tg->backoff_ms;
    } else {
        /* Paced: the next poll starts no sooner than interval_ms after this one did (the real
         * API held the request that long anyway; an emulator answers at once). */
        uint64_t spent = nx_mono_ms() - tg->poll_started_ms;
        delay = spent < tg->interval_ms ? tg->interval_ms - spent : 0;
    }
    schedule_poll(tg, delay);
}

/* Publishes the new updates in order; returns how far it got (the offset to store). */
static int64_t handle_updates(struct tg *tg, const struct nx_tg_update *v, size_t n, bool *is_stalled)
{
    int64_t offset = tg->offset;
    for (size_t i = 0; i < n; i++) {
        const struct nx_tg_update *u = &v[i];
        if (u->update_id < offset) {
            nx_debug("telegram", "%s: update %" PRId64 " already handled: skipped", tg->label,
                     u->update_id);
            continue;
        }
        if (!u->has_message) {
            nx_debug("telegram", "%s: update %" PRId64 " is not a text message: skipped", tg->label,
                     u->update_id);
        } else if (!is_allowed(tg, u->chat_id)) {
            nx_info("telegram", "%s: message from chat %" PRId64 " (not in allowlist.chat_ids) "
                    "ignored", tg->label, u->chat_id);
            nx_channel_count_drop(tg->ch, "allowlist");
        } else {
            char from[32], key[96];
            snprintf(from, sizeof from, "%" PRId64, u->from_id);
            snprintf(key, sizeof key, "bot%s:update:%" PRId64, tg->bot_id, u->update_id);
            json_t *chat = json_integer((json_int_t)u->chat_id);
            json_t *mid = json_integer((json_int_t)u->message_id);
            struct nx_channel_in in = {
                .from = from, .chat = chat, .text = u->text, .msg_id = mid,
                .is_group = u->is_group, .timestamp = u->date, .event_key = key,
            };
            int rc = nx_channel_publish(tg->ch, &in);
            json_decref(chat);
            json_decref(mid);
            if (rc < 0) {
                nx_warn("telegram", "%s: update %" PRId64 " not published (%s): will retry",
                        tg->label, u->update_id, nx_strerror(rc));
                *is_stalled = true;
                break;
            }
            send_typing(tg, u->chat_id);
        }
        offset = u->update_id + 1;
    }
    return offset;
}

static void on_poll_done(int rc, const struct nx_http_response *res, const char *err, void *udata)
{
    struct tg *tg = udata;
    struct nx_tg_update *v = NULL;
    size_t n = 0;
    char desc[256];
    uint32_t retry_after = 0;

    tg->poll_call = NULL;
    if (tg->is_stopped || rc == NX_ECANCELED)
        goto out;
    if (rc < 0) {
        nx_warn("telegram", "%s: getUpdates failed: %s", tg->label, err ? err : nx_strerror(rc));
        poll_later(tg, true, 0);
        goto out;
    }
    if (res->status != 200) {
        nx_tg_parse_error(res->body, res->body_len, desc, sizeof desc, &retry_after);
        if (res->status == 401 || res->status == 404)
            nx_error("telegram", "%s: getUpdates: the Bot API rejects the token (%ld %s)", tg->label,
                     res->status, desc);
        else
            nx_warn("telegram", "%s: getUpdates answered %ld %s%s", tg->label, res->status, desc,
                    res->status == 409 ? " (another poller or a webhook uses this bot)" : "");
        poll_later(tg, true, res->status == 429 && !retry_after ? 1 : retry_after);
        goto out;
    }
    if ((rc = nx_tg_parse_updates(res->body, res->body_len, &v, &n, desc, sizeof desc)) < 0) {
        nx_warn("telegram", "%s: %s", tg->label, desc);
        poll_later(tg, true, 0);
        goto out;
    }
    tg->backoff_ms = 0;
    bool is_stalled = false;
    int64_t offset = handle_updates(tg, v, n, &is_stalled);
    if (offset != tg->offset) {
        tg->offset = offset;
        struct kv_job *j = nx_calloc(1, sizeof *j);
        j->tg = tg_ref(tg);
        j->key = nx_strdup(tg->kv_key);
        j->value = offset;
        nx_store_write(tg->store, kv_write, on_offset_written, j); /* polls again when durable */
    } else {
        poll_later(tg, is_stalled, 0);
    }
out:
    nx_tg_updates_free(v, n);
    tg_unref(tg);
}

static void poll_start(struct tg *tg)
{
    char q[160];
    if (tg->is_stopped || tg->poll_call)
        return;
    if (!tg->has_offset) {
        load_offset(tg);
        return;
    }
    snprintf(q, sizeof q, "?offset=%" PRId64 "&timeout=%u&allowed_updates=%%5B%%22message%%22%%5D",
             tg->offset, tg->long_poll_s);
    tg->poll_started_ms = nx_mono_ms();
    tg->poll_call = call(tg, "getUpdates", q, NULL, tg->long_poll_s * 1000 + 15000, POLL_MAX_BYTES,
                         on_poll_done);
    if (!tg->poll_call)
        poll_later(tg, true, 0);
}

static void on_poll_timer(uv_timer_t *t)
{
    poll_start(t->data);
}

/* ---- sending ---- */

static void drop_head(struct tg *tg, const char *reason)
{
    struct out_msg *m = tg->head;
    if (!m)
        return;
    if (reason)
        nx_channel_count_drop(tg->ch, reason);
    tg->head = m->next;
    if (!tg->head)
        tg->tail = NULL;
    tg->queued--;
    out_msg_free(m);
}

static bool answer_ok(const struct nx_http_response *res)
{
    json_t *root = json_loadb(res->body, res->body_len, 0, NULL);
    bool ok = json_is_true(json_object_get(root, "ok"));
    json_decref(root);
    return ok;
}

static void retry_send(struct tg *tg, uint64_t delay_ms)
{
    tg->is_send_timer_armed = true;
    uv_timer_start(&tg->send_timer, on_send_timer, delay_ms, 0);
}

static void on_send_done(int rc, const struct nx_http_response *res, const char *err, void *udata)
{
    struct tg *tg = udata;
    struct out_msg *m = tg->head;
    char desc[256] = "";
    uint32_t retry_after = 0;

    tg->send_call = NULL;
    if (tg->is_stopped || rc == NX_ECANCELED || !m)
        goto out;
    if (rc == 0 && res->status == 200 && answer_ok(res)) {
        nx_channel_count(tg->ch, "out");
        m->attempts = 0;
        if (++m->sent == m->nchunks)
            drop_head(tg, NULL);
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
            drop_head(tg, "send_failed");
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
            drop_head(tg, "send_failed");
            send_kick(tg);
            goto out;
        }
        uint64_t delay = 500ull << (m->attempts < 7 ? m->attempts : 7);
        nx_warn("telegram", "%s: sendMessage failed (%s): retrying in %" PRIu64 " ms", tg->label,
                rc < 0 ? (err ? err : nx_strerror(rc)) : desc, delay);
        retry_send(tg, delay > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : delay);
        goto out;
    }
    /* 400 (chat not found, bad request), 403 (blocked by the user): retrying will not help. */
    nx_error("telegram", "%s: message to chat %s dropped: %ld %s", tg->label, m->chat, res->status,
             desc);
    drop_head(tg, "send_failed");
    send_kick(tg);
out:
    tg_unref(tg);
}

static void send_kick(struct tg *tg)
{
    struct out_msg *m = tg->head;
    if (tg->is_stopped || tg->send_call || tg->is_send_timer_armed || !m)
        return;
    const struct nx_text_chunk *c = &m->chunks[m->sent];
    json_t *b = json_pack("{s:o, s:s%}", "chat_id", chat_json(m->chat), "text", m->text + c->off,
                          c->len);
    if (!b) { /* not UTF-8: cannot happen for text that came as JSON */
        nx_error("telegram", "%s: message to chat %s dropped: text is not UTF-8", tg->label, m->chat);
        drop_head(tg, "send_failed");
        send_kick(tg);
        return;
    }
    if (m->sent == 0 && m->reply_to > 0)
        json_object_set_new(b, "reply_parameters",
                            json_pack("{s:I, s:b}", "message_id", (json_int_t)m->reply_to,
                                      "allow_sending_without_reply", 1));
    tg->send_call = call(tg, "sendMessage", NULL, b, SEND_TIMEOUT_MS, 1u << 20, on_send_done);
    json_decref(b);
    if (!tg->send_call)
        retry_send(tg, 1000);
}

static void on_send_timer(uv_timer_t *t)
{
    struct tg *tg = t->data;
    tg->is_send_timer_armed = false;
    send_kick(tg);
}

static int tg_send(void *state, const struct nx_channel_out *out)
{
    struct tg *tg = state;
    int64_t chat = 0;
    if (tg->is_stopped)
        return NX_ECLOSED;
    if (tg->allow.n && (!parse_i64(out->to, &chat) || !is_allowed(tg, chat))) {
        nx_warn("telegram", "%s: reply to chat %s (not in allowlist.chat_ids) not sent", tg->label,
                out->to);
        nx_channel_count_drop(tg->ch, "allowlist");
        return 0;
    }
    if (tg->queued >= QUEUE_MAX)
        return NX_EAGAIN;
    struct out_msg *m = nx_calloc(1, sizeof *m);
    m->text = nx_strdup(out->text);
    m->nchunks = nx_text_split(m->text, strlen(m->text), NX_TG_TEXT_LIMIT, &m->chunks);
    if (m->nchunks == 0) {
        out_msg_free(m);
        return 0; /* nothing but whitespace */
    }
    m->chat = nx_strdup(out->to);
    if (!parse_i64(out->reply_to, &m->reply_to))
        m->reply_to = 0;
    if (tg->tail)
        tg->tail->next = m;
    else
        tg->head = m;
    tg->tail = m;
    tg->queued++;
    send_kick(tg);
    return 0;
}

/* ---- start / stop ---- */

static void on_timer_closed(uv_handle_t *h)
{
    tg_unref(h->data);
}

static int tg_start(struct nx_channel *ch, const void *confp, void **state)
{
    const struct nx_tg_conf *conf = confp;
    struct tg *tg = nx_calloc(1, sizeof *tg);
    struct nx_buf b = NX_BUF_INIT;
    const char *url = conf->api_url;
    size_t ulen = strlen(url);

    tg->refs = 1;
    tg->ch = ch;
    tg->http = nx_channel_http(ch);
    tg->store = nx_channel_store(ch);
    tg->label = nx_strdup(nx_channel_label(ch));
    while (ulen > 0 && url[ulen - 1] == '/')
        ulen--;
    nx_buf_printf(&b, "%.*s/bot%s/", (int)ulen, url, conf->token);
    tg->base = nx_buf_steal(&b);
    const char *colon = strchr(conf->token, ':');
    tg->bot_id = colon ? nx_strndup(conf->token, (size_t)(colon - conf->token)) : nx_strdup("0");
    tg->proxy = conf->proxy ? nx_strdup(conf->proxy) : NULL;
    nx_buf_printf(&b, "telegram:%s:offset", nx_channel_instance_key(ch));
    tg->kv_key = nx_buf_steal(&b);
    tg->is_polling = conf->polling.enabled;
    tg->typing = conf->typing;
    tg->interval_ms = conf->polling.interval_ms;
    tg->long_poll_s = conf->polling.interval_ms / 1000 > 50 ? 50 : conf->polling.interval_ms / 1000;
    if (conf->allow.n) {
        tg->allow.v = nx_memdup(conf->allow.v, conf->allow.n * sizeof *conf->allow.v);
        tg->allow.n = conf->allow.n;
    }
    uv_timer_init(nx_channel_loop(ch), &tg->poll_timer);
    uv_timer_init(nx_channel_loop(ch), &tg->send_timer);
    tg->poll_timer.data = tg_ref(tg);
    tg->send_timer.data = tg_ref(tg);
    if (!tg->is_polling)
        nx_info("telegram", "%s: polling disabled: sending only", tg->label);
    else
        schedule_poll(tg, 0); /* reads the stored offset first */
    if (conf->extra && json_object_size(conf->extra) > 0)
        nx_info("telegram", "%s: auto_transcribe, bridge_timeout_ms and allow_agents are accepted "
                "but not used yet", tg->label);
    *state = tg;
    return 0;
}

static void tg_stop(void *state)
{
    struct tg *tg = state;
    tg->is_stopped = true;
    if (tg->poll_call)
        nx_http_call_cancel(tg->poll_call); /* on_poll_done drops its reference */
    if (tg->send_call)
        nx_http_call_cancel(tg->send_call);
    uv_close((uv_handle_t *)&tg->poll_timer, on_timer_closed);
    uv_close((uv_handle_t *)&tg->send_timer, on_timer_closed);
    if (tg->queued)
        nx_warn("telegram", "%s: stopping with %zu message%s not sent", tg->label, tg->queued,
                tg->queued == 1 ? "" : "s");
    tg->ch = NULL;
    tg_unref(tg);
}

const struct nx_channel_type nx_channel_telegram = {
    .name = "telegram",
    .conf = &nx_tg_conf_desc,
    .instance_offset = offsetof(struct nx_tg_conf, instance),
    .start = tg_start,
    .stop = tg_stop,
    .send = tg_send,
};
