//! Writing `events` in pre-grouped runs or in mixed batches: every row lands in the file of
//! its own tenant and day, one file per partition and flush, nothing is lost or doubled, runs
//! that do not match the batch are refused, and each file's Delta statistics are its own
//! rows'.

use std::collections::BTreeMap;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::take_record_batch;
use arrow::datatypes::Date32Type;
use arrow::row::{RowConverter, SortField};
use ccstream_processor::batch::{group_rows, to_events_schema};
use ccstream_processor::sink::{TableStore, FILE_COLUMN};
use ccstream_processor::Error;
use ccstream_schemas::{events_schema, TABLE_EVENTS};

mod common;

/// The fixture's events in the `events` table's schema.
fn fixture_events() -> RecordBatch {
    to_events_schema(&common::fixture_events(), "test", 0).unwrap()
}

/// (event_id, tenant_id, day) of every row, as a multiset.
fn rows(batches: &[RecordBatch]) -> BTreeMap<(String, String, i32), usize> {
    let mut out = BTreeMap::new();
    for b in batches {
        let ids = b.column_by_name("event_id").unwrap().as_string::<i32>();
        let tenants = b.column_by_name("tenant_id").unwrap().as_string::<i32>();
        let days = b.column_by_name("day").unwrap().as_primitive::<Date32Type>();
        for r in 0..b.num_rows() {
            let key = (ids.value(r).to_string(), tenants.value(r).to_string(), days.value(r));
            *out.entry(key).or_default() += 1;
        }
    }
    out
}

/// The files that hold each (tenant, day) partition's rows.
type FilesByPartition = BTreeMap<(String, i32), std::collections::BTreeSet<String>>;

/// Every other row of the fixture, in two batches grouped by tenant and day, written with
/// `flush_rows` and committed. Returns the files of each partition, and which partitions
/// both batches have rows of. Checks that every row is back once, in a file under its own
/// partition's directory.
async fn write_in_two_batches(flush_rows: impl Fn(usize) -> usize) -> (FilesByPartition, Vec<(String, i32)>) {
    let events = fixture_events();
    let dir = tempfile::tempdir().unwrap();
    let store = TableStore::new(dir.path().to_str().unwrap()).unwrap();

    let tenants = events.column_by_name("tenant_id").unwrap().as_string::<i32>().clone();
    let days = events.column_by_name("day").unwrap().as_primitive::<Date32Type>().clone();
    let half = events.num_rows() / 2;
    let mut expected = Vec::new();
    let mut batches = Vec::new();
    for range in [0..half, half..events.num_rows()] {
        let keys = (0..events.num_rows())
            .map(|r| (range.contains(&r) && r % 2 == 0).then(|| (tenants.value(r).to_string(), days.value(r))));
        let (indices, runs) = group_rows(keys);
        assert!(runs.len() > 1, "the fixture spans several tenants and days");
        let batch = take_record_batch(&events, &indices).unwrap();
        expected.push(batch.clone());
        batches.push((batch, runs));
    }
    let mut w =
        store.append_streaming(TABLE_EVENTS, events_schema(), flush_rows(batches[0].0.num_rows())).await.unwrap();
    for (batch, runs) in batches {
        w.write_runs(batch, &runs).await.unwrap();
    }
    w.commit().await.unwrap();

    let back = store.read_where(TABLE_EVENTS, None, true).await.unwrap();
    assert_eq!(rows(&back), rows(&expected));
    let files = files_by_partition(&back);
    let in_batch = |b: &RecordBatch| {
        rows(std::slice::from_ref(b)).into_keys().map(|(_, t, d)| (t, d)).collect::<std::collections::BTreeSet<_>>()
    };
    let first = in_batch(&expected[0]);
    let both = in_batch(&expected[1]).into_iter().filter(|k| first.contains(k)).collect();
    (files, both)
}

