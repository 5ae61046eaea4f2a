//! Command-line flags (each also an environment variable), parsed and then validated into a
//! [`Config`] before anything starts, so a bad flag fails at once with a message naming it.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};

use crate::merge::MERGE_INTERVAL_MS_MAX;
use crate::oidc::{DashboardClient, OidcSettings};
use crate::store::inbox::FOLD_INTERVAL_MS_MAX;

/// Requests per second allowed per client address and per token by default.
pub const RATE_LIMIT_PER_SECOND_DEFAULT: u32 = 1_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AckMode {
    /// Answer `POST /hits` with 202 once the hits are committed to the store.
    Durable,
    /// Answer as soon as the hits are queued; a crash can lose up to one commit's worth.
    Fast,
}

#[derive(Debug, Parser)]
#[command(
    name = "hitcount-aggregator",
    version,
    about = "The hitcount aggregator: merges edge deltas and hits, serves the query API."
)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, env = "HITCOUNT_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Directory of the embedded store (created if missing).
    #[arg(long, env = "HITCOUNT_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Admin bearer token. If absent on first start, one is generated and printed once.
    #[arg(long, env = "HITCOUNT_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// An edge signing key as ID=SECRET; repeat the flag, or comma-separate in the variable.
    #[arg(
        long = "edge-key",
        env = "HITCOUNT_EDGE_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub edge_keys: Vec<String>,

    /// When `POST /hits` answers 202: after commit (durable) or after queueing (fast).
    #[arg(long, env = "HITCOUNT_ACK", value_enum, default_value = "durable")]
    pub ack: AckMode,

    /// With --ack fast: how long hits are gathered before each commit, in ms (the most a crash
    /// can lose).
    #[arg(long, env = "HITCOUNT_FLUSH_INTERVAL_MS", default_value_t = FLUSH_INTERVAL_MS_DEFAULT)]
    pub flush_interval_ms: u64,

    /// How long the first delta batch of a group waits for others before they are merged and
    /// committed together, in ms (0: only what queued during the previous commit).
    #[arg(long, env = "HITCOUNT_MERGE_INTERVAL_MS", default_value_t = crate::merge::MERGE_INTERVAL_MS_DEFAULT)]
    pub merge_interval_ms: u64,

    /// The durable inbox: above 0, a group commit appends its merged minute counts to an inbox
    /// and is acknowledged then, and every this many ms the minutes that closed are folded into
    /// the minute, hour and day counters (0: every group commit writes all counters itself).
    /// Durable writes then follow the distinct (resource, minute) counters, not the hits.
    /// Default: 1000 on every store (Cosmos DB always has the inbox: 0 means 1000 there).
    #[arg(long, env = "HITCOUNT_FOLD_INTERVAL_MS")]
    pub fold_interval_ms: Option<u64>,

    /// Requests per second per client address (0 disables the limit). `--rate-limit-ip` is the
    /// name of earlier releases.
    #[arg(long, alias = "rate-limit-ip", env = "HITCOUNT_RATE_LIMIT_IP_PER_SECOND", default_value_t = RATE_LIMIT_PER_SECOND_DEFAULT)]
    pub rate_limit_ip_per_second: u32,

    /// Requests per second per API token (0 disables the limit). `--rate-limit-token` is the
    /// name of earlier releases.
    #[arg(long, alias = "rate-limit-token", env = "HITCOUNT_RATE_LIMIT_TOKEN_PER_SECOND", default_value_t = RATE_LIMIT_PER_SECOND_DEFAULT)]
    pub rate_limit_token_per_second: u32,

    /// PostgreSQL (or Citus) for counts, resources, tokens and keys, e.g.
    /// `postgres://user@host/db`; the embedded store in --data-dir if absent.
    #[arg(long, env = "HITCOUNT_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Azure Cosmos DB for NoSQL for counts, resources, tokens and keys instead of PostgreSQL or
    /// the embedded store: the account's endpoint, e.g.
    /// `https://ACCOUNT.documents.azure.com:443/` (needs --cosmos-key-file).
    #[arg(long, env = "HITCOUNT_COSMOS_ENDPOINT")]
    pub cosmos_endpoint: Option<String>,

    /// A file holding the Cosmos DB account's key (primary or secondary), read at start.
    #[arg(long, env = "HITCOUNT_COSMOS_KEY_FILE")]
    pub cosmos_key_file: Option<PathBuf>,

    /// The database in the Cosmos DB account (created, with its containers, if missing).
    #[arg(long, env = "HITCOUNT_COSMOS_DATABASE", default_value = "hitcount")]
    pub cosmos_database: String,

    /// Redis for recent counts (a cache in front of PostgreSQL or Cosmos DB; needs --database-url
    /// or --cosmos-endpoint).
    #[arg(long, env = "HITCOUNT_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// --redis-url names Redis Cluster seed nodes (comma-separated `redis://` URLs).
    #[arg(long, env = "HITCOUNT_REDIS_CLUSTER")]
    pub redis_cluster: bool,

    /// Prefix of the hot tier's Redis keys (several deployments can share one Redis).
    #[arg(long, env = "HITCOUNT_REDIS_PREFIX", default_value = "hitcount")]
    pub redis_prefix: String,

    /// Seconds between runs of the retention job.
    #[arg(long, env = "HITCOUNT_RETENTION_INTERVAL_S", default_value_t = 60)]
    pub retention_interval_s: u64,

    /// Bring the store's schema up to date (PostgreSQL migrations, Cosmos DB containers, the
    /// embedded store's tables), then exit without serving: for a deployment's migration job,
    /// run once before a new release takes traffic.
    #[arg(long, env = "HITCOUNT_MIGRATE_ONLY")]
    pub migrate_only: bool,

    /// Accept bearer JWTs from this OpenID Connect issuer (its discovery document gives the
    /// keys), exactly as its tokens' `iss` names it; https://, or http:// on this machine only.
    #[arg(long, env = "HITCOUNT_OIDC_ISSUER", requires = "oidc_audience")]
    pub oidc_issuer: Option<String>,
    /// The audience (`aud`) the issuer's tokens for hitcount carry (Entra ID: the app's
    /// Application ID URI or client id).
    #[arg(long, env = "HITCOUNT_OIDC_AUDIENCE", requires = "oidc_issuer")]
    pub oidc_audience: Option<String>,
    /// The claim holding the caller's roles (`hitcount.read`, ...); a dotted path reaches into
    /// objects, e.g. `realm_access.roles` for Keycloak's realm roles.
    #[arg(long, env = "HITCOUNT_OIDC_ROLES_CLAIM", default_value = "roles")]
    pub oidc_roles_claim: String,
    /// The dashboard signs in through the issuer as this client: authorization code with PKCE,
    /// a public client whose redirect URI is the dashboard's address (`https://HOST/`).
    #[arg(long, env = "HITCOUNT_OIDC_CLIENT_ID", requires = "oidc_issuer")]
    pub oidc_client_id: Option<String>,
    /// The scopes the dashboard asks for, space-separated (Entra ID also needs the API's, e.g.
    /// `openid api://hitcount/.default`).
    #[arg(long, env = "HITCOUNT_OIDC_SCOPE", default_value = "openid")]
    pub oidc_scope: String,
    /// A file holding 32 random bytes in base64 (`openssl rand -base64 32`) that encrypt the
    /// edge secrets stored through the API; read at start.
    #[arg(long, env = "HITCOUNT_SECRET_KEY_FILE")]
    pub secret_key_file: Option<PathBuf>,
    /// While rotating: the key before --secret-key-file, whose secrets are opened and encrypted
    /// again with the new key at start.
    #[arg(
        long,
        env = "HITCOUNT_SECRET_KEY_FILE_PREVIOUS",
        requires = "secret_key_file"
    )]
    pub secret_key_file_previous: Option<PathBuf>,
    /// Traces (`--otlp-endpoint`): read by `main` before the rest of the configuration.
    #[command(flatten)]
    pub telemetry: hitcount_process::TelemetryArgs,
}

