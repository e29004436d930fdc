//! Who may read what: principals, their roles and tenants, and their credentials.
//!
//! A principal (config `[[serve.principals]]`) has a role and a list of tenants (`["*"]` for
//! all). Its credentials are stored only as hashes:
//! - `password_hash`: a SCRAM-SHA-256 verifier in PostgreSQL's format
//!   (`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, base64), checked by the
//!   Postgres wire's SCRAM exchange and by HTTP Basic authentication;
//! - `token_hash`: an Argon2 PHC string (`$argon2id$…`) of an HTTP bearer token.
//!
//! `ccstream secret hash` makes both. Verifying a bearer token costs an Argon2 hash (tens of
//! milliseconds, by design), so verified tokens are remembered by their SHA-256 for a few
//! minutes in a bounded cache, and at most two slow checks run at once (a flood of
//! made-up credentials queues behind them instead of taking every core).
//!
//! What a role may read ([`Role::may_read`]): `admin` every table and view (and, with
//! `tenants = ["*"]`, `dead_letters`, which belongs to no tenant); `analyst` every table and
//! view of its tenants; `supervisor` the metric views and the per-call tables
//! (`call_facts`, `agent_legs`, `interval_partials`), restricted to its `queues` when given.
//! The restriction to tenants (and queues) is applied under every table scan by
//! [`crate::catalog`]; this module only decides.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ccstream_schemas::{
    TABLE_AGENT_LEGS, TABLE_CALL_FACTS, TABLE_CORRECTIONS, TABLE_DEAD_LETTERS, TABLE_EVENTS, TABLE_INTERVAL_PARTIALS,
    VIEW_AGENT_DAY_METRICS, VIEW_AGENT_OCCUPANCY, VIEW_AGENT_STATE_TIME, VIEW_INTERVAL_METRICS, VIEW_MEDIA_STREAMS,
    VIEW_SBC_LEGS,
};
use ring::{digest, hmac, pbkdf2, rand::SecureRandom};
use serde::Deserialize;

/// The longest name, tenant or queue id a principal may have.
const MAX_NAME_BYTES: usize = 256;
/// How long a verified bearer token is remembered.
const TOKEN_CACHE_TTL: Duration = Duration::from_secs(300);
/// How many verified tokens are remembered.
const TOKEN_CACHE_ENTRIES: usize = 4096;
/// SCRAM iterations of a new verifier (PostgreSQL's default).
pub const SCRAM_ITERATIONS: u32 = 4096;

/// What failed in access control.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("principal {name:?}: {reason}")]
    Principal { name: String, reason: String },
    #[error("no credentials")]
    Missing,
    #[error("invalid credentials")]
    Invalid,
    #[error("{0}")]
    Forbidden(String),
}

/// A principal's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Analyst,
    Supervisor,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Analyst => "analyst",
            Role::Supervisor => "supervisor",
        }
    }

    /// Whether this role may read the table or view `name` (with all tenants or not).
    pub fn may_read(self, name: &str, all_tenants: bool) -> bool {
        match self {
            Role::Admin => name != TABLE_DEAD_LETTERS || all_tenants,
            Role::Analyst => name != TABLE_DEAD_LETTERS,
            Role::Supervisor => matches!(
                name,
                TABLE_CALL_FACTS
                    | TABLE_AGENT_LEGS
                    | TABLE_INTERVAL_PARTIALS
                    | VIEW_INTERVAL_METRICS
                    | VIEW_AGENT_DAY_METRICS
                    | VIEW_AGENT_STATE_TIME
                    | VIEW_AGENT_OCCUPANCY
            ),
        }
    }
}

/// Every table and view a frontend can name, for the role checks and `/v1/tables`.
pub const READABLE: [&str; 12] = [
    TABLE_EVENTS,
    TABLE_CALL_FACTS,
    TABLE_AGENT_LEGS,
    TABLE_INTERVAL_PARTIALS,
    TABLE_CORRECTIONS,
    TABLE_DEAD_LETTERS,
    VIEW_INTERVAL_METRICS,
    VIEW_AGENT_DAY_METRICS,
    VIEW_SBC_LEGS,
    VIEW_MEDIA_STREAMS,
    VIEW_AGENT_STATE_TIME,
    VIEW_AGENT_OCCUPANCY,
];

