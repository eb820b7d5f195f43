#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"
#include "core/redact.h"
#include "core/buf.h"
#include "core/error.h"
#include "test_support.h"

static const char *data_dir(void)
{
    const char *d = getenv("NEXO_TEST_DATA");
    return d ? d : "tests/data";
}

static char *path_join(const char *a, const char *b)
{
    struct nx_buf p = NX_BUF_INIT;
    nx_buf_printf(&p, "%s/%s", a, b);
    return nx_buf_steal(&p);
}

static void clear_env(void)
{
    unsetenv("ANTHROPIC_API_KEY");
    unsetenv("OPENAI_API_KEY");
    unsetenv("NX_TEST_GATEWAY_TOKEN");
    unsetenv("NX_TEST_MCP_TOKEN");
    unsetenv("NX_TEST_UNSET_ANTHROPIC_KEY");
    unsetenv("NX_TEST_SURELY_UNSET_KEY");
    unsetenv("NX_TEST_SURELY_UNSET_URL");
    unsetenv("NX_TEST_SURELY_UNSET_TG");
    unsetenv("NX_TEST_SURELY_UNSET_PROXY");
}

/* Diagnostics as printed, with `strip` removed from the start of each line. */
static char *printed(const struct nx_diags *d, const char *strip)
{
    char *mem = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&mem, &len);
    assert_non_null(f);
    nx_diags_print(d, f);
    fclose(f);
    struct nx_buf out = NX_BUF_INIT;
    size_t sl = strip ? strlen(strip) : 0;
    for (char *line = mem; *line;) {
        char *nl = strchr(line, '\n');
        size_t n = nl ? (size_t)(nl - line + 1) : strlen(line);
        if (sl && strncmp(line, strip, sl) == 0)
            nx_buf_append(&out, line + sl, n - sl);
        else
            nx_buf_append(&out, line, n);
        line += n;
    }
    free(mem);
    char *s = nx_buf_steal(&out);
    return s;
}

static void test_config_defaults_without_dir(void **state)
{
    (void)state;
    struct nx_diags d;
    struct nx_config *c = NULL;
    const struct nx_agent_conf *agents;

    clear_env();
    nx_diags_init(&d);
    assert_int_equal(nx_config_load(NULL, &c, &d), 0);
    assert_int_equal(d.n, 0);
    assert_null(nx_config_dir(c));
    const struct nx_gateway_conf *g = nx_config_gateway(c);
    assert_string_equal(g->listen.host, "127.0.0.1");
    assert_int_equal(g->listen.port, 8080);
    assert_int_equal(g->metrics_listen.port, 9090);
    assert_int_equal(g->admin_listen.port, 9091);
    assert_null(g->auth_token);
    assert_int_equal(g->limits.max_connections, 1024);
    assert_int_equal(g->limits.max_header_bytes, 16384);
    assert_int_equal(g->limits.max_body_bytes, 8 << 20);
    assert_int_equal(g->limits.request_timeout_ms, 10000);
    assert_int_equal(g->limits.keepalive_timeout_ms, 30000);
    assert_null(g->http_client.proxy);
    assert_int_equal(g->http_client.connect_timeout_ms, 10000);
    assert_int_equal(g->http_client.timeout_ms, 120000);
    assert_int_equal(g->http_client.max_response_bytes, 32 << 20);
    assert_int_equal(g->shutdown_grace_ms, 10000);
    assert_non_null(g->redact_patterns);
    assert_null(g->redact_patterns[0]);
    assert_null(g->log_level);

    assert_int_equal(nx_config_broker(c)->type, NX_BROKER_LOCAL);
    assert_int_equal(nx_config_broker(c)->limits.max_payload, 4 << 20);
    assert_int_equal(nx_config_llm(c)->n_providers, 2);
    assert_int_equal(nx_config_provider(c, "anthropic")->kind, NX_PROVIDER_ANTHROPIC);
    assert_string_equal(nx_config_provider(c, "anthropic")->api_key, "");
    assert_int_equal(nx_config_provider(c, "openai")->kind, NX_PROVIDER_OPENAI);
    assert_int_equal(nx_config_llm(c)->retry.max_attempts, 5);
    assert_int_equal(nx_config_memory(c)->short_term.session_ttl_ms, 24 * 3600 * 1000);
    assert_string_equal(nx_config_memory(c)->long_term.sqlite_path, "./data/memory.db");
    assert_false(nx_config_mcp(c)->enabled);
    assert_int_equal(nx_config_mcp(c)->session_ttl_ms, 30 * 60 * 1000);

    assert_int_equal(nx_config_agents(c, &agents), 1);
    assert_string_equal(agents[0].id, "main");
    assert_string_equal(agents[0].model.provider, "anthropic");
    assert_string_equal(agents[0].model.model, "claude-haiku-4-5");
    assert_int_equal(agents[0].config.debounce_ms, 2000);
    assert_int_equal(agents[0].config.queue_cap, 32);
    assert_string_equal(agents[0].skills_dir, "./skills");
    assert_null(agents[0].sender_rate_limit);
    assert_null(agents[0].allowed_tools[0]);
    assert_int_equal(nx_config_plugins(c, &(const struct nx_plugin_conf *){NULL}), 0);
    nx_config_unref(c);

    /* The default agent follows the keys in the environment. */
    setenv("OPENAI_API_KEY", "sk-test", 1);
    assert_int_equal(nx_config_load(NULL, &c, &d), 0);
    assert_string_equal(nx_config_agent(c, "main")->model.provider, "openai");
    assert_string_equal(nx_config_agent(c, "main")->model.model, "gpt-4o-mini");
    assert_string_equal(nx_config_provider(c, "openai")->api_key, "sk-test");
    nx_config_unref(c);
    setenv("ANTHROPIC_API_KEY", "sk-ant-test", 1);
    assert_int_equal(nx_config_load(NULL, &c, &d), 0);
    assert_string_equal(nx_config_agent(c, "main")->model.provider, "anthropic");
    nx_config_unref(c);
    clear_env();
    nx_diags_cleanup(&d);
}

