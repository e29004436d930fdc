//! The HTTP API (axum).
//!
//! | route | answers |
//! |---|---|
//! | `GET /health` | `ok` — the only route that needs no credentials |
//! | `GET /ready` | `ready` with the tables' versions once a snapshot is loaded, else 503 |
//! | `POST /v1/sql` | a query: body `{"sql": "…", "params": [...], "tenant": "…"}`; the result streamed as JSON, JSON Lines, CSV, Arrow IPC stream or Parquet (`Accept` or `?format=json\|jsonl\|csv\|arrow\|parquet`) |
//! | `GET /v1/tables` | the tables, views and table functions the principal may read, with columns and their definitions |
//! | `GET /metrics` | the server's metrics (Prometheus text format) |
//!
//! Credentials: `Authorization: Bearer TOKEN` (a principal's `token_hash`, or a Microsoft
//! Entra ID access token: [`crate::entra`]) or `Basic` (name and password, checked against
//! its `password_hash`). Errors are JSON
//! `{"code": "...", "message": "..."}`: 400 bad SQL or a write, 401 no or wrong
//! credentials, 403 not allowed, 408 timeout, 413 too large (body, rows or memory), 429 too
//! many concurrent queries, 503 not ready.
//!
//! Results are streamed batch by batch: the status and headers go out once the query is
//! planned; an error after that (a timeout or the row limit mid-result) ends a JSON body
//! with an `"error"` member, a JSON Lines body with an `{"error": …}` line, and aborts the
//! other formats' bodies (the client sees an incomplete transfer, never a short result
//! that looks whole).

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use datafusion::common::ScalarValue;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::access::{AccessError, Principal};
use crate::server::{QueryError, QueryRequest, RunningQuery, Service};
use crate::telemetry::ErrorKind;

/// The largest request body `/v1/sql` takes.
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// The most parameters a request may bind.
const MAX_PARAMS: usize = 1024;
const FRONTEND: &str = "http";

/// The API's routes over `service`.
pub fn router(service: Arc<Service>) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/v1/sql", post(sql))
        .route("/v1/tables", get(tables))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(service)
}

/// An error response: `{code, message}` with the kind's status.
#[derive(Debug)]
pub struct ApiError(pub QueryError);

impl ApiError {
    fn status(&self) -> StatusCode {
        match self.0.kind {
            ErrorKind::Sql | ErrorKind::ReadOnly => StatusCode::BAD_REQUEST,
            ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ErrorKind::Timeout => StatusCode::REQUEST_TIMEOUT,
            ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::Busy => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::NotReady => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Cancelled | ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = Json(json!({"code": self.0.kind.as_str(), "message": self.0.message}));
        let mut r = (status, body).into_response();
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer, Basic realm=\"ccstream\""));
        }
        r
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        ApiError(e)
    }
}

/// The principal of a request's `Authorization` header.
async fn authenticate(service: &Arc<Service>, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let result = authenticate_inner(service, headers).await;
    if result.is_err() {
        service.telemetry.auth_failed(FRONTEND);
    }
    result.map_err(|e| {
        ApiError(QueryError::new(
            ErrorKind::Unauthenticated,
            match e {
                AccessError::Missing => "credentials required: Authorization: Bearer TOKEN or Basic".to_string(),
                _ => "invalid credentials".to_string(),
            },
        ))
    })
}

async fn authenticate_inner(service: &Arc<Service>, headers: &HeaderMap) -> Result<Principal, AccessError> {
    let value = headers.get(header::AUTHORIZATION).ok_or(AccessError::Missing)?;
    service.authenticate(value.to_str().map_err(|_| AccessError::Invalid)?).await
}

async fn ready(State(service): State<Arc<Service>>, headers: HeaderMap) -> Result<Response, ApiError> {
    authenticate(&service, &headers).await?;
    let snapshot = service.snapshot();
    let versions: serde_json::Map<String, Value> =
        snapshot.versions.iter().map(|(name, v)| (name.to_string(), json!(v))).collect();
    Ok(Json(json!({"status": "ready", "generation": snapshot.generation, "tables": versions})).into_response())
}

