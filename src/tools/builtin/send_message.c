#include <stdio.h>
#include <string.h>

#include "core/error.h"
#include "core/log.h"
#include "tools/builtin/send_message.h"
#include "tools/tool.h"

/* send_message: validated arguments go to the handler registered from above, which knows the
 * channels and the agent's outbound_allowlist. */

static const char schema[] =
    "{\"type\":\"object\",\"properties\":{"
    "\"channel\":{\"type\":\"string\",\"minLength\":1,\"maxLength\":64,"
    "\"description\":\"Channel type, e.g. telegram or whatsapp.\"},"
    "\"instance\":{\"type\":\"string\",\"minLength\":1,\"maxLength\":128,"
    "\"description\":\"Channel instance name, when the channel has several.\"},"
    "\"to\":{\"type\":\"string\",\"minLength\":1,\"maxLength\":256,"
    "\"description\":\"Recipient: chat id or phone number.\"},"
    "\"text\":{\"type\":\"string\",\"minLength\":1,\"maxLength\":65536},"
    "\"buttons\":{\"type\":\"array\",\"maxItems\":20,\"items\":{\"type\":\"array\",\"maxItems\":8,"
    "\"items\":{\"type\":\"object\",\"properties\":{\"text\":{\"type\":\"string\",\"minLength\":1,"
    "\"maxLength\":256},\"data\":{\"type\":\"string\",\"maxLength\":256}},"
    "\"required\":[\"text\"]}},"
    "\"description\":\"Rows of buttons [[{text, data}]]; a press comes back as a message.\"},"
    "\"template\":{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\",\"minLength\":1},"
    "\"language\":{\"type\":\"string\"},\"components\":{\"type\":\"array\"}},\"required\":[\"name\"],"
    "\"description\":\"WhatsApp template {name, language, components}.\"},"
    "\"media\":{\"type\":\"object\",\"description\":\"Media to attach (adapter-specific).\"}},"
    "\"required\":[\"channel\",\"to\",\"text\"],\"additionalProperties\":false}";

static nx_send_message_fn handler;
static void *handler_arg;

static struct nx_tool_call *run(const struct nx_tool_ctx *ctx, const json_t *args, nx_tool_done_fn done,
                                void *udata)
{
    char err[512] = "";
    char out[640];
    struct nx_send_message_req rq = {
        .agent_id = ctx->agent_id,
        .session_key = ctx->session_key,
        .channel = json_string_value(json_object_get(args, "channel")),
        .instance = json_string_value(json_object_get(args, "instance")),
        .to = json_string_value(json_object_get(args, "to")),
        .text = json_string_value(json_object_get(args, "text")),
        .args = args,
        .event_id = ctx->event_id,
    };
    if (!handler) {
        snprintf(out, sizeof out, "send_message failed: no channel is running in this process");
        done(out, strlen(out), true, udata);
        return NULL;
    }
    int rc = handler(&rq, err, sizeof err, handler_arg);
    if (rc < 0) {
        snprintf(out, sizeof out, "send_message refused: %s", err[0] ? err : nx_strerror(rc));
        done(out, strlen(out), true, udata);
        return NULL;
    }
    snprintf(out, sizeof out, "queued for sending to %s on %s%s%s", rq.to, rq.channel,
             rq.instance ? "." : "", rq.instance ? rq.instance : "");
    done(out, strlen(out), false, udata);
    return NULL;
}

static const struct nx_tool tool = {
    .name = "send_message",
    .description = "Send a message to someone on a messaging channel (Telegram, WhatsApp...). Only "
                   "recipients in this agent's outbound_allowlist for that channel may be written to "
                   "(when it has one). Optional buttons (rows of {text, data}), a WhatsApp template or "
                   "media are passed to the channel.",
    .input_schema = schema,
    .run = run,
};

void nx_send_message_set_handler(nx_send_message_fn fn, void *arg)
{
    bool had = handler != NULL;
    handler = fn;
    handler_arg = arg;
    if (fn && !had) {
        int rc = nx_tool_register(&tool);
        if (rc < 0 && rc != NX_EEXIST)
            nx_warn("tools", "send_message not registered: %s", nx_strerror(rc));
    } else if (!fn && had) {
        nx_tool_unregister(tool.name);
    }
}
