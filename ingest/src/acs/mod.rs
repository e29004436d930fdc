//! Azure Communication Services (the Power model), sans-IO: Event Grid deliveries (Job Router
//! and calling events) and Call Automation callbacks in, canonical events out.
//!
//! # Envelopes
//!
//! A delivery is a JSON array of events, or one event. Each event is in the **Event Grid
//! schema** (`id, topic, subject, eventType, eventTime, data`) or in **CloudEvents 1.0**
//! (`id, source, subject, type, time, data`). The first delivery of an Event Grid
//! subscription is a `Microsoft.EventGrid.SubscriptionValidationEvent`, answered with
//! `{"validationResponse": <validationCode>}` ([`Delivery::Validation`]).
//!
//! # Mapping (the table is in `docs/sources.md`)
//!
//! Job Router jobs are calls (`call_id` = `jobId`), workers are agents (`agent_id` =
//! `workerId`); `formats.md` §d.2's KPI derivation:
//!
//! | Event Grid event | canonical event |
//! |---|---|
//! | `RouterJobQueued` | `call_queued` (queue, priority) |
//! | `RouterWorkerOfferIssued` | `agent_offered` |
//! | `RouterWorkerOfferAccepted` | `call_answered` (the leg starts) |
//! | `RouterJobCompleted` | `call_ended` (talk ends, wrap-up starts) |
//! | `RouterJobClosed` | `wrapup_ended` (`wrapup_code` = `dispositionCode`) |
//! | `RouterJobCancelled` | `call_abandoned` |
//! | `RouterWorkerRegistered` / `…Deregistered` / `…Deleted` | `agent_state_changed` to `available` / `offline` / `offline` |
//! | `IncomingCall`, Call Automation callbacks | `call_state` (`to_state` = the event name; `call_id` = `correlationId`, the call chain id) |
//!
//! Other Job Router events (received, classified, offer declined/expired/revoked, …) carry
//! no canonical fact: they are [`Mapped::Unmapped`], counted per source, not stored.
//! `event_id` = `<source>:<envelope id>:<event name>` (Event Grid redelivers with the same
//! id); the envelope's `data`, `subject` and event name go to `payload`; empty strings are
//! absent values.

use ccstream_schemas::{parse_rfc3339_ms, Event, EventType};
use serde_json::{Map, Value};

/// The `source` of Job Router events.
pub const SOURCE_JOBROUTER: &str = "acs.jobrouter";
/// The `source` of ACS calling events via Event Grid (`IncomingCall`, …).
pub const SOURCE_CALLING: &str = "acs.calling";
/// The `source` of Call Automation callbacks.
pub const SOURCE_CALL_AUTOMATION: &str = "acs.callautomation";

const VALIDATION_EVENT: &str = "Microsoft.EventGrid.SubscriptionValidationEvent";
const PREFIX: &str = "Microsoft.Communication.";

/// Why a delivery or event was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AcsError {
    #[error("not valid JSON: {0}")]
    Json(String),
    #[error("expected a JSON array of events or one event object")]
    NotEvents,
    #[error("event {index}: not an Event Grid or CloudEvents event (no eventType/type)")]
    NoType { index: usize },
    #[error("event {id}: missing `{field}`")]
    Missing { id: String, field: &'static str },
    #[error("event {id}: bad `{field}` {value:?}")]
    Bad { id: String, field: &'static str, value: String },
    #[error("a validation event must come alone in its delivery")]
    MixedValidation,
    #[error("event {id}: {reason}")]
    Tenant { id: String, reason: String },
}

/// One event of a delivery, in either schema.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub id: String,
    /// `Microsoft.Communication.RouterJobQueued`, …
    pub event_type: String,
    pub subject: String,
    /// Event Grid `topic` or CloudEvents `source`.
    pub source: String,
    /// `eventTime` / `time`, as sent.
    pub time: Option<String>,
    pub data: Value,
    /// CloudEvents (`true`) or Event Grid schema.
    pub cloud_event: bool,
}

impl Envelope {
    /// The event name without the `Microsoft.Communication.` prefix.
    pub fn name(&self) -> &str {
        self.event_type.strip_prefix(PREFIX).unwrap_or(&self.event_type)
    }

    fn str_field(&self, name: &str) -> Option<&str> {
        self.data.get(name).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty())
    }
}

