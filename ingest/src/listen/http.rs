//! The webhook server: `POST /events` (canonical JSON Lines), `POST /acs/eventgrid` (Event
//! Grid deliveries: Job Router and calling events, with the subscription handshake),
//! `POST /acs/callautomation` (Call Automation CloudEvents), and for Microsoft Graph
//! `POST /graph/notifications` (call-record change notifications), `/graph/lifecycle`,
//! `/graph/presence` (each with the `validationToken` handshake: the decoded token echoed as
//! `text/plain` at once) and `/graph/calling` (calling-bot notifications forwarded by the
//! bot service).
//!
//! Graph notifications must carry the `clientState` of a link (which then decides their
//! tenant; a `tenantId` of another Entra tenant is refused): a POST in which none does is
//! refused with `403`; each one that does not is dead-lettered. Valid ones are acknowledged
//! with `202` before the record is fetched.
//!
//! `OPTIONS` on the ACS routes answers the CloudEvents webhook handshake
//! (`WebHook-Request-Origin` → `WebHook-Allowed-Origin`).
//!
//! Every request needs a webhook credential ([`super::credentials`]), whose tenants are the
//! only ones its input may be for; a request without one is counted, not dead-lettered.
//!
//! Status codes: `200` once every event is durable (rejected parts are dead-lettered and
//! counted in the reply); `400` when nothing in the body is usable; `401` without a secret,
//! `403` with a wrong one; `408` for a body not read within `read_timeout_s`; `413` over the
//! body limit; `503` when the log cannot take the events, when `max_concurrent_requests`
//! are under way, or when the request was not answered within `request_timeout_s` (the
//! sender retries; ids make the retry idempotent).
//!
//! Connections: at most `max_connections` open; a request's header, and on a kept-alive
//! connection the next request's header, must arrive within `read_timeout_s`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use ccstream_schemas::Event;
use serde_json::json;

use super::credentials::{TenantScope, Verdict};
use super::graph::{self, GraphLink, Lifecycle};
use super::publish::Batch;
use super::Context;
use crate::acs::{self, Delivery, Mapped};
use crate::graph::notify::{self, Notification};
use crate::graph::{bot, callrecord, presence};
use crate::telemetry::Reject;

/// The `source` of canonical events posted to `/events`.
pub const SOURCE_EVENTS: &str = "http.events";

/// A Graph `validationToken` echoed back, at most (bytes; Graph's are a few hundred).
const MAX_VALIDATION_TOKEN: usize = 1024;

/// Serves the webhooks on `listener`, over TLS with `tls`, within the listener limits of
/// `ctx.config` (see the module doc).
pub(super) async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    ctx: Arc<Context>,
) {
    let limits = Arc::new(Limits {
        requests: tokio::sync::Semaphore::new(ctx.config.max_concurrent_requests),
        ctx: Arc::clone(&ctx),
    });
    let app = router(Arc::clone(&ctx)).layer(axum::middleware::from_fn_with_state(limits, limit));
    super::accept(listener, ctx, "http", move |stream, peer, ctx| {
        let (app, tls) = (app.clone(), tls.clone());
        async move {
            let _ = stream.set_nodelay(true);
            match tls {
                None => connection(stream, peer, app, &ctx).await,
                Some(acceptor) => {
                    let read = Duration::from_secs(ctx.config.read_timeout_s);
                    match tokio::time::timeout(read, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => connection(stream, peer, app, &ctx).await,
                        Ok(Err(e)) => tracing::debug!(listener = "http", %peer, error = %e, "TLS handshake failed"),
                        Err(_) => ctx.telemetry.connections_cut.with_label_values(&["http", "slow"]).inc(),
                    }
                }
            }
        }
    })
    .await
}

/// One HTTP/1.1 connection: its requests go to `app`; the header of each (the first, or the
/// next on a kept-alive connection) must arrive within `read_timeout_s`.
async fn connection<I>(io: I, peer: std::net::SocketAddr, app: Router, ctx: &Context)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let mut app = app.clone();
        async move { tower::Service::call(&mut app, req).await }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(ctx.config.read_timeout_s))
        .serve_connection(hyper_util::rt::TokioIo::new(io), service);
    if let Err(e) = conn.await {
        if e.is_timeout() {
            ctx.telemetry.connections_cut.with_label_values(&["http", "slow"]).inc();
        }
        tracing::debug!(listener = "http", %peer, error = %e, "connection ended with an error");
    }
}

