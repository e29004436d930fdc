//! `ccstream sql`: ad hoc SQL over the tables and metric views of a data directory.

use std::io::Write;

use anyhow::Result;
use ccstream_query::QueryEngine;
use clap::Args;

use crate::output::{self, Format};

#[derive(Debug, Args)]
pub(crate) struct SqlArgs {
    /// Data directory (local path or URL) that holds the tables
    #[arg(long, env = "CCSTREAM_DATA")]
    pub(crate) data: String,
    /// Output format
    #[arg(long, env = "CCSTREAM_FORMAT", value_enum, default_value_t = Format::Table)]
    pub(crate) format: Format,
    /// Threads for query execution
    #[arg(long, env = "CCSTREAM_THREADS", default_value_t = 2)]
    pub(crate) threads: usize,
    /// The SQL statement, e.g. "SELECT * FROM interval_metrics LIMIT 10"
    pub(crate) sql: String,
}

pub(crate) async fn run(args: SqlArgs) -> Result<()> {
    let engine = QueryEngine::open(&args.data, args.threads).await?;
    let (schema, batches) = engine.query(&args.sql).await?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    output::write(&mut out, args.format, &schema, &batches)?;
    out.flush()?;
    Ok(())
}
