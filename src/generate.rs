//! `ccstream generate`: deterministic, realistic contact-center traffic as canonical events.
//!
//! The model, per tenant (each in its own IANA time zone):
//! - Arrivals: N calls spread over the days (weekdays busier than weekends) with a
//!   two-peak business-day curve in the tenant's local time (DST-correct).
//! - Queues with skills: each agent serves one or two of the tenant's queues; some queues
//!   overflow to a sibling after a delay.
//! - Agents work shifts (login, two breaks, lunch, logout → `agent_state_changed`) and take
//!   one call at a time: a call waits until a skilled agent on shift is free — queueing
//!   emerges from the load, it is not drawn from a distribution. Staffing follows the
//!   expected load, so service levels land in a realistic range.
//! - Callers abandon after an exponential patience (with some very short hang-ups); 10 %
//!   of offers ring out (ring-no-answer) and are re-offered; legs have holds, some calls are
//!   transferred to a second agent, every leg ends in after-call work; legs carry media
//!   quality (a few agents sit on a bad network).
//! - Delivery: each event arrives after a small delay; `--late-frac` arrive much later,
//!   `--dup-frac` arrive twice; `--malformed-frac` adds broken lines (JSONL only). The file
//!   is in arrival order.
//!
//! Same arguments → byte-identical output.

use std::collections::BinaryHeap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ccstream_processor::batch::{to_events_schema, JsonDecoder};
use ccstream_schemas::{format_rfc3339_ms, format_uuid, Event, EventType, MS_PER_DAY};
use chrono::{NaiveDate, TimeZone};
use chrono_tz::Tz;
use clap::Args;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Exp, LogNormal};

#[derive(Debug, Args)]
pub(crate) struct GenerateArgs {
    /// Number of calls
    #[arg(long, env = "CCSTREAM_GEN_CALLS", default_value = "10000", value_parser = parse_count)]
    pub(crate) calls: u64,
    /// Random seed: the same arguments give the same file
    #[arg(long, env = "CCSTREAM_GEN_SEED", default_value_t = 42)]
    pub(crate) seed: u64,
    /// Output file
    #[arg(long, env = "CCSTREAM_GEN_OUT")]
    pub(crate) out: PathBuf,
    /// Output format (default: from the file extension)
    #[arg(long, env = "CCSTREAM_GEN_FORMAT", value_parser = ["jsonl", "parquet"])]
    pub(crate) format: Option<String>,
    /// Tenants (each in its own time zone)
    #[arg(long, env = "CCSTREAM_GEN_TENANTS", default_value_t = 4)]
    pub(crate) tenants: usize,
    /// Queues per tenant
    #[arg(long, env = "CCSTREAM_GEN_QUEUES", default_value_t = 4)]
    pub(crate) queues_per_tenant: usize,
    /// Days of traffic
    #[arg(long, env = "CCSTREAM_GEN_DAYS", default_value_t = 7)]
    pub(crate) days: u32,
    /// First day (UTC date)
    #[arg(long, env = "CCSTREAM_GEN_START", default_value = "2026-01-05")]
    pub(crate) start: String,
    /// Fraction of events delivered late (1 s to --late-horizon-s after they happened)
    #[arg(long, env = "CCSTREAM_GEN_LATE_FRAC", default_value_t = 0.02)]
    pub(crate) late_frac: f64,
    /// Longest extra delay of late events and duplicate copies, seconds
    #[arg(long, env = "CCSTREAM_GEN_LATE_HORIZON_S", default_value_t = 300.0)]
    pub(crate) late_horizon_s: f64,
    /// Fraction of events delivered twice
    #[arg(long, env = "CCSTREAM_GEN_DUP_FRAC", default_value_t = 0.005)]
    pub(crate) dup_frac: f64,
    /// Malformed lines per event (JSONL only)
    #[arg(long, env = "CCSTREAM_GEN_MALFORMED_FRAC", default_value_t = 0.001)]
    pub(crate) malformed_frac: f64,
}

