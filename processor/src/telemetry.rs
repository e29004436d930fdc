//! Every metric the processor exposes, in one place (names, labels, units).
//!
//! Two families: `ccstream_processor_*` is the pipeline's own health; `ccstream_kpi_*` is
//! the contact center's real-time picture per tenant and entry queue. Labels never carry
//! call or agent ids. Metrics are updated per poll and per commit, never per row.

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::kpi::LiveQueue;

pub const RECORDS_TOTAL: &str = "ccstream_processor_records_total";
pub const EVENTS_TOTAL: &str = "ccstream_processor_events_total";
pub const DUPLICATES_TOTAL: &str = "ccstream_processor_duplicates_total";
pub const DEAD_LETTERS_TOTAL: &str = "ccstream_processor_dead_letters_total";
pub const COMMITS_TOTAL: &str = "ccstream_processor_commits_total";
pub const COMPACTIONS_TOTAL: &str = "ccstream_processor_compactions_total";
pub const COMPACTED_FILES_TOTAL: &str = "ccstream_processor_compacted_files_total";
pub const COMPACTION_FAILURES_TOTAL: &str = "ccstream_processor_compaction_failures_total";
pub const COMMIT_DURATION_SECONDS: &str = "ccstream_processor_commit_duration_seconds";
pub const CONSUMER_LAG_RECORDS: &str = "ccstream_processor_consumer_lag_records";
pub const EVENT_TIME_LAG_SECONDS: &str = "ccstream_processor_event_time_lag_seconds";
pub const LATE_EVENTS_TOTAL: &str = "ccstream_processor_late_events_total";
pub const FUTURE_EVENTS_TOTAL: &str = "ccstream_processor_future_events_total";
pub const REVISIONS_TOTAL: &str = "ccstream_processor_revisions_total";
pub const CORRECTIONS_TOTAL: &str = "ccstream_processor_corrections_total";
pub const WATERMARK_DELAY_SECONDS: &str = "ccstream_processor_watermark_delay_seconds";
pub const PENDING_CALLS: &str = "ccstream_processor_pending_calls";
pub const REFOLDED_CALLS_TOTAL: &str = "ccstream_processor_refolded_calls_total";
pub const EVICTED_CALLS_TOTAL: &str = "ccstream_processor_evicted_calls_total";
pub const HELD_CALLS: &str = "ccstream_processor_held_calls";
pub const HELD_PARTIALS: &str = "ccstream_processor_held_partials";
pub const UNPUBLISHED_QUEUES: &str = "ccstream_kpi_unpublished_queues";

/// (Tenant, queue) label pairs the KPI metrics carry at most: queue names come from the
/// events, so a sender must not be able to grow the metrics without bound. Pairs past it
/// are counted in [`UNPUBLISHED_QUEUES`] (the tables have them all).
pub const MAX_QUEUE_SERIES: usize = 10_000;

pub const KPI_OFFERED_TOTAL: &str = "ccstream_kpi_offered_calls_total";
pub const KPI_ANSWERED_TOTAL: &str = "ccstream_kpi_answered_calls_total";
pub const KPI_ABANDONED_TOTAL: &str = "ccstream_kpi_abandoned_calls_total";
pub const KPI_ANSWERED_WITHIN_SL_TOTAL: &str = "ccstream_kpi_answered_within_sl_calls_total";
pub const KPI_CALLS_WAITING: &str = "ccstream_kpi_calls_waiting";
pub const KPI_LONGEST_WAIT_SECONDS: &str = "ccstream_kpi_longest_wait_seconds";
pub const KPI_SERVICE_LEVEL_RATIO: &str = "ccstream_kpi_service_level_ratio";

pub const LABEL_PARTITION: &str = "partition";
pub const LABEL_TENANT: &str = "tenant";
pub const LABEL_QUEUE: &str = "queue";
pub const LABEL_TABLE: &str = "table";

