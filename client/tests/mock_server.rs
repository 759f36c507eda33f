//! End-to-end tests of the SDK against a scripted in-process peer that
//! speaks protocol v1 over loopback TCP (and TLS). The peer is not the real
//! server: each test plays the server's side frame by frame, so the tests
//! check exactly what the SDK puts on the wire and how it reacts.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::sync::Arc;
use std::time::Duration;

use arqonbus_client::{
    Client, ClientKind, ConnectOptions, ConnectionState, Error, ErrorCode, Event, Headers,
    MessageStatus, OutgoingMessage, ReconnectPolicy,
};
use arqonbus_proto::codec;
use arqonbus_proto::v1::{self, frame::Kind};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt as _;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpListener;

const TOKEN: &str = "abt_test-token";

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// A listening fake server.
struct Mock {
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Mock {
    async fn start() -> Self {
        Self {
            listener: TcpListener::bind("127.0.0.1:0").await.unwrap(),
            tls: None,
        }
    }

    fn port(&self) -> u16 {
        self.listener.local_addr().unwrap().port()
    }

    fn url(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port())
    }

    fn options(&self) -> ConnectOptions {
        ConnectOptions::new()
            .url(self.url())
            .credential(TOKEN)
            .reconnect(ReconnectPolicy::new().initial_delay(Duration::from_millis(1)))
    }

    /// Accepts one connection and reads its `Connect`.
    async fn accept(&self) -> Peer {
        let (tcp, _) = self.listener.accept().await.unwrap();
        let io: Box<dyn Io> = match &self.tls {
            None => Box::new(tcp),
            Some(acceptor) => Box::new(acceptor.accept(tcp).await.unwrap()),
        };
        let mut peer = Peer {
            io,
            rbuf: BytesMut::new(),
            connect: v1::Connect::default(),
        };
        match peer.recv().await {
            Kind::Connect(c) => peer.connect = c,
            other => panic!("expected Connect, got {other:?}"),
        }
        peer
    }

    /// Accepts a connection and welcomes it.
    async fn accept_welcome(&self, session_id: u64) -> Peer {
        let mut peer = self.accept().await;
        peer.welcome(session_id).await;
        peer
    }
}

/// One accepted connection, seen from the server.
struct Peer {
    io: Box<dyn Io>,
    rbuf: BytesMut,
    connect: v1::Connect,
}

impl Peer {
    async fn send(&mut self, kind: Kind) {
        let mut buf = BytesMut::new();
        codec::encode(&kind, &mut buf).unwrap();
        self.io.write_all(&buf).await.unwrap();
        self.io.flush().await.unwrap();
    }

    /// The next frame; panics at EOF.
    async fn recv(&mut self) -> Kind {
        self.try_recv().await.expect("connection closed")
    }

    /// The next frame, or `None` at EOF.
    async fn try_recv(&mut self) -> Option<Kind> {
        loop {
            if let Some(kind) = codec::decode(&mut self.rbuf, u32::MAX).unwrap() {
                return Some(kind);
            }
            if self.io.read_buf(&mut self.rbuf).await.unwrap_or(0) == 0 {
                return None;
            }
        }
    }

    async fn welcome(&mut self, session_id: u64) {
        self.send(Kind::Welcome(v1::Welcome {
            protocol_version: 1,
            protocol_minor: 0,
            server_id: "mock".into(),
            session_id,
            limits: Some(v1::Limits {
                max_payload: 1024,
                max_frame: 1024 + 16 * 1024,
                max_subscriptions: 100,
                max_headers: 4,
                max_subject_len: 64,
                ping_interval_ms: 30_000,
                max_pending_bytes: 1 << 20,
            }),
            shard: 2,
            server_version: "mock-1".into(),
            tenant: "acme".into(),
        }))
        .await;
    }

    async fn expect_subscribe(&mut self) -> v1::Subscribe {
        match self.recv().await {
            Kind::Subscribe(s) => s,
            other => panic!("expected Subscribe, got {other:?}"),
        }
    }

