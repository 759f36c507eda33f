//! The control API end to end: a real tonic client over TLS against the
//! control plane on a real redb store, with an in-memory data plane double.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::sync::{Arc, Mutex};

use arqonbus_core::auth::CredentialHash;
use arqonbus_core::limits::Limits;
use arqonbus_core::ops::ConnectionInfo;
use arqonbus_core::snapshot::AuthError;
use arqonbus_core::{PrincipalId, TenantId};
use arqonbus_proto::control::policy::Target;
use arqonbus_proto::control::*;
use common::*;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

fn name_ref(name: &str) -> TenantRef {
    TenantRef {
        id: 0,
        name: name.into(),
    }
}

fn conn(id: u64, shard: u16, tenant: u64) -> ConnectionInfo {
    ConnectionInfo {
        id,
        shard,
        tenant: Some(TenantId(tenant)),
        principal: None,
        principal_name: "p".into(),
        client_name: "c".into(),
        client_kind: "agent".into(),
        remote_addr: "127.0.0.1:1".into(),
        subscriptions: 1,
        msgs_in: 2,
        bytes_in: 3,
        msgs_out: 4,
        bytes_out: 5,
        connected_at_unix_ms: 6,
    }
}

fn now() -> i64 {
    now_unix()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_crud_with_exact_codes() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    let node = start(dir.path(), &pki, |_| {}).await;
    let ch = channel(&node, &pki).await;
    let mut c = clients(&ch, &Bearer::new(&node.token));

    let acme = c.create_tenant("acme").await;
    assert_eq!(acme.version, 1);
    assert!(acme.created_at_unix_ms > 0);
    // The RPC answered after the data plane got a snapshot holding it.
    assert!(node.dp.last().tenant(TenantId(acme.id)).is_some());

    let create = |name: &str| CreateTenantRequest {
        name: name.into(),
        quotas: None,
        placement: String::new(),
        allowed_origins: Vec::new(),
    };
    assert_status(
        c.tenants.create_tenant(create("acme")).await,
        Code::AlreadyExists,
        "acme",
    );
    assert_status(
        c.tenants.create_tenant(create("")).await,
        Code::InvalidArgument,
        "name: required",
    );
    assert_status(
        c.tenants.create_tenant(create(&"x".repeat(65))).await,
        Code::InvalidArgument,
        "name: 65 bytes",
    );
    assert_status(
        c.tenants.create_tenant(create("a b")).await,
        Code::InvalidArgument,
        "name: invalid character",
    );
    assert_status(
        c.tenants
            .create_tenant(CreateTenantRequest {
                name: "q".into(),
                quotas: Some(Quotas {
                    slow_consumer: 9,
                    ..Quotas::default()
                }),
                placement: String::new(),
                allowed_origins: Vec::new(),
            })
            .await,
        Code::InvalidArgument,
        "quotas.slow_consumer",
    );

    let got = c
        .tenants
        .get_tenant(GetTenantRequest {
            tenant: Some(name_ref("acme")),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, acme);
    let by_id = GetTenantRequest {
        tenant: Some(TenantRef {
            id: acme.id,
            name: String::new(),
        }),
    };
    assert_eq!(
        c.tenants.get_tenant(by_id).await.unwrap().into_inner(),
        acme
    );
    assert_status(
        c.tenants
            .get_tenant(GetTenantRequest { tenant: None })
            .await,
        Code::InvalidArgument,
        "tenant: required",
    );
    assert_status(
        c.tenants
            .get_tenant(GetTenantRequest {
                tenant: Some(TenantRef {
                    id: acme.id,
                    name: "acme".into(),
                }),
            })
            .await,
        Code::InvalidArgument,
        "not both",
    );
    assert_status(
        c.tenants
            .get_tenant(GetTenantRequest {
                tenant: Some(name_ref("nope")),
            })
            .await,
        Code::NotFound,
        "nope",
    );

    let quotas = Quotas {
        max_connections: 10,
        messages_per_second: 1000,
        slow_consumer: SlowConsumerPolicy::StallPublisher.into(),
        stall_max_ms: 250,
        ..Quotas::default()
    };
    let updated = c
        .tenants
        .update_tenant(UpdateTenantRequest {
            id: acme.id,
            expected_version: 1,
            quotas: Some(quotas),
            placement: String::new(),
            allowed_origins: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((updated.version, updated.quotas), (2, Some(quotas)));
    let entry = node.dp.last().tenant(TenantId(acme.id)).unwrap().clone();
    assert_eq!(entry.quotas.max_connections, 10);
    assert_eq!(
        entry.quotas.stall_max,
        std::time::Duration::from_millis(250)
    );
    assert_status(
        c.tenants
            .update_tenant(UpdateTenantRequest {
                id: acme.id,
                expected_version: 1,
                quotas: None,
                placement: String::new(),
                allowed_origins: None,
            })
            .await,
        Code::FailedPrecondition,
        "version 2",
    );
    assert_status(
        c.tenants
            .update_tenant(UpdateTenantRequest {
                id: 0,
                expected_version: 0,
                quotas: None,
                placement: String::new(),
                allowed_origins: None,
            })
            .await,
        Code::InvalidArgument,
        "id: required",
    );
    assert_status(
        c.tenants
            .update_tenant(UpdateTenantRequest {
                id: 999,
                expected_version: 0,
                quotas: None,
                placement: String::new(),
                allowed_origins: None,
            })
            .await,
        Code::NotFound,
        "tenant 999",
    );

    c.tenants.create_tenant(create("globex")).await.unwrap();
    let list = c
        .tenants
        .list_tenants(ListTenantsRequest {})
        .await
        .unwrap()
        .into_inner();
    let names: Vec<_> = list.tenants.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["acme", "globex"]);

    // Delete counts the tenant's connections and removes it from the plane.
    node.dp.connections.lock().unwrap().extend([
        conn(1, 0, acme.id),
        conn(2, 1, acme.id),
        conn(3, 1, 77),
    ]);
    let deleted = c
        .tenants
        .delete_tenant(DeleteTenantRequest { id: acme.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.connections_closed, 2);
    assert!(node.dp.last().tenant(TenantId(acme.id)).is_none());
    assert_status(
        c.tenants
            .delete_tenant(DeleteTenantRequest { id: acme.id })
            .await,
        Code::NotFound,
        "not found",
    );

    let epochs: Vec<u64> = node
        .dp
        .applied
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.epoch())
        .collect();
    assert!(epochs.len() >= 4);
    assert!(epochs.windows(2).all(|w| w[0] < w[1]), "{epochs:?}");
    assert!(epochs[0] > node.first.epoch());
    drop((c, ch));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn principals_credentials_and_policies() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    let node = start(dir.path(), &pki, |_| {}).await;
    let ch = channel(&node, &pki).await;
    let mut c = clients(&ch, &Bearer::new(&node.token));
    let t = c.create_tenant("acme").await;

    // Principals.
    let principal = |tenant_id, name: &str, roles: &[&str]| CreatePrincipalRequest {
        tenant_id,
        name: name.into(),
        roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        quotas: None,
    };
    let svc = c
        .principals
        .create_principal(principal(t.id, "svc", &["ops", "ops"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(svc.roles, ["ops"]);
    assert_status(
        c.principals
            .create_principal(principal(t.id, "svc", &[]))
            .await,
        Code::AlreadyExists,
        "svc",
    );
    assert_status(
        c.principals
            .create_principal(principal(999, "x", &[]))
            .await,
        Code::NotFound,
        "tenant 999",
    );
    assert_status(
        c.principals.create_principal(principal(0, "x", &[])).await,
        Code::InvalidArgument,
        "tenant_id",
    );
    assert_status(
        c.principals
            .create_principal(principal(t.id, "x", &["ok", "not ok"]))
            .await,
        Code::InvalidArgument,
        "roles[1]",
    );
    let updated = c
        .principals
        .update_principal(UpdatePrincipalRequest {
            id: svc.id,
            expected_version: 1,
            roles: vec!["ops".into(), "billing".into()],
            quotas: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((updated.version, updated.roles.len()), (2, 2));
    assert_status(
        c.principals
            .update_principal(UpdatePrincipalRequest {
                id: svc.id,
                expected_version: 1,
                roles: vec![],
                quotas: None,
            })
            .await,
        Code::FailedPrecondition,
        "version",
    );
    let listed = c
        .principals
        .list_principals(ListPrincipalsRequest { tenant_id: t.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.principals, vec![updated.clone()]);

    // Credentials.
    let issue = |principal_id, kind: CredentialKind, ttl_seconds| IssueCredentialRequest {
        principal_id,
        kind: kind.into(),
        ttl_seconds,
    };
    let bearer = c
        .credentials
        .issue_credential(issue(svc.id, CredentialKind::Bearer, 0))
        .await
        .unwrap()
        .into_inner();
    let signed = c
        .credentials
        .issue_credential(issue(svc.id, CredentialKind::Signed, 3600))
        .await
        .unwrap()
        .into_inner();
    let bc = bearer.credential.clone().unwrap();
    assert!(bearer.token.starts_with("abt_") && signed.token.starts_with("abs_"));
    assert_eq!(
        bc.fingerprint,
        CredentialHash::of(&bearer.token).fingerprint()
    );
    assert_status(
        c.credentials
            .issue_credential(issue(svc.id, CredentialKind::Signed, 0))
            .await,
        Code::InvalidArgument,
        "ttl_seconds",
    );
    assert_status(
        c.credentials
            .issue_credential(issue(svc.id, CredentialKind::Unspecified, 0))
            .await,
        Code::InvalidArgument,
        "kind",
    );
    assert_status(
        c.credentials
            .issue_credential(issue(999, CredentialKind::Bearer, 0))
            .await,
        Code::NotFound,
        "principal 999",
    );
    let snap = node.dp.last();
    assert_eq!(
        snap.authenticate(&bearer.token, now())
            .unwrap()
            .principal
            .id,
        PrincipalId(svc.id)
    );
    let who = snap.authenticate(&signed.token, now()).unwrap();
    assert_eq!(who.tenant.id, TenantId(t.id));
    assert!(who.expires_at_unix.is_some());

    let listed = c
        .credentials
        .list_credentials(ListCredentialsRequest {
            tenant_id: t.id,
            principal_id: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.credentials.len(), 2);
    // The token is never stored.
    let store_bytes = std::fs::read(dir.path().join("control.redb")).unwrap();
    assert!(
        !store_bytes
            .windows(bearer.token.len())
            .any(|w| w == bearer.token.as_bytes())
    );

    let revoked = c
        .credentials
        .revoke_credential(RevokeCredentialRequest { id: bc.id })
        .await
        .unwrap()
        .into_inner()
        .credential
        .unwrap();
    assert!(revoked.revoked && revoked.revoked_at_unix_ms > 0);
    let snap = node.dp.last();
    assert_eq!(
        snap.authenticate(&bearer.token, now()).unwrap_err(),
        AuthError::Unknown
    );
    assert!(
        snap.revalidate(&who, now()).is_ok(),
        "the other credential lives on"
    );
    assert_status(
        c.credentials
            .revoke_credential(RevokeCredentialRequest { id: 999 })
            .await,
        Code::NotFound,
        "credential 999",
    );

    // Policies.
    let rules = |allow: &[&str], deny: &[&str]| {
        Some(SubjectRules {
            allow: allow.iter().map(|s| (*s).to_owned()).collect(),
            deny: deny.iter().map(|s| (*s).to_owned()).collect(),
        })
    };
    let put = |policy: Policy, expected_version| PutPolicyRequest {
        policy: Some(policy),
        expected_version,
    };
    let by_role = Policy {
        tenant_id: t.id,
        target: Some(Target::Role("ops".into())),
        publish: rules(&["orders.>"], &["orders.secret.>"]),
        subscribe: rules(&["orders.>"], &[]),
        ..Policy::default()
    };
    let stored = c
        .policies
        .put_policy(put(by_role.clone(), 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored.version, 1);
    // The principal's permissions in the plane's latest snapshot.
    let perms_now = || {
        node.dp
            .last()
            .principal(PrincipalId(svc.id))
            .unwrap()
            .permissions
            .clone()
    };
    let perms = perms_now();
    assert!(!perms.unrestricted());
    // Presence rules travel with the policy into the snapshot.
    let subject = |s: &str| {
        arqonbus_core::subject::Subject::parse(bytes::Bytes::copy_from_slice(s.as_bytes()), 256)
            .unwrap()
    };
    assert!(!perms.may_see_presence(&subject("orders.eu")));
    let mut watcher = stored.clone();
    watcher.presence = rules(&["orders.>"], &["orders.secret"]);
    let watched = c
        .policies
        .put_policy(put(watcher, stored.version))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(watched.version, 2);
    assert_eq!(
        watched.presence.as_ref().map(|r| r.allow.clone()),
        Some(vec!["orders.>".to_owned()])
    );
    let perms = perms_now();
    assert!(perms.may_see_presence(&subject("orders.eu")));
    assert!(!perms.may_see_presence(&subject("orders.secret")));

    let mut bad = by_role.clone();
    bad.presence = rules(&["rooms.*.>.x"], &[]);
    assert_status(
        c.policies.put_policy(put(bad, 0)).await,
        Code::InvalidArgument,
        "policy.presence.allow[0]",
    );
    let mut bad = by_role.clone();
    bad.publish = rules(&["orders.>", "a..b"], &[]);
    assert_status(
        c.policies.put_policy(put(bad, 0)).await,
        Code::InvalidArgument,
        "policy.publish.allow[1]",
    );
    let mut bad = by_role.clone();
    bad.subscribe = rules(&[], &["x.>.y"]);
    assert_status(
        c.policies.put_policy(put(bad, 0)).await,
        Code::InvalidArgument,
        "policy.subscribe.deny[0]",
    );
    let mut bad = by_role.clone();
    bad.target = None;
    assert_status(
        c.policies.put_policy(put(bad, 0)).await,
        Code::InvalidArgument,
        "policy.target",
    );
    let mut bad = by_role.clone();
    bad.target = Some(Target::PrincipalId(0));
    assert_status(
        c.policies.put_policy(put(bad, 0)).await,
        Code::InvalidArgument,
        "policy.principal_id",
    );
    let mut bad = by_role.clone();
    bad.target = Some(Target::Role("no such role!".into()));
    assert_status(
        c.policies.put_policy(put(bad, 0)).await,
        Code::InvalidArgument,
        "policy.role",
    );
    let mut bad = by_role.clone();
    bad.tenant_id = 999;
    assert_status(
        c.policies.put_policy(put(bad, 0)).await,
        Code::NotFound,
        "tenant 999",
    );
    assert_status(
        c.policies
            .put_policy(PutPolicyRequest {
                policy: None,
                expected_version: 0,
            })
            .await,
        Code::InvalidArgument,
        "policy: required",
    );
    let replace = Policy {
        id: stored.id,
        ..by_role.clone()
    };
    assert_status(
        c.policies.put_policy(put(replace.clone(), 7)).await,
        Code::FailedPrecondition,
        "version",
    );
    assert_eq!(
        c.policies
            .put_policy(put(replace, 2))
            .await
            .unwrap()
            .into_inner()
            .version,
        3
    );
    let listed = c
        .policies
        .list_policies(ListPoliciesRequest { tenant_id: t.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.policies.len(), 1);
    c.policies
        .delete_policy(DeletePolicyRequest { id: stored.id })
        .await
        .unwrap();
    assert!(perms_now().unrestricted());
    assert_status(
        c.policies
            .delete_policy(DeletePolicyRequest { id: stored.id })
            .await,
        Code::NotFound,
        "policy",
    );

    // Deleting the principal takes its credentials out of the plane.
    c.principals
        .delete_principal(DeletePrincipalRequest { id: svc.id })
        .await
        .unwrap();
    assert_eq!(
        node.dp
            .last()
            .authenticate(&signed.token, now())
            .unwrap_err(),
        AuthError::Revoked
    );
    assert_status(
        c.principals
            .delete_principal(DeletePrincipalRequest { id: svc.id })
            .await,
        Code::NotFound,
        "principal",
    );
    drop((c, ch));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_but_health_needs_the_admin_credential() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    let node = start(dir.path(), &pki, |_| {}).await;
    assert!(node.token_created && node.token.starts_with("abt_") && node.token.len() == 47);
    let mode = std::fs::metadata(&node.token_path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let ch = channel(&node, &pki).await;

    for auth in [
        Bearer(None),
        Bearer::new("abt_wrong"),
        Bearer::new(&format!("{}x", node.token)),
    ] {
        let mut c = clients(&ch, &auth);
        let s = c
            .tenants
            .list_tenants(ListTenantsRequest {})
            .await
            .unwrap_err();
        assert_eq!(s.code(), Code::Unauthenticated);
        assert!(!s.message().contains("abt_"));
        let s = c.node.get_status(GetStatusRequest {}).await.unwrap_err();
        assert_eq!(s.code(), Code::Unauthenticated);
    }
    let mut basic = clients(
        &ch,
        &Bearer(Some(format!("Basic {}", node.token).parse().unwrap())),
    );
    assert_eq!(
        basic
            .policies
            .list_policies(ListPoliciesRequest { tenant_id: 1 })
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    assert_eq!(node.handle.metrics().auth_failures, 7);

    // Health is open, for load balancers.
    let mut health = HealthClient::new(ch.clone());
    let h = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(h.status(), ServingStatus::Serving);

    // Reflection needs the credential.
    let ask = || {
        tokio_stream::iter([ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        }])
    };
    let mut anon = ServerReflectionClient::with_interceptor(ch.clone(), Bearer(None));
    assert_eq!(
        anon.server_reflection_info(ask()).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let mut authed = ServerReflectionClient::with_interceptor(ch.clone(), Bearer::new(&node.token));
    let mut stream = authed
        .server_reflection_info(ask())
        .await
        .unwrap()
        .into_inner();
    let reply = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected reflection reply {reply:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for s in [
        "arqonbus.control.v1.TenantService",
        "arqonbus.control.v1.NodeService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.contains(&s), "{names:?}");
    }

    // And the right credential works.
    let mut c = clients(&ch, &Bearer::new(&node.token));
    c.tenants.list_tenants(ListTenantsRequest {}).await.unwrap();
    drop((c, ch, health, anon, authed, stream));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_shards_status_and_reload() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    // What the "configuration file" says at the next reload.
    let file: Arc<Mutex<Result<Limits, String>>> = Arc::new(Mutex::new(Ok(Limits {
        max_subscriptions: 7,
        ..Limits::default()
    })));
    let hook_file = file.clone();
    let node = start(dir.path(), &pki, move |cfg| {
        cfg.reload = Some(Box::new(move || hook_file.lock().unwrap().clone()));
    })
    .await;
    let ch = channel(&node, &pki).await;
    let mut c = clients(&ch, &Bearer::new(&node.token));
    node.dp
        .connections
        .lock()
        .unwrap()
        .extend([conn(1, 0, 5), conn(2, 1, 6), conn(3, 1, 5)]);

    let all = c
        .connections
        .list_connections(ListConnectionsRequest { tenant_id: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.connections.len(), 3);
    let five = c
        .connections
        .list_connections(ListConnectionsRequest { tenant_id: 5 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        five.connections.iter().map(|c| c.id).collect::<Vec<_>>(),
        [1, 3]
    );
    assert_eq!(five.connections[0].client_kind, "agent");
    assert_eq!(five.connections[0].bytes_out, 5);
    c.connections
        .kick_connection(KickConnectionRequest { id: 3 })
        .await
        .unwrap();
    assert_status(
        c.connections
            .kick_connection(KickConnectionRequest { id: 3 })
            .await,
        Code::NotFound,
        "connection 3",
    );

    let status = c
        .node
        .drain_shard(DrainShardRequest { shard: 1 })
        .await
        .unwrap()
        .into_inner();
    assert!(status.shards[1].draining && !status.shards[0].draining);
    assert_eq!(status.shards[1].connections, 1);
    assert_status(
        c.node.drain_shard(DrainShardRequest { shard: 9 }).await,
        Code::NotFound,
        "no shard 9",
    );
    assert_status(
        c.node
            .drain_shard(DrainShardRequest { shard: 70_000 })
            .await,
        Code::InvalidArgument,
        "shard",
    );
    let status = c
        .node
        .resume_shard(ResumeShardRequest { shard: 1 })
        .await
        .unwrap()
        .into_inner();
    assert!(!status.shards[1].draining);

    let status = c
        .node
        .get_status(GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.server_id, "test-node");
    assert!(status.accepting && status.reason.is_empty());
    assert_eq!(status.config_epoch, node.handle.current_snapshot().epoch());
    assert!(!status.version.is_empty());

    // Reload reads the configuration through the hook and pushes a snapshot.
    let before = node.dp.applied_count();
    let status = c.node.reload(ReloadRequest {}).await.unwrap().into_inner();
    assert_eq!(node.dp.applied_count(), before + 1);
    assert_eq!(node.dp.last().limits().max_subscriptions, 7);
    assert_eq!(status.config_epoch, node.dp.last().epoch());
    *file.lock().unwrap() = Err("line 3: unknown key".into());
    assert_status(
        c.node.reload(ReloadRequest {}).await,
        Code::FailedPrecondition,
        "unknown key",
    );
    *file.lock().unwrap() = Ok(Limits {
        max_payload: 0,
        ..Limits::default()
    });
    assert_status(
        c.node.reload(ReloadRequest {}).await,
        Code::FailedPrecondition,
        "max_payload",
    );
    assert_eq!(
        node.dp.applied_count(),
        before + 1,
        "a failed reload pushes nothing"
    );
    drop((c, ch));
    node.stop().await;
}
