#!/bin/bash
# bench/live_commits.sh BIN LABEL PORT: runs `BIN demo --live` (200,000 calls at speed 300)
# for 240 s and prints, every 30 s, the mean time of the commits in that window (from
# ccstream_processor_commit_duration_seconds), compactions so far, and the `events` files and
# log entries on disk. Data under /tmp/live_LABEL (replaced).
B=$1; L=$2; P=$3
rm -rf /tmp/live_$L
$B demo --dir /tmp/live_$L --calls 200000 --speed 300 --live --metrics-listen 127.0.0.1:$P > /tmp/live_$L.out 2>&1 &
PID=$!
ps=0; pc=0
for i in $(seq 1 8); do
  sleep 30
  m=$(curl -s 127.0.0.1:$P/metrics)
  s=$(echo "$m" | grep "^ccstream_processor_commit_duration_seconds_sum" | awk '{print $2}')
  c=$(echo "$m" | grep "^ccstream_processor_commit_duration_seconds_count" | awk '{print $2}')
  k=$(echo "$m" | grep "^ccstream_processor_compactions_total" | awk '{print $2}')
  echo "$L t=$((i*30))s commits=$c window_mean_ms=$(python3 -c "print(round(1000*(($s or 0)-$ps)/max(1,($c or 0)-$pc),1))" 2>/dev/null) compactions=${k:-n/a} files=$(find /tmp/live_$L/data/events -name '*.parquet' 2>/dev/null | wc -l) log=$(ls /tmp/live_$L/data/events/_delta_log 2>/dev/null | wc -l)"
  ps=${s:-0}; pc=${c:-0}
done
kill -INT $PID; wait $PID
