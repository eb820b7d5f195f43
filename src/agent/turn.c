/* The turn loop: history -> model -> tool calls (in parallel) -> results -> model ... -> answer.
 * Loop thread only. */
#include <stdlib.h>
#include <string.h>

#include "agent/agent_internal.h"
#include "agent/carry.h"
#include "core/alloc.h"
#include "core/buf.h"
#include "core/clock.h"
#include "core/error.h"
#include "core/log.h"
#include "core/metrics.h"
#include "runtime/runtime.h"
#include "store/history.h"
#include "tools/tool.h"

static struct nx_metric *m_turns, *m_inflight, *m_tokens, *m_latency;

static void metrics_init(void)
{
    static const char *const turn_labels[] = {"agent", "outcome", NULL};
    static const char *const agent_labels[] = {"agent", NULL};
    static const char *const tok_labels[] = {"agent", "direction", NULL};
    static const double buckets[] = {0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120};
    if (m_turns)
        return;
    m_turns = nx_metric_counter("nexo_agent_turns_total", "agent turns by outcome", turn_labels);
    m_inflight = nx_metric_gauge("nexo_agent_turns_in_flight", "turns running or queued", NULL);
    m_tokens = nx_metric_counter("nexo_agent_tokens_total", "tokens per agent", tok_labels);
    m_latency = nx_metric_histogram("nexo_agent_turn_seconds", "turn duration", agent_labels,
                                    buckets, NX_ARRAY_LEN(buckets));
}

/* --- ending --- */

static void set_error(struct nx_turn *t, const char *type, const char *msg)
{
    if (t->error_type)
        return;
    struct nx_buf m = NX_BUF_INIT;
    nx_utf8_sanitize(&m, msg, strlen(msg)); /* for the JSON answers (a name cut by snprintf) */
    t->error_type = nx_strdup(type);
    t->error_message = nx_buf_steal(&m);
}

static void unlink_turn(struct nx_turn *t)
{
    struct nx_agents *a = t->a;
    if (t->prev)
        t->prev->next = t->next;
    else if (a->turns == t)
        a->turns = t->next;
    if (t->next)
        t->next->prev = t->prev;
    t->next = t->prev = NULL;
    a->nturns--;
    nx_gauge_set(m_inflight, NULL, (double)a->nturns);
}

static void free_turn(struct nx_turn *t)
{
    for (size_t i = 0; i < t->nslots; i++)
        json_decref(t->slots[i].result);
    free(t->slots);
    json_decref(t->input);
    json_decref(t->late);
    json_decref((json_t *)t->o.stop);
    free((char *)t->o.user);
    json_decref(t->convo);
    nx_llm_run_unref(t->run);
    free(t->agent_id);
    free(t->session_key);
    free(t->event_id);
    free(t->channel);
    free(t->system_extra);
    free(t->model);
    free(t->stop_sequence);
    free(t->error_type);
    free(t->error_message);
    free(t->merged);
    gen_unref(t->gen);
    free(t);
}

static void answer(struct nx_turn *t, int rc, const struct nx_turn_result *res)
{
    const char *agent = t->agent ? t->agent_id : "(unknown)"; /* (series for agents that exist) */
    const char *outcome = rc == 0 ? "ok" : rc == NX_ECANCELED ? "cancelled" : "error";
    const char *const lv[] = {agent, outcome};
    nx_counter_add(m_turns, lv, 1);
    if (t->o.on_done) {
        /* The caller's code is not the turn's: out of its log context, so that a turn the
         * callback starts (the router's next message) does not inherit this one's. */
        uint64_t prev = nx_log_context_swap(0);
        t->o.on_done(rc, res, t->o.udata);
        nx_log_context_swap(prev);
    }
}

