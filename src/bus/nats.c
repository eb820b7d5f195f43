#include <nats/nats.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "bus/internal.h"
#include "core/alloc.h"
#include "core/error.h"
#include "core/log.h"

/* The NATS backend (libnats 3.4). libnats runs its own threads: message and connection
 * callbacks copy what they got and post it to the bus's mailbox, so the bus itself is touched
 * on the loop thread only. Those callbacks can outlive the bus (the closed callback, a message
 * callback finishing as a subscription closes), so they reach the mailbox through a `link`: a
 * small counted object whose `alive` flag the bus clears, under its lock, before it goes away.
 * Flushes (the server's acknowledgement, PING/PONG) block, so they run on the libuv pool. */

struct link {
    pthread_mutex_t lock;
    bool is_alive;
    atomic_int refs;
    struct nx_mailbox *mb;
    struct nx_bus *bus;
};

struct nsub {
    atomic_int refs; /* the bus subscription's, libnats's (until on_complete), each mail's */
    struct link *link;
    natsSubscription *ns;
    struct nx_bus_sub *sub; /* loop thread only; NULL once unsubscribed */
};

struct nx_nats {
    natsConnection *nc;
    natsOptions *opts;
    struct link *link;
    bool is_closed;
};

static void link_unref(struct link *l)
{
    if (atomic_fetch_sub(&l->refs, 1) == 1) {
        pthread_mutex_destroy(&l->lock);
        free(l);
    }
}

/* Any thread. False (and nothing posted) once the bus is gone. */
static bool link_post(struct link *l, nx_mail_fn fn, void *arg)
{
    bool is_posted = false;

    pthread_mutex_lock(&l->lock);
    if (l->is_alive) {
        nx_mailbox_post(l->mb, fn, arg);
        is_posted = true;
    }
    pthread_mutex_unlock(&l->lock);
    return is_posted;
}

static void nsub_unref(struct nsub *s)
{
    if (atomic_fetch_sub(&s->refs, 1) == 1) {
        link_unref(s->link);
        free(s);
    }
}

static int map_status(natsStatus st)
{
    switch (st) {
    case NATS_OK:
        return 0;
    case NATS_TIMEOUT:
        return NX_ETIMEDOUT;
    case NATS_CONNECTION_CLOSED:
        return NX_ECLOSED;
    case NATS_MAX_PAYLOAD:
        return NX_ETOOBIG;
    case NATS_INSUFFICIENT_BUFFER:
        return NX_EAGAIN;
    default:
        return NX_EIO;
    }
}

/* ---- connection events ---- */

struct conn_mail {
    struct nx_bus *bus;
    bool is_connected;
    int64_t max_payload; /* the server's, when connected */
};

static void on_conn_mail(void *arg)
{
    struct conn_mail *m = arg;

    if (m->is_connected && m->max_payload > 0)
        m->bus->server_max_payload = (size_t)m->max_payload;
    nx_bus_on_connection(m->bus, m->is_connected);
    free(m);
}

static void post_conn(struct link *l, natsConnection *nc, bool is_connected)
{
    struct conn_mail *m = nx_calloc(1, sizeof *m);

    m->bus = l->bus;
    m->is_connected = is_connected;
    m->max_payload = is_connected && nc ? natsConnection_GetMaxPayload(nc) : 0;
    if (!link_post(l, on_conn_mail, m))
        free(m);
}

static void on_connected(natsConnection *nc, void *closure)
{
    post_conn(closure, nc, true);
}

static void on_disconnected(natsConnection *nc, void *closure)
{
    post_conn(closure, nc, false);
}

static void on_closed(natsConnection *nc, void *closure)
{
    post_conn(closure, nc, false);
    link_unref(closure); /* the connection's reference: nothing more comes from it */
}

static void on_async_error(natsConnection *nc, natsSubscription *sub, natsStatus err, void *closure)
{
    (void)nc;
    (void)sub;
    (void)closure;
    nx_warn("bus", "NATS: %s", natsStatus_GetText(err));
}

static int64_t reconnect_delay(natsConnection *nc, int attempts, void *closure)
{
    const struct nx_broker_conf *c = closure;
    uint64_t ms = c->reconnect.initial_backoff_ms ? c->reconnect.initial_backoff_ms : 250;
    uint64_t cap = c->reconnect.max_backoff_ms ? c->reconnect.max_backoff_ms : 10000;
    uint32_t r = 0;

    (void)nc;
    for (int i = 1; i < attempts && ms < cap; i++)
        ms *= 2;
    if (ms > cap)
        ms = cap;
    if (getrandom(&r, sizeof r, GRND_NONBLOCK) != sizeof r)
        r = (uint32_t)attempts * 2654435761u;
    /* full jitter on the upper half: ms/2 .. ms */
    return (int64_t)(ms / 2 + (ms / 2 ? r % (ms / 2 + 1) : 0));
}

