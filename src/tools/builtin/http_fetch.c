#include <arpa/inet.h>
#include <ctype.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/clock.h"
#include "core/error.h"
#include "core/log.h"
#include "http/client.h"
#include "tools/internal.h"
#include "tools/tool.h"

/* http_fetch {url, method?, headers?, body?, max_bytes?}: one HTTP(S) request to a host the
 * agent's outbound_allowlist allows.
 *
 * Every hop (the first URL and each redirect) goes through the same checks: the URL is parsed
 * here, strictly (http/https only, no credentials, plain host names or IP literals) and rebuilt,
 * so libcurl sees exactly the host that was checked; the host must match the allowlist; the name
 * is resolved on the thread pool (uv_getaddrinfo) and refused when any address is loopback,
 * private, link-local, multicast or unspecified (unless the agent allows private addresses);
 * then the request is pinned to the checked addresses (CURLOPT_RESOLVE on a fresh connection),
 * so a second DNS answer cannot move it (rebinding). libcurl never follows redirects: 3xx with a
 * Location is resolved here against the current URL and re-checked, at most MAX_REDIRECTS times.
 * The request goes direct (no proxy: a proxy would resolve the name itself). The body is kept up
 * to max_bytes, then the transfer is stopped and the answer says it was truncated. */

#define MAX_REDIRECTS 5
#define FETCH_TIMEOUT_MS 30000u
#define DEFAULT_MAX_BYTES 32768
#define MAX_ADDRS 8
#define MAX_URL 8192

static const char schema[] =
    "{\"type\":\"object\",\"properties\":{"
    "\"url\":{\"type\":\"string\",\"minLength\":8,\"maxLength\":8192,"
    "\"description\":\"http:// or https:// URL; the host must be in the agent's outbound allowlist.\"},"
    "\"method\":{\"type\":\"string\",\"enum\":[\"GET\",\"HEAD\",\"POST\"],"
    "\"description\":\"Default GET (POST when a body is given).\"},"
    "\"headers\":{\"type\":\"object\",\"additionalProperties\":{\"type\":\"string\",\"maxLength\":4096},"
    "\"maxProperties\":32,\"description\":\"Request headers.\"},"
    "\"body\":{\"type\":\"string\",\"maxLength\":262144,\"description\":\"Request body (POST).\"},"
    "\"max_bytes\":{\"type\":\"integer\",\"minimum\":1,\"maximum\":65536,"
    "\"description\":\"Response body bytes to keep (default 32768).\"}},"
    "\"required\":[\"url\"],\"additionalProperties\":false}";

static nx_addr_check_fn addr_check;
static const char *lookup_as_name, *lookup_as_addr;

void nx_http_fetch_set_addr_check(nx_addr_check_fn fn)
{
    addr_check = fn;
}

void nx_http_fetch_set_lookup(const char *name, const char *addr)
{
    lookup_as_name = name;
    lookup_as_addr = addr;
}

/* ---- URLs ------------------------------------------------------------------------------- */

struct url {
    bool is_https;
    bool is_v6;
    char host[256]; /* lower case, no brackets, no trailing dot */
    int port;
    char *path;     /* "/..." with the query, without the fragment */
};

static int url_err(char *err, size_t errlen, const char *msg, const char *s)
{
    snprintf(err, errlen, "%s: \"%.300s\"", msg, s);
    return NX_EINVAL;
}

/* Parses an absolute http(s) URL strictly. Characters that are not plainly safe in a path are
 * percent-encoded. */
