#include <ctype.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/types.h>

#include "bus/envelope.h"
#include "channels/policy.h"
#include "core/alloc.h"
#include "core/buf.h"
#include "core/clock.h"
#include "core/error.h"
#include "core/log.h"
#include "core/metrics.h"

/* Who may reach an agent through a channel instance: group mention gating, then the sender
 * policy (open, allowlist, pairing). Pairing state lives in memory, mirrored in the store's
 * channel_pairing table, which `nexo pairing approve|revoke` edits; a timer re-reads the
 * approved senders every NX_PAIRING_REFRESH_MS, so an approval takes effect while nexo runs. */

/* ---- configuration ---- */

static const char *const sender_policies[] = {"open", "allowlist", "pairing", NULL};

#define PC struct nx_chpolicy_conf

static void check_conf(struct nx_conf_ctx *ctx, const struct nx_cnode *node, void *obj)
{
    const struct nx_chpolicy_conf *c = obj;
    if (c->sender_policy == NX_SENDER_ALLOWLIST && !c->allow_from[0])
        nx_conf_error(ctx, nx_cnode_get(node, "sender_policy") ? nx_cnode_get(node, "sender_policy") : node,
                      "sender_policy allowlist needs allow_from: [sender ids] (with none, nobody "
                      "could write to this instance)");
}

static const struct nx_conf_field policy_fields[] = {
    {NX_FIELD("sender_policy", NX_CT_ENUM, PC, sender_policy), .choices = sender_policies, .def = "open"},
    {NX_FIELD("allow_from", NX_CT_STRLIST, PC, allow_from)},
    {NX_FIELD("require_mention", NX_CT_BOOL, PC, require_mention), .def = "true"},
    {NX_FIELD("mention_keywords", NX_CT_STRLIST, PC, mention_keywords)},
    {NX_FIELD("pairing_code_ttl", NX_CT_DURATION, PC, pairing_code_ttl_ms), .def = "1h", .min = 60000,
     .max = 7LL * 24 * 3600 * 1000},
    {.name = NULL},
};

static const struct nx_conf_struct policy_desc = {
    .name = "a channel instance",
    .size = sizeof(PC),
    .fields = policy_fields,
    .check = check_conf,
};

static bool is_policy_key(const char *k)
{
    for (size_t i = 0; policy_fields[i].name; i++)
        if (k && strcmp(policy_fields[i].name, k) == 0)
            return true;
    return false;
}

static struct nx_cnode *shallow_map(const struct nx_cnode *node)
{
    struct nx_cnode *m = nx_calloc(1, sizeof *m);
    m->kind = NX_CNODE_MAP;
    m->line = node->line;
    m->col = node->col;
    m->kids = nx_calloc(node->n ? node->n : 1, sizeof *m->kids);
    return m;
}

int nx_chpolicy_conf_parse(struct nx_conf_ctx *ctx, const struct nx_cnode *node,
                           struct nx_chpolicy_conf **conf, struct nx_cnode **rest)
{
    struct nx_chpolicy_conf *c = nx_calloc(1, sizeof *c);
    nx_conf_defaults(&policy_desc, c);
    *conf = c;
    *rest = NULL;
    if (node->kind != NX_CNODE_MAP)
        return 0;
    struct nx_cnode *mine = shallow_map(node), *other = shallow_map(node);
    for (size_t i = 0; i + 1 < node->n; i += 2) {
        struct nx_cnode *to = is_policy_key(node->kids[i]->text) ? mine : other;
        to->kids[to->n++] = node->kids[i];
        to->kids[to->n++] = node->kids[i + 1];
    }
    int rc = nx_conf_parse_struct(ctx, &policy_desc, mine, c);
    nx_chpolicy_rest_free(mine);
    *rest = other;
    return rc;
}

void nx_chpolicy_conf_free(struct nx_chpolicy_conf *c)
{
    if (!c)
        return;
    nx_conf_cleanup(&policy_desc, c);
    free(c);
}

void nx_chpolicy_rest_free(struct nx_cnode *rest)
{
    if (!rest)
        return;
    free(rest->kids); /* the kids are borrowed */
    free(rest);
}

/* ---- running state ---- */

struct pending {
    char *sender;
    char code[NX_PAIRING_CODE_LEN + 1];
    uint64_t expires_ms; /* monotonic */
};

