#ifndef NX_RUNTIME_MAILBOX_H
#define NX_RUNTIME_MAILBOX_H

#include <pthread.h>
#include <stdbool.h>
#include <uv.h>

/* A multi-producer, single-consumer queue into the loop thread. Any thread may post; the
 * function then runs on the loop thread, in the order posted (per poster). This is the only way
 * other threads (store, libnats callbacks) touch loop state. */
typedef void (*nx_mail_fn)(void *arg);

struct nx_mail;

struct nx_mailbox {
    uv_async_t async;
    pthread_mutex_t lock;
    struct nx_mail *head;
    struct nx_mail *tail;
    bool is_closed;
    void (*on_closed)(struct nx_mailbox *mb);
};

/* On the loop thread. */
int nx_mailbox_init(struct nx_mailbox *mb, uv_loop_t *loop);
/* Any thread. After close, posted functions still run if the loop is still running the
 * close; later posts are dropped with their arg handed to nothing (callers stop posting
 * before closing). */
void nx_mailbox_post(struct nx_mailbox *mb, nx_mail_fn fn, void *arg);
/* On the loop thread: runs what is queued, then closes the async handle. `done` (may be NULL)
 * runs once the handle is closed. */
void nx_mailbox_close(struct nx_mailbox *mb, void (*done)(struct nx_mailbox *mb));

#endif
