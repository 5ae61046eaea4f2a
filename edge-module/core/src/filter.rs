//! Deciding whether a request is a countable hit.

use hitcount_wire::text::duration_text;
use hitcount_wire::{CLOCK_SKEW_MS_MAX, DAY_MS, RESOURCE_ID_BYTES_MAX, validate_resource_id};

/// Longest user agent inspected; longer ones are cut (bot markers appear early).
pub const USER_AGENT_BYTES_MAX: usize = 512;
/// How old a hit's own timestamp may be (a beacon queued by a sleeping laptop, say). How far
/// ahead it may be is the wire's `CLOCK_SKEW_MS_MAX`.
pub const HIT_AGE_MS_MAX: u64 = DAY_MS;

/// Substrings (lowercase) of user agents that are not people. Matching is a heuristic: it keeps
/// the big crawlers, monitors and headless browsers out of the counts, as GoatCounter and
/// Plausible do.
const BOT_MARKERS: &[&str] = &[
    "bot",
    "crawl",
    "spider",
    "slurp",
    "facebookexternalhit",
    "headless",
    "lighthouse",
    "pingdom",
    "uptime",
    "monitor",
    "phantomjs",
    "selenium",
    "puppeteer",
    "playwright",
    "preview",
    "scrapy",
    "feedfetcher",
];

/// Substrings (lowercase) of HTTP libraries' and command-line clients' user agents. Not people in
/// production; counted when the edge is told to (`--count-http-clients`, on under `hitcount-dev`),
/// so that a newcomer's first `curl` counts.
const HTTP_CLIENT_MARKERS: &[&str] = &[
    "curl/",
    "wget/",
    "python-requests",
    "python-urllib",
    "go-http-client",
    "java/",
    "okhttp",
    "axios/",
    "node-fetch",
    "httpclient",
    "libwww",
];

/// What the edge knows about one incoming request that claims to be a hit.
#[derive(Debug, Clone, Copy, Default)]
pub struct HitRequest<'a> {
    pub resource_id: &'a str,
    /// The site (Host or Origin) the hit came through; part of the visitor hash.
    pub site: &'a str,
    /// The client address as the edge sees it; only ever hashed.
    pub client_address: &'a str,
    pub user_agent: &'a str,
    /// True when the request says it is a prefetch or prerender (`Sec-Purpose`, `Purpose`,
    /// `X-Moz`, `X-Purpose` headers): nobody has seen the page yet.
    pub prefetch: bool,
    /// The time the beacon says the hit happened, if any; otherwise the edge's receive time.
    pub timestamp_ms: Option<u64>,
}

/// Why a request was not counted. `code()` is what the edge reports in its rejection header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("resource ids are 1 to {RESOURCE_ID_BYTES_MAX} of A-Z a-z 0-9 . _ -")]
    InvalidResourceId,
    #[error("the user agent is a bot")]
    Bot,
    #[error("the request is a prefetch or prerender")]
    Prefetch,
    #[error(
        "timestamp must be within the last {} and at most {} ahead",
        duration_text(HIT_AGE_MS_MAX),
        duration_text(CLOCK_SKEW_MS_MAX)
    )]
    InvalidTimestamp,
}

impl Rejection {
    pub fn code(self) -> &'static str {
        match self {
            Self::InvalidResourceId => "invalid_resource_id",
            Self::Bot => "bot",
            Self::Prefetch => "prefetch",
            Self::InvalidTimestamp => "invalid_timestamp",
        }
    }
}

/// Which user agents [`is_bot`] refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BotPolicy {
    /// Crawlers, monitors, headless browsers and HTTP libraries (production).
    #[default]
    RefuseHttpClients,
    /// Crawlers, monitors and headless browsers; HTTP libraries such as curl are counted.
    CountHttpClients,
}

/// True if the user agent looks like software rather than a person's browser, under the
/// production policy ([`BotPolicy::RefuseHttpClients`]).
pub fn is_bot(user_agent: &str) -> bool {
    is_bot_under(user_agent, BotPolicy::RefuseHttpClients)
}

