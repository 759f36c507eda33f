//! [`ControlPlane`]: opening the store, serving the API, and what the server
//! crate calls.
//!
//! Start-up is in two steps so the data plane can start between them with a
//! snapshot built from the store:
//! 1. [`ControlPlane::open`] (synchronous): creates the data directory (0700),
//!    opens and migrates the store, imports `tenants.toml` once and the seed
//!    tenants, creates the admin credential on first open, prepares TLS,
//!    binds the listener, and builds the first snapshot;
//! 2. [`ControlPlane::serve`] (async, tokio): attaches the data plane and
//!    serves the six control services, `grpc.health.v1.Health` and gRPC
//!    reflection (v1 and v1alpha) until `shutdown` completes.
//!
//! Damage is never silent: a node whose admin credential file exists was
//! initialised, so a missing or empty store refuses to start
//! ([`ControlPlaneError::StoreMissing`]), a store that fails its page check
//! is [`ControlPlaneError::StoreDamaged`], and a missing or mismatched admin
//! token is an [`AdminError`]; each message names the file and the command
//! that recovers. While serving, a storage error closes the store and a
//! background task reopens it with backoff (100 ms doubling to 30 s);
//! `Reload` and SIGHUP ([`ControlPlaneHandle::reload`]) reopen it at once.
//!
//! Authentication: every control service and reflection require the admin
//! credential (reflection describes the API to whoever may use it). Health
//! is open, so load balancers and orchestrators can probe it without a
//! secret; it tells only SERVING or NOT_SERVING. Health's overall status
//! (service `""`) is SERVING exactly when the last snapshot pushed accepts
//! new sessions.

use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arqonbus_core::limits::{Limits, LimitsError};
use arqonbus_core::snapshot::ConfigSnapshot;
use arqonbus_proto::control::FILE_DESCRIPTOR_SET;
use arqonbus_proto::control::connection_service_server::ConnectionServiceServer;
use arqonbus_proto::control::credential_service_server::CredentialServiceServer;
use arqonbus_proto::control::node_service_server::NodeServiceServer;
use arqonbus_proto::control::policy_service_server::PolicyServiceServer;
use arqonbus_proto::control::principal_service_server::PrincipalServiceServer;
use arqonbus_proto::control::tenant_service_server::TenantServiceServer;
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tonic_health::ServingStatus;

use crate::admin::{self, AdminAuth, AdminCell, AdminCredential, AdminError};
use crate::dataplane::{DataPlaneControl, NotApplied};
use crate::metrics::{ApplyMetrics, Metrics, MetricsSnapshot};
use crate::publish::{Publisher, Readiness};
use crate::seed::{self, SeedError, SeedTenant};
use crate::service::{Api, Inner, ReloadFn};
use crate::store::{RedbStore, STORE_FILE, Store, StoreError, StoreHealth};
use crate::tls::{self, TlsError};
use arqonbus_core::placement::TenantPlacement;

/// Default address of the control API.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 7421);
/// Longest time one control RPC may take.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(30);
/// How long calls still open when the control plane is told to stop may
/// go on. Streams that never end by themselves (a load balancer's health
/// `Watch`) must not hold the process up; a write cut short here was never
/// acknowledged, so nothing acknowledged is lost.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// How to run the control plane.
pub struct ControlPlaneConfig {
    /// The data directory (the store, `tenants.toml`, the admin token).
    pub data_dir: PathBuf,
    /// Where the control API listens (port 0: any free port).
    pub listen: SocketAddr,
    /// The server's TLS configuration (certificate and key). The control
    /// plane sets ALPN `h2` on its own copy.
    pub tls: Arc<rustls::ServerConfig>,
    /// PEM CA certificates that operator client certificates must chain
    /// to; `None`: no client certificate is asked for.
    pub client_ca: Option<PathBuf>,
    /// The server's per-connection limits, carried in every snapshot.
    pub limits: Limits,
    /// Tenants from the configuration file, inserted when their id is absent.
    pub seed_tenants: Vec<SeedTenant>,
    /// Re-reads the configuration file for `Reload`; `None`: Reload only
    /// re-reads the store.
    pub reload: Option<Box<ReloadFn>>,
    /// This node's id in `NodeStatus`.
    pub server_id: String,
    /// The placement of tenants created without one (API, seeds, the
    /// tenants file): `home` unless the node is configured otherwise.
    pub default_placement: TenantPlacement,
}

