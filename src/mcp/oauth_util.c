#include <openssl/bn.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/error.h"
#include "mcp/oauth.h"
#include "mcp/oauth_internal.h"

/* Pieces of the OAuth client that are pure functions: URLs, encodings, PKCE, WWW-Authenticate,
 * and the private_key_jwt client assertion (OpenSSL). */

static bool is_unreserved(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_' || c == '~';
}

void nx_oauth_pct(struct nx_buf *b, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";

    for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++) {
        if (is_unreserved(*p)) {
            nx_buf_putc(b, (char)*p);
        } else {
            nx_buf_putc(b, '%');
            nx_buf_putc(b, hex[*p >> 4]);
            nx_buf_putc(b, hex[*p & 15]);
        }
    }
}

void nx_oauth_form_add(struct nx_buf *b, const char *key, const char *value)
{
    if (!value)
        return;
    if (b->len)
        nx_buf_putc(b, '&');
    nx_oauth_pct(b, key);
    nx_buf_putc(b, '=');
    nx_oauth_pct(b, value);
}

char *nx_oauth_query_param(const char *url, const char *name)
{
    const char *q = strchr(url ? url : "", '?');
    size_t nlen = strlen(name);

    for (const char *p = q ? q + 1 : NULL; p && *p;) {
        const char *end = p + strcspn(p, "&#");

        if ((size_t)(end - p) > nlen && strncmp(p, name, nlen) == 0 && p[nlen] == '=') {
            struct nx_buf b = NX_BUF_INIT;

            for (const char *v = p + nlen + 1; v < end; v++) {
                if (*v == '%' && v + 2 < end && nx_hex_digit(v[1]) >= 0 && nx_hex_digit(v[2]) >= 0) {
                    nx_buf_putc(&b, (char)(nx_hex_digit(v[1]) * 16 + nx_hex_digit(v[2])));
                    v += 2;
                } else {
                    nx_buf_putc(&b, *v == '+' ? ' ' : *v);
                }
            }
            return nx_buf_steal(&b);
        }
        if (*end != '&')
            break;
        p = end + 1;
    }
    return NULL;
}

int nx_oauth_split_url(const char *url, char *origin, size_t olen, char *path, size_t plen)
{
    const char *p, *host;
    size_t n;

    if (!url || (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0))
        return NX_EINVAL;
    host = strstr(url, "://") + 3;
    n = strcspn(host, "/?#");
    if (n == 0 || (size_t)(host - url) + n >= olen)
        return NX_EINVAL;
    snprintf(origin, olen, "%.*s", (int)((size_t)(host - url) + n), url);
    p = host + n;
    n = strcspn(p, "?#");
    while (n > 0 && p[n - 1] == '/')
        n--; /* "/mcp/" and "/mcp" are one path; "/" is none */
    if (n + 1 > plen)
        return NX_EINVAL;
    snprintf(path, plen, "%.*s", (int)n, p);
    return 0;
}

static size_t without_trailing_slash(const char *s)
{
    size_t n = strlen(s);

    while (n > 0 && s[n - 1] == '/')
        n--;
    return n;
}

bool nx_oauth_same_issuer(const char *a, const char *b)
{
    size_t n;

    if (!a || !b)
        return false;
    n = without_trailing_slash(a);
    return n == without_trailing_slash(b) && strncmp(a, b, n) == 0;
}

bool nx_oauth_same_origin(const char *a, const char *b)
{
    char ao[512], ap[1024], bo[512], bp[1024];

    return nx_oauth_split_url(a, ao, sizeof ao, ap, sizeof ap) == 0 &&
           nx_oauth_split_url(b, bo, sizeof bo, bp, sizeof bp) == 0 && strcasecmp(ao, bo) == 0;
}

