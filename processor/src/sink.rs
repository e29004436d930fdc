//! Delta tables under one data directory: `DIR/<table>/` (Parquet files + `_delta_log/`).
//!
//! `DIR` is a local path or a URL (`file://`, `memory://`). A table is replaced by writing
//! new Parquet files, then one Delta commit that adds them and removes the previous ones
//! ([`TableStore::overwrite_streaming`], [`TableStore::replace`]): readers see the
//! previous version until the commit lands, then the new one; a failed run leaves the
//! previous version readable (its stray files are never referenced).
//!
//! The derived tables are Delta-partitioned by log partition: a processor replaces only the
//! files of the partitions it owns ([`TableStore::overwrite_partitions`]), so processors of
//! one consumer group commit to the same tables side by side. Their commits declare what
//! they read (`"partition" IN (…)`), so Delta's conflict check lets commits on other
//! partitions through; a commit that loses a race on its own partitions (a rebalance in
//! flight) is rebuilt on the newer snapshot and retried — unless the winner recorded
//! offsets of the same log partitions (`txn` actions of the same app ids): then the rows
//! may be in the table already, and the commit fails ([`Error::OffsetsTaken`]) instead of
//! landing them twice.
//!
//! On local disk, a commit's data files (and their directories) are fsynced before the
//! commit that references them, and the commit's log entry after it lands: a power cut
//! never leaves a committed version pointing at missing bytes.

use std::sync::Arc;

use bytes::Bytes;
use deltalake::kernel::scalars::ScalarExt;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Add};
use deltalake::logstore::object_store::{ObjectStoreExt, PutPayload};
use deltalake::parquet::basic::{Compression, Encoding, ZstdLevel};
use deltalake::parquet::file::metadata::ParquetMetaData;
use deltalake::parquet::file::properties::{EnabledStatistics, WriterProperties};
use deltalake::parquet::file::statistics::Statistics;
use deltalake::parquet::schema::types::ColumnPath;
use deltalake::protocol::{ColumnCountStat, ColumnValueStat, DeltaOperation, SaveMode, Stats};
use deltalake::{DeltaTable, ObjectStore, ObjectStoreError};
use url::Url;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Schema, SchemaRef, TimeUnit};
use arrow::datatypes::{Date32Type, Int32Type};
use ccstream_schemas::{
    is_low_cardinality, is_prune_key, partition_columns, table_schema, without_dictionaries, PARTITION_COLUMN,
    SEALED_COLUMN,
};
use delta_kernel::expressions::Scalar;
use indexmap::IndexMap;

use crate::flat_parquet::{FlatError, FlatWriter};
use crate::{Error, Result};

/// A table file's row groups hold at most this many rows (the parquet crate's default).
const ROW_GROUP_ROWS: usize = 1 << 20;

/// A table's log gets a checkpoint every this many versions (Delta's default is 100).
/// Opening a table reads its last checkpoint and replays every log entry after it, and a
/// processor opens its tables at every commit (every second): each entry replayed costs
/// about as much as a checkpoint's worth of files, so short runs between checkpoints keep
/// commits cheap (`examples/append_commits.rs`: 600 appends, the last 100 took 72 ms each
/// with 10, 120 ms with 100, and 685 ms without checkpoints).
const CHECKPOINT_INTERVAL: u64 = 10;

/// Log entries older than this go (up to a checkpoint) at the next commit. Every commit
/// lists the whole log to find them, and opening a table walks the log's directory, so for
/// a table committed every second the log must stay short: an hour is ~4,000 entries where
/// Delta's default (30 days) would let it reach millions. Nothing of ccstream reads old
/// versions: revisions are rows, and the offsets committed with the tables (application
/// transactions) are carried in every checkpoint. Data files are never removed by this.
const LOG_RETENTION: &str = "interval 1 hours";

/// Files removed from a table (by a compaction or an overwrite) are remembered in its
/// checkpoints this long ("tombstones", for `VACUUM` and time travel), and a checkpoint is read
/// at every open: Delta's default, a week, would make every commit read a week of removed
/// files. One hour, as the log.
const REMOVED_FILE_RETENTION: &str = "interval 1 hours";

/// Runs of rows shorter than this are gathered (copied) into row groups of at least this
/// many rows; longer runs become row groups as they are.
const MIN_GROUP_ROWS: usize = 64 * 1024;

type FlatResult<T> = std::result::Result<T, FlatError>;

/// Parquet settings of table `name`'s files.
pub fn writer_properties(name: &str) -> WriterProperties {
    // Dictionary pages only where values repeat (tenants, queues, agents, enums): for
    // unique ids a dictionary is pure cost. Min/max statistics (chunk and page) for times:
    // rows come roughly in time order, so times prune. Chunk statistics for the tenant
    // (`is_prune_key`): every query of a tenant-scoped principal filters on it,
    // `interval_partials` is written in tenant order, and the bounds come from the chunk's
    // dictionary, not from its rows. Nothing else: ids are random and measures (waits,
    // counts, media quality) spread, so their min/max would prune nothing, and computing
    // it compares every value.
    //
    // Compression: zstd (level 1) for unique text and for floats, whose bytes it entropy-codes
    // (hex ids to about half, split floats' mantissa bytes well below raw); Snappy for the
    // rest — delta-packed integers and times, booleans, dictionary indices — whose pages are
    // already dense: there zstd saved about 1 % of a table for a third of its time (a 1e6
    // `call_facts`: 4.62 G instructions to encode with zstd everywhere, 4.34 G like this;
    // 72.5 MB against 73.3 MB).
    let zstd = Compression::ZSTD(ZstdLevel::try_new(1).expect("level 1 is valid"));
    let mut props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_dictionary_enabled(false)
        .set_statistics_enabled(EnabledStatistics::None);
    // Integers and timestamps as deltas (call rows come roughly in time order), floats
    // split by byte: both shrink the files, and writing them is what costs. Unique text
    // (ids, payloads) with its lengths apart from its bytes: interleaved, the 4-byte
    // lengths of plain encoding give zstd short matches that cost more to find than they
    // save (a 1e5-call replay runs 4.9 % fewer instructions, a backfill 7.9 %, and the
    // files are smaller).
    if let Some(schema) = table_schema(name) {
        for field in schema.fields() {
            let path = || ColumnPath::from(field.name().as_str());
            if is_low_cardinality(field.name()) {
                props = props.set_column_dictionary_enabled(path(), true);
            }
            if matches!(field.data_type(), DataType::Timestamp(_, _) | DataType::Date32) {
                props = props.set_column_statistics_enabled(path(), EnabledStatistics::Page);
            }
            if is_prune_key(field.name()) {
                props = props.set_column_statistics_enabled(path(), EnabledStatistics::Chunk);
            }
            let encoding = match field.data_type() {
                DataType::Int32 | DataType::Int64 | DataType::Date32 | DataType::Timestamp(_, _) => {
                    Encoding::DELTA_BINARY_PACKED
                }
                DataType::Float64 => {
                    props = props.set_column_compression(path(), zstd);
                    Encoding::BYTE_STREAM_SPLIT
                }
                DataType::Utf8 | DataType::Binary if !is_low_cardinality(field.name()) => {
                    props = props.set_column_compression(path(), zstd);
                    Encoding::DELTA_LENGTH_BYTE_ARRAY
                }
                _ => continue,
            };
            props = props.set_column_encoding(path(), encoding);
        }
    }
    props.build()
}

