//! The commands end to end: generate, replay, sql (errors too), the query-time variants, demo.

mod common;

use common::{ccstream, ccstream_raw, fixture, replayed_fixture, sql_csv};

fn value(csv: &str) -> String {
    csv.lines().nth(1).unwrap_or_default().to_string()
}

#[test]
fn generate_is_deterministic_and_replays_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.jsonl");
    let b = dir.path().join("b.jsonl");
    let c = dir.path().join("c.jsonl");
    let gen = |out: &std::path::Path, seed: &str| {
        let o =
            ccstream(&["generate", "--calls", "3000", "--seed", seed, "--days", "2", "--out", out.to_str().unwrap()]);
        String::from_utf8(o.stderr).unwrap()
    };
    let report = gen(&a, "5");
    gen(&b, "5");
    gen(&c, "6");
    let (ta, tb, tc) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap(), std::fs::read(&c).unwrap());
    assert_eq!(ta, tb, "same arguments, same bytes");
    assert_ne!(ta, tc, "another seed, other traffic");
    let malformed: u64 = report
        .split(" malformed lines")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no malformed count in {report:?}"));
    assert!(malformed > 0, "the generator adds malformed lines by default");

    let data = dir.path().join("data");
    let out = ccstream(&["replay", "--input", a.to_str().unwrap(), "--data", data.to_str().unwrap(), "--summary-json"]);
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["calls"], 3000);
    assert_eq!(s["dead_letters"], malformed, "only the deliberately malformed lines are rejected");
    // Realistic ranges for the generated traffic.
    let day = sql_csv(
        &data,
        "SELECT CAST(sum(answered_within_sl) AS DOUBLE) / sum(offered - short_abandoned) AS sl, \
         CAST(sum(abandoned) AS DOUBLE) / sum(offered) AS ab FROM interval_partials",
    );
    let v: Vec<f64> = value(&day).split(',').map(|x| x.parse().unwrap()).collect();
    assert!((0.5..0.95).contains(&v[0]), "service level {}", v[0]);
    assert!((0.02..0.25).contains(&v[1]), "abandon rate {}", v[1]);

    let pq = dir.path().join("a.parquet");
    ccstream(&["generate", "--calls", "3000", "--seed", "5", "--days", "2", "--out", pq.to_str().unwrap()]);
    let data2 = dir.path().join("data2");
    let out =
        ccstream(&["replay", "--input", pq.to_str().unwrap(), "--data", data2.to_str().unwrap(), "--summary-json"]);
    let s2: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s2["dead_letters"], 0);
    assert_eq!(s2["events"], s["events"], "the Parquet file holds the JSONL file's valid events");
}

#[test]
fn sql_errors_are_one_line_and_fail() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let missing = ccstream_raw(&["sql", "--data", data.to_str().unwrap(), "SELECT 1"]);
    assert!(!missing.status.success());
    let err = String::from_utf8(missing.stderr).unwrap();
    assert!(err.starts_with("error: ") && err.contains("ccstream replay"), "{err}");
    ccstream(&[
        "replay",
        "--input",
        fixture("oracle/events.parquet").to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ]);
    for bad in [
        "SELEC 1",
        "SELECT * FROM no_such_table",
        "SELECT * FROM interval_metrics_at(45)",
        "SELECT * FROM interval_metrics_at(60, 'Mars/Olympus')",
    ] {
        let out = ccstream_raw(&["sql", "--data", data.to_str().unwrap(), bad]);
        assert_eq!(out.status.code(), Some(1), "{bad}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{bad}: {err}");
        assert!(err.starts_with("error: "), "{bad}: {err}");
    }
    let out = ccstream_raw(&[
        "sql",
        "--data",
        data.to_str().unwrap(),
        "SELECT * FROM interval_metrics_at(60, 'Mars/Olympus')",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown time zone \"Mars/Olympus\""));
}

