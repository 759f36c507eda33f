//! The server's configuration file (TOML), with defaults for every key.
//!
//! [`Config::load`] parses and [`Config::validate`] checks; both return typed
//! errors that name the offending key. Command-line flags override the file
//! through [`Overrides`]. A documented sample is `deploy/arqonbus.toml`, and a
//! test loads it so it cannot rot.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use arqonbus_core::ShardId;
use arqonbus_core::limits::{Limits, LimitsError};
use arqonbus_core::placement::{
    AffinityRule, MAX_AFFINITY_RULES, SteeringConfig, SteeringMode, TenantPlacement,
};
use serde::{Deserialize, Serialize};

/// Default port of the client protocol.
pub const DEFAULT_PORT: u16 = 7420;
/// Default port of the control API.
pub const DEFAULT_CONTROL_PORT: u16 = 7421;
/// Default port of the metrics and health endpoints.
pub const DEFAULT_METRICS_PORT: u16 = 7422;
/// Default port of the WebSocket listener (browsers).
pub const DEFAULT_WEBSOCKET_PORT: u16 = 7423;

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where generated TLS material, tenants and credentials live.
    pub data_dir: PathBuf,
    /// The data plane.
    pub server: ServerSection,
    /// TLS for client connections.
    pub tls: TlsSection,
    /// The control API.
    pub control: ControlSection,
    /// Metrics, health and monitoring endpoints.
    pub metrics: MetricsSection,
    /// Per-connection limits.
    pub limits: Limits,
    /// Logging.
    pub log: LogSection,
    /// Trace export.
    pub tracing: TracingSection,
    /// How new connections are placed on shards.
    pub steering: SteeringSection,
    /// The WebSocket listener for browsers (`specs/websocket.md`).
    pub websocket: WebSocketSection,
    /// Tenants declared in the file, besides those in the data directory.
    pub tenants: Vec<TenantConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("arqonbus-data"),
            server: ServerSection::default(),
            tls: TlsSection::default(),
            control: ControlSection::default(),
            metrics: MetricsSection::default(),
            limits: Limits::default(),
            log: LogSection::default(),
            tracing: TracingSection::default(),
            steering: SteeringSection::default(),
            websocket: WebSocketSection::default(),
            tenants: Vec::new(),
        }
    }
}

/// `[server]`: the data plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSection {
    /// Address clients connect to.
    pub listen: SocketAddr,
    /// Shards (one pinned executor each); 0 means one per available CPU.
    pub shards: usize,
    /// Pin shard `i` to CPU `i` (mod the CPU count).
    pub pin_cores: bool,
    /// Pinned io_uring memory per shard, bytes.
    pub io_memory: usize,
    /// Slots in each ring between two shards.
    pub ring_capacity: usize,
    /// Messages allowed beside a full ring before publishers are paused.
    pub overflow_limit: usize,
    /// Socket read size, bytes.
    pub read_buffer: usize,
    /// Busy-poll this long before an idle shard parks (0: park at once).
    pub busy_poll_us: u64,
    /// Timer granularity for keep-alives and timeouts, milliseconds.
    pub tick_ms: u64,
    /// On SIGTERM, clients are told to move and closed over this window,
    /// milliseconds (lame duck); the process exits within the window plus
    /// `limits.close_grace_ms`.
    pub lame_duck_window_ms: u64,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)),
            shards: 0,
            pin_cores: true,
            io_memory: 128 * 1024,
            ring_capacity: 8 * 1024,
            overflow_limit: 64 * 1024,
            read_buffer: 64 * 1024,
            busy_poll_us: 0,
            tick_ms: 250,
            lame_duck_window_ms: 10_000,
        }
    }
}

