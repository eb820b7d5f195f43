#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "channels/policy.h"
#include "channels/telegram.h"
#include "config/config.h"
#include "config/schema.h"
#include "core/error.h"
#include "core/log.h"
#include "store/store.h"

#include "test_support.h"

/* The channel policy engine: instance keys split off the type's own, mention gating, allowlist,
 * pairing (codes, expiry, limits, the table and its approvals), sender token buckets and the
 * outbound allowlist. */

/* ---- configuration ---- */

struct parsed {
    struct nx_diags diags;
    struct nx_cnode *root;
    struct nx_chpolicy_conf *conf;
    struct nx_cnode *rest;
    int rc;
};

static void parse(struct parsed *p, const char *yaml)
{
    struct nx_conf_ctx ctx = {.diags = &p->diags, .file = "plugins/telegram.yaml"};
    memset(p, 0, sizeof *p);
    nx_diags_init(&p->diags);
    ctx.diags = &p->diags;
    assert_int_equal(nx_cnode_parse_yaml(&ctx, yaml, strlen(yaml), &p->root), 0);
    p->rc = nx_chpolicy_conf_parse(&ctx, p->root, &p->conf, &p->rest);
}

static void parsed_cleanup(struct parsed *p)
{
    nx_chpolicy_conf_free(p->conf);
    nx_chpolicy_rest_free(p->rest);
    nx_cnode_free(p->root);
    nx_diags_cleanup(&p->diags);
}

static void test_policy_keys_split_from_the_type_keys(void **state)
{
    struct parsed p;
    (void)state;
    parse(&p, "token: abc\nsender_policy: allowlist\nallow_from: [1001, \"1002\"]\n"
              "instance: kate\nmention_keywords: [kate]\nrequire_mention: false\n");
    assert_int_equal(p.rc, 0);
    assert_int_equal(p.diags.n, 0);
    assert_int_equal(p.conf->sender_policy, NX_SENDER_ALLOWLIST);
    assert_string_equal(p.conf->allow_from[0], "1001");
    assert_string_equal(p.conf->allow_from[1], "1002");
    assert_null(p.conf->allow_from[2]);
    assert_false(p.conf->require_mention);
    assert_string_equal(p.conf->mention_keywords[0], "kate");
    assert_int_equal(p.conf->pairing_code_ttl_ms, 3600 * 1000);
    /* the rest keeps the type's keys, positions included */
    assert_int_equal(p.rest->n, 4);
    assert_non_null(nx_cnode_get(p.rest, "token"));
    assert_non_null(nx_cnode_get(p.rest, "instance"));
    assert_null(nx_cnode_get(p.rest, "sender_policy"));
    assert_int_equal(nx_cnode_get(p.rest, "instance")->line, 4);
    parsed_cleanup(&p);
}

static void test_policy_defaults_and_errors(void **state)
{
    struct parsed p;
    (void)state;
    parse(&p, "token: abc\n");
    assert_int_equal(p.rc, 0);
    assert_int_equal(p.conf->sender_policy, NX_SENDER_OPEN);
    assert_true(p.conf->require_mention);
    assert_null(p.conf->allow_from[0]);
    parsed_cleanup(&p);

    parse(&p, "sender_policy: allowlist\n");
    assert_int_not_equal(p.rc, 0);
    assert_int_equal(p.diags.n, 1);
    assert_non_null(strstr(p.diags.v[0].msg, "allow_from"));
    assert_int_equal(p.diags.v[0].line, 1);
    parsed_cleanup(&p);

    parse(&p, "sender_policy: closed\npairing_code_ttl: 5s\n");
    assert_int_not_equal(p.rc, 0);
    assert_int_equal(p.diags.n, 2);
    parsed_cleanup(&p);
}

static struct nx_chpolicy *policy_from(const char *yaml)
{
    struct parsed p;
    parse(&p, yaml);
    assert_int_equal(p.rc, 0);
    struct nx_chpolicy *pol = nx_chpolicy_new(NULL, NULL, p.conf);
    p.conf = NULL;
    parsed_cleanup(&p);
    return pol;
}