/// How a Delta error on table `name` at `url` is reported.
fn table_error<'a>(name: &'a str, url: &'a Url) -> impl Fn(deltalake::DeltaTableError) -> Error + Copy + 'a {
    move |source| Error::WriteTable { table: name.to_string(), location: url.to_string(), source: Box::new(source) }
}

/// The data directory that holds ccstream's tables.
#[derive(Debug, Clone)]
pub struct TableStore {
    root: Url,
}

impl TableStore {
    /// Opens (and for a local path, creates) the data directory `location`.
    pub fn new(location: &str) -> Result<Self> {
        let root = deltalake::ensure_table_uri(location)
            .map_err(|e| Error::Location { location: location.to_string(), reason: e.to_string() })?;
        Ok(TableStore { root })
    }

    pub fn root(&self) -> &Url {
        &self.root
    }

    /// The URL of table `name`.
    pub fn table_url(&self, name: &str) -> Result<Url> {
        let mut root = self.root.clone();
        if !root.path().ends_with('/') {
            let p = format!("{}/", root.path());
            root.set_path(&p);
        }
        let url = root
            .join(&format!("{name}/"))
            .map_err(|e| Error::Location { location: format!("{}{name}", self.root), reason: e.to_string() })?;
        if url.scheme() == "file" {
            if let Ok(path) = url.to_file_path() {
                std::fs::create_dir_all(&path)
                    .map_err(|e| Error::Location { location: path.display().to_string(), reason: e.to_string() })?;
            }
        }
        Ok(url)
    }

    /// Replaces the whole content of table `name` with `batch`, in one commit, writing it
    /// in slices of `slice_rows` (no second copy of the table). Returns the rows written and
    /// the table's new version.
    pub async fn replace(&self, name: &str, batch: RecordBatch, slice_rows: usize) -> Result<(u64, u64)> {
        let mut w = self.overwrite_streaming(name, batch.schema(), usize::MAX).await?;
        let mut at = 0;
        while at < batch.num_rows() {
            let n = slice_rows.max(1).min(batch.num_rows() - at);
            w.write(batch.slice(at, n)).await?;
            at += n;
        }
        w.commit().await
    }

    /// Starts replacing the whole content of table `name` with batches written one at a
    /// time ([`Overwrite::write`]); nothing is visible until [`Overwrite::commit`], which
    /// is one Delta commit. Memory stays bounded: files are finished every
    /// `flush_rows` rows.
    pub async fn overwrite_streaming(&self, name: &str, schema: SchemaRef, flush_rows: usize) -> Result<Overwrite> {
        self.start_write(name, schema, flush_rows, Scope::All).await
    }

    /// Like [`TableStore::overwrite_streaming`], but replaces only the files of the given log
    /// partitions (the Delta partition column [`PARTITION_COLUMN`]); other partitions'
    /// files stay as they are.
    pub async fn overwrite_partitions(
        &self,
        name: &str,
        schema: SchemaRef,
        partitions: &[i32],
        flush_rows: usize,
    ) -> Result<Overwrite> {
        self.start_write(name, schema, flush_rows, Scope::Partitions(partitions.to_vec())).await
    }

    /// Like [`TableStore::overwrite_streaming`], but the commit adds the new files to what the
    /// table holds instead of replacing it.
    pub async fn append_streaming(&self, name: &str, schema: SchemaRef, flush_rows: usize) -> Result<Overwrite> {
        self.start_write(name, schema, flush_rows, Scope::Append).await
    }

    /// Rewrites the files of table `name`'s Delta partition `values` (each a partition
    /// column and its value as Delta writes it, e.g. `("day", "2026-01-04")`) into as few
    /// files as hold them, in one commit that adds and removes files without changing a row
    /// (`dataChange` false). Returns the files removed and added (none for a partition of
    /// one file, or a table that does not exist yet).
    ///
    /// For tables that only take appends (`events`): a processor adds a file per partition
    /// and commit, and opening a table costs in proportion to its files. Another writer
    /// appending meanwhile does not conflict; another compaction of the same files does, and
    /// one of the two fails (nothing is lost: the files stay as they were).
    pub async fn compact(&self, name: &str, values: &[(&str, &str)]) -> Result<(u64, u64)> {
        let url = self.table_url(name)?;
        let wrap = table_error(name, &url);
        let table = DeltaTable::try_from_url(url.clone()).await.map_err(wrap)?;
        if table.version().is_none() {
            return Ok((0, 0));
        }
        let filters: Vec<deltalake::FilterLiteral<'_>> =
            values.iter().map(|&(c, v)| (c, deltalake::FilterOp::Eq, deltalake::FilterValue::Scalar(v))).collect();
        let (_, metrics) = table
            .optimize()
            .with_filters(&filters)
            .with_writer_properties(writer_properties(name))
            .with_commit_properties(CommitProperties::default())
            .with_max_concurrent_tasks(1)
            .await
            .map_err(wrap)?;
        Ok((metrics.num_files_removed, metrics.num_files_added))
    }

