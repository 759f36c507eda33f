//! The control API through a real gRPC client against the real server and
//! data plane: a rate limit set over the API throttles one tenant's flood
//! while another tenant's every message arrives, and kill -9 of the
//! `arqonbus` process during a burst of writes loses no acknowledged write.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod common;

use std::collections::BTreeMap;

use arqonbus::testing::TestServer;
use arqonbus_client::{Client, ConnectOptions};
use arqonbus_proto::control::credential_service_client::CredentialServiceClient;
use arqonbus_proto::control::principal_service_client::PrincipalServiceClient;
use arqonbus_proto::control::tenant_service_client::TenantServiceClient;
use arqonbus_proto::control::{
    CreatePrincipalRequest, CreateTenantRequest, CredentialKind, IssueCredentialRequest,
    ListTenantsRequest, Quotas,
};
use common::{Authed, Node, control_channel, within};
use futures_util::StreamExt as _;

/// Creates tenant `name` with `quotas`, a principal in it and a bearer
/// credential; returns the token.
async fn tenant_with_token(
    tenants: &mut TenantServiceClient<Authed>,
    principals: &mut PrincipalServiceClient<Authed>,
    credentials: &mut CredentialServiceClient<Authed>,
    name: &str,
    quotas: Quotas,
) -> String {
    let tenant = tenants
        .create_tenant(CreateTenantRequest {
            name: name.into(),
            quotas: Some(quotas),
            ..CreateTenantRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    let principal = principals
        .create_principal(CreatePrincipalRequest {
            tenant_id: tenant.id,
            name: format!("{name}-svc"),
            roles: Vec::new(),
            quotas: None,
        })
        .await
        .unwrap()
        .into_inner();
    credentials
        .issue_credential(IssueCredentialRequest {
            principal_id: principal.id,
            kind: CredentialKind::Bearer.into(),
            ttl_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_set_over_the_api_throttles_one_tenant_while_another_flows() {
    const FLOOD: u32 = 3_000;
    const CALM: u32 = 500;
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
    let mut credentials = CredentialServiceClient::with_interceptor(channel, auth);
    let limited = Quotas {
        messages_per_second: 2_000,
        ..Quotas::default()
    };
    let flood_token = tenant_with_token(
        &mut tenants,
        &mut principals,
        &mut credentials,
        "flood",
        limited,
    )
    .await;
    let calm_token = tenant_with_token(
        &mut tenants,
        &mut principals,
        &mut credentials,
        "calm",
        Quotas::default(),
    )
    .await;
    let options = |token: &str| {
        ConnectOptions::new()
            .url(s.url())
            .ca_file(s.ca_path())
            .credential(token.to_owned())
    };
    let connect = |token: &str| within("connect", Client::connect(options(token)));
    let flood_sub = connect(&flood_token).await.unwrap();
    let calm_sub = connect(&calm_token).await.unwrap();
    let mut flood_msgs = within("subscribe", flood_sub.subscribe("orders"))
        .await
        .unwrap();
    let mut calm_msgs = within("subscribe", calm_sub.subscribe("orders"))
        .await
        .unwrap();
    let flooder = connect(&flood_token).await.unwrap();
    let calm = connect(&calm_token).await.unwrap();

    // The flood is written without waiting; the calm tenant publishes beside it.
    let flood = tokio::spawn(async move {
        for i in 0..FLOOD {
            flooder
                .publish("orders", i.to_be_bytes().to_vec())
                .await
                .unwrap();
        }
        within("flood flush", flooder.flush()).await.unwrap();
        flooder
    });
    for i in 0..CALM {
        calm.publish("orders", i.to_be_bytes().to_vec())
            .await
            .unwrap();
    }
    within("calm flush", calm.flush()).await.unwrap();
    for i in 0..CALM {
        let m = within("a calm message", calm_msgs.next()).await.unwrap();
        assert_eq!(&m.payload[..], &i.to_be_bytes(), "in order, none lost");
    }
    // The flood is slowed, not dropped: every message arrives.
    let _flooder = within("the flood", flood).await.unwrap();
    for i in 0..FLOOD {
        let m = within("a flood message", flood_msgs.next()).await.unwrap();
        assert_eq!(&m.payload[..], &i.to_be_bytes());
    }
    let stats = s.server().dataplane().total_stats().unwrap();
    assert!(
        stats.throttled > 0,
        "the flood was never throttled: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_server_during_a_burst_loses_no_acknowledged_write() {
    /// Acknowledgements to see before the kill.
    const ACKS_BEFORE_KILL: usize = 25;
    /// The writer stops by itself after this many writes.
    const MAX_WRITES: usize = 2_000;
    let mut node = Node::spawn();
    let (channel, auth) = node.control_channel().await;
    let (acks_tx, mut acks_rx) = tokio::sync::mpsc::unbounded_channel();
    let writer = tokio::spawn(async move {
        let mut tenants = TenantServiceClient::with_interceptor(channel, auth);
        for i in 0..MAX_WRITES {
            let name = format!("burst-{i}");
            let request = CreateTenantRequest {
                name: name.clone(),
                quotas: None,
                ..CreateTenantRequest::default()
            };
            match tenants.create_tenant(request).await {
                Ok(t) => {
                    if acks_tx.send((name, t.into_inner().id)).is_err() {
                        return;
                    }
                }
                // The server is gone: nothing more is acknowledged.
                Err(_) => return,
            }
        }
    });
    let mut acked = BTreeMap::new();
    while acked.len() < ACKS_BEFORE_KILL {
        let (name, id) = within("an acknowledgement", acks_rx.recv())
            .await
            .expect("the writer stopped before the kill");
        acked.insert(name, id);
    }
    node.kill_9();
    within("the writer", writer).await.unwrap();
    while let Ok((name, id)) = acks_rx.try_recv() {
        acked.insert(name, id);
    }

    node.restart();
    let (channel, auth) = node.control_channel().await;
    let listed: BTreeMap<String, u64> = TenantServiceClient::with_interceptor(channel, auth)
        .list_tenants(ListTenantsRequest {})
        .await
        .unwrap()
        .into_inner()
        .tenants
        .into_iter()
        .map(|t| (t.name, t.id))
        .collect();
    for (name, id) in &acked {
        assert_eq!(
            listed.get(name),
            Some(id),
            "acknowledged tenant {name} (id {id}) was lost; {} acknowledged",
            acked.len()
        );
    }
    node.signal("-INT");
    assert!(node.exit_status().success());
}
