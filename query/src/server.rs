//! The query service behind every network frontend: one current table snapshot, the
//! principals, the limits, and a runtime of its own on which queries run.
//!
//! A query ([`Service::execute`]):
//! 1. waits for a slot (at most `max_concurrent_queries` run at once; past `queue_wait_ms`
//!    it fails as [`ErrorKind::Busy`]);
//! 2. takes the current [`Snapshot`] (one Delta version of every table, for the whole
//!    query) and the principal's scoped schema for it (cached per scope and snapshot);
//! 3. is planned in a session of its own — the connection's settings, a memory pool of
//!    `query_memory_mb` that spills where DataFusion can — and refused unless it only
//!    reads (no DDL, DML, `COPY` or session statements reach DataFusion);
//! 4. runs on the query runtime, apart from the runtime that serves connections and
//!    ingests, sending batches through a channel of two: a slow client holds back its own
//!    query, never the server; a result is never held whole in memory. A query whose
//!    scans read more than `background_rows` rows (by the tables' statistics) runs on the
//!    background runtime instead, whose threads have the OS priority `background_nice`:
//!    it gets every core nobody else wants, and a dashboard's queries come first.
//!
//! The query ends at `query_timeout_s` ([`ErrorKind::Timeout`]), past `max_rows` rows
//! ([`ErrorKind::TooLarge`]), or when its receiver is dropped (the client went away or
//! cancelled). A refresh task loads new table versions every `refresh_interval_ms`; queries
//! that start after it see them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::catalog::{CatalogProvider, CatalogProviderList, SchemaProvider};
use datafusion::common::{DataFusionError, ScalarValue};
use datafusion::execution::context::{SQLOptions, SessionState};
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::sqlparser::ast::Statement;
use futures::StreamExt;
use serde::Deserialize;
use tokio::sync::{mpsc, Semaphore};

use crate::access::{AccessError, Principal, PrincipalConfig, Principals, Scope};
use crate::catalog::{scoped_schema, FixedCatalog, FixedCatalogList, Snapshot, Tables};
use crate::telemetry::{ErrorKind, Telemetry};

/// The `[serve]` section of the config file. Addresses can also come from flags.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    /// HTTP API (`/v1/sql`, `/v1/tables`, `/health`, `/ready`, `/metrics`).
    pub http_listen: Option<std::net::SocketAddr>,
    /// Postgres wire protocol.
    pub pg_listen: Option<std::net::SocketAddr>,
    /// Arrow Flight SQL (gRPC).
    pub flight_listen: Option<std::net::SocketAddr>,
    /// A PEM certificate chain and key: TLS for every frontend (required on the Postgres
    /// wire by clients with `sslmode=require`). A certificate that cannot be loaded stops
    /// the server; nothing falls back to plain text.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// A query running longer fails with a timeout.
    pub query_timeout_s: f64,
    /// Memory one query may use before it spills or fails.
    pub query_memory_mb: usize,
    /// A result with more rows fails (add a LIMIT).
    pub max_rows: u64,
    /// Queries that run at once; more wait up to `queue_wait_ms`, then fail as busy.
    pub max_concurrent_queries: usize,
    pub queue_wait_ms: u64,
    /// Threads of the query runtime.
    pub query_threads: usize,
    /// DataFusion partitions per query.
    pub target_partitions: usize,
    /// A query whose scans read more rows than this (by the tables' statistics, after
    /// pruning) runs on the background runtime (`query_threads` threads at nice
    /// `background_nice`), so heavy ad hoc queries cannot take the cores from dashboards.
    pub background_rows: u64,
    /// The nice value (0–19) of the background runtime's threads.
    pub background_nice: i32,
    /// How often to look for new table versions.
    pub refresh_interval_ms: u64,
    /// Postgres and Flight SQL connections at once, each (more are refused).
    pub max_connections: usize,
    /// Who may connect.
    pub principals: Vec<PrincipalConfig>,
    /// Microsoft Entra ID tenants whose users sign in with access tokens.
    pub entra: Vec<crate::entra::EntraConfig>,
}

impl ServeConfig {
    /// Whether any frontend has an address.
    pub fn serves_anything(&self) -> bool {
        self.http_listen.is_some() || self.pg_listen.is_some() || self.flight_listen.is_some()
    }
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            http_listen: None,
            pg_listen: None,
            flight_listen: None,
            tls_cert: None,
            tls_key: None,
            query_timeout_s: 300.0,
            query_memory_mb: 1024,
            max_rows: 100_000_000,
            max_concurrent_queries: 32,
            queue_wait_ms: 5_000,
            query_threads: 2,
            target_partitions: 2,
            background_rows: 20_000_000,
            background_nice: 19,
            refresh_interval_ms: 1_000,
            max_connections: 256,
            principals: Vec::new(),
            entra: Vec::new(),
        }
    }
}

