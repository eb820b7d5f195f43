#ifndef NX_STORE_HISTORY_INTERNAL_H
#define NX_STORE_HISTORY_INTERNAL_H

#include <jansson.h>
#include <stddef.h>
#include <sys/stat.h>

#include <sqlite3.h>

#include "core/buf.h"

/* Shared by history.c and transcripts.c (and their tests); not for other modules. */

/* The transcript path: <data_dir>/transcripts/<name(agent)>/<name(session_key)>.jsonl. */
void nx_transcript_path(const char *data_dir, const char *agent_id, const char *session_key,
                        struct nx_buf *out);

/* Appends `len` bytes (whole JSONL lines) to the session's transcript in one O_APPEND write,
 * creating <data_dir>/transcripts and the agent directory (0700) and the file (0600) as needed.
 * Symlinks are not followed. Returns 0 or NX_EIO (with the reason logged). */
int nx_transcript_write(const char *data_dir, const char *agent_id, const char *session_key,
                        const char *lines, size_t len);
/* The store thread's batch ended (store.c run_batch): when it did not commit, the lines the
 * batch's jobs appended (nx_transcript_write) are cut back off, so the files keep only what the
 * database kept. Store thread only. */
void nx_transcripts_batch_end(bool is_committed);
/* Closes the transcript files the store thread kept open (nx_transcript_write). */
void nx_transcripts_thread_end(void);

/* store/file_cache.c: descriptors of files the store thread appends to, kept open by path. */
/* The kept descriptor of path while it is still the regular file at path (*st: its lstat), else
 * -1 (one that is not is closed and forgotten). */
int nx_file_cache_get(const char *path, struct stat *st);
/* Keeps fd (open on path, *st its fstat) for later gets; may close another to make room. */
void nx_file_cache_keep(const char *path, int fd, const struct stat *st);
/* Forgets fd without closing it (its caller closes it). */
void nx_file_cache_forget(int fd);
void nx_file_cache_close_all(void);

/* A JSON string of s; when s is not valid UTF-8 (a peer id cut in the middle of a character, a
 * raw header), each byte of it >= 0x80 becomes '?'. Never NULL. */
json_t *nx_json_string_lossy(const char *s);

/* A deep copy of v with every string (object keys too) passed through nx_redact_append. */
/* Appends v as compact JSON (jansson's form) with every string and object key redacted, written
 * straight from v: no redacted copy is built (one JSONL line per message). */
void nx_json_dump_redacted(const json_t *v, struct nx_buf *out);
/* Appends s[0..len) redacted, as a JSON string (invalid UTF-8 as U+FFFD). */
void nx_json_put_redacted(struct nx_buf *out, const char *s, size_t len);

/* The searchable text of a message's content (unredacted): text blocks, tool names, tool
 * results, separated by newlines. A string content is taken whole. */
void nx_transcript_text(const json_t *content, struct nx_buf *out);

/* The transcript index (transcript_index.c), store thread only. After an append: asks for a
 * catch-up at the end of the batch (later after failures). Before a search: indexes what is not
 * indexed yet, in the running write job (4,096 messages at most; the rest follows in the next
 * batches); NX_EDB (logged, counted) when that fails. */
void nx_transcript_index_soon(sqlite3 *db);
int nx_transcript_index_all(sqlite3 *db);

#endif
