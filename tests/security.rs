//! Attacks on the webhooks, one test each: a tenant writing into another's rows, an
//! anonymous sender filling the dead letters, a tenant id long enough to jam a table write,
//! a webhook listener left open. Each runs `ccstream run` and checks what reached the
//! tables.

mod common;

use common::run::{http, wait_for_rows, Run};
use common::sql_csv;

const CONTOSO: &str = "contoso-webhook-secret-0001";
const FABRIKAM: &str = "fabrikam-webhook-secret-0002";
const FORWARDER: &str = "provider-forwarder-secret-0003";

/// Two customers with a credential each, the provider's forwarder for any tenant, and an
/// ACS rule that gives the resource `fabrikam-acs` to fabrikam.
fn start() -> Run {
    let webhooks: String =
        [("contoso", CONTOSO, "contoso"), ("fabrikam", FABRIKAM, "fabrikam"), ("forwarder", FORWARDER, "*")]
            .iter()
            .map(|(name, secret, tenant)| {
                format!("[[sources.webhooks]]\nname = \"{name}\"\nsecret = \"{secret}\"\ntenants = [\"{tenant}\"]\n")
            })
            .collect();
    Run::start(&format!(
        "[sources]\ndefault_tenant = \"default\"\nhttp = \"127.0.0.1:0\"\n{webhooks}\
         [[sources.acs_tenants]]\ntenant = \"fabrikam\"\nresource = \"fabrikam-acs\"\n"
    ))
}

fn event(id: &str, tenant: &str) -> String {
    format!(
        r#"{{"event_id":"{id}","tenant_id":"{tenant}","call_id":"call-{id}","queue_id":"q1","event_type":"call_queued","occurred_at":"2026-11-30T10:00:00Z"}}"#
    )
}

fn post(run: &Run, path: &str, secret: &str, body: &str) -> (u16, String) {
    http(run.addr("http"), "POST", path, &[("Authorization", &format!("Bearer {secret}"))], body.as_bytes())
}

