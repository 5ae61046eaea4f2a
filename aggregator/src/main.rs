use std::io::IsTerminal;

use anyhow::Context;
use clap::Parser;
use hitcount_aggregator::config::{Args, Config};
use tracing_subscriber::EnvFilter;

// mimalloc: the request path allocates small, short-lived buffers on every hit, and glibc's
// allocator spent a fifth of the CPU on them under load (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let config = Config::try_from(Args::parse()).context("invalid configuration")?;
    hitcount_aggregator::run(config).await
}
