//! Graph change notifications (call records, presence) and lifecycle notifications,
//! sans-IO.
//!
//! A notification POST carries `{"value": [changeNotification…]}`; each names its
//! subscription, `clientState` (the secret given at subscription time: compared here,
//! case-sensitively), `resource` and `resourceData.id`. Lifecycle notifications carry
//! `lifecycleEvent` (`reauthorizationRequired`, `subscriptionRemoved`, `missed`) instead.
//! Several subscriptions may share one POST. The `validationToken` handshake is answered by
//! the webhook, not here.

use serde::Deserialize;

/// Why a notification POST was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotifyError {
    #[error("not a change notification collection: {0}")]
    Json(String),
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceData {
    #[serde(rename = "@odata.type")]
    pub odata_type: Option<String>,
    pub id: Option<String>,
}

/// One change or lifecycle notification.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    pub subscription_id: Option<String>,
    pub client_state: Option<String>,
    pub change_type: Option<String>,
    pub resource: Option<String>,
    pub resource_data: Option<ResourceData>,
    pub tenant_id: Option<String>,
    pub lifecycle_event: Option<String>,
    pub subscription_expiration_date_time: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct Collection {
    #[serde(default)]
    value: Vec<Notification>,
}

/// Parses a notification POST body.
pub fn parse(body: &[u8]) -> Result<Vec<Notification>, NotifyError> {
    let c: Collection = serde_json::from_slice(body).map_err(|e| NotifyError::Json(e.to_string()))?;
    Ok(c.value)
}

impl Notification {
    /// Whether it carries the expected client state (constant time).
    pub fn client_state_is(&self, expected: &str) -> bool {
        crate::secret_matches(self.client_state.as_deref().unwrap_or("").as_bytes(), expected.as_bytes())
    }

    /// The changed resource's id: `resourceData.id`, else the last segment of `resource`
    /// (`communications/callRecords/{id}`, `communications/presences/{id}`,
    /// `users/{id}/presence`).
    pub fn resource_id(&self) -> Option<String> {
        if let Some(id) = self.resource_data.as_ref().and_then(|d| d.id.as_deref()).filter(|s| !s.is_empty()) {
            return Some(id.to_string());
        }
        let r = self.resource.as_deref()?.trim_end_matches('/');
        let r = r.strip_suffix("/presence").unwrap_or(r);
        let last = r.rsplit('/').next()?;
        // `callRecords('id')` form.
        let last = last.split_once("('").map(|(_, x)| x.trim_end_matches("')")).unwrap_or(last);
        (!last.is_empty()).then(|| last.to_string())
    }

    /// A call-record notification (`resource` under `communications/callRecords`).
    pub fn is_call_record(&self) -> bool {
        self.resource.as_deref().is_some_and(|r| r.to_ascii_lowercase().contains("callrecords"))
    }
}