#[test]
fn events_of_another_tenant_are_refused() {
    let mut run = start();
    let body = format!("{}\n{}\n", event("e-own", "contoso"), event("e-theirs", "fabrikam"));
    let (status, reply) = post(&run, "/events", CONTOSO, &body);
    assert_eq!(status, 200, "{reply}");
    assert!(reply.contains(r#""accepted":1"#) && reply.contains("is not a tenant of this request"), "{reply}");
    // fabrikam's own credential, and the forwarder for anyone.
    let (status, reply) = post(&run, "/events", FABRIKAM, &event("e-fab", "fabrikam"));
    assert_eq!(status, 200, "{reply}");
    let (status, reply) = post(&run, "/events", FORWARDER, &event("e-fwd", "fabrikam"));
    assert_eq!(status, 200, "{reply}");
    let data = run.data.clone();
    wait_for_rows(
        &data,
        "SELECT tenant_id, event_id FROM events ORDER BY tenant_id, event_id",
        "contoso,e-own\nfabrikam,e-fab\nfabrikam,e-fwd",
        &mut run.child,
    );
    wait_for_rows(
        &data,
        "SELECT reason FROM dead_letters",
        "\"tenant_id \"\"fabrikam\"\" is not a tenant of this request's credential\"",
        &mut run.child,
    );
}

#[test]
fn an_acs_topic_of_another_tenant_is_refused() {
    let mut run = start();
    let envelope = |id: &str, resource: &str| {
        format!(
            r#"[{{"id":"{id}","topic":"/subscriptions/s/resourceGroups/g/providers/Microsoft.Communication/communicationServices/{resource}","subject":"job/x","data":{{"jobId":"job-{id}","channelReference":"call-{id}","channelId":"voice","queueId":"q1","priority":1}},"eventType":"Microsoft.Communication.RouterJobQueued","dataVersion":"1.0","metadataVersion":"1","eventTime":"2026-11-30T10:00:00Z"}}]"#
        )
    };
    // contoso's credential naming fabrikam's resource: refused; its own (no rule): contoso's.
    let (status, reply) = post(&run, "/acs/eventgrid", CONTOSO, &envelope("a1", "fabrikam-acs"));
    assert_eq!(status, 200, "{reply}");
    assert!(reply.contains(r#""accepted":0"#) && reply.contains("names a resource of tenant"), "{reply}");
    let (status, reply) = post(&run, "/acs/eventgrid", CONTOSO, &envelope("a2", "contoso-acs"));
    assert!(status == 200 && reply.contains(r#""accepted":1"#), "{reply}");
    let (status, reply) = post(&run, "/acs/eventgrid", FABRIKAM, &envelope("a3", "fabrikam-acs"));
    assert!(status == 200 && reply.contains(r#""accepted":1"#), "{reply}");
    let data = run.data.clone();
    wait_for_rows(
        &data,
        "SELECT tenant_id, call_id FROM events ORDER BY tenant_id",
        "contoso,job-a2\nfabrikam,job-a3",
        &mut run.child,
    );
}

#[test]
fn anonymous_requests_are_counted_not_dead_lettered() {
    let mut run = start();
    let garbage = "x".repeat(10_000);
    for (headers, want) in [(vec![], 401), (vec![("Authorization", "Bearer not-a-secret-of-anyone")], 403)] {
        let (status, reply) = http(run.addr("http"), "POST", "/events", &headers, garbage.as_bytes());
        assert_eq!(status, want, "{reply}");
    }
    // A credential's request afterwards: its rows arrive, and no dead letter came before.
    let (status, reply) = post(&run, "/events", CONTOSO, &format!("{}\nnot json\n", event("e1", "contoso")));
    assert_eq!(status, 200, "{reply}");
    let data = run.data.clone();
    wait_for_rows(&data, "SELECT count(*) FROM events", "1", &mut run.child);
    wait_for_rows(&data, "SELECT count(*), min(origin) FROM dead_letters", "1,http /events", &mut run.child);
}

#[test]
fn a_300_byte_tenant_id_is_a_dead_letter_not_a_jammed_table() {
    let mut run = start();
    let long = "t".repeat(300);
    let body = format!("{}\n{}\n", event("e-long", &long), event("e-ok", "contoso"));
    let (status, reply) = post(&run, "/events", FORWARDER, &body);
    assert_eq!(status, 200, "{reply}");
    assert!(reply.contains("`tenant_id` is 300 bytes, more than 64"), "{reply}");
    let data = run.data.clone();
    wait_for_rows(&data, "SELECT tenant_id, event_id FROM events", "contoso,e-ok", &mut run.child);
    let calls = sql_csv(&data, "SELECT count(*) FROM call_facts");
    assert!(calls.lines().nth(1).is_some(), "{calls}");
}

#[test]
fn the_webhook_listener_does_not_start_without_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    let write = |extra: &str| {
        std::fs::write(
            &config,
            format!(
                "[pipeline]\nlog = \"file://{}\"\ndata = \"{}\"\n[sources]\nhttp = \"127.0.0.1:0\"\n{extra}",
                dir.path().join("log").display(),
                dir.path().join("data").display()
            ),
        )
        .unwrap()
    };
    write("");
    let out = common::ccstream_raw(&["run", "--config", config.to_str().unwrap(), "--until-caught-up"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("needs credentials"), "{stderr}");
    write("[[sources.webhooks]]\nname = \"a\"\nsecret = \"short\"\ntenants = [\"a\"]\n");
    let out = common::ccstream_raw(&["run", "--config", config.to_str().unwrap(), "--until-caught-up"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("16 to 512 bytes"), "{stderr}");
    // Said in so many words, it starts, and warns (here as a JSON log line).
    write("insecure = true\n");
    let args = ["--log-format", "json", "run", "--config", config.to_str().unwrap(), "--until-caught-up"];
    let out = common::ccstream_raw(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let warning = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["level"] == "WARN" && v["message"].as_str().is_some_and(|m| m.contains("insecure")));
    assert!(warning.is_some_and(|w| w["target"].is_string() && w["timestamp"].is_string()), "{stderr}");
}

#[test]
fn a_far_future_event_is_a_dead_letter_and_moves_no_watermark() {
    let mut run = start();
    let future = event("e-future", "contoso").replace("2026-11-30T10:00:00Z", "2099-01-01T00:00:00Z");
    let body = format!("{future}\n{}\n", event("e-now", "contoso"));
    let (status, reply) = post(&run, "/events", CONTOSO, &body);
    assert_eq!(status, 200, "{reply}");
    let data = run.data.clone();
    wait_for_rows(&data, "SELECT event_id FROM events", "e-now", &mut run.child);
    wait_for_rows(
        &data,
        "SELECT count(*) FROM dead_letters WHERE reason LIKE 'occurred_at is % s after the record was appended%'",
        "1",
        &mut run.child,
    );
}

/// A call event of `tenant`: `id`, `call`, `kind` at second `s` past 10:00, by `agent`.
fn call_event(id: &str, tenant: &str, call: &str, kind: &str, s: u32, queue: &str, agent: Option<&str>) -> String {
    let agent = agent.map_or("null".to_string(), |a| format!("\"{a}\""));
    format!(
        r#"{{"event_id":"{id}","tenant_id":"{tenant}","call_id":"{call}","queue_id":"{queue}","agent_id":{agent},"event_type":"{kind}","occurred_at":"2026-11-30T10:00:{s:02}Z"}}"#
    )
}

#[test]
fn a_call_id_and_event_ids_reused_by_another_tenant_leave_both_calls_alone() {
    let mut run = start();
    // fabrikam goes first, with contoso's call id and contoso's event ids: its own call,
    // abandoned after 20 s in its own queue.
    let theirs = [
        call_event("shared-e1", "fabrikam", "shared-call", "call_queued", 0, "fq", None),
        call_event("shared-e2", "fabrikam", "shared-call", "call_abandoned", 20, "fq", None),
        r#"{"event_id":"shared-s1","tenant_id":"fabrikam","agent_id":"fa","event_type":"agent_state_changed","occurred_at":"2026-11-30T10:00:00Z"}"#.to_string(),
    ];
    let (status, reply) = post(&run, "/events", FABRIKAM, &(theirs.join("\n") + "\n"));
    assert!(status == 200 && reply.contains(r#""accepted":3"#), "{reply}");
    let data = run.data.clone();
    wait_for_rows(&data, "SELECT count(*) FROM events", "3", &mut run.child);
    // contoso's call: answered after 5 s, talked, wrapped up.
    let ours = [
        call_event("shared-e1", "contoso", "shared-call", "call_queued", 1, "cq", None),
        call_event("shared-e2", "contoso", "shared-call", "call_answered", 6, "cq", Some("ca")),
        call_event("shared-e3", "contoso", "shared-call", "call_ended", 30, "cq", Some("ca")),
        call_event("shared-e4", "contoso", "shared-call", "wrapup_ended", 40, "cq", Some("ca")),
        r#"{"event_id":"shared-s1","tenant_id":"contoso","agent_id":"ca","event_type":"agent_state_changed","occurred_at":"2026-11-30T10:00:00Z"}"#.to_string(),
    ];
    let (status, reply) = post(&run, "/events", CONTOSO, &(ours.join("\n") + "\n"));
    assert!(status == 200 && reply.contains(r#""accepted":5"#), "{reply}");
    wait_for_rows(
        &data,
        "SELECT tenant_id, count(*) FROM events GROUP BY 1 ORDER BY 1",
        "contoso,5\nfabrikam,3",
        &mut run.child,
    );
    wait_for_rows(
        &data,
        "SELECT tenant_id, call_id, queue_id, answered, abandoned, wait_ms, handle_ms FROM call_facts ORDER BY tenant_id",
        "contoso,shared-call,cq,true,false,5000,34000\nfabrikam,shared-call,fq,false,true,20000,",
        &mut run.child,
    );
    wait_for_rows(&data, "SELECT tenant_id, agent_id FROM agent_legs", "contoso,ca", &mut run.child);
}

#[test]
fn a_4_mib_body_of_garbage_lines_is_one_dead_letter() {
    let mut run = start();
    let line = "garbage, not an event\n";
    let n = (4 << 20) / line.len() - 1;
    let (status, reply) = post(&run, "/events", CONTOSO, &line.repeat(n));
    assert_eq!(status, 400, "{}", &reply[..reply.len().min(300)]);
    assert!(reply.contains(&format!(r#""rejected_lines":{n}"#)), "{}", &reply[..reply.len().min(300)]);
    assert!(reply.len() < 16 * 1024, "the reply lists a bounded number of lines: {} bytes", reply.len());
    // A good request afterwards: once its event is in, the garbage's dead letter is too.
    let (status, reply) = post(&run, "/events", CONTOSO, &event("e-after", "contoso"));
    assert_eq!(status, 200, "{reply}");
    let data = run.data.clone();
    wait_for_rows(&data, "SELECT count(*) FROM events", "1", &mut run.child);
    wait_for_rows(
        &data,
        &format!(
            "SELECT count(*), min(line), min(starts_with(reason, '{n} inputs rejected; line 1: ')), \
             max(length(raw)) <= 65536 FROM dead_letters"
        ),
        "1,1,true,true",
        &mut run.child,
    );
}

#[test]
fn syslog_garbage_from_many_senders_past_the_rate_is_counted_not_written() {
    let mut run = Run::start(
        "metrics_listen = \"127.0.0.1:0\"\n[sources]\nsyslog_udp = \"127.0.0.1:0\"\nsyslog_tcp = \"127.0.0.1:0\"\n\
         dead_letters_per_second = 0.001\ndead_letter_burst = 2\n",
    );
    // 64 KiB of garbage lines: over TCP in one connection, and as 64 datagrams of 1 KiB from
    // 64 sockets (64 senders, so 64 origins whatever the batching).
    let garbage: String = (0..32).map(|i| format!("<134>garbage line {i:02} of no CDR at all, padded.\n")).collect();
    let kib = &garbage.as_bytes()[..1024];
    let mut tcp = std::net::TcpStream::connect(run.addr("syslog_tcp")).unwrap();
    for _ in 0..64 {
        std::io::Write::write_all(&mut tcp, kib).unwrap();
    }
    drop(tcp);
    for _ in 0..64 {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        udp.send_to(kib, run.addr("syslog_udp")).unwrap();
    }
    let metrics = run.metrics.unwrap().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let dropped = loop {
        let text = common::scrape_metrics(&metrics).1;
        let dropped = common::metric_total(&text, "ccstream_ingest_dead_letters_dropped_total");
        if dropped >= 62.0 {
            break dropped;
        }
        assert!(std::time::Instant::now() < deadline, "only {dropped} dead letters dropped:\n{text}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let data = run.data.clone();
    wait_for_rows(&data, "SELECT count(*) FROM dead_letters", "2", &mut run.child);
    assert!(dropped < 64.0 + 64.0, "{dropped}");
}

/// A sender that dribbles `head` one byte every 300 ms, then stays silent; returns how long
/// the server took to close the connection (`None`: still open after 20 s).
fn dribble(addr: std::net::SocketAddr, head: Vec<u8>) -> std::thread::JoinHandle<Option<std::time::Duration>> {
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        let start = std::time::Instant::now();
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_millis(300))).unwrap();
        let mut sent = 0;
        let mut buf = [0u8; 4096];
        while start.elapsed() < std::time::Duration::from_secs(20) {
            if sent < head.len() && s.write_all(&head[sent..sent + 1]).is_err() {
                return Some(start.elapsed());
            }
            sent += 1;
            match s.read(&mut buf) {
                Ok(0) => return Some(start.elapsed()),
                Ok(_) => {} // a 408 before the close
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(_) => return Some(start.elapsed()),
            }
        }
        None
    })
}

#[test]
fn slowloris_on_http_and_tcp_syslog_is_cut_off_while_a_good_client_is_served() {
    let mut run = Run::start(&format!(
        "metrics_listen = \"127.0.0.1:0\"\n[sources]\nhttp = \"127.0.0.1:0\"\nsyslog_tcp = \"127.0.0.1:0\"\n\
         read_timeout_s = 2\nidle_timeout_s = 3\nsecret = \"{FORWARDER}\"\n"
    ));
    let (http_addr, syslog) = (run.addr("http"), run.addr("syslog_tcp"));
    let header =
        b"POST /events HTTP/1.1\r\nHost: x\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n".to_vec();
    let body_head = format!(
        "POST /events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {FORWARDER}\r\nContent-Length: 1000\r\n\r\n{}",
        "x".repeat(100)
    );
    let mut slow = Vec::new();
    for _ in 0..8 {
        slow.push(("http header", dribble(http_addr, header.clone())));
        // The header at once, then the body a byte at a time.
        let (head, rest) = body_head.split_at(body_head.find("\r\n\r\n").unwrap() + 4);
        let mut s = std::net::TcpStream::connect(http_addr).unwrap();
        std::io::Write::write_all(&mut s, head.as_bytes()).unwrap();
        drop(s.try_clone());
        slow.push(("http body", dribble_on(s, rest.as_bytes().to_vec())));
        slow.push(("syslog message", dribble(syslog, b"<134>a CDR line that never ends ".repeat(4))));
        slow.push(("syslog idle", dribble(syslog, Vec::new())));
    }
    // A kept-alive webhook connection that goes silent after its request.
    let mut idle = std::net::TcpStream::connect(http_addr).unwrap();
    let good = event("e-keep-alive", "contoso");
    let request = format!(
        "POST /events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {FORWARDER}\r\nContent-Length: {}\r\n\r\n{good}",
        good.len()
    );
    std::io::Write::write_all(&mut idle, request.as_bytes()).unwrap();
    slow.push(("http keep-alive idle", dribble_on(idle, Vec::new())));
    // Meanwhile a well-behaved client is served, several times.
    for i in 0..5 {
        let t = std::time::Instant::now();
        let (status, reply) = post(&run, "/events", FORWARDER, &event(&format!("e-good-{i}"), "contoso"));
        assert_eq!(status, 200, "{reply}");
        assert!(t.elapsed() < std::time::Duration::from_secs(2), "a good request took {:?}", t.elapsed());
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    for (what, t) in slow {
        let closed = t.join().unwrap();
        let took = closed.unwrap_or_else(|| panic!("a slow {what} sender was not cut off"));
        assert!(took < std::time::Duration::from_secs(8), "a slow {what} sender was cut off only after {took:?}");
    }
    let metrics = common::scrape_metrics(&run.metrics.unwrap().to_string()).1;
    let cut = |listener: &str, reason: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("ccstream_ingest_connections_cut_total")
                    && l.contains(&format!("listener=\"{listener}\""))
                    && l.contains(&format!("reason=\"{reason}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert!(cut("syslog_tcp", "slow") >= 8.0 && cut("syslog_tcp", "idle") >= 8.0, "{metrics}");
    assert!(cut("http", "slow") >= 8.0, "{metrics}");
    let data = run.data.clone();
    wait_for_rows(&data, "SELECT count(*) FROM events", "6", &mut run.child);
}

/// [`dribble`] on a connected stream.
fn dribble_on(s: std::net::TcpStream, rest: Vec<u8>) -> std::thread::JoinHandle<Option<std::time::Duration>> {
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        let start = std::time::Instant::now();
        let mut s = s;
        s.set_read_timeout(Some(std::time::Duration::from_millis(300))).unwrap();
        let mut buf = [0u8; 4096];
        let mut rest = rest.iter().cycle();
        while start.elapsed() < std::time::Duration::from_secs(20) {
            if let Some(b) = rest.next() {
                if s.write_all(std::slice::from_ref(b)).is_err() {
                    return Some(start.elapsed());
                }
            }
            match s.read(&mut buf) {
                Ok(0) => return Some(start.elapsed()),
                Ok(_) => {}
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(_) => return Some(start.elapsed()),
            }
        }
        None
    })
}

/// CPU time (user + system, in clock ticks) the process `pid` has used.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn out_of_file_descriptors_the_listeners_wait_instead_of_spinning() {
    let mut run = Run::start_with(
        &format!(
            "metrics_listen = \"127.0.0.1:0\"\n[sources]\nhttp = \"127.0.0.1:0\"\nsyslog_tcp = \"127.0.0.1:0\"\n\
             secret = \"{FORWARDER}\"\n"
        ),
        Some(256),
    );
    let (status, reply) = post(&run, "/events", FORWARDER, &event("e-before", "contoso"));
    assert_eq!(status, 200, "{reply}");
    let data = run.data.clone();
    wait_for_rows(&data, "SELECT count(*) FROM events", "1", &mut run.child);
    // Connections past the process's descriptors: the kernel queues them, accept fails.
    let mut held = Vec::new();
    for addr in [run.addr("syslog_tcp"), run.addr("http")] {
        for _ in 0..300 {
            match std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(500)) {
                Ok(s) => held.push(s),
                Err(_) => break,
            }
        }
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let pid = run.child.0.id();
    let before = cpu_ticks(pid);
    std::thread::sleep(std::time::Duration::from_secs(3));
    let used = cpu_ticks(pid) - before;
    // A loop retrying accept at once burns a core: 300 ticks in 3 s.
    assert!(used < 60, "{used} ticks of CPU in 3 s with {} connections held", held.len());
    assert!(run.child.0.try_wait().unwrap().is_none(), "ccstream run exited");
    drop(held);
    // Descriptors back: served again.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (status, reply) = post(&run, "/events", FORWARDER, &event("e-after", "contoso"));
        if status == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not served again: {status} {reply}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    wait_for_rows(&data, "SELECT count(*) FROM events", "2", &mut run.child);
    // Every listener still runs.
    let metrics = run.metrics.unwrap();
    assert_eq!(http(metrics, "GET", "/health", &[], b""), (200, "ok\n".to_string()));
    assert_eq!(http(metrics, "GET", "/ready", &[], b""), (200, "ready\n".to_string()));
}

#[test]
fn five_thousand_spoofed_sbc_senders_are_refused_and_the_sbc_is_served() {
    let mut run = Run::start(
        "metrics_listen = \"127.0.0.1:0\"\n[sources]\nsyslog_udp = \"127.0.0.1:0\"\n\
         [[sources.sbc_senders]]\nsender = \"127.0.0.1\"\ntenants = [\"contoso\"]\n",
    );
    let samples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ingest/tests/fixtures/samples");
    let rows = std::fs::read_to_string(samples.join("audiocodes_cdr_sbc_signaling_odp.txt")).unwrap();
    let row = rows.lines().nth(1).unwrap();
    let (syslog, metrics) = (run.addr("syslog_udp"), run.metrics.unwrap().to_string());
    let received =
        || common::metric_total(&common::scrape_metrics(&metrics).1, "ccstream_ingest_received_total") as usize;
    // 5,000 other addresses (127.0.0.0/8 is all loopback), in steps the socket buffer holds.
    for step in 0..20 {
        for i in step * 250..(step + 1) * 250 {
            let spoofed = std::net::UdpSocket::bind(format!("127.0.{}.{}:0", 1 + i / 250, 1 + i % 250)).unwrap();
            let cdr = row.replace("c62532:22:625", &format!("spoof-{i}"));
            spoofed.send_to(format!("<134>[S={i}] |{cdr}").as_bytes(), syslog).unwrap();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while received() < (step + 1) * 250 {
            assert!(std::time::Instant::now() < deadline, "only {} datagrams received", received());
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    let sbc = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sbc.send_to(format!("<134>[S=1] |{row}").as_bytes(), syslog).unwrap();
    let data = run.data.clone();
    wait_for_rows(&data, "SELECT tenant_id, call_id FROM events", "contoso,c62532:22:625", &mut run.child);
    let text = common::scrape_metrics(&metrics).1;
    let unauthorized = text
        .lines()
        .find(|l| l.starts_with("ccstream_ingest_rejected_total") && l.contains("reason=\"unauthorized\""))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    assert_eq!(unauthorized, Some(5000.0), "{text}");
}

#[test]
fn made_up_event_names_do_not_grow_the_metrics() {
    let run = Run::start(&format!(
        "metrics_listen = \"127.0.0.1:0\"\n[sources]\nhttp = \"127.0.0.1:0\"\nsecret = \"{FORWARDER}\"\n"
    ));
    let envelopes: Vec<String> = (0..500)
        .map(|i| {
            format!(
                r#"{{"id":"m{i}","topic":"/subscriptions/s/resourceGroups/g/providers/Microsoft.Communication/communicationServices/x","subject":"job/x","data":{{}},"eventType":"Microsoft.Communication.RouterJobMadeUp{i}","dataVersion":"1.0","metadataVersion":"1","eventTime":"2026-11-30T10:00:00Z"}}"#
            )
        })
        .collect();
    let (status, reply) = post(&run, "/acs/eventgrid", FORWARDER, &format!("[{}]", envelopes.join(",")));
    assert_eq!(status, 200, "{reply}");
    let text = common::scrape_metrics(&run.metrics.unwrap().to_string()).1;
    let series: Vec<&str> = text.lines().filter(|l| l.starts_with("ccstream_ingest_unmapped_total{")).collect();
    assert_eq!(series.len(), 1, "{series:?}");
    assert!(series[0].contains("event=\"other\"") && series[0].ends_with(" 500"), "{series:?}");
}

#[test]
fn a_syslog_sender_streaming_past_the_read_timeout_is_not_cut_off() {
    let run =
        Run::start("metrics_listen = \"127.0.0.1:0\"\n[sources]\nsyslog_tcp = \"127.0.0.1:0\"\nread_timeout_s = 1\n");
    let samples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ingest/tests/fixtures/samples");
    let rows = std::fs::read_to_string(samples.join("audiocodes_cdr_sbc_signaling_odp.txt")).unwrap();
    let row = rows.lines().nth(1).unwrap();
    // 3 s of lines, each write ending inside a line: a message is always under way.
    let stream: String =
        (0..30).map(|i| format!("<134>[S={i}] |{}\n", row.replace("c62532:22:625", &format!("st-{i}")))).collect();
    let chunks: Vec<&[u8]> = stream.as_bytes().chunks(stream.len() / 30 + 7).collect();
    let mut tcp = std::net::TcpStream::connect(run.addr("syslog_tcp")).unwrap();
    for c in &chunks {
        std::io::Write::write_all(&mut tcp, c).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(3000 / chunks.len() as u64));
    }
    drop(tcp);
    let metrics = run.metrics.unwrap().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let text = common::scrape_metrics(&metrics).1;
        assert!(!text.contains("ccstream_ingest_connections_cut_total{"), "cut off:\n{text}");
        if common::metric_total(&text, "ccstream_ingest_accepted_events_total") >= 30.0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not every line arrived:\n{text}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
