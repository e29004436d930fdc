//! Delta commits on local disk are durable in order: every data file a commit adds, and the
//! directories that hold them, are fsynced before the commit's log entry appears, and the
//! log entry after. Traced with `strace` (Debian's `strace` package; `.ci/run` installs it).

mod common;

use std::process::Command;

#[test]
fn data_files_are_fsynced_before_the_commit_that_references_them() {
    let dir = tempfile::tempdir().unwrap();
    let (data, trace) = (dir.path().join("data"), dir.path().join("trace"));
    let input = common::fixture("oracle/events.parquet");
    let out = Command::new("strace")
        .args(["-f", "-y", "-qq", "-e", "trace=fsync,fdatasync,rename,renameat,renameat2,link,linkat", "-o"])
        .arg(&trace)
        .arg(env!("CARGO_BIN_EXE_ccstream"))
        .args(["replay", "--input", input.to_str().unwrap(), "--data", data.to_str().unwrap()])
        .output()
        .expect("strace is needed for this test (Debian package strace)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let trace = std::fs::read_to_string(&trace).unwrap();
    let lines: Vec<&str> = trace.lines().collect();
    let synced = |path: &str, before: usize| {
        lines[..before]
            .iter()
            .any(|l| (l.contains("fsync(") || l.contains("fdatasync(")) && l.contains(&format!("<{path}>")))
    };
    let mut checked = 0;
    for table in ["call_facts", "agent_legs", "interval_partials"] {
        let root = std::fs::canonicalize(data.join(table)).unwrap();
        let entry = root.join("_delta_log/00000000000000000001.json");
        let name = entry.to_str().unwrap();
        // Where the commit's log entry came to be (a rename or a link into place).
        let created = lines
            .iter()
            .position(|l| (l.contains("rename") || l.contains("link")) && l.contains(name))
            .unwrap_or_else(|| panic!("no rename or link creates {name}:\n{trace}"));
        for action in std::fs::read_to_string(&entry).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(action).unwrap();
            let Some(path) = v["add"]["path"].as_str() else { continue };
            let file = root.join(path);
            assert!(synced(file.to_str().unwrap(), created), "{} not fsynced before {name}", file.display());
            assert!(synced(file.parent().unwrap().to_str().unwrap(), created), "{}'s directory", file.display());
            checked += 1;
        }
        assert!(synced(root.join("_delta_log").to_str().unwrap(), lines.len()), "{table}/_delta_log not fsynced");
        assert!(synced(name, lines.len()), "{name} not fsynced");
    }
    assert!(checked >= 3, "only {checked} files checked");
}

/// A commit of many files (a backfill's `events`, one file per tenant and day) makes them
/// durable with one `syncfs` of their filesystem, before its log entry appears.
#[test]
fn a_commit_of_many_files_syncs_their_filesystem_first() {
    let dir = tempfile::tempdir().unwrap();
    let (log, data, trace) = (dir.path().join("log"), dir.path().join("data"), dir.path().join("trace"));
    let input = common::fixture("oracle/events.jsonl.gz");
    let log_url = format!("file://{}", log.display());
    common::ccstream(&["ingest", "file", "--log", &log_url, "--partitions", "1", input.to_str().unwrap()]);
    let out = Command::new("strace")
        .args(["-f", "-y", "-qq", "-e", "trace=fsync,syncfs,rename,renameat,renameat2,link,linkat", "-o"])
        .arg(&trace)
        .arg(env!("CARGO_BIN_EXE_ccstream"))
        .args(["process", "--log", &log_url, "--data", data.to_str().unwrap(), "--until-caught-up"])
        .output()
        .expect("strace is needed for this test (Debian package strace)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let trace = std::fs::read_to_string(&trace).unwrap();
    let lines: Vec<&str> = trace.lines().collect();
    let root = std::fs::canonicalize(data.join("events")).unwrap();
    let entry = root.join("_delta_log/00000000000000000001.json");
    let adds = std::fs::read_to_string(&entry).unwrap().lines().filter(|l| l.contains("\"add\"")).count();
    assert!(adds > 8, "only {adds} files in the commit");
    let created = lines
        .iter()
        .position(|l| (l.contains("rename") || l.contains("link")) && l.contains(entry.to_str().unwrap()))
        .unwrap_or_else(|| panic!("nothing creates {}:\n{trace}", entry.display()));
    let root_name = format!("<{}>", root.display());
    assert!(
        lines[..created].iter().any(|l| l.contains("syncfs(") && l.contains(&root_name)),
        "no syncfs of {} before its commit",
        root.display()
    );
}
