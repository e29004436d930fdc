//! Decoding: canonical events → Arrow record batches → the typed columns the fold reads.
//!
//! Two steps, both columnar:
//! - [`JsonDecoder`] turns JSON lines into a record batch of [`events_schema`] (string
//!   columns that repeat — tenant, queue, agent, event type — as dictionaries), plus a
//!   dead letter for each line that is not a valid event.
//! - [`Decoder`] turns any record batch with the canonical column names (Parquet files,
//!   the `events` table, the JSON decoder's output) into a [`DecodedBatch`]: ids as
//!   16-byte keys, names interned to `u32`, times as `i64` ms. Dictionary columns are
//!   interned once per dictionary value, not per row.
//!
//! Log records take a shorter way: [`JsonDecoder::read_values`] checks each value once,
//! [`Decoder::decode_events`] fills the [`DecodedBatch`] from the events themselves, and
//! [`EventsByPartition`] builds `events` rows only for the events the fold keeps, each
//! straight into its partition's columns. No column is built for a duplicate, nor taken,
//! nor cast.
//!
//! Row validity is decided here once: a row that is not a valid event gets
//! `etype == INVALID` and a reason, and the fold skips it.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayBuilder, ArrayRef, AsArray, Date32Array, Date32Builder, DictionaryArray, Int32Array, Int64Array,
    NullBufferBuilder, PrimitiveArray, RecordBatch, StringArray, StringBuilder, StringDictionaryBuilder,
    TimestampMillisecondArray, TimestampMillisecondBuilder, UInt32Array,
};
use arrow::buffer::{BooleanBuffer, MutableBuffer, NullBuffer, OffsetBuffer};
use arrow::compute::cast;
use arrow::datatypes::{ArrowPrimitiveType, DataType, Float64Type, Int32Type, Int8Type, SchemaRef, TimeUnit};
use ccstream_schemas::{
    events_schema, is_uuid_key, parse_uuid, read_event_into, uuid_text, with_dictionaries, Event, EventType, IdKey,
    Validated, MS_PER_DAY, OTHER_TAG,
};
use foldhash::fast::FixedState;
use hashbrown::HashMap;

use crate::{Error, Result};

/// Marks a row of a [`DecodedBatch`] that is not a valid event.
pub const INVALID: u8 = u8::MAX;
/// An absent interned name (queue or agent).
pub const NONE: u32 = u32::MAX;
/// An absent call key (no real key is 0: UUID keys have variant bits `10`, others `11`).
pub const NO_CALL: IdKey = 0;

/// Names (tenants, queues, agents) interned to dense `u32` ids, in order of first sight.
#[derive(Debug, Default)]
pub struct Names {
    ids: HashMap<Box<str>, u32, FixedState>,
    names: Vec<Box<str>>,
    /// Every name as one column (the values of [`Names::dictionary`] columns), built when
    /// first asked for since a name was added.
    all: std::sync::OnceLock<ArrayRef>,
}

impl Names {
    pub fn intern(&mut self, s: &str) -> u32 {
        if let Some(&id) = self.ids.get(s) {
            return id;
        }
        let id = self.names.len() as u32;
        self.names.push(s.into());
        self.ids.insert(s.into(), id);
        self.all.take();
        id
    }

    /// The names of `ids` as a dictionary column: the ids are its keys, [`Names::values`]
    /// its values, so no name is copied or hashed per row; writers keep only the values a
    /// file uses. [`NONE`] (or an id never interned) is NULL.
    pub fn dictionary(&self, ids: impl ExactSizeIterator<Item = u32>) -> Result<ArrayRef> {
        keyed(ids, self.values())
    }

    /// Every name interned, in id order, as one column (built again only once a name was
    /// added): the values of [`Names::dictionary`] columns.
    pub fn values(&self) -> &ArrayRef {
        self.all.get_or_init(|| Arc::new(StringArray::from_iter_values(self.names.iter())))
    }

    pub fn name(&self, id: u32) -> Option<&str> {
        self.names.get(id as usize).map(|s| &**s)
    }