char **nx_mcp_oauth_discovery_urls(const char *url, int is_resource)
{
    char origin[512], path[1024];
    char **out = nx_calloc(4, sizeof *out);
    struct nx_buf b = NX_BUF_INIT;
    size_t n = 0;

    if (nx_oauth_split_url(url, origin, sizeof origin, path, sizeof path) < 0)
        return out;
    if (is_resource) {
        /* RFC 9728: path-based first, then the root */
        if (path[0]) {
            nx_buf_printf(&b, "%s/.well-known/oauth-protected-resource%s", origin, path);
            out[n++] = nx_buf_steal(&b);
        }
        nx_buf_printf(&b, "%s/.well-known/oauth-protected-resource", origin);
        out[n++] = nx_buf_steal(&b);
    } else if (path[0]) {
        /* RFC 8414 path insertion, OpenID path insertion, OpenID path appending */
        nx_buf_printf(&b, "%s/.well-known/oauth-authorization-server%s", origin, path);
        out[n++] = nx_buf_steal(&b);
        nx_buf_printf(&b, "%s/.well-known/openid-configuration%s", origin, path);
        out[n++] = nx_buf_steal(&b);
        nx_buf_printf(&b, "%s%s/.well-known/openid-configuration", origin, path);
        out[n++] = nx_buf_steal(&b);
    } else {
        nx_buf_printf(&b, "%s/.well-known/oauth-authorization-server", origin);
        out[n++] = nx_buf_steal(&b);
        nx_buf_printf(&b, "%s/.well-known/openid-configuration", origin);
        out[n++] = nx_buf_steal(&b);
    }
    return out;
}

int nx_mcp_oauth_resource_matches(const char *resource, const char *server_url)
{
    char ro[512], rp[1024], so[512], sp[1024];
    size_t n;

    if (nx_oauth_split_url(resource, ro, sizeof ro, rp, sizeof rp) < 0 ||
        nx_oauth_split_url(server_url, so, sizeof so, sp, sizeof sp) < 0 || strcasecmp(ro, so) != 0)
        return 0;
    n = strlen(rp);
    return strncmp(sp, rp, n) == 0 && (sp[n] == '\0' || sp[n] == '/');
}

/* auth-params of a WWW-Authenticate challenge: name=token or name="quoted \" string". */
int nx_mcp_oauth_www_param(const char *header, const char *name, char *out, size_t outlen)
{
    const char *p = header;
    size_t nlen = strlen(name);

    if (!header || outlen == 0)
        return -1;
    while (*p) {
        const char *key;
        size_t klen, n = 0;
        bool is_match;

        while (*p == ' ' || *p == ',' || *p == '\t')
            p++;
        key = p;
        while (*p && *p != '=' && *p != ' ' && *p != ',')
            p++;
        klen = (size_t)(p - key);
        if (*p != '=')
            continue; /* the scheme ("Bearer") or a token68 */
        p++;
        is_match = klen == nlen && strncasecmp(key, name, nlen) == 0;
        if (*p == '"') {
            for (p++; *p && *p != '"'; p++) {
                if (*p == '\\' && p[1])
                    p++;
                if (is_match && n + 1 < outlen)
                    out[n++] = *p;
            }
            if (*p == '"')
                p++;
        } else {
            for (; *p && *p != ',' && *p != ' '; p++) {
                if (is_match && n + 1 < outlen)
                    out[n++] = *p;
            }
        }
        if (is_match) {
            out[n] = '\0';
            return (int)n;
        }
    }
    return -1;
}

void nx_oauth_b64url(struct nx_buf *b, const unsigned char *data, size_t len)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)data[i] << 16 | (i + 1 < len ? (uint32_t)data[i + 1] << 8 : 0) |
                     (i + 2 < len ? data[i + 2] : 0);

        nx_buf_putc(b, tab[v >> 18 & 63]);
        nx_buf_putc(b, tab[v >> 12 & 63]);
        if (i + 1 < len)
            nx_buf_putc(b, tab[v >> 6 & 63]);
        if (i + 2 < len)
            nx_buf_putc(b, tab[v & 63]);
    }
}

void nx_oauth_b64(struct nx_buf *b, const char *s)
{
    size_t len = strlen(s);
    unsigned char *out = nx_malloc(4 * ((len + 2) / 3) + 1);
    int n = EVP_EncodeBlock(out, (const unsigned char *)s, (int)len);

    nx_buf_append(b, out, n > 0 ? (size_t)n : 0);
    free(out);
}

void nx_mcp_oauth_pkce_challenge(const char *verifier, char *out, size_t outlen)
{
    unsigned char md[32];
    unsigned int mdlen = 0;
    struct nx_buf b = NX_BUF_INIT;

    EVP_Digest(verifier, strlen(verifier), md, &mdlen, EVP_sha256(), NULL);
    nx_oauth_b64url(&b, md, mdlen);
    snprintf(out, outlen, "%s", nx_buf_cstr(&b));
    nx_buf_cleanup(&b);
}

