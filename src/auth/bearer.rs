//! API bearer tokens: `Authorization: Bearer <JWT>` issued by the configured issuer for the
//! configured API audience, verified with `jsonwebtoken` against the issuer's JWKS (cached in
//! [`Oidc`], refetched on an unknown `kid` at most once a minute).

use jsonwebtoken::{DecodingKey, Validation};
use serde_json::Value;
use time::OffsetDateTime;

use super::oidc::{ALLOWED_ALGS, ClaimsProblem, Identity, Oidc, map_claims};

/// Longest bearer token looked at. Entra ID tokens with many groups are a few KiB.
pub const MAX_BEARER_LEN: usize = 16 * 1024;
/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: i64 = 60;

/// Why a bearer token was refused. The code goes into the 401 body and the log; the token
/// itself never goes anywhere.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BearerRejection {
    #[error("bearer tokens are not enabled on this server (auth.api_audience is not set)")]
    NotEnabled,
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token is signed with an algorithm twokey does not accept")]
    AlgorithmRefused,
    #[error("the token is signed with a key the identity provider does not publish")]
    UnknownKey,
    #[error("the token's signature is not valid")]
    BadSignature,
    #[error("the token is for another audience")]
    WrongAudience,
    #[error("the token is from another issuer")]
    WrongIssuer,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("{0}")]
    Claims(ClaimsProblem),
    #[error("the identity provider's keys cannot be fetched right now")]
    Unavailable,
}

impl BearerRejection {
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotEnabled => "bearer_not_enabled",
            Self::Malformed => "malformed",
            Self::AlgorithmRefused => "alg_refused",
            Self::UnknownKey => "unknown_key",
            Self::BadSignature => "bad_signature",
            Self::WrongAudience => "wrong_audience",
            Self::WrongIssuer => "wrong_issuer",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::Claims(c) => c.code(),
            Self::Unavailable => "issuer_unavailable",
        }
    }
}

/// The `alg` of a compact JWS, read before anything else so that `none` and HS* are refused
/// by name (jsonwebtoken's header type cannot even hold `none`).
fn raw_alg(token: &str) -> Option<String> {
    use base64::Engine;
    let header = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v.get("alg")?.as_str().map(str::to_string)
}

/// Verify `token` and map its claims.
pub async fn verify(
    oidc: &Oidc,
    token: &str,
    now: OffsetDateTime,
) -> Result<Identity, BearerRejection> {
    let Some(audience) = oidc.cfg.api_audience.as_deref() else {
        return Err(BearerRejection::NotEnabled);
    };
    if token.is_empty() || token.len() > MAX_BEARER_LEN || token.split('.').count() != 3 {
        return Err(BearerRejection::Malformed);
    }
    let alg = raw_alg(token).ok_or(BearerRejection::Malformed)?;
    // SECURITY: the algorithm allow-list comes first; `none`, HS* (an HMAC keyed with the
    // public key) and anything else never reach a verifier.
    if !ALLOWED_ALGS.contains(&alg.as_str()) {
        return Err(BearerRejection::AlgorithmRefused);
    }
    let header = jsonwebtoken::decode_header(token).map_err(|_| BearerRejection::Malformed)?;
    // SECURITY: the key is chosen by `kid` among the issuer's published keys only; a key
    // embedded in the token (`jwk`, `x5c`, `jku`) is never used.
    let kid = header.kid.clone().ok_or(BearerRejection::UnknownKey)?;
    let keys = oidc
        .keys()
        .await
        .map_err(|_| BearerRejection::Unavailable)?;
    let jwk = match keys.find(&kid) {
        Some(j) => j.clone(),
        None => {
            let keys = oidc
                .refresh_keys()
                .await
                .ok_or(BearerRejection::Unavailable)?;
            keys.find(&kid)
                .cloned()
                .ok_or(BearerRejection::UnknownKey)?
        }
    };
    // A key that names its algorithm may only be used with that one.
    if let Some(ka) = jwk.common.key_algorithm
        && ka.to_string() != alg
    {
        return Err(BearerRejection::AlgorithmRefused);
    }
    let key = DecodingKey::from_jwk(&jwk).map_err(|_| BearerRejection::UnknownKey)?;
    let mut v = Validation::new(header.alg);
    v.algorithms = vec![header.alg];
    v.set_audience(&[audience]);
    v.set_issuer(&[oidc.cfg.issuer.as_str()]);
    // Times are checked below against the app's clock, with a small leeway.
    v.validate_exp = false;
    v.validate_nbf = false;
    v.required_spec_claims = ["exp", "iss", "aud", "sub"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let data = jsonwebtoken::decode::<Value>(token, &key, &v).map_err(|e| {
        use jsonwebtoken::errors::ErrorKind as K;
        match e.kind() {
            K::InvalidSignature => BearerRejection::BadSignature,
            K::InvalidAudience => BearerRejection::WrongAudience,
            K::InvalidIssuer => BearerRejection::WrongIssuer,
            K::InvalidAlgorithm | K::InvalidAlgorithmName => BearerRejection::AlgorithmRefused,
            // A key of the wrong family for the algorithm, or unreadable key material.
            K::InvalidKeyFormat | K::InvalidRsaKey(_) | K::InvalidEcdsaKey | K::InvalidEddsaKey => {
                BearerRejection::BadSignature
            }
            _ => BearerRejection::Malformed,
        }
    })?;
    let claims = data.claims;
    let now = now.unix_timestamp();
    let exp = claims
        .get("exp")
        .and_then(Value::as_i64)
        .ok_or(BearerRejection::Malformed)?;
    if now >= exp + LEEWAY_SECS {
        return Err(BearerRejection::Expired);
    }
    if let Some(nbf) = claims.get("nbf") {
        let nbf = nbf.as_i64().ok_or(BearerRejection::Malformed)?;
        if now + LEEWAY_SECS < nbf {
            return Err(BearerRejection::NotYetValid);
        }
    }
    map_claims(&claims, &oidc.cfg.claims, &oidc.cfg.issuer).map_err(BearerRejection::Claims)
}