/// The fold interval on Cosmos DB when --fold-interval-ms is 0 or not given: Cosmos DB always
/// has the inbox.
pub const COSMOS_FOLD_INTERVAL_MS_DEFAULT: u64 = 1_000;
/// The fold interval on PostgreSQL and the embedded store when --fold-interval-ms is not given:
/// the inbox is the shape that keeps up on both (BENCHMARKS.md, "Scale", "Whole cells").
pub const FOLD_INTERVAL_MS_DEFAULT: u64 = 1_000;

/// The fold interval a store gets: what was asked, else its backend's default.
fn fold_interval_ms(asked: Option<u64>, cosmos: bool) -> u64 {
    match (asked, cosmos) {
        (None | Some(0), true) => COSMOS_FOLD_INTERVAL_MS_DEFAULT,
        (None, false) => FOLD_INTERVAL_MS_DEFAULT,
        (Some(interval), _) => interval,
    }
}

/// Where Cosmos DB is (`--cosmos-endpoint`, `--cosmos-key-file`, `--cosmos-database`).
#[derive(Debug, Clone)]
pub struct CosmosConfig {
    pub endpoint: String,
    pub key_file: PathBuf,
    pub database: String,
}

/// Default gathering time of --ack fast.
pub const FLUSH_INTERVAL_MS_DEFAULT: u64 = 100;
/// Longest gathering time: hits must be visible to queries within a second.
pub const FLUSH_INTERVAL_MS_MAX: u64 = 1_000;

