#include <ctype.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "channels/policy.h"
#include "core/alloc.h"
#include "core/clock.h"
#include "core/error.h"
#include "runtime/runtime.h"

/* Pairing codes and the channel_pairing table (migration 5), and `nexo pairing`. */

int nx_pairing_code_new(char *out)
{
    static const char alphabet[] = NX_PAIRING_ALPHABET;
    unsigned char r[NX_PAIRING_CODE_LEN];
    _Static_assert(sizeof alphabet - 1 == 32, "the alphabet divides 256: no modulo bias");
    if (RAND_bytes(r, sizeof r) != 1)
        return NX_EIO;
    for (size_t i = 0; i < NX_PAIRING_CODE_LEN; i++)
        out[i] = alphabet[r[i] & 31];
    out[NX_PAIRING_CODE_LEN] = '\0';
    return 0;
}

int nx_pairing_code_normalize(const char *in, char *out)
{
    size_t n = 0;
    for (const char *s = in; s && *s; s++) {
        if (*s == '-' || *s == ' ')
            continue;
        char c = (char)toupper((unsigned char)*s);
        if (n >= NX_PAIRING_CODE_LEN || !strchr(NX_PAIRING_ALPHABET, c) || c == '\0')
            return NX_EINVAL;
        out[n++] = c;
    }
    out[n] = '\0';
    return n == NX_PAIRING_CODE_LEN ? 0 : NX_EINVAL;
}

static void row_cleanup(struct nx_pairing_row *r)
{
    free(r->channel);
    free(r->instance);
    free(r->sender);
    free(r->chat);
    free(r->code);
}

void nx_pairing_rows_free(struct nx_pairing_row *v, size_t n)
{
    for (size_t i = 0; v && i < n; i++)
        row_cleanup(&v[i]);
    free(v);
}

/* ---- store jobs ---- */

struct op {
    char *channel, *instance, *sender, *chat, *code;
    int64_t expires_at;
    struct nx_pairing_row *v;
    size_t n;
    struct nx_pairing_row *out;
    nx_pairing_rows_cb rows_done;
    nx_store_done_fn done;
    void *arg;
};

static void op_free(struct op *op)
{
    free(op->channel);
    free(op->instance);
    free(op->sender);
    free(op->chat);
    free(op->code);
    nx_pairing_rows_free(op->v, op->n);
    free(op);
}

static char *col(sqlite3_stmt *st, int i)
{
    const unsigned char *t = sqlite3_column_text(st, i);
    return t ? nx_strdup((const char *)t) : NULL;
}

static void read_row(sqlite3_stmt *st, struct nx_pairing_row *r)
{
    r->channel = col(st, 0);
    r->instance = col(st, 1);
    r->sender = col(st, 2);
    r->chat = col(st, 3);
    r->code = col(st, 4);
    const unsigned char *state = sqlite3_column_text(st, 5);
    r->is_approved = state && strcmp((const char *)state, "approved") == 0;
    r->created_at = sqlite3_column_int64(st, 6);
    r->expires_at = sqlite3_column_int64(st, 7);
    r->approved_at = sqlite3_column_int64(st, 8);
}

#define ROW_COLUMNS "channel, instance, sender, chat, code, state, created_at, expires_at, approved_at"

static int list_job(sqlite3 *db, void *arg)
{
    struct op *op = arg;
    sqlite3_stmt *st = NULL;
    size_t cap = 0;
    int rc = NX_EDB;
    const char *sql = op->channel
        ? "SELECT " ROW_COLUMNS " FROM channel_pairing WHERE channel = ?1 AND instance = ?2 AND "
          "(state = 'approved' OR expires_at > ?3) ORDER BY created_at, sender LIMIT 100000"
        : "SELECT " ROW_COLUMNS " FROM channel_pairing WHERE state = 'approved' OR expires_at > ?3 "
          "ORDER BY state DESC, channel, instance, created_at, sender LIMIT 100000";

    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        goto out;
    if (op->channel) {
        sqlite3_bind_text(st, 1, op->channel, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, op->instance, -1, SQLITE_STATIC);
    }
    sqlite3_bind_int64(st, 3, (sqlite3_int64)(nx_wall_ms() / 1000));
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (op->n == cap) {
            cap = cap ? cap * 2 : 16;
            op->v = nx_realloc(op->v, cap * sizeof *op->v);
        }
        memset(&op->v[op->n], 0, sizeof op->v[op->n]);
        read_row(st, &op->v[op->n++]);
    }
    rc = rc == SQLITE_DONE ? 0 : NX_EDB;
