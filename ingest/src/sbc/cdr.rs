//! AudioCodes SBC CDRs, sans-IO: one syslog message or CDR-file line in, one typed record out.
//!
//! # Format
//!
//! A CDR is a row of `|`-separated fields, each right-padded with spaces (values may contain
//! spaces, e.g. `REASON N/A`). The SBC sends it over syslog behind a header that ends with a
//! sequence marker (`10:35:36.653  10.0.10.11  local1.info[S = 122] |CALL_START …`,
//! `<134>[S=122] |CALL_START …`), or writes it to CDR files without one. Two kinds:
//!
//! - **signaling** rows (`CALL_START`, `CALL_CONNECT`, `CALL_END`, `DIALOG_START`,
//!   `DIALOG_END`): one per leg and stage; the legs of one SBC call share `SessionId`;
//! - **media** rows (`MEDIA_START`, `MEDIA_UPDATE`, `MEDIA_END`): one per media stream and
//!   stage; `SIPCallId` is the leg's.
//!
//! # Invariants
//!
//! - **Columns come from the title rows.** The SBC emits a title row (`|SBCReportType |EPTyp
//!   |…`, `|MediaReportType|…`) periodically; field sets and order are customizable and differ
//!   by firmware (36, 38 and 39-column signaling layouts exist). The parser keeps the latest
//!   title per sender and kind and maps every row through it; before any title it uses the
//!   firmware-7.4 defaults ([`DEFAULT_SIGNALING_TITLE`], [`DEFAULT_MEDIA_TITLE`]).
//! - **A row may lack trailing columns** (older firmware) but never have more than its title;
//!   every field the mapping reads is checked (times, ports, counters, `Orig`, `LegId`), so a
//!   row with a column missing in the middle is rejected, not shifted.
//! - **Sentinels are absent values**: empty fields, `N/A`, counters `-1` / `4294967295`,
//!   R-factor and MOS `127` read as `None`.
//! - The parser never panics and allocates one small vector per row.

use std::collections::HashMap;
use std::sync::Arc;

/// The two kinds of AudioCodes CDR rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Signaling,
    Media,
}

/// Why a line is not a CDR. The message is what `dead_letters.reason` holds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CdrError {
    #[error("not UTF-8 text")]
    NotText,
    #[error("no CDR fields (expected `|`-separated columns)")]
    NoFields,
    #[error("unknown CDR report type {0:?}")]
    UnknownReport(String),
    #[error("unsupported CDR title row {0:?} (expected SBCReportType or MediaReportType)")]
    UnknownTitle(String),
    #[error("{kind:?} CDR has {got} fields, its title row has {expected}")]
    TooManyFields { kind: Kind, got: usize, expected: usize },
    #[error("{kind:?} CDR lacks the {column} column")]
    Missing { kind: Kind, column: &'static str },
    #[error("bad {column} {value:?}: {why}")]
    Field { column: &'static str, value: String, why: &'static str },
    #[error("a CDR row or title of more than {MAX_COLUMNS} columns")]
    TooManyColumns,
    /// The sender may not send for the tenant (or for any): see `SbcMapper`'s senders.
    #[error("{0}")]
    Sender(String),
}

/// Columns of a CDR title or row, at most (AudioCodes rows have about 60).
pub const MAX_COLUMNS: usize = 255;

