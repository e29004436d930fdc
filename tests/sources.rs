//! End to end through the real protocols: `ccstream run` with every source listener, fed
//! over UDP and TCP syslog, SIP over UDP and TCP, and HTTP webhooks with their handshakes;
//! then the tables, views, dead letters and `/metrics` are checked through `ccstream sql`
//! and a scrape.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::run::{addr_of, http, wait_for_rows, Run};
use common::sql_csv;

const SECRET: &str = "s3cret-webhook-0123456789";

fn sample(name: &str) -> PathBuf {
    Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
        .join("ingest/tests/fixtures/samples")
        .join(name)
}

fn post(addr: SocketAddr, target: &str, body: &str) -> (u16, String) {
    http(
        addr,
        "POST",
        target,
        &[("Authorization", &format!("Bearer {SECRET}")), ("Content-Type", "application/json")],
        body.as_bytes(),
    )
}

/// One Event Grid Job Router event.
fn router_event(id: &str, name: &str, time: &str, data: &str) -> String {
    format!(
        r#"{{"id":"{id}","topic":"/subscriptions/s/resourceGroups/g/providers/Microsoft.Communication/communicationServices/fabrikam-acs","subject":"job/x","data":{data},"eventType":"Microsoft.Communication.{name}","dataVersion":"1.0","metadataVersion":"1","eventTime":"{time}"}}"#
    )
}

/// The SIP PUBLISH sample with another report `CallID` (same length, so Content-Length holds).
fn publish_with_call_id(call_id: &str) -> Vec<u8> {
    let raw = std::fs::read_to_string(sample("vq_rtcpxr_snom821_publish.txt")).unwrap();
    assert_eq!(call_id.len(), "825962570309-8ds5sl3mca99".len());
    raw.replace("825962570309-8ds5sl3mca99", call_id).into_bytes()
}

fn sip_udp(addr: SocketAddr, msg: &[u8]) -> String {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    sock.send_to(msg, addr).unwrap();
    let mut buf = vec![0u8; 65_536];
    let (n, _) = sock.recv_from(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n]).to_string()
}

