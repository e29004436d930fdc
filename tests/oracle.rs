//! Exactness: ccstream's tables equal the metrics oracle's on the same events, for JSONL
//! (gzip, with malformed lines) and Parquet input, at default and configured parameters.

mod common;

use common::{ccstream, check_against, fixture, sql_csv};

fn replay(input: &str, data: &std::path::Path, extra: &[&str]) -> serde_json::Value {
    replay_path(&fixture(input), data, extra)
}

fn replay_path(input: &std::path::Path, data: &std::path::Path, extra: &[&str]) -> serde_json::Value {
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

/// The JSON Lines fixture (with its malformed lines) cut into ten files under `dir/name/`,
/// so that a replay folds it in ten batches; `latest_first` reverses the lines' order.
fn fixture_in_ten_files(dir: &std::path::Path, name: &str, latest_first: bool) -> std::path::PathBuf {
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::GzDecoder::new(std::fs::File::open(fixture("oracle/events.jsonl.gz")).unwrap()),
        &mut text,
    )
    .unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    if latest_first {
        lines.reverse();
    }
    let out = dir.join(name);
    std::fs::create_dir_all(&out).unwrap();
    for (i, part) in lines.chunks(lines.len().div_ceil(10)).enumerate() {
        std::fs::write(out.join(format!("part-{i:02}.jsonl")), part.join("\n")).unwrap();
    }
    out
}

/// Replays the fixture in ten files (see [`fixture_in_ten_files`]) with 1 and then 2
/// threads, settling bursts of 20 calls 10 minutes behind; checks what holds either way
/// (every call, dead letter and event counted once, tables equal to the oracle's) and
/// returns each run's data directory and summary.
fn settling_replays(dir: &std::path::Path, latest_first: bool) -> Vec<(std::path::PathBuf, serde_json::Value)> {
    let input = fixture_in_ten_files(dir, "input", latest_first);
    let mut out = Vec::new();
    for threads in ["1", "2"] {
        let data = dir.join(format!("data{threads}"));
        let args = ["--threads", threads, "--settle-after-ms", "600000", "--settle-batch", "20"];
        let s = replay_path(&input, &data, &args);
        assert_eq!(s["calls"], 1_500, "{s}");
        assert_eq!(s["call_facts_rows"], 1_500, "{s}");
        assert_eq!(s["dead_letters"], 94, "{s}");
        assert_eq!(s["events_rows"], 10_306, "{s}");
        check_against(&data, "expected");
        out.push((data, s));
    }
    out
}

#[test]
fn calls_settled_as_the_input_goes_equal_oracle() {
    // In order: most calls are written and forgotten long before the input ends.
    let dir = tempfile::tempdir().unwrap();
    for (data, s) in settling_replays(dir.path(), false) {
        assert!(s["settled_calls"].as_u64().unwrap() > 1_000, "most calls settle before the end: {s}");
        assert_eq!(s["folded_again"], false, "{s}");
        let revisions = sql_csv(&data, "SELECT min(revision) AS lo, max(revision) AS hi FROM call_facts");
        assert_eq!(revisions.lines().nth(1), Some("1,1"), "{revisions}");
    }
}

#[test]
fn input_out_of_time_order_is_folded_again_exactly() {
    // Latest first: calls are settled, then their earlier events come.
    let dir = tempfile::tempdir().unwrap();
    for (data, s) in settling_replays(dir.path(), true) {
        assert_eq!(s["folded_again"], true, "{s}");
        assert_eq!(s["settled_calls"], 0, "the second pass holds every call: {s}");
        // Only the committed files are on disk: the given-up pass left none behind.
        for table in ["call_facts", "agent_legs"] {
            assert_eq!(parquet_files(&data.join(table)), committed_files(&data.join(table)), "{table}");
        }
    }
}

/// The `.parquet` files under `dir` (paths relative to it).
fn parquet_files(dir: &std::path::Path) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                out.insert(path.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out
}

/// The files a Delta table's log adds and does not remove.
fn committed_files(table: &std::path::Path) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut logs: Vec<_> = std::fs::read_dir(table.join("_delta_log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    logs.sort();
    for log in logs {
        for line in std::fs::read_to_string(&log).unwrap().lines() {
            let action: serde_json::Value = serde_json::from_str(line).unwrap();
            if let Some(path) = action["add"]["path"].as_str() {
                out.insert(path.to_string());
            }
            if let Some(path) = action["remove"]["path"].as_str() {
                out.remove(path);
            }
        }
    }
    out
}
