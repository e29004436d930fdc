//! Interval partials: mergeable aggregates per tenant × entry queue × 15-minute interval,
//! and [`Grouping`], which sums the calls' contributions into them.
//!
//! Calls come in arrival order, so the intervals of one (tenant, entry queue) pair arrive
//! nearly in order: each pair keeps its intervals in one dense run of slots indexed by
//! interval number (each slot the position of its partial in one list), found through a
//! small map of pairs (a few hundred entries, in cache).
//! A contribution costs an index and a few adds instead of a probe into a table of every
//! partial, and the partials come out sorted with no hashing of full keys. An interval far
//! outside its pair's run (a call years off, or a pair with few calls spread far apart)
//! goes to a hash map instead, so a run's slots (4 bytes each) never outgrow its calls.

use foldhash::fast::FixedState;
use hashbrown::HashMap;

use super::Params;
use ccstream_schemas::PARTIAL_INTERVAL_MS;

/// One interval partial as last written (revision 0: not written yet).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct PartialRow {
    pub(super) part: Part,
    pub(super) revision: u32,
    pub(super) computed_at: i64,
}

/// Mergeable aggregates of one tenant × entry queue × 15-minute interval.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Part {
    pub(super) offered: i64,
    pub(super) answered: i64,
    pub(super) abandoned: i64,
    pub(super) short_abandoned: i64,
    pub(super) answered_within_sl: i64,
    pub(super) abandoned_within_sl: i64,
    pub(super) overflowed: i64,
    pub(super) transferred: i64,
    pub(super) sum_answer_wait_ms: i64,
    pub(super) sum_abandon_wait_ms: i64,
    pub(super) sum_handle_ms: i64,
    pub(super) n_handle: i64,
    pub(super) max_wait_ms: Option<i64>,
}

impl Part {
    /// The value columns of `interval_partials`, in schema order.
    pub(super) const COLUMNS: [&'static str; 13] = [
        "offered",
        "answered",
        "abandoned",
        "short_abandoned",
        "answered_within_sl",
        "abandoned_within_sl",
        "overflowed",
        "transferred",
        "sum_answer_wait_ms",
        "sum_abandon_wait_ms",
        "sum_handle_ms",
        "n_handle",
        "max_wait_ms",
    ];

    pub(super) fn values(&self) -> [Option<i64>; 13] {
        std::array::from_fn(|i| self.value(i))
    }

    /// The value of column `Part::COLUMNS[i]`.
    #[inline]
    pub(super) fn value(&self, i: usize) -> Option<i64> {
        Some(match i {
            0 => self.offered,
            1 => self.answered,
            2 => self.abandoned,
            3 => self.short_abandoned,
            4 => self.answered_within_sl,
            5 => self.abandoned_within_sl,
            6 => self.overflowed,
            7 => self.transferred,
            8 => self.sum_answer_wait_ms,
            9 => self.sum_abandon_wait_ms,
            10 => self.sum_handle_ms,
            11 => self.n_handle,
            _ => return self.max_wait_ms,
        })
    }

    pub(super) fn from_values(v: [Option<i64>; 13]) -> Part {
        let n = |i: usize| v[i].unwrap_or(0);
        Part {
            offered: n(0),
            answered: n(1),
            abandoned: n(2),
            short_abandoned: n(3),
            answered_within_sl: n(4),
            abandoned_within_sl: n(5),
            overflowed: n(6),
            transferred: n(7),
            sum_answer_wait_ms: n(8),
            sum_abandon_wait_ms: n(9),
            sum_handle_ms: n(10),
            n_handle: n(11),
            max_wait_ms: v[12],
        }
    }