struct nx_chpolicy {
    struct nx_chpolicy_conf *conf;
    struct nx_channel *ch;    /* NULL in unit tests */
    struct nx_store *store;   /* NULL: memory only */
    char *type, *ikey, *label;
    char **approved;
    size_t napproved, capproved;
    struct pending *pending;
    size_t npending;
    uint64_t window_start_ms; /* codes handed out this hour */
    unsigned codes_in_window;
    bool is_loaded;
    bool is_refreshing;
    bool is_closing;
    bool has_timer;
    bool warned_store;
    unsigned refs;
    uv_timer_t timer;
};

static struct nx_metric *m_challenged;

static void unref(struct nx_chpolicy *p)
{
    if (--p->refs > 0)
        return;
    for (size_t i = 0; i < p->napproved; i++)
        free(p->approved[i]);
    free(p->approved);
    for (size_t i = 0; i < p->npending; i++)
        free(p->pending[i].sender);
    free(p->pending);
    nx_chpolicy_conf_free(p->conf);
    free(p->type);
    free(p->ikey);
    free(p->label);
    free(p);
}

static ssize_t find_approved(const struct nx_chpolicy *p, const char *sender)
{
    for (size_t i = 0; i < p->napproved; i++)
        if (strcmp(p->approved[i], sender) == 0)
            return (ssize_t)i;
    return -1;
}

bool nx_chpolicy_is_approved(const struct nx_chpolicy *p, const char *sender)
{
    return p && sender && find_approved(p, sender) >= 0;
}

static void pending_remove(struct nx_chpolicy *p, size_t i)
{
    free(p->pending[i].sender);
    p->pending[i] = p->pending[--p->npending];
}

static ssize_t find_pending(const struct nx_chpolicy *p, const char *sender)
{
    for (size_t i = 0; i < p->npending; i++)
        if (strcmp(p->pending[i].sender, sender) == 0)
            return (ssize_t)i;
    return -1;
}

static void pending_add(struct nx_chpolicy *p, const char *sender, const char *code, uint64_t expires_ms)
{
    p->pending = nx_realloc(p->pending, (p->npending + 1) * sizeof *p->pending);
    struct pending *e = &p->pending[p->npending++];
    e->sender = nx_strdup(sender);
    snprintf(e->code, sizeof e->code, "%s", code);
    e->expires_ms = expires_ms;
}

void nx_chpolicy_set_approved(struct nx_chpolicy *p, const char *sender, bool approved)
{
    ssize_t i = find_approved(p, sender);
    if (approved && i < 0) {
        if (p->napproved == p->capproved) {
            p->capproved = p->capproved ? p->capproved * 2 : 16;
            p->approved = nx_realloc(p->approved, p->capproved * sizeof *p->approved);
        }
        p->approved[p->napproved++] = nx_strdup(sender);
        ssize_t k = find_pending(p, sender);
        if (k >= 0)
            pending_remove(p, (size_t)k);
    } else if (!approved && i >= 0) {
        free(p->approved[i]);
        p->approved[i] = p->approved[--p->napproved];
    }
}

size_t nx_chpolicy_pending(const struct nx_chpolicy *p)
{
    return p ? p->npending : 0;
}

void nx_chpolicy_set_loaded(struct nx_chpolicy *p)
{
    p->is_loaded = true;
}

/* The table's rows replace the approved set; pending codes the table has and memory lacks (a
 * restart) are added, so nobody gets a second code while the first is valid. */
static void on_rows(int rc, struct nx_pairing_row *v, size_t n, void *arg)
{
    struct nx_chpolicy *p = arg;
    p->is_refreshing = false;
    if (rc < 0) {
        if (!p->warned_store && !p->is_closing)
            nx_warn("channels", "%s: cannot read approved senders: %s (retrying)", p->label,
                    nx_strerror(rc));
        p->warned_store = true;
        p->is_loaded = true; /* with what it has: the approved senders read before, if any */
        goto out;
    }
    if (p->is_closing)
        goto out;
    p->warned_store = false;
    char **old = p->approved;
    size_t nold = p->napproved;
    p->approved = NULL;
    p->napproved = p->capproved = 0;
    int64_t now_s = (int64_t)(nx_wall_ms() / 1000);
    uint64_t now_ms = nx_mono_ms();
    for (size_t i = 0; i < n; i++) {
        if (v[i].is_approved) {
            nx_chpolicy_set_approved(p, v[i].sender, true);
        } else if (v[i].code && v[i].expires_at > now_s && find_pending(p, v[i].sender) < 0 &&
                   p->npending < NX_PAIRING_MAX_PENDING) {
            pending_add(p, v[i].sender, v[i].code, now_ms + (uint64_t)(v[i].expires_at - now_s) * 1000);
        }
    }
    for (size_t i = 0; i < p->napproved && p->is_loaded; i++) {
        bool was = false;
        for (size_t k = 0; k < nold && !was; k++)
            was = strcmp(old[k], p->approved[i]) == 0;
        if (!was)
            nx_info("channels", "%s: sender %s approved", p->label, p->approved[i]);
    }
    for (size_t k = 0; k < nold; k++) {
        if (p->is_loaded && find_approved(p, old[k]) < 0)
            nx_info("channels", "%s: sender %s no longer approved", p->label, old[k]);
        free(old[k]);
    }
    free(old);
    if (!p->is_loaded)
        nx_debug("channels", "%s: %zu approved sender%s loaded", p->label, p->napproved,
                 p->napproved == 1 ? "" : "s");
    p->is_loaded = true;
out:
    nx_pairing_rows_free(v, n);
    unref(p);
}

