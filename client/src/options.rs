//! Connection options: a builder ([`ConnectOptions`]) and its validated form
//! ([`Resolved`]) that the transport and the background task use.
//!
//! Invariants: a [`Credential`] never appears in `Debug` output or logs; files
//! (CA, credential) are read once, when the client connects; a [`Resolved`]
//! has a parsed URL, a credential, a TLS configuration when the scheme is TLS,
//! and positive capacities.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use arqonbus_proto::v1;
use rustls::pki_types::CertificateDer;

use crate::ALPN;
use crate::backoff::ReconnectPolicy;
use crate::error::OptionsError;
use crate::url::{Scheme, ServerUrl};

/// Longest `client_name` the protocol accepts, in bytes.
const MAX_CLIENT_NAME: usize = 128;

/// A bearer credential (`abt_...`). Its `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential(String);

impl Credential {
    /// Wraps a token, trimming surrounding whitespace (token files end with a
    /// newline). Rejects empty tokens and tokens with inner whitespace or
    /// control characters.
    pub fn new(token: impl Into<String>) -> Result<Self, OptionsError> {
        let token = token.into();
        let trimmed = token.trim();
        if trimmed.is_empty() {
            return Err(OptionsError::InvalidCredential("it is empty"));
        }
        if trimmed.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(OptionsError::InvalidCredential(
                "it contains whitespace or control characters",
            ));
        }
        Ok(Self(trimmed.to_owned()))
    }

    /// The secret itself. Only the handshake needs it.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credential(<redacted>)")
    }
}

impl fmt::Display for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// What kind of peer this client is (used by the server for limits and
/// observability).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ClientKind {
    /// A person's app or tool (the default, e.g. the `arqon` CLI).
    #[default]
    Human,
    /// A sensor, gateway or other device.
    Device,
    /// A service or AI agent.
    Agent,
}

impl ClientKind {
    pub(crate) fn to_wire(self) -> v1::ClientKind {
        match self {
            Self::Human => v1::ClientKind::Human,
            Self::Device => v1::ClientKind::Device,
            Self::Agent => v1::ClientKind::Agent,
        }
    }
}

impl FromStr for ClientKind {
    type Err = OptionsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "human" => Ok(Self::Human),
            "device" => Ok(Self::Device),
            "agent" => Ok(Self::Agent),
            _ => Err(OptionsError::UnknownClientKind(s.to_owned())),
        }
    }
}

/// Where the CA certificate comes from.
#[derive(Clone)]
enum CaSource {
    File(PathBuf),
    Pem(Arc<[u8]>),
}

impl fmt::Debug for CaSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(p) => f.debug_tuple("File").field(p).finish(),
            Self::Pem(pem) => write!(f, "Pem(<{} bytes>)", pem.len()),
        }
    }
}

/// Where the credential comes from.
#[derive(Clone, Debug)]
enum CredentialSource {
    Value(Credential),
    File(PathBuf),
    Invalid(OptionsError),
}

/// How to connect. Build with [`ConnectOptions::new`] and the chained setters,
/// then pass to [`Client::connect`](crate::Client::connect), which validates
/// everything and reads the files.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    url: String,
    ca: Option<CaSource>,
    credential: Option<CredentialSource>,
    client_name: String,
    client_kind: ClientKind,
    no_echo: bool,
    reconnect: ReconnectPolicy,
    request_timeout: Duration,
    connect_timeout: Duration,
    ping_interval: Duration,
    reconnect_buffer_size: usize,
    subscriber_capacity: usize,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            url: format!("tls://127.0.0.1:{}", crate::DEFAULT_PORT),
            ca: None,
            credential: None,
            client_name: String::new(),
            client_kind: ClientKind::default(),
            no_echo: false,
            reconnect: ReconnectPolicy::default(),
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(30),
            reconnect_buffer_size: 8 * 1024 * 1024,
            subscriber_capacity: 8192,
        }
    }
}

impl ConnectOptions {
    /// Defaults: `tls://127.0.0.1:7420`, no CA, no credential, kind human,
    /// echo on, default [`ReconnectPolicy`], 5 s request and connect
    /// timeouts, 30 s client ping interval, 8 MiB reconnect buffer, 8192
    /// messages per subscriber.
    pub fn new() -> Self {
        Self::default()
    }

