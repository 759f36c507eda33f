//! A lean, blocking driver for the ArqonBus protocol.
//!
//! Built to measure the server, not the client: one OS thread per
//! connection, frames pre-encoded once and written in 64 KiB batches, reads
//! into a large buffer and frames counted by their kind byte without decoding
//! bodies. The NATS driver mirrors it (same batch size, same syscalls per
//! message) so comparisons are fair.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;

use arqonbus_proto::codec;
use arqonbus_proto::v1::{self, frame::Kind};
use bytes::BytesMut;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// Bytes written per `write` call by publishers.
pub(crate) const BATCH: usize = 64 * 1024;

/// `Frame` oneof keys (field number << 3 | length-delimited).
pub(crate) const TAG_MESSAGE: u8 = (6 << 3) | 2;
/// `Frame.pong`.
pub(crate) const TAG_PONG: u8 = (8 << 3) | 2;

/// Why a driver connection failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DriverError {
    /// Socket trouble.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// TLS setup or handshake trouble.
    #[error("tls: {0}")]
    Tls(String),
    /// The server said something unexpected.
    #[error("protocol: {0}")]
    Protocol(String),
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// `host:port`.
    pub(crate) addr: String,
    /// Use TLS, trusting this CA.
    pub(crate) tls_ca: Option<std::path::PathBuf>,
    /// The bearer credential.
    pub(crate) credential: String,
}

impl Target {
    /// Parses `tls://host:port` or `tcp://host:port`.
    pub(crate) fn parse(
        url: &str,
        ca: Option<&Path>,
        credential: String,
    ) -> Result<Self, DriverError> {
        let (tls, addr) = if let Some(a) = url.strip_prefix("tls://") {
            (true, a)
        } else if let Some(a) = url.strip_prefix("tcp://") {
            (false, a)
        } else {
            return Err(DriverError::Protocol(format!("unsupported url {url}")));
        };
        if tls && ca.is_none() {
            return Err(DriverError::Tls("tls:// needs --ca".into()));
        }
        Ok(Self {
            addr: addr.to_owned(),
            tls_ca: if tls { ca.map(Path::to_owned) } else { None },
            credential,
        })
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Plain(s) => s.read(buf),
            Self::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Plain(s) => s.write(buf),
            Self::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Plain(s) => s.flush(),
            Self::Tls(s) => s.flush(),
        }
    }
}

