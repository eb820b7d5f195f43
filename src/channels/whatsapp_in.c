#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "channels/whatsapp_int.h"
#include "core/alloc.h"
#include "core/buf.h"
#include "core/error.h"
#include "core/log.h"

/* What a WhatsApp webhook brings in. One webhook POST's messages are published in order; a media
 * message waits for its file (whatsapp_media.c: Graph's media URL, then the download, checked
 * against its SHA-256) so the agent gets it whole, under <data>/media/whatsapp/<instance>/. Webhooks
 * queue behind each other (at most BATCHES_MAX), so a sender's messages keep their order; each is
 * answered once what it published is recorded. */

/* One webhook POST's messages and statuses, published in order; a media message waits for its
 * file (whatsapp_media.c) so the agent gets it whole. The webhook is answered at the end. */
struct nx_wa_batch {
    struct nx_wa_batch *next;
    struct wa *wa;
    struct nx_http_req *req; /* NULL once the client went away */
    struct nx_wa_webhook w;
    size_t next_msg;
    bool is_failed;
    struct nx_wa_fetch *fetch;
};

#define BATCHES_MAX 64

static void publish_msg(struct wa *wa, const struct nx_wa_msg *m, json_t *media, bool *is_failed)
{
    struct nx_buf key = NX_BUF_INIT, text = NX_BUF_INIT;
    const char *kind = NULL;
    if (m->kind == NX_WA_MSG_OTHER) {
        bool is_blank = m->type && !strcmp(m->type, "text");
        nx_info("whatsapp", "%s: %s message %s from %s %s: skipped", wa->label, m->type, m->id, m->from,
                is_blank ? "holds only white space" : "not supported");
        nx_channel_count_drop(wa->ch, is_blank ? "empty" : "unsupported");
        return;
    }
    if (m->kind == NX_WA_MSG_BUTTON) {
        kind = "button";
        nx_buf_puts(&text, m->text ? m->text : m->data);
    } else if (m->kind == NX_WA_MSG_MEDIA && media) { /* the caption, or what it is */
        nx_buf_printf(&text, "%s%s%s", m->text ? "" : "[", m->text ? m->text : m->type, m->text ? "" : "]");
    } else if (m->kind == NX_WA_MSG_MEDIA) {
        nx_buf_printf(&text, "[%s %s%s%s]%s%s", m->type, m->data, m->filename ? " " : "",
                      m->filename ? m->filename : "", m->text ? " " : "", m->text ? m->text : "");
    } else {
        nx_buf_puts(&text, m->text);
    }
    nx_buf_printf(&key, "wamid:%s", m->id);
    json_t *chat = json_string(m->from);
    json_t *mid = json_string(m->id);
    struct nx_channel_in in = {
        .from = m->from, .chat = chat, .text = nx_buf_cstr(&text), .msg_id = mid,
        .timestamp = m->timestamp, .event_key = nx_buf_cstr(&key), .kind = kind,
        .data = m->kind == NX_WA_MSG_TEXT ? NULL : m->data, .media = media,
    };
    int rc = nx_channel_publish(wa->ch, &in);
    if (rc < 0) {
        nx_warn("whatsapp", "%s: message %s not published (%s): Meta will deliver it again", wa->label,
                m->id, nx_strerror(rc));
        *is_failed = true;
    }
    json_decref(chat);
    json_decref(mid);
    nx_buf_cleanup(&key);
    nx_buf_cleanup(&text);
}

static void on_batch_abort(void *arg)
{
    struct nx_wa_batch *b = arg;
    b->req = NULL; /* what it holds is still published: the ledger drops Meta's repeat */
}

static void batch_run(struct nx_wa_batch *b);

/* The batch is done: statuses to the ledger, the answer, the next batch. */
static void batch_end(struct nx_wa_batch *b)
{
    struct wa *wa = b->wa;
    for (size_t i = 0; !wa->is_stopped && i < b->w.nstatuses; i++) {
        const struct nx_wa_status *s = &b->w.statuses[i];
        if (s->phone_number_id && strcmp(s->phone_number_id, wa->pnid) != 0)
            continue;
        if (strcmp(s->status, "failed") == 0)
            nx_warn("whatsapp", "%s: message %s to %s failed at WhatsApp: %s", wa->label, s->id,
                    s->recipient ? s->recipient : "?", s->error ? s->error : "no reason given");
        else
            nx_debug("whatsapp", "%s: message %s %s", wa->label, s->id, s->status);
        nx_channel_status(wa->ch, s->id, s->status, s->error);
    }
    if (b->req) {
        nx_http_req_on_abort(b->req, NULL, NULL);
        if (b->is_failed || wa->is_stopped) /* Meta redelivers; the wamid recognises a repeat */
            nx_http_respond_error(b->req, 503, "overloaded_error", "try again later");
        else
            nx_channel_webhook_ack(wa->ch, b->req, 200, "text/plain", "OK", 2); /* once recorded */
    }
    wa->batches = b->next;
    wa->nbatches--;
    nx_wa_webhook_cleanup(&b->w);
    free(b);
    if (wa->batches) /* stopped: each ends at once, answered 503 */
        batch_run(wa->batches);
    nx_wa_unref(wa);
}

