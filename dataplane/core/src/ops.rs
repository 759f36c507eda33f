//! What the data plane reports to operators, as plain data.
//!
//! Shared by the data plane (which fills these in on each shard) and the
//! control plane (which turns them into API responses), so neither depends on
//! the other.

use crate::ids::{PrincipalId, TenantId};

/// One open connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// Globally unique connection id (the shard is in the top byte).
    pub id: u64,
    /// The shard that owns it.
    pub shard: u16,
    /// Its tenant, once authenticated.
    pub tenant: Option<TenantId>,
    /// Its principal, once authenticated.
    pub principal: Option<PrincipalId>,
    /// The principal's name.
    pub principal_name: String,
    /// What the client called itself.
    pub client_name: String,
    /// human | device | agent | unspecified.
    pub client_kind: String,
    /// The peer's address.
    pub remote_addr: String,
    /// Live subscriptions.
    pub subscriptions: u32,
    /// Messages published.
    pub msgs_in: u64,
    /// Payload bytes published.
    pub bytes_in: u64,
    /// Messages delivered.
    pub msgs_out: u64,
    /// Payload bytes delivered.
    pub bytes_out: u64,
    /// When it connected, Unix milliseconds.
    pub connected_at_unix_ms: i64,
}

/// One shard's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ShardStatus {
    /// The shard.
    pub id: u16,
    /// Not accepting; its connections were asked to move.
    pub draining: bool,
    /// Open connections.
    pub connections: u64,
    /// Local subscriptions.
    pub subscriptions: u64,
    /// The configuration epoch it has applied.
    pub config_epoch: u64,
    /// Connections handed to this shard after authentication (their
    /// tenant's home is here), since start.
    pub moved_in: u64,
    /// Connections this shard handed to their tenant's home shard.
    pub moved_out: u64,
}

/// The node's steering, as operators see it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SteeringStatus {
    /// The steering in force (the control API's, or the configured default).
    pub config: crate::placement::SteeringConfig,
    /// Where `config` came from: `"config"` (the file or built-in default)
    /// or `"api"` (set through the control API).
    pub source: &'static str,
    /// Whether the SK_REUSEPORT program is attached. When false, the
    /// kernel's hash places connections whatever the mode says.
    pub active: bool,
    /// Why the program is not attached, when it is not.
    pub fallback_reason: Option<String>,
}

/// The shard that owns a connection id.
pub fn shard_of(connection_id: u64) -> u16 {
    (connection_id >> 56) as u16
}
