//! Flags (each also an environment variable), validated into a [`Config`] before anything starts.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

use crate::module::INSTANCES_MAX;
use crate::proxy::{
    CountRoute, CountRoutes, ORIGIN_TIMEOUT_MS_DEFAULT, ORIGIN_TIMEOUT_MS_MAX, ProxyConfig,
    RouteError,
};
use crate::spool::SPOOL_BYTES_MAX_DEFAULT;

pub use hitcount_edge_core::{SECRET_BYTES_MIN, WINDOW_MS_DEFAULT, WINDOW_MS_MAX, WINDOW_MS_MIN};
/// Distinct (resource, minute) counters per window and instance.
pub const WINDOW_ENTRIES_MAX_DEFAULT: u32 = 16_384;
/// Distinct counters per instance waiting for the aggregator during an outage; past this,
/// beacons for new counters get 503.
pub const PENDING_ENTRIES_MAX_DEFAULT: u32 = 16_384;

#[derive(Debug, Parser)]
#[command(
    name = "hitcount-edge",
    version,
    about = "The hitcount edge: counts beacon hits in a WebAssembly module and ships deltas."
)]
pub struct Args {
    /// Address to serve beacons on.
    #[arg(long, env = "HITCOUNT_EDGE_LISTEN", default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,
    /// The aggregator's base URL.
    #[arg(
        long,
        env = "HITCOUNT_AGGREGATOR",
        default_value = "http://127.0.0.1:8080"
    )]
    pub aggregator: String,
    /// Trust only this CA (PEM) for an https:// aggregator: a private CA or a self-signed
    /// aggregator. The system's roots if absent.
    #[arg(long, env = "HITCOUNT_AGGREGATOR_CA_CERT")]
    pub aggregator_ca_cert: Option<PathBuf>,
    /// This edge's id (the aggregator knows its key by it).
    #[arg(long, env = "HITCOUNT_EDGE_ID", default_value = "edge-local")]
    pub edge_id: String,
    /// The secret the aggregator has for this edge id (`--edge-key` there).
    #[arg(long, env = "HITCOUNT_EDGE_KEY", hide_env_values = true)]
    pub edge_key: String,
    /// Keys the daily visitor salt; give every edge of a deployment the same one so visitors
    /// merge across edges. Random (per start) if absent.
    #[arg(long, env = "HITCOUNT_VISITOR_SECRET", hide_env_values = true)]
    pub visitor_secret: Option<String>,
    /// A `read` token for the aggregator, to serve read-your-writes `GET /hits/{id}`.
    #[arg(long, env = "HITCOUNT_AGGREGATOR_TOKEN", hide_env_values = true)]
    pub aggregator_token: Option<String>,
    /// Window length: hits are shipped this often, in ms.
    #[arg(long, env = "HITCOUNT_WINDOW_MS", default_value_t = WINDOW_MS_DEFAULT)]
    pub window_ms: u64,
    /// The counting component; the one built with this binary if absent.
    #[arg(long, env = "HITCOUNT_MODULE")]
    pub module: Option<PathBuf>,
    /// Module instances (each keeps its own window); the number of cores if absent.
    #[arg(long, env = "HITCOUNT_EDGE_INSTANCES")]
    pub instances: Option<usize>,
    /// Take the client address from the first X-Forwarded-For entry (only behind a proxy or CDN
    /// that sets it).
    #[arg(long, env = "HITCOUNT_TRUST_FORWARDED_FOR")]
    pub trust_forwarded_for: bool,
    /// Count hits from curl, wget and other HTTP libraries instead of refusing them as bots: for
    /// trying the edge out by hand (`hitcount-dev` turns it on), never in production.
    #[arg(long, env = "HITCOUNT_COUNT_HTTP_CLIENTS")]
    pub count_http_clients: bool,
    /// Proxy mode: forward every request that is not the edge's own to this origin
    /// (`http://host:port`).
    #[arg(long, env = "HITCOUNT_ORIGIN")]
    pub origin: Option<String>,
    /// With --origin: count GETs of a path as a resource, as PATTERN=RESOURCE, e.g. `/=home` or
    /// `/blog/{slug}=blog.{slug}`; repeat the flag, or comma-separate in the variable.
    #[arg(
        long = "count-route",
        env = "HITCOUNT_COUNT_ROUTES",
        value_delimiter = ',',
        requires = "origin"
    )]
    pub count_routes: Vec<String>,
    /// With --origin: how long the origin may take to start answering (status and headers), in
    /// ms; past it the browser gets 504. A body may stream for as long as it takes.
    #[arg(
        long,
        env = "HITCOUNT_ORIGIN_TIMEOUT_MS",
        default_value_t = ORIGIN_TIMEOUT_MS_DEFAULT,
        requires = "origin"
    )]
    pub origin_timeout_ms: u64,
    /// Make every counted hit durable here before answering, so a crash of the edge loses none.
    #[arg(long, env = "HITCOUNT_SPOOL_DIR")]
    pub spool_dir: Option<PathBuf>,
    /// The spool's size bound in bytes; past it, beacons get 503.
    #[arg(long, env = "HITCOUNT_SPOOL_BYTES_MAX", default_value_t = SPOOL_BYTES_MAX_DEFAULT)]
    pub spool_bytes_max: u64,
    #[arg(long, env = "HITCOUNT_WINDOW_ENTRIES_MAX", default_value_t = WINDOW_ENTRIES_MAX_DEFAULT)]
    pub window_entries_max: u32,
    #[arg(long, env = "HITCOUNT_PENDING_ENTRIES_MAX", default_value_t = PENDING_ENTRIES_MAX_DEFAULT)]
    pub pending_entries_max: u32,
    /// Traces (`--otlp-endpoint`): read by `main` before the rest of the configuration.
    #[command(flatten)]
    pub telemetry: hitcount_process::TelemetryArgs,
}

