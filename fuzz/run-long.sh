#!/bin/sh
# Long coverage-guided runs (RELIABILITY.md, "Fuzzing"): each target for RUNS inputs (default 10 million),
# bounded by MAX_TIME seconds, at the lowest priority. Usage: fuzz/run-long.sh TARGET...
# New inputs go to $WORK/<target> (not the committed corpus); crashes to $WORK/<target>-crash-*.
set -eu
cd "$(dirname "$0")"
RUNS=${RUNS:-10000000}
MAX_TIME=${MAX_TIME:-5400}
WORK=${WORK:-/tmp/havip-fuzz}
BIN=${BIN:-target/x86_64-unknown-linux-gnu/release}
for t in "$@"; do
    mkdir -p "$WORK/$t"
    extra=""
    [ "$t" = config ] && extra="-max_len=4096"
    nice -n 19 "$BIN/$t" -runs="$RUNS" -max_total_time="$MAX_TIME" -timeout=10 -print_final_stats=1 \
        -artifact_prefix="$WORK/$t-" $extra "$WORK/$t" "corpus/$t" > "$WORK/$t.log" 2>&1 \
        && echo "$t: done" || echo "$t: FAILED (exit $?), see $WORK/$t.log"
done