static enum nx_chpolicy_verdict check(struct nx_chpolicy *p, const char *from, bool is_group,
                                      bool mentioned, const char *text, uint64_t now, char *code,
                                      const char **reason)
{
    struct nx_channel_in in = {.from = from, .text = text, .is_group = is_group, .mentioned = mentioned};
    return nx_chpolicy_check(p, &in, now, code, reason);
}

/* ---- decisions ---- */

static void test_open_policy_passes_everyone_and_gates_groups(void **state)
{
    struct nx_chpolicy *p = policy_from("mention_keywords: [kate, \"hey bot\"]\n");
    char code[16];
    const char *reason;
    (void)state;
    assert_int_equal(check(p, "1", false, false, "hi", 1, code, &reason), NX_CHPOLICY_PASS);
    assert_int_equal(check(p, "2", true, false, "hi all", 1, code, &reason), NX_CHPOLICY_DROP);
    assert_string_equal(reason, "not_mentioned");
    assert_int_equal(check(p, "2", true, true, "hi all", 1, code, &reason), NX_CHPOLICY_PASS);
    assert_int_equal(check(p, "2", true, false, "Kate, what time is it?", 1, code, &reason),
                     NX_CHPOLICY_PASS);
    assert_int_equal(check(p, "2", true, false, "HEY BOT!", 1, code, &reason), NX_CHPOLICY_PASS);
    /* a keyword inside another word is not a mention */
    assert_int_equal(check(p, "2", true, false, "kateverything", 1, code, &reason), NX_CHPOLICY_DROP);
    /* punctuation beyond ASCII ends a word too (Spanish, French, typographic quotes, CJK) */
    static const char *const said[] = {"¿kate, estás ahí?", "¡kate!", "«kate» aide-moi",
                                       "“kate” help", "kate’s turn", "hola\u00a0kate",
                                       "kate、こんにちは", "👋kate"};
    for (size_t i = 0; i < sizeof said / sizeof *said; i++)
        assert_int_equal(check(p, "2", true, false, said[i], 1, code, &reason), NX_CHPOLICY_PASS);
    /* but a letter of any script is part of the word */
    static const char *const inside[] = {"ékate", "kateé", "кkate", "kateя"};
    for (size_t i = 0; i < sizeof inside / sizeof *inside; i++)
        assert_int_equal(check(p, "2", true, false, inside[i], 1, code, &reason), NX_CHPOLICY_DROP);
    nx_chpolicy_free(p);

    p = policy_from("require_mention: false\n");
    assert_int_equal(check(p, "2", true, false, "hi all", 1, code, &reason), NX_CHPOLICY_PASS);
    nx_chpolicy_free(p);
}

static void test_allowlist_drops_unlisted_senders(void **state)
{
    struct nx_chpolicy *p = policy_from("sender_policy: allowlist\nallow_from: [1001]\n");
    char code[16];
    const char *reason;
    (void)state;
    assert_int_equal(check(p, "1001", false, false, "hi", 1, code, &reason), NX_CHPOLICY_PASS);
    assert_int_equal(check(p, "666", false, false, "hi", 1, code, &reason), NX_CHPOLICY_DROP);
    assert_string_equal(reason, "not_allowed");
    assert_int_equal(check(p, NULL, false, false, "hi", 1, code, &reason), NX_CHPOLICY_DROP);
    assert_int_equal(check(p, "10011", false, false, "hi", 1, code, &reason), NX_CHPOLICY_DROP);
    nx_chpolicy_free(p);
}

static bool code_is_valid(const char *c)
{
    if (strlen(c) != NX_PAIRING_CODE_LEN)
        return false;
    for (const char *s = c; *s; s++)
        if (!strchr(NX_PAIRING_ALPHABET, *s))
            return false;
    return true;
}

