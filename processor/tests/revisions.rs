//! Late events revise rows already written: the fold that saw the events in two rounds (the
//! second one hours late) ends with the same tables as the fold that saw them at once, the
//! revised rows carry revision 2, and the corrections name exactly what changed.

use std::collections::BTreeSet;

use arrow::array::{Array, BooleanArray, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow::compute::{concat_batches, filter_record_batch, lexsort_to_indices, take_record_batch, SortColumn};
use ccstream_processor::batch::{DecodedBatch, Decoder};
use ccstream_processor::kpi::{CallFold, CallName, Correction, FoldOutput, Horizon, Params};

mod common;

/// Column `name` of `b` as text (the fold's rows hold names as dictionary columns).
fn strings(b: &RecordBatch, name: &str) -> StringArray {
    let column = arrow::compute::cast(b.column_by_name(name).unwrap(), &arrow::datatypes::DataType::Utf8).unwrap();
    column.as_any().downcast_ref::<StringArray>().unwrap().clone()
}

fn sorted(batch: &RecordBatch, keys: &[&str]) -> RecordBatch {
    let cols: Vec<SortColumn> =
        keys.iter().map(|k| SortColumn { values: batch.column_by_name(k).unwrap().clone(), options: None }).collect();
    let idx = lexsort_to_indices(&cols, None).unwrap();
    take_record_batch(batch, &idx).unwrap()
}

/// `batch` without its revision stamp.
fn values(batch: &RecordBatch) -> RecordBatch {
    let keep: Vec<usize> = batch
        .schema()
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| !["revision", "computed_at", "sealed"].contains(&f.name().as_str()))
        .map(|(i, _)| i)
        .collect();
    batch.project(&keep).unwrap()
}

/// The `event_type` events of the first `n` calls that have one: they arrive late.
fn split(events: &RecordBatch, event_type: &str, n: usize) -> (RecordBatch, RecordBatch, BTreeSet<String>) {
    let types = strings(events, "event_type");
    let calls = strings(events, "call_id");
    let mut late_calls = BTreeSet::new();
    for i in 0..events.num_rows() {
        if types.value(i) == event_type && late_calls.len() < n {
            late_calls.insert(calls.value(i).to_string());
        }
    }
    let late: BooleanArray = (0..events.num_rows())
        .map(|i| Some(types.value(i) == event_type && late_calls.contains(calls.value(i))))
        .collect();
    let on_time = arrow::compute::not(&late).unwrap();
    (filter_record_batch(events, &on_time).unwrap(), filter_record_batch(events, &late).unwrap(), late_calls)
}

fn feed(fold: &mut CallFold, decoder: &mut Decoder, events: &RecordBatch) {
    let mut decoded = DecodedBatch::default();
    decoder.decode(events, &mut decoded).unwrap();
    fold.update(&decoded, &decoder.dicts);
}

/// The tables of a fold that saw every event at once.
fn at_once(events: &RecordBatch, params: &Params) -> FoldOutput {
    let mut decoder = Decoder::new();
    let mut whole = CallFold::new(0);
    feed(&mut whole, &mut decoder, events);
    whole.output(&decoder.dicts, params, 1).unwrap()
}