    /// The names of `ids` as a string column; [`NONE`] (or an id never interned) is NULL.
    pub fn column(&self, ids: impl ExactSizeIterator<Item = u32>) -> Result<StringArray> {
        let mut column = TextColumn::with_capacity(ids.len(), ids.len() * 16);
        for id in ids {
            match self.names.get(id as usize) {
                Some(name) => column.push(name.as_bytes()),
                None => column.push_null(),
            }
        }
        column.finish()
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// A dictionary column keyed by `ids` into `values` (names in id order); an id past them
/// ([`NONE`]) is NULL.
fn keyed(ids: impl ExactSizeIterator<Item = u32>, values: &ArrayRef) -> Result<ArrayRef> {
    let n = values.len() as u32;
    // In passes over a vector (the validity packed 64 rows at a time, the keys in place),
    // not a bit and a key appended per row.
    let ids: Vec<u32> = ids.collect();
    let nulls = NullBuffer::new(BooleanBuffer::collect_bool(ids.len(), |i| ids[i] < n));
    let keys: Vec<i32> = ids.into_iter().map(|id| if id < n { id as i32 } else { 0 }).collect();
    let keys = Int32Array::new(keys.into(), Some(nulls).filter(|n| n.null_count() > 0));
    Ok(Arc::new(DictionaryArray::<Int32Type>::try_new(keys, values.clone())?))
}

/// Ids that are not canonical UUIDs, interned to `OTHER_TAG | n` (see `ccstream_schemas::ids`).
#[derive(Debug, Default)]
pub struct OtherIds {
    ids: HashMap<Box<str>, u64, FixedState>,
    names: Vec<Box<str>>,
}

impl OtherIds {
    #[inline]
    pub fn key(&mut self, s: &str) -> IdKey {
        if let Some(k) = parse_uuid(s.as_bytes()) {
            return k;
        }
        let n = match self.ids.get(s) {
            Some(&n) => n,
            None => {
                let n = self.names.len() as u64;
                self.names.push(s.into());
                self.ids.insert(s.into(), n);
                n
            }
        };
        OTHER_TAG | n as u128
    }

    /// The text of a key produced by [`OtherIds::key`].
    pub fn text(&self, key: IdKey, out: &mut String) {
        if is_uuid_key(key) {
            ccstream_schemas::format_uuid(key, out);
        } else {
            out.push_str(self.interned(key));
        }
    }

    /// The id an interned (not UUID) key stands for.
    fn interned(&self, key: IdKey) -> &str {
        &self.names[(key & !OTHER_TAG) as usize]
    }

    /// The texts of `keys` (produced by [`OtherIds::key`]) as a string column without NULLs.
    pub fn column(&self, keys: impl ExactSizeIterator<Item = IdKey>) -> Result<StringArray> {
        let mut column = TextColumn::with_capacity(keys.len(), keys.len() * 36);
        for key in keys {
            if is_uuid_key(key) {
                column.push(&uuid_text(key));
            } else {
                column.push(self.interned(key).as_bytes());
            }
        }
        column.finish()
    }
}

/// A string column written straight into its offsets and values, for text that is UTF-8
/// by construction (interned names, formatted ids): no builder per value, one check of the
/// whole values buffer when it is finished.
#[derive(Debug)]
struct TextColumn {
    offsets: Vec<i32>,
    values: Vec<u8>,
    nulls: NullBufferBuilder,
}

impl TextColumn {
    fn with_capacity(rows: usize, bytes: usize) -> Self {
        let mut offsets = Vec::with_capacity(rows + 1);
        offsets.push(0);
        TextColumn { offsets, values: Vec::with_capacity(bytes), nulls: NullBufferBuilder::new(rows) }
    }

    #[inline]
    fn push(&mut self, text: &[u8]) {
        self.values.extend_from_slice(text);
        // Truncation past i32::MAX is caught by `finish`.
        self.offsets.push(self.values.len() as i32);
        self.nulls.append_non_null();
    }

    fn push_null(&mut self) {
        self.offsets.push(self.values.len() as i32);
        self.nulls.append_null();
    }

    fn finish(mut self) -> Result<StringArray> {
        if i32::try_from(self.values.len()).is_err() {
            return Err(arrow::error::ArrowError::OffsetOverflowError(self.values.len()).into());
        }
        let nulls = self.nulls.finish();
        Ok(StringArray::try_new(OffsetBuffer::new(self.offsets.into()), self.values.into(), nulls)?)
    }
}

/// The interning state a decoder keeps across batches (and that the fold reads back when
/// it writes names).
#[derive(Debug, Default)]
pub struct Dictionaries {
    pub tenants: Names,
    pub queues: Names,
    pub agents: Names,
    pub ids: OtherIds,
}

/// The columns the fold reads, typed and interned. Buffers are reused across batches.
#[derive(Debug, Default)]
pub struct DecodedBatch {
    pub event_id: Vec<IdKey>,
    pub call: Vec<IdKey>,
    pub tenant: Vec<u32>,
    pub queue: Vec<u32>,
    pub agent: Vec<u32>,
    pub etype: Vec<u8>,
    pub t_ms: Vec<i64>,
    /// jitter_ms, packet_loss_rate, round_trip_ms, audio_degradation; NaN = NULL.
    pub media: [Vec<f64>; 4],
    /// (row, reason) of every invalid row.
    pub invalid: Vec<(usize, String)>,
}

impl DecodedBatch {
    pub fn len(&self) -> usize {
        self.etype.len()
    }

    pub fn is_empty(&self) -> bool {
        self.etype.is_empty()
    }

    pub(crate) fn clear(&mut self) {
        self.event_id.clear();
        self.call.clear();
        self.tenant.clear();
        self.queue.clear();
        self.agent.clear();
        self.etype.clear();
        self.t_ms.clear();
        for m in &mut self.media {
            m.clear();
        }
        self.invalid.clear();
    }
}

/// The canonical columns the fold needs.
pub const FOLD_COLUMNS: [&str; 11] = [
    "event_id",
    "tenant_id",
    "call_id",
    "queue_id",
    "agent_id",
    "event_type",
    "occurred_at",
    "jitter_ms",
    "packet_loss_rate",
    "round_trip_ms",
    "audio_degradation",
];

/// Decodes record batches into [`DecodedBatch`]es, interning names into its
/// [`Dictionaries`].
#[derive(Debug, Default)]
pub struct Decoder {
    pub dicts: Dictionaries,
    remap: Vec<u32>,
    type_remap: Vec<u8>,
}

fn column<'b>(batch: &'b RecordBatch, name: &'static str) -> Result<&'b ArrayRef> {
    batch.column_by_name(name).ok_or(Error::MissingColumn(name))
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes `batch` into `out` (cleared first).
    pub fn decode(&mut self, batch: &RecordBatch, out: &mut DecodedBatch) -> Result<()> {
        out.clear();
        let n = batch.num_rows();
        self.ids(column(batch, "event_id")?, &mut out.event_id, n)?;
        self.ids(column(batch, "call_id")?, &mut out.call, n)?;
        Self::names(&mut self.dicts.tenants, &mut self.remap, column(batch, "tenant_id")?, &mut out.tenant)?;
        Self::names(&mut self.dicts.queues, &mut self.remap, column(batch, "queue_id")?, &mut out.queue)?;
        Self::names(&mut self.dicts.agents, &mut self.remap, column(batch, "agent_id")?, &mut out.agent)?;
        self.event_types(column(batch, "event_type")?, &mut out.etype)?;
        let t = column(batch, "occurred_at")?;
        let t = match t.data_type() {
            DataType::Timestamp(TimeUnit::Millisecond, _) => t.clone(),
            DataType::Timestamp(_, tz) => cast(t, &DataType::Timestamp(TimeUnit::Millisecond, tz.clone()))?,
            other => return Err(Error::ColumnType { column: "occurred_at", found: other.to_string() }),
        };
        let t = t.as_primitive::<arrow::datatypes::TimestampMillisecondType>();
        out.t_ms.extend_from_slice(t.values());
        for (i, name) in ["jitter_ms", "packet_loss_rate", "round_trip_ms", "audio_degradation"].into_iter().enumerate()
        {
            let dst = &mut out.media[i];
            match batch.column_by_name(name) {
                None => dst.resize(n, f64::NAN),
                Some(a) => {
                    let a = if a.data_type() == &DataType::Float64 { a.clone() } else { cast(a, &DataType::Float64)? };
                    let a = a.as_primitive::<arrow::datatypes::Float64Type>();
                    match a.nulls().filter(|nulls| nulls.null_count() > 0) {
                        // Media values come with one event of a call in several: the rows
                        // that have one are visited, found 64 at a time in the validity.
                        Some(nulls) => {
                            dst.resize(n, f64::NAN);
                            for r in nulls.valid_indices() {
                                dst[r] = finite(a.values()[r]);
                            }
                        }
                        None => dst.extend(a.values().iter().map(|&v| finite(v))),
                    }
                }
            }
        }
        // Validity: the same rules as `Event::validate`.
        let tenant_nulls = column(batch, "tenant_id")?.logical_nulls();
        let time_nulls = t.nulls();
        let et = column(batch, "event_type")?;
        check_rows(
            out,
            |_, r| tenant_nulls.as_ref().is_some_and(|b| b.is_null(r)),
            |r| time_nulls.is_some_and(|b| b.is_null(r)),
            |r| {
                if et.is_null(r) {
                    return Ok(None);
                }
                let s = cast(&et.slice(r, 1), &DataType::Utf8)?;
                Ok(Some(s.as_string::<i32>().value(0).to_string()))
            },
        )?;
        Ok(())
    }

    /// Decodes checked events ([`JsonDecoder::read_values`]) into `out` (cleared first):
    /// the same columns [`Decoder::decode`] gives for their batch, names interned in the
    /// same order (first sight). Checked events are valid: `out.invalid` stays empty.
    pub fn decode_events(&mut self, events: &[(Event<'_>, Validated)], out: &mut DecodedBatch) {
        out.clear();
        let d = &mut self.dicts;
        let id = |ids: &mut OtherIds, v: Option<&str>| match v {
            Some(v) if !v.is_empty() => ids.key(v),
            _ => NO_CALL,
        };
        for (ev, v) in events {
            out.event_id.push(id(&mut d.ids, ev.event_id.as_deref()));
            out.call.push(id(&mut d.ids, ev.call_id.as_deref()));
            out.tenant.push(ev.tenant_id.as_deref().map_or(NONE, |s| d.tenants.intern(s)));
            out.queue.push(ev.queue_id.as_deref().map_or(NONE, |s| d.queues.intern(s)));
            out.agent.push(ev.agent_id.as_deref().map_or(NONE, |s| d.agents.intern(s)));
            out.etype.push(v.event_type as u8);
            out.t_ms.push(v.occurred_at_ms);
            let media = [ev.jitter_ms, ev.packet_loss_rate, ev.round_trip_ms, ev.audio_degradation];
            for (dst, m) in out.media.iter_mut().zip(media) {
                dst.push(m.map_or(f64::NAN, finite));
            }
        }
    }

    fn ids(&mut self, a: &ArrayRef, out: &mut Vec<IdKey>, n: usize) -> Result<()> {
        let ids = &mut self.dicts.ids;
        let mut key = |v: Option<&str>| match v {
            Some(v) if !v.is_empty() => ids.key(v),
            _ => NO_CALL,
        };
        out.reserve(n);
        // Over the row numbers, whose length the vector knows (an array's own iterator does
        // not tell `extend` its length: a capacity check per id).
        let nulls = a.logical_nulls();
        let valid = |i: usize| nulls.as_ref().is_none_or(|n| n.is_valid(i));
        match a.data_type() {
            DataType::Utf8View => {
                let s = a.as_string_view();
                out.extend((0..s.len()).map(|i| key(valid(i).then(|| s.value(i)))));
            }
            DataType::Utf8 => {
                let s = a.as_string::<i32>();
                out.extend((0..s.len()).map(|i| key(valid(i).then(|| s.value(i)))));
            }
            _ => out.extend(cast(a, &DataType::Utf8)?.as_string::<i32>().iter().map(key)),
        }
        Ok(())
    }

    fn names(names: &mut Names, remap: &mut Vec<u32>, a: &ArrayRef, out: &mut Vec<u32>) -> Result<()> {
        match a.data_type() {
            DataType::Dictionary(k, v) if **k == DataType::Int32 && **v == DataType::Utf8 => {
                let d = a.as_dictionary::<Int32Type>();
                let values = d.values().as_string::<i32>();
                remap.clear();
                remap.extend(values.iter().map(|v| v.map_or(NONE, |v| names.intern(v))));
                remapped(d.keys(), remap, NONE, out);
            }
            _ => {
                let a = if a.data_type() == &DataType::Utf8 { a.clone() } else { cast(a, &DataType::Utf8)? };
                let s = a.as_string::<i32>();
                out.extend(s.iter().map(|v| v.map_or(NONE, |v| names.intern(v))));
            }
        }
        Ok(())
    }

    fn event_types(&mut self, a: &ArrayRef, out: &mut Vec<u8>) -> Result<()> {
        let parse = |v: Option<&str>| v.and_then(EventType::parse).map_or(INVALID, |t| t as u8);
        match a.data_type() {
            DataType::Dictionary(k, v) if **k == DataType::Int32 && **v == DataType::Utf8 => {
                let d = a.as_dictionary::<Int32Type>();
                self.type_remap.clear();
                self.type_remap.extend(d.values().as_string::<i32>().iter().map(parse));
                remapped(d.keys(), &self.type_remap, INVALID, out);
            }
            _ => {
                let a = if a.data_type() == &DataType::Utf8 { a.clone() } else { cast(a, &DataType::Utf8)? };
                out.extend(a.as_string::<i32>().iter().map(parse));
            }
        }
        Ok(())
    }
}

/// A media value as the fold keeps it: NaN (no value) for a non-finite one.
pub(crate) fn finite(v: f64) -> f64 {
    if v.is_finite() {
        v
    } else {
        f64::NAN
    }
}

/// Marks the rows of `out` that are not valid events — the rules of `Event::validate`, in
/// its order — with `etype == INVALID` and a reason in `out.invalid`. `type_text` gives the
/// text of a row's event type that is not a known one (`None` when it is NULL).
pub(crate) fn check_rows(
    out: &mut DecodedBatch,
    tenant_null: impl Fn(&DecodedBatch, usize) -> bool,
    time_null: impl Fn(usize) -> bool,
    mut type_text: impl FnMut(usize) -> Result<Option<String>>,
) -> Result<()> {
    for r in 0..out.len() {
        let reason = if out.event_id[r] == NO_CALL {
            Some("missing required field `event_id`".to_string())
        } else if tenant_null(out, r) {
            Some("missing required field `tenant_id`".to_string())
        } else if time_null(r) {
            Some("missing required field `occurred_at`".to_string())
        } else if out.etype[r] == INVALID {
            Some(match type_text(r)? {
                None => "missing required field `event_type`".to_string(),
                Some(s) => format!("unknown event_type {s:?}"),
            })
        } else if out.call[r] == NO_CALL && out.etype[r] <= EventType::WrapupEnded as u8 {
            Some(format!("event_type {} needs a call_id", EventType::ALL[out.etype[r] as usize].as_str()))
        } else {
            None
        };
        if let Some(reason) = reason {
            out.etype[r] = INVALID;
            out.invalid.push((r, reason));
        }
    }
    Ok(())
}

/// Appends `remap` of every key of `keys` to `out`, `none` for NULL keys: the keys are mapped
/// in one pass over their values, then the NULLs found in their validity, 64 rows at a time.
fn remapped<T: Copy>(keys: &arrow::array::Int32Array, remap: &[T], none: T, out: &mut Vec<T>) {
    let at = out.len();
    // A NULL key's slot may hold any value: out of range, it maps to `none` too.
    out.extend(keys.values().iter().map(|&k| remap.get(k as usize).copied().unwrap_or(none)));
    if let Some(nulls) = keys.nulls().filter(|n| n.null_count() > 0) {
        for r in (!nulls.inner()).set_indices() {
            out[at + r] = none;
        }
    }
}

/// The columns [`JsonDecoder`] dictionary-encodes: the names the fold interns, so that
/// [`Decoder`] interns each distinct value of a batch once. The other columns stay plain
/// strings: they only go to the `events` table, and hashing them would cost for nothing.
const DECODED_DICTIONARIES: [&str; 4] = ["tenant_id", "queue_id", "agent_id", "event_type"];

/// The Arrow schema the JSON decoder produces: [`events_schema`] with the fold's name
/// columns dictionary-encoded.
pub fn decode_schema() -> SchemaRef {
    static SCHEMA: std::sync::LazyLock<SchemaRef> = std::sync::LazyLock::new(build_decode_schema);
    SCHEMA.clone()
}

fn build_decode_schema() -> SchemaRef {
    events_with_dictionaries(&DECODED_DICTIONARIES)
}

/// [`events_schema`] with the text columns `columns` dictionary-encoded (as
/// [`with_dictionaries`] encodes them).
fn events_with_dictionaries(columns: &[&str]) -> SchemaRef {
    let dictionaries = with_dictionaries(&events_schema());
    let fields: Vec<_> = events_schema()
        .fields()
        .iter()
        .zip(dictionaries.fields())
        .map(|(plain, dict)| if columns.contains(&plain.name().as_str()) { dict.clone() } else { plain.clone() })
        .collect();
    Arc::new(arrow::datatypes::Schema::new(fields))
}

/// A line of input that is not a valid event.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    /// Index of the line in the input handed to [`JsonDecoder::decode`].
    pub line: usize,
    pub reason: String,
}

type Dict = StringDictionaryBuilder<Int32Type>;

/// Builds [`decode_schema`] batches from JSON lines.
#[derive(Debug)]
pub struct JsonDecoder {
    /// `source` of events that do not name one.
    default_source: String,
    /// `ingested_at` of events that do not carry one.
    ingested_at_ms: i64,
}

impl JsonDecoder {
    pub fn new(default_source: impl Into<String>, ingested_at_ms: i64) -> Self {
        Self { default_source: default_source.into(), ingested_at_ms }
    }

    /// Decodes newline-separated JSON objects. Blank lines are skipped; every other line
    /// is either a row of the batch or a [`Rejected`] entry. Returns the batch and, for each
    /// row, the index of its line.
    pub fn decode(&self, lines: &[&str]) -> Result<(RecordBatch, Vec<u32>, Vec<Rejected>)> {
        let mut columns = EventColumns::<Dict, Dict>::with_capacity(lines.len());
        let mut rows = Vec::with_capacity(lines.len());
        let mut rejected = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() {
                continue;
            }
            match Event::read_json(line) {
                Ok((ev, v)) => {
                    rows.push(i as u32);
                    columns.push(self, &ev, &v, (NONE, NONE));
                }
                Err(e) => rejected.push(Rejected { line: i, reason: e.to_string() }),
            }
        }
        Ok((columns.finish(decode_schema(), [None, None])?, rows, rejected))
    }

    /// Reads log record values, each an event's JSON form or its binary form
    /// (`ccstream_schemas::read_event`): the valid events, borrowing from the values, and
    /// a [`Rejected`] entry for every other value. The fold's columns come from the events
    /// ([`Decoder::decode_events`]), and `events` rows only for the events it keeps
    /// ([`EventsByPartition`], [`JsonDecoder::events_batch`]): no column is built for a
    /// duplicate.
    pub fn read_values<'a>(&self, values: &[&'a [u8]]) -> ReadValues<'a> {
        let mut out = ReadValues {
            events: Vec::with_capacity(values.len()),
            rows: Vec::with_capacity(values.len()),
            rejected: Vec::new(),
        };
        for (i, v) in values.iter().enumerate() {
            match read_event_into(v, &mut out.events) {
                Ok(()) => out.rows.push(i as u32),
                Err(e) => out.rejected.push(Rejected { line: i, reason: e.to_string() }),
            }
        }
        out
    }

    /// The `events` table rows ([`events_schema`]) of `events[indices]`, in that order.
    pub fn events_batch(&self, events: &[(Event<'_>, Validated)], indices: &[u32]) -> Result<RecordBatch> {
        let mut columns = EventColumns::<StringBuilder, StringBuilder>::with_capacity(indices.len());
        for &i in indices {
            let (ev, v) = &events[i as usize];
            columns.push(self, ev, v, (NONE, NONE));
        }
        columns.finish(events_schema(), [None, None])
    }
}

/// `events` rows of checked events, gathered by the table's partition (tenant and UTC day)
/// as they come: each partition's rows go straight into its own builders, so a flush
/// writes one batch per partition, with no regrouping and no concatenation.
///
/// The batches are in [`events_rows_schema`]: queues, agents and event types are keyed
/// by the ids the [`Decoder`] interned them to, never copied or hashed per row; the
/// `events` files hold them as Parquet dictionaries made from those keys.
#[derive(Default)]
pub struct EventsByPartition {
    parts: HashMap<(u32, i64), EventColumns<StringBuilder, Interned>, FixedState>,
    rows: usize,
    /// Rows each partition had at the last flush: its builders start at least that large
    /// instead of doubling (and copying, into fresh pages) their way up again. Capacity
    /// that is never filled is never touched.
    last_rows: HashMap<(u32, i64), usize, FixedState>,
    /// The mean of `last_rows`: where a partition new since the last flush starts (the
    /// rows of the next day of traffic are mostly in partitions the last flush never saw).
    typical_rows: usize,
}

impl std::fmt::Debug for EventsByPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventsByPartition").field("partitions", &self.parts.len()).field("rows", &self.rows).finish()
    }
}

