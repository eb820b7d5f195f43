#ifndef NX_BUS_ENVELOPE_H
#define NX_BUS_ENVELOPE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

/* The bus envelope, compatible with nexo-rs's Event: the NATS message body is exactly
 *   {"id": uuid, "timestamp": RFC 3339 UTC, "topic": subject, "source": str,
 *    "session_id": str | null, "payload": any JSON}
 * Unknown keys are ignored (forward compatibility); duplicate keys are rejected. */

#define NX_ENVELOPE_MAX_FIELD 1024 /* source, session_id, timestamp: bytes at most */
#define NX_SUBJECT_MAX 512         /* a subject or pattern: bytes at most */

struct nx_envelope {
    char id[37];        /* lower-case 8-4-4-4-12 hex */
    char timestamp[64]; /* as received (validated RFC 3339) */
    char *topic;
    char *source;
    char *session_id;   /* NULL = JSON null */
    json_t *payload;    /* never NULL (json null when absent in a new envelope) */
};

/* A new envelope with a fresh uuid v4 and the current time. payload is borrowed (a reference is
 * taken; NULL = null). session_id may be NULL. Returns 0 or NX_EINVAL (topic not a valid
 * publish subject, or a field too long). */
int nx_envelope_new(const char *topic, const char *source, const char *session_id,
                    json_t *payload, struct nx_envelope **out);
/* Parses and validates one envelope. max_bytes caps the whole JSON text (0 = no cap; use
 * broker.limits.max_payload). On error returns NX_ETOOBIG or NX_EINVAL and, when err is given,
 * a sentence saying what is wrong ("envelope: \"id\" is not a UUID"). */
int nx_envelope_parse(const char *data, size_t len, size_t max_bytes, struct nx_envelope **out,
                      char *err, size_t errlen);
/* Compact JSON text (NUL-terminated, caller frees); *len gets its length. */
char *nx_envelope_dump(const struct nx_envelope *e, size_t *len);
struct nx_envelope *nx_envelope_copy(const struct nx_envelope *e);
void nx_envelope_free(struct nx_envelope *e);

/* A random (version 4) UUID into out (>= 37 bytes). */
void nx_uuid_v4(char *out);
bool nx_uuid_is_valid(const char *s);
/* Checks "YYYY-MM-DDTHH:MM:SS[.frac](Z|+HH:MM|-HH:MM)" with field ranges. */
bool nx_rfc3339_is_valid(const char *s);

/* Subjects (NATS rules): tokens separated by '.', none empty, no whitespace. A pattern may use
 * '*' for exactly one token and '>' as its last token for one or more tokens. */
bool nx_subject_is_valid(const char *s, bool allow_wildcards);
/* Does `subject` (no wildcards) match `pattern`? No allocation. */
bool nx_subject_matches(const char *pattern, const char *subject);

#endif