/// A column the mapping knows by name; everything else is [`Col::Other`] and kept under its
/// title.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Col {
    ReportType,
    EpType,
    SipCallId,
    SessionId,
    Orig,
    SourceIp,
    SourcePort,
    DestIp,
    DestPort,
    Transport,
    SrcUri,
    SrcUriBeforeMap,
    DstUri,
    DstUriBeforeMap,
    Duration,
    TrmSide,
    TrmReason,
    TrmReasonCategory,
    SetupTime,
    ConnectTime,
    ReleaseTime,
    RedirectReason,
    RedirectUriNum,
    RedirectUriNumBeforeMap,
    TxSigIpDiffServ,
    IpGroup,
    SrdId,
    SipInterfaceId,
    ProxySetId,
    IpProfileId,
    MediaRealmId,
    DirectMedia,
    SipTrmReason,
    SipTermDesc,
    Caller,
    Callee,
    Trigger,
    LegId,
    VoiceAiConnector,
    Cid,
    MediaType,
    Coder,
    PacketInterval,
    LocalRtpIp,
    LocalRtpPort,
    RemoteRtpIp,
    RemoteRtpPort,
    InPackets,
    OutPackets,
    LocalPackLoss,
    RemotePackLoss,
    RtpDelay,
    RtpJitter,
    TxSsrc,
    RxSsrc,
    LocalRFactor,
    RemoteRFactor,
    LocalMosCq,
    RemoteMosCq,
    TxRtpIpDiffServ,
    LatchedRtpIp,
    LatchedRtpPort,
    LatchedT38Ip,
    LatchedT38Port,
    CoderTranscoding,
    Other,
}

/// `(title, column, payload key)`: the known titles (after dropping a ` (name)` or
/// ` (description)` suffix), in firmware-7.4 order.
const COLUMNS: [(&str, Col, &str); 65] = [
    ("SBCReportType", Col::ReportType, "report_type"),
    ("EPTyp", Col::EpType, "endpoint_type"),
    ("SIPCallId", Col::SipCallId, "sip_call_id"),
    ("SessionId", Col::SessionId, "session_id"),
    ("Orig", Col::Orig, "origin"),
    ("SourceIp", Col::SourceIp, "source_ip"),
    ("SourcePort", Col::SourcePort, "source_port"),
    ("DestIp", Col::DestIp, "dest_ip"),
    ("DestPort", Col::DestPort, "dest_port"),
    ("TransportType", Col::Transport, "transport"),
    ("SrcURI", Col::SrcUri, "src_uri"),
    ("SrcURIBeforeMap", Col::SrcUriBeforeMap, "src_uri_before_map"),
    ("DstURI", Col::DstUri, "dst_uri"),
    ("DstURIBeforeMap", Col::DstUriBeforeMap, "dst_uri_before_map"),
    ("Duration", Col::Duration, "duration_s"),
    ("TrmSd", Col::TrmSide, "termination_side"),
    ("TrmReason", Col::TrmReason, "termination_reason"),
    ("TrmReasonCategory", Col::TrmReasonCategory, "termination_category"),
    ("SetupTime", Col::SetupTime, "setup_at"),
    ("ConnectTime", Col::ConnectTime, "connect_at"),
    ("ReleaseTime", Col::ReleaseTime, "release_at"),
    ("RedirectReason", Col::RedirectReason, "redirect_reason"),
    ("RedirectURINum", Col::RedirectUriNum, "redirect_uri"),
    ("RedirectURINumBeforeMap", Col::RedirectUriNumBeforeMap, "redirect_uri_before_map"),
    ("TxSigIPDiffServ", Col::TxSigIpDiffServ, "tx_sig_diffserv"),
    ("IPGroup", Col::IpGroup, "ip_group"),
    ("SrdId", Col::SrdId, "srd"),
    ("SIPInterfaceId", Col::SipInterfaceId, "sip_interface"),
    ("ProxySetId", Col::ProxySetId, "proxy_set"),
    ("IpProfileId", Col::IpProfileId, "ip_profile"),
    ("MediaRealmId", Col::MediaRealmId, "media_realm"),
    ("DirectMedia", Col::DirectMedia, "direct_media"),
    ("SIPTrmReason", Col::SipTrmReason, "sip_termination_reason"),
    ("SIPTermDesc", Col::SipTermDesc, "sip_termination_desc"),
    ("Caller", Col::Caller, "caller"),
    ("Callee", Col::Callee, "callee"),
    ("Trigger", Col::Trigger, "trigger"),
    ("LegId", Col::LegId, "leg_id"),
    ("VoiceAIConnectorName", Col::VoiceAiConnector, "voice_ai_connector"),
    ("MediaReportType", Col::ReportType, "report_type"),
    ("Cid", Col::Cid, "channel"),
    ("MediaType", Col::MediaType, "media_type"),
    ("Coder", Col::Coder, "coder"),
    ("Intrv", Col::PacketInterval, "packet_interval_ms"),
    ("LocalRtpIp", Col::LocalRtpIp, "local_rtp_ip"),
    ("LocalRtpPort", Col::LocalRtpPort, "local_rtp_port"),
    ("RemoteRtpIp", Col::RemoteRtpIp, "remote_rtp_ip"),
    ("RemoteRtpPort", Col::RemoteRtpPort, "remote_rtp_port"),
    ("InPackets", Col::InPackets, "in_packets"),
    ("OutPackets", Col::OutPackets, "out_packets"),
    ("LocalPackLoss", Col::LocalPackLoss, "local_packet_loss"),
    ("RemotePackLoss", Col::RemotePackLoss, "remote_packet_loss"),
    ("RTPdelay", Col::RtpDelay, "rtp_delay_ms"),
    ("RTPjitter", Col::RtpJitter, "rtp_jitter_ms"),
    ("TxRTPssrc", Col::TxSsrc, "tx_ssrc"),
    ("RxRTPssrc", Col::RxSsrc, "rx_ssrc"),
    ("LocalRFactor", Col::LocalRFactor, "local_r_factor"),
    ("RemoteRFactor", Col::RemoteRFactor, "remote_r_factor"),
    ("LocalMosCQ", Col::LocalMosCq, "local_mos_cq"),
    ("RemoteMosCQ", Col::RemoteMosCq, "remote_mos_cq"),
    ("TxRTPIPDiffServ", Col::TxRtpIpDiffServ, "tx_rtp_diffserv"),
    ("LatchedRtpIp", Col::LatchedRtpIp, "latched_rtp_ip"),
    ("LatchedRtpPort", Col::LatchedRtpPort, "latched_rtp_port"),
    ("LatchedT38Ip", Col::LatchedT38Ip, "latched_t38_ip"),
    ("LatchedT38Port", Col::LatchedT38Port, "latched_t38_port"),
];

