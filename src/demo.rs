//! `ccstream demo`: the quick start. Generates a day of traffic for a few tenants into a
//! local directory, replays it into tables, prints a per-queue summary and the commands to
//! explore further. No services needed.

use std::path::PathBuf;

use anyhow::{Context, Result};
use ccstream_query::QueryEngine;
use clap::Args;

use crate::generate::{self, GenerateArgs};
use crate::output::{self, Format};
use crate::replay::{self, ReplayArgs};

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Directory for the generated events and the tables (replaced if it exists)
    #[arg(long, env = "CCSTREAM_DEMO_DIR", default_value = "ccstream-demo")]
    pub(crate) dir: PathBuf,
    /// Calls in the generated traffic (all days)
    #[arg(long, env = "CCSTREAM_DEMO_CALLS", default_value_t = 8000)]
    pub(crate) calls: u64,
    /// Days of traffic, from 2026-01-06 (with `--live`, a long run at constant traffic)
    #[arg(long, env = "CCSTREAM_DEMO_DAYS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=366))]
    pub(crate) days: u32,
    /// Random seed
    #[arg(long, env = "CCSTREAM_DEMO_SEED", default_value_t = 7)]
    pub(crate) seed: u64,
    /// Live: feed the day through the embedded event log in simulated real time while the
    /// processor keeps the tables and /metrics current; Ctrl-C stops (committing what was read)
    #[arg(long, env = "CCSTREAM_DEMO_LIVE", default_value_t = false)]
    pub(crate) live: bool,
    /// Live only: simulated seconds per wall-clock second
    #[arg(long, env = "CCSTREAM_DEMO_SPEED", default_value_t = 600.0)]
    pub(crate) speed: f64,
    /// Live only: where /metrics listens (port 0: any free port)
    #[arg(long, env = "CCSTREAM_DEMO_METRICS_LISTEN", default_value = "127.0.0.1:9464")]
    pub(crate) metrics_listen: std::net::SocketAddr,
    /// Live only: write the metrics address, once bound, to this file
    #[arg(long, env = "CCSTREAM_DEMO_LISTEN_FILE")]
    pub(crate) listen_file: Option<PathBuf>,
    /// Live only: where the SQL HTTP API listens (port 0: any free port)
    #[arg(long, env = "CCSTREAM_DEMO_HTTP_LISTEN", default_value = "127.0.0.1:8480")]
    pub(crate) http_listen: std::net::SocketAddr,
    /// Live only: where the Postgres wire listens (port 0: any free port)
    #[arg(long, env = "CCSTREAM_DEMO_PG_LISTEN", default_value = "127.0.0.1:5433")]
    pub(crate) pg_listen: std::net::SocketAddr,
    /// Live only: where Arrow Flight SQL listens (port 0: any free port)
    #[arg(long, env = "CCSTREAM_DEMO_FLIGHT_LISTEN", default_value = "127.0.0.1:8481")]
    pub(crate) flight_listen: std::net::SocketAddr,
    /// Live only: write the SQL frontends' addresses, once bound, to this file
    #[arg(long, env = "CCSTREAM_DEMO_SERVE_LISTEN_FILE")]
    pub(crate) serve_listen_file: Option<PathBuf>,
}

/// Per-queue summary of the day, from the `interval_metrics` view's partials.
pub(crate) const SUMMARY_SQL: &str = "
SELECT tenant_id, queue_id,
       sum(offered) AS offered,
       round(CAST(sum(answered_within_sl) AS DOUBLE) / nullif(sum(offered) - sum(short_abandoned), 0), 3) AS sl,
       round(CAST(sum(sum_answer_wait_ms) AS DOUBLE) / nullif(sum(answered), 0) / 1000.0, 1) AS asa_s,
       round(CAST(sum(sum_handle_ms) AS DOUBLE) / nullif(sum(n_handle), 0) / 1000.0, 1) AS aht_s,
       round(CAST(sum(abandoned) AS DOUBLE) / nullif(sum(offered), 0), 3) AS abandon_rate
