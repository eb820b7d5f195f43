#ifndef NX_MCP_OAUTH_INTERNAL_H
#define NX_MCP_OAUTH_INTERNAL_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "core/buf.h"
#include "http/client.h"
#include "mcp/oauth.h"
#include "runtime/runtime.h"

/* Shared by mcp/oauth.c (the chain of HTTP calls), oauth_conf.c (configuration, token file,
 * status) and oauth_util.c (pure helpers). */

#define NX_OAUTH_DEFAULT_REDIRECT "http://127.0.0.1:8765/callback"

enum nx_oauth_step { S_REFRESH, S_PRM, S_ASM, S_REGISTER, S_AUTHORIZE, S_TOKEN };

struct nx_mcp_oauth {
    struct nx_http_client *http;
    char *server;
    char *url;
    /* configuration */
    char *cfg_client_id;
    char *cfg_client_secret;
    char *client_metadata_url;
    char *cfg_scopes;
    char *redirect_uri;
    char *token_file;
    char *private_key_pem;
    char *signing_alg;
    bool is_client_credentials;
    /* discovered */
    char *prm_url;
    char *resource; /* sent as `resource`; NULL without protected resource metadata */
    char *scopes_supported;
    bool has_prm_tried;
    /* The authorization server the resource names (RFC 9728 authorization_servers[0], else the
     * server's origin): the issuer identifier the metadata URLs are built from (RFC 8414 3.1). */
    char *as_url;
    char *issuer; /* the metadata's `issuer` (as_url when it has none) */
    char *authz_ep;
    char *token_ep;
    char *reg_ep;
    json_t *auth_methods;
    bool has_cimd;
    bool has_asm;
    /* client and tokens, bound to the authorization server they came from: bound_as is the
     * as_url they were obtained with; when the resource names another one they are dropped */
    char *bound_as;
    bool is_bound_by_issuer; /* bound_as read from a file older than authorization_server */
    char *client_id;
    char *client_secret;
    char *auth_method; /* none, client_secret_basic, client_secret_post, private_key_jwt */
    char *access_token;
    char *refresh_token;
    char *scope;
    long long expires_at;
    char *bearer;
    char *last_error;
    char *auth_url; /* the operator must open this */
    char *pending_state;
    char *pending_verifier;
    struct nx_mcp_oauth_op *op;
};

struct nx_mcp_oauth_op {
    struct nx_mcp_oauth *o;
    nx_mcp_oauth_done_fn done;
    void *udata;
    struct nx_http_call *call;
    struct nx_timer *kick;
    int step;
    char **urls;
    size_t nurl;
    char *rm_url;
    char *scope;
    char *state;
    char *verifier;
    char *code;
    bool is_step_up;
    bool is_refresh_tried;
};

/* oauth_conf.c */
void nx_oauth_set_str(char **dst, const char *v);
void nx_oauth_save(struct nx_mcp_oauth *o);
void nx_oauth_set_bearer(struct nx_mcp_oauth *o);
/* After discovery: keeps the client and tokens when they came from o->as_url, else drops them
 * (a configured client_id stays) so that a new authorization server never sees them. */
void nx_oauth_bind_as(struct nx_mcp_oauth *o);
/* An operator approved in a browser and left the redirect URL in <token_file>.code: true when
 * it holds the code for the pending authorization (op->code and op->verifier are set). */
bool nx_oauth_take_operator_code(struct nx_mcp_oauth_op *op);

/* oauth_util.c */

/* Percent-encodes s (everything but unreserved characters) onto b. */
void nx_oauth_pct(struct nx_buf *b, const char *s);
/* Appends "&key=value" (no '&' first) form-encoded; nothing when value is NULL. */
void nx_oauth_form_add(struct nx_buf *b, const char *key, const char *value);
/* The decoded value of a query parameter of url, or NULL. New string. */
char *nx_oauth_query_param(const char *url, const char *name);
/* "http(s)://host[:port]" and the path without a trailing '/' ("" for the root). */
int nx_oauth_split_url(const char *url, char *origin, size_t olen, char *path, size_t plen);
/* One issuer identifier written two ways: equal but for terminating '/' (RFC 8414 3.1 removes
 * it before building the metadata URL, so both name one metadata document). */
bool nx_oauth_same_issuer(const char *a, const char *b);
/* Same scheme and host[:port] (case-insensitive). */
bool nx_oauth_same_origin(const char *a, const char *b);
void nx_oauth_b64url(struct nx_buf *b, const unsigned char *data, size_t len);
void nx_oauth_b64(struct nx_buf *b, const char *s);
/* base64url of `bytes` random bytes (at most 64). New string. */
char *nx_oauth_random(size_t bytes);
/* A private_key_jwt client assertion (RFC 7523): iss = sub = client_id, aud, iat, exp (+5 min),
 * jti; alg ES256 (default) or RS256. */
int nx_oauth_jwt_assertion(const char *pem, const char *alg, const char *client_id, const char *audience,
                           char **out, char *err, size_t errlen);

#endif
