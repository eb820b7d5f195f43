#ifndef NX_LLM_MEDIA_H
#define NX_LLM_MEDIA_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

/* Files users sent (downloaded by the channels under <data>/media/) as model input.
 *
 * A turn's user message refers to an image by path, not by its bytes:
 *   {"type": "image", "source": {"type": "nexo_media", "media_type": "image/png", "path": "..."}}
 * so history and transcripts keep a few hundred bytes per image. The provider encoders turn it
 * into the wire's base64 image at request time (nx_llm_media_resolve); the fragment cache then
 * keeps that encoding for as long as the message lives in the session's history cache.
 *
 * Only regular files under the media root (<data>/media, symlinks resolved) are read. Loop
 * thread only (the root is one process-wide setting). */

/* Anthropic's limit is 5 MiB of base64 per image, i.e. 3.75 MiB of file; OpenAI's (50 MB per
 * request) is looser. The smaller one is ours. */
#define NX_LLM_IMAGE_MAX_BYTES ((uint64_t)5 * 1024 * 1024 / 4 * 3)

/* Sets the media root to <data_dir>/media; NULL clears it (then no path is read). */
void nx_llm_media_set_root(const char *data_dir);
/* The media root, or NULL when none is set. */
const char *nx_llm_media_root(void);

/* "image/jpeg", "image/png", "image/gif" or "image/webp" from the first bytes; NULL otherwise. */
const char *nx_llm_image_sniff(const unsigned char *p, size_t len);

/* Reads a regular file under the media root, at most max bytes. 0, NX_ENOENT, NX_EPERM (outside
 * the root or no root), NX_ETOOBIG or NX_EIO; err says which in words. *data is NUL-terminated. */
int nx_llm_media_read(const char *path, uint64_t max, char **data, size_t *len, char *err,
                      size_t errlen);

/* The same check and read for any directory (the channels' uploads use it with theirs). */
int nx_file_read_under(const char *dir, const char *path, uint64_t max, char **data, size_t *len, char *err,
                       size_t errlen);

/* For an image block whose source is "nexo_media": a new block, the base64 image, or when the
 * file cannot be used a text block saying so. NULL for any other block (use it as it is). */
json_t *nx_llm_media_resolve(const json_t *block);

/* Text documents up to this size go into the user message as text. */
#define NX_LLM_DOC_INLINE_MAX 65536

/* How much of a payload media file the model reads: NX_LLM_IMAGE_MAX_BYTES for an image,
 * NX_LLM_DOC_INLINE_MAX for a text document, 0 for other files (a note names them). */
uint64_t nx_llm_media_read_cap(const json_t *m);

/* The user message of a turn from a channel message: the text, and for each file the sender
 * attached (a channel payload's `media`: [{type, path, mime, size, file_name, error}]) an image
 * reference block (images the models take, up to NX_LLM_IMAGE_MAX_BYTES) or a text note with
 * the file's name, type, size and path (a text document up to NX_LLM_DOC_INLINE_MAX inlined).
 * Paths outside the media root are refused (a note says so). New reference. */
json_t *nx_llm_user_message(const char *text, const json_t *media);

/* Standard base64 (RFC 4648, with padding) of len bytes; a new NUL-terminated string. */
char *nx_llm_base64(const unsigned char *p, size_t len);

#endif
