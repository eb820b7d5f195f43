/* The wire form of canonical messages, remembered by message identity. A session's history is
 * sent again on every turn; its messages are the same json_t objects each time (the agent's
 * history cache shares them), and a message is never changed once it is in a conversation. So
 * each message is translated and encoded once per wire format, and a request body is mostly
 * memcpy. An entry holds a reference to its message; entries whose message nobody else holds
 * any more are swept out when the table fills, so a fragment lives about as long as its
 * message. Bounded in entries and bytes; one table per thread (the loop thread in nexo). */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "llm/internal.h"
#include "store/history.h"

#define FRAG_MAX_ENTRIES 65536
#define FRAG_MAX_BYTES (32u * 1024 * 1024)
#define FRAG_WIRES 7 /* NX_FRAG_* are 1..6 */

/* One entry per message, holding one reference to it, with a slot per wire format. */
struct frag {
    const json_t *msg; /* NULL = free slot */
    char *text[FRAG_WIRES];
    size_t len[FRAG_WIRES];
    bool has[FRAG_WIRES];
};

struct frag_table {
    struct frag *slots;
    size_t cap;   /* power of two */
    size_t n;
    size_t bytes;
    size_t cursor; /* where the incremental sweep goes on */
};

/* Slots the incremental sweep looks at per new entry. A session turn adds a few entries and its
 * history cache lets as many older messages go, so dead entries are found about as fast as they
 * appear, a few at a time: the table never fills with them, and no put pays for a sweep of the
 * whole table (tens of milliseconds of frees at 100,000 entries). */
#define SWEEP_STEP 8

static _Thread_local struct frag_table tbl;

static size_t slot_of(const json_t *m, size_t cap)
{
    uint64_t h = (uint64_t)(uintptr_t)m * 0x9E3779B97F4A7C15ULL;
    return (size_t)(h >> 17) & (cap - 1);
}

static size_t frag_bytes(const struct frag *f)
{
    size_t n = 0;
    for (int w = 0; w < FRAG_WIRES; w++)
        n += f->text[w] ? f->len[w] : 0;
    return n;
}

static void frag_free(struct frag *f)
{
    for (int w = 0; w < FRAG_WIRES; w++)
        free(f->text[w]);
    json_decref((json_t *)f->msg);
}

/* Rebuilds the table with `cap` slots, keeping the entries whose message is still held by
 * someone besides this table. */
static void rehash(size_t cap)
{
    struct frag *old = tbl.slots;
    size_t ocap = tbl.cap;

    tbl.slots = nx_calloc(cap, sizeof *tbl.slots);
    tbl.cap = cap;
    tbl.n = 0;
    tbl.bytes = 0;
    for (size_t i = 0; i < ocap; i++) {
        struct frag *f = &old[i];
        if (!f->msg)
            continue;
        if (f->msg->refcount <= 1) {
            frag_free(f);
            continue;
        }
        size_t k = slot_of(f->msg, cap);
        while (tbl.slots[k].msg)
            k = (k + 1) & (cap - 1);
        tbl.slots[k] = *f;
        tbl.n++;
        tbl.bytes += frag_bytes(f);
    }
    free(old);
}

/* Empties slot i (linear probing: the entries after it that would no longer be found move back
 * into the hole, "backward shift"), freeing its entry. */
static void delete_at(size_t i)
{
    size_t mask = tbl.cap - 1;

    tbl.bytes -= frag_bytes(&tbl.slots[i]);
    frag_free(&tbl.slots[i]);
    tbl.n--;
    for (size_t j = (i + 1) & mask; tbl.slots[j].msg; j = (j + 1) & mask) {
        size_t home = slot_of(tbl.slots[j].msg, tbl.cap);
        /* j's entry may move to i unless its home lies cyclically in (i, j] */
        bool stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (!stays) {
            tbl.slots[i] = tbl.slots[j];
            i = j;
        }
    }
    memset(&tbl.slots[i], 0, sizeof tbl.slots[i]);
}

