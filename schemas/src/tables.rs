//! Table names and Arrow schemas: the public interface of ccstream's storage.
//!
//! Timestamps are `timestamp[ms, UTC]`, durations in seconds are `float64` computed from
//! integer milliseconds in one final division, counts are `int64`. Every derived row carries
//! `revision` (1 for the first version, +1 for each correction) and `computed_at`.

use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

pub const TABLE_EVENTS: &str = "events";
pub const TABLE_CALL_FACTS: &str = "call_facts";
pub const TABLE_AGENT_LEGS: &str = "agent_legs";
pub const TABLE_INTERVAL_PARTIALS: &str = "interval_partials";
pub const TABLE_DEAD_LETTERS: &str = "dead_letters";
pub const TABLE_CORRECTIONS: &str = "corrections";
pub const VIEW_INTERVAL_METRICS: &str = "interval_metrics";
pub const VIEW_AGENT_DAY_METRICS: &str = "agent_day_metrics";
pub const VIEW_SBC_LEGS: &str = "sbc_legs";
pub const VIEW_MEDIA_STREAMS: &str = "media_streams";
pub const VIEW_AGENT_STATE_TIME: &str = "agent_state_time";
pub const VIEW_AGENT_OCCUPANCY: &str = "agent_occupancy";

/// Every table ccstream writes, in commit order (events first, dead letters last).
pub const TABLES: [&str; 6] =
    [TABLE_EVENTS, TABLE_CALL_FACTS, TABLE_AGENT_LEGS, TABLE_INTERVAL_PARTIALS, TABLE_CORRECTIONS, TABLE_DEAD_LETTERS];

/// The tables derived from the events by the fold, written per log partition: a
/// processor replaces only the files of the partitions it owns.
pub const DERIVED_TABLES: [&str; 3] = [TABLE_CALL_FACTS, TABLE_AGENT_LEGS, TABLE_INTERVAL_PARTIALS];

/// The column that names the log partition a derived row comes from (a Delta partition
/// column of the derived tables; `replay` writes 0).
pub const PARTITION_COLUMN: &str = "partition";

/// Whether a derived row is sealed: the processor no longer holds its call's state (it was
/// evicted after the retention horizon), so the row is final unless a late event re-folds
/// the call. Unsealed rows are rewritten from the processor's state at each commit. A
/// Delta partition column of `call_facts` and `agent_legs`.
pub const SEALED_COLUMN: &str = "sealed";

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

fn utf8(name: &str, nullable: bool) -> Field {
    Field::new(name, DataType::Utf8, nullable)
}

fn f(name: &str, dt: DataType, nullable: bool) -> Field {
    Field::new(name, dt, nullable)
}

fn revision_fields() -> [Field; 2] {
    [f("revision", DataType::Int64, false), f("computed_at", ts(), false)]
}

/// `events`: one row per unique event (the event store). Partitioned by `tenant_id` and the
/// UTC date `day` of `occurred_at`.
pub fn events_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        utf8("event_id", false),
        utf8("tenant_id", false),
        utf8("source", false),
        utf8("call_id", true),
        utf8("queue_id", true),
        utf8("agent_id", true),
        utf8("event_type", false),
        f("occurred_at", ts(), false),
        f("ingested_at", ts(), false),
        f("priority", DataType::Int8, true),
        utf8("overflow_from_queue_id", true),
        utf8("transfer_type", true),
        utf8("target_agent_id", true),
        utf8("disconnect_by", true),
        utf8("wrapup_code", true),
        utf8("from_state", true),
        utf8("to_state", true),
        utf8("state_reason", true),
        f("jitter_ms", DataType::Float64, true),
        f("packet_loss_rate", DataType::Float64, true),
        f("round_trip_ms", DataType::Float64, true),
        f("audio_degradation", DataType::Float64, true),
        utf8("payload", true),
        f("day", DataType::Date32, false),
    ]))
}

