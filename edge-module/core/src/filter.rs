//! Deciding whether a request is a countable hit.

use hitcount_wire::validate_resource_id;

/// Longest user agent inspected; longer ones are cut (bot markers appear early).
pub const USER_AGENT_BYTES_MAX: usize = 512;
/// How far ahead of the edge clock a hit's own timestamp may be.
pub const HIT_CLOCK_SKEW_MS_MAX: u64 = 5 * 60 * 1_000;
/// How old a hit's own timestamp may be (a beacon queued by a sleeping laptop, say).
pub const HIT_AGE_MS_MAX: u64 = 24 * 60 * 60 * 1_000;

/// Substrings (lowercase) of user agents that are not people. Matching is a heuristic: it keeps
/// the big crawlers, monitors and HTTP libraries out of the counts, as GoatCounter and Plausible do.
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
    "curl/",
    "wget/",
    "python-requests",
    "python-urllib",
    "go-http-client",
    "java/",
    "okhttp",
    "axios/",
    "node-fetch",
    "phantomjs",
    "selenium",
    "puppeteer",
    "playwright",
    "preview",
    "scrapy",
    "httpclient",
    "libwww",
    "feedfetcher",
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
    #[error("invalid resource id")]
    InvalidResource,
    #[error("the user agent is a bot")]
    Bot,
    #[error("the request is a prefetch or prerender")]
    Prefetch,
    #[error("the hit's timestamp is too old or in the future")]
    TimestampOutOfRange,
}

impl Rejection {
    pub fn code(self) -> &'static str {
        match self {
            Self::InvalidResource => "invalid-resource",
            Self::Bot => "bot",
            Self::Prefetch => "prefetch",
            Self::TimestampOutOfRange => "timestamp",
        }
    }
}

/// True if the user agent looks like software rather than a person's browser.
pub fn is_bot(user_agent: &str) -> bool {
    let user_agent = user_agent.trim();
    if user_agent.is_empty() {
        return true;
    }
    let cut = user_agent
        .char_indices()
        .take_while(|(index, _)| *index < USER_AGENT_BYTES_MAX)
        .last()
        .map(|(index, c)| index + c.len_utf8())
        .unwrap_or(0);
    bot_markers().is_match(&user_agent[..cut])
}

/// All markers in one automaton, matched case-insensitively in one pass over the user agent:
/// a `contains` per marker scanned the string 28 times and allocated a lowercase copy, which
/// made this the most expensive step of recording a hit.
fn bot_markers() -> &'static aho_corasick::AhoCorasick {
    static MARKERS: std::sync::OnceLock<aho_corasick::AhoCorasick> = std::sync::OnceLock::new();
    MARKERS.get_or_init(|| {
        aho_corasick::AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .build(BOT_MARKERS)
            .unwrap_or_else(|error| panic!("the bot markers are valid patterns: {error}"))
    })
}

/// Checks a hit; returns the time it is counted at.
pub fn check(hit: &HitRequest<'_>, now_ms: u64) -> Result<u64, Rejection> {
    validate_resource_id(hit.resource_id).map_err(|_| Rejection::InvalidResource)?;
    if hit.prefetch {
        return Err(Rejection::Prefetch);
    }
    if is_bot(hit.user_agent) {
        return Err(Rejection::Bot);
    }
    match hit.timestamp_ms {
        None => Ok(now_ms),
        Some(at) if at > now_ms + HIT_CLOCK_SKEW_MS_MAX || at + HIT_AGE_MS_MAX < now_ms => {
            Err(Rejection::TimestampOutOfRange)
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
    }

    #[test]
    fn prefetches_invalid_ids_and_bad_times_are_rejected() {
        let mut prefetch = hit(BROWSER);
        prefetch.prefetch = true;
        assert_eq!(check(&prefetch, 1_000), Err(Rejection::Prefetch));
        let mut invalid = hit(BROWSER);
        invalid.resource_id = "no spaces";
        assert_eq!(check(&invalid, 1_000), Err(Rejection::InvalidResource));
        let now = 10 * HIT_AGE_MS_MAX;
        let mut future = hit(BROWSER);
        future.timestamp_ms = Some(now + HIT_CLOCK_SKEW_MS_MAX + 1);
        assert_eq!(check(&future, now), Err(Rejection::TimestampOutOfRange));
        let mut old = hit(BROWSER);
        old.timestamp_ms = Some(now - HIT_AGE_MS_MAX - 1);
        assert_eq!(check(&old, now), Err(Rejection::TimestampOutOfRange));
        let mut recent = hit(BROWSER);
        recent.timestamp_ms = Some(now - 60_000);
        assert_eq!(check(&recent, now), Ok(now - 60_000));
    }
}
