//! The source loops: thin network listeners around the sans-IO parsers, publishing to the
//! event log through one [`publish::Publisher`].
//!
//! | listener | protocol | source |
//! |---|---|---|
//! | `syslog_udp`, `syslog_tcp` | syslog (UDP; TCP with newline or octet-counted framing) | AudioCodes CDRs |
//! | `sip_udp`, `sip_tcp` | SIP `PUBLISH`/`NOTIFY` with `application/vq-rtcpxr` | RFC 6035 reports |
//! | `http` | `POST /events` (canonical JSONL), `POST /acs/eventgrid`, `POST /acs/callautomation`, `POST /graph/notifications`, `/graph/lifecycle`, `/graph/presence`, `/graph/calling` | webhooks |
//! | (client) | Graph fetches, subscriptions and polls (`graph`) | call records, DR/PSTN logs, presence |
//!
//! Invariants every loop keeps:
//! - input larger than the limit, unauthenticated, or unparseable is rejected (with the
//!   protocol's status where it has one), counted per source and reason, and dead-lettered
//!   with the reason — it never reaches the tables;
//! - a protocol that acknowledges (HTTP, SIP) acknowledges only after the events are durable
//!   on the log, and tells the sender to retry when they are not;
//! - event ids derive from source ids, so a redelivery is deduplicated downstream.

pub mod credentials;
pub mod graph;
pub mod http;
pub mod publish;
pub mod sip;
pub mod syslog;
pub mod tls;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use ccstream_eventlog::EventLog;
use serde::Deserialize;

use crate::acs::{self, AcsMapper};
use crate::sbc::{self, SbcMapper};
use crate::telemetry::{Reject, Telemetry};
use publish::{Batch, Publisher};

/// The `[sources]` section of the pipeline config: which listeners run, and how input maps
/// to tenants.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourcesConfig {
    /// The tenant of input no rule maps.
    #[serde(default = "default_tenant")]
    pub default_tenant: String,
    pub syslog_udp: Option<SocketAddr>,
    pub syslog_tcp: Option<SocketAddr>,
    pub sip_udp: Option<SocketAddr>,
    pub sip_tcp: Option<SocketAddr>,
    /// The webhook server.
    pub http: Option<SocketAddr>,
    /// With `tls_key`: serve the webhooks over HTTPS with this PEM certificate chain.
    pub tls_cert: Option<std::path::PathBuf>,
    /// The PEM private key of `tls_cert`.
    pub tls_key: Option<std::path::PathBuf>,
    /// A webhook credential for any tenant (the provider's own forwarders): a request
    /// carrying it (`Authorization: Bearer …`, the header `x-ccstream-secret`, or the query
    /// parameter `code`) delivers events of the tenants they name.
    pub secret: Option<String>,
    /// Webhook credentials, each for its tenants (`[[sources.webhooks]]`; see
    /// [`credentials`]).
    #[serde(default)]
    pub webhooks: Vec<credentials::WebhookCredential>,
    /// Accept webhook requests without any credential (for demos on loopback). Without it,
    /// the webhook listener does not start unless `secret` or `webhooks` is set.
    #[serde(default)]
    pub insecure: bool,
    /// A syslog message or SIP message, at most (bytes).
    #[serde(default = "default_max_message")]
    pub max_message_bytes: usize,
    /// A webhook body, at most (bytes).
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Dead letters per second per source, on average: rejections past it are counted
    /// (`ccstream_ingest_dead_letters_dropped_total`) but not written.
    #[serde(default = "default_dead_letters_per_second")]
    pub dead_letters_per_second: f64,
    /// Dead letters per source written in a burst before the rate applies.
    #[serde(default = "default_dead_letter_burst")]
    pub dead_letter_burst: u32,
    /// Open connections per TCP listener (syslog, SIP, webhooks), at most: one past it is
    /// closed at once and counted (`ccstream_ingest_connections_refused_total`).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Webhook requests handled at once, at most: one past it is answered `503` with
    /// `Retry-After`.
    #[serde(default = "default_max_concurrent_requests")]
    pub max_concurrent_requests: usize,
    /// A syslog or SIP TCP connection that sends nothing for this long is closed (seconds).
    /// (A kept-alive webhook connection must send its next request within
    /// `read_timeout_s`.)
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_s: u64,
    /// A message, once its first byte came (a syslog or SIP message, a webhook request's
    /// header or body), must arrive whole within this (seconds); a slower sender is cut off.
    #[serde(default = "default_read_timeout")]
    pub read_timeout_s: u64,
    /// A webhook request is answered within this, or gets `503` (seconds).
    #[serde(default = "default_request_timeout")]
    pub request_timeout_s: u64,
    /// The kernel receive buffer asked for on the UDP sockets (bytes; the kernel caps it at
    /// `net.core.rmem_max`): what absorbs a burst while the loop is busy.
    #[serde(default = "default_udp_buffer")]
    pub udp_receive_buffer_bytes: usize,
    #[serde(default)]
    pub sbc_tenants: Vec<sbc::TenantRule>,
    /// The SBCs allowed to send syslog and SIP, each for its tenants
    /// (`[[sources.sbc_senders]]`); none: any sender, for any tenant (a trusted network).
    #[serde(default)]
    pub sbc_senders: Vec<sbc::SbcSender>,
    #[serde(default)]
    pub acs_tenants: Vec<acs::TenantRule>,
    /// Microsoft 365 tenants read through Graph (`[[sources.graph]]`).
    #[serde(default)]
    pub graph: Vec<graph::GraphConfig>,
}

