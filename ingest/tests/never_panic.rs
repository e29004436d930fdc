//! Property: no parser panics, whatever the bytes — arbitrary bytes, and samples with bytes
//! flipped, cut or spliced (to reach past the first checks). Each failure is an error value.

use std::path::Path;

use ccstream_ingest::acs::{parse_delivery, AcsMapper, Delivery};
use ccstream_ingest::graph::callrecord::{map_record, parse_record};
use ccstream_ingest::graph::{bot, logs, notify, presence};
use ccstream_ingest::listen::syslog;
use ccstream_ingest::sbc::sip::{message_len, parse_request};
use ccstream_ingest::sbc::{vq, SbcMapper};
use proptest::prelude::*;

fn sample(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    )
    .unwrap()
}

/// A sample with some bytes replaced, a cut, and a splice.
fn mutated(base: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let n = base.len().max(1);
    (prop::collection::vec((0..n, any::<u8>()), 0..8), 0..=n, prop::collection::vec(any::<u8>(), 0..16)).prop_map(
        move |(flips, cut, splice)| {
            let mut b = base.clone();
            for (i, v) in flips {
                if i < b.len() {
                    b[i] = v;
                }
            }
            b.truncate(cut);
            b.extend(splice);
            b
        },
    )
}

fn all_parsers(bytes: &[u8]) {
    let mut sbc = SbcMapper::new("t", Vec::new());
    for line in bytes.split(|b| *b == b'\n') {
        let _ = sbc.map_cdr_line("s", line, 0);
    }
    let _ = sbc.map_vq_report("s", bytes, 0);
    let _ = vq::parse_report(bytes);
    if let Ok(req) = parse_request(bytes) {
        let _ = (req.event(), req.content_type(), ccstream_ingest::sbc::sip::response(&req, 200, "OK", &[]));
    }
    let _ = message_len(bytes, 1 << 16);
    let _ = syslog::frame(bytes, 64);
    if let Ok(Delivery::Events(envelopes)) = parse_delivery(bytes) {
        let m = AcsMapper::new("t", Vec::new());
        for e in &envelopes {
            let _ = m.map(e);
        }
    }
    if let Ok(r) = parse_record(bytes) {
        let _ = map_record(&r, "", "t");
    }
    let _ = logs::map_page(logs::Log::DirectRouting, bytes, "t");
    let _ = logs::map_page(logs::Log::Pstn, bytes, "t");
    let _ = bot::map(bytes, "t", 0);
    if let Ok(ns) = notify::parse(bytes) {
        for n in ns {
            let _ = (n.resource_id(), n.client_state_is("x"), n.is_call_record());
        }
    }
    if let Ok(p) = presence::parse(bytes) {
        let _ = presence::Tracker::default().observe(&p, "t", 0);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        all_parsers(&bytes);
    }

    #[test]
    fn mutated_cdrs(bytes in mutated(sample("samples/audiocodes_cdr_syslog_odp.txt"))) {
        all_parsers(&bytes);
    }

    #[test]
    fn mutated_sip(bytes in mutated(sample("samples/vq_rtcpxr_snom821_publish.txt"))) {
        all_parsers(&bytes);
    }

    #[test]
    fn mutated_event_grid(bytes in mutated(sample("samples/acs_eventgrid_IncomingCall.json"))) {
        all_parsers(&bytes);
    }

    #[test]
    fn mutated_call_records(bytes in mutated(sample("graph/callrecord_call_queue_answered.json"))) {
        all_parsers(&bytes);
    }

    #[test]
    fn mutated_graph_logs(bytes in mutated(sample("samples/graph_direct_routing_calls_v1_current.json"))) {
        all_parsers(&bytes);
    }

    #[test]
    fn mutated_bot_notifications(bytes in mutated(sample("samples/graph_comms_notification_transfer_failed.json"))) {
        all_parsers(&bytes);
    }

    /// Structured inputs the byte strategies rarely hit: CDR rows of arbitrary fields
    /// behind a real report type, and vq lines of arbitrary parameters.
    #[test]
    fn arbitrary_cdr_fields(
        report in prop::sample::select(vec!["CALL_START", "CALL_END", "MEDIA_END", "MEDIA_UPDATE", "SBCReportType", "MediaReportType"]),
        fields in prop::collection::vec("[ -~]{0,24}", 0..45),
    ) {
        let line = format!("<134>[S=1] |{report}|{}", fields.join("|"));
        all_parsers(line.as_bytes());
        // What maps has a payload that is JSON (quotes, backslashes, controls escaped).
        if let Ok(Some(e)) = SbcMapper::new("t", Vec::new()).map_cdr_line("s", line.as_bytes(), 0) {
            let payload = e.payload.as_deref().unwrap_or("");
            prop_assert!(serde_json::from_str::<serde_json::Value>(payload).is_ok(), "{}", payload);
        }
    }

    #[test]
    fn arbitrary_vq_lines(lines in prop::collection::vec("[A-Za-z-]{1,12}:[ -~]{0,40}", 0..20)) {
        let body = format!("VQSessionReport: CallTerm\r\nCallID: x\r\nLocalMetrics:\r\n{}", lines.join("\r\n"));
        all_parsers(body.as_bytes());
        prop_assert!(vq::parse_report(body.as_bytes()).is_ok());
    }
}