    /// Table `name`'s rows of log partitions `partitions` (all rows when `partitions` is
    /// `None`), with the columns of its schema in schema order. Empty when the table does not
    /// exist yet.
    pub async fn read(&self, name: &str, partitions: Option<&[i32]>) -> Result<Vec<RecordBatch>> {
        let filter = partitions.map(|p| format!("\"{PARTITION_COLUMN}\" IN ({})", in_list(p)));
        self.read_where(name, filter.as_deref(), false).await
    }

    /// Table `name`'s rows that match the SQL condition `filter` (all rows for `None`), with
    /// the columns of its schema in schema order, plus, with `with_file`, a last column
    /// [`FILE_COLUMN`] naming the file that holds the row (as [`Overwrite::remove_files`]
    /// takes it). Empty when the table does not exist yet.
    pub async fn read_where(&self, name: &str, filter: Option<&str>, with_file: bool) -> Result<Vec<RecordBatch>> {
        use deltalake::datafusion::prelude::SessionContext;
        let url = self.table_url(name)?;
        let wrap = table_error(name, &url);
        let mut table = DeltaTable::try_from_url(url.clone()).await.map_err(wrap)?;
        if table.load().await.is_err() || table.version().is_none() {
            return Ok(Vec::new());
        }
        let schema = table_schema(name).ok_or_else(|| Error::Location {
            location: url.to_string(),
            reason: format!("{name} is not a table of ccstream"),
        })?;
        let ctx = SessionContext::new();
        table.update_datafusion_session(&ctx.state()).map_err(wrap)?;
        let provider = if with_file {
            table.table_provider().with_file_column(FILE_COLUMN).await
        } else {
            table.table_provider().await
        };
        ctx.register_table("t", provider?)?;
        let mut columns: Vec<String> = schema.fields().iter().map(|f| format!("\"{}\"", f.name())).collect();
        let mut fields: Vec<arrow::datatypes::FieldRef> = schema.fields().iter().cloned().collect();
        if with_file {
            columns.push(format!("\"{FILE_COLUMN}\""));
            fields.push(std::sync::Arc::new(arrow::datatypes::Field::new(FILE_COLUMN, DataType::Utf8, false)));
        }
        let out_schema = std::sync::Arc::new(arrow::datatypes::Schema::new(fields));
        let filter = filter.map(|f| format!(" WHERE {f}")).unwrap_or_default();
        let batches = ctx.sql(&format!("SELECT {} FROM t{filter}", columns.join(", "))).await?.collect().await?;
        let mut out = Vec::with_capacity(batches.len());
        for b in batches {
            let cols = b
                .columns()
                .iter()
                .zip(out_schema.fields())
                .map(|(c, f)| arrow::compute::cast(c, f.data_type()))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            out.push(RecordBatch::try_new(out_schema.clone(), cols)?);
        }
        Ok(out)
    }

    /// The versions of the application transactions `app_ids` recorded in table `name`
    /// (`None` for an id never committed, or a table that does not exist yet).
    pub async fn transaction_versions(&self, name: &str, app_ids: &[String]) -> Result<Vec<Option<i64>>> {
        let url = self.table_url(name)?;
        let wrap = table_error(name, &url);
        let mut table = DeltaTable::try_from_url(url.clone()).await.map_err(wrap)?;
        if table.load().await.is_err() || table.version().is_none() {
            return Ok(vec![None; app_ids.len()]);
        }
        let snapshot = table.snapshot().map_err(wrap)?;
        let mut out = Vec::with_capacity(app_ids.len());
        for id in app_ids {
            out.push(snapshot.transaction_version(table.log_store().as_ref(), id).await.map_err(wrap)?);
        }
        Ok(out)
    }

    async fn start_write(&self, name: &str, schema: SchemaRef, flush_rows: usize, scope: Scope) -> Result<Overwrite> {
        let url = self.table_url(name)?;
        let wrap = table_error(name, &url);
        let mut table = DeltaTable::try_from_url(url.clone()).await.map_err(wrap)?;
        let parts: Vec<String> = partition_columns(name).iter().map(|s| s.to_string()).collect();
        if table.version().is_none() {
            // A new table: commit its schema (no files) first, so the writer has metadata.
            table = table
                .write(vec![RecordBatch::new_empty(schema.clone())])
                .with_save_mode(SaveMode::Overwrite)
                .with_table_name(name)
                .with_partition_columns(parts.clone())
                .with_configuration([
                    ("delta.checkpointInterval", Some(CHECKPOINT_INTERVAL.to_string())),
                    ("delta.logRetentionDuration", Some(LOG_RETENTION.to_string())),
                    ("delta.deletedFileRetentionDuration", Some(REMOVED_FILE_RETENTION.to_string())),
                ])
                .await
                .map_err(wrap)?;
        }
        let removes = removes(&table, &scope).map_err(wrap)?;
        let files = table.log_store().object_store(None);
        Ok(Overwrite {
            name: name.to_string(),
            location: url.to_string(),
            table,
            props: writer_properties(name),
            files,
            writer_id: uuid::Uuid::new_v4(),
            written_files: 0,
            removes,
            adds: Vec::new(),
            partition_by: parts,
            flush_rows: flush_rows.max(1),
            buffered: 0,
            rows: 0,
            scope,
            explicit: Vec::new(),
            transactions: Vec::new(),
            open: IndexMap::new(),
        })
    }
}

