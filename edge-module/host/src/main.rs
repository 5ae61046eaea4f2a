use anyhow::Context;
use clap::Parser;
use hitcount_edge::config::{Args, Config};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _telemetry = hitcount_process::init_tracing("hitcount-edge", &args.telemetry)
        .context("cannot set up logs and traces")?;
    let config = Config::try_from(args).context("invalid configuration")?;
    hitcount_edge::run(config).await
}
