//! Bearer API tokens with scopes, the caller a request authenticated as (an API token or an
//! identity provider's token, `oidc.rs`), and the edge-key registry for signed deltas.
//!
//! Only SHA-256 digests of tokens are stored: the token itself is shown once, when it is made.
//! Tokens are 32 random bytes, so a plain digest (no salt, no slow hash) is enough: nothing
//! shorter than the token itself can be guessed from it.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::store::{Store, StoreError, TokenRecord};

/// The id under which the bootstrap admin token is stored.
pub const BOOTSTRAP_TOKEN_ID: &str = "bootstrap-admin";
/// Bytes of randomness in a generated token or edge secret.
pub const TOKEN_RANDOM_BYTES: usize = 32;
/// Random bytes of a token's id (public: it names the token in `DELETE /tokens/{id}`).
pub const TOKEN_ID_BYTES: usize = 8;
/// Prefix of every generated token, so leaked tokens are easy to search for.
pub const TOKEN_PREFIX: &str = "hct_";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Send hits.
    Ingest,
    /// Read resources and counts.
    Read,
    /// Everything, including resources, tokens and edge keys.
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ingest => "ingest",
            Self::Read => "read",
            Self::Admin => "admin",
        }
    }
}

pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Random bytes from the operating system, hex-encoded.
pub use crate::store::random_hex;

pub fn generate_token() -> String {
    format!("{TOKEN_PREFIX}{}", random_hex(TOKEN_RANDOM_BYTES))
}

/// Tokens by digest, kept in memory so authentication costs no store round trip.
#[derive(Debug, Default)]
pub struct TokenRegistry {
    by_digest: RwLock<HashMap<[u8; 32], Arc<TokenRecord>>>,
    /// Bumped by every insert and removal here, so a reload that read the store meanwhile can
    /// tell and is skipped (it might bring back a token revoked here).
    changes: std::sync::atomic::AtomicU64,
}

impl TokenRegistry {
    pub fn changes(&self) -> u64 {
        self.changes.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Replaces every token with `records` (read from the store after [`Self::changes`] said
    /// `changes_before`), unless a token was created or revoked here since. Returns whether it
    /// replaced them.
    pub fn replace_unless_changed(&self, records: Vec<TokenRecord>, changes_before: u64) -> bool {
        let mut map = self
            .by_digest
            .write()
            .unwrap_or_else(|poison| poison.into_inner());
        if self.changes() != changes_before {
            return false;
        }
        map.clear();
        for record in records {
            map.insert(record.token_sha256, Arc::new(record));
        }
        true
    }

    pub fn replace_all(&self, records: Vec<TokenRecord>) {
        let mut map = self
            .by_digest
            .write()
            .unwrap_or_else(|poison| poison.into_inner());
        map.clear();
        for record in records {
            map.insert(record.token_sha256, Arc::new(record));
        }
    }

    /// Makes a token of `name` and `scopes` (sorted, each once, at least one), stores it and,
    /// once committed, takes it here; returns its record and the token itself, which exists
    /// nowhere else (only its digest is stored).
    pub async fn create(
        &self,
        store: &Store,
        name: String,
        mut scopes: Vec<String>,
        now_ms: u64,
    ) -> Result<(TokenRecord, String), StoreError> {
        scopes.sort();
        scopes.dedup();
        assert!(!scopes.is_empty(), "the API refuses a token without scopes");
        let token = generate_token();
        let record = TokenRecord {
            id: random_hex(TOKEN_ID_BYTES),
            name,
            token_sha256: token_digest(&token),
            scopes,
            created_at_ms: now_ms,
        };
        store.put_token(record.clone()).await?;
        self.insert(record.clone());
        Ok((record, token))
    }

    pub fn insert(&self, record: TokenRecord) {
        let mut map = self
            .by_digest
            .write()
            .unwrap_or_else(|poison| poison.into_inner());
        map.retain(|_, existing| existing.id != record.id);
        map.insert(record.token_sha256, Arc::new(record));
        self.changes
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    pub fn remove(&self, id: &str) {
        let mut map = self
            .by_digest
            .write()
            .unwrap_or_else(|poison| poison.into_inner());
        map.retain(|_, existing| existing.id != id);
        self.changes
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    pub fn find(&self, digest: &[u8; 32]) -> Option<Arc<TokenRecord>> {
        let map = self
            .by_digest
            .read()
            .unwrap_or_else(|poison| poison.into_inner());
        map.get(digest).cloned()
    }
}

/// One scope, for every resource or for those one pattern matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub scope: Scope,
    /// `None`: every resource; else a pattern ([`ResourceGrant`]).
    pub resources: Option<String>,
}

/// The resources a caller may use with one scope: every one, or those its patterns match
/// (`blog.*`: ids starting with `blog.`; `home`: that id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceGrant {
    All,
    Matching(Vec<String>),
}

impl ResourceGrant {
    pub fn allows(&self, resource_id: &str) -> bool {
        match self {
            Self::All => true,
            Self::Matching(patterns) => {
                patterns
                    .iter()
                    .any(|pattern| match pattern.strip_suffix('*') {
                        Some(prefix) => resource_id.starts_with(prefix),
                        None => resource_id == pattern,
                    })
            }
        }
    }
}

/// Whether `pattern` can limit a grant: a resource id, or a prefix of one and `*`.
pub fn is_resource_pattern(pattern: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some("") => false,
        Some(prefix) => hitcount_wire::validate_resource_id(prefix).is_ok(),
        None => hitcount_wire::validate_resource_id(pattern).is_ok(),
    }
}

/// A grant as a token stores it and a role names it (after `hitcount.`): `read`, `ingest` or
/// `admin`, or `read` and `ingest` limited to a resource pattern after a colon (`read:blog.*`).
/// Admin limited to resources, an unknown scope or a bad pattern is no grant.
pub fn parse_grant(text: &str) -> Option<(Scope, Option<&str>)> {
    let (scope, pattern) = match text.split_once(':') {
        Some((scope, pattern)) if is_resource_pattern(pattern) => (scope, Some(pattern)),
        Some(_) => return None,
        None => (text, None),
    };
    let scope = match (scope, pattern) {
        ("admin", None) => Scope::Admin,
        ("read", _) => Scope::Read,
        ("ingest", _) => Scope::Ingest,
        _ => return None,
    };
    Some((scope, pattern))
}

/// How a token stores `scopes` limited to `patterns` (every resource for `None`).
pub fn stored_grants(scopes: &[Scope], patterns: Option<&[String]>) -> Vec<String> {
    let mut stored = Vec::new();
    for scope in scopes {
        match patterns {
            None => stored.push(scope.as_str().to_owned()),
            Some(patterns) => stored.extend(
                patterns
                    .iter()
                    .map(|pattern| format!("{}:{pattern}", scope.as_str())),
            ),
        }
    }
    stored
}

/// Who a verified identity provider's token speaks for (`oidc.rs`), and what it may do.
#[derive(Debug, Clone)]
pub struct Identity {
    /// `oidc:` and the token's `sub`, for logs and rate limits.
    pub id: String,
    pub grants: Vec<Grant>,
}

/// The authenticated caller of a request: an API token (shared with the registry:
/// authenticating allocates nothing) or an identity the organisation's provider vouched for.
#[derive(Debug, Clone)]
pub enum Caller {
    Token(Arc<TokenRecord>),
    Identity(Arc<Identity>),
}

impl Caller {
    /// The caller holding `token` (the bearer extractor in `api/extract.rs` finds it).
    pub fn new(token: Arc<TokenRecord>) -> Self {
        Self::Token(token)
    }