static void finish(struct nx_turn *t, int rc)
{
    if (t->is_done)
        return;
    t->is_done = true;
    nx_timer_cancel(t->kick);
    t->kick = NULL;

    struct nx_buf text = NX_BUF_INIT;
    json_t *last = rc == 0 ? turn_answer(t) : NULL;
    if (last)
        turn_text_of(last, &text);
    struct nx_turn_result res = {
        .text = nx_buf_cstr(&text),
        .message = last,
        .conversation = t->convo,
        .usage = t->usage,
        .model = t->model,
        .stop = t->stop,
        .stop_sequence = t->stop_sequence,
        .tool_calls = t->tool_calls,
        .http_status = t->http_status,
        .error_type = t->error_type,
        .error_message = t->error_message,
        .is_user_facing = t->is_budget_refusal,
        .retry_after_s = t->is_budget_refusal ? budget_reset_secs() : t->retry_after_s,
    };
    if (rc == NX_ECANCELED && t->is_interrupted) {
        res.error_type = "interrupted";
        res.error_message = "a newer message in this session interrupted this turn";
    } else if (rc == NX_ECANCELED && !res.error_type) {
        res.error_type = "cancelled";
        res.error_message = "the turn was cancelled";
    }
    const char *ag = t->agent ? t->agent_id : "(unknown)";
    const char *const tin[] = {ag, "input"}, *const tout[] = {ag, "output"};
    const char *const tcr[] = {ag, "cache_read"}, *const tcw[] = {ag, "cache_write"};
    nx_counter_add(m_tokens, tin, (double)t->usage.input_tokens);
    nx_counter_add(m_tokens, tout, (double)t->usage.output_tokens);
    nx_counter_add(m_tokens, tcr, (double)t->usage.cache_read_tokens); /* (the budget counts them) */
    nx_counter_add(m_tokens, tcw, (double)t->usage.cache_write_tokens);
    budget_charge(t, t->answers ? turn_count_tokens(t) : 0); /* (the estimate: for no reported usage) */
    const char *const lat[] = {ag};
    nx_histogram_observe(m_latency, lat, (double)(nx_mono_ns() - t->started_ns) / 1e9);

    /* A turn that ended early keeps what it got to: the caller's message when it was cancelled
     * (a newer message interrupted it, the caller hung up; also before it had started), and the
     * tool calls that ran when the provider failed after them, so that the next turn knows of
     * them and a tool with effects is not run again for the same message. Once (a turn at its
     * tool-iteration limit saved already). Before the lane's next turn loads the history. */
    struct nx_turn *ahead = lane_ahead(t);
    if (rc == NX_ECANCELED && !t->convo && !t->a->is_freeing && ahead) {
        if (!ahead->late) /* queued: stored after the messages of the turn ahead, in order */
            ahead->late = json_array();
        turn_append_messages(ahead->late, t->input);
        if (t->late)
            turn_append_messages(ahead->late, t->late);
    } else if (rc == NX_ECANCELED && !t->convo && !t->a->is_freeing && json_array_size(t->input)) {
        turn_convo_of_unstarted(t, t->input);
    } else if (json_array_size(t->late) && !t->a->is_freeing) {
        turn_convo_of_unstarted(t, NULL); /* (refused, say: the waiting ones are kept still) */
    }
    /* A routed message that nexo's stopping cut stays routed and runs again at the next start
     * (lane_superseded): stored then, once, not now as well. */
    bool will_run_again = rc == NX_ECANCELED && t->a->is_freeing && t->event_id;
    bool is_own_kept = rc < 0 && !t->is_budget_refusal && json_array_size(t->convo) > t->new_from &&
                       (rc == NX_ECANCELED || t->answers > 0);
    if (!t->is_saved && t->convo && !will_run_again && (is_own_kept || json_array_size(t->late))) {
        while (!is_own_kept && rc < 0 && json_array_size(t->convo) > t->new_from) {
            json_array_remove(t->convo, t->new_from); /* its failed call's input: only the late */
            t->tokens = t->tokens_upto = 0;           /* (counted again, without it) */
        }
        turn_save(t);
    }
    turn_put_back(t); /* (before the callbacks: one may free the agents, the cache with them) */

    struct nx_agents *a = t->a;
    unlink_turn(t);
    if (t->lane) /* (its next turn starts on a later loop iteration: answered after these) */
        lane_turn_done(a, t);
    if (!t->is_caller_gone)
        answer(t, rc, &res);
    res.is_merged = true; /* the messages that joined this turn (queue_mode collect) */
    for (size_t i = 0; i < t->nmerged; i++) {
        struct nx_turn *m = t->merged[i];
        m->is_done = true; /* answered now: a cancel from a callback finds nothing to do */
        m->merged_into = NULL;
        answer(m, rc, &res);
        free_turn(m);
    }
    json_decref(last);
    nx_buf_cleanup(&text);
    free_turn(t);
}

