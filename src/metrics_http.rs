//! The operator endpoints of a long-running command: `/metrics` (Prometheus text format),
//! `/health` (the process answers) and `/ready` (`503` naming any source listener that
//! stopped).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::http::{header, StatusCode};
use axum::routing::get;
use axum::Router;
use ccstream_processor::telemetry::Telemetry;

/// The source listeners of `ccstream run`: their metrics and their health.
#[derive(Debug, Clone)]
pub(crate) struct Sources {
    pub(crate) telemetry: Arc<ccstream_ingest::telemetry::Telemetry>,
    pub(crate) health: Arc<ccstream_ingest::listen::Health>,
}

/// Serves `telemetry` (and the source listeners' `sources`, when running) at
/// `http://ADDR/metrics` on `listen` (port 0 picks a free port), with `/health` and
/// `/ready`. Writes the bound address to `listen_file` when given (tests and scripts read
/// it there).
pub(crate) async fn serve(
    listen: SocketAddr,
    telemetry: Arc<Telemetry>,
    sources: Option<Sources>,
    listen_file: Option<&Path>,
) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr()?;
    let health = sources.as_ref().map(|s| Arc::clone(&s.health));
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let t = Arc::clone(&telemetry);
                let sources = sources.clone();
                async move {
                    let mut text = t.render();
                    if let Some(s) = sources {
                        text.push_str(&s.telemetry.render());
                    }
                    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text)
                }
            }),
        )
        .route("/health", get(|| async { "ok\n" }))
        .route(
            "/ready",
            get(move || {
                let stopped = health.as_ref().map(|h| h.stopped()).unwrap_or_default();
                async move {
                    if stopped.is_empty() {
                        return (StatusCode::OK, "ready\n".to_string());
                    }
                    let mut text = "not ready\n".to_string();
                    for (name, why) in stopped {
                        text.push_str(&format!("listener {name} stopped: {why}\n"));
                    }
                    (StatusCode::SERVICE_UNAVAILABLE, text)
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
