//! Query-time metric variants: functions that compute what the views compute, at any
//! parameters, without reprocessing.
//!
//! Scalar functions:
//! - `time_bucket(ts, minutes, 'Zone/Name')`: the UTC instant at which the local
//!   `minutes`-long interval holding `ts` starts (1440 = the local day, which can be 23 or
//!   25 hours long). Buckets are aligned to local midnight.
//! - `local_time(ts, 'Zone/Name')`: the wall-clock time of `ts` in the zone.
//! - `round_exact(x, digits)`: `x` rounded to `digits` decimals by its exact binary value,
//!   halves away from zero (`round` multiplies first, and `0.0193125` — stored as
//!   0.01931249999… — becomes 0.019313; `round_exact` gives 0.019312, as the oracle does).
//!
//! - `json_get(text, 'key'[, 'key'…])`: a value inside a JSON object (the events' `payload`),
//!   as text.
//! - `e_model_mos(round_trip_ms, jitter_ms, loss_rate)`: the E-model MOS of `metrics.md`.
//!
//! Table functions (arguments positional, trailing ones optional):
//! - `interval_metrics_at(minutes, zone, sl_threshold_s, short_abandon_s, sl_comparison,
//!   genesys_flowouts, genesys_exclude_short)` over `call_facts`: every service-level
//!   variant of the metrics page, at any threshold, interval and time zone, and the
//!   wait percentiles of answered calls (`wait_p50_s`, `wait_p90_s`, `wait_p95_s`: exact,
//!   interpolated as PostgreSQL's `percentile_cont`; DataFusion's t-digest
//!   `approx_percentile_cont` can put p95 below p90 in intervals of a dozen calls).
//! - `interval_rollup(minutes, zone)` over `interval_partials`: the `interval_metrics`
//!   columns rolled up to 15/30/60 minutes or days in a zone (exact: partials are 15-minute
//!   UTC intervals and every zone's offset is a multiple of 15 minutes).
//! - `agent_day_metrics_at(zone, poor_jitter_ms, poor_loss_rate, poor_rtt_ms,
//!   poor_degradation)` over `agent_legs`: agent days in a zone with CQD thresholds.

use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, TimestampMillisecondArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, TimeUnit};
use chrono::{DateTime, LocalResult, NaiveDateTime, Offset, TimeZone};
use chrono_tz::Tz;
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{exec_err, plan_err, ScalarValue};
use datafusion::datasource::ViewTable;
use datafusion::error::Result as DfResult;
use datafusion::execution::context::{SessionContext, SessionState};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

/// Registers every function of this module on `ctx`.
pub fn register(ctx: &SessionContext) {
    ctx.register_udf(ScalarUDF::new_from_impl(TimeBucket::new()));
    ctx.register_udf(ScalarUDF::new_from_impl(LocalTime::new()));
    ctx.register_udf(ScalarUDF::new_from_impl(RoundExact::new()));
    ctx.register_udf(ScalarUDF::new_from_impl(JsonGet::new()));
    ctx.register_udf(ScalarUDF::new_from_impl(EModelMos::new()));
    ctx.register_udtf("interval_metrics_at", Arc::new(SqlFunction::IntervalMetricsAt));
    ctx.register_udtf("interval_rollup", Arc::new(SqlFunction::IntervalRollup));
    ctx.register_udtf("agent_day_metrics_at", Arc::new(SqlFunction::AgentDayMetricsAt));
}

/// A function's result `out` as a scalar when every argument was one (constant folding),
/// else as the array.
fn shaped_like(out: ArrayRef, args: &[ColumnarValue]) -> DfResult<ColumnarValue> {
    if args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_))) {
        Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&out, 0)?))
    } else {
        Ok(ColumnarValue::Array(out))
    }
}

fn tz_arg(v: &ColumnarValue, fname: &str) -> DfResult<Tz> {
    match v {
        ColumnarValue::Scalar(
            ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s)) | ScalarValue::Utf8View(Some(s)),
        ) => parse_tz(s).map_err(|e| datafusion::error::DataFusionError::Execution(format!("{fname}: {e}"))),
        _ => exec_err!("{fname}: the time zone must be a constant string such as 'Europe/Berlin'"),
    }
}

fn parse_tz(s: &str) -> Result<Tz, String> {
    s.parse::<Tz>().map_err(|_| format!("unknown time zone {s:?} (expected an IANA name such as 'America/New_York')"))
}

