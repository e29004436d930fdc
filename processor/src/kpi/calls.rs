//! The call fold: per-call and per-leg accumulators in `Vec`s indexed by group id, updated
//! batch by batch from [`DecodedBatch`]es (the shape of DataFusion's `GroupsAccumulator`).
//!
//! State layout:
//! - `calls: Vec<CallAcc>`, one per call, found through `index: (tenant, call key) → group
//!   id`. A call belongs to the tenant of its events: the same call id in two tenants is
//!   two calls, and an event id is a duplicate only within its call (or, for events of no
//!   call, within its tenant).
//! - `legs: Vec<LegAcc>`, one per (call, agent) with a leg event, chained from the call
//!   (`first_leg` / `next`): a call has one to three legs, so a scan beats a hash map.
//! - Event ids folded so far, per call, in an arena of 4-id blocks chained from the call:
//!   dedup looks only at the call's own ids (a handful, in cache), never at a global set.
//!   A call with more than [`BLOCK_IDS`] events (no real call has) keeps its ids in a hash
//!   set instead, so a sender that piles events on one call costs a probe per event, not a
//!   scan.
//!
//! In arrival order only a few hundred calls are open at a time, so the entries an event
//! touches are almost always in cache; the cost per event is a hash probe and a few adds.
//!
//! Emission and revisions ([`CallFold::emit`]): a call's facts are written once it is
//! complete (abandoned, or ended with every leg wrapped up) or once the watermark passes
//! its latest event by the completion grace; from then on it is always written. A call that
//! changes after it was written gets revision + 1 and [`Correction`]s against its previous
//! revision, whose values come from a copy of the call's state taken when the change began
//! (copy-on-write) or, after a restart, from the committed row ([`CallFold::restore`]).
//! Interval partials are recomputed from the written calls and revised the same way.
//!
//! Sealing: a written call past the retention horizon leaves memory ([`CallFold::emit`]);
//! its rows are sealed (written once more, never rewritten) and its contribution to its
//! interval partial is kept apart. Once no call held contributes to a partial any more, the
//! partial is sealed too and leaves memory, so what a commit rewrites is bounded by the
//! retention, not by the days the processor has run. An event that needs a sealed row again
//! (an evicted call seen again, a call hours late into a sealed interval) brings it back:
//! the caller reads it from the table ([`CallFold::sealed_partials_needed`],
//! [`CallFold::load_sealed_partials`]) and rewrites the sealed files that held it.

use std::hash::BuildHasher;
use std::ops::Range;
use std::sync::{Arc, LazyLock};

use arrow::array::{
    Array, ArrayRef, ArrowPrimitiveType, BooleanArray, Date32Array, Int32Array, Int64Array, PrimitiveArray,
    RecordBatch, StringArray, TimestampMillisecondArray,
};
use arrow::buffer::{BooleanBuffer, NullBuffer, ScalarBuffer};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, SchemaRef};
use arrow::datatypes::{Float64Type, Int64Type, TimestampMillisecondType};
use ccstream_schemas::{
    agent_legs_schema, call_facts_schema, interval_partials_schema, with_dictionaries, EventType, IdKey, MS_PER_DAY,
    PARTIAL_INTERVAL_MS, SEALED_COLUMN, TABLE_CALL_FACTS, TABLE_INTERVAL_PARTIALS,
};
use foldhash::fast::FixedState;
use hashbrown::HashMap;

use super::partials::{Contribution, Grouping, Part, PartKey, PartialRow};
use super::revisions::{diff, images, value_columns, Correction, Fixes, Horizon, Image};
use super::{mos, Params};
use crate::batch::{DecodedBatch, Dictionaries, INVALID, NONE, NO_CALL};
use crate::Result;

const NO_LEG: u32 = u32::MAX;
/// Event ids a call keeps in its blocks; past them, in `CallFold::many_ids`.
const BLOCK_IDS: usize = 16;
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
    /// Latest event time folded (for the completion grace).
    last_ms: i64,
    /// When the revision last written was computed.
    computed_at: i64,
    /// The revision last written (0: never written).
    revision: u32,
    /// Changed since it was last written (and listed in `dirty_calls`).
    dirty: bool,
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
            last_ms: MAX_NONE,
            computed_at: 0,
            revision: 0,
            dirty: false,
        }
    }

    /// Whether this is call `key` of `tenant`.
    #[inline]
    fn is(&self, tenant: u32, key: IdKey) -> bool {
        self.key == key && self.tenant == tenant
    }

    /// The hash of its (tenant, key) (see [`CallFold::key_hash`]).
    #[inline]
    fn hash(&self, hasher: &FixedState) -> u64 {
        hasher.hash_one((self.key, self.tenant))
    }

    /// Abandoned, or ended with every leg wrapped up: no more events are expected.
    fn complete(&self) -> bool {
        self.abandoned() || (self.ended_ms != MAX_NONE && (!self.answered() || self.legs_complete()))
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

/// What one [`CallFold::emit`] did.
#[derive(Debug, Default)]
pub struct Emission {
    /// Calls written for the first time.
    pub new_calls: u64,
    /// Calls written again with a new revision.
    pub revised_calls: u64,
    /// Interval partials written again with a new revision (or gone).
    pub revised_partials: u64,
    /// Changed columns of the revised rows.
    pub corrections: Vec<Correction>,
    /// Calls evicted: their final rows, sealed.
    pub evicted: u64,
    pub sealed_facts: Vec<RecordBatch>,
    pub sealed_legs: Vec<RecordBatch>,
    /// Interval partials that no call held contributes to any more, sealed.
    pub sealed_partials: Vec<RecordBatch>,
    /// Whether the partition's derived rows differ from what was last written.
    pub changed: bool,
}

/// What one [`CallFold::settle`] wrote and forgot.
#[derive(Debug, Default)]
pub struct Settled {
    /// Calls forgotten.
    pub calls: u64,
    /// Their `call_facts` rows (revision 1).
    pub call_facts: Vec<RecordBatch>,
    /// Their `agent_legs` rows.
    pub agent_legs: Vec<RecordBatch>,
}

impl Contribution {
    fn of(c: &CallAcc) -> Self {
        Contribution {
            key: (c.tenant, c.entry_queue, c.queued_ms.div_euclid(PARTIAL_INTERVAL_MS) * PARTIAL_INTERVAL_MS),
            overflowed: c.n_queued > 1,
            transferred: c.n_transfers > 0,
            answered: c.answered(),
            wait_ms: c.wait_ms(),
            handle_ms: c.handle_ms(),
        }
    }

    /// The contributions of `call_facts` rows (`None` for a row without a queue entry).
    fn of_rows(b: &RecordBatch, dicts: &mut Dictionaries) -> Result<Vec<Option<Contribution>>> {
        let tenants = string_column(b, "tenant_id")?;
        let queues = string_column(b, "queue_id")?;
        let queued = timestamp_column(b, "queued_at")?;
        let flag = |name: &'static str| -> Result<&BooleanArray> {
            b.column_by_name(name)
                .and_then(|c| c.as_any().downcast_ref::<BooleanArray>())
                .ok_or(crate::Error::MissingColumn(name))
        };
        let (overflowed, transferred, answered) = (flag("overflowed")?, flag("transferred")?, flag("answered")?);
        let (wait, handle) = (int64_column(b, "wait_ms")?, int64_column(b, "handle_ms")?);
        let opt = |a: &Int64Array, i: usize| a.is_valid(i).then(|| a.value(i));
        Ok((0..b.num_rows())
            .map(|i| {
                if queued.is_null(i) {
                    return None;
                }
                let t = queued.value(i);
                let queue = if queues.is_valid(i) { dicts.queues.intern(queues.value(i)) } else { NONE };
                Some(Contribution {
                    key: (
                        dicts.tenants.intern(tenants.value(i)),
                        queue,
                        t.div_euclid(PARTIAL_INTERVAL_MS) * PARTIAL_INTERVAL_MS,
                    ),
                    overflowed: overflowed.value(i),
                    transferred: transferred.value(i),
                    answered: answered.value(i),
                    wait_ms: opt(wait, i),
                    handle_ms: opt(handle, i),
                })
            })
            .collect())
    }
}

/// The fold's results as record batches of the table schemas.
#[derive(Debug, Clone)]
pub struct FoldOutput {
    pub call_facts: RecordBatch,
    pub agent_legs: RecordBatch,
    pub interval_partials: RecordBatch,
}

/// A call as the tables name it: its tenant and its call id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallName {
    pub tenant: String,
    pub call: String,
}

impl CallName {
    /// The call of row `i` of a batch with `tenant_id` and `call_id` columns.
    fn of_row(tenants: &StringArray, ids: &StringArray, i: usize) -> Self {
        CallName { tenant: tenants.value(i).to_string(), call: ids.value(i).to_string() }
    }