static void test_config_good_config_loads_every_value(void **state)
{
    (void)state;
    struct nx_diags d;
    struct nx_config *c = NULL;
    char *dir = path_join(data_dir(), "good-config");

    clear_env();
    setenv("NX_TEST_MCP_TOKEN", "mcp-secret", 1);
    nx_diags_init(&d);
    int rc = nx_config_load(dir, &c, &d);
    if (rc != 0)
        nx_diags_print(&d, stderr);
    assert_int_equal(rc, 0);
    assert_string_equal(nx_config_dir(c), dir);

    const struct nx_gateway_conf *g = nx_config_gateway(c);
    assert_string_equal(g->listen.host, "127.0.0.1");
    assert_int_equal(g->listen.port, 18080);
    assert_string_equal(g->metrics_listen.host, "::1");
    assert_int_equal(g->metrics_listen.port, 0);
    assert_string_equal(g->admin_listen.host, "localhost");
    assert_int_equal(g->admin_listen.port, 19091);
    assert_string_equal(g->auth_token, "dev-token");
    assert_int_equal(g->limits.max_connections, 256);
    assert_int_equal(g->limits.max_header_bytes, 32 * 1024);
    assert_int_equal(g->limits.max_body_bytes, 4 << 20);
    assert_int_equal(g->limits.request_timeout_ms, 15000);
    assert_int_equal(g->limits.keepalive_timeout_ms, 60000);
    assert_string_equal(g->http_client.proxy, "socks5h://127.0.0.1:1080");
    assert_int_equal(g->http_client.connect_timeout_ms, 2500);
    assert_int_equal(g->http_client.timeout_ms, 90000);
    assert_int_equal(g->http_client.max_response_bytes, 64 << 20);
    assert_int_equal(g->shutdown_grace_ms, 90000);
    assert_string_equal(g->log_level, "debug");
    assert_string_equal(g->redact_patterns[0], "secret-[0-9]+");
    assert_string_equal(g->redact_patterns[1], "tok_[A-Za-z]{8}");
    assert_null(g->redact_patterns[2]);

    const struct nx_llm_conf *llm = nx_config_llm(c);
    assert_int_equal(llm->n_providers, 3);
    const struct nx_provider_conf *p = nx_config_provider(c, "anthropic");
    assert_int_equal(p->kind, NX_PROVIDER_ANTHROPIC);
    assert_string_equal(p->api_key, "");
    assert_string_equal(p->base_url, "https://api.anthropic.com");
    assert_true(p->rate_limit.requests_per_second == 2.5);
    assert_int_equal(p->rate_limit.quota_alert_threshold, 100000);
    assert_string_equal(json_string_value(json_object_get(p->auth, "mode")), "oauth_bundle");
    p = nx_config_provider(c, "minimax");
    assert_int_equal(p->kind, NX_PROVIDER_OPENAI);
    assert_string_equal(p->api_key, "mm-key-123");
    assert_string_equal(p->group_id, "12345");
    assert_string_equal(p->api_flavor, "openai_compat");
    assert_string_equal(nx_strmap_get(&p->headers, "X-Trace"), "nexo");
    assert_true(p->rate_limit.requests_per_second == 2.0);
    p = nx_config_provider(c, "local");
    assert_int_equal(p->kind, NX_PROVIDER_OPENAI);
    assert_string_equal(p->embedding_model, "nomic-embed-text");
    assert_int_equal(p->timeout_ms, 300000);
    assert_int_equal(llm->retry.max_attempts, 3);
    assert_int_equal(llm->retry.initial_backoff_ms, 500);
    assert_int_equal(llm->retry.max_backoff_ms, 30000);
    assert_true(llm->retry.backoff_multiplier == 1.5);
    assert_true(json_is_true(json_object_get(json_object_get(llm->context_optimization, "prompt_cache"),
                                             "enabled")));

    const struct nx_broker_conf *b = nx_config_broker(c);
    assert_int_equal(b->type, NX_BROKER_NATS);
    assert_string_equal(b->url, "nats://127.0.0.1:4222");
    assert_string_equal(b->urls[1], "tls://nats.internal:4222");
    assert_null(b->urls[2]);
    assert_true(b->auth.enabled);
    assert_string_equal(b->auth.nkey_file, "/run/secrets/nats.nkey");
    assert_string_equal(b->persistence.path, "./data/queue/broker.db");
    assert_int_equal(b->limits.max_payload, 2 << 20);
    assert_int_equal(b->limits.max_pending, 5000);
    assert_string_equal(b->fallback.mode, "local_queue");
    assert_false(b->fallback.drain_on_reconnect);
    assert_int_equal(b->reconnect.initial_backoff_ms, 100);
    assert_int_equal(b->reconnect.max_backoff_ms, 5000);
    assert_int_equal(b->dlq.max_attempts, 4);

    const struct nx_memory_conf *m = nx_config_memory(c);
    assert_int_equal(m->short_term.max_history_turns, 40);
    assert_int_equal(m->short_term.session_ttl_ms, 12 * 3600 * 1000);
    assert_int_equal(m->short_term.max_sessions, 500);
    assert_string_equal(m->long_term.sqlite_path, "./data/mem.db");
    assert_true(m->vector.enabled);
    assert_int_equal(m->vector.default_recall_mode, 2);
    assert_int_equal(m->vector.embedding.dimensions, 768);
    assert_int_equal(m->vector.embedding.timeout_secs, 10);
    assert_int_equal(m->secret_guard.on_secret, 1);
    assert_string_equal(json_string_value(m->secret_guard.rules), "all");
    assert_string_equal(m->secret_guard.exclude_rules[0], "generic_api_key");
    json_t *retention = json_object_get(m->snapshot, "retention");
    assert_int_equal(json_integer_value(json_object_get(retention, "keep_count")), 30);

    const struct nx_mcp_conf *mcp = nx_config_mcp(c);
    assert_true(mcp->enabled);
    assert_int_equal(mcp->call_timeout_ms, 45000);
    assert_int_equal(mcp->n_servers, 2);
    assert_string_equal(mcp->servers[0].name, "fs");
    assert_int_equal(mcp->servers[0].transport, NX_MCP_STDIO);
    assert_string_equal(mcp->servers[0].command, "npx");
    assert_string_equal(mcp->servers[0].args[1], "@modelcontextprotocol/server-filesystem");
    assert_string_equal(nx_strmap_get(&mcp->servers[0].env, "NODE_ENV"), "production");
    assert_null(mcp->servers[0].cwd);
    assert_int_equal(mcp->servers[1].transport, NX_MCP_STREAMABLE_HTTP);
    assert_string_equal(nx_strmap_get(&mcp->servers[1].headers, "Authorization"), "Bearer mcp-secret");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(mcp->extra, "resource_cache"),
                                                        "max_entries")),
                     256);

    const struct nx_agent_conf *k = nx_config_agent(c, "kate");
    assert_non_null(k);
    assert_string_equal(k->description, "Personal assistant");
    assert_string_equal(k->model.provider, "anthropic");
    assert_int_equal(k->model.n_fallbacks, 1);
    assert_string_equal(k->model.fallbacks[0].provider, "minimax");
    assert_string_equal(k->model.fallbacks[0].model, "MiniMax-M2");
    assert_int_equal(k->model.fallbacks[0].context_window, 204800);
    assert_int_equal(k->model.context_window, 0); /* from the model's name */
    assert_string_equal(k->system_prompt, "You are Kate.\nBe brief.\n");
    assert_string_equal(k->workspace, "./workspace/kate");
    assert_string_equal(k->plugins[0], "telegram");
    assert_string_equal(k->skills[1], "summarize");
    assert_string_equal(nx_strmap_get(&k->skill_overrides, "weather"), "warn");
    assert_string_equal(k->allowed_tools[0], "memory_*");
    assert_null(k->allowed_tools[3]);
    assert_string_equal(nx_strlistmap_get(&k->outbound_allowlist, "telegram")[1], "-1001234");
    assert_string_equal(nx_strlistmap_get(&k->outbound_allowlist, "whatsapp")[0], "573001112233");
    assert_non_null(k->sender_rate_limit);
    assert_true(k->sender_rate_limit->rps == 0.5);
    assert_int_equal(k->sender_rate_limit->burst, 3);
    assert_int_equal(k->n_inbound_bindings, 2);
    assert_string_equal(k->inbound_bindings[0].plugin, "telegram");
    assert_string_equal(k->inbound_bindings[0].instance, "kate_bot");
    assert_string_equal(json_string_value(json_object_get(k->inbound_bindings[0].overrides,
                                                          "system_prompt_extra")),
                        "Reply in Spanish.");
    assert_null(k->inbound_bindings[1].instance);
    assert_int_equal(json_object_size(k->inbound_bindings[1].overrides), 0);
    assert_string_equal(k->language, "es");
    assert_string_equal(k->allowed_delegates[0], "ops");
    assert_string_equal(k->accept_delegates_from[0], "*");
    assert_int_equal(k->config.debounce_ms, 1000);
    assert_int_equal(k->config.queue_cap, 8);
    assert_int_equal(k->limits.max_tool_iterations, 8);
    assert_int_equal(k->limits.max_tokens, 2048);
    assert_int_equal(k->limits.daily_token_budget, 1000000);
    assert_true(k->heartbeat.enabled);
    assert_int_equal(k->heartbeat.interval_ms, 600000);
    assert_string_equal(nx_strmap_get(&k->credentials, "telegram"), "kate_bot");
    assert_non_null(json_object_get(k->tool_rate_limits, "patterns"));
    json_t *policy = json_object_get(k->extra, "dispatch_policy");
    assert_string_equal(json_string_value(json_object_get(policy, "mode")), "read_only");
    assert_int_equal(k->origin_line, 2);
    assert_int_equal(k->origin_col, 9);

    const struct nx_plugin_conf *tg = nx_config_plugin(c, "telegram");
    assert_non_null(tg);
    json_t *inst = json_array_get(json_object_get(tg->json, "telegram"), 0);
    assert_string_equal(json_string_value(json_object_get(inst, "token")), "123:telegram-token");
    json_t *polling = json_object_get(inst, "polling");
    assert_int_equal(json_integer_value(json_object_get(polling, "interval_ms")), 25000);
    assert_non_null(tg->root);
    assert_null(nx_config_plugin(c, "whatsapp"));

    nx_config_unref(c);
    nx_diags_cleanup(&d);
    free(dir);
    clear_env();
}

