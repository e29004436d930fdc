//! One conformance suite, run against both logs: FileLog in a temp dir and KafkaLog on the
//! broker in `CCSTREAM_KAFKA_BROKERS` (a Kafka test without a broker fails).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ccstream_eventlog::{open, partition_for, Delivered, EventLog, LogConsumer, OpenOptions, Poll, RecordRef};

/// A record to append: key, value, timestamp.
type Rec = (Vec<u8>, Vec<u8>, i64);

/// A log with `partitions` partitions, and what keeps it alive (the temp dir).
struct Subject {
    log: Arc<dyn EventLog>,
    _dir: Option<tempfile::TempDir>,
}

async fn file_log(partitions: u32) -> Subject {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}?fsync=never&segment_bytes=4096", dir.path().join("log").display());
    let log = open(&url, &OpenOptions { create_partitions: Some(partitions), ..Default::default() }).await.unwrap();
    Subject { log, _dir: Some(dir) }
}

async fn kafka_log(partitions: u32) -> Subject {
    let url = ccstream_eventlog::testing::kafka_url("conformance");
    let log = open(&url, &OpenOptions { create_partitions: Some(partitions), ..Default::default() }).await.unwrap();
    Subject { log, _dir: None }
}

fn records(n: usize, calls: usize, tag: &str) -> Vec<Rec> {
    (0..n)
        .map(|i| {
            let key = format!("call-{}", i % calls).into_bytes();
            let value = format!("{{\"n\":{i},\"tag\":\"{tag}\"}}").into_bytes();
            (key, value, 1_700_000_000_000 + i as i64)
        })
        .collect()
}

async fn append(log: &dyn EventLog, recs: &[Rec]) -> Vec<(u32, u64)> {
    let refs: Vec<RecordRef<'_>> =
        recs.iter().map(|(k, v, t)| RecordRef { key: k, value: v, timestamp_ms: *t }).collect();
    log.append(&refs).await.unwrap()
}

/// Polls until the consumer holds an assignment, seeking every assigned partition to `from`.
async fn join(consumer: &mut dyn LogConsumer, from: &BTreeMap<u32, u64>) -> Vec<u32> {
    for _ in 0..600 {
        match consumer.poll(100, Duration::from_millis(100)).await.unwrap() {
            Poll::Assigned(parts) => {
                for p in &parts {
                    consumer.seek(*p, from.get(p).copied().unwrap_or(0)).await.unwrap();
                }
                return parts;
            }
            Poll::Records(r) => panic!("records before any assignment: {r:?}"),
            Poll::Revoked(_) | Poll::Idle => {}
        }
    }
    panic!("no partition assignment within 60 s");
}