static void test_pairing_challenges_once_until_expiry_or_approval(void **state)
{
    struct nx_chpolicy *p = policy_from("sender_policy: pairing\nallow_from: [42]\npairing_code_ttl: 2m\n");
    char code[16] = "", code2[16] = "";
    const char *reason;
    uint64_t t = 1000;
    (void)state;
    assert_int_equal(check(p, "42", false, false, "hi", t, code, &reason), NX_CHPOLICY_PASS);
    assert_int_equal(check(p, "7", false, false, "hi", t, code, &reason), NX_CHPOLICY_CHALLENGE);
    assert_true(code_is_valid(code));
    assert_int_equal(nx_chpolicy_pending(p), 1);
    /* one reply only: later messages are dropped while the code is valid */
    for (int i = 0; i < 5; i++) {
        assert_int_equal(check(p, "7", false, false, "hello?", t + 1000 * (uint64_t)i, code2, &reason),
                         NX_CHPOLICY_DROP);
        assert_string_equal(reason, "pairing_pending");
    }
    /* expired: a new code */
    assert_int_equal(check(p, "7", false, false, "again", t + 120000, code2, &reason), NX_CHPOLICY_CHALLENGE);
    assert_true(code_is_valid(code2));
    assert_string_not_equal(code, code2);
    /* approved: routed; revoked: challenged again */
    nx_chpolicy_set_approved(p, "7", true);
    assert_int_equal(nx_chpolicy_pending(p), 0);
    assert_int_equal(check(p, "7", false, false, "thanks", t + 121000, code2, &reason), NX_CHPOLICY_PASS);
    nx_chpolicy_set_approved(p, "7", false);
    assert_int_equal(check(p, "7", false, false, "still?", t + 122000, code2, &reason),
                     NX_CHPOLICY_CHALLENGE);
    /* no codes into groups */
    assert_int_equal(check(p, "8", true, true, "@bot hi", t, code2, &reason), NX_CHPOLICY_DROP);
    assert_string_equal(reason, "not_allowed");
    nx_chpolicy_free(p);
}

static void test_pairing_codes_are_rate_limited(void **state)
{
    struct nx_chpolicy *p = policy_from("sender_policy: pairing\n");
    char code[16], sender[16];
    const char *reason;
    int challenged = 0, limited = 0;
    (void)state;
    for (int i = 0; i < NX_PAIRING_MAX_PER_HOUR + 10; i++) {
        snprintf(sender, sizeof sender, "s%d", i);
        enum nx_chpolicy_verdict v = check(p, sender, false, false, "hi", 5000, code, &reason);
        challenged += v == NX_CHPOLICY_CHALLENGE;
        limited += v == NX_CHPOLICY_DROP && strcmp(reason, "pairing_limit") == 0;
    }
    assert_int_equal(challenged, NX_PAIRING_MAX_PER_HOUR);
    assert_int_equal(limited, 10);
    /* an hour later the window reopens (and the old codes have expired) */
    assert_int_equal(check(p, "late", false, false, "hi", 5000 + 3600 * 1000, code, &reason),
                     NX_CHPOLICY_CHALLENGE);
    assert_int_equal(nx_chpolicy_pending(p), 1);
    nx_chpolicy_free(p);
}