/// A validated edge key.
#[derive(Clone)]
pub struct EdgeKey {
    pub edge_id: String,
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for EdgeKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("EdgeKey")
            .field("edge_id", &self.edge_id)
            .finish_non_exhaustive()
    }
}

/// Shortest secret accepted for edge keys and admin tokens: shorter ones can be brute-forced.
pub use hitcount_wire::SECRET_BYTES_MIN;
/// Bounds the retention job's period: at least a second, at most a day.
const RETENTION_INTERVAL_S_MAX: u64 = 86_400;

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub admin_token: Option<String>,
    pub edge_keys: Vec<EdgeKey>,
    pub ack: AckMode,
    pub flush_interval_ms: u64,
    pub merge_interval_ms: u64,
    /// 0: the direct write shape; above: the durable inbox folded at this interval.
    pub fold_interval_ms: u64,
    pub rate_limit_ip_per_second: u32,
    pub rate_limit_token_per_second: u32,
    pub retention_interval_s: u64,
    pub database_url: Option<String>,
    pub cosmos: Option<CosmosConfig>,
    pub redis_url: Option<String>,
    /// With `redis_cluster`, the seed nodes of a Redis Cluster, comma-separated.
    pub redis_cluster: bool,
    pub redis_prefix: String,
    /// Migrate the store and exit (`--migrate-only`).
    pub migrate_only: bool,
    /// Bearer JWTs of an OpenID Connect issuer, beside the API tokens.
    pub oidc: Option<OidcSettings>,
    /// The key that encrypts stored edge secrets (`--secret-key-file`), and the one before it.
    pub secret_key_file: Option<PathBuf>,
    pub secret_key_file_previous: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--edge-key {0:?} is not of the form ID=SECRET")]
    EdgeKeyForm(String),
    #[error("--edge-key {edge_id}: {reason}")]
    EdgeKey { edge_id: String, reason: String },
    #[error("--edge-key {0} is given twice")]
    EdgeKeyTwice(String),
    #[error("--admin-token must be at least {SECRET_BYTES_MIN} characters")]
    AdminTokenShort,
    #[error("--flush-interval-ms must be between 1 and {FLUSH_INTERVAL_MS_MAX}")]
    FlushInterval,
    #[error("--merge-interval-ms must be between 0 and {MERGE_INTERVAL_MS_MAX}")]
    MergeInterval,
    #[error("--fold-interval-ms must be between 0 and {FOLD_INTERVAL_MS_MAX}")]
    FoldInterval,
    #[error("--retention-interval-s must be between 1 and {RETENTION_INTERVAL_S_MAX}")]
    RetentionInterval,
    #[error(
        "--oidc-issuer {0:?} must be an https:// URL (http:// only on this machine), with a non-empty --oidc-audience and --oidc-roles-claim"
    )]
    OidcIssuer(String),
    #[error(
        "--oidc-client-id must not be empty, and --oidc-scope must include openid (the dashboard checks the provider's ID token)"
    )]
    OidcClient,
    #[error("--database-url must be a postgres:// or postgresql:// URL")]
    DatabaseUrl,
    #[error(
        "--redis-url must be a redis:// URL (several, comma-separated, only with --redis-cluster)"
    )]
    RedisUrl,
    #[error(
        "--redis-url needs --database-url or --cosmos-endpoint: Redis is a cache of recent counts, PostgreSQL or Cosmos DB keeps them"
    )]
    RedisWithoutDatabase,
    #[error("--cosmos-endpoint must be an https:// URL (http:// only for a local emulator)")]
    CosmosEndpoint,
    #[error(
        "--cosmos-endpoint needs --cosmos-key-file, and --cosmos-key-file needs --cosmos-endpoint"
    )]
    CosmosKey,
    #[error("--database-url and --cosmos-endpoint name two stores: give one")]
    TwoStores,
}

