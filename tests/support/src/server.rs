//! Servers in the test process on real port-0 sockets: an aggregator (on the embedded store, or
//! on the machine's PostgreSQL when `HITCOUNT_TEST_STORE=postgres`), or any router (origins,
//! stubs, edges), all behind one handle, [`Server`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use hitcount_aggregator::Aggregator;
use hitcount_aggregator::config::{Config, EdgeKey};
use hitcount_aggregator::store::Store;
use reqwest::Client;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::postgres::database_url_for;

/// How long [`Server::fold_inbox`] waits for the server's own fold task to commit.
const FOLD_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(10);
use crate::{ADMIN_TOKEN, EDGE_ID, EDGE_SECRET};

/// Configuration every test server starts from: a known admin token, one configured edge key,
/// and rate limits high enough not to get in the way.
pub fn test_config(data_dir: &Path) -> Config {
    let mut config = Config::for_data_dir(data_dir.to_path_buf());
    config.admin_token = Some(ADMIN_TOKEN.to_owned());
    config.edge_keys = vec![EdgeKey {
        edge_id: EDGE_ID.to_owned(),
        secret: EDGE_SECRET.as_bytes().to_vec(),
    }];
    config.rate_limit_ip_per_second = 100_000;
    config.rate_limit_token_per_second = 100_000;
    config.database_url = database_url_for(data_dir);
    config.cosmos = crate::cosmos::cosmos_config_for(data_dir);
    // CI runs the suite once more with the durable inbox (the aggregator binaries the tests
    // start read the same variable themselves).
    if let Some(interval) = std::env::var("HITCOUNT_FOLD_INTERVAL_MS")
        .ok()
        .and_then(|value| value.parse().ok())
    {
        config.fold_interval_ms = interval;
    }
    if config.cosmos.is_some() && config.fold_interval_ms == 0 {
        // As the flags' parsing does: Cosmos DB always has the inbox.
        config.fold_interval_ms = hitcount_aggregator::config::COSMOS_FOLD_INTERVAL_MS_DEFAULT;
    }
    config
}

/// A server running in this process until [`Server::stop`], or a handle on one at a known
/// address ([`Server::at`]) for the JSON helpers.
#[derive(Debug)]
pub struct Server {
    pub address: SocketAddr,
    /// `http://{address}`.
    pub base: String,
    pub client: Client,
    /// The aggregator's data directory (empty for other servers).
    pub data_dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    temporary: Option<TempDir>,
    /// The running aggregator's store (for folding its inbox on demand).
    store: Option<Store>,
}

impl Server {
    /// A server `task` listening on `address` that stops when `stop` fires.
    pub fn new(
        address: SocketAddr,
        stop: oneshot::Sender<()>,
        task: JoinHandle<anyhow::Result<()>>,
    ) -> Self {
        Self {
            address,
            base: format!("http://{address}"),
            client: Client::new(),
            data_dir: PathBuf::new(),
            stop: Some(stop),
            task: Some(task),
            temporary: None,
            store: None,
        }
    }

    /// An aggregator on a fresh temporary directory with [`test_config`].
    pub async fn start() -> Self {
        let directory = TempDir::new().expect("temporary directory");
        let config = test_config(directory.path());
        let mut server = Self::start_with(config).await;
        server.temporary = Some(directory);
        server
    }

    /// An aggregator with `config`, on port 0.
    pub async fn start_with(config: Config) -> Self {
        Self::start_at(config, None).await
    }

    /// An aggregator with `config`, on `address` (to come back on the same one) or port 0.
    pub async fn start_at(config: Config, address: Option<SocketAddr>) -> Self {
        let data_dir = config.data_dir.clone();
        let aggregator = Aggregator::start(config).await.expect("aggregator starts");
        let store = aggregator.state().store.clone();
        let listener = tokio::net::TcpListener::bind(
            address.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
        )
        .await
        .expect("bind");
        let address = listener.local_addr().expect("address");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(hitcount_aggregator::serve(
            listener,
            aggregator,
            async move {
                let _ = stopped.await;
            },
        ));
        let mut server = Self::new(address, stop, task);
        server.data_dir = data_dir;
        server.store = Some(store);
        server
    }