    /// Adds (`sign` 1) or takes away (`sign` -1) one call's contribution at `p`. Taking
    /// away leaves `max_wait_ms` as it was: the caller recomputes it when the call held it.
    pub(super) fn apply(&mut self, c: &Contribution, p: &Params, sign: i64) {
        self.offered += sign;
        self.overflowed += sign * c.overflowed as i64;
        self.transferred += sign * c.transferred as i64;
        if let Some(w) = c.wait_ms {
            if sign > 0 {
                self.max_wait_ms = Some(self.max_wait_ms.map_or(w, |m| m.max(w)));
            }
            if c.answered {
                self.answered += sign;
                self.sum_answer_wait_ms += sign * w;
                self.answered_within_sl += sign * (w <= p.sl_threshold_ms) as i64;
                if let Some(h) = c.handle_ms {
                    self.n_handle += sign;
                    self.sum_handle_ms += sign * h;
                }
            } else {
                self.abandoned += sign;
                self.sum_abandon_wait_ms += sign * w;
                self.short_abandoned += sign * (w < p.short_abandon_ms) as i64;
                self.abandoned_within_sl += sign * (w <= p.sl_threshold_ms) as i64;
            }
        }
    }

    /// Adds `other` (the same group's aggregates over other calls).
    pub(super) fn merge(&mut self, o: &Part) {
        self.offered += o.offered;
        self.answered += o.answered;
        self.abandoned += o.abandoned;
        self.short_abandoned += o.short_abandoned;
        self.answered_within_sl += o.answered_within_sl;
        self.abandoned_within_sl += o.abandoned_within_sl;
        self.overflowed += o.overflowed;
        self.transferred += o.transferred;
        self.sum_answer_wait_ms += o.sum_answer_wait_ms;
        self.sum_abandon_wait_ms += o.sum_abandon_wait_ms;
        self.sum_handle_ms += o.sum_handle_ms;
        self.n_handle += o.n_handle;
        self.max_wait_ms = match (self.max_wait_ms, o.max_wait_ms) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
}

/// What one call adds to its interval partial: from its state, or from its sealed row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Contribution {
    pub(super) key: PartKey,
    pub(super) overflowed: bool,
    pub(super) transferred: bool,
    pub(super) answered: bool,
    pub(super) wait_ms: Option<i64>,
    pub(super) handle_ms: Option<i64>,
}

/// The key of an interval partial: tenant, entry queue, interval start (ms).
pub(super) type PartKey = (u32, u32, i64);

/// Sums contributions by interval partial (see the module doc).
#[derive(Debug, Default, Clone)]
pub(super) struct Grouping {
    /// (tenant, entry queue) → position in `runs`.
    pairs: HashMap<(u32, u32), u32, FixedState>,
    runs: Vec<Run>,
    /// The pair looked up last and its run.
    last: Option<((u32, u32), usize)>,
    /// The partials, in order of creation.
    parts: Parts,
    /// Partials outside their pair's run → position in `parts`.
    spill: HashMap<PartKey, u32, FixedState>,
}

/// A row of `part`, not written yet.
fn row(part: Part) -> PartialRow {
    PartialRow { part, revision: 0, computed_at: 0 }
}

/// The partials of a [`Grouping`], in blocks of [`Parts::BLOCK`]: a growing list never
/// copies itself (a `Vec` of a few hundred thousand partials would write each one up to
/// twice more, into fresh pages, as it doubles).
#[derive(Debug, Default, Clone)]
struct Parts {
    blocks: Vec<Vec<Part>>,
    len: usize,
}

impl Parts {
    const BLOCK: usize = 4096;

    fn len(&self) -> usize {
        self.len
    }

    fn push(&mut self, part: Part) {
        if self.len == self.blocks.len() * Self::BLOCK {
            self.blocks.push(Vec::with_capacity(Self::BLOCK));
        }
        self.blocks.last_mut().expect("a block has room").push(part);
        self.len += 1;
    }

    #[inline]
    fn get(&self, i: u32) -> &Part {
        let i = i as usize;
        &self.blocks[i / Self::BLOCK][i % Self::BLOCK]
    }

    #[inline]
    fn get_mut(&mut self, i: u32) -> &mut Part {
        let i = i as usize;
        &mut self.blocks[i / Self::BLOCK][i % Self::BLOCK]
    }
}

/// No partial in this slot.
const EMPTY: u32 = u32::MAX;

