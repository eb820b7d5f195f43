/* The libcurl functions nexo uses, forwarded to libcurl.so.4 loaded on first use (see
 * http/curl_loader.h for why). Each definition below has the prototype <curl/curl.h> gives it, so
 * callers (http/client.c) use libcurl's API unchanged; the build links no libcurl.
 *
 * Two kinds of entry point:
 * - those that can be a process's first curl call (curl_global_init, curl_easy_init,
 *   curl_multi_init, curl_share_init, curl_slist_append, curl_version_info, the strerror pair)
 *   load the library once, under pthread_once;
 * - those that take something only libcurl hands out (a CURL, CURLM or CURLSH handle, an slist)
 *   do not: if nothing is loaded yet, the argument cannot be a live libcurl object (it is NULL),
 *   so they fail or do nothing without mapping ~25 libraries for it (e.g.
 *   curl_slist_free_all(NULL)).
 *
 * Variadic functions cannot pass their `...` on, so curl_easy_setopt and curl_multi_setopt read
 * their one argument with the type its option number encodes (curl.h: CURLOPTTYPE_LONG 0,
 * OBJECTPOINT/STRINGPOINT/SLISTPOINT/CBPOINT 10000, FUNCTIONPOINT 20000, OFF_T 30000, BLOB 40000;
 * multi.h builds CURLMoption with the same CURLOPT() macro), curl_share_setopt reads an int for
 * CURLSHOPT_SHARE/UNSHARE (a curl_lock_data) and a pointer otherwise, and curl_easy_getinfo
 * always takes one pointer. */

/* the type-checking macros of curl/typecheck-gcc.h would turn our definitions into macro calls */
#define CURL_DISABLE_TYPECHECK 1

#include <curl/curl.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <string.h>

#include "core/log.h"
#include "http/curl_loader.h"

#define NOT_LOADED_TEXT "libcurl is not loaded"

/* name (without "curl_"), return type, parameter list */
#define NX_CURL_FUNCS(X)                                                                           \
    X(global_init, CURLcode, (long))                                                               \
    X(global_cleanup, void, (void))                                                                \
    X(version_info, curl_version_info_data *, (CURLversion))                                       \
    X(easy_strerror, const char *, (CURLcode))                                                     \
    X(slist_append, struct curl_slist *, (struct curl_slist *, const char *))                      \
    X(slist_free_all, void, (struct curl_slist *))                                                 \
    X(easy_init, CURL *, (void))                                                                   \
    X(easy_setopt, CURLcode, (CURL *, CURLoption, ...))                                            \
    X(easy_getinfo, CURLcode, (CURL *, CURLINFO, ...))                                             \
    X(easy_perform, CURLcode, (CURL *))                                                            \
    X(easy_cleanup, void, (CURL *))                                                                \
    X(easy_reset, void, (CURL *))                                                                  \
    X(multi_init, CURLM *, (void))                                                                 \
    X(multi_setopt, CURLMcode, (CURLM *, CURLMoption, ...))                                        \
    X(multi_add_handle, CURLMcode, (CURLM *, CURL *))                                              \
    X(multi_remove_handle, CURLMcode, (CURLM *, CURL *))                                           \
    X(multi_socket_action, CURLMcode, (CURLM *, curl_socket_t, int, int *))                        \
    X(multi_info_read, CURLMsg *, (CURLM *, int *))                                                \
    X(multi_assign, CURLMcode, (CURLM *, curl_socket_t, void *))                                   \
    X(multi_cleanup, CURLMcode, (CURLM *))                                                         \
    X(multi_strerror, const char *, (CURLMcode))                                                   \
    X(share_init, CURLSH *, (void))                                                                \
    X(share_setopt, CURLSHcode, (CURLSH *, CURLSHoption, ...))                                     \
    X(share_cleanup, CURLSHcode, (CURLSH *))

#define FN_FIELD(name, ret, params) ret(*name) params;
static struct {
    NX_CURL_FUNCS(FN_FIELD)
} fn;
#undef FN_FIELD

/* function pointers arrive from dlsym as void *: copied bit for bit, as POSIX allows */
_Static_assert(sizeof(void *) == sizeof(void (*)(void)), "function and data pointers differ in size");

typedef void (*any_fn)(void);

static const char *soname = "libcurl.so.4";
static pthread_once_t load_once = PTHREAD_ONCE_INIT;
static atomic_bool loaded; /* set (release) after every pointer in fn is filled in */

