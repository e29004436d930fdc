//! Parquet files of canonical events read page by page, straight into the fold's columns.
//!
//! The general way in is the parquet crate's Arrow reader, then [`Decoder::decode`]
//! (`crate::batch`). For files laid out the common way — flat columns, `PLAIN` or
//! dictionary-encoded values, RLE definition levels, uncompressed, Snappy or zstd pages, v1
//! or v2 (what pyarrow writes by default) — [`FoldParquet`] goes from the pages to a
//! [`ParquetBatch`] in one step: ids parsed to their keys where they lie in the page, names
//! kept as indices into their column chunk's dictionary (interned when the batch is
//! adopted, [`ParquetBatch::adopt`]), times and floats read in place. No Arrow array is
//! built on the way, and pages are decompressed into buffers reused from page to page.
//!
//! [`FoldParquet::open`] tells from the footer whether a file is laid out that way; any other
//! file is for the general path, which gives the same columns. A batch never spans row
//! groups. Sans-IO: the reader works on the file's bytes (mapped by the caller); a damaged
//! page is an error naming the column and the row group, never a panic.
//!
//! [`Decoder::decode`]: crate::batch::Decoder::decode

mod thrift;

use std::sync::Arc;

use bytes::Bytes;
use ccstream_schemas::{parse_uuid, EventType, IdKey};
use parquet::basic::{Compression, ConvertedType, Encoding, LogicalType, TimeUnit, Type as Physical};
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};

use crate::batch::{check_rows, finite, DecodedBatch, Dictionaries, FOLD_COLUMNS, INVALID, NONE, NO_CALL};
use crate::{Error, Result};
use thrift::{page_header, uleb, PageHeader, DATA_PAGE, DATA_PAGE_V2, DICTIONARY_PAGE};

/// How a fold column's values are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Event and call ids: keys ([`ccstream_schemas::ids`]).
    Id,
    /// Tenants, queues, agents: interned names.
    Name,
    EventType,
    /// Milliseconds since the epoch.
    Time,
    /// Media measurements; NULL and non-finite values are NaN.
    Float,
}

/// How each of the fold's columns ([`FOLD_COLUMNS`], in its order) is read. All but the
/// media columns are required.
const KINDS: [Kind; 11] = [
    Kind::Id,
    Kind::Name,
    Kind::Id,
    Kind::Name,
    Kind::Name,
    Kind::EventType,
    Kind::Time,
    Kind::Float,
    Kind::Float,
    Kind::Float,
    Kind::Float,
];
const EVENT_ID: usize = 0;
const TENANT: usize = 1;
const CALL_ID: usize = 2;
const QUEUE: usize = 3;
const EVENT_TYPE: usize = 5;
const TIME: usize = 6;
const MEDIA: usize = 7;
const REQUIRED: usize = MEDIA;

/// The key an id that is not a UUID holds until its batch is adopted: variant bits `00`,
/// which no id maps to (see [`ccstream_schemas::ids`]), and not [`NO_CALL`].
const LOCAL_ID: IdKey = 1;

/// A batch of rows read by [`FoldParquet`]: the fold's columns, with names and ids that are
/// not UUIDs still local to the file until [`ParquetBatch::adopt`].
#[derive(Debug, Default)]
pub struct ParquetBatch {
    /// 0-based index in the file of the batch's first row.
    pub first_row: u64,
    decoded: DecodedBatch,
    /// Per name column (tenant, queue, agent), what its keys index.
    names: [LocalNames; 3],
    /// (row, text) of each event and call id that is not a UUID.
    other_ids: [Vec<(u32, Box<str>)>; 2],
    adopted: bool,
}

/// A name column's texts: its chunk's dictionary, then the batch's `PLAIN` values.
#[derive(Debug, Default)]
struct LocalNames {
    dictionary: Arc<Vec<Box<str>>>,
    plain: Vec<Box<str>>,
}

impl ParquetBatch {
    pub fn len(&self) -> usize {
        self.decoded.len()
    }

    pub fn is_empty(&self) -> bool {
        self.decoded.is_empty()
    }

    /// The batch's columns as [`Decoder::decode`](crate::batch::Decoder::decode) gives them:
    /// names interned into `dicts` (each chunk dictionary's values in their order, then the
    /// batch's plain values), ids that are not UUIDs keyed by `dicts.ids` in row order.
    pub fn adopt(&mut self, dicts: &mut Dictionaries, remap: &mut Vec<u32>) -> &mut DecodedBatch {
        if !self.adopted {
            self.adopted = true;
            let d = &mut self.decoded;
            let columns = [
                (&mut dicts.tenants, &mut d.tenant),
                (&mut dicts.queues, &mut d.queue),
                (&mut dicts.agents, &mut d.agent),
            ];
            for ((names, keys), local) in columns.into_iter().zip(&self.names) {
                remap.clear();
                remap.extend(local.dictionary.iter().chain(&local.plain).map(|s| names.intern(s)));
                for k in keys.iter_mut() {
                    *k = remap.get(*k as usize).copied().unwrap_or(NONE);
                }
            }
            for (keys, others) in [&mut d.event_id, &mut d.call].into_iter().zip(&self.other_ids) {
                for (row, text) in others {
                    keys[*row as usize] = dicts.ids.key(text);
                }
            }
        }
        &mut self.decoded
    }

    fn clear(&mut self) {
        self.decoded.clear();
        for n in &mut self.names {
            n.plain.clear();
        }
        for o in &mut self.other_ids {
            o.clear();
        }
        self.adopted = false;
    }
}

