//! Arrow Flight SQL: results as Arrow record batches over gRPC, for notebooks and
//! Arrow-native tools (ADBC, Polars, DBeaver's Flight SQL JDBC driver).
//!
//! The same principals and the same isolation as the other frontends: every call carries
//! `authorization: Bearer TOKEN` (a principal's token, a Microsoft Entra ID access token, or
//! the session token a `Handshake` with `Basic` credentials hands out) or
//! `authorization: Basic …`; [`Authenticate`] checks it before any handler runs, and a
//! call without valid credentials gets `UNAUTHENTICATED`. An admin may narrow a call to one
//! tenant with the `x-ccstream-tenant` header.
//!
//! | Flight SQL | ccstream |
//! |---|---|
//! | `CommandStatementQuery` | planned at `GetFlightInfo` (schema, errors), run at `DoGet`; the ticket holds the statement, so any server of the deployment can answer it |
//! | prepared statements (`CreatePreparedStatement`, `DoPut` of one parameter row, `GetFlightInfo`, `DoGet`, `ClosePreparedStatement`) | `?` or `$n` placeholders; held per principal, bounded, closed after an idle hour |
//! | `CommandGetCatalogs`, `GetDbSchemas`, `GetTables` (with schemas), `GetTableTypes`, `GetSqlInfo` | what the principal may read |
//! | updates, ingest, transactions, Substrait | refused: the server is read-only |
//!
//! Results stream batch by batch under the query's limits; a client that goes away stops
//! its query.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightServiceServer;
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionBeginTransactionRequest, ActionBeginTransactionResult, ActionClosePreparedStatementRequest,
    ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult, ActionEndTransactionRequest, Any,
    CommandGetCatalogs, CommandGetDbSchemas, CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables,
    CommandPreparedStatementQuery, CommandPreparedStatementUpdate, CommandStatementIngest, CommandStatementQuery,
    CommandStatementUpdate, DoPutPreparedStatementResult, ProstMessageExt, SqlInfo, TicketStatementQuery,
};
use arrow_flight::{
    FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse, IpcMessage, SchemaAsIpc, Ticket,
};
use datafusion::common::ScalarValue;
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio_util::either::Either;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status, Streaming};

use crate::access::{AccessError, Principal, Scope};
use crate::server::{QueryError, QueryRequest, RunningQuery, Service};
use crate::telemetry::ErrorKind;

const FRONTEND: &str = "flight";
/// The header an admin narrows a call to one tenant with.
pub const TENANT_HEADER: &str = "x-ccstream-tenant";
/// The longest statement a call may carry.
const MAX_SQL_BYTES: usize = 1 << 20;
/// The most parameters a prepared statement binds.
const MAX_PARAMS: usize = 1024;
/// Session tokens handed out by `Handshake`, and how long an unused one lives.
const MAX_SESSIONS: usize = 10_000;
const SESSION_IDLE: Duration = Duration::from_secs(8 * 3600);
/// Open prepared statements, in all and per principal, and how long an unused one lives.
const MAX_PREPARED: usize = 4096;
const MAX_PREPARED_PER_PRINCIPAL: usize = 64;
const PREPARED_IDLE: Duration = Duration::from_secs(3600);
/// The catalog and schema the tables are in (as in SQL: `datafusion.public.call_facts`).
const CATALOG: &str = "datafusion";
const SCHEMA: &str = "public";

/// Serves Flight SQL on `listener` (TLS when `tls` is given, with the `h2` ALPN) until the
/// task is dropped. At most `serve.max_connections` connections are open at once.
pub async fn serve(listener: TcpListener, service: Arc<Service>, tls: Option<tokio_rustls::TlsAcceptor>) {
    let frontend = Arc::new(FlightFrontend::new(Arc::clone(&service)));
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Conn, std::io::Error>>(16);
    let connections = Arc::new(tokio::sync::Semaphore::new(service.config.max_connections.max(1)));
    let accept = tokio::spawn(async move {
        loop {
            let (socket, peer, permit) = crate::server::accept(&listener, &connections, FRONTEND).await;
            let _ = socket.set_nodelay(true);
            let Some(acceptor) = tls.clone() else {
                if tx.send(Ok(Conn { io: Either::Left(socket), peer, _permit: permit })).await.is_err() {
                    return;
                }
                continue;
            };
            // TLS handshakes run beside the accept loop: a slow client holds up no one.
            let tx = tx.clone();
            tokio::spawn(async move {
                let io = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(socket)).await {
                    Ok(Ok(s)) => Either::Right(Box::new(s)),
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "Flight SQL TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "Flight SQL TLS handshake timed out");
                        return;
                    }
                };
                let _ = tx.send(Ok(Conn { io, peer, _permit: permit })).await;
            });
        }
    });
    let incoming = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    let auth = AuthenticateLayer { frontend: Arc::clone(&frontend) };
    let result = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .max_concurrent_streams(Some(64))
        .layer(auth)
        .add_service(
            FlightServiceServer::from_arc(frontend)
                .max_decoding_message_size(MAX_SQL_BYTES + (64 << 10))
                .max_encoding_message_size(usize::MAX),
        )
        .serve_with_incoming(incoming)
        .await;
    accept.abort();
    if let Err(e) = result {
        tracing::error!(error = %e, "the Flight SQL frontend stopped");
    }
}