/// `batch` with its millisecond timestamps as microseconds, Delta's unit (the generic
/// write path converts them itself; a pre-split write does not).
fn to_delta_units(batch: &RecordBatch) -> std::result::Result<RecordBatch, arrow::error::ArrowError> {
    let schema = batch.schema();
    if !schema.fields().iter().any(|f| matches!(f.data_type(), DataType::Timestamp(TimeUnit::Millisecond, _))) {
        return Ok(batch.clone());
    }
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut columns = Vec::with_capacity(schema.fields().len());
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        match field.data_type() {
            DataType::Timestamp(TimeUnit::Millisecond, tz) => {
                let to = DataType::Timestamp(TimeUnit::Microsecond, tz.clone());
                columns.push(arrow::compute::cast(column, &to)?);
                fields.push(field.as_ref().clone().with_data_type(to));
            }
            _ => {
                columns.push(column.clone());
                fields.push(field.as_ref().clone());
            }
        }
    }
    RecordBatch::try_new(std::sync::Arc::new(arrow::datatypes::Schema::new(fields)), columns)
}

/// A table replacement in progress (see [`TableStore::overwrite_streaming`]).
///
/// Each Delta partition's rows go into that partition's file in the making ([`OpenFile`]),
/// encoded as they come; the next flush finishes the files, stores them, and keeps their
/// Add actions (with the statistics Delta readers prune by) for the commit.
pub struct Overwrite {
    name: String,
    location: String,
    table: DeltaTable,
    props: WriterProperties,
    /// The table's files (paths relative to its root).
    files: Arc<dyn ObjectStore>,
    /// Names this write's files apart from any other's.
    writer_id: uuid::Uuid,
    written_files: usize,
    removes: Vec<Action>,
    adds: Vec<Action>,
    partition_by: Vec<String>,
    flush_rows: usize,
    buffered: usize,
    rows: u64,
    scope: Scope,
    /// Files removed by [`Overwrite::remove_files`] (kept across retries).
    explicit: Vec<String>,
    transactions: Vec<(String, i64)>,
    /// The files in the making, by partition.
    open: IndexMap<String, OpenFile>,
}

/// One partition's next file, built in memory: runs of at least [`MIN_GROUP_ROWS`] rows are
/// encoded (as row groups) as soon as they come; shorter runs wait and are gathered into
/// row groups of that size. Only encoded bytes stay: the table's rows are dropped (and
/// their memory reused) as soon as they are in the file.
struct OpenFile {
    values: IndexMap<String, Scalar>,
    /// The columns the file holds (those that are not partition values), by index.
    columns: Vec<usize>,
    /// The file's schema: these columns, with dictionary-encoded text as text.
    file_schema: SchemaRef,
    file: FlatWriter<Chunks>,
    gathered: Vec<RecordBatch>,
    gathered_rows: usize,
}

impl OpenFile {
    fn new(values: IndexMap<String, Scalar>, first: &RecordBatch, props: &WriterProperties) -> FlatResult<Self> {
        let columns: Vec<usize> =
            (0..first.num_columns()).filter(|&i| !values.contains_key(first.schema().field(i).name())).collect();
        let schema = first.schema().project(&columns)?;
        // Dictionary-encoded text is the table's text: the file says so (and holds the
        // dictionary's keys, see `FlatWriter`).
        let file_schema = without_dictionaries(&schema);
        let file = FlatWriter::try_new(Chunks::default(), file_schema.clone(), props.clone())?;
        Ok(OpenFile { values, columns, file_schema, file, gathered: Vec::new(), gathered_rows: 0 })
    }

    /// Adds `run`'s rows after the file's others.
    fn take(&mut self, run: RecordBatch) -> FlatResult<()> {
        let rows = run.num_rows();
        let run = run.project(&self.columns)?;
        if rows >= MIN_GROUP_ROWS {
            // Rows keep their order in the file.
            self.write_gathered()?;
            for at in (0..rows).step_by(ROW_GROUP_ROWS) {
                self.file.write(&run.slice(at, ROW_GROUP_ROWS.min(rows - at)))?;
            }
        } else {
            self.gathered.push(run);
            self.gathered_rows += rows;
            if self.gathered_rows >= MIN_GROUP_ROWS {
                self.write_gathered()?;
            }
        }
        Ok(())
    }

    /// Writes the gathered short runs as one row group (encoded where they are).
    fn write_gathered(&mut self) -> FlatResult<()> {
        if self.gathered.is_empty() {
            return Ok(());
        }
        self.file.write_batches(&self.gathered)?;
        self.gathered.clear();
        self.gathered_rows = 0;
        Ok(())
    }

    /// The finished file's bytes, with its metadata.
    fn finish(mut self) -> FlatResult<(Chunks, ParquetMetaData, SchemaRef)> {
        self.write_gathered()?;
        let (bytes, metadata) = self.file.finish()?;
        Ok((bytes, metadata, self.file_schema))
    }
}

/// A file built in memory as a list of chunks of [`Chunks::SIZE`] bytes: what is written
/// never moves (a growing `Vec` copies itself, touching fresh pages twice over), and the
/// object store takes the chunks as they are.
#[derive(Default)]
struct Chunks {
    done: Vec<Bytes>,
    current: Vec<u8>,
}

impl Chunks {
    const SIZE: usize = 1 << 20;

    fn len(&self) -> usize {
        self.done.iter().map(Bytes::len).sum::<usize>() + self.current.len()
    }

    fn into_payload(mut self) -> PutPayload {
        if !self.current.is_empty() {
            self.done.push(Bytes::from(self.current));
        }
        self.done.into_iter().collect()
    }
}

