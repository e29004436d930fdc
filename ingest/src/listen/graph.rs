//! Microsoft Graph links: per configured tenant, a client (OAuth2 client credentials), the
//! call-record fetcher, the subscription keeper, and the Direct Routing / PSTN and presence
//! pollers. The webhook routes that feed them are in `super::http`.
//!
//! Invariants:
//! - Every request retries `429` after `Retry-After` and `5xx` or network errors with
//!   exponential backoff (0.5 s doubling, at most 60 s, 8 attempts); a `401` refreshes the
//!   token once.
//! - A record is fetched with `$expand=sessions($expand=segments)` and every
//!   `sessions@odata.nextLink` page; records are upserted by `id`, keeping the highest
//!   `version`: a version not above the one already published is skipped, a newer one
//!   re-emits (event ids make the unchanged events duplicates downstream).
//! - A notification is acknowledged (`202`) before its record is fetched. What a crash
//!   loses between the two is fetched again by the catch-up list at start (`catch_up_hours`)
//!   and after a `missed` lifecycle notification.
//! - Subscriptions: call records for at most 4230 minutes, presence for at most 60, renewed
//!   at three quarters of their life, on `reauthorizationRequired`, and created again when
//!   removed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use ccstream_schemas::format_rfc3339_ms;
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::publish::Batch;
use super::Context;
use crate::graph::callrecord::{self, map_record, merge_sessions_page, parse_record, CallRecord, Page};
use crate::graph::logs::{self, Log};
use crate::graph::presence::{self, Tracker};
use crate::telemetry::Reject;

/// One `[[sources.graph]]` entry: a Microsoft 365 tenant ccstream reads through Graph.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphConfig {
    /// The ccstream tenant its events belong to.
    pub tenant: String,
    /// The Entra ID (Azure AD) tenant id (GUID) of the app registration.
    pub entra_tenant_id: String,
    pub client_id: String,
    pub client_secret: String,
    #[serde(default = "default_authority")]
    pub authority: String,
    #[serde(default = "default_graph_url")]
    pub graph_url: String,
    /// The public base URL of ccstream's webhook server (`https://…`). When set, ccstream
    /// subscribes to call records (and to presence, with `presence_users`) there.
    pub notification_url: Option<String>,
    /// The secret Graph echoes in every notification.
    pub client_state: Option<String>,
    /// At start and after a missed notification, records that started this far back are
    /// listed and fetched when new.
    #[serde(default = "default_catch_up_hours")]
    pub catch_up_hours: u64,
    /// Also list and fetch what is new this often (seconds; 0 = never): what a lost or
    /// failed notification missed comes then at the latest.
    #[serde(default = "default_catch_up_every_s")]
    pub catch_up_every_s: u64,
    /// Pull `getDirectRoutingCalls` this often (seconds; 0 = never).
    #[serde(default)]
    pub direct_routing_poll_s: u64,
    /// Pull `getPstnCalls` this often (seconds; 0 = never).
    #[serde(default)]
    pub pstn_poll_s: u64,
    /// Agents (Entra user ids) whose presence is followed.
    #[serde(default)]
    pub presence_users: Vec<String>,
    /// Poll their presence this often (seconds; 0 = notifications only).
    #[serde(default = "default_presence_poll_s")]
    pub presence_poll_s: u64,
}

fn default_authority() -> String {
    "https://login.microsoftonline.com".into()
}
fn default_graph_url() -> String {
    "https://graph.microsoft.com".into()
}
fn default_catch_up_hours() -> u64 {
    24
}
fn default_catch_up_every_s() -> u64 {
    3600
}

fn default_presence_poll_s() -> u64 {
    60
}

/// Call-record subscriptions live at most this long (Graph's limit, minutes).
pub const CALL_RECORD_SUBSCRIPTION_MINUTES: i64 = 4230;
/// Presence subscriptions live at most this long (minutes).
pub const PRESENCE_SUBSCRIPTION_MINUTES: i64 = 60;
/// `getPresencesByUserId` takes at most this many ids per call.
pub const PRESENCE_BATCH: usize = 650;
const MAX_ATTEMPTS: u32 = 8;
const MAX_SEEN: usize = 1 << 17;

/// Why a Graph request failed for good.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("{method} {url}: {source}")]
    Http {
        method: Method,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{method} {url}: HTTP {status}: {body}")]
    Status { method: Method, url: String, status: StatusCode, body: String },
    #[error("token from {url}: {why}")]
    Token { url: String, why: String },
}

