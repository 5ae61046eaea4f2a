//! `hitcount-dev`: an aggregator on the embedded store and an edge in one process, wired
//! together, so that the first command of the README counts a hit end to end.
//!
//! The aggregator is the real one (the `hitcount-aggregator` library), listening on its own port
//! so that its REST API can be used as in production. What production configures by hand is
//! generated at every start: the edge's signing key (known only to this process) and a session
//! token with the admin scope, which the edge uses for read-your-writes and which is printed for
//! the user's own API calls. Every resource id is created on its first hit (the pattern `*`), and
//! the edge counts curl and other HTTP clients, so that the banner's commands work as printed.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use hitcount_aggregator::Aggregator;
use hitcount_aggregator::auth::{Scope, generate_token, random_hex, token_digest};
use hitcount_aggregator::config::{Config as AggregatorConfig, EdgeKey};
use hitcount_aggregator::store::TokenRecord;
use hitcount_edge::Edge;
use hitcount_edge::config::{
    Config as EdgeConfig, WINDOW_MS_DEFAULT, WINDOW_MS_MAX, WINDOW_MS_MIN,
};
use hitcount_process::now_ms;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The session token's id in the aggregator's token table: replaced at every dev start, so one
/// stays valid at a time.
pub const DEV_TOKEN_ID: &str = "dev-session";
/// Resources that exist at every start, so that the banner's read command answers before the
/// first hit.
pub const DEV_RESOURCES: &[&str] = &["home", "demo", "demo.about", "demo.pricing", "demo.blog"];
/// The resource pattern registered at every start: every id is created on its first hit.
pub const DEV_PATTERN: &str = "*";
/// The edge id the dev edge signs with.
pub const DEV_EDGE_ID: &str = "edge-dev";

#[derive(Debug, Parser)]
#[command(
    name = "hitcount-dev",
    version,
    about = "An edge and an aggregator in one process, wired together: hitcount on one machine."
)]
pub struct Args {
    /// Address the edge serves beacons (and the demo) on.
    #[arg(long, env = "HITCOUNT_EDGE_LISTEN", default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,
    /// Address the aggregator's REST API listens on.
    #[arg(
        long,
        env = "HITCOUNT_DEV_AGGREGATOR_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    pub aggregator_listen: SocketAddr,
    /// The embedded store's directory.
    #[arg(long, env = "HITCOUNT_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Window length in ms: how often the edge ships its hits.
    #[arg(long, env = "HITCOUNT_WINDOW_MS", default_value_t = WINDOW_MS_DEFAULT)]
    pub window_ms: u64,
    /// Traces (`--otlp-endpoint`): read by `main` before the rest of the configuration.
    #[command(flatten)]
    pub telemetry: hitcount_process::TelemetryArgs,
}

/// [`Args`], validated.
#[derive(Debug, Clone)]
pub struct DevSettings {
    pub listen: SocketAddr,
    pub aggregator_listen: SocketAddr,
    pub data_dir: PathBuf,
    pub window_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum DevConfigError {
    #[error("--window-ms must be between {WINDOW_MS_MIN} and {WINDOW_MS_MAX}")]
    Window,
}

impl TryFrom<Args> for DevSettings {
    type Error = DevConfigError;

