/* NX_TEST_LABELS: threaded */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/error.h"
#include "core/redact.h"

static char *redact(const char *in)
{
    struct nx_buf b = NX_BUF_INIT;
    nx_redact_append(&b, in, strlen(in));
    return nx_buf_steal(&b);
}

#define EXPECT(in, want)                                                                           \
    do {                                                                                           \
        char *got_ = redact(in);                                                                   \
        assert_string_equal(got_, want);                                                           \
        free(got_);                                                                                \
    } while (0)

#define UNCHANGED(in) EXPECT(in, in)

static void test_redact_bearer_tokens_keep_the_word(void **state)
{
    (void)state;
    EXPECT("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.abc",
           "Authorization: Bearer [REDACTED]");
    EXPECT("sent bearer abcdefgh12345678 upstream", "sent bearer [REDACTED] upstream");
    EXPECT("BEARER  tok_1234567890", "BEARER  [REDACTED]");
    EXPECT("header=Bearer abc/def+ghi==; next", "header=Bearer [REDACTED]; next");
    EXPECT("Authorization: Basic dXNlcjpwYXNzd29yZA==", "Authorization: Basic [REDACTED]");
    EXPECT("proxy-authorization: basic QWxhZGRpbjpvcGVu", "proxy-authorization: basic [REDACTED]");
    EXPECT("x-api-key: abc123", "x-api-key: [REDACTED]");
}

static void test_redact_bearer_negatives(void **state)
{
    (void)state;
    UNCHANGED("the bearer of bad news");
    UNCHANGED("Bearer");
    UNCHANGED("Bearer short");
    UNCHANGED("authorization failed for this request");
}

static void test_redact_sk_keys(void **state)
{
    (void)state;
    EXPECT("key sk-abcdefghijklmnop0123 used", "key [REDACTED] used");
    EXPECT("sk-proj-AbCdEfGhIjKlMnOpQrStUvWx_yz-0123", "[REDACTED]");
    EXPECT("x=sk-ant-api03-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-bbbbbbbb.", "x=[REDACTED].");
    UNCHANGED("sk-short");
    UNCHANGED("skeleton task-list risk-assessment-matrix-overview");
    UNCHANGED("task-abcdefghijklmnopqrstuvwxyz");
    /* an Anthropic or OpenAI project key run into a word (a session named after it) */
    EXPECT("session s1sk-ant-api03-fuzzfuzzfuzzfuzzfuzzfuzzfuzz done", "session s1[REDACTED] done");
    EXPECT("id_sk-proj-AbCdEfGhIjKlMnOpQrStUvWx x", "id_[REDACTED] x");
    UNCHANGED("disk-antelope-observatory-notes asksk-ant-short");
}

static void test_redact_aws_keys(void **state)
{
    (void)state;
    EXPECT("aws AKIAIOSFODNN7EXAMPLE ok", "aws [REDACTED] ok");
    EXPECT("ASIAABCDEFGHIJKLMNOP", "[REDACTED]");
    UNCHANGED("AKIAIOSFODNN7EXAMPL");
    UNCHANGED("AKIAIOSFODNN7EXAMPLEX");
    UNCHANGED("AKIAiosfodnn7example");
}

static void test_redact_long_hex(void **state)
{
    (void)state;
    EXPECT("secret 0123456789abcdef0123456789ABCDEF end", "secret [REDACTED] end");
    EXPECT("sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
           "sha256:[REDACTED]");
    EXPECT("0x0123456789abcdef0123456789abcdef", "[REDACTED]");
    /* git short SHAs, UUIDs and hex inside longer words stay. */
    UNCHANGED("commit 1a2b3c4 and 1a2b3c4d5e6f");
    UNCHANGED("id 550e8400-e29b-41d4-a716-446655440000");
    UNCHANGED("0123456789abcdef0123456789abcdef_x");
    UNCHANGED("g0123456789abcdef0123456789abcdef");
    UNCHANGED("0123456789abcdef0123456789abcde");
}

static void test_redact_key_values(void **state)
{
    (void)state;
    EXPECT("{\"api_key\":\"abc def\",\"model\":\"x\"}", "{\"api_key\":\"[REDACTED]\",\"model\":\"x\"}");
    EXPECT("{\"password\": \"p\\\"w\"}", "{\"password\": \"[REDACTED]\"}");
    EXPECT("GET /v1?key=abc&model=m&access_token=zzz#frag",
           "GET /v1?key=[REDACTED]&model=m&access_token=[REDACTED]#frag");
    EXPECT("https://h/p?token=t0k&secret=s3", "https://h/p?token=[REDACTED]&secret=[REDACTED]");
    EXPECT("login password=hunter2 user=bob", "login password=[REDACTED] user=bob");
    /* "key" and "token" alone are too common to redact outside URLs. */
    UNCHANGED("cache key=abc token=1");
    UNCHANGED("{\"max_tokens\":100,\"token_count\":5}");
    UNCHANGED("password reset requested");
}

