#include <errno.h>
#include <unistd.h>

#include "core/fd.h"

int nx_write_all(int fd, const void *p, size_t len)
{
    const char *at = p;

    while (len > 0) {
        ssize_t n = write(fd, at, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            if (n == 0)
                errno = EIO;
            return -1;
        }
        at += n;
        len -= (size_t)n;
    }
    return 0;
}
