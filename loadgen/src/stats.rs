//! Counters of the run, per-second bins for the acknowledgement ratio, latency histograms, the
//! progress line, and this process's CPU time.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::Shared;
use crate::edge::Edge;

/// Errors listed in the report (all are counted).
pub const ERROR_EXAMPLES_MAX: usize = 10;
/// The ratio is the worst of the run's last this many seconds.
pub const RATIO_SECONDS: usize = 30;
/// A hit counts as acknowledged in the ratio of the second it was offered in only if its
/// acknowledgement came within this long after that second ended: the headline's ack p99 bound.
/// Later ones (a backlog drained at the end) are acknowledged, but not on time.
pub const RATIO_ACK_ON_TIME_MS: u64 = 1_000;
/// Latencies are recorded in microseconds up to this (10 minutes), at three significant digits.
const LATENCY_US_MAX: u64 = 600_000_000;

fn histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts, so this cannot fail.
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).unwrap_or_else(|_| unreachable!())
}

/// How the sends of the run went.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sends {
    /// Batches sent at least once.
    pub batches_sent: u64,
    /// Sends after the first of a batch.
    pub resends: u64,
    pub batches_acknowledged: u64,
    pub duplicate_copies_sent: u64,
    /// 200 answers that said `duplicate` (copies, and resends whose first answer was lost).
    pub duplicate_answers: u64,
    pub responses_429: u64,
    pub responses_503: u64,
    pub network_errors: u64,
    /// The first network error's message.
    pub network_error_example: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Counters {
    pub hits_offered: u64,
    pub hits_shed: u64,
    pub hits_acknowledged: u64,
    pub sends: Sends,
    pub errors: u64,
    pub error_examples: Vec<String>,
    /// Hits offered per second since the first window began, and of those the hits acknowledged
    /// within [`RATIO_ACK_ON_TIME_MS`] of their second's end.
    offered_bins: Vec<u64>,
    acknowledged_on_time_bins: Vec<u64>,
    latency: Histogram<u64>,
}

#[derive(Debug)]
struct Inner {
    counters: Counters,
    /// Latencies since the last progress line.
    recent: Histogram<u64>,
}

#[derive(Debug)]
pub struct Stats {
    origin: Instant,
    inner: Mutex<Inner>,
}

fn bump(bins: &mut Vec<u64>, bin: usize, hits: u64) {
    if bins.len() <= bin {
        bins.resize(bin + 1, 0);
    }
    bins[bin] += hits;
}

