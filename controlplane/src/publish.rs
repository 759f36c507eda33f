//! Publishing snapshots: build, number, push, confirm, and report readiness.
//!
//! The `Publisher` owns the last snapshot pushed, the last *good* one, the
//! build cache, the server's limits and the data plane handle.
//! `Publisher::publish` refreshes its copy of the store's contents (only the
//! records written since the last build: `Store::refresh`; all of them
//! after a reload), builds a snapshot with a fresh epoch from the last one
//! and what changed (incrementally: [`crate::snapshot::BuildCache`]) and
//! applies it to the data plane, all under one lock, so shards receive
//! snapshots in epoch order and every snapshot reflects every write
//! acknowledged before it.
//!
//! Invariants:
//! - epochs strictly increase, across restarts too (the last one is kept in
//!   the store; if the store cannot allocate one, the next is the last
//!   pushed plus one);
//! - fail closed: when a build fails, the snapshot pushed is the last good
//!   one renumbered and refusing new sessions, with the reason; readiness
//!   (health, `NodeStatus.accepting`) follows the last snapshot pushed;
//! - acknowledged means applied: `publish` and `confirm` return `Ok` only
//!   when every shard runs the snapshot (or a newer one); otherwise they name
//!   the shards that did not confirm, and remember it, so the next `confirm`
//!   pushes the current snapshot again until every shard has it;
//! - `DataPlaneControl::apply` is called with the lock held: it must not call
//!   back into the control plane.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use arqonbus_core::limits::Limits;
use arqonbus_core::snapshot::ConfigSnapshot;
use tokio::sync::watch;

use crate::dataplane::{DataPlaneControl, NotApplied};
use crate::metrics::Metrics;
use crate::snapshot::{BuildCache, BuildError, compile_snapshot_cached, now_unix};
use crate::store::Store;
use crate::store::StoreContents;

/// Whether the node accepts new sessions, as of the last snapshot pushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// New sessions are accepted.
    pub accepting: bool,
    /// Why not, when they are not.
    pub reason: Option<String>,
    /// The epoch of the last snapshot pushed.
    pub epoch: u64,
}

impl Readiness {
    fn of(s: &ConfigSnapshot) -> Self {
        Self {
            accepting: s.accepting(),
            reason: s.reason().map(str::to_owned),
            epoch: s.epoch(),
        }
    }
}

struct State {
    limits: Limits,
    last_good: Option<Arc<ConfigSnapshot>>,
    current: Arc<ConfigSnapshot>,
    cache: BuildCache,
    /// The store's contents as of the last build, refreshed with what was
    /// written since (`None`: read everything next time).
    mirror: Option<StoreContents>,
    /// The shards that did not confirm `current`, if any.
    unapplied: Option<NotApplied>,
    dataplane: Option<Arc<dyn DataPlaneControl>>,
}