/// Reads the fold's columns of one Parquet file, batch by batch (see the module doc).
pub struct FoldParquet {
    file: Bytes,
    meta: Arc<ParquetMetaData>,
    /// Leaf column of each of [`FOLD_COLUMNS`] (`None`: a media column the file lacks).
    leaves: [Option<usize>; 11],
    next_group: usize,
    group: usize,
    group_left: usize,
    next_row: u64,
    columns: Vec<Option<Column>>,
    spare: Option<ParquetBatch>,
}

impl std::fmt::Debug for FoldParquet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FoldParquet").field("next_row", &self.next_row).field("group", &self.group).finish()
    }
}

impl FoldParquet {
    /// A reader for `file` (a whole Parquet file), or why it is not laid out the way this
    /// reader reads: the caller then reads it the general way.
    pub fn open(file: Bytes) -> std::result::Result<Self, String> {
        let meta = ParquetMetaDataReader::new().parse_and_finish(&file).map_err(|e| e.to_string())?;
        let leaves = supported(&meta)?;
        // Row counts size what the pages may hold: they must add up.
        let groups = meta.row_groups().iter().map(|g| g.num_rows());
        if groups.clone().any(|n| n < 0) || groups.sum::<i64>() != meta.file_metadata().num_rows() {
            return Err("the row groups' row counts do not add up to the file's".into());
        }
        Ok(FoldParquet {
            file,
            meta: Arc::new(meta),
            leaves,
            next_group: 0,
            group: 0,
            group_left: 0,
            next_row: 0,
            columns: Vec::new(),
            spare: None,
        })
    }

    /// Rows in the file, from its footer.
    pub fn total_rows(&self) -> u64 {
        self.meta.file_metadata().num_rows().max(0) as u64
    }

    /// The next batch of at most `max_rows` rows (within one row group), `None` at the end.
    pub fn next_batch(&mut self, max_rows: usize) -> Result<Option<ParquetBatch>> {
        while self.group_left == 0 {
            if self.next_group == self.meta.num_row_groups() {
                return Ok(None);
            }
            self.start_group(self.next_group)?;
            self.next_group += 1;
        }
        let n = max_rows.max(1).min(self.group_left);
        let mut b = self.spare.take().unwrap_or_default();
        b.clear();
        b.first_row = self.next_row;
        let group = self.group;
        let fail =
            |column: usize| move |reason: String| Error::ParquetPage { column: FOLD_COLUMNS[column], group, reason };
        let mut unknown_types = Vec::new();
        let mut null_times = Vec::new();
        let ParquetBatch { decoded: d, names, other_ids, .. } = &mut b;
        for (c, column) in self.columns.iter_mut().enumerate() {
            let Some(column) = column else {
                d.media[c - MEDIA].resize(n, f64::NAN);
                continue;
            };
            let read = match c {
                EVENT_ID => column.ids(n, &mut d.event_id, &mut other_ids[0]),
                CALL_ID => column.ids(n, &mut d.call, &mut other_ids[1]),
                EVENT_TYPE => column.event_types(n, &mut d.etype, &mut unknown_types),
                TIME => column.times(n, &mut d.t_ms, &mut null_times),
                c if c < MEDIA => {
                    let (out, local) = match c {
                        TENANT => (&mut d.tenant, &mut names[0]),
                        QUEUE => (&mut d.queue, &mut names[1]),
                        _ => (&mut d.agent, &mut names[2]),
                    };
                    column.names(n, out, local)
                }
                c => column.floats(n, &mut d.media[c - MEDIA]),
            };
            read.map_err(fail(c))?;
        }
        // Validity: the rules of `Decoder::decode`, from what the pages said.
        let mut unknown = unknown_types.into_iter().peekable();
        check_rows(
            d,
            |d, r| d.tenant[r] == NONE,
            |r| null_times.binary_search(&(r as u32)).is_ok(),
            |r| {
                while unknown.next_if(|(u, _)| (*u as usize) < r).is_some() {}
                Ok(unknown.next_if(|(u, _)| *u as usize == r).map(|(_, text)| text.into()))
            },
        )?;
        self.group_left -= n;
        self.next_row += n as u64;
        Ok(Some(b))
    }

    /// Gives a batch's buffers back for the next batch (optional: saves allocating them).
    pub fn recycle(&mut self, batch: ParquetBatch) {
        self.spare = Some(batch);
    }

    fn start_group(&mut self, g: usize) -> Result<()> {
        let rg = self.meta.row_group(g);
        let fail =
            |column: usize| move |reason: String| Error::ParquetPage { column: FOLD_COLUMNS[column], group: g, reason };
        self.columns.clear();
        for (c, leaf) in self.leaves.iter().enumerate() {
            let Some(leaf) = *leaf else {
                self.columns.push(None);
                continue;
            };
            let meta = rg.column(leaf);
            // Not `byte_range()`: it asserts that the footer's offsets are not negative.
            let (start, len) =
                (meta.dictionary_page_offset().unwrap_or(meta.data_page_offset()), meta.compressed_size());
            let chunk = usize::try_from(start)
                .ok()
                .zip(usize::try_from(len).ok())
                .and_then(|(s, l)| Some(s..s.checked_add(l)?))
                .filter(|r| r.end <= self.file.len())
                .map(|r| self.file.slice(r))
                .ok_or_else(|| fail(c)(format!("column chunk at {start}+{len} lies outside the file")))?;
            let nullable = meta.column_descr().max_def_level() > 0;
            let fixed = (KINDS[c] == Kind::Time || KINDS[c] == Kind::Float).then_some(8);
            let rows = usize::try_from(rg.num_rows()).map_err(|_| fail(c)("a negative row count".into()))?;
            let cursor = Cursor::new(chunk, meta.compression(), nullable, fixed, rows).map_err(fail(c))?;
            let column = Column::new(KINDS[c], cursor).map_err(fail(c))?;
            self.columns.push(Some(column));
        }
        self.group = g;
        self.group_left = usize::try_from(rg.num_rows()).unwrap_or(0); // checked in `open`
        Ok(())
    }
}