#[derive(Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub aggregator: String,
    /// PEM of the only CA trusted for the aggregator, if given.
    pub aggregator_ca_cert: Option<Vec<u8>>,
    pub edge_id: String,
    pub edge_key: Vec<u8>,
    pub visitor_secret: Vec<u8>,
    pub aggregator_token: Option<String>,
    pub window_ms: u64,
    pub module: Option<PathBuf>,
    pub instances: usize,
    pub trust_forwarded_for: bool,
    pub window_entries_max: u32,
    pub pending_entries_max: u32,
    pub spool_dir: Option<PathBuf>,
    pub spool_bytes_max: u64,
    /// Set by `--origin`: forward other requests there, counting `--count-route`s.
    pub proxy: Option<ProxyConfig>,
    /// Count curl and other HTTP libraries as visitors (`--count-http-clients`).
    pub count_http_clients: bool,
    /// Serve the demo single-page app at `/demo` (`hitcount-dev` turns it on).
    pub demo: bool,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Config")
            .field("listen", &self.listen)
            .field("aggregator", &self.aggregator)
            .field("edge_id", &self.edge_id)
            .field("window_ms", &self.window_ms)
            .field("instances", &self.instances)
            .field("spool_dir", &self.spool_dir)
            .field("count_http_clients", &self.count_http_clients)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--edge-id: {0}")]
    EdgeId(String),
    #[error("--edge-key must be at least {SECRET_BYTES_MIN} characters")]
    EdgeKey,
    #[error("--visitor-secret must be at least {SECRET_BYTES_MIN} characters")]
    VisitorSecret,
    #[error("--aggregator must be an http:// or https:// URL, got {0:?}")]
    Aggregator(String),
    #[error("--aggregator-ca-cert {path}: {reason}")]
    CaCert { path: String, reason: String },
    #[error("--origin must be an http:// or https:// URL, got {0:?}")]
    Origin(String),
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error("--origin-timeout-ms must be between 1 and {ORIGIN_TIMEOUT_MS_MAX}")]
    OriginTimeout,
    #[error("--window-ms must be between {WINDOW_MS_MIN} and {WINDOW_MS_MAX}")]
    Window,
    #[error("--instances must be between 1 and {INSTANCES_MAX}")]
    Instances,
    #[error("--window-entries-max and --pending-entries-max must be between 1 and {max}")]
    Entries { max: usize },
}

fn random_secret() -> Vec<u8> {
    let mut secret = vec![0u8; 32];
    getrandom::fill(&mut secret).unwrap_or_else(|error| panic!("OS random source failed: {error}"));
    secret
}

impl Config {
    /// Defaults for tests and embedding.
    pub fn new(aggregator: &str, edge_id: &str, edge_key: &str) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            aggregator: aggregator.trim_end_matches('/').to_owned(),
            aggregator_ca_cert: None,
            edge_id: edge_id.to_owned(),
            edge_key: edge_key.as_bytes().to_vec(),
            visitor_secret: random_secret(),
            aggregator_token: None,
            window_ms: WINDOW_MS_DEFAULT,
            module: None,
            instances: 2,
            trust_forwarded_for: false,
            window_entries_max: WINDOW_ENTRIES_MAX_DEFAULT,
            pending_entries_max: PENDING_ENTRIES_MAX_DEFAULT,
            spool_dir: None,
            spool_bytes_max: SPOOL_BYTES_MAX_DEFAULT,
            proxy: None,
            count_http_clients: false,
            demo: false,
        }
    }
}