impl Stats {
    /// `origin`: when the first window begins; seconds are counted from there.
    pub fn new(origin: Instant) -> Self {
        Self {
            origin,
            inner: Mutex::new(Inner {
                counters: Counters {
                    hits_offered: 0,
                    hits_shed: 0,
                    hits_acknowledged: 0,
                    sends: Sends::default(),
                    errors: 0,
                    error_examples: Vec::new(),
                    offered_bins: Vec::new(),
                    acknowledged_on_time_bins: Vec::new(),
                    latency: histogram(),
                },
                recent: histogram(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn since_origin(&self) -> Duration {
        Instant::now().saturating_duration_since(self.origin)
    }

    /// The second of the run it is now.
    pub fn second(&self) -> usize {
        self.since_origin().as_secs() as usize
    }

    /// Hits offered in `second`.
    pub fn offered(&self, second: usize, hits: u64) {
        let mut inner = self.lock();
        inner.counters.hits_offered += hits;
        bump(&mut inner.counters.offered_bins, second, hits);
    }

    pub fn shed(&self, hits: u64) {
        self.lock().counters.hits_shed += hits;
    }

    /// A batch of `hits` acknowledged, which were offered in the `seconds` given (second, hits).
    pub fn acknowledged(&self, hits: u64, latency: Duration, seconds: &[(usize, u64)]) {
        let now_ms = u64::try_from(self.since_origin().as_millis()).unwrap_or(u64::MAX);
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let mut inner = self.lock();
        inner.counters.hits_acknowledged += hits;
        inner.counters.sends.batches_acknowledged += 1;
        for (second, offered) in seconds {
            let on_time = (*second as u64 + 1) * 1_000 + RATIO_ACK_ON_TIME_MS;
            if now_ms <= on_time {
                bump(
                    &mut inner.counters.acknowledged_on_time_bins,
                    *second,
                    *offered,
                );
            }
        }
        inner.counters.latency.saturating_record(micros);
        inner.recent.saturating_record(micros);
    }

    /// A send of a batch: its first, or a resend.
    pub fn sent(&self, first: bool) {
        let mut inner = self.lock();
        if first {
            inner.counters.sends.batches_sent += 1;
        } else {
            inner.counters.sends.resends += 1;
        }
    }

    pub fn copy_sent(&self) {
        self.lock().counters.sends.duplicate_copies_sent += 1;
    }

    pub fn duplicate_answer(&self) {
        self.lock().counters.sends.duplicate_answers += 1;
    }

    pub fn busy(&self, status: u16) {
        let mut inner = self.lock();
        if status == 429 {
            inner.counters.sends.responses_429 += 1;
        } else {
            inner.counters.sends.responses_503 += 1;
        }
    }

    pub fn network_error(&self, message: String) {
        let mut inner = self.lock();
        inner.counters.sends.network_errors += 1;
        inner
            .counters
            .sends
            .network_error_example
            .get_or_insert(message);
    }

    pub fn error(&self, message: String) {
        let mut inner = self.lock();
        inner.counters.errors += 1;
        if inner.counters.error_examples.len() < ERROR_EXAMPLES_MAX {
            inner.counters.error_examples.push(message);
        }
    }

    pub fn snapshot(&self) -> Counters {
        self.lock().counters.clone()
    }

    /// The counters, and the p50 and p99 (ms) of latencies since the last call.
    fn take_recent(&self) -> (Counters, Option<f64>, Option<f64>) {
        let mut inner = self.lock();
        let percentiles = (!inner.recent.is_empty()).then(|| {
            (
                inner.recent.value_at_quantile(0.5) as f64 / 1_000.0,
                inner.recent.value_at_quantile(0.99) as f64 / 1_000.0,
            )
        });
        inner.recent.reset();
        (
            inner.counters.clone(),
            percentiles.map(|(p50, _)| p50),
            percentiles.map(|(_, p99)| p99),
        )
    }
}

impl Counters {
    /// Acknowledgement latency at quantile `q` (1.0: the maximum), ms.
    pub fn latency_ms(&self, q: f64) -> Option<f64> {
        (!self.latency.is_empty()).then(|| {
            let micros = if q >= 1.0 {
                self.latency.max()
            } else {
                self.latency.value_at_quantile(q)
            };
            micros as f64 / 1_000.0
        })
    }

    /// Over the [`RATIO_SECONDS`] seconds that end with the last second in which hits were
    /// offered, the worst share of a second's offered hits acknowledged on time (within
    /// [`RATIO_ACK_ON_TIME_MS`] of the second's end); seconds in which nothing was offered are
    /// skipped. At most 1: each hit counts in the second it was offered in, once.
    pub fn min_ack_ratio(&self) -> Option<f64> {
        let last = self.offered_bins.iter().rposition(|hits| *hits > 0)?;
        let first = (last + 1).saturating_sub(RATIO_SECONDS);
        (first..=last)
            .filter(|bin| self.offered_bins[*bin] > 0)
            .map(|bin| {
                let on_time = self
                    .acknowledged_on_time_bins
                    .get(bin)
                    .copied()
                    .unwrap_or(0);
                on_time as f64 / self.offered_bins[bin] as f64
            })
            .reduce(f64::min)
    }
}

/// CPU time (user and system) this process has used, from `/proc/self/stat`; `None` where
/// there is no such file.
pub fn cpu_seconds() -> Option<f64> {
    let stat = procfs::process::Process::myself().ok()?.stat().ok()?;
    Some((stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64)
}

fn format_ms(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |ms| format!("{ms:.1} ms"))
}

/// One line a second on stderr until aborted.
pub async fn progress_lines(shared: Arc<Shared>, edges: Arc<Vec<Edge>>) {
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut last = shared.stats.snapshot();
    let mut last_cpu = cpu_seconds();
    let mut last_at = Instant::now();
    loop {
        tick.tick().await;
        let (now, p50, p99) = shared.stats.take_recent();
        let cpu = cpu_seconds();
        let elapsed = last_at.elapsed().as_secs_f64().max(1e-3);
        last_at = Instant::now();
        let rate = |now: u64, before: u64| (now - before) as f64 / elapsed;
        let cpu_percent = cpu.zip(last_cpu).map_or_else(
            || "-".to_owned(),
            |(now, before)| format!("{:.0}%", (now - before) / elapsed * 100.0),
        );
        let waiting: usize = edges.iter().map(Edge::batches_waiting).sum();
        eprintln!(
            "hitcount-loadgen {:>4} s: offered {:.0} hits/s, acknowledged {:.0} hits/s, ack p50 {} p99 {}, \
             {waiting} batches waiting, shed {}, 429: {}, 503: {}, network errors: {}, errors: {}, cpu {cpu_percent}",
            started.elapsed().as_secs(),
            rate(now.hits_offered, last.hits_offered),
            rate(now.hits_acknowledged, last.hits_acknowledged),
            format_ms(p50),
            format_ms(p99),
            now.hits_shed,
            now.sends.responses_429,
            now.sends.responses_503,
            now.sends.network_errors,
            now.errors,
        );
        last = now;
        last_cpu = cpu;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::OfferedSeconds;

    #[test]
    fn the_ratio_is_the_worst_of_the_last_thirty_offered_seconds() {
        let mut counters = Stats::new(Instant::now()).snapshot();
        assert_eq!(counters.min_ack_ratio(), None);
        // Seconds 0..40 offered 100 each; second 5 (outside the last 30) acknowledged none on
        // time, second 20 half.
        counters.offered_bins = vec![100; 40];
        counters.acknowledged_on_time_bins = vec![100; 40];
        counters.acknowledged_on_time_bins[5] = 0;
        counters.acknowledged_on_time_bins[20] = 50;
        assert_eq!(counters.min_ack_ratio(), Some(0.5));
        counters.offered_bins.push(0);
        assert_eq!(
            counters.min_ack_ratio(),
            Some(0.5),
            "empty trailing seconds are skipped"
        );
        assert!(cpu_seconds().is_some_and(|seconds| seconds >= 0.0));
    }

    #[test]
    fn hits_count_in_the_second_they_were_offered_if_acknowledged_on_time() {
        // The origin 3.5 s ago: it is second 3 now.
        let stats = Stats::new(Instant::now() - Duration::from_millis(3_500));
        stats.offered(1, 10);
        stats.offered(2, 10);
        stats.offered(3, 10);
        let offered = OfferedSeconds::default();
        offered.push(1, 10);
        offered.push(2, 10);
        offered.push(3, 10);
        offered.push(3, 99);
        offered.withdraw_last();
        // One batch of 15 hits: second 1's ten (ended 2.5 s ago, past the bound) and five of
        // second 2's (ended 0.5 s ago, on time).
        let first = offered.take(15);
        assert_eq!(first, [(1, 10), (2, 5)]);
        stats.acknowledged(15, Duration::from_millis(5), &first);
        let rest = offered.take(15);
        assert_eq!(rest, [(2, 5), (3, 10)], "the shed window was withdrawn");
        stats.acknowledged(15, Duration::from_millis(5), &rest);
        let counters = stats.snapshot();
        assert_eq!(counters.acknowledged_on_time_bins, [0, 0, 10, 10]);
        assert_eq!(
            counters.min_ack_ratio(),
            Some(0.0),
            "second 1 was acknowledged late"
        );
        assert!(offered.take(1).is_empty());
    }
}
