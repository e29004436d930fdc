//! `process --metrics-listen`: the `/metrics` endpoint, scraped over real HTTP while the
//! processor runs, reports the pipeline's health and the per-queue KPIs.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ccstream, fixture, metric_total as total, scrape_metrics};

fn scrape(addr: &str) -> String {
    let (head, body) = scrape_metrics(addr);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    body
}

#[test]
fn metrics_report_health_and_kpis() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log").display().to_string();
    let data = dir.path().join("data");
    let listen_file = dir.path().join("metrics.addr");
    ccstream(&["ingest", "file", "--log", &log, fixture("oracle/events.jsonl.gz").to_str().unwrap()]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_ccstream"))
        .args(["process", "--log", &log, "--data", data.to_str().unwrap(), "--metrics-listen", "127.0.0.1:0"])
        .args(["--listen-file", listen_file.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let metrics = loop {
        assert!(Instant::now() < deadline, "the processor did not report everything within 60 s");
        if let Some(addr) = std::fs::read_to_string(&listen_file).ok().filter(|a| a.ends_with('\n')) {
            let m = scrape(addr.trim());
            if total(&m, "ccstream_processor_records_total") == 10_691.0
                && total(&m, "ccstream_processor_commits_total") >= 1.0
                && total(&m, "ccstream_kpi_offered_calls_total") == 1_500.0
            {
                break m;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(total(&metrics, "ccstream_processor_duplicates_total"), 291.0);
    assert_eq!(total(&metrics, "ccstream_processor_dead_letters_total"), 94.0);
    let answered = total(&metrics, "ccstream_kpi_answered_calls_total");
    let abandoned = total(&metrics, "ccstream_kpi_abandoned_calls_total");
    let waiting = total(&metrics, "ccstream_kpi_calls_waiting");
    assert!(answered > 0.0 && abandoned > 0.0);
    assert!(answered + abandoned + waiting <= 1_500.0);
    assert!(total(&metrics, "ccstream_kpi_answered_within_sl_calls_total") <= answered);
    assert!(metrics.contains("ccstream_processor_commit_duration_seconds_bucket"));
    assert!(metrics.contains("ccstream_kpi_service_level_ratio{queue="));
    // Labels name tenants, queues and partitions only.
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        if let Some((_, labels)) = line.split_once('{') {
            for pair in labels.split('}').next().unwrap().split(',') {
                let key = pair.split('=').next().unwrap();
                assert!(["tenant", "queue", "partition", "table", "le"].contains(&key), "label {key} in {line}");
            }
        }
    }
}
