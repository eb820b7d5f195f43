#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <jansson.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/error.h"
#include "core/log.h"
#include "mcp/asks.h"
#include "mcp/oauth.h"
#include "mcp/oauth_internal.h"

/* The pure parts of the MCP client's OAuth (WWW-Authenticate, discovery URLs, PKCE, resource
 * matching, query parsing, the private_key_jwt assertion) and of what servers ask (elicitation
 * defaults, sampling messages). The flows themselves run in test_mcp_conformance.py. */

static void test_mcp_oauth_www_authenticate_params(void **state)
{
    char v[256];

    (void)state;
    const char *h = "Bearer error=\"insufficient_scope\", scope=\"mcp:basic mcp:write\", "
                    "resource_metadata=\"http://h:1/.well-known/oauth-protected-resource/mcp\", realm=x";
    assert_int_equal(nx_mcp_oauth_www_param(h, "scope", v, sizeof v), 19);
    assert_string_equal(v, "mcp:basic mcp:write");
    assert_true(nx_mcp_oauth_www_param(h, "resource_metadata", v, sizeof v) > 0);
    assert_string_equal(v, "http://h:1/.well-known/oauth-protected-resource/mcp");
    assert_true(nx_mcp_oauth_www_param(h, "error", v, sizeof v) > 0);
    assert_string_equal(v, "insufficient_scope");
    assert_true(nx_mcp_oauth_www_param(h, "REALM", v, sizeof v) > 0);
    assert_string_equal(v, "x");
    assert_int_equal(nx_mcp_oauth_www_param(h, "missing", v, sizeof v), -1);
    assert_int_equal(nx_mcp_oauth_www_param(NULL, "scope", v, sizeof v), -1);
    assert_true(nx_mcp_oauth_www_param("Bearer a=\"q\\\"x\"", "a", v, sizeof v) > 0);
    assert_string_equal(v, "q\"x");
    /* unterminated quote and garbage stay bounded */
    assert_true(nx_mcp_oauth_www_param("Bearer a=\"abc", "a", v, sizeof v) > 0);
    assert_int_equal(nx_mcp_oauth_www_param("=,=,== ,", "a", v, sizeof v), -1);
}

static void expect_urls(char **u, const char *const *want)
{
    size_t i = 0;

    for (; want[i]; i++) {
        assert_non_null(u[i]);
        assert_string_equal(u[i], want[i]);
    }
    assert_null(u[i]);
    for (i = 0; u[i]; i++)
        free(u[i]);
    free(u);
}

static void test_mcp_oauth_discovery_urls(void **state)
{
    static const char *const prm[] = {"http://h:1/.well-known/oauth-protected-resource/mcp",
                                      "http://h:1/.well-known/oauth-protected-resource", NULL};
    static const char *const prm_root[] = {"https://h/.well-known/oauth-protected-resource", NULL};
    static const char *const as_path[] = {"http://a:2/.well-known/oauth-authorization-server/tenant1",
                                          "http://a:2/.well-known/openid-configuration/tenant1",
                                          "http://a:2/tenant1/.well-known/openid-configuration", NULL};
    static const char *const as_root[] = {"http://a:2/.well-known/oauth-authorization-server",
                                          "http://a:2/.well-known/openid-configuration", NULL};
    static const char *const none[] = {NULL};

    (void)state;
    expect_urls(nx_mcp_oauth_discovery_urls("http://h:1/mcp", 1), prm);
    expect_urls(nx_mcp_oauth_discovery_urls("https://h/?x=1", 1), prm_root);
    expect_urls(nx_mcp_oauth_discovery_urls("http://a:2/tenant1/", 0), as_path);
    expect_urls(nx_mcp_oauth_discovery_urls("http://a:2", 0), as_root);
    expect_urls(nx_mcp_oauth_discovery_urls("ftp://x/y", 0), none);
}

static void test_mcp_oauth_resource_match(void **state)
{
    (void)state;
    assert_true(nx_mcp_oauth_resource_matches("http://h:1/mcp", "http://h:1/mcp"));
    assert_true(nx_mcp_oauth_resource_matches("http://h:1", "http://h:1/mcp"));
    assert_true(nx_mcp_oauth_resource_matches("http://H:1/", "http://h:1/mcp/x"));
    assert_false(nx_mcp_oauth_resource_matches("https://evil.example.com/mcp", "http://h:1/mcp"));
    assert_false(nx_mcp_oauth_resource_matches("http://h:1/mc", "http://h:1/mcp"));
    assert_false(nx_mcp_oauth_resource_matches("http://h:2/mcp", "http://h:1/mcp"));
    assert_false(nx_mcp_oauth_resource_matches("nonsense", "http://h:1/mcp"));
}

