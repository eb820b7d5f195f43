#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "channels/channels.h"
#include "channels/whatsapp.h"
#include "core/error.h"

/* The WhatsApp webhook body (outside input, after its signature checked: a signed body is still
 * parsed defensively), the signature check itself on arbitrary headers, the verification
 * handshake's query, Graph error and send answers, and the outbound payload checks (agent input:
 * buttons, list, media, template). */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *body = (const char *)data;
    struct nx_wa_webhook w;
    char err[256], id[128];

    int rc = nx_wa_parse_webhook(body, size, &w, err, sizeof err);
    if (rc == 0) {
        for (size_t i = 0; i < w.nmsgs; i++) {
            const struct nx_wa_msg *m = &w.msgs[i];
            if (!m->from || !m->id || !m->type)
                abort();
            if (m->kind == NX_WA_MSG_TEXT && !m->text)
                abort();
            if ((m->kind == NX_WA_MSG_BUTTON || m->kind == NX_WA_MSG_MEDIA) && !m->data)
                abort();
        }
        for (size_t i = 0; i < w.nstatuses; i++)
            if (!w.statuses[i].id || !w.statuses[i].status)
                abort();
        if (w.nmsgs + w.nstatuses > NX_WA_MAX_EVENTS)
            abort();
    } else if (rc != NX_EPROTO && rc != NX_ETOOBIG) {
        abort();
    }
    nx_wa_webhook_cleanup(&w);

    /* Arbitrary bytes as a signature header never pass against a fixed secret by accident. */
    if (size <= 80 && nx_wa_signature_ok("fuzz-secret", body, size, "{}", 2)) {
        char good[72];
        nx_wa_sign("fuzz-secret", "{}", 2, good);
        if (size != 71 || strncasecmp(body, good, 71) != 0)
            abort();
    }

    char v[64];
    if (nx_wa_query_value(body, size, "hub.challenge", v, sizeof v) && strlen(v) >= sizeof v)
        abort();
    struct nx_wa_error e;
    nx_wa_parse_error(body, size, &e);
    if (nx_wa_parse_sent(body, size, id, sizeof id) && !id[0])
        abort();

    json_t *j = json_loadb(body, size, JSON_DECODE_ANY, NULL);
    json_t *r;
    if ((r = nx_wa_buttons_request("155", "body", json_object_get(j, "buttons"), NULL, err, sizeof err)))
        if (json_array_size(json_object_get(json_object_get(json_object_get(r, "interactive"), "action"),
                                            "buttons")) > NX_WA_MAX_BUTTONS)
            abort();
    json_decref(r);
    json_decref(nx_wa_list_request("155", "body", json_object_get(j, "list"), "wamid.x", err, sizeof err));
    json_decref(nx_wa_media_request("155", json_object_get(j, "media"), NULL, err, sizeof err));
    json_decref(nx_wa_template_from_payload("155", json_object_get(j, "template"), err, sizeof err));
    json_decref(j);
    return 0;
}
