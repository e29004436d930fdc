//! The Postgres wire protocol (pgwire), for psql, Grafana, JDBC/ODBC clients and BI tools.
//!
//! What this frontend owns, beside pgwire's framing:
//! - **Authentication**: SCRAM-SHA-256 against the principals' verifiers, written here
//!   (pgwire's own SCRAM needs a password equivalent; a PostgreSQL verifier does not). Every
//!   failure is FATAL: the connection closes, nothing is answered. An unknown user goes
//!   through the same exchange as a known one and fails at its end, so user names cannot
//!   be probed. With `tls_cert` configured, TLS is offered; a certificate that cannot be
//!   loaded stops the server.
//! - **Sessions**: each connection has its own settings (`SET TIME ZONE`, `SET
//!   application_name`, …, `DISCARD ALL` resets them); a query runs in a session built for
//!   it from the principal's scoped schema and these settings (`Service::execute`), so
//!   nothing a connection does is seen by another.
//! - **Read-only**: statements are classified before planning; `SET`/`SHOW`/`RESET`,
//!   transaction statements (answered, no effect: every statement reads one snapshot),
//!   `DISCARD` and `DEALLOCATE` are answered here; queries and `EXPLAIN` go to the
//!   service; everything else is refused with SQLSTATE 25006.
//! - **Catalog**: `pg_catalog` (datafusion-pg-catalog's tables over the principal's own
//!   catalog, so `\dt` lists only what it may read), `information_schema`, `version()` in
//!   PostgreSQL's form and `current_setting()` over the connection's settings.
//! - **Cancel**: a CancelRequest with the connection's key stops the running query (its
//!   row stream ends with SQLSTATE 57014 and the DataFusion plan is dropped).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use arrow::array::{ArrayRef, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use datafusion::common::ScalarValue;
use datafusion::sql::sqlparser::ast::{Set, Statement, Value as SqlValue};
use datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use futures::{Sink, SinkExt, StreamExt};
use pgwire::api::auth::{
    finish_authentication, protocol_negotiation, save_startup_parameters_to_metadata, DefaultServerParameterProvider,
    StartupHandler,
};
use pgwire::api::cancel::CancelHandler;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{
    DataRowEncoder, DescribePortalResponse, DescribeStatementResponse, FieldFormat, FieldInfo, QueryResponse, Response,
    Tag,
};
use pgwire::api::stmt::{QueryParser, StoredStatement};
use pgwire::api::{ClientInfo, ClientPortalStore, PgWireConnectionState, PgWireServerHandlers, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::cancel::CancelRequest;
use pgwire::messages::startup::{Authentication, SecretKey};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use pgwire::types::format::FormatOptions;
use ring::rand::SecureRandom;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub mod information_schema;

use crate::access::{hmac_sha256, sha256, Principal, ScramVerifier};
use crate::server::{Dialect, PreparedQuery, QueryError, QueryRequest, RunningQuery, Service};
use crate::telemetry::ErrorKind;

const FRONTEND: &str = "pg";
/// The longest SQL text a message may carry (the HTTP API's body limit).
const MAX_SQL_BYTES: usize = 1 << 20;
/// The version clients see: PostgreSQL's form first (Grafana, JDBC and psql parse it).
pub const SERVER_VERSION: &str = "16.6";
pub const SERVER_VERSION_NUM: &str = "160006";

/// A connection's settings (`SET`, startup parameters), by lowercase name.
#[derive(Debug, Clone, Default)]
pub struct Settings(BTreeMap<String, String>);

impl Settings {
    fn defaults() -> Settings {
        let mut s = BTreeMap::new();
        for (k, v) in [
            ("timezone", "UTC"),
            ("datestyle", "ISO, MDY"),
            ("intervalstyle", "postgres"),
            ("search_path", "public"),
            ("client_encoding", "UTF8"),
            ("server_encoding", "UTF8"),
            ("server_version", SERVER_VERSION),
            ("server_version_num", SERVER_VERSION_NUM),
            ("standard_conforming_strings", "on"),
            ("integer_datetimes", "on"),
            ("default_transaction_read_only", "on"),
            ("transaction_read_only", "on"),
            ("transaction_isolation", "repeatable read"),
            ("default_transaction_isolation", "repeatable read"),
            ("max_identifier_length", "63"),
            ("statement_timeout", "0"),
            ("application_name", ""),
            ("extra_float_digits", "1"),
            ("lc_collate", "C"),
            ("lc_ctype", "C"),
            ("is_superuser", "off"),
        ] {
            s.insert(k.to_string(), v.to_string());
        }
        Settings(s)
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(&name.to_ascii_lowercase()).map(String::as_str)
    }

    /// The DataFusion options these settings stand for.
    fn datafusion(&self) -> Vec<(String, String)> {
        let tz = self.get("timezone").unwrap_or("UTC");
        let tz = if tz.eq_ignore_ascii_case("utc") || tz.eq_ignore_ascii_case("gmt") { "+00:00" } else { tz };
        vec![("datafusion.execution.time_zone".into(), tz.to_string())]
    }
}

/// What a connection keeps between messages.
#[derive(Debug)]
struct Session {
    principal: Principal,
    settings: Mutex<Settings>,
    running: Mutex<Option<CancellationToken>>,
    /// Statements of SQL `PREPARE name AS …`, for `EXECUTE name(…)` (psql before 16 has no
    /// `\bind`; this is how its users pass parameters).
    sql_prepared: Mutex<HashMap<String, Box<Statement>>>,
}

/// SQL-prepared statements one connection may hold.
const MAX_SQL_PREPARED: usize = 256;

/// Connections by their cancel key.
#[derive(Debug, Default)]
struct Cancels(Mutex<HashMap<(i32, Bytes), Arc<Session>>>);

/// Removes a connection's cancel key when the connection ends.
#[derive(Debug)]
struct CancelGuard {
    cancels: Arc<Cancels>,
    key: (i32, Bytes),
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if let Ok(mut m) = self.cancels.0.lock() {
            m.remove(&self.key);
        }
    }
}

/// Counts a connection in `active_sessions` while it lives.
#[derive(Debug)]
struct SessionGauge(Arc<Service>);

impl Drop for SessionGauge {
    fn drop(&mut self) {
        self.0.telemetry.active_sessions.with_label_values(&[FRONTEND]).dec();
    }
}

