#include <inttypes.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>

#include "channels/channels.h"
#include "channels/chledger.h"
#include "channels/media.h"
#include "channels/policy.h"
#include "channels/telegram.h"
#include "channels/whatsapp.h"
#include "core/alloc.h"
#include "core/buf.h"
#include "core/clock.h"
#include "core/error.h"
#include "core/log.h"
#include "core/metrics.h"
#include "store/ledger.h"

/* The channel registry: adding a channel type is one line here. */
static const struct nx_channel_type *const channel_types[] = {
    &nx_channel_telegram,
    &nx_channel_whatsapp,
    NULL,
};

struct nx_channel {
    struct nx_channel *next;
    struct nx_channels *cs;
    const struct nx_channel_type *type;
    void *conf;        /* parsed with type->conf */
    char *instance;    /* borrowed from conf; NULL when unnamed */
    char *label;       /* "telegram.kate_bot" */
    char *inbound;     /* plugin.inbound.<label> */
    char *outbound;    /* plugin.outbound.<label> */
    struct nx_bus_sub *sub;
    void *state;       /* the adapter's */
    bool is_started;
    struct nx_chpolicy *policy; /* sender_policy, require_mention (policy.c) */
    struct nx_chledger *ledger; /* exactly-once ledger (chledger.c); NULL without a store */
};

struct nx_channels {
    uv_loop_t *loop;
    struct nx_bus *bus;
    struct nx_http_client *http;
    struct nx_store *store;
    struct nx_channel *list;
    size_t n;
    struct nx_ledger_pruner *pruner; /* ledger housekeeping (broker.ledger.retention in broker.yaml) */
    struct nx_media_sweeper *sweeper; /* received files' retention (media.retention in gateway.yaml) */
};

static struct nx_metric *m_messages, *m_dropped;

static void register_metrics(void)
{
    static const char *const labels[] = {"channel", "instance", "direction", NULL};
    static const char *const drop_labels[] = {"channel", "instance", "reason", NULL};
    if (m_messages)
        return;
    m_messages = nx_metric_counter("nexo_channel_messages_total",
                                   "channel messages received (in) and sent (out)", labels);
    m_dropped = nx_metric_counter("nexo_channel_dropped_total",
                                  "channel messages dropped (allowlist, send failure...)", drop_labels);
}

const struct nx_channel_type *nx_channel_type_find(const char *name)
{
    for (size_t i = 0; channel_types[i]; i++)
        if (strcmp(channel_types[i]->name, name) == 0)
            return channel_types[i];
    return NULL;
}

/* ---- config ---- */

static bool is_token(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c <= ' ' || c == '.' || c == '*' || c == '>' || c >= 0x7f)
            return false;
    }
    return true;
}

static void conf_free(const struct nx_channel_type *t, void *conf)
{
    if (!conf)
        return;
    nx_conf_cleanup(t->conf, conf);
    free(conf);
}

/* The instances of one file parsed so far, in order: conf, framework keys, and where the
 * type's unique_key was written (for the message about a second instance repeating it). */
struct parsed {
    void **confs;
    struct nx_chpolicy_conf **pols;
    int (*unique_at)[2];
    size_t n;
};

static const char *conf_str(const void *conf, size_t offset)
{
    return *(char *const *)((const char *)conf + offset);
}

/* 'whatsapp instance "sales"', or 'the unnamed whatsapp instance'. */
static const char *instance_words(const char *type, const char *inst, char *buf, size_t size)
{
    if (inst)
        snprintf(buf, size, "%s%sinstance \"%s\"", type ? type : "", type ? " " : "", inst);
    else
        snprintf(buf, size, "the unnamed %s%sinstance", type ? type : "", type ? " " : "");
    return buf;
}

static void parsed_cleanup(const struct nx_channel_type *t, struct parsed *ps)
{
    for (size_t i = 0; i < ps->n; i++) {
        conf_free(t, ps->confs[i]);
        nx_chpolicy_conf_free(ps->pols[i]);
    }
    free(ps->confs);
    free(ps->pols);
    free(ps->unique_at);
    memset(ps, 0, sizeof *ps);
}

