//! FileLog beyond the conformance suite: a model check against `Vec`s, torn-tail recovery,
//! corruption, rolling and retention.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use ccstream_eventlog::file::{FileLog, FileLogConfig, FsyncPolicy};
use ccstream_eventlog::{partition_for, Delivered, Error, EventLog, LogConsumer, Poll, RecordRef};
use proptest::prelude::*;

/// A record as the model holds it: key, value, timestamp.
type ModelRecord = (Vec<u8>, Vec<u8>, i64);

fn config(dir: &Path, segment_bytes: u64) -> FileLogConfig {
    FileLogConfig { fsync: FsyncPolicy::Never, segment_bytes, ..FileLogConfig::new(dir) }
}

async fn drain(c: &mut dyn LogConsumer) -> Vec<Delivered> {
    let mut out = Vec::new();
    loop {
        match c.poll(64, Duration::ZERO).await.unwrap() {
            Poll::Records(r) => out.extend(r),
            Poll::Idle => return out,
            Poll::Assigned(_) | Poll::Revoked(_) => {}
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// Append records with these (key, value length) pairs.
    Append(Vec<(u8, usize)>),
    /// Drop the log and open it again (a restart of the writer).
    Reopen,
    /// Read partition `p % partitions` from offset `o % (len + 1)` and compare with the model.
    Read(u32, u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => proptest::collection::vec((0u8..16, 0usize..300), 0..30).prop_map(Op::Append),
        1 => Just(Op::Reopen),
        2 => (any::<u32>(), any::<u64>()).prop_map(|(p, o)| Op::Read(p, o)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// FileLog behaves like one `Vec` of records per partition, across rolls and restarts.
    #[test]
    fn file_log_matches_a_vec_model(ops in proptest::collection::vec(op(), 1..25), partitions in 1u32..4) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let mut log = FileLog::open(config(dir.path(), 2048), Some(partitions)).unwrap();
            // A handle that never appends: it finds the ends by scanning the files, going on
            // from where its last scan stopped, across rolls.
            let watcher = FileLog::open(config(dir.path(), 2048), None).unwrap();
            let mut model: Vec<Vec<ModelRecord>> = vec![Vec::new(); partitions as usize];
            let mut stamp = 0i64;
            for op in ops {
                match op {
                    Op::Append(recs) => {
                        let owned: Vec<ModelRecord> = recs.iter().map(|(k, len)| {
                            stamp += 1;
                            (vec![*k; 3], (0..*len).map(|i| (i as u8).wrapping_mul(*k)).collect(), stamp)
                        }).collect();
                        let refs: Vec<RecordRef<'_>> = owned.iter().map(|(k, v, t)| RecordRef { key: k, value: v, timestamp_ms: *t }).collect();
                        let pos = log.append(&refs).await.unwrap();
                        for ((k, v, t), (p, o)) in owned.into_iter().zip(pos) {
                            assert_eq!(p, partition_for(&k, partitions));
                            assert_eq!(o, model[p as usize].len() as u64);
                            model[p as usize].push((k, v, t));
                        }
                    }
                    Op::Reopen => {
                        drop(log);
                        log = FileLog::open(config(dir.path(), 2048), None).unwrap();
                    }
                    Op::Read(p, o) => {
                        let p = p % partitions;
                        let want = &model[p as usize];
                        let from = o % (want.len() as u64 + 1);
                        let mut c = log.subscribe("model").await.unwrap();
                        assert!(matches!(c.poll(1, Duration::ZERO).await.unwrap(), Poll::Assigned(_)));
                        for q in 0..partitions {
                            // Park the other partitions at their end.
                            let at = if q == p { from } else { model[q as usize].len() as u64 };
                            c.seek(q, at).await.unwrap();
                        }
                        let got = drain(&mut *c).await;
                        let got: Vec<(u64, Vec<u8>, Vec<u8>, i64)> = got.into_iter().map(|d| (d.offset, d.key.to_vec(), d.value.to_vec(), d.timestamp_ms)).collect();
                        let expect: Vec<(u64, Vec<u8>, Vec<u8>, i64)> = want.iter().enumerate().skip(from as usize)
                            .map(|(i, (k, v, t))| (i as u64, k.clone(), v.clone(), *t)).collect();
                        assert_eq!(got, expect);
                    }
                }
                let ends: Vec<u64> = model.iter().map(|m| m.len() as u64).collect();
                assert_eq!(watcher.end_offsets().await.unwrap(), ends);
            }
            let ends: Vec<u64> = model.iter().map(|m| m.len() as u64).collect();
            assert_eq!(log.end_offsets().await.unwrap(), ends);
        });
    }
}

fn segments(dir: &Path, p: u32) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir.join(format!("p{p:04}"))).unwrap().map(|e| e.unwrap().path()).collect();
    v.sort();
    v
}

async fn append_n(log: &FileLog, from: usize, n: usize) {
    let values: Vec<Vec<u8>> = (from..from + n).map(|i| format!("record {i}").into_bytes()).collect();
    let refs: Vec<RecordRef<'_>> =
        values.iter().map(|v| RecordRef { key: b"one", value: v, timestamp_ms: 0 }).collect();
    log.append(&refs).await.unwrap();
}

async fn read_all(log: &FileLog) -> Result<Vec<Delivered>, Error> {
    let mut c = log.subscribe("reader").await?;
    let mut out = Vec::new();
    loop {
        match c.poll(1000, Duration::ZERO).await? {
            Poll::Records(r) => out.extend(r),
            Poll::Idle => return Ok(out),
            _ => {}
        }
    }
}

