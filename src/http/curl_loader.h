#ifndef NX_HTTP_CURL_LOADER_H
#define NX_HTTP_CURL_LOADER_H

#include <stdbool.h>

/* libcurl on demand. nexo does not link libcurl: http/curl_loader.c defines the curl_* functions
 * nexo calls (same prototypes as <curl/curl.h>) and forwards each one to libcurl.so.4, which it
 * dlopens at the first call that needs it (thread-safe, once per process). A gateway that makes
 * no outbound call therefore never maps libcurl and its ~25 dependencies.
 *
 * When libcurl.so.4 cannot be loaded, one error is logged and the functions fail the way libcurl
 * reports failure: curl_easy_init, curl_multi_init and curl_slist_append return NULL,
 * curl_global_init returns CURLE_FAILED_INIT, the rest return an error code or do nothing. */

/* Whether libcurl has been loaded into this process (never triggers the load). */
bool nx_curl_is_loaded(void);

/* Tests only: the library to dlopen instead of "libcurl.so.4". Takes effect only when called
 * before the first curl_* call of the process; the string must outlive the process. */
void nx_curl_set_soname(const char *soname);

#endif