    async fn expect_publish(&mut self) -> v1::Publish {
        match self.recv().await {
            Kind::Publish(p) => p,
            other => panic!("expected Publish, got {other:?}"),
        }
    }

    /// Expects a client `Ping` and answers `Pong`.
    async fn pong_next_ping(&mut self) {
        match self.recv().await {
            Kind::Ping(_) => self.send(Kind::Pong(v1::Pong {})).await,
            other => panic!("expected Ping, got {other:?}"),
        }
    }

    /// Completes a `subscribe()` call: Subscribe, then the barrier Ping.
    async fn accept_subscription(&mut self) -> v1::Subscribe {
        let sub = self.expect_subscribe().await;
        self.pong_next_ping().await;
        sub
    }

    async fn deliver(&mut self, sid: u64, subject: &'static str, payload: &'static str) {
        self.send(Kind::Message(v1::Message {
            sid,
            subject: Bytes::from_static(subject.as_bytes()),
            payload: Bytes::from_static(payload.as_bytes()),
            ..Default::default()
        }))
        .await;
    }

    /// Sends a server `Ping` and waits for the `Pong`: everything sent before
    /// it has been processed by the client.
    async fn sync(&mut self) {
        self.send(Kind::Ping(v1::Ping {})).await;
        match self.recv().await {
            Kind::Pong(_) => {}
            other => panic!("expected Pong, got {other:?}"),
        }
    }
}

/// Runs the client side and the server side of a test concurrently.
async fn both<A: Future, B: Future>(client: A, server: B) -> (A::Output, B::Output) {
    tokio::join!(client, server)
}

#[tokio::test]
async fn handshake_sends_connect_and_exposes_welcome() {
    let mock = Mock::start().await;
    let opts = mock
        .options()
        .name("tester")
        .kind(ClientKind::Agent)
        .no_echo(true);
    let (client, peer) = both(Client::connect(opts), mock.accept_welcome(77)).await;
    let client = client.unwrap();
    assert_eq!(peer.connect.protocol_version, 1);
    assert_eq!(peer.connect.credential, TOKEN);
    assert_eq!(peer.connect.client_name, "tester");
    assert_eq!(peer.connect.client_kind, i32::from(v1::ClientKind::Agent));
    assert!(peer.connect.no_echo);
    assert!(
        peer.connect
            .client_version
            .starts_with("arqonbus-client-rust/")
    );
    let info = client.server_info();
    assert_eq!(info.session_id, 77);
    assert_eq!(info.shard, 2);
    assert_eq!(info.tenant, "acme");
    assert_eq!(info.limits.max_payload, 1024);
    assert_eq!(client.state(), ConnectionState::Connected);
}

#[tokio::test]
async fn bad_credential_is_a_typed_error() {
    let mock = Mock::start().await;
    let server = async {
        let mut peer = mock.accept().await;
        peer.send(Kind::Error(v1::Error {
            code: ErrorCode::AuthenticationFailed.into(),
            message: "authentication failed".into(),
            close: true,
            sid: 0,
            seq: 0,
        }))
        .await;
    };
    let (result, ()) = both(Client::connect(mock.options()), server).await;
    let err = result.unwrap_err();
    assert!(matches!(err, Error::AuthenticationFailed { .. }), "{err:?}");
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn nothing_listening_is_an_io_error() {
    let mock = Mock::start().await;
    let url = mock.url();
    drop(mock);
    let err = Client::connect(ConnectOptions::new().url(url).credential(TOKEN))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Io(_)), "{err:?}");
}

