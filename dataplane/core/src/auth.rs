//! Credentials: bearer tokens and signed tokens.
//!
//! - **Bearer** (`abt_…`): 256 random bits. Only the SHA-256 is kept
//!   ([`CredentialHash`]); a fast hash is right for high-entropy tokens (slow
//!   hashes exist for low-entropy passwords) and the hash is useless to a
//!   thief.
//! - **Signed** (`abs_<claims>.<signature>`): `SignedTokenClaims` (see
//!   `proto/arqonbus/v1/token.proto`) signed with the tenant's ed25519 key.
//!   A shard verifies it with the tenant's public key from its snapshot, no
//!   store round trip; the snapshot also lists the live credential ids, so a
//!   revoked token fails although its signature is valid.
//!
//! Checking a credential never allocates on the success path beyond what the
//! token text needs to be decoded, and never reads a clock: callers pass
//! `now` as Unix seconds.

use arqonbus_proto::v1::SignedTokenClaims;
use base64::Engine;
use prost::Message as _;
use ring::signature::{ED25519, Ed25519KeyPair, UnparsedPublicKey};
use sha2::{Digest, Sha256};

/// Prefix of every ArqonBus bearer token, so leaked tokens are easy to spot.
pub const TOKEN_PREFIX: &str = "abt_";
/// Prefix of every ArqonBus signed token.
pub const SIGNED_PREFIX: &str = "abs_";

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The SHA-256 of a credential.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CredentialHash(pub [u8; 32]);

impl std::fmt::Debug for CredentialHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Hashes are not secrets, but keep them short in logs.
        write!(f, "CredentialHash({:02x}{:02x}..)", self.0[0], self.0[1])
    }
}

impl CredentialHash {
    /// Hashes a presented credential.
    pub fn of(credential: &str) -> Self {
        Self(Sha256::digest(credential.as_bytes()).into())
    }

    /// The first eight hex digits, to recognise a credential in listings.
    pub fn fingerprint(&self) -> String {
        use std::fmt::Write as _;
        self.0[..4]
            .iter()
            .fold(String::with_capacity(8), |mut s, b| {
                let _ = write!(s, "{b:02x}");
                s
            })
    }
}

/// Why a signed token is not acceptable (before any lookup).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignedTokenError {
    /// Not of the form `abs_<claims>.<signature>` with valid base64 and
    /// protobuf.
    #[error("malformed signed token")]
    Malformed,
    /// The signature does not verify with the tenant's key.
    #[error("bad signature")]
    BadSignature,
}

/// Splits and decodes a signed token, without verifying it.
pub fn parse_signed(
    token: &str,
) -> Result<(SignedTokenClaims, Vec<u8>, Vec<u8>), SignedTokenError> {
    let rest = token
        .strip_prefix(SIGNED_PREFIX)
        .ok_or(SignedTokenError::Malformed)?;
    let (claims_b64, sig_b64) = rest.split_once('.').ok_or(SignedTokenError::Malformed)?;
    let claims_bytes = B64
        .decode(claims_b64)
        .map_err(|_| SignedTokenError::Malformed)?;
    let sig = B64
        .decode(sig_b64)
        .map_err(|_| SignedTokenError::Malformed)?;
    let claims = SignedTokenClaims::decode(claims_bytes.as_slice())
        .map_err(|_| SignedTokenError::Malformed)?;
    Ok((claims, claims_bytes, sig))
}

/// Verifies `signature` over `claims` with an ed25519 public key.
pub fn verify_signature(
    public_key: &[u8; 32],
    claims: &[u8],
    signature: &[u8],
) -> Result<(), SignedTokenError> {
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(claims, signature)
        .map_err(|_| SignedTokenError::BadSignature)
}

/// Encodes and signs `claims` into token text (the control plane's side).
pub fn sign_token(claims: &SignedTokenClaims, key: &Ed25519KeyPair) -> String {
    let bytes = claims.encode_to_vec();
    let sig = key.sign(&bytes);
    format!(
        "{SIGNED_PREFIX}{}.{}",
        B64.encode(&bytes),
        B64.encode(sig.as_ref())
    )
}

#[cfg(test)]
mod tests {
    use ring::signature::KeyPair as _;

    use super::*;

    fn key() -> Ed25519KeyPair {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
    }

    #[test]
    fn signed_tokens_round_trip_and_tampering_fails() {
        let k = key();
        let public: [u8; 32] = k.public_key().as_ref().try_into().unwrap();
        let claims = SignedTokenClaims {
            tenant_id: 7,
            principal_id: 9,
            credential_id: 11,
            issued_at_unix: 100,
            expires_at_unix: 200,
        };
        let token = sign_token(&claims, &k);
        let (parsed, bytes, sig) = parse_signed(&token).unwrap();
        assert_eq!(parsed, claims);
        verify_signature(&public, &bytes, &sig).unwrap();

        // Another tenant's key, or changed claims, fail.
        let other: [u8; 32] = key().public_key().as_ref().try_into().unwrap();
        assert_eq!(
            verify_signature(&other, &bytes, &sig),
            Err(SignedTokenError::BadSignature)
        );
        let forged = SignedTokenClaims {
            principal_id: 1,
            ..claims
        };
        let mut evil = sign_token(&forged, &k);
        evil.truncate(evil.find('.').unwrap());
        evil.push_str(&token[token.find('.').unwrap()..]);
        let (_, b, s) = parse_signed(&evil).unwrap();
        assert!(verify_signature(&public, &b, &s).is_err());

        for bad in ["", "abs_", "abs_x", "abs_!!.??", "abt_plain"] {
            assert_eq!(parse_signed(bad).unwrap_err(), SignedTokenError::Malformed);
        }
    }

    #[test]
    fn hashes_are_short_in_debug() {
        let h = CredentialHash::of("abt_secret");
        assert!(!format!("{h:?}").contains("secret"));
        assert_eq!(h.fingerprint().len(), 8);
    }
}
