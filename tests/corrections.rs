//! Late events through the log: events delivered hours after their calls were written
//! revise `call_facts` and `interval_partials` (revision 2), the `corrections` table names
//! every change, the final tables equal the oracle's, and a restart changes nothing —
//! whether the processor still holds the calls' state or has evicted it (past the state
//! retention: the calls are re-folded from the `events` table).

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ccstream, check_against, fixture, metric_total, scrape_metrics, sql_csv};

/// Splits the fixture's lines: the `call_answered` events of the first `n` answered calls
/// go to `late`, everything else (malformed lines included) to `on_time`; `late` also gets a
/// redelivered copy of those calls' `call_queued` events (already on time).
/// Returns the late calls, the number of distinct late events and of redelivered copies.
fn split_fixture(on_time: &Path, late: &Path, n: usize) -> (BTreeSet<String>, usize, usize) {
    let file = std::fs::File::open(fixture("oracle/events.jsonl.gz")).unwrap();
    let lines: Vec<String> =
        std::io::BufReader::new(flate2::read::GzDecoder::new(file)).lines().map(Result::unwrap).collect();
    let answered = |l: &str| -> Option<String> {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        (v["event_type"] == "call_answered").then(|| v["call_id"].as_str().map(str::to_string)).flatten()
    };
    let mut calls = BTreeSet::new();
    for l in &lines {
        if let Some(c) = answered(l) {
            if calls.len() < n {
                calls.insert(c);
            }
        }
    }
    let (mut a, mut b) = (std::fs::File::create(on_time).unwrap(), std::fs::File::create(late).unwrap());
    let mut late_ids = BTreeSet::new();
    let mut copies = BTreeSet::new();
    for l in &lines {
        let is_late = answered(l).is_some_and(|c| calls.contains(&c));
        if is_late {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            late_ids.insert(v["event_id"].as_str().unwrap().to_string());
        }
        writeln!(if is_late { &mut b } else { &mut a }, "{l}").unwrap();
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
        let queued_of_late =
            v["event_type"] == "call_queued" && v["call_id"].as_str().is_some_and(|c| calls.contains(c));
        if queued_of_late && copies.insert(v["event_id"].as_str().unwrap().to_string()) {
            writeln!(&mut b, "{l}").unwrap();
        }
    }
    (calls, late_ids.len(), copies.len())
}

fn one_value(data: &Path, sql: &str) -> String {
    sql_csv(data, sql).lines().nth(1).unwrap_or_default().to_string()
}

#[test]
fn late_events_for_calls_in_memory_revise_them() {
    late_events_revise_written_rows(None);
}

#[test]
fn late_events_past_state_retention_refold_the_calls() {
    // Ten minutes of retention: the fixture spans two days, so the late calls are sealed.
    late_events_revise_written_rows(Some("600000"));
}