/// What a delivery is.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    /// The subscription handshake: reply `{"validationResponse": code}` with HTTP 200.
    Validation {
        code: String,
        url: Option<String>,
    },
    Events(Vec<Envelope>),
}

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_string)
}

/// Parses a webhook body (Event Grid or CloudEvents; an array or one event).
pub fn parse_delivery(body: &[u8]) -> Result<Delivery, AcsError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| AcsError::Json(e.to_string()))?;
    let items = match v {
        Value::Array(items) => items,
        obj @ Value::Object(_) => vec![obj],
        _ => return Err(AcsError::NotEvents),
    };
    let mut out = Vec::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        if !item.is_object() {
            return Err(AcsError::NotEvents);
        }
        let (event_type, cloud_event) = match (text(&item, "eventType"), text(&item, "type")) {
            (Some(t), _) => (t, false),
            (None, Some(t)) if item.get("specversion").is_some() => (t, true),
            _ => return Err(AcsError::NoType { index }),
        };
        let id = text(&item, "id")
            .filter(|s| !s.is_empty())
            .ok_or(AcsError::Missing { id: format!("#{index}"), field: "id" })?;
        if event_type == VALIDATION_EVENT {
            let code = item
                .get("data")
                .and_then(|d| d.get("validationCode"))
                .and_then(Value::as_str)
                .ok_or(AcsError::Missing { id, field: "data.validationCode" })?
                .to_string();
            if out.is_empty() && index == 0 {
                let url = item.get("data").and_then(|d| text(d, "validationUrl"));
                return Ok(Delivery::Validation { code, url });
            }
            return Err(AcsError::MixedValidation);
        }
        out.push(Envelope {
            id,
            event_type,
            subject: text(&item, "subject").unwrap_or_default(),
            source: text(&item, if cloud_event { "source" } else { "topic" }).unwrap_or_default(),
            time: text(&item, if cloud_event { "time" } else { "eventTime" }),
            data: item.get("data").cloned().unwrap_or(Value::Null),
            cloud_event,
        });
    }
    Ok(Delivery::Events(out))
}

/// Maps an ACS resource to a tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantRule {
    pub tenant: String,
    /// The Communication Services resource name (the last segment of the Event Grid topic).
    pub resource: String,
}

