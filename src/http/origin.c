/* Requests from web pages. A browser lets any page send a "simple" POST to 127.0.0.1 (a
 * text/plain body is not preflighted), and a page whose DNS name is rebound to 127.0.0.1 reads
 * what it asks for as if it were the gateway's own. A gateway with no auth_token would run an
 * agent's turn, tools and all, for any site its user visits. So:
 *   - a request that names a Host other than loopback is refused by a listener with no token
 *     (DNS rebinding: the page's own name in Host), unless its route authenticates each request
 *     itself (a webhook's signature: a proxy in front may keep the public name);
 *   - a request with an Origin header is refused unless that origin is listed in
 *     cors.allowed_origins ("*": any, only with an auth_token) or allowed by its route (MCP's
 *     own list), is loopback (http://localhost:3000, a local UI), or is the listener's own (same
 *     Host: its own pages);
 *   - an allowed origin gets CORS headers, and its preflight (OPTIONS) is answered here, before
 *     any handler or bearer check (a browser sends no credentials in a preflight).
 * Clients that are not browsers (SDKs, curl, webhooks) send no Origin and are not concerned. */
#include <arpa/inet.h>
#include <string.h>
#include <strings.h>

#include "core/log.h"
#include "http/server_internal.h"

#define EXPOSED "request-id, x-request-id, retry-after, x-should-retry, mcp-session-id, www-authenticate"

static bool ieq(h2o_iovec_t a, const char *b)
{
    return a.len == strlen(b) && strncasecmp(a.base, b, a.len) == 0;
}

/* localhost, *.localhost (RFC 6761), 127.0.0.0/8 and ::1: names that only ever reach this machine. */
static bool host_is_loopback(h2o_iovec_t host)
{
    char ip[64];
    unsigned char addr[16];
    static const char sub[] = ".localhost";

    if (ieq(host, "localhost"))
        return true;
    size_t n = sizeof sub - 1;
    if (host.len > n && strncasecmp(host.base + host.len - n, sub, n) == 0)
        return true;
    if (host.len == 0 || host.len >= sizeof ip)
        return false;
    memcpy(ip, host.base, host.len);
    ip[host.len] = '\0';
    if (inet_pton(AF_INET, ip, addr) == 1)
        return addr[0] == 127;
    return inet_pton(AF_INET6, ip, addr) == 1 && memcmp(addr, "\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\1", 16) == 0;
}

/* An authority (host[:port], [v6][:port]) that names this machine. */
static bool authority_is_loopback(h2o_iovec_t a)
{
    h2o_iovec_t host;
    uint16_t port;
    const char *end = h2o_url_parse_hostport(a.base, a.len, &host, &port);
    return end == a.base + a.len && host_is_loopback(host);
}

bool nx_http_authority_is_loopback(const char *authority, size_t len)
{
    return authority_is_loopback(h2o_iovec_init(authority, len));
}

/* "scheme://authority" -> the authority, or len 0 when it is not of that shape. */
static h2o_iovec_t origin_authority(h2o_iovec_t origin)
{
    const char *sep = origin.len > 3 ? memchr(origin.base, ':', origin.len) : NULL;
    size_t at = sep ? (size_t)(sep - origin.base) : 0;
    if (!sep || at + 3 > origin.len || memcmp(sep, "://", 3) != 0)
        return h2o_iovec_init(NULL, 0);
    return h2o_iovec_init(sep + 3, origin.len - at - 3);
}

static bool is_listed(const struct nx_http_origin_policy *p, h2o_iovec_t origin)
{
    for (size_t i = 0; p->allowed_origins && p->allowed_origins[i]; i++) {
        const char *o = p->allowed_origins[i];
        if ((strcmp(o, "*") == 0 && !ieq(origin, "null")) || ieq(origin, o)) /* (opaque: never) */
            return true;
    }
    return false;
}

