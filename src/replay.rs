//! `ccstream replay`: recompute every table from canonical events files.
//!
//! Pass 1 reads only the columns the fold needs, decodes, folds, and writes `call_facts`,
//! `agent_legs`, `interval_partials` and `dead_letters`. Complete calls are written and
//! forgotten as the input goes, once their latest event is `--settle-after-ms` behind their
//! tenant's latest event: memory holds the recent and open calls, not the whole input. If
//! an event came for a call already written (input far out of time order), the pass is
//! given up at its end, its files deleted, and the input folded again holding every call:
//! exact in any order, and a single pass on input in time order. Pass 2 (unless
//! `--events-table false`) reads every column again and writes the first copy of each
//! valid event to `events`. Each table is replaced in one Delta commit, so running replay
//! again rebuilds the same tables, and a failed run leaves the previous ones readable.
//!
//! With `--threads 2` or more, reading and decoding files runs on its own thread, feeding
//! the fold through a bounded channel, and `call_facts` and `agent_legs` are each encoded
//! by a task of their own while the next slices are built. With one thread, everything runs
//! in turn on it.

use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use arrow::array::{
    ArrayRef, AsArray, BinaryArray, BooleanArray, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use arrow::compute::take_record_batch;
use arrow::datatypes::Date32Type;
use ccstream_ingest::file::records::source_name;
use ccstream_ingest::file::{
    discover, map_parquet, parquet_rows, read_parquet_rows, Chunk, FileReader, Format, InputFile, ReadOptions,
};
use ccstream_processor::batch::{group_rows, to_events_schema, DecodedBatch, Decoder, JsonDecoder, FOLD_COLUMNS};
use ccstream_processor::fold_parquet::{FoldParquet, ParquetBatch};
use ccstream_processor::kpi::{CallFold, Horizon, Params};
use ccstream_processor::sink::{Overwrite, TableStore};
use ccstream_schemas::{
    agent_legs_schema, call_facts_schema, corrections_schema, dead_letters_schema, events_schema, TABLE_AGENT_LEGS,
    TABLE_CALL_FACTS, TABLE_CORRECTIONS, TABLE_DEAD_LETTERS, TABLE_EVENTS, TABLE_INTERVAL_PARTIALS,
};
use clap::{ArgAction, Args};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::config::Config;

/// Raw input kept in a dead letter, at most.
const MAX_RAW_BYTES: usize = 64 * 1024;

#[derive(Debug, Args)]
pub(crate) struct ReplayArgs {
    /// Canonical events files or directories (JSONL, .jsonl.gz, Parquet)
    #[arg(long = "input", required = true, num_args = 1.., value_delimiter = ',', env = "CCSTREAM_INPUT")]
    pub(crate) input: Vec<PathBuf>,
    /// Data directory (local path or URL) that holds the tables
    #[arg(long, env = "CCSTREAM_DATA")]
    pub(crate) data: String,
    /// Pipeline config file (TOML): service-level and quality parameters
    #[arg(long, env = "CCSTREAM_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// Threads: 1 folds on the calling thread; 2 or more also read and decode on another
    #[arg(long, env = "CCSTREAM_THREADS", default_value_t = 2)]
    pub(crate) threads: usize,
    /// Also write the deduplicated input to the `events` table (a second pass)
    #[arg(long, env = "CCSTREAM_EVENTS_TABLE", default_value_t = true, action = ArgAction::Set)]
    pub(crate) events_table: bool,
    /// Progress bar on stderr: auto (when it is a terminal), always or never
    #[arg(long, env = "CCSTREAM_PROGRESS", default_value = "auto", value_parser = ["auto", "always", "never"])]
    pub(crate) progress: String,
    /// Write and forget a call once its latest event is this far (ms) behind its tenant's
    /// latest event, so memory holds recent calls only; 0 holds every call to the end
    #[arg(long, env = "CCSTREAM_SETTLE_AFTER_MS", default_value_t = 3_600_000, value_parser = clap::value_parser!(i64).range(0..))]
    pub(crate) settle_after_ms: i64,
    /// Calls written and forgotten at a time, at least (settling compacts the state)
    #[arg(long, env = "CCSTREAM_SETTLE_BATCH", default_value_t = 16_384, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) settle_batch: u64,
    /// Read Parquet files laid out the common way (flat; PLAIN or dictionary pages; Snappy,
    /// zstd or no compression) page by page straight into the fold's columns; false reads
    /// every file with the Arrow reader (the same tables, slower)
    #[arg(long, env = "CCSTREAM_READ_PAGES", default_value_t = true, action = ArgAction::Set)]
    pub(crate) read_pages: bool,
    /// Print the summary as one JSON object instead of text
    #[arg(long, env = "CCSTREAM_SUMMARY_JSON", default_value_t = false)]
    pub(crate) summary_json: bool,
}

/// What a replay did; printed at the end.
#[derive(Debug, Default, serde::Serialize)]
pub(crate) struct Summary {
    pub(crate) files: usize,
    pub(crate) rows_read: u64,
    pub(crate) dead_letters: u64,
    pub(crate) duplicate_copies: u64,
    pub(crate) events: u64,
    pub(crate) calls: u64,
    /// Calls written and forgotten before the end of the input (`--settle-after-ms`).
    pub(crate) settled_calls: u64,
    /// Whether the input had to be folded again holding every call (an event came for a
    /// call already settled).
    pub(crate) folded_again: bool,
    pub(crate) call_facts_rows: u64,
    pub(crate) agent_legs_rows: u64,
    pub(crate) interval_partials_rows: u64,
    pub(crate) events_rows: u64,
    /// Reading and decoding files (pass 1), seconds of thread time.
    pub(crate) read_s: f64,
    /// Interning and folding, seconds.
    pub(crate) fold_s: f64,
    /// Building the derived tables' record batches from the fold's state, seconds.
    pub(crate) output_s: f64,
    /// Encoding and committing the derived tables, seconds.
    pub(crate) write_s: f64,
    /// Pass 1 from start to committed derived tables, wall seconds.
    pub(crate) tables_s: f64,
    /// Pass 2 (the `events` table), wall seconds.
    pub(crate) events_table_s: f64,
    pub(crate) total_s: f64,
    /// Valid input events per second of `tables_s`.
    pub(crate) events_per_s: f64,
}

/// A dead letter, before it becomes a row.
#[derive(Debug)]
pub(crate) struct DeadLetter {
    pub(crate) source: String,
    pub(crate) origin: String,
    pub(crate) line: Option<i64>,
    pub(crate) reason: String,
    pub(crate) raw: Vec<u8>,
}

impl DeadLetter {
    fn new(file: &InputFile, line: Option<u64>, reason: String, raw: &[u8]) -> Self {
        DeadLetter {
            source: source_name(file.format).to_string(),
            origin: file.path.display().to_string(),
            line: line.map(|l| l as i64),
            reason,
            raw: raw.to_vec(),
        }
    }
}

/// One framed piece of input: its rows plus what is needed to trace them.
#[derive(Debug)]
struct Framed {
    file: usize,
    rows: Rows,
    /// 1-based line or row number of each row.
    lines: Vec<u64>,
    rejects: Vec<DeadLetter>,
    /// Input bytes this piece stands for (progress).
    bytes: u64,
    read_time: Duration,
}

/// The rows of a framed piece.
#[derive(Debug)]
enum Rows {
    /// A record batch: JSON lines decoded, or Parquet read by the Arrow reader.
    Batch(RecordBatch),
    /// Parquet read page by page straight into the fold's columns ([`FoldParquet`]).
    Pages(Box<ParquetBatch>),
}

impl Rows {
    fn len(&self) -> usize {
        match self {
            Rows::Batch(b) => b.num_rows(),
            Rows::Pages(p) => p.len(),
        }
    }

    /// The record batch, for the pass that reads every column (never read by pages).
    fn batch(&self) -> Result<&RecordBatch> {
        match self {
            Rows::Batch(b) => Ok(b),
            Rows::Pages(_) => anyhow::bail!("rows read by pages where a record batch was expected"),
        }
    }
}

/// An open input file.
#[derive(Debug)]
enum Reader {
    General(FileReader),
    Pages(Box<FoldParquet>),
}

/// What a reader gave.
enum Piece {
    Lines { first_line: u64, data: Vec<u8> },
    Rows { first_row: u64, rows: Rows },
}

/// Reads files into [`Framed`] pieces (stage A).
struct Framer {
    files: Arc<Vec<InputFile>>,
    opts: ReadOptions,
    /// Read Parquet files laid out the common way page by page, straight into the fold's
    /// columns (the fold's pass: `opts` name its columns).
    pages: bool,
    json: JsonDecoder,
    next_file: usize,
    current: Option<(Reader, u64)>,
}

impl Framer {
    fn new(files: Arc<Vec<InputFile>>, opts: ReadOptions, pages: bool, now_ms: i64) -> Self {
        Framer { files, opts, pages, json: JsonDecoder::new("file.jsonl", now_ms), next_file: 0, current: None }
    }

    /// Opens `f`: by pages when it can (a Parquet file the page reader declines, e.g. one
    /// with delta-encoded or gzip pages, is read by the Arrow reader instead).
    fn open(&self, f: &InputFile) -> Result<Reader> {
        if self.pages && f.format == Format::Parquet {
            if let Some(r) = map_parquet(f)?.and_then(|bytes| FoldParquet::open(bytes).ok()) {
                return Ok(Reader::Pages(Box::new(r)));
            }
        }
        Ok(Reader::General(FileReader::open(f, &self.opts)?))
    }

    /// Takes back a page-read batch's buffers for the next batch.
    fn recycle(&mut self, rows: Rows) {
        if let (Some((Reader::Pages(r), _)), Rows::Pages(p)) = (&mut self.current, rows) {
            r.recycle(*p);
        }
    }

    fn next(&mut self) -> Result<Option<Framed>> {
        loop {
            let start = Instant::now();
            if self.current.is_none() {
                if self.next_file == self.files.len() {
                    return Ok(None);
                }
                let reader = self.open(&self.files[self.next_file])?;
                self.current = Some((reader, 0));
                self.next_file += 1;
            }
            let file_idx = self.next_file - 1;
            let file = &self.files[file_idx];
            let (reader, done_bytes) = self.current.as_mut().expect("set above");
            let (piece, total_rows) = match reader {
                Reader::General(r) => (
                    r.next_chunk()?.map(|c| match c {
                        Chunk::Lines { first_line, data } => Piece::Lines { first_line, data },
                        Chunk::Batch { first_row, batch } => Piece::Rows { first_row, rows: Rows::Batch(batch) },
                    }),
                    r.total_rows(),
                ),
                Reader::Pages(r) => (
                    r.next_batch(self.opts.batch_rows)?
                        .map(|p| Piece::Rows { first_row: p.first_row, rows: Rows::Pages(Box::new(p)) }),
                    Some(r.total_rows()),
                ),
            };
            let Some(piece) = piece else {
                let rest = file.bytes.saturating_sub(*done_bytes);
                self.current = None;
                if rest > 0 {
                    return Ok(Some(Framed {
                        file: file_idx,
                        rows: Rows::Batch(RecordBatch::new_empty(Arc::new(arrow::datatypes::Schema::empty()))),
                        lines: Vec::new(),
                        rejects: Vec::new(),
                        bytes: rest,
                        read_time: start.elapsed(),
                    }));
                }
                continue;
            };
            let framed = match piece {
                Piece::Lines { first_line, data } => {
                    let mut lines = Vec::new();
                    let mut rejects = Vec::new();
                    let mut numbers = Vec::new();
                    for (i, raw) in data.split(|&b| b == b'\n').enumerate() {
                        match std::str::from_utf8(raw) {
                            Ok(s) => {
                                lines.push(s);
                                numbers.push(first_line + i as u64);
                            }
                            Err(e) => rejects.push(DeadLetter::new(
                                file,
                                Some(first_line + i as u64),
                                format!("not UTF-8: {e}"),
                                &raw[..raw.len().min(MAX_RAW_BYTES)],
                            )),
                        }
                    }
                    let (batch, rows, rejected) = self.json.decode(&lines)?;
                    for r in rejected {
                        let raw = lines[r.line].as_bytes();
                        rejects.push(DeadLetter::new(
                            file,
                            Some(numbers[r.line]),
                            r.reason,
                            &raw[..raw.len().min(MAX_RAW_BYTES)],
                        ));
                    }
                    let bytes = if matches!(file.format, Format::Jsonl { gzip: true }) { 0 } else { data.len() as u64 };
                    *done_bytes += bytes;
                    Framed {
                        file: file_idx,
                        lines: rows.iter().map(|&r| numbers[r as usize]).collect(),
                        rows: Rows::Batch(batch),
                        rejects,
                        bytes,
                        read_time: Duration::ZERO,
                    }
                }
                Piece::Rows { first_row, rows } => {
                    let n = rows.len() as u64;
                    let bytes = match total_rows {
                        Some(total) if total > 0 => file.bytes * n / total,
                        _ => 0,
                    };
                    *done_bytes += bytes;
                    Framed {
                        file: file_idx,
                        lines: (first_row + 1..=first_row + n).collect(),
                        rows,
                        rejects: Vec::new(),
                        bytes,
                        read_time: Duration::ZERO,
                    }
                }
            };
            return Ok(Some(Framed { read_time: start.elapsed(), ..framed }));
        }
    }
}

/// Stage A on its own thread when `threads > 1`, inline otherwise.
enum Source {
    Inline(Box<Framer>),
    Thread(Receiver<Result<Framed>>, Option<std::thread::JoinHandle<()>>),
}

impl Source {
    fn new(framer: Framer, threads: usize) -> Self {
        if threads <= 1 {
            return Source::Inline(Box::new(framer));
        }
        let (tx, rx) = sync_channel(4);
        let handle = std::thread::Builder::new()
            .name("ccstream-read".into())
            .spawn(move || {
                let mut framer = framer;
                loop {
                    let item = framer.next();
                    let stop = !matches!(item, Ok(Some(_)));
                    if let Some(item) = item.transpose() {
                        if tx.send(item).is_err() {
                            return;
                        }
                    }
                    if stop {
                        return;
                    }
                }
            })
            .expect("spawning a thread");
        Source::Thread(rx, Some(handle))
    }

    /// Gives a piece's rows back to the reader when it runs inline (their buffers are
    /// reused); a reader thread has moved on.
    fn recycle(&mut self, rows: Rows) {
        if let Source::Inline(f) = self {
            f.recycle(rows);
        }
    }

    fn next(&mut self) -> Result<Option<Framed>> {
        match self {
            Source::Inline(f) => f.next(),
            Source::Thread(rx, handle) => match rx.recv() {
                Ok(item) => item.map(Some),
                Err(_) => {
                    if let Some(h) = handle.take() {
                        h.join().map_err(|_| anyhow::anyhow!("the reader thread panicked"))?;
                    }
                    Ok(None)
                }
            },
        }
    }
}

pub(crate) fn progress_bar(mode: &str, total: u64, label: &str) -> ProgressBar {
    let target = match mode {
        "always" => ProgressDrawTarget::stderr(),
        "never" => ProgressDrawTarget::hidden(),
        _ if std::io::IsTerminal::is_terminal(&std::io::stderr()) => ProgressDrawTarget::stderr(),
        _ => ProgressDrawTarget::hidden(),
    };
    let bar = ProgressBar::with_draw_target(Some(total), target);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>8} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} {msg}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(label.to_string());
    bar
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

