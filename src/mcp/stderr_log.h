#ifndef NX_MCP_STDERR_LOG_H
#define NX_MCP_STDERR_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* What a stdio MCP server writes on its stderr, to our log at info, one entry per line, with a
 * bound on both: a line is cut at NX_MCP_STDERR_LINE_MAX bytes (the rest is counted, never
 * buffered), and at most NX_MCP_STDERR_LINES_PER_SEC lines a second are written; the others are
 * counted and said in one entry when their second is over. Pure bookkeeping on a clock the
 * caller passes (ms), so the stdio transport keeps the timer. Loop thread only. */

#define NX_MCP_STDERR_LINE_MAX 1024
#define NX_MCP_STDERR_LINES_PER_SEC 20

struct nx_mcp_stderr_log {
    const char *name;    /* the server's, for the log (borrowed) */
    char line[NX_MCP_STDERR_LINE_MAX];
    size_t len;          /* bytes of the current line kept in `line` */
    uint64_t cut;        /* bytes of the current line past the cap */
    uint64_t window_ms;  /* when the current second began */
    unsigned lines;      /* lines written in it */
    uint64_t suppressed; /* lines not written in it */
    bool has_window;
};

void nx_mcp_stderr_log_init(struct nx_mcp_stderr_log *l, const char *name);
/* Logs the complete lines of data (keeping a partial last one). Returns 0, or the ms until the
 * current second is over when lines were suppressed in it: call nx_mcp_stderr_log_flush then. */
uint64_t nx_mcp_stderr_log_feed(struct nx_mcp_stderr_log *l, const char *data, size_t len,
                                uint64_t now_ms);
/* Says how many lines were suppressed once their second is over (at_end: now, whatever the
 * time, and the partial last line too, as the stream has ended). Returns what feed returns. */
uint64_t nx_mcp_stderr_log_flush(struct nx_mcp_stderr_log *l, uint64_t now_ms, bool at_end);

#endif
