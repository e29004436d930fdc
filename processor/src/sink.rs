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
//! flight) is rebuilt on the newer snapshot and retried.

use deltalake::kernel::transaction::CommitBuilder;
use deltalake::kernel::Action;
use deltalake::parquet::basic::{Compression, Encoding, ZstdLevel};
use deltalake::parquet::file::properties::{EnabledStatistics, WriterProperties};
use deltalake::parquet::schema::types::ColumnPath;
use deltalake::protocol::DeltaOperation;
use deltalake::protocol::SaveMode;
use deltalake::writer::{DeltaWriter, RecordBatchWriter, WriteMode};
use deltalake::DeltaTable;
use url::Url;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use arrow::datatypes::{Date32Type, Int32Type};
use ccstream_schemas::{is_low_cardinality, partition_columns, table_schema, PARTITION_COLUMN, SEALED_COLUMN};
use delta_kernel::expressions::Scalar;
use indexmap::IndexMap;

use crate::{Error, Result};

/// Parquet settings of table `name`'s files.
pub fn writer_properties(name: &str) -> WriterProperties {
    // Dictionary pages only where values repeat (tenants, queues, agents, enums): for
    // unique ids a dictionary is pure cost. Min/max statistics (chunk and page) only for
    // times: rows come roughly in time order, so times prune. No table is clustered by
    // anything else: every page holds most of a file's tenants, queues and agents, ids are
    // random and measures (waits, counts, media quality) spread, so their min/max would
    // prune nothing, and computing it compares every value.
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
        let wrap =
            |source| Error::WriteTable { table: name.to_string(), location: url.to_string(), source: Box::new(source) };
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
        let wrap =
            |source| Error::WriteTable { table: name.to_string(), location: url.to_string(), source: Box::new(source) };
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
        let wrap =
            |source| Error::WriteTable { table: name.to_string(), location: url.to_string(), source: Box::new(source) };
        let mut table = DeltaTable::try_from_url(url.clone()).await.map_err(wrap)?;
        let parts: Vec<String> = partition_columns(name).iter().map(|s| s.to_string()).collect();
        if table.version().is_none() {
            // A new table: commit its schema (no files) first, so the writer has metadata.
            table = table
                .write(vec![RecordBatch::new_empty(schema.clone())])
                .with_save_mode(SaveMode::Overwrite)
                .with_table_name(name)
                .with_partition_columns(parts.clone())
                .await
                .map_err(wrap)?;
        }
        let removes = removes(&table, &scope).map_err(wrap)?;
        let writer =
            RecordBatchWriter::for_table(&table).map_err(wrap)?.with_writer_properties(writer_properties(name));
        Ok(Overwrite {
            name: name.to_string(),
            location: url.to_string(),
            table,
            writer,
            removes,
            adds: Vec::new(),
            partition_by: parts,
            flush_rows: flush_rows.max(1),
            buffered: 0,
            rows: 0,
            scope,
            explicit: Vec::new(),
            transactions: Vec::new(),
            pending: IndexMap::new(),
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
pub struct Overwrite {
    name: String,
    location: String,
    table: DeltaTable,
    writer: RecordBatchWriter,
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
    /// Runs of [`Overwrite::write_runs`] waiting for the next flush, by partition.
    pending: IndexMap<String, PendingRuns>,
}

/// One partition's rows waiting for [`Overwrite::flush`]: its values and its runs.
type PendingRuns = (IndexMap<String, Scalar>, Vec<RecordBatch>);

/// The column [`TableStore::read_where`] adds for the file that holds a row.
pub const FILE_COLUMN: &str = "__ccstream_file";

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

    /// Encodes `batch` into the table's new files.
    pub async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        // A batch of one partition (every batch of a replay, most of a processor's) goes
        // straight to its file, without the writer's generic split (a sort and a copy).
        let written = match self.single_partition(&batch) {
            Some(values) => match to_delta_units(&batch) {
                Ok(batch) => self.writer.write_partition(batch, &values, WriteMode::Default).await.map(|_| ()),
                Err(e) => Err(e.into()),
            },
            None => self.writer.write(batch).await,
        };
        if let Err(e) = written {
            return Err(self.wrap(e));
        }
        self.written(n).await
    }

    /// Takes `batch`, whose rows come in runs of one Delta partition each (`runs` are the
    /// runs' lengths, in order): each run goes to its partition's file, without the writer's
    /// generic split (a hash of every row's partition values and a copy). The caller groups
    /// the rows, usually from columns it has already decoded.
    ///
    /// The runs wait (as slices of `batch`) for the next flush, which encodes them one
    /// partition at a time, each file finished before the next starts. A file's writer
    /// holds an encoder and a zstd context per column: written as they came, hundreds of
    /// partitions would hold theirs at once, each faulting in fresh memory.
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
            let key = values.values().map(|v| v.to_string()).collect::<Vec<_>>().join("\u{1f}");
            self.pending.entry(key).or_insert_with(|| (values, Vec::new())).1.push(batch.slice(at, len));
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

    /// The partition values of `batch` when every row has the same ones (and the table is
    /// partitioned by integer and boolean columns only, as the derived tables are).
    fn single_partition(&self, batch: &RecordBatch) -> Option<IndexMap<String, Scalar>> {
        if self.partition_by.is_empty() || batch.num_rows() == 0 {
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

    /// Finishes the files: those of [`Overwrite::write`], then the waiting runs, one
    /// partition at a time.
    async fn flush(&mut self) -> Result<()> {
        self.finish_files().await?;
        for (_, (values, runs)) in std::mem::take(&mut self.pending) {
            let run = match runs.as_slice() {
                [one] => one.clone(),
                _ => arrow::compute::concat_batches(&runs[0].schema(), &runs)?,
            };
            drop(runs);
            if let Err(e) = self.writer.write_partition(run, &values, WriteMode::Default).await {
                return Err(self.wrap(e));
            }
            self.finish_files().await?;
        }
        self.buffered = 0;
        Ok(())
    }

    /// Closes the writer's open files and keeps their Add actions for the commit.
    async fn finish_files(&mut self) -> Result<()> {
        match self.writer.flush().await {
            Ok(adds) => self.adds.extend(adds.into_iter().map(Action::Add)),
            Err(e) => return Err(self.wrap(e)),
        }
        Ok(())
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
        for attempt in 1..=ATTEMPTS {
            let mut actions = self.adds.clone();
            actions.append(&mut self.removes);
            actions.extend(txns.iter().cloned());
            let snapshot = match self.table.snapshot() {
                Ok(s) => s,
                Err(e) => return Err(self.wrap(e)),
            };
            let done = CommitBuilder::default()
                .with_actions(actions)
                .build(Some(snapshot), self.table.log_store(), operation.clone())
                .await;
            match done {
                Ok(c) => return Ok((self.rows, c.version())),
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
}
