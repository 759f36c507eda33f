//! The real server, TLS with its generated CA, two shards, driven through the
//! Rust SDK. Synchronisation is the protocol's own barrier (`subscribe` and
//! `flush` return after the server's Pong); timeouts only bound failures.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use arqonbus::testing::{TestServer, tenant};
use arqonbus_client::{
    Client, ConnectOptions, Error, ErrorCode, MessageStatus, ReconnectPolicy, Subscriber,
};
use futures_util::{FutureExt as _, StreamExt as _};
use rand::{Rng as _, SeedableRng as _};

const LIMIT: Duration = Duration::from_secs(20);

fn options(s: &TestServer) -> ConnectOptions {
    ConnectOptions::new()
        .url(s.url())
        .ca_file(s.ca_path())
        .credential_file(s.token_path())
        .name("integration-test")
}

async fn connect(s: &TestServer) -> Client {
    Client::connect(options(s)).await.unwrap()
}

/// A client whose connection landed on `shard` (the kernel picks; retry).
async fn client_on(opts: impl Fn() -> ConnectOptions, shard: u32) -> Client {
    for _ in 0..200 {
        let c = Client::connect(opts()).await.unwrap();
        if c.server_info().shard == shard {
            return c;
        }
        c.close().await;
    }
    panic!("no connection landed on shard {shard}");
}

