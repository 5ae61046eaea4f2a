//! The hitcount edge host: serves the public beacon endpoints natively and counts in the
//! WebAssembly component (`edge-module/component`) running in wasmtime; every window it ships the
//! component's delta batches to the aggregator.
//!
//! [`Edge::start`] compiles the module and starts the shipper, [`Edge::router`] is the HTTP app,
//! [`serve`] runs both until a shutdown future resolves and then delivers what is left.

pub mod api;
pub mod config;
pub mod counters;
mod counting;
pub mod error;
pub mod module;
pub mod proxy;
mod ship;
pub mod spool;

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::module::{InstanceSettings, Instances};

use hitcount_process::{metrics_handle, now_ms};

#[derive(Debug)]
pub struct EdgeState {
    pub config: Config,
    pub instances: Instances,
    client: reqwest::Client,
    proxy_client: reqwest::Client,
    metrics: PrometheusHandle,
    /// With `--spool-dir`: where counted hits and sealed batches are made durable.
    spool: Option<spool::Spool>,
    /// Batches committed by an earlier run, sent before this run's.
    recovered: Mutex<VecDeque<spool::RecoveredBatch>>,
    hit_counters: counting::HitCounters,
}

impl EdgeState {
    /// Hits counted here that the aggregator has not acknowledged (windows and queues).
    pub fn unacknowledged_hits(&self) -> u64 {
        (0..self.instances.len())
            .filter_map(|index| {
                self.instances
                    .with(index, |counter, store| counter.call_status(store))
                    .ok()
            })
            .map(|status| status.window_hits + status.unacknowledged_hits)
            .sum::<u64>()
            + self.recovered_hits()
    }

    /// Hits in batches an earlier run committed and this one has not delivered yet.
    fn recovered_hits(&self) -> u64 {
        self.recovered
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .iter()
            .filter_map(|batch| hitcount_wire::DeltaBatch::decode(&batch.bytes).ok())
            .map(|batch| batch.hits())
            .sum()
    }

    pub fn unacknowledged_hits_for(&self, resource_id: &str) -> u64 {
        let resource_id = resource_id.to_owned();
        (0..self.instances.len())
            .filter_map(|index| {
                self.instances
                    .with(index, |counter, store| {
                        counter.call_unacknowledged_hits_for(store, &resource_id)
                    })
                    .ok()
            })
            .sum()
    }
}

#[derive(Debug)]
pub struct Edge {
    state: Arc<EdgeState>,
    stop: watch::Sender<bool>,
    shipper: JoinHandle<()>,
}

impl Edge {
    pub fn start(config: Config) -> anyhow::Result<Self> {
        let settings = InstanceSettings {
            edge_id: config.edge_id.clone(),
            visitor_secret: config.visitor_secret.clone(),
            window_entries_max: config.window_entries_max,
            pending_entries_max: config.pending_entries_max,
            journal: config.spool_dir.is_some(),
            count_http_clients: config.count_http_clients,
        };
        let recovery = match &config.spool_dir {
            Some(directory) => Some(
                spool::recover(directory)
                    .with_context(|| format!("reading the spool {}", directory.display()))?,
            ),
            None => None,
        };
        let instances = Instances::new(
            config.module.as_deref(),
            config.instances,
            settings,
            now_ms(),
        )?;
        let mut recovered = VecDeque::new();
        let spool = match (&config.spool_dir, recovery) {
            (Some(directory), Some(recovery)) => {
                let replayed = if recovery.journal.is_empty() {
                    Vec::new()
                } else {
                    vec![instances.replay(0, &recovery.journal, now_ms())?]
                };
                if recovery.journal_records > 0 || !recovery.batches.is_empty() {
                    tracing::info!(
                        hits = recovery.journal_records,
                        batches = recovery.batches.len(),
                        "recovered from the spool: hits counted again, batches to resend"
                    );
                }
                let spool =
                    spool::Spool::start(directory, &recovery, &replayed, config.spool_bytes_max)
                        .with_context(|| {
                            format!("starting the spool in {}", directory.display())
                        })?;
                recovered.extend(recovery.batches);
                Some(spool)
            }
            _ => None,
        };
        let mut builder = reqwest::Client::builder().pool_max_idle_per_host(config.instances);
        if let Some(pem) = &config.aggregator_ca_cert {
            let certificate =
                reqwest::Certificate::from_pem(pem).context("reading the aggregator's CA")?;
            builder = builder.tls_certs_only([certificate]);
        }
        let client = builder.build().context("creating the HTTP client")?;
        let proxy_client = proxy::client().context("creating the origin HTTP client")?;
        let state = Arc::new(EdgeState {
            config,
            instances,
            client,
            proxy_client,
            metrics: metrics_handle(),
            spool,
            recovered: Mutex::new(recovered),
            hit_counters: counting::HitCounters::new(),
        });
        hitcount_process::start_counters_at_zero(counters::COUNTERS);
        let (stop, stopped) = watch::channel(false);
        let shipper = tokio::spawn(ship::run(Arc::clone(&state), stopped));
        Ok(Self {
            state,
            stop,
            shipper,
        })
    }

    pub fn router(&self) -> Router {
        api::router(Arc::clone(&self.state))
    }

    pub fn state(&self) -> &Arc<EdgeState> {
        &self.state
    }

    /// Closes the windows and delivers what the aggregator will take within the shutdown limit.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.shipper.await;
    }
}

pub async fn serve(
    listener: TcpListener,
    edge: Edge,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    axum::serve(
        listener,
        edge.router()
            .into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
    .context("serving HTTP")?;
    tracing::info!("stopped accepting; delivering the last windows");
    edge.shutdown().await;
    Ok(())
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    // Before anything is announced, so that no signal finds the process without its listeners.
    let stopped = hitcount_process::shutdown_signal();
    let listen = config.listen;
    let edge = Edge::start(config)?;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    tracing::info!(address = %listener.local_addr().context("reading the bound address")?, "hitcount edge listening");
    serve(listener, edge, stopped).await
}
