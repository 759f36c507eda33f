//! TLS on the control listener.
//!
//! The caller hands in the server's `rustls::ServerConfig` (its certificate
//! and key); [`control_config`] derives the control plane's own from it:
//! ALPN is set to `h2` only (gRPC), whatever the caller had, and with a client
//! CA configured (mTLS for operators) a new configuration is built around the
//! same certificate resolver with a [`WebPkiClientVerifier`] that requires a
//! client certificate signed by that CA (TLS 1.3 only).
//!
//! `accept_loop` accepts TCP connections and completes each TLS handshake
//! in its own task, bounded by [`HANDSHAKE_TIMEOUT`], so a slow or silent
//! peer never holds up the others. Only finished handshakes reach tonic.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use rustls::server::WebPkiClientVerifier;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// ALPN protocol id of gRPC (HTTP/2).
pub const ALPN_H2: &[u8] = b"h2";
/// Longest time a peer may take to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the control plane's TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The client CA file could not be read or holds no certificate.
    #[error("client CA {path}: {reason}")]
    ClientCa {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client certificate verifier could not be built.
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// The control listener's TLS configuration, from the server's.
pub fn control_config(
    base: &Arc<rustls::ServerConfig>,
    client_ca: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut config = match client_ca {
        None => (**base).clone(),
        Some(path) => {
            let ca_err = |reason: String| TlsError::ClientCa {
                path: path.to_owned(),
                reason,
            };
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| ca_err(e.to_string()))? {
                roots
                    .add(cert.map_err(|e| ca_err(e.to_string()))?)
                    .map_err(|e| ca_err(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(ca_err("no certificate".into()));
            }
            let provider = base.crypto_provider().clone();
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()?;
            rustls::ServerConfig::builder_with_provider(provider)
                .with_protocol_versions(&[&rustls::version::TLS13])?
                .with_client_cert_verifier(verifier)
                .with_cert_resolver(base.cert_resolver.clone())
        }
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// Accepts connections and hands each finished TLS stream to `out`, until
/// `out` is closed.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    out: mpsc::Sender<TlsStream<TcpStream>>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = out.closed() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors and the like: wait instead of spinning.
                tracing::warn!(error = %e, "control listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let out = out.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let _ = out.send(tls).await;
                }
                Ok(Err(e)) => {
                    tracing::info!(%peer, error = %e, "control listener: TLS handshake failed");
                }
                Err(_) => tracing::info!(%peer, "control listener: TLS handshake timed out"),
            }
        });
    }
}
