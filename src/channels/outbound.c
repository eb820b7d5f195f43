#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "bus/envelope.h"
#include "channels/policy.h"
#include "core/alloc.h"
#include "core/buf.h"
#include "core/error.h"
#include "core/log.h"

/* Sends an agent starts itself (the send_message tool), checked against outbound_allowlist
 * {channel: [recipients]}: an empty or absent list leaves that channel unrestricted (nexo-rs
 * semantics); "telegram.<instance>" entries are looked up before "telegram". A reply to the peer
 * of the session the turn answers is never refused (it is a reply, not a new conversation). */

/* "agent:<agent>:<channel>:<peer>" -> channel and peer (pointers into s, lengths). */
static bool split_session(const char *s, const char **chan, size_t *clen, const char **peer)
{
    if (!s || strncmp(s, "agent:", 6) != 0)
        return false;
    const char *a = strchr(s + 6, ':');
    if (!a)
        return false;
    const char *c = a + 1, *e = strchr(c, ':');
    if (!e || e == c || !e[1])
        return false;
    *chan = c;
    *clen = (size_t)(e - c);
    *peer = e + 1;
    return true;
}

static bool list_has(const json_t *list, const char *to)
{
    size_t i;
    const json_t *v;
    json_array_foreach(list, i, v) {
        char num[32];
        const char *s = json_string_value(v);
        if (!s && json_is_integer(v)) {
            snprintf(num, sizeof num, "%lld", (long long)json_integer_value(v));
            s = num;
        }
        if (s && strcmp(s, to) == 0)
            return true;
    }
    return false;
}

/* The binding the session's channel came through, when it overrides outbound_allowlist. */
static const json_t *binding_override(const struct nx_agent_conf *a, const char *chan, size_t clen)
{
    for (size_t k = 0; k < a->n_inbound_bindings; k++) {
        const struct nx_binding_conf *b = &a->inbound_bindings[k];
        size_t pl = strlen(b->plugin);
        bool match = b->instance
            ? clen == pl + 1 + strlen(b->instance) && strncmp(chan, b->plugin, pl) == 0 && chan[pl] == '.' &&
              strncmp(chan + pl + 1, b->instance, clen - pl - 1) == 0
            : clen == pl && strncmp(chan, b->plugin, pl) == 0;
        if (match) {
            const json_t *o = json_object_get(b->overrides, "outbound_allowlist");
            return json_is_object(o) ? o : NULL;
        }
    }
    return NULL;
}

bool nx_outbound_allowed(const struct nx_agent_conf *a, const char *session_key, const char *type,
                         const char *instance, const char *to)
{
    struct nx_buf label = NX_BUF_INIT;
    const char *chan = NULL, *peer = NULL;
    size_t clen = 0;
    bool ok = false;

    nx_buf_printf(&label, "%s%s%s", type, instance ? "." : "", instance ? instance : "");
    bool has_session = split_session(session_key, &chan, &clen, &peer);
    if (has_session && clen == label.len && strncmp(chan, nx_buf_cstr(&label), clen) == 0 &&
        strcmp(peer, to) == 0) {
        ok = true; /* a reply in the conversation the turn answers */
        goto out;
    }
    const json_t *over = has_session ? binding_override(a, chan, clen) : NULL;
    if (over) {
        const json_t *list = json_object_get(over, nx_buf_cstr(&label));
        if (!json_is_array(list) || json_array_size(list) == 0)
            list = json_object_get(over, type);
        ok = !json_is_array(list) || json_array_size(list) == 0 || list_has(list, to);
        goto out;
    }
    char *const *list = nx_strlistmap_get(&a->outbound_allowlist, nx_buf_cstr(&label));
    if (!list || !list[0])
        list = nx_strlistmap_get(&a->outbound_allowlist, type);
    ok = !list || !list[0];
    for (size_t i = 0; !ok && list[i]; i++)
        ok = strcmp(list[i], to) == 0;
out:
    nx_buf_cleanup(&label);
    return ok;
}

static void digest_str(EVP_MD_CTX *md, const char *s)
{
    if (s)
        EVP_DigestUpdate(md, s, strlen(s) + 1); /* the NUL separates the fields */
    else
        EVP_DigestUpdate(md, "\x01", 1); /* absent differs from "" */
}

static void digest_json(EVP_MD_CTX *md, const json_t *v)
{
    char *s = v ? json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY) : NULL;
    digest_str(md, s);
    free(s);
}