/// What the keeper should do with a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    Renew,
    Recreate,
    CatchUp,
}

/// One Graph tenant: its client and the state its loops share.
#[derive(Debug)]
pub struct GraphLink {
    pub config: GraphConfig,
    client: reqwest::Client,
    token: tokio::sync::Mutex<Option<(String, std::time::Instant)>>,
    /// Highest version published per record id.
    seen: Mutex<HashMap<String, i64>>,
    fetch: mpsc::Sender<String>,
    lifecycle: mpsc::Sender<Lifecycle>,
    presence: Mutex<Tracker>,
    /// A permit per presence fetch under way (notifications start them).
    pub(super) presence_fetches: Arc<tokio::sync::Semaphore>,
}

/// Presence fetches under way per link, at most.
const PRESENCE_FETCHES: usize = 4;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl GraphLink {
    /// Starts the link's loops; returns the handle the webhooks use.
    pub(super) fn start(config: GraphConfig, ctx: &Arc<Context>) -> Arc<GraphLink> {
        let (fetch, fetch_rx) = mpsc::channel(10_000);
        let (lifecycle, lifecycle_rx) = mpsc::channel(16);
        let client =
            reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("the HTTP client builds");
        let link = Arc::new(GraphLink {
            config,
            client,
            token: tokio::sync::Mutex::new(None),
            seen: Mutex::new(HashMap::new()),
            fetch,
            lifecycle,
            presence: Mutex::new(Tracker::default()),
            presence_fetches: Arc::new(tokio::sync::Semaphore::new(PRESENCE_FETCHES)),
        });
        tokio::spawn(fetcher(Arc::clone(&link), Arc::clone(ctx), fetch_rx));
        tokio::spawn(keeper(Arc::clone(&link), Arc::clone(ctx), lifecycle_rx));
        if link.config.catch_up_every_s > 0 {
            let (every, link) = (Duration::from_secs(link.config.catch_up_every_s), Arc::clone(&link));
            tokio::spawn(async move {
                let mut ticker = tokio::time::interval(every);
                ticker.tick().await; // the keeper catches up at start
                loop {
                    ticker.tick().await;
                    link.lifecycle(Lifecycle::CatchUp);
                }
            });
        }
        for (log, every) in
            [(Log::DirectRouting, link.config.direct_routing_poll_s), (Log::Pstn, link.config.pstn_poll_s)]
        {
            if every > 0 {
                tokio::spawn(log_poller(Arc::clone(&link), Arc::clone(ctx), log, every));
            }
        }
        if !link.config.presence_users.is_empty() && link.config.presence_poll_s > 0 {
            tokio::spawn(presence_poller(Arc::clone(&link), Arc::clone(ctx)));
        }
        link
    }

    fn url(&self, path: &str) -> String {
        format!("{}/v1.0{path}", self.config.graph_url.trim_end_matches('/'))
    }

    /// Whether `url` (a `@odata.nextLink` from a response) is on this link's Graph: the
    /// token goes nowhere else.
    fn on_graph(&self, url: &str) -> bool {
        let base = self.config.graph_url.trim_end_matches('/');
        url.strip_prefix(base).is_some_and(|rest| rest.starts_with('/'))
    }

    /// Queues a call record for fetching (a notification's id).
    pub fn queue_fetch(&self, id: String) -> bool {
        self.fetch.try_send(id).is_ok()
    }

    /// Tells the keeper about a lifecycle notification.
    pub fn lifecycle(&self, what: Lifecycle) {
        let _ = self.lifecycle.try_send(what);
    }

    /// Whether the presence of `user` is followed (`presence_users`).
    pub fn follows(&self, user: &str) -> bool {
        self.config.presence_users.iter().any(|u| u.eq_ignore_ascii_case(user))
    }

    /// Turns presence observations into events (notifications and polls). Only the users
    /// of `presence_users` are followed: an observation of anyone else is dropped and
    /// counted (`ccstream_ingest_unmapped_total{event="unknown_user"}`), so the state held
    /// per user stays bounded by the config.
    pub fn observe_presence(
        &self,
        observed: &[presence::Presence],
        now_ms: i64,
        telemetry: &crate::telemetry::Telemetry,
    ) -> Vec<ccstream_schemas::Event<'static>> {
        let (known, unknown): (Vec<presence::Presence>, Vec<presence::Presence>) =
            observed.iter().cloned().partition(|p| self.follows(&p.id));
        if !unknown.is_empty() {
            telemetry.unmapped.with_label_values(&[presence::SOURCE, "unknown_user"]).inc_by(unknown.len() as u64);
        }
        lock(&self.presence).observe(&known, &self.config.tenant, now_ms)
    }

    async fn token(&self) -> Result<String, GraphError> {
        let mut cached = self.token.lock().await;
        if let Some((t, until)) = cached.as_ref() {
            if std::time::Instant::now() < *until {
                return Ok(t.clone());
            }
        }
        let c = &self.config;
        let url = format!("{}/{}/oauth2/v2.0/token", c.authority.trim_end_matches('/'), c.entra_tenant_id);
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("client_id", &c.client_id)
            .append_pair("client_secret", &c.client_secret)
            .append_pair("scope", &format!("{}/.default", c.graph_url.trim_end_matches('/')))
            .append_pair("grant_type", "client_credentials")
            .finish();
        let why = |why: String| GraphError::Token { url: url.clone(), why };
        let resp = self
            .client
            .post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|e| why(e.to_string()))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| why(e.to_string()))?;
        if !status.is_success() {
            return Err(why(format!("HTTP {status}: {}", text.chars().take(300).collect::<String>())));
        }
        let v: Value = serde_json::from_str(&text).map_err(|e| why(e.to_string()))?;
        let token =
            v.get("access_token").and_then(Value::as_str).ok_or_else(|| why("no access_token".into()))?.to_string();
        let expires_in = v
            .get("expires_in")
            .and_then(|e| e.as_u64().or_else(|| e.as_str().and_then(|s| s.parse().ok())))
            .unwrap_or(3600);
        let until = std::time::Instant::now() + Duration::from_secs(expires_in.saturating_sub(60).max(1));
        *cached = Some((token.clone(), until));
        Ok(token)
    }

    /// Sends a request with retries (see the module doc); returns the final status and body.
    async fn request(
        &self,
        method: Method,
        url: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Bytes), GraphError> {
        let mut refreshed = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let token = self.token().await?;
            let mut req = self.client.request(method.clone(), url).bearer_auth(&token);
            if let Some(b) = body {
                req = req.header("content-type", "application/json").body(b.to_string());
            }
            let backoff = Duration::from_millis((500u64 << attempt.min(7)).min(60_000));
            match req.send().await {
                Err(source) if attempt >= MAX_ATTEMPTS => {
                    return Err(GraphError::Http { method, url: url.to_string(), source })
                }
                Err(_) => tokio::time::sleep(backoff).await,
                Ok(resp) => {
                    let status = resp.status();
                    let retry_after = resp
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(|s| Duration::from_secs(s.min(120)));
                    let bytes = resp.bytes().await.unwrap_or_default();
                    let retry = status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
                    if status == StatusCode::UNAUTHORIZED && !refreshed {
                        refreshed = true;
                        *self.token.lock().await = None;
                        continue;
                    }
                    if retry && attempt < MAX_ATTEMPTS {
                        tokio::time::sleep(retry_after.unwrap_or(backoff)).await;
                        continue;
                    }
                    return Ok((status, bytes));
                }
            }
        }
    }

    /// GET that must succeed.
    async fn get(&self, url: &str) -> Result<Bytes, GraphError> {
        let (status, body) = self.request(Method::GET, url, None).await?;
        if !status.is_success() {
            let body = String::from_utf8_lossy(&body).chars().take(300).collect();
            return Err(GraphError::Status { method: Method::GET, url: url.to_string(), status, body });
        }
        Ok(body)
    }

    fn seen_version(&self, id: &str) -> Option<i64> {
        lock(&self.seen).get(id).copied()
    }

    fn mark_seen(&self, id: &str, version: i64) {
        let mut seen = lock(&self.seen);
        if seen.len() >= MAX_SEEN {
            seen.clear();
        }
        let v = seen.entry(id.to_string()).or_insert(version);
        *v = (*v).max(version);
    }
}

