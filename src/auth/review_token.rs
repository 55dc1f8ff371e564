//! Review links: a JWT (HS256, `kid` names the key) bound to one request and one approver,
//! with a `jti` that is stored and usable for one decision, expiring with the request's
//! deadline. Only the signature, audience and issuer are checked here; expiry is checked
//! against the app's clock, and single use against the database, by the caller.

use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::ReviewKey;

/// The claims of a review link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewClaims {
    pub iss: String,
    pub aud: String,
    /// The normalized email of the approver the link was sent to.
    pub sub: String,
    /// The request id.
    pub rid: String,
    pub jti: String,
    pub iat: i64,
    pub exp: i64,
}

/// Why a review token was refused (recorded in the audit log as `token.rejected`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenRejection {
    #[error("the link is malformed")]
    Malformed,
    #[error("the link was signed with a key twokey does not know")]
    UnknownKey,
    #[error("the link's signature is not valid")]
    BadSignature,
    #[error("the link has expired")]
    Expired,
    #[error("the link has already been used")]
    Replayed,
    #[error("the link was sent to somebody else")]
    WrongApprover,
    #[error("the request is no longer waiting for a decision")]
    NotPending,
}

impl TokenRejection {
    pub fn code(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::UnknownKey => "unknown_key",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::Replayed => "replayed",
            Self::WrongApprover => "wrong_approver",
            Self::NotPending => "not_pending",
        }
    }
}

struct Key {
    kid: String,
    enc: EncodingKey,
    dec: DecodingKey,
}

/// The configured signing keys: the first signs, every one verifies (rotation: add a new key
/// first, remove the old one once its links have expired).
#[derive(Clone)]
pub struct ReviewTokens {
    keys: Arc<Vec<Key>>,
}

/// Longest token we try to parse; a real one is ~400 bytes.
pub const MAX_TOKEN_LEN: usize = 4096;

impl ReviewTokens {
    pub fn new(keys: &[ReviewKey]) -> Self {
        let keys = keys
            .iter()
            .filter_map(|k| {
                let secret = k.secret.expose().as_bytes();
                Some(Key {
                    kid: k.kid.clone(),
                    enc: EncodingKey::from_secret(secret).ok()?,
                    dec: DecodingKey::from_secret(secret).ok()?,
                })
            })
            .collect();
        Self {
            keys: Arc::new(keys),
        }
    }

    /// Sign `claims` with the current key; returns the token and the key id used.
    pub fn sign(
        &self,
        claims: &ReviewClaims,
    ) -> Result<(String, String), jsonwebtoken::errors::Error> {
        let key = self
            .keys
            .first()
            .ok_or(jsonwebtoken::errors::ErrorKind::InvalidKeyFormat)?;
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(key.kid.clone());
        Ok((
            jsonwebtoken::encode(&header, claims, &key.enc)?,
            key.kid.clone(),
        ))
    }

    /// Check the signature, algorithm, issuer, audience and expiry (against `now`, in seconds).
    ///
    /// SECURITY: only HS256 is accepted and the key is chosen by `kid` among our own keys, so
    /// neither `alg: none` nor a key from the token can get through.
    pub fn verify(&self, token: &str, now: i64) -> Result<ReviewClaims, TokenRejection> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(TokenRejection::Malformed);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenRejection::Malformed)?;
        if header.alg != Algorithm::HS256 {
            return Err(TokenRejection::BadSignature);
        }
        let kid = header.kid.ok_or(TokenRejection::UnknownKey)?;
        let key = self
            .keys
            .iter()
            .find(|k| crate::secret::constant_time_eq(&k.kid, &kid))
            .ok_or(TokenRejection::UnknownKey)?;
        let mut v = Validation::new(Algorithm::HS256);
        v.set_audience(&["review"]);
        v.set_issuer(&["twokey"]);
        // Expiry is checked below against the app's clock, not the system clock.
        v.validate_exp = false;
        v.required_spec_claims = ["exp", "aud", "iss", "sub"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let data = jsonwebtoken::decode::<ReviewClaims>(token, &key.dec, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::InvalidSignature => TokenRejection::BadSignature,
                _ => TokenRejection::Malformed,
            }
        })?;
        if data.claims.exp <= now {
            return Err(TokenRejection::Expired);
        }
        Ok(data.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn keys(kids: &[(&str, &str)]) -> ReviewTokens {
        ReviewTokens::new(
            &kids
                .iter()
                .map(|(k, s)| ReviewKey {
                    kid: k.to_string(),
                    secret: Secret::new(s.to_string()),
                })
                .collect::<Vec<_>>(),
        )
    }

    fn claims(exp: i64) -> ReviewClaims {
        ReviewClaims {
            iss: "twokey".into(),
            aud: "review".into(),
            sub: "bob@x.io".into(),
            rid: "r1".into(),
            jti: "j1".into(),
            iat: 0,
            exp,
        }
    }

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn round_trip_and_expiry() {
        let t = keys(&[("k1", A)]);
        let (tok, kid) = t.sign(&claims(100)).unwrap();
        assert_eq!(kid, "k1");
        assert_eq!(t.verify(&tok, 99).unwrap(), claims(100));
        assert_eq!(t.verify(&tok, 100), Err(TokenRejection::Expired));
    }

    #[test]
    fn an_old_key_still_verifies_until_removed() {
        let old = keys(&[("k1", A)]);
        let (tok, _) = old.sign(&claims(100)).unwrap();
        let rotated = keys(&[("k2", B), ("k1", A)]);
        assert!(rotated.verify(&tok, 1).is_ok());
        let removed = keys(&[("k2", B)]);
        assert_eq!(removed.verify(&tok, 1), Err(TokenRejection::UnknownKey));
    }

    #[test]
    fn tampering_and_alg_none_are_refused() {
        let t = keys(&[("k1", A)]);
        let (tok, _) = t.sign(&claims(100)).unwrap();
        let mut parts: Vec<String> = tok.split('.').map(str::to_string).collect();
        // Swap in claims for another request, keep the signature.
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut forged = claims(100);
        forged.rid = "r2".into();
        parts[1] = b64.encode(serde_json::to_vec(&forged).unwrap());
        assert_eq!(
            t.verify(&parts.join("."), 1),
            Err(TokenRejection::BadSignature)
        );
        let none_header = b64.encode(br#"{"alg":"none","kid":"k1","typ":"JWT"}"#);
        let unsigned = format!("{none_header}.{}.", parts[1]);
        assert!(t.verify(&unsigned, 1).is_err());
        let same_key_other_kid = keys(&[("k9", A)]);
        assert_eq!(
            same_key_other_kid.verify(&tok, 1),
            Err(TokenRejection::UnknownKey)
        );
        assert_eq!(t.verify("garbage", 1), Err(TokenRejection::Malformed));
        assert_eq!(
            t.verify(&"x".repeat(MAX_TOKEN_LEN + 1), 1),
            Err(TokenRejection::Malformed)
        );
    }
}
