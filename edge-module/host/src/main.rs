use anyhow::Context;
use clap::Parser;
use hitcount_edge::config::{Args, Config};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    hitcount_process::init_tracing();
    let config = Config::try_from(Args::parse()).context("invalid configuration")?;
    hitcount_edge::run(config).await
}
