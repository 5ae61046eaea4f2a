use anyhow::Context;
use clap::Parser;
use hitcount_aggregator::config::{Args, Config};

// mimalloc: the request path allocates small, short-lived buffers on every hit, and glibc's
// allocator spent a fifth of the CPU on them under load (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    hitcount_process::init_tracing();
    let config = Config::try_from(Args::parse()).context("invalid configuration")?;
    hitcount_aggregator::run(config).await
}