static int url_parse(const char *s, struct url *u, char *err, size_t errlen)
{
    const char *p = s, *auth, *auth_end, *h, *h_end, *colon = NULL;
    struct nx_buf path = NX_BUF_INIT;
    size_t hlen;

    memset(u, 0, sizeof *u);
    if (strlen(s) > MAX_URL)
        return url_err(err, errlen, "URL over 8192 bytes", s);
    if (strncasecmp(p, "http://", 7) == 0) {
        p += 7;
    } else if (strncasecmp(p, "https://", 8) == 0) {
        p += 8;
        u->is_https = true;
    } else {
        return url_err(err, errlen, "only http:// and https:// URLs can be fetched", s);
    }
    auth = p;
    auth_end = p + strcspn(p, "/?#");
    if (memchr(auth, '@', (size_t)(auth_end - auth)))
        return url_err(err, errlen, "URLs with credentials (user@host) are not allowed", s);
    if (*auth == '[') {
        h = auth + 1;
        if (!(h_end = memchr(h, ']', (size_t)(auth_end - h))))
            return url_err(err, errlen, "malformed IPv6 address in URL", s);
        if (h_end + 1 < auth_end) {
            if (h_end[1] != ':')
                return url_err(err, errlen, "malformed URL", s);
            colon = h_end + 1;
        }
        u->is_v6 = true;
    } else {
        h = auth;
        colon = memchr(auth, ':', (size_t)(auth_end - auth));
        h_end = colon ? colon : auth_end;
    }
    hlen = (size_t)(h_end - h);
    if (hlen > 0 && !u->is_v6 && h[hlen - 1] == '.')
        hlen--;
    if (hlen == 0 || hlen >= sizeof u->host)
        return url_err(err, errlen, "URL has no host or a host name that is too long", s);
    for (size_t i = 0; i < hlen; i++) {
        unsigned char c = (unsigned char)h[i];
        bool ok = u->is_v6 ? (isxdigit(c) || c == ':' || c == '.')
                           : (isalnum(c) || c == '-' || c == '.' || c == '_');
        if (!ok)
            return url_err(err, errlen,
                           "URL host may only hold letters, digits, '-', '.', '_' (use punycode for "
                           "international names)", s);
        u->host[i] = (char)tolower(c);
    }
    u->host[hlen] = '\0';
    if (u->is_v6) {
        struct in6_addr a6;
        if (inet_pton(AF_INET6, u->host, &a6) != 1)
            return url_err(err, errlen, "malformed IPv6 address in URL", s);
    }
    u->port = u->is_https ? 443 : 80;
    if (colon && colon + 1 < auth_end) {
        long port = 0;
        const char *q = colon + 1;

        if (auth_end - q > 5)
            return url_err(err, errlen, "bad port in URL", s);
        for (; q < auth_end; q++) {
            if (!isdigit((unsigned char)*q))
                return url_err(err, errlen, "bad port in URL", s);
            port = port * 10 + (*q - '0');
        }
        if (port < 1 || port > 65535)
            return url_err(err, errlen, "bad port in URL", s);
        u->port = (int)port;
    }
    p = auth_end;
    if (*p != '/')
        nx_buf_putc(&path, '/');
    for (; *p && *p != '#'; p++) {
        unsigned char c = (unsigned char)*p;
        if (c <= 0x20 || c >= 0x7f || strchr("\\\"<>^`{|}", c))
            nx_buf_printf(&path, "%%%02X", c);
        else
            nx_buf_putc(&path, (char)c);
    }
    u->path = nx_buf_steal(&path);
    return 0;
}

static void url_cleanup(struct url *u)
{
    free(u->path);
    u->path = NULL;
}

static void url_origin(const struct url *u, struct nx_buf *out)
{
    nx_buf_printf(out, "%s://%s%s%s", u->is_https ? "https" : "http", u->is_v6 ? "[" : "", u->host,
                  u->is_v6 ? "]" : "");
    if (u->port != (u->is_https ? 443 : 80))
        nx_buf_printf(out, ":%d", u->port);
}

static char *url_string(const struct url *u)
{
    struct nx_buf b = NX_BUF_INIT;

    url_origin(u, &b);
    nx_buf_puts(&b, u->path);
    return nx_buf_steal(&b);
}

