//! The control plane's runtime: one thread with a tokio runtime serving the
//! control API, wired to the data plane through [`DataPlaneControl`].
//!
//! The data plane (glommio) and the control plane (tokio) never share a
//! runtime: the control plane talks to shards only through the data plane's
//! command channels, via the adapter below.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use arqonbus_controlplane::{ControlPlane, ControlPlaneHandle, DataPlaneControl, DataPlaneError};
use arqonbus_core::metrics::ShardMetrics;
use arqonbus_core::ops::{ConnectionInfo, ShardStatus};
use arqonbus_core::snapshot::ConfigSnapshot;
use arqonbus_dataplane::{ControlError, DataPlane};
use tokio::sync::oneshot;

/// The data plane, as the control plane drives it.
struct Adapter(Arc<DataPlane>);

fn map(e: ControlError) -> DataPlaneError {
    match e {
        ControlError::Unresponsive(s) => DataPlaneError::Unresponsive(s),
        ControlError::NoSuchShard(s) => DataPlaneError::NoSuchShard(s),
    }
}

impl DataPlaneControl for Adapter {
    fn apply(&self, snapshot: Arc<ConfigSnapshot>) {
        self.0.apply(&snapshot);
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
}

/// The control plane running on its own thread.
#[derive(Debug)]
pub(crate) struct ControlRuntime {
    thread: Option<JoinHandle<()>>,
    stop: Option<oneshot::Sender<()>>,
    handle: ControlPlaneHandle,
    addr: SocketAddr,
}

impl ControlRuntime {
    /// Starts serving `plane` against `dataplane` on a new thread.
    pub(crate) fn start(plane: ControlPlane, dataplane: Arc<DataPlane>) -> std::io::Result<Self> {
        let handle = plane.handle();
        let addr = plane.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("arqonbus-control")
            .build()?;
        let thread = std::thread::Builder::new()
            .name("arqonbus-control".into())
            .spawn(move || {
                let adapter: Arc<dyn DataPlaneControl> = Arc::new(Adapter(dataplane));
                let shutdown = async {
                    let _ = stopped.await;
                };
                if let Err(e) = runtime.block_on(plane.serve(adapter, shutdown)) {
                    tracing::error!(error = %e, "control plane stopped with an error");
                }
            })?;
        tracing::info!(%addr, "control API listening (TLS, admin credential required)");
        Ok(Self {
            thread: Some(thread),
            stop: Some(stop),
            handle,
            addr,
        })
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
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