    /// The (tenant, call id) pairs of every row of `b` (a `call_facts` or `agent_legs`
    /// batch).
    pub fn of_rows(b: &RecordBatch) -> Result<Vec<CallName>> {
        let (tenants, ids) = (string_column(b, "tenant_id")?, string_column(b, "call_id")?);
        Ok((0..b.num_rows()).map(|i| CallName::of_row(&tenants, &ids, i)).collect())
    }
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
    /// (Call position, event id) of the calls with more than [`BLOCK_IDS`] events.
    many_ids: hashbrown::HashSet<(u32, IdKey), FixedState>,
    /// (Tenant, id) of the events that belong to no call (agent state, presence…), for dedup.
    other_ids: hashbrown::HashSet<(u32, IdKey), FixedState>,
    /// For every row of the last batch: whether it was the first copy of a valid event.
    first_copy: Vec<bool>,
    /// For every row of the batch being folded: its call's position (a reused buffer).
    row_call: Vec<u32>,
    stats: FoldStats,
    /// Calls changed since they were last written (`CallAcc::dirty`).
    dirty_calls: Vec<u32>,
    /// Written calls that changed since: their state and MOS as last written.
    before: HashMap<u32, (CallAcc, f64), FixedState>,
    /// After a restart: written calls' committed rows, until their next emission.
    committed: HashMap<u32, Image, FixedState>,
    /// Interval partials as last written, sorted by key.
    partials: Vec<(PartKey, PartialRow)>,
    /// Fingerprints (key hashes) of the calls evicted after the retention horizon: a new
    /// call with one of them may be an evicted call seen again (`refold`). A false match
    /// only costs a lookup that finds no sealed row.
    sealed_fp: hashbrown::HashSet<u64, FixedState>,
    /// The evicted calls' contributions to the interval partials.
    sealed_parts: HashMap<PartKey, Part, FixedState>,
    /// The settled calls' contributions to the interval partials ([`CallFold::settle`]):
    /// settled in time order, they fill dense runs.
    settled_parts: Grouping,
    /// Batch mode ([`CallFold::begin_settling`]): the key hash of every call added.
    created: Vec<u64>,
    settling: bool,
    /// Whether [`CallFold::settle`] forgot any call.
    settled_any: bool,
    /// Whether `settled_parts` went into the partials of an emit at the end of time (moved,
    /// not copied: nothing may come after it).
    settled_spent: bool,
    /// New calls whose fingerprint is sealed: their earlier events and sealed rows are to be
    /// read back ([`CallFold::refold_ids`], [`CallFold::unseal`]).
    refold: Vec<u32>,
    /// Calls whose sealed rows must leave the sealed files at the next commit.
    unsealed: Vec<CallName>,
    /// Partials whose sealed maximum wait is to be computed again from the sealed rows.
    stale_max: Vec<PartKey>,
    /// Sealed `agent_legs` rows found missing after a restart, for the next commit.
    carry_legs: Vec<RecordBatch>,
    /// The latest interval start of a partial sealed in the table (`i64::MIN`: none): a
    /// partial at or before it that the fold does not hold may be sealed in the table.
    sealed_through: i64,
    /// Keys already looked up among the sealed partials since the last sealing.
    probed: hashbrown::HashSet<PartKey, FixedState>,
    /// Keys asked for by [`CallFold::sealed_partials_needed`], sorted.
    probing: Vec<PartKey>,
    /// Keys whose sealed partial came back into memory: the caller rewrites the sealed
    /// files that hold them ([`CallFold::take_loaded_partials`]).
    loaded: Vec<PartKey>,
    /// The evicted calls' share of the live counters, per (tenant, entry queue): offered,
    /// answered, abandoned, answered within the SL threshold.
    evicted_counts: HashMap<(u32, u32), [u64; 4], FixedState>,
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
            many_ids: hashbrown::HashSet::with_hasher(FixedState::with_seed(0x0a11_1d5e)),
            other_ids: hashbrown::HashSet::with_hasher(FixedState::with_seed(0x007e_41d5)),
            first_copy: Vec::new(),
            row_call: Vec::new(),
            stats: FoldStats::default(),
            dirty_calls: Vec::new(),
            before: HashMap::default(),
            committed: HashMap::default(),
            partials: Vec::new(),
            sealed_fp: hashbrown::HashSet::with_hasher(FixedState::with_seed(0x5ea1_ed00)),
            sealed_parts: HashMap::default(),
            settled_parts: Grouping::default(),
            created: Vec::new(),
            settling: false,
            settled_any: false,
            settled_spent: false,
            refold: Vec::new(),
            unsealed: Vec::new(),
            stale_max: Vec::new(),
            carry_legs: Vec::new(),
            sealed_through: i64::MIN,
            probed: hashbrown::HashSet::default(),
            probing: Vec::new(),
            loaded: Vec::new(),
            evicted_counts: HashMap::default(),
        }
    }

    /// Interval partials held (written at every commit that changes them; not sealed).
    pub fn held_partials(&self) -> usize {
        self.partials.len()
    }

    /// The log partition whose rows this fold writes.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// Calls held that are not written yet or changed since (open calls, late changes).
    pub fn pending_calls(&self) -> usize {
        self.dirty_calls.len()
    }

    /// The hash of call `key` of `tenant` (the index's, and the fingerprints').
    #[inline]
    fn key_hash(&self, tenant: u32, key: IdKey) -> u64 {
        self.hasher.hash_one((key, tenant))
    }

    /// The tenant and the call id of the call at position `c`.
    fn call_name(&self, c: usize, dicts: &Dictionaries) -> CallName {
        let acc = &self.calls[c];
        let mut call = String::new();
        dicts.ids.text(acc.key, &mut call);
        CallName { tenant: dicts.tenants.name(acc.tenant).unwrap_or_default().to_string(), call }
    }

    /// The position of the call of row `i` of a `call_facts` batch's `tenant_id` and
    /// `call_id` columns, if the fold holds it; and the hash of its key.
    fn find_row(
        &self,
        dicts: &mut Dictionaries,
        tenants: &StringArray,
        ids: &StringArray,
        i: usize,
    ) -> (Option<usize>, u64) {
        let (tenant, key) = (dicts.tenants.intern(tenants.value(i)), dicts.ids.key(ids.value(i)));
        (self.find(tenant, key), self.key_hash(tenant, key))
    }

    /// The position of call `key` of `tenant` in `calls`, if the fold holds it.
    fn find(&self, tenant: u32, key: IdKey) -> Option<usize> {
        let hash = self.key_hash(tenant, key);
        self.index.find(hash, |&i| self.calls[i as usize].is(tenant, key)).map(|&i| i as usize)
    }

    /// Marks call `c` changed; a call already written keeps a copy of its written state.
    #[cold]
    fn mark_dirty(&mut self, c: usize) {
        self.dirty_calls.push(c as u32);
        if self.calls[c].revision > 0 && !self.committed.contains_key(&(c as u32)) {
            let m = self.mos_of(c);
            self.before.insert(c as u32, (self.calls[c], m));
        }
        self.calls[c].dirty = true;
    }

    /// Minimum MOS over call `c`'s answered legs (NaN when none has one).
    fn mos_of(&self, c: usize) -> f64 {
        let mut out = f64::NAN;
        let mut l = self.calls[c].first_leg;
        while l != NO_LEG {
            let leg = &self.legs[l as usize];
            if leg.n_answered > 0 {
                let m = mos(leg.media[2], leg.media[0], leg.media[1]);
                if !m.is_nan() && (out.is_nan() || m < out) {
                    out = m;
                }
            }
            l = leg.next;
        }
        out
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

    /// Whether calls seen again after their eviction wait to be re-folded
    /// ([`CallFold::refold_ids`]): their new events may already be in `events`.
    pub fn refolding(&self) -> bool {
        !self.refold.is_empty()
    }

    /// Reserves room for about `events` more events (a hint from the input's row count):
    /// growing the state vectors by doubling copies them and faults in fresh pages twice.
    pub fn reserve_for_events(&mut self, events: usize) {
        // ~7 events per call, ~1 leg per call, one 4-id block per 3.5 events (measured on
        // generated traffic); a wrong guess only costs a later growth step.
        let calls = events / 6;
        let (hasher, accs) = (&self.hasher, &self.calls);
        self.index.reserve(calls, |&i| accs[i as usize].hash(hasher));
        self.calls.reserve(calls);
        self.legs.reserve(calls);
        self.eid_blocks.reserve(events / 3);
        self.eid_next.reserve(events / 3);
    }

    /// Batch mode: from now on, the key hash of every call the fold adds is recorded, so
    /// that [`CallFold::settled_call_seen_again`] can tell whether a settled call came
    /// back. `events` is a hint of the input's size (see [`CallFold::reserve_for_events`]).
    pub fn begin_settling(&mut self, events: usize) {
        self.settling = true;
        self.created.reserve(events / 6);
    }

    /// Batch mode, at the end of the input: whether an event came for a call already
    /// settled ([`CallFold::settle`]), which the fold then took for a new call. A settled
    /// call leaves the index, so a key added twice is one settled and seen again. (Two
    /// calls whose 64-bit key hashes collide look the same: a needless second pass.)
    pub fn settled_call_seen_again(&mut self) -> bool {
        if !self.settled_any {
            return false;
        }
        self.created.sort_unstable();
        self.created.windows(2).any(|w| w[0] == w[1])
    }

    /// The position of call `key` of `tenant` in `calls`, adding it if new.
    #[inline]
    fn call_index(&mut self, key: IdKey, tenant: u32) -> usize {
        let hash = self.key_hash(tenant, key);
        let calls = &mut self.calls;
        let hasher = &self.hasher;
        match self.index.entry(hash, |&i| calls[i as usize].is(tenant, key), |&i| calls[i as usize].hash(hasher)) {
            hashbrown::hash_table::Entry::Occupied(e) => *e.get() as usize,
            hashbrown::hash_table::Entry::Vacant(e) => {
                let c = calls.len();
                calls.push(CallAcc::new(key, tenant));
                e.insert(c as u32);
                if self.settling {
                    self.created.push(hash);
                }
                if !self.sealed_fp.is_empty() && self.sealed_fp.contains(&hash) {
                    self.refold.push(c as u32);
                }
                c
            }
        }
    }

    /// Records `eid` for `call`; returns false if the call already had it.
    #[inline]
    fn remember(&mut self, call: usize, eid: IdKey) -> bool {
        let acc = &self.calls[call];
        let n = acc.n_events as usize;
        if n >= BLOCK_IDS {
            if !self.many_ids.insert((call as u32, eid)) {
                return false;
            }
            self.calls[call].n_events += 1;
            return true;
        }
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
        if n + 1 == BLOCK_IDS {
            self.spill_ids(call);
        }
        true
    }

    /// Copies call `c`'s [`BLOCK_IDS`] ids from its blocks to `many_ids`, which holds its
    /// ids from now on.
    #[cold]
    fn spill_ids(&mut self, c: usize) {
        let mut block = self.calls[c].eid_block;
        while block != NO_BLOCK {
            for &id in &self.eid_blocks[block as usize] {
                self.many_ids.insert((c as u32, id));
            }
            block = self.eid_next[block as usize];
        }
    }

    #[inline]
    fn leg(&mut self, call: usize, agent: u32) -> usize {
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
            tenant: self.calls[call].tenant,
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
        // Every row's call is found (or added) first, in row order: the lookups do not
        // depend on one another, so their cache misses overlap, where folded row by row
        // each waited for the previous row's update.
        let mut row_call = std::mem::take(&mut self.row_call);
        row_call.clear();
        row_call.extend((0..n).map(|r| {
            let et = b.etype[r];
            if et == INVALID || et > EventType::WrapupEnded as u8 {
                return u32::MAX;
            }
            debug_assert_ne!(b.call[r], NO_CALL, "the decoder rejects call events without a call");
            self.call_index(b.call[r], b.tenant[r]) as u32
        }));
        for r in 0..n {
            let et = b.etype[r];
            if et == INVALID {
                self.stats.invalid += 1;
                continue;
            }
            if et > EventType::WrapupEnded as u8 {
                if self.other_ids.insert((b.tenant[r], b.event_id[r])) {
                    self.stats.other_events += 1;
                    self.first_copy[r] = true;
                } else {
                    self.stats.duplicates += 1;
                }
                continue;
            }
            let c = row_call[r] as usize;
            if !self.remember(c, b.event_id[r]) {
                self.stats.duplicates += 1;
                continue;
            }
            self.first_copy[r] = true;
            self.stats.call_events += 1;
            if !self.calls[c].dirty {
                self.mark_dirty(c);
            }
            let t = b.t_ms[r];
            let queue = b.queue[r];
            let agent = b.agent[r];
            let acc = &mut self.calls[c];
            acc.last_ms = acc.last_ms.max(t);
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
            let l = self.leg(c, agent);
            let leg = &mut self.legs[l];
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
        self.row_call = row_call;
    }

    /// Every call written at the end of time, then the tables, stamped `computed_at_ms` (a
    /// batch run's output; the order-independence tests compare it).
    pub fn output(&mut self, dicts: &Dictionaries, params: &Params, computed_at_ms: i64) -> Result<FoldOutput> {
        self.emit(dicts, params, computed_at_ms, Horizon::END)?;
        let call_mos = self.call_mos();
        let all: Vec<u32> = (0..self.calls.len() as u32).filter(|&c| self.calls[c as usize].revision > 0).collect();
        Ok(FoldOutput {
            call_facts: self.call_facts(&all, dicts, params, &call_mos)?,
            agent_legs: self.agent_legs(0..self.legs.len(), dicts, params)?,
            interval_partials: self.interval_partials(dicts, params)?,
        })
    }

    /// Writes what is due at `horizon` (see the module doc): calls due for the first time
    /// get revision 1; written calls that changed, and the interval partials, get a new
    /// revision and corrections when their values differ. Stamps new revisions `now`.
    pub fn emit(&mut self, dicts: &Dictionaries, p: &Params, now: i64, horizon: Horizon) -> Result<Emission> {
        if self.settled_spent {
            return Err(crate::Error::FoldEnded);
        }
        let mut em = Emission::default();
        let mut old_images: Vec<(u32, Image)> = Vec::new();
        let mut snapshots: Vec<(u32, CallAcc, f64)> = Vec::new();
        for c in std::mem::take(&mut self.dirty_calls) {
            let acc = &mut self.calls[c as usize];
            if acc.revision == 0 {
                if !horizon.due(acc.complete(), acc.last_ms) {
                    self.dirty_calls.push(c);
                    continue;
                }
                acc.revision = 1;
                acc.computed_at = now;
                acc.dirty = false;
                em.new_calls += 1;
                em.changed = true;
                continue;
            }
            acc.dirty = false;
            em.changed = true;
            if let Some(img) = self.committed.remove(&c) {
                old_images.push((c, img));
            } else if let Some((old, m)) = self.before.remove(&c) {
                snapshots.push((c, old, m));
            }
        }
        if !snapshots.is_empty() {
            let olds: Vec<&CallAcc> = snapshots.iter().map(|s| &s.1).collect();
            let mos: Vec<f64> = snapshots.iter().map(|s| s.2).collect();
            let batch = self.facts_batch(&olds, &mos, dicts, p, false)?;
            old_images.extend(snapshots.iter().map(|s| s.0).zip(images(&batch)?));
        }
        if !old_images.is_empty() {
            let accs: Vec<&CallAcc> = old_images.iter().map(|(c, _)| &self.calls[*c as usize]).collect();
            let mos: Vec<f64> = old_images.iter().map(|(c, _)| self.mos_of(*c as usize)).collect();
            let batch = self.facts_batch(&accs, &mos, dicts, p, false)?;
            let columns = value_columns(&batch, &["call_id"]);
            let names: Vec<String> = batch.schema().fields().iter().map(|f| f.name().clone()).collect();
            let mut text = String::new();
            for ((c, old), new) in old_images.iter().zip(images(&batch)?) {
                let changes = diff(old, &new, &columns, &names);
                if changes.is_empty() {
                    continue;
                }
                let acc = &mut self.calls[*c as usize];
                acc.revision += 1;
                acc.computed_at = now;
                em.revised_calls += 1;
                text.clear();
                dicts.ids.text(acc.key, &mut text);
                let tenant = dicts.tenants.name(acc.tenant).unwrap_or_default();
                em.corrections.extend(changes.into_iter().map(|(column, old, new)| Correction {
                    table: TABLE_CALL_FACTS,
                    key: text.clone(),
                    tenant: tenant.to_string(),
                    column,
                    old,
                    new,
                    revision: acc.revision as i64,
                }));
            }
        }
        if em.changed {
            self.emit_partials(dicts, p, now, horizon == Horizon::END, &mut em);
        }
        self.evict(dicts, p, horizon, &mut em)?;
        Ok(em)
    }

    /// Evicts the written, unchanged calls past the retention horizon, in bursts (at least
    /// a quarter of the calls held, so compacting the state is amortized): their rows go
    /// to the emission as sealed rows, their contributions to the sealed partials.
    fn evict(&mut self, dicts: &Dictionaries, p: &Params, horizon: Horizon, em: &mut Emission) -> Result<()> {
        if horizon.retention_ms == i64::MAX || !self.refold.is_empty() {
            return Ok(());
        }
        let expired: Vec<bool> =
            self.calls.iter().map(|c| c.revision > 0 && !c.dirty && horizon.expired(c.last_ms)).collect();
        let n = expired.iter().filter(|e| **e).count();
        if n == 0 || (n * 4 < self.calls.len() && n < 1 << 16) {
            return Ok(());
        }
        let gone: Vec<u32> = (0..self.calls.len() as u32).filter(|&c| expired[c as usize]).collect();
        let (facts, legs) = self.leaving_rows(&gone, &expired, dicts, p, true, 64 * 1024)?;
        em.sealed_facts.extend(facts);
        em.sealed_legs.extend(legs);
        for &c in &gone {
            let acc = self.calls[c as usize];
            if acc.queued_ms != MIN_NONE {
                let k = Contribution::of(&acc);
                self.sealed_parts.entry(k.key).or_default().apply(&k, p, 1);
            }
            self.sealed_fp.insert(acc.hash(&self.hasher));
        }
        em.evicted += n as u64;
        self.compact(&expired, p);
        self.seal_partials(dicts, p, horizon, em)
    }

    /// Batch mode (`replay`, where every call is written once, at the end of the input):
    /// writes and forgets the complete calls (abandoned, or ended with every leg wrapped
    /// up) whose latest event is more than `after_ms` behind the latest event of their
    /// tenant, so the state holds the calls of the last `after_ms` and the open ones rather
    /// than every call of the input. (A call still open may be hours long: its next event
    /// would undo the pass.) Their rows are revision 1, stamped `now`, in
    /// batches of at most `rows` calls; their contributions to the interval partials stay
    /// (the partials of [`CallFold::emit`] at the end of time include them).
    ///
    /// Calls are forgotten in bursts of at least `min_calls`, and at least a quarter of the
    /// calls held, so compacting the state is amortized; `None` until then.
    ///
    /// Exactness holds only if no event of a forgotten call comes later. Call
    /// [`CallFold::begin_settling`] before the first event, and
    /// [`CallFold::settled_call_seen_again`] after the last: if it says so, the caller
    /// must discard what it wrote and fold the input again without settling.
    pub fn settle(
        &mut self,
        dicts: &Dictionaries,
        p: &Params,
        now: i64,
        after_ms: i64,
        min_calls: usize,
        rows: usize,
    ) -> Result<Option<Settled>> {
        if !self.settling || self.calls.len() < min_calls {
            return Ok(None);
        }
        // The latest event of each tenant is that of a call held: the call that has it is
        // never behind it, so it is never forgotten.
        let mut latest: Vec<i64> = Vec::new();
        for c in &self.calls {
            let t = c.tenant as usize;
            if t >= latest.len() {
                latest.resize(t + 1, MAX_NONE);
            }
            latest[t] = latest[t].max(c.last_ms);
        }
        let expired: Vec<bool> = self
            .calls
            .iter()
            .map(|c| c.revision == 0 && c.complete() && c.last_ms < latest[c.tenant as usize].saturating_sub(after_ms))
            .collect();
        let n = expired.iter().filter(|e| **e).count();
        if n < min_calls || n * 4 < self.calls.len() {
            return Ok(None);
        }
        let gone: Vec<u32> = (0..self.calls.len() as u32).filter(|&c| expired[c as usize]).collect();
        for &c in &gone {
            let acc = &mut self.calls[c as usize];
            acc.revision = 1;
            acc.computed_at = now;
            acc.dirty = false;
        }
        let (call_facts, agent_legs) = self.leaving_rows(&gone, &expired, dicts, p, false, rows)?;
        let out = Settled { calls: n as u64, call_facts, agent_legs };
        for &c in &gone {
            let acc = &self.calls[c as usize];
            if acc.queued_ms != MIN_NONE {
                let k = Contribution::of(acc);
                self.settled_parts.slot(k.key).apply(&k, p, 1);
            }
        }
        self.settled_any = true;
        self.compact(&expired, p);
        Ok(Some(out))
    }

    /// The `call_facts` and `agent_legs` rows of the calls at positions `gone` (marked in
    /// `leaving`), about to leave the state, `sealed` or not, in batches of at most `rows`.
    fn leaving_rows(
        &self,
        gone: &[u32],
        leaving: &[bool],
        dicts: &Dictionaries,
        p: &Params,
        sealed: bool,
        rows: usize,
    ) -> Result<(Vec<RecordBatch>, Vec<RecordBatch>)> {
        let mut facts = Vec::new();
        for chunk in gone.chunks(rows.max(1)) {
            let accs: Vec<&CallAcc> = chunk.iter().map(|&c| &self.calls[c as usize]).collect();
            let mos: Vec<f64> = chunk.iter().map(|&c| self.mos_of(c as usize)).collect();
            facts.push(self.facts_batch(&accs, &mos, dicts, p, sealed)?);
        }
        let legs: Vec<&LegAcc> = self.legs.iter().filter(|l| l.n_answered > 0 && leaving[l.call as usize]).collect();
        let legs =
            legs.chunks(rows.max(1)).map(|chunk| self.legs_batch(chunk, dicts, p, sealed)).collect::<Result<_>>()?;
        Ok((facts, legs))
    }

    /// Seals the written partials that no call held contributes to any more and whose
    /// interval ended before the retention horizon: their rows go to the emission, sealed,
    /// and leave memory with their sealed contributions.
    fn seal_partials(&mut self, dicts: &Dictionaries, p: &Params, horizon: Horizon, em: &mut Emission) -> Result<()> {
        let cutoff = horizon.watermark_ms.saturating_sub(horizon.retention_ms);
        let held: hashbrown::HashSet<PartKey, FixedState> =
            self.calls.iter().filter(|c| c.queued_ms != MIN_NONE).map(|c| Contribution::of(c).key).collect();
        let (sealed, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.partials)
            .into_iter()
            .partition(|(k, _)| !held.contains(k) && k.2.saturating_add(PARTIAL_INTERVAL_MS) <= cutoff);
        self.partials = kept;
        if sealed.is_empty() {
            return Ok(());
        }
        for (k, _) in &sealed {
            self.sealed_parts.remove(k);
            self.sealed_through = self.sealed_through.max(k.2);
        }
        self.probed.clear();
        em.sealed_partials.push(self.partials_batch(&sealed, dicts, p, true)?);
        Ok(())
    }

    /// Drops the calls marked in `drop` (and their legs and event ids) from the state,
    /// keeping their share of the live counters.
    fn compact(&mut self, drop: &[bool], p: &Params) {
        for (c, _) in self.calls.iter().zip(drop).filter(|(c, d)| **d && c.queued_ms != MIN_NONE) {
            let n = self.evicted_counts.entry((c.tenant, c.entry_queue)).or_default();
            n[0] += 1;
            match c.wait_ms() {
                Some(w) if c.answered() => {
                    n[1] += 1;
                    n[3] += (w <= p.sl_threshold_ms) as u64;
                }
                Some(_) => n[2] += 1,
                None => {}
            }
        }
        // In place, keeping each vector's memory: the state's pages stay the same ones.
        let mut remap = vec![u32::MAX; self.calls.len()];
        let mut kept = 0;
        for i in 0..self.calls.len() {
            if !drop[i] {
                remap[i] = kept as u32;
                self.calls[kept] = self.calls[i];
                kept += 1;
            }
        }
        self.calls.truncate(kept);
        let mut leg_remap = vec![NO_LEG; self.legs.len()];
        let mut kept = 0;
        for (j, slot) in leg_remap.iter_mut().enumerate() {
            let l = self.legs[j];
            if remap[l.call as usize] != u32::MAX {
                *slot = kept as u32;
                self.legs[kept] = LegAcc { call: remap[l.call as usize], ..l };
                kept += 1;
            }
        }
        self.legs.truncate(kept);
        let relink = |l: u32| if l == NO_LEG { NO_LEG } else { leg_remap[l as usize] };
        for l in &mut self.legs {
            l.next = relink(l.next);
        }
        // Event-id blocks: those of the calls kept move down, in order; then every link
        // (chain heads and successors) follows its block.
        let mut block_remap = vec![NO_BLOCK; self.eid_blocks.len()];
        for c in &self.calls {
            let mut b = c.eid_block;
            while b != NO_BLOCK {
                block_remap[b as usize] = 0;
                b = self.eid_next[b as usize];
            }
        }
        let mut kept = 0;
        for (b, slot) in block_remap.iter_mut().enumerate() {
            if *slot != NO_BLOCK {
                *slot = kept as u32;
                self.eid_blocks[kept] = self.eid_blocks[b];
                self.eid_next[kept] = self.eid_next[b];
                kept += 1;
            }
        }
        self.eid_blocks.truncate(kept);
        self.eid_next.truncate(kept);
        let follow = |b: u32| if b == NO_BLOCK { NO_BLOCK } else { block_remap[b as usize] };
        for n in &mut self.eid_next {
            *n = follow(*n);
        }
        for c in &mut self.calls {
            c.first_leg = relink(c.first_leg);
            c.eid_block = follow(c.eid_block);
        }
        self.index.clear();
        for (i, c) in self.calls.iter().enumerate() {
            let (hasher, accs) = (&self.hasher, &self.calls);
            self.index.insert_unique(c.hash(hasher), i as u32, |&j| accs[j as usize].hash(hasher));
        }
        let map = |c: u32| remap[c as usize];
        if !self.many_ids.is_empty() {
            self.many_ids = std::mem::take(&mut self.many_ids)
                .into_iter()
                .filter(|(c, _)| map(*c) != u32::MAX)
                .map(|(c, id)| (map(c), id))
                .collect();
        }
        self.dirty_calls = self.dirty_calls.iter().map(|&c| map(c)).filter(|&c| c != u32::MAX).collect();
        self.refold = self.refold.iter().map(|&c| map(c)).filter(|&c| c != u32::MAX).collect();
        self.before = std::mem::take(&mut self.before)
            .into_iter()
            .filter(|(c, _)| map(*c) != u32::MAX)
            .map(|(c, v)| (map(c), v))
            .collect();
        self.committed = std::mem::take(&mut self.committed)
            .into_iter()
            .filter(|(c, _)| map(*c) != u32::MAX)
            .map(|(c, v)| (map(c), v))
            .collect();
    }

    /// The ids of the calls seen again after their eviction, whose earlier events and
    /// sealed rows the caller reads back before the next [`CallFold::emit`]: it folds the
    /// events (copies already folded are skipped) and hands the rows to [`CallFold::unseal`].
    pub fn refold_ids(&self, dicts: &Dictionaries) -> Vec<CallName> {
        self.refold.iter().map(|&c| self.call_name(c as usize, dicts)).collect()
    }

    /// After a refold: `rows` are the sealed `call_facts` rows of the calls in
    /// [`CallFold::refold_ids`] (none for a call that only shared a fingerprint). Each such
    /// call takes its row as the committed revision, its contribution leaves the sealed
    /// partials, and its sealed rows are listed for removal ([`CallFold::take_unsealed`]).
    pub fn unseal(&mut self, dicts: &mut Dictionaries, p: &Params, rows: &[RecordBatch]) -> Result<u64> {
        let mut n = 0;
        for b in rows {
            let (tenants, ids) = (string_column(b, "tenant_id")?, string_column(b, "call_id")?);
            let contributions = Contribution::of_rows(b, dicts)?;
            let adopted = self.adopt_rows(dicts, b, &Fixes::new())?;
            for (i, c) in adopted.into_iter().enumerate() {
                if c.is_none() {
                    continue;
                }
                n += 1;
                self.unsealed.push(CallName::of_row(&tenants, &ids, i));
                if let Some(k) = contributions[i] {
                    self.unseal_contribution(&k, p);
                }
            }
        }
        self.refold.clear();
        Ok(n)
    }

    /// Takes committed `call_facts` rows of calls the fold holds as their last written
    /// revision: the row's values (patched by `fixes`, corrections of a later revision whose
    /// own commit did not land) become the call's committed image, and the call is checked
    /// at the next [`CallFold::emit`]. Returns, per row, the call's position if held.
    fn adopt_rows(&mut self, dicts: &mut Dictionaries, b: &RecordBatch, fixes: &Fixes) -> Result<Vec<Option<usize>>> {
        let names: Vec<String> = b.schema().fields().iter().map(|f| f.name().clone()).collect();
        let (tenants, ids) = (string_column(b, "tenant_id")?, string_column(b, "call_id")?);
        let revision = int64_column(b, "revision")?;
        let computed = timestamp_column(b, "computed_at")?;
        let mut out = Vec::with_capacity(b.num_rows());
        for (i, mut img) in images(b)?.into_iter().enumerate() {
            let Some(c) = self.find_row(dicts, &tenants, &ids, i).0 else {
                out.push(None);
                continue;
            };
            out.push(Some(c));
            let mut rev = revision.value(i);
            // Keys are built only when there are corrections to look up (rarely, after a crash).
            let fixed = (!fixes.is_empty())
                .then(|| fixes.get(&(tenants.value(i).to_string(), ids.value(i).to_string())))
                .flatten();
            for (r, column, value) in fixed.into_iter().flatten() {
                if *r > revision.value(i) {
                    if let Some(pos) = names.iter().position(|n| n == column) {
                        img[pos] = value.clone();
                    }
                    rev = rev.max(*r);
                }
            }
            let acc = &mut self.calls[c];
            acc.revision = rev as u32;
            acc.computed_at = computed.value(i);
            self.before.remove(&(c as u32));
            self.committed.insert(c as u32, img);
            if !self.calls[c].dirty {
                self.calls[c].dirty = true;
                self.dirty_calls.push(c as u32);
            }
        }
        Ok(out)
    }

    /// Takes call contribution `k` out of the sealed partials.
    fn unseal_contribution(&mut self, k: &Contribution, p: &Params) {
        if let Some(part) = self.sealed_parts.get_mut(&k.key) {
            part.apply(k, p, -1);
            if part.offered <= 0 {
                self.sealed_parts.remove(&k.key);
            } else if k.wait_ms.is_some() && k.wait_ms >= part.max_wait_ms {
                self.stale_max.push(k.key);
            }
        }
    }

    /// Calls whose sealed rows must leave the sealed files (re-folded, or corrected after a
    /// restart): the caller rewrites the files that hold them at the next commit.
    pub fn take_unsealed(&mut self) -> Vec<CallName> {
        std::mem::take(&mut self.unsealed)
    }

    /// The calls [`CallFold::take_unsealed`] will return.
    pub fn unsealed(&self) -> &[CallName] {
        &self.unsealed
    }

    /// The sealed partials to read back before the next [`CallFold::unseal`] or
    /// [`CallFold::emit`]: those of the calls that changed and of the sealed `call_facts`
    /// rows in `unsealing` that the fold does not hold, in intervals that may be sealed in
    /// the table, each asked for once. Tenant, queue, interval start; the caller reads the
    /// sealed rows with these keys (none: not sealed) and hands them to
    /// [`CallFold::load_sealed_partials`].
    pub fn sealed_partials_needed(
        &mut self,
        dicts: &mut Dictionaries,
        unsealing: &[RecordBatch],
    ) -> Result<Vec<(String, Option<String>, i64)>> {
        self.probing.clear();
        if self.sealed_through == i64::MIN {
            return Ok(Vec::new());
        }
        let mut keys: Vec<PartKey> = self
            .dirty_calls
            .iter()
            .map(|&c| &self.calls[c as usize])
            .filter(|c| c.queued_ms != MIN_NONE)
            .map(|c| Contribution::of(c).key)
            .collect();
        for b in unsealing {
            keys.extend(Contribution::of_rows(b, dicts)?.into_iter().flatten().map(|k| k.key));
        }
        keys.sort_unstable();
        keys.dedup();
        let through = self.sealed_through;
        let partials = &self.partials;
        let probed = &mut self.probed;
        keys.retain(|k| k.2 <= through && partials.binary_search_by_key(k, |(k, _)| *k).is_err() && probed.insert(*k));
        self.probing = keys;
        Ok(self.probing.iter().map(|k| key_names(dicts, k)).collect())
    }

    /// Takes back the sealed `interval_partials` rows of the keys asked for by
    /// [`CallFold::sealed_partials_needed`] (other rows are ignored): each becomes a written
    /// row again, its values the sealed contributions, and its key is listed for the
    /// rewrite of the sealed files ([`CallFold::take_loaded_partials`]).
    pub fn load_sealed_partials(&mut self, dicts: &mut Dictionaries, rows: &[RecordBatch]) -> Result<()> {
        let probing = std::mem::take(&mut self.probing);
        for b in rows {
            for (key, row) in partial_rows(b, dicts, &Fixes::new())? {
                if probing.binary_search(&key).is_ok() {
                    self.take_back(key, row);
                }
            }
        }
        Ok(())
    }

    /// A sealed partial back in memory (see [`CallFold::load_sealed_partials`]).
    fn take_back(&mut self, key: PartKey, row: PartialRow) {
        if self.loaded.contains(&key) {
            return;
        }
        self.sealed_parts.entry(key).or_default().merge(&row.part);
        match self.partials.binary_search_by_key(&key, |(k, _)| *k) {
            Ok(i) => self.partials[i].1 = row,
            Err(i) => self.partials.insert(i, (key, row)),
        }
        self.loaded.push(key);
    }

    /// The keys of the sealed partials taken back since the last call (tenant, queue,
    /// interval start): the next commit removes the sealed files that hold them and writes
    /// those files' other rows again.
    pub fn take_loaded_partials(&mut self, dicts: &Dictionaries) -> Vec<(String, Option<String>, i64)> {
        let keys = std::mem::take(&mut self.loaded);
        keys.iter().map(|k| key_names(dicts, k)).collect()
    }

    /// Sealed `agent_legs` rows a restart found missing ([`CallFold::restore`]).
    pub fn take_carried_legs(&mut self) -> Vec<RecordBatch> {
        std::mem::take(&mut self.carry_legs)
    }

    /// Sealed partials whose maximum wait left with an unsealed call: tenant, queue,
    /// interval start. The caller computes each maximum again from the sealed rows
    /// ([`CallFold::set_sealed_max`]).
    pub fn stale_max(&mut self, dicts: &Dictionaries) -> Vec<(String, Option<String>, i64)> {
        self.stale_max.sort_unstable();
        self.stale_max.dedup();
        self.stale_max.iter().map(|k| key_names(dicts, k)).collect()
    }

    /// Sets the maximum wait over the sealed rows of the `i`-th partial of
    /// [`CallFold::stale_max`]; call once per entry, then the list is cleared.
    pub fn set_sealed_max(&mut self, max_wait_ms: &[Option<i64>]) {
        for (k, m) in self.stale_max.drain(..).zip(max_wait_ms) {
            if let Some(part) = self.sealed_parts.get_mut(&k) {
                part.max_wait_ms = *m;
            }
        }
    }

    /// Recomputes the interval partials from the written calls and revises those that changed.
    ///
    /// The recomputed groups become the written rows: each takes its revision from the row
    /// it replaces (+ 1 if its values changed), a new one revision 1, and a row without a
    /// group is gone. One table per emission, never a copy of it.
    fn emit_partials(&mut self, dicts: &Dictionaries, p: &Params, now: i64, end: bool, em: &mut Emission) {
        // Settled calls' contributions (a replay's whole month, most of its partials) are
        // the grouping to add to: at the end of time they are moved, not copied.
        let mut grouping = if end && self.settled_any {
            self.settled_spent = true;
            std::mem::take(&mut self.settled_parts)
        } else {
            self.settled_parts.clone()
        };
        for c in &self.calls {
            if c.queued_ms == MIN_NONE || c.revision == 0 {
                continue;
            }
            let k = Contribution::of(c);
            grouping.slot(k.key).apply(&k, p, 1);
        }
        for (key, part) in &self.sealed_parts {
            grouping.slot(*key).merge(part);
        }
        let groups = grouping.finish();
        let mut correct = |key: &PartKey, old: &Part, new: Option<&Part>, revision: u32| {
            let (o, n) = (old.values(), new.map(Part::values));
            let key_text = partial_key(dicts, key);
            let tenant = dicts.tenants.name(key.0).unwrap_or_default();
            for (i, column) in Part::COLUMNS.iter().enumerate() {
                let nv = n.and_then(|n| n[i]);
                if o[i] != nv {
                    em.corrections.push(Correction {
                        table: TABLE_INTERVAL_PARTIALS,
                        key: key_text.clone(),
                        tenant: tenant.to_string(),
                        column: column.to_string(),
                        old: o[i].map(|v| v.to_string()),
                        new: nv.map(|v| v.to_string()),
                        revision: revision as i64,
                    });
                }
            }
        };
        // Both lists are sorted by key: walk them together. The new rows take the revision
        // of the row they replace (+ 1 if their values changed).
        let mut rows = groups;
        let mut old = self.partials.iter().peekable();
        for (key, row) in rows.iter_mut() {
            while let Some((k, gone)) = old.next_if(|(k, _)| k < key) {
                correct(k, &gone.part, None, gone.revision + 1);
                em.revised_partials += 1;
                em.changed = true;
            }
            (row.revision, row.computed_at) = match old.next_if(|(k, _)| k == key) {
                Some((_, was)) if was.part == row.part => (was.revision, was.computed_at),
                Some((_, was)) => {
                    correct(key, &was.part, Some(&row.part), was.revision + 1);
                    em.revised_partials += 1;
                    em.changed = true;
                    (was.revision + 1, now)
                }
                None => {
                    em.changed = true;
                    (1, now)
                }
            };
        }
        for (k, gone) in old {
            correct(k, &gone.part, None, gone.revision + 1);
            em.revised_partials += 1;
            em.changed = true;
        }
        self.partials = rows;
    }

    /// After a restart: the rows the tables hold for this fold's partition (`call_facts`,
    /// `interval_partials`, `corrections`), read back once the fold has re-read the log up
    /// to the tables' offsets. Written calls and partials get their committed revisions; a
    /// committed row that a later correction revised (its own commit did not land) takes
    /// the corrected values. Every written call is checked again at the next
    /// [`CallFold::emit`], so a table behind the fold is corrected.
    pub fn restore(
        &mut self,
        dicts: &mut Dictionaries,
        p: &Params,
        call_facts: &[RecordBatch],
        sealed_leg_calls: &std::collections::HashSet<CallName>,
        interval_partials: &[RecordBatch],
        corrections: &[RecordBatch],
    ) -> Result<()> {
        let facts_fixes = super::revisions::corrections_by_key(corrections, TABLE_CALL_FACTS)?;
        let partial_fixes = super::revisions::corrections_by_key(corrections, TABLE_INTERVAL_PARTIALS)?;
        // A partial sealed in the table stays sealed if it is the sum of its sealed calls'
        // rows; otherwise (a crash between the commits that sealed or unsealed a call and
        // its partial) it comes back into memory, recomputed from those rows.
        let mut held_partials: Vec<(PartKey, PartialRow)> = Vec::new();
        let mut on_disk: HashMap<PartKey, PartialRow, FixedState> = HashMap::default();
        let mut disk_sums: HashMap<PartKey, Part, FixedState> = HashMap::default();
        let mut leaving: Vec<Contribution> = Vec::new();
        for b in interval_partials {
            let sealed = b
                .column_by_name(SEALED_COLUMN)
                .and_then(|c| c.as_any().downcast_ref::<BooleanArray>())
                .ok_or(crate::Error::MissingColumn(SEALED_COLUMN))?;
            for (i, (key, row)) in partial_rows(b, dicts, &partial_fixes)?.into_iter().enumerate() {
                if sealed.value(i) {
                    self.sealed_through = self.sealed_through.max(key.2);
                    on_disk.insert(key, row);
                } else {
                    held_partials.push((key, row));
                }
            }
        }
        let mut evict = vec![false; self.calls.len()];
        // Legs do not change while rows are read back: one MOS per call for every batch.
        let call_mos = self.call_mos();
        for b in call_facts {
            let sealed = b
                .column_by_name(SEALED_COLUMN)
                .and_then(|c| c.as_any().downcast_ref::<BooleanArray>())
                .ok_or(crate::Error::MissingColumn(SEALED_COLUMN))?;
            let live = filter_record_batch(b, &arrow::compute::not(sealed)?)?;
            self.adopt_rows(dicts, &live, &facts_fixes)?;
            // Sealed rows: the call's final form, unless the state that the fold rebuilt
            // says otherwise (an event folded before a crash kept its commit from landing).
            let sealed = filter_record_batch(b, sealed)?;
            let (tenants, ids) = (string_column(&sealed, "tenant_id")?, string_column(&sealed, "call_id")?);
            let contributions = Contribution::of_rows(&sealed, dicts)?;
            let rows = images(&sealed)?;
            let mut held: Vec<(usize, usize)> = Vec::new();
            for (i, k) in contributions.iter().enumerate() {
                match self.find_row(dicts, &tenants, &ids, i) {
                    (Some(c), _) => held.push((i, c)),
                    (None, hash) => {
                        self.sealed_fp.insert(hash);
                        if let Some(k) = k {
                            let sums =
                                if on_disk.contains_key(&k.key) { &mut disk_sums } else { &mut self.sealed_parts };
                            sums.entry(k.key).or_default().apply(k, p, 1);
                        }
                    }
                }
            }
            if held.is_empty() {
                continue;
            }
            let accs: Vec<&CallAcc> = held.iter().map(|&(_, c)| &self.calls[c]).collect();
            let mos: Vec<f64> = held.iter().map(|&(_, c)| call_mos[c]).collect();
            let now_batch = self.facts_batch(&accs, &mos, dicts, p, false)?;
            let columns = value_columns(&now_batch, &["call_id"]);
            let names: Vec<String> = now_batch.schema().fields().iter().map(|f| f.name().clone()).collect();
            let current = images(&now_batch)?;
            let mut differ = Vec::new();
            for (j, &(i, c)) in held.iter().enumerate() {
                if diff(&rows[i], &current[j], &columns, &names).is_empty() {
                    evict[c] = true;
                    self.sealed_fp.insert(self.calls[c].hash(&self.hasher));
                    if let Some(k) = &contributions[i] {
                        let sums = if on_disk.contains_key(&k.key) { &mut disk_sums } else { &mut self.sealed_parts };
                        sums.entry(k.key).or_default().apply(k, p, 1);
                    }
                } else {
                    differ.push(i as u32);
                    self.unsealed.push(CallName::of_row(&tenants, &ids, i));
                    // Its sealed partial comes back without it.
                    if let Some(k) = contributions[i].filter(|k| on_disk.contains_key(&k.key)) {
                        disk_sums.entry(k.key).or_default().apply(&k, p, 1);
                        leaving.push(k);
                    }
                }
            }
            if !differ.is_empty() {
                let rows = arrow::compute::take_record_batch(&sealed, &arrow::array::UInt32Array::from(differ))?;
                self.adopt_rows(dicts, &rows, &facts_fixes)?;
            }
        }
        // `call_facts` and `agent_legs` commit one after the other: a crash between the two
        // leaves a call's legs on the other side of the seal. Legs of a held call leave the
        // sealed files; legs of a call sealed here are sealed unless they already are.
        let mut carry: Vec<&LegAcc> = Vec::new();
        for (c, acc) in self.calls.iter().enumerate() {
            let name = self.call_name(c, dicts);
            let legs_sealed = sealed_leg_calls.contains(&name);
            if !evict[c] && legs_sealed {
                self.unsealed.push(name);
            } else if evict[c] && !legs_sealed {
                let mut l = acc.first_leg;
                while l != NO_LEG {
                    if self.legs[l as usize].n_answered > 0 {
                        carry.push(&self.legs[l as usize]);
                    }
                    l = self.legs[l as usize].next;
                }
            }
        }
        if !carry.is_empty() {
            let batch = self.legs_batch(&carry, dicts, p, true)?;
            self.carry_legs.push(batch);
        }
        self.unsealed.sort_unstable();
        self.unsealed.dedup();
        if evict.iter().any(|e| *e) {
            self.compact(&evict, p);
        }
        for (key, row) in on_disk {
            let sum = disk_sums.remove(&key).unwrap_or_default();
            if sum == row.part && !leaving.iter().any(|k| k.key == key) {
                continue;
            }
            if sum.offered > 0 {
                self.sealed_parts.insert(key, sum);
            }
            self.partials.push((key, row));
            self.loaded.push(key);
        }
        for k in &leaving {
            self.unseal_contribution(k, p);
        }
        let mut restored: HashMap<PartKey, PartialRow, FixedState> = self.partials.drain(..).collect();
        restored.extend(held_partials);
        self.partials = restored.into_iter().collect();
        self.partials.sort_unstable_by_key(|(k, _)| *k);
        Ok(())
    }

    /// `call_facts` of the written calls, in slices of at most `rows` calls, so that a
    /// writer can encode each slice while the next is built, and no table-sized arrays are
    /// ever allocated.
    pub fn call_facts_slices<'s>(
        &'s self,
        dicts: &'s Dictionaries,
        params: &'s Params,
        rows: usize,
    ) -> impl Iterator<Item = Result<RecordBatch>> + 's {
        let call_mos = self.call_mos();
        slices(self.calls.len(), rows).map(move |r| {
            let written: Vec<u32> = r.map(|c| c as u32).filter(|&c| self.calls[c as usize].revision > 0).collect();
            self.call_facts(&written, dicts, params, &call_mos)
        })
    }

    /// `agent_legs` of the written calls, in slices of the legs of at most `rows` (call,
    /// agent) pairs.
    pub fn agent_legs_slices<'s>(
        &'s self,
        dicts: &'s Dictionaries,
        params: &'s Params,
        rows: usize,
    ) -> impl Iterator<Item = Result<RecordBatch>> + 's {
        slices(self.legs.len(), rows).map(move |r| self.agent_legs(r, dicts, params))
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

    /// `call_facts` rows of the calls at positions `calls`.
    fn call_facts(&self, calls: &[u32], dicts: &Dictionaries, p: &Params, call_mos: &[f64]) -> Result<RecordBatch> {
        let accs: Vec<&CallAcc> = calls.iter().map(|&c| &self.calls[c as usize]).collect();
        let mos: Vec<f64> = calls.iter().map(|&c| call_mos[c as usize]).collect();
        self.facts_batch(&accs, &mos, dicts, p, false)
    }

    /// `call_facts` rows of `calls` (states held or copies of them), with their MOS.
    fn facts_batch(
        &self,
        calls: &[&CallAcc],
        call_mos: &[f64],
        dicts: &Dictionaries,
        p: &Params,
        sealed: bool,
    ) -> Result<RecordBatch> {
        let n = calls.len();
        let mut wait_ms = Vec::with_capacity(n);
        let mut hold_ms = Vec::with_capacity(n);
        let mut acw_ms = Vec::with_capacity(n);
        let mut handle_ms = Vec::with_capacity(n);
        for c in calls {
            let lc = c.legs_complete();
            wait_ms.push(c.wait_ms());
            hold_ms.push(lc.then(|| c.sum_hold_ended - c.sum_hold_started));
            acw_ms.push(lc.then(|| c.sum_wrapup - c.sum_leg_end));
            handle_ms.push(c.handle_ms());
        }
        let talk = |i: usize| Some(handle_ms[i]? - hold_ms[i]? - acw_ms[i]?);
        let ts = |f: &dyn Fn(&CallAcc) -> i64, none: i64| -> ArrayRef {
            Arc::new(
                nullable::<TimestampMillisecondType>(
                    n,
                    |i| Some(f(calls[i])).filter(|&v| v != none).unwrap_or(0),
                    |i| f(calls[i]) != none,
                )
                .with_timezone("UTC"),
            )
        };
        let ms = |v: &[Option<i64>]| -> ArrayRef {
            Arc::new(nullable::<Int64Type>(n, |i| v[i].unwrap_or(0), |i| v[i].is_some()))
        };
        let secs = |v: &dyn Fn(usize) -> Option<i64>| -> ArrayRef {
            Arc::new(nullable::<Float64Type>(n, |i| v(i).map_or(0.0, |ms| ms as f64 / 1000.0), |i| v(i).is_some()))
        };
        let columns: Vec<ArrayRef> = vec![
            Arc::new(dicts.ids.column(calls.iter().map(|c| c.key))?),
            dicts.tenants.dictionary(calls.iter().map(|c| c.tenant))?,
            dicts.queues.dictionary(calls.iter().map(|c| c.entry_queue))?,
            dicts.queues.dictionary(calls.iter().map(|c| c.final_queue))?,
            ts(&|c| c.queued_ms, MIN_NONE),
            ts(&|c| c.answered_ms, MIN_NONE),
            ts(&|c| c.abandoned_ms, MIN_NONE),
            ts(&|c| c.ended_ms, MAX_NONE),
            flags(n, |i| calls[i].answered()),
            flags(n, |i| calls[i].abandoned()),
            secs(&|i| wait_ms[i]),
            secs(&talk),
            secs(&|i| hold_ms[i]),
            secs(&|i| acw_ms[i]),
            secs(&|i| handle_ms[i]),
            flags(n, |i| calls[i].answered() && wait_ms[i].is_some_and(|w| w <= p.sl_threshold_ms)),
            flags(n, |i| calls[i].abandoned() && wait_ms[i].is_some_and(|w| w < p.short_abandon_ms)),
            flags(n, |i| calls[i].n_transfers > 0),
            Arc::new(Int64Array::from_iter_values(calls.iter().map(|c| c.n_transfers as i64))),
            flags(n, |i| calls[i].n_queued > 1),
            Arc::new(Int64Array::from_iter_values(calls.iter().map(|c| c.n_answered as i64))),
            flags(n, |i| calls[i].legs_complete()),
            ms(&wait_ms),
            ms(&handle_ms),
            Arc::new(nullable::<Float64Type>(n, |i| call_mos[i], |i| !call_mos[i].is_nan())),
            Arc::new(Int32Array::from_value(self.partition, n)),
            Arc::new(BooleanArray::from(vec![sealed; n])),
            Arc::new(Int64Array::from_iter_values(calls.iter().map(|c| c.revision as i64))),
            Arc::new(
                TimestampMillisecondArray::from_iter_values(calls.iter().map(|c| c.computed_at)).with_timezone("UTC"),
            ),
        ];
        Ok(RecordBatch::try_new(facts_rows_schema(), columns)?)
    }

    fn agent_legs(&self, range: Range<usize>, dicts: &Dictionaries, p: &Params) -> Result<RecordBatch> {
        let legs: Vec<&LegAcc> =
            self.legs[range].iter().filter(|l| l.n_answered > 0 && self.calls[l.call as usize].revision > 0).collect();
        self.legs_batch(&legs, dicts, p, false)
    }

    /// `agent_legs` rows of `legs`, `sealed` or not.
    fn legs_batch(&self, legs: &[&LegAcc], dicts: &Dictionaries, p: &Params, sealed: bool) -> Result<RecordBatch> {
        let n = legs.len();
        let call = |l: &LegAcc| -> &CallAcc { &self.calls[l.call as usize] };
        let complete: Vec<bool> = legs
            .iter()
            .map(|l| l.n_answered == 1 && l.n_leg_end == 1 && l.n_wrapup == 1 && l.n_hold_started == l.n_hold_ended)
            .collect();
        let hold = |l: &LegAcc| l.sum_hold_ended - l.sum_hold_started;
        let when = |f: &dyn Fn(&LegAcc) -> i64| -> ArrayRef {
            Arc::new(nullable::<Int64Type>(n, |i| if complete[i] { f(legs[i]) } else { 0 }, |i| complete[i]))
        };
        let media = |i: usize| -> ArrayRef {
            Arc::new(nullable::<Float64Type>(n, |r| legs[r].media[i], |r| !legs[r].media[i].is_nan()))
        };
        let class: Vec<(bool, bool)> = legs.iter().map(|l| p.cqd.classify(l.media)).collect();
        let leg_mos: Vec<f64> = legs.iter().map(|l| mos(l.media[2], l.media[0], l.media[1])).collect();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(dicts.ids.column(legs.iter().map(|l| call(l).key))?),
            dicts.agents.dictionary(legs.iter().map(|l| l.agent))?,
            dicts.tenants.dictionary(legs.iter().map(|l| l.tenant))?,
            Arc::new(
                TimestampMillisecondArray::from_iter_values(legs.iter().map(|l| l.answered_ms)).with_timezone("UTC"),
            ),
            Arc::new(Date32Array::from_iter_values(legs.iter().map(|l| l.answered_ms.div_euclid(MS_PER_DAY) as i32))),
            flags(n, |i| complete[i]),
            when(&hold),
            when(&|l| l.leg_end_ms - l.answered_ms - hold(l)),
            when(&|l| l.wrapup_ms - l.leg_end_ms),
            when(&|l| l.wrapup_ms - l.answered_ms),
            Arc::new(Int64Array::from_iter_values(legs.iter().map(|l| l.transfers as i64))),
            media(0),
            media(1),
            media(2),
            media(3),
            flags(n, |i| class[i].0),
            flags(n, |i| class[i].1),
            Arc::new(nullable::<Float64Type>(n, |i| leg_mos[i], |i| !leg_mos[i].is_nan())),
            Arc::new(Int32Array::from_value(self.partition, n)),
            Arc::new(BooleanArray::from(vec![sealed; n])),
            Arc::new(Int64Array::from_iter_values(legs.iter().map(|l| call(l).revision as i64))),
            Arc::new(
                TimestampMillisecondArray::from_iter_values(legs.iter().map(|l| call(l).computed_at))
                    .with_timezone("UTC"),
            ),
        ];
        Ok(RecordBatch::try_new(legs_rows_schema(), columns)?)
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
        for (&(tenant, queue), n) in &self.evicted_counts {
            let g =
                groups.entry((tenant, queue)).or_insert_with(|| LiveQueue { tenant, queue, ..LiveQueue::default() });
            g.offered += n[0];
            g.answered += n[1];
            g.abandoned += n[2];
            g.answered_within_sl += n[3];
        }
        ((now != MAX_NONE).then_some(now), groups.into_values().collect())
    }

    /// `interval_partials` as last written (one row per tenant × entry queue × 15-minute
    /// interval), in name order: the partials held, not those sealed.
    pub fn interval_partials(&self, dicts: &Dictionaries, p: &Params) -> Result<RecordBatch> {
        self.partials_batch(&self.partials, dicts, p, false)
    }

    fn partials_batch(
        &self,
        rows: &[(PartKey, PartialRow)],
        dicts: &Dictionaries,
        p: &Params,
        sealed: bool,
    ) -> Result<RecordBatch> {
        // In name order (tenant, queue, interval start): a tenant's rows sit together, so
        // the files' statistics let a query of one tenant and day skip the rest.
        // The rows come in key order (interned ids, then interval start), so each (tenant,
        // queue) is a run already in time order: only the runs are ordered by name.
        let names = |k: &PartKey| (dicts.tenants.name(k.0), name(&dicts.queues, k.1));
        let rows: Vec<&(PartKey, PartialRow)> = if rows.is_sorted_by_key(|(k, _)| *k) {
            let mut runs: Vec<&[(PartKey, PartialRow)]> =
                rows.chunk_by(|a, b| (a.0 .0, a.0 .1) == (b.0 .0, b.0 .1)).collect();
            runs.sort_unstable_by_key(|run| names(&run[0].0));
            runs.into_iter().flatten().collect()
        } else {
            let mut order: Vec<_> = rows.iter().collect();
            order.sort_unstable_by_key(|(k, _)| (names(k), k.2));
            order
        };
        let n = rows.len();
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(dicts.tenants.column(rows.iter().map(|(k, _)| k.0))?),
            Arc::new(dicts.queues.column(rows.iter().map(|(k, _)| k.1))?),
            Arc::new(TimestampMillisecondArray::from_iter_values(rows.iter().map(|(k, _)| k.2)).with_timezone("UTC")),
            Arc::new(Int32Array::from_value(self.partition, n)),
            Arc::new(BooleanArray::from(vec![sealed; n])),
        ];
        for i in 0..Part::COLUMNS.len() {
            columns.push(Arc::new(Int64Array::from_iter(rows.iter().map(|(_, r)| r.part.value(i)))));
        }
        columns.extend([
            Arc::new(Int64Array::from_value(p.sl_threshold_ms, n)) as ArrayRef,
            Arc::new(Int64Array::from_value(p.short_abandon_ms, n)),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|(_, r)| r.revision as i64))),
            Arc::new(
                TimestampMillisecondArray::from_iter_values(rows.iter().map(|(_, r)| r.computed_at))
                    .with_timezone("UTC"),
            ),
        ]);
        Ok(RecordBatch::try_new(interval_partials_schema(), columns)?)
    }
}

