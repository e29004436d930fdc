//! What the tables, views, columns and table functions mean, for `/v1/tables`: the
//! definitions of `docs/metrics.md`, read from the document itself so the two never differ.
//!
//! A column's definition is the row of a table in `docs/metrics.md` whose first cell names
//! the column in backticks, in the section whose heading names the table or view (the
//! service-level variants count for `interval_metrics`).

use std::collections::HashMap;
use std::sync::OnceLock;

use ccstream_schemas::{
    TABLE_AGENT_LEGS, TABLE_CALL_FACTS, TABLE_CORRECTIONS, TABLE_DEAD_LETTERS, TABLE_EVENTS, TABLE_INTERVAL_PARTIALS,
    VIEW_AGENT_DAY_METRICS, VIEW_AGENT_OCCUPANCY, VIEW_AGENT_STATE_TIME, VIEW_INTERVAL_METRICS, VIEW_MEDIA_STREAMS,
    VIEW_SBC_LEGS,
};

const METRICS_DOC: &str = include_str!("../../docs/metrics.md");

/// The table functions: name, arguments, meaning.
pub const FUNCTIONS: [(&str, &str, &str); 3] = [
    (
        "interval_metrics_at",
        "minutes, zone, sl_threshold_s, short_abandon_s, sl_comparison, genesys_flowouts, genesys_exclude_short",
        "every service-level variant at any threshold, 15/30/60-minute or daily intervals in any IANA zone, from call_facts",
    ),
    ("interval_rollup", "minutes, zone", "interval_metrics rolled up from the partials to 15/30/60 minutes or local days"),
    (
        "agent_day_metrics_at",
        "zone, poor_jitter_ms, poor_loss_rate, poor_rtt_ms, poor_degradation",
        "agent days in a zone, with CQD thresholds",
    ),
];

pub fn is_view(name: &str) -> bool {
    matches!(
        name,
        VIEW_INTERVAL_METRICS
            | VIEW_AGENT_DAY_METRICS
            | VIEW_SBC_LEGS
            | VIEW_MEDIA_STREAMS
            | VIEW_AGENT_STATE_TIME
            | VIEW_AGENT_OCCUPANCY
    )
}

/// One line about a table or view.
pub fn table(name: &str) -> &'static str {
    match name {
        TABLE_EVENTS => "one row per unique event (partitioned by tenant and UTC day)",
        TABLE_CALL_FACTS => {
            "one row per call: queue, outcome, wait, talk, hold, after-call work, handle time, transfers, overflow, MOS"
        }
        TABLE_AGENT_LEGS => "one row per (call, agent) that the agent answered, with media quality",
        TABLE_INTERVAL_PARTIALS => {
            "mergeable aggregates per tenant × entry queue × 15-minute UTC interval × log partition"
        }
        TABLE_CORRECTIONS => "one row per column that a later revision of a call_facts or interval_partials row changed",
        TABLE_DEAD_LETTERS => "one row per rejected input: source, origin file, line, reason, raw bytes",
        VIEW_INTERVAL_METRICS => {
            "per tenant × entry queue × 15 minutes: offered, answered, abandoned, service level, ASA, AHT, abandon rate, max wait"
        }
        VIEW_AGENT_DAY_METRICS => {
            "per tenant × agent × UTC day: handled, AHT, talk/hold/ACW, transfers, media averages, poor streams"
        }
        VIEW_SBC_LEGS => "one row per SBC leg (SessionId, SIPCallId): latest stage, times, numbers, termination reasons",
        VIEW_MEDIA_STREAMS => "one row per media stream: jitter, loss, RTT, CQD poor, E-model MOS",
        VIEW_AGENT_STATE_TIME => "time per agent, presence or agent state and UTC day",
        VIEW_AGENT_OCCUPANCY => "per agent and day: busy (talk + hold + ACW) over the time the agent could take calls",
        _ => "",
    }
}

/// The definition of `column` of `table` in `docs/metrics.md`, if it has one.
pub fn column(table: &str, column: &str) -> Option<&'static str> {
    definitions().get(&(table.to_string(), column.to_string())).copied()
}

fn definitions() -> &'static HashMap<(String, String), &'static str> {
    static DEFS: OnceLock<HashMap<(String, String), &'static str>> = OnceLock::new();
    DEFS.get_or_init(|| parse(METRICS_DOC))
}

/// `(table, column) → definition` from the document's sections and their tables.
fn parse(doc: &'static str) -> HashMap<(String, String), &'static str> {
    let names = [
        TABLE_CALL_FACTS,
        TABLE_AGENT_LEGS,
        VIEW_INTERVAL_METRICS,
        VIEW_AGENT_DAY_METRICS,
        VIEW_MEDIA_STREAMS,
        VIEW_AGENT_STATE_TIME,
        VIEW_AGENT_OCCUPANCY,
        VIEW_SBC_LEGS,
    ];
    let mut out = HashMap::new();
    let mut current: Vec<&str> = Vec::new();
    for line in doc.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            current = names.iter().copied().filter(|n| heading.contains(&format!("`{n}`"))).collect();
            if heading.contains("interval_metrics_at") {
                current.push(VIEW_INTERVAL_METRICS);
            }
            continue;
        }
        let Some(row) = line.strip_prefix("| ") else { continue };
        let mut cells = row.split(" | ");
        let (Some(first), Some(definition)) = (cells.next(), cells.next()) else { continue };
        let definition = definition.trim_end_matches(" |").trim();
        if definition.is_empty() || definition.starts_with("---") {
            continue;
        }
        // The backticked names of the first cell: `a`, `b` (`c`).
        for (i, part) in first.split('`').enumerate() {
            if i % 2 == 1 && part.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
                for table in &current {
                    out.entry((table.to_string(), part.to_string())).or_insert(definition);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definitions_come_from_the_metrics_doc() {
        assert!(column(VIEW_INTERVAL_METRICS, "service_level").unwrap().contains("A_T"));
        assert!(column(VIEW_INTERVAL_METRICS, "sl_handled").is_some());
        assert!(column(TABLE_CALL_FACTS, "wait_ms").unwrap().contains("answer − queued"));
        assert!(column(TABLE_CALL_FACTS, "no_such_column").is_none());
    }
}
