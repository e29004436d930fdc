//! `ccstream process`: consume the event log and keep the tables current.
//!
//! One async loop polls the log, decodes each partition's records to Arrow and folds them
//! into that partition's [`CallFold`] (the same fold as `replay`), and commits at an
//! interval. Every commit records, per log partition, the offset after the last record it
//! covers, as a Delta application transaction in the same commit as the rows:
//!
//! - `events` and `dead_letters` are appended: a commit adds the first copies of the events
//!   (and the rejected records) read since the previous commit. After a restart, records
//!   below a table's committed offset are not appended again. First copies are encoded
//!   into the open append as they are folded, already grouped by the table's partitions
//!   (tenant and day); nothing is visible until the commit.
//! - `corrections` is appended, before the derived tables: the changed columns of the rows
//!   the commit writes as new revisions.
//! - `call_facts`, `agent_legs` and `interval_partials` hold one Delta partition per log
//!   partition; a commit rewrites, from the fold's state, the partitions whose rows changed
//!   and replaces only those files, so processors of one consumer group share the tables.
//!
//! Event time: per partition, the watermark is the latest event time minus the allowed
//! lateness; a partition that has been idle for the idle timeout follows the slowest of
//! the processor's busy partitions. An event older than the watermark is late: it is folded
//! like any other, and the rows it changes get a new revision and corrections. A call is
//! written when it is complete, or when the watermark passes its latest event by the
//! completion grace, or at the end of the log with `--until-caught-up`.
//!
//! State is rebuilt on start by reading every assigned partition from its earliest offset;
//! the fold is deterministic in the log's per-partition order, so a restart after a crash at
//! any instant gives the same tables, without losing or double-counting an event. Once the
//! fold is back where the tables are, it reads back the rows they hold (revisions, and the
//! values a later commit must correct) before it commits again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::Date32Type;
use ccstream_eventlog::{open, Delivered, EventLog, LogConsumer, OpenOptions, Partition, Poll};
use ccstream_processor::batch::{DecodedBatch, Decoder, EventsByPartition, JsonDecoder};
use ccstream_processor::kpi::{corrections_batch, CallFold, CallName, Horizon, LiveQueue, Params};
use ccstream_processor::sink::{Overwrite, TableStore, FILE_COLUMN};
use ccstream_processor::telemetry::Telemetry;
use ccstream_schemas::{
    agent_legs_schema, call_facts_schema, corrections_schema, events_schema, interval_partials_schema,
    DeadLetterRecord, DEAD_LETTER_KEY, MS_PER_DAY, PARTITION_COLUMN, SEALED_COLUMN, TABLE_AGENT_LEGS, TABLE_CALL_FACTS,
    TABLE_CORRECTIONS, TABLE_DEAD_LETTERS, TABLE_EVENTS, TABLE_INTERVAL_PARTIALS,
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
    /// Records decoded, folded and copied to `events` at a time (a chunk's decoded events,
    /// ~600 bytes each, stay in the core's cache from decoding to the `events` rows)
    #[arg(long, env = "CCSTREAM_DECODE_CHUNK", default_value_t = 4096)]
    pub(crate) decode_chunk: usize,
    /// Between full commits, append `events` alone once this many rows are pending (also
    /// the most rows an `events` file holds)
    #[arg(long, env = "CCSTREAM_APPEND_FLUSH_ROWS", default_value_t = 1 << 20)]
    pub(crate) append_flush_rows: usize,
    /// Compact an `events` partition (tenant and day) into fewer files once this processor
    /// has added this many files to it (0: never). Every commit adds a file to each partition
    /// it touches, and a commit costs in proportion to the files the table holds
    #[arg(long, env = "CCSTREAM_COMPACT_AFTER_FILES", default_value_t = 32)]
    pub(crate) compact_after_files: usize,
    /// Serve Prometheus metrics at http://ADDR/metrics (port 0: any free port)
    #[arg(long, env = "CCSTREAM_METRICS_LISTEN")]
    pub(crate) metrics_listen: Option<std::net::SocketAddr>,
    /// Write the metrics address, once bound, to this file
    #[arg(long, env = "CCSTREAM_LISTEN_FILE")]
    pub(crate) listen_file: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) time: StreamTime,
    /// The source listeners' metrics and health, served beside the processor's
    /// (`ccstream run`).
    #[arg(skip)]
    pub(crate) sources: Option<crate::metrics_http::Sources>,
}

/// Event-time knobs: when calls are written and how long state is kept.
#[derive(Debug, Clone, Args)]
pub(crate) struct StreamTime {
    /// Allowed lateness (ms): the watermark trails the latest event time by this much
    #[arg(long, env = "CCSTREAM_ALLOWED_LATENESS_MS", default_value_t = StreamTime::DEFAULT.allowed_lateness_ms)]
    pub(crate) allowed_lateness_ms: i64,
    /// A partition without records for this long (ms, wall clock) stops holding the
    /// watermark back: it follows the slowest busy partition
    #[arg(long, env = "CCSTREAM_IDLE_TIMEOUT_MS", default_value_t = StreamTime::DEFAULT.idle_timeout_ms)]
    pub(crate) idle_timeout_ms: u64,
    /// A call that never completes is written once the watermark passes its latest event
    /// by this much (ms)
    #[arg(long, env = "CCSTREAM_COMPLETION_GRACE_MS", default_value_t = StreamTime::DEFAULT.completion_grace_ms)]
    pub(crate) completion_grace_ms: i64,
    /// A written call leaves memory once the watermark passes its latest event by this much
    /// (ms); its rows are sealed, and a later event for it re-folds it from `events`
    #[arg(long, env = "CCSTREAM_STATE_RETENTION_MS", default_value_t = StreamTime::DEFAULT.state_retention_ms)]
    pub(crate) state_retention_ms: i64,
    /// An event more than this far (ms) ahead of the time its record was appended to the
    /// log is dead-lettered: a sender's clock (or intent) cannot move the watermark
    #[arg(long, env = "CCSTREAM_MAX_FUTURE_SKEW_MS", default_value_t = StreamTime::DEFAULT.max_future_skew_ms)]
    pub(crate) max_future_skew_ms: i64,
}

impl StreamTime {
    /// The defaults, in one place (the flags' defaults and `run`/`demo`'s values).
    pub(crate) const DEFAULT: StreamTime = StreamTime {
        allowed_lateness_ms: 300_000,
        idle_timeout_ms: 30_000,
        completion_grace_ms: 1_800_000,
        state_retention_ms: 7_200_000,
        max_future_skew_ms: 3_600_000,
    };
}

