use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use hitcount_spin_host::SpinHost;
use tracing_subscriber::EnvFilter;

/// Runs the hitcount Spin component locally, as Spin would (for trying the Spin build without
/// Spin; deploy with `spin up -f infra/spin.toml` where Spin is available).
#[derive(Debug, Parser)]
#[command(name = "hitcount-spin-host", version)]
struct Args {
    #[arg(long, env = "HITCOUNT_SPIN_LISTEN", default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// The Redis the component keeps its windows in (its `redis_address` variable).
    #[arg(
        long,
        env = "HITCOUNT_SPIN_REDIS",
        default_value = "redis://127.0.0.1:6379"
    )]
    redis: String,
    /// A Spin variable as NAME=VALUE (edge_id, edge_key, visitor_secret, aggregator_url,
    /// window_ms); repeat the flag.
    #[arg(long = "variable", value_parser = parse_variable)]
    variables: Vec<(String, String)>,
    /// Another build of the component; the one built with this binary if absent.
    #[arg(long, env = "HITCOUNT_SPIN_MODULE")]
    module: Option<PathBuf>,
}

fn parse_variable(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .ok_or_else(|| format!("{text:?} is not NAME=VALUE"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let args = Args::parse();
    let mut variables: BTreeMap<String, String> = args.variables.into_iter().collect();
    variables.insert("redis_address".to_owned(), args.redis.clone());
    let host = SpinHost::new(args.module.as_deref(), variables, &args.redis).await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(address = %args.listen, "hitcount Spin component listening");
    hitcount_spin_host::serve(listener, Arc::new(host), async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}
