#include <nats/nats.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bus/internal.h"
#include "core/alloc.h"
#include "core/error.h"

/* The session bucket (JetStream KV, docs/scaling.md): every call runs on the libuv pool and
 * answers on the loop; the bus waits for these jobs before it frees itself (js_ops). */

struct kvjob {
    uv_work_t req;
    struct nx_bus *bus;
    kvStore *kv;
    char *key;
    char *val;
    size_t len;
    uint64_t expect;
    bool is_put;
    int rc;
    uint64_t rev;
    nx_bus_kv_cb cb;
    void *arg;
};

/* KV keys allow [-/_=.a-zA-Z0-9]; '.' separates tokens: keep [A-Za-z0-9_-], others "=XX". */
static char *kv_key(const char *key)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = strlen(key);
    char *out = nx_malloc(n * 3 + 2), *o = out;

    for (const unsigned char *p = (const unsigned char *)key; *p; p++) {
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
            *p == '_' || *p == '-') {
            *o++ = (char)*p;
        } else {
            *o++ = '=';
            *o++ = hex[*p >> 4];
            *o++ = hex[*p & 15];
        }
    }
    if (o == out)
        *o++ = '=';
    *o = '\0';
    return out;
}

static void kv_work(uv_work_t *r)
{
    struct kvjob *k = r->data;
    kvEntry *e = NULL;
    natsStatus st;

    if (!k->kv) {
        k->rc = NX_ENOTSUP;
        return;
    }
    if (k->is_put) {
        if (k->expect)
            st = kvStore_Update(&k->rev, k->kv, k->key, k->val, (int)k->len, k->expect);
        else
            st = kvStore_Put(&k->rev, k->kv, k->key, k->val, (int)k->len);
        free(k->val);
        k->val = NULL;
        k->len = 0;
        k->rc = st == NATS_OK ? 0 : k->expect && st == NATS_ERR ? NX_EAGAIN : NX_EIO;
        return;
    }
    st = kvStore_Get(&e, k->kv, k->key);
    if (st == NATS_NOT_FOUND) {
        k->rc = NX_ENOENT;
    } else if (st != NATS_OK) {
        k->rc = NX_EIO;
    } else {
        k->len = (size_t)kvEntry_ValueLen(e);
        k->val = nx_memdup(kvEntry_Value(e) ? kvEntry_Value(e) : "", k->len);
        k->rev = kvEntry_Revision(e);
        k->rc = 0;
    }
    kvEntry_Destroy(e);
}

static void kv_after(uv_work_t *r, int status)
{
    struct kvjob *k = r->data;
    struct nx_bus *bus = k->bus;

    (void)status;
    bus->js_ops--;
    k->cb(bus, bus->is_closing ? NX_ECLOSED : k->rc, k->val, k->len, k->rev, k->arg);
    free(k->key);
    free(k->val);
    free(k);
    if (bus->is_closing)
        nx_bus_maybe_finish_close(bus);
}

static void kv_queue(struct nx_bus *bus, struct kvjob *k)
{
    k->req.data = k;
    k->bus = bus;
    k->kv = nx_js_kv(bus);
    bus->js_ops++;
    if (uv_queue_work(bus->loop, &k->req, kv_work, kv_after) != 0) {
        k->rc = NX_EIO;
        k->kv = NULL;
        kv_after(&k->req, -1);
    }
}

void nx_bus_kv_get(struct nx_bus *bus, const char *key, nx_bus_kv_cb cb, void *arg)
{
    struct kvjob *k = nx_calloc(1, sizeof *k);

    k->key = kv_key(key);
    k->cb = cb;
    k->arg = arg;
    kv_queue(bus, k);
}

void nx_bus_kv_put(struct nx_bus *bus, const char *key, const char *value, size_t len,
                   uint64_t expect_rev, nx_bus_kv_cb cb, void *arg)
{
    struct kvjob *k = nx_calloc(1, sizeof *k);

    k->key = kv_key(key);
    k->val = nx_memdup(value, len);
    k->len = len;
    k->expect = expect_rev;
    k->is_put = true;
    k->cb = cb;
    k->arg = arg;
    kv_queue(bus, k);
}