static void load(void)
{
    const char *missing;
    void *h, *sym;

    if (!(h = dlopen(soname, RTLD_NOW | RTLD_LOCAL))) {
        const char *why = dlerror();

        nx_error("http", "%s could not be loaded (%s): outbound HTTP calls (LLM providers, tools) "
                 "will fail until it is installed, e.g. \"apt-get install libcurl4\"", soname,
                 why ? why : "unknown error");
        return;
    }
#define RESOLVE(name, ret, params)                                                                 \
    if (!(sym = dlsym(h, "curl_" #name))) {                                                        \
        missing = "curl_" #name;                                                                   \
        goto fail;                                                                                 \
    }                                                                                              \
    memcpy(&fn.name, &sym, sizeof sym);
    NX_CURL_FUNCS(RESOLVE)
#undef RESOLVE
    atomic_store_explicit(&loaded, true, memory_order_release);
    nx_debug("http", "loaded %s", soname);
    return;
fail:
    nx_error("http", "%s has no %s (libcurl older than 7.88?): outbound HTTP calls will fail; "
             "install a current one, e.g. \"apt-get install libcurl4\"", soname, missing);
    memset(&fn, 0, sizeof fn);
    dlclose(h);
}

/* For entry points that may be the first curl call: loads once. */
static bool ensure_loaded(void)
{
    pthread_once(&load_once, load);
    return atomic_load_explicit(&loaded, memory_order_acquire);
}

/* For entry points that take a libcurl object: never loads. */
static bool has_lib(void)
{
    return atomic_load_explicit(&loaded, memory_order_acquire);
}

bool nx_curl_is_loaded(void)
{
    return has_lib();
}

void nx_curl_set_soname(const char *name)
{
    if (name && name[0])
        soname = name;
}

/* ---- entry points that may load ------------------------------------------------------ */

CURLcode curl_global_init(long flags)
{
    return ensure_loaded() ? fn.global_init(flags) : CURLE_FAILED_INIT;
}

curl_version_info_data *curl_version_info(CURLversion age)
{
    return ensure_loaded() ? fn.version_info(age) : NULL;
}

const char *curl_easy_strerror(CURLcode code)
{
    return ensure_loaded() ? fn.easy_strerror(code) : NOT_LOADED_TEXT;
}

const char *curl_multi_strerror(CURLMcode code)
{
    return ensure_loaded() ? fn.multi_strerror(code) : NOT_LOADED_TEXT;
}

struct curl_slist *curl_slist_append(struct curl_slist *list, const char *data)
{
    return ensure_loaded() ? fn.slist_append(list, data) : NULL;
}

CURL *curl_easy_init(void)
{
    return ensure_loaded() ? fn.easy_init() : NULL;
}

CURLM *curl_multi_init(void)
{
    return ensure_loaded() ? fn.multi_init() : NULL;
}

CURLSH *curl_share_init(void)
{
    return ensure_loaded() ? fn.share_init() : NULL;
}

/* ---- entry points that take a libcurl object ----------------------------------------- */

void curl_global_cleanup(void)
{
    if (has_lib())
        fn.global_cleanup();
}

void curl_slist_free_all(struct curl_slist *list)
{
    if (has_lib())
        fn.slist_free_all(list);
}

CURLcode curl_easy_setopt(CURL *curl, CURLoption option, ...)
{
    CURLcode rc;
    va_list ap;

    if (!has_lib())
        return CURLE_FAILED_INIT;
    va_start(ap, option);
    switch ((long)option / 10000 * 10000) {
    case CURLOPTTYPE_LONG:
        rc = fn.easy_setopt(curl, option, va_arg(ap, long));
        break;
    case CURLOPTTYPE_OBJECTPOINT: /* also STRINGPOINT, SLISTPOINT, CBPOINT */
        rc = fn.easy_setopt(curl, option, va_arg(ap, void *));
        break;
    case CURLOPTTYPE_FUNCTIONPOINT:
        rc = fn.easy_setopt(curl, option, va_arg(ap, any_fn));
        break;
    case CURLOPTTYPE_OFF_T:
        rc = fn.easy_setopt(curl, option, va_arg(ap, curl_off_t));
        break;
    case CURLOPTTYPE_BLOB:
        rc = fn.easy_setopt(curl, option, va_arg(ap, struct curl_blob *));
        break;
    default:
        rc = CURLE_UNKNOWN_OPTION;
        break;
    }
    va_end(ap);
    return rc;
}

CURLcode curl_easy_getinfo(CURL *curl, CURLINFO info, ...)
{
    CURLcode rc;
    va_list ap;

    if (!has_lib())
        return CURLE_FAILED_INIT;
    va_start(ap, info);
    rc = fn.easy_getinfo(curl, info, va_arg(ap, void *)); /* every CURLINFO takes one pointer */
    va_end(ap);
    return rc;
}

CURLcode curl_easy_perform(CURL *curl)
{
    return has_lib() ? fn.easy_perform(curl) : CURLE_FAILED_INIT;
}

void curl_easy_cleanup(CURL *curl)
{
    if (has_lib())
        fn.easy_cleanup(curl);
}

void curl_easy_reset(CURL *curl)
{
    if (has_lib())
        fn.easy_reset(curl);
}

CURLMcode curl_multi_setopt(CURLM *multi, CURLMoption option, ...)
{
    CURLMcode rc;
    va_list ap;

    if (!has_lib())
        return CURLM_BAD_HANDLE;
    va_start(ap, option);
    switch ((long)option / 10000 * 10000) {
    case CURLOPTTYPE_LONG:
        rc = fn.multi_setopt(multi, option, va_arg(ap, long));
        break;
    case CURLOPTTYPE_OBJECTPOINT:
        rc = fn.multi_setopt(multi, option, va_arg(ap, void *));
        break;
    case CURLOPTTYPE_FUNCTIONPOINT:
        rc = fn.multi_setopt(multi, option, va_arg(ap, any_fn));
        break;
    case CURLOPTTYPE_OFF_T:
        rc = fn.multi_setopt(multi, option, va_arg(ap, curl_off_t));
        break;
    default: /* multi.h has no BLOB option */
        rc = CURLM_UNKNOWN_OPTION;
        break;
    }
    va_end(ap);
    return rc;
}

CURLMcode curl_multi_add_handle(CURLM *multi, CURL *easy)
{
    return has_lib() ? fn.multi_add_handle(multi, easy) : CURLM_BAD_HANDLE;
}

CURLMcode curl_multi_remove_handle(CURLM *multi, CURL *easy)
{
    return has_lib() ? fn.multi_remove_handle(multi, easy) : CURLM_BAD_HANDLE;
}

CURLMcode curl_multi_socket_action(CURLM *multi, curl_socket_t s, int ev_bitmask, int *running)
{
    if (has_lib())
        return fn.multi_socket_action(multi, s, ev_bitmask, running);
    if (running)
        *running = 0;
    return CURLM_BAD_HANDLE;
}

CURLMsg *curl_multi_info_read(CURLM *multi, int *msgs_in_queue)
{
    if (has_lib())
        return fn.multi_info_read(multi, msgs_in_queue);
    if (msgs_in_queue)
        *msgs_in_queue = 0;
    return NULL;
}

CURLMcode curl_multi_assign(CURLM *multi, curl_socket_t sockfd, void *sockp)
{
    return has_lib() ? fn.multi_assign(multi, sockfd, sockp) : CURLM_BAD_HANDLE;
}

CURLMcode curl_multi_cleanup(CURLM *multi)
{
    return has_lib() ? fn.multi_cleanup(multi) : CURLM_BAD_HANDLE;
}

CURLSHcode curl_share_setopt(CURLSH *share, CURLSHoption option, ...)
{
    CURLSHcode rc;
    va_list ap;

    if (!has_lib())
        return CURLSHE_INVALID;
    va_start(ap, option);
    switch (option) {
    case CURLSHOPT_SHARE:
    case CURLSHOPT_UNSHARE:
        rc = fn.share_setopt(share, option, va_arg(ap, int));
        break;
    case CURLSHOPT_LOCKFUNC:
    case CURLSHOPT_UNLOCKFUNC:
        rc = fn.share_setopt(share, option, va_arg(ap, any_fn));
        break;
    default: /* CURLSHOPT_USERDATA */
        rc = fn.share_setopt(share, option, va_arg(ap, void *));
        break;
    }
    va_end(ap);
    return rc;
}

CURLSHcode curl_share_cleanup(CURLSH *share)
{
    return has_lib() ? fn.share_cleanup(share) : CURLSHE_INVALID;
}
