//! Parquet files of flat tables, encoded straight from Arrow arrays.
//!
//! ccstream's tables are flat (no lists, structs or maps) and use a handful of column types.
//! For those, [`FlatWriter`] writes each column's pages from the Arrow buffers directly,
//! with the encodings the table's [`WriterProperties`] name:
//!
//! - definition levels: a validity bitmap *is* a bit-packed run of width 1, so it is copied;
//!   a column without nulls is one RLE run;
//! - `DELTA_BINARY_PACKED` integers and times (blocks of 128 deltas, 4 miniblocks of 32),
//!   `BYTE_STREAM_SPLIT` floats, `PLAIN` booleans (the values bitmap, again as it is);
//! - `DELTA_LENGTH_BYTE_ARRAY` text and binary: the lengths delta-packed, then the value
//!   bytes, which for a column without nulls are the array's value buffer in one copy;
//! - dictionary-enabled text: a `PLAIN` dictionary page and `RLE_DICTIONARY` indices, taken
//!   from the keys of a dictionary array (the page holds only the values the chunk uses), or
//!   found by hashing plain text.
//!
//! Pages are Parquet v1 data pages of at most [`PAGE_ROWS`] rows, each compressed whole with
//! the column's codec (zstd or Snappy; compression contexts are reused across columns). A
//! float column meant for zstd whose first page zstd shrinks by less than a fifth (mantissa
//! bytes of measured values are near random) is written with Snappy from there on in that
//! file: zstd's entropy coding would cost more time than it saves bytes. A chunk whose
//! values are only a few kilobytes ([`SMALL_CHUNK_BYTES`]) is written with Snappy too: there
//! zstd's fixed cost per frame is most of its time.
//! Integer, time and text columns whose statistics are enabled get the chunk's min, max and
//! null count (no page-level statistics or page index: files are pruned by chunk). The file's
//! footer, and the Arrow schema in its key-value metadata, come from the parquet crate's
//! [`SerializedFileWriter`], so any Parquet reader reads the files.
//!
//! Types or settings outside this set are an error ([`FlatError::Unsupported`]), never a
//! silently different file.

use std::borrow::Cow;
use std::io::Write;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, DictionaryArray};
use arrow::buffer::{BooleanBuffer, NullBuffer};
use arrow::datatypes::{
    DataType, Date32Type, Float64Type, Int32Type, Int64Type, Int8Type, SchemaRef, TimeUnit, TimestampMicrosecondType,
};
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use parquet::arrow::{add_encoded_arrow_schema_to_metadata, ArrowSchemaConverter};
use parquet::basic::{Compression, Encoding};
use parquet::column::page::{CompressedPage, Page, PageWriter};
use parquet::column::writer::ColumnCloseResult;
use parquet::errors::ParquetError;
use parquet::file::metadata::{ColumnChunkMetaData, ParquetMetaData};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::statistics::Statistics;
use parquet::file::writer::{SerializedFileWriter, SerializedPageWriter, TrackedWrite};
use parquet::schema::types::{ColumnDescPtr, ColumnPath, SchemaDescriptor};

/// Rows per data page (the parquet crate's default page row limit).
pub const PAGE_ROWS: usize = 20_000;

/// A column chunk meant for zstd whose values are fewer bytes than this is written with
/// Snappy: every zstd frame builds its Huffman and sequence tables anew (some 45 K
/// instructions), which on a few kilobytes costs more than the whole page's compression and
/// saves a few hundred bytes. Small chunks are what the `events` table's media columns and
/// every file of a live commit are made of.
const SMALL_CHUNK_BYTES: usize = 4 * 1024;

/// A dictionary grows to at most this many bytes of values; past it, the column chunk is
/// written as `DELTA_LENGTH_BYTE_ARRAY` text instead.
const MAX_DICTIONARY_BYTES: usize = 1 << 20;