#[test]
fn query_time_variants_agree_with_the_views() {
    let (_dir, data) = replayed_fixture();
    // At the stored parameters, the table function computed from call_facts equals the view.
    let diff = sql_csv(
        &data,
        "SELECT count(*) AS rows, count(*) FILTER (WHERE (v.offered IS DISTINCT FROM f.offered) \
           OR (v.service_level IS DISTINCT FROM f.service_level) OR (v.asa_s IS DISTINCT FROM f.asa_s) \
           OR (v.aht_s IS DISTINCT FROM f.aht_s) OR (v.max_wait_s IS DISTINCT FROM f.max_wait_s) \
           OR (v.abandon_rate IS DISTINCT FROM f.abandon_rate)) AS differ \
         FROM interval_metrics v FULL JOIN interval_metrics_at(15, 'UTC', 20, 5) f \
           USING (tenant_id, queue_id, interval_start)",
    );
    assert_eq!(value(&diff), "663,0", "{diff}");
    // Rollups keep every call: local days (Nepal, UTC+05:45) and hours, from partials and facts.
    let totals = sql_csv(
        &data,
        "SELECT (SELECT sum(offered) FROM interval_rollup(1440, 'Asia/Kathmandu')), \
                (SELECT sum(offered) FROM interval_metrics_at(60, 'America/New_York')), \
                (SELECT count(*) FROM call_facts WHERE queued_at IS NOT NULL)",
    );
    assert_eq!(value(&totals), "1500,1500,1500");
    // Hourly rollup from partials equals hourly metrics from facts, in a zone with a half-hour offset.
    let hourly = sql_csv(
        &data,
        "SELECT count(*) FILTER (WHERE (r.answered_within_sl IS DISTINCT FROM f.answered_within_sl) \
           OR (r.aht_s IS DISTINCT FROM f.aht_s)) \
         FROM interval_rollup(60, 'Asia/Kolkata') r JOIN interval_metrics_at(60, 'Asia/Kolkata') f \
           USING (tenant_id, queue_id, interval_start)",
    );
    assert_eq!(value(&hourly), "0");
    // Variants are the published ratios.
    let v = sql_csv(
        &data,
        "SELECT count(*) FILTER (WHERE abs(sl_positive_abandons - CAST(answered_within_sl + abandoned_within_sl AS DOUBLE) / offered) > 1e-12 \
           OR abs(sl_handled - CAST(answered_within_sl AS DOUBLE) / answered) > 1e-12 \
           OR abs(sl_negative_abandons - CAST(answered_within_sl AS DOUBLE) / offered) > 1e-12) \
         FROM interval_metrics_at(30, 'UTC', 30, 10)",
    );
    assert_eq!(value(&v), "0");
    // A stricter CQD jitter threshold can only find more poor streams.
    let poor = sql_csv(
        &data,
        "SELECT (SELECT sum(poor_streams) FROM agent_day_metrics), (SELECT sum(poor_streams) FROM agent_day_metrics_at('UTC', 10))",
    );
    let p: Vec<i64> = value(&poor).split(',').map(|x| x.parse().unwrap()).collect();
    assert!(p[1] > p[0], "{poor}");
}

