//! Exact through the event log: `ingest file` then `process`, with FileLog and with Kafka
//! (the broker in `CCSTREAM_KAFKA_BROKERS`), equal the oracle; restarts, re-deliveries and
//! SIGKILLs change nothing.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{ccstream, check_against, fixture, sql_csv};
use rand::{Rng, SeedableRng};

fn ingest(log: &str, input: &Path, partitions: &str) {
    ccstream(&["ingest", "file", "--log", log, "--partitions", partitions, input.to_str().unwrap()]);
}

fn process_until_caught_up(log: &str, data: &Path) {
    ccstream(&["process", "--log", log, "--data", data.to_str().unwrap(), "--until-caught-up"]);
}

/// Every table, minus the times of computation, as CSV (to compare runs).
fn dump(data: &Path) -> Vec<String> {
    [
        "SELECT * EXCLUDE (computed_at) FROM call_facts ORDER BY call_id",
        "SELECT * EXCLUDE (computed_at) FROM agent_legs ORDER BY call_id, agent_id, answered_at",
        "SELECT * FROM interval_metrics ORDER BY tenant_id, queue_id, interval_start",
        "SELECT event_id, occurred_at FROM events ORDER BY event_id",
        "SELECT reason, raw FROM dead_letters ORDER BY raw",
    ]
    .iter()
    .map(|q| sql_csv(data, q))
    .collect()
}

fn check_log_tables(data: &Path) {
    check_against(data, "expected");
    let n = sql_csv(data, "SELECT count(*) AS n, count(DISTINCT event_id) AS d FROM events");
    assert_eq!(n.lines().nth(1), Some("10306,10306"), "each event once: {n}");
    let dl = sql_csv(data, "SELECT count(*) AS n, count(DISTINCT line) AS lines FROM dead_letters");
    assert_eq!(dl.lines().nth(1), Some("94,94"), "every malformed line, once: {dl}");
}

#[test]
fn file_log_equals_oracle_and_reprocessing_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log").display().to_string();
    let data = dir.path().join("data");
    ingest(&log, &fixture("oracle/events.jsonl.gz"), "4");
    // Polls of several decode chunks, the last one partial.
    let data_s = data.to_str().unwrap();
    ccstream(&["process", "--log", &log, "--data", data_s, "--until-caught-up", "--decode-chunk", "97"]);
    check_log_tables(&data);
    let first = dump(&data);
    // A restart with nothing new rebuilds the same tables.
    process_until_caught_up(&log, &data);
    assert_eq!(dump(&data), first);
    // The same events again (the Parquet copy of the fixture): every one is a duplicate.
    ingest(&log, &fixture("oracle/events.parquet"), "4");
    process_until_caught_up(&log, &data);
    assert_eq!(dump(&data), first);
}

/// Whether any file under `dir` holds `needle`.
fn log_holds(dir: &Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).unwrap().flatten().any(|e| {
        let p = e.path();
        if p.is_dir() {
            return log_holds(&p, needle);
        }
        std::fs::read(&p).unwrap().windows(needle.len()).any(|w| w == needle)
    })
}

#[test]
fn json_values_from_other_producers_read_like_binary_ones() {
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("log");
    let log = log_dir.display().to_string();
    let data = dir.path().join("data");
    let input = fixture("oracle/events.jsonl.gz");
    ccstream(&[
        "ingest",
        "file",
        "--log",
        &log,
        "--partitions",
        "4",
        "--value-format",
        "json",
        input.to_str().unwrap(),
    ]);
    assert!(log_holds(&log_dir, b"{\"event_id\":\""), "the values are JSON text");
    process_until_caught_up(&log, &data);
    check_log_tables(&data);
    let first = dump(&data);
    // The same events in the binary form, after the JSON ones: every one is a duplicate.
    ingest(&log, &fixture("oracle/events.parquet"), "4");
    process_until_caught_up(&log, &data);
    assert_eq!(dump(&data), first);
    // And the binary form alone holds no JSON text.
    let binary_dir = dir.path().join("binary-log");
    ingest(&binary_dir.display().to_string(), &input, "4");
    assert!(!log_holds(&binary_dir, b"{\"event_id\":\""), "the default form is binary");
}

