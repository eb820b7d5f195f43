#include <string.h>

#include "api/assets.h"

const struct nx_asset *nx_asset_find(const char *name)
{
    for (const struct nx_asset *a = nx_assets; a->name; a++) {
        if (strcmp(a->name, name) == 0)
            return a;
    }
    return NULL;
}