/// What the request middleware ([`limit`]) shares.
struct Limits {
    ctx: Arc<Context>,
    /// A permit per request under way.
    requests: tokio::sync::Semaphore,
}

/// Every request: refused with `503` when `max_concurrent_requests` are under way, answered
/// `503` when not done within `request_timeout_s`; every response says `nosniff`.
async fn limit(State(limits): State<Arc<Limits>>, req: Request, next: axum::middleware::Next) -> Response {
    let ctx = &limits.ctx;
    let mut response = match limits.requests.try_acquire() {
        Err(_) => {
            ctx.telemetry.requests_refused.with_label_values(&["busy"]).inc();
            let mut r = reply(StatusCode::SERVICE_UNAVAILABLE, json!({ "error": "too many requests under way" }));
            r.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            r
        }
        Ok(_permit) => {
            let timeout = Duration::from_secs(ctx.config.request_timeout_s);
            match tokio::time::timeout(timeout, next.run(req)).await {
                Ok(r) => r,
                Err(_) => {
                    ctx.telemetry.requests_refused.with_label_values(&["timeout"]).inc();
                    tracing::warn!(
                        timeout_s = ctx.config.request_timeout_s,
                        "a webhook request was not answered in time"
                    );
                    reply(StatusCode::SERVICE_UNAVAILABLE, json!({ "error": "the request was not answered in time" }))
                }
            }
        }
    };
    response.headers_mut().insert(header::X_CONTENT_TYPE_OPTIONS, header::HeaderValue::from_static("nosniff"));
    response
}

/// The routes, on `ctx`.
pub fn router(ctx: Arc<Context>) -> Router {
    Router::new()
        .route("/events", post(events))
        .route("/acs/eventgrid", post(eventgrid).options(abuse_protection))
        .route("/acs/callautomation", post(callautomation).options(abuse_protection))
        .route("/graph/notifications", post(graph_notifications))
        .route("/graph/lifecycle", post(graph_lifecycle))
        .route("/graph/presence", post(graph_presence))
        .route("/graph/calling", post(graph_calling))
        .with_state(ctx)
}

fn reply(status: StatusCode, body: serde_json::Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// The secret a request carries: `Authorization: Bearer`, `x-ccstream-secret`, or `?code=`.
fn presented(headers: &HeaderMap, uri: &Uri) -> Option<String> {
    if let Some(v) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        if let Some(token) = v.strip_prefix("Bearer ") {
            return Some(token.trim().to_string());
        }
    }
    if let Some(v) = headers.get("x-ccstream-secret").and_then(|v| v.to_str().ok()) {
        return Some(v.to_string());
    }
    uri.query()
        .and_then(|q| url::form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "code").map(|(_, v)| v.into_owned()))
}

/// An admitted request: where it came from, its body, and the tenants its credential
/// speaks for.
struct Admitted {
    origin: String,
    body: axum::body::Bytes,
    scope: TenantScope,
}

/// Reads the body of an authorized request within the limit, or the response that refuses
/// it. A request without a valid credential is only counted: its body is neither read nor
/// kept (an anonymous sender cannot fill the dead letters).
async fn admit(ctx: &Context, source: &'static str, req: Request) -> Result<Admitted, Response> {
    let (parts, body) = req.into_parts();
    let now = (ctx.now_ms)();
    let origin = format!("http {}", parts.uri.path());
    let max = ctx.config.max_body_bytes;
    let declared =
        parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    let scope = match ctx.credentials.check(presented(&parts.headers, &parts.uri).as_deref()) {
        Verdict::Allowed { scope, .. } => scope,
        verdict => {
            drop(body);
            ctx.telemetry.seen(source, declared.unwrap_or(0), now);
            ctx.telemetry.reject(source, Reject::Unauthorized);
            let (status, why) = verdict.refusal().expect("not allowed");
            tracing::info!(source, %origin, why, "webhook request refused");
            return Err(reply(status, json!({ "error": why })));
        }
    };
    let refuse = |status, why, reason, raw| refuse(ctx, source, &origin, status, why, reason, raw);
    if let Some(n) = declared.filter(|n| *n > max) {
        ctx.telemetry.seen(source, n, now);
        let reason = format!("body of {n} bytes exceeds {max}");
        return Err(refuse(StatusCode::PAYLOAD_TOO_LARGE, Reject::TooLarge, reason, Default::default()).await);
    }
    let read = Duration::from_secs(ctx.config.read_timeout_s);
    match tokio::time::timeout(read, to_bytes(body, max)).await {
        Ok(Ok(bytes)) => {
            ctx.telemetry.seen(source, bytes.len(), now);
            Ok(Admitted { origin, body: bytes, scope })
        }
        Err(_) => {
            ctx.telemetry.requests_refused.with_label_values(&["slow"]).inc();
            tracing::debug!(source, %origin, "a request body did not arrive within read_timeout_s");
            let mut r = reply(StatusCode::REQUEST_TIMEOUT, json!({ "error": "the body did not arrive in time" }));
            r.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
            Err(r)
        }
        Ok(Err(_)) => {
            ctx.telemetry.seen(source, max, now);
            let reason = format!("body exceeds {max} bytes");
            Err(refuse(StatusCode::PAYLOAD_TOO_LARGE, Reject::TooLarge, reason, Default::default()).await)
        }
    }
}