#[test]
fn unreadable_values_become_dead_letters_and_the_rest_is_kept() {
    use ccstream_eventlog::{OpenOptions, RecordRef};
    use ccstream_schemas::{encode_event, Event};
    /// 2026-01-05T10:00:00Z, when the records are appended.
    const APPENDED_MS: i64 = 1_767_607_200_000;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log").display().to_string();
    let data = dir.path().join("data");
    let line = |id: &str| {
        format!(
            r#"{{"event_id":"{id}","tenant_id":"t","agent_id":"a1","event_type":"agent_state_changed","occurred_at":"2026-01-04T17:00:21.926Z","to_state":"available"}}"#
        )
    };
    let binary = |id: &str| {
        let text = line(id);
        let e = Event::from_json(&text).unwrap();
        let mut out = Vec::new();
        encode_event(&e, &e.validate().unwrap(), &mut out);
        out
    };
    let json = line("e-json");
    let good = binary("e-binary");
    let cut = binary("e-cut");
    let mut future = binary("e-future");
    future[1] = 9;
    let values: [&[u8]; 4] = [json.as_bytes(), &good, &cut[..cut.len() - 3], &future];
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let options = OpenOptions { create_partitions: Some(2), ..OpenOptions::default() };
        let l = ccstream_eventlog::open(&log, &options).await.unwrap();
        let records: Vec<RecordRef<'_>> =
            values.iter().map(|v| RecordRef { key: b"a1", value: v, timestamp_ms: APPENDED_MS }).collect();
        l.append(&records).await.unwrap();
    });
    process_until_caught_up(&log, &data);
    assert_eq!(sql_csv(&data, "SELECT event_id FROM events ORDER BY event_id"), "event_id\ne-binary\ne-json\n");
    // Neither value says when it was ingested: its record's append time does.
    let stamped = "SELECT event_id FROM events WHERE ingested_at = TIMESTAMP '2026-01-05T10:00:00Z' ORDER BY event_id";
    assert_eq!(sql_csv(&data, stamped), "event_id\ne-binary\ne-json\n");
    // Each rejected value is kept whole, with the reason.
    let dead = sql_csv(&data, "SELECT reason, encode(raw, 'hex') AS raw FROM dead_letters ORDER BY reason");
    let hex = |b: &[u8]| b.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let want = format!(
        "reason,raw\nnot a valid binary event record: truncated,{}\nnot a valid binary event record: unknown version,{}\n",
        hex(&cut[..cut.len() - 3]),
        hex(&future)
    );
    assert_eq!(dead, want);
}

#[test]
fn kafka_log_equals_oracle() {
    let url = ccstream_eventlog::testing::kafka_url("e2e");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    ingest(&url, &fixture("oracle/events.jsonl.gz"), "4");
    process_until_caught_up(&url, &data);
    check_log_tables(&data);
}

/// The partitions a `process` run committed, from its summary line.
fn committed_partitions(stderr: &[u8]) -> Vec<u32> {
    let text = String::from_utf8_lossy(stderr);
    let line = text.lines().find(|l| l.starts_with("processed ")).unwrap_or_else(|| panic!("no summary in {text}"));
    let set = line.split("of partitions {").nth(1).and_then(|r| r.split('}').next()).unwrap();
    set.split(", ").filter(|s| !s.is_empty()).map(|s| s.parse().unwrap()).collect()
}

/// A running processor's `/metrics` text (empty when it is not serving).
fn metrics_of(listen_file: &Path) -> String {
    use std::io::{Read, Write};
    let Some(addr) = std::fs::read_to_string(listen_file).ok().filter(|a| a.ends_with('\n')) else {
        return String::new();
    };
    let Ok(mut s) = std::net::TcpStream::connect(addr.trim()) else { return String::new() };
    let mut text = String::new();
    if write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").is_err()
        || s.read_to_string(&mut text).is_err()
    {
        return String::new();
    }
    text
}

