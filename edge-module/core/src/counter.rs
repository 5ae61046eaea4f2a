//! One edge's window: hits in, delta entries out.

use hitcount_wire::journal::put_journal_record;
use hitcount_wire::{DeltaEntry, MINUTE_MS, WindowCounts};

use crate::VisitorHasher;
use crate::filter::{self, HitRequest, Rejection};
use crate::filter::{BotPolicy, BotVerdicts};
use hitcount_wire::DAY_MS;

/// What `record` did with a hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Counted.
    Counted,
    /// Not counted, for this reason (the caller reports it, e.g. in a response header).
    Rejected(Rejection),
    /// Not counted: the window holds its maximum of distinct counters. Flush, then record again.
    Full,
}

/// A closed window, ready for [`crate::Delivery::add_window`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosedWindow {
    /// Which window this was: 1 for an edge's first, one more for each after.
    pub generation: u64,
    pub start_ms: u64,
    pub end_ms: u64,
    pub hits: u64,
    pub entries: Vec<DeltaEntry>,
}

#[derive(Debug, Clone)]
pub struct EdgeCounter {
    window: WindowCounts,
    visitors: VisitorHasher,
    verdicts: BotVerdicts,
    window_start_ms: Option<u64>,
    /// The open window's generation. Journal records carry it, and a sealed batch names the
    /// last generation it holds, so a recovering edge knows which records are already in one.
    generation: u64,
    /// Records of counted hits not yet taken by the host, when the host keeps a spool.
    journal: Option<Vec<u8>>,
}

impl EdgeCounter {
    /// `secret` keys the daily visitor salt (share it across a deployment's edges);
    /// `entries_max` bounds distinct (resource, minute) counters per window.
    pub fn new(secret: &[u8], entries_max: usize) -> Self {
        Self {
            window: WindowCounts::with_hash_key(
                entries_max,
                crate::visitor::window_map_key(secret),
            ),
            visitors: VisitorHasher::new(secret),
            verdicts: BotVerdicts::default(),
            window_start_ms: None,
            generation: 1,
            journal: None,
        }
    }

    /// Keeps a journal record of every counted hit, for [`EdgeCounter::take_journal`].
    pub fn with_journal(mut self) -> Self {
        self.journal = Some(Vec::new());
        self
    }

    /// Refuses (or counts) user agents as `policy` says; production refuses HTTP clients.
    pub fn with_bot_policy(mut self, policy: BotPolicy) -> Self {
        self.verdicts = BotVerdicts::new(policy);
        self
    }

