//! The log's own produce and consume rate, without processing: the baseline that
//! `ccstream process` is measured beside (docs/performance.md).
//!
//! `cargo run --release -p ccstream-eventlog --example log_throughput -- URL RECORDS [VALUE_BYTES] [PARTITIONS]`
//! appends RECORDS records (keys spread over 150 k calls) in batches of 16 Ki, then reads
//! them all back in one consumer group, and prints both rates.
//!
//! `… --example log_throughput -- URL read` only reads an existing log from the start
//! (for instance one `ccstream ingest file` filled), and prints the rate.

use std::time::{Duration, Instant};

use ccstream_eventlog::{open, LogConsumer, OpenOptions, Poll, RecordRef};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let url = args.get(1).ok_or("usage: log_throughput URL (RECORDS [VALUE_BYTES] [PARTITIONS] | read)")?;
    if args.get(2).map(String::as_str) == Some("read") {
        let log = open(url, &OpenOptions::default()).await?;
        let start = Instant::now();
        let (read, bytes, last) = read_all(&mut *log.subscribe("throughput").await?, None).await?;
        // Up to the last records read, not the empty poll after them.
        let secs = (last - start).as_secs_f64();
        println!(
            "{url}: read {read} records, {:.0} MB of values: {secs:.2} s ({:.0} records/s, {:.0} MB/s)",
            bytes as f64 / 1e6,
            read as f64 / secs,
            bytes as f64 / 1e6 / secs
        );
        return Ok(());
    }
    let records: usize = args.get(2).map(|s| s.replace('_', "").parse()).transpose()?.unwrap_or(1_000_000);
    let value_bytes: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(250);
    let partitions: u32 = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(4);
    let log = open(url, &OpenOptions { create_partitions: Some(partitions), ..Default::default() }).await?;
    let value = vec![b'x'; value_bytes];
    let keys: Vec<Vec<u8>> = (0..150_000).map(|i| format!("call-{i:08}").into_bytes()).collect();

    let start = Instant::now();
    let mut done = 0;
    while done < records {
        let n = (records - done).min(16 * 1024);
        let batch: Vec<RecordRef<'_>> = (done..done + n)
            .map(|i| RecordRef { key: &keys[i % keys.len()], value: &value, timestamp_ms: i as i64 })
            .collect();
        log.append(&batch).await?;
        done += n;
    }
    let produce = start.elapsed();

    let start = Instant::now();
    read_all(&mut *log.subscribe("throughput").await?, Some(records)).await?;
    let consume = start.elapsed();
    let mb = (records * (value_bytes + 13)) as f64 / 1e6;
    println!(
        "{url}: {records} records of {value_bytes} B: produce {:.2} s ({:.0} records/s, {:.0} MB/s), consume {:.2} s ({:.0} records/s, {:.0} MB/s)",
        produce.as_secs_f64(),
        records as f64 / produce.as_secs_f64(),
        mb / produce.as_secs_f64(),
        consume.as_secs_f64(),
        records as f64 / consume.as_secs_f64(),
        mb / consume.as_secs_f64()
    );
    Ok(())
}

/// Reads from the start of every partition until `records` were read (or, without a
/// count, until a poll finds nothing); returns the records and value bytes read, and when
/// the last were.
async fn read_all(
    consumer: &mut dyn LogConsumer,
    records: Option<usize>,
) -> Result<(usize, usize, Instant), Box<dyn std::error::Error>> {
    let (mut read, mut bytes, mut last) = (0, 0, Instant::now());
    // A count to reach waits as long as a slow broker may take; reading to the end stops at
    // the first empty poll.
    let timeout = Duration::from_secs(if records.is_some() { 10 } else { 2 });
    while records.is_none_or(|n| read < n) {
        match consumer.poll(65_536, timeout).await? {
            Poll::Assigned(parts) => {
                for p in parts {
                    consumer.seek(p, 0).await?;
                }
            }
            Poll::Records(r) => {
                read += r.len();
                bytes += r.iter().map(|d| d.value.len()).sum::<usize>();
                last = Instant::now();
            }
            Poll::Idle if records.is_none() && read > 0 => break,
            Poll::Idle => return Err(format!("stalled after {read} records").into()),
            Poll::Revoked(_) => {}
        }
    }
    Ok((read, bytes, last))
}