impl ControlPlaneConfig {
    /// A configuration with defaults: listen on [`DEFAULT_LISTEN`], no mTLS,
    /// default limits, no seeds, no reload hook.
    pub fn new(data_dir: impl Into<PathBuf>, tls: Arc<rustls::ServerConfig>) -> Self {
        Self {
            data_dir: data_dir.into(),
            listen: DEFAULT_LISTEN,
            tls,
            client_ca: None,
            limits: Limits::default(),
            seed_tenants: Vec::new(),
            reload: None,
            server_id: String::new(),
            default_placement: TenantPlacement::default(),
        }
    }
}

impl std::fmt::Debug for ControlPlaneConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlaneConfig")
            .field("data_dir", &self.data_dir)
            .field("listen", &self.listen)
            .field("client_ca", &self.client_ca)
            .field("limits", &self.limits)
            .field("seed_tenants", &self.seed_tenants)
            .field("reload", &self.reload.is_some())
            .field("server_id", &self.server_id)
            .finish_non_exhaustive()
    }
}

/// Why the control plane could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    /// The data directory could not be created.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The store could not be opened or migrated.
    #[error("control store: {0}")]
    Store(#[from] StoreError),
    /// The node was initialised but its store is gone or empty: starting
    /// would silently serve an empty configuration.
    #[error(
        "{path} is missing or empty, but this node was initialised ({evidence} exists): restore \
         the store with `arqonbus restore --from BACKUP`, or start with an empty store on purpose \
         with `arqonbus serve --recreate-missing`"
    )]
    StoreMissing {
        /// The store file.
        path: PathBuf,
        /// What shows the node was initialised.
        evidence: PathBuf,
    },
    /// The store file does not check out (damaged pages, not a store).
    #[error(
        "{path} is damaged ({reason}): restore a backup with `arqonbus restore --from BACKUP`, \
         or move the file away and start empty on purpose with `arqonbus serve --recreate-missing`"
    )]
    StoreDamaged {
        /// The store file.
        path: PathBuf,
        /// What the check found.
        reason: String,
    },
    /// `tenants.toml` or the seed tenants could not be imported.
    #[error("importing tenants: {0}")]
    Seed(#[from] SeedError),
    /// The admin credential could not be prepared.
    #[error("admin credential: {0}")]
    Admin(#[from] AdminError),
    /// TLS could not be set up.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The listener could not be bound.
    #[error("control listener {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The reflection service could not load the descriptors.
    #[error("reflection: {0}")]
    Reflection(String),
    /// The gRPC server failed.
    #[error("control server: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Why [`ControlPlaneHandle::reload`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new limits do not validate: nothing changed.
    #[error("limits: {0}")]
    Limits(#[from] LimitsError),
    /// The store was failed and could not be reopened: nothing changed.
    #[error("control store could not be reopened: {0}")]
    Store(#[source] StoreError),
    /// The new snapshot is built and current (the limits are in force), but
    /// some shards did not apply it in time; they still have it queued.
    #[error(transparent)]
    NotApplied(#[from] NotApplied),
}

impl ReloadError {
    /// Whether the reload took effect all the same (the snapshot is the
    /// current one; only some shards had not applied it yet).
    pub fn took_effect(&self) -> bool {
        matches!(self, Self::NotApplied(_))
    }
}

/// A clonable view of a control plane's state, usable after `serve` took
/// the [`ControlPlane`].
#[derive(Debug, Clone)]
pub struct ControlPlaneHandle {
    store: Arc<RedbStore>,
    publisher: Arc<Publisher>,
    metrics: Arc<Metrics>,
    admin: AdminAuth,
}

impl ControlPlaneHandle {
    /// Whether new sessions are accepted, as of the last snapshot pushed.
    pub fn readiness(&self) -> Readiness {
        self.publisher.readiness().borrow().clone()
    }

    /// Readiness changes.
    pub fn watch_readiness(&self) -> watch::Receiver<Readiness> {
        self.publisher.readiness()
    }

    /// The last snapshot pushed.
    pub fn current_snapshot(&self) -> Arc<ConfigSnapshot> {
        self.publisher.current()
    }

    /// The counters.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.metrics.snapshot()
    }

    /// How snapshot pushes to the shards went (confirmed, unconfirmed,
    /// latency).
    pub fn apply_metrics(&self) -> ApplyMetrics {
        self.metrics.apply_metrics()
    }

    /// Whether an `Authorization` header value carries the admin credential
    /// (for the server's HTTP monitoring endpoints). Constant time; refusals
    /// are counted as authentication failures.
    pub fn is_admin(&self, authorization: Option<&str>) -> bool {
        self.admin.check(authorization)
    }

    /// The control store's state (failed, reopen attempts), for metrics.
    pub fn store_health(&self) -> StoreHealth {
        self.store.health()
    }

    /// Reopens a store closed by an I/O error, takes new per-connection
    /// limits if given (a re-read configuration file, as on SIGHUP; `None`
    /// keeps the limits in force) and pushes a new snapshot; connections
    /// stay open.
    pub fn reload(&self, limits: Option<Limits>) -> Result<Arc<ConfigSnapshot>, ReloadError> {
        if let Some(l) = &limits {
            l.validate()?;
        }
        self.store.recover().map_err(ReloadError::Store)?;
        if let Some(l) = limits {
            self.publisher.set_limits(l);
        }
        // A reload reads the whole store again, checking every record.
        self.publisher.forget_contents();
        Ok(self.publisher.publish()?)
    }
}

/// An opened control plane, not serving yet.
pub struct ControlPlane {
    store: Arc<RedbStore>,
    publisher: Arc<Publisher>,
    metrics: Arc<Metrics>,
    admin: AdminCredential,
    admin_cell: Arc<AdminCell>,
    tls: Arc<rustls::ServerConfig>,
    listener: std::net::TcpListener,
    local_addr: SocketAddr,
    reload: Option<Arc<ReloadFn>>,
    server_id: String,
    default_placement: TenantPlacement,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("store", &self.store.path())
            .field("local_addr", &self.local_addr)
            .field("admin_token_path", &self.admin.path)
            .field("readiness", &self.readiness())
            .finish_non_exhaustive()
    }
}

fn create_private_dir(dir: &Path) -> Result<(), ControlPlaneError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| ControlPlaneError::DataDir {
            path: dir.to_owned(),
            source,
        })
}

