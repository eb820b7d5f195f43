#include <dirent.h>
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/log.h"
#include "core/metrics.h"

/* Registry layout: a global, registration-ordered array of families under one registry lock
 * (taken at registration and render only); each family owns its series and a mutex of its own,
 * so updates to different families never contend. A series is found by hashing its label values
 * and probing an open-addressing table: an update on an existing label set allocates nothing. */

enum metric_type {
    METRIC_COUNTER,
    METRIC_GAUGE,
    METRIC_HISTOGRAM,
};

struct series {
    uint64_t hash;
    char **values;      /* nlabels copies */
    double value;       /* counter, gauge */
    uint64_t *counts;   /* histogram: per bucket (not cumulative), nbuckets + 1 for +Inf */
    double sum;         /* histogram */
    uint64_t count;     /* histogram */
};

struct nx_metric {
    char *name;
    char *help;
    enum metric_type type;
    size_t nlabels;
    char **label_names;
    double *buckets;
    size_t nbuckets;

    pthread_mutex_t mu;
    struct series **order; /* in creation order, for rendering */
    size_t nseries;
    size_t order_cap;
    struct series **table; /* open addressing, power of two */
    size_t table_cap;
};

struct collector {
    nx_metrics_collect_fn fn;
    void *arg;
};

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct nx_metric **families;
static size_t nfamilies;
static size_t families_cap;
static struct collector *collectors;
static size_t ncollectors;
static size_t collectors_cap;

static const char *const type_names[] = {"counter", "gauge", "histogram"};

/* ---- names ---- */

