//! Golden tests over the public format samples in `tests/fixtures/samples/` (provenance in
//! `SOURCES.md` there): every sample of an SBC or ACS source is either mapped to canonical
//! events (snapshot per file in `tests/snapshots/`) or rejected with a reason this test
//! names. A new sample is a new file; `cargo insta review` accepts its snapshot.

use std::path::{Path, PathBuf};

use ccstream_ingest::acs::{parse_delivery, AcsMapper, Delivery, Mapped, TenantRule as AcsRule};
use ccstream_ingest::sbc::cdr::{split_syslog, CdrParser, Line};
use ccstream_ingest::sbc::sip::parse_request;
use ccstream_ingest::sbc::{SbcMapper, TenantRule};

/// The reception time given to the mappers (2026-01-05T00:00:00Z).
const RECEIVED_MS: i64 = 1_767_571_200_000;

fn samples() -> PathBuf {
    Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/samples")
}

fn sample_files(prefix: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(samples())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with(prefix))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no samples named {prefix}*");
    files
}

fn name(p: &Path) -> String {
    p.file_name().unwrap().to_str().unwrap().to_string()
}

fn sbc_mapper() -> SbcMapper {
    SbcMapper::new(
        "tenant-default",
        vec![
            TenantRule { tenant: "tenant-genesys".into(), ip_group: Some("IPG_GENESYS".into()), ..Default::default() },
            TenantRule { tenant: "tenant-fr".into(), number_prefix: Some("+33".into()), ..Default::default() },
        ],
    )
}

/// Maps each line of a CDR file; one output line per input line.
fn map_cdr_lines(text: &str) -> (String, usize, usize) {
    let mut mapper = sbc_mapper();
    let (mut out, mut ok, mut errors) = (String::new(), 0, 0);
    for line in text.lines() {
        match mapper.map_cdr_line("10.0.10.11", line.as_bytes(), RECEIVED_MS) {
            Ok(Some(e)) => {
                ok += 1;
                out.push_str(&e.to_json());
            }
            Ok(None) => out.push_str("(title row)"),
            Err(e) => {
                errors += 1;
                out.push_str(&format!("REJECTED: {e}"));
            }
        }
        out.push('\n');
    }
    (out, ok, errors)
}

