//! Placement on a real data plane: the steering program (when this process
//! may load it) and tenants' home shards, over real sockets.
//!
//! Tests that need the program attached check `steering_status().active`
//! and print `SKIPPED: ...` when it is not (no CAP_BPF); everything else
//! runs either way.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod common;

use std::sync::Arc;

use arqonbus_core::limits::Limits;
use arqonbus_core::placement::{SteeringMode, TenantPlacement};
use arqonbus_dataplane::{DataPlane, DataPlaneConfig, StartError};
use arqonbus_proto::v1::{self, frame::Kind};
use bytes::Bytes;
use common::{RawClient, TOKEN_A, TOKEN_B};

fn config(a: TenantPlacement, b: TenantPlacement) -> DataPlaneConfig {
    let mut cfg = common::config();
    cfg.config = Arc::new(common::snapshot_placed(1, Limits::default(), a, b));
    cfg
}

fn moved(dp: &DataPlane) -> (u64, u64) {
    dp.status()
        .unwrap()
        .iter()
        .fold((0, 0), |(i, o), s| (i + s.moved_in, o + s.moved_out))
}

#[test]
fn a_home_tenants_connections_meet_on_one_shard_and_pipelined_frames_survive_the_move() {
    let dp = common::start(&config(TenantPlacement::Home, TenantPlacement::Spread));
    let addr = dp.local_addr();
    // Connect and subscribe in one write, before the Welcome: the subscribe
    // is processed on the home shard after the move.
    let mut subs = Vec::new();
    for _ in 0..12 {
        let mut c = RawClient::open(addr);
        let mut bytes = Vec::new();
        let connect = Kind::Connect(v1::Connect {
            protocol_version: 1,
            credential: TOKEN_A.into(),
            client_name: "pipelined".into(),
            ..Default::default()
        });
        let subscribe = Kind::Subscribe(v1::Subscribe {
            sid: 1,
            pattern: Bytes::from_static(b"meet.>"),
            queue_group: Bytes::new(),
        });
        arqonbus_proto::codec::encode(&connect, &mut bytes).unwrap();
        arqonbus_proto::codec::encode(&subscribe, &mut bytes).unwrap();
        arqonbus_proto::codec::encode(&Kind::Ping(v1::Ping {}), &mut bytes).unwrap();
        c.send_raw(&bytes);
        match c.next() {
            Some(Kind::Welcome(w)) => c.welcome = Some(w),
            other => panic!("expected Welcome, got {other:?}"),
        }
        // The Pong comes after the subscription is in effect everywhere.
        assert!(matches!(c.next(), Some(Kind::Pong(_))));
        subs.push(c);
    }
    let home = subs[0].shard();
    assert!(
        subs.iter().all(|c| c.shard() == home),
        "every connection of a home tenant is served by shard {home}: {:?}",
        subs.iter().map(RawClient::shard).collect::<Vec<_>>()
    );
    let (moved_in, moved_out) = moved(&dp);
    assert_eq!(moved_in, moved_out, "every hand-over arrived");
    if dp.steering_status().active {
        // Balance sends every other connection to the other shard.
        assert!(moved_in >= 5, "connections were moved: {moved_in}");
    }
    // Session ids are the home shard's, unique.
    let mut ids: Vec<u64> = subs
        .iter()
        .map(|c| c.welcome.as_ref().unwrap().session_id)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), subs.len());

    let mut publisher = RawClient::connect(addr, TOKEN_A);
    assert_eq!(publisher.shard(), home);
    publisher.publish("meet.here", b"hello");
    for s in &mut subs {
        match s.next() {
            Some(Kind::Message(m)) => {
                assert_eq!(&m.subject[..], b"meet.here");
                assert_eq!(&m.payload[..], b"hello");
            }
            other => panic!("expected the message, got {other:?}"),
        }
    }
    // Nothing crossed a shard: no message copy went over a ring.
    let stats = dp.total_stats().unwrap();
    assert_eq!(
        stats.remote_out, 0,
        "a home tenant's traffic stays on one core"
    );
    drop(subs);
    dp.shutdown();
}