static void test_redact_known_token_formats(void **state)
{
    (void)state;
    EXPECT("gh ghp_16C7e42F292c6912E7710c838347Ae178B4a ok", "gh [REDACTED] ok");
    EXPECT("github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz", "[REDACTED]");
    EXPECT("slack xoxb-123456789012-1234567890123-AbCdEfGhIjKl", "slack [REDACTED]");
    EXPECT("stripe sk_live_51HabcdefGHIJKLMNOPqrstuv", "stripe [REDACTED]");
    EXPECT("google AIzaSyA-1234567890abcdefghijklmnopqrstu", "google [REDACTED]");
    EXPECT("groq gsk_Q2w8Zr5LmN0pXv7Tb4YcQ2w8Zr5LmN0pXv7Tb4Yc", "groq [REDACTED]");
    EXPECT("my bot token is 7123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw9 ok",
           "my bot token is [REDACTED] ok");
    EXPECT("GET https://api.telegram.org/bot7123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw9/getMe",
           "GET https://api.telegram.org/bot[REDACTED]/getMe");
    EXPECT("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
           "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U.",
           "jwt [REDACTED].");
    UNCHANGED("ghp_short gh_ghp xoxb- sk_live_x AIza");
    UNCHANGED("at 12:30:45 and 123456:short");
    UNCHANGED("eyJhbGciOiJIUzI1NiJ9 alone");
}

static void test_redact_urls_keys_and_pem(void **state)
{
    (void)state;
    EXPECT("NATS at nats://alice:S3cretNatsPass@127.0.0.1:4222 down",
           "NATS at nats://alice:[REDACTED]@127.0.0.1:4222 down");
    EXPECT("proxy http://bob:p%40ss@10.0.0.1:3128/", "proxy http://bob:[REDACTED]@10.0.0.1:3128/");
    UNCHANGED("see https://example.com:8443/path?q=1 and http://host/a:b@c");
    EXPECT("auth_token: abc123 bot_token=x9 app_secret: \"s\"",
           "auth_token: [REDACTED] bot_token=[REDACTED] app_secret: \"[REDACTED]\"");
    EXPECT("OPENAI_API_KEY=whatever ANTHROPIC_API_KEY=other",
           "OPENAI_API_KEY=[REDACTED] ANTHROPIC_API_KEY=[REDACTED]");
    EXPECT("{\"X-Auth-Token\":\"t\",\"aws_secret_access_key\":\"wJalr\"}",
           "{\"X-Auth-Token\":\"[REDACTED]\",\"aws_secret_access_key\":\"[REDACTED]\"}");
    EXPECT("log {\\\"api_key\\\":\\\"x y\\\"} end", "log {\\\"api_key\\\":\\\"[REDACTED]\\\"} end");
    EXPECT("Cookie: session=abc; theme=dark\nnext", "Cookie: [REDACTED]\nnext");
    EXPECT("?x-amz-signature=abc&sig=def&a=1", "?x-amz-signature=[REDACTED]&sig=[REDACTED]&a=1");
    EXPECT("key:\n-----BEGIN RSA PRIVATE KEY-----\nMIIEow\nabc\n-----END RSA PRIVATE KEY-----\nafter",
           "key:\n[REDACTED]\nafter");
    EXPECT("-----BEGIN PRIVATE KEY-----\nMIIE (cut)", "[REDACTED]");
    UNCHANGED("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----");
    UNCHANGED("--- a/file ---- b ----- c");
    UNCHANGED("{\"max_tokens\":5,\"input_tokens\":3,\"token_count\":1,\"passwordless\":true}");
    assert_true(nx_redact_is_secret_key("Authorization", 13));
    assert_true(nx_redact_is_secret_key("bot_token", 9));
    assert_true(nx_redact_is_secret_key("X-Api-Key", 9));
    assert_true(nx_redact_is_secret_key("token", 5)); /* as a JSON member; in text too common */
    assert_false(nx_redact_is_secret_key("eos_token", 9));
    assert_false(nx_redact_is_secret_key("max_tokens", 10));
}

