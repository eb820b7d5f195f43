#include <stdio.h>
#include <string.h>

#include "core/error.h"
#include "mcp/jsonrpc.h"

/* JSON-RPC 2.0 framing (newline-delimited, as MCP's stdio transport) and message classification.
 * Everything here is fed by a child process or a remote server, so every buffer has a cap and
 * every shape is checked before use (tests/fuzz/fuzz_jsonrpc.c). */

#define DEFAULT_MAX_LINE (4u * 1024 * 1024)

void nx_jsonrpc_lines_init(struct nx_jsonrpc_lines *l, size_t max_line)
{
    memset(l, 0, sizeof *l);
    nx_buf_init(&l->buf);
    l->max_line = max_line ? max_line : DEFAULT_MAX_LINE;
}

void nx_jsonrpc_lines_cleanup(struct nx_jsonrpc_lines *l)
{
    nx_buf_cleanup(&l->buf);
}

static int emit(struct nx_jsonrpc_lines *l, const char *line, size_t len, nx_jsonrpc_line_fn fn,
                void *udata)
{
    if (len > 0 && line[len - 1] == '\r')
        len--;
    if (len == 0)
        return 0;
    if (len > l->max_line) {
        l->dropped++;
        return NX_ETOOBIG;
    }
    return fn(line, len, udata);
}

int nx_jsonrpc_lines_feed(struct nx_jsonrpc_lines *l, const char *data, size_t len,
                          nx_jsonrpc_line_fn fn, void *udata)
{
    int result = 0;

    while (len > 0) {
        const char *nl = memchr(data, '\n', len);
        size_t take = nl ? (size_t)(nl - data) : len;
        int rc;

        if (l->is_skipping) {
            if (nl)
                l->is_skipping = false;
        } else if (!nl) {
            /* a partial line: keep it, unless it is already past the cap (+1 for a '\r') */
            if (l->buf.len + take > l->max_line + 1) {
                nx_buf_reset(&l->buf);
                l->is_skipping = true;
                l->dropped++;
                result = NX_ETOOBIG;
            } else {
                nx_buf_append(&l->buf, data, take);
            }
        } else if (l->buf.len > 0) {
            if (l->buf.len + take > l->max_line + 1) {
                l->dropped++;
                rc = NX_ETOOBIG;
            } else {
                nx_buf_append(&l->buf, data, take);
                rc = emit(l, l->buf.data, l->buf.len, fn, udata);
            }
            nx_buf_reset(&l->buf);
            if (rc == NX_ETOOBIG)
                result = rc;
            else if (rc != 0)
                return rc;
        } else {
            rc = emit(l, data, take, fn, udata);
            if (rc == NX_ETOOBIG)
                result = rc;
            else if (rc != 0)
                return rc;
        }
        if (!nl)
            break;
        data += take + 1;
        len -= take + 1;
    }
    return result;
}

json_t *nx_jsonrpc_load(const char *text, size_t len, char *err, size_t errlen)
{
    json_error_t je;
    json_t *v;

    v = json_loadb(text, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &je);
    if (!v) {
        snprintf(err, errlen, "invalid JSON at %d:%d: %s", je.line, je.column, je.text);
        return NULL;
    }
    if (!json_is_object(v) && !json_is_array(v)) {
        snprintf(err, errlen, "a JSON-RPC message must be an object or an array");
        json_decref(v);
        return NULL;
    }
    return v;
}

static bool is_valid_id(const json_t *id)
{
    return json_is_integer(id) || json_is_string(id);
}

/* JSON-RPC 2.0 wants an object with an integer "code" and a string "message". */
static bool is_valid_error(const json_t *error, char *err, size_t errlen)
{
    if (!json_is_object(error))
        snprintf(err, errlen, "\"error\" is not an object");
    else if (!json_is_integer(json_object_get(error, "code")))
        snprintf(err, errlen, "\"error\" has no integer \"code\"");
    else if (!json_is_string(json_object_get(error, "message")))
        snprintf(err, errlen, "\"error\" has no string \"message\"");
    else
        return true;
    return false;
}

