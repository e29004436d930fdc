//! RFC 6035 voice-quality reports (`application/vq-rtcpxr`), sans-IO: a report body in, a
//! typed report out.
//!
//! # Format
//!
//! ```text
//! VQSessionReport: CallTerm          (or VQIntervalReport, VQAlertReport)
//! CallID: <SIP Call-ID of the measured dialog>
//! LocalID: / RemoteID: / OrigID: / LocalAddr: IP=… PORT=… SSRC=… / RemoteAddr: / DialogID: …
//! LocalMetrics:                      (then the metric lines; RemoteMetrics: likewise)
//! Timestamps: START=<ISO 8601> STOP=<ISO 8601>
//! SessionDesc: PT= PD= SR= …   JitterBuffer: …   PacketLoss: NLR= JDR=
//! BurstGapLoss: …   Delay: RTD= ESD= IAJ= …   Signal: …   QualityEst: MOSLQ= MOSCQ= …
//! ```
//!
//! # Leniency (as real reporters send it)
//!
//! No space needed after `:`; a missing space between parameters (`JBM=20JBX=240`) splits at
//! the next `NAME=`; vendor `x-` lines are kept; LF or CRLF line ends; folded lines (leading
//! whitespace) continue the previous one; unknown lines are kept, not errors; timestamps may
//! lack a fraction or carry an offset. Only a missing report type or `CallID` is an error.

/// Why a body is not a voice-quality report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VqError {
    #[error("the report is not UTF-8 text")]
    NotText,
    #[error("not a vq-rtcpxr report (first line {0:?}; expected VQSessionReport, VQIntervalReport or VQAlertReport)")]
    NotAReport(String),
    #[error("the report has no CallID")]
    NoCallId,
    /// The sender may not send for the tenant (or for any).
    #[error("{0}")]
    Sender(String),
}

/// Session, interval or alert report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportKind {
    Session,
    Interval,
    Alert,
}

impl ReportKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ReportKind::Session => "session",
            ReportKind::Interval => "interval",
            ReportKind::Alert => "alert",
        }
    }
}

/// One metrics block (`LocalMetrics:` or `RemoteMetrics:`): every `NAME=value` parameter
/// under its line's name, in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics<'a> {
    /// `(line, parameter, value)`, e.g. `("Delay", "RTD", "0")`; vendor `x-` lines too.
    pub params: Vec<(&'a str, &'a str, &'a str)>,
}

impl<'a> Metrics<'a> {
    /// A parameter's raw value.
    pub fn get(&self, line: &str, param: &str) -> Option<&'a str> {
        self.params
            .iter()
            .find(|(l, p, _)| l.eq_ignore_ascii_case(line) && p.eq_ignore_ascii_case(param))
            .map(|(_, _, v)| *v)
    }

    /// A numeric parameter (`None` when absent or not a number).
    pub fn num(&self, line: &str, param: &str) -> Option<f64> {
        self.get(line, param).and_then(|v| v.parse::<f64>().ok()).filter(|v| v.is_finite())
    }

    /// `Timestamps: START=` / `STOP=` as UTC epoch ms.
    pub fn time(&self, param: &str) -> Option<i64> {
        self.get("Timestamps", param).and_then(|v| ccstream_schemas::parse_rfc3339_ms(v).ok())
    }
}

/// A report, borrowing from the body.
#[derive(Debug, Clone, PartialEq)]
pub struct Report<'a> {
    pub kind: ReportKind,
    /// `CallTerm` after the report type: the call has ended.
    pub call_term: bool,
    pub call_id: &'a str,
    /// The session lines before the metrics (`LocalID`, `LocalAddr`, `DialogID`, `x-…`), as
    /// sent.
    pub session: Vec<(&'a str, &'a str)>,
    pub local: Option<Metrics<'a>>,
    pub remote: Option<Metrics<'a>>,
}