/// Counts and dead-letters a refused request; the reply that says why.
async fn refuse(
    ctx: &Context,
    source: &'static str,
    origin: &str,
    status: StatusCode,
    why: Reject,
    reason: String,
    raw: axum::body::Bytes,
) -> Response {
    let mut batch = Batch::new(source);
    ctx.reject(&mut batch, source, origin, why, reason.clone(), &raw);
    let _ = ctx.publisher.publish(batch).await;
    reply(status, json!({ "error": reason }))
}

/// Publishes `batch`; `ok` is the reply once it is durable.
async fn commit(ctx: &Context, batch: Batch, ok: Response) -> Response {
    match ctx.publisher.publish(batch).await {
        Ok(()) => ok,
        Err(e) => reply(StatusCode::SERVICE_UNAVAILABLE, json!({ "error": e.to_string() })),
    }
}

/// Rejected lines listed in a reply, at most (the rest are counted in `rejected_lines`).
const REPLY_REJECTIONS: usize = 100;

/// `POST /events`: canonical events as JSON Lines.
async fn events(State(ctx): State<Arc<Context>>, req: Request<Body>) -> Response {
    let Admitted { origin, body, scope } = match admit(&ctx, SOURCE_EVENTS, req).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let now = (ctx.now_ms)();
    let mut batch = Batch::new(SOURCE_EVENTS);
    let mut rejected = Vec::new();
    for (i, line) in body.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let checked = std::str::from_utf8(line)
            .map_err(|_| "not UTF-8".to_string())
            .and_then(|text| Event::from_json(text).map_err(|e| e.to_string()))
            .and_then(|e| e.validate().map(|typed| (e, typed)).map_err(|e| e.to_string()))
            .map_err(|reason| (Reject::Invalid, reason))
            .and_then(|(e, typed)| match e.tenant_id.as_deref() {
                Some(t) if !scope.allows(t) => {
                    Err((Reject::Unauthorized, format!("tenant_id {t:?} is not a tenant of this request's credential")))
                }
                _ => Ok((e, typed)),
            });
        match checked {
            Ok((mut event, typed)) => {
                // Checked once: the source set here is none of what `validate` checks.
                if event.source.is_none() {
                    event.source = Some(SOURCE_EVENTS.into());
                }
                batch.validated_event(&event, typed, now);
            }
            Err((why, reason)) => {
                let at = Some(i as i64 + 1);
                if rejected.len() < REPLY_REJECTIONS {
                    rejected.push(json!({ "line": i + 1, "reason": reason }));
                }
                ctx.reject_at(&mut batch, SOURCE_EVENTS, &origin, at, why, reason, line);
            }
        }
    }
    let (accepted, rejected_lines) = (batch.events, batch.dead_letters);
    let status = if accepted == 0 && rejected_lines > 0 { StatusCode::BAD_REQUEST } else { StatusCode::OK };
    let answer = json!({ "accepted": accepted, "rejected_lines": rejected_lines, "rejected": rejected });
    commit(&ctx, batch, reply(status, answer)).await
}