/// What a `process` run did.
#[derive(Debug, Default, serde::Serialize)]
pub(crate) struct ProcessSummary {
    pub(crate) records: u64,
    pub(crate) dead_letters: u64,
    pub(crate) late_events: u64,
    pub(crate) revisions: u64,
    pub(crate) corrections: u64,
    pub(crate) commits: u64,
    /// The log partitions this process committed rows of.
    pub(crate) partitions: std::collections::BTreeSet<Partition>,
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
    /// Whether the fold has read back the rows the tables hold (see the module doc).
    restored: bool,
    /// Latest event time folded (ms; `i64::MIN` before the first).
    max_event_ms: i64,
    /// When the partition last delivered records.
    last_records: Instant,
    /// The derived rows differ from what the tables hold.
    changed: bool,
    /// Rows for the next commit's sealed files: calls evicted, and the rows kept from
    /// sealed files rewritten because calls left them (`unsealed`).
    sealed_facts: Vec<RecordBatch>,
    sealed_legs: Vec<RecordBatch>,
    /// Calls whose sealed rows the next commit removes (by rewriting their files).
    unsealed: Vec<CallName>,
    /// Interval partials sealed since the last commit, for its sealed files.
    sealed_partials: Vec<RecordBatch>,
    /// Sealed partials taken back into the fold (tenant, queue, interval start): the next
    /// commit removes them from the sealed files (see `CallFold::load_sealed_partials`).
    loaded_partials: Vec<PartialKey>,
}

/// Tenant, queue (NULL for none), interval start (ms) of an interval partial.
type PartialKey = (String, Option<String>, i64);

impl PartitionState {
    fn watermark(&self, lateness_ms: i64) -> i64 {
        self.max_event_ms.saturating_sub(lateness_ms)
    }
}

/// The derived tables whose rows are sealed when their calls leave memory.
#[derive(Debug, Clone, Copy)]
enum Sealable {
    CallFacts,
    AgentLegs,
}

/// Sealed files to replace, and the rows of theirs to keep.
#[derive(Debug)]
struct SealedRewrite {
    rows: Vec<RecordBatch>,
    files: Vec<String>,
}

/// A background compaction's `events` partition (tenant, day as Delta writes it) and its
/// outcome: the files removed and added ([`TableStore::compact`]).
type Compacted = (String, String, Result<(u64, u64)>);