/// One pair's intervals: slot `i` holds the position in `parts` of interval number
/// `first + i`, or [`EMPTY`].
#[derive(Debug, Clone)]
struct Run {
    pair: (u32, u32),
    first: i64,
    slots: Vec<u32>,
    /// Contributions placed so far: bounds how far the run may spread.
    added: u64,
}

impl Run {
    /// Slots (4 bytes each) a run may span after `added` contributions: a pair's whole
    /// month of 15-minute intervals as soon as it has a couple hundred calls, however they
    /// spread, and never more than 64 bytes a call beyond the first kilobyte.
    fn limit(added: u64) -> u64 {
        256 + 16 * added
    }

    /// The slot of interval number `i`, growing the run towards it when that stays within
    /// [`Run::limit`]; `None` when it does not.
    fn slot(&mut self, i: i64) -> Option<&mut u32> {
        self.added += 1;
        let len = self.slots.len() as i64;
        let limit = Run::limit(self.added) as i64;
        if len == 0 {
            self.first = i;
            self.slots.push(EMPTY);
            return self.slots.last_mut();
        }
        // Interval numbers are times divided by the interval: far from overflowing.
        let at = i - self.first;
        if at >= len {
            if at >= limit {
                return None;
            }
            self.slots.resize(at as usize + 1, EMPTY);
        } else if at < 0 {
            let need = -at;
            if len + need > limit {
                return None;
            }
            // Room before the run as large as the run itself, when allowed: a run that keeps
            // growing backwards is copied a logarithmic number of times.
            let extra = len.min(limit - len - need);
            let mut slots = vec![EMPTY; (need + extra) as usize];
            slots.extend_from_slice(&self.slots);
            self.slots = slots;
            self.first -= need + extra;
        }
        self.slots.get_mut((i - self.first) as usize)
    }
}

impl Grouping {
    /// The partial of `key`, created empty if new.
    #[inline]
    pub(super) fn slot(&mut self, key: PartKey) -> &mut Part {
        let pair = (key.0, key.1);
        let r = match self.last {
            Some((p, r)) if p == pair => r,
            _ => {
                let next = self.runs.len();
                let r = *self.pairs.entry(pair).or_insert(next as u32) as usize;
                if r == next {
                    self.runs.push(Run { pair, first: 0, slots: Vec::new(), added: 0 });
                }
                self.last = Some((pair, r));
                r
            }
        };
        // `key.2` is an interval start, a multiple of the interval.
        let slot = match self.runs[r].slot(key.2.div_euclid(PARTIAL_INTERVAL_MS)) {
            Some(slot) => slot,
            None => self.spill.entry(key).or_insert(EMPTY),
        };
        if *slot == EMPTY {
            *slot = self.parts.len() as u32;
            self.parts.push(Part::default());
        }
        self.parts.get_mut(*slot)
    }

