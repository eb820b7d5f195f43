#include <inttypes.h>
#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>

#include "channels/markdown.h"
#include "channels/sendq.h"
#include "channels/whatsapp.h"
#include "channels/whatsapp_int.h"
#include "core/alloc.h"
#include "core/buf.h"
#include "core/clock.h"
#include "core/error.h"
#include "core/log.h"

/* The WhatsApp Business Cloud API channel.
 *
 * In: Meta POSTs signed webhooks to /webhooks/whatsapp[/<instance>] on the gateway listener. The
 * X-Hub-Signature-256 HMAC is checked (constant time) before the body is parsed; each message
 * is published with the wamid as its event key (a webhook Meta delivers twice publishes the
 * same envelope id, which the ledger drops), and each status update goes to nx_channel_status.
 * GET on the same path answers Meta's verification handshake.
 *
 * Out: POST {api_url}/{graph_version}/{phone_number_id}/messages with the access token as a
 * Bearer header (never logged): text split at 4096 characters, templates, reply buttons, lists
 * and media (whatsapp_parse.c builds the bodies). One request in flight per instance, in order.
 * Free-form messages may only go to a user who wrote within the last 24 hours (the customer
 * service window); the last inbound time per user is kept in the store's kv table
 * ("whatsapp:<instance>:last_in:<wa_id>") and outside the window the configured template is
 * sent instead, or the send fails with a clear reason. */

#define SEND_TIMEOUT_MS 30000
#define SEND_MAX_ATTEMPTS 6
#define QUEUE_MAX 1000
#define BACKOFF_MAX_MS 30000

static void send_kick(struct wa *wa);
static void on_send_timer(void *owner);

struct wa *nx_wa_ref(struct wa *wa)
{
    wa->refs++;
    return wa;
}

static void out_msg_free(struct out_msg *m)
{
    if (!m)
        return;
    free(m->to);
    free(m->key);
    free(m->first_id);
    json_decref(m->reqs);
    free(m);
}

void nx_wa_unref(struct wa *wa)
{
    if (--wa->refs > 0)
        return;
    struct out_msg *m;
    while ((m = (struct out_msg *)nx_sendq_pop(&wa->q))) {
        out_msg_free(m);
    }
    free(wa->label);
    free(wa->url);
    if (wa->auth)
        OPENSSL_cleanse(wa->auth, strlen(wa->auth));
    free(wa->auth);
    free(wa->pnid);
    if (wa->app_secret)
        OPENSSL_cleanse(wa->app_secret, strlen(wa->app_secret));
    free(wa->app_secret);
    free(wa->verify_token);
    free(wa->proxy);
    nx_strv_free(wa->allow);
    free(wa->tmpl.name);
    free(wa->tmpl.language);
    json_decref(wa->tmpl.components);
    json_decref(wa->last_in);
    free(wa->kv_prefix);
    free(wa->media_base);
    free(wa->media_dir);
    free(wa);
}

bool nx_wa_is_allowed(const struct wa *wa, const char *who)
{
    if (!wa->allow || !wa->allow[0])
        return true;
    if (who && who[0] == '+')
        who++;
    for (size_t i = 0; who && wa->allow[i]; i++) {
        const char *a = wa->allow[i][0] == '+' ? wa->allow[i] + 1 : wa->allow[i];
        if (strcmp(a, who) == 0)
            return true;
    }
    return false;
}

/* ---- the customer service window, kept in the store ---- */

struct kv_job {
    struct wa *wa;
    char *key;    /* write: the whole key; read: the prefix */
    int64_t value;
    json_t *found; /* read: wa_id -> ms */
};

static void kv_job_free(struct kv_job *j)
{
    free(j->key);
    json_decref(j->found);
    free(j);
}

