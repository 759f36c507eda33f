//! Metrics, health and monitoring over HTTP, served on the control plane's
//! tokio runtime.
//!
//! | path | auth | what |
//! |---|---|---|
//! | `/metrics` | none | Prometheus text: per shard, per tenant (capped), errors by code, latency histograms, control plane, steering |
//! | `/healthz` | none | liveness: the process and its control runtime answer |
//! | `/readyz` | none | readiness with detail: shards answer, listeners bound, store readable, config epoch current; whether the steering program places connections |
//! | `/varz` | admin | server identity, limits, totals |
//! | `/connz` | admin | every connection |
//! | `/subsz` | admin | subscriptions per shard |
//!
//! A scrape asks every shard for a copy of its figures (shards keep them
//! without shared atomics) and merges them here; rendering is a pure function
//! of that copy ([`render`]). Tenant labels are capped: the busiest
//! `max_tenant_labels` tenants are named, the rest are summed as `_other`.
//! Nothing here ever shows a credential or a payload.
//!
//! The listener is plain HTTP (keep it on loopback or a monitoring network):
//! at most [`MAX_CONNECTIONS`] connections at once (more are closed on
//! accept), request headers within [`HEADER_TIMEOUT`], and no connection
//! lives longer than [`CONNECTION_LIFETIME`].

use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arqonbus_controlplane::ControlPlaneHandle;
use arqonbus_controlplane::metrics::{ApplyMetrics, MetricsSnapshot};
use arqonbus_controlplane::store::StoreHealth;
use arqonbus_core::TenantId;
use arqonbus_core::metrics::{ErrorCounts, ShardMetrics, TenantStats};
use arqonbus_core::ops::{ShardStatus, SteeringStatus};
use arqonbus_core::placement::SteeringMode;
use arqonbus_core::snapshot::ConfigSnapshot;
use arqonbus_core::stats::ShardStats;
use arqonbus_dataplane::{DataPlane, SteeringCounters};
use arqonbus_proto::v1::ErrorCode;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use serde::Serialize;

/// The `/metrics` content type (what `prometheus-client` writes).
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Monitoring connections served at once.
pub(crate) const MAX_CONNECTIONS: usize = 64;

/// How long a client may take to send a request's headers (also bounds an
/// idle keep-alive connection).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest one monitoring connection is served (scrapers reconnect).
const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);

/// Upper bounds of the latency histogram buckets, microseconds (exposed
/// in seconds: `le="5e-5"` is 50 µs).
const BUCKETS_MICROS: [u64; 17] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// A metric name, its help text, and how to read it from a value.
type Getter<T> = (&'static str, &'static str, fn(&T) -> u64);

/// The counters of one shard, by metric name.
type ShardCounters = [(&'static str, &'static str, u64); 30];

/// Everything a scrape collected.
#[derive(Debug)]
pub(crate) struct Scrape {
    pub(crate) shards: Vec<ShardMetrics>,
    pub(crate) steering: SteeringCounters,
    pub(crate) control: MetricsSnapshot,
    pub(crate) applies: ApplyMetrics,
    pub(crate) store: StoreHealth,
    pub(crate) snapshot: Arc<ConfigSnapshot>,
    pub(crate) accepting: bool,
    pub(crate) max_tenant_labels: usize,
}

/// Escapes a label value (backslash, quote, newline).
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Writes one scrape through `prometheus-client`: the [`Registry`] holds a
/// single collector that owns the scrape's figures.
#[derive(Debug)]
struct Exposition(Scrape);

impl Collector for Exposition {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        encode_scrape(&self.0, &mut encoder)
    }
}

/// The OpenMetrics text for one scrape.
pub(crate) fn render(scrape: Scrape) -> Result<String, fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Exposition(scrape)));
    let mut out = String::with_capacity(16 * 1024);
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

/// A family's descriptor. Counters are declared without their `_total`
/// suffix, which the encoder appends to each sample (OpenMetrics), so the
/// sample names stay what they always were.
fn family<'e>(
    enc: &'e mut DescriptorEncoder<'_>,
    name: &'e str,
    help: &str,
    kind: MetricType,
) -> Result<MetricEncoder<'e>, fmt::Error> {
    let name = if matches!(kind, MetricType::Counter) {
        name.strip_suffix("_total").unwrap_or(name)
    } else {
        name
    };
    enc.encode_descriptor(name, help, None, kind)
}

fn count(m: &mut MetricEncoder<'_>, v: u64) -> fmt::Result {
    m.encode_counter::<NoLabelSet, u64, u64>(&v, None)
}

fn count_by(m: &mut MetricEncoder<'_>, key: &str, value: &str, v: u64) -> fmt::Result {
    count(&mut m.encode_family(&[(key, value)])?, v)
}

fn level(m: &mut MetricEncoder<'_>, v: u64) -> fmt::Result {
    m.encode_gauge(&v)
}

fn level_by(m: &mut MetricEncoder<'_>, key: &str, value: &str, v: u64) -> fmt::Result {
    level(&mut m.encode_family(&[(key, value)])?, v)
}