/// The leaf column of each of [`FOLD_COLUMNS`] in a file this reader reads, or why it does not.
fn supported(meta: &ParquetMetaData) -> std::result::Result<[Option<usize>; 11], String> {
    let schema = meta.file_metadata().schema_descr();
    let mut leaves = [None; 11];
    for i in 0..schema.num_columns() {
        let col = schema.column(i);
        let Some(c) = FOLD_COLUMNS.iter().position(|name| *name == col.name()) else { continue };
        if col.path().parts().len() != 1 || col.max_rep_level() != 0 || col.max_def_level() > 1 || leaves[c].is_some() {
            return Err(format!("column {} is not a flat column", col.name()));
        }
        let kind = KINDS[c];
        let physical = col.physical_type();
        let typed = match kind {
            Kind::Id | Kind::Name | Kind::EventType => physical == Physical::BYTE_ARRAY,
            Kind::Time => {
                physical == Physical::INT64
                    && match col.logical_type_ref() {
                        Some(LogicalType::Timestamp(t)) => t.unit == TimeUnit::MILLIS,
                        Some(_) => false,
                        None => col.converted_type() == ConvertedType::TIMESTAMP_MILLIS,
                    }
            }
            Kind::Float => physical == Physical::DOUBLE,
        };
        if !typed {
            return Err(format!("column {} is stored as {physical} ({:?})", col.name(), col.logical_type_ref()));
        }
        leaves[c] = Some(i);
    }
    if let Some(c) = (0..REQUIRED).find(|&c| leaves[c].is_none()) {
        return Err(format!("no column {}", FOLD_COLUMNS[c]));
    }
    for rg in meta.row_groups() {
        for leaf in leaves.iter().flatten() {
            let chunk = rg.column(*leaf);
            if !matches!(chunk.compression(), Compression::UNCOMPRESSED | Compression::SNAPPY | Compression::ZSTD(_)) {
                return Err(format!(
                    "column {} is compressed with {}",
                    chunk.column_descr().name(),
                    chunk.compression()
                ));
            }
            if let Some(e) = chunk.encodings().find(|e| {
                !matches!(e, Encoding::PLAIN | Encoding::PLAIN_DICTIONARY | Encoding::RLE_DICTIONARY | Encoding::RLE)
            }) {
                return Err(format!("column {} has {e} pages", chunk.column_descr().name()));
            }
        }
    }
    Ok(leaves)
}