/// Why a flat file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum FlatError {
    #[error("column {column}: {what} is not supported by the flat Parquet writer")]
    Unsupported { column: String, what: String },
    #[error("batch schema does not match the file's: {0}")]
    Schema(String),
    #[error("parquet: {0}")]
    Parquet(#[from] ParquetError),
    #[error("compression: {0}")]
    Compression(#[from] std::io::Error),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
}

type Result<T, E = FlatError> = std::result::Result<T, E>;

/// How one column is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Values {
    Boolean,
    /// `DELTA_BINARY_PACKED` on the INT32 physical type (32-bit wrapping deltas).
    DeltaInt32,
    /// `DELTA_BINARY_PACKED` on the INT64 physical type.
    DeltaInt64,
    ByteStreamSplit,
    DeltaLengthText,
    DictionaryText,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Codec {
    None,
    Snappy,
    Zstd(i32),
}

impl Codec {
    fn of(c: Compression) -> Option<Codec> {
        match c {
            Compression::UNCOMPRESSED => Some(Codec::None),
            Compression::SNAPPY => Some(Codec::Snappy),
            Compression::ZSTD(level) => Some(Codec::Zstd(level.compression_level())),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
struct Plan {
    values: Values,
    compression: Compression,
    codec: Codec,
    statistics: bool,
}

/// Compression contexts, reused across pages and columns.
struct Codecs {
    zstd: Option<(i32, zstd::bulk::Compressor<'static>)>,
    snappy: snap::raw::Encoder,
}

impl Codecs {
    /// `raw` compressed with `codec`, in a buffer of its own (it becomes the page).
    fn compress(&mut self, codec: Codec, raw: &[u8]) -> Result<Bytes> {
        let out = match codec {
            Codec::None => raw.to_vec(),
            Codec::Snappy => self.snappy.compress_vec(raw).map_err(|e| FlatError::Compression(e.into()))?,
            Codec::Zstd(level) => {
                let reuse = matches!(&self.zstd, Some((l, _)) if *l == level);
                if !reuse {
                    let mut z = zstd::bulk::Compressor::new(level)?;
                    // What zstd compresses here is hex ids and the byte streams of floats:
                    // their repeats are long (a call's id again) and matches shorter than 7
                    // bytes are coincidences that cost more to find and encode than they
                    // save, so a small table of 7-byte matches (the same files, 1.4 % fewer
                    // instructions in a backfill).
                    z.set_parameter(zstd::zstd_safe::CParameter::MinMatch(7))?;
                    z.set_parameter(zstd::zstd_safe::CParameter::HashLog(10))?;
                    self.zstd = Some((level, z));
                }
                let (_, z) = self.zstd.as_mut().expect("set above");
                let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(raw.len()));
                z.compress_to_buffer(raw, &mut out)?;
                out
            }
        };
        Ok(Bytes::from(out))
    }
}

/// Writes Parquet files of flat record batches, one row group per [`FlatWriter::write`].
pub struct FlatWriter<W: Write + Send> {
    schema: SchemaRef,
    descr: Arc<SchemaDescriptor>,
    plans: Vec<Plan>,
    file: SerializedFileWriter<W>,
    codecs: Codecs,
    raw: Vec<u8>,
    /// Per column, the codec its first page chose (see the module doc), once chosen.
    chosen: Vec<Option<Codec>>,
}

impl<W: Write + Send> FlatWriter<W> {
    /// A writer of `schema`'s batches to `out`, with the encodings, codecs and statistics
    /// `props` names for each column.
    pub fn try_new(out: W, schema: SchemaRef, props: WriterProperties) -> Result<Self> {
        let descr = Arc::new(ArrowSchemaConverter::new().convert(&schema)?);
        let mut plans = Vec::with_capacity(schema.fields().len());
        for (i, field) in schema.fields().iter().enumerate() {
            let col = descr.column(i);
            let path = ColumnPath::from(field.name().as_str());
            let unsupported = |what: String| FlatError::Unsupported { column: field.name().clone(), what };
            if col.max_rep_level() > 0 || col.path().parts().len() != 1 {
                return Err(unsupported("a nested column".into()));
            }
            let encoding = props.encoding(&path);
            let values = match field.data_type() {
                DataType::Boolean => Values::Boolean,
                DataType::Int8 | DataType::Int32 | DataType::Date32 => Values::DeltaInt32,
                DataType::Int64 | DataType::Timestamp(TimeUnit::Microsecond, _) => Values::DeltaInt64,
                DataType::Float64 => Values::ByteStreamSplit,
                DataType::Utf8 if props.dictionary_enabled(&path) => Values::DictionaryText,
                DataType::Utf8 | DataType::Binary => Values::DeltaLengthText,
                DataType::Dictionary(k, v) if **k == DataType::Int32 && **v == DataType::Utf8 => Values::DictionaryText,
                other => return Err(unsupported(format!("type {other}"))),
            };
            let expected = match values {
                Values::Boolean => None,
                Values::DeltaInt32 | Values::DeltaInt64 => Some(Encoding::DELTA_BINARY_PACKED),
                Values::ByteStreamSplit => Some(Encoding::BYTE_STREAM_SPLIT),
                Values::DeltaLengthText => Some(Encoding::DELTA_LENGTH_BYTE_ARRAY),
                Values::DictionaryText => None,
            };
            if encoding.is_some()
                && encoding != expected
                && !(values == Values::Boolean && encoding == Some(Encoding::PLAIN))
            {
                return Err(unsupported(format!("encoding {encoding:?} for {}", field.data_type())));
            }
            let compression = props.compression(&path);
            let codec = Codec::of(compression).ok_or_else(|| unsupported(format!("compression {compression}")))?;
            let statistics = props.statistics_enabled(&path) != EnabledStatistics::None;
            plans.push(Plan { values, compression, codec, statistics });
        }
        let mut props = props;
        add_encoded_arrow_schema_to_metadata(&schema, &mut props);
        let file = SerializedFileWriter::new(out, descr.root_schema_ptr(), Arc::new(props))?;
        let codecs = Codecs { zstd: None, snappy: snap::raw::Encoder::new() };
        let chosen = vec![None; plans.len()];
        Ok(FlatWriter { schema, descr, plans, file, codecs, raw: Vec::new(), chosen })
    }

    /// Writes `batch` as one row group.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.write_batches(std::slice::from_ref(batch))
    }

    /// Writes `batches`, in order, as one row group: their rows are encoded where they
    /// are, not first concatenated into one batch (each batch's rows start a new page).
    pub fn write_batches(&mut self, batches: &[RecordBatch]) -> Result<()> {
        for batch in batches {
            self.check(batch)?;
        }
        if batches.iter().all(|b| b.num_rows() == 0) {
            return Ok(());
        }
        let mut group = self.file.next_row_group()?;
        let mut arrays = Vec::with_capacity(batches.len());
        for i in 0..self.schema.fields().len() {
            arrays.clear();
            arrays.extend(batches.iter().map(|b| b.column(i)).filter(|a| !a.is_empty()));
            let chunk = ChunkEncoder {
                col: self.descr.column(i),
                plan: &self.plans[i],
                codecs: &mut self.codecs,
                raw: &mut self.raw,
                chosen: &mut self.chosen[i],
            };
            let (bytes, close) = chunk.encode(&arrays)?;
            group.append_column(&bytes, close)?;
        }
        group.close()?;
        Ok(())
    }

    /// An error unless `batch`'s columns are the file's (dictionary-encoded text standing
    /// for text).
    fn check(&self, batch: &RecordBatch) -> Result<()> {
        if batch.num_columns() != self.schema.fields().len() {
            return Err(FlatError::Schema(format!(
                "{} columns, the file has {}",
                batch.num_columns(),
                self.schema.fields().len()
            )));
        }
        for (array, field) in batch.columns().iter().zip(self.schema.fields()) {
            let same = match (array.data_type(), field.data_type()) {
                (a, f) if a == f => true,
                (DataType::Dictionary(_, v), DataType::Utf8) => **v == DataType::Utf8,
                (DataType::Utf8, DataType::Dictionary(_, v)) => **v == DataType::Utf8,
                _ => false,
            };
            if !same {
                return Err(FlatError::Schema(format!(
                    "column {} is {}, the file's is {}",
                    field.name(),
                    array.data_type(),
                    field.data_type()
                )));
            }
        }
        Ok(())
    }

    /// Finishes the file (its footer) and returns its metadata.
    pub fn close(self) -> Result<ParquetMetaData> {
        Ok(self.file.close()?)
    }
}

impl<W: Write + Send + Default> FlatWriter<W> {
    /// Finishes the file (its footer) and returns the output (a file built in memory, say)
    /// with the file's metadata.
    pub fn finish(mut self) -> Result<(W, ParquetMetaData)> {
        let metadata = self.file.finish()?;
        Ok((std::mem::take(self.file.inner_mut()), metadata))
    }
}

impl<W: Write + Send> std::fmt::Debug for FlatWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlatWriter").field("schema", &self.schema).field("plans", &self.plans).finish_non_exhaustive()
    }
}

/// Encodes one column chunk.
struct ChunkEncoder<'a> {
    col: ColumnDescPtr,
    plan: &'a Plan,
    codecs: &'a mut Codecs,
    raw: &'a mut Vec<u8>,
    chosen: &'a mut Option<Codec>,
}

