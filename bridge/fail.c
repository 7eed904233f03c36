/* fail.c - messages on stderr, and the way out each subcommand supplies. */

/* The shared files (bytes.c, outq.c, input.c) die through here, so that each subcommand still
 * cleans up its own way: the relay closes its sockets, the server stops its commands. */
#include "fail.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

static const char *fail_prog = "ph-sandbox-helper"; /* until ph_fail_init */
static void (*fail_leave)(int status) = exit;       /* likewise */

void ph_fail_init(const char *prog, void (*leave)(int status))
{
    fail_prog = prog;
    fail_leave = leave;
}

static void vsay(const char *fmt, va_list ap)
{
    char line[512];
    vsnprintf(line, sizeof line, fmt, ap);
    fprintf(stderr, "%s: %s\n", fail_prog, line);
}

void ph_say(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsay(fmt, ap);
    va_end(ap);
}

_Noreturn void ph_leave(int status)
{
    fail_leave(status);
    exit(status); /* leave does not return: this only tells the compiler so */
}

_Noreturn void ph_die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsay(fmt, ap);
    va_end(ap);
    ph_leave(1);
}