/// A connection: plain TCP or TLS, holding its slot of `serve.max_connections`.
struct Conn {
    io: Io,
    peer: SocketAddr,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// Plain TCP or TLS.
type Io = Either<tokio::net::TcpStream, Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>>;

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = SocketAddr;
    fn connect_info(&self) -> SocketAddr {
        self.peer
    }
}

impl AsyncRead for Conn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Checks every call's credentials before it reaches a handler, and hands the handler the
/// [`Principal`] in the request's extensions. Nothing answers without credentials.
#[derive(Clone, Debug)]
struct AuthenticateLayer {
    frontend: Arc<FlightFrontend>,
}

impl<S> tower::Layer<S> for AuthenticateLayer {
    type Service = Authenticate<S>;
    fn layer(&self, inner: S) -> Authenticate<S> {
        Authenticate { inner, frontend: Arc::clone(&self.frontend) }
    }
}

/// The service [`AuthenticateLayer`] wraps a gRPC service in.
#[derive(Clone, Debug)]
pub struct Authenticate<S> {
    inner: S,
    frontend: Arc<FlightFrontend>,
}

impl<S, B> tower::Service<http::Request<B>> for Authenticate<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The clone that was polled ready serves this call; the new one waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let frontend = Arc::clone(&self.frontend);
        Box::pin(async move {
            let authorization = request.headers().get(http::header::AUTHORIZATION).map(|v| v.to_str());
            let result = match authorization {
                None => Err(AccessError::Missing),
                Some(Err(_)) => Err(AccessError::Invalid),
                Some(Ok(value)) => frontend.authenticate(value).await,
            };
            match result {
                Ok(principal) => {
                    request.extensions_mut().insert(principal);
                    inner.call(request).await
                }
                Err(e) => {
                    frontend.service.telemetry.auth_failed(FRONTEND);
                    let message = match e {
                        AccessError::Missing => "credentials required: authorization: Bearer TOKEN or Basic",
                        _ => "invalid credentials",
                    };
                    Ok(Status::unauthenticated(message).into_http())
                }
            }
        })
    }
}

/// What a statement ticket carries: the statement and, for an admin, the tenant it is
/// narrowed to. The caller's credentials are checked again when it is redeemed.
#[derive(Debug, Serialize, Deserialize)]
struct StatementTicket {
    sql: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tenant: Option<String>,
}

/// An open prepared statement.
#[derive(Debug)]
struct Prepared {
    owner: (String, Scope),
    sql: String,
    tenant: Option<String>,
    params: Vec<ScalarValue>,
    used: Instant,
}

/// The Flight SQL service.
pub struct FlightFrontend {
    service: Arc<Service>,
    /// Session tokens from `Handshake`: token → principal, last use.
    sessions: Mutex<HashMap<String, (Principal, Instant)>>,
    prepared: Mutex<HashMap<Vec<u8>, Prepared>>,
    sql_info: SqlInfoData,
}

impl std::fmt::Debug for FlightFrontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlightFrontend").finish_non_exhaustive()
    }
}

fn status(e: QueryError) -> Status {
    let message = e.message;
    match e.kind {
        ErrorKind::Sql | ErrorKind::ReadOnly => Status::invalid_argument(message),
        ErrorKind::Unauthenticated => Status::unauthenticated(message),
        ErrorKind::Forbidden => Status::permission_denied(message),
        ErrorKind::Timeout => Status::deadline_exceeded(message),
        ErrorKind::TooLarge => Status::resource_exhausted(message),
        ErrorKind::Busy | ErrorKind::NotReady => Status::unavailable(message),
        ErrorKind::Cancelled => Status::cancelled(message),
        ErrorKind::Internal => Status::internal(message),
    }
}