fn default_tenant() -> String {
    "default".into()
}

fn default_max_message() -> usize {
    65_535
}

fn default_max_body() -> usize {
    4 << 20
}

fn default_max_connections() -> usize {
    1024
}

fn default_max_concurrent_requests() -> usize {
    256
}

fn default_idle_timeout() -> u64 {
    300
}

fn default_read_timeout() -> u64 {
    30
}

fn default_request_timeout() -> u64 {
    60
}

fn default_dead_letters_per_second() -> f64 {
    20.0
}

fn default_dead_letter_burst() -> u32 {
    200
}

fn default_udp_buffer() -> usize {
    8 << 20
}

/// A UDP socket bound to `addr` with the receive buffer asked for.
fn bind_udp(addr: SocketAddr, receive_buffer: usize) -> std::io::Result<tokio::net::UdpSocket> {
    let sock =
        socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    // Best effort: the kernel caps (or refuses) sizes over its maximum.
    let _ = sock.set_recv_buffer_size(receive_buffer);
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    tokio::net::UdpSocket::from_std(sock.into())
}

/// What every loop shares.
#[derive(Debug)]
pub struct Context {
    pub config: SourcesConfig,
    /// Who may send to the webhooks, for which tenants.
    pub credentials: credentials::Credentials,
    pub telemetry: Arc<Telemetry>,
    pub publisher: Publisher,
    pub sbc: Mutex<SbcMapper>,
    pub acs: AcsMapper,
    /// One link per `[[sources.graph]]` tenant (set once at start).
    pub graph: std::sync::OnceLock<Vec<Arc<graph::GraphLink>>>,
    pub now_ms: fn() -> i64,
}

/// Raw input kept in a dead letter, at most (a bounded table, and rejected input may be
/// hostile).
pub const DEAD_LETTER_RAW_BYTES: usize = 64 * 1024;

impl Context {
    /// Counts a rejection and adds it to `batch`'s dead letter for `origin`.
    pub fn reject(&self, batch: &mut Batch, source: &str, origin: &str, why: Reject, reason: String, raw: &[u8]) {
        self.reject_at(batch, source, origin, None, why, reason, raw);
    }

    /// [`Context::reject`] for input with lines: the dead letter names the 1-based `line`.
    #[allow(clippy::too_many_arguments)]
    pub fn reject_at(
        &self,
        batch: &mut Batch,
        source: &str,
        origin: &str,
        line: Option<i64>,
        why: Reject,
        reason: String,
        raw: &[u8],
    ) {
        self.telemetry.reject(source, why);
        batch.reject(source, origin, line, reason, raw);
    }

