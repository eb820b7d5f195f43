#include <inttypes.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "channels/telegram_int.h"
#include "core/alloc.h"
#include "core/error.h"
#include "core/log.h"

/* Telegram webhook mode (plugins/telegram.yaml `webhook: {enabled, secret_token, url}`): instead
 * of long polling, Telegram POSTs each Update to /webhooks/telegram[/<instance>] on the gateway
 * listener with the header X-Telegram-Bot-Api-Secret-Token set to the secret given to
 * setWebhook. The header is compared in constant time before the body is parsed (401 when it is
 * missing or wrong); the update then goes through the processing long polling uses (allowlist,
 * media, publish with the same event key), so a redelivered update is recognised by the ledger.
 * When `url` is set, nexo registers it with setWebhook at start.
 *
 * A request is answered 200 only once its update, media included, is in the ledger: an update
 * with a photo or a document is answered after its download and the commit, so a crash during
 * the download leaves it unanswered and Telegram delivers it again. Updates are handled one at a
 * time in arrival order (as polling does); requests arriving meanwhile wait in a queue
 * (NX_TG_HOOKS_MAX; 503 beyond, and Telegram retries). */

struct tg_hook {
    struct tg_hook *next;
    struct nx_http_req *req; /* NULL once the client went away (the update is handled anyway) */
    struct nx_tg_update *v;  /* the parsed update until fed */
};

static void on_hook_abort(void *arg)
{
    struct tg_hook *h = arg;
    h->req = NULL;
}

static void hook_free(struct tg_hook *h)
{
    if (h->req)
        nx_http_req_on_abort(h->req, NULL, NULL);
    nx_tg_updates_free(h->v, h->v ? 1 : 0);
    free(h);
}

/* Feeds the waiting updates one after another while each is handled at once (no download). */
static void hook_next(struct tg *tg)
{
    if (tg->is_hook_looping)
        return;
    if (!tg->is_me_done && tg->hooks && !tg->is_me_wait_said) {
        tg->is_me_wait_said = true;
        nx_info("telegram", "%s: webhook update %" PRId64 " waits for the bot's name (getMe) to gate "
                "group mentions", tg->label, tg->hooks->v->update_id);
    }
    tg->is_hook_looping = true;
    while (tg->is_me_done && !tg->hook_cur && tg->hooks && !tg->is_stopped) {
        struct tg_hook *h = tg->hooks;
        tg->hooks = h->next;
        if (!tg->hooks)
            tg->hooks_tail = &tg->hooks;
        tg->nhooks--;
        tg->hook_cur = h;
        struct nx_tg_update *v = h->v;
        h->v = NULL;
        nx_tg_feed(tg, v, 1); /* nx_tg_webhook_done may run inside */
    }
    tg->is_hook_looping = false;
}

void nx_tg_webhook_resume(struct tg *tg)
{
    hook_next(tg);
}

/* Answers h's request (when its client is still there) 503, or hands it to the framework to be
 * answered 200 once the store has committed what was queued so far; h is freed. */
static void hook_answer(struct tg *tg, struct tg_hook *h, bool is_recorded, const char *why)
{
    struct nx_http_req *req = h->req;
    h->req = NULL;
    if (req) {
        nx_http_req_on_abort(req, NULL, NULL);
        if (is_recorded)
            nx_channel_webhook_ack(tg->ch, req, 200, "application/json", "{\"ok\":true}", 11);
        else /* Telegram delivers it again later; the event key makes a repeat harmless */
            nx_http_respond_error(req, 503, "overloaded_error", why);
    }
    hook_free(h);
}

void nx_tg_webhook_done(struct tg *tg, bool is_stalled)
{
    struct tg_hook *h = tg->hook_cur;
    tg->hook_cur = NULL;
    if (h)
        hook_answer(tg, h, !is_stalled, "busy: try again");
    hook_next(tg);
}

void nx_tg_webhook_stop(struct tg *tg)
{
    struct tg_hook *h;
    if ((h = tg->hook_cur)) { /* its download is cancelled: not recorded */
        tg->hook_cur = NULL;
        hook_answer(tg, h, false, "stopping: try again");
    }
    while ((h = tg->hooks)) {
        tg->hooks = h->next;
        hook_answer(tg, h, false, "stopping: try again");
    }
    tg->hooks_tail = &tg->hooks;
    tg->nhooks = 0;
}

static bool secret_ok(const char *want, const char *got, size_t got_len)
{
    size_t n = strlen(want);
    return got && got_len == n && n > 0 && CRYPTO_memcmp(want, got, n) == 0;
}

