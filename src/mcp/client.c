#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/error.h"
#include "core/log.h"
#include "mcp/client.h"
#include "mcp/jsonrpc.h"

/* An MCP client session (see client.h). Requests live in a list keyed by integer id; each owns a
 * uv timer for its deadline and is freed in that timer's close callback, so a request can finish
 * from anywhere (a reply, a timeout, the transport dying, a cancel) without freeing memory that a
 * caller up the stack still uses. The client itself is freed the same careful way: free marks
 * it, and the memory goes once no callback of ours is on the stack. */

const char *const nx_mcp_protocol_versions[] = {"2025-11-25", "2025-06-18", "2025-03-26",
                                                "2024-11-05", NULL};

#define LIST_PAGES_MAX 100

struct nx_mcp_request {
    struct nx_mcp_client *c; /* NULL once finished */
    struct nx_mcp_request *prev, *next;
    uv_timer_t timer;
    long long id;
    char *method;
    nx_mcp_progress_fn progress;
    nx_mcp_result_fn done;
    void *udata;
    int early_rc; /* could not be sent: reported from the timer */
    bool is_quiet; /* a timeout is the caller's to log (a list page) */
    uint64_t log_ctx; /* the caller's log context: its callbacks run in it */
};

struct nx_mcp_client {
    uv_loop_t *loop;
    struct nx_mcp_link *t;
    struct nx_mcp_client_cb cb;
    void *udata;
    char *name;
    json_t *roots;
    json_t *client_caps;
    json_t *server_info;
    json_t *capabilities;
    char version[32];
    struct nx_mcp_request *pending;
    long long next_id;
    uint32_t init_timeout_ms;
    int start_rc;
    int busy;
    bool is_ready;
    bool is_closed;
    bool is_freed;
    struct nx_mcp_client_stats stats;
};

static const char *or_default(const char *s, const char *def)
{
    return s ? s : def;
}

/* ---- requests -------------------------------------------------------------------------- */

static void req_closed(uv_handle_t *h)
{
    struct nx_mcp_request *r = h->data;

    free(r->method);
    free(r);
}

static void unlink_req(struct nx_mcp_request *r)
{
    struct nx_mcp_client *c = r->c;

    if (!c)
        return;
    if (r->prev)
        r->prev->next = r->next;
    else
        c->pending = r->next;
    if (r->next)
        r->next->prev = r->prev;
    r->prev = r->next = NULL;
    r->c = NULL;
    uv_close((uv_handle_t *)&r->timer, req_closed);
}

static void client_release(struct nx_mcp_client *c);

/* Ends r: calls done (unless cancelled) and lets the timer free it. */
static void finish(struct nx_mcp_request *r, int rc, const json_t *result, const char *err)
{
    struct nx_mcp_client *c = r->c;

    if (!c)
        return;
    unlink_req(r);
    c->busy++;
    if (r->done) {
        uint64_t prev = nx_log_context_swap(r->log_ctx);
        r->done(rc, result, err, r->udata);
        nx_log_context_swap(prev);
    }
    c->busy--;
    client_release(c);
}

static struct nx_mcp_request *find_req(struct nx_mcp_client *c, long long id)
{
    for (struct nx_mcp_request *r = c->pending; r; r = r->next) {
        if (r->id == id)
            return r;
    }
    return NULL;
}

static void send_cancelled(struct nx_mcp_client *c, struct nx_mcp_request *r, const char *reason)
{
    json_t *n;

    if (c->is_closed || strcmp(r->method, "initialize") == 0)
        return;
    n = nx_jsonrpc_notification_new("notifications/cancelled",
                                    json_pack("{s:I, s:s}", "requestId", (json_int_t)r->id, "reason",
                                              reason ? reason : "cancelled"));
    if (c->t->vt->send(c->t, n, 0) == 0)
        c->stats.cancels_sent++;
    json_decref(n);
    c->t->vt->forget(c->t, r->id);
}

static void req_timer(struct nx_mcp_request *r);

