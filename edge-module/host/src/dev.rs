//! `hitcount-edge --dev`: an aggregator on the embedded store and an edge in one process, wired
//! together, so that the first command of the README counts a hit end to end.
//!
//! The aggregator is the real one (the `hitcount-aggregator` library), listening on its own port
//! so that its REST API can be used as in production. What production configures by hand is
//! generated at every start: the edge's signing key (known only to this process) and a session
//! token with the admin scope, which the edge uses for read-your-writes and which is printed for
//! the user's own API calls.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use hitcount_aggregator::Aggregator;
use hitcount_aggregator::auth::{Scope, generate_token, random_hex, token_digest};
use hitcount_aggregator::config::{Config as AggregatorConfig, EdgeKey};
use hitcount_aggregator::store::TokenRecord;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;
use crate::{Edge, now_ms};

/// The session token's id in the aggregator's token table: replaced at every dev start, so one
/// stays valid at a time.
pub const DEV_TOKEN_ID: &str = "dev-session";
/// Resources that exist from the first start, so that the quickstart's hit can be read back.
pub const DEV_RESOURCES: &[&str] = &["home", "demo", "demo.about", "demo.pricing", "demo.blog"];

/// Where the dev aggregator keeps its data and listens.
#[derive(Debug, Clone)]
pub struct DevSettings {
    pub data_dir: PathBuf,
    pub aggregator_listen: SocketAddr,
}

/// A running dev pair: where each listens, and the token printed for the session.
#[derive(Debug)]
pub struct DevStack {
    pub edge_address: SocketAddr,
    pub aggregator_address: SocketAddr,
    pub session_token: String,
    stop: watch::Sender<bool>,
    aggregator_task: tokio::task::JoinHandle<anyhow::Result<()>>,
    edge_task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl DevStack {
    /// Stops the edge first (it delivers its last windows to the still running aggregator),
    /// then the aggregator (which commits what it queued).
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.edge_task.await.context("the edge task panicked")??;
        self.aggregator_task
            .await
            .context("the aggregator task panicked")??;
        Ok(())
    }
}

async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// Starts the aggregator and the edge on `settings` and `edge_config.listen`.
pub async fn start(mut edge_config: Config, settings: DevSettings) -> anyhow::Result<DevStack> {
    let edge_key = random_hex(32);
    let mut aggregator_config = AggregatorConfig::for_data_dir(settings.data_dir.clone());
    aggregator_config.listen = settings.aggregator_listen;
    aggregator_config.edge_keys = vec![EdgeKey {
        edge_id: edge_config.edge_id.clone(),
        secret: edge_key.as_bytes().to_vec(),
    }];
    let aggregator = Aggregator::start(aggregator_config)
        .await
        .context("starting the dev aggregator")?;
    let session_token = generate_token();
    let record = TokenRecord {
        id: DEV_TOKEN_ID.to_owned(),
        name: "hitcount-edge --dev session".to_owned(),
        token_sha256: token_digest(&session_token),
        scopes: vec![Scope::Admin.as_str().to_owned()],
        created_at_ms: now_ms(),
    };
    let state = aggregator.state();
    state
        .store
        .put_token(record.clone())
        .await
        .context("storing the dev session token")?;
    state.tokens.insert(record);

    let aggregator_listener = TcpListener::bind(settings.aggregator_listen)
        .await
        .with_context(|| {
            format!(
                "binding the dev aggregator to {}",
                settings.aggregator_listen
            )
        })?;
    let aggregator_address = aggregator_listener
        .local_addr()
        .context("reading the aggregator's address")?;
    let edge_listener = TcpListener::bind(edge_config.listen)
        .await
        .with_context(|| format!("binding the edge to {}", edge_config.listen))?;
    let edge_address = edge_listener
        .local_addr()
        .context("reading the edge's address")?;

    let (stop, stop_receiver) = watch::channel(false);
    let aggregator_task = tokio::spawn(hitcount_aggregator::serve(
        aggregator_listener,
        aggregator,
        stopped(stop_receiver.clone()),
    ));
    let aggregator_url = format!("http://{aggregator_address}");
    create_dev_resources(&aggregator_url, &session_token).await?;

    edge_config.aggregator = aggregator_url;
    edge_config.demo = true;
    edge_config.edge_key = edge_key.into_bytes();
    edge_config.aggregator_token = Some(session_token.clone());
    let edge = Edge::start(edge_config)?;
    let edge_task = tokio::spawn(crate::serve(edge_listener, edge, stopped(stop_receiver)));
    Ok(DevStack {
        edge_address,
        aggregator_address,
        session_token,
        stop,
        aggregator_task,
        edge_task,
    })
}

async fn create_dev_resources(aggregator_url: &str, token: &str) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    for resource_id in DEV_RESOURCES {
        let response = client
            .post(format!("{aggregator_url}/resources"))
            .bearer_auth(token)
            .json(&serde_json::json!({"name": resource_id, "resource_id": resource_id}))
            .send()
            .await
            .with_context(|| format!("creating the dev resource {resource_id}"))?;
        // 409: it exists from an earlier dev start.
        let status = response.status().as_u16();
        if status != 201 && status != 409 {
            anyhow::bail!(
                "creating the dev resource {resource_id}: the aggregator answered {status}"
            );
        }
    }
    Ok(())
}

/// What `hitcount-edge --dev` does: start both, say where to send a hit and where to read it,
/// run until SIGINT or SIGTERM.
pub async fn run(edge_config: Config, settings: DevSettings) -> anyhow::Result<()> {
    // Listening before anything is printed: whoever reads the banner may stop us at once.
    let stopped = hitcount_aggregator::shutdown_signal();
    let stack = start(edge_config, settings.clone()).await?;
    let edge = stack.edge_address;
    let aggregator = stack.aggregator_address;
    // Printed, not logged: this is the user's first screen, and the token is theirs to use.
    // Formatted first and printed in one write, so a reader sees it whole.
    let banner = format!(
        "hitcount dev: edge on http://{edge}, aggregator on http://{aggregator}, data in {data}

  the demo site: http://{edge}/demo   (counts its own page views, shows them live)
  send a hit:    curl -X POST http://{edge}/hit -d '{{\"resource_id\":\"home\"}}'
  read it back:  curl http://{edge}/hits/home
  the REST API:  curl -H 'Authorization: Bearer {token}' http://{aggregator}/resources

(resources {resources} exist; create more with POST /resources. Ctrl-C stops both and
delivers the last window first.)",
        data = settings.data_dir.display(),
        token = stack.session_token,
        resources = DEV_RESOURCES.join(", "),
    );
    println!("{banner}");
    stopped.await;
    tracing::info!("stopping the dev edge and aggregator");
    stack.stop().await
}