out:
    sqlite3_finalize(st);
    return rc;
}

static void list_done(int rc, void *arg)
{
    struct op *op = arg;
    struct nx_pairing_row *v = rc < 0 ? NULL : op->v;
    size_t n = rc < 0 ? 0 : op->n;
    if (rc >= 0) {
        op->v = NULL; /* handed over */
        op->n = 0;
    }
    op->rows_done(rc, v, n, op->arg);
    op_free(op);
}

void nx_pairing_list(struct nx_store *s, const char *channel, const char *instance,
                     nx_pairing_rows_cb done, void *arg)
{
    struct op *op = nx_calloc(1, sizeof *op);
    op->channel = channel ? nx_strdup(channel) : NULL;
    op->instance = nx_strdup(instance ? instance : "default");
    op->rows_done = done;
    op->arg = arg;
    nx_store_read(s, list_job, list_done, op);
}

static void op_done(int rc, void *arg)
{
    struct op *op = arg;
    if (op->done)
        op->done(rc, op->arg);
    op_free(op);
}

static int put_job(sqlite3 *db, void *arg)
{
    struct op *op = arg;
    sqlite3_stmt *st = NULL;
    int rc = NX_EDB;

    /* A code equal to another's (1 in 2^40) would break the unique index: the new one then
     * fails and is reported; never overwrite an approved row. */
    if (sqlite3_prepare_v2(db, "INSERT INTO channel_pairing (channel, instance, sender, chat, code, state, "
                               "created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6, ?7) "
                               "ON CONFLICT (channel, instance, sender) DO UPDATE SET chat = excluded.chat, "
                               "code = excluded.code, created_at = excluded.created_at, "
                               "expires_at = excluded.expires_at WHERE state = 'pending'",
                           -1, &st, NULL) != SQLITE_OK)
        goto out;
    sqlite3_bind_text(st, 1, op->channel, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, op->instance, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, op->sender, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, op->chat ? op->chat : "", -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, op->code, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 6, (sqlite3_int64)(nx_wall_ms() / 1000));
    sqlite3_bind_int64(st, 7, op->expires_at);
    rc = sqlite3_step(st) == SQLITE_DONE ? 0 : NX_EDB;
out:
    sqlite3_finalize(st);
    return rc;
}

void nx_pairing_put_pending(struct nx_store *s, const char *channel, const char *instance,
                            const char *sender, const char *chat, const char *code,
                            int64_t expires_at, nx_store_done_fn done, void *arg)
{
    struct op *op = nx_calloc(1, sizeof *op);
    op->channel = nx_strdup(channel);
    op->instance = nx_strdup(instance ? instance : "default");
    op->sender = nx_strdup(sender);
    op->chat = chat ? nx_strdup(chat) : NULL;
    op->code = nx_strdup(code);
    op->expires_at = expires_at;
    op->done = done;
    op->arg = arg;
    nx_store_write(s, put_job, op_done, op);
}

static int approve_job(sqlite3 *db, void *arg)
{
    struct op *op = arg;
    sqlite3_stmt *st = NULL;
    int rc = NX_EDB;
    int64_t now = (int64_t)(nx_wall_ms() / 1000);

    if (sqlite3_prepare_v2(db, "SELECT " ROW_COLUMNS " FROM channel_pairing WHERE code = ?1 AND "
                               "state = 'pending' AND expires_at > ?2", -1, &st, NULL) != SQLITE_OK)
        goto out;
    sqlite3_bind_text(st, 1, op->code, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, now);
    int step = sqlite3_step(st);
    if (step == SQLITE_DONE) {
        rc = NX_ENOENT;
        goto out;
    }
    if (step != SQLITE_ROW)
        goto out;
    if (op->out)
        read_row(st, op->out);
    sqlite3_finalize(st);
    st = NULL;
    if (sqlite3_prepare_v2(db, "UPDATE channel_pairing SET state = 'approved', code = NULL, "
                               "approved_at = ?2 WHERE code = ?1", -1, &st, NULL) != SQLITE_OK)
        goto out;
    sqlite3_bind_text(st, 1, op->code, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, now);
    rc = sqlite3_step(st) == SQLITE_DONE ? 0 : NX_EDB;
    if (rc == 0 && op->out) { /* the row as it is now */
        op->out->is_approved = true;
        op->out->approved_at = now;
        op->out->expires_at = 0;
        free(op->out->code);
        op->out->code = NULL;
    }
out:
    sqlite3_finalize(st);
    return rc;
}

