//! The call fold: per-call and per-leg accumulators in `Vec`s indexed by group id, updated
//! batch by batch from [`DecodedBatch`]es (the shape of DataFusion's `GroupsAccumulator`).
//!
//! State layout:
//! - `calls: Vec<CallAcc>`, one per call, found through `index: call key → group id`.
//! - `legs: Vec<LegAcc>`, one per (call, agent) with a leg event, chained from the call
//!   (`first_leg` / `next`): a call has one to three legs, so a scan beats a hash map.
//! - Event ids folded so far, per call, in an arena of 4-id blocks chained from the call:
//!   dedup looks only at the call's own ids (a handful, in cache), never at a global set.
//!
//! In arrival order only a few hundred calls are open at a time, so the entries an event
//! touches are almost always in cache; the cost per event is a hash probe and a few adds.

use std::hash::BuildHasher;
use std::ops::Range;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Date32Array, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray, StringBuilder,
    TimestampMillisecondArray,
};
use ccstream_schemas::{
    agent_legs_schema, call_facts_schema, interval_partials_schema, EventType, IdKey, MS_PER_DAY, PARTIAL_INTERVAL_MS,
};
use foldhash::fast::FixedState;
use hashbrown::HashMap;

use super::{mos, Params};
use crate::batch::{DecodedBatch, Dictionaries, INVALID, NONE, NO_CALL};
use crate::Result;

const NO_LEG: u32 = u32::MAX;
const NO_BLOCK: u32 = u32::MAX;
const MIN_NONE: i64 = i64::MAX;
const MAX_NONE: i64 = i64::MIN;

/// Per-call accumulator. Mins start at `MIN_NONE`, maxes at `MAX_NONE`.
#[derive(Debug, Clone, Copy)]
struct CallAcc {
    key: IdKey,
    queued_ms: i64,
    final_queued_ms: i64,
    answered_ms: i64,
    abandoned_ms: i64,
    ended_ms: i64,
    sum_answered: i64,
    sum_leg_end: i64,
    sum_hold_started: i64,
    sum_hold_ended: i64,
    sum_wrapup: i64,
    tenant: u32,
    entry_queue: u32,
    final_queue: u32,
    n_queued: u32,
    n_answered: u32,
    n_leg_end: u32,
    n_hold_started: u32,
    n_hold_ended: u32,
    n_wrapup: u32,
    n_transfers: u32,
    n_events: u32,
    eid_block: u32,
    first_leg: u32,
}

impl CallAcc {
    fn new(key: IdKey, tenant: u32) -> Self {
        CallAcc {
            key,
            queued_ms: MIN_NONE,
            final_queued_ms: MAX_NONE,
            answered_ms: MIN_NONE,
            abandoned_ms: MIN_NONE,
            ended_ms: MAX_NONE,
            sum_answered: 0,
            sum_leg_end: 0,
            sum_hold_started: 0,
            sum_hold_ended: 0,
            sum_wrapup: 0,
            tenant,
            entry_queue: NONE,
            final_queue: NONE,
            n_queued: 0,
            n_answered: 0,
            n_leg_end: 0,
            n_hold_started: 0,
            n_hold_ended: 0,
            n_wrapup: 0,
            n_transfers: 0,
            n_events: 0,
            eid_block: NO_BLOCK,
            first_leg: NO_LEG,
        }
    }

    fn answered(&self) -> bool {
        self.answered_ms != MIN_NONE
    }

    /// Abandoned and never answered.
    fn abandoned(&self) -> bool {
        self.abandoned_ms != MIN_NONE && !self.answered()
    }

    /// Answered, and as many answers as leg ends and wrap-ups, with paired holds.
    fn legs_complete(&self) -> bool {
        self.answered()
            && self.n_answered == self.n_leg_end
            && self.n_answered == self.n_wrapup
            && self.n_hold_started == self.n_hold_ended
    }

    /// Answer (or abandon) minus queue entry; NULL without both.
    fn wait_ms(&self) -> Option<i64> {
        if self.queued_ms == MIN_NONE {
            None
        } else if self.answered() {
            Some(self.answered_ms - self.queued_ms)
        } else if self.abandoned() {
            Some(self.abandoned_ms - self.queued_ms)
        } else {
            None
        }
    }

