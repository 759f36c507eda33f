//! Command-line arguments of `arqonctl` (clap derive) and the connection
//! settings they resolve to.
//!
//! Invariants: every argument is checked here, so a bad command line exits
//! with clap's code 2 before anything touches the network; the admin token is
//! only ever named by a file path, never passed on the command line or through
//! an environment variable, and `--help` shows no environment values of the
//! connection options; `--data-dir` only fills in the CA and token files that
//! were not given otherwise.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::{
    ArgGroup, Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand, ValueEnum,
};

/// The control port when the URL names none.
pub(crate) const DEFAULT_PORT: u16 = 7421;

/// ArqonBus operator CLI: manage tenants, principals, credentials, policies,
/// connections, nodes and connection steering through the control API.
#[derive(Debug, Parser)]
#[command(name = "arqonctl", version, propagate_version = true)]
pub(crate) struct Cli {
    /// Print JSON (one document on one line) instead of tables.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    #[command(flatten)]
    pub(crate) conn: ConnArgs,
    #[command(subcommand)]
    pub(crate) command: Cmd,
}

/// How to reach and authenticate to the control API.
#[derive(Debug, Args)]
#[command(next_help_heading = "Connection")]
pub(crate) struct ConnArgs {
    /// Control API URL: https://HOST[:PORT] (the port defaults to 7421).
    #[arg(
        long,
        short = 's',
        env = "ARQONCTL_SERVER",
        default_value = "https://127.0.0.1:7421",
        global = true,
        value_name = "URL"
    )]
    pub(crate) server: ServerUrl,

    /// CA certificate (PEM) that signed the control listener's certificate
    /// [default: <DATA_DIR>/tls/ca.pem].
    #[arg(long, env = "ARQONCTL_CA", global = true, value_name = "PEM")]
    pub(crate) ca: Option<PathBuf>,

    /// File holding the admin token [default:
    /// <DATA_DIR>/credentials/admin.token].
    #[arg(
        long,
        env = "ARQONCTL_TOKEN_FILE",
        hide_env_values = true,
        global = true,
        value_name = "FILE"
    )]
    pub(crate) admin_token_file: Option<PathBuf>,

    /// Client certificate chain (PEM), for a control plane that requires
    /// operator certificates (mTLS).
    #[arg(long, env = "ARQONCTL_CLIENT_CERT", global = true, value_name = "PEM")]
    pub(crate) client_cert: Option<PathBuf>,

    /// Private key (PEM) of --client-cert.
    #[arg(
        long,
        env = "ARQONCTL_CLIENT_KEY",
        hide_env_values = true,
        global = true,
        value_name = "PEM"
    )]
    pub(crate) client_key: Option<PathBuf>,

    /// Server data directory; supplies the CA and the admin token when
    /// --ca / --admin-token-file are not given.
    #[arg(
        long,
        env = "ARQONBUS_DATA_DIR",
        default_value = "arqonbus-data",
        global = true,
        value_name = "DIR"
    )]
    pub(crate) data_dir: PathBuf,

    /// Give up on the command after this long (e.g. 10s, 2m).
    #[arg(long, default_value = "30s", value_parser = parse_duration, global = true, value_name = "DURATION")]
    pub(crate) timeout: Duration,
}

/// The subcommands, one group per control API service.
#[derive(Debug, Subcommand)]
pub(crate) enum Cmd {
    /// Tenants and their quotas.
    #[command(subcommand)]
    Tenants(TenantsCmd),
    /// Principals (users, devices, services) inside a tenant.
    #[command(subcommand)]
    Principals(PrincipalsCmd),
    /// Credentials of principals: issue, list, revoke.
    #[command(subcommand)]
    Credentials(CredentialsCmd),
    /// Publish/subscribe permissions per principal or role.
    #[command(subcommand)]
    Policies(PoliciesCmd),
    /// Live data-plane connections.
    #[command(subcommand)]
    Connections(ConnectionsCmd),
    /// This node: status, shard drain and resume, reload.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Connection steering: which shard the kernel hands a new connection to.
    #[command(subcommand)]
    Steering(SteeringCmd),
    /// Copy the control store while the node serves into FILE (created
    /// 0600; it holds signing keys and credential hashes). Restore it with
    /// `arqonbus restore --from FILE` on the stopped node.
    Backup {
        /// The file to create (must not exist).
        file: std::path::PathBuf,
    },
    /// The control API's admin credential.
    #[command(subcommand)]
    Admin(AdminCmd),
}

/// `arqonctl admin ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum AdminCmd {
    /// Replace the admin token: the node writes the new one to its
    /// credentials/admin.token and the old one stops working at once; the
    /// new token is written here too (0600), never printed.
    Rotate {
        /// Where to write the new token (default: the admin token file in
        /// use, from --admin-token-file or --data-dir).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

impl Cmd {
    /// Fills what a command defaults from the connection settings.
    pub(crate) fn with_settings(self, settings: &Settings) -> Self {
        match self {
            Cmd::Admin(AdminCmd::Rotate { out: None }) => Cmd::Admin(AdminCmd::Rotate {
                out: Some(settings.token_file.clone()),
            }),
            other => other,
        }
    }
}

/// `arqonctl tenants ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum TenantsCmd {
    /// Create a tenant.
    Create {
        /// Tenant name: 1 to 64 of A-Z a-z 0-9 _ . -
        name: String,
        /// Where its connections are served: home (one shard, chosen
        /// least-loaded), spread (wherever steering puts them) or shard:N
        /// [default: home].
        #[arg(long, value_name = "PLACEMENT")]
        placement: Option<PlacementArg>,
        /// Origin (scheme://host[:port]) its WebSocket clients may come from
        /// (repeatable) [default: any].
        #[arg(long = "allowed-origin", value_name = "ORIGIN")]
        allowed_origins: Vec<String>,
        #[command(flatten)]
        quotas: QuotaArgs,
    },
    /// List all tenants.
    List,
    /// Show one tenant.
    Get {
        /// Tenant id or name (`id:N` or `name:NAME` to say which).
        tenant: TenantArg,
    },
    /// Change a tenant's quotas, placement or WebSocket origins (the flags
    /// given; the others keep their values).
    Update(TenantUpdateArgs),
    /// Delete a tenant with its principals, credentials and policies, and
    /// close its connections.
    Delete {
        /// Tenant id or name (`id:N` or `name:NAME` to say which).
        tenant: TenantArg,
    },
}

