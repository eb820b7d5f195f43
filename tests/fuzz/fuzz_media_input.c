#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "channels/media.h"
#include "channels/whatsapp.h"
#include "llm/media.h"

/* What the media path takes from outside: Graph's media URL answer (JSON), a file's SHA-256 as
 * the service states it, the first bytes of a file users sent (image sniffing), a MIME type, and
 * a channel payload's `media` list (JSON) turned into the user message (no media root is set,
 * so no path is read). */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data;
    struct nx_wa_media_info mi;
    char *text = malloc(size + 1);

    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    if (nx_wa_parse_media_url(s, size, &mi) == 0) {
        if (!mi.url || (strncmp(mi.url, "https://", 8) != 0 && strncmp(mi.url, "http://", 7) != 0))
            abort();
        nx_wa_media_info_cleanup(&mi);
    }
    (void)nx_media_sha256_ok(text, s, size);
    (void)nx_llm_image_sniff(data, size);
    (void)nx_media_ext(text, "bin");
    json_t *media = json_loadb(s, size, 0, NULL);
    json_t *m = nx_llm_user_message(text, json_is_array(media) ? media : NULL);
    if (!json_is_array(json_object_get(m, "content")) || !json_array_size(json_object_get(m, "content")))
        abort();
    json_decref(m);
    json_decref(media);
    free(text);
    return 0;
}
