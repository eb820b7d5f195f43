#ifndef NX_TOOLS_INTERNAL_H
#define NX_TOOLS_INTERNAL_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#include "core/buf.h"
#include "tools/tool.h"

/* Shared by the files of tools/: the built-in tables, the schema validator, small text helpers
 * and test hooks. Not for other modules (they use tools/tool.h). */

/* Built-in tools (tools/builtin/<name>.c), listed by tools/registry.c. */
extern const struct nx_tool nx_tool_time_now;
extern const struct nx_tool nx_tool_http_fetch;
extern const struct nx_tool nx_tool_file_read;
extern const struct nx_tool nx_tool_file_write;
extern const struct nx_tool nx_tool_file_list;

/* What the model is sent at most from one call; longer output is cut at a UTF-8 boundary and a
 * "[truncated: N bytes omitted]" line is appended. */
#define NX_TOOL_OUTPUT_MAX (64u * 1024)

/* --- tools/validate.c --- */
/* Checks value against a parsed JSON Schema (the subset documented in docs/tools.md). Never
 * crashes on any schema or value; unknown keywords are ignored. 0 or NX_EINVAL with a message
 * naming the argument path in err. */
int nx_schema_validate(const json_t *schema, const json_t *value, char *err, size_t errlen);

/* --- tools/sandbox.c --- */
/* Components a workspace path may have at most. */
#define NX_SANDBOX_MAX_DEPTH 64
/* Is `resolved` (a path from nx_sandbox_path) one of the workspace's identity files that the
 * file tools leave alone (the first NX_IDENTITY_PROTECTED of nx_identity_files), or the file
 * one of them leads to? */
bool nx_sandbox_is_identity_file(const char *workspace, const char *resolved);

/* Whether a path as given names a directory by its form: it ends in '/', "/." or "/.." (or is
 * "." or ".."), which resolving drops ("x/." would be the file x). */
bool nx_sandbox_names_dir(const char *rel);
/* After open(): is the file behind fd (by /proc/self/fd) inside the real workspace? 0 when it
 * is (or when /proc is unavailable), NX_EPERM when it is not. */
int nx_sandbox_check_fd(const char *workspace, int fd, char *err, size_t errlen);
/* Gets a relative path argument from args: a string without NUL bytes. "" when absent and
 * def is NULL; def otherwise. Returns NULL (err set) when it has the wrong shape. */
const char *nx_sandbox_path_arg(const json_t *args, const char *key, const char *def, char *err,
                                size_t errlen);

/* --- tools/builtin/http_fetch.c --- */
/* Tests only: replaces the private-address check used by http_fetch (NULL restores
 * nx_sandbox_addr_is_private). Lets a test treat 127.0.0.1 as public and still see a redirect to
 * another loopback address refused. */
typedef bool (*nx_addr_check_fn)(const struct sockaddr *sa);
void nx_http_fetch_set_addr_check(nx_addr_check_fn fn);
/* Tests only: http_fetch's own lookup of `name` looks up `addr` instead (NULL, NULL: none). curl
 * never resolves it, so a fetch of `name` works only through the address pin. */
void nx_http_fetch_set_lookup(const char *name, const char *addr);

#endif