/// The rows a principal may see: all tenants, or some (and, optionally, some queues).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope {
    pub role: Role,
    /// `None`: every tenant. Sorted, without duplicates.
    pub tenants: Option<Vec<String>>,
    /// `None`: every queue of the tenants. Sorted, without duplicates.
    pub queues: Option<Vec<String>>,
}

impl Scope {
    /// Everything: the scope of `ccstream sql` on a directory.
    pub fn all() -> Scope {
        Scope { role: Role::Admin, tenants: None, queues: None }
    }

    pub fn may_read(&self, name: &str) -> bool {
        self.role.may_read(name, self.tenants.is_none())
    }

    /// This scope narrowed to one tenant (an admin's `tenant` request field): allowed when
    /// the scope holds that tenant.
    pub fn narrowed_to(&self, tenant: &str) -> Result<Scope, AccessError> {
        let holds = match &self.tenants {
            None => true,
            Some(t) => t.iter().any(|x| x == tenant),
        };
        if !holds {
            return Err(AccessError::Forbidden(format!("tenant {tenant:?} is not in this principal's tenants")));
        }
        Ok(Scope { role: self.role, tenants: Some(vec![tenant.to_string()]), queues: self.queues.clone() })
    }
}

/// One `[[serve.principals]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalConfig {
    pub name: String,
    pub role: Role,
    /// Tenant ids, or `["*"]` for every tenant.
    pub tenants: Vec<String>,
    /// Supervisors only: the queues whose calls and intervals they see (default: all).
    #[serde(default)]
    pub queues: Option<Vec<String>>,
    /// SCRAM-SHA-256 verifier (`ccstream secret hash --for password`).
    #[serde(default)]
    pub password_hash: Option<String>,
    /// Argon2 hash of a bearer token (`ccstream secret hash --for token`).
    #[serde(default)]
    pub token_hash: Option<String>,
}

/// An authenticated principal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub scope: Scope,
}

#[derive(Debug)]
struct Entry {
    principal: Principal,
    scram: Option<ScramVerifier>,
    token: Option<String>,
}

/// The configured principals and their credential checks.
#[derive(Debug)]
pub struct Principals {
    by_name: HashMap<String, Entry>,
    token_cache: Mutex<HashMap<[u8; 32], (usize, Instant)>>,
    order: Vec<String>,
    /// Bounds the deliberately slow hashes (Argon2, PBKDF2) running at once: a flood of
    /// made-up credentials waits for these, it does not take every core and gigabytes.
    slow_checks: std::sync::Arc<(Mutex<usize>, std::sync::Condvar)>,
    /// The verifier an unknown user name is checked against, so that unknown and known
    /// names cost the same.
    decoy: ScramVerifier,
}

/// Hashes verified at once.
const SLOW_CHECKS: usize = 2;

/// A permit of [`Principals::slow_checks`].
struct SlowCheck(std::sync::Arc<(Mutex<usize>, std::sync::Condvar)>);

impl SlowCheck {
    fn acquire(pair: &std::sync::Arc<(Mutex<usize>, std::sync::Condvar)>) -> SlowCheck {
        let (lock, cvar) = &**pair;
        let mut n = lock.lock().expect("slow checks");
        while *n >= SLOW_CHECKS {
            n = cvar.wait(n).expect("slow checks");
        }
        *n += 1;
        SlowCheck(std::sync::Arc::clone(pair))
    }
}

impl Drop for SlowCheck {
    fn drop(&mut self) {
        let (lock, cvar) = &*self.0;
        if let Ok(mut n) = lock.lock() {
            *n -= 1;
            cvar.notify_one();
        }
    }
}