/// The CloudEvents webhook handshake (CloudEvents "HTTP 1.1 Web Hooks" §4, used by Event Grid
/// subscriptions in the CloudEvents schema): `OPTIONS` with `WebHook-Request-Origin` is
/// answered `200` with `WebHook-Allowed-Origin` set to that origin (any rate). It needs the
/// secret like every other request.
async fn abuse_protection(State(ctx): State<Arc<Context>>, headers: HeaderMap, uri: Uri) -> Response {
    if let Some((status, why)) = ctx.credentials.check(presented(&headers, &uri).as_deref()).refusal() {
        return reply(status, json!({ "error": why }));
    }
    let Some(origin) = headers.get("webhook-request-origin").cloned() else {
        return reply(StatusCode::BAD_REQUEST, json!({ "error": "no WebHook-Request-Origin header" }));
    };
    (
        StatusCode::OK,
        [("webhook-allowed-origin", origin), ("webhook-allowed-rate", header::HeaderValue::from_static("*"))],
    )
        .into_response()
}

fn validation_token(uri: &Uri) -> Option<String> {
    uri.query().and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "validationToken").map(|(_, v)| v.into_owned())
    })
}

/// The Graph link a notification belongs to: the one whose `clientState` it carries (a
/// link without one takes no notifications), if the notification's `tenantId` (when it
/// has one) is that link's Entra tenant and the request's credential speaks for the link's
/// tenant; else why not.
fn link_for(ctx: &Context, n: &Notification, scope: &TenantScope) -> Result<Arc<GraphLink>, &'static str> {
    let links = ctx.graph.get().ok_or("no Graph link is configured")?;
    let link = links
        .iter()
        .find(|l| l.config.client_state.as_deref().is_some_and(|s| !s.is_empty() && n.client_state_is(s)))
        .ok_or("wrong clientState")?;
    if n.tenant_id.as_deref().is_some_and(|t| !t.eq_ignore_ascii_case(&link.config.entra_tenant_id)) {
        return Err("the notification's tenantId is not its clientState's tenant");
    }
    if !scope.allows(&link.config.tenant) {
        return Err("the request's credential does not speak for the clientState's tenant");
    }
    Ok(Arc::clone(link))
}

/// Checks each notification's client state; returns the valid ones with their link, having
/// counted and dead-lettered the others; or the response when the POST is refused whole.
async fn graph_admit(
    ctx: &Arc<Context>,
    source: &'static str,
    req: Request<Body>,
) -> Result<Vec<(Notification, Arc<GraphLink>)>, Response> {
    let uri = req.uri().clone();
    let Admitted { origin, body, scope } = admit(ctx, source, req).await?;
    if let Some(token) = validation_token(&uri) {
        if token.len() > MAX_VALIDATION_TOKEN {
            let error = format!("validationToken longer than {MAX_VALIDATION_TOKEN} bytes");
            return Err(reply(StatusCode::BAD_REQUEST, json!({ "error": error })));
        }
        return Err((StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], token).into_response());
    }
    let mut batch = Batch::new(source);
    let notifications = match notify::parse(&body) {
        Ok(n) => n,
        Err(e) => {
            ctx.reject(&mut batch, source, &origin, Reject::Malformed, e.to_string(), &body);
            return Err(commit(ctx, batch, reply(StatusCode::BAD_REQUEST, json!({ "error": e.to_string() }))).await);
        }
    };
    let mut valid = Vec::new();
    for n in notifications {
        match link_for(ctx, &n, &scope) {
            Ok(l) => valid.push((n, l)),
            Err(reason) => {
                let raw = json!({ "subscriptionId": n.subscription_id, "tenantId": n.tenant_id, "resource": n.resource, "clientState": n.client_state.as_ref().map(|_| "(withheld)") });
                ctx.reject(
                    &mut batch,
                    source,
                    &origin,
                    Reject::Unauthorized,
                    reason.to_string(),
                    raw.to_string().as_bytes(),
                );
            }
        }
    }
    let refused = valid.is_empty() && batch.dead_letters > 0;
    let _ = ctx.publisher.publish(batch).await;
    if refused {
        return Err(reply(StatusCode::FORBIDDEN, json!({ "error": "no notification carried a valid clientState" })));
    }
    Ok(valid)
}

