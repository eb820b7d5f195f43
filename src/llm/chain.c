#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/error.h"
#include "core/log.h"
#include "llm/internal.h"

/* Retries, failover and circuit breakers over single attempts (llm.c). One chain runs the
 * request on its targets in order: each target gets up to max_attempts attempts, retryable
 * failures wait a backoff (full jitter, or the server's retry-after) between them, then the next
 * target takes over. Each provider's breaker is asked before every attempt and told every
 * outcome. Text already streamed to the caller is never repeated: a failure after it ends the
 * chain with an error. */

struct chain_target {
    struct nx_llm_provider *p;
    char *model;
};

struct chain {
    struct nx_llm_call base;
    struct chain_target *targets;
    size_t ntargets;
    size_t cur;            /* target index */
    uint32_t attempt;      /* attempts made on the current target */
    struct nx_llm_retry_conf retry;
    /* the request, kept for later attempts */
    struct nx_llm_request req;
    char *system;
    char *user;
    json_t *messages;
    json_t *tools;
    json_t *stop;
    struct nx_llm_callbacks cb;
    struct nx_llm_call *inflight;
    uv_timer_t timer;      /* backoff, and completion of a chain that never started */
    bool timer_closing;
    bool streamed;         /* text reached the caller */
    bool is_text_coming;   /* the attempt in flight has sent text (seen by the caller or not) */
    size_t refused_target; /* 1 + the target whose model or server refused to stream as asked
                              (asked again for free, twice a target at most); 0 = none */
    unsigned nrefused;     /* ...how many times */
    bool cancelled;
    bool finished;
    bool is_deadline_cut;  /* retry.deadline came while an attempt was in flight: cut */
    bool probe;            /* the attempt in flight holds the breaker's half-open probe */
    uint32_t probe_id;     /* which one (nx_breaker_abandon) */
    /* the last failure, for the final report */
    int last_rc;
    int last_status;
    char *last_type;
    char *last_msg;
    int64_t last_retry_ms;
    bool last_retryable;
    uint64_t log_ctx;      /* the caller's log context: later attempts start in it */
    uint64_t started_ms;   /* for retry.deadline */
};

static void chain_cancel(struct nx_llm_call *call);
static void next_attempt(struct chain *ch);

static void chain_closed(uv_handle_t *h)
{
    struct chain *ch = h->data;

    for (size_t i = 0; i < ch->ntargets; i++)
        free(ch->targets[i].model);
    free(ch->targets);
    free(ch->system);
    free(ch->user);
    json_decref(ch->messages);
    nx_llm_run_unref(ch->req.run);
    json_decref(ch->tools);
    json_decref(ch->stop);
    free(ch->last_type);
    free(ch->last_msg);
    free(ch);
}

/* Delivers on_done exactly once and lets the timer close, which frees the chain. */
static void finish(struct chain *ch, int rc, const struct nx_llm_result *res)
{
    if (ch->finished)
        return;
    ch->finished = true;
    uv_timer_stop(&ch->timer);
    ch->cb.on_done(rc, res, ch->cb.udata);
    uv_close((uv_handle_t *)&ch->timer, chain_closed);
}

static void finish_last_error(struct chain *ch, int rc)
{
    struct nx_llm_result res;

    memset(&res, 0, sizeof res);
    res.model = ch->req.model;
    res.http_status = ch->last_status;
    res.error_type = ch->last_type;
    res.error_message = ch->last_msg;
    res.retry_after_ms = ch->last_retry_ms;
    res.is_retryable = ch->last_retryable;
    finish(ch, rc, &res);
}

static void remember(struct chain *ch, int rc, const struct nx_llm_result *res, const char *fmt_prefix);

