//! The tables a query sees: one consistent version of every Delta table ([`Snapshot`]),
//! refreshed as new versions are committed ([`Tables::refresh`]), and the schema a
//! principal's queries resolve names in ([`scoped_schema`]).
//!
//! Invariants:
//! - A [`Snapshot`] never changes: its providers are bound to one Delta version each, so a
//!   query that took a snapshot sees the same rows for its whole run, however many commits
//!   land meanwhile.
//! - Tenant isolation lives here, under the table scans: for a principal limited to some
//!   tenants, every base table is registered as a [`ScopedTable`] — the Delta scan with
//!   `tenant_id IN (…)` (and, for supervisors with queues, the queue condition) above it,
//!   behind a barrier no predicate of the query crosses — and the views and table functions
//!   are planned over those scoped tables. The raw
//!   providers are never registered in such a principal's schema, so no SQL (joins,
//!   subqueries, CTEs, `UNION`, `EXPLAIN`, table functions, `information_schema`) can name
//!   them. A table without a tenant column (`dead_letters`) is visible only to principals
//!   of every tenant.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use ccstream_schemas::{
    TABLES, TABLE_AGENT_LEGS, TABLE_CALL_FACTS, TABLE_EVENTS, TABLE_INTERVAL_PARTIALS, VIEW_AGENT_DAY_METRICS,
    VIEW_AGENT_OCCUPANCY, VIEW_AGENT_STATE_TIME, VIEW_INTERVAL_METRICS, VIEW_MEDIA_STREAMS, VIEW_SBC_LEGS,
};
use datafusion::catalog::{CatalogProvider, CatalogProviderList, SchemaProvider, Session, TableProvider};
use datafusion::common::JoinType;
use datafusion::datasource::{provider_as_source, ViewTable};
use datafusion::error::Result as DfResult;
use datafusion::execution::context::{SessionContext, SessionState};
use datafusion::logical_expr::{
    col, lit, Expr, LogicalPlan, LogicalPlanBuilder, TableProviderFilterPushDown, TableType,
};
use datafusion::physical_plan::ExecutionPlan;
use deltalake::{DeltaTable, DeltaTableError};
use url::Url;

use crate::access::Scope;
use crate::engine::{
    AGENT_DAY_METRICS_SQL, AGENT_OCCUPANCY_SQL, AGENT_STATE_TIME_SQL, INTERVAL_METRICS_SQL, MEDIA_STREAMS_SQL,
    SBC_LEGS_SQL,
};
use crate::{Error, Result};

/// The views, in creation order, each with the tables it needs.
pub const VIEWS: [(&str, &str, &[&str]); 6] = [
    (VIEW_INTERVAL_METRICS, INTERVAL_METRICS_SQL, &[TABLE_INTERVAL_PARTIALS]),
    (VIEW_AGENT_DAY_METRICS, AGENT_DAY_METRICS_SQL, &[TABLE_AGENT_LEGS]),
    (VIEW_SBC_LEGS, SBC_LEGS_SQL, &[TABLE_EVENTS]),
    (VIEW_MEDIA_STREAMS, MEDIA_STREAMS_SQL, &[TABLE_EVENTS]),
    (VIEW_AGENT_STATE_TIME, AGENT_STATE_TIME_SQL, &[TABLE_EVENTS]),
    (VIEW_AGENT_OCCUPANCY, AGENT_OCCUPANCY_SQL, &[TABLE_EVENTS, TABLE_AGENT_LEGS]),
];

/// The Delta tables of one data location, kept open to be refreshed.
#[derive(Debug)]
pub struct Tables {
    root: Url,
    open: Vec<(&'static str, DeltaTable)>,
    generation: u64,
}

/// One version of every table: what a query reads.
#[derive(Debug)]
pub struct Snapshot {
    /// Increases with every refresh that found a new version of some table.
    pub generation: u64,
    /// The tables found, with their Delta versions.
    pub versions: Vec<(&'static str, i64)>,
    providers: HashMap<&'static str, Arc<dyn TableProvider>>,
}

impl Snapshot {
    pub fn has_table(&self, name: &str) -> bool {
        self.providers.contains_key(name)
    }

    /// The unscoped provider of `name` (for schemas and tests).
    pub fn provider(&self, name: &str) -> Option<&Arc<dyn TableProvider>> {
        self.providers.get(name)
    }
}

impl Tables {
    /// Opens the tables under `location` that exist (others may appear later: a refresh
    /// looks for them again).
    pub async fn open(location: &str) -> Result<Tables> {
        let root = deltalake::table::builder::parse_table_uri(location).map_err(|e| Error::Location {
            location: location.to_string(),
            reason: format!("{e}; run `ccstream replay` or `ccstream demo` to create tables"),
        })?;
        let mut tables = Tables { root, open: Vec::new(), generation: 0 };
        tables.open_missing().await?;
        Ok(tables)
    }

