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
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse};
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
/// How long a request to the issuer may take, in ms.
pub const ISSUER_TIMEOUT_MS: u64 = 10_000;
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
}

#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("the token is not a well-formed JWT: {0}")]
    Malformed(String),
    #[error("tokens signed with {0} are not accepted (RS256 and ES256 are)")]
    Algorithm(String),
    #[error("the token names no signing key (kid)")]
    NoKeyId,
    #[error("the issuer's key set has no signing key {0:?}")]
    UnknownKey(String),
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
}

/// A key of the issuer's set that may verify tokens, with the one algorithm it verifies.
struct VerifyingKey {
    algorithm: Algorithm,
    key: DecodingKey,
}

struct KeySet {
    by_kid: HashMap<String, Arc<VerifyingKey>>,
    fetched_at_ms: u64,
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
    settings: OidcSettings,
    client: reqwest::Client,
    keys: RwLock<Option<Arc<KeySet>>>,
    /// Held while fetching, so concurrent requests wait for one fetch instead of each making one.
    fetching: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for OidcVerifier {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("OidcVerifier")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl OidcVerifier {
    pub fn new(settings: OidcSettings) -> Result<Self, OidcError> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(ISSUER_TIMEOUT_MS))
            .build()
            .map_err(|error| OidcError::ProviderUnavailable(error.to_string()))?;
        Ok(Self {
            settings,
            client,
            keys: RwLock::new(None),
            fetching: tokio::sync::Mutex::new(()),
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
            grants: grants_from_roles(claim_at(&claims, &self.settings.roles_claim)),
        })
    }

    fn checked_claims(
        &self,
        token: &str,
        key: &VerifyingKey,
    ) -> Result<serde_json::Map<String, serde_json::Value>, OidcError> {
        let mut validation = Validation::new(key.algorithm);
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&[&self.settings.audience]);
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
            ErrorKind::InvalidIssuer => OidcError::Issuer(self.settings.issuer.clone()),
            ErrorKind::InvalidAudience => OidcError::Audience(self.settings.audience.clone()),
            ErrorKind::InvalidSignature => OidcError::Signature,
            ErrorKind::MissingRequiredClaim(claim) => OidcError::MissingClaim(claim),
            other => OidcError::Malformed(format!("{other:?}")),
        })
    }

    /// The key `kid` names: from the cache, or after one fetch of the key set when the cache
    /// lacks it (unless a fetch was made within the refetch interval) or has aged out.
    async fn key(&self, kid: &str, now_ms: u64) -> Result<Arc<VerifyingKey>, OidcError> {
        let cached = self.cached();
        if let Some(keys) = &cached
            && now_ms.saturating_sub(keys.fetched_at_ms) < JWKS_CACHE_MS_MAX
            && let Some(key) = keys.by_kid.get(kid)
        {
            return Ok(key.clone());
        }
        let _fetching = self.fetching.lock().await;
        // Another request may have fetched while this one waited.
        let cached = self.cached();
        let fresh_enough = cached.as_ref().is_some_and(|keys| {
            now_ms.saturating_sub(keys.fetched_at_ms) < self.settings.refetch_interval_ms
        });
        let keys = match cached {
            Some(keys) if fresh_enough => keys,
            stale => match self.fetch_keys(now_ms).await {
                Ok(keys) => keys,
                Err(error) => {
                    // A key set that aged out still verifies while the issuer is unreachable.
                    tracing::warn!(%error, "fetching the issuer's keys failed");
                    stale.ok_or(error)?
                }
            },
        };
        keys.by_kid
            .get(kid)
            .cloned()
            .ok_or_else(|| OidcError::UnknownKey(kid.to_owned()))
    }

    fn cached(&self) -> Option<Arc<KeySet>> {
        self.keys
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
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
        let set: JwkSet = self.get_json(&discovery.jwks_uri).await?;
        let keys = Arc::new(KeySet {
            by_kid: verifying_keys(&set),
            fetched_at_ms: now_ms,
        });
        tracing::info!(keys = keys.by_kid.len(), jwks_uri = %discovery.jwks_uri, "fetched the issuer's signing keys");
        *self
            .keys
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
            .and_then(reqwest::Response::error_for_status)
            .map_err(|error| unavailable(&error))?;
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

/// The keys of `set` that can verify tokens: signing keys with a `kid`, RSA for RS256 or P-256
/// for ES256, agreeing with their `alg` when they state one. Symmetric and other keys are
/// skipped: a key set is public, and a public value must never verify an HMAC.
fn verifying_keys(set: &JwkSet) -> HashMap<String, Arc<VerifyingKey>> {
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let Some(kid) = &jwk.common.key_id else {
            continue;
        };
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let algorithm = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(curve) if curve.curve == EllipticCurve::P256 => {
                Algorithm::ES256
            }
            _ => continue,
        };
        let stated = jwk.common.key_algorithm;
        let agrees = match stated {
            None => true,
            Some(KeyAlgorithm::RS256) => algorithm == Algorithm::RS256,
            Some(KeyAlgorithm::ES256) => algorithm == Algorithm::ES256,
            Some(_) => false,
        };
        if !agrees {
            continue;
        }
        match DecodingKey::from_jwk(jwk) {
            Ok(key) => {
                keys.insert(kid.clone(), Arc::new(VerifyingKey { algorithm, key }));
            }
            Err(error) => tracing::warn!(%kid, %error, "skipped an unusable key of the issuer"),
        }
    }
    keys
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