#[test]
fn late_events_revise_written_rows_and_name_every_change() {
    let events = common::fixture_events();
    let params = Params::default();
    let expected = at_once(&events, &params);

    let (on_time, late, late_calls) = split(&events, "call_answered", 25);
    assert_eq!(late_calls.len(), 25);
    let mut decoder = Decoder::new();
    let mut fold = CallFold::new(0);
    feed(&mut fold, &mut decoder, &on_time);
    // Everything seen so far is written: no corrections yet.
    let first = fold.emit(&decoder.dicts, &params, 1, Horizon::END).unwrap();
    assert_eq!(first.new_calls, 1500);
    assert!(first.corrections.is_empty());
    // Nothing new: nothing is revised.
    let again = fold.emit(&decoder.dicts, &params, 2, Horizon::END).unwrap();
    assert!(!again.changed && again.corrections.is_empty());

    feed(&mut fold, &mut decoder, &late);
    let second = fold.emit(&decoder.dicts, &params, 3, Horizon::END).unwrap();
    assert_eq!(second.new_calls, 0);
    assert_eq!(second.revised_calls, 25);
    assert!(second.revised_partials > 0);
    let got = fold.output(&decoder.dicts, &params, 4).unwrap();

    // The same tables as the fold that saw every event at once.
    let facts = sorted(&got.call_facts, &["call_id"]);
    assert_eq!(values(&facts), values(&sorted(&expected.call_facts, &["call_id"])));
    let partials = sorted(&got.interval_partials, &["tenant_id", "queue_id", "interval_start"]);
    assert_eq!(
        values(&partials),
        values(&sorted(&expected.interval_partials, &["tenant_id", "queue_id", "interval_start"]))
    );

    // Revision 2 exactly for the late calls, stamped when they were revised.
    let ids = strings(&facts, "call_id");
    let revision = facts.column_by_name("revision").unwrap().as_any().downcast_ref::<Int64Array>().unwrap();
    for i in 0..facts.num_rows() {
        let want = if late_calls.contains(ids.value(i)) { 2 } else { 1 };
        assert_eq!(revision.value(i), want, "call {}", ids.value(i));
    }

    // Each late call: answered false → true, at revision 2; every correction is a real change.
    let by_call = |c: &Correction| c.table == "call_facts" && late_calls.contains(&c.key);
    assert!(second.corrections.iter().all(|c| c.old != c.new));
    assert!(second.corrections.iter().filter(|c| c.table == "call_facts").all(by_call));
    for call in &late_calls {
        let answered = second
            .corrections
            .iter()
            .find(|c| c.key == *call && c.column == "answered")
            .unwrap_or_else(|| panic!("no correction of `answered` for {call}"));
        assert_eq!(
            (answered.old.as_deref(), answered.new.as_deref(), answered.revision),
            (Some("false"), Some("true"), 2)
        );
    }
    let partial_rows: BTreeSet<&str> =
        second.corrections.iter().filter(|c| c.table == "interval_partials").map(|c| c.key.as_str()).collect();
    assert_eq!(partial_rows.len() as u64, second.revised_partials);
    assert!(second.corrections.iter().any(|c| c.table == "interval_partials" && c.column == "answered"));
}

#[test]
fn calls_wait_for_completion_or_the_watermark() {
    let events = common::fixture_events();
    let params = Params::default();
    // 25 answered calls miss their wrap-ups: their legs are not complete.
    let (on_time, _, open_calls) = split(&events, "wrapup_ended", 25);
    let mut decoder = Decoder::new();
    let mut fold = CallFold::new(0);
    feed(&mut fold, &mut decoder, &on_time);
    // With the watermark before every event, only complete calls are written.
    let early = Horizon { watermark_ms: i64::MIN, completion_grace_ms: 0, retention_ms: i64::MAX };
    let em = fold.emit(&decoder.dicts, &params, 1, early).unwrap();
    assert!(em.new_calls > 1000, "complete calls are written: {}", em.new_calls);
    let waiting = fold.pending_calls();
    assert_eq!(waiting as u64, 1500 - em.new_calls);
    assert!(waiting >= open_calls.len(), "the calls without wrap-up wait: {waiting}");
    let written: Vec<RecordBatch> =
        fold.call_facts_slices(&decoder.dicts, &params, 1 << 20).map(Result::unwrap).collect();
    let written = concat_batches(&written[0].schema(), &written).unwrap();
    assert_eq!(written.num_rows() as u64, em.new_calls);
    let ids = strings(&written, "call_id");
    assert!((0..written.num_rows()).all(|i| !open_calls.contains(ids.value(i))));
    // The watermark past every call's grace writes the rest.
    let late = Horizon { watermark_ms: i64::MAX - 1, completion_grace_ms: 60_000, retention_ms: i64::MAX };
    let rest = fold.emit(&decoder.dicts, &params, 2, late).unwrap();
    assert_eq!(rest.new_calls as usize, waiting);
    assert_eq!(fold.pending_calls(), 0);
    let facts = fold.output(&decoder.dicts, &params, 3).unwrap().call_facts;
    assert_eq!(facts.num_rows(), 1500);
    assert_eq!(facts.column_by_name("revision").unwrap().null_count(), 0);
}

