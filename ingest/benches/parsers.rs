//! Throughput of the source parsers (sans-IO), one core, on the public samples:
//!
//! - `cdr`: AudioCodes syslog CDR lines (signaling and media, title rows first), parsed, and
//!   parsed and mapped to canonical events;
//! - `graph`: Graph call records (the documented expanded record and the constructed
//!   call-queue record), parsed, and parsed and mapped;
//! - `vq`: RFC 6035 SIP PUBLISH messages, parsed and mapped;
//! - `acs`: an Event Grid delivery of Job Router events, parsed and mapped;
//! - `graph_misc`: a Direct Routing page, a calling-bot notification, 650 presences;
//! - `events`: 1,000 canonical JSON lines (`POST /events`), parsed and validated.
//!
//!     cargo bench -p ccstream-ingest --bench parsers

use std::path::{Path, PathBuf};

use ccstream_ingest::acs::{parse_delivery, AcsMapper, Delivery};
use ccstream_ingest::graph::callrecord::{map_record, parse_record};
use ccstream_ingest::graph::{bot, logs, presence};
use ccstream_ingest::sbc::cdr::{CdrParser, Line};
use ccstream_ingest::sbc::sip::parse_request;
use ccstream_ingest::sbc::SbcMapper;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn fixtures() -> PathBuf {
    Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// 10,000 syslog lines: the sample titles once, then the sample rows over and over with
/// their sequence numbers.
fn cdr_lines() -> Vec<String> {
    let mut lines = Vec::new();
    let mut rows = Vec::new();
    for f in ["audiocodes_cdr_sbc_signaling_odp.txt", "audiocodes_cdr_sbc_media_odp.txt"] {
        let text = std::fs::read_to_string(fixtures().join("samples").join(f)).unwrap();
        let mut it = text.lines();
        lines.push(format!("<134>[S=0] |{}", it.next().unwrap()));
        rows.extend(it.map(str::to_string));
    }
    let mut seq = 1;
    while lines.len() < 10_000 {
        for r in &rows {
            lines.push(format!("<134>[S={seq}] |{r}"));
            seq += 1;
        }
    }
    lines
}

fn bench(c: &mut Criterion) {
    let lines = cdr_lines();
    let bytes: usize = lines.iter().map(|l| l.len() + 1).sum();
    let mut g = c.benchmark_group("cdr");
    g.throughput(Throughput::Elements(lines.len() as u64));
    g.bench_function("parse", |b| {
        let mut p = CdrParser::default();
        b.iter(|| lines.iter().filter(|l| matches!(p.parse("10.0.0.1", l.as_bytes()), Ok(Line::Record(_)))).count());
    });
    g.bench_function("parse_and_map", |b| {
        let mut m = SbcMapper::new("t", Vec::new());
        b.iter(|| lines.iter().filter_map(|l| m.map_cdr_line("10.0.0.1", l.as_bytes(), 0).ok().flatten()).count());
    });
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("parse_bytes", |b| {
        let mut p = CdrParser::default();
        b.iter(|| lines.iter().filter(|l| matches!(p.parse("10.0.0.1", l.as_bytes()), Ok(Line::Record(_)))).count());
    });
    g.finish();

    let mut g = c.benchmark_group("graph");
    for (name, file) in [
        ("expanded_sample", "samples/graph_callrecord_get_expanded_v1_2021.json"),
        ("call_queue", "graph/callrecord_call_queue_answered.json"),
    ] {
        let raw = std::fs::read_to_string(fixtures().join(file)).unwrap();
        g.throughput(Throughput::Bytes(raw.len() as u64));
        g.bench_function(format!("parse/{name}"), |b| b.iter(|| parse_record(raw.as_bytes()).unwrap().sessions.len()));
        g.bench_function(format!("parse_and_map/{name}"), |b| {
            b.iter(|| map_record(&parse_record(raw.as_bytes()).unwrap(), &raw, "t").unwrap().len())
        });
    }
    g.finish();

    // The other Graph payloads: a Direct Routing page, a bot notification, a presence list.
    let mut g = c.benchmark_group("graph_misc");
    let dr = std::fs::read(fixtures().join("samples/graph_direct_routing_calls_v1_current.json")).unwrap();
    g.throughput(Throughput::Bytes(dr.len() as u64));
    g.bench_function("direct_routing_page", |b| {
        b.iter(|| logs::map_page(logs::Log::DirectRouting, &dr, "t").unwrap().0.len())
    });
    let note = std::fs::read(fixtures().join("samples/graph_comms_notification_transfer_failed.json")).unwrap();
    g.throughput(Throughput::Bytes(note.len() as u64));
    g.bench_function("bot_notification", |b| b.iter(|| bot::map(&note, "t", 0).unwrap().len()));
    let ids: Vec<String> = (0..650)
        .map(|i| {
            format!(
                r#"{{"id":"{i:08}-0000-4000-8000-000000000000","availability":"Available","activity":"Available"}}"#
            )
        })
        .collect();
    let presences = format!(r#"{{"value":[{}]}}"#, ids.join(","));
    g.throughput(Throughput::Bytes(presences.len() as u64));
    g.bench_function("presence_650", |b| {
        b.iter(|| {
            let mut t = presence::Tracker::default();
            t.observe(&presence::parse(presences.as_bytes()).unwrap(), "t", 0).len()
        })
    });
    g.finish();

    // Canonical JSON Lines (`POST /events`): parse and validate.
    let lines: String = (0..1000)
        .map(|i| format!("{{\"event_id\":\"e-{i}\",\"tenant_id\":\"t\",\"call_id\":\"c-{i}\",\"queue_id\":\"q\",\"event_type\":\"call_queued\",\"occurred_at\":\"2026-11-30T09:00:00.000Z\",\"priority\":1}}\n"))
        .collect();
    let mut g = c.benchmark_group("events");
    g.throughput(Throughput::Bytes(lines.len() as u64));
    g.bench_function("jsonl_1000", |b| {
        b.iter(|| {
            lines.lines().filter(|l| ccstream_schemas::Event::from_json(l).is_ok_and(|e| e.validate().is_ok())).count()
        })
    });
    g.finish();

    let publish = std::fs::read(fixtures().join("samples/vq_rtcpxr_snom821_publish.txt")).unwrap();
    let mut g = c.benchmark_group("vq");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse_and_map", |b| {
        let mut m = SbcMapper::new("t", Vec::new());
        b.iter(|| m.map_vq_report("10.0.0.1", parse_request(&publish).unwrap().body, 0).unwrap())
    });
    g.finish();

    let events: Vec<String> = [
        "RouterJobQueued",
        "RouterWorkerOfferIssued",
        "RouterWorkerOfferAccepted",
        "RouterJobCompleted",
        "RouterJobClosed",
    ]
    .iter()
    .map(|n| std::fs::read_to_string(fixtures().join(format!("samples/acs_jobrouter_{n}.json"))).unwrap())
    .collect();
    let delivery = format!("[{}]", events.join(","));
    let mapper = AcsMapper::new("t", Vec::new());
    let mut g = c.benchmark_group("acs");
    g.throughput(Throughput::Elements(5));
    g.bench_function("parse_and_map", |b| {
        b.iter(|| match parse_delivery(delivery.as_bytes()).unwrap() {
            Delivery::Events(e) => e.iter().filter(|e| mapper.map(e).is_ok()).count(),
            Delivery::Validation { .. } => 0,
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