fn ts_millis(v: &ColumnarValue, rows: usize) -> DfResult<TimestampMillisecondArray> {
    let a = v.to_array(rows)?;
    let a = cast(&a, &DataType::Timestamp(TimeUnit::Millisecond, None))?;
    Ok(a.as_primitive().clone())
}

/// Local wall-clock milliseconds of a UTC instant.
fn to_local(tz: &Tz, utc_ms: i64) -> i64 {
    match DateTime::from_timestamp_millis(utc_ms) {
        Some(dt) => utc_ms + tz.offset_from_utc_datetime(&dt.naive_utc()).fix().local_minus_utc() as i64 * 1000,
        None => utc_ms,
    }
}

/// The UTC instant of a local wall-clock time (the earlier one when ambiguous; for a time
/// in a DST gap, the instant the gap ends).
fn from_local(tz: &Tz, local_ms: i64) -> i64 {
    let Some(naive) = DateTime::from_timestamp_millis(local_ms).map(|d| d.naive_utc()) else {
        return local_ms;
    };
    let resolve = |n: NaiveDateTime| match tz.from_local_datetime(&n) {
        LocalResult::Single(d) | LocalResult::Ambiguous(d, _) => Some(d.timestamp_millis()),
        LocalResult::None => None,
    };
    // A gap is at most a few hours: walk forward in 15-minute steps to its end.
    (0..=16)
        .find_map(|i| resolve(naive + chrono::Duration::minutes(15 * i)))
        .unwrap_or(local_ms - to_local(tz, local_ms) + local_ms)
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct TimeBucket {
    signature: Signature,
}

impl TimeBucket {
    fn new() -> Self {
        TimeBucket { signature: Signature::any(3, Volatility::Immutable) }
    }
}

impl ScalarUDFImpl for TimeBucket {
    fn name(&self) -> &str {
        "time_bucket"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let minutes = match &args.args[1] {
            ColumnarValue::Scalar(s) => match s.cast_to(&DataType::Int64)? {
                ScalarValue::Int64(Some(m)) if m > 0 && (m <= 60 && 60 % m == 0 || m == 1440) => m,
                _ => return exec_err!("time_bucket: minutes must divide an hour (1..60) or be 1440 (a day)"),
            },
            _ => return exec_err!("time_bucket: minutes must be a constant"),
        };
        let tz = tz_arg(&args.args[2], "time_bucket")?;
        let ts = ts_millis(&args.args[0], args.number_rows)?;
        let width = minutes * 60_000;
        let out: TimestampMillisecondArray = ts
            .iter()
            .map(|v| {
                v.map(|utc| {
                    let local = to_local(&tz, utc);
                    from_local(&tz, local.div_euclid(width) * width)
                })
            })
            .collect();
        let out: ArrayRef = Arc::new(out.with_timezone("UTC"));
        shaped_like(out, &args.args)
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct LocalTime {
    signature: Signature,
}

impl LocalTime {
    fn new() -> Self {
        LocalTime { signature: Signature::any(2, Volatility::Immutable) }
    }
}

impl ScalarUDFImpl for LocalTime {
    fn name(&self) -> &str {
        "local_time"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Timestamp(TimeUnit::Millisecond, None))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let tz = tz_arg(&args.args[1], "local_time")?;
        let ts = ts_millis(&args.args[0], args.number_rows)?;
        let out: TimestampMillisecondArray = ts.iter().map(|v| v.map(|utc| to_local(&tz, utc))).collect();
        let out: ArrayRef = Arc::new(out);
        shaped_like(out, &args.args)
    }
}

/// Rounds `x` to `digits` decimals by its exact binary value, halves away from zero.
pub fn round_exact(x: f64, digits: i32) -> f64 {
    if !x.is_finite() {
        return x;
    }
    let m = 10f64.powi(digits);
    let p = x * m;
    if !p.is_finite() {
        return x;
    }
    // x·m = p + err exactly. Only when p sits on a half can err move the result, because
    // every half below 2^52 is representable, so p would not round across one.
    let err = x.mul_add(m, -p);
    let frac = p - p.trunc();
    let r = if frac.abs() == 0.5 && err != 0.0 {
        if (err < 0.0) == (p > 0.0) {
            p.trunc()
        } else {
            p.trunc() + p.signum()
        }
    } else {
        p.round()
    };
    r / m
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct RoundExact {
    signature: Signature,
}

impl RoundExact {
    fn new() -> Self {
        RoundExact { signature: Signature::exact(vec![DataType::Float64, DataType::Int64], Volatility::Immutable) }
    }
}

impl ScalarUDFImpl for RoundExact {
    fn name(&self) -> &str {
        "round_exact"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Float64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let digits = match &args.args[1] {
            ColumnarValue::Scalar(ScalarValue::Int64(Some(d))) if (0..=15).contains(d) => *d as i32,
            _ => return exec_err!("round_exact: digits must be a constant between 0 and 15"),
        };
        let x = args.args[0].to_array(args.number_rows)?;
        let x: &arrow::array::Float64Array = x.as_primitive();
        let out: arrow::array::Float64Array = x.unary(|v| round_exact(v, digits));
        let out: ArrayRef = Arc::new(out);
        shaped_like(out, &args.args)
    }
}

/// `json_get(text, 'key'[, 'key'…])`: the value at that path of a JSON object (the events'
/// `payload`), as text — strings as they are, other scalars as JSON text, objects and arrays
/// as JSON; NULL when the text is not JSON or the path is absent or `null`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct JsonGet {
    signature: Signature,
}

impl JsonGet {
    fn new() -> Self {
        JsonGet { signature: Signature::variadic_any(Volatility::Immutable) }
    }
}

fn json_at(text: &str, path: &[String]) -> Option<String> {
    let mut v: serde_json::Value = serde_json::from_str(text).ok()?;
    for key in path {
        v = v.get_mut(key.as_str())?.take();
    }
    match v {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s),
        other => Some(other.to_string()),
    }
}

impl ScalarUDFImpl for JsonGet {
    fn name(&self) -> &str {
        "json_get"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        if args.args.len() < 2 {
            return exec_err!("json_get(text, 'key', ...) needs a text and at least one key");
        }
        let mut path = Vec::new();
        for a in &args.args[1..] {
            match a {
                ColumnarValue::Scalar(
                    ScalarValue::Utf8(Some(k)) | ScalarValue::Utf8View(Some(k)) | ScalarValue::LargeUtf8(Some(k)),
                ) => path.push(k.clone()),
                _ => return exec_err!("json_get: the keys must be constant strings"),
            }
        }
        let text = cast(&args.args[0].to_array(args.number_rows)?, &DataType::Utf8)?;
        let text = text.as_string::<i32>();
        let out: arrow::array::StringArray = text.iter().map(|t| t.and_then(|t| json_at(t, &path))).collect();
        let out: ArrayRef = Arc::new(out);
        shaped_like(out, &args.args)
    }
}

/// `e_model_mos(round_trip_ms, jitter_ms, loss_rate)`: the E-model MOS of `metrics.md`
/// (R0 = 94.768); NULL when an input is NULL.
#[derive(Debug, PartialEq, Eq, Hash)]
struct EModelMos {
    signature: Signature,
}

impl EModelMos {
    fn new() -> Self {
        EModelMos {
            signature: Signature::exact(
                vec![DataType::Float64, DataType::Float64, DataType::Float64],
                Volatility::Immutable,
            ),
        }
    }
}

impl ScalarUDFImpl for EModelMos {
    fn name(&self) -> &str {
        "e_model_mos"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Float64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let cols = args.args.iter().map(|a| a.to_array(args.number_rows)).collect::<DfResult<Vec<_>>>()?;
        let [rtt, jitter, loss] = [0, 1, 2].map(|i| cols[i].as_primitive::<arrow::datatypes::Float64Type>());
        let out: arrow::array::Float64Array = (0..args.number_rows)
            .map(|i| {
                use arrow::array::Array as _;
                if rtt.is_null(i) || jitter.is_null(i) || loss.is_null(i) {
                    return None;
                }
                Some(ccstream_schemas::quality::mos(rtt.value(i), jitter.value(i), loss.value(i)))
                    .filter(|m| !m.is_nan())
            })
            .collect();
        let out: ArrayRef = Arc::new(out);
        shaped_like(out, &args.args)
    }
}

/// Table functions that are parameterized SQL over the tables.
#[derive(Debug, Clone, Copy)]
enum SqlFunction {
    IntervalMetricsAt,
    IntervalRollup,
    AgentDayMetricsAt,
}

/// A constant argument of a table function.
fn literal(args: &[Expr], i: usize) -> Option<ScalarValue> {
    match args.get(i)? {
        Expr::Literal(v, _) => Some(v.clone()),
        Expr::Cast(c) => literal(std::slice::from_ref(&c.expr), 0),
        Expr::Negative(e) => match literal(std::slice::from_ref(e), 0)? {
            ScalarValue::Int64(Some(v)) => Some(ScalarValue::Int64(Some(-v))),
            ScalarValue::Float64(Some(v)) => Some(ScalarValue::Float64(Some(-v))),
            _ => None,
        },
        _ => None,
    }
}

fn num_arg(fname: &str, args: &[Expr], i: usize, name: &str, default: f64) -> DfResult<f64> {
    match literal(args, i) {
        None if args.len() <= i => Ok(default),
        Some(v) if !v.is_null() => match v.cast_to(&DataType::Float64)? {
            ScalarValue::Float64(Some(x)) if x.is_finite() && x >= 0.0 => Ok(x),
            _ => plan_err!("{fname}: argument {} ({name}) must be a number ≥ 0", i + 1),
        },
        _ => plan_err!("{fname}: argument {} ({name}) must be a constant number", i + 1),
    }
}

fn str_arg(fname: &str, args: &[Expr], i: usize, name: &str, default: &str) -> DfResult<String> {
    match literal(args, i) {
        None if args.len() <= i => Ok(default.to_string()),
        Some(ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)) | ScalarValue::LargeUtf8(Some(s))) => Ok(s),
        _ => plan_err!("{fname}: argument {} ({name}) must be a constant string", i + 1),
    }
}