/* Two instances with one name, or two unnamed ones. */
static void check_name(struct nx_conf_ctx *ctx, const struct nx_channel_type *t, const struct parsed *ps,
                       const struct nx_cnode *node, const char *inst)
{
    const struct nx_cnode *at = nx_cnode_get(node, "instance");
    if (inst && !is_token(inst))
        nx_conf_error(ctx, at, "instance \"%s\" must be one subject token (no dots, spaces, * or >)",
                      inst);
    for (size_t i = 0; i < ps->n; i++) {
        const char *other = conf_str(ps->confs[i], t->instance_offset);
        if ((!inst && !other) || (inst && other && strcmp(inst, other) == 0)) {
            if (inst)
                nx_conf_error(ctx, at, "duplicate %s instance \"%s\"", t->name, inst);
            else
                nx_conf_error(ctx, node, "a second %s instance without a name: give each an "
                              "\"instance\"", t->name);
            return;
        }
    }
}

/* A second instance of the account an earlier one already has (the type's unique_key). */
static void check_unique(struct nx_conf_ctx *ctx, const struct nx_channel_type *t, const struct parsed *ps,
                         const struct nx_cnode *node, const void *conf)
{
    const char *v = t->unique_key ? conf_str(conf, t->unique_offset) : NULL;
    if (!v)
        return;
    for (size_t i = 0; i < ps->n; i++) {
        const char *other = conf_str(ps->confs[i], t->unique_offset);
        if (!other || strcmp(v, other) != 0)
            continue;
        char a[128], b[128];
        nx_conf_error(ctx, nx_cnode_get(node, t->unique_key), "%s has the same %s%s%s%s as %s (line %d, "
                      "column %d): each %s belongs to one instance",
                      instance_words(t->name, conf_str(conf, t->instance_offset), a, sizeof a), t->unique_key,
                      t->is_unique_secret ? "" : " \"", t->is_unique_secret ? "" : v,
                      t->is_unique_secret ? "" : "\"",
                      instance_words(NULL, conf_str(ps->confs[i], t->instance_offset), b, sizeof b),
                      ps->unique_at[i][0], ps->unique_at[i][1], t->unique_key);
        return;
    }
}

/* One instance mapping: parsed into a new conf appended to ps, and its framework keys (policy.h)
 * beside it. */
static void parse_instance(struct nx_conf_ctx *ctx, const struct nx_channel_type *t,
                           const struct nx_cnode *node, struct parsed *ps)
{
    void *conf = nx_calloc(1, t->conf->size);
    struct nx_chpolicy_conf *pconf = NULL;
    struct nx_cnode *rest = NULL;
    nx_conf_defaults(t->conf, conf);
    int before = ctx->errors;
    if (node->kind == NX_CNODE_MAP) {
        nx_chpolicy_conf_parse(ctx, node, &pconf, &rest);
        node = rest;
    }
    if (node->kind != NX_CNODE_MAP) {
        char buf[96];
        nx_conf_error(ctx, node, "expected a mapping for a %s instance, got %s", t->name,
                      nx_cnode_describe(node, buf, sizeof buf));
        goto fail;
    }
    nx_conf_parse_struct(ctx, t->conf, node, conf);
    check_name(ctx, t, ps, node, conf_str(conf, t->instance_offset));
    if (ctx->errors == before)
        check_unique(ctx, t, ps, node, conf);
    if (ctx->errors > before)
        goto fail;
    const struct nx_cnode *u = t->unique_key ? nx_cnode_get(node, t->unique_key) : NULL;
    ps->confs = nx_realloc(ps->confs, (ps->n + 1) * sizeof *ps->confs);
    ps->pols = nx_realloc(ps->pols, (ps->n + 1) * sizeof *ps->pols);
    ps->unique_at = nx_realloc(ps->unique_at, (ps->n + 1) * sizeof *ps->unique_at);
    ps->pols[ps->n] = pconf;
    ps->unique_at[ps->n][0] = u ? u->line : 0;
    ps->unique_at[ps->n][1] = u ? u->col : 0;
    ps->confs[ps->n++] = conf;
    nx_chpolicy_rest_free(rest);
    return;
fail:
    conf_free(t, conf);
    nx_chpolicy_conf_free(pconf);
    nx_chpolicy_rest_free(rest);
}