impl Principals {
    /// Validates the entries: unique names, known hashes, tenants given, `queues` only for
    /// supervisors, bounded lengths.
    pub fn new(configs: &[PrincipalConfig]) -> Result<Principals, AccessError> {
        let mut by_name = HashMap::new();
        let mut order = Vec::new();
        for c in configs {
            let bad = |reason: &str| AccessError::Principal { name: c.name.clone(), reason: reason.to_string() };
            if c.name.is_empty() || c.name.len() > MAX_NAME_BYTES || c.name.chars().any(|ch| ch.is_control()) {
                return Err(bad("the name must be 1 to 256 bytes without control characters"));
            }
            if c.tenants.is_empty() {
                return Err(bad("`tenants` is empty: list tenant ids, or [\"*\"] for all"));
            }
            if c.tenants.iter().chain(c.queues.iter().flatten()).any(|t| t.is_empty() || t.len() > MAX_NAME_BYTES) {
                return Err(bad("tenant and queue ids must be 1 to 256 bytes"));
            }
            let all = c.tenants.iter().any(|t| t == "*");
            if all && c.tenants.len() > 1 {
                return Err(bad("\"*\" stands alone in `tenants`"));
            }
            if c.queues.is_some() && c.role != Role::Supervisor {
                return Err(bad("`queues` applies to supervisors only"));
            }
            if c.password_hash.is_none() && c.token_hash.is_none() {
                return Err(bad("no credentials: give password_hash and/or token_hash"));
            }
            let scram = match &c.password_hash {
                Some(h) => Some(ScramVerifier::parse(h).map_err(|e| bad(&format!("password_hash: {e}")))?),
                None => None,
            };
            if let Some(h) = &c.token_hash {
                PasswordHash::new(h).map_err(|e| bad(&format!("token_hash is not an Argon2 PHC string: {e}")))?;
            }
            let sorted = |v: &[String]| {
                let mut v = v.to_vec();
                v.sort();
                v.dedup();
                v
            };
            let scope = Scope {
                role: c.role,
                tenants: if all { None } else { Some(sorted(&c.tenants)) },
                queues: c.queues.as_deref().map(sorted),
            };
            let entry =
                Entry { principal: Principal { name: c.name.clone(), scope }, scram, token: c.token_hash.clone() };
            if by_name.insert(c.name.clone(), entry).is_some() {
                return Err(bad("defined twice"));
            }
            order.push(c.name.clone());
        }
        Ok(Principals {
            by_name,
            token_cache: Mutex::new(HashMap::new()),
            order,
            slow_checks: std::sync::Arc::new((Mutex::new(0), std::sync::Condvar::new())),
            decoy: ScramVerifier::new(&new_token()),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The principal `name` and its SCRAM verifier, for the Postgres wire's exchange.
    pub fn scram(&self, name: &str) -> Option<(&Principal, &ScramVerifier)> {
        let e = self.by_name.get(name)?;
        Some((&e.principal, e.scram.as_ref()?))
    }

    /// HTTP Basic: `name` and a plain password, checked against the SCRAM verifier (an
    /// unknown name against a decoy, at the same cost). Blocks while other slow checks run.
    pub fn check_password(&self, name: &str, password: &str) -> Result<Principal, AccessError> {
        if password.len() > 4096 {
            return Err(AccessError::Invalid);
        }
        let _permit = SlowCheck::acquire(&self.slow_checks);
        match self.scram(name) {
            Some((p, v)) if v.check_password(password) => Ok(p.clone()),
            Some(_) => Err(AccessError::Invalid),
            None => {
                let _ = self.decoy.check_password(password);
                Err(AccessError::Invalid)
            }
        }
    }

    /// A bearer token, checked against every principal's token hash (remembered once
    /// verified).
    /// The principal of a token verified within the cache's lifetime: a hash and a lookup,
    /// cheap enough for an async worker. `None` means [`Principals::check_token`] must run.
    pub fn cached_token(&self, token: &str) -> Option<Principal> {
        if token.is_empty() || token.len() > 4096 {
            return None;
        }
        let cache = self.token_cache.lock().expect("token cache");
        let (i, at) = cache.get(&sha256(token.as_bytes()))?;
        (at.elapsed() < TOKEN_CACHE_TTL).then(|| self.by_name[&self.order[*i]].principal.clone())
    }

    pub fn check_token(&self, token: &str) -> Result<Principal, AccessError> {
        if let Some(principal) = self.cached_token(token) {
            return Ok(principal);
        }
        if token.is_empty() || token.len() > 4096 {
            return Err(AccessError::Invalid);
        }
        let key = sha256(token.as_bytes());
        let now = Instant::now();
        let _permit = SlowCheck::acquire(&self.slow_checks);
        for (i, name) in self.order.iter().enumerate() {
            let entry = &self.by_name[name];
            let Some(h) = &entry.token else { continue };
            let Ok(parsed) = PasswordHash::new(h) else { continue };
            if Argon2::default().verify_password(token.as_bytes(), &parsed).is_ok() {
                let mut cache = self.token_cache.lock().expect("token cache");
                if cache.len() >= TOKEN_CACHE_ENTRIES {
                    cache.retain(|_, (_, at)| now.duration_since(*at) < TOKEN_CACHE_TTL);
                    if cache.len() >= TOKEN_CACHE_ENTRIES {
                        cache.clear();
                    }
                }
                cache.insert(key, (i, now));
                return Ok(entry.principal.clone());
            }
        }
        Err(AccessError::Invalid)
    }
}

/// A SCRAM-SHA-256 verifier: what the server keeps of a password (RFC 5802, RFC 7677).
#[derive(Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl std::fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramVerifier").field("iterations", &self.iterations).finish_non_exhaustive()
    }
}

impl ScramVerifier {
    /// Parses `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (PostgreSQL's
    /// `pg_authid.rolpassword` format).
    pub fn parse(s: &str) -> Result<ScramVerifier, String> {
        let rest = s
            .strip_prefix("SCRAM-SHA-256$")
            .ok_or("expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>")?;
        let (params, keys) = rest.split_once('$').ok_or("missing the keys after the second '$'")?;
        let (iter, salt) = params.split_once(':').ok_or("missing ':' between iterations and salt")?;
        let (stored, server) = keys.split_once(':').ok_or("missing ':' between StoredKey and ServerKey")?;
        let iterations: u32 = iter.parse().map_err(|_| "iterations is not a number")?;
        if !(1..=10_000_000).contains(&iterations) {
            return Err("iterations must be between 1 and 10000000".into());
        }
        let salt = B64.decode(salt).map_err(|_| "the salt is not base64")?;
        let key = |k: &str| -> Result<[u8; 32], String> {
            B64.decode(k)
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or_else(|| "a key is not 32 bytes of base64".to_string())
        };
        Ok(ScramVerifier { iterations, salt, stored_key: key(stored)?, server_key: key(server)? })
    }

