/* Daily token budgets (agents.yaml `limits.daily_token_budget`): the tokens an agent used today
 * (UTC) are counted here on the loop thread and persisted in the store's kv table under
 * "budget:<agent>:<YYYY-MM-DD>", so a restart keeps the day's count. A turn is refused before it
 * starts when its agent has used its budget; the turn that crosses the line finishes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "agent/agent_internal.h"
#include "core/alloc.h"
#include "core/clock.h"
#include "core/error.h"
#include "core/log.h"
#include "core/metrics.h"

#define DAY_MS 86400000ULL
#define KEEP_DAYS 31 /* older per-day rows are deleted when a day's row is first read */

struct budget {
    struct budget *next;
    char *agent_id;
    uint64_t day;      /* days since the epoch (UTC) */
    uint64_t used;     /* tokens today: loaded from the store + charged by this process */
    uint64_t held;     /* set aside for the turns in flight: up to their max_tokens each */
    uint64_t limit;    /* the last daily_token_budget seen (for the gauge), 0 = none */
    unsigned loads;    /* store reads in flight for this entry */
    bool is_loaded;
    bool is_orphan;    /* the agents were freed: the last load frees the entry */
};

static struct nx_metric *m_remaining;

static void metric_init(void)
{
    static const char *const labels[] = {"agent", NULL};
    if (!m_remaining)
        m_remaining = nx_metric_gauge("nexo_agent_tokens_budget_remaining",
                                      "tokens left today (UTC) of the agent's daily_token_budget",
                                      labels);
}

static uint64_t today(void)
{
    return nx_wall_ms() / DAY_MS;
}

static void day_text(uint64_t day, char *out, size_t len)
{
    time_t secs = (time_t)(day * 86400);
    struct tm tm;
    gmtime_r(&secs, &tm);
    strftime(out, len, "%Y-%m-%d", &tm);
}

static void kv_key(const char *agent, uint64_t day, char *out, size_t len)
{
    char d[16];
    day_text(day, d, sizeof d);
    snprintf(out, len, "budget:%s:%s", agent, d);
}

static void publish(struct budget *b, uint64_t limit)
{
    const char *const lv[] = {b->agent_id};
    b->limit = limit;
    nx_gauge_set(m_remaining, lv, b->used >= limit ? 0 : (double)(limit - b->used));
}

/* ---- store jobs (store thread) ---- */

struct load_job {
    struct budget *b;
    char key[160];
    char prefix[100];  /* "budget:<agent>:" */
    char oldest[160];  /* rows below this key (same agent) are deleted */
    uint64_t value;
};

static int load_run(sqlite3 *db, void *arg)
{
    struct load_job *j = arg;
    sqlite3_stmt *st = NULL;
    int rc = NX_EDB;

    if (sqlite3_prepare_v2(db, "SELECT CAST(value AS INTEGER) FROM kv WHERE key = ?1", -1, &st,
                           NULL) != SQLITE_OK)
        goto out;
    sqlite3_bind_text(st, 1, j->key, -1, SQLITE_STATIC);
    int s = sqlite3_step(st);
    if (s == SQLITE_ROW) {
        sqlite3_int64 v = sqlite3_column_int64(st, 0);
        j->value = v > 0 ? (uint64_t)v : 0;
    } else if (s != SQLITE_DONE) {
        goto out;
    }
    rc = 0;
out:
    if (rc < 0)
        nx_warn("agent", "token budget %s not read: %s", j->key, sqlite3_errmsg(db));
    sqlite3_finalize(st);
    return rc;
}

/* Old days go (a write job: it joins the next group commit). */
static int prune_run(sqlite3 *db, void *arg)
{
    struct load_job *j = arg;
    sqlite3_stmt *st = NULL;
    int rc = NX_EDB;

    if (sqlite3_prepare_v2(db, "DELETE FROM kv WHERE key >= ?1 AND key < ?2", -1, &st, NULL) != SQLITE_OK)
        goto out;
    sqlite3_bind_text(st, 1, j->prefix, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, j->oldest, -1, SQLITE_STATIC);
    rc = sqlite3_step(st) == SQLITE_DONE ? 0 : NX_EDB;
out:
    sqlite3_finalize(st);
    return rc;
}

