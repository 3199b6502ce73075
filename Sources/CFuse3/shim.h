#ifndef CFUSE3_SHIM_H
#define CFUSE3_SHIM_H
/* One API level for the whole project: libfuse 3.12+ (opaque fuse_loop_config). */
#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>
#include <stdlib.h>
#include <string.h>

/* fuse_session_loop_mt is a function-like macro at this API level; Swift cannot call macros. */
static inline int cfuse_session_loop_mt(struct fuse_session *se, struct fuse_loop_config *cfg) {
    return fuse_session_loop_mt(se, cfg);
}
#endif
