/* args.c - command-line pieces the subcommands share: usage errors and option numbers. */
#include "args.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

int ph_usage_error(const char *prog, const char *synopsis, const char *problem, const char *arg)
{
    fprintf(stderr, "%s: ", prog);
    fprintf(stderr, problem, arg);
    fprintf(stderr, "\nusage: %s %s\n", prog, synopsis);
    return 2;
}

int ph_parse_number(const char *s, unsigned long lo, unsigned long hi, unsigned long *out)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    /* strtoul alone would take " 1", "+1" and "-1" (as a huge number) */
    if (*s < '0' || *s > '9' || *end != '\0' || errno != 0 || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}