static void refresh(struct nx_chpolicy *p)
{
    if (p->is_refreshing || p->is_closing)
        return;
    p->is_refreshing = true;
    p->refs++;
    nx_pairing_list(p->store, p->type, p->ikey, on_rows, p);
}

static void on_timer(uv_timer_t *t)
{
    refresh(t->data);
}

static void on_timer_closed(uv_handle_t *h)
{
    unref(h->data);
}

struct nx_chpolicy *nx_chpolicy_new(struct nx_channel *ch, struct nx_store *store,
                                    struct nx_chpolicy_conf *conf)
{
    static const char *const labels[] = {"channel", "instance", NULL};
    struct nx_chpolicy *p = nx_calloc(1, sizeof *p);
    if (!m_challenged)
        m_challenged = nx_metric_counter("pairing_inbound_challenged_total",
                                         "unknown senders sent a pairing code", labels);
    p->refs = 1;
    p->conf = conf;
    if (!p->conf) {
        p->conf = nx_calloc(1, sizeof *p->conf);
        nx_conf_defaults(&policy_desc, p->conf);
    }
    p->ch = ch;
    p->store = ch ? store : NULL;
    p->type = nx_strdup(ch ? nx_channel_type_name(ch) : "test");
    p->ikey = nx_strdup(ch ? nx_channel_instance_key(ch) : "default");
    p->label = nx_strdup(ch ? nx_channel_label(ch) : "test");
    p->is_loaded = p->conf->sender_policy != NX_SENDER_PAIRING || !p->store;
    if (!p->is_loaded) {
        refresh(p);
        uv_timer_init(nx_channel_loop(ch), &p->timer);
        p->timer.data = p;
        p->refs++;
        p->has_timer = true;
        uv_timer_start(&p->timer, on_timer, NX_PAIRING_REFRESH_MS, NX_PAIRING_REFRESH_MS);
        uv_unref((uv_handle_t *)&p->timer);
    }
    return p;
}

void nx_chpolicy_free(struct nx_chpolicy *p)
{
    if (!p)
        return;
    p->is_closing = true;
    if (p->has_timer)
        uv_close((uv_handle_t *)&p->timer, on_timer_closed);
    unref(p);
}

/* ---- decisions ---- */

/* Whether code point cp is part of a word: letters and digits of any script, '_'. Punctuation,
 * spaces and symbols end one: ASCII's, Latin-1's (¡ ¿ « » NBSP), the general and CJK punctuation
 * blocks (’ “ ” … — 、 。), fullwidth forms' punctuation, and emoji. */
static bool is_word_cp(uint32_t cp)
{
    if (cp < 0x80)
        return isalnum((int)cp) || cp == '_';
    if (cp <= 0xBF)
        return cp == 0xAA || cp == 0xB5 || cp == 0xBA; /* ª µ º */
    if (cp == 0xD7 || cp == 0xF7)                        /* × ÷ */
        return false;
    return !((cp >= 0x2000 && cp <= 0x206F) || (cp >= 0x2E00 && cp <= 0x2E7F) ||
             (cp >= 0x3000 && cp <= 0x303F) || (cp >= 0xFE30 && cp <= 0xFE6F) ||
             (cp >= 0xFF00 && cp <= 0xFF0F) || (cp >= 0xFF1A && cp <= 0xFF20) ||
             (cp >= 0xFF3B && cp <= 0xFF40) || (cp >= 0xFF5B && cp <= 0xFF65) ||
             (cp >= 0x2190 && cp <= 0x2BFF) || (cp >= 0x1F000 && cp <= 0x1FAFF));
}

