#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/clock.h"
#include "core/error.h"
#include "core/log.h"
#include "core/redact.h"

static _Atomic int log_level = NX_LOG_INFO;
static _Atomic bool log_json = false;
static _Atomic int log_fd = 2;
static pthread_mutex_t write_lock = PTHREAD_MUTEX_INITIALIZER;

static _Thread_local char *ctx_agent;
static _Thread_local char *ctx_session;

static const char *const level_names[] = {"trace", "debug", "info", "warn", "error", "off"};

enum nx_log_level nx_log_level(void)
{
    return (enum nx_log_level)atomic_load_explicit(&log_level, memory_order_relaxed);
}

void nx_log_set_level(enum nx_log_level lvl)
{
    atomic_store(&log_level, (int)lvl);
}

int nx_log_parse_level(const char *s, enum nx_log_level *out)
{
    for (size_t i = 0; i < NX_ARRAY_LEN(level_names); i++) {
        if (strcmp(s, level_names[i]) == 0) {
            *out = (enum nx_log_level)i;
            return 0;
        }
    }
    if (strcmp(s, "warning") == 0) {
        *out = NX_LOG_WARN;
        return 0;
    }
    return NX_EINVAL;
}

const char *nx_log_level_name(enum nx_log_level lvl)
{
    return (unsigned)lvl < NX_ARRAY_LEN(level_names) ? level_names[lvl] : "?";
}

void nx_log_set_json(bool on)
{
    atomic_store(&log_json, on);
}

void nx_log_set_fd(int fd)
{
    atomic_store(&log_fd, fd);
}

void nx_log_set_context(const char *agent, const char *session)
{
    free(ctx_agent);
    free(ctx_session);
    ctx_agent = agent ? nx_strdup(agent) : NULL;
    ctx_session = session ? nx_strdup(session) : NULL;
}

/* Appends s as the inside of a JSON string. */
static void json_escape(struct nx_buf *out, const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        switch (c) {
        case '"': nx_buf_puts(out, "\\\""); break;
        case '\\': nx_buf_puts(out, "\\\\"); break;
        case '\n': nx_buf_puts(out, "\\n"); break;
        case '\r': nx_buf_puts(out, "\\r"); break;
        case '\t': nx_buf_puts(out, "\\t"); break;
        default:
            if (c < 0x20)
                nx_buf_printf(out, "\\u%04x", c);
            else
                nx_buf_putc(out, (char)c);
        }
    }
}

void nx_log_vwrite(enum nx_log_level lvl, const char *component, const char *fmt, va_list ap)
{
    struct nx_buf msg = NX_BUF_INIT, clean = NX_BUF_INIT, line = NX_BUF_INIT;
    char ts[32];

    nx_buf_vprintf(&msg, fmt, ap);
    nx_redact_append(&clean, nx_buf_cstr(&msg), msg.len);
    nx_rfc3339(nx_wall_ms(), ts, sizeof ts);

    if (atomic_load(&log_json)) {
        nx_buf_printf(&line, "{\"ts\":\"%s\",\"level\":\"%s\",\"component\":\"", ts,
                      nx_log_level_name(lvl));
        json_escape(&line, component, strlen(component));
        nx_buf_puts(&line, "\"");
        if (ctx_agent) {
            nx_buf_puts(&line, ",\"agent\":\"");
            json_escape(&line, ctx_agent, strlen(ctx_agent));
            nx_buf_puts(&line, "\"");
        }
        if (ctx_session) {
            nx_buf_puts(&line, ",\"session\":\"");
            json_escape(&line, ctx_session, strlen(ctx_session));
            nx_buf_puts(&line, "\"");
        }
        nx_buf_puts(&line, ",\"msg\":\"");
        json_escape(&line, nx_buf_cstr(&clean), clean.len);
        nx_buf_puts(&line, "\"}\n");
    } else {
        nx_buf_printf(&line, "%s %-5s %s", ts, nx_log_level_name(lvl), component);
        if (ctx_agent)
            nx_buf_printf(&line, " agent=%s", ctx_agent);
        if (ctx_session)
            nx_buf_printf(&line, " session=%s", ctx_session);
        nx_buf_puts(&line, ": ");
        /* One event, one line: a newline inside a message would forge a second entry. */
        for (size_t i = 0; i < clean.len; i++) {
            char c = clean.data[i];
            nx_buf_putc(&line, c == '\n' || c == '\r' ? ' ' : c);
        }
        nx_buf_putc(&line, '\n');
    }

    pthread_mutex_lock(&write_lock);
    int fd = atomic_load(&log_fd);
    size_t off = 0;
    while (off < line.len) {
        ssize_t n = write(fd, line.data + off, line.len - off);
        if (n <= 0)
            break;
        off += (size_t)n;
    }
    pthread_mutex_unlock(&write_lock);

    nx_buf_cleanup(&msg);
    nx_buf_cleanup(&clean);
    nx_buf_cleanup(&line);
}

void nx_log_write(enum nx_log_level lvl, const char *component, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    nx_log_vwrite(lvl, component, fmt, ap);
    va_end(ap);
}
