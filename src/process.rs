//! `ccstream process`: consume the event log and keep the tables current.
//!
//! One async loop polls the log, decodes each partition's records to Arrow and folds them
//! into that partition's [`CallFold`] (the same fold as `replay`), and commits at an
//! interval. Every commit records, per log partition, the offset after the last record it
//! covers, as a Delta application transaction in the same commit as the rows:
//!
//! - `events` and `dead_letters` are appended: a commit adds the first copies of the events
//!   (and the rejected records) read since the previous commit. After a restart, records
//!   below a table's committed offset are not appended again.
//! - `call_facts`, `agent_legs` and `interval_partials` are rewritten from the fold's state
//!   at each commit (one commit per table).
//!
//! State is rebuilt on start by reading every assigned partition from its earliest offset;
//! the fold is deterministic in the log's per-partition order, so a restart after a crash at
//! any instant gives the same tables, without losing or double-counting an event.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use arrow::array::{BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use ccstream_eventlog::{open, Delivered, EventLog, LogConsumer, OpenOptions, Partition, Poll};
use ccstream_processor::batch::{to_events_schema, DecodedBatch, Decoder, JsonDecoder};
use ccstream_processor::kpi::{CallFold, LiveQueue, Params};
use ccstream_processor::sink::TableStore;
use ccstream_processor::telemetry::Telemetry;
use ccstream_schemas::{
    agent_legs_schema, call_facts_schema, events_schema, interval_partials_schema, DeadLetterRecord, DEAD_LETTER_KEY,
    TABLE_AGENT_LEGS, TABLE_CALL_FACTS, TABLE_DEAD_LETTERS, TABLE_EVENTS, TABLE_INTERVAL_PARTIALS,
};
use clap::Args;

use crate::config::Config;
use crate::replay::{dead_letters_batch, now_ms, DeadLetter};

#[derive(Debug, Args)]
pub(crate) struct ProcessArgs {
    /// Event log URL: file://DIR (or a path) or kafka://HOST:PORT/TOPIC
    #[arg(long, env = "CCSTREAM_LOG")]
    pub(crate) log: String,
    /// Data directory (local path or URL) that holds the tables
    #[arg(long, env = "CCSTREAM_DATA")]
    pub(crate) data: String,
    /// Consumer group: processors in one group share the log's partitions
    #[arg(long, env = "CCSTREAM_GROUP", default_value = "ccstream")]
    pub(crate) group: String,
    /// Pipeline config file (TOML): service-level and quality parameters
    #[arg(long, env = "CCSTREAM_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// Commit the tables this often (milliseconds), when there is something new
    #[arg(long, env = "CCSTREAM_COMMIT_INTERVAL_MS", default_value_t = 1000)]
    pub(crate) commit_interval_ms: u64,
    /// Stop at the end of the log (as it was at start), with everything committed
    #[arg(long, env = "CCSTREAM_UNTIL_CAUGHT_UP", default_value_t = false)]
    pub(crate) until_caught_up: bool,
    /// Most records taken from the log per poll
    #[arg(long, env = "CCSTREAM_POLL_RECORDS", default_value_t = 65_536)]
    pub(crate) poll_records: usize,
    /// Between full commits, append `events` alone once this many rows are pending
    #[arg(long, env = "CCSTREAM_APPEND_FLUSH_ROWS", default_value_t = 1 << 20)]
    pub(crate) append_flush_rows: usize,
    /// Serve Prometheus metrics at http://ADDR/metrics (port 0: any free port)
    #[arg(long, env = "CCSTREAM_METRICS_LISTEN")]
    pub(crate) metrics_listen: Option<std::net::SocketAddr>,
    /// Write the metrics address, once bound, to this file
    #[arg(long, env = "CCSTREAM_LISTEN_FILE")]
    pub(crate) listen_file: Option<PathBuf>,
}

/// What a `process` run did.
#[derive(Debug, Default, serde::Serialize)]
pub(crate) struct ProcessSummary {
    pub(crate) records: u64,
    pub(crate) dead_letters: u64,
    pub(crate) commits: u64,
    pub(crate) seconds: f64,
}

