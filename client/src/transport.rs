//! Establishing one connection: TCP, then TLS 1.3 (unless the URL is
//! `tcp://`), then the `Connect` / `Welcome` handshake.
//!
//! Invariants: the whole attempt is bounded by the connect timeout; the
//! credential is written to the socket and nowhere else; a connection is only
//! returned after a `Welcome`, together with any bytes the server sent after
//! it.

use std::sync::Arc;

use arqonbus_proto::PROTOCOL_VERSION;
use arqonbus_proto::codec;
use arqonbus_proto::v1::{self, frame::Kind};
use bytes::BytesMut;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::client::ServerInfo;
use crate::error::{Error, OptionsError, ProtocolViolation, ServerError};
use crate::options::Resolved;

/// The largest frame accepted before the server's limits are known.
const PRE_WELCOME_MAX_FRAME: u32 = 64 * 1024 * 1024;
/// Sent as `Connect.client_version`.
const CLIENT_VERSION: &str = concat!("arqonbus-client-rust/", env!("CARGO_PKG_VERSION"));

/// A byte stream: plaintext TCP or TLS over TCP.
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// An established, authenticated connection.
pub(crate) struct Connection {
    pub(crate) io: Box<dyn Io>,
    /// Bytes received after the `Welcome`, not yet decoded.
    pub(crate) rbuf: BytesMut,
    pub(crate) info: Arc<ServerInfo>,
}

/// The name of a frame kind, for errors and logs.
pub(crate) fn kind_name(kind: &Kind) -> &'static str {
    match kind {
        Kind::Connect(_) => "Connect",
        Kind::Welcome(_) => "Welcome",
        Kind::Publish(_) => "Publish",
        Kind::Subscribe(_) => "Subscribe",
        Kind::Unsubscribe(_) => "Unsubscribe",
        Kind::Message(_) => "Message",
        Kind::Ping(_) => "Ping",
        Kind::Pong(_) => "Pong",
        Kind::Error(_) => "Error",
        Kind::Drain(_) => "Drain",
        Kind::PresenceTrack(_) => "PresenceTrack",
        Kind::PresenceWatch(_) => "PresenceWatch",
        Kind::PresenceQuery(_) => "PresenceQuery",
        Kind::PresenceReply(_) => "PresenceReply",
        Kind::PresenceEvent(_) => "PresenceEvent",
    }
}

/// Opens one connection and performs the handshake, within the connect
/// timeout.
pub(crate) async fn connect(opts: &Resolved) -> Result<Connection, Error> {
    tokio::time::timeout(opts.connect_timeout, connect_inner(opts))
        .await
        .unwrap_or(Err(Error::ConnectTimeout))
}

async fn connect_inner(opts: &Resolved) -> Result<Connection, Error> {
    let tcp = TcpStream::connect((opts.url.host.as_str(), opts.url.port)).await?;
    tcp.set_nodelay(true)?;
    let mut io: Box<dyn Io> = match &opts.tls {
        None => Box::new(tcp),
        Some(config) => {
            let name = ServerName::try_from(opts.url.host.clone()).map_err(|_| {
                OptionsError::InvalidUrl {
                    url: opts.url.to_string(),
                    reason: "the host is neither a valid DNS name nor an IP address",
                }
            })?;
            let tls = TlsConnector::from(Arc::clone(config))
                .connect(name, tcp)
                .await?;
            Box::new(tls)
        }
    };
    let (info, rbuf) = handshake(&mut io, opts).await?;
    Ok(Connection {
        io,
        rbuf,
        info: Arc::new(info),
    })
}

/// Sends `Connect` and waits for `Welcome` (or the server's `Error`).
async fn handshake(io: &mut Box<dyn Io>, opts: &Resolved) -> Result<(ServerInfo, BytesMut), Error> {
    let connect = Kind::Connect(v1::Connect {
        protocol_version: PROTOCOL_VERSION,
        credential: opts.credential.expose().to_owned(),
        client_name: opts.client_name.clone(),
        client_kind: opts.client_kind.to_wire().into(),
        client_version: CLIENT_VERSION.to_owned(),
        no_echo: opts.no_echo,
    });
    let mut wbuf = BytesMut::with_capacity(codec::encoded_len(&connect));
    codec::encode(&connect, &mut wbuf)
        .map_err(|e| Error::Io(Arc::new(std::io::Error::other(e))))?;
    drop(connect);
    io.write_all(&wbuf).await?;
    io.flush().await?;
    drop(wbuf);

    let mut rbuf = BytesMut::with_capacity(8 * 1024);
    loop {
        match codec::decode(&mut rbuf, PRE_WELCOME_MAX_FRAME) {
            Err(e) => return Err(Error::Protocol(ProtocolViolation::Decode(e))),
            Ok(Some(Kind::Welcome(welcome))) => {
                let info = ServerInfo::from_welcome(welcome);
                tracing::debug!(
                    server_id = %info.server_id,
                    session_id = info.session_id,
                    shard = info.shard,
                    tenant = %info.tenant,
                    "connected"
                );
                return Ok((info, rbuf));
            }
            Ok(Some(Kind::Error(frame))) => {
                // Before the Welcome every error ends the attempt, whatever
                // its close flag says.
                let err = ServerError {
                    fatal: true,
                    ..ServerError::from_frame(&frame)
                };
                return Err(Error::from_server(err));
            }
            Ok(Some(other)) => {
                return Err(Error::Protocol(ProtocolViolation::UnexpectedFrame(
                    kind_name(&other),
                )));
            }
            Ok(None) => {
                rbuf.reserve(8 * 1024);
                if io.read_buf(&mut rbuf).await? == 0 {
                    return Err(Error::ConnectionReset);
                }
            }
        }
    }
}
