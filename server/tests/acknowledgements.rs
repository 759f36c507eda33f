//! Control-plane acknowledgements are true, on the real server: a change
//! that one shard has not applied fails with UNAVAILABLE naming that shard
//! (the change is stored), and the retry of the same request answers OK —
//! with the first answer, no duplicate record — once the shard has applied
//! it. The late shard is a real shard whose thread is held still
//! (`DataPlane::hold_shard`, a test-only knob), with a 2 s apply deadline.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod common;

use std::time::Duration;

use arqonbus::testing::TestServer;
use arqonbus_client::{ConnectOptions, Event};
use arqonbus_proto::control::connection_service_client::ConnectionServiceClient;
use arqonbus_proto::control::credential_service_client::CredentialServiceClient;
use arqonbus_proto::control::principal_service_client::PrincipalServiceClient;
use arqonbus_proto::control::tenant_service_client::TenantServiceClient;
use arqonbus_proto::control::{
    CreatePrincipalRequest, CreateTenantRequest, CredentialKind, IssueCredentialRequest,
    ListConnectionsRequest, ListCredentialsRequest, ListTenantsRequest, RevokeCredentialRequest,
};
use common::{control_channel, within};
use futures_util::StreamExt as _;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_a_shard_did_not_apply_fails_naming_it_and_its_retry_converges() {
    let s = TestServer::start();
    let admin = std::fs::read_to_string(s.admin_token_path()).unwrap();
    let control = s
        .control_url()
        .trim_start_matches("https://")
        .parse()
        .unwrap();
    let (channel, auth) = control_channel(control, &s.ca_path(), &admin).await;
    let mut tenants = TenantServiceClient::with_interceptor(channel.clone(), auth.clone());
    let mut principals = PrincipalServiceClient::with_interceptor(channel.clone(), auth.clone());
    let mut credentials = CredentialServiceClient::with_interceptor(channel.clone(), auth.clone());
    let mut connections = ConnectionServiceClient::with_interceptor(channel, auth);

    let tenant = tenants
        .create_tenant(CreateTenantRequest {
            name: "acme".into(),
            ..CreateTenantRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    let principal = principals
        .create_principal(CreatePrincipalRequest {
            tenant_id: tenant.id,
            name: "svc".into(),
            ..CreatePrincipalRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    let issued = credentials
        .issue_credential(IssueCredentialRequest {
            principal_id: principal.id,
            kind: CredentialKind::Bearer.into(),
            ttl_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let credential = issued.credential.unwrap().id;
    let options = ConnectOptions::new()
        .url(s.url())
        .ca_file(s.ca_path())
        .credential(issued.token);
    let session = within("connect", arqonbus_client::Client::connect(options))
        .await
        .unwrap();
    let mut events = session.events();
    let listed = connections
        .list_connections(ListConnectionsRequest {
            tenant_id: tenant.id,
        })
        .await
        .unwrap()
        .into_inner()
        .connections;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let late = u16::try_from(listed[0].shard).unwrap();

    // The session's shard stops answering; the others go on.
    let dataplane = s.server().dataplane();
    dataplane.set_apply_within(Duration::from_secs(2));
    let hold = dataplane.hold_shard(late).unwrap();
    let names_the_shard = |e: &tonic::Status| {
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        assert!(
            e.message().contains(&format!("shard(s) {late} ")),
            "{}",
            e.message()
        );
        assert!(e.message().contains("stored"), "{}", e.message());
    };

    let revoke = || RevokeCredentialRequest { id: credential };
    let err = credentials.revoke_credential(revoke()).await.unwrap_err();
    names_the_shard(&err);
    // Stored all the same.
    let stored = credentials
        .list_credentials(ListCredentialsRequest {
            tenant_id: tenant.id,
            principal_id: principal.id,
        })
        .await
        .unwrap()
        .into_inner()
        .credentials;
    assert!(stored.iter().all(|c| c.revoked), "{stored:?}");
    // A retry while the shard is still late fails the same way.
    let err = credentials.revoke_credential(revoke()).await.unwrap_err();
    names_the_shard(&err);

    let create = CreateTenantRequest {
        name: "late-tenant".into(),
        ..CreateTenantRequest::default()
    };
    let err = tenants.create_tenant(create.clone()).await.unwrap_err();
    names_the_shard(&err);
    let err = tenants.create_tenant(create.clone()).await.unwrap_err();
    names_the_shard(&err);

    // The shard catches up: the retries answer OK, with the first answers.
    drop(hold);
    let revoked = credentials
        .revoke_credential(revoke())
        .await
        .unwrap()
        .into_inner();
    assert!(revoked.credential.unwrap().revoked);
    let created = tenants.create_tenant(create.clone()).await.unwrap();
    assert_eq!(created.into_inner().name, "late-tenant");
    let all = tenants
        .list_tenants(ListTenantsRequest {})
        .await
        .unwrap()
        .into_inner()
        .tenants;
    let named: Vec<_> = all.iter().filter(|t| t.name == "late-tenant").collect();
    assert_eq!(named.len(), 1, "no duplicate: {all:?}");
    // The same request once more is a new request: the name is taken.
    let again = tenants.create_tenant(create).await.unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists, "{again:?}");

    // The revoked session on the late shard is closed.
    loop {
        match within("the revoked session closes", events.next()).await {
            Some(Event::Disconnected { reason }) => {
                let reason = reason.to_string().to_lowercase();
                assert!(reason.contains("revoked"), "{reason}");
                break;
            }
            Some(_) => {}
            None => panic!("events ended before the session was closed"),
        }
    }
}
