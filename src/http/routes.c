/* The listener's routes: registration and matching (dispatch is server.c's on_req). */
#include <string.h>

#include "core/alloc.h"
#include "http/server_internal.h"

bool nx_httpsrv_method_matches(const struct nx_http_route *r, h2o_iovec_t m)
{
    if (!r->method)
        return true;
    if (h2o_memis(m.base, m.len, r->method, strlen(r->method)))
        return true;
    return h2o_memis(m.base, m.len, H2O_STRLIT("HEAD")) && strcmp(r->method, "GET") == 0;
}

bool nx_httpsrv_path_matches(const struct nx_http_route *r, const char *p, size_t len)
{
    if (r->is_prefix)
        return len >= r->path_len && memcmp(p, r->path, r->path_len) == 0;
    return len == r->path_len && memcmp(p, r->path, len) == 0;
}

const struct nx_http_route *nx_httpsrv_route_for(const struct nx_http_server *srv, const char *p, size_t len)
{
    for (size_t i = 0; i < srv->nroutes; i++)
        if (nx_httpsrv_path_matches(&srv->routes[i], p, len))
            return &srv->routes[i];
    return NULL;
}

void nx_http_server_route_ex(struct nx_http_server *srv, const char *method, const char *path,
                             nx_http_handler_fn fn, void *udata, const struct nx_http_route_opts *opts)
{
    struct nx_http_route *r;
    size_t len = strlen(path);

    srv->routes = nx_realloc(srv->routes, (srv->nroutes + 1) * sizeof *srv->routes);
    r = &srv->routes[srv->nroutes++];
    memset(r, 0, sizeof *r);
    r->method = method ? nx_strdup(method) : NULL;
    r->is_prefix = len && path[len - 1] == '*';
    r->path = nx_strndup(path, r->is_prefix ? len - 1 : len);
    r->path_len = r->is_prefix ? len - 1 : len;
    r->fn = fn;
    r->udata = udata;
    if (opts)
        r->opts = *opts;
}

void nx_http_server_route(struct nx_http_server *srv, const char *method, const char *path,
                          nx_http_handler_fn fn, void *udata)
{
    nx_http_server_route_ex(srv, method, path, fn, udata, NULL);
}