#[tokio::test]
async fn a_torn_tail_is_cut_when_the_writer_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let log = FileLog::open(config(dir.path(), 1 << 20), Some(1)).unwrap();
    append_n(&log, 0, 10).await;
    drop(log);
    // A crash in the middle of a write: half a record at the end.
    let seg = segments(dir.path(), 0).pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let whole = bytes.len();
    bytes.extend_from_slice(&[40, 0, 0, 0, 1, 2, 3, 4, 5, 6]);
    std::fs::write(&seg, &bytes).unwrap();
    // Readers see only whole records.
    let log = FileLog::open(config(dir.path(), 1 << 20), None).unwrap();
    let watcher = FileLog::open(config(dir.path(), 1 << 20), None).unwrap();
    assert_eq!(read_all(&log).await.unwrap().len(), 10);
    assert_eq!(watcher.end_offsets().await.unwrap(), vec![10]);
    // The writer cuts the tail and appends after the last whole record.
    append_n(&log, 10, 5).await;
    assert!(std::fs::metadata(&seg).unwrap().len() > whole as u64);
    let all = read_all(&log).await.unwrap();
    let values: Vec<String> = all.iter().map(|d| String::from_utf8(d.value.to_vec()).unwrap()).collect();
    assert_eq!(values, (0..15).map(|i| format!("record {i}")).collect::<Vec<_>>());
    assert_eq!(all.iter().map(|d| d.offset).collect::<Vec<_>>(), (0..15).collect::<Vec<_>>());
    assert_eq!(watcher.end_offsets().await.unwrap(), vec![15]);
}

#[tokio::test]
async fn damage_before_the_tail_is_an_error_not_a_skip() {
    let dir = tempfile::tempdir().unwrap();
    let log = FileLog::open(config(dir.path(), 1 << 20), Some(1)).unwrap();
    append_n(&log, 0, 10).await;
    let seg = segments(dir.path(), 0).pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[60] ^= 0xff; // inside the second record
    std::fs::write(&seg, &bytes).unwrap();
    let err = read_all(&log).await.unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
}

#[tokio::test]
async fn segments_roll_and_retention_deletes_the_oldest() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}?fsync=always&segment_bytes=1024&retention_bytes=3000", dir.path().display());
    let cfg = FileLogConfig::from_url(&url).unwrap();
    let log = FileLog::open(cfg, Some(1)).unwrap();
    for i in 0..20 {
        append_n(&log, i * 10, 10).await;
    }
    let segs = segments(dir.path(), 0);
    let total: u64 = segs.iter().map(|s| std::fs::metadata(s).unwrap().len()).sum();
    assert!(segs.len() >= 2, "{segs:?}");
    assert!(total <= 3000 + 1024, "retention keeps about 3000 bytes, found {total}");
    let earliest = log.start_offsets().await.unwrap()[0];
    assert!(earliest > 0);
    // Reading below what is retained is an error that says so.
    let mut c = log.subscribe("late").await.unwrap();
    let err = c.seek(0, 0).await.unwrap_err();
    assert!(matches!(err, Error::OffsetOutOfRange { earliest: e, .. } if e == earliest), "{err}");
    // Everything retained reads back in order across segments.
    c.seek(0, earliest).await.unwrap();
    let mut got = Vec::new();
    loop {
        match c.poll(1000, Duration::ZERO).await.unwrap() {
            Poll::Records(r) => got.extend(r),
            Poll::Idle => break,
            _ => {}
        }
    }
    assert_eq!(got.iter().map(|d| d.offset).collect::<Vec<_>>(), (earliest..200).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_second_writer_process_is_refused_and_partition_counts_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let a = FileLog::open(config(dir.path(), 1 << 20), Some(2)).unwrap();
    append_n(&a, 0, 1).await;
    // flock is per open file description: a second FileLog stands in for a second process.
    let b = FileLog::open(config(dir.path(), 1 << 20), None).unwrap();
    let refs = [RecordRef { key: b"k", value: b"v", timestamp_ms: 0 }];
    let err = b.append(&refs).await.unwrap_err();
    assert!(err.to_string().contains("another process"), "{err}");
    let err = FileLog::open(config(dir.path(), 1 << 20), Some(3)).unwrap_err();
    assert!(matches!(err, Error::PartitionCount { found: 2, wanted: 3, .. }), "{err}");
}

#[tokio::test]
async fn records_appended_by_another_log_handle_are_seen() {
    // The consumer side of a second process: it polls the files.
    let dir = tempfile::tempdir().unwrap();
    let writer = FileLog::open(config(dir.path(), 1 << 20), Some(1)).unwrap();
    let reader =
        FileLog::open(FileLogConfig { poll_interval: Duration::from_millis(5), ..config(dir.path(), 1 << 20) }, None)
            .unwrap();
    let mut c = reader.subscribe("tail").await.unwrap();
    assert!(matches!(c.poll(1, Duration::ZERO).await.unwrap(), Poll::Assigned(_)));
    append_n(&writer, 0, 3).await;
    let mut got = BTreeMap::new();
    while got.len() < 3 {
        if let Poll::Records(r) = c.poll(10, Duration::from_secs(5)).await.unwrap() {
            for d in r {
                got.insert(d.offset, d.value.to_vec());
            }
        }
    }
    assert_eq!(got.keys().copied().collect::<Vec<_>>(), vec![0, 1, 2]);
}
