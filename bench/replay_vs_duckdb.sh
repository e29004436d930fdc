#!/usr/bin/env bash
# ccstream replay against DuckDB at its best on the oracle's outputs, side by side in one run:
# same Parquet file, same thread count, pinned to the same CPUs, runs alternating.
#
#   bench/replay_vs_duckdb.sh FILE.parquet [THREADS] [RUNS]
#
# Needs: target/release/ccstream (cargo build --release), python3 with duckdb, and the
# shared bench directory (SHARED_BENCH, default ../shared/bench). Prints one line per run:
# engine, threads, wall, user and system seconds (CPU time swings less than wall time on a
# shared VM), peak RSS (MB), and ccstream's own split. With HOLD=1, each round also runs
# ccstream holding every call to the end (`--settle-after-ms 0`, the replay before settling).
set -euo pipefail
file=$1; threads=${2:-1}; runs=${3:-3}
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${CCSTREAM_BIN:-${CARGO_TARGET_DIR:-$here/target}/release/ccstream}
shared=${SHARED_BENCH:-$here/../shared/bench}
cpus=$([ "$threads" = 1 ] && echo 0 || echo "0-$((threads - 1))")
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
measure() { # label, command...
  local label=$1; shift
  /usr/bin/time -f "%e %M %U %S" -o "$out/time" "$@" > "$out/stdout" 2> "$out/stderr"
  read -r wall rss user sys < "$out/time"
  printf '%-10s threads=%s wall=%6.2fs user=%6.2fs sys=%5.2fs peak_rss=%5.0fMB %s\n' "$label" "$threads" "$wall" \
    "$user" "$sys" "$((rss / 1024))" "$(grep -o 'derived tables.*' "$out/stderr" || true)"
}
for i in $(seq "$runs"); do
  rm -rf "$out/cc" "$out/duck"
  measure ccstream taskset -c "$cpus" "$bin" replay --input "$file" --data "$out/cc" --events-table false --threads "$threads"
  if [ "${HOLD:-0}" = 1 ]; then
    rm -rf "$out/cc"
    measure cc-hold taskset -c "$cpus" "$bin" replay --input "$file" --data "$out/cc" --events-table false \
      --threads "$threads" --settle-after-ms 0
  fi
  measure duckdb taskset -c "$cpus" python3 "$shared/duckdb_best.py" "$file" "$out/duck" "$threads"
done
rm -rf "$out/cc"
measure ccstream+ev taskset -c "$cpus" "$bin" replay --input "$file" --data "$out/cc" --events-table true --threads "$threads"
grep -o 'events table [0-9.]* s' "$out/stderr" || true