static bool valid_metric_name(const char *s)
{
    if (!s || !*s)
        return false;
    for (size_t i = 0; s[i]; i++) {
        char c = s[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' ||
                  (i > 0 && c >= '0' && c <= '9');
        if (!ok)
            return false;
    }
    return true;
}

static bool valid_label_name(const char *s)
{
    if (!s || !*s || strncmp(s, "__", 2) == 0)
        return false;
    for (size_t i = 0; s[i]; i++) {
        char c = s[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
                  (i > 0 && c >= '0' && c <= '9');
        if (!ok)
            return false;
    }
    return true;
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && memcmp(s + n - m, suffix, m) == 0;
}

/* ---- registration ---- */

static size_t count_labels(const char *const *label_names)
{
    size_t n = 0;
    while (label_names && label_names[n])
        n++;
    return n;
}

static bool same_shape(const struct nx_metric *m, enum metric_type type,
                       const char *const *label_names, const double *buckets, size_t nbuckets)
{
    if (m->type != type || m->nlabels != count_labels(label_names))
        return false;
    for (size_t i = 0; i < m->nlabels; i++) {
        if (strcmp(m->label_names[i], label_names[i]) != 0)
            return false;
    }
    if (type == METRIC_HISTOGRAM) {
        if (m->nbuckets != nbuckets)
            return false;
        for (size_t i = 0; i < nbuckets; i++) {
            if (m->buckets[i] != buckets[i])
                return false;
        }
    }
    return true;
}

static struct nx_metric *metric_register(enum metric_type type, const char *name, const char *help,
                                         const char *const *label_names, const double *buckets,
                                         size_t nbuckets)
{
    struct nx_metric *m = NULL;
    size_t nlabels = count_labels(label_names);

    /* Names are fixed in code: a bad one is a programming error, caught on first start. */
    NX_ASSERT(valid_metric_name(name));
    for (size_t i = 0; i < nlabels; i++) {
        NX_ASSERT(valid_label_name(label_names[i]));
        NX_ASSERT(type != METRIC_HISTOGRAM || strcmp(label_names[i], "le") != 0);
    }
    if (type == METRIC_HISTOGRAM) {
        NX_ASSERT(nbuckets == 0 || buckets != NULL);
        for (size_t i = 0; i < nbuckets; i++) {
            NX_ASSERT(!isnan(buckets[i]) && !isinf(buckets[i]));
            NX_ASSERT(i == 0 || buckets[i] > buckets[i - 1]);
        }
    }
    if (type == METRIC_COUNTER && !ends_with(name, "_total"))
        nx_warn("metrics", "counter %s should be named with a _total suffix", name);

    pthread_mutex_lock(&registry_lock);
    for (size_t i = 0; i < nfamilies; i++) {
        if (strcmp(families[i]->name, name) == 0) {
            m = families[i];
            NX_ASSERT(same_shape(m, type, label_names, buckets, nbuckets));
            goto out;
        }
    }

    m = nx_calloc(1, sizeof *m);
    m->name = nx_strdup(name);
    m->help = nx_strdup(help ? help : "");
    m->type = type;
    m->nlabels = nlabels;
    if (nlabels) {
        m->label_names = nx_calloc(nlabels, sizeof *m->label_names);
        for (size_t i = 0; i < nlabels; i++)
            m->label_names[i] = nx_strdup(label_names[i]);
    }
    if (type == METRIC_HISTOGRAM && nbuckets) {
        m->buckets = nx_memdup(buckets, nbuckets * sizeof *buckets);
        m->nbuckets = nbuckets;
    }
    pthread_mutex_init(&m->mu, NULL);

    if (nfamilies == families_cap) {
        families_cap = families_cap ? families_cap * 2 : 16;
        families = nx_realloc(families, families_cap * sizeof *families);
    }
    families[nfamilies++] = m;
out:
    pthread_mutex_unlock(&registry_lock);
    return m;
}

struct nx_metric *nx_metric_counter(const char *name, const char *help,
                                    const char *const *label_names)
{
    return metric_register(METRIC_COUNTER, name, help, label_names, NULL, 0);
}

struct nx_metric *nx_metric_gauge(const char *name, const char *help,
                                  const char *const *label_names)
{
    return metric_register(METRIC_GAUGE, name, help, label_names, NULL, 0);
}

struct nx_metric *nx_metric_histogram(const char *name, const char *help,
                                      const char *const *label_names, const double *buckets,
                                      size_t nbuckets)
{
    return metric_register(METRIC_HISTOGRAM, name, help, label_names, buckets, nbuckets);
}

/* ---- series lookup (caller holds m->mu) ---- */

static uint64_t hash_values(const struct nx_metric *m, const char *const *values)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (size_t i = 0; i < m->nlabels; i++) {
        const char *v = values && values[i] ? values[i] : "";
        for (; *v; v++) {
            h ^= (unsigned char)*v;
            h *= 1099511628211ULL;
        }
        h ^= 0xff; /* separator: ("ab","c") and ("a","bc") differ */
        h *= 1099511628211ULL;
    }
    return h;
}

static bool series_matches(const struct nx_metric *m, const struct series *s, uint64_t h,
                           const char *const *values)
{
    if (s->hash != h)
        return false;
    for (size_t i = 0; i < m->nlabels; i++) {
        const char *v = values && values[i] ? values[i] : "";
        if (strcmp(s->values[i], v) != 0)
            return false;
    }
    return true;
}

static void table_insert(struct series **table, size_t cap, struct series *s)
{
    size_t i = (size_t)s->hash & (cap - 1);
    while (table[i])
        i = (i + 1) & (cap - 1);
    table[i] = s;
}

static struct series *series_get(struct nx_metric *m, const char *const *values)
{
    uint64_t h = hash_values(m, values);

    if (m->table_cap) {
        size_t i = (size_t)h & (m->table_cap - 1);
        while (m->table[i]) {
            if (series_matches(m, m->table[i], h, values))
                return m->table[i];
            i = (i + 1) & (m->table_cap - 1);
        }
    }

    /* New label set: keep the table at most half full. */
    if ((m->nseries + 1) * 2 > m->table_cap) {
        size_t cap = m->table_cap ? m->table_cap * 2 : 8;
        struct series **t = nx_calloc(cap, sizeof *t);
        for (size_t i = 0; i < m->nseries; i++)
            table_insert(t, cap, m->order[i]);
        free(m->table);
        m->table = t;
        m->table_cap = cap;
    }
    if (m->nseries == m->order_cap) {
        m->order_cap = m->order_cap ? m->order_cap * 2 : 4;
        m->order = nx_realloc(m->order, m->order_cap * sizeof *m->order);
    }

    struct series *s = nx_calloc(1, sizeof *s);
    s->hash = h;
    if (m->nlabels) {
        s->values = nx_calloc(m->nlabels, sizeof *s->values);
        for (size_t i = 0; i < m->nlabels; i++)
            s->values[i] = nx_strdup(values && values[i] ? values[i] : "");
    }
    if (m->type == METRIC_HISTOGRAM)
        s->counts = nx_calloc(m->nbuckets + 1, sizeof *s->counts);
    m->order[m->nseries++] = s;
    table_insert(m->table, m->table_cap, s);
    return s;
}

/* ---- updates ---- */

void nx_counter_add(struct nx_metric *m, const char *const *label_values, double v)
{
    if (!m)
        return;
    NX_ASSERT(m->type == METRIC_COUNTER);
    if (!(v >= 0)) /* counters only go up; NaN is dropped too */
        return;
    pthread_mutex_lock(&m->mu);
    series_get(m, label_values)->value += v;
    pthread_mutex_unlock(&m->mu);
}

void nx_gauge_set(struct nx_metric *m, const char *const *label_values, double v)
{
    if (!m)
        return;
    NX_ASSERT(m->type == METRIC_GAUGE);
    pthread_mutex_lock(&m->mu);
    series_get(m, label_values)->value = v;
    pthread_mutex_unlock(&m->mu);
}

void nx_gauge_remove(struct nx_metric *m, const char *const *label_values)
{
    if (!m || !m->table_cap)
        return;
    NX_ASSERT(m->type == METRIC_GAUGE);
    pthread_mutex_lock(&m->mu);
    uint64_t h = hash_values(m, label_values);
    struct series *s = NULL;
    for (size_t i = (size_t)h & (m->table_cap - 1); m->table[i]; i = (i + 1) & (m->table_cap - 1)) {
        if (series_matches(m, m->table[i], h, label_values)) {
            s = m->table[i];
            break;
        }
    }
    if (s) {
        size_t k = 0;
        for (size_t i = 0; i < m->nseries; i++) /* the others keep their order */
            if (m->order[i] != s)
                m->order[k++] = m->order[i];
        m->nseries = k;
        memset(m->table, 0, m->table_cap * sizeof *m->table);
        for (size_t i = 0; i < m->nseries; i++)
            table_insert(m->table, m->table_cap, m->order[i]);
        for (size_t i = 0; i < m->nlabels; i++)
            free(s->values[i]);
        free(s->values);
        free(s);
    }
    pthread_mutex_unlock(&m->mu);
}

void nx_gauge_add(struct nx_metric *m, const char *const *label_values, double v)
{
    if (!m)
        return;
    NX_ASSERT(m->type == METRIC_GAUGE);
    pthread_mutex_lock(&m->mu);
    series_get(m, label_values)->value += v;
    pthread_mutex_unlock(&m->mu);
}

void nx_histogram_observe(struct nx_metric *m, const char *const *label_values, double v)
{
    if (!m)
        return;
    NX_ASSERT(m->type == METRIC_HISTOGRAM);
    if (isnan(v))
        return;
    size_t b = 0;
    while (b < m->nbuckets && v > m->buckets[b])
        b++;
    pthread_mutex_lock(&m->mu);
    struct series *s = series_get(m, label_values);
    s->counts[b]++;
    s->sum += v;
    s->count++;
    pthread_mutex_unlock(&m->mu);
}

void nx_metrics_on_collect(nx_metrics_collect_fn fn, void *arg)
{
    pthread_mutex_lock(&registry_lock);
    if (ncollectors == collectors_cap) {
        collectors_cap = collectors_cap ? collectors_cap * 2 : 8;
        collectors = nx_realloc(collectors, collectors_cap * sizeof *collectors);
    }
    collectors[ncollectors].fn = fn;
    collectors[ncollectors].arg = arg;
    ncollectors++;
    pthread_mutex_unlock(&registry_lock);
}

/* ---- rendering ---- */

/* Prometheus parses numbers with Go's ParseFloat: integers print without exponent, others as the
 * shortest %g that reads back to the same double, and the specials as +Inf, -Inf, NaN. */
static void put_number(struct nx_buf *out, double v)
{
    char tmp[64];

    if (isnan(v)) {
        nx_buf_puts(out, "NaN");
        return;
    }
    if (isinf(v)) {
        nx_buf_puts(out, v > 0 ? "+Inf" : "-Inf");
        return;
    }
    if (v == floor(v) && fabs(v) < 9007199254740992.0) {
        nx_buf_printf(out, "%.0f", v == 0 ? 0.0 : v); /* no "-0" */
        return;
    }
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*g", prec, v);
        if (prec == 17 || strtod(tmp, NULL) == v)
            break;
    }
    nx_buf_puts(out, tmp);
}