static void test_config_dropins_replace_by_id_and_append(void **state)
{
    (void)state;
    struct nx_diags d;
    struct nx_config *c = NULL;
    const struct nx_agent_conf *a;
    char *dir = path_join(data_dir(), "good-config");

    nx_diags_init(&d);
    assert_int_equal(nx_config_load(dir, &c, &d), 0);
    assert_int_equal(nx_config_agents(c, &a), 3);
    assert_string_equal(a[0].id, "kate");
    assert_string_equal(a[1].id, "ops"); /* replaced in place by agents.d/10-ops.yaml */
    assert_string_equal(a[1].description, "Operations");
    assert_string_equal(a[1].model.model, "qwen2.5");
    assert_null(a[1].sender_rate_limit);
    assert_non_null(strstr(a[1].origin_file, "agents.d/10-ops.yaml"));
    assert_string_equal(a[2].id, "helper_2"); /* appended by agents.d/20-helper.yaml */
    nx_config_unref(c);

    /* A memory drop-in with no agents.yaml: the default agent is not added, the drop-in is the base. */
    const char *drop = "agents:\n  - id: solo\n    model: {provider: openai, model: gpt-4o}\n";
    assert_int_equal(nx_config_load_mem(NULL, "agents.d/solo.yaml", drop, strlen(drop), &c, &d), 0);
    assert_int_equal(nx_config_agents(c, &a), 1);
    assert_string_equal(a[0].id, "solo");
    nx_config_unref(c);
    nx_diags_cleanup(&d);
    free(dir);
}

