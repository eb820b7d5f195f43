#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "channels/markdown.h"
#include "channels/telegram_int.h"
#include "core/alloc.h"
#include "core/buf.h"
#include "core/clock.h"
#include "core/error.h"
#include "core/log.h"
#include "core/metrics.h"
#include "http/multipart.h"

/* The Telegram channel: long polling getUpdates with the next offset kept in the store's kv
 * table ("telegram:<instance>:offset"), sendMessage for replies (Markdown rendered as Telegram
 * HTML, split at 4096 UTF-16 units, chunks sent one after another, inline keyboards on the
 * last), sendPhoto/sendDocument for outbound media, 429 retry_after honoured, "typing" shown
 * while a reply is being made, button presses (callback_query) answered and published, photos
 * and documents downloaded into the data directory, and a watchdog that restarts a long poll
 * that went silent.
 *
 * Exactly-once, as far as this slice goes: for each update the inbound event is published
 * first, then the offset past it is written; the next getUpdates (which tells Telegram to
 * forget the earlier updates) starts only once that write has committed. A crash between the
 * publish and the commit (a few milliseconds of group commit) re-processes that update after a
 * restart: at-least-once in that window, and the envelope id is derived from the bot and the
 * update_id so the ledger (when it lands) can drop the repeat. */

#define POLL_MAX_BYTES (16u << 20)
#define BACKOFF_MAX_MS 30000

static struct nx_metric *m_restarts, *m_media;

static void poll_start(struct tg *tg);
static void on_poll_timer(uv_timer_t *t);

void nx_tg_unref(struct tg *tg)
{
    if (--tg->refs > 0)
        return;
    struct out_msg *m;
    while ((m = (struct out_msg *)nx_sendq_pop(&tg->q))) {
        nx_tg_out_msg_free(m);
    }
    free(tg->label);
    free(tg->base);
    free(tg->bot_id);
    free(tg->mention);
    free(tg->proxy);
    free(tg->kv_key);
    free(tg->allow.v);
    free(tg->file_base);
    free(tg->media_dir);
    free(tg->media_root);
    free(tg->media_path);
    nx_tg_updates_free(tg->batch, tg->nbatch);
    nx_tg_webhook_cleanup(tg);
    free(tg);
}

static void schedule_poll(struct tg *tg, uint64_t delay_ms)
{
    if (!tg->is_stopped && tg->is_polling)
        uv_timer_start(&tg->poll_timer, on_poll_timer, delay_ms, 0);
}

/* A Bot API call; body (of content type ctype) NULL = GET. */
struct nx_http_call *nx_tg_call_raw(struct tg *tg, const char *method, const char *query,
                                    const char *ctype, const char *body, size_t body_len,
                                    uint32_t timeout_ms, uint64_t max_bytes, nx_http_done_fn done)
{
    struct nx_http_header hdr[] = {{"Content-Type", ctype}};
    struct nx_buf url = NX_BUF_INIT;
    nx_buf_printf(&url, "%s%s%s", tg->base, method, query ? query : "");
    struct nx_http_call_opts o = {
        .method = body ? "POST" : "GET",
        .url = nx_buf_cstr(&url),
        .headers = body ? hdr : NULL,
        .nheaders = body ? 1 : 0,
        .body = body,
        .body_len = body_len,
        .timeout_ms = timeout_ms,
        .max_response_bytes = max_bytes,
        .proxy = tg->proxy,
        .on_done = done,
        .udata = tg_ref(tg),
    };
    struct nx_http_call *c = nx_http_client_request(tg->http, &o);
    if (!c)
        tg->refs--; /* never called back */
    nx_buf_cleanup(&url);
    return c;
}

struct nx_http_call *nx_tg_call(struct tg *tg, const char *method, const char *query, json_t *body,
                                uint32_t timeout_ms, uint64_t max_bytes, nx_http_done_fn done)
{
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    struct nx_http_call *c = nx_tg_call_raw(tg, method, query, "application/json", text,
                                            text ? strlen(text) : 0, timeout_ms, max_bytes, done);
    free(text);
    return c;
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
        if (!tg_parse_i64(v, &j->value) || j->value < 0)
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
    return nx_channel_kv_put(db, j->key, j->value);
}