/// The files that hold each partition's rows of `back` (read with [`FILE_COLUMN`]),
/// checking that every row's file is under its own partition's directory.
fn files_by_partition(back: &[RecordBatch]) -> FilesByPartition {
    let mut files = FilesByPartition::new();
    for b in back {
        let tenants = b.column_by_name("tenant_id").unwrap().as_string::<i32>();
        let days = b.column_by_name("day").unwrap().as_primitive::<Date32Type>();
        let file = b.column_by_name(FILE_COLUMN).unwrap().as_string::<i32>();
        for r in 0..b.num_rows() {
            let day = chrono::DateTime::from_timestamp(days.value(r) as i64 * 86_400, 0).unwrap().date_naive();
            let dir = format!("tenant_id={}/day={day}/", tenants.value(r));
            assert!(file.value(r).contains(&dir), "{} is not under {dir}", file.value(r));
            files.entry((tenants.value(r).to_string(), days.value(r))).or_default().insert(file.value(r).to_string());
        }
    }
    assert!(files.len() > 1);
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_land_in_their_partitions() {
    // One flush, at the commit: runs of one partition from both batches share one file.
    let (files, both) = write_in_two_batches(|_| usize::MAX).await;
    assert!(!both.is_empty(), "some partitions span both batches");
    assert!(files.values().all(|f| f.len() == 1), "{files:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_between_batches_finishes_the_files() {
    // A flush once the first batch is in: a partition with rows in both batches has a file
    // of each flush, every other partition one file.
    let (files, both) = write_in_two_batches(|first| first).await;
    assert!(!both.is_empty(), "some partitions span both batches");
    for (partition, f) in &files {
        let want = if both.contains(partition) { 2 } else { 1 };
        assert_eq!(f.len(), want, "{partition:?}: {f:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_that_do_not_cover_the_batch_are_refused() {
    let events = fixture_events().slice(0, 10);
    let dir = tempfile::tempdir().unwrap();
    let store = TableStore::new(dir.path().to_str().unwrap()).unwrap();
    let mut w = store.append_streaming(TABLE_EVENTS, events_schema(), usize::MAX).await.unwrap();
    match w.write_runs(events.clone(), &[4, 5]).await {
        Err(Error::Runs { rows: 10, covered: 9, .. }) => {}
        other => panic!("expected a runs error, got {other:?}"),
    }
    let mut no_tenant = events.columns().to_vec();
    no_tenant[1] = arrow::array::new_null_array(no_tenant[1].data_type(), 10);
    let fields: Vec<_> = events.schema().fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect();
    let schema = std::sync::Arc::new(arrow::datatypes::Schema::new(fields));
    let bad = RecordBatch::try_new(schema, no_tenant).unwrap();
    match w.write_runs(bad, &[10]).await {
        Err(Error::PartitionValue { row: 0, .. }) => {}
        other => panic!("expected a partition value error, got {other:?}"),
    }
}

/// `events` in a table at `dir`, written with `Overwrite::write` in `batches` and
/// committed once.
async fn overwrite_events(dir: &std::path::Path, batches: &[RecordBatch]) -> TableStore {
    let store = TableStore::new(dir.to_str().unwrap()).unwrap();
    let mut w = store.overwrite_streaming(TABLE_EVENTS, events_schema(), usize::MAX).await.unwrap();
    for b in batches {
        w.write(b.clone()).await.unwrap();
    }
    w.commit().await.unwrap();
    store
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_many_partitions_is_split_by_partition() {
    let events = fixture_events();
    let dir = tempfile::tempdir().unwrap();
    let store = overwrite_events(dir.path(), &[events.slice(0, 700), events.slice(700, events.num_rows() - 700)]).await;
    let back = store.read_where(TABLE_EVENTS, None, true).await.unwrap();
    assert_eq!(rows(&back), rows(std::slice::from_ref(&events)));
    let files = files_by_partition(&back);
    assert!(files.values().all(|f| f.len() == 1), "{files:?}");
}

/// The Add actions of every commit of the table at `dir`, as JSON.
fn adds(dir: &std::path::Path) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir.join("_delta_log")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                let action: serde_json::Value = serde_json::from_str(line).unwrap();
                if let Some(add) = action.get("add") {
                    out.push(add.clone());
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_file_carries_its_own_statistics() {
    let events = fixture_events();
    let dir = tempfile::tempdir().unwrap();
    let store = overwrite_events(dir.path(), std::slice::from_ref(&events)).await;

    // Each file's rows, count and occurred_at range (milliseconds), as read back.
    let back = store.read_where(TABLE_EVENTS, None, true).await.unwrap();
    let mut want: BTreeMap<String, (i64, i64, i64)> = BTreeMap::new();
    for b in &back {
        let file = b.column_by_name(FILE_COLUMN).unwrap().as_string::<i32>();
        let at = b.column_by_name("occurred_at").unwrap();
        let ms = arrow::datatypes::DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, None);
        let at =
            arrow::compute::cast(&arrow::compute::cast(at, &ms).unwrap(), &arrow::datatypes::DataType::Int64).unwrap();
        let at = at.as_primitive::<arrow::datatypes::Int64Type>();
        for r in 0..b.num_rows() {
            let e = want.entry(file.value(r).to_string()).or_insert((0, i64::MAX, i64::MIN));
            *e = (e.0 + 1, e.1.min(at.value(r)), e.2.max(at.value(r)));
        }
    }
    let adds = adds(&dir.path().join(TABLE_EVENTS));
    assert_eq!(adds.len(), want.len());
    let millis = |ms: i64| {
        let t = chrono::DateTime::from_timestamp_millis(ms).unwrap();
        serde_json::Value::from(t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string().replace(".000Z", "Z"))
    };
    for add in adds {
        let path = add["path"].as_str().unwrap();
        let (rows, min, max) = want.iter().find(|(f, _)| f.ends_with(path)).map(|(_, v)| *v).unwrap();
        let stats: serde_json::Value = serde_json::from_str(add["stats"].as_str().unwrap()).unwrap();
        assert_eq!(stats["numRecords"], rows, "{path}");
        assert_eq!(stats["minValues"]["occurred_at"], millis(min), "{path}");
        assert_eq!(stats["maxValues"]["occurred_at"], millis(max), "{path}");
        assert_eq!(stats["nullCount"]["occurred_at"], 0, "{path}");
        // Partition values live in the path and the action, not in the statistics.
        assert!(stats["minValues"].get("tenant_id").is_none() && stats["minValues"].get("day").is_none());
        assert_eq!(
            add["partitionValues"]["tenant_id"].as_str().map(|t| path.contains(&format!("tenant_id={t}/"))),
            Some(true)
        );
        assert_eq!(
            add["size"].as_i64(),
            Some(std::fs::metadata(dir.path().join(TABLE_EVENTS).join(path)).unwrap().len() as i64)
        );
    }
}

/// Appends `events` to a new `events` table in `commits` equal slices, one commit each with
/// the offsets `offsets(i)`; checks each commit is one version more. Returns the rows per slice.
async fn append_in_commits(
    store: &TableStore,
    events: &RecordBatch,
    commits: usize,
    offsets: impl Fn(usize) -> Vec<(String, i64)>,
) -> usize {
    let per = events.num_rows() / commits;
    for i in 0..commits {
        let mut w = store.append_streaming(TABLE_EVENTS, events_schema(), usize::MAX).await.unwrap();
        w.write(events.slice(i * per, per)).await.unwrap();
        w.with_transactions(&offsets(i));
        let (_, version) = w.commit().await.unwrap();
        // Version 0 is the table's schema; each append is one version more.
        assert_eq!(version, i as u64 + 1);
    }
    per
}

/// A table that takes many small commits (a processor commits every second) gets log
/// checkpoints, so opening it does not replay its whole history, and a short log retention;
/// with the entries before the last checkpoint gone (as the log cleanup removes them), the
/// table still holds every row appended, once, and the offsets committed with the rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_commits_leave_checkpoints_and_every_row() {
    let events = fixture_events();
    let dir = tempfile::tempdir().unwrap();
    let store = TableStore::new(dir.path().to_str().unwrap()).unwrap();
    let commits = 25;
    // The offsets of log partition 0 (every commit) and 1 (the first 15 only).
    let per = append_in_commits(&store, &events, commits, |i| {
        let mut txns = vec![("p0".to_string(), 100 + i as i64)];
        if i < 15 {
            txns.push(("p1".to_string(), 1000 + i as i64));
        }
        txns
    })
    .await;
    let log = dir.path().join("events/_delta_log");
    let mut checkpoints: Vec<String> = std::fs::read_dir(&log)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".checkpoint.parquet"))
        .collect();
    checkpoints.sort();
    // One every ten versions (the tenth is version 9).
    assert_eq!(checkpoints, ["00000000000000000009.checkpoint.parquet", "00000000000000000019.checkpoint.parquet"]);
    assert!(log.join("_last_checkpoint").exists());
    let first: serde_json::Value = std::fs::read_to_string(log.join("00000000000000000000.json"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|a| a.get("metaData").is_some())
        .unwrap();
    let config = &first["metaData"]["configuration"];
    assert_eq!(config["delta.logRetentionDuration"], "interval 1 hours");
    assert_eq!(config["delta.deletedFileRetentionDuration"], "interval 1 hours");
    for v in 0..=19 {
        std::fs::remove_file(log.join(format!("{v:020}.json"))).unwrap();
    }
    let back = store.read_where(TABLE_EVENTS, None, false).await.unwrap();
    assert_eq!(rows(&back), rows(&[events.slice(0, per * commits)]));
    let ids = ["p0".to_string(), "p1".to_string(), "p2".to_string()];
    assert_eq!(store.transaction_versions(TABLE_EVENTS, &ids).await.unwrap(), [Some(124), Some(1014), None]);
}

/// Compacting an `events` partition of many files leaves one file with the same rows, and
/// the other partitions as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacting_a_partition_keeps_its_rows_in_fewer_files() {
    let events = fixture_events();
    let dir = tempfile::tempdir().unwrap();
    let store = TableStore::new(dir.path().to_str().unwrap()).unwrap();
    append_in_commits(&store, &events, 12, |_| Vec::new()).await;
    let before = store.read_where(TABLE_EVENTS, None, true).await.unwrap();
    let files = files_by_partition(&before);
    let (&(ref tenant, day), most) = files.iter().max_by_key(|(_, f)| f.len()).unwrap();
    assert!(most.len() > 2, "the fixture's commits spread a partition over files");
    let day_text = chrono::DateTime::from_timestamp(day as i64 * 86_400, 0).unwrap().date_naive().to_string();
    let (removed, added) =
        store.compact(TABLE_EVENTS, &[("tenant_id", tenant.as_str()), ("day", day_text.as_str())]).await.unwrap();
    assert_eq!((removed, added), (most.len() as u64, 1));
    let after = store.read_where(TABLE_EVENTS, None, true).await.unwrap();
    assert_eq!(rows(&after), rows(&before));
    // Every column of every row, not only the keys (the file column aside).
    let sorted = |batches: &[RecordBatch]| {
        let all = arrow::compute::concat_batches(&batches[0].schema(), batches).unwrap();
        let all = all.project(&(0..all.num_columns() - 1).collect::<Vec<_>>()).unwrap();
        // Ordered by all columns (copies of one event may differ in `ingested_at`).
        let fields = all.schema().fields().iter().map(|f| SortField::new(f.data_type().clone())).collect();
        let rows = RowConverter::new(fields).unwrap().convert_columns(all.columns()).unwrap();
        let mut order: Vec<u32> = (0..all.num_rows() as u32).collect();
        order.sort_by(|&a, &b| rows.row(a as usize).cmp(&rows.row(b as usize)));
        take_record_batch(&all, &arrow::array::UInt32Array::from(order)).unwrap()
    };
    assert_eq!(sorted(&after), sorted(&before));
    let files_after = files_by_partition(&after);
    assert_eq!(files_after[&(tenant.clone(), day)].len(), 1);
    for (key, f) in &files {
        if *key != (tenant.clone(), day) {
            assert_eq!(&files_after[key], f, "partition {key:?} was not to be touched");
        }
    }
}

/// Every `.parquet` file under `dir`, as paths relative to it.
fn parquet_files(dir: &std::path::Path) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                out.insert(path.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_write_leaves_the_table_and_its_files_as_they_were() {
    let events = fixture_events();
    let dir = tempfile::tempdir().unwrap();
    let store = overwrite_events(dir.path(), &[events.slice(0, 300)]).await;
    let table = dir.path().join(TABLE_EVENTS);
    let files_before = parquet_files(&table);
    // A replacement that flushes after every batch, so files are stored before it is given up.
    let mut w = store.overwrite_streaming(TABLE_EVENTS, events_schema(), 1).await.unwrap();
    w.write(events.slice(300, 400)).await.unwrap();
    w.write(events.slice(700, 400)).await.unwrap();
    w.write(events.slice(1100, 1)).await.unwrap();
    assert!(parquet_files(&table).len() > files_before.len(), "the replacement stored files");
    w.abandon().await.unwrap();
    assert_eq!(parquet_files(&table), files_before, "no file of the abandoned write is left");
    let back = store.read_where(TABLE_EVENTS, None, false).await.unwrap();
    assert_eq!(rows(&back), rows(&[events.slice(0, 300)]), "the table reads as before");
}

/// Two processors that both think they own log partition 0 (a rebalance in flight) append
/// the same offsets' rows: the second commit fails instead of landing the rows twice, and a
/// commit of another partition's offsets, racing the same way, still lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_of_offsets_another_committed_meanwhile_fails_instead_of_landing_twice() {
    let events = fixture_events();
    let dir = tempfile::tempdir().unwrap();
    let store = TableStore::new(dir.path().to_str().unwrap()).unwrap();
    let writer = |slice: RecordBatch, offsets: Vec<(String, i64)>| {
        let store = &store;
        async move {
            let mut w = store.append_streaming(TABLE_EVENTS, events_schema(), usize::MAX).await.unwrap();
            w.write(slice).await.unwrap();
            w.with_transactions(&offsets);
            w
        }
    };
    writer(events.slice(0, 10), vec![("p0".into(), 10)]).await.commit().await.unwrap();
    let a = writer(events.slice(10, 10), vec![("p0".into(), 20)]).await;
    let b = writer(events.slice(10, 10), vec![("p0".into(), 20)]).await;
    let other = writer(events.slice(20, 10), vec![("p1".into(), 5)]).await;
    a.commit().await.unwrap();
    let err = b.commit().await.unwrap_err();
    assert!(matches!(&err, Error::OffsetsTaken { app_ids, .. } if app_ids == &["p0".to_string()]), "{err}");
    other.commit().await.unwrap();
    let back = store.read_where(TABLE_EVENTS, None, false).await.unwrap();
    assert_eq!(rows(&back), rows(&[events.slice(0, 30)]));
    let ids = ["p0".to_string(), "p1".to_string()];
    assert_eq!(store.transaction_versions(TABLE_EVENTS, &ids).await.unwrap(), [Some(20), Some(5)]);
}

/// A tenant whose name Delta percent-encodes in its partition path (`a b:ü`) commits: the
/// files it makes durable are where the object store put them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_name_that_needs_encoding_commits_and_reads_back() {
    let events = fixture_events().slice(0, 20);
    let at = events.schema().index_of("tenant_id").unwrap();
    let mut columns = events.columns().to_vec();
    columns[at] = std::sync::Arc::new(arrow::array::StringArray::from(vec!["a b:ü"; 20]));
    let events = RecordBatch::try_new(events.schema(), columns).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = TableStore::new(dir.path().to_str().unwrap()).unwrap();
    let mut w = store.append_streaming(TABLE_EVENTS, events_schema(), usize::MAX).await.unwrap();
    w.write(events.clone()).await.unwrap();
    w.commit().await.unwrap();
    let back = store.read_where(TABLE_EVENTS, None, false).await.unwrap();
    assert_eq!(rows(&back), rows(&[events]));
}
