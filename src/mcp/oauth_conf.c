#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/error.h"
#include "core/log.h"
#include "mcp/oauth.h"
#include "mcp/oauth_internal.h"

/* The OAuth client's configuration and state: the `auth` entry, the token file (0600, written
 * through a rename), the status, and the code an operator leaves after approving in a browser. */

static char *dup_str(const json_t *v)
{
    return json_is_string(v) && json_string_value(v)[0] ? nx_strdup(json_string_value(v)) : NULL;
}

void nx_oauth_set_str(char **dst, const char *v)
{
    free(*dst);
    *dst = v && v[0] ? nx_strdup(v) : NULL;
}

/* ---- the token file --------------------------------------------------------------------- */

void nx_oauth_save(struct nx_mcp_oauth *o)
{
    json_t *j;
    char tmp[4200], *text;
    int fd;

    if (!o->token_file)
        return;
    j = json_pack("{s:s?, s:s?, s:s?, s:s?, s:s?, s:s?, s:s?, s:s?, s:I}", "authorization_server",
                  o->bound_as, "issuer", o->issuer, "client_id", o->client_id, "client_secret",
                  o->client_secret, "auth_method", o->auth_method, "access_token", o->access_token,
                  "refresh_token", o->refresh_token, "scope", o->scope, "expires_at",
                  (json_int_t)o->expires_at);
    text = json_dumps(j, JSON_INDENT(1));
    json_decref(j);
    if (snprintf(tmp, sizeof tmp, "%s.tmp", o->token_file) >= (int)sizeof tmp || !text)
        goto out;
    /* A leftover temp file (a crash mid-write) is removed first; O_EXCL | O_NOFOLLOW then refuse
     * anything placed there meanwhile, a symlink included. */
    unlink(tmp);
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    bool is_ok = fd >= 0 && write(fd, text, strlen(text)) == (ssize_t)strlen(text) && fsync(fd) == 0;
    if (fd >= 0 && close(fd) < 0)
        is_ok = false;
    if (!is_ok || rename(tmp, o->token_file) < 0) {
        nx_warn("mcp", "server %s: cannot write the token file %s: %s", o->server, o->token_file,
                strerror(errno));
        unlink(tmp);
    }
out:
    free(text);
}

void nx_oauth_set_bearer(struct nx_mcp_oauth *o)
{
    struct nx_buf b = NX_BUF_INIT;

    free(o->bearer);
    o->bearer = NULL;
    if (o->access_token) {
        nx_buf_printf(&b, "Bearer %s", o->access_token);
        o->bearer = nx_buf_steal(&b);
    }
}

/* A client registered (RFC 7591) and the tokens issued by one authorization server are for it
 * alone: a resource that now names another one must not make us send them there. */
void nx_oauth_bind_as(struct nx_mcp_oauth *o)
{
    bool has_dynamic_client = o->client_id && !o->cfg_client_id;
    bool holds = has_dynamic_client || o->access_token || o->refresh_token || o->pending_state;

    /* A file from before authorization_server was kept recorded the metadata's issuer, which
     * may name the server's origin only (a path-based URL): the same origin is the same server. */
    bool is_same = nx_oauth_same_issuer(o->bound_as, o->as_url) ||
                   (o->is_bound_by_issuer && nx_oauth_same_origin(o->bound_as, o->as_url));
    o->is_bound_by_issuer = false;
    if (!holds || is_same) {
        nx_oauth_set_str(&o->bound_as, o->as_url);
        return;
    }
    nx_info("mcp",
            "server %s: the authorization server is now %s (was %s): dropping the %s obtained from the "
            "old one and authorizing anew",
            o->server, o->as_url, o->bound_as ? o->bound_as : "not recorded",
            has_dynamic_client ? "client registration and tokens" : "tokens");
    if (!o->cfg_client_id) {
        nx_oauth_set_str(&o->client_id, NULL);
        nx_oauth_set_str(&o->client_secret, NULL);
        nx_oauth_set_str(&o->auth_method, NULL);
    }
    nx_oauth_set_str(&o->access_token, NULL);
    nx_oauth_set_str(&o->refresh_token, NULL);
    nx_oauth_set_str(&o->scope, NULL);
    o->expires_at = 0;
    nx_oauth_set_bearer(o);
    nx_oauth_set_str(&o->pending_state, NULL);
    nx_oauth_set_str(&o->pending_verifier, NULL);
    nx_oauth_set_str(&o->auth_url, NULL);
    nx_oauth_set_str(&o->bound_as, o->as_url);
    nx_oauth_save(o);
}