/* A request's timeout (or its early failure), in the log context it was made in. */
static void on_req_timer(uv_timer_t *h)
{
    struct nx_mcp_request *r = h->data;
    uint64_t prev = nx_log_context_swap(r->log_ctx);

    req_timer(r); /* (r may be gone after) */
    nx_log_context_swap(prev);
}

static void req_timer(struct nx_mcp_request *r)
{
    struct nx_mcp_client *c = r->c;

    if (!c)
        return;
    if (r->early_rc) {
        char err[160];

        snprintf(err, sizeof err, "%s%s", c->start_rc ? "cannot start the server: " : "",
                 nx_strerror(c->start_rc ? c->start_rc : r->early_rc));
        finish(r, r->early_rc, NULL, err);
        return;
    }
    nx_log(r->is_quiet ? NX_LOG_DEBUG : NX_LOG_WARN, "mcp", "server %s: %s (request %lld) timed out: "
           "cancelled", c->name, r->method, r->id);
    c->busy++;
    send_cancelled(c, r, "timeout");
    c->busy--;
    finish(r, NX_ETIMEDOUT, NULL, "the MCP server did not answer in time");
}

struct nx_mcp_request *nx_mcp_client_request(struct nx_mcp_client *c, const char *method,
                                             json_t *params, uint32_t timeout_ms,
                                             nx_mcp_progress_fn progress, nx_mcp_result_fn done,
                                             void *udata)
{
    struct nx_mcp_request *r = nx_calloc(1, sizeof *r);
    json_t *msg;
    int rc;

    r->c = c;
    r->id = c->next_id++;
    r->method = nx_strdup(method);
    r->progress = progress;
    r->done = done;
    r->udata = udata;
    r->log_ctx = nx_log_context_current();
    uv_timer_init(c->loop, &r->timer);
    r->timer.data = r;
    r->next = c->pending;
    if (c->pending)
        c->pending->prev = r;
    c->pending = r;
    if (progress) {
        json_t *meta;

        if (!params)
            params = json_object();
        if (!json_is_object(meta = json_object_get(params, "_meta"))) {
            meta = json_object();
            json_object_set_new(params, "_meta", meta);
        }
        json_object_set_new(meta, "progressToken", json_integer(r->id));
    }
    msg = nx_jsonrpc_request_new(r->id, method, params);
    rc = c->is_closed ? NX_ECLOSED : c->t->vt->send(c->t, msg, timeout_ms);
    json_decref(msg);
    if (rc < 0) {
        r->early_rc = rc;
        uv_timer_start(&r->timer, on_req_timer, 0, 0);
    } else if (timeout_ms) {
        uv_timer_start(&r->timer, on_req_timer, timeout_ms, 0);
    }
    return r;
}

void nx_mcp_request_cancel(struct nx_mcp_request *r, const char *reason)
{
    struct nx_mcp_client *c;

    if (!r || !(c = r->c))
        return;
    c->busy++;
    send_cancelled(c, r, reason);
    r->done = NULL;
    finish(r, NX_ECANCELED, NULL, NULL);
    c->busy--;
    client_release(c);
}

int nx_mcp_client_notify(struct nx_mcp_client *c, const char *method, json_t *params)
{
    json_t *n = nx_jsonrpc_notification_new(method, params);
    int rc = c->is_closed ? NX_ECLOSED : c->t->vt->send(c->t, n, 0);

    json_decref(n);
    return rc;
}

/* ---- what the server sends ------------------------------------------------------------- */

static void reply(struct nx_mcp_client *c, json_t *msg)
{
    if (!c->is_closed)
        c->t->vt->send(c->t, msg, 0);
    json_decref(msg);
}