/// A text column's dictionary: its values and each row's index (rows with a value only).
struct Dictionary<'a> {
    values: Vec<&'a [u8]>,
    indices: Vec<u32>,
}

impl ChunkEncoder<'_> {
    /// The column chunk of `arrays`' rows, in order.
    fn encode(self, arrays: &[&ArrayRef]) -> Result<(Bytes, ColumnCloseResult)> {
        let ChunkEncoder { col, plan, codecs, raw, chosen } = self;
        let planned_zstd = matches!(plan.codec, Codec::Zstd(_));
        let small = planned_zstd && value_bytes(arrays) < SMALL_CHUNK_BYTES;
        let may_fall_back = planned_zstd && !small && plan.values == Values::ByteStreamSplit;
        let mut codec = if small { Codec::Snappy } else { chosen.unwrap_or(plan.codec) };
        let rows: usize = arrays.iter().map(|a| a.len()).sum();
        let nullable = col.max_def_level() > 0;
        if !nullable && arrays.iter().any(|a| a.null_count() > 0) {
            return Err(FlatError::Unsupported {
                column: col.name().to_string(),
                what: "nulls in a required column".into(),
            });
        }
        let mut sink = TrackedWrite::new(Vec::new());
        let mut encodings = vec![];
        let (mut compressed, mut uncompressed) = (0i64, 0i64);
        let mut dictionary_offset = None;
        let mut data_offset = None;
        let dictionary = match plan.values {
            Values::DictionaryText => dictionary_of(arrays),
            _ => None,
        };
        let values_encoding = match (plan.values, &dictionary) {
            (Values::DictionaryText, Some(_)) => Encoding::RLE_DICTIONARY,
            (Values::DictionaryText | Values::DeltaLengthText, _) => Encoding::DELTA_LENGTH_BYTE_ARRAY,
            (Values::Boolean, _) => Encoding::PLAIN,
            (Values::DeltaInt32 | Values::DeltaInt64, _) => Encoding::DELTA_BINARY_PACKED,
            (Values::ByteStreamSplit, _) => Encoding::BYTE_STREAM_SPLIT,
        };
        {
            let mut pages = SerializedPageWriter::new(&mut sink);
            if let Some(d) = &dictionary {
                raw.clear();
                for v in &d.values {
                    raw.extend_from_slice(&(v.len() as u32).to_le_bytes());
                    raw.extend_from_slice(v);
                }
                let page = Page::DictionaryPage {
                    buf: codecs.compress(codec, raw)?,
                    num_values: d.values.len() as u32,
                    encoding: Encoding::PLAIN,
                    is_sorted: false,
                };
                let spec = pages.write_page(CompressedPage::new(page, raw.len()))?;
                dictionary_offset = Some(spec.offset as i64);
                compressed += spec.compressed_size as i64;
                uncompressed += spec.uncompressed_size as i64;
                encodings.push(Encoding::PLAIN);
            }
            // Rows with a value before each page, to find a page's dictionary indices.
            let mut valued_before = 0usize;
            let page_slices = arrays
                .iter()
                .flat_map(|a| (0..a.len()).step_by(PAGE_ROWS).map(|at| a.slice(at, PAGE_ROWS.min(a.len() - at))));
            for slice in page_slices {
                let len = slice.len();
                raw.clear();
                if nullable {
                    let at = raw.len();
                    raw.extend_from_slice(&[0; 4]);
                    def_levels(slice.logical_nulls().as_ref(), len, raw);
                    let n = (raw.len() - at - 4) as u32;
                    raw[at..at + 4].copy_from_slice(&n.to_le_bytes());
                }
                let valued = len - slice.null_count();
                match (&dictionary, plan.values) {
                    (Some(d), _) => {
                        rle_dictionary_indices(&d.indices[valued_before..valued_before + valued], d.values.len(), raw)
                    }
                    (None, Values::Boolean) => plain_booleans(slice.as_boolean(), raw),
                    (None, Values::DeltaInt32) => {
                        let v = int32_values(&slice);
                        delta_binary_packed(&v, true, raw);
                    }
                    (None, Values::DeltaInt64) => {
                        let v = int64_values(&slice);
                        delta_binary_packed(&v, false, raw);
                    }
                    (None, Values::ByteStreamSplit) => byte_stream_split(&slice, raw),
                    (None, Values::DeltaLengthText | Values::DictionaryText) => delta_length_text(&slice, raw),
                }
                valued_before += valued;
                let buf = match *chosen {
                    None if may_fall_back => {
                        let zstd = codecs.compress(plan.codec, raw)?;
                        codec = if zstd.len() * 5 > raw.len() * 4 { Codec::Snappy } else { plan.codec };
                        *chosen = Some(codec);
                        if codec == plan.codec {
                            zstd
                        } else {
                            codecs.compress(codec, raw)?
                        }
                    }
                    _ => codecs.compress(codec, raw)?,
                };
                let page = Page::DataPage {
                    buf,
                    num_values: len as u32,
                    encoding: values_encoding,
                    def_level_encoding: Encoding::RLE,
                    rep_level_encoding: Encoding::RLE,
                    statistics: None,
                };
                let spec = pages.write_page(CompressedPage::new(page, raw.len()))?;
                data_offset.get_or_insert(spec.offset as i64);
                compressed += spec.compressed_size as i64;
                uncompressed += spec.uncompressed_size as i64;
            }
        }
        if nullable {
            encodings.push(Encoding::RLE);
        }
        encodings.push(values_encoding);
        let bytes = Bytes::from(sink.into_inner()?);
        let mut meta = ColumnChunkMetaData::builder(col.clone())
            .set_encodings(encodings)
            .set_compression(if codec == plan.codec { plan.compression } else { Compression::SNAPPY })
            .set_num_values(rows as i64)
            .set_total_compressed_size(compressed)
            .set_total_uncompressed_size(uncompressed)
            .set_data_page_offset(data_offset.unwrap_or(0))
            .set_dictionary_page_offset(dictionary_offset);
        if plan.statistics {
            if let Some(s) = statistics(arrays, dictionary.as_ref().map(|d| &d.values[..])) {
                meta = meta.set_statistics(s);
            }
        }
        let close = ColumnCloseResult {
            bytes_written: bytes.len() as u64,
            rows_written: rows as u64,
            metadata: meta.build()?,
            bloom_filter: None,
            column_index: None,
            offset_index: None,
        };
        Ok((bytes, close))
    }
}