    /// Registers the tables' object stores with `state`'s runtime (idempotent).
    pub fn register_stores(&self, state: &SessionState) -> Result<()> {
        for (name, t) in &self.open {
            t.update_datafusion_session(state).map_err(|source| Error::OpenTable {
                table: name.to_string(),
                location: t.table_url().to_string(),
                source: Box::new(source),
            })?;
        }
        Ok(())
    }

    async fn open_missing(&mut self) -> Result<bool> {
        let mut found = false;
        for name in TABLES {
            if self.open.iter().any(|(n, _)| *n == name) {
                continue;
            }
            let url = table_url(&self.root, name)?;
            match deltalake::open_table(url.clone()).await {
                Ok(t) => {
                    self.open.push((name, t));
                    found = true;
                }
                Err(DeltaTableError::NotATable(_)) | Err(DeltaTableError::InvalidTableLocation(_)) => {}
                Err(source) => {
                    return Err(Error::OpenTable {
                        table: name.to_string(),
                        location: url.to_string(),
                        source: Box::new(source),
                    })
                }
            }
        }
        // Keep the commit order of TABLES, whatever order the tables appeared in.
        self.open.sort_by_key(|(n, _)| TABLES.iter().position(|t| t == n));
        Ok(found)
    }

    /// Loads the newest version of every table (and opens tables that appeared). Returns
    /// whether anything changed since the last snapshot.
    pub async fn refresh(&mut self) -> Result<bool> {
        let mut changed = self.open_missing().await?;
        for (name, t) in &mut self.open {
            let before = t.version();
            t.update_incremental(None).await.map_err(|source| Error::OpenTable {
                table: name.to_string(),
                location: t.table_url().to_string(),
                source: Box::new(source),
            })?;
            changed |= t.version() != before;
        }
        if changed {
            self.generation += 1;
        }
        Ok(changed)
    }

