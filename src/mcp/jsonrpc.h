#ifndef NX_MCP_JSONRPC_H
#define NX_MCP_JSONRPC_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "core/buf.h"

/* JSON-RPC 2.0 framing for MCP: newline-delimited messages (stdio), classification of one parsed
 * message, and builders. Pure functions; any thread. */

enum {
    NX_JSONRPC_PARSE_ERROR = -32700,
    NX_JSONRPC_INVALID_REQUEST = -32600,
    NX_JSONRPC_METHOD_NOT_FOUND = -32601,
    NX_JSONRPC_INVALID_PARAMS = -32602,
    NX_JSONRPC_INTERNAL_ERROR = -32603,
};

/* Splits a byte stream into lines. A line ends at '\n'; one '\r' before it is dropped; empty
 * lines are skipped. A line longer than max_line bytes is dropped whole, up to its newline,
 * never buffered past the cap. */
struct nx_jsonrpc_lines {
    struct nx_buf buf;
    size_t max_line;
    bool is_skipping; /* inside an over-long line */
    size_t dropped;   /* over-long lines dropped so far */
};

/* Return 0 to go on, non-zero to stop (feed returns that value). */
typedef int (*nx_jsonrpc_line_fn)(const char *line, size_t len, void *udata);

/* max_line 0 = 4 MiB. */
void nx_jsonrpc_lines_init(struct nx_jsonrpc_lines *l, size_t max_line);
void nx_jsonrpc_lines_cleanup(struct nx_jsonrpc_lines *l);
/* Calls fn for each complete line in data. Returns 0, fn's non-zero value, or NX_ETOOBIG when a
 * line was dropped for its length (the lines after it are still delivered). */
int nx_jsonrpc_lines_feed(struct nx_jsonrpc_lines *l, const char *data, size_t len,
                          nx_jsonrpc_line_fn fn, void *udata);

enum nx_jsonrpc_kind {
    NX_JSONRPC_REQUEST = 1,
    NX_JSONRPC_NOTIFICATION,
    NX_JSONRPC_RESULT,
    NX_JSONRPC_ERROR,
};

/* One message, its parts borrowed from the JSON value it was classified from. */
struct nx_jsonrpc_msg {
    int kind;                  /* enum nx_jsonrpc_kind */
    const char *method;        /* requests and notifications */
    const json_t *id;          /* requests and responses: an integer or a string; NULL for an
                                * error response with id null */
    const json_t *params;      /* object or array, or NULL */
    const json_t *result;      /* NX_JSONRPC_RESULT */
    long long error_code;      /* NX_JSONRPC_ERROR */
    const char *error_message; /* NX_JSONRPC_ERROR */
};

/* Parses text as JSON (one value; objects and arrays only). New reference, or NULL with why in
 * err. */
json_t *nx_jsonrpc_load(const char *text, size_t len, char *err, size_t errlen);
/* Classifies v as one JSON-RPC 2.0 message. 0, or NX_EPROTO with why in err. An error response
 * (one with "error") that is malformed but has an integer or string id also gets NX_EPROTO, with
 * out->id set: the answer to that request came, and cannot be read. */
int nx_jsonrpc_classify(const json_t *v, struct nx_jsonrpc_msg *out, char *err, size_t errlen);

/* Builders; each returns a new reference. params/result are stolen (params may be NULL). */
json_t *nx_jsonrpc_request_new(long long id, const char *method, json_t *params);
json_t *nx_jsonrpc_notification_new(const char *method, json_t *params);
json_t *nx_jsonrpc_result_new(const json_t *id, json_t *result);
/* id NULL gives "id": null. */
json_t *nx_jsonrpc_error_new(const json_t *id, int code, const char *message);

#endif