fn counter1(enc: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> fmt::Result {
    count(&mut family(enc, name, help, MetricType::Counter)?, v)
}

fn gauge1(enc: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> fmt::Result {
    level(&mut family(enc, name, help, MetricType::Gauge)?, v)
}

/// A latency histogram from an hdrhistogram copy, in seconds.
fn histogram(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    h: &Histogram<u64>,
) -> fmt::Result {
    let mut m = family(enc, name, help, MetricType::Histogram)?;
    // The encoder takes each bucket's own count and accumulates.
    let mut buckets = Vec::with_capacity(BUCKETS_MICROS.len() + 1);
    let mut below = 0;
    for micros in BUCKETS_MICROS {
        let upto = if h.is_empty() {
            0
        } else {
            h.count_between(0, micros)
        };
        buckets.push((micros as f64 / 1e6, upto.saturating_sub(below)));
        below = below.max(upto);
    }
    // `f64::MAX` is the encoder's `+Inf`.
    buckets.push((f64::MAX, h.len().saturating_sub(below)));
    let sum = h.mean() * h.len() as f64 / 1e6;
    m.encode_histogram::<NoLabelSet>(sum, h.len(), &buckets, None)
}

/// The shard counters exported, by metric name.
fn shard_counters(s: &ShardStats) -> ShardCounters {
    [
        (
            "connections_accepted_total",
            "Connections accepted.",
            s.connections_accepted,
        ),
        (
            "connections_closed_total",
            "Connections closed.",
            s.connections_closed,
        ),
        (
            "connections_refused_total",
            "Connections refused (shard full or draining).",
            s.connections_refused,
        ),
        (
            "auth_failures_total",
            "Failed authentications.",
            s.auth_failures,
        ),
        (
            "auth_throttled_total",
            "Logins refused by login throttling before their credential was checked.",
            s.auth_throttled,
        ),
        (
            "tls_failures_total",
            "Failed TLS handshakes.",
            s.tls_failures,
        ),
        (
            "protocol_errors_total",
            "Connections closed for protocol violations.",
            s.protocol_errors,
        ),
        (
            "client_errors_total",
            "Non-fatal errors answered to clients.",
            s.client_errors,
        ),
        (
            "slow_consumers_total",
            "Subscribers cut as slow consumers.",
            s.slow_consumers,
        ),
        (
            "stale_connections_total",
            "Connections closed for unanswered pings.",
            s.stale_connections,
        ),
        (
            "messages_in_total",
            "Messages published by this shard's clients.",
            s.msgs_in,
        ),
        (
            "bytes_in_total",
            "Payload bytes published by this shard's clients.",
            s.bytes_in,
        ),
        (
            "messages_out_total",
            "Messages delivered to this shard's clients.",
            s.msgs_out,
        ),
        (
            "bytes_out_total",
            "Payload bytes delivered to this shard's clients.",
            s.bytes_out,
        ),
        (
            "remote_out_total",
            "Message copies sent to other shards.",
            s.remote_out,
        ),
        (
            "remote_in_total",
            "Message copies received from other shards.",
            s.remote_in,
        ),
        (
            "no_responders_total",
            "Requests answered with NO_RESPONDERS.",
            s.no_responders,
        ),
        (
            "queue_misses_total",
            "Queue-group messages that found no member when they arrived on this shard.",
            s.queue_misses,
        ),
        (
            "stalls_total",
            "Times a subscriber's full outbound buffer paused its tenant's publishers.",
            s.stalls,
        ),
        (
            "ring_full_total",
            "Messages that waited beside a full shard-to-shard ring.",
            s.ring_full,
        ),
        (
            "dropped_total",
            "Messages dropped by the drop-oldest slow-consumer policy.",
            s.dropped,
        ),
        (
            "throttled_total",
            "Publishes that waited for a rate limit or a stall.",
            s.throttled,
        ),
        (
            "permission_denied_total",
            "Publishes and subscriptions refused by a policy.",
            s.permission_denied,
        ),
        (
            "revoked_total",
            "Sessions closed because their credential was revoked or expired.",
            s.revoked,
        ),
        (
            "kicked_total",
            "Connections closed by an operator.",
            s.kicked,
        ),
        (
            "moved_in_total",
            "Connections handed to this shard (their tenant's home) after authentication.",
            s.moved_in,
        ),
        (
            "moved_out_total",
            "Connections this shard handed to their tenant's home shard.",
            s.moved_out,
        ),
        (
            "websocket_upgrades_total",
            "WebSocket upgrades completed on the WebSocket listener.",
            s.ws_upgrades,
        ),
        (
            "websocket_upgrade_failures_total",
            "WebSocket upgrades refused (subprotocol, origin, not an upgrade) or failed.",
            s.ws_upgrade_failures,
        ),
        (
            "websocket_violations_total",
            "WebSocket connections closed for a malformed frame, a text message or an oversized message.",
            s.ws_violations,
        ),
    ]
}

fn code_name(code: usize) -> String {
    i32::try_from(code)
        .ok()
        .and_then(|c| ErrorCode::try_from(c).ok())
        .map_or_else(
            || format!("CODE_{code}"),
            |c| c.as_str_name().trim_start_matches("ERROR_CODE_").to_owned(),
        )
}

/// Per-tenant figures merged over shards, the busiest `cap` named and the
/// rest summed as `_other`.
fn tenants_capped(scrape: &Scrape) -> Vec<(String, TenantStats)> {
    let mut merged: Vec<(TenantId, TenantStats)> = Vec::new();
    for shard in &scrape.shards {
        for (t, s) in &shard.tenants {
            match merged.iter_mut().find(|(id, _)| id == t) {
                Some((_, m)) => m.merge(s),
                None => merged.push((*t, *s)),
            }
        }
    }
    merged.sort_by(|a, b| {
        let load = |s: &TenantStats| s.msgs_in + s.msgs_out;
        load(&b.1).cmp(&load(&a.1)).then(a.0.cmp(&b.0))
    });
    let mut out = Vec::new();
    let mut other = TenantStats::default();
    let mut any_other = false;
    for (i, (id, s)) in merged.into_iter().enumerate() {
        if i < scrape.max_tenant_labels {
            let name = scrape
                .snapshot
                .tenant(id)
                .map_or_else(|| format!("id:{id}"), |t| t.name.to_string());
            out.push((name, s));
        } else {
            other.merge(&s);
            any_other = true;
        }
    }
    if any_other {
        out.push(("_other".to_owned(), other));
    }
    out
}

/// Every family of one scrape, in a fixed order.
fn encode_scrape(scrape: &Scrape, enc: &mut DescriptorEncoder<'_>) -> fmt::Result {
    // Per-shard counters.
    let per_shard: Vec<(String, ShardCounters)> = scrape
        .shards
        .iter()
        .map(|m| (m.shard.to_string(), shard_counters(&m.stats)))
        .collect();
    if let Some((_, first)) = per_shard.first() {
        for (i, (name, help, _)) in first.iter().enumerate() {
            let full = format!("arqonbus_{name}");
            let mut m = family(enc, &full, help, MetricType::Counter)?;
            for (shard, values) in &per_shard {
                count_by(&mut m, "shard", shard, values[i].2)?;
            }
        }
    }
    // Gauges.
    let gauges: [Getter<ShardMetrics>; 9] = [
        ("arqonbus_connections", "Open connections.", |m| {
            m.stats.connections
        }),
        (
            "arqonbus_websocket_connections",
            "Open connections of the WebSocket edge (also counted in arqonbus_connections).",
            |m| m.stats.ws_connections,
        ),
        ("arqonbus_subscriptions", "Local subscriptions.", |m| {
            m.stats.subscriptions
        }),
        (
            "arqonbus_outbound_queue_bytes",
            "Memory held by frames queued for clients (bytes plus per-frame bookkeeping).",
            |m| m.outbound_bytes,
        ),
        (
            "arqonbus_ring_messages",
            "Messages waiting in outgoing shard rings.",
            |m| m.stats.ring_used,
        ),
        (
            "arqonbus_presence_subjects",
            "Subjects with presence members (the shard's replica of all shards) or watches.",
            |m| m.stats.presence_subjects,
        ),
        (
            "arqonbus_presence_members",
            "Presence members of all shards, as the shard's replica sees them.",
            |m| m.stats.presence_members,
        ),
        (
            "arqonbus_presence_local_members",
            "Presence members whose connection is on the shard.",
            |m| m.stats.presence_local_members,
        ),
        (
            "arqonbus_presence_watches",
            "Presence watches of the shard's connections.",
            |m| m.stats.presence_watches,
        ),
    ];
    for (name, help, get) in gauges {
        let mut f = family(enc, name, help, MetricType::Gauge)?;
        for m in &scrape.shards {
            level_by(&mut f, "shard", &m.shard.to_string(), get(m))?;
        }
    }
    // Errors by code, all shards together.
    let mut errors = ErrorCounts::default();
    for m in &scrape.shards {
        errors.merge(&m.errors);
    }
    {
        let mut f = family(
            enc,
            "arqonbus_errors_total",
            "Error frames sent to clients, by code.",
            MetricType::Counter,
        )?;
        for (code, n) in errors.0.iter().enumerate() {
            if *n > 0 {
                count_by(&mut f, "code", &code_name(code), *n)?;
            }
        }
    }
    // Presence refusals at a bound, all shards together.
    {
        let mut total = ShardStats::default();
        for m in &scrape.shards {
            total.merge(&m.stats);
        }
        let mut f = family(
            enc,
            "arqonbus_presence_refused_total",
            "Presence tracks and watches refused at a bound, by bound.",
            MetricType::Counter,
        )?;
        for (reason, n) in [
            ("subject_full", total.presence_refused_subject_full),
            ("tenant_full", total.presence_refused_tenant_full),
            ("watches", total.presence_refused_watches),
        ] {
            count_by(&mut f, "reason", reason, n)?;
        }
    }
    // Per tenant.
    let tenants = tenants_capped(scrape);
    let per_tenant: [Getter<TenantStats>; 7] = [
        (
            "arqonbus_tenant_messages_in_total",
            "Messages published, by tenant.",
            |t| t.msgs_in,
        ),
        (
            "arqonbus_tenant_bytes_in_total",
            "Payload bytes published, by tenant.",
            |t| t.bytes_in,
        ),
        (
            "arqonbus_tenant_messages_out_total",
            "Messages delivered, by tenant.",
            |t| t.msgs_out,
        ),
        (
            "arqonbus_tenant_bytes_out_total",
            "Payload bytes delivered, by tenant.",
            |t| t.bytes_out,
        ),
        (
            "arqonbus_tenant_slow_consumers_total",
            "Subscribers cut as slow consumers, by tenant.",
            |t| t.slow_consumers,
        ),
        (
            "arqonbus_tenant_quota_rejections_total",
            "Quota and policy rejections and rate-limit waits, by tenant.",
            |t| t.quota_rejections,
        ),
        (
            "arqonbus_tenant_connections",
            "Open connections, by tenant.",
            |t| t.connections,
        ),
    ];
    for (name, help, get) in per_tenant {
        let is_counter = name.ends_with("_total");
        let kind = if is_counter {
            MetricType::Counter
        } else {
            MetricType::Gauge
        };
        let mut f = family(enc, name, help, kind)?;
        for (tenant, s) in &tenants {
            // The encoder writes label values as given: escape them here.
            let tenant = label(tenant);
            if is_counter {
                count_by(&mut f, "tenant", &tenant, get(s))?;
            } else {
                level_by(&mut f, "tenant", &tenant, get(s))?;
            }
        }
    }
    // Latencies, all shards merged.
    let mut deliver = arqonbus_core::metrics::latency_histogram();
    let mut handshake = arqonbus_core::metrics::latency_histogram();
    for m in &scrape.shards {
        let _ = deliver.add(&m.deliver_latency);
        let _ = handshake.add(&m.handshake_latency);
    }
    histogram(
        enc,
        "arqonbus_publish_to_deliver_seconds",
        "Sampled time from reading a publish to queueing it for a subscriber.",
        &deliver,
    )?;
    histogram(
        enc,
        "arqonbus_handshake_seconds",
        "Time from accept to Welcome (TLS handshake and authentication).",
        &handshake,
    )?;
    histogram(
        enc,
        "arqonbus_control_rpc_seconds",
        "Control API call latency.",
        &scrape.control.rpc_latency,
    )?;
    histogram(
        enc,
        "arqonbus_config_apply_duration_seconds",
        "How long a configuration snapshot push waited for the shards to apply it (confirmed or not).",
        &scrape.applies.latency,
    )?;
    // Control plane.
    let c = &scrape.control;
    {
        let mut f = family(
            enc,
            "arqonbus_control_rpcs_total",
            "Control API calls, by outcome (client_error: the request was refused; server_error: the node failed).",
            MetricType::Counter,
        )?;
        for (outcome, n) in [
            ("ok", c.rpc_ok),
            ("client_error", c.rpc_client_errors),
            ("server_error", c.rpc_server_errors),
        ] {
            count_by(&mut f, "outcome", outcome, n)?;
        }
    }
    counter1(
        enc,
        "arqonbus_control_auth_failures_total",
        "Control and monitoring requests without a valid admin credential.",
        c.auth_failures,
    )?;
    counter1(
        enc,
        "arqonbus_config_snapshots_total",
        "Configuration snapshots pushed to the shards.",
        c.snapshots_published,
    )?;
    counter1(
        enc,
        "arqonbus_config_snapshots_refusing_total",
        "Snapshots pushed that refuse new sessions (the store failed: fail closed).",
        c.snapshots_refusing,
    )?;
    {
        let mut f = family(
            enc,
            "arqonbus_config_applies_total",
            "Configuration snapshot pushes, by outcome (unconfirmed: a shard did not apply it in time).",
            MetricType::Counter,
        )?;
        let a = &scrape.applies;
        count_by(&mut f, "outcome", "confirmed", a.confirmed)?;
        count_by(&mut f, "outcome", "unconfirmed", a.unconfirmed)?;
    }
    gauge1(
        enc,
        "arqonbus_store_failed",
        "1 while the control store is failed or closed after an I/O error and not reopened yet.",
        u64::from(scrape.store.failed),
    )?;
    counter1(
        enc,
        "arqonbus_store_reopen_attempts_total",
        "Attempts to reopen the control store after an I/O error (Reload, SIGHUP, the reopen task).",
        scrape.store.reopen_attempts,
    )?;
    counter1(
        enc,
        "arqonbus_store_reopens_total",
        "Successful reopens of the control store.",
        scrape.store.reopens,
    )?;
    gauge1(
        enc,
        "arqonbus_config_epoch",
        "The newest configuration epoch.",
        scrape.snapshot.epoch(),
    )?;
    gauge1(
        enc,
        "arqonbus_accepting_sessions",
        "1 when new sessions are accepted, 0 when failed closed.",
        u64::from(scrape.accepting),
    )?;
    encode_steering(enc, &scrape.steering)
}

/// The steering program's gauges and counters.
fn encode_steering(enc: &mut DescriptorEncoder<'_>, s: &SteeringCounters) -> fmt::Result {
    gauge1(
        enc,
        "arqonbus_steering_active",
        "1 when the SK_REUSEPORT program places new connections, 0 when the kernel's hash does.",
        u64::from(s.active),
    )?;
    {
        let mut f = family(
            enc,
            "arqonbus_steering_mode",
            "The steering mode in force (1 for the mode named).",
            MetricType::Gauge,
        )?;
        for m in SteeringMode::ALL {
            level_by(&mut f, "mode", &m.to_string(), u64::from(m == s.mode))?;
        }
    }
    gauge1(
        enc,
        "arqonbus_steering_draining_shards",
        "Shards drained (new connections steered away).",
        u64::from(s.draining.count_ones()),
    )?;
    counter1(
        enc,
        "arqonbus_steering_selected_total",
        "Connections the program sent to a shard.",
        s.selected,
    )?;
    {
        let mut f = family(
            enc,
            "arqonbus_steering_fallbacks_total",
            "Connections the program left to the kernel's hash, by reason.",
            MetricType::Counter,
        )?;
        count_by(&mut f, "reason", "no_socket", s.fallback_no_socket)?;
        count_by(&mut f, "reason", "all_drained", s.fallback_all_drained)?;
    }
    {
        let mut f = family(
            enc,
            "arqonbus_steering_hits_total",
            "Connections placed by an affinity rule or by the SYN's CPU.",
            MetricType::Counter,
        )?;
        count_by(&mut f, "rule", "affinity", s.affinity_hits)?;
        count_by(&mut f, "rule", "cpu", s.cpu_hits)?;
    }
    counter1(
        enc,
        "arqonbus_tenants_rehomed_total",
        "Tenants given a new home because their shard ran hot.",
        s.rehomed,
    )?;
    counter1(
        enc,
        "arqonbus_steering_map_errors_total",
        "Updates of the program's maps that failed.",
        s.map_errors,
    )
}

/// What `/readyz` found.
#[derive(Debug)]
pub(crate) struct Readiness {
    pub(crate) shards_running: bool,
    pub(crate) listeners_bound: bool,
    pub(crate) store_readable: bool,
    pub(crate) config_current: bool,
    pub(crate) detail: String,
}

impl Readiness {
    pub(crate) fn ready(&self) -> bool {
        self.shards_running && self.listeners_bound && self.store_readable && self.config_current
    }

    /// The `/readyz` body.
    fn body(&self) -> ReadyzBody<'_> {
        ReadyzBody {
            ready: self.ready(),
            checks: ReadyzChecks {
                shards_running: self.shards_running,
                listeners_bound: self.listeners_bound,
                store_readable: self.store_readable,
                config_current: self.config_current,
            },
            detail: &self.detail,
        }
    }
}

/// `/readyz`.
#[derive(Debug, Serialize)]
struct ReadyzBody<'a> {
    ready: bool,
    checks: ReadyzChecks,
    detail: &'a str,
}