/* --- the model --- */

static void call_model(struct nx_turn *t);
static void stop_turn(struct nx_turn *t);

static struct ticket *ticket_new(struct nx_turn *t)
{
    struct ticket *k = nx_malloc(sizeof *k);
    k->t = t;
    t->pending = k;
    return k;
}

/* The turn a callback belongs to, or NULL when the turn is gone; frees the ticket when `last`. */
static struct nx_turn *ticket_take(struct ticket *k, bool last)
{
    struct nx_turn *t = k->t;
    if (last) {
        if (t)
            t->pending = NULL;
        free(k);
    }
    return t;
}

/* Every callback that runs on behalf of a turn runs in the turn's log context, so that a sink
 * (the MCP server's log forwarding) knows whose lines they are. The id is read before the
 * callback, which may free the turn. */
#define IN_TURN_CONTEXT(t, body)                                 \
    do {                                                         \
        uint64_t prev_ctx_ = nx_log_context_swap((t)->log_ctx); \
        body;                                                    \
        nx_log_context_swap(prev_ctx_);                          \
    } while (0)

static void on_llm_text(const char *delta, size_t len, void *udata)
{
    struct nx_turn *t = ticket_take(udata, false);
    if (!t || !t->o.on_text || t->is_cancelled) {
        if (t)
            t->call_text_bytes += len;
        return;
    }
    /* a step's words after an earlier step's (before its tool calls): a blank line between */
    bool is_next_step = t->call_text_bytes == 0 && t->has_streamed;
    t->call_text_bytes += len;
    t->has_streamed = true;
    if (!is_next_step) {
        IN_TURN_CONTEXT(t, t->o.on_text(delta, len, t->o.udata));
        return;
    }
    struct nx_buf b = NX_BUF_INIT; /* one call: the caller may cancel (free) the turn in it */
    nx_buf_puts(&b, "\n\n");
    nx_buf_append(&b, delta, len);
    IN_TURN_CONTEXT(t, t->o.on_text(b.data, b.len, t->o.udata));
    nx_buf_cleanup(&b);
}

static void tool_done(struct tool_slot *s, const char *output, size_t len, bool is_error);

static void on_tool_done(const char *output, size_t len, bool is_error, void *udata)
{
    struct tool_slot *s = udata;
    IN_TURN_CONTEXT(s->t, tool_done(s, output, len, is_error));
}

static void tool_done(struct tool_slot *s, const char *output, size_t len, bool is_error)
{
    struct nx_turn *t = s->t;
    s->call = NULL;
    s->is_done = true;
    if (t->o.on_tool && !t->is_cancelled && !t->is_done)
        t->o.on_tool(s->name, true, is_error, t->o.udata);
    json_object_set_new(s->result, "content", json_stringn(output, len));
    if (is_error)
        json_object_set_new(s->result, "is_error", json_true());
    if (--t->slots_pending > 0 || t->is_done)
        return;
    json_t *blocks = json_array();
    for (size_t i = 0; i < t->nslots; i++) { /* (taken: a later round's calls never find these */
        json_array_append_new(blocks, t->slots[i].result); /* results, also under the same ids) */
        t->slots[i].result = NULL;
    }
    json_array_append_new(t->convo, json_pack("{s:s, s:o}", "role", "user", "content", blocks));
    call_model(t);
}

