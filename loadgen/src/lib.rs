//! `hitcount-loadgen`: many simulated edges against one or more real aggregators, over HTTP.
//!
//! Each edge does what a real edge does after pre-aggregation: every window it has one entry per
//! (resource, minute) with a hit count and a visitor sketch, and hands the window to the real
//! edge's [`hitcount_edge_core::Delivery`], which numbers, seals and holds the batches (one in
//! flight per edge; windows closing meanwhile merge into its pending map). The edge signs each
//! batch with [`hitcount_wire::auth::sign`] and resends the same bytes until the aggregator
//! answers 200 (applied or duplicate). What it does not do is receive beacons: each window's hits
//! are drawn directly (Zipf over the resources, visitors uniform), which is all the aggregator
//! ever sees of beacons anyway (see [`generate`]).
//!
//! Afterwards every resource's total is compared with the aggregator's `GET /hits/{id}`, and the
//! unique visitors of a sample of resources with the exact distinct count ([`verify`]).
//!
//! [`run`] is the whole run; the binary only parses flags, prints the report and writes files.

mod edge;
mod generate;
mod http;
mod setup;
mod stats;
mod verify;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

pub use crate::stats::Sends;
pub use crate::verify::{Mismatch, Verification, verify};

/// Most simulated edges: each is a task, a delivery queue and an edge key at the aggregator.
pub const EDGES_MAX: usize = 10_000;
/// Most resources: ids, the Zipf table and the expected counts take about 100 bytes each.
pub const RESOURCES_MAX: usize = 10_000_000;
/// Highest offered rate; far above what one machine's aggregator takes, low enough that a
/// window's hits fit a `u32` per resource.
pub const HITS_PER_SECOND_MAX: u64 = 100_000_000;
/// Window lengths an edge accepts (`--window-ms` of `hitcount-edge`).
pub use hitcount_edge_core::{WINDOW_MS_MAX, WINDOW_MS_MIN};
/// Longest run.
pub const DURATION_S_MAX: u64 = 24 * 60 * 60;
/// Longest random delay before a send.
pub const DELAY_MS_MAX: u64 = 10_000;
/// Resource id prefixes leave room for the index digits within the 64-byte id limit.
pub const RESOURCE_PREFIX_BYTES_MAX: usize = 48;
/// Longest edge id prefix, likewise.
pub const EDGE_PREFIX_BYTES_MAX: usize = 48;

/// How the run's resources come to exist in the aggregator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SetupMode {
    /// One `POST /resources` per resource, several at a time, before the run.
    Resources,
    /// One `POST /patterns` (`{prefix}*`): the aggregator creates each resource when its first
    /// entry arrives, before merging it (exact, and no setup time, but creation happens during
    /// the run's first seconds).
    Pattern,
    /// The resources exist already: the caller made them (the scale benchmark writes them into
    /// the store directly, 100k in a second, before the aggregators start).
    Existing,
}

