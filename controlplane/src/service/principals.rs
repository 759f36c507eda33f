//! `PrincipalService`: create, list, update, delete principals.

use arqonbus_proto::control::principal_service_server::PrincipalService;
use arqonbus_proto::control::{
    CreatePrincipalRequest, DeletePrincipalRequest, DeletePrincipalResponse, ListPrincipalsRequest,
    ListPrincipalsResponse, Principal, UpdatePrincipalRequest,
};
use tonic::{Request, Response, Status};

use super::retry::RetryKey;
use super::{Api, Kind};
use crate::snapshot::now_unix_ms;
use crate::store::NewPrincipal;
use crate::validate;

#[tonic::async_trait]
impl PrincipalService for Api {
    async fn create_principal(
        &self,
        request: Request<CreatePrincipalRequest>,
    ) -> Result<Response<Principal>, Status> {
        let req = request.into_inner();
        let key = RetryKey::of("CreatePrincipal", &req);
        self.rpc("CreatePrincipal", Kind::Change, async {
            let tenant_id = validate::id("tenant_id", req.tenant_id)?;
            validate::name("name", &req.name)?;
            let roles = validate::roles("roles", &req.roles)?;
            let quotas = validate::quotas("quotas", req.quotas.as_ref())?;
            let new = NewPrincipal {
                tenant_id,
                name: req.name,
                roles,
                quotas,
                created_at_unix_ms: now_unix_ms(),
            };
            self.change(key, move |s| s.create_principal(new)).await
        })
        .await
    }

    async fn list_principals(
        &self,
        request: Request<ListPrincipalsRequest>,
    ) -> Result<Response<ListPrincipalsResponse>, Status> {
        let req = request.into_inner();
        self.rpc("ListPrincipals", Kind::Read, async {
            let tenant_id = validate::id("tenant_id", req.tenant_id)?;
            let principals = self.read(move |s| s.list_principals(tenant_id)).await?;
            Ok(ListPrincipalsResponse { principals })
        })
        .await
    }

    async fn update_principal(
        &self,
        request: Request<UpdatePrincipalRequest>,
    ) -> Result<Response<Principal>, Status> {
        let req = request.into_inner();
        let key = RetryKey::of("UpdatePrincipal", &req);
        self.rpc("UpdatePrincipal", Kind::Change, async {
            let id = validate::id("id", req.id)?;
            let roles = validate::roles("roles", &req.roles)?;
            let quotas = match req.quotas.as_ref() {
                Some(q) => Some(validate::quotas("quotas", Some(q))?),
                None => None,
            };
            let expected = req.expected_version;
            self.change(key, move |s| {
                s.update_principal(id, expected, roles, quotas)
            })
            .await
        })
        .await
    }

    async fn delete_principal(
        &self,
        request: Request<DeletePrincipalRequest>,
    ) -> Result<Response<DeletePrincipalResponse>, Status> {
        let req = request.into_inner();
        let key = RetryKey::of("DeletePrincipal", &req);
        self.rpc("DeletePrincipal", Kind::Change, async {
            let id = validate::id("id", req.id)?;
            self.change(key, move |s| s.delete_principal(id)).await?;
            Ok(DeletePrincipalResponse {})
        })
        .await
    }
}