/// The bytes of the values of a column chunk made of `arrays`, as plain encoding would hold
/// them: text and binary without their lengths, fixed-width values with a value; 8 bytes a
/// row with a value for the rest (dictionary keys).
fn value_bytes(arrays: &[&ArrayRef]) -> usize {
    arrays
        .iter()
        .map(|a| match a.data_type() {
            DataType::Utf8 => {
                let o = a.as_string::<i32>().value_offsets();
                (o[a.len()] - o[0]) as usize
            }
            DataType::Binary => {
                let o = a.as_binary::<i32>().value_offsets();
                (o[a.len()] - o[0]) as usize
            }
            DataType::Boolean => a.len().div_ceil(8),
            other => (a.len() - a.null_count()) * other.primitive_width().unwrap_or(8),
        })
        .sum()
}

/// Min, max and null count of an integer or time column made of `arrays`.
/// The chunk's statistics; for text, `dictionary` (the chunk's distinct values, when it is
/// dictionary-encoded) spares a pass over the rows.
fn statistics<'a>(arrays: &[&'a ArrayRef], dictionary: Option<&[&'a [u8]]>) -> Option<Statistics> {
    let nulls = Some(arrays.iter().map(|a| a.null_count() as u64).sum());
    let min_max = |values: &dyn Fn(&ArrayRef) -> Cow<'_, [i64]>| {
        let (mut min, mut max) = (None::<i64>, None::<i64>);
        for a in arrays {
            let v = values(a);
            min = v.iter().copied().chain(min).min();
            max = v.iter().copied().chain(max).max();
        }
        (min, max)
    };
    match arrays.first()?.data_type() {
        DataType::Int64 | DataType::Timestamp(TimeUnit::Microsecond, _) => {
            let (min, max) = min_max(&|a| int64_values(a.as_ref()));
            Some(Statistics::int64(min, max, None, nulls, false))
        }
        DataType::Int8 | DataType::Int32 | DataType::Date32 => {
            let (min, max) = min_max(&|a| Cow::Owned(int32_values(a.as_ref())));
            Some(Statistics::int32(min.map(|v| v as i32), max.map(|v| v as i32), None, nulls, false))
        }
        DataType::Utf8 | DataType::Dictionary(_, _) => {
            let (mut min, mut max) = (None::<&'a [u8]>, None::<&'a [u8]>);
            let mut see = |v: &'a [u8]| {
                min = Some(min.map_or(v, |m| m.min(v)));
                max = Some(max.map_or(v, |m| m.max(v)));
            };
            match dictionary {
                Some(values) => values.iter().for_each(|v| see(v)),
                None => {
                    for a in arrays {
                        match a.data_type() {
                            DataType::Utf8 => a.as_string::<i32>().iter().flatten().for_each(|v| see(v.as_bytes())),
                            DataType::Dictionary(key, value)
                                if **key == DataType::Int32 && **value == DataType::Utf8 =>
                            {
                                let d: &DictionaryArray<Int32Type> = a.as_dictionary();
                                let values = d.values().as_string::<i32>();
                                d.keys().iter().flatten().for_each(|k| see(values.value(k as usize).as_bytes()));
                            }
                            _ => return None,
                        }
                    }
                }
            }
            // Long values would need truncated bounds; such a chunk goes without.
            if min.is_some_and(|v| v.len() > MAX_TEXT_STATISTIC) || max.is_some_and(|v| v.len() > MAX_TEXT_STATISTIC) {
                return None;
            }
            let bytes = |v: Option<&[u8]>| v.map(|v| parquet::data_type::ByteArray::from(v.to_vec()));
            Some(Statistics::byte_array(bytes(min), bytes(max), None, nulls, false))
        }
        _ => None,
    }
}

/// Text statistics are kept for values up to this long (tenant ids and the like).
const MAX_TEXT_STATISTIC: usize = 64;

/// The non-null values of an INT32-stored column, widened.
fn int32_values(a: &dyn Array) -> Vec<i64> {
    fn collect<I: Iterator<Item = Option<i64>>>(it: I, n: usize) -> Vec<i64> {
        let mut v = Vec::with_capacity(n);
        v.extend(it.flatten());
        v
    }
    let n = a.len() - a.null_count();
    match a.data_type() {
        DataType::Int8 => collect(a.as_primitive::<Int8Type>().iter().map(|v| v.map(i64::from)), n),
        DataType::Date32 => collect(a.as_primitive::<Date32Type>().iter().map(|v| v.map(i64::from)), n),
        _ => {
            let p = a.as_primitive::<Int32Type>();
            if p.null_count() == 0 {
                p.values().iter().map(|&v| v as i64).collect()
            } else {
                collect(p.iter().map(|v| v.map(i64::from)), n)
            }
        }
    }
}

/// The non-null values of an INT64-stored column.
fn int64_values(a: &dyn Array) -> Cow<'_, [i64]> {
    let values: &[i64] = match a.data_type() {
        DataType::Timestamp(_, _) => a.as_primitive::<TimestampMicrosecondType>().values(),
        _ => a.as_primitive::<Int64Type>().values(),
    };
    match a.nulls().filter(|n| n.null_count() > 0) {
        None => Cow::Borrowed(values),
        Some(n) => Cow::Owned(valued(n, |i| values[i])),
    }
}

/// `f` of each row with a value, in one allocation of the right size (the index iterator
/// does not know its length, so a `collect` would grow the vector by doubling).
fn valued<T>(nulls: &NullBuffer, f: impl Fn(usize) -> T) -> Vec<T> {
    let mut out = Vec::with_capacity(nulls.len() - nulls.null_count());
    out.extend(nulls.valid_indices().map(f));
    out
}

