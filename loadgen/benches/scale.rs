//! `cargo bench -p hitcount-loadgen --bench scale`: the aggregator (release build) under
//! simulated edges from `hitcount-loadgen`, with PostgreSQL and Redis on this machine, and the
//! baseline of raw batched PostgreSQL upserts measured in the same run.
//!
//! Every scenario gets a fresh store: its resources are written into it directly (the REST API
//! takes a resource per request, half a minute for 100k), or, in the `-pattern-` scenarios,
//! created by the aggregator through one pattern while the load runs; then the aggregators start
//! and the run's own edges, keys and counts go through HTTP only. While the load runs a reader asks one
//! hot resource for 24 h at minute granularity, for 30 days at hour granularity and `/healthz` (the
//! floor) in turn, one request every 50 ms, from a thread of its own. Figures: offered and acknowledged
//! hits/s, the worst second of the last 30, delta acknowledgement p50/p99, verification,
//! PostgreSQL rows written per second (`pg_stat_user_tables`) and per acknowledged hit after a clean stop
//! (the last folds included), aggregator CPU and read latency.
//!
//! `HITCOUNT_BENCH_SCALE_ONLY=name,name` runs only those scenarios; `HITCOUNT_BENCH_SCALE_S` sets
//! the load's duration (default 60 s); `HITCOUNT_BENCH_AGGREGATOR` names the aggregator binary
//! (default: the release build), so a copy of an earlier build gives a baseline in the same run.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use hitcount_aggregator::store::{
    CountCell, HOUR_MS, Import, ImportOutcome, ResourceRecord, Store, Tier, TierCell,
};
use hitcount_bench_support::cpu_seconds as stat_cpu_seconds;
use hitcount_loadgen::{Config, SetupMode};
use hitcount_wire::Sketch;
use procfs::process::Process;

const ADMIN_TOKEN: &str = "bench-admin-token-0123456789";
const DATABASE_SERVER: &str = "postgres://root@127.0.0.1:5432";
const REDIS_URL: &str = "redis://127.0.0.1:6379";
/// Resources written per store call when a scenario's store is filled.
const RESOURCE_CHUNK: usize = 10_000;
/// Reads of the hot resource while the load runs, one per this many ms.
const READ_PERIOD_MS: u64 = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Embedded,
    Postgres,
    PostgresRedis,
}

#[derive(Debug, Clone, Copy)]
struct Scenario {
    name: &'static str,
    backend: Backend,
    aggregators: usize,
    hits_per_second: u64,
    resources: usize,
    /// `--fold-interval-ms`: 0 for the direct write shape, above for the durable inbox.
    fold_interval_ms: u64,
    /// How the resources come to exist: written into the store before the aggregators start
    /// (`Existing`), or created by the aggregator through one pattern while the load runs
    /// (`Pattern`, as a user's site does; only the hot resource and its history are written
    /// beforehand).
    setup: SetupMode,
}