/// Builds and pushes snapshots. Blocking: call from `spawn_blocking`.
pub(crate) struct Publisher {
    store: Arc<dyn Store>,
    state: Mutex<State>,
    readiness: watch::Sender<Readiness>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("readiness", &*self.readiness.borrow())
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// Builds the first snapshot (no data plane yet). A store that cannot
    /// be read gives an empty snapshot that refuses new sessions.
    pub(crate) fn start(
        store: Arc<dyn Store>,
        limits: Limits,
        metrics: Arc<Metrics>,
    ) -> (Self, Arc<ConfigSnapshot>) {
        let empty = Arc::new(ConfigSnapshot::new(0, limits.clone()));
        let (readiness, _) = watch::channel(Readiness::of(&empty));
        let publisher = Self {
            store,
            state: Mutex::new(State {
                limits,
                last_good: None,
                current: empty,
                cache: BuildCache::default(),
                mirror: None,
                unapplied: None,
                dataplane: None,
            }),
            readiness,
            metrics,
        };
        let mut st = publisher.lock();
        let first = publisher.build(&mut st);
        drop(st);
        (publisher, first)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while publishing leaves the state as consistent as
        // before it: every field is replaced whole.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Connects the data plane; later snapshots are applied to it.
    pub(crate) fn attach(&self, dataplane: Arc<dyn DataPlaneControl>) {
        self.lock().dataplane = Some(dataplane);
    }

    /// Replaces the server's limits (the next snapshot carries them).
    pub(crate) fn set_limits(&self, limits: Limits) {
        self.lock().limits = limits;
    }

    /// The last snapshot pushed.
    pub(crate) fn current(&self) -> Arc<ConfigSnapshot> {
        self.lock().current.clone()
    }

    /// Readiness updates.
    pub(crate) fn readiness(&self) -> watch::Receiver<Readiness> {
        self.readiness.subscribe()
    }

    /// Builds a snapshot from the store, pushes it to the data plane and
    /// waits for every shard; fails closed as the module documentation
    /// says. `Err` names the shards that did not confirm it in time (the
    /// snapshot is the current one all the same).
    pub(crate) fn publish(&self) -> Result<Arc<ConfigSnapshot>, NotApplied> {
        let mut st = self.lock();
        let snapshot = self.build(&mut st);
        self.push(&mut st).map(|()| snapshot)
    }

    /// Makes the next build read the whole store (a reload: every record
    /// checked again), not only what was written since the last one.
    pub(crate) fn forget_contents(&self) {
        self.lock().mirror = None;
    }

    /// `Ok` once every shard runs the current snapshot: at once when the
    /// last push was confirmed everywhere, else after pushing it again.
    pub(crate) fn confirm(&self) -> Result<(), NotApplied> {
        let mut st = self.lock();
        if st.unapplied.is_none() {
            return Ok(());
        }
        self.push(&mut st)
    }

    /// Builds the next snapshot and makes it the current one.
    fn build(&self, st: &mut State) -> Arc<ConfigSnapshot> {
        let floor = st.current.epoch().saturating_add(1);
        let started = Instant::now();
        // Where the time goes: the epoch's durable write, reading what
        // changed (or all), compiling.
        let us = |since: Instant| u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX);
        let (mut epoch_us, mut read_us, mut read_all) = (0, 0, false);
        let (epoch, built) = match self.store.next_epoch(floor) {
            Ok(epoch) => {
                epoch_us = us(started);
                let State {
                    mirror,
                    cache,
                    limits,
                    ..
                } = &mut *st;
                let reading = Instant::now();
                let refreshed = self.store.refresh(mirror);
                read_us = us(reading);
                let built = refreshed
                    .map_err(BuildError::Store)
                    .and_then(|(contents, changes)| {
                        read_all = changes.is_none();
                        compile_snapshot_cached(
                            contents,
                            changes.as_ref(),
                            epoch,
                            limits,
                            now_unix(),
                            cache,
                        )
                    });
                (epoch, built)
            }
            Err(e) => (floor, Err(BuildError::Store(e))),
        };
        let snapshot = match built {
            Ok((s, stats)) => {
                let s = Arc::new(s);
                st.last_good = Some(s.clone());
                tracing::info!(
                    epoch,
                    build_us = us(started),
                    epoch_us,
                    read_us,
                    read_all,
                    rebuilt = ?stats,
                    "configuration snapshot published"
                );
                s
            }
            Err(e) => {
                let reason = e.to_string();
                tracing::error!(
                    epoch,
                    %reason,
                    "configuration unreadable: refusing new sessions, existing sessions keep the last good snapshot"
                );
                self.metrics.inc_refusing();
                let base = st
                    .last_good
                    .clone()
                    .unwrap_or_else(|| Arc::new(ConfigSnapshot::new(0, st.limits.clone())));
                Arc::new(base.refusing_new_sessions(epoch, &reason))
            }
        };
        st.current = snapshot.clone();
        self.metrics.inc_published();
        self.readiness.send_replace(Readiness::of(&snapshot));
        snapshot
    }

