//! SBC sources (the Connect model): AudioCodes CDRs over syslog or from CDR files
//! ([`cdr`]) and RFC 6035 voice-quality reports over SIP ([`sip`], [`vq`]), mapped to
//! canonical events by [`SbcMapper`].
//!
//! # Mapping (the table is in `docs/sources.md`)
//!
//! - A signaling CDR becomes one `sbc_leg` event: `call_id` = `SessionId` (all legs of one
//!   SBC call), event time = the stage's own time (`SetupTime`, `ConnectTime`,
//!   `ReleaseTime`), `event_id` = `sbc.audiocodes:<SessionId>:<SIPCallId>:<report>`.
//! - A media CDR becomes one `media_stream` event: `jitter_ms` = `RTPjitter`,
//!   `round_trip_ms` = `RTPdelay`, `packet_loss_rate` = `LocalPackLoss / (InPackets +
//!   LocalPackLoss)` (none for `MEDIA_START`, which measures nothing yet); event time = reception (media CDRs carry no time);
//!   `event_id` = `sbc.audiocodes:<SessionId>:<SIPCallId>:<report>:<Cid>` (plus a digest of
//!   the row for `MEDIA_UPDATE`, which repeats).
//! - A voice-quality report becomes one `media_stream` event: `call_id` = the report's
//!   `CallID` (the measured leg's SIP Call-ID), `jitter_ms` = `IAJ`, `packet_loss_rate` =
//!   `NLR / 100`, `round_trip_ms` = `RTD` of the local metrics; event time = `STOP`.
//! - Every source field goes into `payload` under a stable key (sentinels as `null`), so
//!   nothing is dropped; ids derive from source ids, so a redelivered row gives the same
//!   `event_id`.
//! - Tenants: the first [`TenantRule`] that matches the IP group, a caller/callee number
//!   prefix or the sender; else the default tenant. Media rows and reports inherit the
//!   tenant of their session or leg when its signaling CDR was seen from the same sender.
//! - Senders ([`SbcSender`]): when any are configured, input from any other address is
//!   refused, and a sender may only send for its tenants (a sender of one tenant sends for
//!   it when no rule matches).

pub mod cdr;
pub mod sip;
pub mod vq;

use std::collections::{HashMap, VecDeque};

use ccstream_schemas::{format_rfc3339_ms, Event, EventType};
use serde_json::{Map, Value};

use cdr::{Cdr, CdrError, CdrParser, Col, Kind, Line};

/// The `source` of events from AudioCodes CDRs.
pub const SOURCE_CDR: &str = "sbc.audiocodes";
/// The `source` of events from RFC 6035 reports.
pub const SOURCE_VQ: &str = "sbc.vq_rtcpxr";

/// Maps SBC traffic to a tenant (a multi-tenant SBC serves many). Every given criterion must
/// match.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantRule {
    pub tenant: String,
    /// The CDR's IP group name (`IPGroup (name)`), exactly.
    #[serde(default)]
    pub ip_group: Option<String>,
    /// A prefix of the caller's or callee's number (the user part of the URI).
    #[serde(default)]
    pub number_prefix: Option<String>,
    /// The sender: the SBC's IP address (syslog/SIP peer) or the CDR file's path.
    #[serde(default)]
    pub sender: Option<String>,
}

/// An SBC allowed to send (`[[sources.sbc_senders]]`): its address and the tenants its input
/// may be for (`["*"]`: any).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SbcSender {
    /// The SBC's IP address (the syslog or SIP peer).
    pub sender: String,
    pub tenants: Vec<String>,
}

/// Sessions and legs whose tenant is remembered, at most (oldest forgotten first).
const MAX_REMEMBERED: usize = 1 << 16;

/// Turns SBC input into canonical events. Stateful (title rows, session tenants), sans-IO.
#[derive(Debug)]
pub struct SbcMapper {
    parser: CdrParser,
    rules: Vec<TenantRule>,
    default_tenant: String,
    /// Sender → the tenants it may send for; empty: every sender is trusted (CDR files).
    senders: HashMap<String, Vec<String>>,
    /// Sender → session or SIP Call-ID → tenant (nested, so a lookup borrows its keys).
    tenants: HashMap<String, HashMap<String, String>>,
    order: VecDeque<(String, String)>,
}