pub(crate) async fn run(args: ReplayArgs) -> Result<Summary> {
    let start = Instant::now();
    let config = Config::load(args.config.as_deref())?;
    let params = config.params()?;
    let files = Arc::new(discover(&args.input)?);
    let total_bytes: u64 = files.iter().map(|f| f.bytes).sum();
    let store = TableStore::new(&args.data)?;
    let now = now_ms();
    let mut summary = Summary { files: files.len(), ..Summary::default() };

    let ctx = Pass { args: &args, files: &files, store: &store, params: &params, now, total_bytes, start };
    let settle = (args.settle_after_ms > 0).then_some(args.settle_after_ms);
    let keep = match ctx.derived_tables(settle, &mut summary).await? {
        Some(keep) => keep,
        None => {
            eprintln!(
                "replay: an event came for a call written {} ms or more before its tenant's latest \
                 event (input out of time order); folding the input again, holding every call",
                args.settle_after_ms
            );
            summary = Summary { files: files.len(), folded_again: true, ..Summary::default() };
            ctx.derived_tables(None, &mut summary)
                .await?
                .ok_or_else(|| anyhow::anyhow!("a pass that holds every call finishes"))?
        }
    };

    // ---- pass 2: the events table
    if args.events_table {
        let t = Instant::now();
        summary.events_rows = write_events(&args, &files, &store, &keep, now, total_bytes).await?;
        summary.events_table_s = t.elapsed().as_secs_f64();
    }
    summary.total_s = start.elapsed().as_secs_f64();
    print_summary(&summary, &args);
    Ok(summary)
}