    /// A new verifier for `password` with a random salt.
    pub fn new(password: &str) -> ScramVerifier {
        let mut salt = vec![0u8; 16];
        ring::rand::SystemRandom::new().fill(&mut salt).expect("system randomness");
        ScramVerifier::derive(password, &salt, SCRAM_ITERATIONS)
    }

    fn derive(password: &str, salt: &[u8], iterations: u32) -> ScramVerifier {
        let salted = salted_password(password, salt, iterations);
        let client_key = hmac_sha256(&salted, b"Client Key");
        let stored_key = sha256(&client_key);
        let server_key = hmac_sha256(&salted, b"Server Key");
        ScramVerifier { iterations, salt: salt.to_vec(), stored_key, server_key }
    }

    /// Whether `password` is the one this verifier was made from.
    pub fn check_password(&self, password: &str) -> bool {
        let other = ScramVerifier::derive(password, &self.salt, self.iterations);
        equal_in_constant_time(&other.stored_key, &self.stored_key)
    }

    /// The verifier in PostgreSQL's text format.
    pub fn encode(&self) -> String {
        format!(
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }
}

/// SCRAM's `Hi()`: PBKDF2-HMAC-SHA-256. (SASLprep is the identity for the ASCII and common
/// Unicode passwords this accepts; PostgreSQL also uses the raw bytes when SASLprep fails.)
fn salted_password(password: &str, salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut out = [0u8; 32];
    let iterations = std::num::NonZeroU32::new(iterations.max(1)).expect("non-zero");
    pbkdf2::derive(pbkdf2::PBKDF2_HMAC_SHA256, iterations, salt, password.as_bytes(), &mut out);
    out
}

/// `a == b`, in time that depends on their lengths only.
pub(crate) fn equal_in_constant_time(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(crate) fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    hmac::sign(&k, data).as_ref().try_into().expect("32 bytes")
}

pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    digest::digest(&digest::SHA256, data).as_ref().try_into().expect("32 bytes")
}

/// An Argon2id PHC string of `token` with a random salt.
pub fn hash_token(token: &str) -> String {
    let mut salt = [0u8; 16];
    ring::rand::SystemRandom::new().fill(&mut salt).expect("system randomness");
    let salt = SaltString::encode_b64(&salt).expect("16 bytes of salt");
    Argon2::default().hash_password(token.as_bytes(), &salt).expect("argon2 with default parameters").to_string()
}

/// A new random bearer token (32 bytes, URL-safe base64).
pub fn new_token() -> String {
    let mut raw = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut raw).expect("system randomness");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677's example: user "user", password "pencil", salt and iterations as given.
    #[test]
    fn scram_keys_match_rfc_7677() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let v = ScramVerifier::derive("pencil", &salt, 4096);
        let salted = salted_password("pencil", &salt, 4096);
        let client_key = hmac_sha256(&salted, b"Client Key");
        let auth = "n=user,r=rOprNGfwEbeRWgbNEkqO,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let sig = hmac_sha256(&v.stored_key, auth.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(sig).map(|(a, b)| a ^ b).collect();
        assert_eq!(B64.encode(proof), "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=");
        assert_eq!(
            B64.encode(hmac_sha256(&v.server_key, auth.as_bytes())),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
        let parsed = ScramVerifier::parse(&v.encode()).unwrap();
        assert_eq!(parsed, v);
        assert!(parsed.check_password("pencil"));
        assert!(!parsed.check_password("pencil "));
    }

