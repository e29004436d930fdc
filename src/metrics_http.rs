//! The `/metrics` endpoint (Prometheus text format) of a long-running command.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::http::header;
use axum::routing::get;
use axum::Router;
use ccstream_processor::telemetry::Telemetry;

/// Serves `telemetry` (and the source listeners' `sources`, when running) at
/// `http://ADDR/metrics` on `listen` (port 0 picks a free port). Writes the bound address to
/// `listen_file` when given (tests and scripts read it there).
pub(crate) async fn serve(
    listen: SocketAddr,
    telemetry: Arc<Telemetry>,
    sources: Option<Arc<ccstream_ingest::telemetry::Telemetry>>,
    listen_file: Option<&Path>,
) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr()?;
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let t = Arc::clone(&telemetry);
            let sources = sources.clone();
            async move {
                let mut text = t.render();
                if let Some(s) = sources {
                    text.push_str(&s.render());
                }
                ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text)
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("metrics endpoint stopped: {e}");
        }
    });
    if let Some(path) = listen_file {
        std::fs::write(path, format!("{addr}\n")).with_context(|| format!("writing {}", path.display()))?;
    }
    eprintln!("metrics at http://{addr}/metrics");
    Ok(addr)
}
