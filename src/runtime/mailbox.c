#include <stdlib.h>

#include "core/alloc.h"
#include "runtime/mailbox.h"

struct nx_mail {
    struct nx_mail *next;
    nx_mail_fn fn;
    void *arg;
};

/* Takes the whole queue under the lock, then runs it without the lock, so posters never wait
 * on a running function. */
static void drain(struct nx_mailbox *mb)
{
    for (;;) {
        pthread_mutex_lock(&mb->lock);
        struct nx_mail *m = mb->head;
        mb->head = mb->tail = NULL;
        pthread_mutex_unlock(&mb->lock);
        if (!m)
            return;
        while (m) {
            struct nx_mail *next = m->next;
            m->fn(m->arg);
            free(m);
            m = next;
        }
    }
}

static void on_async(uv_async_t *h)
{
    drain(nx_container_of(h, struct nx_mailbox, async));
}

int nx_mailbox_init(struct nx_mailbox *mb, uv_loop_t *loop)
{
    mb->head = mb->tail = NULL;
    mb->is_closed = false;
    mb->on_closed = NULL;
    pthread_mutex_init(&mb->lock, NULL);
    return uv_async_init(loop, &mb->async, on_async);
}

void nx_mailbox_post(struct nx_mailbox *mb, nx_mail_fn fn, void *arg)
{
    struct nx_mail *m = nx_malloc(sizeof *m);
    m->next = NULL;
    m->fn = fn;
    m->arg = arg;

    pthread_mutex_lock(&mb->lock);
    if (mb->is_closed) {
        pthread_mutex_unlock(&mb->lock);
        free(m);
        return;
    }
    if (mb->tail)
        mb->tail->next = m;
    else
        mb->head = m;
    mb->tail = m;
    pthread_mutex_unlock(&mb->lock);
    uv_async_send(&mb->async);
}

static void on_closed(uv_handle_t *h)
{
    struct nx_mailbox *mb = nx_container_of((uv_async_t *)h, struct nx_mailbox, async);
    drain(mb);
    pthread_mutex_destroy(&mb->lock);
    if (mb->on_closed)
        mb->on_closed(mb);
}

void nx_mailbox_close(struct nx_mailbox *mb, void (*done)(struct nx_mailbox *mb))
{
    drain(mb);
    pthread_mutex_lock(&mb->lock);
    mb->is_closed = true;
    pthread_mutex_unlock(&mb->lock);
    mb->on_closed = done;
    uv_close((uv_handle_t *)&mb->async, on_closed);
}