/// Fetches queued records, one at a time (Graph throttles per app and tenant).
async fn fetcher(link: Arc<GraphLink>, ctx: Arc<Context>, mut rx: mpsc::Receiver<String>) {
    while let Some(id) = rx.recv().await {
        if let Err(e) = fetch_record(&link, &ctx, &id).await {
            let mut batch = Batch::new(callrecord::SOURCE);
            ctx.telemetry.seen(callrecord::SOURCE, 0, (ctx.now_ms)());
            let origin = format!("graph {}", link.config.entra_tenant_id);
            ctx.reject(
                &mut batch,
                callrecord::SOURCE,
                &origin,
                Reject::Invalid,
                format!("fetching call record {id}: {e}"),
                id.as_bytes(),
            );
            let _ = ctx.publisher.send(batch).await;
        }
    }
}

async fn fetch_record(link: &GraphLink, ctx: &Context, id: &str) -> Result<(), GraphError> {
    let url = link.url(&format!("/communications/callRecords/{id}?$expand=sessions($expand=segments)"));
    let body = link.get(&url).await?;
    let now = (ctx.now_ms)();
    ctx.telemetry.seen(callrecord::SOURCE, body.len(), now);
    let origin = format!("graph {url}");
    let mut batch = Batch::new(callrecord::SOURCE);
    let parsed = parse_record(&body).and_then(|r| {
        let raw: Value = serde_json::from_slice(&body).map_err(|e| callrecord::RecordError::Json(e.to_string()))?;
        Ok((r, raw))
    });
    let (mut record, mut raw) = match parsed {
        Ok(x) => x,
        Err(e) => {
            ctx.reject(&mut batch, callrecord::SOURCE, &origin, Reject::Malformed, e.to_string(), &body);
            let _ = ctx.publisher.publish(batch).await;
            return Ok(());
        }
    };
    if link.seen_version(&record.id).is_some_and(|v| v >= record.version) {
        return Ok(()); // this version (or a newer one) is already published
    }
    let mut next = record.sessions_next_link.take();
    // A record with a sessions page missing is published with what it has but not marked
    // seen: the next notification or catch-up fetches it whole.
    let mut complete = true;
    while let Some(page_url) = next {
        if !link.on_graph(&page_url) {
            let reason = format!("a sessions page link off the Graph endpoint: {page_url}");
            ctx.reject(&mut batch, callrecord::SOURCE, &origin, Reject::Invalid, reason, page_url.as_bytes());
            complete = false;
            break;
        }
        let page = link.get(&page_url).await?;
        ctx.telemetry.received_bytes.with_label_values(&[callrecord::SOURCE]).inc_by(page.len() as u64);
        next = match merge_sessions_page(&mut record, &mut raw, &page) {
            Ok(n) => n,
            Err(e) => {
                ctx.reject(&mut batch, callrecord::SOURCE, &page_url, Reject::Malformed, e.to_string(), &page);
                complete = false;
                None
            }
        };
    }
    if let Some(obj) = raw.as_object_mut() {
        obj.remove("sessions@odata.nextLink");
    }
    match map_record(&record, &raw.to_string(), &link.config.tenant) {
        Ok(events) => {
            for e in events {
                batch.event(e, now);
            }
        }
        Err(e) => ctx.reject(&mut batch, callrecord::SOURCE, &origin, Reject::Invalid, e.to_string(), &body),
    }
    if ctx.publisher.publish(batch).await.is_ok() && complete {
        link.mark_seen(&record.id, record.version);
    }
    Ok(())
}