static int kv_load(sqlite3 *db, void *arg)
{
    struct kv_job *j = arg;
    sqlite3_stmt *st = NULL;
    size_t plen = strlen(j->key);
    int rc = NX_EDB, s;
    if (sqlite3_prepare_v2(db, "SELECT key, value FROM kv WHERE substr(key, 1, ?) = ?", -1, &st,
                           NULL) != SQLITE_OK)
        goto out;
    sqlite3_bind_int64(st, 1, (sqlite3_int64)plen);
    sqlite3_bind_text(st, 2, j->key, -1, SQLITE_STATIC);
    j->found = json_object();
    while ((s = sqlite3_step(st)) == SQLITE_ROW) {
        const char *k = (const char *)sqlite3_column_text(st, 0);
        const char *v = (const char *)sqlite3_column_text(st, 1);
        char *end = NULL;
        long long ms = v ? strtoll(v, &end, 10) : 0;
        if (k && strlen(k) > plen && end && !*end && ms > 0)
            json_object_set_new(j->found, k + plen, json_integer(ms));
    }
    if (s == SQLITE_DONE)
        rc = 0;
out:
    sqlite3_finalize(st);
    return rc;
}

static int kv_store(sqlite3 *db, void *arg)
{
    struct kv_job *j = arg;
    return nx_channel_kv_put(db, j->key, j->value);
}

static void on_loaded(int rc, void *arg)
{
    struct kv_job *j = arg;
    struct wa *wa = j->wa;
    if (rc < 0) {
        nx_error("whatsapp", "%s: cannot read the customer service windows from the store (%s): "
                 "every user counts as outside the window until they write", wa->label, nx_strerror(rc));
    } else {
        const char *k;
        json_t *v;
        json_object_foreach(j->found, k, v) { /* a webhook that came meanwhile is newer */
            json_t *mine = json_object_get(wa->last_in, k);
            if (!mine || json_integer_value(mine) < json_integer_value(v))
                json_object_set(wa->last_in, k, v);
        }
        nx_debug("whatsapp", "%s: %zu customer service window(s) loaded", wa->label,
                 json_object_size(j->found));
    }
    wa->is_loaded = true;
    if (!wa->is_stopped)
        send_kick(wa);
    nx_wa_unref(wa);
    kv_job_free(j);
}

static void on_stored(int rc, void *arg)
{
    struct kv_job *j = arg;
    if (rc < 0)
        nx_warn("whatsapp", "%s: last-message time not stored (%s): after a restart this user may "
                "count as outside the 24-hour window", j->wa->label, nx_strerror(rc));
    nx_wa_unref(j->wa);
    kv_job_free(j);
}

void nx_wa_note_inbound(struct wa *wa, const char *from, int64_t ts_s)
{
    int64_t now = (int64_t)nx_wall_ms();
    int64_t ms = ts_s > 0 && ts_s * 1000 < now ? ts_s * 1000 : now; /* Meta's time, unless ahead */
    json_t *old = json_object_get(wa->last_in, from);
    if (old && json_integer_value(old) >= ms)
        return;
    json_object_set_new(wa->last_in, from, json_integer(ms));
    struct kv_job *j = nx_calloc(1, sizeof *j);
    struct nx_buf b = NX_BUF_INIT;
    nx_buf_printf(&b, "%s%s", wa->kv_prefix, from);
    j->wa = nx_wa_ref(wa);
    j->key = nx_buf_steal(&b);
    j->value = ms;
    nx_store_write(wa->store, kv_store, on_stored, j);
}

static bool in_window(const struct wa *wa, const char *to)
{
    const json_t *v = json_object_get(wa->last_in, to && to[0] == '+' ? to + 1 : to);
    return v && (uint64_t)json_integer_value(v) + wa->window_ms > nx_wall_ms();
}

/* ---- sending ---- */

static struct out_msg *head_msg(const struct wa *wa)
{
    return (struct out_msg *)wa->q.head;
}

static void drop_head(struct wa *wa)
{
    out_msg_free((struct out_msg *)nx_sendq_pop(&wa->q));
}