static void test_mcp_oauth_pkce_and_query(void **state)
{
    char c[64];
    char *v;

    (void)state;
    /* RFC 7636 appendix B */
    nx_mcp_oauth_pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk", c, sizeof c);
    assert_string_equal(c, "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
    v = nx_oauth_query_param("http://cb/x?code=a%2Fb+c&state=s1#f", "code");
    assert_string_equal(v, "a/b c");
    free(v);
    v = nx_oauth_query_param("http://cb/x?code=a&state=s1#f", "state");
    assert_string_equal(v, "s1");
    free(v);
    assert_null(nx_oauth_query_param("http://cb/x?xcode=1", "code"));
    assert_null(nx_oauth_query_param("http://cb/x", "code"));
    v = nx_oauth_query_param("http://cb/?code=%4", "code"); /* a broken escape is kept */
    assert_string_equal(v, "%4");
    free(v);
}

static void test_mcp_oauth_jwt_assertion_verifies(void **state)
{
    EVP_PKEY *key = EVP_EC_gen("P-256");
    BIO *bio = BIO_new(BIO_s_mem());
    char *pem, *jwt = NULL, err[200];
    long len;

    (void)state;
    assert_non_null(key);
    assert_int_equal(PEM_write_bio_PrivateKey(bio, key, NULL, NULL, 0, NULL, NULL), 1);
    len = BIO_get_mem_data(bio, &pem);
    pem = strndup(pem, (size_t)len);
    assert_int_equal(nx_oauth_jwt_assertion(pem, "ES256", "cid", "http://as", &jwt, err, sizeof err), 0);
    /* header.claims.signature, 64-byte raw signature = 86 base64url characters */
    const char *d1 = strchr(jwt, '.'), *d2 = d1 ? strchr(d1 + 1, '.') : NULL;
    assert_non_null(d2);
    assert_int_equal(strlen(d2 + 1), 86);
    free(jwt);
    assert_int_equal(nx_oauth_jwt_assertion("not a key", "ES256", "cid", "a", &jwt, err, sizeof err),
                     NX_EINVAL);
    assert_int_equal(nx_oauth_jwt_assertion(pem, "HS256", "cid", "a", &jwt, err, sizeof err), NX_EINVAL);
    free(pem);
    BIO_free(bio);
    EVP_PKEY_free(key);
}

static void test_mcp_oauth_config_errors(void **state)
{
    struct nx_mcp_oauth *o = (struct nx_mcp_oauth *)1;
    char err[200];
    json_t *a;

    (void)state;
    assert_int_equal(nx_mcp_oauth_new(NULL, "s", "http://h/mcp", NULL, &o, err, sizeof err), 0);
    assert_null(o);
    a = json_loads("{\"type\":\"oauth\",\"grant\":\"password\"}", 0, NULL);
    assert_int_equal(nx_mcp_oauth_new(NULL, "s", "http://h/mcp", a, &o, err, sizeof err), NX_EINVAL);
    json_decref(a);
    a = json_loads("{\"type\":\"oauth\",\"grant\":\"client_credentials\"}", 0, NULL);
    assert_int_equal(
        nx_mcp_oauth_new((struct nx_http_client *)1, "s", "http://h/mcp", a, &o, err, sizeof err), NX_EINVAL);
    assert_non_null(strstr(err, "client_id"));
    json_decref(a);
}

static void test_mcp_elicitation_defaults(void **state)
{
    json_t *s = json_loads(
        "{\"type\":\"object\",\"properties\":{"
        "\"name\":{\"type\":\"string\",\"default\":\"John Doe\"},"
        "\"age\":{\"type\":\"integer\",\"default\":30},"
        "\"score\":{\"type\":\"number\",\"default\":95.5},"
        "\"status\":{\"type\":\"string\",\"enum\":[\"active\",\"inactive\"],\"default\":\"active\"},"
        "\"bad\":{\"type\":\"string\",\"enum\":[\"a\"],\"default\":\"zz\"},"
        "\"wrong\":{\"type\":\"integer\",\"default\":\"x\"},"
        "\"verified\":{\"type\":\"boolean\",\"default\":true},"
        "\"free\":{\"type\":\"string\"}},\"required\":[]}",
        0, NULL);
    json_t *d = nx_mcp_elicit_defaults(s);

    (void)state;
    assert_non_null(d);
    assert_string_equal(json_string_value(json_object_get(d, "name")), "John Doe");
    assert_int_equal(json_integer_value(json_object_get(d, "age")), 30);
    assert_true(json_real_value(json_object_get(d, "score")) == 95.5);
    assert_string_equal(json_string_value(json_object_get(d, "status")), "active");
    assert_true(json_is_true(json_object_get(d, "verified")));
    assert_null(json_object_get(d, "bad"));
    assert_null(json_object_get(d, "wrong"));
    assert_null(json_object_get(d, "free"));
    json_decref(d);
    /* a required field without a default: no acceptable answer */
    json_object_set_new(s, "required", json_pack("[s]", "free"));
    assert_null(nx_mcp_elicit_defaults(s));
    json_decref(s);
    d = nx_mcp_elicit_defaults(NULL);
    assert_int_equal(json_object_size(d), 0);
    json_decref(d);
}

static void test_mcp_elicitation_policy_declares(void **state)
{
    json_t *extra = json_loads("{\"elicitation\":\"defaults\",\"sampling\":{\"enabled\":true}}", 0, NULL);
    json_t *global = json_loads("{\"sampling\":{\"enabled\":true,\"deny_servers\":[\"b\"]}}", 0, NULL);
    struct nx_mcp_asks *a = nx_mcp_asks_new("a", extra, NULL);
    struct nx_mcp_asks *b = nx_mcp_asks_new("b", NULL, global);
    struct nx_mcp_asks *c = nx_mcp_asks_new("c", NULL, global);
    json_t *caps = json_object();

    (void)state;
    nx_mcp_asks_declare(a, caps);
    assert_non_null(json_object_get(caps, "sampling"));
    assert_non_null(json_object_get(caps, "elicitation"));
    json_object_clear(caps);
    nx_mcp_asks_declare(b, caps);
    assert_int_equal(json_object_size(caps), 0);
    nx_mcp_asks_declare(c, caps);
    assert_non_null(json_object_get(caps, "sampling"));
    assert_null(json_object_get(caps, "elicitation"));
    /* unknown requests are not ours */
    assert_int_equal(nx_mcp_asks_handle(b, NULL, "sampling/createMessage", NULL, NULL), NX_ENOTSUP);
    assert_int_equal(nx_mcp_asks_handle(a, NULL, "foo/bar", NULL, NULL), NX_ENOTSUP);
    json_decref(caps);
    json_decref(extra);
    json_decref(global);
    nx_mcp_asks_free(a);
    nx_mcp_asks_free(b);
    nx_mcp_asks_free(c);
}

static void test_mcp_sampling_messages(void **state)
{
    char err[200];
    json_t *in = json_loads("[{\"role\":\"user\",\"content\":{\"type\":\"text\",\"text\":\"hi\"}},"
                            "{\"role\":\"assistant\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},"
                            "{\"type\":\"image\",\"mimeType\":\"image/png\",\"data\":\"AAAA\"}]}]",
                            0, NULL);
    json_t *out = nx_mcp_sampling_messages(in, err, sizeof err);
    char *s = json_dumps(out, JSON_COMPACT);

    (void)state;
    assert_string_equal(s, "[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"hi\"}]},"
                           "{\"role\":\"assistant\",\"content\":[{\"type\":\"text\","
                           "\"text\":\"a\\n[image: image/png, 4 bytes of base64]\"}]}]");
    free(s);
    json_decref(out);
    json_decref(in);
    in = json_loads("[{\"role\":\"system\",\"content\":{}}]", 0, NULL);
    assert_null(nx_mcp_sampling_messages(in, err, sizeof err));
    assert_non_null(strstr(err, "role"));
    json_decref(in);
    in = json_array();
    assert_null(nx_mcp_sampling_messages(in, err, sizeof err));
    assert_null(nx_mcp_sampling_messages(NULL, err, sizeof err));
    json_decref(in);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mcp_oauth_www_authenticate_params),
        cmocka_unit_test(test_mcp_oauth_discovery_urls),
        cmocka_unit_test(test_mcp_oauth_resource_match),
        cmocka_unit_test(test_mcp_oauth_pkce_and_query),
        cmocka_unit_test(test_mcp_oauth_jwt_assertion_verifies),
        cmocka_unit_test(test_mcp_oauth_config_errors),
        cmocka_unit_test(test_mcp_elicitation_defaults),
        cmocka_unit_test(test_mcp_elicitation_policy_declares),
        cmocka_unit_test(test_mcp_sampling_messages),
    };

    nx_log_set_level(NX_LOG_OFF);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