impl EventsByPartition {
    /// Adds `ev` as a row of partition `key` (the caller's tenant id and UTC day); `names`
    /// are its queue and agent as the [`Decoder`] interned them ([`NONE`] when absent).
    #[inline]
    pub fn push(&mut self, d: &JsonDecoder, key: (u32, i64), ev: &Event<'_>, v: &Validated, names: (u32, u32)) {
        self.rows += 1;
        let (last_rows, typical) = (&self.last_rows, self.typical_rows);
        self.parts
            .entry(key)
            .or_insert_with(|| {
                EventColumns::with_capacity(last_rows.get(&key).copied().unwrap_or(0).max(typical).max(1024))
            })
            .push(d, ev, v, names);
    }

    /// Rows gathered.
    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Drops every row gathered.
    pub fn clear(&mut self) {
        self.parts.clear();
        self.rows = 0;
    }

    /// One batch of [`events_rows_schema`] per partition, its names looked up in `dicts`
    /// (the dictionaries the pushed ids come from); empties the set.
    pub fn finish(&mut self, dicts: &Dictionaries) -> Result<Vec<RecordBatch>> {
        let rows = std::mem::take(&mut self.rows);
        self.last_rows.clear();
        self.last_rows.extend(self.parts.iter().map(|(key, columns)| (*key, columns.rows)));
        self.typical_rows = rows / self.parts.len().max(1);
        let names = [Some(dicts.queues.values()), Some(dicts.agents.values())];
        self.parts.drain().map(|(_, columns)| columns.finish(events_rows_schema(), names)).collect()
    }
}