/* Ends the head message: reports it to the ledger, drops it, goes on with the next. */
static void finish_head(struct wa *wa, int status, const char *error)
{
    struct out_msg *m = head_msg(wa);
    if (status < 0)
        nx_channel_count_drop(wa->ch, "send_failed");
    nx_channel_sent(wa->ch, m->key, m->first_id, status, error);
    drop_head(wa);
    send_kick(wa);
}

static void use_template(struct wa *wa, struct out_msg *m)
{
    json_t *r = nx_wa_template_request(m->to, wa->tmpl.name, wa->tmpl.language, wa->tmpl.components);
    json_array_clear(m->reqs);
    json_array_append_new(m->reqs, r);
    m->sent = 0;
    m->attempts = 0;
    m->is_fallback = true;
}

static void retry_send(struct wa *wa, uint64_t delay_ms)
{
    nx_sendq_retry_in(&wa->q, delay_ms);
}

static void on_send_done(int rc, const struct nx_http_response *res, const char *err, void *udata)
{
    struct wa *wa = udata;
    struct out_msg *m = head_msg(wa);
    struct nx_wa_error ge;
    char wamid[256], why[512];

    wa->q.call = NULL;
    if (wa->is_stopped || rc == NX_ECANCELED || !m)
        goto out;
    if (rc == 0 && res->status >= 200 && res->status < 300 &&
        nx_wa_parse_sent(res->body, res->body_len, wamid, sizeof wamid)) {
        nx_channel_count(wa->ch, "out");
        if (!m->first_id)
            m->first_id = nx_strdup(wamid);
        m->attempts = 0;
        if (++m->sent == json_array_size(m->reqs)) {
            finish_head(wa, 0, NULL);
        } else { /* a crash from here on resumes at the next request */
            nx_channel_progress(wa->ch, m->key, (uint32_t)m->sent, m->first_id);
            send_kick(wa);
        }
        goto out;
    }
    memset(&ge, 0, sizeof ge);
    long status = rc == 0 ? res->status : 0;
    if (rc == 0)
        nx_wa_parse_error(res->body, res->body_len, &ge);
    if (rc < 0)
        snprintf(why, sizeof why, "%s", err ? err : nx_strerror(rc));
    else if (status >= 200 && status < 300)
        snprintf(why, sizeof why, "HTTP %ld without a message id", status);
    else
        snprintf(why, sizeof why, "HTTP %ld, Graph error %" PRId64 "%s%.0" PRId64 " (%s): %s%s%s "
                 "[fbtrace_id %s]", status, ge.code, ge.subcode ? "/" : "", ge.subcode,
                 ge.type[0] ? ge.type : "no type", ge.message[0] ? ge.message : "no message",
                 *nx_wa_error_hint(ge.code) ? " - " : "", nx_wa_error_hint(ge.code),
                 ge.fbtrace_id[0] ? ge.fbtrace_id : "-");
    if (ge.subcode)
        snprintf(why + strlen(why), sizeof why - strlen(why), " (subcode %" PRId64 ")", ge.subcode);
    m->attempts++;
    if (ge.code == 131047 && wa->tmpl.name && !m->is_template && !m->is_fallback) {
        nx_warn("whatsapp", "%s: message to %s refused: %s: sending template \"%s\" instead",
                wa->label, m->to, why, wa->tmpl.name);
        use_template(wa, m);
        send_kick(wa);
        goto out;
    }
    if (nx_wa_error_is_transient(status, ge.code) && m->attempts < SEND_MAX_ATTEMPTS) {
        char ra[32];
        uint64_t delay = nx_sendq_backoff(m->attempts, 1000, BACKOFF_MAX_MS);
        if (rc == 0 && nx_http_response_header(res, "Retry-After", ra, sizeof ra) > 0) {
            long s = strtol(ra, NULL, 10);
            if (s > 0)
                delay = (uint64_t)s * 1000;
        }
        if (delay > BACKOFF_MAX_MS)
            delay = BACKOFF_MAX_MS;
        nx_warn("whatsapp", "%s: send to %s failed (%s): retry %u in %" PRIu64 " ms", wa->label, m->to,
                why, m->attempts, delay);
        retry_send(wa, delay);
        goto out;
    }
    nx_error("whatsapp", "%s: message to %s failed%s: %s", wa->label, m->to,
             m->attempts > 1 ? " for good" : "", why);
    finish_head(wa, rc < 0 ? rc : NX_EPROTO, why);
out:
    nx_wa_unref(wa);
}

