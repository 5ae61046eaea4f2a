//! The hitcount aggregator as a library: [`Aggregator::start`] opens the store and starts the
//! background tasks, [`app`] is the router (tests drive it in-process or on port 0), and [`run`]
//! is what the binary does.

pub mod api;
pub mod auth;
pub mod catalog;
pub mod config;
pub mod counters;
pub mod direct;
pub mod error;
pub mod export;
pub mod import;
pub mod ingest;
pub mod intake;
pub mod merge;
pub mod oidc;
pub mod patterns;
pub mod query;
pub mod rate_limit;
pub mod state;
pub mod stats;
pub use hitcount_store as store;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::auth::{BOOTSTRAP_TOKEN_ID, EdgeKeyRegistry, EdgeSecret, Scope, TokenRegistry};
use crate::catalog::Catalog;
use crate::config::Config;
use crate::ingest::Ingestor;
use crate::merge::Merger;
use crate::oidc::OidcVerifier;
use crate::rate_limit::RateLimits;
use crate::state::{AppState, SharedState};
use crate::store::sealed::{SealingKey, SecretKeys};
use crate::store::{
    CosmosSettings, CosmosStore, DurableStore, EmbeddedStore, PgStore, ResumedStream, Store,
    TokenRecord,
};

/// How often the maintenance task runs: metrics histograms compacted, idle rate-limit buckets
/// forgotten, the hot tier kept in step (and, every few ticks, the slower jobs below).
const MAINTENANCE_INTERVAL_MS: u64 = 1_000;
/// How often (in maintenance ticks, one a second) pending sketches are folded into their cells
/// and closed hours and days rolled up.
/// Folding rewrites each touched cell's sketch (up to 12 KiB, dense), and on PostgreSQL holds the
/// cells' row locks, which merges wait for: every second, the scale benchmark found merges
/// waiting on compaction most of the time. Queries merge pending sketches anyway, and a group's
/// pending sketch covers one merge interval, so it stays small.
const COMPACTION_TICKS: u64 = 10;
/// How often (in maintenance ticks, one a second) the resource cache is reloaded from the store,
/// so resources created or deleted through another aggregator on the same database appear here.
const RESOURCE_RELOAD_TICKS: u64 = 5;
/// The clock, re-exported: the aggregator's modules and tests read time through this one function.
pub use hitcount_process::now_ms;
use hitcount_process::{metrics_handle, shutdown_signal};

/// A started aggregator: store open, caches loaded, background tasks running.
#[derive(Debug)]
pub struct Aggregator {
    state: SharedState,
    ingest_task: JoinHandle<()>,
    merge_task: JoinHandle<()>,
    maintenance_task: JoinHandle<()>,
    /// Tells the maintenance task to stop after the tick it is in.
    maintenance_stop: tokio::sync::watch::Sender<bool>,
    /// With the durable inbox, the task that folds it.
    fold_task: Option<JoinHandle<()>>,
    generated_admin_token: Option<String>,
}