/* Ends the chain as a timeout past retry.deadline, with the last failure in its message. */
static void give_up(struct chain *ch)
{
    uint64_t now = nx_mono_ms();
    char prefix[160];

    snprintf(prefix, sizeof prefix, "gave up after %.1f s (llm.yaml retry.deadline %g s): ",
             (double)(now - ch->started_ms) / 1000, (double)ch->retry.deadline_ms / 1000);
    struct nx_llm_result r;
    memset(&r, 0, sizeof r);
    r.http_status = ch->last_status;
    r.error_type = "timeout_error";
    r.error_message = ch->last_msg ? ch->last_msg : "no attempt was made";
    r.retry_after_ms = -1;
    remember(ch, NX_ETIMEDOUT, &r, prefix);
    finish_last_error(ch, NX_ETIMEDOUT);
}

/* Whether waiting `wait_ms` and then trying again would start past retry.deadline: then the
 * chain ends now (give_up). */
static bool past_deadline(struct chain *ch, uint64_t wait_ms)
{
    if (!ch->retry.deadline_ms || nx_mono_ms() + wait_ms < ch->started_ms + ch->retry.deadline_ms)
        return false;
    give_up(ch);
    return true;
}

/* retry.deadline came with an attempt in flight: it is cut (attempt_done ends the chain), unless
 * its answer is arriving (text has come, whether or not the caller streams), which then runs to
 * its end (under the attempt's own timeout, on silence). */
static void on_deadline(uv_timer_t *t)
{
    struct chain *ch = t->data;

    if (!ch->inflight || ch->is_text_coming || ch->cancelled || ch->finished ||
        nx_llm_call_is_answered(ch->inflight)) /* (only the body's end awaited: it is answered) */
        return;
    ch->is_deadline_cut = true;
    nx_llm_cancel(ch->inflight);
}

static void remember(struct chain *ch, int rc, const struct nx_llm_result *res, const char *fmt_prefix)
{
    struct nx_buf b = NX_BUF_INIT;

    ch->last_rc = rc;
    ch->last_status = res ? res->http_status : 0;
    ch->last_retry_ms = res ? res->retry_after_ms : -1;
    ch->last_retryable = res ? res->is_retryable : true;
    free(ch->last_type);
    ch->last_type = nx_strdup(res && res->error_type ? res->error_type : "unavailable");
    if (fmt_prefix)
        nx_buf_puts(&b, fmt_prefix);
    nx_buf_puts(&b, res && res->error_message ? res->error_message : nx_strerror(rc));
    free(ch->last_msg);
    ch->last_msg = nx_buf_steal(&b);
}

static void publish(struct nx_llm_provider *p)
{
    nx_llm_publish_breaker(p);
}

/* Uniform in [0, 1]: xorshift64*, seeded from the clock (loop thread only). */
static double jitter(void)
{
    static uint64_t x;

    if (!x)
        x = nx_mono_ns() | 1;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    return (double)((x * 0x2545F4914F6CDD1DULL) >> 11) / (double)(1ULL << 53);
}

static uint64_t backoff_ms(const struct chain *ch, const struct nx_llm_result *res)
{
    double cap = ch->retry.initial_backoff_ms * pow(ch->retry.backoff_multiplier, ch->attempt - 1);

    if (res && res->retry_after_ms >= 0)
        return (uint64_t)res->retry_after_ms < ch->retry.max_backoff_ms ? (uint64_t)res->retry_after_ms
                                                                         : ch->retry.max_backoff_ms;
    if (!(cap < ch->retry.max_backoff_ms))
        cap = ch->retry.max_backoff_ms;
    /* full jitter: uniform in [0, cap] */
    return (uint64_t)(cap * jitter());
}

static void on_backoff(uv_timer_t *t)
{
    struct chain *ch = t->data;
    uint64_t prev = nx_log_context_swap(ch->log_ctx);

    next_attempt(ch);
    nx_log_context_swap(prev);
}

static void attempt_text(const char *delta, size_t len, void *udata)
{
    struct chain *ch = udata;

    if (ch->cancelled)
        return;
    ch->is_text_coming = true;
    if (!ch->cb.on_text) /* (text nobody sees binds nothing: a break is retried) */
        return;
    ch->streamed = true;
    ch->cb.on_text(delta, len, ch->cb.udata);
}