fn parse_count(s: &str) -> Result<u64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if !(1.0..=1e9).contains(&v) || v.fract() != 0.0 {
        return Err(format!("{s} must be a whole number between 1 and 1e9"));
    }
    Ok(v as u64)
}

const ZONES: [&str; 10] = [
    "America/New_York",
    "Europe/London",
    "Europe/Berlin",
    "America/Chicago",
    "Asia/Kolkata",
    "America/Los_Angeles",
    "Australia/Sydney",
    "Asia/Tokyo",
    "America/Sao_Paulo",
    "Asia/Kathmandu",
];
const QUEUE_NAMES: [&str; 8] = ["sales", "support", "billing", "tech", "retention", "vip", "claims", "orders"];
const WRAPUP: [&str; 5] = ["resolved", "follow_up", "escalated", "sale", "info_only"];

/// Relative call intensity at local hour `h`: a morning and an afternoon peak, a night floor.
fn intensity(h: f64) -> f64 {
    let g = |m: f64, s: f64| (-0.5 * ((h - m) / s).powi(2)).exp();
    0.02 + g(10.0, 1.5) + 0.8 * g(14.5, 1.8)
}

fn day_weight(weekday: u32) -> f64 {
    match weekday {
        5 => 0.35,
        6 => 0.15,
        _ => 1.0,
    }
}

struct Queue {
    name: String,
    tenant: usize,
    overflow_to: Option<usize>,
    overflow_after_ms: i64,
    patience: Exp<f64>,
    talk: LogNormal<f64>,
}

struct Agent {
    name: String,
    tenant: usize,
    skills: Vec<usize>,
    bad_network: bool,
    /// Per day: (login, logout) in UTC ms and the breaks in between.
    shifts: Vec<Shift>,
    free_at: i64,
}

struct Shift {
    start: i64,
    end: i64,
    breaks: [(i64, i64); 3],
}

impl Agent {
    /// The first moment at or after `t` when the agent is logged in and not on a break.
    fn next_available(&self, t: i64) -> Option<i64> {
        let i = self.shifts.partition_point(|s| s.end <= t);
        let s = self.shifts.get(i)?;
        let mut at = t.max(s.start);
        for b in &s.breaks {
            if at >= b.0 && at < b.1 {
                at = b.1;
            }
        }
        (at < s.end).then_some(at)
    }
}

/// One generated event, compact until it is written.
#[derive(Clone)]
struct Gen {
    arrival: i64,
    seq: u64,
    t: i64,
    eid: u128,
    call: u128,
    tenant: u16,
    queue: Option<u16>,
    agent: Option<u32>,
    etype: EventType,
    extra: Extra,
}

