//! Microsoft Graph call records (`GET /communications/callRecords/{id}?$expand=sessions(
//! $expand=segments)`), sans-IO: the JSON in, canonical events out.
//!
//! # Parsing
//!
//! Typed and lenient: unknown properties are skipped, enums compare case-insensitively
//! (Microsoft's own fixtures write `Windows`, `Teams`), `null` is absent, durations are
//! ISO 8601 (`PT0.016S`, `P1DT2H`), timestamps may carry 7 fractional digits or an offset.
//! Session pages (`sessions@odata.nextLink`) are merged by the fetcher with
//! [`merge_sessions_page`] before mapping.
//!
//! # Mapping (the table is in `docs/sources.md`)
//!
//! - Every record version: one `call_state` event (`to_state` = `ended`, at `endDateTime`)
//!   whose payload is the **whole record** as fetched, so no field is lost.
//! - A call-queue call — a session whose callee is a service endpoint with role
//!   `skypeForBusinessCallQueues` — becomes the contact-center events: `call_queued` per
//!   queue hop (a later hop overflows from the earlier), then per agent session (callee a
//!   user with a client user agent, after the first hop): `agent_offered` at its start and,
//!   when answered (media flowed and no failure), `call_answered` at the first segment, then
//!   `call_transferred` (to the next answering agent) or `call_ended`, and `wrapup_ended` at
//!   the same instant (Teams has no after-call work). A queued call no agent answered is
//!   `call_abandoned` at the end of its last queue hop.
//! - Each queue or auto-attendant hop: one `queue_result` (role, queue, outcome).
//! - Each media stream: one `media_stream` (jitter = `averageJitter`, loss =
//!   `averagePacketLossRate`, RTT = `averageRoundTripTime`, degradation =
//!   `averageAudioDegradation`; the rest in the payload, with `version` and `stream_key`).
//! - Ids: `graph.callrecord:<record>:<session>:<event type>` for call events (the same in
//!   every version: a newer version changes nothing the fold already has), and
//!   `…:<segment>:<label>:<stream>:<direction>:v<version>` for streams (a newer version adds a
//!   row; the `media_streams` view keeps the latest).

use ccstream_schemas::{parse_rfc3339_ms, Event, EventType};
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// The `source` of events from call records.
pub const SOURCE: &str = "graph.callrecord";

/// Why a call record was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("not a call record: {0}")]
    Json(String),
    #[error("call record {id}: bad `{field}` {value:?}")]
    Time { id: String, field: &'static str, value: String },
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    pub id: Option<String>,
    pub display_name: Option<String>,
    pub tenant_id: Option<String>,
}