static void test_redact_ordinary_text_stays(void **state)
{
    (void)state;
    UNCHANGED("{\"eos_token\": \"</s>\", \"pad_token\": \"<pad>\", \"next_page_token\": \"abc\"}");
    UNCHANGED("max_token: 5 is_secret: false has_api_key=true");
    UNCHANGED("restored 20240501:backup_of_database_production_01 ok");
    UNCHANGED("hf_hub_download_with_retry_and_cache(x) npm_package_config_some_long_option_name_here");
}

/* Long runs of key or base64url characters cost time in proportion to their length (each word
 * start inside the run used to scan the rest of it). */
static void test_redact_long_runs_stay_linear(void **state)
{
    (void)state;
    static const char *const units[] = {"a-", "eyJ-", "sk-", "xoxb-", "ab_"};
    for (size_t u = 0; u < sizeof units / sizeof units[0]; u++) {
        size_t n = strlen(units[u]), total = (2u << 20) / n * n;
        char *in = malloc(total + 1);
        assert_non_null(in);
        for (size_t k = 0; k < total; k += n)
            memcpy(in + k, units[u], n);
        in[total] = '\0';
        struct nx_buf b = NX_BUF_INIT;
        nx_redact_append(&b, in, total); /* quadratic, this would not end within the test's time */
        assert_true(b.len > 0);
        nx_buf_cleanup(&b);
        free(in);
    }
}

static void test_redact_home_paths(void **state)
{
    (void)state;
    /* main() sets HOME=/home/tester before the first call. */
    EXPECT("open /home/tester/.config/nexo.yaml", "open ~/.config/nexo.yaml");
    EXPECT("cwd=/home/alice/work", "cwd=~/work");
    EXPECT("/home/bob", "~");
    UNCHANGED("/srv/home/alice/x");
    UNCHANGED("/home/");
    UNCHANGED("/homework/alice");
}

static void test_redact_multi_secret_and_edges(void **state)
{
    (void)state;
    EXPECT("sk-abcdefghijklmnopqrstu AKIAIOSFODNN7EXAMPLE Bearer abcdefghijk "
           "0123456789abcdef0123456789abcdef /home/x/y",
           "[REDACTED] [REDACTED] Bearer [REDACTED] [REDACTED] ~/y");
    EXPECT("AKIAIOSFODNN7EXAMPLE", "[REDACTED]");
    EXPECT("end: sk-abcdefghijklmnopqrstu", "end: [REDACTED]");
    EXPECT("", "");
    UNCHANGED("plain words, nothing to hide.");
}

static void test_redact_keeps_nul_bytes_and_appends(void **state)
{
    (void)state;
    struct nx_buf b = NX_BUF_INIT;
    nx_buf_puts(&b, "pre:");
    const char in[] = "a\0b AKIAIOSFODNN7EXAMPLE";
    nx_redact_append(&b, in, sizeof in - 1);
    assert_int_equal(b.len, 4 + 4 + 10);
    assert_memory_equal(b.data, "pre:a\0b [REDACTED]", b.len);
    nx_buf_cleanup(&b);
}

static void test_redact_configured_patterns(void **state)
{
    (void)state;
    char err[256] = "";
    assert_int_equal(nx_redact_add_pattern("acct-[0-9]{4,}", err, sizeof err), 0);
    assert_int_equal(nx_redact_add_pattern("internal\\.example\\.com", err, sizeof err), 0);
    EXPECT("user acct-12345 at internal.example.com, acct-12 ok",
           "user [REDACTED] at [REDACTED], acct-12 ok");
    /* After the built-ins: the built-in marker may itself be matched. */
    EXPECT("acct-9999 AKIAIOSFODNN7EXAMPLE", "[REDACTED] [REDACTED]");

    assert_int_equal(nx_redact_add_pattern("(unclosed", err, sizeof err), NX_EINVAL);
    assert_non_null(strstr(err, "(unclosed"));
    assert_true(strlen(err) > strlen("redaction pattern \"(unclosed\": "));

    nx_redact_clear_patterns();
    UNCHANGED("user acct-12345");
}

