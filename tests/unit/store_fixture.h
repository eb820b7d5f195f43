/* What the store's unit tests stand on (included by tests/unit/test_store*.c, test_history.c
 * and test_ledger.c, after <cmocka.h>): run the loop until the store's completions arrive, open
 * a store and wait for it to be ready, close it and let the loop release it, and at the end
 * check the loop is empty and remove the temp directory. Built on test_support.h (ts_mkdtemp
 * makes the directory). */
#ifndef NX_TEST_STORE_FIXTURE_H
#define NX_TEST_STORE_FIXTURE_H

#include <pthread.h>
#include <stdbool.h>
#include <uv.h>

#include "store/store.h"
#include "test_support.h"

/* Generous: the threaded tests run under ASan/TSan on a loaded machine too. */
#define SFX_WAIT_MS 20000

/* Runs loop until *count >= target; fails the test after SFX_WAIT_MS. */
static inline void sfx_run_until(uv_loop_t *loop, const int *count, int target)
{
    assert_true(ts_run_until_count(loop, count, target, SFX_WAIT_MS));
}

struct sfx_ready {
    int calls;
    int rc;
    pthread_t loop_thread;
    bool is_wrong_thread;
};

static inline void sfx_on_ready(int rc, void *arg)
{
    struct sfx_ready *r = arg;

    if (!pthread_equal(pthread_self(), r->loop_thread))
        r->is_wrong_thread = true;
    r->rc = rc;
    r->calls++;
}

/* Opens a store on dir and waits until it is ready (its callback on this, the loop's, thread);
 * returns the rc the store was ready with. */
static inline int sfx_open(uv_loop_t *loop, const char *dir, const struct nx_store_opts *opts,
                           struct nx_store **out)
{
    struct sfx_ready r = {.loop_thread = pthread_self()};

    assert_int_equal(nx_store_open(loop, dir, opts, sfx_on_ready, &r, out), 0);
    sfx_run_until(loop, &r.calls, 1);
    assert_int_equal(r.calls, 1);
    assert_false(r.is_wrong_thread);
    return r.rc;
}

/* Closes *s and runs the loop until the store's handle is released: nothing of it stays on the
 * loop. */
static inline void sfx_close(uv_loop_t *loop, struct nx_store **s)
{
    nx_store_close(*s);
    *s = NULL;
    for (int i = 0; i < 10 && uv_loop_alive(loop); i++)
        uv_run(loop, UV_RUN_NOWAIT);
    assert_false(uv_loop_alive(loop));
}

/* The end of a test: the loop closes (no handle left open) and the temp directory goes. */
static inline void sfx_finish(uv_loop_t *loop, const char *tmp)
{
    assert_int_equal(uv_loop_close(loop), 0);
    assert_int_equal(ts_rm_tree(tmp), 0);
}

#endif