/// `/readyz` checks, one flag each.
#[derive(Debug, Serialize)]
#[allow(clippy::struct_field_names, reason = "the JSON keys")]
struct ReadyzChecks {
    shards_running: bool,
    listeners_bound: bool,
    store_readable: bool,
    config_current: bool,
}

/// `/varz`.
#[derive(Debug, Serialize)]
struct Varz<'a> {
    server_id: &'a str,
    version: &'static str,
    uptime_secs: u64,
    shards: usize,
    data_addr: String,
    metrics_addr: String,
    config_epoch: u64,
    connections: u64,
    subscriptions: u64,
    msgs_in: u64,
    bytes_in: u64,
    msgs_out: u64,
    bytes_out: u64,
    slow_consumers: u64,
    limits: VarzLimits,
}

/// `/varz` limits.
#[derive(Debug, Serialize)]
struct VarzLimits {
    max_payload: u64,
    max_subscriptions: u64,
    max_pending_bytes: u64,
    ping_interval_ms: u64,
    max_connections_per_shard: u64,
}

/// `/connz`.
#[derive(Debug, Serialize)]
struct Connz<'a> {
    connections: Vec<Connection<'a>>,
}

/// Serialises an id as a JSON string (see [`Connection`]).
#[allow(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's serialize_with passes a reference"
)]
fn id_string<S: serde::Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// One `/connz` connection (no credential, no payload).
#[derive(Debug, Serialize)]
struct Connection<'a> {
    /// A string: ids of shard 1 and above exceed 2^53, which JSON numbers
    /// (JavaScript, jq) cannot hold exactly.
    #[serde(serialize_with = "id_string")]
    id: u64,
    shard: u16,
    #[serde(serialize_with = "id_string")]
    tenant: u64,
    principal: &'a str,
    client_name: &'a str,
    client_kind: &'a str,
    remote_addr: &'a str,
    subscriptions: u32,
    msgs_in: u64,
    bytes_in: u64,
    msgs_out: u64,
    bytes_out: u64,
    connected_at_unix_ms: i64,
}