/// Everything a run is told. Every flag is also an environment variable.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "hitcount-loadgen",
    version,
    about = "Plays many hitcount edges against real aggregators and checks what they counted.",
    after_help = "Prints one line a second on stderr and, at the end, one JSON object on stdout. \
                  Exits 1 when there were errors or the verification failed."
)]
pub struct Config {
    /// Aggregator base URL; repeat for several (edges are spread round-robin). Several
    /// aggregators must share one store: setup and verification go through the first.
    #[arg(
        long = "aggregator",
        env = "HITCOUNT_LOADGEN_AGGREGATORS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8080"
    )]
    pub aggregators: Vec<String>,
    /// Admin token: the run creates its edge keys and resources with it and reads counts.
    #[arg(long, env = "HITCOUNT_LOADGEN_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// How resources are created: `resources` (POST /resources each) or `pattern`.
    #[arg(
        long,
        env = "HITCOUNT_LOADGEN_SETUP",
        value_enum,
        default_value = "resources"
    )]
    pub setup: SetupMode,
    /// Simulated edges.
    #[arg(long, env = "HITCOUNT_LOADGEN_EDGES", default_value_t = 100)]
    pub edges: usize,
    /// Hits per second over all edges.
    #[arg(
        long,
        env = "HITCOUNT_LOADGEN_HITS_PER_SECOND",
        default_value_t = 100_000
    )]
    pub hits_per_second: u64,
    /// Distinct resources.
    #[arg(long, env = "HITCOUNT_LOADGEN_RESOURCES", default_value_t = 100_000)]
    pub resources: usize,
    /// Zipf exponent of resource popularity (0: uniform).
    #[arg(long, env = "HITCOUNT_LOADGEN_ZIPF", default_value_t = 1.0)]
    pub zipf: f64,
    /// Distinct visitors; each hit's visitor is drawn uniformly from them.
    #[arg(long, env = "HITCOUNT_LOADGEN_VISITORS", default_value_t = 1_000_000)]
    pub visitors: u64,
    /// Window length of every edge, 100 to 10000 ms, dividing a minute.
    #[arg(long, env = "HITCOUNT_LOADGEN_WINDOW_MS", default_value_t = 1_000)]
    pub window_ms: u64,
    /// How long hits are generated.
    #[arg(long, env = "HITCOUNT_LOADGEN_DURATION_S", default_value_t = 60)]
    pub duration_s: u64,
    /// After the run, how long edges keep resending what is not acknowledged.
    #[arg(long, env = "HITCOUNT_LOADGEN_DRAIN_TIMEOUT_S", default_value_t = 60)]
    pub drain_timeout_s: u64,
    /// Share of batches (0 to 100) sent twice, the copy at the same time as the first send.
    #[arg(
        long,
        env = "HITCOUNT_LOADGEN_DUPLICATE_PERCENT",
        default_value_t = 0.0
    )]
    pub duplicate_percent: f64,
    /// A random delay of up to this many ms before every send, so batches arrive out of order.
    #[arg(long, env = "HITCOUNT_LOADGEN_DELAY_MS_MAX", default_value_t = 0)]
    pub delay_ms_max: u64,
    /// Seed of the hits drawn (which resources, which visitors); edge secrets are random.
    #[arg(long, env = "HITCOUNT_LOADGEN_SEED", default_value_t = 0x6869_7463)]
    pub seed: u64,
    /// Write `{resource_id: hits acknowledged}` for every resource to this file, as JSON.
    #[arg(long, env = "HITCOUNT_LOADGEN_EXPECTED_OUT")]
    pub expected_out: Option<PathBuf>,
    /// Resource ids are this prefix and a zero-padded index (`load-r000123`); a new prefix
    /// keeps a run apart from earlier runs on the same aggregator.
    #[arg(
        long,
        env = "HITCOUNT_LOADGEN_RESOURCE_PREFIX",
        default_value = "load-r"
    )]
    pub resource_prefix: String,
    /// Edge ids are this prefix, `-` and a zero-padded index (`load-edge-007`).
    #[arg(
        long,
        env = "HITCOUNT_LOADGEN_EDGE_PREFIX",
        default_value = "load-edge"
    )]
    pub edge_prefix: String,
    /// Resources whose unique visitors are checked exactly: this many of the most popular and
    /// this many more at random (their exact visitor sets are kept in memory).
    #[arg(long, env = "HITCOUNT_LOADGEN_UNIQUES_SAMPLE", default_value_t = 100)]
    pub uniques_sample: usize,
    /// `GET /hits` requests in flight during verification.
    #[arg(
        long,
        env = "HITCOUNT_LOADGEN_VERIFY_CONCURRENCY",
        default_value_t = 16
    )]
    pub verify_concurrency: usize,
    /// Skip the verification (`verified` is then false and `verification_skipped` true).
    #[arg(long, env = "HITCOUNT_LOADGEN_SKIP_VERIFY")]
    pub skip_verify: bool,
    /// No progress line on stderr.
    #[arg(long, env = "HITCOUNT_LOADGEN_QUIET")]
    pub quiet: bool,
}

