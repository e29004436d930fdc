//! A real Prometheus scrapes a running processor and evaluates the shipped rules
//! (`dashboards/prometheus/`): `promtool` accepts the rules, their unit tests and the
//! processor's exposition; every metric the rules name is one the processor exports; the
//! scraped KPI counters equal the fixture's; every rule evaluates without error.
//!
//! Needs Debian's `prometheus` package (`prometheus` and `promtool` on `PATH`), which
//! `.ci/run` installs. Without it the test fails; it never skips.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ccstream, fixture, metric_total, scrape_metrics, KillOnDrop};

fn tool(name: &str) -> PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("`{name}` is not on PATH: install Debian's prometheus package (.ci/run does)"))
}

fn rules_dir() -> PathBuf {
    Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
        .join("dashboards/prometheus")
}

/// Runs `promtool ARGS` (with `stdin` as its input) and fails the test with its output
/// unless it succeeds.
fn promtool(args: &[&str], stdin: Option<&str>) {
    let mut child = Command::new(tool("promtool"))
        .args(args)
        .current_dir(rules_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.unwrap_or_default().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `GET path` from `addr` (HTTP/1.0: the body is never chunked): status line and body.
fn get(addr: &str, path: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (head.lines().next().unwrap_or_default().to_string(), body.to_string())
}

/// A PromQL instant query against Prometheus at `addr`: the result vector.
fn query(addr: &str, promql: &str) -> Vec<serde_json::Value> {
    match try_query(addr, promql) {
        Ok(result) => result,
        Err(status) => panic!("{promql}: {status}"),
    }
}

/// [`query`], or the status line and body of a response other than 200 (Prometheus answers
/// 503 while it starts).
fn try_query(addr: &str, promql: &str) -> Result<Vec<serde_json::Value>, String> {
    let encoded: String = promql
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"_.-~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let (status, body) = get(addr, &format!("/api/v1/query?query={encoded}"));
    if !status.contains(" 200") {
        return Err(format!("{status} {body}"));
    }
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The names of the processor's metrics that `rules` uses (histogram series by their
/// family). Recording rules are named `ccstream:…`, so every `ccstream_` starts one.
fn metric_names(rules: &str) -> Vec<String> {
    let mut names: Vec<String> = rules
        .match_indices("ccstream_")
        .map(|(i, _)| {
            let name = &rules[i..];
            let end = name.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(name.len());
            name[..end].trim_end_matches("_bucket").to_string()
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

#[test]
fn prometheus_scrapes_the_processor_and_evaluates_the_rules() {
    promtool(&["check", "rules", "ccstream.rules.yml"], None);
    promtool(&["test", "rules", "ccstream.rules.test.yml"], None);

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log").display().to_string();
    let data = dir.path().join("data");
    let listen_file = dir.path().join("metrics.addr");
    ccstream(&["ingest", "file", "--log", &log, fixture("oracle/events.jsonl.gz").to_str().unwrap()]);
    let _processor = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_ccstream"))
            .args(["process", "--log", &log, "--data", data.to_str().unwrap(), "--metrics-listen", "127.0.0.1:0"])
            .args(["--listen-file", listen_file.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    let target = loop {
        assert!(Instant::now() < deadline, "the processor did not bind /metrics within 90 s");
        if let Some(a) = std::fs::read_to_string(&listen_file).ok().filter(|a| a.ends_with('\n')) {
            break a.trim().to_string();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Once everything is folded and committed, the exposition holds every metric the rules
    // use and passes promtool's lint.
    let rules = std::fs::read_to_string(rules_dir().join("ccstream.rules.yml")).unwrap();
    let used = metric_names(&rules);
    assert!(used.len() >= 8, "{used:?}");
    let exported = |m: &str, name: &str| m.lines().any(|l| l.starts_with(&format!("# TYPE {name} ")));
    let exposition = loop {
        let m = scrape_metrics(&target).1;
        let missing: Vec<&String> = used.iter().filter(|n| !exported(&m, n)).collect();
        assert!(
            Instant::now() < deadline,
            "within 90 s: the rules use {missing:?}, which the processor does not export"
        );
        if metric_total(&m, "ccstream_kpi_offered_calls_total") == 1_500.0
            && metric_total(&m, "ccstream_processor_commits_total") >= 1.0
            && missing.is_empty()
        {
            break m;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    promtool(&["check", "metrics"], Some(&exposition));

    // Prometheus scrapes it every second and evaluates the rules every second.
    let port = free_port();
    let prom_addr = format!("127.0.0.1:{port}");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {rules}\n\
             scrape_configs:\n  - job_name: ccstream\n    static_configs:\n      - targets: ['{target}']\n",
            rules = rules_dir().join("ccstream.rules.yml").display()
        ),
    )
    .unwrap();
    let prom_log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let _prometheus = KillOnDrop(
        Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()))
            .arg(format!("--web.listen-address={prom_addr}"))
            .stdout(Stdio::null())
            .stderr(prom_log)
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    let prom_log = || std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();
    loop {
        assert!(Instant::now() < deadline, "Prometheus did not scrape the processor within 90 s:\n{}", prom_log());
        // Until its storage is ready, Prometheus answers 503.
        let ready = std::net::TcpStream::connect(&prom_addr).is_ok()
            && try_query(&prom_addr, "sum(ccstream_kpi_offered_calls_total)")
                .is_ok_and(|r| r.first().is_some_and(|r| r["value"][1].as_str() == Some("1500")));
        if ready {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let up = query(&prom_addr, "up{job=\"ccstream\"}");
    assert_eq!(up.len(), 1);
    assert_eq!(up[0]["value"][1], "1");
    let answered = query(&prom_addr, "sum(ccstream_kpi_answered_calls_total)");
    let scraped = metric_total(&scrape_metrics(&target).1, "ccstream_kpi_answered_calls_total");
    assert_eq!(answered[0]["value"][1].as_str().unwrap().parse::<f64>().unwrap(), scraped);

    // Every rule has been evaluated, without error.
    loop {
        assert!(Instant::now() < deadline, "the rules were not all evaluated within 90 s:\n{}", prom_log());
        let (status, body) = get(&prom_addr, "/api/v1/rules");
        assert!(status.contains(" 200"), "{status} {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let rules: Vec<&serde_json::Value> = v["data"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap().iter())
            .collect();
        assert_eq!(rules.len(), 11, "{body}");
        for r in &rules {
            assert_ne!(r["health"], "err", "rule {} failed: {}", r["name"], r["lastError"]);
        }
        if rules.iter().all(|r| r["health"] == "ok") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // A recording rule over the processor's own series records it.
    loop {
        assert!(Instant::now() < deadline, "ccstream:consumer_lag_records:sum recorded nothing within 90 s");
        let lag = query(&prom_addr, "ccstream:consumer_lag_records:sum");
        if let Some(r) = lag.first() {
            assert_eq!(lag.len(), 1, "{lag:?}");
            assert_eq!(r["metric"]["job"], "ccstream");
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
