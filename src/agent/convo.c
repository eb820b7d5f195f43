/* A turn's conversation: its answer, tool calls left open, the form the APIs take (roles
 * alternating), the prompt around it (system prompt, tool list, the history's share of the
 * context), and saving it to the session's history. Loop thread. */
#include <stdlib.h>
#include <string.h>

#include "agent/agent_internal.h"
#include "core/alloc.h"
#include "core/buf.h"
#include "core/error.h"
#include "core/log.h"
#include "store/history.h"
#include "tools/tool.h"

void turn_text_of(const json_t *message, struct nx_buf *out)
{
    size_t i;
    json_t *b;
    json_array_foreach(json_object_get(message, "content"), i, b) {
        const char *type = json_string_value(json_object_get(b, "type"));
        const char *text = json_string_value(json_object_get(b, "text"));
        if (type && strcmp(type, "text") == 0 && text)
            nx_buf_puts(out, text);
    }
}

json_t *turn_answer(const struct nx_turn *t)
{
    const json_t *content = json_object_get(t->answer, "content");
    json_t *text, *b;
    size_t i;

    if (!t->answer)
        return NULL;
    json_array_foreach(content, i, b) {
        const char *type = json_string_value(json_object_get(b, "type"));
        if (type && strcmp(type, "tool_use") == 0)
            break;
    }
    if (i == json_array_size(content))
        return json_incref((json_t *)t->answer);
    text = json_array();
    json_array_foreach(content, i, b) {
        const char *type = json_string_value(json_object_get(b, "type"));
        if (type && strcmp(type, "text") == 0)
            json_array_append(text, b);
    }
    if (!json_array_size(text)) {
        json_decref(text);
        return NULL;
    }
    return json_pack("{s:s, s:o}", "role", "assistant", "content", text);
}

/* An assistant message whose tool calls got no results (the iteration limit; an answer cut off
 * at max_tokens in the middle of a call; a turn cancelled while its tools ran) would make every
 * later request of the session invalid (the APIs want each tool_use answered in the next
 * message): each gets the result its tool returned when it finished, else one saying why it has
 * none. */
void turn_close_open_calls(struct nx_turn *t)
{
    size_t n = json_array_size(t->convo), i;
    const json_t *last = n ? json_array_get(t->convo, n - 1) : NULL;
    const char *role = json_string_value(json_object_get(last, "role"));
    const char *why =
        t->is_cancelled ? "cancelled before it finished (the turn was interrupted or its caller left): "
                          "it may have run in part"
        : t->stop == NX_LLM_STOP_TOOL_USE ? "not run: the turn reached its limit of tool iterations"
                                          : "not run: the answer stopped before the call was complete";
    json_t *results = NULL, *b;

    if (!role || strcmp(role, "assistant") != 0)
        return;
    json_array_foreach(json_object_get(last, "content"), i, b) {
        const char *type = json_string_value(json_object_get(b, "type"));
        const char *id = json_string_value(json_object_get(b, "id"));
        json_t *done = NULL;
        if (!type || strcmp(type, "tool_use") != 0)
            continue;
        if (!results)
            results = json_array();
        for (size_t k = 0; id && k < t->nslots && !done; k++) {
            const struct tool_slot *s = &t->slots[k];
            const char *sid = json_string_value(json_object_get(s->result, "tool_use_id"));
            if (s->is_done && sid && strcmp(sid, id) == 0)
                done = s->result;
        }
        if (done)
            json_array_append(results, done);
        else
            json_array_append_new(results, json_pack("{s:s, s:s, s:s, s:b}", "type", "tool_result",
                                                     "tool_use_id", id ? id : "", "content", why,
                                                     "is_error", 1));
    }
    if (results)
        json_array_append_new(t->convo, json_pack("{s:s, s:o}", "role", "user", "content", results));
}

/* The APIs want roles to alternate (Anthropic refuses two user messages in a row): messages of
 * one role in a row (a turn's message after a stored one that got no answer, the results of calls
 * that were not run) go to the model as one. The history keeps them apart. Only pairs from
 * `from` on are looked for: the messages before it already alternate (the history cache keeps
 * this form), and looking at every message of a long history each call cost a fifth of the
 * loop's time. */