/// `POST /graph/notifications`: call-record change notifications → fetches.
async fn graph_notifications(State(ctx): State<Arc<Context>>, req: Request<Body>) -> Response {
    let valid = match graph_admit(&ctx, callrecord::SOURCE, req).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let mut queued = 0;
    let mut batch = Batch::new(callrecord::SOURCE);
    for (n, link) in valid {
        if let Some(id) = n.resource_id().filter(|_| n.is_call_record()) {
            // Only a GUID becomes part of a Graph URL.
            if !graph::is_guid(&id) {
                let origin = format!("graph {}", link.config.entra_tenant_id);
                let reason = format!("call record id {id:?} is not a GUID");
                ctx.reject(&mut batch, callrecord::SOURCE, &origin, Reject::Invalid, reason, id.as_bytes());
                continue;
            }
            if link.queue_fetch(id) {
                queued += 1;
            } else {
                ctx.telemetry.append_failures.with_label_values(&[callrecord::SOURCE]).inc();
                link.lifecycle(Lifecycle::CatchUp); // the queue is full: list later instead
            }
        }
    }
    let _ = ctx.publisher.publish(batch).await;
    reply(StatusCode::ACCEPTED, json!({ "queued": queued }))
}

/// `POST /graph/lifecycle`: reauthorization, removal and missed notifications.
async fn graph_lifecycle(State(ctx): State<Arc<Context>>, req: Request<Body>) -> Response {
    let valid = match graph_admit(&ctx, callrecord::SOURCE, req).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    for (n, link) in valid {
        match n.lifecycle_event.as_deref().map(str::to_ascii_lowercase).as_deref() {
            Some("reauthorizationrequired") => link.lifecycle(Lifecycle::Renew),
            Some("subscriptionremoved") => link.lifecycle(Lifecycle::Recreate),
            Some("missed") => link.lifecycle(Lifecycle::CatchUp),
            _ => {}
        }
    }
    reply(StatusCode::ACCEPTED, json!({}))
}

/// `POST /graph/presence`: presence change notifications (basic: ids only) → fetches.
async fn graph_presence(State(ctx): State<Arc<Context>>, req: Request<Body>) -> Response {
    let valid = match graph_admit(&ctx, presence::SOURCE, req).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let mut by_link: Vec<(Arc<GraphLink>, Vec<String>)> = Vec::new();
    for (n, link) in valid {
        let Some(id) = n.resource_id() else { continue };
        if !link.follows(&id) {
            ctx.telemetry.unmapped.with_label_values(&[presence::SOURCE, "unknown_user"]).inc();
            continue;
        }
        match by_link.iter_mut().find(|(l, _)| Arc::ptr_eq(l, &link)) {
            Some((_, ids)) if !ids.contains(&id) => ids.push(id),
            Some(_) => {}
            None => by_link.push((link, vec![id])),
        }
    }
    for (link, ids) in by_link {
        // A bounded number of fetches per link: past it the notification is dropped and
        // counted (the next one, or the poll, brings the presence).
        let Ok(permit) = Arc::clone(&link.presence_fetches).try_acquire_owned() else {
            ctx.telemetry.requests_refused.with_label_values(&["presence_busy"]).inc();
            tracing::warn!(tenant = %link.config.tenant, "presence notification dropped: fetches under way");
            continue;
        };
        let ctx = Arc::clone(&ctx);
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = graph::fetch_presence(&link, &ctx, &ids).await {
                tracing::warn!(error = %e, "Graph presence notification failed");
            }
        });
    }
    reply(StatusCode::ACCEPTED, json!({}))
}

/// `POST /graph/calling`: calling-bot notifications (`commsNotifications`).
async fn graph_calling(State(ctx): State<Arc<Context>>, req: Request<Body>) -> Response {
    let Admitted { origin, body, scope } = match admit(&ctx, bot::SOURCE, req).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let now = (ctx.now_ms)();
    let mut batch = Batch::new(bot::SOURCE);
    // The credential's tenant; for a credential of any tenant, the only Graph link's (else
    // the default tenant).
    let only_link = ctx.graph.get().and_then(|l| (l.len() == 1).then(|| l[0].config.tenant.clone()));
    let tenant = match scope.resolve(None, only_link.as_deref().unwrap_or(&ctx.config.default_tenant)) {
        Ok(t) => t,
        Err(reason) => {
            ctx.reject(&mut batch, bot::SOURCE, &origin, Reject::Unauthorized, reason.clone(), &body);
            return commit(&ctx, batch, reply(StatusCode::FORBIDDEN, json!({ "error": reason }))).await;
        }
    };
    match bot::map(&body, &tenant, now) {
        Ok(items) => {
            for item in items {
                match item {
                    Ok(e) => batch.event(e, now),
                    Err((e, raw)) => {
                        ctx.reject(&mut batch, bot::SOURCE, &origin, Reject::Invalid, e.to_string(), raw.as_bytes())
                    }
                }
            }
            let accepted = batch.events;
            commit(&ctx, batch, reply(StatusCode::ACCEPTED, json!({ "accepted": accepted }))).await
        }
        Err(e) => {
            ctx.reject(&mut batch, bot::SOURCE, &origin, Reject::Malformed, e.to_string(), &body);
            commit(&ctx, batch, reply(StatusCode::BAD_REQUEST, json!({ "error": e.to_string() }))).await
        }
    }
}