FROM interval_partials
GROUP BY tenant_id, queue_id
ORDER BY tenant_id, queue_id";

pub(crate) async fn run(args: DemoArgs) -> Result<()> {
    let dir = &args.dir;
    let events = dir.join("events.jsonl");
    let data = dir.join("data");
    if data.exists() {
        std::fs::remove_dir_all(&data).with_context(|| format!("clearing {}", data.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let span = match args.days {
        1 => "a day".to_string(),
        n => format!("{n} days"),
    };
    eprintln!("1/3 generating {span} of traffic for 3 tenants -> {}", events.display());
    generate::run(GenerateArgs {
        calls: args.calls,
        seed: args.seed,
        out: events.clone(),
        format: Some("jsonl".into()),
        tenants: 3,
        queues_per_tenant: 3,
        days: args.days,
        start: "2026-01-06".into(),
        late_frac: 0.02,
        late_horizon_s: 300.0,
        dup_frac: 0.005,
        malformed_frac: 0.001,
    })?;
    let data_s = data.display().to_string();
    if args.live {
        return live(&args, &events, &data_s).await;
    }
    eprintln!("2/3 replaying it into tables under {}", data.display());
    replay::run(ReplayArgs {
        input: vec![events],
        data: data_s.clone(),
        config: None,
        threads: 2,
        events_table: true,
        read_pages: true,
        settle_after_ms: 3_600_000,
        settle_batch: 16_384,
        progress: "auto".into(),
        summary_json: false,
    })
    .await?;
    eprintln!("3/3 per-queue summary of {span} (SL = answered within 20 s / (offered - short abandons))\n");
    let engine = QueryEngine::open(&data_s, 2).await?;
    let (schema, batches) = engine.query(SUMMARY_SQL).await?;
    output::write(&mut std::io::stdout(), Format::Table, &schema, &batches)?;
    let bin = "cargo run --release --";
    println!(
        "\nExplore further:\n  \
         {bin} sql --data {data_s} \"SELECT * FROM interval_metrics ORDER BY interval_start LIMIT 20\"\n  \
         {bin} sql --data {data_s} \"SELECT * FROM interval_metrics_at(60, 'Europe/Berlin', 30) LIMIT 20\"\n  \
         {bin} sql --data {data_s} \"SELECT * FROM agent_day_metrics ORDER BY handled DESC LIMIT 10\"\n  \
         {bin} sql --data {data_s} \"SELECT reason, count(*) FROM dead_letters GROUP BY reason\"\n  \
         {bin} sql --data {data_s} --format csv \"SELECT * FROM call_facts LIMIT 5\""
    );
    Ok(())
}

/// The live demo: a feeder appends the day's events to a FileLog in simulated real time
/// (file order, paced by event time at `--speed`), and the processor runs beside it.
async fn live(args: &DemoArgs, events: &std::path::Path, data: &str) -> Result<()> {
    anyhow::ensure!(args.speed > 0.0, "--speed must be positive");
    let log_dir = args.dir.join("log");
    if log_dir.exists() {
        std::fs::remove_dir_all(&log_dir).with_context(|| format!("clearing {}", log_dir.display()))?;
    }
    let log_url = log_dir.display().to_string();
    let log = crate::ingest::open_or_create(&log_url, Some(4)).await?;
    let text = std::fs::read_to_string(events).with_context(|| format!("reading {}", events.display()))?;
    let speed = args.speed;
    let file = ccstream_ingest::file::InputFile {
        path: events.to_path_buf(),
        format: ccstream_ingest::file::Format::Jsonl { gzip: false },
        bytes: text.len() as u64,
    };
    let feeder = tokio::spawn(async move {
        let lines: Vec<&str> = text.lines().collect();
        let event_ms = |line: &str| {
            ccstream_schemas::Event::from_json(line).ok().and_then(|e| e.validate().ok()).map(|v| v.occurred_at_ms)
        };
        let Some(t0) = lines.iter().find_map(|l| event_ms(l)) else { return Ok::<u64, anyhow::Error>(0) };
        let wall0 = std::time::Instant::now();
        let mut clock = t0;
        let mut sent = 0u64;
        let mut batch = ccstream_ingest::file::records::LogRecords::new(crate::replay::now_ms());
        for (i, line) in lines.iter().enumerate() {
            // The simulated clock only moves forward: late events go out when they arrive.
            clock = clock.max(event_ms(line).unwrap_or(clock));
            let due = std::time::Duration::from_secs_f64((clock - t0) as f64 / 1000.0 / speed);
            if let Some(wait) = due.checked_sub(wall0.elapsed()) {
                if !batch.is_empty() {
                    log.append(&batch.refs()).await?;
                    sent += batch.len() as u64;
                    batch.clear();
                }
                tokio::time::sleep(wait).await;
            }
            batch.add_line(&file, i as u64 + 1, line.as_bytes());
        }
        if !batch.is_empty() {
            log.append(&batch.refs()).await?;
            sent += batch.len() as u64;
        }
        Ok(sent)
    });
    eprintln!(
        "live: feeding {} into the log {} at {}x; the processor keeps {} current",
        events.display(),
        log_url,
        args.speed,
        data
    );
    let bin = "cargo run --release --";
    // Port 0 is chosen when the processor binds: it prints the address itself.
    let metrics = match args.metrics_listen.port() {
        0 => "the /metrics address printed below".to_string(),
        _ => format!("http://{}/metrics", args.metrics_listen),
    };
    eprintln!(
        "look at: {metrics} (ccstream_kpi_* per tenant and queue)\n  \
         {bin} sql --data {data} \"SELECT * FROM interval_metrics ORDER BY interval_start DESC LIMIT 20\"\n  \
         {bin} sql --data {data} \"SELECT count(*) AS calls FROM call_facts\"\n\
         Ctrl-C stops, committing what was read."
    );
    // `ccstream serve` beside the processor, for one demo principal of every tenant with a
    // fresh password and token.
    let password = ccstream_query::access::new_token();
    let token = ccstream_query::access::new_token();
    let serve = ccstream_query::ServeConfig {
        http_listen: Some(args.http_listen),
        pg_listen: Some(args.pg_listen),
        flight_listen: Some(args.flight_listen),
        principals: vec![ccstream_query::access::PrincipalConfig {
            name: "demo".into(),
            role: ccstream_query::access::Role::Admin,
            tenants: vec!["*".into()],
            queues: None,
            password_hash: Some(ccstream_query::access::ScramVerifier::new(&password).encode()),
            token_hash: Some(ccstream_query::access::hash_token(&token)),
        }],
        ..Default::default()
    };
    let serving = crate::serve::start(data, serve, args.serve_listen_file.as_deref(), true).await?;
    for (name, addr) in &serving.addrs {
        match *name {
            "pg" => eprintln!("SQL: psql \"postgresql://demo:{password}@{addr}/ccstream\""),
            "flight" => eprintln!(
                "SQL: Flight SQL at grpc://{addr} (ADBC: username demo, password {password}; or authorization \
                 Bearer {token})"
            ),
            _ => eprintln!(
                "SQL: curl -H 'Authorization: Bearer {token}' -d '{{\"sql\": \"SELECT * FROM interval_metrics LIMIT 5\"}}' 'http://{addr}/v1/sql?format=csv'"
            ),
        }
    }
    let result = crate::process::run(crate::process::ProcessArgs {
        log: log_url,
        data: data.to_string(),
        group: "demo".into(),
        config: None,
        commit_interval_ms: 1000,
        until_caught_up: false,
        poll_records: 65_536,
        decode_chunk: 4096,
        append_flush_rows: 1 << 20,
        compact_after_files: 32,
        metrics_listen: Some(args.metrics_listen),
        listen_file: args.listen_file.clone(),
        time: crate::process::StreamTime::DEFAULT,
        sources: None,
    })
    .await;
    feeder.abort();
    drop(serving);
    result.map(|_| ())
}