    /// Σ wrap-ups − Σ answers, when the legs are complete.
    fn handle_ms(&self) -> Option<i64> {
        self.legs_complete().then(|| self.sum_wrapup - self.sum_answered)
    }
}

/// Per-(call, agent) accumulator.
#[derive(Debug, Clone, Copy)]
struct LegAcc {
    call: u32,
    agent: u32,
    tenant: u32,
    next: u32,
    answered_ms: i64,
    leg_end_ms: i64,
    wrapup_ms: i64,
    sum_hold_started: i64,
    sum_hold_ended: i64,
    n_answered: u32,
    n_leg_end: u32,
    n_hold_started: u32,
    n_hold_ended: u32,
    n_wrapup: u32,
    transfers: u32,
    /// Max over the leg's end events of jitter, loss, RTT, degradation; NaN = none.
    media: [f64; 4],
}

/// Counts of what the fold saw.
/// One (tenant, entry queue)'s live picture ([`CallFold::live_queues`]); ids are the
/// decoder's interned names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LiveQueue {
    pub tenant: u32,
    pub queue: u32,
    pub offered: u64,
    pub answered: u64,
    pub abandoned: u64,
    pub answered_within_sl: u64,
    /// Queued and not yet answered, abandoned or ended.
    pub waiting: u64,
    pub longest_wait_ms: i64,
    /// Answered and abandoned calls that entered in the latest 15-minute interval.
    pub interval_answered: u64,
    pub interval_answered_within_sl: u64,
    pub interval_abandoned: u64,
    pub interval_short_abandoned: u64,
}