/* plugins/<type>.yaml -> confs. The file holds `<type>: {...}` or `<type>: [{...}, ...]`, or is
 * itself one instance mapping. */
static int parse_file(const struct nx_plugin_conf *p, const struct nx_channel_type *t,
                      const char *dir, struct nx_diags *diags, void ***out, size_t *nout,
                      struct nx_chpolicy_conf ***pout)
{
    struct nx_conf_ctx ctx = {.diags = diags, .file = p->file, .dir = dir};
    const struct nx_cnode *root = p->root;
    struct parsed ps = {0};

    if (!root || nx_cnode_is_null(root))
        goto done;
    if (root->kind != NX_CNODE_MAP) {
        char buf[96];
        nx_conf_error(&ctx, root, "expected a mapping (\"%s:\" with one instance or a list), got %s",
                      t->name, nx_cnode_describe(root, buf, sizeof buf));
        goto done;
    }
    const struct nx_cnode *body = nx_cnode_get(root, t->name);
    if (body) {
        if (root->n > 2) {
            for (size_t i = 0; i < root->n; i += 2)
                if (strcmp(root->kids[i]->text ? root->kids[i]->text : "", t->name) != 0)
                    nx_conf_error(&ctx, root->kids[i], "unknown key \"%s\" beside \"%s\"",
                                  root->kids[i]->text ? root->kids[i]->text : "", t->name);
        }
        if (body->kind == NX_CNODE_SEQ) {
            for (size_t i = 0; i < body->n; i++)
                parse_instance(&ctx, t, body->kids[i], &ps);
        } else if (!nx_cnode_is_null(body)) {
            parse_instance(&ctx, t, body, &ps);
        }
    } else if (root->n > 0) {
        parse_instance(&ctx, t, root, &ps);
    }
done:
    if (ctx.errors > 0) {
        parsed_cleanup(t, &ps);
        return NX_ECONFIG;
    }
    free(ps.unique_at);
    *out = ps.confs;
    *pout = ps.pols;
    *nout = ps.n;
    return 0;
}

int nx_channels_check(const struct nx_config *cfg, struct nx_diags *diags)
{
    const struct nx_plugin_conf *ps;
    size_t np = nx_config_plugins(cfg, &ps);
    int rc = 0;
    for (size_t i = 0; i < np; i++) {
        const struct nx_channel_type *t = nx_channel_type_find(ps[i].name);
        void **list = NULL;
        struct nx_chpolicy_conf **pols = NULL;
        size_t n = 0;
        if (!t)
            continue;
        if (parse_file(&ps[i], t, nx_config_dir(cfg), diags, &list, &n, &pols) < 0) {
            rc = NX_ECONFIG;
            continue;
        }
        for (size_t k = 0; k < n; k++) {
            conf_free(t, list[k]);
            nx_chpolicy_conf_free(pols[k]);
        }
        free(list);
        free(pols);
    }
    return rc;
}

/* ---- running ---- */

uv_loop_t *nx_channel_loop(const struct nx_channel *ch) { return ch->cs->loop; }
struct nx_http_client *nx_channel_http(const struct nx_channel *ch) { return ch->cs->http; }
struct nx_store *nx_channel_store(const struct nx_channel *ch) { return ch->cs->store; }
const char *nx_channel_type_name(const struct nx_channel *ch) { return ch->type->name; }
const char *nx_channel_instance(const struct nx_channel *ch) { return ch->instance; }
const char *nx_channel_label(const struct nx_channel *ch) { return ch->label; }

struct nx_bus *nx_channel_bus(const struct nx_channel *ch) { return ch->cs->bus; }

struct nx_channel *nx_channels_find(struct nx_channels *cs, const char *type, const char *instance)
{
    struct nx_channel *only = NULL;
    size_t n = 0;
    for (struct nx_channel *ch = cs ? cs->list : NULL; ch; ch = ch->next) {
        if (strcmp(ch->type->name, type) != 0)
            continue;
        if (instance ? ch->instance && strcmp(ch->instance, instance) == 0 : !ch->instance)
            return ch;
        only = ch;
        n++;
    }
    return !instance && n == 1 ? only : NULL;
}

const char *nx_channel_instance_key(const struct nx_channel *ch)
{
    return ch->instance ? ch->instance : "default";
}

