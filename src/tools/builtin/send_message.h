#ifndef NX_TOOLS_SEND_MESSAGE_H
#define NX_TOOLS_SEND_MESSAGE_H

#include <jansson.h>
#include <stddef.h>

/* The send_message tool: an agent writes to someone on a channel on its own initiative
 * ({channel, instance?, to, text, buttons?, template?, media?}). The tools layer sits below the
 * channels, so the work is done by a handler registered from above (the daemon); while none is
 * registered the tool does not exist. See docs/tools.md. */

struct nx_send_message_req {
    const char *agent_id;
    const char *session_key; /* the calling turn's session, or NULL */
    const char *channel;     /* channel type: "telegram" */
    const char *instance;    /* or NULL */
    const char *to;
    const char *text;
    const json_t *args;      /* every argument (buttons, template, media pass through) */
    const char *event_id;    /* the inbound event the calling turn answers (idempotency), or NULL */
};

/* Returns 0 when the message was queued for sending, else a negative NX_E* code with a sentence
 * for the model in err. Loop thread. */
typedef int (*nx_send_message_fn)(const struct nx_send_message_req *rq, char *err, size_t errlen,
                                  void *arg);

/* Registers the tool with fn as its handler; fn NULL unregisters it. */
void nx_send_message_set_handler(nx_send_message_fn fn, void *arg);

#endif