json_t *turn_alternating(json_t *convo, size_t from)
{
    size_t n = json_array_size(convo), i;
    const char *prev = NULL;
    json_t *out, *m, *cur = NULL;
    bool is_copy = false;

    for (i = from; i < n; i++) {
        const char *role = json_string_value(json_object_get(json_array_get(convo, i), "role"));
        if (prev && role && strcmp(prev, role) == 0)
            break;
        prev = role;
    }
    if (i == n)
        return json_incref(convo);
    out = json_array();
    for (i = 0; i < from; i++)
        json_array_append(out, json_array_get(convo, i));
    prev = NULL;
    for (i = from; i < n; i++) {
        m = json_array_get(convo, i);
        const char *role = json_string_value(json_object_get(m, "role"));
        const json_t *content = json_object_get(m, "content");
        if (!cur || !prev || !role || strcmp(prev, role) != 0) {
            json_array_append(out, m);
            cur = m;
            is_copy = false;
            prev = role;
            continue;
        }
        if (!is_copy) { /* a new message: the stored ones are shared and never edited */
            const json_t *c0 = json_object_get(cur, "content");
            json_t *blocks = json_is_string(c0) ? json_pack("[{s:s, s:s}]", "type", "text", "text",
                                                            json_string_value(c0))
                                                : json_copy((json_t *)c0);
            cur = json_pack("{s:s, s:o}", "role", role, "content", blocks ? blocks : json_array());
            json_array_set_new(out, json_array_size(out) - 1, cur);
            is_copy = true;
        }
        if (json_is_string(content))
            json_array_append_new(json_object_get(cur, "content"),
                                  json_pack("{s:s, s:s}", "type", "text", "text",
                                            json_string_value(content)));
        else
            json_array_extend(json_object_get(cur, "content"), (json_t *)content);
    }
    return out;
}

void turn_system_prompt(const struct nx_turn *t, struct nx_buf *out)
{
    agent_system_prompt(t->agent, t->system_extra, out);
}

void agent_system_prompt(const struct agent_rt *ag, const char *extra, struct nx_buf *out)
{
    const char *parts[] = {ag->system_prompt, ag->ws ? ws_cache_text(ag->ws) : "", extra};
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        if (!parts[i] || !*parts[i])
            continue;
        if (out->len)
            nx_buf_puts(out, "\n\n");
        nx_buf_puts(out, parts[i]);
    }
}

json_t *turn_tools(const struct nx_turn *t, uint64_t *tokens)
{
    *tokens = 0;
    return t->o.no_tools ? json_array() : agent_tools(t->agent, tokens);
}

json_t *agent_tools(const struct agent_rt *ag, uint64_t *tokens)
{
    /* The same manifest object turn after turn, so its wire form is encoded once
     * (llm/frag_cache.c); rebuilt when a tool comes or goes. */
    struct tools_memo *tm = ag->tools_memo;
    if (!tm->tools || tm->changes != nx_tool_registry_changes()) {
        json_decref(tm->tools);
        tm->tools = nx_tool_manifest(ag->allowed_tools);
        tm->changes = nx_tool_registry_changes();
        char *text = json_dumps(tm->tools, JSON_COMPACT);
        tm->tokens = text ? nx_history_text_tokens(text, strlen(text)) : 0;
        free(text);
    }
    *tokens = tm->tokens;
    return json_incref(tm->tools);
}

uint64_t turn_history_budget(const struct nx_turn *t, uint32_t max_tokens, uint64_t fixed_tokens)
{
    uint64_t window = t->agent->context_window;
    uint64_t taken = (uint64_t)max_tokens + fixed_tokens + window / 10;
    return window > taken ? window - taken : 0;
}

json_t *turn_fit_context(struct nx_turn *t, uint32_t max_tokens)
{
    /* Keep the prompt inside the context: oldest history goes first, never a call without its
     * result (store/history.h). A session is cut for the room of the agent's limits.max_tokens;
     * a request that asks for more room is cut further in a copy, for its call only: one such
     * request leaves the session's history as it was for the turns after it. */
    uint32_t agent_max = t->agent->conf->limits.max_tokens;
    uint64_t budget = turn_history_budget(t, max_tokens, t->call_fixed_tokens);
    uint64_t keep = t->session_key && agent_max && max_tokens > agent_max
                        ? turn_history_budget(t, agent_max, t->call_fixed_tokens)
                        : budget;
    size_t dropped = 0;
    uint64_t tokens = 0;
    if (t->session_key) /* the history's sum comes with it; only new messages are estimated */
        tokens = turn_count_tokens(t);
    if (!t->session_key || tokens > keep) {
        /* a session is cut to three quarters, so that its next turns find the same start (and
         * the provider's prompt cache) until it is full again, not one message later each */
        dropped = nx_history_trim(t->convo, t->session_key ? keep - keep / 4 : keep);
        t->tokens = 0; /* counted again from the start when needed */
        t->tokens_upto = 0;
        t->is_history_cut |= dropped > 0 && t->is_from_cache;
        if (dropped)
            nx_debug("agent", "agent %s: %zu oldest messages left out to fit a context of %u tokens",
                     t->agent_id, dropped, (unsigned)t->agent->context_window);
    }
    t->new_from = dropped > t->new_from ? 0 : t->new_from - dropped;
    if (keep <= budget)
        return turn_alternating(t->convo, t->new_from ? t->new_from - 1 : 0);
    json_t *copy = json_array(), *messages;
    json_array_extend(copy, t->convo);
    size_t more = nx_history_trim(copy, budget);
    size_t from = more > t->new_from ? 0 : t->new_from - more;
    messages = turn_alternating(copy, from ? from - 1 : 0);
    json_decref(copy);
    return messages;
}