/// Why a query failed: a kind (status, SQLSTATE, metric label) and a message for the client.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct QueryError {
    pub kind: ErrorKind,
    pub message: String,
}

impl QueryError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> QueryError {
        QueryError { kind, message: message.into() }
    }

    /// The SQLSTATE a Postgres client gets.
    pub fn sqlstate(&self) -> &'static str {
        match self.kind {
            ErrorKind::Sql => "42000",
            ErrorKind::ReadOnly => "25006",
            ErrorKind::Unauthenticated => "28P01",
            ErrorKind::Forbidden => "42501",
            ErrorKind::Timeout => "57014",
            ErrorKind::TooLarge => "54000",
            ErrorKind::Busy => "53300",
            ErrorKind::NotReady => "57P03",
            ErrorKind::Cancelled => "57014",
            ErrorKind::Internal => "XX000",
        }
    }
}

impl From<DataFusionError> for QueryError {
    fn from(e: DataFusionError) -> Self {
        let kind = match e.find_root() {
            DataFusionError::ResourcesExhausted(_) => ErrorKind::TooLarge,
            DataFusionError::Internal(_) | DataFusionError::IoError(_) | DataFusionError::ObjectStore(_) => {
                ErrorKind::Internal
            }
            _ => ErrorKind::Sql,
        };
        let message = match e.find_root() {
            DataFusionError::ResourcesExhausted(m) => {
                format!("the query needs more memory than serve.query_memory_mb allows: {m}")
            }
            _ => e.to_string(),
        };
        QueryError { kind, message: message.replace('\n', " ") }
    }
}

impl From<crate::Error> for QueryError {
    fn from(e: crate::Error) -> Self {
        match e {
            crate::Error::DataFusion(e) => QueryError::from(*e),
            other => QueryError::new(ErrorKind::Internal, other.to_string()),
        }
    }
}

/// What a running query sends: its schema first, then batches.
#[derive(Debug)]
pub struct RunningQuery {
    pub schema: SchemaRef,
    batches: mpsc::Receiver<Result<RecordBatch, QueryError>>,
    task: tokio::task::AbortHandle,
    started: Instant,
}

impl RunningQuery {
    /// The next batch; `None` at the end.
    pub async fn next(&mut self) -> Option<Result<RecordBatch, QueryError>> {
        self.batches.recv().await
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

impl Drop for RunningQuery {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One query: what, with which parameters, under which session settings.
#[derive(Debug, Clone, Default)]
pub struct QueryRequest {
    pub sql: String,
    /// The statement already parsed (the Postgres frontend parses with its client
    /// compatibility rules); planned instead of `sql` when given.
    pub parsed: Option<Box<datafusion::sql::sqlparser::ast::Statement>>,
    /// Values of `$1`, `$2`, …; cast to the types the plan infers for them.
    pub params: Vec<ScalarValue>,
    /// DataFusion settings of the connection (`datafusion.execution.time_zone`, …).
    pub settings: Vec<(String, String)>,
    /// Which frontend's functions and catalog the query sees.
    pub dialect: Dialect,
}

/// The functions and catalog schemas a session has beside the tables.
#[derive(Debug, Clone, Default)]
pub enum Dialect {
    /// ccstream's functions and `information_schema`.
    #[default]
    Plain,
    /// Also `pg_catalog`, PostgreSQL's catalog functions, `version()` in PostgreSQL's form
    /// and `current_setting()` over these connection settings.
    Postgres(Arc<std::collections::BTreeMap<String, String>>),
}

/// The Postgres catalog's parts that are built once: its static tables (about a hundred
/// embedded tables, parsed once) and a planner with its functions.
#[derive(Debug)]
struct PgParts {
    planner: SessionState,
    static_tables: Arc<datafusion_pg_catalog::pg_catalog::PgCatalogStaticTables>,
}

/// Values cached per key for one snapshot generation.
type ByGeneration<K, V> = Mutex<HashMap<K, (u64, V)>>;

/// The query service. Cheap to share (`Arc`); dropping it stops the query runtime.
#[derive(Debug)]
pub struct Service {
    pub config: ServeConfig,
    pub principals: Principals,
    pub entra: crate::entra::Entra,
    pub telemetry: Arc<Telemetry>,
    tables: tokio::sync::Mutex<Tables>,
    snapshot: RwLock<Arc<Snapshot>>,
    schemas: ByGeneration<Scope, Arc<dyn SchemaProvider>>,
    /// The catalogs sessions of a scope use, per dialect (`true`: Postgres), for one
    /// snapshot: built once, so the Postgres catalog's OIDs stay the same between the
    /// queries of a client (psql's `\d` looks a table up by the OID an earlier query gave).
    catalogs: ByGeneration<(Scope, bool), Arc<dyn CatalogProviderList>>,
    planner: SessionState,
    pg: std::sync::OnceLock<PgParts>,
    runtime: Arc<RuntimeEnv>,
    slots: Arc<Semaphore>,
    /// The query runtime and the background runtime (see the module's docs).
    runtimes: Mutex<Vec<tokio::runtime::Runtime>>,
    exec_handle: tokio::runtime::Handle,
    background_handle: tokio::runtime::Handle,
}

impl Drop for Service {
    fn drop(&mut self) {
        for rt in self.runtimes.lock().map(|mut g| std::mem::take(&mut *g)).unwrap_or_default() {
            rt.shutdown_background();
        }
    }
}

/// A multi-threaded runtime named `name` whose threads run at `nice` (0: as the process).
fn query_runtime(name: &str, threads: usize, nice: i32) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name(name)
        .on_thread_start(move || {
            if nice != 0 {
                lower_thread_priority(nice)
            }
        })
        .enable_all()
        .build()
}

/// Sets the calling thread's nice value (Linux keeps one per thread). A failure is logged:
/// the thread then runs at the process's priority.
fn lower_thread_priority(nice: i32) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain syscalls on the calling thread's own id; no memory is shared.
        let rc = unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, nice)
        };
        if rc != 0 {
            tracing::warn!(nice, error = %std::io::Error::last_os_error(), "could not lower a background query thread's priority");
        }
    }
    #[cfg(not(target_os = "linux"))]
    tracing::debug!(nice, "thread priorities are per process here; background queries run at normal priority");
}