/// What a pass over the input works with.
struct Pass<'a> {
    args: &'a ReplayArgs,
    files: &'a Arc<Vec<InputFile>>,
    store: &'a TableStore,
    params: &'a Params,
    now: i64,
    total_bytes: u64,
    start: Instant,
}

impl Pass<'_> {
    /// Pass 1: reads, decodes and folds the input and commits the derived tables. With
    /// `settle` (ms), complete calls that far behind their tenant's latest event are written
    /// and forgotten as the input goes ([`CallFold::settle`]); if an event came for one of
    /// them after all, the files written are deleted, nothing is committed, and `None` says
    /// to fold again without settling. Returns, per input row, whether it was the first copy
    /// of a valid event (for the `events` table; empty without it).
    async fn derived_tables(&self, settle: Option<i64>, summary: &mut Summary) -> Result<Option<Vec<bool>>> {
        let (args, files, store, params, now) = (self.args, self.files, self.store, self.params, self.now);
        let opts = ReadOptions {
            columns: Some(FOLD_COLUMNS.iter().map(|c| c.to_string()).collect()),
            fold_hints: true,
            ..ReadOptions::default()
        };
        let bar = progress_bar(&args.progress, self.total_bytes, "fold");
        let mut source = Source::new(Framer::new(files.clone(), opts.clone(), args.read_pages, now), args.threads);
        let mut decoder = Decoder::new();
        let mut decoded = DecodedBatch::default();
        let mut remap = Vec::new();
        let mut fold = CallFold::new(0);
        // Size the state from what the input says of itself: Parquet footers give row
        // counts; JSON lines are about 250 bytes. Settling holds an hour or so of calls,
        // and a key hash of each call settled.
        let rows_hint = files.iter().map(|f| parquet_rows(f).unwrap_or(f.bytes / 250)).sum::<u64>() as usize;
        match settle {
            Some(_) => fold.begin_settling(rows_hint),
            None => fold.reserve_for_events(rows_hint),
        }
        // Each table is written in slices and encoded as it is built (by a task of its own
        // when there are threads for it): no table-sized arrays, ever. A failed build or
        // write returns before the commits: the writers are dropped, nothing is committed,
        // and the previous tables stay as they were.
        let mut facts_out = TableWriter::new(
            store.overwrite_streaming(TABLE_CALL_FACTS, call_facts_schema(), FILE_ROWS).await?,
            args.threads,
        );
        let mut legs_out = TableWriter::new(
            store.overwrite_streaming(TABLE_AGENT_LEGS, agent_legs_schema(), FILE_ROWS).await?,
            args.threads,
        );
        let mut dead = Vec::new();
        let mut keep: Vec<bool> = Vec::new();
        let (mut read_time, mut fold_time) = (Duration::ZERO, Duration::ZERO);
        let (mut output_time, mut write_time) = (Duration::ZERO, Duration::ZERO);
        let mut settled = 0u64;
        while let Some(mut framed) = source.next()? {
            read_time += framed.read_time;
            bar.inc(framed.bytes);
            summary.rows_read += framed.rows.len() as u64 + framed.rejects.len() as u64;
            dead.extend(framed.rejects);
            if framed.rows.len() == 0 {
                continue;
            }
            let t = Instant::now();
            let decoded = match &mut framed.rows {
                Rows::Batch(batch) => {
                    decoder.decode(batch, &mut decoded)?;
                    &mut decoded
                }
                Rows::Pages(p) => p.adopt(&mut decoder.dicts, &mut remap),
            };
            fold.update(decoded, &decoder.dicts);
            if args.events_table {
                keep.extend_from_slice(fold.first_copy());
            }
            let invalid = std::mem::take(&mut decoded.invalid);
            fold_time += t.elapsed();
            let file = &files[framed.file];
            let raws: Vec<Vec<u8>> = match &framed.rows {
                Rows::Batch(batch) => invalid.iter().map(|&(r, _)| row_json(batch, r)).collect(),
                // The rows again, read the general way, for their text (rare: invalid rows).
                Rows::Pages(p) if !invalid.is_empty() => {
                    let rows: Vec<u64> = invalid.iter().map(|&(r, _)| p.first_row + r as u64).collect();
                    let batch = read_parquet_rows(file, &opts, &rows)?;
                    (0..batch.num_rows()).map(|r| row_json(&batch, r)).collect()
                }
                Rows::Pages(_) => Vec::new(),
            };
            for ((r, reason), raw) in invalid.into_iter().zip(raws) {
                dead.push(DeadLetter::new(file, Some(framed.lines[r]), reason, &raw));
            }
            source.recycle(framed.rows);
            let Some(after_ms) = settle else { continue };
            let t = Instant::now();
            let out = fold.settle(&decoder.dicts, params, now, after_ms, args.settle_batch as usize, SLICE_ROWS)?;
            output_time += t.elapsed();
            if let Some(out) = out {
                let t = Instant::now();
                settled += out.calls;
                for b in out.call_facts {
                    facts_out.write_counted(b, &mut summary.call_facts_rows).await?;
                }
                for b in out.agent_legs {
                    legs_out.write_counted(b, &mut summary.agent_legs_rows).await?;
                }
                write_time += t.elapsed();
            }
        }
        bar.finish_and_clear();
        if fold.settled_call_seen_again() {
            facts_out.abandon().await?;
            legs_out.abandon().await?;
            return Ok(None);
        }
        let stats = fold.stats();
        summary.dead_letters = dead.len() as u64;
        summary.duplicate_copies = stats.duplicates;
        summary.events = stats.call_events + stats.other_events;
        summary.calls = settled + fold.calls() as u64;
        summary.settled_calls = settled;

        let t = Instant::now();
        // The end of time: every call left is written, as revision 1.
        fold.emit(&decoder.dicts, params, now, Horizon::END)?;
        output_time += t.elapsed();
        let dicts = &decoder.dicts;
        let mut facts = fold.call_facts_slices(dicts, params, SLICE_ROWS);
        let mut legs = fold.agent_legs_slices(dicts, params, SLICE_ROWS);
        loop {
            let built = Instant::now();
            let (f, l) = (facts.next().transpose()?, legs.next().transpose()?);
            output_time += built.elapsed();
            if f.is_none() && l.is_none() {
                break;
            }
            let t = Instant::now();
            if let Some(f) = f {
                facts_out.write_counted(f, &mut summary.call_facts_rows).await?;
            }
            if let Some(l) = l {
                legs_out.write_counted(l, &mut summary.agent_legs_rows).await?;
            }
            write_time += t.elapsed();
        }
        // The slices borrow the fold, which is forgotten below.
        drop((facts, legs));
        let t = Instant::now();
        facts_out.commit().await?;
        legs_out.commit().await?;
        write_time += t.elapsed();
        let built = Instant::now();
        let partials = fold.interval_partials(dicts, params)?;
        let dead_batch = dead_letters_batch(&dead, now)?;
        output_time += built.elapsed();
        summary.interval_partials_rows = partials.num_rows() as u64;
        // A replay is revision 1 of everything: corrections of earlier runs go.
        let t = Instant::now();
        let (c, d, e) = tokio::join!(
            store.replace(TABLE_INTERVAL_PARTIALS, partials, SLICE_ROWS),
            store.replace(TABLE_DEAD_LETTERS, dead_batch, SLICE_ROWS),
            store.replace(TABLE_CORRECTIONS, RecordBatch::new_empty(corrections_schema()), SLICE_ROWS),
        );
        c?;
        d?;
        e?;
        write_time += t.elapsed();
        summary.read_s = read_time.as_secs_f64();
        summary.fold_s = fold_time.as_secs_f64();
        summary.output_s = output_time.as_secs_f64();
        summary.write_s = write_time.as_secs_f64();
        summary.tables_s = self.start.elapsed().as_secs_f64();
        summary.events_per_s = summary.events as f64 / summary.tables_s.max(1e-9);
        // Returning the fold's memory page by page costs more than the process exit does.
        std::mem::forget(fold);
        std::mem::forget(decoder);
        Ok(Some(keep))
    }
}