/// [`events_schema`] with `queue_id`, `agent_id` and `event_type` dictionary-encoded: the
/// batches [`EventsByPartition`] builds. Any `events` writer takes them as they are (the
/// files' schema is [`events_schema`]).
pub fn events_rows_schema() -> SchemaRef {
    static SCHEMA: std::sync::LazyLock<SchemaRef> =
        std::sync::LazyLock::new(|| events_with_dictionaries(&["queue_id", "agent_id", "event_type"]));
    SCHEMA.clone()
}

/// Log record values read by [`JsonDecoder::read_values`].
#[derive(Debug, Default)]
pub struct ReadValues<'a> {
    /// The valid events, in input order, with their typed fields.
    pub events: Vec<(Event<'a>, Validated)>,
    /// For each event, the index of its value.
    pub rows: Vec<u32>,
    /// The values that are not valid events.
    pub rejected: Vec<Rejected>,
}

/// A text column of the fold's names (tenant, queue, agent): dictionary-encoded for the
/// decoder ([`decode_schema`]), plain for the `events` table ([`events_schema`]), or keyed
/// by interned ids ([`Interned`]).
trait NameColumn {
    fn with_capacity(n: usize) -> Self;
    /// Appends a row's name, `v`, interned as `id` ([`NONE`] when absent or not known).
    fn append(&mut self, v: Option<&str>, id: u32);
    /// The column; `names` are the interned names, for the columns that key into them.
    fn finish(&mut self, names: Option<&ArrayRef>) -> Result<ArrayRef>;
    /// The event type column from each row's type.
    fn event_types(types: Vec<i32>) -> Result<ArrayRef>;
}

