//! Who may send to the webhooks, and for which tenants.
//!
//! A webhook request presents a secret (`Authorization: Bearer`, the header
//! `x-ccstream-secret`, or the query parameter `code`, which Event Grid subscriptions and
//! Graph notification URLs can carry). The credential it matches decides the tenant of
//! everything the request delivers: with a credential of one tenant every event is that
//! tenant's, and input that names another tenant (an `/events` line's `tenant_id`, an ACS
//! resource that a rule maps to another tenant) is rejected. A credential for `["*"]` (and
//! `[sources] secret`, which is one) lets the input's own tenant stand: it is for the
//! provider's own forwarders, never for a customer.
//!
//! Without any credential the webhook listener refuses to start, unless the config says
//! `insecure = true` (every request is then accepted, for any tenant).

use serde::Deserialize;

/// The longest secret compared (longer ones are refused at start).
const MAX_SECRET_BYTES: usize = 512;
/// The shortest secret accepted at start.
const MIN_SECRET_BYTES: usize = 16;

/// `[[sources.webhooks]]`: one webhook credential.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookCredential {
    /// Names the credential in logs and dead letters (never the secret).
    pub name: String,
    /// The secret its sender presents (16 to 512 bytes).
    pub secret: String,
    /// The tenants it speaks for: one (the usual), several, or `["*"]` for any.
    pub tenants: Vec<String>,
}

/// The tenants a request may deliver input for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantScope {
    /// Any: the input's own tenant (or its mapping rule's) stands.
    Any,
    /// Only these (never empty).
    Only(Vec<String>),
}

impl TenantScope {
    /// Whether input of `tenant` may come with this scope.
    pub fn allows(&self, tenant: &str) -> bool {
        match self {
            TenantScope::Any => true,
            TenantScope::Only(tenants) => tenants.iter().any(|t| t == tenant),
        }
    }

    /// The tenant of input that a mapping rule assigns to `named` (`None`: no rule names
    /// one, and `default` is the tenant of unmapped input), or why the input is refused.
    pub fn resolve(&self, named: Option<&str>, default: &str) -> Result<String, String> {
        match (self, named) {
            (TenantScope::Any, Some(t)) => Ok(t.to_string()),
            (TenantScope::Any, None) => Ok(default.to_string()),
            (scope @ TenantScope::Only(_), Some(t)) if scope.allows(t) => Ok(t.to_string()),
            (TenantScope::Only(ts), Some(t)) => {
                Err(format!("names a resource of tenant {t:?}; the credential speaks for {}", ts.join(", ")))
            }
            (TenantScope::Only(ts), None) if ts.len() == 1 => Ok(ts[0].clone()),
            (scope @ TenantScope::Only(_), None) if scope.allows(default) => Ok(default.to_string()),
            (TenantScope::Only(ts), None) => {
                Err(format!("no rule names its tenant, and the credential speaks for several ({})", ts.join(", ")))
            }
        }
    }
}

/// What a request's secret is worth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No secret presented (401).
    Missing,
    /// A secret no credential has (403).
    Wrong,
    /// A credential's: its name and tenants.
    Allowed { name: String, scope: TenantScope },
}

impl Verdict {
    /// The status and reason a refused request gets (`None`: allowed).
    pub fn refusal(&self) -> Option<(axum::http::StatusCode, &'static str)> {
        match self {
            Verdict::Missing => Some((axum::http::StatusCode::UNAUTHORIZED, "no webhook secret")),
            Verdict::Wrong => Some((axum::http::StatusCode::FORBIDDEN, "wrong webhook secret")),
            Verdict::Allowed { .. } => None,
        }
    }
}

/// The configured webhook credentials.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    entries: Vec<(String, Vec<u8>, TenantScope)>,
    insecure: bool,
}

impl Credentials {
    /// From `[sources]`: `secret` (a credential for any tenant, named `secret`), the
    /// `[[sources.webhooks]]` entries and `insecure`. Errors name the bad entry.
    pub fn new(secret: Option<&str>, webhooks: &[WebhookCredential], insecure: bool) -> Result<Credentials, String> {
        let mut entries: Vec<(String, Vec<u8>, TenantScope)> = Vec::new();
        let legacy =
            secret.map(|s| WebhookCredential { name: "secret".into(), secret: s.into(), tenants: vec!["*".into()] });
        for c in legacy.iter().chain(webhooks) {
            let at = format!("[[sources.webhooks]] {:?}", c.name);
            if c.name.is_empty() {
                return Err("[[sources.webhooks]]: every credential needs a name".into());
            }
            if c.secret.len() < MIN_SECRET_BYTES || c.secret.len() > MAX_SECRET_BYTES {
                return Err(format!("{at}: the secret must be {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes"));
            }
            if entries.iter().any(|(n, _, _)| *n == c.name) {
                return Err(format!("{at}: two credentials have this name"));
            }
            if entries.iter().any(|(_, s, _)| crate::secret_matches(s, c.secret.as_bytes())) {
                return Err(format!("{at}: another credential has the same secret"));
            }
            let scope = match c.tenants.as_slice() {
                [] => return Err(format!("{at}: `tenants` is empty (name one, or [\"*\"] for any)")),
                [any] if any == "*" => TenantScope::Any,
                tenants => {
                    if let Some(bad) = tenants
                        .iter()
                        .find(|t| t.as_str() == "*" || t.is_empty() || t.len() > ccstream_schemas::MAX_TENANT_ID_BYTES)
                    {
                        return Err(format!(
                            "{at}: bad tenant {bad:?} (1 to {} bytes; \"*\" only alone)",
                            ccstream_schemas::MAX_TENANT_ID_BYTES
                        ));
                    }
                    TenantScope::Only(tenants.to_vec())
                }
            };
            entries.push((c.name.clone(), c.secret.as_bytes().to_vec(), scope));
        }
        Ok(Credentials { entries, insecure })
    }

