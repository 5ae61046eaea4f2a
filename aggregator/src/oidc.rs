//! Bearer JWTs from the organisation's identity provider (OpenID Connect): the issuer's signing
//! keys found by discovery (`{issuer}/.well-known/openid-configuration` -> `jwks_uri`), cached,
//! fetched again when a token names a key the cache lacks (at most once per
//! `refetch_interval_ms`) or when the cache is [`JWKS_CACHE_MS_MAX`] old; then a token's
//! signature (RS256 or ES256 only), `exp`/`nbf` (with [`CLOCK_SKEW_S`]), `iss` and `aud` are
//! checked, and its roles claim gives its grants.
//!
//! jsonwebtoken checks signatures and claims; discovery and the key cache are written here, as
//! no maintained crate for axum 0.8 and reqwest 0.13 does discovery, refetches on an unknown
//! `kid` with a rate limit and refuses symmetric keys from a key set (see ARCHITECTURE.md).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::auth::{Grant, Identity, parse_grant};

/// Accepted difference between our clock and the issuer's for `exp` and `nbf`, in seconds.
pub const CLOCK_SKEW_S: u64 = 30;
/// A key set older than this is fetched again before it is used, in ms.
pub const JWKS_CACHE_MS_MAX: u64 = 60 * 60 * 1_000;
/// Unknown keys make at most one fetch per this many ms (the default of
/// [`OidcSettings::refetch_interval_ms`]): tokens naming made-up `kid`s cannot flood the issuer.
pub const JWKS_REFETCH_INTERVAL_MS_DEFAULT: u64 = 30_000;
/// How long past [`JWKS_CACHE_MS_MAX`] a key set still verifies while the issuer cannot be
/// reached, in ms: an outage of a day is ridden out, a retired key is not trusted for ever.
pub const JWKS_STALE_MS_MAX: u64 = 24 * 60 * 60 * 1_000;
/// How long a request to the issuer may take, in ms.
pub const ISSUER_TIMEOUT_MS: u64 = 10_000;
/// How long a request waits for another request's fetch of the keys, in ms (a discovery and a
/// key set request, each within [`ISSUER_TIMEOUT_MS`]).
pub const KEYS_FETCH_WAIT_MS_MAX: u64 = 2 * ISSUER_TIMEOUT_MS + 1_000;
/// The largest discovery document or key set read from the issuer.
pub const ISSUER_DOCUMENT_BYTES_MAX: usize = 1024 * 1024;
/// The longest bearer JWT looked at.
pub const JWT_BYTES_MAX: usize = 16 * 1024;
/// The signing algorithms accepted: asymmetric only, so a public key cannot sign.
pub const ALGORITHMS: [Algorithm; 2] = [Algorithm::RS256, Algorithm::ES256];
/// Roles that grant a scope, as the provider's app roles are named.
pub const ROLE_PREFIX: &str = "hitcount.";

/// What `--oidc-issuer` and its companions configure.
#[derive(Debug, Clone)]
pub struct OidcSettings {
    /// Exactly as the provider's discovery document and tokens name it.
    pub issuer: String,
    pub audience: String,
    /// The claim holding the roles; a dotted path reaches into objects (`realm_access.roles`).
    pub roles_claim: String,
    pub refetch_interval_ms: u64,
    /// With `--oidc-client-id`, the dashboard signs in through the issuer as this client.
    pub dashboard_client: Option<DashboardClient>,
}

/// The dashboard as a public OAuth client of the issuer (`--oidc-client-id`, `--oidc-scope`).
#[derive(Debug, Clone)]
pub struct DashboardClient {
    pub client_id: String,
    /// Space-separated.
    pub scope: String,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum OidcError {
    #[error("the token is not a well-formed JWT: {0}")]
    Malformed(String),
    #[error("tokens signed with {0} are not accepted (RS256 and ES256 are)")]
    Algorithm(String),
    #[error("the token names no signing key (kid)")]
    NoKeyId,
    #[error("the issuer's key set has no signing key {0:?}")]
    UnknownKey(String),
    #[error("the issuer's key {kid:?} never verifies tokens: {why}")]
    UnusableKey { kid: String, why: &'static str },
    #[error("the token's algorithm {token} does not match its key's ({key})")]
    KeyAlgorithm { token: String, key: String },
    #[error("the token's signature is invalid")]
    Signature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token's issuer is not {0}")]
    Issuer(String),
    #[error("the token's audience does not include {0}")]
    Audience(String),
    #[error("the token lacks the {0} claim")]
    MissingClaim(String),
    #[error("the identity provider cannot be reached ({0}); retry shortly")]
    ProviderUnavailable(String),
    /// The token names a key the set lacked when last fetched, too recently to fetch it again
    /// (a key the issuer has just rotated in is there at the next fetch).
    #[error(
        "the issuer's key set had no signing key {kid:?} when last fetched; it is fetched again within {retry_after_s} s"
    )]
    KeyNotFetchedYet { kid: String, retry_after_s: u64 },
    #[error("the HTTP client for the identity provider cannot be built: {0}")]
    HttpClient(String),
}

