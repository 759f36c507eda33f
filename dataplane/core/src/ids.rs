//! Newtype identities. Each id says which table it indexes, so a connection id
//! can never be passed where a shard id is expected.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A tenant: the unit of isolation. Subjects are namespaced per tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TenantId(pub u64);

/// A principal (a user, device or service identity) inside a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PrincipalId(pub u64);

/// A credential (bearer or signed token) of a principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CredentialId(pub u64);

/// A data-plane shard: one pinned core with its executor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId(pub u16);

impl ShardId {
    /// The shard's position, for indexing per-shard arrays.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

/// A connection, unique within its shard for the life of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// A subscription id chosen by the client; unique per connection, never 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sid(pub u64);

macro_rules! display_inner {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
    )*};
}
display_inner!(TenantId, PrincipalId, CredentialId, ShardId, ConnId, Sid);