    /// Whether no credential is configured.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether requests are accepted without a credential (`insecure = true` and none
    /// configured).
    pub fn open(&self) -> bool {
        self.entries.is_empty() && self.insecure
    }

    /// Checks a presented secret against every credential (each compared in constant time,
    /// all of them every time).
    pub fn check(&self, presented: Option<&str>) -> Verdict {
        if self.open() {
            return Verdict::Allowed { name: "insecure".into(), scope: TenantScope::Any };
        }
        let Some(presented) = presented else { return Verdict::Missing };
        let mut found = None;
        for (i, (_, secret, _)) in self.entries.iter().enumerate() {
            if crate::secret_matches(presented.as_bytes(), secret) && found.is_none() {
                found = Some(i);
            }
        }
        match found {
            Some(i) => {
                let (name, _, scope) = &self.entries[i];
                Verdict::Allowed { name: name.clone(), scope: scope.clone() }
            }
            None => Verdict::Wrong,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cred(name: &str, secret: &str, tenants: &[&str]) -> WebhookCredential {
        WebhookCredential {
            name: name.into(),
            secret: secret.into(),
            tenants: tenants.iter().map(|t| t.to_string()).collect(),
        }
    }

    #[test]
    fn a_secret_finds_its_credential_and_its_tenants() {
        let c = Credentials::new(
            Some("legacy-secret-0123456789"),
            &[cred("contoso", "contoso-secret-0123", &["contoso"]), cred("both", "both-secret-012345", &["a", "b"])],
            false,
        )
        .unwrap();
        assert_eq!(c.check(None), Verdict::Missing);
        assert_eq!(c.check(Some("contoso-secret-012")), Verdict::Wrong);
        assert_eq!(
            c.check(Some("contoso-secret-0123")),
            Verdict::Allowed { name: "contoso".into(), scope: TenantScope::Only(vec!["contoso".into()]) }
        );
        assert_eq!(
            c.check(Some("legacy-secret-0123456789")),
            Verdict::Allowed { name: "secret".into(), scope: TenantScope::Any }
        );
        let Verdict::Allowed { scope, .. } = c.check(Some("both-secret-012345")) else { panic!() };
        assert!(scope.allows("a") && scope.allows("b") && !scope.allows("c"));
    }

    #[test]
    fn the_tenant_comes_from_the_credential() {
        let one = TenantScope::Only(vec!["contoso".into()]);
        assert_eq!(one.resolve(None, "default"), Ok("contoso".into()));
        assert_eq!(one.resolve(Some("contoso"), "default"), Ok("contoso".into()));
        assert!(one.resolve(Some("fabrikam"), "default").is_err());
        let two = TenantScope::Only(vec!["a".into(), "b".into()]);
        assert!(two.resolve(None, "default").is_err());
        assert_eq!(two.resolve(None, "b"), Ok("b".into()));
        assert_eq!(TenantScope::Any.resolve(None, "default"), Ok("default".into()));
        assert_eq!(TenantScope::Any.resolve(Some("x"), "default"), Ok("x".into()));
    }

    #[test]
    fn bad_credentials_are_refused_at_start() {
        for (creds, why) in [
            (vec![cred("a", "short", &["a"])], "16 to 512"),
            (vec![cred("a", "a-secret-0123456789", &[])], "empty"),
            (vec![cred("a", "a-secret-0123456789", &["*", "b"])], "\"*\" only alone"),
            (vec![cred("a", "a-secret-0123456789", &[&"x".repeat(300)])], "bad tenant"),
            (vec![cred("a", "a-secret-0123456789", &["a"]), cred("a", "b-secret-0123456789", &["b"])], "name"),
            (vec![cred("a", "a-secret-0123456789", &["a"]), cred("b", "a-secret-0123456789", &["b"])], "same secret"),
        ] {
            let err = Credentials::new(None, &creds, false).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
        let open = Credentials::new(None, &[], true).unwrap();
        assert!(open.open());
        assert!(matches!(open.check(None), Verdict::Allowed { scope: TenantScope::Any, .. }));
        assert!(!Credentials::new(None, &[], false).unwrap().open());
    }
}