    /// Pushes the current snapshot and waits for every shard.
    fn push(&self, st: &mut State) -> Result<(), NotApplied> {
        let Some(dp) = &st.dataplane else {
            return Ok(());
        };
        let started = Instant::now();
        let result = dp.apply(st.current.clone());
        self.metrics.record_apply(started.elapsed(), result.is_ok());
        match &result {
            Ok(()) => {
                if let Some(was) = st.unapplied.take() {
                    tracing::info!(epoch = st.current.epoch(), late = ?was.shards, "every shard confirmed the configuration");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, epoch = e.epoch, shards = ?e.shards, "shards did not confirm the configuration in time: the change is stored, not yet applied everywhere");
                st.unapplied = Some(e.clone());
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use arqonbus_core::TenantId;
    use arqonbus_core::ops::{ConnectionInfo, ShardStatus, SteeringStatus};
    use redb::TableDefinition;

    use super::*;
    use crate::dataplane::DataPlaneError;
    use crate::store::RedbStore;
    use crate::store::tests::{bearer, new_principal, new_tenant};

    /// Records what it was told to apply; while `late` is set, shard 1
    /// confirms nothing.
    #[derive(Default)]
    struct Recorder {
        applied: Mutex<Vec<Arc<ConfigSnapshot>>>,
        late: std::sync::atomic::AtomicBool,
    }

    impl Recorder {
        fn epochs(&self) -> Vec<u64> {
            self.applied
                .lock()
                .unwrap()
                .iter()
                .map(|s| s.epoch())
                .collect()
        }
    }

    impl DataPlaneControl for Recorder {
        fn apply(&self, snapshot: Arc<ConfigSnapshot>) -> Result<(), NotApplied> {
            let epoch = snapshot.epoch();
            self.applied.lock().unwrap().push(snapshot);
            if self.late.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(NotApplied {
                    epoch,
                    shards: vec![1],
                });
            }
            Ok(())
        }
        fn connections(&self) -> Result<Vec<ConnectionInfo>, DataPlaneError> {
            Ok(vec![])
        }
        fn kick(&self, _: u64) -> Result<bool, DataPlaneError> {
            Ok(false)
        }
        fn drain(&self, s: u16) -> Result<(), DataPlaneError> {
            Err(DataPlaneError::NoSuchShard(s))
        }
        fn resume(&self, s: u16) -> Result<(), DataPlaneError> {
            Err(DataPlaneError::NoSuchShard(s))
        }
        fn status(&self) -> Result<Vec<ShardStatus>, DataPlaneError> {
            Ok(vec![])
        }
        fn steering(&self) -> SteeringStatus {
            SteeringStatus::default()
        }
        fn shard_count(&self) -> usize {
            2
        }
    }

    /// A store in `dir` with tenant "acme" whose principal holds the
    /// bearer token `abt_ok`; returns the store and the tenant's id.
    fn one_tenant_with_token(dir: &std::path::Path) -> (Arc<RedbStore>, u64) {
        let store = Arc::new(RedbStore::open(dir).unwrap());
        let t = store.create_tenant(new_tenant("acme")).unwrap();
        let p = store
            .create_principal(new_principal(t.id, "svc", &[]))
            .unwrap();
        bearer(&*store, p.id, "abt_ok");
        (store, t.id)
    }

    fn corrupt_policy(store: &RedbStore, id: u64) {
        let txn = store.database().begin_write().unwrap();
        txn.open_table(TableDefinition::<u64, &[u8]>::new("policies"))
            .unwrap()
            .insert(id, [0xff_u8, 0xff, 0xff].as_slice())
            .unwrap();
        txn.commit().unwrap();
    }

    #[test]
    fn a_corrupt_policy_fails_closed_and_a_repair_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let (store, tenant) = one_tenant_with_token(dir.path());

        let metrics = Arc::new(Metrics::default());
        let (publisher, first) =
            Publisher::start(store.clone(), Limits::default(), metrics.clone());
        assert!(first.accepting());
        let session = first.authenticate("abt_ok", 0).unwrap();
        let recorder = Arc::new(Recorder::default());
        publisher.attach(recorder.clone());
        let ready = publisher.readiness();

        corrupt_policy(&store, 99);
        let closed = publisher.publish().unwrap();
        assert!(!closed.accepting());
        assert!(closed.epoch() > first.epoch());
        assert!(
            closed.reason().unwrap().contains("policies/99"),
            "{:?}",
            closed.reason()
        );
        // Built from the last good one: existing sessions keep their rights,
        // new ones are refused.
        assert!(closed.tenant(TenantId(tenant)).is_some());
        assert!(closed.revalidate(&session, 0).is_ok());
        assert!(closed.authenticate("abt_ok", 0).is_err());
        let r = ready.borrow().clone();
        assert!(!r.accepting && r.epoch == closed.epoch());
        assert_eq!(recorder.epochs().len(), 1, "the data plane was told");

        // Still refusing while it stays corrupt; epochs keep increasing.
        let again = publisher.publish().unwrap();
        assert!(!again.accepting() && again.epoch() > closed.epoch());

        store.delete_policy(99).unwrap();
        let repaired = publisher.publish().unwrap();
        assert!(repaired.accepting() && repaired.epoch() > again.epoch());
        assert!(ready.borrow().accepting);
        let applied = recorder.epochs();
        assert!(applied.windows(2).all(|w| w[0] < w[1]), "{applied:?}");
        let m = metrics.snapshot();
        assert_eq!((m.snapshots_published, m.snapshots_refusing), (4, 2));
    }

    #[test]
    fn a_push_a_shard_did_not_confirm_is_pushed_again_until_it_does() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = one_tenant_with_token(dir.path());
        let metrics = Arc::new(Metrics::default());
        let (publisher, _) = Publisher::start(store, Limits::default(), metrics.clone());
        let dp = Arc::new(Recorder::default());
        publisher.attach(dp.clone());

        publisher.confirm().unwrap();
        assert!(dp.epochs().is_empty(), "nothing pending");

        dp.late.store(true, std::sync::atomic::Ordering::Relaxed);
        let err = publisher.publish().unwrap_err();
        assert_eq!(err.shards, [1]);
        assert_eq!(err.epoch, publisher.current().epoch());
        assert!(err.to_string().contains("shard(s) 1"), "{err}");
        assert_eq!(publisher.confirm().unwrap_err(), err, "still late");

        dp.late.store(false, std::sync::atomic::Ordering::Relaxed);
        publisher.confirm().unwrap();
        publisher.confirm().unwrap();
        let pushed = dp.epochs();
        assert_eq!(
            pushed, [err.epoch; 3],
            "the same snapshot, once more each time"
        );
        let m = metrics.apply_metrics();
        assert_eq!((m.confirmed, m.unconfirmed), (1, 2));
        assert_eq!(m.latency.len(), 3);
    }

    #[test]
    fn an_unreadable_store_at_start_refuses_everything() {
        let dir = tempfile::tempdir().unwrap();
        let (store, tenant) = one_tenant_with_token(dir.path());
        corrupt_policy(&store, 1);
        let (publisher, first) = Publisher::start(store, Limits::default(), Arc::default());
        assert!(!first.accepting());
        assert!(
            first.tenant(TenantId(tenant)).is_none(),
            "no last good: empty"
        );
        assert!(first.authenticate("abt_ok", 0).is_err());
        assert!(!publisher.readiness().borrow().accepting);
    }
}
