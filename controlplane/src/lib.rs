//! The ArqonBus control plane: the gRPC control API (`arqonbus.control.v1`)
//! on tokio, over an embedded crash-safe store, pushing immutable
//! configuration snapshots to the data plane.
//!
//! It owns the durable configuration (tenants with their placement,
//! principals, credentials, policies, the steering set through the API, the
//! admin credential) and turns every accepted change into a
//! new [`ConfigSnapshot`](arqonbus_core::snapshot::ConfigSnapshot) applied
//! to every shard before the RPC answers. It does not route messages, and
//! does not link the glommio data plane: it reaches it through the
//! [`DataPlaneControl`] trait, which the server crate implements.
//!
//! # Layout
//! - [`plane`]: [`ControlPlane::open`] / [`ControlPlane::serve`], the entry
//!   points for the server crate;
//! - [`store`]: the [`Store`] trait and [`RedbStore`] (`control.redb`);
//! - [`snapshot`]: building a snapshot from the store (pure);
//!   [`publish`]: numbering, pushing and fail-closed readiness;
//! - `service`: the six gRPC services; [`validate`]: request checks;
//! - [`admin`]: the admin credential and its interceptor; [`tls`]: the
//!   listener's TLS; [`seed`]: `tenants.toml` and configuration tenants;
//! - [`dataplane`]: the trait to the data plane; [`metrics`]: counters.
//!
//! # Invariants
//! - An RPC that changed state answers only after the change is durable in
//!   the store *and* the snapshot containing it was handed to the data plane.
//! - Snapshot epochs strictly increase, across restarts.
//! - Fail closed: if the store or a record cannot be read or validated, the
//!   data plane gets the last good snapshot marked as refusing new sessions,
//!   and health says NOT_SERVING, until a later build succeeds.
//! - Secrets (bearer tokens, the admin token) are stored only as SHA-256 and
//!   never logged; signing keys stay in the store.

pub mod admin;
pub mod dataplane;
pub mod metrics;
pub mod plane;
pub mod publish;
pub mod seed;
mod service;
pub mod snapshot;
pub mod store;
pub mod tls;
pub mod validate;

pub use dataplane::{DataPlaneControl, DataPlaneError, NotApplied};
pub use plane::{
    ControlPlane, ControlPlaneConfig, ControlPlaneError, ControlPlaneHandle, ReloadError,
};
pub use publish::Readiness;
pub use seed::{SeedCredential, SeedTenant};
pub use service::ReloadFn;
pub use store::{RedbStore, Store, StoreError};
