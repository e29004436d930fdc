//! SIP listeners for RFC 6035 voice-quality reports: `PUBLISH` or `NOTIFY` with
//! `Event: vq-rtcpxr` and `Content-Type: application/vq-rtcpxr`, over UDP and TCP.
//!
//! Answers: `200 OK` once the report is durable on the log; `400` to garbage (also to
//! non-SIP bytes, sent back to the peer); `405` to other methods; `489` to other event
//! packages; `415` to other bodies; `513` to messages over the limit; `500` when the log
//! cannot take the report (the sender retransmits).

use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};

use super::publish::Batch;
use super::{Context, ReadDeadline};
use crate::sbc::sip::{message_len, parse_request, response};
use crate::sbc::SOURCE_VQ;
use crate::telemetry::Reject;

const BAD_REQUEST: &[u8] = b"SIP/2.0 400 Bad Request\r\nContent-Length: 0\r\n\r\n";

/// Handles one SIP message from `sender`; returns the response to send.
async fn handle(ctx: &Context, sender: &str, origin: &str, msg: &[u8]) -> Vec<u8> {
    let now = (ctx.now_ms)();
    ctx.telemetry.seen(SOURCE_VQ, msg.len(), now);
    let mut batch = Batch::new(SOURCE_VQ);
    let req = match parse_request(msg) {
        Ok(r) => r,
        Err(e) => {
            ctx.reject(&mut batch, SOURCE_VQ, origin, Reject::Malformed, format!("not a SIP request: {e}"), msg);
            let _ = ctx.publisher.send(batch).await;
            return BAD_REQUEST.to_vec();
        }
    };
    let refuse = |code: u16, text: &str, why: Reject, reason: String, extra: &[(&str, &str)], batch: &mut Batch| {
        ctx.reject(batch, SOURCE_VQ, origin, why, reason, msg);
        response(&req, code, text, extra)
    };
    let reply = if req.method != "PUBLISH" && req.method != "NOTIFY" {
        let reason = format!("SIP method {} is not served (PUBLISH or NOTIFY)", req.method);
        refuse(405, "Method Not Allowed", Reject::Unsupported, reason, &[("Allow", "PUBLISH, NOTIFY")], &mut batch)
    } else if req.event().as_deref() != Some("vq-rtcpxr") {
        let reason = format!("SIP event package {:?} is not vq-rtcpxr", req.event().unwrap_or_default());
        refuse(489, "Bad Event", Reject::Unsupported, reason, &[("Allow-Events", "vq-rtcpxr")], &mut batch)
    } else if req.content_type().as_deref() != Some("application/vq-rtcpxr") {
        let reason = format!("SIP body type {:?} is not application/vq-rtcpxr", req.content_type().unwrap_or_default());
        refuse(
            415,
            "Unsupported Media Type",
            Reject::Unsupported,
            reason,
            &[("Accept", "application/vq-rtcpxr")],
            &mut batch,
        )
    } else {
        let mapped = ctx.sbc().map_vq_report(sender, req.body, now);
        match mapped {
            Ok(event) => {
                batch.event(event, now);
                let tag = format!("{:08x}", crc32c::crc32c(msg));
                response(&req, 200, "OK", &[("SIP-ETag", &tag), ("Expires", "0")])
            }
            Err(e @ crate::sbc::vq::VqError::Sender(_)) => {
                refuse(403, "Forbidden", Reject::Unauthorized, e.to_string(), &[], &mut batch)
            }
            Err(e) => refuse(400, "Bad Request", Reject::Malformed, e.to_string(), &[], &mut batch),
        }
    };
    let acknowledged = reply.starts_with(b"SIP/2.0 200");
    match ctx.publisher.publish(batch).await {
        Ok(()) => reply,
        Err(_) if acknowledged => response(&req, 500, "Server Internal Error", &[("Retry-After", "5")]),
        Err(_) => reply,
    }
}