/// A key of the issuer's set that may verify tokens, with the one algorithm it verifies.
struct VerifyingKey {
    algorithm: Algorithm,
    key: DecodingKey,
}

struct KeySet {
    by_kid: HashMap<String, Arc<VerifyingKey>>,
    /// Keys the set names that never verify, with why (a symmetric key, a `kid` named twice).
    refused: HashMap<String, &'static str>,
    fetched_at_ms: u64,
}

/// What a key set says of a `kid`.
enum Lookup {
    Usable(Arc<VerifyingKey>),
    Refused(&'static str),
    Absent,
}

impl KeySet {
    fn lookup(&self, kid: &str) -> Lookup {
        if let Some(key) = self.by_kid.get(kid) {
            return Lookup::Usable(key.clone());
        }
        match self.refused.get(kid) {
            Some(why) => Lookup::Refused(why),
            None => Lookup::Absent,
        }
    }
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

#[derive(Deserialize)]
struct RawHeader {
    alg: String,
}

/// Verifies bearer JWTs against one issuer. Shared by every request; fetches are single-flight.
pub struct OidcVerifier {
    shared: Arc<Keys>,
}

/// The issuer's keys and how they are fetched, shared by the requests and the fetch tasks.
struct Keys {
    settings: OidcSettings,
    client: reqwest::Client,
    set: RwLock<Option<Arc<KeySet>>>,
    /// Held while fetching, so concurrent requests wait for one fetch instead of each making one.
    fetching: tokio::sync::Mutex<()>,
    /// Fetches started so far, and the time of the last one (its outcome whatever it was): a
    /// failed fetch limits the next as a successful one does.
    attempts: AtomicU64,
    last_attempt_ms: AtomicU64,
}

impl std::fmt::Debug for OidcVerifier {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("OidcVerifier")
            .field("settings", &self.shared.settings)
            .finish_non_exhaustive()
    }
}

impl OidcVerifier {
    pub fn new(settings: OidcSettings) -> Result<Self, OidcError> {
        // No redirects: the key set is read from the address discovery names, or not at all.
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(ISSUER_TIMEOUT_MS))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|error| OidcError::HttpClient(error.to_string()))?;
        Ok(Self {
            shared: Arc::new(Keys {
                settings,
                client,
                set: RwLock::new(None),
                fetching: tokio::sync::Mutex::new(()),
                attempts: AtomicU64::new(0),
                last_attempt_ms: AtomicU64::new(0),
            }),
        })
    }

    /// The identity `token` proves at `now_ms`, or why it proves none.
    pub async fn verify(&self, token: &str, now_ms: u64) -> Result<Identity, OidcError> {
        if token.len() > JWT_BYTES_MAX {
            return Err(OidcError::Malformed(format!(
                "longer than {JWT_BYTES_MAX} bytes"
            )));
        }
        let algorithm = accepted_algorithm(token)?;
        let header = jsonwebtoken::decode_header(token)
            .map_err(|error| OidcError::Malformed(error.to_string()))?;
        let kid = header.kid.ok_or(OidcError::NoKeyId)?;
        let key = self.key(&kid, now_ms).await?;
        if key.algorithm != algorithm {
            return Err(OidcError::KeyAlgorithm {
                token: format!("{algorithm:?}"),
                key: format!("{:?}", key.algorithm),
            });
        }
        let claims = self.checked_claims(token, &key)?;
        let subject = claims
            .get("sub")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| OidcError::MissingClaim("sub".to_owned()))?;
        Ok(Identity {
            id: format!("oidc:{subject}"),
            grants: grants_from_roles(claim_at(&claims, &self.shared.settings.roles_claim)),
        })
    }

    fn checked_claims(
        &self,
        token: &str,
        key: &VerifyingKey,
    ) -> Result<serde_json::Map<String, serde_json::Value>, OidcError> {
        let settings = &self.shared.settings;
        let mut validation = Validation::new(key.algorithm);
        validation.set_issuer(&[&settings.issuer]);
        validation.set_audience(&[&settings.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = CLOCK_SKEW_S;
        validation.validate_nbf = true;
        jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &key.key,
            &validation,
        )
        .map(|data| data.claims)
        .map_err(|error| match error.into_kind() {
            ErrorKind::ExpiredSignature => OidcError::Expired,
            ErrorKind::ImmatureSignature => OidcError::NotYetValid,
            ErrorKind::InvalidIssuer => OidcError::Issuer(settings.issuer.clone()),
            ErrorKind::InvalidAudience => OidcError::Audience(settings.audience.clone()),
            ErrorKind::InvalidSignature => OidcError::Signature,
            ErrorKind::MissingRequiredClaim(claim) => OidcError::MissingClaim(claim),
            other => OidcError::Malformed(format!("{other:?}")),
        })
    }

    /// The key `kid` names: from the cache, or after one fetch of the key set when the cache
    /// lacks it or has aged out. The fetch runs in a task of its own, so a caller that hangs up
    /// does not cut it short for the others.
    async fn key(&self, kid: &str, now_ms: u64) -> Result<Arc<VerifyingKey>, OidcError> {
        match self.shared.fresh_lookup(kid, now_ms) {
            Lookup::Usable(key) => return Ok(key),
            Lookup::Refused(why) => return Err(unusable(kid, why)),
            Lookup::Absent => {}
        }
        // A set past its age that holds the key (the issuer may be down): answered from at once,
        // while one fetch in the background renews it; nobody waits behind a failing issuer.
        if let Some(key) = self.shared.stale_key(kid, now_ms) {
            let shared = self.shared.clone();
            tokio::spawn(async move { shared.renew(now_ms).await });
            return Ok(key);
        }
        let attempts_before = self.shared.attempts.load(Ordering::SeqCst);
        let shared = self.shared.clone();
        let kid = kid.to_owned();
        tokio::spawn(async move { shared.key_after_fetch(&kid, now_ms, attempts_before).await })
            .await
            .map_err(|error| {
                OidcError::ProviderUnavailable(format!("the key fetch failed: {error}"))
            })?
    }
}

