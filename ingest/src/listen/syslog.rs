//! Syslog listeners for SBC CDRs: UDP (one message per datagram) and TCP (RFC 6587: octet
//! counting `LEN SP MSG`, or messages ended by LF), each message a CDR line.

use std::sync::Arc;

use tokio::net::{TcpStream, UdpSocket};

use super::publish::Batch;
use super::{Context, ReadDeadline};
use crate::sbc::cdr::CdrError;
use crate::sbc::SOURCE_CDR;
use crate::telemetry::Reject;

/// One framed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// More bytes are needed.
    Incomplete,
    /// A message at `start..end`; the frame used `consumed` bytes.
    Message { consumed: usize, start: usize, end: usize },
    /// A message longer than the limit (`len` bytes, or at least that many): drop `consumed`
    /// bytes now, then `then` from the stream.
    TooLarge { consumed: usize, len: usize, then: Skip },
}

/// What else to drop of an oversized message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    Nothing,
    /// This many more bytes (octet counting).
    Bytes(usize),
    /// Up to and including the next LF.
    ToLf,
}

/// Frames the next syslog message of a TCP stream (RFC 6587), sans-IO.
pub fn frame(buf: &[u8], max: usize) -> Frame {
    let digits = buf.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits > 0 && digits < 10 && buf.get(digits) == Some(&b' ') {
        // Octet counting.
        let len: usize = std::str::from_utf8(&buf[..digits]).ok().and_then(|s| s.parse().ok()).unwrap_or(usize::MAX);
        let start = digits + 1;
        let total = start.saturating_add(len);
        if len > max {
            let consumed = buf.len().min(total);
            let then = if total > consumed { Skip::Bytes(total - consumed) } else { Skip::Nothing };
            return Frame::TooLarge { consumed, len, then };
        }
        return if buf.len() >= total {
            Frame::Message { consumed: total, start, end: total }
        } else {
            Frame::Incomplete
        };
    }
    match buf.iter().position(|&b| b == b'\n') {
        Some(i) if i > max => Frame::TooLarge { consumed: i + 1, len: i, then: Skip::Nothing },
        Some(i) => Frame::Message { consumed: i + 1, start: 0, end: i },
        None if buf.len() > max => Frame::TooLarge { consumed: buf.len(), len: buf.len(), then: Skip::ToLf },
        None => Frame::Incomplete,
    }
}

fn classify(e: &CdrError) -> Reject {
    match e {
        CdrError::Missing { .. } | CdrError::Field { .. } => Reject::Invalid,
        CdrError::Sender(_) => Reject::Unauthorized,
        _ => Reject::Malformed,
    }
}

/// Parses the lines of one message from `sender` into `batch`; `origin` names the peer in a
/// dead letter (built only for one).
fn lines(ctx: &Context, batch: &mut Batch, sender: &str, origin: impl Fn() -> String, data: &[u8]) {
    let now = (ctx.now_ms)();
    ctx.telemetry.seen(SOURCE_CDR, data.len(), now);
    let mut mapper = ctx.sbc();
    for line in data.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(|b| b.is_ascii_whitespace() || *b == 0) {
            continue;
        }
        match mapper.map_cdr_line(sender, line, now) {
            Ok(Some(event)) => batch.event(event, now),
            Ok(None) => {}
            Err(e) => ctx.reject(batch, SOURCE_CDR, &origin(), classify(&e), e.to_string(), line),
        }
    }
}

/// Datagrams mapped into one batch at most, while more are waiting.
const UDP_BATCH: usize = 1024;

/// Syslog over UDP: one message per datagram. Waiting datagrams are drained into one batch
/// before it is handed to the writer, so a burst costs one hand-over, not one per datagram.
pub(super) async fn udp(sock: UdpSocket, ctx: Arc<Context>) {
    let max = ctx.config.max_message_bytes;
    let mut buf = vec![0u8; max + 1];
    loop {
        if let Err(e) = sock.readable().await {
            tracing::warn!(listener = "syslog_udp", error = %e, "receive failed");
            continue;
        }
        let mut batch = Batch::new(SOURCE_CDR);
        for _ in 0..UDP_BATCH {
            let (n, peer) = match sock.try_recv_from(&mut buf) {
                Ok(x) => x,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::warn!(listener = "syslog_udp", error = %e, "receive failed");
                    break;
                }
            };
            let origin = || format!("syslog udp {peer}");
            if n > max {
                ctx.telemetry.seen(SOURCE_CDR, n, (ctx.now_ms)());
                let reason = format!("datagram exceeds {max} bytes");
                ctx.reject(&mut batch, SOURCE_CDR, &origin(), Reject::TooLarge, reason, &buf[..n]);
            } else {
                lines(&ctx, &mut batch, &peer.ip().to_canonical().to_string(), origin, &buf[..n]);
            }
        }
        let _ = ctx.publisher.send(batch).await;
    }
}