void nx_send_message_key(const struct nx_send_message_req *rq, const char *instance, char *out)
{
    static const char hex[] = "0123456789abcdef";
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned int dn = 0;
    EVP_MD_CTX *md;

    if (!rq->event_id || !*rq->event_id || !(md = EVP_MD_CTX_new())) {
        char u[37];
        nx_uuid_v4(u);
        memcpy(out, u, NX_SEND_KEY_LEN); /* 35 of the uuid's 36 characters: still random */
        out[NX_SEND_KEY_LEN] = '\0';
        return;
    }
    EVP_DigestInit_ex(md, EVP_sha256(), NULL);
    digest_str(md, "nexo.send_message.v1");
    digest_str(md, rq->agent_id);
    digest_str(md, rq->session_key);
    digest_str(md, rq->event_id);
    digest_str(md, rq->channel);
    digest_str(md, instance);
    digest_str(md, rq->to);
    digest_str(md, rq->text);
    digest_json(md, json_object_get(rq->args, "buttons"));
    digest_json(md, json_object_get(rq->args, "template"));
    digest_json(md, json_object_get(rq->args, "media"));
    EVP_DigestFinal_ex(md, d, &dn);
    EVP_MD_CTX_free(md);
    memcpy(out, "sm-", 3);
    for (size_t i = 0; i < 16 && i < dn; i++) {
        out[3 + 2 * i] = hex[d[i] >> 4];
        out[4 + 2 * i] = hex[d[i] & 15];
    }
    out[NX_SEND_KEY_LEN] = '\0';
}

int nx_channels_send_message(struct nx_channels *cs, const struct nx_config *cfg,
                             const struct nx_send_message_req *rq, char *err, size_t errlen)
{
    static const char *const passthrough[] = {"buttons", "template", "media", NULL};
    const struct nx_agent_conf *a = cfg ? nx_config_agent(cfg, rq->agent_id) : NULL;
    struct nx_channel *ch = nx_channels_find(cs, rq->channel, rq->instance);
    struct nx_envelope *env = NULL;
    struct nx_buf subject = NX_BUF_INIT;
    json_t *payload = NULL;
    int rc;

    if (!a) {
        snprintf(err, errlen, "agent \"%s\" is not configured", rq->agent_id ? rq->agent_id : "");
        rc = NX_ENOENT;
        goto out;
    }
    if (!ch) {
        snprintf(err, errlen, "no running channel %s%s%s%s", rq->channel, rq->instance ? "." : "",
                 rq->instance ? rq->instance : "",
                 rq->instance ? "" : " (name the instance when the channel has several)");
        rc = NX_ENOENT;
        goto out;
    }
    if (!nx_outbound_allowed(a, rq->session_key, rq->channel, nx_channel_instance(ch), rq->to)) {
        nx_warn("channels", "agent %s: send_message to %s on %s refused: not in outbound_allowlist",
                a->id, rq->to, nx_channel_label(ch));
        snprintf(err, errlen, "recipient \"%s\" is not in this agent's outbound_allowlist for %s", rq->to,
                 rq->channel);
        rc = NX_EPERM;
        goto out;
    }
    char key[NX_SEND_KEY_LEN + 1];
    nx_send_message_key(rq, nx_channel_instance(ch), key);
    payload = json_pack("{s:s, s:s, s:s}", "to", rq->to, "text", rq->text, "key", key);
    for (size_t i = 0; passthrough[i]; i++) {
        json_t *v = json_object_get(rq->args, passthrough[i]);
        if (v)
            json_object_set_new(payload, passthrough[i], json_deep_copy(v));
    }
    nx_buf_printf(&subject, "plugin.outbound.%s", nx_channel_label(ch));
    if ((rc = nx_envelope_new(nx_buf_cstr(&subject), a->id, NULL, payload, &env)) < 0 ||
        (rc = nx_bus_publish_as(nx_channel_bus(ch), nx_buf_cstr(&subject), env, NX_BUS_ANSWER)) < 0) {
        snprintf(err, errlen, "the message could not be queued (%s); try again later", nx_strerror(rc));
        goto out;
    }
    nx_info("channels", "agent %s: send_message to %s on %s queued", a->id, rq->to, nx_channel_label(ch));
out:
    nx_envelope_free(env);
    json_decref(payload);
    nx_buf_cleanup(&subject);
    return rc;
}
