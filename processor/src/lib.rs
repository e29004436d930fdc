//! ccstream's processor: canonical events → Arrow → the call fold → Delta tables.
//!
//! - [`batch`]: JSON lines and record batches decoded into the typed, interned columns the
//!   fold reads (no per-row allocation after warm-up).
//! - [`fold_parquet`]: Parquet files of canonical events read page by page straight into
//!   those columns.
//! - [`kpi`]: the hot synchronous folds (call facts, agent legs, interval partials).
//! - [`telemetry`]: every metric the processor exposes (names in one place).
//! - [`sink`]: Delta tables on an object store (local directory by default); every table
//!   commit is atomic, so readers see the previous version or the new one, never a mix.

pub mod batch;
pub mod flat_parquet;
pub mod fold_parquet;
pub mod kpi;
pub mod sink;
pub mod telemetry;

/// What failed in the processor.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("input has no column `{0}`")]
    MissingColumn(&'static str),
    #[error("column `{column}` has type {found}, which ccstream cannot read")]
    ColumnType { column: &'static str, found: String },
    #[error("Parquet column `{column}`, row group {group}: {reason}")]
    ParquetPage { column: &'static str, group: usize, reason: String },
    #[error("Arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("writing Delta table {table} at {location}: {source}")]
    WriteTable {
        table: String,
        location: String,
        #[source]
        source: Box<deltalake::DeltaTableError>,
    },
    #[error(
        "another processor committed offsets of {app_ids:?} to {table} meanwhile: nothing of this commit \
         landed (it is not retried, so no row is written twice); restart the processor to re-read the tables"
    )]
    OffsetsTaken { table: String, app_ids: Vec<String> },
    #[error("making {path} durable: {source}")]
    Sync {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("reading a table back: {0}")]
    ReadTable(#[from] deltalake::datafusion::error::DataFusionError),
    #[error("a write to {table} gave runs covering {covered} of its {rows} rows")]
    Runs { table: String, rows: usize, covered: usize },
    #[error("row {row} of a write to {table} has a NULL or unsupported partition value")]
    PartitionValue { table: String, row: usize },
    #[error("encoding a file of {table}: {source}")]
    EncodeFile {
        table: String,
        #[source]
        source: flat_parquet::FlatError,
    },
    #[error("storing file {path} of {table}: {source}")]
    PutFile {
        table: String,
        path: String,
        #[source]
        source: deltalake::ObjectStoreError,
    },
    #[error("deleting file {path} of {table} (a write given up): {source}")]
    DeleteFile {
        table: String,
        path: String,
        #[source]
        source: deltalake::ObjectStoreError,
    },
    #[error("statistics of a file of {table}: {source}")]
    FileStats {
        table: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the fold settled calls and was emitted at the end of time: it takes no more emits")]
    FoldEnded,
    #[error("table location {location:?} is not a valid URL or path: {reason}")]
    Location { location: String, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