static void write_file(const char *dir, const char *name, const char *text)
{
    char *path = path_join(dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    free(path);
}

/* Every repeat of an id in one file is reported against its first; drop-ins replace by id in
 * place, including an agent an earlier drop-in appended, and append the rest in order. */
static void test_config_duplicate_ids_and_dropins_by_id(void **state)
{
    (void)state;
    char tmp[] = "/tmp/nx-conf-XXXXXX";
    struct nx_diags d;
    struct nx_config *c = NULL;
    const struct nx_agent_conf *a;
    const char *m = "    model: {provider: anthropic, model: m}\n";
    char text[1024];

    assert_non_null(mkdtemp(tmp));
    char *drops = path_join(tmp, "agents.d");
    assert_int_equal(mkdir(drops, 0700), 0);
    snprintf(text, sizeof text, "agents:\n  - id: a\n%s  - id: b\n%s  - id: a\n%s  - id: c\n%s  - id: a\n%s",
             m, m, m, m, m);
    write_file(tmp, "agents.yaml", text);
    nx_diags_init(&d);
    assert_int_equal(nx_config_load(tmp, &c, &d), NX_ECONFIG);
    char *prefix = path_join(tmp, "");
    char *got = printed(&d, prefix);
    assert_string_equal(got,
                        "agents.yaml:6:9: duplicate agent id \"a\" (first defined at line 2, column 9)\n"
                        "agents.yaml:10:9: duplicate agent id \"a\" (first defined at line 2, column 9)\n");
    free(got);
    nx_diags_cleanup(&d);

    snprintf(text, sizeof text, "agents:\n  - id: a\n%s  - id: b\n%s  - id: c\n%s", m, m, m);
    write_file(tmp, "agents.yaml", text);
    snprintf(text, sizeof text, "agents:\n  - id: b\n    description: from 10\n%s  - id: d\n"
             "    description: from 10\n%s", m, m);
    write_file(drops, "10-first.yaml", text);
    snprintf(text, sizeof text, "agents:\n  - id: d\n    description: from 20\n%s  - id: e\n%s"
             "  - id: b\n    description: from 20\n%s", m, m, m);
    write_file(drops, "20-second.yaml", text);
    nx_diags_init(&d);
    assert_int_equal(nx_config_load(tmp, &c, &d), 0);
    assert_int_equal(nx_config_agents(c, &a), 5);
    static const char *const ids[] = {"a", "b", "c", "d", "e"};
    static const char *const descs[] = {NULL, "from 20", NULL, "from 20", NULL};
    for (size_t i = 0; i < 5; i++) {
        assert_string_equal(a[i].id, ids[i]);
        if (descs[i])
            assert_string_equal(a[i].description, descs[i]);
    }
    nx_config_unref(c);
    nx_diags_cleanup(&d);
    free(prefix);
    free(drops);
    ts_rm_tree(tmp);
}

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    char chunk[4096];
    size_t n;
    struct nx_buf b = NX_BUF_INIT;
    if (!f)
        return NULL;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        nx_buf_append(&b, chunk, n);
    fclose(f);
    return b.len ? nx_buf_steal(&b) : (nx_buf_cleanup(&b), strdup(""));
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Every tests/data/bad-config/NN-name/ fails to load with exactly the lines of its expected.txt. */
static void test_config_bad_configs_report_exact_positions(void **state)
{
    (void)state;
    char *root = path_join(data_dir(), "bad-config");
    DIR *dir = opendir(root);
    struct dirent *e;
    char *names[128];
    size_t n = 0;

    clear_env();
    assert_non_null(dir);
    while ((e = readdir(dir)) && n < 128)
        if (e->d_name[0] != '.')
            names[n++] = strdup(e->d_name);
    closedir(dir);
    qsort(names, n, sizeof *names, cmp_str);
    assert_true(n >= 18);
    int failures = 0;
    for (size_t i = 0; i < n; i++) {
        char *casedir = path_join(root, names[i]);
        char *expected_path = path_join(casedir, "expected.txt");
        char *prefix = path_join(casedir, "");
        char *expected = read_text(expected_path);
        struct nx_diags d;
        struct nx_config *c = NULL;

        assert_non_null(expected);
        nx_diags_init(&d);
        int rc = nx_config_load(casedir, &c, &d);
        char *got = printed(&d, prefix);
        if (rc != NX_ECONFIG || c != NULL || strcmp(got, expected) != 0 || d.n == 0) {
            fprintf(stderr, "bad-config/%s: rc=%d\n--- expected\n%s--- got\n%s", names[i], rc, expected, got);
            failures++;
        }
        nx_config_unref(c);
        nx_diags_cleanup(&d);
        free(got);
        free(expected);
        free(prefix);
        free(expected_path);
        free(casedir);
        free(names[i]);
    }
    free(root);
    assert_int_equal(failures, 0);
}

static void test_config_substituted_secret_never_in_a_diagnostic(void **state)
{
    (void)state;
    struct nx_diags d;
    struct nx_config *c = NULL;
    const char *text = "limits:\n  max_connections: \"${NX_TEST_SECRET}\"\nlisten: \"${NX_TEST_SECRET}\"\n";

    setenv("NX_TEST_SECRET", "hunter2-very-secret", 1);
    nx_diags_init(&d);
    assert_int_equal(nx_config_load_mem(NULL, "gateway.yaml", text, strlen(text), &c, &d), NX_ECONFIG);
    char *got = printed(&d, NULL);
    assert_null(strstr(got, "hunter2"));
    assert_string_equal(got,
                        "gateway.yaml:2:20: expected an integer for \"max_connections\", "
                        "got \"${NX_TEST_SECRET}\"\n"
                        "gateway.yaml:3:9: invalid address \"${NX_TEST_SECRET}\" for \"listen\" "
                        "(expected host:port, e.g. 127.0.0.1:8080)\n");
    free(got);
    nx_diags_cleanup(&d);
    unsetenv("NX_TEST_SECRET");
}

static void test_config_missing_dir_is_an_error(void **state)
{
    (void)state;
    struct nx_diags d;
    struct nx_config *c = NULL;

    nx_diags_init(&d);
    assert_int_equal(nx_config_load("/nonexistent/nexo-config", &c, &d), NX_ECONFIG);
    assert_null(c);
    char *got = printed(&d, NULL);
    assert_string_equal(got, "/nonexistent/nexo-config: cannot open config directory: "
                             "No such file or directory\n");
    free(got);
    nx_diags_cleanup(&d);
}

static void test_config_snapshot_is_reference_counted(void **state)
{
    (void)state;
    struct nx_diags d;
    struct nx_config *c = NULL;

    nx_diags_init(&d);
    assert_int_equal(nx_config_load(NULL, &c, &d), 0);
    struct nx_config *c2 = nx_config_ref(c);
    assert_ptr_equal(c, c2);
    nx_config_unref(c);
    /* Still alive through the second reference. */
    assert_int_equal(nx_config_gateway(c2)->listen.port, 8080);
    nx_config_unref(c2);
    nx_config_unref(NULL);
    assert_null(nx_config_ref(NULL));
    nx_diags_cleanup(&d);
}

/* nexo-rs's provider names get their own endpoints (an empty base_url means "the provider's
 * default" there); another name must say where it is, so that a key never goes to a guessed
 * vendor. */
static void test_config_provider_endpoints_by_name(void **state)
{
    (void)state;
    static const char good[] =
        "providers:\n"
        "  deepseek: {api_key: k1, base_url: \"\"}\n"
        "  gemini: {api_key: k2, base_url: https://generativelanguage.googleapis.com/v1beta}\n"
        "  minimax: {api_key: k3, api_flavor: anthropic_messages}\n"
        "  openai: {api_key: \"\"}\n"
        "  mine: {kind: openai, api_key: k4}\n"
        "  ollama: {api_key: \"\", base_url: \"http://127.0.0.1:11434/v1\"}\n";
    static const struct {
        const char *name, *base;
        int kind;
    } want[] = {
        {"deepseek", "https://api.deepseek.com/v1", NX_PROVIDER_OPENAI},
        {"gemini", "https://generativelanguage.googleapis.com/v1beta/openai", NX_PROVIDER_OPENAI},
        {"minimax", "https://api.minimax.io/anthropic", NX_PROVIDER_ANTHROPIC},
        {"openai", "https://api.openai.com/v1", NX_PROVIDER_OPENAI},
        {"mine", NULL, NX_PROVIDER_OPENAI}, /* the kind's own endpoint, api.openai.com */
        {"ollama", "http://127.0.0.1:11434/v1", NX_PROVIDER_OPENAI},
    };
    struct nx_diags d;
    struct nx_config *c = NULL;

    nx_diags_init(&d);
    assert_int_equal(nx_config_load_mem(NULL, "llm.yaml", good, strlen(good), &c, &d), 0);
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const struct nx_provider_conf *p = nx_config_provider(c, want[i].name);
        assert_non_null(p);
        assert_int_equal(p->kind, want[i].kind);
        if (want[i].base)
            assert_string_equal(p->base_url, want[i].base);
        else
            assert_null(p->base_url);
    }
    nx_config_unref(c);
    c = NULL;

    static const char bad[] = "providers:\n"
                              "  mine: {api_key: k}\n"
                              "  minimax: {kind: openai, api_key: k, api_flavor: anthropic_messages}\n";
    assert_int_equal(nx_config_load_mem(NULL, "llm.yaml", bad, strlen(bad), &c, &d), NX_ECONFIG);
    char *got = printed(&d, NULL);
    assert_non_null(strstr(got, "llm.yaml:2:9: provider mine: base_url is required"));
    assert_non_null(strstr(got, "llm.yaml:3:51: provider minimax: api_flavor anthropic_messages speaks"));
    free(got);
    nx_diags_cleanup(&d);
}

