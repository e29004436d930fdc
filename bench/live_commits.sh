#!/bin/bash
# bench/live_commits.sh BIN LABEL PORT [SECONDS [CALLS [SPEED [DAYS]]]]: runs
# `BIN demo --live` (CALLS calls over DAYS days at SPEED; defaults 200,000, 300 and 1) for
# SECONDS (default 240) and prints, every 30 s, the mean time of the commits in that window
# (from ccstream_processor_commit_duration_seconds), compactions so far, calls and interval
# partials held, the process's resident memory, the `events` files and log entries on disk.
# Data under /tmp/live_LABEL (replaced).
B=$1; L=$2; P=$3; SECS=${4:-240}; CALLS=${5:-200000}; SPEED=${6:-300}; DAYS=${7:-1}
rm -rf /tmp/live_$L
days_arg=()
[ "$DAYS" != 1 ] && days_arg=(--days "$DAYS")
$B demo --dir /tmp/live_$L --calls "$CALLS" "${days_arg[@]}" --speed "$SPEED" --live --metrics-listen 127.0.0.1:$P > /tmp/live_$L.out 2>&1 &
PID=$!
ps=0; pc=0
sum() { echo "$1" | grep "^$2" | awk '{s += $2} END {print s + 0}'; }
for i in $(seq 1 $((SECS / 30))); do
  sleep 30
  m=$(curl -s 127.0.0.1:$P/metrics)
  s=$(sum "$m" ccstream_processor_commit_duration_seconds_sum)
  c=$(sum "$m" ccstream_processor_commit_duration_seconds_count)
  k=$(sum "$m" ccstream_processor_compactions_total)
  rss=$(awk '/VmRSS/ {print int($2 / 1024)}' /proc/$PID/status 2>/dev/null)
  echo "$L t=$((i*30))s commits=$c window_mean_ms=$(python3 -c "print(round(1000*(($s or 0)-$ps)/max(1,($c or 0)-$pc),1))" 2>/dev/null) compactions=$k held_calls=$(sum "$m" ccstream_processor_held_calls) held_partials=$(sum "$m" ccstream_processor_held_partials) rss_mb=${rss:-?} files=$(find /tmp/live_$L/data/events -name '*.parquet' 2>/dev/null | wc -l) log=$(ls /tmp/live_$L/data/events/_delta_log 2>/dev/null | wc -l)"
  ps=${s:-0}; pc=${c:-0}
done
kill -INT $PID; wait $PID