/// Whether `s` is a GUID (`8-4-4-4-12` hex digits, either case): the only ids that go into a
/// Graph URL.
pub fn is_guid(s: &str) -> bool {
    s.len() == 36
        && s.bytes()
            .enumerate()
            .all(|(i, b)| if matches!(i, 8 | 13 | 18 | 23) { b == b'-' } else { b.is_ascii_hexdigit() })
}

/// Lists records that started in the catch-up window and queues the new ones.
async fn catch_up(link: &GraphLink, ctx: &Context) -> Result<usize, GraphError> {
    let since = (ctx.now_ms)() - link.config.catch_up_hours as i64 * 3_600_000;
    let mut next = Some(
        link.url(&format!("/communications/callRecords?$filter=startDateTime%20ge%20{}", format_rfc3339_ms(since))),
    );
    let mut queued = 0;
    while let Some(url) = next {
        let body = link.get(&url).await?;
        let page: Page<CallRecord> = match serde_json::from_slice(&body) {
            Ok(p) => p,
            Err(e) => {
                let mut batch = Batch::new(callrecord::SOURCE);
                ctx.reject(
                    &mut batch,
                    callrecord::SOURCE,
                    &url,
                    Reject::Malformed,
                    format!("call record list: {e}"),
                    &body,
                );
                let _ = ctx.publisher.send(batch).await;
                break;
            }
        };
        for r in page.value {
            if is_guid(&r.id) && link.seen_version(&r.id).is_none_or(|v| v < r.version) && link.queue_fetch(r.id) {
                queued += 1;
            }
        }
        next = page.next_link.filter(|u| link.on_graph(u));
    }
    Ok(queued)
}

