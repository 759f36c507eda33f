//! Steering and tenant placement through the control API: a real tonic
//! client over TLS against the control plane on a real redb store, with the
//! in-memory data plane double (two shards, no steering program).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod common;

use arqonbus_core::placement::{SteeringMode, TenantPlacement};
use arqonbus_core::{ShardId, TenantId};
use arqonbus_proto::control::node_service_client::NodeServiceClient;
use arqonbus_proto::control::*;
use common::*;
use tonic::Code;

fn rule(prefix: &str, shard: u32) -> AffinityRule {
    AffinityRule {
        prefix: prefix.into(),
        shard,
    }
}

fn set(mode: &str, affinity: Vec<AffinityRule>) -> SetSteeringRequest {
    SetSteeringRequest {
        mode: mode.into(),
        affinity,
    }
}

fn create(name: &str, placement: &str) -> CreateTenantRequest {
    CreateTenantRequest {
        name: name.into(),
        quotas: None,
        placement: placement.into(),
        allowed_origins: Vec::new(),
    }
}

fn update(id: u64, placement: &str) -> UpdateTenantRequest {
    UpdateTenantRequest {
        id,
        expected_version: 0,
        quotas: None,
        placement: placement.into(),
        allowed_origins: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steering_round_trip_reaches_the_snapshot_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    let node = start(dir.path(), &pki, |_| {}).await;
    let ch = channel(&node, &pki).await;
    let mut c = clients(&ch, &Bearer::new(&node.token));

    // Nothing set yet: the data plane's configured default, as it reports it.
    assert!(node.first.steering().is_none());
    let before = c
        .node
        .get_steering(GetSteeringRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        before,
        Steering {
            mode: "balance".into(),
            affinity: vec![],
            active: false,
            fallback_reason: FAKE_FALLBACK.into(),
            source: "config".into(),
        }
    );

    let set_to = c
        .node
        .set_steering(set(
            "affinity",
            vec![
                rule("10.1.2.3/8", 1),
                rule("fd00::/8", 0),
                rule("192.0.2.7", 1),
            ],
        ))
        .await
        .unwrap()
        .into_inner();
    // Canonical prefixes, the source, and what the data plane says of it.
    let want = Steering {
        mode: "affinity".into(),
        affinity: vec![
            rule("10.0.0.0/8", 1),
            rule("fd00::/8", 0),
            rule("192.0.2.7/32", 1),
        ],
        active: false,
        fallback_reason: FAKE_FALLBACK.into(),
        source: "api".into(),
    };
    assert_eq!(set_to, want);
    // The call answered after the data plane got a snapshot carrying it.
    let pushed = node.dp.last().steering().cloned().expect("steering pushed");
    assert_eq!(pushed.mode, SteeringMode::Affinity);
    assert_eq!(
        pushed.affinity_for("10.200.0.1".parse().unwrap()),
        Some(ShardId(1))
    );
    assert_eq!(
        pushed.affinity_for("fd00::1".parse().unwrap()),
        Some(ShardId(0))
    );
    assert_eq!(
        c.node
            .get_steering(GetSteeringRequest {})
            .await
            .unwrap()
            .into_inner(),
        want
    );

    // Node status carries the steering and each shard's moves.
    let status = c
        .node
        .get_status(GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.steering.as_ref(), Some(&want));
    let moves: Vec<(u64, u64)> = status
        .shards
        .iter()
        .map(|s| (s.moved_in, s.moved_out))
        .collect();
    assert_eq!(moves, [(0, 1), (10, 11)]);

    // Setting again replaces the rules (none now).
    let hash = c
        .node
        .set_steering(set("hash", vec![]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((hash.mode.as_str(), hash.affinity.len()), ("hash", 0));
    let cpu = c
        .node
        .set_steering(set("cpu", vec![rule("10.0.0.0/8", 0)]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cpu.mode, "cpu");
    drop((c, ch));
    node.stop().await;

    // After a restart the first snapshot carries it, so the data plane
    // starts with it.
    let node = start(dir.path(), &pki, |_| {}).await;
    let first = node.first.steering().cloned().expect("stored steering");
    assert_eq!(first.mode, SteeringMode::Cpu);
    assert_eq!(first.affinity.len(), 1);
    let ch = channel(&node, &pki).await;
    let mut c = clients(&ch, &Bearer::new(&node.token));
    let after = c
        .node
        .get_steering(GetSteeringRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((after.mode.as_str(), after.source.as_str()), ("cpu", "api"));
    assert_eq!(after.affinity, [rule("10.0.0.0/8", 0)]);
    drop((c, ch));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_steering_is_refused_naming_the_field_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    let node = start(dir.path(), &pki, |_| {}).await;
    let ch = channel(&node, &pki).await;
    let mut c = clients(&ch, &Bearer::new(&node.token));
    c.node
        .set_steering(set("affinity", vec![rule("10.0.0.0/8", 1)]))
        .await
        .unwrap();
    let published = node.dp.applied_count();

    let too_many: Vec<AffinityRule> = (0..=4096)
        .map(|i| rule(&format!("fd00::{i:x}"), 0))
        .collect();
    for (request, needle) in [
        (
            set("round-robin", vec![]),
            "mode: unknown mode \"round-robin\"",
        ),
        (set("", vec![]), "mode: unknown mode \"\""),
        (
            set(
                "affinity",
                vec![rule("10.0.0.0/8", 0), rule("10.0.0.0/33", 1)],
            ),
            "affinity[1].prefix: \"10.0.0.0/33\" is not an address/length prefix",
        ),
        (
            set("affinity", vec![rule("gateway", 0)]),
            "affinity[0].prefix",
        ),
        (
            set("affinity", vec![rule("10.0.0.0/8", 2)]),
            "affinity[0].shard: shard 2 does not exist (this node has 2)",
        ),
        (
            set("balance", vec![rule("10.0.0.0/8", 70_000)]),
            "affinity[0].shard",
        ),
        (
            set(
                "affinity",
                vec![rule("10.0.0.0/8", 0), rule("10.0.0.1/8", 1)],
            ),
            "affinity[1].prefix: 10.0.0.0/8 is already affinity[0]",
        ),
        (
            set("affinity", too_many),
            "affinity: 4097 rules exceed the limit of 4096",
        ),
    ] {
        assert_status(
            c.node.set_steering(request).await,
            Code::InvalidArgument,
            needle,
        );
    }
    // Nothing stored, nothing pushed.
    assert_eq!(node.dp.applied_count(), published);
    let now = c
        .node
        .get_steering(GetSteeringRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(now.mode, "affinity");
    assert_eq!(now.affinity, [rule("10.0.0.0/8", 1)]);
    // Exactly the limit is fine.
    let full: Vec<AffinityRule> = (0..4096)
        .map(|i| rule(&format!("fd00::{i:x}"), i % 2))
        .collect();
    let s = c
        .node
        .set_steering(set("affinity", full))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.affinity.len(), 4096);
    drop((c, ch));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steering_needs_the_admin_credential() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    let node = start(dir.path(), &pki, |_| {}).await;
    let ch = channel(&node, &pki).await;
    let published = node.dp.applied_count();
    for auth in [Bearer(None), Bearer::new("abt_not-the-admin-token")] {
        let mut client = NodeServiceClient::with_interceptor(ch.clone(), auth);
        assert_status(
            client.set_steering(set("hash", vec![])).await,
            Code::Unauthenticated,
            "",
        );
        assert_status(
            client.get_steering(GetSteeringRequest {}).await,
            Code::Unauthenticated,
            "",
        );
    }
    assert_eq!(node.dp.applied_count(), published, "nothing was pushed");
    let mut c = clients(&ch, &Bearer::new(&node.token));
    let s = c
        .node
        .get_steering(GetSteeringRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((s.mode.as_str(), s.source.as_str()), ("balance", "config"));
    drop((c, ch));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_placement_is_stored_validated_and_pushed() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    let node = start(dir.path(), &pki, |_| {}).await;
    let ch = channel(&node, &pki).await;
    let mut c = clients(&ch, &Bearer::new(&node.token));
    let placement_of = |id: u64| node.dp.last().tenant(TenantId(id)).unwrap().placement;

    // Empty means home, and reads back as "home".
    let home = c.create_tenant("small").await;
    assert_eq!(home.placement, "home");
    assert_eq!(placement_of(home.id), TenantPlacement::Home);
    let spread = c
        .tenants
        .create_tenant(create("large", "spread"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(spread.placement, "spread");
    assert_eq!(placement_of(spread.id), TenantPlacement::Spread);
    let pinned = c
        .tenants
        .create_tenant(create("gateway", "shard:1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pinned.placement, "shard:1");
    assert_eq!(placement_of(pinned.id), TenantPlacement::Pinned(ShardId(1)));

    for (placement, needle) in [
        (
            "nearby",
            "placement: unknown placement \"nearby\" (home, spread or shard:N)",
        ),
        ("shard:x", "placement: unknown placement \"shard:x\""),
        ("Home", "placement: unknown placement"),
        (
            "shard:2",
            "placement: shard 2 does not exist (this node has 2)",
        ),
        ("shard:70000", "placement: unknown placement"),
    ] {
        assert_status(
            c.tenants.create_tenant(create("bad", placement)).await,
            Code::InvalidArgument,
            needle,
        );
        assert_status(
            c.tenants.update_tenant(update(home.id, placement)).await,
            Code::InvalidArgument,
            needle,
        );
    }
    assert_status(
        c.tenants
            .get_tenant(GetTenantRequest {
                tenant: Some(TenantRef {
                    id: 0,
                    name: "bad".into(),
                }),
            })
            .await,
        Code::NotFound,
        "bad",
    );

    // Update: a placement changes it; empty keeps it.
    let moved = c
        .tenants
        .update_tenant(update(home.id, "shard:0"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((moved.placement.as_str(), moved.version), ("shard:0", 2));
    assert_eq!(placement_of(home.id), TenantPlacement::Pinned(ShardId(0)));
    let quotas = Quotas {
        max_connections: 3,
        ..Quotas::default()
    };
    let kept = c
        .tenants
        .update_tenant(UpdateTenantRequest {
            quotas: Some(quotas),
            ..update(home.id, "")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((kept.placement.as_str(), kept.version), ("shard:0", 3));
    assert_eq!(kept.quotas, Some(quotas));
    assert_eq!(placement_of(home.id), TenantPlacement::Pinned(ShardId(0)));

    // Get and list show it.
    let got = c
        .tenants
        .get_tenant(GetTenantRequest {
            tenant: Some(TenantRef {
                id: spread.id,
                name: String::new(),
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, spread);
    let listed: Vec<String> = c
        .tenants
        .list_tenants(ListTenantsRequest {})
        .await
        .unwrap()
        .into_inner()
        .tenants
        .into_iter()
        .map(|t| t.placement)
        .collect();
    assert_eq!(listed, ["shard:0", "spread", "shard:1"]);
    drop((c, ch));
    node.stop().await;

    // Stored: the first snapshot after a restart carries every placement.
    let node = start(dir.path(), &pki, |_| {}).await;
    let entry = |id: u64| node.first.tenant(TenantId(id)).unwrap().placement;
    assert_eq!(entry(home.id), TenantPlacement::Pinned(ShardId(0)));
    assert_eq!(entry(spread.id), TenantPlacement::Spread);
    assert_eq!(entry(pinned.id), TenantPlacement::Pinned(ShardId(1)));
    node.stop().await;
}

#[tokio::test]
async fn a_node_configured_spread_creates_tenants_spread_unless_told_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    let node = start(dir.path(), &pki, |c| {
        c.default_placement = TenantPlacement::Spread;
    })
    .await;
    let ch = channel(&node, &pki).await;
    let mut c = clients(&ch, &Bearer::new(&node.token));
    let plain = c.create_tenant("plain").await;
    assert_eq!(plain.placement, "spread");
    let home = c
        .tenants
        .create_tenant(create("small", "home"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(home.placement, "home");
    let snap = node.dp.last();
    assert_eq!(
        snap.tenant(TenantId(plain.id)).unwrap().placement,
        TenantPlacement::Spread
    );
    assert_eq!(
        snap.tenant(TenantId(home.id)).unwrap().placement,
        TenantPlacement::Home
    );
}