/* Tool calls one model response may ask for: each runs (file tools on the loop thread), so an
 * answer asking for thousands must not run them all. The rest get an error result. */
#define MAX_TOOL_CALLS 32

static void run_tools(struct nx_turn *t, const json_t *message)
{
    const json_t *content = json_object_get(message, "content");
    size_t i, n = 0;
    json_t *b;
    json_array_foreach(content, i, b) {
        const char *type = json_string_value(json_object_get(b, "type"));
        if (type && strcmp(type, "tool_use") == 0)
            n++;
    }
    for (size_t k = 0; k < t->nslots; k++)
        json_decref(t->slots[k].result);
    free(t->slots);
    t->slots = nx_calloc(n, sizeof *t->slots);
    t->nslots = n;
    t->slots_pending = n;
    size_t k = 0;
    json_array_foreach(content, i, b) {
        const char *type = json_string_value(json_object_get(b, "type"));
        if (!type || strcmp(type, "tool_use") != 0)
            continue;
        const char *id = json_string_value(json_object_get(b, "id"));
        struct tool_slot *s = &t->slots[k++];
        s->t = t;
        s->result = json_pack("{s:s, s:s}", "type", "tool_result", "tool_use_id", id ? id : "");
    }
    struct nx_tool_ctx ctx = {
        .loop = t->a->deps.loop,
        .http = t->a->deps.http,
        .agent_id = t->agent_id,
        .session_key = t->session_key,
        .workspace = t->agent->workspace,
        .outbound_allowlist = t->agent->http_allowlist,
        .allow_private_addresses = false,
        .event_id = t->event_id,
    };
    k = 0;
    json_array_foreach(content, i, b) {
        const char *type = json_string_value(json_object_get(b, "type"));
        if (!type || strcmp(type, "tool_use") != 0)
            continue;
        struct tool_slot *s = &t->slots[k++];
        const char *name = json_string_value(json_object_get(b, "name"));
        json_t *input = json_object_get(b, "input");
        t->tool_calls++;
        s->name = name ? name : "";
        const char *input_error = json_string_value(json_object_get(b, "input_error"));
        if (input_error && k <= MAX_TOOL_CALLS) {
            /* the model's arguments were not JSON: the tool does not run on a guess */
            struct nx_buf msg = NX_BUF_INIT;
            nx_buf_printf(&msg, "not run: the arguments are not valid JSON (%s); call again with a "
                                "JSON object", input_error);
            tool_done(s, msg.data, msg.len, true);
            nx_buf_cleanup(&msg);
        } else if (k > MAX_TOOL_CALLS) {
            static const char msg[] = "not run: one response may ask for at most 32 tool calls; "
                                      "ask again for the rest";
            if (k == MAX_TOOL_CALLS + 1)
                nx_warn("agent", "agent %s: a response asked for %zu tool calls; %zu not run",
                        t->agent_id, n, n - MAX_TOOL_CALLS);
            tool_done(s, msg, sizeof msg - 1, true);
        } else {
            if (t->o.on_tool && !t->is_cancelled)
                t->o.on_tool(s->name, false, false, t->o.udata);
            s->call = nx_tool_invoke(&ctx, t->agent->allowed_tools, name ? name : "", input,
                                     on_tool_done, s);
        }
        if (t->is_done)
            return; /* a tool finished the turn synchronously (cancel from a callback) */
    }
}

static void llm_done(struct nx_turn *t, int rc, const struct nx_llm_result *res);

static void on_llm_done(int rc, const struct nx_llm_result *res, void *udata)
{
    struct nx_turn *t = ticket_take(udata, true);
    if (t)
        IN_TURN_CONTEXT(t, llm_done(t, rc, res));
}

