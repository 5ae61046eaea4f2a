//! What both hitcount binaries (`hitcount-aggregator`, `hitcount-edge`) and the `hitcount-dev`
//! composition need from the process they run in: the shutdown signals, the log and trace setup,
//! the clock and the Prometheus recorder. It is its own crate so that neither binary crate depends on
//! the other: the edge links no store code.

use std::future::Future;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

mod telemetry;
pub use telemetry::{
    OTLP_EXPORT_TIMEOUT_MS, OTLP_TRACES_PATH, Telemetry, TelemetryArgs, TelemetryError,
    continue_trace, init_tracing, inject_trace_context, traces_on,
};

/// Histogram buckets (seconds) for request, commit and delivery latencies.
pub const LATENCY_BUCKETS_S: &[f64] = &[
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Milliseconds since the Unix epoch by the system clock. The counting code takes time as a
/// parameter; this is where the binaries read it.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

/// The process-wide Prometheus recorder, installed on first use (tests start many servers in one
/// process, and a recorder can be installed only once).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets(LATENCY_BUCKETS_S)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!(
                    "another metrics recorder was installed first; /metrics will be empty"
                );
            }
            handle
        })
        .clone()
}

/// Resolves on SIGINT or SIGTERM. The listeners are registered when this is called, not when the
/// future is first polled: a signal that arrives while the server is still starting (an
/// orchestrator stopping a fresh pod, a test stopping a server it just used) must mean a graceful
/// shutdown, not the default action, which kills the process before it commits what it
/// acknowledged. Call it first thing in `run`, before serving.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let listeners = {
        use tokio::signal::unix::{SignalKind, signal};
        [SignalKind::interrupt(), SignalKind::terminate()].map(|kind| match signal(kind) {
            Ok(listener) => Some(listener),
            Err(error) => {
                tracing::error!(%error, ?kind, "cannot listen for a shutdown signal");
                None
            }
        })
    };
    async move {
        #[cfg(unix)]
        {
            let [interrupt, terminate] = listeners;
            let wait = |listener: Option<tokio::signal::unix::Signal>| async move {
                match listener {
                    Some(mut listener) => {
                        listener.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = wait(interrupt) => {},
                () = wait(terminate) => {},
            }
        }
        #[cfg(not(unix))]
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
        tracing::info!("shutdown signal received");
    }
}

/// Starts each counter at zero (each binary's `counters::COUNTERS`): Prometheus then has a series
/// for it from the first scrape, so `rate()` and alert rules work before the first event.
pub fn start_counters_at_zero(names: &'static [&'static str]) {
    for name in names {
        metrics::counter!(*name).increment(0);
    }
}
