//! `ccstream run` as a child process, and the minimal clients the end-to-end tests talk to
//! its listeners with.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::KillOnDrop;

/// Waits for `path` to hold complete lines, then returns them.
pub fn wait_for_file(path: &Path, child: &mut KillOnDrop) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(text) = std::fs::read_to_string(path).ok().filter(|t| t.ends_with('\n')) {
            return text;
        }
        if let Some(status) = child.0.try_wait().unwrap() {
            panic!("ccstream run exited early: {status}\n{}", stderr_of(path));
        }
        assert!(Instant::now() < deadline, "{} was not written within 60 s\n{}", path.display(), stderr_of(path));
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A minimal HTTP/1.1 client: one request per connection; returns (status, body).
pub fn http(addr: SocketAddr, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// Polls `sql` until it returns `want` (CSV without header) or the deadline passes.
pub fn wait_for_rows(data: &Path, sql: &str, want: &str, child: &mut KillOnDrop) {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Some(status) = child.0.try_wait().unwrap() {
            panic!("ccstream run exited early: {status}\n{}", stderr_of(data));
        }
        let out = Command::new(env!("CARGO_BIN_EXE_ccstream"))
            .args(["sql", "--data", data.to_str().unwrap(), "--format", "csv", sql])
            .output()
            .unwrap();
        last = String::from_utf8_lossy(&out.stdout).lines().skip(1).collect::<Vec<_>>().join("\n");
        if out.status.success() && last == want {
            return;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("{sql}\n  wanted: {want}\n  last:   {last}\n{}", stderr_of(data));
}

/// The end of the stderr of the `ccstream run` whose data directory is `data` (see
/// [`Run::start`]).
pub fn stderr_of(data: &Path) -> String {
    let text = std::fs::read_to_string(data.with_file_name("stderr.log")).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(40).collect();
    format!("stderr of ccstream run (last lines):\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
}

/// A running `ccstream run` over `config` (TOML after the `[pipeline]` section's log and
/// data, which live in a temporary directory).
pub struct Run {
    pub _dir: tempfile::TempDir,
    pub data: PathBuf,
    pub child: KillOnDrop,
    /// `NAME ADDR` lines of the source listeners.
    pub addrs: String,
    pub metrics: Option<SocketAddr>,
}

impl Run {
    pub fn start(config: &str) -> Run {
        Run::start_with(config, None)
    }

    /// [`Run::start`] with at most `open_files` file descriptors (`RLIMIT_NOFILE`).
    pub fn start_with(config: &str, open_files: Option<u64>) -> Run {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let path = dir.path().join("ccstream.toml");
        let head = format!(
            "[pipeline]\nlog = \"file://{}\"\ndata = \"{}\"\npartitions = 2\ncommit_interval_ms = 200\n",
            dir.path().join("log").display(),
            data.display()
        );
        std::fs::write(&path, head + config).unwrap();
        let sources_file = dir.path().join("sources.addr");
        let metrics_file = dir.path().join("metrics.addr");
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_ccstream"));
        command
            .args(["run", "--config", path.to_str().unwrap()])
            .args(["--sources-listen-file", sources_file.to_str().unwrap()])
            .args(["--listen-file", metrics_file.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(stderr);
        if let Some(n) = open_files {
            // SAFETY: setrlimit is async-signal-safe; nothing else runs in the child here.
            unsafe {
                command.pre_exec(move || {
                    let limit = libc::rlimit { rlim_cur: n, rlim_max: n };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = KillOnDrop(command.spawn().unwrap());
        let addrs = wait_for_file(&sources_file, &mut child);
        let metrics =
            config.contains("metrics_listen").then(|| wait_for_file(&metrics_file, &mut child).trim().parse().unwrap());
        Run { _dir: dir, data, child, addrs, metrics }
    }

    pub fn addr(&self, name: &str) -> SocketAddr {
        addr_of(&self.addrs, name)
    }
}

/// The address of listener `name` in `NAME ADDR` lines.
pub fn addr_of(addrs: &str, name: &str) -> SocketAddr {
    addrs
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in {addrs}"))
        .parse()
        .unwrap()
}