static void attempt_done(int rc, const struct nx_llm_result *res, void *udata)
{
    struct chain *ch = udata;
    struct chain_target *t = &ch->targets[ch->cur];
    struct nx_breaker *b = nx_llm_provider_breaker(t->p);
    uint64_t now = nx_mono_ms();
    bool probe = ch->probe;

    ch->inflight = NULL;
    ch->probe = false;
    uv_timer_stop(&ch->timer); /* (on_deadline) */
    if (ch->is_deadline_cut && !ch->cancelled && rc != 0) { /* (an answer that came first stands) */
        if (probe) /* no verdict: it was not the provider that ended it */
            nx_breaker_abandon(b, ch->probe_id);
        nx_llm_count_outcome(t->p, t->model, "error");
        struct nx_llm_result r = {.error_type = "timeout_error", .retry_after_ms = -1, .is_retryable = true};
        char m[300];
        snprintf(m, sizeof m, "%s %s had not answered when the deadline came", nx_llm_provider_name(t->p),
                 t->model);
        r.error_message = m;
        remember(ch, NX_ETIMEDOUT, &r, NULL);
        give_up(ch);
        return;
    }
    if (rc == NX_ECANCELED || ch->cancelled) {
        if (probe)
            nx_breaker_abandon(b, ch->probe_id); /* no verdict: let another probe through */
        nx_llm_count_outcome(t->p, t->model, "cancelled");
        finish(ch, NX_ECANCELED, res);
        return;
    }
    bool is_stale = nx_breaker_is_stale(b, probe, ch->probe_id); /* began before it opened */
    if (rc != 0 && res->is_stream_refused && ch->refused_target != ch->cur + 1) {
        ch->refused_target = ch->cur + 1;
        ch->nrefused = 0;
    }
    if (rc != 0 && res->is_stream_refused && ch->nrefused < 2) {
        /* the provider is up and answers, whole or without stream_options (remembered:
         * llm/whole.c): asked again at once, neither an attempt nor a failure; twice at most,
         * as a server may refuse stream_options, then its model refuse to stream */
        ch->nrefused++;
        if (!is_stale)
            nx_breaker_success(b, now);
        else if (probe)
            nx_breaker_abandon(b, ch->probe_id);
        publish(t->p);
        nx_llm_count_outcome(t->p, t->model, "retry");
        ch->attempt = ch->attempt ? ch->attempt - 1 : 0;
        next_attempt(ch);
        return;
    }
    if (rc == 0) {
        if (!is_stale)
            nx_breaker_success(b, now);
        publish(t->p);
        nx_llm_count_outcome(t->p, t->model, "ok");
        finish(ch, 0, res);
        return;
    }
    /* A failure the provider is to blame for counts against its breaker; a refused request
     * (400, 401, ...) proves the provider is up; one that never reached it (no body could be
     * built, the client is closing) says nothing about it. */
    if (!is_stale && res->is_retryable)
        nx_breaker_failure(b, now);
    else if (!is_stale && res->http_status != 0)
        nx_breaker_success(b, now);
    else if (!is_stale && probe)
        nx_breaker_abandon(b, ch->probe_id);
    publish(t->p);
    if (ch->streamed) {
        struct nx_llm_result r = *res;
        struct nx_buf m = NX_BUF_INIT;
        nx_buf_printf(&m, "the answer broke off after part of it was streamed, so it was not retried: %s",
                      res->error_message ? res->error_message : nx_strerror(rc));
        r.error_message = m.data;
        r.is_retryable = false;
        nx_llm_count_outcome(t->p, t->model, "error");
        finish(ch, rc, &r);
        nx_buf_cleanup(&m);
        return;
    }
    remember(ch, rc, res, NULL);
    if (!res->is_retryable) {
        nx_llm_count_outcome(t->p, t->model, "error");
        /* 401/403/404, and a used-up quota or unpaid bill (429 insufficient_quota, billing_error:
         * NX_EPERM), are about this target (key, model, account): the next one may serve */
        if (res->http_status == 401 || res->http_status == 403 || res->http_status == 404 ||
            rc == NX_EPERM) {
            ch->attempt = ch->retry.max_attempts;
            next_attempt(ch);
        } else {
            finish_last_error(ch, rc);
        }
        return;
    }
    if (ch->attempt < ch->retry.max_attempts && nx_llm_provider_breaker(t->p)->state != NX_BREAKER_OPEN &&
        !(res->retry_after_ms > 0 && (uint64_t)res->retry_after_ms > ch->retry.max_backoff_ms)) {
        /* (a failure that just opened the breaker is not waited on: the target is skipped) */
        /* (a provider that asks for a longer wait than max_backoff is not asked again early:
         * the next target goes, or the error with its retry-after) */
        uint64_t ms = backoff_ms(ch, res);
        if (past_deadline(ch, ms)) {
            nx_llm_count_outcome(t->p, t->model, "error");
            return;
        }
        nx_llm_count_outcome(t->p, t->model, "retry");
        nx_debug("llm", "%s %s: attempt %u failed (%s), retrying in %llu ms", nx_llm_provider_name(t->p),
                 t->model, ch->attempt, res->error_type ? res->error_type : "?", (unsigned long long)ms);
        uv_timer_start(&ch->timer, on_backoff, ms, 0);
        return;
    }
    nx_llm_count_outcome(t->p, t->model, "error");
    ch->attempt = ch->retry.max_attempts; /* this target is done (tried enough, or asked to wait) */
    next_attempt(ch);
}