/* The values of secret-named keys, placeholders resolved, are what log lines, transcripts and
 * error messages redact whatever their format (nx_config_apply_redaction). */
static void test_config_secret_values_are_redacted_everywhere(void **state)
{
    static const char llm[] = "providers:\n"
                              "  groq: {kind: openai, base_url: \"https://api.groq.com/openai/v1\",\n"
                              "         api_key: \"${NX_TEST_GROQ_KEY}\",\n"
                              "         headers: {Authorization: \"Bearer tok_0123456789\"}}\n"
                              "  ollama: {kind: openai, base_url: \"http://127.0.0.1:11434/v1\",\n"
                              "           api_key: x}\n";
    struct nx_diags d;
    struct nx_config *c = NULL;
    struct nx_buf out = NX_BUF_INIT;
    char err[256];

    (void)state;
    setenv("NX_TEST_GROQ_KEY", "gsk_4Zr8X1qL0pWm9cVt7bNk", 1);
    nx_diags_init(&d);
    assert_int_equal(nx_config_load_mem(NULL, "llm.yaml", llm, strlen(llm), &c, &d), 0);
    const char *const *sec = nx_config_secrets(c);
    size_t n = 0;
    while (sec[n])
        n++;
    assert_int_equal(n, 3); /* the key, the header, its token; "x" is too short to redact */
    assert_int_equal(nx_config_apply_redaction(c, err, sizeof err), 0);
    static const char echo[] =
        "Incorrect API key provided: gsk_4Zr8X1qL0pWm9cVt7bNk; sent tok_0123456789";
    nx_redact_append(&out, echo, strlen(echo));
    assert_string_equal(nx_buf_cstr(&out), "Incorrect API key provided: [REDACTED]; sent [REDACTED]");
    nx_redact_set_literals(NULL);
    nx_buf_cleanup(&out);
    nx_config_unref(c);
    nx_diags_cleanup(&d);
    unsetenv("NX_TEST_GROQ_KEY");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_defaults_without_dir),
        cmocka_unit_test(test_config_good_config_loads_every_value),
        cmocka_unit_test(test_config_dropins_replace_by_id_and_append),
        cmocka_unit_test(test_config_duplicate_ids_and_dropins_by_id),
        cmocka_unit_test(test_config_bad_configs_report_exact_positions),
        cmocka_unit_test(test_config_substituted_secret_never_in_a_diagnostic),
        cmocka_unit_test(test_config_missing_dir_is_an_error),
        cmocka_unit_test(test_config_snapshot_is_reference_counted),
        cmocka_unit_test(test_config_provider_endpoints_by_name),
        cmocka_unit_test(test_config_secret_values_are_redacted_everywhere),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