/// The fold interval of the inbox scenarios.
const INBOX_FOLD_INTERVAL_MS: u64 = 2_000;
/// The binary's default fold interval: the pattern scenarios run the aggregator's default write
/// shape, as a user who sets no fold flag does.
const FOLD_INTERVAL_MS_DEFAULT: u64 = hitcount_aggregator::config::FOLD_INTERVAL_MS_DEFAULT;

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "embedded-100k",
        backend: Backend::Embedded,
        aggregators: 1,
        hits_per_second: 100_000,
        resources: 100_000,
        fold_interval_ms: 0,
        setup: SetupMode::Existing,
    },
    Scenario {
        name: "embedded-300k",
        backend: Backend::Embedded,
        aggregators: 1,
        hits_per_second: 300_000,
        resources: 100_000,
        fold_interval_ms: 0,
        setup: SetupMode::Existing,
    },
    Scenario {
        name: "embedded-1m",
        backend: Backend::Embedded,
        aggregators: 1,
        hits_per_second: 1_000_000,
        resources: 100_000,
        fold_interval_ms: 0,
        setup: SetupMode::Existing,
    },
    Scenario {
        name: "pg-redis-100k",
        backend: Backend::PostgresRedis,
        aggregators: 1,
        hits_per_second: 100_000,
        resources: 100_000,
        fold_interval_ms: 0,
        setup: SetupMode::Existing,
    },
    Scenario {
        name: "pg-redis-300k",
        backend: Backend::PostgresRedis,
        aggregators: 1,
        hits_per_second: 300_000,
        resources: 100_000,
        fold_interval_ms: 0,
        setup: SetupMode::Existing,
    },
    Scenario {
        name: "pg-redis-1m",
        backend: Backend::PostgresRedis,
        aggregators: 1,
        hits_per_second: 1_000_000,
        resources: 100_000,
        fold_interval_ms: 0,
        setup: SetupMode::Existing,
    },
    Scenario {
        name: "pg-100k",
        backend: Backend::Postgres,
        aggregators: 1,
        hits_per_second: 100_000,
        resources: 100_000,
        fold_interval_ms: 0,
        setup: SetupMode::Existing,
    },
    Scenario {
        name: "pg-redis-10k-res-100k",
        backend: Backend::PostgresRedis,
        aggregators: 1,
        hits_per_second: 100_000,
        resources: 10_000,
        fold_interval_ms: 0,
        setup: SetupMode::Existing,
    },
    Scenario {
        name: "pg-redis-10k-res-1m",
        backend: Backend::PostgresRedis,
        aggregators: 1,
        hits_per_second: 1_000_000,
        resources: 10_000,
        fold_interval_ms: 0,
        setup: SetupMode::Existing,
    },
    Scenario {
        name: "pg-redis-100k-x2",
        backend: Backend::PostgresRedis,
        aggregators: 2,
        hits_per_second: 100_000,
        resources: 100_000,
        fold_interval_ms: 0,
        setup: SetupMode::Existing,
    },
    Scenario {
        name: "pg-redis-100k-x3",
        backend: Backend::PostgresRedis,
        aggregators: 3,
        hits_per_second: 100_000,
        resources: 100_000,
        fold_interval_ms: 0,
        setup: SetupMode::Existing,
    },
    Scenario {
        name: "embedded-inbox-100k",
        backend: Backend::Embedded,
        aggregators: 1,
        hits_per_second: 100_000,
        resources: 100_000,
        fold_interval_ms: INBOX_FOLD_INTERVAL_MS,
        setup: SetupMode::Existing,
    },
    Scenario {
        name: "embedded-inbox-300k",
        backend: Backend::Embedded,
        aggregators: 1,
        hits_per_second: 300_000,
        resources: 100_000,
        fold_interval_ms: INBOX_FOLD_INTERVAL_MS,
        setup: SetupMode::Existing,
    },
    Scenario {
        name: "embedded-inbox-1m",
        backend: Backend::Embedded,
        aggregators: 1,
        hits_per_second: 1_000_000,
        resources: 100_000,
        fold_interval_ms: INBOX_FOLD_INTERVAL_MS,
        setup: SetupMode::Existing,
    },
    Scenario {
        name: "pg-inbox-100k",
        backend: Backend::Postgres,
        aggregators: 1,
        hits_per_second: 100_000,
        resources: 100_000,
        fold_interval_ms: INBOX_FOLD_INTERVAL_MS,
        setup: SetupMode::Existing,
    },
    Scenario {
        name: "pg-inbox-300k",
        backend: Backend::Postgres,
        aggregators: 1,
        hits_per_second: 300_000,
        resources: 100_000,
        fold_interval_ms: INBOX_FOLD_INTERVAL_MS,
        setup: SetupMode::Existing,
    },
    Scenario {
        name: "pg-inbox-1m",
        backend: Backend::Postgres,
        aggregators: 1,
        hits_per_second: 1_000_000,
        resources: 100_000,
        fold_interval_ms: INBOX_FOLD_INTERVAL_MS,
        setup: SetupMode::Existing,
    },
    Scenario {
        name: "pg-redis-inbox-100k",
        backend: Backend::PostgresRedis,
        aggregators: 1,
        hits_per_second: 100_000,
        resources: 100_000,
        fold_interval_ms: INBOX_FOLD_INTERVAL_MS,
        setup: SetupMode::Existing,
    },
    Scenario {
        name: "pg-redis-inbox-300k",
        backend: Backend::PostgresRedis,
        aggregators: 1,
        hits_per_second: 300_000,
        resources: 100_000,
        fold_interval_ms: INBOX_FOLD_INTERVAL_MS,
        setup: SetupMode::Existing,
    },
    Scenario {
        name: "pg-redis-inbox-1m",
        backend: Backend::PostgresRedis,
        aggregators: 1,
        hits_per_second: 1_000_000,
        resources: 100_000,
        fold_interval_ms: INBOX_FOLD_INTERVAL_MS,
        setup: SetupMode::Existing,
    },
    Scenario {
        name: "pg-inbox-10k-res-1m",
        backend: Backend::Postgres,
        aggregators: 1,
        hits_per_second: 1_000_000,
        resources: 10_000,
        fold_interval_ms: INBOX_FOLD_INTERVAL_MS,
        setup: SetupMode::Existing,
    },
    Scenario {
        name: "embedded-pattern-100k",
        backend: Backend::Embedded,
        aggregators: 1,
        hits_per_second: 100_000,
        resources: 100_000,
        fold_interval_ms: FOLD_INTERVAL_MS_DEFAULT,
        setup: SetupMode::Pattern,
    },
    Scenario {
        name: "pg-redis-pattern-100k",
        backend: Backend::PostgresRedis,
        aggregators: 1,
        hits_per_second: 100_000,
        resources: 100_000,
        fold_interval_ms: FOLD_INTERVAL_MS_DEFAULT,
        setup: SetupMode::Pattern,
    },
    Scenario {
        name: "pg-inbox-1m-x3",
        backend: Backend::Postgres,
        aggregators: 3,
        hits_per_second: 1_000_000,
        resources: 100_000,
        fold_interval_ms: INBOX_FOLD_INTERVAL_MS,
        setup: SetupMode::Existing,
    },
];

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// The aggregator binary the scenarios run: `HITCOUNT_BENCH_AGGREGATOR` if set (a copy of an
/// earlier build, to measure a baseline in the same run), else the release build.
fn aggregator_binary() -> PathBuf {
    std::env::var_os("HITCOUNT_BENCH_AGGREGATOR")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("release/hitcount-aggregator"))
}

