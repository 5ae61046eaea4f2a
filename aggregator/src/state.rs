//! Everything a request handler can reach.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::auth::{EdgeKeyRegistry, TokenRegistry};
use crate::catalog::Catalog;
use crate::config::Config;
use crate::ingest::Ingestor;
use crate::merge::Merger;
use crate::oidc::OidcVerifier;
use crate::rate_limit::RateLimits;
use crate::store::Store;

#[derive(Debug)]
pub struct AppState {
    pub config: Config,
    pub store: Store,
    pub ingestor: Ingestor,
    /// Edge delta batches, merged in groups (the second aggregation level).
    pub merger: Merger,
    /// The resources and patterns this aggregator knows.
    pub catalog: Catalog,
    pub tokens: TokenRegistry,
    /// With `--oidc-issuer`: bearer JWTs of that issuer are callers too.
    pub oidc: Option<OidcVerifier>,
    pub edge_keys: EdgeKeyRegistry,
    pub limits: RateLimits,
    pub metrics: PrometheusHandle,
}

pub type SharedState = Arc<AppState>;
