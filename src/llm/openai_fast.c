/* The common OpenAI stream chunk, read without building a JSON tree:
 *
 *   {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":"m",
 *    "choices":[{"index":0,"delta":{"role":"assistant","content":"Hel"},"logprobs":null,
 *                "finish_reason":null}],"usage":null}
 *
 * A turn reads several of these, and building a jansson tree for each took about a seventh of
 * the loop thread's time per turn. This reader validates the whole chunk as JSON (what jansson
 * would refuse it refuses too) and takes only that shape: one choice of index 0 whose delta holds
 * at most a role, a content string and null refusal/reasoning; scalar fields besides; or the
 * last chunk's usage (integer counts, objects of them). Anything else (a tool call, an error, a
 * \u escape, a real number, a nested value it does not know) makes it answer false, and
 * jansson reads the chunk as before. fuzz_openai_response checks that both readers agree on
 * every input. */
#include <stdbool.h>
#include <string.h>

#include "core/buf.h"
#include "llm/internal.h"

bool nx_openai_fast_enabled = true;

struct scan {
    const char *p, *end;
};

static void ws(struct scan *c)
{
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
        c->p++;
}

static bool lit(struct scan *c, char ch)
{
    ws(c);
    if (c->p < c->end && *c->p == ch) {
        c->p++;
        return true;
    }
    return false;
}

static bool word(struct scan *c, const char *w, size_t n)
{
    ws(c);
    if ((size_t)(c->end - c->p) < n || memcmp(c->p, w, n) != 0)
        return false;
    c->p += n;
    return true;
}

static bool is_null(struct scan *c)
{
    return word(c, "null", 4);
}

/* A string: its bytes between the quotes in *s, *n; *esc when it holds an escape. False for a
 * \u escape, a control character or invalid UTF-8 (left to jansson). */
static bool str(struct scan *c, const char **s, size_t *n, bool *esc)
{
    ws(c);
    if (c->p >= c->end || *c->p != '"')
        return false;
    const char *b = ++c->p;
    bool e = false;
    while (c->p < c->end && *c->p != '"') {
        unsigned char ch = (unsigned char)*c->p;
        if (ch < 0x20)
            return false;
        if (ch == '\\') {
            if (c->end - c->p < 2 || !c->p[1] || !strchr("\"\\/bfnrt", c->p[1]))
                return false;
            e = true;
            c->p += 2;
            continue;
        }
        c->p++;
    }
    if (c->p >= c->end || !nx_utf8_is_valid(b, (size_t)(c->p - b)))
        return false;
    *s = b;
    *n = (size_t)(c->p - b);
    *esc = e;
    c->p++;
    return true;
}

/* An integer of at most 15 digits (reals and bigger numbers are left to jansson). */
static bool integer(struct scan *c, long long *out)
{
    ws(c);
    bool neg = c->p < c->end && *c->p == '-';
    const char *d = c->p + neg, *q = d;
    long long v = 0;
    while (q < c->end && *q >= '0' && *q <= '9')
        q++;
    size_t nd = (size_t)(q - d);
    if (nd == 0 || nd > 15 || (nd > 1 && *d == '0') ||
        (q < c->end && (*q == '.' || *q == 'e' || *q == 'E')))
        return false;
    for (; d < q; d++)
        v = v * 10 + (*d - '0');
    c->p = q;
    *out = neg ? -v : v;
    return true;
}

static bool scalar(struct scan *c)
{
    const char *s;
    size_t n;
    bool e;
    long long v;

    ws(c);
    if (c->p >= c->end)
        return false;
    switch (*c->p) {
    case '"':
        return str(c, &s, &n, &e);
    case 't':
        return word(c, "true", 4);
    case 'f':
        return word(c, "false", 5);
    case 'n':
        return is_null(c);
    default:
        return integer(c, &v);
    }
}

/* The next key of an object, as a plain string (one with an escape is left to jansson). */
static bool key(struct scan *c, const char **k, size_t *n)
{
    bool e;
    return str(c, k, n, &e) && !e && lit(c, ':');
}

#define IS(k, n, lit_) ((n) == sizeof(lit_) - 1 && memcmp((k), lit_, sizeof(lit_) - 1) == 0)

/* Once each, in a bit set: a repeated key (jansson keeps the last) is left to jansson. */
static bool once(unsigned *seen, unsigned bit)
{
    if (*seen & bit)
        return false;
    *seen |= bit;
    return true;
}

/* A member's value, read after its key k (n bytes); *seen holds the keys met so far (once()).
 * False leaves the chunk to jansson. */
typedef bool (*member_fn)(struct scan *c, const char *k, size_t n, unsigned *seen, void *arg);

