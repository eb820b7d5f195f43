#ifndef NX_CORE_LOG_H
#define NX_CORE_LOG_H

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>

enum nx_log_level {
    NX_LOG_TRACE,
    NX_LOG_DEBUG,
    NX_LOG_INFO,
    NX_LOG_WARN,
    NX_LOG_ERROR,
    NX_LOG_OFF,
};

/* Thread-safe. The level is checked before anything is formatted. Every line goes through
 * redaction (core/redact.h) before it is written. The check is against nx_log_gate(): the lower
 * of the level (what is written) and the lowest level a sink asked for. */
#define nx_log(lvl, component, ...)                                                                \
    do {                                                                                           \
        if ((lvl) >= nx_log_gate())                                                                \
            nx_log_emit((lvl), (component), __VA_ARGS__);                                          \
    } while (0)

#define nx_trace(comp, ...) nx_log(NX_LOG_TRACE, comp, __VA_ARGS__)
#define nx_debug(comp, ...) nx_log(NX_LOG_DEBUG, comp, __VA_ARGS__)
#define nx_info(comp, ...) nx_log(NX_LOG_INFO, comp, __VA_ARGS__)
#define nx_warn(comp, ...) nx_log(NX_LOG_WARN, comp, __VA_ARGS__)
#define nx_error(comp, ...) nx_log(NX_LOG_ERROR, comp, __VA_ARGS__)

/* Written whatever the level (sinks still filter by theirs). */
void nx_log_write(enum nx_log_level lvl, const char *component, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* What nx_log expands to: written when lvl >= nx_log_level(), and given to the sinks. */
void nx_log_emit(enum nx_log_level lvl, const char *component, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void nx_log_vwrite(enum nx_log_level lvl, const char *component, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));

/* The level of the lines written to the fd. */
enum nx_log_level nx_log_level(void);
void nx_log_set_level(enum nx_log_level lvl);
/* min(nx_log_level(), every sink's level): below it nothing is formatted. */
enum nx_log_level nx_log_gate(void);
/* "trace", "debug", "info", "warn", "error", "off"; returns 0 or NX_EINVAL. */
int nx_log_parse_level(const char *s, enum nx_log_level *out);
const char *nx_log_level_name(enum nx_log_level lvl);
/* JSON lines instead of human lines. */
void nx_log_set_json(bool on);
/* Where lines go (default 2). */
void nx_log_set_fd(int fd);

/* Context added to every line this thread writes until cleared (NULL clears). The strings are
 * copied. */
void nx_log_set_context(const char *agent, const char *session);

/* ---- log contexts: the unit of work (an agent turn, an MCP call) a line is written for ----
 * An id, not text: the code that runs a callback on behalf of a unit of work sets it around the
 * callback, and sinks can tell exactly whose lines they get (server_log.c forwards an MCP call's
 * lines to its session only). On the loop thread, around every callback of a turn:
 *     uint64_t prev = nx_log_context_swap(t->log_ctx);
 *     ...
 *     nx_log_context_swap(prev);
 * and work started from inside one (a turn started by an MCP call, an HTTP call, a timer) takes
 * nx_log_context_current() as its own and sets it around its own callbacks. Lines are not
 * written with it: sinks only. */

/* A new context id: unique in the process, never 0. Thread-safe. */
uint64_t nx_log_context_new(void);
/* Makes id (0 = none) this thread's current context; returns the one it replaces. */
uint64_t nx_log_context_swap(uint64_t id);
/* This thread's current context (0 = none). */
uint64_t nx_log_context_current(void);

/* ---- sinks: other places a line goes (e.g. MCP clients that asked for logs) ---- */

/* One line as a sink sees it: msg is already redacted, has no newline and is NUL-terminated;
 * agent and session are the writing thread's context (NULL when unset), context its log context
 * id (0 when none). All borrowed for the call. */
struct nx_log_line {
    enum nx_log_level level;
    const char *component;
    const char *agent;
    const char *session;
    const char *msg;
    size_t len;
    uint64_t context;
};

/* Called on the thread that logs, for each line at or above the sink's level (whatever
 * nx_log_level() is). Never re-entered: lines the sink itself logs (on that thread) are written
 * to the fd only. A sink must not add, change or remove sinks. */
typedef void (*nx_log_sink_fn)(const struct nx_log_line *line, void *udata);

#define NX_LOG_MAX_SINKS 8

/* Adds (fn, udata) at level min; an existing pair gets the new level. NX_EBUSY when
 * NX_LOG_MAX_SINKS are set. With no sink set, logging costs what it did without sinks. */
int nx_log_sink_add(nx_log_sink_fn fn, void *udata, enum nx_log_level min);
/* Removes (fn, udata) if set; returns once no thread is inside it. */
void nx_log_sink_remove(nx_log_sink_fn fn, void *udata);

#endif
