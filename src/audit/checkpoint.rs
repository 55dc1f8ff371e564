//! Signed checkpoints: the chain head (`seq`, `hash`) at a moment, signed with the instance's
//! Ed25519 key. Kept somewhere twokey's database cannot reach (a mailbox, a ticket, a WORM
//! bucket), a checkpoint makes a later truncation of the log detectable even when whoever
//! truncated it also moved the stored chain head back.
//!
//! The key is a PKCS#8 PEM Ed25519 private key (`openssl genpkey -algorithm ed25519`). The
//! signature covers exactly these bytes (UTF-8, `\n` line ends, a final `\n`):
//!
//! ```text
//! twokey audit checkpoint v1
//! <seq>
//! <hash>
//! <at>
//! ```
//!
//! so anyone can check it with openssl and the public key (`twokey audit checkpoint
//! --public-key`), without twokey.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The private signing key (from `audit.checkpoint_key_file`). Its `Debug` shows only the id.
#[derive(Clone)]
pub struct CheckpointKey(SigningKey);

impl std::fmt::Debug for CheckpointKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CheckpointKey({})", key_id(&self.0.verifying_key()))
    }
}

/// The short name of a public key: the first 16 hex digits of SHA-256 of its 32 raw bytes.
pub fn key_id(k: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(k.as_bytes())[..8])
}

impl CheckpointKey {
    /// Read a PKCS#8 PEM Ed25519 private key.
    pub fn from_pem_file(path: &Path) -> Result<Self, String> {
        let pem = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::from_pem(&pem)
    }

    pub fn from_pem(pem: &str) -> Result<Self, String> {
        SigningKey::from_pkcs8_pem(pem)
            .map(Self)
            .map_err(|e| format!("not a PKCS#8 PEM Ed25519 private key ({e}); make one with `openssl genpkey -algorithm ed25519`"))
    }

    /// From a raw 32-byte seed (tests).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self(SigningKey::from_bytes(&seed))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// Sign the head `(seq, hash)` as of `at` (canonical time text).
    pub fn sign(&self, seq: i64, hash: &str, at: &str) -> Checkpoint {
        let signature = self.0.sign(&message(seq, hash, at));
        Checkpoint {
            seq,
            hash: hash.to_string(),
            at: at.to_string(),
            key_id: key_id(&self.0.verifying_key()),
            signature: B64.encode(signature.to_bytes()),
        }
    }

    /// The private key as PKCS#8 PEM (tests write key files with it).
    pub fn to_pem(&self) -> String {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        self.0
            .to_pkcs8_pem(LineEnding::LF)
            .expect("encoding an Ed25519 key cannot fail")
            .to_string()
    }
}

/// A public key that checks checkpoints.
#[derive(Debug, Clone)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// Read an SPKI PEM public key (`-----BEGIN PUBLIC KEY-----`).
    pub fn from_pem_file(path: &Path) -> Result<Self, String> {
        let pem = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        VerifyingKey::from_public_key_pem(&pem)
            .map(Self)
            .map_err(|e| format!("{}: not a PEM Ed25519 public key ({e})", path.display()))
    }

    pub fn to_pem(&self) -> String {
        self.0
            .to_public_key_pem(LineEnding::LF)
            .expect("encoding an Ed25519 key cannot fail")
    }

    pub fn key_id(&self) -> String {
        key_id(&self.0)
    }
}

/// The bytes a checkpoint's signature covers.
pub fn message(seq: i64, hash: &str, at: &str) -> Vec<u8> {
    format!("twokey audit checkpoint v1\n{seq}\n{hash}\n{at}\n").into_bytes()
}

/// One signed checkpoint, printed as one JSON line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// The chain head's seq when the checkpoint was made.
    pub seq: i64,
    /// The hash of the event at `seq`.
    pub hash: String,
    /// When the checkpoint was made (UTC, canonical form).
    pub at: String,
    /// Which key signed it (see [`key_id`]).
    pub key_id: String,
    /// Base64 of the 64-byte Ed25519 signature of [`message`].
    pub signature: String,
}

impl Checkpoint {
    /// Parse a checkpoint file: its first non-empty line.
    pub fn parse(text: &str) -> Result<Self, String> {
        let line = text
            .lines()
            .find(|l| !l.trim().is_empty())
            .ok_or("the checkpoint file is empty")?;
        serde_json::from_str(line).map_err(|e| format!("not a twokey checkpoint: {e}"))
    }

    /// Check the signature with `key`.
    pub fn verify(&self, key: &PublicKey) -> Result<(), String> {
        if self.key_id != key.key_id() {
            return Err(format!(
                "the checkpoint was signed by key {}, not by this key ({})",
                self.key_id,
                key.key_id()
            ));
        }
        let sig = B64
            .decode(self.signature.trim())
            .ok()
            .and_then(|b| Signature::from_slice(&b).ok())
            .ok_or("the checkpoint's signature is not a base64 Ed25519 signature")?;
        key.0
            .verify(&message(self.seq, &self.hash, &self.at), &sig)
            .map_err(|_| "the checkpoint's signature is not valid: it was altered or forged".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_verifies_and_an_altered_one_does_not() {
        let key = CheckpointKey::from_seed([7; 32]);
        let cp = key.sign(42, &"ab".repeat(32), "2026-12-03T09:00:00.000000Z");
        assert_eq!(cp.verify(&key.public()), Ok(()));
        let line = serde_json::to_string(&cp).unwrap();
        assert_eq!(Checkpoint::parse(&format!("\n{line}\n")).unwrap(), cp);

        let mut forged = cp.clone();
        forged.seq = 41;
        assert!(
            forged
                .verify(&key.public())
                .unwrap_err()
                .contains("not valid")
        );
        let other = CheckpointKey::from_seed([8; 32]);
        assert!(
            cp.verify(&other.public())
                .unwrap_err()
                .contains("signed by key")
        );
    }

    #[test]
    fn keys_round_trip_through_pem_and_debug_hides_them() {
        let key = CheckpointKey::from_seed([9; 32]);
        let again = CheckpointKey::from_pem(&key.to_pem()).unwrap();
        assert_eq!(again.public().key_id(), key.public().key_id());
        assert!(!format!("{key:?}").contains("PRIVATE"));
        assert!(CheckpointKey::from_pem("nonsense").is_err());
        let pem = key.public().to_pem();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"));
    }
}
