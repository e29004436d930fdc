//! ccstream's sources of canonical events.
//!
//! - [`file`]: canonical events from files — JSON Lines (plain or gzip) and Parquet — read
//!   in chunks of whole lines or record batches, with the position of each chunk so that
//!   rejected input can be traced to its file and line.
//! - [`sbc`]: SBC CDRs (AudioCodes, over syslog or from files) and RFC 6035 voice-quality
//!   reports (SIP), sans-IO parsers and their mapping.
//! - [`acs`]: Azure Communication Services — Event Grid deliveries (Job Router, calling
//!   events) and Call Automation callbacks — sans-IO parsers and their mapping.
//! - [`listen`]: the thin network loops around those parsers (syslog, SIP, webhooks), which
//!   publish to the event log.
//! - [`telemetry`]: the source loops' metrics.

pub mod acs;

/// Whether a presented secret (webhook secret, Graph `clientState`) equals the expected one,
/// in time that does not depend on where they differ.
pub fn secret_matches(presented: &[u8], expected: &[u8]) -> bool {
    presented.len() == expected.len() && presented.iter().zip(expected).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub mod file;
pub mod graph;
pub mod listen;
pub mod sbc;
pub mod telemetry;
/// What failed while reading a source.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("reading Parquet file {path}: {source}")]
    Parquet {
        path: String,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error(
        "{path}: not a canonical events file (expected .jsonl, .ndjson, .json, .parquet, optionally .gz for JSON)"
    )]
    UnknownFormat { path: String },
    #[error("writing rows of {path} as JSON: {source}")]
    Json {
        path: String,
        #[source]
        source: arrow::error::ArrowError,
    },
    #[error("no input files found under {0}")]
    NoInput(String),
    #[error(transparent)]
    Tls(#[from] listen::tls::TlsError),
    #[error("sources.tls_cert and sources.tls_key go together: set both or neither")]
    TlsHalf,
    #[error("{0}")]
    Credentials(String),
    #[error("binding the {name} listener to {addr}: {source}")]
    Bind {
        name: &'static str,
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