impl Config {
    /// A configuration for tests and embedding: everything at its default but the write shape,
    /// which is direct (`fold_interval_ms` 0; the binary's default is the inbox), data in
    /// `data_dir`. `hitcount-dev` and the in-process tests run on it.
    pub fn for_data_dir(data_dir: PathBuf) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir,
            admin_token: None,
            edge_keys: Vec::new(),
            ack: AckMode::Durable,
            flush_interval_ms: FLUSH_INTERVAL_MS_DEFAULT,
            merge_interval_ms: crate::merge::MERGE_INTERVAL_MS_DEFAULT,
            fold_interval_ms: 0,
            rate_limit_ip_per_second: RATE_LIMIT_PER_SECOND_DEFAULT,
            rate_limit_token_per_second: RATE_LIMIT_PER_SECOND_DEFAULT,
            retention_interval_s: 60,
            database_url: None,
            cosmos: None,
            redis_url: None,
            redis_cluster: false,
            redis_prefix: "hitcount".to_owned(),
            migrate_only: false,
            oidc: None,
            secret_key_file: None,
            secret_key_file_previous: None,
        }
    }
}

impl TryFrom<Args> for Config {
    type Error = ConfigError;

    fn try_from(args: Args) -> Result<Self, ConfigError> {
        let mut edge_keys: Vec<EdgeKey> = Vec::new();
        for raw in args.edge_keys.iter().filter(|raw| !raw.trim().is_empty()) {
            let (edge_id, secret) = raw
                .trim()
                .split_once('=')
                .ok_or_else(|| ConfigError::EdgeKeyForm(raw.clone()))?;
            hitcount_wire::validate_edge_id(edge_id).map_err(|error| ConfigError::EdgeKey {
                edge_id: edge_id.to_owned(),
                reason: error.to_string(),
            })?;
            if secret.len() < SECRET_BYTES_MIN {
                return Err(ConfigError::EdgeKey {
                    edge_id: edge_id.to_owned(),
                    reason: format!("the secret must be at least {SECRET_BYTES_MIN} characters"),
                });
            }
            if edge_keys.iter().any(|key| key.edge_id == edge_id) {
                return Err(ConfigError::EdgeKeyTwice(edge_id.to_owned()));
            }
            edge_keys.push(EdgeKey {
                edge_id: edge_id.to_owned(),
                secret: secret.as_bytes().to_vec(),
            });
        }
        if args
            .admin_token
            .as_ref()
            .is_some_and(|token| token.len() < SECRET_BYTES_MIN)
        {
            return Err(ConfigError::AdminTokenShort);
        }
        if !(1..=FLUSH_INTERVAL_MS_MAX).contains(&args.flush_interval_ms) {
            return Err(ConfigError::FlushInterval);
        }
        if args.merge_interval_ms > MERGE_INTERVAL_MS_MAX {
            return Err(ConfigError::MergeInterval);
        }
        if args
            .fold_interval_ms
            .is_some_and(|interval| interval > FOLD_INTERVAL_MS_MAX)
        {
            return Err(ConfigError::FoldInterval);
        }
        if !(1..=RETENTION_INTERVAL_S_MAX).contains(&args.retention_interval_s) {
            return Err(ConfigError::RetentionInterval);
        }
        if args.database_url.as_ref().is_some_and(|url| {
            !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
        }) {
            return Err(ConfigError::DatabaseUrl);
        }
        let cosmos = cosmos_config(&args)?;
        let oidc = oidc_settings(&args)?;
        if let Some(urls) = &args.redis_url {
            let mut urls = urls.split(',');
            if !urls.all(|url| url.starts_with("redis://") || url.starts_with("rediss://"))
                || (!args.redis_cluster
                    && args
                        .redis_url
                        .as_deref()
                        .is_some_and(|url| url.contains(',')))
            {
                return Err(ConfigError::RedisUrl);
            }
            if args.database_url.is_none() && cosmos.is_none() {
                return Err(ConfigError::RedisWithoutDatabase);
            }
        }
        Ok(Self {
            listen: args.listen,
            data_dir: args.data_dir,
            admin_token: args.admin_token,
            edge_keys,
            ack: args.ack,
            flush_interval_ms: args.flush_interval_ms,
            merge_interval_ms: args.merge_interval_ms,
            fold_interval_ms: fold_interval_ms(args.fold_interval_ms, cosmos.is_some()),
            rate_limit_ip_per_second: args.rate_limit_ip_per_second,
            rate_limit_token_per_second: args.rate_limit_token_per_second,
            retention_interval_s: args.retention_interval_s,
            database_url: args.database_url,
            cosmos,
            redis_url: args.redis_url,
            redis_cluster: args.redis_cluster,
            oidc,
            redis_prefix: args.redis_prefix,
            migrate_only: args.migrate_only,
            secret_key_file: args.secret_key_file,
            secret_key_file_previous: args.secret_key_file_previous,
        })
    }
}

