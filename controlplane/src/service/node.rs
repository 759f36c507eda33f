//! `NodeService`: status, drain and resume a shard, reload.

use arqonbus_proto::control::node_service_server::NodeService;
use arqonbus_proto::control::{
    DrainShardRequest, GetStatusRequest, NodeStatus, ReloadRequest, ResumeShardRequest, ShardStatus,
};
use tonic::{Request, Response, Status};

use super::{Api, Inner, Kind, blocking, dataplane_status};
use crate::validate::FieldError;

/// The node's status (blocking: asks every shard).
fn status(inner: &Inner) -> Result<NodeStatus, Status> {
    let shards = inner.dataplane.status().map_err(dataplane_status)?;
    let current = inner.publisher.current();
    Ok(NodeStatus {
        server_id: inner.server_id.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        config_epoch: current.epoch(),
        shards: shards
            .into_iter()
            .map(|s| ShardStatus {
                id: u32::from(s.id),
                draining: s.draining,
                connections: s.connections,
                subscriptions: s.subscriptions,
                config_epoch: s.config_epoch,
            })
            .collect(),
        accepting: current.accepting(),
        reason: current.reason().unwrap_or_default().to_owned(),
    })
}

fn shard(value: u32) -> Result<u16, FieldError> {
    u16::try_from(value).map_err(|_| FieldError::new("shard", format!("{value} is not a shard id")))
}

#[tonic::async_trait]
impl NodeService for Api {
    async fn get_status(
        &self,
        _request: Request<GetStatusRequest>,
    ) -> Result<Response<NodeStatus>, Status> {
        self.rpc("GetStatus", Kind::Read, async {
            let inner = self.inner.clone();
            blocking(move || status(&inner)).await
        })
        .await
    }

    async fn drain_shard(
        &self,
        request: Request<DrainShardRequest>,
    ) -> Result<Response<NodeStatus>, Status> {
        let req = request.into_inner();
        self.rpc("DrainShard", Kind::Change, async {
            let id = shard(req.shard)?;
            let inner = self.inner.clone();
            blocking(move || {
                inner.dataplane.drain(id).map_err(dataplane_status)?;
                status(&inner)
            })
            .await
        })
        .await
    }

    async fn resume_shard(
        &self,
        request: Request<ResumeShardRequest>,
    ) -> Result<Response<NodeStatus>, Status> {
        let req = request.into_inner();
        self.rpc("ResumeShard", Kind::Change, async {
            let id = shard(req.shard)?;
            let inner = self.inner.clone();
            blocking(move || {
                inner.dataplane.resume(id).map_err(dataplane_status)?;
                status(&inner)
            })
            .await
        })
        .await
    }

    async fn reload(
        &self,
        _request: Request<ReloadRequest>,
    ) -> Result<Response<NodeStatus>, Status> {
        self.rpc("Reload", Kind::Change, async {
            let inner = self.inner.clone();
            blocking(move || {
                if let Some(reload) = &inner.reload {
                    let limits = reload().map_err(|e| {
                        Status::failed_precondition(format!("configuration file: {e}"))
                    })?;
                    limits.validate().map_err(|e| {
                        Status::failed_precondition(format!("configuration file: {e}"))
                    })?;
                    inner.publisher.set_limits(limits);
                }
                inner.publisher.publish();
                status(&inner)
            })
            .await
        })
        .await
    }
}
