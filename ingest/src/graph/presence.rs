//! Teams presence, sans-IO: presence objects in (`getPresencesByUserId` pages, `GET
//! /users/{id}/presence`), `presence_changed` events out when an agent's availability or
//! activity changes.
//!
//! `agent_id` = the user id, `from_state` = the previous availability (absent the first
//! time an agent is seen), `to_state` = the availability, `state_reason` = the activity;
//! event time = when the change was observed (polls and notifications carry no time).
//! Availability and activity are open sets, kept as sent.

use std::collections::HashMap;

use ccstream_schemas::{Event, EventType};
use serde::Deserialize;
use serde_json::Value;

/// The `source` of presence events.
pub const SOURCE: &str = "graph.presence";

/// Why a presence body was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PresenceError {
    #[error("not a presence or presence list: {0}")]
    Json(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Presence {
    pub id: String,
    pub availability: Option<String>,
    pub activity: Option<String>,
}

/// Parses a presence list (`{"value": […]}`) or one presence object.
pub fn parse(body: &[u8]) -> Result<Vec<Presence>, PresenceError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| PresenceError::Json(e.to_string()))?;
    let items = match v.get("value") {
        Some(Value::Array(items)) => items.clone(),
        _ => vec![v],
    };
    items.into_iter().map(|i| serde_json::from_value(i).map_err(|e| PresenceError::Json(e.to_string()))).collect()
}

/// The last presence seen per user; turns observations into change events.
#[derive(Debug, Default)]
pub struct Tracker {
    last: HashMap<String, (Option<String>, Option<String>)>,
}

impl Tracker {
    /// The events for `observed` at `now_ms` (only users whose presence changed).
    pub fn observe(&mut self, observed: &[Presence], tenant: &str, now_ms: i64) -> Vec<Event<'static>> {
        let mut out = Vec::new();
        for p in observed {
            let now = (p.availability.clone(), p.activity.clone());
            let previous = self.last.insert(p.id.clone(), now.clone());
            if previous.as_ref() == Some(&now) {
                continue;
            }
            let availability = p.availability.as_deref().unwrap_or("PresenceUnknown");
            let activity = p.activity.as_deref().unwrap_or("");
            let mut e = Event::new(
                format!("{SOURCE}:{}:{availability}:{activity}:{now_ms}", p.id),
                tenant.to_string(),
                EventType::PresenceChanged,
                now_ms,
            );
            e.source = Some(SOURCE.into());
            e.agent_id = Some(p.id.clone().into());
            e.from_state = previous.and_then(|(a, _)| a).map(Into::into);
            e.to_state = Some(availability.to_string().into());
            e.state_reason = (!activity.is_empty()).then(|| activity.to_string().into());
            out.push(e);
        }
        out
    }
}
