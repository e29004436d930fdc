//! Helpers shared by the end-to-end tests: run the binary, compare CSV tables.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ccstream_schemas::parse_rfc3339_ms;

pub mod run;

pub fn fixture(rel: &str) -> PathBuf {
    Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// Runs `ccstream args…`; panics with its stderr if it fails.
pub fn ccstream(args: &[&str]) -> Output {
    let out = ccstream_raw(args);
    assert!(out.status.success(), "ccstream {args:?} failed: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    out
}

pub fn ccstream_raw(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ccstream"))
        .args(args)
        .env("CCSTREAM_PROGRESS", "never")
        .output()
        .expect("running the ccstream binary")
}

/// The oracle's three outputs and the key each is sorted by.
pub const OUTPUTS: [(&str, &str); 3] = [
    ("call_facts", "call_id"),
    ("interval_metrics", "tenant_id, queue_id, interval_start"),
    ("agent_day_metrics", "tenant_id, agent_id, day"),
];

/// Asserts that the tables in `data` equal the oracle's CSVs in `oracle/<expected_dir>/`.
pub fn check_against(data: &Path, expected_dir: &str) {
    for (name, key) in OUTPUTS {
        let expected = std::fs::read_to_string(fixture(&format!("oracle/{expected_dir}/{name}.csv"))).unwrap();
        let columns = expected.lines().next().unwrap().to_string();
        let actual = sql_csv(data, &format!("SELECT {columns} FROM {name} ORDER BY {key}"));
        let n = assert_same_table(name, &expected, &actual);
        assert!(n > 40, "{name}: only {n} rows compared");
    }
}

/// Replays the oracle fixture's Parquet file into a new temporary data directory.
pub fn replayed_fixture() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let input = fixture("oracle/events.parquet");
    ccstream(&["replay", "--input", input.to_str().unwrap(), "--data", data.to_str().unwrap()]);
    (dir, data)
}

/// `ccstream sql --format csv` → the CSV text.
pub fn sql_csv(data: &Path, sql: &str) -> String {
    let out = ccstream(&["sql", "--data", data.to_str().unwrap(), "--format", "csv", sql]);
    String::from_utf8(out.stdout).unwrap()
}

/// A CSV value normalized for comparison: timestamps to epoch ms, floats parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Time(i64),
    Float(f64),
    Text(String),
}

fn normalize(s: &str) -> Value {
    if s.is_empty() {
        return Value::Null;
    }
    // DuckDB writes "2026-01-06 05:58:29.062+00"; ccstream "2026-01-06T05:58:29.062Z".
    if s.len() >= 19 && s.as_bytes()[4] == b'-' && s.as_bytes()[10] == b' ' || s.as_bytes().get(10) == Some(&b'T') {
        let t = s.replacen(' ', "T", 1);
        let t = t.strip_suffix("+00").map(|p| format!("{p}Z")).unwrap_or(t);
        if let Ok(ms) = parse_rfc3339_ms(&t) {
            return Value::Time(ms);
        }
    }
    if s.chars().any(|c| c.is_ascii_digit()) && !s.contains('-') || s.starts_with('-') {
        if let Ok(f) = s.parse::<f64>() {
            return Value::Float(f);
        }
    }
    Value::Text(s.to_string())
}

/// Parses CSV text whose values hold no commas or quotes into a header and rows.
pub fn parse_csv(text: &str) -> (Vec<String>, Vec<Vec<Value>>) {
    let mut lines = text.lines();
    let header: Vec<String> = lines.next().unwrap_or_default().split(',').map(str::to_string).collect();
    let rows = lines.filter(|l| !l.is_empty()).map(|l| l.split(',').map(normalize).collect()).collect();
    (header, rows)
}

/// Asserts that two CSV tables hold the same rows (in order) and values, floats to 1e-9
/// relative. Returns the number of rows compared.
pub fn assert_same_table(name: &str, expected: &str, actual: &str) -> usize {
    let (eh, er) = parse_csv(expected);
    let (ah, ar) = parse_csv(actual);
    assert_eq!(eh, ah, "{name}: columns differ");
    assert_eq!(er.len(), ar.len(), "{name}: row counts differ");
    let mut mismatches: BTreeMap<String, (usize, String)> = BTreeMap::new();
    for (i, (e, a)) in er.iter().zip(&ar).enumerate() {
        for (c, (ev, av)) in e.iter().zip(a).enumerate() {
            let same = match (ev, av) {
                (Value::Float(x), Value::Float(y)) => {
                    (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1e-300) || x == y
                }
                _ => ev == av,
            };
            if !same {
                mismatches.entry(eh[c].clone()).or_insert((i, format!("expected {ev:?}, got {av:?}")));
            }
        }
    }
    assert!(mismatches.is_empty(), "{name}: values differ (column → first row, values): {mismatches:#?}");
    er.len()
}

/// `GET /metrics` from `addr` over plain HTTP/1.1: the response head and body.
pub fn scrape_metrics(addr: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (head.to_string(), body.to_string())
}

/// The sum of every sample of metric `name` (across label sets) in a text exposition.
pub fn metric_total(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && (l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' ')))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// A spawned process that is killed when dropped, so a failing test leaves none behind.
#[derive(Debug)]
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
