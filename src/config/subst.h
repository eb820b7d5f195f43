#ifndef NX_CONFIG_SUBST_H
#define NX_CONFIG_SUBST_H

#include "config/schema.h"

/* Placeholders in a scalar value (nexo-rs env.rs rules):
 *   ${VAR}          the variable; an error when unset
 *   ${VAR:-def}     def when VAR is unset or empty (def may hold placeholders)
 *   ${VAR-def}      def when VAR is unset
 *   ${file:path}    the file's contents, trailing whitespace trimmed; relative to ctx->dir;
 *                   ".." is rejected; regular files up to 1 MiB
 *   $${             a literal "${"
 * Returns 0 with *out NULL when `in` holds no placeholder, 0 with *out the resolved text
 * (malloc'd), or NX_ECONFIG after reporting each problem at `at`. */
int nx_conf_subst(struct nx_conf_ctx *ctx, const struct nx_cnode *at, const char *in, char **out);

#endif
