//! Running wrk (Debian's `wrk` package) for the benchmarks, and reading its report; processes'
//! CPU time.

use std::process::Command;

use procfs::process::{Process, Stat};

/// What one wrk run reported, and the CPU this process used meanwhile.
#[derive(Debug, Clone, Copy)]
pub struct WrkReport {
    pub requests_per_second: f64,
    pub requests: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub non_2xx: u64,
    /// CPU time (user and system, every thread) this process used during the run, per request,
    /// in microseconds: the cost of the servers under test when they run in the bench's process
    /// (wrk is a process of its own). Steadier than the rate on a shared machine, where other
    /// tenants take cores but not this process's CPU time.
    pub server_cpu_us_per_request: f64,
}

/// CPU seconds (user and system) a process's `/proc/<pid>/stat` counts: its own, and with
/// `children` also those of its children that exited and were waited for.
pub fn cpu_seconds(stat: &Stat, children: bool) -> f64 {
    let exited = match children {
        true => u64::try_from(stat.cutime + stat.cstime).unwrap_or(0),
        false => 0,
    };
    let ticks = stat.utime + stat.stime + exited;
    ticks as f64 / procfs::ticks_per_second() as f64
}

/// CPU seconds (user and system, every thread) this process has used.
pub fn own_cpu_seconds() -> f64 {
    let stat = Process::myself().and_then(|process| process.stat());
    cpu_seconds(
        &stat.expect("/proc/self/stat is readable (the benches run on Linux)"),
        false,
    )
}

/// Runs `wrk -t1 -c{connections} -d{seconds}s --latency` against `url` with the Lua `script`
/// (which makes the requests), and parses its report. Panics if wrk is not installed.
pub fn run_wrk(url: &str, script: &str, connections: u32, seconds: u64) -> WrkReport {
    let script_path = std::env::temp_dir().join(format!(
        "hitcount-wrk-{}-{}.lua",
        std::process::id(),
        std::thread::current()
            .name()
            .unwrap_or("main")
            .replace(':', "-")
    ));
    std::fs::write(&script_path, script).expect("write the wrk script");
    let cpu_before_s = own_cpu_seconds();
    let output = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--latency",
            "-s",
        ])
        .arg(&script_path)
        .arg(url)
        .output()
        .expect("wrk is installed (apt-get install wrk)");
    let cpu_s = own_cpu_seconds() - cpu_before_s;
    let _ = std::fs::remove_file(&script_path);
    let mut report = parse_report(&String::from_utf8_lossy(&output.stdout));
    report.server_cpu_us_per_request = cpu_s * 1e6 / report.requests.max(1) as f64;
    report
}

fn parse_report(text: &str) -> WrkReport {
    let field = |prefix: &str| {
        text.lines()
            .find(|line| line.trim_start().starts_with(prefix))
            .and_then(|line| line.split_whitespace().nth(1).map(str::to_owned))
            .unwrap_or_default()
    };
    let requests = text
        .lines()
        .find(|line| line.contains("requests in"))
        .and_then(|line| line.split_whitespace().next())
        .and_then(|count| count.parse().ok())
        .unwrap_or(0);
    let non_2xx = text
        .lines()
        .find(|line| line.contains("Non-2xx"))
        .and_then(|line| line.split(':').nth(1))
        .and_then(|count| count.trim().parse().ok())
        .unwrap_or(0);
    WrkReport {
        requests_per_second: field("Requests/sec:").parse().unwrap_or(0.0),
        requests,
        p50_ms: latency_ms(&field("50%")),
        p99_ms: latency_ms(&field("99%")),
        non_2xx,
        server_cpu_us_per_request: 0.0,
    }
}

/// wrk prints latencies as `812.00us`, `1.25ms` or `1.02s`.
fn latency_ms(text: &str) -> f64 {
    let (number, unit) =
        text.split_at(text.find(|c: char| c.is_alphabetic()).unwrap_or(text.len()));
    let value: f64 = number.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => value / 1_000.0,
        "ms" => value,
        "s" => value * 1_000.0,
        _ => f64::NAN,
    }
}

/// A fresh database on the machine's PostgreSQL (`HITCOUNT_BENCH_DATABASE_SERVER`, default
/// `postgres://root@127.0.0.1:5432`), dropped first if a previous run left it; its URL.
pub fn bench_database(name: &str) -> String {
    let server = std::env::var("HITCOUNT_BENCH_DATABASE_SERVER")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432".to_owned());
    for sql in [
        format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        format!("CREATE DATABASE {name}"),
    ] {
        let status = Command::new("psql")
            .arg(format!("{server}/postgres"))
            .args(["-q", "-c", &sql])
            .status()
            .unwrap_or_else(|error| panic!("psql runs: {error}"));
        assert!(status.success(), "{sql}");
    }
    format!("{server}/{name}")
}

/// The value at `fraction` (0.99 for p99) of ascending `sorted` values.
/// The machine a benchmark ran on, as its report names it: cores and CPU model.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|line| line.starts_with("model name"))
                .map(|line| line.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    format!("{cores} cores, {model}")
}

pub fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    sorted[((sorted.len() as f64 * fraction).ceil() as usize).saturating_sub(1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_wrk_report() {
        let report = parse_report(
            "Running 10s test @ http://127.0.0.1:1/hit
  1 threads and 64 connections
  Latency Distribution
     50%  421.00us
     99%    1.25ms
  1061234 requests in 10.00s, 90.07MB read
  Non-2xx or 3xx responses: 12
Requests/sec: 106123.40
",
        );
        assert_eq!(report.requests, 1_061_234);
        assert_eq!(report.non_2xx, 12);
        assert!((report.requests_per_second - 106_123.4).abs() < 1e-6);
        assert!((report.p50_ms - 0.421).abs() < 1e-9);
        assert!((report.p99_ms - 1.25).abs() < 1e-9);
    }

    #[test]
    fn this_process_cpu_time_grows_with_work() {
        let before = own_cpu_seconds();
        let started = std::time::Instant::now();
        let mut spin = 0u64;
        while started.elapsed() < std::time::Duration::from_millis(300) {
            spin = std::hint::black_box(spin.wrapping_add(1));
        }
        let used = own_cpu_seconds() - before;
        // 300 ms of spinning on one thread, of which a shared machine may give it a part; the
        // kernel counts in ticks of 10 ms.
        assert!((0.05..1.0).contains(&used), "{used} s");
    }
}