/// Titles spelled differently by older firmware.
const ALIASES: [(&str, Col); 2] = [("Durat", Col::Duration), ("CoderTranscoding", Col::CoderTranscoding)];

/// The firmware-7.4 signaling title row (39 columns), used until a sender sends its own.
pub const DEFAULT_SIGNALING_TITLE: &str = "SBCReportType|EPTyp|SIPCallId|SessionId|Orig|SourceIp|SourcePort|DestIp|DestPort|TransportType|SrcURI|SrcURIBeforeMap|DstURI|DstURIBeforeMap|Duration|TrmSd|TrmReason|TrmReasonCategory|SetupTime|ConnectTime|ReleaseTime|RedirectReason|RedirectURINum|RedirectURINumBeforeMap|TxSigIPDiffServ|IPGroup (name)|SrdId (name)|SIPInterfaceId (name)|ProxySetId (name)|IpProfileId (name)|MediaRealmId (name)|DirectMedia|SIPTrmReason|SIPTermDesc|Caller|Callee|Trigger|LegId|VoiceAIConnectorName";

/// The firmware-7.4 media title row (30 columns).
pub const DEFAULT_MEDIA_TITLE: &str = "MediaReportType|SIPCallId|SessionId|Cid|MediaType|Coder|Intrv|LocalRtpIp|LocalRtpPort|RemoteRtpIp|RemoteRtpPort|InPackets|OutPackets|LocalPackLoss|RemotePackLoss|RTPdelay|RTPjitter|TxRTPssrc|RxRTPssrc|LocalRFactor|RemoteRFactor|LocalMosCQ|RemoteMosCQ|TxRTPIPDiffServ|LatchedRtpIp|LatchedRtpPort|LatchedT38Ip|LatchedT38Port|CoderTranscoding|LegId";