impl std::io::Write for Chunks {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut rest = buf;
        while !rest.is_empty() {
            if self.current.len() == self.current.capacity() {
                if !self.current.is_empty() {
                    self.done.push(Bytes::from(std::mem::take(&mut self.current)));
                }
                self.current = Vec::with_capacity(Self::SIZE);
            }
            let n = rest.len().min(self.current.capacity() - self.current.len());
            self.current.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The column [`TableStore::read_where`] adds for the file that holds a row.
pub const FILE_COLUMN: &str = "__ccstream_file";

/// The key that tells partitions apart in [`Overwrite::open`].
fn partition_key(values: &IndexMap<String, Scalar>) -> String {
    values.values().map(|v| v.to_string()).collect::<Vec<_>>().join("\u{1f}")
}

/// A file's Delta statistics: its rows, and the minimum, maximum and null count of each
/// column whose every chunk has statistics (integer and time columns whose statistics the
/// writer properties enable), in the forms Delta's protocol gives them.
fn file_stats(metadata: &ParquetMetaData, schema: &Schema) -> Stats {
    let mut stats = Stats { num_records: metadata.file_metadata().num_rows(), ..Stats::default() };
    if metadata.row_groups().is_empty() {
        return stats;
    }
    'columns: for (i, field) in schema.fields().iter().enumerate() {
        let (mut min, mut max, mut nulls) = (None::<i64>, None::<i64>, 0i64);
        for group in metadata.row_groups() {
            let (lo, hi, n) = match group.column(i).statistics() {
                Some(Statistics::Int32(s)) => {
                    (s.min_opt().map(|&v| i64::from(v)), s.max_opt().map(|&v| i64::from(v)), s.null_count_opt())
                }
                Some(Statistics::Int64(s)) => (s.min_opt().copied(), s.max_opt().copied(), s.null_count_opt()),
                _ => continue 'columns,
            };
            let Some(n) = n else { continue 'columns };
            nulls += n as i64;
            min = match (min, lo) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            max = max.max(hi);
        }
        stats.null_count.insert(field.name().clone(), ColumnCountStat::Value(nulls));
        if let (Some(lo), Some(hi)) =
            (min.and_then(|v| delta_stat(field.data_type(), v)), max.and_then(|v| delta_stat(field.data_type(), v)))
        {
            stats.min_values.insert(field.name().clone(), ColumnValueStat::Value(lo));
            stats.max_values.insert(field.name().clone(), ColumnValueStat::Value(hi));
        }
    }
    stats
}

/// A column statistic as Delta writes it: integers as numbers, dates as `2026-01-05`,
/// timestamps truncated to milliseconds as `2026-01-05T10:40:00.123Z` (`…:00Z` when whole
/// seconds).
fn delta_stat(data_type: &DataType, value: i64) -> Option<serde_json::Value> {
    let time = |micros: i64, utc: bool| {
        let t = chrono::DateTime::from_timestamp_micros(micros)?.naive_utc();
        let whole = chrono::Timelike::nanosecond(&t) == 0;
        let format = match (utc, whole) {
            (true, true) => "%Y-%m-%dT%H:%M:%SZ",
            (true, false) => "%Y-%m-%dT%H:%M:%S%.3fZ",
            (false, true) => "%Y-%m-%d %H:%M:%S",
            (false, false) => "%Y-%m-%d %H:%M:%S%.3f",
        };
        Some(serde_json::Value::from(t.format(format).to_string()))
    };
    match data_type {
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => Some(value.into()),
        DataType::Date32 => {
            let day = chrono::DateTime::from_timestamp(value.checked_mul(86_400)?, 0)?.date_naive();
            Some(day.format("%Y-%m-%d").to_string().into())
        }
        DataType::Timestamp(TimeUnit::Microsecond, tz) => time(value, tz.is_some()),
        _ => None,
    }
}

/// What a write replaces.
#[derive(Debug, Clone)]
enum Scope {
    /// Nothing: the files are added.
    Append,
    /// The whole table.
    All,
    /// The files of these log partitions (but not their sealed files).
    Partitions(Vec<i32>),
}

/// `1, 2, 3` (a SQL IN list).
fn in_list(partitions: &[i32]) -> String {
    partitions.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ")
}

/// The Remove actions of the files that a write of `scope` replaces, on `table`'s snapshot.
fn removes(table: &DeltaTable, scope: &Scope) -> std::result::Result<Vec<Action>, deltalake::DeltaTableError> {
    if matches!(scope, Scope::Append) {
        // An append removes nothing: no need to walk the table's files.
        return Ok(Vec::new());
    }
    Ok(table
        .snapshot()?
        .log_data()
        .iter()
        .filter(|f| match scope {
            Scope::Append => false,
            Scope::All => true,
            Scope::Partitions(parts) => {
                let values = f.partition_values_map();
                let sealed = values.get(SEALED_COLUMN).and_then(|v| v.as_deref()) == Some("true");
                !sealed
                    && values
                        .get(PARTITION_COLUMN)
                        .and_then(|v| v.as_deref()?.parse::<i32>().ok())
                        .is_some_and(|p| parts.contains(&p))
            }
        })
        .map(|f| Action::Remove(f.remove_action(true)))
        .collect())
}

impl std::fmt::Debug for Overwrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Overwrite").field("table", &self.name).field("rows", &self.rows).finish()
    }
}

impl Overwrite {
    fn wrap(&self, source: deltalake::DeltaTableError) -> Error {
        Error::WriteTable { table: self.name.clone(), location: self.location.clone(), source: Box::new(source) }
    }

