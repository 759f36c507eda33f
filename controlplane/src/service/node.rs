//! `NodeService`: status, drain and resume a shard, reload, steering.
//!
//! Steering is read from the data plane ([`DataPlaneControl::steering`]),
//! so `GetSteering` and `NodeStatus.steering` report the mode in force and
//! whether the program runs, not merely what was asked for. `SetSteering`
//! checks the request against the node's shards, stores it (durable), and
//! publishes a snapshot carrying it before it answers.
//!
//! [`DataPlaneControl::steering`]: crate::DataPlaneControl::steering

use arqonbus_core::ops::SteeringStatus;
use arqonbus_proto::control::node_service_server::NodeService;
use arqonbus_proto::control::{
    AffinityRule, BackupChunk, BackupRequest, DrainShardRequest, GetStatusRequest,
    GetSteeringRequest, NodeStatus, ReloadRequest, ResumeShardRequest, RotateAdminTokenRequest,
    RotateAdminTokenResponse, SetSteeringRequest, ShardStatus, Steering,
};
use tonic::{Request, Response, Status};

use super::{Api, Inner, Kind, blocking, dataplane_status, store_status, unapplied_status};
use crate::snapshot::now_unix_ms;
use crate::store::SteeringRecord;
use crate::validate::{self, FieldError};

/// Rules as the API shows them: canonical prefixes.
fn affinity_rules(rules: &[arqonbus_core::placement::AffinityRule]) -> Vec<AffinityRule> {
    rules
        .iter()
        .map(|r| AffinityRule {
            prefix: r.to_string(),
            shard: u32::from(r.shard.0),
        })
        .collect()
}

/// The API's view of the data plane's steering.
fn steering_message(s: &SteeringStatus) -> Steering {
    Steering {
        mode: s.config.mode.as_str().to_owned(),
        affinity: affinity_rules(&s.config.affinity),
        active: s.active,
        fallback_reason: s.fallback_reason.clone().unwrap_or_default(),
        source: s.source.to_owned(),
    }
}

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
                moved_in: s.moved_in,
                moved_out: s.moved_out,
            })
            .collect(),
        accepting: current.accepting(),
        reason: current.reason().unwrap_or_default().to_owned(),
        steering: Some(steering_message(&inner.dataplane.steering())),
    })
}

fn shard(value: u32) -> Result<u16, FieldError> {
    u16::try_from(value).map_err(|_| FieldError::new("shard", format!("{value} is not a shard id")))
}

#[tonic::async_trait]
impl NodeService for Api {
    type BackupStream = tokio_stream::Iter<std::vec::IntoIter<Result<BackupChunk, Status>>>;

    async fn rotate_admin_token(
        &self,
        _request: Request<RotateAdminTokenRequest>,
    ) -> Result<Response<RotateAdminTokenResponse>, Status> {
        self.rpc("RotateAdminToken", Kind::Change, async {
            let inner = self.inner.clone();
            blocking(move || {
                let rotated = inner
                    .admin
                    .rotate(&*inner.store)
                    .map_err(|e| Status::unavailable(format!("admin credential: {e}")))?;
                Ok(RotateAdminTokenResponse {
                    path: rotated.path.display().to_string(),
                    fingerprint: rotated.fingerprint,
                    token: rotated.token.into_inner(),
                })
            })
            .await
        })
        .await
    }

    async fn backup(
        &self,
        _request: Request<BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        self.rpc("Backup", Kind::Read, async {
            let inner = self.inner.clone();
            let bytes = blocking(move || inner.store.backup().map_err(store_status)).await?;
            let chunks = crate::store::backup_chunks(&bytes);
            Ok(tokio_stream::iter(
                chunks.into_iter().map(Ok).collect::<Vec<_>>(),
            ))
        })
        .await
    }

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
                // A store closed by an I/O error is reopened first.
                inner.store.recover().map_err(|e| {
                    Status::unavailable(format!("control store could not be reopened: {e}"))
                })?;
                if let Some(reload) = &inner.reload {
                    let limits = reload().map_err(|e| {
                        Status::failed_precondition(format!("configuration file: {e}"))
                    })?;
                    limits.validate().map_err(|e| {
                        Status::failed_precondition(format!("configuration file: {e}"))
                    })?;
                    inner.publisher.set_limits(limits);
                }
                inner
                    .publisher
                    .publish()
                    .map_err(|e| unapplied_status(&e))?;
                status(&inner)
            })
            .await
        })
        .await
    }

    async fn get_steering(
        &self,
        _request: Request<GetSteeringRequest>,
    ) -> Result<Response<Steering>, Status> {
        self.rpc("GetSteering", Kind::Read, async {
            let inner = self.inner.clone();
            blocking(move || Ok(steering_message(&inner.dataplane.steering()))).await
        })
        .await
    }

    async fn set_steering(
        &self,
        request: Request<SetSteeringRequest>,
    ) -> Result<Response<Steering>, Status> {
        let req = request.into_inner();
        self.rpc("SetSteering", Kind::Change, async {
            let inner = self.inner.clone();
            blocking(move || {
                let shards = inner.dataplane.shard_count();
                let config = validate::steering_for_node(&req.mode, &req.affinity, shards)?;
                // Stored in canonical form: what GetSteering will show.
                let record = SteeringRecord {
                    mode: config.mode.as_str().to_owned(),
                    affinity: affinity_rules(&config.affinity),
                    updated_at_unix_ms: now_unix_ms(),
                };
                inner.store.set_steering(&record).map_err(store_status)?;
                inner
                    .publisher
                    .publish()
                    .map_err(|e| unapplied_status(&e))?;
                Ok(steering_message(&inner.dataplane.steering()))
            })
            .await
        })
        .await
    }
}