/// Accepts connections on `listener` until the task is dropped. `tls` is offered to
/// clients that ask (`sslmode=require`).
pub async fn serve(listener: TcpListener, service: Arc<Service>, tls: Option<tokio_rustls::TlsAcceptor>) {
    let cancels = Arc::new(Cancels::default());
    let connections = Arc::new(tokio::sync::Semaphore::new(service.config.max_connections.max(1)));
    loop {
        let (socket, peer, permit) = crate::server::accept(&listener, &connections, FRONTEND).await;
        let handlers = Handlers(Arc::new(Connection {
            service: Arc::clone(&service),
            cancels: Arc::clone(&cancels),
            scram: Mutex::new(Scram::Start),
        }));
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = pgwire::tokio::process_socket(socket, tls, handlers).await {
                tracing::debug!(%peer, error = %e, "Postgres connection ended with an error");
            }
        });
    }
}

/// The handlers of one connection.
#[derive(Debug)]
struct Connection {
    service: Arc<Service>,
    cancels: Arc<Cancels>,
    scram: Mutex<Scram>,
}

impl Connection {
    /// Plans `request` in a session of `session`'s principal (for its types and schema).
    async fn plan(
        &self,
        session: &Session,
        request: &QueryRequest,
    ) -> Result<datafusion::logical_expr::LogicalPlan, QueryError> {
        let state = self.service.session(&session.principal.scope, &request.settings, &request.dialect).await?;
        self.service.plan(&state, request).await
    }
}

#[derive(Debug, Clone)]
struct Handlers(Arc<Connection>);

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        Arc::new(self.clone())
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        Arc::new(self.clone())
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        Arc::new(self.clone())
    }

    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        Arc::new(self.clone())
    }
}

fn fatal(code: &str, message: impl Into<String>) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new("FATAL".into(), code.into(), message.into())))
}

fn user_error(e: &QueryError) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new("ERROR".into(), e.sqlstate().into(), e.message.clone())))
}

/// The SCRAM-SHA-256 exchange of one connection (RFC 5802 / 7677, without channel binding).
#[derive(Debug)]
enum Scram {
    Start,
    /// A Microsoft Entra ID access token is expected as the password (cleartext, over TLS).
    Token,
    /// Server-first sent.
    Sent(Box<ScramSent>),
}

/// What the server keeps between its first message and the client's proof.
#[derive(Debug)]
struct ScramSent {
    principal: Option<Principal>,
    verifier: ScramVerifier,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    ring::rand::SystemRandom::new().fill(&mut b).expect("system randomness");
    b
}

/// A verifier for names that are no principal: the exchange runs to its end and fails.
/// Its salt is keyed by a secret of this process, so it cannot be told from a real one.
fn decoy_verifier(name: &str) -> ScramVerifier {
    static KEY: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
    let key = KEY.get_or_init(random_bytes::<32>);
    let salt = hmac_sha256(key, name.as_bytes())[..16].to_vec();
    ScramVerifier {
        iterations: crate::access::SCRAM_ITERATIONS,
        salt,
        stored_key: random_bytes(),
        server_key: random_bytes(),
    }
}

impl Handlers {
    fn auth_failed(&self, user: &str) -> PgWireError {
        self.0.service.telemetry.auth_failed(FRONTEND);
        fatal("28P01", format!("password authentication failed for user \"{user}\""))
    }

    fn client_first(&self, user: &str, data: &[u8]) -> PgWireResult<(Scram, Bytes)> {
        let text = std::str::from_utf8(data).map_err(|_| self.auth_failed(user))?;
        // gs2 header: "n,," (no channel binding) or "y,," (client supports it, server not).
        let bare = text.strip_prefix("n,,").or_else(|| text.strip_prefix("y,,")).ok_or_else(|| {
            fatal(
                "28000",
                "SCRAM channel binding is not offered by this server; connect with channel_binding=disable or prefer",
            )
        })?;
        let client_nonce = bare
            .split(',')
            .find_map(|a| a.strip_prefix("r="))
            .filter(|n| !n.is_empty() && n.len() <= 256)
            .ok_or_else(|| self.auth_failed(user))?;
        let (principal, verifier) = match self.0.service.principals.scram(user) {
            Some((p, v)) => (Some(p.clone()), v.clone()),
            None => (None, decoy_verifier(user)),
        };
        let nonce = format!("{client_nonce}{}", B64.encode(random_bytes::<18>()));
        let server_first = format!("r={nonce},s={},i={}", B64.encode(&verifier.salt), verifier.iterations);
        let out = Bytes::from(server_first.clone());
        Ok((
            Scram::Sent(Box::new(ScramSent {
                principal,
                verifier,
                client_first_bare: bare.to_string(),
                server_first,
                nonce,
            })),
            out,
        ))
    }

    /// Checks the client's proof; returns the principal and the server's final message.
    fn client_final(&self, user: &str, state: Scram, data: &[u8]) -> PgWireResult<(Principal, Bytes)> {
        let Scram::Sent(sent) = state else {
            return Err(self.auth_failed(user));
        };
        let ScramSent { principal, verifier, client_first_bare, server_first, nonce } = *sent;
        let text = std::str::from_utf8(data).map_err(|_| self.auth_failed(user))?;
        let (without_proof, proof) = text.rsplit_once(",p=").ok_or_else(|| self.auth_failed(user))?;
        let mut channel = None;
        let mut r = None;
        for attr in without_proof.split(',') {
            if let Some(c) = attr.strip_prefix("c=") {
                channel = Some(c);
            } else if let Some(v) = attr.strip_prefix("r=") {
                r = Some(v);
            }
        }
        let channel_ok = matches!(channel, Some("biws") | Some("eSws"));
        if !channel_ok || r != Some(nonce.as_str()) {
            return Err(self.auth_failed(user));
        }
        let proof = B64.decode(proof).map_err(|_| self.auth_failed(user))?;
        if proof.len() != 32 {
            return Err(self.auth_failed(user));
        }
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let signature = hmac_sha256(&verifier.stored_key, auth_message.as_bytes());
        let client_key: Vec<u8> = proof.iter().zip(signature).map(|(p, s)| p ^ s).collect();
        let ok = crate::access::equal_in_constant_time(&sha256(&client_key), &verifier.stored_key);
        match principal {
            Some(p) if ok => {
                let server_signature = hmac_sha256(&verifier.server_key, auth_message.as_bytes());
                Ok((p, Bytes::from(format!("v={}", B64.encode(server_signature)))))
            }
            _ => Err(self.auth_failed(user)),
        }
    }

    fn parameters(&self, principal: &Principal) -> DefaultServerParameterProvider {
        let mut p = DefaultServerParameterProvider::default();
        p.server_version = SERVER_VERSION.into();
        p.is_superuser = false;
        p.default_transaction_read_only = true;
        p.time_zone = "UTC".into();
        p.date_style = "ISO, MDY".into();
        p.session_authorization = Some(principal.name.clone());
        p
    }
}

