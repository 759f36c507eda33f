//! The control plane's runtime: one thread with a tokio runtime serving the
//! control API, wired to the data plane through [`DataPlaneControl`]. Its
//! threads (the runtime's and its blocking pool's) run below the shards'
//! priority and, when `control.cpus` lists CPUs, only on those.
//!
//! The data plane (glommio) and the control plane (tokio) never share a
//! runtime: the control plane talks to shards only through the data plane's
//! command channels, via the adapter below.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use arqonbus_controlplane::{
    ControlPlane, ControlPlaneHandle, DataPlaneControl, DataPlaneError, NotApplied,
};
use arqonbus_core::metrics::ShardMetrics;
use arqonbus_core::ops::{ConnectionInfo, ShardStatus, SteeringStatus};
use arqonbus_core::snapshot::ConfigSnapshot;
use arqonbus_dataplane::{ControlError, DataPlane};
use tokio::sync::oneshot;

use crate::config::MAX_CPU;
use crate::monitor::{self, Monitor};

/// Where and how to serve the monitoring endpoints.
#[derive(Debug)]
pub(crate) struct MonitorSettings {
    pub(crate) listener: std::net::TcpListener,
    pub(crate) max_tenant_labels: usize,
    pub(crate) server_id: String,
}

/// The nice value of every control-plane thread (the API, the store, the
/// snapshot builds): above the shards' 0, so that on a busy node building a
/// snapshot of a large store takes CPU the shards leave idle rather than
/// delaying messages. Control calls then wait for the data plane, not the
/// other way round.
const CONTROL_NICE: libc::c_int = 10;

/// Lowers the calling thread's priority to [`CONTROL_NICE`]; a failure is
/// logged and changes nothing else.
fn lower_priority() {
    // SAFETY: neither call takes a pointer; on Linux PRIO_PROCESS with a
    // thread id changes that thread only.
    let rc = unsafe {
        let tid = libc::gettid();
        libc::setpriority(
            libc::PRIO_PROCESS,
            libc::id_t::try_from(tid).unwrap_or(0),
            CONTROL_NICE,
        )
    };
    if rc != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "control plane: cannot lower its threads' priority"
        );
    }
}

/// The CPU set of `cpus`; CPUs beyond `CPU_SETSIZE` are left out (the
/// configuration's `validate` refuses them).
fn cpu_set(cpus: &[usize]) -> libc::cpu_set_t {
    // SAFETY: `cpu_set_t` is a plain bit array; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus.iter().filter(|&&c| c <= MAX_CPU) {
        // SAFETY: `c` is below `CPU_SETSIZE`, within `set`.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    set
}

/// The first CPU of `cpus` (the `control.cpus` setting) this process may
/// not run on, if any: the node then refuses to start rather than run its
/// control plane elsewhere. When the process's CPUs cannot be read, a
/// warning says so and none is reported.
pub(crate) fn unavailable_cpu(cpus: &[usize]) -> Option<usize> {
    if cpus.is_empty() {
        return None;
    }
    // SAFETY: as in `cpu_set`.
    let mut allowed: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `allowed` outlives the call and its size is passed; 0 names
    // the calling thread, whose mask is the process's at start.
    let rc = unsafe {
        libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &raw mut allowed)
    };
    if rc != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "cannot read the CPUs this process may use: control.cpus is not checked"
        );
        return None;
    }
    cpus.iter()
        .copied()
        // SAFETY: the CPU is below `CPU_SETSIZE` when `CPU_ISSET` runs.
        .find(|&c| c > MAX_CPU || !unsafe { libc::CPU_ISSET(c, &allowed) })
}

/// Prepares a control-plane thread: lowers its priority and, when
/// `cpus` names CPUs, keeps it on them. Failures are logged: the thread
/// still serves.
fn prepare_thread(cpus: &[usize]) {
    lower_priority();
    if cpus.is_empty() {
        return;
    }
    let set = cpu_set(cpus);
    // SAFETY: `set` outlives the call and its size is passed; 0 names the
    // calling thread.
    let rc = unsafe {
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &raw const set)
    };
    if rc != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            ?cpus,
            "control plane: cannot keep its threads on control.cpus"
        );
    }
}

/// The data plane, as the control plane drives it.
struct Adapter(Arc<DataPlane>);

fn map(e: ControlError) -> DataPlaneError {
    match e {
        ControlError::Unresponsive(s) => DataPlaneError::Unresponsive(s),
        ControlError::NoSuchShard(s) => DataPlaneError::NoSuchShard(s),
    }
}

