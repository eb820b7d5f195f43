/* Helpers shared by the LLM provider tests (included by tests/unit/test_llm_*.c only, after
 * <cmocka.h>): start tests/fakes/fake_llm.py as a child, drive its control endpoints, run the
 * loop until a condition holds, open a provider on a fresh loop, and collect a call's outcome.
 * The process, HTTP and loop plumbing is tests/unit/test_support.h. */
#ifndef NX_TEST_LLM_FAKE_H
#define NX_TEST_LLM_FAKE_H

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/clock.h"
#include "core/error.h"
#include "core/metrics.h"
#include "http/client.h"
#include "llm/internal.h"
#include "llm/llm.h"
#include "test_support.h"

static struct ts_child g_fake = TS_CHILD_INIT;

static inline int fake_group_setup(void **state)
{
    (void)state;
    return ts_spawn_py(&g_fake, "fakes/fake_llm.py");
}

static inline int fake_group_teardown(void **state)
{
    (void)state;
    ts_kill(&g_fake);
    return 0;
}

static inline void fake_post(const char *path, const char *body)
{
    ts_http_post(g_fake.port, path, body);
}

static inline void fake_reset(void)
{
    fake_post("/_reset", "{}");
}

static inline void fake_script(const char *steps_json)
{
    fake_post("/_script", steps_json);
}

/* The recorded requests (a JSON array; caller decrefs). */
static inline json_t *fake_requests(void)
{
    json_t *j = ts_http_get_json(g_fake.port, "/_requests");

    if (!json_is_array(j)) {
        fprintf(stderr, "fake: bad /_requests\n");
        abort();
    }
    return j;
}

/* The last recorded request (caller decrefs); there must be one. */
static inline json_t *last_request(void)
{
    json_t *all = fake_requests(), *last;

    assert_true(json_array_size(all) > 0);
    last = json_incref(json_array_get(all, json_array_size(all) - 1));
    json_decref(all);
    return last;
}

static inline size_t nrequests(void)
{
    json_t *all = fake_requests();
    size_t n = json_array_size(all);

    json_decref(all);
    return n;
}

/* ---- the loop ---------------------------------------------------------------------------- */

/* Runs the loop until *count >= want (count may be NULL: run for timeout_ms). */
static inline void run_until(uv_loop_t *loop, const int *count, int want, uint64_t timeout_ms)
{
    ts_run_until_count(loop, count, want, timeout_ms);
}

struct env {
    uv_loop_t loop;
    struct nx_http_client *http;
};

/* The provider tests run twice: plain http:// calls by nexo's own HTTP/1.1 engine, then every
 * call by libcurl (which real providers, over TLS, always use). */
static bool g_llm_curl_only;

static inline int llm_client_new(uv_loop_t *loop, const struct nx_http_client_opts *o,
                                 struct nx_http_client **out)
{
    struct nx_http_client_opts co = {0};

    if (o)
        co = *o;
    co.is_curl_only = g_llm_curl_only;
    return nx_http_client_new(loop, &co, out);
}

static inline int run_on_both_engines(const struct CMUnitTest *tests, size_t n, CMFixtureFunction setup,
                                      CMFixtureFunction teardown)
{
    return ts_run_twice(&g_llm_curl_only, tests, n, setup, teardown);
}

static inline void env_init(struct env *e)
{
    if (uv_loop_init(&e->loop) != 0 || llm_client_new(&e->loop, NULL, &e->http) != 0)
        abort();
}

static inline void env_cleanup(struct env *e)
{
    nx_http_client_free(e->http);
    if (ts_loop_finish(&e->loop) != 0) {
        fprintf(stderr, "loop has open handles\n");
        abort();
    }
}

static uint32_t provider_stall_ms; /* the next providers' stall_timeout_ms (0: the default) */

static inline struct nx_llm_provider *provider(struct env *e, const char *name, const char *kind,
                                               const char *key, uint32_t timeout_ms,
                                               const struct nx_breaker_conf *bc)
{
    struct nx_llm_provider_conf c;
    struct nx_llm_provider *p = NULL;
    char base[128];

    memset(&c, 0, sizeof c);
    ts_url(base, sizeof base, "127.0.0.1", g_fake.port, strcmp(kind, "openai") == 0 ? "/v1/" : "/");
    c.name = name;
    c.kind = kind;
    c.api_key = key;
    c.base_url = base;
    c.timeout_ms = timeout_ms;
    c.stall_timeout_ms = provider_stall_ms;
    c.breaker = bc;
    if (nx_llm_provider_new(e->http, &c, &p) != 0)
        abort();
    return p;
}

