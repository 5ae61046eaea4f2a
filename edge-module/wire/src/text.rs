//! Limits as people read them, so that every message and document takes its number from the
//! constant instead of spelling it by hand.

use crate::{DAY_MS, HOUR_MS, MINUTE_MS};

/// Durations of at least this many days are said in days; shorter whole days in hours, as
/// people say "24 hours" and "48 hours" but "7 days".
const DAYS_FROM: u64 = 3;

/// A duration in the largest unit that states it exactly: `7 days`, `48 hours`, `5 minutes`,
/// `2 seconds`, `250 ms`.
pub fn duration_text(ms: u64) -> String {
    let unit = |count: u64, one: &str, many: &str| {
        format!("{count} {}", if count == 1 { one } else { many })
    };
    if ms >= DAYS_FROM * DAY_MS && ms.is_multiple_of(DAY_MS) {
        unit(ms / DAY_MS, "day", "days")
    } else if ms >= HOUR_MS && ms.is_multiple_of(HOUR_MS) {
        unit(ms / HOUR_MS, "hour", "hours")
    } else if ms >= MINUTE_MS && ms.is_multiple_of(MINUTE_MS) {
        unit(ms / MINUTE_MS, "minute", "minutes")
    } else if ms >= 1_000 && ms.is_multiple_of(1_000) {
        unit(ms / 1_000, "second", "seconds")
    } else {
        format!("{ms} ms")
    }
}

/// A count with thousands separated, as the README writes them: `65,536`, `2,000,000`.
pub fn count_text(count: u64) -> String {
    let digits = count.to_string();
    let mut text = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            text.push(',');
        }
        text.push(digit);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(duration_text(7 * DAY_MS), "7 days");
        assert_eq!(duration_text(90 * DAY_MS), "90 days");
        assert_eq!(duration_text(DAY_MS), "24 hours");
        assert_eq!(duration_text(2 * DAY_MS), "48 hours");
        assert_eq!(duration_text(HOUR_MS), "1 hour");
        assert_eq!(duration_text(5 * MINUTE_MS), "5 minutes");
        assert_eq!(duration_text(90 * 1_000), "90 seconds");
        assert_eq!(duration_text(1_000), "1 second");
        assert_eq!(duration_text(250), "250 ms");
        assert_eq!(duration_text(0), "0 ms");
    }

    #[test]
    fn counts_group_thousands() {
        assert_eq!(count_text(0), "0");
        assert_eq!(count_text(999), "999");
        assert_eq!(count_text(1_000), "1,000");
        assert_eq!(count_text(65_536), "65,536");
        assert_eq!(count_text(2_000_000), "2,000,000");
        assert_eq!(count_text(u64::MAX), "18,446,744,073,709,551,615");
    }
}