/// Maps a parsed delivery into `batch`; returns what was accepted, unmapped and rejected.
fn map_delivery(
    ctx: &Context,
    batch: &mut Batch,
    origin: &str,
    envelopes: &[acs::Envelope],
    scope: &TenantScope,
) -> serde_json::Value {
    let now = (ctx.now_ms)();
    let (mut accepted, mut unmapped, mut rejected) = (0, 0, Vec::new());
    for e in envelopes {
        // The tenant is the credential's: a resource that a rule gives another tenant is
        // refused.
        let mapped = ctx.acs.map(e).and_then(|m| match m {
            Mapped::Event(mut event) => {
                let tenant = scope
                    .resolve(ctx.acs.rule_tenant(e), &ctx.config.default_tenant)
                    .map_err(|reason| acs::AcsError::Tenant { id: e.id.clone(), reason })?;
                event.tenant_id = Some(tenant.into());
                Ok(Mapped::Event(event))
            }
            other => Ok(other),
        });
        match mapped {
            Ok(Mapped::Event(event)) => {
                accepted += 1;
                batch.event(*event, now);
            }
            Ok(Mapped::Unmapped(name)) => {
                unmapped += 1;
                let source = if e.cloud_event { acs::SOURCE_CALL_AUTOMATION } else { acs::SOURCE_JOBROUTER };
                ctx.telemetry.unmapped.with_label_values(&[source, name]).inc();
            }
            Err(err) => {
                let source = if e.cloud_event { acs::SOURCE_CALL_AUTOMATION } else { acs::SOURCE_JOBROUTER };
                let raw =
                    json!({ "id": e.id, "eventType": e.event_type, "subject": e.subject, "data": e.data }).to_string();
                let why =
                    if matches!(err, acs::AcsError::Tenant { .. }) { Reject::Unauthorized } else { Reject::Invalid };
                ctx.reject(batch, source, origin, why, err.to_string(), raw.as_bytes());
                rejected.push(json!({ "id": e.id, "reason": err.to_string() }));
            }
        }
    }
    json!({ "accepted": accepted, "unmapped": unmapped, "rejected": rejected })
}

async fn acs_delivery(ctx: Arc<Context>, source: &'static str, req: Request<Body>) -> Response {
    let Admitted { origin, body, scope } = match admit(&ctx, source, req).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let mut batch = Batch::new(source);
    match acs::parse_delivery(&body) {
        Ok(Delivery::Validation { code, .. }) => reply(StatusCode::OK, json!({ "validationResponse": code })),
        Ok(Delivery::Events(envelopes)) => {
            let summary = map_delivery(&ctx, &mut batch, &origin, &envelopes, &scope);
            commit(&ctx, batch, reply(StatusCode::OK, summary)).await
        }
        Err(e) => {
            ctx.reject(&mut batch, source, &origin, Reject::Malformed, e.to_string(), &body);
            commit(&ctx, batch, reply(StatusCode::BAD_REQUEST, json!({ "error": e.to_string() }))).await
        }
    }
}

/// `POST /acs/eventgrid`: Event Grid deliveries (Job Router, `IncomingCall`, …).
async fn eventgrid(State(ctx): State<Arc<Context>>, req: Request<Body>) -> Response {
    acs_delivery(ctx, acs::SOURCE_JOBROUTER, req).await
}

/// `POST /acs/callautomation`: Call Automation callbacks (CloudEvents, one or an array).
async fn callautomation(State(ctx): State<Arc<Context>>, req: Request<Body>) -> Response {
    acs_delivery(ctx, acs::SOURCE_CALL_AUTOMATION, req).await
}