/// The rows a physical plan's scans read, by their statistics (exact or estimated, after
/// file pruning); scans without statistics count zero.
pub fn scanned_rows(plan: &Arc<dyn datafusion::physical_plan::ExecutionPlan>) -> u64 {
    use datafusion::physical_plan::statistics::{StatisticsArgs, StatisticsContext};
    fn walk(plan: &Arc<dyn datafusion::physical_plan::ExecutionPlan>, stats: &StatisticsContext) -> u64 {
        let children = plan.children();
        if !children.is_empty() {
            return children.into_iter().map(|c| walk(c, stats)).fold(0, u64::saturating_add);
        }
        stats
            .compute(plan.as_ref(), &StatisticsArgs::new())
            .ok()
            .and_then(|s| s.num_rows.get_value().copied())
            .map_or(0, |n| n as u64)
    }
    walk(plan, &StatisticsContext::new())
}

/// The next connection on `listener` that gets one of `slots` (at most
/// `serve.max_connections` open per frontend): connections past the cap are closed at once,
/// and accept errors (out of file descriptors and the like) wait, doubling from 5 ms to 1 s,
/// instead of spinning.
pub async fn accept(
    listener: &tokio::net::TcpListener,
    slots: &Arc<Semaphore>,
    frontend: &str,
) -> (tokio::net::TcpStream, std::net::SocketAddr, tokio::sync::OwnedSemaphorePermit) {
    let mut backoff = Duration::from_millis(5);
    loop {
        match listener.accept().await {
            Ok((socket, peer)) => match Arc::clone(slots).try_acquire_owned() {
                Ok(permit) => return (socket, peer, permit),
                Err(_) => tracing::warn!(%peer, frontend, "refusing a connection: serve.max_connections reached"),
            },
            Err(e) => {
                tracing::warn!(error = %e, frontend, "accepting a connection failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// A session with ccstream's functions, for planning.
pub fn planner_state(target_partitions: usize) -> SessionState {
    let config = SessionConfig::new()
        .with_information_schema(true)
        .with_target_partitions(target_partitions.max(1))
        .set_str("datafusion.sql_parser.enable_ident_normalization", "true");
    let ctx = SessionContext::new_with_config(config);
    crate::functions::register(&ctx);
    ctx.state()
}

impl Service {
    /// Opens the tables at `location` and starts the query runtime. Errors if a principal
    /// is invalid or the tables cannot be read.
    pub async fn open(location: &str, config: ServeConfig, telemetry: Arc<Telemetry>) -> crate::Result<Arc<Service>> {
        if !(0..=19).contains(&config.background_nice) {
            return Err(crate::Error::Location {
                location: "[serve]".into(),
                reason: format!("background_nice must be 0 to 19, not {}", config.background_nice),
            });
        }
        for (key, v) in [("query_timeout_s", config.query_timeout_s)] {
            if !v.is_finite() || v <= 0.0 || v > 1e9 {
                return Err(crate::Error::Location {
                    location: "[serve]".into(),
                    reason: format!("{key} must be a number of seconds > 0, not {v}"),
                });
            }
        }
        let principals = Principals::new(&config.principals)
            .map_err(|e| crate::Error::Location { location: "[serve.principals]".into(), reason: e.to_string() })?;
        let entra = crate::entra::Entra::new(config.entra.clone())
            .map_err(|e| crate::Error::Location { location: "[serve.entra]".into(), reason: e.to_string() })?;
        let tables = Tables::open(location).await?;
        let planner = planner_state(config.target_partitions);
        tables.register_stores(&planner)?;
        let runtime = Arc::clone(planner.runtime_env());
        let snapshot = Arc::new(tables.snapshot().await?);
        telemetry.snapshot_generation.set(snapshot.generation as i64 + 1);
        let runtime_error = |e: std::io::Error| crate::Error::Location {
            location: location.into(),
            reason: format!("query runtime: {e}"),
        };
        let exec = query_runtime("ccstream-query", config.query_threads, 0).map_err(runtime_error)?;
        let background =
            query_runtime("ccstream-bg", config.query_threads, config.background_nice).map_err(runtime_error)?;
        let exec_handle = exec.handle().clone();
        let background_handle = background.handle().clone();
        Ok(Arc::new(Service {
            slots: Arc::new(Semaphore::new(config.max_concurrent_queries.max(1))),
            config,
            principals,
            entra,
            telemetry,
            tables: tokio::sync::Mutex::new(tables),
            snapshot: RwLock::new(snapshot),
            schemas: Mutex::new(HashMap::new()),
            catalogs: Mutex::new(HashMap::new()),
            planner,
            pg: std::sync::OnceLock::new(),
            runtime,
            runtimes: Mutex::new(vec![exec, background]),
            exec_handle,
            background_handle,
        }))
    }

    /// The snapshot queries start from now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&self.snapshot.read().expect("snapshot lock"))
    }

    /// Loads new table versions, if any, into a new snapshot. Returns whether it did.
    pub async fn refresh(&self) -> crate::Result<bool> {
        let started = Instant::now();
        let mut tables = self.tables.lock().await;
        let changed = tables.refresh().await?;
        if changed {
            tables.register_stores(&self.planner)?;
            let snapshot = Arc::new(tables.snapshot().await?);
            self.telemetry.snapshot_generation.set(snapshot.generation as i64 + 1);
            *self.snapshot.write().expect("snapshot lock") = snapshot;
            self.schemas.lock().expect("schema cache").clear();
            self.catalogs.lock().expect("catalog cache").clear();
        }
        self.telemetry.refresh_duration.observe(started.elapsed().as_secs_f64());
        Ok(changed)
    }

    /// Refreshes every `refresh_interval_ms` until the service is dropped.
    pub fn spawn_refresh(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        let every = Duration::from_millis(self.config.refresh_interval_ms.max(10));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(service) = weak.upgrade() else { return };
                if let Err(e) = service.refresh().await {
                    tracing::warn!(error = %e, "loading new table versions failed; queries keep the last snapshot");
                }
            }
        })
    }

    /// The schema `scope` resolves names in, for `snapshot` (built once per scope and
    /// snapshot).
    pub async fn schema_for(&self, snapshot: &Snapshot, scope: &Scope) -> Result<Arc<dyn SchemaProvider>, QueryError> {
        if let Some((generation, schema)) = self.schemas.lock().expect("schema cache").get(scope) {
            if *generation == snapshot.generation {
                return Ok(Arc::clone(schema));
            }
        }
        let schema = scoped_schema(snapshot, scope, &self.planner).await?;
        let mut cache = self.schemas.lock().expect("schema cache");
        if cache.len() > 1024 {
            cache.clear();
        }
        cache.insert(scope.clone(), (snapshot.generation, Arc::clone(&schema)));
        Ok(schema)
    }

    /// The catalog a session of `scope` sees: `public` (the scoped schema) and, for
    /// Postgres, `pg_catalog` and PostgreSQL's `information_schema` over the same catalog.
    async fn catalog_list(&self, scope: &Scope, pg: bool) -> Result<Arc<dyn CatalogProviderList>, QueryError> {
        let snapshot = self.snapshot();
        let key = (scope.clone(), pg);
        if let Some((generation, list)) = self.catalogs.lock().expect("catalog cache").get(&key) {
            if *generation == snapshot.generation {
                return Ok(Arc::clone(list));
            }
        }
        let public = self.schema_for(&snapshot, scope).await?;
        let catalog = Arc::new(FixedCatalog::default());
        catalog.register_schema("public", public)?;
        let list: Arc<dyn CatalogProviderList> = Arc::new(FixedCatalogList::new("datafusion", catalog.clone()));
        if pg {
            let parts = self.pg_parts()?;
            let provider = datafusion_pg_catalog::pg_catalog::PgCatalogSchemaProvider::try_new(
                crate::pg::WeakCatalogs(Arc::downgrade(&list)),
                Arc::clone(&parts.static_tables),
                datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider,
            )?;
            catalog.register_schema("pg_catalog", Arc::new(provider))?;
            catalog.register_schema(
                "information_schema",
                Arc::new(crate::pg::information_schema::PgInformationSchema::new(Arc::downgrade(&list))),
            )?;
        }
        let mut cache = self.catalogs.lock().expect("catalog cache");
        if cache.len() > 1024 {
            cache.clear();
        }
        cache.insert(key, (snapshot.generation, Arc::clone(&list)));
        Ok(list)
    }

    fn pg_parts(&self) -> Result<&PgParts, QueryError> {
        if let Some(p) = self.pg.get() {
            return Ok(p);
        }
        let ctx = SessionContext::new_with_state(planner_state(self.config.target_partitions));
        datafusion_pg_catalog::pg_catalog::setup_pg_catalog(
            &ctx,
            "datafusion",
            datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider,
        )
        .map_err(|e| QueryError::from(*e))?;
        ctx.register_udf(crate::pg::version_udf());
        let static_tables =
            Arc::new(datafusion_pg_catalog::pg_catalog::PgCatalogStaticTables::try_new().map_err(QueryError::from)?);
        let _ = self.pg.set(PgParts { planner: ctx.state(), static_tables });
        Ok(self.pg.get().expect("just set"))
    }

    /// A session for one query of `scope`: its own settings and memory pool, the scoped
    /// schema as `datafusion.public`, and for the Postgres dialect `pg_catalog` over the
    /// same catalog (so it lists only what the principal may read).
    pub async fn session(
        &self,
        scope: &Scope,
        settings: &[(String, String)],
        dialect: &Dialect,
    ) -> Result<SessionState, QueryError> {
        let planner = match dialect {
            Dialect::Plain => &self.planner,
            Dialect::Postgres(_) => &self.pg_parts()?.planner,
        };
        let list = self.catalog_list(scope, matches!(dialect, Dialect::Postgres(_))).await?;
        let mut config = planner.config().clone();
        if let Dialect::Postgres(_) = dialect {
            // PostgreSQL's information_schema (above) instead of DataFusion's.
            config.options_mut().catalog.information_schema = false;
        }
        for (k, v) in settings {
            config.options_mut().set(k, v)?;
        }
        // A memory pool of the query's own; the disk manager, the object stores and the
        // caches (Parquet footers, file listings) are the server's, shared by every query.
        let rt = Arc::new(RuntimeEnv {
            memory_pool: Arc::new(FairSpillPool::new(self.config.query_memory_mb.max(1) << 20)),
            disk_manager: Arc::clone(&self.runtime.disk_manager),
            cache_manager: Arc::clone(&self.runtime.cache_manager),
            object_store_registry: Arc::clone(&self.runtime.object_store_registry),
        });
        let mut state = SessionStateBuilder::new_from_existing(planner.clone())
            .with_config(config)
            .with_runtime_env(rt)
            .with_catalog_list(list)
            .build();
        if let Dialect::Postgres(settings) = dialect {
            use datafusion::execution::FunctionRegistry;
            state.register_udf(Arc::new(datafusion::logical_expr::ScalarUDF::new_from_impl(
                crate::pg::CurrentSetting::new(Arc::clone(settings)),
            )))?;
        }
        Ok(state)
    }

    /// Plans `request` in `state` — its parameters bound as literals first, so they may
    /// stand anywhere a constant may, table function arguments included — and refuses
    /// anything but a read.
    pub async fn plan(&self, state: &SessionState, request: &QueryRequest) -> Result<LogicalPlan, QueryError> {
        let statement = match &request.parsed {
            Some(stmt) => datafusion::sql::parser::Statement::Statement(stmt.clone()),
            None => {
                let dialect = state.config().options().sql_parser.dialect;
                state.sql_to_statement(&request.sql, &dialect)?
            }
        };
        let statement = match statement {
            datafusion::sql::parser::Statement::Statement(mut stmt) => {
                bind(&mut stmt, &request.params)?;
                datafusion::sql::parser::Statement::Statement(stmt)
            }
            other if request.params.is_empty() => other,
            _ => return Err(QueryError::new(ErrorKind::Sql, "parameters bind in queries only")),
        };
        let plan = state.statement_to_plan(statement).await?;
        read_only(&plan)?;
        Ok(plan)
    }

    /// Plans `request` for `principal` in a session of `scope`: the schema is known, nothing
    /// runs and no slot is taken until [`PreparedQuery::start`].
    pub async fn prepare(
        self: &Arc<Self>,
        principal: &Principal,
        scope: &Scope,
        request: QueryRequest,
    ) -> Result<PreparedQuery, QueryError> {
        let started = Instant::now();
        tracing::debug!(principal = %principal.name, sql = %request.sql, "query");
        let state = self.session(scope, &request.settings, &request.dialect).await?;
        let plan = self.plan(&state, &request).await?;
        if scope.tenants.is_some() {
            if let LogicalPlan::Analyze(_) = &plan {
                // Its scan metrics count the rows below the tenant condition.
                return Err(QueryError::new(
                    ErrorKind::Forbidden,
                    "EXPLAIN ANALYZE is for principals of every tenant; EXPLAIN shows the plan",
                ));
            }
        }
        let schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
        Ok(PreparedQuery { service: Arc::clone(self), schema, state, plan, started })
    }

    /// The principal of an `Authorization` header's value: `Bearer TOKEN` (a principal's
    /// token, or a Microsoft Entra ID access token when `[[serve.entra]]` is configured) or
    /// `Basic` (name and password). The slow hashes run off the async workers.
    pub async fn authenticate(self: &Arc<Self>, authorization: &str) -> Result<Principal, AccessError> {
        let (scheme, rest) = authorization.split_once(' ').ok_or(AccessError::Invalid)?;
        let (scheme, rest) = (scheme.to_string(), rest.trim().to_string());
        if scheme.eq_ignore_ascii_case("bearer") {
            if crate::entra::looks_like_jwt(&rest) && !self.entra.is_empty() {
                return self.entra.verify(&rest).await;
            }
            // A token verified lately needs no trip to the blocking pool.
            if let Some(principal) = self.principals.cached_token(&rest) {
                return Ok(principal);
            }
        }
        let service = Arc::clone(self);
        let check = move || -> Result<Principal, AccessError> {
            if scheme.eq_ignore_ascii_case("bearer") {
                service.principals.check_token(&rest)
            } else if scheme.eq_ignore_ascii_case("basic") {
                use base64::engine::{general_purpose, DecodePaddingMode, GeneralPurpose};
                use base64::Engine as _;
                // Padded or not: Go's gRPC clients (ADBC's Flight SQL driver) leave it off.
                const BASE64: GeneralPurpose = GeneralPurpose::new(
                    &base64::alphabet::STANDARD,
                    general_purpose::PAD.with_decode_padding_mode(DecodePaddingMode::Indifferent),
                );
                let raw = BASE64.decode(rest.as_bytes()).map_err(|_| AccessError::Invalid)?;
                let text = String::from_utf8(raw).map_err(|_| AccessError::Invalid)?;
                let (name, password) = text.split_once(':').ok_or(AccessError::Invalid)?;
                service.principals.check_password(name, password)
            } else {
                Err(AccessError::Invalid)
            }
        };
        tokio::task::spawn_blocking(check).await.map_err(|_| AccessError::Invalid)?
    }

    /// The scope a request of `principal` runs in: its own, or for an admin one tenant of
    /// its choice.
    pub fn scope_for(&self, principal: &Principal, tenant: Option<&str>) -> Result<Scope, QueryError> {
        match tenant {
            None => Ok(principal.scope.clone()),
            Some(tenant) if principal.scope.role == crate::access::Role::Admin => {
                principal.scope.narrowed_to(tenant).map_err(|e| QueryError::new(ErrorKind::Forbidden, e.to_string()))
            }
            Some(_) => Err(QueryError::new(ErrorKind::Forbidden, "only admins choose a tenant; others see their own")),
        }
    }

    /// Plans and starts `request` for `principal`: its schema and a stream of batches.
    pub async fn execute(
        self: &Arc<Self>,
        principal: &Principal,
        scope: &Scope,
        request: QueryRequest,
    ) -> Result<RunningQuery, QueryError> {
        self.prepare(principal, scope, request).await?.start().await
    }
}

/// A planned query, not yet running.
#[derive(Debug)]
pub struct PreparedQuery {
    service: Arc<Service>,
    pub schema: SchemaRef,
    state: SessionState,
    plan: LogicalPlan,
    started: Instant,
}

/// Counts a running query in `active_queries` for as long as its task lives (aborted or
/// not).
struct ActiveQuery(Arc<Telemetry>);

impl ActiveQuery {
    fn new(t: Arc<Telemetry>) -> ActiveQuery {
        t.active_queries.inc();
        ActiveQuery(t)
    }
}

impl Drop for ActiveQuery {
    fn drop(&mut self) {
        self.0.active_queries.dec();
    }
}

impl PreparedQuery {
    /// The types the plan infers for its placeholders (`$1` → `Int64`, …; `None` where
    /// nothing says).
    pub fn parameter_types(&self) -> Result<HashMap<String, Option<arrow::datatypes::DataType>>, QueryError> {
        Ok(self.plan.get_parameter_types()?)
    }

    /// Waits for a slot (at most `queue_wait_ms`) and starts the query on the query runtime.
    pub async fn start(self) -> Result<RunningQuery, QueryError> {
        let PreparedQuery { service, schema, state, plan, started } = self;
        let wait = Duration::from_millis(service.config.queue_wait_ms);
        let permit = match tokio::time::timeout(wait, Arc::clone(&service.slots).acquire_owned()).await {
            Ok(Ok(p)) => p,
            _ => {
                return Err(QueryError::new(
                    ErrorKind::Busy,
                    format!(
                        "too many concurrent queries (serve.max_concurrent_queries = {}); retry later",
                        service.config.max_concurrent_queries
                    ),
                ))
            }
        };
        let (tx, rx) = mpsc::channel(2);
        let timeout = Duration::from_secs_f64(service.config.query_timeout_s);
        let max_rows = service.config.max_rows;
        let telemetry = Arc::clone(&service.telemetry);
        let background = service.background_handle.clone();
        let background_rows = service.config.background_rows;
        let task = service.exec_handle.spawn(async move {
            let active = ActiveQuery::new(Arc::clone(&telemetry));
            let run = async {
                let physical = state.create_physical_plan(&plan).await?;
                let rows = scanned_rows(&physical);
                tracing::debug!(scanned_rows = rows, background = rows > background_rows, "query planned");
                if rows <= background_rows {
                    return forward(physical, state.task_ctx(), &tx, max_rows).await;
                }
                telemetry.background_queries.inc();
                // Executed there, so every task the plan spawns runs there too; aborted with
                // this task (cancel, timeout).
                let (tx, ctx) = (tx.clone(), state.task_ctx());
                let task = tokio_util::task::AbortOnDropHandle::new(
                    background.spawn(async move { forward(physical, ctx, &tx, max_rows).await }),
                );
                task.await.map_err(|e| QueryError::new(ErrorKind::Internal, format!("the query task failed: {e}")))?
            };
            // The time limit covers waiting on a slow client too: a slot is never held longer.
            let outcome = match tokio::time::timeout(timeout, run).await {
                Ok(r) => r,
                Err(_) => Err(QueryError::new(
                    ErrorKind::Timeout,
                    format!("the query ran longer than serve.query_timeout_s = {} s", timeout.as_secs_f64()),
                )),
            };
            // The slot frees before the error is handed over (to a client that may not read).
            drop(permit);
            drop(active);
            if let Err(e) = outcome {
                let _ = tokio::time::timeout(Duration::from_secs(5), tx.send(Err(e))).await;
            }
        });
        Ok(RunningQuery { schema, batches: rx, task: task.abort_handle(), started })
    }
}

/// Executes `plan` and sends its batches to `tx` until it ends, fails, passes `max_rows`
/// rows, or the receiver goes away.
async fn forward(
    plan: Arc<dyn datafusion::physical_plan::ExecutionPlan>,
    ctx: Arc<datafusion::execution::TaskContext>,
    tx: &mpsc::Sender<Result<RecordBatch, QueryError>>,
    max_rows: u64,
) -> Result<(), QueryError> {
    let mut stream = datafusion::physical_plan::execute_stream(plan, ctx)?;
    let mut rows: u64 = 0;
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        rows += batch.num_rows() as u64;
        if rows > max_rows {
            return Err(QueryError::new(
                ErrorKind::TooLarge,
                format!("the result has more than serve.max_rows = {max_rows} rows; add a LIMIT or aggregate"),
            ));
        }
        if tx.send(Ok(batch)).await.is_err() {
            return Err(QueryError::new(ErrorKind::Cancelled, "the client went away"));
        }
    }
    Ok(())
}