    /// Takes `batch` into the table's new files (at the next flush).
    pub async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        let batch = to_delta_units(&batch)?;
        // A batch of one partition (every batch of a replay, most of a processor's) is
        // held as it is; otherwise its rows are grouped into runs by partition, in order of
        // first appearance.
        if let Some(values) = self.single_partition(&batch) {
            self.hold(values, batch)?;
            return self.written(n).await;
        }
        let mut keys = Vec::with_capacity(n);
        for row in 0..n {
            let Some(values) = self.partition_values(&batch, row) else {
                return Err(Error::PartitionValue { table: self.name.clone(), row });
            };
            keys.push(Some(partition_key(&values)));
        }
        let (indices, runs) = crate::batch::group_rows(keys.into_iter());
        self.write_runs(arrow::compute::take_record_batch(&batch, &indices)?, &runs).await
    }

    /// Adds `run`, all of one partition, to that partition's next file.
    fn hold(&mut self, values: IndexMap<String, Scalar>, run: RecordBatch) -> Result<()> {
        let encode = |source| Error::EncodeFile { table: self.name.clone(), source };
        let open = match self.open.entry(partition_key(&values)) {
            indexmap::map::Entry::Occupied(o) => o.into_mut(),
            indexmap::map::Entry::Vacant(v) => v.insert(OpenFile::new(values, &run, &self.props).map_err(encode)?),
        };
        open.take(run).map_err(encode)
    }

    /// Takes `batch`, whose rows come in runs of one Delta partition each (`runs` are the
    /// runs' lengths, in order): each run goes to its partition's file, without the writer's
    /// generic split (a hash of every row's partition values and a copy). The caller groups
    /// the rows, usually from columns it has already decoded.
    ///
    /// Each run is encoded into its partition's next file as it comes, or, when short, as
    /// soon as enough rows of its partition have come ([`OpenFile`]).
    pub async fn write_runs(&mut self, batch: RecordBatch, runs: &[usize]) -> Result<()> {
        let (n, covered) = (batch.num_rows(), runs.iter().sum::<usize>());
        if covered != n {
            return Err(Error::Runs { table: self.name.clone(), rows: n, covered });
        }
        let batch = to_delta_units(&batch)?;
        let mut at = 0;
        for &len in runs.iter().filter(|&&len| len > 0) {
            let Some(values) = self.partition_values(&batch, at) else {
                return Err(Error::PartitionValue { table: self.name.clone(), row: at });
            };
            self.hold(values, batch.slice(at, len))?;
            at += len;
        }
        self.written(n).await
    }

    /// Counts `n` rows written; finishes the files once `flush_rows` are buffered.
    async fn written(&mut self, n: usize) -> Result<()> {
        self.buffered += n;
        self.rows += n as u64;
        if self.buffered >= self.flush_rows {
            self.flush().await?;
        }
        Ok(())
    }

    /// The partition values of row `row` of `batch` (integer, boolean, text and date
    /// partition columns, as ccstream's tables have), or `None` for a NULL or another type.
    fn partition_values(&self, batch: &RecordBatch, row: usize) -> Option<IndexMap<String, Scalar>> {
        let mut values = IndexMap::with_capacity(self.partition_by.len());
        for name in &self.partition_by {
            let column = batch.column_by_name(name)?;
            if column.is_null(row) {
                return None;
            }
            let value = match column.data_type() {
                DataType::Int32 => Scalar::Integer(column.as_primitive::<Int32Type>().value(row)),
                DataType::Boolean => Scalar::Boolean(column.as_boolean().value(row)),
                DataType::Utf8 => Scalar::String(column.as_string::<i32>().value(row).to_string()),
                DataType::Date32 => Scalar::Date(column.as_primitive::<Date32Type>().value(row)),
                _ => return None,
            };
            values.insert(name.clone(), value);
        }
        Some(values)
    }

    /// The partition values of `batch` when every row has the same ones: none for a table
    /// without partitions; else found when the table is partitioned by integer and boolean
    /// columns only, as the derived tables are.
    fn single_partition(&self, batch: &RecordBatch) -> Option<IndexMap<String, Scalar>> {
        if self.partition_by.is_empty() {
            return Some(IndexMap::new());
        }
        if batch.num_rows() == 0 {
            return None;
        }
        for name in &self.partition_by {
            let column = batch.column_by_name(name)?;
            if column.null_count() > 0 {
                return None;
            }
            let same = match column.data_type() {
                DataType::Int32 => {
                    let a = column.as_primitive::<Int32Type>().values();
                    a.iter().all(|&v| v == a[0])
                }
                DataType::Boolean => {
                    let trues = column.as_boolean().true_count();
                    trues == 0 || trues == column.len()
                }
                _ => false,
            };
            if !same {
                return None;
            }
        }
        self.partition_values(batch, 0)
    }

    /// Finishes the files in the making and stores them, one partition at a time.
    async fn flush(&mut self) -> Result<()> {
        for open in std::mem::take(&mut self.open).into_values() {
            let add = self.put_file(open).await?;
            self.adds.push(Action::Add(add));
        }
        self.buffered = 0;
        Ok(())
    }

    /// Finishes `open`'s file, stores it, and returns its Add action.
    async fn put_file(&mut self, mut open: OpenFile) -> Result<Add> {
        let table = || self.name.clone();
        let values = std::mem::take(&mut open.values);
        let (bytes, metadata, schema) =
            open.finish().map_err(|source| Error::EncodeFile { table: self.name.clone(), source })?;
        let stats = serde_json::to_string(&file_stats(&metadata, &schema))
            .map_err(|source| Error::FileStats { table: table(), source })?;

        // Named as Delta writers name their files: hive-style partition directories, then
        // `part-<n>-<writer>-c000.<codec>.parquet`.
        let codec = match self.props.compression(&ColumnPath::new(Vec::new())) {
            Compression::SNAPPY => ".snappy",
            Compression::ZSTD(_) => ".zstd",
            _ => "",
        };
        let name = format!("part-{:05}-{}-c000{codec}.parquet", self.written_files, self.writer_id);
        self.written_files += 1;
        let dir: Vec<String> = values.iter().map(|(k, v)| format!("{k}={}", v.serialize_encoded())).collect();
        let path = if dir.is_empty() { name } else { format!("{}/{name}", dir.join("/")) };
        let size = bytes.len() as i64;
        let put = |source| Error::PutFile { table: table(), path: path.clone(), source };
        let location = deltalake::Path::parse(&path).map_err(|source| put(ObjectStoreError::InvalidPath { source }))?;
        self.files.put(&location, bytes.into_payload()).await.map_err(put)?;
        let modification_time =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        Ok(Add {
            path,
            size,
            partition_values: values.iter().map(|(k, v)| (k.clone(), (!v.is_null()).then(|| v.serialize()))).collect(),
            modification_time,
            data_change: true,
            stats: Some(stats),
            tags: None,
            deletion_vector: None,
            base_row_id: None,
            default_row_commit_version: None,
            clustering_provider: None,
        })
    }

    /// Also removes the files `paths` (as [`TableStore::read_where`] names them) in the
    /// commit: files whose rows this write rewrote.
    pub fn remove_files(&mut self, paths: &[String]) -> Result<()> {
        let snapshot = match self.table.snapshot() {
            Ok(s) => s,
            Err(e) => return Err(self.wrap(e)),
        };
        for f in snapshot.log_data().iter() {
            let path = f.path();
            if paths.iter().any(|p| p.ends_with(path.as_ref())) && !self.explicit.iter().any(|e| e == path.as_ref()) {
                self.explicit.push(path.to_string());
                self.removes.push(Action::Remove(f.remove_action(true)));
            }
        }
        Ok(())
    }

    /// Gives the write up: deletes the files it stored (no commit names them), so the table
    /// is as it was and holds no unreferenced files of this write.
    pub async fn abandon(self) -> Result<()> {
        for action in &self.adds {
            let Action::Add(add) = action else { continue };
            let delete = |source| Error::DeleteFile { table: self.name.clone(), path: add.path.clone(), source };
            let location =
                deltalake::Path::parse(&add.path).map_err(|source| delete(ObjectStoreError::InvalidPath { source }))?;
            match self.files.delete(&location).await {
                Ok(()) | Err(ObjectStoreError::NotFound { .. }) => {}
                Err(e) => return Err(delete(e)),
            }
        }
        Ok(())
    }

    /// Records application transactions `(app_id, version)` in the same commit (the
    /// processor's consumed offsets: they land with the rows or not at all).
    pub fn with_transactions(&mut self, transactions: &[(String, i64)]) {
        self.transactions.extend_from_slice(transactions);
    }

    /// Finishes the files and commits them (replacing the previous content, or adding to
    /// it for [`TableStore::append_streaming`]) in one commit.
    /// Returns the rows written and the table's new version.
    pub async fn commit(mut self) -> Result<(u64, u64)> {
        self.flush().await?;
        let (mode, predicate) = match &self.scope {
            Scope::Append => (SaveMode::Append, None),
            Scope::All => (SaveMode::Overwrite, None),
            Scope::Partitions(p) => (SaveMode::Overwrite, Some(format!("\"{PARTITION_COLUMN}\" IN ({})", in_list(p)))),
        };
        let operation = DeltaOperation::Write {
            mode,
            partition_by: (!self.partition_by.is_empty()).then(|| self.partition_by.clone()),
            predicate,
        };
        let txns: Vec<Action> = self
            .transactions
            .iter()
            .map(|(app_id, version)| Action::Txn(deltalake::kernel::Transaction::new(app_id.clone(), *version)))
            .collect();
        // A lost race on this write's own partitions (another processor still committing a
        // partition that moved here) is retried on the newer snapshot: the files this
        // commit replaces are computed again, the new files stay.
        const ATTEMPTS: usize = 8;
        let local = local_root(&self.location);
        if let Some(root) = &local {
            let files: Vec<String> = self
                .adds
                .iter()
                .filter_map(|a| match a {
                    Action::Add(add) => Some(add.path.clone()),
                    _ => None,
                })
                .collect();
            sync_files(root.clone(), files, false).await?;
        }
        for attempt in 1..=ATTEMPTS {
            let mut actions = self.adds.clone();
            actions.append(&mut self.removes);
            actions.extend(txns.iter().cloned());
            let snapshot = match self.table.snapshot() {
                Ok(s) => s,
                Err(e) => return Err(self.wrap(e)),
            };
            // With the default properties, not `CommitBuilder::default()`: those run the
            // post-commit hook, which writes a checkpoint every `CHECKPOINT_INTERVAL` versions
            // (and drops log entries past the table's log retention). Without checkpoints,
            // every open of the table replays its whole log: a processor that commits every
            // second slowed down with every commit it made.
            let done = CommitBuilder::from(CommitProperties::default())
                .with_actions(actions)
                .build(Some(snapshot), self.table.log_store(), operation.clone())
                .await;
            match done {
                Ok(c) => {
                    if let Some(root) = local {
                        sync_files(root, vec![format!("_delta_log/{:020}.json", c.version())], true).await?;
                    }
                    return Ok((self.rows, c.version()));
                }
                Err(deltalake::DeltaTableError::Transaction {
                    source:
                        deltalake::kernel::transaction::TransactionError::CommitConflict(
                            deltalake::kernel::transaction::CommitConflictError::ConcurrentTransaction,
                        ),
                }) => {
                    let app_ids = self.transactions.iter().map(|(id, _)| id.clone()).collect();
                    return Err(Error::OffsetsTaken { table: self.name.clone(), app_ids });
                }
                Err(deltalake::DeltaTableError::Transaction {
                    source: deltalake::kernel::transaction::TransactionError::CommitConflict(_),
                }) if attempt < ATTEMPTS => {
                    if let Err(e) = self.table.load().await {
                        return Err(self.wrap(e));
                    }
                    self.removes = match removes(&self.table, &self.scope) {
                        Ok(r) => r,
                        Err(e) => return Err(self.wrap(e)),
                    };
                    let explicit = std::mem::take(&mut self.explicit);
                    self.remove_files(&explicit)?;
                }
                Err(e) => return Err(self.wrap(e)),
            }
        }
        unreachable!("the last attempt returns")
    }
}