/// Keeps the subscriptions alive and runs catch-ups.
async fn keeper(link: Arc<GraphLink>, ctx: Arc<Context>, mut rx: mpsc::Receiver<Lifecycle>) {
    if let Err(e) = catch_up(&link, &ctx).await {
        tracing::warn!(entra_tenant = %link.config.entra_tenant_id, error = %e, "Graph catch-up failed");
    }
    let Some(base) = link.config.notification_url.clone() else {
        while let Some(what) = rx.recv().await {
            if what == Lifecycle::CatchUp {
                let _ = catch_up(&link, &ctx).await;
            }
        }
        return;
    };
    let code = ctx
        .config
        .secret
        .as_deref()
        .map(|s| format!("?code={}", url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>()))
        .unwrap_or_default();
    let base = base.trim_end_matches('/');
    let mut subs = vec![Subscription {
        resource: "/communications/callRecords".into(),
        notification_url: format!("{base}/graph/notifications{code}"),
        minutes: CALL_RECORD_SUBSCRIPTION_MINUTES - 5,
        id: None,
        renew_at: 0,
    }];
    if !link.config.presence_users.is_empty() {
        let ids: Vec<String> =
            link.config.presence_users.iter().take(PRESENCE_BATCH).map(|u| format!("'{u}'")).collect();
        subs.push(Subscription {
            resource: format!("/communications/presences?$filter=id in ({})", ids.join(",")),
            notification_url: format!("{base}/graph/presence{code}"),
            minutes: PRESENCE_SUBSCRIPTION_MINUTES - 5,
            id: None,
            renew_at: 0,
        });
    }
    let lifecycle_url = format!("{base}/graph/lifecycle{code}");
    loop {
        for s in subs.iter_mut() {
            if (ctx.now_ms)() >= s.renew_at {
                if let Err(e) = s.keep(&link, &lifecycle_url, (ctx.now_ms)()).await {
                    tracing::warn!(entra_tenant = %link.config.entra_tenant_id, resource = %s.resource, error = %e, "Graph subscription failed");
                    s.renew_at = (ctx.now_ms)() + 60_000;
                }
            }
        }
        let wait = subs.iter().map(|s| s.renew_at).min().unwrap_or(i64::MAX) - (ctx.now_ms)();
        let wait = Duration::from_millis(wait.clamp(1_000, 3_600_000) as u64);
        match tokio::time::timeout(wait, rx.recv()).await {
            Ok(Some(Lifecycle::CatchUp)) => {
                let _ = catch_up(&link, &ctx).await;
            }
            Ok(Some(Lifecycle::Renew)) => subs.iter_mut().for_each(|s| s.renew_at = 0),
            Ok(Some(Lifecycle::Recreate)) => subs.iter_mut().for_each(|s| {
                s.id = None;
                s.renew_at = 0;
            }),
            Ok(None) => return,
            Err(_) => {}
        }
    }
}

/// The body of `POST /subscriptions` (the documented request's shape).
pub fn subscription_request(
    resource: &str,
    notification_url: &str,
    lifecycle_url: &str,
    expiration: &str,
    client_state: Option<&str>,
) -> Value {
    json!({
        "changeType": "updated",
        "notificationUrl": notification_url,
        "lifecycleNotificationUrl": lifecycle_url,
        "resource": resource,
        "expirationDateTime": expiration,
        "clientState": client_state,
    })
}

#[derive(Debug)]
struct Subscription {
    resource: String,
    notification_url: String,
    minutes: i64,
    id: Option<String>,
    renew_at: i64,
}

impl Subscription {
    /// Renews the subscription, or creates it when it has none or Graph forgot it.
    async fn keep(&mut self, link: &GraphLink, lifecycle_url: &str, now: i64) -> Result<(), GraphError> {
        let expires = now + self.minutes * 60_000;
        let expiration = format_rfc3339_ms(expires);
        if let Some(id) = &self.id {
            let url = link.url(&format!("/subscriptions/{id}"));
            let (status, body) =
                link.request(Method::PATCH, &url, Some(&json!({ "expirationDateTime": expiration }))).await?;
            if status.is_success() {
                self.renew_at = now + self.minutes * 45_000; // three quarters of the life
                return Ok(());
            }
            if status != StatusCode::NOT_FOUND {
                let body = String::from_utf8_lossy(&body).chars().take(300).collect();
                return Err(GraphError::Status { method: Method::PATCH, url, status, body });
            }
        }
        let body = subscription_request(
            &self.resource,
            &self.notification_url,
            lifecycle_url,
            &expiration,
            link.config.client_state.as_deref(),
        );
        let url = link.url("/subscriptions");
        let (status, resp) = link.request(Method::POST, &url, Some(&body)).await?;
        if !status.is_success() {
            let body = String::from_utf8_lossy(&resp).chars().take(300).collect();
            return Err(GraphError::Status { method: Method::POST, url, status, body });
        }
        let v: Value = serde_json::from_slice(&resp).unwrap_or(Value::Null);
        self.id = v.get("id").and_then(Value::as_str).map(str::to_string);
        self.renew_at = now + self.minutes * 45_000;
        Ok(())
    }
}

