//! The visitor hash: SipHash-1-3 over (site, client address, a digest of the user agent), keyed
//! with a salt derived from the edge's secret and the UTC day.
//!
//! Every edge of a deployment shares the secret, so one visitor hashes the same on every edge that
//! day (their sketches merge into one visitor); the next day the key changes, so nobody, not even
//! the operator holding old sketches, can follow a visitor across days. The raw address is never
//! stored or sent.

use std::hash::Hasher;

use hitcount_wire::DAY_MS;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use siphasher::sip::SipHasher13;

/// Derives per-day keys from a secret and hashes visitors with them.
#[derive(Clone)]
pub struct VisitorHasher {
    secret: Vec<u8>,
    /// The day the cached key is for, and the key.
    current: Option<(u64, [u8; 16])>,
}

impl std::fmt::Debug for VisitorHasher {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("VisitorHasher")
            .field("day", &self.current.map(|(day, _)| day))
            .finish_non_exhaustive()
    }
}

fn day_key(secret: &[u8], day: u64) -> [u8; 16] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    mac.update(b"hitcount visitor salt\n");
    mac.update(&day.to_be_bytes());
    let digest = mac.finalize().into_bytes();
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest[..16]);
    key
}

/// The key of an edge's window and pending maps (see [`hitcount_wire::WindowCounts`]), derived
/// from the deployment's secret so that nobody outside can choose colliding resource ids.
pub fn window_map_key(secret: &[u8]) -> [u8; 16] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    mac.update(b"hitcount window map key\n");
    let digest = mac.finalize().into_bytes();
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest[..16]);
    key
}

impl VisitorHasher {
    pub fn new(secret: &[u8]) -> Self {
        Self {
            secret: secret.to_vec(),
            current: None,
        }
    }

    fn key_for(&mut self, at_ms: u64) -> [u8; 16] {
        let day = at_ms / DAY_MS;
        match self.current {
            Some((cached, key)) if cached == day => key,
            _ => {
                let key = day_key(&self.secret, day);
                self.current = Some((day, key));
                key
            }
        }
    }

    /// A keyed digest of the user agent for the day containing `at_ms`: what the visitor hash
    /// takes in place of the user agent itself. Computed once per hit, it also keys the edge's
    /// cache of bot verdicts (see [`crate::filter::BotVerdicts`]): under a key nobody outside
    /// knows, two user agents share a digest only by chance (about 2^-64 per pair), and nobody can
    /// make one user agent pass for another.
    pub fn user_agent_digest(&mut self, at_ms: u64, user_agent: &str) -> u64 {
        let mut hasher = SipHasher13::new_with_key(&self.key_for(at_ms));
        hasher.write_u64(user_agent.len() as u64);
        hasher.write(user_agent.as_bytes());
        hasher.finish()
    }

    /// The visitor's hash for the day containing `at_ms`, from the user agent's digest.
    pub fn hash_with_digest(
        &mut self,
        at_ms: u64,
        site: &str,
        client_address: &str,
        user_agent_digest: u64,
    ) -> u64 {
        let mut hasher = SipHasher13::new_with_key(&self.key_for(at_ms));
        // Lengths first, so ("ab", "c") and ("a", "bc") cannot collide by construction.
        for part in [site, client_address] {
            hasher.write_u64(part.len() as u64);
            hasher.write(part.as_bytes());
        }
        hasher.write_u64(user_agent_digest);
        hasher.finish()
    }

    /// The visitor's hash for the day containing `at_ms`.
    pub fn hash(&mut self, at_ms: u64, site: &str, client_address: &str, user_agent: &str) -> u64 {
        let digest = self.user_agent_digest(at_ms, user_agent);
        self.hash_with_digest(at_ms, site, client_address, digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_visitor_same_day_same_hash_on_any_edge() {
        let mut paris = VisitorHasher::new(b"deployment secret");
        let mut tokyo = VisitorHasher::new(b"deployment secret");
        let morning = 20_000 * DAY_MS + 3_600_000;
        let evening = morning + 12 * 3_600_000;
        let a = paris.hash(morning, "example.com", "203.0.113.7", "Firefox");
        assert_eq!(
            a,
            tokyo.hash(evening, "example.com", "203.0.113.7", "Firefox")
        );
        assert_ne!(
            a,
            paris.hash(morning, "example.com", "203.0.113.8", "Firefox")
        );
        assert_ne!(
            a,
            paris.hash(morning, "example.org", "203.0.113.7", "Firefox")
        );
        assert_ne!(
            a,
            paris.hash(morning, "example.com", "203.0.113.7", "Chrome")
        );
    }

    #[test]
    fn the_digest_path_is_the_same_hash_and_digests_rotate_daily() {
        let mut hasher = VisitorHasher::new(b"deployment secret");
        let today = 20_000 * DAY_MS;
        let digest = hasher.user_agent_digest(today, "Firefox");
        assert_eq!(
            hasher.hash_with_digest(today, "s", "ip", digest),
            hasher.hash(today, "s", "ip", "Firefox")
        );
        assert_ne!(digest, hasher.user_agent_digest(today, "Chrome"));
        assert_ne!(digest, hasher.user_agent_digest(today + DAY_MS, "Firefox"));
    }

    #[test]
    fn the_salt_rotates_daily_and_depends_on_the_secret() {
        let mut hasher = VisitorHasher::new(b"deployment secret");
        let today = 20_000 * DAY_MS;
        let a = hasher.hash(today, "s", "ip", "ua");
        assert_ne!(a, hasher.hash(today + DAY_MS, "s", "ip", "ua"));
        assert_ne!(
            a,
            VisitorHasher::new(b"another secret").hash(today, "s", "ip", "ua")
        );
        assert_ne!(
            hasher.hash(today, "ab", "c", ""),
            hasher.hash(today, "a", "bc", "")
        );
    }

    #[test]
    fn the_window_map_key_is_the_secret_s_and_nobody_else_s() {
        let key = window_map_key(b"deployment secret");
        assert_eq!(
            key,
            window_map_key(b"deployment secret"),
            "every edge alike"
        );
        assert_ne!(key, window_map_key(b"another secret"));
        assert_ne!(
            key,
            day_key(b"deployment secret", 0),
            "apart from the salts"
        );
    }

    #[test]
    fn the_hasher_shows_its_day_and_never_its_secret() {
        let mut hasher = VisitorHasher::new(b"deployment secret");
        assert_eq!(format!("{hasher:?}"), "VisitorHasher { day: None, .. }");
        hasher.hash(20_000 * DAY_MS + 5, "s", "ip", "ua");
        assert_eq!(
            format!("{hasher:?}"),
            "VisitorHasher { day: Some(20000), .. }"
        );
    }
}
