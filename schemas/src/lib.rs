//! ccstream's public data contracts: the canonical event, its JSON form, id keys, and the
//! Arrow schemas of every table ccstream writes.
//!
//! Invariants:
//! - One canonical event is one fact about a call or an agent at one instant. Copies of an
//!   event carry the same `event_id`; consumers keep exactly one.
//! - Times are UTC epoch milliseconds inside; the JSON form is RFC 3339 (`…T10:40:00.123Z`).
//! - Table names and column names are a public interface: changing one is a breaking change,
//!   and the snapshot tests in this crate say so.
//!
//! No IO and no async here.

mod event;
mod ids;
pub mod quality;
mod record;
mod tables;
mod time;

pub use event::Validated;
pub use event::{Event, EventError, EventType, CALL_EVENT_TYPES, MAX_ID_BYTES, MAX_TENANT_ID_BYTES, MAX_TEXT_BYTES};
pub use ids::{format_uuid, is_uuid_key, parse_uuid, uuid_text, IdKey, OTHER_TAG};
pub use record::{
    decode_event, encode_event, event_key, read_event, read_event_into, DeadLetterRecord, BINARY_MAGIC, BINARY_VERSION,
    DEAD_LETTER_KEY,
};
pub use tables::{
    agent_legs_schema, call_facts_schema, corrections_schema, dead_letters_schema, events_schema, fold_read_schema,
    interval_partials_schema, is_low_cardinality, is_prune_key, partition_columns, table_schema, with_dictionaries,
    without_dictionaries, DERIVED_TABLES, PARTITION_COLUMN, SEALED_COLUMN, TABLES, TABLE_AGENT_LEGS, TABLE_CALL_FACTS,
    TABLE_CORRECTIONS, TABLE_DEAD_LETTERS, TABLE_EVENTS, TABLE_INTERVAL_PARTIALS, VIEW_AGENT_DAY_METRICS,
    VIEW_AGENT_OCCUPANCY, VIEW_AGENT_STATE_TIME, VIEW_INTERVAL_METRICS, VIEW_MEDIA_STREAMS, VIEW_SBC_LEGS,
};
pub use time::{format_rfc3339_ms, parse_rfc3339_ms, utc_ms, TimeError, MS_PER_DAY, PARTIAL_INTERVAL_MS};