async fn metrics(State(service): State<Arc<Service>>, headers: HeaderMap) -> Result<Response, ApiError> {
    authenticate(&service, &headers).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], service.telemetry.render())
        .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SqlBody {
    sql: String,
    #[serde(default)]
    params: Vec<Value>,
    #[serde(default)]
    tenant: Option<String>,
}

#[derive(Debug, Deserialize)]
struct FormatQuery {
    format: Option<String>,
}

/// Result formats of `/v1/sql`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    JsonLines,
    Csv,
    Arrow,
    Parquet,
}

impl Format {
    fn from_name(name: &str) -> Option<Format> {
        Some(match name {
            "json" => Format::Json,
            "jsonl" | "ndjson" => Format::JsonLines,
            "csv" => Format::Csv,
            "arrow" => Format::Arrow,
            "parquet" => Format::Parquet,
            _ => return None,
        })
    }

    fn from_accept(accept: &str) -> Option<Format> {
        accept.split(',').find_map(|part| {
            Some(match part.split(';').next()?.trim() {
                "application/json" | "*/*" => Format::Json,
                "application/x-ndjson" | "application/jsonl" | "application/json-lines" => Format::JsonLines,
                "text/csv" => Format::Csv,
                "application/vnd.apache.arrow.stream" => Format::Arrow,
                "application/vnd.apache.parquet" | "application/x-parquet" => Format::Parquet,
                _ => return None,
            })
        })
    }

    fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::JsonLines => "application/x-ndjson",
            Format::Csv => "text/csv; charset=utf-8",
            Format::Arrow => "application/vnd.apache.arrow.stream",
            Format::Parquet => "application/vnd.apache.parquet",
        }
    }
}

fn param_value(i: usize, v: &Value) -> Result<ScalarValue, QueryError> {
    Ok(match v {
        Value::Null => ScalarValue::Null,
        Value::Bool(b) => ScalarValue::Boolean(Some(*b)),
        Value::Number(n) => match n.as_i64() {
            Some(i) => ScalarValue::Int64(Some(i)),
            None => ScalarValue::Float64(n.as_f64()),
        },
        Value::String(s) => ScalarValue::Utf8(Some(s.clone())),
        _ => {
            return Err(QueryError::new(
                ErrorKind::Sql,
                format!("params[{i}]: only strings, numbers, booleans and null can be bound"),
            ))
        }
    })
}

async fn sql(
    State(service): State<Arc<Service>>,
    Query(q): Query<FormatQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let principal = authenticate(&service, &headers).await?;
    let t = &service.telemetry;
    t.active_sessions.with_label_values(&[FRONTEND]).inc();
    let result = sql_inner(&service, &principal, q, &headers, body).await;
    t.active_sessions.with_label_values(&[FRONTEND]).dec();
    if let Err(e) = &result {
        t.query_failed(FRONTEND, e.0.kind);
    }
    result
}

async fn sql_inner(
    service: &Arc<Service>,
    principal: &Principal,
    q: FormatQuery,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: SqlBody = serde_json::from_slice(&body).map_err(|e| {
        QueryError::new(ErrorKind::Sql, format!("the body must be JSON {{\"sql\": \"…\", \"params\": [...]}}: {e}"))
    })?;
    let format = match q.format.as_deref() {
        Some(name) => Format::from_name(name).ok_or_else(|| {
            QueryError::new(ErrorKind::Sql, format!("unknown format {name:?}: json, jsonl, csv, arrow or parquet"))
        })?,
        None => match headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) {
            None => Format::Json,
            Some(accept) => Format::from_accept(accept).unwrap_or(Format::Json),
        },
    };
    if body.params.len() > MAX_PARAMS {
        return Err(QueryError::new(ErrorKind::Sql, format!("at most {MAX_PARAMS} params")).into());
    }
    let params = body.params.iter().enumerate().map(|(i, v)| param_value(i, v)).collect::<Result<Vec<_>, _>>()?;
    let scope = service.scope_for(principal, body.tenant.as_deref())?;
    let mut running =
        service.execute(principal, &scope, QueryRequest { sql: body.sql, params, ..Default::default() }).await?;
    // The first batch (or error) before the headers: a query that fails at once gets its
    // status.
    let first = running.next().await.transpose()?;
    let encoder = Encoder::new(format, running.schema.clone()).map_err(|e| QueryError::new(ErrorKind::Internal, e))?;
    let stream = ResultStream { service: Arc::clone(service), running, encoder, first, done: false, rows: 0 };
    let body = Body::from_stream(futures::stream::unfold(stream, |mut s| async move {
        let item = s.next_chunk().await?;
        Some((item, s))
    }));
    Ok(([(header::CONTENT_TYPE, format.content_type())], body).into_response())
}