void turn_append_messages(json_t *to, const json_t *from)
{
    size_t i;
    json_t *m;
    json_array_foreach(from, i, m) {
        size_t n = json_array_size(to);
        json_t *last = n ? json_array_get(to, n - 1) : NULL;
        const char *lrole = json_string_value(json_object_get(last, "role"));
        const char *role = json_string_value(json_object_get(m, "role"));
        if (lrole && role && strcmp(lrole, role) == 0)
            json_array_extend(json_object_get(last, "content"), json_object_get(m, "content"));
        else
            json_array_append(to, m);
    }
}

/* --- saving --- */

size_t turn_history_keep(const struct nx_turn *t)
{
    const struct nx_memory_conf *mem = nx_config_memory(t->gen->cfg);
    return mem ? (size_t)mem->short_term.max_history_turns * 2 : 100;
}

struct saving {
    struct hcache *cache; /* held until the save is done */
    char key[];
};

/* A turn the store could not keep must not stay in the cache: the next turn would see messages
 * that are not stored, and after a restart the history would have a gap the model never saw.
 * The next turn reads the session from the store instead. */
static void on_saved(int rc, void *arg)
{
    struct saving *sv = arg;
    if (rc < 0) {
        nx_error("agent", "session %s: history not saved: %s", sv->key, nx_strerror(rc));
        hcache_forget_unsaved(sv->cache, sv->key);
    }
    hcache_release(sv->cache);
    free(sv);
}

void turn_add_usage(struct nx_turn *t, int rc, const struct nx_llm_result *res)
{
    if (!res)
        return;
    if (rc == 0 && !res->usage.input_tokens && !res->usage.output_tokens) {
        /* a server that reports no usage in streams (older Ollama, some proxies): estimated,
         * so that the caller's usage, the metrics and the daily budget are not zero */
        t->usage.input_tokens += t->call_fixed_tokens + turn_count_tokens(t);
        t->usage.output_tokens += nx_history_estimate_tokens(res->message);
        return;
    }
    t->usage.input_tokens += res->usage.input_tokens;
    t->usage.output_tokens += res->usage.output_tokens;
    t->usage.cache_read_tokens += res->usage.cache_read_tokens;
    t->usage.cache_write_tokens += res->usage.cache_write_tokens;
}

uint64_t turn_count_tokens(struct nx_turn *t)
{
    size_t n = json_array_size(t->convo);
    for (; t->tokens_upto < n; t->tokens_upto++)
        t->tokens += nx_llm_message_tokens(json_array_get(t->convo, t->tokens_upto));
    return t->tokens;
}

bool turn_says_nothing(const json_t *content)
{
    size_t i;
    const json_t *b;

    if (!json_is_array(content))
        return false;
    json_array_foreach(content, i, b) {
        const char *type = json_string_value(json_object_get(b, "type"));
        const char *text = json_string_value(json_object_get(b, "text"));
        if (type && strcmp(type, "reasoning") == 0) /* (the model's thoughts, not said) */
            continue;
        if (!type || strcmp(type, "text") != 0 || !text || !nx_str_is_blank(text))
            return false;
    }
    return true;
}

bool turn_convo_from_cache(struct nx_turn *t)
{
    uint64_t tokens;

    t->hcache_epoch = hcache_epoch(t->a->history);
    json_t *cached = hcache_take_tokens(t->a->history, t->session_key, &tokens);
    if (!cached)
        return false;
    if (tokens != HCACHE_NO_TOKENS) {
        t->tokens = tokens;
        t->tokens_upto = json_array_size(cached);
    }
    t->convo = cached;
    t->is_from_cache = true;
    t->new_from = json_array_size(cached);
    return true;
}