    /// The server URL: `tls://host[:port]` (default), `tcp://host[:port]`
    /// (plaintext) or `host[:port]`. The default port is 7420.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = url.into();
        self
    }

    /// A PEM file holding the CA certificate(s) that sign the server's
    /// certificate (the server writes `<data_dir>/tls/ca.pem`). Needed for
    /// `tls://`; ignored for `tcp://`.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca = Some(CaSource::File(path.into()));
        self
    }

    /// Like [`ca_file`](Self::ca_file), with the PEM text in memory.
    pub fn ca_pem(mut self, pem: impl AsRef<[u8]>) -> Self {
        self.ca = Some(CaSource::Pem(Arc::from(pem.as_ref())));
        self
    }

    /// The bearer credential (`abt_...`). Surrounding whitespace is trimmed.
    /// An invalid token makes [`Client::connect`](crate::Client::connect)
    /// fail with [`OptionsError::InvalidCredential`].
    pub fn credential(mut self, token: impl Into<String>) -> Self {
        self.credential = Some(match Credential::new(token) {
            Ok(c) => CredentialSource::Value(c),
            Err(e) => CredentialSource::Invalid(e),
        });
        self
    }

    /// Like [`credential`](Self::credential), with an already validated
    /// [`Credential`].
    pub fn with_credential(mut self, credential: Credential) -> Self {
        self.credential = Some(CredentialSource::Value(credential));
        self
    }

    /// A file holding the credential (e.g.
    /// `<data_dir>/credentials/bootstrap.token`), read when connecting.
    pub fn credential_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.credential = Some(CredentialSource::File(path.into()));
        self
    }

    /// A name for operators (at most 128 bytes).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.client_name = name.into();
        self
    }

    /// What kind of peer this is.
    pub fn kind(mut self, kind: ClientKind) -> Self {
        self.client_kind = kind;
        self
    }

    /// When true, this connection does not receive its own publishes.
    pub fn no_echo(mut self, no_echo: bool) -> Self {
        self.no_echo = no_echo;
        self
    }

    /// How to reconnect after the connection is lost.
    pub fn reconnect(mut self, policy: ReconnectPolicy) -> Self {
        self.reconnect = policy;
        self
    }

    /// The timeout of [`Client::request`](crate::Client::request).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The longest one connection attempt (TCP, TLS and Welcome) may take.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How often the client pings the server to detect a dead connection.
    /// Two unanswered pings in a row drop the connection (and reconnect).
    pub fn ping_interval(mut self, interval: Duration) -> Self {
        self.ping_interval = interval;
        self
    }

    /// Bytes of publishes the client holds that are not yet handed to the
    /// socket. While connected a publish waits for room; while disconnected
    /// a publish that does not fit fails with
    /// [`Error::ReconnectBufferFull`](crate::Error::ReconnectBufferFull).
    pub fn reconnect_buffer_size(mut self, bytes: usize) -> Self {
        self.reconnect_buffer_size = bytes;
        self
    }

    /// Messages a [`Subscriber`](crate::Subscriber) buffers before further
    /// ones are dropped (and counted) as a client-side slow consumer.
    pub fn subscriber_capacity(mut self, messages: usize) -> Self {
        self.subscriber_capacity = messages;
        self
    }

    /// Checks everything, reads the CA and credential files, and builds the
    /// TLS configuration.
    pub(crate) fn resolve(&self) -> Result<Resolved, OptionsError> {
        let url = ServerUrl::parse(&self.url)?;
        let credential = match &self.credential {
            None => return Err(OptionsError::MissingCredential),
            Some(CredentialSource::Invalid(e)) => return Err(e.clone()),
            Some(CredentialSource::Value(c)) => c.clone(),
            Some(CredentialSource::File(path)) => {
                let text =
                    std::fs::read_to_string(path).map_err(|e| OptionsError::ReadCredential {
                        path: path.clone(),
                        source: Arc::new(e),
                    })?;
                Credential::new(text)?
            }
        };
        if self.client_name.len() > MAX_CLIENT_NAME {
            return Err(OptionsError::ClientNameTooLong(self.client_name.len()));
        }
        for (value, name) in [
            (self.reconnect_buffer_size, "reconnect_buffer_size"),
            (self.subscriber_capacity, "subscriber_capacity"),
        ] {
            if value == 0 {
                return Err(OptionsError::Zero(name));
            }
        }
        for (value, name) in [
            (self.request_timeout, "request_timeout"),
            (self.connect_timeout, "connect_timeout"),
            (self.ping_interval, "ping_interval"),
        ] {
            if value.is_zero() {
                return Err(OptionsError::Zero(name));
            }
        }
        let tls = match url.scheme {
            Scheme::Tcp => None,
            Scheme::Tls => {
                let pem: Arc<[u8]> = match &self.ca {
                    None => return Err(OptionsError::MissingCa),
                    Some(CaSource::Pem(pem)) => pem.clone(),
                    Some(CaSource::File(path)) => std::fs::read(path)
                        .map_err(|e| OptionsError::ReadCa {
                            path: path.clone(),
                            source: Arc::new(e),
                        })?
                        .into(),
                };
                Some(Arc::new(tls_config(&pem)?))
            }
        };
        Ok(Resolved {
            url,
            credential,
            tls,
            client_name: self.client_name.clone(),
            client_kind: self.client_kind,
            no_echo: self.no_echo,
            reconnect: self.reconnect,
            request_timeout: self.request_timeout,
            connect_timeout: self.connect_timeout,
            ping_interval: self.ping_interval,
            reconnect_buffer_size: self.reconnect_buffer_size,
            subscriber_capacity: self.subscriber_capacity,
        })
    }
}