/// Consecutive rows of a column, as its page has them.
enum Slot<'a> {
    /// This many rows without a value.
    Nulls(usize),
    /// `count` rows, those whose bit is set in `valid` (from bit `first` on) with a value:
    /// the values of those rows, in order.
    Masked { valid: &'a [u64], first: usize, count: usize, values: Dense<'a> },
    /// Dictionary indices of consecutive rows, each within the chunk's dictionary.
    Indices(&'a [u32]),
    /// `PLAIN` values of consecutive rows of an 8-byte column (INT64, DOUBLE), little-endian.
    Fixed(&'a [u8]),
    /// One row's `PLAIN` byte array.
    Bytes(&'a [u8]),
}

/// The values of the rows of a [`Slot::Masked`] that have one: dictionary indices, or
/// (8-byte columns only) `PLAIN` values.
#[derive(Clone, Copy)]
enum Dense<'a> {
    Indices(&'a [u32]),
    Fixed(&'a [u8]),
}

impl Dense<'_> {
    fn index(&self, k: usize) -> usize {
        match self {
            Dense::Indices(ix) => ix[k] as usize,
            Dense::Fixed(_) => usize::MAX,
        }
    }

    fn eight(&self, k: usize) -> [u8; 8] {
        match self {
            Dense::Fixed(v) => eight(&v[k * 8..k * 8 + 8]),
            Dense::Indices(_) => [0; 8],
        }
    }
}

/// Appends `count` rows to `out`: `null` for each row whose bit (from `first` on) is clear
/// in `valid`, `value(k, row)` for the `k`-th row whose bit is set (`row` its index in
/// `out`). Set bits are found a word at a time, so the cost is per value, not per row.
fn expand<T: Copy>(
    out: &mut Vec<T>,
    (valid, first, count): (&[u64], usize, usize),
    null: T,
    mut value: impl FnMut(usize, usize) -> T,
) {
    let start = out.len();
    out.resize(start + count, null);
    let end = first + count;
    let mut k = 0;
    for (w, &word) in valid.iter().enumerate().take(end.div_ceil(64)).skip(first / 64) {
        let mut word = word;
        if w == first / 64 {
            word &= u64::MAX << (first % 64);
        }
        if w == end / 64 {
            word &= (1u64 << (end % 64)) - 1;
        }
        while word != 0 {
            let row = start + w * 64 + word.trailing_zeros() as usize - first;
            out[row] = value(k, row);
            k += 1;
            word &= word - 1;
        }
    }
}

const NOT_BYTES: &str = "8-byte values in a byte array column";
const NOT_FIXED: &str = "byte arrays in an 8-byte column";

/// A column chunk's dictionary in the form its kind reads.
enum Typed {
    None,
    /// Keys, [`LOCAL_ID`] for ids that are not UUIDs, whose texts are in the second list.
    Ids(Vec<IdKey>, Vec<Box<str>>),
    Names(Arc<Vec<Box<str>>>),
    /// Event type codes, [`INVALID`] for unknown ones, whose texts are in the second list.
    Types(Vec<u8>, Vec<Box<str>>),
    Times(Vec<i64>),
    Floats(Vec<f64>),
}

struct Column {
    cursor: Cursor,
    dict: Typed,
}

fn utf8(b: &[u8]) -> std::result::Result<&str, String> {
    std::str::from_utf8(b).map_err(|e| format!("a string value is not UTF-8: {e}"))
}

/// An id's key, or [`LOCAL_ID`] and its text for an id that is not a UUID.
fn id_key(b: &[u8]) -> std::result::Result<(IdKey, Option<&str>), String> {
    if b.is_empty() {
        return Ok((NO_CALL, None));
    }
    match parse_uuid(b) {
        Some(k) => Ok((k, None)),
        None => Ok((LOCAL_ID, Some(utf8(b)?))),
    }
}

fn event_type(b: &[u8]) -> std::result::Result<(u8, Option<&str>), String> {
    let s = utf8(b)?;
    Ok(match EventType::parse(s) {
        Some(t) => (t as u8, None),
        None => (INVALID, Some(s)),
    })
}

fn eight(b: &[u8]) -> [u8; 8] {
    // Plain slots of 8-byte columns are 8 bytes (`Cursor::read`).
    b.try_into().unwrap_or([0; 8])
}

/// A coded column's dictionary (see [`coded`]): each value's code, and the texts of the
/// values `parse` gives one for (empty for the others).
fn coded_dictionary<'a, T>(
    values: impl Iterator<Item = &'a [u8]>,
    parse: impl Fn(&[u8]) -> std::result::Result<(T, Option<&str>), String>,
) -> std::result::Result<(Vec<T>, Vec<Box<str>>), String> {
    let (mut codes, mut texts) = (Vec::new(), Vec::new());
    for v in values {
        let (code, text) = parse(v)?;
        codes.push(code);
        texts.push(text.unwrap_or_default().into());
    }
    Ok((codes, texts))
}

/// Reads `n` rows of a column whose values map to codes (ids to keys, event types to type
/// codes): `null` for NULL rows; a value that maps to `odd` (an id that is not a UUID, an
/// unknown event type) is also listed in `odd_rows` with its row and text. `dict` is the
/// chunk dictionary's codes and, for the odd ones, texts; `parse` maps a `PLAIN` value.
fn coded<T: Copy + PartialEq>(
    cursor: &mut Cursor,
    n: usize,
    (codes, texts): (&[T], &[Box<str>]),
    (null, odd): (T, T),
    parse: impl Fn(&[u8]) -> std::result::Result<(T, Option<&str>), String>,
    out: &mut Vec<T>,
    odd_rows: &mut Vec<(u32, Box<str>)>,
) -> std::result::Result<(), String> {
    out.reserve(n);
    cursor.read(n, |slot| {
        match slot {
            Slot::Nulls(k) => out.resize(out.len() + k, null),
            Slot::Masked { valid, first, count, values } => expand(out, (valid, first, count), null, |k, row| {
                let i = values.index(k);
                if codes[i] == odd {
                    odd_rows.push((row as u32, texts[i].clone()));
                }
                codes[i]
            }),
            Slot::Indices(ix) => {
                for &i in ix {
                    let c = codes[i as usize];
                    if c == odd {
                        odd_rows.push((out.len() as u32, texts[i as usize].clone()));
                    }
                    out.push(c);
                }
            }
            Slot::Bytes(b) => {
                let (c, text) = parse(b)?;
                if let Some(text) = text {
                    odd_rows.push((out.len() as u32, text.into()));
                }
                out.push(c);
            }
            Slot::Fixed(_) => return Err(NOT_BYTES.into()),
        }
        Ok(())
    })
}

impl Column {
    fn new(kind: Kind, cursor: Cursor) -> std::result::Result<Self, String> {
        let dict = {
            let values = cursor.dictionary();
            match kind {
                _ if cursor.dict.is_empty() => Typed::None,
                Kind::Id => {
                    let (keys, texts) = coded_dictionary(values, id_key)?;
                    Typed::Ids(keys, texts)
                }
                Kind::Name => {
                    let names: std::result::Result<Vec<Box<str>>, String> =
                        values.map(|v| utf8(v).map(Box::from)).collect();
                    Typed::Names(Arc::new(names?))
                }
                Kind::EventType => {
                    let (codes, texts) = coded_dictionary(values, event_type)?;
                    Typed::Types(codes, texts)
                }
                Kind::Time => Typed::Times(values.map(|v| i64::from_le_bytes(eight(v))).collect()),
                Kind::Float => Typed::Floats(values.map(|v| finite(f64::from_le_bytes(eight(v)))).collect()),
            }
        };
        Ok(Column { cursor, dict })
    }

    fn ids(&mut self, n: usize, out: &mut Vec<IdKey>, others: &mut Vec<(u32, Box<str>)>) -> Result<(), String> {
        let dict = match &self.dict {
            Typed::Ids(k, t) => (&k[..], &t[..]),
            _ => (&[][..], &[][..]),
        };
        coded(&mut self.cursor, n, dict, (NO_CALL, LOCAL_ID), id_key, out, others)
    }

    fn names(&mut self, n: usize, out: &mut Vec<u32>, local: &mut LocalNames) -> Result<(), String> {
        local.dictionary = match &self.dict {
            Typed::Names(d) => d.clone(),
            _ => Arc::default(),
        };
        let dict_len = local.dictionary.len();
        out.reserve(n);
        self.cursor.read(n, |slot| {
            match slot {
                Slot::Nulls(k) => out.resize(out.len() + k, NONE),
                Slot::Masked { valid, first, count, values } => {
                    expand(out, (valid, first, count), NONE, |k, _| values.index(k) as u32)
                }
                // Local keys are dictionary indices.
                Slot::Indices(ix) => out.extend_from_slice(ix),
                Slot::Bytes(b) => {
                    local.plain.push(utf8(b)?.into());
                    out.push((dict_len + local.plain.len() - 1) as u32);
                }
                Slot::Fixed(_) => return Err(NOT_BYTES.into()),
            }
            Ok(())
        })
    }

    /// Event type codes; NULL and unknown types are [`INVALID`], the unknown ones listed
    /// with their text in `unknown`.
    fn event_types(&mut self, n: usize, out: &mut Vec<u8>, unknown: &mut Vec<(u32, Box<str>)>) -> Result<(), String> {
        let dict = match &self.dict {
            Typed::Types(c, t) => (&c[..], &t[..]),
            _ => (&[][..], &[][..]),
        };
        coded(&mut self.cursor, n, dict, (INVALID, INVALID), event_type, out, unknown)
    }

    fn times(&mut self, n: usize, out: &mut Vec<i64>, nulls: &mut Vec<u32>) -> Result<(), String> {
        let dict = match &self.dict {
            Typed::Times(d) => &d[..],
            _ => &[],
        };
        out.reserve(n);
        self.cursor.read(n, |slot| {
            match slot {
                Slot::Nulls(k) => {
                    nulls.extend(out.len() as u32..(out.len() + k) as u32);
                    out.resize(out.len() + k, 0);
                }
                Slot::Masked { valid, first, count, values } => {
                    let start = out.len();
                    expand(out, (valid, first, count), 0, |k, _| match values {
                        Dense::Indices(_) => dict[values.index(k)],
                        Dense::Fixed(_) => i64::from_le_bytes(values.eight(k)),
                    });
                    // The NULL rows, for the validity check (rare: every event has a time).
                    let clear = |r: &usize| valid[(first + r) / 64] >> ((first + r) % 64) & 1 == 0;
                    nulls.extend((0..count).filter(clear).map(|r| (start + r) as u32));
                }
                Slot::Indices(ix) => out.extend(ix.iter().map(|&i| dict[i as usize])),
                Slot::Fixed(v) => out.extend(v.chunks_exact(8).map(|b| i64::from_le_bytes(eight(b)))),
                Slot::Bytes(_) => return Err(NOT_FIXED.into()),
            }
            Ok(())
        })
    }

    fn floats(&mut self, n: usize, out: &mut Vec<f64>) -> Result<(), String> {
        let dict = match &self.dict {
            Typed::Floats(d) => &d[..],
            _ => &[],
        };
        out.reserve(n);
        self.cursor.read(n, |slot| {
            match slot {
                Slot::Nulls(k) => out.resize(out.len() + k, f64::NAN),
                Slot::Masked { valid, first, count, values } => {
                    expand(out, (valid, first, count), f64::NAN, |k, _| match values {
                        Dense::Indices(_) => dict[values.index(k)],
                        Dense::Fixed(_) => finite(f64::from_le_bytes(values.eight(k))),
                    })
                }
                Slot::Indices(ix) => out.extend(ix.iter().map(|&i| dict[i as usize])),
                Slot::Fixed(v) => out.extend(v.chunks_exact(8).map(|b| finite(f64::from_le_bytes(eight(b))))),
                Slot::Bytes(_) => return Err(NOT_FIXED.into()),
            }
            Ok(())
        })
    }
}

/// Decompresses pages of a column chunk.
enum Codec {
    None,
    Snappy(snap::raw::Decoder),
    Zstd(Box<zstd::bulk::Decompressor<'static>>),
}

impl Codec {
    fn new(c: Compression) -> std::result::Result<Self, String> {
        Ok(match c {
            Compression::UNCOMPRESSED => Codec::None,
            Compression::SNAPPY => Codec::Snappy(snap::raw::Decoder::new()),
            Compression::ZSTD(_) => Codec::Zstd(Box::new(zstd::bulk::Decompressor::new().map_err(|e| e.to_string())?)),
            other => return Err(format!("{other} pages")),
        })
    }

    /// `src` decompressed into `out` (replacing its contents), which must come to `size` bytes
    /// (at most [`MAX_PAGE_BYTES`]): the size a header claims is checked against the
    /// compressed data's own before it sizes a buffer.
    fn decompress(&mut self, src: &[u8], size: usize, out: &mut Vec<u8>) -> std::result::Result<(), String> {
        if size > MAX_PAGE_BYTES {
            return Err(format!("a page of {size} bytes (more than {MAX_PAGE_BYTES})"));
        }
        let claimed = match self {
            Codec::None => None,
            Codec::Snappy(_) => Some(snap::raw::decompress_len(src).map_err(|e| format!("Snappy: {e}"))? as u64),
            Codec::Zstd(_) => zstd::zstd_safe::get_frame_content_size(src).ok().flatten(),
        };
        if let Some(n) = claimed.filter(|&n| n != size as u64) {
            return Err(format!("a page's data decompresses to {n} bytes where its header says {size}"));
        }
        let n = match self {
            Codec::None => {
                out.clear();
                out.extend_from_slice(src);
                src.len()
            }
            Codec::Snappy(d) => {
                // Only growth is zeroed: the buffer is reused from page to page.
                out.resize(size, 0);
                d.decompress(src, out).map_err(|e| format!("Snappy: {e}"))?
            }
            Codec::Zstd(d) => {
                out.clear();
                out.reserve(size);
                d.decompress_to_buffer(src, out).map_err(|e| format!("zstd: {e}"))?
            }
        };
        if n != size {
            return Err(format!("a page decompressed to {n} bytes where its header says {size}"));
        }
        Ok(())
    }
}

/// Reads a column chunk's values in row order, page after page.
struct Cursor {
    chunk: Bytes,
    /// Offset in `chunk` of the next page header.
    pos: usize,
    codec: Codec,
    nullable: bool,
    /// Width of a `PLAIN` value (`None`: byte arrays, each after its 4-byte length).
    fixed: Option<usize>,
    /// The chunk's dictionary page, decompressed, and where each of its values lies.
    dict_page: Vec<u8>,
    dict: Vec<(usize, usize)>,
    /// The current data page's values, decompressed (`values_at` onwards).
    page: Vec<u8>,
    rows: usize,
    row: usize,
    /// Which rows of the page have a value, a bit each; empty when all of them do.
    valid: Vec<u64>,
    dictionary_encoded: bool,
    indices: Vec<u32>,
    next_index: usize,
    next_value: usize,
    /// Rows of the row group that no data page has held yet.
    rows_left: usize,
}

const SHORT: &str = "a page ends before its values do";

/// A page decompressed, at most (bytes): writers make pages of about 1 MiB.
const MAX_PAGE_BYTES: usize = 256 << 20;
/// Values of one page, at most: writers make pages of 20,000 rows or about 1 MiB.
const MAX_PAGE_VALUES: usize = 1 << 24;

impl Cursor {
    /// A cursor at the start of `chunk`, its dictionary page (if it has one) read.
    fn new(
        chunk: Bytes,
        compression: Compression,
        nullable: bool,
        fixed: Option<usize>,
        rows: usize,
    ) -> std::result::Result<Self, String> {
        let mut c = Cursor {
            rows_left: rows,
            chunk,
            pos: 0,
            codec: Codec::new(compression)?,
            nullable,
            fixed,
            dict_page: Vec::new(),
            dict: Vec::new(),
            page: Vec::new(),
            rows: 0,
            row: 0,
            valid: Vec::new(),
            dictionary_encoded: false,
            indices: Vec::new(),
            next_index: 0,
            next_value: 0,
        };
        if let Some((h, body)) = c.peek()? {
            if h.page_type == DICTIONARY_PAGE {
                c.read_dictionary(&h, body)?;
            } else {
                // A chunk without a dictionary: that was its first data page.
                c.pos = 0;
            }
        }
        Ok(c)
    }

    /// The next page's header and body range, `None` at the chunk's end; moves past it.
    fn peek(&mut self) -> std::result::Result<Option<(PageHeader, std::ops::Range<usize>)>, String> {
        if self.pos >= self.chunk.len() {
            return Ok(None);
        }
        let (h, len) = page_header(&self.chunk[self.pos..])?;
        let start = self.pos + len;
        let end = start.checked_add(h.compressed_size).filter(|&e| e <= self.chunk.len());
        let end = end.ok_or("a page runs past its column chunk")?;
        self.pos = end;
        Ok(Some((h, start..end)))
    }

    fn read_dictionary(&mut self, h: &PageHeader, body: std::ops::Range<usize>) -> std::result::Result<(), String> {
        if h.encoding != Encoding::PLAIN as i32 && h.encoding != Encoding::PLAIN_DICTIONARY as i32 {
            return Err(format!("a dictionary page with encoding {}", h.encoding));
        }
        let chunk = self.chunk.clone();
        self.codec.decompress(&chunk[body], h.uncompressed_size, &mut self.dict_page)?;
        let mut at = 0;
        for _ in 0..h.num_values {
            let (start, len) = match self.fixed {
                Some(w) => (at, w),
                None => {
                    let len = self.dict_page.get(at..at + 4).ok_or(SHORT)?;
                    (at + 4, u32::from_le_bytes(len.try_into().unwrap_or([0; 4])) as usize)
                }
            };
            at = start.checked_add(len).filter(|&e| e <= self.dict_page.len()).ok_or(SHORT)?;
            self.dict.push((start, len));
        }
        Ok(())
    }

    /// The dictionary's values, in order.
    fn dictionary(&self) -> impl Iterator<Item = &[u8]> {
        self.dict.iter().map(|&(s, l)| &self.dict_page[s..s + l])
    }

    /// Moves to the next data page with rows; false at the chunk's end.
    fn next_data_page(&mut self) -> std::result::Result<bool, String> {
        while let Some((h, body)) = self.peek()? {
            if h.page_type == DATA_PAGE || h.page_type == DATA_PAGE_V2 {
                // A page's value count sizes the validity and index buffers.
                if h.num_values > self.rows_left.min(MAX_PAGE_VALUES) {
                    return Err(format!(
                        "a page of {} values where its row group has {} rows left",
                        h.num_values, self.rows_left
                    ));
                }
                self.rows_left -= h.num_values;
            }
            let chunk = self.chunk.clone();
            let body = &chunk[body];
            let values_at = match h.page_type {
                DATA_PAGE => {
                    self.codec.decompress(body, h.uncompressed_size, &mut self.page)?;
                    if !self.nullable {
                        0
                    } else if h.def_level_encoding != Encoding::RLE as i32 {
                        return Err(format!("definition levels with encoding {}", h.def_level_encoding));
                    } else {
                        let len = self.page.get(..4).ok_or(SHORT)?;
                        let len = u32::from_le_bytes(len.try_into().unwrap_or([0; 4])) as usize;
                        let levels = self.page.get(4..4 + len).ok_or(SHORT)?;
                        validity(levels, h.num_values, &mut self.valid)?;
                        4 + len
                    }
                }
                DATA_PAGE_V2 => {
                    if h.rep_levels_len != 0 {
                        return Err("a flat column's page has repetition levels".into());
                    }
                    let levels = body.get(..h.def_levels_len).ok_or(SHORT)?;
                    if self.nullable {
                        validity(levels, h.num_values, &mut self.valid)?;
                    }
                    let values = &body[levels.len()..];
                    let size = h.uncompressed_size.checked_sub(levels.len()).ok_or(SHORT)?;
                    if h.is_compressed {
                        self.codec.decompress(values, size, &mut self.page)?;
                    } else {
                        self.page.clear();
                        self.page.extend_from_slice(values);
                    }
                    0
                }
                DICTIONARY_PAGE => return Err("a second dictionary page".into()),
                _ => continue,
            };
            self.rows = h.num_values;
            self.row = 0;
            let values = if self.nullable { ones(&self.valid, 0, self.rows) } else { self.rows };
            if values == self.rows {
                self.valid.clear();
            }
            self.next_index = 0;
            self.next_value = values_at;
            self.dictionary_encoded = match h.encoding {
                e if e == Encoding::PLAIN as i32 => false,
                e if e == Encoding::PLAIN_DICTIONARY as i32 || e == Encoding::RLE_DICTIONARY as i32 => {
                    if self.dict.is_empty() && values > 0 {
                        return Err("dictionary-encoded values without a dictionary page".into());
                    }
                    let width = *self.page.get(values_at).ok_or(SHORT)?;
                    indices(&self.page[values_at + 1..], u32::from(width), values, &mut self.indices)?;
                    if self.indices.iter().any(|&i| i as usize >= self.dict.len()) {
                        return Err(format!("a dictionary index past the dictionary's {} values", self.dict.len()));
                    }
                    true
                }
                e => return Err(format!("values with encoding {e}")),
            };
            if self.rows > 0 {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Hands the next `n` rows to `each`, in order.
    fn read(
        &mut self,
        n: usize,
        mut each: impl FnMut(Slot<'_>) -> std::result::Result<(), String>,
    ) -> std::result::Result<(), String> {
        let mut left = n;
        while left > 0 {
            if self.row == self.rows && !self.next_data_page()? {
                return Err("the column chunk ends before its row group does".into());
            }
            let take = left.min(self.rows - self.row);
            let (first, has_nulls) = (self.row, !self.valid.is_empty());
            let values = if has_nulls { ones(&self.valid, first, first + take) } else { take };
            if self.dictionary_encoded {
                let ix = self.indices.get(self.next_index..self.next_index + values).ok_or(SHORT)?;
                each(match has_nulls {
                    true => Slot::Masked { valid: &self.valid, first, count: take, values: Dense::Indices(ix) },
                    false => Slot::Indices(ix),
                })?;
                self.next_index += values;
            } else if let Some(w) = self.fixed {
                let end = self.next_value + values * w;
                let v = self.page.get(self.next_value..end).ok_or(SHORT)?;
                each(match has_nulls {
                    true => Slot::Masked { valid: &self.valid, first, count: take, values: Dense::Fixed(v) },
                    false => Slot::Fixed(v),
                })?;
                self.next_value = end;
            } else {
                let mut at = self.next_value;
                for r in first..first + take {
                    if has_nulls && self.valid[r / 64] >> (r % 64) & 1 == 0 {
                        each(Slot::Nulls(1))?;
                        continue;
                    }
                    let len = self.page.get(at..at + 4).ok_or(SHORT)?;
                    let len = u32::from_le_bytes(len.try_into().unwrap_or([0; 4])) as usize;
                    let v = self.page.get(at + 4..(at + 4).saturating_add(len)).ok_or(SHORT)?;
                    at += 4 + len;
                    each(Slot::Bytes(v))?;
                }
                self.next_value = at;
            }
            self.row += take;
            left -= take;
        }
        Ok(())
    }
}

/// Set bits of `bits` in `from..to`.
fn ones(bits: &[u64], from: usize, to: usize) -> usize {
    if from >= to {
        return 0;
    }
    let (a, b) = (from / 64, (to - 1) / 64);
    let head = u64::MAX << (from % 64);
    let tail = u64::MAX >> (63 - (to - 1) % 64);
    if a == b {
        return (bits[a] & head & tail).count_ones() as usize;
    }
    let middle: u32 = bits[a + 1..b].iter().map(|w| w.count_ones()).sum();
    ((bits[a] & head).count_ones() + middle + (bits[b] & tail).count_ones()) as usize
}

/// A run of Parquet's RLE / bit-packing hybrid encoding.
enum Run<'a> {
    Repeated {
        value: u32,
        count: usize,
    },
    /// `count` values bit-packed in groups of eight, least significant bit first.
    Packed {
        bytes: &'a [u8],
        count: usize,
    },
}

/// The runs holding the first `count` values of width `bw` of hybrid-encoded `data`.
fn hybrid(mut data: &[u8], bw: u32, count: usize, mut each: impl FnMut(Run<'_>)) -> std::result::Result<(), String> {
    const CUT: &str = "a run is cut short";
    if bw > 32 {
        return Err(format!("bit width {bw}"));
    }
    let value_bytes = bw.div_ceil(8) as usize;
    let mut left = count;
    while left > 0 {
        let (header, len) = uleb(data).ok_or(CUT)?;
        data = &data[len..];
        if header & 1 == 0 {
            let count = usize::try_from(header >> 1).unwrap_or(usize::MAX).min(left);
            let value = data.get(..value_bytes).ok_or(CUT)?;
            let mut v = [0u8; 4];
            v[..value_bytes].copy_from_slice(value);
            data = &data[value_bytes..];
            each(Run::Repeated { value: u32::from_le_bytes(v), count });
            left -= count;
        } else {
            let groups = usize::try_from(header >> 1).unwrap_or(usize::MAX);
            let bytes = groups.checked_mul(bw as usize).filter(|&b| b <= data.len()).ok_or(CUT)?;
            let count = groups.saturating_mul(8).min(left);
            each(Run::Packed { bytes: &data[..bytes], count });
            data = &data[bytes..];
            left -= count;
        }
    }
    Ok(())
}

/// `count` dictionary indices of width `bw` into `out` (replacing its contents).
fn indices(data: &[u8], bw: u32, count: usize, out: &mut Vec<u32>) -> std::result::Result<(), String> {
    out.clear();
    out.reserve(count);
    hybrid(data, bw, count, |run| match run {
        Run::Repeated { value, count } => out.resize(out.len() + count, value),
        Run::Packed { bytes, count } => unpack(bytes, bw as usize, count, out),
    })
}

/// Appends the first `n` values of `bytes`, bit-packed `bw` bits each in groups of eight
/// (a group is `bw` bytes), to `out`.
fn unpack(bytes: &[u8], bw: usize, n: usize, out: &mut Vec<u32>) {
    if bw == 0 {
        out.resize(out.len() + n, 0);
        return;
    }
    let mask = (1u64 << bw) - 1;
    let mut left = n;
    for group in bytes.chunks_exact(bw) {
        if left == 0 {
            break;
        }
        let mut values = [0u32; 8];
        if bw <= 8 {
            // The whole group in one word.
            let mut w = [0u8; 8];
            w[..bw].copy_from_slice(group);
            let w = u64::from_le_bytes(w);
            for (j, v) in values.iter_mut().enumerate() {
                *v = ((w >> (j * bw)) & mask) as u32;
            }
        } else {
            let mut w = [0u8; 40];
            w[..bw].copy_from_slice(group);
            for (j, v) in values.iter_mut().enumerate() {
                let bit = j * bw;
                let word = u64::from_le_bytes(w[bit / 8..bit / 8 + 8].try_into().unwrap_or([0; 8]));
                *v = ((word >> (bit % 8)) & mask) as u32;
            }
        }
        let take = left.min(8);
        out.extend_from_slice(&values[..take]);
        left -= take;
    }
}

/// The validity bitmap (a bit per row, set when it has a value) that `count` definition
/// levels (width 1) of hybrid-encoded `data` make, into `bits` (replacing its contents).
/// Bit-packed levels already are a bitmap: their bytes are copied in, shifted into place.
fn validity(data: &[u8], count: usize, bits: &mut Vec<u64>) -> std::result::Result<(), String> {
    bits.clear();
    bits.resize(count.div_ceil(64) + 1, 0);
    let mut at = 0;
    hybrid(data, 1, count, |run| match run {
        Run::Repeated { value, count } => {
            if value != 0 {
                set_range(bits, at, at + count);
            }
            at += count;
        }
        Run::Packed { bytes, count } => {
            let mut left = count;
            for &b in bytes {
                if left == 0 {
                    break;
                }
                let k = left.min(8);
                let b = u64::from(b) & ((1u64 << k) - 1);
                let (w, shift) = (at / 64, at % 64);
                bits[w] |= b << shift;
                if shift > 56 {
                    bits[w + 1] |= b >> (64 - shift);
                }
                at += k;
                left -= k;
            }
        }
    })
}

/// Sets bits `from..to`.
fn set_range(bits: &mut [u64], from: usize, to: usize) {
    for (w, word) in bits.iter_mut().enumerate().take(to.div_ceil(64)).skip(from / 64) {
        let lo = (w * 64).max(from) - w * 64;
        let hi = ((w + 1) * 64).min(to) - w * 64;
        *word |= if hi - lo == 64 { u64::MAX } else { ((1u64 << (hi - lo)) - 1) << lo };
    }
}

#[cfg(test)]
mod tests;