/// The event type names as a dictionary's values, in [`EventType`] order.
fn event_type_names() -> ArrayRef {
    static TYPE_NAMES: std::sync::LazyLock<ArrayRef> =
        std::sync::LazyLock::new(|| Arc::new(StringArray::from_iter_values(EventType::ALL.iter().map(|t| t.as_str()))));
    TYPE_NAMES.clone()
}

impl NameColumn for Dict {
    fn with_capacity(_: usize) -> Self {
        Dict::new()
    }
    #[inline]
    fn append(&mut self, v: Option<&str>, _: u32) {
        self.append_option(v);
    }
    fn finish(&mut self, _: Option<&ArrayRef>) -> Result<ArrayRef> {
        Ok(ArrayBuilder::finish(self))
    }
    fn event_types(types: Vec<i32>) -> Result<ArrayRef> {
        // Keys into the fixed list of names: no hashing per row.
        Ok(Arc::new(DictionaryArray::<Int32Type>::try_new(Int32Array::from(types), event_type_names())?))
    }
}

impl NameColumn for StringBuilder {
    fn with_capacity(n: usize) -> Self {
        // Names run to about a dozen bytes (`t0001-a0123`).
        StringBuilder::with_capacity(n, n * 12)
    }
    #[inline]
    fn append(&mut self, v: Option<&str>, _: u32) {
        self.append_option(v);
    }
    fn finish(&mut self, _: Option<&ArrayRef>) -> Result<ArrayRef> {
        Ok(ArrayBuilder::finish(self))
    }
    fn event_types(types: Vec<i32>) -> Result<ArrayRef> {
        Ok(Arc::new(StringArray::from_iter_values(types.iter().map(|&t| EventType::ALL[t as usize].as_str()))))
    }
}

/// Names as the interned ids the [`Decoder`] gave them: a dictionary column whose values
/// are every name interned (the writer keeps only those a file uses).
#[derive(Debug, Default)]
struct Interned {
    ids: Vec<u32>,
}

impl NameColumn for Interned {
    fn with_capacity(n: usize) -> Self {
        Interned { ids: Vec::with_capacity(n) }
    }
    #[inline]
    fn append(&mut self, _: Option<&str>, id: u32) {
        self.ids.push(id);
    }
    fn finish(&mut self, names: Option<&ArrayRef>) -> Result<ArrayRef> {
        let names = names.ok_or_else(|| {
            arrow::error::ArrowError::InvalidArgumentError("interned names without their dictionary".into())
        })?;
        keyed(std::mem::take(&mut self.ids).into_iter(), names)
    }
    fn event_types(types: Vec<i32>) -> Result<ArrayRef> {
        Dict::event_types(types)
    }
}