/// The partials' keys: tenant, queue, interval start.
fn partial_keys(b: &RecordBatch) -> Vec<(String, String, i64)> {
    let (t, q) = (strings(b, "tenant_id"), strings(b, "queue_id"));
    let s = b.column_by_name("interval_start").unwrap().as_any().downcast_ref::<TimestampMillisecondArray>().unwrap();
    (0..b.num_rows()).map(|i| (t.value(i).to_string(), q.value(i).to_string(), s.value(i))).collect()
}

/// `interval_partials` as the table holds it: the sealed rows but those `taken_back`
/// (tenant, queue, interval start), and the rows `held`.
fn partials_table(
    sealed: &[RecordBatch],
    taken_back: &[(String, Option<String>, i64)],
    held: RecordBatch,
) -> RecordBatch {
    let gone: BTreeSet<(String, String, i64)> =
        taken_back.iter().map(|(t, q, s)| (t.clone(), q.clone().unwrap_or_default(), *s)).collect();
    let mut rows = Vec::new();
    for b in sealed {
        let keep: BooleanArray = partial_keys(b).iter().map(|k| Some(!gone.contains(k))).collect();
        rows.push(filter_record_batch(b, &keep).unwrap());
    }
    rows.push(held);
    concat_batches(&rows[0].schema(), &rows).unwrap()
}

/// A fold that saw `events` in arrival order, in slices, with the watermark following and
/// three hours of state retention (longer than any call, so no event comes for a call
/// already evicted: that takes the caller's re-fold), and what its emissions sealed.
struct Retained {
    fold: CallFold,
    decoder: Decoder,
    sealed_facts: Vec<RecordBatch>,
    sealed_legs: Vec<RecordBatch>,
    sealed_partials: Vec<RecordBatch>,
    /// The most interval partials it held after an emission.
    most_held: usize,
}

fn retained(events: &RecordBatch, params: &Params) -> Retained {
    let mut decoder = Decoder::new();
    let mut fold = CallFold::new(0);
    let times =
        events.column_by_name("occurred_at").unwrap().as_any().downcast_ref::<TimestampMillisecondArray>().unwrap();
    let (mut max_t, mut most_held) = (i64::MIN, 0);
    let (mut sealed_facts, mut sealed_legs, mut sealed_partials) = (Vec::new(), Vec::new(), Vec::new());
    for start in (0..events.num_rows()).step_by(250) {
        let n = 250.min(events.num_rows() - start);
        feed(&mut fold, &mut decoder, &events.slice(start, n));
        let latest = (start..start + n).filter(|&i| times.is_valid(i)).map(|i| times.value(i)).max();
        max_t = max_t.max(latest.unwrap_or(i64::MIN));
        let horizon = Horizon { watermark_ms: max_t - 300_000, completion_grace_ms: 60_000, retention_ms: 10_800_000 };
        let em = fold.emit(&decoder.dicts, params, 1, horizon).unwrap();
        sealed_facts.extend(em.sealed_facts);
        sealed_legs.extend(em.sealed_legs);
        sealed_partials.extend(em.sealed_partials);
        most_held = most_held.max(fold.interval_partials(&decoder.dicts, params).unwrap().num_rows());
    }
    Retained { fold, decoder, sealed_facts, sealed_legs, sealed_partials, most_held }
}

