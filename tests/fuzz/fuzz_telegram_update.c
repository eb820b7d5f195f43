#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "channels/channels.h"
#include "channels/telegram.h"
#include "core/error.h"

/* The Bot API's getUpdates answer (messages, media, button presses), getFile and error bodies
 * (outside input), the splitter that every message text then goes through, and the outbound
 * `buttons` check (agent input). */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *body = (const char *)data;
    struct nx_tg_update *v = NULL;
    size_t n = 0;
    char err[256], desc[256];
    uint32_t retry_after = 0;

    int rc = nx_tg_parse_updates(body, size, &v, &n, err, sizeof err);
    if (rc == 0) {
        for (size_t i = 0; i < n; i++) {
            if (!v[i].has_message || !v[i].text)
                continue;
            struct nx_text_chunk *c = NULL;
            size_t len = strlen(v[i].text);
            size_t k = nx_text_split(v[i].text, len, 64, &c);
            for (size_t j = 0; j < k; j++)
                if (c[j].off + c[j].len > len || c[j].len == 0)
                    abort();
            free(c);
        }
    } else if (rc != NX_EPROTO && rc != NX_ETOOBIG) {
        abort();
    }
    nx_tg_updates_free(v, n);
    char path[512];
    int64_t fsize = 0;
    if (nx_tg_parse_file(body, size, path, sizeof path, &fsize) == 0 && (strstr(path, "..") || fsize < 0))
        abort();
    json_t *j = json_loadb(body, size, JSON_DECODE_ANY, NULL);
    json_t *kb = NULL;
    if (nx_tg_keyboard(json_object_get(j, "buttons"), &kb, err, sizeof err) == 0 && !kb)
        abort();
    json_decref(kb);
    json_decref(j);
    nx_tg_parse_error(body, size, desc, sizeof desc, &retry_after);
    if (retry_after > 3600)
        abort();
    return 0;
}
