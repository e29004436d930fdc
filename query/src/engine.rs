//! The query engine: the tables of a data directory and the metric views over them.
//!
//! Views (created when their base table exists):
//! - `interval_metrics`: `interval_partials` merged over log partitions, ratios finished;
//!   the columns of the oracle's `interval_metrics`, then extra ones.
//! - `agent_day_metrics`: `agent_legs` folded per tenant, agent and UTC day; the oracle's
//!   columns.
//!
//! - `sbc_legs`: one row per SBC leg (`SessionId`, `SIPCallId`) from the `sbc_leg` events,
//!   the latest stage's values (`CALL_END` over `CALL_CONNECT` over `CALL_START`).
//! - `media_streams`: one row per media stream (SBC media CDRs, RFC 6035 reports, Graph
//!   call-record streams — the latest record version of each) with the CQD classification
//!   (historical thresholds) and the E-model MOS; joins to `sbc_legs` on `sip_call_id`.
//! - `agent_state_time`: time per agent, state and day from `presence_changed` and
//!   `agent_state_changed` events; `agent_occupancy`: busy over the time the agent could
//!   take calls (presence `Available` idle time plus busy, else agent-state `available`).
//!
//! Ratios with a zero denominator are NULL. Durations are integer ms summed, then divided.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use ccstream_schemas::TABLES;
use datafusion::dataframe::DataFrame;
use datafusion::execution::context::SessionContext;

use crate::access::Scope;
use crate::catalog::{scoped_schema, Tables};
use crate::server::planner_state;
use crate::{Error, Result};

/// `sbc_legs`: per SBC leg, the values of its latest stage.
pub const SBC_LEGS_SQL: &str = "
SELECT tenant_id, session_id, sip_call_id, source,
       TRY_CAST(json_get(payload, 'leg_id') AS INT)                      AS leg_id,
       report_type                                                       AS last_report,
       json_get(payload, 'origin')                                       AS origin,
       arrow_cast(json_get(payload, 'setup_at'), 'Timestamp(Millisecond, Some(\"UTC\"))') AS setup_at,
       arrow_cast(json_get(payload, 'connect_at'), 'Timestamp(Millisecond, Some(\"UTC\"))') AS connect_at,
       arrow_cast(json_get(payload, 'release_at'), 'Timestamp(Millisecond, Some(\"UTC\"))') AS release_at,
       TRY_CAST(json_get(payload, 'duration_s') AS BIGINT)               AS duration_s,
       json_get(payload, 'caller')                                       AS caller,
       json_get(payload, 'callee')                                       AS callee,
       json_get(payload, 'src_uri')                                      AS src_uri,
       json_get(payload, 'dst_uri')                                      AS dst_uri,
       json_get(payload, 'ip_group')                                     AS ip_group,
       json_get(payload, 'termination_side')                             AS termination_side,
       json_get(payload, 'termination_reason')                           AS termination_reason,
       json_get(payload, 'termination_category')                         AS termination_category,
       json_get(payload, 'sip_termination_reason')                       AS sip_termination_reason,
       json_get(payload, 'source_ip')                                    AS source_ip,
       json_get(payload, 'dest_ip')                                      AS dest_ip,
       payload
FROM (
  SELECT *, row_number() OVER (PARTITION BY tenant_id, session_id, sip_call_id
                               ORDER BY CASE report_type WHEN 'CALL_END' THEN 3 WHEN 'CALL_CONNECT' THEN 2 ELSE 1 END DESC,
                                        occurred_at DESC) AS stage
  FROM (SELECT *, call_id AS session_id, json_get(payload, 'sip_call_id') AS sip_call_id,
               json_get(payload, 'report_type') AS report_type
        FROM events WHERE event_type = 'sbc_leg'))
WHERE stage = 1";

/// `media_streams`: media-quality samples with the CQD rule and the E-model MOS.
pub const MEDIA_STREAMS_SQL: &str = "
SELECT tenant_id, source, call_id, agent_id, event_id,
       coalesce(json_get(payload, 'sip_call_id'), call_id)              AS sip_call_id,
       coalesce(json_get(payload, 'report_type'), json_get(payload, 'report')) AS report,
       occurred_at, jitter_ms, packet_loss_rate, round_trip_ms, audio_degradation,
       (jitter_ms IS NOT NULL OR packet_loss_rate IS NOT NULL OR round_trip_ms IS NOT NULL
        OR audio_degradation IS NOT NULL)                                AS classified,
       coalesce(jitter_ms > 30 OR packet_loss_rate > 0.1 OR round_trip_ms > 500
                OR audio_degradation > 1.0, false)                       AS poor,
       e_model_mos(round_trip_ms, jitter_ms, packet_loss_rate)           AS mos,
       TRY_CAST(json_get(payload, 'mos_cq') AS DOUBLE)                   AS reported_mos_cq,
       payload