const N_COLS: usize = Col::Other as usize + 1;
const ABSENT: u8 = u8::MAX;

impl Col {
    /// The column a title names (case-sensitive, as the SBC writes it).
    fn from_title(title: &str) -> Col {
        let base = title.split(" (").next().unwrap_or(title).trim();
        COLUMNS
            .iter()
            .find(|(t, _, _)| *t == base)
            .map(|(_, c, _)| *c)
            .or_else(|| ALIASES.iter().find(|(t, _)| *t == base).map(|(_, c)| *c))
            .unwrap_or(Col::Other)
    }

    /// The key under which the mapping keeps this column in the event payload.
    pub fn key(self) -> &'static str {
        if self == Col::CoderTranscoding {
            return "coder_transcoding";
        }
        COLUMNS.iter().find(|(_, c, _)| *c == self).map(|(_, _, k)| *k).unwrap_or("other")
    }

    fn name(self) -> &'static str {
        COLUMNS.iter().find(|(_, c, _)| *c == self).map(|(t, _, _)| *t).unwrap_or("column")
    }
}

/// The columns of one title row.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    pub kind: Kind,
    /// Each column's title (trimmed), what it is, and its payload key (the known key, or the
    /// title for unknown columns).
    pub columns: Vec<(String, Col, String)>,
    /// Position of each known column, or `ABSENT`.
    index: [u8; N_COLS],
}

impl Layout {
    /// The layout of a title row's fields (the first field names the kind).
    pub fn from_titles<'t>(titles: impl IntoIterator<Item = &'t str>) -> Result<Layout, CdrError> {
        let columns: Vec<(String, Col, String)> = titles
            .into_iter()
            .map(|t| {
                let col = Col::from_title(t.trim());
                let key = if col == Col::Other { t.trim().to_string() } else { col.key().to_string() };
                (t.trim().to_string(), col, key)
            })
            .collect();
        let kind = match columns.first().map(|(t, _, _)| t.as_str()) {
            Some("SBCReportType") => Kind::Signaling,
            Some("MediaReportType") => Kind::Media,
            other => return Err(CdrError::UnknownTitle(other.unwrap_or("").to_string())),
        };
        let mut index = [ABSENT; N_COLS];
        for (i, (_, c, _)) in columns.iter().enumerate().take(ABSENT as usize) {
            if *c != Col::Other && index[*c as usize] == ABSENT {
                index[*c as usize] = i as u8;
            }
        }
        Ok(Layout { kind, columns, index })
    }

    fn default_for(kind: Kind) -> Layout {
        let title = match kind {
            Kind::Signaling => DEFAULT_SIGNALING_TITLE,
            Kind::Media => DEFAULT_MEDIA_TITLE,
        };
        Layout::from_titles(title.split('|')).expect("the default titles are valid")
    }

    fn position(&self, col: Col) -> Option<usize> {
        let i = self.index[col as usize];
        (i != ABSENT).then_some(i as usize)
    }
}

/// One CDR row, borrowing its values from the input line.
#[derive(Debug, Clone)]
pub struct Cdr<'a> {
    pub layout: Arc<Layout>,
    /// The syslog sequence number (`[S=n]`), when the row came over syslog.
    pub seq: Option<u64>,
    /// The row's fields, trimmed, in title order (possibly fewer than the title's columns).
    pub values: Vec<&'a str>,
}

/// What one line is.
#[derive(Debug, Clone)]
pub enum Line<'a> {
    /// Nothing (a blank line).
    Blank,
    /// A title row: later rows of this sender and kind use its columns.
    Title(Kind),
    Record(Cdr<'a>),
}

