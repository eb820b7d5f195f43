#ifndef NX_API_HEALTH_H
#define NX_API_HEALTH_H

#include <stdbool.h>

#include "bus/bus.h"
#include "http/server.h"

/* What readiness is made of. The daemon owns it and flips the flags on the loop thread. */
struct nx_readiness {
    bool config_loaded;
    bool store_open;
    bool is_stopping;
    struct nx_bus *bus;   /* its mode ("in-process", "nats", "fallback") and readiness */
};

bool nx_readiness_ok(const struct nx_readiness *r);

/* GET /healthz and /health: 200 {"status":"ok"} while the process runs.
 * GET /readyz and /ready: 200 {"status":"ready",...} or 503 {"status":"not_ready","missing":[...]}. */
void nx_api_health_register(struct nx_http_server *srv, struct nx_readiness *r);

/* GET /metrics in the Prometheus text format; needs the token when *token_ptr is set. */
void nx_api_metrics_register(struct nx_http_server *srv, const char *const *token_ptr);

#endif
