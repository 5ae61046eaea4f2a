use anyhow::Context;
use clap::Parser;
use hitcount_aggregator::config::{Args, Config};

// mimalloc: the request path allocates small, short-lived buffers on every hit, and glibc's
// allocator spent a fifth of the CPU on them under load (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _telemetry = hitcount_process::init_tracing("hitcount-aggregator", &args.telemetry)
        .context("cannot set up logs and traces")?;
    let config = Config::try_from(args).context("invalid configuration")?;
    hitcount_aggregator::run(config).await
}