/* Resolves a Location header against base (RFC 3986 forms, without dot-segment removal). */
static int url_resolve(const struct url *base, const char *loc, struct url *out, char *err,
                       size_t errlen)
{
    struct nx_buf b = NX_BUF_INIT;
    size_t i = 0;
    int rc;

    while (*loc == ' ' || *loc == '\t')
        loc++;
    if (isalpha((unsigned char)loc[0])) {
        i = 1;
        while (isalnum((unsigned char)loc[i]) || loc[i] == '+' || loc[i] == '-' || loc[i] == '.')
            i++;
    }
    if (i > 0 && loc[i] == ':') {
        nx_buf_puts(&b, loc); /* absolute: its scheme is checked by url_parse */
    } else if (loc[0] == '/' && loc[1] == '/') {
        nx_buf_printf(&b, "%s:%s", base->is_https ? "https" : "http", loc);
    } else if (loc[0] == '/') {
        url_origin(base, &b);
        nx_buf_puts(&b, loc);
    } else {
        size_t qpos = strcspn(base->path, "?");
        url_origin(base, &b);
        if (loc[0] == '?' || loc[0] == '#' || !loc[0]) {
            nx_buf_append(&b, base->path, qpos);
            if (loc[0] == '#' || !loc[0])
                nx_buf_puts(&b, base->path + qpos);
        } else {
            const char *slash = base->path;
            for (size_t k = 0; k < qpos; k++) {
                if (base->path[k] == '/')
                    slash = base->path + k;
            }
            nx_buf_append(&b, base->path, (size_t)(slash - base->path) + 1);
        }
        nx_buf_puts(&b, loc);
    }
    rc = url_parse(nx_buf_cstr(&b), out, err, errlen);
    nx_buf_cleanup(&b);
    return rc;
}

/* ---- one fetch ---------------------------------------------------------------------------- */

struct fetch {
    uv_loop_t *loop;
    uint64_t log_ctx;        /* the caller's log context: the timer and resolver run in it */
    struct nx_http_client *http;
    char **allow;            /* copy of the allowlist, NULL-terminated */
    bool allow_private;
    char *agent;
    nx_tool_done_fn done;
    void *udata;

    char *method;
    struct nx_http_header *hdrs;
    size_t nhdrs;
    char *body;
    size_t body_len;
    size_t max_bytes;

    struct url cur;
    char *cur_url;
    int redirects;
    uint64_t deadline;

    uv_getaddrinfo_t gai;
    uv_timer_t timer;
    struct nx_http_call *hc;
    struct nx_buf resp;
    bool is_truncated;
    bool is_body_skipped;    /* a 3xx: the transfer stopped at its first body byte */
    bool is_gai_pending;
    bool has_timer;
    bool is_timer_closed;
    bool is_finished;
    int busy; /* > 0 while one of our callbacks is on the stack: no freeing underneath it */
};

static void fetch_free(struct fetch *f)
{
    for (size_t i = 0; f->allow && f->allow[i]; i++)
        free(f->allow[i]);
    free(f->allow);
    for (size_t i = 0; i < f->nhdrs; i++) {
        free((char *)f->hdrs[i].name);
        free((char *)f->hdrs[i].value);
    }
    free(f->hdrs);
    free(f->agent);
    free(f->method);
    free(f->body);
    url_cleanup(&f->cur);
    free(f->cur_url);
    nx_buf_cleanup(&f->resp);
    free(f);
}

static void maybe_free(struct fetch *f)
{
    if (f->busy == 0 && f->is_finished && !f->is_gai_pending && !f->hc &&
        (!f->has_timer || f->is_timer_closed))
        fetch_free(f);
}

static void on_timer_closed(uv_handle_t *h)
{
    struct fetch *f = h->data;

    f->is_timer_closed = true;
    maybe_free(f);
}

/* Stops everything in flight; done is called by the caller when there is an answer. */
static void stop(struct fetch *f)
{
    f->is_finished = true;
    if (f->has_timer && !uv_is_closing((uv_handle_t *)&f->timer))
        uv_close((uv_handle_t *)&f->timer, on_timer_closed);
    if (f->is_gai_pending)
        uv_cancel((uv_req_t *)&f->gai);
    if (f->hc) {
        struct nx_http_call *hc = f->hc;
        f->hc = NULL;
        nx_http_call_cancel(hc); /* its on_done sees is_finished */
    }
}

static void finish(struct fetch *f, bool is_error, const char *text, size_t len)
{
    if (f->is_finished)
        return;
    f->busy++;
    stop(f);
    f->done(text, len, is_error, f->udata);
    f->busy--;
    maybe_free(f);
}