/// `arqonctl tenants update`.
#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("changes")
        .required(true)
        .multiple(true)
        .args(QUOTA_ARG_IDS)
        .arg("placement")
))]
pub(crate) struct TenantUpdateArgs {
    /// Tenant id or name (`id:N` or `name:NAME` to say which).
    pub(crate) tenant: TenantArg,
    /// New placement: home, spread or shard:N. Open connections stay where
    /// they are; new ones follow it.
    #[arg(long, value_name = "PLACEMENT")]
    pub(crate) placement: Option<PlacementArg>,
    /// Replace the origins its WebSocket clients may come from with these
    /// (repeatable).
    #[arg(
        long = "allowed-origin",
        value_name = "ORIGIN",
        conflicts_with = "any_origin"
    )]
    pub(crate) allowed_origins: Vec<String>,
    /// Let its WebSocket clients come from any origin (clears the list).
    #[arg(long)]
    pub(crate) any_origin: bool,
    /// Fail unless the tenant is still at this version (default: the version
    /// read just before the update, so concurrent changes are never lost).
    #[arg(long, value_name = "V", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) expected_version: Option<u64>,
    #[command(flatten)]
    pub(crate) quotas: QuotaArgs,
}

/// `arqonctl principals ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum PrincipalsCmd {
    /// Create a principal in a tenant.
    Create {
        /// Tenant id or name (`id:N` or `name:NAME` to say which).
        #[arg(long, value_name = "TENANT")]
        tenant: TenantArg,
        /// Principal name, unique within the tenant.
        name: String,
        /// Role (repeatable); policies may target a role.
        #[arg(long = "role", value_name = "ROLE")]
        roles: Vec<String>,
        #[command(flatten)]
        quotas: QuotaArgs,
    },
    /// List the principals of a tenant.
    List {
        /// Tenant id or name (`id:N` or `name:NAME` to say which).
        #[arg(long, value_name = "TENANT")]
        tenant: TenantArg,
    },
    /// Change a principal's roles or quotas (what is not given is kept).
    Update(PrincipalUpdateArgs),
    /// Delete a principal and its credentials; its sessions close.
    Delete {
        /// Principal id.
        id: u64,
    },
}

/// `arqonctl principals update`.
#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("changes")
        .required(true)
        .multiple(true)
        .args(QUOTA_ARG_IDS)
        .args(["roles", "clear_roles"])
))]
pub(crate) struct PrincipalUpdateArgs {
    /// Principal id.
    pub(crate) id: u64,
    /// New roles (repeatable; replaces all current roles).
    #[arg(long = "role", value_name = "ROLE")]
    pub(crate) roles: Vec<String>,
    /// Remove all roles.
    #[arg(long, conflicts_with = "roles")]
    pub(crate) clear_roles: bool,
    /// Fail unless the principal is still at this version (default: the
    /// version read just before the update).
    #[arg(long, value_name = "V", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) expected_version: Option<u64>,
    /// The principal's tenant (id or name); saves searching every tenant.
    #[arg(long, value_name = "TENANT")]
    pub(crate) tenant: Option<TenantArg>,
    #[command(flatten)]
    pub(crate) quotas: QuotaArgs,
}

/// `arqonctl credentials ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum CredentialsCmd {
    /// Issue a credential; its token is printed once and never again.
    Issue {
        /// Principal id.
        #[arg(long, value_name = "ID")]
        principal: u64,
        /// Issue a signed token (verified by the shards locally; needs --ttl)
        /// instead of a bearer token.
        #[arg(long, requires = "ttl")]
        signed: bool,
        /// Lifetime, e.g. 3600s, 30m, 1h, 7d, 1h30m (default: no expiry).
        #[arg(long, value_parser = parse_ttl, value_name = "DURATION")]
        ttl: Option<u64>,
    },
    /// List the credentials of a tenant.
    List {
        /// Tenant id or name (`id:N` or `name:NAME` to say which).
        #[arg(long, value_name = "TENANT")]
        tenant: TenantArg,
        /// Only this principal's credentials.
        #[arg(long, value_name = "ID")]
        principal: Option<u64>,
    },
    /// Revoke a credential; its sessions close within a second.
    Revoke {
        /// Credential id.
        id: u64,
    },
}

/// `arqonctl policies ...`.
#[derive(Debug, Subcommand)]
#[allow(
    clippy::large_enum_variant,
    reason = "parsed once per process; boxing buys nothing"
)]
pub(crate) enum PoliciesCmd {
    /// Create a policy, or replace one with --id.
    ///
    /// The policy is sent whole: a subject is allowed when one of its allow
    /// patterns matches and none of its deny patterns does (deny wins), so a
    /// direction without an allow pattern allows nothing (presence too: a
    /// targeted principal sees no presence without --presence-allow). A
    /// principal with no policy at all may use every subject of its tenant
    /// and see its presence.
    Put(PolicyPutArgs),
    /// List the policies of a tenant.
    List {
        /// Tenant id or name (`id:N` or `name:NAME` to say which).
        #[arg(long, value_name = "TENANT")]
        tenant: TenantArg,
    },
    /// Delete a policy.
    Delete {
        /// Policy id.
        id: u64,
    },
}

