//! The gRPC channel to the control API: TLS 1.3 (rustls with the ring
//! provider, ALPN `h2`) under tonic, and the admin token on every call.
//!
//! tonic's own TLS is not used: our connector dials TCP and runs the rustls
//! handshake itself, so the configuration is exactly the one built here (TLS
//! 1.3 only, the given CA only) and the server name is the URL's host, an IP
//! address included. tonic sees a plain `http://` endpoint whose origin is set
//! back to `https://`, so requests still carry `:scheme https`.
//!
//! With `--client-cert`/`--client-key` the handshake presents an operator
//! certificate, for a control plane configured for mTLS.
//!
//! Invariants: the token is read from its file, held only inside a sensitive
//! header value (`Debug` shows `<redacted>`, HPACK never indexes it) and never
//! printed or logged, and neither is the client key; a connection is never
//! attempted without a CA to verify the server and a token to send.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arqonbus_proto::control::connection_service_client::ConnectionServiceClient;
use arqonbus_proto::control::credential_service_client::CredentialServiceClient;
use arqonbus_proto::control::node_service_client::NodeServiceClient;
use arqonbus_proto::control::policy_service_client::PolicyServiceClient;
use arqonbus_proto::control::principal_service_client::PrincipalServiceClient;
use arqonbus_proto::control::tenant_service_client::TenantServiceClient;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::args::{ServerUrl, Settings};

/// ALPN for gRPC.
const ALPN_H2: &[u8] = b"h2";
/// Largest answer accepted (tonic's default of 4 MiB is too small for the
/// connection list of a busy node).
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
/// Sent as `user-agent`, so server logs show who called.
const USER_AGENT: &str = concat!("arqonctl/", env!("CARGO_PKG_VERSION"));

/// Everything that can go wrong before the first call.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SetupError {
    #[error("cannot read the CA certificate {}: {source}", path.display())]
    ReadCa { path: PathBuf, source: io::Error },
    #[error("invalid CA certificate {}: {reason}", path.display())]
    InvalidCa { path: PathBuf, reason: String },
    #[error("cannot read the admin token {}: {source}", path.display())]
    ReadToken { path: PathBuf, source: io::Error },
    #[error("the admin token file {} is empty", path.display())]
    EmptyToken { path: PathBuf },
    #[error(
        "the admin token in {} is not a single word of printable ASCII",
        path.display()
    )]
    MalformedToken { path: PathBuf },
    #[error("cannot read the client certificate {}: {source}", path.display())]
    ReadClientCert { path: PathBuf, source: io::Error },
    #[error("invalid client certificate {}: {reason}", path.display())]
    InvalidClientCert { path: PathBuf, reason: String },
    #[error("cannot read the client key {}: {source}", path.display())]
    ReadClientKey { path: PathBuf, source: io::Error },
    #[error("invalid client key {}: {reason}", path.display())]
    InvalidClientKey { path: PathBuf, reason: String },
    #[error("cannot build the TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("{0:?} is not a valid TLS server name")]
    ServerName(String),
    #[error("cannot build the endpoint: {0}")]
    Endpoint(String),
}

/// Why dialling the control listener failed (reported through tonic).
#[derive(Debug, thiserror::Error)]
pub(crate) enum DialError {
    /// TCP connect failed (refused, unreachable, name not resolved...).
    #[error("{0}")]
    Connect(io::Error),
    /// The server's certificate or the TLS negotiation was rejected.
    #[error("{0}")]
    Handshake(rustls::Error),
    /// The connection broke during the handshake.
    #[error("{0}")]
    HandshakeIo(io::Error),
}

impl DialError {
    /// Unwraps the rustls error that tokio-rustls reports as an `io::Error`.
    fn from_handshake(err: io::Error) -> Self {
        let tls = err
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        if let Some(tls) = tls {
            return Self::Handshake(tls.clone());
        }
        Self::HandshakeIo(err)
    }
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub(crate) struct AdminAuth {
    header: MetadataValue<Ascii>,
}

impl fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminAuth")
            .field("header", &"<redacted>")
            .finish()
    }
}