static void put_label_value(struct nx_buf *out, const char *v)
{
    for (; *v; v++) {
        switch (*v) {
        case '\\': nx_buf_puts(out, "\\\\"); break;
        case '"': nx_buf_puts(out, "\\\""); break;
        case '\n': nx_buf_puts(out, "\\n"); break;
        default: nx_buf_putc(out, *v);
        }
    }
}

/* HELP text escapes only backslash and newline. */
static void put_help(struct nx_buf *out, const char *name, const char *help, const char *type)
{
    nx_buf_printf(out, "# HELP %s ", name);
    for (; *help; help++) {
        if (*help == '\\')
            nx_buf_puts(out, "\\\\");
        else if (*help == '\n')
            nx_buf_puts(out, "\\n");
        else
            nx_buf_putc(out, *help);
    }
    nx_buf_printf(out, "\n# TYPE %s %s\n", name, type);
}

/* `{a="x",b="y"` plus an optional le, then `}`; nothing when there are no labels at all. */
static void put_labels(struct nx_buf *out, const struct nx_metric *m, const struct series *s,
                       const char *le)
{
    if (m->nlabels == 0 && !le)
        return;
    nx_buf_putc(out, '{');
    for (size_t i = 0; i < m->nlabels; i++) {
        if (i)
            nx_buf_putc(out, ',');
        nx_buf_printf(out, "%s=\"", m->label_names[i]);
        put_label_value(out, s->values[i]);
        nx_buf_putc(out, '"');
    }
    if (le)
        nx_buf_printf(out, "%sle=\"%s\"", m->nlabels ? "," : "", le);
    nx_buf_putc(out, '}');
}

