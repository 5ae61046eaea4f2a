//! Edge secrets encrypted at rest (`--secret-key-file`): sealed when stored, sealed at start when
//! stored before the key was given, opened again after a rotation, and a store whose secrets
//! the given keys cannot open refused at start, on whichever store the suite runs.

use std::path::PathBuf;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hitcount_aggregator::store::sealed::{SealingKey, SecretKeys};
use hitcount_aggregator::{Aggregator, now_ms};
use reqwest::StatusCode;
use serde_json::json;
use tempfile::TempDir;

use crate::support::{Api, Server, batch_from, post_delta_bytes, test_config};

const EDGE: &str = "edge-sealed";
const SECRET: &str = "plain-secret-0123456789";

fn key_file(directory: &TempDir, name: &str, byte: u8) -> PathBuf {
    let path = directory.path().join(name);
    std::fs::write(&path, format!("{}\n", BASE64.encode([byte; 32]))).unwrap();
    path
}

/// The edge's secret as the store holds it.
async fn stored(server: &Server, edge_id: &str) -> Vec<u8> {
    server
        .store()
        .expect("an aggregator in this process")
        .durable()
        .edge_keys()
        .await
        .unwrap()
        .into_iter()
        .find(|(id, _, _)| id == edge_id)
        .map(|(_, secret, _)| secret)
        .unwrap()
}

fn is_sealed_without(stored: &[u8], plain: &str) -> bool {
    stored.first() == Some(&0)
        && !stored
            .windows(plain.len())
            .any(|window| window == plain.as_bytes())
}

/// A delta signed with the edge's plain secret is verified.
async fn verifies(server: &Server, sequence: u64) {
    let batch = batch_from(EDGE, 1, sequence, &[("home", 1, &["v"])]);
    let (status, value) =
        post_delta_bytes(server, EDGE, SECRET, now_ms(), batch.encode().unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{value}");
    assert_eq!(value["status"], "applied");
}

async fn refused_at_start(config: hitcount_aggregator::config::Config) -> String {
    match Aggregator::start(config).await {
        Ok(_) => panic!("started with secrets it cannot open"),
        Err(error) => format!("{error:#}"),
    }
}

#[tokio::test]
async fn edge_secrets_are_stored_sealed_and_survive_a_key_rotation() {
    let (keys, directory) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let (old_key, new_key) = (key_file(&keys, "old.key", 1), key_file(&keys, "new.key", 2));
    let mut config = test_config(directory.path());

    // Without a key, a secret is stored as it is.
    let server = Server::start_with(config.clone()).await;
    Api::admin(&server).create_resource("home").await;
    let (status, value) = Api::admin(&server)
        .post("/edge-keys", json!({"edge_id": EDGE, "secret": SECRET}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{value}");
    assert_eq!(stored(&server, EDGE).await, SECRET.as_bytes());
    server.stop().await;

    // Given a key, the aggregator seals what was stored plain as it starts, and what it stores.
    config.secret_key_file = Some(old_key.clone());
    let server = Server::start_with(config.clone()).await;
    let sealed_at_start = stored(&server, EDGE).await;
    assert!(is_sealed_without(&sealed_at_start, SECRET));
    verifies(&server, 1).await;
    let (status, value) = Api::admin(&server)
        .post("/edge-keys", json!({"edge_id": "edge-later"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{value}");
    let later = value["secret"].as_str().unwrap().to_owned();
    assert!(is_sealed_without(
        &stored(&server, "edge-later").await,
        &later
    ));
    server.stop().await;

    // Without the key, or with another, it does not start, and says why.
    config.secret_key_file = None;
    let refusal = refused_at_start(config.clone()).await;
    assert!(refusal.contains("no --secret-key-file"), "{refusal}");
    config.secret_key_file = Some(new_key.clone());
    let refusal = refused_at_start(config.clone()).await;
    assert!(
        refusal.contains("neither --secret-key-file nor --secret-key-file-previous"),
        "{refusal}"
    );

    // Rotation: the new key with the old as previous seals everything again with the new one.
    config.secret_key_file_previous = Some(old_key.clone());
    let server = Server::start_with(config.clone()).await;
    let resealed = stored(&server, EDGE).await;
    assert!(is_sealed_without(&resealed, SECRET));
    assert_ne!(resealed, sealed_at_start, "sealed again with the new key");
    verifies(&server, 2).await;
    // An aggregator still on the old key alone stores a secret meanwhile: the running one seals
    // it with the new key at its next reload, so the old key can then be dropped.
    let old_only = SecretKeys {
        current: Some(
            SealingKey::from_file_text(&std::fs::read_to_string(&old_key).unwrap()).unwrap(),
        ),
        previous: None,
    };
    let meanwhile = old_only
        .seal("edge-meanwhile", b"meanwhile-secret-0123".to_vec())
        .unwrap();
    let durable = server.store().expect("in this process").durable();
    durable
        .put_edge_key("edge-meanwhile".to_owned(), meanwhile.clone(), now_ms())
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while stored(&server, "edge-meanwhile").await == meanwhile {
        assert!(
            std::time::Instant::now() < deadline,
            "sealed again within a reload"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    server.stop().await;

    // The new key alone now opens every secret.
    config.secret_key_file_previous = None;
    let server = Server::start_with(config.clone()).await;
    verifies(&server, 3).await;
    server.stop().await;
}

#[tokio::test]
async fn a_key_file_that_is_not_a_key_stops_the_start() {
    let (keys, directory) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let short = keys.path().join("short.key");
    std::fs::write(&short, BASE64.encode([1; 16])).unwrap();
    let mut config = test_config(directory.path());
    config.secret_key_file = Some(short);
    let refusal = refused_at_start(config.clone()).await;
    assert!(refusal.contains("32 random bytes in base64"), "{refusal}");
    config.secret_key_file = Some(keys.path().join("missing.key"));
    let refusal = refused_at_start(config).await;
    assert!(refusal.contains("missing.key"), "{refusal}");
}
