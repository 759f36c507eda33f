//! `PolicyService`: put, list and delete subject policies.

use arqonbus_proto::control::policy::Target;
use arqonbus_proto::control::policy_service_server::PolicyService;
use arqonbus_proto::control::{
    DeletePolicyRequest, DeletePolicyResponse, ListPoliciesRequest, ListPoliciesResponse, Policy,
    PutPolicyRequest,
};
use tonic::{Request, Response, Status};

use super::retry::RetryKey;
use super::{Api, Kind};
use crate::validate::{self, FieldError};

/// Checks a policy as PutPolicy receives it.
fn check(policy: &Policy) -> Result<(), FieldError> {
    validate::id("policy.tenant_id", policy.tenant_id)?;
    match &policy.target {
        None => {
            return Err(FieldError::new(
                "policy.target",
                "one of principal_id and role is required",
            ));
        }
        Some(Target::PrincipalId(id)) => {
            validate::id("policy.principal_id", *id)?;
        }
        Some(Target::Role(role)) => validate::name("policy.role", role)?,
    }
    validate::policy_rules("policy", policy)?;
    Ok(())
}

#[tonic::async_trait]
impl PolicyService for Api {
    async fn put_policy(
        &self,
        request: Request<PutPolicyRequest>,
    ) -> Result<Response<Policy>, Status> {
        let req = request.into_inner();
        let key = RetryKey::of("PutPolicy", &req);
        self.rpc("PutPolicy", Kind::Change, async {
            let mut policy = req
                .policy
                .ok_or_else(|| FieldError::new("policy", "required"))?;
            check(&policy)?;
            // Output only: the store sets it.
            policy.version = 0;
            let expected = req.expected_version;
            self.change(key, move |s| s.put_policy(policy, expected))
                .await
        })
        .await
    }

    async fn list_policies(
        &self,
        request: Request<ListPoliciesRequest>,
    ) -> Result<Response<ListPoliciesResponse>, Status> {
        let req = request.into_inner();
        self.rpc("ListPolicies", Kind::Read, async {
            let tenant_id = validate::id("tenant_id", req.tenant_id)?;
            let policies = self.read(move |s| s.list_policies(tenant_id)).await?;
            Ok(ListPoliciesResponse { policies })
        })
        .await
    }

    async fn delete_policy(
        &self,
        request: Request<DeletePolicyRequest>,
    ) -> Result<Response<DeletePolicyResponse>, Status> {
        let req = request.into_inner();
        let key = RetryKey::of("DeletePolicy", &req);
        self.rpc("DeletePolicy", Kind::Change, async {
            let id = validate::id("id", req.id)?;
            self.change(key, move |s| s.delete_policy(id)).await?;
            Ok(DeletePolicyResponse {})
        })
        .await
    }
}
