#include <pthread.h>
#include <regex.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/error.h"
#include "core/redact.h"
#include "core/redact_internal.h"

/* Built-in rules run as one left-to-right pass with no regular expressions: at each word start
 * the word is looked at once and either replaced or copied whole, so the cost is linear in the
 * input. Configured values and patterns: redact_conf.c. See docs/observability.md. */

#define MIN_BEARER_TOKEN 8 /* "the bearer of bad news" keeps its words */
#define MIN_SK_BODY 16
#define MIN_HEX_RUN 32
#define MAX_KEY_NAME 64 /* longer runs of key characters are not looked up */

/* ---- home directory ---- */

static pthread_once_t home_once = PTHREAD_ONCE_INIT;
static char home_dir[512];
static size_t home_len;

static void home_init(void)
{
    const char *h = getenv("HOME");
    size_t n = h ? strlen(h) : 0;
    while (n > 1 && h[n - 1] == '/')
        n--;
    /* "/" or a relative value would rewrite far too much. */
    if (n < 2 || n >= sizeof home_dir || h[0] != '/')
        return;
    memcpy(home_dir, h, n);
    home_dir[n] = '\0';
    home_len = n;
}

/* ---- character classes ---- */

static bool is_alpha(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool is_word(char c)
{
    return is_alpha(c) || is_digit(c) || c == '_';
}

static bool is_hex(char c)
{
    return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static bool is_path(char c)
{
    return is_word(c) || c == '.' || c == '-';
}

static bool is_sk_char(char c)
{
    return is_word(c) || c == '-';
}

/* RFC 6750 token68 plus base64. */
static bool is_token68(char c)
{
    return is_alpha(c) || is_digit(c) || c == '-' || c == '.' || c == '_' || c == '~' || c == '+' ||
           c == '/' || c == '=';
}

static bool is_space(char c)
{
    return c == ' ' || c == '\t';
}

static char lower(char c)
{
    return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

/* Case-insensitive: does in[i..len) start with the lowercase word w? */
static bool starts_ci(const char *in, size_t len, size_t i, const char *w)
{
    size_t n = strlen(w);
    if (len - i < n)
        return false;
    for (size_t k = 0; k < n; k++) {
        if (lower(in[i + k]) != w[k])
            return false;
    }
    return true;
}

/* ---- matchers: each returns the end of what it consumed (> i) after appending, or 0 ---- */

/* Tokens known by their prefix (case-sensitive): at least `min` characters in all, the rest of
 * [A-Za-z0-9] (ALNUM: identifiers such as hf_hub_download stop at their '_'), of [A-Za-z0-9_]
 * (WORD) or of [A-Za-z0-9_-] (DASH). */
enum { ALNUM, WORD, DASH };
#define TP(p, min, set) {p, sizeof p - 1, min, set}
static const struct {
    const char *prefix;
    unsigned char len;
    unsigned char min;
    unsigned char set;
} token_prefixes[] = {
    TP("ghp_", 36, ALNUM),     TP("gho_", 36, ALNUM),     TP("ghu_", 36, ALNUM),  /* GitHub */
    TP("ghs_", 36, ALNUM),     TP("ghr_", 36, ALNUM),     TP("github_pat_", 40, WORD),
    TP("glpat-", 26, DASH),                                                   /* GitLab */
    TP("xoxb-", 24, DASH),     TP("xoxp-", 24, DASH),     TP("xoxa-", 24, DASH),  /* Slack */
    TP("xoxr-", 24, DASH),     TP("xoxs-", 24, DASH),     TP("xapp-", 24, DASH),
    TP("sk_live_", 24, ALNUM), TP("sk_test_", 24, ALNUM), TP("rk_live_", 24, ALNUM), /* Stripe */
    TP("rk_test_", 24, ALNUM), TP("whsec_", 24, ALNUM),
    TP("AIza", 39, DASH),                                                     /* Google */
    TP("hf_", 30, ALNUM),                                                     /* Hugging Face */
    TP("gsk_", 40, ALNUM),                                                    /* Groq */
    TP("pplx-", 40, ALNUM),                                                   /* Perplexity */
    TP("r8_", 36, ALNUM),                                                     /* Replicate */
    TP("npm_", 36, ALNUM),     TP("pypi-", 40, DASH),     TP("shpat_", 36, ALNUM),
};

static bool in_set(char c, unsigned set)
{
    return is_alpha(c) || is_digit(c) || (set != ALNUM && c == '_') || (set == DASH && c == '-');
}

/* Inside a run such as a-b-c-…, a word start after a '-' is not where these tokens begin: each
 * would otherwise scan the rest of the run again (quadratic on long base64url). */
static bool after_dash(const char *in, size_t i)
{
    return i > 0 && in[i - 1] == '-';
}

static size_t match_prefixed_token(const char *in, size_t len, size_t i)
{
    switch (in[i]) { /* the prefixes' first letters: most words stop here */
    case 'A': case 'g': case 'h': case 'n': case 'p': case 'r': case 's': case 'w': case 'x':
        break;
    default:
        return 0;
    }
    if (after_dash(in, i))
        return 0;
    for (size_t k = 0; k < NX_ARRAY_LEN(token_prefixes); k++) {
        size_t n = token_prefixes[k].len, j = i + n;
        if (token_prefixes[k].prefix[0] != in[i] || len - i < token_prefixes[k].min ||
            memcmp(in + i, token_prefixes[k].prefix, n) != 0)
            continue;
        while (j < len && in_set(in[j], token_prefixes[k].set))
            j++;
        if (j - i >= token_prefixes[k].min)
            return j;
    }
    return 0;
}

/* A JSON Web Token: eyJ… '.' … '.' … (base64url segments), with or without "Bearer". */
static size_t match_jwt(const char *in, size_t len, size_t i)
{
    size_t j = i, seg[3];

    if (in[i] != 'e' || len - i < 20 || memcmp(in + i, "eyJ", 3) != 0 || after_dash(in, i))
        return 0;
    for (int k = 0; k < 3; k++) {
        size_t from = j;
        while (j < len && is_sk_char(in[j]))
            j++;
        seg[k] = j - from;
        if (k < 2 && (j >= len || in[j] != '.'))
            return 0;
        if (k < 2)
            j++;
    }
    return seg[0] >= 10 && seg[1] >= 10 ? j : 0;
}

/* A Telegram bot token, <bot id>:AA<33 of [A-Za-z0-9_-]>, alone or after "bot" as in the Bot
 * API's URLs (https://api.telegram.org/bot<token>/getMe, where any secret part counts): "bot"
 * stays. */
static size_t match_telegram_token(const char *in, size_t len, size_t i, struct nx_buf *out)
{
    if (!is_digit(in[i]) && in[i] != 'b')
        return 0;
    size_t d = i + (len - i > 3 && memcmp(in + i, "bot", 3) == 0 ? 3 : 0), j = d, t;

    while (j < len && is_digit(in[j]))
        j++;
    if (j - d < 6 || j - d > 12 || j >= len || in[j] != ':')
        return 0;
    t = ++j;
    if (d == i && !(len - t >= 2 && in[t] == 'A' && in[t + 1] == 'A')) /* 20240501:backup_of_… */
        return 0;
    while (j < len && is_sk_char(in[j]))
        j++;
    if (j - t < 30)
        return 0;
    nx_buf_append(out, in + i, d - i);
    nx_buf_append(out, REDACTED, REDACTED_LEN);
    return j;
}

/* An Anthropic or OpenAI project key run into the word before it ("s1sk-ant-api03-…", from a
 * name someone made of it): prefixes too particular to begin anything else. Its end, or 0. */
static size_t match_embedded_key(const char *in, size_t len, size_t i)
{
    static const char *const marks[] = {"sk-ant-", "sk-proj-"};

    for (size_t k = 0; k < NX_ARRAY_LEN(marks); k++) {
        size_t n = strlen(marks[k]), j = i + 3;
        if (len - i <= n || memcmp(in + i, marks[k], n) != 0)
            continue;
        while (j < len && is_sk_char(in[j]))
            j++;
        if (j - (i + 3) >= MIN_SK_BODY)
            return j;
    }
    return 0;
}

/* A word (run of is_word) that is wholly a secret: sk-…, AKIA…/ASIA…, a long hex run. */
static size_t match_word_secret(const char *in, size_t len, size_t i, struct nx_buf *out)
{
    size_t j = i;

    /* sk-<16+ of [A-Za-z0-9_-]>: OpenAI (sk-proj-…), Anthropic (sk-ant-api03-…) and friends. */
    if (len - i > 3 && in[i] == 's' && in[i + 1] == 'k' && in[i + 2] == '-') {
        j = i + 3;
        while (j < len && is_sk_char(in[j]))
            j++;
        if (j - (i + 3) >= MIN_SK_BODY) {
            nx_buf_append(out, REDACTED, REDACTED_LEN);
            return j;
        }
    }

    if ((j = match_prefixed_token(in, len, i)) > i || (j = match_jwt(in, len, i)) > i) {
        nx_buf_append(out, REDACTED, REDACTED_LEN);
        return j;
    }
    if ((j = match_telegram_token(in, len, i, out)) > i)
        return j;

    j = i;
    bool all_hex = true, all_upper_digit = true;
    while (j < len && is_word(in[j])) {
        all_hex = all_hex && is_hex(in[j]);
        all_upper_digit = all_upper_digit && ((in[j] >= 'A' && in[j] <= 'Z') || is_digit(in[j]));
        j++;
    }
    size_t n = j - i;

    /* AWS access key id: AKIA (long-term) or ASIA (temporary) + 16 of [A-Z0-9]. */
    if (n == 20 && all_upper_digit && (memcmp(in + i, "AKIA", 4) == 0 || memcmp(in + i, "ASIA", 4) == 0)) {
        nx_buf_append(out, REDACTED, REDACTED_LEN);
        return j;
    }
    /* Long hex: a word of >= 32 hex digits (optionally 0x-prefixed). Git short SHAs and UUID parts
     * are shorter; full SHA-1/SHA-256 digests are redacted too, by design. */
    bool hex0x = n >= 2 + MIN_HEX_RUN && in[i] == '0' && (in[i + 1] == 'x' || in[i + 1] == 'X');
    if ((all_hex && n >= MIN_HEX_RUN) || hex0x) {
        bool ok = true;
        for (size_t k = i + 2; hex0x && k < j; k++)
            ok = ok && is_hex(in[k]);
        if (ok) {
            nx_buf_append(out, REDACTED, REDACTED_LEN);
            return j;
        }
    }
    return 0;
}

/* "Bearer <token>" (any case): the word stays, the token goes. */
static size_t match_bearer(const char *in, size_t len, size_t i, struct nx_buf *out)
{
    if (!starts_ci(in, len, i, "bearer"))
        return 0;
    size_t j = i + 6;
    if (j >= len || !is_space(in[j]))
        return 0;
    while (j < len && is_space(in[j]))
        j++;
    size_t t = j;
    while (j < len && is_token68(in[j]))
        j++;
    if (j - t < MIN_BEARER_TOKEN)
        return 0;
    nx_buf_append(out, in + i, t - i);
    nx_buf_append(out, REDACTED, REDACTED_LEN);
    return j;
}

enum {
    KEY_SCHEME = 1,   /* value may start with an auth scheme that stays: "Basic", "Bearer" */
    KEY_URL_ONLY = 2, /* only as a query parameter after '?' or '&' */
    KEY_LINE = 4,     /* an unquoted value runs to the end of the line (cookies) */
};

struct secret_key {
    const char *name; /* lowercase */
    size_t len;
    int flags;
};
#define SK(name, flags) {name, sizeof name - 1, flags}

/* Whole key names. */
static const struct secret_key secret_keys[] = {
    SK("authorization", KEY_SCHEME),
    SK("proxy-authorization", KEY_SCHEME),
    SK("cookie", KEY_LINE),
    SK("set-cookie", KEY_LINE),
    SK("apikey", 0),
    SK("secret", 0),
    SK("password", 0),
    SK("passwd", 0),
    SK("passphrase", 0),
    SK("token", KEY_URL_ONLY),
    SK("key", KEY_URL_ONLY),
    SK("sig", KEY_URL_ONLY),
    SK("signature", KEY_URL_ONLY),
    SK("x-amz-signature", KEY_URL_ONLY),
    SK("x-amz-credential", KEY_URL_ONLY),
};

/* Endings of key names: auth_token, x-auth-token, bot_token, client_secret, app_secret,
 * db_password, OPENAI_API_KEY, x-api-key, aws_secret_access_key, private_key... ("max_tokens"
 * and "token_count" are not secrets and do not end so). */
static const struct secret_key secret_key_ends[] = {
    SK("_token", 0),      SK("-token", 0),      SK("_secret", 0),     SK("-secret", 0),
    SK("_password", 0),   SK("-password", 0),   SK("_passwd", 0),     SK("api_key", 0),
    SK("api-key", 0),     SK("apikey", 0),      SK("private_key", 0), SK("private-key", 0),
    SK("secret_key", 0),  SK("access_key", 0),  SK("signing_key", 0),
};

static bool is_key_char(char c)
{
    return is_word(c) || c == '-';
}

/* Case-insensitive: is in[0, n) exactly the lowercase word w (m bytes)? */
static bool equals_ci(const char *in, size_t n, const char *w, size_t m)
{
    if (n != m)
        return false;
    for (size_t k = 0; k < m; k++) {
        if (lower(in[k]) != w[k])
            return false;
    }
    return true;
}

/* Names that end like a secret's and are not: tokenizer settings (eos_token, pad_token...),
 * counts and limits (max_token), flags (is_secret), pagination (next_page_token). */
static const char *const not_secret_starts[] = {
    "eos_", "bos_", "pad_", "unk_", "sep_", "cls_", "mask_", "max_", "min_", "num_", "is_", "has_",
    "next_", "prev_", "page_", "use_",
};

/* The secret key name in[0, n), if it is one: its flags, or -1. */
static int secret_key_flags(const char *in, size_t n, bool after_query)
{
    for (size_t k = 0; k < NX_ARRAY_LEN(not_secret_starts); k++) {
        if (starts_ci(in, n, 0, not_secret_starts[k]))
            return -1;
    }
    for (size_t k = 0; k < NX_ARRAY_LEN(secret_keys); k++) {
        const struct secret_key *sk = &secret_keys[k];
        if (equals_ci(in, n, sk->name, sk->len))
            return (sk->flags & KEY_URL_ONLY) && !after_query ? -1 : sk->flags;
    }
    for (size_t k = 0; k < NX_ARRAY_LEN(secret_key_ends); k++) {
        const struct secret_key *e = &secret_key_ends[k];
        if (n >= e->len && equals_ci(in + n - e->len, e->len, e->name, e->len))
            return 0;
    }
    return -1;
}

bool nx_redact_is_secret_key(const char *name, size_t len)
{
    /* a JSON member named "token" is one (in text, "token: 5" is too common to redact) */
    return name && (secret_key_flags(name, len, false) >= 0 || equals_ci(name, len, "token", 5));
}

static const char *const auth_schemes[] = {"basic", "bearer", "digest", "token", "apikey", "negotiate"};

/* A quote at in[j]: '"', '\'', or an escaped \" (a JSON string inside a JSON string); its
 * length, or 0. */
static size_t quote_at(const char *in, size_t len, size_t j)
{
    if (j < len && (in[j] == '"' || in[j] == '\''))
        return 1;
    if (j + 1 < len && in[j] == '\\' && in[j + 1] == '"')
        return 2;
    return 0;
}

/* key=value, key: value, "key":"value" and ?key=value for the names above. The key, separator
 * and quotes stay; the value becomes [REDACTED]. A quoted value runs to its closing quote. */
static size_t match_key_value(const char *in, size_t len, size_t i, bool after_query,
                              struct nx_buf *out)
{
    size_t j = i;
    int flags;

    while (j < len && is_key_char(in[j]) && j - i <= MAX_KEY_NAME)
        j++;
    if (j - i > MAX_KEY_NAME) /* no key name is this long: a run of base64url, say */
        return 0;
    size_t name_end = j;
    /* the separator first: most words are not followed by one, and need no name lookup */
    if (after_query) {
        if (j >= len || in[j] != '=')
            return 0;
        j++;
    } else {
        j += quote_at(in, len, j);
        while (j < len && is_space(in[j]))
            j++;
        if (j >= len || (in[j] != ':' && in[j] != '='))
            return 0;
        j++;
        while (j < len && is_space(in[j]))
            j++;
    }
    if ((flags = secret_key_flags(in + i, name_end - i, after_query)) < 0)
        return 0;
    size_t qlen = after_query ? 0 : quote_at(in, len, j);
    char quote = qlen ? in[j + qlen - 1] : 0;
    j += qlen;

    if (flags & KEY_SCHEME) {
        for (size_t k = 0; k < NX_ARRAY_LEN(auth_schemes); k++) {
            size_t n = strlen(auth_schemes[k]);
            if (starts_ci(in, len, j, auth_schemes[k]) && j + n < len && is_space(in[j + n])) {
                j += n;
                while (j < len && is_space(in[j]))
                    j++;
                break;
            }
        }
    }

    size_t v = j;
    if (qlen == 2) { /* to the closing \" */
        while (j < len && !(in[j] == '\\' && j + 1 < len && in[j + 1] == '"'))
            j++;
    } else if (quote) {
        while (j < len && in[j] != quote) {
            if (in[j] == '\\' && j + 1 < len)
                j++;
            j++;
        }
    } else if (flags & KEY_LINE) {
        while (j < len && in[j] != '\n' && in[j] != '\r' && in[j] != '"')
            j++;
    } else {
        while (j < len && !is_space(in[j]) && in[j] != '"' && in[j] != '\'' && in[j] != ',' &&
               in[j] != ';' && in[j] != '&' && in[j] != '#' && in[j] != '\n' && in[j] != '\r' &&
               in[j] != '}' && in[j] != ')' && in[j] != '\\')
            j++;
    }
    if (j > len)
        j = len;
    if (j == v)
        return 0;
    nx_buf_append(out, in + i, v - i);
    nx_buf_append(out, REDACTED, REDACTED_LEN);
    return j;
}

/* The password of a URL's userinfo (scheme://user:password@host): user and host stay. i is at
 * the ':' of "://". */
static size_t match_userinfo(const char *in, size_t len, size_t i, struct nx_buf *out)
{
    size_t j = i + 3, p;

    while (j < len && !strchr(":@/?# \t\r\n\"'", in[j]))
        j++;
    if (j >= len || in[j] != ':')
        return 0;
    p = ++j;
    while (j < len && !strchr("@/?# \t\r\n\"'", in[j]))
        j++;
    if (j >= len || in[j] != '@' || j == p)
        return 0;
    nx_buf_append(out, in + i, p - i);
    nx_buf_append(out, REDACTED, REDACTED_LEN);
    return j;
}

static bool starts_at(const char *in, size_t len, size_t i, const char *w)
{
    size_t n = strlen(w);
    return len - i >= n && memcmp(in + i, w, n) == 0;
}

/* A PEM private key block, from "-----BEGIN … PRIVATE KEY-----" to the end of its END line (or
 * of the input when it has none). */
static size_t match_pem(const char *in, size_t len, size_t i, struct nx_buf *out)
{
    size_t j = i + 11;

    if (!starts_at(in, len, i, "-----BEGIN "))
        return 0;
    while (j < len && in[j] != '\n' && !starts_at(in, len, j, "-----"))
        j++;
    if (j >= len || in[j] == '\n' || j - (i + 11) < 11 || memcmp(in + j - 11, "PRIVATE KEY", 11) != 0)
        return 0;
    while (j < len && !starts_at(in, len, j, "-----END "))
        j++;
    if (j < len) {
        j += 9;
        while (j < len && in[j] != '\n' && !starts_at(in, len, j, "-----"))
            j++;
        if (starts_at(in, len, j, "-----"))
            j += 5;
    }
    nx_buf_append(out, REDACTED, REDACTED_LEN);
    return j;
}

/* $HOME and /home/<user> become "~" when they start a path and end at a path separator (or at
 * the end of the path). */
static size_t match_home(const char *in, size_t len, size_t i, struct nx_buf *out)
{
    size_t j;

    if (home_len && len - i >= home_len && memcmp(in + i, home_dir, home_len) == 0) {
        j = i + home_len;
        if (j == len || !is_path(in[j])) {
            nx_buf_putc(out, '~');
            return j;
        }
    }
    if (len - i > 6 && memcmp(in + i, "/home/", 6) == 0) {
        j = i + 6;
        while (j < len && is_path(in[j]))
            j++;
        if (j > i + 6 && (j == len || !is_path(in[j]))) {
            nx_buf_putc(out, '~');
            return j;
        }
    }
    return 0;
}

/* The built-in pass. `lit` marks the start of input not yet copied, so plain text is appended in
 * runs rather than byte by byte. */
void nx_redact_builtin(struct nx_buf *out, const char *in, size_t len)
{
    pthread_once(&home_once, home_init);
    size_t i = 0, lit = 0;

    nx_buf_reserve(out, len);
    while (i < len) {
        char c = in[i];
        char prev = i > 0 ? in[i - 1] : ' ';
        size_t end = 0;
        size_t start = i;

        if (c == '/' && !is_path(prev)) {
            nx_buf_append(out, in + lit, i - lit);
            end = match_home(in, len, i, out);
        } else if (c == ':' && i + 2 < len && in[i + 1] == '/' && in[i + 2] == '/') {
            nx_buf_append(out, in + lit, i - lit);
            end = match_userinfo(in, len, i, out);
        } else if (c == '-' && prev != '-' && in[i + 1 < len ? i + 1 : i] == '-') {
            nx_buf_append(out, in + lit, i - lit);
            end = match_pem(in, len, i, out);
        } else if ((c == '?' || c == '&') && i + 1 < len && is_alpha(in[i + 1])) {
            nx_buf_append(out, in + lit, i + 1 - lit);
            start = i + 1;
            end = match_key_value(in, len, start, true, out);
            if (!end) {
                lit = i + 1;
                i++;
                continue;
            }
        } else if (is_word(c) && !is_word(prev)) {
            nx_buf_append(out, in + lit, i - lit);
            end = match_word_secret(in, len, i, out);
            if (!end && (c == 'b' || c == 'B'))
                end = match_bearer(in, len, i, out);
            if (!end)
                end = match_key_value(in, len, i, false, out);
            if (!end) {
                /* Nothing else starts inside a word: copy it whole. */
                size_t key_end = 0;
                lit = i;
                while (i < len && is_word(in[i]) &&
                       !(in[i] == 's' && (key_end = match_embedded_key(in, len, i))))
                    i++;
                if (key_end) { /* (but a key run into it) */
                    nx_buf_append(out, in + lit, i - lit);
                    nx_buf_append(out, REDACTED, REDACTED_LEN);
                    i = lit = key_end;
                }
                continue;
            }
        } else {
            i++;
            continue;
        }

        if (end) {
            i = end;
            lit = end;
        } else {
            lit = start;
            i = start + 1;
        }
    }
    nx_buf_append(out, in + lit, len - lit);
}
