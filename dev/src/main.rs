use anyhow::Context;
use clap::Parser;
use hitcount_dev::{Args, DevSettings};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _telemetry = hitcount_process::init_tracing("hitcount-dev", &args.telemetry)
        .context("cannot set up logs and traces")?;
    let settings = DevSettings::try_from(args).context("invalid configuration")?;
    hitcount_dev::run(settings).await
}