/// What one envelope became.
#[derive(Debug, Clone, PartialEq)]
pub enum Mapped {
    Event(Box<Event<'static>>),
    /// A valid event with no canonical meaning (counted, not stored): its name if it is a
    /// Job Router event ccstream knows, else `other` (a metric label takes only known
    /// names, so a sender cannot grow the metrics).
    Unmapped(&'static str),
}

/// The Job Router events ccstream knows without mapping them: the label values of
/// `ccstream_ingest_unmapped_total`.
const KNOWN_UNMAPPED: [&str; 13] = [
    "RouterJobClassificationFailed",
    "RouterJobClassified",
    "RouterJobDeleted",
    "RouterJobExceptionTriggered",
    "RouterJobReceived",
    "RouterJobSchedulingFailed",
    "RouterJobUnassigned",
    "RouterJobWaitingForActivation",
    "RouterJobWorkerSelectorsExpired",
    "RouterWorkerOfferDeclined",
    "RouterWorkerOfferExpired",
    "RouterWorkerOfferRevoked",
    "RouterWorkerUpdated",
];

/// Maps ACS envelopes to canonical events.
#[derive(Debug, Clone)]
pub struct AcsMapper {
    default_tenant: String,
    rules: Vec<TenantRule>,
}

impl AcsMapper {
    pub fn new(default_tenant: impl Into<String>, rules: Vec<TenantRule>) -> Self {
        AcsMapper { default_tenant: default_tenant.into(), rules }
    }

    /// The tenant a rule gives the envelope's resource (the last segment of its topic or
    /// `source`), if one does.
    pub fn rule_tenant(&self, e: &Envelope) -> Option<&str> {
        let resource = e.source.rsplit('/').next().unwrap_or("");
        self.rules.iter().find(|r| r.resource.eq_ignore_ascii_case(resource)).map(|r| r.tenant.as_str())
    }

    fn tenant(&self, e: &Envelope) -> String {
        self.rule_tenant(e).unwrap_or(&self.default_tenant).to_string()
    }

    /// Maps one envelope (from an Event Grid delivery or a Call Automation callback).
    pub fn map(&self, e: &Envelope) -> Result<Mapped, AcsError> {
        let name = e.name();
        let source = if e.cloud_event {
            SOURCE_CALL_AUTOMATION
        } else if name.starts_with("Router") {
            SOURCE_JOBROUTER
        } else {
            SOURCE_CALLING
        };
        let call_type = if source == SOURCE_JOBROUTER {
            match name {
                "RouterJobQueued" => Some(EventType::CallQueued),
                "RouterWorkerOfferIssued" => Some(EventType::AgentOffered),
                "RouterWorkerOfferAccepted" => Some(EventType::CallAnswered),
                "RouterJobCompleted" => Some(EventType::CallEnded),
                "RouterJobClosed" => Some(EventType::WrapupEnded),
                "RouterJobCancelled" => Some(EventType::CallAbandoned),
                "RouterWorkerRegistered" | "RouterWorkerDeregistered" | "RouterWorkerDeleted" => {
                    Some(EventType::AgentStateChanged)
                }
                _ => None,
            }
        } else {
            Some(EventType::CallState)
        };
        let Some(event_type) = call_type else {
            return Ok(Mapped::Unmapped(KNOWN_UNMAPPED.iter().find(|k| **k == name).copied().unwrap_or("other")));
        };
        let time = e.time.as_deref().ok_or_else(|| AcsError::Missing { id: e.id.clone(), field: "eventTime" })?;
        let at = parse_rfc3339_ms(time).map_err(|_| AcsError::Bad {
            id: e.id.clone(),
            field: "eventTime",
            value: time.to_string(),
        })?;
        let mut ev = Event::new(format!("{source}:{}:{name}", e.id), self.tenant(e), event_type, at);
        ev.source = Some(source.into());
        let owned = |v: Option<&str>| v.map(|s| s.to_string().into());
        match event_type {
            EventType::AgentStateChanged => {
                ev.agent_id = owned(e.str_field("workerId"));
                if ev.agent_id.is_none() {
                    return Err(AcsError::Missing { id: e.id.clone(), field: "data.workerId" });
                }
                ev.to_state = Some(if name == "RouterWorkerRegistered" { "available" } else { "offline" }.into());
                ev.state_reason = Some(name.to_string().into());
            }
            EventType::CallState => {
                // The call chain id (= the Graph call record id for calls through Teams), else
                // the platform's own ids.
                let call =
                    ["correlationId", "callConnectionId", "serverCallId"].into_iter().find_map(|k| e.str_field(k));
                ev.call_id = owned(call).or_else(|| Some(e.subject.clone().into()));
                if ev.call_id.as_deref().is_none_or(str::is_empty) {
                    return Err(AcsError::Missing { id: e.id.clone(), field: "data.callConnectionId" });
                }
                ev.to_state = Some(name.to_string().into());
                if let Some(r) = e.data.get("resultInformation") {
                    let code = r.get("code").map(Value::to_string).unwrap_or_default();
                    let sub = r.get("subCode").map(Value::to_string).unwrap_or_default();
                    ev.state_reason = Some(format!("{code}/{sub}").into());
                }
            }
            _ => {
                ev.call_id = owned(e.str_field("jobId"));
                if ev.call_id.is_none() {
                    return Err(AcsError::Missing { id: e.id.clone(), field: "data.jobId" });
                }
                ev.queue_id = owned(e.str_field("queueId"));
                ev.agent_id = owned(e.str_field("workerId"));
                if matches!(event_type, EventType::AgentOffered | EventType::CallAnswered) && ev.agent_id.is_none() {
                    return Err(AcsError::Missing { id: e.id.clone(), field: "data.workerId" });
                }
                if event_type == EventType::CallQueued {
                    ev.priority = e
                        .data
                        .get("priority")
                        .and_then(Value::as_i64)
                        .map(|p| p.clamp(i8::MIN as i64, i8::MAX as i64) as i8);
                }
                if event_type == EventType::WrapupEnded {
                    ev.wrapup_code = owned(e.str_field("dispositionCode"));
                }
            }
        }
        let mut payload = Map::new();
        payload.insert("event".into(), name.into());
        if !e.subject.is_empty() {
            payload.insert("subject".into(), e.subject.clone().into());
        }
        payload.insert("data".into(), e.data.clone());
        ev.payload = Some(Value::Object(payload).to_string().into());
        Ok(Mapped::Event(Box::new(ev)))
    }
}