/// Refuses plans that change anything: DDL, DML (`INSERT`, `COPY`), and session statements
/// (`SET`, transactions, `PREPARE`), which the frontends answer themselves.
pub fn read_only(plan: &LogicalPlan) -> Result<(), QueryError> {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
        .verify_plan(plan)
        .map_err(|e| {
            QueryError::new(
                ErrorKind::ReadOnly,
                format!(
                    "ccstream serves read-only SQL: {}",
                    e.to_string().trim_start_matches("Error during planning: ")
                ),
            )
        })
}

/// Numbers JDBC/ODBC-style `?` placeholders `$1`, `$2`, … in the order they appear (Flight
/// SQL and ADBC clients write `?`; the planner takes `$n`).
fn number_positional(stmt: &mut Statement) {
    use datafusion::sql::sqlparser::ast::{visit_expressions_mut, Expr, Value};
    use std::ops::ControlFlow;
    let mut next = 0usize;
    let _ = visit_expressions_mut(stmt, |e| {
        if let Expr::Value(v) = e {
            if let Value::Placeholder(p) = &mut v.value {
                if p == "?" {
                    next += 1;
                    *p = format!("${next}");
                }
            }
        }
        ControlFlow::<()>::Continue(())
    });
}

/// Replaces `$1`, `$2`, … in `stmt` by the literals of `params` (`params[0]` for `$1`).
/// With no params, placeholders stay (for planning a prepared statement's types).
pub fn bind(stmt: &mut Statement, params: &[ScalarValue]) -> Result<(), QueryError> {
    use datafusion::sql::sqlparser::ast::{visit_expressions_mut, Expr, Value};
    use std::ops::ControlFlow;
    number_positional(stmt);
    if params.is_empty() {
        return Ok(());
    }
    let mut used = vec![false; params.len()];
    let flow = visit_expressions_mut(stmt, |e| {
        let Expr::Value(v) = e else { return ControlFlow::Continue(()) };
        let Value::Placeholder(p) = &v.value else { return ControlFlow::Continue(()) };
        let Some(i) =
            p.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()).filter(|i| (1..=params.len()).contains(i))
        else {
            return ControlFlow::Break(QueryError::new(
                ErrorKind::Sql,
                format!("parameter {p} has no value ({} given)", params.len()),
            ));
        };
        used[i - 1] = true;
        match literal(&params[i - 1]) {
            Ok(lit) => {
                *e = lit;
                ControlFlow::Continue(())
            }
            Err(err) => ControlFlow::Break(err),
        }
    });
    if let ControlFlow::Break(e) = flow {
        return Err(e);
    }
    if let Some(i) = used.iter().position(|u| !u) {
        return Err(QueryError::new(ErrorKind::Sql, format!("parameter ${} is not used by the statement", i + 1)));
    }
    Ok(())
}