static void finish_msg(struct fetch *f, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void finish_msg(struct fetch *f, const char *fmt, ...)
{
    struct nx_buf b = NX_BUF_INIT;
    va_list ap;

    va_start(ap, fmt);
    nx_buf_vprintf(&b, fmt, ap);
    va_end(ap);
    finish(f, true, nx_buf_cstr(&b), b.len);
    nx_buf_cleanup(&b);
}

static void on_timer(uv_timer_t *t)
{
    struct fetch *f = t->data;
    uint64_t prev = nx_log_context_swap(f->log_ctx);

    f->busy++;
    finish_msg(f, "http_fetch: %s: timed out after %u ms", f->cur_url, FETCH_TIMEOUT_MS);
    f->busy--;
    maybe_free(f);
    nx_log_context_swap(prev);
}

static const char *hop_name(const struct fetch *f, char *buf, size_t len)
{
    if (f->redirects == 0)
        return "";
    snprintf(buf, len, " (at redirect %d)", f->redirects);
    return buf;
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res);

/* Checks the current URL's host against the allowlist and starts resolving it. */
static void start_hop(struct fetch *f)
{
    struct addrinfo hints;
    char port[8], hop[32];
    const char *lookup;
    int rc;

    free(f->cur_url);
    f->cur_url = url_string(&f->cur);
    f->is_body_skipped = false;
    if (!f->allow || !f->allow[0]) {
        finish_msg(f, "http_fetch refused%s: this agent has no outbound_allowlist, so it may not "
                      "fetch anything (ask the operator to allow the host)", hop_name(f, hop, sizeof hop));
        return;
    }
    if (!nx_sandbox_host_allowed(f->cur.host, f->cur.port, (const char *const *)f->allow)) {
        bool is_port = nx_sandbox_host_allowed(f->cur.host, 0, (const char *const *)f->allow);
        nx_warn("tools", "agent %s: http_fetch to %s port %d refused: not in outbound_allowlist",
                f->agent, f->cur.host, f->cur.port);
        if (is_port) /* the host is there, for other ports */
            finish_msg(f, "http_fetch refused%s: port %d of host \"%s\" is not in this agent's "
                          "outbound_allowlist", hop_name(f, hop, sizeof hop), f->cur.port, f->cur.host);
        else
            finish_msg(f, "http_fetch refused%s: host \"%s\" is not in this agent's outbound_allowlist",
                       hop_name(f, hop, sizeof hop), f->cur.host);
        return;
    }
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    snprintf(port, sizeof port, "%d", f->cur.port);
    f->gai.data = f;
    lookup = lookup_as_name && strcasecmp(f->cur.host, lookup_as_name) == 0 ? lookup_as_addr
                                                                          : f->cur.host;
    if ((rc = uv_getaddrinfo(f->loop, &f->gai, on_resolved, lookup, port, &hints)) < 0) {
        finish_msg(f, "http_fetch: cannot resolve \"%s\": %s", f->cur.host, uv_strerror(rc));
        return;
    }
    f->is_gai_pending = true;
}

static int on_data(const char *data, size_t len, long status, void *udata)
{
    struct fetch *f = udata;
    size_t room;

    if (f->is_finished)
        return 1;
    if (status >= 300 && status < 400) {
        /* a redirect's body is not kept, nor read: it could be endless */
        f->is_body_skipped = true;
        return 1;
    }
    room = f->max_bytes - f->resp.len;
    if (len > room) {
        nx_buf_append(&f->resp, data, room);
        f->is_truncated = true;
        return 1; /* enough: stop the transfer */
    }
    nx_buf_append(&f->resp, data, len);
    return 0;
}

static bool is_redirect(long status)
{
    return status == 301 || status == 302 || status == 303 || status == 307 || status == 308;
}

static bool is_harmless_header(const char *n)
{
    static const char *const names[] = {"accept", "accept-language", "user-agent", "content-type",
                                        "cache-control", "if-none-match", "if-modified-since"};

    for (size_t i = 0; i < NX_ARRAY_LEN(names); i++) {
        if (strcasecmp(n, names[i]) == 0)
            return true;
    }
    return false;
}

/* Follows a 3xx: the new URL, method and headers; then the next hop's checks. */
static void follow(struct fetch *f, long status, const char *location)
{
    struct url next;
    char err[512];
    bool same_origin;

    if (++f->redirects > MAX_REDIRECTS) {
        finish_msg(f, "http_fetch: too many redirects (more than %d), last to %.300s", MAX_REDIRECTS,
                   location);
        return;
    }
    if (url_resolve(&f->cur, location, &next, err, sizeof err) < 0) {
        finish_msg(f, "http_fetch refused (at redirect %d): %s", f->redirects, err);
        return;
    }
    if (f->cur.is_https && !next.is_https) {
        finish_msg(f, "http_fetch refused (at redirect %d): from https to plain http (%.300s)",
                   f->redirects, location);
        url_cleanup(&next);
        return;
    }
    same_origin = next.is_https == f->cur.is_https && next.port == f->cur.port &&
                  strcmp(next.host, f->cur.host) == 0;
    if (status == 303 || ((status == 301 || status == 302) && strcmp(f->method, "POST") == 0)) {
        if (strcmp(f->method, "HEAD") != 0) {
            free(f->method);
            f->method = nx_strdup("GET");
        }
        free(f->body);
        f->body = NULL;
        f->body_len = 0;
    }
    /* headers (credentials among them, whatever their name) stay with the origin they were
     * given for: another origin gets only the harmless ones */
    for (size_t i = 0; i < f->nhdrs;) {
        const char *n = f->hdrs[i].name;
        bool drop = (!same_origin && !is_harmless_header(n)) ||
                    (!f->body && strcasecmp(n, "content-type") == 0);
        if (!drop) {
            i++;
            continue;
        }
        free((char *)f->hdrs[i].name);
        free((char *)f->hdrs[i].value);
        f->hdrs[i] = f->hdrs[--f->nhdrs];
    }
    url_cleanup(&f->cur);
    f->cur = next;
    nx_buf_reset(&f->resp);
    start_hop(f);
}

static void answer(struct fetch *f, const struct nx_http_response *res)
{
    struct nx_buf b = NX_BUF_INIT;
    char ctype[256];
    size_t ok;

    if (nx_http_response_header(res, "Content-Type", ctype, sizeof ctype) < 0)
        ctype[0] = '\0';
    nx_buf_printf(&b, "status: %ld\n", res->status);
    if (ctype[0])
        nx_buf_printf(&b, "content-type: %s\n", ctype);
    nx_buf_printf(&b, "url: %s\n", f->cur_url);
    if (f->redirects)
        nx_buf_printf(&b, "redirects: %d\n", f->redirects);
    /* the body as far as the answer's cap leaves room for it after these lines (and the note) */
    size_t len = f->resp.len, room = NX_TOOL_OUTPUT_MAX - 64 - b.len;
    bool is_cut = f->is_truncated || len > room;
    len = len > room ? room : len;
    const char *body = f->resp.data ? f->resp.data : "";
    ok = nx_utf8_valid_prefix(body, len);
    if ((len && memchr(body, '\0', len)) || (ok < len && !(is_cut && len - ok < 4))) {
        nx_buf_printf(&b, "\n[binary body: %zu bytes not shown]", f->resp.len);
    } else {
        if (is_cut)
            nx_buf_printf(&b, "[body truncated to the first %zu bytes]\n", ok);
        nx_buf_putc(&b, '\n');
        nx_buf_append(&b, body, ok);
    }
    finish(f, res->status >= 400, nx_buf_cstr(&b), b.len);
    nx_buf_cleanup(&b);
}

static void on_http_done(int rc, const struct nx_http_response *res, const char *err, void *udata)
{
    struct fetch *f = udata;
    char loc[MAX_URL + 1];
    int loclen = 0;

    f->hc = NULL;
    if (f->is_finished)
        goto out;
    f->busy++;
    if (rc == NX_ECANCELED && (f->is_truncated || f->is_body_skipped))
        rc = 0;
    if (rc != 0)
        finish_msg(f, "http_fetch: %s: %s", f->cur_url,
                   rc == NX_ETIMEDOUT ? "timed out" : err ? err : nx_strerror(rc));
    else if (is_redirect(res->status) &&
             (loclen = nx_http_response_header(res, "Location", loc, sizeof loc)) >= (int)sizeof loc)
        finish_msg(f, "http_fetch: %s: redirect to a URL over %d bytes, not followed", f->cur_url, MAX_URL);
    else if (is_redirect(res->status) && loclen > 0)
        follow(f, res->status, loc);
    else
        answer(f, res);
    f->busy--;
out:
    maybe_free(f);
}

static void resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res);

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    uint64_t prev = nx_log_context_swap(((struct fetch *)req->data)->log_ctx);

    resolved(req, status, res); /* (may free the fetch) */
    nx_log_context_swap(prev);
}

