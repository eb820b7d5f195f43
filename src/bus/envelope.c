#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "bus/envelope.h"
#include "core/alloc.h"
#include "core/clock.h"
#include "core/error.h"

/* The envelope: parsed with jansson, then checked field by field. */

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (!err || !errlen)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

void nx_uuid_v4(char *out)
{
    static const char hex[] = "0123456789abcdef";
    unsigned char b[16];
    size_t got = 0;
    size_t o = 0;

    while (got < sizeof b) {
        ssize_t n = getrandom(b + got, sizeof b - got, 0);

        NX_ASSERT(n > 0);
        got += (size_t)n;
    }
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
    for (size_t i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[o++] = '-';
        out[o++] = hex[b[i] >> 4];
        out[o++] = hex[b[i] & 15];
    }
    out[o] = '\0';
}

bool nx_uuid_is_valid(const char *s)
{
    for (size_t i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-')
                return false;
        } else if (!isxdigit((unsigned char)s[i])) {
            return false;
        }
    }
    return s[36] == '\0';
}

/* n decimal digits at s into *v. */
static bool digits(const char *s, int n, int *v)
{
    *v = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        *v = *v * 10 + (s[i] - '0');
    }
    return true;
}

bool nx_rfc3339_is_valid(const char *s)
{
    static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int y, mo, d, h, mi, se, oh, om;
    size_t i = 19;

    if (strlen(s) < 20)
        return false;
    if (!digits(s, 4, &y) || s[4] != '-' || !digits(s + 5, 2, &mo) || s[7] != '-' ||
        !digits(s + 8, 2, &d) || (s[10] != 'T' && s[10] != 't' && s[10] != ' ') ||
        !digits(s + 11, 2, &h) || s[13] != ':' || !digits(s + 14, 2, &mi) || s[16] != ':' ||
        !digits(s + 17, 2, &se))
        return false;
    (void)y;
    if (mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1] || h > 23 || mi > 59 || se > 60)
        return false;
    if (s[i] == '.') {
        size_t start = ++i;

        while (s[i] >= '0' && s[i] <= '9')
            i++;
        if (i == start)
            return false;
    }
    if ((s[i] == 'Z' || s[i] == 'z') && s[i + 1] == '\0')
        return true;
    if (s[i] != '+' && s[i] != '-')
        return false;
    if (!digits(s + i + 1, 2, &oh) || s[i + 3] != ':' || !digits(s + i + 4, 2, &om) ||
        s[i + 6] != '\0')
        return false;
    return oh <= 23 && om <= 59;
}

bool nx_subject_is_valid(const char *s, bool allow_wildcards)
{
    size_t tok_len = 0;
    size_t n = 0;

    if (!s || !*s)
        return false;
    for (const char *p = s; *p; p++, n++) {
        unsigned char c = (unsigned char)*p;

        if (n >= NX_SUBJECT_MAX || c <= ' ' || c == 0x7f)
            return false;
        if (c == '.') {
            if (tok_len == 0)
                return false;
            tok_len = 0;
            continue;
        }
        if (c == '*' || c == '>') {
            /* a wildcard is a whole token; '>' only as the last one */
            if (!allow_wildcards || tok_len != 0 || (p[1] != '.' && p[1] != '\0'))
                return false;
            if (c == '>' && p[1] != '\0')
                return false;
        }
        tok_len++;
    }
    return tok_len != 0;
}

bool nx_subject_matches(const char *p, const char *s)
{
    for (;;) {
        if (p[0] == '>' && p[1] == '\0')
            return *s != '\0';
        if (p[0] == '*' && (p[1] == '.' || p[1] == '\0')) {
            if (*s == '\0' || *s == '.')
                return false;
            while (*s && *s != '.')
                s++;
            p++;
        } else {
            while (*p && *p != '.') {
                if (*p != *s)
                    return false;
                p++;
                s++;
            }
            if (*s && *s != '.')
                return false;
        }
        /* both at a token end */
        if (*p == '\0' || *s == '\0')
            return *p == '\0' && *s == '\0';
        p++;
        s++;
    }
}

static bool field_ok(const char *s)
{
    return strlen(s) <= NX_ENVELOPE_MAX_FIELD;
}

int nx_envelope_new(const char *topic, const char *source, const char *session_id,
                    json_t *payload, struct nx_envelope **out)
{
    struct nx_envelope *e;

    *out = NULL;
    if (!topic || !nx_subject_is_valid(topic, false) || !source || !field_ok(source) ||
        (session_id && !field_ok(session_id)))
        return NX_EINVAL;
    e = nx_calloc(1, sizeof *e);
    nx_uuid_v4(e->id);
    nx_rfc3339(nx_wall_ms(), e->timestamp, sizeof e->timestamp);
    e->topic = nx_strdup(topic);
    e->source = nx_strdup(source);
    e->session_id = session_id ? nx_strdup(session_id) : NULL;
    e->payload = payload ? json_incref(payload) : json_null();
    *out = e;
    return 0;
}