/// `call_facts`: one row per call, the oracle's `call_facts` columns plus the integer-ms
/// helpers `wait_ms` and `handle_ms` (exact thresholds at query time) and the revision.
pub fn call_facts_schema() -> SchemaRef {
    let mut fields = vec![
        utf8("call_id", false),
        utf8("tenant_id", false),
        utf8("queue_id", true),
        utf8("final_queue_id", true),
        f("queued_at", ts(), true),
        f("answered_at", ts(), true),
        f("abandoned_at", ts(), true),
        f("ended_at", ts(), true),
        f("answered", DataType::Boolean, false),
        f("abandoned", DataType::Boolean, false),
        f("wait_s", DataType::Float64, true),
        f("talk_s", DataType::Float64, true),
        f("hold_s", DataType::Float64, true),
        f("acw_s", DataType::Float64, true),
        f("handle_s", DataType::Float64, true),
        f("answered_within_sl", DataType::Boolean, false),
        f("short_abandon", DataType::Boolean, false),
        f("transferred", DataType::Boolean, false),
        f("n_transfers", DataType::Int64, false),
        f("overflowed", DataType::Boolean, false),
        f("legs", DataType::Int64, false),
        f("legs_complete", DataType::Boolean, false),
        f("wait_ms", DataType::Int64, true),
        f("handle_ms", DataType::Int64, true),
        f("mos", DataType::Float64, true),
        f(PARTITION_COLUMN, DataType::Int32, false),
        f(SEALED_COLUMN, DataType::Boolean, false),
    ];
    fields.extend(revision_fields());
    Arc::new(Schema::new(fields))
}

/// `agent_legs`: one row per (call, agent) that the agent answered, as the oracle's
/// `agent_legs`, plus the leg's MOS (E-model, R0 = 94.768, latency = round trip).
pub fn agent_legs_schema() -> SchemaRef {
    let mut fields = vec![
        utf8("call_id", false),
        utf8("agent_id", false),
        utf8("tenant_id", false),
        f("answered_at", ts(), false),
        f("day", DataType::Date32, false),
        f("leg_complete", DataType::Boolean, false),
        f("hold_ms", DataType::Int64, true),
        f("talk_ms", DataType::Int64, true),
        f("acw_ms", DataType::Int64, true),
        f("handle_ms", DataType::Int64, true),
        f("transfers", DataType::Int64, false),
        f("jitter_ms", DataType::Float64, true),
        f("packet_loss_rate", DataType::Float64, true),
        f("round_trip_ms", DataType::Float64, true),
        f("audio_degradation", DataType::Float64, true),
        f("classified", DataType::Boolean, false),
        f("poor", DataType::Boolean, false),
        f("mos", DataType::Float64, true),
        f(PARTITION_COLUMN, DataType::Int32, false),
        f(SEALED_COLUMN, DataType::Boolean, false),
    ];
    fields.extend(revision_fields());
    Arc::new(Schema::new(fields))
}

/// `interval_partials`: mergeable aggregates per tenant × entry queue × 15-minute UTC
/// interval × log partition, at the parameters recorded in the row. Merging = summing the
/// counts and sums and taking the max of `max_wait_ms`. A `sealed` row is one whose calls
/// have all left the processor's memory: it is written once, not with every commit.
pub fn interval_partials_schema() -> SchemaRef {
    let mut fields = vec![
        utf8("tenant_id", false),
        utf8("queue_id", false),
        f("interval_start", ts(), false),
        f(PARTITION_COLUMN, DataType::Int32, false),
        f(SEALED_COLUMN, DataType::Boolean, false),
        f("offered", DataType::Int64, false),
        f("answered", DataType::Int64, false),
        f("abandoned", DataType::Int64, false),
        f("short_abandoned", DataType::Int64, false),
        f("answered_within_sl", DataType::Int64, false),
        f("abandoned_within_sl", DataType::Int64, false),
        f("overflowed", DataType::Int64, false),
        f("transferred", DataType::Int64, false),
        f("sum_answer_wait_ms", DataType::Int64, false),
        f("sum_abandon_wait_ms", DataType::Int64, false),
        f("sum_handle_ms", DataType::Int64, false),
        f("n_handle", DataType::Int64, false),
        f("max_wait_ms", DataType::Int64, true),
        f("sl_threshold_ms", DataType::Int64, false),
        f("short_abandon_ms", DataType::Int64, false),
    ];
    fields.extend(revision_fields());
    Arc::new(Schema::new(fields))
}

/// `corrections`: one row per column of a derived row that a later revision changed
/// (a late event, or a restart that finds the table behind the fold). `key` is the
/// call id for `call_facts`, and `tenant_id/queue_id/interval_start` for
/// `interval_partials`; values are in their SQL text form, NULL for none. Append-only.
pub fn corrections_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        utf8("table_name", false),
        utf8("key", false),
        utf8("tenant_id", false),
        f(PARTITION_COLUMN, DataType::Int32, false),
        utf8("column_name", false),
        utf8("old_value", true),
        utf8("new_value", true),
        f("revision", DataType::Int64, false),
        f("computed_at", ts(), false),
    ]))
}