/// `arqonctl policies put`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("target").required(true).args(["principal", "role"])))]
pub(crate) struct PolicyPutArgs {
    /// Tenant id or name (`id:N` or `name:NAME` to say which).
    #[arg(long, value_name = "TENANT")]
    pub(crate) tenant: TenantArg,
    /// The policy applies to this principal.
    #[arg(long, value_name = "ID")]
    pub(crate) principal: Option<u64>,
    /// The policy applies to every principal with this role.
    #[arg(long, value_name = "ROLE")]
    pub(crate) role: Option<String>,
    /// Subject pattern the target may publish to (repeatable).
    #[arg(long, value_name = "PATTERN")]
    pub(crate) pub_allow: Vec<String>,
    /// Subject pattern the target may not publish to (repeatable).
    #[arg(long, value_name = "PATTERN")]
    pub(crate) pub_deny: Vec<String>,
    /// Subject pattern the target may subscribe to (repeatable).
    #[arg(long, value_name = "PATTERN")]
    pub(crate) sub_allow: Vec<String>,
    /// Subject pattern the target may not subscribe to (repeatable).
    #[arg(long, value_name = "PATTERN")]
    pub(crate) sub_deny: Vec<String>,
    /// Subject pattern whose presence the target may see: watch and query
    /// (repeatable). Without one a targeted principal sees no presence.
    #[arg(long, value_name = "PATTERN")]
    pub(crate) presence_allow: Vec<String>,
    /// Subject pattern whose presence the target may not see (repeatable).
    #[arg(long, value_name = "PATTERN")]
    pub(crate) presence_deny: Vec<String>,
    /// Let a principal that receives a request publish one reply to its reply
    /// subject even when the publish rules deny it.
    #[arg(long)]
    pub(crate) allow_responses: bool,
    /// Replace this policy instead of creating one.
    #[arg(long, value_name = "ID", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) id: Option<u64>,
    /// With --id: fail unless the policy is still at this version.
    #[arg(long, value_name = "V", requires = "id", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) expected_version: Option<u64>,
}

/// `arqonctl connections ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum ConnectionsCmd {
    /// List live connections.
    List {
        /// Only this tenant's connections (id or name).
        #[arg(long, value_name = "TENANT")]
        tenant: Option<TenantArg>,
    },
    /// Close one connection (the client sees DISCONNECTED_BY_OPERATOR).
    Kick {
        /// Connection id.
        id: u64,
    },
}

/// `arqonctl node ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum NodeCmd {
    /// Show the node: version, configuration epoch, shards.
    Status,
    /// Stop a shard accepting and close its connections (clients reconnect
    /// to the other shards).
    Drain {
        /// Shard number.
        shard: u32,
    },
    /// Let a drained shard accept connections again.
    Resume {
        /// Shard number.
        shard: u32,
    },
    /// Re-read the configuration file and the store and push a new snapshot.
    Reload,
}

/// `arqonctl steering ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum SteeringCmd {
    /// Show the steering in force and whether the steering program runs.
    Get,
    /// Set the steering mode and affinity rules (stored; it outlives restarts
    /// and overrides the configuration file's [steering]).
    Set(SteeringSetArgs),
}

/// `arqonctl steering set`.
#[derive(Debug, Args)]
pub(crate) struct SteeringSetArgs {
    /// How a new connection's shard is chosen.
    #[arg(long, value_enum, value_name = "MODE")]
    pub(crate) mode: SteeringModeArg,
    /// Client addresses in PREFIX go to shard SHARD (repeatable; e.g.
    /// 10.0.0.0/8=1, fd00::/8=0, 192.0.2.7=2). The rules given replace all
    /// current ones; mode affinity uses them.
    #[arg(long = "affinity", value_name = "PREFIX=SHARD")]
    pub(crate) affinity: Vec<AffinityArg>,
}

/// `--mode` values of `steering set`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum SteeringModeArg {
    /// The kernel's 4-tuple hash.
    Hash,
    /// The shard with the fewest live connections.
    Balance,
    /// The shard pinned on the CPU that handled the SYN.
    Cpu,
    /// The shard of the most specific --affinity rule matching the client's
    /// address (balance when none matches).
    Affinity,
}

impl SteeringModeArg {
    /// The API's name of the mode.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Hash => "hash",
            Self::Balance => "balance",
            Self::Cpu => "cpu",
            Self::Affinity => "affinity",
        }
    }
}

/// One `--affinity PREFIX=SHARD` rule. The prefix is checked by the server,
/// which names the offending rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AffinityArg {
    pub(crate) prefix: String,
    pub(crate) shard: u32,
}

impl FromStr for AffinityArg {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let (prefix, shard) = raw
            .rsplit_once('=')
            .ok_or_else(|| format!("expected PREFIX=SHARD (e.g. 10.0.0.0/8=1), got {raw:?}"))?;
        if prefix.is_empty() {
            return Err(format!("no prefix before '=' in {raw:?}"));
        }
        let shard = shard
            .parse()
            .map_err(|_| format!("shard {shard:?} is not a shard number"))?;
        Ok(Self {
            prefix: prefix.to_owned(),
            shard,
        })
    }
}

/// A tenant's placement: `home`, `spread` or `shard:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PlacementArg {
    Home,
    Spread,
    Shard(u16),
}