static void on_server_request(struct nx_mcp_client *c, const struct nx_jsonrpc_msg *m)
{
    char err[160];

    c->stats.server_requests++;
    if (strcmp(m->method, "ping") == 0) {
        reply(c, nx_jsonrpc_result_new(m->id, json_object()));
    } else if (strcmp(m->method, "roots/list") == 0 && json_object_get(c->client_caps, "roots")) {
        reply(c, nx_jsonrpc_result_new(m->id, json_pack("{s:O}", "roots", c->roots)));
    } else if (c->cb.on_request && c->cb.on_request(c, m->method, m->id, m->params, c->udata) == 0) {
        /* answered (or to be answered) through nx_mcp_client_reply */
    } else {
        /* sampling/createMessage, elicitation/create and anything unknown: we did not declare
         * those capabilities */
        nx_debug("mcp", "server %s asked for %s: not supported", c->name, m->method);
        snprintf(err, sizeof err, "Method not found: %s is not supported by this client", m->method);
        reply(c, nx_jsonrpc_error_new(m->id, NX_JSONRPC_METHOD_NOT_FOUND, err));
    }
}

static void on_progress(struct nx_mcp_client *c, const json_t *params)
{
    const json_t *tok = json_object_get(params, "progressToken");
    const json_t *p = json_object_get(params, "progress");
    const json_t *total = json_object_get(params, "total");
    struct nx_mcp_request *r;

    c->stats.progress++;
    if (!json_is_integer(tok) || !json_is_number(p) || !(r = find_req(c, json_integer_value(tok))) ||
        !r->progress) {
        nx_debug("mcp", "server %s: progress for an unknown token", c->name);
        return;
    }
    uint64_t prev = nx_log_context_swap(r->log_ctx);
    r->progress(json_number_value(p), json_is_number(total) ? json_number_value(total) : -1,
                json_string_value(json_object_get(params, "message")), r->udata);
    nx_log_context_swap(prev);
}

void nx_mcp_client_reply(struct nx_mcp_client *c, const json_t *id, json_t *result)
{
    if (!c || c->is_freed || !id) {
        json_decref(result);
        return;
    }
    reply(c, nx_jsonrpc_result_new(id, result));
}

void nx_mcp_client_reply_error(struct nx_mcp_client *c, const json_t *id, int code, const char *message)
{
    if (c && !c->is_freed && id)
        reply(c, nx_jsonrpc_error_new(id, code, message ? message : "error"));
}

