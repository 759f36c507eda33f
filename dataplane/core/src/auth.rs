//! Authentication: which principal a bearer credential belongs to.
//!
//! An [`AuthSnapshot`] is immutable once built and shared read-only by every
//! shard (`Arc`), so checking a credential takes no lock. It stores only the
//! SHA-256 of each credential: credentials are 256-bit random tokens, so a fast
//! hash is enough (slow hashes are for low-entropy passwords) and the hash
//! leaks nothing usable. A new snapshot replaces the old one as a whole.

use std::sync::Arc;

use rustc_hash::FxHashMap;
use sha2::{Digest, Sha256};

use crate::ids::{PrincipalId, TenantId};

/// Prefix of every ArqonBus bearer token, so leaked tokens are easy to spot.
pub const TOKEN_PREFIX: &str = "abt_";

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
}

/// Who a connection is, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The tenant the principal belongs to.
    pub tenant: TenantId,
    /// The tenant's name, for `Welcome` and logs.
    pub tenant_name: Arc<str>,
    /// The principal.
    pub id: PrincipalId,
    /// The principal's name, for logs.
    pub name: Arc<str>,
}

/// Every valid credential at one moment.
#[derive(Debug, Default)]
pub struct AuthSnapshot {
    epoch: u64,
    by_hash: FxHashMap<CredentialHash, Arc<Principal>>,
}

impl AuthSnapshot {
    /// An empty snapshot (nothing authenticates) at `epoch`.
    pub fn new(epoch: u64) -> Self {
        Self {
            epoch,
            by_hash: FxHashMap::default(),
        }
    }

    /// Version of this snapshot; newer snapshots have larger epochs.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Adds a credential (by hash) for `principal`.
    pub fn insert(&mut self, hash: CredentialHash, principal: Arc<Principal>) {
        self.by_hash.insert(hash, principal);
    }

    /// Number of credentials.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// True when no credential is valid.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// The principal `credential` belongs to, if it is valid.
    pub fn authenticate(&self, credential: &str) -> Option<Arc<Principal>> {
        if credential.is_empty() {
            return None;
        }
        self.by_hash.get(&CredentialHash::of(credential)).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_right_token_authenticates() {
        let mut snap = AuthSnapshot::new(1);
        let p = Arc::new(Principal {
            tenant: TenantId(7),
            tenant_name: "acme".into(),
            id: PrincipalId(1),
            name: "svc".into(),
        });
        snap.insert(CredentialHash::of("abt_secret"), p.clone());
        assert_eq!(snap.authenticate("abt_secret"), Some(p));
        assert_eq!(snap.authenticate("abt_secreT"), None);
        assert_eq!(snap.authenticate(""), None);
        assert!(!format!("{snap:?}").contains("secret"));
    }
}
