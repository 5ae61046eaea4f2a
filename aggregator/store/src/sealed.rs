//! Stored secrets (the edge keys set through the API) encrypted at rest with a key the operator
//! holds outside the database (`--secret-key-file`): AES-256-GCM from aws-lc-rs, a fresh random
//! nonce per secret, and the edge id as associated data, so that a sealed secret copied onto
//! another edge's row does not open. A second key (`--secret-key-file-previous`) opens what the
//! last key sealed, which is how the key is rotated: see README ("Secrets at rest").
//!
//! A sealed secret starts with a zero byte, which no secret the API accepts can (they are
//! visible ASCII), so a secret stored in plain text before sealing was turned on is told apart
//! exactly, and sealed at the next start.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha2::Digest;

/// The bytes of a sealing key (AES-256).
pub const SEALING_KEY_BYTES: usize = 32;
/// The first bytes of every sealed secret: a zero byte (never in a plain secret) and the
/// format's version.
const SEALED_PREFIX: [u8; 2] = [0, 1];
/// The bytes naming the key that sealed a secret: the start of the key's SHA-256.
const KEY_ID_BYTES: usize = 4;
/// The bytes of the tag AES-GCM appends.
const TAG_BYTES: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(
        "a secret key file must hold {SEALING_KEY_BYTES} random bytes in base64 (44 characters; make one with `openssl rand -base64 32`)"
    )]
    KeyFormat,
    #[error(
        "the edge key of {edge_id:?} is stored encrypted with the key {key_id}, and no --secret-key-file was given to open it"
    )]
    NoKey { edge_id: String, key_id: String },
    #[error(
        "the edge key of {edge_id:?} was encrypted with the key {key_id}, which is neither --secret-key-file nor --secret-key-file-previous"
    )]
    UnknownKey { edge_id: String, key_id: String },
    #[error(
        "the edge key of {edge_id:?} is stored encrypted but does not open: it is damaged or was moved from another edge"
    )]
    Damaged { edge_id: String },
    #[error("the system's random number generator failed")]
    Random,
}

/// One AES-256 key and its id.
pub struct SealingKey {
    key: LessSafeKey,
    id: [u8; KEY_ID_BYTES],
}

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Only the id: the key never reaches a log.
        formatter
            .debug_struct("SealingKey")
            .field("id", &hex::encode(self.id))
            .finish_non_exhaustive()
    }
}

impl SealingKey {
    /// A key from a key file's text: base64 of [`SEALING_KEY_BYTES`] bytes, surrounding white
    /// space ignored.
    pub fn from_file_text(text: &str) -> Result<Self, SealError> {
        let bytes = BASE64
            .decode(text.trim())
            .map_err(|_| SealError::KeyFormat)?;
        if bytes.len() != SEALING_KEY_BYTES {
            return Err(SealError::KeyFormat);
        }
        let digest = sha2::Sha256::digest(&bytes);
        let mut id = [0; KEY_ID_BYTES];
        id.copy_from_slice(&digest[..KEY_ID_BYTES]);
        let key = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| SealError::KeyFormat)?;
        Ok(Self {
            key: LessSafeKey::new(key),
            id,
        })
    }

    /// The key's id as sealed secrets name it (hex), what errors and logs show.
    pub fn id(&self) -> String {
        hex::encode(self.id)
    }
}

/// What a stored secret turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Opened {
    /// Sealed with the current key.
    Current(Vec<u8>),
    /// Plain text, or sealed with the previous key: to be sealed again with the current one.
    Reseal(Vec<u8>),
}

/// The keys of `--secret-key-file` and `--secret-key-file-previous`.
#[derive(Debug, Default)]
pub struct SecretKeys {
    pub current: Option<SealingKey>,
    pub previous: Option<SealingKey>,
}