/// Rows per slice of a derived table handed to its writer.
const SLICE_ROWS: usize = 64 * 1024;
/// Rows per file of `call_facts` and `agent_legs`.
const FILE_ROWS: usize = 256 * 1024;

async fn write_events(
    args: &ReplayArgs,
    files: &Arc<Vec<InputFile>>,
    store: &TableStore,
    keep: &[bool],
    now: i64,
    total_bytes: u64,
) -> Result<u64> {
    let bar = progress_bar(&args.progress, total_bytes, "events");
    let mut source = Source::new(Framer::new(files.clone(), ReadOptions::default(), false, now), args.threads);
    let mut offset = 0usize;
    let mut sink = store.overwrite_streaming(TABLE_EVENTS, events_schema(), 1 << 20).await?;
    while let Some(framed) = source.next()? {
        bar.inc(framed.bytes);
        let n = framed.rows.len();
        if n == 0 {
            continue;
        }
        anyhow::ensure!(offset + n <= keep.len(), "input changed between the two passes");
        let kept = &keep[offset..offset + n];
        offset += n;
        // First copies only, grouped by the table's partitions (tenant and day): each
        // group goes to its partition's file as one run, with no split per batch.
        let batch = to_events_schema(framed.rows.batch()?, source_name(files[framed.file].format), now)?;
        let tenants = batch.column_by_name("tenant_id").map(|c| c.as_string::<i32>());
        let days = batch.column_by_name("day").map(|c| c.as_primitive::<Date32Type>());
        let (Some(tenants), Some(days)) = (tenants, days) else {
            anyhow::bail!("the events schema has tenant_id and day");
        };
        let (indices, runs) = group_rows((0..n).map(|r| kept[r].then(|| (tenants.value(r), days.value(r)))));
        if !runs.is_empty() {
            sink.write_runs(take_record_batch(&batch, &indices)?, &runs).await?;
        }
    }
    bar.finish_and_clear();
    anyhow::ensure!(offset == keep.len(), "input changed between the two passes ({} rows, then {offset})", keep.len());
    let (rows, _version) = sink.commit().await?;
    Ok(rows)
}

