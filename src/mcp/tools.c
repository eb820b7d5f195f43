#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "mcp/mcp.h"

/* Pure helpers for MCP-backed tools: registry names, input schemas, and the text a tools/call
 * result becomes. */

#define NAME_MAX_LEN 64
#define HASH_KEEP 55 /* + '_' + 8 hex digits = 64 */

static uint32_t fnv1a(const char *a, const char *b)
{
    uint32_t h = 2166136261u;

    for (const unsigned char *p = (const unsigned char *)a; *p; p++)
        h = (h ^ *p) * 16777619u;
    h = (h ^ '/') * 16777619u;
    for (const unsigned char *p = (const unsigned char *)b; *p; p++)
        h = (h ^ *p) * 16777619u;
    return h;
}

static bool is_name_char(unsigned char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '_' || ch == '-';
}

void nx_mcp_tool_name(const char *server, const char *tool, int hashed, char *out, size_t outlen)
{
    struct nx_buf b = NX_BUF_INIT;

    if (!outlen)
        return;
    nx_buf_puts(&b, "mcp_");
    nx_buf_puts(&b, server ? server : "");
    nx_buf_putc(&b, '_');
    nx_buf_puts(&b, tool ? tool : "");
    for (size_t i = 0; i < b.len; i++) {
        if (!is_name_char((unsigned char)b.data[i]))
            b.data[i] = '_';
    }
    if (hashed || b.len > NAME_MAX_LEN) {
        size_t keep = b.len < HASH_KEEP ? b.len : HASH_KEEP;

        snprintf(out, outlen, "%.*s_%08x", (int)keep, b.data, fnv1a(server ? server : "", tool ? tool : ""));
    } else {
        snprintf(out, outlen, "%s", b.data);
    }
    nx_buf_cleanup(&b);
}

static const char *json_kind(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_STRING:
        return "a string";
    case JSON_ARRAY:
        return "an array";
    case JSON_INTEGER:
    case JSON_REAL:
        return "a number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    default:
        return "null";
    }
}

/* MCP makes inputSchema required, and an object schema ({"type": "object", ...}), as arguments
 * are always an object. Left out, it is taken as {"type": "object"}: hand-written servers often
 * omit it for tools without arguments, and such a tool works. An object without "type" gets
 * "type": "object" (model APIs want it). Anything else that is there (a string, an array, null,
 * {"type": "string"}) is a broken tool definition, and mostly one that no arguments object could
 * satisfy, so that every call would be refused: the tool is skipped with a warning instead of
 * being offered to the model. */
char *nx_mcp_tool_input_schema(const json_t *def, char *why, size_t whylen)
{
    const json_t *schema = json_object_get(def, "inputSchema");
    const json_t *type = json_object_get(schema, "type");
    json_t *copy;
    char *text;

    if (!schema)
        return nx_strdup("{\"type\":\"object\"}");
    if (!json_is_object(schema)) {
        snprintf(why, whylen, "its inputSchema is %s, not an object schema", json_kind(schema));
        return NULL;
    }
    if (json_is_string(type) && strcmp(json_string_value(type), "object") != 0) {
        snprintf(why, whylen, "its inputSchema has \"type\": \"%.40s\", not \"object\"",
                 json_string_value(type));
        return NULL;
    }
    if (type && !json_is_string(type)) {
        snprintf(why, whylen, "its inputSchema's \"type\" is %s, not \"object\"", json_kind(type));
        return NULL;
    }
    if (type)
        return json_dumps(schema, JSON_COMPACT);
    copy = json_copy((json_t *)schema);
    json_object_set_new(copy, "type", json_string("object"));
    text = json_dumps(copy, JSON_COMPACT);
    json_decref(copy);
    return text;
}

/* Bytes a base64 string decodes to (padding aware; whitespace is not expected). */
static size_t b64_size(const char *s)
{
    size_t n = s ? strlen(s) : 0, pad = 0, total;

    if (n >= 1 && s[n - 1] == '=')
        pad++;
    if (n >= 2 && s[n - 2] == '=')
        pad++;
    total = n / 4 * 3 + (n % 4 ? n % 4 - 1 : 0);
    return total > pad ? total - pad : 0;
}

static const char *str(const json_t *o, const char *key, const char *def)
{
    const char *s = json_string_value(json_object_get(o, key));

    return s ? s : def;
}

