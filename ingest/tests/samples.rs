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
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/samples")
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