static const char *get_str(json_t *root, const char *key, const char **why)
{
    json_t *v = json_object_get(root, key);

    if (!v) {
        *why = "is missing";
        return NULL;
    }
    if (!json_is_string(v)) {
        *why = "must be a string";
        return NULL;
    }
    if (strlen(json_string_value(v)) != json_string_length(v)) {
        *why = "contains a NUL character";
        return NULL;
    }
    return json_string_value(v);
}

int nx_envelope_parse(const char *data, size_t len, size_t max_bytes, struct nx_envelope **out,
                      char *err, size_t errlen)
{
    static const char *const names[] = {"id", "timestamp", "topic", "source"};
    const char *vals[4];
    struct nx_envelope *e = NULL;
    json_error_t jerr;
    json_t *root = NULL;
    json_t *sid;
    json_t *payload;
    const char *why = NULL;
    int rc = NX_EINVAL;

    *out = NULL;
    if (max_bytes && len > max_bytes) {
        set_err(err, errlen, "envelope: %zu bytes is over the %zu-byte cap (broker.limits.max_payload)",
                len, max_bytes);
        rc = NX_ETOOBIG;
        goto out;
    }
    root = json_loadb(data, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        set_err(err, errlen, "envelope: invalid JSON at line %d column %d: %s", jerr.line,
                jerr.column, jerr.text);
        goto out;
    }
    if (!json_is_object(root)) {
        set_err(err, errlen, "envelope: must be a JSON object");
        goto out;
    }
    for (size_t i = 0; i < 4; i++) {
        if (!(vals[i] = get_str(root, names[i], &why))) {
            set_err(err, errlen, "envelope: \"%s\" %s", names[i], why);
            goto out;
        }
        if (!field_ok(vals[i])) {
            set_err(err, errlen, "envelope: \"%s\" is longer than %d bytes", names[i],
                    NX_ENVELOPE_MAX_FIELD);
            goto out;
        }
    }
    if (!nx_uuid_is_valid(vals[0])) {
        set_err(err, errlen, "envelope: \"id\" is not a UUID (8-4-4-4-12 hex digits)");
        goto out;
    }
    if (strlen(vals[1]) >= sizeof e->timestamp || !nx_rfc3339_is_valid(vals[1])) {
        set_err(err, errlen, "envelope: \"timestamp\" is not an RFC 3339 date-time");
        goto out;
    }
    if (!nx_subject_is_valid(vals[2], false)) {
        set_err(err, errlen, "envelope: \"topic\" is not a valid subject");
        goto out;
    }
    sid = json_object_get(root, "session_id");
    if (sid && !json_is_null(sid)) {
        if (!json_is_string(sid) || strlen(json_string_value(sid)) != json_string_length(sid)) {
            set_err(err, errlen, "envelope: \"session_id\" must be a string or null");
            goto out;
        }
        if (!field_ok(json_string_value(sid))) {
            set_err(err, errlen, "envelope: \"session_id\" is longer than %d bytes",
                    NX_ENVELOPE_MAX_FIELD);
            goto out;
        }
    }
    if (!(payload = json_object_get(root, "payload"))) {
        set_err(err, errlen, "envelope: \"payload\" is missing");
        goto out;
    }
    e = nx_calloc(1, sizeof *e);
    for (size_t i = 0; i < 36; i++)
        e->id[i] = (char)tolower((unsigned char)vals[0][i]);
    snprintf(e->timestamp, sizeof e->timestamp, "%s", vals[1]);
    e->topic = nx_strdup(vals[2]);
    e->source = nx_strdup(vals[3]);
    e->session_id = (sid && json_is_string(sid)) ? nx_strdup(json_string_value(sid)) : NULL;
    e->payload = json_incref(payload);
    *out = e;
    e = NULL;
    rc = 0;
out:
    json_decref(root);
    nx_envelope_free(e);
    return rc;
}

char *nx_envelope_dump(const struct nx_envelope *e, size_t *len)
{
    json_t *o = json_object();
    char *s;

    json_object_set_new(o, "id", json_string(e->id));
    json_object_set_new(o, "timestamp", json_string(e->timestamp));
    json_object_set_new(o, "topic", json_string(e->topic));
    json_object_set_new(o, "source", json_string(e->source));
    json_object_set_new(o, "session_id", e->session_id ? json_string(e->session_id) : json_null());
    json_object_set(o, "payload", e->payload ? e->payload : json_null());
    s = json_dumps(o, JSON_COMPACT | JSON_ENCODE_ANY);
    NX_ASSERT(s);
    json_decref(o);
    if (len)
        *len = strlen(s);
    return s;
}

struct nx_envelope *nx_envelope_copy(const struct nx_envelope *e)
{
    struct nx_envelope *c = nx_calloc(1, sizeof *c);

    memcpy(c->id, e->id, sizeof c->id);
    memcpy(c->timestamp, e->timestamp, sizeof c->timestamp);
    c->topic = nx_strdup(e->topic);
    c->source = nx_strdup(e->source);
    c->session_id = e->session_id ? nx_strdup(e->session_id) : NULL;
    c->payload = json_incref(e->payload);
    return c;
}

void nx_envelope_free(struct nx_envelope *e)
{
    if (!e)
        return;
    free(e->topic);
    free(e->source);
    free(e->session_id);
    json_decref(e->payload);
    free(e);
}