/// Unsigned LEB128.
#[inline]
pub(crate) fn uleb(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[inline]
fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// Packs `values` (each below `2^width`) LSB first, `width` bits each.
fn bit_pack(values: impl IntoIterator<Item = u64>, width: u32, out: &mut Vec<u8>) {
    if width == 0 {
        return;
    }
    let (mut acc, mut bits) = (0u128, 0u32);
    for v in values {
        acc |= (v as u128) << bits;
        bits += width;
        if bits >= 64 {
            out.extend_from_slice(&(acc as u64).to_le_bytes());
            acc >>= 64;
            bits -= 64;
        }
    }
    let tail = bits.div_ceil(8) as usize;
    out.extend_from_slice(&(acc as u64).to_le_bytes()[..tail]);
}

/// Definition levels of a page of `len` rows (RLE/bit-packed hybrid, width 1).
fn def_levels(nulls: Option<&NullBuffer>, len: usize, out: &mut Vec<u8>) {
    match nulls.filter(|n| n.null_count() > 0) {
        None => {
            // One RLE run of 1s.
            uleb((len as u64) << 1, out);
            out.push(1);
        }
        Some(n) => {
            // The validity bitmap is a bit-packed run as it is (groups of 8, LSB first).
            let groups = len.div_ceil(8);
            uleb(((groups as u64) << 1) | 1, out);
            bitmap_bytes(n.inner(), groups, out);
        }
    }
}

/// The first `bytes` bytes of a bitmap, from its first bit (a view when the bitmap starts on
/// a byte; bits past its length are whatever the buffer holds: readers stop at the page's
/// value count).
fn bitmap_bytes(bits: &BooleanBuffer, bytes: usize, out: &mut Vec<u8>) {
    out.extend_from_slice(&bits.sliced().as_slice()[..bytes]);
}

/// `PLAIN` booleans: the values with a value, bit-packed LSB first.
fn plain_booleans(a: &BooleanArray, out: &mut Vec<u8>) {
    match a.nulls().filter(|n| n.null_count() > 0) {
        None => bitmap_bytes(a.values(), a.len().div_ceil(8), out),
        Some(n) => {
            let (mut byte, mut k) = (0u8, 0);
            for i in n.valid_indices() {
                byte |= (a.values().value(i) as u8) << k;
                k += 1;
                if k == 8 {
                    out.push(byte);
                    (byte, k) = (0, 0);
                }
            }
            if k > 0 {
                out.push(byte);
            }
        }
    }
}

/// `DELTA_BINARY_PACKED`: a header, then blocks of 128 deltas in 4 miniblocks of 32, each
/// block with its minimum delta and each miniblock bit-packed at its own width. `int32`
/// takes deltas in 32-bit wrapping arithmetic, as INT32 columns are read.
fn delta_binary_packed(values: &[i64], int32: bool, out: &mut Vec<u8>) {
    const BLOCK: usize = 128;
    const MINI: usize = 32;
    uleb(BLOCK as u64, out);
    uleb((BLOCK / MINI) as u64, out);
    uleb(values.len() as u64, out);
    uleb(zigzag(values.first().copied().unwrap_or(0)), out);
    if values.len() < 2 {
        return;
    }
    let mask = if int32 { u32::MAX as u64 } else { u64::MAX };
    let mut deltas = [0i64; BLOCK];
    let mut adjusted = [0u64; BLOCK];
    for from in (1..values.len()).step_by(BLOCK) {
        let n = BLOCK.min(values.len() - from);
        let (prev, next) = (&values[from - 1..from - 1 + n], &values[from..from + n]);
        for ((d, &a), &b) in deltas.iter_mut().zip(prev).zip(next) {
            *d = if int32 { (b as i32).wrapping_sub(a as i32) as i64 } else { b.wrapping_sub(a) };
        }
        let min = deltas[..n].iter().copied().min().expect("a block has a delta");
        for (a, &d) in adjusted.iter_mut().zip(&deltas[..n]) {
            *a = (d.wrapping_sub(min) as u64) & mask;
        }
        adjusted[n..].iter_mut().for_each(|a| *a = 0);
        uleb(zigzag(min), out);
        let minis = n.div_ceil(MINI);
        let mut widths = [0u8; BLOCK / MINI];
        for (m, w) in widths.iter_mut().enumerate().take(minis) {
            let or = adjusted[m * MINI..(m + 1) * MINI].iter().fold(0, |acc, &v| acc | v);
            *w = (64 - or.leading_zeros()) as u8;
        }
        out.extend_from_slice(&widths);
        for (m, &w) in widths.iter().enumerate().take(minis) {
            bit_pack(adjusted[m * MINI..(m + 1) * MINI].iter().copied(), w as u32, out);
        }
    }
}

/// `BYTE_STREAM_SPLIT` doubles: byte k of every value with a value, for k = 0..8.
fn byte_stream_split(a: &dyn Array, out: &mut Vec<u8>) {
    let p = a.as_primitive::<Float64Type>();
    let values: Cow<'_, [f64]> = match p.nulls().filter(|n| n.null_count() > 0) {
        None => Cow::Borrowed(p.values()),
        Some(n) => Cow::Owned(valued(n, |i| p.values()[i])),
    };
    let n = values.len();
    if n == 0 {
        return;
    }
    let at = out.len();
    out.resize(at + 8 * n, 0);
    // One stream at a time, each a shift and a narrowing of every value (vectorised), not
    // eight scattered byte stores per value.
    for (k, stream) in out[at..].chunks_exact_mut(n).enumerate() {
        for (b, v) in stream.iter_mut().zip(values.iter()) {
            *b = (v.to_bits() >> (8 * k)) as u8;
        }
    }
}

/// `DELTA_LENGTH_BYTE_ARRAY`: the lengths (delta-packed), then the bytes, of the values
/// (text, a text dictionary's values, or binary).
fn delta_length_text(a: &dyn Array, out: &mut Vec<u8>) {
    let strings: ArrayRef;
    let a = match a.data_type() {
        DataType::Dictionary(_, _) => {
            strings = arrow::compute::cast(a, &DataType::Utf8).expect("a text dictionary casts to text");
            strings.as_ref()
        }
        _ => a,
    };
    let (offsets, data) = match a.data_type() {
        DataType::Binary => (a.as_binary::<i32>().value_offsets(), a.as_binary::<i32>().value_data()),
        _ => (a.as_string::<i32>().value_offsets(), a.as_string::<i32>().value_data()),
    };
    match a.nulls().filter(|n| n.null_count() > 0) {
        None => {
            let lengths: Vec<i64> = offsets.windows(2).map(|w| (w[1] - w[0]) as i64).collect();
            delta_binary_packed(&lengths, true, out);
            out.extend_from_slice(&data[offsets[0] as usize..offsets[a.len()] as usize]);
        }
        Some(n) => {
            let lengths = valued(n, |i| (offsets[i + 1] - offsets[i]) as i64);
            delta_binary_packed(&lengths, true, out);
            for i in n.valid_indices() {
                out.extend_from_slice(&data[offsets[i] as usize..offsets[i + 1] as usize]);
            }
        }
    }
}