    /// Every partial that any contribution touched, sorted by key, as rows not written yet
    /// (revision 0).
    pub(super) fn finish(mut self) -> Vec<(PartKey, PartialRow)> {
        self.runs.sort_unstable_by_key(|r| r.pair);
        let mut out = Vec::with_capacity(self.parts.len());
        for run in &self.runs {
            let (t, q) = run.pair;
            out.extend(
                run.slots
                    .iter()
                    .enumerate()
                    .filter(|(_, &s)| s != EMPTY)
                    .map(|(i, &s)| ((t, q, (run.first + i as i64) * PARTIAL_INTERVAL_MS), row(*self.parts.get(s)))),
            );
        }
        if self.spill.is_empty() {
            return out;
        }
        // A spilled interval may also have a slot in its pair's run (the run grew over it
        // later): merge the two sorted lists, adding up equal keys.
        let mut spill: Vec<(PartKey, PartialRow)> =
            self.spill.drain().map(|(k, s)| (k, row(*self.parts.get(s)))).collect();
        spill.sort_unstable_by_key(|e| e.0);
        let mut merged = Vec::with_capacity(out.len() + spill.len());
        let mut spill = spill.into_iter().peekable();
        for (key, mut partial) in out {
            merged.extend(std::iter::from_fn(|| spill.next_if(|e| e.0 < key)));
            if let Some((_, more)) = spill.next_if(|e| e.0 == key) {
                partial.part.merge(&more.part);
            }
            merged.push((key, partial));
        }
        merged.extend(spill);
        merged
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn contribution(key: PartKey, wait_ms: i64, answered: bool) -> Contribution {
        Contribution {
            key,
            overflowed: wait_ms % 3 == 0,
            transferred: wait_ms % 5 == 0,
            answered,
            wait_ms: Some(wait_ms),
            handle_ms: answered.then_some(wait_ms * 7),
        }
    }

    fn settled_keys(settled: &[(u32, u32, i64, i64, bool)]) -> usize {
        settled.iter().map(|&(t, q, i, _, _)| (t, q, i)).collect::<std::collections::BTreeSet<_>>().len()
    }

    /// Interval numbers: mostly near each pair's recent ones, some far off in either
    /// direction, as late and stray calls are.
    fn interval() -> impl Strategy<Value = i64> {
        prop_oneof![8 => 0i64..200, 1 => -1_000_000i64..1_000_000, 1 => Just(i64::MAX / PARTIAL_INTERVAL_MS - 1)]
    }

    proptest! {
        /// Whatever the order and spread of the intervals, the grouping sums exactly what a
        /// map of every key does, and lists the partials sorted by key.
        #[test]
        fn groups_like_a_map(
            calls in prop::collection::vec((0u32..3, 0u32..4, interval(), 0i64..60_000, any::<bool>()), 0..600),
            sealed in prop::collection::vec((0u32..3, 0u32..4, interval(), 0i64..60_000, any::<bool>()), 0..20),
            settled in prop::collection::vec((0u32..3, 0u32..4, interval(), 0i64..60_000, any::<bool>()), 0..300),
        ) {
            let p = Params::default();
            let mut reference: BTreeMap<PartKey, Part> = BTreeMap::new();
            // Contributions grouped apart (settled calls'), then added to (as an emit does).
            let mut apart = Grouping::default();
            for &(t, q, i, w, a) in &settled {
                let c = contribution((t, q, i * PARTIAL_INTERVAL_MS), w, a);
                apart.slot(c.key).apply(&c, &p, 1);
                reference.entry(c.key).or_default().apply(&c, &p, 1);
            }
            let mut grouping = apart.clone();
            for &(t, q, i, w, a) in &calls {
                let c = contribution((t, q, i * PARTIAL_INTERVAL_MS), w, a);
                grouping.slot(c.key).apply(&c, &p, 1);
                reference.entry(c.key).or_default().apply(&c, &p, 1);
            }
            for &(t, q, i, w, a) in &sealed {
                let c = contribution((t, q, i * PARTIAL_INTERVAL_MS), w, a);
                let mut part = Part::default();
                part.apply(&c, &p, 1);
                grouping.slot(c.key).merge(&part);
                reference.entry(c.key).or_default().merge(&part);
            }
            // The copy is apart from what it was copied from.
            prop_assert_eq!(apart.finish().len(), settled_keys(&settled));
            let got: Vec<(PartKey, Part)> = grouping.finish().into_iter().map(|(k, r)| (k, r.part)).collect();
            prop_assert_eq!(got, reference.into_iter().collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_run_spreads_within_its_limit() {
        let p = Params::default();
        let mut grouping = Grouping::default();
        // Calls a day apart, then in reverse: a run may not cover all the gaps.
        let day = 96;
        for i in (0..100).chain((0..100).rev().map(|i| -i - 1)) {
            let c = contribution((0, 0, i * day * PARTIAL_INTERVAL_MS), 1_000, true);
            grouping.slot(c.key).apply(&c, &p, 1);
        }
        let slots: usize = grouping.runs.iter().map(|r| r.slots.len()).sum();
        assert!(slots as u64 <= Run::limit(200), "{slots} slots for 200 calls");
        assert!(!grouping.spill.is_empty());
        assert_eq!(grouping.finish().len(), 200);
    }
}