/// Signaling report types and media report types.
const SIGNALING_REPORTS: [&str; 5] = ["CALL_START", "CALL_CONNECT", "CALL_END", "DIALOG_START", "DIALOG_END"];
const MEDIA_REPORTS: [&str; 3] = ["MEDIA_START", "MEDIA_UPDATE", "MEDIA_END"];

impl<'a> Cdr<'a> {
    pub fn kind(&self) -> Kind {
        self.layout.kind
    }

    /// `CALL_END`, `MEDIA_UPDATE`, …
    pub fn report(&self) -> &'a str {
        self.values[0]
    }

    /// The raw (trimmed) value of a known column; `None` when the row has no such column.
    pub fn raw(&self, col: Col) -> Option<&'a str> {
        self.layout.position(col).and_then(|i| self.values.get(i).copied())
    }

    /// The value of a known column, `None` when absent, empty or `N/A`.
    pub fn text(&self, col: Col) -> Option<&'a str> {
        self.raw(col).filter(|v| !v.is_empty() && *v != "N/A")
    }

    /// An integer column, `None` when absent or a sentinel (`-1`, `4294967295`, and `127` for
    /// R-factor and MOS).
    pub fn int(&self, col: Col) -> Result<Option<i64>, CdrError> {
        let Some(v) = self.text(col) else { return Ok(None) };
        let n: i64 = v.parse().map_err(|_| CdrError::Field {
            column: col.name(),
            value: v.to_string(),
            why: "not an integer",
        })?;
        let sentinel = n == -1
            || n == 4_294_967_295
            || (n == 127 && matches!(col, Col::LocalRFactor | Col::RemoteRFactor | Col::LocalMosCq | Col::RemoteMosCq));
        Ok((!sentinel).then_some(n))
    }

    /// A time column (`HH:MM:SS.mmm UTC Ddd Mmm DD YYYY`) as UTC epoch ms; `None` when empty.
    pub fn time(&self, col: Col) -> Result<Option<i64>, CdrError> {
        self.text(col)
            .map(|v| parse_cdr_time(v).map_err(|why| CdrError::Field { column: col.name(), value: v.to_string(), why }))
            .transpose()
    }

    /// The row's fields as `(payload key, value)`, skipping empty values; unknown columns keep
    /// their title as key.
    pub fn fields(&self) -> impl Iterator<Item = (&str, Col, &'a str)> + '_ {
        self.layout
            .columns
            .iter()
            .zip(&self.values)
            .filter(|(_, v)| !v.is_empty())
            .map(|((_, col, key), v)| (key.as_str(), *col, *v))
    }

    /// Checks every column the mapping reads.
    fn check(&self) -> Result<(), CdrError> {
        let kind = self.kind();
        for col in [Col::SipCallId, Col::SessionId] {
            if self.text(col).is_none() {
                return Err(CdrError::Missing { kind, column: col.name() });
            }
        }
        match kind {
            Kind::Signaling => {
                if let Some(o) = self.text(Col::Orig).filter(|o| !matches!(*o, "LCL" | "RMT")) {
                    return Err(CdrError::Field { column: "Orig", value: o.to_string(), why: "expected LCL or RMT" });
                }
                for col in [Col::SourcePort, Col::DestPort, Col::Duration, Col::RedirectReason, Col::LegId] {
                    self.int(col)?;
                }
                for col in [Col::SetupTime, Col::ConnectTime, Col::ReleaseTime] {
                    self.time(col)?;
                }
            }
            Kind::Media => {
                for col in [
                    Col::Cid,
                    Col::PacketInterval,
                    Col::LocalRtpPort,
                    Col::RemoteRtpPort,
                    Col::InPackets,
                    Col::OutPackets,
                    Col::LocalPackLoss,
                    Col::RemotePackLoss,
                    Col::RtpDelay,
                    Col::RtpJitter,
                    Col::LocalRFactor,
                    Col::RemoteRFactor,
                    Col::LocalMosCq,
                    Col::RemoteMosCq,
                    Col::LegId,
                ] {
                    self.int(col)?;
                }
            }
        }
        Ok(())
    }
}

