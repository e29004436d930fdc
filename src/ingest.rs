//! `ccstream ingest file`: publish canonical events files to the event log, in file order.
//!
//! Every line (JSONL) or row (Parquet) becomes one record: a valid event under its call key,
//! anything else a dead letter with file, line and reason (the processor commits it to
//! `dead_letters`). Records are appended in batches; each append is durable when it returns.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use ccstream_eventlog::{open, EventLog, OpenOptions};
use ccstream_ingest::file::records::{LogRecords, ValueForm};
use ccstream_ingest::file::{discover, Chunk, FileReader, ReadOptions};
use clap::{Args, Subcommand};

use crate::replay::progress_bar;

#[derive(Debug, Subcommand)]
pub(crate) enum IngestCommand {
    /// Publish canonical events files (JSONL, .jsonl.gz, Parquet) to the log in file order
    File(IngestFileArgs),
    /// Publish AudioCodes SBC CDR files (syslog captures or CDR lines, plain or .gz) to the log
    Cdr(IngestCdrArgs),
}

/// The log an ingest publishes to (the flags every `ingest` command shares).
#[derive(Debug, Args)]
pub(crate) struct LogTarget {
    /// Event log URL: file://DIR (or a path) or kafka://HOST:PORT/TOPIC
    #[arg(long, env = "CCSTREAM_LOG")]
    pub(crate) log: String,
    /// Partitions to create the log (Kafka topic) with if it is missing; if it exists, it must match
    #[arg(long, env = "CCSTREAM_PARTITIONS")]
    pub(crate) partitions: Option<u32>,
    /// Form of event values: binary (compact, fastest to process) or json (for other consumers of the topic)
    #[arg(long, env = "CCSTREAM_VALUE_FORMAT", default_value = "binary", value_parser = ["binary", "json"])]
    pub(crate) value_format: String,
}

impl LogTarget {
    /// Opens the log, creating it when missing.
    pub(crate) async fn open(&self) -> Result<std::sync::Arc<dyn EventLog>> {
        open_or_create(&self.log, self.partitions).await
    }

    /// Empty records in the chosen value form, stamped now.
    pub(crate) fn records(&self) -> LogRecords {
        let form = if self.value_format == "json" { ValueForm::Json } else { ValueForm::Binary };
        LogRecords::new(crate::replay::now_ms()).with_value_form(form)
    }
}

