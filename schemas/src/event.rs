//! The canonical event and its JSON form.
//!
//! JSON form (one object per line in JSONL): the keys are the column names of
//! [`crate::events_schema`]; timestamps are RFC 3339 strings; an absent key and `null` both
//! mean NULL; unknown keys are an error (a misspelled key must not silently become NULL).
//! `source` defaults to `file.jsonl` and `ingested_at` to the time of ingestion when absent
//! (for an event read from the log, its record's append time; for `replay`, the run's start),
//! so the files written by the benchmark generator are valid input as they are.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::time::{format_rfc3339_ms, parse_rfc3339_ms, TimeError};

/// What an event says happened. The string forms are the `event_type` column's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum EventType {
    /// The caller entered a queue (a second one on overflow).
    CallQueued = 0,
    /// An agent was offered the call (ring); not a leg by itself.
    AgentOffered = 1,
    /// An agent answered: a leg starts.
    CallAnswered = 2,
    HoldStarted = 3,
    HoldEnded = 4,
    /// The agent's leg ended by transferring the call.
    CallTransferred = 5,
    /// The caller hung up before any answer (terminal).
    CallAbandoned = 6,
    /// The call ended (terminal for the leg of `agent_id`, if any).
    CallEnded = 7,
    /// The agent's after-call work ended.
    WrapupEnded = 8,
    /// An agent's state changed (no call).
    AgentStateChanged = 9,
    /// One SBC leg (SIP codes, trunk, numbers, durations in the payload).
    SbcLeg = 10,
    /// One media stream's quality sample.
    MediaStream = 11,
    /// A call-queue or auto-attendant outcome.
    QueueResult = 12,
    /// A Teams presence change of an agent.
    PresenceChanged = 13,
    /// A calling platform's call state or call-control event (ACS incoming call and Call
    /// Automation callbacks, Graph calling-bot notifications): the state in `to_state`.
    CallState = 14,
}

/// Event types that belong to a call's fold (the oracle's `call_events`).
pub const CALL_EVENT_TYPES: [EventType; 9] = [
    EventType::CallQueued,
    EventType::AgentOffered,
    EventType::CallAnswered,
    EventType::HoldStarted,
    EventType::HoldEnded,
    EventType::CallTransferred,
    EventType::CallAbandoned,
    EventType::CallEnded,
    EventType::WrapupEnded,
];

impl EventType {
    /// Every event type, in discriminant order.
    pub const ALL: [EventType; 15] = [
        EventType::CallQueued,
        EventType::AgentOffered,
        EventType::CallAnswered,
        EventType::HoldStarted,
        EventType::HoldEnded,
        EventType::CallTransferred,
        EventType::CallAbandoned,
        EventType::CallEnded,
        EventType::WrapupEnded,
        EventType::AgentStateChanged,
        EventType::SbcLeg,
        EventType::MediaStream,
        EventType::QueueResult,
        EventType::PresenceChanged,
        EventType::CallState,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::CallQueued => "call_queued",
            EventType::AgentOffered => "agent_offered",
            EventType::CallAnswered => "call_answered",
            EventType::HoldStarted => "hold_started",
            EventType::HoldEnded => "hold_ended",
            EventType::CallTransferred => "call_transferred",
            EventType::CallAbandoned => "call_abandoned",
            EventType::CallEnded => "call_ended",
            EventType::WrapupEnded => "wrapup_ended",
            EventType::AgentStateChanged => "agent_state_changed",
            EventType::SbcLeg => "sbc_leg",
            EventType::MediaStream => "media_stream",
            EventType::QueueResult => "queue_result",
            EventType::PresenceChanged => "presence_changed",
            EventType::CallState => "call_state",
        }
    }

    pub fn parse(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// Whether events of this type are folded into a call (and so need a `call_id`).
    pub fn is_call_event(self) -> bool {
        (self as u8) <= EventType::WrapupEnded as u8
    }
}