static void send_kick(struct wa *wa)
{
    struct out_msg *m = head_msg(wa);
    if (wa->is_stopped || !nx_sendq_is_ready(&wa->q) || !wa->is_loaded)
        return;
    if (m->sent == 0 && m->attempts == 0 && !m->is_template && !m->is_fallback && wa->enforce_window &&
        !in_window(wa, m->to)) {
        if (!wa->tmpl.name) {
            nx_error("whatsapp", "%s: message to %s not sent: outside the 24-hour customer service "
                     "window (the user has not written within window.hours) and no window.template "
                     "is configured", wa->label, m->to);
            finish_head(wa, NX_EPERM, "outside the 24-hour customer service window and no "
                        "window.template configured");
            return;
        }
        nx_info("whatsapp", "%s: %s is outside the customer service window: sending template \"%s\"",
                wa->label, m->to, wa->tmpl.name);
        use_template(wa, m);
    }
    static const char *const ct = "application/json";
    struct nx_http_header hdr[] = {{"Content-Type", ct}, {"Authorization", wa->auth}};
    char *text = json_dumps(json_array_get(m->reqs, m->sent), JSON_COMPACT);
    struct nx_http_call_opts o = {
        .method = "POST",
        .url = wa->url,
        .headers = hdr,
        .nheaders = 2,
        .body = text,
        .body_len = text ? strlen(text) : 0,
        .timeout_ms = SEND_TIMEOUT_MS,
        .max_response_bytes = 1u << 20,
        .proxy = wa->proxy,
        .on_done = on_send_done,
        .udata = nx_wa_ref(wa),
    };
    wa->q.call = nx_http_client_request(wa->http, &o);
    free(text);
    if (!wa->q.call) {
        wa->refs--;
        retry_send(wa, 1000);
    }
}

static void on_send_timer(void *owner)
{
    send_kick(owner);
}

static void add_text(json_t *reqs, const char *to, const char *text, size_t limit, const char **reply_to)
{
    struct nx_text_chunk *c = NULL;
    size_t n = nx_text_split(text, strlen(text), limit, &c);
    for (size_t i = 0; i < n; i++) {
        json_t *r = nx_wa_text_request(to, text + c[i].off, c[i].len, *reply_to);
        if (r)
            json_array_append_new(reqs, r);
        *reply_to = NULL;
    }
    free(c);
}

/* The outbound payload -> request bodies (the text as WhatsApp formatting, with markdown).
 * Returns NULL with a reason when it breaks a rule. */
static json_t *build_requests(const struct nx_channel_out *out, bool markdown, bool *is_template, char *err,
                              size_t errlen)
{
    const json_t *p = out->payload;
    const json_t *tmpl = json_object_get(p, "template");
    const json_t *buttons = json_object_get(p, "buttons");
    const json_t *list = json_object_get(p, "list");
    const json_t *media = json_object_get(p, "media");
    const char *text = out->text ? out->text : "";
    const char *reply_to = out->reply_to;
    json_t *reqs = json_array(), *r = NULL;
    struct nx_buf md = NX_BUF_INIT;

    if (markdown && *text) {
        nx_md_render(&nx_md_whatsapp, text, strlen(text), &md);
        text = nx_buf_cstr(&md);
    }

    *is_template = false;
    if (tmpl) {
        *is_template = true;
        r = nx_wa_template_from_payload(out->to, tmpl, err, errlen);
    } else if (json_array_size(buttons) > 0 || list) {
        /* The text above the buttons holds 1024 characters: what does not fit goes first. */
        struct nx_text_chunk *c = NULL;
        size_t n = nx_text_split(text, strlen(text), NX_WA_BODY_LIMIT, &c);
        for (size_t i = 0; i + 1 < n; i++) {
            json_array_append_new(reqs, nx_wa_text_request(out->to, text + c[i].off, c[i].len, reply_to));
            reply_to = NULL;
        }
        char *last = n ? nx_strndup(text + c[n - 1].off, c[n - 1].len) : NULL;
        r = list ? nx_wa_list_request(out->to, last, list, reply_to, err, errlen)
                 : nx_wa_buttons_request(out->to, last, buttons, reply_to, err, errlen);
        free(last);
        free(c);
    } else if (media) {
        add_text(reqs, out->to, text, NX_WA_TEXT_LIMIT, &reply_to);
        r = nx_wa_media_request(out->to, media, reply_to, err, errlen);
    } else {
        add_text(reqs, out->to, text, NX_WA_TEXT_LIMIT, &reply_to);
        nx_buf_cleanup(&md);
        return reqs;
    }
    nx_buf_cleanup(&md);
    if (!r) {
        json_decref(reqs);
        return NULL;
    }
    json_array_append_new(reqs, r);
    return reqs;
}