#[tokio::test]
async fn publishes_arrive_in_order_and_flush_waits_for_the_pong() {
    let mock = Mock::start().await;
    let (client, mut peer) = both(Client::connect(mock.options()), mock.accept_welcome(1)).await;
    let client = client.unwrap();
    let mut headers = Headers::new();
    headers.append("trace", "abc");
    let publishing = async {
        client.publish("a.b", "one").await.unwrap();
        client
            .publish_with_reply("a.b", "r.s", "two")
            .await
            .unwrap();
        client
            .publish_with_headers("a.c", headers.clone(), vec![3u8; 1000])
            .await
            .unwrap();
        client.flush().await.unwrap();
    };
    let serving = async {
        let one = peer.expect_publish().await;
        assert_eq!(
            (&one.subject[..], &one.payload[..]),
            (&b"a.b"[..], &b"one"[..])
        );
        let two = peer.expect_publish().await;
        assert_eq!(&two.reply[..], b"r.s");
        let three = peer.expect_publish().await;
        assert_eq!(three.payload.len(), 1000);
        assert_eq!(&three.headers[0].key[..], b"trace");
        peer.pong_next_ping().await;
    };
    both(publishing, serving).await;
}

#[tokio::test]
async fn invalid_input_is_rejected_before_sending() {
    let mock = Mock::start().await;
    let (client, mut peer) = both(Client::connect(mock.options()), mock.accept_welcome(1)).await;
    let client = client.unwrap();
    for subject in ["a..b", "a.*", "$SYS.x", "", &"x".repeat(65)] {
        let err = client.publish(subject, "x").await.unwrap_err();
        assert!(
            matches!(err, Error::InvalidSubject { .. }),
            "{subject:?}: {err:?}"
        );
    }
    let err = client.publish("a", vec![0u8; 1025]).await.unwrap_err();
    assert!(matches!(
        err,
        Error::PayloadTooLarge {
            len: 1025,
            max: 1024
        }
    ));
    let err = client
        .publish_with_reply("a", "r.>", "x")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidSubject { .. }));
    let too_many: Headers = (0..5).map(|i| (format!("k{i}"), "v")).collect();
    let err = client
        .publish_with_headers("a", too_many, "x")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidHeaders(_)));
    assert!(matches!(
        client.subscribe("a.>.b").await.unwrap_err(),
        Error::InvalidSubject { .. }
    ));
    assert!(matches!(
        client.queue_subscribe("a", "bad group").await.unwrap_err(),
        Error::InvalidQueueGroup { .. }
    ));
    // Nothing of the above reached the wire: the next frame is the flush.
    let (flushed, ()) = both(client.flush(), peer.pong_next_ping()).await;
    flushed.unwrap();
}

#[tokio::test]
async fn subscriber_receives_messages_and_server_pings_are_answered() {
    let mock = Mock::start().await;
    let (client, mut peer) = both(Client::connect(mock.options()), mock.accept_welcome(1)).await;
    let client = client.unwrap();
    let (sub, wire) = both(
        client.queue_subscribe("orders.*", "workers"),
        peer.accept_subscription(),
    )
    .await;
    let mut sub = sub.unwrap();
    assert_eq!(wire.sid, sub.sid().0);
    assert_eq!(&wire.pattern[..], b"orders.*");
    assert_eq!(&wire.queue_group[..], b"workers");

    peer.send(Kind::Message(v1::Message {
        sid: wire.sid,
        subject: Bytes::from_static(b"orders.eu"),
        reply: Bytes::from_static(b"_INBOX.x.1"),
        headers: vec![v1::Header {
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"v"),
        }],
        status: 0,
        payload: Bytes::from_static(b"hello"),
    }))
    .await;
    peer.sync().await;
    let msg = sub.next().await.unwrap();
    assert_eq!(msg.subject_str(), "orders.eu");
    assert_eq!(msg.reply_str().as_deref(), Some("_INBOX.x.1"));
    assert_eq!(msg.headers.get("k"), Some(&b"v"[..]));
    assert_eq!(&msg.payload[..], b"hello");
    assert_eq!(msg.status, MessageStatus::Ok);

    // Dropping the subscriber unsubscribes.
    drop(sub);
    match peer.recv().await {
        Kind::Unsubscribe(u) => assert_eq!((u.sid, u.after_messages), (wire.sid, 0)),
        other => panic!("expected Unsubscribe, got {other:?}"),
    }
}