/// The columns of checked events, appended row by row.
struct EventColumns<T, Q> {
    event_id: StringBuilder,
    tenant: T,
    source: StringBuilder,
    call: StringBuilder,
    queue: Q,
    agent: Q,
    etype: Vec<i32>,
    occurred: TimestampMillisecondBuilder,
    ingested: TimestampMillisecondBuilder,
    // Columns NULL in most events: only a row with a value costs.
    priority: Sparse<i8>,
    ovf: SparseText,
    ttype: SparseText,
    target: SparseText,
    disc: SparseText,
    wcode: SparseText,
    from_s: SparseText,
    to_s: SparseText,
    reason: SparseText,
    media: [Sparse<f64>; 4],
    payload: SparseText,
    day: Date32Builder,
    rows: usize,
}

impl<T: NameColumn, Q: NameColumn> EventColumns<T, Q> {
    fn with_capacity(n: usize) -> Self {
        EventColumns {
            event_id: StringBuilder::with_capacity(n, n * 36),
            tenant: T::with_capacity(n),
            source: StringBuilder::with_capacity(n, n * 4),
            call: StringBuilder::with_capacity(n, n * 36),
            queue: Q::with_capacity(n),
            agent: Q::with_capacity(n),
            etype: Vec::with_capacity(n),
            occurred: TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC"),
            ingested: TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC"),
            priority: Sparse::default(),
            ovf: SparseText::default(),
            ttype: SparseText::default(),
            target: SparseText::default(),
            disc: SparseText::default(),
            wcode: SparseText::default(),
            from_s: SparseText::default(),
            to_s: SparseText::default(),
            reason: SparseText::default(),
            media: Default::default(),
            payload: SparseText::default(),
            day: Date32Builder::with_capacity(n),
            rows: 0,
        }
    }

    /// Appends a row; `names` are its queue and agent as interned (for [`Interned`]).
    #[inline]
    fn push(&mut self, d: &JsonDecoder, ev: &Event<'_>, v: &Validated, names: (u32, u32)) {
        let row = self.rows;
        self.rows += 1;
        self.event_id.append_option(ev.event_id.as_deref());
        self.tenant.append(ev.tenant_id.as_deref(), NONE);
        self.source.append_value(ev.source.as_deref().unwrap_or(&d.default_source));
        self.call.append_option(ev.call_id.as_deref());
        self.queue.append(ev.queue_id.as_deref(), names.0);
        self.agent.append(ev.agent_id.as_deref(), names.1);
        self.etype.push(v.event_type as i32);
        self.occurred.append_value(v.occurred_at_ms);
        self.ingested.append_value(v.ingested_at_ms.unwrap_or(d.ingested_at_ms));
        self.priority.set(row, ev.priority);
        self.ovf.set(row, ev.overflow_from_queue_id.as_deref());
        self.ttype.set(row, ev.transfer_type.as_deref());
        self.target.set(row, ev.target_agent_id.as_deref());
        self.disc.set(row, ev.disconnect_by.as_deref());
        self.wcode.set(row, ev.wrapup_code.as_deref());
        self.from_s.set(row, ev.from_state.as_deref());
        self.to_s.set(row, ev.to_state.as_deref());
        self.reason.set(row, ev.state_reason.as_deref());
        self.media[0].set(row, ev.jitter_ms);
        self.media[1].set(row, ev.packet_loss_rate);
        self.media[2].set(row, ev.round_trip_ms);
        self.media[3].set(row, ev.audio_degradation);
        self.payload.set(row, ev.payload.as_deref());
        self.day.append_value(v.occurred_at_ms.div_euclid(MS_PER_DAY) as i32);
    }

    /// The batch; `names` are the interned queue and agent names (for [`Interned`]).
    fn finish(mut self, schema: SchemaRef, names: [Option<&ArrayRef>; 2]) -> Result<RecordBatch> {
        let n = self.rows;
        let [m0, m1, m2, m3] = self.media;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.event_id.finish()),
            self.tenant.finish(None)?,
            Arc::new(self.source.finish()),
            Arc::new(self.call.finish()),
            self.queue.finish(names[0])?,
            self.agent.finish(names[1])?,
            Q::event_types(self.etype)?,
            Arc::new(self.occurred.finish()),
            Arc::new(self.ingested.finish()),
            Arc::new(self.priority.finish::<Int8Type>(n)),
            Arc::new(self.ovf.finish(n)),
            Arc::new(self.ttype.finish(n)),
            Arc::new(self.target.finish(n)),
            Arc::new(self.disc.finish(n)),
            Arc::new(self.wcode.finish(n)),
            Arc::new(self.from_s.finish(n)),
            Arc::new(self.to_s.finish(n)),
            Arc::new(self.reason.finish(n)),
            Arc::new(m0.finish::<Float64Type>(n)),
            Arc::new(m1.finish::<Float64Type>(n)),
            Arc::new(m2.finish::<Float64Type>(n)),
            Arc::new(m3.finish::<Float64Type>(n)),
            Arc::new(self.payload.finish(n)),
            Arc::new(self.day.finish()),
        ];
        Ok(RecordBatch::try_new(schema, columns)?)
    }
}

/// A primitive column NULL in most rows, built from its values alone.
#[derive(Debug)]
struct Sparse<T> {
    rows: Vec<u32>,
    values: Vec<T>,
}

impl<T> Default for Sparse<T> {
    fn default() -> Self {
        Sparse { rows: Vec::new(), values: Vec::new() }
    }
}

impl<T: arrow::datatypes::ArrowNativeType> Sparse<T> {
    /// Sets row `row` (rows come in increasing order; a row not set is NULL).
    #[inline]
    fn set(&mut self, row: usize, value: Option<T>) {
        if let Some(v) = value {
            self.rows.push(row as u32);
            self.values.push(v);
        }
    }