#[test]
fn partials_without_calls_held_are_sealed_and_come_back_for_late_calls() {
    let events = common::fixture_events();
    let params = Params::default();
    let expected = at_once(&events, &params);

    // Late: every event of ten calls, six hours or more before the last, in partials that
    // other calls share.
    let busy: BTreeSet<(String, String, i64)> = {
        let p = &expected.interval_partials;
        let offered = p.column_by_name("offered").unwrap().as_any().downcast_ref::<Int64Array>().unwrap();
        partial_keys(p).into_iter().enumerate().filter(|(i, _)| offered.value(*i) >= 2).map(|(_, k)| k).collect()
    };
    let facts = &expected.call_facts;
    let queued =
        facts.column_by_name("queued_at").unwrap().as_any().downcast_ref::<TimestampMillisecondArray>().unwrap();
    let last = (0..facts.num_rows()).filter(|&i| queued.is_valid(i)).map(|i| queued.value(i)).max().unwrap();
    let (ids, tenants, queues) = (strings(facts, "call_id"), strings(facts, "tenant_id"), strings(facts, "queue_id"));
    let late_calls: BTreeSet<String> = (0..facts.num_rows())
        .filter(|&i| queued.is_valid(i) && queued.value(i) < last - 21_600_000)
        .filter(|&i| {
            let start = queued.value(i).div_euclid(900_000) * 900_000;
            busy.contains(&(tenants.value(i).to_string(), queues.value(i).to_string(), start))
        })
        .take(10)
        .map(|i| ids.value(i).to_string())
        .collect();
    assert_eq!(late_calls.len(), 10);
    let calls = strings(&events, "call_id");
    let late: BooleanArray = (0..events.num_rows()).map(|i| Some(late_calls.contains(calls.value(i)))).collect();
    let (on_time, late) = (
        filter_record_batch(&events, &arrow::compute::not(&late).unwrap()).unwrap(),
        filter_record_batch(&events, &late).unwrap(),
    );

    let Retained { mut fold, mut decoder, sealed_partials, most_held, .. } = retained(&on_time, &params);
    let sealed_rows: usize = sealed_partials.iter().map(RecordBatch::num_rows).sum();
    let total = expected.interval_partials.num_rows();
    assert!(sealed_rows > total / 2, "{sealed_rows} of {total} partials sealed");
    assert!(most_held < total / 4, "at most {most_held} of {total} partials held at once");
    for b in &sealed_partials {
        let sealed = b.column_by_name("sealed").unwrap().as_any().downcast_ref::<BooleanArray>().unwrap();
        assert_eq!(sealed.true_count(), b.num_rows());
    }

    // The late calls arrive: their partials, sealed, are asked for and taken back.
    feed(&mut fold, &mut decoder, &late);
    let needed = fold.sealed_partials_needed(&mut decoder.dicts, &[]).unwrap();
    assert!(!needed.is_empty());
    fold.load_sealed_partials(&mut decoder.dicts, &sealed_partials).unwrap();
    let loaded = fold.take_loaded_partials(&decoder.dicts);
    assert!(!loaded.is_empty() && loaded.len() <= needed.len(), "{} of {} taken back", loaded.len(), needed.len());
    assert!(fold.sealed_partials_needed(&mut decoder.dicts, &[]).unwrap().is_empty(), "each key is asked for once");
    let em = fold.emit(&decoder.dicts, &params, 2, Horizon::END).unwrap();
    assert!(em.revised_partials >= loaded.len() as u64);
    assert!(em.corrections.iter().any(|c| c.table == "interval_partials" && c.column == "offered"));

    // The table: the sealed rows not taken back, and the rows held, equal the partials of
    // the fold that saw every event at once.
    let table = partials_table(&sealed_partials, &loaded, fold.interval_partials(&decoder.dicts, &params).unwrap());
    let order = ["tenant_id", "queue_id", "interval_start"];
    assert_eq!(values(&sorted(&table, &order)), values(&sorted(&expected.interval_partials, &order)));
}

