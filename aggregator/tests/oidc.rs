//! Bearer JWTs of an OpenID Connect issuer (`--oidc-issuer`): the tests' own issuer serves
//! discovery and its keys over real HTTP, signs tokens, rotates its key mid-test and stops; every
//! refusal is a 401 saying why, an unreachable issuer a 503, and API tokens keep working.

use std::time::Duration;

use hitcount_aggregator::oidc::{
    JWKS_CACHE_MS_MAX, JWKS_STALE_MS_MAX, OidcError, OidcSettings, OidcVerifier,
};
use hitcount_test_support::oidc::{Issuer, OIDC_AUDIENCE, SigningKey, hand_made_jwt, public_jwk};
use hitcount_test_support::{ADMIN_TOKEN, Server, body, error_code, test_config};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tempfile::TempDir;

/// The tests' refetch interval: short, so a rotation is seen within the test.
const REFETCH_INTERVAL_MS: u64 = 1_000;

async fn aggregator_trusting(issuer: &Issuer, roles_claim: &str) -> (Server, TempDir) {
    aggregator_signing_in(issuer, roles_claim, None).await
}

/// As [`aggregator_trusting`], with the dashboard signing in as `dashboard_client`.
async fn aggregator_signing_in(
    issuer: &Issuer,
    roles_claim: &str,
    dashboard_client: Option<hitcount_aggregator::oidc::DashboardClient>,
) -> (Server, TempDir) {
    let directory = TempDir::new().unwrap();
    let mut config = test_config(directory.path());
    config.oidc = Some(OidcSettings {
        issuer: issuer.url(),
        audience: OIDC_AUDIENCE.to_owned(),
        roles_claim: roles_claim.to_owned(),
        refetch_interval_ms: REFETCH_INTERVAL_MS,
        dashboard_client,
    });
    (Server::start_with(config).await, directory)
}

fn now_s() -> u64 {
    hitcount_aggregator::now_ms() / 1_000
}

