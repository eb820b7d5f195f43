#ifndef NX_CORE_METRICS_H
#define NX_CORE_METRICS_H

#include <stddef.h>

#include "core/buf.h"

/* A small metrics registry: counters, gauges and histograms with labels, rendered in the
 * Prometheus text format (0.0.4). Families are registered once (usually at start-up) and live
 * for the process; updates are thread-safe. */

struct nx_metric;

/* label_names: NULL-terminated array (or NULL for none); copied. Registering the same name twice
 * returns the first family (its type and labels must match). */
struct nx_metric *nx_metric_counter(const char *name, const char *help,
                                    const char *const *label_names);
struct nx_metric *nx_metric_gauge(const char *name, const char *help,
                                  const char *const *label_names);
/* buckets: ascending upper bounds without +Inf. */
struct nx_metric *nx_metric_histogram(const char *name, const char *help,
                                      const char *const *label_names, const double *buckets,
                                      size_t nbuckets);

/* label_values: as many as the family has label names (NULL when it has none). */
void nx_counter_add(struct nx_metric *m, const char *const *label_values, double v);
void nx_gauge_set(struct nx_metric *m, const char *const *label_values, double v);
void nx_gauge_add(struct nx_metric *m, const char *const *label_values, double v);
/* Drops a gauge's series (a provider or agent no longer configured): it is not rendered again
 * until it is set again. */
void nx_gauge_remove(struct nx_metric *m, const char *const *label_values);
void nx_histogram_observe(struct nx_metric *m, const char *const *label_values, double v);

/* Called at each render, to sample values that are cheaper to read than to track. */
typedef void (*nx_metrics_collect_fn)(void *arg);
void nx_metrics_on_collect(nx_metrics_collect_fn fn, void *arg);

/* Every family plus process metrics (process_resident_memory_bytes, process_cpu_seconds_total,
 * process_open_fds, process_max_fds, process_start_time_seconds, process_virtual_memory_bytes). */
void nx_metrics_render(struct nx_buf *out);

/* Drops every family (tests). */
void nx_metrics_reset(void);

#endif