/// Why a run could not be carried out. Faults of the aggregator during the run are not errors
/// of this kind: they are counted in the [`Report`].
#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("{what}: {source}")]
    Http {
        what: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{what}: the aggregator answered {status}: {body}")]
    Refused {
        what: String,
        status: u16,
        body: String,
    },
    #[error("{what}: {reason}")]
    Setup { what: String, reason: String },
    #[error("writing {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the generator thread failed: {0}")]
    Generator(String),
}

impl Config {
    /// The checks clap cannot state; a run starts only with a valid configuration.
    pub fn validate(&self) -> Result<(), LoadgenError> {
        let invalid = |message: String| Err(LoadgenError::Config(message));
        if self.aggregators.is_empty() {
            return invalid("give at least one --aggregator".to_owned());
        }
        for url in &self.aggregators {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return invalid(format!(
                    "--aggregator {url:?} must be an http:// or https:// URL"
                ));
            }
        }
        if self.admin_token.as_deref().is_none_or(str::is_empty) {
            return invalid(
                "give --admin-token: edge keys and resources are created with it, and counts read"
                    .to_owned(),
            );
        }
        if !(1..=EDGES_MAX).contains(&self.edges) {
            return invalid(format!("--edges must be 1 to {EDGES_MAX}"));
        }
        if !(1..=RESOURCES_MAX).contains(&self.resources) {
            return invalid(format!("--resources must be 1 to {RESOURCES_MAX}"));
        }
        if self.hits_per_second > HITS_PER_SECOND_MAX {
            return invalid(format!(
                "--hits-per-second must be at most {HITS_PER_SECOND_MAX}"
            ));
        }
        if !(self.zipf.is_finite() && self.zipf >= 0.0) {
            return invalid("--zipf must be a number of at least 0".to_owned());
        }
        if self.visitors == 0 {
            return invalid("--visitors must be at least 1".to_owned());
        }
        // Windows then never straddle a minute, so each window has one entry per resource.
        if !(WINDOW_MS_MIN..=WINDOW_MS_MAX).contains(&self.window_ms)
            || !hitcount_wire::MINUTE_MS.is_multiple_of(self.window_ms)
        {
            return invalid(format!(
                "--window-ms must be {WINDOW_MS_MIN} to {WINDOW_MS_MAX} and divide 60000"
            ));
        }
        if !(1..=DURATION_S_MAX).contains(&self.duration_s) {
            return invalid(format!("--duration-s must be 1 to {DURATION_S_MAX}"));
        }
        if self.drain_timeout_s > DURATION_S_MAX {
            return invalid(format!(
                "--drain-timeout-s must be at most {DURATION_S_MAX}"
            ));
        }
        if !(0.0..=100.0).contains(&self.duplicate_percent) {
            return invalid("--duplicate-percent must be 0 to 100".to_owned());
        }
        if self.delay_ms_max > DELAY_MS_MAX {
            return invalid(format!("--delay-ms-max must be at most {DELAY_MS_MAX}"));
        }
        if self.resource_prefix.len() > RESOURCE_PREFIX_BYTES_MAX
            || hitcount_wire::validate_resource_id(&format!("{}0", self.resource_prefix)).is_err()
        {
            return invalid(format!(
                "--resource-prefix must be up to {RESOURCE_PREFIX_BYTES_MAX} of A-Z a-z 0-9 . _ -"
            ));
        }
        if self.edge_prefix.len() > EDGE_PREFIX_BYTES_MAX
            || hitcount_wire::validate_edge_id(&format!("{}-0", self.edge_prefix)).is_err()
        {
            return invalid(format!(
                "--edge-prefix must be up to {EDGE_PREFIX_BYTES_MAX} of A-Z a-z 0-9 . _ -"
            ));
        }
        if self.verify_concurrency == 0 {
            return invalid("--verify-concurrency must be at least 1".to_owned());
        }
        Ok(())
    }

    fn admin_token(&self) -> &str {
        self.admin_token.as_deref().unwrap_or_default()
    }

    /// The run's resource ids, in popularity order (index 0 is the most popular). Zero padding
    /// makes index order the ids' byte order, which is the order entries take in a batch.
    pub fn resource_ids(&self) -> Vec<String> {
        let width = digits(self.resources.saturating_sub(1)).max(6);
        (0..self.resources)
            .map(|index| format!("{}{index:0width$}", self.resource_prefix))
            .collect()
    }

    fn edge_ids(&self) -> Vec<String> {
        let width = digits(self.edges.saturating_sub(1)).max(3);
        (0..self.edges)
            .map(|index| format!("{}-{index:0width$}", self.edge_prefix))
            .collect()
    }
}