impl Aggregator {
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        let store = open_store(&config).await?;
        let generated_admin_token =
            bootstrap_admin_token(&store, config.admin_token.as_deref()).await?;
        let tokens = TokenRegistry::default();
        tokens.replace_all(store.tokens().await.context("loading tokens")?);
        let edge_keys = load_edge_keys(&store, &config.edge_keys, now_ms()).await?;
        let catalog = Catalog::new(
            store.resources().await.context("loading resources")?,
            store.patterns().await.context("loading patterns")?,
        );
        let (ingestor, ingest_task) = Ingestor::start(
            store.clone(),
            config.ack,
            Duration::from_millis(config.flush_interval_ms),
        );
        let (merger, merge_task) = Merger::start(
            store.clone(),
            Duration::from_millis(config.merge_interval_ms),
        );
        let oidc = config
            .oidc
            .clone()
            .map(OidcVerifier::new)
            .transpose()
            .context("setting up OpenID Connect")?;
        let state = Arc::new(AppState {
            limits: RateLimits::new(
                config.rate_limit_ip_per_second,
                config.rate_limit_token_per_second,
            ),
            config,
            store,
            ingestor,
            merger,
            catalog,
            oidc,
            tokens,
            edge_keys,
            metrics: metrics_handle(),
        });
        hitcount_process::start_counters_at_zero(counters::COUNTERS);
        let (maintenance_stop, stopped) = tokio::sync::watch::channel(false);
        let maintenance_task = tokio::spawn(maintain(Arc::clone(&state), stopped));
        let fold_task = (state.config.fold_interval_ms > 0).then(|| {
            tokio::spawn(fold(
                state.store.clone(),
                Duration::from_millis(state.config.fold_interval_ms),
            ))
        });
        Ok(Self {
            state,
            ingest_task,
            merge_task,
            maintenance_task,
            maintenance_stop,
            fold_task,
            generated_admin_token,
        })
    }

    pub fn router(&self) -> Router {
        app(Arc::clone(&self.state))
    }

    pub fn state(&self) -> &SharedState {
        &self.state
    }

    /// The admin token generated at this start, if none existed and none was configured.
    pub fn generated_admin_token(&self) -> Option<&str> {
        self.generated_admin_token.as_deref()
    }

    /// Commits every queued hit and delta batch, then stops the background tasks.
    pub async fn shutdown(self) {
        self.state.ingestor.shutdown().await;
        let _ = self.ingest_task.await;
        self.state.merger.shutdown().await;
        let _ = self.merge_task.await;
        // After the last write: the other aggregators need not rebuild for this one.
        self.state.store.leave_hot_tier().await;
        // Stopped first, so that its own refusal flush never runs beside the last one below.
        // Told to stop after its tick rather than aborted: an aborted store call would go on
        // in its blocking thread, and a retention delete could land after shutdown.
        let _ = self.maintenance_stop.send(true);
        let _ = self.maintenance_task.await;
        if let Some(task) = self.fold_task {
            task.abort();
            let _ = task.await;
            // Not needed for durability (the inbox is durable), but a clean stop leaves the
            // counters complete for whoever reads the database next.
            if let Err(error) = self.state.store.fold_inbox(now_ms()).await {
                tracing::warn!(%error, "the last inbox fold failed; the next start folds it");
            }
        }
        self.state.catalog.flush_refusals(&self.state.store).await;
    }
}

/// Stores the configured admin token's digest, or makes one if no admin token exists yet.
async fn bootstrap_admin_token(
    store: &Store,
    configured: Option<&str>,
) -> anyhow::Result<Option<String>> {
    let existing = store.tokens().await.context("reading tokens")?;
    let token = match configured {
        Some(token) => {
            let digest = auth::token_digest(token);
            if existing
                .iter()
                .any(|record| record.id == BOOTSTRAP_TOKEN_ID && record.token_sha256 == digest)
            {
                return Ok(None);
            }
            token.to_owned()
        }
        None if existing
            .iter()
            .any(|record| record.id == BOOTSTRAP_TOKEN_ID) =>
        {
            return Ok(None);
        }
        None => auth::generate_token(),
    };
    store
        .put_token(TokenRecord {
            id: BOOTSTRAP_TOKEN_ID.to_owned(),
            name: "bootstrap admin token".to_owned(),
            token_sha256: auth::token_digest(&token),
            scopes: vec![Scope::Admin.as_str().to_owned()],
            created_at_ms: now_ms(),
        })
        .await
        .context("storing the admin token")?;
    Ok(configured.is_none().then_some(token))
}