/// Builds a TLS 1.3-only client configuration with the ring provider, the
/// given CA roots and ALPN `arqonbus/1`.
fn tls_config(ca_pem: &[u8]) -> Result<rustls::ClientConfig, OptionsError> {
    let mut reader = ca_pem;
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut reader)
        .collect::<Result<_, _>>()
        .map_err(|e| OptionsError::InvalidCa(format!("cannot parse PEM: {e}")))?;
    if certs.is_empty() {
        return Err(OptionsError::InvalidCa(
            "no CERTIFICATE block found in the PEM".into(),
        ));
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| OptionsError::InvalidCa(e.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// Validated options, shared by the transport and the background task.
#[derive(Debug)]
pub(crate) struct Resolved {
    pub(crate) url: ServerUrl,
    pub(crate) credential: Credential,
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
    pub(crate) client_name: String,
    pub(crate) client_kind: ClientKind,
    pub(crate) no_echo: bool,
    pub(crate) reconnect: ReconnectPolicy,
    pub(crate) request_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) ping_interval: Duration,
    pub(crate) reconnect_buffer_size: usize,
    pub(crate) subscriber_capacity: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "abt_s3cr3t-token-value";

    #[test]
    fn credentials_never_show_in_debug() {
        let c = Credential::new(TOKEN).unwrap();
        assert!(!format!("{c:?}").contains("s3cr3t"));
        assert!(!format!("{c}").contains("s3cr3t"));
        let opts = ConnectOptions::new().credential(TOKEN);
        let debug = format!("{opts:?}");
        assert!(!debug.contains("s3cr3t"), "{debug}");
        assert!(debug.contains("redacted"));
        let resolved = opts.url("tcp://h").resolve().unwrap();
        assert!(!format!("{resolved:?}").contains("s3cr3t"));
    }

    #[test]
    fn credentials_are_trimmed_and_checked() {
        assert_eq!(Credential::new("  abt_x\n").unwrap().expose(), "abt_x");
        assert!(Credential::new("\n").is_err());
        assert!(Credential::new("abt_a b").is_err());
        assert!(Credential::new("abt_\u{7}").is_err());
        let err = ConnectOptions::new()
            .url("tcp://h")
            .credential("")
            .resolve()
            .unwrap_err();
        assert!(matches!(err, OptionsError::InvalidCredential(_)));
    }

    #[test]
    fn credential_file_is_read_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bootstrap.token");
        std::fs::write(&path, format!("{TOKEN}\n")).unwrap();
        let r = ConnectOptions::new()
            .url("tcp://h")
            .credential_file(&path)
            .resolve()
            .unwrap();
        assert_eq!(r.credential.expose(), TOKEN);
        let missing = ConnectOptions::new()
            .url("tcp://h")
            .credential_file(dir.path().join("nope"))
            .resolve()
            .unwrap_err();
        assert!(matches!(missing, OptionsError::ReadCredential { .. }));
    }

    #[test]
    fn validation_catches_bad_options() {
        let base = || ConnectOptions::new().url("tcp://h").credential(TOKEN);
        assert!(matches!(
            ConnectOptions::new().url("tcp://h").resolve(),
            Err(OptionsError::MissingCredential)
        ));
        assert!(matches!(
            base().subscriber_capacity(0).resolve(),
            Err(OptionsError::Zero("subscriber_capacity"))
        ));
        assert!(matches!(
            base().reconnect_buffer_size(0).resolve(),
            Err(OptionsError::Zero("reconnect_buffer_size"))
        ));
        assert!(matches!(
            base().request_timeout(Duration::ZERO).resolve(),
            Err(OptionsError::Zero("request_timeout"))
        ));
        assert!(matches!(
            base().name("n".repeat(129)).resolve(),
            Err(OptionsError::ClientNameTooLong(129))
        ));
        assert!(matches!(
            base().url("ftp://h").resolve(),
            Err(OptionsError::InvalidUrl { .. })
        ));
        // TLS needs a CA; plaintext does not.
        assert!(matches!(
            base().url("tls://h").resolve(),
            Err(OptionsError::MissingCa)
        ));
        assert!(base().resolve().unwrap().tls.is_none());
        assert!(matches!(
            base().url("tls://h").ca_pem("not a pem").resolve(),
            Err(OptionsError::InvalidCa(_))
        ));
        assert!(matches!(
            base()
                .url("tls://h")
                .ca_file("/nonexistent/ca.pem")
                .resolve(),
            Err(OptionsError::ReadCa { .. })
        ));
    }

    #[test]
    fn tls_config_uses_tls13_and_alpn() {
        let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let r = ConnectOptions::new()
            .credential(TOKEN)
            .ca_pem(ca.cert.pem())
            .resolve()
            .unwrap();
        let tls = r.tls.unwrap();
        assert_eq!(tls.alpn_protocols, vec![b"arqonbus/1".to_vec()]);
        assert!(format!("{:?}", r.url).contains("127.0.0.1"));
    }

    #[test]
    fn client_kind_parses() {
        assert_eq!("agent".parse::<ClientKind>().unwrap(), ClientKind::Agent);
        assert_eq!("Device".parse::<ClientKind>().unwrap(), ClientKind::Device);
        assert!("robot".parse::<ClientKind>().is_err());
    }
}
