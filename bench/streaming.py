#!/usr/bin/env python3
"""`process` as a long-running service over a log that already holds a backlog: wall time
to fold and commit all of it, peak RSS, and the most calls held in memory at once.

    python3 bench/streaming.py --ccstream target/release/ccstream --log /tmp/ccbench/flog \
        --records 6717582 --data /tmp/ccbench/sdata [--cpu 0] [-- extra process flags]

Unlike `--until-caught-up` (one commit at the end, every call in memory until then),
`process` here commits at its interval, writes calls as they complete and evicts them past
the state retention, so memory follows the calls held, not the calls read. The run ends
when `/metrics` shows every record read and a commit after that; then Ctrl-C (a clean
stop). Peak RSS comes from `/usr/bin/time -v`.
"""
import argparse, os, re, subprocess, tempfile, time, urllib.request


def scrape(addr):
    text = urllib.request.urlopen(f"http://{addr}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, value = line.rsplit(" ", 1)
        base = name.split("{")[0]
        out[base] = out.get(base, 0.0) + float(value)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ccstream", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--records", type=int, required=True, help="records in the log")
    ap.add_argument("--cpu", default="0", help="taskset CPU list")
    ap.add_argument("extra", nargs="*")
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="ccstream-bench-")
    addr_file, time_file = f"{d}/addr", f"{d}/time"
    cmd = ["/usr/bin/time", "-v", "-o", time_file, "taskset", "-c", a.cpu, a.ccstream, "process", "--log", a.log,
           "--data", a.data, "--metrics-listen", "127.0.0.1:0", "--listen-file", addr_file] + a.extra
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while not (os.path.exists(addr_file) and open(addr_file).read().endswith("\n")):
        time.sleep(0.05)
    addr = open(addr_file).read().strip()
    held_max, read_at, commits_at_read = 0.0, None, None
    while True:
        m = scrape(addr)
        held_max = max(held_max, m.get("ccstream_processor_held_calls", 0.0))
        if read_at is None and m.get("ccstream_processor_records_total", 0) >= a.records:
            read_at, commits_at_read = time.monotonic(), m.get("ccstream_processor_commits_total", 0)
        if read_at is not None and m.get("ccstream_processor_commits_total", 0) > commits_at_read:
            done = time.monotonic()
            break
        time.sleep(0.1)
    # `/usr/bin/time` ignores SIGINT: Ctrl-C goes to the processor itself.
    subprocess.run(["pkill", "-INT", "-f", "--", f"listen-file {addr_file}"])
    _, err = proc.communicate()
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", open(time_file).read()).group(1))
    print(f"records {a.records}: read by {read_at - t0:.1f} s, committed by {done - t0:.1f} s "
          f"({a.records / (done - t0):.0f} records/s); peak RSS {rss_kb / 1e6:.2f} GB; "
          f"most calls held at once {held_max:.0f}")
    print("\n".join(l for l in err.splitlines() if l.startswith("processed")))


if __name__ == "__main__":
    main()