#[derive(Debug, Args)]
pub(crate) struct IngestCdrArgs {
    #[command(flatten)]
    pub(crate) target: LogTarget,
    /// Pipeline config file (TOML): its [sources] default_tenant and sbc_tenants map CDRs to tenants
    #[arg(long, env = "CCSTREAM_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// CDR files (each file is one sender: its title rows map its columns)
    #[arg(required = true, env = "CCSTREAM_CDR_INPUT", value_delimiter = ',')]
    pub(crate) paths: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct IngestFileArgs {
    #[command(flatten)]
    pub(crate) target: LogTarget,
    /// Records per append (one durable write each)
    #[arg(long, env = "CCSTREAM_APPEND_BATCH", default_value_t = 16_384)]
    pub(crate) append_batch: usize,
    /// Progress bar on stderr: auto (when it is a terminal), always or never
    #[arg(long, env = "CCSTREAM_PROGRESS", default_value = "auto", value_parser = ["auto", "always", "never"])]
    pub(crate) progress: String,
    /// Canonical events files or directories
    #[arg(required = true, env = "CCSTREAM_INPUT", value_delimiter = ',')]
    pub(crate) paths: Vec<PathBuf>,
}

/// Partitions a new log gets when `--partitions` is not given.
pub(crate) const DEFAULT_PARTITIONS: u32 = 4;

/// What an ingest did.
#[derive(Debug, Default, serde::Serialize)]
pub(crate) struct IngestSummary {
    pub(crate) files: usize,
    pub(crate) records: u64,
    pub(crate) events: u64,
    pub(crate) dead_letters: u64,
    pub(crate) seconds: f64,
}

/// Opens the log, creating it when missing (with `partitions`, or the default).
pub(crate) async fn open_or_create(url: &str, partitions: Option<u32>) -> Result<std::sync::Arc<dyn EventLog>> {
    match open(url, &OpenOptions { create_partitions: partitions, ..Default::default() }).await {
        Err(ccstream_eventlog::Error::NotFound { .. }) => {
            let create = Some(partitions.unwrap_or(DEFAULT_PARTITIONS));
            Ok(open(url, &OpenOptions { create_partitions: create, ..Default::default() }).await?)
        }
        other => Ok(other?),
    }
}

pub(crate) async fn run(cmd: IngestCommand) -> Result<()> {
    let args = match cmd {
        IngestCommand::File(args) => args,
        IngestCommand::Cdr(args) => return ingest_cdr(args).await,
    };
    let log = args.target.open().await?;
    let s = ingest_files(&*log, &args.paths, args.append_batch, &args.progress, args.target.records()).await?;
    eprintln!(
        "ingested {} file(s) into {}: {} records ({} events, {} dead letters) in {:.2} s ({:.0} records/s)",
        s.files,
        log.url(),
        s.records,
        s.events,
        s.dead_letters,
        s.seconds,
        s.records as f64 / s.seconds.max(1e-9)
    );
    Ok(())
}

/// Publishes `paths` to `log`.
pub(crate) async fn ingest_files(
    log: &dyn EventLog,
    paths: &[PathBuf],
    append_batch: usize,
    progress: &str,
    mut records: LogRecords,
) -> Result<IngestSummary> {
    let start = Instant::now();
    let files = discover(paths)?;
    let total: u64 = files.iter().map(|f| f.bytes).sum();
    let bar = progress_bar(progress, total, "ingest");
    let mut summary = IngestSummary { files: files.len(), ..IngestSummary::default() };
    let opts = ReadOptions { batch_rows: 8192, ..ReadOptions::default() };
    for file in &files {
        let mut reader = FileReader::open(file, &opts)?;
        while let Some(chunk) = reader.next_chunk()? {
            match chunk {
                Chunk::Lines { first_line, data } => {
                    if !matches!(file.format, ccstream_ingest::file::Format::Jsonl { gzip: true }) {
                        bar.inc(data.len() as u64);
                    }
                    records.add_lines(file, first_line, &data);
                }
                Chunk::Batch { first_row, batch } => {
                    if let Some(total_rows) = reader.total_rows().filter(|t| *t > 0) {
                        bar.inc(file.bytes * batch.num_rows() as u64 / total_rows);
                    }
                    records.add_batch(file, first_row, &batch)?;
                }
            }
            if records.len() >= append_batch.max(1) {
                flush(log, &mut records, &mut summary).await?;
            }
        }
    }
    flush(log, &mut records, &mut summary).await?;
    bar.finish_and_clear();
    summary.events = records.events;
    summary.dead_letters = records.dead_letters;
    summary.seconds = start.elapsed().as_secs_f64();
    Ok(summary)
}

/// `ccstream ingest cdr`: CDR files through the SBC mapping, in file order.
async fn ingest_cdr(args: IngestCdrArgs) -> Result<()> {
    use std::io::BufRead as _;
    let start = Instant::now();
    let config = crate::config::Config::load(args.config.as_deref())?;
    let (tenant, rules) = match &config.sources {
        Some(s) => (s.default_tenant.clone(), s.sbc_tenants.clone()),
        None => ("default".to_string(), Vec::new()),
    };
    let mut mapper = ccstream_ingest::sbc::SbcMapper::new(tenant, rules);
    let log = args.target.open().await?;
    let mut records = args.target.records();
    let mut summary = IngestSummary { files: args.paths.len(), ..IngestSummary::default() };
    for path in &args.paths {
        let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let reader: Box<dyn std::io::Read> = if path.extension().is_some_and(|e| e == "gz") {
            Box::new(flate2::read::MultiGzDecoder::new(file))
        } else {
            Box::new(file)
        };
        let mut reader = std::io::BufReader::with_capacity(1 << 20, reader);
        let name = path.display().to_string();
        let (mut line_no, mut chunk, mut first) = (0u64, Vec::with_capacity(1 << 20), 1u64);
        loop {
            let n = reader.read_until(b'\n', &mut chunk).with_context(|| format!("reading {name}"))?;
            if n > 0 {
                line_no += 1;
            }
            if (n == 0 || chunk.len() >= 1 << 20) && !chunk.is_empty() {
                let data = chunk.strip_suffix(b"\n").unwrap_or(&chunk);
                records.add_cdr_lines(&mut mapper, &name, first, data);
                chunk.clear();
                first = line_no + 1;
                if records.len() >= 16_384 {
                    flush(&*log, &mut records, &mut summary).await?;
                }
            }
            if n == 0 {
                break;
            }
        }
    }
    flush(&*log, &mut records, &mut summary).await?;
    eprintln!(
        "ingested {} CDR file(s) into {}: {} events, {} dead letters in {:.2} s",
        summary.files,
        log.url(),
        records.events,
        records.dead_letters,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn flush(log: &dyn EventLog, records: &mut LogRecords, summary: &mut IngestSummary) -> Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    let refs = records.refs();
    log.append(&refs).await.with_context(|| format!("appending {} records to {}", refs.len(), log.url()))?;
    summary.records += refs.len() as u64;
    drop(refs);
    records.clear();
    Ok(())
}