/// The user part of a SIP URI or number field (`+33001@10.0.1.11` → `+33001`).
fn user_part(v: &str) -> &str {
    let v = v.trim_start_matches('<');
    let v = v.strip_prefix("sip:").or_else(|| v.strip_prefix("tel:")).unwrap_or(v);
    v.split(['@', ';', '>']).next().unwrap_or(v)
}

impl SbcMapper {
    pub fn new(default_tenant: impl Into<String>, rules: Vec<TenantRule>) -> Self {
        SbcMapper {
            parser: CdrParser::default(),
            rules,
            default_tenant: default_tenant.into(),
            senders: HashMap::new(),
            tenants: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Only `senders` may send, each for its tenants (none given: every sender may send for
    /// any tenant, as for CDR files an operator ingests). Addresses compare in canonical
    /// form, as the listeners give them (`::ffff:10.0.0.5` is `10.0.0.5`).
    pub fn with_senders(mut self, senders: &[SbcSender]) -> Self {
        let canonical =
            |s: &str| s.parse::<std::net::IpAddr>().map_or(s.to_string(), |ip| ip.to_canonical().to_string());
        self.senders = senders.iter().map(|s| (canonical(&s.sender), s.tenants.clone())).collect();
        self
    }

    /// The tenant of input from `sender`: the first rule that matches, else the sender's one
    /// tenant, else the default; refused when the sender may not send for it.
    fn tenant_for(&self, sender: &str, ip_group: Option<&str>, numbers: &[&str]) -> Result<&str, String> {
        let rule = self
            .rules
            .iter()
            .find(|r| {
                r.ip_group.as_deref().is_none_or(|g| Some(g) == ip_group)
                    && r.sender.as_deref().is_none_or(|s| s == sender)
                    && r.number_prefix.as_deref().is_none_or(|p| numbers.iter().any(|n| n.starts_with(p)))
            })
            .map(|r| r.tenant.as_str());
        if self.senders.is_empty() {
            return Ok(rule.unwrap_or(&self.default_tenant));
        }
        self.check_sender(sender)?;
        let allowed = &self.senders[sender];
        let tenant = match (rule, allowed.as_slice()) {
            (Some(t), _) => t,
            (None, [only]) if only != "*" => only.as_str(),
            (None, _) => &self.default_tenant,
        };
        if allowed.iter().any(|t| t == "*" || t == tenant) {
            Ok(tenant)
        } else {
            Err(format!("sender {sender} may not send for tenant {tenant:?}"))
        }
    }

    /// Refuses a sender that is not configured (when senders are), before anything of its
    /// input is parsed or kept.
    fn check_sender(&self, sender: &str) -> Result<(), String> {
        if self.senders.is_empty() || self.senders.contains_key(sender) {
            Ok(())
        } else {
            Err(format!("sender {sender} is not an SBC of [[sources.sbc_senders]]"))
        }
    }

    /// The tenant remembered for `key` (a session or SIP Call-ID) of `sender`.
    fn remembered(&self, sender: &str, key: &str) -> Option<&String> {
        self.tenants.get(sender)?.get(key)
    }

    fn remember(&mut self, sender: &str, key: &str, tenant: &str) {
        if self.remembered(sender, key).map(String::as_str) == Some(tenant) {
            return;
        }
        let sessions = match self.tenants.get_mut(sender) {
            Some(s) => s,
            None => self.tenants.entry(sender.to_string()).or_default(),
        };
        if sessions.insert(key.to_string(), tenant.to_string()).is_none() {
            self.order.push_back((sender.to_string(), key.to_string()));
            if self.order.len() > MAX_REMEMBERED {
                if let Some((old_sender, old)) = self.order.pop_front() {
                    if let Some(s) = self.tenants.get_mut(&old_sender) {
                        s.remove(&old);
                        if s.is_empty() {
                            self.tenants.remove(&old_sender);
                        }
                    }
                }
            }
        }
    }

    /// One CDR line (a syslog message or a CDR-file line) from `sender`, received at
    /// `received_at_ms`: `Ok(None)` for title rows and blank lines.
    pub fn map_cdr_line(
        &mut self,
        sender: &str,
        line: &[u8],
        received_at_ms: i64,
    ) -> Result<Option<Event<'static>>, CdrError> {
        self.check_sender(sender).map_err(CdrError::Sender)?;
        let cdr = match self.parser.parse(sender, line)? {
            Line::Blank | Line::Title(_) => return Ok(None),
            Line::Record(cdr) => cdr,
        };
        let session = cdr.text(Col::SessionId).unwrap_or("");
        let sip_call_id = cdr.text(Col::SipCallId).unwrap_or("");
        let report = cdr.report();
        let payload = cdr_payload(&cdr)?;
        let event = match cdr.kind() {
            Kind::Signaling => {
                let numbers: Vec<&str> = [Col::Caller, Col::Callee, Col::SrcUri, Col::DstUri]
                    .into_iter()
                    .filter_map(|c| cdr.text(c))
                    .map(user_part)
                    .collect();
                let tenant =
                    self.tenant_for(sender, cdr.text(Col::IpGroup), &numbers).map_err(CdrError::Sender)?.to_string();
                self.remember(sender, session, &tenant);
                self.remember(sender, sip_call_id, &tenant);
                let stage_time = match report {
                    "CALL_CONNECT" => cdr.time(Col::ConnectTime)?,
                    "CALL_END" | "DIALOG_END" => cdr.time(Col::ReleaseTime)?,
                    _ => None,
                };
                let at = stage_time.or(cdr.time(Col::SetupTime)?).unwrap_or(received_at_ms);
                let id = format!("{SOURCE_CDR}:{session}:{sip_call_id}:{report}");
                Event::new(id, tenant, EventType::SbcLeg, at)
            }
            Kind::Media => {
                let tenant = match self.remembered(sender, session).or_else(|| self.remembered(sender, sip_call_id)) {
                    Some(t) => t.clone(),
                    None => self.tenant_for(sender, None, &[]).map_err(CdrError::Sender)?.to_string(),
                };
                let cid = cdr.text(Col::Cid).unwrap_or("");
                let mut id = format!("{SOURCE_CDR}:{session}:{sip_call_id}:{report}:{cid}");
                if report == "MEDIA_UPDATE" {
                    let digest = cdr.values.iter().fold(0u32, |h, v| crc32c::crc32c_append(h, v.as_bytes()));
                    id.push_str(&format!(":{digest:08x}"));
                }
                let mut e = Event::new(id, tenant, EventType::MediaStream, received_at_ms);
                if report == "MEDIA_START" {
                    // Set-up only (codec, addresses): no measurement yet.
                    return Ok(Some(finish(e, session, payload)));
                }
                e.jitter_ms = cdr.int(Col::RtpJitter)?.map(|v| v as f64);
                e.round_trip_ms = cdr.int(Col::RtpDelay)?.map(|v| v as f64);
                e.packet_loss_rate = match (cdr.int(Col::InPackets)?, cdr.int(Col::LocalPackLoss)?) {
                    (Some(received), Some(lost)) if received >= 0 && lost >= 0 => {
                        received.checked_add(lost).filter(|&n| n > 0).map(|n| lost as f64 / n as f64)
                    }
                    _ => None,
                };
                e
            }
        };
        Ok(Some(finish(event, session, payload)))
    }

    /// One voice-quality report (the SIP body) from `sender`, received at `received_at_ms`.
    pub fn map_vq_report(
        &mut self,
        sender: &str,
        body: &[u8],
        received_at_ms: i64,
    ) -> Result<Event<'static>, vq::VqError> {
        self.check_sender(sender).map_err(vq::VqError::Sender)?;
        let r = vq::parse_report(body)?;
        let metrics = r.local.as_ref().or(r.remote.as_ref());
        let start = metrics.and_then(|m| m.time("START"));
        let stop = metrics.and_then(|m| m.time("STOP"));
        let ssrc = r.session_param("LocalAddr", "SSRC").unwrap_or("");
        let id = format!(
            "{SOURCE_VQ}:{}:{}:{ssrc}:{}",
            r.call_id,
            r.kind.as_str(),
            start.map(format_rfc3339_ms).unwrap_or_default()
        );
        let tenant = match self.remembered(sender, r.call_id) {
            Some(t) => t.clone(),
            None => {
                let numbers: Vec<&str> =
                    ["LocalID", "RemoteID"].into_iter().filter_map(|n| r.session(n)).map(user_part).collect();
                self.tenant_for(sender, None, &numbers).map_err(vq::VqError::Sender)?.to_string()
            }
        };
        let mut e = Event::new(id, tenant, EventType::MediaStream, stop.or(start).unwrap_or(received_at_ms));
        e.source = Some(SOURCE_VQ.into());
        e.call_id = Some(r.call_id.to_string().into());
        if let Some(m) = metrics {
            e.jitter_ms = m.num("Delay", "IAJ");
            e.round_trip_ms = m.num("Delay", "RTD");
            e.packet_loss_rate = m.num("PacketLoss", "NLR").map(|v| v / 100.0);
        }
        e.payload = Some(vq_payload(&r).into());
        Ok(e)
    }
}

fn finish(mut event: Event<'static>, session: &str, payload: String) -> Event<'static> {
    event.source = Some(SOURCE_CDR.into());
    event.call_id = Some(session.to_string().into());
    event.payload = Some(payload.into());
    event
}

/// `v` is an integer written the canonical way (no sign but `-`, no leading zeros).
fn canonical_int(v: &str) -> bool {
    let digits = v.strip_prefix('-').unwrap_or(v);
    !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'))
        && v != "-0"
}

/// Appends `v` to `out` as a JSON string.
fn push_json_str(out: &mut String, v: &str) {
    out.push('"');
    if v.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push_str(v);
    } else {
        for c in v.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        }
    }
    out.push('"');
}