/// Where a table's slices go: encoded on this thread (one thread: a slice is encoded and
/// its memory reused before the next is built), or handed to a task of their own that
/// encodes while the next slices are built. Nothing is committed unless
/// [`TableWriter::commit`] is called: a writer dropped after a failure leaves the table as
/// it was, and [`TableWriter::abandon`] also deletes the files it stored.
enum TableWriter {
    Inline(Box<Overwrite>),
    /// What to do next; the task's outcome.
    Task(tokio::sync::mpsc::Sender<Next>, Option<tokio::task::JoinHandle<Result<()>>>),
}

/// A writer task's next step.
enum Next {
    Write(RecordBatch),
    Commit,
    Abandon,
}

impl TableWriter {
    fn new(sink: Overwrite, threads: usize) -> Self {
        if threads <= 1 {
            return TableWriter::Inline(Box::new(sink));
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Next>(2);
        let done = tokio::spawn(async move {
            let mut sink = sink;
            while let Some(item) = rx.recv().await {
                match item {
                    Next::Write(batch) => sink.write(batch).await?,
                    Next::Commit => {
                        sink.commit().await?;
                        return Ok(());
                    }
                    Next::Abandon => {
                        sink.abandon().await?;
                        return Ok(());
                    }
                }
            }
            // The sender went away without a word: the run failed.
            Ok(())
        });
        TableWriter::Task(tx, Some(done))
    }

    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        match self {
            TableWriter::Inline(sink) => Ok(sink.write(batch).await?),
            TableWriter::Task(tx, done) => {
                if tx.send(Next::Write(batch)).await.is_ok() {
                    return Ok(());
                }
                // The task ended early: its error says why.
                Err(Self::ended(done.take()).await)
            }
        }
    }