/// `[steering]`: the SK_REUSEPORT program that places new connections
/// (`specs/placement.md`). The control API can change the mode and the
/// affinity rules at run time; what it sets is stored and wins over this.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SteeringSection {
    /// `balance` (fewest live connections), `hash` (the kernel's hash),
    /// `cpu` (the shard on the CPU that took the SYN) or `affinity`
    /// (client prefix rules, else balance).
    pub mode: String,
    /// Refuse to start when the program cannot be attached (no CAP_BPF),
    /// instead of warning and leaving placement to the kernel's hash.
    pub required: bool,
    /// Client prefixes pinned to shards, for `affinity`.
    pub affinity: Vec<AffinityConfig>,
    /// The placement given to tenants created without one (the bootstrap
    /// tenant, configured and imported tenants, the control API's
    /// `CreateTenant` with no placement): `home` (one home shard, chosen
    /// least-loaded: a tenant's traffic stays on one core) or `spread`
    /// (stay where steering put them). Tenants keep the placement they were
    /// created with.
    pub default_placement: String,
    /// A shard holding this many more open connections than the
    /// least-loaded one (and over 1.25 × the mean) gives one home tenant a
    /// new home; its connections there get a `Drain` notice and reconnect
    /// to it. 0 turns moving tenants off.
    pub rebalance_min_gap: u64,
}

/// One affinity rule: clients in `prefix` go to `shard`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AffinityConfig {
    /// `ADDRESS/LEN`, IPv4 or IPv6.
    pub prefix: String,
    /// The shard.
    pub shard: u16,
}

impl Default for SteeringSection {
    fn default() -> Self {
        Self {
            mode: SteeringMode::default().as_str().to_owned(),
            required: false,
            affinity: Vec::new(),
            default_placement: TenantPlacement::default().to_string(),
            rebalance_min_gap: 64,
        }
    }
}

impl SteeringSection {
    /// The placement of tenants created without one: `home` or `spread`.
    pub fn default_placement(&self) -> Result<TenantPlacement, ConfigError> {
        match self.default_placement.parse::<TenantPlacement>() {
            Ok(p @ (TenantPlacement::Home | TenantPlacement::Spread)) => Ok(p),
            _ => Err(invalid(
                "steering.default_placement",
                format!("{:?} is not home or spread", self.default_placement),
            )),
        }
    }

    /// The steering this section describes (shard numbers are checked
    /// against the shard count when the data plane starts).
    pub fn to_config(&self) -> Result<SteeringConfig, ConfigError> {
        let mode = self
            .mode
            .parse::<SteeringMode>()
            .map_err(|e| invalid("steering.mode", e.to_string()))?;
        let affinity = self
            .affinity
            .iter()
            .map(|a| AffinityRule::parse(&a.prefix, ShardId(a.shard)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid("steering.affinity.prefix", e.to_string()))?;
        if affinity.len() > MAX_AFFINITY_RULES {
            return Err(invalid(
                "steering.affinity",
                format!("at most {MAX_AFFINITY_RULES} rules"),
            ));
        }
        Ok(SteeringConfig { mode, affinity })
    }
}

/// `[tls]`: TLS 1.3 for client connections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSection {
    /// Serve TLS. Turning it off serves plaintext and is logged as a warning.
    pub enabled: bool,
    /// PEM certificate chain; empty means the one generated in the data dir.
    pub cert: Option<PathBuf>,
    /// PEM private key for `cert`.
    pub key: Option<PathBuf>,
    /// Extra DNS names or IPs for the generated server certificate.
    pub extra_names: Vec<String>,
}

impl Default for TlsSection {
    fn default() -> Self {
        Self {
            enabled: true,
            cert: None,
            key: None,
            extra_names: Vec::new(),
        }
    }
}

/// `[control]`: the gRPC control API (always TLS, admin credential).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControlSection {
    /// Serve the control API. Without it tenants and credentials come only
    /// from `tenants.toml` and the `[[tenants]]` of this file, fixed at start.
    pub enabled: bool,
    /// Where the control API listens.
    pub listen: SocketAddr,
    /// PEM CA that operators' client certificates must chain to (mTLS);
    /// unset: the admin token alone.
    pub client_ca: Option<PathBuf>,
    /// CPUs the control plane's threads (control API, store, snapshot
    /// builds, monitoring) run on; empty: any CPU. The latency profile
    /// gives them the CPU no shard is pinned to.
    pub cpus: Vec<usize>,
}

