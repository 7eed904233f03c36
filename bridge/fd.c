/* fd.c - descriptor chores: the standard three, the open-files limit, closing, pipe contents. */
#include "fd.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <unistd.h>

void ph_fd_std_ensure(void)
{
    for (int fd = 0; fd <= 2; fd++)
        if (fcntl(fd, F_GETFD) < 0 && errno == EBADF)
            open("/dev/null", O_RDWR); /* takes the lowest free number: fd */
}

void ph_fd_limit_raise(unsigned long want)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= (rlim_t)want)
        return;
    rl.rlim_cur =
        rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= (rlim_t)want ? (rlim_t)want : rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
}

void ph_fd_close(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

size_t ph_fd_pending(int fd)
{
    int n = 0;
    if (fd >= 0 && ioctl(fd, FIONREAD, &n) == 0 && n > 0)
        return (size_t)n;
    return 0;
}