fn bool_arg(fname: &str, args: &[Expr], i: usize, name: &str) -> DfResult<bool> {
    match literal(args, i) {
        None if args.len() <= i => Ok(false),
        Some(ScalarValue::Boolean(Some(b))) => Ok(b),
        _ => plan_err!("{fname}: argument {} ({name}) must be true or false", i + 1),
    }
}

fn minutes_arg(fname: &str, args: &[Expr]) -> DfResult<i64> {
    let m = num_arg(fname, args, 0, "interval minutes", 15.0)?;
    match m as i64 {
        15 | 30 | 60 | 1440 if m.fract() == 0.0 => Ok(m as i64),
        _ => plan_err!("{fname}: interval minutes must be 15, 30, 60 or 1440 (a local day), not {m}"),
    }
}

fn zone_arg(fname: &str, args: &[Expr], i: usize) -> DfResult<String> {
    let z = str_arg(fname, args, i, "time zone", "UTC")?;
    parse_tz(&z).map_err(|e| datafusion::error::DataFusionError::Plan(format!("{fname}: {e}")))?;
    Ok(z)
}

impl SqlFunction {
    fn name(self) -> &'static str {
        match self {
            SqlFunction::IntervalMetricsAt => "interval_metrics_at",
            SqlFunction::IntervalRollup => "interval_rollup",
            SqlFunction::AgentDayMetricsAt => "agent_day_metrics_at",
        }
    }

    /// The SQL this call stands for. Every interpolated value was validated above: numbers
    /// are formatted from `f64`, zones are known IANA names.
    fn sql(self, args: &[Expr]) -> DfResult<String> {
        let f = self.name();
        Ok(match self {
            SqlFunction::IntervalMetricsAt => {
                if args.len() > 7 {
                    return plan_err!("{f}: at most 7 arguments (minutes, zone, sl_threshold_s, short_abandon_s, sl_comparison, genesys_flowouts, genesys_exclude_short)");
                }
                let minutes = minutes_arg(f, args)?;
                let zone = zone_arg(f, args, 1)?;
                let t_ms = (num_arg(f, args, 2, "sl_threshold_s", 20.0)? * 1000.0).round() as i64;
                let s_ms = (num_arg(f, args, 3, "short_abandon_s", 5.0)? * 1000.0).round() as i64;
                let cmp = str_arg(f, args, 4, "sl_comparison", "<=")?;
                if cmp != "<=" && cmp != "<" {
                    return plan_err!("{f}: sl_comparison must be '<=' or '<', not {cmp:?}");
                }
                let flowouts = bool_arg(f, args, 5, "genesys_flowouts")?;
                let exclude_short = bool_arg(f, args, 6, "genesys_exclude_short")?;
                let genesys_den =
                    format!("a + b{}{}", if flowouts { " + fl" } else { "" }, if exclude_short { " - bs" } else { "" });
                format!(
                    "WITH c AS (
  SELECT tenant_id, queue_id, time_bucket(queued_at, {minutes}, '{zone}') AS interval_start,
         answered, abandoned, overflowed, transferred, wait_ms, handle_ms,
         answered AND wait_ms {cmp} {t_ms} AS a_t,
         abandoned AND wait_ms {cmp} {t_ms} AS b_t,
         abandoned AND wait_ms < {s_ms} AS b_s
  FROM call_facts WHERE queued_at IS NOT NULL
), g AS (
  SELECT tenant_id, queue_id, interval_start,
         count(*) AS o, count(*) FILTER (WHERE answered) AS a, count(*) FILTER (WHERE abandoned) AS b,
         count(*) FILTER (WHERE b_s) AS bs, count(*) FILTER (WHERE a_t) AS at,
         count(*) FILTER (WHERE b_t) AS bt, count(*) FILTER (WHERE overflowed) AS fl,
         count(*) FILTER (WHERE transferred) AS tr,
         sum(wait_ms) FILTER (WHERE answered) AS sum_aw, sum(wait_ms) FILTER (WHERE abandoned) AS sum_bw,
         sum(handle_ms) FILTER (WHERE answered) AS sum_h, count(handle_ms) FILTER (WHERE answered) AS n_h,
         max(wait_ms) AS max_w,
         percentile_cont(0.5) WITHIN GROUP (ORDER BY wait_ms) FILTER (WHERE answered) AS p50_w,
         percentile_cont(0.9) WITHIN GROUP (ORDER BY wait_ms) FILTER (WHERE answered) AS p90_w,
         percentile_cont(0.95) WITHIN GROUP (ORDER BY wait_ms) FILTER (WHERE answered) AS p95_w
  FROM c GROUP BY tenant_id, queue_id, interval_start
)
SELECT tenant_id, queue_id, interval_start, local_time(interval_start, '{zone}') AS local_start,
       o AS offered, a AS answered, b AS abandoned, bs AS short_abandoned,
       at AS answered_within_sl, bt AS abandoned_within_sl, fl AS overflowed,
       CAST(at AS DOUBLE) / nullif(o - bs, 0)         AS service_level,
       CAST(at AS DOUBLE) / nullif(a, 0)              AS sl_handled,
       CAST(at AS DOUBLE) / nullif(o - bt, 0)         AS sl_ignore_abandons,
       CAST(at + bt AS DOUBLE) / nullif(o, 0)         AS sl_positive_abandons,
       CAST(at AS DOUBLE) / nullif(o, 0)              AS sl_negative_abandons,
       CAST(at AS DOUBLE) / nullif({genesys_den}, 0)  AS sl_genesys,
       CAST(sum_aw AS DOUBLE) / nullif(a, 0) / 1000.0 AS asa_s,
       CAST(sum_h AS DOUBLE) / nullif(n_h, 0) / 1000.0 AS aht_s,
       CAST(b AS DOUBLE) / nullif(o, 0)               AS abandon_rate,
       CAST(max_w AS DOUBLE) / 1000.0                 AS max_wait_s,
       CAST(a AS DOUBLE) / nullif(o, 0)               AS answer_rate,
       CAST(tr AS DOUBLE) / nullif(a, 0)              AS transfer_rate,
       CAST(sum_bw AS DOUBLE) / nullif(b, 0) / 1000.0 AS avg_abandon_s,
       {t_ms} AS sl_threshold_ms, {s_ms} AS short_abandon_ms,
       CAST(p50_w AS DOUBLE) / 1000.0                 AS wait_p50_s,
       CAST(p90_w AS DOUBLE) / 1000.0                 AS wait_p90_s,
       CAST(p95_w AS DOUBLE) / 1000.0                 AS wait_p95_s
FROM g"
                )
            }
            SqlFunction::IntervalRollup => {
                if args.len() > 2 {
                    return plan_err!("{f}: at most 2 arguments (minutes, zone)");
                }
                let minutes = minutes_arg(f, args)?;
                let zone = zone_arg(f, args, 1)?;
                format!(
                    "WITH p AS (SELECT *, time_bucket(interval_start, {minutes}, '{zone}') AS bucket FROM interval_partials)
SELECT tenant_id, queue_id, bucket AS interval_start, local_time(bucket, '{zone}') AS local_start,
       sum(offered) AS offered, sum(answered) AS answered, sum(abandoned) AS abandoned,
       sum(short_abandoned) AS short_abandoned, sum(answered_within_sl) AS answered_within_sl,
       CAST(sum(answered_within_sl) AS DOUBLE) / nullif(sum(offered) - sum(short_abandoned), 0) AS service_level,
       CAST(sum(sum_answer_wait_ms) AS DOUBLE) / nullif(sum(answered), 0) / 1000.0 AS asa_s,
       CAST(sum(sum_handle_ms) AS DOUBLE) / nullif(sum(n_handle), 0) / 1000.0 AS aht_s,
       CAST(sum(abandoned) AS DOUBLE) / nullif(sum(offered), 0) AS abandon_rate,
       CAST(max(max_wait_ms) AS DOUBLE) / 1000.0 AS max_wait_s
FROM p GROUP BY tenant_id, queue_id, bucket"
                )
            }
            SqlFunction::AgentDayMetricsAt => {
                if args.len() > 5 {
                    return plan_err!("{f}: at most 5 arguments (zone, poor_jitter_ms, poor_loss_rate, poor_rtt_ms, poor_degradation)");
                }
                let zone = zone_arg(f, args, 0)?;
                let jit = num_arg(f, args, 1, "poor_jitter_ms", 30.0)?;
                let loss = num_arg(f, args, 2, "poor_loss_rate", 0.1)?;
                let rtt = num_arg(f, args, 3, "poor_rtt_ms", 500.0)?;
                let degr = num_arg(f, args, 4, "poor_degradation", 1.0)?;
                let poor = format!(
                    "(coalesce(jitter_ms > {jit:?}, false) OR coalesce(packet_loss_rate > {loss:?}, false) \
                     OR coalesce(round_trip_ms > {rtt:?}, false) OR coalesce(audio_degradation > {degr:?}, false))"
                );
                crate::engine::AGENT_DAY_METRICS_SQL.replace(
                    "FROM agent_legs",
                    &format!(
                        "FROM (SELECT * EXCLUDE (day, poor), CAST(local_time(answered_at, '{zone}') AS DATE) AS day, \
                             {poor} AS poor FROM agent_legs) AS l"
                    ),
                )
            }
        })
    }
}