const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/// `18:57:52.320  UTC Mon Dec 05 2022` → UTC epoch ms. Only UTC (or GMT) times are accepted:
/// a CDR in another zone names it by an ambiguous abbreviation.
pub fn parse_cdr_time(v: &str) -> Result<i64, &'static str> {
    let mut it = v.split_ascii_whitespace();
    let (Some(hms), Some(zone), Some(_weekday), Some(mon), Some(day), Some(year), None) =
        (it.next(), it.next(), it.next(), it.next(), it.next(), it.next(), it.next())
    else {
        return Err("expected HH:MM:SS.mmm UTC Ddd Mmm DD YYYY");
    };
    if zone != "UTC" && zone != "GMT" {
        return Err("not UTC (set the SBC's CDR time zone to UTC)");
    }
    let num = |s: &str| s.parse::<u32>().map_err(|_| "expected HH:MM:SS.mmm UTC Ddd Mmm DD YYYY");
    let (hms, ms) = hms.split_once('.').unwrap_or((hms, "0"));
    let mut parts = hms.split(':');
    let (Some(h), Some(m), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err("expected HH:MM:SS.mmm");
    };
    let month = MONTHS.iter().position(|x| *x == mon).ok_or("unknown month")? as u32 + 1;
    if ms.len() > 3 {
        return Err("more than 3 fractional digits");
    }
    let ms = num(ms)? * 10u32.pow(3 - ms.len() as u32);
    ccstream_schemas::utc_ms(num(year)? as i64, month, num(day)?, num(h)?, num(m)?, num(s)?, ms)
        .ok_or("a field is out of range")
}

/// Splits a syslog message or CDR-file line into its sequence number and CDR body (the text
/// after the header, without the leading `|`).
pub fn split_syslog(line: &str) -> (Option<u64>, &str) {
    let line = line.trim_end_matches(['\r', '\n']);
    if let Some(at) = line.find("[S") {
        let rest = &line[at + 2..];
        let rest_trim = rest.trim_start();
        if let Some(after_eq) = rest_trim.strip_prefix('=') {
            if let Some(close) = after_eq.find(']') {
                let seq = after_eq[..close].trim().parse().ok();
                let body = after_eq[close + 1..].trim_start();
                return (seq, body.strip_prefix('|').unwrap_or(body));
            }
        }
    }
    // A syslog header without a sequence marker (`<134>…`): the CDR starts at the first `|`.
    if line.starts_with('<') {
        if let Some(bar) = line.find('|') {
            return (None, &line[bar + 1..]);
        }
    }
    let body = line.trim_start();
    (None, body.strip_prefix('|').unwrap_or(body))
}

/// The parser: remembers each sender's latest title rows.
#[derive(Debug)]
pub struct CdrParser {
    /// Per sender: the signaling and media layouts of its latest title rows.
    layouts: HashMap<String, SenderLayouts>,
    /// Counts title and row lookups: the recency of `SenderLayouts::used`.
    clock: u64,
    default_signaling: Arc<Layout>,
    default_media: Arc<Layout>,
}

/// One sender's title rows, and when it last sent a title or a row.
#[derive(Debug)]
struct SenderLayouts {
    layouts: [Option<Arc<Layout>>; 2],
    used: u64,
}

impl Default for CdrParser {
    fn default() -> Self {
        CdrParser {
            layouts: HashMap::new(),
            clock: 0,
            default_signaling: Arc::new(Layout::default_for(Kind::Signaling)),
            default_media: Arc::new(Layout::default_for(Kind::Media)),
        }
    }
}

/// Senders whose title rows are remembered at most: beyond, the sender that sent nothing
/// for the longest is forgotten (its rows are read with the default titles until it sends
/// its own again), never the others.
pub const MAX_LAYOUTS: usize = 4096;