/// Pulls a call log every `every_s` seconds, window after window (`[from, to)` on call start
/// time, from `catch_up_hours` back at first).
async fn log_poller(link: Arc<GraphLink>, ctx: Arc<Context>, log: Log, every_s: u64) {
    let mut from = (ctx.now_ms)() - link.config.catch_up_hours as i64 * 3_600_000;
    let mut ticker = tokio::time::interval(Duration::from_secs(every_s));
    loop {
        ticker.tick().await;
        let to = (ctx.now_ms)();
        match pull_log(&link, &ctx, log, from, to).await {
            Ok(()) => from = to,
            Err(e) => {
                tracing::warn!(entra_tenant = %link.config.entra_tenant_id, function = %log.function(), error = %e, "Graph call log pull failed")
            }
        }
    }
}

async fn pull_log(link: &GraphLink, ctx: &Context, log: Log, from: i64, to: i64) -> Result<(), GraphError> {
    let source = log.source();
    let mut next = Some(link.url(&format!(
        "/communications/callRecords/{}(fromDateTime={},toDateTime={})",
        log.function(),
        format_rfc3339_ms(from),
        format_rfc3339_ms(to)
    )));
    while let Some(url) = next {
        let body = link.get(&url).await?;
        let now = (ctx.now_ms)();
        ctx.telemetry.seen(source, body.len(), now);
        let mut batch = Batch::new(source);
        next = match logs::map_page(log, &body, &link.config.tenant) {
            Ok((rows, next)) => {
                for row in rows {
                    match row {
                        Ok(e) => batch.event(e, now),
                        Err((e, raw)) => {
                            ctx.reject(&mut batch, source, &url, Reject::Invalid, e.to_string(), raw.as_bytes())
                        }
                    }
                }
                next
            }
            Err(e) => {
                ctx.reject(&mut batch, source, &url, Reject::Malformed, e.to_string(), &body);
                None
            }
        };
        if let Err(e) = ctx.publisher.publish(batch).await {
            return Err(GraphError::Token { url, why: e.to_string() });
        }
    }
    Ok(())
}

/// Polls the presence of the configured agents.
async fn presence_poller(link: Arc<GraphLink>, ctx: Arc<Context>) {
    let mut ticker = tokio::time::interval(Duration::from_secs(link.config.presence_poll_s));
    loop {
        ticker.tick().await;
        for chunk in link.config.presence_users.chunks(PRESENCE_BATCH) {
            if let Err(e) = fetch_presence(&link, &ctx, chunk).await {
                tracing::warn!(entra_tenant = %link.config.entra_tenant_id, error = %e, "Graph presence poll failed");
            }
        }
    }
}

/// Fetches the presence of `ids` and publishes what changed.
pub(super) async fn fetch_presence(link: &GraphLink, ctx: &Context, ids: &[String]) -> Result<(), GraphError> {
    let url = link.url("/communications/getPresencesByUserId");
    let (status, body) = link.request(Method::POST, &url, Some(&json!({ "ids": ids }))).await?;
    if !status.is_success() {
        let body = String::from_utf8_lossy(&body).chars().take(300).collect();
        return Err(GraphError::Status { method: Method::POST, url, status, body });
    }
    let now = (ctx.now_ms)();
    ctx.telemetry.seen(presence::SOURCE, body.len(), now);
    let mut batch = Batch::new(presence::SOURCE);
    match presence::parse(&body) {
        Ok(observed) => {
            for e in link.observe_presence(&observed, now, &ctx.telemetry) {
                batch.event(e, now);
            }
        }
        Err(e) => ctx.reject(&mut batch, presence::SOURCE, &url, Reject::Malformed, e.to_string(), &body),
    }
    let _ = ctx.publisher.publish(batch).await;
    Ok(())
}