/// The body of a result: encoded batches, then the format's end.
struct ResultStream {
    service: Arc<Service>,
    running: RunningQuery,
    encoder: Encoder,
    first: Option<RecordBatch>,
    done: bool,
    rows: u64,
}

impl ResultStream {
    async fn next_chunk(&mut self) -> Option<Result<Bytes, std::io::Error>> {
        if self.done {
            return None;
        }
        let t = &self.service.telemetry;
        loop {
            let next = match self.first.take() {
                Some(b) => Some(Ok(b)),
                None => self.running.next().await,
            };
            let out = match next {
                Some(Ok(batch)) => {
                    self.rows += batch.num_rows() as u64;
                    t.rows_out.with_label_values(&[FRONTEND]).inc_by(batch.num_rows() as u64);
                    self.encoder.batch(&batch)
                }
                Some(Err(e)) => {
                    self.done = true;
                    t.query_failed(FRONTEND, e.kind);
                    tracing::info!(error = %e, "query failed mid-result");
                    match self.encoder.error(&e) {
                        Some(bytes) => Ok(bytes),
                        None => return Some(Err(std::io::Error::other(e.message))),
                    }
                }
                None => {
                    self.done = true;
                    t.query_done(FRONTEND, self.running.elapsed());
                    self.encoder.finish()
                }
            };
            match out {
                Ok(bytes) if bytes.is_empty() && !self.done => continue,
                Ok(bytes) => {
                    t.bytes_out.with_label_values(&[FRONTEND]).inc_by(bytes.len() as u64);
                    return Some(Ok(bytes));
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(std::io::Error::other(e)));
                }
            }
        }
    }
}

/// Encodes batches in one of the formats, a batch at a time.
enum Encoder {
    Json { schema: SchemaRef, started: bool, rows: u64 },
    JsonLines,
    Csv { header: bool, schema: SchemaRef },
    Arrow(Box<arrow::ipc::writer::StreamWriter<Vec<u8>>>),
    Parquet(Box<parquet::arrow::ArrowWriter<Vec<u8>>>),
}

fn json_rows(batch: &RecordBatch) -> Result<Vec<u8>, String> {
    let mut w = arrow::json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, arrow::json::writer::LineDelimited>(Vec::new());
    w.write(batch).map_err(|e| e.to_string())?;
    w.finish().map_err(|e| e.to_string())?;
    Ok(w.into_inner())
}

fn type_name(dt: &arrow::datatypes::DataType) -> String {
    dt.to_string()
}

impl Encoder {
    fn new(format: Format, schema: SchemaRef) -> Result<Encoder, String> {
        Ok(match format {
            Format::Json => Encoder::Json { schema, started: false, rows: 0 },
            Format::JsonLines => Encoder::JsonLines,
            Format::Csv => Encoder::Csv { header: true, schema },
            Format::Arrow => Encoder::Arrow(Box::new(
                arrow::ipc::writer::StreamWriter::try_new(Vec::new(), &schema).map_err(|e| e.to_string())?,
            )),
            Format::Parquet => {
                // Row groups of 64 Ki rows: a row group is what streams out at once.
                let props = parquet::file::properties::WriterProperties::builder()
                    .set_compression(parquet::basic::Compression::SNAPPY)
                    .set_max_row_group_row_count(Some(65_536))
                    .build();
                Encoder::Parquet(Box::new(
                    parquet::arrow::ArrowWriter::try_new(Vec::new(), schema, Some(props)).map_err(|e| e.to_string())?,
                ))
            }
        })
    }

    fn json_prefix(schema: &SchemaRef) -> String {
        let fields: Vec<Value> = schema
            .fields()
            .iter()
            .map(|f| json!({"name": f.name(), "type": type_name(f.data_type()), "nullable": f.is_nullable()}))
            .collect();
        format!("{{\"schema\":{},\"rows\":[", Value::Array(fields))
    }

