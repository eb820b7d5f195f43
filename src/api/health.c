#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "api/admin.h"
#include "api/health.h"
#include "core/buf.h"
#include "core/metrics.h"

static const char content_json[] = "application/json";

bool nx_readiness_ok(const struct nx_readiness *r)
{
    return r->config_loaded && r->store_open && r->bus && nx_bus_is_ready(r->bus) && !r->is_stopping;
}

static void on_healthz(struct nx_http_req *req, void *udata)
{
    (void)udata;
    static const char body[] = "{\"status\":\"ok\"}";
    nx_http_respond(req, 200, content_json, body, sizeof body - 1);
}

static void on_readyz(struct nx_http_req *req, void *udata)
{
    const struct nx_readiness *r = udata;
    bool ok = nx_readiness_ok(r);
    json_t *o = json_object();
    json_object_set_new(o, "status", json_string(ok ? "ready" : "not_ready"));
    json_t *checks = json_object();
    json_object_set_new(checks, "config", json_boolean(r->config_loaded));
    json_object_set_new(checks, "store", json_boolean(r->store_open));
    bool bus_ready = r->bus && nx_bus_is_ready(r->bus);
    json_object_set_new(checks, "bus", json_boolean(bus_ready));
    json_object_set_new(o, "checks", checks);
    json_object_set_new(o, "bus_mode", json_string(r->bus ? nx_bus_mode(r->bus) : "none"));
    if (!ok) {
        json_t *missing = json_array();
        if (!r->config_loaded)
            json_array_append_new(missing, json_string("config: not loaded"));
        if (!r->store_open)
            json_array_append_new(missing, json_string("store: database not open yet"));
        if (!bus_ready)
            json_array_append_new(missing, json_string("bus: not connected and not in fallback"));
        if (r->is_stopping)
            json_array_append_new(missing, json_string("shutting down"));
        json_object_set_new(o, "missing", missing);
    }
    nx_http_respond_json(req, ok ? 200 : 503, o);
    json_decref(o);
}

void nx_api_health_register(struct nx_http_server *srv, struct nx_readiness *r)
{
    nx_http_server_route(srv, "GET", "/healthz", on_healthz, NULL);
    nx_http_server_route(srv, "GET", "/health", on_healthz, NULL);
    nx_http_server_route(srv, "GET", "/readyz", on_readyz, r);
    nx_http_server_route(srv, "GET", "/ready", on_readyz, r);
}

static void on_metrics(struct nx_http_req *req, void *udata)
{
    const char *const *token = udata;
    if (!nx_api_authorized(req, *token)) {
        nx_api_respond_unauthorized(req);
        return;
    }
    struct nx_buf out = NX_BUF_INIT;
    nx_metrics_render(&out);
    nx_http_respond(req, 200, "text/plain; version=0.0.4; charset=utf-8", nx_buf_cstr(&out),
                    out.len);
    nx_buf_cleanup(&out);
}

void nx_api_metrics_register(struct nx_http_server *srv, const char *const *token_ptr)
{
    nx_http_server_route(srv, "GET", "/metrics", on_metrics, (void *)token_ptr);
}