#[test]
fn a_restart_keeps_a_sealed_partial_only_if_its_sealed_calls_add_up_to_it() {
    let events = common::fixture_events();
    let params = Params::default();
    let expected = at_once(&events, &params);

    // What a processor with three hours of retention committed: sealed rows and held rows.
    let Retained { fold, decoder, sealed_facts, sealed_legs, sealed_partials, .. } = retained(&events, &params);
    let live_facts: Vec<RecordBatch> =
        fold.call_facts_slices(&decoder.dicts, &params, 1 << 20).map(Result::unwrap).collect();
    let mut partials = sealed_partials.clone();
    partials.push(fold.interval_partials(&decoder.dicts, &params).unwrap());
    let partials = concat_batches(&partials[0].schema(), &partials).unwrap();
    let sealed_facts = concat_batches(&sealed_facts[0].schema(), &sealed_facts).unwrap();

    // A crash between the commits that sealed call C and its partial: the partial is
    // sealed in the table, C's row is not (its commit did not land).
    let sealed_keys: BTreeSet<(String, String, i64)> = {
        let sealed = partials.column_by_name("sealed").unwrap().as_any().downcast_ref::<BooleanArray>().unwrap();
        partial_keys(&partials).into_iter().enumerate().filter(|(i, _)| sealed.value(*i)).map(|(_, k)| k).collect()
    };
    let queued =
        sealed_facts.column_by_name("queued_at").unwrap().as_any().downcast_ref::<TimestampMillisecondArray>().unwrap();
    let (tenants, queues, ids) =
        (strings(&sealed_facts, "tenant_id"), strings(&sealed_facts, "queue_id"), strings(&sealed_facts, "call_id"));
    let c = (0..sealed_facts.num_rows())
        .find(|&i| {
            queued.is_valid(i) && queues.is_valid(i) && {
                let start = queued.value(i).div_euclid(900_000) * 900_000;
                sealed_keys.contains(&(tenants.value(i).to_string(), queues.value(i).to_string(), start))
            }
        })
        .expect("a sealed call in a sealed partial");
    let c_id = ids.value(c).to_string();
    let is_c: BooleanArray = (0..sealed_facts.num_rows()).map(|i| Some(i == c)).collect();
    let c_row = filter_record_batch(&sealed_facts, &is_c).unwrap();
    let mut columns = c_row.columns().to_vec();
    let at = c_row.schema().index_of("sealed").unwrap();
    columns[at] = std::sync::Arc::new(BooleanArray::from(vec![false]));
    let c_live = RecordBatch::try_new(c_row.schema(), columns).unwrap();
    let others = filter_record_batch(&sealed_facts, &arrow::compute::not(&is_c).unwrap()).unwrap();
    let mut facts = vec![others, c_live];
    facts.extend(live_facts);
    let mut leg_calls: std::collections::HashSet<CallName> = std::collections::HashSet::new();
    for b in &sealed_legs {
        leg_calls.extend(CallName::of_rows(b).unwrap());
    }
    leg_calls.retain(|name| name.call != c_id);

    // The restart re-reads the log and reads the tables back.
    let mut decoder = Decoder::new();
    let mut restarted = CallFold::new(0);
    feed(&mut restarted, &mut decoder, &events);
    restarted.restore(&mut decoder.dicts, &params, &facts, &leg_calls, std::slice::from_ref(&partials), &[]).unwrap();
    let loaded = restarted.take_loaded_partials(&decoder.dicts);
    let c_key = (
        tenants.value(c).to_string(),
        Some(queues.value(c).to_string()),
        queued.value(c).div_euclid(900_000) * 900_000,
    );
    assert_eq!(loaded, vec![c_key.clone()], "only C's partial comes back");
    // Held calls' partials that are sealed in the table are read back before the emission.
    let needed = restarted.sealed_partials_needed(&mut decoder.dicts, &[]).unwrap();
    assert!(!needed.contains(&c_key));
    restarted.load_sealed_partials(&mut decoder.dicts, &sealed_partials).unwrap();
    let also = restarted.take_loaded_partials(&decoder.dicts);
    restarted.emit(&decoder.dicts, &params, 2, Horizon::END).unwrap();

    let taken_back: Vec<_> = loaded.into_iter().chain(also).collect();
    let table =
        partials_table(&sealed_partials, &taken_back, restarted.interval_partials(&decoder.dicts, &params).unwrap());
    let order = ["tenant_id", "queue_id", "interval_start"];
    assert_eq!(values(&sorted(&table, &order)), values(&sorted(&expected.interval_partials, &order)));
}