/// `/subsz`.
#[derive(Debug, Serialize)]
struct Subsz {
    subscriptions: u64,
    shards: Vec<ShardSubs>,
}

/// `/subsz` per shard.
#[derive(Debug, Serialize)]
struct ShardSubs {
    shard: u16,
    subscriptions: u64,
}

/// Decides readiness from the shards' status and the control plane's view.
pub(crate) fn readiness(
    status: &Result<Vec<ShardStatus>, String>,
    accepting: bool,
    reason: Option<&str>,
    epoch: u64,
) -> Readiness {
    let mut detail = Vec::new();
    let (shards_running, listeners_bound, config_current) = match status {
        Ok(shards) => {
            let draining: Vec<String> = shards
                .iter()
                .filter(|s| s.draining)
                .map(|s| s.id.to_string())
                .collect();
            let stale: Vec<String> = shards
                .iter()
                .filter(|s| s.config_epoch < epoch)
                .map(|s| format!("{} at {}", s.id, s.config_epoch))
                .collect();
            if !draining.is_empty() {
                detail.push(format!("draining shards: {}", draining.join(", ")));
            }
            if !stale.is_empty() {
                detail.push(format!("shards behind epoch {epoch}: {}", stale.join(", ")));
            }
            (true, draining.is_empty(), stale.is_empty())
        }
        Err(e) => {
            detail.push(format!("shards: {e}"));
            (false, false, false)
        }
    };
    if !accepting {
        detail.push(format!(
            "refusing new sessions: {}",
            reason.unwrap_or("configuration unavailable")
        ));
    }
    Readiness {
        shards_running,
        listeners_bound,
        store_readable: accepting,
        config_current,
        detail: detail.join("; "),
    }
}

