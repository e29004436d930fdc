//! ccstream's query engine: one DataFusion `SessionContext` over the Delta tables of a data
//! directory, with the metric views and the query-time variants, shared by every frontend.
//!
//! - [`engine`]: opening tables, the views `interval_metrics` and `agent_day_metrics`.
//! - [`functions`]: `time_bucket` (local-time intervals in an IANA zone) and the table
//!   functions `interval_metrics_at`, `service_level_variants` and `agent_day_metrics_at`.

pub mod engine;
pub mod functions;

pub use engine::QueryEngine;

/// What failed in the query engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    DataFusion(Box<datafusion::error::DataFusionError>),
    #[error("opening table {table} at {location}: {source}")]
    OpenTable {
        table: String,
        location: String,
        #[source]
        source: Box<deltalake::DeltaTableError>,
    },
    #[error("data directory {location:?}: {reason}")]
    Location { location: String, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<datafusion::error::DataFusionError> for Error {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        Error::DataFusion(Box::new(e))
    }
}
