/* ctl.c - a command's control dir (exec.c, serve.c): made, published in, removed. */
#include "ctl.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

/* path = dir/name; "" if that does not fit (callers make sure it does). */
static const char *ctl_path(char path[PATH_MAX], const char *dir, const char *name)
{
    if (snprintf(path, PATH_MAX, "%s/%s", dir, name) >= PATH_MAX)
        path[0] = '\0';
    return path;
}

int ph_ctl_make(const char *dir)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s", dir);
    for (char *p = path + 1;; p++) {
        if (*p != '/' && *p != '\0')
            continue;
        char c = *p;
        *p = '\0';
        int last = c == '\0';
        if (mkdir(path, last ? 0700 : 0777) == 0) {
            if (last && chmod(path, 0700) != 0) /* a umask can take owner bits too */
                return -1;
        } else if (errno != EEXIST) {
            return -1;
        }
        *p = c;
        if (last)
            break;
    }
    struct stat st;
    if (stat(dir, &st) != 0)
        return -1;
    if (!S_ISDIR(st.st_mode)) {
        errno = ENOTDIR;
        return -1;
    }
    return 0;
}

int ph_ctl_cancelled(const char *dir)
{
    char path[PATH_MAX];
    struct stat st;
    return stat(ctl_path(path, dir, "cancelled"), &st) == 0;
}

int ph_ctl_publish(const char *dir, const char *kind, pid_t id)
{
    char tmp[PATH_MAX], path[PATH_MAX], line[64];
    int n = snprintf(line, sizeof line, "%s:%ld\n", kind, (long)id);
    int fd = open(ctl_path(tmp, dir, "pid.tmp"), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    ssize_t w = write(fd, line, (size_t)n);
    if (close(fd) != 0 || w != n) {
        unlink(tmp);
        return -1;
    }
    return rename(tmp, ctl_path(path, dir, "pid"));
}

void ph_ctl_remove(const char *dir)
{
    static const char *const files[] = { "pid", "pid.tmp", "cancelled" };
    char path[PATH_MAX];
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++)
        unlink(ctl_path(path, dir, files[i]));
    rmdir(dir);
}