fn psql(database: &str, sql: &str) -> String {
    let output = Command::new("psql")
        .arg(format!("{DATABASE_SERVER}/{database}"))
        .args(["-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// CPU seconds (user + system) a process has used; 0 once it is gone.
fn cpu_seconds(pid: u32) -> f64 {
    i32::try_from(pid)
        .ok()
        .and_then(|pid| Process::new(pid).ok())
        .and_then(|process| process.stat().ok())
        .map(|stat| stat_cpu_seconds(&stat, false))
        .unwrap_or(0.0)
}

/// CPU seconds the machine's PostgreSQL has used: every `postgres` process, with the backends
/// that exited (counted in the postmaster, which waits for them).
fn postgres_cpu_seconds() -> f64 {
    let Ok(processes) = procfs::process::all_processes() else {
        return 0.0;
    };
    processes
        .filter_map(Result::ok)
        .filter_map(|process| process.stat().ok())
        .filter(|stat| stat.comm == "postgres")
        .map(|stat| stat_cpu_seconds(&stat, true))
        .sum()
}

/// CPU seconds used so far by the aggregators and by PostgreSQL, taken every
/// [`CPU_SAMPLE_PERIOD_MS`] from `started` until `sampling` is cleared.
#[derive(Debug, Clone, Copy)]
struct CpuSample {
    at_s: f64,
    aggregators: f64,
    postgres: f64,
}

/// How often the CPU of the aggregators and PostgreSQL is read during a run.
const CPU_SAMPLE_PERIOD_MS: u64 = 100;

fn cpu_sample(children: &[u32], started: Instant) -> CpuSample {
    CpuSample {
        at_s: started.elapsed().as_secs_f64(),
        aggregators: children.iter().map(|pid| cpu_seconds(*pid)).sum(),
        postgres: postgres_cpu_seconds(),
    }
}

/// Rows inserted and updated so far in the scenario's database.
fn rows_written(database: &str) -> f64 {
    psql(
        database,
        "SELECT coalesce(sum(n_tup_ins + n_tup_upd), 0) FROM pg_stat_user_tables",
    )
    .parse()
    .unwrap_or(0.0)
}

/// What the reader asks the aggregator for while the load runs, in turn, one request every
/// [`READ_PERIOD_MS`] (`{id}`: the hottest resource). `/healthz` reads no store: its latency is
/// the floor the machine's load puts under every request.
const READ_PROBES: [&str; 3] = [
    "/hits/{id}?window=24h&granularity=minute",
    "/hits/{id}?window=30d&granularity=hour",
    "/healthz",
];

/// Asks for [`READ_PROBES`] in turn until `until` (the end of the load) or until `reading` is
/// cleared: reads during verification, which reads every resource back, are not reads under
/// load. Returns each probe's latencies (ms) of successful answers, sorted; a failed read is left
/// out (the run's errors count them).
async fn read_while(
    reading: &std::sync::atomic::AtomicBool,
    until: Instant,
    base_url: &str,
    resource_id: &str,
) -> Vec<Vec<f64>> {
    let client = reqwest::Client::new();
    let urls: Vec<String> = READ_PROBES
        .iter()
        .map(|probe| format!("{base_url}{}", probe.replace("{id}", resource_id)))
        .collect();
    let mut latencies = vec![Vec::new(); urls.len()];
    for probe in (0..urls.len()).cycle() {
        if !reading.load(std::sync::atomic::Ordering::Relaxed) || Instant::now() >= until {
            break;
        }
        let started = Instant::now();
        if let Ok(answer) = client
            .get(&urls[probe])
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            && answer.status().is_success()
            && answer.bytes().await.is_ok()
        {
            latencies[probe].push(started.elapsed().as_secs_f64() * 1_000.0);
        }
        tokio::time::sleep(Duration::from_millis(READ_PERIOD_MS)).await;
    }
    for probe_latencies in &mut latencies {
        probe_latencies.sort_by(f64::total_cmp);
    }
    latencies
}

fn percentile(sorted: &[f64], share: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * share).round() as usize]
}

/// Raw batched upserts of 1000 rows (`INSERT ... SELECT FROM unnest ... ON CONFLICT DO UPDATE`)
/// into a keyed table of 100k existing rows, for `seconds`: what PostgreSQL takes here.
fn raw_upserts_per_second(seconds: u64) -> f64 {
    psql(
        "postgres",
        "DROP DATABASE IF EXISTS bench_scale_raw WITH (FORCE)",
    );
    psql("postgres", "CREATE DATABASE bench_scale_raw");
    psql(
        "bench_scale_raw",
        "CREATE TABLE cells (resource_id text, tier int2, bucket_ms int8, hit_count int8, PRIMARY KEY (resource_id, tier, bucket_ms));
         INSERT INTO cells SELECT 'r' || i, 0, 0, 1 FROM generate_series(0, 99999) i",
    );
    let statement = "INSERT INTO cells SELECT 'r' || (random() * 99999)::int, 0, 0, 1 FROM generate_series(1, 1000) \
                     ON CONFLICT (resource_id, tier, bucket_ms) DO UPDATE SET hit_count = cells.hit_count + 1";
    // Duplicate keys in one statement are refused by ON CONFLICT DO UPDATE; a DISTINCT ON keeps
    // each batch's keys unique.
    let statement = statement.replace(
        "SELECT 'r' || (random() * 99999)::int, 0, 0, 1 FROM generate_series(1, 1000)",
        "SELECT DISTINCT ON (id) id, 0, 0, 1 FROM (SELECT 'r' || (random() * 99999)::int AS id FROM generate_series(1, 1000)) k",
    );
    let script = format!("\\set ON_ERROR_STOP 1\n{statement};\n");
    let path = std::env::temp_dir().join("hitcount-bench-raw.sql");
    std::fs::write(&path, script).unwrap();
    let output = Command::new("pgbench")
        .arg(format!("{DATABASE_SERVER}/bench_scale_raw"))
        .args(["-n", "-c", "2", "-T", &seconds.to_string(), "-f"])
        .arg(&path)
        .output();
    match output {
        Ok(output) if output.status.success() => {
            let text = String::from_utf8_lossy(&output.stdout);
            let tps: f64 = text
                .lines()
                .find(|line| line.starts_with("tps"))
                .and_then(|line| line.split_whitespace().nth(2))
                .and_then(|value| value.parse().ok())
                .unwrap_or(0.0);
            // About 990 distinct keys in each batch of 1000 draws over 100k.
            tps * 995.0
        }
        _ => f64::NAN,
    }
}

/// How long a clean stop (SIGTERM: the last commits and the last fold) may take.
const STOP_WAIT_MAX: Duration = Duration::from_secs(120);

/// Stops the aggregators with SIGTERM and waits for them to exit, then for their backends'
/// statistics to reach PostgreSQL's views.
fn stop_cleanly(children: &mut [Child]) {
    for child in children.iter() {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
    }
    let deadline = Instant::now() + STOP_WAIT_MAX;
    for child in children.iter_mut() {
        while matches!(child.try_wait(), Ok(None)) {
            assert!(
                Instant::now() < deadline,
                "an aggregator did not stop within {STOP_WAIT_MAX:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    std::thread::sleep(Duration::from_secs(1));
}

struct Running {
    children: Vec<Child>,
    urls: Vec<String>,
    database: Option<String>,
    redis_prefix: Option<String>,
    _directory: tempfile::TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        // A scenario's hot tier is millions of keys; left for their hour they slow every other
        // user of the machine's Redis (the Spin edge tests timed out behind them).
        if let Some(prefix) = &self.redis_prefix {
            let pattern = format!("{{{prefix}}}:*");
            let _ = Command::new("sh")
                .arg("-c")
                .arg(format!("redis-cli --scan --pattern '{pattern}' | xargs -r -n 5000 redis-cli del > /dev/null"))
                .status();
        }
    }
}

/// The hottest resource's history before the run: every minute of the last [`HISTORY_MINUTES`]
/// and every hour of the last [`HISTORY_HOURS`], each with [`HISTORY_VISITORS_PER_CELL`]
/// visitors, so that the reader's 24 h and 30 d reads decode what a busy site's would (dense
/// sketches of 12 KiB each), not the run's few minutes.
const HISTORY_MINUTES: u64 = 24 * 60;
const HISTORY_HOURS: u64 = 30 * 24;
const HISTORY_VISITORS_PER_CELL: u64 = 2_000;
const MINUTE_MS: u64 = 60_000;

/// Imports the history of `resource_id`, all of it before the minute of `now_ms`, so the run's
/// verification (from its first minute on) does not see it.
async fn write_history(store: &Store, resource_id: &str, now_ms: u64) {
    let cell = |tier: Tier, bucket_ms: u64| {
        let mut visitors = Sketch::new();
        for visitor in 0..HISTORY_VISITORS_PER_CELL {
            visitors.insert(format!("history-{bucket_ms}-{visitor}").as_bytes());
        }
        TierCell {
            resource_id: resource_id.to_owned(),
            tier,
            cell: CountCell {
                bucket_ms,
                hits: 3 * HISTORY_VISITORS_PER_CELL,
                visitors,
            },
        }
    };
    let this_minute_ms = now_ms / MINUTE_MS * MINUTE_MS;
    let this_hour_ms = now_ms / HOUR_MS * HOUR_MS;
    let minutes =
        (1..=HISTORY_MINUTES).map(|back| cell(Tier::Minute, this_minute_ms - back * MINUTE_MS));
    let hours = (1..=HISTORY_HOURS).map(|back| cell(Tier::Hour, this_hour_ms - back * HOUR_MS));
    let import = Import {
        file_sha256: [7; 32],
        resources: Vec::new(),
        cells: minutes.chain(hours).collect(),
    };
    let outcome = store.import(import, now_ms).await.unwrap();
    assert!(
        matches!(outcome, ImportOutcome::Imported { .. }),
        "{outcome:?}"
    );
}

async fn prepare(scenario: &Scenario, loadgen: &Config) -> Running {
    let directory = tempfile::TempDir::new().unwrap();
    let database = (scenario.backend != Backend::Embedded).then(|| {
        let name = format!("bench_scale_{}", scenario.name.replace('-', "_"));
        psql(
            "postgres",
            &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        );
        psql("postgres", &format!("CREATE DATABASE {name}"));
        name
    });
    let store = match &database {
        Some(name) => Store::open_postgres(&format!("{DATABASE_SERVER}/{name}"))
            .await
            .unwrap(),
        None => Store::open_embedded(directory.path()).unwrap(),
    };
    let ids = loadgen.resource_ids();
    // Through a pattern, the aggregator creates every resource but the hot one, whose history
    // needs it to exist first.
    let written = match scenario.setup {
        SetupMode::Pattern => &ids[..1],
        SetupMode::Existing | SetupMode::Resources => &ids[..],
    };
    for chunk in written.chunks(RESOURCE_CHUNK) {
        let records = chunk
            .iter()
            .map(|id| ResourceRecord {
                id: id.clone(),
                name: id.clone(),
                retention_days: None,
                created_at_ms: 0,
            })
            .collect();
        store.create_resources_if_absent(records).await.unwrap();
    }
    write_history(&store, &ids[0], hitcount_process::now_ms()).await;
    drop(store);
    let binary = aggregator_binary();
    let prefix = format!(
        "bench-scale-{}-{}",
        scenario.name,
        hitcount_process::now_ms()
    );
    let mut children = Vec::new();
    let mut urls = Vec::new();
    for index in 0..scenario.aggregators {
        let port = hitcount_test_support::spare_port();
        let mut command = Command::new(&binary);
        command
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(directory.path())
            .args([
                "--admin-token",
                ADMIN_TOKEN,
                "--rate-limit-ip-per-second",
                "0",
                "--rate-limit-token-per-second",
                "0",
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(name) = &database {
            command
                .arg("--database-url")
                .arg(format!("{DATABASE_SERVER}/{name}"));
        }
        if scenario.backend == Backend::PostgresRedis {
            command.args(["--redis-url", REDIS_URL, "--redis-prefix", &prefix]);
        }
        // Always named: 0 is the direct shape, which is no store's default any more.
        command
            .arg("--fold-interval-ms")
            .arg(scenario.fold_interval_ms.to_string());
        children.push(command.spawn().unwrap_or_else(|error| {
            panic!(
                "{} ({error}): build it with cargo build --release -p hitcount-aggregator",
                binary.display()
            )
        }));
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(60);
        let client = reqwest::Client::new();
        while !client
            .get(format!("{url}/readyz"))
            .send()
            .await
            .is_ok_and(|answer| answer.status().is_success())
        {
            assert!(
                Instant::now() < deadline,
                "aggregator {index} never became ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        urls.push(url);
    }
    let redis_prefix = (scenario.backend == Backend::PostgresRedis).then_some(prefix);
    Running {
        children,
        urls,
        database,
        redis_prefix,
        _directory: directory,
    }
}

async fn measure(scenario: &Scenario, duration_s: u64) -> String {
    let mut arguments = vec!["hitcount-loadgen".to_owned()];
    let rate = scenario.hits_per_second.to_string();
    let resources = scenario.resources.to_string();
    let duration = duration_s.to_string();
    for argument in [
        "--admin-token",
        ADMIN_TOKEN,
        "--setup",
        scenario.setup.to_possible_value().unwrap().get_name(),
        "--edges",
        "100",
        "--hits-per-second",
        &rate,
        "--resources",
        &resources,
        "--duration-s",
        &duration,
        "--window-ms",
        "1000",
        "--zipf",
        "1.0",
        "--quiet",
    ] {
        arguments.push(argument.to_owned());
    }
    let mut config = Config::try_parse_from(&arguments).unwrap();
    let mut running = prepare(scenario, &config).await;
    config.aggregators = running.urls.clone();
    let pids: Vec<u32> = running.children.iter().map(Child::id).collect();
    let rows_before = running.database.as_deref().map(rows_written);
    let reading = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let reader = {
        let reading = std::sync::Arc::clone(&reading);
        let until = Instant::now() + Duration::from_secs(config.duration_s);
        let base_url = running.urls[0].clone();
        let resource_id = config.resource_ids()[0].clone();
        // A thread and runtime of its own: on the load generator's runtime, a read's latency
        // would include the wait for a worker busy making hits, which no real reader has.
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(read_while(&reading, until, &base_url, &resource_id))
        })
    };
    let started = Instant::now();
    let sampler = {
        let reading = std::sync::Arc::clone(&reading);
        tokio::spawn(async move {
            let mut samples = vec![cpu_sample(&pids, started)];
            while reading.load(std::sync::atomic::Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(CPU_SAMPLE_PERIOD_MS)).await;
                samples.push(cpu_sample(&pids, started));
            }
            samples
        })
    };
    let outcome = hitcount_loadgen::run(config).await.unwrap();
    let wall_s = started.elapsed().as_secs_f64();
    reading.store(false, std::sync::atomic::Ordering::Relaxed);
    let latencies = tokio::task::spawn_blocking(move || reader.join().unwrap())
        .await
        .unwrap();
    let samples = sampler.await.unwrap();
    let report = &outcome.report;
    // Load and drain, not verification: the rows and CPU of taking the deltas.
    let busy_s = report.duration_s + report.drain_s;
    let (first, busy) = (
        samples[0],
        samples
            .iter()
            .copied()
            .take_while(|sample| sample.at_s <= busy_s)
            .last()
            .unwrap_or(samples[0]),
    );
    let millions = (report.hits_acknowledged as f64 / 1e6).max(1e-9);
    let per_million = format!(
        "{:.2} / {:.2} / {:.2}",
        (busy.aggregators - first.aggregators) / millions,
        (busy.postgres - first.postgres) / millions,
        report.cpu_s.unwrap_or(f64::NAN) / millions,
    );
    let rows = match (rows_before, running.database.as_deref()) {
        (Some(before), Some(database)) => {
            format!("{:.0}", (rows_written(database) - before) / wall_s)
        }
        _ => "-".to_owned(),
    };
    // Every row the acknowledged hits cost, the folds after the run included: a clean stop
    // folds every row still in the inbox.
    let rows_per_hit = match (rows_before, running.database.as_deref()) {
        (Some(before), Some(database)) => {
            stop_cleanly(&mut running.children);
            format!(
                "{:.4}",
                (rows_written(database) - before) / (report.hits_acknowledged.max(1) as f64)
            )
        }
        _ => "-".to_owned(),
    };
    let line = format!(
        "| {} | {} | {} | {:.0} | {:.0} | {} | {:.0} / {:.0} | {} | {} | {} | {:.2} | {} | {} |",
        scenario.name,
        scenario.aggregators,
        scenario.resources,
        report.hits_offered as f64 / report.duration_s,
        report.hits_acknowledged as f64 / busy_s,
        report
            .last_30s_min_ack_ratio
            .map_or("-".to_owned(), |ratio| format!("{ratio:.3}")),
        report.ack_p50_ms.unwrap_or(f64::NAN),
        report.ack_p99_ms.unwrap_or(f64::NAN),
        if report.verification.verified && report.errors == 0 {
            "yes".to_owned()
        } else {
            format!(
                "no ({} mismatches, {} errors)",
                report.verification.mismatches, report.errors
            )
        },
        rows,
        rows_per_hit,
        (busy.aggregators - first.aggregators) / (busy.at_s - first.at_s).max(1e-3),
        per_million,
        latencies
            .iter()
            .map(|sorted| format!(
                "{:.1} / {:.1}",
                percentile(sorted, 0.5),
                percentile(sorted, 0.99)
            ))
            .collect::<Vec<_>>()
            .join(" ; "),
    );
    eprintln!("{}", serde_json::to_string(report).unwrap());
    line
}

#[tokio::main]
async fn main() {
    // `cargo test` runs benches with `--bench` absent; only a real `cargo bench` measures.
    if !std::env::args().any(|argument| argument == "--bench") {
        return;
    }
    let duration_s: u64 = std::env::var("HITCOUNT_BENCH_SCALE_S")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(60);
    let only: Option<Vec<String>> = std::env::var("HITCOUNT_BENCH_SCALE_ONLY")
        .ok()
        .map(|names| names.split(',').map(str::to_owned).collect());
    println!(
        "raw PostgreSQL upserts (1000-row unnest batches, 2 clients, 10 s): {:.0} rows/s",
        raw_upserts_per_second(10)
    );
    println!();
    println!(
        "| scenario | aggregators | resources | offered hits/s | acknowledged hits/s | last 30 s min ack ratio | ack p50 / p99 ms | verified | PostgreSQL rows/s | PostgreSQL rows per acknowledged hit, after a clean stop | aggregator CPU cores | CPU core-s per million acknowledged: aggregator / PostgreSQL / load generator | GET p50 / p99 ms: 24 h minute ; 30 d hour ; /healthz (floor) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for scenario in SCENARIOS {
        if only
            .as_ref()
            .is_some_and(|only| !only.iter().any(|name| name == scenario.name))
        {
            continue;
        }
        println!("{}", measure(scenario, duration_s).await);
    }
}
