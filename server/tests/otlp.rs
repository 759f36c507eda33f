//! OTLP trace export end to end: an in-test collector (a real tonic
//! `TraceService`), the real `arqonbus` binary exporting to it, and the SDK
//! publishing a message with a W3C `traceparent` header. The collector must
//! get the connection, auth, publish, deliver and control-RPC spans, the
//! publish in the publisher's trace, and never a payload or a credential;
//! spans still buffered at exit are flushed, and an unreachable collector
//! never holds the server up.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use arqonbus_client::{Client, Headers, OutgoingMessage};
use arqonbus_proto::control::GetStatusRequest;
use arqonbus_proto::control::node_service_client::NodeServiceClient;
use common::{LIMIT, Node, Setup, within};
use futures_util::StreamExt as _;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use tokio::sync::watch;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN_ID: &str = "00f067aa0ba902b7";
const PAYLOAD: &str = "PAYLOAD-MARKER-otlp-5e1d";

// ---- the collector -------------------------------------------------------

/// Keeps every export request; `version` moves on each one.
#[derive(Clone)]
struct Collector {
    requests: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
    version: Arc<watch::Sender<u64>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.requests.lock().unwrap().push(request.into_inner());
        self.version.send_modify(|v| *v += 1);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// One exported span, flattened.
#[derive(Debug, Clone)]
struct Got {
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: Vec<(String, String)>,
}

impl Got {
    fn attr(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn flatten(span: &Span) -> Got {
    let attributes = span
        .attributes
        .iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                Some(other) => format!("{other:?}"),
                None => String::new(),
            };
            (kv.key.clone(), value)
        })
        .collect();
    Got {
        name: span.name.clone(),
        trace_id: hex::encode(&span.trace_id),
        span_id: hex::encode(&span.span_id),
        parent_span_id: hex::encode(&span.parent_span_id),
        attributes,
    }
}

impl Collector {
    /// Serves on 127.0.0.1 (port 0) until the test's runtime ends.
    fn start() -> (Self, SocketAddr) {
        let incoming =
            tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = incoming.local_addr().unwrap();
        let collector = Self {
            requests: Arc::default(),
            version: Arc::new(watch::channel(0).0),
        };
        let service = TraceServiceServer::new(collector.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming),
        );
        (collector, addr)
    }

    fn spans(&self) -> Vec<Got> {
        let requests = self.requests.lock().unwrap();
        requests
            .iter()
            .flat_map(|r| &r.resource_spans)
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
            .map(flatten)
            .collect()
    }

    /// Everything received, as text, to search for secrets.
    fn dump(&self) -> String {
        format!("{:?}", self.requests.lock().unwrap())
    }

    fn service_names(&self) -> Vec<String> {
        let requests = self.requests.lock().unwrap();
        requests
            .iter()
            .flat_map(|r| &r.resource_spans)
            .filter_map(|r| r.resource.as_ref())
            .flat_map(|r| &r.attributes)
            .filter(|kv| kv.key == "service.name")
            .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
                Value::StringValue(s) => Some(s.clone()),
                _ => None,
            })
            .collect()
    }

    /// Waits (bounded, woken by each export) until `done` holds.
    async fn until(&self, what: &str, done: impl Fn(&[Got]) -> bool) -> Vec<Got> {
        let mut version = self.version.subscribe();
        let deadline = tokio::time::Instant::now() + LIMIT;
        loop {
            version.borrow_and_update();
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            let names: Vec<_> = spans.iter().map(|s| s.name.as_str()).collect();
            tokio::time::timeout_at(deadline, version.changed())
                .await
                .unwrap_or_else(|_| panic!("{what}: not exported within {LIMIT:?}; got {names:?}"))
                .unwrap();
        }
    }
}

fn count(spans: &[Got], name: &str) -> usize {
    spans.iter().filter(|s| s.name == name).count()
}

// ---- the server ------------------------------------------------------------

/// Starts `arqonbus serve` exporting to `endpoint`, every publish sampled;
/// `batch_delay_ms` is the SDK's standard `OTEL_BSP_SCHEDULE_DELAY`.
fn spawn(endpoint: &str, export_timeout_ms: u64, batch_delay_ms: u64) -> Node {
    Node::spawn_with(Setup {
        metrics: "latency_sample_every = 1".into(),
        extra: format!(
            "[tracing]\notlp_endpoint = \"{endpoint}\"\nservice_name = \"arqonbus-otlp-test\"\nexport_timeout_ms = {export_timeout_ms}\n"
        ),
        envs: vec![("OTEL_BSP_SCHEDULE_DELAY".into(), batch_delay_ms.to_string())],
        ..Setup::default()
    })
}

/// One control RPC with the admin credential.
async fn control_rpc(node: &Node) {
    let (channel, admin) = node.control_channel().await;
    NodeServiceClient::with_interceptor(channel, admin)
        .get_status(GetStatusRequest {})
        .await
        .unwrap();
}

/// The shard a client's connection is on (the top byte of its session id).
fn shard(c: &Client) -> u64 {
    c.server_info().session_id >> 56
}