/// Reads until `want` records arrived (or fails after a minute).
async fn read(consumer: &mut dyn LogConsumer, want: usize) -> Vec<Delivered> {
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while got.len() < want {
        assert!(std::time::Instant::now() < deadline, "read {} of {want} records within 60 s", got.len());
        match consumer.poll(1000, Duration::from_millis(200)).await.unwrap() {
            Poll::Records(r) => got.extend(r),
            Poll::Idle => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    got
}

fn by_partition(recs: &[Delivered]) -> BTreeMap<u32, Vec<&Delivered>> {
    let mut m: BTreeMap<u32, Vec<&Delivered>> = BTreeMap::new();
    for d in recs {
        m.entry(d.partition).or_default().push(d);
    }
    m
}

async fn appends_route_by_key_at_consecutive_offsets(s: Subject) {
    let n = s.log.partitions().await.unwrap();
    let recs = records(200, 17, "a");
    let positions = append(&*s.log, &recs).await;
    assert_eq!(positions.len(), recs.len());
    let mut next = vec![0u64; n as usize];
    for ((key, _, _), (p, o)) in recs.iter().zip(&positions) {
        assert_eq!(*p, partition_for(key, n), "key {key:?} went to the wrong partition");
        assert_eq!(*o, next[*p as usize], "offsets are consecutive per partition");
        next[*p as usize] += 1;
    }
    assert_eq!(s.log.end_offsets().await.unwrap(), next);
    assert_eq!(s.log.start_offsets().await.unwrap(), vec![0; n as usize]);
    // An empty append is fine and changes nothing.
    assert!(s.log.append(&[]).await.unwrap().is_empty());
    assert_eq!(s.log.end_offsets().await.unwrap(), next);
}

async fn a_consumer_reads_everything_in_order(s: Subject) {
    let recs = records(300, 23, "b");
    let positions = append(&*s.log, &recs).await;
    let mut c = s.log.subscribe("readers").await.unwrap();
    let parts = join(&mut *c, &BTreeMap::new()).await;
    assert_eq!(parts.len() as u32, s.log.partitions().await.unwrap());
    let got = read(&mut *c, recs.len()).await;
    assert_eq!(got.len(), recs.len(), "nothing twice, nothing missing");
    for (p, list) in by_partition(&got) {
        let offsets: Vec<u64> = list.iter().map(|d| d.offset).collect();
        assert_eq!(offsets, (0..list.len() as u64).collect::<Vec<_>>(), "partition {p} in order");
    }
    // Every record arrives with its key, value and timestamp.
    let mut expected: BTreeMap<(u32, u64), &Rec> = BTreeMap::new();
    for (r, pos) in recs.iter().zip(&positions) {
        expected.insert(*pos, r);
    }
    for d in &got {
        let (k, v, t) = expected[&(d.partition, d.offset)];
        assert_eq!((&d.key[..], &d.value[..], d.timestamp_ms), (&k[..], &v[..], *t));
    }
}

async fn seek_chooses_where_reading_restarts(s: Subject) {
    let recs = records(120, 5, "c");
    append(&*s.log, &recs).await;
    let end = s.log.end_offsets().await.unwrap();
    let from: BTreeMap<u32, u64> = end.iter().enumerate().map(|(p, e)| (p as u32, e / 2)).collect();
    let mut c = s.log.subscribe("seekers").await.unwrap();
    join(&mut *c, &from).await;
    let want: u64 = end.iter().zip(from.values()).map(|(e, f)| e - f).sum();
    let got = read(&mut *c, want as usize).await;
    for (p, list) in by_partition(&got) {
        assert_eq!(list[0].offset, from[&p], "partition {p} restarts at its seek position");
        assert_eq!(list.len() as u64, end[p as usize] - from[&p]);
    }
    // Seeking back re-delivers (at least once is the caller's choice).
    let p0 = *from.keys().next().unwrap();
    c.seek(p0, 0).await.unwrap();
    let again = read(&mut *c, end[p0 as usize] as usize).await;
    assert!(again.iter().all(|d| d.partition == p0));
    assert_eq!(again.first().map(|d| d.offset), Some(0));
}

async fn a_consumer_sees_records_appended_while_it_waits(s: Subject) {
    let mut c = s.log.subscribe("tailers").await.unwrap();
    join(&mut *c, &BTreeMap::new()).await;
    assert_eq!(c.poll(10, Duration::from_millis(50)).await.unwrap(), Poll::Idle);
    let log = Arc::clone(&s.log);
    let writer = tokio::spawn(async move {
        for round in 0..5 {
            append(&*log, &records(10, 3, &format!("d{round}"))).await;
        }
    });
    let got = read(&mut *c, 50).await;
    writer.await.unwrap();
    assert_eq!(got.len(), 50);
    for (p, list) in by_partition(&got) {
        let offsets: Vec<u64> = list.iter().map(|d| d.offset).collect();
        assert_eq!(offsets, (0..list.len() as u64).collect::<Vec<_>>(), "partition {p}");
    }
}

async fn a_new_member_resumes_from_its_own_positions(s: Subject) {
    let recs = records(100, 7, "e");
    append(&*s.log, &recs).await;
    let end = s.log.end_offsets().await.unwrap();
    let positions: Vec<(u32, u64)> = end.iter().enumerate().map(|(p, e)| (p as u32, e / 3)).collect();
    {
        let mut c = s.log.subscribe("restarters").await.unwrap();
        join(&mut *c, &BTreeMap::new()).await;
        read(&mut *c, recs.len()).await;
        c.commit(&positions).await.unwrap();
    }
    // The log does not decide where a member starts: it seeks to the positions it stored.
    let from: BTreeMap<u32, u64> = positions.into_iter().collect();
    let mut c = s.log.subscribe("restarters").await.unwrap();
    join(&mut *c, &from).await;
    let want: u64 = end.iter().enumerate().map(|(p, e)| e - from[&(p as u32)]).sum();
    let got = read(&mut *c, want as usize).await;
    for (p, list) in by_partition(&got) {
        assert_eq!(list[0].offset, from[&p]);
    }
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod file {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::file_log(4).await).await;
                }
            )*
        }
        mod kafka {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::kafka_log(4).await).await;
                }
            )*
        }
    };
}

conformance!(
    appends_route_by_key_at_consecutive_offsets,
    a_consumer_reads_everything_in_order,
    seek_chooses_where_reading_restarts,
    a_consumer_sees_records_appended_while_it_waits,
    a_new_member_resumes_from_its_own_positions,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_members_of_one_group_share_the_partitions() {
    let s = kafka_log(4).await;
    let recs = records(200, 31, "f");
    append(&*s.log, &recs).await;
    let mut a = s.log.subscribe("sharers").await.unwrap();
    let mut b = s.log.subscribe("sharers").await.unwrap();
    // Drive both until their assignments cover all partitions without overlap.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
    loop {
        assert!(std::time::Instant::now() < deadline, "no stable split: a={:?} b={:?}", a.assignment(), b.assignment());
        for (c, got) in [(&mut a, &mut got_a), (&mut b, &mut got_b)] {
            match c.poll(500, Duration::from_millis(100)).await.unwrap() {
                Poll::Assigned(parts) => {
                    for p in parts {
                        c.seek(p, 0).await.unwrap();
                    }
                }
                Poll::Revoked(parts) => got.retain(|d: &Delivered| !parts.contains(&d.partition)),
                Poll::Records(r) => got.extend(r),
                Poll::Idle => {}
            }
        }
        let (pa, pb) = (a.assignment(), b.assignment());
        if !pa.is_empty() && !pb.is_empty() && got_a.len() + got_b.len() == recs.len() {
            assert!(pa.iter().all(|p| !pb.contains(p)), "a={pa:?} b={pb:?} overlap");
            assert_eq!(pa.len() + pb.len(), 4);
            assert!(got_a.iter().all(|d| pa.contains(&d.partition)));
            assert!(got_b.iter().all(|d| pb.contains(&d.partition)));
            break;
        }
    }
}

#[tokio::test]
async fn file_log_allows_one_member_per_group() {
    let s = file_log(2).await;
    let _a = s.log.subscribe("solo").await.unwrap();
    let err = s.log.subscribe("solo").await.unwrap_err();
    assert!(err.to_string().contains("already has a member"), "{err}");
    // Another group is fine.
    s.log.subscribe("other").await.unwrap();
}

#[tokio::test]
async fn opening_a_missing_log_or_topic_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = open(&dir.path().join("nope").display().to_string(), &OpenOptions::default()).await.unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
    let err = open(&ccstream_eventlog::testing::kafka_url("missing"), &OpenOptions::default()).await.unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
}
