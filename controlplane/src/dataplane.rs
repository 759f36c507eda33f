//! The control plane's view of the data plane: the [`DataPlaneControl`] trait.
//!
//! The control plane never links the glommio data plane. The server crate
//! implements this trait for `arqonbus_dataplane::DataPlane`; the tests of
//! this crate implement it with an in-memory double. Every call may block
//! briefly (it talks to shard threads), so the services call it from
//! `tokio::task::spawn_blocking`, never on a runtime worker.

use std::sync::Arc;

use arqonbus_core::metrics::ShardMetrics;
use arqonbus_core::ops::{ConnectionInfo, ShardStatus, SteeringStatus};
use arqonbus_core::snapshot::ConfigSnapshot;

/// Why the data plane could not carry out an operator command. Both come from
/// the data plane, not from the request's author; a retry can help with
/// [`DataPlaneError::Unresponsive`] only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DataPlaneError {
    /// The shard did not answer in time (overloaded or stuck).
    #[error("shard {0} did not answer")]
    Unresponsive(u16),
    /// There is no such shard on this node.
    #[error("no shard {0}")]
    NoSuchShard(u16),
}

/// Shards that did not confirm a snapshot in time. The snapshot stays
/// queued for them; pushing the same or a newer one again is how the
/// control plane asks whether they have caught up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "not yet applied by shard(s) {} (configuration epoch {epoch})",
    list(shards)
)]
pub struct NotApplied {
    /// The snapshot's epoch.
    pub epoch: u64,
    /// The shards that did not confirm it, in order; never empty.
    pub shards: Vec<u16>,
}

fn list(shards: &[u16]) -> String {
    shards
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the control plane needs from the data plane. Implemented by the
/// server crate for `arqonbus_dataplane::DataPlane`. Calls may block briefly
/// (they talk to shard threads): call them from `tokio::task::spawn_blocking`.
pub trait DataPlaneControl: Send + Sync + 'static {
    /// Push a snapshot to every shard (they apply it between batches) and
    /// wait for them: `Ok` once every shard runs it (a stopped shard counts
    /// as done), else the shards that did not confirm in time. Pushing a
    /// snapshot a shard already runs only asks it to confirm.
    fn apply(&self, snapshot: Arc<ConfigSnapshot>) -> Result<(), NotApplied>;
    /// Every open connection on every shard.
    fn connections(&self) -> Result<Vec<ConnectionInfo>, DataPlaneError>;
    /// Close one connection with DISCONNECTED_BY_OPERATOR; Ok(false) if no such connection.
    fn kick(&self, connection_id: u64) -> Result<bool, DataPlaneError>;
    /// Stop a shard accepting and ask its connections to move.
    fn drain(&self, shard: u16) -> Result<(), DataPlaneError>;
    /// Let a drained shard accept again.
    fn resume(&self, shard: u16) -> Result<(), DataPlaneError>;
    /// The state of every shard.
    fn status(&self) -> Result<Vec<ShardStatus>, DataPlaneError>;
    /// The node's steering: what is in force and whether the program runs.
    /// A new steering reaches the data plane in the snapshot
    /// ([`ConfigSnapshot::set_steering`]); validate it against
    /// [`shard_count`](Self::shard_count) first.
    fn steering(&self) -> SteeringStatus;
    /// How many shards the node runs (to validate shard numbers).
    fn shard_count(&self) -> usize;
    /// What every shard measured (for `/metrics`); none by default.
    fn metrics(&self) -> Result<Vec<ShardMetrics>, DataPlaneError> {
        Ok(Vec::new())
    }
}