impl AdminAuth {
    /// Reads the token from `path`: one word of printable ASCII, surrounding
    /// whitespace (a trailing newline) ignored.
    pub(crate) fn from_file(path: &Path) -> Result<Self, SetupError> {
        let raw = std::fs::read(path).map_err(|source| SetupError::ReadToken {
            path: path.to_owned(),
            source,
        })?;
        Self::from_bytes(&raw, path)
    }

    fn from_bytes(raw: &[u8], path: &Path) -> Result<Self, SetupError> {
        let token = raw.trim_ascii();
        if token.is_empty() {
            return Err(SetupError::EmptyToken {
                path: path.to_owned(),
            });
        }
        let malformed = || SetupError::MalformedToken {
            path: path.to_owned(),
        };
        if !token.iter().all(u8::is_ascii_graphic) {
            return Err(malformed());
        }
        let mut value = Vec::with_capacity(token.len() + 7);
        value.extend_from_slice(b"Bearer ");
        value.extend_from_slice(token);
        let mut header = MetadataValue::try_from(value).map_err(|_| malformed())?;
        header.set_sensitive(true);
        Ok(Self { header })
    }
}

impl Interceptor for AdminAuth {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.header.clone());
        Ok(request)
    }
}

/// A channel with the admin token attached: one client per service.
#[derive(Debug, Clone)]
pub(crate) struct Control {
    channel: Channel,
    auth: AdminAuth,
}

/// The transport every service client runs on.
pub(crate) type Authed = InterceptedService<Channel, AdminAuth>;

impl Control {
    pub(crate) fn tenants(&self) -> TenantServiceClient<Authed> {
        TenantServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
            .max_decoding_message_size(MAX_RESPONSE_BYTES)
    }

    pub(crate) fn principals(&self) -> PrincipalServiceClient<Authed> {
        PrincipalServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
            .max_decoding_message_size(MAX_RESPONSE_BYTES)
    }

    pub(crate) fn credentials(&self) -> CredentialServiceClient<Authed> {
        CredentialServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
            .max_decoding_message_size(MAX_RESPONSE_BYTES)
    }

    pub(crate) fn policies(&self) -> PolicyServiceClient<Authed> {
        PolicyServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
            .max_decoding_message_size(MAX_RESPONSE_BYTES)
    }

    pub(crate) fn connections(&self) -> ConnectionServiceClient<Authed> {
        ConnectionServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
            .max_decoding_message_size(MAX_RESPONSE_BYTES)
    }

    pub(crate) fn node(&self) -> NodeServiceClient<Authed> {
        NodeServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
            .max_decoding_message_size(MAX_RESPONSE_BYTES)
    }
}

/// What a connection needs, checked before any network traffic.
#[derive(Debug)]
pub(crate) struct Prepared {
    endpoint: Endpoint,
    target: Arc<DialTarget>,
    auth: AdminAuth,
}

/// Where and how to dial.
struct DialTarget {
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    tls: TlsConnector,
}

impl fmt::Debug for DialTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DialTarget")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// Reads the CA, the token and the client identity, and builds the TLS
/// configuration and endpoint.
pub(crate) fn prepare(settings: &Settings) -> Result<Prepared, SetupError> {
    let roots = load_roots(&settings.ca)?;
    let identity = match &settings.client_identity {
        Some((cert, key)) => Some(ClientIdentity::load(cert, key)?),
        None => None,
    };
    let auth = AdminAuth::from_file(&settings.token_file)?;
    let tls = tls_config(roots, identity)?;
    Prepared::new(&settings.server, tls, auth)
}

impl DialTarget {
    fn new(server: &ServerUrl, tls: rustls::ClientConfig) -> Result<Self, SetupError> {
        let server_name = ServerName::try_from(server.host.clone())
            .map_err(|_| SetupError::ServerName(server.host.clone()))?;
        Ok(Self {
            host: server.host.clone(),
            port: server.port,
            server_name,
            tls: TlsConnector::from(Arc::new(tls)),
        })
    }
}