static void llm_done(struct nx_turn *t, int rc, const struct nx_llm_result *res)
{
    t->llm = NULL;
    if (res && rc == 0)
        t->answers++;
    turn_add_usage(t, rc, res);
    if (res && res->model) {
        free(t->model);
        t->model = nx_strdup(res->model);
    }
    if (rc < 0) {
        t->http_status = res ? res->http_status : 0;
        if (res && res->retry_after_ms > 0)
            t->retry_after_s = (uint32_t)((res->retry_after_ms + 999) / 1000);
        set_error(t, res && res->error_type ? res->error_type : "api_error",
                  res && res->error_message ? res->error_message : nx_strerror(rc));
        finish(t, rc);
        return;
    }
    t->stop = res->stop;
    free(t->stop_sequence);
    t->stop_sequence = res->stop_sequence ? nx_strdup(res->stop_sequence) : NULL;
    const json_t *content = json_object_get(res->message, "content");
    if (turn_says_nothing(content)) {
        /* an empty message (or white space) would make the session's next request invalid */
        turn_save(t);
        finish(t, 0);
        return;
    }
    json_array_append(t->convo, res->message);
    t->answer = res->stop == NX_LLM_STOP_TOOL_USE ? NULL : res->message;
    if (res->stop == NX_LLM_STOP_TOOL_USE) {
        if (++t->iterations > t->agent->conf->limits.max_tool_iterations) {
            set_error(t, "tool_iteration_limit", "the agent reached its limit of tool iterations "
                                                 "for one turn (limits.max_tool_iterations)");
            turn_save(t);
            finish(t, NX_ERANGE);
            return;
        }
        run_tools(t, res->message);
        if (t->nslots == 0) { /* tool_use without tool blocks: treat as the answer */
            t->answer = res->message;
            turn_save(t);
            finish(t, 0);
        }
        return;
    }
    turn_save(t);
    finish(t, 0);
}

static void call_model(struct nx_turn *t)
{
    const struct agent_rt *ag = t->agent;
    if (ag->ntargets == 0) {
        set_error(t, "configuration_error",
                  ag->no_target_why ? ag->no_target_why
                                    : "no usable LLM provider for this agent: set ANTHROPIC_API_KEY, or "
                                      "OPENAI_API_KEY (with OPENAI_BASE_URL for another OpenAI-compatible "
                                      "server; a local one needs only OPENAI_BASE_URL), or configure "
                                      "llm.yaml and the agent's model");
        finish(t, NX_ECONFIG);
        return;
    }
    struct nx_buf system = NX_BUF_INIT;
    turn_system_prompt(t, &system);
    uint64_t tools_tokens;
    json_t *tools = turn_tools(t, &tools_tokens);
    uint32_t max_tokens = t->o.max_tokens ? t->o.max_tokens : ag->conf->limits.max_tokens;
    if (t->budget_held) { /* the answers of a turn stay within what the daily budget set aside */
        uint64_t out = t->usage.output_tokens, left = t->budget_held > out ? t->budget_held - out : 1;
        max_tokens = max_tokens > left ? (uint32_t)left : max_tokens;
    }

    t->call_fixed_tokens = nx_history_text_tokens(system.data, system.len) + tools_tokens;
    json_t *messages = turn_fit_context(t, max_tokens);
    if (t->session_key && !t->run)
        t->run = hcache_run(t->a->history, t->session_key);
    struct nx_llm_request req = {
        .model = ag->targets[0].model,
        .system = system.len ? nx_buf_cstr(&system) : NULL,
        .messages = messages,
        .tools = json_array_size(tools) ? tools : NULL,
        .max_tokens = max_tokens,
        .temperature = t->o.temperature,
        .stop = t->o.stop,
        .user = t->o.user,
        /* streamed upstream whoever asks: `timeout` then measures silence, where a whole answer
         * that takes longer (a reasoning model's, on a channel) would be cut and asked again */
        .stream = true,
        .is_history_stable = t->session_key != NULL,
        .run = t->run,
    };
    /* text goes on only to a caller that streams: for the others none has "reached the caller",
     * and a failure half-way is retried as before any text */
    struct nx_llm_callbacks cb = {.on_text = t->o.on_text ? on_llm_text : NULL, .on_done = on_llm_done,
                                  .udata = ticket_new(t)};
    t->call_text_bytes = 0;
    const struct nx_llm_conf *llm = nx_config_llm(t->gen->cfg);
    t->llm = nx_llm_chain_start(ag->targets, ag->ntargets, &llm->retry, &req, &cb);
    json_decref(messages);
    json_decref(tools);
    nx_buf_cleanup(&system);
}