/* Looks at the next `step` slots and frees the entries whose message only this table holds. */
static void sweep_some(size_t step)
{
    for (; step > 0 && tbl.cap; step--) {
        size_t i = tbl.cursor & (tbl.cap - 1);
        const struct frag *f = &tbl.slots[i];
        if (f->msg && f->msg->refcount <= 1)
            delete_at(i); /* (an entry may have moved into i: looked at next time round) */
        tbl.cursor = i + 1;
    }
}

static struct frag *find(const json_t *m)
{
    if (!tbl.cap)
        return NULL;
    for (size_t k = slot_of(m, tbl.cap);; k = (k + 1) & (tbl.cap - 1)) {
        struct frag *f = &tbl.slots[k];
        if (!f->msg || f->msg == m)
            return f->msg ? f : NULL;
    }
}

const char *nx_llm_frag_get(int wire, const json_t *m, size_t *len)
{
    struct frag *f = find(m);

    if (!f || wire <= 0 || wire >= FRAG_WIRES || !f->has[wire])
        return NULL;
    *len = f->len[wire];
    return f->text[wire] ? f->text[wire] : ""; /* (a token count has no text) */
}

void nx_llm_frag_put(int wire, const json_t *m, const char *text, size_t len)
{
    struct frag *f;

    if (wire <= 0 || wire >= FRAG_WIRES || (text && len > FRAG_MAX_BYTES / 16))
        return; /* a huge message: not worth pinning */
    if (!(f = find(m))) {
        if (!tbl.cap)
            rehash(1024);
        sweep_some(SWEEP_STEP);
        if ((tbl.n + 1) * 4 > tbl.cap * 3 || tbl.bytes + (text ? len : 0) > FRAG_MAX_BYTES) {
            rehash(tbl.cap); /* sweep out the dead */
            if ((tbl.n + 1) * 2 > tbl.cap && tbl.cap < FRAG_MAX_ENTRIES * 2)
                rehash(tbl.cap * 2);
            if ((tbl.n + 1) * 4 > tbl.cap * 3 || tbl.bytes + (text ? len : 0) > FRAG_MAX_BYTES)
                nx_llm_frag_clear(); /* still full of live ones: start over */
            if (!tbl.cap)
                rehash(1024);
        }
        size_t k = slot_of(m, tbl.cap);
        while (tbl.slots[k].msg)
            k = (k + 1) & (tbl.cap - 1);
        f = &tbl.slots[k];
        f->msg = json_incref((json_t *)m);
        tbl.n++;
    }
    if (f->text[wire]) { /* (not expected: a wire form is put once) */
        tbl.bytes -= f->len[wire];
        free(f->text[wire]);
        f->text[wire] = NULL;
    }
    f->has[wire] = true;
    f->len[wire] = len;
    if (text) {
        f->text[wire] = nx_malloc(len + 1);
        memcpy(f->text[wire], text, len);
        f->text[wire][len] = '\0';
        tbl.bytes += len;
    }
}

void nx_llm_frag_clear(void)
{
    for (size_t i = 0; i < tbl.cap; i++) {
        if (tbl.slots[i].msg)
            frag_free(&tbl.slots[i]);
    }
    free(tbl.slots);
    memset(&tbl, 0, sizeof tbl);
}

size_t nx_llm_frag_sweep(void)
{
    if (tbl.cap)
        rehash(tbl.cap);
    if (tbl.n == 0) {
        nx_llm_frag_clear();
        return 0;
    }
    /* A burst grew the table (32,768 slots, 3.7 MB, for 10,000 streams at once); what is left
     * after it gets one the size of a quiet load's: at most half full. */
    size_t cap = 1024;
    while (cap < tbl.n * 2)
        cap *= 2;
    if (cap < tbl.cap)
        rehash(cap);
    return tbl.n;
}

size_t nx_llm_frag_entries(void)
{
    return tbl.n;
}

size_t nx_llm_frag_slots(void)
{
    return tbl.cap;
}

uint64_t nx_llm_message_tokens(const json_t *m)
{
    size_t n = 0;
    if (nx_llm_frag_get(NX_FRAG_TOKENS, m, &n))
        return n;
    uint64_t t = nx_history_estimate_tokens(m);
    nx_llm_frag_put(NX_FRAG_TOKENS, m, NULL, (size_t)t);
    return t;
}