/// The `events` partition (tenant, day) of a batch that holds one.
fn events_partition(b: &RecordBatch) -> Option<(String, i32)> {
    let tenant = b.column_by_name("tenant_id")?.as_string_opt::<i32>()?;
    let day = b.column_by_name("day")?.as_primitive_opt::<Date32Type>()?;
    (b.num_rows() > 0 && tenant.is_valid(0) && day.is_valid(0)).then(|| (tenant.value(0).to_string(), day.value(0)))
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
    /// First copies waiting for the next `commit_appends`, by the table's partitions.
    events_out: EventsByPartition,
    /// First copies held back instead, one partition per batch (while their partition has
    /// calls waiting to be re-folded: the re-fold drops those the table already holds).
    held_events: Vec<RecordBatch>,
    pending_event_rows: usize,
    /// Rows per `events` file at most (`--append-flush-rows`).
    append_flush_rows: usize,
    /// `events` files added per (tenant, day) partition since it was last compacted.
    files_added: HashMap<(String, i32), usize>,
    /// `--compact-after-files` (0: never).
    compact_after_files: usize,
    /// The compaction running in the background, if any (one at a time).
    compaction: Option<tokio::task::JoinHandle<Compacted>>,
    decode_chunk: usize,
    /// With `--until-caught-up`: each partition's end offset when the run started.
    until: Option<Vec<u64>>,
    pending_dead: Vec<DeadLetter>,
    pending_corrections: Vec<RecordBatch>,
    time: StreamTime,
    dirty: bool,
    summary: ProcessSummary,
    telemetry: Arc<Telemetry>,
    /// Next offset per partition, shared with the lag reporter.
    positions: Arc<std::sync::Mutex<BTreeMap<Partition, u64>>>,
    last_live: Instant,
    /// Whether `/metrics` is served (the live gauges are computed only then).
    serving: bool,
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
            let mut fold = CallFold::new(p as i32);
            // A backfill knows how many records the fold will take: room for them up front,
            // instead of growing the state by doubling (a copy and fresh pages each time).
            if let Some(end) = self.until.as_ref().and_then(|ends| ends.get(p as usize)) {
                fold.reserve_for_events(*end as usize);
            }
            self.parts.insert(
                p,
                PartitionState {
                    fold,
                    next: 0,
                    events_committed: events[i].unwrap_or(0).max(0) as u64,
                    dead_committed: dead[i].unwrap_or(0).max(0) as u64,
                    rebuild_until: highest[i],
                    restored: false,
                    max_event_ms: i64::MIN,
                    last_records: Instant::now(),
                    changed: true,
                    sealed_facts: Vec::new(),
                    sealed_legs: Vec::new(),
                    unsealed: Vec::new(),
                    sealed_partials: Vec::new(),
                    loaded_partials: Vec::new(),
                },
            );
        }
        Ok(())
    }

    /// Folds one poll's records (any partitions, in order within each).
    async fn fold(&mut self, mut records: Vec<Delivered>) -> Result<()> {
        // A poll's records come in runs of one partition (a FileLog reads a partition at a
        // time): each run is folded where it lies, not moved into a vector per partition
        // (88 bytes a record, twice). Runs of a partition split by another's are put
        // together first; the sort is stable, so each partition keeps its order.
        if !one_run_per_partition(&records) {
            records.sort_by_key(|r| r.partition);
        }
        let url = self.log.url().to_string();
        let mut rest = &records[..];
        while let Some(first) = rest.first() {
            let p = first.partition;
            let n = rest.iter().position(|r| r.partition != p).unwrap_or(rest.len());
            let (run, after) = rest.split_at(n);
            rest = after;
            self.fold_partition(&url, p, run).await?;
        }
        Ok(())
    }

    /// Folds records of partition `p`, in order (those below its next offset, re-delivered,
    /// change nothing).
    async fn fold_partition(&mut self, url: &str, p: Partition, run: &[Delivered]) -> Result<()> {
        let Some(state) = self.parts.get_mut(&p) else { return Ok(()) };
        let next = state.next;
        let recs = || run.iter().filter(move |r| r.offset >= next);
        let (n, last) = recs().fold((0usize, None), |(n, _), r| (n + 1, Some(r.offset)));
        let Some(last) = last else { return Ok(()) };
        state.next = last + 1;
        state.last_records = Instant::now();
        self.summary.records += n as u64;
        self.telemetry.records.inc_by(n as u64);
        let mut values: Vec<&[u8]> = Vec::with_capacity(n);
        let mut value_offsets: Vec<u64> = Vec::with_capacity(n);
        let mut value_times: Vec<i64> = Vec::with_capacity(n);
        for r in recs() {
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
                        Err(e) => log_dead(url, p, r.offset, format!("unreadable dead-letter record: {e}"), &r.value),
                    };
                    self.pending_dead.push(dl);
                }
                continue;
            }
            values.push(&r.value);
            value_offsets.push(r.offset);
            value_times.push(r.timestamp_ms);
        }
        self.dirty = true;
        // In chunks small enough that a chunk's events (a few hundred bytes each, borrowing
        // the records) are still in the core's cache when the fold's columns and the
        // `events` rows are built from them.
        let chunk = self.decode_chunk;
        let chunks = values.chunks(chunk).zip(value_offsets.chunks(chunk)).zip(value_times.chunks(chunk));
        for ((values, offsets), times) in chunks {
            self.fold_chunk(url, p, values, offsets, times).await?;
        }
        Ok(())
    }

    /// Folds records of partition `p` (values, their offsets and append times), and copies
    /// the first copies of their events to the pending `events` rows.
    async fn fold_chunk(
        &mut self,
        url: &str,
        p: Partition,
        values: &[&[u8]],
        value_offsets: &[u64],
        value_times: &[i64],
    ) -> Result<()> {
        let Some(state) = self.parts.get_mut(&p) else { return Ok(()) };
        let mut read = self.json.read_values(values);
        // An event that does not say when it was ingested (a value from another
        // producer) was ingested when its record was appended to the log: the same
        // time at every re-read.
        for ((_, v), &row) in read.events.iter_mut().zip(&read.rows) {
            let appended = value_times[row as usize];
            if v.ingested_at_ms.is_none() && appended > 0 {
                v.ingested_at_ms = Some(appended);
            }
        }
        // Events from the future (by the append time of their record, which the log's
        // writer set, so every re-read decides the same) are dead letters: a sender's
        // clock must not move the partition's watermark.
        let skew = self.time.max_future_skew_ms;
        let future = |i: usize| {
            let appended = value_times[read.rows[i] as usize];
            appended > 0 && read.events[i].1.occurred_at_ms > appended.saturating_add(skew)
        };
        // (The common case, none, costs one comparison per event and moves nothing.)
        let first_future = (0..read.events.len()).find(|&i| future(i)).unwrap_or(read.events.len());
        let mut kept = first_future;
        for i in first_future..read.events.len() {
            let line = read.rows[i] as usize;
            let appended = value_times[line];
            let at = read.events[i].1.occurred_at_ms;
            if appended > 0 && at > appended.saturating_add(skew) {
                if value_offsets[line] >= state.dead_committed {
                    let reason = format!(
                        "occurred_at is {} s after the record was appended (more than --max-future-skew-ms {skew})",
                        (at - appended) / 1000
                    );
                    self.pending_dead.push(log_dead(url, p, value_offsets[line], reason, values[line]));
                }
                self.telemetry.future_events.inc();
                continue;
            }
            read.events.swap(kept, i);
            read.rows.swap(kept, i);
            kept += 1;
        }
        read.events.truncate(kept);
        read.rows.truncate(kept);
        let rows = &read.rows;
        for rej in read.rejected {
            let offset = value_offsets[rej.line];
            if offset >= state.dead_committed {
                self.pending_dead.push(log_dead(url, p, offset, rej.reason, values[rej.line]));
            }
        }
        if read.events.is_empty() {
            return Ok(());
        }
        self.decoder.decode_events(&read.events, &mut self.decoded);
        let before = state.fold.stats();
        state.fold.update(&self.decoded, &self.decoder.dicts);
        let after = state.fold.stats();
        // Late: older than the watermark as it stood before this batch.
        let watermark = state.watermark(self.time.allowed_lateness_ms);
        let mut late = 0u64;
        for (&t, &first) in self.decoded.t_ms.iter().zip(state.fold.first_copy()) {
            if first {
                late += (t < watermark) as u64;
                state.max_event_ms = state.max_event_ms.max(t);
            }
        }
        self.summary.late_events += late;
        self.telemetry.late_events.inc_by(late);
        self.telemetry.duplicates.inc_by(after.duplicates - before.duplicates);
        self.telemetry.events.inc_by(after.rows.saturating_sub(before.rows));
        for (row, reason) in self.decoded.invalid.drain(..) {
            let line = rows[row] as usize;
            if value_offsets[line] >= state.dead_committed {
                self.pending_dead.push(log_dead(url, p, value_offsets[line], reason, values[line]));
            }
        }
        // First copies of events this table does not hold yet, by the table's partitions
        // (tenant and day, from the decoded columns).
        let d = &self.decoded;
        let keys = state.fold.first_copy().iter().zip(rows).enumerate().map(|(r, (first, row))| {
            (*first && value_offsets[*row as usize] >= state.events_committed)
                .then(|| (d.tenant[r], d.t_ms[r].div_euclid(MS_PER_DAY)))
        });
        // While calls of this partition wait to be re-folded, its rows are held apart: the
        // re-fold drops those the table already holds.
        let refolding = state.fold.refolding();
        let mut held = EventsByPartition::default();
        let out = if refolding { &mut held } else { &mut self.events_out };
        let before = out.rows();
        for (r, key) in keys.enumerate() {
            if let Some(key) = key {
                let (ev, v) = &read.events[r];
                out.push(&self.json, key, ev, v, (d.queue[r], d.agent[r]));
            }
        }
        self.pending_event_rows += out.rows() - before;
        if refolding {
            self.held_events.extend(held.finish(&self.decoder.dicts)?);
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
        // The gauges scan every call held: only worth it when someone can scrape them.
        if !self.serving || (!force && self.last_live.elapsed() < Duration::from_millis(200)) {
            return;
        }
        for (p, s) in &self.parts {
            self.telemetry.held_calls.with_label_values(&[&p.to_string()]).set(s.fold.calls() as i64);
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

    /// A new `events` append (files of at most `--append-flush-rows` rows).
    async fn open_events(&self) -> Result<Overwrite> {
        Ok(self.store.append_streaming(TABLE_EVENTS, events_schema(), self.append_flush_rows).await?)
    }

    /// Whether rows wait for the next commit of `events` or `dead_letters`.
    fn has_pending(&self) -> bool {
        !self.events_out.is_empty() || !self.held_events.is_empty() || !self.pending_dead.is_empty()
    }

    /// Forgets the rows waiting for the next commit of `events` and `dead_letters` (none of
    /// them is encoded before that commit).
    fn drop_pending(&mut self) {
        self.events_out.clear();
        self.held_events.clear();
        self.pending_event_rows = 0;
        self.pending_dead.clear();
    }

    /// Whether every partition's fold is back where the tables are (see `rebuild_until`).
    fn rebuilt(&self) -> bool {
        self.parts.values().all(|s| s.next >= s.rebuild_until)
    }

    /// Reads back, for the partitions rebuilt since they were assigned, the rows the tables
    /// hold (see [`CallFold::restore`]).
    async fn restore(&mut self) -> Result<()> {
        let todo: Vec<Partition> = self.parts.iter().filter(|(_, s)| !s.restored).map(|(p, _)| *p).collect();
        if todo.is_empty() {
            return Ok(());
        }
        let ids: Vec<i32> = todo.iter().map(|p| *p as i32).collect();
        let facts = self.store.read(TABLE_CALL_FACTS, Some(&ids)).await?;
        let partials = self.store.read(TABLE_INTERVAL_PARTIALS, Some(&ids)).await?;
        let corrections = self.store.read(TABLE_CORRECTIONS, Some(&ids)).await?;
        let list = ids.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ");
        let filter = format!("\"{PARTITION_COLUMN}\" IN ({list}) AND \"{SEALED_COLUMN}\"");
        let sealed_legs = self.store.read_where(TABLE_AGENT_LEGS, Some(&filter), false).await?;
        for p in todo {
            let pick = |batches: &[RecordBatch]| -> Result<Vec<RecordBatch>> {
                batches.iter().map(|b| rows_of_partition(b, p as i32)).collect()
            };
            let (f, i, c) = (pick(&facts)?, pick(&partials)?, pick(&corrections)?);
            let mut leg_calls = std::collections::HashSet::new();
            for b in pick(&sealed_legs)? {
                leg_calls.extend(CallName::of_rows(&b)?);
            }
            let state = self.parts.get_mut(&p).expect("listed above");
            state.fold.restore(&mut self.decoder.dicts, &self.params, &f, &leg_calls, &i, &c)?;
            state.sealed_legs.extend(state.fold.take_carried_legs());
            state.restored = true;
            state.changed = true;
        }
        Ok(())
    }

    /// Re-folds the calls seen again after their eviction: their events come back from
    /// `events`, their sealed rows become their committed revision and leave the sealed
    /// files at the next commit (see [`CallFold::refold_ids`]).
    async fn refold(&mut self) -> Result<()> {
        let parts: Vec<Partition> = self.parts.keys().copied().collect();
        // Events of re-folded calls that `events` already holds: copies that arrived after
        // their call left memory looked like first copies; they must not be appended again.
        let mut stored: HashSet<(String, String)> = HashSet::new();
        for p in parts {
            let calls = self.parts[&p].fold.refold_ids(&self.decoder.dicts);
            if calls.is_empty() {
                continue;
            }
            let these = calls_filter(&calls);
            for b in self.store.read_where(TABLE_EVENTS, Some(&these), false).await? {
                stored.extend(tenant_event_ids(&b)?.flatten());
                self.decoder.decode(&b, &mut self.decoded)?;
                self.parts.get_mut(&p).expect("listed").fold.update(&self.decoded, &self.decoder.dicts);
            }
            let filter = format!("\"{PARTITION_COLUMN}\" = {p} AND \"{SEALED_COLUMN}\" AND {these}");
            let rows = self.store.read_where(TABLE_CALL_FACTS, Some(&filter), false).await?;
            // The sealed partials these calls are leaving come back first.
            self.bring_back_partials(p, &rows).await?;
            let state = self.parts.get_mut(&p).expect("listed");
            let n = state.fold.unseal(&mut self.decoder.dicts, &self.params, &rows)?;
            self.telemetry.refolded_calls.inc_by(n);
        }
        // Sealed partials whose maximum wait left with a call (re-folded, or found changed
        // by a restart): computed again from the sealed rows that stay.
        let parts: Vec<Partition> = self.parts.keys().copied().collect();
        for p in parts {
            let state = self.parts.get_mut(&p).expect("listed");
            let stale = state.fold.stale_max(&self.decoder.dicts);
            if stale.is_empty() {
                continue;
            }
            let mut maxima = Vec::with_capacity(stale.len());
            let leaving = calls_filter(state.fold.unsealed());
            for (tenant, queue, start) in &stale {
                let queue = match queue {
                    Some(q) => format!("queue_id = {}", sql_list(std::slice::from_ref(q))),
                    None => "queue_id IS NULL".to_string(),
                };
                let filter = format!(
                    "\"{PARTITION_COLUMN}\" = {p} AND \"{SEALED_COLUMN}\" AND tenant_id = {} AND {queue} \
                     AND queued_at >= to_timestamp_millis({start}) AND queued_at < to_timestamp_millis({}) \
                     AND NOT {leaving}",
                    sql_list(std::slice::from_ref(tenant)),
                    start + ccstream_schemas::PARTIAL_INTERVAL_MS,
                );
                let rows = self.store.read_where(TABLE_CALL_FACTS, Some(&filter), false).await?;
                let mut max: Option<i64> = None;
                for b in &rows {
                    let waits = b
                        .column_by_name("wait_ms")
                        .and_then(|c| c.as_any().downcast_ref::<arrow::array::Int64Array>())
                        .context("call_facts has no wait_ms")?;
                    max = max.max(arrow::compute::max(waits));
                }
                maxima.push(max);
            }
            self.parts.get_mut(&p).expect("listed").fold.set_sealed_max(&maxima);
        }
        if !stored.is_empty() {
            let mut dropped = 0usize;
            for b in self.held_events.iter_mut() {
                let keep: BooleanArray =
                    tenant_event_ids(b)?.map(|id| Some(!id.is_some_and(|id| stored.contains(&id)))).collect();
                let n = keep.true_count();
                if n < b.num_rows() {
                    dropped += b.num_rows() - n;
                    *b = filter_record_batch(b, &keep)?;
                }
            }
            self.pending_event_rows -= dropped.min(self.pending_event_rows);
            self.telemetry.duplicates.inc_by(dropped as u64);
        }
        Ok(())
    }

    /// Reads back the sealed interval partials that partition `p`'s fold needs before it
    /// unseals the sealed `call_facts` rows in `unsealing` or emits: see
    /// [`CallFold::sealed_partials_needed`].
    async fn bring_back_partials(&mut self, p: Partition, unsealing: &[RecordBatch]) -> Result<()> {
        let Some(state) = self.parts.get_mut(&p) else { return Ok(()) };
        // Partials a restart took back (`CallFold::restore`), then those read back here.
        state.loaded_partials.extend(state.fold.take_loaded_partials(&self.decoder.dicts));
        let keys = state.fold.sealed_partials_needed(&mut self.decoder.dicts, unsealing)?;
        if keys.is_empty() {
            return Ok(());
        }
        let filter = format!("\"{PARTITION_COLUMN}\" = {p} AND \"{SEALED_COLUMN}\" AND {}", partial_intervals(&keys));
        let rows = self.store.read_where(TABLE_INTERVAL_PARTIALS, Some(&filter), false).await?;
        state.fold.load_sealed_partials(&mut self.decoder.dicts, &rows)?;
        state.loaded_partials.extend(state.fold.take_loaded_partials(&self.decoder.dicts));
        if !state.loaded_partials.is_empty() {
            state.changed = true;
        }
        Ok(())
    }

    /// The sealed `interval_partials` files of partition `p` that hold partials `keys`, and
    /// their other rows (see [`Processor::rewrite_sealed`]).
    async fn rewrite_sealed_partials(&self, p: Partition, keys: &[PartialKey]) -> Result<SealedRewrite> {
        let wanted: HashSet<(&str, Option<&str>, i64)> =
            keys.iter().map(|(t, q, s)| (t.as_str(), q.as_deref(), *s)).collect();
        let leaving = |b: &RecordBatch| -> Result<Vec<bool>> {
            let (tenants, queues) = (string_column(b, "tenant_id")?, string_column(b, "queue_id")?);
            let starts = b
                .column_by_name("interval_start")
                .and_then(|c| c.as_any().downcast_ref::<arrow::array::TimestampMillisecondArray>())
                .context("interval_partials has no interval_start")?;
            Ok((0..b.num_rows())
                .map(|i| {
                    let queue = queues.is_valid(i).then(|| queues.value(i));
                    wanted.contains(&(tenants.value(i), queue, starts.value(i)))
                })
                .collect())
        };
        self.rewrite_sealed(TABLE_INTERVAL_PARTIALS, p, &partial_intervals(keys), leaving).await
    }

    /// Commits `call_facts` or `agent_legs`: the unsealed rows of the changed partitions from
    /// their folds, the rows sealed since the last commit, and the sealed files rewritten
    /// without the calls that left them.
    async fn commit_sealable(
        &self,
        which: Sealable,
        changed: &[i32],
        rewrites: &[[SealedRewrite; 2]],
        offsets: &[(String, i64)],
    ) -> Result<()> {
        const SLICE_ROWS: usize = 64 * 1024;
        let (table, schema, i) = match which {
            Sealable::CallFacts => (TABLE_CALL_FACTS, call_facts_schema(), 0),
            Sealable::AgentLegs => (TABLE_AGENT_LEGS, agent_legs_schema(), 1),
        };
        let (dicts, params) = (&self.decoder.dicts, &self.params);
        let mut w = self.store.overwrite_partitions(table, schema, changed, usize::MAX).await?;
        for s in self.parts.values() {
            if s.changed {
                let live: Box<dyn Iterator<Item = ccstream_processor::Result<RecordBatch>> + Send + '_> = match which {
                    Sealable::CallFacts => Box::new(s.fold.call_facts_slices(dicts, params, SLICE_ROWS)),
                    Sealable::AgentLegs => Box::new(s.fold.agent_legs_slices(dicts, params, SLICE_ROWS)),
                };
                for b in live {
                    w.write(b?).await?;
                }
            }
            for b in if i == 0 { &s.sealed_facts } else { &s.sealed_legs } {
                w.write(b.clone()).await?;
            }
        }
        for r in rewrites.iter().map(|r| &r[i]) {
            for b in &r.rows {
                w.write(b.clone()).await?;
            }
            w.remove_files(&r.files)?;
        }
        w.with_transactions(offsets);
        w.commit().await?;
        Ok(())
    }

    /// The sealed files of `table` in `partition` that hold rows of `calls`, and their other
    /// rows (see [`Processor::rewrite_sealed`]).
    async fn rewrite_sealed_calls(
        &self,
        table: &str,
        partition: Partition,
        calls: &[CallName],
    ) -> Result<SealedRewrite> {
        // Looked up by borrowed (tenant, call id): no string is built per row of a file.
        let calls_set: HashSet<(&str, &str)> = calls.iter().map(|c| (c.tenant.as_str(), c.call.as_str())).collect();
        let leaving = |b: &RecordBatch| -> Result<Vec<bool>> {
            let (tenants, ids) = (string_column(b, "tenant_id")?, string_column(b, "call_id")?);
            Ok((0..b.num_rows()).map(|i| calls_set.contains(&(tenants.value(i), ids.value(i)))).collect())
        };
        self.rewrite_sealed(table, partition, &calls_filter(calls), leaving).await
    }

    /// The sealed files of `table` in `partition` that hold rows `leaving` picks out (among
    /// the sealed rows that SQL condition `select` matches), and those files' other rows:
    /// the commit writes the rows and removes the files.
    async fn rewrite_sealed(
        &self,
        table: &str,
        partition: Partition,
        select: &str,
        leaving: impl Fn(&RecordBatch) -> Result<Vec<bool>>,
    ) -> Result<SealedRewrite> {
        let sealed = format!("\"{PARTITION_COLUMN}\" = {partition} AND \"{SEALED_COLUMN}\"");
        let mut files: Vec<String> = Vec::new();
        for b in self.store.read_where(table, Some(&format!("{sealed} AND {select}")), true).await? {
            let col = string_column(&b, FILE_COLUMN)?;
            files.extend(
                leaving(&b)?.into_iter().enumerate().filter(|(_, hit)| *hit).map(|(i, _)| col.value(i).to_string()),
            );
        }
        files.sort_unstable();
        files.dedup();
        if files.is_empty() {
            return Ok(SealedRewrite { rows: Vec::new(), files });
        }
        let filter = format!("{sealed} AND \"{FILE_COLUMN}\" IN ({})", sql_list(&files));
        let mut keep = Vec::new();
        for b in self.store.read_where(table, Some(&filter), true).await? {
            let stay: BooleanArray = leaving(&b)?.into_iter().map(|hit| Some(!hit)).collect();
            let n = b.num_columns() - 1;
            keep.push(filter_record_batch(&b.project(&(0..n).collect::<Vec<_>>())?, &stay)?);
        }
        Ok(SealedRewrite { rows: keep, files })
    }

    /// The watermark of every partition: its own, or, idle, at least the slowest busy one's.
    fn watermarks(&self) -> BTreeMap<Partition, i64> {
        let lateness = self.time.allowed_lateness_ms;
        let idle = Duration::from_millis(self.time.idle_timeout_ms);
        let busy_min =
            self.parts.values().filter(|s| s.last_records.elapsed() < idle).map(|s| s.watermark(lateness)).min();
        self.parts
            .iter()
            .map(|(p, s)| {
                let own = s.watermark(lateness);
                let w = match busy_min {
                    Some(b) if s.last_records.elapsed() >= idle => own.max(b),
                    _ => own,
                };
                (*p, w)
            })
            .collect()
    }

    /// Writes what is due in every partition's fold (see [`CallFold::emit`]): new calls,
    /// revisions, and the corrections the next commit appends.
    fn emit(&mut self, end_of_time: bool) -> Result<()> {
        let now = now_ms();
        let watermarks = self.watermarks();
        for (p, s) in self.parts.iter_mut() {
            let horizon = if end_of_time {
                Horizon::END
            } else {
                Horizon {
                    watermark_ms: watermarks[p],
                    completion_grace_ms: self.time.completion_grace_ms,
                    retention_ms: self.time.state_retention_ms,
                }
            };
            let em = s.fold.emit(&self.decoder.dicts, &self.params, now, horizon)?;
            s.changed |= em.changed || em.evicted > 0;
            s.sealed_facts.extend(em.sealed_facts);
            s.sealed_legs.extend(em.sealed_legs);
            s.sealed_partials.extend(em.sealed_partials);
            s.unsealed.extend(s.fold.take_unsealed());
            self.telemetry.evicted_calls.inc_by(em.evicted);
            let label = p.to_string();
            if em.revised_calls > 0 {
                self.telemetry.revisions.with_label_values(&[TABLE_CALL_FACTS]).inc_by(em.revised_calls);
            }
            if em.revised_partials > 0 {
                self.telemetry.revisions.with_label_values(&[TABLE_INTERVAL_PARTIALS]).inc_by(em.revised_partials);
            }
            self.summary.revisions += em.revised_calls + em.revised_partials;
            self.summary.corrections += em.corrections.len() as u64;
            self.telemetry.corrections.inc_by(em.corrections.len() as u64);
            self.telemetry.pending_calls.with_label_values(&[&label]).set(s.fold.pending_calls() as i64);
            self.telemetry.held_calls.with_label_values(&[&label]).set(s.fold.calls() as i64);
            self.telemetry.held_partials.with_label_values(&[&label]).set(s.fold.held_partials() as i64);
            if s.max_event_ms != i64::MIN {
                let delay = (now - watermarks[p]) as f64 / 1000.0;
                self.telemetry.watermark_delay.with_label_values(&[&label]).set(delay);
            }
            if !em.corrections.is_empty() {
                self.pending_corrections.push(corrections_batch(&em.corrections, *p as i32, now)?);
            }
        }
        Ok(())
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
        let mut w = self.open_events().await?;
        // One partition per batch.
        let mut touched = Vec::new();
        for b in self.events_out.finish(&self.decoder.dicts)?.into_iter().chain(self.held_events.drain(..)) {
            let n = b.num_rows();
            touched.extend(events_partition(&b));
            w.write_runs(b, &[n]).await?;
        }
        w.with_transactions(&offsets);
        w.commit().await?;
        self.pending_event_rows = 0;
        for key in touched {
            *self.files_added.entry(key).or_default() += 1;
        }
        self.compact_events().await;

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

    /// Collects the background compaction if it has finished (or, with `wait`, once it has),
    /// and starts the next one due: the `events` partition this processor added the most
    /// files to, once that is `--compact-after-files`. A compaction changes no row and
    /// commits no offsets, so one that fails (another processor compacting the same files)
    /// or never finishes (a crash) loses nothing; it is counted and tried again later.
    async fn compact_events(&mut self) {
        self.finish_compaction(false).await;
        if self.compact_after_files == 0 || self.compaction.is_some() {
            return;
        }
        let Some((key, &n)) = self.files_added.iter().max_by_key(|(_, &n)| n) else { return };
        if n < self.compact_after_files {
            return;
        }
        let key = key.clone();
        self.files_added.remove(&key);
        let (tenant, day) = key;
        let day = chrono::DateTime::from_timestamp(i64::from(day) * 86_400, 0)
            .map(|t| t.date_naive().to_string())
            .unwrap_or_default();
        let store = self.store.clone();
        self.compaction = Some(tokio::spawn(async move {
            let done = store.compact(TABLE_EVENTS, &[("tenant_id", &tenant), ("day", &day)]).await;
            (tenant, day, done.map_err(Into::into))
        }));
    }

    /// Records the background compaction's outcome once it has finished (`wait`: waits).
    async fn finish_compaction(&mut self, wait: bool) {
        let Some(task) = self.compaction.take_if(|t| wait || t.is_finished()) else { return };
        match task.await {
            Ok((_, _, Ok((removed, _)))) => {
                self.telemetry.compactions.inc();
                self.telemetry.compacted_files.inc_by(removed);
            }
            Ok((tenant, day, Err(e))) => {
                self.telemetry.compaction_failures.inc();
                eprintln!("compacting events of tenant {tenant}, day {day}: {e:#} (tried again later)");
            }
            Err(e) => {
                self.telemetry.compaction_failures.inc();
                eprintln!("compacting events: {e}");
            }
        }
    }

    /// Commits every table with the offsets folded so far; `end_of_time` writes every call.
    async fn commit(&mut self, end_of_time: bool) -> Result<()> {
        debug_assert!(self.rebuilt());
        self.restore().await?;
        self.refold().await?;
        let parts: Vec<Partition> = self.parts.keys().copied().collect();
        for p in parts {
            self.bring_back_partials(p, &[]).await?;
        }
        self.emit(end_of_time)?;
        self.commit_appends().await?;
        let offsets = self.offsets();

        // Corrections first: if a crash stops the commits below, the restart finds them and
        // corrects the rows those commits did not reach (see `CallFold::restore`).
        let mut w = self.store.append_streaming(TABLE_CORRECTIONS, corrections_schema(), usize::MAX).await?;
        for b in self.pending_corrections.drain(..) {
            w.write(b).await?;
        }
        w.with_transactions(&offsets);
        w.commit().await?;

        let changed: Vec<i32> = self.parts.iter().filter(|(_, s)| s.changed).map(|(p, _)| *p as i32).collect();
        // Sealed files that hold rows of calls that left them: rewritten without those rows.
        let mut rewrites: Vec<[SealedRewrite; 2]> = Vec::new();
        for (p, s) in &self.parts {
            if !s.unsealed.is_empty() {
                let facts = self.rewrite_sealed_calls(TABLE_CALL_FACTS, *p, &s.unsealed).await?;
                let legs = self.rewrite_sealed_calls(TABLE_AGENT_LEGS, *p, &s.unsealed).await?;
                rewrites.push([facts, legs]);
            }
        }
        self.commit_sealable(Sealable::CallFacts, &changed, &rewrites, &offsets).await?;
        self.commit_sealable(Sealable::AgentLegs, &changed, &rewrites, &offsets).await?;

        let mut partial_rewrites = Vec::new();
        for (p, s) in &self.parts {
            if !s.loaded_partials.is_empty() {
                partial_rewrites.push(self.rewrite_sealed_partials(*p, &s.loaded_partials).await?);
            }
        }
        let dicts = &self.decoder.dicts;
        let mut partials = self
            .store
            .overwrite_partitions(TABLE_INTERVAL_PARTIALS, interval_partials_schema(), &changed, usize::MAX)
            .await?;
        for s in self.parts.values() {
            if s.changed {
                partials.write(s.fold.interval_partials(dicts, &self.params)?).await?;
            }
            for b in &s.sealed_partials {
                partials.write(b.clone()).await?;
            }
        }
        for r in &partial_rewrites {
            for b in &r.rows {
                partials.write(b.clone()).await?;
            }
            partials.remove_files(&r.files)?;
        }
        partials.with_transactions(&offsets);
        partials.commit().await?;

        for (p, s) in self.parts.iter_mut() {
            s.changed = false;
            s.sealed_facts.clear();
            s.sealed_legs.clear();
            s.unsealed.clear();
            s.sealed_partials.clear();
            s.loaded_partials.clear();
            self.summary.partitions.insert(*p);
        }
        self.dirty = false;
        self.summary.commits += 1;
        self.telemetry.commits.inc();
        Ok(())
    }
}

/// Whether each partition's records form one run (no partition's records are split by
/// another's).
fn one_run_per_partition(records: &[Delivered]) -> bool {
    let mut seen: Vec<Partition> = Vec::new();
    for (i, r) in records.iter().enumerate() {
        if i == 0 || records[i - 1].partition != r.partition {
            if seen.contains(&r.partition) {
                return false;
            }
            seen.push(r.partition);
        }
    }
    true
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

/// An SQL condition on `interval_partials` that holds for the rows of partials `keys` (and
/// others of their tenants and intervals: the caller picks the keys' rows out).
fn partial_intervals(keys: &[PartialKey]) -> String {
    let mut starts: Vec<i64> = keys.iter().map(|k| k.2).collect();
    starts.sort_unstable();
    starts.dedup();
    let starts: Vec<String> = starts.iter().map(|s| format!("to_timestamp_millis({s})")).collect();
    let tenants: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
    format!("tenant_id IN ({}) AND interval_start IN ({})", sql_list(&tenants), starts.join(", "))
}

/// `'a', 'b'`: SQL string literals (a list for IN; `NULL` when empty, which matches nothing).
fn sql_list<T: std::fmt::Display>(values: &[T]) -> String {
    if values.is_empty() {
        return "NULL".to_string();
    }
    values.iter().map(|v| format!("'{}'", v.to_string().replace('\'', "''"))).collect::<Vec<_>>().join(", ")
}

/// A SQL condition true for the rows of `calls` (by `tenant_id` and `call_id`), `FALSE`
/// for none.
fn calls_filter(calls: &[CallName]) -> String {
    let mut by_tenant: std::collections::BTreeMap<&str, Vec<&str>> = std::collections::BTreeMap::new();
    for c in calls {
        by_tenant.entry(&c.tenant).or_default().push(&c.call);
    }
    if by_tenant.is_empty() {
        return "FALSE".to_string();
    }
    let terms: Vec<String> = by_tenant
        .iter()
        .map(|(tenant, ids)| format!("(tenant_id = {} AND call_id IN ({}))", sql_list(&[tenant]), sql_list(ids)))
        .collect();
    format!("({})", terms.join(" OR "))
}

/// The (tenant, event id) of every row of an `events` batch (`None` where either is NULL).
fn tenant_event_ids(b: &RecordBatch) -> Result<impl Iterator<Item = Option<(String, String)>> + '_> {
    let (tenants, ids) = (string_column(b, "tenant_id")?, string_column(b, "event_id")?);
    Ok(tenants.iter().zip(ids.iter()).map(|(t, id)| Some((t?.to_string(), id?.to_string()))))
}

fn string_column<'b>(b: &'b RecordBatch, name: &str) -> Result<&'b arrow::array::StringArray> {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<arrow::array::StringArray>())
        .with_context(|| format!("a table read back has no text column {name}"))
}

