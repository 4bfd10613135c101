//! The secret a purchase or hold is created with ("who may change what"): 128 random bits
//! shown to the buyer, kept by the store only as a SHA-256 hash, and checked in constant
//! time, as is the operator's token. Also the hashes the store keeps of idempotency keys,
//! and the salted derivation that lets a keyed repeat answer its secret again.

use std::fmt;

use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use thiserror::Error;

/// How many random bytes a secret holds (the contract asks for at least 128 bits).
const SECRET_BYTES: usize = 16;

/// A freshly made secret, to be answered once and then forgotten. Its `Debug` hides it, so
/// a logged structure never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// A new secret from the operating system's randomness (through `rand`'s thread RNG,
    /// a CSPRNG seeded from it), written as lowercase hex.
    pub fn generate() -> Self {
        let mut bytes = [0u8; SECRET_BYTES];
        rand::rng().fill_bytes(&mut bytes);
        Self(to_hex(&bytes))
    }

    /// A secret as a client presented it (`X-Ticket-Secret`), to be checked against a
    /// stored hash. Its `Debug` hides it as well.
    pub fn presented(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// What the store keeps in its place.
    pub fn hash(&self) -> SecretHash {
        SecretHash::of(&self.0)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// The SHA-256 hash of a secret: what the store keeps, enough to check a presented secret
/// and useless to present.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SecretHash([u8; 32]);

/// Why a stored secret hash could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("a secret hash is 64 lowercase hex digits")]
pub struct BadSecretHash;

impl SecretHash {
    /// The hash of any presented text.
    pub fn of(text: &str) -> Self {
        Self(Sha256::digest(text.as_bytes()).into())
    }

    /// Whether `presented` is the secret this is the hash of. Both sides are hashes of
    /// equal length, compared in constant time, so neither the answer's timing nor the
    /// presented text's length tells how much of it was right.
    pub fn matches(&self, presented: &str) -> bool {
        self.0.ct_eq(&Self::of(presented).0).into()
    }

    /// Lowercase hex, as the store writes it.
    pub fn to_hex(&self) -> String {
        to_hex(&self.0)
    }

    /// Reads what [`SecretHash::to_hex`] wrote.
    pub fn from_hex(text: &str) -> Result<Self, BadSecretHash> {
        let bytes = text.as_bytes();
        if bytes.len() != 64 {
            return Err(BadSecretHash);
        }
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
            *byte = (hex_digit(pair[0])? << 4) | hex_digit(pair[1])?;
        }
        Ok(Self(out))
    }
}

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretHash({})", self.to_hex())
    }
}

/// The SHA-256 hash of an idempotency key: what the store indexes keys by, so that neither
/// a key nor the secret derived from it is in the store in clear.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyHash([u8; 32]);

impl KeyHash {
    pub fn of(key: &str) -> Self {
        Self(Sha256::digest(key.as_bytes()).into())
    }

    pub fn to_hex(&self) -> String {
        to_hex(&self.0)
    }

    pub fn from_hex(text: &str) -> Result<Self, BadSecretHash> {
        SecretHash::from_hex(text).map(|h| Self(h.0))
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash({})", self.to_hex())
    }
}

/// 128 random bits kept beside a keyed purchase or hold, from which with the key its
/// secret is derived.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Salt([u8; SECRET_BYTES]);

impl Salt {
    pub fn generate() -> Self {
        let mut bytes = [0u8; SECRET_BYTES];
        rand::rng().fill_bytes(&mut bytes);
        Self(bytes)
    }

    pub fn to_hex(&self) -> String {
        to_hex(&self.0)
    }

    /// Reads what [`Salt::to_hex`] wrote: 32 lowercase hex digits.
    pub fn from_hex(text: &str) -> Result<Self, BadSecretHash> {
        let bytes = text.as_bytes();
        if bytes.len() != 2 * SECRET_BYTES {
            return Err(BadSecretHash);
        }
        let mut out = [0u8; SECRET_BYTES];
        for (byte, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
            *byte = (hex_digit(pair[0])? << 4) | hex_digit(pair[1])?;
        }
        Ok(Self(out))
    }
}