static void test_pairing_codes_are_random_and_normalized(void **state)
{
    char a[16], b[16], n[16];
    int seen[32] = {0};
    (void)state;
    for (int i = 0; i < 500; i++) {
        assert_int_equal(nx_pairing_code_new(a), 0);
        assert_true(code_is_valid(a));
        assert_int_equal(nx_pairing_code_new(b), 0);
        assert_string_not_equal(a, b);
        for (const char *s = a; *s; s++)
            seen[strchr(NX_PAIRING_ALPHABET, *s) - NX_PAIRING_ALPHABET]++;
    }
    for (int i = 0; i < 32; i++) /* 4000 draws: every symbol turns up (expected 125 each) */
        assert_true(seen[i] > 40);
    assert_int_equal(nx_pairing_code_normalize("abcd-efgh", n), 0);
    assert_string_equal(n, "ABCDEFGH");
    assert_int_equal(nx_pairing_code_normalize(" 2345 6789 ", n), 0);
    assert_string_equal(n, "23456789");
    assert_int_equal(nx_pairing_code_normalize("ABCDEFG0", n), NX_EINVAL); /* 0 is not used */
    assert_int_equal(nx_pairing_code_normalize("ABCDEFG", n), NX_EINVAL);
    assert_int_equal(nx_pairing_code_normalize("ABCDEFGHJ", n), NX_EINVAL);
    assert_int_equal(nx_pairing_code_normalize("", n), NX_EINVAL);
    assert_int_equal(nx_pairing_code_normalize("ABCD'; --", n), NX_EINVAL);
}

/* ---- the pairing table ---- */

struct store_fx {
    uv_loop_t loop;
    char dir[64];
    struct nx_store *s;
    int calls;
    int rc;
    struct nx_pairing_row *v;
    size_t n;
};

static void on_done(int rc, void *arg)
{
    struct store_fx *f = arg;
    f->rc = rc;
    f->calls++;
}

static void on_rows(int rc, struct nx_pairing_row *v, size_t n, void *arg)
{
    struct store_fx *f = arg;
    nx_pairing_rows_free(f->v, f->n);
    f->rc = rc;
    f->v = v;
    f->n = n;
    f->calls++;
}

static void wait_call(struct store_fx *f)
{
    int want = f->calls + 1;
    f->rc = 1;
    assert_true(ts_run_until_count(&f->loop, &f->calls, want, 10000));
}

static void test_pairing_table_approve_and_revoke(void **state)
{
    struct store_fx f;
    struct nx_pairing_row row = {0};
    char code[16];
    int64_t later = (int64_t)(nx_wall_ms() / 1000) + 3600;
    (void)state;
    memset(&f, 0, sizeof f);
    uv_loop_init(&f.loop);
    assert_int_equal(ts_mkdtemp(f.dir, sizeof f.dir, "nx-pairing-"), 0);
    assert_int_equal(nx_store_open(&f.loop, f.dir, NULL, on_done, &f, &f.s), 0);
    wait_call(&f);
    assert_int_equal(f.rc, 0);

    assert_int_equal(nx_pairing_code_new(code), 0);
    nx_pairing_put_pending(f.s, "telegram", "kate", "7", "7", code, later, on_done, &f);
    wait_call(&f);
    assert_int_equal(f.rc, 0);
    nx_pairing_put_pending(f.s, "telegram", "kate", "8", "8", "ZZZZZZZZ", later - 7200, on_done, &f);
    wait_call(&f); /* already expired: never listed, never approvable */
    nx_pairing_list(f.s, "telegram", "kate", on_rows, &f);
    wait_call(&f);
    assert_int_equal(f.n, 1);
    assert_string_equal(f.v[0].sender, "7");
    assert_string_equal(f.v[0].code, code);
    assert_false(f.v[0].is_approved);

    nx_pairing_approve(f.s, "ZZZZZZZZ", NULL, on_done, &f);
    wait_call(&f);
    assert_int_equal(f.rc, NX_ENOENT);
    nx_pairing_approve(f.s, code, &row, on_done, &f);
    wait_call(&f);
    assert_int_equal(f.rc, 0);
    assert_string_equal(row.sender, "7");
    assert_string_equal(row.instance, "kate");
    nx_pairing_approve(f.s, code, NULL, on_done, &f); /* used up */
    wait_call(&f);
    assert_int_equal(f.rc, NX_ENOENT);
    /* a new pending code never downgrades an approved sender */
    nx_pairing_put_pending(f.s, "telegram", "kate", "7", "7", "YYYYYYYY", later, on_done, &f);
    wait_call(&f);
    nx_pairing_list(f.s, "telegram", "kate", on_rows, &f);
    wait_call(&f);
    assert_int_equal(f.n, 1);
    assert_true(f.v[0].is_approved);
    assert_null(f.v[0].code);
    nx_pairing_list(f.s, "telegram", "other", on_rows, &f);
    wait_call(&f);
    assert_int_equal(f.n, 0);

    nx_pairing_revoke(f.s, "telegram", "kate", "7", on_done, &f);
    wait_call(&f);
    assert_int_equal(f.rc, 0);
    nx_pairing_revoke(f.s, "telegram", "kate", "7", on_done, &f);
    wait_call(&f);
    assert_int_equal(f.rc, NX_ENOENT);
    nx_pairing_list(f.s, NULL, NULL, on_rows, &f);
    wait_call(&f);
    assert_int_equal(f.n, 0);

    free(row.channel);
    free(row.instance);
    free(row.sender);
    free(row.chat);
    free(row.code);
    nx_pairing_rows_free(f.v, f.n);
    nx_store_close(f.s);
    assert_int_equal(ts_loop_finish(&f.loop), 0);
    ts_rm_tree(f.dir);
}