/* An object (or null, when is_null_ok), each member read by fn. */
static bool object(struct scan *c, bool is_null_ok, member_fn fn, void *arg)
{
    unsigned seen = 0;
    const char *k;
    size_t n;

    if (is_null_ok && is_null(c))
        return true;
    if (!lit(c, '{'))
        return false;
    if (lit(c, '}'))
        return true;
    do {
        if (!key(c, &k, &n) || !fn(c, k, n, &seen, arg))
            return false;
    } while (lit(c, ','));
    return lit(c, '}');
}

static bool delta_member(struct scan *c, const char *k, size_t n, unsigned *seen, void *arg)
{
    struct nx_openai_fast *f = arg;

    if (IS(k, n, "content"))
        return once(seen, 1) && (is_null(c) || str(c, &f->content, &f->content_len, &f->content_esc));
    if (IS(k, n, "role"))
        return once(seen, 2) && scalar(c);
    if (IS(k, n, "refusal") || IS(k, n, "reasoning_content") || IS(k, n, "reasoning"))
        return is_null(c);
    return false; /* tool_calls, function_call, ... */
}

static bool choice_member(struct scan *c, const char *k, size_t n, unsigned *seen, void *arg)
{
    struct nx_openai_fast *f = arg;
    long long index;
    bool e;

    if (IS(k, n, "index"))
        return once(seen, 1) && integer(c, &index) && index == 0;
    if (IS(k, n, "delta"))
        return once(seen, 2) && object(c, true, delta_member, f);
    if (IS(k, n, "finish_reason"))
        return once(seen, 4) && (is_null(c) || (str(c, &f->finish, &f->finish_len, &e) && !e));
    if (IS(k, n, "logprobs"))
        return once(seen, 8) && is_null(c);
    return scalar(c);
}

struct count {
    const char *want; /* the key whose integer is taken, or NULL */
    size_t want_len;
    long long *val;
};

static bool count_member(struct scan *c, const char *k, size_t n, unsigned *seen, void *arg)
{
    const struct count *w = arg;

    if (w->want && n == w->want_len && memcmp(k, w->want, n) == 0)
        return once(seen, 1) && integer(c, w->val);
    return scalar(c);
}

/* An object of scalars (or null); the integer at `want` (0 when absent) in *val. */
static bool counts(struct scan *c, const char *want, size_t want_len, long long *val)
{
    struct count w = {want, want_len, val};

    *val = 0;
    return object(c, true, count_member, &w);
}

/* usage (the last chunk's, with include_usage): the counts read_usage in openai.c takes, as
 * integers, and other scalars or objects of scalars beside them. */
static bool usage_member(struct scan *c, const char *k, size_t n, unsigned *seen, void *arg)
{
    struct nx_openai_fast *f = arg;
    long long ignored;

    if (IS(k, n, "prompt_tokens"))
        return once(seen, 1) && integer(c, &f->prompt_tokens);
    if (IS(k, n, "completion_tokens"))
        return once(seen, 2) && integer(c, &f->completion_tokens);
    if (IS(k, n, "prompt_cache_hit_tokens"))
        return once(seen, 4) && integer(c, &f->cache_hit_tokens);
    if (IS(k, n, "prompt_tokens_details"))
        return once(seen, 8) && counts(c, "cached_tokens", 13, &f->cached_tokens);
    ws(c);
    return c->p < c->end && *c->p == '{' ? counts(c, NULL, 0, &ignored) : scalar(c);
}

static bool chunk_member(struct scan *c, const char *k, size_t n, unsigned *seen, void *arg)
{
    struct nx_openai_fast *f = arg;
    bool e;

    if (IS(k, n, "choices")) {
        if (!once(seen, 1) || !lit(c, '['))
            return false;
        if (lit(c, ']'))
            return true;
        f->has_choice = true; /* (a second choice: left to jansson) */
        return object(c, false, choice_member, f) && lit(c, ']');
    }
    if (IS(k, n, "model"))
        return once(seen, 2) && str(c, &f->model, &f->model_len, &e) && !e;
    if (IS(k, n, "usage")) {
        if (!once(seen, 4))
            return false;
        if (is_null(c))
            return true;
        f->has_usage = true;
        return object(c, false, usage_member, f);
    }
    if (IS(k, n, "error"))
        return false;
    return scalar(c);
}

bool nx_openai_fast_chunk(const char *data, size_t len, struct nx_openai_fast *f)
{
    struct scan c = {data, data + len};

    memset(f, 0, sizeof *f);
    if (!object(&c, false, chunk_member, f))
        return false;
    ws(&c);
    return c.p == c.end;
}

void nx_json_unescape_plain(const char *s, size_t n, struct nx_buf *out)
{
    static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '\\' || i + 1 >= n) {
            nx_buf_putc(out, s[i]);
            continue;
        }
        const char *at = strchr(from, s[++i]);
        nx_buf_putc(out, at ? to[at - from] : s[i]);
    }
}
