#!/usr/bin/env python3
"""Load and latency of `ccstream serve` over the Postgres wire, beside DuckDB on the same
Parquet files in the same run.

  bench/serve_load.py --data DIR [--seconds 20] [--clients 1,8,32] [--threads 2]

Starts `ccstream serve` (CCSTREAM_BIN, default target/release/ccstream) on port 0 over DIR
(tables written by `ccstream replay`), pinned with taskset to the CPUs given by
--cpus (this script and DuckDB on the same CPUs), and measures three queries:

  dashboard  one tenant, one day: SL and ASA per queue per 15 minutes (interval_metrics)
  rollup     30 days per queue (call_facts)
  scan       a full-scan ad hoc aggregate over call_facts

For each client count: p50/p99 latency and queries/s of the dashboard query over
psycopg (one connection per client thread, the query prepared as Grafana's driver sends
it). Then rollup and scan, alternating ccstream and DuckDB (`read_parquet` over the same
files, the same thread count), N rounds, the median of each. The server's peak RSS comes
from /proc. Load goes to loopback only and stops by itself.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import duckdb
import psycopg

DASHBOARD = """
SELECT queue_id, interval_start, service_level, asa_s
FROM interval_metrics
WHERE tenant_id = %(tenant)s AND interval_start >= %(day)s::timestamptz
  AND interval_start < %(day)s::timestamptz + INTERVAL '1 day'
ORDER BY queue_id, interval_start"""

ROLLUP = """
SELECT tenant_id, queue_id, count(*) AS offered, count(*) FILTER (WHERE answered) AS answered,
       avg(wait_ms) FILTER (WHERE answered) AS asa_ms, sum(handle_ms) AS handle_ms
FROM call_facts
WHERE queued_at >= TIMESTAMPTZ '{start}' AND queued_at < TIMESTAMPTZ '{start}' + INTERVAL '30 days'
GROUP BY tenant_id, queue_id ORDER BY tenant_id, queue_id"""

SCAN = """
SELECT tenant_id, count(*) AS calls, sum(CASE WHEN answered THEN 1 ELSE 0 END) AS answered,
       max(wait_ms) AS max_wait_ms, avg(handle_ms) AS aht_ms, count(DISTINCT final_queue_id) AS queues
FROM call_facts GROUP BY tenant_id ORDER BY tenant_id"""


def start_server(binary, data, cfg_dir, cpus):
    pw = "bench-password"
    hashed = subprocess.run([binary, "secret", "hash"], input=pw, capture_output=True, text=True, check=True).stdout.strip()
    cfg = os.path.join(cfg_dir, "serve.toml")
    with open(cfg, "w") as f:
        f.write(f'[serve]\nmax_rows = 1000000000\nquery_threads = {args.threads}\ntarget_partitions = {args.threads}\n'
                f'[[serve.principals]]\nname = "bench"\nrole = "admin"\ntenants = ["*"]\npassword_hash = "{hashed}"\n')
    listen = os.path.join(cfg_dir, "listen")
    cmd = ["taskset", "-c", cpus, binary, "serve", "--data", data, "--config", cfg,
           "--pg-listen", "127.0.0.1:0", "--listen-file", listen]
    err = open(os.path.join(cfg_dir, "stderr"), "w")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.time() + 120
    while time.time() < deadline:
        if os.path.exists(listen):
            addr = open(listen).read().split()[1]
            host, port = addr.rsplit(":", 1)
            return proc, f"host={host} port={port} user=bench password={pw} dbname=ccstream"
        if proc.poll() is not None:
            sys.exit(f"serve exited: {open(os.path.join(cfg_dir, 'stderr')).read()}")
        time.sleep(0.05)
    sys.exit("serve did not listen")


def delta_files(table_dir):
    """The Parquet files of a Delta table's latest version (add minus remove actions)."""
    log = os.path.join(table_dir, "_delta_log")
    live = set()
    for name in sorted(n for n in os.listdir(log) if n.endswith(".json")):
        with open(os.path.join(log, name)) as f:
            for line in f:
                action = json.loads(line)
                if "add" in action:
                    live.add(action["add"]["path"])
                elif "remove" in action:
                    live.discard(action["remove"]["path"])
    return sorted(os.path.join(table_dir, p) for p in live)


def peak_rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def load(dsn, clients, seconds, params):
    latencies, errors = [], []
    lock = threading.Lock()
    stop = time.time() + seconds

    def worker():
        mine = []
        with psycopg.connect(dsn, autocommit=True) as conn:
            while time.time() < stop:
                t = time.perf_counter()
                try:
                    conn.execute(DASHBOARD, params, prepare=True).fetchall()
                except Exception as e:  # counted, not fatal: the report says how many
                    errors.append(str(e))
                    continue
                mine.append(time.perf_counter() - t)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latencies.sort()
    q = lambda p: latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000
    return {"clients": clients, "queries": len(latencies), "qps": len(latencies) / seconds,
            "p50_ms": q(0.50), "p99_ms": q(0.99), "errors": len(errors)}


def timed(f):
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cpus", default="0,1")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    binary = os.environ.get("CCSTREAM_BIN", "target/release/ccstream")
    # DuckDB runs in this process: on the server's CPUs, with the same thread count.
    os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
    with tempfile.TemporaryDirectory() as tmp:
        proc, dsn = start_server(binary, args.data, tmp, args.cpus)
        try:
            with psycopg.connect(dsn, autocommit=True) as c:
                tenant, day = c.execute(
                    "SELECT tenant_id, date_trunc('day', max(interval_start)) - INTERVAL '1 day' FROM interval_metrics "
                    "GROUP BY tenant_id ORDER BY count(*) DESC LIMIT 1").fetchone()
                start = c.execute("SELECT min(queued_at) FROM call_facts").fetchone()[0]
            params = {"tenant": tenant, "day": day}
            report = {"dashboard": [load(dsn, int(n), args.seconds, params) for n in args.clients.split(",")]}
            duck = duckdb.connect()
            duck.execute(f"SET threads = {args.threads}")
            files = delta_files(os.path.join(args.data, "call_facts"))
            duck.execute(f"CREATE VIEW call_facts AS SELECT * FROM read_parquet({files!r}, hive_partitioning = false)")
            start_s = start.strftime("%Y-%m-%d %H:%M:%S+00")
            for name, sql in [("rollup", ROLLUP.format(start=start_s)), ("scan", SCAN)]:
                ours, theirs = [], []
                with psycopg.connect(dsn, autocommit=True) as c:
                    for _ in range(args.rounds):
                        ours.append(timed(lambda: c.execute(sql).fetchall()))
                        theirs.append(timed(lambda: duck.execute(sql).fetchall()))
                report[name] = {"ccstream_s": statistics.median(ours), "duckdb_s": statistics.median(theirs),
                                "ratio": statistics.median(ours) / statistics.median(theirs),
                                "ccstream_all": ours, "duckdb_all": theirs}
            report["server_peak_rss_mb"] = peak_rss_mb(proc.pid)
            print(json.dumps(report, indent=1, default=str))
        finally:
            proc.terminate()
            proc.wait()
