//! Microsoft 365 sign-in: Microsoft Entra ID access tokens as credentials, on the HTTP API
//! (`Authorization: Bearer <JWT>`) and the Postgres wire (the token as the password, as
//! Azure Database for PostgreSQL takes it; TLS required).
//!
//! A token is accepted when, in this order:
//! 1. it is at most 16 KiB, its header says `RS256` (Entra's algorithm — `none`, `HS256` and
//!    every other algorithm are refused before any key is looked at) and names a `kid`;
//! 2. its `tid` claim is the `tenant_id` of a `[[serve.entra]]` entry (read before the
//!    signature only to pick the entry; nothing else is trusted until step 3);
//! 3. its signature verifies with the key `kid` of the entry's JWKS (fetched from
//!    `jwks_url`, cached; an unknown `kid` refetches at most once per 30 s, so a flood of
//!    made-up key ids costs one request per 30 s; at most 64 keys are kept);
//! 4. `iss` is `https://login.microsoftonline.com/{tid}/v2.0` (or the entry's `issuer`),
//!    `aud` one of the entry's `audience`, `exp` and `nbf` hold with 60 s of clock skew;
//! 5. its app roles (`roles`) or groups (`groups`) map to a role (the most privileged
//!    match wins), else the entry's `default_role`; none → refused.
//!
//! The principal is named by `preferred_username` (else `upn`, else `oid`) and reads the
//! entry's `tenants`.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::access::{AccessError, Principal, Role, Scope};

const MAX_TOKEN_BYTES: usize = 16 * 1024;
const MAX_KEYS: usize = 64;
const MAX_JWKS_BYTES: usize = 1 << 20;
const REFETCH_AFTER: Duration = Duration::from_secs(30);
const KEYS_TTL: Duration = Duration::from_secs(24 * 3600);
const LEEWAY_S: u64 = 60;

/// One `[[serve.entra]]` entry: an Entra tenant whose users may sign in.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntraConfig {
    /// The Entra tenant id (the tokens' `tid`).
    pub tenant_id: String,
    /// The ccstream tenants its users read (`["*"]` for all).
    pub tenants: Vec<String>,
    /// Accepted `aud` values: the app registration's client id and/or Application ID URI.
    pub audience: Vec<String>,
    /// Default `https://login.microsoftonline.com/{tenant_id}/discovery/v2.0/keys`.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Default `https://login.microsoftonline.com/{tenant_id}/v2.0`.
    #[serde(default)]
    pub issuer: Option<String>,
    /// App role value → role.
    #[serde(default)]
    pub roles: BTreeMap<String, Role>,
    /// Group object id → role.
    #[serde(default)]
    pub groups: BTreeMap<String, Role>,
    /// The role of a signed-in user whose roles and groups map to none (default: refused).
    #[serde(default)]
    pub default_role: Option<Role>,
}

impl EntraConfig {
    fn jwks_url(&self) -> String {
        self.jwks_url
            .clone()
            .unwrap_or_else(|| format!("https://login.microsoftonline.com/{}/discovery/v2.0/keys", self.tenant_id))
    }

    fn issuer(&self) -> String {
        self.issuer.clone().unwrap_or_else(|| format!("https://login.microsoftonline.com/{}/v2.0", self.tenant_id))
    }
}

#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    preferred_username: Option<String>,
    #[serde(default)]
    upn: Option<String>,
    #[serde(default)]
    oid: Option<String>,
    tid: String,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Jwks {
    keys: Vec<Jwk>,
}

#[derive(Debug, Deserialize)]
struct Jwk {
    #[serde(default)]
    kid: Option<String>,
    kty: String,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
}

struct KeySet {
    keys: HashMap<String, DecodingKey>,
    fetched: Option<Instant>,
}

/// The Entra verifier: the configured tenants and their cached keys.
pub struct Entra {
    entries: Vec<EntraConfig>,
    keys: tokio::sync::Mutex<HashMap<String, KeySet>>,
    http: reqwest::Client,
}

impl std::fmt::Debug for Entra {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entra")
            .field("tenants", &self.entries.iter().map(|e| &e.tenant_id).collect::<Vec<_>>())
            .finish()
    }
}

/// Whether `token` looks like a JWT (three base64url segments, a JSON header).
pub fn looks_like_jwt(token: &str) -> bool {
    token.starts_with("eyJ") && token.bytes().filter(|b| *b == b'.').count() == 2
}