impl TableFunctionImpl for SqlFunction {
    fn call_with_args(&self, args: TableFunctionArgs<'_, '_>) -> DfResult<Arc<dyn TableProvider>> {
        let sql = self.sql(args.exprs())?;
        let Some(state) = args.session().as_any().downcast_ref::<SessionState>() else {
            return plan_err!("{}: needs a DataFusion SessionState", self.name());
        };
        // Planning only resolves tables already registered in memory: it never waits on IO.
        // The SQL above is DataFusion's own (`* EXCLUDE`), whatever dialect the session parses.
        let statement = state.sql_to_statement(&sql, &datafusion::config::Dialect::Generic)?;
        let plan = futures::executor::block_on(state.statement_to_plan(statement))?;
        Ok(Arc::new(ViewTable::new(plan, Some(sql))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_exact_uses_the_binary_value() {
        assert_eq!(round_exact(0.618 / 32.0, 6), 0.019312); // 0.0193124999…
        assert_eq!(round_exact(0.125, 2), 0.13); // an exact half: away from zero
        assert_eq!(round_exact(-0.125, 2), -0.13);
        assert_eq!(round_exact(2.5, 0), 3.0);
        assert_eq!(round_exact(1.0000125, 5), 1.00001);
        assert!(round_exact(f64::NAN, 3).is_nan());
    }

    #[test]
    fn local_buckets_follow_the_zone() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        // 2026-03-29 is the spring-forward day in Berlin: 23 hours long.
        let t = 1_774_771_200_000 + 12 * 3_600_000; // 2026-03-29T12:00Z
        let day_start = from_local(&berlin, to_local(&berlin, t).div_euclid(86_400_000) * 86_400_000);
        assert_eq!(day_start, 1_774_738_800_000); // 2026-03-28T23:00Z = local midnight (CET)
        let kathmandu: Tz = "Asia/Kathmandu".parse().unwrap(); // UTC+05:45
        let t = 1_767_225_600_000; // 2026-01-01T00:00Z = 05:45 local
        let half_hour = from_local(&kathmandu, to_local(&kathmandu, t).div_euclid(1_800_000) * 1_800_000);
        assert_eq!(t - half_hour, 15 * 60_000, "05:45 local falls in the 05:30 local half hour");
    }
}