void nx_channel_count(struct nx_channel *ch, const char *direction)
{
    const char *const lv[] = {ch->type->name, nx_channel_instance_key(ch), direction};
    nx_counter_add(m_messages, lv, 1);
}

void nx_channel_count_drop(struct nx_channel *ch, const char *reason)
{
    const char *const lv[] = {ch->type->name, nx_channel_instance_key(ch), reason};
    nx_counter_add(m_dropped, lv, 1);
}

/* A name-based (version 5, SHA-1) UUID in nexo's channel namespace. */
static void uuid_v5(const char *name, char out[37])
{
    static const unsigned char ns[16] = {0x6e, 0x78, 0x2d, 0x63, 0x68, 0x61, 0x6e, 0x6e,
                                         0x65, 0x6c, 0x2d, 0x65, 0x76, 0x65, 0x6e, 0x74};
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    NX_ASSERT(c);
    EVP_DigestInit_ex(c, EVP_sha1(), NULL);
    EVP_DigestUpdate(c, ns, sizeof ns);
    EVP_DigestUpdate(c, name, strlen(name));
    EVP_DigestFinal_ex(c, md, &mdlen);
    EVP_MD_CTX_free(c);
    md[6] = (unsigned char)((md[6] & 0x0f) | 0x50);
    md[8] = (unsigned char)((md[8] & 0x3f) | 0x80);
    static const char hex[] = "0123456789abcdef";
    size_t k = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[k++] = '-';
        out[k++] = hex[md[i] >> 4];
        out[k++] = hex[md[i] & 15];
    }
    out[k] = '\0';
}

int nx_channel_precheck(struct nx_channel *ch, const struct nx_channel_in *in)
{
    return nx_chpolicy_admits(ch->policy, in) ? 0 : NX_CHANNEL_DROPPED;
}

int nx_channel_publish(struct nx_channel *ch, const struct nx_channel_in *in)
{
    int verdict = nx_chpolicy_inbound(ch->policy, in); /* sender_policy, require_mention */
    if (verdict != 0)
        return verdict > 0 ? NX_CHANNEL_DROPPED : verdict;
    json_t *p = json_pack("{s:s, s:s?, s:s?, s:b, s:I}", "kind", in->kind ? in->kind : "message",
                          "from", in->from,
                          "text", in->text, "is_group", in->is_group, "timestamp",
                          (json_int_t)in->timestamp);
    struct nx_envelope *env = NULL;
    int rc;

    if (in->chat)
        json_object_set(p, "chat", in->chat);
    if (in->msg_id)
        json_object_set(p, "msg_id", in->msg_id);
    if (in->data)
        json_object_set_new(p, "data", json_string(in->data));
    if (in->media)
        json_object_set(p, "media", in->media);
    if ((rc = nx_envelope_new(ch->inbound, ch->label, NULL, p, &env)) < 0)
        goto out;
    if (in->event_key) {
        struct nx_buf name = NX_BUF_INIT;
        nx_buf_printf(&name, "%s:%s:%s", ch->type->name, nx_channel_instance_key(ch), in->event_key);
        uuid_v5(nx_buf_cstr(&name), env->id);
        nx_buf_cleanup(&name);
    }
    rc = nx_chledger_publish(ch, ch->ledger, env, in->event_key); /* recorded, then published */
out:
    nx_envelope_free(env);
    json_decref(p);
    return rc;
}

/* "42" or 42 -> text. */
static const char *id_text(const json_t *v, char *buf, size_t size)
{
    if (json_is_string(v))
        return json_string_value(v);
    if (json_is_integer(v)) {
        snprintf(buf, size, "%lld", (long long)json_integer_value(v));
        return buf;
    }
    return NULL;
}

/* ---- outbound idempotency (the ledger) ---- */

/* The payload's "key", else the envelope id (stable across the bus's redeliveries). */
static const char *outbound_key(const struct nx_bus_msg *msg)
{
    return nx_chledger_key(msg->env);
}

void nx_channel_sent(struct nx_channel *ch, const char *key, const char *provider_id, int status,
                     const char *error)
{
    nx_chledger_sent(ch->ledger, key, provider_id, status, error);
}