    /// The column of `n` rows.
    fn finish<P: ArrowPrimitiveType<Native = T>>(self, n: usize) -> PrimitiveArray<P> {
        if self.rows.is_empty() {
            return PrimitiveArray::new_null(n);
        }
        let mut values = vec![T::default(); n];
        for (&r, v) in self.rows.iter().zip(self.values) {
            values[r as usize] = v;
        }
        PrimitiveArray::new(values.into(), Some(sparse_validity(&self.rows, n)))
    }
}

/// The validity of `n` rows of which only `rows` (increasing) have a value.
fn sparse_validity(rows: &[u32], n: usize) -> NullBuffer {
    let mut bits = MutableBuffer::new_null(n);
    let slice = bits.as_slice_mut();
    for &r in rows {
        arrow::util::bit_util::set_bit(slice, r as usize);
    }
    NullBuffer::new(BooleanBuffer::new(bits.into(), 0, n))
}

/// A text column NULL in most rows, built from its values alone.
#[derive(Debug, Default)]
struct SparseText {
    rows: Vec<u32>,
    ends: Vec<i32>,
    bytes: Vec<u8>,
}

impl SparseText {
    /// Sets row `row` (rows come in increasing order; a row not set is NULL).
    #[inline]
    fn set(&mut self, row: usize, value: Option<&str>) {
        if let Some(v) = value {
            self.rows.push(row as u32);
            self.bytes.extend_from_slice(v.as_bytes());
            self.ends.push(self.bytes.len() as i32);
        }
    }

    /// The column of `n` rows.
    fn finish(self, n: usize) -> StringArray {
        if self.rows.is_empty() {
            return StringArray::new_null(n);
        }
        // offsets[i + 1] ends row i: its own value's end, or the end before it when NULL.
        // Ends grow with the rows, so that is the running maximum of the values' ends set
        // in place: one pass over the rows, not a fill per gap.
        let mut offsets = vec![0i32; n + 1];
        for (&r, &e) in self.rows.iter().zip(&self.ends) {
            offsets[r as usize + 1] = e;
        }
        let mut end = 0;
        for o in &mut offsets {
            end = end.max(*o);
            *o = end;
        }
        let offsets = OffsetBuffer::new(offsets.into());
        let nulls = Some(sparse_validity(&self.rows, n));
        // SAFETY: `bytes` is whole `&str` values one after another, and every offset is 0 or
        // the end of one of them (never past `bytes`): each row's range is valid UTF-8.
        unsafe { StringArray::new_unchecked(offsets, self.bytes.into(), nulls) }
    }
}

/// Groups rows by key: `keys` gives each row's key, or `None` for a row to leave out.
/// Returns the indices of the rows kept, group by group (groups in order of first sight,
/// rows in order within a group), and each group's length: what `take` and
/// [`crate::sink::Overwrite::write_runs`] need to write each group as one run.
pub fn group_rows<K: std::hash::Hash + Eq>(keys: impl Iterator<Item = Option<K>>) -> (UInt32Array, Vec<usize>) {
    const OUT: u32 = u32::MAX;
    let mut groups: HashMap<K, u32, FixedState> = HashMap::default();
    let mut lens: Vec<usize> = Vec::new();
    let group: Vec<u32> = keys
        .map(|k| match k {
            None => OUT,
            Some(k) => {
                let g = *groups.entry(k).or_insert_with(|| {
                    lens.push(0);
                    lens.len() as u32 - 1
                });
                lens[g as usize] += 1;
                g
            }
        })
        .collect();
    let mut next: Vec<usize> = lens
        .iter()
        .scan(0, |at, &len| {
            let start = *at;
            *at += len;
            Some(start)
        })
        .collect();
    let mut indices = vec![0u32; lens.iter().sum()];
    for (row, &g) in group.iter().enumerate().filter(|(_, &g)| g != OUT) {
        indices[next[g as usize]] = row as u32;
        next[g as usize] += 1;
    }
    (UInt32Array::from(indices), lens)
}