/// The payload of a CDR: every non-empty column, typed, in title order (written directly:
/// this runs once per CDR line).
fn cdr_payload(cdr: &Cdr<'_>) -> Result<String, CdrError> {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(1024);
    out.push('{');
    if let Some(seq) = cdr.seq {
        let _ = write!(out, "\"syslog_seq\":{seq}");
    }
    for (key, col, value) in cdr.fields() {
        if out.len() > 1 {
            out.push(',');
        }
        push_json_str(&mut out, key);
        out.push(':');
        match col {
            Col::SetupTime | Col::ConnectTime | Col::ReleaseTime => match cdr.time(col)? {
                Some(t) => push_json_str(&mut out, &format_rfc3339_ms(t)),
                None => out.push_str("null"),
            },
            Col::SourcePort
            | Col::DestPort
            | Col::Duration
            | Col::RedirectReason
            | Col::TxSigIpDiffServ
            | Col::LegId
            | Col::Cid
            | Col::PacketInterval
            | Col::LocalRtpPort
            | Col::RemoteRtpPort
            | Col::InPackets
            | Col::OutPackets
            | Col::LocalPackLoss
            | Col::RemotePackLoss
            | Col::RtpDelay
            | Col::RtpJitter
            | Col::TxSsrc
            | Col::RxSsrc
            | Col::LocalRFactor
            | Col::RemoteRFactor
            | Col::LocalMosCq
            | Col::RemoteMosCq
            | Col::TxRtpIpDiffServ
            | Col::LatchedRtpPort
            | Col::LatchedT38Port => match cdr.int(col) {
                // The text of a canonical integer is its JSON.
                Ok(Some(_)) if canonical_int(value) => out.push_str(value),
                Ok(Some(n)) => {
                    let _ = write!(out, "{n}");
                }
                Ok(None) => out.push_str("null"),
                Err(_) => push_json_str(&mut out, value),
            },
            _ if value == "N/A" => out.push_str("null"),
            _ => push_json_str(&mut out, value),
        }
    }
    out.push('}');
    Ok(out)
}

