#!/usr/bin/env bash
# End-to-end through the event log, beside the log's own rate, in one run:
#   1. `ccstream ingest file` of FILE into LOG (4 partitions),
#   2. the log read back alone, no processing (the `log_throughput` example's read mode),
#   3. `ccstream process --until-caught-up` of LOG into a fresh data directory,
# steps 2 and 3 pinned to one CPU (`taskset -c 0`). Prints wall, user, system seconds, peak
# RSS (KB) and records/s per step.
#
#   bench/log_vs_process.sh FILE LOG_URL
#
# LOG_URL: file://DIR (DIR must not exist) or kafka://HOST:PORT/TOPIC?seek=scan (a topic
# that does not exist yet; `scripts/with-broker` starts a broker and exports its address in
# CCSTREAM_KAFKA_BROKERS). Needs the release build of ccstream and of the example:
#   cargo build --release && cargo build --release -p ccstream-eventlog --example log_throughput
set -euo pipefail
file=$1; log=$2
here=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$here/target}
bin=${CCSTREAM_BIN:-$target/release/ccstream}
thr=$target/release/examples/log_throughput
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
measure() { # label, command...
  local label=$1; shift
  /usr/bin/time -f "%e %U %S %M" -o "$out/time" "$@" > "$out/stdout" 2> "$out/stderr" ||
    { cat "$out/stderr" >&2; exit 1; }
  read -r wall user sys rss < "$out/time"
  printf '%-8s wall=%6.2fs user=%6.2fs sys=%5.2fs peak_rss=%7dKB ' "$label" "$wall" "$user" "$sys" "$rss"
}
measure ingest "$bin" ingest file --log "$log" --partitions 4 --progress never "$file"
grep -o '[0-9]* records ([0-9]* events.*records/s)' "$out/stderr"
measure read taskset -c 0 "$thr" "$log" read
cat "$out/stdout"
measure process taskset -c 0 "$bin" process --log "$log" --data "$out/data" --until-caught-up
grep -o 'processed [0-9]* records.*records/s)' "$out/stderr"
