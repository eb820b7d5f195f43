#ifndef NX_STORE_HISTORY_H
#define NX_STORE_HISTORY_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"
#include "store/store.h"

/* Sessions and their history (SQLite, through the store thread), and transcripts: one JSONL
 * file per session under <data>/transcripts/<agent>/<session>.jsonl, redacted before it is
 * written, indexed in an FTS5 table for search.
 *
 * Session key: "agent:<agent_id>:<channel>:<peer>". Messages are canonical JSON (llm/llm.h:
 * {"role":..., "content":[blocks]}). Callbacks run on the loop thread. */

/* The parts of a session key (pointers into the key, not NUL-terminated; the peer runs to the
 * end and may itself contain ':'). Returns 0, or NX_EINVAL when the key is not
 * "agent:<agent_id>:<channel>:<peer>" with a non-empty agent id and channel. */
struct nx_session_key_parts {
    const char *agent_id;
    size_t agent_len;
    const char *channel;
    size_t channel_len;
    const char *peer;
    size_t peer_len;
};
int nx_session_key_parse(const char *key, struct nx_session_key_parts *out);
/* "agent:<agent_id>:<channel>:<peer>", newly allocated. */
char *nx_session_key_make(const char *agent_id, const char *channel, const char *peer);

/* Loads the last `max_messages` messages of a session in order (0 = all), from the first of
 * them where a conversation can begin (a user message that answers no tool call), so that a
 * tool call is never sent without its result. done gets a new reference to a JSON array (empty
 * for a new session), or NULL with rc < 0. */
typedef void (*nx_history_loaded_fn)(int rc, json_t *messages, void *arg);
void nx_history_load(struct nx_store *s, const char *session_key, size_t max_messages,
                     nx_history_loaded_fn done, void *arg);

/* Appends messages (a JSON array, borrowed; copied before return) to the session, creating it
 * (with agent_id, channel and peer parsed from the key) if needed, and to its JSONL transcript,
 * in one store write. done may be NULL. The FTS5 index follows at the end of the batch (and
 * searches catch it up first): a failing index never fails an append.
 * done gets NX_EINVAL (and nothing is stored) for a message without a string "role" and an
 * array or string "content", a key whose agent differs from agent_id, or a key that does not
 * parse when agent_id is NULL. A failed JSONL write is logged and counted
 * (nexo_transcript_write_errors_total); the database part still commits. */
struct nx_history_append {
    const char *session_key;
    const char *agent_id;
    const char *source;       /* channel that carried the turn ("http", "telegram", ...) */
    const json_t *messages;
    uint64_t input_tokens;    /* usage of the turn, added to the session's totals */
    uint64_t output_tokens;
    /* The messages are never changed again by anyone (an agent's conversation): the store holds
     * references instead of a deep copy, reads them on its thread and releases them on the
     * loop's. Otherwise they are copied. */
    bool is_immutable;
};
void nx_history_append(struct nx_store *s, const char *data_dir,
                       const struct nx_history_append *a, nx_store_done_fn done, void *arg);

/* A token estimate for text: about 4 bytes a token for ASCII, a token a character for CJK
 * and other 3-byte UTF-8 characters, half one for 2-byte characters, two for 4-byte ones. */
uint64_t nx_history_text_tokens(const char *s, size_t n);
/* The same for one canonical message (its text, tool calls and results, plus a little per
 * message; an image counts 1600): a guess to keep a prompt inside the model's context. */
uint64_t nx_history_estimate_tokens(const json_t *message);
/* Drops the oldest messages of `messages` (a canonical array, edited in place) until the rest
 * is estimated at <= max_tokens, then drops on to the first user message that is not a tool
 * result, so a tool result never loses its call. The last message is always kept, and when no
 * clean start fits the budget the nearest earlier one is kept instead (over budget). Returns
 * how many messages were dropped. */
size_t nx_history_trim(json_t *messages, uint64_t max_tokens);

/* A place where a conversation can begin: a user message that answers no earlier tool call. */
bool nx_history_is_clean_start(const json_t *m);

/* Indexes every message the FTS5 index does not cover yet (a store write); done (may be NULL)
 * gets 0, or NX_EDB when the index failed (logged, counted; retried by later appends). */
void nx_transcripts_index(struct nx_store *s, nx_store_done_fn done, void *arg);

/* Search over transcripts (FTS5 query syntax); rows as JSON objects
 * {agent_id, session_key, role, timestamp, snippet}. Runs on the store thread, after an
 * nx_transcripts_index, so it sees every message appended before it.
 * Rows are best first (FTS5 rank), at most `limit` (0 = 20, capped at 1000), timestamp is RFC 3339
 * (plus "ts_ms", epoch milliseconds); done gets a new reference, or NULL with rc < 0. A query that
 * is not valid FTS5 syntax is searched as one phrase; an empty query fails with NX_EINVAL. */
typedef void (*nx_transcripts_found_fn)(int rc, json_t *rows, void *arg);
void nx_transcripts_search(struct nx_store *s, const char *query, const char *agent_id,
                           size_t limit, nx_transcripts_found_fn done, void *arg);

/* `nexo transcripts search QUERY [--agent ID] [--limit N] [--json]`: opens the store under
 * data_dir (read-only use), prints results, returns an exit code. For main.c. */
int nx_cmd_transcripts(int argc, char **argv, const char *data_dir);

/* Appends the file-system-safe form of `name` (an agent id, a session key) to out, as in the
 * transcripts' file names (docs/transcripts.md): bytes in [A-Za-z0-9._-] stay, every other byte
 * (and a leading '.') becomes %XX (upper-case hex), so the mapping is reversible and never
 * yields '/', "." or "..". A result longer than 128 bytes is cut to its first 96 bytes plus '~'
 * and 32 hex digits of the SHA-256 of `name`; a name holding a secret (one the redaction
 * changes) is its redacted form's, plus '~' and the digest, so the secret is in no file name. */
void nx_transcript_name(const char *name, struct nx_buf *out);

#endif
