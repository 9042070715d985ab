//! Small cryptographic building blocks: CSPRNG handles, hashing, and authenticated encryption of
//! data at rest.

use aes_gcm::{
    Aes256Gcm, KeyInit, Nonce,
    aead::{Aead, Payload},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::secret::Secret;

/// A random URL-safe handle with `bytes` bytes of entropy from the operating system's CSPRNG
/// (via `rand`'s thread-local ChaCha generator, seeded and reseeded from the OS).
pub fn random_handle(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

/// SHA-256 of a value; used to store handles (state, binding, refresh) without storing the handle.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Constant-time equality for secrets and their hashes.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// AES-256-GCM with a key-encryption key from configuration. Each value gets a fresh random
/// 96-bit nonce (stored in front of the ciphertext) and is bound to a context string (the
/// associated data), so a ciphertext copied into another row or column does not decrypt.
#[derive(Clone)]
pub struct Cipher {
    aead: Aes256Gcm,
}

/// Decryption failed: wrong key, corrupted data, or a ciphertext moved to another context.
#[derive(Debug, thiserror::Error)]
#[error("stored secret could not be decrypted (wrong encryption_key, or corrupted data)")]
pub struct DecryptError;

const NONCE_LEN: usize = 12;
/// Format version byte, so the scheme can change without guessing.
const VERSION: u8 = 1;

impl Cipher {
    pub fn new(key: &Secret<[u8; 32]>) -> Self {
        Self { aead: Aes256Gcm::new(key.expose().into()) }
    }

    pub fn encrypt(&self, plaintext: &[u8], context: &str) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = self
            .aead
            .encrypt(&Nonce::from(nonce), Payload { msg: plaintext, aad: context.as_bytes() })
            // AES-GCM encryption only fails for inputs larger than 64 GiB.
            .unwrap_or_default();
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    pub fn decrypt(&self, data: &[u8], context: &str) -> Result<Vec<u8>, DecryptError> {
        if data.len() < 1 + NONCE_LEN || data[0] != VERSION {
            return Err(DecryptError);
        }
        let (nonce, sealed) = data[1..].split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| DecryptError)?;
        self.aead
            .decrypt(&Nonce::from(nonce), Payload { msg: sealed, aad: context.as_bytes() })
            .map_err(|_| DecryptError)
    }

    pub fn encrypt_secret(&self, value: &Secret<String>, context: &str) -> Vec<u8> {
        self.encrypt(value.expose().as_bytes(), context)
    }

    pub fn decrypt_secret(
        &self,
        data: &[u8],
        context: &str,
    ) -> Result<Secret<String>, DecryptError> {
        let plain = self.decrypt(data, context)?;
        String::from_utf8(plain).map(Secret::new).map_err(|_| DecryptError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_random_and_long_enough() {
        let a = random_handle(32);
        let b = random_handle(32);
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
    }

    #[test]
    fn encryption_round_trips_and_is_bound_to_its_context() {
        let cipher = Cipher::new(&Secret::new([7u8; 32]));
        let sealed = cipher.encrypt(b"refresh-token", "session:1:refresh");
        assert!(!sealed.windows(13).any(|w| w == b"refresh-token"));
        assert_eq!(cipher.decrypt(&sealed, "session:1:refresh").unwrap(), b"refresh-token");
        assert!(cipher.decrypt(&sealed, "session:2:refresh").is_err());
        let other = Cipher::new(&Secret::new([8u8; 32]));
        assert!(other.decrypt(&sealed, "session:1:refresh").is_err());
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(cipher.decrypt(&tampered, "session:1:refresh").is_err());
    }
}
