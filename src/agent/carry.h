#ifndef NX_AGENT_CARRY_H
#define NX_AGENT_CARRY_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

/* The files a user sent, carried in routed work from the gateway to an agents process, which has
 * its own data directory (docs/scaling.md). Loop thread. */

/* Bytes of files (before base64) one work item carries at most: with base64 and the rest of the
 * envelope it stays under NATS's default 1 MB message. */
#define NX_CARRY_MAX_BYTES (512u * 1024)

/* Gateway: a channel payload's `media` ([{type, path, mime, size, file_name, error}], files
 * under the media root) as carried: each file's descriptor without its path, plus `data`
 * (base64) for the files the model reads (images, text documents, as nx_llm_user_message) while
 * they fit in `budget` bytes in all; a file left behind gets an `error` saying why. NULL when
 * media is not a non-empty array. New reference. */
json_t *nx_carry_pack(const json_t *media, size_t budget);

/* Agents process: carried media as a payload `media` array for nx_llm_user_message, each file
 * with `data` written once under <data_dir>/media/carried/ (named by its SHA-256, 0600) and
 * referred to by that path. Bad entries become descriptors with an `error`. New reference. */
json_t *nx_carry_unpack(const json_t *carried, const char *data_dir);

/* Whether these messages hold a base64 image, for nx_media_keep_images_async to keep. */
bool nx_media_has_images(const json_t *messages);
/* A session turn's images given as base64 (the HTTP APIs) written under <data_dir>/media/api/
 * and referred to by path (a `nexo_media` source), as a channel's are: the stored history keeps
 * a path instead of the bytes, and media.retention applies to them. Images that are not a JPEG,
 * PNG, GIF or WebP, are over NX_LLM_IMAGE_MAX_BYTES or cannot be written stay as they are (the
 * provider then decides). Done on a worker of the loop's thread pool: decoding, hashing and
 * writing a few megabytes takes milliseconds the loop thread does not wait out. Takes
 * `messages` (an array of messages whose content is an array of blocks) over, no other thread
 * may touch them meanwhile, and hands them back, edited in place, to done() on the loop thread.
 * Returns 0, or < 0 when data_dir is empty or no worker could take it (messages stay the
 * caller's). */
int nx_media_keep_images_async(uv_loop_t *loop, json_t *messages, const char *data_dir,
                               void (*done)(json_t *messages, void *arg), void *arg);

/* The same media with every `data` dropped (and an `error` saying so): when a work item is too
 * large for the bus after all. New reference. */
json_t *nx_carry_strip(const json_t *carried);

#endif
