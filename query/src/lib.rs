//! ccstream's query engine: one DataFusion `SessionContext` over the Delta tables of a data
//! directory, with the metric views and the query-time variants, shared by every frontend.
//!
//! - [`engine`]: opening tables, the views `interval_metrics` and `agent_day_metrics`.
//! - [`functions`]: `time_bucket` (local-time intervals in an IANA zone) and the table
//!   functions `interval_metrics_at`, `service_level_variants` and `agent_day_metrics_at`.
//! - [`server`]: the query service of `ccstream serve` — table snapshots refreshed as
//!   commits land, per-query sessions and limits, a runtime of its own; [`catalog`] the
//!   scoped schemas that keep tenants apart, [`access`] principals and credentials.
//! - [`http`] (axum), [`pg`] (the Postgres wire) and [`flight`] (Arrow Flight SQL) are its
//!   frontends; [`telemetry`] their metrics; [`describe`] the definitions `/v1/tables`
//!   serves.

pub mod access;
pub mod catalog;
pub mod describe;
pub mod engine;
pub mod entra;
pub mod flight;
pub mod functions;
pub mod http;
pub mod pg;
pub mod server;
pub mod telemetry;

pub use engine::QueryEngine;
pub use server::{ServeConfig, Service};

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
