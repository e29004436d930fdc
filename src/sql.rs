//! `ccstream sql`: ad hoc SQL over the tables and metric views of a data directory, or of a
//! `ccstream serve` (its HTTP API, as an Arrow IPC stream).

use std::io::Write;

use anyhow::{Context, Result};
use ccstream_query::QueryEngine;
use clap::Args;

use crate::output::{self, Format};

#[derive(Debug, Args)]
pub(crate) struct SqlArgs {
    /// Data directory (local path or URL) that holds the tables
    #[arg(long, env = "CCSTREAM_DATA", required_unless_present = "server", conflicts_with = "server")]
    pub(crate) data: Option<String>,
    /// A `ccstream serve` HTTP API to query instead, e.g. http://127.0.0.1:8480
    #[arg(long, env = "CCSTREAM_SERVER")]
    pub(crate) server: Option<String>,
    /// The bearer token for --server (a principal's token or an Entra access token)
    #[arg(long, env = "CCSTREAM_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
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
    let (schema, batches) = match (&args.data, &args.server) {
        (Some(data), _) => QueryEngine::open(data, args.threads).await?.query(&args.sql).await?,
        (None, Some(server)) => remote(server, args.token.as_deref(), &args.sql).await?,
        (None, None) => anyhow::bail!("give --data DIR or --server URL"),
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    output::write(&mut out, args.format, &schema, &batches)?;
    out.flush()?;
    Ok(())
}

/// Runs `sql` on a server's `/v1/sql`, as an Arrow IPC stream.
async fn remote(
    server: &str,
    token: Option<&str>,
    sql: &str,
) -> Result<(arrow::datatypes::SchemaRef, Vec<arrow::array::RecordBatch>)> {
    let url = format!("{}/v1/sql?format=arrow", server.trim_end_matches('/'));
    let mut req = reqwest::Client::new().post(&url).json(&serde_json::json!({ "sql": sql }));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.with_context(|| format!("POST {url}"))?;
    let status = resp.status();
    let body = resp.bytes().await.with_context(|| format!("reading the answer of {url}"))?;
    if !status.is_success() {
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        anyhow::bail!("{status}: {message}");
    }
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(body), None)
        .context("the server's answer is not an Arrow IPC stream")?;
    let schema = reader.schema();
    let batches = reader.collect::<Result<Vec<_>, _>>().context("reading the result (did the query fail midway?)")?;
    Ok((schema, batches))
}
