#ifndef NX_TEST_MCP_FIXTURE_H
#define NX_TEST_MCP_FIXTURE_H

/* Shared by the MCP tests: loop helpers, an answer recorder, and status lookups. Header-only
 * (static functions), included by one test file each. */

#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "core/clock.h"
#include "core/log.h"
#include "mcp/mcp.h"
#include "tools/tool.h"

struct answer {
    int calls;
    bool is_error;
    char *text;
};

/* Writes a test's Python fake server to /tmp/<prefix>-<pid>.py (into path) and sets the log
 * level (NX_TEST_LOG=1: debug). 0, or -1 when the file cannot be written. */
static inline int fake_script_write(char *path, size_t size, const char *prefix, const char *text)
{
    FILE *f;

    snprintf(path, size, "/tmp/%s-%d.py", prefix, (int)getpid());
    if (!(f = fopen(path, "w")))
        return -1;
    fputs(text, f);
    fclose(f);
    nx_log_set_level(getenv("NX_TEST_LOG") ? NX_LOG_DEBUG : NX_LOG_OFF);
    return 0;
}

static inline void on_answer(const char *output, size_t len, bool is_error, void *udata)
{
    struct answer *a = udata;

    a->calls++;
    a->is_error = is_error;
    free(a->text);
    a->text = strndup(output, len);
}

static inline void guard_tick(uv_timer_t *t)
{
    (void)t;
}

typedef bool (*pred_fn)(void *arg);

/* Runs the loop until pred(arg) holds or timeout_ms passes; returns pred's last value. */
static inline bool run_until(uv_loop_t *loop, pred_fn pred, void *arg, uint64_t timeout_ms)
{
    uint64_t deadline = nx_mono_ms() + timeout_ms;
    uv_timer_t guard;
    bool ok;

    uv_timer_init(loop, &guard);
    uv_timer_start(&guard, guard_tick, 10, 10);
    while (!(ok = pred(arg)) && nx_mono_ms() < deadline)
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&guard, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    return ok;
}

static inline bool never(void *arg)
{
    (void)arg;
    return false;
}

static inline bool answered(void *arg)
{
    return ((struct answer *)arg)->calls > 0;
}

static inline bool tool_exists(void *arg)
{
    return nx_tool_find(arg) != NULL;
}

/* The status object of server `name` (new reference), or NULL. */
static inline json_t *server_status(struct nx_mcp_manager *m, const char *name)
{
    json_t *st = nx_mcp_manager_status(m), *out = NULL;
    json_t *arr = json_object_get(st, "servers");

    for (size_t i = 0; i < json_array_size(arr); i++) {
        json_t *s = json_array_get(arr, i);

        if (strcmp(json_string_value(json_object_get(s, "name")), name) == 0)
            out = json_incref(s);
    }
    json_decref(st);
    return out;
}

static inline long long status_int(struct nx_mcp_manager *m, const char *name, const char *key)
{
    json_t *s = server_status(m, name);
    json_t *v = json_object_get(s, key);
    long long r = json_is_integer(v) ? json_integer_value(v) : -1;

    json_decref(s);
    return r;
}

static inline long long session_int(struct nx_mcp_manager *m, const char *name, const char *key)
{
    json_t *s = server_status(m, name);
    json_t *v = json_object_get(json_object_get(s, "session"), key);
    long long r = json_is_integer(v) ? json_integer_value(v) : -1;

    json_decref(s);
    return r;
}

/* Frees the manager and lets every handle close; the loop must end empty. */
static inline void finish_loop(uv_loop_t *loop, struct nx_mcp_manager *m, uint64_t timeout_ms)
{
    uint64_t deadline = nx_mono_ms() + timeout_ms;

    nx_mcp_manager_free(m);
    while (uv_run(loop, UV_RUN_ONCE) && nx_mono_ms() < deadline)
        ;
}

static struct nx_tool_ctx test_ctx = {.agent_id = "test"};

/* Calls a registered tool with JSON args and waits for its answer. */
static inline bool call_tool(uv_loop_t *loop, const char *name, const char *args_json, struct answer *a,
                      uint64_t timeout_ms)
{
    json_t *args = json_loads(args_json, 0, NULL);

    memset(a, 0, sizeof *a);
    test_ctx.loop = loop;
    nx_tool_invoke(&test_ctx, NULL, name, args, on_answer, a);
    json_decref(args);
    return run_until(loop, answered, a, timeout_ms);
}

#endif
