//! An OpenID Connect issuer of the tests' own, as no identity provider runs here: discovery and
//! the key set over real HTTP on a port-0 socket, keys made per issuer (RSA for RS256, P-256 for
//! ES256, by aws-lc-rs), tokens signed here, the key set replaceable mid-test (rotation) and its
//! fetches counted.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State;
use axum::routing::get;
use base64::Engine;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::server::{Server, serve_router};

/// The audience the aggregators of the OIDC tests expect.
pub const OIDC_AUDIENCE: &str = "api://hitcount-tests";

/// A signing key of the issuer: its id, algorithm, private half and public JWK.
#[derive(Clone)]
pub struct SigningKey {
    pub kid: String,
    pub algorithm: Algorithm,
    encoding: EncodingKey,
    pub jwk: Jwk,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A new RSA-2048 key for RS256.
    pub fn rsa(kid: &str) -> Self {
        use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let der: Pkcs8V1Der = pair.as_der().unwrap();
        // jsonwebtoken reads an RSA private key as PKCS#1 DER or as PEM; PEM takes PKCS#8.
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(der.as_ref())
        );
        Self::from_encoding(
            kid,
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
        )
    }

    /// A new P-256 key for ES256.
    pub fn ec(kid: &str) -> Self {
        let pair = aws_lc_rs::signature::EcdsaKeyPair::generate(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        )
        .unwrap();
        let der = pair.to_pkcs8v1().unwrap();
        Self::from_encoding(
            kid,
            Algorithm::ES256,
            EncodingKey::from_ec_der(der.as_ref()),
        )
    }

    fn from_encoding(kid: &str, algorithm: Algorithm, encoding: EncodingKey) -> Self {
        let mut jwk = Jwk::from_encoding_key(&encoding, algorithm).unwrap();
        jwk.common.key_id = Some(kid.to_owned());
        Self {
            kid: kid.to_owned(),
            algorithm,
            encoding,
            jwk,
        }
    }

    /// `claims` signed with this key, its `kid` in the header.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }
}

#[derive(Debug)]
struct IssuerState {
    issuer: Mutex<String>,
    keys: Mutex<Vec<Value>>,
    jwks_fetches: AtomicU64,
    /// While true, the key set answers 500 (still counted): an issuer having trouble.
    failing: AtomicBool,
    /// The `jwks_uri` discovery names instead of `{issuer}/keys`, if set.
    jwks_uri: Mutex<Option<String>>,
}

/// The issuer: serving until dropped or stopped.
#[derive(Debug)]
pub struct Issuer {
    pub server: Server,
    state: Arc<IssuerState>,
}

async fn discovery(State(state): State<Arc<IssuerState>>) -> Json<Value> {
    let issuer = state.issuer.lock().unwrap().clone();
    let jwks_uri = state.jwks_uri.lock().unwrap().clone();
    Json(json!({
        "issuer": issuer,
        "jwks_uri": jwks_uri.unwrap_or_else(|| format!("{issuer}/keys")),
        "authorization_endpoint": format!("{issuer}/authorize"),
        "token_endpoint": format!("{issuer}/token"),
        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
    }))
}

async fn key_set(State(state): State<Arc<IssuerState>>) -> axum::response::Response {
    use axum::response::IntoResponse;
    state.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    if state.failing.load(Ordering::SeqCst) {
        return axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    Json(json!({ "keys": state.keys.lock().unwrap().clone() })).into_response()
}

/// The key set moved elsewhere: a redirect to `/keys`.
async fn moved_key_set() -> axum::response::Redirect {
    axum::response::Redirect::temporary("/keys")
}

impl Issuer {
    /// An issuer publishing `keys`.
    pub async fn start(keys: &[&SigningKey]) -> Self {
        let state = Arc::new(IssuerState {
            issuer: Mutex::new(String::new()),
            keys: Mutex::new(keys.iter().map(|key| public_jwk(key)).collect()),
            jwks_fetches: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            jwks_uri: Mutex::new(None),
        });
        let router = axum::Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/keys", get(key_set))
            .route("/moved-keys", get(moved_key_set))
            .with_state(state.clone());
        let server = serve_router(router).await;
        *state.issuer.lock().unwrap() = server.url("");
        Self { server, state }
    }

    /// The issuer's URL, as its tokens' `iss` and `--oidc-issuer` name it.
    pub fn url(&self) -> String {
        self.state.issuer.lock().unwrap().clone()
    }

    /// Publishes `keys` instead (a rotation).
    pub fn publish(&self, keys: &[&SigningKey]) {
        *self.state.keys.lock().unwrap() = keys.iter().map(|key| public_jwk(key)).collect();
    }

    /// Publishes these JWKs as they are (an `oct` key, a key twice under one `kid`).
    pub fn publish_raw(&self, keys: Vec<Value>) {
        *self.state.keys.lock().unwrap() = keys;
    }

    /// While `failing`, the key set answers 500.
    pub fn fail_key_set(&self, failing: bool) {
        self.state.failing.store(failing, Ordering::SeqCst);
    }

    /// Discovery names `uri` as the key set's address (`None`: the issuer's own `/keys`).
    pub fn name_jwks_uri(&self, uri: Option<String>) {
        *self.state.jwks_uri.lock().unwrap() = uri;
    }

    /// How often the key set was fetched.
    pub fn jwks_fetches(&self) -> u64 {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }

    /// Claims of a token from this issuer for hitcount, valid for an hour from `now_s`, with
    /// `roles`.
    pub fn claims(&self, subject: &str, roles: &[&str], now_s: u64) -> Value {
        json!({
            "iss": self.url(),
            "aud": OIDC_AUDIENCE,
            "sub": subject,
            "iat": now_s,
            "nbf": now_s,
            "exp": now_s + 3_600,
            "roles": roles,
        })
    }
}

/// A signing key's public JWK, as the key set serves it.
pub fn public_jwk(key: &SigningKey) -> Value {
    serde_json::to_value(&key.jwk).unwrap()
}

/// A JWT of `header` and `claims` with `signature` (base64url), for the refusals no signing
/// library makes: `alg: none`, HS256 keyed with a public key.
pub fn hand_made_jwt(header: &Value, claims: &Value, signature: &[u8]) -> String {
    let encode = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    format!(
        "{}.{}.{}",
        encode(header.to_string().as_bytes()),
        encode(claims.to_string().as_bytes()),
        encode(signature)
    )
}
