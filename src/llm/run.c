/* A session's history as one encoded run per wire format. A session sends its history again on
 * every turn, the same messages in the same order with a few more at the end and, once it is
 * full, a few fewer at the start. The run keeps their wire forms back to back, each followed by
 * a comma, so a request body takes the part it shares with the last one in a single copy: no
 * lookup and no cache miss per message (with long histories, those were a tenth of a turn).
 * Messages are matched by identity, and the run holds a reference to each, so an address is
 * never mistaken for a message that was freed; a message is never changed once sent
 * (llm.h, is_history_stable). Loop thread only, like the sessions that own the runs. */
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "llm/internal.h"

#define RUN_WIRES 7 /* NX_FRAG_* are 1..6 */
/* A message longer than this (an image, as base64) is not copied here: it and what follows it
 * go through the fragment cache, which has a bound of its own. */
#define RUN_MAX_TEXT (64u * 1024)
/* All of a thread's runs together (a session's stays until the history cache lets it go, up to
 * short_term.max_sessions of them): past this, messages go through the fragment cache. */
#define RUN_BUDGET (64u * 1024 * 1024)

struct wire_run {
    const json_t **msg;   /* entries [first, n): held */
    size_t *end;          /* where entry i's text ends in text */
    size_t first, n, cap;
    size_t base;          /* where entry `first` begins */
    const json_t *refused; /* held: a message too long to copy, where the run stops */
    bool is_stopped;       /* at it: the messages after it go through the fragment cache */
    struct nx_buf text;
    size_t accounted;      /* what run_total counts of it */
};

static _Thread_local size_t run_total; /* the footprints of this thread's runs */

static size_t footprint(const struct wire_run *w)
{
    return w->text.cap + w->cap * (sizeof *w->msg + sizeof *w->end);
}

static void account(struct wire_run *w)
{
    size_t now = footprint(w);
    run_total = run_total - w->accounted + now;
    w->accounted = now;
}

/* The text's room back to what it holds once it is much larger (after a long message went). */
static void shrink(struct wire_run *w)
{
    if (w->text.cap <= 4096 || w->text.cap / 4 < w->text.len)
        return;
    if (!w->text.len) {
        nx_buf_cleanup(&w->text);
        return;
    }
    w->text.data = nx_realloc(w->text.data, w->text.len + 1);
    w->text.cap = w->text.len + 1;
}

struct nx_llm_run {
    unsigned refs;
    struct wire_run *w[RUN_WIRES];
};

struct nx_llm_run *nx_llm_run_new(void)
{
    struct nx_llm_run *r = nx_calloc(1, sizeof *r);
    r->refs = 1;
    return r;
}

struct nx_llm_run *nx_llm_run_ref(struct nx_llm_run *r)
{
    if (r)
        r->refs++;
    return r;
}

static void drop_entries(struct wire_run *w, size_t from, size_t to)
{
    for (size_t i = from; i < to; i++)
        json_decref((json_t *)w->msg[i]);
}

void nx_llm_run_unref(struct nx_llm_run *r)
{
    if (!r || --r->refs > 0)
        return;
    for (int k = 0; k < RUN_WIRES; k++) {
        struct wire_run *w = r->w[k];
        if (!w)
            continue;
        drop_entries(w, w->first, w->n);
        json_decref((json_t *)w->refused);
        run_total -= w->accounted;
        free(w->msg);
        free(w->end);
        nx_buf_cleanup(&w->text);
        free(w);
    }
    free(r);
}

size_t nx_llm_run_bytes(const struct nx_llm_run *r)
{
    size_t n = 0;
    for (int k = 0; r && k < RUN_WIRES; k++)
        n += r->w[k] ? footprint(r->w[k]) : 0;
    return n;
}

size_t nx_llm_run_total_bytes(void)
{
    return run_total;
}

/* Moves the live entries and their text to the front once the dead ones take more room. */
static void compact(struct wire_run *w)
{
    if (w->first < 32 || w->first * 2 < w->n)
        return;
    size_t live = w->n - w->first;
    memmove(w->msg, w->msg + w->first, live * sizeof *w->msg);
    for (size_t i = 0; i < live; i++)
        w->end[i] = w->end[w->first + i] - w->base;
    memmove(w->text.data, w->text.data + w->base, w->text.len - w->base);
    w->text.len -= w->base;
    w->first = 0;
    w->n = live;
    w->base = 0;
}