impl Keys {
    fn cached(&self) -> Option<Arc<KeySet>> {
        self.set
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    /// What a set fetched less than [`JWKS_CACHE_MS_MAX`] ago says of `kid` (absent without one).
    fn fresh_lookup(&self, kid: &str, now_ms: u64) -> Lookup {
        match self.cached() {
            Some(keys) if now_ms.saturating_sub(keys.fetched_at_ms) < JWKS_CACHE_MS_MAX => {
                keys.lookup(kid)
            }
            _ => Lookup::Absent,
        }
    }

    /// The key from a set past [`JWKS_CACHE_MS_MAX`] but within [`JWKS_STALE_MS_MAX`] of it.
    fn stale_key(&self, kid: &str, now_ms: u64) -> Option<Arc<VerifyingKey>> {
        let keys = self.cached()?;
        let age_ms = now_ms.saturating_sub(keys.fetched_at_ms);
        if !(JWKS_CACHE_MS_MAX..JWKS_CACHE_MS_MAX + JWKS_STALE_MS_MAX).contains(&age_ms) {
            return None;
        }
        match keys.lookup(kid) {
            Lookup::Usable(key) => Some(key),
            Lookup::Refused(_) | Lookup::Absent => None,
        }
    }

    /// Fetches the set again unless a fetch is running or one started within the refetch
    /// interval; a failure keeps the set there is.
    async fn renew(&self, now_ms: u64) {
        let Ok(_fetching) = self.fetching.try_lock() else {
            return;
        };
        let since_last_ms = now_ms.saturating_sub(self.last_attempt_ms.load(Ordering::SeqCst));
        if since_last_ms < self.settings.refetch_interval_ms {
            return;
        }
        self.attempts.fetch_add(1, Ordering::SeqCst);
        self.last_attempt_ms.store(now_ms, Ordering::SeqCst);
        if let Err(error) = self.fetch_keys(now_ms).await {
            tracing::warn!(%error, "renewing the issuer's keys failed; the ones held still verify");
        }
    }

    /// After waiting (bounded) for any fetch in progress: the key from the cache if that fetch
    /// brought it; otherwise from a fetch of this request's own, unless a fetch started less than
    /// the refetch interval ago (whatever its outcome). While the issuer cannot be reached, a set
    /// past its age still verifies for [`JWKS_STALE_MS_MAX`].
    async fn key_after_fetch(
        &self,
        kid: &str,
        now_ms: u64,
        attempts_before: u64,
    ) -> Result<Arc<VerifyingKey>, OidcError> {
        let wait = Duration::from_millis(KEYS_FETCH_WAIT_MS_MAX);
        let _fetching = tokio::time::timeout(wait, self.fetching.lock())
            .await
            .map_err(|_| {
                OidcError::ProviderUnavailable("another fetch of the keys is still running".into())
            })?;
        match self.fresh_lookup(kid, now_ms) {
            Lookup::Usable(key) => return Ok(key),
            Lookup::Refused(why) => return Err(unusable(kid, why)),
            Lookup::Absent => {}
        }
        let fetched_since_asked = self.attempts.load(Ordering::SeqCst) > attempts_before;
        let since_last_ms = now_ms.saturating_sub(self.last_attempt_ms.load(Ordering::SeqCst));
        let may_fetch = self.attempts.load(Ordering::SeqCst) == 0
            || since_last_ms >= self.settings.refetch_interval_ms;
        let fetch_error = if may_fetch && !fetched_since_asked {
            self.attempts.fetch_add(1, Ordering::SeqCst);
            self.last_attempt_ms.store(now_ms, Ordering::SeqCst);
            match self.fetch_keys(now_ms).await {
                Ok(keys) => {
                    return match keys.lookup(kid) {
                        Lookup::Usable(key) => Ok(key),
                        Lookup::Refused(why) => Err(unusable(kid, why)),
                        Lookup::Absent => Err(OidcError::UnknownKey(kid.to_owned())),
                    };
                }
                Err(error) => {
                    tracing::warn!(%error, "fetching the issuer's keys failed");
                    Some(error)
                }
            }
        } else {
            None
        };
        let usable = self.cached().filter(|keys| {
            now_ms.saturating_sub(keys.fetched_at_ms) < JWKS_CACHE_MS_MAX + JWKS_STALE_MS_MAX
        });
        let unavailable = || {
            fetch_error.clone().unwrap_or_else(|| {
                OidcError::ProviderUnavailable("the issuer's keys could not be fetched".into())
            })
        };
        let Some(keys) = usable else {
            return Err(unavailable());
        };
        match keys.lookup(kid) {
            // A set past its age (the issuer unreachable) verifies the keys it has.
            Lookup::Usable(key) => return Ok(key),
            Lookup::Refused(why) => return Err(unusable(kid, why)),
            Lookup::Absent => {}
        }
        // A fetch started after this request arrived (it waited for it) and that succeeded is
        // the issuer's word on the key.
        let fetched_ok_since_asked = fetched_since_asked
            && keys.fetched_at_ms >= self.last_attempt_ms.load(Ordering::SeqCst);
        match fetch_error {
            Some(error) => Err(error),
            // The fetch this request waited for found no such key: final.
            None if fetched_ok_since_asked => Err(OidcError::UnknownKey(kid.to_owned())),
            None => Err(OidcError::KeyNotFetchedYet {
                kid: kid.to_owned(),
                retry_after_s: self
                    .settings
                    .refetch_interval_ms
                    .saturating_sub(since_last_ms)
                    .div_ceil(1_000)
                    .max(1),
            }),
        }
    }

    async fn fetch_keys(&self, now_ms: u64) -> Result<Arc<KeySet>, OidcError> {
        let discovery_url = format!(
            "{}/.well-known/openid-configuration",
            self.settings.issuer.trim_end_matches('/')
        );
        let discovery: Discovery = self.get_json(&discovery_url).await?;
        if discovery.issuer != self.settings.issuer {
            return Err(OidcError::ProviderUnavailable(format!(
                "the discovery document names the issuer {:?}, not {:?}",
                discovery.issuer, self.settings.issuer
            )));
        }
        if !secure_url(&discovery.jwks_uri) {
            return Err(OidcError::ProviderUnavailable(format!(
                "the discovery document's jwks_uri {:?} is not https:// (http:// only on this machine)",
                discovery.jwks_uri
            )));
        }
        let set: JwkSet = self.get_json(&discovery.jwks_uri).await?;
        let (by_kid, refused) = verifying_keys(&set);
        let keys = Arc::new(KeySet {
            by_kid,
            refused,
            fetched_at_ms: now_ms,
        });
        tracing::info!(keys = keys.by_kid.len(), jwks_uri = %discovery.jwks_uri, "fetched the issuer's signing keys");
        *self
            .set
            .write()
            .unwrap_or_else(|poison| poison.into_inner()) = Some(keys.clone());
        Ok(keys)
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, OidcError> {
        let unavailable = |error: &dyn std::fmt::Display| {
            OidcError::ProviderUnavailable(format!("GET {url}: {error}"))
        };
        let mut response = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|error| unavailable(&error))?;
        // Redirects are not followed, so a 3xx is a failure as a 4xx or 5xx is.
        if !response.status().is_success() {
            return Err(unavailable(&format_args!("status {}", response.status())));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|error| unavailable(&error))?
        {
            if body.len() + chunk.len() > ISSUER_DOCUMENT_BYTES_MAX {
                return Err(unavailable(&format_args!(
                    "longer than {ISSUER_DOCUMENT_BYTES_MAX} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|error| unavailable(&error))
    }
}

/// Whether `url` may be trusted for an issuer's documents and keys: https://, or http:// to this
/// machine only (a provider run beside the aggregator, and the tests' own issuer).
pub fn secure_url(url: &str) -> bool {
    let Ok(uri) = url.parse::<axum::http::Uri>() else {
        return false;
    };
    let loopback = matches!(uri.host(), Some("localhost" | "127.0.0.1" | "[::1]"));
    match uri.scheme_str() {
        Some("https") => true,
        Some("http") => loopback,
        _ => false,
    }
}

/// The token's `alg`, if it is one of [`ALGORITHMS`]; read from the raw header so that `none`
/// and `HS256` are named in the refusal (jsonwebtoken cannot parse a header saying `none`).
fn accepted_algorithm(token: &str) -> Result<Algorithm, OidcError> {
    let encoded = token
        .split('.')
        .next()
        .ok_or_else(|| OidcError::Malformed("no header".to_owned()))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|error| OidcError::Malformed(format!("header: {error}")))?;
    let header: RawHeader = serde_json::from_slice(&bytes)
        .map_err(|error| OidcError::Malformed(format!("header: {error}")))?;
    ALGORITHMS
        .into_iter()
        .find(|algorithm| format!("{algorithm:?}") == header.alg)
        .ok_or(OidcError::Algorithm(header.alg))
}

/// The keys of `set` that can verify tokens, and those it names that never do with why: a
/// signing key verifies if its `kid` is named once and it is RSA for RS256 or P-256 for ES256,
/// agreeing with its `alg` when it states one. Symmetric keys never do: a key set is public, and
/// a public value must never verify an HMAC.
fn verifying_keys(
    set: &JwkSet,
) -> (
    HashMap<String, Arc<VerifyingKey>>,
    HashMap<String, &'static str>,
) {
    let mut keys = HashMap::new();
    let mut refused = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    let twice: std::collections::HashSet<&str> = set
        .keys
        .iter()
        .filter_map(|jwk| jwk.common.key_id.as_deref())
        .filter(|kid| !seen.insert(*kid))
        .collect();
    for jwk in &set.keys {
        let Some(kid) = &jwk.common.key_id else {
            continue;
        };
        match verifying_key(jwk, twice.contains(kid.as_str())) {
            Ok(key) => {
                keys.insert(kid.clone(), Arc::new(key));
            }
            Err(why) => {
                tracing::warn!(%kid, why, "skipped a key of the issuer");
                refused.insert(kid.clone(), why);
            }
        }
    }
    (keys, refused)
}

/// The key `jwk` verifies with, or why it verifies nothing.
fn verifying_key(jwk: &Jwk, named_twice: bool) -> Result<VerifyingKey, &'static str> {
    if named_twice {
        return Err("the set names its kid twice");
    }
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Err("an encryption key");
    }
    let algorithm = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(curve) if curve.curve == EllipticCurve::P256 => {
            Algorithm::ES256
        }
        AlgorithmParameters::OctetKey(_) => return Err("a symmetric key"),
        _ => return Err("neither RSA nor P-256"),
    };
    let agrees = match jwk.common.key_algorithm {
        None => true,
        Some(KeyAlgorithm::RS256) => algorithm == Algorithm::RS256,
        Some(KeyAlgorithm::ES256) => algorithm == Algorithm::ES256,
        Some(_) => false,
    };
    if !agrees {
        return Err("its alg is neither RS256 for RSA nor ES256 for P-256");
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|_| "its parameters do not make a key")?;
    Ok(VerifyingKey { algorithm, key })
}

fn unusable(kid: &str, why: &'static str) -> OidcError {
    OidcError::UnusableKey {
        kid: kid.to_owned(),
        why,
    }
}

/// The value at a dotted `path` of the claims (`roles`, `realm_access.roles`).
fn claim_at<'a>(
    claims: &'a serde_json::Map<String, serde_json::Value>,
    path: &str,
) -> Option<&'a serde_json::Value> {
    let mut parts = path.split('.');
    let mut value = claims.get(parts.next()?)?;
    for part in parts {
        value = value.get(part)?;
    }
    Some(value)
}