FROM (
  SELECT *, row_number() OVER (PARTITION BY tenant_id, source, call_id, coalesce(json_get(payload, 'stream_key'), event_id)
                               ORDER BY TRY_CAST(json_get(payload, 'version') AS BIGINT) DESC NULLS LAST, event_id) AS latest
  FROM events WHERE event_type = 'media_stream')
WHERE latest = 1";

/// `interval_metrics`: merges partials (sums, max) and finishes the ratios.
pub const INTERVAL_METRICS_SQL: &str = "
SELECT tenant_id, queue_id, interval_start,
       sum(offered)                                                          AS offered,
       sum(answered)                                                         AS answered,
       sum(abandoned)                                                        AS abandoned,
       sum(short_abandoned)                                                  AS short_abandoned,
       sum(answered_within_sl)                                               AS answered_within_sl,
       CAST(sum(answered_within_sl) AS DOUBLE)
         / nullif(sum(offered) - sum(short_abandoned), 0)                    AS service_level,
       CAST(sum(sum_answer_wait_ms) AS DOUBLE) / nullif(sum(answered), 0) / 1000.0 AS asa_s,
       CAST(sum(sum_handle_ms) AS DOUBLE) / nullif(sum(n_handle), 0) / 1000.0      AS aht_s,
       CAST(sum(abandoned) AS DOUBLE) / nullif(sum(offered), 0)              AS abandon_rate,
       CAST(max(max_wait_ms) AS DOUBLE) / 1000.0                             AS max_wait_s,
       CAST(sum(answered) AS DOUBLE) / nullif(sum(offered), 0)               AS answer_rate,
       CAST(sum(transferred) AS DOUBLE) / nullif(sum(answered), 0)           AS transfer_rate,
       CAST(sum(sum_abandon_wait_ms) AS DOUBLE) / nullif(sum(abandoned), 0) / 1000.0 AS avg_abandon_s,
       sum(overflowed)                                                       AS overflowed,
       max(sl_threshold_ms)                                                  AS sl_threshold_ms,
       max(short_abandon_ms)                                                 AS short_abandon_ms
FROM interval_partials
GROUP BY tenant_id, queue_id, interval_start";

/// `agent_day_metrics`: agent legs per tenant, agent and UTC day of the answer.
/// Media averages sum exact decimals, then round to 6 places, as the oracle does.
pub const AGENT_DAY_METRICS_SQL: &str = "
SELECT tenant_id, agent_id, day,
       count(*)                                                              AS handled,
       CAST(sum(handle_ms) AS DOUBLE) / nullif(count(handle_ms), 0) / 1000.0 AS aht_s,
       CAST(coalesce(sum(talk_ms), 0) AS DOUBLE) / 1000.0                    AS talk_s,
       CAST(coalesce(sum(hold_ms), 0) AS DOUBLE) / 1000.0                    AS hold_s,
       CAST(coalesce(sum(acw_ms), 0) AS DOUBLE) / 1000.0                     AS acw_s,
       sum(transfers)                                                        AS transfers,
       round_exact(CAST(sum(CAST(jitter_ms AS DECIMAL(18, 4))) AS DOUBLE)
             / nullif(count(jitter_ms), 0), 6)                               AS avg_jitter_ms,
       round_exact(CAST(sum(CAST(packet_loss_rate AS DECIMAL(18, 6))) AS DOUBLE)
             / nullif(count(packet_loss_rate), 0), 6)                        AS avg_packet_loss_rate,
       round_exact(CAST(sum(CAST(round_trip_ms AS DECIMAL(18, 4))) AS DOUBLE)
             / nullif(count(round_trip_ms), 0), 6)                           AS avg_round_trip_ms,
       count(*) FILTER (WHERE classified)                                    AS classified_streams,
       count(*) FILTER (WHERE classified AND poor)                           AS poor_streams,
       CAST(count(*) FILTER (WHERE classified AND poor) AS DOUBLE)
         / nullif(count(*) FILTER (WHERE classified), 0)                     AS poor_stream_rate,
       avg(mos)                                                              AS avg_mos
FROM agent_legs
GROUP BY tenant_id, agent_id, day";

/// `agent_state_time`: closed presence / agent-state periods per agent, state and the UTC day
/// each period began (a period ends at the agent's next change from the same source). Times
/// are cast to milliseconds first: Delta stores timestamps in microseconds.
pub const AGENT_STATE_TIME_SQL: &str = "
SELECT tenant_id, agent_id, source, state, day,
       count(*)                              AS periods,
       CAST(sum(ms) AS DOUBLE) / 1000.0      AS seconds