/// Opens the store, refusing to start a node that was initialised (its
/// admin credential file exists) on a missing or empty store, and naming
/// the recovery for a damaged one.
fn open_store(data_dir: &Path) -> Result<RedbStore, ControlPlaneError> {
    let path = data_dir.join(STORE_FILE);
    let evidence = data_dir.join(admin::ADMIN_TOKEN_FILE);
    let empty = std::fs::metadata(&path).map_or(true, |m| m.len() == 0);
    if empty && evidence.exists() {
        return Err(ControlPlaneError::StoreMissing { path, evidence });
    }
    RedbStore::open(data_dir).map_err(|e| match e {
        StoreError::Corrupt { reason, .. } => ControlPlaneError::StoreDamaged { path, reason },
        other => ControlPlaneError::Store(other),
    })
}

/// First wait before reopening a failed store, doubled after each failed
/// attempt up to [`REOPEN_MAX_DELAY`].
pub const REOPEN_FIRST_DELAY: Duration = Duration::from_millis(100);
/// Longest wait between two reopen attempts.
pub const REOPEN_MAX_DELAY: Duration = Duration::from_secs(30);

/// Reopens the store after each storage failure, with backoff. A reopen
/// counts as a success only once the store stays healthy: when the node
/// failed closed meanwhile, the snapshot published after the reopen must
/// commit its epoch too (on a disk still full it fails, and the next attempt
/// waits longer). A node still accepting keeps its snapshot: nothing
/// changed while the store was closed.
///
/// The delay carries over when the store fails again within
/// [`REOPEN_MAX_DELAY`] of a reopen (a disk still full fails the next
/// write), so a steady stream of failing writes does not reopen the file
/// ten times a second.
async fn reopen_loop(store: Arc<RedbStore>, publisher: Arc<Publisher>) {
    let mut delay = REOPEN_FIRST_DELAY;
    let mut last_reopen: Option<std::time::Instant> = None;
    loop {
        store.failed().await;
        match last_reopen {
            Some(at) if at.elapsed() < REOPEN_MAX_DELAY => {
                delay = (delay * 2).min(REOPEN_MAX_DELAY);
            }
            _ => delay = REOPEN_FIRST_DELAY,
        }
        loop {
            tokio::time::sleep(delay).await;
            let (s, p) = (store.clone(), publisher.clone());
            let healthy = tokio::task::spawn_blocking(move || match s.recover() {
                Ok(reopened) => {
                    if reopened && !p.current().accepting() {
                        // Shards that miss this snapshot are reported by
                        // the publisher; the store is judged by its epoch.
                        let _ = p.publish();
                    }
                    !s.health().failed
                }
                Err(_) => false,
            })
            .await;
            if healthy.unwrap_or(false) {
                last_reopen = Some(std::time::Instant::now());
                break;
            }
            delay = (delay * 2).min(REOPEN_MAX_DELAY);
            tracing::warn!(
                retry_in_ms = delay.as_millis() as u64,
                "control store still unavailable"
            );
        }
    }
}