/// Why a record is not a valid canonical event. The message is what `dead_letters.reason`
/// holds.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EventError {
    #[error("not valid JSON: {0}")]
    Json(String),
    #[error("missing required field `{0}`")]
    Missing(&'static str),
    #[error("unknown event_type {0:?}")]
    UnknownType(String),
    #[error("bad `{field}`: {source}")]
    Time {
        field: &'static str,
        #[source]
        source: TimeError,
    },
    #[error("`{0}` is not a finite number")]
    NotFinite(&'static str),
    #[error("event_type {0} needs a call_id")]
    NoCall(&'static str),
    #[error("not a valid binary event record: {0}")]
    Binary(&'static str),
    #[error("`{field}` is {len} bytes, more than {max}")]
    TooLong { field: &'static str, len: usize, max: usize },
}

/// The longest `tenant_id` (bytes): it names a table partition, so it must fit in a path
/// segment with room to spare.
pub const MAX_TENANT_ID_BYTES: usize = 64;
/// The longest id (`event_id`, `call_id`, `queue_id`, `agent_id`, …) and short text
/// (`source`, `wrapup_code`, states and reasons), in bytes.
pub const MAX_ID_BYTES: usize = 256;
/// The longest `payload` (bytes).
pub const MAX_TEXT_BYTES: usize = 1 << 20;

/// One canonical event in its JSON form, borrowing from the input where it can.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event<'a> {
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub event_id: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub tenant_id: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_cow", skip_serializing_if = "Option::is_none")]
    pub source: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub call_id: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub queue_id: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub agent_id: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub event_type: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub occurred_at: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_cow", skip_serializing_if = "Option::is_none")]
    pub ingested_at: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i8>,
    #[serde(borrow, default, deserialize_with = "opt_cow", skip_serializing_if = "Option::is_none")]
    pub overflow_from_queue_id: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_cow", skip_serializing_if = "Option::is_none")]
    pub transfer_type: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_cow", skip_serializing_if = "Option::is_none")]
    pub target_agent_id: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_cow", skip_serializing_if = "Option::is_none")]
    pub disconnect_by: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_cow", skip_serializing_if = "Option::is_none")]
    pub wrapup_code: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_cow", skip_serializing_if = "Option::is_none")]
    pub from_state: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_cow", skip_serializing_if = "Option::is_none")]
    pub to_state: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_cow", skip_serializing_if = "Option::is_none")]
    pub state_reason: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packet_loss_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round_trip_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio_degradation: Option<f64>,
    /// Source fields with no canonical column, as JSON text (never dropped).
    #[serde(borrow, default, deserialize_with = "opt_cow", skip_serializing_if = "Option::is_none")]
    pub payload: Option<Cow<'a, str>>,
}

/// Deserializes an optional string borrowing from the input when it has no escapes
/// (serde borrows a bare `Cow<str>` field, but not one inside an `Option`).
fn opt_cow<'de: 'a, 'a, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Cow<'a, str>>, D::Error> {
    #[derive(Deserialize)]
    struct Borrowed<'a>(#[serde(borrow)] Cow<'a, str>);
    Ok(Option::<Borrowed<'a>>::deserialize(d)?.map(|b| b.0))
}

/// The parts of an event that every consumer needs, checked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Validated {
    pub event_type: EventType,
    pub occurred_at_ms: i64,
    pub ingested_at_ms: Option<i64>,
}

impl<'a> Event<'a> {
    /// Parses one JSON object. Errors carry serde's message (with the column).
    pub fn from_json(line: &'a str) -> Result<Event<'a>, EventError> {
        serde_json::from_str(line).map_err(|e| EventError::Json(e.to_string()))
    }

    /// Parses one JSON object and checks it ([`Event::from_json`], then [`Event::validate`]).
    pub fn read_json(line: &'a str) -> Result<(Event<'a>, Validated), EventError> {
        let event = Event::from_json(line)?;
        let typed = event.validate()?;
        Ok((event, typed))
    }

    /// Checks the required fields and returns the typed ones.
    pub fn validate(&self) -> Result<Validated, EventError> {
        self.check_ids()?;
        let et = self.event_type.as_deref().ok_or(EventError::Missing("event_type"))?;
        let event_type = EventType::parse(et).ok_or_else(|| EventError::UnknownType(et.to_string()))?;
        let occurred_at_ms = parse_rfc3339_ms(self.occurred_at.as_deref().ok_or(EventError::Missing("occurred_at"))?)
            .map_err(|source| EventError::Time { field: "occurred_at", source })?;
        let ingested_at_ms = self
            .ingested_at
            .as_deref()
            .map(parse_rfc3339_ms)
            .transpose()
            .map_err(|source| EventError::Time { field: "ingested_at", source })?;
        self.check_typed(Validated { event_type, occurred_at_ms, ingested_at_ms })
    }

    /// Checks the rules that do not depend on the encoding (ids present, a call for call
    /// events, finite measurements), given the already typed fields.
    pub fn check(&self, typed: Validated) -> Result<Validated, EventError> {
        self.check_ids()?;
        self.check_typed(typed)
    }

    fn check_ids(&self) -> Result<(), EventError> {
        if self.event_id.as_deref().is_none_or(str::is_empty) {
            return Err(EventError::Missing("event_id"));
        }
        if self.tenant_id.as_deref().is_none_or(str::is_empty) {
            return Err(EventError::Missing("tenant_id"));
        }
        let fields = [
            ("tenant_id", &self.tenant_id, MAX_TENANT_ID_BYTES),
            ("event_id", &self.event_id, MAX_ID_BYTES),
            ("source", &self.source, MAX_ID_BYTES),
            ("call_id", &self.call_id, MAX_ID_BYTES),
            ("queue_id", &self.queue_id, MAX_ID_BYTES),
            ("agent_id", &self.agent_id, MAX_ID_BYTES),
            ("overflow_from_queue_id", &self.overflow_from_queue_id, MAX_ID_BYTES),
            ("transfer_type", &self.transfer_type, MAX_ID_BYTES),
            ("target_agent_id", &self.target_agent_id, MAX_ID_BYTES),
            ("disconnect_by", &self.disconnect_by, MAX_ID_BYTES),
            ("wrapup_code", &self.wrapup_code, MAX_ID_BYTES),
            ("from_state", &self.from_state, MAX_ID_BYTES),
            ("to_state", &self.to_state, MAX_ID_BYTES),
            ("state_reason", &self.state_reason, MAX_ID_BYTES),
            ("payload", &self.payload, MAX_TEXT_BYTES),
        ];
        for (field, value, max) in fields {
            let len = value.as_deref().map_or(0, str::len);
            if len > max {
                return Err(EventError::TooLong { field, len, max });
            }
        }
        Ok(())
    }

    fn check_typed(&self, typed: Validated) -> Result<Validated, EventError> {
        let event_type = typed.event_type;
        if event_type.is_call_event() && self.call_id.as_deref().is_none_or(str::is_empty) {
            return Err(EventError::NoCall(event_type.as_str()));
        }
        for (name, v) in [
            ("jitter_ms", self.jitter_ms),
            ("packet_loss_rate", self.packet_loss_rate),
            ("round_trip_ms", self.round_trip_ms),
            ("audio_degradation", self.audio_degradation),
        ] {
            if v.is_some_and(|v| !v.is_finite()) {
                return Err(EventError::NotFinite(name));
            }
        }
        Ok(typed)
    }

    /// An event of `event_type` at `occurred_at_ms` with the given ids (for generators and
    /// source mappings).
    pub fn new(event_id: String, tenant_id: String, event_type: EventType, occurred_at_ms: i64) -> Event<'static> {
        Event {
            event_id: Some(Cow::Owned(event_id)),
            tenant_id: Some(Cow::Owned(tenant_id)),
            event_type: Some(Cow::Borrowed(event_type.as_str())),
            occurred_at: Some(Cow::Owned(format_rfc3339_ms(occurred_at_ms))),
            ..Event::default()
        }
    }

    /// One JSON line (no trailing newline), keys in schema order, absent values omitted
    /// except the envelope's, which are written as `null`.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an Event always serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = r#"{"event_id":"dbaa9c7d-cd26-480c-a685-5a09daff8667","tenant_id":"t0001","call_id":"b5c9f8a9-8be3-49c0-9f09-e77f216495fe","queue_id":"t0001-q02","agent_id":null,"event_type":"call_queued","occurred_at":"2026-01-04T17:00:21.926Z","priority":2}"#;

    #[test]
    fn generator_line_is_valid() {
        let e = Event::from_json(LINE).unwrap();
        let v = e.validate().unwrap();
        assert_eq!(v.event_type, EventType::CallQueued);
        assert_eq!(e.priority, Some(2));
        assert_eq!(e.agent_id, None);
        assert!(matches!(e.tenant_id, Some(Cow::Borrowed(_))), "ids borrow from the line");
    }

    #[test]
    fn json_round_trip() {
        let e = Event::from_json(LINE).unwrap();
        let again = e.to_json();
        assert_eq!(Event::from_json(&again).unwrap(), e);
    }

    #[test]
    fn invalid_events_say_why() {
        let cases = [
            (
                r#"{"event_id":"x","tenant_id":"t","event_type":"call_queued","occurred_at":"2026-01-05T00:00:00Z"}"#,
                "needs a call_id",
            ),
            (
                r#"{"event_id":"x","tenant_id":"t","event_type":"call_parked","occurred_at":"2026-01-05T00:00:00Z"}"#,
                "unknown event_type",
            ),
            (
                r#"{"event_id":"x","tenant_id":"t","event_type":"agent_state_changed"}"#,
                "missing required field `occurred_at`",
            ),
            (
                r#"{"event_id":"x","tenant_id":"t","event_type":"agent_state_changed","occurred_at":"yesterday"}"#,
                "bad `occurred_at`",
            ),
            (r#"{"tenant_id":"t"}"#, "missing required field `event_id`"),
        ];
        for (line, want) in cases {
            let err = Event::from_json(line).unwrap().validate().unwrap_err().to_string();
            assert!(err.contains(want), "{line}: {err}");
        }
        let err = Event::from_json(r#"{"event_id"="x"}"#).unwrap_err().to_string();
        assert!(err.starts_with("not valid JSON"), "{err}");
        let err = Event::from_json(r#"{"event_id":"x","colour":"red"}"#).unwrap_err().to_string();
        assert!(err.contains("unknown field `colour`"), "{err}");
    }

    #[test]
    fn json_form() {
        let mut e = Event::new("e-1".into(), "tenant-01".into(), EventType::CallEnded, 1_767_609_600_123);
        e.call_id = Some("c-1".into());
        e.queue_id = Some("tenant-01-sales".into());
        e.agent_id = Some("tenant-01-agent-001".into());
        e.disconnect_by = Some("customer".into());
        e.jitter_ms = Some(5.2);
        e.packet_loss_rate = Some(0.0031);
        e.round_trip_ms = Some(48.0);
        e.audio_degradation = Some(0.31);
        insta::assert_snapshot!(e.to_json());
        let minimal = Event::new("e-2".into(), "tenant-01".into(), EventType::AgentStateChanged, 0);
        insta::assert_snapshot!(minimal.to_json());
    }

    #[test]
    fn type_names_round_trip() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
        }
        assert_eq!(CALL_EVENT_TYPES.iter().filter(|t| t.is_call_event()).count(), 9);
        assert!(!EventType::AgentStateChanged.is_call_event());
    }
}