impl Default for ControlSection {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_CONTROL_PORT)),
            client_ca: None,
            cpus: Vec::new(),
        }
    }
}

/// `[metrics]`: Prometheus metrics, health and monitoring over HTTP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSection {
    /// Serve `/metrics`, `/healthz`, `/readyz`, `/varz`, `/connz`, `/subsz`
    /// and sample latencies. Counters are kept either way.
    pub enabled: bool,
    /// Where the HTTP listener binds (plain HTTP: keep it on loopback or a
    /// monitoring network).
    pub listen: SocketAddr,
    /// Tenants that get their own label; the rest are summed as `_other`.
    pub max_tenant_labels: usize,
    /// Time one published message in this many (publish-to-deliver
    /// histogram).
    pub latency_sample_every: u32,
}

impl Default for MetricsSection {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_METRICS_PORT)),
            max_tenant_labels: 100,
            latency_sample_every: 64,
        }
    }
}

/// `[websocket]`: the WebSocket edge (`specs/websocket.md`). Served by the
/// same shards as the native protocol, on its own port, with the same TLS
/// (ALPN `http/1.1`), authentication, policies and limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebSocketSection {
    /// Serve WebSocket clients (off by default: one more port, and test
    /// harnesses that start several servers would share its default).
    pub enabled: bool,
    /// Where the WebSocket listener binds (one `SO_REUSEPORT` socket per
    /// shard, like `server.listen`).
    pub listen: SocketAddr,
    /// Origins every WebSocket client may come from, for the whole server
    /// (`https://app.example.com`, `http://localhost:5173`); empty: the server
    /// does not restrict origins itself (tenants may, with their own lists).
    /// A request without `Origin` (not a browser) passes.
    pub allowed_origins: Vec<String>,
}

impl Default for WebSocketSection {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_WEBSOCKET_PORT)),
            allowed_origins: Vec::new(),
        }
    }
}

impl WebSocketSection {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.allowed_origins.len() > arqonbus_core::origin::MAX_ORIGINS {
            return Err(invalid(
                "websocket.allowed_origins",
                format!("at most {}", arqonbus_core::origin::MAX_ORIGINS),
            ));
        }
        for (i, o) in self.allowed_origins.iter().enumerate() {
            arqonbus_core::origin::validate(o)
                .map_err(|e| invalid(format!("websocket.allowed_origins[{i}]"), e.to_string()))?;
        }
        Ok(())
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line (for collectors).
    Json,
    /// Human-readable lines.
    Text,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSection {
    /// Output format.
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `arqonbus_dataplane=debug`;
    /// `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            format: LogFormat::Json,
            level: "info".into(),
        }
    }
}

/// `[tracing]`: OTLP export of the server's spans (`connection`, `auth`,
/// `publish`, `deliver`, `control_rpc`) over gRPC. Off unless
/// `otlp_endpoint` is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TracingSection {
    /// The collector's OTLP/gRPC endpoint, `http://host:4317` or
    /// `https://host:4317`; unset: no export.
    pub otlp_endpoint: Option<String>,
    /// The `service.name` resource attribute of every exported span.
    pub service_name: String,
    /// Bound on one export (connect, request and retries) and on the flush
    /// at shutdown, milliseconds.
    pub export_timeout_ms: u64,
    /// PEM CA that an `https://` collector's certificate must chain to;
    /// unset: the public web PKI roots (Mozilla's list, built in).
    pub ca_file: Option<PathBuf>,
}

impl Default for TracingSection {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: "arqonbus".into(),
            export_timeout_ms: 10_000,
            ca_file: None,
        }
    }
}

