//! TLS material: load the operator's certificate, or generate a private CA and
//! a server certificate in the data directory on first start.
//!
//! Files (under `<data_dir>/tls/`): `ca.pem` (give this to clients), `ca.key`
//! (0600), `server.pem` (chain: server then CA), `server.key` (0600). A server
//! certificate that expires within [`RENEW_BEFORE_DAYS`] days, or lacks a
//! configured name, is re-issued from the CA at start. Keys are written with
//! mode 0600 from creation, never widened.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use time::{Duration, OffsetDateTime};

use crate::config::TlsSection;

/// ALPN protocol id of the client protocol.
pub const ALPN: &[u8] = b"arqonbus/1";
/// Server certificates are re-issued this many days before they expire.
pub const RENEW_BEFORE_DAYS: i64 = 30;
const SERVER_CERT_DAYS: i64 = 397;
const CA_DAYS: i64 = 3650;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A PEM file holds no usable certificate or key.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Generating a key or certificate failed.
    #[error("generating TLS material: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls rejected the certificate or key.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// What [`prepare`] produced.
#[derive(Debug)]
pub struct TlsMaterial {
    /// The rustls configuration for the data plane.
    pub server_config: Arc<rustls::ServerConfig>,
    /// The CA clients should trust, when we generated it.
    pub ca_path: Option<PathBuf>,
    /// Whether anything was generated during this start.
    pub generated: bool,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `data` to `path` atomically with `mode` (0600 for keys).
pub(crate) fn write_file(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn hostname() -> Option<String> {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let h = h.trim();
    (!h.is_empty()).then(|| h.to_owned())
}

/// Names the generated server certificate must carry.
fn required_names(extra: &[String]) -> Vec<String> {
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    names.extend(hostname());
    for n in extra {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    names
}

fn generate_ca(dir: &Path) -> Result<(String, KeyPair), TlsError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "ArqonBus local CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now() - Duration::days(1);
    params.not_after = now() + Duration::days(CA_DAYS);
    let cert = params.self_signed(&key)?;
    let pem = cert.pem();
    let ca_pem = dir.join("ca.pem");
    let ca_key = dir.join("ca.key");
    write_file(&ca_key, key.serialize_pem().as_bytes(), 0o600).map_err(io_err(&ca_key))?;
    write_file(&ca_pem, pem.as_bytes(), 0o644).map_err(io_err(&ca_pem))?;
    Ok((pem, key))
}

fn issue_server_cert(
    dir: &Path,
    ca_pem: &str,
    ca_key: KeyPair,
    names: &[String],
) -> Result<(), TlsError> {
    let issuer = Issuer::from_ca_cert_pem(ca_pem, ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names.to_vec())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "ArqonBus server");
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = now() - Duration::days(1);
    params.not_after = now() + Duration::days(SERVER_CERT_DAYS);
    let cert = params.signed_by(&key, &issuer)?;
    let chain = format!("{}{ca_pem}", cert.pem());
    let key_path = dir.join("server.key");
    let cert_path = dir.join("server.pem");
    write_file(&key_path, key.serialize_pem().as_bytes(), 0o600).map_err(io_err(&key_path))?;
    write_file(&cert_path, chain.as_bytes(), 0o644).map_err(io_err(&cert_path))?;
    Ok(())
}

/// Whether the leaf certificate in `pem` is valid for long enough and names
/// everything in `names`.
fn server_cert_is_current(pem: &[u8], names: &[String]) -> bool {
    let Some(Ok(der)) = CertificateDer::pem_slice_iter(pem).next() else {
        return false;
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(&der) else {
        return false;
    };
    let renew_at = now() + Duration::days(RENEW_BEFORE_DAYS);
    if cert.validity().not_after.timestamp() < renew_at.unix_timestamp() {
        return false;
    }
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return false;
    };
    let present: Vec<String> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
            x509_parser::extensions::GeneralName::IPAddress(ip) => match ip.len() {
                4 => <[u8; 4]>::try_from(*ip)
                    .ok()
                    .map(|b| std::net::IpAddr::from(b).to_string()),
                16 => <[u8; 16]>::try_from(*ip)
                    .ok()
                    .map(|b| std::net::IpAddr::from(b).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect();
    names.iter().all(|n| present.contains(n))
}

fn load_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            reason: e.to_string(),
        })?
        .collect();
    let certs = certs.map_err(|e| TlsError::Pem {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            reason: "no certificate found".into(),
        });
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Pem {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// The rustls server configuration: TLS 1.3 only, ring, ALPN `arqonbus/1`.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(cfg))
}

/// Loads the configured certificate, or the generated one (creating or
/// renewing it as needed).
pub fn prepare(data_dir: &Path, tls: &TlsSection) -> Result<TlsMaterial, TlsError> {
    if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
        return Ok(TlsMaterial {
            server_config: server_config(load_chain(cert)?, load_key(key)?)?,
            ca_path: None,
            generated: false,
        });
    }
    let dir = data_dir.join("tls");
    crate::bootstrap::create_private_dir(&dir).map_err(io_err(&dir))?;
    let ca_pem_path = dir.join("ca.pem");
    let ca_key_path = dir.join("ca.key");
    let mut generated = false;
    let (ca_pem, ca_key) = if ca_pem_path.exists() && ca_key_path.exists() {
        let pem = std::fs::read_to_string(&ca_pem_path).map_err(io_err(&ca_pem_path))?;
        let key_pem = std::fs::read_to_string(&ca_key_path).map_err(io_err(&ca_key_path))?;
        (pem, KeyPair::from_pem(&key_pem)?)
    } else {
        generated = true;
        generate_ca(&dir)?
    };
    let names = required_names(&tls.extra_names);
    let cert_path = dir.join("server.pem");
    let key_path = dir.join("server.key");
    // A fresh CA did not sign the old certificate: always re-issue then.
    let current = !generated
        && std::fs::read(&cert_path)
            .ok()
            .is_some_and(|pem| server_cert_is_current(&pem, &names))
        && key_path.exists();
    if !current {
        generated = true;
        issue_server_cert(&dir, &ca_pem, ca_key, &names)?;
    }
    Ok(TlsMaterial {
        server_config: server_config(load_chain(&cert_path)?, load_key(&key_path)?)?,
        ca_path: Some(ca_pem_path),
        generated,
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn first_start_generates_then_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let first = prepare(dir.path(), &TlsSection::default()).unwrap();
        assert!(first.generated);
        let ca = first.ca_path.unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join("tls/ca.key")), 0o600);
        assert_eq!(mode(&dir.path().join("tls/server.key")), 0o600);
        let pem = std::fs::read(dir.path().join("tls/server.pem")).unwrap();
        assert!(server_cert_is_current(&pem, &required_names(&[])));

