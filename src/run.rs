//! `ccstream run --config FILE`: every role in one process, from the config file's
//! `[pipeline]` section: ingest the configured input files into the log, then process the
//! log into the tables with `/metrics`, until Ctrl-C (or the end of the log with
//! `--until-caught-up`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::config::Config;

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// Pipeline config file (TOML) with a [pipeline] section
    #[arg(long, env = "CCSTREAM_CONFIG")]
    pub(crate) config: PathBuf,
    /// Stop at the end of the log, with everything committed
    #[arg(long, env = "CCSTREAM_UNTIL_CAUGHT_UP", default_value_t = false)]
    pub(crate) until_caught_up: bool,
    /// Write the metrics address, once bound, to this file
    #[arg(long, env = "CCSTREAM_LISTEN_FILE")]
    pub(crate) listen_file: Option<PathBuf>,
}

pub(crate) async fn run(args: RunArgs) -> Result<()> {
    let config = Config::load(Some(&args.config))?;
    let p = config
        .pipeline
        .with_context(|| format!("{} has no [pipeline] section (log, data, ...)", args.config.display()))?;
    if !p.inputs.is_empty() {
        let log = crate::ingest::open_or_create(&p.log, p.partitions).await?;
        let s = crate::ingest::ingest_files(&*log, &p.inputs, 16_384, "auto").await?;
        eprintln!("ingested {} records ({} dead letters) from {} file(s)", s.records, s.dead_letters, s.files);
    } else {
        crate::ingest::open_or_create(&p.log, p.partitions).await?;
    }
    crate::process::run(crate::process::ProcessArgs {
        log: p.log,
        data: p.data,
        group: p.group,
        config: Some(args.config),
        commit_interval_ms: p.commit_interval_ms,
        until_caught_up: args.until_caught_up,
        poll_records: 65_536,
        append_flush_rows: 1 << 20,
        metrics_listen: p.metrics_listen,
        listen_file: args.listen_file,
        time: crate::process::StreamTime::DEFAULT,
    })
    .await
    .map(|_| ())
}