impl TracingSection {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.otlp_endpoint.is_some()
    }

    /// The bound on one export and on the flush at shutdown.
    pub fn export_timeout(&self) -> Duration {
        Duration::from_millis(self.export_timeout_ms)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(endpoint) = &self.otlp_endpoint {
            let rest = endpoint
                .strip_prefix("http://")
                .or_else(|| endpoint.strip_prefix("https://"))
                .ok_or_else(|| {
                    invalid(
                        "tracing.otlp_endpoint",
                        "must be an http:// or https:// URL",
                    )
                })?;
            let authority = rest.split('/').next().unwrap_or_default();
            if authority.is_empty() || authority.contains(char::is_whitespace) {
                return Err(invalid("tracing.otlp_endpoint", "must name a host"));
            }
            if self.ca_file.is_some() && !endpoint.starts_with("https://") {
                return Err(invalid(
                    "tracing.ca_file",
                    "only for an https:// otlp_endpoint",
                ));
            }
        } else if self.ca_file.is_some() {
            return Err(invalid(
                "tracing.ca_file",
                "only for an https:// otlp_endpoint",
            ));
        }
        let name = self.service_name.trim();
        if name.is_empty() || self.service_name.len() > 255 {
            return Err(invalid("tracing.service_name", "must be 1..=255 bytes"));
        }
        if !(100..=60_000).contains(&self.export_timeout_ms) {
            return Err(invalid(
                "tracing.export_timeout_ms",
                "must be in 100..=60000",
            ));
        }
        Ok(())
    }
}

/// A tenant and its credentials (hashes only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// Stable numeric id.
    pub id: u64,
    /// Unique name.
    pub name: String,
    /// Credentials that authenticate as principals of this tenant.
    #[serde(default)]
    pub credentials: Vec<CredentialConfig>,
}

/// One credential, stored as the SHA-256 of the token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialConfig {
    /// Stable numeric id of the principal.
    pub principal_id: u64,
    /// The principal's name.
    pub principal: String,
    /// Lower-case hex SHA-256 of the bearer token.
    pub sha256: String,
}

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (unknown keys included).
    #[error("cannot parse {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why, with line and column.
        source: Box<toml::de::Error>,
    },
    /// A value is out of range or inconsistent.
    #[error("{key}: {reason}")]
    Invalid {
        /// The offending key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A `[limits]` value is out of range.
    #[error(transparent)]
    Limits(#[from] LimitsError),
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

/// Flags that override the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--listen`.
    pub listen: Option<SocketAddr>,
    /// `--shards`.
    pub shards: Option<usize>,
    /// `--plaintext`.
    pub plaintext: bool,
}

impl Config {
    /// Reads and parses `path`. Does not validate.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses TOML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: origin.to_owned(),
            source: Box::new(source),
        })
    }

    /// Applies command-line overrides.
    pub fn apply(&mut self, o: &Overrides) {
        if let Some(d) = &o.data_dir {
            self.data_dir.clone_from(d);
        }
        if let Some(l) = o.listen {
            self.server.listen = l;
        }
        if let Some(s) = o.shards {
            self.server.shards = s;
        }
        if o.plaintext {
            self.tls.enabled = false;
        }
    }

    /// Shards to run: `server.shards`, or one per available CPU (at most 64).
    pub fn shard_count(&self) -> usize {
        if self.server.shards == 0 {
            std::thread::available_parallelism()
                .map_or(1, std::num::NonZeroUsize::get)
                .min(arqonbus_core::router::MAX_SHARDS)
        } else {
            self.server.shards
        }
    }

    /// The keep-alive timer granularity.
    pub fn tick(&self) -> Duration {
        Duration::from_millis(self.server.tick_ms)
    }

    /// Checks every value; the first problem is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        let s = &self.server;
        if s.shards > arqonbus_core::router::MAX_SHARDS {
            return Err(invalid("server.shards", "at most 64"));
        }
        if !(16..=1 << 20).contains(&s.ring_capacity) {
            return Err(invalid("server.ring_capacity", "must be in 16..=1048576"));
        }
        if s.overflow_limit == 0 {
            return Err(invalid("server.overflow_limit", "must be >= 1"));
        }
        if !(4096..=16 << 20).contains(&s.read_buffer) {
            return Err(invalid("server.read_buffer", "must be in 4096..=16777216"));
        }
        if !(16 * 1024..=64 << 20).contains(&s.io_memory) {
            return Err(invalid("server.io_memory", "must be in 16384..=67108864"));
        }
        if !(1..=10_000).contains(&s.tick_ms) {
            return Err(invalid("server.tick_ms", "must be in 1..=10000"));
        }
        if s.lame_duck_window_ms > 600_000 {
            return Err(invalid("server.lame_duck_window_ms", "at most 600000"));
        }
        if s.busy_poll_us > 1_000_000 {
            return Err(invalid("server.busy_poll_us", "at most 1000000"));
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return Err(invalid("tls.cert", "tls.cert and tls.key go together"));
        }
        validate_cpus("control.cpus", &self.control.cpus)?;
        if self.metrics.max_tenant_labels > 10_000 {
            return Err(invalid("metrics.max_tenant_labels", "at most 10000"));
        }
        if self.log.level.trim().is_empty() {
            return Err(invalid("log.level", "must not be empty"));
        }
        self.tracing.validate()?;
        self.steering.to_config()?;
        self.steering.default_placement()?;
        self.websocket.validate()?;
        if let Some(ws) = self.websocket_listen()
            && ws.port() != 0
            && ws.port() == self.server.listen.port()
        {
            return Err(invalid(
                "websocket.listen",
                "must not use server.listen's port (each is its own listener group)",
            ));
        }
        self.limits.validate()?;
        validate_tenants("tenants", &self.tenants)?;
        Ok(())
    }

    /// The WebSocket edge's address, when it is served.
    pub fn websocket_listen(&self) -> Option<std::net::SocketAddr> {
        self.websocket.enabled.then_some(self.websocket.listen)
    }
}