/// The application-transaction id under which a table records its offset of `partition`.
fn app_id(log_url: &str, partition: Partition) -> String {
    let base = log_url.split('?').next().unwrap_or(log_url);
    format!("ccstream/{base}/p{partition}")
}

/// One assigned partition's state.
#[derive(Debug)]
struct PartitionState {
    fold: CallFold,
    /// Offset after the last record folded.
    next: u64,
    /// Per appended table (events, dead_letters): the offset up to which it already holds
    /// this partition's rows.
    events_committed: u64,
    dead_committed: u64,
    /// The highest offset any table holds for this partition: after a restart, nothing is
    /// committed until the fold is back there, so no table goes back in time.
    rebuild_until: u64,
}

/// The processor: the fold per partition plus what the next commit appends.
struct Processor {
    log: Arc<dyn EventLog>,
    store: TableStore,
    params: Params,
    decoder: Decoder,
    json: JsonDecoder,
    decoded: DecodedBatch,
    parts: BTreeMap<Partition, PartitionState>,
    pending_events: Vec<RecordBatch>,
    pending_event_rows: usize,
    pending_dead: Vec<DeadLetter>,
    dirty: bool,
    summary: ProcessSummary,
    telemetry: Arc<Telemetry>,
    /// Next offset per partition, shared with the lag reporter.
    positions: Arc<std::sync::Mutex<BTreeMap<Partition, u64>>>,
    last_live: Instant,
}

impl std::fmt::Debug for Processor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Processor").field("log", &self.log.url()).field("partitions", &self.parts.len()).finish()
    }
}

impl Processor {
    async fn assign(&mut self, consumer: &mut dyn LogConsumer, parts: &[Partition]) -> Result<()> {
        let url = self.log.url().to_string();
        let ids: Vec<String> = parts.iter().map(|p| app_id(&url, *p)).collect();
        let events = self.store.transaction_versions(TABLE_EVENTS, &ids).await?;
        let dead = self.store.transaction_versions(TABLE_DEAD_LETTERS, &ids).await?;
        let mut highest: Vec<u64> =
            events.iter().zip(&dead).map(|(e, d)| (*e).max(*d).unwrap_or(0).max(0) as u64).collect();
        for table in [TABLE_CALL_FACTS, TABLE_AGENT_LEGS, TABLE_INTERVAL_PARTIALS] {
            for (h, v) in highest.iter_mut().zip(self.store.transaction_versions(table, &ids).await?) {
                *h = (*h).max(v.unwrap_or(0).max(0) as u64);
            }
        }
        let starts = self.log.start_offsets().await?;
        for (i, &p) in parts.iter().enumerate() {
            let start = starts.get(p as usize).copied().unwrap_or(0);
            if start > 0 {
                anyhow::bail!(
                    "partition {p} of {url} starts at offset {start}: retention deleted records the fold needs \
                     (rebuild from the events table with `ccstream replay`)"
                );
            }
            consumer.seek(p, 0).await?;
            self.parts.insert(
                p,
                PartitionState {
                    fold: CallFold::new(p as i32),
                    next: 0,
                    events_committed: events[i].unwrap_or(0).max(0) as u64,
                    dead_committed: dead[i].unwrap_or(0).max(0) as u64,
                    rebuild_until: highest[i],
                },
            );
        }
        Ok(())
    }