static void on_notification(struct nx_mcp_client *c, const struct nx_jsonrpc_msg *m)
{
    if (strcmp(m->method, "notifications/progress") == 0) {
        on_progress(c, m->params);
    } else if (strcmp(m->method, "notifications/cancelled") == 0) {
        const json_t *rid = json_object_get(m->params, "requestId");

        if (rid && c->cb.on_request_cancelled)
            c->cb.on_request_cancelled(c, rid, c->udata);
    } else if (strcmp(m->method, "notifications/tools/list_changed") == 0) {
        /* server-everything sends this before its initialize result: the first listing follows
         * the handshake anyway */
        if (c->is_ready && c->cb.on_tools_changed)
            c->cb.on_tools_changed(c, c->udata);
    } else if (strcmp(m->method, "notifications/prompts/list_changed") == 0 ||
               strcmp(m->method, "notifications/resources/list_changed") == 0) {
        if (c->is_ready && c->cb.on_list_changed)
            c->cb.on_list_changed(c, m->method[14] == 'p' ? "prompts" : "resources", c->udata);
    } else if (strcmp(m->method, "notifications/message") == 0) {
        const json_t *d = json_object_get(m->params, "data");
        char *text = d ? json_dumps(d, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;

        nx_info("mcp", "server %s: log %s: %.512s", c->name,
                or_default(json_string_value(json_object_get(m->params, "level")), "info"), text ? text : "");
        free(text);
    } else {
        nx_debug("mcp", "server %s: notification %s ignored", c->name, m->method);
    }
}

static void on_response(struct nx_mcp_client *c, const struct nx_jsonrpc_msg *m)
{
    struct nx_mcp_request *r = json_is_integer(m->id) ? find_req(c, json_integer_value(m->id)) : NULL;
    char err[512];

    if (!r) {
        c->stats.unknown_replies++;
        nx_warn("mcp", "server %s: a response to an unknown request id (ignored)", c->name);
        return;
    }
    if (m->kind == NX_JSONRPC_RESULT) {
        finish(r, 0, m->result, NULL);
    } else {
        snprintf(err, sizeof err, "code %lld: %.400s", m->error_code, m->error_message);
        finish(r, NX_EPROTO, NULL, err);
    }
}

/* An error reply to request id that cannot be read (its "error" is not an object, or lacks its
 * code or message): the request is over all the same, and fails now instead of at its timeout. */
static void on_bad_reply(struct nx_mcp_client *c, long long id, const char *why)
{
    struct nx_mcp_request *r = find_req(c, id);
    char err[256];

    if (!r)
        return;
    snprintf(err, sizeof err, "the server's error reply is malformed: %s", why);
    c->busy++;
    finish(r, NX_EPROTO, NULL, err);
    c->busy--;
    client_release(c);
}

static void on_message(const json_t *msg, void *udata)
{
    struct nx_mcp_client *c = udata;
    struct nx_jsonrpc_msg m;
    char err[160];

    if (c->is_freed)
        return;
    if (nx_jsonrpc_classify(msg, &m, err, sizeof err) < 0) {
        c->stats.malformed++;
        nx_warn("mcp", "server %s: malformed message: %s", c->name, err);
        if (json_is_integer(m.id))
            on_bad_reply(c, json_integer_value(m.id), err);
        return;
    }
    c->busy++;
    switch (m.kind) {
    case NX_JSONRPC_REQUEST:
        on_server_request(c, &m);
        break;
    case NX_JSONRPC_NOTIFICATION:
        on_notification(c, &m);
        break;
    default:
        on_response(c, &m);
        break;
    }
    c->busy--;
    client_release(c);
}

static void on_request_failed(long long id, int rc, const char *why, void *udata)
{
    struct nx_mcp_client *c = udata;
    struct nx_mcp_request *r = find_req(c, id);

    if (r && !c->is_freed) {
        c->busy++;
        finish(r, rc, NULL, why);
        c->busy--;
        client_release(c);
    }
}

static void fail_all(struct nx_mcp_client *c, int rc, const char *why)
{
    while (c->pending)
        finish(c->pending, rc, NULL, why);
}

static void on_transport_closed(int rc, const char *why, void *udata)
{
    struct nx_mcp_client *c = udata;

    if (c->is_freed || c->is_closed)
        return;
    c->is_closed = true;
    c->is_ready = false;
    c->busy++;
    fail_all(c, NX_ECLOSED, why);
    if (c->cb.on_closed)
        c->cb.on_closed(c, rc, why, c->udata);
    c->busy--;
    client_release(c);
}

int nx_mcp_link_deliver(struct nx_mcp_link *t, const char *text, size_t len)
{
    char err[160];
    json_t *v = nx_jsonrpc_load(text, len, err, sizeof err);

    if (!v) {
        struct nx_mcp_client *c = t->udata;

        if (t->cb.on_message == on_message && c)
            c->stats.malformed++;
        nx_warn("mcp", "server %s: %s", t->name, err);
        return NX_EPROTO;
    }
    if (json_is_array(v)) {
        for (size_t i = 0; i < json_array_size(v); i++)
            t->cb.on_message(json_array_get(v, i), t->udata);
    } else {
        t->cb.on_message(v, t->udata);
    }
    json_decref(v);
    return 0;
}

/* ---- handshake ------------------------------------------------------------------------- */

static void on_initialized(int rc, const json_t *result, const char *err, void *udata)
{
    struct nx_mcp_client *c = udata;
    const char *v = json_string_value(json_object_get(result, "protocolVersion"));
    char msg[160];
    bool is_known = false;

    if (c->is_freed)
        return;
    if (rc == 0) {
        for (size_t i = 0; v && nx_mcp_protocol_versions[i]; i++)
            is_known = is_known || strcmp(v, nx_mcp_protocol_versions[i]) == 0;
        if (!is_known) {
            snprintf(msg, sizeof msg, "the server wants protocol version \"%.40s\", which this client "
                     "does not speak", v ? v : "(none)");
            rc = NX_EPROTO;
            err = msg;
        }
    }
    if (rc == 0) {
        snprintf(c->version, sizeof c->version, "%s", v);
        c->server_info = json_incref(json_object_get(result, "serverInfo"));
        c->capabilities = json_incref(json_object_get(result, "capabilities"));
        c->t->vt->set_protocol_version(c->t, c->version);
        nx_mcp_client_notify(c, "notifications/initialized", NULL);
        c->is_ready = true;
        nx_info("mcp", "server %s: ready (%s, protocol %s)", c->name,
                or_default(json_string_value(json_object_get(c->server_info, "name")), "?"), c->version);
    } else {
        nx_warn("mcp", "server %s: initialize failed: %s", c->name, err ? err : nx_strerror(rc));
    }
    if (c->cb.on_ready)
        c->cb.on_ready(c, rc, err, c->udata);
}

int nx_mcp_client_new(uv_loop_t *loop, struct nx_mcp_link *t,
                      const struct nx_mcp_client_opts *opts, const struct nx_mcp_client_cb *cb,
                      void *udata, struct nx_mcp_client **out)
{
    struct nx_mcp_client *c;
    json_t *params;
    int rc;

    if (!loop || !t || !opts || !cb)
        return NX_EINVAL;
    c = nx_calloc(1, sizeof *c);
    c->loop = loop;
    c->t = t;
    c->cb = *cb;
    c->udata = udata;
    c->name = nx_strdup(opts->name ? opts->name : t->name);
    c->roots = json_is_array(opts->roots) ? json_deep_copy(opts->roots) : json_array();
    c->client_caps = json_is_object(opts->capabilities) ? json_deep_copy(opts->capabilities)
                                                        : json_pack("{s:{s:b}}", "roots", "listChanged", 0);
    c->next_id = 1;
    c->init_timeout_ms = opts->initialize_timeout_ms ? opts->initialize_timeout_ms : 10000;
    t->cb.on_message = on_message;
    t->cb.on_request_failed = on_request_failed;
    t->cb.on_closed = on_transport_closed;
    t->udata = c;
    if ((rc = t->vt->start(t)) < 0) {
        c->is_closed = true; /* the initialize request below fails on the next iteration */
        c->start_rc = rc;
    }
    params = json_pack("{s:s, s:O, s:{s:s, s:s}}", "protocolVersion", nx_mcp_protocol_versions[0],
                       "capabilities", c->client_caps, "clientInfo", "name", "nexo", "version", NEXO_VERSION);
    nx_mcp_client_request(c, "initialize", params, c->init_timeout_ms, NULL, on_initialized, c);
    *out = c;
    return 0;
}

static void client_release(struct nx_mcp_client *c)
{
    if (!c->is_freed || c->busy > 0)
        return;
    c->busy++; /* fail_all's callbacks must not re-enter this */
    fail_all(c, NX_ECLOSED, "the MCP client was closed");
    c->t->vt->close(c->t);
    json_decref(c->roots);
    json_decref(c->client_caps);
    json_decref(c->server_info);
    json_decref(c->capabilities);
    free(c->name);
    free(c);
}

void nx_mcp_client_free(struct nx_mcp_client *c)
{
    if (!c || c->is_freed)
        return;
    c->is_freed = true;
    c->is_ready = false;
    client_release(c);
}

/* ---- lists with pagination, resources and prompts ------------------------------------ */

struct list_op {
    struct nx_mcp_client *c;
    json_t *items;
    char *method;
    char *key;
    uint32_t timeout_ms;
    int pages;
    nx_mcp_result_fn done;
    void *udata;
};

static void list_page(struct list_op *op, const char *cursor);

static void on_list_page(int rc, const json_t *result, const char *err, void *udata)
{
    struct list_op *op = udata;
    const json_t *items = json_object_get(result, op->key);
    const char *cursor = json_string_value(json_object_get(result, "nextCursor"));
    char msg[160];
    json_t *all;

    if (rc == 0 && !json_is_array(items)) {
        snprintf(msg, sizeof msg, "%s result without a \"%s\" array", op->method, op->key);
        rc = NX_EPROTO;
        err = msg;
    }
    if (rc == 0) {
        json_array_extend(op->items, (json_t *)items);
        if (cursor && cursor[0] && ++op->pages < LIST_PAGES_MAX && !op->c->is_freed) {
            list_page(op, cursor);
            return;
        }
        if (cursor && cursor[0])
            nx_warn("mcp", "server %s: %s stopped after %d pages", op->c->name, op->method, op->pages);
    }
    all = json_pack("{s:O}", op->key, op->items);
    op->done(rc, rc == 0 ? all : NULL, err, op->udata);
    json_decref(all);
    json_decref(op->items);
    free(op->method);
    free(op->key);
    free(op);
}

static void list_page(struct list_op *op, const char *cursor)
{
    json_t *params = cursor ? json_pack("{s:s}", "cursor", cursor) : NULL;
    struct nx_mcp_request *r;

    r = nx_mcp_client_request(op->c, op->method, params, op->timeout_ms, NULL, on_list_page, op);
    r->is_quiet = true; /* the list's caller logs its failure, once for a run of them (retries) */
}

void nx_mcp_client_list(struct nx_mcp_client *c, const char *method, const char *key,
                        uint32_t timeout_ms, nx_mcp_result_fn done, void *udata)
{
    struct list_op *op = nx_calloc(1, sizeof *op);

    op->c = c;
    op->items = json_array();
    op->method = nx_strdup(method);
    op->key = nx_strdup(key);
    op->timeout_ms = timeout_ms;
    op->done = done;
    op->udata = udata;
    list_page(op, NULL);
}

void nx_mcp_client_list_tools(struct nx_mcp_client *c, uint32_t timeout_ms, nx_mcp_result_fn done,
                              void *udata)
{
    nx_mcp_client_list(c, "tools/list", "tools", timeout_ms, done, udata);
}

struct nx_mcp_request *nx_mcp_client_read_resource(struct nx_mcp_client *c, const char *uri,
                                                   uint32_t timeout_ms, nx_mcp_result_fn done,
                                                   void *udata)
{
    return nx_mcp_client_request(c, "resources/read", json_pack("{s:s}", "uri", uri ? uri : ""),
                                 timeout_ms, NULL, done, udata);
}

struct nx_mcp_request *nx_mcp_client_get_prompt(struct nx_mcp_client *c, const char *name,
                                                const json_t *arguments, uint32_t timeout_ms,
                                                nx_mcp_result_fn done, void *udata)
{
    json_t *params = json_pack("{s:s}", "name", name ? name : "");

    if (json_is_object(arguments))
        json_object_set_new(params, "arguments", json_deep_copy(arguments));
    return nx_mcp_client_request(c, "prompts/get", params, timeout_ms, NULL, done, udata);
}

/* ---- accessors ------------------------------------------------------------------------- */

void nx_mcp_client_set_roots(struct nx_mcp_client *c, const json_t *roots)
{
    if (!c || !json_is_array(roots))
        return;
    json_decref(c->roots);
    c->roots = json_deep_copy(roots);
}

bool nx_mcp_client_is_ready(const struct nx_mcp_client *c)
{
    return c && c->is_ready && !c->is_closed;
}

const char *nx_mcp_client_protocol_version(const struct nx_mcp_client *c)
{
    return c ? c->version : "";
}

const json_t *nx_mcp_client_server_info(const struct nx_mcp_client *c)
{
    return c ? c->server_info : NULL;
}

const json_t *nx_mcp_client_capabilities(const struct nx_mcp_client *c)
{
    return c ? c->capabilities : NULL;
}

void nx_mcp_client_stats(const struct nx_mcp_client *c, struct nx_mcp_client_stats *out)
{
    if (c)
        *out = c->stats;
    else
        memset(out, 0, sizeof *out);
}