/// The partitions whose state a processor holds, from its `/metrics` text.
fn held_partitions(metrics: &str) -> std::collections::BTreeSet<String> {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("ccstream_processor_held_calls{partition=\""))
        .filter_map(|l| l.split('"').next().map(str::to_string))
        .collect()
}

#[test]
fn two_processors_in_one_group_share_the_partitions() {
    let url = ccstream_eventlog::testing::kafka_url("group");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_s = data.to_str().unwrap();
    ingest(&url, &fixture("oracle/events.jsonl.gz"), "4");
    let member = |name: &str| {
        let listen = dir.path().join(format!("{name}.addr"));
        let child = Command::new(env!("CARGO_BIN_EXE_ccstream"))
            .args(["process", "--log", &url, "--data", data_s, "--group", "shared", "--commit-interval-ms", "50"])
            .args(["--metrics-listen", "127.0.0.1:0", "--listen-file", listen.to_str().unwrap()])
            // Both append `events` in pieces and compact the partitions they append to, at
            // the same time.
            .args(["--poll-records", "500", "--append-flush-rows", "700", "--compact-after-files", "2"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        (common::KillOnDrop(child), listen)
    };
    let (first, first_listen) = member("first");
    let (second, second_listen) = member("second");
    // Both members fold and commit their own partitions at the same time, and together
    // they commit every event, dead letter and call.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut shared = false;
    let count = |sql: &str| sql_csv(&data, sql).lines().nth(1).unwrap_or_default().to_string();
    loop {
        assert!(std::time::Instant::now() < deadline, "the members did not share and finish within 120 s");
        let (ma, mb) = (metrics_of(&first_listen), metrics_of(&second_listen));
        let (a, b) = (held_partitions(&ma), held_partitions(&mb));
        shared |= !a.is_empty() && !b.is_empty() && a.is_disjoint(&b);
        let commits = |m: &str| common::metric_total(m, "ccstream_processor_commits_total");
        let compactions = |m: &str| common::metric_total(m, "ccstream_processor_compactions_total");
        if shared
            && commits(&ma) >= 1.0
            && commits(&mb) >= 1.0
            && compactions(&ma) + compactions(&mb) >= 1.0
            && has_commit(&data.join("call_facts"))
            && count("SELECT count(*) FROM events") == "10306"
            && count("SELECT count(*) FROM dead_letters") == "94"
            && count("SELECT count(*) FROM call_facts") == "1500"
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Ctrl-C: each commits what it read and stops.
    let mut stderr = Vec::new();
    for mut m in [first, second] {
        let status = Command::new("kill").args(["-INT", &m.0.id().to_string()]).status().unwrap();
        assert!(status.success());
        assert!(m.0.wait().unwrap().success(), "Ctrl-C is a clean stop");
        let mut text = Vec::new();
        std::io::Read::read_to_end(m.0.stderr.as_mut().unwrap(), &mut text).unwrap();
        stderr.push(text);
    }
    let (pa, pb) = (committed_partitions(&stderr[0]), committed_partitions(&stderr[1]));
    assert!(!pa.is_empty() && !pb.is_empty(), "both members committed: {pa:?} and {pb:?}");
    check_log_tables(&data);
    let parts = sql_csv(&data, "SELECT count(DISTINCT partition) AS n FROM interval_partials");
    assert_eq!(parts.lines().nth(1), Some("4"));
}

/// Whether the Delta table in `dir` has a first commit. A `_delta_log` directory alone does
/// not say so: a kill can land after the directory is made and before the commit file is.
fn has_commit(dir: &std::path::Path) -> bool {
    std::fs::read_dir(dir.join("_delta_log")).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.strip_suffix(".json").is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        })
    })
}

