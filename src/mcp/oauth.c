#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/error.h"
#include "core/log.h"
#include "mcp/oauth.h"
#include "mcp/oauth_internal.h"
#include "runtime/runtime.h"

/* The OAuth client (see oauth.h). One challenge runs at a time as a chain of HTTP calls:
 * [refresh] -> protected resource metadata -> authorization server metadata -> [registration]
 * -> authorization (code + PKCE, following one redirect by hand) or nothing (client
 * credentials) -> token. What was discovered and registered is kept for the next challenge, so
 * a reconnection usually costs one refresh or nothing. */

#define CALL_TIMEOUT_MS 30000
#define BODY_MAX (1u << 20)

static void op_free(struct nx_mcp_oauth_op *op)
{
    for (size_t i = 0; op->urls && op->urls[i]; i++)
        free(op->urls[i]);
    free(op->urls);
    nx_timer_cancel(op->kick);
    free(op->rm_url);
    free(op->scope);
    free(op->state);
    free(op->verifier);
    free(op->code);
    free(op);
}

void nx_mcp_oauth_op_cancel(struct nx_mcp_oauth_op *op)
{
    struct nx_http_call *call;

    if (!op)
        return;
    op->done = NULL;
    if ((call = op->call)) {
        op->call = NULL;
        nx_http_call_cancel(call); /* its on_done sees no op->done and frees op */
        return;
    }
    if (op->o)
        op->o->op = NULL;
    op_free(op);
}

void nx_mcp_oauth_free(struct nx_mcp_oauth *o)
{
    if (!o)
        return;
    if (o->op) {
        o->op->o = NULL;
        nx_mcp_oauth_op_cancel(o->op);
    }
    free(o->server);
    free(o->url);
    free(o->cfg_client_id);
    free(o->cfg_client_secret);
    free(o->client_metadata_url);
    free(o->cfg_scopes);
    free(o->redirect_uri);
    free(o->token_file);
    free(o->private_key_pem);
    free(o->signing_alg);
    free(o->prm_url);
    free(o->resource);
    free(o->scopes_supported);
    free(o->as_url);
    free(o->issuer);
    free(o->authz_ep);
    free(o->token_ep);
    free(o->reg_ep);
    free(o->bound_as);
    free(o->client_id);
    free(o->client_secret);
    free(o->auth_method);
    free(o->access_token);
    free(o->refresh_token);
    free(o->scope);
    free(o->bearer);
    free(o->last_error);
    free(o->auth_url);
    free(o->pending_state);
    free(o->pending_verifier);
    json_decref(o->auth_methods);
    free(o);
}

/* ---- the chain ----------------------------------------------------------------------------- */

static void run(struct nx_mcp_oauth_op *op);

static void finish(struct nx_mcp_oauth_op *op, int rc, const char *err)
{
    struct nx_mcp_oauth *o = op->o;
    nx_mcp_oauth_done_fn done = op->done;
    void *udata = op->udata;

    if (o) {
        o->op = NULL;
        nx_oauth_set_str(&o->last_error, rc == 0 ? NULL : err);
        if (rc == 0)
            nx_info("mcp", "server %s: OAuth authorized%s%s", o->server, o->scope ? ", scope " : "",
                    o->scope ? o->scope : "");
        else
            nx_warn("mcp", "server %s: OAuth: %s", o->server, err);
    }
    op_free(op);
    if (done)
        done(rc, err, udata);
}