static int wa_send(void *state, const struct nx_channel_out *out)
{
    struct wa *wa = state;
    char err[256] = "";
    bool is_template = false;
    if (wa->is_stopped)
        return NX_ECLOSED;
    if (!wa->is_enabled) {
        nx_warn("whatsapp", "%s: disabled (enabled: false): message to %s not sent", wa->label, out->to);
        nx_channel_count_drop(wa->ch, "disabled");
        nx_channel_sent(wa->ch, out->key, NULL, NX_EPERM, "channel instance disabled");
        return 0;
    }
    if (!nx_wa_is_allowed(wa, out->to)) {
        nx_warn("whatsapp", "%s: reply to %s (not in acl.allow_list) not sent", wa->label, out->to);
        nx_channel_count_drop(wa->ch, "allowlist");
        nx_channel_sent(wa->ch, out->key, NULL, 0, NULL);
        return 0;
    }
    if (wa->q.n >= wa->q.max)
        return NX_EAGAIN;
    json_t *reqs = build_requests(out, wa->markdown, &is_template, err, sizeof err);
    if (!reqs) {
        nx_error("whatsapp", "%s: message to %s not sent: %s", wa->label, out->to, err);
        nx_channel_count_drop(wa->ch, "malformed");
        nx_channel_sent(wa->ch, out->key, NULL, NX_EINVAL, err);
        return 0;
    }
    if (json_array_size(reqs) <= out->steps_done) { /* whitespace only, or all delivered before a crash */
        json_decref(reqs);
        nx_channel_sent(wa->ch, out->key, NULL, 0, NULL);
        return 0;
    }
    struct out_msg *m = nx_calloc(1, sizeof *m);
    m->to = nx_strdup(out->to[0] == '+' ? out->to + 1 : out->to);
    m->key = nx_strdup(out->key ? out->key : "");
    m->reqs = reqs;
    m->sent = out->steps_done; /* resumed: the same text makes the same requests */
    m->is_template = is_template;
    nx_sendq_push(&wa->q, &m->qi); /* room checked above */
    send_kick(wa);
    return 0;
}

/* ---- webhooks ---- */

static bool secret_eq(const char *want, const char *got)
{
    size_t n = strlen(want);
    return strlen(got) == n && CRYPTO_memcmp(want, got, n) == 0;
}

static void verify_handshake(struct wa *wa, struct nx_http_req *req)
{
    size_t qlen = 0;
    const char *q = nx_http_req_query(req, &qlen);
    char mode[32], token[512], challenge[512];
    if (q && nx_wa_query_value(q, qlen, "hub.mode", mode, sizeof mode) && strcmp(mode, "subscribe") == 0 &&
        nx_wa_query_value(q, qlen, "hub.verify_token", token, sizeof token) &&
        secret_eq(wa->verify_token, token) &&
        nx_wa_query_value(q, qlen, "hub.challenge", challenge, sizeof challenge)) {
        nx_info("whatsapp", "%s: webhook verified by Meta", wa->label);
        nx_http_respond(req, 200, "text/plain", challenge, strlen(challenge));
        return;
    }
    char peer[64];
    nx_http_req_peer(req, peer, sizeof peer);
    nx_warn("whatsapp", "%s: webhook verification from %s refused (wrong hub.mode or verify_token)",
            wa->label, peer);
    nx_http_respond_error(req, 403, "permission_error", "verification failed");
}

