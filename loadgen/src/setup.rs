//! Before the run: an edge key per edge on every aggregator, and the resources (one
//! `POST /resources` each, or one pattern), through the REST API with the admin token.
//!
//! The API has no bulk creation of resources; a pattern is the bulk form. Each aggregator
//! loads edge keys only at start and keeps its own cache of resources and patterns (reloaded
//! every 5 s from a shared store), so keys are registered on every aggregator and the run waits
//! until every aggregator knows what was created through the first.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::distr::{Alphanumeric, SampleString};
use reqwest::Method;
use serde_json::{Value, json};

use crate::http::{call, for_each_concurrently};
use crate::{Config, LoadgenError, SetupMode};

/// `POST /resources` calls in flight: the aggregator commits each one on its own, and more in
/// flight only queue on its single writer.
const CREATE_CONCURRENCY: usize = 32;
/// `POST /edge-keys` calls in flight.
const EDGE_KEY_CONCURRENCY: usize = 16;
/// Characters of a random edge secret (the API takes 16 to 256).
const EDGE_SECRET_CHARS: usize = 32;
/// How long other aggregators may take to see what was created through the first (their
/// caches reload every 5 s).
const PROPAGATION_MS_MAX: u64 = 30_000;
/// Polling interval while waiting for that.
const PROPAGATION_POLL_MS: u64 = 200;
/// A pattern creates at least this many resources (the API's default bound).
const PATTERN_RESOURCES_MIN: usize = 10_000;

fn refused(what: String, status: u16, body: &Value) -> LoadgenError {
    LoadgenError::Refused {
        what,
        status,
        body: body.to_string(),
    }
}

fn base(url: &str) -> &str {
    url.trim_end_matches('/')
}

/// Registers the edges' keys and creates the resources; returns each edge's secret.
pub async fn run(
    client: &reqwest::Client,
    config: &Arc<Config>,
    resource_ids: &Arc<Vec<String>>,
    edge_ids: &[String],
) -> Result<Vec<Vec<u8>>, LoadgenError> {
    let secrets: Arc<Vec<String>> = Arc::new(
        edge_ids
            .iter()
            .map(|_| Alphanumeric.sample_string(&mut rand::rng(), EDGE_SECRET_CHARS))
            .collect(),
    );
    let edge_ids = Arc::new(edge_ids.to_vec());
    for aggregator in &config.aggregators {
        let url = format!("{}/edge-keys", base(aggregator));
        let (client, config, secrets, ids) = (
            client.clone(),
            Arc::clone(config),
            Arc::clone(&secrets),
            Arc::clone(&edge_ids),
        );
        for_each_concurrently(ids.len(), EDGE_KEY_CONCURRENCY, move |index| {
            let (client, config, secrets, ids, url) = (
                client.clone(),
                Arc::clone(&config),
                Arc::clone(&secrets),
                Arc::clone(&ids),
                url.clone(),
            );
            async move {
                let body = json!({"edge_id": ids[index], "secret": secrets[index]});
                let (status, answer) = call(
                    &client,
                    Method::POST,
                    &url,
                    config.admin_token(),
                    Some(&body),
                )
                .await?;
                if status != 201 {
                    return Err(refused(
                        format!("POST {url} for {}", ids[index]),
                        status,
                        &answer,
                    ));
                }
                Ok(())
            }
        })
        .await?;
    }
    match config.setup {
        SetupMode::Resources => create_resources(client, config, resource_ids).await?,
        SetupMode::Pattern => create_pattern(client, config).await?,
        SetupMode::Existing => {}
    }
    Ok(secrets
        .iter()
        .map(|secret| secret.as_bytes().to_vec())
        .collect())
}