void nx_mcp_oauth_set_token_file(struct nx_mcp_oauth *o, const char *path)
{
    json_t *j;
    char dir[4096], *slash;

    if (!o || !path || !path[0])
        return;
    nx_oauth_set_str(&o->token_file, path);
    snprintf(dir, sizeof dir, "%s", path);
    if ((slash = strrchr(dir, '/')) && slash != dir) {
        *slash = '\0';
        if (mkdir(dir, 0700) < 0 && errno != EEXIST)
            nx_warn("mcp", "server %s: cannot create %s: %s", o->server, dir, strerror(errno));
    }
    if (!(j = json_load_file(path, 0, NULL)))
        return;
    /* files written before authorization_server was kept have the issuer in its place */
    nx_oauth_set_str(&o->bound_as, json_string_value(json_object_get(j, "authorization_server")));
    if (!o->bound_as) {
        nx_oauth_set_str(&o->bound_as, json_string_value(json_object_get(j, "issuer")));
        o->is_bound_by_issuer = o->bound_as != NULL;
    }
    if (!o->cfg_client_id) {
        nx_oauth_set_str(&o->client_id, json_string_value(json_object_get(j, "client_id")));
        nx_oauth_set_str(&o->client_secret, json_string_value(json_object_get(j, "client_secret")));
        nx_oauth_set_str(&o->auth_method, json_string_value(json_object_get(j, "auth_method")));
    }
    nx_oauth_set_str(&o->access_token, json_string_value(json_object_get(j, "access_token")));
    nx_oauth_set_str(&o->refresh_token, json_string_value(json_object_get(j, "refresh_token")));
    nx_oauth_set_str(&o->scope, json_string_value(json_object_get(j, "scope")));
    o->expires_at = json_integer_value(json_object_get(j, "expires_at"));
    nx_oauth_set_bearer(o);
    json_decref(j);
    nx_info("mcp", "server %s: OAuth tokens loaded from %s", o->server, path);
}

/* ---- creation ---------------------------------------------------------------------------- */

int nx_mcp_oauth_new(struct nx_http_client *http, const char *server, const char *url, const json_t *auth,
                     struct nx_mcp_oauth **out, char *err, size_t errlen)
{
    const char *type = json_string_value(json_object_get(auth, "type"));
    const char *grant = json_string_value(json_object_get(auth, "grant"));
    const json_t *scopes = json_object_get(auth, "scopes");
    struct nx_mcp_oauth *o;