/// `call_facts` rows as the fold builds them: [`call_facts_schema`] with its names as
/// dictionary columns ([`crate::batch::Names::dictionary`]), which the table's files hold
/// as text.
fn facts_rows_schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| with_dictionaries(&call_facts_schema()));
    SCHEMA.clone()
}

/// `agent_legs` rows as the fold builds them (see [`facts_rows_schema`]).
fn legs_rows_schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| with_dictionaries(&agent_legs_schema()));
    SCHEMA.clone()
}

/// Tenant, queue (NULL for none) and interval start of a partial key.
fn key_names(dicts: &Dictionaries, k: &PartKey) -> (String, Option<String>, i64) {
    (dicts.tenants.name(k.0).unwrap_or_default().to_string(), name(&dicts.queues, k.1).map(str::to_string), k.2)
}

/// The rows of an `interval_partials` batch by key, each patched by `fixes` (corrections of
/// a later revision whose own commit did not land).
fn partial_rows(b: &RecordBatch, dicts: &mut Dictionaries, fixes: &Fixes) -> Result<Vec<(PartKey, PartialRow)>> {
    let tenants = string_column(b, "tenant_id")?;
    let queues = string_column(b, "queue_id")?;
    let starts = timestamp_column(b, "interval_start")?;
    let values: Vec<&Int64Array> = Part::COLUMNS.iter().map(|c| int64_column(b, c)).collect::<Result<_>>()?;
    let revision = int64_column(b, "revision")?;
    let computed = timestamp_column(b, "computed_at")?;
    let mut out = Vec::with_capacity(b.num_rows());
    for i in 0..b.num_rows() {
        let key = (
            dicts.tenants.intern(tenants.value(i)),
            if queues.is_valid(i) { dicts.queues.intern(queues.value(i)) } else { NONE },
            starts.value(i),
        );
        let mut v: [Option<i64>; 13] = std::array::from_fn(|j| values[j].is_valid(i).then(|| values[j].value(i)));
        let mut rev = revision.value(i);
        let fixed =
            (!fixes.is_empty()).then(|| fixes.get(&(tenants.value(i).to_string(), partial_key(dicts, &key)))).flatten();
        for (r, column, value) in fixed.into_iter().flatten() {
            if *r > revision.value(i) {
                if let Some(pos) = Part::COLUMNS.iter().position(|n| n == column) {
                    v[pos] = value.as_deref().and_then(|s| s.parse().ok());
                }
                rev = rev.max(*r);
            }
        }
        out.push((
            key,
            PartialRow { part: Part::from_values(v), revision: rev as u32, computed_at: computed.value(i) },
        ));
    }
    Ok(out)
}

