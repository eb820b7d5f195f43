/* Fuzzes the config loader: the first byte picks which file the rest is, the rest goes through
 * the real loader (YAML tree, ${} substitution, field tables, drop-in merge, plugin JSON). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "config/config.h"

static const char *const names[] = {
    "gateway.yaml", "agents.yaml", "llm.yaml", "broker.yaml", "memory.yaml",
    "mcp.yaml", "agents.d/10-extra.yaml", "plugins/telegram.yaml",
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct nx_diags d;
    struct nx_config *c = NULL;

    if (size < 1 || size > 65536)
        return 0;
    const char *name = names[data[0] % (sizeof names / sizeof names[0])];
    nx_diags_init(&d);
    /* No directory: ${file:} paths resolve against the working directory, and only regular
     * files are read (never a FIFO or a device). */
    if (nx_config_load_mem(NULL, name, (const char *)data + 1, size - 1, &c, &d) == 0) {
        const struct nx_agent_conf *a;
        size_t n = nx_config_agents(c, &a);
        for (size_t i = 0; i < n; i++)
            (void)a[i].id;
    }
    nx_config_unref(c);
    nx_diags_cleanup(&d);
    return 0;
}