/* ---- sender buckets ---- */

static void test_bucket_allows_burst_then_rps_and_one_notice(void **state)
{
    struct nx_sender_limiter *l = nx_sender_limiter_new(NULL, 0);
    uint64_t t = 100000;
    (void)state;
    for (int i = 0; i < 3; i++)
        assert_int_equal(nx_sender_limiter_take(l, "a", 1.0, 3, t), NX_LIMIT_PASS);
    assert_int_equal(nx_sender_limiter_take(l, "a", 1.0, 3, t), NX_LIMIT_DROP_NOTICE);
    for (int i = 0; i < 20; i++)
        assert_int_equal(nx_sender_limiter_take(l, "a", 1.0, 3, t), NX_LIMIT_DROP);
    /* another sender has its own bucket */
    assert_int_equal(nx_sender_limiter_take(l, "b", 1.0, 3, t), NX_LIMIT_PASS);
    /* one token a second */
    assert_int_equal(nx_sender_limiter_take(l, "a", 1.0, 3, t + 1000), NX_LIMIT_PASS);
    assert_int_equal(nx_sender_limiter_take(l, "a", 1.0, 3, t + 1000), NX_LIMIT_DROP);
    /* a new flood inside the notice window: no second notice */
    assert_int_equal(nx_sender_limiter_take(l, "a", 1.0, 3, t + 2000), NX_LIMIT_PASS);
    assert_int_equal(nx_sender_limiter_take(l, "a", 1.0, 3, t + 2000), NX_LIMIT_DROP);
    /* after the window (10 s at least), a new flood gets one */
    assert_int_equal(nx_sender_limiter_take(l, "a", 1.0, 3, t + 12000), NX_LIMIT_PASS);
    assert_int_equal(nx_sender_limiter_take(l, "a", 1.0, 3, t + 12000), NX_LIMIT_PASS);
    assert_int_equal(nx_sender_limiter_take(l, "a", 1.0, 3, t + 12000), NX_LIMIT_PASS);
    assert_int_equal(nx_sender_limiter_take(l, "a", 1.0, 3, t + 12000), NX_LIMIT_DROP_NOTICE);
    /* unlimited */
    assert_int_equal(nx_sender_limiter_take(l, "c", 0, 3, t), NX_LIMIT_PASS);
    nx_sender_limiter_free(l);
}