static void history_loaded(struct nx_turn *t, int rc, json_t *messages);

static void on_history(int rc, json_t *messages, void *arg)
{
    struct nx_turn *t = ticket_take(arg, true);
    if (!t) {
        json_decref(messages);
        return;
    }
    IN_TURN_CONTEXT(t, history_loaded(t, rc, messages));
}

static void history_loaded(struct nx_turn *t, int rc, json_t *messages)
{
    if (rc < 0) {
        /* nothing cached, now or after the turn: the next turn reads the stored history again */
        nx_warn("agent", "session %s: history not loaded (%s): answering without it",
                t->session_key, nx_strerror(rc));
        messages = json_array();
        t->is_history_missing = true;
    } else {
        json_t *alt = turn_alternating(messages, 0); /* once per read from the store */
        json_decref(messages);
        messages = alt;
        hcache_put(t->a->history, t->session_key, messages, 0);
    }
    t->convo = messages;
    t->new_from = json_array_size(messages);
    json_array_extend(t->convo, t->input);
    call_model(t);
}

static void run(struct nx_turn *t, bool may_wait);

static void on_budget_read(int rc, void *arg)
{
    struct nx_turn *t = ticket_take(arg, true);
    (void)rc;
    if (t)
        IN_TURN_CONTEXT(t, run(t, false));
}

/* A turn starts only while its agent has budget left today (limits.daily_token_budget). */
static bool within_budget(struct nx_turn *t, bool may_wait)
{
    char msg[256];
    int rc = budget_check(t, may_wait, msg, sizeof msg);
    if (rc == NX_EAGAIN) { /* today's stored count is still being read */
        budget_wait(t->a, on_budget_read, ticket_new(t));
        return false;
    }
    if (rc == NX_EBUSY) { /* what is left is set aside for turns in flight: soon, maybe */
        set_error(t, "rate_limit_error", msg);
        t->retry_after_s = 1;
        finish(t, NX_EBUSY);
        return false;
    }
    if (rc < 0) {
        set_error(t, "budget_exceeded", msg);
        t->is_budget_refusal = true;
        finish(t, NX_EPERM);
        return false;
    }
    return true;
}

void turn_run(struct nx_turn *t)
{
    IN_TURN_CONTEXT(t, run(t, true));
}

static void run_soon(void *arg)
{
    struct nx_turn *t = arg;
    t->kick = NULL;
    turn_run(t);
}

void turn_run_soon(struct nx_turn *t)
{
    t->kick = nx_timer_once(t->a->deps.loop, 0, run_soon, t);
}

/* A session's images sent as base64 are kept as files, so that its history holds a path instead
 * of the bytes; a worker does it (agent/carry.h) once the turn has its place in the lane. A turn
 * cancelled meanwhile ends when it is done (stop_turn); at shutdown its result is dropped. */
static void on_images_kept(json_t *input, void *arg)
{
    struct nx_turn *t = ticket_take(arg, true);
    if (!t) {
        json_decref(input);
        return;
    }
    json_decref(t->input);
    t->input = input;
    t->is_keeping_images = false;
    if (t->is_stop_deferred) { /* cancelled meanwhile: ended now that it has its message to keep */
        IN_TURN_CONTEXT(t, stop_turn(t));
        return;
    }
    IN_TURN_CONTEXT(t, run(t, true));
}

static bool keep_images(struct nx_turn *t)
{
    const char *dir = t->a->deps.data_dir;
    t->is_images_kept = true;
    if (!t->session_key || !dir || !*dir || !nx_media_has_images(t->input))
        return false;
    struct ticket *k = ticket_new(t);
    if (nx_media_keep_images_async(t->a->deps.loop, t->input, dir, on_images_kept, k) < 0) {
        ticket_take(k, true);
        return false; /* sent on as base64 */
    }
    t->input = json_array(); /* the worker's meanwhile */
    t->is_keeping_images = true;
    return true;
}