/* Starts the next attempt: on the current target while it has attempts left, else on the next
 * target whose breaker lets it through; ends the chain when none is left. */
static void next_attempt(struct chain *ch)
{
    struct nx_llm_callbacks cb = {attempt_text, attempt_done, ch};

    if (ch->cancelled || ch->finished)
        return;
    for (; ch->cur < ch->ntargets; ch->cur++, ch->attempt = 0) {
        struct chain_target *t = &ch->targets[ch->cur];
        struct nx_breaker *b = nx_llm_provider_breaker(t->p);
        if (ch->attempt >= ch->retry.max_attempts)
            continue;
        if (ch->cur > 0 && ch->attempt == 0 && past_deadline(ch, 0)) /* a fallback, too late */
            return;
        if (!nx_breaker_allow(b, nx_mono_ms())) {
            struct nx_buf m = NX_BUF_INIT;
            nx_llm_count_outcome(t->p, t->model, "circuit_open"); /* skipped: not sent */
            nx_buf_printf(&m, "%s: circuit breaker open, provider skipped", nx_llm_provider_name(t->p));
            if (!ch->last_msg || ch->last_rc == 0) {
                struct nx_llm_result r;
                memset(&r, 0, sizeof r);
                r.error_type = "circuit_open";
                r.error_message = m.data;
                r.retry_after_ms = (int64_t)(b->open_until > nx_mono_ms() ? b->open_until - nx_mono_ms() : 0);
                r.is_retryable = true;
                remember(ch, NX_EAGAIN, &r, NULL);
            }
            nx_buf_cleanup(&m);
            continue;
        }
        ch->probe = b->state == NX_BREAKER_HALF_OPEN;
        ch->probe_id = b->probe;
        publish(t->p);
        ch->attempt++;
        ch->req.model = t->model;
        if (ch->retry.deadline_ms) { /* (attempt_done stops it) */
            uint64_t end = ch->started_ms + ch->retry.deadline_ms, now = nx_mono_ms();
            uv_timer_start(&ch->timer, on_deadline, end > now ? end - now : 1, 0);
        }
        ch->is_text_coming = false;
        ch->inflight = nx_llm_call_start(t->p, t->p->wire, &ch->req, &cb, NX_LLM_CALL_NO_OUTCOME);
        return;
    }
    finish_last_error(ch, ch->last_rc ? ch->last_rc : NX_EAGAIN);
}