/// `RLE_DICTIONARY` indices: their bit width, then one bit-packed run.
fn rle_dictionary_indices(indices: &[u32], dictionary_len: usize, out: &mut Vec<u8>) {
    let width = (32 - (dictionary_len.saturating_sub(1) as u32).leading_zeros()).max(1);
    out.push(width as u8);
    if indices.is_empty() {
        return;
    }
    let groups = indices.len().div_ceil(8);
    uleb(((groups as u64) << 1) | 1, out);
    let padding = std::iter::repeat_n(0, groups * 8 - indices.len());
    bit_pack(indices.iter().map(|&i| i as u64).chain(padding), width, out);
}

/// The dictionary of a text column chunk made of `arrays` (text, or dictionary arrays of
/// text): the distinct values in order of first use (of a dictionary array, only the values
/// its keys use: its values may be many more than a chunk's, every name a process has seen,
/// say); `None` when it would pass [`MAX_DICTIONARY_BYTES`].
fn dictionary_of<'a>(arrays: &[&'a ArrayRef]) -> Option<Dictionary<'a>> {
    let mut d = DictionaryBuilder::default();
    d.indices.reserve(arrays.iter().map(|a| a.len() - a.null_count()).sum());
    for array in arrays {
        if let DataType::Dictionary(_, _) = array.data_type() {
            // Each distinct key is looked up once; its rows reuse the index.
            let a: &'a DictionaryArray<Int32Type> = array.as_dictionary::<Int32Type>();
            let values = a.values().as_string::<i32>();
            if values.null_count() > 0 {
                return None;
            }
            let mut slot = vec![u32::MAX; values.len()];
            let mut index = |k: i32, d: &mut DictionaryBuilder<'a>| -> Option<u32> {
                let s = &mut slot[k as usize];
                if *s == u32::MAX {
                    *s = d.index(values.value(k as usize).as_bytes())?;
                }
                Some(*s)
            };
            let keys = a.keys();
            match keys.nulls().filter(|n| n.null_count() > 0) {
                None => {
                    for &k in keys.values() {
                        let i = index(k, &mut d)?;
                        d.indices.push(i);
                    }
                }
                Some(n) => {
                    for r in n.valid_indices() {
                        let i = index(keys.values()[r], &mut d)?;
                        d.indices.push(i);
                    }
                }
            }
        } else {
            for v in array.as_string::<i32>().iter().flatten() {
                let i = d.index(v.as_bytes())?;
                d.indices.push(i);
            }
        }
    }
    Some(Dictionary { values: d.values, indices: d.indices })
}

/// Distinct text values and each row's index, as [`dictionary_of`] finds them.
#[derive(Default)]
struct DictionaryBuilder<'a> {
    /// Values of up to 16 bytes (names, enums: nearly every value), keyed by their bytes as
    /// two words and a length, hashed and compared as integers.
    short: hashbrown::HashMap<(u64, u64, usize), u32, foldhash::fast::FixedState>,
    /// Longer ones, by their bytes.
    long: hashbrown::HashMap<&'a [u8], u32, foldhash::fast::FixedState>,
    values: Vec<&'a [u8]>,
    bytes: usize,
    indices: Vec<u32>,
}