/* ---- messages ---- */

struct msg_mail {
    struct nsub *ns;
    char *subject;
    char *reply;
    char *data;
    size_t len;
    char *origin;
    char *local;
};

static void msg_mail_free(struct msg_mail *m)
{
    nsub_unref(m->ns);
    free(m->subject);
    free(m->reply);
    free(m->data);
    free(m->origin);
    free(m->local);
    free(m);
}

static void on_msg_mail(void *arg)
{
    struct msg_mail *m = arg;
    struct nx_bus_sub *sub = m->ns->sub;
    struct nx_envelope *env = NULL;
    struct nx_bus *bus;
    char err[256];
    int rc;

    if (!sub || sub->bus->is_closing)
        goto out;
    bus = sub->bus;
    rc = nx_envelope_parse(m->data, m->len, bus->conf.limits.max_payload, &env, err, sizeof err);
    if (rc < 0) {
        nx_warn("bus", "dropped a message on %s from NATS: %s", m->subject, err);
        goto out;
    }
    nx_bus_on_remote(bus, sub, nx_bus_item_new(m->subject, m->reply, m->data, m->len, env),
                     m->origin, m->local);
out:
    msg_mail_free(m);
}

static char *hdr_dup(natsMsg *msg, const char *key)
{
    const char *v = NULL;

    if (natsMsgHeader_Get(msg, key, &v) != NATS_OK || !v)
        return NULL;
    return nx_strdup(v);
}

/* libnats thread */
static void on_msg(natsConnection *nc, natsSubscription *s, natsMsg *msg, void *closure)
{
    struct nsub *ns = closure;
    struct msg_mail *m = nx_calloc(1, sizeof *m);
    const char *reply = natsMsg_GetReply(msg);

    (void)nc;
    (void)s;
    atomic_fetch_add(&ns->refs, 1);
    m->ns = ns;
    m->subject = nx_strdup(natsMsg_GetSubject(msg));
    m->reply = reply && *reply ? nx_strdup(reply) : NULL;
    m->len = (size_t)natsMsg_GetDataLength(msg);
    m->data = nx_memdup(natsMsg_GetData(msg) ? natsMsg_GetData(msg) : "", m->len);
    m->origin = hdr_dup(msg, "Nx-Origin");
    m->local = hdr_dup(msg, "Nx-Local");
    natsMsg_Destroy(msg);
    if (!link_post(ns->link, on_msg_mail, m))
        msg_mail_free(m);
}

static void on_sub_complete(void *closure)
{
    nsub_unref(closure);
}

/* ---- nkey seed files: libnats wants the public key beside the seed ---- */

static const char b32[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

static uint16_t crc16(const unsigned char *p, size_t n)
{
    uint16_t crc = 0;

    for (size_t i = 0; i < n; i++) {
        crc ^= (uint16_t)(p[i] << 8);
        for (int b = 0; b < 8; b++)
            crc = (uint16_t)(crc & 0x8000 ? (crc << 1) ^ 0x1021 : crc << 1);
    }
    return crc;
}

/* The public nkey ("U...") for the seed ("SU...") in `path`, into pub (>= 64 bytes). */
static int nkey_public(const char *path, char *pub, size_t publen)
{
    unsigned char raw[64], key[35], pk[32];
    char seed[128] = "";
    size_t n = 0, bits = 0, pklen = sizeof pk, o = 0;
    unsigned int acc = 0;
    EVP_PKEY *k = NULL;
    FILE *f = fopen(path, "r");
    int rc = NX_ECONFIG;

    if (!f)
        return NX_EIO;
    while (fscanf(f, "%127s", seed) == 1 && !(seed[0] == 'S' && strlen(seed) > 50))
        ;
    fclose(f);
    for (const char *p = seed; *p && n < sizeof raw; p++) {
        const char *c = strchr(b32, *p);

        if (!c)
            goto out;
        acc = (acc << 5) | (unsigned int)(c - b32);
        bits += 5;
        if (bits >= 8) {
            raw[n++] = (unsigned char)(acc >> (bits - 8));
            bits -= 8;
        }
    }
    if (n < 36 || (raw[0] & 0xf8) != (18 << 3) ||
        crc16(raw, 34) != (uint16_t)(raw[34] | raw[35] << 8))
        goto out;
    if (!(k = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, raw + 2, 32)) ||
        EVP_PKEY_get_raw_public_key(k, pk, &pklen) != 1)
        goto out;
    key[0] = (unsigned char)(((raw[0] & 7) << 5) | ((raw[1] & 0xf8) >> 3));
    memcpy(key + 1, pk, 32);
    key[33] = (unsigned char)(crc16(key, 33) & 0xff);
    key[34] = (unsigned char)(crc16(key, 33) >> 8);
    acc = 0;
    bits = 0;
    for (size_t i = 0; i < sizeof key && o + 1 < publen; i++) {
        acc = (acc << 8) | key[i];
        bits += 8;
        while (bits >= 5 && o + 1 < publen) {
            pub[o++] = b32[(acc >> (bits - 5)) & 31];
            bits -= 5;
        }
    }
    if (bits && o + 1 < publen)
        pub[o++] = b32[(acc << (5 - bits)) & 31];
    pub[o] = '\0';
    rc = 0;
out:
    EVP_PKEY_free(k);
    memset(raw, 0, sizeof raw);
    memset(seed, 0, sizeof seed);
    return rc;
}