static void on_webhook_post(struct wa *wa, struct nx_http_req *req)
{
    size_t hlen = 0, blen = 0;
    const char *sig = nx_http_req_header(req, "X-Hub-Signature-256", &hlen);
    const char *body = nx_http_req_body(req, &blen);
    struct nx_wa_webhook w;
    char err[256];

    if (blen > wa->max_body) {
        nx_warn("whatsapp", "%s: webhook body of %zu bytes refused (max_body %llu)", wa->label, blen,
                (unsigned long long)wa->max_body);
        nx_channel_count_drop(wa->ch, "too_big");
        nx_http_respond_error(req, 413, "request_too_large", "webhook body too large");
        return;
    }
    if (!nx_wa_signature_ok(wa->app_secret, sig, sig ? hlen : 0, body, blen)) {
        char peer[64];
        nx_http_req_peer(req, peer, sizeof peer);
        nx_warn("whatsapp", "%s: webhook from %s refused: %s X-Hub-Signature-256", wa->label, peer,
                sig ? "wrong" : "no");
        nx_channel_count_drop(wa->ch, "bad_signature");
        nx_http_respond_error(req, 401, "authentication_error", "invalid signature");
        return;
    }
    int rc = nx_wa_parse_webhook(body, blen, &w, err, sizeof err);
    if (rc < 0) {
        nx_warn("whatsapp", "%s: %s", wa->label, err);
        nx_channel_count_drop(wa->ch, "malformed");
        nx_http_respond_error(req, rc == NX_ETOOBIG ? 413 : 400, "invalid_request_error", err);
        return;
    }
    nx_wa_take_webhook(wa, req, &w); /* whatsapp_in.c */
}

static void wa_webhook(void *state, struct nx_http_req *req)
{
    struct wa *wa = state;
    size_t mlen = 0;
    const char *method = nx_http_req_method(req, &mlen);
    if (wa->is_stopped) {
        nx_http_respond_error(req, 503, "overloaded_error", "stopping");
    } else if (mlen == 3 && memcmp(method, "GET", 3) == 0) {
        verify_handshake(wa, req);
    } else if (mlen == 4 && memcmp(method, "POST", 4) == 0) {
        on_webhook_post(wa, req);
    } else {
        nx_http_req_add_header(req, "Allow", "GET, POST");
        nx_http_respond_error(req, 405, "invalid_request_error", "use GET (verification) or POST");
    }
}

/* ---- start / stop ---- */

static void on_timer_closed(uv_handle_t *h)
{
    nx_wa_unref(h->data);
}