impl FromStr for PlacementArg {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        match raw {
            "home" => Ok(Self::Home),
            "spread" => Ok(Self::Spread),
            _ => raw
                .strip_prefix("shard:")
                .and_then(|n| n.parse().ok())
                .map(Self::Shard)
                .ok_or_else(|| format!("expected home, spread or shard:N, got {raw:?}")),
        }
    }
}

impl fmt::Display for PlacementArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Home => f.write_str("home"),
            Self::Spread => f.write_str("spread"),
            Self::Shard(n) => write!(f, "shard:{n}"),
        }
    }
}

/// The ids of the [`QuotaArgs`] arguments (for argument groups).
const QUOTA_ARG_IDS: [&str; 7] = [
    "max_connections",
    "max_subscriptions",
    "max_payload",
    "messages_per_second",
    "bytes_per_second",
    "slow_consumer",
    "stall_max_ms",
];

/// Quota flags of a tenant or principal. Each is optional: on create an
/// absent flag means unlimited (0), on update it keeps the current value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Args)]
#[command(next_help_heading = "Quotas (0 = unlimited)")]
pub(crate) struct QuotaArgs {
    /// Most simultaneous connections.
    #[arg(long, value_name = "N")]
    pub(crate) max_connections: Option<u32>,
    /// Most subscriptions.
    #[arg(long, value_name = "N")]
    pub(crate) max_subscriptions: Option<u32>,
    /// Largest payload in bytes (0: the server's limit).
    #[arg(long, value_name = "BYTES")]
    pub(crate) max_payload: Option<u32>,
    /// Messages per second (token bucket).
    #[arg(long, value_name = "N")]
    pub(crate) messages_per_second: Option<u64>,
    /// Payload bytes per second (token bucket).
    #[arg(long, value_name = "N")]
    pub(crate) bytes_per_second: Option<u64>,
    /// What happens to a subscriber that cannot keep up.
    #[arg(long, value_enum, value_name = "POLICY")]
    pub(crate) slow_consumer: Option<SlowConsumerArg>,
    /// Longest publisher stall under stall-publisher, in milliseconds
    /// (0: 100).
    #[arg(long, value_name = "MS")]
    pub(crate) stall_max_ms: Option<u32>,
}

impl QuotaArgs {
    /// Whether no quota flag was given.
    pub(crate) fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// `--slow-consumer` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum SlowConsumerArg {
    /// Cut the subscriber.
    Disconnect,
    /// Drop the subscriber's oldest queued messages.
    DropOldest,
    /// Pause the tenant's publishers, up to --stall-max-ms, then disconnect.
    StallPublisher,
}

/// A tenant named by id or by name.
///
/// `id:N` is always the id N and `name:NAME` always the name NAME. Bare
/// digits (`99`) keep meaning an id when a tenant has that id, and reach a
/// tenant named `99` otherwise; when both exist the command fails and asks
/// for `id:` or `name:` (see `commands::resolve_tenant`). Anything else is a
/// name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TenantArg {
    /// `id:N`: the id, whatever tenants are named.
    Id(u64),
    /// `name:NAME`, or a name that is not all digits.
    Name(String),
    /// Bare digits, as given: the id, or the name when no tenant has that
    /// id. Always a valid u64.
    Digits(String),
}

impl FromStr for TenantArg {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        if let Some(name) = raw.strip_prefix("name:") {
            if name.is_empty() {
                return Err("empty tenant name after \"name:\"".into());
            }
            return Ok(Self::Name(name.to_owned()));
        }
        if let Some(id) = raw.strip_prefix("id:") {
            return id
                .parse()
                .map(Self::Id)
                .map_err(|_| format!("expected a tenant id after \"id:\", got {id:?}"));
        }
        if raw.is_empty() {
            return Err("expected a tenant id or name".into());
        }
        if raw.bytes().all(|b| b.is_ascii_digit()) {
            return raw
                .parse::<u64>()
                .map(|_| Self::Digits(raw.to_owned()))
                .map_err(|_| format!("tenant id {raw} is out of range (name:{raw} for a name)"));
        }
        Ok(Self::Name(raw.to_owned()))
    }
}

impl fmt::Display for TenantArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Id(id) => write!(f, "{id}"),
            Self::Digits(digits) => f.write_str(digits),
            Self::Name(name) => write!(f, "{name:?}"),
        }
    }
}

/// The control API address: always TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServerUrl {
    /// Host name or IP address, without IPv6 brackets.
    pub(crate) host: String,
    pub(crate) port: u16,
}

impl ServerUrl {
    /// `host:port`, with brackets around an IPv6 address.
    pub(crate) fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "https://{}", self.authority())
    }
}

impl FromStr for ServerUrl {
    type Err = String;

    /// Accepts `https://HOST[:PORT][/]` or `HOST[:PORT]`.
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let rest = match raw.split_once("://") {
            Some(("https", rest)) => rest,
            Some((scheme, _)) => {
                return Err(format!(
                    "unsupported scheme {scheme:?}: the control API needs TLS (https://HOST:PORT)"
                ));
            }
            None => raw,
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() {
            return Err("the URL names no host".into());
        }
        if authority.contains(['/', '?', '#', '@']) {
            return Err("expected https://HOST[:PORT] with no path, query or user".into());
        }
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or("unclosed '[' in the IPv6 address")?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or("expected :PORT after ']'")?),
            };
            (host, port)
        } else {
            match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err("the URL names no host".into());
        }
        let port = match port {
            None => DEFAULT_PORT,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| format!("invalid port {p:?}"))?,
        };
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }
}

/// The connection settings after defaults and precedence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Settings {
    pub(crate) server: ServerUrl,
    pub(crate) ca: PathBuf,
    pub(crate) token_file: PathBuf,
    /// Client certificate and key files, for mTLS.
    pub(crate) client_identity: Option<(PathBuf, PathBuf)>,
    pub(crate) timeout: Duration,
}