/// True if the user agent is software that `policy` does not count.
pub fn is_bot_under(user_agent: &str, policy: BotPolicy) -> bool {
    let user_agent = user_agent.trim();
    if user_agent.is_empty() {
        return true;
    }
    // Cut at the last character boundary within the limit, without walking the characters.
    let inspected = &user_agent[..user_agent.floor_char_boundary(USER_AGENT_BYTES_MAX)];
    match policy {
        BotPolicy::RefuseHttpClients => all_markers().is_match(inspected),
        BotPolicy::CountHttpClients => bot_markers().is_match(inspected),
    }
}

/// Markers in one automaton, matched case-insensitively in one pass over the user agent:
/// a `contains` per marker scanned the string 28 times and allocated a lowercase copy, which
/// made this the most expensive step of recording a hit.
fn automaton(markers: &[&str]) -> aho_corasick::AhoCorasick {
    aho_corasick::AhoCorasick::builder()
        .ascii_case_insensitive(true)
        .build(markers)
        .unwrap_or_else(|error| panic!("the bot markers are valid patterns: {error}"))
}

/// Bots and HTTP clients: the production test.
fn all_markers() -> &'static aho_corasick::AhoCorasick {
    static MARKERS: std::sync::OnceLock<aho_corasick::AhoCorasick> = std::sync::OnceLock::new();
    MARKERS.get_or_init(|| {
        let all: Vec<&str> = BOT_MARKERS
            .iter()
            .chain(HTTP_CLIENT_MARKERS)
            .copied()
            .collect();
        automaton(&all)
    })
}

/// Bots only.
fn bot_markers() -> &'static aho_corasick::AhoCorasick {
    static MARKERS: std::sync::OnceLock<aho_corasick::AhoCorasick> = std::sync::OnceLock::new();
    MARKERS.get_or_init(|| automaton(BOT_MARKERS))
}

/// Distinct user agents whose verdicts an edge remembers. A few hundred user agents make most of
/// a site's traffic; a slot costs 16 bytes, so the cache is 64 KiB.
pub const USER_AGENT_VERDICTS: usize = 4_096;

/// Remembered [`is_bot`] verdicts, by the user agent's keyed digest
/// ([`crate::VisitorHasher::user_agent_digest`]). Scanning a user agent for bot markers was
/// the largest part of recording a hit; the digest is computed for the visitor hash anyway, so a
/// repeated user agent costs one lookup instead.
///
/// Direct-mapped: the digest picks the slot (it is a keyed hash, so its low bits are uniform), a
/// slot holds one digest, and a different digest in the same slot replaces it. Bounded, with no
/// allocation per hit; emptied when the day, and with it the digest key, changes.
#[derive(Clone)]
pub struct BotVerdicts {
    policy: BotPolicy,
    day: u64,
    /// (digest, verdict) where the verdict is [`VERDICT_NONE`], [`VERDICT_PERSON`] or
    /// [`VERDICT_BOT`].
    slots: Box<[(u64, u8)]>,
}

const VERDICT_NONE: u8 = 0;
const VERDICT_PERSON: u8 = 1;
const VERDICT_BOT: u8 = 2;

impl std::fmt::Debug for BotVerdicts {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("BotVerdicts")
            .field("day", &self.day)
            .finish_non_exhaustive()
    }
}

impl Default for BotVerdicts {
    fn default() -> Self {
        Self::new(BotPolicy::default())
    }
}

impl BotVerdicts {
    pub fn new(policy: BotPolicy) -> Self {
        const { assert!(USER_AGENT_VERDICTS.is_power_of_two()) };
        Self {
            policy,
            day: 0,
            slots: vec![(0, VERDICT_NONE); USER_AGENT_VERDICTS].into_boxed_slice(),
        }
    }