    /// Providers bound to the versions loaded now.
    pub async fn snapshot(&self) -> Result<Snapshot> {
        let mut providers = HashMap::new();
        let mut versions = Vec::new();
        for (name, t) in &self.open {
            let provider: Arc<dyn TableProvider> = t.table_provider().await?;
            providers.insert(*name, provider);
            versions.push((*name, t.version().map_or(-1, |v| v as i64)));
        }
        Ok(Snapshot { generation: self.generation, versions, providers })
    }
}

fn table_url(root: &Url, name: &str) -> Result<Url> {
    let mut root = root.clone();
    if !root.path().ends_with('/') {
        let p = format!("{}/", root.path());
        root.set_path(&p);
    }
    root.join(&format!("{name}/")).map_err(|e| Error::Location { location: root.to_string(), reason: e.to_string() })
}

/// The schema (`public`) a principal of `scope` resolves names in: the tables and views its
/// role may read, each limited to its tenants (and queues). `planner` is a session with
/// ccstream's functions registered; the views are planned in a copy of it.
pub async fn scoped_schema(
    snapshot: &Snapshot,
    scope: &Scope,
    planner: &SessionState,
) -> Result<Arc<dyn SchemaProvider>> {
    // A catalog of its own: the planner's is shared with every other session.
    let catalog = Arc::new(FixedCatalog::default());
    catalog.register_schema("public", Arc::new(datafusion::catalog::MemorySchemaProvider::new()))?;
    let list = Arc::new(FixedCatalogList::new("datafusion", catalog));
    let ctx = SessionContext::new_with_state(
        datafusion::execution::session_state::SessionStateBuilder::new_from_existing(planner.clone())
            .with_catalog_list(list)
            .build(),
    );
    let mut bases: Vec<&str> = Vec::new();
    for name in TABLES {
        let Some(provider) = snapshot.providers.get(name) else { continue };
        let scoped: Arc<dyn TableProvider> = match (&scope.tenants, provider.schema().index_of("tenant_id").is_ok()) {
            (None, _) if scope.queues.is_none() => Arc::clone(provider),
            (_, false) if scope.tenants.is_some() => continue,
            _ => Arc::new(ScopedTable::new(name, Arc::clone(provider), scope, snapshot)?),
        };
        ctx.register_table(name, scoped)?;
        bases.push(name);
    }
    for (view, sql, needs) in VIEWS {
        // A supervisor limited to queues sees no view over `events`: presence and agent
        // states are not per queue.
        if scope.queues.is_some() && needs.contains(&TABLE_EVENTS) {
            continue;
        }
        if needs.iter().all(|t| bases.contains(t)) && scope.may_read(view) {
            let plan = ctx.state().create_logical_plan(sql).await?;
            ctx.register_table(view, Arc::new(ViewTable::new(plan, Some(sql.to_string()))))?;
            bases.push(view);
        }
    }
    let mut tables = BTreeMap::new();
    for name in bases {
        if scope.may_read(name) {
            tables.insert(name.to_string(), ctx.table_provider(name).await?);
        }
    }
    Ok(Arc::new(FixedSchema(tables)))
}

/// A base table seen through a principal's scope: the Delta scan with the scope's
/// condition (`tenant_id IN (…)`, and the supervisor's queues) applied first, behind a
/// barrier ([`ScopeBarrier`]) that no predicate of the query crosses. A query's own filters
/// run only on rows of the scope — so an expression that fails (a cast, a division by zero)
/// or takes a branch on another tenant's value cannot tell anything about that tenant —
/// except for [`safe_filter`]s (column-versus-constant comparisons, which cannot fail),
/// which also reach the Delta scan below the barrier to prune files and row groups.
#[derive(Debug)]
pub struct ScopedTable {
    plan: LogicalPlan,
    schema: SchemaRef,
}

impl ScopedTable {
    fn new(name: &str, inner: Arc<dyn TableProvider>, scope: &Scope, snapshot: &Snapshot) -> Result<ScopedTable> {
        let plan = scoped_plan(name, inner, scope, snapshot)?;
        let schema = Arc::new(plan.schema().as_arrow().clone());
        Ok(ScopedTable { plan, schema })
    }
}

/// Whether `e` can be evaluated on any row without failing and without a branch a
/// query could observe: columns compared with constants (`=`, `<>`, `<`, `<=`, `>`,
/// `>=`, `IN` a list of constants, `BETWEEN` constants, `IS [NOT] NULL`), combined with
/// `AND`, `OR`, `NOT`. No casts of columns, no functions, no arithmetic.
pub fn safe_filter(e: &Expr) -> bool {
    use datafusion::logical_expr::{Between, BinaryExpr, Operator};
    fn constant(e: &Expr) -> bool {
        match e {
            Expr::Literal(..) => true,
            Expr::Cast(c) => constant(&c.expr),
            Expr::TryCast(c) => constant(&c.expr),
            _ => false,
        }
    }
    fn column(e: &Expr) -> bool {
        matches!(e, Expr::Column(_))
    }
    match e {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
            Operator::And | Operator::Or => safe_filter(left) && safe_filter(right),
            Operator::Eq | Operator::NotEq | Operator::Lt | Operator::LtEq | Operator::Gt | Operator::GtEq => {
                (column(left) && constant(right)) || (constant(left) && column(right))
            }
            _ => false,
        },
        Expr::Not(inner) => safe_filter(inner),
        Expr::IsNull(inner) | Expr::IsNotNull(inner) => column(inner),
        Expr::InList(l) => column(&l.expr) && l.list.iter().all(constant),
        Expr::Between(Between { expr, low, high, .. }) => column(expr) && constant(low) && constant(high),
        _ => false,
    }
}

fn in_list(column: &str, values: &[String]) -> Expr {
    col(column).in_list(values.iter().map(|v| lit(v.as_str())).collect(), false)
}

fn scoped_plan(name: &str, inner: Arc<dyn TableProvider>, scope: &Scope, snapshot: &Snapshot) -> Result<LogicalPlan> {
    let mut plan = LogicalPlanBuilder::scan(name, provider_as_source(inner), None)?;
    if let Some(tenants) = &scope.tenants {
        plan = plan.filter(in_list("tenant_id", tenants))?;
    }
    if let Some(queues) = &scope.queues {
        match name {
            TABLE_CALL_FACTS => {
                plan = plan.filter(in_list("queue_id", queues).or(in_list("final_queue_id", queues)))?
            }
            TABLE_INTERVAL_PARTIALS => plan = plan.filter(in_list("queue_id", queues))?,
            // An agent's legs of the calls the supervisor sees.
            TABLE_AGENT_LEGS => {
                if let Some(calls) = snapshot.providers.get(TABLE_CALL_FACTS) {
                    let calls = scoped_plan(TABLE_CALL_FACTS, Arc::clone(calls), scope, snapshot)?;
                    let calls = LogicalPlanBuilder::from(calls)
                        .project(vec![col("tenant_id").alias("scope_tenant"), col("call_id").alias("scope_call")])?
                        .build()?;
                    plan = plan.join(
                        calls,
                        JoinType::LeftSemi,
                        (vec!["tenant_id", "call_id"], vec!["scope_tenant", "scope_call"]),
                        None,
                    )?;
                } else {
                    plan = plan.filter(lit(false))?;
                }
            }
            _ => {}
        }
    }
    Ok(plan.build()?)
}

#[async_trait]
impl TableProvider for ScopedTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DfResult<Vec<TableProviderFilterPushDown>> {
        // Inexact: the query keeps its filter above the barrier either way.
        Ok(filters
            .iter()
            .map(|f| {
                if safe_filter(f) {
                    TableProviderFilterPushDown::Inexact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let mut plan = LogicalPlanBuilder::from(self.plan.clone());
        if let Some(pruning) = filters.iter().filter(|f| safe_filter(f)).cloned().reduce(Expr::and) {
            plan = plan.filter(pruning)?;
        }
        if let Some(projection) = projection {
            let columns =
                projection.iter().map(|i| Expr::Column(self.plan.schema().columns()[*i].clone())).collect::<Vec<_>>();
            plan = plan.project(columns)?;
        }
        if let Some(limit) = limit {
            plan = plan.limit(0, Some(limit))?;
        }
        let physical = state.create_physical_plan(&plan.build()?).await?;
        Ok(Arc::new(ScopeBarrier::new(physical)))
    }
}

/// The top of a scoped scan: passes batches through and lets no filter, projection or
/// limit of the plan above move below it (the physical optimizer's defaults for a node
/// that does not opt in).
#[derive(Debug)]
pub struct ScopeBarrier {
    input: Arc<dyn ExecutionPlan>,
}

impl ScopeBarrier {
    pub fn new(input: Arc<dyn ExecutionPlan>) -> ScopeBarrier {
        ScopeBarrier { input }
    }
}

impl datafusion::physical_plan::DisplayAs for ScopeBarrier {
    fn fmt_as(
        &self,
        _t: datafusion::physical_plan::DisplayFormatType,
        f: &mut std::fmt::Formatter<'_>,
    ) -> std::fmt::Result {
        write!(f, "ScopeBarrier")
    }
}

impl ExecutionPlan for ScopeBarrier {
    fn name(&self) -> &str {
        "ScopeBarrier"
    }

    fn properties(&self) -> &Arc<datafusion::physical_plan::PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(
            &Arc<dyn datafusion::physical_plan::PhysicalExpr>,
        ) -> DfResult<datafusion::common::tree_node::TreeNodeRecursion>,
    ) -> DfResult<datafusion::common::tree_node::TreeNodeRecursion> {
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return datafusion::common::internal_err!("ScopeBarrier has one child");
        }
        Ok(Arc::new(ScopeBarrier::new(children.swap_remove(0))))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<datafusion::execution::TaskContext>,
    ) -> DfResult<datafusion::execution::SendableRecordBatchStream> {
        self.input.execute(partition, context)
    }
}

/// A schema whose tables never change, listed in name order (the Postgres catalog numbers
/// tables in listing order, so the order must not vary between queries).
#[derive(Debug)]
pub struct FixedSchema(BTreeMap<String, Arc<dyn TableProvider>>);

#[async_trait]
impl SchemaProvider for FixedSchema {
    fn table_names(&self) -> Vec<String> {
        self.0.keys().cloned().collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        Ok(self.0.get(name).cloned())
    }