/// One syslog connection over TCP, cut off when it is silent for the idle timeout or a
/// message takes longer than the read timeout (what it had of that message is a dead
/// letter).
pub(super) async fn connection(mut stream: TcpStream, peer: std::net::SocketAddr, ctx: Arc<Context>) {
    let max = ctx.config.max_message_bytes;
    let sender = peer.ip().to_canonical().to_string();
    let origin = format!("syslog tcp {peer}");
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut skip = Skip::Nothing;
    let mut chunk = vec![0u8; 64 * 1024];
    let mut deadline = ReadDeadline::new(&ctx.config);
    loop {
        let partial = !buf.is_empty() || skip != Skip::Nothing;
        let n = match deadline.read(&mut stream, &mut chunk, partial).await {
            Ok(read) => read.unwrap_or(0),
            Err(cutoff) => {
                ctx.cut("syslog_tcp", peer, cutoff);
                if !buf.is_empty() {
                    let mut batch = Batch::new(SOURCE_CDR);
                    let reason = format!("a message did not arrive whole within {} s", ctx.config.read_timeout_s);
                    ctx.reject(&mut batch, SOURCE_CDR, &origin, Reject::Malformed, reason, &buf);
                    let _ = ctx.publisher.send(batch).await;
                }
                return;
            }
        };
        let eof = n == 0;
        let mut data = &chunk[..n];
        // The rest of an oversized message is dropped as it arrives.
        match skip {
            Skip::Nothing => {}
            Skip::Bytes(k) => {
                let d = k.min(data.len());
                data = &data[d..];
                skip = if k > d { Skip::Bytes(k - d) } else { Skip::Nothing };
            }
            Skip::ToLf => match data.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    data = &data[i + 1..];
                    skip = Skip::Nothing;
                }
                None => data = &[],
            },
        }
        buf.extend_from_slice(data);
        let mut batch = Batch::new(SOURCE_CDR);
        let mut at = 0;
        while skip == Skip::Nothing {
            match frame(&buf[at..], max) {
                Frame::Incomplete => break,
                Frame::Message { consumed, start, end } => {
                    lines(&ctx, &mut batch, &sender, || origin.clone(), &buf[at + start..at + end]);
                    at += consumed;
                }
                Frame::TooLarge { consumed, len, then } => {
                    ctx.telemetry.seen(SOURCE_CDR, len, (ctx.now_ms)());
                    let reason = format!("message of {len} bytes or more exceeds {max}");
                    let raw = buf[at..at + consumed].to_vec();
                    ctx.reject(&mut batch, SOURCE_CDR, &origin, Reject::TooLarge, reason, &raw);
                    at += consumed;
                    skip = then;
                }
            }
        }
        if at > 0 {
            deadline.progress();
        }
        buf.drain(..at);
        if eof && !buf.is_empty() && skip == Skip::Nothing {
            // The last message of a stream may lack its LF.
            let rest = std::mem::take(&mut buf);
            lines(&ctx, &mut batch, &sender, || origin.clone(), &rest);
        }
        let _ = ctx.publisher.send(batch).await;
        if eof {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_lf_and_octet_counted_messages() {
        assert_eq!(frame(b"abc\ndef", 100), Frame::Message { consumed: 4, start: 0, end: 3 });
        assert_eq!(frame(b"abc", 100), Frame::Incomplete);
        assert_eq!(frame(b"5 hello6 world!", 100), Frame::Message { consumed: 7, start: 2, end: 7 });
        assert_eq!(frame(b"5 hel", 100), Frame::Incomplete);
        // A message starting with digits that is not a length is LF-framed.
        assert_eq!(frame(b"10:35:36.653 x\n", 100), Frame::Message { consumed: 15, start: 0, end: 14 });
        assert_eq!(frame(b"aaaaaaaaaa\n", 5), Frame::TooLarge { consumed: 11, len: 10, then: Skip::Nothing });
        assert_eq!(frame(b"aaaaaaaaaa", 5), Frame::TooLarge { consumed: 10, len: 10, then: Skip::ToLf });
        assert_eq!(frame(b"9 123456789", 5), Frame::TooLarge { consumed: 11, len: 9, then: Skip::Nothing });
        assert_eq!(frame(b"9 1234", 5), Frame::TooLarge { consumed: 6, len: 9, then: Skip::Bytes(5) });
    }
}