/// Grants from the roles claim (an array of strings, or one string): `hitcount.admin`,
/// `hitcount.read`, `hitcount.ingest`, and the last two limited to resources by a pattern after a
/// colon (`hitcount.read:blog.*`). Other roles, and admin limited to resources (admin manages
/// tokens and keys, which belong to no resource), grant nothing.
fn grants_from_roles(roles: Option<&serde_json::Value>) -> Vec<Grant> {
    let names: Vec<&str> = match roles {
        Some(serde_json::Value::Array(items)) => {
            items.iter().filter_map(serde_json::Value::as_str).collect()
        }
        Some(serde_json::Value::String(one)) => vec![one.as_str()],
        _ => Vec::new(),
    };
    let mut grants: Vec<Grant> = names
        .into_iter()
        .filter_map(|name| {
            let (scope, pattern) = parse_grant(name.strip_prefix(ROLE_PREFIX)?)?;
            Some(Grant {
                scope,
                resources: pattern.map(str::to_owned),
            })
        })
        .collect();
    grants.sort_by(|a, b| (a.scope.as_str(), &a.resources).cmp(&(b.scope.as_str(), &b.resources)));
    grants.dedup();
    grants
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Scope;

    fn grant(scope: Scope, resources: Option<&str>) -> Grant {
        Grant {
            scope,
            resources: resources.map(str::to_owned),
        }
    }

    #[test]
    fn roles_grant_scopes_and_nothing_else_does() {
        let roles = serde_json::json!([
            "hitcount.read",
            "hitcount.ingest",
            "other",
            "hitcount.read",
            "hitcount.owner",
            "hitcount.read:blog.*",
            "hitcount.ingest:home",
            "hitcount.admin:blog.*",
            "hitcount.read:*",
            "hitcount.read:bad id*",
            "hitcount.read:a*b"
        ]);
        assert_eq!(
            grants_from_roles(Some(&roles)),
            [
                grant(Scope::Ingest, None),
                grant(Scope::Ingest, Some("home")),
                grant(Scope::Read, None),
                grant(Scope::Read, Some("blog.*")),
            ]
        );
        assert_eq!(
            grants_from_roles(Some(&serde_json::json!("hitcount.admin"))),
            [grant(Scope::Admin, None)]
        );
        assert!(grants_from_roles(Some(&serde_json::json!(42))).is_empty());
        assert!(grants_from_roles(None).is_empty());
    }

    #[test]
    fn a_dotted_claim_path_reaches_into_objects() {
        let claims =
            serde_json::json!({"realm_access": {"roles": ["hitcount.read"]}, "roles": "x"});
        let claims = claims.as_object().unwrap();
        assert_eq!(claim_at(claims, "roles"), Some(&serde_json::json!("x")));
        assert_eq!(
            claim_at(claims, "realm_access.roles"),
            Some(&serde_json::json!(["hitcount.read"]))
        );
        assert_eq!(claim_at(claims, "realm_access.groups"), None);
    }
}