/// Folds the durable inbox's closed minutes every `interval` (a fold that finds more than one
/// transaction's worth runs on at once). Any aggregator's rows are folded once their writer is
/// late with them, so a killed one's rows are too.
async fn fold(store: Store, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let started = std::time::Instant::now();
        match store.fold_closed(now_ms()).await {
            Ok(rows) => {
                metrics::counter!("hitcount_inbox_folded_rows_total").increment(rows);
                metrics::histogram!("hitcount_inbox_fold_seconds")
                    .record(started.elapsed().as_secs_f64());
            }
            Err(error) => {
                metrics::counter!("hitcount_inbox_fold_failures_total").increment(1);
                tracing::warn!(%error, "folding the inbox failed; will retry");
            }
        }
        metrics::gauge!("hitcount_inbox_unfolded_entries").set(store.unfolded_entries() as f64);
    }
}

async fn maintain(state: SharedState, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(MAINTENANCE_INTERVAL_MS));
    let retention_every = (state.config.retention_interval_s * 1_000)
        .div_ceil(MAINTENANCE_INTERVAL_MS)
        .max(1);
    let mut ticks: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        if let Err(error) = state.store.repair_hot_tier(now_ms()).await {
            tracing::warn!(%error, "the hot tier could not be rebuilt; will retry");
        }
        if ticks.is_multiple_of(COMPACTION_TICKS) {
            match state.store.compact().await {
                Ok(folded) => {
                    metrics::counter!("hitcount_sketches_compacted_total").increment(folded);
                }
                Err(error) => tracing::warn!(%error, "sketch compaction failed; will retry"),
            }
            match state.store.roll_up(now_ms()).await {
                Ok(cells) => metrics::counter!("hitcount_rollup_cells_total").increment(cells),
                Err(error) => {
                    tracing::warn!(%error, "rolling hours and days up failed; will retry")
                }
            }
        }
        state.metrics.run_upkeep();
        state.limits.forget_idle();
        // Other aggregators on the same database create and delete resources too.
        if ticks.is_multiple_of(RESOURCE_RELOAD_TICKS) {
            reload_credentials(&state).await;
            // The time before the read, so the grace for resources created meanwhile holds.
            let reload_started_ms = now_ms();
            state
                .catalog
                .reload_resources(&state.store, reload_started_ms)
                .await;
        }
        state
            .catalog
            .maintain_patterns(&state.store, ticks.is_multiple_of(RESOURCE_RELOAD_TICKS))
            .await;
        if ticks.is_multiple_of(retention_every) {
            match state.store.prune(now_ms()).await {
                Ok(pruned) => {
                    metrics::counter!("hitcount_retention_rows_deleted_total")
                        .increment(pruned.count_rows);
                    if pruned.count_rows + pruned.dedupe_rows > 0 {
                        tracing::info!(
                            count_rows = pruned.count_rows,
                            dedupe_rows = pruned.dedupe_rows,
                            "retention pruned"
                        );
                    }
                }
                Err(error) => tracing::warn!(%error, "retention job failed; will retry"),
            }
        }
        ticks += 1;
    }
}

/// Tokens and edge keys created or revoked through another aggregator on the same database take
/// effect here within a reload period.
async fn reload_credentials(state: &SharedState) {
    let token_changes = state.tokens.changes();
    match state.store.tokens().await {
        Ok(records) => {
            state.tokens.replace_unless_changed(records, token_changes);
        }
        Err(error) => tracing::warn!(%error, "reloading tokens failed; will retry"),
    }
    // Also seals with the current key what an aggregator still on the old key (or on none)
    // stored meanwhile, so the previous key can be dropped after a rolling rotation.
    let key_changes = state.edge_keys.changes();
    match state.store.edge_keys().await {
        Ok(stored) => {
            state
                .edge_keys
                .replace_stored_unless_changed(stored, key_changes);
        }
        Err(error) => tracing::warn!(%error, "reloading edge keys failed; will retry"),
    }
}

/// The HTTP application.
pub fn app(state: SharedState) -> Router {
    api::router(state)
}