/* The code point that starts at p (UTF-8; a stray byte counts as itself). */
static uint32_t cp_at(const unsigned char *p)
{
    int n = p[0] >= 0xF0 ? 3 : p[0] >= 0xE0 ? 2 : p[0] >= 0xC0 ? 1 : 0;
    uint32_t cp = n ? p[0] & (0x3Fu >> n) : p[0];
    for (int i = 1; i <= n; i++) {
        if ((p[i] & 0xC0) != 0x80)
            return p[0];
        cp = cp << 6 | (p[i] & 0x3Fu);
    }
    return cp;
}

/* The code point that ends just before p (start < p). */
static uint32_t cp_before(const unsigned char *start, const unsigned char *p)
{
    const unsigned char *q = p - 1;
    while (q > start && p - q < 4 && (*q & 0xC0) == 0x80)
        q--;
    return cp_at(q);
}

bool nx_chpolicy_keyword_match(const char *text, char *const *keywords)
{
    if (!text || !keywords)
        return false;
    const unsigned char *t = (const unsigned char *)text;
    for (size_t k = 0; keywords[k]; k++) {
        const unsigned char *kw = (const unsigned char *)keywords[k];
        size_t kl = strlen(keywords[k]);
        if (kl == 0)
            continue;
        bool word_start = is_word_cp(cp_at(kw)), word_end = is_word_cp(cp_before(kw, kw + kl));
        for (const unsigned char *s = t; *s; s++) {
            if (strncasecmp((const char *)s, keywords[k], kl) != 0)
                continue;
            bool starts = s == t || !word_start || !is_word_cp(cp_before(t, s));
            bool ends = !s[kl] || !word_end || !is_word_cp(cp_at(s + kl));
            if (starts && ends)
                return true;
        }
    }
    return false;
}

static bool in_list(char *const *list, const char *s)
{
    for (size_t i = 0; list && list[i]; i++)
        if (strcmp(list[i], s) == 0)
            return true;
    return false;
}

enum nx_chpolicy_verdict nx_chpolicy_check(struct nx_chpolicy *p, const struct nx_channel_in *in,
                                           uint64_t now_ms, char *code, const char **reason)
{
    const struct nx_chpolicy_conf *c = p ? p->conf : NULL;
    *reason = NULL;
    if (!c)
        return NX_CHPOLICY_PASS;
    if (in->is_group && c->require_mention && !in->mentioned &&
        !nx_chpolicy_keyword_match(in->text, c->mention_keywords)) {
        *reason = "not_mentioned";
        return NX_CHPOLICY_DROP;
    }
    if (c->sender_policy == NX_SENDER_OPEN)
        return NX_CHPOLICY_PASS;
    const char *sender = in->from ? in->from : "";
    if (*sender && in_list(c->allow_from, sender))
        return NX_CHPOLICY_PASS;
    *reason = "not_allowed";
    if (c->sender_policy == NX_SENDER_ALLOWLIST || !*sender)
        return NX_CHPOLICY_DROP;
    /* pairing */
    if (!p->is_loaded) {
        *reason = NULL;
        return NX_CHPOLICY_RETRY;
    }
    if (find_approved(p, sender) >= 0) {
        *reason = NULL;
        return NX_CHPOLICY_PASS;
    }
    for (size_t i = p->npending; i-- > 0;)
        if (p->pending[i].expires_ms <= now_ms)
            pending_remove(p, i);
    if (find_pending(p, sender) >= 0) {
        *reason = "pairing_pending";
        return NX_CHPOLICY_DROP;
    }
    if (in->is_group) /* codes go to private chats only */
        return NX_CHPOLICY_DROP;
    if (p->window_start_ms == 0 || now_ms - p->window_start_ms >= 3600 * 1000) {
        p->window_start_ms = now_ms;
        p->codes_in_window = 0;
    }
    if (p->codes_in_window >= NX_PAIRING_MAX_PER_HOUR || p->npending >= NX_PAIRING_MAX_PENDING ||
        nx_pairing_code_new(code) < 0) {
        *reason = "pairing_limit";
        return NX_CHPOLICY_DROP;
    }
    p->codes_in_window++;
    pending_add(p, sender, code, now_ms + c->pairing_code_ttl_ms);
    *reason = "pairing";
    return NX_CHPOLICY_CHALLENGE;
}

