#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bus/envelope.h"

/* Parses the input as a bus envelope (as it arrives from NATS or the disk queue) with and
 * without a small size cap. What parses must serialize and parse again to the same fields, and
 * its topic must be a valid subject that matches itself. Subject checks get the raw input too. */

#define FUZZ_CAP 256

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_roundtrip(const struct nx_envelope *e)
{
    struct nx_envelope *again = NULL;
    size_t len;
    char *s = nx_envelope_dump(e, &len);

    if (nx_envelope_parse(s, len, 0, &again, NULL, 0) != 0)
        abort();
    if (strcmp(again->id, e->id) || strcmp(again->timestamp, e->timestamp) ||
        strcmp(again->topic, e->topic) || strcmp(again->source, e->source) ||
        !!again->session_id != !!e->session_id ||
        (e->session_id && strcmp(again->session_id, e->session_id)) ||
        !json_equal(again->payload, e->payload))
        abort();
    if (!nx_subject_is_valid(e->topic, false) || !nx_subject_matches(e->topic, e->topic) ||
        !nx_subject_matches(">", e->topic))
        abort();
    nx_envelope_free(again);
    free(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct nx_envelope *e = NULL;
    char err[256] = "";
    char *s;

    if (nx_envelope_parse((const char *)data, size, 0, &e, err, sizeof err) == 0) {
        check_roundtrip(e);
        nx_envelope_free(e);
    } else if (e || !err[0]) {
        abort();
    }
    e = NULL;
    if (nx_envelope_parse((const char *)data, size, FUZZ_CAP, &e, err, sizeof err) == 0) {
        if (size > FUZZ_CAP)
            abort();
        nx_envelope_free(e);
    }
    /* subjects: a pattern that is valid either way matches consistently */
    s = malloc(size + 1);
    memcpy(s, data, size);
    s[size] = '\0';
    if (nx_subject_is_valid(s, false) && !nx_subject_matches(s, s))
        abort();
    if (nx_subject_is_valid(s, true)) {
        (void)nx_subject_matches(s, "plugin.inbound.telegram");
        (void)nx_subject_matches("plugin.*.>", s);
    }
    nx_rfc3339_is_valid(s);
    free(s);
    return 0;
}