/// Serves `aggregator` on `listener` until `shutdown` resolves, then commits queued hits.
pub async fn serve(
    listener: TcpListener,
    aggregator: Aggregator,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let router = aggregator.router();
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
    .context("serving HTTP")?;
    tracing::info!("stopped accepting; committing queued hits");
    aggregator.shutdown().await;
    Ok(())
}

/// What the binary does: start, listen, serve until SIGINT or SIGTERM, flush, exit; or with
/// `--migrate-only`, migrate the store and exit.
pub async fn run(config: Config) -> anyhow::Result<()> {
    if config.migrate_only {
        open_backend(&config, BackendUse::Migrate).await?;
        tracing::info!("the store's schema is up to date; exiting (--migrate-only)");
        return Ok(());
    }
    // First of all, so that no signal finds the process without its listeners.
    let stopped = shutdown_signal();
    let listen = config.listen;
    let aggregator = Aggregator::start(config).await?;
    if let Some(token) = aggregator.generated_admin_token() {
        // Printed, not logged: it is shown once and must not end up in log storage.
        println!("hitcount: generated an admin token (shown only now, store it): {token}");
    }
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    tracing::info!(address = %listener.local_addr().context("reading the bound address")?, "hitcount aggregator listening");
    serve(listener, aggregator, stopped).await
}

/// The store the configuration names: the embedded store, PostgreSQL or Cosmos DB, with the
/// durable inbox if asked (Cosmos DB always has it), and the hot tier if asked. What an earlier
/// run left unfolded is folded first, with the inbox or without it.
async fn open_store(config: &Config) -> anyhow::Result<Store> {
    let backend = open_backend(config, BackendUse::Serve).await?;
    let store = Store::new(backend).with_secret_keys(secret_keys(config)?);
    // Rows a killed process left unfolded are in no overlay: fold them before serving, so that
    // this process answers them at once (also when it runs the direct shape: a run with the
    // inbox may have left them).
    store
        .fold_inbox(now_ms())
        .await
        .context("folding the inbox rows left by an earlier run")?;
    // Before retention runs: it keeps the minutes and hours that count for buckets not rolled
    // up, so a store stopped for days has them rolled up now.
    store
        .roll_up(now_ms())
        .await
        .context("rolling hours and days up")?;
    if config.redis_url.is_some() {
        // Both of rustls's crypto providers are linked (the Cosmos DB client brings aws-lc-rs,
        // sqlx ring), so rustls cannot pick one for Redis's TLS (`rediss://`) by itself: the
        // first `rediss://` connection would panic. An error means one is installed already.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    }
    Ok(match &config.redis_url {
        Some(url) if config.redis_cluster => {
            let nodes: Vec<String> = url.split(',').map(str::to_owned).collect();
            store.with_hot_tier(
                crate::store::hot::HotTier::connect_cluster(&nodes, &config.redis_prefix)
                    .await
                    .context("preparing the Redis Cluster client")?,
            )
        }
        Some(url) => store.with_hot_tier(
            crate::store::hot::HotTier::connect(url, &config.redis_prefix)
                .await
                .context("connecting to Redis")?,
        ),
        None => store,
    })
}

/// The keys of `--secret-key-file` and `--secret-key-file-previous`, read from their files.
fn secret_keys(config: &Config) -> anyhow::Result<SecretKeys> {
    let read = |path: &Option<std::path::PathBuf>, flag: &str| -> anyhow::Result<_> {
        let Some(path) = path else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading {flag} {}", path.display()))?;
        let key = SealingKey::from_file_text(&text)
            .with_context(|| format!("{flag} {}", path.display()))?;
        Ok(Some(key))
    };
    Ok(SecretKeys {
        current: read(&config.secret_key_file, "--secret-key-file")?,
        previous: read(
            &config.secret_key_file_previous,
            "--secret-key-file-previous",
        )?,
    })
}

/// What a backend is opened for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BackendUse {
    Serve,
    /// Only its schema brought up to date: no fold stream is taken on Cosmos DB.
    Migrate,
}

