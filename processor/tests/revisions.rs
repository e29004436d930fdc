//! Late events revise rows already written: the fold that saw the events in two rounds (the
//! second one hours late) ends with the same tables as the fold that saw them at once, the
//! revised rows carry revision 2, and the corrections name exactly what changed.

use std::collections::BTreeSet;

use arrow::array::{Array, BooleanArray, Int64Array, RecordBatch, StringArray};
use arrow::compute::{concat_batches, filter_record_batch, lexsort_to_indices, take_record_batch, SortColumn};
use ccstream_processor::batch::{DecodedBatch, Decoder};
use ccstream_processor::kpi::{CallFold, Correction, Horizon, Params};

mod common;

fn strings<'a>(b: &'a RecordBatch, name: &str) -> &'a StringArray {
    b.column_by_name(name).unwrap().as_any().downcast_ref::<StringArray>().unwrap()
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
        .filter(|(_, f)| f.name() != "revision" && f.name() != "computed_at")
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

#[test]
fn late_events_revise_written_rows_and_name_every_change() {
    let events = common::fixture_events();
    let params = Params::default();
    let mut decoder = Decoder::new();
    let mut whole = CallFold::new(0);
    feed(&mut whole, &mut decoder, &events);
    let expected = whole.output(&decoder.dicts, &params, 1).unwrap();

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
