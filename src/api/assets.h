#ifndef NX_API_ASSETS_H
#define NX_API_ASSETS_H

#include <stddef.h>

/* Files from web/admin/, embedded at build time (scripts/embed.cmake). */
struct nx_asset {
    const char *name;
    const unsigned char *data;
    size_t len;
};

extern const struct nx_asset nx_assets[];

const struct nx_asset *nx_asset_find(const char *name);

#endif
