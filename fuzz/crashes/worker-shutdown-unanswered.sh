#!/usr/bin/env bash
# fuzz/crashes/worker-shutdown-unanswered.sh: reproduces the worker exiting without answering a
# shutdown request (and the requests it canceled) when stdin ends while it settles (see
# fuzz/README.md, "Findings").
# usage: fuzz/crashes/worker-shutdown-unanswered.sh [path/to/provider-host]   (default build/)
set -u
bin=${1:-$(dirname "$0")/../../build/provider-host}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# A regular file as stdin: its end is seen on the first loop turn after the requests are read.
cat >"$tmp/requests" <<'REQ'
{"jsonrpc":"2.0","id":1,"method":"health"}
{"jsonrpc":"2.0","id":2,"method":"environmentProbe","params":{"driverKey":"local","config":{}}}
{"jsonrpc":"2.0","id":3,"method":"shutdown"}
REQ
# TMPDIR: the probe's workspace, if it gets that far, goes in our temporary directory.
TMPDIR=$tmp timeout 30 "$bin" worker --provider local <"$tmp/requests" >"$tmp/replies" 2>/dev/null
echo "exit status $?; replies to ids: $(grep -o '"id":[0-9]*' "$tmp/replies" | tr '\n' ' ')"
if grep -q '"id":3' "$tmp/replies" && grep -q '"id":2' "$tmp/replies"; then
    echo fixed
    exit 0
fi
echo "bug: requests 2 (canceled probe) and/or 3 (shutdown) got no reply"
exit 1