#[test]
fn two_home_tenants_are_spread_over_the_shards() {
    let dp = common::start(&config(TenantPlacement::Home, TenantPlacement::Home));
    let addr = dp.local_addr();
    let a: Vec<_> = (0..4).map(|_| RawClient::connect(addr, TOKEN_A)).collect();
    let b: Vec<_> = (0..4).map(|_| RawClient::connect(addr, TOKEN_B)).collect();
    assert!(a.iter().all(|c| c.shard() == a[0].shard()));
    assert!(b.iter().all(|c| c.shard() == b[0].shard()));
    // The second tenant's home is chosen least-loaded: the other shard.
    assert_ne!(a[0].shard(), b[0].shard());
    dp.shutdown();
}

#[test]
fn a_pinned_tenant_lives_on_its_shard_and_a_spread_one_stays_where_it_lands() {
    let pinned = TenantPlacement::Pinned(arqonbus_core::ShardId(1));
    let dp = common::start(&config(pinned, TenantPlacement::Spread));
    let addr = dp.local_addr();
    for _ in 0..6 {
        assert_eq!(RawClient::connect(addr, TOKEN_A).shard(), 1);
    }
    let (_, before) = moved(&dp);
    let spread: Vec<_> = (0..6).map(|_| RawClient::connect(addr, TOKEN_B)).collect();
    assert_eq!(moved(&dp).1, before, "spread connections are never moved");
    if dp.steering_status().active {
        // Balance alone puts them on both shards.
        assert!(spread.iter().any(|c| c.shard() == 0));
        assert!(spread.iter().any(|c| c.shard() == 1));
    }
    dp.shutdown();
}

#[test]
fn balance_places_connections_evenly_and_drain_steers_new_ones_away() {
    let mut cfg = config(TenantPlacement::Spread, TenantPlacement::Spread);
    cfg.steering.mode = SteeringMode::Balance;
    let dp = common::start(&cfg);
    if !dp.steering_status().active {
        eprintln!(
            "SKIPPED: steering program not attached ({:?}); needs CAP_BPF (run as root)",
            dp.steering_status().fallback_reason
        );
        return;
    }
    let addr = dp.local_addr();
    let clients: Vec<_> = (0..40).map(|_| RawClient::connect(addr, TOKEN_B)).collect();
    let on0 = clients.iter().filter(|c| c.shard() == 0).count();
    assert_eq!(on0, 20, "balance: 20 of 40 on each shard");

    dp.drain(1).unwrap();
    // Shard 1's listener stays open, but new connections go to shard 0.
    let during: Vec<_> = (0..20).map(|_| RawClient::connect(addr, TOKEN_B)).collect();
    assert!(during.iter().all(|c| c.shard() == 0));
    let st = dp.status().unwrap();
    assert!(st[1].draining);
    drop(during);
    dp.resume(1).unwrap();
    // Back in service: the emptier shard gets the next connections.
    let after = RawClient::connect(addr, TOKEN_B);
    assert_eq!(after.shard(), 1);
    let counters = dp.steering_counters();
    assert!(counters.selected >= 61, "{counters:?}");
    assert_eq!(counters.map_errors, 0);
    drop((clients, after));

    // Connections still authenticating when their shard is drained finish
    // and move on, none refused: open them on both shards, drain one, then
    // send their Connect.
    let pending: Vec<_> = (0..6).map(|_| RawClient::open(addr)).collect();
    // Balance has put half of them on each shard once their SYNs are in.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while dp
        .status()
        .unwrap()
        .iter()
        .map(|s| s.connections)
        .sum::<u64>()
        < 6
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the shards never accepted them"
        );
        std::thread::yield_now();
    }
    dp.drain(0).unwrap();
    for mut c in pending {
        c.send(&Kind::Connect(v1::Connect {
            protocol_version: 1,
            credential: TOKEN_B.into(),
            client_name: "mid-handshake".into(),
            ..Default::default()
        }));
        match c.next() {
            Some(Kind::Welcome(w)) => assert_eq!(w.shard, 1, "moved off the drained shard"),
            other => panic!("expected Welcome, got {other:?}"),
        }
    }
    dp.resume(0).unwrap();
    dp.shutdown();
}