/// The directory of a table at `location` when it is on local disk (`file://`).
fn local_root(location: &str) -> Option<std::path::PathBuf> {
    Url::parse(location).ok().filter(|u| u.scheme() == "file").and_then(|u| u.to_file_path().ok())
}

/// Files past which one `syncfs` of their filesystem is cheaper than an fsync each (a
/// backfill commit adds about a thousand).
const SYNCFS_FILES: usize = 8;

/// Fsyncs `files` (paths under `root`) and the directories that hold them, up to `root`
/// (and `root` itself when `with_root`; a new file's entry is in its parent directory).
/// Many files are made durable by one `syncfs` of the filesystem that holds `root`.
async fn sync_files(root: std::path::PathBuf, files: Vec<String>, with_root: bool) -> Result<()> {
    tokio::task::spawn_blocking(move || {
        let sync = |path: &std::path::Path| {
            std::fs::File::open(path)
                .and_then(|f| f.sync_all())
                .map_err(|source| Error::Sync { path: path.display().to_string(), source })
        };
        if files.len() > SYNCFS_FILES {
            use std::os::fd::AsRawFd;
            let dir = std::fs::File::open(&root)
                .map_err(|source| Error::Sync { path: root.display().to_string(), source })?;
            // SAFETY: syncfs takes an open descriptor, which `dir` holds for the call.
            if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
                let source = std::io::Error::last_os_error();
                return Err(Error::Sync { path: root.display().to_string(), source });
            }
            return Ok(());
        }
        let mut dirs = std::collections::BTreeSet::new();
        for f in &files {
            let path = root.join(f);
            sync(&path)?;
            let mut dir = path.parent();
            while let Some(d) = dir.filter(|d| d.starts_with(&root) && *d != root) {
                dirs.insert(d.to_path_buf());
                dir = d.parent();
            }
        }
        if with_root || !files.is_empty() {
            dirs.insert(root.clone());
        }
        dirs.iter().try_for_each(|d| sync(d))
    })
    .await
    .map_err(|e| Error::Sync { path: "(the sync task)".into(), source: std::io::Error::other(e) })?
}

