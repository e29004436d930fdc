#!/usr/bin/env bash
# Two ccstream builds alternating in one run: a backfill of an ingested FileLog
# (`process --until-caught-up`) with each build, ROUNDS times, under `taskset -c 0`.
# For telling whether a change pays on a noisy machine.
#
#   bench/backfill_ab.sh OLD_BIN NEW_BIN LOG_DIR [ROUNDS]
#
# LOG_DIR is a FileLog made with `ccstream ingest file --log LOG_DIR --partitions 4 FILE`.
# Every run writes to a directory of its own, all removed at the end: removing one right
# before the next run would have ext4 skip its just-freed inodes while the next run creates
# its ~1,400 files and directories (`recently_deleted`, several percent of a run).
# Prints wall, user, system seconds, peak RSS (KB) and records/s per run.
set -euo pipefail
old=$1; new=$2; log=$3; rounds=${4:-3}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
records() { # the processed-records line of a run
  grep -o 'processed [0-9]* records' "$1" | grep -o '[0-9]*'
}
for round in $(seq "$rounds"); do
  for side in old new; do
    bin=$old; [ "$side" = new ] && bin=$new
    data="$out/$side-$round"
    /usr/bin/time -f "%e %U %S %M" -o "$out/time" taskset -c 0 "$bin" process --log "$log" --data "$data" \
      --until-caught-up > /dev/null 2> "$out/stderr"
    read -r wall user sys rss < "$out/time"
    n=$(records "$out/stderr")
    printf '%-4s wall=%6.2fs user=%6.2fs sys=%5.2fs peak_rss=%7dKB %s records %.0f records/s\n' \
      "$side" "$wall" "$user" "$sys" "$rss" "$n" "$(echo "$n / $wall" | bc -l)"
  done
done
