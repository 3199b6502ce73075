#ifndef CTWINSHIMS_H
#define CTWINSHIMS_H
/* Constants and wrappers that Swift's Glibc module cannot see without _GNU_SOURCE,
 * exported as plain functions (the pattern NIO's CNIOLinux uses). */
/* Only plain C types here: including libc headers would give Swift a second, distinct
 * `struct stat` type next to Glibc's. */
#include <stddef.h>
#include <stdint.h>

int twin_O_PATH(void);
int twin_O_DIRECT(void);
int twin_O_TMPFILE(void);
int twin_AT_EMPTY_PATH(void);
long twin_UTIME_NOW(void);
long twin_UTIME_OMIT(void);
unsigned int twin_RENAME_NOREPLACE(void);
unsigned int twin_RENAME_EXCHANGE(void);
int twin_FALLOC_FL_KEEP_SIZE(void);
int twin_renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, unsigned int flags);
int twin_fallocate(int fd, int mode, int64_t offset, int64_t len);
/* O_NOFOLLOW|O_CLOEXEC-safe open of a directory, resolving strictly beneath dirfd
 * (openat2 RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS|RESOLVE_NO_MAGICLINKS): a path can never escape the brick. */
int twin_open_beneath(int dirfd, const char *path, int flags, unsigned int mode);
/* Closes every descriptor from `first` on (a daemon must not hold what its starter passed it). */
int twin_close_from(unsigned int first);
/* xattr calls (sys/xattr.h is not in Swift's Glibc module). */
long twin_lgetxattr(const char *path, const char *name, void *value, size_t size);
/* An entry of directory `dirfd`: getxattrat(2), or lgetxattr through /proc before Linux 6.13. */
long twin_getxattr_at(int dirfd, const char *name, const char *attr, void *value, size_t size);
long twin_fgetxattr(int fd, const char *name, void *value, size_t size);
int twin_lsetxattr(const char *path, const char *name, const void *value, size_t size, int flags);
int twin_fsetxattr(int fd, const char *name, const void *value, size_t size, int flags);
long twin_llistxattr(const char *path, char *list, size_t size);
int twin_lremovexattr(const char *path, const char *name);
/* Following variants, for /proc/self/fd/N paths of O_PATH descriptors (as passthrough_ll does). */
long twin_getxattr(const char *path, const char *name, void *value, size_t size);
int twin_setxattr(const char *path, const char *name, const void *value, size_t size, int flags);
long twin_listxattr(const char *path, char *list, size_t size);
int twin_removexattr(const char *path, const char *name);
#endif