#[derive(Clone, Copy)]
enum Extra {
    None,
    Queued { priority: i8, overflow_from: Option<u16> },
    Transfer { target: u32, consult: bool, media: Option<[f64; 4]> },
    Ended { by_agent: bool, media: Option<[f64; 4]> },
    Wrapup(u8),
    State { from: &'static str, to: &'static str, reason: &'static str },
}

fn uuid(rng: &mut ChaCha8Rng) -> u128 {
    let v: u128 = rng.gen();
    (v & !(0xf << 76) & !(0b11 << 62)) | (0x4 << 76) | (0b10 << 62)
}

struct World {
    tenants: Vec<(String, Tz, f64)>,
    queues: Vec<Queue>,
    agents: Vec<Agent>,
}

pub(crate) fn run(args: GenerateArgs) -> Result<()> {
    let format = match args.format.as_deref() {
        Some(f) => f.to_string(),
        None if args.out.extension().is_some_and(|e| e == "parquet") => "parquet".into(),
        None => "jsonl".into(),
    };
    if args.tenants == 0 || args.queues_per_tenant == 0 || args.days == 0 {
        bail!("--tenants, --queues-per-tenant and --days must be at least 1");
    }
    for (name, v) in
        [("--late-frac", args.late_frac), ("--dup-frac", args.dup_frac), ("--malformed-frac", args.malformed_frac)]
    {
        if !(0.0..=1.0).contains(&v) {
            bail!("{name} must be between 0 and 1");
        }
    }
    let start =
        NaiveDate::parse_from_str(&args.start, "%Y-%m-%d").with_context(|| format!("--start {:?}", args.start))?;
    let t0 = start.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc().timestamp_millis();
    let started = std::time::Instant::now();
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let mut world = build_world(&args, &mut rng, t0)?;
    let mut events = simulate(&args, &mut world, &mut rng, t0);
    deliver(&args, &mut events, &mut rng);
    let n_events = events.len();
    let path = &args.out;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let malformed = match format.as_str() {
        "parquet" => {
            write_parquet(path, &world, &events)?;
            0
        }
        _ => write_jsonl(path, &world, &events, args.malformed_frac, &mut rng)?,
    };
    eprintln!(
        "generated {} calls, {} events ({} agents, {} queues, {} tenants), {} malformed lines -> {} in {:.1} s",
        args.calls,
        n_events,
        world.agents.len(),
        world.queues.len(),
        world.tenants.len(),
        malformed,
        path.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn build_world(args: &GenerateArgs, rng: &mut ChaCha8Rng, t0: i64) -> Result<World> {
    let size = LogNormal::new(0.0, 0.8).expect("valid");
    let mut tenants = Vec::new();
    for i in 0..args.tenants {
        let tz: Tz = ZONES[i % ZONES.len()].parse().map_err(|e| anyhow::anyhow!("{e}"))?;
        tenants.push((format!("tenant-{:02}", i + 1), tz, size.sample(rng)));
    }
    let total_w: f64 = tenants.iter().map(|t| t.2).sum();
    let mut queues = Vec::new();
    for (ti, _) in tenants.iter().enumerate() {
        let first = queues.len();
        for qi in 0..args.queues_per_tenant {
            let overflow_to = (args.queues_per_tenant > 1 && rng.gen_bool(0.3))
                .then(|| first + (qi + 1 + rng.gen_range(0..args.queues_per_tenant - 1)) % args.queues_per_tenant);
            queues.push(Queue {
                name: format!("{}-{}", tenants[ti].0, QUEUE_NAMES[qi % QUEUE_NAMES.len()])
                    + &if qi >= QUEUE_NAMES.len() { format!("-{}", qi / QUEUE_NAMES.len()) } else { String::new() },
                tenant: ti,
                overflow_to,
                overflow_after_ms: rng.gen_range(25_000..60_000),
                patience: Exp::new(1.0 / rng.gen_range(150_000.0..300_000.0)).expect("valid"),
                talk: LogNormal::new((rng.gen_range(150.0f64..260.0) * 1000.0).ln(), 0.7).expect("valid"),
            });
        }
    }
    // Staffing: agents on shift at the peak hour ≈ 1.3 × the peak offered load in Erlangs.
    let weekdays = (0..args.days).map(|d| day_weight(d % 7)).sum::<f64>();
    let curve: Vec<f64> = (0..240).map(|i| intensity(i as f64 / 10.0)).collect();
    let peak_share_per_hour = curve.iter().cloned().fold(0.0, f64::max) / (curve.iter().sum::<f64>() / 10.0);
    let mut agents = Vec::new();
    for (ti, (tname, tz, w)) in tenants.iter().enumerate() {
        let calls_per_weekday = args.calls as f64 * w / total_w / weekdays;
        let peak_per_hour = calls_per_weekday * peak_share_per_hour;
        let erlangs = peak_per_hour * 330.0 / 3600.0;
        let n = ((erlangs * 1.3 / 0.6).ceil() as usize + 1).max(2);
        let tq: Vec<usize> = (0..queues.len()).filter(|&q| queues[q].tenant == ti).collect();
        for ai in 0..n {
            let mut skills = vec![tq[ai % tq.len()]];
            if tq.len() > 1 && rng.gen_bool(0.5) {
                let other = tq[rng.gen_range(0..tq.len())];
                if other != skills[0] {
                    skills.push(other);
                }
            }
            let mut shifts = Vec::new();
            let start_h: f64 = rng.gen_range(6.5..11.5);
            for d in 0..args.days {
                let works = rng.gen_bool(if d % 7 < 5 { 0.95 } else { 0.35 });
                if !works {
                    continue;
                }
                let local_day = t0 + d as i64 * MS_PER_DAY;
                let at = |h: f64| -> i64 {
                    let naive = chrono::DateTime::from_timestamp_millis(local_day + (h * 3_600_000.0) as i64)
                        .expect("in range")
                        .naive_utc();
                    tz.from_local_datetime(&naive).earliest().map_or(local_day, |d| d.timestamp_millis())
                };
                let jitter = |rng: &mut ChaCha8Rng| rng.gen_range(-0.15..0.15);
                shifts.push(Shift {
                    start: at(start_h),
                    end: at(start_h + 8.5),
                    breaks: [
                        (at(start_h + 2.0 + jitter(rng)), at(start_h + 2.25 + jitter(rng).abs())),
                        (at(start_h + 4.0 + jitter(rng)), at(start_h + 4.5)),
                        (at(start_h + 6.5 + jitter(rng)), at(start_h + 6.75)),
                    ],
                });
            }
            agents.push(Agent {
                name: format!("{tname}-agent-{:03}", ai + 1),
                tenant: ti,
                skills,
                bad_network: rng.gen_bool(0.06),
                shifts,
                free_at: i64::MIN,
            });
        }
    }
    Ok(World { tenants, queues, agents })
}

/// Samples N call arrivals, then serves them in time order with the agents.
fn simulate(args: &GenerateArgs, w: &mut World, rng: &mut ChaCha8Rng, t0: i64) -> Vec<Gen> {
    let total_w: f64 = w.tenants.iter().map(|t| t.2).sum();
    let day_w: Vec<f64> = (0..args.days).map(|d| day_weight(d % 7)).collect();
    let day_total: f64 = day_w.iter().sum();
    let peak = (0..240).map(|i| intensity(i as f64 / 10.0)).fold(0.0, f64::max);
    let mut arrivals: Vec<(i64, usize)> = Vec::with_capacity(args.calls as usize);
    for _ in 0..args.calls {
        let mut x = rng.gen::<f64>() * total_w;
        let tenant = w.tenants.iter().position(|t| {
            x -= t.2;
            x < 0.0
        });
        let tenant = tenant.unwrap_or(w.tenants.len() - 1);
        let mut y = rng.gen::<f64>() * day_total;
        let day = day_w.iter().position(|d| {
            y -= d;
            y < 0.0
        });
        let day = day.unwrap_or(day_w.len() - 1) as i64;
        let h = loop {
            let h = rng.gen_range(0.0..24.0);
            if rng.gen::<f64>() * peak < intensity(h) {
                break h;
            }
        };
        let naive = chrono::DateTime::from_timestamp_millis(t0 + day * MS_PER_DAY + (h * 3_600_000.0) as i64)
            .expect("in range")
            .naive_utc();
        let tz = w.tenants[tenant].1;
        let t = tz
            .from_local_datetime(&naive)
            .earliest()
            .map_or(naive.and_utc().timestamp_millis(), |d| d.timestamp_millis());
        // queue within the tenant, first queues busier
        let tq: Vec<usize> = (0..w.queues.len()).filter(|&q| w.queues[q].tenant == tenant).collect();
        let qw: Vec<f64> = (0..tq.len()).map(|i| 1.0 / (1.0 + i as f64).powf(0.7)).collect();
        let mut z = rng.gen::<f64>() * qw.iter().sum::<f64>();
        let qi = qw.iter().position(|v| {
            z -= v;
            z < 0.0
        });
        arrivals.push((t, tq[qi.unwrap_or(tq.len() - 1)]));
    }
    arrivals.sort_by_key(|a| a.0);

    let mut out = Vec::with_capacity(args.calls as usize * 7);
    let mut emit = |t: i64,
                    call: u128,
                    tenant: usize,
                    queue: Option<usize>,
                    agent: Option<usize>,
                    etype,
                    extra,
                    rng: &mut ChaCha8Rng| {
        out.push(Gen {
            arrival: 0,
            seq: 0,
            t,
            eid: uuid(rng),
            call,
            tenant: tenant as u16,
            queue: queue.map(|q| q as u16),
            agent: agent.map(|a| a as u32),
            etype,
            extra,
        });
    };
    // Agent shifts as state changes.
    for (ai, a) in w.agents.iter().enumerate() {
        for s in &a.shifts {
            let st = |t, from, to, reason| (t, Extra::State { from, to, reason });
            let mut changes = vec![st(s.start, "offline", "available", "login")];
            for (i, b) in s.breaks.iter().enumerate() {
                let (to, why) = if i == 1 { ("lunch", "lunch") } else { ("break", "break") };
                changes.push(st(b.0, "available", to, why));
                changes.push(st(b.1, to, "available", "back"));
            }
            changes.push(st(s.end, "available", "offline", "logout"));
            for (t, extra) in changes {
                emit(t, 0, a.tenant, None, Some(ai), EventType::AgentStateChanged, extra, rng);
            }
        }
    }
    let quick: Exp<f64> = Exp::new(1.0 / 2500.0).expect("valid");
    let ring: Exp<f64> = Exp::new(1.0 / 6000.0).expect("valid");
    let hold: Exp<f64> = Exp::new(1.0 / 40_000.0).expect("valid");
    let acw = LogNormal::new(20_000f64.ln(), 0.8).expect("valid");
    for (t, q) in arrivals {
        let call = uuid(rng);
        let queue = &w.queues[q];
        let tenant = queue.tenant;
        let patience = if rng.gen_bool(0.02) { quick.sample(rng) as i64 } else { queue.patience.sample(rng) as i64 };
        let priority = rng.gen_range(1..=5i8);
        emit(
            t,
            call,
            tenant,
            Some(q),
            None,
            EventType::CallQueued,
            Extra::Queued { priority, overflow_from: None },
            rng,
        );
        // Earliest moment a skilled agent on shift is free, considering the overflow queue
        // once the overflow delay has passed.
        let pick = |agents: &[Agent], at: i64, queues: &[usize]| -> Option<(usize, i64)> {
            agents
                .iter()
                .enumerate()
                .filter(|(_, a)| a.tenant == tenant && a.skills.iter().any(|s| queues.contains(s)))
                .filter_map(|(i, a)| a.next_available(a.free_at.max(at)).map(|f| (i, f)))
                .min_by_key(|&(i, f)| (f, i))
        };
        let mut best = pick(&w.agents, t, &[q]);
        let mut queue_now = q;
        if let Some(ov) = queue.overflow_to {
            let after = t + queue.overflow_after_ms;
            if best.is_none_or(|b| b.1 > after) && patience > queue.overflow_after_ms {
                emit(
                    after,
                    call,
                    tenant,
                    Some(ov),
                    None,
                    EventType::CallQueued,
                    Extra::Queued { priority, overflow_from: Some(q as u16) },
                    rng,
                );
                queue_now = ov;
                let alt = pick(&w.agents, after, &[q, ov]);
                best = match (best, alt) {
                    (Some(a), Some(b)) => Some(if b.1 < a.1 { b } else { a }),
                    (a, b) => a.or(b),
                };
            }
        }
        let deadline = t + patience;
        // ring-no-answer: the first offer rings out and the call waits 15 s more
        let mut offer_at = best.map(|b| b.1);
        if let (Some(at), Some((ai, _))) = (offer_at, best) {
            if at < deadline && rng.gen_bool(0.10) {
                emit(at, call, tenant, Some(queue_now), Some(ai), EventType::AgentOffered, Extra::None, rng);
                offer_at = Some(at + 15_000);
            }
        }
        let Some((a1, _)) = best else {
            emit(deadline, call, tenant, Some(queue_now), None, EventType::CallAbandoned, Extra::None, rng);
            continue;
        };
        let offer = offer_at.expect("set with best");
        let answer = offer + 2000 + ring.sample(rng).min(20_000.0) as i64;
        if answer > deadline {
            if offer < deadline {
                emit(offer, call, tenant, Some(queue_now), Some(a1), EventType::AgentOffered, Extra::None, rng);
            }
            emit(deadline, call, tenant, Some(queue_now), None, EventType::CallAbandoned, Extra::None, rng);
            continue;
        }
        emit(offer, call, tenant, Some(queue_now), Some(a1), EventType::AgentOffered, Extra::None, rng);
        emit(answer, call, tenant, Some(queue_now), Some(a1), EventType::CallAnswered, Extra::None, rng);
        let talk = w.queues[queue_now].talk.sample(rng).clamp(5_000.0, 7_200_000.0) as i64;
        let end1 = leg_body(answer, talk, call, tenant, queue_now, a1, &hold, rng, &mut emit);
        let transfer = rng.gen_bool(0.08);
        let media1 = media(w.agents[a1].bad_network, rng);
        let wrap1 = end1 + acw.sample(rng).min(900_000.0) as i64;
        w.agents[a1].free_at = wrap1;
        let target = transfer
            .then(|| pick(&w.agents, end1, &w.agents[a1].skills.clone()))
            .flatten()
            .filter(|&(b, f)| b != a1 && f < end1 + 60_000);
        emit(
            wrap1,
            call,
            tenant,
            Some(queue_now),
            Some(a1),
            EventType::WrapupEnded,
            Extra::Wrapup(rng.gen_range(0..WRAPUP.len() as u8)),
            rng,
        );
        match target {
            Some((b, f)) => {
                emit(
                    end1,
                    call,
                    tenant,
                    Some(queue_now),
                    Some(a1),
                    EventType::CallTransferred,
                    Extra::Transfer { target: b as u32, consult: rng.gen_bool(0.4), media: media1 },
                    rng,
                );
                let offer2 = f.max(end1 + 500);
                let answer2 = offer2 + 2000 + ring.sample(rng).min(15_000.0) as i64;
                emit(offer2, call, tenant, Some(queue_now), Some(b), EventType::AgentOffered, Extra::None, rng);
                emit(answer2, call, tenant, Some(queue_now), Some(b), EventType::CallAnswered, Extra::None, rng);
                let talk2 = w.queues[queue_now].talk.sample(rng).clamp(5_000.0, 3_600_000.0) as i64 / 2;
                let end2 = leg_body(answer2, talk2, call, tenant, queue_now, b, &hold, rng, &mut emit);
                let media2 = media(w.agents[b].bad_network, rng);
                emit(
                    end2,
                    call,
                    tenant,
                    Some(queue_now),
                    Some(b),
                    EventType::CallEnded,
                    Extra::Ended { by_agent: rng.gen_bool(0.4), media: media2 },
                    rng,
                );
                let wrap2 = end2 + acw.sample(rng).min(900_000.0) as i64;
                emit(
                    wrap2,
                    call,
                    tenant,
                    Some(queue_now),
                    Some(b),
                    EventType::WrapupEnded,
                    Extra::Wrapup(rng.gen_range(0..WRAPUP.len() as u8)),
                    rng,
                );
                w.agents[b].free_at = wrap2;
            }
            None => {
                emit(
                    end1,
                    call,
                    tenant,
                    Some(queue_now),
                    Some(a1),
                    EventType::CallEnded,
                    Extra::Ended { by_agent: rng.gen_bool(0.4), media: media1 },
                    rng,
                );
            }
        }
    }
    out
}

/// Talk with 0–2 holds from `answer`; returns the leg's end.
#[allow(clippy::too_many_arguments)]
fn leg_body(
    answer: i64,
    talk: i64,
    call: u128,
    tenant: usize,
    queue: usize,
    agent: usize,
    hold: &Exp<f64>,
    rng: &mut ChaCha8Rng,
    emit: &mut impl FnMut(i64, u128, usize, Option<usize>, Option<usize>, EventType, Extra, &mut ChaCha8Rng),
) -> i64 {
    let holds = match rng.gen::<f64>() {
        x if x < 0.30 => 1,
        x if x < 0.40 => 2,
        _ => 0,
    };
    let mut t = answer;
    let slice = talk / (holds + 1);
    for _ in 0..holds {
        t += slice;
        let h = (hold.sample(rng) as i64).clamp(2_000, 1_200_000);
        emit(t, call, tenant, Some(queue), Some(agent), EventType::HoldStarted, Extra::None, rng);
        t += h;
        emit(t, call, tenant, Some(queue), Some(agent), EventType::HoldEnded, Extra::None, rng);
    }
    t + slice
}

/// jitter ms (0.1), loss fraction (0.0001), RTT ms (1), degradation (0.01); ~2 % without a report.
fn media(bad: bool, rng: &mut ChaCha8Rng) -> Option<[f64; 4]> {
    if rng.gen_bool(0.02) {
        return None;
    }
    let round = |v: f64, d: i32| (v * 10f64.powi(d)).round() / 10f64.powi(d);
    let jitter = LogNormal::new(if bad { 16f64.ln() } else { 5f64.ln() }, 0.7).expect("valid").sample(rng);
    let mut loss: f64 = Exp::new(if bad { 50.0 } else { 330.0 }).expect("valid").sample(rng);
    if rng.gen_bool(0.005) {
        loss = rng.gen_range(0.08..0.3);
    }
    let loss = loss.min(0.9);
    let rtt = LogNormal::new(if bad { 140f64.ln() } else { 55f64.ln() }, 0.5).expect("valid").sample(rng);
    let degr = (0.15 + 5.0 * loss + 0.012 * jitter + rng.gen_range(-0.1..0.1)).clamp(0.0, 5.0);
    Some([round(jitter, 1), round(loss, 4), round(rtt, 0), round(degr, 2)])
}

/// Arrival times: a short delay for everyone, a long one for late events, and duplicates.
fn deliver(args: &GenerateArgs, events: &mut Vec<Gen>, rng: &mut ChaCha8Rng) {
    let delay = Exp::new(1.0 / 150.0).expect("valid");
    let horizon = (args.late_horizon_s * 1000.0).max(1001.0);
    let n = events.len();
    for e in events.iter_mut() {
        e.arrival = e.t + delay.sample(rng) as i64;
        if rng.gen_bool(args.late_frac) {
            e.arrival += rng.gen_range(1000.0..horizon) as i64;
        }
    }
    for i in 0..n {
        if rng.gen_bool(args.dup_frac) {
            let mut copy = events[i].clone();
            copy.arrival += rng.gen_range(0.0..horizon) as i64;
            events.push(copy);
        }
    }
    for (i, e) in events.iter_mut().enumerate() {
        e.seq = i as u64;
    }
    // file order = arrival order (ties: generation order)
    let mut heap: BinaryHeap<std::cmp::Reverse<(i64, u64, usize)>> =
        events.iter().enumerate().map(|(i, e)| std::cmp::Reverse((e.arrival, e.seq, i))).collect();
    let mut order = Vec::with_capacity(events.len());
    while let Some(std::cmp::Reverse((_, _, i))) = heap.pop() {
        order.push(i);
    }
    let sorted: Vec<Gen> = order.into_iter().map(|i| events[i].clone()).collect();
    *events = sorted;
}

fn to_event<'w>(w: &'w World, g: &Gen) -> Event<'w> {
    let mut id = String::with_capacity(36);
    format_uuid(g.eid, &mut id);
    let mut ev = Event::new(id, w.tenants[g.tenant as usize].0.clone(), g.etype, g.t);
    if g.call != 0 {
        let mut c = String::with_capacity(36);
        format_uuid(g.call, &mut c);
        ev.call_id = Some(c.into());
    }
    ev.queue_id = g.queue.map(|q| w.queues[q as usize].name.as_str().into());
    ev.agent_id = g.agent.map(|a| w.agents[a as usize].name.as_str().into());
    ev.ingested_at = Some(format_rfc3339_ms(g.arrival).into());
    let set_media = |ev: &mut Event<'w>, m: Option<[f64; 4]>| {
        if let Some(m) = m {
            ev.jitter_ms = Some(m[0]);
            ev.packet_loss_rate = Some(m[1]);
            ev.round_trip_ms = Some(m[2]);
            ev.audio_degradation = Some(m[3]);
        }
    };
    match g.extra {
        Extra::None => {}
        Extra::Queued { priority, overflow_from } => {
            ev.priority = Some(priority);
            ev.overflow_from_queue_id = overflow_from.map(|q| w.queues[q as usize].name.as_str().into());
        }
        Extra::Transfer { target, consult, media } => {
            ev.target_agent_id = Some(w.agents[target as usize].name.as_str().into());
            ev.transfer_type = Some(if consult { "consult" } else { "blind" }.into());
            set_media(&mut ev, media);
        }
        Extra::Ended { by_agent, media } => {
            ev.disconnect_by = Some(if by_agent { "agent" } else { "customer" }.into());
            set_media(&mut ev, media);
        }
        Extra::Wrapup(code) => ev.wrapup_code = Some(WRAPUP[code as usize].into()),
        Extra::State { from, to, reason } => {
            ev.from_state = Some(from.into());
            ev.to_state = Some(to.into());
            ev.state_reason = Some(reason.into());
        }
    }
    ev
}

