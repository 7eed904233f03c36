/* helper.c - ph-sandbox-helper, the static binary the host copies into a sandbox: the command
 * line, which hands each subcommand to its own file. */
#include "relay.h"

#include <stdio.h>
#include <string.h>

#ifndef PH_VERSION
#define PH_VERSION "0.0.0"
#endif

#define PROG "ph-sandbox-helper"

static void usage(FILE *out)
{
    fputs("usage: " PROG " relay [--port N] [--max-streams N]\n"
          "       " PROG " --version\n"
          "\n"
          "  relay   listen on 127.0.0.1:N (N = 0 or absent: a free port) and carry each\n"
          "          connection as a stream of frames on stdin/stdout (bridge/frame.h);\n"
          "          beyond --max-streams (default 1024) connections are closed at once\n",
          out);
    /* exec (run one command: own process group, timeout, output relayed) comes here. */
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
    /* Future subcommands (exec) are dispatched here, each in its own file like relay.c. */
    usage(stderr);
    return 2;
}