impl ConnArgs {
    /// `--ca` and `--admin-token-file` (or their variables) win; the data
    /// directory supplies what is missing.
    pub(crate) fn settings(&self) -> Settings {
        Settings {
            server: self.server.clone(),
            ca: self
                .ca
                .clone()
                .unwrap_or_else(|| data_dir_ca(&self.data_dir)),
            token_file: self
                .admin_token_file
                .clone()
                .unwrap_or_else(|| data_dir_token(&self.data_dir)),
            client_identity: self.client_cert.clone().zip(self.client_key.clone()),
            timeout: self.timeout,
        }
    }
}

fn data_dir_ca(dir: &Path) -> PathBuf {
    dir.join("tls").join("ca.pem")
}

fn data_dir_token(dir: &Path) -> PathBuf {
    dir.join("credentials").join("admin.token")
}

/// Parses the process arguments (or `args` in tests).
pub(crate) fn parse_from<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let mut command = Cli::command();
    let matches = command.try_get_matches_from_mut(args)?;
    let cli = Cli::from_arg_matches(&matches)?;
    // Checked here rather than with `requires`: clap checks that per
    // subcommand level, and these global options may sit on either side.
    if cli.conn.client_cert.is_some() != cli.conn.client_key.is_some() {
        return Err(command.error(
            clap::error::ErrorKind::MissingRequiredArgument,
            "--client-cert and --client-key go together",
        ));
    }
    Ok(cli)
}

/// Parses a duration: one or more `<number><unit>` parts with the units `ms`,
/// `s`, `m`, `h` and `d` (`1h30m`, `250ms`, `7d`); a bare number is seconds.
pub(crate) fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let invalid = || format!("invalid duration {raw:?} (examples: 30s, 5m, 1h30m, 7d)");
    if raw.is_empty() {
        return Err(invalid());
    }
    if raw.bytes().all(|b| b.is_ascii_digit()) {
        return raw
            .parse()
            .map(Duration::from_secs)
            .map_err(|_| format!("duration {raw:?} is out of range"))
            .and_then(nonzero);
    }
    let mut total = Duration::ZERO;
    let mut rest = raw;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let unit_len = rest[digits..]
            .bytes()
            .take_while(u8::is_ascii_alphabetic)
            .count();
        if digits == 0 || unit_len == 0 {
            return Err(invalid());
        }
        let value: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("duration {raw:?} is out of range"))?;
        let part = match &rest[digits..digits + unit_len] {
            "ms" => Some(Duration::from_millis(value)),
            "s" => Some(Duration::from_secs(value)),
            "m" => value.checked_mul(60).map(Duration::from_secs),
            "h" => value.checked_mul(3600).map(Duration::from_secs),
            "d" => value.checked_mul(86_400).map(Duration::from_secs),
            unit => {
                return Err(format!(
                    "unknown duration unit {unit:?} (use ms, s, m, h or d)"
                ));
            }
        };
        total = part
            .and_then(|part| total.checked_add(part))
            .ok_or_else(|| format!("duration {raw:?} is out of range"))?;
        rest = &rest[digits + unit_len..];
    }
    nonzero(total)
}

fn nonzero(d: Duration) -> Result<Duration, String> {
    if d.is_zero() {
        Err("the duration must be greater than zero".into())
    } else {
        Ok(d)
    }
}