void nx_tg_webhook(void *state, struct nx_http_req *req)
{
    struct tg *tg = state;
    size_t mlen = 0, hlen = 0, blen = 0;
    const char *method = nx_http_req_method(req, &mlen);
    const char *got = nx_http_req_header(req, "X-Telegram-Bot-Api-Secret-Token", &hlen);
    struct nx_tg_update *v = NULL;

    if (tg->is_stopped || !tg->webhook_secret) {
        nx_http_respond_error(req, 404, "not_found_error", "this bot is not in webhook mode");
        return;
    }
    if (mlen != 4 || memcmp(method, "POST", 4) != 0) {
        nx_http_req_add_header(req, "Allow", "POST");
        nx_http_respond_error(req, 405, "invalid_request_error", "Telegram webhooks are POSTs");
        return;
    }
    if (!secret_ok(tg->webhook_secret, got, hlen)) {
        char peer[64];
        nx_http_req_peer(req, peer, sizeof peer);
        nx_warn("telegram", "%s: webhook from %s refused: %s X-Telegram-Bot-Api-Secret-Token", tg->label,
                peer, got ? "wrong" : "no");
        nx_channel_count_drop(tg->ch, "bad_secret");
        nx_http_respond_error(req, 401, "authentication_error", "invalid secret token");
        return;
    }
    const char *body = nx_http_req_body(req, &blen);
    json_t *update = json_loadb(body, blen, JSON_REJECT_DUPLICATES, NULL);
    if (!json_is_object(update)) {
        json_decref(update);
        nx_warn("telegram", "%s: webhook body is not a JSON Update: ignored", tg->label);
        nx_channel_count_drop(tg->ch, "malformed");
        nx_http_respond_error(req, 400, "invalid_request_error", "not an Update object");
        return;
    }
    /* The getUpdates element parser, so both modes read updates alike. */
    v = nx_calloc(1, sizeof *v);
    bool ok = nx_tg_parse_update(update, v);
    json_decref(update);
    if (!ok) {
        free(v);
        nx_warn("telegram", "%s: webhook update not understood: no integer update_id", tg->label);
        nx_channel_count_drop(tg->ch, "malformed");
        nx_http_respond_error(req, 400, "invalid_request_error", "not an Update object");
        return;
    }
    if (tg->nhooks >= NX_TG_HOOKS_MAX) {
        nx_tg_updates_free(v, 1);
        nx_warn("telegram", "%s: %zu webhook updates already wait: this one is refused (Telegram "
                "will retry)", tg->label, tg->nhooks);
        nx_http_respond_error(req, 503, "overloaded_error", "busy: try again");
        return;
    }
    struct tg_hook *h = nx_calloc(1, sizeof *h);
    h->req = req;
    h->v = v;
    *tg->hooks_tail = h;
    tg->hooks_tail = &h->next;
    tg->nhooks++;
    if (tg->hook_cur)
        nx_debug("telegram", "%s: webhook update %" PRId64 " waits behind %zu other%s", tg->label,
                 v->update_id, tg->nhooks, tg->nhooks == 1 ? "" : "s");
    nx_http_req_on_abort(req, on_hook_abort, h);
    hook_next(tg);
}

static void on_set_webhook(int rc, const struct nx_http_response *res, const char *err, void *udata)
{
    struct tg *tg = udata;
    char desc[256] = "";
    uint32_t retry_after = 0;
    if (rc == 0 && res->status == 200) {
        nx_info("telegram", "%s: setWebhook accepted: Telegram now POSTs updates to the webhook url",
                tg->label);
    } else if (rc != NX_ECANCELED) {
        char why[320];
        if (rc == 0) {
            nx_tg_parse_error(res->body, res->body_len, desc, sizeof desc, &retry_after);
            snprintf(why, sizeof why, "HTTP %ld %s", res->status, desc);
        } else {
            snprintf(why, sizeof why, "%s", err ? err : nx_strerror(rc));
        }
        nx_error("telegram", "%s: setWebhook failed (%s): updates will not arrive until the webhook is set",
                 tg->label, why);
    }
    nx_tg_unref(tg);
}

void nx_tg_webhook_start(struct tg *tg, const struct nx_tg_conf *conf)
{
    tg->hooks_tail = &tg->hooks;
    tg->webhook_secret = nx_strdup(conf->webhook.secret_token);
    if (!conf->webhook.url) {
        nx_info("telegram", "%s: webhook mode (no polling): updates are taken at /webhooks/telegram%s%s; "
                "register that public URL with setWebhook and the secret_token", tg->label,
                nx_channel_instance(tg->ch) ? "/" : "",
                nx_channel_instance(tg->ch) ? nx_channel_instance(tg->ch) : "");
        return;
    }
    nx_info("telegram", "%s: webhook mode (no polling): registering %s with setWebhook", tg->label,
            conf->webhook.url);
    json_t *b = json_pack("{s:s, s:s, s:[s, s]}", "url", conf->webhook.url, "secret_token",
                          conf->webhook.secret_token, "allowed_updates", "message", "callback_query");
    if (!nx_tg_call(tg, "setWebhook", NULL, b, 15000, 65536, on_set_webhook))
        nx_error("telegram", "%s: setWebhook could not start", tg->label);
    json_decref(b);
}

void nx_tg_webhook_cleanup(struct tg *tg)
{
    if (tg->webhook_secret)
        OPENSSL_cleanse(tg->webhook_secret, strlen(tg->webhook_secret));
    free(tg->webhook_secret);
    tg->webhook_secret = NULL;
}
