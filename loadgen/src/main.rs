//! `hitcount-loadgen`: flags in, one JSON line out. The run itself is `hitcount_loadgen::run`.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

// Two workers: the machine this is measured on has two cores, shared with the aggregator, and
// the sending side is light (about one request per edge and window). Windows are drawn on a
// blocking thread of their own.
#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<ExitCode> {
    let config = hitcount_loadgen::Config::parse();
    let outcome = hitcount_loadgen::run(config)
        .await
        .context("the load run could not be carried out")?;
    let line = serde_json::to_string(&outcome.report).context("encoding the report")?;
    println!("{line}");
    let report = &outcome.report;
    let failed =
        report.errors > 0 || (!report.verification_skipped && !report.verification.verified);
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