/// The highest CPU number an affinity list may name (`CPU_SETSIZE` - 1).
pub const MAX_CPU: usize = 1023;

/// Checks a CPU list: each at most [`MAX_CPU`], none twice. Whether the
/// host has them is checked when the node starts.
fn validate_cpus(key: &str, cpus: &[usize]) -> Result<(), ConfigError> {
    let mut seen = std::collections::BTreeSet::new();
    for &c in cpus {
        if c > MAX_CPU {
            return Err(invalid(key, format!("CPU {c}: at most {MAX_CPU}")));
        }
        if !seen.insert(c) {
            return Err(invalid(key, format!("CPU {c} twice")));
        }
    }
    Ok(())
}

/// Checks ids and names are unique and hashes well-formed.
pub fn validate_tenants(key: &str, tenants: &[TenantConfig]) -> Result<(), ConfigError> {
    let mut ids = std::collections::BTreeSet::new();
    let mut names = std::collections::BTreeSet::new();
    let mut hashes = std::collections::BTreeSet::new();
    for (i, t) in tenants.iter().enumerate() {
        let at = format!("{key}[{i}]");
        if !ids.insert(t.id) {
            return Err(invalid(
                format!("{at}.id"),
                format!("duplicate tenant id {}", t.id),
            ));
        }
        if t.name.is_empty() || t.name.len() > 64 {
            return Err(invalid(format!("{at}.name"), "must be 1..=64 bytes"));
        }
        if !names.insert(t.name.clone()) {
            return Err(invalid(format!("{at}.name"), "duplicate tenant name"));
        }
        for (j, c) in t.credentials.iter().enumerate() {
            let at = format!("{at}.credentials[{j}]");
            let ok = c.sha256.len() == 64 && c.sha256.bytes().all(|b| b.is_ascii_hexdigit());
            if !ok {
                return Err(invalid(format!("{at}.sha256"), "must be 64 hex characters"));
            }
            if !hashes.insert(c.sha256.to_ascii_lowercase()) {
                return Err(invalid(format!("{at}.sha256"), "the same credential twice"));
            }
            if c.principal.is_empty() {
                return Err(invalid(format!("{at}.principal"), "must not be empty"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deploy_sample_loads_and_validates() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/arqonbus.toml");
        let cfg = Config::load(&path).unwrap();
        cfg.validate().unwrap();
        assert!(cfg.tls.enabled, "the sample must keep TLS on");
        assert_eq!(cfg.server.listen.port(), DEFAULT_PORT);
    }

    #[test]
    fn an_empty_file_is_the_defaults() {
        let cfg = Config::parse("", Path::new("empty")).unwrap();
        assert_eq!(cfg, Config::default());
        cfg.validate().unwrap();
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = Config::parse("[server]\nlisten_addr = \"x\"\n", Path::new("t")).unwrap_err();
        assert!(err.to_string().contains("listen_addr"), "{err}");
    }

    #[test]
    fn invalid_values_name_their_key() {
        let cases = [
            ("[server]\nshards = 65\n", "server.shards"),
            ("[server]\nring_capacity = 1\n", "server.ring_capacity"),
            ("[control]\ncpus = [1, 1]\n", "control.cpus"),
            ("[control]\ncpus = [1024]\n", "control.cpus"),
            ("[tls]\ncert = \"a.pem\"\n", "tls.cert"),
            ("[limits]\nmax_payload = 0\n", "max_payload"),
            (
                "[tracing]\notlp_endpoint = \"localhost:4317\"\n",
                "tracing.otlp_endpoint",
            ),
            (
                "[tracing]\notlp_endpoint = \"grpc://collector:4317\"\n",
                "tracing.otlp_endpoint",
            ),
            (
                "[tracing]\notlp_endpoint = \"http:///v1\"\n",
                "tracing.otlp_endpoint",
            ),
            (
                "[tracing]\notlp_endpoint = \"http://c:4317\"\nca_file = \"ca.pem\"\n",
                "tracing.ca_file",
            ),
            ("[tracing]\nservice_name = \" \"\n", "tracing.service_name"),
            (
                "[websocket]\nallowed_origins = [\"https://ok.example\", \"https://x/path\"]\n",
                "websocket.allowed_origins[1]",
            ),
            (
                "[server]\nlisten = \"127.0.0.1:7420\"\n[websocket]\nenabled = true\nlisten = \"0.0.0.0:7420\"\n",
                "websocket.listen",
            ),
            (
                "[websocket]\nallowed_origins = [\"ok.example\"]\n",
                "websocket.allowed_origins[0]",
            ),
            (
                "[tracing]\notlp_endpoint = \"http://c:4317\"\nexport_timeout_ms = 0\n",
                "tracing.export_timeout_ms",
            ),
            (
                "[[tenants]]\nid = 1\nname = \"a\"\n[[tenants]]\nid = 1\nname = \"b\"\n",
                "tenants[1].id",
            ),
            (
                "[[tenants]]\nid = 1\nname = \"a\"\n[[tenants.credentials]]\nprincipal_id = 1\nprincipal = \"p\"\nsha256 = \"zz\"\n",
                "tenants[0].credentials[0].sha256",
            ),
        ];
        for (text, key) in cases {
            let err = Config::parse(text, Path::new("t"))
                .unwrap()
                .validate()
                .unwrap_err();
            assert!(err.to_string().contains(key), "{key}: {err}");
        }
    }

    #[test]
    fn trace_export_is_off_by_default_and_takes_http_or_https() {
        let cfg = Config::default();
        assert!(!cfg.tracing.exporting());
        assert_eq!(cfg.tracing.service_name, "arqonbus");
        for endpoint in ["http://127.0.0.1:4317", "https://collector.example:4317/"] {
            let text = format!("[tracing]\notlp_endpoint = \"{endpoint}\"\n");
            let cfg = Config::parse(&text, Path::new("t")).unwrap();
            cfg.validate().unwrap();
            assert!(cfg.tracing.exporting());
        }
        let text = "[tracing]\notlp_endpoint = \"https://c:4317\"\nca_file = \"ca.pem\"\n";
        Config::parse(text, Path::new("t"))
            .unwrap()
            .validate()
            .unwrap();
    }

    #[test]
    fn flags_override_the_file() {
        let mut cfg = Config::default();
        cfg.apply(&Overrides {
            data_dir: Some("/tmp/x".into()),
            listen: Some("0.0.0.0:1".parse().unwrap()),
            shards: Some(3),
            plaintext: true,
        });
        assert_eq!(cfg.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(cfg.server.listen.port(), 1);
        assert_eq!(cfg.shard_count(), 3);
        assert!(!cfg.tls.enabled);
    }
}