/// `dead_letters`: one row per rejected input, with the reason and the raw bytes (bounded).
pub fn dead_letters_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        f("received_at", ts(), false),
        utf8("source", false),
        utf8("origin", false),
        f("line", DataType::Int64, true),
        utf8("reason", false),
        f("raw", DataType::Binary, false),
        f("raw_truncated", DataType::Boolean, false),
    ]))
}

/// The schema of a table by name.
pub fn table_schema(name: &str) -> Option<SchemaRef> {
    Some(match name {
        TABLE_EVENTS => events_schema(),
        TABLE_CALL_FACTS => call_facts_schema(),
        TABLE_AGENT_LEGS => agent_legs_schema(),
        TABLE_INTERVAL_PARTIALS => interval_partials_schema(),
        TABLE_DEAD_LETTERS => dead_letters_schema(),
        TABLE_CORRECTIONS => corrections_schema(),
        _ => return None,
    })
}

/// Text columns whose chunk min/max the tables keep, so that scans filtering on them skip
/// row groups: the tenant, which every tenant-scoped query filters on.
pub fn is_prune_key(name: &str) -> bool {
    name == "tenant_id"
}

/// String columns whose values repeat (tenants, queues, agents, enums): kept
/// dictionary-encoded while decoding and written with Parquet dictionary pages. Unique ids
/// (`event_id`, `call_id`) are not: for them a dictionary is pure cost.
pub fn is_low_cardinality(name: &str) -> bool {
    matches!(
        name,
        "tenant_id"
            | "source"
            | "queue_id"
            | "final_queue_id"
            | "agent_id"
            | "event_type"
            | "overflow_from_queue_id"
            | "transfer_type"
            | "target_agent_id"
            | "disconnect_by"
            | "wrapup_code"
            | "from_state"
            | "to_state"
            | "state_reason"
            | "origin"
            | "reason"
            | "table_name"
            | "column_name"
    )
}

/// `schema` with each field replaced by `f(field)`, metadata kept.
fn map_fields(schema: &Schema, f: impl Fn(&Field) -> Field) -> SchemaRef {
    let fields: Vec<Field> = schema.fields().iter().map(|field| f(field)).collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// `schema` with its low-cardinality `Utf8` columns as `Dictionary(Int32, Utf8)`.
pub fn with_dictionaries(schema: &Schema) -> SchemaRef {
    map_fields(schema, |f| {
        if f.data_type() == &DataType::Utf8 && is_low_cardinality(f.name()) {
            f.clone().with_data_type(DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)))
        } else {
            f.clone()
        }
    })
}

/// `schema` with its `Dictionary(Int32, Utf8)` columns as `Utf8`: what a table's files
/// hold for batches built with [`with_dictionaries`] (or any dictionary-encoded text).
pub fn without_dictionaries(schema: &Schema) -> SchemaRef {
    let text = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
    map_fields(schema, |f| if f.data_type() == &text { f.clone().with_data_type(DataType::Utf8) } else { f.clone() })
}

/// The schema the fold reads Parquet input in: [`with_dictionaries`], plus the unique ids
/// (`event_id`, `call_id`) as `Utf8View` — views into the decompressed pages, with no copy
/// into a values buffer.
pub fn fold_read_schema(schema: &Schema) -> SchemaRef {
    map_fields(&with_dictionaries(schema), |f| match f.name().as_str() {
        "event_id" | "call_id" if f.data_type() == &DataType::Utf8 => f.clone().with_data_type(DataType::Utf8View),
        _ => f.clone(),
    })
}

/// Delta partition columns of a table.
pub fn partition_columns(name: &str) -> &'static [&'static str] {
    match name {
        TABLE_EVENTS => &["tenant_id", "day"],
        TABLE_CALL_FACTS | TABLE_AGENT_LEGS | TABLE_INTERVAL_PARTIALS => &[PARTITION_COLUMN, SEALED_COLUMN],
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(schema: &Schema) -> String {
        schema
            .fields()
            .iter()
            .map(|f| format!("{} {}{}", f.name(), f.data_type(), if f.is_nullable() { "" } else { " NOT NULL" }))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn table_layouts() {
        for name in TABLES {
            insta::assert_snapshot!(name, layout(&table_schema(name).unwrap()));
        }
    }
}
