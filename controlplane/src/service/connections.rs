//! `ConnectionService`: list and kick data-plane connections.

use arqonbus_core::TenantId;
use arqonbus_core::ops::ConnectionInfo;
use arqonbus_proto::control::connection_service_server::ConnectionService;
use arqonbus_proto::control::{
    Connection, KickConnectionRequest, KickConnectionResponse, ListConnectionsRequest,
    ListConnectionsResponse,
};
use tonic::{Request, Response, Status};

use super::{Api, Kind, blocking, dataplane_status};

fn connection(c: ConnectionInfo) -> Connection {
    Connection {
        id: c.id,
        shard: u32::from(c.shard),
        tenant_id: c.tenant.map_or(0, |t| t.0),
        principal_id: c.principal.map_or(0, |p| p.0),
        principal: c.principal_name,
        client_name: c.client_name,
        client_kind: c.client_kind,
        remote_addr: c.remote_addr,
        subscriptions: c.subscriptions,
        msgs_in: c.msgs_in,
        bytes_in: c.bytes_in,
        msgs_out: c.msgs_out,
        bytes_out: c.bytes_out,
        connected_at_unix_ms: c.connected_at_unix_ms,
    }
}

#[tonic::async_trait]
impl ConnectionService for Api {
    async fn list_connections(
        &self,
        request: Request<ListConnectionsRequest>,
    ) -> Result<Response<ListConnectionsResponse>, Status> {
        let req = request.into_inner();
        self.rpc("ListConnections", Kind::Read, async {
            let dp = self.inner.dataplane.clone();
            let all = blocking(move || dp.connections().map_err(dataplane_status)).await?;
            let filter = (req.tenant_id != 0).then_some(TenantId(req.tenant_id));
            let connections = all
                .into_iter()
                .filter(|c| filter.is_none_or(|t| c.tenant == Some(t)))
                .map(connection)
                .collect();
            Ok(ListConnectionsResponse { connections })
        })
        .await
    }

    async fn kick_connection(
        &self,
        request: Request<KickConnectionRequest>,
    ) -> Result<Response<KickConnectionResponse>, Status> {
        let id = request.into_inner().id;
        self.rpc("KickConnection", Kind::Change, async {
            let dp = self.inner.dataplane.clone();
            let found = blocking(move || dp.kick(id).map_err(dataplane_status)).await?;
            if !found {
                return Err(Status::not_found(format!("connection {id} not found")));
            }
            Ok(KickConnectionResponse {})
        })
        .await
    }
}