    /// Writes `batch`, adding its rows to `rows`.
    async fn write_counted(&mut self, batch: RecordBatch, rows: &mut u64) -> Result<()> {
        *rows += batch.num_rows() as u64;
        self.write(batch).await
    }

    /// Commits what was written.
    async fn commit(self) -> Result<()> {
        match self {
            TableWriter::Inline(sink) => {
                sink.commit().await?;
                Ok(())
            }
            TableWriter::Task(tx, done) => Self::finish(tx, done, Next::Commit).await,
        }
    }

    /// Gives the write up, deleting the files it stored.
    async fn abandon(self) -> Result<()> {
        match self {
            TableWriter::Inline(sink) => Ok(sink.abandon().await?),
            TableWriter::Task(tx, done) => Self::finish(tx, done, Next::Abandon).await,
        }
    }

    async fn finish(
        tx: tokio::sync::mpsc::Sender<Next>,
        mut done: Option<tokio::task::JoinHandle<Result<()>>>,
        last: Next,
    ) -> Result<()> {
        if tx.send(last).await.is_err() {
            return Err(Self::ended(done.take()).await);
        }
        match done.take() {
            Some(task) => task.await?,
            None => Err(anyhow::anyhow!("the table writer had already stopped")),
        }
    }

    /// Why a writer task stopped before it was told to finish.
    async fn ended(done: Option<tokio::task::JoinHandle<Result<()>>>) -> anyhow::Error {
        match done {
            Some(task) => match task.await {
                Ok(Err(e)) => e,
                Ok(Ok(())) => anyhow::anyhow!("the table writer stopped early"),
                Err(e) => e.into(),
            },
            None => anyhow::anyhow!("the table writer had already stopped"),
        }
    }
}