static void test_buckets_are_bounded(void **state)
{
    struct nx_sender_limiter *l = nx_sender_limiter_new(NULL, 100);
    char key[32];
    uint64_t t = 1000;
    (void)state;
    /* 1000 busy senders (each spent a token): the table never holds more than 100 */
    for (int i = 0; i < 1000; i++) {
        snprintf(key, sizeof key, "s%d", i);
        assert_int_equal(nx_sender_limiter_take(l, key, 0.001, 2, t + (uint64_t)i), NX_LIMIT_PASS);
        assert_true(nx_sender_limiter_size(l) <= 100);
    }
    assert_int_equal(nx_sender_limiter_size(l), 100);
    /* the most recent ones survived: s999 still has one token left, then none */
    assert_int_equal(nx_sender_limiter_take(l, "s999", 0.001, 2, t + 1000), NX_LIMIT_PASS);
    assert_int_equal(nx_sender_limiter_take(l, "s999", 0.001, 2, t + 1000), NX_LIMIT_DROP_NOTICE);
    /* once they are full again (idle), a periodic sweep drops them all */
    assert_int_equal(nx_sender_limiter_take(l, "new", 1000, 2, t + 10000000), NX_LIMIT_PASS);
    assert_int_equal(nx_sender_limiter_size(l), 1);
    nx_sender_limiter_free(l);
}

/* ---- agent configuration: rate limits and the outbound allowlist ---- */

static const char agents_yaml[] =
    "agents:\n"
    "  - id: kate\n"
    "    model: {provider: anthropic, model: m}\n"
    "    sender_rate_limit: {rps: 0.5, burst: 3}\n"
    "    outbound_allowlist: {telegram: [1001, 1002], http: [example.com]}\n"
    "    inbound_bindings:\n"
    "      - {plugin: telegram, instance: a}\n"
    "      - {plugin: telegram, instance: b, sender_rate_limit: disable}\n"
    "      - {plugin: telegram, instance: c, sender_rate_limit: {rps: 5, burst: 10},\n"
    "         outbound_allowlist: {telegram: [2002]}}\n"
    "      - {plugin: whatsapp, sender_rate_limit: inherit}\n"
    "  - id: open\n"
    "    model: {provider: anthropic, model: m}\n";

static struct nx_config *load_agents(void)
{
    struct nx_config *cfg = NULL;
    struct nx_diags d;
    nx_diags_init(&d);
    int rc = nx_config_load_mem(NULL, "agents.yaml", agents_yaml, strlen(agents_yaml), &cfg, &d);
    if (rc != 0)
        nx_diags_print(&d, stderr);
    assert_int_equal(rc, 0);
    nx_diags_cleanup(&d);
    return cfg;
}

static void test_sender_limit_binding_overrides(void **state)
{
    struct nx_config *cfg = load_agents();
    const struct nx_agent_conf *a = nx_config_agent(cfg, "kate");
    double rps = 0;
    uint32_t burst = 0;
    (void)state;
    assert_non_null(a);
    assert_true(nx_sender_limit_for(a, &a->inbound_bindings[0], &rps, &burst));
    assert_true(rps == 0.5);
    assert_int_equal(burst, 3);
    assert_false(nx_sender_limit_for(a, &a->inbound_bindings[1], &rps, &burst));
    assert_true(nx_sender_limit_for(a, &a->inbound_bindings[2], &rps, &burst));
    assert_true(rps == 5);
    assert_int_equal(burst, 10);
    assert_true(nx_sender_limit_for(a, &a->inbound_bindings[3], &rps, &burst));
    assert_true(rps == 0.5);
    assert_false(nx_sender_limit_for(nx_config_agent(cfg, "open"), NULL, &rps, &burst));
    nx_config_unref(cfg);
}

/* send_message's idempotency key: the same send from a re-run of the turn answering the same
 * inbound event gets the same key, so the ledger sends it once; anything that changes the
 * message or its event changes it. */
