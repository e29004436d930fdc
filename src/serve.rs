//! `ccstream serve`: SQL over HTTP and the Postgres wire, for the principals of the config
//! file's `[serve]` section. The engine is `ccstream_query::server`; this file reads flags
//! and config, binds the listeners and reports their addresses.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use ccstream_query::server::ServeConfig;
use ccstream_query::telemetry::Telemetry;
use ccstream_query::Service;
use clap::Args;

use crate::config::Config;

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// The tables (a local path or URL)
    #[arg(long, env = "CCSTREAM_DATA")]
    pub(crate) data: String,
    /// Config file (TOML) with a [serve] section: principals, limits, TLS
    #[arg(long, env = "CCSTREAM_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// HTTP API address (overrides serve.http_listen; port 0 picks a free port)
    #[arg(long, env = "CCSTREAM_HTTP_LISTEN")]
    pub(crate) http_listen: Option<SocketAddr>,
    /// Postgres wire address (overrides serve.pg_listen; port 0 picks a free port)
    #[arg(long, env = "CCSTREAM_PG_LISTEN")]
    pub(crate) pg_listen: Option<SocketAddr>,
    /// Arrow Flight SQL address (overrides serve.flight_listen; port 0 picks a free port)
    #[arg(long, env = "CCSTREAM_FLIGHT_LISTEN")]
    pub(crate) flight_listen: Option<SocketAddr>,
    /// Write the bound addresses, once listening, to this file (`http ADDR`, `pg ADDR`,
    /// `flight ADDR` lines)
    #[arg(long, env = "CCSTREAM_SERVE_LISTEN_FILE")]
    pub(crate) listen_file: Option<PathBuf>,
}

pub(crate) async fn run(args: ServeArgs) -> Result<()> {
    let config = Config::load(args.config.as_deref())?;
    let mut serve = config.serve.unwrap_or_default();
    serve.http_listen = args.http_listen.or(serve.http_listen);
    serve.pg_listen = args.pg_listen.or(serve.pg_listen);
    serve.flight_listen = args.flight_listen.or(serve.flight_listen);
    let running = start(&args.data, serve, args.listen_file.as_deref(), false).await?;
    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
    drop(running);
    Ok(())
}

/// The frontends of a running server; dropping it stops them.
#[derive(Debug)]
pub(crate) struct Running {
    pub(crate) addrs: Vec<(&'static str, SocketAddr)>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Opens the tables, binds the configured listeners and serves them in the background.
/// Beside a processor (`beside_processor`), a local data directory that does not exist yet
/// is created: its tables appear with the processor's first commit.
pub(crate) async fn start(
    data: &str,
    serve: ServeConfig,
    listen_file: Option<&Path>,
    beside_processor: bool,
) -> Result<Running> {
    if beside_processor && !data.contains("://") {
        std::fs::create_dir_all(data).with_context(|| format!("creating {data}"))?;
    }
    if !serve.serves_anything() {
        bail!(
            "nothing to serve: give --http-listen, --pg-listen and/or --flight-listen (or serve.http_listen, \
             serve.pg_listen, serve.flight_listen)"
        );
    }
    if serve.principals.is_empty() && serve.entra.is_empty() {
        bail!(
            "no principals: add [[serve.principals]] (`ccstream secret hash` makes their hashes) or [[serve.entra]] \
             to the config; nothing answers without credentials"
        );
    }
    // TLS on every frontend when configured: HTTPS for the API, SSLRequest on the wire,
    // gRPC over TLS (HTTP/2 by ALPN) for Flight SQL.
    use ccstream_ingest::listen::tls::{server_config, with_alpn};
    let (tls, https, grpcs) = match (&serve.tls_cert, &serve.tls_key) {
        (Some(cert), Some(key)) => {
            let config = server_config(cert, key)?;
            (
                Some(with_alpn(&config, &[b"postgresql"])),
                Some(with_alpn(&config, &[])),
                Some(with_alpn(&config, &[b"h2"])),
            )
        }
        (None, None) => (None, None, None),
        _ => bail!("serve.tls_cert and serve.tls_key go together"),
    };
    let service = Service::open(data, serve, Arc::new(Telemetry::new())).await?;
    let mut tasks = vec![service.spawn_refresh()];
    let mut addrs = Vec::new();
    if let Some(addr) = service.config.http_listen {
        let (listener, bound) = bind(addr).await?;
        let app = ccstream_query::http::router(Arc::clone(&service));
        match https {
            Some(acceptor) => {
                let listener = ccstream_ingest::listen::tls::TlsListener::new(listener, acceptor)?;
                tasks.push(tokio::spawn(async move {
                    if let Err(e) = axum::serve(listener, app).await {
                        tracing::error!(error = %e, "the HTTPS API stopped");
                    }
                }));
            }
            None => tasks.push(tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::error!(error = %e, "the HTTP API stopped");
                }
            })),
        }
        addrs.push(("http", bound));
    }
    if let Some(addr) = service.config.pg_listen {
        let (listener, bound) = bind(addr).await?;
        tasks.push(tokio::spawn(ccstream_query::pg::serve(listener, Arc::clone(&service), tls)));
        addrs.push(("pg", bound));
    }
    if let Some(addr) = service.config.flight_listen {
        let (listener, bound) = bind(addr).await?;
        tasks.push(tokio::spawn(ccstream_query::flight::serve(listener, Arc::clone(&service), grpcs)));
        addrs.push(("flight", bound));
    }
    if let Some(path) = listen_file {
        let lines: String = addrs.iter().map(|(name, a)| format!("{name} {a}\n")).collect();
        std::fs::write(path, lines).with_context(|| format!("writing {}", path.display()))?;
    }
    for (name, a) in &addrs {
        eprintln!("{name} listening on {a}");
    }
    Ok(Running { addrs, tasks })
}

/// A listener on `addr` and the address it got (port 0 picks a free one).
async fn bind(addr: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    let bound = listener.local_addr()?;
    Ok((listener, bound))
}