fn late_events_revise_written_rows(retention_ms: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let (on_time, late) = (dir.path().join("on_time.jsonl"), dir.path().join("late.jsonl"));
    let (late_calls, late_events, copies) = split_fixture(&on_time, &late, 25);
    assert!(late_events >= 25);
    let log = dir.path().join("log").display().to_string();
    let data = dir.path().join("data");
    let data_s = data.to_str().unwrap();

    // Round 1: everything but the late answers, to the end of the log: every call written.
    ccstream(&["ingest", "file", "--log", &log, "--partitions", "4", on_time.to_str().unwrap()]);
    ccstream(&["process", "--log", &log, "--data", data_s, "--until-caught-up"]);
    assert_eq!(one_value(&data, "SELECT count(*) FROM call_facts"), "1500");
    assert_eq!(one_value(&data, "SELECT count(*) FROM corrections"), "0");

    // Round 2: a running processor (it reads back what round 1 wrote), then the answers
    // arrive, hours behind their partitions' watermarks.
    let listen_file = dir.path().join("metrics.addr");
    let child = Command::new(env!("CARGO_BIN_EXE_ccstream"))
        .args(["process", "--log", &log, "--data", data_s, "--commit-interval-ms", "100"])
        .args(["--metrics-listen", "127.0.0.1:0", "--listen-file", listen_file.to_str().unwrap()])
        .args(["--state-retention-ms", retention_ms.unwrap_or("100000000000")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let child = common::KillOnDrop(child);
    let deadline = Instant::now() + Duration::from_secs(90);
    let addr = loop {
        assert!(Instant::now() < deadline, "the processor did not start within 90 s");
        if let Some(a) = std::fs::read_to_string(&listen_file).ok().filter(|a| a.ends_with('\n')) {
            break a.trim().to_string();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // It has read the log and committed (and, with a short retention, evicted the calls)
    // before the late events exist.
    loop {
        assert!(Instant::now() < deadline, "no commit within 90 s");
        let m = scrape_metrics(&addr).1;
        let evicted = metric_total(&m, "ccstream_processor_evicted_calls_total");
        if metric_total(&m, "ccstream_processor_commits_total") >= 1.0 && (retention_ms.is_none() || evicted > 1000.0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    ccstream(&["ingest", "file", "--log", &log, late.to_str().unwrap()]);
    let metrics = loop {
        assert!(Instant::now() < deadline, "the late events were not committed within 90 s");
        let m = scrape_metrics(&addr).1;
        let revised = m
            .lines()
            .find(|l| l.starts_with("ccstream_processor_revisions_total{table=\"call_facts\"}"))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap());
        let commits = metric_total(&m, "ccstream_processor_commits_total");
        if revised == Some(25.0) && commits >= 2.0 {
            break m;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(child);
    // A redelivered copy of an event of a call still in memory is a duplicate on arrival; one
    // of an evicted call cannot be told from a late event until the re-fold reads `events`:
    // it counts as late, and the re-fold keeps it out of the table (below).
    let late_copies = if retention_ms.is_some() { copies } else { 0 };
    assert_eq!(metric_total(&metrics, "ccstream_processor_late_events_total"), (late_events + late_copies) as f64);
    assert!(copies >= 25);
    assert!(metric_total(&metrics, "ccstream_processor_corrections_total") > 25.0 * 3.0);
    let refolded = metric_total(&metrics, "ccstream_processor_refolded_calls_total");
    assert_eq!(refolded, if retention_ms.is_some() { 25.0 } else { 0.0 });

    // The tables are the oracle's, the late calls at revision 2, everything else at 1.
    check_against(&data, "expected");
    let revisions =
        sql_csv(&data, "SELECT revision, count(*) AS n FROM call_facts GROUP BY revision ORDER BY revision");
    assert_eq!(revisions.lines().skip(1).collect::<Vec<_>>(), ["1,1475", "2,25"], "{revisions}");
    let revised: BTreeSet<String> = sql_csv(&data, "SELECT call_id FROM call_facts WHERE revision = 2")
        .lines()
        .skip(1)
        .map(str::to_string)
        .collect();
    assert_eq!(revised, late_calls);

    // Corrections: each late call's `answered` went false → true in revision 2, and only
    // late calls and the intervals they entered were corrected.
    let answered = one_value(
        &data,
        "SELECT count(DISTINCT key) FROM corrections WHERE table_name = 'call_facts' AND column_name = 'answered' \
         AND old_value = 'false' AND new_value = 'true' AND revision = 2",
    );
    assert_eq!(answered, "25");
    let keys: BTreeSet<String> = sql_csv(&data, "SELECT DISTINCT key FROM corrections WHERE table_name = 'call_facts'")
        .lines()
        .skip(1)
        .map(str::to_string)
        .collect();
    assert_eq!(keys, late_calls);
    let partials = one_value(
        &data,
        "SELECT count(*) FROM corrections c JOIN interval_partials p \
         ON c.key = p.tenant_id || '/' || p.queue_id || '/' || to_char(p.interval_start, '%Y-%m-%dT%H:%M:%S%.3fZ') \
         WHERE c.table_name = 'interval_partials' AND c.column_name = 'answered' AND p.revision >= 2",
    );
    assert_ne!(partials, "0", "interval partials were corrected");
    let dump = |d: &Path| {
        [
            "SELECT * EXCLUDE (computed_at, sealed) FROM call_facts ORDER BY call_id",
            "SELECT * EXCLUDE (computed_at, sealed) FROM agent_legs ORDER BY call_id, agent_id",
            "SELECT * FROM corrections ORDER BY key, column_name",
        ]
        .iter()
        .map(|q| sql_csv(d, q))
        .collect::<Vec<_>>()
    };
    let before = dump(&data);
    let events_once = "SELECT count(*) - count(DISTINCT event_id) FROM events";
    assert_eq!(one_value(&data, events_once), "0", "the redelivered copies are not stored twice");
    // And every event is stored, those held back while their calls were re-folded included.
    assert_eq!(one_value(&data, "SELECT count(DISTINCT event_id) FROM events"), "10306");
    let each_once = "SELECT count(*) - count(DISTINCT call_id) FROM call_facts";
    assert_eq!(one_value(&data, each_once), "0");
    let legs_once = "SELECT count(*) - count(DISTINCT call_id || '/' || agent_id) FROM agent_legs";
    assert_eq!(one_value(&data, legs_once), "0");
    if retention_ms.is_some() {
        let sealed = one_value(&data, "SELECT count(*) FROM call_facts WHERE sealed");
        assert!(sealed.parse::<u64>().unwrap() > 1000, "{sealed} sealed rows");
        // Their interval partials too, once no call held was left in them; the late calls'
        // partials came back out of the sealed files.
        let sealed = one_value(&data, "SELECT count(*) FROM interval_partials WHERE sealed");
        let all = one_value(&data, "SELECT count(*) FROM interval_partials");
        assert!(sealed.parse::<u64>().unwrap() * 2 > all.parse::<u64>().unwrap(), "{sealed} of {all} partials sealed");
        let once = "SELECT count(*) - count(DISTINCT tenant_id || '/' || queue_id || '/' \
                    || CAST(interval_start AS VARCHAR) || '/' || CAST(\"partition\" AS VARCHAR)) FROM interval_partials";
        assert_eq!(one_value(&data, once), "0", "a partial sealed and held at once");
    }

    // A restart to the end of the log finds nothing to correct.
    ccstream(&["process", "--log", &log, "--data", data_s, "--until-caught-up"]);
    assert_eq!(dump(&data), before);
    check_against(&data, "expected");
}
