//! Signing keys: generating, loading (PEM file or the database), the key ring with its rotation
//! lifecycle, and the raw JWS signature operations.
//!
//! Signatures are made and checked with `ring` on keys parsed once at load time (jsonwebtoken
//! re-parses the PKCS#8 key, deriving the public point, on every signature; see the
//! micro-benchmarks). `jsonwebtoken` provides the JWK types and RFC 7638 thumbprints.

use std::{collections::HashMap, sync::Arc};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use jsonwebtoken::{
    Algorithm,
    jwk::{Jwk, JwkSet, PublicKeyUse, ThumbprintHash},
};
use ring::{
    rand::SystemRandom,
    signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair, UnparsedPublicKey},
};

use super::KeyError;
use crate::{config::SigningAlgorithm, crypto::Cipher, store::StoredSigningKey};

/// The private half, parsed once.
enum Signer {
    Es256(EcdsaKeyPair),
    EdDsa(Ed25519KeyPair),
    Rs256(RsaKeyPair),
}

/// One signing key, parsed and ready.
pub struct KeyEntry {
    pub kid: String,
    pub algorithm: Algorithm,
    signer: Signer,
    /// The public key in the form `ring` verifies with (SEC1 point, raw Ed25519, RSA DER).
    public_key: Vec<u8>,
    /// The JOSE header of tokens signed with this key, already base64url-encoded.
    header_b64: String,
    /// The public JWK, as published.
    pub jwk: Jwk,
    /// Signs from this time (unix seconds) on; published before.
    pub activates_at: i64,
    /// Stops signing at this time, if set.
    pub retires_at: Option<i64>,
    /// Dropped from the JWKS at this time, if set.
    pub expires_at: Option<i64>,
}

impl KeyEntry {
    pub(super) fn can_sign_at(&self, now: i64) -> bool {
        self.activates_at <= now && self.retires_at.is_none_or(|r| now < r)
    }

    /// The `alg` header value tokens signed with this key carry.
    pub fn alg_name(&self) -> &'static str {
        match self.signer {
            Signer::Es256(_) => "ES256",
            Signer::EdDsa(_) => "EdDSA",
            Signer::Rs256(_) => "RS256",
        }
    }

    /// Signs a payload (JSON bytes) into a compact JWS.
    pub fn sign_jws(&self, payload: &[u8]) -> Result<String, KeyError> {
        let mut token = String::with_capacity(self.header_b64.len() + payload.len() * 4 / 3 + 100);
        token.push_str(&self.header_b64);
        token.push('.');
        B64.encode_string(payload, &mut token);
        let signature = self.sign(token.as_bytes())?;
        token.push('.');
        B64.encode_string(signature, &mut token);
        Ok(token)
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let failed = |_| KeyError::Invalid("signing failed".into());
        Ok(match &self.signer {
            Signer::Es256(k) => {
                k.sign(&SystemRandom::new(), message).map_err(failed)?.as_ref().to_vec()
            }
            Signer::EdDsa(k) => k.sign(message).as_ref().to_vec(),
            Signer::Rs256(k) => {
                let mut out = vec![0; k.public().modulus_len()];
                k.sign(&signature::RSA_PKCS1_SHA256, &SystemRandom::new(), message, &mut out)
                    .map_err(failed)?;
                out
            }
        })
    }

    /// Checks a signature over `message` with this key's public half.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        let algorithm: &dyn signature::VerificationAlgorithm = match self.signer {
            Signer::Es256(_) => &signature::ECDSA_P256_SHA256_FIXED,
            Signer::EdDsa(_) => &signature::ED25519,
            Signer::Rs256(_) => &signature::RSA_PKCS1_2048_8192_SHA256,
        };
        UnparsedPublicKey::new(algorithm, &self.public_key).verify(message, signature).is_ok()
    }
}

/// The current set of keys.
#[derive(Default)]
pub struct KeyRing {
    /// Oldest activation first.
    keys: Vec<Arc<KeyEntry>>,
    by_kid: HashMap<String, Arc<KeyEntry>>,
}