static void test_send_message_key_is_deterministic(void **state)
{
    json_t *args = json_pack("{s:[[{s:s}]]}", "buttons", "text", "ok");
    json_t *args2 = json_pack("{s:[[{s:s}]]}", "buttons", "text", "no");
    struct nx_send_message_req rq = {.agent_id = "kate", .session_key = "agent:kate:telegram.a:1",
                                     .channel = "telegram", .to = "1001", .text = "hello",
                                     .args = args, .event_id = "ev-1"};
    char k1[NX_SEND_KEY_LEN + 1], k2[NX_SEND_KEY_LEN + 1];
    (void)state;
    nx_send_message_key(&rq, "a", k1);
    assert_int_equal(strlen(k1), NX_SEND_KEY_LEN);
    assert_true(strncmp(k1, "sm-", 3) == 0);
    nx_send_message_key(&rq, "a", k2);
    assert_string_equal(k1, k2);
    /* every part of the message and its context counts */
    nx_send_message_key(&rq, "b", k2);
    assert_string_not_equal(k1, k2);
    rq.to = "1002";
    nx_send_message_key(&rq, "a", k2);
    assert_string_not_equal(k1, k2);
    rq.to = "1001";
    rq.text = "hello!";
    nx_send_message_key(&rq, "a", k2);
    assert_string_not_equal(k1, k2);
    rq.text = "hello";
    rq.args = args2;
    nx_send_message_key(&rq, "a", k2);
    assert_string_not_equal(k1, k2);
    rq.args = args;
    rq.event_id = "ev-2"; /* the same words in answer to another message: sent again */
    nx_send_message_key(&rq, "a", k2);
    assert_string_not_equal(k1, k2);
    rq.event_id = "ev-1";
    rq.session_key = "agent:kate:telegram.a:2";
    nx_send_message_key(&rq, "a", k2);
    assert_string_not_equal(k1, k2);
    /* no inbound event (HTTP or MCP turns): a random key each time */
    rq.event_id = NULL;
    nx_send_message_key(&rq, "a", k1);
    nx_send_message_key(&rq, "a", k2);
    assert_int_equal(strlen(k1), NX_SEND_KEY_LEN);
    assert_string_not_equal(k1, k2);
    json_decref(args);
    json_decref(args2);
}

static void test_outbound_allowlist(void **state)
{
    struct nx_config *cfg = load_agents();
    const struct nx_agent_conf *a = nx_config_agent(cfg, "kate");
    (void)state;
    assert_true(nx_outbound_allowed(a, NULL, "telegram", "a", "1001"));
    assert_false(nx_outbound_allowed(a, NULL, "telegram", "a", "666"));
    assert_false(nx_outbound_allowed(a, "agent:kate:http:x", "telegram", NULL, "666"));
    /* the peer of the conversation being answered is always allowed */
    assert_true(nx_outbound_allowed(a, "agent:kate:telegram.a:666", "telegram", "a", "666"));
    assert_false(nx_outbound_allowed(a, "agent:kate:telegram.a:666", "telegram", "b", "666"));
    /* no list for the channel: unrestricted */
    assert_true(nx_outbound_allowed(a, NULL, "whatsapp", NULL, "34600000000"));
    /* a binding's override applies to turns from that binding */
    assert_true(nx_outbound_allowed(a, "agent:kate:telegram.c:5", "telegram", "a", "2002"));
    assert_false(nx_outbound_allowed(a, "agent:kate:telegram.c:5", "telegram", "a", "1001"));
    assert_true(nx_outbound_allowed(nx_config_agent(cfg, "open"), NULL, "telegram", NULL, "1"));
    nx_config_unref(cfg);
}

/* Telegram's part of mention gating: the parser keeps the mentioned usernames (entity offsets
 * are UTF-16 code units) and the author of the message replied to. */
