#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "tools/internal.h"
#include "tools/tool.h"

/* Tool arguments come from the model: arbitrary JSON is validated against every built-in
 * tool's schema. An input shaped [schema, args] also validates args against that schema
 * (schemas from MCP servers are untrusted too). Nothing here may crash, leak or hang. */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[512];
    json_t *v = json_loadb((const char *)data, size, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
    const struct nx_tool *const *all;
    size_t n = 0;

    if (!v)
        return 0;
    all = nx_tool_all(&n);
    for (size_t i = 0; i < n; i++) {
        if (nx_tool_validate(all[i], v, err, sizeof err) != 0 && !memchr(err, '\0', sizeof err))
            __builtin_trap(); /* the message must be terminated */
    }
    if (json_is_array(v) && json_array_size(v) == 2)
        nx_schema_validate(json_array_get(v, 0), json_array_get(v, 1), err, sizeof err);
    json_decref(v);
    return 0;
}