/* The configuration's secret values, whatever their format, the longest first */
static void test_redact_configured_literals(void **state)
{
    static const char *const values[] = {"gsk_4Zr8X1qL0pW", "gsk_4Zr8X1qL0pWm9cVt", "lm-studio",
                                         "gsk_4Zr8X1qL0pW", NULL};
    (void)state;
    nx_redact_set_literals(values);
    EXPECT("echo gsk_4Zr8X1qL0pWm9cVt!", "echo [REDACTED]!");
    EXPECT("gsk_4Zr8X1qL0pW and gsk_4Zr8X1qL0pWm9cVt", "[REDACTED] and [REDACTED]");
    UNCHANGED("lm-studio gsk_4Zr8X1qL0p"); /* a placeholder under 12 bytes; a prefix */
    /* a whole token only: inside a longer word it is another word */
    EXPECT("key=gsk_4Zr8X1qL0pW, \"gsk_4Zr8X1qL0pW\"", "key=[REDACTED], \"[REDACTED]\"");
    UNCHANGED("gsk_4Zr8X1qL0pWs xgsk_4Zr8X1qL0pW gsk_4Zr8X1qL0pW_2");
    /* ...but one of 16 bytes or more is too long to be another word: anywhere, in any case (a
     * host name nexo lowered, a value run into others) */
    EXPECT("x-gsk_4zr8x1ql0pwm9cvt-y http://GSK_4ZR8X1QL0PWM9CVT.example/",
           "x-[REDACTED]-y http://[REDACTED].example/");
    nx_redact_set_literals(NULL);
    UNCHANGED("echo gsk_4Zr8X1qL0pW");
}

static void test_redact_empty_matching_pattern_terminates(void **state)
{
    (void)state;
    char err[256];
    assert_int_equal(nx_redact_add_pattern("x*", err, sizeof err), 0);
    assert_int_equal(nx_redact_add_pattern("^", err, sizeof err), 0);
    assert_int_equal(nx_redact_add_pattern("$|q?", err, sizeof err), 0);
    EXPECT("abxxc x", "ab[REDACTED]c [REDACTED]");
    EXPECT("", "");
    EXPECT("abc", "abc");
    nx_redact_clear_patterns();
}

static void test_redact_set_patterns_swaps_whole_list(void **state)
{
    (void)state;
    char err[256] = "";
    assert_int_equal(nx_redact_add_pattern("alpha", err, sizeof err), 0);
    const char *const list[] = {"beta", "gam+a", NULL};
    assert_int_equal(nx_redact_set_patterns(list, err, sizeof err), 0);
    EXPECT("alpha beta gammma", "alpha [REDACTED] [REDACTED]");
    /* A bad list keeps the old one. */
    assert_int_equal(nx_redact_set_patterns((const char *const[]){"delta", "[", NULL}, err, sizeof err),
                     NX_EINVAL);
    assert_non_null(strstr(err, "\"[\""));
    EXPECT("beta delta", "[REDACTED] delta");
    assert_int_equal(nx_redact_set_patterns(NULL, err, sizeof err), 0);
    UNCHANGED("beta delta");
}

#define THREADS 4
#define ROUNDS 2000

static void *redact_thread(void *arg)
{
    (void)arg;
    for (int i = 0; i < ROUNDS; i++) {
        char *s = redact("token sk-abcdefghijklmnopqrstu acct-1234 /home/u/x");
        if (strncmp(s, "token [REDACTED]", 16) != 0)
            abort();
        free(s);
    }
    return NULL;
}

static void test_redact_concurrent_with_pattern_reload(void **state)
{
    (void)state;
    pthread_t t[THREADS];
    char err[128];
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, redact_thread, NULL), 0);
    for (int i = 0; i < 200; i++) {
        assert_int_equal(nx_redact_add_pattern("acct-[0-9]+", err, sizeof err), 0);
        nx_redact_clear_patterns();
        assert_int_equal(nx_redact_set_patterns((const char *const[]){"acct-[0-9]+", NULL}, err, sizeof err),
                         0);
    }
    nx_redact_clear_patterns();
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
}

int main(void)
{
    setenv("HOME", "/home/tester", 1);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_redact_bearer_tokens_keep_the_word),
        cmocka_unit_test(test_redact_bearer_negatives),
        cmocka_unit_test(test_redact_sk_keys),
        cmocka_unit_test(test_redact_aws_keys),
        cmocka_unit_test(test_redact_long_hex),
        cmocka_unit_test(test_redact_key_values),
        cmocka_unit_test(test_redact_known_token_formats),
        cmocka_unit_test(test_redact_urls_keys_and_pem),
        cmocka_unit_test(test_redact_ordinary_text_stays),
        cmocka_unit_test(test_redact_long_runs_stay_linear),
        cmocka_unit_test(test_redact_home_paths),
        cmocka_unit_test(test_redact_multi_secret_and_edges),
        cmocka_unit_test(test_redact_keeps_nul_bytes_and_appends),
        cmocka_unit_test(test_redact_configured_patterns),
        cmocka_unit_test(test_redact_configured_literals),
        cmocka_unit_test(test_redact_empty_matching_pattern_terminates),
        cmocka_unit_test(test_redact_set_patterns_swaps_whole_list),
        cmocka_unit_test(test_redact_concurrent_with_pattern_reload),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