    /// Folds one poll's records (any partitions, in order within each).
    fn fold(&mut self, records: Vec<Delivered>) -> Result<()> {
        let mut by_part: BTreeMap<Partition, Vec<Delivered>> = BTreeMap::new();
        for r in records {
            by_part.entry(r.partition).or_default().push(r);
        }
        let url = self.log.url().to_string();
        for (p, recs) in by_part {
            let Some(state) = self.parts.get_mut(&p) else { continue };
            // Records at or above `next` only (a re-delivery changes nothing).
            let recs: Vec<Delivered> = recs.into_iter().filter(|r| r.offset >= state.next).collect();
            let Some(last) = recs.last() else { continue };
            state.next = last.offset + 1;
            self.summary.records += recs.len() as u64;
            self.telemetry.records.inc_by(recs.len() as u64);
            let mut lines: Vec<&str> = Vec::with_capacity(recs.len());
            let mut line_offsets: Vec<u64> = Vec::with_capacity(recs.len());
            for r in &recs {
                let keep_dead = r.offset >= state.dead_committed;
                if r.key == DEAD_LETTER_KEY {
                    if keep_dead {
                        let dl = match DeadLetterRecord::from_json(&r.value) {
                            Ok(d) => DeadLetter {
                                source: d.source.clone(),
                                origin: d.origin.clone(),
                                line: d.line,
                                reason: d.reason.clone(),
                                raw: d.raw_bytes(),
                            },
                            Err(e) => {
                                log_dead(&url, p, r.offset, format!("unreadable dead-letter record: {e}"), &r.value)
                            }
                        };
                        self.pending_dead.push(dl);
                    }
                    continue;
                }
                match std::str::from_utf8(&r.value) {
                    Ok(text) => {
                        lines.push(text);
                        line_offsets.push(r.offset);
                    }
                    Err(e) => {
                        if keep_dead {
                            self.pending_dead.push(log_dead(&url, p, r.offset, format!("not UTF-8: {e}"), &r.value));
                        }
                    }
                }
            }
            let (batch, rows, rejected) = self.json.decode(&lines)?;
            for rej in rejected {
                let offset = line_offsets[rej.line];
                if offset >= state.dead_committed {
                    self.pending_dead.push(log_dead(&url, p, offset, rej.reason, lines[rej.line].as_bytes()));
                }
            }
            self.dirty = true;
            if batch.num_rows() == 0 {
                continue;
            }
            self.decoder.decode(&batch, &mut self.decoded)?;
            let before = state.fold.stats();
            state.fold.update(&self.decoded, &self.decoder.dicts);
            let after = state.fold.stats();
            self.telemetry.duplicates.inc_by(after.duplicates - before.duplicates);
            self.telemetry.events.inc_by(after.rows.saturating_sub(before.rows));
            for (row, reason) in self.decoded.invalid.drain(..) {
                let line = rows[row] as usize;
                if line_offsets[line] >= state.dead_committed {
                    self.pending_dead.push(log_dead(&url, p, line_offsets[line], reason, lines[line].as_bytes()));
                }
            }
            // First copies of events this table does not hold yet.
            let keep: Vec<bool> = state
                .fold
                .first_copy()
                .iter()
                .zip(&rows)
                .map(|(first, row)| *first && line_offsets[*row as usize] >= state.events_committed)
                .collect();
            if keep.iter().any(|k| *k) {
                let kept = filter_record_batch(&batch, &BooleanArray::from(keep))?;
                self.pending_event_rows += kept.num_rows();
                self.pending_events.push(to_events_schema(&kept, "log", now_ms())?);
            }
        }
        Ok(())
    }

    /// Publishes the live gauges (at most every 200 ms: it scans the state).
    fn observe(&mut self, force: bool) {
        {
            let mut pos = self.positions.lock().unwrap_or_else(|p| p.into_inner());
            pos.clear();
            pos.extend(self.parts.iter().map(|(p, s)| (*p, s.next)));
        }
        if !force && self.last_live.elapsed() < Duration::from_millis(200) {
            return;
        }
        self.last_live = Instant::now();
        let mut merged: BTreeMap<(u32, u32), LiveQueue> = BTreeMap::new();
        let mut latest: Option<i64> = None;
        for s in self.parts.values() {
            let (t, queues) = s.fold.live_queues(&self.params);
            latest = latest.max(t);
            for q in queues {
                merged
                    .entry((q.tenant, q.queue))
                    .or_insert(LiveQueue { tenant: q.tenant, queue: q.queue, ..LiveQueue::default() })
                    .merge(&q);
            }
        }
        let dicts = &self.decoder.dicts;
        let named: Vec<(String, String, LiveQueue)> = merged
            .into_values()
            .map(|q| {
                let tenant = dicts.tenants.name(q.tenant).unwrap_or_default().to_string();
                let queue = dicts.queues.name(q.queue).unwrap_or("(none)").to_string();
                (tenant, queue, q)
            })
            .collect();
        self.telemetry.observe_queues(&named);
        if let Some(t) = latest {
            self.telemetry.event_time_lag.set((now_ms() - t) as f64 / 1000.0);
        }
    }