/// The processor's metrics and their registry.
#[derive(Debug)]
pub struct Telemetry {
    registry: Registry,
    pub records: IntCounter,
    pub events: IntCounter,
    pub duplicates: IntCounter,
    pub dead_letters: IntCounter,
    pub commits: IntCounter,
    pub compactions: IntCounter,
    pub compacted_files: IntCounter,
    pub compaction_failures: IntCounter,
    pub commit_duration: Histogram,
    pub consumer_lag: IntGaugeVec,
    pub event_time_lag: Gauge,
    pub late_events: IntCounter,
    pub future_events: IntCounter,
    pub revisions: IntCounterVec,
    pub corrections: IntCounter,
    pub watermark_delay: GaugeVec,
    pub pending_calls: IntGaugeVec,
    pub held_calls: IntGaugeVec,
    pub held_partials: IntGaugeVec,
    pub refolded_calls: IntCounter,
    pub evicted_calls: IntCounter,
    offered: IntCounterVec,
    answered: IntCounterVec,
    abandoned: IntCounterVec,
    answered_within_sl: IntCounterVec,
    waiting: IntGaugeVec,
    longest_wait: GaugeVec,
    service_level: GaugeVec,
    /// Totals last reported per (tenant, queue), to turn state totals into counter increments.
    last: Mutex<HashMap<(String, String), [u64; 4]>>,
    /// (Tenant, queue) pairs not published for [`MAX_QUEUE_SERIES`].
    pub unpublished_queues: prometheus::IntGauge,
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("registered once");
    c
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

impl Telemetry {
    pub fn new() -> Self {
        let r = Registry::new();
        let queue_labels = [LABEL_TENANT, LABEL_QUEUE];
        let counter_vec = |name: &str, help: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &queue_labels).expect("valid metric");
            r.register(Box::new(c.clone())).expect("registered once");
            c
        };
        let offered = counter_vec(KPI_OFFERED_TOTAL, "Calls that entered a queue (by entry queue)");
        let answered = counter_vec(KPI_ANSWERED_TOTAL, "Calls answered by an agent");
        let abandoned = counter_vec(KPI_ABANDONED_TOTAL, "Calls abandoned before an answer");
        let answered_within_sl =
            counter_vec(KPI_ANSWERED_WITHIN_SL_TOTAL, "Calls answered within the service-level threshold");
        let waiting =
            IntGaugeVec::new(Opts::new(KPI_CALLS_WAITING, "Calls queued now, not yet answered"), &queue_labels)
                .expect("valid metric");
        let longest_wait = GaugeVec::new(
            Opts::new(KPI_LONGEST_WAIT_SECONDS, "Longest current wait among waiting calls (event time)"),
            &queue_labels,
        )
        .expect("valid metric");
        let service_level = GaugeVec::new(
            Opts::new(
                KPI_SERVICE_LEVEL_RATIO,
                "Service level so far in the latest 15-minute interval: answered within the threshold / (answered + abandoned - short abandons)",
            ),
            &queue_labels,
        )
        .expect("valid metric");
        let consumer_lag = IntGaugeVec::new(
            Opts::new(CONSUMER_LAG_RECORDS, "Records in the log not folded yet, per partition"),
            &[LABEL_PARTITION],
        )
        .expect("valid metric");
        let commit_duration = Histogram::with_opts(
            HistogramOpts::new(COMMIT_DURATION_SECONDS, "Time to commit all tables once")
                .buckets(vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
        )
        .expect("valid metric");
        let event_time_lag = Gauge::new(EVENT_TIME_LAG_SECONDS, "Wall-clock time minus the latest event time folded")
            .expect("valid metric");
        let revisions = IntCounterVec::new(
            Opts::new(REVISIONS_TOTAL, "Derived rows written again with a new revision (late events, restarts)"),
            &[LABEL_TABLE],
        )
        .expect("valid metric");
        let watermark_delay = GaugeVec::new(
            Opts::new(WATERMARK_DELAY_SECONDS, "Wall-clock time minus the partition's event-time watermark"),
            &[LABEL_PARTITION],
        )
        .expect("valid metric");
        let pending_calls = IntGaugeVec::new(
            Opts::new(PENDING_CALLS, "Calls held that are not written yet or changed since (open calls)"),
            &[LABEL_PARTITION],
        )
        .expect("valid metric");
        let held_calls = IntGaugeVec::new(
            Opts::new(HELD_CALLS, "Calls whose state the processor holds (open and retained)"),
            &[LABEL_PARTITION],
        )
        .expect("valid metric");
        let held_partials = IntGaugeVec::new(
            Opts::new(HELD_PARTIALS, "Interval partials the processor holds and rewrites at each commit (not sealed)"),
            &[LABEL_PARTITION],
        )
        .expect("valid metric");
        for m in [
            Box::new(revisions.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(held_partials.clone()),
            Box::new(watermark_delay.clone()),
            Box::new(pending_calls.clone()),
            Box::new(held_calls.clone()),
            Box::new(waiting.clone()),
            Box::new(longest_wait.clone()),
            Box::new(service_level.clone()),
            Box::new(consumer_lag.clone()),
            Box::new(commit_duration.clone()),
            Box::new(event_time_lag.clone()),
        ] {
            r.register(m).expect("registered once");
        }
        Telemetry {
            records: counter(&r, RECORDS_TOTAL, "Log records read"),
            events: counter(&r, EVENTS_TOTAL, "Valid events folded (copies included)"),
            duplicates: counter(&r, DUPLICATES_TOTAL, "Event copies dropped as duplicates"),
            dead_letters: counter(&r, DEAD_LETTERS_TOTAL, "Rejected records written to dead_letters"),
            commits: counter(&r, COMMITS_TOTAL, "Commits of all tables"),
            compactions: counter(&r, COMPACTIONS_TOTAL, "events partitions rewritten into fewer files"),
            compacted_files: counter(&r, COMPACTED_FILES_TOTAL, "events files replaced by compactions"),
            compaction_failures: counter(
                &r,
                COMPACTION_FAILURES_TOTAL,
                "Compactions that failed (tried again later; no row is affected)",
            ),
            late_events: counter(&r, LATE_EVENTS_TOTAL, "Events older than their partition's watermark on arrival"),
            future_events: counter(
                &r,
                FUTURE_EVENTS_TOTAL,
                "Events dead-lettered for a time further ahead of their append than --max-future-skew-ms",
            ),
            corrections: counter(&r, CORRECTIONS_TOTAL, "Changed columns of revised rows written to corrections"),
            refolded_calls: counter(
                &r,
                REFOLDED_CALLS_TOTAL,
                "Evicted calls folded again from the events table for a late event",
            ),
            evicted_calls: counter(&r, EVICTED_CALLS_TOTAL, "Written calls whose state left memory after retention"),
            unpublished_queues: {
                let g = prometheus::IntGauge::new(
                    UNPUBLISHED_QUEUES,
                    "(Tenant, queue) pairs left out of the ccstream_kpi_* metrics past their limit",
                )
                .expect("valid metric");
                r.register(Box::new(g.clone())).expect("registered once");
                g
            },
            revisions,
            watermark_delay,
            pending_calls,
            held_calls,
            held_partials,
            registry: r,
            commit_duration,
            consumer_lag,
            event_time_lag,
            offered,
            answered,
            abandoned,
            answered_within_sl,
            waiting,
            longest_wait,
            service_level,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// Drops the per-partition series of a partition this processor no longer owns.
    pub fn forget_partition(&self, partition: u32) {
        let label = partition.to_string();
        let _ = self.consumer_lag.remove_label_values(&[&label]);
        let _ = self.watermark_delay.remove_label_values(&[&label]);
        let _ = self.pending_calls.remove_label_values(&[&label]);
        let _ = self.held_calls.remove_label_values(&[&label]);
        let _ = self.held_partials.remove_label_values(&[&label]);
    }

    /// Publishes the live queues (summed over partitions by the caller), named.
    pub fn observe_queues(&self, queues: &[(String, String, LiveQueue)]) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let mut unpublished = 0;
        for (tenant, queue, q) in queues {
            let labels = [tenant.as_str(), queue.as_str()];
            let now = [q.offered, q.answered, q.abandoned, q.answered_within_sl];
            let key = (tenant.clone(), queue.clone());
            if last.len() >= MAX_QUEUE_SERIES && !last.contains_key(&key) {
                unpublished += 1;
                continue;
            }
            let before = last.entry(key).or_insert([0; 4]);
            for (i, c) in [&self.offered, &self.answered, &self.abandoned, &self.answered_within_sl].iter().enumerate()
            {
                // State only grows between restarts; a restart starts the counters again.
                c.with_label_values(&labels).inc_by(now[i].saturating_sub(before[i]));
            }
            *before = now;
            self.waiting.with_label_values(&labels).set(q.waiting as i64);
            self.longest_wait.with_label_values(&labels).set(q.longest_wait_ms.max(0) as f64 / 1000.0);
            let denom = (q.interval_answered + q.interval_abandoned).saturating_sub(q.interval_short_abandoned);
            if denom > 0 {
                self.service_level.with_label_values(&labels).set(q.interval_answered_within_sl as f64 / denom as f64);
            }
        }
        self.unpublished_queues.set(unpublished);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("text encoding cannot fail");
        String::from_utf8(buf).expect("the text format is UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_past_the_limit_are_counted_not_published() {
        let t = Telemetry::new();
        let queues: Vec<(String, String, LiveQueue)> = (0..MAX_QUEUE_SERIES + 50)
            .map(|i| ("t".to_string(), format!("q{i}"), LiveQueue { offered: 1, ..LiveQueue::default() }))
            .collect();
        t.observe_queues(&queues);
        t.observe_queues(&queues);
        let text = t.render();
        let series = text.lines().filter(|l| l.starts_with(KPI_OFFERED_TOTAL) && l.contains('{')).count();
        assert_eq!(series, MAX_QUEUE_SERIES);
        assert_eq!(t.unpublished_queues.get(), 50);
    }
}