impl<'a> Report<'a> {
    /// A session line's value (case-insensitive name).
    pub fn session(&self, name: &str) -> Option<&'a str> {
        self.session.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| *v)
    }

    /// A parameter of a session line (`LocalAddr` `SSRC`).
    pub fn session_param(&self, name: &str, param: &str) -> Option<&'a str> {
        self.session(name).and_then(|v| params(v).find(|(p, _)| p.eq_ignore_ascii_case(param)).map(|(_, v)| v))
    }
}

/// Splits `NAME=value NAME=value…` leniently (see the module doc); quoted values keep their
/// spaces.
pub fn params(line: &str) -> impl Iterator<Item = (&str, &str)> {
    let b = line.as_bytes();
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= b.len() {
            return None;
        }
        let key_start = i;
        while i < b.len() && b[i] != b'=' && !b[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = &line[key_start..i];
        if i >= b.len() || b[i] != b'=' {
            return Some((key, ""));
        }
        i += 1;
        let value_start = i;
        if i < b.len() && b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += 1;
            }
            i = (i + 1).min(b.len());
            return Some((key, line[value_start..i].trim_matches('"')));
        }
        while i < b.len() && !b[i].is_ascii_whitespace() {
            // `JBM=20JBX=240`: a letter after a digit that starts `NAME=` begins the next
            // parameter.
            if b[i].is_ascii_alphabetic() && i > value_start && b[i - 1].is_ascii_digit() && starts_param(&b[i..]) {
                break;
            }
            i += 1;
        }
        Some((key, &line[value_start..i]))
    })
}

fn starts_param(b: &[u8]) -> bool {
    let n = b.iter().take_while(|c| c.is_ascii_alphanumeric()).count();
    n > 0 && b.get(n) == Some(&b'=')
}

/// Parses a report body.
pub fn parse_report(body: &[u8]) -> Result<Report<'_>, VqError> {
    let text = std::str::from_utf8(body).map_err(|_| VqError::NotText)?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).filter(|l| !l.trim().is_empty());
    let first = lines.next().unwrap_or("");
    let (kind_name, rest) = first.split_once(':').unwrap_or((first, ""));
    let kind = match kind_name.trim() {
        "VQSessionReport" => ReportKind::Session,
        "VQIntervalReport" => ReportKind::Interval,
        "VQAlertReport" => ReportKind::Alert,
        _ => return Err(VqError::NotAReport(first.chars().take(80).collect())),
    };
    let call_term = rest.trim().eq_ignore_ascii_case("CallTerm");
    let mut report = Report { kind, call_term, call_id: "", session: Vec::new(), local: None, remote: None };
    #[derive(PartialEq)]
    enum Block {
        Session,
        Local,
        Remote,
    }
    let mut block = Block::Session;
    for line in lines {
        if line.starts_with([' ', '\t']) {
            // A folded line continues the previous line's parameters.
            let target = match block {
                Block::Local => report.local.as_mut(),
                Block::Remote => report.remote.as_mut(),
                Block::Session => None,
            };
            if let Some(m) = target {
                let name = m.params.last().map(|(l, _, _)| *l).unwrap_or("");
                m.params.extend(params(line).map(|(p, v)| (name, p, v)));
            }
            continue;
        }
        let (name, value) = match line.split_once(':') {
            Some((n, v)) => (n.trim(), v.trim()),
            None => (line.trim(), ""),
        };
        match name {
            "LocalMetrics" => {
                block = Block::Local;
                report.local.get_or_insert_with(Metrics::default);
                continue;
            }
            "RemoteMetrics" => {
                block = Block::Remote;
                report.remote.get_or_insert_with(Metrics::default);
                continue;
            }
            "CallID" => report.call_id = value,
            _ => {}
        }
        match block {
            Block::Session => report.session.push((name, value)),
            Block::Local | Block::Remote => {
                let m = if block == Block::Local { report.local.as_mut() } else { report.remote.as_mut() };
                let m = m.expect("the block's metrics exist once it is entered");
                if name.starts_with("x-") || name.starts_with("X-") {
                    m.params.push((name, "", value));
                } else {
                    m.params.extend(params(value).map(|(p, v)| (name, p, v)));
                }
            }
        }
    }
    if report.call_id.is_empty() {
        return Err(VqError::NoCallId);
    }
    Ok(report)
}