/// The OpenID Connect flags, checked: an issuer over https:// (or http:// on this machine, for
/// a provider run beside it), an audience, a roles claim.
fn oidc_settings(args: &Args) -> Result<Option<OidcSettings>, ConfigError> {
    let (Some(issuer), Some(audience)) = (&args.oidc_issuer, &args.oidc_audience) else {
        return Ok(None);
    };
    let secure = crate::oidc::secure_url(issuer);
    if !secure || audience.trim().is_empty() || args.oidc_roles_claim.trim().is_empty() {
        return Err(ConfigError::OidcIssuer(issuer.clone()));
    }
    let dashboard_client = match &args.oidc_client_id {
        None => None,
        Some(client_id)
            if client_id.trim().is_empty()
                || !args
                    .oidc_scope
                    .split_whitespace()
                    .any(|scope| scope == "openid") =>
        {
            return Err(ConfigError::OidcClient);
        }
        Some(client_id) => Some(DashboardClient {
            client_id: client_id.clone(),
            scope: args.oidc_scope.clone(),
        }),
    };
    Ok(Some(OidcSettings {
        issuer: issuer.clone(),
        audience: audience.clone(),
        roles_claim: args.oidc_roles_claim.clone(),
        refetch_interval_ms: crate::oidc::JWKS_REFETCH_INTERVAL_MS_DEFAULT,
        dashboard_client,
    }))
}

