//! The subcommands: each turns its arguments into control API calls and the
//! answers into a [`Report`].
//!
//! Invariants: every call goes through [`Control`], so it carries the admin
//! token; read-modify-write updates (`tenants update`, `principals update`)
//! send the version they read, so they never overwrite a concurrent change;
//! a tenant named by name is resolved with `GetTenant` first, one lookup per
//! command (two for bare digits, looked up as an id and as a name, which fail
//! when they find two different tenants); nothing here prints, and the issued
//! token only ever lives in the returned report.

use arqonbus_proto::control::{
    DeletePolicyRequest, DeletePrincipalRequest, DeleteTenantRequest, DrainShardRequest,
    GetStatusRequest, GetSteeringRequest, GetTenantRequest, KickConnectionRequest,
    ListConnectionsRequest, ListPoliciesRequest, ListPrincipalsRequest, ListTenantsRequest,
    Principal, ReloadRequest, ResumeShardRequest, RevokeCredentialRequest, Tenant,
};

use crate::CliError;
use crate::args::{
    AdminCmd, Cmd, ConnectionsCmd, CredentialsCmd, NodeCmd, PoliciesCmd, PrincipalsCmd,
    SteeringCmd, TenantArg, TenantsCmd,
};
use crate::connect::Control;
use crate::render::{self, Report};
use crate::requests;

/// Runs one command; `now_ms` is the wall clock (for "expired").
pub(crate) async fn run(control: &Control, command: Cmd, now_ms: i64) -> Result<Report, CliError> {
    match command {
        Cmd::Tenants(cmd) => tenants(control, cmd).await,
        Cmd::Principals(cmd) => principals(control, cmd).await,
        Cmd::Credentials(cmd) => credentials(control, cmd, now_ms).await,
        Cmd::Policies(cmd) => policies(control, cmd).await,
        Cmd::Connections(cmd) => connections(control, cmd).await,
        Cmd::Node(cmd) => node(control, cmd).await,
        Cmd::Steering(cmd) => steering(control, cmd).await,
        Cmd::Backup { file } => backup(control, &file).await,
        Cmd::Admin(AdminCmd::Rotate { out }) => rotate_admin(control, out).await,
    }
}

/// `NodeService.RotateAdminToken`; the new token goes to `out` (atomically,
/// 0600), never to stdout.
async fn rotate_admin(
    control: &Control,
    out: Option<std::path::PathBuf>,
) -> Result<Report, CliError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let out = out.ok_or(CliError::IncompleteResponse("admin token file"))?;
    let answer = control
        .node()
        .rotate_admin_token(arqonbus_proto::control::RotateAdminTokenRequest {})
        .await?
        .into_inner();
    let mut tmp = out.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = std::path::PathBuf::from(tmp);
    let fail = |e: std::io::Error| {
        CliError::Local(format!(
            "the node rotated the admin token (fingerprint {}, also in its {}), but {} could not \
             be written: {e}",
            answer.fingerprint,
            answer.path,
            out.display()
        ))
    };
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(fail)?;
    f.write_all(format!("{}\n", answer.token).as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(fail)?;
    std::fs::rename(&tmp, &out).map_err(fail)?;
    let json = serde_json::json!({
        "file": out.display().to_string(),
        "node_file": answer.path,
        "fingerprint": answer.fingerprint,
    });
    let text = format!(
        "admin token rotated: new token in {} (mode 0600, fingerprint {}); the old one no longer works\n",
        out.display(),
        answer.fingerprint
    );
    Ok(Report {
        json,
        text,
        notes: Vec::new(),
    })
}

/// `NodeService.Backup` into `file`: received whole and checked against
/// the announced size into `<file>.partial` (0600), synced, then renamed.
async fn backup(control: &Control, file: &std::path::Path) -> Result<Report, CliError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let fail = |what: String| CliError::Local(format!("backup: {what}"));
    if file.exists() {
        return Err(fail(format!(
            "{} exists; choose a new file",
            file.display()
        )));
    }
    let mut stream = control
        .node()
        .backup(arqonbus_proto::control::BackupRequest {})
        .await?
        .into_inner();
    let mut bytes = Vec::new();
    let (mut total, mut sha256) = (None, String::new());
    while let Some(chunk) = stream.message().await? {
        if total.is_none() {
            total = Some(chunk.total_bytes);
            sha256.clone_from(&chunk.sha256);
        }
        bytes.extend_from_slice(&chunk.data);
    }
    let total = total.ok_or(CliError::IncompleteResponse("backup chunk"))?;
    if bytes.len() as u64 != total {
        return Err(fail(format!("received {} of {total} bytes", bytes.len())));
    }
    let mut partial = file.as_os_str().to_owned();
    partial.push(".partial");
    let partial = std::path::PathBuf::from(partial);
    let io = |e: std::io::Error| fail(format!("{}: {e}", partial.display()));
    let _ = std::fs::remove_file(&partial);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .map_err(io)?;
    f.write_all(&bytes)
        .and_then(|()| f.sync_all())
        .map_err(io)?;
    std::fs::rename(&partial, file).map_err(|e| fail(format!("{}: {e}", file.display())))?;
    let json = serde_json::json!({
        "file": file.display().to_string(),
        "bytes": total,
        "sha256": sha256,
    });
    let text = format!(
        "backup: {} ({total} bytes, sha256 {sha256}, mode 0600)\n",
        file.display()
    );
    Ok(Report {
        json,
        text,
        notes: Vec::new(),
    })
}