impl CdrParser {
    /// Forgets the titles of the sender that sent nothing for the longest.
    fn forget_least_recent(&mut self) {
        if let Some(oldest) = self.layouts.iter().min_by_key(|(_, l)| l.used).map(|(s, _)| s.clone()) {
            self.layouts.remove(&oldest);
        }
    }

    /// Senders whose titles are remembered.
    pub fn senders(&self) -> usize {
        self.layouts.len()
    }

    /// Parses one line from `sender` (the SBC's address, or a file name).
    pub fn parse<'a>(&mut self, sender: &str, line: &'a [u8]) -> Result<Line<'a>, CdrError> {
        let line = std::str::from_utf8(line).map_err(|_| CdrError::NotText)?;
        let (seq, body) = split_syslog(line);
        if body.trim_ascii().is_empty() {
            return Ok(Line::Blank);
        }
        let mut values: Vec<&'a str> = Vec::with_capacity(48);
        let mut start = 0;
        // `|` is ASCII, so every split point is a char boundary.
        for bar in memchr::memchr_iter(b'|', body.as_bytes()) {
            // Past the limit (and a trailing `|`): refused without splitting the rest.
            if values.len() > MAX_COLUMNS {
                return Err(CdrError::TooManyColumns);
            }
            values.push(body[start..bar].trim_ascii());
            start = bar + 1;
        }
        values.push(body[start..].trim_ascii());
        // One limit for titles and rows alike; a trailing `|` leaves an empty last field.
        if values.len() - usize::from(values.last() == Some(&"")) > MAX_COLUMNS {
            return Err(CdrError::TooManyColumns);
        }
        let first = values[0];
        if first == "SBCReportType" || first == "MediaReportType" {
            let layout = Layout::from_titles(values.iter().copied().filter(|t| !t.is_empty()))?;
            let kind = layout.kind;
            self.clock += 1;
            let slot = kind as usize;
            match self.layouts.get_mut(sender) {
                Some(l) => {
                    l.layouts[slot] = Some(Arc::new(layout));
                    l.used = self.clock;
                }
                None => {
                    if self.layouts.len() >= MAX_LAYOUTS {
                        self.forget_least_recent();
                    }
                    let mut l = SenderLayouts { layouts: [None, None], used: self.clock };
                    l.layouts[slot] = Some(Arc::new(layout));
                    self.layouts.insert(sender.to_string(), l);
                }
            }
            return Ok(Line::Title(kind));
        }
        if values.len() < 2 {
            return Err(CdrError::NoFields);
        }
        let kind = if first.starts_with("MEDIA_") && MEDIA_REPORTS.contains(&first) {
            Kind::Media
        } else if SIGNALING_REPORTS.contains(&first) {
            Kind::Signaling
        } else if first.ends_with("ReportType") {
            return Err(CdrError::UnknownTitle(first.to_string()));
        } else {
            return Err(CdrError::UnknownReport(first.chars().take(64).collect()));
        };
        let layout = self.layout(sender, kind);
        if values.len() == layout.columns.len() + 1 && values.last() == Some(&"") {
            values.pop(); // a trailing `|`
        }
        if values.len() > layout.columns.len() {
            return Err(CdrError::TooManyFields { kind, got: values.len(), expected: layout.columns.len() });
        }
        let cdr = Cdr { layout, seq, values };
        cdr.check()?;
        Ok(Line::Record(cdr))
    }

    /// The layout of `sender`'s rows of `kind` (its titles', else the default); marks the
    /// sender's titles used.
    fn layout(&mut self, sender: &str, kind: Kind) -> Arc<Layout> {
        self.clock += 1;
        let clock = self.clock;
        let titles = self.layouts.get_mut(sender).and_then(|l| {
            l.used = clock;
            l.layouts[kind as usize].as_ref()
        });
        match titles {
            Some(l) => Arc::clone(l),
            None => Arc::clone(match kind {
                Kind::Signaling => &self.default_signaling,
                Kind::Media => &self.default_media,
            }),
        }
    }
}
