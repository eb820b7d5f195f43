/* Configured redaction: the patterns of log.redact_patterns and the configuration's secret
 * values, both swapped whole under one lock, and the entry point that runs them around the
 * built-in rules (redact.c). */
#include <ctype.h>
#include <pthread.h>
#include <regex.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/alloc.h"
#include "core/error.h"
#include "core/redact.h"
#include "core/redact_internal.h"

/* ---- configured patterns ---- */

static pthread_rwlock_t patterns_lock = PTHREAD_RWLOCK_INITIALIZER;
static regex_t *patterns;
static size_t npatterns;

static int compile(const char *regex, regex_t *re, char *err, size_t errlen)
{
    int rc;

    if (!regex) {
        if (err && errlen)
            snprintf(err, errlen, "redaction pattern is missing");
        return NX_EINVAL;
    }
    rc = regcomp(re, regex, REG_EXTENDED);
    if (rc != 0) {
        char msg[256];
        regerror(rc, re, msg, sizeof msg);
        if (err && errlen)
            snprintf(err, errlen, "redaction pattern \"%s\": %s", regex, msg);
        return NX_EINVAL;
    }
    return 0;
}

int nx_redact_add_pattern(const char *regex, char *err, size_t errlen)
{
    regex_t re;
    int rc;

    if ((rc = compile(regex, &re, err, errlen)) < 0)
        return rc;
    pthread_rwlock_wrlock(&patterns_lock);
    patterns = nx_realloc(patterns, (npatterns + 1) * sizeof *patterns);
    patterns[npatterns++] = re;
    pthread_rwlock_unlock(&patterns_lock);
    return 0;
}

int nx_redact_set_patterns(const char *const *regexes, char *err, size_t errlen)
{
    regex_t *fresh = NULL, *old;
    size_t n = 0, nold;
    int rc = 0;

    while (regexes && regexes[n])
        n++;
    if (n)
        fresh = nx_calloc(n, sizeof *fresh);
    for (size_t i = 0; i < n; i++) {
        if ((rc = compile(regexes[i], &fresh[i], err, errlen)) < 0) {
            for (size_t k = 0; k < i; k++)
                regfree(&fresh[k]);
            free(fresh);
            return rc;
        }
    }
    pthread_rwlock_wrlock(&patterns_lock);
    old = patterns;
    nold = npatterns;
    patterns = fresh;
    npatterns = n;
    pthread_rwlock_unlock(&patterns_lock);
    for (size_t i = 0; i < nold; i++)
        regfree(&old[i]);
    free(old);
    return 0;
}

void nx_redact_clear_patterns(void)
{
    nx_redact_set_patterns(NULL, NULL, 0);
}

/* ---- configured secret values ---- */

static char **literals; /* under patterns_lock too */
static size_t *literal_len;
static size_t nliterals;
static bool literal_first[256]; /* the first bytes of the values: most bytes are passed at once */
static bool anywhere_first[256]; /* ...of the long ones, both cases: all that is looked for inside a word */

void nx_redact_set_literals(const char *const *values)
{
    char **fresh = NULL, **old;
    size_t *lens = NULL, *old_lens;
    size_t n = 0, k = 0, nold;

    while (values && values[n])
        n++;
    if (n) {
        fresh = nx_calloc(n, sizeof *fresh);
        lens = nx_calloc(n, sizeof *lens);
    }
    for (size_t i = 0; i < n; i++) {
        bool is_dup = false;
        if (strlen(values[i]) < NX_REDACT_MIN_LITERAL)
            continue;
        for (size_t j = 0; j < k && !is_dup; j++)
            is_dup = strcmp(fresh[j], values[i]) == 0;
        if (!is_dup) {
            fresh[k] = nx_strdup(values[i]);
            lens[k++] = strlen(values[i]);
        }
    }
    pthread_rwlock_wrlock(&patterns_lock);
    old = literals;
    old_lens = literal_len;
    nold = nliterals;
    literals = fresh;
    literal_len = lens;
    nliterals = k;
    memset(literal_first, 0, sizeof literal_first);
    memset(anywhere_first, 0, sizeof anywhere_first);
    for (size_t i = 0; i < k; i++) {
        unsigned char c = (unsigned char)fresh[i][0];
        literal_first[c] = true;
        if (lens[i] >= NX_REDACT_ANYWHERE_LITERAL) /* (matched in any case) */
            anywhere_first[tolower(c)] = anywhere_first[toupper(c)] = true;
    }
    pthread_rwlock_unlock(&patterns_lock);
    for (size_t i = 0; i < nold; i++)
        free(old[i]);
    free(old);
    free(old_lens);
}

static bool is_token_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-';
}

/* The longest value that starts at `pos`, or 0: a short one as a whole token (no letter,
 * digit, '_' or '-' right before or after it: "passwords" does not hold the value "password"),
 * a long one anywhere and in any case. */