static void on_offset_read(int rc, void *arg)
{
    struct kv_job *j = arg;
    struct tg *tg = j->tg;
    tg->is_offset_busy = false;
    tg->progress_ms = nx_mono_ms();
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
    nx_tg_unref(tg);
    kv_job_free(j);
}

/* getMe: the bot's username and id, for group mention gating (by polling and webhook alike);
 * polling starts after it. */
static void on_get_me(int rc, const struct nx_http_response *res, const char *err, void *udata)
{
    struct tg *tg = udata;
    json_t *root = rc == 0 && res->status == 200 ? json_loadb(res->body, res->body_len, 0, NULL) : NULL;
    const json_t *me = json_object_get(root, "result");
    const char *user = json_string_value(json_object_get(me, "username"));
    if (user && strlen(user) < 64) {
        struct nx_buf b = NX_BUF_INIT;
        nx_buf_printf(&b, "@%s ", user);
        for (char *p = b.data; *p; p++)
            *p = (char)tolower((unsigned char)*p);
        free(tg->mention);
        tg->mention = nx_buf_steal(&b);
        if (json_is_integer(json_object_get(me, "id")))
            tg->bot_user_id = (int64_t)json_integer_value(json_object_get(me, "id"));
        tg->can_read_all = json_is_true(json_object_get(me, "can_read_all_group_messages"));
        nx_info("telegram", "%s: the bot is @%s", tg->label, user);
    } else if (rc != NX_ECANCELED) {
        nx_warn("telegram", "%s: getMe failed (%s): group mentions by @username are not recognised",
                tg->label, rc < 0 ? (err ? err : nx_strerror(rc)) : "unexpected answer");
    }
    json_decref(root);
    tg->is_me_done = true;
    if (!tg->is_stopped) {
        schedule_poll(tg, 0);
        nx_tg_webhook_resume(tg);
    }
    nx_tg_unref(tg);
}

static void get_me(struct tg *tg)
{
    tg_parse_i64(tg->bot_id, &tg->bot_user_id);
    if (!nx_tg_call(tg, "getMe", NULL, NULL, 10000, 65536, on_get_me)) {
        tg->is_me_done = true;
        schedule_poll(tg, 0);
    }
}

static void on_offset_written(int rc, void *arg)
{
    struct kv_job *j = arg;
    struct tg *tg = j->tg;
    tg->is_offset_busy = false;
    tg->progress_ms = nx_mono_ms();
    if (rc < 0)
        nx_error("telegram", "%s: offset %" PRId64 " not stored (%s): a restart may handle "
                 "those updates again", tg->label, j->value, nx_strerror(rc));
    if (!tg->is_stopped)
        schedule_poll(tg, 0);
    nx_tg_unref(tg);
    kv_job_free(j);
}