/// A publisher and a subscriber exchange one message carrying
/// `traceparent`, then both close. The publisher is placed on the
/// subscriber's shard (`same`) or another one, so delivery is local or
/// crosses the mesh; connections are retried until placed (bounded).
async fn traced_exchange(p: &Node, same: bool) {
    let b = within("connect b", Client::connect(p.options().name("sub")))
        .await
        .unwrap();
    let mut a = None;
    for _ in 0..64 {
        let c = within("connect a", Client::connect(p.options().name("pub")))
            .await
            .unwrap();
        if (shard(&c) == shard(&b)) == same {
            a = Some(c);
            break;
        }
        within("close a misplaced", c.close()).await;
    }
    let a = a.expect("the publisher was never placed as asked");
    let mut sub = within("subscribe", b.subscribe("traced.otlp"))
        .await
        .unwrap();
    let mut headers = Headers::new();
    headers.insert(
        "traceparent",
        format!("00-{TRACE_ID}-{PARENT_SPAN_ID}-01").as_str(),
    );
    a.publish_message(OutgoingMessage::new("traced.otlp", PAYLOAD).headers(headers))
        .await
        .unwrap();
    let m = within("delivery", sub.next()).await.unwrap();
    assert_eq!(&m.payload[..], PAYLOAD.as_bytes());
    within("close a", a.close()).await;
    within("close b", b.close()).await;
}

/// The publish is in the publisher's trace, under its span; deliver is
/// under publish (same shard or not).
fn assert_correlated(spans: &[Got]) {
    let publish = spans
        .iter()
        .find(|s| s.name == "publish" && s.attr("subject") == Some("traced.otlp"))
        .expect("a publish span");
    assert_eq!(
        publish.trace_id, TRACE_ID,
        "publish joins the traceparent's trace"
    );
    assert_eq!(publish.parent_span_id, PARENT_SPAN_ID, "{publish:?}");
    assert_eq!(publish.attr("trace_id"), Some(TRACE_ID));
    let deliver = spans
        .iter()
        .find(|s| s.name == "deliver" && s.attr("subject") == Some("traced.otlp"))
        .expect("a deliver span");
    assert_eq!(deliver.trace_id, TRACE_ID);
    assert_eq!(deliver.parent_span_id, publish.span_id, "{deliver:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_the_collector_in_the_publishers_trace_without_secrets() {
    let (collector, addr) = Collector::start();
    let mut p = spawn(&format!("http://{addr}"), 5_000, 100);
    // Across shards: `deliver` opens on the subscriber's shard, still under
    // `publish`.
    traced_exchange(&p, false).await;
    within("control RPC", control_rpc(&p)).await;

    let spans = collector
        .until("connect, auth, publish, deliver, control_rpc", |s| {
            count(s, "connection") >= 2
                && count(s, "auth") >= 2
                && count(s, "publish") >= 1
                && count(s, "deliver") >= 1
                && count(s, "control_rpc") >= 1
        })
        .await;
    assert_correlated(&spans);
    let deliver = spans.iter().find(|s| s.name == "deliver").unwrap();
    let publish = spans.iter().find(|s| s.name == "publish").unwrap();
    assert_ne!(
        deliver.attr("shard"),
        publish.attr("shard"),
        "crossed shards"
    );
    let rpc = spans.iter().find(|s| s.name == "control_rpc").unwrap();
    assert_eq!(rpc.attr("rpc"), Some("GetStatus"), "{rpc:?}");
    let conn = spans.iter().find(|s| s.name == "connection").unwrap();
    assert!(conn.attr("conn").is_some(), "{conn:?}");
    assert!(
        collector
            .service_names()
            .iter()
            .all(|n| n == "arqonbus-otlp-test"),
        "{:?}",
        collector.service_names()
    );

    // No payload, credential or admin token anywhere in what was exported.
    let dump = collector.dump();
    for secret in [
        PAYLOAD.to_owned(),
        p.token("bootstrap.token"),
        p.token("admin.token"),
    ] {
        assert!(!dump.contains(&secret), "{secret} was exported");
    }

    p.signal("-TERM");
    assert!(p.exit_status().success(), "the server exits by itself");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_spans_are_flushed_at_exit() {
    let (collector, addr) = Collector::start();
    // No timed export within the test: only the flush at exit sends spans.
    let mut p = spawn(&format!("http://{addr}"), 5_000, 600_000);
    // On one shard: `deliver` opens inside `publish`.
    traced_exchange(&p, true).await;
    p.signal("-INT");
    assert!(p.exit_status().success());
    let spans = collector.spans();
    assert!(count(&spans, "connection") >= 2, "{spans:?}");
    assert_correlated(&spans);
    let deliver = spans.iter().find(|s| s.name == "deliver").unwrap();
    let publish = spans.iter().find(|s| s.name == "publish").unwrap();
    assert_eq!(deliver.attr("shard"), publish.attr("shard"), "one shard");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_collector_never_holds_the_server_up() {
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let mut p = spawn(&format!("http://{addr}"), 500, 100);
    traced_exchange(&p, true).await;
    p.signal("-INT");
    // Bounded by `exit_status`: the export timeout (500 ms) must not hold
    // the exit up.
    assert!(p.exit_status().success());
}
