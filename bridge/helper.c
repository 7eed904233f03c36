/* helper.c - ph-sandbox-helper, the static binary the host copies into a sandbox: the command
 * line, which hands each subcommand to its own file (relay.c, exec.c, serve.c). */
#include "exec.h"
#include "relay.h"
#include "serve.h"

#include <stdio.h>
#include <string.h>

#ifndef PH_VERSION
#define PH_VERSION "0.0.0"
#endif

#define PROG "ph-sandbox-helper"

static void usage(FILE *out)
{
    fputs("usage: " PROG " relay [--port N] [--max-streams N]\n"
          "       " PROG " exec --ctl DIR [--timeout SECONDS] -- PROGRAM [ARGS...]\n"
          "       " PROG " serve --ctl-base DIR [--max-commands N]\n"
          "       " PROG " --version\n"
          "\n"
          "  relay   listen on 127.0.0.1:N (N = 0 or absent: a free port) and carry each\n"
          "          connection as a stream of frames on stdin/stdout (bridge/frame.h);\n"
          "          beyond --max-streams (default 1024) connections are closed at once\n"
          "  exec    run PROGRAM in a process group of its own, published as \"group:<pgid>\"\n"
          "          in DIR/pid for a cancel; a DIR/cancelled file stops it before it starts;\n"
          "          stdin is the command's, its stdout and stderr are relayed; after\n"
          "          --timeout the group gets TERM, then KILL 2 s later, and the exit is 124;\n"
          "          otherwise the exit status is the command's (128 + N for a signal N)\n"
          "  serve   run the commands the host sends as frames on stdin/stdout (bridge/frame.h:\n"
          "          EXEC, DATA, FIN, CREDIT, SIGNAL, RESET in; DATA, STDERR, EXIT out), many at\n"
          "          once (--max-commands, default 256), each as exec runs one, with its\n"
          "          control dir in DIR; its stdin's end stops them all (TERM, then KILL)\n",
          out);
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "--version") == 0) {
        printf(PROG " " PH_VERSION " (frames PHRELAY1)\n");
        return 0;
    }
    if (argc == 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        usage(stdout);
        return 0;
    }
    if (argc >= 2 && strcmp(argv[1], "relay") == 0)
        return ph_relay_main(PROG " relay", argc - 1, argv + 1);
    if (argc >= 2 && strcmp(argv[1], "exec") == 0)
        return ph_exec_main(PROG " exec", argc - 1, argv + 1);
    if (argc >= 2 && strcmp(argv[1], "serve") == 0)
        return ph_serve_main(PROG " serve", argc - 1, argv + 1);
    usage(stderr);
    return 2;
}