impl fmt::Debug for Salt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Salt({})", self.to_hex())
    }
}

/// The secret of a purchase or hold made with idempotency key `key`: the first 128 bits
/// of SHA-256("ticket-secret\0" || salt || key), in hex. Who has the key (and so may repeat
/// the request and be answered the secret anyway) can compute it; the store, holding only
/// the salt and the key's hash, cannot.
pub fn derive_secret(salt: &Salt, key: &str) -> Secret {
    let mut hasher = Sha256::new();
    hasher.update(b"ticket-secret\0");
    hasher.update(salt.0);
    hasher.update(key.as_bytes());
    let digest = hasher.finalize();
    Secret(to_hex(&digest[..SECRET_BYTES]))
}

/// Whether `presented` is the operator's `token`, compared in constant time (through
/// their hashes, so a length difference takes as long as any other).
pub fn token_matches(token: &str, presented: &str) -> bool {
    SecretHash::of(token).matches(presented)
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

fn hex_digit(c: u8) -> Result<u8, BadSecretHash> {
    match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        _ => Err(BadSecretHash),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_128_random_bits_in_hex_and_never_the_same_twice() {
        let a = Secret::generate();
        let b = Secret::generate();
        assert_eq!(a.as_str().len(), 32);
        assert!(a.as_str().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn only_the_secret_itself_matches_its_hash() {
        let secret = Secret::generate();
        let hash = secret.hash();
        assert!(hash.matches(secret.as_str()));
        let mut wrong = secret.as_str().to_owned();
        wrong.replace_range(0..1, if wrong.starts_with('0') { "1" } else { "0" });
        for presented in [wrong.as_str(), "", &secret.as_str()[..31], &hash.to_hex()] {
            assert!(!hash.matches(presented), "{presented:?}");
        }
    }

    #[test]
    fn a_hash_reads_back_what_it_wrote_and_refuses_anything_else() {
        let hash = Secret::generate().hash();
        assert_eq!(SecretHash::from_hex(&hash.to_hex()), Ok(hash));
        let upper = hash.to_hex().to_uppercase();
        for bad in ["", "00", &upper, &"g".repeat(64), &"0".repeat(65)] {
            assert_eq!(SecretHash::from_hex(bad), Err(BadSecretHash), "{bad:?}");
        }
        assert_eq!(
            SecretHash::of("abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            "SHA-256 as published"
        );
    }

    #[test]
    fn the_operators_token_matches_only_itself() {
        assert!(token_matches("s3cret-token", "s3cret-token"));
        for presented in ["", "s3cret-toke", "s3cret-token ", "S3CRET-TOKEN"] {
            assert!(!token_matches("s3cret-token", presented), "{presented:?}");
        }
    }

    #[test]
    fn a_derived_secret_depends_on_salt_and_key_and_matches_its_hash() {
        let salt = Salt::generate();
        let secret = derive_secret(&salt, "key-1");
        assert_eq!(secret, derive_secret(&salt, "key-1"));
        assert_eq!(secret.as_str().len(), 32);
        assert_ne!(secret, derive_secret(&salt, "key-2"));
        assert_ne!(secret, derive_secret(&Salt::generate(), "key-1"));
        assert!(secret.hash().matches(secret.as_str()));
        assert_eq!(Salt::from_hex(&salt.to_hex()), Ok(salt));
        assert_eq!(Salt::from_hex("00"), Err(BadSecretHash));
        let key = KeyHash::of("key-1");
        assert_eq!(KeyHash::from_hex(&key.to_hex()), Ok(key));
        assert_ne!(key, KeyHash::of("key-2"));
    }

    #[test]
    fn debug_output_never_shows_a_secret() {
        let secret = Secret::generate();
        assert!(!format!("{secret:?}").contains(secret.as_str()));
    }
}