/// An identity set (open type): the kinds ccstream reads; others are in the raw record.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentitySet {
    pub user: Option<Identity>,
    pub application_instance: Option<Identity>,
    pub application: Option<Identity>,
    pub phone: Option<Identity>,
    pub guest: Option<Identity>,
    pub acs_user: Option<Identity>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserAgent {
    #[serde(rename = "@odata.type")]
    pub odata_type: Option<String>,
    pub role: Option<String>,
    pub header_value: Option<String>,
    pub platform: Option<String>,
    pub product_family: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    #[serde(rename = "@odata.type")]
    pub odata_type: Option<String>,
    pub user_agent: Option<UserAgent>,
    pub identity: Option<IdentitySet>,
    pub associated_identity: Option<Identity>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailureInfo {
    pub reason: Option<String>,
    pub stage: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stream {
    pub stream_id: Option<String>,
    pub stream_direction: Option<String>,
    pub start_date_time: Option<String>,
    pub end_date_time: Option<String>,
    pub audio_codec: Option<String>,
    pub average_jitter: Option<String>,
    pub max_jitter: Option<String>,
    pub average_round_trip_time: Option<String>,
    pub max_round_trip_time: Option<String>,
    pub average_packet_loss_rate: Option<f64>,
    pub max_packet_loss_rate: Option<f64>,
    pub average_audio_degradation: Option<f64>,
    pub average_ratio_of_concealed_samples: Option<f64>,
    pub average_audio_network_jitter: Option<String>,
    pub packet_utilization: Option<i64>,
    pub was_media_bypassed: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Media {
    pub label: Option<String>,
    #[serde(default, deserialize_with = "null_vec")]
    pub streams: Vec<Stream>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Segment {
    pub id: Option<String>,
    pub start_date_time: Option<String>,
    pub end_date_time: Option<String>,
    pub failure_info: Option<FailureInfo>,
    #[serde(default, deserialize_with = "null_vec")]
    pub media: Vec<Media>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    pub id: Option<String>,
    pub start_date_time: Option<String>,
    pub end_date_time: Option<String>,
    pub caller: Option<Endpoint>,
    pub callee: Option<Endpoint>,
    pub failure_info: Option<FailureInfo>,
    #[serde(default, deserialize_with = "null_vec")]
    pub segments: Vec<Segment>,
}

/// A call record, as far as the mapping reads it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallRecord {
    pub id: String,
    #[serde(default)]
    pub version: i64,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub start_date_time: Option<String>,
    pub end_date_time: Option<String>,
    pub organizer: Option<IdentitySet>,
    #[serde(rename = "organizer_v2")]
    pub organizer_v2: Option<Endpoint>,
    #[serde(default, deserialize_with = "null_vec")]
    pub sessions: Vec<Session>,
    #[serde(rename = "sessions@odata.nextLink")]
    pub sessions_next_link: Option<String>,
}

fn null_vec<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

/// A page of a collection (`value` + `@odata.nextLink`).
#[derive(Debug, Clone, Deserialize)]
#[serde(bound(deserialize = "T: Deserialize<'de>"))]
pub struct Page<T> {
    #[serde(default = "Vec::new", deserialize_with = "null_vec")]
    pub value: Vec<T>,
    #[serde(rename = "@odata.nextLink")]
    pub next_link: Option<String>,
}

/// Parses a call record.
pub fn parse_record(body: &[u8]) -> Result<CallRecord, RecordError> {
    serde_json::from_slice(body).map_err(|e| RecordError::Json(e.to_string()))
}

/// Parses a page of sessions (`GET …/sessions?$expand=segments`) and appends it to the
/// record's sessions; returns the page's next link.
pub fn merge_sessions_page(
    record: &mut CallRecord,
    raw_record: &mut Value,
    body: &[u8],
) -> Result<Option<String>, RecordError> {
    let page: Page<Session> = serde_json::from_slice(body).map_err(|e| RecordError::Json(e.to_string()))?;
    let raw: Value = serde_json::from_slice(body).map_err(|e| RecordError::Json(e.to_string()))?;
    if let (Some(Value::Array(all)), Some(Value::Array(more))) = (raw_record.get_mut("sessions"), raw.get("value")) {
        all.extend(more.iter().cloned());
    }
    record.sessions.extend(page.value);
    Ok(page.next_link)
}

/// An ISO 8601 duration (`PT0.016S`, `P1DT2H3M4.5S`) in milliseconds.
pub fn iso_duration_ms(s: &str) -> Option<f64> {
    let s = s.trim();
    let rest = s.strip_prefix('P').or_else(|| s.strip_prefix('p'))?;
    let (mut total, mut in_time, mut num) = (0.0f64, false, String::new());
    for c in rest.chars() {
        match c {
            'T' | 't' => in_time = true,
            '0'..='9' | '.' | ',' => num.push(if c == ',' { '.' } else { c }),
            _ => {
                let v: f64 = num.parse().ok()?;
                num.clear();
                total += v * match (c.to_ascii_uppercase(), in_time) {
                    ('W', false) => 604_800_000.0,
                    ('D', false) => 86_400_000.0,
                    ('H', true) => 3_600_000.0,
                    ('M', true) => 60_000.0,
                    ('S', true) => 1000.0,
                    _ => return None, // years and months have no fixed length
                };
            }
        }
    }
    (num.is_empty() && total.is_finite()).then_some(total)
}

impl Endpoint {
    fn role(&self) -> Option<&str> {
        self.user_agent.as_ref().and_then(|u| u.role.as_deref())
    }

    /// A Teams call queue or auto attendant (a service endpoint with that role).
    fn service_role(&self) -> Option<&'static str> {
        let role = self.role()?;
        if role.eq_ignore_ascii_case("skypeForBusinessCallQueues") {
            Some("call_queue")
        } else if role.eq_ignore_ascii_case("skypeForBusinessAutoAttendant") {
            Some("auto_attendant")
        } else {
            None
        }
    }

    /// A person on a client (not a service, bot or phone number).
    fn is_user_client(&self) -> bool {
        let client = self.user_agent.as_ref().is_some_and(|u| {
            u.odata_type.as_deref().is_none_or(|t| t.to_ascii_lowercase().ends_with("clientuseragent"))
                && u.role.is_none()
        });
        client && self.user_id().is_some()
    }

    fn user_id(&self) -> Option<&str> {
        self.identity
            .as_ref()
            .and_then(|i| i.user.as_ref())
            .or(self.associated_identity.as_ref())
            .and_then(|u| u.id.as_deref())
            .filter(|s| !s.is_empty())
    }

    /// The id of the resource (queue, attendant) or person behind the endpoint.
    fn id(&self) -> Option<&str> {
        let set = self.identity.as_ref();
        set.and_then(|i| i.application_instance.as_ref())
            .or_else(|| set.and_then(|i| i.user.as_ref()))
            .or(self.associated_identity.as_ref())
            .or_else(|| set.and_then(|i| i.application.as_ref()))
            .or_else(|| set.and_then(|i| i.phone.as_ref()))
            .and_then(|u| u.id.as_deref())
            .filter(|s| !s.is_empty())
    }

    fn display_name(&self) -> Option<&str> {
        let set = self.identity.as_ref();
        set.and_then(|i| i.application_instance.as_ref())
            .or_else(|| set.and_then(|i| i.user.as_ref()))
            .or(self.associated_identity.as_ref())
            .and_then(|u| u.display_name.as_deref())
    }
}

impl FailureInfo {
    fn failed(&self) -> bool {
        self.reason.as_deref().is_some_and(|r| !r.is_empty())
            || self.stage.as_deref().is_some_and(|s| !s.is_empty() && !s.eq_ignore_ascii_case("unknown"))
    }
}

impl Session {
    fn failed(&self) -> bool {
        self.failure_info.as_ref().is_some_and(FailureInfo::failed)
    }

    /// Media flowed: a segment with a stream that carried packets (or, without packet
    /// counts, any stream at all).
    fn media_flowed(&self) -> bool {
        self.segments
            .iter()
            .flat_map(|s| &s.media)
            .flat_map(|m| &m.streams)
            .any(|s| s.packet_utilization.is_none_or(|p| p > 0))
    }
}

struct Timed<'r> {
    start: i64,
    end: i64,
    session: &'r Session,
}

/// Maps one call record (sessions merged) to canonical events for `tenant`. `raw` is the
/// record's JSON as fetched (kept whole in the `call_state` event).
pub fn map_record(record: &CallRecord, raw: &str, tenant: &str) -> Result<Vec<Event<'static>>, RecordError> {
    let id = record.id.as_str();
    let time = |field: &'static str, v: Option<&str>| -> Result<Option<i64>, RecordError> {
        v.map(|s| {
            parse_rfc3339_ms(s).map_err(|_| RecordError::Time { id: id.to_string(), field, value: s.to_string() })
        })
        .transpose()
    };
    let record_end = time("endDateTime", record.end_date_time.as_deref())?;
    let record_start = time("startDateTime", record.start_date_time.as_deref())?;
    let mut out = Vec::new();
    let new = |suffix: &str, t: EventType, at: i64| {
        let mut e = Event::new(format!("{SOURCE}:{id}:{suffix}"), tenant.to_string(), t, at);
        e.source = Some(SOURCE.into());
        e.call_id = Some(id.to_string().into());
        e
    };
    // The record itself, whole.
    let mut ended =
        new(&format!("v{}:record", record.version), EventType::CallState, record_end.or(record_start).unwrap_or(0));
    ended.to_state = Some("ended".into());
    ended.state_reason = record.kind.clone().map(Into::into);
    ended.payload = Some(raw.to_string().into());
    out.push(ended);

    let mut sessions = Vec::with_capacity(record.sessions.len());
    for s in &record.sessions {
        let start = time("sessions.startDateTime", s.start_date_time.as_deref())?;
        let end = time("sessions.endDateTime", s.end_date_time.as_deref())?;
        if let (Some(start), Some(end)) = (start, end) {
            sessions.push(Timed { start, end, session: s });
        }
    }
    sessions.sort_by_key(|t| (t.start, t.end));

    // Queue and attendant hops.
    let hops: Vec<(&Timed<'_>, &'static str)> = sessions
        .iter()
        .filter_map(|t| t.session.callee.as_ref().and_then(Endpoint::service_role).map(|r| (t, r)))
        .collect();
    let queues: Vec<&Timed<'_>> = hops.iter().filter(|(_, r)| *r == "call_queue").map(|(t, _)| *t).collect();
    let sid = |t: &Timed<'_>| t.session.id.clone().unwrap_or_else(|| format!("{}", t.start));
    let queue_of =
        |t: &Timed<'_>| t.session.callee.as_ref().and_then(Endpoint::id).unwrap_or("unknown-queue").to_string();
    if let Some(first) = queues.first() {
        let mut previous: Option<String> = None;
        for q in &queues {
            let queue = queue_of(q);
            let mut e = new(&format!("{}:call_queued", sid(q)), EventType::CallQueued, q.start);
            e.queue_id = Some(queue.clone().into());
            e.overflow_from_queue_id = previous.take().map(Into::into);
            previous = Some(queue);
            out.push(e);
        }
        // Agent sessions: a person on a client, called after the first queue hop.
        let agents: Vec<&Timed<'_>> = sessions
            .iter()
            .filter(|t| t.start >= first.start && t.session.callee.as_ref().is_some_and(Endpoint::is_user_client))
            .collect();
        let answered: Vec<&Timed<'_>> =
            agents.iter().copied().filter(|t| !t.session.failed() && t.session.media_flowed()).collect();
        let last_queue = queues.last().map(|q| queue_of(q));
        for a in &agents {
            let agent = a.session.callee.as_ref().and_then(Endpoint::user_id).unwrap_or_default().to_string();
            let mut offered = new(&format!("{}:agent_offered", sid(a)), EventType::AgentOffered, a.start);
            offered.agent_id = Some(agent.clone().into());
            offered.queue_id = last_queue.clone().map(Into::into);
            out.push(offered);
            let Some(pos) = answered.iter().position(|x| std::ptr::eq(*x, *a)) else { continue };
            let answer_at = a
                .session
                .segments
                .iter()
                .filter_map(|s| s.start_date_time.as_deref().and_then(|t| parse_rfc3339_ms(t).ok()))
                .min()
                .unwrap_or(a.start)
                .max(a.start);
            let mut e = new(&format!("{}:call_answered", sid(a)), EventType::CallAnswered, answer_at);
            e.agent_id = Some(agent.clone().into());
            e.queue_id = last_queue.clone().map(Into::into);
            out.push(e);
            let quality = leg_quality(a.session);
            let mut end = match answered.get(pos + 1) {
                Some(next) => {
                    let mut t = new(&format!("{}:call_transferred", sid(a)), EventType::CallTransferred, a.end);
                    t.transfer_type = Some("blind".into());
                    t.target_agent_id =
                        next.session.callee.as_ref().and_then(Endpoint::user_id).map(|s| s.to_string().into());
                    t
                }
                None => new(&format!("{}:call_ended", sid(a)), EventType::CallEnded, a.end),
            };
            end.agent_id = Some(agent.clone().into());
            [end.jitter_ms, end.packet_loss_rate, end.round_trip_ms, end.audio_degradation] = quality;
            out.push(end);
            let mut w = new(&format!("{}:wrapup_ended", sid(a)), EventType::WrapupEnded, a.end);
            w.agent_id = Some(agent.into());
            out.push(w);
        }
        if answered.is_empty() {
            let at = queues.iter().map(|q| q.end).max().unwrap_or(first.end);
            let mut e =
                new(&format!("{}:call_abandoned", sid(queues.last().unwrap_or(first))), EventType::CallAbandoned, at);
            e.queue_id = last_queue.map(Into::into);
            e.disconnect_by = Some("customer".into());
            out.push(e);
        }
    }
    for (hop, role) in &hops {
        let mut e = new(&format!("{}:queue_result", sid(hop)), EventType::QueueResult, hop.end);
        let callee = hop.session.callee.as_ref();
        e.queue_id = callee.and_then(Endpoint::id).map(|s| s.to_string().into());
        let answered_after = sessions.iter().any(|t| {
            t.start >= hop.start
                && t.session.callee.as_ref().is_some_and(Endpoint::is_user_client)
                && !t.session.failed()
                && t.session.media_flowed()
        });
        let outcome = if hop.session.failed() {
            "failed"
        } else if answered_after {
            "answered"
        } else if *role == "auto_attendant" {
            "passed"
        } else {
            "abandoned"
        };
        e.payload = Some(
            json!({
                "role": role,
                "name": callee.and_then(Endpoint::display_name),
                "outcome": outcome,
                "session_id": hop.session.id,
                "started_at": hop.session.start_date_time,
                "failure": hop.session.failure_info.as_ref().filter(|f| f.failed()).map(|f| json!({"reason": f.reason, "stage": f.stage})),
            })
            .to_string()
            .into(),
        );
        out.push(e);
    }
    // Media streams.
    for t in &sessions {
        let agent = t.session.callee.as_ref().filter(|c| c.is_user_client()).and_then(Endpoint::user_id);
        for seg in &t.session.segments {
            for m in &seg.media {
                for s in &m.streams {
                    out.push(stream_event(record, tenant, t, seg, m, s, agent)?);
                }
            }
        }
    }
    Ok(out)
}