impl SecretKeys {
    /// `plain` as it is stored: sealed with the current key, or as it is without one.
    pub fn seal(&self, edge_id: &str, plain: Vec<u8>) -> Result<Vec<u8>, SealError> {
        debug_assert!(
            !is_sealed(&plain),
            "a plain secret never starts with a zero byte"
        );
        let Some(key) = &self.current else {
            return Ok(plain);
        };
        let mut nonce = [0; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SealError::Random)?;
        let mut in_out = plain;
        key.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(edge_id.as_bytes()),
                &mut in_out,
            )
            .map_err(|_| SealError::Random)?;
        let mut sealed =
            Vec::with_capacity(SEALED_PREFIX.len() + KEY_ID_BYTES + NONCE_LEN + in_out.len());
        sealed.extend_from_slice(&SEALED_PREFIX);
        sealed.extend_from_slice(&key.id);
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&in_out);
        Ok(sealed)
    }

    /// The plain secret of a stored one, and whether it should be sealed again.
    pub fn open(&self, edge_id: &str, stored: Vec<u8>) -> Result<Opened, SealError> {
        if !is_sealed(&stored) {
            return Ok(match self.current {
                Some(_) => Opened::Reseal(stored),
                None => Opened::Current(stored),
            });
        }
        let header = SEALED_PREFIX.len() + KEY_ID_BYTES + NONCE_LEN;
        let damaged = || SealError::Damaged {
            edge_id: edge_id.to_owned(),
        };
        if stored.len() < header + TAG_BYTES {
            return Err(damaged());
        }
        let key_id = &stored[SEALED_PREFIX.len()..SEALED_PREFIX.len() + KEY_ID_BYTES];
        let (key, current) = match (&self.current, &self.previous) {
            (None, _) => {
                return Err(SealError::NoKey {
                    edge_id: edge_id.to_owned(),
                    key_id: hex::encode(key_id),
                });
            }
            (Some(key), _) if key.id == key_id => (key, true),
            (_, Some(key)) if key.id == key_id => (key, false),
            _ => {
                return Err(SealError::UnknownKey {
                    edge_id: edge_id.to_owned(),
                    key_id: hex::encode(key_id),
                });
            }
        };
        let nonce = Nonce::try_assume_unique_for_key(&stored[header - NONCE_LEN..header])
            .map_err(|_| damaged())?;
        let mut in_out = stored[header..].to_vec();
        let plain_len = key
            .key
            .open_in_place(nonce, Aad::from(edge_id.as_bytes()), &mut in_out)
            .map_err(|_| damaged())?
            .len();
        in_out.truncate(plain_len);
        Ok(if current {
            Opened::Current(in_out)
        } else {
            Opened::Reseal(in_out)
        })
    }
}

fn is_sealed(stored: &[u8]) -> bool {
    stored.first() == Some(&SEALED_PREFIX[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> SealingKey {
        SealingKey::from_file_text(&BASE64.encode([byte; SEALING_KEY_BYTES])).unwrap()
    }

    #[test]
    fn a_sealed_secret_opens_only_with_its_key_and_its_edge() {
        let keys = SecretKeys {
            current: Some(key(1)),
            previous: None,
        };
        let sealed = keys.seal("edge-1", b"s3cret-value".to_vec()).unwrap();
        assert!(!sealed.windows(6).any(|window| window == b"s3cret"));
        assert_eq!(
            keys.open("edge-1", sealed.clone()).unwrap(),
            Opened::Current(b"s3cret-value".to_vec())
        );
        assert!(matches!(
            keys.open("edge-2", sealed.clone()),
            Err(SealError::Damaged { .. })
        ));
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(
            keys.open("edge-1", flipped),
            Err(SealError::Damaged { .. })
        ));
        assert!(matches!(
            SecretKeys::default().open("edge-1", sealed.clone()),
            Err(SealError::NoKey { .. })
        ));
        let other = SecretKeys {
            current: Some(key(2)),
            previous: None,
        };
        assert!(matches!(
            other.open("edge-1", sealed.clone()),
            Err(SealError::UnknownKey { .. })
        ));
        let rotated = SecretKeys {
            current: Some(key(2)),
            previous: Some(key(1)),
        };
        assert_eq!(
            rotated.open("edge-1", sealed).unwrap(),
            Opened::Reseal(b"s3cret-value".to_vec())
        );
    }

    #[test]
    fn plain_secrets_are_sealed_once_a_key_is_given() {
        assert_eq!(
            SecretKeys::default().open("e", b"plain".to_vec()).unwrap(),
            Opened::Current(b"plain".to_vec())
        );
        let keys = SecretKeys {
            current: Some(key(1)),
            previous: None,
        };
        assert_eq!(
            keys.open("e", b"plain".to_vec()).unwrap(),
            Opened::Reseal(b"plain".to_vec())
        );
        assert_eq!(
            SecretKeys::default().seal("e", b"p".to_vec()).unwrap(),
            b"p"
        );
    }

    #[test]
    fn a_key_file_holds_32_bytes_in_base64() {
        assert!(SealingKey::from_file_text(&format!("{}\n", BASE64.encode([7; 32]))).is_ok());
        assert!(matches!(
            SealingKey::from_file_text(&BASE64.encode([7; 16])),
            Err(SealError::KeyFormat)
        ));
        assert!(matches!(
            SealingKey::from_file_text("not base64!"),
            Err(SealError::KeyFormat)
        ));
    }
}
