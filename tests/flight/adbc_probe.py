"""ccstream's Flight SQL frontend through ADBC (adbc-driver-flightsql from PyPI).

    python3 tests/flight/adbc_probe.py grpc://HOST:PORT ANALYST_TOKEN ADMIN_TOKEN

Prints one JSON object per line, {"check": NAME, ...}; tests/serve.rs compares them with
what `ccstream sql` says over the same tables. Exits non-zero when a client call that must
work fails; calls that must fail are reported as {"check": NAME, "error": MESSAGE}.
"""

import json
import sys

import adbc_driver_flightsql.dbapi as flight_sql
from adbc_driver_flightsql import DatabaseOptions

uri, ana_token, admin_token = sys.argv[1:4]


def out(check, **fields):
    print(json.dumps({"check": check, **fields}, default=str), flush=True)


def connect(**db_kwargs):
    # Autocommit: the server is read-only and has no transactions to turn it off for.
    return flight_sql.connect(uri, db_kwargs=db_kwargs, autocommit=True)


def rows(conn, sql, params=None):
    with conn.cursor() as cur:
        if params is None:
            cur.execute(sql)
        else:
            cur.execute(sql, params)
        return cur.fetchall()


def failure(check, make_conn, sql="SELECT 1"):
    """Runs sql on a connection that must fail, and reports the error."""
    try:
        conn = make_conn()
        try:
            result = rows(conn, sql)
        finally:
            conn.close()
    except Exception as e:  # the driver's error types vary by call
        out(check, error=str(e).splitlines()[0])
        return
    out(check, unexpected_rows=result)


COUNT = "SELECT tenant_id, count(*) FROM call_facts GROUP BY tenant_id ORDER BY tenant_id"

# Name and password: a Handshake hands out a session token.
with connect(username="ana", password="ana-pw") as conn:
    out("password_counts", rows=rows(conn, COUNT))

# A bearer token on every call.
with connect(**{DatabaseOptions.AUTHORIZATION_HEADER.value: f"Bearer {ana_token}"}) as conn:
    out("token_counts", rows=rows(conn, COUNT))
    # A prepared statement with `?` parameters, bound and run twice.
    sql = "SELECT count(*) FROM call_facts WHERE tenant_id = ? AND answered = ?"
    out("param_t0001", rows=rows(conn, sql, ("t0001", True)))
    out("param_t0002", rows=rows(conn, sql, ("t0002", True)))
    # Routes to another tenant's rows: none of them shows any.
    routes = {
        "join": "SELECT count(*) FROM call_facts a JOIN call_facts b USING (tenant_id, call_id) WHERE a.tenant_id <> 't0001'",
        "subquery": "SELECT count(*) FROM (SELECT * FROM call_facts WHERE tenant_id = 't0002') s",
        "cte": "WITH x AS (SELECT tenant_id FROM interval_metrics) SELECT count(*) FROM x WHERE tenant_id <> 't0001'",
        "union": "SELECT count(*) FROM (SELECT tenant_id FROM call_facts UNION ALL SELECT tenant_id FROM agent_legs) u WHERE tenant_id <> 't0001'",
        "table_function": "SELECT count(*) FROM interval_metrics_at(30, 'UTC') WHERE tenant_id <> 't0001'",
    }
    out("routes", rows={name: rows(conn, q)[0][0] for name, q in routes.items()})
    # Arrow types arrive as Arrow types.
    with conn.cursor() as cur:
        cur.execute("SELECT call_id, queued_at, answered FROM call_facts ORDER BY call_id LIMIT 3")
        table = cur.fetch_arrow_table()
    out("types", schema={f.name: str(f.type) for f in table.schema}, rows=table.num_rows)
    # Catalog calls.
    objects = conn.adbc_get_objects(depth="all").read_all().to_pylist()
    tables = sorted(
        t["table_name"]
        for c in objects
        for s in c["catalog_db_schemas"] or []
        for t in s["db_schema_tables"] or []
    )
    out("objects", catalogs=[c["catalog_name"] for c in objects], tables=tables)
    schema = conn.adbc_get_table_schema("call_facts")
    out("table_schema", fields=[f.name for f in schema])
    out("table_types", types=conn.adbc_get_table_types())
    info = conn.adbc_get_info()
    out("info", vendor=info.get("vendor_name"), version=info.get("vendor_version"))
    # Writes are refused.
    for name, sql in {
        "create": "CREATE TABLE x AS SELECT 1",
        "insert": "INSERT INTO call_facts SELECT * FROM call_facts",
        "drop": "DROP TABLE call_facts",
    }.items():
        try:
            rows(conn, sql)
            out("write_" + name, unexpected="accepted")
        except Exception as e:
            out("write_" + name, error=str(e).splitlines()[0])
    try:
        rows(conn, "SELEC oops")
        out("bad_sql", unexpected="accepted")
    except Exception as e:
        out("bad_sql", error=str(e).splitlines()[0])
    failure(
        "tenant_header_not_admin",
        lambda: connect(
            **{
                DatabaseOptions.AUTHORIZATION_HEADER.value: f"Bearer {ana_token}",
                DatabaseOptions.RPC_CALL_HEADER_PREFIX.value + "x-ccstream-tenant": "t0002",
            }
        ),
    )

# An admin narrowed to one tenant by a header.
with connect(
    **{
        DatabaseOptions.AUTHORIZATION_HEADER.value: f"Bearer {admin_token}",
        DatabaseOptions.RPC_CALL_HEADER_PREFIX.value + "x-ccstream-tenant": "t0002",
    }
) as conn:
    out("admin_narrowed", rows=rows(conn, COUNT))
with connect(**{DatabaseOptions.AUTHORIZATION_HEADER.value: f"Bearer {admin_token}"}) as conn:
    out("admin_counts", rows=rows(conn, COUNT))

# Bad credentials.
failure("wrong_password", lambda: connect(username="ana", password="wrong"))
failure("unknown_user", lambda: connect(username="nobody", password="ana-pw"))
failure("wrong_token", lambda: connect(**{DatabaseOptions.AUTHORIZATION_HEADER.value: "Bearer not-a-token"}))
failure("no_credentials", lambda: connect())