/* The older names, kept for callers that start and stop the fake themselves. */
static inline int fake_start(void)
{
    return ts_spawn_py(&g_fake, "fakes/fake_llm.py");
}

static inline void fake_stop(void)
{
    ts_kill(&g_fake);
}

static inline char *fake_http(const char *method, const char *path, const char *body)
{
    return ts_http(g_fake.port, method, path, body);
}

static inline void fake_url(char *out, size_t n, const char *suffix)
{
    ts_url(out, n, "127.0.0.1", g_fake.port, suffix);
}

/* ---- one call's outcome ------------------------------------------------------------------ */

struct outcome {
    int ndone;
    int rc;
    struct nx_buf text;      /* streamed deltas, joined */
    int ndeltas;
    json_t *message;
    enum nx_llm_stop stop;
    struct nx_llm_usage usage;
    char model[128];
    int http_status;
    char error_type[128];
    char error_message[1024];
    int64_t retry_after_ms;
    bool is_retryable;
    struct nx_llm_call *call;
    int cancel_after_deltas; /* > 0: cancel from on_text after that many deltas */
    uint64_t done_ms;
};

static inline void oc_text(const char *d, size_t n, void *u)
{
    struct outcome *o = u;
    nx_buf_append(&o->text, d, n);
    o->ndeltas++;
    if (o->cancel_after_deltas && o->ndeltas == o->cancel_after_deltas)
        nx_llm_cancel(o->call);
}

static inline void oc_done(int rc, const struct nx_llm_result *r, void *u)
{
    struct outcome *o = u;
    o->ndone++;
    o->rc = rc;
    o->done_ms = nx_mono_ms();
    o->message = r->message ? json_incref(r->message) : NULL;
    o->stop = r->stop;
    o->usage = r->usage;
    snprintf(o->model, sizeof o->model, "%s", r->model ? r->model : "");
    o->http_status = r->http_status;
    snprintf(o->error_type, sizeof o->error_type, "%s", r->error_type ? r->error_type : "");
    snprintf(o->error_message, sizeof o->error_message, "%s", r->error_message ? r->error_message : "");
    o->retry_after_ms = r->retry_after_ms;
    o->is_retryable = r->is_retryable;
}

static inline void outcome_cleanup(struct outcome *o)
{
    nx_buf_cleanup(&o->text);
    json_decref(o->message);
}

static inline const struct nx_llm_callbacks *callbacks(struct outcome *o)
{
    static struct nx_llm_callbacks cb;
    cb.on_text = oc_text;
    cb.on_done = oc_done;
    cb.udata = o;
    return &cb;
}

/* The text of the message's first text block, or "". */
static inline const char *message_text(const json_t *m)
{
    size_t i;
    json_t *b;

    json_array_foreach(json_object_get(m, "content"), i, b) {
        if (nx_json_str(b, "type") && !strcmp(nx_json_str(b, "type"), "text"))
            return nx_json_str(b, "text");
    }
    return "";
}

static inline json_t *user_messages(const char *text)
{
    return json_pack("[{s:s, s:[{s:s, s:s}]}]", "role", "user", "content", "type", "text", "text", text);
}

/* Starts req on p and runs the loop until it is done (10 s); on_done never runs inside start. */
static inline void run_call(struct env *e, struct nx_llm_provider *p, struct nx_llm_request *req,
                            struct outcome *o)
{
    o->call = nx_llm_start(p, req, callbacks(o));
    assert_non_null(o->call);
    assert_int_equal(o->ndone, 0);
    run_until(&e->loop, &o->ndone, 1, 10000);
    assert_int_equal(o->ndone, 1);
}

/* ---- one provider on a fresh loop ------------------------------------------------------- */

struct one {
    struct env e;
    struct nx_llm_provider *p;
    json_t *msgs; /* a one-line user conversation */
};

/* Resets the fake, gives it script (NULL: its default answer), and opens provider `name`. */
static inline void one_open(struct one *t, const char *name, const char *kind, const char *key,
                            uint32_t timeout_ms, const char *script, const char *user_text)
{
    fake_reset();
    if (script)
        fake_script(script);
    env_init(&t->e);
    t->p = provider(&t->e, name, kind, key, timeout_ms, NULL);
    t->msgs = user_messages(user_text);
}

