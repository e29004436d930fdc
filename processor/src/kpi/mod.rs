//! The contact-center folds: deduplicated call events → per-call and per-leg state → call
//! facts, agent legs and interval partials.
//!
//! Invariants (what makes the results exact and independent of order and batching):
//! - Every event is folded at most once: the fold keeps, per call, the ids of the events it
//!   has folded, and skips copies.
//! - State is only counts, integer-ms sums, mins and maxes: all commutative and
//!   associative, so any order of events and any batch boundaries give the same state.
//!   Ties (two `call_queued` at the same instant) break on the name, never on arrival.
//! - Durations are differences of integer-ms sums; seconds appear only in the final
//!   division, as in the oracle.

mod calls;
mod partials;
mod quality;
mod revisions;

pub use calls::{CallFold, CallName, Emission, FoldOutput, FoldStats, LiveQueue, Settled};
pub use quality::{mos, Cqd, R0};
pub use revisions::{corrections_batch, Correction, Horizon};

/// Parameters that outputs are computed at (the oracle's defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    /// Answered with wait ≤ this (ms) meets the service level.
    pub sl_threshold_ms: i64,
    /// Abandoned with wait < this (ms) is a short abandon.
    pub short_abandon_ms: i64,
    /// Audio stream classification thresholds.
    pub cqd: Cqd,
}

impl Default for Params {
    fn default() -> Self {
        Params { sl_threshold_ms: 20_000, short_abandon_ms: 5_000, cqd: Cqd::default() }
    }
}