/// The quality of an agent's leg: its worst audio stream's averages (jitter, loss, RTT,
/// degradation), each the maximum over the leg's streams.
fn leg_quality(s: &Session) -> [Option<f64>; 4] {
    let mut q = [None::<f64>; 4];
    for st in s.segments.iter().flat_map(|g| &g.media).flat_map(|m| &m.streams) {
        let v = [
            st.average_jitter.as_deref().and_then(iso_duration_ms),
            st.average_packet_loss_rate,
            st.average_round_trip_time.as_deref().and_then(iso_duration_ms),
            st.average_audio_degradation,
        ];
        for (acc, v) in q.iter_mut().zip(v) {
            if let Some(v) = v.filter(|v| v.is_finite()) {
                *acc = Some(acc.map_or(v, |a: f64| a.max(v)));
            }
        }
    }
    q
}

fn stream_event(
    record: &CallRecord,
    tenant: &str,
    t: &Timed<'_>,
    seg: &Segment,
    m: &Media,
    s: &Stream,
    agent: Option<&str>,
) -> Result<Event<'static>, RecordError> {
    let seg_id = seg.id.as_deref().or(t.session.id.as_deref()).unwrap_or("");
    let label = m.label.as_deref().unwrap_or("");
    let stream = s.stream_id.as_deref().unwrap_or("");
    let direction = s.stream_direction.as_deref().unwrap_or("");
    let key = format!("{seg_id}:{label}:{stream}:{direction}");
    let at = [s.end_date_time.as_deref(), seg.end_date_time.as_deref(), t.session.end_date_time.as_deref()]
        .into_iter()
        .flatten()
        .find_map(|v| parse_rfc3339_ms(v).ok())
        .unwrap_or(t.end);
    let mut e = Event::new(
        format!("{SOURCE}:{}:{key}:v{}", record.id, record.version),
        tenant.to_string(),
        EventType::MediaStream,
        at,
    );
    e.source = Some(SOURCE.into());
    e.call_id = Some(record.id.clone().into());
    e.agent_id = agent.map(|a| a.to_string().into());
    e.jitter_ms = s.average_jitter.as_deref().and_then(iso_duration_ms);
    e.round_trip_ms = s.average_round_trip_time.as_deref().and_then(iso_duration_ms);
    e.packet_loss_rate = s.average_packet_loss_rate.filter(|v| v.is_finite());
    e.audio_degradation = s.average_audio_degradation.filter(|v| v.is_finite());
    let mut p = Map::new();
    p.insert("stream_key".into(), key.into());
    p.insert("version".into(), record.version.into());
    p.insert("session_id".into(), t.session.id.clone().into());
    p.insert("segment_id".into(), seg.id.clone().into());
    p.insert("label".into(), m.label.clone().into());
    p.insert("stream_id".into(), s.stream_id.clone().into());
    p.insert("direction".into(), s.stream_direction.clone().into());
    p.insert("audio_codec".into(), s.audio_codec.clone().into());
    p.insert("packet_utilization".into(), s.packet_utilization.into());
    p.insert("concealed_ratio".into(), s.average_ratio_of_concealed_samples.into());
    p.insert("network_jitter_ms".into(), s.average_audio_network_jitter.as_deref().and_then(iso_duration_ms).into());
    p.insert("max_jitter_ms".into(), s.max_jitter.as_deref().and_then(iso_duration_ms).into());
    p.insert("max_round_trip_ms".into(), s.max_round_trip_time.as_deref().and_then(iso_duration_ms).into());
    p.insert("max_packet_loss_rate".into(), s.max_packet_loss_rate.into());
    p.insert("media_bypassed".into(), s.was_media_bypassed.into());
    p.insert("caller_role".into(), t.session.caller.as_ref().and_then(Endpoint::role).into());
    p.insert("callee_role".into(), t.session.callee.as_ref().and_then(Endpoint::role).into());
    e.payload = Some(Value::Object(p).to_string().into());
    Ok(e)
}