static void test_telegram_parser_reads_mentions_and_replies(void **state)
{
    static const char body[] =
        "{\"ok\":true,\"result\":["
        "{\"update_id\":1,\"message\":{\"message_id\":1,\"date\":1,\"chat\":{\"id\":-5,\"type\":\"group\"},"
        "\"from\":{\"id\":9},\"text\":\"h\\u00e9\\ud83d\\ude00 @Kate_Bot and @bob!\","
        "\"entities\":[{\"type\":\"mention\",\"offset\":5,\"length\":9},"
        "{\"type\":\"mention\",\"offset\":19,\"length\":4},"
        "{\"type\":\"bold\",\"offset\":0,\"length\":2},"
        "{\"type\":\"mention\",\"offset\":90,\"length\":4},"
        "{\"type\":\"mention\",\"offset\":0,\"length\":3}]}},"
        "{\"update_id\":2,\"message\":{\"message_id\":2,\"date\":1,"
        "\"chat\":{\"id\":-5,\"type\":\"supergroup\"},\"from\":{\"id\":9},\"text\":\"yes\","
        "\"reply_to_message\":{\"message_id\":1,\"from\":{\"id\":666}}}},"
        "{\"update_id\":3,\"message\":{\"message_id\":3,\"date\":1,\"chat\":{\"id\":7,\"type\":\"private\"},"
        "\"text\":\"plain\"}}]}";
    struct nx_tg_update *v = NULL;
    size_t n = 0;
    char err[128];
    (void)state;
    assert_int_equal(nx_tg_parse_updates(body, strlen(body), &v, &n, err, sizeof err), 0);
    assert_int_equal(n, 3);
    assert_true(v[0].is_group);
    assert_string_equal(v[0].mentions, "@kate_bot @bob ");
    assert_int_equal(v[0].reply_to_from, 0);
    assert_null(v[1].mentions);
    assert_int_equal(v[1].reply_to_from, 666);
    assert_true(v[1].is_group);
    assert_null(v[2].mentions);
    assert_false(v[2].is_group);
    nx_tg_updates_free(v, n);
}

static void test_binding_overrides_are_checked_at_load(void **state)
{
    static const char *const bad[] = {
        "sender_rate_limit: sometimes",
        "sender_rate_limit: {rps: 0}",
        "sender_rate_limit: {rps: 1, burst: 0}",
        "sender_rate_limit: {rps: 1, brust: 3}",
        "outbound_allowlist: [1, 2]",
        "outbound_allowlist: {telegram: 5}",
    };
    (void)state;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char yaml[512];
        struct nx_config *cfg = NULL;
        struct nx_diags d;
        nx_diags_init(&d);
        snprintf(yaml, sizeof yaml, "agents:\n  - id: kate\n    model: {provider: anthropic, model: m}\n"
                 "    inbound_bindings:\n      - plugin: telegram\n        %s\n", bad[i]);
        assert_int_equal(nx_config_load_mem(NULL, "agents.yaml", yaml, strlen(yaml), &cfg, &d), NX_ECONFIG);
        assert_int_equal(d.n, 1);
        assert_int_equal(d.v[0].line, 6);
        nx_diags_cleanup(&d);
    }
}

int main(void)
{
    nx_log_set_level(NX_LOG_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_policy_keys_split_from_the_type_keys),
        cmocka_unit_test(test_policy_defaults_and_errors),
        cmocka_unit_test(test_open_policy_passes_everyone_and_gates_groups),
        cmocka_unit_test(test_allowlist_drops_unlisted_senders),
        cmocka_unit_test(test_pairing_challenges_once_until_expiry_or_approval),
        cmocka_unit_test(test_pairing_codes_are_rate_limited),
        cmocka_unit_test(test_pairing_codes_are_random_and_normalized),
        cmocka_unit_test(test_pairing_table_approve_and_revoke),
        cmocka_unit_test(test_bucket_allows_burst_then_rps_and_one_notice),
        cmocka_unit_test(test_buckets_are_bounded),
        cmocka_unit_test(test_sender_limit_binding_overrides),
        cmocka_unit_test(test_outbound_allowlist),
        cmocka_unit_test(test_send_message_key_is_deterministic),
        cmocka_unit_test(test_binding_overrides_are_checked_at_load),
        cmocka_unit_test(test_telegram_parser_reads_mentions_and_replies),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