size_t nx_llm_run_reuse(struct nx_llm_run *r, int wire, const json_t *messages, struct nx_buf *out)
{
    struct wire_run *w;
    size_t p, k = 0, count = json_array_size(messages);

    if (!r || wire <= 0 || wire >= RUN_WIRES)
        return 0;
    if (!(w = r->w[wire]))
        w = r->w[wire] = nx_calloc(1, sizeof *w);
    const json_t *m0 = count ? json_array_get(messages, 0) : NULL;
    for (p = w->first; p < w->n && w->msg[p] != m0; p++)
        ;
    if (p == w->n) { /* nothing shared: started over by the adds that follow */
        drop_entries(w, w->first, w->n);
        w->first = w->n = w->base = w->text.len = 0;
        shrink(w);
    } else {
        /* the start moved on (the history was cut): the entries before it are let go */
        drop_entries(w, w->first, p);
        w->base = p > w->first ? w->end[p - 1] : w->base;
        w->first = p;
        for (k = 1; k < count && p + k < w->n && w->msg[p + k] == json_array_get(messages, k); k++)
            ;
        /* what follows in the run is not in this request (another turn's, or one that failed) */
        drop_entries(w, p + k, w->n);
        w->n = p + k;
        w->text.len = w->end[w->n - 1];
        compact(w);
        if (!w->first)
            shrink(w);
        nx_buf_append(out, w->text.data + w->base, w->text.len - w->base);
    }
    account(w);
    w->is_stopped = w->refused && k < count && json_array_get(messages, k) == w->refused;
    if (!w->is_stopped && w->refused) { /* gone from the history */
        json_decref((json_t *)w->refused);
        w->refused = NULL;
    }
    return k;
}

bool nx_llm_run_is_open(const struct nx_llm_run *r, int wire)
{
    return r && wire > 0 && wire < RUN_WIRES && r->w[wire] && !r->w[wire]->is_stopped;
}

bool nx_llm_run_add(struct nx_llm_run *r, int wire, const json_t *m, const char *text, size_t len)
{
    struct wire_run *w;

    if (!r || wire <= 0 || wire >= RUN_WIRES || !(w = r->w[wire]) || w->is_stopped)
        return false;
    if (len > RUN_MAX_TEXT) {
        json_decref((json_t *)w->refused);
        w->refused = json_incref((json_t *)m);
        w->is_stopped = true;
        return false;
    }
    if (run_total + len + 1 > RUN_BUDGET) { /* (for this request: the next one tries again) */
        w->is_stopped = true;
        return false;
    }
    if (w->n == w->cap) {
        w->cap = w->cap ? w->cap * 2 : 16;
        w->msg = nx_realloc(w->msg, w->cap * sizeof *w->msg);
        w->end = nx_realloc(w->end, w->cap * sizeof *w->end);
    }
    if (w->n == w->first)
        w->base = w->text.len;
    w->msg[w->n] = json_incref((json_t *)m);
    if (len) {
        nx_buf_append(&w->text, text, len);
        nx_buf_putc(&w->text, ',');
    }
    w->end[w->n++] = w->text.len;
    account(w);
    return true;
}

const char *nx_llm_put_messages(const struct nx_llm_request *req, int wire, nx_llm_encode_fn encode,
                                void *arg, struct nx_buf *out)
{
    struct nx_buf frag = NX_BUF_INIT;
    const char *why = NULL;
    bool is_stable = req->is_history_stable;
    size_t i = is_stable ? nx_llm_run_reuse(req->run, wire, req->messages, out) : 0;
    bool by_run = is_stable && nx_llm_run_is_open(req->run, wire);

    for (; i < json_array_size(req->messages); i++) {
        const json_t *m = json_array_get(req->messages, i);
        size_t len = 0;
        const char *part = is_stable && !by_run ? nx_llm_frag_get(wire, m, &len) : NULL;
        if (!part) { /* (a remembered message was checked when it was encoded) */
            nx_buf_reset(&frag);
            if ((why = encode(m, &frag, arg)))
                break;
            part = frag.data ? frag.data : "";
            len = frag.len;
            if (by_run)
                by_run = nx_llm_run_add(req->run, wire, m, part, len);
            if (is_stable && !by_run)
                nx_llm_frag_put(wire, m, part, len);
        }
        if (len) {
            nx_buf_append(out, part, len);
            nx_buf_putc(out, ',');
        }
    }
    nx_buf_cleanup(&frag);
    return why;
}
