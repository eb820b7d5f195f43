#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "channels/policy.h"
#include "core/alloc.h"
#include "core/buf.h"
#include "core/error.h"
#include "core/log.h"

/* The admin API for pairing (mounted on the admin listener by the daemon):
 *   GET  /admin/pairing                 -> [{state, channel, instance, sender, chat, code?, ...}]
 *   POST /admin/pairing/approve          {"code": "ABCD2345"}          -> 200 {approved row} | 404
 *   POST /admin/pairing/revoke           {"channel": "telegram[.inst]", "sender": "1002"} -> 200 | 404
 * The same operations as `nexo pairing`; answers come once the store has run them. */

struct admin_ctx {
    struct nx_store *store;
    nx_pairing_auth_fn auth;
    void *arg;
};

struct areq {
    struct nx_http_req *req; /* NULL once the client went away */
    struct nx_pairing_row row;
};

static void on_abort(void *arg)
{
    struct areq *a = arg;
    a->req = NULL;
}

static struct areq *areq_new(struct nx_http_req *req)
{
    struct areq *a = nx_calloc(1, sizeof *a);
    a->req = req;
    nx_http_req_on_abort(req, on_abort, a);
    return a;
}

static void areq_free(struct areq *a)
{
    free(a->row.channel);
    free(a->row.instance);
    free(a->row.sender);
    free(a->row.chat);
    free(a->row.code);
    free(a);
}

static void respond_json(struct nx_http_req *req, int status, json_t *o)
{
    nx_http_respond_json(req, status, o);
    json_decref(o);
}

static json_t *row_json(const struct nx_pairing_row *r)
{
    json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:s, s:I}", "state", r->is_approved ? "approved" : "pending",
                          "channel", r->channel ? r->channel : "", "instance", r->instance ? r->instance : "",
                          "sender", r->sender ? r->sender : "", "chat", r->chat ? r->chat : "",
                          "created_at", (json_int_t)r->created_at);
    if (r->code)
        json_object_set_new(o, "code", json_string(r->code));
    if (r->is_approved)
        json_object_set_new(o, "approved_at", json_integer((json_int_t)r->approved_at));
    else
        json_object_set_new(o, "expires_at", json_integer((json_int_t)r->expires_at));
    return o;
}

static void on_list(int rc, struct nx_pairing_row *v, size_t n, void *arg)
{
    struct areq *a = arg;
    if (a->req && rc < 0) {
        nx_http_req_on_abort(a->req, NULL, NULL);
        nx_http_respond_error(a->req, 503, "store_error", nx_strerror(rc));
    } else if (a->req) {
        json_t *arr = json_array();
        for (size_t i = 0; i < n; i++)
            json_array_append_new(arr, row_json(&v[i]));
        nx_http_req_on_abort(a->req, NULL, NULL);
        respond_json(a->req, 200, arr);
    }
    nx_pairing_rows_free(v, n);
    areq_free(a);
}

static void on_changed(int rc, void *arg)
{
    struct areq *a = arg;
    if (a->req) {
        nx_http_req_on_abort(a->req, NULL, NULL);
        if (rc == NX_ENOENT)
            nx_http_respond_error(a->req, 404, "not_found",
                                  a->row.sender ? "no such sender on that channel"
                                                : "no such pending code (wrong, expired or used)");
        else if (rc < 0)
            nx_http_respond_error(a->req, 503, "store_error", nx_strerror(rc));
        else
            respond_json(a->req, 200, row_json(&a->row));
    }
    areq_free(a);
}

static json_t *body_json(struct nx_http_req *req)
{
    size_t len = 0;
    const char *body = nx_http_req_body(req, &len);
    json_t *o = json_loadb(body ? body : "", len, JSON_REJECT_DUPLICATES, NULL);
    if (!json_is_object(o)) {
        json_decref(o);
        nx_http_respond_error(req, 400, "invalid_request_error", "the body must be a JSON object");
        return NULL;
    }
    return o;
}

static void on_get(struct nx_http_req *req, void *udata)
{
    struct admin_ctx *c = udata;
    if (!c->auth(req, c->arg))
        return;
    nx_pairing_list(c->store, NULL, NULL, on_list, areq_new(req));
}

static void on_approve(struct nx_http_req *req, void *udata)
{
    struct admin_ctx *c = udata;
    char code[NX_PAIRING_CODE_LEN + 1];
    if (!c->auth(req, c->arg))
        return;
    json_t *o = body_json(req);
    if (!o)
        return;
    const char *given = json_string_value(json_object_get(o, "code"));
    if (!given || nx_pairing_code_normalize(given, code) < 0) {
        nx_http_respond_error(req, 400, "invalid_request_error",
                              "\"code\" must be a pairing code (8 characters of " NX_PAIRING_ALPHABET ")");
        json_decref(o);
        return;
    }
    struct areq *a = areq_new(req);
    nx_pairing_approve(c->store, code, &a->row, on_changed, a);
    json_decref(o);
}

static void on_revoke(struct nx_http_req *req, void *udata)
{
    struct admin_ctx *c = udata;
    if (!c->auth(req, c->arg))
        return;
    json_t *o = body_json(req);
    if (!o)
        return;
    const char *chan = json_string_value(json_object_get(o, "channel"));
    const char *sender = json_string_value(json_object_get(o, "sender"));
    const char *dot = chan ? strchr(chan, '.') : NULL;
    size_t tl = chan ? (dot ? (size_t)(dot - chan) : strlen(chan)) : 0;
    if (!chan || !sender || !*sender || tl == 0 || tl > 63 || (dot && !dot[1])) {
        nx_http_respond_error(req, 400, "invalid_request_error",
                              "expected {\"channel\": \"<type>[.<instance>]\", \"sender\": \"<id>\"}");
        json_decref(o);
        return;
    }
    struct areq *a = areq_new(req);
    a->row.is_approved = false;
    a->row.channel = nx_strndup(chan, tl);
    a->row.instance = nx_strdup(dot ? dot + 1 : "default");
    a->row.sender = nx_strdup(sender);
    nx_pairing_revoke(c->store, a->row.channel, a->row.instance, a->row.sender, on_changed, a);
    json_decref(o);
}

void nx_pairing_admin_mount(struct nx_http_server *srv, struct nx_store *store, nx_pairing_auth_fn auth,
                            void *arg)
{
    static struct admin_ctx ctx; /* lives as long as the process: one admin listener */
    struct admin_ctx *c = &ctx;
    if (!store)
        return;
    c->store = store;
    c->auth = auth;
    c->arg = arg;
    nx_http_server_route(srv, "GET", "/admin/pairing", on_get, c);
    nx_http_server_route(srv, "POST", "/admin/pairing/approve", on_approve, c);
    nx_http_server_route(srv, "POST", "/admin/pairing/revoke", on_revoke, c);
}
