#include "CTwinShims.h"
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/openat2.h>
#include <linux/falloc.h>
#include <sys/xattr.h>
#include <errno.h>
#include <stdatomic.h>

int twin_O_PATH(void) { return O_PATH; }
int twin_O_DIRECT(void) { return O_DIRECT; }
int twin_O_TMPFILE(void) { return O_TMPFILE; }
int twin_AT_EMPTY_PATH(void) { return AT_EMPTY_PATH; }
long twin_UTIME_NOW(void) { return UTIME_NOW; }
long twin_UTIME_OMIT(void) { return UTIME_OMIT; }
unsigned int twin_RENAME_NOREPLACE(void) { return RENAME_NOREPLACE; }
unsigned int twin_RENAME_EXCHANGE(void) { return RENAME_EXCHANGE; }
int twin_FALLOC_FL_KEEP_SIZE(void) { return FALLOC_FL_KEEP_SIZE; }

int twin_renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, unsigned int flags) {
    return renameat2(olddirfd, oldpath, newdirfd, newpath, flags);
}

int twin_fallocate(int fd, int mode, int64_t offset, int64_t len) {
    return fallocate(fd, mode, offset, len);
}

int twin_open_beneath(int dirfd, const char *path, int flags, unsigned int mode) {
    struct open_how how = {0};
    how.flags = (unsigned long long)(flags | O_CLOEXEC);
    how.mode = (flags & O_CREAT) ? mode : 0;
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
    return (int)syscall(SYS_openat2, dirfd, path, &how, sizeof(how));
}

long twin_lgetxattr(const char *path, const char *name, void *value, size_t size) { return lgetxattr(path, name, value, size); }
long twin_fgetxattr(int fd, const char *name, void *value, size_t size) { return fgetxattr(fd, name, value, size); }
int twin_lsetxattr(const char *path, const char *name, const void *value, size_t size, int flags) { return lsetxattr(path, name, value, size, flags); }
int twin_fsetxattr(int fd, const char *name, const void *value, size_t size, int flags) { return fsetxattr(fd, name, value, size, flags); }
long twin_llistxattr(const char *path, char *list, size_t size) { return llistxattr(path, list, size); }
int twin_lremovexattr(const char *path, const char *name) { return lremovexattr(path, name); }

int twin_close_from(unsigned int first) {
    return (int)syscall(SYS_close_range, first, ~0U, 0);
}
long twin_getxattr(const char *path, const char *name, void *value, size_t size) { return getxattr(path, name, value, size); }
int twin_setxattr(const char *path, const char *name, const void *value, size_t size, int flags) { return setxattr(path, name, value, size, flags); }
long twin_listxattr(const char *path, char *list, size_t size) { return listxattr(path, list, size); }
int twin_removexattr(const char *path, const char *name) { return removexattr(path, name); }

/* getxattrat(2) (Linux 6.13): an entry's xattr by directory fd and name, without the walk
 * through /proc/self/fd/N/name that lgetxattr needs (most of a large readdir's time). The
 * same number on every architecture; older kernels answer ENOSYS, then the /proc path is used. */
#ifndef __NR_getxattrat
#define __NR_getxattrat 464
#endif
struct twin_xattr_args { uint64_t value; uint32_t size; uint32_t flags; };
static atomic_int twin_no_getxattrat; /* set once on ENOSYS */

long twin_getxattr_at(int dirfd, const char *name, const char *attr, void *value, size_t size) {
    if (!twin_no_getxattrat) {
        struct twin_xattr_args args = { (uint64_t)(uintptr_t)value, (uint32_t)size, 0 };
        long n = syscall(__NR_getxattrat, dirfd, name, AT_SYMLINK_NOFOLLOW, attr, &args, sizeof(args));
        if (n >= 0 || errno != ENOSYS) return n;
        twin_no_getxattrat = 1;
    }
    char path[64 + 256];
    if (snprintf(path, sizeof(path), "/proc/self/fd/%d/%s", dirfd, name) >= (int)sizeof(path)) { errno = ENAMETOOLONG; return -1; }
    return lgetxattr(path, attr, value, size);
}