    /// [`is_bot_under`] this cache's policy for `user_agent`, whose digest under day `day`'s key
    /// is `digest`.
    pub fn is_bot(&mut self, day: u64, digest: u64, user_agent: &str) -> bool {
        if day != self.day {
            self.slots.fill((0, VERDICT_NONE));
            self.day = day;
        }
        let slot = &mut self.slots[(digest as usize) & (USER_AGENT_VERDICTS - 1)];
        if slot.1 != VERDICT_NONE && slot.0 == digest {
            return slot.1 == VERDICT_BOT;
        }
        let bot = is_bot_under(user_agent, self.policy);
        *slot = (digest, if bot { VERDICT_BOT } else { VERDICT_PERSON });
        bot
    }
}

/// Checks a hit; returns the time it is counted at.
pub fn check(hit: &HitRequest<'_>, now_ms: u64) -> Result<u64, Rejection> {
    check_with(hit, now_ms, is_bot)
}

/// [`check`], with the bot test supplied (e.g. [`BotVerdicts::is_bot`] with a digest); the checks
/// run in the same order, so a hit gets the same rejection either way.
pub fn check_with(
    hit: &HitRequest<'_>,
    now_ms: u64,
    is_bot: impl FnOnce(&str) -> bool,
) -> Result<u64, Rejection> {
    validate_resource_id(hit.resource_id).map_err(|_| Rejection::InvalidResourceId)?;
    if hit.prefetch {
        return Err(Rejection::Prefetch);
    }
    if is_bot(hit.user_agent) {
        return Err(Rejection::Bot);
    }
    match hit.timestamp_ms {
        None => Ok(now_ms),
        Some(at) if at > now_ms + CLOCK_SKEW_MS_MAX || at + HIT_AGE_MS_MAX < now_ms => {
            Err(Rejection::InvalidTimestamp)
        }
        Some(at) => Ok(at),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BROWSER: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0 Safari/537.36";

    fn hit(user_agent: &str) -> HitRequest<'_> {
        HitRequest {
            resource_id: "home",
            site: "example.com",
            client_address: "203.0.113.7",
            user_agent,
            ..HitRequest::default()
        }
    }

    #[test]
    fn browsers_pass_and_bots_do_not() {
        assert_eq!(check(&hit(BROWSER), 1_000), Ok(1_000));
        for bot in [
            "",
            "Googlebot/2.1 (+http://www.google.com/bot.html)",
            "curl/8.5.0",
            "Mozilla/5.0 (X11; Linux x86_64) HeadlessChrome/120.0",
            "python-requests/2.31",
        ] {
            assert_eq!(check(&hit(bot), 1_000), Err(Rejection::Bot), "{bot}");
        }
        let long = format!("{}{}", "é".repeat(400), "bot");
        assert!(
            !is_bot(&long),
            "markers past the inspected prefix are not seen"
        );
        let straddling = format!("x{}bot", "é".repeat(300));
        assert!(
            !is_bot(&straddling),
            "a character across the limit is cut whole"
        );
        let at_the_limit = format!("{}bot", "a".repeat(USER_AGENT_BYTES_MAX - 3));
        assert!(is_bot(&at_the_limit), "the last inspected bytes count");
    }

    #[test]
    fn http_clients_are_counted_only_under_their_policy() {
        for client in [
            "curl/8.5.0",
            "Wget/1.21",
            "python-requests/2.31",
            "Go-http-client/1.1",
        ] {
            assert!(is_bot(client), "{client} is refused in production");
            assert!(
                !is_bot_under(client, BotPolicy::CountHttpClients),
                "{client} counts when HTTP clients do"
            );
        }
        for bot in ["Googlebot/2.1", "HeadlessChrome/120", "", "  "] {
            assert!(
                is_bot_under(bot, BotPolicy::CountHttpClients),
                "{bot:?} is a bot either way"
            );
        }
        assert!(!is_bot_under(BROWSER, BotPolicy::RefuseHttpClients));
        let mut counting = BotVerdicts::new(BotPolicy::CountHttpClients);
        assert!(!counting.is_bot(1, 8, "curl/8.5.0"));
        assert!(counting.is_bot(1, 9, "Googlebot/2.1"));
    }

    #[test]
    fn remembered_verdicts_match_the_scan_and_are_forgotten_daily() {
        let mut verdicts = BotVerdicts::default();
        for _ in 0..2 {
            assert!(!verdicts.is_bot(1, 7, BROWSER));
            assert!(verdicts.is_bot(1, 8, "curl/8.5.0"));
        }
        // Slot 7 now holds the browser's verdict; another digest in that slot is scanned anew.
        let colliding = 7 + USER_AGENT_VERDICTS as u64;
        assert!(verdicts.is_bot(1, colliding, "Googlebot/2.1"));
        assert!(!verdicts.is_bot(1, 7, BROWSER));
        // A remembered verdict is only trusted on the day its digest was made: digest 8 is the
        // bot's yesterday, and whatever it is today gets scanned.
        assert!(!verdicts.is_bot(2, 8, BROWSER));
        // An empty slot remembers nothing, not even for digest 0 (which an empty slot holds).
        let mut fresh = BotVerdicts::default();
        assert!(fresh.is_bot(1, 0, "curl/8.5.0"));
        assert!(fresh.is_bot(1, 0, "curl/8.5.0"), "and remembered");
    }

    #[test]
    fn prefetches_invalid_ids_and_bad_times_are_rejected() {
        let mut prefetch = hit(BROWSER);
        prefetch.prefetch = true;
        assert_eq!(check(&prefetch, 1_000), Err(Rejection::Prefetch));
        let mut invalid = hit(BROWSER);
        invalid.resource_id = "no spaces";
        assert_eq!(check(&invalid, 1_000), Err(Rejection::InvalidResourceId));
        let now = 10 * HIT_AGE_MS_MAX;
        let mut future = hit(BROWSER);
        future.timestamp_ms = Some(now + CLOCK_SKEW_MS_MAX + 1);
        assert_eq!(check(&future, now), Err(Rejection::InvalidTimestamp));
        let mut old = hit(BROWSER);
        old.timestamp_ms = Some(now - HIT_AGE_MS_MAX - 1);
        assert_eq!(check(&old, now), Err(Rejection::InvalidTimestamp));
        let mut recent = hit(BROWSER);
        recent.timestamp_ms = Some(now - 60_000);
        assert_eq!(check(&recent, now), Ok(now - 60_000));
    }

    #[test]
    fn hit_times_count_from_24_hours_back_to_5_minutes_ahead_inclusive() {
        // The documented window in milliseconds, not through the constants it is made of.
        let now: u64 = 1_780_000_000_000;
        for (offset_ms, counted) in [
            (-86_400_000, true),
            (-86_400_001, false),
            (300_000, true),
            (300_001, false),
        ] {
            let mut timed = hit(BROWSER);
            let at = now.checked_add_signed(offset_ms).unwrap();
            timed.timestamp_ms = Some(at);
            let expected = if counted {
                Ok(at)
            } else {
                Err(Rejection::InvalidTimestamp)
            };
            assert_eq!(check(&timed, now), expected, "{offset_ms} ms");
        }
    }

    #[test]
    fn every_rejection_has_its_code() {
        let codes = [
            Rejection::InvalidResourceId,
            Rejection::Bot,
            Rejection::Prefetch,
            Rejection::InvalidTimestamp,
        ]
        .map(Rejection::code);
        assert_eq!(
            codes,
            [
                "invalid_resource_id",
                "bot",
                "prefetch",
                "invalid_timestamp"
            ]
        );
    }

    #[test]
    fn the_verdict_cache_shows_its_day() {
        let mut verdicts = BotVerdicts::default();
        verdicts.is_bot(19_000, 7, BROWSER);
        assert_eq!(format!("{verdicts:?}"), "BotVerdicts { day: 19000, .. }");
    }
}