static void render_family(struct nx_buf *out, struct nx_metric *m)
{
    struct nx_buf le = NX_BUF_INIT;

    put_help(out, m->name, m->help, type_names[m->type]);
    pthread_mutex_lock(&m->mu);
    for (size_t i = 0; i < m->nseries; i++) {
        const struct series *s = m->order[i];
        if (m->type != METRIC_HISTOGRAM) {
            nx_buf_puts(out, m->name);
            put_labels(out, m, s, NULL);
            nx_buf_putc(out, ' ');
            put_number(out, s->value);
            nx_buf_putc(out, '\n');
            continue;
        }
        uint64_t cum = 0;
        for (size_t b = 0; b <= m->nbuckets; b++) {
            cum += s->counts[b];
            nx_buf_reset(&le);
            if (b < m->nbuckets)
                put_number(&le, m->buckets[b]);
            else
                nx_buf_puts(&le, "+Inf");
            nx_buf_printf(out, "%s_bucket", m->name);
            put_labels(out, m, s, nx_buf_cstr(&le));
            nx_buf_printf(out, " %llu\n", (unsigned long long)cum);
        }
        nx_buf_printf(out, "%s_sum", m->name);
        put_labels(out, m, s, NULL);
        nx_buf_putc(out, ' ');
        put_number(out, s->sum);
        nx_buf_printf(out, "\n%s_count", m->name);
        put_labels(out, m, s, NULL);
        nx_buf_printf(out, " %llu\n", (unsigned long long)s->count);
    }
    pthread_mutex_unlock(&m->mu);
    nx_buf_cleanup(&le);
}

/* ---- process metrics (Linux /proc) ---- */

struct proc_sample {
    bool has_stat;
    double cpu_seconds;
    double start_time;
    double vsize;
    double rss;
    bool has_fds;
    double open_fds;
    bool has_max_fds;
    double max_fds;
};

static bool read_file(const char *path, char *buf, size_t cap)
{
    FILE *f = fopen(path, "re");
    if (!f)
        return false;
    size_t n = fread(buf, 1, cap - 1, f);
    fclose(f);
    buf[n] = '\0';
    return n > 0;
}

static bool read_boot_time(double *out)
{
    char buf[8192];
    if (!read_file("/proc/stat", buf, sizeof buf))
        return false;
    const char *p = strstr(buf, "\nbtime ");
    if (!p)
        return false;
    *out = strtod(p + 7, NULL);
    return *out > 0;
}