static h2o_iovec_t req_header(h2o_req_t *req, const char *name)
{
    ssize_t i = h2o_find_header_by_str(&req->headers, name, strlen(name), -1);
    return i < 0 ? h2o_iovec_init(NULL, 0) : req->headers.entries[i].value;
}

static void add(h2o_req_t *req, const char *name, h2o_iovec_t value)
{
    h2o_add_header_by_str(&req->pool, &req->res.headers, name, strlen(name), 1, NULL,
                          h2o_strdup(&req->pool, value.base, value.len).base, value.len);
}

static void refuse(struct nx_http_server *srv, h2o_req_t *req, const char *msg)
{
    nx_debug("http", "%s: 403: %s", srv->name, msg);
    nx_httpsrv_send_error(req, 403, "permission_error", msg);
}

/* At most 200 bytes of what the client sent, for a message. */
static int shown(h2o_iovec_t v)
{
    return (int)(v.len < 200 ? v.len : 200);
}

bool nx_httpsrv_origin_gate(struct nx_http_server *srv, h2o_req_t *req, bool has_host,
                            const struct nx_http_route *route)
{
    const struct nx_http_origin_policy *p = srv->origin;
    if (!p)
        return false;
    h2o_iovec_t host = req->input.authority;
    char msg[512];
    bool is_self_auth = route && route->opts.is_self_authenticated;
    if (p->is_open && has_host && !is_self_auth && !authority_is_loopback(host)) {
        snprintf(msg, sizeof msg, "Host %.*s is not a loopback name: a listener with no auth_token "
                 "answers to localhost, 127.0.0.1 and [::1] only (set auth_token in gateway.yaml to "
                 "serve it under other names)", shown(host), host.base);
        refuse(srv, req, msg);
        return true;
    }
    /* Whether and how a page may read the answer depends on Origin, so every answer says so: a
     * cache (the browser's own) must not hand a page the answer to a request that had none. */
    add(req, "vary", h2o_iovec_init(H2O_STRLIT("origin")));
    h2o_iovec_t origin = req_header(req, "origin");
    if (!origin.base)
        return false;
    h2o_iovec_t auth = origin_authority(origin);
    bool is_own = has_host && auth.len && auth.len == host.len &&
                  strncasecmp(auth.base, host.base, host.len) == 0;
    bool is_listed_origin = is_listed(p, origin) ||
                            (route && route->opts.origin_ok &&
                             route->opts.origin_ok(route->udata, origin.base, origin.len));
    if (!is_listed_origin && !is_own && !(auth.len && authority_is_loopback(auth))) {
        snprintf(msg, sizeof msg, "requests from the web page at %.*s are refused: list its origin "
                 "in gateway.yaml cors.allowed_origins to let it use the gateway", shown(origin),
                 origin.base);
        refuse(srv, req, msg);
        return true;
    }
    add(req, "access-control-allow-origin", origin);
    h2o_iovec_t want = req_header(req, "access-control-request-method");
    if (!h2o_memis(req->input.method.base, req->input.method.len, H2O_STRLIT("OPTIONS")) || !want.base) {
        add(req, "access-control-expose-headers", h2o_iovec_init(H2O_STRLIT(EXPOSED)));
        return false;
    }
    /* A preflight: the method and headers the page asks for (the handler still checks both). */
    char age[24];
    snprintf(age, sizeof age, "%u", (unsigned)(p->max_age_s));
    add(req, "access-control-allow-methods", h2o_iovec_init(H2O_STRLIT("GET, POST, DELETE, OPTIONS")));
    h2o_iovec_t hdrs = req_header(req, "access-control-request-headers");
    if (hdrs.base)
        add(req, "access-control-allow-headers", hdrs);
    add(req, "access-control-max-age", h2o_iovec_init(age, strlen(age)));
    nx_httpsrv_send(req, 204, NULL, NULL, 0);
    return true;
}

void nx_http_server_set_origin_policy(struct nx_http_server *srv, const struct nx_http_origin_policy *p)
{
    srv->origin = p;
}