impl<'a> DictionaryBuilder<'a> {
    /// The index of `v`, added if new; `None` once the values pass
    /// [`MAX_DICTIONARY_BYTES`].
    #[inline]
    fn index(&mut self, v: &'a [u8]) -> Option<u32> {
        let next = self.values.len() as u32;
        let i = if v.len() <= 16 {
            let mut words = [0u8; 16];
            words[..v.len()].copy_from_slice(v);
            let (a, b) = words.split_at(8);
            let key = (
                u64::from_le_bytes(a.try_into().expect("8 bytes")),
                u64::from_le_bytes(b.try_into().expect("8 bytes")),
                v.len(),
            );
            *self.short.entry(key).or_insert(next)
        } else {
            *self.long.entry(v).or_insert(next)
        };
        if i == next {
            self.bytes += v.len();
            if self.bytes > MAX_DICTIONARY_BYTES {
                return None;
            }
            self.values.push(v);
        }
        Some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{
        BinaryArray, BooleanArray, Date32Array, Float64Array, Int64Array, Int8Array, StringArray,
        TimestampMicrosecondArray,
    };
    use arrow::datatypes::{Field, Schema};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::basic::ZstdLevel;
    use proptest::prelude::*;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("name", DataType::Utf8, true),
            Field::new("at", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), true),
            Field::new("n", DataType::Int64, true),
            Field::new("small", DataType::Int8, true),
            Field::new("day", DataType::Date32, false),
            Field::new("x", DataType::Float64, true),
            Field::new("flag", DataType::Boolean, true),
            Field::new("text", DataType::Utf8, true),
            Field::new("raw", DataType::Binary, true),
        ]))
    }

    fn props(codec: Compression) -> WriterProperties {
        let mut b = WriterProperties::builder()
            .set_compression(codec)
            .set_dictionary_enabled(false)
            .set_statistics_enabled(EnabledStatistics::None)
            .set_column_dictionary_enabled("name".into(), true)
            // Free text with a dictionary: values of up to 48 bytes, keyed short and long.
            .set_column_dictionary_enabled("text".into(), true)
            .set_column_statistics_enabled("at".into(), EnabledStatistics::Chunk);
        for (c, e) in [
            ("id", Encoding::DELTA_LENGTH_BYTE_ARRAY),
            ("raw", Encoding::DELTA_LENGTH_BYTE_ARRAY),
            ("at", Encoding::DELTA_BINARY_PACKED),
            ("n", Encoding::DELTA_BINARY_PACKED),
            ("small", Encoding::DELTA_BINARY_PACKED),
            ("day", Encoding::DELTA_BINARY_PACKED),
            ("x", Encoding::BYTE_STREAM_SPLIT),
        ] {
            b = b.set_column_encoding(c.into(), e);
        }
        b.build()
    }

    #[derive(Debug, Clone)]
    struct Row {
        id: String,
        name: Option<u8>,
        at: Option<i64>,
        n: Option<i64>,
        small: Option<i8>,
        day: i32,
        x: Option<f64>,
        flag: Option<bool>,
        text: Option<String>,
        raw: Option<Vec<u8>>,
    }

    fn row() -> impl Strategy<Value = Row> {
        (
            "[a-f0-9-]{0,40}",
            proptest::option::of(0u8..7),
            proptest::option::of(prop_oneof![any::<i64>(), 1_700_000_000_000_000i64..1_800_000_000_000_000]),
            proptest::option::of(prop_oneof![any::<i64>(), -5i64..5]),
            proptest::option::of(any::<i8>()),
            prop_oneof![any::<i32>(), 19_000i32..21_000],
            proptest::option::of(any::<f64>()),
            proptest::option::of(any::<bool>()),
            proptest::option::of("\\PC{0,12}"),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..16)),
        )
            .prop_map(|(id, name, at, n, small, day, x, flag, text, raw)| Row {
                id,
                name,
                at,
                n,
                small,
                day,
                x,
                flag,
                text,
                raw,
            })
    }

    fn batch(rows: &[Row]) -> RecordBatch {
        let names = ["", "t0001", "queue-sales", "agent 7", "é", "q", "x"];
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.id.clone()))),
            Arc::new(StringArray::from_iter(rows.iter().map(|r| r.name.map(|i| names[i as usize])))),
            Arc::new(TimestampMicrosecondArray::from_iter(rows.iter().map(|r| r.at)).with_timezone("UTC")),
            Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.n))),
            Arc::new(Int8Array::from_iter(rows.iter().map(|r| r.small))),
            Arc::new(Date32Array::from_iter_values(rows.iter().map(|r| r.day))),
            Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.x))),
            Arc::new(BooleanArray::from_iter(rows.iter().map(|r| r.flag))),
            Arc::new(StringArray::from_iter(rows.iter().map(|r| r.text.clone()))),
            Arc::new(BinaryArray::from_iter(rows.iter().map(|r| r.raw.as_deref()))),
        ];
        RecordBatch::try_new(schema(), columns).unwrap()
    }

    fn read(bytes: Vec<u8>) -> Vec<RecordBatch> {
        let reader = ParquetRecordBatchReaderBuilder::try_new(Bytes::from(bytes))
            .unwrap()
            .with_batch_size(1 << 20)
            .build()
            .unwrap();
        reader.map(|b| b.unwrap()).collect()
    }

    /// Compares floats by their bits (NaN payloads and signed zeros included).
    fn same(a: &RecordBatch, b: &RecordBatch) -> bool {
        a.schema() == b.schema()
            && a.columns().iter().zip(b.columns()).all(|(x, y)| match x.data_type() {
                DataType::Float64 => {
                    let (x, y) = (x.as_primitive::<Float64Type>(), y.as_primitive::<Float64Type>());
                    // Row by row: an empty slice may keep an empty null buffer a reader has not.
                    x.len() == y.len()
                        && (0..x.len()).all(|i| {
                            x.is_null(i) == y.is_null(i)
                                && (x.is_null(i) || x.value(i).to_bits() == y.value(i).to_bits())
                        })
                }
                _ => x == y,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Any batch of the supported types, sliced anywhere and split into row groups (the
        /// second of two batches), reads back equal through the parquet crate's reader,
        /// with every codec.
        #[test]
        fn files_read_back_equal(
            rows in proptest::collection::vec(row(), 0..300),
            cut in 0usize..300,
            cut2 in 0usize..300,
            skip in 0usize..9,
            codec in prop_oneof![
                Just(Compression::UNCOMPRESSED),
                Just(Compression::SNAPPY),
                Just(Compression::ZSTD(ZstdLevel::try_new(1).unwrap())),
            ],
        ) {
            let whole = batch(&rows);
            let skip = skip.min(whole.num_rows());
            let whole = whole.slice(skip, whole.num_rows() - skip);
            let n = whole.num_rows();
            let cut = cut.min(n);
            let cut2 = cut2.clamp(cut, n);
            let mut out = Vec::new();
            let mut w = FlatWriter::try_new(&mut out, schema(), props(codec)).unwrap();
            w.write(&whole.slice(0, cut)).unwrap();
            w.write_batches(&[whole.slice(cut, cut2 - cut), whole.slice(cut2, n - cut2)]).unwrap();
            w.close().unwrap();
            let back = read(out);
            let back = arrow::compute::concat_batches(&schema(), &back).unwrap();
            prop_assert!(same(&back, &whole), "{back:?}\n!=\n{whole:?}");
        }
    }

    #[test]
    fn pages_split_and_statistics_hold_the_chunk_min_and_max() {
        let rows: Vec<Row> = (0..(2 * PAGE_ROWS + 17) as i64)
            .map(|i| Row {
                id: format!("{i:036}"),
                name: Some((i % 7) as u8),
                at: (i % 5 != 0).then_some(1_700_000_000_000_000 + i * 1_000),
                n: Some(i * i),
                small: Some((i % 100) as i8),
                day: 20_000 + (i / 1000) as i32,
                x: Some(i as f64 / 3.0),
                flag: (i % 3 != 0).then_some(i % 2 == 0),
                text: (i % 4 == 0).then(|| format!("note {i}")),
                raw: (i % 6 != 0).then(|| i.to_le_bytes()[..(i % 9) as usize].to_vec()),
            })
            .collect();
        let b = batch(&rows);
        let mut out = Vec::new();
        let mut w = FlatWriter::try_new(&mut out, schema(), props(Compression::SNAPPY)).unwrap();
        w.write(&b).unwrap();
        let meta = w.close().unwrap();
        let at = meta.row_group(0).column(2);
        let s = at.statistics().unwrap();
        assert_eq!(s.null_count_opt(), Some(((2 * PAGE_ROWS + 17) / 5 + 1) as u64));
        match s {
            Statistics::Int64(v) => {
                assert_eq!(v.min_opt(), Some(&(1_700_000_000_000_000 + 1_000)));
                assert_eq!(v.max_opt(), Some(&(1_700_000_000_000_000 + (2 * PAGE_ROWS as i64 + 16) * 1_000)));
            }
            other => panic!("{other:?}"),
        }
        assert!(meta.row_group(0).column(1).dictionary_page_offset().is_some());
        let back = arrow::compute::concat_batches(&schema(), &read(out)).unwrap();
        assert!(same(&back, &b));
    }

    /// A batch of one dictionary column of text, "name".
    fn dictionary_batch(keys: Vec<Option<i32>>, values: Vec<&str>) -> RecordBatch {
        let d: ArrayRef =
            Arc::new(DictionaryArray::<Int32Type>::try_new(keys.into(), Arc::new(StringArray::from(values))).unwrap());
        RecordBatch::try_new(Arc::new(Schema::new(vec![Field::new("name", d.data_type().clone(), true)])), vec![d])
            .unwrap()
    }

    /// `batches` written as one row group of a file with one dictionary-enabled text
    /// column, "name": the number of values in its dictionary page, and its rows read back.
    fn dictionary_file(batches: &[RecordBatch]) -> (u32, StringArray) {
        let schema = Arc::new(Schema::new(vec![Field::new("name", DataType::Utf8, true)]));
        let mut out = Vec::new();
        let props = WriterProperties::builder().set_dictionary_enabled(true).build();
        let mut w = FlatWriter::try_new(&mut out, schema.clone(), props).unwrap();
        w.write_batches(batches).unwrap();
        assert_eq!(w.close().unwrap().num_row_groups(), 1);
        let file = parquet::file::reader::SerializedFileReader::new(Bytes::from(out.clone())).unwrap();
        let mut pages =
            parquet::file::reader::FileReader::get_row_group(&file, 0).unwrap().get_column_page_reader(0).unwrap();
        let values = match pages.get_next_page().unwrap() {
            Some(Page::DictionaryPage { num_values, .. }) => num_values,
            other => panic!("{other:?}"),
        };
        let back = arrow::compute::concat_batches(&schema, &read(out)).unwrap();
        (values, back.column(0).as_string::<i32>().clone())
    }

    #[test]
    fn dictionary_arrays_write_their_keys() {
        // Values no key uses stay out of the file's dictionary.
        let b = dictionary_batch(vec![Some(2), None, Some(0), Some(2), Some(1)], vec!["a", "bb", "ccc", "unused", "x"]);
        let (values, back) = dictionary_file(&[b]);
        assert_eq!(values, 3);
        assert_eq!(back, StringArray::from(vec![Some("ccc"), None, Some("a"), Some("ccc"), Some("bb")]));
    }

    #[test]
    fn batches_of_one_row_group_share_its_dictionary() {
        // Two dictionary arrays with different values, then plain text: one dictionary of
        // the three distinct values used.
        let long = "a longer value than sixteen bytes";
        let a = dictionary_batch(vec![Some(1), None, Some(0)], vec!["x", "y", "never"]);
        let b = dictionary_batch(vec![Some(0), Some(0), Some(1)], vec!["y", long]);
        let text = Arc::new(Schema::new(vec![Field::new("name", DataType::Utf8, true)]));
        let c = RecordBatch::try_new(text, vec![Arc::new(StringArray::from(vec![Some("x"), None]))]).unwrap();
        let (values, back) = dictionary_file(&[a, b, c]);
        assert_eq!(values, 3);
        let expected =
            StringArray::from(vec![Some("y"), None, Some("x"), Some("y"), Some("y"), Some(long), Some("x"), None]);
        assert_eq!(back, expected);
    }

    #[test]
    fn floats_zstd_barely_shrinks_fall_back_to_snappy_for_the_file() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("noise", DataType::Float64, false),
            Field::new("steps", DataType::Float64, false),
        ]));
        // Exponents and mantissas of a hash (splitmix64's finaliser) are near random (and
        // never NaN: exponents 0x200..0x3FF); steps of a quarter repeat.
        let noise: Float64Array = (0..3 * PAGE_ROWS as u64)
            .map(|i| {
                let mut h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
                h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                h ^= h >> 31;
                Some(f64::from_bits((h >> 12) | ((0x200 + (h & 0x1FF)) << 52)))
            })
            .collect();
        let steps: Float64Array = (0..3 * PAGE_ROWS).map(|i| Some((i % 40) as f64 / 4.0)).collect();
        let b = RecordBatch::try_new(schema.clone(), vec![Arc::new(noise), Arc::new(steps)]).unwrap();
        let mut out = Vec::new();
        let mut w =
            FlatWriter::try_new(&mut out, schema.clone(), props(Compression::ZSTD(ZstdLevel::try_new(1).unwrap())))
                .unwrap();
        w.write(&b.slice(0, PAGE_ROWS + 5)).unwrap();
        w.write(&b.slice(PAGE_ROWS + 5, 2 * PAGE_ROWS - 5)).unwrap();
        let meta = w.close().unwrap();
        for g in 0..2 {
            assert_eq!(meta.row_group(g).column(0).compression(), Compression::SNAPPY, "row group {g}");
            assert!(matches!(meta.row_group(g).column(1).compression(), Compression::ZSTD(_)), "row group {g}");
        }
        let back = arrow::compute::concat_batches(&schema, &read(out)).unwrap();
        assert_eq!(back, b);
    }

    #[test]
    fn chunks_of_a_few_kilobytes_are_snappy_larger_ones_zstd() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("x", DataType::Float64, true),
        ]));
        let zstd = Compression::ZSTD(ZstdLevel::try_new(1).unwrap());
        // 36-byte ids and quarter steps (which zstd shrinks well): 100 rows are 3.6 KB of
        // ids and 400 B of floats (half null), 2,000 rows twenty times that.
        let batch = |rows: usize| {
            let ids: StringArray =
                (0..rows).map(|i| Some(format!("{i:08x}-0000-4000-8000-{:012x}", i * 7919))).collect();
            let x: Float64Array = (0..rows).map(|i| (i % 2 == 0).then_some((i % 40) as f64 / 4.0)).collect();
            RecordBatch::try_new(schema.clone(), vec![Arc::new(ids), Arc::new(x)]).unwrap()
        };
        for (rows, expected) in [(100, Compression::SNAPPY), (2_000, zstd)] {
            let b = batch(rows);
            assert_eq!(value_bytes(&[b.column(0)]), rows * 36);
            let mut out = Vec::new();
            let mut w = FlatWriter::try_new(&mut out, schema.clone(), props(zstd)).unwrap();
            w.write(&b).unwrap();
            // A small row group after a large one is still Snappy: the choice is per chunk.
            w.write(&batch(50)).unwrap();
            let meta = w.close().unwrap();
            for c in 0..2 {
                assert_eq!(meta.row_group(0).column(c).compression(), expected, "{rows} rows, column {c}");
                assert_eq!(meta.row_group(1).column(c).compression(), Compression::SNAPPY, "50 rows, column {c}");
            }
            let back = arrow::compute::concat_batches(&schema, &read(out)).unwrap();
            assert_eq!(back, arrow::compute::concat_batches(&schema, &[b, batch(50)]).unwrap());
        }
    }

    #[test]
    fn unsupported_columns_are_errors() {
        let schema = Arc::new(Schema::new(vec![Field::new("u", DataType::UInt16, true)]));
        let e = FlatWriter::try_new(Vec::new(), schema, WriterProperties::builder().build()).err().unwrap();
        assert!(e.to_string().contains("type UInt16"), "{e}");
    }
}