FROM (
  SELECT tenant_id, agent_id, source, to_state AS state, CAST(occurred_at AS DATE) AS day,
         CAST(arrow_cast(lead(occurred_at) OVER (PARTITION BY tenant_id, agent_id, source ORDER BY occurred_at, event_id),
                         'Timestamp(Millisecond, None)') AS BIGINT)
           - CAST(arrow_cast(occurred_at, 'Timestamp(Millisecond, None)') AS BIGINT) AS ms
  FROM events
  WHERE event_type IN ('presence_changed', 'agent_state_changed') AND agent_id IS NOT NULL AND to_state IS NOT NULL)
WHERE ms IS NOT NULL
GROUP BY tenant_id, agent_id, source, state, day";

/// `agent_occupancy`: per agent and UTC day, busy (talk + hold + after-call work of the
/// agent's legs) over the time the agent could take calls: busy plus idle time in the Teams
/// presence `Available` (presence is `Busy` during calls) when there is presence, else the
/// time in the agent state `available` (which includes the calls; capped at 1).
pub const AGENT_OCCUPANCY_SQL: &str = "
SELECT tenant_id, agent_id, day, busy_s, available_s, staffed_s,
       CASE WHEN available_s > 0 THEN busy_s / (busy_s + available_s)
            WHEN staffed_s > 0 THEN least(busy_s / staffed_s, 1.0)
       END AS occupancy
FROM (
  SELECT coalesce(b.tenant_id, a.tenant_id) AS tenant_id, coalesce(b.agent_id, a.agent_id) AS agent_id,
         coalesce(b.day, a.day) AS day,
         coalesce(b.busy_s, 0) AS busy_s, coalesce(a.available_s, 0) AS available_s, coalesce(a.staffed_s, 0) AS staffed_s
  FROM (SELECT tenant_id, agent_id, day, CAST(sum(coalesce(talk_ms, 0) + coalesce(hold_ms, 0) + coalesce(acw_ms, 0)) AS DOUBLE) / 1000.0 AS busy_s
        FROM agent_legs GROUP BY tenant_id, agent_id, day) b
  FULL OUTER JOIN
       (SELECT tenant_id, agent_id, day,
               coalesce(sum(seconds) FILTER (WHERE source = 'graph.presence'), 0) AS available_s,
               coalesce(sum(seconds) FILTER (WHERE source <> 'graph.presence'), 0) AS staffed_s
        FROM agent_state_time WHERE lower(state) = 'available'
        GROUP BY tenant_id, agent_id, day) a
  ON b.tenant_id = a.tenant_id AND b.agent_id = a.agent_id AND b.day = a.day)";

/// The tables and views of one data directory, in one DataFusion session, unscoped (what
/// `ccstream sql --data DIR` reads; the server builds a session per query instead).
#[derive(Clone)]
pub struct QueryEngine {
    ctx: SessionContext,
    tables: Vec<String>,
}

impl std::fmt::Debug for QueryEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryEngine").field("session", &self.ctx.session_id()).field("tables", &self.tables).finish()
    }
}

impl QueryEngine {
    /// Opens the tables under `location` (a local path or URL) that exist, and creates
    /// the views whose base tables exist. `threads` bounds DataFusion's partitions.
    pub async fn open(location: &str, threads: usize) -> Result<Self> {
        let tables = Tables::open(location).await?;
        let state = planner_state(threads);
        tables.register_stores(&state)?;
        let snapshot = tables.snapshot().await?;
        let public = scoped_schema(&snapshot, &Scope::all(), &state).await?;
        let ctx = SessionContext::new_with_state(state);
        let catalog = ctx.catalog("datafusion").ok_or_else(|| Error::Location {
            location: location.to_string(),
            reason: "the session has no default catalog".into(),
        })?;
        catalog.register_schema("public", public)?;
        let tables = TABLES.iter().filter(|t| snapshot.has_table(t)).map(|t| t.to_string()).collect();
        Ok(QueryEngine { ctx, tables })
    }

    /// The tables found in the data directory.
    pub fn tables(&self) -> &[String] {
        &self.tables
    }

    pub fn has_table(&self, name: &str) -> bool {
        self.tables.iter().any(|t| t == name)
    }

    /// The session, for frontends that plan themselves.
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// Plans `sql`.
    pub async fn sql(&self, sql: &str) -> Result<DataFrame> {
        Ok(self.ctx.sql(sql).await?)
    }

    /// Runs `sql` to completion: its schema and batches.
    pub async fn query(&self, sql: &str) -> Result<(SchemaRef, Vec<RecordBatch>)> {
        let df = self.sql(sql).await?;
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let batches = df.collect().await?;
        Ok((schema, batches))
    }
}