fn is_web_url(url: &str) -> bool {
    url.starts_with("http://") || url.starts_with("https://")
}

/// The visitor secret as given (at least `SECRET_BYTES_MIN` bytes), or a random one, which
/// keeps visitors from merging across edges or restarts (said in a warning).
fn visitor_secret(given: Option<String>) -> Result<Vec<u8>, ConfigError> {
    match given {
        Some(secret) if secret.len() < SECRET_BYTES_MIN => Err(ConfigError::VisitorSecret),
        Some(secret) => Ok(secret.into_bytes()),
        None => {
            tracing::warn!("no --visitor-secret: visitors will not merge across edges or restarts");
            Ok(random_secret())
        }
    }
}

/// The PEM file at `path`, read and checked to hold a certificate.
fn ca_cert(path: &std::path::Path) -> Result<Vec<u8>, ConfigError> {
    let failed = |reason: String| ConfigError::CaCert {
        path: path.display().to_string(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|error| failed(error.to_string()))?;
    reqwest::Certificate::from_pem(&pem).map_err(|error| failed(error.to_string()))?;
    Ok(pem)
}

/// Proxy mode's settings: the origin, the routes counted, the origin's timeout.
fn proxy_config(
    origin: String,
    count_routes: &[String],
    origin_timeout_ms: u64,
) -> Result<ProxyConfig, ConfigError> {
    if !is_web_url(&origin) {
        return Err(ConfigError::Origin(origin));
    }
    let routes = count_routes
        .iter()
        .map(|route| CountRoute::parse(route))
        .collect::<Result<Vec<_>, _>>()?;
    if !(1..=ORIGIN_TIMEOUT_MS_MAX).contains(&origin_timeout_ms) {
        return Err(ConfigError::OriginTimeout);
    }
    Ok(ProxyConfig {
        origin: origin.trim_end_matches('/').to_owned(),
        routes: CountRoutes::new(&routes)?,
        origin_timeout_ms,
    })
}

/// Component instances: as given, or one per core; within `INSTANCES_MAX`.
fn instances(given: Option<usize>) -> Result<usize, ConfigError> {
    let instances = given.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(usize::from)
            .unwrap_or(1)
    });
    if !(1..=INSTANCES_MAX).contains(&instances) {
        return Err(ConfigError::Instances);
    }
    Ok(instances)
}

impl TryFrom<Args> for Config {
    type Error = ConfigError;

    fn try_from(args: Args) -> Result<Self, ConfigError> {
        hitcount_wire::validate_edge_id(&args.edge_id)
            .map_err(|error| ConfigError::EdgeId(error.to_string()))?;
        if args.edge_key.len() < SECRET_BYTES_MIN {
            return Err(ConfigError::EdgeKey);
        }
        let edge_key = args.edge_key.into_bytes();
        let visitor_secret = visitor_secret(args.visitor_secret)?;
        if !is_web_url(&args.aggregator) {
            return Err(ConfigError::Aggregator(args.aggregator));
        }
        let aggregator_ca_cert = args
            .aggregator_ca_cert
            .as_deref()
            .map(ca_cert)
            .transpose()?;
        let proxy = match args.origin {
            None => None,
            Some(origin) => Some(proxy_config(
                origin,
                &args.count_routes,
                args.origin_timeout_ms,
            )?),
        };
        if !(WINDOW_MS_MIN..=WINDOW_MS_MAX).contains(&args.window_ms) {
            return Err(ConfigError::Window);
        }
        let instances = instances(args.instances)?;
        let max = hitcount_wire::BATCH_ENTRIES_MAX;
        for entries in [args.window_entries_max, args.pending_entries_max] {
            if entries == 0 || entries as usize > max {
                return Err(ConfigError::Entries { max });
            }
        }
        Ok(Self {
            listen: args.listen,
            aggregator: args.aggregator.trim_end_matches('/').to_owned(),
            aggregator_ca_cert,
            edge_id: args.edge_id,
            edge_key,
            visitor_secret,
            aggregator_token: args.aggregator_token,
            window_ms: args.window_ms,
            module: args.module,
            instances,
            trust_forwarded_for: args.trust_forwarded_for,
            window_entries_max: args.window_entries_max,
            pending_entries_max: args.pending_entries_max,
            spool_dir: args.spool_dir,
            spool_bytes_max: args.spool_bytes_max,
            proxy,
            count_http_clients: args.count_http_clients,
            demo: false,
        })
    }
}
