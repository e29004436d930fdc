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
it). Then the same 8-client load while two more clients keep sending queries that break
the limits (one over serve.query_memory_mb, one past serve.query_timeout_s): the report
says what those got and what the dashboard's p50/p99 was meanwhile. Then rollup and scan,
alternating ccstream and DuckDB (`read_parquet` over the files of the Delta tables' latest
versions, the same thread count), N rounds, the median of each. Last, a 10 M-row result
(7 columns of call_facts) through Arrow Flight SQL (ADBC, into an Arrow table) and
through the Postgres wire (psql, text), alternating. The server's peak RSS comes from
/proc. Load goes to loopback only and stops by itself.
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

import adbc_driver_flightsql.dbapi as flight_sql
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

# Heavy queries over the limits (which limit each hits first depends on how DataFusion
# spills): every event id of a call in one string per call;
MEMORY_HOG = "SELECT call_id, string_agg(event_id, ',') AS ids FROM events GROUP BY call_id ORDER BY ids DESC LIMIT 1"
# a self-join of every event on its call.
SLOW = "SELECT count(*) FROM events a JOIN events b ON a.call_id = b.call_id AND a.event_id < b.event_id"

WIDE = "SELECT call_id, tenant_id, queue_id, queued_at, wait_ms, handle_ms, answered FROM call_facts"


def start_server(binary, data, cfg_dir, cpus):
    pw = "bench-password"
    hashed = subprocess.run([binary, "secret", "hash"], input=pw, capture_output=True, text=True, check=True).stdout.strip()
    cfg = os.path.join(cfg_dir, "serve.toml")
    with open(cfg, "w") as f:
        f.write(f'[serve]\nmax_rows = 1000000000\nquery_threads = {args.threads}\ntarget_partitions = {args.threads}\n'
                f'query_memory_mb = {args.query_memory_mb}\nquery_timeout_s = {args.query_timeout_s}\n'
                f'background_rows = {args.background_rows}\n'
                f'[[serve.principals]]\nname = "bench"\nrole = "admin"\ntenants = ["*"]\npassword_hash = "{hashed}"\n')
    listen = os.path.join(cfg_dir, "listen")
    cmd = ["taskset", "-c", cpus, binary, "serve", "--data", data, "--config", cfg,
           "--pg-listen", "127.0.0.1:0", "--flight-listen", "127.0.0.1:0", "--listen-file", listen]
    err = open(os.path.join(cfg_dir, "stderr"), "w")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.time() + 120
    while time.time() < deadline:
        lines = open(listen).read().splitlines() if os.path.exists(listen) else []
        if len(lines) == 2:
            addrs = dict(line.split() for line in lines)
            host, port = addrs["pg"].rsplit(":", 1)
            return proc, f"host={host} port={port} user=bench password={pw} dbname=ccstream", f"grpc://{addrs['flight']}", pw
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


def breakers(dsn, seconds):
    """Two clients that keep sending queries over the limits for `seconds`; what they got."""
    outcomes = {"string_agg_per_call": [], "self_join": []}
    stop = time.time() + seconds

    def worker(kind, sql):
        with psycopg.connect(dsn, autocommit=True) as conn:
            while time.time() < stop:
                t = time.perf_counter()
                try:
                    conn.execute(sql).fetchall()
                    outcomes[kind].append(("ok", time.perf_counter() - t))
                except psycopg.Error as e:
                    outcomes[kind].append((f"{e.sqlstate} {str(e).splitlines()[0][:100]}", time.perf_counter() - t))

    threads = [threading.Thread(target=worker, args=a) for a in [("string_agg_per_call", MEMORY_HOG), ("self_join", SLOW)]]
    for t in threads:
        t.start()
    return threads, outcomes


def summarize(outcomes):
    """{outcome: {"n": how many, "median_s": their median time}}."""
    by = {}
    for outcome, seconds in outcomes:
        by.setdefault(outcome, []).append(seconds)
    return {o: {"n": len(v), "median_s": round(statistics.median(v), 2)} for o, v in by.items()}


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
    ap.add_argument("--query-memory-mb", type=int, default=512)
    ap.add_argument("--query-timeout-s", type=float, default=15)
    ap.add_argument("--background-rows", type=int, default=20_000_000,
                    help="serve.background_rows (a huge number: every query on the query runtime)")
    args = ap.parse_args()
    binary = os.environ.get("CCSTREAM_BIN", "target/release/ccstream")
    # DuckDB runs in this process: on the server's CPUs, with the same thread count.
    os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
    with tempfile.TemporaryDirectory() as tmp:
        proc, dsn, flight_uri, pw = start_server(binary, args.data, tmp, args.cpus)
        try:
            with psycopg.connect(dsn, autocommit=True) as c:
                tenant, day = c.execute(
                    "SELECT tenant_id, date_trunc('day', max(interval_start)) - INTERVAL '1 day' FROM interval_metrics "
                    "GROUP BY tenant_id ORDER BY count(*) DESC LIMIT 1").fetchone()
                start = c.execute("SELECT min(queued_at) FROM call_facts").fetchone()[0]
            params = {"tenant": tenant, "day": day}
            report = {"dashboard": [load(dsn, int(n), args.seconds, params) for n in args.clients.split(",")]}
            threads, outcomes = breakers(dsn, args.seconds)
            during = load(dsn, 8, args.seconds, params)
            for t in threads:
                t.join()
            report["limits"] = {"dashboard_8_clients_meanwhile": during,
                                **{k: summarize(v) for k, v in outcomes.items()}}
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
            # 10 M rows: Flight SQL into Arrow, the Postgres wire into psql.
            host, port = dsn.split()[0][5:], dsn.split()[1][5:]
            env = dict(os.environ, PGPASSWORD=pw)
            psql = ["psql", "-X", "-q", "-At", "-o", "/dev/null", "-h", host, "-p", port, "-U", "bench", "-d", "ccstream", "-c", WIDE]
            fl, pg, rows = [], [], 0
            for _ in range(max(1, args.rounds // 2)):
                with flight_sql.connect(flight_uri, db_kwargs={"username": "bench", "password": pw}, autocommit=True) as conn:
                    cur = conn.cursor()
                    t = time.perf_counter()
                    cur.execute(WIDE)
                    rows = cur.fetch_arrow_table().num_rows
                    fl.append(time.perf_counter() - t)
                t = time.perf_counter()
                subprocess.run(psql, env=env, check=True)
                pg.append(time.perf_counter() - t)
            report["wide_result"] = {"rows": rows, "flight_adbc_s": statistics.median(fl), "pg_psql_s": statistics.median(pg),
                                     "flight_all": fl, "pg_all": pg}
            report["server_peak_rss_mb"] = peak_rss_mb(proc.pid)
            print(json.dumps(report, indent=1, default=str))
        finally:
            proc.terminate()
            proc.wait()
