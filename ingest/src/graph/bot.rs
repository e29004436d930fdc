//! Graph calling-bot notifications (`commsNotifications`), sans-IO: one `call_state` event
//! per notification (`incoming`, `establishing`, `established`, `transferring`,
//! `transferAccepted`, `terminated`, …).
//!
//! Lenient as the documented payloads need: `resultInfo.code` may be a string (`"0"`), the
//! sub-code is spelled `subcode` or `subCode`. `call_id` = `callChainId` when present (it is
//! the Graph call record id once the call ends), else the call id from `resourceUrl`. The
//! notifications carry no time: event time = reception. `event_id` = `graph.calling:<call>:
//! <state>:<digest of the notification>`, so a redelivery is the same event and a repeated
//! state (established again after a failed transfer) a new one.

use ccstream_schemas::{Event, EventType};
use serde_json::Value;

/// The `source` of bot notifications.
pub const SOURCE: &str = "graph.calling";

/// Why a notification POST was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BotError {
    #[error("not a commsNotifications body: {0}")]
    Json(String),
    #[error("notification {index}: {why}")]
    Notification { index: usize, why: &'static str },
}

fn scalar_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Each notification of a POST: its event, or why it was rejected (with its JSON).
pub type Mapped = Vec<Result<Event<'static>, (BotError, String)>>;

/// Maps a `commsNotifications` POST received at `received_at_ms` for `tenant`.
pub fn map(body: &[u8], tenant: &str, received_at_ms: i64) -> Result<Mapped, BotError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| BotError::Json(e.to_string()))?;
    let items = v.get("value").and_then(Value::as_array).ok_or_else(|| BotError::Json("no `value` array".into()))?;
    Ok(items
        .iter()
        .enumerate()
        .map(|(index, n)| map_one(index, n, tenant, received_at_ms).map_err(|e| (e, n.to_string())))
        .collect())
}

fn map_one(index: usize, n: &Value, tenant: &str, at: i64) -> Result<Event<'static>, BotError> {
    let bad = |why| BotError::Notification { index, why };
    let data = n.get("resourceData").ok_or_else(|| bad("no resourceData"))?;
    let state =
        data.get("state").and_then(Value::as_str).filter(|s| !s.is_empty()).ok_or_else(|| bad("no call state"))?;
    let url = n.get("resourceUrl").and_then(Value::as_str).or_else(|| data.get("@odata.id").and_then(Value::as_str));
    let from_url = url.and_then(|u| u.split("/calls/").nth(1)).map(|rest| rest.split('/').next().unwrap_or(rest));
    let call = data
        .get("callChainId")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .or(from_url)
        .ok_or_else(|| bad("no call id"))?;
    let digest = crc32c::crc32c(n.to_string().as_bytes());
    let mut e =
        Event::new(format!("{SOURCE}:{call}:{state}:{digest:08x}"), tenant.to_string(), EventType::CallState, at);
    e.source = Some(SOURCE.into());
    e.call_id = Some(call.to_string().into());
    e.to_state = Some(state.to_string().into());
    if let Some(r) = data.get("resultInfo") {
        let code = scalar_text(r.get("code")).unwrap_or_default();
        let sub = scalar_text(r.get("subcode").or_else(|| r.get("subCode"))).unwrap_or_default();
        let msg = r.get("message").and_then(Value::as_str).unwrap_or("");
        e.state_reason = Some(format!("{code}/{sub} {msg}").trim_end().to_string().into());
    }
    e.payload = Some(n.to_string().into());
    Ok(e)
}
