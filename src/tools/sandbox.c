#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/error.h"
#include "tools/internal.h"
#include "tools/tool.h"

/* Sandbox checks shared by the tools.
 *
 * Paths: the model's path must be relative, free of ".." components, and lead (after every
 * symlink is resolved) to a place under realpath(workspace). The real path of the deepest
 * existing ancestor is checked, so a symlink anywhere on the way that leads out is refused, and
 * the caller gets the resolved path (no symlinks left in the part that exists). What remains
 * is the race between this check and the open(); the file tools close most of it by opening with
 * O_NOFOLLOW and re-checking the opened descriptor's real path (nx_sandbox_check_fd). */

/* Is real path p equal to or under real directory w? */
static bool under(const char *w, const char *p)
{
    size_t n = strlen(w);

    if (n == 1 && w[0] == '/')
        return true;
    return strncmp(p, w, n) == 0 && (p[n] == '\0' || p[n] == '/');
}

static int path_err(char *err, size_t errlen, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int path_err(char *err, size_t errlen, int rc, const char *fmt, ...)
{
    va_list ap;

    if (err && errlen) {
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return rc;
}

int nx_sandbox_path(const char *workspace, const char *rel, bool for_create, char *out,
                    size_t outlen, char *err, size_t errlen)
{
    char wreal[PATH_MAX], norm[PATH_MAX], full[PATH_MAX], probe[PATH_MAX], real[PATH_MAX];
    size_t nlen = 0, cut;
    const char *p, *tail;
    int n, depth = 0;

    if (!workspace || !workspace[0])
        return path_err(err, errlen, NX_EPERM, "file tools are disabled: this agent has no workspace");
    if (!rel || !rel[0])
        return path_err(err, errlen, NX_EINVAL, "path is empty");
    if (rel[0] == '/')
        return path_err(err, errlen, NX_EPERM,
                        "path \"%.200s\" is absolute: give a path relative to the workspace", rel);
    if (strlen(rel) >= PATH_MAX)
        return path_err(err, errlen, NX_EINVAL, "path is too long");
    /* normalise: drop "." and empty components, refuse ".." and paths deeper than
     * NX_SANDBOX_MAX_DEPTH (resolving costs grow with the square of the depth, on the loop) */
    norm[0] = '\0';
    for (p = rel; *p;) {
        const char *e = strchr(p, '/');
        size_t len = e ? (size_t)(e - p) : strlen(p);

        if (len > 0 && !(len == 1 && p[0] == '.') && ++depth > NX_SANDBOX_MAX_DEPTH)
            return path_err(err, errlen, NX_EINVAL, "path has more than %d components",
                            NX_SANDBOX_MAX_DEPTH);

        if (len == 2 && p[0] == '.' && p[1] == '.')
            return path_err(err, errlen, NX_EPERM,
                            "path \"%.200s\" contains \"..\": paths must stay inside the workspace", rel);
        if (len > 0 && !(len == 1 && p[0] == '.')) {
            n = snprintf(norm + nlen, sizeof norm - nlen, "%s%.*s", nlen ? "/" : "", (int)len, p);
            if (n < 0 || (size_t)n >= sizeof norm - nlen)
                return path_err(err, errlen, NX_EINVAL, "path is too long");
            nlen += (size_t)n;
        }
        p += len;
        if (*p == '/')
            p++;
    }
    if (!realpath(workspace, wreal))
        return path_err(err, errlen, NX_EIO, "the workspace directory is unavailable");

    /* find the deepest existing ancestor of workspace/norm and resolve it */
    n = snprintf(full, sizeof full, "%s%s%s", wreal, nlen ? "/" : "", norm);
    if (n < 0 || (size_t)n >= sizeof full)
        return path_err(err, errlen, NX_EINVAL, "path is too long");
    memcpy(probe, full, (size_t)n + 1);
    cut = (size_t)n;
    for (;;) {
        struct stat st;

        probe[cut] = '\0';
        if (realpath(probe, real))
            break;
        if (errno == ENOTDIR || errno == ELOOP)
            return path_err(err, errlen, NX_EINVAL, "path \"%.200s\" cannot be resolved (a component is "
                            "not a directory, or a symbolic link loops)", rel);
        if (errno != ENOENT)
            return path_err(err, errlen, errno == ENAMETOOLONG ? NX_EINVAL : NX_EIO,
                            "path \"%.200s\" cannot be resolved: %s", rel,
                            errno == ENAMETOOLONG ? "a name in it is longer than 255 bytes"
                                                  : strerror(errno));
        if (lstat(probe, &st) == 0)
            return path_err(err, errlen, NX_EPERM,
                            "path \"%.200s\" goes through a symbolic link that points nowhere inside "
                            "the workspace", rel);
        if (!for_create)
            return path_err(err, errlen, NX_ENOENT, "no such file or directory: \"%.200s\"", rel);
        while (cut > 0 && probe[cut] != '/')
            cut--;
        if (cut < strlen(wreal))
            return path_err(err, errlen, NX_EIO, "the workspace directory is unavailable");
    }
    if (!under(wreal, real))
        return path_err(err, errlen, NX_EPERM,
                        "path \"%.200s\" leads outside the workspace (through a symbolic link)", rel);
    /* the resolved ancestor, then the components that do not exist yet ("/a/b" or "") */
    tail = full + cut;
    n = snprintf(out, outlen, "%s%s", real, strcmp(real, "/") == 0 && tail[0] ? tail + 1 : tail);
    if (n < 0 || (size_t)n >= outlen)
        return path_err(err, errlen, NX_EINVAL, "path is too long");
    if (err && errlen)
        err[0] = '\0';
    return 0;
}

int nx_sandbox_check_fd(const char *workspace, int fd, char *err, size_t errlen)
{
    char link[64], real[PATH_MAX], wreal[PATH_MAX];
    ssize_t n;

    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    n = readlink(link, real, sizeof real - 1);
    if (n < 0 && errno == ENOENT && access("/proc/self/fd", F_OK) != 0)
        return 0; /* no /proc: the path check alone stands */
    if (n < 0 || (size_t)n >= sizeof real - 1) /* (a real path past PATH_MAX: not ours to open) */
        return path_err(err, errlen, NX_EPERM, "the file opened cannot be told to be inside the "
                        "workspace (its real path cannot be read back, or is too long)");
    real[n] = '\0';
    if (!realpath(workspace, wreal))
        return path_err(err, errlen, NX_EIO, "the workspace directory is unavailable");
    if (!under(wreal, real))
        return path_err(err, errlen, NX_EPERM, "the file opened is outside the workspace "
                        "(it changed while being opened)");
    return 0;
}

const char *const nx_identity_files[NX_IDENTITY_FILES + 1] = {
    "IDENTITY.md", "SOUL.md", "USER.md", "AGENTS.md", "MEMORY.md", NULL};

bool nx_sandbox_real_or_future(const char *path, char *out, size_t outlen)
{
    char probe[PATH_MAX], real[PATH_MAX], cwd[PATH_MAX];
    int n;

    if (path[0] == '/')
        n = snprintf(probe, sizeof probe, "%s", path);
    else if (getcwd(cwd, sizeof cwd))
        n = snprintf(probe, sizeof probe, "%s/%s", cwd, path);
    else
        return false;
    if (n < 0 || (size_t)n >= sizeof probe)
        return false;
    /* cut at its last components until what is left resolves (the root always does) */
    size_t cut = (size_t)n;
    for (;;) {
        if (cut == 0) {
            real[0] = '/';
            real[1] = '\0';
            break;
        }
        char keep = probe[cut];
        probe[cut] = '\0';
        bool ok = realpath(probe, real) != NULL;
        probe[cut] = keep;
        if (ok)
            break;
        do
            cut--;
        while (cut > 0 && probe[cut] != '/');
    }
    n = snprintf(out, outlen, "%s%s", strcmp(real, "/") == 0 ? "" : real, probe + cut);
    return n > 0 && (size_t)n < outlen;
}

/* Where absolute `path` leads, as open(O_CREAT) would take it: every symbolic link on the way
 * followed, also one whose target does not exist yet (it would be created there), components
 * that do not exist kept as they are. false past 40 links (a loop) or PATH_MAX. */
static bool where_it_leads(const char *path, char *out, size_t outlen)
{
    char rest[PATH_MAX], target[PATH_MAX], tmp[PATH_MAX];
    size_t len = 1;
    int links = 0;

    if (outlen < 2 || snprintf(rest, sizeof rest, "%s", path) >= (int)sizeof rest)
        return false;
    out[0] = '/';
    out[1] = '\0';
    for (char *p = rest; *p;) {
        char *c = p;
        while (*p && *p != '/')
            p++;
        size_t clen = (size_t)(p - c);
        while (*p == '/')
            p++;
        if (clen == 0 || (clen == 1 && c[0] == '.'))
            continue;
        if (clen == 2 && c[0] == '.' && c[1] == '.') { /* out holds no link: its parent is real */
            while (len > 1 && out[len - 1] != '/')
                len--;
            len = len > 1 ? len - 1 : 1;
            out[len] = '\0';
            continue;
        }
        if (len + 1 + clen >= outlen)
            return false;
        size_t before = len;
        if (len > 1)
            out[len++] = '/';
        memcpy(out + len, c, clen);
        len += clen;
        out[len] = '\0';
        ssize_t n = readlink(out, target, sizeof target - 1);
        if (n < 0) {
            if (errno != EINVAL && errno != ENOENT && errno != ENOTDIR)
                return false;
            continue; /* not a link, or not there (nor anything after it) */
        }
        if (++links > 40)
            return false;
        target[n] = '\0';
        if (snprintf(tmp, sizeof tmp, "%s/%s", target, p) >= (int)sizeof tmp)
            return false;
        memcpy(rest, tmp, strlen(tmp) + 1);
        p = rest;
        len = target[0] == '/' ? 1 : before; /* the link's target, from the root or its directory */
        out[len] = '\0';
    }
    return true;
}

/* Whether writing `resolved` would write the file at `path`, or, while nothing is at `path`,
 * make a directory there. */
static bool claims(const char *path, const char *resolved)
{
    return strcmp(path, resolved) == 0 ||
           (under(path, resolved) && access(path, F_OK) != 0 && errno == ENOENT);
}

bool nx_sandbox_is_identity_file(const char *workspace, const char *resolved)
{
    char wreal[PATH_MAX], name[PATH_MAX], leads[PATH_MAX];

    if (!realpath(workspace, wreal))
        return true; /* cannot tell: refuse */
    for (size_t i = 0; nx_identity_files[i] && i < NX_IDENTITY_PROTECTED; i++) {
        if (snprintf(name, sizeof name, "%s/%s", wreal, nx_identity_files[i]) >= (int)sizeof name)
            continue;
        /* the file itself, and where it leads when it is a symbolic link (through any number of
         * links, also to a file not there yet: written, the links would resolve); and, while
         * nothing is there, anything under either (a directory made in its place would keep
         * the operator's file from ever loading). A link to an existing directory (even "/")
         * protects no directory: no file is there to load. (A loop never resolves.) */
        if (claims(name, resolved) || (where_it_leads(name, leads, sizeof leads) && claims(leads, resolved)))
            return true;
    }
    return false;
}

bool nx_sandbox_names_dir(const char *rel)
{
    const char *last = strrchr(rel, '/');
    last = last ? last + 1 : rel;
    return strcmp(last, "") == 0 || strcmp(last, ".") == 0 || strcmp(last, "..") == 0;
}

const char *nx_sandbox_path_arg(const json_t *args, const char *key, const char *def, char *err,
                                size_t errlen)
{
    const json_t *v = json_object_get(args, key);

    if (!v)
        return def ? def : "";
    if (!json_is_string(v)) {
        snprintf(err, errlen, "argument \"%s\": expected a string", key);
        return NULL;
    }
    if (strlen(json_string_value(v)) != json_string_length(v)) {
        snprintf(err, errlen, "argument \"%s\": contains a NUL byte", key);
        return NULL;
    }
    return json_string_value(v);
}

/* ---- hosts and addresses ----------------------------------------------------------------- */

/* An allowlist entry's optional ":<port>" (after the name, or after "]"): its length is cut
 * off glen and the port returned, 0 when the entry has none (any port). -1: not a port. */
static long entry_port(const char *g, size_t *glen)
{
    const char *colon = NULL;
    long port = 0;

    for (size_t i = *glen; i > 0; i--) {
        if (g[i - 1] == ':') {
            colon = g + i - 1;
            break;
        }
        if (!isdigit((unsigned char)g[i - 1]))
            return 0;
    }
    if (!colon || colon == g + *glen - 1)
        return 0; /* no port, or "::" of a bare IPv6 address */
    if (colon > g && colon[-1] != ']' && memchr(g, ':', (size_t)(colon - g)))
        return 0; /* a bare IPv6 address ends in its own digits */
    for (const char *d = colon + 1; d < g + *glen; d++) {
        port = port * 10 + (*d - '0');
        if (port > 65535)
            return -1;
    }
    *glen = (size_t)(colon - g);
    return port ? port : -1;
}

bool nx_sandbox_host_allowed(const char *host, int port, const char *const *allowlist)
{
    size_t hlen;

    if (!host || !host[0] || !allowlist)
        return false;
    hlen = strlen(host);
    if (host[hlen - 1] == '.')
        hlen--; /* "example.com." is "example.com" */
    if (hlen > 0 && host[0] == '[' && host[hlen - 1] == ']') {
        host++;
        hlen -= 2;
    }
    if (hlen == 0)
        return false;
    for (size_t i = 0; allowlist[i]; i++) {
        const char *g = allowlist[i];
        size_t glen = strlen(g);
        long want_port = entry_port(g, &glen);

        if (want_port < 0 || (want_port > 0 && port > 0 && want_port != port))
            continue;
        if (glen > 0 && g[glen - 1] == '.')
            glen--;
        if (glen >= 2 && g[0] == '[' && g[glen - 1] == ']') {
            g++;
            glen -= 2;
        }
        if (glen == 1 && g[0] == '*')
            return true;
        if (glen > 2 && g[0] == '*' && g[1] == '.') {
            /* "*.example.com": any name below example.com, not example.com itself */
            size_t slen = glen - 1; /* ".example.com" */
            if (hlen > slen && strncasecmp(host + hlen - slen, g + 1, slen) == 0)
                return true;
            continue;
        }
        if (glen == hlen && strncasecmp(host, g, hlen) == 0)
            return true;
    }
    return false;
}

static bool v4_private(uint32_t a)
{
    return (a >> 24) == 0 ||                  /* 0.0.0.0/8 "this network" */
           (a >> 24) == 10 ||                 /* 10/8 */
           (a >> 24) == 127 ||                /* loopback */
           (a >> 22) == (100u << 2 | 1) ||    /* 100.64/10 CGNAT */
           (a >> 16) == (169u << 8 | 254) ||  /* link-local */
           (a >> 20) == (172u << 4 | 1) ||    /* 172.16/12 */
           (a >> 16) == (192u << 8 | 168) ||  /* 192.168/16 */
           (a >> 8) == (192u << 16 | 0 << 8 | 0) || /* 192.0.0/24 IETF protocol assignments */
           (a >> 17) == (198u << 7 | 18 >> 1) || /* 198.18/15 benchmarking */
           (a >> 28) == 0xe ||                /* multicast 224/4 */
           (a >> 28) == 0xf ||                /* 240/4 reserved, broadcast */
           a == 0xa83f8110u;                  /* 168.63.129.16 Azure's host endpoint (metadata) */
}

bool nx_sandbox_addr_is_private(const struct sockaddr *sa)
{
    if (!sa)
        return true;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)(const void *)sa;
        return v4_private(ntohl(in->sin_addr.s_addr));
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)(const void *)sa;
        const uint8_t *b = in6->sin6_addr.s6_addr;
        static const uint8_t v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        static const uint8_t zero12[12] = {0};
        static const uint8_t nat64[12] = {0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0};
        static const uint8_t siit[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0};
        static const uint8_t nat64_local[6] = {0, 0x64, 0xff, 0x9b, 0, 0x01};
        static const uint8_t discard[8] = {0x01, 0, 0, 0, 0, 0, 0, 0};
        uint32_t v4 = (uint32_t)b[12] << 24 | (uint32_t)b[13] << 16 | (uint32_t)b[14] << 8 | b[15];

        if (memcmp(b, v4mapped, 12) == 0 || memcmp(b, nat64, 12) == 0 || memcmp(b, siit, 12) == 0)
            return v4_private(v4);      /* ::ffff:a.b.c.d, 64:ff9b::a.b.c.d, ::ffff:0:a.b.c.d */
        if (memcmp(b, nat64_local, 6) == 0) /* 64:ff9b:1::/48, local-use NAT64: any IPv4 */
            return true;
        if (memcmp(b, discard, 8) == 0) /* 100::/64 discard */
            return true;
        if (b[0] == 0x20 && b[1] == 0x01 && b[2] == 0 && b[3] == 0) /* 2001::/32 Teredo */
            return true;
        if (b[0] == 0x20 && b[1] == 0x01 && b[2] == 0x0d && b[3] == 0xb8) /* 2001:db8::/32 docs */
            return true;
        if (memcmp(b, zero12, 12) == 0)
            return true;                /* ::, ::1, deprecated IPv4-compatible */
        if ((b[0] & 0xfe) == 0xfc)      /* fc00::/7 unique local */
            return true;
        if (b[0] == 0xfe && (b[1] & 0xc0) == 0x80) /* fe80::/10 link-local */
            return true;
        if (b[0] == 0xfe && (b[1] & 0xc0) == 0xc0) /* fec0::/10 old site-local */
            return true;
        if (b[0] == 0xff)               /* multicast */
            return true;
        if (b[0] == 0x20 && b[1] == 0x02) /* 6to4 2002::/16 embeds an IPv4 address */
            return v4_private((uint32_t)b[2] << 24 | (uint32_t)b[3] << 16 | (uint32_t)b[4] << 8 | b[5]);
        return false;
    }
    return true; /* unknown families are not reachable on purpose */
}
