#ifndef NX_CORE_REDACT_H
#define NX_CORE_REDACT_H

#include <stddef.h>

#include "core/buf.h"

#include <stdbool.h>

/* Appends `in` to `out` with secrets replaced by "[REDACTED]": bearer tokens, sk-… and sk-ant-…
 * keys, well-known token formats (GitHub, Slack, Stripe, Google, Telegram bot tokens, JWTs...),
 * AWS access key ids (AKIA…), long hex strings (>= 32 hex digits), values of secret-named keys
 * (password=…, "auth_token": "…", OPENAI_API_KEY=…), a URL's password, PEM private keys, the
 * home directory ($HOME/… becomes ~/…), and any configured pattern. Thread-safe. See
 * docs/observability.md. */
void nx_redact_append(struct nx_buf *out, const char *in, size_t len);

/* Appends `in` redacted by the built-in rules alone, which no configuration or reload changes
 * (for names that must stay the same: transcript file names); true when they changed it (a
 * secret, or the home directory's rewrite). */
bool nx_redact_fixed(struct nx_buf *out, const char *in, size_t len);

/* Whether a key name (a JSON member, a header) says its value is a secret: the names the
 * key=value rule redacts (password, x-api-key, auth_token, client_secret, ...). */
bool nx_redact_is_secret_key(const char *name, size_t len);

/* Adds a configured pattern (POSIX extended regular expression); every match is redacted.
 * Returns 0, or NX_EINVAL with a message in err. Call before other threads start logging, or
 * from the loop thread on reload (patterns are swapped under a lock). */
int nx_redact_add_pattern(const char *regex, char *err, size_t errlen);
void nx_redact_clear_patterns(void);
/* Replaces the whole list at once (NULL-terminated; NULL or empty clears): no line is written
 * between an old and a new list without either. Returns 0, or NX_EINVAL with the first compile
 * error in err and the old list kept. */
int nx_redact_set_patterns(const char *const *regexes, char *err, size_t errlen);

/* The configuration's own secret values (API keys, tokens; config/config.h nx_config_secrets),
 * redacted wherever they appear as a whole token (the long ones anywhere), whatever their
 * format: a provider that echoes its key in an error, a key no built-in rule knows. Replaces
 * the whole list (NULL or empty clears); values shorter than NX_REDACT_MIN_LITERAL bytes are
 * left out (placeholders such as "lm-studio" or "changeme", too likely in ordinary text). */
#define NX_REDACT_MIN_LITERAL 12
/* Values this long or longer are redacted wherever they appear, in any case ("x-<key>-y", a host
 * name nexo lowered): too long to be ordinary text. */
#define NX_REDACT_ANYWHERE_LITERAL 16
void nx_redact_set_literals(const char *const *values);

#endif