fn read_only(what: &str) -> Status {
    Status::invalid_argument(format!("ccstream serves read-only SQL: {what} is not supported"))
}

fn schema_bytes(schema: &Schema) -> Result<bytes::Bytes, Status> {
    let IpcMessage(bytes) = SchemaAsIpc::new(schema, &IpcWriteOptions::default())
        .try_into()
        .map_err(|e: arrow::error::ArrowError| Status::internal(e.to_string()))?;
    Ok(bytes)
}

/// A `FlightInfo` for `schema`, answered by a `DoGet` of `ticket` on this server.
fn flight_info(schema: &Schema, ticket: Any, descriptor: FlightDescriptor) -> Result<FlightInfo, Status> {
    Ok(FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| Status::internal(e.to_string()))?
        .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket.encode_to_vec())))
        .with_descriptor(descriptor))
}

/// The principal and requested tenant of a call ([`Authenticate`] put the principal there).
fn caller<T>(request: &Request<T>) -> Result<(Principal, Option<String>), Status> {
    let principal = request
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("credentials required"))?;
    let tenant = match request.metadata().get(TENANT_HEADER) {
        None => None,
        Some(v) => {
            Some(v.to_str().map_err(|_| Status::invalid_argument(format!("{TENANT_HEADER} must be text")))?.to_string())
        }
    };
    Ok((principal, tenant))
}

fn check_sql(sql: &str) -> Result<(), Status> {
    if sql.len() > MAX_SQL_BYTES {
        return Err(Status::invalid_argument(format!("a statement is at most {MAX_SQL_BYTES} bytes")));
    }
    Ok(())
}

type DoGetStream = Pin<Box<dyn Stream<Item = Result<arrow_flight::FlightData, Status>> + Send + 'static>>;

impl FlightFrontend {
    pub fn new(service: Arc<Service>) -> FlightFrontend {
        let mut info = SqlInfoDataBuilder::new();
        info.append(SqlInfo::FlightSqlServerName, "ccstream");
        info.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
        info.append(SqlInfo::FlightSqlServerArrowVersion, "59");
        info.append(SqlInfo::FlightSqlServerReadOnly, true);
        info.append(SqlInfo::FlightSqlServerSql, true);
        info.append(SqlInfo::FlightSqlServerSubstrait, false);
        info.append(SqlInfo::FlightSqlServerTransaction, 0i32);
        info.append(SqlInfo::FlightSqlServerCancel, false);
        info.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
        info.append(SqlInfo::SqlDdlCatalog, false);
        info.append(SqlInfo::SqlDdlSchema, false);
        info.append(SqlInfo::SqlDdlTable, false);
        let sql_info = info.build().expect("valid SQL info");
        FlightFrontend { service, sessions: Mutex::new(HashMap::new()), prepared: Mutex::new(HashMap::new()), sql_info }
    }

    /// The principal of an `authorization` value: a session token first, then what the
    /// other frontends take.
    async fn authenticate(&self, authorization: &str) -> Result<Principal, AccessError> {
        if let Some(token) = authorization.strip_prefix("Bearer ").or_else(|| authorization.strip_prefix("bearer ")) {
            let mut sessions = self.sessions.lock().expect("sessions");
            if let Some((principal, used)) = sessions.get_mut(token.trim()) {
                if used.elapsed() < SESSION_IDLE {
                    *used = Instant::now();
                    return Ok(principal.clone());
                }
                sessions.remove(token.trim());
                return Err(AccessError::Invalid);
            }
        }
        self.service.authenticate(authorization).await
    }

