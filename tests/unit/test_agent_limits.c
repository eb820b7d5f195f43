/* Agent limits and prompt sources: workspace identity files (order, headings, cap, change
 * detection, symlinks out of the workspace refused), the budget reset time, and llm.yaml
 * circuit_breaker parsing (top-level defaults, per-provider values). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "agent/agent_internal.h"
#include "config/config.h"
#include "core/error.h"
#include "test_support.h"

static void put(const char *dir, const char *name, const char *text)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void test_identity_files_in_order_with_headings_and_changes_picked_up(void **state)
{
    (void)state;
    char ws[] = "/tmp/nx-ws-XXXXXX", out[] = "/tmp/nx-out-XXXXXX", link[600];
    assert_non_null(mkdtemp(ws));
    assert_non_null(mkdtemp(out));
    struct ws_cache *c = ws_cache_new(ws);
    assert_string_equal(ws_cache_text(c), "");

    put(ws, "MEMORY.md", "remember this\n");
    put(ws, "IDENTITY.md", "I am Kate.\n");
    put(ws, "notes.md", "not an identity file\n");
    assert_string_equal(ws_cache_text(c), "# IDENTITY.md\n\nI am Kate.\n\n# MEMORY.md\n\nremember this");

    put(ws, "SOUL.md", "kind\n");
    assert_string_equal(ws_cache_text(c),
                        "# IDENTITY.md\n\nI am Kate.\n\n# SOUL.md\n\nkind\n\n# MEMORY.md\n\nremember this");

    /* a symlink out of the workspace is refused; one inside it is followed */
    put(out, "secret.md", "SECRET\n");
    char target[600];
    snprintf(target, sizeof target, "%s/secret.md", out);
    snprintf(link, sizeof link, "%s/USER.md", ws);
    assert_int_equal(symlink(target, link), 0);
    assert_null(strstr(ws_cache_text(c), "SECRET"));
    unlink(link);
    assert_int_equal(symlink("SOUL.md", link), 0);
    assert_non_null(strstr(ws_cache_text(c), "# USER.md\n\nkind"));

    /* a big file is cut at 32 KiB with a note */
    struct nx_buf big = NX_BUF_INIT;
    for (int i = 0; i < 5000; i++)
        nx_buf_puts(&big, "0123456789");
    put(ws, "AGENTS.md", nx_buf_cstr(&big));
    const char *t = ws_cache_text(c);
    assert_non_null(strstr(t, "[AGENTS.md was cut at 32768 bytes]"));
    assert_true(strlen(t) < 34000);
    nx_buf_cleanup(&big);

    /* a removed file drops out */
    char p[600];
    snprintf(p, sizeof p, "%s/AGENTS.md", ws);
    unlink(p);
    assert_null(strstr(ws_cache_text(c), "AGENTS.md"));

    ws_cache_free(c);
    ts_rm_tree(ws);
    ts_rm_tree(out);
}

/* A workspace holding another agent's is off limits; one beside it whose name merely starts
 * the same ("a-b", "a.d" next to "a"), inside it, or shared with another agent is not. */
