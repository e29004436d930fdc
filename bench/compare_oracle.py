#!/usr/bin/env python3
"""Compare ccstream's tables with the metrics oracle's CSVs, at any size.

    python3 bench/compare_oracle.py --ccstream target/release/ccstream --data DIR --oracle ORACLE_OUT_DIR

For each of call_facts, interval_metrics and agent_day_metrics: exports ccstream's table
with `ccstream sql --format csv` (the oracle's columns, sorted by key), loads both CSVs in
DuckDB and reports rows only on one side and values that differ (floats to 1e-9 relative,
timestamps as instants). Exit code 1 if anything differs.
"""
import argparse
import os
import subprocess
import sys
import tempfile

import duckdb

OUTPUTS = {
    "call_facts": ["call_id"],
    "interval_metrics": ["tenant_id", "queue_id", "interval_start"],
    "agent_day_metrics": ["tenant_id", "agent_id", "day"],
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ccstream", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--oracle", required=True, help="directory with the oracle's <name>.csv")
    a = ap.parse_args()
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name, key in OUTPUTS.items():
            expected = os.path.join(a.oracle, f"{name}.csv")
            cols = open(expected).readline().strip().split(",")
            mine = os.path.join(tmp, f"{name}.csv")
            sql = f"SELECT {', '.join(cols)} FROM {name} ORDER BY {', '.join(key)}"
            with open(mine, "w") as f:
                subprocess.run([a.ccstream, "sql", "--data", a.data, "--format", "csv", sql], stdout=f, check=True)
            con.execute(f"CREATE OR REPLACE TABLE e AS SELECT * FROM read_csv('{expected}', header=true)")
            con.execute(f"CREATE OR REPLACE TABLE m AS SELECT * FROM read_csv('{mine}', header=true)")
            types = dict(con.execute("SELECT column_name, column_type FROM (DESCRIBE e)").fetchall())
            k = ", ".join(key)
            only_e = con.execute(f"SELECT count(*) FROM (SELECT {k} FROM e EXCEPT ALL SELECT {k} FROM m)").fetchone()[0]
            only_m = con.execute(f"SELECT count(*) FROM (SELECT {k} FROM m EXCEPT ALL SELECT {k} FROM e)").fetchone()[0]
            conds = []
            for c in cols:
                if c in key:
                    continue
                if types[c] == "DOUBLE":
                    conds.append(f"NOT ((e.{c} IS NULL AND m.{c} IS NULL) OR abs(e.{c} - m.{c}) <= 1e-9 * greatest(abs(e.{c}), abs(m.{c})))")
                else:
                    conds.append(f"e.{c} IS DISTINCT FROM CAST(m.{c} AS {types[c]})")
            per_col = ", ".join(f"count(*) FILTER (WHERE {cond}) AS {c}" for c, cond in zip([c for c in cols if c not in key], conds))
            diffs = con.execute(f"SELECT count(*), {per_col} FROM e JOIN m USING ({k})").fetchone()
            names = [c for c in cols if c not in key]
            differing = {n: d for n, d in zip(names, diffs[1:]) if d}
            ok = only_e == 0 and only_m == 0 and not differing
            bad += not ok
            print(f"{name}: {diffs[0]:,} rows compared, {only_e} only in oracle, {only_m} only in ccstream, "
                  f"differing values: {differing or 'none'} -> {'EQUAL' if ok else 'DIFFERENT'}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