static void run(struct nx_turn *t, bool may_wait)
{
    t->is_started = true;
    if (!t->is_images_kept && keep_images(t))
        return; /* on_images_kept runs it on */
    if (!within_budget(t, may_wait))
        return;
    if (t->session_key && t->a->deps.store) {
        if (turn_convo_from_cache(t)) { /* this process wrote the session last: no store read */
            json_array_extend(t->convo, t->input);
            call_model(t);
            return;
        }
        nx_history_load(t->a->deps.store, t->session_key, turn_history_keep(t), on_history, ticket_new(t));
        return;
    }
    t->convo = json_array();
    t->new_from = 0;
    json_array_extend(t->convo, t->input);
    call_model(t);
}

/* --- the public API --- */

static void kicked(struct nx_turn *t);
static void cancel_merged(struct nx_turn *t);
static void caller_leaves(struct nx_turn *t);

static void kick(void *arg)
{
    struct nx_turn *t = arg;
    IN_TURN_CONTEXT(t, kicked(t));
}

static void kicked(struct nx_turn *t)
{
    t->kick = NULL;
    if (!t->agent) {
        char msg[160];
        snprintf(msg, sizeof msg, "no agent \"%s\" (see GET /v1/models)", t->agent_id);
        set_error(t, "not_found_error", msg);
        finish(t, NX_ENOENT);
        return;
    }
    if (t->is_cancelled) {
        finish(t, NX_ECANCELED);
        return;
    }
    if (!t->session_key) {
        turn_run(t);
        return;
    }
    if (lane_submit(t->a, t) < 0) {
        set_error(t, "session_busy", "too many messages are waiting in this session "
                                     "(the agent's config.queue_cap); try again later");
        t->retry_after_s = 1; /* (retry-after: a client's SDK waits that, not its own backoff) */
        finish(t, NX_EBUSY);
    }
}

struct nx_turn *nx_turn_start(struct nx_agents *a, const struct nx_turn_opts *o)
{
    metrics_init();
    struct nx_turn *t = nx_calloc(1, sizeof *t);
    t->started_ns = nx_mono_ns();
    /* a caller's context (the MCP server's call) carries over; otherwise the turn's own */
    t->log_ctx = nx_log_context_current() ? nx_log_context_current() : nx_log_context_new();
    t->a = a;
    t->o = *o;
    t->gen = gen_ref(a->gen);
    t->agent_id = nx_strdup(o->agent_id ? o->agent_id : "");
    t->agent = gen_agent(t->gen, t->agent_id);
    if (t->agent && o->queue_mode == NX_QUEUE_FOLLOWUP) /* the caller did not choose: the agent's */
        t->o.queue_mode = (enum nx_queue_mode)t->agent->conf->config.queue_mode;
    t->session_key = o->session_key ? nx_strdup(o->session_key) : NULL;
    t->event_id = o->event_id ? nx_strdup(o->event_id) : NULL;
    t->channel = nx_strdup(o->channel ? o->channel : "http");
    t->system_extra = o->system_extra ? nx_strdup(o->system_extra) : NULL;
    t->input = o->messages ? json_deep_copy(o->messages) : json_array();
    t->o.stop = o->stop ? json_deep_copy(o->stop) : NULL; /* the turn's own (free_turn) */
    t->o.user = o->user ? nx_strdup(o->user) : NULL;
    t->o.agent_id = t->agent_id;
    t->o.session_key = t->session_key;
    t->o.channel = t->channel;
    t->o.system_extra = t->system_extra;
    t->o.messages = NULL;
    t->next = a->turns;
    if (a->turns)
        a->turns->prev = t;
    a->turns = t;
    a->nturns++;
    a->turns_started++;
    nx_gauge_set(m_inflight, NULL, (double)a->nturns);
    /* on_done never runs inside this call: everything starts on the next loop iteration. */
    t->kick = nx_timer_once(a->deps.loop, 0, kick, t);
    return t;
}