static int wa_start(struct nx_channel *ch, const void *confp, void **state)
{
    const struct nx_wa_conf *conf = confp;
    struct wa *wa = nx_calloc(1, sizeof *wa);
    struct nx_buf b = NX_BUF_INIT;
    const char *url = conf->api_url;
    size_t ulen = strlen(url);

    wa->refs = 1;
    wa->ch = ch;
    wa->is_enabled = conf->enabled;
    wa->http = nx_channel_http(ch);
    wa->store = nx_channel_store(ch);
    wa->label = nx_strdup(nx_channel_label(ch));
    while (ulen > 0 && url[ulen - 1] == '/')
        ulen--;
    nx_buf_printf(&b, "%.*s/%s/%s/messages", (int)ulen, url, conf->graph_version, conf->phone_number_id);
    wa->url = nx_buf_steal(&b);
    nx_buf_printf(&b, "Bearer %s", conf->access_token);
    wa->auth = nx_buf_steal(&b);
    wa->pnid = nx_strdup(conf->phone_number_id);
    wa->app_secret = nx_strdup(conf->app_secret);
    wa->verify_token = nx_strdup(conf->verify_token);
    wa->proxy = conf->proxy ? nx_strdup(conf->proxy) : NULL;
    wa->markdown = conf->markdown;
    size_t na = 0;
    while (conf->allow && conf->allow[na])
        na++;
    wa->allow = nx_calloc(na + 1, sizeof *wa->allow);
    for (size_t i = 0; i < na; i++)
        wa->allow[i] = nx_strdup(conf->allow[i]);
    wa->max_body = conf->max_body;
    wa->enforce_window = conf->window.enforce;
    wa->window_ms = (uint64_t)conf->window.hours * 3600 * 1000;
    if (conf->window.template_) {
        wa->tmpl.name = nx_strdup(conf->window.template_->name);
        wa->tmpl.language = nx_strdup(conf->window.template_->language);
        wa->tmpl.components = conf->window.template_->components
                                  ? json_deep_copy(conf->window.template_->components) : NULL;
    }
    wa->last_in = json_object();
    nx_buf_printf(&b, "whatsapp:%s:last_in:", nx_channel_instance_key(ch));
    wa->kv_prefix = nx_buf_steal(&b);
    nx_buf_printf(&b, "%.*s/%s/", (int)ulen, url, conf->graph_version);
    wa->media_base = nx_buf_steal(&b);
    nx_buf_printf(&b, "%s/media/whatsapp/%s", wa->store ? nx_store_dir(wa->store) : "data",
                  nx_channel_instance_key(ch));
    wa->media_dir = nx_buf_steal(&b);
    wa->max_media = conf->max_media_bytes ? conf->max_media_bytes : (uint64_t)16 << 20;
    nx_sendq_init(&wa->q, nx_channel_loop(ch), QUEUE_MAX, on_send_timer, nx_wa_ref(wa));

    struct kv_job *j = nx_calloc(1, sizeof *j);
    j->wa = nx_wa_ref(wa);
    j->key = nx_strdup(wa->kv_prefix);
    nx_store_read(wa->store, kv_load, on_loaded, j);
    if (!wa->is_enabled)
        nx_info("whatsapp", "%s: enabled: false: webhooks are acknowledged and dropped, nothing is sent",
                wa->label);
    nx_info("whatsapp", "%s: number id %s, Graph %s, webhook at /webhooks/whatsapp%s%s", wa->label,
            wa->pnid, conf->graph_version, nx_channel_instance(ch) ? "/" : "",
            nx_channel_instance(ch) ? nx_channel_instance(ch) : "");
    if (conf->extra && json_object_size(conf->extra) > 0)
        nx_info("whatsapp", "%s: nexo-rs WhatsApp Web keys (session_dir, bridge, ...) are accepted "
                "but do not apply to the Cloud API", wa->label);
    *state = wa;
    return 0;
}

static void wa_stop(void *state)
{
    struct wa *wa = state;
    wa->is_stopped = true;
    if (wa->q.call)
        nx_http_call_cancel(wa->q.call);
    nx_wa_batches_stop(wa); /* a download in flight ends its batch: answered 503 */
    nx_sendq_close(&wa->q, on_timer_closed);
    if (wa->q.n)
        nx_warn("whatsapp", "%s: stopping with %zu message%s not sent", wa->label, wa->q.n,
                wa->q.n == 1 ? "" : "s");
    wa->ch = NULL;
    nx_wa_unref(wa);
}

const struct nx_channel_type nx_channel_whatsapp = {
    .name = "whatsapp",
    .conf = &nx_wa_conf_desc,
    .instance_offset = offsetof(struct nx_wa_conf, instance),
    .unique_key = "phone_number_id",
    .unique_offset = offsetof(struct nx_wa_conf, phone_number_id),
    .start = wa_start,
    .stop = wa_stop,
    .send = wa_send,
    .webhook = wa_webhook,
    .webhook_max_body = 64u << 20, /* the instance's max_body applies */
};