static void prune_done(int rc, void *arg)
{
    (void)rc;
    free(arg);
}

static void load_done(int rc, void *arg)
{
    struct load_job *j = arg;
    struct budget *b = j->b;

    b->loads--;
    if (b->is_orphan) {
        if (b->loads == 0) {
            free(b->agent_id);
            free(b);
        }
        free(j);
        return;
    }
    if (!b->is_loaded) {
        /* Charges made since the read was queued are not in j->value (their writes queued after
         * it), so they add up. A failed read counts from 0 rather than block the agent. */
        b->used += rc == 0 ? j->value : 0;
        b->is_loaded = true;
        if (b->limit) /* what the store says, not the whole budget, from the start */
            publish(b, b->limit);
    }
    free(j);
}

struct charge_job {
    char key[160];
    uint64_t tokens;
    uint64_t now_ms;
};

static int charge_run(sqlite3 *db, void *arg)
{
    struct charge_job *j = arg;
    sqlite3_stmt *st = NULL;
    int rc = NX_EDB;

    if (sqlite3_prepare_v2(db,
                           "INSERT INTO kv(key, value, updated_at) VALUES (?1, ?2, ?3) "
                           "ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + excluded.value, "
                           "updated_at = excluded.updated_at",
                           -1, &st, NULL) != SQLITE_OK)
        goto out;
    sqlite3_bind_text(st, 1, j->key, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)j->tokens);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)j->now_ms);
    rc = sqlite3_step(st) == SQLITE_DONE ? 0 : NX_EDB;
out:
    if (rc < 0)
        nx_warn("agent", "token budget %s not saved: %s", j->key, sqlite3_errmsg(db));
    sqlite3_finalize(st);
    return rc;
}

static void charge_done(int rc, void *arg)
{
    (void)rc;
    free(arg);
}

/* ---- the table ---- */

static void queue_load(struct nx_agents *a, struct budget *b)
{
    if (!a->deps.store) {
        b->is_loaded = true;
        return;
    }
    struct load_job *j = nx_calloc(1, sizeof *j);
    j->b = b;
    kv_key(b->agent_id, b->day, j->key, sizeof j->key);
    b->loads++;
    nx_store_read(a->deps.store, load_run, load_done, j);

    struct load_job *p = nx_calloc(1, sizeof *p);
    snprintf(p->prefix, sizeof p->prefix, "budget:%s:", b->agent_id);
    kv_key(b->agent_id, b->day > KEEP_DAYS ? b->day - KEEP_DAYS : 0, p->oldest, sizeof p->oldest);
    nx_store_write(a->deps.store, prune_run, prune_done, p);
}

/* The agent's entry for today, created (and its stored count queued for reading) as needed. */
static struct budget *entry(struct nx_agents *a, const char *agent_id)
{
    uint64_t day = today();
    struct budget *b;

    for (b = a->budgets; b; b = b->next) {
        if (strcmp(b->agent_id, agent_id) == 0)
            break;
    }
    if (!b) {
        b = nx_calloc(1, sizeof *b);
        b->agent_id = nx_strdup(agent_id);
        b->day = day;
        b->next = a->budgets;
        a->budgets = b;
        queue_load(a, b);
    } else if (b->day != day) { /* a new day: start over from what the store has for it */
        b->day = day;
        b->used = 0;
        b->is_loaded = false;
        queue_load(a, b);
    }
    return b;
}

void budgets_prepare(struct nx_agents *a)
{
    metric_init();
    for (size_t i = 0; i < a->gen->nagents; i++) {
        const struct nx_agent_conf *c = a->gen->agents[i].conf;
        if (c->limits.daily_token_budget)
            publish(entry(a, c->id), c->limits.daily_token_budget);
    }
    /* An agent that left, or has no budget any more: its gauge goes too. */
    for (struct budget *b = a->budgets; b; b = b->next) {
        const struct agent_rt *rt = b->limit ? gen_agent(a->gen, b->agent_id) : NULL;
        if (b->limit && (!rt || !rt->conf->limits.daily_token_budget)) {
            const char *const lv[] = {b->agent_id};
            nx_gauge_remove(m_remaining, lv);
            b->limit = 0;
        }
    }
}