/// The rows of `batch` whose log partition is `partition`.
fn rows_of_partition(batch: &RecordBatch, partition: i32) -> Result<RecordBatch> {
    let col = batch
        .column_by_name(PARTITION_COLUMN)
        .and_then(|c| c.as_any().downcast_ref::<arrow::array::Int32Array>())
        .context("a table read back has no partition column")?;
    let keep: BooleanArray = col.iter().map(|p| Some(p == Some(partition))).collect();
    Ok(filter_record_batch(batch, &keep)?)
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
    let log = open(&args.log, &OpenOptions::default()).await?;
    let consumer = log.subscribe(&args.group).await?;
    run_with(args, log, consumer).await
}

/// [`run`] with the log opened and the group joined.
async fn run_with(
    args: ProcessArgs,
    log: Arc<dyn EventLog>,
    mut consumer: Box<dyn LogConsumer>,
) -> Result<ProcessSummary> {
    let start = Instant::now();
    let config = Config::load(args.config.as_deref())?;
    let store = TableStore::new(&args.data)?;
    let until = if args.until_caught_up { Some(log.end_offsets().await?) } else { None };
    let telemetry = Arc::new(Telemetry::new());
    if let Some(addr) = args.metrics_listen {
        let sources = args.sources.clone();
        crate::metrics_http::serve(addr, Arc::clone(&telemetry), sources, args.listen_file.as_deref()).await?;
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
        events_out: EventsByPartition::default(),
        held_events: Vec::new(),
        pending_event_rows: 0,
        append_flush_rows: args.append_flush_rows.max(1),
        files_added: HashMap::new(),
        compact_after_files: args.compact_after_files,
        compaction: None,
        decode_chunk: args.decode_chunk.max(1),
        until,
        pending_dead: Vec::new(),
        pending_corrections: Vec::new(),
        time: args.time.clone(),
        dirty: false,
        summary: ProcessSummary::default(),
        telemetry,
        positions,
        last_live: Instant::now(),
        serving: args.metrics_listen.is_some(),
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
                let committed = proc.dirty && proc.rebuilt();
                if committed {
                    proc.commit(false).await?;
                }
                for p in &parts {
                    proc.parts.remove(p);
                    proc.telemetry.forget_partition(*p);
                }
                if !committed && proc.has_pending() {
                    // Still rebuilding: what is pending mixes rows of the partitions that
                    // leave with rows of those that stay. Drop it all, and rebuild the
                    // partitions that stay from the start, like a restart would.
                    proc.drop_pending();
                    let stay: Vec<Partition> = proc.parts.keys().copied().collect();
                    proc.parts.clear();
                    proc.assign(&mut *consumer, &stay).await?;
                }
            }
            Poll::Records(records) => {
                proc.fold(records).await.context("folding records")?;
                proc.observe(false);
            }
            Poll::Idle => proc.observe(true),
        }
        if let Some(targets) = &proc.until {
            let caught_up = !proc.parts.is_empty()
                && proc.parts.iter().all(|(p, s)| s.next >= targets.get(*p as usize).copied().unwrap_or(0));
            if caught_up {
                break;
            }
        }
        // While catching up, commits never take more than about a fifth of the time.
        if proc.pending_event_rows >= proc.append_flush_rows && proc.rebuilt() {
            // Re-folds first: they drop pending copies of events the table already holds.
            proc.restore().await?;
            proc.refold().await?;
            proc.commit_appends().await?;
        }
        let due = last_commit.elapsed() >= interval.max(commit_cost * 5);
        if proc.dirty && !args.until_caught_up && due && proc.rebuilt() {
            let t = Instant::now();
            proc.commit(false).await?;
            commit_cost = t.elapsed();
            proc.telemetry.commit_duration.observe(commit_cost.as_secs_f64());
            last_commit = Instant::now();
        }
    }
    if proc.rebuilt() && (proc.dirty || proc.summary.commits == 0 || args.until_caught_up) {
        // At the end of the log (`--until-caught-up`) every open call is written.
        proc.commit(args.until_caught_up).await?;
    }
    proc.finish_compaction(true).await;
    proc.summary.seconds = start.elapsed().as_secs_f64();
    let s = &proc.summary;
    eprintln!(
        "processed {} records from {} ({} dead letters, {} late events, {} revisions, {} corrections) in {:.2} s \
         ({:.0} records/s), {} commit(s) of partitions {:?} to {}",
        s.records,
        log.url(),
        s.dead_letters,
        s.late_events,
        s.revisions,
        s.corrections,
        s.seconds,
        s.records as f64 / s.seconds.max(1e-9),
        s.commits,
        s.partitions,
        args.data
    );
    Ok(std::mem::take(&mut proc.summary))
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, Write};
    use std::path::Path;
    use std::sync::atomic::{AtomicBool, Ordering};

    use ccstream_eventlog::Offset;
    use ccstream_ingest::file::records::LogRecords;
    use clap::Parser;

    use super::*;
    use crate::ingest::{ingest_files, open_or_create};

    #[test]
    fn a_poll_is_folded_in_place_only_when_each_partition_is_one_run() {
        let rec = |partition| Delivered {
            partition,
            offset: 0,
            timestamp_ms: 0,
            key: Default::default(),
            value: Default::default(),
        };
        let poll = |parts: &[Partition]| parts.iter().map(|&p| rec(p)).collect::<Vec<_>>();
        assert!(one_run_per_partition(&[]));
        assert!(one_run_per_partition(&poll(&[2, 2, 0, 0, 0, 3])));
        assert!(!one_run_per_partition(&poll(&[2, 0, 2])));
        assert!(!one_run_per_partition(&poll(&[1, 1, 3, 3, 1])));
    }

    /// A consumer that, once some partition has delivered records past `first_ends` (rows
    /// that are pending, not in any table yet) while another is still below them (still
    /// rebuilding), takes that other partition away and hands it back, as a rebalance would.
    #[derive(Debug)]
    struct RevokeWhileRebuilding {
        inner: Box<dyn LogConsumer>,
        first_ends: Vec<Offset>,
        next: BTreeMap<Partition, Offset>,
        script: Vec<Poll>,
        fired: Arc<AtomicBool>,
    }

    #[async_trait::async_trait]
    impl LogConsumer for RevokeWhileRebuilding {
        async fn poll(&mut self, max_records: usize, timeout: Duration) -> ccstream_eventlog::Result<Poll> {
            if !self.script.is_empty() {
                return Ok(self.script.remove(0));
            }
            let polled = self.inner.poll(max_records, timeout).await?;
            if let (Poll::Records(records), false) = (&polled, self.fired.load(Ordering::SeqCst)) {
                for r in records {
                    self.next.insert(r.partition, r.offset + 1);
                }
                let end = |p: Partition| self.first_ends[p as usize];
                let past = self.next.iter().any(|(&p, &n)| n > end(p));
                let behind = (0..self.first_ends.len() as Partition)
                    .find(|&q| end(q) > 0 && self.next.get(&q).copied().unwrap_or(0) < end(q));
                if let (true, Some(q)) = (past, behind) {
                    self.script = vec![Poll::Revoked(vec![q]), Poll::Assigned(vec![q])];
                    self.fired.store(true, Ordering::SeqCst);
                }
            }
            Ok(polled)
        }

        async fn seek(&mut self, partition: Partition, offset: Offset) -> ccstream_eventlog::Result<()> {
            self.next.insert(partition, offset);
            self.inner.seek(partition, offset).await
        }

        async fn commit(&mut self, positions: &[(Partition, Offset)]) -> ccstream_eventlog::Result<()> {
            self.inner.commit(positions).await
        }

        fn assignment(&self) -> Vec<Partition> {
            self.inner.assignment()
        }
    }

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: ProcessArgs,
    }

    fn args(log: &str, data: &Path) -> ProcessArgs {
        let data = data.to_str().expect("a UTF-8 temp path");
        // Small polls: the rebuild spans many of them.
        Cli::parse_from(["process", "--log", log, "--data", data, "--until-caught-up", "--poll-records", "64"]).args
    }

    /// The fixture's lines split in two files, in order.
    fn halves(dir: &Path) -> (PathBuf, PathBuf) {
        let fixture = Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/oracle/events.jsonl.gz");
        let gz = flate2::read::GzDecoder::new(std::fs::File::open(fixture).unwrap());
        let lines: Vec<String> = std::io::BufReader::new(gz).lines().map(Result::unwrap).collect();
        let (a, b) = (dir.join("a.jsonl"), dir.join("b.jsonl"));
        for (path, part) in [(&a, &lines[..lines.len() / 2]), (&b, &lines[lines.len() / 2..])] {
            let mut f = std::fs::File::create(path).unwrap();
            for l in part {
                writeln!(f, "{l}").unwrap();
            }
        }
        (a, b)
    }

    /// What a reader sees: every derived row's values (not when or in which revision they
    /// were written), and the `events` rows with their distinct ids.
    async fn tables(data: &Path) -> Vec<String> {
        let engine = ccstream_query::QueryEngine::open(data.to_str().unwrap(), 1).await.unwrap();
        let skip = format!("revision, computed_at, \"{PARTITION_COLUMN}\", \"{SEALED_COLUMN}\"");
        let queries = [
            format!("SELECT * EXCLUDE ({skip}) FROM call_facts ORDER BY call_id"),
            format!("SELECT * EXCLUDE ({skip}) FROM agent_legs ORDER BY call_id, agent_id"),
            "SELECT * FROM interval_metrics ORDER BY 1, 2, 3".to_string(),
            "SELECT * FROM agent_day_metrics ORDER BY 1, 2, 3".to_string(),
            "SELECT count(*), count(DISTINCT event_id) FROM events".to_string(),
        ];
        let mut out = Vec::new();
        for q in queries {
            let (_, batches) = engine.query(&q).await.unwrap();
            out.push(arrow::util::pretty::pretty_format_batches(&batches).unwrap().to_string());
        }
        out
    }

    /// Two rows of a pretty-printed table are the same: equal cells, or floats equal to 1e-9
    /// relative (averages summed in another file order differ in the last digit).
    fn same_row(a: &str, b: &str) -> bool {
        let close = |x: &str, y: &str| match (x.parse::<f64>(), y.parse::<f64>()) {
            (Ok(x), Ok(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()),
            _ => false,
        };
        let (ca, cb): (Vec<&str>, Vec<&str>) =
            (a.split('|').map(str::trim).collect(), b.split('|').map(str::trim).collect());
        ca.len() == cb.len() && ca.iter().zip(&cb).all(|(x, y)| x == y || close(x, y))
    }

    /// A rebalance that takes a partition away while the processor is still rebuilding
    /// (pending rows mix partitions that leave with partitions that stay) and hands it
    /// back: the tables end as one uninterrupted pass makes them, with no event stored twice.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_partition_revoked_while_rebuilding_ends_in_the_same_tables() {
        let dir = tempfile::tempdir().unwrap();
        let (first, second) = halves(dir.path());
        let url = format!("file://{}", dir.path().join("log").display());
        let log = open_or_create(&url, Some(4)).await.unwrap();
        let ingest = |path: PathBuf| {
            let log = Arc::clone(&log);
            async move { ingest_files(&*log, &[path], 4096, "never", LogRecords::new(1)).await.unwrap() }
        };
        ingest(first).await;
        let first_ends = log.end_offsets().await.unwrap();
        let (rebalanced, control) = (dir.path().join("rebalanced"), dir.path().join("control"));
        run(args(&url, &rebalanced)).await.unwrap();

        ingest(second).await;
        let fired = Arc::new(AtomicBool::new(false));
        let consumer = RevokeWhileRebuilding {
            inner: log.subscribe("ccstream").await.unwrap(),
            first_ends,
            next: BTreeMap::new(),
            script: Vec::new(),
            fired: Arc::clone(&fired),
        };
        run_with(args(&url, &rebalanced), Arc::clone(&log), Box::new(consumer)).await.unwrap();
        assert!(fired.load(Ordering::SeqCst), "the rebalance never happened during the rebuild");

        run(args(&url, &control)).await.unwrap();
        let (got, want) = (tables(&rebalanced).await, tables(&control).await);
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.lines().count(), w.lines().count(), "row counts differ:\n{g}\n---- one pass:\n{w}");
            for (a, b) in g.lines().zip(w.lines()) {
                assert!(same_row(a, b), "rows differ:\nrebalanced: {a}\none pass:   {b}");
            }
        }
    }
}