/* ---- the backend table ---- */

static int set_options(struct nx_bus *bus, natsOptions *o, struct link *l)
{
    const struct nx_broker_conf *c = &bus->conf;
    const char *servers[64];
    int n = 0;
    bool is_tls = false;
    natsStatus st = NATS_OK;
    char pub[64];

    servers[n++] = c->url ? c->url : "nats://127.0.0.1:4222";
    for (size_t i = 0; c->urls && c->urls[i] && n < 64; i++)
        servers[n++] = c->urls[i];
    for (int i = 0; i < n; i++)
        is_tls |= !strncmp(servers[i], "tls://", 6);
    st = natsOptions_SetServers(o, servers, n);
    if (st == NATS_OK) st = natsOptions_SetName(o, bus->name);
    if (st == NATS_OK) st = natsOptions_SetAllowReconnect(o, true);
    if (st == NATS_OK)
        st = natsOptions_SetMaxReconnect(o, c->reconnect.max_attempts ? (int)c->reconnect.max_attempts
                                                                      : -1);
    if (st == NATS_OK)
        st = natsOptions_SetReconnectWait(o, c->reconnect.initial_backoff_ms ?
                                                 c->reconnect.initial_backoff_ms : 250);
    if (st == NATS_OK) st = natsOptions_SetReconnectJitter(o, 100, 1000);
    if (st == NATS_OK) st = natsOptions_SetCustomReconnectDelay(o, reconnect_delay, &bus->conf);
    if (st == NATS_OK) st = natsOptions_SetRetryOnFailedConnect(o, true, on_connected, l);
    if (st == NATS_OK) st = natsOptions_SetDisconnectedCB(o, on_disconnected, l);
    if (st == NATS_OK) st = natsOptions_SetReconnectedCB(o, on_connected, l);
    if (st == NATS_OK) st = natsOptions_SetClosedCB(o, on_closed, l);
    if (st == NATS_OK) st = natsOptions_SetErrorHandler(o, on_async_error, NULL);
    if (st == NATS_OK) st = natsOptions_SetPingInterval(o, 5000);
    if (st == NATS_OK) st = natsOptions_SetMaxPingsOut(o, 2);
    if (st == NATS_OK) st = natsOptions_SetTimeout(o, 2000);
    /* No publishing into libnats's reconnect buffer: it would be sent on reconnect ahead of our
     * replay (out of order). A publish while libnats reconnects fails and goes to our queue. */
    if (st == NATS_OK) st = natsOptions_SetReconnectBufSize(o, 1);
    /* Write each publish at once instead of from libnats's flusher thread: bytes left in its
     * write buffer when the server dies are sent again on reconnect, ahead of our replay. */
    if (st == NATS_OK) st = natsOptions_SetSendAsap(o, true);
    if (st != NATS_OK)
        goto fail;
    if (c->auth.token && *c->auth.token && (st = natsOptions_SetToken(o, c->auth.token)) != NATS_OK)
        goto fail;
    if (c->auth.user && *c->auth.user &&
        (st = natsOptions_SetUserInfo(o, c->auth.user, c->auth.password)) != NATS_OK)
        goto fail;
    if (c->auth.creds_file && *c->auth.creds_file &&
        (st = natsOptions_SetUserCredentialsFromFiles(o, c->auth.creds_file, NULL)) != NATS_OK)
        goto fail;
    if (c->auth.nkey_file && *c->auth.nkey_file) {
        if (nkey_public(c->auth.nkey_file, pub, sizeof pub) < 0) {
            nx_error("bus", "broker.auth.nkey_file %s: not a readable nkey seed (SU...)",
                     c->auth.nkey_file);
            return NX_ECONFIG;
        }
        if ((st = natsOptions_SetNKeyFromSeed(o, pub, c->auth.nkey_file)) != NATS_OK)
            goto fail;
    }
    if (c->tls.ca_file || c->tls.cert_file || is_tls) {
        if ((st = natsOptions_SetSecure(o, true)) != NATS_OK)
            goto fail;
        if (c->tls.ca_file && (st = natsOptions_LoadCATrustedCertificates(o, c->tls.ca_file)) != NATS_OK)
            goto fail;
        if (c->tls.cert_file &&
            (st = natsOptions_LoadCertificatesChain(o, c->tls.cert_file, c->tls.key_file)) != NATS_OK)
            goto fail;
    }
    return 0;
fail:
    nx_error("bus", "NATS options: %s (%s)", natsStatus_GetText(st), nats_GetLastError(NULL));
    return NX_ECONFIG;
}