async fn create_resources(
    client: &reqwest::Client,
    config: &Arc<Config>,
    resource_ids: &Arc<Vec<String>>,
) -> Result<(), LoadgenError> {
    let url = format!("{}/resources", base(&config.aggregators[0]));
    let (client_for_work, config_for_work, ids) =
        (client.clone(), Arc::clone(config), Arc::clone(resource_ids));
    for_each_concurrently(ids.len(), CREATE_CONCURRENCY, move |index| {
        let (client, config, ids, url) = (
            client_for_work.clone(),
            Arc::clone(&config_for_work),
            Arc::clone(&ids),
            url.clone(),
        );
        async move { create_resource(&client, &config, &url, &ids[index]).await }
    })
    .await?;
    if config.aggregators.len() > 1 {
        // Created after every other resource committed: an aggregator whose cache has it has
        // them all (a reload replaces the whole cache).
        let sentinel = format!(
            "{}-ready-{}",
            config.resource_prefix,
            hitcount_process::now_ms()
        );
        let url = format!("{}/resources", base(&config.aggregators[0]));
        create_resource(client, config, &url, &sentinel).await?;
        wait_everywhere(client, config, &format!("/resources/{sentinel}")).await?;
    }
    Ok(())
}

async fn create_resource(
    client: &reqwest::Client,
    config: &Config,
    url: &str,
    resource_id: &str,
) -> Result<(), LoadgenError> {
    let body = json!({"name": resource_id, "resource_id": resource_id});
    let (status, answer) =
        call(client, Method::POST, url, config.admin_token(), Some(&body)).await?;
    match status {
        201 => Ok(()),
        // From an earlier run with this prefix: its old counts lie outside this run's minutes
        // unless that run was within the same minutes.
        409 if answer["error"]["code"] == "resource_id_taken" => Ok(()),
        _ => Err(refused(
            format!("POST {url} for {resource_id}"),
            status,
            &answer,
        )),
    }
}

async fn create_pattern(client: &reqwest::Client, config: &Config) -> Result<(), LoadgenError> {
    let pattern = format!("{}*", config.resource_prefix);
    let first = base(&config.aggregators[0]);
    let wanted = config.resources.max(PATTERN_RESOURCES_MIN);
    let body = json!({"pattern": pattern, "resources_max": wanted});
    let url = format!("{first}/patterns");
    let (status, answer) = call(
        client,
        Method::POST,
        &url,
        config.admin_token(),
        Some(&body),
    )
    .await?;
    match status {
        201 => {}
        409 => {
            let url = format!("{first}/patterns/{pattern}");
            let (status, existing) =
                call(client, Method::GET, &url, config.admin_token(), None).await?;
            let room = existing["resources_max"].as_u64().unwrap_or(0);
            if status != 200 || room < config.resources as u64 {
                return Err(LoadgenError::Setup {
                    what: format!("pattern {pattern}"),
                    reason: format!(
                        "it exists with resources_max {room}, under --resources {}; delete it or \
                         use another --resource-prefix",
                        config.resources
                    ),
                });
            }
        }
        _ => return Err(refused(format!("POST {url}"), status, &answer)),
    }
    wait_everywhere(client, config, &format!("/patterns/{pattern}")).await
}

/// Waits until every aggregator answers 200 for `path`.
async fn wait_everywhere(
    client: &reqwest::Client,
    config: &Config,
    path: &str,
) -> Result<(), LoadgenError> {
    let started = Instant::now();
    for aggregator in &config.aggregators[1..] {
        let url = format!("{}{path}", base(aggregator));
        loop {
            let (status, _) = call(client, Method::GET, &url, config.admin_token(), None).await?;
            if status == 200 {
                break;
            }
            if started.elapsed() > Duration::from_millis(PROPAGATION_MS_MAX) {
                return Err(LoadgenError::Setup {
                    what: format!("GET {url}"),
                    reason: format!(
                        "still {status} after {PROPAGATION_MS_MAX} ms: do the aggregators share \
                         one store?"
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(PROPAGATION_POLL_MS)).await;
        }
    }
    Ok(())
}
