#include <stdio.h>
#include <string.h>

#include "core/log.h"
#include "mcp/stderr_log.h"

/* A stdio server's stderr, to our log with bounds (see stderr_log.h). A server that floods its
 * stderr (a debug build, a loop that fails and says so) must not flood our log, nor slow the
 * loop that also reads its stdout, so each line costs a memcpy of at most LINE_MAX bytes and a
 * counter once the second's lines are used up. */

#define WINDOW_MS 1000

void nx_mcp_stderr_log_init(struct nx_mcp_stderr_log *l, const char *name)
{
    memset(l, 0, sizeof *l);
    l->name = name;
}

/* The length of s[0..n) without a UTF-8 character cut in two at its end, so that a cut line
 * stays valid text. */
static size_t whole_chars(const char *s, size_t n)
{
    size_t i = n;
    unsigned char lead;
    size_t need;

    while (i > 0 && n - i < 3 && ((unsigned char)s[i - 1] & 0xC0) == 0x80)
        i--;
    if (i == 0)
        return n;
    lead = (unsigned char)s[i - 1];
    need = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;
    return n - (i - 1) < need ? i - 1 : n;
}

static void say_suppressed(struct nx_mcp_stderr_log *l)
{
    if (!l->suppressed)
        return;
    nx_info("mcp", "server %s: ... %llu line%s of stderr suppressed (more than %d a second)", l->name,
            (unsigned long long)l->suppressed, l->suppressed == 1 ? "" : "s", NX_MCP_STDERR_LINES_PER_SEC);
    l->suppressed = 0;
}

static void write_line(struct nx_mcp_stderr_log *l)
{
    size_t n = l->cut ? whole_chars(l->line, l->len) : l->len;
    char more[64] = "";

    if (l->cut)
        snprintf(more, sizeof more, " [... %llu more bytes]", (unsigned long long)(l->cut + l->len - n));
    nx_info("mcp", "server %s: stderr: %.*s%s", l->name, (int)n, l->line, more);
}

static void line_end(struct nx_mcp_stderr_log *l, uint64_t now_ms)
{
    if (!l->cut && l->len > 0 && l->line[l->len - 1] == '\r')
        l->len--;
    if (l->len == 0 && l->cut == 0)
        return; /* blank lines are not worth an entry */
    if (!l->has_window || now_ms - l->window_ms >= WINDOW_MS) {
        say_suppressed(l);
        l->has_window = true;
        l->window_ms = now_ms;
        l->lines = 0;
    }
    if (l->lines < NX_MCP_STDERR_LINES_PER_SEC) {
        l->lines++;
        write_line(l);
    } else {
        l->suppressed++;
    }
    l->len = 0;
    l->cut = 0;
}

static uint64_t window_left(const struct nx_mcp_stderr_log *l, uint64_t now_ms)
{
    if (!l->suppressed)
        return 0;
    return now_ms - l->window_ms >= WINDOW_MS ? 1 : WINDOW_MS - (now_ms - l->window_ms);
}

uint64_t nx_mcp_stderr_log_feed(struct nx_mcp_stderr_log *l, const char *data, size_t len,
                                uint64_t now_ms)
{
    while (len > 0) {
        const char *nl = memchr(data, '\n', len);
        size_t take = nl ? (size_t)(nl - data) : len;
        size_t room = sizeof l->line - l->len;
        size_t keep = take < room ? take : room;

        memcpy(l->line + l->len, data, keep);
        l->len += keep;
        l->cut += take - keep;
        if (nl) {
            line_end(l, now_ms);
            take++;
        }
        data += take;
        len -= take;
    }
    return window_left(l, now_ms);
}

uint64_t nx_mcp_stderr_log_flush(struct nx_mcp_stderr_log *l, uint64_t now_ms, bool at_end)
{
    if (at_end) {
        line_end(l, now_ms);
        say_suppressed(l);
    } else if (l->has_window && now_ms - l->window_ms >= WINDOW_MS) {
        say_suppressed(l);
    }
    return window_left(l, now_ms);
}