/* {type, path, mime, size, file_name} (path or error), as Telegram's. */
static json_t *media_json(const struct nx_wa_msg *m, int rc, const char *path, const char *mime,
                          int64_t size, const char *err)
{
    json_t *o = json_pack("{s:s, s:s}", "type", m->type, "id", m->data);
    if (rc == 0)
        json_object_set_new(o, "path", json_string(path));
    else
        json_object_set_new(o, "error", json_string(rc == NX_ETOOBIG ? "too large" : "not downloaded"));
    if (mime || m->mime_type)
        json_object_set_new(o, "mime", json_string(mime ? mime : m->mime_type));
    if (rc == 0)
        json_object_set_new(o, "size", json_integer((json_int_t)size));
    json_t *name = m->filename ? json_string(m->filename) : NULL; /* the sender's, never a path */
    if (name)
        json_object_set_new(o, "file_name", name);
    (void)err;
    return json_pack("[o]", o);
}

static void on_media(int rc, const char *path, const char *mime, int64_t size, const char *err,
                     void *udata)
{
    struct nx_wa_batch *b = udata;
    struct wa *wa = b->wa;
    const struct nx_wa_msg *m = &b->w.msgs[b->next_msg];
    b->fetch = NULL;
    if (wa->is_stopped || rc == NX_ECANCELED) {
        b->is_failed = true;
        b->next_msg = b->w.nmsgs;
        batch_end(b);
        return;
    }
    if (rc < 0)
        nx_warn("whatsapp", "%s: %s %s of message %s not downloaded: %s", wa->label, m->type, m->data,
                m->id, err ? err : nx_strerror(rc));
    json_t *media = media_json(m, rc, path, mime, size, err);
    publish_msg(wa, m, media, &b->is_failed);
    json_decref(media);
    b->next_msg++;
    batch_run(b);
}

/* Would the instance's policy take m? Asked before its media is downloaded, so a stranger's
 * files never reach the disk (a dropped one is published without them: the policy counts it). */
static bool policy_admits(struct wa *wa, const struct nx_wa_msg *m)
{
    struct nx_channel_in in = {.from = m->from, .text = m->text};
    return nx_channel_precheck(wa->ch, &in) == 0;
}

/* Publishes the batch's messages from next_msg on, pausing for media downloads. */
static void batch_run(struct nx_wa_batch *b)
{
    struct wa *wa = b->wa;
    for (; !wa->is_stopped && b->next_msg < b->w.nmsgs; b->next_msg++) {
        const struct nx_wa_msg *m = &b->w.msgs[b->next_msg];
        if (m->phone_number_id && strcmp(m->phone_number_id, wa->pnid) != 0) {
            nx_debug("whatsapp", "%s: message %s is for number id %s: skipped", wa->label, m->id,
                     m->phone_number_id);
            continue;
        }
        if (!nx_wa_is_allowed(wa, m->from)) {
            nx_info("whatsapp", "%s: message from %s (not in acl.allow_list) ignored", wa->label, m->from);
            nx_channel_count_drop(wa->ch, "allowlist");
            continue;
        }
        if (!wa->is_enabled) {
            nx_channel_count_drop(wa->ch, "disabled");
            continue;
        }
        nx_wa_note_inbound(wa, m->from, m->timestamp);
        if (m->kind == NX_WA_MSG_MEDIA && m->data && policy_admits(wa, m)) {
            char name[160];
            int rc;
            snprintf(name, sizeof name, "%s-%s", m->id, m->type);
            for (char *p = name; *p; p++) /* a wamid is base64-ish: keep the name plain */
                if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                      *p == '-' || *p == '_'))
                    *p = '_';
            struct nx_wa_fetch_opts o = {
                .http = wa->http, .api_base = wa->media_base, .auth = wa->auth, .proxy = wa->proxy,
                .media_id = m->data, .dir = wa->media_dir, .name = name, .max_bytes = wa->max_media,
                .on_done = on_media, .udata = b,
            };
            if ((b->fetch = nx_wa_fetch_start(&o, &rc)))
                return; /* on_media goes on */
            json_t *media = media_json(m, rc, NULL, NULL, 0, NULL);
            publish_msg(wa, m, media, &b->is_failed);
            json_decref(media);
            continue;
        }
        publish_msg(wa, m, NULL, &b->is_failed);
    }
    batch_end(b);
}

/* Queues the webhook's messages and statuses behind the earlier webhooks' (takes w). */
void nx_wa_take_webhook(struct wa *wa, struct nx_http_req *req, struct nx_wa_webhook *w)
{
    if (wa->nbatches >= BATCHES_MAX) { /* Meta redelivers later */
        nx_wa_webhook_cleanup(w);
        nx_channel_count_drop(wa->ch, "queue_full");
        nx_http_respond_error(req, 503, "overloaded_error", "busy: try again later");
        return;
    }
    struct nx_wa_batch *b = nx_calloc(1, sizeof *b), **pp = &wa->batches;
    b->wa = nx_wa_ref(wa);
    b->req = req;
    b->w = *w;
    nx_http_req_on_abort(req, on_batch_abort, b);
    while (*pp)
        pp = &(*pp)->next;
    *pp = b;
    if (wa->nbatches++ == 0)
        batch_run(b);
}

void nx_wa_batches_stop(struct wa *wa)
{
    if (wa->batches && wa->batches->fetch)
        nx_wa_fetch_cancel(wa->batches->fetch);
}