impl LiveQueue {
    /// Adds `other`'s counts (the same queue seen by another partition's fold).
    pub fn merge(&mut self, other: &LiveQueue) {
        self.offered += other.offered;
        self.answered += other.answered;
        self.abandoned += other.abandoned;
        self.answered_within_sl += other.answered_within_sl;
        self.waiting += other.waiting;
        self.longest_wait_ms = self.longest_wait_ms.max(other.longest_wait_ms);
        self.interval_answered += other.interval_answered;
        self.interval_answered_within_sl += other.interval_answered_within_sl;
        self.interval_abandoned += other.interval_abandoned;
        self.interval_short_abandoned += other.interval_short_abandoned;
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FoldStats {
    /// Rows handed to the fold (valid or not).
    pub rows: u64,
    /// Invalid rows (skipped; the caller dead-letters them).
    pub invalid: u64,
    /// Copies of an event already folded.
    pub duplicates: u64,
    /// Distinct call events folded.
    pub call_events: u64,
    /// Valid events that are not call events (agent state, presence, …).
    pub other_events: u64,
}

/// The fold's results as record batches of the table schemas.
#[derive(Debug, Clone)]
pub struct FoldOutput {
    pub call_facts: RecordBatch,
    pub agent_legs: RecordBatch,
    pub interval_partials: RecordBatch,
}

/// Incremental fold of call events (see the module doc).
#[derive(Debug)]
pub struct CallFold {
    partition: i32,
    /// Call key → position in `calls`. The table holds only the 4-byte position (the key is
    /// compared in `calls`), so 1 M open calls index in 4 MB rather than 32 MB.
    index: hashbrown::HashTable<u32>,
    hasher: FixedState,
    calls: Vec<CallAcc>,
    legs: Vec<LegAcc>,
    eid_blocks: Vec<[IdKey; 4]>,
    eid_next: Vec<u32>,
    /// Ids of the events that belong to no call (agent state, presence…), for dedup.
    other_ids: hashbrown::HashSet<IdKey, FixedState>,
    /// For every row of the last batch: whether it was the first copy of a valid event.
    first_copy: Vec<bool>,
    stats: FoldStats,
}

impl CallFold {
    /// A fold whose interval partials are tagged with log partition `partition`.
    pub fn new(partition: i32) -> Self {
        CallFold {
            partition,
            index: hashbrown::HashTable::new(),
            hasher: FixedState::with_seed(0x5eed_cc57),
            calls: Vec::new(),
            legs: Vec::new(),
            eid_blocks: Vec::new(),
            eid_next: Vec::new(),
            other_ids: hashbrown::HashSet::with_hasher(FixedState::with_seed(0x007e_41d5)),
            first_copy: Vec::new(),
            stats: FoldStats::default(),
        }
    }

    pub fn stats(&self) -> FoldStats {
        self.stats
    }

    pub fn calls(&self) -> usize {
        self.calls.len()
    }

    /// Whether each row of the last batch was the first copy of a valid event.
    pub fn first_copy(&self) -> &[bool] {
        &self.first_copy
    }

    /// Reserves room for about `events` more events (a hint from the input's row count):
    /// growing the state vectors by doubling copies them and faults in fresh pages twice.
    pub fn reserve_for_events(&mut self, events: usize) {
        // ~7 events per call, ~1 leg per call, one 4-id block per 3.5 events (measured on
        // generated traffic); a wrong guess only costs a later growth step.
        let calls = events / 6;
        let (hasher, accs) = (&self.hasher, &self.calls);
        self.index.reserve(calls, |&i| hasher.hash_one(accs[i as usize].key));
        self.calls.reserve(calls);
        self.legs.reserve(calls);
        self.eid_blocks.reserve(events / 3);
        self.eid_next.reserve(events / 3);
    }

    /// The position of call `key` in `calls`, adding it if new.
    #[inline]
    fn call_index(&mut self, key: IdKey, tenant: u32) -> usize {
        let hash = self.hasher.hash_one(key);
        let calls = &mut self.calls;
        let hasher = &self.hasher;
        match self.index.entry(hash, |&i| calls[i as usize].key == key, |&i| hasher.hash_one(calls[i as usize].key)) {
            hashbrown::hash_table::Entry::Occupied(e) => *e.get() as usize,
            hashbrown::hash_table::Entry::Vacant(e) => {
                let c = calls.len();
                calls.push(CallAcc::new(key, tenant));
                e.insert(c as u32);
                c
            }
        }
    }

    /// Records `eid` for `call`; returns false if the call already had it.
    #[inline]
    fn remember(&mut self, call: usize, eid: IdKey) -> bool {
        let acc = &self.calls[call];
        let n = acc.n_events as usize;
        let mut block = acc.eid_block;
        let mut in_block = if n == 0 { 0 } else { (n - 1) % 4 + 1 };
        while block != NO_BLOCK {
            let b = &self.eid_blocks[block as usize];
            if b[..in_block].contains(&eid) {
                return false;
            }
            block = self.eid_next[block as usize];
            in_block = 4;
        }
        let acc = &mut self.calls[call];
        if n.is_multiple_of(4) {
            let id = self.eid_blocks.len() as u32;
            self.eid_blocks.push([eid, 0, 0, 0]);
            self.eid_next.push(acc.eid_block);
            acc.eid_block = id;
        } else {
            self.eid_blocks[acc.eid_block as usize][n % 4] = eid;
        }
        acc.n_events += 1;
        true
    }

    #[inline]
    fn leg(&mut self, call: usize, agent: u32, tenant: u32) -> usize {
        let mut l = self.calls[call].first_leg;
        while l != NO_LEG {
            if self.legs[l as usize].agent == agent {
                return l as usize;
            }
            l = self.legs[l as usize].next;
        }
        let id = self.legs.len();
        self.legs.push(LegAcc {
            call: call as u32,
            agent,
            tenant,
            next: self.calls[call].first_leg,
            answered_ms: MIN_NONE,
            leg_end_ms: MAX_NONE,
            wrapup_ms: MAX_NONE,
            sum_hold_started: 0,
            sum_hold_ended: 0,
            n_answered: 0,
            n_leg_end: 0,
            n_hold_started: 0,
            n_hold_ended: 0,
            n_wrapup: 0,
            transfers: 0,
            media: [f64::NAN; 4],
        });
        self.calls[call].first_leg = id as u32;
        id
    }

    /// Folds one decoded batch into the state. `dicts` breaks ties between names.
    pub fn update(&mut self, b: &DecodedBatch, dicts: &Dictionaries) {
        let n = b.len();
        self.stats.rows += n as u64;
        self.first_copy.clear();
        self.first_copy.resize(n, false);
        for r in 0..n {
            let et = b.etype[r];
            if et == INVALID {
                self.stats.invalid += 1;
                continue;
            }
            if et > EventType::WrapupEnded as u8 {
                if self.other_ids.insert(b.event_id[r]) {
                    self.stats.other_events += 1;
                    self.first_copy[r] = true;
                } else {
                    self.stats.duplicates += 1;
                }
                continue;
            }
            let key = b.call[r];
            debug_assert_ne!(key, NO_CALL, "the decoder rejects call events without a call");
            let tenant = b.tenant[r];
            let c = self.call_index(key, tenant);
            if !self.remember(c, b.event_id[r]) {
                self.stats.duplicates += 1;
                continue;
            }
            self.first_copy[r] = true;
            self.stats.call_events += 1;
            let t = b.t_ms[r];
            let queue = b.queue[r];
            let agent = b.agent[r];
            let acc = &mut self.calls[c];
            if tenant != acc.tenant && less(&dicts.tenants, tenant, acc.tenant) {
                acc.tenant = tenant;
            }
            // SAFETY of the transmute-free match: `et` ≤ WrapupEnded was checked above.
            match EventType::ALL[et as usize] {
                EventType::CallQueued => {
                    acc.n_queued += 1;
                    if t < acc.queued_ms || (t == acc.queued_ms && less(&dicts.queues, queue, acc.entry_queue)) {
                        acc.queued_ms = t;
                        acc.entry_queue = queue;
                    }
                    if t > acc.final_queued_ms
                        || (t == acc.final_queued_ms && less(&dicts.queues, acc.final_queue, queue))
                    {
                        acc.final_queued_ms = t;
                        acc.final_queue = queue;
                    }
                }
                EventType::AgentOffered => {}
                EventType::CallAnswered => {
                    acc.n_answered += 1;
                    acc.sum_answered += t;
                    acc.answered_ms = acc.answered_ms.min(t);
                }
                EventType::HoldStarted => {
                    acc.n_hold_started += 1;
                    acc.sum_hold_started += t;
                }
                EventType::HoldEnded => {
                    acc.n_hold_ended += 1;
                    acc.sum_hold_ended += t;
                }
                EventType::CallTransferred | EventType::CallEnded => {
                    if et == EventType::CallTransferred as u8 {
                        acc.n_transfers += 1;
                    } else {
                        acc.ended_ms = acc.ended_ms.max(t);
                    }
                    if agent != NONE {
                        acc.n_leg_end += 1;
                        acc.sum_leg_end += t;
                    }
                }
                EventType::CallAbandoned => {
                    acc.abandoned_ms = acc.abandoned_ms.min(t);
                    acc.ended_ms = acc.ended_ms.max(t);
                }
                EventType::WrapupEnded => {
                    acc.n_wrapup += 1;
                    acc.sum_wrapup += t;
                }
                _ => unreachable!("non-call events are skipped above"),
            }
            // Leg state: the agent's answer, holds, leg end and wrap-up.
            if agent == NONE
                || !matches!(
                    EventType::ALL[et as usize],
                    EventType::CallAnswered
                        | EventType::HoldStarted
                        | EventType::HoldEnded
                        | EventType::CallTransferred
                        | EventType::CallEnded
                        | EventType::WrapupEnded
                )
            {
                continue;
            }
            let l = self.leg(c, agent, tenant);
            let leg = &mut self.legs[l];
            if tenant != leg.tenant && less(&dicts.tenants, tenant, leg.tenant) {
                leg.tenant = tenant;
            }
            match EventType::ALL[et as usize] {
                EventType::CallAnswered => {
                    leg.n_answered += 1;
                    leg.answered_ms = leg.answered_ms.min(t);
                }
                EventType::HoldStarted => {
                    leg.n_hold_started += 1;
                    leg.sum_hold_started += t;
                }
                EventType::HoldEnded => {
                    leg.n_hold_ended += 1;
                    leg.sum_hold_ended += t;
                }
                EventType::CallTransferred | EventType::CallEnded => {
                    leg.n_leg_end += 1;
                    leg.leg_end_ms = leg.leg_end_ms.max(t);
                    if et == EventType::CallTransferred as u8 {
                        leg.transfers += 1;
                    }
                    for (m, col) in leg.media.iter_mut().zip(&b.media) {
                        let v = col[r];
                        // max ignoring NULLs (NaN)
                        if !v.is_nan() && (m.is_nan() || v > *m) {
                            *m = v;
                        }
                    }
                }
                EventType::WrapupEnded => {
                    leg.n_wrapup += 1;
                    leg.wrapup_ms = leg.wrapup_ms.max(t);
                }
                _ => {}
            }
        }
    }

    /// The tables as of now, at `params`, stamped `revision` 1 and `computed_at_ms`.
    pub fn output(&self, dicts: &Dictionaries, params: &Params, computed_at_ms: i64) -> Result<FoldOutput> {
        let call_mos = self.call_mos();
        Ok(FoldOutput {
            call_facts: self.call_facts(0..self.calls.len(), dicts, params, &call_mos, computed_at_ms)?,
            agent_legs: self.agent_legs(0..self.legs.len(), dicts, params, computed_at_ms)?,
            interval_partials: self.interval_partials(dicts, params, computed_at_ms)?,
        })
    }

    /// `call_facts` in slices of at most `rows` calls, so that a writer can encode each
    /// slice while the next is built, and no table-sized arrays are ever allocated.
    pub fn call_facts_slices<'s>(
        &'s self,
        dicts: &'s Dictionaries,
        params: &'s Params,
        computed_at_ms: i64,
        rows: usize,
    ) -> impl Iterator<Item = Result<RecordBatch>> + 's {
        let call_mos = self.call_mos();
        slices(self.calls.len(), rows).map(move |r| self.call_facts(r, dicts, params, &call_mos, computed_at_ms))
    }

