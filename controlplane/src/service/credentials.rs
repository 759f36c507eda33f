//! `CredentialService`: issue, list and revoke credentials.
//!
//! A bearer token is 256 random bits (`abt_…`); the store keeps its SHA-256
//! and fingerprint. A signed token (`abs_…`) carries its claims (tenant,
//! principal, credential id, issue and expiry times) signed with the tenant's
//! key; the store keeps the credential's id and expiry so it can be revoked.
//! The token is in the response once and nowhere else: not in the store, not
//! in a log.

use arqonbus_core::auth::{CredentialHash, sign_token};
use arqonbus_proto::control::credential_service_server::CredentialService;
use arqonbus_proto::control::{
    CredentialKind, IssueCredentialRequest, IssueCredentialResponse, ListCredentialsRequest,
    ListCredentialsResponse, RevokeCredentialRequest, RevokeCredentialResponse,
};
use arqonbus_proto::v1::SignedTokenClaims;
use ring::signature::Ed25519KeyPair;
use tonic::{Request, Response, Status};

use super::retry::RetryKey;
use super::{Api, Kind, store_status};
use crate::admin::new_token;
use crate::snapshot::now_unix_ms;
use crate::store::{MintContext, Minted, NewCredential, Secret, StoreError};
use crate::validate::{self, FieldError, MAX_TTL_SECONDS};

pub(crate) fn mint(ctx: &MintContext<'_>) -> Result<Minted, StoreError> {
    match ctx.new.kind {
        CredentialKind::Bearer => {
            let token = new_token().map_err(|e| StoreError::Mint(e.to_string()))?;
            let hash = CredentialHash::of(token.expose());
            Ok(Minted {
                token,
                token_sha256: Some(hash.0),
                fingerprint: hash.fingerprint(),
            })
        }
        CredentialKind::Signed => {
            let key = Ed25519KeyPair::from_pkcs8(&ctx.signing_key.0).map_err(|e| {
                StoreError::Mint(format!("tenant {} signing key: {e}", ctx.tenant_id))
            })?;
            let claims = SignedTokenClaims {
                tenant_id: ctx.tenant_id,
                principal_id: ctx.principal_id,
                credential_id: ctx.credential_id,
                issued_at_unix: ctx.new.created_at_unix_ms.div_euclid(1000),
                expires_at_unix: ctx.new.expires_at_unix_ms.div_euclid(1000),
            };
            let token = Secret::new(sign_token(&claims, &key));
            Ok(Minted {
                fingerprint: CredentialHash::of(token.expose()).fingerprint(),
                token,
                token_sha256: None,
            })
        }
        CredentialKind::Unspecified => Err(StoreError::Mint("no credential kind".into())),
    }
}

#[tonic::async_trait]
impl CredentialService for Api {
    async fn issue_credential(
        &self,
        request: Request<IssueCredentialRequest>,
    ) -> Result<Response<IssueCredentialResponse>, Status> {
        let req = request.into_inner();
        let key = RetryKey::of("IssueCredential", &req);
        self.rpc("IssueCredential", Kind::Change, async {
            let principal_id = validate::id("principal_id", req.principal_id)?;
            let Ok(kind @ (CredentialKind::Bearer | CredentialKind::Signed)) =
                CredentialKind::try_from(req.kind)
            else {
                return Err(FieldError::new("kind", "must be BEARER or SIGNED").into());
            };
            if req.ttl_seconds > MAX_TTL_SECONDS {
                return Err(FieldError::new(
                    "ttl_seconds",
                    format!("at most {MAX_TTL_SECONDS} (ten years)"),
                )
                .into());
            }
            if kind == CredentialKind::Signed && req.ttl_seconds == 0 {
                return Err(FieldError::new(
                    "ttl_seconds",
                    "required for SIGNED credentials (they always expire)",
                )
                .into());
            }
            // Whole seconds, so the stored expiry equals the signed one.
            let now_s = now_unix_ms().div_euclid(1000);
            let ttl = i64::try_from(req.ttl_seconds).unwrap_or(i64::MAX);
            let new = NewCredential {
                principal_id,
                kind,
                created_at_unix_ms: now_s.saturating_mul(1000),
                expires_at_unix_ms: if ttl == 0 {
                    0
                } else {
                    now_s.saturating_add(ttl).saturating_mul(1000)
                },
            };
            let issued = self
                .change(key, move |s| s.issue_credential(new, &mut mint))
                .await?;
            Ok(IssueCredentialResponse {
                credential: Some(issued.credential),
                token: issued.token.into_inner(),
            })
        })
        .await
    }

    async fn list_credentials(
        &self,
        request: Request<ListCredentialsRequest>,
    ) -> Result<Response<ListCredentialsResponse>, Status> {
        let req = request.into_inner();
        self.rpc("ListCredentials", Kind::Read, async {
            let tenant_id = validate::id("tenant_id", req.tenant_id)?;
            let principal = (req.principal_id != 0).then_some(req.principal_id);
            let credentials = self
                .read(move |s| s.list_credentials(tenant_id, principal))
                .await?;
            Ok(ListCredentialsResponse { credentials })
        })
        .await
    }

    async fn revoke_credential(
        &self,
        request: Request<RevokeCredentialRequest>,
    ) -> Result<Response<RevokeCredentialResponse>, Status> {
        let req = request.into_inner();
        let key = RetryKey::of("RevokeCredential", &req);
        self.rpc("RevokeCredential", Kind::Change, async {
            let id = validate::id("id", req.id)?;
            self.commit(Some(key), move |inner| {
                let (credential, changed) = inner
                    .store
                    .revoke_credential(id, now_unix_ms())
                    .map_err(store_status)?;
                let answer = RevokeCredentialResponse {
                    credential: Some(credential),
                };
                Ok((answer, changed))
            })
            .await
        })
        .await
    }
}
