//! `ccstream run --config FILE`: every role in one process, from the config file's
//! `[pipeline]` section: ingest the configured input files into the log, start the source
//! listeners of the `[sources]` section (syslog, SIP, webhooks) and the SQL frontends of the
//! `[serve]` section, then process the log into the tables with `/metrics`, until Ctrl-C (or
//! the end of the log with `--until-caught-up`).

use std::path::PathBuf;
use std::sync::Arc;

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
    /// Write the source listeners' addresses, once bound, to this file (`NAME ADDR` lines)
    #[arg(long, env = "CCSTREAM_SOURCES_LISTEN_FILE")]
    pub(crate) sources_listen_file: Option<PathBuf>,
    /// Write the SQL frontends' addresses ([serve]), once bound, to this file
    #[arg(long, env = "CCSTREAM_SERVE_LISTEN_FILE")]
    pub(crate) serve_listen_file: Option<PathBuf>,
}

pub(crate) async fn run(args: RunArgs) -> Result<()> {
    let config = Config::load(Some(&args.config))?;
    let p = config
        .pipeline
        .with_context(|| format!("{} has no [pipeline] section (log, data, ...)", args.config.display()))?;
    // The SQL frontends, when [serve] names an address: they see each commit of the
    // processor below within serve.refresh_interval_ms.
    let _serving = match config.serve.clone() {
        Some(serve) if serve.serves_anything() => {
            Some(crate::serve::start(&p.data, serve, args.serve_listen_file.as_deref(), true).await?)
        }
        _ => None,
    };
    let log = crate::ingest::open_or_create(&p.log, p.partitions).await?;
    if !p.inputs.is_empty() {
        let s = crate::ingest::ingest_files(
            &*log,
            &p.inputs,
            16_384,
            "auto",
            ccstream_ingest::file::records::LogRecords::new(crate::replay::now_ms()),
        )
        .await?;
        eprintln!("ingested {} records ({} dead letters) from {} file(s)", s.records, s.dead_letters, s.files);
    }
    let mut sources_status = None;
    let mut running = None;
    if let Some(sources) = config.sources.clone() {
        let started = ccstream_ingest::listen::start(sources, log, crate::replay::now_ms).await?;
        let mut lines = String::new();
        for (name, addr) in &started.addrs {
            eprintln!("{name} listening on {addr}");
            lines.push_str(&format!("{name} {addr}\n"));
        }
        if let Some(path) = &args.sources_listen_file {
            std::fs::write(path, lines).with_context(|| format!("writing {}", path.display()))?;
        }
        sources_status = Some(crate::metrics_http::Sources {
            telemetry: Arc::clone(&started.telemetry),
            health: Arc::clone(&started.health),
        });
        running = Some(started);
    } else {
        drop(log);
    }
    crate::process::run(crate::process::ProcessArgs {
        log: p.log,
        data: p.data,
        group: p.group,
        config: Some(args.config),
        commit_interval_ms: p.commit_interval_ms,
        until_caught_up: args.until_caught_up,
        poll_records: 65_536,
        decode_chunk: 4096,
        append_flush_rows: 1 << 20,
        compact_after_files: 32,
        metrics_listen: p.metrics_listen,
        listen_file: args.listen_file,
        time: crate::process::StreamTime::DEFAULT,
        sources: sources_status,
    })
    .await?;
    if let Some(running) = running {
        // What the listeners received but nobody was told is durable (syslog) goes to the
        // log before the process ends; the next run processes it.
        match tokio::time::timeout(std::time::Duration::from_secs(10), running.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("sources: {e}"),
            Err(_) => eprintln!("sources: the log did not take the last input within 10 s"),
        }
    }
    Ok(())
}
