//! The webhook server: `POST /events` (canonical JSON Lines), `POST /acs/eventgrid` (Event
//! Grid deliveries: Job Router and calling events, with the subscription handshake) and
//! `POST /acs/callautomation` (Call Automation CloudEvents).
//!
//! Status codes: `200` once every event is durable (rejected parts are dead-lettered and
//! counted in the reply); `400` when nothing in the body is usable; `401` without the secret,
//! `403` with a wrong one; `413` over the body limit; `503` when the log cannot take the
//! events (the sender retries; ids make the retry idempotent).

use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use ccstream_schemas::Event;
use serde_json::json;

use super::publish::Batch;
use super::Context;
use crate::acs::{self, Delivery, Mapped};
use crate::telemetry::Reject;

/// The `source` of canonical events posted to `/events`.
pub const SOURCE_EVENTS: &str = "http.events";

pub(super) async fn serve(listener: tokio::net::TcpListener, ctx: Arc<Context>) {
    if let Err(e) = axum::serve(listener, router(ctx)).await {
        eprintln!("webhook server stopped: {e}");
    }
}

/// The routes, on `ctx`.
pub fn router(ctx: Arc<Context>) -> Router {
    Router::new()
        .route("/events", post(events))
        .route("/acs/eventgrid", post(eventgrid))
        .route("/acs/callautomation", post(callautomation))
        .with_state(ctx)
}

fn reply(status: StatusCode, body: serde_json::Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// Constant-time comparison (the secret must not leak through timing).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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

/// Reads the body of an authorized request within the limit, or the response that refuses it
/// (counted and dead-lettered).
async fn admit(ctx: &Context, source: &'static str, req: Request) -> Result<(String, axum::body::Bytes), Response> {
    let (parts, body) = req.into_parts();
    let now = (ctx.now_ms)();
    let origin = format!("http {}", parts.uri.path());
    let max = ctx.config.max_body_bytes;
    let refuse = |status, why, reason, raw| refuse(ctx, source, &origin, status, why, reason, raw);
    let declared =
        parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if let Some(expected) = &ctx.config.secret {
        match presented(&parts.headers, &parts.uri) {
            None => {
                ctx.telemetry.seen(source, declared.unwrap_or(0), now);
                let body = to_bytes(body, max).await.unwrap_or_default();
                return Err(
                    refuse(StatusCode::UNAUTHORIZED, Reject::Unauthorized, "no webhook secret".into(), body).await
                );
            }
            Some(s) if !same(s.as_bytes(), expected.as_bytes()) => {
                ctx.telemetry.seen(source, declared.unwrap_or(0), now);
                let body = to_bytes(body, max).await.unwrap_or_default();
                return Err(
                    refuse(StatusCode::FORBIDDEN, Reject::Unauthorized, "wrong webhook secret".into(), body).await
                );
            }
            Some(_) => {}
        }
    }
    if let Some(n) = declared.filter(|n| *n > max) {
        ctx.telemetry.seen(source, n, now);
        let reason = format!("body of {n} bytes exceeds {max}");
        return Err(refuse(StatusCode::PAYLOAD_TOO_LARGE, Reject::TooLarge, reason, Default::default()).await);
    }
    match to_bytes(body, max).await {
        Ok(bytes) => {
            ctx.telemetry.seen(source, bytes.len(), now);
            Ok((origin, bytes))
        }
        Err(_) => {
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

/// `POST /events`: canonical events as JSON Lines.
async fn events(State(ctx): State<Arc<Context>>, req: Request<Body>) -> Response {
    let (origin, body) = match admit(&ctx, SOURCE_EVENTS, req).await {
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
            .and_then(|e| e.validate().map(|_| e).map_err(|e| e.to_string()));
        match checked {
            Ok(mut event) => {
                if event.source.is_none() {
                    event.source = Some(SOURCE_EVENTS.into());
                }
                batch.event(event, now);
            }
            Err(reason) => {
                let d = ccstream_schemas::DeadLetterRecord::new(
                    SOURCE_EVENTS,
                    &origin,
                    Some(i as i64 + 1),
                    reason.clone(),
                    line,
                );
                ctx.telemetry.reject(SOURCE_EVENTS, Reject::Invalid);
                batch.dead_letter(&d);
                rejected.push(json!({ "line": i + 1, "reason": reason }));
            }
        }
    }
    let accepted = batch.events;
    let status = if accepted == 0 && !rejected.is_empty() { StatusCode::BAD_REQUEST } else { StatusCode::OK };
    commit(&ctx, batch, reply(status, json!({ "accepted": accepted, "rejected": rejected }))).await
}

/// Maps a parsed delivery into `batch`; returns what was accepted, unmapped and rejected.
fn map_delivery(ctx: &Context, batch: &mut Batch, origin: &str, envelopes: &[acs::Envelope]) -> serde_json::Value {
    let now = (ctx.now_ms)();
    let (mut accepted, mut unmapped, mut rejected) = (0, 0, Vec::new());
    for e in envelopes {
        match ctx.acs.map(e) {
            Ok(Mapped::Event(event)) => {
                accepted += 1;
                batch.event(*event, now);
            }
            Ok(Mapped::Unmapped(name)) => {
                unmapped += 1;
                let source = if e.cloud_event { acs::SOURCE_CALL_AUTOMATION } else { acs::SOURCE_JOBROUTER };
                ctx.telemetry.unmapped.with_label_values(&[source, &name]).inc();
            }
            Err(err) => {
                let source = if e.cloud_event { acs::SOURCE_CALL_AUTOMATION } else { acs::SOURCE_JOBROUTER };
                let raw =
                    json!({ "id": e.id, "eventType": e.event_type, "subject": e.subject, "data": e.data }).to_string();
                ctx.reject(batch, source, origin, Reject::Invalid, err.to_string(), raw.as_bytes());
                rejected.push(json!({ "id": e.id, "reason": err.to_string() }));
            }
        }
    }
    json!({ "accepted": accepted, "unmapped": unmapped, "rejected": rejected })
}

async fn acs_delivery(ctx: Arc<Context>, source: &'static str, req: Request<Body>) -> Response {
    let (origin, body) = match admit(&ctx, source, req).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let mut batch = Batch::new(source);
    match acs::parse_delivery(&body) {
        Ok(Delivery::Validation { code, .. }) => reply(StatusCode::OK, json!({ "validationResponse": code })),
        Ok(Delivery::Events(envelopes)) => {
            let summary = map_delivery(&ctx, &mut batch, &origin, &envelopes);
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