char *nx_oauth_random(size_t bytes)
{
    unsigned char raw[64];
    struct nx_buf b = NX_BUF_INIT;

    if (bytes > sizeof raw)
        bytes = sizeof raw;
    if (RAND_bytes(raw, (int)bytes) != 1) {
        for (size_t i = 0; i < bytes; i++) /* never happens with a seeded OpenSSL */
            raw[i] = (unsigned char)(rand() ^ (int)time(NULL));
    }
    nx_oauth_b64url(&b, raw, bytes);
    return nx_buf_steal(&b);
}

/* ES256 signatures are DER from OpenSSL; JWS wants r||s, 32 bytes each. */
static int der_to_raw(const unsigned char *der, size_t len, unsigned char raw[64])
{
    const unsigned char *p = der;
    ECDSA_SIG *sig = d2i_ECDSA_SIG(NULL, &p, (long)len);
    const BIGNUM *r, *s;
    int rc = NX_EINVAL;

    if (!sig)
        return NX_EINVAL;
    ECDSA_SIG_get0(sig, &r, &s);
    if (BN_bn2binpad(r, raw, 32) == 32 && BN_bn2binpad(s, raw + 32, 32) == 32)
        rc = 0;
    ECDSA_SIG_free(sig);
    return rc;
}

int nx_oauth_jwt_assertion(const char *pem, const char *alg, const char *client_id, const char *audience,
                           char **out, char *err, size_t errlen)
{
    BIO *bio = NULL;
    EVP_PKEY *key = NULL;
    EVP_MD_CTX *md = NULL;
    struct nx_buf b = NX_BUF_INIT;
    unsigned char *sig = NULL;
    unsigned char raw[64];
    size_t siglen = 0;
    bool is_es = !alg || strcmp(alg, "ES256") == 0;
    char *jti = nx_oauth_random(16);
    time_t now = time(NULL);
    json_t *hdr = NULL, *claims = NULL;
    char *h = NULL, *c = NULL;
    int rc = NX_EINVAL;

    if (!is_es && strcmp(alg, "RS256") != 0) {
        snprintf(err, errlen, "signing_algorithm %s is not supported (ES256, RS256)", alg);
        goto out;
    }
    if (!pem || !(bio = BIO_new_mem_buf(pem, -1)) ||
        !(key = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL))) {
        snprintf(err, errlen, "private_key_pem is not a PEM private key");
        goto out;
    }
    hdr = json_pack("{s:s, s:s}", "alg", is_es ? "ES256" : "RS256", "typ", "JWT");
    claims = json_pack("{s:s, s:s, s:s, s:I, s:I, s:s}", "iss", client_id, "sub", client_id, "aud", audience,
                       "iat", (json_int_t)now, "exp", (json_int_t)now + 300, "jti", jti);
    h = json_dumps(hdr, JSON_COMPACT);
    c = json_dumps(claims, JSON_COMPACT);
    nx_oauth_b64url(&b, (const unsigned char *)h, strlen(h));
    nx_buf_putc(&b, '.');
    nx_oauth_b64url(&b, (const unsigned char *)c, strlen(c));
    md = EVP_MD_CTX_new();
    if (!md || EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, key) != 1 ||
        EVP_DigestSign(md, NULL, &siglen, (const unsigned char *)b.data, b.len) != 1) {
        snprintf(err, errlen, "cannot sign the client assertion with this key");
        goto out;
    }
    sig = nx_malloc(siglen);
    if (EVP_DigestSign(md, sig, &siglen, (const unsigned char *)b.data, b.len) != 1 ||
        (is_es && der_to_raw(sig, siglen, raw) < 0)) {
        snprintf(err, errlen, "cannot sign the client assertion (is the key %s?)", is_es ? "P-256" : "RSA");
        goto out;
    }
    nx_buf_putc(&b, '.');
    if (is_es)
        nx_oauth_b64url(&b, raw, sizeof raw);
    else
        nx_oauth_b64url(&b, sig, siglen);
    *out = nx_buf_steal(&b);
    rc = 0;
out:
    nx_buf_cleanup(&b);
    EVP_MD_CTX_free(md);
    EVP_PKEY_free(key);
    BIO_free(bio);
    free(sig);
    free(jti);
    free(h);
    free(c);
    json_decref(hdr);
    json_decref(claims);
    return rc;
}
