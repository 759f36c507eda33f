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
