/* Recent history of active sessions, kept in memory so a session's next turn does not wait for
 * a store read. One process owns a session at a time (its lane), so the cache is the truth for
 * what this process wrote; the store stays the record. Bounded by memory.yaml
 * short_term.max_sessions (least recently used out first) and, per session, by
 * max_history_turns. Loop thread only. */
#include <stdlib.h>
#include <string.h>

#include "agent/agent_internal.h"
#include "core/alloc.h"
#include "store/history.h"

struct hentry {
    struct hentry *hnext;       /* bucket chain */
    struct hentry *prev, *next; /* LRU, most recent first */
    char *key;
    json_t *messages;
    uint64_t tokens; /* their estimates added up, or HCACHE_NO_TOKENS */
    struct nx_llm_run *run; /* as last sent (llm/run.c), or NULL */
};

struct hcache {
    struct hentry **buckets;
    size_t nbuckets;
    size_t n;
    size_t max;
    struct hentry *head, *tail;
    size_t holds;   /* hcache_hold without hcache_release: the struct outlives hcache_free */
    uint64_t epoch; /* forgets so far (hcache_epoch) */
    bool is_freed;
};

static size_t hash(const char *s)
{
    size_t h = 1469598103934665603u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211u;
    return h;
}

static struct hentry **slot(struct hcache *c, const char *key)
{
    struct hentry **pp = &c->buckets[hash(key) & (c->nbuckets - 1)];
    while (*pp && strcmp((*pp)->key, key) != 0)
        pp = &(*pp)->hnext;
    return pp;
}

static void lru_unlink(struct hcache *c, struct hentry *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        c->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        c->tail = e->prev;
    e->prev = e->next = NULL;
}

static void lru_front(struct hcache *c, struct hentry *e)
{
    e->next = c->head;
    if (c->head)
        c->head->prev = e;
    c->head = e;
    if (!c->tail)
        c->tail = e;
}

static void drop(struct hcache *c, struct hentry *e)
{
    struct hentry **pp = slot(c, e->key);
    *pp = e->hnext;
    lru_unlink(c, e);
    json_decref(e->messages);
    nx_llm_run_unref(e->run);
    free(e->key);
    free(e);
    c->n--;
}

struct hcache *hcache_new(size_t max_sessions)
{
    struct hcache *c = nx_calloc(1, sizeof *c);
    c->max = max_sessions ? max_sessions : 10000;
    c->nbuckets = 1;
    while (c->nbuckets < c->max)
        c->nbuckets *= 2;
    c->buckets = nx_calloc(c->nbuckets, sizeof *c->buckets);
    return c;
}

void hcache_free(struct hcache *c)
{
    if (!c)
        return;
    while (c->head)
        drop(c, c->head);
    free(c->buckets);
    c->buckets = NULL;
    c->is_freed = true;
    if (!c->holds)
        free(c);
}

void hcache_hold(struct hcache *c)
{
    c->holds++;
}

void hcache_release(struct hcache *c)
{
    if (--c->holds == 0 && c->is_freed)
        free(c);
}

void hcache_forget(struct hcache *c, const char *key)
{
    struct hentry *e;
    if (c->is_freed)
        return;
    if ((e = *slot(c, key)))
        drop(c, e);
}

void hcache_forget_unsaved(struct hcache *c, const char *key)
{
    if (c->is_freed)
        return;
    c->epoch++;
    hcache_forget(c, key);
}

uint64_t hcache_epoch(const struct hcache *c)
{
    return c->epoch;
}

json_t *hcache_take_tokens(struct hcache *c, const char *key, uint64_t *tokens)
{
    struct hentry *e = c->is_freed ? NULL : *slot(c, key);
    json_t *messages;
    *tokens = HCACHE_NO_TOKENS;
    if (!e || !e->messages)
        return NULL;
    lru_unlink(c, e);
    lru_front(c, e);
    *tokens = e->tokens;
    messages = e->messages;
    e->messages = NULL; /* the turn's now; put back when it ends */
    return messages;
}

struct nx_llm_run *hcache_run(struct hcache *c, const char *key)
{
    struct hentry *e = c->is_freed ? NULL : *slot(c, key);
    if (!e)
        return NULL;
    if (!e->run)
        e->run = nx_llm_run_new();
    return nx_llm_run_ref(e->run);
}

void hcache_put(struct hcache *c, const char *key, const json_t *messages, size_t keep)
{
    hcache_put_owned(c, key, json_copy((json_t *)messages), keep, HCACHE_NO_TOKENS);
}

void hcache_put_owned(struct hcache *c, const char *key, json_t *messages, size_t keep, uint64_t tokens)
{
    if (c->is_freed) {
        json_decref(messages);
        return;
    }
    struct hentry **pp = slot(c, key), *e = *pp;
    if (!e) {
        if (c->n >= c->max)
            drop(c, c->tail);
        pp = slot(c, key);
        e = nx_calloc(1, sizeof *e);
        e->key = nx_strdup(key);
        *pp = e;
        c->n++;
    } else {
        lru_unlink(c, e);
        json_decref(e->messages);
    }
    lru_front(c, e);
    size_t n = json_array_size(messages), window = keep && n > keep ? n - keep : 0, from = window;
    /* Start on a user message that answers no tool call, so a call never loses its result;
     * when the window holds none (a turn of more tool rounds than it keeps), at the nearest
     * earlier one, as a history read from the store does. */
    while (from < n && !nx_history_is_clean_start(json_array_get(messages, from)))
        from++;
    if (from == n) {
        for (from = window; from > 0 && !nx_history_is_clean_start(json_array_get(messages, from)); from--)
            ;
    }
    for (size_t i = 0; i < from && tokens != HCACHE_NO_TOKENS; i++) {
        uint64_t drop = nx_llm_message_tokens(json_array_get(messages, i));
        tokens = drop <= tokens ? tokens - drop : HCACHE_NO_TOKENS;
    }
    e->tokens = tokens;
    for (size_t i = 0; i < from; i++)
        json_array_remove(messages, 0);
    e->messages = messages;
}