fn digits(value: usize) -> usize {
    value.checked_ilog10().map_or(1, |log| log as usize + 1)
}

/// What the aggregator should now hold: every resource's acknowledged hits, and the unique
/// visitors of the sampled resources whose hits were all acknowledged.
#[derive(Debug, Clone, Default)]
pub struct Expectation {
    pub hits: BTreeMap<String, u64>,
    /// What the union of the offered sketches counts: the exact answer owed.
    pub uniques: BTreeMap<String, u64>,
    /// The exact distinct visitors, reported beside it (the sketch's own error, not ours).
    pub distinct: BTreeMap<String, u64>,
    /// The period to ask for: whole minutes covering every window of the run.
    pub start_ms: u64,
    pub end_ms: u64,
}

/// The JSON line printed at the end.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Hits the edges handed to their delivery queues (generated and not shed).
    pub hits_offered: u64,
    /// Hits in batches the aggregator answered 200 for (applied or duplicate).
    pub hits_acknowledged: u64,
    /// Hits an edge refused because its pending map was full (a real edge answers such
    /// beacons 503); neither offered nor expected.
    pub hits_shed: u64,
    /// The worst second among the last 30 of the run: of the hits offered in it, the share
    /// acknowledged within `RATIO_ACK_ON_TIME_MS` of its end (see README, "Load testing").
    /// Absent when nothing was offered.
    pub last_30s_min_ack_ratio: Option<f64>,
    /// From a batch's first send to its 200, over every batch of the run (ms).
    pub ack_p50_ms: Option<f64>,
    pub ack_p99_ms: Option<f64>,
    pub ack_max_ms: Option<f64>,
    /// `verified`, `mismatches`, `mismatch_examples` and the rest of the verification (all
    /// zero and false when skipped).
    #[serde(flatten)]
    pub verification: Verification,
    pub verification_skipped: bool,
    /// 409s, 4xx other than 429, other 5xx, answers that did not count every hit, failed
    /// verification queries: each is a bug somewhere.
    pub errors: u64,
    pub error_examples: Vec<String>,
    /// Sends, resends, copies and the answers that were not a 200.
    #[serde(flatten)]
    pub sends: Sends,
    pub setup: SetupMode,
    pub setup_s: f64,
    pub duration_s: f64,
    pub drain_s: f64,
    /// CPU time of this process while generating and draining, and that over the wall time.
    pub cpu_s: Option<f64>,
    pub cpu_cores: Option<f64>,
    pub edges: usize,
    pub resources: usize,
    pub hits_per_second: u64,
    pub seed: u64,
}

/// A finished run: its report and what verification compared.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub report: Report,
    pub expectation: Expectation,
}

/// State the generator thread, the edge tasks and the progress line share.
struct Shared {
    stats: stats::Stats,
    /// Acknowledged hits per resource index.
    acknowledged: Vec<AtomicU64>,
    /// The generator has handed over its last window.
    generation_done: AtomicBool,
    /// Edges give up resending after this (ms since the Unix epoch; 0 until generation ends).
    drain_deadline_ms: AtomicU64,
}