    /// Counts and logs a TCP source connection of `listener` that `cutoff` ended.
    pub(crate) fn cut(&self, listener: &'static str, peer: SocketAddr, cutoff: Cutoff) {
        self.telemetry.connections_cut.with_label_values(&[listener, cutoff.as_str()]).inc();
        tracing::debug!(listener, %peer, reason = cutoff.as_str(), "connection cut off");
    }

    fn sbc(&self) -> std::sync::MutexGuard<'_, SbcMapper> {
        self.sbc.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The running listeners.
#[derive(Debug)]
pub struct Running {
    /// `(listener name, bound address)`, e.g. `("syslog_udp", 127.0.0.1:5514)`.
    pub addrs: Vec<(&'static str, SocketAddr)>,
    pub telemetry: Arc<Telemetry>,
    /// Which listeners stopped (for `/ready`).
    pub health: Arc<Health>,
    publisher: Publisher,
}

impl Running {
    /// Waits until everything the loops handed to the writer so far is on the log (for a
    /// clean stop: syslog batches are not acknowledged to anyone, so they are flushed here).
    pub async fn flush(&self) -> Result<(), publish::PublishError> {
        self.publisher.flush().await
    }
}

/// Accepts the next connection of `listener`. An accept error (out of file descriptors,
/// out of buffers) is retried after a pause that doubles from 10 ms to 1 s while errors
/// last, so a process out of descriptors waits instead of spinning; `backoff` carries the
/// pause between calls.
pub async fn accept_next(
    listener: &tokio::net::TcpListener,
    name: &str,
    backoff: &mut std::time::Duration,
) -> (tokio::net::TcpStream, SocketAddr) {
    const FIRST: std::time::Duration = std::time::Duration::from_millis(10);
    loop {
        match listener.accept().await {
            Ok(x) => {
                *backoff = FIRST;
                return x;
            }
            Err(e) => {
                if *backoff <= FIRST {
                    tracing::warn!(listener = %name, error = %e, "accept failed; retrying with backoff");
                }
                tokio::time::sleep(*backoff).await;
                *backoff = (*backoff * 2).min(std::time::Duration::from_secs(1));
            }
        }
    }
}

/// Accepts connections for ever, a task each, at most `ctx.config.max_connections` open at
/// a time: one past it is closed at once and counted.
async fn accept<F, Fut>(listener: tokio::net::TcpListener, ctx: Arc<Context>, name: &'static str, connection: F)
where
    F: Fn(tokio::net::TcpStream, SocketAddr, Arc<Context>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let open = Arc::new(tokio::sync::Semaphore::new(ctx.config.max_connections));
    let mut backoff = std::time::Duration::ZERO;
    loop {
        let (stream, peer) = accept_next(&listener, name, &mut backoff).await;
        let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
            ctx.telemetry.connections_refused.with_label_values(&[name]).inc();
            tracing::debug!(listener = %name, %peer, "connection refused: max_connections are open");
            continue;
        };
        let task = connection(stream, peer, Arc::clone(&ctx));
        tokio::spawn(async move {
            task.await;
            drop(permit);
        });
    }
}

/// The read timeouts of a TCP source connection: [`SourcesConfig::idle_timeout_s`] while
/// no message is under way, and what is left of [`SourcesConfig::read_timeout_s`] once one
/// has begun.
#[derive(Debug)]
pub(crate) struct ReadDeadline {
    idle: std::time::Duration,
    message: std::time::Duration,
    /// When the message under way began.
    started: Option<tokio::time::Instant>,
}

/// Why a connection was cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cutoff {
    /// Silent for the idle timeout.
    Idle,
    /// A message did not arrive whole within the read timeout.
    Slow,
}

impl Cutoff {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Cutoff::Idle => "idle",
            Cutoff::Slow => "slow",
        }
    }
}

impl ReadDeadline {
    pub(crate) fn new(config: &SourcesConfig) -> Self {
        ReadDeadline {
            idle: std::time::Duration::from_secs(config.idle_timeout_s),
            message: std::time::Duration::from_secs(config.read_timeout_s),
            started: None,
        }
    }