#[test]
fn audiocodes_cdr_samples() {
    for path in sample_files("audiocodes_cdr_") {
        let file = name(&path);
        if file.ends_with(".json") || file.contains("pdfwrapped") {
            continue; // checked below
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let (out, ok, errors) = map_cdr_lines(&text);
        if file.contains("invalid") {
            // Every line is broken: a missing report type, columns missing in the middle,
            // or columns beyond the title.
            assert_eq!((ok, errors), (0, text.lines().count()), "{file}:\n{out}");
        } else {
            assert_eq!(errors, 0, "{file}:\n{out}");
            assert!(ok > 0, "{file}");
        }
        insta::assert_snapshot!(file, out);
    }
}

#[test]
fn invalid_cdr_lines_say_why() {
    let text = std::fs::read_to_string(samples().join("audiocodes_cdr_invalid_lines_odp.txt")).unwrap();
    let (out, _, _) = map_cdr_lines(&text);
    let reasons: Vec<&str> = out.lines().collect();
    assert!(reasons[0].contains("unknown CDR report type \"SBC\""), "{}", reasons[0]);
    assert!(reasons[1].contains("bad Orig"), "{}", reasons[1]);
    assert!(reasons[2].contains("40 fields, its title row has 39"), "{}", reasons[2]);
    assert!(reasons[3].contains("unknown CDR report type"), "{}", reasons[3]);
    assert!(reasons[4].contains("bad Cid"), "{}", reasons[4]);
    assert!(reasons[5].contains("31 fields, its title row has 30"), "{}", reasons[5]);
}

/// The syslog framing: the body after the header is exactly what the sample's own test
/// expects.
#[test]
fn syslog_headers_are_stripped_as_expected() {
    let pairs: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(samples().join("audiocodes_cdr_syslog_odp_expected.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(pairs.len(), 7);
    for pair in pairs {
        let syslog = pair["syslog"].as_str().unwrap();
        let expected = pair["expected_report_line"].as_str().unwrap();
        let (seq, body) = split_syslog(syslog);
        assert_eq!(body, expected, "{syslog}");
        assert!(seq.is_some(), "{syslog}");
    }
}

/// The manual's example, whose PDF wrapped lines: joined, it is a 36-column title (`Durat`,
/// `IPGroup (description)`) and a CALL_END, which map through that title.
#[test]
fn manual_example_with_an_older_title_row() {
    let text = std::fs::read_to_string(samples().join("audiocodes_cdr_manual_example_v70_pdfwrapped.txt")).unwrap();
    let joined = text.lines().collect::<Vec<_>>().join(" ");
    let at = joined.find("[S=41]").unwrap();
    let (title, row) = joined.split_at(at);
    let mut parser = CdrParser::default();
    assert!(matches!(parser.parse("sbc", title.as_bytes()).unwrap(), Line::Title(_)));
    let mut mapper = sbc_mapper();
    assert!(mapper.map_cdr_line("sbc", title.as_bytes(), RECEIVED_MS).unwrap().is_none());
    let e = mapper.map_cdr_line("sbc", row.as_bytes(), RECEIVED_MS).unwrap().unwrap();
    insta::assert_snapshot!("audiocodes_cdr_manual_example_v70", e.to_json());
    assert_eq!(e.occurred_at.as_deref(), Some("2014-10-14T17:01:04.953Z"));
    let payload: serde_json::Value = serde_json::from_str(e.payload.as_deref().unwrap()).unwrap();
    assert_eq!(payload["duration_s"], 15);
    assert_eq!(payload["ip_group"], "1");
    assert_eq!(payload["callee"], serde_json::Value::Null, "an empty trailing column is absent");
}

#[test]
fn vq_rtcpxr_samples() {
    for path in sample_files("vq_rtcpxr_") {
        let raw = std::fs::read(&path).unwrap();
        let req = parse_request(&raw).unwrap();
        assert_eq!(req.method, "PUBLISH");
        assert_eq!(req.event().as_deref(), Some("vq-rtcpxr"));
        assert_eq!(req.body.len(), 804, "Content-Length frames the body");
        let e = sbc_mapper().map_vq_report("10.0.3.13", req.body, RECEIVED_MS).unwrap();
        // The quirks: `JBM=20JBX=240` splits; no space after the colon; `x-` lines kept.
        let payload: serde_json::Value = serde_json::from_str(e.payload.as_deref().unwrap()).unwrap();
        assert_eq!(payload["local"]["JitterBuffer"]["JBM"], "20");
        assert_eq!(payload["local"]["JitterBuffer"]["JBX"], "240");
        assert_eq!(payload["local"]["x-SIPterm"], "SDC=OK SDT=7 SDR=OR");
        assert_eq!(e.packet_loss_rate, Some(0.03));
        insta::assert_snapshot!(name(&path), e.to_json());
    }
}

fn acs_mapper() -> AcsMapper {
    AcsMapper::new(
        "tenant-default",
        vec![AcsRule { tenant: "tenant-acs".into(), resource: "{communication-services-resource-name}".into() }],
    )
}

#[test]
fn acs_samples() {
    let mapper = acs_mapper();
    for path in sample_files("acs_").into_iter().chain(sample_files("eventgrid_")) {
        let file = name(&path);
        let raw = std::fs::read(&path).unwrap();
        let out = match parse_delivery(&raw) {
            Err(e) => {
                // Only the sample the docs broke with a trailing comma; Event Grid never
                // sends that, so it is rejected, with serde's position.
                assert_eq!(file, "acs_jobrouter_RouterWorkerOfferDeclined.json", "{e}");
                assert!(e.to_string().contains("trailing comma"), "{e}");
                format!("REJECTED: {e}")
            }
            Ok(Delivery::Validation { code, .. }) => {
                assert_eq!(code, "512d38b6-c7b8-40c8-89fe-f46f9e9622b6");
                format!("VALIDATION: {code}")
            }
            Ok(Delivery::Events(envelopes)) => envelopes
                .iter()
                .map(|e| match mapper.map(e) {
                    Ok(Mapped::Event(ev)) => ev.to_json(),
                    Ok(Mapped::Unmapped(name)) => format!("UNMAPPED: {name}"),
                    Err(err) => format!("REJECTED: {err}"),
                })
                .collect::<Vec<_>>()
                .join("\n"),
        };
        assert!(!out.contains("REJECTED") || file.contains("OfferDeclined"), "{file}: {out}");
        insta::assert_snapshot!(file, out);
    }
}

mod graph {
    use super::*;
    use ccstream_ingest::graph::callrecord::{self, map_record, merge_sessions_page, parse_record, Page};
    use ccstream_ingest::graph::{bot, logs, notify, presence};
    use ccstream_schemas::Event;

    /// Events one per line; the record event's payload (the whole record) is summarized.
    fn lines(events: &[Event<'_>]) -> String {
        events
            .iter()
            .map(|e| {
                let mut e = e.clone();
                if e.to_state.as_deref() == Some("ended") && e.source.as_deref() == Some(callrecord::SOURCE) {
                    let n = e.payload.as_deref().map_or(0, str::len);
                    e.payload = Some(format!("<the record as fetched: {n} bytes>").into());
                }
                e.to_json()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn record_events(path: &Path) -> Vec<Event<'static>> {
        let raw = std::fs::read_to_string(path).unwrap();
        let record = parse_record(raw.as_bytes()).unwrap();
        map_record(&record, &raw, "tenant-graph").unwrap()
    }

    #[test]
    fn call_record_samples() {
        for path in sample_files("graph_callrecord_") {
            let file = name(&path);
            if file.contains("sessions_list") {
                continue; // pages, below
            }
            let events = record_events(&path);
            // Peer-to-peer samples: the record and its streams, no contact-center events.
            assert!(
                events.iter().all(|e| matches!(e.event_type.as_deref(), Some("call_state" | "media_stream"))),
                "{file}"
            );
            insta::assert_snapshot!(file, lines(&events));
        }
        // The lenient one: `Windows`/`Teams` casing, a failureInfo of nulls, no @odata.type.
        let events = record_events(&samples().join("graph_callrecord_fixture_callrecordinsights_minimal.json"));
        assert!(events.len() > 1, "its streams are mapped");
    }

    #[test]
    fn session_pages_merge_into_the_record() {
        let raw = std::fs::read_to_string(samples().join("graph_callrecord_get_basic_v1_2021.json")).unwrap();
        let mut record = parse_record(raw.as_bytes()).unwrap();
        let mut raw_value: serde_json::Value = serde_json::from_str(&raw).unwrap();
        raw_value["sessions"] = serde_json::json!([]);
        assert!(record.sessions.is_empty());
        let mut next = None;
        for page in
            ["graph_callrecord_sessions_list_v1_2021.json", "graph_callrecord_sessions_list_expanded_v1_2021.json"]
        {
            next = merge_sessions_page(&mut record, &mut raw_value, &std::fs::read(samples().join(page)).unwrap())
                .unwrap();
        }
        // One session per page (the docs' pages are of the same call).
        assert_eq!(record.sessions.len(), 2);
        assert_eq!(raw_value["sessions"].as_array().unwrap().len(), 2);
        assert!(next.is_some_and(|n| n.contains("$skiptoken")), "the expanded page has a next link");
        let events = map_record(&record, &raw_value.to_string(), "t").unwrap();
        assert!(events.iter().any(|e| e.event_type.as_deref() == Some("media_stream")));
    }

    #[test]
    fn call_record_list_names_the_records_to_fetch() {
        let page: Page<callrecord::CallRecord> =
            serde_json::from_slice(&std::fs::read(samples().join("graph_callrecords_list_v1_current.json")).unwrap())
                .unwrap();
        let ids: Vec<(&str, i64)> = page.value.iter().map(|r| (r.id.as_str(), r.version)).collect();
        assert_eq!(ids, [("3cf3bbc8-b21d-4f2e-bfd0-b13603ae6c65", 2), ("c3ad8c4b-4a87-4ab1-bef0-284d2f40ed9f", 2)]);
        assert!(page.next_link.is_none());
    }

    /// The constructed call-queue records (`tests/fixtures/graph/README.md`).
    #[test]
    fn call_queue_records_become_contact_center_events() {
        let dir = Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/graph");
        for file in ["callrecord_call_queue_answered.json", "callrecord_call_queue_abandoned.json"] {
            let events = record_events(&dir.join(file));
            insta::assert_snapshot!(file, lines(&events));
        }
    }

    #[test]
    fn iso_durations() {
        assert_eq!(callrecord::iso_duration_ms("PT0.016S"), Some(16.0));
        assert_eq!(callrecord::iso_duration_ms("PT1S"), Some(1000.0));
        assert_eq!(callrecord::iso_duration_ms("P1DT2H3M4.5S"), Some(93_784_500.0));
        assert_eq!(callrecord::iso_duration_ms("PT"), Some(0.0));
        assert_eq!(callrecord::iso_duration_ms("P1M"), None, "months have no fixed length");
        assert_eq!(callrecord::iso_duration_ms("16ms"), None);
    }

    #[test]
    fn direct_routing_and_pstn_logs() {
        for (prefix, log) in
            [("graph_direct_routing_calls_", logs::Log::DirectRouting), ("graph_pstn_calls_", logs::Log::Pstn)]
        {
            for path in sample_files(prefix) {
                let (rows, next) = logs::map_page(log, &std::fs::read(&path).unwrap(), "tenant-graph").unwrap();
                let out: Vec<String> = rows
                    .iter()
                    .map(|r| r.as_ref().map(|e| e.to_json()).unwrap_or_else(|(e, _)| format!("REJECTED: {e}")))
                    .collect();
                assert!(out.iter().all(|l| !l.starts_with("REJECTED")), "{out:?}");
                if name(&path).contains("direct_routing_calls_beta") {
                    assert!(next.as_deref().is_some_and(|n| n.contains("$skip=1000")), "{next:?}");
                }
                insta::assert_snapshot!(name(&path), out.join("\n"));
            }
        }
    }

    /// The subscription ccstream requests has the documented request's shape.
    #[test]
    fn subscription_request_matches_the_documented_one() {
        let doc: serde_json::Value = serde_json::from_slice(
            &std::fs::read(samples().join("graph_subscription_callrecords_request.json")).unwrap(),
        )
        .unwrap();
        let ours = ccstream_ingest::listen::graph::subscription_request(
            "/communications/callRecords",
            "https://webhook.azurewebsites.net/api/resourceNotifications",
            "https://webhook.azurewebsites.net/api/lifecycleNotifications",
            "2023-02-28T00:00:00.0000000Z",
            Some("{Secret client state}"),
        );
        assert_eq!(ours, doc);
    }

    #[test]
    fn change_notifications() {
        let n = notify::parse(&std::fs::read(samples().join("graph_notification_callrecord_created.json")).unwrap())
            .unwrap();
        assert_eq!(n.len(), 1);
        assert!(n[0].is_call_record());
        assert_eq!(n[0].resource_id().as_deref(), Some("{Call id}"));
        assert!(n[0].client_state_is("{Secret client state}"));
        assert!(!n[0].client_state_is("{Secret client statE}"));
        assert!(!n[0].client_state_is(""));
    }

    #[test]
    fn bot_notifications() {
        for path in sample_files("graph_comms_notification_") {
            let mapped = bot::map(&std::fs::read(&path).unwrap(), "tenant-bot", RECEIVED_MS).unwrap();
            let out: Vec<String> = mapped
                .iter()
                .map(|r| r.as_ref().map(|e| e.to_json()).unwrap_or_else(|(e, _)| format!("REJECTED: {e}")))
                .collect();
            assert!(out.iter().all(|l| !l.starts_with("REJECTED")), "{out:?}");
            insta::assert_snapshot!(name(&path), out.join("\n"));
        }
        // Both spellings of the sub-code, and a string code.
        let completed = bot::map(
            &std::fs::read(samples().join("graph_comms_notification_transfer_completed.json")).unwrap(),
            "t",
            0,
        )
        .unwrap();
        let failed =
            bot::map(&std::fs::read(samples().join("graph_comms_notification_transfer_failed.json")).unwrap(), "t", 0)
                .unwrap();
        let terminated =
            bot::map(&std::fs::read(samples().join("graph_comms_notification_terminated.json")).unwrap(), "t", 0)
                .unwrap();
        assert!(completed[0].as_ref().unwrap().state_reason.as_deref().unwrap().starts_with("0/7015"));
        assert!(failed[0].as_ref().unwrap().state_reason.as_deref().unwrap().starts_with("500/7000"));
        assert_eq!(terminated[0].as_ref().unwrap().state_reason.as_deref(), Some("0/"));
    }

    /// A bot's own call-creation response, which the docs print with trailing commas: not a
    /// notification, and not JSON; rejected with the parser's position.
    #[test]
    fn invalid_bot_response_is_rejected() {
        let err =
            bot::map(&std::fs::read(samples().join("graph_call_create_pstn_response_v1_2021.json")).unwrap(), "t", 0)
                .unwrap_err();
        assert!(err.to_string().contains("trailing comma"), "{err}");
    }

    #[test]
    fn presence_changes() {
        let body = br#"{"value":[{"id":"u1","availability":"Available","activity":"Available"},{"id":"u2","availability":"Busy","activity":"InACall"}]}"#;
        let mut t = presence::Tracker::default();
        let first = t.observe(&presence::parse(body).unwrap(), "t", 1_000);
        assert_eq!(first.len(), 2);
        assert!(t.observe(&presence::parse(body).unwrap(), "t", 2_000).is_empty(), "no change, no event");
        let one = br#"{"id":"u2","availability":"Available","activity":"Available"}"#;
        let changed = t.observe(&presence::parse(one).unwrap(), "t", 3_000);
        assert_eq!(changed.len(), 1);
        insta::assert_snapshot!(changed[0].to_json(), @r#"{"event_id":"graph.presence:u2:Available:Available:3000","tenant_id":"t","source":"graph.presence","call_id":null,"queue_id":null,"agent_id":"u2","event_type":"presence_changed","occurred_at":"1970-01-01T00:00:03.000Z","from_state":"Busy","to_state":"Available","state_reason":"Available"}"#);
    }
}