/// Sets up, generates for `duration_s`, drains, verifies, and writes `--expected-out`.
pub async fn run(config: Config) -> Result<Outcome, LoadgenError> {
    config.validate()?;
    // Built first: for millions of resources the table takes a moment, which must not eat into
    // the first window.
    let popularity = generate::Popularity::new(config.resources, config.zipf)?;
    let config = Arc::new(config);
    let client = http::client(config.edges)?;
    let resource_ids = Arc::new(config.resource_ids());
    let edge_ids = config.edge_ids();

    let setup_started = Instant::now();
    let secrets = setup::run(&client, &config, &resource_ids, &edge_ids).await?;
    let setup_s = setup_started.elapsed().as_secs_f64();

    let run_started_ms = hitcount_process::now_ms();
    let window_ms = config.window_ms;
    // Windows are aligned to multiples of their length, as wall-clock minutes are.
    let first_window_ms = run_started_ms.div_ceil(window_ms) * window_ms;
    let windows = (config.duration_s * 1_000).div_ceil(window_ms);
    let last_window_end_ms = first_window_ms + windows * window_ms;
    let edges: Arc<Vec<edge::Edge>> = Arc::new(
        edge_ids
            .iter()
            .zip(secrets)
            .enumerate()
            .map(|(index, (edge_id, secret))| {
                edge::Edge::new(
                    edge_id,
                    secret,
                    // The boot epoch differs per edge and per run, so sequences from 0 are new keys.
                    run_started_ms + index as u64,
                    &config.aggregators[index % config.aggregators.len()],
                )
            })
            .collect(),
    );
    let origin = Instant::now() + Duration::from_millis(first_window_ms - run_started_ms);
    let shared = Arc::new(Shared {
        stats: stats::Stats::new(origin),
        acknowledged: (0..config.resources).map(|_| AtomicU64::new(0)).collect(),
        generation_done: AtomicBool::new(false),
        drain_deadline_ms: AtomicU64::new(0),
    });

    let cpu_before = stats::cpu_seconds();
    let wall_before = Instant::now();
    let progress = (!config.quiet).then(|| {
        tokio::spawn(stats::progress_lines(
            Arc::clone(&shared),
            Arc::clone(&edges),
        ))
    });
    let mut senders = tokio::task::JoinSet::new();
    for index in 0..edges.len() {
        senders.spawn(edge::deliver(
            Arc::clone(&edges),
            index,
            Arc::clone(&shared),
            Arc::clone(&config),
            client.clone(),
            Arc::clone(&resource_ids),
        ));
    }
    let generator = {
        let config = Arc::clone(&config);
        let edges = Arc::clone(&edges);
        let shared = Arc::clone(&shared);
        let resource_ids = Arc::clone(&resource_ids);
        tokio::task::spawn_blocking(move || {
            generate::run(
                &config,
                &popularity,
                &resource_ids,
                &edges,
                &shared,
                generate::Schedule {
                    origin,
                    first_window_ms,
                    windows,
                },
            )
        })
    };
    let generated = generator
        .await
        .map_err(|error| LoadgenError::Generator(error.to_string()))?;
    let duration_s = wall_before.elapsed().as_secs_f64();
    let drain_started = Instant::now();
    shared.drain_deadline_ms.store(
        hitcount_process::now_ms() + config.drain_timeout_s * 1_000,
        Ordering::Release,
    );
    shared.generation_done.store(true, Ordering::Release);
    for edge in edges.iter() {
        edge.wake.notify_one();
    }
    while let Some(joined) = senders.join_next().await {
        if let Err(error) = joined {
            shared.stats.error(format!("an edge task failed: {error}"));
        }
    }
    let drain_s = drain_started.elapsed().as_secs_f64();
    let cpu_s = cpu_before
        .zip(stats::cpu_seconds())
        .map(|(before, after)| after - before);
    let cpu_cores = cpu_s.map(|cpu| cpu / wall_before.elapsed().as_secs_f64().max(1e-9));
    if let Some(progress) = progress {
        progress.abort();
    }

    let mut expectation = Expectation {
        start_ms: first_window_ms / hitcount_wire::MINUTE_MS * hitcount_wire::MINUTE_MS,
        end_ms: last_window_end_ms.div_ceil(hitcount_wire::MINUTE_MS) * hitcount_wire::MINUTE_MS,
        ..Expectation::default()
    };
    for (index, id) in resource_ids.iter().enumerate() {
        let acknowledged = shared.acknowledged[index].load(Ordering::Acquire);
        expectation.hits.insert(id.clone(), acknowledged);
    }
    for sampled in &generated.distinct {
        let index = sampled.resource;
        // A sample whose hits were not all acknowledged has visitors the aggregator never saw.
        if shared.acknowledged[index].load(Ordering::Acquire) == generated.offered[index] {
            expectation
                .uniques
                .insert(resource_ids[index].clone(), sampled.sketched);
            expectation
                .distinct
                .insert(resource_ids[index].clone(), sampled.distinct);
        }
    }
    if let Some(path) = &config.expected_out {
        let text = serde_json::to_string_pretty(&expectation.hits).unwrap_or_default();
        std::fs::write(path, text + "\n").map_err(|source| LoadgenError::Write {
            path: path.clone(),
            source,
        })?;
    }

    let verification = if config.skip_verify {
        None
    } else {
        Some(verify(&config, &expectation).await?)
    };
    let snapshot = shared.stats.snapshot();
    let report = Report {
        hits_offered: generated.hits_offered,
        hits_acknowledged: snapshot.hits_acknowledged,
        hits_shed: generated.hits_shed,
        last_30s_min_ack_ratio: snapshot.min_ack_ratio(),
        ack_p50_ms: snapshot.latency_ms(0.50),
        ack_p99_ms: snapshot.latency_ms(0.99),
        ack_max_ms: snapshot.latency_ms(1.0),
        errors: snapshot.errors + verification.as_ref().map_or(0, |found| found.query_errors),
        error_examples: snapshot.error_examples.clone(),
        sends: snapshot.sends.clone(),
        verification_skipped: verification.is_none(),
        verification: verification.unwrap_or_default(),
        setup: config.setup,
        setup_s,
        duration_s,
        drain_s,
        cpu_s,
        cpu_cores,
        edges: config.edges,
        resources: config.resources,
        hits_per_second: config.hits_per_second,
        seed: config.seed,
    };
    Ok(Outcome {
        report,
        expectation,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn config(extra: &[&str]) -> Config {
        let mut args = vec![
            "hitcount-loadgen",
            "--admin-token",
            "admin-token-0123456789",
        ];
        args.extend_from_slice(extra);
        Config::parse_from(args)
    }

    #[test]
    fn the_defaults_are_valid_and_ids_are_valid_and_sorted() {
        let config = config(&[]);
        config.validate().unwrap();
        let ids = config.resource_ids();
        assert_eq!(ids[123], "load-r000123");
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]));
        assert!(
            ids.iter()
                .all(|id| hitcount_wire::validate_resource_id(id).is_ok())
        );
        let edges = config.edge_ids();
        assert_eq!(edges[7], "load-edge-007");
        assert!(
            edges
                .iter()
                .all(|id| hitcount_wire::validate_edge_id(id).is_ok())
        );
        let many = self::config(&["--resources", "12345678"]);
        assert!(many.validate().is_err(), "over RESOURCES_MAX");
        let wide = self::config(&["--resources", "1000001"]);
        assert_eq!(wide.resource_ids()[5], "load-r0000005");
    }

    #[test]
    fn refuses_what_an_edge_would_not_do() {
        for bad in [
            &["--window-ms", "700"][..],
            &["--window-ms", "50"],
            &["--edges", "0"],
            &["--duplicate-percent", "101"],
            &["--zipf=-1"],
            &["--resource-prefix", "no/slash"],
            &["--aggregator", "ftp://x"],
        ] {
            assert!(config(bad).validate().is_err(), "{bad:?}");
        }
        let no_token = Config::parse_from(["hitcount-loadgen"]);
        assert!(no_token.validate().is_err());
        config(&["--window-ms", "1500", "--zipf", "0"])
            .validate()
            .unwrap();
    }
}