void nx_channel_progress(struct nx_channel *ch, const char *key, uint32_t steps, const char *provider_id)
{
    nx_chledger_progress(ch->ledger, key, steps, provider_id);
}

void nx_channel_status(struct nx_channel *ch, const char *provider_id, const char *state,
                       const char *error)
{
    nx_chledger_status(ch->ledger, provider_id, state, error);
}

static int on_outbound(struct nx_bus *bus, struct nx_bus_msg *msg, void *arg)
{
    struct nx_channel *ch = arg;
    const json_t *p = msg->env->payload;
    char tobuf[32], rbuf[32];
    (void)bus;
    if (nx_chledger_outbound(ch->ledger, msg))
        return 0; /* the ledger claims the key first, then calls this again (or skips a repeat) */
    const char *to = id_text(json_object_get(p, "to"), tobuf, sizeof tobuf);
    const char *text = json_string_value(json_object_get(p, "text"));
    if (!to || !text) {
        nx_warn("channels", "%s: outbound event %s without \"to\" or \"text\": dropped", ch->label,
                msg->env->id);
        nx_channel_count_drop(ch, "malformed");
        return 0;
    }
    struct nx_channel_out out = {
        .to = to,
        .text = text,
        .reply_to = id_text(json_object_get(p, "reply_to"), rbuf, sizeof rbuf),
        .session_id = json_string_value(json_object_get(p, "session_id")),
        .key = outbound_key(msg),
        .steps_done = nx_chledger_steps_done(ch->ledger, msg),
        .payload = p,
    };
    int rc = ch->type->send(ch->state, &out);
    if (rc < 0)
        return nx_bus_fail(msg, "%s: send refused: %s", ch->label, nx_strerror(rc));
    return 0;
}

static void channel_free(struct nx_channel *ch)
{
    nx_chledger_free(ch->ledger);
    if (ch->sub)
        nx_bus_unsubscribe(ch->cs->bus, ch->sub);
    if (ch->is_started)
        ch->type->stop(ch->state);
    nx_chpolicy_free(ch->policy);
    conf_free(ch->type, ch->conf);
    free(ch->label);
    free(ch->inbound);
    free(ch->outbound);
    free(ch);
}

static int channel_start(struct nx_channels *cs, const struct nx_channel_type *t, void *conf,
                         struct nx_chpolicy_conf *pconf)
{
    struct nx_channel *ch = nx_calloc(1, sizeof *ch);
    struct nx_buf b = NX_BUF_INIT;
    int rc;

    ch->cs = cs;
    ch->type = t;
    ch->conf = conf;
    ch->instance = *(char **)((char *)conf + t->instance_offset);
    nx_buf_printf(&b, "%s%s%s", t->name, ch->instance ? "." : "", ch->instance ? ch->instance : "");
    ch->label = nx_buf_steal(&b);
    nx_buf_printf(&b, "plugin.inbound.%s", ch->label);
    ch->inbound = nx_buf_steal(&b);
    nx_buf_printf(&b, "plugin.outbound.%s", ch->label);
    ch->outbound = nx_buf_steal(&b);
    ch->policy = nx_chpolicy_new(ch, cs->store, pconf);
    /* before start, so the adapter's first event is recorded; its first resend runs on the loop */
    ch->ledger = nx_chledger_new(ch, on_outbound);
    if ((rc = t->start(ch, conf, &ch->state)) < 0) {
        nx_error("channels", "%s: cannot start: %s", ch->label, nx_strerror(rc));
        goto out;
    }
    ch->is_started = true;
    if ((rc = nx_bus_queue_subscribe(cs->bus, ch->outbound, "channels", on_outbound, ch, &ch->sub)) < 0) {
        nx_error("channels", "%s: cannot subscribe to %s: %s", ch->label, ch->outbound, nx_strerror(rc));
        goto out;
    }
    nx_info("channels", "%s started (inbound %s, outbound %s)", ch->label, ch->inbound, ch->outbound);
    ch->next = cs->list;
    cs->list = ch;
    cs->n++;
    ch = NULL;
out:
    if (ch)
        channel_free(ch);
    return rc;
}

/* The outbox (so agents can send files without an operator making it first) and the retention
 * of received files (gateway.yaml media.retention). */