static void test_workspace_holding_another_agents_is_off_limits(void **state)
{
    (void)state;
    char tmp[] = "/tmp/nx-wsx-XXXXXX", base[PATH_MAX], p[PATH_MAX + 64];
    static const char *const dirs[] = {"a", "a/sub", "a-b", "a.d", "s", "z", "zz", "zz/deep"};
    static const char *const agents[][2] = {
        {"outer", "a"}, {"inner", "a/sub"}, {"dash", "a-b"}, {"dot", "a.d"}, {"s1", "s"},
        {"s2", "s"}, {"z", "z"}, {"zz", "zz"}, {"deep", "zz/deep"}, {"later", "not-made/x"},
    };
    assert_non_null(mkdtemp(tmp));
    assert_non_null(realpath(tmp, base));
    for (size_t i = 0; i < NX_ARRAY_LEN(dirs); i++) {
        snprintf(p, sizeof p, "%s/%s", base, dirs[i]);
        assert_int_equal(mkdir(p, 0700), 0);
    }
    struct nx_buf y = NX_BUF_INIT;
    nx_buf_puts(&y, "agents:\n");
    for (size_t i = 0; i < NX_ARRAY_LEN(agents); i++)
        nx_buf_printf(&y, "  - {id: %s, model: {provider: anthropic, model: m}, workspace: \"%s/%s\"}\n",
                      agents[i][0], base, agents[i][1]);
    nx_buf_puts(&y, "  - {id: everything, model: {provider: anthropic, model: m}, workspace: /}\n");
    struct nx_config *c = NULL;
    struct nx_diags d;
    nx_diags_init(&d);
    assert_int_equal(nx_config_load_mem(NULL, "agents.yaml", y.data, y.len, &c, &d), 0);
    struct nx_workspaces *w = nx_workspaces_new(c);

    static const struct { const char *rel; bool is_off; } cases[] = {
        {"a", true}, {"a/sub", false}, {"a-b", false}, {"a.d", false}, {"s", false}, {"z", false},
        {"zz", true}, {"zz/deep", false}, {"", true}, {"a/sub/none", false}, {"not-made", false},
    };
    for (size_t i = 0; i < NX_ARRAY_LEN(cases); i++) {
        snprintf(p, sizeof p, "%s%s%s", base, *cases[i].rel ? "/" : "", cases[i].rel);
        if (nx_workspace_off_limits(c, w, p, NULL) != cases[i].is_off)
            fail_msg("workspace %s: expected %s", p, cases[i].is_off ? "off limits" : "allowed");
    }
    assert_true(nx_workspace_off_limits(c, w, "/", NULL)); /* holds every other */
    nx_workspaces_free(w);
    nx_config_unref(c);
    nx_diags_cleanup(&d);
    nx_buf_cleanup(&y);
    ts_rm_tree(tmp);
}

static void test_budget_resets_at_utc_midnight(void **state)
{
    (void)state;
    uint32_t s = budget_reset_secs();
    uint64_t now = nx_wall_ms() / 1000;
    assert_true(s >= 1 && s <= 86400);
    assert_true((now + s) % 86400 <= 1);
}

static void test_circuit_breaker_config(void **state)
{
    (void)state;
    const char *llm = "providers:\n"
                      "  a: {kind: anthropic, api_key: k,\n"
                      "      circuit_breaker: {failure_threshold: 2, open_secs: 3}}\n"
                      "  b: {kind: openai, api_key: k}\n"
                      "circuit_breaker: {failure_threshold: 7, max_open_secs: 600}\n";
    struct nx_config *c = NULL;
    struct nx_diags d;
    nx_diags_init(&d);
    assert_int_equal(nx_config_load_mem(NULL, "llm.yaml", llm, strlen(llm), &c, &d), 0);
    const struct nx_llm_conf *l = nx_config_llm(c);
    assert_int_equal(l->circuit_breaker.failure_threshold, 7);
    assert_int_equal(l->circuit_breaker.success_threshold, 1);
    assert_int_equal(l->circuit_breaker.open_secs, 10);
    assert_int_equal(l->circuit_breaker.max_open_secs, 600);
    const struct nx_provider_conf *a = nx_config_provider(c, "a"), *b = nx_config_provider(c, "b");
    assert_int_equal(a->circuit_breaker.failure_threshold, 2);
    assert_int_equal(a->circuit_breaker.open_secs, 3);
    assert_int_equal(a->circuit_breaker.max_open_secs, 0); /* inherits */
    assert_int_equal(b->circuit_breaker.failure_threshold, 0);
    nx_config_unref(c);

    const char *bad = "providers:\n  a: {api_key: k, circuit_breaker: {open_sec: 3}}\n";
    assert_int_equal(nx_config_load_mem(NULL, "llm.yaml", bad, strlen(bad), &c, &d), NX_ECONFIG);
    nx_diags_cleanup(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_identity_files_in_order_with_headings_and_changes_picked_up),
        cmocka_unit_test(test_workspace_holding_another_agents_is_off_limits),
        cmocka_unit_test(test_budget_resets_at_utc_midnight),
        cmocka_unit_test(test_circuit_breaker_config),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