    /// `agent_legs` in slices of the legs of at most `rows` (call, agent) pairs.
    pub fn agent_legs_slices<'s>(
        &'s self,
        dicts: &'s Dictionaries,
        params: &'s Params,
        computed_at_ms: i64,
        rows: usize,
    ) -> impl Iterator<Item = Result<RecordBatch>> + 's {
        slices(self.legs.len(), rows).map(move |r| self.agent_legs(r, dicts, params, computed_at_ms))
    }

    /// Minimum leg MOS per call (Genesys convention); NaN when no leg has one.
    fn call_mos(&self) -> Vec<f64> {
        let mut out = vec![f64::NAN; self.calls.len()];
        for l in &self.legs {
            if l.n_answered == 0 {
                continue;
            }
            let m = mos(l.media[2], l.media[0], l.media[1]);
            let slot = &mut out[l.call as usize];
            if !m.is_nan() && (slot.is_nan() || m < *slot) {
                *slot = m;
            }
        }
        out
    }

    fn call_facts(
        &self,
        range: Range<usize>,
        dicts: &Dictionaries,
        p: &Params,
        call_mos: &[f64],
        now: i64,
    ) -> Result<RecordBatch> {
        let calls = &self.calls[range.clone()];
        let call_mos = &call_mos[range];
        let n = calls.len();
        let mut call_id = StringBuilder::with_capacity(n, n * 36);
        let mut text = String::with_capacity(40);
        let opt = |v: i64, none: i64| if v == none { None } else { Some(v) };
        let mut wait_ms = Vec::with_capacity(n);
        let mut hold_ms = Vec::with_capacity(n);
        let mut acw_ms = Vec::with_capacity(n);
        let mut handle_ms = Vec::with_capacity(n);
        let mut answered = Vec::with_capacity(n);
        let mut abandoned = Vec::with_capacity(n);
        let mut complete = Vec::with_capacity(n);
        for c in calls {
            text.clear();
            dicts.ids.text(c.key, &mut text);
            call_id.append_value(&text);
            let lc = c.legs_complete();
            wait_ms.push(c.wait_ms());
            hold_ms.push(lc.then(|| c.sum_hold_ended - c.sum_hold_started));
            acw_ms.push(lc.then(|| c.sum_wrapup - c.sum_leg_end));
            handle_ms.push(c.handle_ms());
            answered.push(c.answered());
            abandoned.push(c.abandoned());
            complete.push(lc);
        }
        let secs = |v: &Option<i64>| v.map(|ms| ms as f64 / 1000.0);
        let talk: Float64Array =
            (0..n).map(|i| Some((handle_ms[i]? - hold_ms[i]? - acw_ms[i]?) as f64 / 1000.0)).collect();
        let ts = |f: &dyn Fn(&CallAcc) -> Option<i64>| -> ArrayRef {
            Arc::new(TimestampMillisecondArray::from_iter(calls.iter().map(f)).with_timezone("UTC"))
        };
        let columns: Vec<ArrayRef> = vec![
            Arc::new(call_id.finish()),
            Arc::new(StringArray::from_iter(calls.iter().map(|c| name(&dicts.tenants, c.tenant)))),
            Arc::new(StringArray::from_iter(calls.iter().map(|c| name(&dicts.queues, c.entry_queue)))),
            Arc::new(StringArray::from_iter(calls.iter().map(|c| name(&dicts.queues, c.final_queue)))),
            ts(&|c| opt(c.queued_ms, MIN_NONE)),
            ts(&|c| opt(c.answered_ms, MIN_NONE)),
            ts(&|c| opt(c.abandoned_ms, MIN_NONE)),
            ts(&|c| opt(c.ended_ms, MAX_NONE)),
            Arc::new(BooleanArray::from(answered.clone())),
            Arc::new(BooleanArray::from(abandoned.clone())),
            Arc::new(Float64Array::from_iter(wait_ms.iter().map(secs))),
            Arc::new(talk),
            Arc::new(Float64Array::from_iter(hold_ms.iter().map(secs))),
            Arc::new(Float64Array::from_iter(acw_ms.iter().map(secs))),
            Arc::new(Float64Array::from_iter(handle_ms.iter().map(secs))),
            Arc::new(BooleanArray::from_iter(
                (0..n).map(|i| Some(answered[i] && wait_ms[i].is_some_and(|w| w <= p.sl_threshold_ms))),
            )),
            Arc::new(BooleanArray::from_iter(
                (0..n).map(|i| Some(abandoned[i] && wait_ms[i].is_some_and(|w| w < p.short_abandon_ms))),
            )),
            Arc::new(BooleanArray::from_iter(calls.iter().map(|c| Some(c.n_transfers > 0)))),
            Arc::new(Int64Array::from_iter_values(calls.iter().map(|c| c.n_transfers as i64))),
            Arc::new(BooleanArray::from_iter(calls.iter().map(|c| Some(c.n_queued > 1)))),
            Arc::new(Int64Array::from_iter_values(calls.iter().map(|c| c.n_answered as i64))),
            Arc::new(BooleanArray::from(complete)),
            Arc::new(Int64Array::from(wait_ms)),
            Arc::new(Int64Array::from(handle_ms)),
            Arc::new(Float64Array::from_iter(call_mos.iter().map(|m| (!m.is_nan()).then_some(*m)))),
            Arc::new(Int64Array::from_value(1, n)),
            Arc::new(TimestampMillisecondArray::from_value(now, n).with_timezone("UTC")),
        ];
        Ok(RecordBatch::try_new(call_facts_schema(), columns)?)
    }

    fn agent_legs(&self, range: Range<usize>, dicts: &Dictionaries, p: &Params, now: i64) -> Result<RecordBatch> {
        let legs: Vec<&LegAcc> = self.legs[range].iter().filter(|l| l.n_answered > 0).collect();
        let n = legs.len();
        let mut call_id = StringBuilder::with_capacity(n, n * 36);
        let mut text = String::with_capacity(40);
        for l in &legs {
            text.clear();
            dicts.ids.text(self.calls[l.call as usize].key, &mut text);
            call_id.append_value(&text);
        }
        let complete: Vec<bool> = legs
            .iter()
            .map(|l| l.n_answered == 1 && l.n_leg_end == 1 && l.n_wrapup == 1 && l.n_hold_started == l.n_hold_ended)
            .collect();
        let hold = |l: &LegAcc| l.sum_hold_ended - l.sum_hold_started;
        let when = |f: &dyn Fn(&LegAcc) -> i64| -> ArrayRef {
            Arc::new(Int64Array::from_iter(legs.iter().zip(&complete).map(|(l, &c)| c.then(|| f(l)))))
        };
        let media = |i: usize| -> ArrayRef {
            Arc::new(Float64Array::from_iter(legs.iter().map(|l| (!l.media[i].is_nan()).then_some(l.media[i]))))
        };
        let class: Vec<(bool, bool)> = legs.iter().map(|l| p.cqd.classify(l.media)).collect();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(call_id.finish()),
            Arc::new(StringArray::from_iter_values(
                legs.iter().map(|l| dicts.agents.name(l.agent).unwrap_or_default()),
            )),
            Arc::new(StringArray::from_iter_values(
                legs.iter().map(|l| dicts.tenants.name(l.tenant).unwrap_or_default()),
            )),
            Arc::new(
                TimestampMillisecondArray::from_iter_values(legs.iter().map(|l| l.answered_ms)).with_timezone("UTC"),
            ),
            Arc::new(Date32Array::from_iter_values(legs.iter().map(|l| l.answered_ms.div_euclid(MS_PER_DAY) as i32))),
            Arc::new(BooleanArray::from(complete.clone())),
            when(&hold),
            when(&|l| l.leg_end_ms - l.answered_ms - hold(l)),
            when(&|l| l.wrapup_ms - l.leg_end_ms),
            when(&|l| l.wrapup_ms - l.answered_ms),
            Arc::new(Int64Array::from_iter_values(legs.iter().map(|l| l.transfers as i64))),
            media(0),
            media(1),
            media(2),
            media(3),
            Arc::new(BooleanArray::from_iter(class.iter().map(|c| Some(c.0)))),
            Arc::new(BooleanArray::from_iter(class.iter().map(|c| Some(c.1)))),
            Arc::new(Float64Array::from_iter(legs.iter().map(|l| {
                let m = mos(l.media[2], l.media[0], l.media[1]);
                (!m.is_nan()).then_some(m)
            }))),
            Arc::new(Int64Array::from_value(1, n)),
            Arc::new(TimestampMillisecondArray::from_value(now, n).with_timezone("UTC")),
        ];
        Ok(RecordBatch::try_new(agent_legs_schema(), columns)?)
    }

    /// `interval_partials` (one row per tenant × entry queue × 15-minute interval).
    /// The live picture per (tenant, entry queue), for the real-time gauges: totals since
    /// the state began (the counters), calls waiting now and the longest current wait, and
    /// the service level of the latest 15-minute interval. "Now" is event time: the latest
    /// event time in the state.
    /// Returns the latest event time (ms, `None` for an empty state) and the queues.
    pub fn live_queues(&self, p: &Params) -> (Option<i64>, Vec<LiveQueue>) {
        let mut now = MAX_NONE;
        for c in &self.calls {
            now = now.max(c.queued_ms.max(c.final_queued_ms)).max(c.ended_ms);
            if c.answered() {
                now = now.max(c.answered_ms);
            }
            if c.abandoned_ms != MIN_NONE {
                now = now.max(c.abandoned_ms);
            }
        }
        let current =
            if now == MAX_NONE { MIN_NONE } else { now.div_euclid(PARTIAL_INTERVAL_MS) * PARTIAL_INTERVAL_MS };
        let mut groups: HashMap<(u32, u32), LiveQueue, FixedState> = HashMap::default();
        for c in &self.calls {
            if c.queued_ms == MIN_NONE {
                continue;
            }
            let g = groups.entry((c.tenant, c.entry_queue)).or_insert_with(|| LiveQueue {
                tenant: c.tenant,
                queue: c.entry_queue,
                ..LiveQueue::default()
            });
            g.offered += 1;
            let in_current = c.queued_ms >= current;
            match c.wait_ms() {
                Some(w) if c.answered() => {
                    g.answered += 1;
                    g.answered_within_sl += (w <= p.sl_threshold_ms) as u64;
                    if in_current {
                        g.interval_answered += 1;
                        g.interval_answered_within_sl += (w <= p.sl_threshold_ms) as u64;
                    }
                }
                Some(w) => {
                    g.abandoned += 1;
                    if in_current {
                        g.interval_abandoned += 1;
                        g.interval_short_abandoned += (w < p.short_abandon_ms) as u64;
                    }
                }
                None if c.ended_ms == MAX_NONE => {
                    g.waiting += 1;
                    g.longest_wait_ms = g.longest_wait_ms.max(now - c.queued_ms);
                }
                None => {}
            }
        }
        ((now != MAX_NONE).then_some(now), groups.into_values().collect())
    }

    pub fn interval_partials(&self, dicts: &Dictionaries, p: &Params, now: i64) -> Result<RecordBatch> {
        #[derive(Default, Clone, Copy)]
        struct Part {
            offered: i64,
            answered: i64,
            abandoned: i64,
            short_abandoned: i64,
            answered_within_sl: i64,
            abandoned_within_sl: i64,
            overflowed: i64,
            transferred: i64,
            sum_answer_wait_ms: i64,
            sum_abandon_wait_ms: i64,
            sum_handle_ms: i64,
            n_handle: i64,
            max_wait_ms: Option<i64>,
        }
        let mut groups: HashMap<(u32, u32, i64), Part, FixedState> = HashMap::default();
        let mut order = Vec::new();
        for c in &self.calls {
            if c.queued_ms == MIN_NONE {
                continue;
            }
            let interval = c.queued_ms.div_euclid(PARTIAL_INTERVAL_MS) * PARTIAL_INTERVAL_MS;
            let key = (c.tenant, c.entry_queue, interval);
            let g = groups.entry(key).or_insert_with(|| {
                order.push(key);
                Part::default()
            });
            g.offered += 1;
            g.overflowed += (c.n_queued > 1) as i64;
            g.transferred += (c.n_transfers > 0) as i64;
            if let Some(w) = c.wait_ms() {
                g.max_wait_ms = Some(g.max_wait_ms.map_or(w, |m| m.max(w)));
                if c.answered() {
                    g.answered += 1;
                    g.sum_answer_wait_ms += w;
                    g.answered_within_sl += (w <= p.sl_threshold_ms) as i64;
                    if let Some(h) = c.handle_ms() {
                        g.n_handle += 1;
                        g.sum_handle_ms += h;
                    }
                } else {
                    g.abandoned += 1;
                    g.sum_abandon_wait_ms += w;
                    g.short_abandoned += (w < p.short_abandon_ms) as i64;
                    g.abandoned_within_sl += (w <= p.sl_threshold_ms) as i64;
                }
            }
        }
        let parts: Vec<Part> = order.iter().map(|k| groups[k]).collect();
        let n = parts.len();
        let col =
            |f: &dyn Fn(&Part) -> i64| -> ArrayRef { Arc::new(Int64Array::from_iter_values(parts.iter().map(f))) };
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(order.iter().map(|k| dicts.tenants.name(k.0).unwrap_or_default()))),
            Arc::new(StringArray::from_iter(
                order.iter().map(|k| if k.1 == NONE { None } else { dicts.queues.name(k.1) }),
            )),
            Arc::new(TimestampMillisecondArray::from_iter_values(order.iter().map(|k| k.2)).with_timezone("UTC")),
            Arc::new(Int32Array::from_value(self.partition, n)),
            col(&|g| g.offered),
            col(&|g| g.answered),
            col(&|g| g.abandoned),
            col(&|g| g.short_abandoned),
            col(&|g| g.answered_within_sl),
            col(&|g| g.abandoned_within_sl),
            col(&|g| g.overflowed),
            col(&|g| g.transferred),
            col(&|g| g.sum_answer_wait_ms),
            col(&|g| g.sum_abandon_wait_ms),
            col(&|g| g.sum_handle_ms),
            col(&|g| g.n_handle),
            Arc::new(Int64Array::from_iter(parts.iter().map(|g| g.max_wait_ms))),
            Arc::new(Int64Array::from_value(p.sl_threshold_ms, n)),
            Arc::new(Int64Array::from_value(p.short_abandon_ms, n)),
            Arc::new(Int64Array::from_value(1, n)),
            Arc::new(TimestampMillisecondArray::from_value(now, n).with_timezone("UTC")),
        ];
        Ok(RecordBatch::try_new(interval_partials_schema(), columns)?)
    }
}

/// `0..len` cut into consecutive ranges of at most `rows` (at least 1).
fn slices(len: usize, rows: usize) -> impl Iterator<Item = Range<usize>> {
    let rows = rows.max(1);
    (0..len).step_by(rows).map(move |start| start..(start + rows).min(len))
}

/// The name of `id`, NULL for NONE.
fn name(names: &crate::batch::Names, id: u32) -> Option<&str> {
    if id == NONE {
        None
    } else {
        names.name(id)
    }
}

/// Whether name `a` sorts before name `b` (NONE sorts last, so a real name wins).
#[inline]
fn less(names: &crate::batch::Names, a: u32, b: u32) -> bool {
    match (a == NONE, b == NONE) {
        (_, true) => a != NONE,
        (true, false) => false,
        _ => names.name(a) < names.name(b),
    }
}
