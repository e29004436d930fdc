#!/usr/bin/env python3
"""Load run of the source listeners on loopback: `ccstream run` with syslog (UDP, TCP) and
the webhook server, fed at a set rate; reports, per protocol, the rate sent and what arrived
(counted by `/metrics`: received and accepted per source), i.e. the loss.

    python3 bench/sources_load.py --ccstream target/release/ccstream \
        [--udp-rates 5000,20000,50000] [--seconds 5] [--tcp-lines 200000] \
        [--http-requests 2000 --http-batch 100 --http-threads 4]

- syslog UDP: CDR lines (CALL_END rows of distinct sessions), one datagram each, paced at
  each rate for `--seconds`; loss = sent − received.
- syslog TCP: `--tcp-lines` lines, LF-framed, as fast as one connection takes them.
- webhooks: `POST /events` with `--http-batch` canonical events per request from
  `--http-threads` threads; each request is acknowledged only once durable, so the rate is
  end to end (to the log); p50/p99 of the acknowledgement latency.

With `--abuse` (`off`, `on`, or `both`: a run without, then a fresh one with) an abusive
client runs beside the well-formed load: 64 slowloris connections to the webhooks and 64 to
syslog/TCP (a byte every 200 ms, reopened when cut off), 2,000 garbage datagrams/s to
syslog/UDP, and 256 KiB bodies of garbage lines posted to `/events` back to back. Loss is
counted on accepted events (what the well-formed load sent minus what became events).

Everything runs on one machine (the sender competes with ccstream for the CPUs).
"""
import argparse, json, os, socket, subprocess, tempfile, threading, time, http.client, urllib.request

TITLE = open(os.path.join(os.path.dirname(__file__), "..", "ingest/tests/fixtures/samples/audiocodes_cdr_sbc_signaling_odp.txt")).readline().rstrip("\n")
ROW = open(os.path.join(os.path.dirname(__file__), "..", "ingest/tests/fixtures/samples/audiocodes_cdr_sbc_signaling_odp.txt")).read().splitlines()[3]


def scrape(addr, name, source):
    text = urllib.request.urlopen(f"http://{addr}/metrics", timeout=10).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and f'source="{source}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def cdr(i):
    # A distinct session per line, so every line is a distinct event.
    return ROW.replace("c62532:22:625", f"ld{i:09d}:1:1")


