//! Every metric the source loops expose, in one place. Labels: the source (`sbc.audiocodes`,
//! `acs.jobrouter`, …) and, for rejections, a reason class — never an id. Updated per message
//! or request, never per row of a table.

use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

pub const RECEIVED_TOTAL: &str = "ccstream_ingest_received_total";
pub const RECEIVED_BYTES_TOTAL: &str = "ccstream_ingest_received_bytes_total";
pub const ACCEPTED_TOTAL: &str = "ccstream_ingest_accepted_events_total";
pub const REJECTED_TOTAL: &str = "ccstream_ingest_rejected_total";
pub const UNMAPPED_TOTAL: &str = "ccstream_ingest_unmapped_total";
pub const LAST_SEEN_SECONDS: &str = "ccstream_ingest_last_seen_timestamp_seconds";
pub const APPEND_FAILURES_TOTAL: &str = "ccstream_ingest_append_failures_total";
pub const DEAD_LETTERS_DROPPED_TOTAL: &str = "ccstream_ingest_dead_letters_dropped_total";
pub const CONNECTIONS_REFUSED_TOTAL: &str = "ccstream_ingest_connections_refused_total";
pub const CONNECTIONS_CUT_TOTAL: &str = "ccstream_ingest_connections_cut_total";
pub const REQUESTS_REFUSED_TOTAL: &str = "ccstream_ingest_requests_refused_total";

pub const LABEL_SOURCE: &str = "source";
pub const LABEL_LISTENER: &str = "listener";
pub const LABEL_REASON: &str = "reason";
pub const LABEL_EVENT: &str = "event";

/// Why input was rejected: the `reason` label (the full reason goes to `dead_letters`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Not parseable in the source's format.
    Malformed,
    /// Parsed, but not a valid event (a required field missing or bad).
    Invalid,
    /// Larger than the size limit.
    TooLarge,
    /// Missing or wrong secret / client state.
    Unauthorized,
    /// A protocol the endpoint does not serve (wrong method, event package, content type).
    Unsupported,
}

impl Reject {
    pub fn as_str(self) -> &'static str {
        match self {
            Reject::Malformed => "malformed",
            Reject::Invalid => "invalid",
            Reject::TooLarge => "too_large",
            Reject::Unauthorized => "unauthorized",
            Reject::Unsupported => "unsupported",
        }
    }
}

/// The source loops' metrics and their registry.
#[derive(Debug)]
pub struct Telemetry {
    registry: Registry,
    /// Messages, datagrams or requests received, per source.
    pub received: IntCounterVec,
    pub received_bytes: IntCounterVec,
    /// Canonical events published, per source.
    pub accepted: IntCounterVec,
    /// Rejected input (each one dead-lettered), per source and reason.
    pub rejected: IntCounterVec,
    /// Valid input with no canonical meaning, per source and source event name.
    pub unmapped: IntCounterVec,
    /// When the source last sent anything (Unix seconds).
    pub last_seen: IntGaugeVec,
    /// Appends to the event log that failed (the sender was told to retry, or, for UDP, the
    /// input is lost and counted here).
    pub append_failures: IntCounterVec,
    /// Dead letters not written because their source passed its rate, per source.
    pub dead_letters_dropped: IntCounterVec,
    /// Connections closed at once because the listener had `max_connections` open.
    pub connections_refused: IntCounterVec,
    /// Connections cut off by a timeout, per listener and reason (`idle`, `slow`).
    pub connections_cut: IntCounterVec,
    /// Webhook requests refused (`busy`: `max_concurrent_requests`; `timeout`: not
    /// answered within `request_timeout_s`; `slow`: a body not read within `read_timeout_s`).
    pub requests_refused: IntCounterVec,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

impl Telemetry {
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("metric registered once");
            c
        };
        let received = counter(RECEIVED_TOTAL, "Messages, datagrams or requests received", &[LABEL_SOURCE]);
        let received_bytes = counter(RECEIVED_BYTES_TOTAL, "Bytes received", &[LABEL_SOURCE]);
        let accepted = counter(ACCEPTED_TOTAL, "Canonical events published to the log", &[LABEL_SOURCE]);
        let rejected = counter(REJECTED_TOTAL, "Rejected inputs, each dead-lettered", &[LABEL_SOURCE, LABEL_REASON]);
        let unmapped =
            counter(UNMAPPED_TOTAL, "Valid source events with no canonical meaning", &[LABEL_SOURCE, LABEL_EVENT]);
        let append_failures = counter(APPEND_FAILURES_TOTAL, "Appends to the event log that failed", &[LABEL_SOURCE]);
        let dead_letters_dropped = counter(
            DEAD_LETTERS_DROPPED_TOTAL,
            "Dead letters not written because their source passed sources.dead_letters_per_second",
            &[LABEL_SOURCE],
        );
        let last_seen = IntGaugeVec::new(
            Opts::new(LAST_SEEN_SECONDS, "When the source last sent input (Unix seconds)"),
            &[LABEL_SOURCE],
        )
        .expect("valid metric");
        registry.register(Box::new(last_seen.clone())).expect("metric registered once");
        let connections_refused = counter(
            CONNECTIONS_REFUSED_TOTAL,
            "Connections closed at once because sources.max_connections were open",
            &[LABEL_LISTENER],
        );
        let connections_cut =
            counter(CONNECTIONS_CUT_TOTAL, "Connections cut off by a timeout", &[LABEL_LISTENER, LABEL_REASON]);
        let requests_refused = counter(REQUESTS_REFUSED_TOTAL, "Webhook requests refused", &[LABEL_REASON]);
        Telemetry {
            connections_refused,
            connections_cut,
            requests_refused,
            registry,
            received,
            received_bytes,
            accepted,
            rejected,
            unmapped,
            last_seen,
            append_failures,
            dead_letters_dropped,
        }
    }

    /// Counts one input of `bytes` from `source` at `now_ms`.
    pub fn seen(&self, source: &str, bytes: usize, now_ms: i64) {
        self.received.with_label_values(&[source]).inc();
        self.received_bytes.with_label_values(&[source]).inc_by(bytes as u64);
        self.last_seen.with_label_values(&[source]).set(now_ms.div_euclid(1000));
    }

    pub fn reject(&self, source: &str, reason: Reject) {
        self.rejected.with_label_values(&[source, reason.as_str()]).inc();
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("text encoding cannot fail");
        String::from_utf8(buf).expect("the text format is UTF-8")
    }
}