    /// Whether every partition's fold is back where the tables are (see `rebuild_until`).
    fn rebuilt(&self) -> bool {
        self.parts.values().all(|s| s.next >= s.rebuild_until)
    }

    /// Per partition, the application transaction recording the offset folded so far.
    fn offsets(&self) -> Vec<(String, i64)> {
        let url = self.log.url();
        self.parts.iter().map(|(p, s)| (app_id(url, *p), s.next as i64)).collect()
    }

    /// Appends what `events` and `dead_letters` do not hold yet, each in one commit with the
    /// offsets folded so far. Also run on its own while catching up, so that the first
    /// copies of events never pile up in memory.
    async fn commit_appends(&mut self) -> Result<()> {
        debug_assert!(self.rebuilt());
        let now = now_ms();
        let offsets = self.offsets();
        let mut w = self.store.append_streaming(TABLE_EVENTS, events_schema(), 1 << 20).await?;
        for b in self.pending_events.drain(..) {
            w.write(b).await?;
        }
        w.with_transactions(&offsets);
        w.commit().await?;
        self.pending_event_rows = 0;

        let dead = dead_letters_batch(&self.pending_dead, now)?;
        self.summary.dead_letters += self.pending_dead.len() as u64;
        self.telemetry.dead_letters.inc_by(self.pending_dead.len() as u64);
        self.pending_dead.clear();
        let mut w = self.store.append_streaming(TABLE_DEAD_LETTERS, dead.schema(), usize::MAX).await?;
        w.write(dead).await?;
        w.with_transactions(&offsets);
        w.commit().await?;
        for s in self.parts.values_mut() {
            s.events_committed = s.events_committed.max(s.next);
            s.dead_committed = s.dead_committed.max(s.next);
        }
        Ok(())
    }

    /// Commits every table with the offsets folded so far.
    async fn commit(&mut self) -> Result<()> {
        debug_assert!(self.rebuilt());
        self.commit_appends().await?;
        let now = now_ms();
        let offsets = self.offsets();
        const SLICE_ROWS: usize = 64 * 1024;

        let dicts = &self.decoder.dicts;
        let mut facts = self.store.overwrite_streaming(TABLE_CALL_FACTS, call_facts_schema(), usize::MAX).await?;
        for s in self.parts.values() {
            for b in s.fold.call_facts_slices(dicts, &self.params, now, SLICE_ROWS) {
                facts.write(b?).await?;
            }
        }
        facts.with_transactions(&offsets);
        facts.commit().await?;

        let mut legs = self.store.overwrite_streaming(TABLE_AGENT_LEGS, agent_legs_schema(), usize::MAX).await?;
        for s in self.parts.values() {
            for b in s.fold.agent_legs_slices(dicts, &self.params, now, SLICE_ROWS) {
                legs.write(b?).await?;
            }
        }
        legs.with_transactions(&offsets);
        legs.commit().await?;

        let mut partials =
            self.store.overwrite_streaming(TABLE_INTERVAL_PARTIALS, interval_partials_schema(), usize::MAX).await?;
        for s in self.parts.values() {
            partials.write(s.fold.interval_partials(dicts, &self.params, now)?).await?;
        }
        partials.with_transactions(&offsets);
        partials.commit().await?;

        self.dirty = false;
        self.summary.commits += 1;
        self.telemetry.commits.inc();
        Ok(())
    }
}

/// Sets the consumer-lag gauge every second: the log's end minus the folded position.
async fn report_lag(
    log: Arc<dyn EventLog>,
    positions: Arc<std::sync::Mutex<BTreeMap<Partition, u64>>>,
    telemetry: Arc<Telemetry>,
) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Ok(ends) = log.end_offsets().await else { continue };
        let pos = positions.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for (p, next) in pos {
            let end = ends.get(p as usize).copied().unwrap_or(0);
            telemetry.consumer_lag.with_label_values(&[&p.to_string()]).set(end.saturating_sub(next) as i64);
        }
    }
}