static void on_first(uv_timer_t *t)
{
    on_backoff(t); /* the same: the next attempt, in the caller's log context */
}

static bool chain_is_sending(const struct nx_llm_call *call)
{
    const struct chain *ch = (const struct chain *)(const void *)call;
    return ch->inflight != NULL;
}

struct nx_llm_call *nx_llm_chain_start(const struct nx_llm_target *targets, size_t ntargets,
                                       const struct nx_llm_retry_conf *retry,
                                       const struct nx_llm_request *req,
                                       const struct nx_llm_callbacks *cb)
{
    struct chain *ch;

    if (!targets || !ntargets || !req || !cb || !cb->on_done || !targets[0].provider)
        return NULL;
    for (size_t i = 0; i < ntargets; i++)
        if (!targets[i].provider)
            return NULL;
    ch = nx_calloc(1, sizeof *ch);
    ch->log_ctx = nx_log_context_current();
    ch->base.cancel = chain_cancel;
    ch->base.is_sending = chain_is_sending;
    ch->targets = nx_calloc(ntargets, sizeof *ch->targets);
    for (size_t i = 0; i < ntargets; i++) {
        ch->targets[i].p = targets[i].provider;
        ch->targets[i].model = nx_strdup(targets[i].model ? targets[i].model
                                         : req->model ? req->model : "");
    }
    ch->ntargets = ntargets;
    ch->started_ms = nx_mono_ms();
    if (retry)
        ch->retry = *retry;
    if (!ch->retry.max_attempts)
        ch->retry.max_attempts = 5;
    if (!ch->retry.initial_backoff_ms)
        ch->retry.initial_backoff_ms = 1000;
    if (!ch->retry.max_backoff_ms)
        ch->retry.max_backoff_ms = 60000;
    if (!(ch->retry.backoff_multiplier >= 1.0))
        ch->retry.backoff_multiplier = 2.0;
    ch->req = *req;
    ch->system = req->system ? nx_strdup(req->system) : NULL;
    ch->user = req->user ? nx_strdup(req->user) : NULL;
    ch->req.system = ch->system;
    ch->req.user = ch->user;
    /* borrowed by reference: the caller does not change them until on_done */
    ch->messages = json_incref((json_t *)req->messages);
    nx_llm_run_ref(ch->req.run);
    ch->tools = json_incref((json_t *)req->tools);
    ch->stop = json_incref((json_t *)req->stop);
    ch->cb = *cb;
    ch->last_retry_ms = -1;
    uv_timer_init(nx_http_client_loop(targets[0].provider->http), &ch->timer);
    ch->timer.data = ch;
    /* on_done must not run inside this function: a chain whose every breaker is open reports
     * from the timer, so the first attempt starts here only when it can */
    for (size_t i = 0; i < ntargets; i++) {
        struct nx_breaker *b = nx_llm_provider_breaker(ch->targets[i].p);
        if (b->state == NX_BREAKER_CLOSED) {
            if (i == 0) {
                next_attempt(ch);
                return &ch->base;
            }
            break;
        }
    }
    uv_timer_start(&ch->timer, on_first, 0, 0);
    return &ch->base;
}

static void chain_cancel(struct nx_llm_call *call)
{
    struct chain *ch = (struct chain *)call;

    if (ch->cancelled || ch->finished)
        return;
    ch->cancelled = true;
    if (ch->inflight) { /* attempt_done finishes the chain, now or soon */
        if (!ch->is_deadline_cut) /* (cancelled already) */
            nx_llm_cancel(ch->inflight);
    } else {
        struct nx_llm_result res;
        memset(&res, 0, sizeof res);
        res.model = ch->req.model;
        res.error_type = "cancelled";
        res.error_message = "request cancelled";
        res.retry_after_ms = -1;
        finish(ch, NX_ECANCELED, &res);
    }
}