static void failf(struct nx_mcp_oauth_op *op, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void failf(struct nx_mcp_oauth_op *op, int rc, const char *fmt, ...)
{
    char err[600];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(err, sizeof err, fmt, ap);
    va_end(ap);
    finish(op, rc, err);
}

typedef void (*step_fn)(struct nx_mcp_oauth_op *op, long status, const struct nx_http_response *res,
                        const json_t *body);

struct call_ctx {
    struct nx_mcp_oauth_op *op;
    step_fn fn;
};

static void on_call(int rc, const struct nx_http_response *res, const char *err, void *udata)
{
    struct call_ctx *cc = udata;
    struct nx_mcp_oauth_op *op = cc->op;
    step_fn fn = cc->fn;
    json_t *body = NULL;

    free(cc);
    op->call = NULL;
    if (!op->done || !op->o) { /* cancelled */
        if (op->o)
            op->o->op = NULL;
        op_free(op);
        return;
    }
    if (rc < 0) {
        failf(op, rc, "request to the authorization server failed: %s", err ? err : nx_strerror(rc));
        return;
    }
    if (res->body && res->body_len)
        body = json_loadb(res->body, res->body_len, 0, NULL);
    fn(op, res->status, res, body);
    json_decref(body);
}

static void http(struct nx_mcp_oauth_op *op, const char *method, const char *url, const char *body,
                 const char *content_type, const char *authorization, step_fn fn)
{
    struct nx_http_header h[3];
    struct nx_http_call_opts o;
    struct call_ctx *cc = nx_calloc(1, sizeof *cc);
    size_t n = 0;

    h[n++] = (struct nx_http_header){"Accept", "application/json"};
    if (content_type)
        h[n++] = (struct nx_http_header){"Content-Type", content_type};
    if (authorization)
        h[n++] = (struct nx_http_header){"Authorization", authorization};
    memset(&o, 0, sizeof o);
    o.method = method;
    o.url = url;
    o.headers = h;
    o.nheaders = n;
    o.body = body;
    o.body_len = body ? strlen(body) : 0;
    o.timeout_ms = CALL_TIMEOUT_MS;
    o.max_response_bytes = BODY_MAX;
    o.on_done = on_call;
    o.udata = cc;
    cc->op = op;
    cc->fn = fn;
    nx_debug("mcp", "server %s: OAuth %s %s", op->o->server, method, url);
    if (!(op->call = nx_http_client_request(op->o->http, &o))) {
        free(cc);
        failf(op, NX_ECLOSED, "the HTTP client is closing");
    }
}

/* -- protected resource metadata (RFC 9728) -- */

static void next_prm(struct nx_mcp_oauth_op *op);

static void on_prm(struct nx_mcp_oauth_op *op, long status, const struct nx_http_response *res,
                   const json_t *body)
{
    struct nx_mcp_oauth *o = op->o;
    const char *resource = json_string_value(json_object_get(body, "resource"));
    const char *as = json_string_value(json_array_get(json_object_get(body, "authorization_servers"), 0));
    const json_t *ss = json_object_get(body, "scopes_supported");
    struct nx_buf b = NX_BUF_INIT;

    (void)res;
    if (status != 200 || !json_is_object(body)) {
        next_prm(op);
        return;
    }
    if (!resource || !nx_mcp_oauth_resource_matches(resource, o->url)) {
        failf(op, NX_EPERM,
              "the protected resource metadata names resource \"%.200s\", not this server (%.200s): "
              "not authorizing",
              resource ? resource : "(none)", o->url);
        return;
    }
    nx_oauth_set_str(&o->prm_url, op->urls[op->nurl - 1]);
    nx_oauth_set_str(&o->resource, resource);
    for (size_t i = 0; json_is_array(ss) && i < json_array_size(ss); i++) {
        if (json_is_string(json_array_get(ss, i)))
            nx_buf_printf(&b, "%s%s", b.len ? " " : "", json_string_value(json_array_get(ss, i)));
    }
    free(o->scopes_supported);
    o->scopes_supported = b.len ? nx_buf_steal(&b) : NULL;
    nx_buf_cleanup(&b);
    if (as && !nx_oauth_same_issuer(o->as_url, as)) {
        nx_oauth_set_str(&o->as_url, as);
        o->has_asm = false;
    }
    op->step = S_ASM;
    run(op);
}

static void next_prm(struct nx_mcp_oauth_op *op)
{
    struct nx_mcp_oauth *o = op->o;
    char origin[512], path[1024];

    if (op->urls && op->urls[op->nurl]) {
        const char *u = op->urls[op->nurl++];

        http(op, "GET", u, NULL, NULL, NULL, on_prm);
        return;
    }
    /* no metadata: the 2025-03-26 way, the server's origin is the authorization server */
    nx_info("mcp", "server %s: no protected resource metadata; trying the server's origin", o->server);
    if (nx_oauth_split_url(o->url, origin, sizeof origin, path, sizeof path) < 0) {
        failf(op, NX_EINVAL, "bad server url");
        return;
    }
    nx_oauth_set_str(&o->resource, NULL);
    if (!nx_oauth_same_issuer(o->as_url, origin)) {
        nx_oauth_set_str(&o->as_url, origin);
        o->has_asm = false;
    }
    op->step = S_ASM;
    run(op);
}

/* -- authorization server metadata (RFC 8414, OpenID Connect discovery) -- */

static void next_asm(struct nx_mcp_oauth_op *op);

static void on_asm(struct nx_mcp_oauth_op *op, long status, const struct nx_http_response *res,
                   const json_t *body)
{
    struct nx_mcp_oauth *o = op->o;
    const char *issuer = json_string_value(json_object_get(body, "issuer"));

    (void)res;
    if (status != 200 || !json_is_object(body) || !json_is_string(json_object_get(body, "token_endpoint"))) {
        next_asm(op);
        return;
    }
    /* RFC 8414 3.3: the issuer must be the one the URL was built from. A path that differs on the
     * same origin is tolerated (servers publish a path-based location with the origin as issuer);
     * another origin would be a mix-up: its endpoints are not used. */
    if (issuer && !nx_oauth_same_issuer(issuer, o->as_url)) {
        if (!nx_oauth_same_origin(issuer, o->as_url)) {
            failf(op, NX_EPERM,
                  "the authorization server metadata for %.200s names another issuer (%.200s): "
                  "not using it",
                  o->as_url, issuer);
            return;
        }
        nx_debug("mcp", "server %s: the authorization server %s calls itself %s", o->server, o->as_url,
                 issuer);
    }
    nx_oauth_set_str(&o->authz_ep, json_string_value(json_object_get(body, "authorization_endpoint")));
    nx_oauth_set_str(&o->token_ep, json_string_value(json_object_get(body, "token_endpoint")));
    nx_oauth_set_str(&o->reg_ep, json_string_value(json_object_get(body, "registration_endpoint")));
    nx_oauth_set_str(&o->issuer, issuer ? issuer : o->as_url);
    json_decref(o->auth_methods);
    o->auth_methods = json_incref(json_object_get(body, "token_endpoint_auth_methods_supported"));
    o->has_cimd = json_is_true(json_object_get(body, "client_id_metadata_document_supported"));
    o->has_asm = true;
    nx_oauth_bind_as(o);
    op->step = S_REGISTER;
    run(op);
}

static void next_asm(struct nx_mcp_oauth_op *op)
{
    struct nx_mcp_oauth *o = op->o;
    char origin[512], path[1024];
    struct nx_buf b = NX_BUF_INIT;

    if (op->urls && op->urls[op->nurl]) {
        const char *u = op->urls[op->nurl++];

        http(op, "GET", u, NULL, NULL, NULL, on_asm);
        return;
    }
    /* no metadata anywhere: the 2025-03-26 default endpoints at the issuer's origin */
    if (nx_oauth_split_url(o->as_url, origin, sizeof origin, path, sizeof path) < 0) {
        failf(op, NX_EINVAL, "bad authorization server url \"%.200s\"", o->as_url);
        return;
    }
    nx_info("mcp", "server %s: no authorization server metadata; using %s/authorize, /token, /register",
            o->server, origin);
    nx_buf_printf(&b, "%s/authorize", origin);
    free(o->authz_ep);
    o->authz_ep = nx_buf_steal(&b);
    nx_buf_printf(&b, "%s/token", origin);
    free(o->token_ep);
    o->token_ep = nx_buf_steal(&b);
    nx_buf_printf(&b, "%s/register", origin);
    free(o->reg_ep);
    o->reg_ep = nx_buf_steal(&b);
    json_decref(o->auth_methods);
    o->auth_methods = NULL;
    o->has_cimd = false;
    o->has_asm = true;
    nx_oauth_set_str(&o->issuer, o->as_url);
    nx_oauth_bind_as(o);
    op->step = S_REGISTER;
    run(op);
}

static bool supports(const struct nx_mcp_oauth *o, const char *method)
{
    for (size_t i = 0; i < json_array_size(o->auth_methods); i++) {
        const char *m = json_string_value(json_array_get(o->auth_methods, i));

        if (m && strcmp(m, method) == 0)
            return true;
    }
    return false;
}

/* How to authenticate at the token endpoint with what we have. */
static const char *pick_auth_method(const struct nx_mcp_oauth *o)
{
    if (o->private_key_pem)
        return "private_key_jwt";
    if (!o->client_secret)
        return "none";
    if (!o->auth_methods || supports(o, "client_secret_basic"))
        return "client_secret_basic"; /* RFC 8414's default */
    if (supports(o, "client_secret_post"))
        return "client_secret_post";
    return "client_secret_basic";
}

/* -- dynamic client registration (RFC 7591) -- */

static void on_registered(struct nx_mcp_oauth_op *op, long status, const struct nx_http_response *res,
                          const json_t *body)
{
    struct nx_mcp_oauth *o = op->o;
    const char *method = json_string_value(json_object_get(body, "token_endpoint_auth_method"));

    (void)res;
    if ((status != 200 && status != 201) || !json_is_string(json_object_get(body, "client_id"))) {
        failf(op, NX_EPERM, "client registration refused (HTTP %ld%s%.200s); set auth.client_id", status,
              json_is_string(json_object_get(body, "error")) ? ": " : "",
              json_string_value(json_object_get(body, "error"))
                  ? json_string_value(json_object_get(body, "error"))
                  : "");
        return;
    }
    nx_oauth_set_str(&o->client_id, json_string_value(json_object_get(body, "client_id")));
    nx_oauth_set_str(&o->client_secret, json_string_value(json_object_get(body, "client_secret")));
    nx_oauth_set_str(&o->auth_method, method ? method : pick_auth_method(o));
    nx_info("mcp", "server %s: registered as OAuth client %s", o->server, o->client_id);
    nx_oauth_save(o);
    op->step = o->is_client_credentials ? S_TOKEN : S_AUTHORIZE;
    run(op);
}

static void do_register(struct nx_mcp_oauth_op *op)
{
    struct nx_mcp_oauth *o = op->o;
    const char *method = supports(o, "none") || !o->auth_methods ? "none"
                         : supports(o, "client_secret_basic")    ? "client_secret_basic"
                         : supports(o, "client_secret_post")     ? "client_secret_post"
                                                                 : "none";
    json_t *req;
    char *text;

    if (o->client_id) { /* configured, or registered before */
        if (!o->auth_method || o->cfg_client_id)
            nx_oauth_set_str(&o->auth_method, pick_auth_method(o));
        op->step = o->is_client_credentials ? S_TOKEN : S_AUTHORIZE;
        run(op);
        return;
    }
    if (o->has_cimd && o->client_metadata_url) {
        nx_oauth_set_str(&o->client_id, o->client_metadata_url);
        nx_oauth_set_str(&o->auth_method, "none");
        op->step = S_AUTHORIZE;
        run(op);
        return;
    }
    if (!o->reg_ep) {
        failf(op, NX_ECONFIG, "the authorization server has no registration endpoint: set auth.client_id%s",
              o->has_cimd ? " or auth.client_metadata_url" : "");
        return;
    }
    req = json_pack("{s:s, s:[s], s:[s,s], s:[s], s:s}", "client_name", "nexo", "redirect_uris",
                    o->redirect_uri, "grant_types", "authorization_code", "refresh_token", "response_types",
                    "code", "token_endpoint_auth_method", method);
    text = json_dumps(req, JSON_COMPACT);
    http(op, "POST", o->reg_ep, text, "application/json", NULL, on_registered);
    free(text);
    json_decref(req);
}

/* -- authorization (code + PKCE S256); the redirect is read, not followed -- */

static void on_authorized(struct nx_mcp_oauth_op *op, long status, const struct nx_http_response *res,
                          const json_t *body)
{
    struct nx_mcp_oauth *o = op->o;
    char loc[4096];
    char *state = NULL, *error = NULL;

    (void)body;
    if (status < 300 || status > 399 || nx_http_response_header(res, "Location", loc, sizeof loc) <= 0 ||
        strncmp(loc, o->redirect_uri, strcspn(o->redirect_uri, "?")) != 0) {
        /* a login page: a person must approve (said once per authorization URL) */
        bool is_new = !o->pending_state || strcmp(o->pending_state, op->state) != 0;
        nx_oauth_set_str(&o->pending_state, op->state);
        nx_oauth_set_str(&o->pending_verifier, op->verifier);
        if (is_new)
            nx_warn("mcp",
                    "server %s: OAuth needs an operator: open %s , approve, then write the URL the "
                    "browser lands on (%s?code=...) to %s.code",
                    o->server, o->auth_url, o->redirect_uri, o->token_file ? o->token_file : "<token_file>");
        failf(op, NX_EPERM, "authorization needs an operator (HTTP %ld): see authorization_url", status);
        return;
    }
    state = nx_oauth_query_param(loc, "state");
    error = nx_oauth_query_param(loc, "error");
    free(op->code);
    op->code = nx_oauth_query_param(loc, "code");
    if (error || !op->code || !state || strcmp(state, op->state) != 0) {
        failf(op, NX_EPERM, "authorization refused: %.200s",
              error       ? error
              : !op->code ? "no code"
                          : "state mismatch");
    } else {
        nx_oauth_set_str(&o->auth_url, NULL);
        op->step = S_TOKEN;
        run(op);
    }
    free(state);
    free(error);
}

static void do_authorize(struct nx_mcp_oauth_op *op)
{
    struct nx_mcp_oauth *o = op->o;
    struct nx_buf q = NX_BUF_INIT;
    char challenge[64];

    if (!o->authz_ep) {
        failf(op, NX_EPROTO, "the authorization server has no authorization_endpoint");
        return;
    }
    /* the same request as the one waiting: endpoint, client, scope and resource */
    char *was[3] = {NULL, NULL, NULL};
    const char *now[3] = {o->client_id, op->scope, o->resource};
    static const char *const names[3] = {"client_id", "scope", "resource"};
    bool is_same = o->auth_url && o->client_id && !strncmp(o->auth_url, o->authz_ep, strlen(o->authz_ep));
    for (int i = 0; i < 3; i++) {
        was[i] = o->auth_url ? nx_oauth_query_param(o->auth_url, names[i]) : NULL;
        is_same = is_same && (was[i] ? now[i] && !strcmp(was[i], now[i]) : !now[i]);
        free(was[i]);
    }
    if (is_same && o->pending_state && o->pending_verifier && !op->is_step_up) {
        /* an operator may be approving the URL logged before: it stays the one, until used */
        nx_oauth_set_str(&op->state, o->pending_state);
        nx_oauth_set_str(&op->verifier, o->pending_verifier);
        nx_debug("mcp", "server %s: OAuth still waits for the operator", o->server);
        http(op, "GET", o->auth_url, NULL, NULL, NULL, on_authorized);
        return;
    }
    free(op->verifier);
    free(op->state);
    op->verifier = nx_oauth_random(48);
    op->state = nx_oauth_random(16);
    nx_mcp_oauth_pkce_challenge(op->verifier, challenge, sizeof challenge);
    nx_oauth_form_add(&q, "response_type", "code");
    nx_oauth_form_add(&q, "client_id", o->client_id);
    nx_oauth_form_add(&q, "redirect_uri", o->redirect_uri);
    nx_oauth_form_add(&q, "state", op->state);
    nx_oauth_form_add(&q, "code_challenge", challenge);
    nx_oauth_form_add(&q, "code_challenge_method", "S256");
    nx_oauth_form_add(&q, "scope", op->scope);
    nx_oauth_form_add(&q, "resource", o->resource);
    free(o->auth_url);
    {
        struct nx_buf u = NX_BUF_INIT;

        nx_buf_printf(&u, "%s%c%s", o->authz_ep, strchr(o->authz_ep, '?') ? '&' : '?', nx_buf_cstr(&q));
        o->auth_url = nx_buf_steal(&u);
    }
    nx_buf_cleanup(&q);
    nx_info("mcp", "server %s: OAuth authorization request (scope %s)", o->server,
            op->scope ? op->scope : "none");
    http(op, "GET", o->auth_url, NULL, NULL, NULL, on_authorized);
}

/* -- the token endpoint -- */

static void on_token(struct nx_mcp_oauth_op *op, long status, const struct nx_http_response *res,
                     const json_t *body)
{
    struct nx_mcp_oauth *o = op->o;
    const char *tok = json_string_value(json_object_get(body, "access_token"));
    const char *type = json_string_value(json_object_get(body, "token_type"));
    const json_t *exp = json_object_get(body, "expires_in");
    bool was_refresh = op->step == S_REFRESH;

    (void)res;
    if (status != 200 || !tok || (type && strcasecmp(type, "bearer") != 0)) {
        const char *e = json_string_value(json_object_get(body, "error"));
        const char *d = json_string_value(json_object_get(body, "error_description"));

        if (was_refresh) { /* the refresh token is spent: start over */
            nx_oauth_set_str(&o->refresh_token, NULL);
            op->step = S_PRM;
            run(op);
            return;
        }
        failf(op, NX_EPERM, "token endpoint: HTTP %ld %.100s%s%.200s", status, e ? e : "", d ? ": " : "",
              d ? d : "");
        return;
    }
    nx_oauth_set_str(&o->access_token, tok);
    if (json_is_string(json_object_get(body, "refresh_token")))
        nx_oauth_set_str(&o->refresh_token, json_string_value(json_object_get(body, "refresh_token")));
    nx_oauth_set_str(&o->scope, json_is_string(json_object_get(body, "scope"))
                                    ? json_string_value(json_object_get(body, "scope"))
                                    : op->scope);
    o->expires_at = json_is_integer(exp) && json_integer_value(exp) > 0
                        ? (long long)time(NULL) + json_integer_value(exp)
                        : 0;
    nx_oauth_set_bearer(o);
    nx_oauth_set_str(&o->pending_state, NULL);
    nx_oauth_set_str(&o->pending_verifier, NULL);
    nx_oauth_save(o);
    finish(op, 0, NULL);
}

static void do_token(struct nx_mcp_oauth_op *op, const char *grant)
{
    struct nx_mcp_oauth *o = op->o;
    struct nx_buf f = NX_BUF_INIT, a = NX_BUF_INIT;
    const char *method = o->auth_method ? o->auth_method : pick_auth_method(o);
    char err[200], *jwt = NULL;

    if (!o->token_ep) {
        failf(op, NX_EPROTO, "no token endpoint");
        return;
    }
    nx_oauth_form_add(&f, "grant_type", grant);
    if (strcmp(grant, "authorization_code") == 0) {
        nx_oauth_form_add(&f, "code", op->code);
        nx_oauth_form_add(&f, "redirect_uri", o->redirect_uri);
        nx_oauth_form_add(&f, "code_verifier", op->verifier);
    } else if (strcmp(grant, "refresh_token") == 0) {
        nx_oauth_form_add(&f, "refresh_token", o->refresh_token);
    } else {
        nx_oauth_form_add(&f, "scope", op->scope);
    }
    nx_oauth_form_add(&f, "resource", o->resource);
    if (strcmp(method, "client_secret_basic") == 0 && o->client_secret) {
        struct nx_buf cred = NX_BUF_INIT;

        nx_oauth_pct(&cred, o->client_id);
        nx_buf_putc(&cred, ':');
        nx_oauth_pct(&cred, o->client_secret);
        nx_buf_puts(&a, "Basic ");
        nx_oauth_b64(&a, nx_buf_cstr(&cred));
        nx_buf_cleanup(&cred);
    } else if (strcmp(method, "private_key_jwt") == 0) {
        if (nx_oauth_jwt_assertion(o->private_key_pem, o->signing_alg, o->client_id,
                                   o->issuer ? o->issuer : o->token_ep, &jwt, err, sizeof err) < 0) {
            nx_buf_cleanup(&f);
            failf(op, NX_ECONFIG, "%s", err);
            return;
        }
        nx_oauth_form_add(&f, "client_id", o->client_id);
        nx_oauth_form_add(&f, "client_assertion_type",
                          "urn:ietf:params:oauth:client-assertion-type:jwt-bearer");
        nx_oauth_form_add(&f, "client_assertion", jwt);
    } else {
        nx_oauth_form_add(&f, "client_id", o->client_id);
        if (strcmp(method, "client_secret_post") == 0)
            nx_oauth_form_add(&f, "client_secret", o->client_secret);
    }
    http(op, "POST", o->token_ep, nx_buf_cstr(&f), "application/x-www-form-urlencoded",
         a.len ? nx_buf_cstr(&a) : NULL, on_token);
    nx_buf_cleanup(&f);
    nx_buf_cleanup(&a);
    free(jwt);
}

static void run(struct nx_mcp_oauth_op *op)
{
    struct nx_mcp_oauth *o = op->o;

    switch (op->step) {
    case S_REFRESH:
        if (o->refresh_token && o->token_ep && !op->is_step_up && !op->is_refresh_tried) {
            op->is_refresh_tried = true;
            do_token(op, "refresh_token");
            return;
        }
        op->step = S_PRM;
        /* fall through */
    case S_PRM:
        if (o->prm_url && (!op->rm_url || strcmp(op->rm_url, o->prm_url) == 0) && o->has_asm) {
            op->step = S_REGISTER; /* known already */
            run(op);
            return;
        }
        if (op->rm_url) {
            op->urls = nx_calloc(2, sizeof *op->urls);
            op->urls[0] = nx_strdup(op->rm_url);
        } else {
            op->urls = nx_mcp_oauth_discovery_urls(o->url, 1);
        }
        op->nurl = 0;
        next_prm(op);
        return;
    case S_ASM:
        if (!op->scope && o->cfg_scopes)
            op->scope = nx_strdup(o->cfg_scopes);
        if (!op->scope && o->scopes_supported)
            op->scope = nx_strdup(o->scopes_supported);
        if (o->has_asm) {
            op->step = S_REGISTER;
            run(op);
            return;
        }
        for (size_t i = 0; op->urls && op->urls[i]; i++)
            free(op->urls[i]);
        free(op->urls);
        op->urls = nx_mcp_oauth_discovery_urls(o->as_url, 0);
        op->nurl = 0;
        next_asm(op);
        return;
    case S_REGISTER:
        if (o->refresh_token && o->client_id && !op->is_step_up && !op->is_refresh_tried) {
            op->step = S_REFRESH; /* the endpoints are known now */
            run(op);
            return;
        }
        if (!op->scope && o->cfg_scopes)
            op->scope = nx_strdup(o->cfg_scopes);
        if (!op->scope && o->scopes_supported)
            op->scope = nx_strdup(o->scopes_supported);
        do_register(op);
        return;
    case S_AUTHORIZE:
        if (nx_oauth_take_operator_code(op)) {
            op->step = S_TOKEN;
            run(op);
            return;
        }
        do_authorize(op);
        return;
    default:
        do_token(op, o->is_client_credentials ? "client_credentials" : "authorization_code");
        return;
    }
}

static void on_kick(void *arg)
{
    struct nx_mcp_oauth_op *op = arg;

    op->kick = NULL;
    run(op);
}

struct nx_mcp_oauth_op *nx_mcp_oauth_challenge(struct nx_mcp_oauth *o, long status,
                                               const char *www_authenticate, nx_mcp_oauth_done_fn done,
                                               void *udata)
{
    struct nx_mcp_oauth_op *op;
    char v[2048];

    if (!o || !done || o->op)
        return NULL;
    op = nx_calloc(1, sizeof *op);
    op->o = o;
    op->done = done;
    op->udata = udata;
    if (nx_mcp_oauth_www_param(www_authenticate, "resource_metadata", v, sizeof v) > 0)
        op->rm_url = nx_strdup(v);
    if (nx_mcp_oauth_www_param(www_authenticate, "scope", v, sizeof v) > 0)
        op->scope = nx_strdup(v);
    op->is_step_up = status == 403;
    op->step = S_REFRESH;
    o->op = op;
    nx_info("mcp", "server %s: HTTP %ld: %s", o->server, status,
            op->is_step_up ? "more scope needed (step-up authorization)" : "authorization needed");
    op->kick = nx_timer_once(nx_http_client_loop(o->http), 0, on_kick, op);
    return op;
}