void turn_convo_of_unstarted(struct nx_turn *t, json_t *msgs)
{
    if (!t->session_key || !t->a->deps.store || t->convo)
        return;
    if (!turn_convo_from_cache(t)) { /* not known here: the cache is left to the next turn's load */
        t->convo = json_array();
        t->is_history_missing = true;
        t->new_from = 0;
    }
    if (msgs)
        json_array_extend(t->convo, msgs);
}

void turn_put_back(struct nx_turn *t)
{
    uint64_t tokens = t->put_tokens;
    json_t *back;

    if (!t->is_put_pending && (!t->is_from_cache || t->is_saved || !t->convo))
        return;
    if (t->is_put_pending) { /* shared with the turn until it is freed: cut to the window in place */
        back = json_incref(t->convo);
    } else if (t->is_history_cut) { /* not saved, and the history it took is cut: the store has it */
        t->is_from_cache = false;
        hcache_forget(t->a->history, t->session_key);
        return;
    } else { /* not saved: what it added is not stored, and stays out (the caller still sees it) */
        tokens = t->tokens_upto >= t->new_from ? t->tokens : HCACHE_NO_TOKENS;
        for (size_t i = t->new_from; i < t->tokens_upto && tokens != HCACHE_NO_TOKENS; i++) {
            uint64_t added = nx_llm_message_tokens(json_array_get(t->convo, i));
            tokens = added <= tokens ? tokens - added : HCACHE_NO_TOKENS;
        }
        back = json_array();
        for (size_t i = 0; i < t->new_from && i < json_array_size(t->convo); i++)
            json_array_append(back, json_array_get(t->convo, i));
    }
    bool is_saved = t->is_put_pending;
    t->is_put_pending = t->is_from_cache = false;
    if (hcache_epoch(t->a->history) != t->hcache_epoch) { /* as turn_save would have */
        json_decref(back);
        hcache_forget(t->a->history, t->session_key);
        return;
    }
    hcache_put_owned(t->a->history, t->session_key, back, is_saved ? t->put_keep : 0, tokens);
}

void turn_save(struct nx_turn *t)
{
    if (!t->session_key || !t->a->deps.store)
        return;
    t->is_saved = true;
    turn_close_open_calls(t);
    if (t->late) { /* queued messages whose callers left: after this turn's, as they came */
        json_array_extend(t->convo, t->late);
        json_decref(t->late);
        t->late = NULL;
    }
    if (hcache_epoch(t->a->history) != t->hcache_epoch) { /* a save failed since it read: */
        hcache_forget(t->a->history, t->session_key); /* its copy may hold what was not kept */
    } else if (!t->is_history_missing) { /* kept as sent: what the next turn starts from alternates */
        json_t *alt = turn_alternating(t->convo, t->new_from ? t->new_from - 1 : 0);
        if (alt == t->convo) { /* the common case: the array itself, when the turn ends */
            t->is_put_pending = true;
            t->put_keep = turn_history_keep(t);
            t->put_tokens = turn_count_tokens(t);
            json_decref(alt);
        } else { /* merged messages are estimated apart from their parts: counted when needed */
            hcache_put_owned(t->a->history, t->session_key, alt, turn_history_keep(t), HCACHE_NO_TOKENS);
        }
    }
    json_t *added = json_array();
    for (size_t i = t->new_from; i < json_array_size(t->convo); i++)
        json_array_append(added, json_array_get(t->convo, i));
    struct nx_history_append ap = {
        .session_key = t->session_key,
        .agent_id = t->agent_id,
        .source = t->channel,
        .messages = added,
        .input_tokens = t->usage.input_tokens,
        .output_tokens = t->usage.output_tokens,
        .is_immutable = true, /* `added` is ours; its messages are never edited (frag_cache.c) */
    };
    /* Queued before the lane's next turn loads history, so that load sees it. */
    size_t klen = strlen(t->session_key) + 1;
    struct saving *sv = nx_malloc(sizeof *sv + klen);
    sv->cache = t->a->history;
    memcpy(sv->key, t->session_key, klen);
    hcache_hold(sv->cache);
    nx_history_append(t->a->deps.store, t->a->deps.data_dir, &ap, on_saved, sv);
    json_decref(added);
}