/// One row as a JSON line, for the dead letter of an invalid Parquet row.
fn row_json(batch: &RecordBatch, row: usize) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut w = arrow::json::LineDelimitedWriter::new(&mut buf);
    if w.write(&batch.slice(row, 1)).is_err() || w.finish().is_err() {
        return b"(row not representable as JSON)".to_vec();
    }
    drop(w);
    while buf.last() == Some(&b'\n') {
        buf.pop();
    }
    buf.truncate(MAX_RAW_BYTES);
    buf
}

pub(crate) fn dead_letters_batch(dead: &[DeadLetter], now: i64) -> Result<RecordBatch> {
    let n = dead.len();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(TimestampMillisecondArray::from_value(now, n).with_timezone("UTC")),
        Arc::new(StringArray::from_iter_values(dead.iter().map(|d| d.source.as_str()))),
        Arc::new(StringArray::from_iter_values(dead.iter().map(|d| d.origin.as_str()))),
        Arc::new(Int64Array::from_iter(dead.iter().map(|d| d.line))),
        Arc::new(StringArray::from_iter_values(dead.iter().map(|d| d.reason.as_str()))),
        Arc::new(BinaryArray::from_iter_values(dead.iter().map(|d| &d.raw[..d.raw.len().min(MAX_RAW_BYTES)]))),
        Arc::new(BooleanArray::from_iter(dead.iter().map(|d| Some(d.raw.len() > MAX_RAW_BYTES)))),
    ];
    Ok(RecordBatch::try_new(dead_letters_schema(), columns)?)
}

fn print_summary(s: &Summary, args: &ReplayArgs) {
    if args.summary_json {
        println!("{}", serde_json::to_string(s).unwrap_or_default());
        return;
    }
    eprintln!(
        "replayed {} file(s): {} rows read, {} dead letters, {} duplicate copies, {} events, {} calls ({} settled before the end{})",
        s.files,
        s.rows_read,
        s.dead_letters,
        s.duplicate_copies,
        s.events,
        s.calls,
        s.settled_calls,
        if s.folded_again { "; folded twice, the input being out of time order" } else { "" }
    );
    eprintln!(
        "tables in {}: call_facts {} rows, agent_legs {}, interval_partials {}, events {}",
        args.data, s.call_facts_rows, s.agent_legs_rows, s.interval_partials_rows, s.events_rows
    );
    eprintln!(
        "time: derived tables {:.2} s ({:.0} events/s; read {:.2} s, fold {:.2} s, output {:.2} s, write {:.2} s), events table {:.2} s, total {:.2} s",
        s.tables_s, s.events_per_s, s.read_s, s.fold_s, s.output_s, s.write_s, s.events_table_s, s.total_s
    );
}
