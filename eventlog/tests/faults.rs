//! FileLog under faults: writes that fail (this process's file size limit, `RLIMIT_FSIZE`,
//! makes every write past it fail the way a full disk does) and a damaged byte in the
//! middle of the active segment.

use std::time::Duration;

use ccstream_eventlog::file::{truncate_partition, FileLog, FileLogConfig, FsyncPolicy};
use ccstream_eventlog::{Delivered, Error, EventLog, Poll, RecordRef};

/// While it lives, no file of this process may grow past `bytes`: a write past it fails
/// with `EFBIG` (`SIGXFSZ` ignored), as one fails on a full disk. The limit is process
/// wide; the other test here writes a few KiB.
struct FileSizeLimit {
    old: libc::rlimit,
}

impl FileSizeLimit {
    fn set(bytes: u64) -> FileSizeLimit {
        let mut old = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: plain syscalls on this process's own signal disposition and limits.
        unsafe {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            assert_eq!(libc::getrlimit(libc::RLIMIT_FSIZE, &mut old), 0);
            let new = libc::rlimit { rlim_cur: bytes as libc::rlim_t, rlim_max: old.rlim_max };
            assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &new), 0, "{}", std::io::Error::last_os_error());
        }
        FileSizeLimit { old }
    }
}

impl Drop for FileSizeLimit {
    fn drop(&mut self) {
        // SAFETY: as above; restores the limit read in `set`.
        unsafe {
            libc::setrlimit(libc::RLIMIT_FSIZE, &self.old);
        }
    }
}

async fn read_all(log: &FileLog, group: &str) -> Vec<Delivered> {
    let mut c = log.subscribe(group).await.unwrap();
    let mut out = Vec::new();
    loop {
        match c.poll(1000, Duration::ZERO).await.unwrap() {
            Poll::Records(r) => out.extend(r),
            Poll::Idle => return out,
            _ => {}
        }
    }
}

fn values(n: std::ops::Range<usize>) -> Vec<Vec<u8>> {
    n.map(|i| format!("record {i:06} {}", "x".repeat(200)).into_bytes()).collect()
}

async fn append(log: &FileLog, values: &[Vec<u8>]) -> Result<Vec<(u32, u64)>, Error> {
    let refs: Vec<RecordRef<'_>> =
        values.iter().map(|v| RecordRef { key: &v[..13], value: v, timestamp_ms: 0 }).collect();
    log.append(&refs).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_writes_fail_appends_then_they_resume_without_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    // Segments could grow to 1 MiB; the limit stops them at 200 KiB.
    let config = FileLogConfig { segment_bytes: 1 << 20, ..FileLogConfig::new(dir.path()) };
    assert_eq!(config.fsync, FsyncPolicy::Always);
    let log = FileLog::open(config.clone(), Some(2)).unwrap();
    let mut acked: Vec<Vec<u8>> = Vec::new();
    let mut failed = Vec::new();
    let mut next = 0;
    {
        let _limit = FileSizeLimit::set(200 << 10);
        // Batches of 50 records (~11 KiB) until a write fails.
        for _ in 0..1000 {
            let batch = values(next..next + 50);
            next += 50;
            match append(&log, &batch).await {
                Ok(_) => acked.extend(batch),
                Err(e) => {
                    assert!(e.to_string().contains("File too large"), "{e}");
                    failed.extend(batch);
                    break;
                }
            }
        }
        assert!(!failed.is_empty(), "no write failed after {} records", acked.len());
        // Still no room: appends keep failing, cleanly.
        let batch = values(next..next + 50);
        next += 50;
        assert!(append(&log, &batch).await.is_err());
        failed.extend(batch);
    }
    // Room again: the next append works, and its offsets follow what is on disk.
    let after = values(next..next + 50);
    append(&log, &after).await.expect("the append once writes work again");
    acked.extend(after.iter().cloned());
    // Every acknowledged record is there, offsets have no gap, and anything else is from
    // a failed append (its caller retries those).
    let log = FileLog::open(config, None).unwrap();
    let read = read_all(&log, "check").await;
    for p in 0..2 {
        let offsets: Vec<u64> = read.iter().filter(|d| d.partition == p).map(|d| d.offset).collect();
        assert_eq!(offsets, (0..offsets.len() as u64).collect::<Vec<_>>(), "partition {p}");
    }
    let got: std::collections::HashSet<&[u8]> = read.iter().map(|d| &d.value[..]).collect();
    for v in &acked {
        assert!(got.contains(&v[..]), "acknowledged {} lost", String::from_utf8_lossy(&v[..13]));
    }
    let known: std::collections::HashSet<&[u8]> = acked.iter().chain(&failed).map(|v| &v[..]).collect();
    assert!(read.iter().all(|d| known.contains(&d.value[..])));
    assert_eq!(read.len(), got.len(), "a record twice");
}

#[tokio::test]
async fn damage_in_the_middle_of_the_active_segment_refuses_to_open_and_truncate_repairs() {
    let dir = tempfile::tempdir().unwrap();
    let config = FileLogConfig { fsync: FsyncPolicy::Never, ..FileLogConfig::new(dir.path()) };
    let log = FileLog::open(config.clone(), Some(1)).unwrap();
    append(&log, &values(0..10)).await.unwrap();
    drop(log);
    let seg = dir.path().join("p0000").join(format!("{:020}.seg", 0));
    let mut bytes = std::fs::read(&seg).unwrap();
    let len = bytes.len();
    let record = (len - 16) / 10;
    // A byte inside the fourth record's value (offset 3).
    bytes[16 + 3 * record + 100] ^= 0x55;
    std::fs::write(&seg, &bytes).unwrap();
    let log = FileLog::open(config.clone(), None).unwrap();
    let err = append(&log, &values(10..11)).await.unwrap_err();
    match &err {
        Error::Damaged { path, partition: 0, position, offset: 3, later: 4, .. } => {
            assert!(path.ends_with("00000000000000000000.seg"), "{err}");
            assert_eq!(*position, (16 + 3 * record) as u64);
        }
        other => panic!("expected Damaged, got {other}"),
    }
    let repair = format!("ccstream log truncate --log {} --partition 0 --offset 3", dir.path().display());
    assert!(err.to_string().contains(&repair), "{err}");
    // Nothing was truncated, and asking again gives the same answer.
    assert_eq!(std::fs::metadata(&seg).unwrap().len() as usize, len);
    assert!(matches!(append(&log, &values(10..11)).await, Err(Error::Damaged { .. })));
    drop(log);
    // The repair: past the damage it refuses; at it, it cuts and keeps the cut bytes.
    assert!(matches!(truncate_partition(dir.path(), 0, 5), Err(Error::Corrupt { .. })));
    let cut = truncate_partition(dir.path(), 0, 3).unwrap();
    assert_eq!(cut as usize, 7 * record);
    let aside = std::fs::read(seg.with_extension("seg.cut-3")).unwrap();
    assert_eq!(aside, bytes[16 + 3 * record..]);
    let log = FileLog::open(config, None).unwrap();
    let pos = append(&log, &values(10..12)).await.unwrap();
    assert_eq!(pos, vec![(0, 3), (0, 4)]);
    let read = read_all(&log, "check").await;
    let keys: Vec<String> = read.iter().map(|d| String::from_utf8_lossy(&d.value[..13]).to_string()).collect();
    let want: Vec<String> = [0, 1, 2, 10, 11].iter().map(|i| format!("record {i:06}")).collect();
    assert_eq!(keys, want);
}