impl KeyRing {
    pub(super) fn new(mut keys: Vec<Arc<KeyEntry>>) -> Self {
        keys.sort_by(|a, b| (a.activates_at, &a.kid).cmp(&(b.activates_at, &b.kid)));
        let by_kid = keys.iter().map(|k| (k.kid.clone(), Arc::clone(k))).collect();
        Self { keys, by_kid }
    }

    pub(super) fn get(&self, kid: &str) -> Option<&Arc<KeyEntry>> {
        self.by_kid.get(kid)
    }

    /// Whether some key of this ring is missing from `next` (removed, not just added).
    pub(super) fn loses_keys_in(&self, next: &KeyRing) -> bool {
        self.by_kid.keys().any(|kid| next.get(kid).is_none())
    }

    /// When each key stopped signing: the activation of the next key that has activated.
    pub(super) fn retired_at(&self, index: usize, now: i64) -> Option<i64> {
        self.keys[index + 1..]
            .iter()
            .map(|k| k.activates_at)
            .find(|&t| t <= now)
            .or(self.keys[index].retires_at)
    }

    /// Keys that no token can still need: retired longer ago than a token lives (its lifetime
    /// plus the `exp` leeway, and a minute more).
    pub(super) fn expired(&self, now: i64, token_lifetime: i64) -> Vec<String> {
        (0..self.keys.len())
            .filter(|&i| self.retired_at(i, now).is_some_and(|r| r + token_lifetime + 60 < now))
            .map(|i| self.keys[i].kid.clone())
            .collect()
    }

    /// The newest key, whether or not it signs yet.
    pub(super) fn newest(&self) -> Option<&Arc<KeyEntry>> {
        self.keys.last()
    }

    /// The newest key that may sign now.
    pub(super) fn signing_key(&self, now: i64) -> Option<&Arc<KeyEntry>> {
        self.keys.iter().rev().find(|k| k.can_sign_at(now))
    }

    pub fn jwks(&self) -> JwkSet {
        JwkSet { keys: self.keys.iter().map(|k| k.jwk.clone()).collect() }
    }
}

pub(super) fn key_context(kid: &str) -> String {
    format!("signing_key:{kid}")
}

fn jwt_algorithm(alg: SigningAlgorithm) -> Algorithm {
    match alg {
        SigningAlgorithm::Es256 => Algorithm::ES256,
        SigningAlgorithm::EdDsa => Algorithm::EdDSA,
        SigningAlgorithm::Rs256 => Algorithm::RS256,
    }
}

/// The PKCS#8 v1 prefix of an Ed25519 private key (RFC 8410): the 32-byte seed follows.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// Generates a private key; returns its PKCS#8 DER and the ready entry.
pub(super) fn generate_key(
    alg: SigningAlgorithm,
    activates_at: i64,
) -> Result<(Vec<u8>, KeyEntry), KeyError> {
    let rng = SystemRandom::new();
    let der = match alg {
        SigningAlgorithm::Es256 => {
            EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .map_err(|_| KeyError::Invalid("cannot generate a P-256 key".into()))?
                .as_ref()
                .to_vec()
        }
        SigningAlgorithm::EdDsa => {
            let seed: [u8; 32] = rand::random();
            [ED25519_PKCS8_PREFIX.as_slice(), seed.as_slice()].concat()
        }
        SigningAlgorithm::Rs256 => {
            return Err(KeyError::Invalid(
                "RS256 keys are not generated; configure signing_key_file".into(),
            ));
        }
    };
    let entry = entry_from_der(alg, &der, activates_at, None, None)?;
    Ok((der, entry))
}