static int nats_open(struct nx_bus *bus)
{
    struct nx_nats *n = nx_calloc(1, sizeof *n);
    struct link *l = nx_calloc(1, sizeof *l);
    natsStatus st;
    int rc;

    pthread_mutex_init(&l->lock, NULL);
    l->is_alive = true;
    atomic_init(&l->refs, 2); /* the bus's, the connection's (dropped in on_closed) */
    l->mb = &bus->mb;
    l->bus = bus;
    n->link = l;
    bus->nats = n;
    if (natsOptions_Create(&n->opts) != NATS_OK) {
        atomic_store(&l->refs, 1);
        return NX_EIO;
    }
    if ((rc = set_options(bus, n->opts, l)) < 0) {
        atomic_store(&l->refs, 1);
        return rc;
    }
    st = natsConnection_Connect(&n->nc, n->opts);
    if (st == NATS_OK) {
        post_conn(l, n->nc, true);
    } else if (st == NATS_NOT_YET_CONNECTED) {
        nx_warn("bus", "%s: NATS at %s is not reachable yet; serving in-process (fallback) and "
                "retrying", bus->name, bus->conf.url ? bus->conf.url : "nats://127.0.0.1:4222");
    } else {
        nx_error("bus", "NATS connect: %s (%s)", natsStatus_GetText(st), nats_GetLastError(NULL));
        atomic_store(&l->refs, 1);
        return NX_ECONFIG;
    }
    return 0;
}

static void nats_close(struct nx_bus *bus)
{
    struct nx_nats *n = bus->nats;

    if (n->nc && !n->is_closed)
        natsConnection_Close(n->nc); /* flushes what libnats still buffers */
    n->is_closed = true;
}

static void nats_destroy(struct nx_bus *bus)
{
    struct nx_nats *n = bus->nats;

    if (!n)
        return;
    pthread_mutex_lock(&n->link->lock);
    n->link->is_alive = false;
    pthread_mutex_unlock(&n->link->lock);
    natsConnection_Destroy(n->nc);
    natsOptions_Destroy(n->opts);
    link_unref(n->link);
    free(n);
    bus->nats = NULL;
}

void *nx_nats_connection(struct nx_bus *bus)
{
    return bus->nats && !bus->nats->is_closed ? bus->nats->nc : NULL;
}

struct link *nx_nats_link_ref(struct nx_bus *bus)
{
    atomic_fetch_add(&bus->nats->link->refs, 1);
    return bus->nats->link;
}

void nx_nats_link_unref(struct link *l)
{
    link_unref(l);
}

bool nx_nats_link_post(struct link *l, nx_mail_fn fn, void *arg)
{
    return link_post(l, fn, arg);
}

