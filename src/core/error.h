#ifndef NX_CORE_ERROR_H
#define NX_CORE_ERROR_H

/* Functions that can fail return 0 or one of these (negative). */
enum {
    NX_OK = 0,
    NX_EINVAL = -1,    /* bad argument or input */
    NX_EIO = -2,       /* I/O error */
    NX_ENOENT = -3,    /* not found */
    NX_EEXIST = -4,    /* already exists */
    NX_ERANGE = -5,    /* value out of range */
    NX_ETIMEDOUT = -6, /* deadline passed */
    NX_ECANCELED = -7, /* cancelled by the caller */
    NX_EPROTO = -8,    /* peer broke the protocol */
    NX_ETOOBIG = -9,   /* a size cap was exceeded */
    NX_EAGAIN = -10,   /* try again later */
    NX_ECONFIG = -11,  /* configuration invalid */
    NX_EBUSY = -12,    /* resource busy */
    NX_ECLOSED = -13,  /* closed or shutting down */
    NX_EDB = -14,      /* database error */
    NX_EHTTP = -15,    /* HTTP transport error */
    NX_EPERM = -16,    /* not permitted */
    NX_ENOTSUP = -17,  /* not supported */
    NX_EADDR = -18,    /* address in use or cannot bind */
};

const char *nx_strerror(int code);

#endif