impl Prepared {
    fn new(
        server: &ServerUrl,
        tls: rustls::ClientConfig,
        auth: AdminAuth,
    ) -> Result<Self, SetupError> {
        Ok(Self {
            endpoint: endpoint(server)?,
            target: Arc::new(DialTarget::new(server, tls)?),
            auth,
        })
    }

    /// Dials the server and performs the TLS and HTTP/2 handshakes.
    pub(crate) async fn connect(self) -> Result<Control, tonic::transport::Error> {
        let target = self.target;
        let connector = tower::service_fn(move |_: Uri| dial(Arc::clone(&target)));
        let channel = self.endpoint.connect_with_connector(connector).await?;
        Ok(Control {
            channel,
            auth: self.auth,
        })
    }
}

/// A plain-HTTP endpoint for tonic (our connector adds TLS) with the
/// `https://` origin put back on every request.
fn endpoint(server: &ServerUrl) -> Result<Endpoint, SetupError> {
    let uri = |scheme: &str| {
        Uri::try_from(format!("{scheme}://{}", server.authority()))
            .map_err(|e| SetupError::Endpoint(e.to_string()))
    };
    Endpoint::from(uri("http")?)
        .origin(uri("https")?)
        .user_agent(USER_AGENT)
        .map_err(|e| SetupError::Endpoint(e.to_string()))
}

async fn dial(target: Arc<DialTarget>) -> Result<TokioIo<TlsStream<TcpStream>>, DialError> {
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(DialError::Connect)?;
    tcp.set_nodelay(true).map_err(DialError::Connect)?;
    let tls = target
        .tls
        .connect(target.server_name.clone(), tcp)
        .await
        .map_err(DialError::from_handshake)?;
    tracing::debug!(
        host = %target.host,
        port = target.port,
        alpn = ?tls.get_ref().1.alpn_protocol().map(String::from_utf8_lossy),
        "connected to the control API"
    );
    Ok(TokioIo::new(tls))
}

/// The CA certificates in the PEM file at `path`.
pub(crate) fn load_roots(path: &Path) -> Result<rustls::RootCertStore, SetupError> {
    let pem = std::fs::read(path).map_err(|source| SetupError::ReadCa {
        path: path.to_owned(),
        source,
    })?;
    roots_from_pem(&pem).map_err(|reason| SetupError::InvalidCa {
        path: path.to_owned(),
        reason,
    })
}

fn roots_from_pem(pem: &[u8]) -> Result<rustls::RootCertStore, String> {
    let mut reader = pem;
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut reader)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cannot parse PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no CERTIFICATE block found in the PEM".into());
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| e.to_string())?;
    }
    Ok(roots)
}

/// An operator certificate chain and its private key, for mTLS.
pub(crate) struct ClientIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("chain", &self.chain.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

impl ClientIdentity {
    /// Reads the PEM chain from `cert` and the PEM private key from `key`.
    pub(crate) fn load(cert: &Path, key: &Path) -> Result<Self, SetupError> {
        let cert_pem = std::fs::read(cert).map_err(|source| SetupError::ReadClientCert {
            path: cert.to_owned(),
            source,
        })?;
        let key_pem = std::fs::read(key).map_err(|source| SetupError::ReadClientKey {
            path: key.to_owned(),
            source,
        })?;
        Self::from_pem(&cert_pem, &key_pem, cert, key)
    }

    fn from_pem(
        cert_pem: &[u8],
        key_pem: &[u8],
        cert: &Path,
        key: &Path,
    ) -> Result<Self, SetupError> {
        let bad_cert = |reason: String| SetupError::InvalidClientCert {
            path: cert.to_owned(),
            reason,
        };
        let bad_key = |reason: String| SetupError::InvalidClientKey {
            path: key.to_owned(),
            reason,
        };
        let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &cert_pem[..])
            .collect::<Result<_, _>>()
            .map_err(|e| bad_cert(format!("cannot parse PEM: {e}")))?;
        if chain.is_empty() {
            return Err(bad_cert("no CERTIFICATE block found in the PEM".into()));
        }
        let key = rustls_pemfile::private_key(&mut &key_pem[..])
            .map_err(|e| bad_key(format!("cannot parse PEM: {e}")))?
            .ok_or_else(|| bad_key("no PRIVATE KEY block found in the PEM".into()))?;
        Ok(Self { chain, key })
    }
}