impl ControlPlane {
    /// Opens the store (migrating and importing), prepares the admin
    /// credential and TLS, binds the listener, and builds the first
    /// snapshot, which the caller gives to the data plane at start. Blocking.
    ///
    /// A store that opens but whose contents cannot be used (a record that
    /// does not decode or validate) is not an error: the first snapshot then
    /// refuses new sessions and readiness says why, so the operator can
    /// repair it through the API.
    pub fn open(
        config: ControlPlaneConfig,
    ) -> Result<(Self, Arc<ConfigSnapshot>), ControlPlaneError> {
        create_private_dir(&config.data_dir)?;
        let store = Arc::new(open_store(&config.data_dir)?);
        let placement = config.default_placement;
        seed::import_tenants_file(&*store, &config.data_dir, placement)?;
        seed::import_seeds(&*store, &config.seed_tenants, placement)?;
        let admin = admin::ensure(&*store, &config.data_dir)?;
        let tls = tls::control_config(&config.tls, config.client_ca.as_deref())?;
        let listen_err = |source| ControlPlaneError::Listen {
            addr: config.listen,
            source,
        };
        let listener = std::net::TcpListener::bind(config.listen).map_err(listen_err)?;
        let local_addr = listener.local_addr().map_err(listen_err)?;
        let metrics = Arc::new(Metrics::default());
        let (publisher, first) = Publisher::start(
            store.clone() as Arc<dyn Store>,
            config.limits,
            metrics.clone(),
        );
        Ok((
            Self {
                store,
                publisher: Arc::new(publisher),
                metrics,
                admin_cell: Arc::new(AdminCell::new(admin.hash, config.data_dir.clone())),
                admin,
                tls,
                listener,
                local_addr,
                reload: config.reload.map(Arc::from),
                server_id: config.server_id,
                default_placement: config.default_placement,
            },
            first,
        ))
    }

    /// The bound address of the control API.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The file holding the admin token (mode 0600; it must stay: a node
    /// whose store holds an admin credential refuses to start without it,
    /// and `arqonbus admin rotate-token` replaces it).
    pub fn admin_token_path(&self) -> &Path {
        &self.admin.path
    }

    /// Whether the admin token was created by this open.
    pub fn admin_token_created(&self) -> bool {
        self.admin.created
    }

    /// Whether new sessions are accepted, as of the last snapshot.
    pub fn readiness(&self) -> Readiness {
        self.publisher.readiness().borrow().clone()
    }

    /// A view that stays usable while serving.
    pub fn handle(&self) -> ControlPlaneHandle {
        ControlPlaneHandle {
            store: self.store.clone(),
            publisher: self.publisher.clone(),
            metrics: self.metrics.clone(),
            admin: AdminAuth::shared(self.admin_cell.clone(), self.metrics.clone()),
        }
    }

