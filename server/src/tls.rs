//! TLS material: load the operator's certificate, or generate a private CA and
//! a server certificate in the data directory on first start.
//!
//! Files (under `<data_dir>/tls/`): `ca.pem` (give this to clients), `ca.key`
//! (0600), `server.pem` (chain: server then CA), `server.key` (0600). A server
//! certificate that expires within [`RENEW_BEFORE_DAYS`] days, lacks a
//! configured name, or is missing, damaged or not the pair of `server.key`
//! (itself missing or damaged) is re-issued from the CA at start: it is
//! derived from the CA, which is what clients trust. Keys are written with
//! mode 0600 from creation, never widened.
//!
//! Loss is never silent: a CA is generated only on a first start (no CA
//! file and no server certificate). A missing, empty or unreadable `ca.pem`
//! or `ca.key`, a key that does not match the certificate, or a server
//! certificate left without its CA is [`TlsError::Damaged`], naming the file
//! and the recovery (restore it, or `arqonbus serve --recreate-missing` for
//! a new CA on purpose).
//!
//! CA rotation ([`rotate_ca`], `arqonbus ca rotate`) has an overlap: the
//! new CA is also cross-signed by the old one (`ca-cross.pem`, valid for the
//! overlap), the server certificate is re-issued under the new CA and served
//! with the cross-signed certificate as its intermediate, so clients that
//! trust only the old CA keep verifying the server, and clients given the
//! new `ca.pem` (new CA first, old CA after it) verify it directly. The old
//! CA is kept as `ca-previous.pem`/`ca-previous.key`. The first start after
//! the overlap ends drops the cross certificate and the old CA from
//! `ca.pem` and re-issues the server certificate under the new CA alone.
//! Only the server is certified by this CA: the data plane asks no client
//! certificate, and operator client certificates (`control.client_ca`) come
//! from the operator's own CA, so there is no client side to overlap.

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
/// The CA certificate clients trust (during a rotation: new CA, then old).
pub const CA_PEM: &str = "ca.pem";
/// The CA's private key (0600).
pub const CA_KEY: &str = "ca.key";
/// The new CA signed by the old one, served during a rotation's overlap.
pub const CA_CROSS: &str = "ca-cross.pem";
/// The CA before the last rotation, kept for a rollback.
pub const CA_PREVIOUS_PEM: &str = "ca-previous.pem";
/// Its key (0600).
pub const CA_PREVIOUS_KEY: &str = "ca-previous.key";

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
    /// CA material of an initialised node is missing or unusable.
    #[error(
        "{path} {reason}: restore it from a backup, or create a new CA on purpose with \
         `arqonbus serve --recreate-missing` (every client then needs the new ca.pem)"
    )]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong ("is missing", "is empty", "does not parse: …").
        reason: String,
    },
    /// A CA rotation cannot start.
    #[error("CA rotation: {0}")]
    Rotation(String),
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

/// The parameters of a generated CA named `name`.
fn ca_params(name: &str, days: i64) -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now() - Duration::days(1);
    params.not_after = now() + Duration::days(days);
    Ok(params)
}

fn generate_ca(dir: &Path) -> Result<(String, KeyPair), TlsError> {
    let key = KeyPair::generate()?;
    let cert = ca_params("ArqonBus local CA", CA_DAYS)?.self_signed(&key)?;
    let pem = cert.pem();
    let ca_pem = dir.join(CA_PEM);
    let ca_key = dir.join(CA_KEY);
    write_file(&ca_key, key.serialize_pem().as_bytes(), 0o600).map_err(io_err(&ca_key))?;
    write_file(&ca_pem, pem.as_bytes(), 0o644).map_err(io_err(&ca_pem))?;
    Ok((pem, key))
}

/// Generates a new CA in `<data_dir>/tls` on purpose (`--recreate-missing`),
/// over whatever is there: the caller moved the old files aside.
pub fn new_ca(data_dir: &Path) -> Result<(), TlsError> {
    let dir = data_dir.join("tls");
    crate::bootstrap::create_private_dir(&dir).map_err(io_err(&dir))?;
    generate_ca(&dir).map(drop)
}