impl DataPlaneControl for Adapter {
    fn apply(&self, snapshot: Arc<ConfigSnapshot>) -> Result<(), NotApplied> {
        self.0.apply(&snapshot).map_err(|e| NotApplied {
            epoch: e.epoch,
            shards: e.shards,
        })
    }

    fn connections(&self) -> Result<Vec<ConnectionInfo>, DataPlaneError> {
        self.0.connections().map_err(map)
    }

    fn kick(&self, connection_id: u64) -> Result<bool, DataPlaneError> {
        self.0.kick(connection_id).map_err(map)
    }

    fn drain(&self, shard: u16) -> Result<(), DataPlaneError> {
        self.0.drain(shard).map_err(map)
    }

    fn resume(&self, shard: u16) -> Result<(), DataPlaneError> {
        self.0.resume(shard).map_err(map)
    }

    fn status(&self) -> Result<Vec<ShardStatus>, DataPlaneError> {
        self.0.status().map_err(map)
    }

    fn metrics(&self) -> Result<Vec<ShardMetrics>, DataPlaneError> {
        self.0.metrics().map_err(map)
    }

    fn steering(&self) -> SteeringStatus {
        self.0.steering_status()
    }

    fn shard_count(&self) -> usize {
        self.0.shards()
    }
}

/// The control plane running on its own thread.
#[derive(Debug)]
pub(crate) struct ControlRuntime {
    thread: Option<JoinHandle<()>>,
    stop: Option<oneshot::Sender<()>>,
    handle: ControlPlaneHandle,
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
}

impl ControlRuntime {
    /// Starts serving `plane` against `dataplane` on a new thread, and the
    /// monitoring endpoints beside it when asked; its threads run on `cpus`
    /// (any CPU when empty).
    pub(crate) fn start(
        plane: ControlPlane,
        dataplane: Arc<DataPlane>,
        monitoring: Option<MonitorSettings>,
        cpus: &[usize],
    ) -> std::io::Result<Self> {
        let cpus: Arc<[usize]> = cpus.into();
        let thread_cpus = cpus.clone();
        let handle = plane.handle();
        let addr = plane.local_addr();
        let metrics_addr = match &monitoring {
            Some(m) => Some(m.listener.local_addr()?),
            None => None,
        };
        if let Some(m) = &monitoring {
            m.listener.set_nonblocking(true)?;
        }
        let (stop, stopped) = oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("arqonbus-control")
            .on_thread_start(move || prepare_thread(&thread_cpus))
            .build()?;
        let thread = std::thread::Builder::new()
            .name("arqonbus-control".into())
            .spawn(move || {
                prepare_thread(&cpus);
                let monitor = monitoring.map(|m| {
                    let started = std::time::Instant::now();
                    let state = Arc::new(Monitor {
                        dataplane: dataplane.clone(),
                        control: plane.handle(),
                        max_tenant_labels: m.max_tenant_labels,
                        server_id: m.server_id,
                        started,
                        listen: metrics_addr.unwrap_or(addr),
                    });
                    (state, m.listener)
                });
                let adapter: Arc<dyn DataPlaneControl> = Arc::new(Adapter(dataplane));
                let (stop_monitor, monitor_stopped) = oneshot::channel::<()>();
                runtime.block_on(async move {
                    let monitor_task =
                        monitor.and_then(
                            |(state, listener)| match tokio::net::TcpListener::from_std(listener) {
                                Ok(l) => Some(tokio::spawn(monitor::serve(state, l, async {
                                    let _ = monitor_stopped.await;
                                }))),
                                Err(e) => {
                                    tracing::error!(error = %e, "monitoring endpoints unavailable");
                                    None
                                }
                            },
                        );
                    let shutdown = async {
                        let _ = stopped.await;
                    };
                    if let Err(e) = plane.serve(adapter, shutdown).await {
                        tracing::error!(error = %e, "control plane stopped with an error");
                    }
                    let _ = stop_monitor.send(());
                    if let Some(t) = monitor_task {
                        let _ = t.await;
                    }
                });
            })?;
        tracing::info!(%addr, "control API listening (TLS, admin credential required)");
        if let Some(m) = metrics_addr {
            tracing::info!(addr = %m, "metrics and health endpoints listening");
        }
        Ok(Self {
            thread: Some(thread),
            stop: Some(stop),
            handle,
            addr,
            metrics_addr,
        })
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub(crate) fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    pub(crate) fn handle(&self) -> &ControlPlaneHandle {
        &self.handle
    }

    /// Stops serving and waits for the thread (its data-plane handle drops).
    pub(crate) fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ControlRuntime {
    fn drop(&mut self) {
        self.shutdown();
    }
}