    /// Serves the control API until `shutdown` completes and the calls
    /// still open have ended, for at most [`SHUTDOWN_GRACE`] more; applies
    /// every new snapshot to `dataplane`. Runs on a tokio runtime.
    pub async fn serve<F>(
        self,
        dataplane: Arc<dyn DataPlaneControl>,
        shutdown: F,
    ) -> Result<(), ControlPlaneError>
    where
        F: Future<Output = ()> + Send,
    {
        self.publisher.attach(dataplane.clone());
        let reopen_task = tokio::spawn(reopen_loop(self.store.clone(), self.publisher.clone()));

        let (reporter, health) = tonic_health::server::health_reporter();
        let mut ready = self.publisher.readiness();
        let status = |r: &Readiness| {
            if r.accepting {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            }
        };
        let initial = status(&ready.borrow_and_update());
        reporter.set_service_status("", initial).await;
        let health_task = tokio::spawn(async move {
            while ready.changed().await.is_ok() {
                let s = status(&ready.borrow_and_update());
                reporter.set_service_status("", s).await;
            }
        });

        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection()
            .build_v1()
            .map_err(|e| ControlPlaneError::Reflection(e.to_string()))?;
        let reflection_v1alpha = reflection()
            .build_v1alpha()
            .map_err(|e| ControlPlaneError::Reflection(e.to_string()))?;

        let api = Api::new(Inner {
            store: self.store.clone(),
            publisher: self.publisher.clone(),
            dataplane,
            reload: self.reload.clone(),
            server_id: self.server_id.clone(),
            metrics: self.metrics.clone(),
            default_placement: self.default_placement,
            admin: self.admin_cell.clone(),
        });
        let auth = AdminAuth::shared(self.admin_cell.clone(), self.metrics.clone());

        let listen_err = |source| ControlPlaneError::Listen {
            addr: self.local_addr,
            source,
        };
        self.listener.set_nonblocking(true).map_err(listen_err)?;
        let listener = tokio::net::TcpListener::from_std(self.listener).map_err(listen_err)?;
        let (tx, rx) = mpsc::channel(32);
        let accept = tokio::spawn(tls::accept_loop(
            listener,
            tokio_rustls::TlsAcceptor::from(self.tls),
            tx,
        ));
        let incoming = ReceiverStream::new(rx).map(Ok::<_, std::io::Error>);
        tracing::info!(addr = %self.local_addr, "control API listening (TLS)");

        let (stopping_tx, stopping) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async move {
            shutdown.await;
            let _ = stopping_tx.send(());
        };
        let serve = Server::builder()
            .timeout(RPC_TIMEOUT)
            .add_service(health)
            .add_service(InterceptedService::new(reflection_v1, auth.clone()))
            .add_service(InterceptedService::new(reflection_v1alpha, auth.clone()))
            .add_service(TenantServiceServer::with_interceptor(
                api.clone(),
                auth.clone(),
            ))
            .add_service(PrincipalServiceServer::with_interceptor(
                api.clone(),
                auth.clone(),
            ))
            .add_service(CredentialServiceServer::with_interceptor(
                api.clone(),
                auth.clone(),
            ))
            .add_service(PolicyServiceServer::with_interceptor(
                api.clone(),
                auth.clone(),
            ))
            .add_service(ConnectionServiceServer::with_interceptor(
                api.clone(),
                auth.clone(),
            ))
            .add_service(NodeServiceServer::with_interceptor(api, auth))
            .serve_with_incoming_shutdown(incoming, shutdown);
        let grace_over = async {
            match stopping.await {
                Ok(()) => tokio::time::sleep(SHUTDOWN_GRACE).await,
                // The server ended on its own: `serve` decides.
                Err(_) => std::future::pending().await,
            }
        };
        let result = tokio::select! {
            result = serve => result,
            () = grace_over => {
                tracing::warn!(
                    grace_ms = SHUTDOWN_GRACE.as_millis() as u64,
                    "control API calls still open after the shutdown grace; closing them"
                );
                Ok(())
            }
        };
        accept.abort();
        health_task.abort();
        reopen_task.abort();
        // Its store handle must be gone when `serve` returns: a caller may
        // reopen the file at once (a restart in the same process).
        let _ = reopen_task.await;
        tracing::info!("control API stopped");
        result.map_err(ControlPlaneError::from)
    }
}
