#include "core/error.h"

const char *nx_strerror(int code)
{
    switch (code) {
    case NX_OK: return "success";
    case NX_EINVAL: return "invalid argument";
    case NX_EIO: return "I/O error";
    case NX_ENOENT: return "not found";
    case NX_EEXIST: return "already exists";
    case NX_ERANGE: return "out of range";
    case NX_ETIMEDOUT: return "timed out";
    case NX_ECANCELED: return "cancelled";
    case NX_EPROTO: return "protocol error";
    case NX_ETOOBIG: return "too large";
    case NX_EAGAIN: return "try again";
    case NX_ECONFIG: return "invalid configuration";
    case NX_EBUSY: return "busy";
    case NX_ECLOSED: return "closed";
    case NX_EDB: return "database error";
    case NX_EHTTP: return "HTTP error";
    case NX_EPERM: return "not permitted";
    case NX_ENOTSUP: return "not supported";
    case NX_EADDR: return "cannot bind address";
    }
    return "unknown error";
}
