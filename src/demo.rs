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
    /// Calls in the generated day
    #[arg(long, env = "CCSTREAM_DEMO_CALLS", default_value_t = 8000)]
    pub(crate) calls: u64,
    /// Random seed
    #[arg(long, env = "CCSTREAM_DEMO_SEED", default_value_t = 7)]
    pub(crate) seed: u64,
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
    eprintln!("1/3 generating a day of traffic for 3 tenants -> {}", events.display());
    generate::run(GenerateArgs {
        calls: args.calls,
        seed: args.seed,
        out: events.clone(),
        format: Some("jsonl".into()),
        tenants: 3,
        queues_per_tenant: 3,
        days: 1,
        start: "2026-01-06".into(),
        late_frac: 0.02,
        late_horizon_s: 300.0,
        dup_frac: 0.005,
        malformed_frac: 0.001,
    })?;
    eprintln!("2/3 replaying it into tables under {}", data.display());
    let data_s = data.display().to_string();
    replay::run(ReplayArgs {
        input: vec![events],
        data: data_s.clone(),
        config: None,
        threads: 2,
        events_table: true,
        progress: "auto".into(),
        summary_json: false,
    })
    .await?;
    eprintln!("3/3 per-queue summary of the day (SL = answered within 20 s / (offered - short abandons))\n");
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