/// The first PEM certificate block of `pem` (the current CA of a bundle).
fn first_pem_block(pem: &str) -> Option<String> {
    const END: &str = "-----END CERTIFICATE-----";
    let start = pem.find("-----BEGIN CERTIFICATE-----")?;
    let end = pem[start..].find(END)? + start + END.len();
    Some(format!("{}\n", &pem[start..end]))
}

/// The cross-signed certificate, when a rotation's overlap is running.
fn live_cross(dir: &Path) -> Option<String> {
    let pem = std::fs::read_to_string(dir.join(CA_CROSS)).ok()?;
    let der = CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()?
        .ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    (cert.validity().not_after.timestamp() > now().unix_timestamp()).then_some(pem)
}

fn issue_server_cert(
    dir: &Path,
    ca_pem: &str,
    ca_key: KeyPair,
    names: &[String],
) -> Result<(), TlsError> {
    let current_ca = first_pem_block(ca_pem).ok_or_else(|| TlsError::Damaged {
        path: dir.join(CA_PEM),
        reason: "holds no certificate".into(),
    })?;
    let issuer = Issuer::from_ca_cert_pem(&current_ca, ca_key)?;
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
    // During a rotation's overlap the intermediate is the new CA signed by
    // the old one, so clients trusting either CA verify the chain.
    let intermediate = live_cross(dir).unwrap_or(current_ca);
    let chain = format!("{}{intermediate}", cert.pem());
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

/// Whether `key_pem` is the private key of the first certificate in
/// `cert_pem` (false when either does not parse).
fn server_key_matches(cert_pem: &[u8], key_pem: &[u8]) -> bool {
    let Some(key) = std::str::from_utf8(key_pem)
        .ok()
        .and_then(|text| KeyPair::from_pem(text).ok())
    else {
        return false;
    };
    let Some(Ok(der)) = CertificateDer::pem_slice_iter(cert_pem).next() else {
        return false;
    };
    x509_parser::parse_x509_certificate(&der).is_ok_and(|(_, cert)| {
        cert.public_key().subject_public_key.data.as_ref() == key.public_key_raw()
    })
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
    let ca_pem_path = dir.join(CA_PEM);
    let ca_key_path = dir.join(CA_KEY);
    let mut generated = false;
    // A CA is generated on a first start only: nothing of the node exists
    // yet (the control store and admin token are created after TLS).
    let first_start = [
        ca_pem_path.clone(),
        ca_key_path.clone(),
        dir.join("server.pem"),
        data_dir.join("control.redb"),
        data_dir.join("credentials/admin.token"),
    ]
    .iter()
    .all(|p| !p.exists());
    let (ca_pem, ca_key) = if first_start {
        generated = true;
        generate_ca(&dir)?
    } else {
        finish_rotation_if_over(&dir)?;
        load_ca(&dir)?
    };
    let names = required_names(&tls.extra_names);
    let cert_path = dir.join("server.pem");
    let key_path = dir.join("server.key");
    // A fresh CA did not sign the old certificate: always re-issue then.
    let current = !generated
        && !dir.join(REISSUE_MARK).exists()
        && match (std::fs::read(&cert_path), std::fs::read(&key_path)) {
            (Ok(cert), Ok(key)) => {
                server_cert_is_current(&cert, &names) && server_key_matches(&cert, &key)
            }
            _ => false,
        };
    if !current {
        generated = true;
        issue_server_cert(&dir, &ca_pem, ca_key, &names)?;
        let _ = std::fs::remove_file(dir.join(REISSUE_MARK));
    }
    Ok(TlsMaterial {
        server_config: server_config(load_chain(&cert_path)?, load_key(&key_path)?)?,
        ca_path: Some(ca_pem_path),
        generated,
    })
}

/// Present when the server certificate must be re-issued at the next
/// start (a rotation's overlap ended).
const REISSUE_MARK: &str = "reissue";

/// Reads a CA file of an initialised node: missing, empty or not text is
/// damage (named with its recovery); other read errors are I/O errors.
fn read_ca_file(path: &Path) -> Result<String, TlsError> {
    let damaged = |reason: &str| TlsError::Damaged {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    match std::fs::read(path).map(String::from_utf8) {
        Ok(Ok(text)) if text.trim().is_empty() => Err(damaged("is empty")),
        Ok(Ok(text)) => Ok(text),
        Ok(Err(_)) => Err(damaged("is not PEM text")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(damaged("is missing")),
        Err(e) => Err(TlsError::Io {
            path: path.to_owned(),
            source: e,
        }),
    }
}

/// The CA of an initialised node: both files present, parseable, and the
/// key the one certified.
fn load_ca(dir: &Path) -> Result<(String, KeyPair), TlsError> {
    let pem_path = dir.join(CA_PEM);
    let key_path = dir.join(CA_KEY);
    let pem = read_ca_file(&pem_path)?;
    let key_pem = read_ca_file(&key_path)?;
    let key = KeyPair::from_pem(&key_pem).map_err(|e| TlsError::Damaged {
        path: key_path.clone(),
        reason: format!("does not parse ({e})"),
    })?;
    let bad_pem = |reason: String| TlsError::Damaged {
        path: pem_path.clone(),
        reason,
    };
    let der = CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or_else(|| bad_pem("holds no certificate".into()))?
        .map_err(|e| bad_pem(format!("does not parse ({e})")))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| bad_pem(format!("does not parse ({e})")))?;
    if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(TlsError::Damaged {
            path: key_path,
            reason: format!("is not the key of the CA in {}", pem_path.display()),
        });
    }
    Ok((pem, key))
}

/// Ends a rotation whose overlap is over: the cross certificate goes, the
/// old CA leaves `ca.pem`, and the server certificate is re-issued.
fn finish_rotation_if_over(dir: &Path) -> Result<(), TlsError> {
    let cross = dir.join(CA_CROSS);
    if !cross.exists() || live_cross(dir).is_some() {
        return Ok(());
    }
    let pem_path = dir.join(CA_PEM);
    let pem = read_ca_file(&pem_path)?;
    let current = first_pem_block(&pem).ok_or_else(|| TlsError::Damaged {
        path: pem_path.clone(),
        reason: "holds no certificate".into(),
    })?;
    let mark = dir.join(REISSUE_MARK);
    write_file(&mark, b"", 0o600).map_err(io_err(&mark))?;
    write_file(&pem_path, current.as_bytes(), 0o644).map_err(io_err(&pem_path))?;
    std::fs::remove_file(&cross).map_err(io_err(&cross))?;
    tracing::info!(
        path = %pem_path.display(),
        "CA rotation finished: the overlap is over, the previous CA is no longer served"
    );
    Ok(())
}

/// What [`rotate_ca`] did.
#[derive(Debug)]
pub struct CaRotation {
    /// The CA bundle to give clients (new CA, then old).
    pub ca_pem: PathBuf,
    /// When the old CA stops being accepted through the cross certificate.
    pub overlap_ends: OffsetDateTime,
}

/// Rotates the generated CA with an overlap of `overlap_days` (see the
/// module documentation). Files only: a running node keeps its certificate
/// until its next start. `extra_names` are the configured `tls.extra_names`.
pub fn rotate_ca(
    data_dir: &Path,
    extra_names: &[String],
    overlap_days: u32,
) -> Result<CaRotation, TlsError> {
    let dir = data_dir.join("tls");
    if live_cross(&dir).is_some() {
        return Err(TlsError::Rotation(format!(
            "the previous rotation's overlap is still running ({} exists); rotate again after it ends",
            dir.join(CA_CROSS).display()
        )));
    }
    finish_rotation_if_over(&dir)?;
    let (old_pem_all, old_key) = load_ca(&dir)?;
    let old_pem = first_pem_block(&old_pem_all).ok_or_else(|| TlsError::Damaged {
        path: dir.join(CA_PEM),
        reason: "holds no certificate".into(),
    })?;
    let old_issuer = Issuer::from_ca_cert_pem(&old_pem, old_key)?;
    let name = format!("ArqonBus local CA {}", now().unix_timestamp());
    let new_key = KeyPair::generate()?;
    let new_ca = ca_params(&name, CA_DAYS)?.self_signed(&new_key)?;
    let overlap_ends = now() + Duration::days(i64::from(overlap_days));
    let mut cross_params = ca_params(&name, CA_DAYS)?;
    cross_params.not_after = overlap_ends;
    let cross = cross_params.signed_by(&new_key, &old_issuer)?;

    let path = |f: &str| dir.join(f);
    let write = |f: &str, data: &[u8], mode: u32| {
        let p = path(f);
        write_file(&p, data, mode).map_err(io_err(&p))
    };
    // Old material first (a rollback needs it), the new key before the
    // bundle naming it: a crash leaves either the old CA whole, or a
    // mismatch `load_ca` refuses, never a silent mix.
    let old_key_pem = std::fs::read(path(CA_KEY)).map_err(io_err(&path(CA_KEY)))?;
    write(CA_PREVIOUS_KEY, &old_key_pem, 0o600)?;
    write(CA_PREVIOUS_PEM, old_pem.as_bytes(), 0o644)?;
    write(CA_CROSS, cross.pem().as_bytes(), 0o644)?;
    let new_key_pem = new_key.serialize_pem();
    write(CA_KEY, new_key_pem.as_bytes(), 0o600)?;
    let bundle = format!("{}{old_pem}", new_ca.pem());
    write(CA_PEM, bundle.as_bytes(), 0o644)?;
    let names = required_names(extra_names);
    issue_server_cert(&dir, &bundle, KeyPair::from_pem(&new_key_pem)?, &names)?;
    tracing::info!(
        overlap_ends = %overlap_ends,
        "rotated the CA: clients trusting the old CA keep working until the overlap ends"
    );
    Ok(CaRotation {
        ca_pem: path(CA_PEM),
        overlap_ends,
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
    fn lost_ca_material_is_refused_and_recreated_only_on_purpose() {
        let dir = tempfile::tempdir().unwrap();
        prepare(dir.path(), &TlsSection::default()).unwrap();
        let tls = dir.path().join("tls");
        let key = std::fs::read(tls.join(CA_KEY)).unwrap();
        for (file, damage) in [
            (CA_KEY, None),
            (CA_KEY, Some(&b""[..])),
            (CA_KEY, Some(&b"-----BEGIN PRIVATE KEY-----\nAAAA\n"[..])),
            (CA_KEY, Some(&[0xff, 0xfe, 0x00, 0x9c][..])),
            (CA_PEM, None),
        ] {
            let saved = std::fs::read(tls.join(file)).unwrap();
            match damage {
                None => std::fs::remove_file(tls.join(file)).unwrap(),
                Some(bytes) => std::fs::write(tls.join(file), bytes).unwrap(),
            }
            let err = prepare(dir.path(), &TlsSection::default()).unwrap_err();
            let text = err.to_string();
            assert!(matches!(err, TlsError::Damaged { .. }), "{text}");
            assert!(
                text.contains(file) && text.contains("--recreate-missing"),
                "{text}"
            );
            std::fs::write(tls.join(file), saved).unwrap();
        }
        // A key that is not the CA's is refused too.
        std::fs::write(
            tls.join(CA_KEY),
            KeyPair::generate().unwrap().serialize_pem(),
        )
        .unwrap();
        assert!(matches!(
            prepare(dir.path(), &TlsSection::default()),
            Err(TlsError::Damaged { .. })
        ));
        std::fs::write(tls.join(CA_KEY), &key).unwrap();
        assert!(
            !prepare(dir.path(), &TlsSection::default())
                .unwrap()
                .generated
        );

        // On purpose: every CA file moved away, then a new CA.
        for f in [CA_KEY, CA_PEM, "server.pem", "server.key"] {
            std::fs::remove_file(tls.join(f)).unwrap();
        }
        assert!(
            prepare(dir.path(), &TlsSection::default())
                .unwrap()
                .generated
        );
        let ca = std::fs::read_to_string(tls.join(CA_PEM)).unwrap();
        let chain = std::fs::read_to_string(tls.join("server.pem")).unwrap();
        assert!(chain.ends_with(&ca), "chain ends with the new CA");
    }

    /// The certificates of a PEM file, as DER.
    fn certs(path: &Path) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_file_iter(path)
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    #[test]
    fn a_rotation_serves_a_chain_both_cas_verify_until_the_overlap_ends() {
        use rustls::client::danger::ServerCertVerifier as _;
        let dir = tempfile::tempdir().unwrap();
        prepare(dir.path(), &TlsSection::default()).unwrap();
        let tls = dir.path().join("tls");
        let old_ca = certs(&tls.join(CA_PEM)).remove(0);
        let r = rotate_ca(dir.path(), &[], 30).unwrap();
        let bundle = certs(&r.ca_pem);
        assert_eq!(bundle.len(), 2, "new CA, then old");
        assert_eq!(bundle[1], old_ca);
        assert!(
            matches!(rotate_ca(dir.path(), &[], 30), Err(TlsError::Rotation(_))),
            "one rotation at a time"
        );
        let m = prepare(dir.path(), &TlsSection::default()).unwrap();
        assert!(!m.generated, "the rotation already issued the certificate");
        let chain = certs(&tls.join("server.pem"));
        assert_eq!(chain.len(), 2, "leaf and the cross-signed CA");
        let verify = |anchor: &CertificateDer<'static>| {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(anchor.clone()).unwrap();
            let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                Arc::new(rustls::crypto::ring::default_provider()),
            )
            .build()
            .unwrap();
            verifier.verify_server_cert(
                &chain[0],
                &chain[1..],
                &rustls::pki_types::ServerName::try_from("localhost").unwrap(),
                &[],
                rustls::pki_types::UnixTime::now(),
            )
        };
        assert!(verify(&old_ca).is_ok(), "old clients keep working");
        assert!(verify(&bundle[0]).is_ok(), "new clients trust the new CA");
    }

    #[test]
    fn a_zero_day_overlap_ends_at_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        prepare(dir.path(), &TlsSection::default()).unwrap();
        let tls = dir.path().join("tls");
        rotate_ca(dir.path(), &[], 0).unwrap();
        let m = prepare(dir.path(), &TlsSection::default()).unwrap();
        assert!(m.generated, "re-issued without the cross certificate");
        assert!(!tls.join(CA_CROSS).exists());
        let ca = certs(&tls.join(CA_PEM));
        assert_eq!(ca.len(), 1, "only the new CA is left");
        let chain = certs(&tls.join("server.pem"));
        assert_eq!(chain, vec![chain[0].clone(), ca[0].clone()]);
        assert!(tls.join(CA_PREVIOUS_KEY).exists());
    }

    #[test]
    fn a_damaged_server_certificate_or_key_is_reissued_under_the_same_ca() {
        let dir = tempfile::tempdir().unwrap();
        prepare(dir.path(), &TlsSection::default()).unwrap();
        let tls = dir.path().join("tls");
        let ca = std::fs::read(tls.join(CA_PEM)).unwrap();
        let other_key = KeyPair::generate().unwrap().serialize_pem();
        for (file, damage) in [
            ("server.key", Some(&[0xff, 0x00, 0x9c][..])),
            ("server.key", Some(other_key.as_bytes())),
            ("server.key", Some(&b""[..])),
            ("server.key", None),
            (
                "server.pem",
                Some(&b"-----BEGIN CERTIFICATE-----\nAAAA\n"[..]),
            ),
            ("server.pem", None),
        ] {
            match damage {
                None => std::fs::remove_file(tls.join(file)).unwrap(),
                Some(bytes) => std::fs::write(tls.join(file), bytes).unwrap(),
            }
            let m = prepare(dir.path(), &TlsSection::default())
                .unwrap_or_else(|e| panic!("{file} {damage:?}: {e}"));
            assert!(m.generated, "{file} {damage:?}: re-issued");
            let cert = std::fs::read(tls.join("server.pem")).unwrap();
            let key = std::fs::read(tls.join("server.key")).unwrap();
            assert!(server_key_matches(&cert, &key), "{file} {damage:?}");
            assert_eq!(std::fs::read(tls.join(CA_PEM)).unwrap(), ca, "the same CA");
            assert!(
                !prepare(dir.path(), &TlsSection::default())
                    .unwrap()
                    .generated,
                "{file} {damage:?}: current after"
            );
        }
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