#[tokio::test]
async fn a_rejected_subscription_fails_subscribe() {
    let mock = Mock::start().await;
    let (client, mut peer) = both(Client::connect(mock.options()), mock.accept_welcome(1)).await;
    let client = client.unwrap();
    let mut events = client.events();
    let serving = async {
        let sub = peer.expect_subscribe().await;
        peer.send(Kind::Error(v1::Error {
            code: ErrorCode::PermissionDenied.into(),
            message: "not allowed".into(),
            close: false,
            sid: sub.sid,
            seq: 0,
        }))
        .await;
        peer.pong_next_ping().await;
    };
    let (result, ()) = both(client.subscribe("secret.>"), serving).await;
    match result.unwrap_err() {
        Error::Server(e) => {
            assert_eq!(e.code, ErrorCode::PermissionDenied);
            assert!(!e.fatal);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(events.next().await, Some(Event::ServerError(_))));
    // The client is still usable.
    let (sub, _) = both(client.subscribe("ok"), peer.accept_subscription()).await;
    sub.unwrap();
}

#[tokio::test]
async fn unsubscribe_after_ends_the_stream_after_n_messages() {
    let mock = Mock::start().await;
    let (client, mut peer) = both(Client::connect(mock.options()), mock.accept_welcome(1)).await;
    let client = client.unwrap();
    let (sub, wire) = both(client.subscribe("a"), peer.accept_subscription()).await;
    let mut sub = sub.unwrap();
    sub.unsubscribe_after(2).unwrap();
    match peer.recv().await {
        Kind::Unsubscribe(u) => assert_eq!((u.sid, u.after_messages), (wire.sid, 2)),
        other => panic!("expected Unsubscribe, got {other:?}"),
    }
    for payload in ["1", "2", "3"] {
        peer.deliver(wire.sid, "a", payload).await;
    }
    let got: Vec<_> = sub.by_ref().collect().await;
    assert_eq!(got.len(), 2);
    assert_eq!(&got[1].payload[..], b"2");
    assert!(sub.error().is_none());
}

#[tokio::test]
async fn request_reply_no_responders_and_timeout() {
    let mock = Mock::start().await;
    let (client, mut peer) = both(Client::connect(mock.options()), mock.accept_welcome(1)).await;
    let client = client.unwrap();

    // First request: the inbox subscription and its barrier come first.
    let serving = async {
        let inbox = peer.accept_subscription().await;
        let pattern = String::from_utf8(inbox.pattern.to_vec()).unwrap();
        let id = pattern
            .strip_prefix("_INBOX.")
            .and_then(|p| p.strip_suffix(".*"))
            .unwrap();
        assert_eq!(id.len(), 22);
        assert!(id.bytes().all(|b| b.is_ascii_alphanumeric()));
        let request = peer.expect_publish().await;
        assert_eq!(&request.subject[..], b"svc.echo");
        assert!(
            request
                .reply
                .starts_with(&pattern.as_bytes()[..pattern.len() - 1])
        );
        peer.send(Kind::Message(v1::Message {
            sid: inbox.sid,
            subject: request.reply.clone(),
            payload: Bytes::from_static(b"pong"),
            ..Default::default()
        }))
        .await;
        inbox.sid
    };
    let (reply, inbox_sid) = both(client.request("svc.echo", "ping"), serving).await;
    assert_eq!(&reply.unwrap().payload[..], b"pong");

    // No responders: answered immediately with a typed error.
    let serving = async {
        let request = peer.expect_publish().await;
        peer.send(Kind::Message(v1::Message {
            sid: inbox_sid,
            subject: request.reply,
            status: v1::MessageStatus::NoResponders.into(),
            ..Default::default()
        }))
        .await;
    };
    let (reply, ()) = both(client.request("svc.none", ""), serving).await;
    assert!(matches!(reply.unwrap_err(), Error::NoResponders));

    // Silence: the request times out, and a late reply is ignored.
    let serving = async {
        let request = peer.expect_publish().await;
        request.reply
    };
    let (reply, late) = both(
        client.request_with_timeout("svc.slow", "", Duration::from_millis(20)),
        serving,
    )
    .await;
    assert!(matches!(reply.unwrap_err(), Error::Timeout));
    peer.send(Kind::Message(v1::Message {
        sid: inbox_sid,
        subject: late,
        ..Default::default()
    }))
    .await;
    peer.sync().await;
}

#[tokio::test]
async fn slow_subscribers_drop_and_count_instead_of_blocking() {
    let mock = Mock::start().await;
    let opts = mock.options().subscriber_capacity(1);
    let (client, mut peer) = both(Client::connect(opts), mock.accept_welcome(1)).await;
    let client = client.unwrap();
    let mut events = client.events();
    let (sub, wire) = both(client.subscribe("a"), peer.accept_subscription()).await;
    let mut sub = sub.unwrap();
    for payload in ["1", "2", "3"] {
        peer.deliver(wire.sid, "a", payload).await;
    }
    // The reader still answers pings while the subscriber is full.
    peer.sync().await;
    assert_eq!(sub.dropped(), 2);
    assert_eq!(&sub.next().await.unwrap().payload[..], b"1");
    assert!(matches!(
        events.next().await,
        Some(Event::SlowConsumer { dropped: 1, .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_resubscribes_then_sends_buffered_publishes() {
    let mock = Mock::start().await;
    let (client, mut peer) = both(Client::connect(mock.options()), mock.accept_welcome(1)).await;
    let client = client.unwrap();
    let mut events = client.events();
    let (sub_a, wire_a) = both(client.subscribe("a.>"), peer.accept_subscription()).await;
    let mut sub_a = sub_a.unwrap();
    let (sub_b, wire_b) = both(client.subscribe("b"), peer.accept_subscription()).await;
    let mut sub_b = sub_b.unwrap();
    sub_b.unsubscribe_after(5).unwrap();
    match peer.recv().await {
        Kind::Unsubscribe(u) => assert_eq!(u.after_messages, 5),
        other => panic!("expected Unsubscribe, got {other:?}"),
    }
    peer.deliver(wire_b.sid, "b", "1").await;
    peer.sync().await;

    // The server goes away.
    drop(peer);
    match events.next().await {
        Some(Event::Disconnected { reason }) => assert!(reason.is_retryable(), "{reason:?}"),
        other => panic!("expected Disconnected, got {other:?}"),
    }
    assert_eq!(client.state(), ConnectionState::Reconnecting);
    client.publish("a.x", "buffered").await.unwrap();

    let mut peer = mock.accept_welcome(2).await;
    let first = peer.expect_subscribe().await;
    assert_eq!((first.sid, &first.pattern[..]), (wire_a.sid, &b"a.>"[..]));
    let second = peer.expect_subscribe().await;
    assert_eq!(second.sid, wire_b.sid);
    match peer.recv().await {
        Kind::Unsubscribe(u) => assert_eq!((u.sid, u.after_messages), (wire_b.sid, 4)),
        other => panic!("expected the remaining count, got {other:?}"),
    }
    let buffered = peer.expect_publish().await;
    assert_eq!(&buffered.payload[..], b"buffered");
    assert!(matches!(
        events.next().await,
        Some(Event::Reconnected { .. })
    ));
    assert_eq!(client.server_info().session_id, 2);

    peer.deliver(wire_a.sid, "a.x", "after").await;
    assert_eq!(&sub_a.next().await.unwrap().payload[..], b"after");
    assert_eq!(&sub_b.next().await.unwrap().payload[..], b"1");
}

#[tokio::test]
async fn a_flush_pending_across_a_reconnect_is_repeated() {
    let mock = Mock::start().await;
    let (client, mut peer) = both(Client::connect(mock.options()), mock.accept_welcome(1)).await;
    let client = client.unwrap();
    let serving = async {
        // The first connection sees the Ping but dies without answering.
        assert!(matches!(peer.recv().await, Kind::Ping(_)));
        drop(peer);
        let mut peer = mock.accept_welcome(2).await;
        peer.pong_next_ping().await;
        peer
    };
    let (flushed, _peer) = both(client.flush(), serving).await;
    flushed.unwrap();
}

#[tokio::test]
async fn reconnect_buffer_limits_publishes_while_disconnected() {
    let mock = Mock::start().await;
    let opts = mock.options().reconnect_buffer_size(100);
    let (client, peer) = both(Client::connect(opts), mock.accept_welcome(1)).await;
    let client = client.unwrap();
    let mut events = client.events();
    drop(peer);
    assert!(matches!(
        events.next().await,
        Some(Event::Disconnected { .. })
    ));
    // The next connection is not welcomed, so the client stays disconnected.
    client.publish("a", vec![0u8; 40]).await.unwrap();
    let err = client.publish("a", vec![0u8; 60]).await.unwrap_err();
    assert!(
        matches!(err, Error::ReconnectBufferFull { limit: 100 }),
        "{err:?}"
    );
    assert!(err.is_retryable());
}

#[tokio::test]
async fn authentication_failure_on_reconnect_closes_the_client() {
    let mock = Mock::start().await;
    let (client, mut peer) = both(Client::connect(mock.options()), mock.accept_welcome(1)).await;
    let client = client.unwrap();
    let mut events = client.events();
    let (sub, _) = both(client.subscribe("a"), peer.accept_subscription()).await;
    let mut sub = sub.unwrap();
    drop(peer);
    let mut peer = mock.accept().await;
    peer.send(Kind::Error(v1::Error {
        code: ErrorCode::AuthenticationFailed.into(),
        message: "revoked".into(),
        close: true,
        sid: 0,
        seq: 0,
    }))
    .await;
    loop {
        match events.next().await {
            Some(Event::Closed { reason }) => {
                assert!(matches!(reason, Some(Error::AuthenticationFailed { .. })));
                break;
            }
            Some(_) => {}
            None => panic!("events ended before Closed"),
        }
    }
    assert_eq!(client.state(), ConnectionState::Closed);
    assert!(sub.next().await.is_none());
    assert!(matches!(
        sub.error(),
        Some(Error::AuthenticationFailed { .. })
    ));
    assert!(matches!(
        client.publish("a", "x").await.unwrap_err(),
        Error::AuthenticationFailed { .. }
    ));
    assert!(events.next().await.is_none());
}

#[tokio::test]
async fn fatal_server_errors_trigger_a_reconnect() {
    let mock = Mock::start().await;
    let (client, mut peer) = both(Client::connect(mock.options()), mock.accept_welcome(1)).await;
    let client = client.unwrap();
    let mut events = client.events();
    peer.send(Kind::Error(v1::Error {
        code: ErrorCode::SlowConsumer.into(),
        message: "too slow".into(),
        close: true,
        sid: 0,
        seq: 0,
    }))
    .await;
    match events.next().await {
        Some(Event::Disconnected {
            reason: Error::Server(e),
        }) => assert_eq!(e.code, ErrorCode::SlowConsumer),
        other => panic!("unexpected {other:?}"),
    }
    let _peer = mock.accept_welcome(2).await;
    assert!(matches!(
        events.next().await,
        Some(Event::Reconnected { .. })
    ));
}

/// The server announced the close (`Drain`) and chose its moment (an
/// upgrade moves a tenant's clients together), so the client follows at
/// once instead of waiting out its backoff (an hour here).
#[tokio::test]
async fn a_close_announced_by_drain_is_followed_at_once() {
    let mock = Mock::start().await;
    let hour = Duration::from_secs(3600);
    let opts = mock
        .options()
        .reconnect(ReconnectPolicy::new().initial_delay(hour).max_delay(hour));
    let (client, mut peer) = both(Client::connect(opts), mock.accept_welcome(1)).await;
    let client = client.unwrap();
    let mut events = client.events();
    peer.send(Kind::Drain(v1::Drain {
        deadline_ms: 500,
        reason: "server upgrading: reconnect".into(),
    }))
    .await;
    assert!(matches!(
        events.next().await,
        Some(Event::ServerDraining { .. })
    ));
    drop(peer);
    let _peer = tokio::time::timeout(Duration::from_secs(20), mock.accept_welcome(2))
        .await
        .expect("the client reconnects without its hour of backoff");
    loop {
        match events.next().await {
            Some(Event::Reconnected { info }) => {
                assert_eq!(info.session_id, 2);
                break;
            }
            Some(Event::Disconnected { .. }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn drain_delivers_in_flight_messages_then_closes() {
    let mock = Mock::start().await;
    let (client, mut peer) = both(Client::connect(mock.options()), mock.accept_welcome(1)).await;
    let client = client.unwrap();
    let (sub, wire) = both(client.subscribe("a"), peer.accept_subscription()).await;
    let mut sub = sub.unwrap();
    let serving = async {
        match peer.recv().await {
            Kind::Unsubscribe(u) => assert_eq!((u.sid, u.after_messages), (wire.sid, 0)),
            other => panic!("expected Unsubscribe, got {other:?}"),
        }
        // A message routed before the unsubscribe took effect.
        peer.deliver(wire.sid, "a", "in flight").await;
        peer.pong_next_ping().await;
        assert!(
            peer.try_recv().await.is_none(),
            "the client closes after the drain"
        );
    };
    let (drained, ()) = both(client.drain(), serving).await;
    drained.unwrap();
    assert_eq!(&sub.next().await.unwrap().payload[..], b"in flight");
    assert!(sub.next().await.is_none());
    assert!(sub.error().is_none());
    assert_eq!(client.state(), ConnectionState::Closed);
    assert!(matches!(client.publish("a", "x").await, Err(Error::Closed)));
    assert!(matches!(client.flush().await, Err(Error::Closed)));
}

#[tokio::test]
async fn close_writes_queued_publishes_and_is_idempotent() {
    let mock = Mock::start().await;
    let (client, mut peer) = both(Client::connect(mock.options()), mock.accept_welcome(1)).await;
    let client = client.unwrap();
    client.publish("a", "last words").await.unwrap();
    client.close().await;
    client.close().await;
    assert_eq!(&peer.expect_publish().await.payload[..], b"last words");
    assert!(peer.try_recv().await.is_none());
    assert!(matches!(
        client.subscribe("a").await.unwrap_err(),
        Error::Closed
    ));
}

#[tokio::test]
async fn dropping_every_handle_closes_the_connection() {
    let mock = Mock::start().await;
    let (client, mut peer) = both(Client::connect(mock.options()), mock.accept_welcome(1)).await;
    let client = client.unwrap();
    client
        .publish_message(OutgoingMessage::new("a", "bye").header("k", "v"))
        .await
        .unwrap();
    drop(client);
    assert_eq!(&peer.expect_publish().await.payload[..], b"bye");
    assert!(peer.try_recv().await.is_none());
}

#[tokio::test]
async fn unanswered_pings_make_the_connection_stale() {
    let mock = Mock::start().await;
    let opts = mock.options().ping_interval(Duration::from_millis(5));
    let (client, _peer) = both(Client::connect(opts), mock.accept_welcome(1)).await;
    let client = client.unwrap();
    let mut events = client.events();
    match events.next().await {
        Some(Event::Disconnected { reason }) => {
            assert!(matches!(reason, Error::StaleConnection), "{reason:?}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// A TLS acceptor with a fresh self-signed certificate for localhost and
/// 127.0.0.1, and that certificate's PEM (the client's CA).
fn tls_acceptor() -> (tokio_rustls::TlsAcceptor, String) {
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .unwrap();
    config.alpn_protocols = vec![b"arqonbus/1".to_vec()];
    (
        tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        ck.cert.pem(),
    )
}

#[tokio::test]
async fn tls_connects_by_ip_and_by_name_with_the_ca() {
    let mut mock = Mock::start().await;
    let (acceptor, ca_pem) = tls_acceptor();
    mock.tls = Some(acceptor);
    for host in ["127.0.0.1", "localhost"] {
        let opts = ConnectOptions::new()
            .url(format!("tls://{host}:{}", mock.port()))
            .ca_pem(&ca_pem)
            .credential(TOKEN);
        let (client, mut peer) = both(Client::connect(opts), mock.accept_welcome(9)).await;
        let client = client.unwrap();
        assert_eq!(client.server_info().session_id, 9);
        let (flushed, ()) = both(client.flush(), peer.pong_next_ping()).await;
        flushed.unwrap();
        client.close().await;
    }
}

#[tokio::test]
async fn tls_with_the_wrong_ca_fails_with_a_tls_error() {
    let mut mock = Mock::start().await;
    let (acceptor, _) = tls_acceptor();
    let (_, other_ca) = tls_acceptor();
    mock.tls = Some(acceptor);
    let opts = ConnectOptions::new()
        .url(format!("tls://127.0.0.1:{}", mock.port()))
        .ca_pem(other_ca)
        .credential(TOKEN);
    let server = async {
        let (tcp, _) = mock.listener.accept().await.unwrap();
        // The handshake fails on the client side; the server just sees an error.
        let _failed = mock.tls.as_ref().unwrap().accept(tcp).await;
    };
    let (result, ()) = both(Client::connect(opts), server).await;
    let err = result.unwrap_err();
    assert!(matches!(err, Error::Tls(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_publishes_keep_their_order_under_backpressure() {
    const COUNT: u32 = 20_000;
    let mock = Mock::start().await;
    // A small buffer makes publishers wait for the writer while connected.
    let opts = mock.options().reconnect_buffer_size(16 * 1024);
    let (client, mut peer) = both(Client::connect(opts), mock.accept_welcome(1)).await;
    let client = client.unwrap();
    let publishing = async {
        for i in 0..COUNT {
            let mut payload = i.to_be_bytes().to_vec();
            payload.resize(100, 0xab);
            client.publish("load.test", payload).await.unwrap();
        }
        client.flush().await.unwrap();
    };
    let serving = async {
        for i in 0..COUNT {
            let p = peer.expect_publish().await;
            assert_eq!(p.payload[..4], i.to_be_bytes());
            assert_eq!(p.payload.len(), 100);
        }
        peer.pong_next_ping().await;
    };
    both(publishing, serving).await;
}

#[tokio::test]
async fn large_payloads_survive_vectored_writes() {
    let mock = Mock::start().await;
    let server = async {
        let mut peer = mock.accept().await;
        peer.send(Kind::Welcome(v1::Welcome {
            protocol_version: 1,
            session_id: 1,
            limits: Some(v1::Limits {
                max_payload: 1024 * 1024,
                ..Default::default()
            }),
            ..Default::default()
        }))
        .await;
        peer
    };
    let (client, mut peer) = both(Client::connect(mock.options()), server).await;
    let client = client.unwrap();
    let payloads: Vec<Bytes> = (0..6u8)
        .map(|i| {
            let len = if i % 2 == 0 {
                200 * 1024 + usize::from(i)
            } else {
                10
            };
            Bytes::from(vec![i; len])
        })
        .collect();
    let publishing = async {
        for p in &payloads {
            client.publish("big", p.clone()).await.unwrap();
        }
        client.flush().await.unwrap();
    };
    let serving = async {
        for p in &payloads {
            assert_eq!(peer.expect_publish().await.payload, *p);
        }
        peer.pong_next_ping().await;
    };
    both(publishing, serving).await;
}