int budget_check(struct nx_turn *t, bool may_wait, char *msg, size_t msglen)
{
    uint64_t limit = t->agent->conf->limits.daily_token_budget;
    struct budget *b;

    if (!limit)
        return 0;
    metric_init();
    b = entry(t->a, t->agent_id);
    if (!b->is_loaded && may_wait)
        return NX_EAGAIN;
    publish(b, limit);
    if (b->used + b->held < limit) {
        /* Turns at the same time must not all pass while the count is under the limit and then
         * overrun it together: each sets aside what it may use, up to what is left. */
        uint64_t want = t->o.max_tokens ? t->o.max_tokens : t->agent->conf->limits.max_tokens;
        uint64_t room = limit - b->used - b->held;
        want = want ? want : 4096;
        t->budget_held = want < room ? want : room;
        b->held += t->budget_held;
        return 0;
    }
    if (b->used < limit)
        snprintf(msg, msglen,
                 "agent \"%s\" has %llu of its %llu daily tokens left (UTC; "
                 "limits.daily_token_budget), set aside for the turns in progress; try again "
                 "when they are done", t->agent_id, (unsigned long long)(limit - b->used),
                 (unsigned long long)limit);
    else
        snprintf(msg, msglen,
                 "agent \"%s\" has used its daily token budget (%llu of %llu tokens today, UTC; "
                 "limits.daily_token_budget); it resets at 00:00 UTC",
                 t->agent_id, (unsigned long long)b->used, (unsigned long long)limit);
    return b->used < limit ? NX_EBUSY : NX_EPERM;
}

uint32_t budget_reset_secs(void)
{
    uint64_t now = nx_wall_ms();
    return (uint32_t)(((now / DAY_MS + 1) * DAY_MS - now + 999) / 1000);
}

void budget_charge(struct nx_turn *t, uint64_t estimate)
{
    const struct nx_llm_usage *u = &t->usage;
    uint64_t limit = t->agent ? t->agent->conf->limits.daily_token_budget : 0;
    uint64_t tokens = u->input_tokens + u->output_tokens + u->cache_read_tokens + u->cache_write_tokens;
    struct budget *b;

    if (t->budget_held) { /* what it set aside goes back, whatever the limit is now */
        b = entry(t->a, t->agent_id);
        b->held -= t->budget_held < b->held ? t->budget_held : b->held;
        t->budget_held = 0;
    }
    if (!tokens) /* a provider that reports no usage is charged by estimate */
        tokens = estimate;
    if (!limit || !tokens)
        return;
    metric_init();
    b = entry(t->a, t->agent_id);
    b->used += tokens;
    publish(b, limit);
    if (!t->a->deps.store)
        return;
    struct charge_job *j = nx_calloc(1, sizeof *j);
    kv_key(b->agent_id, b->day, j->key, sizeof j->key);
    j->tokens = tokens;
    j->now_ms = nx_wall_ms();
    nx_store_write(t->a->deps.store, charge_run, charge_done, j);
}

/* A no-op read: it completes after every read queued before it (the day's count). */
static int barrier_run(sqlite3 *db, void *arg)
{
    (void)db;
    (void)arg;
    return 0;
}

void budget_wait(struct nx_agents *a, nx_store_done_fn done, void *arg)
{
    nx_store_read(a->deps.store, barrier_run, done, arg);
}

void budgets_free(struct nx_agents *a)
{
    struct budget *b = a->budgets;
    while (b) {
        struct budget *next = b->next;
        if (b->loads) {
            b->is_orphan = true;
        } else {
            free(b->agent_id);
            free(b);
        }
        b = next;
    }
    a->budgets = NULL;
}
