#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/error.h"
#include "tools/internal.h"
#include "tools/tool.h"

/* time_now {timezone?}: the current time as ISO 8601 UTC and Unix seconds; with an IANA
 * timezone ("Europe/Paris"), also the local time, offset and abbreviation. The zone is read
 * from the TZif file under /usr/share/zoneinfo (never through TZ/tzset, which is process-global
 * state): the offset is that of the last transition at or before now. Debian ships "fat" TZif
 * files listing transitions up to 2037; past a file's last transition its last offset is used
 * (the POSIX rule in the footer is not evaluated). */

#define ZONEINFO "/usr/share/zoneinfo"
#define TZIF_MAX (256 * 1024)

static const char schema[] =
    "{\"type\":\"object\",\"properties\":{"
    "\"timezone\":{\"type\":\"string\",\"minLength\":1,\"maxLength\":64,"
    "\"description\":\"IANA timezone name such as Europe/Paris (default UTC).\"}},"
    "\"additionalProperties\":false}";

struct zone {
    long offset;
    int is_dst;
    char abbr[16];
};

static bool valid_zone_name(const char *s)
{
    if (!s[0] || s[0] == '/' || s[0] == '.' || strstr(s, "..") || strlen(s) > 64)
        return false;
    for (const char *p = s; *p; p++) {
        char c = *p;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
              c == '-' || c == '+' || c == '/'))
            return false;
    }
    return true;
}

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static int64_t be64(const unsigned char *p)
{
    return (int64_t)((uint64_t)be32(p) << 32 | be32(p + 4));
}

/* Finds the zone in effect at now from a TZif (v2+ data block when present). */
static int tzif_lookup(const unsigned char *d, size_t len, int64_t now, struct zone *z)
{
    size_t off = 0, tsz = 4;
    uint32_t isut, isstd, leap, timecnt, typecnt, charcnt;
    const unsigned char *times, *idx, *types, *chars;
    size_t type = 0;

    for (int pass = 0; pass < 2; pass++) {
        if (len - off < 44 || memcmp(d + off, "TZif", 4) != 0)
            return NX_EINVAL;
        isut = be32(d + off + 20);
        isstd = be32(d + off + 24);
        leap = be32(d + off + 28);
        timecnt = be32(d + off + 32);
        typecnt = be32(d + off + 36);
        charcnt = be32(d + off + 40);
        if (timecnt > 100000 || typecnt == 0 || typecnt > 256 || charcnt > 4096 || leap > 10000 ||
            isut > 256 || isstd > 256)
            return NX_EINVAL;
        size_t body = timecnt * tsz + timecnt + typecnt * 6 + charcnt + leap * (tsz + 4) + isstd + isut;
        if (len - off - 44 < body)
            return NX_EINVAL;
        if (pass == 0 && d[off + 4] >= '2') {
            off += 44 + body; /* skip the 32-bit block; the 64-bit one follows */
            tsz = 8;
            continue;
        }
        break;
    }
    times = d + off + 44;
    idx = times + timecnt * tsz;
    types = idx + timecnt;
    chars = types + typecnt * 6;
    for (uint32_t i = 0; i < timecnt; i++) {
        int64_t t = tsz == 8 ? be64(times + i * 8) : (int64_t)(int32_t)be32(times + i * 4);
        if (t > now)
            break;
        type = idx[i];
    }
    if (type >= typecnt)
        return NX_EINVAL;
    z->offset = (long)(int32_t)be32(types + type * 6);
    z->is_dst = types[type * 6 + 4];
    size_t ai = types[type * 6 + 5];
    z->abbr[0] = '\0';
    if (ai < charcnt) {
        size_t n = strnlen((const char *)chars + ai, charcnt - ai);
        snprintf(z->abbr, sizeof z->abbr, "%.*s", (int)n, (const char *)chars + ai);
    }
    return 0;
}

static int load_zone(const char *name, int64_t now, struct zone *z)
{
    char path[256];
    unsigned char *buf = NULL;
    size_t len = 0;
    FILE *f;
    int rc;

    snprintf(path, sizeof path, ZONEINFO "/%s", name);
    if (!(f = fopen(path, "rbe")))
        return NX_ENOENT;
    buf = nx_malloc(TZIF_MAX);
    len = fread(buf, 1, TZIF_MAX, f);
    fclose(f);
    rc = tzif_lookup(buf, len, now, z);
    free(buf);
    return rc;
}

static void fmt_time(int64_t t, long offset, char *out, size_t outlen)
{
    time_t tt = (time_t)(t + offset);
    struct tm tm;
    char base[40];
    long a = offset < 0 ? -offset : offset;
    int hh = (int)(a / 3600 % 100), mm = (int)(a / 60 % 60);

    gmtime_r(&tt, &tm);
    strftime(base, sizeof base, "%Y-%m-%dT%H:%M:%S", &tm);
    if (offset == 0)
        snprintf(out, outlen, "%sZ", base);
    else
        snprintf(out, outlen, "%s%c%02d:%02d", base, offset < 0 ? '-' : '+', hh, mm);
}

static struct nx_tool_call *time_now_run(const struct nx_tool_ctx *ctx, const json_t *args,
                                         nx_tool_done_fn done, void *udata)
{
    const char *tz = json_string_value(json_object_get(args, "timezone"));
    uint64_t ms = nx_wall_ms();
    int64_t now = (int64_t)(ms / 1000);
    char utc[40], local[64], err[256];
    json_t *res;
    char *text;
    struct zone z;

    NX_UNUSED(ctx);
    nx_rfc3339(ms, utc, sizeof utc);
    res = json_pack("{s:s, s:I}", "utc", utc, "unix", (json_int_t)now);
    if (tz && strcmp(tz, "UTC") != 0 && strcmp(tz, "Etc/UTC") != 0 && strcmp(tz, "Z") != 0) {
        if (!valid_zone_name(tz) || load_zone(tz, now, &z) < 0) {
            snprintf(err, sizeof err, "unknown timezone \"%.64s\": use an IANA name such as "
                                      "Europe/Paris or America/New_York, or omit it for UTC", tz);
            done(err, strlen(err), true, udata);
            json_decref(res);
            return NULL;
        }
        fmt_time(now, z.offset, local, sizeof local);
        json_object_set_new(res, "timezone", json_string(tz));
        json_object_set_new(res, "local", json_string(local));
        json_object_set_new(res, "utc_offset_seconds", json_integer(z.offset));
        json_object_set_new(res, "is_dst", json_boolean(z.is_dst));
        if (z.abbr[0])
            json_object_set_new(res, "abbreviation", json_string(z.abbr));
    } else {
        json_object_set_new(res, "timezone", json_string("UTC"));
    }
    text = json_dumps(res, JSON_COMPACT);
    done(text ? text : "{}", text ? strlen(text) : 2, false, udata);
    free(text);
    json_decref(res);
    return NULL;
}

const struct nx_tool nx_tool_time_now = {
    .name = "time_now",
    .description = "The current date and time: ISO 8601 UTC and Unix seconds, and the local time in an "
                   "IANA timezone when one is given.",
    .input_schema = schema,
    .run = time_now_run,
    .cancel = NULL,
};