/// Parses a credential lifetime into whole seconds.
pub(crate) fn parse_ttl(raw: &str) -> Result<u64, String> {
    let d = parse_duration(raw)?;
    if d.subsec_nanos() != 0 {
        return Err(format!("a lifetime is whole seconds, got {raw:?}"));
    }
    Ok(d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        parse_from(std::iter::once("arqonctl").chain(args.iter().copied()))
    }

    fn ok(args: &[&str]) -> Cli {
        match parse(args) {
            Ok(cli) => cli,
            Err(e) => panic!("{args:?}: {e}"),
        }
    }

    fn exit_code(args: &[&str]) -> i32 {
        match parse(args) {
            Ok(cli) => panic!("{args:?} parsed: {cli:?}"),
            Err(e) => e.exit_code(),
        }
    }

    #[test]
    fn the_command_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn tenants_arguments() {
        let cli = ok(&[
            "tenants",
            "create",
            "acme",
            "--max-connections",
            "100",
            "--slow-consumer",
            "drop-oldest",
            "--json",
        ]);
        assert!(cli.json);
        let Cmd::Tenants(TenantsCmd::Create {
            name,
            quotas,
            placement,
            allowed_origins,
        }) = cli.command
        else {
            panic!("not tenants create")
        };
        assert_eq!(name, "acme");
        assert_eq!(placement, None);
        assert!(allowed_origins.is_empty());
        assert_eq!(quotas.max_connections, Some(100));
        assert_eq!(quotas.slow_consumer, Some(SlowConsumerArg::DropOldest));
        assert_eq!(quotas.max_payload, None);

        let cli = ok(&["tenants", "get", "42"]);
        let Cmd::Tenants(TenantsCmd::Get { tenant }) = cli.command else {
            panic!("not tenants get")
        };
        assert_eq!(tenant, TenantArg::Digits("42".into()));

        let cli = ok(&[
            "tenants",
            "update",
            "acme",
            "--stall-max-ms",
            "250",
            "--expected-version",
            "3",
        ]);
        let Cmd::Tenants(TenantsCmd::Update(u)) = cli.command else {
            panic!("not tenants update")
        };
        assert_eq!(u.tenant, TenantArg::Name("acme".into()));
        assert_eq!(u.quotas.stall_max_ms, Some(250));
        assert_eq!(u.expected_version, Some(3));

        assert!(matches!(
            ok(&["tenants", "list"]).command,
            Cmd::Tenants(TenantsCmd::List)
        ));
        assert!(matches!(
            ok(&["tenants", "delete", "7"]).command,
            Cmd::Tenants(TenantsCmd::Delete {
                tenant: TenantArg::Digits(d)
            }) if d == "7"
        ));
    }

    #[test]
    fn bad_arguments_exit_with_code_2() {
        for bad in [
            &["tenants", "create"][..],
            &["tenants", "create", "a", "--max-connections", "-1"],
            &["tenants", "create", "a", "--max-connections", "4294967296"],
            &["tenants", "create", "a", "--slow-consumer", "panic"],
            // An update must change something.
            &["tenants", "update", "1"],
            &["tenants", "update", "1", "--expected-version", "2"],
            &[
                "tenants",
                "update",
                "1",
                "--max-payload",
                "1",
                "--expected-version",
                "0",
            ],
            &["principals", "update", "1"],
            &["principals", "update", "1", "--role", "a", "--clear-roles"],
            &["principals", "create", "alice"],
            &["principals", "list"],
            &["credentials", "issue"],
            &["credentials", "issue", "--principal", "1", "--signed"],
            &["credentials", "issue", "--principal", "1", "--ttl", "0s"],
            &["credentials", "issue", "--principal", "1", "--ttl", "500ms"],
            &["policies", "put", "--tenant", "1"],
            &[
                "policies",
                "put",
                "--tenant",
                "1",
                "--principal",
                "2",
                "--role",
                "r",
            ],
            &[
                "policies",
                "put",
                "--tenant",
                "1",
                "--role",
                "r",
                "--expected-version",
                "2",
            ],
            &["tenants", "create", "a", "--placement", "nearby"],
            &["tenants", "create", "a", "--placement", "shard:"],
            &["tenants", "create", "a", "--placement", "shard:70000"],
            &["tenants", "update", "1", "--placement", "Home"],
            &["steering", "set"],
            &["steering", "set", "--mode", "round-robin"],
            &[
                "steering",
                "set",
                "--mode",
                "affinity",
                "--affinity",
                "10.0.0.0/8",
            ],
            &["steering", "set", "--mode", "affinity", "--affinity", "=1"],
            &[
                "steering",
                "set",
                "--mode",
                "affinity",
                "--affinity",
                "10.0.0.0/8=-1",
            ],
            &["steering", "get", "extra"],
            &["connections", "kick", "x"],
            &["node", "drain"],
            &["node", "drain", "-1"],
            &["--server", "http://127.0.0.1:7421", "node", "status"],
            &["--timeout", "0s", "node", "status"],
            &["--client-cert", "/c.pem", "node", "status"],
            &["node", "status", "--client-key", "/k.pem"],
            &["tenants", "get", "name:"],
            &["tenants", "get", "99999999999999999999999"],
            &["frobnicate"],
        ] {
            assert_eq!(exit_code(bad), 2, "{bad:?}");
        }
        assert_eq!(exit_code(&["--help"]), 0);
        assert_eq!(exit_code(&["--version"]), 0);
    }

    #[test]
    fn principals_arguments() {
        let cli = ok(&[
            "principals",
            "create",
            "--tenant",
            "acme",
            "alice",
            "--role",
            "ops",
            "--role",
            "dev",
            "--messages-per-second",
            "50",
        ]);
        let Cmd::Principals(PrincipalsCmd::Create {
            tenant,
            name,
            roles,
            quotas,
        }) = cli.command
        else {
            panic!("not principals create")
        };
        assert_eq!(tenant, TenantArg::Name("acme".into()));
        assert_eq!(name, "alice");
        assert_eq!(roles, ["ops", "dev"]);
        assert_eq!(quotas.messages_per_second, Some(50));

        let cli = ok(&["principals", "update", "5", "--clear-roles"]);
        let Cmd::Principals(PrincipalsCmd::Update(u)) = cli.command else {
            panic!("not principals update")
        };
        assert!(u.clear_roles && u.roles.is_empty() && u.quotas.is_empty());
        assert_eq!(u.tenant, None);

        let cli = ok(&[
            "principals",
            "update",
            "5",
            "--max-subscriptions",
            "9",
            "--tenant",
            "3",
        ]);
        let Cmd::Principals(PrincipalsCmd::Update(u)) = cli.command else {
            panic!("not principals update")
        };
        assert_eq!(u.quotas.max_subscriptions, Some(9));
        assert_eq!(u.tenant, Some(TenantArg::Digits("3".into())));
    }

    #[test]
    fn credentials_arguments() {
        let cli = ok(&[
            "credentials",
            "issue",
            "--principal",
            "4",
            "--signed",
            "--ttl",
            "1h",
        ]);
        let Cmd::Credentials(CredentialsCmd::Issue {
            principal,
            signed,
            ttl,
        }) = cli.command
        else {
            panic!("not credentials issue")
        };
        assert_eq!((principal, signed, ttl), (4, true, Some(3600)));
        let cli = ok(&["credentials", "issue", "--principal", "4"]);
        let Cmd::Credentials(CredentialsCmd::Issue { signed, ttl, .. }) = cli.command else {
            panic!("not credentials issue")
        };
        assert_eq!((signed, ttl), (false, None));

        let cli = ok(&["credentials", "list", "--tenant", "2", "--principal", "4"]);
        assert!(matches!(
            cli.command,
            Cmd::Credentials(CredentialsCmd::List {
                tenant: TenantArg::Digits(d),
                principal: Some(4)
            }) if d == "2"
        ));
        assert!(matches!(
            ok(&["credentials", "revoke", "9"]).command,
            Cmd::Credentials(CredentialsCmd::Revoke { id: 9 })
        ));
    }

    #[test]
    fn policies_arguments() {
        let cli = ok(&[
            "policies",
            "put",
            "--tenant",
            "1",
            "--role",
            "sensor",
            "--pub-allow",
            "telemetry.>",
            "--pub-allow",
            "status.*",
            "--pub-deny",
            "telemetry.secret",
            "--sub-allow",
            "cmd.>",
            "--allow-responses",
            "--id",
            "8",
            "--expected-version",
            "2",
        ]);
        let Cmd::Policies(PoliciesCmd::Put(p)) = cli.command else {
            panic!("not policies put")
        };
        assert_eq!(p.tenant, TenantArg::Digits("1".into()));
        assert_eq!((p.principal, p.role.as_deref()), (None, Some("sensor")));
        assert_eq!(p.pub_allow, ["telemetry.>", "status.*"]);
        assert_eq!(p.pub_deny, ["telemetry.secret"]);
        assert_eq!(p.sub_allow, ["cmd.>"]);
        assert!(p.sub_deny.is_empty());
        assert!(p.allow_responses);
        assert_eq!((p.id, p.expected_version), (Some(8), Some(2)));
    }

    #[test]
    fn connections_and_node_arguments() {
        assert!(matches!(
            ok(&["connections", "list"]).command,
            Cmd::Connections(ConnectionsCmd::List { tenant: None })
        ));
        assert!(matches!(
            ok(&["connections", "list", "--tenant", "acme"]).command,
            Cmd::Connections(ConnectionsCmd::List {
                tenant: Some(TenantArg::Name(_))
            })
        ));
        assert!(matches!(
            ok(&["connections", "kick", "12"]).command,
            Cmd::Connections(ConnectionsCmd::Kick { id: 12 })
        ));
        assert!(matches!(
            ok(&["node", "status"]).command,
            Cmd::Node(NodeCmd::Status)
        ));
        assert!(matches!(
            ok(&["node", "drain", "3"]).command,
            Cmd::Node(NodeCmd::Drain { shard: 3 })
        ));
        assert!(matches!(
            ok(&["node", "resume", "3"]).command,
            Cmd::Node(NodeCmd::Resume { shard: 3 })
        ));
        assert!(matches!(
            ok(&["node", "reload"]).command,
            Cmd::Node(NodeCmd::Reload)
        ));
    }

    #[test]
    fn placement_and_steering_arguments() {
        let cli = ok(&["tenants", "create", "acme", "--placement", "shard:3"]);
        let Cmd::Tenants(TenantsCmd::Create { placement, .. }) = cli.command else {
            panic!("not tenants create")
        };
        assert_eq!(placement, Some(PlacementArg::Shard(3)));
        // --placement alone is a change.
        let cli = ok(&["tenants", "update", "acme", "--placement", "spread"]);
        let Cmd::Tenants(TenantsCmd::Update(u)) = cli.command else {
            panic!("not tenants update")
        };
        assert_eq!(u.placement, Some(PlacementArg::Spread));
        assert!(u.quotas.is_empty());
        for p in ["home", "spread", "shard:0", "shard:65535"] {
            assert_eq!(
                p.parse::<PlacementArg>().map(|p| p.to_string()),
                Ok(p.to_owned())
            );
        }

        assert!(matches!(
            ok(&["steering", "get"]).command,
            Cmd::Steering(SteeringCmd::Get)
        ));
        let cli = ok(&[
            "steering",
            "set",
            "--mode",
            "affinity",
            "--affinity",
            "10.0.0.0/8=1",
            "--affinity",
            "fd00::/8=0",
            "--json",
        ]);
        assert!(cli.json);
        let Cmd::Steering(SteeringCmd::Set(s)) = cli.command else {
            panic!("not steering set")
        };
        assert_eq!(s.mode, SteeringModeArg::Affinity);
        assert_eq!(
            s.affinity,
            [
                AffinityArg {
                    prefix: "10.0.0.0/8".into(),
                    shard: 1
                },
                AffinityArg {
                    prefix: "fd00::/8".into(),
                    shard: 0
                }
            ]
        );
        let Cmd::Steering(SteeringCmd::Set(s)) = ok(&["steering", "set", "--mode", "cpu"]).command
        else {
            panic!("not steering set")
        };
        assert_eq!((s.mode.as_str(), s.affinity.len()), ("cpu", 0));
    }

    #[test]
    fn tenant_references() {
        assert_eq!("12".parse(), Ok(TenantArg::Digits("12".into())));
        assert_eq!("id:12".parse(), Ok(TenantArg::Id(12)));
        assert!("id:".parse::<TenantArg>().is_err());
        assert!("id:acme".parse::<TenantArg>().is_err());
        assert!("id:-1".parse::<TenantArg>().is_err());
        assert_eq!("acme".parse(), Ok(TenantArg::Name("acme".into())));
        assert_eq!("a1".parse(), Ok(TenantArg::Name("a1".into())));
        assert_eq!("name:12".parse(), Ok(TenantArg::Name("12".into())));
        assert!("".parse::<TenantArg>().is_err());
        assert!("name:".parse::<TenantArg>().is_err());
        assert_eq!(TenantArg::Digits("3".into()).to_string(), "3");
        assert_eq!("007".parse(), Ok(TenantArg::Digits("007".into())));
        assert_eq!(TenantArg::Id(3).to_string(), "3");
        assert_eq!(TenantArg::Name("acme".into()).to_string(), "\"acme\"");
    }

    #[test]
    fn server_urls() {
        let url = |s: &str| s.parse::<ServerUrl>();
        let want = |host: &str, port| {
            Ok(ServerUrl {
                host: host.into(),
                port,
            })
        };
        assert_eq!(url("https://127.0.0.1:7421"), want("127.0.0.1", 7421));
        assert_eq!(
            url("https://ctl.example.com"),
            want("ctl.example.com", 7421)
        );
        assert_eq!(
            url("https://ctl.example.com:9000/"),
            want("ctl.example.com", 9000)
        );
        assert_eq!(url("localhost:8000"), want("localhost", 8000));
        assert_eq!(url("https://[::1]:7000"), want("::1", 7000));
        assert_eq!(url("https://[::1]"), want("::1", 7421));
        for bad in [
            "http://127.0.0.1:7421",
            "tls://127.0.0.1:7421",
            "https://",
            "https://:7421",
            "https://h:0",
            "https://h:70000",
            "https://h:x",
            "https://h/path",
            "https://u@h",
            "https://[::1",
            "https://[::1]7000",
        ] {
            assert!(url(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            url("https://[::1]:7000").map(|u| u.to_string()),
            Ok("https://[::1]:7000".to_owned())
        );
        assert_eq!(
            url("localhost").map(|u| u.to_string()),
            Ok("https://localhost:7421".to_owned())
        );
    }

    #[test]
    fn data_dir_fills_in_missing_paths_only() {
        // Env fallbacks would leak into these tests; the defaults are checked
        // only when the variables are unset.
        let env_free = [
            "ARQONCTL_SERVER",
            "ARQONCTL_CA",
            "ARQONCTL_TOKEN_FILE",
            "ARQONBUS_DATA_DIR",
        ]
        .iter()
        .all(|v| std::env::var_os(v).is_none());
        if env_free {
            let s = ok(&["node", "status"]).conn.settings();
            assert_eq!(s.ca, PathBuf::from("arqonbus-data/tls/ca.pem"));
            assert_eq!(
                s.token_file,
                PathBuf::from("arqonbus-data/credentials/admin.token")
            );
            assert_eq!(s.server.to_string(), "https://127.0.0.1:7421");
            assert_eq!(s.timeout, Duration::from_secs(30));
        }

        let s = ok(&["--data-dir", "/d", "node", "status"]).conn.settings();
        assert_eq!(s.ca, PathBuf::from("/d/tls/ca.pem"));
        assert_eq!(s.token_file, PathBuf::from("/d/credentials/admin.token"));

        let s = ok(&[
            "node",
            "status",
            "--data-dir",
            "/d",
            "--ca",
            "/ca.pem",
            "--admin-token-file",
            "/t",
            "--server",
            "https://10.0.0.1:9",
            "--timeout",
            "2m",
        ])
        .conn
        .settings();
        assert_eq!(s.ca, PathBuf::from("/ca.pem"));
        assert_eq!(s.token_file, PathBuf::from("/t"));
        assert_eq!(s.server.to_string(), "https://10.0.0.1:9");
        assert_eq!(s.timeout, Duration::from_secs(120));

        let s = ok(&["--data-dir", "/d", "--ca", "/ca.pem", "node", "status"])
            .conn
            .settings();
        assert_eq!(s.ca, PathBuf::from("/ca.pem"));
        assert_eq!(s.token_file, PathBuf::from("/d/credentials/admin.token"));
        if std::env::var_os("ARQONCTL_CLIENT_CERT").is_none() {
            assert_eq!(s.client_identity, None);
        }

        let s = ok(&[
            "--client-cert",
            "/op.pem",
            "node",
            "status",
            "--client-key",
            "/op.key",
        ])
        .conn
        .settings();
        assert_eq!(
            s.client_identity,
            Some((PathBuf::from("/op.pem"), PathBuf::from("/op.key")))
        );
    }

    #[test]
    fn help_names_the_variables_but_hides_secret_file_values() {
        let cmd = Cli::command();
        let help = cmd.clone().render_long_help().to_string();
        for var in [
            "ARQONCTL_SERVER",
            "ARQONCTL_CA",
            "ARQONCTL_TOKEN_FILE",
            "ARQONCTL_CLIENT_CERT",
            "ARQONCTL_CLIENT_KEY",
            "ARQONBUS_DATA_DIR",
        ] {
            assert!(help.contains(var), "{help}");
        }
        for id in ["admin_token_file", "client_key"] {
            let arg = cmd.get_arguments().find(|a| a.get_id() == id).unwrap();
            assert!(arg.is_hide_env_values_set(), "{id}");
        }
    }

    #[test]
    fn durations() {
        let secs = |s| Ok(Duration::from_secs(s));
        assert_eq!(parse_duration("30s"), secs(30));
        assert_eq!(parse_duration("3600"), secs(3600));
        assert_eq!(parse_duration("30m"), secs(1800));
        assert_eq!(parse_duration("1h"), secs(3600));
        assert_eq!(parse_duration("7d"), secs(7 * 86_400));
        assert_eq!(parse_duration("1h30m"), secs(5400));
        assert_eq!(parse_duration(" 2m "), secs(120));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        for bad in [
            "",
            "0",
            "0s",
            "0h0m",
            "s",
            "-1s",
            "1.5h",
            "1 h",
            "1w",
            "h1",
            "1hh",
            "99999999999999999999s",
            "18446744073709551615d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ttls_are_whole_seconds() {
        assert_eq!(parse_ttl("1h"), Ok(3600));
        assert_eq!(parse_ttl("30m"), Ok(1800));
        assert_eq!(parse_ttl("3600s"), Ok(3600));
        assert_eq!(parse_ttl("90"), Ok(90));
        assert_eq!(parse_ttl("1s500ms").map_err(|_| ()), Err(()));
        assert!(parse_ttl("0s").is_err());
    }
}