    /// A handle for the JSON helpers on a server at `base` (`http://host:port`) that this
    /// process does not run.
    pub fn at(base: &str) -> Self {
        let address = base
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .unwrap_or_else(|_| panic!("{base} is not http://address:port"));
        Self {
            address,
            base: format!("http://{address}"),
            client: Client::new(),
            data_dir: PathBuf::new(),
            stop: None,
            task: None,
            temporary: None,
            store: None,
        }
    }

    /// The running aggregator's store, when this process runs it.
    pub fn store(&self) -> Option<&Store> {
        self.store.as_ref()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Folds the durable inbox now (nothing without it): what a test does before another
    /// aggregator on the same database, which sees this one's deltas once folded, is asked.
    /// The server's own fold task may hold the fold lock with rows claimed but not committed
    /// (a fold that finds the lock taken returns at once), so this waits until none of this
    /// server's rows is left unfolded.
    pub async fn fold_inbox(&self) {
        let Some(store) = &self.store else {
            return;
        };
        let started = std::time::Instant::now();
        loop {
            store
                .fold_inbox(hitcount_aggregator::now_ms())
                .await
                .expect("the inbox folds");
            if store.unfolded_entries() == 0 {
                return;
            }
            assert!(
                started.elapsed() < FOLD_WAIT_MAX,
                "{} inbox entries still unfolded after {FOLD_WAIT_MAX:?}",
                store.unfolded_entries()
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Stops gracefully and waits (the server's own error fails the test); returns the
    /// temporary directory, if this server owns one, so a test can start again on its data.
    pub async fn stop(mut self) -> Option<TempDir> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .expect("server task")
                .expect("server stops cleanly");
        }
        self.temporary.take()
    }
}

/// Serves `router` on a port-0 listener until [`Server::stop`] (origins, proxies, stubs).
pub async fn serve_router(router: axum::Router) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
            .map_err(anyhow::Error::from)
    });
    Server::new(address, stop, task)
}

/// An aggregator on `directory` ([`test_config`]), listening on `address` or port 0, with the
/// given edge keys instead of the configured one and no rate limits.
pub async fn aggregator(
    directory: &Path,
    address: Option<SocketAddr>,
    edge_keys: &[(&str, &str)],
) -> Server {
    let mut config = test_config(directory);
    config.edge_keys = edge_keys
        .iter()
        .map(|(edge_id, secret)| EdgeKey {
            edge_id: (*edge_id).to_owned(),
            secret: secret.as_bytes().to_vec(),
        })
        .collect();
    config.rate_limit_ip_per_second = 0;
    config.rate_limit_token_per_second = 0;
    Server::start_at(config, address).await
}

/// The store of a test server's data, opened beside the server (for retention and compaction
/// tests that call the store directly).
pub async fn open_store(data_dir: &Path) -> hitcount_aggregator::store::Store {
    use hitcount_aggregator::store::{
        CosmosSettings, CosmosStore, DurableStore, EmbeddedStore, PgStore, Store,
    };
    // In the suite's inbox run, with the inbox too, so that `fold_inbox` folds the server's rows.
    let inbox = test_config(data_dir).fold_interval_ms > 0;
    if let Some(cosmos) = crate::cosmos::cosmos_config_for(data_dir) {
        let settings = CosmosSettings {
            endpoint: cosmos.endpoint,
            key: crate::COSMOS_TEST_KEY.to_owned(),
            database: cosmos.database,
            stream: None,
        };
        let store = CosmosStore::connect(&settings)
            .await
            .expect("Cosmos DB opens");
        return Store::new(std::sync::Arc::new(store));
    }
    let backend: std::sync::Arc<dyn DurableStore> = match database_url_for(data_dir) {
        Some(url) => {
            let store = PgStore::connect(&url).await.expect("PostgreSQL opens");
            std::sync::Arc::new(if inbox { store.with_inbox() } else { store })
        }
        None => {
            let store = EmbeddedStore::open(data_dir).expect("store opens");
            std::sync::Arc::new(if inbox { store.with_inbox() } else { store })
        }
    };
    Store::new(backend)
}
