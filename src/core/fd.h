#ifndef NX_CORE_FD_H
#define NX_CORE_FD_H

#include <stddef.h>

/* Writes all len bytes of p to fd, going on after EINTR and short writes. 0, or -1 with errno
 * set (EIO when the file took nothing). */
int nx_write_all(int fd, const void *p, size_t len);

#endif
