#!/usr/bin/env python3
"""Freshness: time from a durable append to the event showing in /metrics and in SQL.

    python3 bench/freshness.py --ccstream target/release/ccstream [--samples 50] [--commit-interval-ms 1000]

Starts `ccstream process` on a new FileLog with /metrics on a free port, then, once per
sample, appends one new complete call (`call_queued`, then `call_abandoned`: calls are
written when they complete) with `ccstream ingest file` and polls
until `ccstream_kpi_offered_calls_total` counts it (metrics freshness) and until
`ccstream sql` sees it in `call_facts` (SQL freshness). The clock starts when the ingest
command returns (the append is durable then). Prints p50/p99 of both.
"""
import argparse, json, os, subprocess, tempfile, time, urllib.request, uuid


def offered(addr):
    text = urllib.request.urlopen(f"http://{addr}/metrics", timeout=5).read().decode()
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith("ccstream_kpi_offered_calls_total{"))


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ccstream", required=True)
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--commit-interval-ms", type=int, default=1000)
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="ccfresh-")
    log, data, addr_file = f"{d}/log", f"{d}/data", f"{d}/addr"
    now = lambda: time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    ev = lambda call, kind="call_queued": {"event_id": str(uuid.uuid4()), "tenant_id": "t1", "call_id": call,
                                           "queue_id": "q1", "event_type": kind, "occurred_at": now()}
    lines = lambda call: json.dumps(ev(call)) + "\n" + json.dumps(ev(call, "call_abandoned")) + "\n"
    first = f"{d}/e0.jsonl"
    open(first, "w").write(lines(str(uuid.uuid4())))
    subprocess.run([a.ccstream, "ingest", "file", "--log", log, "--partitions", "4", first], check=True, capture_output=True)
    proc = subprocess.Popen([a.ccstream, "process", "--log", log, "--data", data, "--metrics-listen", "127.0.0.1:0",
                             "--listen-file", addr_file, "--commit-interval-ms", str(a.commit_interval_ms)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not (os.path.exists(addr_file) and open(addr_file).read().endswith("\n")):
            time.sleep(0.01)
        addr = open(addr_file).read().strip()
        while offered(addr) < 1:
            time.sleep(0.01)
        m, s = [], []
        for i in range(a.samples):
            call = str(uuid.uuid4())
            f = f"{d}/e{i + 1}.jsonl"
            open(f, "w").write(lines(call))
            before = offered(addr)
            subprocess.run([a.ccstream, "ingest", "file", "--log", log, f], check=True, capture_output=True)
            t0 = time.monotonic()
            while offered(addr) <= before:
                time.sleep(0.005)
            m.append(time.monotonic() - t0)
            while True:
                out = subprocess.run([a.ccstream, "sql", "--data", data, "--format", "csv",
                                      f"SELECT count(*) FROM call_facts WHERE call_id = '{call}'"],
                                     capture_output=True, text=True)
                if out.returncode == 0 and out.stdout.splitlines()[-1].strip() == "1":
                    break
            s.append(time.monotonic() - t0)
        print(f"metrics freshness: p50 {pct(m, .5) * 1000:.0f} ms, p99 {pct(m, .99) * 1000:.0f} ms ({len(m)} samples)")
        print(f"SQL freshness:     p50 {pct(s, .5) * 1000:.0f} ms, p99 {pct(s, .99) * 1000:.0f} ms "
              f"(commit interval {a.commit_interval_ms} ms; includes starting `ccstream sql` per check)")
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