    fn table_exist(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
}

/// A catalog of schemas in name order, built for one session.
#[derive(Debug, Default)]
pub struct FixedCatalog(RwLock<BTreeMap<String, Arc<dyn SchemaProvider>>>);

impl CatalogProvider for FixedCatalog {
    fn schema_names(&self) -> Vec<String> {
        self.0.read().expect("catalog lock").keys().cloned().collect()
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        self.0.read().expect("catalog lock").get(name).cloned()
    }

    fn register_schema(
        &self,
        name: &str,
        schema: Arc<dyn SchemaProvider>,
    ) -> DfResult<Option<Arc<dyn SchemaProvider>>> {
        Ok(self.0.write().expect("catalog lock").insert(name.to_string(), schema))
    }
}

/// The one catalog of a session. Registering another is refused (`CREATE DATABASE` never
/// reaches it: the server is read-only).
#[derive(Debug)]
pub struct FixedCatalogList {
    name: String,
    catalog: Arc<dyn CatalogProvider>,
}

impl FixedCatalogList {
    pub fn new(name: &str, catalog: Arc<dyn CatalogProvider>) -> FixedCatalogList {
        FixedCatalogList { name: name.to_string(), catalog }
    }
}

impl CatalogProviderList for FixedCatalogList {
    fn register_catalog(&self, _name: String, _catalog: Arc<dyn CatalogProvider>) -> Option<Arc<dyn CatalogProvider>> {
        None
    }

    fn catalog_names(&self) -> Vec<String> {
        vec![self.name.clone()]
    }

    fn catalog(&self, name: &str) -> Option<Arc<dyn CatalogProvider>> {
        (name == self.name).then(|| Arc::clone(&self.catalog))
    }
}