#[test]
fn sigkill_at_random_moments_loses_and_doubles_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log").display().to_string();
    let data = dir.path().join("data");
    ingest(&log, &fixture("oracle/events.jsonl.gz"), "4");
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut cut_short = 0;
    for round in 0..6 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ccstream"))
            .args(["process", "--log", &log, "--data", data.to_str().unwrap(), "--commit-interval-ms", "1"])
            // Compactions too (a partition's is due after two files), so kills land in them;
            // and ten minutes of state retention (the fixture spans two days), so kills land
            // while calls and interval partials are sealed, and restarts read them back.
            .args(["--poll-records", "100", "--append-flush-rows", "700", "--compact-after-files", "2"])
            .args(["--state-retention-ms", "600000"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // The kill lands at a random instant: before, during or between commits.
        std::thread::sleep(Duration::from_millis(rng.gen_range(20..400)));
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert!(!status.success(), "round {round}: killed, not finished");
        // Whatever was committed holds each event at most once.
        if has_commit(&data.join("events")) {
            let n = sql_csv(&data, "SELECT count(*) AS n, count(DISTINCT event_id) AS d FROM events");
            let (n, d) = n.lines().nth(1).unwrap().split_once(',').unwrap();
            assert_eq!(n, d, "round {round}: an event committed twice");
            cut_short += usize::from(n.parse::<u64>().unwrap() < 10_306);
        } else {
            cut_short += 1;
        }
    }
    assert!(cut_short >= 2, "only {cut_short} of the kills landed before the end: the test proves little");
    // The final run also appends `events` in pieces before its one full commit.
    let data_s = data.to_str().unwrap();
    ccstream(&["process", "--log", &log, "--data", data_s, "--until-caught-up", "--append-flush-rows", "700"]);
    check_log_tables(&data);
}

#[test]
fn run_ingests_and_processes_from_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ccstream.toml");
    let data = dir.path().join("data");
    std::fs::write(
        &config,
        format!(
            "[pipeline]\nlog = \"file://{}\"\ndata = \"{}\"\ninputs = [\"{}\"]\npartitions = 3\nmetrics_listen = \"127.0.0.1:0\"\n",
            dir.path().join("log").display(),
            data.display(),
            fixture("oracle/events.jsonl.gz").display()
        ),
    )
    .unwrap();
    ccstream(&["run", "--config", config.to_str().unwrap(), "--until-caught-up"]);
    check_log_tables(&data);
    // A config without [pipeline] is a clear error.
    std::fs::write(&config, "[service_level]\nsl_threshold_s = 30\n").unwrap();
    let out = common::ccstream_raw(&["run", "--config", config.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no [pipeline] section"));
}

/// A full disk under the FileLog: `ingest` fails with the disk's error, appends nothing
/// half-way that breaks the log, and, once the filesystem has room, the same ingest run
/// again and `process` give the oracle's tables (the retried records' repeats are dropped
/// by event id). The log lives on a tmpfs this test mounts (CI runs as root).
#[test]
fn a_full_disk_under_the_file_log_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mount = |opts: &str| {
        let out = Command::new("mount").args(["-t", "tmpfs", "-o", opts, "tmpfs"]).arg(&mnt).output().unwrap();
        assert!(
            out.status.success(),
            "mount -o {opts} (the test needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    mount("size=1m");
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(&mnt);
    let log = mnt.join("log").display().to_string();
    let input = fixture("oracle/events.jsonl.gz");
    let args = ["ingest", "file", "--log", &log, "--partitions", "4", input.to_str().unwrap()];
    let out = common::ccstream_raw(&args);
    assert!(!out.status.success(), "the ingest fit in 1 MiB");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("No space left"), "{stderr}");
    // Room again.
    mount("remount,size=64m");
    ccstream(&args);
    let data = dir.path().join("data");
    process_until_caught_up(&log, &data);
    check_against(&data, "expected");
    let n = sql_csv(&data, "SELECT count(*) AS n, count(DISTINCT event_id) AS d FROM events");
    assert_eq!(n.lines().nth(1), Some("10306,10306"), "each event once: {n}");
    // A malformed line the failed run had appended is dead-lettered again by the retry.
    let dl = sql_csv(&data, "SELECT count(*) AS n, count(DISTINCT line) AS lines FROM dead_letters");
    let (n, lines) = dl.lines().nth(1).unwrap().split_once(',').unwrap();
    assert_eq!(lines, "94", "every malformed line: {dl}");
    assert!((94..=188).contains(&n.parse::<u32>().unwrap()), "{dl}");
}
