//! ccstream's sources of canonical events.
//!
//! - [`file`]: canonical events from files — JSON Lines (plain or gzip) and Parquet — read
//!   in chunks of whole lines or record batches, with the position of each chunk so that
//!   rejected input can be traced to its file and line.
//!
//! - [`file::records`]: input framed as event-log records (events and dead letters).

pub mod file;

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
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