#[cfg(test)]
mod tests {
    use super::*;
    use ccstream_schemas::{TABLE_CALL_FACTS, TABLE_EVENTS};

    #[test]
    fn columns_get_the_encodings_their_values_suit() {
        let events = writer_properties(TABLE_EVENTS);
        let at = |p: &WriterProperties, c: &str| {
            (p.encoding(&ColumnPath::from(c)), p.dictionary_enabled(&ColumnPath::from(c)))
        };
        // Unique ids: lengths apart from the bytes, no dictionary.
        assert_eq!(at(&events, "event_id"), (Some(Encoding::DELTA_LENGTH_BYTE_ARRAY), false));
        assert_eq!(at(&events, "call_id"), (Some(Encoding::DELTA_LENGTH_BYTE_ARRAY), false));
        // Names repeat: a dictionary, with the writer's default fallback.
        assert_eq!(at(&events, "tenant_id"), (None, true));
        assert_eq!(at(&events, "occurred_at"), (Some(Encoding::DELTA_BINARY_PACKED), false));
        assert_eq!(at(&events, "jitter_ms"), (Some(Encoding::BYTE_STREAM_SPLIT), false));
        let facts = writer_properties(TABLE_CALL_FACTS);
        assert_eq!(at(&facts, "call_id"), (Some(Encoding::DELTA_LENGTH_BYTE_ARRAY), false));
        assert_eq!(at(&facts, "queue_id"), (None, true));
        assert_eq!(at(&facts, "wait_ms"), (Some(Encoding::DELTA_BINARY_PACKED), false));
        // zstd where it entropy-codes (unique text, split floats), Snappy elsewhere.
        let codec = |p: &WriterProperties, c: &str| p.compression(&ColumnPath::from(c));
        let zstd = Compression::ZSTD(ZstdLevel::try_new(1).unwrap());
        assert_eq!(codec(&events, "event_id"), zstd);
        assert_eq!(codec(&events, "jitter_ms"), zstd);
        assert_eq!(codec(&events, "occurred_at"), Compression::SNAPPY);
        assert_eq!(codec(&events, "tenant_id"), Compression::SNAPPY);
        assert_eq!(codec(&facts, "call_id"), zstd);
        assert_eq!(codec(&facts, "mos"), zstd);
        assert_eq!(codec(&facts, "answered"), Compression::SNAPPY);
    }

    /// Long runs are encoded as they come, short ones gathered into row groups of at least
    /// [`MIN_GROUP_ROWS`] rows; the file keeps every row in the order the runs came.
    #[test]
    fn a_file_in_the_making_keeps_its_rows_in_order() {
        use arrow::array::{Int64Array, StringArray};
        use arrow::datatypes::Field;
        use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, false),
            Field::new("id", DataType::Utf8, false),
        ]));
        let lens = [10, MIN_GROUP_ROWS + 5, 20, 30, MIN_GROUP_ROWS - 10, 100];
        let mut next = 0i64;
        let runs: Vec<RecordBatch> = lens
            .iter()
            .map(|&len| {
                let n: Vec<i64> = (next..next + len as i64).collect();
                next += len as i64;
                let ids: Vec<String> =
                    n.iter().map(|v| format!("{:032x}", (*v as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))).collect();
                RecordBatch::try_new(
                    schema.clone(),
                    vec![Arc::new(Int64Array::from(n)), Arc::new(StringArray::from(ids))],
                )
                .unwrap()
            })
            .collect();
        let mut open = OpenFile::new(IndexMap::new(), &runs[0], &WriterProperties::default()).unwrap();
        for run in &runs {
            open.take(run.clone()).unwrap();
        }
        // Held back: only the short runs after the last row group.
        assert_eq!(open.gathered_rows, 100);
        let (chunks, metadata, _) = open.finish().unwrap();
        let groups: Vec<i64> = metadata.row_groups().iter().map(|g| g.num_rows()).collect();
        let min = MIN_GROUP_ROWS as i64;
        assert_eq!(groups, [10, min + 5, min + 40, 100]);
        assert!(chunks.done.len() > 1, "the file spans chunks");
        let bytes: Bytes = chunks.into_payload().iter().flat_map(|b| b.iter().copied()).collect::<Vec<u8>>().into();
        let back = ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap().build().unwrap();
        let back: Vec<RecordBatch> = back.collect::<std::result::Result<_, _>>().unwrap();
        let back = arrow::compute::concat_batches(&back[0].schema(), &back).unwrap();
        let want = arrow::compute::concat_batches(&schema, &runs).unwrap();
        assert_eq!(back.columns(), want.columns());
    }

    /// A file built in chunks is the bytes written, in order, whatever the writes' sizes.
    #[test]
    fn chunks_hold_what_was_written() {
        use std::io::Write;
        let mut chunks = Chunks::default();
        let mut want = Vec::new();
        let mut seed = 7u64;
        for _ in 0..200 {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let len = (seed >> 33) as usize % (Chunks::SIZE / 16 + 1);
            let piece: Vec<u8> = (0..len).map(|i| (i as u64 ^ seed) as u8).collect();
            chunks.write_all(&piece).unwrap();
            want.extend_from_slice(&piece);
        }
        assert_eq!(chunks.len(), want.len());
        assert!(chunks.done.iter().all(|c| c.len() == Chunks::SIZE));
        let got: Vec<u8> = chunks.into_payload().iter().flat_map(|b| b.iter().copied()).collect();
        assert_eq!(got, want);
    }
}