/// SIP over UDP: one message per datagram.
pub(super) async fn udp(sock: UdpSocket, ctx: Arc<Context>) {
    let max = ctx.config.max_message_bytes;
    let mut buf = vec![0u8; max + 1];
    loop {
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(listener = "sip_udp", error = %e, "receive failed");
                continue;
            }
        };
        let origin = format!("sip udp {peer}");
        let msg = &buf[..n];
        if msg.iter().all(|b| matches!(b, b'\r' | b'\n' | 0)) {
            continue; // keep-alive
        }
        let reply = if n > max {
            ctx.telemetry.seen(SOURCE_VQ, n, (ctx.now_ms)());
            let mut batch = Batch::new(SOURCE_VQ);
            ctx.reject(&mut batch, SOURCE_VQ, &origin, Reject::TooLarge, format!("datagram exceeds {max} bytes"), msg);
            let _ = ctx.publisher.send(batch).await;
            match parse_request(msg) {
                Ok(req) => response(&req, 513, "Message Too Large", &[]),
                Err(_) => BAD_REQUEST.to_vec(),
            }
        } else {
            handle(&ctx, &peer.ip().to_canonical().to_string(), &origin, msg).await
        };
        let _ = sock.send_to(&reply, peer).await;
    }
}

/// One SIP connection over TCP: messages framed by `Content-Length`; cut off when it is
/// silent for the idle timeout or a message takes longer than the read timeout.
pub(super) async fn connection(mut stream: TcpStream, peer: std::net::SocketAddr, ctx: Arc<Context>) {
    let max = ctx.config.max_message_bytes;
    let origin = format!("sip tcp {peer}");
    let sender = peer.ip().to_canonical().to_string();
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut chunk = vec![0u8; 16 * 1024];
    let mut deadline = ReadDeadline::new(&ctx.config);
    loop {
        loop {
            match message_len(&buf, max) {
                Ok(Some(len)) => {
                    deadline.progress();
                    let msg: Vec<u8> = buf.drain(..len).collect();
                    if msg.iter().all(|b| matches!(b, b'\r' | b'\n')) {
                        continue;
                    }
                    let reply = handle(&ctx, &sender, &origin, &msg).await;
                    if stream.write_all(&reply).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    // The stream cannot be framed any more: reject what is buffered and close.
                    let mut batch = Batch::new(SOURCE_VQ);
                    ctx.telemetry.seen(SOURCE_VQ, buf.len(), (ctx.now_ms)());
                    let too_large = matches!(e, crate::sbc::sip::SipError::TooLarge(_));
                    let why = if too_large { Reject::TooLarge } else { Reject::Malformed };
                    ctx.reject(&mut batch, SOURCE_VQ, &origin, why, e.to_string(), &buf);
                    let _ = ctx.publisher.send(batch).await;
                    let reply: &[u8] = if too_large {
                        b"SIP/2.0 513 Message Too Large\r\nContent-Length: 0\r\n\r\n"
                    } else {
                        BAD_REQUEST
                    };
                    let _ = stream.write_all(reply).await;
                    return;
                }
            }
        }
        let read = match deadline.read(&mut stream, &mut chunk, !buf.is_empty()).await {
            Ok(read) => read,
            Err(cutoff) => {
                ctx.cut("sip_tcp", peer, cutoff);
                Ok(0)
            }
        };
        match read {
            Ok(0) | Err(_) => {
                if !buf.is_empty() {
                    let mut batch = Batch::new(SOURCE_VQ);
                    ctx.telemetry.seen(SOURCE_VQ, buf.len(), (ctx.now_ms)());
                    ctx.reject(
                        &mut batch,
                        SOURCE_VQ,
                        &origin,
                        Reject::Malformed,
                        "connection closed inside a SIP message".into(),
                        &buf,
                    );
                    let _ = ctx.publisher.send(batch).await;
                }
                return;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}