impl Entra {
    pub fn new(entries: Vec<EntraConfig>) -> Result<Entra, AccessError> {
        for e in &entries {
            let bad =
                |reason: &str| AccessError::Principal { name: format!("entra {}", e.tenant_id), reason: reason.into() };
            if e.tenant_id.is_empty() || e.tenants.is_empty() || e.audience.is_empty() {
                return Err(bad("tenant_id, tenants and audience are required"));
            }
            if e.tenants.iter().any(|t| t == "*") && e.tenants.len() > 1 {
                return Err(bad("\"*\" stands alone in `tenants`"));
            }
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| AccessError::Principal { name: "entra".into(), reason: e.to_string() })?;
        Ok(Entra { entries, keys: tokio::sync::Mutex::new(HashMap::new()), http })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The principal of a valid token; `AccessError::Invalid` with the reason logged.
    pub async fn verify(&self, token: &str) -> Result<Principal, AccessError> {
        match self.verify_inner(token).await {
            Ok(p) => Ok(p),
            Err(reason) => {
                tracing::info!(%reason, "Entra token refused");
                Err(AccessError::Invalid)
            }
        }
    }

    async fn verify_inner(&self, token: &str) -> Result<Principal, String> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err("token too long".into());
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| format!("bad header: {e}"))?;
        if header.alg != Algorithm::RS256 {
            return Err(format!("algorithm {:?} is not RS256", header.alg));
        }
        let kid = header.kid.ok_or("no kid")?;
        let tid = unverified_tid(token)?;
        let entry =
            self.entries.iter().find(|e| e.tenant_id == tid).ok_or_else(|| format!("tid {tid} is not configured"))?;
        let key = self.key(&entry.jwks_url(), &kid).await?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&entry.audience);
        validation.set_issuer(&[entry.issuer()]);
        validation.leeway = LEEWAY_S;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<Claims>(token, &key, &validation).map_err(|e| format!("{e}"))?;
        let claims = data.claims;
        if claims.tid != entry.tenant_id {
            return Err("tid changed between peeking and verifying".into());
        }
        let mapped = claims
            .roles
            .iter()
            .filter_map(|r| entry.roles.get(r))
            .chain(claims.groups.iter().filter_map(|g| entry.groups.get(g)))
            .copied()
            .max_by_key(|r| match r {
                Role::Admin => 3,
                Role::Analyst => 2,
                Role::Supervisor => 1,
            });
        let role = mapped.or(entry.default_role).ok_or("no app role or group maps to a role")?;
        let name = claims.preferred_username.or(claims.upn).or(claims.oid).ok_or("no user name or oid")?;
        let all = entry.tenants.iter().any(|t| t == "*");
        let mut tenants = entry.tenants.clone();
        tenants.sort();
        Ok(Principal { name, scope: Scope { role, tenants: if all { None } else { Some(tenants) }, queues: None } })
    }

    /// The key `kid` of the JWKS at `url`, fetching the set when it is unknown (at most
    /// once per 30 s) or a day old.
    async fn key(&self, url: &str, kid: &str) -> Result<DecodingKey, String> {
        let mut sets = self.keys.lock().await;
        let set = sets.entry(url.to_string()).or_insert_with(|| KeySet { keys: HashMap::new(), fetched: None });
        let stale = set.fetched.is_none_or(|t| t.elapsed() > KEYS_TTL);
        let may_refetch = set.fetched.is_none_or(|t| t.elapsed() > REFETCH_AFTER);
        if stale || (!set.keys.contains_key(kid) && may_refetch) {
            set.fetched = Some(Instant::now());
            match self.fetch(url).await {
                Ok(keys) => set.keys = keys,
                Err(e) => tracing::warn!(%url, error = %e, "fetching the Entra signing keys failed"),
            }
        }
        set.keys.get(kid).cloned().ok_or_else(|| format!("unknown key id {kid}"))
    }

    async fn fetch(&self, url: &str) -> Result<HashMap<String, DecodingKey>, String> {
        let resp = self.http.get(url).send().await.map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("HTTP {}", resp.status()));
        }
        let body = resp.bytes().await.map_err(|e| e.to_string())?;
        if body.len() > MAX_JWKS_BYTES {
            return Err("the key set is larger than 1 MiB".into());
        }
        let jwks: Jwks = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        let mut keys = HashMap::new();
        for k in jwks.keys.into_iter().filter(|k| k.kty == "RSA").take(MAX_KEYS) {
            if let (Some(kid), Some(n), Some(e)) = (k.kid, k.n, k.e) {
                if let Ok(key) = DecodingKey::from_rsa_components(&n, &e) {
                    keys.insert(kid, key);
                }
            }
        }
        Ok(keys)
    }
}

/// The `tid` claim, read without verifying (only to pick the entry whose keys verify it).
fn unverified_tid(token: &str) -> Result<String, String> {
    #[derive(Deserialize)]
    struct Tid {
        tid: String,
    }
    let payload = token.split('.').nth(1).ok_or("not a JWT")?;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| "the payload is not base64url")?;
    let t: Tid = serde_json::from_slice(&raw).map_err(|_| "no tid claim")?;
    Ok(t.tid)
}