/// The Cosmos DB flags, checked: both of endpoint and key file or neither, never beside
/// --database-url.
fn cosmos_config(args: &Args) -> Result<Option<CosmosConfig>, ConfigError> {
    match (&args.cosmos_endpoint, &args.cosmos_key_file) {
        (None, None) => Ok(None),
        (Some(endpoint), Some(key_file)) => {
            if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
                return Err(ConfigError::CosmosEndpoint);
            }
            if args.database_url.is_some() {
                return Err(ConfigError::TwoStores);
            }
            Ok(Some(CosmosConfig {
                endpoint: endpoint.clone(),
                key_file: key_file.clone(),
                database: args.cosmos_database.clone(),
            }))
        }
        _ => Err(ConfigError::CosmosKey),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(arguments: &[&str]) -> Result<Config, ConfigError> {
        let mut all = vec!["hitcount-aggregator"];
        all.extend_from_slice(arguments);
        Config::try_from(Args::try_parse_from(all).unwrap())
    }

    #[test]
    fn parses_edge_keys_and_rejects_bad_ones() {
        let config = parse(&["--edge-key", "edge-1=0123456789abcdef0123"]).unwrap();
        assert_eq!(config.edge_keys[0].edge_id, "edge-1");
        assert!(matches!(
            parse(&["--edge-key", "no-equals"]),
            Err(ConfigError::EdgeKeyForm(_))
        ));
        assert!(matches!(
            parse(&["--edge-key", "edge-1=short"]),
            Err(ConfigError::EdgeKey { .. })
        ));
        assert!(matches!(
            parse(&[
                "--edge-key",
                "a=0123456789abcdef",
                "--edge-key",
                "a=0123456789abcdef"
            ]),
            Err(ConfigError::EdgeKeyTwice(_))
        ));
        assert!(matches!(
            parse(&["--admin-token", "short"]),
            Err(ConfigError::AdminTokenShort)
        ));
        assert!(matches!(
            parse(&["--merge-interval-ms", "501"]),
            Err(ConfigError::MergeInterval)
        ));
        assert_eq!(
            parse(&["--merge-interval-ms", "0"])
                .unwrap()
                .merge_interval_ms,
            0
        );
        assert!(parse(&["--fold-interval-ms", "60001"]).is_err());
        assert_eq!(
            parse(&["--fold-interval-ms", "2000"])
                .unwrap()
                .fold_interval_ms,
            2000
        );
        assert_eq!(
            parse(&[]).unwrap().fold_interval_ms,
            FOLD_INTERVAL_MS_DEFAULT,
            "embedded: the inbox"
        );
        assert_eq!(
            parse(&["--fold-interval-ms", "0"])
                .unwrap()
                .fold_interval_ms,
            0
        );
        let postgres = ["--database-url", "postgres://root@127.0.0.1/test"];
        assert_eq!(
            parse(&postgres).unwrap().fold_interval_ms,
            FOLD_INTERVAL_MS_DEFAULT
        );
        let direct = [postgres[0], postgres[1], "--fold-interval-ms", "0"];
        assert_eq!(parse(&direct).unwrap().fold_interval_ms, 0);
    }

    #[test]
    fn an_oidc_issuer_is_https_or_on_this_machine_and_comes_with_an_audience() {
        let oidc = |issuer: &str| parse(&["--oidc-issuer", issuer, "--oidc-audience", "api://h"]);
        let config = oidc("https://login.example.com/tenant/v2.0").unwrap();
        let settings = config.oidc.unwrap();
        assert_eq!(settings.roles_claim, "roles");
        assert_eq!(
            settings.refetch_interval_ms,
            crate::oidc::JWKS_REFETCH_INTERVAL_MS_DEFAULT
        );
        assert!(oidc("http://127.0.0.1:8443/realms/x").is_ok());
        assert!(oidc("http://localhost/realms/x").is_ok());
        for refused in ["http://idp.example.com", "ftp://idp", "not a url", ""] {
            assert!(
                matches!(oidc(refused), Err(ConfigError::OidcIssuer(_))),
                "{refused}"
            );
        }
        // One without the other is a usage error clap reports.
        let alone = Args::try_parse_from(["hitcount-aggregator", "--oidc-issuer", "https://x"]);
        assert!(alone.is_err());
        assert!(parse(&[]).unwrap().oidc.is_none());
    }

    #[test]
    fn the_dashboards_client_asks_for_openid() {
        let dashboard = |scope: &str| {
            parse(&[
                "--oidc-issuer",
                "https://login.example.com/tenant/v2.0",
                "--oidc-audience",
                "api://h",
                "--oidc-client-id",
                "hitcount-dashboard",
                "--oidc-scope",
                scope,
            ])
        };
        let config = dashboard("openid api://h/.default").unwrap();
        let client = config.oidc.unwrap().dashboard_client.unwrap();
        assert_eq!(client.client_id, "hitcount-dashboard");
        assert_eq!(client.scope, "openid api://h/.default");
        for refused in ["api://h/.default", "", "openidx"] {
            assert!(
                matches!(dashboard(refused), Err(ConfigError::OidcClient)),
                "{refused:?}"
            );
        }
        // A client id needs an issuer (clap).
        let alone = Args::try_parse_from(["hitcount-aggregator", "--oidc-client-id", "x"]);
        assert!(alone.is_err());
    }

    #[test]
    fn store_urls_are_checked_and_redis_needs_a_database() {
        let config = parse(&[
            "--database-url",
            "postgres://root@127.0.0.1/test",
            "--redis-url",
            "redis://127.0.0.1:6379",
        ])
        .unwrap();
        assert!(config.database_url.is_some() && config.redis_url.is_some());
        assert!(matches!(
            parse(&["--database-url", "mysql://x"]),
            Err(ConfigError::DatabaseUrl)
        ));
        assert!(matches!(
            parse(&["--redis-url", "redis://127.0.0.1:6379"]),
            Err(ConfigError::RedisWithoutDatabase)
        ));
        let nodes = "redis://127.0.0.1:7001,redis://127.0.0.1:7002";
        let database = ["--database-url", "postgres://root@127.0.0.1/test"];
        assert!(matches!(
            parse(&[database[0], database[1], "--redis-url", nodes]),
            Err(ConfigError::RedisUrl)
        ));
        assert!(
            parse(&[
                database[0],
                database[1],
                "--redis-url",
                nodes,
                "--redis-cluster"
            ])
            .unwrap()
            .redis_cluster
        );
    }

    #[test]
    fn cosmos_db_needs_its_key_file_alone_and_always_folds() {
        let endpoint = [
            "--cosmos-endpoint",
            "https://account.documents.azure.com:443/",
        ];
        let key = ["--cosmos-key-file", "/run/secrets/cosmos-key"];
        let config = parse(&[endpoint[0], endpoint[1], key[0], key[1]]).unwrap();
        let cosmos = config.cosmos.unwrap();
        assert_eq!(cosmos.database, "hitcount");
        assert_eq!(config.fold_interval_ms, COSMOS_FOLD_INTERVAL_MS_DEFAULT);
        let redis = ["--redis-url", "redis://127.0.0.1:6379"];
        let both = [endpoint[0], endpoint[1], key[0], key[1], redis[0], redis[1]];
        // The hot tier works in front of Cosmos DB as in front of PostgreSQL.
        assert!(parse(&both).unwrap().redis_url.is_some());
        assert!(matches!(
            parse(&redis),
            Err(ConfigError::RedisWithoutDatabase)
        ));
        assert!(matches!(
            parse(&[endpoint[0], endpoint[1]]),
            Err(ConfigError::CosmosKey)
        ));
        assert!(matches!(
            parse(&[key[0], key[1]]),
            Err(ConfigError::CosmosKey)
        ));
        assert!(matches!(
            parse(&[
                "--cosmos-endpoint",
                "account.documents.azure.com",
                key[0],
                key[1]
            ]),
            Err(ConfigError::CosmosEndpoint)
        ));
        assert!(matches!(
            parse(&[
                endpoint[0],
                endpoint[1],
                key[0],
                key[1],
                "--database-url",
                "postgres://root@127.0.0.1/test"
            ]),
            Err(ConfigError::TwoStores)
        ));
        let folds = [
            endpoint[0],
            endpoint[1],
            key[0],
            key[1],
            "--fold-interval-ms",
            "250",
        ];
        assert_eq!(parse(&folds).unwrap().fold_interval_ms, 250);
    }
}
