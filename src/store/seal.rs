//! Encryption at rest of saved statuses: AES-256-GCM with keys that carry ids, so keys can
//! rotate: the first key of the keyring seals new writes, every key opens what it sealed.
//!
//! A sealed value is `enc:v1:<key id>:<base64 of nonce ‖ ciphertext ‖ tag>`. The record's
//! Redis key is the additional authenticated data, so a sealed status cannot be moved to
//! another object's record (nor a dead letter's copy, sealed for its own context, into a
//! record). With a keyring, the digest that detects unchanged statuses is an HMAC-SHA256 of
//! the record key and the status under a key derived from the sealing key: not a plain hash of
//! the status, which would let anyone with Redis access guess low-entropy statuses, and not
//! the same for equal statuses of two objects.
//!
//! Sealing is confidentiality and integrity of what restatus wrote. A value without the
//! sealed prefix is read as plain JSON (records written before encryption was turned on)
//! unless sealing is required, after `restatus reseal` has sealed every record: then anyone
//! who can write Redis cannot plant a status.
//!
//! The keyring file holds one key per line, `<id>:<base64 of 32 random bytes>`; `#` starts a
//! comment. `head -c 32 /dev/urandom | base64` makes a key.

use std::{fmt, path::Path};

use crate::text::{base64_decode, base64_encode};
use ring::{
    aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey},
    hmac,
    rand::{SecureRandom, SystemRandom},
};

const PREFIX: &str = "enc:v1:";

#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("could not read the encryption keyring {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("line {line} of the encryption keyring is not <id>:<base64 of 32 bytes>: {reason}")]
    Line { line: usize, reason: String },
    #[error("the encryption keyring holds no key")]
    Empty,
    #[error("key id {0:?} appears twice in the encryption keyring")]
    Duplicate(String),
}

#[derive(Debug, thiserror::Error)]
#[error("the status could not be sealed: no random bytes for a nonce, or more than AES-GCM seals")]
pub struct SealError;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpenError {
    #[error("the status is sealed with key {0:?}, which the keyring does not hold")]
    UnknownKey(String),
    #[error("the status is sealed, and no encryption keyring is configured")]
    NoKeyring,
    #[error("the sealed status is malformed")]
    Malformed,
    #[error(
        "the sealed status does not open with key {0:?} (tampered, or moved from another record)"
    )]
    Tampered(String),
}

struct Key {
    id: String,
    aead: LessSafeKey,
    digest: hmac::Key,
}

/// The encryption keys; the first one seals.
pub struct Keyring {
    keys: Vec<Key>,
    random: SystemRandom,
}

impl fmt::Debug for Keyring {
    /// Key ids only, never key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|k| k.id.as_str()).collect();
        f.debug_struct("Keyring").field("ids", &ids).finish()
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

impl Keyring {
    /// Reads a keyring file.
    pub fn load(path: &Path) -> Result<Self, KeyringError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyringError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Parses keyring text: `<id>:<base64>` per line, blank lines and `#` comments ignored.
    pub fn parse(text: &str) -> Result<Self, KeyringError> {
        let mut keys: Vec<Key> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let bad = |reason: &str| KeyringError::Line {
                line: i + 1,
                reason: reason.to_owned(),
            };
            let (id, material) = line.split_once(':').ok_or_else(|| bad("no ':'"))?;
            let id = id.trim();
            if !valid_id(id) {
                return Err(bad(
                    "the id must be 1 to 64 letters, digits, '-', '_' or '.'",
                ));
            }
            let bytes = base64_decode(material.trim()).ok_or_else(|| bad("not base64"))?;
            if bytes.len() != 32 {
                return Err(bad(&format!("the key is {} bytes, not 32", bytes.len())));
            }
            if keys.iter().any(|k| k.id == id) {
                return Err(KeyringError::Duplicate(id.to_owned()));
            }
            let unbound =
                UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| bad("not an AES-256 key"))?;
            // The digest key is derived from the encryption key, never the key itself.
            let derive = hmac::Key::new(hmac::HMAC_SHA256, &bytes);
            let digest_key = hmac::sign(&derive, b"restatus status digest v1");
            keys.push(Key {
                id: id.to_owned(),
                aead: LessSafeKey::new(unbound),
                digest: hmac::Key::new(hmac::HMAC_SHA256, digest_key.as_ref()),
            });
        }
        if keys.is_empty() {
            return Err(KeyringError::Empty);
        }
        Ok(Self {
            keys,
            random: SystemRandom::new(),
        })
    }

    /// The id of the key that seals.
    pub fn sealing_id(&self) -> &str {
        &self.keys[0].id
    }

    /// Seals `plaintext` for the record `aad` with the first key. Fails without a random
    /// source for the nonce (a repeated nonce would break the encryption), or for a plaintext
    /// longer than AES-GCM can seal; never stores it in clear.
    pub fn seal(&self, aad: &str, plaintext: &[u8]) -> Result<String, SealError> {
        let key = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        self.random.fill(&mut nonce).map_err(|_| SealError)?;
        let mut buffer = plaintext.to_vec();
        key.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad.as_bytes()),
                &mut buffer,
            )
            .map_err(|_| SealError)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buffer);
        Ok(format!("{PREFIX}{}:{}", key.id, base64_encode(&out)))
    }

    /// Opens a value sealed for the record `aad` with any key of the keyring.
    pub fn open(&self, aad: &str, sealed: &str) -> Result<Vec<u8>, OpenError> {
        let rest = sealed.strip_prefix(PREFIX).ok_or(OpenError::Malformed)?;
        let (id, body) = rest.split_once(':').ok_or(OpenError::Malformed)?;
        let key = self
            .keys
            .iter()
            .find(|k| k.id == id)
            .ok_or_else(|| OpenError::UnknownKey(id.to_owned()))?;
        let bytes = base64_decode(body).ok_or(OpenError::Malformed)?;
        if bytes.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(OpenError::Malformed);
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| OpenError::Malformed)?;
        let mut buffer = ciphertext.to_vec();
        let plain = key
            .aead
            .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut buffer)
            .map_err(|_| OpenError::Tampered(id.to_owned()))?;
        Ok(plain.to_vec())
    }

    /// A keyed digest of `canonical` (the status with sorted keys) in the record `aad`.
    pub fn digest(&self, aad: &str, canonical: &[u8]) -> String {
        let mut context = hmac::Context::with_key(&self.keys[0].digest);
        // The key's length first, so that no key and status run into another pair.
        context.update(&(aad.len() as u64).to_be_bytes());
        context.update(aad.as_bytes());
        context.update(canonical);
        let tag = context.sign();
        let mut hex = String::with_capacity(tag.as_ref().len() * 2 + 5);
        hex.push_str(&self.keys[0].id);
        hex.push(':');
        for b in tag.as_ref() {
            hex.push_str(&format!("{b:02x}"));
        }
        hex
    }
}