    /// Who it is, for logs: a token's id, or `oidc:` and the identity's subject.
    pub fn id(&self) -> &str {
        match self {
            Self::Token(token) => &token.id,
            Self::Identity(identity) => &identity.id,
        }
    }

    /// Calls `visit` with each of its grants (an identity's, or a token's as stored). A visitor,
    /// not a boxed iterator: authenticating every request allocates nothing.
    fn for_each_grant<'a>(&'a self, mut visit: impl FnMut(Scope, Option<&'a str>)) {
        match self {
            Self::Token(token) => token
                .scopes
                .iter()
                .filter_map(|held| parse_grant(held))
                .for_each(|(scope, pattern)| visit(scope, pattern)),
            Self::Identity(identity) => identity
                .grants
                .iter()
                .for_each(|grant| visit(grant.scope, grant.resources.as_deref())),
        }
    }

    /// Admin implies every other scope.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        let mut holds = false;
        self.for_each_grant(|held, _| holds |= held == scope || held == Scope::Admin);
        if holds {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "this token lacks the `{}` scope",
                scope.as_str()
            )))
        }
    }

    /// The resources it may use with `scope` (which [`Self::require`] checked it holds).
    pub fn resources(&self, scope: Scope) -> ResourceGrant {
        let mut unlimited = false;
        let mut patterns = Vec::new();
        self.for_each_grant(|held, pattern| match pattern {
            None if held == scope || held == Scope::Admin => unlimited = true,
            Some(pattern) if held == scope => patterns.push(pattern.to_owned()),
            _ => {}
        });
        if unlimited {
            ResourceGrant::All
        } else {
            ResourceGrant::Matching(patterns)
        }
    }

    /// [`Self::require`], and that its grant of `scope` covers `resource_id`.
    pub fn require_resource(&self, scope: Scope, resource_id: &str) -> Result<(), ApiError> {
        self.require(scope)?;
        if self.resources(scope).allows(resource_id) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "this token's `{}` scope does not cover the resource {resource_id:?}",
                scope.as_str()
            )))
        }
    }
}