static inline void one_close(struct one *t)
{
    json_decref(t->msgs);
    nx_llm_provider_free(t->p);
    env_cleanup(&t->e);
}

/* An upstream error and how it must be reported. */
struct err_case {
    const char *script;
    const char *key;
    int rc;
    int status;
    const char *type;
    int64_t retry_ms;
    bool retryable;
};

/* Runs each case whole and streamed (a streamed request's error body arrives through on_data)
 * against a `kind` provider; the error message must not leak `secret`. */
static inline void check_err_cases(const char *kind, const char *model, const struct err_case *cases,
                                   size_t n, const char *secret)
{
    for (size_t i = 0; i < 2 * n; i++) {
        const struct err_case *c = &cases[i / 2];
        struct one t;
        struct outcome o = {0};
        struct nx_llm_request req = {.model = model, .temperature = -1, .stream = i % 2 == 1};

        one_open(&t, kind, kind, c->key, 0, c->script, "hi");
        req.messages = t.msgs;
        run_call(&t.e, t.p, &req, &o);
        assert_int_equal(o.rc, c->rc);
        assert_int_equal(o.http_status, c->status);
        assert_string_equal(o.error_type, c->type);
        assert_true(o.error_message[0] != '\0');
        assert_null(strstr(o.error_message, secret));
        assert_int_equal(o.retry_after_ms, c->retry_ms);
        assert_int_equal(o.is_retryable, c->retryable);
        assert_null(o.message);
        outcome_cleanup(&o);
        one_close(&t);
    }
}

/* ---- request bodies --------------------------------------------------------------------- */

/* A session's history is encoded once per message and reused (llm/frag_cache.c): the body
 * build_body makes is the same byte for byte with and without the cache, and stays so on the
 * next turn. */
static inline void check_body_same_with_fragment_cache(int (*build_body)(const struct nx_llm_request *req,
                                                                        struct nx_buf *out, const char **why))
{
    const char *convo =
        "[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"hi \\u00e9\"}]},"
        "{\"role\":\"assistant\",\"content\":[{\"type\":\"text\",\"text\":\"let me see\"},"
        "{\"type\":\"tool_use\",\"id\":\"t1\",\"name\":\"time_now\",\"input\":{}}]},"
        "{\"role\":\"user\",\"content\":[{\"type\":\"tool_result\",\"tool_use_id\":\"t1\","
        "\"content\":\"noon\"}]}]";
    json_t *msgs = json_loads(convo, 0, NULL);
    json_t *tools = json_loads("[{\"name\":\"time_now\",\"description\":\"the time\","
                               "\"input_schema\":{\"type\":\"object\"}}]", 0, NULL);
    struct nx_llm_request req = {.model = "m", .system = "sys", .messages = msgs, .tools = tools,
                                 .temperature = -1, .stream = true};
    struct nx_buf plain = NX_BUF_INIT, cached = NX_BUF_INIT, again = NX_BUF_INIT;
    const char *why = NULL;
    assert_non_null(msgs);
    assert_int_equal(build_body(&req, &plain, &why), 0);
    req.is_history_stable = true;
    assert_int_equal(build_body(&req, &cached, &why), 0);
    assert_int_equal(build_body(&req, &again, &why), 0);
    assert_string_equal(nx_buf_cstr(&plain), nx_buf_cstr(&cached));
    assert_string_equal(nx_buf_cstr(&plain), nx_buf_cstr(&again));
    json_t *body = json_loads(nx_buf_cstr(&again), 0, NULL);
    assert_non_null(body);
    assert_string_equal(json_string_value(json_object_get(body, "model")), "m");
    assert_int_equal(json_array_size(json_object_get(body, "tools")), 1);
    assert_true(json_array_size(json_object_get(body, "messages")) >= 3);
    assert_true(nx_llm_message_tokens(json_array_get(msgs, 0)) > 0);
    json_decref(body);
    json_decref(msgs);
    json_decref(tools);
    assert_int_equal(nx_llm_frag_sweep(), 0); /* nothing else holds those messages now */
    nx_buf_cleanup(&plain);
    nx_buf_cleanup(&cached);
    nx_buf_cleanup(&again);
}

#endif