/// The key text of an interval partial in `corrections`: `tenant/queue/interval_start`.
fn partial_key(dicts: &Dictionaries, key: &PartKey) -> String {
    format!(
        "{}/{}/{}",
        dicts.tenants.name(key.0).unwrap_or_default(),
        name(&dicts.queues, key.1).unwrap_or_default(),
        ccstream_schemas::format_rfc3339_ms(key.2)
    )
}

/// A nullable primitive column: every row's value (0 where it has none, by the callers'
/// convention) and whether it has one, packed 64 rows at a time — no builder appending an
/// `Option` row by row.
fn nullable<T: ArrowPrimitiveType>(
    n: usize,
    value: impl FnMut(usize) -> T::Native,
    valid: impl FnMut(usize) -> bool,
) -> PrimitiveArray<T> {
    let values: ScalarBuffer<T::Native> = (0..n).map(value).collect();
    let nulls = NullBuffer::new(BooleanBuffer::collect_bool(n, valid));
    PrimitiveArray::new(values, (nulls.null_count() > 0).then_some(nulls))
}

/// A boolean column without NULLs, packed 64 rows at a time.
fn flags(n: usize, f: impl FnMut(usize) -> bool) -> ArrayRef {
    Arc::new(BooleanArray::new(BooleanBuffer::collect_bool(n, f), None))
}