    /// The open window's generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The journal records written since the last call (empty without a journal).
    pub fn take_journal(&mut self) -> Vec<u8> {
        self.journal
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    pub fn record(&mut self, hit: &HitRequest<'_>, now_ms: u64) -> Outcome {
        // The salt day follows the edge's clock, not the client's claimed time. The user agent's
        // digest is made once: the bot test looks its verdict up by it, the visitor hash takes it.
        let mut digest = None;
        let (visitors, verdicts) = (&mut self.visitors, &mut self.verdicts);
        let checked = filter::check_with(hit, now_ms, |user_agent| {
            let made = visitors.user_agent_digest(now_ms, user_agent);
            digest = Some(made);
            verdicts.is_bot(now_ms / DAY_MS, made, user_agent)
        });
        let at_ms = match checked {
            Ok(at_ms) => at_ms,
            Err(rejection) => return Outcome::Rejected(rejection),
        };
        // A hit that passed the checks passed the bot test, which made the digest.
        let digest =
            digest.unwrap_or_else(|| self.visitors.user_agent_digest(now_ms, hit.user_agent));
        let visitor = self
            .visitors
            .hash_with_digest(now_ms, hit.site, hit.client_address, digest);
        self.record_hashed(hit.resource_id, at_ms / MINUTE_MS, visitor, now_ms)
    }

    /// Counts a hit that was validated and hashed before: what `record` does after its checks,
    /// and how journal records are replayed.
    pub fn record_hashed(
        &mut self,
        resource_id: &str,
        minute: u64,
        visitor: u64,
        now_ms: u64,
    ) -> Outcome {
        match self.window.record(resource_id, minute, 1, Some(visitor)) {
            Ok(()) => {
                self.window_start_ms.get_or_insert(now_ms);
                if let Some(journal) = &mut self.journal {
                    put_journal_record(journal, self.generation, resource_id, minute, visitor);
                }
                Outcome::Counted
            }
            Err(_) => Outcome::Full,
        }
    }

    /// Hits in the open window.
    pub fn hits(&self) -> u64 {
        self.window.hits()
    }

    /// Distinct counters in the open window.
    pub fn len(&self) -> usize {
        self.window.len()
    }

    pub fn is_empty(&self) -> bool {
        self.window.is_empty()
    }

    /// Unflushed hits for one resource, for read-your-writes answers.
    pub fn hits_for(&self, resource_id: &str) -> u64 {
        self.window.hits_for(resource_id)
    }

    /// Reopens a window that [`EdgeCounter::flush`] closed and nobody could take, exactly as it
    /// was: its counters (which were drained from this window, so they fit), its start and its
    /// generation. Nothing may have been recorded since the flush.
    pub fn reopen(&mut self, window: ClosedWindow) {
        assert!(
            self.window_start_ms.is_none() && self.window.hits() == 0,
            "a window reopens only into an empty counter"
        );
        assert_eq!(
            window.generation + 1,
            self.generation,
            "the window reopened is the one just closed"
        );
        for entry in &window.entries {
            let restored = self.window.merge_entry(entry);
            debug_assert!(restored.is_ok());
        }
        self.window_start_ms = Some(window.start_ms);
        self.generation = window.generation;
    }

    /// Closes the window at `now_ms`; `None` if nothing was counted.
    pub fn flush(&mut self, now_ms: u64) -> Option<ClosedWindow> {
        let start_ms = self.window_start_ms.take()?;
        let hits = self.window.hits();
        let entries = self.window.drain();
        debug_assert!(!entries.is_empty());
        let generation = self.generation;
        self.generation += 1;
        Some(ClosedWindow {
            generation,
            start_ms: start_ms.min(now_ms),
            end_ms: now_ms,
            hits,
            entries,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const BROWSER: &str =
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0";
    pub(crate) const NOW_MS: u64 = 1_780_000_000_000;

    /// A browser's hit on `resource_id` from `client_address` (shared with `counting.rs`).
    pub(crate) fn hit<'a>(resource_id: &'a str, client_address: &'a str) -> HitRequest<'a> {
        HitRequest {
            resource_id,
            site: "example.com",
            client_address,
            user_agent: BROWSER,
            ..HitRequest::default()
        }
    }

    #[test]
    fn counts_hits_and_visitors_per_resource_and_minute() {
        let mut counter = EdgeCounter::new(b"secret", 100);
        for address in ["1.1.1.1", "2.2.2.2", "1.1.1.1"] {
            assert_eq!(
                counter.record(&hit("home", address), NOW_MS),
                Outcome::Counted
            );
        }
        assert_eq!(
            counter.record(&hit("blog", "1.1.1.1"), NOW_MS + 60_000),
            Outcome::Counted
        );
        let mut bot = hit("home", "3.3.3.3");
        bot.user_agent = "Googlebot/2.1";
        assert_eq!(
            counter.record(&bot, NOW_MS),
            Outcome::Rejected(Rejection::Bot)
        );
        assert_eq!(counter.hits_for("home"), 3);
        let window = counter.flush(NOW_MS + 61_000).unwrap();
        assert_eq!(window.hits, 4);
        assert_eq!((window.start_ms, window.end_ms), (NOW_MS, NOW_MS + 61_000));
        let summary: Vec<_> = window
            .entries
            .iter()
            .map(|entry| {
                (
                    entry.resource_id.as_str(),
                    entry.minute,
                    entry.hits,
                    entry.visitors.count(),
                )
            })
            .collect();
        let minute = NOW_MS / MINUTE_MS;
        assert_eq!(
            summary,
            vec![("blog", minute + 1, 1, 1), ("home", minute, 3, 2)]
        );
        assert!(counter.flush(NOW_MS + 62_000).is_none());
    }

    #[test]
    fn a_hit_counts_in_the_minute_its_beacon_names() {
        let mut counter = EdgeCounter::new(b"secret", 100);
        let mut earlier = hit("home", "1.1.1.1");
        // Three and a half minutes before the edge's clock: still within the last 24 hours.
        earlier.timestamp_ms = Some(NOW_MS - 210_000);
        assert_eq!(counter.record(&earlier, NOW_MS), Outcome::Counted);
        // The bot verdicts are remembered for the edge's day, not the beacon's.
        assert!(
            format!("{counter:?}").contains(&format!("day: {}", NOW_MS / DAY_MS)),
            "{counter:?}"
        );
        let window = counter.flush(NOW_MS + 1).unwrap();
        assert_eq!(window.entries.len(), 1);
        assert_eq!(window.entries[0].minute, (NOW_MS - 210_000) / MINUTE_MS);
    }

    #[test]
    fn journal_records_carry_the_generation_and_replay_to_the_same_window() {
        let mut counter = EdgeCounter::new(b"secret", 10).with_journal();
        counter.record(&hit("a", "1.1.1.1"), NOW_MS);
        let mut bot = hit("a", "2.2.2.2");
        bot.user_agent = "curl/8.0";
        counter.record(&bot, NOW_MS);
        let first = hitcount_wire::journal::decode_journal(&counter.take_journal()).unwrap();
        assert_eq!(first.len(), 1, "only counted hits are journaled");
        assert_eq!(first[0].generation, 1);
        assert!(counter.take_journal().is_empty());
        let closed = counter.flush(NOW_MS + 1).unwrap();
        assert_eq!(closed.generation, 1);
        assert_eq!(counter.generation(), 2);
        counter.record(&hit("a", "3.3.3.3"), NOW_MS + 2);
        let second = hitcount_wire::journal::decode_journal(&counter.take_journal()).unwrap();
        assert_eq!(second[0].generation, 2);

        // Replaying the records into a fresh counter gives the same entries.
        let mut replayed = EdgeCounter::new(b"other-secret", 10);
        for record in first.iter().chain(&second) {
            assert_eq!(
                replayed.record_hashed(&record.resource_id, record.minute, record.visitor, NOW_MS),
                Outcome::Counted
            );
        }
        let mut original = closed.entries;
        let open = counter.flush(NOW_MS + 3).unwrap();
        original[0].hits += open.entries[0].hits;
        original[0].visitors.merge(&open.entries[0].visitors);
        assert_eq!(replayed.flush(NOW_MS + 4).unwrap().entries, original);
    }

    #[test]
    fn a_full_window_refuses_new_counters_without_dropping_counted_ones() {
        let mut counter = EdgeCounter::new(b"secret", 2);
        assert!(counter.is_empty());
        assert_eq!(
            counter.record(&hit("a", "1.1.1.1"), NOW_MS),
            Outcome::Counted
        );
        assert!(!counter.is_empty());
        assert_eq!(counter.len(), 1);
        assert_eq!(
            counter.record(&hit("b", "1.1.1.1"), NOW_MS),
            Outcome::Counted
        );
        assert_eq!(counter.len(), 2);
        assert_eq!(counter.record(&hit("c", "1.1.1.1"), NOW_MS), Outcome::Full);
        assert_eq!(counter.len(), 2, "the refused counter took no room");
        assert_eq!(
            counter.record(&hit("a", "2.2.2.2"), NOW_MS),
            Outcome::Counted
        );
        let window = counter.flush(NOW_MS + 1).unwrap();
        assert_eq!(window.hits, 3);
        assert_eq!(
            counter.record(&hit("c", "1.1.1.1"), NOW_MS + 2),
            Outcome::Counted
        );
    }
}