/// TLS 1.3 only, the ring provider, the given roots, ALPN `h2`, and the
/// client certificate when one is given.
pub(crate) fn tls_config(
    roots: rustls::RootCertStore,
    identity: Option<ClientIdentity>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(ClientIdentity { chain, key }) => builder.with_client_auth_cert(chain, key)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_sent_as_a_bearer_header_and_never_shown() {
        let path = Path::new("/d/credentials/admin.token");
        let mut auth = AdminAuth::from_bytes(b"  adm_s3cret\n", path).unwrap();
        assert!(!format!("{auth:?}").contains("s3cret"));
        let request = auth.call(tonic::Request::new(())).unwrap();
        let header = request.metadata().get("authorization").unwrap();
        assert_eq!(header.to_str().unwrap(), "Bearer adm_s3cret");
        assert!(header.is_sensitive());
        assert!(!format!("{header:?}").contains("s3cret"));
    }

    #[test]
    fn bad_token_files_are_rejected_without_echoing_them() {
        let path = Path::new("/t");
        for (raw, want) in [
            (&b""[..], "is empty"),
            (b" \n\t", "is empty"),
            (b"two words", "printable ASCII"),
            (b"caf\xc3\xa9", "printable ASCII"),
            (b"a\x00b", "printable ASCII"),
        ] {
            let err = AdminAuth::from_bytes(raw, path).unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
            assert!(!err.contains("words") && !err.contains("caf"), "{err}");
        }
        let missing = AdminAuth::from_file(Path::new("/nonexistent/admin.token")).unwrap_err();
        assert!(
            missing
                .to_string()
                .starts_with("cannot read the admin token /nonexistent/admin.token: "),
            "{missing}"
        );
    }

    #[test]
    fn ca_files_must_hold_a_certificate() {
        assert!(roots_from_pem(b"").unwrap_err().contains("no CERTIFICATE"));
        assert!(
            roots_from_pem(b"not pem at all")
                .unwrap_err()
                .contains("no CERTIFICATE")
        );
        let garbage = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(roots_from_pem(garbage).is_err());
        let err = load_roots(Path::new("/nonexistent/ca.pem")).unwrap_err();
        assert!(matches!(err, SetupError::ReadCa { .. }), "{err}");
    }

    /// A CA certificate (self-signed, for `names`) and a TLS server config
    /// using it with the given versions and ALPN.
    fn server_tls(
        names: &[&str],
        versions: &[&'static rustls::SupportedProtocolVersion],
        alpn: &[&[u8]],
    ) -> (tokio_rustls::TlsAcceptor, rustls::RootCertStore) {
        let names = names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
        let ck = rcgen::generate_simple_self_signed(names).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![ck.cert.der().clone()], key)
            .unwrap();
        config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        (
            tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            roots_from_pem(ck.cert.pem().as_bytes()).unwrap(),
        )
    }

    const BOTH: &[&rustls::SupportedProtocolVersion] =
        &[&rustls::version::TLS12, &rustls::version::TLS13];

    /// Accepts one connection with `acceptor` and dials it with `roots`.
    async fn handshake(
        acceptor: tokio_rustls::TlsAcceptor,
        roots: rustls::RootCertStore,
        host: &str,
    ) -> Result<TokioIo<TlsStream<TcpStream>>, DialError> {
        handshake_as(acceptor, roots, None, host).await
    }

    /// [`handshake`] presenting a client certificate.
    async fn handshake_as(
        acceptor: tokio_rustls::TlsAcceptor,
        roots: rustls::RootCertStore,
        identity: Option<ClientIdentity>,
        host: &str,
    ) -> Result<TokioIo<TlsStream<TcpStream>>, DialError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            // Keep the server's side open until the client is done.
            acceptor.accept(tcp).await
        });
        let url: ServerUrl = format!("https://{host}:{port}").parse().unwrap();
        let tls = tls_config(roots, identity).unwrap();
        let result = dial(Arc::new(DialTarget::new(&url, tls).unwrap())).await;
        drop(server.await.unwrap());
        result
    }

    #[tokio::test]
    async fn handshakes_are_tls_1_3_with_alpn_h2_by_ip_and_by_name() {
        for host in ["127.0.0.1", "localhost"] {
            let (acceptor, roots) = server_tls(&["localhost", "127.0.0.1"], BOTH, &[b"h2"]);
            let io = handshake(acceptor, roots, host).await.unwrap();
            let (_, session) = io.inner().get_ref();
            assert_eq!(
                session.protocol_version(),
                Some(rustls::ProtocolVersion::TLSv1_3),
                "{host}"
            );
            assert_eq!(session.alpn_protocol(), Some(&b"h2"[..]), "{host}");
        }
    }

    #[tokio::test]
    async fn tls_1_2_only_servers_are_refused() {
        let (acceptor, roots) = server_tls(&["127.0.0.1"], &[&rustls::version::TLS12], &[b"h2"]);
        let err = handshake(acceptor, roots, "127.0.0.1").await.unwrap_err();
        assert!(matches!(err, DialError::Handshake(_)), "{err:?}");
    }

    #[tokio::test]
    async fn the_server_certificate_must_chain_to_the_ca_and_name_the_host() {
        let (acceptor, _) = server_tls(&["127.0.0.1"], BOTH, &[b"h2"]);
        let (_, other_roots) = server_tls(&["127.0.0.1"], BOTH, &[b"h2"]);
        let err = handshake(acceptor, other_roots, "127.0.0.1")
            .await
            .unwrap_err();
        // UnknownIssuer, or BadSignature when both CAs carry rcgen's default
        // subject name.
        assert!(
            matches!(
                err,
                DialError::Handshake(rustls::Error::InvalidCertificate(_))
            ),
            "{err:?}"
        );

        let (acceptor, roots) = server_tls(&["localhost"], BOTH, &[b"h2"]);
        let err = handshake(acceptor, roots, "127.0.0.1").await.unwrap_err();
        assert!(
            matches!(
                err,
                DialError::Handshake(rustls::Error::InvalidCertificate(_))
            ),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_server_without_h2_is_explained_as_the_wrong_port() {
        // What the data-plane listener looks like to arqonctl.
        let (acceptor, roots) = server_tls(&["127.0.0.1"], BOTH, &[b"arqonbus/1"]);
        let err = handshake(acceptor, roots, "127.0.0.1").await.unwrap_err();
        let url: ServerUrl = "https://127.0.0.1:7420".parse().unwrap();
        assert!(
            crate::describe_dial(&err, &url).contains("control port"),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_refused_connection_is_reported_through_tonic() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let url: ServerUrl = format!("https://127.0.0.1:{port}").parse().unwrap();
        let auth = AdminAuth::from_bytes(b"adm_x", Path::new("/t")).unwrap();
        let tls = tls_config(rustls::RootCertStore::empty(), None).unwrap();
        let prepared = Prepared::new(&url, tls, auth).unwrap();
        let err = prepared.connect().await.unwrap_err();
        assert_eq!(
            crate::connection_failure(&err, &url).unwrap(),
            format!(
                "cannot reach https://127.0.0.1:{port}: connection refused (is the control plane \
                 running?)"
            )
        );
    }

    /// A CA for operator certificates and one certificate it signed (PEM
    /// chain, PEM key).
    fn operator_ca() -> (rustls::RootCertStore, String, String) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "operators CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "operator");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &ca).unwrap();
        (
            roots_from_pem(ca.pem().as_bytes()).unwrap(),
            cert.pem(),
            key.serialize_pem(),
        )
    }

    #[tokio::test]
    async fn a_client_certificate_is_presented_when_given() {
        let (operator_roots, cert_pem, key_pem) = operator_ca();
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
        let server_key =
            rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(operator_roots),
            provider.clone(),
        )
        .build()
        .unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![ck.cert.der().clone()], server_key)
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let roots = roots_from_pem(ck.cert.pem().as_bytes()).unwrap();

        let paths = (Path::new("/op.pem"), Path::new("/op.key"));
        let identity =
            ClientIdentity::from_pem(cert_pem.as_bytes(), key_pem.as_bytes(), paths.0, paths.1)
                .unwrap();
        assert!(!format!("{identity:?}").contains("PRIVATE"));
        let io = handshake_as(acceptor.clone(), roots.clone(), Some(identity), "127.0.0.1")
            .await
            .unwrap();
        assert_eq!(io.inner().get_ref().1.alpn_protocol(), Some(&b"h2"[..]));

        // Without one, TLS 1.3 reports the refusal after the handshake, on
        // the first read.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            acceptor.accept(tcp).await.is_ok()
        });
        let url: ServerUrl = format!("https://127.0.0.1:{port}").parse().unwrap();
        let target = DialTarget::new(&url, tls_config(roots, None).unwrap()).unwrap();
        let refusal = match dial(Arc::new(target)).await {
            Err(DialError::Handshake(e)) => e,
            Err(other) => panic!("{other:?}"),
            Ok(io) => {
                use tokio::io::AsyncReadExt as _;
                let mut tls = io.into_inner();
                let err = tls.read(&mut [0; 1]).await.unwrap_err();
                err.get_ref()
                    .and_then(|e| e.downcast_ref::<rustls::Error>())
                    .cloned()
                    .unwrap()
            }
        };
        assert!(!server.await.unwrap(), "the server accepted no certificate");
        assert_eq!(
            refusal,
            rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired)
        );
        assert!(crate::describe_tls(&refusal, &url).contains("--client-cert"));
    }

    #[test]
    fn client_identity_files_are_checked() {
        let (_, cert_pem, key_pem) = operator_ca();
        let (cert, key) = (Path::new("/op.pem"), Path::new("/op.key"));
        let err = ClientIdentity::from_pem(b"", key_pem.as_bytes(), cert, key).unwrap_err();
        assert!(matches!(err, SetupError::InvalidClientCert { .. }), "{err}");
        let err = ClientIdentity::from_pem(cert_pem.as_bytes(), b"", cert, key).unwrap_err();
        assert!(matches!(err, SetupError::InvalidClientKey { .. }), "{err}");
        // A key that does not belong to the certificate.
        let (_, _, other_key) = operator_ca();
        let identity =
            ClientIdentity::from_pem(cert_pem.as_bytes(), other_key.as_bytes(), cert, key).unwrap();
        assert!(tls_config(rustls::RootCertStore::empty(), Some(identity)).is_err());
        let err = ClientIdentity::load(Path::new("/nonexistent.pem"), key).unwrap_err();
        assert!(matches!(err, SetupError::ReadClientCert { .. }), "{err}");
    }

    #[test]
    fn endpoints_keep_the_https_origin() {
        for (url, want) in [
            ("https://127.0.0.1:7421", "127.0.0.1:7421"),
            ("https://[::1]:7000", "[::1]:7000"),
            ("https://ctl.example.com", "ctl.example.com:7421"),
        ] {
            let server: ServerUrl = url.parse().unwrap();
            let e = endpoint(&server).unwrap();
            assert_eq!(e.uri().to_string(), format!("http://{want}/"));
            // IP addresses are valid server names (verified against IP SANs).
            assert!(ServerName::try_from(server.host.clone()).is_ok(), "{url}");
        }
    }
}