/// Drops this thread's effective capabilities that allow loading BPF
/// programs, so `DataPlane::start` on this thread meets what an unprivileged
/// node meets.
fn drop_bpf_capabilities() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget/capset with a version-3 header and two data words, as
    // the kernel's ABI defines them; both structs are fully initialised.
    unsafe {
        assert_eq!(
            libc::syscall(libc::SYS_capget, &raw mut header, data.as_mut_ptr()),
            0
        );
        for cap in [
            21u32, /* SYS_ADMIN */
            39,    /* BPF */
            38,    /* PERFMON */
        ] {
            data[(cap / 32) as usize].effective &= !(1 << (cap % 32));
        }
        assert_eq!(
            libc::syscall(libc::SYS_capset, &raw mut header, data.as_ptr()),
            0
        );
    }
}

#[test]
fn without_the_capability_the_node_falls_back_to_the_kernel_hash_or_refuses_if_required() {
    std::thread::spawn(|| {
        drop_bpf_capabilities();
        let cfg = config(TenantPlacement::Home, TenantPlacement::Spread);
        let dp = common::start(&cfg);
        let status = dp.steering_status();
        assert!(!status.active);
        let reason = status.fallback_reason.expect("the reason is kept");
        assert!(!reason.is_empty());
        assert!(!dp.steering_counters().active);
        // Placement after authentication works without the program.
        let addr = dp.local_addr();
        let a: Vec<_> = (0..6).map(|_| RawClient::connect(addr, TOKEN_A)).collect();
        assert!(a.iter().all(|c| c.shard() == a[0].shard()));
        // Drain falls back to closing the listener; resume re-opens it.
        dp.drain(0).unwrap();
        dp.resume(0).unwrap();
        drop(a);
        dp.shutdown();

        let mut required = config(TenantPlacement::Home, TenantPlacement::Spread);
        required.steering_required = true;
        match DataPlane::start(&required) {
            Err(StartError::Steering(why)) => assert!(!why.is_empty()),
            other => panic!("expected a steering start-up error, got {other:?}"),
        }
    })
    .join()
    .unwrap();
}

#[test]
fn a_shard_that_runs_hot_hands_a_whole_tenant_to_the_coldest_shard() {
    let mut cfg = config(TenantPlacement::Home, TenantPlacement::Spread);
    cfg.rehome = Some(arqonbus_dataplane::Rehoming {
        every: std::time::Duration::from_millis(50),
        min_gap: 8,
        window: std::time::Duration::from_millis(100),
    });
    let dp = common::start(&cfg);
    let addr = dp.local_addr();
    // Tenant "a" (home) settles on one shard with 4 connections.
    let mut a: Vec<_> = (0..4).map(|_| RawClient::connect(addr, TOKEN_A)).collect();
    let old_home = a[0].shard();
    assert!(a.iter().all(|c| c.shard() == old_home));
    // Tenant "b" is then pinned to the same shard with 16 connections: it
    // runs hot (20 against 0), and only "a" can move.
    let pinned = TenantPlacement::Pinned(arqonbus_core::ShardId(old_home as u16));
    dp.apply(&Arc::new(common::snapshot_placed(
        2,
        Limits::default(),
        TenantPlacement::Home,
        pinned,
    )))
    .unwrap();
    let b: Vec<_> = (0..16).map(|_| RawClient::connect(addr, TOKEN_B)).collect();
    assert!(b.iter().all(|c| c.shard() == old_home));
    // Every connection of "a" is told to move, then closed.
    for c in &mut a {
        match c.next() {
            Some(Kind::Drain(d)) => assert_eq!(d.reason, "tenant moved to another shard"),
            other => panic!("expected a Drain notice, got {other:?}"),
        }
        assert!(matches!(c.next(), Some(Kind::Error(_)) | None));
    }
    // Reconnecting, "a" meets again on its new home.
    let again: Vec<_> = (0..4).map(|_| RawClient::connect(addr, TOKEN_A)).collect();
    let new_home = again[0].shard();
    assert_ne!(new_home, old_home);
    assert!(again.iter().all(|c| c.shard() == new_home));
    assert_eq!(dp.steering_counters().rehomed, 1);
    drop((b, again));
    dp.shutdown();
}