/// A value as a SQL literal expression.
fn literal(v: &ScalarValue) -> Result<datafusion::sql::sqlparser::ast::Expr, QueryError> {
    use datafusion::sql::sqlparser::ast::{Expr, Value};
    let text = |s: String| Ok(Expr::value(Value::SingleQuotedString(s)));
    let number = |s: String| Ok(Expr::value(Value::Number(s, false)));
    let typed = |sql: String| -> Result<Expr, QueryError> {
        let dialect = datafusion::sql::sqlparser::dialect::GenericDialect {};
        datafusion::sql::sqlparser::parser::Parser::new(&dialect)
            .try_with_sql(&sql)
            .and_then(|mut p| p.parse_expr())
            .map_err(|e| QueryError::new(ErrorKind::Internal, format!("binding a parameter: {e}")))
    };
    if v.is_null() {
        return Ok(Expr::value(Value::Null));
    }
    match v {
        ScalarValue::Boolean(Some(b)) => Ok(Expr::value(Value::Boolean(*b))),
        ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s)) | ScalarValue::Utf8View(Some(s)) => {
            text(s.clone())
        }
        ScalarValue::Int8(Some(i)) => number(i.to_string()),
        ScalarValue::Int16(Some(i)) => number(i.to_string()),
        ScalarValue::Int32(Some(i)) => number(i.to_string()),
        ScalarValue::Int64(Some(i)) => number(i.to_string()),
        ScalarValue::Float32(Some(f)) if f.is_finite() => number(format!("{f:?}")),
        ScalarValue::Float64(Some(f)) if f.is_finite() => number(format!("{f:?}")),
        ScalarValue::Float32(Some(f)) => typed(format!("CAST('{f}' AS DOUBLE)")),
        ScalarValue::Float64(Some(f)) => typed(format!("CAST('{f}' AS DOUBLE)")),
        ScalarValue::Date32(Some(_)) => typed(format!("CAST('{v}' AS DATE)")),
        ScalarValue::TimestampMicrosecond(Some(us), tz) => {
            let t = chrono::DateTime::from_timestamp_micros(*us)
                .ok_or_else(|| QueryError::new(ErrorKind::Sql, "a timestamp parameter is out of range"))?
                .format("%Y-%m-%dT%H:%M:%S%.6f");
            match tz {
                Some(_) => typed(format!("arrow_cast('{t}Z', 'Timestamp(Microsecond, Some(\"UTC\"))')")),
                None => typed(format!("arrow_cast('{t}', 'Timestamp(Microsecond, None)')")),
            }
        }
        other => {
            Err(QueryError::new(ErrorKind::Sql, format!("a parameter of type {} cannot be bound", other.data_type())))
        }
    }
}