fn tls_config(ca: &Path) -> Result<Arc<rustls::ClientConfig>, DriverError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| DriverError::Tls(e.to_string()))? {
        let cert = cert.map_err(|e| DriverError::Tls(e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| DriverError::Tls(e.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| DriverError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"arqonbus/1".to_vec()];
    Ok(Arc::new(cfg))
}

/// One connection.
pub(crate) struct Conn {
    stream: Stream,
    rbuf: Vec<u8>,
    start: usize,
    end: usize,
    /// The `Welcome` the server sent.
    pub(crate) welcome: v1::Welcome,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("shard", &self.welcome.shard)
            .finish_non_exhaustive()
    }
}

impl Conn {
    /// Connects and authenticates.
    pub(crate) fn open(t: &Target) -> Result<Self, DriverError> {
        let tcp = TcpStream::connect(&t.addr)?;
        tcp.set_nodelay(true)?;
        let stream = match &t.tls_ca {
            None => Stream::Plain(tcp),
            Some(ca) => {
                let host = t.addr.rsplit_once(':').map_or(t.addr.as_str(), |(h, _)| h);
                let host = host.trim_start_matches('[').trim_end_matches(']');
                let name = ServerName::try_from(host.to_owned())
                    .map_err(|e| DriverError::Tls(e.to_string()))?;
                let conn = rustls::ClientConnection::new(tls_config(ca)?, name)
                    .map_err(|e| DriverError::Tls(e.to_string()))?;
                Stream::Tls(Box::new(rustls::StreamOwned::new(conn, tcp)))
            }
        };
        let mut c = Self {
            stream,
            rbuf: vec![0; 256 * 1024],
            start: 0,
            end: 0,
            welcome: v1::Welcome::default(),
        };
        c.send(&Kind::Connect(v1::Connect {
            protocol_version: arqonbus_proto::PROTOCOL_VERSION,
            credential: t.credential.clone(),
            client_name: "arqonbus-perf".into(),
            client_kind: v1::ClientKind::Agent.into(),
            client_version: env!("CARGO_PKG_VERSION").into(),
            no_echo: false,
        }))?;
        match c.next_frame()? {
            Kind::Welcome(w) => c.welcome = w,
            Kind::Error(e) => return Err(DriverError::Protocol(format!("refused: {}", e.message))),
            other => return Err(DriverError::Protocol(format!("unexpected {other:?}"))),
        }
        Ok(c)
    }

    /// Encodes and writes one frame.
    pub(crate) fn send(&mut self, kind: &Kind) -> Result<(), DriverError> {
        let mut out = Vec::new();
        codec::encode(kind, &mut out).map_err(|e| DriverError::Protocol(e.to_string()))?;
        self.stream.write_all(&out)?;
        self.stream.flush()?;
        Ok(())
    }

    /// Writes pre-encoded bytes.
    pub(crate) fn write_all(&mut self, bytes: &[u8]) -> Result<(), DriverError> {
        self.stream.write_all(bytes)?;
        Ok(())
    }

    fn fill(&mut self) -> Result<(), DriverError> {
        if self.start > 0 {
            self.rbuf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.rbuf.len() {
            self.rbuf.resize(self.rbuf.len() * 2, 0);
        }
        let n = self.stream.read(&mut self.rbuf[self.end..])?;
        if n == 0 {
            return Err(DriverError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        self.end += n;
        Ok(())
    }

    /// The next frame, fully decoded (for control frames).
    pub(crate) fn next_frame(&mut self) -> Result<Kind, DriverError> {
        loop {
            let avail = &self.rbuf[self.start..self.end];
            if let Some(total) = codec::frame_len(avail, u32::MAX)
                .map_err(|e| DriverError::Protocol(e.to_string()))?
            {
                let mut b = BytesMut::from(&avail[..total]);
                self.start += total;
                return codec::decode(&mut b, u32::MAX)
                    .map_err(|e| DriverError::Protocol(e.to_string()))?
                    .ok_or_else(|| DriverError::Protocol("short frame".into()));
            }
            self.fill()?;
        }
    }

    /// Reads frames, calling `on_frame(kind_tag, body)` for each, until it
    /// returns false. Bodies are not decoded.
    pub(crate) fn scan(
        &mut self,
        mut on_frame: impl FnMut(u8, &[u8]) -> bool,
    ) -> Result<(), DriverError> {
        loop {
            while self.end - self.start >= 4 {
                let p = &self.rbuf[self.start..self.start + 4];
                let len = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize;
                if self.end - self.start < 4 + len {
                    break;
                }
                let body = &self.rbuf[self.start + 4..self.start + 4 + len];
                self.start += 4 + len;
                let tag = body.first().copied().unwrap_or(0);
                if !on_frame(tag, body) {
                    return Ok(());
                }
            }
            self.fill()?;
        }
    }
}

/// A batch of identical `Publish` frames filling about [`BATCH`] bytes.
pub(crate) fn publish_batch(
    subject: &[u8],
    payload: &[u8],
) -> Result<(Vec<u8>, usize), DriverError> {
    let mut one = Vec::new();
    codec::write_publish_prefix(subject, b"", &[], payload.len(), &mut one)
        .map_err(|e| DriverError::Protocol(e.to_string()))?;
    one.extend_from_slice(payload);
    let per = (BATCH / one.len()).max(1);
    Ok((one.repeat(per), per))
}