async fn tenants(control: &Control, cmd: TenantsCmd) -> Result<Report, CliError> {
    let mut client = control.tenants();
    match cmd {
        TenantsCmd::Create {
            name,
            quotas,
            placement,
            allowed_origins,
        } => {
            let request = requests::create_tenant(name, &quotas, placement, allowed_origins);
            let tenant = client.create_tenant(request).await?.into_inner();
            Ok(render::tenant(&tenant))
        }
        TenantsCmd::List => {
            let list = client
                .list_tenants(ListTenantsRequest {})
                .await?
                .into_inner();
            Ok(render::tenants(&list.tenants))
        }
        TenantsCmd::Get { tenant } => Ok(render::tenant(&get_tenant(control, &tenant).await?)),
        TenantsCmd::Update(args) => {
            let current = get_tenant(control, &args.tenant).await?;
            let request = requests::update_tenant(&current, &args);
            let tenant = client.update_tenant(request).await?.into_inner();
            Ok(render::tenant(&tenant))
        }
        TenantsCmd::Delete { tenant } => {
            let id = tenant_id(control, &tenant).await?;
            let response = client
                .delete_tenant(DeleteTenantRequest { id })
                .await?
                .into_inner();
            Ok(render::tenant_deleted(id, response.connections_closed))
        }
    }
}

async fn principals(control: &Control, cmd: PrincipalsCmd) -> Result<Report, CliError> {
    let mut client = control.principals();
    match cmd {
        PrincipalsCmd::Create {
            tenant,
            name,
            roles,
            quotas,
        } => {
            let tenant_id = tenant_id(control, &tenant).await?;
            let request = requests::create_principal(tenant_id, name, roles, &quotas);
            let principal = client.create_principal(request).await?.into_inner();
            Ok(render::principal(&principal))
        }
        PrincipalsCmd::List { tenant } => {
            let tenant_id = tenant_id(control, &tenant).await?;
            let list = client
                .list_principals(ListPrincipalsRequest { tenant_id })
                .await?
                .into_inner();
            Ok(render::principals(&list.principals))
        }
        PrincipalsCmd::Update(args) => {
            let current = find_principal(control, args.id, args.tenant.as_ref()).await?;
            let request = requests::update_principal(&current, &args);
            let principal = client.update_principal(request).await?.into_inner();
            Ok(render::principal(&principal))
        }
        PrincipalsCmd::Delete { id } => {
            client
                .delete_principal(DeletePrincipalRequest { id })
                .await?;
            Ok(render::principal_deleted(id))
        }
    }
}

async fn credentials(
    control: &Control,
    cmd: CredentialsCmd,
    now_ms: i64,
) -> Result<Report, CliError> {
    let mut client = control.credentials();
    match cmd {
        CredentialsCmd::Issue {
            principal,
            signed,
            ttl,
        } => {
            let request = requests::issue_credential(principal, signed, ttl);
            let response = client.issue_credential(request).await?.into_inner();
            let credential = response
                .credential
                .ok_or(CliError::IncompleteResponse("credential"))?;
            if response.token.is_empty() {
                return Err(CliError::IncompleteResponse("token"));
            }
            Ok(render::issued(&credential, &response.token))
        }
        CredentialsCmd::List { tenant, principal } => {
            let tenant_id = tenant_id(control, &tenant).await?;
            let request = requests::list_credentials(tenant_id, principal);
            let list = client.list_credentials(request).await?.into_inner();
            Ok(render::credentials(&list.credentials, now_ms))
        }
        CredentialsCmd::Revoke { id } => {
            let response = client
                .revoke_credential(RevokeCredentialRequest { id })
                .await?
                .into_inner();
            let credential = response
                .credential
                .ok_or(CliError::IncompleteResponse("credential"))?;
            Ok(render::revoked(&credential))
        }
    }
}

async fn policies(control: &Control, cmd: PoliciesCmd) -> Result<Report, CliError> {
    let mut client = control.policies();
    match cmd {
        PoliciesCmd::Put(args) => {
            let tenant_id = tenant_id(control, &args.tenant).await?;
            let request = requests::put_policy(tenant_id, &args);
            let policy = client.put_policy(request).await?.into_inner();
            Ok(render::policy(&policy))
        }
        PoliciesCmd::List { tenant } => {
            let tenant_id = tenant_id(control, &tenant).await?;
            let list = client
                .list_policies(ListPoliciesRequest { tenant_id })
                .await?
                .into_inner();
            Ok(render::policies(&list.policies))
        }
        PoliciesCmd::Delete { id } => {
            client.delete_policy(DeletePolicyRequest { id }).await?;
            Ok(render::policy_deleted(id))
        }
    }
}

