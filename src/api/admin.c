#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "api/admin.h"
#include "api/assets.h"
#include "core/log.h"

/* Constant time over the token's length; a length mismatch still walks the whole token. */
static bool token_equal(const char *v, size_t len, const char *token)
{
    size_t tlen = strlen(token);
    unsigned char diff = (unsigned char)(!v || len != tlen);
    for (size_t i = 0; i < tlen; i++)
        diff |= (unsigned char)(token[i] ^ (v && i < len ? v[i] : 0));
    return diff == 0;
}

bool nx_api_authorized(const struct nx_http_req *req, const char *token)
{
    if (!token)
        return true;
    size_t blen = 0, klen = 0;
    const char *bearer = nx_http_req_header(req, "authorization", &blen);
    const char *key = nx_http_req_header(req, "x-api-key", &klen);
    if (bearer && blen > 7 && strncasecmp(bearer, "Bearer ", 7) == 0) {
        bearer += 7;
        blen -= 7;
    } else {
        bearer = NULL;
    }
    /* either: an SDK given both a key and a proxy's token sends both (both compared, always) */
    bool by_bearer = token_equal(bearer, blen, token), by_key = token_equal(key, klen, token);
    return by_bearer || by_key;
}

void nx_api_respond_unauthorized(struct nx_http_req *req)
{
    nx_http_req_add_header(req, "www-authenticate", "Bearer realm=\"nexo\"");
    nx_http_respond_error(req, 401, "authentication_error",
                          "missing or invalid bearer token (Authorization: Bearer <auth_token>)");
}

struct admin {
    const char *const *token;
    nx_admin_status_fn status;
    void *arg;
};

static void on_index(struct nx_http_req *req, void *udata)
{
    struct admin *a = udata;
    if (!nx_api_authorized(req, *a->token)) {
        nx_api_respond_unauthorized(req);
        return;
    }
    const struct nx_asset *page = nx_asset_find("index.html");
    if (!page) {
        nx_http_respond_error(req, 404, "not_found", "no admin page in this build");
        return;
    }
    nx_http_respond(req, 200, "text/html; charset=utf-8", (const char *)page->data, page->len);
}

static void on_status(struct nx_http_req *req, void *udata)
{
    struct admin *a = udata;
    if (!nx_api_authorized(req, *a->token)) {
        nx_api_respond_unauthorized(req);
        return;
    }
    json_t *o = a->status(a->arg);
    nx_http_respond_json(req, 200, o);
    json_decref(o);
}

/* POST /admin/log-level {"level":"debug"}: changes the log level until the next restart. */
static void on_log_level(struct nx_http_req *req, void *udata)
{
    struct admin *a = udata;
    if (!nx_api_authorized(req, *a->token)) {
        nx_api_respond_unauthorized(req);
        return;
    }
    size_t len = 0;
    const char *body = nx_http_req_body(req, &len);
    json_error_t jerr;
    json_t *o = json_loadb(body ? body : "", len, JSON_REJECT_DUPLICATES, &jerr);
    if (!o) {
        char msg[256];
        snprintf(msg, sizeof msg, "invalid JSON at line %d column %d: %s", jerr.line, jerr.column,
                 jerr.text);
        nx_http_respond_error(req, 400, "invalid_request_error", msg);
        return;
    }
    const char *level = json_string_value(json_object_get(o, "level"));
    enum nx_log_level lvl;
    if (!level || nx_log_parse_level(level, &lvl) < 0) {
        nx_http_respond_error(req, 400, "invalid_request_error",
                              "\"level\" must be one of trace, debug, info, warn, error, off");
        json_decref(o);
        return;
    }
    nx_log_set_level(lvl);
    nx_log_write(NX_LOG_INFO, "admin", "log level set to %s", nx_log_level_name(lvl));
    char out[64];
    int n = snprintf(out, sizeof out, "{\"level\":\"%s\"}", nx_log_level_name(lvl));
    nx_http_respond(req, 200, "application/json", out, (size_t)n);
    json_decref(o);
}

void nx_api_admin_register(struct nx_http_server *srv, const char *const *token_ptr,
                           nx_admin_status_fn status, void *arg)
{
    /* Lives as long as the process: one per admin listener. */
    static struct admin a;
    a.token = token_ptr;
    a.status = status;
    a.arg = arg;
    nx_http_server_route(srv, "GET", "/", on_index, &a);
    nx_http_server_route(srv, "GET", "/admin/status", on_status, &a);
    nx_http_server_route(srv, "POST", "/admin/log-level", on_log_level, &a);
}
