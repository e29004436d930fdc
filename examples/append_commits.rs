//! Appends slices of a canonical events file to a fresh `events` table, one Delta commit
//! per slice (what a processor does at every commit interval), and prints how long the
//! commits take as the table's history grows (a benchmark of the table store's commit
//! path; see docs/performance.md).
//!
//!     cargo run --release --example append_commits -- EVENTS.parquet COMMITS [ROWS_PER_COMMIT [COMPACT_AFTER]]
//!
//! With `COMPACT_AFTER`, a `(tenant, day)` partition is compacted ([`TableStore::compact`],
//! timed with the commit) once that many commits have added a file to it, as `process
//! --compact-after-files` does.
//!
//! Each line covers a window of commits: the table's version after them and the mean and
//! maximum time of one commit, writing its files (and compactions) included. A slice of the
//! generator's files touches about ten `(tenant, day)` partitions, so a commit adds about ten
//! files. The last line: the files (and partitions) the table holds at the end.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use arrow::array::AsArray;
use arrow::datatypes::Date32Type;
use ccstream_processor::batch::to_events_schema;
use ccstream_processor::sink::{TableStore, FILE_COLUMN};
use ccstream_schemas::{events_schema, TABLE_EVENTS};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

const WINDOW: usize = 100;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, file, commits, rest @ ..] = args.as_slice() else {
        return Err("usage: append_commits EVENTS.parquet COMMITS [ROWS_PER_COMMIT [COMPACT_AFTER]]".into());
    };
    let commits: usize = commits.parse()?;
    let rows: usize = rest.first().map(|r| r.parse()).transpose()?.unwrap_or(200);
    let compact_after: usize = rest.get(1).map(|r| r.parse()).transpose()?.unwrap_or(0);
    let mut added: HashMap<(String, i32), usize> = HashMap::new();
    let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(file)?)?
        .with_batch_size(commits * rows)
        .build()?;
    let input = reader.into_iter().next().ok_or("the file has no rows")??;
    let input = to_events_schema(&input, "file.parquet", 0)?;
    let dir = tempfile::tempdir()?;
    let store = TableStore::new(&dir.path().display().to_string())?;
    let (mut sum, mut max) = (Duration::ZERO, Duration::ZERO);
    println!("version mean_ms max_ms");
    for i in 0..commits {
        let at = (i * rows).min(input.num_rows());
        let slice = input.slice(at, rows.min(input.num_rows() - at));
        let t = Instant::now();
        let mut w = store.append_streaming(TABLE_EVENTS, events_schema(), usize::MAX).await?;
        w.write(slice.clone()).await?;
        let (_, version) = w.commit().await?;
        if compact_after > 0 {
            let tenants = slice.column_by_name("tenant_id").ok_or("no tenant_id")?.as_string::<i32>();
            let days = slice.column_by_name("day").ok_or("no day")?.as_primitive::<Date32Type>();
            let touched: HashSet<(String, i32)> =
                (0..slice.num_rows()).map(|r| (tenants.value(r).to_string(), days.value(r))).collect();
            for key in touched {
                let n = added.entry(key.clone()).or_default();
                *n += 1;
                if *n >= compact_after {
                    *n = 0;
                    let day = chrono::DateTime::from_timestamp(i64::from(key.1) * 86_400, 0).ok_or("bad day")?;
                    let day = day.date_naive().to_string();
                    store.compact(TABLE_EVENTS, &[("tenant_id", key.0.as_str()), ("day", day.as_str())]).await?;
                }
            }
        }
        let took = t.elapsed();
        (sum, max) = (sum + took, max.max(took));
        if (i + 1) % WINDOW == 0 || i + 1 == commits {
            let n = (i % WINDOW + 1) as u32;
            println!("{version} {:.2} {:.2}", (sum / n).as_secs_f64() * 1e3, max.as_secs_f64() * 1e3);
            (sum, max) = (Duration::ZERO, Duration::ZERO);
        }
    }
    // What a reader of the table opens now.
    let (mut files, mut partitions) = (BTreeSet::new(), BTreeSet::new());
    for b in store.read_where(TABLE_EVENTS, None, true).await? {
        let file = b.column_by_name(FILE_COLUMN).ok_or("no file column")?.as_string::<i32>();
        let tenants = b.column_by_name("tenant_id").ok_or("no tenant_id")?.as_string::<i32>();
        let days = b.column_by_name("day").ok_or("no day")?.as_primitive::<Date32Type>();
        for r in 0..b.num_rows() {
            files.insert(file.value(r).to_string());
            partitions.insert((tenants.value(r).to_string(), days.value(r)));
        }
    }
    println!("files {} in {} partitions", files.len(), partitions.len());
    Ok(())
}