def wait_for(addr, name, source, target, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = scrape(addr, name, source)
        if v >= target:
            return v
        time.sleep(0.2)
    return scrape(addr, name, source)


SECRET = "load-secret-0123456789"


class Abuser:
    """The abusive client: slowloris on HTTP and syslog/TCP, garbage over UDP and HTTP."""

    def __init__(self, addrs):
        self.addrs, self.stop, self.threads = addrs, threading.Event(), []
        self.garbage_posts = self.cut = 0

    def start(self):
        for name, head in [("http", b"POST /events HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 4000),
                           ("syslog_tcp", b"<134>a line that never ends " * 200)]:
            for _ in range(64):
                self.threads.append(threading.Thread(target=self.slowloris, args=(name, head), daemon=True))
        self.threads.append(threading.Thread(target=self.udp_garbage, daemon=True))
        self.threads.append(threading.Thread(target=self.http_garbage, daemon=True))
        [t.start() for t in self.threads]

    def finish(self):
        self.stop.set()
        [t.join(timeout=5) for t in self.threads]

    def addr(self, name):
        host, port = self.addrs[name].rsplit(":", 1)
        return host, int(port)

    def slowloris(self, name, head):
        while not self.stop.is_set():
            try:
                s = socket.create_connection(self.addr(name), timeout=5)
                for b in head:
                    if self.stop.is_set():
                        break
                    s.send(bytes([b]))
                    time.sleep(0.2)
            except OSError:
                self.cut += 1
                time.sleep(0.1)

    def udp_garbage(self):
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        junk = b"<134>garbage, not a CDR | at all\n" * 30
        while not self.stop.is_set():
            start = time.time()
            for _ in range(200):
                u.sendto(junk, self.addr("syslog_udp"))
            time.sleep(max(0.0, 0.1 - (time.time() - start)))

    def http_garbage(self):
        body = b"garbage, not an event\n" * (256 * 1024 // 22)
        while not self.stop.is_set():
            try:
                c = http.client.HTTPConnection(*self.addr("http"), timeout=60)
                c.request("POST", "/events", body=body, headers={"Authorization": f"Bearer {SECRET}"})
                c.getresponse().read()
                self.garbage_posts += 1
            except OSError:
                time.sleep(0.1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ccstream", required=True)
    ap.add_argument("--udp-rates", default="5000,20000,50000")
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--tcp-lines", type=int, default=200_000)
    ap.add_argument("--http-requests", type=int, default=2000)
    ap.add_argument("--http-batch", type=int, default=100)
    ap.add_argument("--http-threads", type=int, default=4)
    ap.add_argument("--abuse", choices=["off", "on", "both"], default="off")
    a = ap.parse_args()
    for abuse in {"off": [False], "on": [True], "both": [False, True]}[a.abuse]:
        print(f"\n== {'with' if abuse else 'without'} the abusive client ==")
        run(a, abuse)


def run(a, abuse):
    d = tempfile.mkdtemp(prefix="ccstream-load-")
    cfg = f"{d}/ccstream.toml"
    with open(cfg, "w") as f:
        f.write(f"""[pipeline]
log = "file://{d}/log"
data = "{d}/data"
metrics_listen = "127.0.0.1:0"
[sources]
syslog_udp = "127.0.0.1:0"
syslog_tcp = "127.0.0.1:0"
http = "127.0.0.1:0"
secret = "{SECRET}"
""")
    proc = subprocess.Popen([a.ccstream, "run", "--config", cfg, "--listen-file", f"{d}/metrics", "--sources-listen-file", f"{d}/sources"],
                            stdout=subprocess.DEVNULL, stderr=open(f"{d}/stderr", "w"))
    try:
        while not (os.path.exists(f"{d}/sources") and os.path.exists(f"{d}/metrics")):
            time.sleep(0.05)
        time.sleep(0.2)
        metrics = open(f"{d}/metrics").read().strip()
        addrs = dict(l.split(" ") for l in open(f"{d}/sources").read().splitlines())
        abuser = Abuser(addrs)
        if abuse:
            abuser.start()
            time.sleep(1)
        host, port = addrs["syslog_udp"].rsplit(":", 1)
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.sendto(f"<134>[S=0] |{TITLE}".encode(), (host, int(port)))
        sent_total, line_no = 1, 0
        print("protocol        offered/s   sent     received   lost    accepted")
        accepted_before = 0.0
        for rate in [int(r) for r in a.udp_rates.split(",")]:
            n = int(rate * a.seconds)
            msgs = [f"<134>[S={line_no + i}] |{cdr(line_no + i)}".encode() for i in range(n)]
            line_no += n
            start = time.time()
            for i, m in enumerate(msgs):
                target = start + i / rate
                now = time.time()
                if target > now:
                    time.sleep(target - now)
                udp.sendto(m, (host, int(port)))
            elapsed = time.time() - start
            sent_total += n
            # Loss on what became events (the garbage is received too, and rejected).
            accepted = wait_for(metrics, "ccstream_ingest_accepted_events_total", "sbc.audiocodes", accepted_before + n, 10)
            print(f"syslog/udp  {n / elapsed:12.0f} {n:8d} {accepted - accepted_before:10.0f} {accepted_before + n - accepted:6.0f} {accepted:10.0f}")
            accepted_before = accepted
        # TCP: as fast as it goes.
        host, port = addrs["syslog_tcp"].rsplit(":", 1)
        tcp = socket.create_connection((host, int(port)))
        payload = ("\n".join(f"<134>[S={line_no + i}] |{cdr(line_no + i)}" for i in range(a.tcp_lines)) + "\n").encode()
        line_no += a.tcp_lines
        before = scrape(metrics, "ccstream_ingest_accepted_events_total", "sbc.audiocodes")
        start = time.time()
        tcp.sendall(payload)
        tcp.close()
        got = wait_for(metrics, "ccstream_ingest_accepted_events_total", "sbc.audiocodes", before + a.tcp_lines, 120)
        elapsed = time.time() - start
        print(f"syslog/tcp  {a.tcp_lines / elapsed:12.0f} {a.tcp_lines:8d} {got - before:10.0f} {before + a.tcp_lines - got:6.0f}   (lines/s to durable)")
        # Webhooks.
        host, port = addrs["http"].rsplit(":", 1)
        per_thread = a.http_requests // a.http_threads
        failures, latencies = [], []

        def worker(t):
            c = http.client.HTTPConnection(host, int(port), timeout=60)
            for r in range(per_thread):
                lines = []
                for k in range(a.http_batch):
                    i = (t * per_thread + r) * a.http_batch + k
                    lines.append(json.dumps({"event_id": f"load-{i}", "tenant_id": "t-load", "agent_id": f"a{i % 50}",
                                             "event_type": "agent_state_changed", "occurred_at": "2026-11-30T09:00:00.000Z",
                                             "to_state": "available"}))
                sent = time.time()
                c.request("POST", "/events", body="\n".join(lines), headers={"Authorization": f"Bearer {SECRET}"})
                resp = c.getresponse()
                resp.read()
                latencies.append(time.time() - sent)
                if resp.status != 200:
                    failures.append(resp.status)

        start = time.time()
        threads = [threading.Thread(target=worker, args=(t,)) for t in range(a.http_threads)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        elapsed = time.time() - start
        n = per_thread * a.http_threads
        accepted = scrape(metrics, "ccstream_ingest_accepted_events_total", "http.events")
        latencies.sort()
        p50, p99 = latencies[len(latencies) // 2] * 1000, latencies[int(len(latencies) * 0.99)] * 1000
        print(f"http/events {n / elapsed:12.0f} {n:8d} {n - len(failures):10d} {len(failures):6d} {accepted:10.0f}   "
              f"(requests/s; {n * a.http_batch / elapsed:.0f} events/s durable; ack p50 {p50:.1f} ms, p99 {p99:.1f} ms)")
        if abuse:
            abuser.finish()
            print(f"abusive client: {abuser.garbage_posts} garbage bodies posted, {abuser.cut} slowloris connections cut off; "
                  f"{scrape(metrics, 'ccstream_ingest_rejected_total', 'http.events'):.0f} garbage lines rejected; "
                  f"dead letters dropped past the rate: {scrape(metrics, 'ccstream_ingest_dead_letters_dropped_total', 'http.events') + scrape(metrics, 'ccstream_ingest_dead_letters_dropped_total', 'sbc.audiocodes'):.0f}")
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
