//! State across restarts: persistence, the one-time `tenants.toml` import,
//! seed tenants, fail-closed start on a damaged store and its repair, and
//! mTLS for operators.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod common;

use arqonbus_controlplane::{
    ControlPlane, ControlPlaneConfig, ControlPlaneError, SeedCredential, SeedTenant, StoreError,
};
use arqonbus_core::TenantId;
use arqonbus_proto::control::*;
use common::*;
use redb::{ReadableDatabase as _, TableDefinition};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

fn sha256_hex(token: &str) -> String {
    hex::encode(arqonbus_core::auth::CredentialHash::of(token).0)
}

const TENANTS_TOML: &str = r#"# Managed by arqonbus. Credential hashes only: tokens are never stored here.
[[tenants]]
id = 1
name = "default"

[[tenants.credentials]]
principal_id = 1
principal = "bootstrap"
sha256 = "HASH"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_everything_and_imports_tenants_toml_once() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    std::fs::write(
        dir.path().join("tenants.toml"),
        TENANTS_TOML.replace("HASH", &sha256_hex("abt_bootstrap")),
    )
    .unwrap();
    let seed = SeedTenant {
        id: 40,
        name: "seeded".into(),
        credentials: vec![SeedCredential {
            principal_id: 41,
            principal: "svc".into(),
            sha256: sha256_hex("abt_seed"),
        }],
    };

    let node = start(dir.path(), &pki, |cfg| {
        cfg.seed_tenants = vec![seed.clone()];
    })
    .await;
    // The first snapshot (for the data plane's start) already has them.
    let who = node.first.authenticate("abt_bootstrap", 0).unwrap();
    assert_eq!(
        (who.tenant.id, &*who.tenant.name, &*who.principal.name),
        (TenantId(1), "default", "bootstrap")
    );
    assert_eq!(
        node.first.authenticate("abt_seed", 0).unwrap().tenant.id,
        TenantId(40)
    );
    let token = node.token.clone();
    let ch = channel(&node, &pki).await;
    let mut c = clients(&ch, &Bearer::new(&token));
    let t = c.create_tenant("acme").await;
    assert_eq!(t.id, 41, "ids continue after the imported and seeded ones");
    let p = c
        .principals
        .create_principal(CreatePrincipalRequest {
            tenant_id: t.id,
            name: "svc".into(),
            roles: vec!["ops".into()],
            quotas: None,
        })
        .await
        .unwrap()
        .into_inner();
    let issued = c
        .credentials
        .issue_credential(IssueCredentialRequest {
            principal_id: p.id,
            kind: CredentialKind::Signed.into(),
            ttl_seconds: 600,
        })
        .await
        .unwrap()
        .into_inner();
    c.allow_role_to_publish(t.id, "ops", "a.>").await;
    // An operator deletes the seed: it comes back at the next start while it
    // stays in the configuration.
    c.tenants
        .delete_tenant(DeleteTenantRequest { id: 40 })
        .await
        .unwrap();
    let tenants_before = c
        .tenants
        .list_tenants(ListTenantsRequest {})
        .await
        .unwrap()
        .into_inner();
    let policies_before = c
        .policies
        .list_policies(ListPoliciesRequest { tenant_id: t.id })
        .await
        .unwrap()
        .into_inner();
    let epoch_before = node.dp.last().epoch();
    drop((c, ch));
    node.stop().await;

    // tenants.toml changes are not imported again.
    std::fs::write(
        dir.path().join("tenants.toml"),
        TENANTS_TOML
            .replace("HASH", &sha256_hex("abt_other"))
            .replace("id = 1\nname = \"default\"", "id = 9\nname = \"late\""),
    )
    .unwrap();
    let node = start(dir.path(), &pki, |cfg| {
        cfg.seed_tenants = vec![seed.clone()];
    })
    .await;
    assert!(!node.token_created, "the admin credential is made once");
    assert_eq!(node.token, token);
    assert!(
        node.first.epoch() > epoch_before,
        "epochs increase across restarts"
    );
    assert!(node.first.authenticate("abt_bootstrap", 0).is_ok());
    assert!(node.first.authenticate("abt_other", 0).is_err());
    assert!(node.first.tenant(TenantId(9)).is_none());
    assert!(
        node.first.tenant(TenantId(40)).is_some(),
        "the seed is back"
    );
    let now = now_unix();
    assert!(
        node.first.authenticate(&issued.token, now).is_ok(),
        "signing keys persist"
    );

    let ch = channel(&node, &pki).await;
    let mut c = clients(&ch, &Bearer::new(&token));
    let tenants_after = c
        .tenants
        .list_tenants(ListTenantsRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut expected = tenants_before.tenants.clone();
    expected.push(
        c.tenants
            .get_tenant(GetTenantRequest {
                tenant: Some(TenantRef {
                    id: 40,
                    name: String::new(),
                }),
            })
            .await
            .unwrap()
            .into_inner(),
    );
    expected.sort_by_key(|t| t.id);
    assert_eq!(tenants_after.tenants, expected);
    let policies_after = c
        .policies
        .list_policies(ListPoliciesRequest { tenant_id: t.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(policies_after, policies_before);
    drop((c, ch));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_policy_fails_closed_until_removed() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    let node = start(dir.path(), &pki, |_| {}).await;
    let token = node.token.clone();
    let ch = channel(&node, &pki).await;
    let mut c = clients(&ch, &Bearer::new(&token));
    let t = c.create_tenant("acme").await;
    let policy = c.allow_role_to_publish(t.id, "ops", "a.>").await;
    drop((c, ch));
    node.stop().await;

    // Damage the stored policy through redb directly: valid protobuf, an
    // invalid pattern (as a buggy or hostile writer could leave it).
    {
        let db = redb::Database::create(dir.path().join("control.redb")).unwrap();
        let table = TableDefinition::<u64, &[u8]>::new("policies");
        let txn = db.begin_read().unwrap();
        let current = txn
            .open_table(table)
            .unwrap()
            .get(policy.id)
            .unwrap()
            .unwrap()
            .value()
            .to_vec();
        drop(txn);
        // StoredPolicy { policy: Policy } is field 1: re-encode with a bad pattern.
        let mut bad = policy.clone();
        bad.publish = Some(SubjectRules {
            allow: vec!["a..b".into()],
            deny: vec![],
        });
        let mut bytes = Vec::new();
        prost::encoding::message::encode(1, &bad, &mut bytes);
        assert_ne!(bytes, current);
        let txn = db.begin_write().unwrap();
        txn.open_table(table)
            .unwrap()
            .insert(policy.id, bytes.as_slice())
            .unwrap();
        txn.commit().unwrap();
    }

    let node = start(dir.path(), &pki, |_| {}).await;
    assert!(!node.first.accepting(), "fail closed");
    assert!(
        node.first
            .reason()
            .unwrap()
            .contains(&format!("policy {}", policy.id))
    );
    let ready = node.handle.readiness();
    assert!(!ready.accepting);
    let ch = channel(&node, &pki).await;
    let mut health = HealthClient::new(ch.clone());
    let check = HealthCheckRequest {
        service: String::new(),
    };
    assert_eq!(
        health
            .check(check.clone())
            .await
            .unwrap()
            .into_inner()
            .status(),
        ServingStatus::NotServing
    );
    let mut c = clients(&ch, &Bearer::new(&token));
    let status = c
        .node
        .get_status(GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!status.accepting);
    assert!(status.reason.contains("policy"), "{}", status.reason);

    // Other changes are durable but the node stays closed until the bad
    // record goes.
    c.tenants
        .create_tenant(CreateTenantRequest {
            name: "other".into(),
            quotas: None,
            placement: String::new(),
            allowed_origins: Vec::new(),
        })
        .await
        .unwrap();
    assert!(!node.dp.last().accepting());
    c.policies
        .delete_policy(DeletePolicyRequest { id: policy.id })
        .await
        .unwrap();
    assert!(node.dp.last().accepting());
    assert!(node.dp.last().tenant(TenantId(t.id)).is_some());
    let status = c
        .node
        .get_status(GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(status.accepting && status.reason.is_empty());
    // The health watcher follows readiness asynchronously: watch for it,
    // bounded so a missed update fails rather than hangs.
    let mut updates = health.watch(check.clone()).await.unwrap().into_inner();
    let serving = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        while let Some(update) = updates.message().await.unwrap() {
            if update.status() == ServingStatus::Serving {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(serving, Ok(true), "health follows readiness");
    assert_eq!(node.handle.metrics().snapshots_refusing, 2);
    drop((c, ch, health));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_from_a_newer_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    start(dir.path(), &pki, |_| {}).await.stop().await;
    {
        let db = redb::Database::create(dir.path().join("control.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(TableDefinition::<&str, u64>::new("meta"))
            .unwrap()
            .insert("schema_version", 1000)
            .unwrap();
        txn.commit().unwrap();
    }
    let mut config = ControlPlaneConfig::new(dir.path(), pki.server.clone());
    config.listen = "127.0.0.1:0".parse().unwrap();
    let err = ControlPlane::open(config).unwrap_err();
    assert!(
        matches!(
            err,
            ControlPlaneError::Store(StoreError::SchemaTooNew { found: 1000, .. })
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_requires_an_operator_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    let node = start(dir.path(), &pki, |cfg| {
        cfg.client_ca = Some(pki.ca_path.clone());
    })
    .await;
    // Without a client certificate the handshake (or the first call) fails.
    let anonymous = match connect(node.addr, tls(&pki)).await {
        Err(_) => true,
        Ok(ch) => clients(&ch, &Bearer::new(&node.token))
            .tenants
            .list_tenants(ListTenantsRequest {})
            .await
            .is_err(),
    };
    assert!(
        anonymous,
        "a client without a certificate must not get through"
    );
    let ch = connect(node.addr, tls(&pki).identity(identity(&pki)))
        .await
        .unwrap();
    let mut c = clients(&ch, &Bearer::new(&node.token));
    c.tenants.list_tenants(ListTenantsRequest {}).await.unwrap();
    // The certificate does not replace the admin token.
    let mut no_token = clients(&ch, &Bearer(None));
    assert_eq!(
        no_token
            .tenants
            .list_tenants(ListTenantsRequest {})
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    drop((c, no_token, ch));
    node.stop().await;
}
