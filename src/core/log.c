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

/* Sinks: the table changes under the write lock of sink_lock and is read under its read lock.
 * sink_min (the lowest sink level, NX_LOG_OFF with none) and log_gate (min of it and log_level)
 * let the macro and nx_log_vwrite skip everything without taking a lock. */
struct sink {
    nx_log_sink_fn fn;
    void *udata;
    int min;
};
static struct sink sinks[NX_LOG_MAX_SINKS];
static pthread_rwlock_t sink_lock = PTHREAD_RWLOCK_INITIALIZER;
static _Atomic int sink_min = NX_LOG_OFF;
static _Atomic int log_gate = NX_LOG_INFO;
static _Thread_local bool in_sink;

static _Thread_local char *ctx_agent;
static _Thread_local char *ctx_session;
static _Thread_local uint64_t ctx_id;
static _Atomic uint64_t ctx_last;

static const char *const level_names[] = {"trace", "debug", "info", "warn", "error", "off"};

enum nx_log_level nx_log_level(void)
{
    return (enum nx_log_level)atomic_load_explicit(&log_level, memory_order_relaxed);
}

enum nx_log_level nx_log_gate(void)
{
    return (enum nx_log_level)atomic_load_explicit(&log_gate, memory_order_relaxed);
}

/* Callers hold sink_lock for writing (or nothing changes sinks concurrently). */
static void update_gate(void)
{
    int lvl = atomic_load(&log_level), smin = atomic_load(&sink_min);
    atomic_store(&log_gate, lvl < smin ? lvl : smin);
}

void nx_log_set_level(enum nx_log_level lvl)
{
    pthread_rwlock_wrlock(&sink_lock);
    atomic_store(&log_level, (int)lvl);
    update_gate();
    pthread_rwlock_unlock(&sink_lock);
}

static void sinks_changed(void)
{
    int m = NX_LOG_OFF;
    for (size_t i = 0; i < NX_LOG_MAX_SINKS; i++) {
        if (sinks[i].fn && sinks[i].min < m)
            m = sinks[i].min;
    }
    atomic_store(&sink_min, m);
    update_gate();
}

int nx_log_sink_add(nx_log_sink_fn fn, void *udata, enum nx_log_level min)
{
    int rc = NX_EBUSY;
    pthread_rwlock_wrlock(&sink_lock);
    struct sink *free_slot = NULL;
    for (size_t i = 0; i < NX_LOG_MAX_SINKS; i++) {
        if (sinks[i].fn == fn && sinks[i].udata == udata) {
            sinks[i].min = (int)min;
            rc = 0;
            goto out;
        }
        if (!sinks[i].fn && !free_slot)
            free_slot = &sinks[i];
    }
    if (free_slot) {
        *free_slot = (struct sink){fn, udata, (int)min};
        rc = 0;
    }
out:
    sinks_changed();
    pthread_rwlock_unlock(&sink_lock);
    return rc;
}

void nx_log_sink_remove(nx_log_sink_fn fn, void *udata)
{
    pthread_rwlock_wrlock(&sink_lock);
    for (size_t i = 0; i < NX_LOG_MAX_SINKS; i++) {
        if (sinks[i].fn == fn && sinks[i].udata == udata)
            sinks[i] = (struct sink){NULL, NULL, NX_LOG_OFF};
    }
    sinks_changed();
    pthread_rwlock_unlock(&sink_lock);
}

/* Hands the line to every sink whose level it reaches; lines logged by a sink stop here. */
static void to_sinks(enum nx_log_level lvl, const char *component, const struct nx_buf *clean)
{
    struct nx_log_line l = {
        .level = lvl,
        .component = component,
        .agent = ctx_agent,
        .session = ctx_session,
        .msg = nx_buf_cstr(clean),
        .len = clean->len,
        .context = ctx_id,
    };
    in_sink = true;
    pthread_rwlock_rdlock(&sink_lock);
    for (size_t i = 0; i < NX_LOG_MAX_SINKS; i++) {
        if (sinks[i].fn && (int)lvl >= sinks[i].min)
            sinks[i].fn(&l, sinks[i].udata);
    }
    pthread_rwlock_unlock(&sink_lock);
    in_sink = false;
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

uint64_t nx_log_context_new(void)
{
    return atomic_fetch_add_explicit(&ctx_last, 1, memory_order_relaxed) + 1;
}

uint64_t nx_log_context_swap(uint64_t id)
{
    uint64_t prev = ctx_id;
    ctx_id = id;
    return prev;
}

uint64_t nx_log_context_current(void)
{
    return ctx_id;
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

static void vemit(enum nx_log_level lvl, const char *component, bool is_forced, const char *fmt, va_list ap)
    __attribute__((format(printf, 4, 0)));

static void vemit(enum nx_log_level lvl, const char *component, bool is_forced, const char *fmt, va_list ap)
{
    struct nx_buf msg = NX_BUF_INIT, clean = NX_BUF_INIT, line = NX_BUF_INIT;
    char ts[32];
    bool is_written = is_forced || (int)lvl >= atomic_load(&log_level);
    bool is_sunk = !in_sink && (int)lvl >= atomic_load(&sink_min);

    if (!is_written && !is_sunk)
        return;
    nx_buf_vprintf(&msg, fmt, ap);
    nx_redact_append(&clean, nx_buf_cstr(&msg), msg.len);
    if (is_sunk)
        to_sinks(lvl, component, &clean);
    if (!is_written)
        goto out;
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
        if (ctx_agent) {
            nx_buf_puts(&line, " agent=");
            nx_buf_put_term_safe(&line, ctx_agent, strlen(ctx_agent), false);
        }
        if (ctx_session) {
            nx_buf_puts(&line, " session=");
            nx_buf_put_term_safe(&line, ctx_session, strlen(ctx_session), false);
        }
        nx_buf_puts(&line, ": ");
        nx_buf_put_term_safe(&line, nx_buf_cstr(&clean), clean.len, false);
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
out:
    nx_buf_cleanup(&msg);
    nx_buf_cleanup(&clean);
    nx_buf_cleanup(&line);
}

void nx_log_vwrite(enum nx_log_level lvl, const char *component, const char *fmt, va_list ap)
{
    vemit(lvl, component, true, fmt, ap);
}

void nx_log_write(enum nx_log_level lvl, const char *component, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vemit(lvl, component, true, fmt, ap);
    va_end(ap);
}

void nx_log_emit(enum nx_log_level lvl, const char *component, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vemit(lvl, component, false, fmt, ap);
    va_end(ap);
}