static void add_item(struct nx_buf *b, const json_t *item)
{
    const char *type = str(item, "type", "");
    const json_t *res;

    if (b->len > 0)
        nx_buf_putc(b, '\n');
    if (strcmp(type, "text") == 0) { /* whole: a NUL in it becomes U+FFFD, not its end */
        const json_t *t = json_object_get(item, "text");
        const char *v = json_string_value(t);
        for (size_t n = json_string_length(t); v;) {
            const char *z = memchr(v, 0, n);
            size_t k = z ? (size_t)(z - v) : n;
            nx_buf_append(b, v, k);
            if (!z)
                break;
            nx_buf_puts(b, "\xEF\xBF\xBD");
            v = z + 1;
            n -= k + 1;
        }
    } else if (strcmp(type, "image") == 0 || strcmp(type, "audio") == 0) {
        nx_buf_printf(b, "[%s: %s, %zu bytes]", type, str(item, "mimeType", "unknown type"),
                      b64_size(json_string_value(json_object_get(item, "data"))));
    } else if (strcmp(type, "resource_link") == 0) {
        nx_buf_printf(b, "[resource link: %s", str(item, "uri", "?"));
        if (json_string_value(json_object_get(item, "name")))
            nx_buf_printf(b, " (%s)", str(item, "name", ""));
        nx_buf_putc(b, ']');
    } else if (strcmp(type, "resource") == 0 && json_is_object(res = json_object_get(item, "resource"))) {
        if (json_is_string(json_object_get(res, "text")))
            nx_buf_printf(b, "[resource: %s]\n%s", str(res, "uri", "?"), str(res, "text", ""));
        else
            nx_buf_printf(b, "[resource: %s, %s, %zu bytes]", str(res, "uri", "?"),
                          str(res, "mimeType", "unknown type"),
                          b64_size(json_string_value(json_object_get(res, "blob"))));
    } else {
        nx_buf_printf(b, "[%s content]", type[0] ? type : "unknown");
    }
}

char *nx_mcp_result_text(const json_t *result)
{
    struct nx_buf b = NX_BUF_INIT;
    const json_t *content = json_object_get(result, "content");
    const json_t *structured = json_object_get(result, "structuredContent");

    if (json_is_array(content)) {
        for (size_t i = 0; i < json_array_size(content); i++) {
            const json_t *item = json_array_get(content, i);

            if (json_is_object(item))
                add_item(&b, item);
        }
    }
    if (b.len == 0 && structured) {
        char *s = json_dumps(structured, JSON_COMPACT | JSON_ENCODE_ANY);

        nx_buf_puts(&b, s ? s : "");
        free(s);
    }
    return nx_buf_steal(&b);
}

char *nx_mcp_resource_list_text(const json_t *result)
{
    struct nx_buf b = NX_BUF_INIT;
    const json_t *list = json_object_get(result, "resources");
    const char *cursor = json_string_value(json_object_get(result, "nextCursor"));

    for (size_t i = 0; json_is_array(list) && i < json_array_size(list); i++) {
        const json_t *r = json_array_get(list, i);

        if (!json_is_object(r))
            continue;
        nx_buf_printf(&b, "%s%s (%s", b.len ? "\n" : "", str(r, "uri", "?"), str(r, "name", "?"));
        if (json_string_value(json_object_get(r, "mimeType")))
            nx_buf_printf(&b, ", %s", str(r, "mimeType", ""));
        nx_buf_putc(&b, ')');
        if (json_string_value(json_object_get(r, "description")))
            nx_buf_printf(&b, ": %s", str(r, "description", ""));
    }
    if (b.len == 0)
        nx_buf_puts(&b, "(no resources)");
    if (cursor && cursor[0])
        nx_buf_printf(&b, "\nMore resources: call again with cursor \"%s\".", cursor);
    return nx_buf_steal(&b);
}

char *nx_mcp_resource_read_text(const json_t *result)
{
    struct nx_buf b = NX_BUF_INIT;
    const json_t *contents = json_object_get(result, "contents");

    for (size_t i = 0; json_is_array(contents) && i < json_array_size(contents); i++) {
        const json_t *c = json_array_get(contents, i);

        if (!json_is_object(c))
            continue;
        if (b.len > 0)
            nx_buf_putc(&b, '\n');
        if (json_is_string(json_object_get(c, "text")))
            nx_buf_printf(&b, "[resource: %s]\n%s", str(c, "uri", "?"), str(c, "text", ""));
        else
            nx_buf_printf(&b, "[resource: %s, %s, %zu bytes]", str(c, "uri", "?"),
                          str(c, "mimeType", "unknown type"),
                          b64_size(json_string_value(json_object_get(c, "blob"))));
    }
    if (b.len == 0)
        nx_buf_puts(&b, "(empty resource)");
    return nx_buf_steal(&b);
}