/// The durable backend the configuration names, its schema migrated (or on Cosmos DB its
/// database and containers created).
async fn open_backend(
    config: &Config,
    used_for: BackendUse,
) -> anyhow::Result<Arc<dyn DurableStore>> {
    let inbox = config.fold_interval_ms > 0;
    Ok(match (&config.database_url, &config.cosmos) {
        (_, Some(cosmos)) => {
            let key = std::fs::read_to_string(&cosmos.key_file).with_context(|| {
                format!(
                    "reading the Cosmos DB key from {}",
                    cosmos.key_file.display()
                )
            })?;
            let settings = CosmosSettings {
                endpoint: cosmos.endpoint.clone(),
                key: key.trim().to_owned(),
                database: cosmos.database.clone(),
                stream: match used_for {
                    BackendUse::Serve => cosmos_stream(&config.data_dir)?,
                    BackendUse::Migrate => None,
                },
            };
            Arc::new(
                CosmosStore::connect(&settings)
                    .await
                    .context("connecting to Cosmos DB and creating its containers")?,
            )
        }
        (Some(url), None) => {
            let store = PgStore::connect(url)
                .await
                .context("connecting to PostgreSQL and migrating its schema")?;
            Arc::new(if inbox { store.with_inbox() } else { store })
        }
        (None, None) => {
            let store = EmbeddedStore::open(&config.data_dir)
                .with_context(|| format!("opening the store in {}", config.data_dir.display()))?;
            Arc::new(if inbox { store.with_inbox() } else { store })
        }
    })
}

/// This aggregator's Cosmos DB fold stream, named in its data directory (`cosmos-stream`): a
/// restart resumes it and folds what the previous run left at once, instead of leaving it for
/// another process to take over once its heartbeat is old. The file stays locked while the
/// store lives; a second aggregator on the same data directory gets a new stream (`None`).
fn cosmos_stream(data_dir: &std::path::Path) -> anyhow::Result<Option<ResumedStream>> {
    use std::io::{Read, Seek, Write};
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating the data directory {}", data_dir.display()))?;
    let path = data_dir.join(COSMOS_STREAM_FILE);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            tracing::warn!(path = %path.display(), "another aggregator holds this data directory's fold stream: this one takes a new stream");
            return Ok(None);
        }
        Err(std::fs::TryLockError::Error(error)) => {
            return Err(error).with_context(|| format!("locking {}", path.display()));
        }
    }
    let mut id = String::new();
    file.read_to_string(&mut id)
        .with_context(|| format!("reading {}", path.display()))?;
    let mut id = id.trim().to_owned();
    if id.is_empty() {
        id = crate::store::random_hex(8);
        file.rewind()
            .and_then(|()| file.write_all(id.as_bytes()))
            .and_then(|()| file.sync_all())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(Some(ResumedStream {
        id,
        lock: Arc::new(file),
    }))
}

/// The file in the data directory naming this aggregator's Cosmos DB fold stream.
const COSMOS_STREAM_FILE: &str = "cosmos-stream";

/// The edge keys stored through the API, then those of `--edge-key`, which win over a stored key
/// of the same edge.
async fn load_edge_keys(
    store: &Store,
    configured: &[config::EdgeKey],
    started_ms: u64,
) -> anyhow::Result<EdgeKeyRegistry> {
    let edge_keys = EdgeKeyRegistry::default();
    let stored = store
        .edge_keys()
        .await
        .context("loading the stored edge keys (opened with --secret-key-file)")?;
    for (edge_id, secret, created_at_ms) in stored {
        edge_keys.insert(
            edge_id,
            EdgeSecret {
                secret,
                configured: false,
                created_at_ms,
            },
        );
    }
    for key in configured {
        edge_keys.insert(
            key.edge_id.clone(),
            EdgeSecret {
                secret: key.secret.clone(),
                configured: true,
                created_at_ms: started_ms,
            },
        );
    }
    Ok(edge_keys)
}