void nx_pairing_approve(struct nx_store *s, const char *code, struct nx_pairing_row *out,
                        nx_store_done_fn done, void *arg)
{
    struct op *op = nx_calloc(1, sizeof *op);
    op->code = nx_strdup(code);
    op->out = out;
    op->done = done;
    op->arg = arg;
    nx_store_write(s, approve_job, op_done, op);
}

static int revoke_job(sqlite3 *db, void *arg)
{
    struct op *op = arg;
    sqlite3_stmt *st = NULL;
    int rc = NX_EDB;

    if (sqlite3_prepare_v2(db, "DELETE FROM channel_pairing WHERE channel = ?1 AND instance = ?2 AND "
                               "sender = ?3", -1, &st, NULL) != SQLITE_OK)
        goto out;
    sqlite3_bind_text(st, 1, op->channel, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, op->instance, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, op->sender, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE)
        goto out;
    rc = sqlite3_changes(db) > 0 ? 0 : NX_ENOENT;
out:
    sqlite3_finalize(st);
    return rc;
}

void nx_pairing_revoke(struct nx_store *s, const char *channel, const char *instance,
                       const char *sender, nx_store_done_fn done, void *arg)
{
    struct op *op = nx_calloc(1, sizeof *op);
    op->channel = nx_strdup(channel);
    op->instance = nx_strdup(instance ? instance : "default");
    op->sender = nx_strdup(sender);
    op->done = done;
    op->arg = arg;
    nx_store_write(s, revoke_job, op_done, op);
}

/* ---- nexo pairing ---- */

struct cmd {
    int rc;
    bool is_done;
    bool is_json;
    const char *what; /* for messages */
    struct nx_pairing_row row;
};

static void on_ready(int rc, void *arg)
{
    struct cmd *c = arg;
    if (rc < 0) {
        c->rc = NX_EXIT_FAILURE;
        c->is_done = true;
    }
}

static void print_rows(int rc, struct nx_pairing_row *v, size_t n, void *arg)
{
    struct cmd *c = arg;
    c->is_done = true;
    if (rc < 0) {
        fprintf(stderr, "nexo pairing list: %s\n", nx_strerror(rc));
        c->rc = NX_EXIT_FAILURE;
        return;
    }
    json_t *arr = c->is_json ? json_array() : NULL;
    if (!c->is_json && n == 0)
        printf("no pending codes and no approved senders\n");
    else if (!c->is_json)
        printf("%-10s %-24s %-20s %-9s %s\n", "STATE", "CHANNEL", "SENDER", "CODE", "EXPIRES/APPROVED (UTC)");
    for (size_t i = 0; i < n; i++) {
        char when[64] = "";
        int64_t t = v[i].is_approved ? v[i].approved_at : v[i].expires_at;
        if (t > 0)
            nx_rfc3339((uint64_t)t * 1000, when, sizeof when);
        if (arr) {
            json_array_append_new(arr, json_pack("{s:s, s:s, s:s, s:s, s:s, s:s?, s:s}", "state",
                                                 v[i].is_approved ? "approved" : "pending", "channel",
                                                 v[i].channel ? v[i].channel : "", "instance",
                                                 v[i].instance ? v[i].instance : "", "sender",
                                                 v[i].sender ? v[i].sender : "", "chat",
                                                 v[i].chat ? v[i].chat : "", "code", v[i].code,
                                                 v[i].is_approved ? "approved_at" : "expires_at", when));
            continue;
        }
        char chan[160];
        bool is_default = v[i].instance && strcmp(v[i].instance, "default") == 0;
        snprintf(chan, sizeof chan, "%s%s%s", v[i].channel ? v[i].channel : "", is_default ? "" : ".",
                 is_default ? "" : (v[i].instance ? v[i].instance : ""));
        printf("%-10s %-24s %-20s %-9s %s\n", v[i].is_approved ? "approved" : "pending", chan,
               v[i].sender ? v[i].sender : "", v[i].code ? v[i].code : "-", when);
    }
    if (arr) {
        char *s = json_dumps(arr, JSON_COMPACT);
        printf("%s\n", s);
        free(s);
        json_decref(arr);
    }
    nx_pairing_rows_free(v, n);
    c->rc = NX_EXIT_OK;
}

