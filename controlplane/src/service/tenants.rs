//! `TenantService`: create, get, list, update, delete tenants.
//!
//! A tenant's placement is checked against the node's shards (from the data
//! plane) when it is set, and stored in canonical form (`home`, `spread`,
//! `shard:N`); its WebSocket origins are checked and stored lowercased.

use arqonbus_core::TenantId;
use arqonbus_proto::control::tenant_service_server::TenantService;
use arqonbus_proto::control::{
    CreateTenantRequest, DeleteTenantRequest, DeleteTenantResponse, GetTenantRequest,
    ListTenantsRequest, ListTenantsResponse, Tenant, UpdateTenantRequest,
};
use tonic::{Request, Response, Status};

use super::retry::RetryKey;
use super::{Api, Kind, store_status};
use crate::seed::new_signing_key;
use crate::snapshot::now_unix_ms;
use crate::store::{NewTenant, TenantChange};
use crate::validate::{self, FieldError};

#[tonic::async_trait]
impl TenantService for Api {
    async fn create_tenant(
        &self,
        request: Request<CreateTenantRequest>,
    ) -> Result<Response<Tenant>, Status> {
        let req = request.into_inner();
        let key = RetryKey::of("CreateTenant", &req);
        self.rpc("CreateTenant", Kind::Change, async {
            validate::name("name", &req.name)?;
            let quotas = validate::quotas("quotas", req.quotas.as_ref())?;
            let placement = if req.placement.is_empty() {
                self.inner.default_placement
            } else {
                validate::placement_on_node(
                    "placement",
                    &req.placement,
                    self.inner.dataplane.shard_count(),
                )?
            };
            let allowed_origins =
                validate::allowed_origins("allowed_origins", &req.allowed_origins)?;
            let signing_key = new_signing_key().map_err(|e| {
                tracing::error!(error = %e, "cannot generate a signing key");
                Status::internal("cannot generate a signing key")
            })?;
            let new = NewTenant {
                name: req.name,
                quotas,
                placement: placement.to_string(),
                allowed_origins,
                signing_key,
                created_at_unix_ms: now_unix_ms(),
            };
            self.change(key, move |s| s.create_tenant(new)).await
        })
        .await
    }

    async fn get_tenant(
        &self,
        request: Request<GetTenantRequest>,
    ) -> Result<Response<Tenant>, Status> {
        let req = request.into_inner();
        self.rpc("GetTenant", Kind::Read, async {
            let r = req
                .tenant
                .ok_or_else(|| FieldError::new("tenant", "required"))?;
            match (r.id, r.name.is_empty()) {
                (0, true) => {
                    Err(FieldError::new("tenant", "one of id and name is required").into())
                }
                (id, true) => self.read(move |s| s.tenant(id)).await,
                (0, false) => {
                    validate::name("tenant.name", &r.name)?;
                    self.read(move |s| s.tenant_by_name(&r.name)).await
                }
                _ => Err(FieldError::new("tenant", "give id or name, not both").into()),
            }
        })
        .await
    }

    async fn list_tenants(
        &self,
        _request: Request<ListTenantsRequest>,
    ) -> Result<Response<ListTenantsResponse>, Status> {
        self.rpc("ListTenants", Kind::Read, async {
            let tenants = self.read(crate::store::Store::list_tenants).await?;
            Ok(ListTenantsResponse { tenants })
        })
        .await
    }

    async fn update_tenant(
        &self,
        request: Request<UpdateTenantRequest>,
    ) -> Result<Response<Tenant>, Status> {
        let req = request.into_inner();
        let key = RetryKey::of("UpdateTenant", &req);
        self.rpc("UpdateTenant", Kind::Change, async {
            let id = validate::id("id", req.id)?;
            let quotas = match req.quotas.as_ref() {
                Some(q) => Some(validate::quotas("quotas", Some(q))?),
                None => None,
            };
            let placement = if req.placement.is_empty() {
                None
            } else {
                let shards = self.inner.dataplane.shard_count();
                Some(validate::placement_on_node("placement", &req.placement, shards)?.to_string())
            };
            let allowed_origins = req
                .allowed_origins
                .as_ref()
                .map(|o| validate::allowed_origins("allowed_origins.origins", &o.origins))
                .transpose()?;
            let expected = req.expected_version;
            let change = TenantChange {
                quotas,
                placement,
                allowed_origins,
            };
            self.change(key, move |s| s.update_tenant(id, expected, change))
                .await
        })
        .await
    }

    async fn delete_tenant(
        &self,
        request: Request<DeleteTenantRequest>,
    ) -> Result<Response<DeleteTenantResponse>, Status> {
        let req = request.into_inner();
        let key = RetryKey::of("DeleteTenant", &req);
        self.rpc("DeleteTenant", Kind::Change, async {
            let id = validate::id("id", req.id)?;
            self.commit(Some(key), move |inner| {
                inner.store.tenant(id).map_err(store_status)?;
                // Counted before the snapshot that closes them is applied.
                let closed = match inner.dataplane.connections() {
                    Ok(all) => all
                        .iter()
                        .filter(|c| c.tenant == Some(TenantId(id)))
                        .count() as u64,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot count the tenant's connections");
                        0
                    }
                };
                inner.store.delete_tenant(id).map_err(store_status)?;
                let answer = DeleteTenantResponse {
                    connections_closed: closed,
                };
                Ok((answer, true))
            })
            .await
        })
        .await
    }
}