bool nx_chpolicy_admits(const struct nx_chpolicy *p, const struct nx_channel_in *in)
{
    const struct nx_chpolicy_conf *c = p ? p->conf : NULL;
    if (!c)
        return true;
    if (in->is_group && c->require_mention && !in->mentioned &&
        !nx_chpolicy_keyword_match(in->text, c->mention_keywords))
        return false;
    if (c->sender_policy == NX_SENDER_OPEN)
        return true;
    const char *sender = in->from ? in->from : "";
    if (*sender && in_list(c->allow_from, sender))
        return true;
    if (c->sender_policy == NX_SENDER_ALLOWLIST || !*sender)
        return false;
    /* pairing: not loaded yet is not known yet (nx_chpolicy_check says RETRY); an unapproved
     * sender is dropped whether or not a code goes out */
    return !p->is_loaded || find_approved(p, sender) >= 0;
}

static void on_put(int rc, void *arg)
{
    struct nx_chpolicy *p = arg;
    if (rc < 0 && !p->is_closing)
        nx_warn("channels", "%s: pairing code not stored: %s (it cannot be approved)", p->label,
                nx_strerror(rc));
    unref(p);
}

/* The one reply an unknown sender gets: the code and what to do with it. */
static void send_challenge(struct nx_chpolicy *p, const struct nx_channel_in *in, const char *code)
{
    char to_num[32], text[512];
    const char *to = json_string_value(in->chat);
    if (!to && json_is_integer(in->chat)) {
        snprintf(to_num, sizeof to_num, "%" PRId64, (int64_t)json_integer_value(in->chat));
        to = to_num;
    }
    if (!to)
        to = in->from;
    unsigned secs = (unsigned)(p->conf->pairing_code_ttl_ms / 1000), n = secs < 120 ? secs : secs / 60;
    snprintf(text, sizeof text,
             "Hello! This bot only talks to approved people. Your pairing code is %s (valid for %u "
             "%s%s). Send it to the bot's operator, who approves it with: nexo pairing approve %s",
             code, n, secs < 120 ? "second" : "minute", n == 1 ? "" : "s", code);
    if (p->store) {
        p->refs++;
        nx_pairing_put_pending(p->store, p->type, p->ikey, in->from, to, code,
                               (int64_t)(nx_wall_ms() / 1000) + p->conf->pairing_code_ttl_ms / 1000,
                               on_put, p);
    }
    struct nx_buf subject = NX_BUF_INIT;
    nx_buf_printf(&subject, "plugin.outbound.%s", p->label);
    char key[37];
    nx_uuid_v4(key);
    json_t *payload = json_pack("{s:s, s:s, s:s}", "to", to, "text", text, "key", key);
    struct nx_envelope *env = NULL;
    int rc = nx_envelope_new(nx_buf_cstr(&subject), p->label, NULL, payload, &env);
    if (rc == 0)
        rc = nx_bus_publish_as(nx_channel_bus(p->ch), nx_buf_cstr(&subject), env, NX_BUS_ANSWER);
    if (rc < 0)
        nx_warn("channels", "%s: pairing code for sender %s not sent: %s", p->label, in->from,
                nx_strerror(rc));
    nx_envelope_free(env);
    json_decref(payload);
    nx_buf_cleanup(&subject);
}

int nx_chpolicy_inbound(struct nx_chpolicy *p, const struct nx_channel_in *in)
{
    char code[NX_PAIRING_CODE_LEN + 1] = "";
    const char *reason = NULL;
    if (!p)
        return 0;
    switch (nx_chpolicy_check(p, in, nx_mono_ms(), code, &reason)) {
    case NX_CHPOLICY_PASS:
        return 0;
    case NX_CHPOLICY_RETRY:
        return NX_EAGAIN;
    case NX_CHPOLICY_DROP:
        if (strcmp(reason, "not_mentioned") == 0)
            nx_debug("channels", "%s: group message without a mention of the bot: ignored", p->label);
        else
            nx_info("channels", "%s: message from sender %s dropped (%s)", p->label,
                    in->from ? in->from : "(none)", reason);
        if (p->ch)
            nx_channel_count_drop(p->ch, reason);
        return 1;
    case NX_CHPOLICY_CHALLENGE:
        nx_info("channels", "%s: unknown sender %s: pairing code sent (nexo pairing list)", p->label,
                in->from);
        if (p->ch) {
            const char *const lv[] = {p->type, p->ikey};
            nx_counter_add(m_challenged, lv, 1);
            nx_channel_count_drop(p->ch, "pairing");
            send_challenge(p, in, code);
        }
        return 1;
    }
    return 1;
}