    fn batch(&mut self, batch: &RecordBatch) -> Result<Bytes, String> {
        match self {
            Encoder::Json { schema, started, rows } => {
                let mut out = Vec::new();
                if !*started {
                    out.extend_from_slice(Encoder::json_prefix(schema).as_bytes());
                    *started = true;
                }
                let lines = json_rows(batch)?;
                for line in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                    if *rows > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(line);
                    *rows += 1;
                }
                Ok(out.into())
            }
            Encoder::JsonLines => Ok(json_rows(batch)?.into()),
            Encoder::Csv { header, .. } => {
                let mut out = Vec::new();
                {
                    let mut w = arrow::csv::WriterBuilder::new()
                        .with_header(*header)
                        .with_timestamp_tz_format("%Y-%m-%dT%H:%M:%S%.3fZ".to_string())
                        .with_timestamp_format("%Y-%m-%dT%H:%M:%S%.3f".to_string())
                        .build(&mut out);
                    w.write(batch).map_err(|e| e.to_string())?;
                }
                *header = false;
                Ok(out.into())
            }
            Encoder::Arrow(w) => {
                w.write(batch).map_err(|e| e.to_string())?;
                Ok(std::mem::take(w.get_mut()).into())
            }
            Encoder::Parquet(w) => {
                w.write(batch).map_err(|e| e.to_string())?;
                Ok(std::mem::take(w.inner_mut()).into())
            }
        }
    }

    /// The bytes that end a body after an error, for formats that can carry one.
    fn error(&mut self, e: &QueryError) -> Option<Bytes> {
        let err = json!({"code": e.kind.as_str(), "message": e.message});
        match self {
            Encoder::Json { schema, started, .. } => {
                let prefix = if *started { String::new() } else { Encoder::json_prefix(schema) };
                *started = true;
                Some(format!("{prefix}],\"error\":{err}}}\n").into())
            }
            Encoder::JsonLines => Some(format!("{}\n", json!({"error": err})).into()),
            _ => None,
        }
    }

    fn finish(&mut self) -> Result<Bytes, String> {
        match self {
            Encoder::Json { schema, started, rows } => {
                let prefix = if *started { String::new() } else { Encoder::json_prefix(schema) };
                *started = true;
                Ok(format!("{prefix}],\"row_count\":{rows}}}\n").into())
            }
            Encoder::JsonLines => Ok(Bytes::new()),
            Encoder::Csv { header, schema } => {
                // An empty result still has its header line.
                if *header {
                    let empty = RecordBatch::new_empty(Arc::clone(schema));
                    return self.batch(&empty);
                }
                Ok(Bytes::new())
            }
            Encoder::Arrow(w) => {
                w.finish().map_err(|e| e.to_string())?;
                Ok(std::mem::take(w.get_mut()).into())
            }
            Encoder::Parquet(w) => {
                w.finish().map_err(|e| e.to_string())?;
                Ok(std::mem::take(w.inner_mut()).into())
            }
        }
    }
}

async fn tables(State(service): State<Arc<Service>>, headers: HeaderMap) -> Result<Response, ApiError> {
    let principal = authenticate(&service, &headers).await?;
    let snapshot = service.snapshot();
    let schema = service.schema_for(&snapshot, &principal.scope).await?;
    let mut names = schema.table_names();
    names.sort_by_key(|n| crate::access::READABLE.iter().position(|r| r == n));
    let mut out = Vec::new();
    for name in names {
        let Ok(Some(table)) = schema.table(&name).await else { continue };
        let kind = if crate::describe::is_view(&name) { "view" } else { "table" };
        let columns: Vec<Value> = table
            .schema()
            .fields()
            .iter()
            .map(|f| {
                json!({
                    "name": f.name(),
                    "type": type_name(f.data_type()),
                    "nullable": f.is_nullable(),
                    "description": crate::describe::column(&name, f.name()),
                })
            })
            .collect();
        out.push(json!({"name": name, "kind": kind, "description": crate::describe::table(&name), "columns": columns}));
    }
    for (name, args, about) in crate::describe::FUNCTIONS {
        out.push(json!({"name": name, "kind": "function", "arguments": args, "description": about}));
    }
    Ok(Json(json!({"tables": out})).into_response())
}
