//! One edge instance's counting: its open window and its delivery queue together, and the rule
//! that joins them. A hit that needs a counter the full window has no room for closes the window
//! early into the queue and is recorded again in the new one; only when the queue is full too is
//! it refused. Hosts (the component, and through it every runtime) call this, not the two parts.

use crate::counter::{EdgeCounter, Outcome};
use crate::delivery::{Delivery, DeliveryFull};
use crate::filter::HitRequest;

#[derive(Debug)]
pub struct Counting {
    pub counter: EdgeCounter,
    pub delivery: Delivery,
}

impl Counting {
    pub fn new(counter: EdgeCounter, delivery: Delivery) -> Self {
        Self { counter, delivery }
    }

    /// Counts a hit (see the module's rule for a full window).
    pub fn record(&mut self, hit: &HitRequest<'_>, now_ms: u64) -> Outcome {
        self.record_with(now_ms, |counter| counter.record(hit, now_ms))
    }

    /// Counts a journal record again after a crash (see the module's rule for a full window).
    pub fn record_hashed(
        &mut self,
        resource_id: &str,
        minute: u64,
        visitor: u64,
        now_ms: u64,
    ) -> Outcome {
        self.record_with(now_ms, |counter| {
            counter.record_hashed(resource_id, minute, visitor, now_ms)
        })
    }

    /// The rule itself, once for both kinds of record: a full window is closed into the queue
    /// and the record tried once more in the new window; a queue that cannot take the window
    /// leaves the refusal as it was.
    fn record_with(
        &mut self,
        now_ms: u64,
        mut record: impl FnMut(&mut EdgeCounter) -> Outcome,
    ) -> Outcome {
        match record(&mut self.counter) {
            Outcome::Full if self.flush(now_ms).is_ok() => record(&mut self.counter),
            outcome => outcome,
        }
    }

    /// Closes the window into the delivery queue; returns its hits. When the queue is full the
    /// window stays open, exactly as it was, and the queue's error says so.
    pub fn flush(&mut self, now_ms: u64) -> Result<u64, DeliveryFull> {
        let Some(window) = self.counter.flush(now_ms) else {
            return Ok(0);
        };
        let hits = window.hits;
        match self.delivery.add_window(window) {
            Ok(()) => Ok(hits),
            Err(full) => {
                self.counter.reopen(full.window.clone());
                Err(full)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counter::tests::{NOW_MS, hit};

    fn counting(window_entries_max: usize, pending_entries_max: usize) -> Counting {
        Counting::new(
            EdgeCounter::new(b"secret", window_entries_max),
            Delivery::new("edge-1", 1, pending_entries_max, [0; 16]),
        )
    }

    #[test]
    fn a_full_delivery_queue_leaves_the_window_open_and_whole() {
        let mut edge = counting(10, 1);
        edge.record(&hit("a", "1.1.1.1"), NOW_MS);
        assert_eq!(edge.flush(NOW_MS + 1), Ok(1));
        edge.record(&hit("b", "1.1.1.1"), NOW_MS + 2);
        edge.record(&hit("b", "2.2.2.2"), NOW_MS + 3);
        let generation = edge.counter.generation();
        assert!(edge.flush(NOW_MS + 4).is_err());
        assert_eq!(
            edge.counter.hits_for("b"),
            2,
            "the refused window is still counted here"
        );
        assert_eq!(
            edge.counter.generation(),
            generation,
            "and keeps its generation"
        );
        // Once the aggregator acknowledges, the queue drains and the window goes through.
        let sequence = edge.delivery.next_batch().unwrap().sequence;
        edge.delivery.acknowledge(sequence);
        assert!(edge.delivery.next_batch().is_none());
        assert_eq!(edge.flush(NOW_MS + 5), Ok(2));
        assert_eq!(edge.delivery.unacknowledged_hits_for("b"), 2);
        assert!(edge.counter.is_empty());
    }

    #[test]
    fn a_full_window_is_flushed_early_and_the_hit_counted_in_the_next() {
        let mut edge = counting(2, 10);
        for resource in ["a", "b"] {
            assert_eq!(
                edge.record(&hit(resource, "1.1.1.1"), NOW_MS),
                Outcome::Counted
            );
        }
        // A third counter: the window closes into the queue, the hit opens the next one.
        assert_eq!(
            edge.record(&hit("c", "1.1.1.1"), NOW_MS + 1),
            Outcome::Counted
        );
        assert_eq!(edge.counter.hits(), 1);
        assert_eq!(edge.delivery.unacknowledged_hits(), 2);
        // The same for a replayed journal record.
        assert_eq!(
            edge.record_hashed("d", NOW_MS / 60_000, 7, NOW_MS + 2),
            Outcome::Counted
        );
        assert_eq!(
            edge.record_hashed("e", NOW_MS / 60_000, 7, NOW_MS + 2),
            Outcome::Counted
        );
        assert_eq!(
            edge.counter.hits(),
            1,
            "c and d went to the queue, e is open"
        );
        assert_eq!(edge.delivery.unacknowledged_hits(), 4);
    }

    #[test]
    fn with_the_queue_full_too_a_new_counter_is_refused_and_nothing_is_lost() {
        let resources = ["a", "b", "c", "d", "e", "f"];
        let mut edge = counting(1, 1);
        let mut counted = 0;
        let mut refused = None;
        for (index, resource) in resources.iter().enumerate() {
            match edge.record(&hit(resource, "1.1.1.1"), NOW_MS) {
                Outcome::Counted => counted += 1,
                Outcome::Full => {
                    refused = Some(index);
                    break;
                }
                other => panic!("{resource}: {other:?}"),
            }
        }
        let refused = refused.expect("refused once the window and the queue are full");
        // One counter in the window, one pending, one batch sealed for its first send.
        assert!(refused <= 3, "refused only at counter {refused}");
        // A counter the window already holds still counts.
        let held = resources[refused - 1];
        assert_eq!(edge.record(&hit(held, "2.2.2.2"), NOW_MS), Outcome::Counted);
        counted += 1;
        assert_eq!(
            edge.counter.hits() + edge.delivery.unacknowledged_hits(),
            counted
        );
    }
}