static void load_offset(struct tg *tg)
{
    struct kv_job *j = nx_calloc(1, sizeof *j);
    j->tg = tg_ref(tg);
    j->key = nx_strdup(tg->kv_key);
    tg->is_offset_busy = true;
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

static void process_batch(struct tg *tg);

/* {type, path, mime, size, file_name} of the current update's media, or NULL. */
static json_t *media_json(const struct tg *tg, const struct nx_tg_media *md)
{
    json_t *o = json_pack("{s:s}", "type", md->type);
    if (tg->media_path)
        json_object_set_new(o, "path", json_string(tg->media_path));
    else
        json_object_set_new(o, "error", json_string("not downloaded"));
    if (md->mime)
        json_object_set_new(o, "mime", json_string(md->mime));
    json_object_set_new(o, "size", json_integer((json_int_t)(tg->media_path ? tg->media_size : md->size)));
    if (md->file_name)
        json_object_set_new(o, "file_name", json_string(md->file_name));
    return json_pack("[o]", o);
}

static bool addresses_bot(const struct tg *tg, const struct nx_tg_update *u)
{
    return nx_tg_addresses_bot(u, tg->mention, tg->bot_user_id, tg->can_read_all);
}

/* Publishes one message or button press; false when the bus refused it (try again later). */
static bool publish_update(struct tg *tg, const struct nx_tg_update *u)
{
    char from[32], key[96];
    const char *text = u->text;
    char note[96];
    json_t *media = u->media ? media_json(tg, u->media) : NULL;
    snprintf(from, sizeof from, "%" PRId64, u->from_id);
    if (u->callback_id)
        snprintf(key, sizeof key, "bot%s:callback:%s", tg->bot_id, u->callback_id);
    else
        snprintf(key, sizeof key, "bot%s:update:%" PRId64, tg->bot_id, u->update_id);
    if (!text && u->media) { /* the agent still hears of it */
        snprintf(note, sizeof note, "[%s]", u->media->type);
        text = note;
    }
    json_t *chat = json_integer((json_int_t)u->chat_id);
    json_t *mid = u->message_id ? json_integer((json_int_t)u->message_id) : NULL;
    struct nx_channel_in in = {
        .from = from, .chat = chat, .text = u->callback_id ? NULL : text, .msg_id = mid,
        .is_group = u->is_group, .timestamp = u->date, .event_key = key,
        .kind = u->callback_id ? "button" : NULL, .data = u->callback_data, .media = media,
        /* a button press answers the bot's own message */
        .mentioned = addresses_bot(tg, u),
    };
    int rc = nx_channel_publish(tg->ch, &in);
    json_decref(chat);
    json_decref(mid);
    json_decref(media);
    if (rc < 0) {
        nx_warn("telegram", "%s: update %" PRId64 " not published (%s): will retry", tg->label,
                u->update_id, nx_strerror(rc));
        return false;
    }
    if (u->callback_id) { /* stops the spinner on the user's button */
        json_t *b = json_pack("{s:s}", "callback_query_id", u->callback_id);
        nx_tg_call(tg, "answerCallbackQuery", NULL, b, 10000, 65536, nx_tg_on_aux_done);
        json_decref(b);
    } else if (rc != NX_CHANNEL_DROPPED) {
        nx_tg_typing_start(tg, u->chat_id);
    }
    return true;
}

static void on_fetched(int rc, const char *path, int64_t size, const char *err, void *udata)
{
    struct tg *tg = udata;
    tg->fetch = NULL;
    tg->progress_ms = nx_mono_ms();
    if (!tg->is_stopped && rc != NX_ECANCELED && tg->batch) {
        const struct nx_tg_update *u = &tg->batch[tg->bi];
        const char *const lv[] = {nx_channel_instance_key(tg->ch), rc == 0 ? "saved" :
                                  rc == NX_ETOOBIG ? "too_large" : "failed"};
        nx_counter_add(m_media, lv, 1);
        tg->media_rc = rc;
        tg->media_size = size;
        if (rc == 0) {
            tg->media_path = nx_strdup(path);
        } else if (rc == NX_ETOOBIG) {
            nx_warn("telegram", "%s: %s in update %" PRId64 " is larger than max_media_bytes (%" PRIu64
                    "): dropped", tg->label, u->media->type, u->update_id, tg->max_media);
        } else {
            nx_warn("telegram", "%s: %s in update %" PRId64 " not downloaded: %s", tg->label,
                    u->media->type, u->update_id, err ? err : nx_strerror(rc));
        }
        process_batch(tg);
    }
    nx_tg_unref(tg);
}

/* Would the instance's policy take u? Asked before its media is downloaded (or found too
 * large), so a stranger's files never reach the disk. */
static bool policy_admits(struct tg *tg, const struct nx_tg_update *u)
{
    char from[32], note[96];
    const char *text = u->text;
    snprintf(from, sizeof from, "%" PRId64, u->from_id);
    if (!text && u->media) { /* as publish_update words it */
        snprintf(note, sizeof note, "[%s]", u->media->type);
        text = note;
    }
    struct nx_channel_in in = {
        .from = from, .text = u->callback_id ? NULL : text, .is_group = u->is_group,
        .mentioned = addresses_bot(tg, u),
    };
    return nx_channel_precheck(tg->ch, &in) == 0;
}

/* Starts the download of u's media; false when it cannot start. */
static bool fetch_media(struct tg *tg, const struct nx_tg_update *u)
{
    char name[48];
    snprintf(name, sizeof name, "%" PRId64 "-%s", u->update_id, u->media->type);
    struct nx_tg_fetch_opts o = {
        .http = tg->http, .api_base = tg->base, .file_base = tg->file_base, .proxy = tg->proxy,
        .file_id = u->media->file_id, .type = u->media->type, .dir = tg->media_dir, .name = name,
        .max_bytes = tg->max_media, .on_done = on_fetched, .udata = tg_ref(tg),
    };
    if (u->media->size > 0 && (uint64_t)u->media->size > tg->max_media) { /* no need to ask */
        tg->refs--;
        tg->media_rc = NX_ETOOBIG;
        tg->media_size = u->media->size;
        const char *const lv[] = {nx_channel_instance_key(tg->ch), "too_large"};
        nx_counter_add(m_media, lv, 1);
        nx_warn("telegram", "%s: %s in update %" PRId64 " is larger than max_media_bytes (%" PRIu64
                "): dropped", tg->label, u->media->type, u->update_id, tg->max_media);
        return false;
    }
    tg->fetch = nx_tg_fetch_start(&o);
    if (!tg->fetch) {
        tg->refs--;
        return false;
    }
    return true;
}

static void batch_done(struct tg *tg)
{
    nx_tg_updates_free(tg->batch, tg->nbatch);
    tg->batch = NULL;
    tg->nbatch = tg->bi = 0;
    tg->progress_ms = nx_mono_ms();
    if (tg->webhook_secret) { /* webhooks keep no offset: the request is answered instead */
        nx_tg_webhook_done(tg, tg->is_batch_stalled);
    } else if (tg->batch_offset != tg->offset) {
        tg->offset = tg->batch_offset;
        struct kv_job *j = nx_calloc(1, sizeof *j);
        j->tg = tg_ref(tg);
        j->key = nx_strdup(tg->kv_key);
        j->value = tg->offset;
        tg->is_offset_busy = true;
        nx_store_write(tg->store, kv_write, on_offset_written, j); /* polls again when durable */
    } else {
        poll_later(tg, tg->is_batch_stalled, 0);
    }
}

/* True the first time for an update: a note of ours (not an event with a ledger key) is sent
 * once when Telegram delivers the update again while nexo runs (a webhook retried); the list is
 * in memory, so after a restart a redelivered update gets its note again. */
static bool note_once(struct tg *tg, int64_t update_id)
{
    size_t n = tg->nnoted < NX_ARRAY_LEN(tg->noted) ? tg->nnoted : NX_ARRAY_LEN(tg->noted);
    for (size_t i = 0; i < n; i++)
        if (tg->noted[i] == update_id)
            return false;
    tg->noted[tg->nnoted++ % NX_ARRAY_LEN(tg->noted)] = update_id;
    return true;
}

/* Publishes the batch's updates in order, pausing for media downloads; then stores how far it
 * got (the offset) and polls again. */
static void process_batch(struct tg *tg)
{
    for (; tg->bi < tg->nbatch; tg->bi++) {
        const struct nx_tg_update *u = &tg->batch[tg->bi];
        if (u->update_id < tg->batch_offset) {
            nx_debug("telegram", "%s: update %" PRId64 " already handled: skipped", tg->label,
                     u->update_id);
            continue;
        }
        if (!u->has_message) {
            nx_debug("telegram", "%s: update %" PRId64 " is not a message or a button press: skipped",
                     tg->label, u->update_id);
        } else if (!tg_is_allowed(tg, u->chat_id)) {
            nx_info("telegram", "%s: message from chat %" PRId64 " (not in allowlist.chat_ids) "
                    "ignored", tg->label, u->chat_id);
            nx_channel_count_drop(tg->ch, "allowlist");
        } else {
            if (u->media && tg->media_rc == 1 && !policy_admits(tg, u))
                tg->media_rc = NX_EPERM; /* published without it: the policy drops and counts it */
            if (u->media && tg->media_rc == 1 && fetch_media(tg, u))
                return; /* on_fetched goes on */
            if (tg->media_rc == NX_ETOOBIG && note_once(tg, u->update_id)) {
                char note[160];
                snprintf(note, sizeof note, "That file is too large for me (the limit is %" PRIu64
                         " MB): it was not received.", tg->max_media >> 20);
                nx_tg_queue_note(tg, u->chat_id, note);
                nx_channel_count_drop(tg->ch, "media_too_large");
            } else if (tg->media_rc == NX_ETOOBIG) {
                nx_debug("telegram", "%s: update %" PRId64 " delivered again: its note was sent", tg->label,
                         u->update_id);
            } else if (!publish_update(tg, u)) {
                tg->is_batch_stalled = true;
                break;
            }
        }
        tg->batch_offset = u->update_id + 1;
        tg->media_rc = 1;
        free(tg->media_path);
        tg->media_path = NULL;
    }
    tg->media_rc = 1;
    free(tg->media_path);
    tg->media_path = NULL;
    batch_done(tg);
}

void nx_tg_feed(struct tg *tg, struct nx_tg_update *v, size_t n)
{
    tg->batch = v;
    tg->nbatch = n;
    tg->bi = 0;
    tg->batch_offset = 0; /* webhooks: no offset; the event key recognises a repeat */
    tg->is_batch_stalled = false;
    process_batch(tg);
}

static void on_poll_done(int rc, const struct nx_http_response *res, const char *err, void *udata)
{
    struct tg *tg = udata;
    struct nx_tg_update *v = NULL;
    size_t n = 0;
    char desc[256];
    uint32_t retry_after = 0;

    tg->poll_call = NULL;
    tg->progress_ms = nx_mono_ms();
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
    tg->batch = v;
    tg->nbatch = n;
    tg->bi = 0;
    tg->batch_offset = tg->offset;
    tg->is_batch_stalled = false;
    v = NULL;
    n = 0;
    process_batch(tg);
out:
    nx_tg_updates_free(v, n);
    nx_tg_unref(tg);
}

static void poll_start(struct tg *tg)
{
    char q[160];
    if (tg->is_stopped || tg->poll_call || tg->batch || tg->is_offset_busy)
        return;
    if (!tg->has_offset) {
        load_offset(tg);
        return;
    }
    snprintf(q, sizeof q, "?offset=%" PRId64 "&timeout=%u&allowed_updates=%%5B%%22message%%22%%2C"
             "%%22callback_query%%22%%5D", tg->offset, tg->long_poll_s);
    tg->poll_started_ms = tg->progress_ms = nx_mono_ms();
    /* The watchdog gives up on it first (long_poll_s + watchdog_ms); this is the backstop. */
    tg->poll_call = nx_tg_call(tg, "getUpdates", q, NULL, tg->long_poll_s * 1000 + tg->watchdog_ms + 15000,
                         POLL_MAX_BYTES, on_poll_done);
    if (!tg->poll_call)
        poll_later(tg, true, 0);
}

static void on_poll_timer(uv_timer_t *t)
{
    poll_start(t->data);
}

/* ---- the watchdog ---- */

/* A long poll that got no answer long_poll_s + watchdog_ms after it started (a connection a
 * middlebox silently dropped, a peer that never answers), or a polling cycle that stopped
 * moving without a timer to restart it, is abandoned and polling starts again. */
static void on_watchdog(uv_timer_t *t)
{
    struct tg *tg = t->data;
    uint64_t now = nx_mono_ms();
    uint64_t limit = (uint64_t)tg->long_poll_s * 1000 + tg->watchdog_ms;
    const char *why = NULL;
    if (tg->is_stopped || !tg->is_polling)
        return;
    if (tg->poll_call && now - tg->poll_started_ms > limit)
        why = "getUpdates unanswered";
    else if (!tg->poll_call && !tg->batch && !tg->is_offset_busy &&
             !uv_is_active((uv_handle_t *)&tg->poll_timer) && now - tg->progress_ms > limit)
        why = "polling stalled";
    if (!why)
        return;
    nx_warn("telegram", "%s: %s for %" PRIu64 " ms: restarting the long poll", tg->label, why,
            now - (tg->poll_call ? tg->poll_started_ms : tg->progress_ms));
    const char *const lv[] = {nx_channel_instance_key(tg->ch)};
    nx_counter_add(m_restarts, lv, 1);
    if (tg->poll_call) {
        struct nx_http_call *c = tg->poll_call;
        tg->poll_call = NULL;
        nx_http_call_cancel(c); /* on_poll_done sees NX_ECANCELED and does nothing more */
    }
    tg->progress_ms = now;
    schedule_poll(tg, 0);
}

/* ---- start / stop ---- */

static void on_timer_closed(uv_handle_t *h)
{
    nx_tg_unref(h->data);
}

static void register_metrics(void)
{
    static const char *const labels[] = {"instance", NULL};
    static const char *const media_labels[] = {"instance", "result", NULL};
    if (m_restarts)
        return;
    m_restarts = nx_metric_counter("nexo_telegram_poll_restarts_total",
                                   "long polls the watchdog abandoned and restarted", labels);
    m_media = nx_metric_counter("nexo_telegram_media_total",
                                "inbound photos and documents (saved, too_large, failed)", media_labels);
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
    nx_buf_printf(&b, "%.*s/file/bot%s/", (int)ulen, url, conf->token);
    tg->file_base = nx_buf_steal(&b);
    nx_buf_printf(&b, "%s/media", nx_store_dir(tg->store));
    tg->media_root = nx_buf_steal(&b);
    nx_buf_printf(&b, "%s/telegram/%s", tg->media_root, nx_channel_instance_key(ch));
    tg->media_dir = nx_buf_steal(&b);
    const char *colon = strchr(conf->token, ':');
    tg->bot_id = colon ? nx_strndup(conf->token, (size_t)(colon - conf->token)) : nx_strdup("0");
    tg->proxy = conf->proxy ? nx_strdup(conf->proxy) : NULL;
    nx_buf_printf(&b, "telegram:%s:offset", nx_channel_instance_key(ch));
    tg->kv_key = nx_buf_steal(&b);
    tg->is_polling = conf->polling.enabled && !conf->webhook.enabled;
    tg->typing = conf->typing;
    tg->markdown = conf->markdown;
    tg->max_media = conf->max_media_bytes;
    tg->media_rc = 1;
    tg->watchdog_ms = conf->polling.watchdog_ms;
    tg->interval_ms = conf->polling.interval_ms;
    tg->long_poll_s = conf->polling.interval_ms / 1000 > 50 ? 50 : conf->polling.interval_ms / 1000;
    if (conf->allow.n) {
        tg->allow.v = nx_memdup(conf->allow.v, conf->allow.n * sizeof *conf->allow.v);
        tg->allow.n = conf->allow.n;
    }
    register_metrics();
    uv_timer_init(nx_channel_loop(ch), &tg->poll_timer);
    uv_timer_init(nx_channel_loop(ch), &tg->typing_timer);
    uv_timer_init(nx_channel_loop(ch), &tg->watchdog);
    tg->poll_timer.data = tg_ref(tg);
    nx_sendq_init(&tg->q, nx_channel_loop(ch), NX_TG_QUEUE_MAX, nx_tg_on_send_timer, tg_ref(tg));
    tg->typing_timer.data = tg_ref(tg);
    tg->watchdog.data = tg_ref(tg);
    tg->progress_ms = nx_mono_ms();
    if (conf->webhook.enabled) {
        nx_tg_webhook_start(tg, conf);
        get_me(tg); /* (no polling after it: is_polling is off) */
    } else if (!tg->is_polling) {
        nx_info("telegram", "%s: polling disabled: sending only", tg->label);
    } else {
        uint64_t tick = tg->watchdog_ms / 4;
        tick = tick < 50 ? 50 : tick > 5000 ? 5000 : tick;
        uv_timer_start(&tg->watchdog, on_watchdog, tick, tick);
        get_me(tg); /* then polls, which reads the stored offset first */
    }
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
    if (tg->q.call)
        nx_http_call_cancel(tg->q.call);
    if (tg->fetch)
        nx_tg_fetch_cancel(tg->fetch); /* on_fetched drops its reference */
    nx_tg_webhook_stop(tg);
    uv_close((uv_handle_t *)&tg->poll_timer, on_timer_closed);
    nx_sendq_close(&tg->q, on_timer_closed);
    uv_close((uv_handle_t *)&tg->typing_timer, on_timer_closed);
    uv_close((uv_handle_t *)&tg->watchdog, on_timer_closed);
    if (tg->q.n)
        nx_warn("telegram", "%s: stopping with %zu message%s not sent", tg->label, tg->q.n,
                tg->q.n == 1 ? "" : "s");
    tg->ch = NULL;
    nx_tg_unref(tg);
}

const struct nx_channel_type nx_channel_telegram = {
    .name = "telegram",
    .conf = &nx_tg_conf_desc,
    .instance_offset = offsetof(struct nx_tg_conf, instance),
    .unique_key = "token", /* two instances of one bot would take each other's updates */
    .unique_offset = offsetof(struct nx_tg_conf, token),
    .is_unique_secret = true,
    .start = tg_start,
    .stop = tg_stop,
    .send = nx_tg_send,
    .webhook = nx_tg_webhook,
};