async fn next(sub: &mut Subscriber) -> arqonbus_client::Message {
    tokio::time::timeout(LIMIT, sub.next())
        .await
        .expect("message within the limit")
        .expect("stream still open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_pub_sub_across_shards_with_the_generated_ca() {
    let s = TestServer::start();
    let subscriber = client_on(|| options(&s), 1).await;
    let publisher = client_on(|| options(&s), 0).await;
    assert_eq!(subscriber.server_info().tenant, "default");

    let mut sub = subscriber.subscribe("orders.>").await.unwrap();
    for i in 0..200u32 {
        publisher
            .publish("orders.eu.created", i.to_be_bytes().to_vec())
            .await
            .unwrap();
    }
    publisher.flush().await.unwrap();
    for i in 0..200u32 {
        let m = next(&mut sub).await;
        assert_eq!(m.subject_str(), "orders.eu.created");
        assert_eq!(&m.payload[..], &i.to_be_bytes());
    }
    let stats = s.stats();
    assert_eq!(stats.tls_failures, 0);
    assert!(stats.remote_out >= 200, "the messages crossed shards");
}

/// A `home` tenant over TLS: connections the steering (or the kernel) put
/// on the other shard are handed over with their TLS session after
/// authentication; the client notices nothing, and the traffic stays on one
/// core.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_home_tenants_tls_connections_meet_on_one_shard() {
    let s = TestServer::start_with(|c| c.steering.default_placement = "home".into());
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(connect(&s).await);
    }
    let home = clients[0].server_info().shard;
    assert!(clients.iter().all(|c| c.server_info().shard == home));
    let mut subs = Vec::new();
    for c in &clients[1..] {
        subs.push(c.subscribe("home.>").await.unwrap());
    }
    for i in 0..100u32 {
        clients[0]
            .publish("home.x", i.to_be_bytes().to_vec())
            .await
            .unwrap();
    }
    clients[0].flush().await.unwrap();
    for sub in &mut subs {
        for i in 0..100u32 {
            assert_eq!(&next(sub).await.payload[..], &i.to_be_bytes());
        }
    }
    let stats = s.stats();
    assert_eq!(stats.tls_failures, 0);
    assert_eq!(stats.remote_out, 0, "nothing crossed a shard");
    assert_eq!(stats.moved_in, stats.moved_out);
    if s.server().dataplane().steering_status().active {
        // Balance put every other connection on the other shard.
        assert!(
            stats.moved_in >= 3,
            "connections were handed over: {stats:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wrong_ca_is_refused() {
    let s = TestServer::start();
    let other = TestServer::start();
    let err = Client::connect(options(&s).ca_file(other.ca_path()))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Tls(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_credential_is_rejected() {
    let s = TestServer::start();
    let err = Client::connect(options(&s).credential("abt_not-a-valid-token"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::AuthenticationFailed { .. }), "{err:?}");
    assert_eq!(s.stats().auth_failures, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcards_match_across_shards() {
    let s = TestServer::start();
    let a = client_on(|| options(&s), 0).await;
    let b = client_on(|| options(&s), 1).await;
    let mut one = a.subscribe("sensors.*.temp").await.unwrap();
    let mut rest = b.subscribe("sensors.>").await.unwrap();
    let publisher = connect(&s).await;
    for subject in [
        "sensors.k1.temp",
        "sensors.k1.humidity",
        "sensors.k2.temp",
        "other.k1.temp",
    ] {
        publisher.publish(subject, subject).await.unwrap();
    }
    publisher.flush().await.unwrap();
    let mut got_one = Vec::new();
    for _ in 0..2 {
        got_one.push(next(&mut one).await.subject_str().into_owned());
    }
    let mut got_rest = Vec::new();
    for _ in 0..3 {
        got_rest.push(next(&mut rest).await.subject_str().into_owned());
    }
    assert_eq!(got_one, ["sensors.k1.temp", "sensors.k2.temp"]);
    assert_eq!(
        got_rest,
        ["sensors.k1.temp", "sensors.k1.humidity", "sensors.k2.temp"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_group_gives_each_message_to_exactly_one_member() {
    const N: u32 = 300;
    let s = TestServer::start();
    let mut members = Vec::new();
    for shard in [0, 1, 1] {
        let c = client_on(|| options(&s), shard).await;
        let q = c.queue_subscribe("work.*", "workers").await.unwrap();
        let end = c.subscribe("work-end").await.unwrap();
        members.push((c, q, end));
    }
    let publisher = client_on(|| options(&s), 0).await;
    for i in 0..N {
        publisher
            .publish("work.item", i.to_be_bytes().to_vec())
            .await
            .unwrap();
    }
    // Per member, the end marker arrives after every job it was given.
    publisher.publish("work-end", "").await.unwrap();
    publisher.flush().await.unwrap();
    let mut seen = BTreeMap::new();
    for (i, (_c, q, end)) in members.iter_mut().enumerate() {
        next(end).await;
        let mut mine = 0;
        // Everything for this member is already in its stream: take it
        // without waiting (unconstrained: tokio's budget must not cut it short).
        while let Some(Some(m)) = tokio::task::unconstrained(q.next()).now_or_never() {
            *seen.entry(m.payload.to_vec()).or_insert(0) += 1;
            mine += 1;
        }
        assert!(mine > 0, "member {i} got nothing");
    }
    assert_eq!(seen.len(), N as usize);
    assert!(seen.values().all(|&n| n == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_reply_and_no_responders() {
    let s = TestServer::start();
    let requester = client_on(|| options(&s), 0).await;
    let err = requester
        .request_with_timeout("svc.time", "now?", Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NoResponders), "{err:?}");

    let responder = client_on(|| options(&s), 1).await;
    let mut requests = responder
        .queue_subscribe("svc.time", "clocks")
        .await
        .unwrap();
    let serve = tokio::spawn(async move {
        let req = next(&mut requests).await;
        let reply = req.reply_str().unwrap().into_owned();
        responder.publish(&reply, "12:00").await.unwrap();
        responder.flush().await.unwrap();
    });
    let answer = requester
        .request_with_timeout("svc.time", "now?", LIMIT)
        .await
        .unwrap();
    assert_eq!(&answer.payload[..], b"12:00");
    assert_eq!(answer.status, MessageStatus::Ok);
    serve.await.unwrap();
    assert_eq!(s.stats().no_responders, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_after_n_ends_the_stream() {
    let s = TestServer::start();
    let c = client_on(|| options(&s), 1).await;
    let mut sub = c.subscribe("ticks").await.unwrap();
    sub.unsubscribe_after(3).unwrap();
    c.flush().await.unwrap();
    let p = client_on(|| options(&s), 0).await;
    for i in 0..10u8 {
        p.publish("ticks", vec![i]).await.unwrap();
    }
    p.flush().await.unwrap();
    let mut got = Vec::new();
    while let Some(m) = tokio::time::timeout(LIMIT, sub.next()).await.unwrap() {
        got.push(m.payload[0]);
    }
    assert_eq!(got, [0, 1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tenants_with_identical_subjects_never_meet() {
    let (ta, tb) = ("abt_tenant-a-integration", "abt_tenant-b-integration");
    let s = TestServer::start_with(|c| {
        c.tenants = vec![tenant(10, "alpha", ta), tenant(11, "beta", tb)];
    });
    let seed: u64 = rand::random();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let subjects: BTreeSet<String> = (0..30)
        .map(|_| format!("x.{}.{}", rng.random_range(0..4), rng.random_range(0..4)))
        .collect();
    let opts = |t: &str| options(&s).credential(t.to_owned());
    let mut subs = Vec::new();
    for (token, shard) in [(ta, 0), (ta, 1), (tb, 0), (tb, 1)] {
        let c = client_on(|| opts(token), shard).await;
        let all = c.subscribe(">").await.unwrap();
        subs.push((token, c, all));
    }
    let pa = connect_as(&s, ta).await;
    let pb = connect_as(&s, tb).await;
    for subject in &subjects {
        pa.publish(subject, "from-a").await.unwrap();
        pb.publish(subject, "from-b").await.unwrap();
    }
    pa.publish("zz.end", "from-a").await.unwrap();
    pb.publish("zz.end", "from-b").await.unwrap();
    pa.flush().await.unwrap();
    pb.flush().await.unwrap();
    for (token, _c, mut all) in subs {
        let mine: &[u8] = if token == ta { b"from-a" } else { b"from-b" };
        let mut n = 0;
        loop {
            let m = next(&mut all).await;
            assert_eq!(
                &m.payload[..],
                mine,
                "seed {seed}: a message crossed tenants"
            );
            if m.subject_str() == "zz.end" {
                break;
            }
            n += 1;
        }
        assert_eq!(n, subjects.len(), "seed {seed}");
    }
}

async fn connect_as(s: &TestServer, token: &str) -> Client {
    Client::connect(options(s).credential(token.to_owned()))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_subscriptions_carry_their_code_and_the_connection_lives_on() {
    let s = TestServer::start_with(|c| c.limits.max_subscriptions = 1);
    let c = connect(&s).await;
    // Reserved subjects never leave the client...
    assert!(matches!(
        c.subscribe("$SYS.>").await.unwrap_err(),
        Error::InvalidSubject { .. }
    ));
    // ...and the server enforces its own limits with a clear code.
    let mut ok = c.subscribe("fine").await.unwrap();
    match c.subscribe("one.too.many").await.unwrap_err() {
        Error::Server(e) => {
            assert_eq!(e.code, ErrorCode::MaxSubscriptionsExceeded);
            assert!(!e.fatal);
        }
        other => panic!("{other:?}"),
    }
    c.publish("fine", "yes").await.unwrap();
    assert_eq!(&next(&mut ok).await.payload[..], b"yes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_reconnect_and_resubscribe_after_a_restart() {
    let mut s = TestServer::start();
    let opts = options(&s).reconnect(
        ReconnectPolicy::new()
            .initial_delay(Duration::from_millis(20))
            .max_delay(Duration::from_millis(200)),
    );
    let c = Client::connect(opts).await.unwrap();
    let mut sub = c.subscribe("after.restart").await.unwrap();
    let mut events = c.events();
    s.restart();
    // Wait for the client to say it is back (event-driven, bounded).
    tokio::time::timeout(LIMIT, async {
        loop {
            if let Some(arqonbus_client::Event::Reconnected { .. }) = events.next().await {
                break;
            }
        }
    })
    .await
    .expect("reconnected");
    c.flush().await.unwrap();
    let p = connect(&s).await;
    p.publish("after.restart", "still here").await.unwrap();
    assert_eq!(&next(&mut sub).await.payload[..], b"still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_delivers_what_was_sent_then_closes() {
    let s = TestServer::start();
    let c = connect(&s).await;
    let mut sub = c.subscribe("drain.me").await.unwrap();
    let p = connect(&s).await;
    for i in 0..50u8 {
        p.publish("drain.me", vec![i]).await.unwrap();
    }
    p.flush().await.unwrap();
    // Everything published before is routed: the barrier covers the
    // publisher's frames, and ordering covers delivery to this subscriber.
    c.flush().await.unwrap();
    let drained = tokio::spawn(async move {
        let mut got = Vec::new();
        while let Some(m) = sub.next().await {
            got.push(m.payload[0]);
        }
        got
    });
    c.drain().await.unwrap();
    let got = tokio::time::timeout(LIMIT, drained).await.unwrap().unwrap();
    assert_eq!(got, (0..50).collect::<Vec<u8>>());
}

/// Polls `client.presence(subject)` until `want` holds (the listing crosses
/// shards on their own channel, after the member's barrier).
async fn presence_until(
    client: &Client,
    subject: &str,
    want: impl Fn(&arqonbus_client::PresenceAnswer) -> bool,
) -> arqonbus_client::PresenceAnswer {
    tokio::time::timeout(LIMIT, async {
        loop {
            let answer = client.presence(subject).await.unwrap();
            if want(&answer) {
                return answer;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("presence as expected within the limit")
}

async fn presence_event(
    w: &mut arqonbus_client::PresenceWatcher,
) -> arqonbus_client::PresenceEvent {
    tokio::time::timeout(LIMIT, w.next())
        .await
        .expect("presence event within the limit")
        .expect("watch still open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_tracks_watches_and_queries_across_shards_and_after_a_restart() {
    use arqonbus_client::{ClientKind, PresenceAction};
    let mut s = TestServer::start_with(|c| c.limits.presence_members_per_subject = 2);
    let fast = || {
        options(&s).reconnect(
            ReconnectPolicy::new()
                .initial_delay(Duration::from_millis(20))
                .max_delay(Duration::from_millis(200)),
        )
    };
    let watcher = client_on(fast, 1).await;
    let host = client_on(|| fast().kind(ClientKind::Agent).name("host-agent"), 0).await;
    let guest = client_on(fast, 0).await;
    let late = connect(&s).await;
    let mut w = watcher.watch_presence("room.7").await.unwrap();

    // Listed, with metadata, seen joining from the other shard.
    let mut host_sub = host.subscribe("room.7").await.unwrap();
    host_sub.track([("role", "host")]).await.unwrap();
    let join = presence_event(&mut w).await;
    assert_eq!(join.action, PresenceAction::Join);
    assert_eq!(join.subject, "room.7");
    assert_eq!(join.member.client_id, host.server_info().session_id);
    assert_eq!(join.member.kind, Some(ClientKind::Agent));
    assert_eq!(join.member.name, "host-agent");
    assert_eq!(
        join.member.metadata.get("role").map(String::as_str),
        Some("host")
    );
    // Tracking again changes nothing.
    host_sub.track([]).await.unwrap();

    // The subject's bound (2, configured): the third is refused, its
    // subscription goes on.
    let mut guest_sub = guest.subscribe("room.7").await.unwrap();
    guest_sub.track([]).await.unwrap();
    assert_eq!(presence_event(&mut w).await.action, PresenceAction::Join);
    let mut late_sub = late.subscribe("room.7").await.unwrap();
    match late_sub.track([]).await {
        Err(Error::Server(e)) => assert_eq!(e.code, ErrorCode::PresenceLimitExceeded),
        other => panic!("expected PRESENCE_LIMIT_EXCEEDED, got {other:?}"),
    }
    watcher.publish("room.7", "still subscribed").await.unwrap();
    assert_eq!(&next(&mut late_sub).await.payload[..], b"still subscribed");
    let answer = presence_until(&watcher, "room.7", |a| a.members.len() == 2).await;
    assert!(!answer.truncated);
    let mut ids: Vec<u64> = answer.members.iter().map(|m| m.client_id).collect();
    ids.sort_unstable();
    let mut want = vec![
        host.server_info().session_id,
        guest.server_info().session_id,
    ];
    want.sort_unstable();
    assert_eq!(ids, want);

    // Checked locally, nothing sent.
    let mut wild = late.subscribe("room.*").await.unwrap();
    assert!(matches!(
        wild.track([]).await,
        Err(Error::InvalidSubject { .. })
    ));
    let long = "x".repeat(200);
    assert!(matches!(
        late_sub.track([("k", long.as_str())]).await,
        Err(Error::InvalidMetadata(_))
    ));
    assert!(matches!(
        watcher.presence("room.*").await,
        Err(Error::InvalidSubject { .. })
    ));

    // Dropping the subscription leaves; the freed place can be taken.
    drop(guest_sub);
    let leave = presence_event(&mut w).await;
    assert_eq!(leave.action, PresenceAction::Leave);
    assert_eq!(leave.member.client_id, guest.server_info().session_id);
    late_sub.track([]).await.unwrap();
    assert_eq!(presence_event(&mut w).await.action, PresenceAction::Join);

    // After a restart the tracks and the watch are made again.
    s.restart();
    let host_id = tokio::time::timeout(LIMIT, async {
        loop {
            let id = host.server_info().session_id;
            if host.state() == arqonbus_client::ConnectionState::Connected
                && id != join.member.client_id
            {
                return id;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the host reconnected");
    // The watcher may re-watch before or after the host re-tracked (an
    // event or none), so the listing is what is checked.
    let listed = presence_until(&watcher, "room.7", |a| {
        a.members.iter().any(|m| m.client_id == host_id)
    })
    .await;
    assert_eq!(
        listed
            .members
            .iter()
            .find(|m| m.client_id == host_id)
            .and_then(|m| m.metadata.get("role"))
            .map(String::as_str),
        Some("host")
    );
    // The watch is back too: the host's leave reaches it.
    watcher.flush().await.unwrap();
    drop(host_sub);
    tokio::time::timeout(LIMIT, async {
        loop {
            let e = presence_event(&mut w).await;
            if e.member.client_id == host_id && e.action == PresenceAction::Leave {
                break;
            }
        }
    })
    .await
    .expect("the host's leave after the restart");
    assert!(w.error().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_presence_watch_fails_and_the_client_lives_on() {
    let s = TestServer::start_with(|c| c.limits.presence_watches_per_connection = 1);
    let c = connect(&s).await;
    let first = c.watch_presence("a").await.unwrap();
    match c.watch_presence("b").await {
        Err(Error::Server(e)) => assert_eq!(e.code, ErrorCode::PresenceLimitExceeded),
        other => panic!("expected PRESENCE_LIMIT_EXCEEDED, got {other:?}"),
    }
    // Dropping a watch frees its place.
    drop(first);
    let _b = c.watch_presence("b").await.unwrap();
    assert!(c.presence("a").await.unwrap().members.is_empty());
}