#[test]
fn a_failed_replay_leaves_the_previous_tables() {
    let (dir, data) = replayed_fixture();
    let broken = dir.path().join("broken.parquet");
    let bytes = std::fs::read(fixture("oracle/events.parquet")).unwrap();
    std::fs::write(&broken, &bytes[..bytes.len() / 2]).unwrap();
    let out = ccstream_raw(&["replay", "--input", broken.to_str().unwrap(), "--data", data.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("broken.parquet"));
    assert_eq!(value(&sql_csv(&data, "SELECT count(*) FROM call_facts")), "1500");
}

#[test]
fn demo_runs() {
    let dir = tempfile::tempdir().unwrap();
    let out = ccstream(&["demo", "--dir", dir.path().to_str().unwrap(), "--calls", "2000"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("tenant-01-sales"), "{text}");
    assert!(text.contains("sql --data"), "{text}");
}

#[test]
fn live_demo_feeds_the_log_and_stops_cleanly_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let demo = dir.path().join("demo");
    let listen_file = dir.path().join("metrics.addr");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ccstream"))
        .args(["demo", "--live", "--speed", "10000000", "--calls", "500", "--metrics-listen", "127.0.0.1:0"])
        .args(["--dir", demo.to_str().unwrap(), "--listen-file", listen_file.to_str().unwrap()])
        .args(["--http-listen", "127.0.0.1:0", "--pg-listen", "127.0.0.1:0", "--flight-listen", "127.0.0.1:0"])
        .args(["--serve-listen-file", dir.path().join("serve.addr").to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let offered =
        |addr: &str| common::metric_total(&common::scrape_metrics(addr).1, "ccstream_kpi_offered_calls_total");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        assert!(std::time::Instant::now() < deadline, "the live demo did not offer 500 calls within 120 s");
        if let Some(addr) = std::fs::read_to_string(&listen_file).ok().filter(|a| a.ends_with('\n')) {
            if offered(addr.trim()) == 500.0 {
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // `ccstream serve` runs beside it: every frontend bound, /health answers.
    let serve = std::fs::read_to_string(dir.path().join("serve.addr")).unwrap();
    let http = serve.lines().find_map(|l| l.strip_prefix("http ")).expect("http address");
    assert!(serve.lines().any(|l| l.starts_with("pg ")), "{serve}");
    assert!(serve.lines().any(|l| l.starts_with("flight ")), "{serve}");
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(http).unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        let mut s = std::net::TcpStream::connect(http).unwrap();
        s.write_all(b"POST /v1/sql HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}").unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("HTTP/1.1 401"), "no credentials, no answer: {reply}");
    }
    // Ctrl-C: the demo commits what it read and exits 0.
    let status = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    assert!(child.wait().unwrap().success(), "Ctrl-C is a clean stop");
    let calls = common::sql_csv(&demo.join("data"), "SELECT count(*) AS n FROM call_facts");
    assert_eq!(calls.lines().nth(1), Some("500"), "{calls}");
}

#[test]
fn invalid_parquet_rows_are_dead_letters_with_their_row_and_text() {
    use std::sync::Arc;

    use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::arrow::ArrowWriter;

    // The fixture with three rows broken: two without an event id, one of an unknown type.
    let reader =
        ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(fixture("oracle/events.parquet")).unwrap())
            .unwrap()
            .build()
            .unwrap();
    let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
    let batch = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
    let schema = batch.schema();
    // Column `name` with the values of `rows` replaced.
    let broken = |name: &str, rows: &[(usize, Option<&str>)]| -> ArrayRef {
        let original = batch.column_by_name(name).unwrap();
        let text = arrow::compute::cast(original, &arrow::datatypes::DataType::Utf8).unwrap();
        let s = text.as_string::<i32>();
        let values: StringArray = (0..s.len())
            .map(|i| match rows.iter().find(|(r, _)| *r == i) {
                Some((_, v)) => *v,
                None => s.is_valid(i).then(|| s.value(i)),
            })
            .collect();
        let values: ArrayRef = Arc::new(values);
        arrow::compute::cast(&values, original.data_type()).unwrap()
    };
    let mut columns = batch.columns().to_vec();
    columns[schema.index_of("event_id").unwrap()] = broken("event_id", &[(10, None), (5000, None)]);
    columns[schema.index_of("event_type").unwrap()] = broken("event_type", &[(20, Some("call_teleported"))]);
    let broken_batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken-rows.parquet");
    let mut w = ArrowWriter::try_new(std::fs::File::create(&file).unwrap(), schema, None).unwrap();
    w.write(&broken_batch).unwrap();
    w.close().unwrap();

    // Read page by page and by the Arrow reader: the same dead letters, with the file's row
    // numbers (1-based), the reasons and the rows' text.
    let letters = |pages: &str| {
        let data = dir.path().join(format!("data-{pages}"));
        let out = ccstream(&[
            "replay",
            "--input",
            file.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--read-pages",
            pages,
            "--events-table",
            "false",
            "--summary-json",
        ]);
        let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(s["dead_letters"], 3);
        sql_csv(&data, "SELECT line, reason, raw FROM dead_letters ORDER BY line")
    };
    let by_pages = letters("true");
    assert_eq!(by_pages, letters("false"));
    let lines: Vec<&str> = by_pages.lines().skip(1).collect();
    assert_eq!(lines.len(), 3, "{by_pages}");
    assert!(lines[0].starts_with("11,missing required field `event_id`"), "{by_pages}");
    assert!(lines[1].starts_with("21,") && lines[1].contains("call_teleported"), "{by_pages}");
    assert!(lines[2].starts_with("5001,missing required field `event_id`"), "{by_pages}");
}
