#!/usr/bin/env bash
# Two ccstream builds and DuckDB, alternating in one run: `replay --threads 1` of FILE with
# each build, then DuckDB at its best on the oracle's outputs, ROUNDS times, all under
# `taskset -c 0`. For telling whether a change pays on a noisy machine.
#
#   bench/replay_ab.sh OLD_BIN NEW_BIN FILE.parquet [ROUNDS]
#
# DUCK=0 leaves DuckDB out. Prints wall, user, system seconds and peak RSS (KB) per run, with
# ccstream's own split.
set -euo pipefail
old=$1; new=$2; file=$3; rounds=${4:-3}
here=$(cd "$(dirname "$0")/.." && pwd)
shared=${SHARED_BENCH:-$here/../shared/bench}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
run() { # label, command...
  local label=$1; shift
  /usr/bin/time -f "%e %U %S %M" -o "$out/time" "$@" > /dev/null 2> "$out/stderr"
  read -r wall user sys rss < "$out/time"
  printf '%-7s wall=%6.2fs user=%6.2fs sys=%5.2fs peak_rss=%7dKB %s\n' "$label" "$wall" "$user" "$sys" "$rss" \
    "$(grep -o 'read .* write [0-9.]* s' "$out/stderr" || true)"
}
for _ in $(seq "$rounds"); do
  for side in old new; do
    bin=$old; [ "$side" = new ] && bin=$new
    rm -rf "$out/cc"
    run "$side" taskset -c 0 "$bin" replay --input "$file" --data "$out/cc" --events-table false --threads 1 \
      --progress never
  done
  if [ "${DUCK:-1}" = 1 ]; then
    rm -rf "$out/duck"
    run duckdb taskset -c 0 python3 "$shared/duckdb_best.py" "$file" "$out/duck" 1
  fi
done