static void start_media_upkeep(struct nx_channels *cs, const struct nx_gateway_conf *gw)
{
    const char *names[NX_ARRAY_LEN(channel_types)];
    size_t n = 0;
    struct nx_buf root = NX_BUF_INIT;
    uint64_t keep = gw ? gw->media_retention_ms : 30ull * 86400000;

    nx_media_make_outbox(nx_store_dir(cs->store));
    if (keep == 0)
        return; /* kept forever */
    for (size_t i = 0; channel_types[i]; i++)
        names[n++] = channel_types[i]->name;
    nx_buf_printf(&root, "%s/media", nx_store_dir(cs->store));
    cs->sweeper = nx_media_sweeper_new(cs->loop, nx_buf_cstr(&root), names, n, keep, 0, 0);
    nx_buf_cleanup(&root);
}

int nx_channels_new(uv_loop_t *loop, struct nx_bus *bus, struct nx_http_client *http,
                    struct nx_store *store, const struct nx_config *cfg, struct nx_channels **out)
{
    struct nx_channels *cs = nx_calloc(1, sizeof *cs);
    struct nx_diags diags;
    const struct nx_plugin_conf *ps;
    size_t np = nx_config_plugins(cfg, &ps);
    int rc = 0;

    register_metrics();
    nx_diags_init(&diags);
    cs->loop = loop;
    cs->bus = bus;
    cs->http = http;
    cs->store = store;
    if (store) {
        const struct nx_broker_conf *b = nx_config_broker(cfg);
        uint64_t keep = b && b->ledger.retention_ms ? b->ledger.retention_ms : 7ull * 86400000;
        cs->pruner = nx_ledger_pruner_new(loop, store, keep, 0);
    }
    for (size_t i = 0; i < np; i++) {
        const struct nx_channel_type *t = nx_channel_type_find(ps[i].name);
        void **list = NULL;
        struct nx_chpolicy_conf **pols = NULL;
        size_t n = 0;
        if (!t) {
            nx_debug("channels", "%s: no channel type \"%s\" (yet): ignored", ps[i].file, ps[i].name);
            continue;
        }
        if (parse_file(&ps[i], t, nx_config_dir(cfg), &diags, &list, &n, &pols) < 0) {
            rc = NX_ECONFIG;
            continue;
        }
        for (size_t k = 0; k < n; k++) {
            if (rc == 0) {
                int src = channel_start(cs, t, list[k], pols[k]);
                if (src < 0)
                    rc = src;
            } else {
                conf_free(t, list[k]);
                nx_chpolicy_conf_free(pols[k]);
            }
        }
        free(list);
        free(pols);
    }
    for (size_t i = 0; i < diags.n; i++)
        nx_error("channels", "%s:%d:%d: %s", diags.v[i].file, diags.v[i].line, diags.v[i].col,
                 diags.v[i].msg);
    nx_diags_cleanup(&diags);
    if (rc < 0) {
        nx_channels_free(cs);
        return rc;
    }
    if (store && cs->n > 0)
        start_media_upkeep(cs, nx_config_gateway(cfg));
    *out = cs;
    return 0;
}

void nx_channels_free(struct nx_channels *cs)
{
    if (!cs)
        return;
    while (cs->list) {
        struct nx_channel *ch = cs->list;
        cs->list = ch->next;
        channel_free(ch);
    }
    nx_ledger_pruner_free(cs->pruner);
    nx_media_sweeper_free(cs->sweeper);
    free(cs);
}

size_t nx_channels_count(const struct nx_channels *cs)
{
    return cs ? cs->n : 0;
}

/* ---- webhooks ---- */

#define WEBHOOK_PREFIX "/webhooks/"
#define WEBHOOK_MAX_BODY_DEFAULT (1u << 20)

static struct nx_channel *webhook_target(struct nx_channels *cs, const char *p, size_t n)
{
    const char *slash = memchr(p, '/', n);
    size_t tlen = slash ? (size_t)(slash - p) : n;
    const char *inst = slash ? slash + 1 : NULL;
    size_t ilen = slash ? n - tlen - 1 : 0;
    if (tlen == 0 || (inst && (ilen == 0 || memchr(inst, '/', ilen))))
        return NULL;
    for (struct nx_channel *ch = cs->list; ch; ch = ch->next) {
        if (strlen(ch->type->name) != tlen || memcmp(ch->type->name, p, tlen) != 0)
            continue;
        if (!inst && !ch->instance)
            return ch;
        if (inst && ch->instance && strlen(ch->instance) == ilen && memcmp(ch->instance, inst, ilen) == 0)
            return ch;
    }
    return NULL;
}