/// The sealed prefix and the id of the key a stored value was sealed with, if it is sealed.
pub fn sealed_with(stored: &str) -> Option<&str> {
    stored
        .strip_prefix(PREFIX)?
        .split_once(':')
        .map(|(id, _)| id)
}

/// True when a stored status is sealed.
pub fn is_sealed(stored: &str) -> bool {
    stored.starts_with(PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "a:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const B: &str = "b:HxwdGhsYGRYXFBUSExAREA8ODQwLCgkIBwYFBAMCAQA=";

    #[test]
    fn seals_and_opens_and_never_shows_the_plaintext() {
        let ring = Keyring::parse(A).unwrap();
        let sealed = ring.seal("rec:x", br#"{"token":"s3cr3t"}"#).unwrap();
        assert!(sealed.starts_with("enc:v1:a:"), "{sealed}");
        assert!(!sealed.contains("s3cr3t"));
        assert_eq!(
            ring.open("rec:x", &sealed).unwrap(),
            br#"{"token":"s3cr3t"}"#
        );
        // A fresh nonce each time.
        assert_ne!(
            sealed,
            ring.seal("rec:x", br#"{"token":"s3cr3t"}"#).unwrap()
        );
    }

    #[test]
    fn a_sealed_status_does_not_open_for_another_record_or_when_tampered() {
        let ring = Keyring::parse(A).unwrap();
        let sealed = ring.seal("rec:x", b"{}").unwrap();
        assert_eq!(
            ring.open("rec:y", &sealed),
            Err(OpenError::Tampered("a".into()))
        );
        let mut bytes: Vec<char> = sealed.chars().collect();
        let last = bytes.len() - 3;
        bytes[last] = if bytes[last] == 'A' { 'B' } else { 'A' };
        let tampered: String = bytes.into_iter().collect();
        assert!(ring.open("rec:x", &tampered).is_err());
        assert_eq!(ring.open("rec:x", "enc:v1:a"), Err(OpenError::Malformed));
        assert_eq!(
            ring.open("rec:x", "enc:v1:a:AAAA"),
            Err(OpenError::Malformed)
        );
    }

    #[test]
    fn after_a_rotation_old_keys_open_and_the_new_key_seals() {
        let old = Keyring::parse(A).unwrap();
        let sealed_before = old.seal("rec:x", b"old").unwrap();
        let rotated =
            Keyring::parse(&format!("# new key first\n{B}\n{A} # still opens\n")).unwrap();
        assert_eq!(rotated.sealing_id(), "b");
        assert_eq!(rotated.open("rec:x", &sealed_before).unwrap(), b"old");
        let sealed_after = rotated.seal("rec:x", b"new").unwrap();
        assert!(sealed_after.starts_with("enc:v1:b:"));
        assert_eq!(
            old.open("rec:x", &sealed_after),
            Err(OpenError::UnknownKey("b".into()))
        );
    }

    #[test]
    fn digests_are_keyed() {
        let a = Keyring::parse(A).unwrap();
        let b = Keyring::parse(B).unwrap();
        assert_eq!(a.digest("rec:x", b"{}"), a.digest("rec:x", b"{}"));
        assert_ne!(a.digest("rec:x", b"{}"), a.digest("rec:x", b"{ }"));
        assert_ne!(a.digest("rec:x", b"{}"), b.digest("rec:x", b"{}"));
        assert!(a.digest("rec:x", b"{}").starts_with("a:"));
        // Equal statuses of two records do not show as equal.
        assert_ne!(a.digest("rec:x", b"{}"), a.digest("rec:y", b"{}"));
        // The record key and the status cannot trade bytes.
        assert_ne!(a.digest("rec:x", b"1{}"), a.digest("rec:x1", b"{}"));
    }

    #[test]
    fn bad_keyrings_are_refused_with_the_line() {
        for (text, expected) in [
            ("", "holds no key"),
            ("# only a comment", "holds no key"),
            ("nocolon", "line 1"),
            ("a:AAEC", "not 32"),
            ("a:!!!!", "not base64"),
            (
                "bad id:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
                "the id must be",
            ),
        ] {
            let err = Keyring::parse(text).unwrap_err().to_string();
            assert!(err.contains(expected), "{text:?}: {err}");
        }
        let twice = format!("{A}\n{A}");
        assert!(
            Keyring::parse(&twice)
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
        assert_eq!(
            format!("{:?}", Keyring::parse(A).unwrap()),
            "Keyring { ids: [\"a\"] }"
        );
    }
}
