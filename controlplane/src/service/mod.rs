//! The six gRPC services of `arqonbus.control.v1`, on one [`Api`] value.
//!
//! Each RPC runs in a `control_rpc` span (fields `rpc`, the method, and
//! `code`, its outcome), and ends with one log line carrying the outcome
//! and duration: debug
//! for successful reads, info for successful changes and client errors, warn
//! for server-side failures. Requests and responses are never logged (they
//! carry tokens).
//!
//! Every change follows the same order: validate (INVALID_ARGUMENT naming
//! the field), commit to the store (durable), publish a new snapshot to the
//! data plane and wait for every shard to apply it, answer. When a shard
//! does not confirm in time the answer is UNAVAILABLE naming the shards
//! (the change is stored); a retry of the same request gets the first
//! answer once every shard has applied it ([`retry`]). A change that
//! changes nothing (revoking a revoked credential) still waits until every
//! shard runs the current snapshot. Store and data plane calls block, so
//! they run on tokio's blocking pool.

mod connections;
pub(crate) mod credentials;
mod node;
mod policies;
mod principals;
mod retry;
mod tenants;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use self::retry::{RetryKey, Unconfirmed};

use arqonbus_core::limits::Limits;
use tonic::{Code, Response, Status};
use tracing::Instrument as _;

use crate::dataplane::{DataPlaneControl, DataPlaneError, NotApplied};
use crate::metrics::{Metrics, RpcOutcome};
use crate::publish::Publisher;
use crate::store::{Store, StoreError};

/// Re-reads the server's configuration file and returns its limits; the
/// error is shown to the operator who asked for the reload.
pub type ReloadFn = dyn Fn() -> Result<Limits, String> + Send + Sync;

/// What the services share.
pub(crate) struct Inner {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) publisher: Arc<Publisher>,
    pub(crate) dataplane: Arc<dyn DataPlaneControl>,
    pub(crate) reload: Option<Arc<ReloadFn>>,
    pub(crate) server_id: String,
    pub(crate) metrics: Arc<Metrics>,
    /// The placement of a tenant created without one.
    pub(crate) default_placement: arqonbus_core::placement::TenantPlacement,
    /// The admin credential in force (`RotateAdminToken` replaces it).
    pub(crate) admin: Arc<crate::admin::AdminCell>,
}

/// Implements every control service; cheap to clone.
#[derive(Clone)]
pub(crate) struct Api {
    inner: Arc<Inner>,
    retries: Arc<Unconfirmed>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("server_id", &self.inner.server_id)
            .finish_non_exhaustive()
    }
}

/// Whether an RPC reads or changes state (for log levels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Change,
}

/// The status for a store failure. Store-side faults are UNAVAILABLE: the
/// request may succeed once the store is repaired.
#[expect(
    clippy::needless_pass_by_value,
    reason = "used as `map_err(store_status)`, which passes the error by value"
)]
pub(crate) fn store_status(e: StoreError) -> Status {
    let msg = e.to_string();
    match e {
        StoreError::NotFound { .. } => Status::not_found(msg),
        StoreError::AlreadyExists { .. } => Status::already_exists(msg),
        StoreError::VersionMismatch { .. } => Status::failed_precondition(msg),
        StoreError::Invalid { .. } => Status::invalid_argument(msg),
        StoreError::Corrupt { .. } | StoreError::SchemaTooNew { .. } | StoreError::Backend(_) => {
            Status::unavailable(msg)
        }
        StoreError::Mint(_) => Status::internal(msg),
    }
}

/// The status for a data plane failure.
pub(crate) fn dataplane_status(e: DataPlaneError) -> Status {
    match e {
        DataPlaneError::NoSuchShard(_) => Status::not_found(e.to_string()),
        DataPlaneError::Unresponsive(_) => Status::unavailable(e.to_string()),
    }
}

