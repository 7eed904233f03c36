/* args.h - command-line pieces the subcommands share (args.c). */
#ifndef PH_ARGS_H
#define PH_ARGS_H

/* "prog: <problem with arg>" and "usage: prog <synopsis>" on stderr; returns 2, the exit status
 * of a usage error. */
int ph_usage_error(const char *prog, const char *synopsis, const char *problem, const char *arg);

/* A decimal number in lo..hi (digits only: no sign, no space) -> *out: 0, or -1. */
int ph_parse_number(const char *s, unsigned long lo, unsigned long hi, unsigned long *out);

#endif