static void resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct fetch *f = req->data;
    nx_addr_check_fn is_private = addr_check ? addr_check : nx_sandbox_addr_is_private;
    struct nx_buf pin = NX_BUF_INIT, addrs = NX_BUF_INIT, one = NX_BUF_INIT;
    struct nx_http_call_opts o;
    char addr[INET6_ADDRSTRLEN], hop[32];
    size_t naddrs = 0;
    uint64_t now = nx_mono_ms();
    struct in6_addr lit;

    f->is_gai_pending = false;
    f->busy++;
    if (f->is_finished)
        goto out;
    if (status < 0) {
        finish_msg(f, "http_fetch: cannot resolve \"%s\": %s", f->cur.host, uv_strerror(status));
        goto out;
    }
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        const void *a;

        if (ai->ai_family == AF_INET)
            a = &((struct sockaddr_in *)(void *)ai->ai_addr)->sin_addr;
        else if (ai->ai_family == AF_INET6)
            a = &((struct sockaddr_in6 *)(void *)ai->ai_addr)->sin6_addr;
        else
            continue;
        inet_ntop(ai->ai_family, a, addr, sizeof addr);
        if (!f->allow_private && is_private(ai->ai_addr)) {
            nx_warn("tools", "agent %s: http_fetch to %s refused: resolves to private address %s",
                    f->agent, f->cur.host, addr);
            finish_msg(f, "http_fetch refused%s: \"%s\" resolves to %s, a loopback, private or "
                          "link-local address, and this agent may not reach those",
                       hop_name(f, hop, sizeof hop), f->cur.host, addr);
            goto out;
        }
        /* addrs is ",a,b,": look for ",x," to skip duplicates */
        nx_buf_printf(&one, ",%s%s%s,", ai->ai_family == AF_INET6 ? "[" : "", addr,
                      ai->ai_family == AF_INET6 ? "]" : "");
        if (naddrs < MAX_ADDRS && !strstr(nx_buf_cstr(&addrs), one.data)) {
            if (!addrs.len)
                nx_buf_putc(&addrs, ',');
            nx_buf_append(&addrs, one.data + 1, one.len - 1);
            naddrs++;
        }
        nx_buf_reset(&one);
    }
    if (naddrs == 0) {
        finish_msg(f, "http_fetch: \"%s\" has no IPv4 or IPv6 address", f->cur.host);
        goto out;
    }
    nx_buf_printf(&pin, "%s:%d:%.*s", f->cur.host, f->cur.port, (int)(addrs.len - 2), addrs.data + 1);
    if (now >= f->deadline) {
        finish_msg(f, "http_fetch: %s: timed out after %u ms", f->cur_url, FETCH_TIMEOUT_MS);
        goto out;
    }
    memset(&o, 0, sizeof o);
    o.method = f->method;
    o.url = f->cur_url;
    o.headers = f->hdrs;
    o.nheaders = f->nhdrs;
    o.body = f->body;
    o.body_len = f->body_len;
    o.timeout_ms = (uint32_t)(f->deadline - now);
    /* no cap below ours: on_data stops at max_bytes (a Content-Length above a client cap would
     * fail the call instead of truncating it) */
    o.max_response_bytes = (uint64_t)1 << 50;
    o.proxy = "";
    o.follow_redirects = 0;
    o.on_data = on_data;
    o.on_done = on_http_done;
    o.udata = f;
    /* an IP literal is connected to as such; a name is pinned to what was just checked */
    if (!f->cur.is_v6 && inet_pton(AF_INET, f->cur.host, &lit) != 1)
        o.resolve = pin.data;
    if (!(f->hc = nx_http_client_request(f->http, &o)))
        finish_msg(f, "http_fetch: the HTTP client is shutting down");