/* Stops a turn for good: its model call and tools are cancelled, and everyone waiting is
 * answered as cancelled. */
static void stop_turn(struct nx_turn *t)
{
    if (t->is_keeping_images && !t->a->is_freeing) { /* a worker holds its input (keep_images): */
        t->is_stop_deferred = true; /* ended when it is back, to be kept, in its place in the lane */
        return;
    }
    t->is_cancelled = true;
    if (t->pending) { /* a model call or history load: detach, so its callback finds no turn */
        t->pending->t = NULL;
        t->pending = NULL;
    }
    if (t->llm) {
        struct nx_llm_call *c = t->llm;
        t->llm = NULL;
        bool was_sent = nx_llm_is_sending(c);
        nx_llm_cancel(c);
        /* A request the provider has (not one waiting out a backoff) is charged by our estimate,
         * with what it streamed: its usage never comes, and hanging up after the first words
         * must not dodge the daily budget. */
        if (was_sent)
            t->usage.input_tokens += turn_count_tokens(t);
        t->usage.output_tokens += (t->call_text_bytes + 3) / 4;
    }
    for (size_t i = 0; i < t->nslots; i++) {
        if (t->slots[i].call) {
            nx_tool_cancel(t->slots[i].call);
            t->slots[i].call = NULL;
        }
    }
    finish(t, NX_ECANCELED);
}

void nx_turn_cancel(struct nx_turn *t)
{
    if (!t || t->is_done || t->is_cancelled)
        return;
    if (t->merged_into) {
        cancel_merged(t);
        return;
    }
    bool is_forced = t->is_interrupted || t->a->is_freeing;
    if (!is_forced && t->is_caller_gone) /* answered already; it runs on for the merged */
        return;
    if (!is_forced && t->nmerged) {
        caller_leaves(t);
        return;
    }
    stop_turn(t);
}

void turn_merge(struct nx_turn *into, struct nx_turn *from)
{
    turn_append_messages(into->input, from->input);
    if (from->late) { /* cancelled turns that were queued behind `from` */
        if (!into->late)
            into->late = json_array();
        turn_append_messages(into->late, from->late);
    }
    into->merged = nx_realloc(into->merged, (into->nmerged + 1) * sizeof *into->merged);
    into->merged[into->nmerged++] = from;
    from->merged_into = into;
    from->lane = NULL; /* its lane's turn is `into` now */
    unlink_turn(from);
}

/* The caller of a turn that others' messages joined (collect) went away: it is answered as
 * cancelled now, and the turn runs on for the merged callers, who would otherwise lose the
 * answer to messages they sent after it. Nothing is streamed from here on (merged callers get
 * the whole answer at the end, as before). */
static void caller_leaves(struct nx_turn *t)
{
    struct nx_turn_result res = {.error_type = "cancelled", .error_message = "the turn was cancelled"};

    answer(t, NX_ECANCELED, &res);
    t->is_caller_gone = true;
    t->o.on_done = NULL;
    t->o.on_text = NULL;
    t->o.on_tool = NULL;
    t->o.udata = NULL;
}

/* A merged turn's caller went away: it leaves `into` (whose answer goes on to the others; its
 * message stays in the conversation) and is answered as cancelled now. */
static void cancel_merged(struct nx_turn *t)
{
    struct nx_turn *into = t->merged_into;
    struct nx_turn_result res = {.error_type = "cancelled", .error_message = "the turn was cancelled"};

    for (size_t i = 0; i < into->nmerged; i++) {
        if (into->merged[i] == t) {
            into->merged[i] = into->merged[--into->nmerged];
            break;
        }
    }
    t->is_done = true;
    answer(t, NX_ECANCELED, &res);
    free_turn(t);
    if (into->is_caller_gone && !into->nmerged) /* nobody is waiting for it any more */
        stop_turn(into);
}