#[async_trait]
impl StartupHandler for Handlers {
    async fn on_startup<C>(&self, client: &mut C, message: PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match message {
            PgWireFrontendMessage::Startup(startup) => {
                protocol_negotiation(client, &startup).await?;
                save_startup_parameters_to_metadata(client, &startup);
                let user = client.metadata().get("user").cloned().unwrap_or_default();
                if user.is_empty() {
                    return Err(fatal("28000", "no user name given"));
                }
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                let service = &self.0.service;
                if service.principals.scram(&user).is_none() && !service.entra.is_empty() {
                    // Not a password principal: sign-in with an Entra access token.
                    if !client.is_secure() {
                        return Err(fatal(
                            "28000",
                            "signing in with a Microsoft Entra token needs TLS (sslmode=require)",
                        ));
                    }
                    *self.0.scram.lock().expect("scram state") = Scram::Token;
                    client.send(PgWireBackendMessage::Authentication(Authentication::CleartextPassword)).await?;
                } else {
                    client
                        .send(PgWireBackendMessage::Authentication(Authentication::SASL(vec!["SCRAM-SHA-256".into()])))
                        .await?;
                }
            }
            PgWireFrontendMessage::PasswordMessageFamily(msg) => {
                let user = client.metadata().get("user").cloned().unwrap_or_default();
                let state = std::mem::replace(&mut *self.0.scram.lock().expect("scram state"), Scram::Start);
                match state {
                    Scram::Start => {
                        let initial = msg.into_sasl_initial_response()?;
                        if initial.auth_method != "SCRAM-SHA-256" {
                            return Err(fatal(
                                "28000",
                                format!("unsupported SASL mechanism {:?}", initial.auth_method),
                            ));
                        }
                        let data = initial.data.ok_or_else(|| self.auth_failed(&user))?;
                        let (next, reply) = self.client_first(&user, &data)?;
                        *self.0.scram.lock().expect("scram state") = next;
                        client.send(PgWireBackendMessage::Authentication(Authentication::SASLContinue(reply))).await?;
                    }
                    Scram::Token => {
                        let token = msg.into_password()?.password;
                        let principal = match self.0.service.entra.verify(&token).await {
                            Ok(p) if p.name.eq_ignore_ascii_case(&user) => p,
                            _ => return Err(self.auth_failed(&user)),
                        };
                        self.logged_in(client, principal).await?;
                    }
                    sent @ Scram::Sent(_) => {
                        let response = msg.into_sasl_response()?;
                        let (principal, reply) = self.client_final(&user, sent, &response.data)?;
                        client.send(PgWireBackendMessage::Authentication(Authentication::SASLFinal(reply))).await?;
                        self.logged_in(client, principal).await?;
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl Handlers {
    /// After a successful sign-in: the connection's session, its cancel key, and
    /// AuthenticationOk with the server's parameters.
    async fn logged_in<C>(&self, client: &mut C, principal: Principal) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let pid = (u32::from_le_bytes(random_bytes::<4>()) >> 1) as i32;
        let secret = SecretKey::I32(i32::from_le_bytes(random_bytes::<4>()));
        client.set_pid_and_secret_key(pid, secret.clone());
        let params = self.parameters(&principal);
        let session = Arc::new(Session {
            principal,
            settings: Mutex::new(Settings::defaults()),
            running: Mutex::new(None),
            sql_prepared: Mutex::new(HashMap::new()),
        });
        let key = (pid, secret.to_bytes());
        self.0.cancels.0.lock().expect("cancels").insert(key.clone(), Arc::clone(&session));
        client.session_extensions().insert(CancelGuard { cancels: Arc::clone(&self.0.cancels), key });
        client.session_extensions().insert(session);
        self.0.service.telemetry.active_sessions.with_label_values(&[FRONTEND]).inc();
        client.session_extensions().insert(SessionGauge(Arc::clone(&self.0.service)));
        finish_authentication(client, &params).await
    }
}

#[async_trait]
impl CancelHandler for Handlers {
    async fn on_cancel_request(&self, request: CancelRequest) {
        let key = (request.pid, request.secret_key.to_bytes());
        let session = self.0.cancels.0.lock().ok().and_then(|m| m.get(&key).cloned());
        if let Some(session) = session {
            if let Some(token) = session.running.lock().expect("running").as_ref() {
                token.cancel();
            }
        }
    }
}

fn session_of<C: ClientInfo>(client: &C) -> PgWireResult<Arc<Session>> {
    client
        .session_extensions()
        .get::<Arc<Session>>()
        .map(|s| (*s).clone())
        .ok_or_else(|| fatal("28000", "not authenticated"))
}

/// What a statement is, for this frontend.
#[derive(Debug, Clone)]
enum Kind {
    /// Planned and run by the service.
    Query,
    Set {
        name: String,
        value: Option<String>,
    },
    Show(String),
    Transaction(&'static str),
    Discard,
    Deallocate,
    /// SQL `PREPARE` / `EXECUTE`: answered with the connection's statements (simple query
    /// protocol).
    SqlPrepared,
    Refused(String),
    Empty,
}

/// A parsed statement (the extended protocol keeps it between Parse and Execute).
#[derive(Debug, Clone)]
pub struct PgStatement {
    kind: Kind,
    statement: Option<Box<Statement>>,
    /// For queries: the result schema and parameter types found when parsing (none when
    /// the statement plans only with its values, e.g. a table function's argument `$1`).
    schema: Option<SchemaRef>,
    params: Vec<Option<DataType>>,
}

/// The most parameters a statement may have (PostgreSQL's limit).
const MAX_PARAMS: usize = 65_535;

/// The highest `$n` of a statement (an error past [`MAX_PARAMS`]).
fn placeholders(stmt: &Statement) -> Result<usize, QueryError> {
    use datafusion::sql::sqlparser::ast::{visit_expressions, Expr};
    let mut n = 0;
    let _ = visit_expressions(stmt, |e| {
        if let Expr::Value(v) = e {
            if let SqlValue::Placeholder(p) = &v.value {
                n = n.max(p.strip_prefix('$').and_then(|x| x.parse::<usize>().ok()).unwrap_or(usize::MAX));
            }
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
    if n > MAX_PARAMS {
        return Err(QueryError::new(ErrorKind::Sql, format!("at most ${MAX_PARAMS} parameters, numbered $1, $2, …")));
    }
    Ok(n)
}

fn value_text(v: &datafusion::sql::sqlparser::ast::Expr) -> String {
    use datafusion::sql::sqlparser::ast::Expr as E;
    match v {
        E::Value(v) => match &v.value {
            SqlValue::SingleQuotedString(s) | SqlValue::DoubleQuotedString(s) => s.clone(),
            other => other.to_string(),
        },
        E::Identifier(i) => i.value.clone(),
        other => other.to_string().trim_matches('\'').to_string(),
    }
}

fn classify(stmt: &Statement) -> Kind {
    use datafusion::sql::sqlparser::ast::Statement as S;
    match stmt {
        S::Query(_) | S::Explain { .. } => Kind::Query,
        S::Set(set) => match set {
            Set::SingleAssignment { variable, values, .. } => Kind::Set {
                name: variable.to_string().to_ascii_lowercase(),
                value: Some(values.iter().map(value_text).collect::<Vec<_>>().join(", ")),
            },
            Set::SetTimeZone { value, .. } => Kind::Set { name: "timezone".into(), value: Some(value_text(value)) },
            Set::SetNames { charset_name, .. } => {
                Kind::Set { name: "client_encoding".into(), value: Some(charset_name.to_string()) }
            }
            Set::SetTransaction { .. } => Kind::Transaction("SET"),
            other => Kind::Refused(format!("unsupported SET form: {other}")),
        },
        S::ShowVariable { variable } => {
            Kind::Show(variable.iter().map(|i| i.value.to_ascii_lowercase()).collect::<Vec<_>>().join(" "))
        }
        S::StartTransaction { .. } => Kind::Transaction("BEGIN"),
        S::Commit { .. } => Kind::Transaction("COMMIT"),
        S::Rollback { .. } => Kind::Transaction("ROLLBACK"),
        S::Discard { .. } => Kind::Discard,
        S::Deallocate { .. } => Kind::Deallocate,
        S::Prepare { .. } | S::Execute { .. } => Kind::SqlPrepared,
        other => {
            let text = other.to_string();
            let verb = text.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
            Kind::Refused(format!("ccstream serves read-only SQL: {verb} is not allowed"))
        }
    }
}

fn setting_name(name: &str) -> String {
    match name {
        "time zone" | "time_zone" => "timezone".into(),
        other => other.trim_matches('"').to_string(),
    }
}

/// Parses `sql` into statements, with the client-compatibility rewrites: datafusion-pg-
/// catalog's, and ours for what clients send verbatim that DataFusion cannot plan.
fn parse(sql: &str, settings: &Settings, user: &str) -> Result<Vec<Statement>, QueryError> {
    if sql.len() > MAX_SQL_BYTES {
        return Err(QueryError::new(ErrorKind::TooLarge, format!("a statement is at most {MAX_SQL_BYTES} bytes")));
    }
    let sql = rewrite_search_path_constraint(sql, settings, user);
    PostgresCompatibilityParser::new()
        .parse(&sql)
        .map_err(|e| QueryError { kind: ErrorKind::Sql, message: format!("syntax error: {e}") })
}

/// Grafana's table picker limits tables to the schemas of `search_path` with a subquery
/// that unnests the setting through `generate_series` over array subscripts, a
/// PostgreSQL-only construct. It is replaced by the list it computes, from the connection's
/// `search_path`.
fn rewrite_search_path_constraint<'a>(sql: &'a str, settings: &Settings, user: &str) -> std::borrow::Cow<'a, str> {
    static PATTERN: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let re = PATTERN.get_or_init(|| {
        regex::Regex::new(concat!(
            r#"(?is)\(\s*SELECT\s+CASE\s+WHEN\s+trim\(s\[i\]\)\s*=\s*'"\$user"'\s+THEN\s+user\s+ELSE\s+trim\(s\[i\]\)\s+END\s+"#,
            r#"FROM\s+generate_series\(\s*array_lower\(\s*string_to_array\(\s*current_setting\(\s*'search_path'\s*\)\s*,\s*','\s*\)\s*,\s*1\s*\)\s*,\s*"#,
            r#"array_upper\(\s*string_to_array\(\s*current_setting\(\s*'search_path'\s*\)\s*,\s*','\s*\)\s*,\s*1\s*\)\s*\)\s+as\s+i\s*,\s*"#,
            r#"string_to_array\(\s*current_setting\(\s*'search_path'\s*\)\s*,\s*','\s*\)\s+s\s*\)"#
        ))
        .expect("a valid pattern")
    });
    if !re.is_match(sql) {
        return std::borrow::Cow::Borrowed(sql);
    }
    let path = settings.get("search_path").unwrap_or("public");
    let schemas: Vec<String> = path
        .split(',')
        .map(|s| s.trim())
        .map(|s| if s == "\"$user\"" { user } else { s })
        .map(|s| format!("'{}'", s.replace('\'', "''")))
        .collect();
    let list = format!("({})", schemas.join(", "));
    std::borrow::Cow::Owned(re.replace_all(sql, regex::NoExpand(&list)).into_owned())
}

impl Handlers {
    /// Answers a statement this frontend handles itself; `None` for queries.
    fn answer_locally<C: ClientInfo>(
        &self,
        client: &mut C,
        session: &Session,
        kind: &Kind,
    ) -> PgWireResult<Option<Response>> {
        Ok(Some(match kind {
            Kind::Query => return Ok(None),
            Kind::Empty => Response::EmptyQuery,
            Kind::Set { name, value } => {
                let name = setting_name(name);
                if name.starts_with("datafusion.") {
                    return Err(user_error(&QueryError::new(
                        ErrorKind::Forbidden,
                        format!("the engine setting {name} is the server's, not a session's"),
                    )));
                }
                let value = value.clone().unwrap_or_default();
                if name == "timezone" {
                    let ok = value.eq_ignore_ascii_case("utc")
                        || value.parse::<chrono_tz::Tz>().is_ok()
                        || chrono::DateTime::parse_from_str(
                            &format!("2000-01-01 00:00:00 {value}"),
                            "%Y-%m-%d %H:%M:%S %:z",
                        )
                        .is_ok();
                    if !ok {
                        return Err(user_error(&QueryError::new(
                            ErrorKind::Sql,
                            format!("invalid value for parameter \"TimeZone\": \"{value}\""),
                        )));
                    }
                }
                if name.len() > 128 || value.len() > 1024 {
                    return Err(user_error(&QueryError::new(ErrorKind::Sql, "setting name or value too long")));
                }
                let mut settings = session.settings.lock().expect("settings");
                if settings.0.len() > 256 && !settings.0.contains_key(&name) {
                    return Err(user_error(&QueryError::new(ErrorKind::Sql, "too many settings in one session")));
                }
                settings.0.insert(name.clone(), value.clone());
                if matches!(
                    name.as_str(),
                    "application_name" | "datestyle" | "intervalstyle" | "extra_float_digits" | "bytea_output"
                ) {
                    client.metadata_mut().insert(name, value);
                }
                Response::Execution(Tag::new("SET"))
            }
            Kind::Show(name) => {
                let name = setting_name(name);
                let settings = session.settings.lock().expect("settings");
                let value = if name == "all" {
                    None
                } else {
                    Some(settings.get(&name).map(str::to_string).ok_or_else(|| {
                        user_error(&QueryError::new(
                            ErrorKind::Sql,
                            format!("unrecognized configuration parameter \"{name}\""),
                        ))
                    })?)
                };
                let shown = if name == "timezone" { "TimeZone".to_string() } else { name.clone() };
                let (names, values): (Vec<String>, Vec<String>) = match value {
                    Some(v) => (vec![shown], vec![v]),
                    None => settings.0.iter().map(|(k, v)| (k.clone(), v.clone())).unzip(),
                };
                let fields = Arc::new(if name == "all" {
                    vec![
                        FieldInfo::new("name".into(), None, None, Type::TEXT, FieldFormat::Text),
                        FieldInfo::new("setting".into(), None, None, Type::TEXT, FieldFormat::Text),
                    ]
                } else {
                    vec![FieldInfo::new(names[0].clone(), None, None, Type::TEXT, FieldFormat::Text)]
                });
                let mut rows = Vec::new();
                for (n, v) in names.iter().zip(values) {
                    let mut enc = DataRowEncoder::new(Arc::clone(&fields));
                    if name == "all" {
                        enc.encode_field(&Some(n.as_str()))?;
                    }
                    enc.encode_field(&Some(v.as_str()))?;
                    rows.push(Ok(enc.take_row()));
                }
                let mut r = QueryResponse::new(fields, futures::stream::iter(rows));
                r.set_command_tag("SHOW");
                Response::Query(r)
            }
            Kind::Transaction(tag) => match *tag {
                "BEGIN" => Response::TransactionStart(Tag::new("BEGIN")),
                "SET" => Response::Execution(Tag::new("SET")),
                other => Response::TransactionEnd(Tag::new(other)),
            },
            Kind::Discard => {
                *session.settings.lock().expect("settings") = Settings::defaults();
                session.sql_prepared.lock().expect("prepared").clear();
                Response::Execution(Tag::new("DISCARD ALL"))
            }
            Kind::Deallocate => Response::Execution(Tag::new("DEALLOCATE")),
            Kind::SqlPrepared => return Err(user_error(&QueryError::new(
                ErrorKind::Sql,
                "PREPARE and EXECUTE run through the simple query protocol; the extended protocol prepares by itself",
            ))),
            Kind::Refused(message) => {
                self.0.service.telemetry.errors.with_label_values(&[FRONTEND, ErrorKind::ReadOnly.as_str()]).inc();
                return Err(user_error(&QueryError::new(ErrorKind::ReadOnly, message.clone())));
            }
        }))
    }

    fn request(session: &Session, statement: Option<Box<Statement>>, params: Vec<ScalarValue>) -> QueryRequest {
        let settings = session.settings.lock().expect("settings").clone();
        QueryRequest {
            sql: statement.as_ref().map(|s| s.to_string()).unwrap_or_default(),
            parsed: statement,
            params,
            settings: settings.datafusion(),
            dialect: Dialect::Postgres(Arc::new(settings.0.clone())),
        }
    }

    /// Runs a query and turns its batches into rows, ending early on a cancel request.
    async fn run<C: ClientInfo>(
        &self,
        client: &C,
        session: &Arc<Session>,
        request: QueryRequest,
        format: &Format,
        token: CancellationToken,
    ) -> PgWireResult<Response> {
        let service = &self.0.service;
        let scope = session.principal.scope.clone();
        // Planned now (the row description needs the schema); started when its rows are
        // read, so the statements of one message run one after another.
        let prepared = match service.prepare(&session.principal, &scope, request).await {
            Ok(r) => r,
            Err(e) => {
                service.telemetry.query_failed(FRONTEND, e.kind);
                return Err(user_error(&e));
            }
        };
        let options = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
        let fields = Arc::new(
            arrow_pg::datatypes::arrow_schema_to_pg_fields(prepared.schema.as_ref(), format, Some(options))
                .map_err(|e| user_error(&QueryError::new(ErrorKind::Internal, e.to_string())))?,
        );
        let rows = rows(Arc::clone(service), prepared, Arc::clone(&fields), token);
        Ok(Response::Query(QueryResponse::new(fields, rows)))
    }
}

/// The rows of a query, batch by batch, started on the first read; the last item is an
/// error if it failed.
fn rows(
    service: Arc<Service>,
    prepared: PreparedQuery,
    fields: Arc<Vec<FieldInfo>>,
    token: CancellationToken,
) -> impl futures::Stream<Item = PgWireResult<pgwire::messages::data::DataRow>> + Send + 'static {
    enum Query {
        Prepared(Box<PreparedQuery>),
        Running(RunningQuery),
        Done,
    }
    struct State {
        service: Arc<Service>,
        query: Query,
        token: CancellationToken,
    }
    let state = State { service, query: Query::Prepared(Box::new(prepared)), token };
    futures::stream::unfold(state, move |mut s| {
        let fields = Arc::clone(&fields);
        async move {
            let t = Arc::clone(&s.service.telemetry);
            let cancelled =
                || Some(Err(QueryError::new(ErrorKind::Cancelled, "canceling statement due to user request")));
            if let Query::Prepared(_) = &s.query {
                let Query::Prepared(p) = std::mem::replace(&mut s.query, Query::Done) else { unreachable!() };
                s.query = match p.start().await {
                    Ok(r) => Query::Running(r),
                    Err(e) => {
                        t.query_failed(FRONTEND, e.kind);
                        return Some((futures::stream::iter(vec![Err(user_error(&e))]), s));
                    }
                };
            }
            let Query::Running(running) = &mut s.query else { return None };
            let next = tokio::select! {
                biased;
                _ = s.token.cancelled() => cancelled(),
                n = running.next() => n,
            };
            let items: Vec<PgWireResult<pgwire::messages::data::DataRow>> = match next {
                Some(Ok(batch)) => {
                    t.rows_out.with_label_values(&[FRONTEND]).inc_by(batch.num_rows() as u64);
                    arrow_pg::datatypes::encode_recordbatch(fields, batch).collect()
                }
                Some(Err(e)) => {
                    s.query = Query::Done;
                    t.query_failed(FRONTEND, e.kind);
                    vec![Err(user_error(&e))]
                }
                None => {
                    t.query_done(FRONTEND, running.elapsed());
                    s.query = Query::Done;
                    Vec::new()
                }
            };
            Some((futures::stream::iter(items), s))
        }
    })
    .flatten()
}

#[async_trait]
impl SimpleQueryHandler for Handlers {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: pgwire::api::store::PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = session_of(client)?;
        let settings = session.settings.lock().expect("settings").clone();
        let statements = parse(query, &settings, &session.principal.name).map_err(|e| user_error(&e))?;
        if statements.is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        let token = CancellationToken::new();
        *session.running.lock().expect("running") = Some(token.clone());
        let mut out = Vec::with_capacity(statements.len());
        for stmt in statements {
            let kind = classify(&stmt);
            let (kind, stmt) = match sql_prepared(&session, stmt) {
                Ok(SqlPrepared::Done(tag)) => {
                    out.push(Response::Execution(Tag::new(tag)));
                    continue;
                }
                Ok(SqlPrepared::Run(stmt)) => (Kind::Query, stmt),
                Ok(SqlPrepared::Other(stmt)) => (kind, stmt),
                Err(e) => {
                    out.push(Response::Error(Box::new(ErrorInfo::new("ERROR".into(), e.sqlstate().into(), e.message))));
                    break;
                }
            };
            match self.answer_locally(client, &session, &kind) {
                Ok(Some(r)) => out.push(r),
                Ok(None) => {
                    let request = Handlers::request(&session, Some(Box::new(stmt)), Vec::new());
                    match self.run(client, &session, request, &Format::UnifiedText, token.clone()).await {
                        Ok(r) => out.push(r),
                        Err(PgWireError::UserError(info)) => {
                            out.push(Response::Error(info));
                            break;
                        }
                        Err(e) => return Err(e),
                    }
                }
                Err(PgWireError::UserError(info)) => {
                    out.push(Response::Error(info));
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}

/// What a SQL `PREPARE`, `EXECUTE` or `DEALLOCATE` came to.
enum SqlPrepared {
    /// Done: the command tag.
    Done(&'static str),
    /// A prepared query with its arguments in place, to run.
    Run(Statement),
    /// Not one of these.
    Other(Statement),
}

/// `PREPARE name [(types)] AS query` keeps the query for the connection; `EXECUTE
/// name(args)` puts the arguments (cast to the declared types) in place of `$1`, `$2`, …;
/// `DEALLOCATE [name | ALL]` forgets.
fn sql_prepared(session: &Session, stmt: Statement) -> Result<SqlPrepared, QueryError> {
    use datafusion::sql::sqlparser::ast::{visit_expressions_mut, CastKind, Expr, Statement as S};
    let mut prepared = session.sql_prepared.lock().expect("prepared");
    match stmt {
        S::Prepare { name, data_types, statement } => {
            if !matches!(classify(&statement), Kind::Query) {
                return Err(QueryError::new(ErrorKind::ReadOnly, "only queries can be prepared"));
            }
            let name = name.value.to_ascii_lowercase();
            if name.len() > 63 {
                return Err(QueryError::new(ErrorKind::Sql, "a prepared statement's name is at most 63 bytes"));
            }
            if prepared.contains_key(&name) {
                return Err(QueryError::new(ErrorKind::Sql, format!("prepared statement \"{name}\" already exists")));
            }
            if prepared.len() >= MAX_SQL_PREPARED {
                return Err(QueryError::new(
                    ErrorKind::TooLarge,
                    format!("at most {MAX_SQL_PREPARED} prepared statements per connection; DEALLOCATE some"),
                ));
            }
            let mut statement = statement;
            // Declared types cast the arguments: `$n` becomes `CAST($n AS type)`.
            let _ = visit_expressions_mut(&mut *statement, |e| {
                if let Expr::Value(v) = e {
                    if let SqlValue::Placeholder(p) = &v.value {
                        let n = p.strip_prefix('$').and_then(|n| n.parse::<usize>().ok());
                        if let Some(t) = n.and_then(|n| data_types.get(n.wrapping_sub(1))) {
                            *e = Expr::Cast {
                                kind: CastKind::Cast,
                                expr: Box::new(e.clone()),
                                data_type: t.clone(),
                                array: false,
                                format: None,
                            };
                        }
                    }
                }
                std::ops::ControlFlow::<()>::Continue(())
            });
            prepared.insert(name, statement);
            Ok(SqlPrepared::Done("PREPARE"))
        }
        S::Execute { name: Some(name), parameters, using, .. } if using.is_empty() => {
            let key = name.to_string().to_ascii_lowercase();
            let mut statement = *prepared
                .get(&key)
                .ok_or_else(|| QueryError::new(ErrorKind::Sql, format!("prepared statement \"{key}\" does not exist")))?
                .clone();
            let wanted = placeholders(&statement)?;
            if parameters.len() != wanted {
                return Err(QueryError::new(
                    ErrorKind::Sql,
                    format!(
                        "wrong number of parameters for prepared statement \"{key}\": {wanted} expected, {} given",
                        parameters.len()
                    ),
                ));
            }
            let _ = visit_expressions_mut(&mut statement, |e| {
                if let Expr::Value(v) = e {
                    if let SqlValue::Placeholder(p) = &v.value {
                        if let Some(arg) = p
                            .strip_prefix('$')
                            .and_then(|n| n.parse::<usize>().ok())
                            .and_then(|n| parameters.get(n - 1))
                        {
                            *e = Expr::Nested(Box::new(arg.clone()));
                        }
                    }
                }
                std::ops::ControlFlow::<()>::Continue(())
            });
            Ok(SqlPrepared::Run(statement))
        }
        S::Execute { .. } => Err(QueryError::new(ErrorKind::Sql, "EXECUTE name(arguments) runs a prepared statement")),
        S::Deallocate { name, .. } => {
            if name.value.eq_ignore_ascii_case("all") && name.quote_style.is_none() {
                prepared.clear();
            } else {
                prepared.remove(&name.value.to_ascii_lowercase());
            }
            Ok(SqlPrepared::Done("DEALLOCATE"))
        }
        other => Ok(SqlPrepared::Other(other)),
    }
}

/// Plans statements at Parse time (for their parameter and result types).
#[derive(Debug)]
pub struct Parser(Arc<Connection>);

#[async_trait]
impl QueryParser for Parser {
    type Statement = PgStatement;

    async fn parse_sql<C>(&self, client: &C, sql: &str, _types: &[Option<Type>]) -> PgWireResult<Option<PgStatement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let session = session_of(client)?;
        let settings = session.settings.lock().expect("settings").clone();
        let mut statements = parse(sql, &settings, &session.principal.name).map_err(|e| user_error(&e))?;
        if statements.len() > 1 {
            return Err(user_error(&QueryError::new(
                ErrorKind::Sql,
                "cannot insert multiple commands into a prepared statement",
            )));
        }
        let Some(stmt) = statements.pop() else {
            return Ok(Some(PgStatement { kind: Kind::Empty, statement: None, schema: None, params: Vec::new() }));
        };
        let kind = classify(&stmt);
        if !matches!(kind, Kind::Query) {
            let schema = match &kind {
                Kind::Show(name) => {
                    Some(Arc::new(Schema::new(vec![Field::new(setting_name(name), DataType::Utf8, true)])))
                }
                _ => None,
            };
            return Ok(Some(PgStatement { kind, statement: Some(Box::new(stmt)), schema, params: Vec::new() }));
        }
        let request = Handlers::request(&session, Some(Box::new(stmt.clone())), Vec::new());
        let planned = match self.0.plan(&session, &request).await {
            Ok(p) => p,
            // Planned again with the values at Bind (a `$n` in a table function's arguments);
            // a real error surfaces then.
            Err(_) => {
                let n = placeholders(&stmt).map_err(|e| user_error(&e))?;
                return Ok(Some(PgStatement {
                    kind,
                    statement: Some(Box::new(stmt)),
                    schema: None,
                    params: vec![None; n],
                }));
            }
        };
        let types = planned.get_parameter_types().map_err(|e| user_error(&QueryError::from(e)))?;
        let mut params: Vec<(usize, Option<DataType>)> = types
            .into_iter()
            .filter_map(|(k, v)| k.trim_start_matches('$').parse::<usize>().ok().filter(|i| *i >= 1).map(|i| (i, v)))
            .collect();
        params.sort_by_key(|(i, _)| *i);
        let n = params.last().map(|(i, _)| *i).unwrap_or(0);
        if n > MAX_PARAMS {
            return Err(user_error(&QueryError::new(ErrorKind::Sql, format!("at most ${MAX_PARAMS} parameters"))));
        }
        let mut by_index = vec![None; n];
        for (i, t) in params {
            by_index[i - 1] = t;
        }
        Ok(Some(PgStatement {
            kind,
            statement: Some(Box::new(stmt)),
            schema: Some(Arc::new(planned.schema().as_arrow().clone())),
            params: by_index,
        }))
    }

    fn get_parameter_types(&self, stmt: &PgStatement) -> PgWireResult<Vec<Type>> {
        Ok(stmt
            .params
            .iter()
            .map(|t| t.as_ref().and_then(|t| arrow_pg::datatypes::into_pg_type(t).ok()).unwrap_or(Type::TEXT))
            .collect())
    }

    fn get_result_schema(&self, stmt: &PgStatement, format: Option<&Format>) -> PgWireResult<Vec<FieldInfo>> {
        match &stmt.schema {
            Some(schema) => arrow_pg::datatypes::arrow_schema_to_pg_fields(
                schema.as_ref(),
                format.unwrap_or(&Format::UnifiedText),
                None,
            ),
            None => Ok(Vec::new()),
        }
    }
}

/// A parameter's value from the wire, by its type (the client's, else the inferred one).
fn decode_param(portal: &Portal<PgStatement>, i: usize, ty: &Type) -> PgWireResult<ScalarValue> {
    use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime};
    Ok(match *ty {
        Type::BOOL => ScalarValue::Boolean(portal.parameter::<bool>(i, ty)?),
        Type::INT2 => ScalarValue::Int16(portal.parameter::<i16>(i, ty)?),
        Type::INT4 => ScalarValue::Int32(portal.parameter::<i32>(i, ty)?),
        Type::INT8 => ScalarValue::Int64(portal.parameter::<i64>(i, ty)?),
        Type::FLOAT4 => ScalarValue::Float32(portal.parameter::<f32>(i, ty)?),
        Type::FLOAT8 => ScalarValue::Float64(portal.parameter::<f64>(i, ty)?),
        Type::DATE => ScalarValue::Date32(
            portal
                .parameter::<NaiveDate>(i, ty)?
                .map(|d| (d - NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch")).num_days() as i32),
        ),
        Type::TIMESTAMP => ScalarValue::TimestampMicrosecond(
            portal.parameter::<NaiveDateTime>(i, ty)?.map(|t| t.and_utc().timestamp_micros()),
            None,
        ),
        Type::TIMESTAMPTZ => ScalarValue::TimestampMicrosecond(
            portal.parameter::<DateTime<FixedOffset>>(i, ty)?.map(|t| t.timestamp_micros()),
            Some("UTC".into()),
        ),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN
            if portal.parameter_format.is_binary(i) =>
        {
            ScalarValue::Utf8(portal.parameter::<String>(i, &Type::TEXT)?)
        }
        _ => {
            // Text and anything else sent as text: a string the plan's type is cast from.
            let bytes = portal.parameters.get(i).cloned().flatten();
            match bytes {
                None => ScalarValue::Utf8(None),
                Some(b) if !portal.parameter_format.is_binary(i) => {
                    ScalarValue::Utf8(Some(String::from_utf8(b.to_vec()).map_err(|_| {
                        user_error(&QueryError::new(ErrorKind::Sql, format!("parameter ${} is not UTF-8 text", i + 1)))
                    })?))
                }
                Some(_) => {
                    return Err(user_error(&QueryError::new(
                        ErrorKind::Sql,
                        format!(
                            "parameter ${}: binary values of type {} are not supported; send it as text",
                            i + 1,
                            ty.name()
                        ),
                    )))
                }
            }
        }
    })
}

/// A portal's parameter values.
fn decode_params(portal: &Portal<PgStatement>) -> PgWireResult<Vec<ScalarValue>> {
    let declared = &portal.statement.parameter_types;
    let stmt = &portal.statement.statement;
    let mut params = Vec::with_capacity(portal.parameter_len());
    for i in 0..portal.parameter_len() {
        let ty = declared
            .get(i)
            .cloned()
            .flatten()
            .or_else(|| stmt.params.get(i).cloned().flatten().and_then(|t| arrow_pg::datatypes::into_pg_type(&t).ok()))
            .unwrap_or(Type::TEXT);
        params.push(decode_param(portal, i, &ty)?);
    }
    Ok(params)
}

#[async_trait]
impl ExtendedQueryHandler for Handlers {
    type Statement = PgStatement;
    type QueryParser = Parser;

    fn query_parser(&self) -> Arc<Parser> {
        Arc::new(Parser(Arc::clone(&self.0)))
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<PgStatement>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: pgwire::api::store::PortalStore<Statement = PgStatement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = session_of(client)?;
        let stmt = &portal.statement.statement;
        if let Some(r) = self.answer_locally(client, &session, &stmt.kind)? {
            return Ok(r);
        }
        let params = decode_params(portal)?;
        let request = Handlers::request(&session, stmt.statement.clone(), params);
        let token = CancellationToken::new();
        *session.running.lock().expect("running") = Some(token.clone());
        self.run(client, &session, request, &portal.result_column_format, token).await
    }

    async fn do_describe_statement<C>(
        &self,
        _client: &mut C,
        target: &StoredStatement<PgStatement>,
    ) -> PgWireResult<DescribeStatementResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: pgwire::api::store::PortalStore<Statement = PgStatement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let parser = Parser(Arc::clone(&self.0));
        let inferred = parser.get_parameter_types(&target.statement)?;
        let params = inferred
            .into_iter()
            .enumerate()
            .map(|(i, t)| target.parameter_types.get(i).cloned().flatten().unwrap_or(t))
            .collect();
        let fields = parser.get_result_schema(&target.statement, None)?;
        Ok(DescribeStatementResponse::new(params, fields))
    }

    async fn do_describe_portal<C>(
        &self,
        client: &mut C,
        target: &Portal<PgStatement>,
    ) -> PgWireResult<DescribePortalResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: pgwire::api::store::PortalStore<Statement = PgStatement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let stmt = &target.statement.statement;
        if stmt.schema.is_none() && matches!(stmt.kind, Kind::Query) {
            // Planned with its values: the statement did not plan without them.
            let session = session_of(client)?;
            let request = Handlers::request(&session, stmt.statement.clone(), decode_params(target)?);
            let plan = self.0.plan(&session, &request).await.map_err(|e| user_error(&e))?;
            let schema = plan.schema().as_arrow().clone();
            let fields = arrow_pg::datatypes::arrow_schema_to_pg_fields(&schema, &target.result_column_format, None)?;
            return Ok(DescribePortalResponse::new(fields));
        }
        let parser = Parser(Arc::clone(&self.0));
        let fields = parser.get_result_schema(stmt, Some(&target.result_column_format))?;
        Ok(DescribePortalResponse::new(fields))
    }
}

/// `current_setting(name [, missing_ok])` over a connection's settings.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct CurrentSetting {
    settings: Arc<BTreeMap<String, String>>,
    signature: datafusion::logical_expr::Signature,
}

impl CurrentSetting {
    pub fn new(settings: Arc<BTreeMap<String, String>>) -> CurrentSetting {
        use datafusion::logical_expr::{Signature, TypeSignature, Volatility};
        CurrentSetting {
            settings,
            signature: Signature::one_of(
                vec![TypeSignature::String(1), TypeSignature::Exact(vec![DataType::Utf8, DataType::Boolean])],
                Volatility::Stable,
            ),
        }
    }
}

impl datafusion::logical_expr::ScalarUDFImpl for CurrentSetting {
    fn name(&self) -> &str {
        "current_setting"
    }
    fn signature(&self) -> &datafusion::logical_expr::Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(
        &self,
        args: datafusion::logical_expr::ScalarFunctionArgs,
    ) -> datafusion::error::Result<datafusion::logical_expr::ColumnarValue> {
        let rows = args.number_rows;
        let names = args.args[0].to_array(rows)?;
        let names = arrow::compute::cast(&names, &DataType::Utf8)?;
        let names = names.as_any().downcast_ref::<StringArray>().expect("utf8");
        let missing_ok = match args.args.get(1) {
            Some(datafusion::logical_expr::ColumnarValue::Scalar(ScalarValue::Boolean(Some(b)))) => *b,
            _ => false,
        };
        let mut out = Vec::with_capacity(rows);
        for name in names.iter() {
            match name {
                None => out.push(None),
                Some(n) => match self.settings.get(&n.to_ascii_lowercase()) {
                    Some(v) => out.push(Some(v.clone())),
                    None if missing_ok => out.push(None),
                    None => {
                        return datafusion::common::exec_err!("unrecognized configuration parameter \"{n}\"");
                    }
                },
            }
        }
        let array: ArrayRef = Arc::new(StringArray::from(out));
        Ok(datafusion::logical_expr::ColumnarValue::Array(array))
    }
}

/// `version()` in PostgreSQL's form (Grafana, JDBC and psql parse it).
pub fn version_udf() -> datafusion::logical_expr::ScalarUDF {
    let version = format!(
        "PostgreSQL {SERVER_VERSION} (ccstream {}, Apache DataFusion {}) on x86_64-pc-linux-gnu, 64-bit",
        env!("CARGO_PKG_VERSION"),
        datafusion::DATAFUSION_VERSION
    );
    datafusion::logical_expr::create_udf(
        "version",
        vec![],
        DataType::Utf8,
        datafusion::logical_expr::Volatility::Immutable,
        Arc::new(move |_args: &[datafusion::logical_expr::ColumnarValue]| {
            Ok(datafusion::logical_expr::ColumnarValue::Scalar(ScalarValue::Utf8(Some(version.clone()))))
        }),
    )
}

/// The session's catalog as the Postgres catalog sees it: a weak reference, since the
/// catalog holds `pg_catalog` and `pg_catalog` lists the catalog (a strong one would be a
/// cycle, and every refreshed snapshot would stay in memory).
#[derive(Debug, Clone)]
pub struct WeakCatalogs(pub std::sync::Weak<dyn datafusion::catalog::CatalogProviderList>);

impl WeakCatalogs {
    fn get(&self) -> Option<Arc<dyn datafusion::catalog::CatalogProviderList>> {
        self.0.upgrade()
    }
}

#[async_trait]
impl datafusion_pg_catalog::pg_catalog::catalog_info::CatalogInfo for WeakCatalogs {
    async fn catalog_names(&self) -> datafusion::error::Result<Vec<String>> {
        Ok(self.get().map(|l| datafusion::catalog::CatalogProviderList::catalog_names(l.as_ref())).unwrap_or_default())
    }

    async fn schema_names(&self, catalog_name: &str) -> datafusion::error::Result<Option<Vec<String>>> {
        Ok(self.get().and_then(|l| l.catalog(catalog_name)).map(|c| c.schema_names()))
    }

    async fn table_names(
        &self,
        catalog_name: &str,
        schema_name: &str,
    ) -> datafusion::error::Result<Option<Vec<String>>> {
        Ok(self
            .get()
            .and_then(|l| l.catalog(catalog_name))
            .and_then(|c| c.schema(schema_name))
            .map(|s| s.table_names()))
    }

    async fn table_schema(
        &self,
        catalog_name: &str,
        schema_name: &str,
        table_name: &str,
    ) -> datafusion::error::Result<Option<SchemaRef>> {
        let Some(schema) = self.get().and_then(|l| l.catalog(catalog_name)).and_then(|c| c.schema(schema_name)) else {
            return Ok(None);
        };
        Ok(schema.table(table_name).await?.map(|t| t.schema()))
    }

    async fn table_type(
        &self,
        catalog_name: &str,
        schema_name: &str,
        table_name: &str,
    ) -> datafusion::error::Result<Option<datafusion::logical_expr::TableType>> {
        let Some(schema) = self.get().and_then(|l| l.catalog(catalog_name)).and_then(|c| c.schema(schema_name)) else {
            return Ok(None);
        };
        Ok(schema.table(table_name).await?.map(|t| t.table_type()))
    }
}