/// The status and body of `GET path` with `token`.
async fn get(server: &Server, path: &str, token: &str) -> (StatusCode, Value) {
    body(
        server
            .client
            .get(server.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// The status of creating the resource `home` with `token`.
async fn create_home(server: &Server, token: &str) -> StatusCode {
    let (status, value) = body(
        server
            .client
            .post(server.url("/resources"))
            .bearer_auth(token)
            .json(&json!({"name": "Home", "resource_id": "home"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    if status == StatusCode::FORBIDDEN {
        assert_eq!(error_code(&value), "forbidden");
    }
    status
}

/// Asserts `token` is refused with 401 and a message containing `why`.
async fn assert_refused(server: &Server, token: &str, why: &str) {
    let (status, value) = get(server, "/stats/top", token).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{why}: {value}");
    assert_eq!(error_code(&value), "unauthorized");
    let message = value["error"]["message"].as_str().unwrap();
    assert!(message.contains(why), "{message:?} should say {why:?}");
}

#[tokio::test]
async fn the_issuers_tokens_are_callers_with_the_scopes_their_roles_grant() {
    let rsa = SigningKey::rsa("rsa-1");
    let ec = SigningKey::ec("ec-1");
    let issuer = Issuer::start(&[&rsa, &ec]).await;
    let (server, _directory) = aggregator_trusting(&issuer, "roles").await;
    let now = now_s();

    let reader = rsa.sign(&issuer.claims("ada", &["hitcount.read"], now));
    assert_eq!(get(&server, "/stats/top", &reader).await.0, StatusCode::OK);
    assert_eq!(create_home(&server, &reader).await, StatusCode::FORBIDDEN);

    let admin = ec.sign(&issuer.claims("grace", &["hitcount.admin", "other.role"], now));
    assert_eq!(create_home(&server, &admin).await, StatusCode::CREATED);
    assert_eq!(get(&server, "/tokens", &admin).await.0, StatusCode::OK);

    let ingest_only = rsa.sign(&issuer.claims("beacon", &["hitcount.ingest"], now));
    assert_eq!(
        get(&server, "/stats/top", &ingest_only).await.0,
        StatusCode::FORBIDDEN
    );
    let no_role = rsa.sign(&issuer.claims("eve", &["hitcount.reader", "admin"], now));
    assert_eq!(
        get(&server, "/stats/top", &no_role).await.0,
        StatusCode::FORBIDDEN
    );

    // API tokens work beside the issuer's tokens.
    assert_eq!(
        get(&server, "/stats/top", ADMIN_TOKEN).await.0,
        StatusCode::OK
    );
    assert_refused(
        &server,
        "hct_not-a-token-at-all",
        "unknown or revoked token",
    )
    .await;
    // The key set was fetched once for all of it.
    assert_eq!(issuer.jwks_fetches(), 1);
}

#[tokio::test]
async fn roles_are_read_from_the_claim_the_flag_names_keycloak_style() {
    let rsa = SigningKey::rsa("rsa-1");
    let issuer = Issuer::start(&[&rsa]).await;
    let (server, _directory) = aggregator_trusting(&issuer, "realm_access.roles").await;
    let mut claims = issuer.claims("ada", &["hitcount.admin"], now_s());
    // Keycloak puts realm roles under realm_access; a top-level `roles` is not read.
    claims["realm_access"] = json!({"roles": ["hitcount.read"]});
    let token = rsa.sign(&claims);
    assert_eq!(get(&server, "/stats/top", &token).await.0, StatusCode::OK);
    assert_eq!(
        get(&server, "/tokens", &token).await.0,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn every_bad_token_is_refused_with_401_saying_why() {
    let rsa = SigningKey::rsa("rsa-1");
    let issuer = Issuer::start(&[&rsa]).await;
    let (server, _directory) = aggregator_trusting(&issuer, "roles").await;
    let now = now_s();
    let good = issuer.claims("ada", &["hitcount.read"], now);
    assert_eq!(
        get(&server, "/stats/top", &rsa.sign(&good)).await.0,
        StatusCode::OK
    );

    let none = hand_made_jwt(&json!({"alg": "none", "kid": "rsa-1"}), &good, b"");
    assert_refused(&server, &none, "tokens signed with none are not accepted").await;

    // HS256 keyed with the issuer's public key, which anyone can read from its key set.
    let public = serde_json::to_vec(&rsa.jwk).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some("rsa-1".to_owned());
    let hs256 = jsonwebtoken::encode(
        &header,
        &good,
        &jsonwebtoken::EncodingKey::from_secret(&public).unwrap(),
    )
    .unwrap();
    assert_refused(&server, &hs256, "tokens signed with HS256 are not accepted").await;

    // An unknown kid after a refetch (its own, once the refetch interval has passed).
    tokio::time::sleep(Duration::from_millis(REFETCH_INTERVAL_MS + 100)).await;
    let stranger = SigningKey::rsa("rsa-unknown");
    assert_refused(
        &server,
        &stranger.sign(&good),
        "no signing key \"rsa-unknown\"",
    )
    .await;
    // Same kid, another key: the signature does not verify.
    let impostor = SigningKey::rsa("rsa-1");
    assert_refused(&server, &impostor.sign(&good), "signature is invalid").await;

    let mut claims = good.clone();
    claims["iss"] = json!("https://login.example.com/other-tenant");
    assert_refused(&server, &rsa.sign(&claims), "issuer is not").await;
    let mut claims = good.clone();
    claims["aud"] = json!("api://another-app");
    assert_refused(&server, &rsa.sign(&claims), "audience does not include").await;
    // Past the clock skew either way.
    let mut claims = good.clone();
    claims["exp"] = json!(now - 120);
    assert_refused(&server, &rsa.sign(&claims), "has expired").await;
    let mut claims = good.clone();
    claims["nbf"] = json!(now + 120);
    assert_refused(&server, &rsa.sign(&claims), "not valid yet").await;
    let mut claims = good.clone();
    claims.as_object_mut().unwrap().remove("sub");
    assert_refused(&server, &rsa.sign(&claims), "lacks the sub claim").await;
    let unnamed = hand_made_jwt(&json!({"alg": "RS256"}), &good, b"x");
    assert_refused(&server, &unnamed, "names no signing key").await;
    assert_refused(&server, "a.b.c", "not a well-formed JWT").await;
}

#[tokio::test]
async fn a_rotated_key_is_fetched_once_and_the_retired_one_is_refused() {
    let old = SigningKey::rsa("2026-11");
    let new = SigningKey::ec("2026-12");
    let issuer = Issuer::start(&[&old]).await;
    let (server, _directory) = aggregator_trusting(&issuer, "roles").await;
    let claims = issuer.claims("ada", &["hitcount.read"], now_s());
    assert_eq!(
        get(&server, "/stats/top", &old.sign(&claims)).await.0,
        StatusCode::OK
    );
    assert_eq!(issuer.jwks_fetches(), 1);

    issuer.publish(&[&new]);
    tokio::time::sleep(Duration::from_millis(REFETCH_INTERVAL_MS + 100)).await;
    // Tokens naming keys nobody has, many at once: one fetch between them, not one each.
    let mut made_up = Vec::new();
    for index in 0..20 {
        made_up.push(SigningKey::ec(&format!("made-up-{index}")).sign(&claims));
    }
    let refusals = made_up
        .iter()
        .map(|token| get(&server, "/stats/top", token));
    // Refused with 401 when the request waited for that fetch, with 503 (retry later) when it
    // came after the fetch had started.
    for (status, value) in futures::future::join_all(refusals).await {
        assert!(
            [StatusCode::UNAUTHORIZED, StatusCode::SERVICE_UNAVAILABLE].contains(&status),
            "{status} {value}"
        );
    }
    assert_eq!(
        issuer.jwks_fetches(),
        2,
        "one fetch for twenty unknown keys"
    );
    // That fetch brought the new key; the retired one is gone from the cache with it.
    assert_eq!(
        get(&server, "/stats/top", &new.sign(&claims)).await.0,
        StatusCode::OK
    );
    assert_eq!(issuer.jwks_fetches(), 2);
    // Until the next refetch, a key not in the set may be one just published: 503, retry.
    let (status, _) = get(&server, "/stats/top", &old.sign(&claims)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    tokio::time::sleep(Duration::from_millis(REFETCH_INTERVAL_MS + 100)).await;
    assert_refused(&server, &old.sign(&claims), "no signing key \"2026-11\"").await;
    assert_eq!(issuer.jwks_fetches(), 3);
}

#[tokio::test]
async fn an_issuer_that_cannot_be_reached_is_503_and_its_keys_are_kept_once_fetched() {
    let rsa = SigningKey::rsa("rsa-1");
    let issuer = Issuer::start(&[&rsa]).await;
    let (server, _directory) = aggregator_trusting(&issuer, "roles").await;
    let claims = issuer.claims("ada", &["hitcount.read"], now_s());
    let token = rsa.sign(&claims);

    let unreached = Issuer::start(&[&rsa]).await;
    let unreached_url = unreached.url();
    let (other, _other_directory) = aggregator_trusting(&unreached, "roles").await;
    unreached.server.stop().await;
    let mut claims_for_unreached = claims.clone();
    claims_for_unreached["iss"] = json!(unreached_url);
    let response = other
        .client
        .get(other.url("/stats/top"))
        .bearer_auth(rsa.sign(&claims_for_unreached))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
    let (_, value) = body(response).await;
    assert_eq!(error_code(&value), "unavailable");

    // Fetched once, the keys outlive the issuer's outage.
    assert_eq!(get(&server, "/stats/top", &token).await.0, StatusCode::OK);
    issuer.server.stop().await;
    assert_eq!(get(&server, "/stats/top", &token).await.0, StatusCode::OK);
}

/// A failed fetch of the keys limits the next as a successful one does: while the issuer's key
/// set fails, tokens get 503 at once and the issuer is asked once per refetch interval; once it
/// answers again, they pass.
#[tokio::test]
async fn a_failing_key_set_is_asked_once_per_interval_and_tokens_get_503() {
    let rsa = SigningKey::rsa("rsa-1");
    let issuer = Issuer::start(&[&rsa]).await;
    issuer.fail_key_set(true);
    let (server, _directory) = aggregator_trusting(&issuer, "roles").await;
    let token = rsa.sign(&issuer.claims("ada", &["hitcount.read"], now_s()));
    for _ in 0..5 {
        let (status, value) = get(&server, "/stats/top", &token).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{value}");
        assert_eq!(error_code(&value), "unavailable");
    }
    assert_eq!(issuer.jwks_fetches(), 1, "one attempt within the interval");
    issuer.fail_key_set(false);
    tokio::time::sleep(Duration::from_millis(REFETCH_INTERVAL_MS + 100)).await;
    assert_eq!(get(&server, "/stats/top", &token).await.0, StatusCode::OK);
    assert_eq!(issuer.jwks_fetches(), 2);
}

/// A key the issuer published after the last fetch, named within the refetch interval: 503 with
/// Retry-After (the token may well be good), and accepted after the next fetch.
#[tokio::test]
async fn a_key_newer_than_the_last_fetch_is_503_until_the_next_fetch() {
    let old = SigningKey::rsa("old");
    let new = SigningKey::ec("new");
    let issuer = Issuer::start(&[&old]).await;
    let (server, _directory) = aggregator_trusting(&issuer, "roles").await;
    let claims = issuer.claims("ada", &["hitcount.read"], now_s());
    assert_eq!(
        get(&server, "/stats/top", &old.sign(&claims)).await.0,
        StatusCode::OK
    );
    issuer.publish(&[&old, &new]);
    let response = server
        .client
        .get(server.url("/stats/top"))
        .bearer_auth(new.sign(&claims))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
    let (_, value) = body(response).await;
    let message = value["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("no signing key \"new\" when last fetched"),
        "{message}"
    );
    tokio::time::sleep(Duration::from_millis(REFETCH_INTERVAL_MS + 100)).await;
    assert_eq!(
        get(&server, "/stats/top", &new.sign(&claims)).await.0,
        StatusCode::OK
    );
    assert_eq!(issuer.jwks_fetches(), 2);
}

/// Keys that must never verify: a symmetric (`oct`) key in the set, and two keys under one
/// `kid`; and key sets from where they must not come: an http:// address that is not this
/// machine, and a redirect.
#[tokio::test]
async fn symmetric_ambiguous_and_badly_placed_keys_are_never_used() {
    let rsa = SigningKey::rsa("rsa-1");
    let twin = SigningKey::rsa("twin");
    let other_twin = SigningKey::rsa("twin");
    let issuer = Issuer::start(&[&rsa]).await;
    let mut oct = json!({"kty": "oct", "kid": "shared", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQ"});
    issuer.publish_raw(vec![
        oct.take(),
        public_jwk(&twin),
        public_jwk(&other_twin),
        public_jwk(&rsa),
    ]);
    let (server, _directory) = aggregator_trusting(&issuer, "roles").await;
    let claims = issuer.claims("ada", &["hitcount.read"], now_s());
    assert_eq!(
        get(&server, "/stats/top", &rsa.sign(&claims)).await.0,
        StatusCode::OK
    );
    // A token of the right algorithm naming the symmetric key's kid finds no key.
    let named_oct = SigningKey::rsa("shared");
    assert_refused(
        &server,
        &named_oct.sign(&claims),
        "\"shared\" never verifies tokens: a symmetric key",
    )
    .await;
    assert_refused(
        &server,
        &twin.sign(&claims),
        "\"twin\" never verifies tokens: the set names its kid twice",
    )
    .await;

    // http:// to another machine (this one under an address that is not a loopback name, which
    // serves the keys if asked), and a redirect.
    let port = issuer.server.address.port();
    for jwks_uri in [
        format!("http://[::ffff:127.0.0.1]:{port}/keys"),
        format!("{}/moved-keys", issuer.url()),
    ] {
        let elsewhere = Issuer::start(&[&rsa]).await;
        elsewhere.name_jwks_uri(Some(jwks_uri.clone()));
        let (server, _directory) = aggregator_trusting(&elsewhere, "roles").await;
        let mut claims = claims.clone();
        claims["iss"] = json!(elsewhere.url());
        let (status, value) = get(&server, "/stats/top", &rsa.sign(&claims)).await;
        assert_eq!(
            status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{jwks_uri}: {value}"
        );
    }
}

/// A key set outlives an issuer's outage for a bounded time only: past its cache age it still
/// verifies while fetches fail, up to `JWKS_STALE_MS_MAX` more; after that tokens wait (503).
#[tokio::test]
async fn keys_outlive_an_outage_for_a_bounded_time() {
    let rsa = SigningKey::rsa("rsa-1");
    let issuer = Issuer::start(&[&rsa]).await;
    let verifier = OidcVerifier::new(OidcSettings {
        issuer: issuer.url(),
        audience: OIDC_AUDIENCE.to_owned(),
        roles_claim: "roles".to_owned(),
        refetch_interval_ms: REFETCH_INTERVAL_MS,
        dashboard_client: None,
    })
    .unwrap();
    // The claims are checked against the real clock; the key cache against the one given.
    let token = rsa.sign(&issuer.claims("ada", &["hitcount.read"], now_s()));
    let now = hitcount_aggregator::now_ms();
    assert!(verifier.verify(&token, now).await.is_ok());
    issuer.fail_key_set(true);
    let aged = now + JWKS_CACHE_MS_MAX + 60_000;
    assert!(
        verifier.verify(&token, aged).await.is_ok(),
        "stale keys ride out an outage"
    );
    // Answered at once; the fetch that renews the set runs in the background.
    let started = std::time::Instant::now();
    while issuer.jwks_fetches() < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the set is renewed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(issuer.jwks_fetches(), 2);
    let too_old = now + JWKS_CACHE_MS_MAX + JWKS_STALE_MS_MAX + 60_000;
    assert!(matches!(
        verifier.verify(&token, too_old).await,
        Err(OidcError::ProviderUnavailable(_))
    ));
    assert_eq!(issuer.jwks_fetches(), 3);
}

/// `POST /hits` of `resource_ids` with `token`: its status.
async fn send_hits(server: &Server, token: &str, resource_ids: &[&str]) -> StatusCode {
    let hits: Vec<Value> = resource_ids
        .iter()
        .map(|resource_id| json!({"resource_id": resource_id}))
        .collect();
    server
        .client
        .post(server.url("/hits"))
        .bearer_auth(token)
        .json(&json!({"hits": hits}))
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn a_grant_limited_to_a_prefix_reads_and_counts_only_those_resources() {
    let rsa = SigningKey::rsa("rsa-1");
    let issuer = Issuer::start(&[&rsa]).await;
    let (server, _directory) = aggregator_trusting(&issuer, "roles").await;
    let now = now_s();
    let admin = rsa.sign(&issuer.claims("grace", &["hitcount.admin"], now));
    for resource_id in ["blog.one", "blog.two", "home"] {
        let response = server
            .client
            .post(server.url("/resources"))
            .bearer_auth(&admin)
            .json(&json!({"name": resource_id, "resource_id": resource_id}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    let sent = ["blog.one", "blog.one", "blog.two", "home", "home", "home"];
    assert_eq!(
        send_hits(&server, &admin, &sent).await,
        StatusCode::ACCEPTED
    );

    let blog = rsa.sign(&issuer.claims("ada", &["hitcount.read:blog.*"], now));
    let (status, value) = get(&server, "/hits/blog.one?window=1h", &blog).await;
    assert_eq!((status, value["count"].as_u64()), (StatusCode::OK, Some(2)));
    for refused in [
        "/hits/home?window=1h",
        "/resources/home",
        "/stats/series?window=1h&resource_ids=blog.one,home",
    ] {
        let (status, value) = get(&server, refused, &blog).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{refused}: {value}");
        assert!(
            value["error"]["message"]
                .as_str()
                .unwrap()
                .contains("\"home\"")
        );
    }
    // A resource that does not exist is refused alike: nothing is learnt of it.
    assert_eq!(
        get(&server, "/hits/nothing?window=1h", &blog).await.0,
        StatusCode::FORBIDDEN
    );

    let (_, listed) = get(&server, "/resources", &blog).await;
    let ids: Vec<&str> = listed["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|resource| resource["resource_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["blog.one", "blog.two"]);
    let (_, top) = get(&server, "/stats/top?window=1h", &blog).await;
    assert_eq!(top["total"]["count"], 3, "{top}");
    assert_eq!(top["resources"].as_array().unwrap().len(), 2);
    let (_, series) = get(&server, "/stats/series?window=1h", &blog).await;
    assert_eq!(
        (series["resources"].as_u64(), series["count"].as_u64()),
        (Some(2), Some(3))
    );
    let export = server
        .client
        .get(server.url("/export?window=1h&format=csv"))
        .bearer_auth(&blog)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        export.contains("blog.one") && export.contains("blog.two"),
        "{export}"
    );
    assert!(!export.contains("home"), "{export}");
    // An admin still sees everything.
    let (_, top) = get(&server, "/stats/top?window=1h", &admin).await;
    assert_eq!(top["total"]["count"], 6);
    // Ids refused as unknown are listed only where the grant covers them.
    assert_eq!(
        send_hits(&server, &admin, &["shop.new"]).await,
        StatusCode::NOT_FOUND
    );
    let listed = |value: Value| value["unknown_resources"].to_string();
    let (_, everything) = get(&server, "/unknown-resources", &admin).await;
    assert!(listed(everything).contains("shop.new"));
    let (_, limited) = get(&server, "/unknown-resources", &blog).await;
    assert!(!listed(limited).contains("shop.new"));

    // Ingest limited to blog.*: a request with one hit elsewhere counts nothing.
    let beacon = rsa.sign(&issuer.claims("beacon", &["hitcount.ingest:blog.*"], now));
    assert_eq!(
        send_hits(&server, &beacon, &["blog.two"]).await,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        send_hits(&server, &beacon, &["blog.two", "home"]).await,
        StatusCode::FORBIDDEN
    );
    let (_, top) = get(&server, "/stats/top?window=1h", &admin).await;
    assert_eq!(top["total"]["count"], 7);
    assert_eq!(
        get(&server, "/stats/top?window=1h", &beacon).await.0,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn api_tokens_take_the_same_grants_limited_to_resources() {
    let directory = TempDir::new().unwrap();
    let server = Server::start_with(test_config(directory.path())).await;
    for resource_id in ["blog.one", "home"] {
        assert_eq!(
            create_home_like(&server, resource_id).await,
            StatusCode::CREATED
        );
    }
    let create = |body: Value| {
        server
            .client
            .post(server.url("/tokens"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
    };
    let (status, made) = body(
        create(json!({"name": "blog", "scopes": ["read", "ingest"], "resources": ["blog.*"]}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    assert_eq!(made["scopes"], json!(["ingest", "read"]));
    assert_eq!(made["resources"], json!(["blog.*"]));
    let blog = made["token"].as_str().unwrap().to_owned();
    assert_eq!(
        send_hits(&server, &blog, &["blog.one"]).await,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        send_hits(&server, &blog, &["home"]).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        get(&server, "/hits/blog.one?window=1h", &blog).await.0,
        StatusCode::OK
    );
    assert_eq!(
        get(&server, "/hits/home?window=1h", &blog).await.0,
        StatusCode::FORBIDDEN
    );
    let (_, top) = get(&server, "/stats/top?window=1h", &blog).await;
    assert_eq!(top["resources"].as_array().unwrap().len(), 1, "{top}");
    // The list shows the limit; a token without one shows none.
    let (_, tokens) = get(&server, "/tokens", ADMIN_TOKEN).await;
    let listed = tokens["tokens"].as_array().unwrap();
    let shown = listed.iter().find(|token| token["name"] == "blog").unwrap();
    assert_eq!(shown["resources"], json!(["blog.*"]));
    assert!(listed.iter().any(|token| token.get("resources").is_none()));

    let admin_limited = json!({"name": "x", "scopes": ["admin"], "resources": ["blog.*"]});
    let (status, value) = body(create(admin_limited).await.unwrap()).await;
    assert_eq!(
        (status, error_code(&value).as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "admin_not_limited")
    );
    for (refused, why) in [
        (
            json!({"name": "x", "scopes": ["read"], "resources": []}),
            "1 to 100",
        ),
        (
            json!({"name": "x", "scopes": ["read"], "resources": ["a*b"]}),
            "neither a resource id",
        ),
        (
            json!({"name": "x", "scopes": ["read"], "resources": ["*"]}),
            "neither a resource id",
        ),
    ] {
        let (status, value) = body(create(refused.clone()).await.unwrap()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}: {value}");
        assert_eq!(error_code(&value), "invalid_resources");
        assert!(
            value["error"]["message"].as_str().unwrap().contains(why),
            "{value}"
        );
    }
}

/// Creates the resource `resource_id` with the admin token; its status.
async fn create_home_like(server: &Server, resource_id: &str) -> StatusCode {
    server
        .client
        .post(server.url("/resources"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"name": resource_id, "resource_id": resource_id}))
        .send()
        .await
        .unwrap()
        .status()
}

/// With `--oidc-client-id` the dashboard is told how to sign in through the issuer, and its
/// content security policy lets it reach the issuer's origin (the browser test,
/// `aggregator/dashboard/test/`, then signs in).
#[tokio::test]
async fn the_dashboard_is_told_how_to_sign_in_through_the_issuer() {
    let rsa = SigningKey::rsa("rsa-1");
    let issuer = Issuer::start(&[&rsa]).await;
    let client = hitcount_aggregator::oidc::DashboardClient {
        client_id: "hitcount-dashboard".to_owned(),
        scope: "openid api://hitcount/.default".to_owned(),
    };
    let (server, _directory) = aggregator_signing_in(&issuer, "roles", Some(client)).await;
    let response = server.client.get(server.url("/")).send().await.unwrap();
    let policy = response.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    let origin = issuer.url().trim_end_matches('/').to_owned();
    assert!(
        policy.contains(&format!("connect-src 'self' {origin};")),
        "{policy}"
    );
    let (status, config) = hitcount_test_support::Api::admin(&server)
        .get("/dashboard/config.json")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        config,
        serde_json::json!({"oidc": {
            "issuer": issuer.url(),
            "client_id": "hitcount-dashboard",
            "scope": "openid api://hitcount/.default",
        }})
    );
    server.stop().await;
}