/// A dead letter for the record at `offset` of `partition` that the processor rejected.
fn log_dead(url: &str, partition: Partition, offset: u64, reason: String, raw: &[u8]) -> DeadLetter {
    DeadLetter {
        source: "log".into(),
        origin: format!("{url} partition {partition} offset {offset}"),
        line: None,
        reason,
        raw: raw.to_vec(),
    }
}

pub(crate) async fn run(args: ProcessArgs) -> Result<ProcessSummary> {
    let start = Instant::now();
    let config = Config::load(args.config.as_deref())?;
    let log = open(&args.log, &OpenOptions::default()).await?;
    let store = TableStore::new(&args.data)?;
    let mut consumer = log.subscribe(&args.group).await?;
    let targets = if args.until_caught_up { Some(log.end_offsets().await?) } else { None };
    let telemetry = Arc::new(Telemetry::new());
    if let Some(addr) = args.metrics_listen {
        crate::metrics_http::serve(addr, Arc::clone(&telemetry), args.listen_file.as_deref()).await?;
    }
    let positions = Arc::new(std::sync::Mutex::new(BTreeMap::new()));
    tokio::spawn(report_lag(Arc::clone(&log), Arc::clone(&positions), Arc::clone(&telemetry)));
    let mut proc = Processor {
        log: Arc::clone(&log),
        store,
        params: config.params()?,
        decoder: Decoder::new(),
        json: JsonDecoder::new("log", now_ms()),
        decoded: DecodedBatch::default(),
        parts: BTreeMap::new(),
        pending_events: Vec::new(),
        pending_event_rows: 0,
        pending_dead: Vec::new(),
        dirty: false,
        summary: ProcessSummary::default(),
        telemetry,
        positions,
        last_live: Instant::now(),
    };
    let interval = Duration::from_millis(args.commit_interval_ms.max(1));
    let mut last_commit = Instant::now();
    let mut commit_cost = Duration::ZERO;
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        let polled = tokio::select! {
            p = consumer.poll(args.poll_records, Duration::from_millis(200)) => p?,
            _ = &mut ctrl_c => {
                eprintln!("stopping: committing what was read");
                break;
            }
        };
        match polled {
            Poll::Assigned(parts) => proc.assign(&mut *consumer, &parts).await?,
            Poll::Revoked(parts) => {
                // Commit what this member folded before the partitions move on.
                if proc.dirty && proc.rebuilt() {
                    proc.commit().await?;
                }
                for p in parts {
                    proc.parts.remove(&p);
                }
            }
            Poll::Records(records) => {
                proc.fold(records).context("folding records")?;
                proc.observe(false);
            }
            Poll::Idle => proc.observe(true),
        }
        if let Some(targets) = &targets {
            let caught_up = !proc.parts.is_empty()
                && proc.parts.iter().all(|(p, s)| s.next >= targets.get(*p as usize).copied().unwrap_or(0));
            if caught_up {
                break;
            }
        }
        // While catching up, commits never take more than about a fifth of the time.
        if proc.pending_event_rows >= args.append_flush_rows.max(1) && proc.rebuilt() {
            proc.commit_appends().await?;
        }
        let due = last_commit.elapsed() >= interval.max(commit_cost * 5);
        if proc.dirty && !args.until_caught_up && due && proc.rebuilt() {
            let t = Instant::now();
            proc.commit().await?;
            commit_cost = t.elapsed();
            proc.telemetry.commit_duration.observe(commit_cost.as_secs_f64());
            last_commit = Instant::now();
        }
    }
    if proc.rebuilt() && (proc.dirty || proc.summary.commits == 0) {
        proc.commit().await?;
    }
    proc.summary.seconds = start.elapsed().as_secs_f64();
    let s = &proc.summary;
    eprintln!(
        "processed {} records from {} ({} dead letters) in {:.2} s ({:.0} records/s), {} commit(s) to {}",
        s.records,
        log.url(),
        s.dead_letters,
        s.seconds,
        s.records as f64 / s.seconds.max(1e-9),
        s.commits,
        args.data
    );
    Ok(std::mem::take(&mut proc.summary))
}
