#!/usr/bin/env bash
# fuzz/crashes/worker-spins-after-eof.sh: reproduces the worker's endless loop after stdin ends
# while replies still wait for a slow host (see fuzz/README.md, "Findings").
# usage: fuzz/crashes/worker-spins-after-eof.sh [path/to/provider-host]   (default build/)
set -u
bin=${1:-$(dirname "$0")/../../build/provider-host}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for i in $(seq 1 3000); do
    printf '{"jsonrpc":"2.0","id":%d,"method":"health"}\n' "$i"
done >"$tmp/requests"
# The host reads nothing for a second, so ~300 KB of replies are still queued at stdin's end.
start=$(date +%s)
timeout 15 "$bin" worker --provider local <"$tmp/requests" 2>/dev/null |
    (sleep 1; cat >"$tmp/replies")
rc=${PIPESTATUS[0]}
echo "exit status $rc after $(($(date +%s) - start)) s; $(wc -l <"$tmp/replies") of 3000 replies"
[ "$rc" -eq 0 ] && [ "$(wc -l <"$tmp/replies")" -eq 3000 ] && echo "fixed" && exit 0
echo "bug: the worker spun until timeout killed it (status 124)"
exit 1
