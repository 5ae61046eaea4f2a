use anyhow::Context;
use clap::Parser;
use hitcount_dev::{Args, DevSettings};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    hitcount_process::init_tracing();
    let settings = DevSettings::try_from(Args::parse()).context("invalid configuration")?;
    hitcount_dev::run(settings).await
}
