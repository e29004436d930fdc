//! `information_schema` as PostgreSQL clients expect it: PostgreSQL type names in
//! `data_type` (`timestamp with time zone`, not `Timestamp(ms, "UTC")`), `udt_name`
//! (`timestamptz`), `'BASE TABLE'`/`'VIEW'`, `'YES'`/`'NO'`. Grafana's column picker and
//! macros decide a column's kind from these; DataFusion's own `information_schema` (Arrow
//! type names) stays on the HTTP API.
//!
//! Built per session over that session's catalog, so it lists exactly what the principal
//! may read. Tables: `schemata`, `tables`, `columns`, `views`.

use std::sync::Arc;

use arrow::array::{ArrayRef, Int32Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use datafusion::catalog::{CatalogProviderList, SchemaProvider, TableProvider};
use datafusion::datasource::MemTable;
use datafusion::error::Result;
use datafusion::logical_expr::TableType;

pub const TABLES: [&str; 4] = ["schemata", "tables", "columns", "views"];

/// The schema `information_schema` of a session over `catalogs`.
#[derive(Debug)]
pub struct PgInformationSchema {
    /// Weak: the catalog holds this schema (a strong reference would be a cycle).
    catalogs: std::sync::Weak<dyn CatalogProviderList>,
}

impl PgInformationSchema {
    pub fn new(catalogs: std::sync::Weak<dyn CatalogProviderList>) -> PgInformationSchema {
        PgInformationSchema { catalogs }
    }

    fn catalogs(&self) -> Result<Arc<dyn CatalogProviderList>> {
        self.catalogs.upgrade().ok_or_else(|| datafusion::error::DataFusionError::Execution("the session ended".into()))
    }
}

/// PostgreSQL's name of an Arrow type (`data_type`), its `udt_name`, and numeric
/// precision / scale / datetime precision where PostgreSQL gives them.
pub fn pg_type(dt: &DataType) -> (&'static str, &'static str, Option<i32>, Option<i32>, Option<i32>) {
    match dt {
        DataType::Boolean => ("boolean", "bool", None, None, None),
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => ("smallint", "int2", Some(16), Some(0), None),
        DataType::Int32 | DataType::UInt16 => ("integer", "int4", Some(32), Some(0), None),
        DataType::Int64 | DataType::UInt32 => ("bigint", "int8", Some(64), Some(0), None),
        DataType::UInt64 | DataType::Decimal128(..) | DataType::Decimal256(..) => {
            ("numeric", "numeric", None, None, None)
        }
        DataType::Float16 | DataType::Float32 => ("real", "float4", Some(24), None, None),
        DataType::Float64 => ("double precision", "float8", Some(53), None, None),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => ("text", "text", None, None, None),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView | DataType::FixedSizeBinary(_) => {
            ("bytea", "bytea", None, None, None)
        }
        DataType::Date32 | DataType::Date64 => ("date", "date", None, None, Some(0)),
        DataType::Time32(_) | DataType::Time64(_) => ("time without time zone", "time", None, None, Some(6)),
        DataType::Timestamp(unit, tz) => {
            let precision = match unit {
                TimeUnit::Second => 0,
                TimeUnit::Millisecond => 3,
                _ => 6,
            };
            match tz {
                Some(_) => ("timestamp with time zone", "timestamptz", None, None, Some(precision)),
                None => ("timestamp without time zone", "timestamp", None, None, Some(precision)),
            }
        }
        DataType::Interval(_) | DataType::Duration(_) => ("interval", "interval", None, None, Some(6)),
        DataType::Dictionary(_, v) => pg_type(v),
        DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(..) => {
            ("ARRAY", "_text", None, None, None)
        }
        _ => ("USER-DEFINED", "text", None, None, None),
    }
}

fn utf8(name: &str) -> Field {
    Field::new(name, DataType::Utf8, true)
}

fn strings(v: Vec<Option<String>>) -> ArrayRef {
    Arc::new(StringArray::from(v))
}

fn ints(v: Vec<Option<i32>>) -> ArrayRef {
    Arc::new(Int32Array::from(v))
}

impl PgInformationSchema {
    /// `(catalog, schema, table, provider)` of every table the session sees.
    async fn relations(&self) -> Result<Vec<(String, String, String, Arc<dyn TableProvider>)>> {
        let mut out = Vec::new();
        let catalogs = self.catalogs()?;
        for c in catalogs.catalog_names() {
            let Some(catalog) = catalogs.catalog(&c) else { continue };
            for s in catalog.schema_names() {
                // pg_catalog's hundred tables are listed by pg_class, not here; this schema
                // does not list itself (it would build itself to do so).
                if s == "pg_catalog" || s == "information_schema" {
                    continue;
                }
                let Some(schema) = catalog.schema(&s) else { continue };
                for t in schema.table_names() {
                    if let Some(p) = schema.table(&t).await? {
                        out.push((c.clone(), s.clone(), t, p));
                    }
                }
            }
        }
        Ok(out)
    }

    async fn build(&self, name: &str) -> Result<Option<RecordBatch>> {
        Ok(Some(match name {
            "schemata" => {
                let schema =
                    Arc::new(Schema::new(vec![utf8("catalog_name"), utf8("schema_name"), utf8("schema_owner")]));
                let mut c = Vec::new();
                let mut s = Vec::new();
                let catalogs = self.catalogs()?;
                for cat in catalogs.catalog_names() {
                    let Some(catalog) = catalogs.catalog(&cat) else { continue };
                    for sch in catalog.schema_names() {
                        c.push(Some(cat.clone()));
                        s.push(Some(sch));
                    }
                }
                let owner = vec![Some("ccstream".to_string()); c.len()];
                RecordBatch::try_new(schema, vec![strings(c), strings(s), strings(owner)])?
            }
            "tables" => {
                let schema = Arc::new(Schema::new(vec![
                    utf8("table_catalog"),
                    utf8("table_schema"),
                    utf8("table_name"),
                    utf8("table_type"),
                    utf8("is_insertable_into"),
                ]));
                let kind = |p: &Arc<dyn TableProvider>| match p.table_type() {
                    TableType::View => "VIEW",
                    _ => "BASE TABLE",
                };
                let mut rows: Vec<[String; 4]> = self
                    .relations()
                    .await?
                    .iter()
                    .map(|r| [r.0.clone(), r.1.clone(), r.2.clone(), kind(&r.3).to_string()])
                    .collect();
                // The catalogs' own tables, by name (as PostgreSQL lists them).
                let catalogs = self.catalogs()?;
                for c in catalogs.catalog_names() {
                    let Some(catalog) = catalogs.catalog(&c) else { continue };
                    if let Some(pg) = catalog.schema("pg_catalog") {
                        for t in pg.table_names() {
                            rows.push([c.clone(), "pg_catalog".into(), t, "BASE TABLE".into()]);
                        }
                    }
                    for t in TABLES {
                        rows.push([c.clone(), "information_schema".into(), t.to_string(), "VIEW".into()]);
                    }
                }
                let col = |i: usize| strings(rows.iter().map(|r| Some(r[i].clone())).collect());
                RecordBatch::try_new(
                    schema,
                    vec![
                        col(0),
                        col(1),
                        col(2),
                        col(3),
                        strings(rows.iter().map(|_| Some("NO".to_string())).collect()),
                    ],
                )?
            }
            "views" => {
                let schema = Arc::new(Schema::new(vec![
                    utf8("table_catalog"),
                    utf8("table_schema"),
                    utf8("table_name"),
                    utf8("view_definition"),
                ]));
                let rel: Vec<_> =
                    self.relations().await?.into_iter().filter(|r| r.3.table_type() == TableType::View).collect();
                RecordBatch::try_new(
                    schema,
                    vec![
                        strings(rel.iter().map(|r| Some(r.0.clone())).collect()),
                        strings(rel.iter().map(|r| Some(r.1.clone())).collect()),
                        strings(rel.iter().map(|r| Some(r.2.clone())).collect()),
                        strings(rel.iter().map(|r| r.3.get_table_definition().map(str::to_string)).collect()),
                    ],
                )?
            }
            "columns" => {
                let schema = Arc::new(Schema::new(vec![
                    utf8("table_catalog"),
                    utf8("table_schema"),
                    utf8("table_name"),
                    utf8("column_name"),
                    Field::new("ordinal_position", DataType::Int32, true),
                    utf8("column_default"),
                    utf8("is_nullable"),
                    utf8("data_type"),
                    Field::new("character_maximum_length", DataType::Int32, true),
                    Field::new("numeric_precision", DataType::Int32, true),
                    Field::new("numeric_scale", DataType::Int32, true),
                    Field::new("datetime_precision", DataType::Int32, true),
                    utf8("udt_catalog"),
                    utf8("udt_schema"),
                    utf8("udt_name"),
                    utf8("is_updatable"),
                ]));
                let mut cols: Vec<Vec<Option<String>>> = vec![Vec::new(); 12];
                let mut nums: Vec<Vec<Option<i32>>> = vec![Vec::new(); 4];
                for (c, s, t, p) in self.relations().await? {
                    for (i, f) in p.schema().fields().iter().enumerate() {
                        let (data_type, udt, precision, scale, dt_precision) = pg_type(f.data_type());
                        cols[0].push(Some(c.clone()));
                        cols[1].push(Some(s.clone()));
                        cols[2].push(Some(t.clone()));
                        cols[3].push(Some(f.name().clone()));
                        cols[4].push(None);
                        cols[5].push(Some(if f.is_nullable() { "YES" } else { "NO" }.to_string()));
                        cols[6].push(Some(data_type.to_string()));
                        cols[7].push(Some(c.clone()));
                        cols[8].push(Some("pg_catalog".to_string()));
                        cols[9].push(Some(udt.to_string()));
                        cols[10].push(Some("NO".to_string()));
                        nums[0].push(Some(i as i32 + 1));
                        nums[1].push(precision);
                        nums[2].push(scale);
                        nums[3].push(dt_precision);
                    }
                }
                let mut it = cols.into_iter();
                let mut next = || strings(it.next().expect("column"));
                let (c, s, t, n, d, nullable, ty) = (next(), next(), next(), next(), next(), next(), next());
                let (udt_c, udt_s, udt, upd) = (next(), next(), next(), next());
                let len = nums[0].len();
                RecordBatch::try_new(
                    schema,
                    vec![
                        c,
                        s,
                        t,
                        n,
                        ints(nums[0].clone()),
                        d,
                        nullable,
                        ty,
                        ints(vec![None; len]),
                        ints(nums[1].clone()),
                        ints(nums[2].clone()),
                        ints(nums[3].clone()),
                        udt_c,
                        udt_s,
                        udt,
                        upd,
                    ],
                )?
            }
            _ => return Ok(None),
        }))
    }
}

#[async_trait]
impl SchemaProvider for PgInformationSchema {
    fn table_names(&self) -> Vec<String> {
        TABLES.iter().map(|t| t.to_string()).collect()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let name = name.to_ascii_lowercase();
        if !TABLES.contains(&name.as_str()) {
            return Ok(None);
        }
        let Some(batch) = self.build(&name).await? else { return Ok(None) };
        let schema: SchemaRef = batch.schema();
        Ok(Some(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?)))
    }

    fn table_exist(&self, name: &str) -> bool {
        TABLES.contains(&name.to_ascii_lowercase().as_str())
    }
}