#[test]
fn every_source_through_its_protocol() {
    let mut run = Run::start(&format!(
        r#"metrics_listen = "127.0.0.1:0"

[sources]
default_tenant = "tenant-default"
syslog_udp = "127.0.0.1:0"
syslog_tcp = "127.0.0.1:0"
sip_udp = "127.0.0.1:0"
sip_tcp = "127.0.0.1:0"
http = "127.0.0.1:0"
secret = "{SECRET}"
max_body_bytes = 65536
[[sources.sbc_tenants]]
tenant = "tenant-fr"
number_prefix = "+33"
[[sources.acs_tenants]]
tenant = "fabrikam"
resource = "fabrikam-acs"
"#
    ));
    let addrs = run.addrs.clone();
    let addr = |name: &str| addr_of(&addrs, name);
    let metrics_addr = run.metrics.unwrap();
    let data = run.data.clone();

    // --- SBC signaling CDRs over UDP syslog, one message per datagram (title row first).
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let signaling = std::fs::read_to_string(sample("audiocodes_cdr_sbc_signaling_odp.txt")).unwrap();
    for (i, line) in signaling.lines().enumerate() {
        udp.send_to(format!("<134>[S={i}] |{line}").as_bytes(), addr("syslog_udp")).unwrap();
    }
    // --- SBC media CDRs over TCP syslog: octet-counted, then one LF-framed message.
    let media = std::fs::read_to_string(sample("audiocodes_cdr_sbc_media_odp.txt")).unwrap();
    let mut tcp = TcpStream::connect(addr("syslog_tcp")).unwrap();
    let lines: Vec<&str> = media.lines().collect();
    for (i, line) in lines[..lines.len() - 1].iter().enumerate() {
        let msg = format!("<134>[S={}] |{line}", 100 + i);
        tcp.write_all(format!("{} {msg}", msg.len()).as_bytes()).unwrap();
    }
    tcp.write_all(format!("<134>[S=200] |{}\n", lines[lines.len() - 1]).as_bytes()).unwrap();
    // A garbage line on the same stream: dead-lettered, the stream goes on.
    tcp.write_all(b"<134>[S=201] |NOT_A_CDR |x\n").unwrap();
    drop(tcp);

    // --- RFC 6035 over SIP: UDP and TCP; 200 OK once durable, 400 to garbage.
    let reply = sip_udp(addr("sip_udp"), &std::fs::read(sample("vq_rtcpxr_snom821_publish.txt")).unwrap());
    assert!(reply.starts_with("SIP/2.0 200 OK\r\n"), "{reply}");
    assert!(
        reply.contains("Call-ID: 89596257635d-ip18q8n0lp1b\r\n") && reply.contains("CSeq: 2 PUBLISH\r\n"),
        "{reply}"
    );
    let reply = sip_udp(addr("sip_udp"), b"hello, this is not SIP");
    assert!(reply.starts_with("SIP/2.0 400"), "{reply}");
    let mut sip_tcp = TcpStream::connect(addr("sip_tcp")).unwrap();
    sip_tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    sip_tcp.write_all(&publish_with_call_id("tcp-report-00000000000001")).unwrap();
    let mut buf = vec![0u8; 4096];
    let n = sip_tcp.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"SIP/2.0 200 OK\r\n"), "{}", String::from_utf8_lossy(&buf[..n]));

    // --- ACS Event Grid: the handshakes, then a Job Router life cycle and an abandon.
    let http_addr = addr("http");
    let mut s = TcpStream::connect(http_addr).unwrap();
    s.write_all(
        format!(
            "OPTIONS /acs/callautomation?code={SECRET} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
             WebHook-Request-Origin: eventgrid.azure.net\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.to_ascii_lowercase().contains("webhook-allowed-origin: eventgrid.azure.net\r\n"), "{reply}");
    let validation = std::fs::read_to_string(sample("eventgrid_subscription_validation_event.json")).unwrap();
    let (status, body) = post(http_addr, "/acs/eventgrid", &validation);
    assert_eq!((status, body.as_str()), (200, r#"{"validationResponse":"512d38b6-c7b8-40c8-89fe-f46f9e9622b6"}"#));
    let job = r#""jobId":"job-1","channelReference":"call-1","channelId":"voice","queueId":"q-sales""#;
    let life = [
        router_event("e1", "RouterJobQueued", "2026-11-30T10:00:00Z", &format!(r#"{{{job},"priority":1}}"#)),
        router_event(
            "e2",
            "RouterWorkerOfferIssued",
            "2026-11-30T10:00:05Z",
            &format!(r#"{{{job},"workerId":"agent-7","offerId":"o1"}}"#),
        ),
        router_event(
            "e3",
            "RouterWorkerOfferAccepted",
            "2026-11-30T10:00:12Z",
            &format!(r#"{{{job},"workerId":"agent-7","offerId":"o1","assignmentId":"a1"}}"#),
        ),
        router_event(
            "e4",
            "RouterJobCompleted",
            "2026-11-30T10:01:12Z",
            &format!(r#"{{{job},"workerId":"agent-7","assignmentId":"a1"}}"#),
        ),
        router_event(
            "e5",
            "RouterJobClosed",
            "2026-11-30T10:01:40Z",
            &format!(r#"{{{job},"workerId":"agent-7","assignmentId":"a1","dispositionCode":"resolved"}}"#),
        ),
    ];
    // Delivered out of order and in two POSTs, one of them twice (Event Grid retries).
    let (status, body) = post(http_addr, "/acs/eventgrid", &format!("[{},{},{}]", life[3], life[0], life[4]));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""accepted":3"#), "{body}");
    for _ in 0..2 {
        assert_eq!(post(http_addr, "/acs/eventgrid", &format!("[{},{}]", life[1], life[2])).0, 200);
    }
    let abandon = r#""jobId":"job-2","channelReference":"call-2","channelId":"voice","queueId":"q-sales""#;
    let (status, _) = post(
        http_addr,
        "/acs/eventgrid",
        &format!(
            "[{},{}]",
            router_event("e6", "RouterJobQueued", "2026-11-30T10:02:00Z", &format!(r#"{{{abandon},"priority":1}}"#)),
            router_event(
                "e7",
                "RouterJobCancelled",
                "2026-11-30T10:02:30Z",
                &format!(r#"{{{abandon},"dispositionCode":"hangup"}}"#)
            ),
        ),
    );
    assert_eq!(status, 200);
    // Call Automation (CloudEvents) and canonical JSONL.
    let ca = std::fs::read_to_string(sample("acs_callautomation_CallConnected.json")).unwrap();
    assert_eq!(post(http_addr, "/acs/callautomation", &ca).0, 200);
    let jsonl = concat!(
        r#"{"event_id":"posted-1","tenant_id":"t-post","agent_id":"agent-9","event_type":"agent_state_changed","occurred_at":"2026-11-30T09:00:00Z","to_state":"available"}"#,
        "\n",
        r#"{"event_id":"posted-3","tenant_id":"t-post","agent_id":"agent-9","event_type":"agent_state_changed","occurred_at":"2026-11-30T09:30:00.250Z","to_state":"break"}"#,
        "\n",
        r#"{"event_id":"posted-2","tenant_id":"t-post","event_type":"call_queued","occurred_at":"2026-11-30T09:00:00Z"}"#,
        "\n"
    );
    let (status, body) = post(http_addr, "/events", jsonl);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""accepted":2"#) && body.contains("needs a call_id"), "{body}");

    // --- Security: none of these reach the tables.
    let evil = router_event(
        "evil",
        "RouterJobQueued",
        "2026-11-30T10:00:00Z",
        r#"{"jobId":"job-evil","queueId":"q","priority":1}"#,
    );
    let evil = format!("[{evil}]");
    let no_secret = http(http_addr, "POST", "/acs/eventgrid", &[], evil.as_bytes());
    assert_eq!(no_secret.0, 401, "{}", no_secret.1);
    let wrong = http(http_addr, "POST", "/acs/eventgrid?code=guess", &[], evil.as_bytes());
    assert_eq!(wrong.0, 403, "{}", wrong.1);
    let big = format!("[{}]", vec![evil.trim_matches(['[', ']']); 1000].join(","));
    assert!(big.len() > 65_536);
    assert_eq!(post(http_addr, "/acs/eventgrid", &big).0, 413);
    assert_eq!(post(http_addr, "/acs/eventgrid", r#"[{"id": "job-evil", "#).0, 400);
    assert_eq!(post(http_addr, "/acs/eventgrid", r#"{"hello":"job-evil"}"#).0, 400);
    // The query-string secret (what Event Grid subscriptions use) is accepted.
    let ok = http(http_addr, "POST", &format!("/acs/eventgrid?code={SECRET}"), &[], b"[]");
    assert_eq!(ok.0, 200, "{}", ok.1);

    // --- The tables.
    wait_for_rows(
        &data,
        "SELECT call_id, tenant_id, queue_id, answered, abandoned, wait_s, talk_s, acw_s, handle_s, legs \
         FROM call_facts ORDER BY call_id",
        "job-1,fabrikam,q-sales,true,false,12.0,60.0,28.0,88.0,1\njob-2,fabrikam,q-sales,false,true,30.0,,,,0",
        &mut run.child,
    );
    let legs = sql_csv(&data, "SELECT call_id, agent_id, talk_ms, acw_ms, handle_ms FROM agent_legs");
    assert_eq!(legs.lines().nth(1), Some("job-1,agent-7,60000,28000,88000"), "{legs}");
    wait_for_rows(
        &data,
        "SELECT session_id, sip_call_id, tenant_id, leg_id, last_report, duration_s FROM sbc_legs \
         WHERE session_id = 'c62532:22:625' ORDER BY leg_id",
        "c62532:22:625,0f522c2a55774a12,tenant-fr,1,CALL_CONNECT,0\nc62532:22:625,4341598405122022185752@10.0.2.11,tenant-fr,2,CALL_END,30",
        &mut run.child,
    );
    wait_for_rows(
        &data,
        "SELECT source, sip_call_id, report, jitter_ms, classified, poor, round(mos, 4) FROM media_streams \
         WHERE source = 'sbc.vq_rtcpxr' OR report = 'MEDIA_END' ORDER BY source, sip_call_id",
        "sbc.audiocodes,14575679645122022191045@10.0.2.11,MEDIA_END,4.0,true,false,4.4299\n\
         sbc.audiocodes,19266924982482023124959@10.245.172.231,MEDIA_END,0.0,true,false,4.4333\n\
         sbc.audiocodes,2596324121112023143842@groupebel-sbc01.teams-dr.nxocloudms.com,MEDIA_END,,true,false,\n\
         sbc.vq_rtcpxr,825962570309-8ds5sl3mca99,session,11.0,true,false,4.2432\n\
         sbc.vq_rtcpxr,tcp-report-00000000000001,session,11.0,true,false,4.2432",
        &mut run.child,
    );
    wait_for_rows(
        &data,
        "SELECT source, to_state, count(*) FROM events WHERE event_type IN ('call_state', 'agent_state_changed') \
         GROUP BY source, to_state ORDER BY source, to_state",
        "acs.callautomation,CallConnected,1\nhttp.events,available,1\nhttp.events,break,1",
        &mut run.child,
    );
    // Time in state: available from 09:00:00 to 09:30:00.250 (the break is still open).
    let time = sql_csv(
        &data,
        "SELECT agent_id, state, day, periods, seconds FROM agent_state_time WHERE source = 'http.events'",
    );
    assert_eq!(time.lines().skip(1).collect::<Vec<_>>(), ["agent-9,available,2026-11-30,1,1800.25"]);
    // Rejected input is dead-lettered with its reason; none of it is an event. Requests
    // without a valid secret are only counted (below), never stored.
    wait_for_rows(
        &data,
        "SELECT source, count(*) FROM dead_letters GROUP BY source ORDER BY source",
        "acs.jobrouter,3\nhttp.events,1\nsbc.audiocodes,1\nsbc.vq_rtcpxr,1",
        &mut run.child,
    );
    let reasons = sql_csv(&data, "SELECT reason FROM dead_letters WHERE source = 'acs.jobrouter' ORDER BY reason");
    for want in ["bytes exceeds 65536", "no eventType/type", "not valid JSON"] {
        assert!(reasons.contains(want), "no dead letter saying {want:?}: {reasons}");
    }
    assert!(!reasons.contains("webhook secret"), "{reasons}");
    let evil_events = sql_csv(&data, "SELECT count(*) AS n FROM events WHERE call_id = 'job-evil'");
    assert_eq!(evil_events.lines().nth(1), Some("0"));
    let dups = sql_csv(&data, "SELECT count(*) AS n FROM events WHERE call_id = 'job-1'");
    assert_eq!(dups.lines().nth(1), Some("5"), "the retried delivery is one set of events");

    // --- /metrics: per-source counters beside the processor's.
    let (status, metrics) = http(metrics_addr, "GET", "/metrics", &[], b"");
    assert_eq!(status, 200);
    for want in [
        r#"ccstream_ingest_rejected_total{reason="unauthorized",source="acs.jobrouter"} 2"#,
        r#"ccstream_ingest_rejected_total{reason="too_large",source="acs.jobrouter"} 1"#,
        r#"ccstream_ingest_rejected_total{reason="malformed",source="sbc.vq_rtcpxr"} 1"#,
        r#"ccstream_ingest_accepted_events_total{source="sbc.vq_rtcpxr"} 2"#,
        r#"ccstream_ingest_last_seen_timestamp_seconds{source="sbc.audiocodes"}"#,
        r#"ccstream_ingest_received_bytes_total{source="http.events"}"#,
        "ccstream_processor_records_total",
    ] {
        assert!(metrics.contains(want), "/metrics lacks {want}:\n{metrics}");
    }
}

/// A fake Microsoft Graph (and Entra token endpoint) speaking real HTTP: serves the
/// constructed call-queue records (the answered one split over two session pages, after a
/// 429), a catch-up list, Direct Routing pages, presence, and records subscriptions.
mod fake_graph {
    use std::sync::{Arc, Mutex};

    use axum::extract::{Path as UrlPath, Request, State};
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::{IntoResponse, Response};
    use axum::routing::{get, patch, post};
    use axum::Router;
    use serde_json::{json, Value};

    pub(crate) const TOKEN: &str = "fake-graph-token";
    pub(crate) const ANSWERED: &str = "9f3d2a10-0000-4000-8000-00000000c001";
    pub(crate) const ABANDONED: &str = "9f3d2a10-0000-4000-8000-00000000c002";
    /// A user whose presence only a change notification asks for (not polled).
    pub(crate) const NOTIFIED: &str = "c0000000-0000-4000-8000-00000000000c";

    #[derive(Debug, Default)]
    pub(crate) struct Seen {
        pub(crate) base: String,
        pub(crate) token_requests: usize,
        pub(crate) record_gets: Vec<String>,
        pub(crate) session_pages: usize,
        pub(crate) subscriptions: Vec<Value>,
        pub(crate) presence_polls: usize,
        pub(crate) dr_pages: usize,
        pub(crate) dr_failures: usize,
        pub(crate) patches: usize,
        pub(crate) lists: usize,
    }

    type Shared = Arc<Mutex<Seen>>;

    fn fixture(name: &str) -> Value {
        let p = std::path::Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
            .join("ingest/tests/fixtures")
            .join(name);
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    }

    fn authorized(h: &HeaderMap) -> bool {
        h.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {TOKEN}"))
    }

    fn json_response(status: StatusCode, v: Value) -> Response {
        (status, [("content-type", "application/json")], v.to_string()).into_response()
    }

    async fn token(State(s): State<Shared>, body: String) -> Response {
        assert!(body.contains("grant_type=client_credentials") && body.contains("client_secret=app-secret"), "{body}");
        s.lock().unwrap().token_requests += 1;
        json_response(StatusCode::OK, json!({"access_token": TOKEN, "expires_in": 3600, "token_type": "Bearer"}))
    }

    /// `callRecords/{id}`, and the functions that share the path (`getDirectRoutingCalls(…)`).
    async fn record(State(s): State<Shared>, UrlPath(id): UrlPath<String>, req: Request) -> Response {
        if !authorized(req.headers()) {
            return StatusCode::UNAUTHORIZED.into_response();
        }
        let base = s.lock().unwrap().base.clone();
        if id.starts_with("getDirectRoutingCalls(") {
            let mut page = fixture("samples/graph_direct_routing_calls_v1_current.json");
            let mut seen = s.lock().unwrap();
            if seen.dr_failures == 0 {
                seen.dr_failures += 1;
                return (StatusCode::SERVICE_UNAVAILABLE, "try again").into_response();
            }
            seen.dr_pages += 1;
            if req.uri().query().is_some_and(|q| q.contains("$skip")) {
                // The second page: the other sample's rows, no further link.
                let other = fixture("samples/graph_direct_routing_calls_beta_2021.json");
                page["value"] = other["value"].clone();
                page["value"][0]["id"] = json!("0e8bba57-0000-4000-8000-00000000d002");
            // (the samples share one id)
            } else {
                page["@odata.nextLink"] = json!(format!("{base}{}?$skip=1000", req.uri().path()));
            }
            return json_response(StatusCode::OK, page);
        }
        let first_try = {
            let mut seen = s.lock().unwrap();
            seen.record_gets.push(id.clone());
            id == ANSWERED && seen.record_gets.iter().filter(|g| **g == ANSWERED).count() == 1
        };
        if first_try {
            return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")], "throttled").into_response();
        }
        let mut r = match id.as_str() {
            ANSWERED => answered(&s),
            ABANDONED => fixture("graph/callrecord_call_queue_abandoned.json"),
            _ => return json_response(StatusCode::NOT_FOUND, json!({"error": {"code": "NotFound"}})),
        };
        if id == ANSWERED {
            // Only the first session inline; the rest on the next page.
            let sessions = r["sessions"].as_array().unwrap().clone();
            r["sessions"] = json!([sessions[0]]);
            r["sessions@odata.nextLink"] =
                json!(format!("{base}/v1.0/communications/callRecords/{id}/sessions?$skiptoken=page2"));
        }
        json_response(StatusCode::OK, r)
    }

    /// The answered record: version 2 at first; from the third fetch on, version 3, in which
    /// the client's late telemetry changed one stream's jitter.
    fn answered(s: &Shared) -> Value {
        let mut r = fixture("graph/callrecord_call_queue_answered.json");
        if s.lock().unwrap().record_gets.iter().filter(|g| *g == ANSWERED).count() >= 3 {
            r["version"] = json!(3);
            r["sessions"][2]["segments"][0]["media"][0]["streams"][1]["averageJitter"] = json!("PT0.020S");
        }
        r
    }

    async fn sessions(State(s): State<Shared>, UrlPath(id): UrlPath<String>, headers: HeaderMap) -> Response {
        assert!(authorized(&headers));
        s.lock().unwrap().session_pages += 1;
        let r = answered(&s);
        assert_eq!(id, ANSWERED);
        let rest: Vec<Value> = r["sessions"].as_array().unwrap()[1..].to_vec();
        json_response(StatusCode::OK, json!({ "value": rest }))
    }

    /// The catch-up list: the abandoned record (never notified).
    async fn list(State(s): State<Shared>, headers: HeaderMap, req: Request) -> Response {
        assert!(authorized(&headers));
        s.lock().unwrap().lists += 1;
        assert!(req.uri().query().is_some_and(|q| q.contains("startDateTime")), "{:?}", req.uri());
        let r = fixture("graph/callrecord_call_queue_abandoned.json");
        json_response(StatusCode::OK, json!({ "value": [{ "id": r["id"], "version": r["version"] }] }))
    }

    async fn subscribe(State(s): State<Shared>, headers: HeaderMap, body: String) -> Response {
        assert!(authorized(&headers));
        let v: Value = serde_json::from_str(&body).unwrap();
        let mut seen = s.lock().unwrap();
        seen.subscriptions.push(v.clone());
        let id = format!("sub-{}", seen.subscriptions.len());
        json_response(StatusCode::CREATED, json!({ "id": id, "expirationDateTime": v["expirationDateTime"] }))
    }

    async fn presence(State(s): State<Shared>, headers: HeaderMap, body: String) -> Response {
        assert!(authorized(&headers));
        let v: Value = serde_json::from_str(&body).unwrap();
        // Polls of the configured agent: Available the first time, Busy after.
        let polled = v["ids"].as_array().unwrap().iter().any(|id| id.as_str() != Some(NOTIFIED));
        let polls = {
            let mut seen = s.lock().unwrap();
            seen.presence_polls += usize::from(polled);
            seen.presence_polls
        };
        let (availability, activity) = if polls == 1 { ("Available", "Available") } else { ("Busy", "InACall") };
        let value: Vec<Value> = v["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|id| match id.as_str() {
                Some(NOTIFIED) => json!({ "id": id, "availability": "DoNotDisturb", "activity": "Presenting" }),
                _ => json!({ "id": id, "availability": availability, "activity": activity }),
            })
            .collect();
        json_response(StatusCode::OK, json!({ "value": value }))
    }

    /// Serves on a free port in a thread of its own; returns the base URL and what it saw.
    pub(crate) fn start() -> (String, Shared) {
        let seen: Shared = Arc::default();
        let (tx, rx) = std::sync::mpsc::channel();
        let state = Arc::clone(&seen);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let base = format!("http://{}", listener.local_addr().unwrap());
                state.lock().unwrap().base = base.clone();
                let app = Router::new()
                    .route("/{tenant}/oauth2/v2.0/token", post(token))
                    .route("/v1.0/communications/callRecords", get(list))
                    .route("/v1.0/communications/callRecords/{id}", get(record))
                    .route("/v1.0/communications/callRecords/{id}/sessions", get(sessions))
                    .route("/v1.0/subscriptions", post(subscribe))
                    .route(
                        "/v1.0/subscriptions/{id}",
                        patch(|State(s): State<Shared>| async move {
                            s.lock().unwrap().patches += 1;
                            StatusCode::OK
                        }),
                    )
                    .route("/v1.0/communications/getPresencesByUserId", post(presence))
                    .with_state(state);
                tx.send(base).unwrap();
                axum::serve(listener, app).await.unwrap();
            });
        });
        (rx.recv().unwrap(), seen)
    }
}

#[test]
fn graph_through_a_fake_graph_server() {
    let (graph, seen) = fake_graph::start();
    let entra = "11111111-2222-4333-8444-555555555555";
    let mut run = Run::start(&format!(
        r#"
[sources]
http = "127.0.0.1:0"
secret = "{SECRET}"

[[sources.graph]]
tenant = "contoso"
entra_tenant_id = "{entra}"
client_id = "app-id"
client_secret = "app-secret"
authority = "{graph}"
graph_url = "{graph}"
notification_url = "https://ccstream.example.test"
client_state = "state-42-7f3a9c1e5b"
direct_routing_poll_s = 3600
presence_users = ["b0000000-0000-4000-8000-00000000000b", "c0000000-0000-4000-8000-00000000000c"]
presence_poll_s = 1
"#
    ));
    let http_addr = run.addr("http");
    let data = run.data.clone();

    // The validation handshake: the decoded token, as text, at once.
    let token =
        "Validation%3A%20Testing%20client%20application%20reachability%20for%20subscription%20Request-Id%3A%2025";
    let (status, body) =
        http(http_addr, "POST", &format!("/graph/notifications?code={SECRET}&validationToken={token}"), &[], b"");
    assert_eq!(
        (status, body.as_str()),
        (200, "Validation: Testing client application reachability for subscription Request-Id: 25")
    );
    // A notification for the answered record, and a forged one.
    let note = |state: &str| {
        format!(
            r##"{{"value":[{{"subscriptionId":"sub-1","clientState":"{state}","changeType":"created","resource":"communications/callRecords/{id}","subscriptionExpirationDateTime":"2026-12-02T00:00:00Z","resourceData":{{"@odata.type":"#Microsoft.Graph.callRecord","@odata.id":"communications/callRecords/{id}","id":"{id}"}},"tenantId":"{entra}"}}]}}"##,
            id = fake_graph::ANSWERED
        )
    };
    let notify =
        |body: &str| http(http_addr, "POST", &format!("/graph/notifications?code={SECRET}"), &[], body.as_bytes());
    let forged = notify(&note("guess"));
    assert_eq!(forged.0, 403, "{}", forged.1);
    let ok = notify(&note("state-42-7f3a9c1e5b"));
    assert_eq!(ok.0, 202, "{}", ok.1);
    // A record id that is not a GUID (a path out of /callRecords) is never fetched.
    let traversal = note("state-42-7f3a9c1e5b").replace(fake_graph::ANSWERED, "../../../users");
    assert_eq!(notify(&traversal), (202, r#"{"queued":0}"#.to_string()));
    // Lifecycle notifications: renew the subscriptions; list what was missed.
    let lifecycle = |event: &str| {
        format!(
            r#"{{"value":[{{"subscriptionId":"sub-1","clientState":"state-42-7f3a9c1e5b","lifecycleEvent":"{event}","resource":"communications/callRecords","tenantId":"{entra}"}}]}}"#
        )
    };
    for event in ["reauthorizationRequired", "missed"] {
        let r = http(http_addr, "POST", &format!("/graph/lifecycle?code={SECRET}"), &[], lifecycle(event).as_bytes());
        assert_eq!(r.0, 202, "{}", r.1);
    }
    // A presence notification (basic: the id only) makes ccstream fetch that presence.
    let token_reply =
        http(http_addr, "POST", &format!("/graph/presence?code={SECRET}&validationToken=abc%2B1"), &[], b"");
    assert_eq!(token_reply, (200, "abc+1".to_string()));
    let presence_note = format!(
        r##"{{"value":[{{"subscriptionId":"sub-2","clientState":"state-42-7f3a9c1e5b","changeType":"updated","resource":"communications/presences('{user}')","resourceData":{{"@odata.type":"#Microsoft.Graph.presence","@odata.id":"users/{user}/presence","id":"{user}"}},"tenantId":"{entra}"}}]}}"##,
        user = fake_graph::NOTIFIED
    );
    let r = http(http_addr, "POST", &format!("/graph/presence?code={SECRET}"), &[], presence_note.as_bytes());
    assert_eq!(r.0, 202, "{}", r.1);
    // One of a user not in presence_users: counted, neither fetched nor kept.
    let stranger = presence_note.replace(fake_graph::NOTIFIED, "d0000000-0000-4000-8000-00000000000d");
    let r = http(http_addr, "POST", &format!("/graph/presence?code={SECRET}"), &[], stranger.as_bytes());
    assert_eq!(r.0, 202, "{}", r.1);
    // Calling-bot notifications, forwarded by the bot service.
    for file in ["graph_comms_notification_incoming.json", "graph_comms_notification_established.json"] {
        let body = std::fs::read(sample(file)).unwrap();
        let (status, reply) = http(http_addr, "POST", "/graph/calling", &[("x-ccstream-secret", SECRET)], &body);
        assert_eq!(status, 202, "{reply}");
    }

    wait_for_rows(
        &data,
        "SELECT call_id, tenant_id, queue_id, answered, abandoned, wait_s, talk_s, legs FROM call_facts ORDER BY call_id",
        &format!(
            "{},contoso,cq-sales-ra,true,false,52.0,338.0,1\n{},contoso,cq-sales-ra,false,true,65.0,,0",
            fake_graph::ANSWERED,
            fake_graph::ABANDONED
        ),
        &mut run.child,
    );
    wait_for_rows(
        &data,
        "SELECT source, count(*) FROM events WHERE source LIKE 'graph.%' AND event_type <> 'presence_changed' \
         GROUP BY source ORDER BY source",
        "graph.calling,2\ngraph.callrecord,15\ngraph.directrouting,2",
        &mut run.child,
    );
    wait_for_rows(
        &data,
        "SELECT agent_id, from_state, to_state, state_reason FROM events WHERE event_type = 'presence_changed' ORDER BY agent_id, occurred_at",
        "b0000000-0000-4000-8000-00000000000b,,Available,Available\nb0000000-0000-4000-8000-00000000000b,Available,Busy,InACall\n\
         c0000000-0000-4000-8000-00000000000c,,DoNotDisturb,Presenting",
        &mut run.child,
    );
    // Occupancy: the call's busy time (the fixture's day) and the presence's idle time (the
    // day the test runs): the same row only on the fixture's day, hence sums, and each
    // day's occupancy checked against its own busy and idle time.
    let occupancy = sql_csv(
        &data,
        "SELECT sum(busy_s), sum(available_s) > 0, \
                bool_and(occupancy IS NULL OR abs(occupancy - busy_s / (busy_s + available_s)) < 1e-9), \
                bool_and(occupancy IS NULL OR occupancy BETWEEN 0 AND 1) \
         FROM agent_occupancy WHERE agent_id = 'b0000000-0000-4000-8000-00000000000b'",
    );
    assert_eq!(occupancy.lines().nth(1), Some("338.0,true,true,true"), "{occupancy}");
    let streams = sql_csv(
        &data,
        "SELECT agent_id, jitter_ms, poor FROM media_streams WHERE source = 'graph.callrecord' ORDER BY jitter_ms",
    );
    assert_eq!(
        streams.lines().skip(1).collect::<Vec<_>>(),
        ["b0000000-0000-4000-8000-00000000000b,12.0,false", "b0000000-0000-4000-8000-00000000000b,35.0,true"]
    );
    let outcomes = sql_csv(&data, "SELECT queue_id, json_get(payload, 'outcome') AS outcome FROM events WHERE event_type = 'queue_result' ORDER BY outcome");
    assert_eq!(outcomes.lines().skip(1).collect::<Vec<_>>(), ["cq-sales-ra,abandoned", "cq-sales-ra,answered"]);
    // A newer version of the record re-emits: its streams replace the old ones in the view,
    // the unchanged call events are duplicates. The same version again adds nothing.
    for _ in 0..2 {
        let r = notify(&note("state-42-7f3a9c1e5b"));
        assert_eq!(r.0, 202, "{}", r.1);
    }
    wait_for_rows(
        &data,
        "SELECT agent_id, jitter_ms, poor, json_get(payload, 'version') FROM media_streams WHERE source = 'graph.callrecord' ORDER BY jitter_ms",
        "b0000000-0000-4000-8000-00000000000b,12.0,false,3\nb0000000-0000-4000-8000-00000000000b,20.0,false,3",
        &mut run.child,
    );
    let facts =
        sql_csv(&data, &format!("SELECT wait_s, talk_s FROM call_facts WHERE call_id = '{}'", fake_graph::ANSWERED));
    assert_eq!(facts.lines().nth(1), Some("52.0,338.0"), "the re-emitted call events changed nothing");
    let dead = sql_csv(&data, "SELECT source, reason FROM dead_letters ORDER BY reason");
    assert_eq!(
        dead.lines().skip(1).collect::<Vec<_>>(),
        [
            "graph.callrecord,\"call record id \"\"../../../users\"\" is not a GUID\"",
            "graph.callrecord,wrong clientState"
        ]
    );

    let seen = seen.lock().unwrap();
    assert_eq!(
        seen.record_gets.iter().filter(|g| *g == fake_graph::ANSWERED).count(),
        4,
        "the 429 was retried, then versions 2, 3 and 3 again were fetched: {:?}",
        seen.record_gets
    );
    assert_eq!(seen.session_pages, 2, "the sessions nextLink was followed (versions 2 and 3; 3 again was skipped)");
    assert_eq!(seen.dr_pages, 2, "the Direct Routing $skip page was followed");
    assert_eq!(seen.dr_failures, 1, "after a 503, retried");
    assert!(seen.patches >= 1, "reauthorizationRequired renewed a subscription");
    assert!(seen.lists >= 2, "start and `missed` each listed records: {}", seen.lists);
    assert!(seen.token_requests >= 1);
    let sub = seen
        .subscriptions
        .iter()
        .find(|s| s["resource"] == "/communications/callRecords")
        .expect("a call-record subscription");
    assert_eq!(sub["notificationUrl"], format!("https://ccstream.example.test/graph/notifications?code={SECRET}"));
    assert_eq!(sub["lifecycleNotificationUrl"], format!("https://ccstream.example.test/graph/lifecycle?code={SECRET}"));
    assert_eq!(sub["clientState"], "state-42-7f3a9c1e5b");
    assert_eq!(sub["changeType"], "updated");
    assert!(seen
        .subscriptions
        .iter()
        .any(|s| s["resource"].as_str().unwrap().starts_with("/communications/presences?$filter=id in (")));
}

/// CDR files (the sample syslog capture and the invalid lines) through `ingest cdr` and a
/// processor: legs in `sbc_legs`, rejected lines in `dead_letters` with file and line.
#[test]
fn cdr_files_through_ingest_cdr() {
    let dir = tempfile::tempdir().unwrap();
    let log = format!("file://{}", dir.path().join("log").display());
    let data = dir.path().join("data");
    let capture = sample("audiocodes_cdr_syslog_odp.txt");
    let invalid = sample("audiocodes_cdr_invalid_lines_odp.txt");
    common::ccstream(&["ingest", "cdr", "--log", &log, capture.to_str().unwrap(), invalid.to_str().unwrap()]);
    common::ccstream(&["process", "--log", &log, "--data", data.to_str().unwrap(), "--until-caught-up"]);
    let legs =
        sql_csv(&data, "SELECT session_id, leg_id, last_report, duration_s FROM sbc_legs ORDER BY session_id, leg_id");
    assert_eq!(
        legs.lines().skip(1).collect::<Vec<_>>(),
        ["a31055:229:69538346,2,CALL_START,0", "c62532:22:625,1,CALL_CONNECT,0", "c62532:22:625,2,CALL_END,30"]
    );
    let dead = sql_csv(&data, "SELECT line, reason FROM dead_letters ORDER BY line");
    let dead: Vec<&str> = dead.lines().skip(1).collect();
    assert_eq!(dead.len(), 6, "{dead:?}");
    assert!(dead[0].starts_with("1,\"unknown CDR report type"), "{dead:?}");
}

/// The webhooks over HTTPS (`tls_cert`, `tls_key`), with curl as the client: the Event Grid
/// handshake and canonical events arrive; plain HTTP to the TLS port gets no answer.
#[test]
fn webhooks_over_https() {
    let tls = Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tls");
    let mut run = Run::start(&format!(
        "[sources]\nhttp = \"127.0.0.1:0\"\nsecret = \"{SECRET}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        tls.join("cert.pem").display(),
        tls.join("key.pem").display()
    ));
    let addr = run.addr("http");
    let curl = |path: &str, body: &str| -> String {
        let out = Command::new("curl")
            .args([
                "-sS",
                "--cacert",
                tls.join("cert.pem").to_str().unwrap(),
                "-H",
                &format!("Authorization: Bearer {SECRET}"),
            ])
            .args(["--data-binary", body, &format!("https://localhost:{}{path}", addr.port())])
            .output()
            .expect("curl runs");
        assert!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let validation = std::fs::read_to_string(sample("eventgrid_subscription_validation_event.json")).unwrap();
    assert_eq!(curl("/acs/eventgrid", &validation), r#"{"validationResponse":"512d38b6-c7b8-40c8-89fe-f46f9e9622b6"}"#);
    let event = r#"{"event_id":"tls-1","tenant_id":"t-tls","agent_id":"a1","event_type":"agent_state_changed","occurred_at":"2026-11-30T09:00:00Z","to_state":"available"}"#;
    assert!(curl("/events", event).contains(r#""accepted":1"#));
    // Plain HTTP on the TLS port: no HTTP answer.
    let (status, _) = http(addr, "POST", "/events", &[], event.as_bytes());
    assert_eq!(status, 0);
    let data = run.data.clone();
    wait_for_rows(&data, "SELECT event_id, source FROM events", "tls-1,http.events", &mut run.child);
}

/// A clean stop (Ctrl-C) of `ccstream run` loses no datagram the listeners received: what
/// was not yet on the log is flushed before the process ends, and the next processor run
/// folds it.
#[test]
fn a_clean_stop_keeps_what_was_received() {
    let mut run = Run::start("metrics_listen = \"127.0.0.1:0\"\n[sources]\nsyslog_udp = \"127.0.0.1:0\"\n");
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let rows: Vec<String> = std::fs::read_to_string(sample("audiocodes_cdr_sbc_signaling_odp.txt"))
        .unwrap()
        .lines()
        .skip(1)
        .map(String::from)
        .collect();
    let n = 2000;
    for i in 0..n {
        let row =
            rows[i % rows.len()].replace(":22:625", &format!(":22:{i}")).replace(":229:69538346", &format!(":229:{i}"));
        udp.send_to(format!("<134>[S={i}] |{row}").as_bytes(), run.addr("syslog_udp")).unwrap();
    }
    // Stop once every datagram was received by the loop (not necessarily appended).
    let metrics = run.metrics.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // The only source of this run, so the metric's total is its count.
        let received =
            common::metric_total(&common::scrape_metrics(&metrics.to_string()).1, "ccstream_ingest_received_total");
        if received >= n as f64 {
            break;
        }
        assert!(Instant::now() < deadline, "only {received} of {n} datagrams received");
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = Command::new("kill").args(["-INT", &run.child.0.id().to_string()]).status().unwrap();
    assert!(status.success());
    let exit = run.child.0.wait().unwrap();
    assert!(exit.success(), "ccstream run exited with {exit}");
    let log = format!("file://{}", run.data.parent().unwrap().join("log").display());
    let data = run.data.to_str().unwrap().to_string();
    common::ccstream(&["process", "--log", &log, "--data", &data, "--until-caught-up"]);
    let count = sql_csv(&run.data, "SELECT count(*) AS n FROM events WHERE source = 'sbc.audiocodes'");
    assert_eq!(count.lines().nth(1), Some(n.to_string().as_str()));
}