/// What `/readyz` says about steering when the program is not attached (the
/// node serves, but the kernel's hash places connections).
pub(crate) fn steering_note(s: &SteeringStatus) -> Option<String> {
    (!s.active).then(|| {
        format!(
            "steering program not attached ({}): the kernel's hash places connections",
            s.fallback_reason.as_deref().unwrap_or("unknown reason")
        )
    })
}

/// What the HTTP handlers need.
pub(crate) struct Monitor {
    pub(crate) dataplane: Arc<DataPlane>,
    pub(crate) control: ControlPlaneHandle,
    pub(crate) max_tenant_labels: usize,
    pub(crate) server_id: String,
    pub(crate) started: Instant,
    pub(crate) listen: SocketAddr,
}

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, content_type: &str, body: String) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

/// A JSON reply; a body that cannot be written is a 500, never a panic.
fn json_reply(status: StatusCode, value: &impl Serialize) -> Reply {
    match serde_json::to_string(value) {
        Ok(body) => reply(status, "application/json", body),
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("cannot encode the reply: {e}\n"),
        ),
    }
}

impl Monitor {
    /// Runs `f` against the data plane off the runtime's thread.
    async fn dp<T: Send + 'static>(
        &self,
        f: impl FnOnce(&DataPlane) -> Result<T, arqonbus_dataplane::ControlError> + Send + 'static,
    ) -> Result<T, String> {
        let dp = self.dataplane.clone();
        tokio::task::spawn_blocking(move || f(&dp).map_err(|e| e.to_string()))
            .await
            .map_err(|e| e.to_string())?
    }

    async fn scrape(&self) -> Result<Scrape, String> {
        let shards = self.dp(DataPlane::metrics).await?;
        let steering = self.dp(|d| Ok(d.steering_counters())).await?;
        let r = self.control.readiness();
        Ok(Scrape {
            shards,
            steering,
            control: self.control.metrics(),
            applies: self.control.apply_metrics(),
            store: self.control.store_health(),
            snapshot: self.control.current_snapshot(),
            accepting: r.accepting,
            max_tenant_labels: self.max_tenant_labels,
        })
    }

    async fn ready(&self) -> Readiness {
        let status = self.dp(DataPlane::status).await;
        let steering = self.dataplane.steering_status();
        let r = self.control.readiness();
        let epoch = self.control.current_snapshot().epoch();
        let mut ready = readiness(&status, r.accepting, r.reason.as_deref(), epoch);
        if let Some(why) = steering_note(&steering) {
            if !ready.detail.is_empty() {
                ready.detail.push_str("; ");
            }
            ready.detail.push_str(&why);
        }
        ready
    }

    async fn handle(&self, req: &Request<Incoming>) -> Reply {
        if req.method() != Method::GET {
            return reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "GET only\n".into(),
            );
        }
        let path = req.uri().path();
        match path {
            "/metrics" => match self.scrape().await {
                Ok(s) => match render(s) {
                    Ok(text) => reply(StatusCode::OK, OPENMETRICS, text),
                    Err(e) => reply(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "text/plain",
                        format!("cannot encode the metrics: {e}\n"),
                    ),
                },
                Err(e) => reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("{e}\n"),
                ),
            },
            "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
            "/readyz" => {
                let r = self.ready().await;
                let code = if r.ready() {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                json_reply(code, &r.body())
            }
            "/varz" | "/connz" | "/subsz" => {
                let auth = req
                    .headers()
                    .get(hyper::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok());
                if !self.control.is_admin(auth) {
                    tracing::warn!(
                        path,
                        "monitoring request refused: no valid admin credential"
                    );
                    return reply(
                        StatusCode::UNAUTHORIZED,
                        "text/plain",
                        "admin credential required\n".into(),
                    );
                }
                match path {
                    "/varz" => self.varz().await,
                    "/connz" => self.connz().await,
                    _ => self.subsz().await,
                }
            }
            _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
        }
    }

    async fn varz(&self) -> Reply {
        let t = match self.dp(DataPlane::total_stats).await {
            Ok(t) => t,
            Err(e) => {
                return reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("{e}\n"),
                );
            }
        };
        let snap = self.control.current_snapshot();
        let l = snap.limits();
        json_reply(
            StatusCode::OK,
            &Varz {
                server_id: &self.server_id,
                version: env!("CARGO_PKG_VERSION"),
                uptime_secs: self.started.elapsed().as_secs(),
                shards: self.dataplane.shards(),
                data_addr: self.dataplane.local_addr().to_string(),
                metrics_addr: self.listen.to_string(),
                config_epoch: snap.epoch(),
                connections: t.connections,
                subscriptions: t.subscriptions,
                msgs_in: t.msgs_in,
                bytes_in: t.bytes_in,
                msgs_out: t.msgs_out,
                bytes_out: t.bytes_out,
                slow_consumers: t.slow_consumers,
                limits: VarzLimits {
                    max_payload: l.max_payload.into(),
                    max_subscriptions: l.max_subscriptions.into(),
                    max_pending_bytes: l.max_pending_bytes,
                    ping_interval_ms: l.ping_interval_ms,
                    max_connections_per_shard: l.max_connections_per_shard.into(),
                },
            },
        )
    }

    async fn connz(&self) -> Reply {
        let conns = match self.dp(DataPlane::connections).await {
            Ok(c) => c,
            Err(e) => {
                return reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("{e}\n"),
                );
            }
        };
        let connections = conns
            .iter()
            .map(|c| Connection {
                id: c.id,
                shard: c.shard,
                tenant: c.tenant.map_or(0, |t| t.0),
                principal: &c.principal_name,
                client_name: &c.client_name,
                client_kind: &c.client_kind,
                remote_addr: &c.remote_addr,
                subscriptions: c.subscriptions,
                msgs_in: c.msgs_in,
                bytes_in: c.bytes_in,
                msgs_out: c.msgs_out,
                bytes_out: c.bytes_out,
                connected_at_unix_ms: c.connected_at_unix_ms,
            })
            .collect();
        json_reply(StatusCode::OK, &Connz { connections })
    }

    async fn subsz(&self) -> Reply {
        let status = match self.dp(DataPlane::status).await {
            Ok(s) => s,
            Err(e) => {
                return reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("{e}\n"),
                );
            }
        };
        json_reply(
            StatusCode::OK,
            &Subsz {
                subscriptions: status.iter().map(|s| s.subscriptions).sum(),
                shards: status
                    .iter()
                    .map(|s| ShardSubs {
                        shard: s.id,
                        subscriptions: s.subscriptions,
                    })
                    .collect(),
            },
        )
    }
}