    fn try_from(args: Args) -> Result<Self, DevConfigError> {
        if !(WINDOW_MS_MIN..=WINDOW_MS_MAX).contains(&args.window_ms) {
            return Err(DevConfigError::Window);
        }
        Ok(Self {
            listen: args.listen,
            aggregator_listen: args.aggregator_listen,
            data_dir: args.data_dir,
            window_ms: args.window_ms,
        })
    }
}

/// A running dev pair: where each listens, and the token printed for the session.
#[derive(Debug)]
pub struct DevStack {
    pub edge_address: SocketAddr,
    pub aggregator_address: SocketAddr,
    pub session_token: String,
    stop_edge: watch::Sender<bool>,
    stop_aggregator: watch::Sender<bool>,
    aggregator_task: tokio::task::JoinHandle<anyhow::Result<()>>,
    edge_task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl DevStack {
    /// Stops the edge first (it delivers its last windows to the still running aggregator),
    /// then the aggregator (which commits what it queued).
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop_edge.send(true);
        let edge_stopped = self.edge_task.await.context("the edge task panicked");
        // Only now: the edge's last delivery needed the aggregator.
        let _ = self.stop_aggregator.send(true);
        edge_stopped??;
        self.aggregator_task
            .await
            .context("the aggregator task panicked")??;
        Ok(())
    }
}

async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// Starts the aggregator and the edge on `settings`.
pub async fn start(settings: &DevSettings) -> anyhow::Result<DevStack> {
    let edge_key = random_hex(32);
    let mut aggregator_config = AggregatorConfig::for_data_dir(settings.data_dir.clone());
    aggregator_config.listen = settings.aggregator_listen;
    aggregator_config.edge_keys = vec![EdgeKey {
        edge_id: DEV_EDGE_ID.to_owned(),
        secret: edge_key.as_bytes().to_vec(),
    }];
    let aggregator = Aggregator::start(aggregator_config)
        .await
        .context("starting the dev aggregator")?;
    let session_token = generate_token();
    let record = TokenRecord {
        id: DEV_TOKEN_ID.to_owned(),
        name: "hitcount-dev session".to_owned(),
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
    let edge_listener = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("binding the edge to {}", settings.listen))?;
    let edge_address = edge_listener
        .local_addr()
        .context("reading the edge's address")?;

    let (stop_aggregator, aggregator_stopped) = watch::channel(false);
    let (stop_edge, edge_stopped) = watch::channel(false);
    let aggregator_task = tokio::spawn(hitcount_aggregator::serve(
        aggregator_listener,
        aggregator,
        stopped(aggregator_stopped),
    ));
    let aggregator_url = format!("http://{aggregator_address}");
    prepare_aggregator(&aggregator_url, &session_token).await?;

    let mut edge_config = EdgeConfig::new(&aggregator_url, DEV_EDGE_ID, &edge_key);
    edge_config.listen = settings.listen;
    edge_config.window_ms = settings.window_ms;
    edge_config.demo = true;
    edge_config.count_http_clients = true;
    edge_config.aggregator_token = Some(session_token.clone());
    let edge = Edge::start(edge_config)?;
    let edge_task = tokio::spawn(hitcount_edge::serve(
        edge_listener,
        edge,
        stopped(edge_stopped),
    ));
    Ok(DevStack {
        edge_address,
        aggregator_address,
        session_token,
        stop_edge,
        stop_aggregator,
        aggregator_task,
        edge_task,
    })
}

/// Registers the pattern `*` and the banner's resources, through the REST API as a user would;
/// at every start, so a deleted one is back (409 means it exists already).
async fn prepare_aggregator(aggregator_url: &str, token: &str) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let requests = std::iter::once((
        "patterns",
        DEV_PATTERN,
        serde_json::json!({"pattern": DEV_PATTERN}),
    ))
    .chain(DEV_RESOURCES.iter().map(|resource_id| {
        (
            "resources",
            *resource_id,
            serde_json::json!({"name": resource_id, "resource_id": resource_id}),
        )
    }));
    for (collection, id, body) in requests {
        let response = client
            .post(format!("{aggregator_url}/{collection}"))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .with_context(|| format!("creating the dev {collection} {id}"))?;
        let status = response.status().as_u16();
        if status != 201 && status != 409 {
            anyhow::bail!("creating the dev {collection} {id}: the aggregator answered {status}");
        }
    }
    Ok(())
}

/// The banner: where things are, and the commands to try, each on a line of its own after its
/// label (the tests run every `curl` line exactly as printed, and find each in the README).
pub fn banner(
    edge: SocketAddr,
    aggregator: SocketAddr,
    data_dir: &std::path::Path,
    session_token: &str,
) -> String {
    format!(
        "hitcount dev: edge on http://{edge}, aggregator on http://{aggregator}, data in {data}

  the demo site: http://{edge}/demo   (counts its own page views, shows them live)
  the dashboard: http://{aggregator}/   (sign in with the session token below)
  send a hit:    curl -X POST http://{edge}/hit -d '{{\"resource_id\":\"home\"}}'
  read it back:  curl http://{edge}/hits/home
  the REST API:  curl -H 'Authorization: Bearer {session_token}' http://{aggregator}/resources

(every resource id is counted from its first hit; {resources} exist already.
Ctrl-C stops both and delivers the last window first.)",
        data = data_dir.display(),
        resources = DEV_RESOURCES.join(", "),
    )
}

/// What `hitcount-dev` does: start both, say where to send a hit and where to read it, run until
/// SIGINT or SIGTERM.
pub async fn run(settings: DevSettings) -> anyhow::Result<()> {
    // Listening before anything is printed: whoever reads the banner may stop us at once.
    let stopped = hitcount_process::shutdown_signal();
    let stack = start(&settings).await?;
    // Printed, not logged: this is the user's first screen, and the token is theirs to use.
    // Formatted first and printed in one write, so a reader sees it whole.
    println!(
        "{}",
        banner(
            stack.edge_address,
            stack.aggregator_address,
            &settings.data_dir,
            &stack.session_token
        )
    );
    stopped.await;
    tracing::info!("stopping the dev edge and aggregator");
    stack.stop().await
}