        let again = prepare(dir.path(), &TlsSection::default()).unwrap();
        assert!(!again.generated);
        assert_eq!(again.ca_path.unwrap(), ca);
    }

    #[test]
    fn a_new_ca_reissues_the_server_certificate() {
        let dir = tempfile::tempdir().unwrap();
        prepare(dir.path(), &TlsSection::default()).unwrap();
        let before = std::fs::read(dir.path().join("tls/server.pem")).unwrap();
        std::fs::remove_file(dir.path().join("tls/ca.key")).unwrap();
        let m = prepare(dir.path(), &TlsSection::default()).unwrap();
        assert!(m.generated);
        let after = std::fs::read(dir.path().join("tls/server.pem")).unwrap();
        assert_ne!(
            before, after,
            "the old certificate was signed by the old CA"
        );
        let ca = std::fs::read_to_string(dir.path().join("tls/ca.pem")).unwrap();
        assert!(
            String::from_utf8(after).unwrap().ends_with(&ca),
            "chain ends with the new CA"
        );
    }

    #[test]
    fn a_new_name_reissues_the_server_certificate() {
        let dir = tempfile::tempdir().unwrap();
        prepare(dir.path(), &TlsSection::default()).unwrap();
        let ca_before = std::fs::read(dir.path().join("tls/ca.pem")).unwrap();
        let tls = TlsSection {
            extra_names: vec!["bus.example.com".into()],
            ..TlsSection::default()
        };
        let m = prepare(dir.path(), &tls).unwrap();
        assert!(m.generated);
        let pem = std::fs::read(dir.path().join("tls/server.pem")).unwrap();
        assert!(server_cert_is_current(
            &pem,
            &["bus.example.com".to_owned()]
        ));
        assert_eq!(
            std::fs::read(dir.path().join("tls/ca.pem")).unwrap(),
            ca_before
        );
    }
}