    /// A new session token for `principal`: the least recently used one goes when full.
    fn new_session(&self, principal: Principal) -> String {
        let token = crate::access::new_token();
        let mut sessions = self.sessions.lock().expect("sessions");
        sessions.retain(|_, (_, used)| used.elapsed() < SESSION_IDLE);
        if sessions.len() >= MAX_SESSIONS {
            if let Some(oldest) = sessions.iter().min_by_key(|(_, (_, used))| *used).map(|(k, _)| k.clone()) {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(token.clone(), (principal, Instant::now()));
        token
    }

    /// Plans `sql` (with `params`) for the caller: the result's schema, or the error.
    async fn plan(
        &self,
        principal: &Principal,
        tenant: Option<&str>,
        sql: &str,
        params: Vec<ScalarValue>,
    ) -> Result<crate::server::PreparedQuery, Status> {
        check_sql(sql)?;
        let scope = self.service.scope_for(principal, tenant).map_err(status)?;
        self.service
            .prepare(principal, &scope, QueryRequest { sql: sql.to_string(), params, ..Default::default() })
            .await
            .map_err(|e| self.failed(e))
    }

    /// Counts a failed query and turns it into a status.
    fn failed(&self, e: QueryError) -> Status {
        self.service.telemetry.query_failed(FRONTEND, e.kind);
        status(e)
    }

    /// Runs `sql` and streams its batches as Flight data.
    async fn run(
        &self,
        principal: &Principal,
        tenant: Option<&str>,
        sql: &str,
        params: Vec<ScalarValue>,
    ) -> Result<Response<DoGetStream>, Status> {
        let prepared = self.plan(principal, tenant, sql, params).await?;
        let running = prepared.start().await.map_err(|e| self.failed(e))?;
        Ok(Response::new(self.stream(running)))
    }

    fn stream(&self, running: RunningQuery) -> DoGetStream {
        let service = Arc::clone(&self.service);
        let schema = Arc::clone(&running.schema);
        let t = &service.telemetry;
        t.active_sessions.with_label_values(&[FRONTEND]).inc();
        let batches = futures::stream::unfold(
            ResultState { service: Arc::clone(&service), running, done: false },
            |mut s| async move {
                if s.done {
                    return None;
                }
                let t = &s.service.telemetry;
                match s.running.next().await {
                    Some(Ok(batch)) => {
                        t.rows_out.with_label_values(&[FRONTEND]).inc_by(batch.num_rows() as u64);
                        Some((Ok(batch), s))
                    }
                    Some(Err(e)) => {
                        s.done = true;
                        tracing::info!(error = %e, "Flight SQL query failed mid-result");
                        t.query_failed(FRONTEND, e.kind);
                        Some((Err(FlightError::Tonic(Box::new(status(e)))), s))
                    }
                    None => {
                        t.query_done(FRONTEND, s.running.elapsed());
                        None
                    }
                }
            },
        );
        let bytes_out = t.bytes_out.with_label_values(&[FRONTEND]);
        let encoded = FlightDataEncoderBuilder::new().with_schema(schema).build(batches).map(move |item| {
            item.inspect(|data| bytes_out.inc_by((data.data_header.len() + data.data_body.len()) as u64))
                .map_err(Status::from)
        });
        Box::pin(SessionGuard { inner: Box::pin(encoded), service })
    }

    /// The tables and views the caller may read, with their schemas and kinds.
    async fn tables(
        &self,
        principal: &Principal,
        tenant: Option<&str>,
    ) -> Result<Vec<(String, String, SchemaRef)>, Status> {
        let scope = self.service.scope_for(principal, tenant).map_err(status)?;
        let snapshot = self.service.snapshot();
        let schema = self.service.schema_for(&snapshot, &scope).await.map_err(status)?;
        let mut names = schema.table_names();
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            if let Ok(Some(table)) = schema.table(&name).await {
                let kind = match table.table_type() {
                    datafusion::datasource::TableType::View => "VIEW",
                    _ => "TABLE",
                };
                out.push((name, kind.to_string(), table.schema()));
            }
        }
        Ok(out)
    }

    fn batch_stream(&self, batch: Result<RecordBatch, FlightError>) -> Result<Response<DoGetStream>, Status> {
        let batch = batch.map_err(Status::from)?;
        let schema = batch.schema();
        let stream = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(futures::stream::once(async move { Ok(batch) }))
            .map_err(Status::from);
        Ok(Response::new(Box::pin(stream)))
    }

    /// The prepared statement `handle` of the caller, marked used.
    fn prepared(
        &self,
        handle: &[u8],
        principal: &Principal,
    ) -> Result<(String, Option<String>, Vec<ScalarValue>), Status> {
        let mut all = self.prepared.lock().expect("prepared statements");
        match all.get_mut(handle) {
            Some(p) if p.owner.0 == principal.name && p.owner.1 == principal.scope => {
                p.used = Instant::now();
                Ok((p.sql.clone(), p.tenant.clone(), p.params.clone()))
            }
            _ => Err(Status::not_found("no such prepared statement (closed, expired, or another principal's)")),
        }
    }
}

struct ResultState {
    service: Arc<Service>,
    running: RunningQuery,
    done: bool,
}

/// Counts a result stream in `active_sessions` while it lives.
struct SessionGuard {
    inner: DoGetStream,
    service: Arc<Service>,
}

impl Stream for SessionGuard {
    type Item = Result<arrow_flight::FlightData, Status>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.service.telemetry.active_sessions.with_label_values(&[FRONTEND]).dec();
    }
}

