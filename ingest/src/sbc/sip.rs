//! Just enough SIP (RFC 3261) to receive voice-quality reports, sans-IO: frame a message on a
//! stream, parse a request, and build its response.
//!
//! Invariants: header names compare case-insensitively and in compact form (`i` = Call-ID,
//! `l` = Content-Length, `c` = Content-Type, `o` = Event, `v` = Via, `f` = From, `t` = To);
//! a body is exactly `Content-Length` bytes (on UDP, the rest of the datagram when the header
//! is absent); nothing here panics on any input.

/// Why bytes are not a SIP request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SipError {
    #[error("not a SIP request line {0:?}")]
    RequestLine(String),
    #[error("SIP headers are not UTF-8")]
    NotText,
    #[error("SIP header line without a colon: {0:?}")]
    Header(String),
    #[error("bad Content-Length {0:?}")]
    ContentLength(String),
    #[error("the body is shorter ({got} bytes) than its Content-Length ({expected})")]
    ShortBody { got: usize, expected: usize },
    #[error("SIP message exceeds {0} bytes")]
    TooLarge(usize),
}

/// A parsed SIP request, borrowing from the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    pub method: &'a str,
    pub uri: &'a str,
    /// Headers in order, names as sent, values trimmed (folded lines joined by the caller's
    /// bytes: a folded value keeps its CRLF).
    pub headers: Vec<(&'a str, &'a str)>,
    pub body: &'a [u8],
}

const COMPACT: [(&str, &str); 7] = [
    ("i", "call-id"),
    ("l", "content-length"),
    ("c", "content-type"),
    ("o", "event"),
    ("v", "via"),
    ("f", "from"),
    ("t", "to"),
];

fn canonical_name(name: &str) -> &str {
    COMPACT.iter().find(|(c, _)| c.eq_ignore_ascii_case(name)).map(|(_, full)| *full).unwrap_or(name)
}

impl<'a> Request<'a> {
    /// The first value of header `name` (case-insensitive, compact forms included).
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers.iter().find(|(n, _)| canonical_name(n).eq_ignore_ascii_case(name)).map(|(_, v)| *v)
    }

    /// Every value of header `name`, in order.
    pub fn headers_named<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'a str> + 's {
        self.headers.iter().filter(move |(n, _)| canonical_name(n).eq_ignore_ascii_case(name)).map(|(_, v)| *v)
    }

    /// The media type of the body (`application/vq-rtcpxr`), lowercase, without parameters.
    pub fn content_type(&self) -> Option<String> {
        self.header("content-type").map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
    }

    /// The event package (`vq-rtcpxr`), lowercase, without parameters.
    pub fn event(&self) -> Option<String> {
        self.header("event").map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
    }
}

/// Where the header block of `buf` ends (the index after the blank line), if it has.
fn header_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn content_length(headers: &str) -> Result<Option<usize>, SipError> {
    for line in headers.lines().skip(1) {
        if let Some((name, value)) = line.split_once(':') {
            if canonical_name(name.trim()).eq_ignore_ascii_case("content-length") {
                let v = value.trim();
                return v.parse().map(Some).map_err(|_| SipError::ContentLength(v.to_string()));
            }
        }
    }
    Ok(None)
}

/// Stream framing: the length of the first complete message in `buf`, `None` if more bytes
/// are needed. Leading CRLF keep-alives count as a message of their own length. A message
/// (headers and body) longer than `max` is an error as soon as its headers say so.
pub fn message_len(buf: &[u8], max: usize) -> Result<Option<usize>, SipError> {
    let ws = buf.iter().take_while(|b| matches!(b, b'\r' | b'\n')).count();
    if ws > 0 {
        return Ok(Some(ws));
    }
    let Some(end) = header_end(buf) else {
        return if buf.len() > max { Err(SipError::TooLarge(max)) } else { Ok(None) };
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| SipError::NotText)?;
    let body = content_length(head)?.unwrap_or(0);
    let total = end.checked_add(body).ok_or_else(|| SipError::ContentLength(body.to_string()))?;
    if total > max {
        return Err(SipError::TooLarge(max));
    }
    Ok((buf.len() >= total).then_some(total))
}

/// Parses one request (a UDP datagram or a framed stream message).
pub fn parse_request(msg: &[u8]) -> Result<Request<'_>, SipError> {
    let end = header_end(msg).unwrap_or(msg.len());
    let head = std::str::from_utf8(&msg[..end]).map_err(|_| SipError::NotText)?;
    let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let first = lines.next().unwrap_or("");
    let mut parts = first.split(' ');
    let (Some(method), Some(uri), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SipError::RequestLine(first.chars().take(80).collect()));
    };
    if version != "SIP/2.0" || method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) || uri.is_empty() {
        return Err(SipError::RequestLine(first.chars().take(80).collect()));
    }
    let mut headers = Vec::new();
    for line in lines {
        if line.is_empty() {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            // A folded continuation: the value keeps its first line only; the rest is rare
            // enough (and never in the headers read here) to ignore.
            continue;
        }
        let (name, value) = line.split_once(':').ok_or_else(|| SipError::Header(line.chars().take(80).collect()))?;
        headers.push((name.trim(), value.trim()));
    }
    let rest = &msg[end..];
    let body = match content_length(head)? {
        Some(n) if n > rest.len() => return Err(SipError::ShortBody { got: rest.len(), expected: n }),
        Some(n) => &rest[..n],
        None => rest,
    };
    Ok(Request { method, uri, headers, body })
}

/// The response to `req` with `code` and `reason`: Via, From, To (with a tag), Call-ID and
/// CSeq copied, plus `extra` headers, no body.
pub fn response(req: &Request<'_>, code: u16, reason: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut out = format!("SIP/2.0 {code} {reason}\r\n");
    for via in req.headers_named("via") {
        out.push_str(&format!("Via: {via}\r\n"));
    }
    if let Some(from) = req.header("from") {
        out.push_str(&format!("From: {from}\r\n"));
    }
    if let Some(to) = req.header("to") {
        if to.contains(";tag=") {
            out.push_str(&format!("To: {to}\r\n"));
        } else {
            let tag = crc32c::crc32c(req.header("call-id").unwrap_or("").as_bytes());
            out.push_str(&format!("To: {to};tag={tag:08x}\r\n"));
        }
    }
    for name in ["call-id", "cseq"] {
        if let Some(v) = req.header(name) {
            out.push_str(&format!("{}: {v}\r\n", if name == "cseq" { "CSeq" } else { "Call-ID" }));
        }
    }
    for (name, value) in extra {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    out.into_bytes()
}