    /// A message was completed: the next one under way gets a read timeout of its own (a
    /// sender streaming back to back always has one under way).
    pub(crate) fn progress(&mut self) {
        self.started = None;
    }

    /// Reads into `buf` within the deadline: `partial` says whether a message is under
    /// way (bytes of it are buffered). `Err` when the deadline passed first.
    pub(crate) async fn read<R: tokio::io::AsyncRead + Unpin>(
        &mut self,
        stream: &mut R,
        buf: &mut [u8],
        partial: bool,
    ) -> Result<std::io::Result<usize>, Cutoff> {
        use tokio::io::AsyncReadExt;
        let (deadline, cutoff) = if partial {
            let started = *self.started.get_or_insert_with(tokio::time::Instant::now);
            (started + self.message, Cutoff::Slow)
        } else {
            self.started = None;
            (tokio::time::Instant::now() + self.idle, Cutoff::Idle)
        };
        tokio::time::timeout_at(deadline, stream.read(buf)).await.map_err(|_| cutoff)
    }
}

/// The listeners' liveness: a listener task that ends (it never should) is recorded here,
/// and readiness says which.
#[derive(Debug, Default)]
pub struct Health {
    stopped: Mutex<Vec<(String, String)>>,
}

impl Health {
    /// Every stopped listener with why, empty while all run.
    pub fn stopped(&self) -> Vec<(String, String)> {
        self.stopped.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Runs `task`, listener `name`'s loop, and records it as stopped if it ends or panics.
    pub fn supervise<F>(self: &Arc<Self>, name: &'static str, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let handle = tokio::spawn(task);
        let health = Arc::clone(self);
        tokio::spawn(async move {
            let why = match handle.await {
                Ok(()) => "its loop ended".to_string(),
                Err(e) if e.is_panic() => {
                    let p = e.into_panic();
                    let text = p
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a panic".into());
                    format!("it panicked: {text}")
                }
                Err(_) => "it was cancelled".to_string(),
            };
            tracing::error!(listener = name, why = %why, "a source listener stopped; /ready reports it");
            health.stopped.lock().unwrap_or_else(|p| p.into_inner()).push((name.to_string(), why));
        });
    }
}

/// Refuses tenant names that could not name a table partition, and Graph links whose
/// notifications nothing would authenticate: a link that subscribes (`notification_url`)
/// needs a `client_state` of at least 16 characters, one no other link has (it decides
/// which link, and so which tenant, a notification is for).
fn check_tenants(config: &SourcesConfig) -> Result<(), String> {
    let max = ccstream_schemas::MAX_TENANT_ID_BYTES;
    let tenants = std::iter::once(("default_tenant", &config.default_tenant))
        .chain(config.sbc_tenants.iter().map(|r| ("[[sources.sbc_tenants]]", &r.tenant)))
        .chain(
            config
                .sbc_senders
                .iter()
                .flat_map(|s| s.tenants.iter().filter(|t| *t != "*").map(|t| ("[[sources.sbc_senders]]", t))),
        )
        .chain(config.acs_tenants.iter().map(|r| ("[[sources.acs_tenants]]", &r.tenant)))
        .chain(config.graph.iter().map(|g| ("[[sources.graph]]", &g.tenant)));
    for (at, tenant) in tenants {
        if tenant.is_empty() || tenant.len() > max {
            return Err(format!("{at}: tenant {tenant:?} must be 1 to {max} bytes"));
        }
    }
    let mut states = std::collections::HashSet::new();
    for g in &config.graph {
        let at = format!("[[sources.graph]] tenant {:?}", g.tenant);
        match g.client_state.as_deref() {
            Some(s) if !(16..=128).contains(&s.len()) => {
                return Err(format!("{at}: client_state must be 16 to 128 characters"))
            }
            Some(s) if !states.insert(s) => return Err(format!("{at}: another link has the same client_state")),
            None if g.notification_url.is_some() => {
                return Err(format!(
                    "{at}: notification_url needs a client_state (16 to 128 characters) to authenticate Graph's notifications"
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Binds every configured listener and starts its loop on the current runtime.
pub async fn start(config: SourcesConfig, log: Arc<dyn EventLog>, now_ms: fn() -> i64) -> crate::Result<Running> {
    let credentials = credentials::Credentials::new(config.secret.as_deref(), &config.webhooks, config.insecure)
        .map_err(crate::Error::Credentials)?;
    if config.http.is_some() && credentials.is_empty() && !config.insecure {
        return Err(crate::Error::Credentials(
            "the webhook listener (sources.http) needs credentials: set [sources] secret or \
             [[sources.webhooks]] entries, or `insecure = true` to accept anyone's requests"
                .into(),
        ));
    }
    check_tenants(&config).map_err(crate::Error::Credentials)?;
    if credentials.open() && config.http.is_some() {
        tracing::warn!("sources.insecure = true: the webhooks accept requests without credentials, for any tenant");
    }
    let telemetry = Arc::new(Telemetry::new());
    let ctx = Arc::new(Context {
        credentials,
        sbc: Mutex::new(
            SbcMapper::new(config.default_tenant.clone(), config.sbc_tenants.clone()).with_senders(&config.sbc_senders),
        ),
        acs: AcsMapper::new(config.default_tenant.clone(), config.acs_tenants.clone()),
        publisher: Publisher::spawn(
            log,
            Arc::clone(&telemetry),
            publish::DeadLetterBudget::new(config.dead_letters_per_second, config.dead_letter_burst),
            now_ms,
        ),
        telemetry: Arc::clone(&telemetry),
        graph: std::sync::OnceLock::new(),
        config,
        now_ms,
    });
    let links = ctx.config.graph.iter().map(|g| graph::GraphLink::start(g.clone(), &ctx)).collect();
    let _ = ctx.graph.set(links);
    let bind = |name: &'static str, addr: SocketAddr| move |source| crate::Error::Bind { name, addr, source };
    let mut addrs = Vec::new();
    let c = &ctx.config;
    let health = Arc::new(Health::default());
    for (name, addr) in [("syslog_udp", c.syslog_udp), ("sip_udp", c.sip_udp)] {
        let Some(addr) = addr else { continue };
        let sock = bind_udp(addr, c.udp_receive_buffer_bytes).map_err(bind(name, addr))?;
        addrs.push((name, sock.local_addr().map_err(bind(name, addr))?));
        let ctx = Arc::clone(&ctx);
        match name {
            "syslog_udp" => health.supervise(name, syslog::udp(sock, ctx)),
            _ => health.supervise(name, sip::udp(sock, ctx)),
        }
    }
    for (name, addr) in [("syslog_tcp", c.syslog_tcp), ("sip_tcp", c.sip_tcp)] {
        let Some(addr) = addr else { continue };
        let l = tokio::net::TcpListener::bind(addr).await.map_err(bind(name, addr))?;
        addrs.push((name, l.local_addr().map_err(bind(name, addr))?));
        let ctx = Arc::clone(&ctx);
        match name {
            "syslog_tcp" => health.supervise(name, accept(l, ctx, name, syslog::connection)),
            _ => health.supervise(name, accept(l, ctx, name, sip::connection)),
        }
    }
    if let Some(addr) = c.http {
        let l = tokio::net::TcpListener::bind(addr).await.map_err(bind("http", addr))?;
        addrs.push(("http", l.local_addr().map_err(bind("http", addr))?));
        let tls = match (&c.tls_cert, &c.tls_key) {
            (Some(cert), Some(key)) => Some(tls::acceptor(cert, key)?),
            (None, None) => None,
            _ => return Err(crate::Error::TlsHalf),
        };
        health.supervise("http", http::serve(l, tls, Arc::clone(&ctx)));
    }
    Ok(Running { addrs, telemetry, health, publisher: ctx.publisher.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_listener_that_stops_is_reported() {
        let health = Arc::new(Health::default());
        health.supervise("syslog_udp", async { panic!("receive buffer gone") });
        health.supervise("sip_udp", std::future::pending());
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while health.stopped().is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "the stopped listener was not reported");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(health.stopped(), vec![("syslog_udp".to_string(), "it panicked: receive buffer gone".to_string())]);
    }
}
