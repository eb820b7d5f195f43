#ifndef NX_MCP_OAUTH_H
#define NX_MCP_OAUTH_H

#include <jansson.h>
#include <stddef.h>

#include "http/client.h"

/* OAuth 2.1 for Streamable HTTP MCP servers (MCP 2025-11-25 authorization), one per server,
 * living as long as the server's entry so tokens survive reconnections. On a 401 (or a 403 with
 * error="insufficient_scope") the transport hands the WWW-Authenticate header to
 * nx_mcp_oauth_challenge, which discovers the protected resource metadata (RFC 9728: the
 * header's resource_metadata, else the path-based then the root well-known URL), the
 * authorization server metadata (RFC 8414 and OpenID discovery with path insertion; else the
 * 2025-03-26 fallbacks), gets a client (pre-registered, a client ID metadata document URL, or
 * RFC 7591 dynamic registration) and a token: the authorization code grant with PKCE S256 and the
 * `resource` parameter (RFC 8707), following the authorization endpoint's redirect when the
 * server approves at once, or the client credentials grant (client_secret_basic/post or
 * private_key_jwt). Tokens are refreshed, and kept 0600 in a token file when one is set; they are
 * never logged. Loop thread only. See docs/mcp.md. */

struct nx_mcp_oauth;
struct nx_mcp_oauth_op;

/* auth (the server entry's `auth` object): {type: oauth, client_id?, client_secret?,
 * client_metadata_url?, scopes?, redirect_uri?, token_file?, grant?: authorization_code |
 * client_credentials, private_key_pem?, signing_algorithm?}. *out is NULL (and 0 returned)
 * when auth is absent or of another type ("bearer" is handled by the transport); NX_EINVAL
 * with why in err for a bad entry. */
int nx_mcp_oauth_new(struct nx_http_client *http, const char *server, const char *url, const json_t *auth,
                     struct nx_mcp_oauth **out, char *err, size_t errlen);
/* Cancels what is in flight (no callback). Accepts NULL. */
void nx_mcp_oauth_free(struct nx_mcp_oauth *o);
/* Where tokens are kept (created 0600; loaded now when it exists). Default: the entry's
 * token_file, else nothing is persisted. */
void nx_mcp_oauth_set_token_file(struct nx_mcp_oauth *o, const char *path);

/* "Bearer <token>" to send, or NULL before the first token. Valid until the next call into o. */
const char *nx_mcp_oauth_authorization(struct nx_mcp_oauth *o);

/* Called once: rc 0 = a new token is there, retry; else why in err. */
typedef void (*nx_mcp_oauth_done_fn)(int rc, const char *err, void *udata);
/* A request was answered `status` (401, 403) with this WWW-Authenticate (may be NULL). done never
 * runs inside this call. */
struct nx_mcp_oauth_op *nx_mcp_oauth_challenge(struct nx_mcp_oauth *o, long status,
                                               const char *www_authenticate, nx_mcp_oauth_done_fn done,
                                               void *udata);
/* done is not called. */
void nx_mcp_oauth_op_cancel(struct nx_mcp_oauth_op *op);

/* For the status page (no secrets): {state, has_token, scope, expires_in, issuer, last_error,
 * authorization_url (when the operator must approve in a browser)}. New reference. */
json_t *nx_mcp_oauth_status(const struct nx_mcp_oauth *o);

/* Helpers, exposed for tests. */
/* The value of auth-param `name` in a WWW-Authenticate header (Bearer scheme), unquoted, into
 * out. Returns its length or -1. */
int nx_mcp_oauth_www_param(const char *header, const char *name, char *out, size_t outlen);
/* The well-known URLs to try, in order, for a resource (kind "oauth-protected-resource") or an
 * authorization server issuer: NULL-terminated array of new strings (free each and the array). */
char **nx_mcp_oauth_discovery_urls(const char *url, int is_resource);
/* base64url without padding of SHA-256(verifier) (PKCE S256) into out (>= 44 bytes). */
void nx_mcp_oauth_pkce_challenge(const char *verifier, char *out, size_t outlen);
/* True when the resource metadata's `resource` covers the server URL (same origin, and the
 * server's path under the resource's path). */
int nx_mcp_oauth_resource_matches(const char *resource, const char *server_url);

#endif
