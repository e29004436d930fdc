//! Direct Routing and PSTN call logs (`getDirectRoutingCalls`, `getPstnCalls`), sans-IO: a
//! page of rows in, one `sbc_leg` event per row out.
//!
//! `call_id` = the row's `correlationId` (Direct Routing; the Teams-side call chain) or
//! `callId` (PSTN, not unique, so the row id is used when absent); event time = the call's
//! start (`startDateTime`, else `inviteDateTime`, else `failureDateTime`); `event_id` =
//! `<source>:<row id>` (rows are immutable: a re-pulled window gives the same ids). The row
//! is the payload, whole; the failure sentinel `0001-01-01T00:00:00Z` becomes `null`.

use ccstream_schemas::{parse_rfc3339_ms, Event, EventType};
use serde_json::Value;

/// The `source` of Direct Routing rows.
pub const SOURCE_DIRECT_ROUTING: &str = "graph.directrouting";
/// The `source` of PSTN (Calling Plan, Operator Connect) rows.
pub const SOURCE_PSTN: &str = "graph.pstn";

/// Which log a page came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Log {
    DirectRouting,
    Pstn,
}

impl Log {
    pub fn source(self) -> &'static str {
        match self {
            Log::DirectRouting => SOURCE_DIRECT_ROUTING,
            Log::Pstn => SOURCE_PSTN,
        }
    }

    /// The Graph function that returns this log.
    pub fn function(self) -> &'static str {
        match self {
            Log::DirectRouting => "getDirectRoutingCalls",
            Log::Pstn => "getPstnCalls",
        }
    }
}

/// Why a page or row was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    #[error("not a call log page: {0}")]
    Json(String),
    #[error("call log row {index}: {why}")]
    Row { index: usize, why: String },
}

/// The rows of a page mapped (each row an event or the reason it was rejected, with the row's
/// JSON), and the next page's link.
pub type MappedPage = (Vec<Result<Event<'static>, (LogError, String)>>, Option<String>);

/// Maps one page of `log` rows for `tenant`.
pub fn map_page(log: Log, body: &[u8], tenant: &str) -> Result<MappedPage, LogError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| LogError::Json(e.to_string()))?;
    let next = v.get("@odata.nextLink").and_then(Value::as_str).map(str::to_string);
    let rows = v.get("value").and_then(Value::as_array).ok_or_else(|| LogError::Json("no `value` array".into()))?;
    let out = rows
        .iter()
        .enumerate()
        .map(|(index, row)| map_row(log, index, row, tenant).map_err(|e| (e, row.to_string())))
        .collect();
    Ok((out, next))
}

fn map_row(log: Log, index: usize, row: &Value, tenant: &str) -> Result<Event<'static>, LogError> {
    let bad = |why: String| LogError::Row { index, why };
    let text = |k: &str| row.get(k).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty());
    let id = text("id").ok_or_else(|| bad("no `id`".into()))?;
    let time = |k: &str| -> Result<Option<i64>, LogError> {
        match text(k) {
            None => Ok(None),
            Some(s) if s.starts_with("0001-01-01") => Ok(None),
            Some(s) => parse_rfc3339_ms(s).map(Some).map_err(|e| bad(format!("`{k}`: {e}"))),
        }
    };
    let at = match (time("startDateTime")?, time("inviteDateTime")?, time("failureDateTime")?) {
        (Some(t), _, _) | (None, Some(t), _) | (None, None, Some(t)) => t,
        _ => return Err(bad("no start, invite or failure time".into())),
    };
    let call = match log {
        Log::DirectRouting => text("correlationId"),
        Log::Pstn => text("callId"),
    }
    .unwrap_or(id);
    let mut e = Event::new(format!("{}:{id}", log.source()), tenant.to_string(), EventType::SbcLeg, at);
    e.source = Some(log.source().into());
    e.call_id = Some(call.to_string().into());
    e.agent_id = text("userId").map(|u| u.to_string().into());
    let mut payload = row.clone();
    if let Some(Value::String(f)) = payload.get("failureDateTime") {
        if f.starts_with("0001-01-01") {
            payload["failureDateTime"] = Value::Null;
        }
    }
    e.payload = Some(payload.to_string().into());
    Ok(e)
}