fn vq_payload(r: &vq::Report<'_>) -> String {
    let mut map = Map::new();
    map.insert("report".into(), r.kind.as_str().into());
    map.insert("call_term".into(), r.call_term.into());
    map.insert("sip_call_id".into(), r.call_id.into());
    for (name, value) in &r.session {
        map.insert((*name).to_string(), (*value).into());
    }
    for (key, m) in [("local", &r.local), ("remote", &r.remote)] {
        let Some(m) = m else { continue };
        let mut block = Map::new();
        for (line, param, value) in &m.params {
            let entry = block.entry((*line).to_string()).or_insert_with(|| Value::Object(Map::new()));
            match (entry, param.is_empty()) {
                (Value::Object(o), false) => {
                    o.insert((*param).to_string(), (*value).into());
                }
                (slot, true) => *slot = Value::String((*value).to_string()),
                _ => {}
            }
        }
        map.insert(key.into(), Value::Object(block));
    }
    if let Some(m) = r.local.as_ref().or(r.remote.as_ref()) {
        for (param, key) in [("MOSCQ", "mos_cq"), ("MOSLQ", "mos_lq")] {
            if let Some(v) = m.num("QualityEst", param) {
                map.insert(key.into(), v.into());
            }
        }
    }
    Value::Object(map).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIGNALING: &str = include_str!("../../tests/fixtures/samples/audiocodes_cdr_sbc_signaling_odp.txt");
    const MEDIA: &str = include_str!("../../tests/fixtures/samples/audiocodes_cdr_sbc_media_odp.txt");

    fn line(text: &str, n: usize) -> &str {
        text.lines().nth(n).unwrap()
    }

    fn tenant<'e>(e: &'e Event<'_>) -> &'e str {
        e.tenant_id.as_deref().unwrap()
    }

    /// The sample's title and first row with SIPCallId and SessionId swapped.
    fn swapped(n: usize) -> String {
        let mut fields: Vec<&str> = line(SIGNALING, n).split('|').collect();
        fields.swap(2, 3);
        fields.join("|")
    }

    #[test]
    fn media_rows_join_only_sessions_of_their_own_sender() {
        let rule = TenantRule { tenant: "contoso".into(), sender: Some("10.0.0.1".into()), ..TenantRule::default() };
        let mut m = SbcMapper::new("default", vec![rule]);
        let call = m.map_cdr_line("10.0.0.1", line(SIGNALING, 1).as_bytes(), 0).unwrap().unwrap();
        assert_eq!(tenant(&call), "contoso");
        let session = call.call_id.as_deref().unwrap().to_string();
        let media = line(MEDIA, 1).replace("c62532:22:998", &session);
        let other = m.map_cdr_line("10.0.0.2", media.as_bytes(), 0).unwrap().unwrap();
        assert_eq!((other.call_id.as_deref(), tenant(&other)), (Some(session.as_str()), "default"));
        let own = m.map_cdr_line("10.0.0.1", media.as_bytes(), 0).unwrap().unwrap();
        assert_eq!(tenant(&own), "contoso");
    }

    #[test]
    fn five_thousand_senders_do_not_reset_an_active_sbc_titles() {
        let mut m = SbcMapper::new("default", vec![]);
        let (title, row) = (swapped(0), swapped(1));
        m.map_cdr_line("10.0.0.1", title.as_bytes(), 0).unwrap();
        let session = line(SIGNALING, 1).split('|').nth(3).unwrap().trim().to_string();
        for i in 0..5000 {
            let spoofed = format!("192.0.{}.{}", i / 250, i % 250);
            m.map_cdr_line(&spoofed, title.as_bytes(), 0).unwrap();
            if i % 100 == 0 {
                // Read with the SBC's own titles, whatever the others sent.
                let e = m.map_cdr_line("10.0.0.1", row.as_bytes(), 0).unwrap().unwrap();
                assert_eq!(e.call_id.as_deref(), Some(session.as_str()), "after {i} senders");
            }
        }
        assert_eq!(m.parser.senders(), cdr::MAX_LAYOUTS);
    }

    #[test]
    fn a_32k_column_title_or_row_is_refused_and_the_sender_keeps_its_titles() {
        let mut m = SbcMapper::new("default", vec![]);
        let (title, row) = (swapped(0), swapped(1));
        m.map_cdr_line("10.0.0.1", title.as_bytes(), 0).unwrap();
        let wide = format!("SBCReportType{}", "|c".repeat(32 * 1024));
        assert!(matches!(m.map_cdr_line("10.0.0.1", wide.as_bytes(), 0), Err(CdrError::TooManyColumns)));
        let wide_row = format!("CALL_START{}", "|x".repeat(32 * 1024));
        assert!(matches!(m.map_cdr_line("10.0.0.1", wide_row.as_bytes(), 0), Err(CdrError::TooManyColumns)));
        let session = line(SIGNALING, 1).split('|').nth(3).unwrap().trim().to_string();
        let e = m.map_cdr_line("10.0.0.1", row.as_bytes(), 0).unwrap().unwrap();
        assert_eq!(e.call_id.as_deref(), Some(session.as_str()));
    }

    #[test]
    fn times_and_counters_past_their_range_are_errors_not_wrapped_values() {
        let mut m = SbcMapper::new("default", vec![]);
        let row = line(SIGNALING, 1);
        let setup = row.split('|').nth(18).unwrap().trim().to_string();
        let year = setup.rsplit(' ').next().unwrap();
        let far = row.replace(&setup, &setup.replace(year, "4294967295"));
        let err = m.map_cdr_line("10.0.0.1", far.as_bytes(), 0).unwrap_err();
        assert!(matches!(err, CdrError::Field { column: "SetupTime", .. }), "{err}");
        // Packet counts that overflow when added: no loss rate, no panic.
        let mut media: Vec<String> = line(MEDIA, 2).split('|').map(str::to_string).collect();
        let at = |name: &str| line(MEDIA, 0).split('|').position(|t| t.trim() == name).unwrap();
        media[at("InPackets")] = i64::MAX.to_string();
        media[at("LocalPackLoss")] = i64::MAX.to_string();
        let e = m.map_cdr_line("10.0.0.1", media.join("|").as_bytes(), 0).unwrap().unwrap();
        assert_eq!(e.packet_loss_rate, None);
    }

    #[test]
    fn senders_speak_only_for_their_tenants() {
        // Caller +33001: the rule gives fabrikam.
        let rule =
            TenantRule { tenant: "fabrikam".into(), number_prefix: Some("+33001".into()), ..TenantRule::default() };
        let senders = [
            SbcSender { sender: "10.0.0.1".into(), tenants: vec!["contoso".into()] },
            SbcSender { sender: "10.0.0.2".into(), tenants: vec!["contoso".into(), "fabrikam".into()] },
        ];
        let row = line(SIGNALING, 1);
        let mut m = SbcMapper::new("default", vec![rule]).with_senders(&senders);
        let refused = m.map_cdr_line("10.0.0.1", row.as_bytes(), 0).unwrap_err();
        assert_eq!(refused.to_string(), "sender 10.0.0.1 may not send for tenant \"fabrikam\"");
        assert_eq!(tenant(&m.map_cdr_line("10.0.0.2", row.as_bytes(), 0).unwrap().unwrap()), "fabrikam");
        let unknown = m.map_cdr_line("10.0.0.9", line(SIGNALING, 0).as_bytes(), 0).unwrap_err();
        assert_eq!(unknown.to_string(), "sender 10.0.0.9 is not an SBC of [[sources.sbc_senders]]");
        assert_eq!(m.parser.senders(), 0, "an unknown sender's titles are not kept");
        // No rule matches: a sender of one tenant sends for it.
        let mut m = SbcMapper::new("default", vec![]).with_senders(&senders);
        assert_eq!(tenant(&m.map_cdr_line("10.0.0.1", row.as_bytes(), 0).unwrap().unwrap()), "contoso");
        // A sender written as an IPv4-mapped address is the listeners' canonical one.
        let mapped = [SbcSender { sender: "::ffff:10.0.0.3".into(), tenants: vec!["contoso".into()] }];
        let mut m = SbcMapper::new("default", vec![]).with_senders(&mapped);
        assert_eq!(tenant(&m.map_cdr_line("10.0.0.3", row.as_bytes(), 0).unwrap().unwrap()), "contoso");
    }

    #[test]
    fn sessions_are_forgotten_oldest_first_past_the_limit() {
        let mut m = SbcMapper::new("default", vec![]);
        for i in 0..=MAX_REMEMBERED {
            m.remember(if i % 2 == 0 { "10.0.0.1" } else { "10.0.0.2" }, &format!("s{i}"), "contoso");
        }
        assert_eq!(m.remembered("10.0.0.1", "s0"), None);
        assert_eq!(m.remembered("10.0.0.2", "s1").map(String::as_str), Some("contoso"));
        let last = format!("s{MAX_REMEMBERED}");
        assert_eq!(m.remembered("10.0.0.1", &last).map(String::as_str), Some("contoso"));
        assert_eq!(m.tenants.values().map(HashMap::len).sum::<usize>(), MAX_REMEMBERED);
    }

    #[test]
    fn titles_and_rows_have_the_same_column_limit() {
        let mut m = SbcMapper::new("default", vec![]);
        for n in [cdr::MAX_COLUMNS + 1, cdr::MAX_COLUMNS + 2] {
            let title = format!("SBCReportType{}", "|c".repeat(n - 1));
            let row = format!("CALL_START{}", "|x".repeat(n - 1));
            for line in [title, row.clone(), format!("{row}|")] {
                let err = m.map_cdr_line("10.0.0.1", line.as_bytes(), 0).unwrap_err();
                assert!(matches!(err, CdrError::TooManyColumns), "{n} columns: {err}");
            }
        }
    }
}