async fn connections(control: &Control, cmd: ConnectionsCmd) -> Result<Report, CliError> {
    let mut client = control.connections();
    match cmd {
        ConnectionsCmd::List { tenant } => {
            let tenant_id = match &tenant {
                Some(tenant) => tenant_id(control, tenant).await?,
                None => 0,
            };
            let list = client
                .list_connections(ListConnectionsRequest { tenant_id })
                .await?
                .into_inner();
            Ok(render::connections(&list.connections))
        }
        ConnectionsCmd::Kick { id } => {
            client.kick_connection(KickConnectionRequest { id }).await?;
            Ok(render::kicked(id))
        }
    }
}

async fn node(control: &Control, cmd: NodeCmd) -> Result<Report, CliError> {
    let mut client = control.node();
    let status = match cmd {
        NodeCmd::Status => client.get_status(GetStatusRequest {}).await?,
        NodeCmd::Drain { shard } => client.drain_shard(DrainShardRequest { shard }).await?,
        NodeCmd::Resume { shard } => client.resume_shard(ResumeShardRequest { shard }).await?,
        NodeCmd::Reload => client.reload(ReloadRequest {}).await?,
    };
    Ok(render::node(&status.into_inner()))
}

async fn steering(control: &Control, cmd: SteeringCmd) -> Result<Report, CliError> {
    let mut client = control.node();
    let steering = match cmd {
        SteeringCmd::Get => client.get_steering(GetSteeringRequest {}).await?,
        SteeringCmd::Set(args) => client.set_steering(requests::set_steering(&args)).await?,
    };
    Ok(render::steering(&steering.into_inner()))
}

/// The tenant `tenant` names: `GetTenant` by id or name; bare digits are
/// looked up both ways (see [`TenantArg`]).
async fn get_tenant(control: &Control, tenant: &TenantArg) -> Result<Tenant, CliError> {
    let TenantArg::Digits(digits) = tenant else {
        return lookup_tenant(control, tenant).await;
    };
    let id = digits.parse().unwrap_or_default();
    let by_id = found(lookup_tenant(control, &TenantArg::Id(id)).await)?;
    let by_name = found(lookup_tenant(control, &TenantArg::Name(digits.clone())).await)?;
    match (by_id, by_name) {
        (Some(a), Some(b)) if a.id != b.id => Err(CliError::AmbiguousTenant {
            digits: digits.clone(),
            named_id: b.id,
        }),
        (Some(t), _) | (None, Some(t)) => Ok(t),
        (None, None) => Err(CliError::NotFound(format!(
            "no tenant has id {digits} or is named \"{digits}\""
        ))),
    }
}

/// One `GetTenant`.
async fn lookup_tenant(control: &Control, tenant: &TenantArg) -> Result<Tenant, CliError> {
    let request = GetTenantRequest {
        tenant: Some(requests::tenant_ref(tenant)),
    };
    Ok(control.tenants().get_tenant(request).await?.into_inner())
}

/// `NOT_FOUND` as `None`.
fn found(result: Result<Tenant, CliError>) -> Result<Option<Tenant>, CliError> {
    match result {
        Ok(t) => Ok(Some(t)),
        Err(CliError::Rpc(status)) if status.code() == tonic::Code::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The tenant's id: as given with `id:`, or looked up.
async fn tenant_id(control: &Control, tenant: &TenantArg) -> Result<u64, CliError> {
    match tenant {
        TenantArg::Id(id) => Ok(*id),
        TenantArg::Name(_) | TenantArg::Digits(_) => Ok(get_tenant(control, tenant).await?.id),
    }
}

/// The API has no `GetPrincipal`: list the principals of the given tenant,
/// or of every tenant, and pick the one with `id`.
async fn find_principal(
    control: &Control,
    id: u64,
    tenant: Option<&TenantArg>,
) -> Result<Principal, CliError> {
    let tenant_ids = match tenant {
        Some(tenant) => vec![tenant_id(control, tenant).await?],
        None => control
            .tenants()
            .list_tenants(ListTenantsRequest {})
            .await?
            .into_inner()
            .tenants
            .into_iter()
            .map(|t| t.id)
            .collect(),
    };
    let mut client = control.principals();
    for tenant_id in tenant_ids {
        let list = client
            .list_principals(ListPrincipalsRequest { tenant_id })
            .await?
            .into_inner();
        if let Some(found) = list.principals.into_iter().find(|p| p.id == id) {
            return Ok(found);
        }
    }
    Err(CliError::NotFound(match tenant {
        Some(tenant) => format!("no principal {id} in tenant {tenant}"),
        None => format!("no principal {id}"),
    }))
}