/// An edge's signing secret and where it came from.
#[derive(Clone)]
pub struct EdgeSecret {
    pub secret: Vec<u8>,
    /// Keys given by flag cannot be revoked through the API (they would return at restart).
    pub configured: bool,
    pub created_at_ms: u64,
}

impl std::fmt::Debug for EdgeSecret {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("EdgeSecret")
            .field("configured", &self.configured)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
pub struct EdgeKeyRegistry {
    keys: RwLock<HashMap<String, EdgeSecret>>,
    /// As [`TokenRegistry`]'s: a reload that overlapped a local change is skipped.
    changes: std::sync::atomic::AtomicU64,
}

impl EdgeKeyRegistry {
    /// Stores `secret` as `edge_id`'s key (replacing one set through the API) and, once
    /// committed, takes it here.
    pub async fn put(
        &self,
        store: &Store,
        edge_id: String,
        secret: Vec<u8>,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        store
            .put_edge_key(edge_id.clone(), secret.clone(), now_ms)
            .await?;
        let key = EdgeSecret {
            secret,
            configured: false,
            created_at_ms: now_ms,
        };
        self.insert(edge_id, key);
        Ok(())
    }

    pub fn insert(&self, edge_id: String, secret: EdgeSecret) {
        self.keys
            .write()
            .unwrap_or_else(|poison| poison.into_inner())
            .insert(edge_id, secret);
        self.changes
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    pub fn remove(&self, edge_id: &str) {
        self.keys
            .write()
            .unwrap_or_else(|poison| poison.into_inner())
            .remove(edge_id);
        self.changes
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    pub fn changes(&self) -> u64 {
        self.changes.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Replaces the stored keys with `stored` (edge id, secret, created at; read from the store
    /// after [`Self::changes`] said `changes_before`), keeping the configured ones, which win over
    /// stored keys of the same edge as at start. Skipped if a key was set or revoked here since.
    pub fn replace_stored_unless_changed(
        &self,
        stored: Vec<(String, Vec<u8>, u64)>,
        changes_before: u64,
    ) -> bool {
        let mut keys = self
            .keys
            .write()
            .unwrap_or_else(|poison| poison.into_inner());
        if self.changes() != changes_before {
            return false;
        }
        keys.retain(|_, secret| secret.configured);
        for (edge_id, secret, created_at_ms) in stored {
            keys.entry(edge_id).or_insert(EdgeSecret {
                secret,
                configured: false,
                created_at_ms,
            });
        }
        true
    }

    pub fn get(&self, edge_id: &str) -> Option<EdgeSecret> {
        self.keys
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .get(edge_id)
            .cloned()
    }

    pub fn list(&self) -> Vec<(String, EdgeSecret)> {
        let keys = self
            .keys
            .read()
            .unwrap_or_else(|poison| poison.into_inner());
        let mut list: Vec<_> = keys
            .iter()
            .map(|(id, secret)| (id.clone(), secret.clone()))
            .collect();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        list
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(grants: &[(Scope, Option<&str>)]) -> Caller {
        Caller::Identity(Arc::new(Identity {
            id: "oidc:test".to_owned(),
            grants: grants
                .iter()
                .map(|(scope, resources)| Grant {
                    scope: *scope,
                    resources: resources.map(str::to_owned),
                })
                .collect(),
        }))
    }

    #[test]
    fn a_limited_grant_covers_its_patterns_and_an_unlimited_one_everything() {
        let blog_reader = identity(&[(Scope::Read, Some("blog.*")), (Scope::Read, Some("home"))]);
        let readable = blog_reader.resources(Scope::Read);
        assert!(readable.allows("blog.one") && readable.allows("blog.") && readable.allows("home"));
        assert!(
            !readable.allows("blog") && !readable.allows("homepage") && !readable.allows("shop")
        );
        assert!(blog_reader.require_resource(Scope::Read, "shop").is_err());
        assert!(blog_reader.require(Scope::Ingest).is_err());
        // An unlimited grant of the scope, or admin, covers every resource.
        let both = identity(&[(Scope::Read, Some("blog.*")), (Scope::Read, None)]);
        assert_eq!(both.resources(Scope::Read), ResourceGrant::All);
        let admin = identity(&[(Scope::Admin, None)]);
        assert!(admin.require_resource(Scope::Ingest, "anything").is_ok());
    }

    #[test]
    fn a_pattern_is_an_id_or_a_prefix_and_a_star() {
        for good in ["home", "blog.*", "a*", "x-1_2.y"] {
            assert!(is_resource_pattern(good), "{good}");
        }
        let too_long = "x".repeat(65);
        for bad in ["*", "", "a*b", "bad id", "**", too_long.as_str()] {
            assert!(!is_resource_pattern(bad), "{bad}");
        }
    }
}