int nx_jsonrpc_classify(const json_t *v, struct nx_jsonrpc_msg *out, char *err, size_t errlen)
{
    const json_t *ver, *method, *id, *result, *error, *params;

    memset(out, 0, sizeof *out);
    if (!json_is_object(v)) {
        snprintf(err, errlen, "a JSON-RPC message must be an object");
        return NX_EPROTO;
    }
    ver = json_object_get(v, "jsonrpc");
    if (!json_is_string(ver) || strcmp(json_string_value(ver), "2.0") != 0) {
        snprintf(err, errlen, "\"jsonrpc\" must be \"2.0\"");
        return NX_EPROTO;
    }
    method = json_object_get(v, "method");
    id = json_object_get(v, "id");
    result = json_object_get(v, "result");
    error = json_object_get(v, "error");
    params = json_object_get(v, "params");
    if (method) {
        if (!json_is_string(method) || json_string_length(method) == 0) {
            snprintf(err, errlen, "\"method\" must be a non-empty string");
            return NX_EPROTO;
        }
        if (result || error) {
            snprintf(err, errlen, "a request cannot carry \"result\" or \"error\"");
            return NX_EPROTO;
        }
        if (params && !json_is_object(params) && !json_is_array(params)) {
            snprintf(err, errlen, "\"params\" must be an object or an array");
            return NX_EPROTO;
        }
        out->method = json_string_value(method);
        out->params = params;
        if (!id) {
            out->kind = NX_JSONRPC_NOTIFICATION;
            return 0;
        }
        if (!is_valid_id(id)) {
            snprintf(err, errlen, "\"id\" must be an integer or a string");
            return NX_EPROTO;
        }
        out->kind = NX_JSONRPC_REQUEST;
        out->id = id;
        return 0;
    }
    if ((result != NULL) == (error != NULL)) {
        if (error && is_valid_id(id))
            out->id = id; /* an error reply that also claims a result: still an answer to id */
        snprintf(err, errlen, "a response needs exactly one of \"result\" and \"error\"");
        return NX_EPROTO;
    }
    if (result) {
        if (!is_valid_id(id)) {
            snprintf(err, errlen, "a result needs an integer or string \"id\"");
            return NX_EPROTO;
        }
        out->kind = NX_JSONRPC_RESULT;
        out->id = id;
        out->result = result;
        return 0;
    }
    if (id && !json_is_null(id) && !is_valid_id(id)) {
        snprintf(err, errlen, "\"id\" must be an integer, a string or null");
        return NX_EPROTO;
    }
    if (!is_valid_error(error, err, errlen)) {
        /* The id is good, so this is the answer to that request, only unreadable: the caller
         * can fail the request now rather than let it wait for an answer that has come. */
        out->id = is_valid_id(id) ? id : NULL;
        return NX_EPROTO;
    }
    out->kind = NX_JSONRPC_ERROR;
    out->id = json_is_null(id) ? NULL : id;
    out->error_code = json_integer_value(json_object_get(error, "code"));
    out->error_message = json_string_value(json_object_get(error, "message"));
    return 0;
}

json_t *nx_jsonrpc_request_new(long long id, const char *method, json_t *params)
{
    json_t *m = json_pack("{s:s, s:I, s:s}", "jsonrpc", "2.0", "id", (json_int_t)id, "method", method);

    if (params)
        json_object_set_new(m, "params", params);
    return m;
}

json_t *nx_jsonrpc_notification_new(const char *method, json_t *params)
{
    json_t *m = json_pack("{s:s, s:s}", "jsonrpc", "2.0", "method", method);

    if (params)
        json_object_set_new(m, "params", params);
    return m;
}

json_t *nx_jsonrpc_result_new(const json_t *id, json_t *result)
{
    json_t *m = json_pack("{s:s}", "jsonrpc", "2.0");

    json_object_set_new(m, "id", id ? json_deep_copy(id) : json_null());
    json_object_set_new(m, "result", result ? result : json_object());
    return m;
}

json_t *nx_jsonrpc_error_new(const json_t *id, int code, const char *message)
{
    json_t *m = json_pack("{s:s}", "jsonrpc", "2.0");

    json_object_set_new(m, "id", id ? json_deep_copy(id) : json_null());
    json_object_set_new(m, "error", json_pack("{s:i, s:s}", "code", code, "message",
                                              message ? message : ""));
    return m;
}