static void print_done(int rc, void *arg)
{
    struct cmd *c = arg;
    c->is_done = true;
    if (rc == NX_ENOENT) {
        fprintf(stderr, "nexo pairing %s: no such %s\n", c->what,
                strcmp(c->what, "approve") == 0 ? "pending code (wrong, expired or already used)"
                                               : "sender on that channel");
        c->rc = NX_EXIT_FAILURE;
        return;
    }
    if (rc < 0) {
        fprintf(stderr, "nexo pairing %s: %s\n", c->what, nx_strerror(rc));
        c->rc = NX_EXIT_FAILURE;
        return;
    }
    if (strcmp(c->what, "approve") == 0)
        printf("approved sender %s on %s%s%s\n", c->row.sender ? c->row.sender : "?",
               c->row.channel ? c->row.channel : "?",
               c->row.instance && strcmp(c->row.instance, "default") ? "." : "",
               c->row.instance && strcmp(c->row.instance, "default") ? c->row.instance : "");
    else
        printf("revoked\n");
    c->rc = NX_EXIT_OK;
}

int nx_cmd_pairing(int argc, char **argv, const char *data_dir)
{
    static const char usage[] =
        "usage: nexo pairing list [--json] | approve CODE | revoke CHANNEL[.INSTANCE] SENDER\n";
    struct cmd c = {.rc = NX_EXIT_FAILURE};
    struct nx_store *s = NULL;
    char code[NX_PAIRING_CODE_LEN + 1], type[64], inst[128];
    uv_loop_t loop;
    int rc;

    if (argc < 2)
        goto bad;
    c.what = argv[1];
    if (strcmp(argv[1], "list") == 0) {
        if (argc > 3 || (argc == 3 && strcmp(argv[2], "--json") != 0))
            goto bad;
        c.is_json = argc == 3;
    } else if (strcmp(argv[1], "approve") == 0) {
        if (argc != 3)
            goto bad;
        if (nx_pairing_code_normalize(argv[2], code) < 0) {
            fprintf(stderr, "nexo pairing approve: \"%s\" is not a pairing code (%d characters of %s)\n",
                    argv[2], NX_PAIRING_CODE_LEN, NX_PAIRING_ALPHABET);
            return NX_EXIT_USAGE;
        }
    } else if (strcmp(argv[1], "revoke") == 0) {
        if (argc != 4 || !argv[3][0])
            goto bad;
        const char *dot = strchr(argv[2], '.');
        size_t tl = dot ? (size_t)(dot - argv[2]) : strlen(argv[2]);
        if (tl == 0 || tl >= sizeof type || (dot && (!dot[1] || strlen(dot + 1) >= sizeof inst)))
            goto bad;
        memcpy(type, argv[2], tl);
        type[tl] = '\0';
        snprintf(inst, sizeof inst, "%s", dot ? dot + 1 : "default");
    } else {
        goto bad;
    }
    if (!nx_store_cli_has_data(data_dir ? data_dir : "./data", "pairing")) {
        if (strcmp(c.what, "list"))
            return NX_EXIT_FAILURE;
        puts(c.is_json ? "[]" : "no pending codes and no approved senders");
        return NX_EXIT_OK;
    }
    if (uv_loop_init(&loop) != 0)
        return NX_EXIT_FAILURE;
    if ((rc = nx_store_open(&loop, data_dir ? data_dir : "./data", NULL, on_ready, &c, &s)) < 0) {
        fprintf(stderr, "nexo pairing: cannot open the store under %s: %s\n",
                data_dir ? data_dir : "./data", nx_strerror(rc));
        uv_loop_close(&loop);
        return NX_EXIT_FAILURE;
    }
    if (strcmp(c.what, "list") == 0)
        nx_pairing_list(s, NULL, NULL, print_rows, &c);
    else if (strcmp(c.what, "approve") == 0)
        nx_pairing_approve(s, code, &c.row, print_done, &c);
    else
        nx_pairing_revoke(s, type, inst, argv[3], print_done, &c);
    while (!c.is_done && uv_run(&loop, UV_RUN_ONCE))
        ;
    if (!nx_store_is_open(s) && c.rc == NX_EXIT_FAILURE)
        fprintf(stderr, "nexo pairing: store did not open: %s\n", nx_store_last_error(s));
    nx_store_close(s);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    row_cleanup(&c.row);
    fflush(stdout);
    return c.rc;
bad:
    fputs(usage, stderr);
    return NX_EXIT_USAGE;
}