/// One row of parameter values from the batches a client put (the stream as it is: its
/// first message, the schema, was peeked at, and `into_inner` would drop it).
async fn parameter_row(stream: PeekableFlightDataStream) -> Result<Vec<ScalarValue>, Status> {
    let batches: Vec<RecordBatch> =
        arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(stream.map_err(FlightError::from))
            .try_collect()
            .await
            .map_err(Status::from)?;
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let Some(batch) = batches.iter().find(|b| b.num_rows() > 0) else {
        return Ok(Vec::new());
    };
    if rows > 1 {
        return Err(Status::invalid_argument(format!("a query binds one row of parameters; {rows} were given")));
    }
    if batch.num_columns() > MAX_PARAMS {
        return Err(Status::invalid_argument(format!("at most {MAX_PARAMS} parameters")));
    }
    batch
        .columns()
        .iter()
        .map(|c| ScalarValue::try_from_array(c, 0).map_err(|e| Status::invalid_argument(e.to_string())))
        .collect()
}

#[tonic::async_trait]
impl FlightSqlService for FlightFrontend {
    type FlightService = FlightFrontend;

    /// Basic credentials (checked by [`Authenticate`]) for a session token, returned in the
    /// `authorization` header as `Bearer TOKEN` for the calls that follow.
    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>, Status> {
        let (principal, _) = caller(&request)?;
        let token = self.new_session(principal);
        let reply = HandshakeResponse { protocol_version: 0, payload: token.clone().into() };
        let mut response: Response<Pin<Box<dyn Stream<Item = _> + Send>>> =
            Response::new(Box::pin(futures::stream::iter([Ok(reply)])));
        let value = MetadataValue::try_from(format!("Bearer {token}")).map_err(|e| Status::internal(e.to_string()))?;
        response.metadata_mut().insert("authorization", value);
        Ok(response)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let (principal, tenant) = caller(&request)?;
        let prepared = self.plan(&principal, tenant.as_deref(), &query.query, Vec::new()).await?;
        let ticket = StatementTicket { sql: query.query, tenant };
        let handle = serde_json::to_vec(&ticket).map_err(|e| Status::internal(e.to_string()))?;
        let ticket = TicketStatementQuery { statement_handle: handle.into() };
        Ok(Response::new(flight_info(&prepared.schema, ticket.as_any(), request.into_inner())?))
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let (principal, _) = caller(&request)?;
        let ticket: StatementTicket = serde_json::from_slice(&ticket.statement_handle)
            .map_err(|_| Status::invalid_argument("not a statement ticket of this server"))?;
        self.run(&principal, ticket.tenant.as_deref(), &ticket.sql, Vec::new()).await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let (principal, tenant) = caller(&request)?;
        let planned = self.plan(&principal, tenant.as_deref(), &query.query, Vec::new()).await?;
        let mut types: Vec<(usize, Option<DataType>)> = planned
            .parameter_types()
            .map_err(status)?
            .into_iter()
            .filter_map(|(name, t)| name.strip_prefix('$').and_then(|n| n.parse().ok()).map(|n| (n, t)))
            .collect();
        types.sort_by_key(|(n, _)| *n);
        let parameters = Schema::new(
            types
                .iter()
                .map(|(n, t)| Field::new(format!("${n}"), t.clone().unwrap_or(DataType::Null), true))
                .collect::<Vec<_>>(),
        );
        let handle = crate::access::new_token().into_bytes();
        {
            let mut all = self.prepared.lock().expect("prepared statements");
            all.retain(|_, p| p.used.elapsed() < PREPARED_IDLE);
            let mine = all.values().filter(|p| p.owner.0 == principal.name && p.owner.1 == principal.scope).count();
            if mine >= MAX_PREPARED_PER_PRINCIPAL || all.len() >= MAX_PREPARED {
                return Err(Status::resource_exhausted(format!(
                    "too many open prepared statements (at most {MAX_PREPARED_PER_PRINCIPAL} per principal); close some"
                )));
            }
            all.insert(
                handle.clone(),
                Prepared {
                    owner: (principal.name.clone(), principal.scope.clone()),
                    sql: query.query,
                    tenant,
                    params: Vec::new(),
                    used: Instant::now(),
                },
            );
        }
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle.into(),
            dataset_schema: schema_bytes(&planned.schema)?,
            parameter_schema: schema_bytes(&parameters)?,
        })
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let (principal, _) = caller(&request)?;
        self.prepared(&query.prepared_statement_handle, &principal)?;
        let params = parameter_row(request.into_inner()).await?;
        let mut all = self.prepared.lock().expect("prepared statements");
        if let Some(p) = all.get_mut(query.prepared_statement_handle.as_ref()) {
            p.params = params;
        }
        Ok(DoPutPreparedStatementResult { prepared_statement_handle: Some(query.prepared_statement_handle) })
    }

    async fn get_flight_info_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let (principal, _) = caller(&request)?;
        let (sql, tenant, params) = self.prepared(&query.prepared_statement_handle, &principal)?;
        let planned = self.plan(&principal, tenant.as_deref(), &sql, params).await?;
        Ok(Response::new(flight_info(&planned.schema, query.as_any(), request.into_inner())?))
    }

    async fn do_get_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let (principal, _) = caller(&request)?;
        let (sql, tenant, params) = self.prepared(&query.prepared_statement_handle, &principal)?;
        self.run(&principal, tenant.as_deref(), &sql, params).await
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> Result<(), Status> {
        let (principal, _) = caller(&request)?;
        self.prepared(&query.prepared_statement_handle, &principal)?;
        self.prepared.lock().expect("prepared statements").remove(query.prepared_statement_handle.as_ref());
        Ok(())
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        caller(&request)?;
        let schema = query.into_builder().schema();
        Ok(Response::new(flight_info(&schema, query.as_any(), request.into_inner())?))
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        caller(&request)?;
        let mut builder = query.into_builder();
        builder.append(CATALOG);
        self.batch_stream(builder.build())
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        caller(&request)?;
        let schema = query.clone().into_builder().schema();
        Ok(Response::new(flight_info(&schema, query.as_any(), request.into_inner())?))
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        caller(&request)?;
        let mut builder = query.into_builder();
        builder.append(CATALOG, SCHEMA);
        self.batch_stream(builder.build())
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        caller(&request)?;
        let schema = query.clone().into_builder().schema();
        Ok(Response::new(flight_info(&schema, query.as_any(), request.into_inner())?))
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let (principal, tenant) = caller(&request)?;
        let tables = self.tables(&principal, tenant.as_deref()).await?;
        let mut builder = query.into_builder();
        for (name, kind, schema) in tables {
            builder.append(CATALOG, SCHEMA, name, kind, &schema).map_err(|e| Status::internal(e.to_string()))?;
        }
        self.batch_stream(builder.build())
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        caller(&request)?;
        let schema = query.into_builder().schema();
        Ok(Response::new(flight_info(&schema, query.as_any(), request.into_inner())?))
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        caller(&request)?;
        let mut builder = query.into_builder();
        builder.append("TABLE");
        builder.append("VIEW");
        self.batch_stream(builder.build())
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        caller(&request)?;
        let schema = query.clone().into_builder(&self.sql_info).schema();
        Ok(Response::new(flight_info(&schema, query.as_any(), request.into_inner())?))
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        caller(&request)?;
        self.batch_stream(query.into_builder(&self.sql_info).build())
    }

    async fn do_put_statement_update(
        &self,
        _query: CommandStatementUpdate,
        _request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        Err(read_only("an update"))
    }

    async fn do_put_statement_ingest(
        &self,
        _query: CommandStatementIngest,
        _request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        Err(read_only("ingest"))
    }

    async fn do_put_prepared_statement_update(
        &self,
        _query: CommandPreparedStatementUpdate,
        _request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        Err(read_only("an update"))
    }

    async fn do_action_begin_transaction(
        &self,
        _query: ActionBeginTransactionRequest,
        _request: Request<arrow_flight::Action>,
    ) -> Result<ActionBeginTransactionResult, Status> {
        Err(read_only("a transaction"))
    }

    async fn do_action_end_transaction(
        &self,
        _query: ActionEndTransactionRequest,
        _request: Request<arrow_flight::Action>,
    ) -> Result<(), Status> {
        Err(read_only("a transaction"))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}