/// Serves the endpoints on `listener` until `shutdown`.
pub(crate) async fn serve(
    monitor: Arc<Monitor>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            a = listener.accept() => a,
        };
        let Ok((stream, peer)) = accepted else {
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, limit = MAX_CONNECTIONS, "monitoring connection refused: too many open");
            continue;
        };
        let monitor = monitor.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let monitor = monitor.clone();
                async move { Ok::<_, Infallible>(monitor.handle(&req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "monitoring connection ended"),
                Err(_) => tracing::debug!("monitoring connection reached its lifetime"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use arqonbus_core::limits::Limits;
    use arqonbus_core::snapshot::{Quotas, TenantEntry};

    use super::*;

    fn shard(id: u16, tenants: Vec<(u64, u64)>) -> ShardMetrics {
        let mut deliver = arqonbus_core::metrics::latency_histogram();
        deliver.record(120).unwrap();
        deliver.record(3_000).unwrap();
        let mut errors = ErrorCounts::default();
        errors.count(ErrorCode::SlowConsumer as i32);
        ShardMetrics {
            shard: id,
            stats: ShardStats {
                msgs_in: 5,
                connections: 2,
                ..ShardStats::default()
            },
            errors,
            tenants: tenants
                .into_iter()
                .map(|(t, n)| {
                    (
                        TenantId(t),
                        TenantStats {
                            msgs_in: n,
                            ..TenantStats::default()
                        },
                    )
                })
                .collect(),
            outbound_bytes: 7,
            deliver_latency: deliver,
            handshake_latency: arqonbus_core::metrics::latency_histogram(),
        }
    }

    fn scrape(max: usize) -> Scrape {
        let mut snap = ConfigSnapshot::new(3, Limits::default());
        let mut applies = arqonbus_core::metrics::latency_histogram();
        applies.record(800).unwrap();
        for (id, name) in [(1, "acme"), (2, "beta\"q")] {
            snap.insert_tenant(TenantEntry {
                id: TenantId(id),
                name: name.into(),
                quotas: Quotas::default(),
                verify_key: None,
                placement: arqonbus_core::placement::TenantPlacement::default(),
            });
        }
        Scrape {
            shards: vec![
                shard(0, vec![(1, 10), (2, 1)]),
                shard(1, vec![(1, 5), (3, 4)]),
            ],
            steering: SteeringCounters {
                active: true,
                mode: SteeringMode::Balance,
                draining: 0b10,
                selected: 7,
                fallback_no_socket: 1,
                ..SteeringCounters::default()
            },
            control: MetricsSnapshot {
                rpc_ok: 4,
                rpc_client_errors: 1,
                rpc_server_errors: 2,
                auth_failures: 2,
                snapshots_published: 3,
                snapshots_refusing: 0,
                rpc_latency: arqonbus_core::metrics::latency_histogram(),
            },
            applies: ApplyMetrics {
                confirmed: 6,
                unconfirmed: 1,
                latency: applies,
            },
            store: StoreHealth {
                failed: true,
                reopen_attempts: 3,
                reopens: 2,
                last_error: Some("disk full".into()),
            },
            snapshot: Arc::new(snap),
            accepting: true,
            max_tenant_labels: max,
        }
    }

    #[test]
    fn renders_shards_tenants_errors_and_histograms() {
        let text = render(scrape(100)).unwrap();
        assert!(text.contains("arqonbus_messages_in_total{shard=\"0\"} 5"));
        assert!(text.contains("arqonbus_connections{shard=\"1\"} 2"));
        assert!(text.contains("arqonbus_steering_active 1"));
        assert!(text.contains("arqonbus_steering_mode{mode=\"balance\"} 1"));
        assert!(text.contains("arqonbus_steering_mode{mode=\"hash\"} 0"));
        assert!(text.contains("arqonbus_steering_draining_shards 1"));
        assert!(text.contains("arqonbus_steering_selected_total 7"));
        assert!(text.contains("arqonbus_steering_fallbacks_total{reason=\"no_socket\"} 1"));
        assert!(text.contains("arqonbus_moved_in_total{shard=\"1\"} 0"));
        assert!(text.contains("arqonbus_errors_total{code=\"SLOW_CONSUMER\"} 2"));
        assert!(text.contains("arqonbus_tenant_messages_in_total{tenant=\"acme\"} 15"));
        assert!(text.contains("arqonbus_tenant_messages_in_total{tenant=\"beta\\\"q\"} 1"));
        assert!(text.contains("arqonbus_tenant_messages_in_total{tenant=\"id:3\"} 4"));
        assert!(text.contains("arqonbus_publish_to_deliver_seconds_bucket{le=\"0.00025\"} 2"));
        assert!(text.contains("arqonbus_publish_to_deliver_seconds_bucket{le=\"+Inf\"} 4"));
        assert!(text.contains("arqonbus_publish_to_deliver_seconds_count 4"));
        assert!(text.contains("arqonbus_config_epoch 3"));
        assert!(text.contains("arqonbus_control_rpcs_total{outcome=\"client_error\"} 1"));
        assert!(text.contains("arqonbus_control_rpcs_total{outcome=\"server_error\"} 2"));
        assert!(text.contains("arqonbus_queue_misses_total{shard=\"0\"}"));
        assert!(text.contains("arqonbus_config_snapshots_refusing_total 0"));
        assert!(text.contains("arqonbus_config_applies_total{outcome=\"confirmed\"} 6"));
        assert!(text.contains("arqonbus_config_applies_total{outcome=\"unconfirmed\"} 1"));
        assert!(text.contains("arqonbus_config_apply_duration_seconds_bucket{le=\"0.0005\"} 0"));
        assert!(text.contains("arqonbus_config_apply_duration_seconds_bucket{le=\"0.001\"} 1"));
        assert!(text.contains("arqonbus_config_apply_duration_seconds_count 1"));
        assert!(text.contains("arqonbus_store_failed 1"));
        assert!(text.contains("arqonbus_store_reopen_attempts_total 3"));
        assert!(text.contains("arqonbus_store_reopens_total 2"));
        assert!(!text.contains("disk full"));
        // OpenMetrics: a counter family is declared without `_total`, and
        // the exposition ends with EOF.
        assert!(text.contains("# TYPE arqonbus_messages_in counter\n"));
        assert!(text.ends_with("# EOF\n"));
        // Every sample line is "name{labels} value" or "name value".
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }

    #[test]
    fn tenant_labels_are_capped() {
        let text = render(scrape(1)).unwrap();
        assert!(text.contains("arqonbus_tenant_messages_in_total{tenant=\"acme\"} 15"));
        assert!(text.contains("arqonbus_tenant_messages_in_total{tenant=\"_other\"} 5"));
        assert!(!text.contains("id:3"));
    }

    #[test]
    fn readiness_names_what_is_wrong() {
        let ok = vec![
            ShardStatus {
                id: 0,
                config_epoch: 3,
                ..ShardStatus::default()
            },
            ShardStatus {
                id: 1,
                config_epoch: 3,
                ..ShardStatus::default()
            },
        ];
        assert!(readiness(&Ok(ok.clone()), true, None, 3).ready());
        let fallback = SteeringStatus {
            active: false,
            fallback_reason: Some("no CAP_BPF".into()),
            ..SteeringStatus::default()
        };
        assert_eq!(
            steering_note(&fallback).as_deref(),
            Some(
                "steering program not attached (no CAP_BPF): the kernel's hash places connections"
            )
        );
        let attached = SteeringStatus {
            active: true,
            ..SteeringStatus::default()
        };
        assert_eq!(steering_note(&attached), None);
        let mut draining = ok.clone();
        draining[1].draining = true;
        let r = readiness(&Ok(draining), true, None, 3);
        assert!(!r.ready() && r.detail.contains("draining shards: 1"));
        let r = readiness(&Ok(ok.clone()), true, None, 4);
        assert!(!r.config_current && r.detail.contains("behind epoch 4"));
        let r = readiness(&Ok(ok), false, Some("store unreadable"), 3);
        assert!(
            !r.store_readable
                && serde_json::to_string(&r.body())
                    .unwrap()
                    .contains("store unreadable")
        );
        let r = readiness(&Err("shard 1 did not answer".into()), true, None, 3);
        assert!(!r.shards_running);
    }
}