static void on_webhook(struct nx_http_req *req, void *udata)
{
    struct nx_channels *cs = udata;
    size_t plen = 0, blen = 0;
    const char *path = nx_http_req_path(req, &plen);
    const size_t pre = sizeof WEBHOOK_PREFIX - 1;
    struct nx_channel *ch = NULL;

    if (plen > pre && memcmp(path, WEBHOOK_PREFIX, pre) == 0)
        ch = webhook_target(cs, path + pre, plen - pre);
    if (!ch || !ch->type->webhook) {
        nx_http_respond_error(req, 404, "not_found_error", "no channel webhook at this path");
        return;
    }
    nx_http_req_body(req, &blen);
    uint64_t cap = ch->type->webhook_max_body ? ch->type->webhook_max_body : WEBHOOK_MAX_BODY_DEFAULT;
    if (blen > cap) {
        nx_warn("channels", "%s: webhook body of %zu bytes refused (at most %llu)", ch->label, blen,
                (unsigned long long)cap);
        nx_channel_count_drop(ch, "too_big");
        nx_http_respond_error(req, 413, "request_too_large", "webhook body too large");
        return;
    }
    ch->type->webhook(ch->state, req);
}

struct webhook_ack {
    struct nx_http_req *req; /* NULL once the client went away */
    int status;
    char *ctype;
    char *body;
    size_t len;
};

static void on_ack_abort(void *arg)
{
    struct webhook_ack *a = arg;
    a->req = NULL;
}

static void on_ack_flushed(int rc, void *arg)
{
    struct webhook_ack *a = arg;
    if (a->req) {
        if (rc < 0) /* not durable: the service delivers again, the event key makes that harmless */
            nx_http_respond_error(a->req, 503, "overloaded_error", "not recorded: try again");
        else
            nx_http_respond(a->req, a->status, a->ctype, a->body, a->len);
    }
    free(a->ctype);
    free(a->body);
    free(a);
}

void nx_channel_webhook_ack(struct nx_channel *ch, struct nx_http_req *req, int status,
                            const char *content_type, const char *body, size_t len)
{
    if (!ch->cs->store) {
        nx_http_respond(req, status, content_type, body, len);
        return;
    }
    struct webhook_ack *a = nx_calloc(1, sizeof *a);
    a->req = req;
    a->status = status;
    a->ctype = nx_strdup(content_type);
    a->body = nx_malloc(len + 1);
    memcpy(a->body, body, len);
    a->body[len] = '\0';
    a->len = len;
    nx_http_req_on_abort(req, on_ack_abort, a);
    nx_store_flush(ch->cs->store, on_ack_flushed, a);
}

int nx_channel_kv_put(sqlite3 *db, const char *key, int64_t value)
{
    sqlite3_stmt *st = NULL;
    char v[32];
    int rc = NX_EDB;
    snprintf(v, sizeof v, "%" PRId64, value);
    if (sqlite3_prepare_v2(db, "INSERT INTO kv (key, value, updated_at) VALUES (?, ?, ?) "
                           "ON CONFLICT(key) DO UPDATE SET value = excluded.value, "
                           "updated_at = excluded.updated_at", -1, &st, NULL) != SQLITE_OK)
        goto out;
    sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, v, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)nx_wall_ms());
    if (sqlite3_step(st) == SQLITE_DONE)
        rc = 0;
out:
    sqlite3_finalize(st);
    return rc;
}

void nx_channels_mount(struct nx_channels *cs, struct nx_http_server *srv)
{
    if (!cs || !srv)
        return;
    /* each request is checked by its signature or secret: a TLS proxy in front may keep the
     * public Host (http/origin.c) */
    const struct nx_http_route_opts ro = {.is_self_authenticated = true};
    nx_http_server_route_ex(srv, NULL, WEBHOOK_PREFIX "*", on_webhook, cs, &ro);
}
