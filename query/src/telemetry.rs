//! Every metric `ccstream serve` exposes, in one place (names, labels, units).
//!
//! Labels are bounded: `frontend` is `http` or `pg`, `kind` one of [`ErrorKind::as_str`],
//! `outcome` `ok` or `error`. No SQL text, principal or tenant appears in a label.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub const QUERIES_TOTAL: &str = "ccstream_query_queries_total";
pub const QUERY_DURATION_SECONDS: &str = "ccstream_query_duration_seconds";
pub const ERRORS_TOTAL: &str = "ccstream_query_errors_total";
pub const ROWS_OUT_TOTAL: &str = "ccstream_query_rows_out_total";
pub const BYTES_OUT_TOTAL: &str = "ccstream_query_bytes_out_total";
pub const ACTIVE_SESSIONS: &str = "ccstream_query_active_sessions";
pub const ACTIVE_QUERIES: &str = "ccstream_query_active_queries";
pub const AUTH_FAILURES_TOTAL: &str = "ccstream_query_auth_failures_total";
pub const SNAPSHOT_GENERATION: &str = "ccstream_query_snapshot_generation";
pub const REFRESH_DURATION_SECONDS: &str = "ccstream_query_refresh_duration_seconds";
pub const BACKGROUND_QUERIES_TOTAL: &str = "ccstream_query_background_queries_total";

pub const LABEL_FRONTEND: &str = "frontend";
pub const LABEL_KIND: &str = "kind";
pub const LABEL_OUTCOME: &str = "outcome";

/// Why a query failed, as a bounded label and an HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad SQL, an unknown table, a type error: the client's to fix (400).
    Sql,
    /// A statement that would change something (400, SQLSTATE 25006).
    ReadOnly,
    /// Credentials missing or wrong (401).
    Unauthenticated,
    /// Not allowed for this principal (403).
    Forbidden,
    /// Over the time limit (408).
    Timeout,
    /// Over the row or memory limit (413).
    TooLarge,
    /// Too many queries at once (429).
    Busy,
    /// The tables are not loaded yet (503).
    NotReady,
    /// Cancelled by the client.
    Cancelled,
    /// Anything else (500).
    Internal,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Sql => "sql",
            ErrorKind::ReadOnly => "read_only",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::Timeout => "timeout",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::Busy => "busy",
            ErrorKind::NotReady => "not_ready",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Internal => "internal",
        }
    }
}

/// The server's metrics and their registry.
#[derive(Debug)]
pub struct Telemetry {
    registry: Registry,
    pub queries: IntCounterVec,
    pub duration: HistogramVec,
    pub errors: IntCounterVec,
    pub rows_out: IntCounterVec,
    pub bytes_out: IntCounterVec,
    pub active_sessions: IntGaugeVec,
    pub active_queries: IntGauge,
    pub auth_failures: IntCounterVec,
    pub snapshot_generation: IntGauge,
    pub refresh_duration: Histogram,
    pub background_queries: prometheus::IntCounter,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

impl Telemetry {
    pub fn new() -> Telemetry {
        let registry = Registry::new();
        let fe = [LABEL_FRONTEND];
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let queries = counter(QUERIES_TOTAL, "Queries run, by frontend and outcome", &[LABEL_FRONTEND, LABEL_OUTCOME]);
        let errors =
            counter(ERRORS_TOTAL, "Failed queries and requests, by frontend and kind", &[LABEL_FRONTEND, LABEL_KIND]);
        let rows_out = counter(ROWS_OUT_TOTAL, "Result rows sent", &fe);
        let bytes_out = counter(BYTES_OUT_TOTAL, "Result bytes sent (HTTP bodies)", &fe);
        let auth_failures = counter(AUTH_FAILURES_TOTAL, "Requests and connections refused for their credentials", &fe);
        let duration = HistogramVec::new(
            HistogramOpts::new(QUERY_DURATION_SECONDS, "Time from a query's arrival to its last row").buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ]),
            &fe,
        )
        .expect("valid metric");
        registry.register(Box::new(duration.clone())).expect("unique metric");
        let active_sessions =
            IntGaugeVec::new(Opts::new(ACTIVE_SESSIONS, "Open Postgres connections and HTTP requests"), &fe)
                .expect("valid metric");
        registry.register(Box::new(active_sessions.clone())).expect("unique metric");
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let active_queries = gauge(ACTIVE_QUERIES, "Queries running now");
        let snapshot_generation = gauge(SNAPSHOT_GENERATION, "Table snapshots loaded since start (1 = the first)");
        let refresh_duration = Histogram::with_opts(
            HistogramOpts::new(REFRESH_DURATION_SECONDS, "Time to look for and load new table versions")
                .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
        )
        .expect("valid metric");
        registry.register(Box::new(refresh_duration.clone())).expect("unique metric");
        let background_queries = prometheus::IntCounter::new(
            BACKGROUND_QUERIES_TOTAL,
            "Queries run on the background pool (their scans past serve.background_rows)",
        )
        .expect("valid metric");
        registry.register(Box::new(background_queries.clone())).expect("unique metric");
        Telemetry {
            registry,
            queries,
            duration,
            errors,
            rows_out,
            bytes_out,
            active_sessions,
            active_queries,
            auth_failures,
            snapshot_generation,
            refresh_duration,
            background_queries,
        }
    }

    /// A request or connection of `frontend` refused for its credentials.
    pub fn auth_failed(&self, frontend: &str) {
        self.auth_failures.with_label_values(&[frontend]).inc();
        self.errors.with_label_values(&[frontend, ErrorKind::Unauthenticated.as_str()]).inc();
    }

    /// A query of `frontend` that failed (before or during its result).
    pub fn query_failed(&self, frontend: &str, kind: ErrorKind) {
        self.errors.with_label_values(&[frontend, kind.as_str()]).inc();
        self.queries.with_label_values(&[frontend, "error"]).inc();
    }

    /// A query of `frontend` that sent its last row after `elapsed`.
    pub fn query_done(&self, frontend: &str, elapsed: std::time::Duration) {
        self.queries.with_label_values(&[frontend, "ok"]).inc();
        self.duration.with_label_values(&[frontend]).observe(elapsed.as_secs_f64());
    }

    /// The Prometheus text format of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("text encoding");
        String::from_utf8(buf).expect("utf-8 metrics")
    }
}
