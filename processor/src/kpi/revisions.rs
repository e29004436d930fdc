//! Revisions of derived rows and the corrections between them.
//!
//! A derived row (a call fact, an interval partial) is first written as revision 1. When
//! events change it after it was written (a late event, a restart that finds a table behind
//! the fold), it is written again as revision + 1, and every column whose value changed
//! becomes one [`Correction`]: table, key, column, old and new value (in their SQL text
//! form), revision, time. Values are compared in that text form, so a committed row read
//! back from a table and a row built from the fold's state compare alike.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use ccstream_schemas::{corrections_schema, PARTITION_COLUMN, SEALED_COLUMN};

use crate::Result;

/// When the fold writes a call's facts for the first time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Horizon {
    /// Event-time watermark (ms): the largest event time seen minus the allowed lateness.
    /// `i64::MAX` is the end of time: every call is written.
    pub watermark_ms: i64,
    /// A call that is not complete is written once the watermark passes its latest event
    /// by this much (ms).
    pub completion_grace_ms: i64,
    /// A written call whose latest event is this much (ms) behind the watermark leaves
    /// memory: its rows are sealed. `i64::MAX`: state is kept.
    pub retention_ms: i64,
}

impl Horizon {
    /// The end of time (`replay`, and `process --until-caught-up` at the end of the log).
    pub const END: Horizon = Horizon { watermark_ms: i64::MAX, completion_grace_ms: 0, retention_ms: i64::MAX };

    /// Whether a call that is `complete`, with latest event time `last_ms`, is due.
    pub fn due(&self, complete: bool, last_ms: i64) -> bool {
        complete
            || self.watermark_ms == i64::MAX
            || self.watermark_ms >= last_ms.saturating_add(self.completion_grace_ms)
    }

    /// Whether a written call with latest event time `last_ms` has passed the retention.
    pub fn expired(&self, last_ms: i64) -> bool {
        self.retention_ms != i64::MAX
            && self.watermark_ms != i64::MAX
            && self.watermark_ms.saturating_sub(self.retention_ms) > last_ms
    }
}

/// One changed column of a derived row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Correction {
    pub table: &'static str,
    /// The row's key: the call id, or `tenant/queue/interval_start` for a partial.
    pub key: String,
    pub tenant: String,
    pub column: String,
    pub old: Option<String>,
    pub new: Option<String>,
    /// The revision that holds `new`.
    pub revision: i64,
}

/// A row's values in SQL text form, one per column of its table (NULL = `None`).
pub(super) type Image = Vec<Option<String>>;

/// The rows of `batch` as [`Image`]s.
pub(super) fn images(batch: &RecordBatch) -> Result<Vec<Image>> {
    let options = FormatOptions::default();
    let mut out: Vec<Image> = vec![Vec::with_capacity(batch.num_columns()); batch.num_rows()];
    for col in batch.columns() {
        let fmt = ArrayFormatter::try_new(col.as_ref(), &options)?;
        for (i, row) in out.iter_mut().enumerate() {
            row.push(col.is_valid(i).then(|| fmt.value(i).to_string()));
        }
    }
    Ok(out)
}

/// The positions of the columns of `batch`'s schema that carry a row's values (all but the
/// key, the partition and the revision stamp).
pub(super) fn value_columns(batch: &RecordBatch, key: &[&str]) -> Vec<usize> {
    batch
        .schema()
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| {
            let n = f.name().as_str();
            !key.contains(&n) && n != PARTITION_COLUMN && n != SEALED_COLUMN && n != "revision" && n != "computed_at"
        })
        .map(|(i, _)| i)
        .collect()
}

/// Corrections for the columns `columns` (named `names`) where `old` and `new` differ.
pub(super) fn diff(
    old: &Image,
    new: &Image,
    columns: &[usize],
    names: &[String],
) -> Vec<(String, Option<String>, Option<String>)> {
    columns.iter().filter(|&&c| old[c] != new[c]).map(|&c| (names[c].clone(), old[c].clone(), new[c].clone())).collect()
}

/// The `corrections` rows of `partition`, computed at `now`.
pub fn corrections_batch(corrections: &[Correction], partition: i32, now: i64) -> Result<RecordBatch> {
    let n = corrections.len();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(corrections.iter().map(|c| c.table))),
        Arc::new(StringArray::from_iter_values(corrections.iter().map(|c| c.key.as_str()))),
        Arc::new(StringArray::from_iter_values(corrections.iter().map(|c| c.tenant.as_str()))),
        Arc::new(Int32Array::from_value(partition, n)),
        Arc::new(StringArray::from_iter_values(corrections.iter().map(|c| c.column.as_str()))),
        Arc::new(StringArray::from_iter(corrections.iter().map(|c| c.old.as_deref()))),
        Arc::new(StringArray::from_iter(corrections.iter().map(|c| c.new.as_deref()))),
        Arc::new(Int64Array::from_iter_values(corrections.iter().map(|c| c.revision))),
        Arc::new(TimestampMillisecondArray::from_value(now, n).with_timezone("UTC")),
    ];
    Ok(RecordBatch::try_new(corrections_schema(), columns)?)
}

/// Committed corrections of one table, by (tenant, row key): `(revision, column, new value)`
/// in revision order.
pub(super) type Fixes = hashbrown::HashMap<(String, String), Vec<(i64, String, Option<String>)>>;

/// Committed corrections of one table, to patch committed rows that a later revision's
/// commit did not reach (see `CallFold::restore`).
pub(super) fn corrections_by_key(batches: &[RecordBatch], table: &str) -> Result<Fixes> {
    let mut out = Fixes::new();
    for b in batches {
        let s = |name: &str| -> Result<&StringArray> {
            b.column_by_name(name)
                .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                .ok_or(crate::Error::MissingColumn("corrections"))
        };
        let (t, key, column, new) = (s("table_name")?, s("key")?, s("column_name")?, s("new_value")?);
        let tenant = s("tenant_id")?;
        let rev = b
            .column_by_name("revision")
            .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
            .ok_or(crate::Error::MissingColumn("revision"))?;
        for i in 0..b.num_rows() {
            if t.value(i) != table {
                continue;
            }
            out.entry((tenant.value(i).to_string(), key.value(i).to_string())).or_default().push((
                rev.value(i),
                column.value(i).to_string(),
                new.is_valid(i).then(|| new.value(i).to_string()),
            ));
        }
    }
    for v in out.values_mut() {
        v.sort_by_key(|c| c.0);
    }
    Ok(out)
}
