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
 * When `url` is set, nexo registers it with setWebhook at start. */

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
    size_t n = 0;

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
    n = 1;
    int rc = nx_tg_feed(tg, v, n); /* takes v */
    if (rc < 0) {
        /* Telegram delivers it again later; the event key makes a repeat harmless. */
        nx_info("telegram", "%s: webhook update not taken now (%s): Telegram will retry", tg->label,
                nx_strerror(rc));
        nx_http_respond_error(req, 503, "overloaded_error", "busy: try again");
        return;
    }
    nx_channel_webhook_ack(tg->ch, req, 200, "application/json", "{\"ok\":true}", 11); /* once recorded */
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