/// Casts a batch with canonical column names to the `events` table schema, filling the
/// columns a file may lack (`source`, `ingested_at`, `payload`, `day`).
pub fn to_events_schema(batch: &RecordBatch, default_source: &str, now: i64) -> Result<RecordBatch> {
    let schema = events_schema();
    let n = batch.num_rows();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let col: ArrayRef = match (batch.column_by_name(field.name()), field.name().as_str()) {
            (Some(c), _) => cast(c, field.data_type())?,
            (None, "source") => Arc::new(StringArray::from_iter_values(std::iter::repeat_n(default_source, n))),
            (None, "ingested_at") => Arc::new(TimestampMillisecondArray::from_value(now, n).with_timezone("UTC")),
            (None, "day") => {
                let t = batch.column_by_name("occurred_at").ok_or(Error::MissingColumn("occurred_at"))?;
                let t = cast(&cast(t, &DataType::Timestamp(TimeUnit::Millisecond, None))?, &DataType::Int64)?;
                let t = t.as_any().downcast_ref::<Int64Array>().expect("cast to Int64 gives Int64Array");
                Arc::new(Date32Array::from_iter(t.iter().map(|v| v.map(|ms| ms.div_euclid(MS_PER_DAY) as i32))))
            }
            (None, _) => arrow::array::new_null_array(field.data_type(), n),
        };
        columns.push(col);
    }
    Ok(RecordBatch::try_new(schema, columns)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Id and name columns hold each key's text (a UUID's canonical form, an interned
        /// id as given), names absent or never interned as NULL, whatever the mix.
        #[test]
        fn id_and_name_columns_hold_each_rows_text(
            ids in proptest::collection::vec(prop_oneof![
                "[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
                "\\PC{0,40}",
            ], 0..40),
            names in proptest::collection::vec(prop_oneof![Just(None), "\\PC{0,12}".prop_map(Some)], 0..40),
        ) {
            let mut other = OtherIds::default();
            let keys: Vec<IdKey> = ids.iter().map(|s| other.key(s)).collect();
            let column = other.column(keys.iter().copied()).unwrap();
            prop_assert_eq!(column.null_count(), 0);
            prop_assert_eq!(column.iter().map(|v| v.unwrap().to_string()).collect::<Vec<_>>(), ids);

            let mut interned = Names::default();
            let codes: Vec<u32> = names.iter().map(|n| n.as_deref().map_or(NONE, |n| interned.intern(n))).collect();
            let never_interned = interned.len() as u32;
            let codes: Vec<u32> = codes.into_iter().chain([never_interned]).collect();
            let column = interned.column(codes.iter().copied()).unwrap();
            let expected: Vec<Option<&str>> = names.iter().map(|n| n.as_deref()).chain([None]).collect();
            prop_assert_eq!(column.iter().collect::<Vec<_>>(), expected);
        }

        /// Any text: no panic, and every non-blank line is either a row or a rejection.
        #[test]
        fn json_decoder_accounts_for_every_line(lines in proptest::collection::vec("\\PC{0,80}", 0..20)) {
            let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
            let (batch, rows, rejected) = JsonDecoder::new("t", 0).decode(&refs).unwrap();
            let non_blank = lines.iter().filter(|l| !l.trim_end_matches('\r').trim().is_empty()).count();
            prop_assert_eq!(batch.num_rows() + rejected.len(), non_blank);
            prop_assert_eq!(rows.len(), batch.num_rows());
            let mut out = DecodedBatch::default();
            Decoder::new().decode(&batch, &mut out).unwrap();
        }

        /// Sparse columns equal the same values appended one by one.
        #[test]
        fn sparse_columns_match_builders(values in proptest::collection::vec(proptest::option::of("\\PC{0,6}"), 0..40),
                                         numbers in proptest::collection::vec(proptest::option::of(-1e6f64..1e6), 0..40)) {
            let mut text = SparseText::default();
            for (row, v) in values.iter().enumerate() {
                text.set(row, v.as_deref());
            }
            let built = text.finish(values.len());
            // Built without checks: the full validation (offsets, UTF-8 at every boundary) holds.
            prop_assert!(built.to_data().validate_full().is_ok());
            prop_assert_eq!(built, StringArray::from(values.clone()));
            let mut sparse = Sparse::<f64>::default();
            for (row, v) in numbers.iter().enumerate() {
                sparse.set(row, *v);
            }
            let built = sparse.finish::<Float64Type>(numbers.len());
            prop_assert_eq!(built, arrow::array::Float64Array::from(numbers.clone()));
        }

        /// Valid events with arbitrary ids and names survive decoding.
        #[test]
        fn arbitrary_ids_decode(id in "[ -~]{1,40}", call in "[ -~]{1,40}", tenant in "[a-z0-9-]{1,12}") {
            let mut e = Event::new(id.clone(), tenant, EventType::CallQueued, 1_000);
            e.call_id = Some(call.clone().into());
            let line = e.to_json();
            let (batch, _, rejected) = JsonDecoder::new("t", 0).decode(&[line.as_str()]).unwrap();
            prop_assert!(rejected.is_empty(), "{:?}", rejected);
            let mut dec = Decoder::new();
            let mut out = DecodedBatch::default();
            dec.decode(&batch, &mut out).unwrap();
            let mut text = String::new();
            dec.dicts.ids.text(out.call[0], &mut text);
            prop_assert_eq!(&text, &call);
            text.clear();
            dec.dicts.ids.text(out.event_id[0], &mut text);
            prop_assert_eq!(&text, &id);
        }
    }

    #[test]
    fn group_rows_orders_by_group_and_leaves_out() {
        let keys = [Some(('a', 1)), None, Some(('b', 1)), Some(('a', 1)), Some(('a', 2)), None, Some(('b', 1))];
        let (indices, lens) = group_rows(keys.iter().copied());
        assert_eq!(indices.values().to_vec(), vec![0, 3, 2, 6, 4]);
        assert_eq!(lens, vec![2, 2, 1]);
        let (indices, lens) = group_rows(std::iter::repeat_n(None::<u8>, 3));
        assert!(indices.is_empty() && lens.is_empty());
    }

    #[test]
    fn events_schema_fill() {
        let batch = RecordBatch::try_from_iter(vec![
            ("event_id", Arc::new(StringArray::from(vec!["e1"])) as ArrayRef),
            ("tenant_id", Arc::new(StringArray::from(vec!["t1"])) as ArrayRef),
            ("event_type", Arc::new(StringArray::from(vec!["agent_state_changed"])) as ArrayRef),
            (
                "occurred_at",
                Arc::new(TimestampMillisecondArray::from(vec![MS_PER_DAY + 5]).with_timezone("UTC")) as ArrayRef,
            ),
        ])
        .unwrap();
        let out = to_events_schema(&batch, "file.parquet", 7).unwrap();
        assert_eq!(out.schema(), events_schema());
        let day = out.column_by_name("day").unwrap().as_any().downcast_ref::<Date32Array>().unwrap();
        assert_eq!(day.value(0), 1);
        assert!(out.column_by_name("payload").unwrap().is_null(0));
    }

    #[test]
    fn json_lines_decode_and_reject() {
        let lines = [
            r#"{"event_id":"dbaa9c7d-cd26-480c-a685-5a09daff8667","tenant_id":"t0001","call_id":"b5c9f8a9-8be3-49c0-9f09-e77f216495fe","queue_id":"t0001-q02","agent_id":null,"event_type":"call_queued","occurred_at":"2026-01-04T17:00:21.926Z","priority":2}"#,
            "<<< connection reset while streaming batch 298656 >>>",
            "",
            r#"{"event_id":"x1","tenant_id":"t0001","agent_id":"a","event_type":"agent_state_changed","occurred_at":"2026-01-04T17:00:22Z","jitter_ms":1.5}"#,
        ];
        let (batch, rows, rejected) = JsonDecoder::new("file.jsonl", 0).decode(&lines).unwrap();
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(rows, vec![0, 3]);
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].line, 1);
        assert!(rejected[0].reason.starts_with("not valid JSON"));

        let mut dec = Decoder::new();
        let mut out = DecodedBatch::default();
        dec.decode(&batch, &mut out).unwrap();
        assert_eq!(out.etype, vec![EventType::CallQueued as u8, EventType::AgentStateChanged as u8]);
        assert_eq!(out.t_ms[1] - out.t_ms[0], 74);
        assert_eq!(out.call[1], NO_CALL);
        assert_eq!(out.queue[1], NONE);
        assert_eq!(dec.dicts.tenants.name(out.tenant[0]), Some("t0001"));
        assert!(out.media[0][0].is_nan());
        assert_eq!(out.media[0][1], 1.5);
        assert!(out.invalid.is_empty());
        let mut s = String::new();
        dec.dicts.ids.text(out.event_id[1], &mut s);
        assert_eq!(s, "x1");
    }
}
