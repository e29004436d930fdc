//! Exactness: ccstream's tables equal the metrics oracle's on the same events, for JSONL
//! (gzip, with malformed lines) and Parquet input, at default and configured parameters.

mod common;

use common::{ccstream, check_against, fixture, sql_csv};

fn replay(input: &str, data: &std::path::Path, extra: &[&str]) -> serde_json::Value {
    let input = fixture(input);
    let mut args =
        vec!["replay", "--input", input.to_str().unwrap(), "--data", data.to_str().unwrap(), "--summary-json"];
    args.extend_from_slice(extra);
    let out = ccstream(&args);
    serde_json::from_slice(&out.stdout).expect("a JSON summary")
}

#[test]
fn parquet_equals_oracle() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = replay("oracle/events.parquet", &data, &["--threads", "1"]);
    assert_eq!(s["rows_read"], 10_597);
    assert_eq!(s["dead_letters"], 0);
    assert_eq!(s["duplicate_copies"], 291);
    assert_eq!(s["calls"], 1_500);
    check_against(&data, "expected");
}

#[test]
fn gzip_jsonl_with_malformed_lines_equals_oracle() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = replay("oracle/events.jsonl.gz", &data, &["--threads", "2"]);
    assert_eq!(s["dead_letters"], 94, "every malformed line is a dead letter");
    assert_eq!(s["duplicate_copies"], 291);
    assert_eq!(s["events_rows"], 10_306, "the events table holds each event once");
    check_against(&data, "expected");
    // Every dead letter says why and keeps the raw line.
    let dl = sql_csv(&data, "SELECT count(*) AS n, count(DISTINCT line) AS lines, min(length(raw)) > 0 AS raw_kept FROM dead_letters WHERE reason LIKE 'not valid JSON%'");
    assert_eq!(dl.lines().nth(1), Some("94,94,true"), "{dl}");
}

#[test]
fn configured_parameters_equal_oracle() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("ccstream.toml");
    std::fs::write(
        &config,
        "[service_level]\nsl_threshold_s = 30\nshort_abandon_s = 10\n\n[quality]\npoor_jitter_ms = 20\n",
    )
    .unwrap();
    replay("oracle/events.parquet", &data, &["--config", config.to_str().unwrap()]);
    check_against(&data, "expected_sl30");
}

#[test]
fn replay_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let dump = |data: &std::path::Path| {
        [
            "SELECT * EXCLUDE (computed_at) FROM call_facts ORDER BY call_id",
            "SELECT * EXCLUDE (computed_at) FROM agent_legs ORDER BY call_id, agent_id",
            "SELECT * FROM interval_metrics ORDER BY tenant_id, queue_id, interval_start",
            "SELECT * FROM agent_day_metrics ORDER BY tenant_id, agent_id, day",
        ]
        .map(|q| sql_csv(data, q))
    };
    replay("oracle/events.parquet", &data, &[]);
    let first = dump(&data);
    replay("oracle/events.parquet", &data, &[]);
    assert_eq!(first, dump(&data));
    let counts = sql_csv(&data, "SELECT (SELECT count(*) FROM events) AS e, (SELECT count(*) FROM call_facts) AS c");
    assert_eq!(counts.lines().nth(1), Some("10306,1500"), "a second replay replaces, never appends");
}