/// The status of a change stored but not applied by every shard in time:
/// UNAVAILABLE (retryable), naming the shards.
pub(crate) fn unapplied_status(e: &NotApplied) -> Status {
    Status::unavailable(format!(
        "the change is stored but {e}: retry the same request to confirm"
    ))
}

/// Runs `f` on the blocking pool, inside the current span.
async fn blocking<T, F>(f: F) -> Result<T, Status>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, Status> + Send + 'static,
{
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(f))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "control task failed");
            Status::internal("internal error")
        })?
}

impl Api {
    pub(crate) fn new(inner: Inner) -> Self {
        Self {
            inner: Arc::new(inner),
            retries: Arc::default(),
        }
    }

    /// Runs one RPC in its span and logs its outcome.
    async fn rpc<T, F>(
        &self,
        method: &'static str,
        kind: Kind,
        body: F,
    ) -> Result<Response<T>, Status>
    where
        F: Future<Output = Result<T, Status>>,
    {
        let span = tracing::info_span!("control_rpc", rpc = method, code = tracing::field::Empty);
        let started = Instant::now();
        let result = body.instrument(span.clone()).await;
        let elapsed_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let code = result.as_ref().map_or_else(Status::code, |_| Code::Ok);
        self.inner.metrics.inc_rpc(RpcOutcome::of(code), elapsed_us);
        span.record("code", tracing::field::debug(code));
        match &result {
            Ok(_) if kind == Kind::Read => {
                tracing::debug!(parent: &span, code = "OK", elapsed_us, "control RPC done");
            }
            Ok(_) => tracing::info!(parent: &span, code = "OK", elapsed_us, "control RPC done"),
            Err(s) => match s.code() {
                Code::Unavailable | Code::Internal | Code::Unknown => tracing::warn!(
                    parent: &span,
                    code = ?s.code(),
                    message = s.message(),
                    elapsed_us,
                    "control RPC failed"
                ),
                _ => tracing::info!(
                    parent: &span,
                    code = ?s.code(),
                    message = s.message(),
                    elapsed_us,
                    "control RPC refused"
                ),
            },
        }
        result.map(Response::new)
    }

    /// Reads the store on the blocking pool.
    async fn read<T, F>(&self, f: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        blocking(move || f(&*inner.store).map_err(store_status)).await
    }

    /// Commits a change, then publishes a snapshot and waits for every
    /// shard, on the blocking pool; `key` identifies the request for its
    /// retries (see [`Self::commit`]).
    async fn change<T, F>(&self, key: RetryKey, f: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    {
        self.commit(Some(key), move |inner| {
            f(&*inner.store)
                .map(|out| (out, true))
                .map_err(store_status)
        })
        .await
    }

    /// Runs `f` on the blocking pool; it commits a change and says whether
    /// it changed anything. Then publishes a snapshot when it did, and
    /// answers once every shard runs the current snapshot.
    ///
    /// When a shard does not confirm in time the answer is
    /// [`unapplied_status`], and `f`'s result is kept under `key`: a retry
    /// of the same request does not run `f` again but gets that result once
    /// every shard has caught up. `key` is `None` for changes that are
    /// idempotent as they are (setting the steering, a reload).
    async fn commit<T, F>(&self, key: Option<RetryKey>, f: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<(T, bool), Status> + Send + 'static,
    {
        let inner = self.inner.clone();
        let retries = self.retries.clone();
        blocking(move || {
            let kept = key.and_then(|k| retries.take::<T>(k, Instant::now()));
            let (out, ack) = if let Some(out) = kept {
                (out, inner.publisher.confirm())
            } else {
                let (out, changed) = f(&inner)?;
                let ack = if changed {
                    inner.publisher.publish().map(drop)
                } else {
                    inner.publisher.confirm()
                };
                (out, ack)
            };
            match ack {
                Ok(()) => Ok(out),
                Err(e) => {
                    if let Some(k) = key {
                        retries.keep(k, out, Instant::now());
                    }
                    Err(unapplied_status(&e))
                }
            }
        })
        .await
    }
}