    #[test]
    fn principals_are_validated() {
        let p = |tenants: &[&str], role: Role, queues: Option<Vec<String>>| PrincipalConfig {
            name: "a".into(),
            role,
            tenants: tenants.iter().map(|s| s.to_string()).collect(),
            queues,
            password_hash: Some(ScramVerifier::new("pw").encode()),
            token_hash: None,
        };
        assert!(Principals::new(&[p(&[], Role::Analyst, None)]).is_err());
        assert!(Principals::new(&[p(&["*", "t1"], Role::Analyst, None)]).is_err());
        assert!(Principals::new(&[p(&["t1"], Role::Analyst, Some(vec!["q".into()]))]).is_err());
        assert!(Principals::new(&[p(&["t1"], Role::Analyst, None), p(&["t2"], Role::Admin, None)]).is_err());
        let mut c = p(&["t1"], Role::Analyst, None);
        c.password_hash = Some("md5abc".into());
        assert!(Principals::new(&[c]).is_err());
        let ps = Principals::new(&[p(&["t2", "t1", "t1"], Role::Supervisor, Some(vec!["q1".into()]))]).unwrap();
        let who = ps.check_password("a", "pw").unwrap();
        assert_eq!(who.scope.tenants, Some(vec!["t1".to_string(), "t2".to_string()]));
        assert!(ps.check_password("a", "wrong").is_err());
        assert!(ps.check_password("b", "pw").is_err());
    }

    #[test]
    fn tokens_verify_and_are_remembered() {
        let token = new_token();
        let ps = Principals::new(&[PrincipalConfig {
            name: "bot".into(),
            role: Role::Admin,
            tenants: vec!["*".into()],
            queues: None,
            password_hash: None,
            token_hash: Some(hash_token(&token)),
        }])
        .unwrap();
        assert_eq!(ps.check_token(&token).unwrap().name, "bot");
        assert_eq!(ps.check_token(&token).unwrap().scope, Scope::all());
        assert!(ps.check_token("nope").is_err());
        assert!(ps.check_token("").is_err());
    }

    #[test]
    fn roles_decide_tables() {
        assert!(Role::Admin.may_read(TABLE_DEAD_LETTERS, true));
        assert!(!Role::Admin.may_read(TABLE_DEAD_LETTERS, false));
        assert!(!Role::Analyst.may_read(TABLE_DEAD_LETTERS, true));
        assert!(Role::Analyst.may_read(TABLE_EVENTS, false));
        assert!(!Role::Supervisor.may_read(TABLE_EVENTS, false));
        assert!(Role::Supervisor.may_read(VIEW_INTERVAL_METRICS, false));
        assert!(!Role::Supervisor.may_read(VIEW_SBC_LEGS, false));
    }
}