/// Builds a key entry from PKCS#8 DER (RSA also accepts PKCS#1).
fn entry_from_der(
    alg: SigningAlgorithm,
    der: &[u8],
    activates_at: i64,
    retires_at: Option<i64>,
    expires_at: Option<i64>,
) -> Result<KeyEntry, KeyError> {
    let invalid = |what: &str| {
        KeyError::Invalid(format!("not a usable {} private key ({what})", alg.as_str()))
    };
    let rng = SystemRandom::new();
    // The key pair, its public key as `ring` verifies with, and the public JWK members.
    let (signer, public_key, members) = match alg {
        SigningAlgorithm::Es256 => {
            let k =
                EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
                    .map_err(|e| invalid(&e.to_string()))?;
            let point = k.public_key().as_ref().to_vec(); // 0x04 || x || y
            let (x, y) =
                (point.get(1..33).unwrap_or_default(), point.get(33..65).unwrap_or_default());
            let members = serde_json::json!({
                "kty": "EC", "crv": "P-256", "x": B64.encode(x), "y": B64.encode(y),
            });
            (Signer::Es256(k), point, members)
        }
        SigningAlgorithm::EdDsa => {
            let k = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
                .map_err(|e| invalid(&e.to_string()))?;
            let public = k.public_key().as_ref().to_vec();
            let members =
                serde_json::json!({ "kty": "OKP", "crv": "Ed25519", "x": B64.encode(&public) });
            (Signer::EdDsa(k), public, members)
        }
        SigningAlgorithm::Rs256 => {
            let k = RsaKeyPair::from_pkcs8(der)
                .or_else(|_| RsaKeyPair::from_der(der))
                .map_err(|e| invalid(&e.to_string()))?;
            if k.public().modulus_len() < 256 {
                return Err(invalid("RSA keys must have at least 2048 bits"));
            }
            let components = signature::RsaPublicKeyComponents::<Vec<u8>>::from(k.public());
            let members = serde_json::json!({
                "kty": "RSA", "n": B64.encode(&components.n), "e": B64.encode(&components.e),
            });
            let public = k.public().as_ref().to_vec();
            (Signer::Rs256(k), public, members)
        }
    };
    let mut jwk: Jwk = serde_json::from_value(members)
        .map_err(|e| invalid(&format!("cannot describe the public key: {e}")))?;
    jwk.common.key_algorithm = Some(jsonwebtoken::jwk::KeyAlgorithm::from(jwt_algorithm(alg)));
    let algorithm = jwt_algorithm(alg);
    let kid = jwk
        .thumbprint(ThumbprintHash::SHA256)
        .map_err(|e| KeyError::Invalid(format!("cannot compute key thumbprint: {e}")))?;
    jwk.common.key_id = Some(kid.clone());
    jwk.common.public_key_use = Some(PublicKeyUse::Signature);
    let header = serde_json::json!({ "alg": alg.as_str(), "kid": kid, "typ": "JWT" });
    let entry = KeyEntry {
        header_b64: B64.encode(header.to_string()),
        kid,
        algorithm,
        signer,
        public_key,
        jwk,
        activates_at,
        retires_at,
        expires_at,
    };
    // Prove the pair works before it signs anything.
    let probe = entry.sign(b"probe")?;
    if !entry.verify(b"probe", &probe) {
        return Err(invalid("the key pair does not verify"));
    }
    Ok(entry)
}

/// Loads a PKCS#8 PEM private key (the `signing_key_file`).
pub(super) fn key_from_pem(alg: SigningAlgorithm, pem: &[u8]) -> Result<KeyEntry, KeyError> {
    let text = std::str::from_utf8(pem)
        .map_err(|_| KeyError::Invalid("signing_key_file is not a PEM text file".into()))?;
    let body: String = text
        .lines()
        .map(str::trim)
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    let der = base64::engine::general_purpose::STANDARD.decode(body).map_err(|_| {
        KeyError::Invalid(format!("signing_key_file is not a PEM {} private key", alg.as_str()))
    })?;
    entry_from_der(alg, &der, 0, None, None).map_err(|e| {
        KeyError::Invalid(format!("signing_key_file: {e}; give a PKCS#8 PEM ({})", alg.as_str()))
    })
}

/// Decrypts and loads a key stored in the database.
pub(super) fn key_from_store(k: &StoredSigningKey, cipher: &Cipher) -> Result<KeyEntry, KeyError> {
    let alg = SigningAlgorithm::parse(&k.algorithm)
        .ok_or_else(|| KeyError::Invalid(format!("stored key {} has unknown algorithm", k.kid)))?;
    let der = cipher
        .decrypt(&k.private_key, &key_context(&k.kid))
        .map_err(|e| KeyError::Invalid(format!("stored key {}: {e}", k.kid)))?;
    entry_from_der(alg, &der, k.activates_at, k.retires_at, k.expires_at)
}