/// Text column `name` of `b`: a table's text as read back, or names as the fold's own rows
/// hold them (dictionary columns, decoded here).
fn string_column(b: &RecordBatch, name: &'static str) -> Result<StringArray> {
    let column = b.column_by_name(name).ok_or(crate::Error::MissingColumn(name))?;
    let text = match column.data_type() {
        DataType::Dictionary(_, _) => arrow::compute::cast(column, &DataType::Utf8)?,
        _ => column.clone(),
    };
    text.as_any().downcast_ref::<StringArray>().cloned().ok_or(crate::Error::MissingColumn(name))
}

fn timestamp_column<'b>(b: &'b RecordBatch, name: &'static str) -> Result<&'b TimestampMillisecondArray> {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<TimestampMillisecondArray>())
        .ok_or(crate::Error::MissingColumn(name))
}

fn int64_column<'b>(b: &'b RecordBatch, name: &'static str) -> Result<&'b Int64Array> {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
        .ok_or(crate::Error::MissingColumn(name))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::Decoder;
    use ccstream_schemas::Event;

    /// Folds `events` (JSON lines) as one batch; returns the first-copy flags.
    fn fold(fold: &mut CallFold, decoder: &mut Decoder, events: &[String]) -> Vec<bool> {
        let parsed: Vec<(Event<'_>, ccstream_schemas::Validated)> = events
            .iter()
            .map(|l| {
                let e = Event::from_json(l).unwrap();
                let v = e.validate().unwrap();
                (e, v)
            })
            .collect();
        let mut out = DecodedBatch::default();
        decoder.decode_events(&parsed, &mut out);
        fold.update(&out, &decoder.dicts);
        fold.first_copy().to_vec()
    }

    fn hold(id: usize) -> String {
        format!(
            r#"{{"event_id":"h{id}","tenant_id":"t","call_id":"c","agent_id":"a","event_type":"hold_started","occurred_at":"2026-11-30T10:00:00Z"}}"#
        )
    }

    #[test]
    fn a_call_with_many_events_keeps_deduplicating_them() {
        let (mut f, mut d) = (CallFold::new(0), Decoder::new());
        let first: Vec<String> = (0..10 * BLOCK_IDS).map(hold).collect();
        assert!(fold(&mut f, &mut d, &first).iter().all(|x| *x));
        // Copies of ids from before and after the spill, and new ids.
        let again = vec![hold(0), hold(BLOCK_IDS - 1), hold(BLOCK_IDS), hold(10 * BLOCK_IDS - 1), hold(10 * BLOCK_IDS)];
        assert_eq!(fold(&mut f, &mut d, &again), vec![false, false, false, false, true]);
        assert_eq!(f.stats().duplicates, 4);
        assert_eq!(f.many_ids.len(), 10 * BLOCK_IDS + 1);
    }
}
