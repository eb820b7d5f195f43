#ifndef NX_CORE_CLOCK_H
#define NX_CORE_CLOCK_H

#include <stdint.h>

/* Monotonic milliseconds / nanoseconds, for deadlines and durations. */
uint64_t nx_mono_ms(void);
uint64_t nx_mono_ns(void);
/* Wall-clock milliseconds since the Unix epoch. */
uint64_t nx_wall_ms(void);
/* RFC 3339 UTC with milliseconds ("2026-11-25T17:48:55.123Z") into out (>= 25 bytes). */
void nx_rfc3339(uint64_t wall_ms, char *out, unsigned long outlen);

#endif
