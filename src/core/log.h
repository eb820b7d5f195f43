#ifndef NX_CORE_LOG_H
#define NX_CORE_LOG_H

#include <stdarg.h>
#include <stdbool.h>

enum nx_log_level {
    NX_LOG_TRACE,
    NX_LOG_DEBUG,
    NX_LOG_INFO,
    NX_LOG_WARN,
    NX_LOG_ERROR,
    NX_LOG_OFF,
};

/* Thread-safe. The level is checked before anything is formatted. Every line goes through
 * redaction (core/redact.h) before it is written. */
#define nx_log(lvl, component, ...)                                                                \
    do {                                                                                           \
        if ((lvl) >= nx_log_level())                                                               \
            nx_log_write((lvl), (component), __VA_ARGS__);                                         \
    } while (0)

#define nx_trace(comp, ...) nx_log(NX_LOG_TRACE, comp, __VA_ARGS__)
#define nx_debug(comp, ...) nx_log(NX_LOG_DEBUG, comp, __VA_ARGS__)
#define nx_info(comp, ...) nx_log(NX_LOG_INFO, comp, __VA_ARGS__)
#define nx_warn(comp, ...) nx_log(NX_LOG_WARN, comp, __VA_ARGS__)
#define nx_error(comp, ...) nx_log(NX_LOG_ERROR, comp, __VA_ARGS__)

void nx_log_write(enum nx_log_level lvl, const char *component, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void nx_log_vwrite(enum nx_log_level lvl, const char *component, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));

enum nx_log_level nx_log_level(void);
void nx_log_set_level(enum nx_log_level lvl);
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

#endif