static size_t literal_at(const char *in, size_t len, size_t pos)
{
    size_t best = 0;
    unsigned char c = (unsigned char)in[pos];
    bool is_start;

    if (!anywhere_first[c] && !literal_first[c])
        return 0;
    is_start = pos == 0 || !is_token_char(in[pos - 1]);
    if (!is_start && !anywhere_first[c])
        return 0;
    for (size_t i = 0; i < nliterals; i++) {
        size_t n = literal_len[i];
        if (n <= best || n > len - pos || (c | 0x20) != ((unsigned char)literals[i][0] | 0x20))
            continue; /* (a first-byte filter: c and the value's first byte differ beyond case) */
        if (n >= NX_REDACT_ANYWHERE_LITERAL ? (((unsigned char)in[pos + 1] | 0x20) ==
                                                   ((unsigned char)literals[i][1] | 0x20) &&
                                               strncasecmp(in + pos, literals[i], n) == 0)
                                            : is_start && memcmp(in + pos, literals[i], n) == 0 &&
                                                  (pos + n == len || !is_token_char(in[pos + n])))
            best = n;
    }
    return best;
}

/* Replaces every occurrence of a configured value (under patterns_lock, with nliterals > 0).
 * Returns false, writing nothing, when there is none. */
static bool apply_literals(const char *in, size_t len, struct nx_buf *out)
{
    size_t pos = 0, lit = 0, n;
    bool is_any = false;

    while (pos < len) {
        if (!(n = literal_at(in, len, pos))) {
            pos++;
            continue;
        }
        is_any = true;
        nx_buf_append(out, in + lit, pos - lit);
        nx_buf_append(out, REDACTED, REDACTED_LEN);
        pos += n;
        lit = pos;
    }
    if (is_any)
        nx_buf_append(out, in + lit, len - lit);
    return is_any;
}

/* Replaces every non-empty match of re in in[0..len) by [REDACTED]. Empty matches advance by one
 * byte, so a pattern like "x*" cannot loop. REG_STARTEND lets NUL bytes pass through. */
static void apply_pattern(const regex_t *re, const char *in, size_t len, struct nx_buf *out)
{
    size_t pos = 0;

    while (pos < len) {
        regmatch_t m[1];
        m[0].rm_so = (regoff_t)pos;
        m[0].rm_eo = (regoff_t)len;
        if (regexec(re, in, 1, m, REG_STARTEND | (pos > 0 ? REG_NOTBOL : 0)) != 0)
            break;
        size_t so = (size_t)m[0].rm_so, eo = (size_t)m[0].rm_eo;
        if (so < pos || eo < so || eo > len)
            break; /* defensive: never trust offsets blindly */
        if (eo == so) {
            size_t next = so + 1;
            nx_buf_append(out, in + pos, next - pos);
            pos = next;
            continue;
        }
        nx_buf_append(out, in + pos, so - pos);
        nx_buf_append(out, REDACTED, REDACTED_LEN);
        pos = eo;
    }
    if (pos < len)
        nx_buf_append(out, in + pos, len - pos);
}

bool nx_redact_fixed(struct nx_buf *out, const char *in, size_t len)
{
    size_t start = out->len;
    nx_redact_builtin(out, in ? in : "", in ? len : 0);
    /* (any change: also the home directory's rewrite, which leaves a name readable still) */
    size_t n = out->len - start;
    return n != (in ? len : 0) || (n && memcmp(out->data + start, in, n) != 0);
}

void nx_redact_append(struct nx_buf *out, const char *in, size_t len)
{
    struct nx_buf a = NX_BUF_INIT, b = NX_BUF_INIT, l = NX_BUF_INIT;

    if (!in) {
        in = "";
        len = 0;
    }

    pthread_rwlock_rdlock(&patterns_lock);
    if (nliterals && apply_literals(in, len, &l)) { /* first: a rule's partial match would hide
                                                      * the rest of one */
        in = nx_buf_cstr(&l);
        len = l.len;
    }
    if (npatterns == 0) {
        pthread_rwlock_unlock(&patterns_lock);
        nx_redact_builtin(out, in, len);
        nx_buf_cleanup(&l);
        return;
    }
    nx_redact_builtin(&a, in, len);
    for (size_t p = 0; p < npatterns; p++) {
        nx_buf_reset(&b);
        bool last = p + 1 == npatterns;
        struct nx_buf *dst = last ? out : &b;
        apply_pattern(&patterns[p], nx_buf_cstr(&a), a.len, dst);
        if (!last) {
            struct nx_buf t = a;
            a = b;
            b = t;
        }
    }
    pthread_rwlock_unlock(&patterns_lock);
    nx_buf_cleanup(&a);
    nx_buf_cleanup(&b);
    nx_buf_cleanup(&l);
}