out:
    nx_buf_cleanup(&pin);
    nx_buf_cleanup(&addrs);
    nx_buf_cleanup(&one);
    uv_freeaddrinfo(res);
    f->busy--;
    maybe_free(f);
}

/* ---- the tool ------------------------------------------------------------------------------ */

static bool forbidden_header(const char *n)
{
    static const char *const names[] = {"host", "content-length", "transfer-encoding", "connection",
                                        "upgrade", "te", "trailer", "keep-alive", "expect"};

    if (strncasecmp(n, "proxy-", 6) == 0)
        return true;
    for (size_t i = 0; i < NX_ARRAY_LEN(names); i++) {
        if (strcasecmp(n, names[i]) == 0)
            return true;
    }
    return false;
}

static void fetch_cancel(struct nx_tool_call *call)
{
    struct fetch *f = (struct fetch *)(void *)call;

    if (f->is_finished)
        return;
    f->busy++;
    stop(f);
    f->busy--;
    maybe_free(f);
}

static struct nx_tool_call *fetch_run(const struct nx_tool_ctx *ctx, const json_t *args,
                                      nx_tool_done_fn done, void *udata)
{
    const char *url = json_string_value(json_object_get(args, "url"));
    const char *method = json_string_value(json_object_get(args, "method"));
    const json_t *hdrs = json_object_get(args, "headers"), *body = json_object_get(args, "body");
    const json_t *mb = json_object_get(args, "max_bytes");
    struct fetch *f;
    char err[600];
    const char *key;
    const json_t *v;
    size_t n = 0;

    if (!ctx->http || !ctx->loop) {
        snprintf(err, sizeof err, "http_fetch is unavailable: no HTTP client");
        done(err, strlen(err), true, udata);
        return NULL;
    }
    if (body && method && strcmp(method, "POST") != 0) {
        snprintf(err, sizeof err, "argument \"body\": only allowed with method POST");
        done(err, strlen(err), true, udata);
        return NULL;
    }
    f = nx_calloc(1, sizeof *f);
    f->log_ctx = nx_log_context_current();
    f->loop = ctx->loop;
    f->http = ctx->http;
    f->allow_private = ctx->allow_private_addresses;
    f->agent = nx_strdup(ctx->agent_id ? ctx->agent_id : "");
    f->done = done;
    f->udata = udata;
    f->method = nx_strdup(method ? method : body ? "POST" : "GET");
    f->max_bytes = mb && json_number_value(mb) >= 1 && json_number_value(mb) <= 65536
                       ? (size_t)json_number_value(mb) : DEFAULT_MAX_BYTES;
    f->deadline = nx_mono_ms() + FETCH_TIMEOUT_MS;
    nx_buf_init(&f->resp);
    if (body) {
        f->body = nx_memdup(json_string_value(body), json_string_length(body) + 1);
        f->body_len = json_string_length(body);
    }
    for (size_t i = 0; ctx->outbound_allowlist && ctx->outbound_allowlist[i]; i++)
        n++;
    f->allow = nx_calloc(n + 1, sizeof *f->allow);
    for (size_t i = 0; i < n; i++)
        f->allow[i] = nx_strdup(ctx->outbound_allowlist[i]);
    f->hdrs = nx_calloc(json_object_size(hdrs) + 1, sizeof *f->hdrs);
    json_object_foreach((json_t *)hdrs, key, v) {
        const char *val = json_string_value(v);
        if (forbidden_header(key) || !key[0] || strpbrk(key, "\r\n: \t") || !val ||
            strpbrk(val, "\r\n") || strlen(val) != json_string_length(v)) {
            snprintf(err, sizeof err, "argument \"headers.%.100s\": this header may not be set "
                                      "(or its name or value is malformed)", key);
            f->is_finished = true;
            done(err, strlen(err), true, udata);
            fetch_free(f);
            return NULL;
        }
        f->hdrs[f->nhdrs].name = nx_strdup(key);
        f->hdrs[f->nhdrs].value = nx_strdup(val);
        f->nhdrs++;
    }
    if (url_parse(url ? url : "", &f->cur, err, sizeof err) < 0) {
        f->is_finished = true;
        done(err, strlen(err), true, udata);
        fetch_free(f);
        return NULL;
    }
    uv_timer_init(f->loop, &f->timer);
    f->timer.data = f;
    f->has_timer = true;
    uv_timer_start(&f->timer, on_timer, FETCH_TIMEOUT_MS, 0);
    start_hop(f);
    if (f->is_finished)
        return NULL; /* answered already (refused); freed once the timer has closed */
    return (struct nx_tool_call *)(void *)f;
}

const struct nx_tool nx_tool_http_fetch = {
    .name = "http_fetch",
    .description = "Fetch a URL over HTTP(S) (GET, HEAD or POST) from a host this agent is allowed to "
                   "reach. Returns the status, content type and the body text (truncated).",
    .input_schema = schema,
    .run = fetch_run,
    .cancel = fetch_cancel,
};