static void sample_process(struct proc_sample *ps)
{
    char buf[4096];
    long tck = sysconf(_SC_CLK_TCK);
    long page = sysconf(_SC_PAGESIZE);

    memset(ps, 0, sizeof *ps);
    /* /proc/self/stat: "pid (comm) state ppid ..." — comm may hold spaces and parentheses, so
     * fields are counted from the last ')'. After it, field 3 (state) comes first; utime is 14,
     * stime 15, starttime 22, vsize 23, rss 24 (pages). */
    if (tck > 0 && page > 0 && read_file("/proc/self/stat", buf, sizeof buf)) {
        char *p = strrchr(buf, ')');
        double f[25] = {0};
        int field = 3;
        if (p) {
            p++;
            while (field <= 24) {
                char *end;
                while (*p == ' ')
                    p++;
                if (!*p)
                    break;
                if (field == 3) {
                    p++; /* state is a letter */
                } else {
                    f[field] = strtod(p, &end);
                    if (end == p)
                        break;
                    p = end;
                }
                field++;
            }
        }
        double btime;
        if (field > 24 && read_boot_time(&btime)) {
            ps->has_stat = true;
            ps->cpu_seconds = (f[14] + f[15]) / (double)tck;
            ps->start_time = btime + f[22] / (double)tck;
            ps->vsize = f[23];
            ps->rss = f[24] * (double)page;
        }
    }

    DIR *d = opendir("/proc/self/fd");
    if (d) {
        struct dirent *de;
        size_t n = 0;
        while ((de = readdir(d)) != NULL) {
            if (de->d_name[0] != '.')
                n++;
        }
        closedir(d);
        ps->has_fds = true;
        ps->open_fds = (double)(n > 0 ? n - 1 : 0); /* minus the directory's own fd */
    }

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        ps->has_max_fds = true;
        ps->max_fds = rl.rlim_cur == RLIM_INFINITY ? INFINITY : (double)rl.rlim_cur;
    }
}

static bool family_exists(const char *name)
{
    for (size_t i = 0; i < nfamilies; i++) {
        if (strcmp(families[i]->name, name) == 0)
            return true;
    }
    return false;
}

static void put_process(struct nx_buf *out, const char *name, const char *help, const char *type,
                        double v)
{
    if (family_exists(name)) /* a registered family of the same name wins */
        return;
    put_help(out, name, help, type);
    nx_buf_puts(out, name);
    nx_buf_putc(out, ' ');
    put_number(out, v);
    nx_buf_putc(out, '\n');
}

static void render_process(struct nx_buf *out)
{
    struct proc_sample ps;

    sample_process(&ps);
    if (ps.has_stat) {
        put_process(out, "process_cpu_seconds_total", "Total user and system CPU time spent in seconds.",
                    "counter", ps.cpu_seconds);
        put_process(out, "process_resident_memory_bytes", "Resident memory size in bytes.", "gauge",
                    ps.rss);
        put_process(out, "process_virtual_memory_bytes", "Virtual memory size in bytes.", "gauge",
                    ps.vsize);
        put_process(out, "process_start_time_seconds",
                    "Start time of the process since unix epoch in seconds.", "gauge", ps.start_time);
    }
    if (ps.has_fds)
        put_process(out, "process_open_fds", "Number of open file descriptors.", "gauge", ps.open_fds);
    if (ps.has_max_fds)
        put_process(out, "process_max_fds", "Maximum number of open file descriptors.", "gauge",
                    ps.max_fds);
}

void nx_metrics_render(struct nx_buf *out)
{
    struct collector *cbs = NULL;
    size_t ncbs;

    /* Collectors update families, which takes family locks; run them on a snapshot without the
     * registry lock so a collector may even register a family. */
    pthread_mutex_lock(&registry_lock);
    ncbs = ncollectors;
    if (ncbs)
        cbs = nx_memdup(collectors, ncbs * sizeof *cbs);
    pthread_mutex_unlock(&registry_lock);
    for (size_t i = 0; i < ncbs; i++)
        cbs[i].fn(cbs[i].arg);
    free(cbs);

    pthread_mutex_lock(&registry_lock);
    for (size_t i = 0; i < nfamilies; i++)
        render_family(out, families[i]);
    render_process(out);
    pthread_mutex_unlock(&registry_lock);
}

static void family_free(struct nx_metric *m)
{
    for (size_t i = 0; i < m->nseries; i++) {
        struct series *s = m->order[i];
        for (size_t j = 0; j < m->nlabels; j++)
            free(s->values[j]);
        free(s->values);
        free(s->counts);
        free(s);
    }
    for (size_t j = 0; j < m->nlabels; j++)
        free(m->label_names[j]);
    free(m->label_names);
    free(m->order);
    free(m->table);
    free(m->buckets);
    free(m->name);
    free(m->help);
    pthread_mutex_destroy(&m->mu);
    free(m);
}

void nx_metrics_reset(void)
{
    pthread_mutex_lock(&registry_lock);
    for (size_t i = 0; i < nfamilies; i++)
        family_free(families[i]);
    free(families);
    families = NULL;
    nfamilies = families_cap = 0;
    /* Collectors feed families that no longer exist. */
    free(collectors);
    collectors = NULL;
    ncollectors = collectors_cap = 0;
    pthread_mutex_unlock(&registry_lock);
}