    *out = NULL;
    if (!auth || (type && strcmp(type, "oauth") != 0 && strcmp(type, "oauth2") != 0))
        return 0;
    if (!json_is_object(auth) || !type) {
        snprintf(err, errlen, "auth must be an object with type: oauth");
        return NX_EINVAL;
    }
    if (grant && strcmp(grant, "authorization_code") != 0 && strcmp(grant, "client_credentials") != 0) {
        snprintf(err, errlen, "auth.grant must be authorization_code or client_credentials");
        return NX_EINVAL;
    }
    if (!http || !url) {
        snprintf(err, errlen, "OAuth needs a Streamable HTTP url");
        return NX_EINVAL;
    }
    o = nx_calloc(1, sizeof *o);
    o->http = http;
    o->server = nx_strdup(server ? server : "?");
    o->url = nx_strdup(url);
    o->cfg_client_id = dup_str(json_object_get(auth, "client_id"));
    o->cfg_client_secret = dup_str(json_object_get(auth, "client_secret"));
    o->client_metadata_url = dup_str(json_object_get(auth, "client_metadata_url"));
    o->redirect_uri = dup_str(json_object_get(auth, "redirect_uri"));
    if (!o->redirect_uri)
        o->redirect_uri = nx_strdup(NX_OAUTH_DEFAULT_REDIRECT);
    o->private_key_pem = dup_str(json_object_get(auth, "private_key_pem"));
    o->signing_alg = dup_str(json_object_get(auth, "signing_algorithm"));
    o->is_client_credentials = grant && strcmp(grant, "client_credentials") == 0;
    if (json_is_string(scopes)) {
        o->cfg_scopes = dup_str(scopes);
    } else if (json_is_array(scopes)) {
        struct nx_buf b = NX_BUF_INIT;

        for (size_t i = 0; i < json_array_size(scopes); i++) {
            if (json_is_string(json_array_get(scopes, i)))
                nx_buf_printf(&b, "%s%s", b.len ? " " : "", json_string_value(json_array_get(scopes, i)));
        }
        o->cfg_scopes = b.len ? nx_buf_steal(&b) : NULL;
        nx_buf_cleanup(&b);
    }
    if (o->cfg_client_id) {
        o->client_id = nx_strdup(o->cfg_client_id);
        o->client_secret = o->cfg_client_secret ? nx_strdup(o->cfg_client_secret) : NULL;
    }
    if (o->is_client_credentials && (!o->cfg_client_id || (!o->cfg_client_secret && !o->private_key_pem))) {
        snprintf(err, errlen,
                 "auth.grant client_credentials needs client_id and client_secret or private_key_pem");
        nx_mcp_oauth_free(o);
        return NX_EINVAL;
    }
    if (json_is_string(json_object_get(auth, "token_file")))
        nx_mcp_oauth_set_token_file(o, json_string_value(json_object_get(auth, "token_file")));
    *out = o;
    return 0;
}

const char *nx_mcp_oauth_authorization(struct nx_mcp_oauth *o)
{
    return o ? o->bearer : NULL;
}

json_t *nx_mcp_oauth_status(const struct nx_mcp_oauth *o)
{
    long long left = o->expires_at ? o->expires_at - (long long)time(NULL) : 0;

    return json_pack("{s:s, s:b, s:s?, s:s?, s:s?, s:s?, s:s?, s:o}", "state",
                     o->op             ? "authorizing"
                     : o->access_token ? "authorized"
                                       : "unauthorized",
                     "has_token", o->access_token != NULL, "scope", o->scope, "issuer", o->issuer,
                     "client_id", o->client_id, "last_error", o->last_error, "authorization_url", o->auth_url,
                     "expires_in", o->expires_at ? json_integer(left > 0 ? left : 0) : json_null());
}

/* An operator approved in a browser and left the redirect URL in <token_file>.code. */
bool nx_oauth_take_operator_code(struct nx_mcp_oauth_op *op)
{
    struct nx_mcp_oauth *o = op->o;
    char path[4200], url[4096];
    char *state = NULL;
    FILE *f;
    size_t n;
    bool ok = false;

    if (!o->pending_state || !o->token_file ||
        snprintf(path, sizeof path, "%s.code", o->token_file) >= (int)sizeof path || !(f = fopen(path, "r")))
        return false;
    n = fread(url, 1, sizeof url - 1, f);
    fclose(f);
    unlink(path);
    url[n] = '\0';
    url[strcspn(url, "\r\n")] = '\0';
    state = nx_oauth_query_param(url, "state");
    free(op->code);
    op->code = nx_oauth_query_param(url, "code");
    if (op->code && state && strcmp(state, o->pending_state) == 0) {
        nx_oauth_set_str(&op->verifier, o->pending_verifier);
        ok = true;
    } else {
        nx_warn("mcp", "server %s: %s holds no code for the pending authorization (state mismatch)",
                o->server, path);
    }
    free(state);
    return ok;
}