fn write_jsonl(path: &Path, w: &World, events: &[Gen], malformed_frac: f64, rng: &mut ChaCha8Rng) -> Result<u64> {
    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut malformed = 0;
    for g in events {
        let line = to_event(w, g).to_json();
        if rng.gen_bool(malformed_frac) {
            malformed += 1;
            let bad = match rng.gen_range(0..4) {
                0 => line[..rng.gen_range(5..line.len() - 2)].to_string(),
                1 => line.replacen("\":", "\"=", 1),
                2 => line.replacen("\"occurred_at\":\"", "\"occurred_at\":", 1),
                _ => format!("<<< {} upstream connection reset >>>", format_rfc3339_ms(g.arrival)),
            };
            writeln!(out, "{bad}")?;
        }
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    Ok(malformed)
}

fn write_parquet(path: &Path, w: &World, events: &[Gen]) -> Result<()> {
    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .build();
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, ccstream_schemas::events_schema(), Some(props))?;
    let decoder = JsonDecoder::new("generator", 0);
    for chunk in events.chunks(64 * 1024) {
        let lines: Vec<String> = chunk.iter().map(|g| to_event(w, g).to_json()).collect();
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        let (batch, _, rejected) = decoder.decode(&refs)?;
        anyhow::ensure!(rejected.is_empty(), "generated an invalid event: {:?}", rejected.first());
        let batch = to_events_schema(&batch, "generator", 0)?;
        writer.write(&batch)?;
    }
    writer.close()?;
    Ok(())
}
