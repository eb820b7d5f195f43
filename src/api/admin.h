#ifndef NX_API_ADMIN_H
#define NX_API_ADMIN_H

#include <jansson.h>
#include <stdbool.h>

#include "http/server.h"

/* True when the request carries `Authorization: Bearer <token>` (or x-api-key: <token>)
 * matching `token`, compared in constant time. A NULL token allows everything. */
bool nx_api_authorized(const struct nx_http_req *req, const char *token);
/* Answers 401 with a WWW-Authenticate header. */
void nx_api_respond_unauthorized(struct nx_http_req *req);

/* The admin console: GET / (the page, embedded from web/admin/), GET /admin/status (JSON from
 * `status`) and POST /admin/log-level {"level": "..."}. When token_ptr points at a non-NULL
 * token, all of them need it. */
typedef json_t *(*nx_admin_status_fn)(void *arg);
void nx_api_admin_register(struct nx_http_server *srv, const char *const *token_ptr,
                           nx_admin_status_fn status, void *arg);

#endif