static int nats_publish(struct nx_bus *bus, const struct nx_bus_item *it, const char *local)
{
    struct nx_nats *n = bus->nats;
    natsMsg *msg = NULL;
    natsStatus st;

    if (!n || !n->nc || n->is_closed)
        return NX_ECLOSED;
    /* With JetStream, every event carries its id as Nats-Msg-Id: a stream that captures the
     * subject stores it once within its duplicate window, however often it is replayed. */
    if (!local && bus->has_js && !it->reply_to && it->env) {
        st = natsMsg_Create(&msg, it->subject, NULL, it->data, (int)it->len);
        if (st == NATS_OK)
            st = natsMsgHeader_Set(msg, "Nats-Msg-Id", it->env->id);
        if (st == NATS_OK)
            st = natsConnection_PublishMsg(n->nc, msg);
        natsMsg_Destroy(msg);
        return map_status(st);
    }
    if (!local) {
        if (it->reply_to)
            st = natsConnection_PublishRequest(n->nc, it->subject, it->reply_to, it->data,
                                               (int)it->len);
        else
            st = natsConnection_Publish(n->nc, it->subject, it->data, (int)it->len);
        return map_status(st);
    }
    st = natsMsg_Create(&msg, it->subject, it->reply_to, it->data, (int)it->len);
    if (st == NATS_OK)
        st = natsMsgHeader_Set(msg, "Nx-Origin", bus->instance);
    if (st == NATS_OK)
        st = natsMsgHeader_Set(msg, "Nx-Local", local);
    if (st == NATS_OK && bus->has_js && it->env)
        st = natsMsgHeader_Set(msg, "Nats-Msg-Id", it->env->id);
    if (st == NATS_OK)
        st = natsConnection_PublishMsg(n->nc, msg);
    natsMsg_Destroy(msg);
    return map_status(st);
}

static int nats_subscribe(struct nx_bus *bus, struct nx_bus_sub *sub)
{
    struct nx_nats *n = bus->nats;
    struct nsub *ns = nx_calloc(1, sizeof *ns);
    natsStatus st;

    atomic_init(&ns->refs, 2); /* the bus subscription's, libnats's */
    atomic_fetch_add(&n->link->refs, 1);
    ns->link = n->link;
    ns->sub = sub;
    if (sub->group)
        st = natsConnection_QueueSubscribe(&ns->ns, n->nc, sub->pattern, sub->group, on_msg, ns);
    else
        st = natsConnection_Subscribe(&ns->ns, n->nc, sub->pattern, on_msg, ns);
    if (st == NATS_OK)
        st = natsSubscription_SetOnCompleteCB(ns->ns, on_sub_complete, ns);
    if (st != NATS_OK) {
        nx_error("bus", "NATS subscribe %s: %s", sub->name, natsStatus_GetText(st));
        if (ns->ns) {
            natsSubscription_Unsubscribe(ns->ns);
            natsSubscription_Destroy(ns->ns);
        } else {
            atomic_fetch_sub(&ns->refs, 1);
        }
        nsub_unref(ns);
        return map_status(st);
    }
    /* never drop in the library: our callback only copies and posts */
    natsSubscription_SetPendingLimits(ns->ns, -1, -1);
    sub->backend = ns;
    return 0;
}

static void nats_unsubscribe(struct nx_bus *bus, struct nx_bus_sub *sub)
{
    struct nsub *ns = sub->backend;

    (void)bus;
    if (!ns)
        return;
    sub->backend = NULL;
    ns->sub = NULL;
    natsSubscription_Unsubscribe(ns->ns);
    natsSubscription_Destroy(ns->ns);
    nsub_unref(ns);
}

struct flush_req {
    uv_work_t req;
    struct nx_bus *bus;
    natsConnection *nc;
    uint32_t timeout_ms;
    natsStatus st;
    uint64_t token;
    void (*done)(struct nx_bus *, int, uint64_t);
};

static void flush_work(uv_work_t *w)
{
    struct flush_req *f = w->data;

    f->st = natsConnection_FlushTimeout(f->nc, f->timeout_ms);
}

static void flush_after(uv_work_t *w, int status)
{
    struct flush_req *f = w->data;

    f->done(f->bus, status < 0 ? NX_ECANCELED : map_status(f->st), f->token);
    free(f);
}

static void nats_flush(struct nx_bus *bus, uint32_t timeout_ms,
                       void (*done)(struct nx_bus *, int, uint64_t), uint64_t token)
{
    struct flush_req *f = nx_calloc(1, sizeof *f);

    f->req.data = f;
    f->bus = bus;
    f->nc = bus->nats->nc;
    f->timeout_ms = timeout_ms;
    f->token = token;
    f->done = done;
    if (uv_queue_work(bus->loop, &f->req, flush_work, flush_after) != 0) {
        free(f);
        done(bus, NX_EIO, token);
    }
}

const struct nx_bus_backend nx_bus_nats_backend = {
    .name = "nats",
    .open = nats_open,
    .close = nats_close,
    .destroy = nats_destroy,
    .publish = nats_publish,
    .subscribe = nats_subscribe,
    .unsubscribe = nats_unsubscribe,
    .flush = nats_flush,
};
